"""A simulation (not a measurement) of `--executor ray` on N GPUs, for bench_ray.py.

The job is cut into the units saelab really uses (extract: prompt shards of the size the
planner picks; encode: one unit per hook; patch: the baseline, then one edit set per unit when
the prompts fill a batch), and each unit into phases:

  ("gpu", s)      compute on the worker's own GPU (from FLOPs or bytes at the device's rate)
  ("net", bytes)  a download over the node's link, shared by every download on the node
  ("disk", bytes, file) a read from the node's local disk (model and SAE loads), shared on
                  the node between the files being read; workers reading the same file at the
                  same time share one read (the page cache serves the others)
  ("fs", bytes)   a read or write on the shared file system, shared by the whole cluster
  ("wait", s)     a fixed latency (Ray's per-unit overhead, measured on this machine)

Workers take the next unit in the stage's order as soon as they are free, as the executor
does; a shared resource is split equally between the phases using it at that moment (a fluid
model); stages run one after another, each as its own command (cluster start, worker start,
model load), with a barrier between them. Everything the device does is an assumption, stated
in `Device`; only the Ray figures come from this machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9


@dataclass(frozen=True)
class Device:
    """Assumed hardware (an A100-80GB node of 8 GPUs on a 10 GbE link)."""

    flops: float = 150e12  # bf16 matmul rate reached (~48% of the 312 TFLOP/s peak)
    hbm: float = 1.6e12  # bytes/s of weights read per decode step (80% of 2.0 TB/s)
    net: float = 1.0 * GB  # hub downloads per node (shared by the node's workers)
    disk: float = 2.0 * GB  # node-local NVMe reads (model and SAE loads), per node
    fs: float = 4.0 * GB  # shared file system, for the whole cluster
    pcie: float = 12.0 * GB  # host to GPU copies (weights onto the device)
    gpus_per_node: int = 8


@dataclass
class Unit:
    name: str
    phases: list[tuple]


@dataclass
class Stage:
    """A stage as one command: what every worker does first, then the units."""

    name: str
    setup: list[tuple]  # per worker, before its first unit (model, SAEs)
    units: list[Unit] = field(default_factory=list)


def simulate(stage: Stage, n: int, dev: Device, start_s: float) -> dict[str, float]:
    """Seconds the stage takes on n workers (after `start_s` of cluster and worker start),
    and how long each kind of phase kept some worker busy."""
    node_of = [w // dev.gpus_per_node for w in range(n)]
    todo = list(stage.units)
    plans: list[list[tuple]] = [list(stage.setup) for _ in range(n)]
    for w in range(n):
        if todo:
            plans[w] += todo.pop(0).phases
    left = [p[0][1] if p else 0.0 for p in plans]  # what remains of each worker's phase
    t = 0.0
    busy = {k: 0.0 for k in ("gpu", "net", "disk", "fs", "wait")}
    while any(plans):
        rates = _rates(plans, node_of, dev)
        dt = min(left[w] / rates[w] for w in range(n) if plans[w])
        for w in range(n):
            if not plans[w]:
                continue
            busy[plans[w][0][0]] += dt / n
            left[w] -= dt * rates[w]
        t += dt
        for w in range(n):
            while plans[w] and left[w] <= 1e-12:
                plans[w].pop(0)
                if not plans[w] and todo:
                    plans[w] = list(todo.pop(0).phases)
                left[w] = plans[w][0][1] if plans[w] else 0.0
    return {"seconds": start_s + t, **busy}


def _rates(plans: list[list[tuple]], node_of: list[int], dev: Device) -> list[float]:
    """Each worker's progress rate in its current phase (units of the phase per second)."""
    users: dict[tuple[str, int], set] = {}
    for w, plan in enumerate(plans):
        if plan:
            kind = plan[0][0]
            key = (kind, -1 if kind == "fs" else node_of[w])
            who = plan[0][2] if len(plan[0]) > 2 else w  # one read of a file serves its readers
            users.setdefault(key, set()).add(who)
    out = []
    for w, plan in enumerate(plans):
        if not plan:
            out.append(1.0)
            continue
        kind = plan[0][0]
        if kind in ("gpu", "wait"):
            out.append(1.0)
            continue
        cap = {"net": dev.net, "disk": dev.disk, "fs": dev.fs}[kind]
        out.append(cap / len(users[(kind, -1 if kind == "fs" else node_of[w])]))
    return out


@dataclass(frozen=True)
class Job:
    """The heavy job of the issue: encode last-token activations of 6,400 prompts through 31
    layers of Llama-3.1-8B with 32k-feature SAEs, then patch 300 features x 31 layers."""

    prompts: int = 6400
    prompt_tokens: int = 128  # assumed mean prompt length
    layers: int = 31
    d_sae: int = 32768
    features: int = 300  # patched per layer
    patch_prompts: int = 32  # assumed prompts each edit set is tried on
    new_tokens: int = 16
    batch_rows: int = 32  # patch --batch-size: one edit set x 32 prompts per unit


def heavy_job(shape, shard_size: int, job: Job, dev: Device, overhead_s: float,
              record_bytes: float) -> list[Stage]:  # noqa: ANN001  # fmt: skip
    """The three stages of the job on `shape` (a saelab ModelShape), unit by unit."""
    wbytes = shape.weight_bytes("bfloat16")
    fpt = shape.flops_per_token(job.prompt_tokens, n_layers=job.layers)
    row_bytes = job.layers * shape.d_model * 2  # one prompt's last-token rows, float16
    sae_bytes = (2 * shape.d_model * job.d_sae + job.d_sae + shape.d_model) * 4  # float32
    wait = ("wait", overhead_s + record_bytes / (100e6))  # the record over a 100 MB/s hop
    model_load = [("disk", float(wbytes), "model"), ("gpu", wbytes / dev.pcie)]

    extract = Stage("extract", model_load)
    for lo in range(0, job.prompts, shard_size):
        n = min(shard_size, job.prompts - lo)
        extract.units.append(Unit(f"shard {lo}", [
            ("gpu", n * job.prompt_tokens * fpt / dev.flops),
            ("fs", n * row_bytes), wait]))  # fmt: skip

    encode = Stage("encode", [])
    rows = job.prompts * shape.d_model * 2
    for layer in range(job.layers):
        encode.units.append(
            Unit(
                f"layer {layer}",
                [
                    ("net", sae_bytes),
                    ("fs", rows),
                    ("gpu", 2.0 * job.prompts * shape.d_model * job.d_sae / dev.flops),
                    ("fs", job.prompts * 64 * 6),
                    wait,
                ],
            )
        )  # fmt: skip  (~64 non-zeros a row)

    # patch: every worker loads the model and every edited hook's SAE (from the node's cache)
    saes = [("disk", float(sae_bytes), f"sae {layer}") for layer in range(job.layers)]
    patch = Stage("patch", model_load + saes + [("gpu", job.layers * sae_bytes / dev.pcie)])
    sets = job.layers * job.features * 1  # one value per feature
    per_unit = max(1, job.batch_rows // job.patch_prompts)
    rows_per_unit = per_unit * job.patch_prompts
    prefill = job.patch_prompts * job.prompt_tokens * shape.flops_per_token(job.prompt_tokens)
    step = max(wbytes / dev.hbm, 2.0 * shape.n_params * rows_per_unit / dev.flops)
    unit_gpu = prefill / dev.flops + (job.new_tokens + 1) * step
    patch.units.append(Unit("baseline", [("gpu", unit_gpu), wait]))
    for i in range(math.ceil(sets / per_unit)):
        patch.units.append(Unit(f"edits {i}", [("gpu", unit_gpu), wait]))
    return [extract, encode, patch]
