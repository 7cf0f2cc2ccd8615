"""Disk first: before any work, what a stage will download and write, and whether it fits.

`disk_report(paths_needed, target_dir)` answers the questions a user on a small disk asks
before a long run: how much is free where the run writes, what the Hugging Face cache already
holds of the files needed (reused, not downloaded again) and in all, and the planned peak.
Sizes come from the cache (no network) or from one HEAD request per file (no body is
downloaded). `check` then refuses what cannot fit, so a `max_disk` or free-disk refusal
happens before a model is loaded, not after a capture pass.

Files are given one by one, or in groups held at once (one SAE's weights and config): a
layer-major stage fetches a group, uses it, and releases it before the next (deleted when
eviction is on), so with eviction the peak is the largest group, without it the sum. The
budget rule is the `Fetcher`'s: every group that downloads must fit `max_disk` whole (its
cached files are held too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saelab.errors import BudgetError
from saelab.hub import cache
from saelab.hub.cache_admin import list_cache
from saelab.hub.fetch import DISK_MARGIN, Fetcher
from saelab.hub.settings import current
from saelab.hub.uri import HubPath, parse_hf_uri
from saelab.units import format_bytes

Needed = str | HubPath
_UNKNOWN_SIZE = 0


@dataclass(frozen=True)
class NeededFile:
    where: HubPath
    size: int
    cached: bool  # already in the hub cache: reused, not downloaded


@dataclass
class DiskReport:
    target_dir: Path
    target_free: int  # free bytes on the file system the stage writes to
    cache_dir: Path
    cache_free: int  # free bytes where the hub cache lives
    same_disk: bool
    groups: list[list[NeededFile]]
    cache_total: int  # what the hub cache holds in all (every repo)
    writes: int  # bytes the stage itself writes under target_dir
    evict: bool  # files deleted once used (layer-major eviction)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[NeededFile]:
        return [f for g in self.groups for f in g]

    @property
    def reused(self) -> int:
        return sum(f.size for f in self.files if f.cached)

    @property
    def to_download(self) -> int:
        return sum(f.size for f in self.files if not f.cached)

    @property
    def download_peak(self) -> int:
        """Downloaded bytes on disk at once: one group's with eviction, all without."""
        per = [sum(f.size for f in g if not f.cached) for g in self.groups]
        return max(per, default=0) if self.evict else sum(per)

    @property
    def peak(self) -> int:
        """New bytes on disk at the worst moment: downloads plus what the stage writes."""
        return self.download_peak + self.writes

    def lines(self) -> list[str]:
        """The report, a few lines for a stage to print before it starts."""
        out = [
            f"disk: {format_bytes(self.target_free)} free at {self.target_dir}"
            + ("" if self.same_disk else f"; {format_bytes(self.cache_free)} free at the hub"
               f" cache {self.cache_dir}"),
            f"hub cache: {format_bytes(self.cache_total)} in all; of the"
            f" {len(self.files)} file(s) needed, {format_bytes(self.reused)} are cached"
            f" (reused), {format_bytes(self.to_download)} to download",
            f"planned peak: {format_bytes(self.peak)} (downloads"
            f" {format_bytes(self.download_peak)}"
            + (", one group at a time" if self.evict and len(self.groups) > 1 else "")
            + f", writes {format_bytes(self.writes)})",
        ]  # fmt: skip
        return out + self.notes

    def problems(self, max_disk: int | None = None) -> list[str]:
        """Why it cannot fit, naming the sizes and the fixes; empty when it fits."""
        out = []
        if max_disk is not None:
            for g in self.groups:
                need = sum(f.size for f in g)
                if any(not f.cached for f in g) and need > max_disk:
                    what = g[0].where.uri if len(g) == 1 else f"{g[0].where.uri} and its files"
                    out.append(
                        f"{what} take {format_bytes(need)} at once, more than `max_disk`"
                        f" {format_bytes(max_disk)}: raise `max_disk` to at least"
                        f" {format_bytes(need)}"
                    )
                    break
        if self.same_disk:
            if self.peak > self.target_free - DISK_MARGIN:
                out.append(self._free_problem(self.peak, self.target_free, self.target_dir))
        else:
            if self.download_peak > self.cache_free - DISK_MARGIN:
                out.append(self._free_problem(self.download_peak, self.cache_free, self.cache_dir))
            if self.writes > self.target_free - DISK_MARGIN:
                out.append(self._free_problem(self.writes, self.target_free, self.target_dir))
        return out

    def _free_problem(self, need: int, free: int, where: Path) -> str:
        fix = "free disk space"
        if not self.evict and len(self.groups) > 1:
            fix += ", turn eviction on (each file deleted once used)"
        fix += ", or set HF_HOME to a bigger disk" if where == self.cache_dir else ""
        return (
            f"needs {format_bytes(need)} on {where} but {format_bytes(max(free, 0))} is free"
            f" ({format_bytes(DISK_MARGIN)} kept spare): {fix}"
        )

    def check(self, max_disk: int | None = None) -> None:
        """Raise BudgetError when the stage cannot fit (before anything is downloaded)."""
        probs = self.problems(max_disk)
        if probs:
            raise BudgetError(probs[0])


def _free(path: Path) -> tuple[int, int]:
    """(free bytes, device id) of the file system holding `path` (or its nearest parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize, os.stat(p).st_dev


def _size(hp: HubPath, fetcher: Fetcher) -> NeededFile:
    s = current()
    hit = cache.lookup(s.cache_dir, hp.repo_id, hp.path, hp.revision)
    if hit is not None:
        return NeededFile(hp, hit.stat().st_size, True)
    size = fetcher.size(hp.repo_id, hp.path, hp.revision)  # one HEAD request
    return NeededFile(hp, _UNKNOWN_SIZE if size is None else size, False)


def disk_report(
    paths_needed: Sequence[Needed | Sequence[Needed]],
    target_dir: Path | str,
    *,
    writes: int = 0,
    evict: bool = False,
    fetcher: Fetcher | None = None,
) -> DiskReport:
    """What a stage will need on disk (see the module docstring). `paths_needed` holds
    `hf://` URIs or `HubPath`s, or groups of them used together; `writes` is what the stage
    writes under `target_dir`."""
    fetcher = fetcher or Fetcher(quiet=True)
    s = current()
    groups: list[list[NeededFile]] = []
    missing: list[str] = []
    for item in paths_needed:
        members = [item] if isinstance(item, (str, HubPath)) else list(item)
        group = []
        for m in members:
            hp = parse_hf_uri(m) if isinstance(m, str) else m
            nf = _size(hp, fetcher)
            if nf.size == _UNKNOWN_SIZE and not nf.cached:
                missing.append(hp.uri)
            group.append(nf)
        groups.append(group)
    target_free, target_dev = _free(Path(target_dir))
    cache_free, cache_dev = _free(s.cache_dir)
    report = DiskReport(
        target_dir=Path(target_dir),
        target_free=target_free,
        cache_dir=s.cache_dir,
        cache_free=cache_free,
        same_disk=target_dev == cache_dev,
        groups=groups,
        cache_total=list_cache(cache_dir=s.cache_dir).total,
        writes=int(writes),
        evict=evict,
    )
    if missing:
        report.notes.append(f"not on the hub (sized 0): {', '.join(missing[:3])}")
    return report
