"""`--executor ray`: a stage's units on a Ray cluster, with the same results as `local`.

    run_stage(EncodeStage(cfg), RayExecutor("auto"))        # or: saelab encode --executor ray

The driver (this process) keeps every decision: it binds the configuration, hands units to
the workers (`ray_workers.UnitActor`, one per GPU or CPU) one at a time per worker, in the
stage's order (so encode stays layer-major on every worker), and records each unit when its
record comes back, exactly as with `local`: a run can switch executors and resume. Workers
write their files into the run folder themselves, atomically under temporary names, and send
back paths and hashes only; results arrive in any order and `finish` reads what units wrote.

Faults: a worker that dies during a unit (killed, out of memory, its node lost) is replaced
and the unit goes to the next free worker, up to `retries` times; the unit's half-written
files never had their final names, and only results the driver received are recorded. A unit
that raises stops the run: a user's mistake (SaelabError) with its own one-line message and
type, anything else with the worker's traceback. When the run stops for any reason, workers
still busy are killed, so nothing keeps writing into the run folder behind the driver.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any

from saelab.errors import SaelabError
from saelab.pipeline.executors import register_executor
from saelab.pipeline.options import StageOptions
from saelab.pipeline.ray_workers import (
    START_TIMEOUT_S,
    Slot,
    WorkerPool,
    check_address,
    driver_context,
    import_ray,
)
from saelab.pipeline.stage import Stage, Unit, Worker
from saelab.progress import say

RETRIES = 2  # a unit whose worker died this many times more is not tried again


class RayExecutor:
    """Units on a Ray cluster: one actor per worker, each keeping its own `Worker` cache.

    address: None starts a local cluster in this process (shut down by `close`); "auto" or
        HOST:PORT joins a running one (`ray start --head`). An already initialised Ray (a
        notebook, a test) is used as it is.
    workers: actors to start (default: one per GPU of the cluster, else one per CPU).
    retries: how often a unit is run again after its worker died.

    The actors live until `close()`, so stages run through one executor (encode after the
    extract it requires) share loaded models.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        retries: int = RETRIES,
        quiet: bool = False,
    ) -> None:
        import_ray()  # without Ray: the one-line way to get it, before anything runs
        check_address(address)
        self.pool = WorkerPool(address, workers, quiet)
        self.retries = retries
        self.quiet = quiet
        #: worker name -> (pid, unit key) of the unit it runs now (what a test kills)
        self.running: dict[str, tuple[int, str]] = {}
        #: one entry per worker that died during a unit: unit, worker, pid, error
        self.deaths: list[dict[str, Any]] = []

    def workers(self) -> list[dict[str, Any]]:
        """The ready workers: name, pid, node."""
        return [{"name": s.name, "pid": s.pid, "node": s.node} for s in self.pool.slots if s.name]

    def run(self, stage: Stage[Any], units: Sequence[Unit]) -> Iterator[tuple[Unit, dict]]:
        if not units:
            return
        ray = import_ray()
        self.pool.start()
        token, context = uuid.uuid4().hex, driver_context()
        cls, config, run = stage.parts()
        parts = (cls, config.model_copy(update={"quiet": True}), run)
        queue: deque[Unit] = deque(units)
        deaths: Counter[str] = Counter()
        busy: dict[Any, tuple[Slot, Unit]] = {}
        try:
            while queue or busy:
                taken = {id(s) for s, _ in busy.values()}
                for slot in self.pool.idle(taken):
                    if not queue:
                        break
                    unit = queue.popleft()
                    busy[slot.actor.run.remote(token, context, parts, unit)] = (slot, unit)
                    self.running[slot.name] = (slot.pid, unit.key)
                starting = {s.ready: s for s in self.pool.starting()}
                if not busy and not starting:
                    raise SaelabError("every Ray worker is gone; run the same command again")
                done, _ = ray.wait(
                    [*busy, *starting], num_returns=1, timeout=None if busy else START_TIMEOUT_S
                )
                if not done:
                    raise SaelabError(self.pool._no_room())
                ref = done[0]
                if ref in starting:
                    self.pool.started(starting[ref])
                    continue
                slot, unit = busy.pop(ref)
                self.running.pop(slot.name, None)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _unit_error(e) from None
                except ray.exceptions.RayError as e:  # the worker died during the unit
                    deaths[unit.key] += 1
                    self._died(stage, unit, slot, e, deaths[unit.key])
                    queue.appendleft(unit)
                    continue
                yield unit, record
        finally:
            for slot, _ in busy.values():  # the run stops: nobody writes behind the driver
                self.pool.remove(slot)
            self.running.clear()

    def _died(self, stage: Stage[Any], unit: Unit, slot: Slot, e: Exception, n: int) -> None:
        reason = type(e).__name__
        self.deaths.append({"unit": unit.key, "worker": slot.name, "pid": slot.pid,
                            "error": reason})  # fmt: skip
        if n > self.retries:
            raise SaelabError(
                f"{stage.name} unit {unit.key}: its Ray worker died {n} times (last {slot.name},"
                f" {reason}); see `ray logs` for what killed it (memory?), then run the same"
                " command again to resume"
            ) from e
        say(f"ray: worker {slot.name} died during {unit.key} ({reason}); running it again on"
            " another worker", self.quiet)  # fmt: skip
        self.pool.replace(slot)

    def close(self) -> None:
        """Kill the workers; stop the local cluster this executor started."""
        self.pool.close()
        self.running.clear()


def _unit_error(e: Any) -> BaseException:
    """What a unit raised, as the driver raises it: a SaelabError as itself (type and
    one-line message); anything else as Ray's error, which carries the worker's traceback."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, SaelabError):
        return cause
    return e


def _make(options: StageOptions, worker: Worker | None) -> RayExecutor:
    return RayExecutor(options.ray_address, options.workers, quiet=options.quiet)


register_executor("ray", _make)

__all__ = ["RayExecutor"]
