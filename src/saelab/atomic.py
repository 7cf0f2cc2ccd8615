"""Files written whole: atomic writes, atomic folders, debris of killed writers, and hashes.

Every output saelab writes goes through here, so a reader (or a resumed run) sees either the
old content or the new, never half of it: a file or folder is built under a temporary name
(`.tmp-...`) in its final folder and renamed into place. Anything still carrying that prefix
was left by a writer that was killed and may be removed by the next writer of that folder.
Nothing here knows of runs, stages or the command line; `store` and `sae` use it directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saelab.nospace import disk_space_for

TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes, what: str | None = None) -> None:
    """Write a file so that readers see either the old content or the new, never half.

    A full disk removes the temporary file and is one SaelabError naming `what` (default:
    the file's name) and the bytes it needed."""
    path = Path(path)
    with disk_space_for(what or path.name, path.parent, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` only if the block completes.

    An existing `final` is replaced. On any exception (including KeyboardInterrupt) the
    temporary folder is removed, so a failed unit leaves nothing behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + "-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_debris(folder: Path) -> None:
    """Delete temporary files and folders a killed writer left in `folder` (not recursive)."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def is_debris(rel: Path) -> bool:
    """Whether a path (relative to a store's root) lies inside a writer's temporary name."""
    return any(part.startswith(TMP_PREFIX) for part in rel.parts)


def file_digest(path: Path | str) -> str:
    """sha256 of a file, read in blocks (files may be larger than memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tree_digests(root: Path, base: Path | None = None) -> dict[str, str]:
    """sha256 of every file below `root`, keyed by path relative to `base` (default: root)."""
    base = base or root
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(base).as_posix()] = file_digest(p)
    return out
