"""A full disk becomes one line: what was being written, how much it needs, what is free.

Every writer builds its unit under a temporary name and removes it when anything fails
(`run.atomic_write_bytes`, `run.atomic_dir`), so a full disk leaves no half-written unit;
what was missing was the message: an `OSError: [Errno 28]` traceback from deep inside a
codec thread. `disk_space_for` wraps a unit's write (outside its atomic block, so the
temporary files are gone by the time the error is raised) and turns the three errors a
full disk or a size limit gives into a SaelabError:

    ENOSPC  no space left on the device
    EDQUOT  the user's disk quota is used up
    EFBIG   a file grew past the size limit (RLIMIT_FSIZE / `ulimit -f`, or the file system's)
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from saelab.errors import SaelabError
from saelab.units import format_bytes

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def _free(where: Path) -> int | None:
    for p in (where, *where.parents):
        if p.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(p).free
            return None
    return None


def disk_full_error(what: str, where: Path | str, needed: int | None, e: OSError) -> SaelabError:
    """The one-line error for `e` (a DISK_FULL OSError) while writing `what` at `where`."""
    where = Path(where)
    need = f"it needs about {format_bytes(needed)}" if needed else "it needs more space"
    if e.errno == errno.EFBIG:
        return SaelabError(
            f"writing {what} to {where} hit the file size limit ({need}); raise the limit"
            " (`ulimit -f`) and run the same command again: finished units are kept"
        )
    free = _free(where)
    free_txt = f", {format_bytes(free)} free" if free is not None else ""
    kind = "the disk quota is used up" if e.errno == errno.EDQUOT else "no space left on device"
    return SaelabError(
        f"{kind} writing {what} to {where} ({need}{free_txt}); free some space and run the"
        " same command again: finished units are kept, the unfinished one was removed"
    )


@contextlib.contextmanager
def disk_space_for(
    what: str, where: Path | str, needed: int | Callable[[], int | None] | None = None
) -> Iterator[None]:
    """Turn a full disk inside the block into `disk_full_error`; `needed` may be a function
    so the estimate can use what the block learnt before it failed."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        size = needed() if callable(needed) else needed
        raise disk_full_error(what, where, size, e) from e
