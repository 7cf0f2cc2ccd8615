"""What the Hugging Face cache holds, and removing cached releases: blob and link.

A user on a small disk (a Colab VM, a laptop) starts by asking what the cache already holds
and how much of it can go. `list_cache` answers per repo (models, datasets), per revision
(with the branches and tags pointing at it; one with none is detached) and, on request, per
file, and also counts what no snapshot uses any more: blobs whose links were removed and
half-finished downloads. `clear_cache` removes what a pattern matches, the way the cache
itself is laid out: a snapshot entry is only a link, so the blob it points to goes too once
no other link of the repo needs it (and, in huggingface_hub's shared blob store, the shared
payload once no repo refers to it).

Patterns are shell globs, case-insensitive: `google/gemma-scope-*` names whole repos;
`org/name/layer_1*/*` names files inside one (matched on their path in the snapshot).
Whole repos are deleted through huggingface_hub's own delete strategy.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound

from saelab.errors import SaelabError
from saelab.hub.settings import current


@dataclass(frozen=True)
class CachedFile:
    """One file of one cached revision."""

    repo_id: str
    revision: str
    path: str  # inside the repo, e.g. layer_5/width_16k/params.npz
    size: int
    link: Path  # the snapshot entry
    blob: Path  # what it points to


@dataclass(frozen=True)
class CachedRevision:
    commit: str
    refs: tuple[str, ...]  # branches / tags at this commit; empty: detached (no ref uses it)
    size: int
    n_files: int


@dataclass(frozen=True)
class CachedRepo:
    repo_id: str
    repo_type: str  # model | dataset | space
    path: Path
    size: int  # bytes of the blobs its snapshots link to
    revisions: tuple[CachedRevision, ...]
    unreferenced: int  # bytes of blobs no snapshot links to (links removed by hand)
    incomplete: int  # bytes of half-finished downloads


@dataclass
class CacheListing:
    cache_dir: Path
    repos: list[CachedRepo]
    files: list[CachedFile] = field(default_factory=list)  # with files=True or a path pattern
    warnings: list[str] = field(default_factory=list)  # folders the scan could not read

    @property
    def total(self) -> int:
        """Everything the listed repos take on disk."""
        return sum(r.size + r.unreferenced + r.incomplete for r in self.repos)


@dataclass
class ClearResult:
    removed_repos: list[str]
    removed_files: list[str]
    freed: int
    dry_run: bool


def _split(pattern: str) -> tuple[str, str | None]:
    """'org/name/path-glob' -> ('org/name', 'path-glob'); 'org/name' -> ('org/name', None)."""
    parts = pattern.strip().strip("/").split("/", 2)
    if len(parts) == 3:
        return "/".join(parts[:2]), parts[2]
    return "/".join(parts), None


def _match(glob: str, text: str) -> bool:
    return fnmatch.fnmatchcase(text.lower(), glob.lower())


def _scan(cache_dir: Path | None) -> tuple[Path, object | None]:
    cache = Path(cache_dir) if cache_dir is not None else current().cache_dir
    try:
        return cache, scan_cache_dir(cache)
    except CacheNotFound:
        return cache, None


def _unreferenced(repo: object) -> tuple[int, int]:
    """(bytes of blobs no snapshot links to, bytes of *.incomplete downloads) of a repo."""
    used = {os.path.abspath(f.blob_path) for rev in repo.revisions for f in rev.files}  # type: ignore[attr-defined]
    blobs = Path(repo.repo_path) / "blobs"  # type: ignore[attr-defined]
    orphan = partial = 0
    if blobs.is_dir():
        for p in blobs.iterdir():
            try:
                size = p.stat().st_size
            except OSError:
                continue
            if p.name.endswith(".incomplete"):
                partial += size
            elif os.path.abspath(p) not in used and not p.name.endswith(".lock"):
                orphan += size
    return orphan, partial


def list_cache(
    pattern: str | None = None, *, cache_dir: Path | None = None, files: bool = False
) -> CacheListing:
    """What the cache holds, repos matching `pattern` only (all when None)."""
    cache, info = _scan(cache_dir)
    if info is None:
        return CacheListing(cache, [])
    repo_glob, path_glob = _split(pattern) if pattern else ("*", None)
    out = CacheListing(cache, [], warnings=[str(w) for w in info.warnings])  # type: ignore[attr-defined]
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):  # type: ignore[attr-defined]
        if not _match(repo_glob, repo.repo_id):
            continue
        entries = _files(repo)
        if path_glob is not None:
            entries = [f for f in entries if _match(path_glob, f.path)]
            if not entries:
                continue
        revisions = tuple(
            CachedRevision(
                rev.commit_hash, tuple(sorted(rev.refs)), int(rev.size_on_disk), len(rev.files)
            )
            for rev in sorted(repo.revisions, key=lambda r: r.commit_hash)
        )
        orphan, partial = _unreferenced(repo)
        out.repos.append(
            CachedRepo(
                repo.repo_id,
                repo.repo_type,
                Path(repo.repo_path),
                int(repo.size_on_disk),
                revisions,
                orphan,
                partial,
            )
        )
        if files or path_glob is not None:
            out.files.extend(entries)
    return out


def _files(repo: object) -> list[CachedFile]:
    out = []
    for rev in repo.revisions:  # type: ignore[attr-defined]
        for f in rev.files:
            rel = Path(f.file_path).relative_to(rev.snapshot_path).as_posix()
            out.append(
                CachedFile(
                    repo.repo_id,  # type: ignore[attr-defined]
                    rev.commit_hash,
                    rel,
                    int(f.size_on_disk),
                    Path(f.file_path),
                    Path(f.blob_path),
                )
            )
    return sorted(out, key=lambda f: (f.path, f.revision))


def clear_cache(
    pattern: str, *, cache_dir: Path | None = None, dry_run: bool = False
) -> ClearResult:
    """Remove what `pattern` matches (see the module docstring); `dry_run` only counts."""
    if not pattern or not pattern.strip():
        raise SaelabError("no cache pattern given: name the repos to clear, e.g. 'org/name' or '*'")
    cache, info = _scan(cache_dir)
    repo_glob, path_glob = _split(pattern)
    repos = [] if info is None else [r for r in info.repos if _match(repo_glob, r.repo_id)]  # type: ignore[attr-defined]
    if path_glob is None:
        if not repos:
            raise SaelabError(f"nothing in the Hugging Face cache ({cache}) matches {pattern!r}")
        return _clear_repos(info, repos, dry_run)
    chosen = [(r, f) for r in repos for f in _files(r) if _match(path_glob, f.path)]
    if not chosen:
        raise SaelabError(f"no cached file in {cache} matches {pattern!r}")
    return _clear_files(cache, chosen, dry_run)


def _clear_repos(info: object, repos: list, dry_run: bool) -> ClearResult:
    hashes = [rev.commit_hash for r in repos for rev in r.revisions]
    strategy = info.delete_revisions(*hashes)  # type: ignore[attr-defined]
    freed = int(strategy.expected_freed_size)
    extra = sum(sum(_unreferenced(r)) for r in repos)  # the repo folder goes whole
    if not dry_run:
        strategy.execute()
        for r in repos:  # a repo with leftovers the strategy does not know of
            shutil.rmtree(r.repo_path, ignore_errors=True)
    return ClearResult(sorted(r.repo_id for r in repos), [], freed + extra, dry_run)


def _clear_files(cache: Path, chosen: list, dry_run: bool) -> ClearResult:
    """Unlink each matched snapshot entry; a blob goes when no other entry of its repo links
    to it; a repo left without snapshots goes whole (refs included)."""
    freed = 0
    removed: list[str] = []
    for repo in {id(r): r for r, _ in chosen}.values():
        mine = [f for r, f in chosen if r is repo]
        going = {f.link for f in mine}
        kept_blobs = {os.path.abspath(f.blob) for f in _files(repo) if f.link not in going}
        blobs = {os.path.abspath(f.blob): f.size for f in mine}
        for blob, size in blobs.items():
            if blob not in kept_blobs:
                freed += size
                if not dry_run:
                    _remove_blob(cache, Path(blob))
        for f in mine:
            removed.append(f"{f.repo_id}/{f.path}@{f.revision[:8]}")
            if not dry_run:
                f.link.unlink(missing_ok=True)
                _prune(f.link.parent, Path(repo.repo_path) / "snapshots")
        snaps = Path(repo.repo_path) / "snapshots"
        if not dry_run and snaps.is_dir() and not any(snaps.iterdir()):
            shutil.rmtree(repo.repo_path, ignore_errors=True)
    return ClearResult([], removed, freed, dry_run)


def _remove_blob(cache: Path, blob: Path) -> None:
    """Unlink a repo blob; when it links into the shared blob store, collect that payload
    once nothing refers to it (huggingface_hub's own rule)."""
    target = None
    try:
        from huggingface_hub.utils._shared_blobs import shared_blob_target, sweep_shared_blob
    except ImportError:  # huggingface_hub without a shared store
        shared_blob_target = sweep_shared_blob = None  # type: ignore[assignment]
    if shared_blob_target is not None and blob.is_symlink():
        target = shared_blob_target(blob, cache)
    blob.unlink(missing_ok=True)
    if target is not None and sweep_shared_blob is not None:
        sweep_shared_blob(target, cache_dir=cache)


def _prune(folder: Path, stop: Path) -> None:
    d = folder
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent
