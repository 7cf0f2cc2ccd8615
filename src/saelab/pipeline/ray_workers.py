"""The worker side of `--executor ray`: one actor per worker, and the pool that starts them.

`UnitActor` is one worker process of the cluster. It holds a `Worker` (the model loaded once
and kept, an SAE per hook unit and released, as in this process), rebuilds each stage from
`stage.parts()` once, runs units with `execute_unit` and hands back their records: paths and
hashes, never tensors. Whatever a result could depend on in a process is set from the
driver's, so a unit's bytes do not depend on where it ran:

- torch's thread count (Ray starts workers with OMP_NUM_THREADS=1, and a float32 sum over a
  few million values differs in its last bits between 1 and 2 threads);
- the working directory (relative paths in a config resolve the same way; the run folder
  must therefore sit at the same path on every node: a shared file system);
- the environment saelab and huggingface_hub read at call time (HF_ENDPOINT, HF_HOME, ...).

`WorkerPool` joins (or starts) the cluster, starts one actor per GPU (`num_gpus=1`; Ray
forces max_calls=1 on GPU *tasks*, so a model would load once per unit without actors) or,
without GPUs, one per CPU (`num_cpus=1`, never a fraction: that makes Ray start a process per
fraction), and replaces an actor that died. With `max_disk`, the budget holds per node: a
node's actors split it (each one's hub fetcher gets an equal share).

Ray is an optional dependency: it is imported here only, inside functions.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saelab.errors import BudgetError, SaelabError
from saelab.pipeline.executors import execute_unit
from saelab.pipeline.stage import Stage, Unit, Worker
from saelab.progress import say
from saelab.units import format_bytes, format_seconds, parse_size

RAY_HINT = (
    "--executor ray needs Ray, which is not installed here: pip install 'saelab[ray]'"
    " (or scripts/setup.sh ray)"
)
#: settings saelab and huggingface_hub read from the environment at call time
FORWARD_ENV = (
    "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_TOKEN", "SAELAB_CACHE", "XDG_CACHE_HOME",
)  # fmt: skip
START_TIMEOUT_S = 900.0  # a worker that cannot start (no room on the cluster) stops the run


def import_ray() -> Any:
    """The `ray` module, or the one-line way to get it."""
    try:
        import ray
    except ImportError as e:
        raise SaelabError(RAY_HINT) from e
    return ray


def check_address(address: str | None) -> None:
    """Refuse a HOST:PORT nothing answers at, at once: Ray itself retries for minutes."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SaelabError(f"`ray_address` {address!r} is not auto or HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise SaelabError(
            f"`ray_address` {address}: nothing answers there ({e.strerror or e}); start a"
            " cluster with `ray start --head` and pass the address it prints, or leave"
            " `ray_address` out to start one on this machine"
        ) from e


class UnitActor:
    """One worker process: its `Worker` cache lives as long as the actor."""

    def __init__(self) -> None:
        ray = import_ray()
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpus}" if gpus else "")
        self.worker = Worker(name)
        self.node = str(ray.get_runtime_context().get_node_id())
        self.share = 1
        self._stage: tuple[tuple[str, int], Stage[Any], int | None] | None = None

    def ready(self) -> dict[str, Any]:
        """Who and where this worker is (its name is what the manifest records)."""
        return {"name": self.worker.name, "pid": os.getpid(), "node": self.node}

    def set_share(self, share: int) -> None:
        """How many workers share this node's `max_disk`."""
        self.share = max(1, int(share))

    def run(self, token: str, context: dict[str, Any], parts: tuple[type, Any, str],
            unit: Unit) -> dict[str, Any]:  # fmt: skip
        """Run one unit of the stage `parts` describes, in the driver's `context`; the
        unit's manifest record."""
        stage, per = self._rebuild(token, context, parts)
        try:
            return execute_unit(stage, unit, self.worker)
        except BudgetError as e:
            if per is None:
                raise
            raise BudgetError(
                f"{e} (with --executor ray `max_disk` is per node, and this node's {self.share}"
                f" workers have {format_bytes(per)} each: raise `max_disk` or lower `workers`)"
            ) from None

    def _rebuild(self, token: str, context: dict[str, Any],
                 parts: tuple[type, Any, str]) -> tuple[Stage[Any], int | None]:  # fmt: skip
        """The stage, rebuilt once per executor call (`token`) and disk share, after taking
        the driver's threads, environment and working directory of that call."""
        key = (token, self.share)
        if self._stage is None or self._stage[0] != key:
            cls, config, run = parts
            torch.set_num_threads(int(context["threads"]))
            for name in FORWARD_ENV:
                if name in context["env"]:
                    os.environ[name] = context["env"][name]
                else:
                    os.environ.pop(name, None)
            with contextlib.suppress(OSError):
                os.chdir(context["cwd"])
            if not Path(run).is_dir():
                raise SaelabError(
                    f"worker {self.worker.name} cannot see the run folder {run} (from"
                    f" {context['cwd']}): on a cluster of several machines the run folder must"
                    " be on a shared file system, at the same path on every node"
                )
            total = parse_size(config.max_disk, "--max-disk")
            per = total // self.share if total is not None and self.share > 1 else None
            if per is not None:
                config = config.model_copy(update={"max_disk": str(per)})
            self._stage = (key, cls(config, run), per)
        return self._stage[1], self._stage[2]


def driver_context() -> dict[str, Any]:
    """What a worker takes from the driver before it runs a stage's units."""
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    return {"threads": torch.get_num_threads(), "cwd": os.getcwd(), "env": env}


@dataclass
class Slot:
    """An actor of the pool: starting (`ready` pending) or ready, with who it is."""

    actor: Any
    ready: Any = None  # the pending `ready()` call while the actor starts
    name: str = ""
    pid: int = 0
    node: str = ""
    share: int = 1


class WorkerPool:
    """The actors of one executor, sized to the cluster, replaced when one dies."""

    def __init__(self, address: str | None, workers: int | None, quiet: bool = False) -> None:
        self.address = address
        self.workers = workers
        self.quiet = quiet
        self.slots: list[Slot] = []
        self.started_cluster = False  # this pool called ray.init (and shuts it down)
        self.start_seconds = 0.0
        self._options: dict[str, Any] = {}
        self._size = 0

    # -- starting -------------------------------------------------------------------------
    def start(self) -> None:
        """Join or start the cluster, then start the workers and wait until they are ready."""
        t0 = time.perf_counter()
        ray = import_ray()
        if not ray.is_initialized():
            self._connect(ray)
        if not self._size:
            self._size, self._options = self._shape(ray)
        missing = self._size - len(self.slots)
        for _ in range(missing):
            self.spawn()
        if missing:
            for slot in [s for s in self.slots if s.ready is not None]:
                done, _ = ray.wait([slot.ready], timeout=START_TIMEOUT_S)
                if not done:
                    raise SaelabError(self._no_room())
                self.started(slot)
            nodes = len({s.node for s in self.slots})
            say(f"ray: {len(self.slots)} worker(s) on {nodes} node(s) ready in"
                f" {format_seconds(time.perf_counter() - t0)}", self.quiet)  # fmt: skip
        self.start_seconds = time.perf_counter() - t0

    def _connect(self, ray: Any) -> None:
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
        if self.address is None:
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            say(f"ray: starting a local cluster ({os.cpu_count()} CPUs, {gpus} GPUs)", self.quiet)
            ray.init(num_cpus=os.cpu_count() or 1, num_gpus=gpus, **kw)
        else:
            try:
                ray.init(address=self.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise SaelabError(
                    f"`ray_address` {self.address}: no Ray cluster answers there ({first});"
                    " start one with `ray start --head` and pass the address it prints, or"
                    " leave `ray_address` out to start one on this machine"
                ) from e
        self.started_cluster = True

    def _shape(self, ray: Any) -> tuple[int, dict[str, Any]]:
        """(workers, each one's resources): one per GPU, else one per CPU, or `workers`."""
        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
        n = self.workers or gpus or cpus
        room = gpus or cpus
        if n > room:
            what = f"{gpus} GPUs" if gpus else f"{cpus} CPUs and no GPU"
            raise SaelabError(
                f"`workers` {n} is more than the Ray cluster has room for ({what}, one worker"
                f" each): lower `workers` to {room} or add nodes"
            )
        if gpus:
            return n, {"num_gpus": 1, "num_cpus": 1 if cpus >= n else 0}
        return n, {"num_cpus": 1}

    def _no_room(self) -> str:
        return (
            f"the Ray cluster started no worker within {format_seconds(START_TIMEOUT_S)}"
            f" (each needs {self._options}): check `ray status` for what holds its resources,"
            " or lower `workers`"
        )

    def spawn(self) -> Slot:
        """Start one more actor (not waited for: its `ready` is pending)."""
        ray = import_ray()
        cls = ray.remote(UnitActor)
        actor = cls.options(max_restarts=0, **self._options).remote()
        slot = Slot(actor, actor.ready.remote())
        self.slots.append(slot)
        return slot

    def started(self, slot: Slot) -> None:
        """Its `ready()` answered: learn who it is, or say why it could not start."""
        ray = import_ray()
        try:
            info = ray.get(slot.ready)
        except ray.exceptions.RayError as e:
            self.remove(slot)
            first = str(e).strip().splitlines()[-1][:300]
            raise SaelabError(
                f"a Ray worker could not start ({first}): every node needs saelab installed"
                " (pip install 'saelab[ray]') in the Python the cluster runs"
            ) from e
        slot.ready, slot.name, slot.pid, slot.node = None, info["name"], info["pid"], info["node"]
        self.reshare()

    # -- running --------------------------------------------------------------------------
    def idle(self, busy: set[int]) -> list[Slot]:
        """Ready actors with nothing in flight (`busy`: ids of the slots that have a unit)."""
        return [s for s in self.slots if s.ready is None and id(s) not in busy]

    def starting(self) -> list[Slot]:
        return [s for s in self.slots if s.ready is not None]

    def replace(self, slot: Slot) -> Slot:
        """A dead actor's place goes to a new one (on whichever node has room)."""
        self.remove(slot)
        return self.spawn()

    def remove(self, slot: Slot, kill: bool = True) -> None:
        ray = import_ray()
        if kill:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        self.slots = [s for s in self.slots if s is not slot]
        self.reshare()

    def reshare(self) -> None:
        """Tell every ready actor how many workers share its node's disk budget."""
        per_node = Counter(s.node for s in self.slots if s.ready is None)
        for s in self.slots:
            if s.ready is None and s.share != per_node[s.node]:
                s.share = per_node[s.node]
                s.actor.set_share.remote(s.share)

    def close(self) -> None:
        """Kill the actors; shut the cluster down (or disconnect) if this pool joined it."""
        ray = import_ray()
        for slot in list(self.slots):
            self.remove(slot)
        self._size = 0
        if self.started_cluster and ray.is_initialized():
            ray.shutdown()
            self.started_cluster = False
