"""The huggingface_hub cache layout, read and written the way huggingface_hub does.

    <cache>/models--ORG--NAME/blobs/<etag>                     the bytes, once per content
    <cache>/models--ORG--NAME/snapshots/<commit>/<path>        a relative link to the blob
    <cache>/models--ORG--NAME/refs/<revision>                  the commit a branch/tag was at

saelab downloads file bodies itself (see `download.py`) but files them here, so that
`hf_hub_download`, transformers and `scan_cache_dir` see them as ordinary cache entries, and
the other way round. Deleting a file means removing its snapshot link *and* its blob: removing
only the link frees nothing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(revision: str | None) -> bool:
    """A full commit hash names content that never changes, so no server check is needed."""
    return bool(revision) and _COMMIT.fullmatch(revision or "") is not None


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def blob_path(cache: Path, repo_id: str, etag: str) -> Path:
    return repo_dir(cache, repo_id) / "blobs" / etag


def pointer_path(cache: Path, repo_id: str, commit: str, path: str) -> Path:
    return repo_dir(cache, repo_id) / "snapshots" / commit / Path(*path.split("/"))


def lock_path(cache: Path, repo_id: str, etag: str) -> Path:
    """The lock huggingface_hub itself takes for this blob, so the two never write it at once."""
    return cache / ".locks" / repo_dir(cache, repo_id).name / f"{etag}.lock"


def resolve_commit(cache: Path, repo_id: str, revision: str | None) -> str | None:
    """The commit a revision was at when last seen online (refs/<revision>), else None."""
    rev = revision or "main"
    if is_commit(rev):
        return rev
    ref = repo_dir(cache, repo_id) / "refs" / rev
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def lookup(cache: Path, repo_id: str, path: str, revision: str | None) -> Path | None:
    """The cached copy of a file at a revision, without any network call; None if absent.

    A dangling link (its blob deleted) does not count: `is_file` follows the link.
    """
    commit = resolve_commit(cache, repo_id, revision)
    if commit is None:
        return None
    pointer = pointer_path(cache, repo_id, commit, path)
    return pointer if pointer.is_file() else None


def write_ref(cache: Path, repo_id: str, revision: str | None, commit: str) -> None:
    """Remember which commit a branch or tag pointed to, for later offline use."""
    rev = revision or "main"
    if rev == commit:
        return
    ref = repo_dir(cache, repo_id) / "refs" / rev
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text() != commit:
        tmp = ref.with_name(ref.name + f".{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def link(blob: Path, pointer: Path) -> None:
    """Point a snapshot entry at its blob with a relative link, as huggingface_hub does.

    Where links are not allowed (some Windows setups) the snapshot gets its own copy.
    """
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


def links_to(cache: Path, repo_id: str, blob: Path) -> list[Path]:
    """Every snapshot entry of the repo that is (a link to) this blob."""
    snaps = repo_dir(cache, repo_id) / "snapshots"
    if not snaps.is_dir():
        return []
    target = os.path.realpath(blob)
    out = []
    for root, _dirs, files in os.walk(snaps):
        for name in files:
            p = Path(root) / name
            if p.is_symlink() and os.path.realpath(p) == target:
                out.append(p)
    return out


def remove(cache: Path, repo_id: str, pointer: Path) -> int:
    """Delete a cached file: its snapshot link, the blob, and every other link to that blob.

    Returns the bytes freed. Empty snapshot folders are pruned, and a repo folder left with no
    snapshot at all is removed with its refs, so nothing of the file stays behind.
    """
    freed = 0
    if pointer.is_symlink():
        blob = Path(os.path.realpath(pointer))
        others = links_to(cache, repo_id, blob)
        for p in {pointer, *others}:
            p.unlink(missing_ok=True)
        if blob.is_file():
            freed += blob.stat().st_size
            blob.unlink()
    elif pointer.is_file():  # a copy made where links are not allowed
        freed += pointer.stat().st_size
        pointer.unlink()
    _prune(cache, repo_id, pointer.parent)
    return freed


def _prune(cache: Path, repo_id: str, folder: Path) -> None:
    """Remove empty folders from `folder` up to snapshots/, then the repo if nothing is left."""
    top = repo_dir(cache, repo_id)
    snaps = top / "snapshots"
    d = folder
    while d != snaps and snaps in d.parents:
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent
    if snaps.is_dir() and not any(snaps.iterdir()):
        blobs = top / "blobs"
        if not blobs.is_dir() or not any(blobs.iterdir()):
            shutil.rmtree(top, ignore_errors=True)


def remove_stale_partials(blob: Path) -> None:
    """Delete half-written copies of this blob left by a killed process (ours or hf's).

    Called while holding the blob's lock, so no live download can be writing them. They are
    never trusted as cache entries, but they take disk the budget needs.
    """
    for p in blob.parent.glob(f"{blob.name}.*incomplete"):
        p.unlink(missing_ok=True)
