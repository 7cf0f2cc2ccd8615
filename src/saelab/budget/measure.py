"""Live measurement: resident memory, GPU memory, disk use and free space.

The plan predicts; these functions measure what really happened, so the manifest can hold
both and anyone can check the plan against reality.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import threading
from pathlib import Path
from types import TracebackType

import psutil


def current_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def process_peak_rss() -> int:
    """Peak resident memory of this process image since it started (bytes).

    On Linux this is VmHWM from /proc/self/status, not `ru_maxrss`: the kernel carries the
    parent's high-water mark into `ru_maxrss` across fork and exec, so a CLI started from a
    2 GB test process reported 2 GB for a 1 GB run.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def available_memory() -> int:
    return int(psutil.virtual_memory().available)


def total_memory() -> int:
    return int(psutil.virtual_memory().total)


def disk_free(path: Path | str) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def dir_size(path: Path | str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def gpu_peak_bytes() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # pragma: no cover - torch always importable here
        pass
    return 0


class PeakSampler:
    """Samples RSS in a background thread to find the peak of one stage.

    `ru_maxrss` is exact but covers the process lifetime (a notebook or a test session that
    loaded other things before); the sampler covers just the stage, at the cost of missing
    spikes shorter than the interval. Both go into the manifest.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(proc.memory_info().rss))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = current_rss()
        self._thread = threading.Thread(target=self._run, name="saelab-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        self.peak = max(self.peak, current_rss())
