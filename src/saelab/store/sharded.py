"""What reading any sharded store shares (the activation store, the trace store): finding the
store root, its static metadata, the complete shards in order, the hooks it holds, and the
size of every file.

Readers never modify a store: a `.tmp-*` folder may be a shard another process is writing
right now, so it is skipped, not removed (removing debris is the writer's job).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from saelab.atomic import is_debris
from saelab.damage import Origin, one_line
from saelab.errors import SaelabError
from saelab.store.codecs import StoreDType, check_dtype

S = TypeVar("S", bound="ShardedStore")


class ShardedStore:
    """The common part of a store reader; subclasses read their own arrays."""

    what = "store"  # how messages name it: "activation store", "trace store"

    def __init__(self, root: Path | str, meta: dict[str, Any] | None, origin: Origin) -> None:
        self.path = Path(root)
        self.origin = origin  # who writes the store: named when a file is damaged
        if meta is None:
            raise SaelabError(f"no {self.what} at {self.path}")
        try:
            self.hooks: list[str] = [str(h) for h in meta["hooks"]]
            self.d_model: dict[str, int] = {h: int(meta["d_model"][h]) for h in self.hooks}
            self.dtype: str = str(meta["dtype"])
            self._dt: StoreDType = check_dtype(self.dtype)
            self.positions: str = str(meta["positions"])
            self.keep_bits: int | None = meta["keep_bits"]
            self.attrs: dict[str, Any] = dict(meta.get("attrs", {}))
        except (KeyError, TypeError, ValueError, SaelabError) as e:
            raise origin.error(self.path / "zarr.json", one_line(e)) from e
        shard_dir = self.path / "shards"
        found = [
            p
            for p in (shard_dir.iterdir() if shard_dir.is_dir() else ())
            if p.name.isdigit() and (p / "zarr.json").is_file()  # never a .tmp-* folder
        ]
        self._shard_paths: list[Path] = sorted(found, key=lambda p: int(p.name))
        self.shard_ids: list[int] = [int(p.name) for p in self._shard_paths]

    def check_hook(self, hook: str) -> str:
        if hook not in self.d_model:
            raise SaelabError(
                f"hook {hook!r} is not in {self.what} {self.path}; "
                f"stored hooks: {', '.join(self.hooks) or 'none'}"
            )
        return hook

    def file_sizes(self) -> dict[str, int]:
        """Bytes of every complete file of the store, by path relative to its root."""
        sizes: dict[str, int] = {}
        for f in self.path.rglob("*"):
            rel = f.relative_to(self.path)
            if f.is_file() and not is_debris(rel):
                sizes[rel.as_posix()] = f.stat().st_size
        return sizes


def open_store(
    path: Path | str,
    folder: str,
    read_meta: Callable[[Path], dict[str, Any] | None],
    make: Callable[[Path], S],
    what: str,
) -> S:
    """A store at `path`, or in its default folder below it (a run keeps it there)."""
    p = Path(path)
    for root in (p, p / folder):
        if read_meta(root) is not None:
            return make(root)
    raise SaelabError(f"no {what} at {p} (nor in its {folder}/ folder)")
