"""Fetch single files from the model hub within a disk budget.

A pretrained SAE suite can be far bigger than the disk (a cross-layer transcoder is ~160 GiB),
while a layer-major pipeline needs only one layer's file at a time. `Fetcher` downloads exactly
the files asked for, refuses a download that cannot fit *before* the first byte, and on
`release` deletes a finished file (snapshot link and blob) so the next layer has room:

    fetcher = Fetcher(max_disk=parse_size("20GB"))
    for layer in layers:
        path = fetcher.fetch("org/name", f"W_enc_{layer}.safetensors")
        ...use it for every prompt...
        fetcher.release(path)

Files land in the ordinary huggingface_hub cache (HF_HOME), so other tools reuse them.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import WeakFileLock, build_hf_headers

import saelab.hub.cache as cache
import saelab.hub.download as download
import saelab.hub.remote as remote
from saelab.errors import BudgetError, SaelabError
from saelab.hub.ledger import Entry, Ledger
from saelab.hub.settings import HubSettings, current
from saelab.progress import Reporter, say
from saelab.units import format_bytes

_MIB = 1 << 20
# Disk the budget never spends: logs, temporary files and the filesystem itself need room.
DISK_MARGIN = 256 * _MIB


@dataclass
class FetchStats:
    """What a Fetcher did, for progress lines, manifests and tests."""

    downloads: int = 0  # file bodies downloaded (one per cache miss, however many GETs it took)
    requests: int = 0  # GET requests for file bodies, resumed retries included
    gets: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    # ^ GET requests per (repo_id, path, revision as asked)
    bytes_downloaded: int = 0  # body bytes received, bytes of cut attempts included
    cache_hits: int = 0  # fetches answered from the cache without a body download
    held_bytes: int = 0  # bytes of fetched files not yet released
    kept_bytes: int = 0  # bytes of released files left in the cache (eviction off or deferred)
    peak_cache_bytes: int = 0  # most bytes this Fetcher had in the cache (held + kept) at once
    evicted_bytes: int = 0  # bytes deleted from the cache by release/evict_all


class Fetcher:
    """Downloads single files through huggingface_hub (honouring HF_HOME, HF_ENDPOINT,
    HF_HUB_OFFLINE, HF_TOKEN), never more than asked.

    max_disk: bytes of fetched, unreleased files this Fetcher may hold at once (None: only
        free disk limits). A download that would exceed it is refused before it starts.
    evict: what `release` does with a finished file. True deletes it at once; False never
        deletes (released files stay cached and no longer count against max_disk); None
        (automatic) deletes it when max_disk is under twice the largest file seen or free
        disk is tight, and otherwise keeps it as a cache for a later pass, deleting kept
        files oldest first as soon as a download needs their room under max_disk or on disk.
    quiet: no progress bars or status lines.
    retries, backoff_s: a cut download is resumed up to `retries` times, waiting backoff_s,
        then twice as long, and so on.
    """

    def __init__(
        self,
        *,
        max_disk: int | None = None,
        evict: bool | None = None,
        quiet: bool = False,
        retries: int = 4,
        backoff_s: float = 1.0,
    ):
        if max_disk is not None and max_disk <= 0:
            raise SaelabError(f"`max_disk` {max_disk} must be a positive size, e.g. 20GB")
        self.max_disk = max_disk
        self.evict = evict
        self.quiet = quiet
        self.retries = retries
        self.backoff_s = backoff_s
        self.stats = FetchStats()
        self._ledger = Ledger()

    # -- public API ---------------------------------------------------------------------

    def size(self, repo_id: str, path: str, revision: str | None = None) -> int | None:
        """Bytes of a file from one HEAD request; None when the repo has no such file."""
        s = current()
        if not s.offline:
            try:
                meta = remote.head(s, repo_id, path, revision, retry=True)
            except remote.Unreachable as e:
                hit = cache.lookup(s.cache_dir, repo_id, path, revision)
                if hit is None:
                    raise e.error from None
                return hit.stat().st_size
            if meta is None:
                return None
            if meta.size is None:
                raise SaelabError(
                    f"{remote.uri(repo_id, path, revision)}: {s.endpoint} did not report a size: "
                    "check that HF_ENDPOINT points at a model hub"
                )
            return meta.size
        hit = cache.lookup(s.cache_dir, repo_id, path, revision)
        if hit is None:
            raise remote.offline_error(repo_id, path, revision, s)
        return hit.stat().st_size

    def fetch(self, repo_id: str, path: str, revision: str | None = None) -> Path:
        """The local path of the whole file (a huggingface_hub snapshot path).

        Served from the cache when the same content is there; otherwise downloaded after the
        budget check. Raises BudgetError before any byte when it cannot fit.
        """
        s = current()
        local = cache.lookup(s.cache_dir, repo_id, path, revision)
        if local is not None and (s.offline or cache.is_commit(revision)):
            return self._hit(s, repo_id, local)  # immutable or no choice: no network call
        if s.offline:
            raise remote.offline_error(repo_id, path, revision, s)
        try:
            meta = remote.head(s, repo_id, path, revision, retry=local is None)
        except remote.Unreachable as e:
            if local is None:
                raise e.error from None
            say(f"{s.endpoint} is unreachable: using the cached {path}", self.quiet)
            return self._hit(s, repo_id, local)
        if meta is None:
            raise SaelabError(
                f"{remote.uri(repo_id, path, revision)} does not exist (or is a folder): "
                f"check the path against the file list at {s.endpoint}/{repo_id}"
            )
        pointer = cache.pointer_path(s.cache_dir, repo_id, meta.commit, path)
        blob = cache.blob_path(s.cache_dir, repo_id, meta.etag)
        if not pointer.is_file() and blob.is_file():
            cache.link(blob, pointer)  # same bytes already cached under another name
        if pointer.is_file():
            cache.write_ref(s.cache_dir, repo_id, revision, meta.commit)
            return self._hit(s, repo_id, pointer)
        if meta.size is not None:
            self._make_room(s, meta.size)
            self._check_budget(s, remote.uri(repo_id, path, revision), meta.size)
        self._download(s, repo_id, path, revision, meta, blob)
        cache.link(blob, pointer)
        cache.write_ref(s.cache_dir, repo_id, revision, meta.commit)
        self._hold(Entry.of(repo_id, s.cache_dir, pointer))
        return pointer

    def release(self, path: Path) -> None:
        """Done with a fetched file: when eviction is on, delete it (link and blob).

        A path this Fetcher did not hand out, or already released, is left alone. A blob that
        another still-held path shares is deleted when the last of them is released.
        """
        entry = self._ledger.release(Path(path))
        if entry is None:
            return
        if self._evicting(entry.cache_dir) and not self._ledger.blob_held(entry.blob):
            self._delete(entry)
        else:
            self._ledger.keep(entry)
        self._recount()

    def evict_all(self) -> None:
        """Delete from the cache every file this Fetcher handed out and has not deleted yet,
        released or not (cache hits included)."""
        for entry in self._ledger.entries():
            self._delete(entry)
        self._recount()

    # -- bookkeeping --------------------------------------------------------------------

    def _hit(self, s: HubSettings, repo_id: str, pointer: Path) -> Path:
        self.stats.cache_hits += 1
        self._hold(Entry.of(repo_id, s.cache_dir, pointer))
        return pointer

    def _hold(self, entry: Entry) -> None:
        self._ledger.hold(entry)
        self._recount()

    def _recount(self) -> None:
        self.stats.held_bytes = self._ledger.held_bytes
        self.stats.kept_bytes = self._ledger.kept_bytes
        now = self.stats.held_bytes + self.stats.kept_bytes
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, now)

    def _delete(self, entry: Entry) -> None:
        """Remove a file (link and blob) and forget every entry that shared its blob."""
        freed = 0
        if entry.pointer.is_symlink() or entry.pointer.exists():
            freed = cache.remove(entry.cache_dir, entry.repo_id, entry.pointer)
        self._ledger.forget_blob(entry.blob)
        self.stats.evicted_bytes += freed
        if freed:
            say(f"evicted {entry.pointer.name} ({format_bytes(freed)})", self.quiet)

    def _evicting(self, cache_dir: Path) -> bool:
        """Whether a file released now should be deleted now."""
        if self.evict is not None:
            return self.evict
        largest = self._ledger.largest
        if self.max_disk is not None and self.max_disk < 2 * largest:
            return True
        return _free_bytes(cache_dir) < 2 * largest + DISK_MARGIN

    def _make_room(self, s: HubSettings, size: int) -> None:
        """In automatic mode, delete kept files (oldest first) that a new download needs."""
        if self.evict is not None:
            return
        for entry in list(self._ledger.kept.values()):
            over_budget = (
                self.max_disk is not None
                and self._ledger.held_bytes + self._ledger.kept_bytes + size > self.max_disk
            )
            if not over_budget and _free_bytes(s.cache_dir) - DISK_MARGIN >= size:
                break
            if not self._ledger.blob_held(entry.blob):
                self._delete(entry)
        self._recount()

    # -- budget and download ------------------------------------------------------------

    def _check_budget(self, s: HubSettings, where: str, size: int) -> None:
        """Refuse a download that cannot fit, naming the file, its size, the budget and fixes."""
        held = self.stats.held_bytes
        unreleased = (
            f"; {format_bytes(held)} is held by fetched files not yet released" if held else ""
        )
        free = _free_bytes(s.cache_dir)
        if size > free - DISK_MARGIN:
            raise BudgetError(
                f"{where} is {format_bytes(size)} but the disk holding the hub cache "
                f"({s.cache_dir}) has {format_bytes(max(free, 0))} free and "
                f"{format_bytes(DISK_MARGIN)} is kept spare{unreleased}: free disk space, set "
                "HF_HOME to a bigger disk, or pass `evict` so each file is deleted once used"
            )
        if self.max_disk is not None and size > self.max_disk - held:
            raise BudgetError(
                f"{where} is {format_bytes(size)} but `max_disk` {format_bytes(self.max_disk)} "
                f"leaves {format_bytes(max(self.max_disk - held, 0))}{unreleased}: raise "
                f"`max_disk` to at least {format_bytes(size + held)}, pass `evict` so each file "
                "is deleted once used, or free disk space"
            )

    def _download(
        self,
        s: HubSettings,
        repo_id: str,
        path: str,
        revision: str | None,
        meta: remote.RemoteFile,
        blob: Path,
    ) -> None:
        """Download into a temporary file beside the blob and rename it into place when whole.

        The temporary name ends in `.incomplete`, which huggingface_hub never trusts, and it is
        deleted on any failure, so a cut download leaves nothing a later call could use.
        """
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = cache.lock_path(s.cache_dir, repo_id, meta.etag)
        lock.parent.mkdir(parents=True, exist_ok=True)
        key = (repo_id, path, revision)
        where = remote.uri(repo_id, path, revision)
        with WeakFileLock(lock):
            if blob.is_file():  # another process finished it while we waited
                self.stats.cache_hits += 1
                return
            cache.remove_stale_partials(blob)
            tmp = blob.with_name(f"{blob.name}.saelab-{uuid.uuid4().hex[:8]}.incomplete")
            total_mib = max(1, math.ceil((meta.size or 0) / _MIB))
            shown = 0
            before = self.stats.held_bytes + self.stats.kept_bytes

            def on_request() -> None:
                self.stats.requests += 1
                self.stats.gets[key] += 1

            try:
                with (
                    Reporter(
                        f"download {repo_id}/{path}", total_mib, "MiB", "MiB", self.quiet
                    ) as rep,
                    tmp.open("w+b") as out,
                ):

                    def on_bytes(n: int, pos: int) -> None:
                        nonlocal shown
                        self.stats.bytes_downloaded += n
                        peak = max(self.stats.peak_cache_bytes, before + pos)
                        self.stats.peak_cache_bytes = peak
                        step = min(pos // _MIB, total_mib) - shown
                        if step > 0:
                            shown += step
                            rep.advance(step, rate_count=step)

                    download.stream(
                        meta.url,
                        out,
                        headers=build_hf_headers(),
                        size=meta.size,
                        etag=meta.etag,
                        retries=self.retries,
                        backoff_s=self.backoff_s,
                        on_bytes=on_bytes,
                        on_request=on_request,
                    )
                    out.flush()
                    os.fsync(out.fileno())
                    if shown < total_mib:
                        rep.advance(total_mib - shown, rate_count=total_mib - shown)
                os.replace(tmp, blob)
            except download.Retryable as e:
                raise SaelabError(
                    f"downloading {where} failed after {self.retries + 1} attempts ({e}); nothing "
                    f"was kept in the cache: check the connection to {s.endpoint} and run again"
                ) from e
            except HfHubHTTPError as e:
                raise remote.http_error(e, s, repo_id, path, revision) from e
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise BudgetError(
                    f"the disk filled up while downloading {where} ({s.cache_dir}); the partial "
                    "file was deleted: free disk space, set HF_HOME to a bigger disk, or lower "
                    "`max_disk` so saelab refuses before downloading"
                ) from e
            finally:
                tmp.unlink(missing_ok=True)
        self.stats.downloads += 1


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
