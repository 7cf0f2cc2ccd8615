"""Executors run a stage's units and hand each one's record back to the driver.

`local` runs them one after another in this process, with one `Worker` whose cache keeps the
model (and other heavy resources) loaded across units. `ray` (`pipeline.executors_ray`, which
registers itself here) keeps one actor per worker, each holding its own `Worker`; a unit
travels as `(stage.parts(), unit)`, is run there by `execute_unit`, and only its record
(paths, hashes, small info) comes back; the driver alone writes the manifest. Results do not
depend on the executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from saelab.budget.measure import PeakSampler
from saelab.pipeline.options import StageOptions, check_executor
from saelab.pipeline.stage import Stage, Unit, Worker


class Executor(Protocol):
    """Runs units; yields (unit, record) as each completes, in any order."""

    name: str

    def run(self, stage: Stage[Any], units: Sequence[Unit]) -> Iterator[tuple[Unit, dict]]: ...

    def close(self) -> None:
        """Release what the executor holds (processes, a cluster it started)."""


def execute_unit(stage: Stage[Any], unit: Unit, worker: Worker) -> dict[str, Any]:
    """Run one unit and measure it: the uniform manifest record of that unit."""
    with PeakSampler() as rss:
        t0 = time.perf_counter()
        result = stage.run_unit(unit, worker)
        seconds = time.perf_counter() - t0
    size = sum((stage.run.path / rel).stat().st_size for rel in result.files)
    return {
        "files": dict(sorted(result.files.items())),
        "bytes": size,
        "seconds": round(seconds, 3),
        "peak_rss": rss.peak,
        "worker": worker.name,
        **result.info,
    }


class LocalExecutor:
    """Units one after another in this process, sharing one worker cache."""

    name = "local"

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker or Worker()

    def run(self, stage: Stage[Any], units: Sequence[Unit]) -> Iterator[tuple[Unit, dict]]:
        for unit in units:
            yield unit, execute_unit(stage, unit, self.worker)

    def close(self) -> None:
        """Nothing to release: the worker's cache goes with the executor."""


#: executor name -> how to build it from a stage's options (and a worker the caller has)
ExecutorFactory = Callable[[StageOptions, Worker | None], Executor]
_FACTORIES: dict[str, ExecutorFactory] = {"local": lambda options, worker: LocalExecutor(worker)}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make `--executor NAME` build executors with `factory` (the Ray module does this)."""
    _FACTORIES[name] = factory


def make_executor(options: StageOptions, worker: Worker | None = None) -> Executor:
    """The executor a stage's options ask for."""
    return _FACTORIES[check_executor(options)](options, worker)
