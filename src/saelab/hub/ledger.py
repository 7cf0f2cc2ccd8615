"""Which cached files a Fetcher is using, and which it has finished with but left on disk.

The disk budget is about bytes, not paths: two paths (or revisions) with the same content share
one blob, so every total here counts each blob once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One file handed out by a Fetcher."""

    repo_id: str
    cache_dir: Path  # the hub cache it lives in (settings can change between calls)
    pointer: Path  # the snapshot path handed out
    blob: Path  # what it resolves to (the pointer itself where links are not allowed)
    size: int

    @classmethod
    def of(cls, repo_id: str, cache_dir: Path, pointer: Path) -> Entry:
        blob = Path(os.path.realpath(pointer))
        return cls(repo_id, cache_dir, pointer, blob, blob.stat().st_size)


class Ledger:
    """Held files (fetched, not released) and kept files (released, still in the cache)."""

    def __init__(self) -> None:
        self.held: dict[Path, Entry] = {}
        self.kept: dict[Path, Entry] = {}  # in release order: the oldest is evicted first
        self.largest = 0  # the biggest file seen, for the automatic eviction rule

    def hold(self, entry: Entry) -> None:
        self.kept.pop(entry.pointer, None)
        self.held[entry.pointer] = entry
        self.largest = max(self.largest, entry.size)

    def release(self, pointer: Path) -> Entry | None:
        """Stop holding a path; None if it was not held."""
        return self.held.pop(pointer, None)

    def keep(self, entry: Entry) -> None:
        self.kept[entry.pointer] = entry

    def blob_held(self, blob: Path) -> bool:
        return any(e.blob == blob for e in self.held.values())

    def forget_blob(self, blob: Path) -> None:
        """After a blob is deleted, every entry that pointed at it is gone too."""
        for table in (self.held, self.kept):
            for p in [p for p, e in table.items() if e.blob == blob]:
                del table[p]

    def entries(self) -> list[Entry]:
        return [*self.held.values(), *self.kept.values()]

    @property
    def held_bytes(self) -> int:
        return sum({e.blob: e.size for e in self.held.values()}.values())

    @property
    def kept_bytes(self) -> int:
        held = {e.blob for e in self.held.values()}
        return sum({e.blob: e.size for e in self.kept.values() if e.blob not in held}.values())
