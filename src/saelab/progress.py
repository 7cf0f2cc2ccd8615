"""Progress for long work: what is running, how far, how fast, how long is left.

One small wrapper over rich so every stage reports the same way and `--quiet` silences all of
it. Output goes to stderr so stdout stays clean for results and pipes.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from saelab.units import format_seconds

# Logs and pipes get wide tables instead of rich's 80-column fallback (it truncates cells).
_WIDTH = None if sys.stdout.isatty() else 160
_err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
_out = Console(soft_wrap=True, width=_WIDTH)


def console(stderr: bool = False) -> Console:
    """The shared consoles: results on stdout, progress and status on stderr."""
    return _err if stderr else _out


class Reporter:
    """A progress bar with a throughput figure (e.g. tokens/s) beside the item count."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "items",
        rate_unit: str = "tok",
        quiet: bool = False,
        done: int = 0,
    ):
        self.what = what
        self.total = total
        self.unit = unit
        self.rate_unit = rate_unit
        self._silent = quiet
        self._rate_count = 0
        self._t0 = time.perf_counter()
        self._done = done
        self._progress: Progress | None = None
        self._task = None
        self._last_line = 0.0
        self._note = ""

    def __enter__(self) -> Reporter:
        if self._silent:
            return self
        if _err.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=_err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.what, total=self.total, completed=self._done, rate="", note=""
            )
        return self

    def advance(self, n: int, rate_count: int = 0, note: str | None = None) -> None:
        """`n` more items done (and `rate_count` more of the rate's unit); `note` replaces
        the text shown after the rate (e.g. each worker's rate)."""
        self._done += n
        self._rate_count += rate_count
        if note is not None:
            self._note = note
        if self._silent:
            return
        rate = self.rate()
        rate_txt = f"{rate:,.0f} {self.rate_unit}/s" if rate else ""
        if self._progress is not None:
            self._progress.update(self._task, advance=n, rate=rate_txt, note=self._note)
            return
        # Not a terminal (logs, CI): one plain line at most every 5 s, and at the end.
        now = time.perf_counter()
        if now - self._last_line > 5 or self._done >= self.total:
            self._last_line = now
            pct = 100.0 * self._done / max(self.total, 1)
            elapsed = now - self._t0
            left = ""
            if 0 < self._done < self.total:
                left = f", {format_seconds(elapsed * (self.total - self._done) / self._done)} left"
            note = f" [{self._note}]" if self._note else ""
            print(
                f"{self.what}: {self._done}/{self.total} {self.unit} ({pct:.0f}%) {rate_txt}{left}"
                f"{note}",
                file=sys.stderr,
                flush=True,
            )

    def rate(self) -> float:
        dt = time.perf_counter() - self._t0
        return self._rate_count / dt if dt > 0 and self._rate_count else 0.0

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


class WorkerRates:
    """Each worker's rate over the units it finished (their size per second of their own
    time), for a progress bar shared by several workers: "2 workers: 3.1, 2.9 prompts/s"."""

    def __init__(self, unit: str = "units") -> None:
        self.unit = unit
        self._size: dict[str, float] = {}
        self._seconds: dict[str, float] = {}

    def add(self, worker: str, size: int, seconds: float) -> None:
        self._size[worker] = self._size.get(worker, 0) + size
        self._seconds[worker] = self._seconds.get(worker, 0.0) + max(seconds, 0.0)

    def rates(self) -> dict[str, float]:
        return {w: self._size[w] / s for w, s in self._seconds.items() if s > 0}

    def note(self) -> str:
        """Empty with one worker (the bar's own rate says it all)."""
        rates = sorted(self.rates().values(), reverse=True)
        if len(self._size) < 2 or not rates:
            return ""
        if len(rates) <= 4:
            each = ", ".join(f"{r:,.3g}" for r in rates)
        else:
            each = f"{rates[-1]:,.3g}-{rates[0]:,.3g}"
        return f"{len(self._size)} workers: {each} {self.unit}/s"


def say(msg: str, quiet: bool = False) -> None:
    """A status line on stderr (silenced by --quiet)."""
    if not quiet:
        _err.print(msg, highlight=False)
