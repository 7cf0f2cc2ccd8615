"""`--executor ray` against `--executor local` on this machine, and a simulation of the heavy
job (6,400 prompts x 31 layers of Llama-3.1-8B, 32k-feature SAEs, then 300 features x 31
layers patched) on 1, 2, 4 and 8 GPUs.

Part 1 (measured here, in this run): a local Ray cluster with two logical GPUs, as the tests
start it.
  start-up   `ray.init` of a local cluster, and workers ready (Python, torch and saelab
             imported in each; no model yet)
  per unit   `encode` of 12 hooks (12 cheap units: an SAE of 1,152 features over 8 prompts
             each) with ONE Ray worker against the local executor, alternating rounds; the
             overhead of a unit is (driver wall - the units' own seconds) of Ray minus the
             same of local, over the units: dispatch, pickling, the round trip, the record.
             Also a bare actor round trip, and the bytes sent and received per unit.
  extract    16 prompts in 4 shards, local against two Ray workers (full run only): the
             first unit of each worker carries its model load.
Every Ray run's outputs are compared with the local run's, byte for byte (sha256 of every
file): PASS needs all identical (and exits 0), FAIL exits 1.

Part 2 (a SIMULATION, `_ray_model.py`): the job cut into saelab's real units (extract
shards of the planner's size, one encode unit per hook, one patch edit set per unit), each
unit into compute, download, disk and shared-file-system phases on an assumed A100 node
(rates in `_ray_model.Device`), with the Ray start-up and per-unit overhead measured in part
1. Workers take units in order as the executor does; shared links are split between the
phases using them.

    .venv/bin/python benchmarks/bench_ray.py [--quick] [--json OUT]
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import _common as C
import _ray_model as M

C.use_repo_source()

HOOKS = 12


class Timed:
    """An executor wrapper that times the units' loop as the driver sees it."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.name = inner, inner.name
        self.wall = self.seconds = 0.0
        self.records: list[dict] = []

    def run(self, stage, units):  # noqa: ANN001, ANN201
        t0 = time.perf_counter()
        for unit, rec in self.inner.run(stage, units):
            self.records.append(rec)
            yield unit, rec
        self.wall = time.perf_counter() - t0
        self.seconds = sum(r["seconds"] for r in self.records)

    def close(self) -> None:
        pass


def digests(root: Path, under: str) -> dict[str, str]:
    from saelab.atomic import tree_digests

    return tree_digests(root / under, root) if (root / under).is_dir() else {}


def make_inputs(tmp: Path, quiet: bool) -> Path:
    """A store of 8 prompts x 12 hooks and one random SAE per hook (saved in the run)."""
    import torch

    from saelab.pipeline.extract import run_extract
    from saelab.pipeline.extract_job import ExtractConfig
    from saelab.sae import SAE, SAEConfig

    run = tmp / "base"
    run_extract(ExtractConfig(prompts="builtin:styles", limit=8, hooks=f"resid_post.0-{HOOKS - 1}",
                              run=str(run), quiet=True))  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for layer in range(HOOKS):
        hook = f"blocks.{layer}.hook_resid_post"
        sae = SAE(SAEConfig(d_in=576, d_sae=1152, architecture="topk", k=16,
                            metadata={"hook_name": hook}))  # fmt: skip
        with torch.no_grad():
            for p in (sae.W_enc, sae.W_dec):
                p.copy_(torch.randn(p.shape, generator=g) / 24)
        sae.save(run / "saes" / hook)
    return run


def encode_round(base: Path, folder: Path, executor) -> Timed:  # noqa: ANN001
    from saelab.pipeline.driver import run_stage
    from saelab.pipeline.encode import EncodeConfig, EncodeStage

    shutil.copytree(base, folder)
    timed = Timed(executor)
    cwd = os.getcwd()
    os.chdir(folder.parent)  # relative paths: the codes record the SAE's path as given
    try:
        run_stage(EncodeStage(EncodeConfig(run=folder.name, saes=f"{folder.name}/saes",
                                           quiet=True)), timed)  # fmt: skip
    finally:
        os.chdir(cwd)
    return timed


def part1(args, tmp: Path) -> dict:  # noqa: ANN001
    import ray

    from saelab.pipeline.executors import LocalExecutor
    from saelab.pipeline.executors_ray import RayExecutor
    from saelab.pipeline.stage import Worker

    base = make_inputs(tmp, True)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    cluster_s = time.perf_counter() - t0
    one = RayExecutor(workers=1, quiet=True)
    t0 = time.perf_counter()
    one.pool.start()
    worker_s = time.perf_counter() - t0
    actor = one.pool.slots[0].actor
    trips = []
    for _ in range(30):
        t = time.perf_counter()
        ray.get(actor.ready.remote())
        trips.append(time.perf_counter() - t)
    encode_round(base, tmp / "warm" / "r", one)  # the worker imports encode's modules once

    local, same, over, unit_s = LocalExecutor(Worker()), True, [], []
    rounds = 2 if args.quick else 4
    for r in range(rounds):
        got = {}
        for name in C.rotated(["local", "ray"], r):
            got[name] = encode_round(
                base, tmp / f"{name}{r}" / "r", one if name == "ray" else local
            )
        ref = digests(tmp / f"local{r}" / "r", "codes")
        same &= bool(ref) and digests(tmp / f"ray{r}" / "r", "codes") == ref
        n = len(got["ray"].records)
        extra = (got["ray"].wall - got["ray"].seconds) - (got["local"].wall - got["local"].seconds)
        over.append(extra / n)
        unit_s.append(got["local"].seconds / n)
    rec = got["ray"].records[-1]
    sent = len(pickle.dumps(("0" * 32, {"threads": 1, "cwd": str(tmp), "env": {}}, None, None)))
    one.close()

    out = {"cluster_start_s": cluster_s, "worker_start_s": worker_s,
           "round_trip_s": C.median(trips), "overhead_per_unit_s": C.median(over),
           "overhead_spread": C.spread(over), "encode_unit_s": C.median(unit_s),
           "record_bytes": len(pickle.dumps(rec)), "sent_bytes_floor": sent}  # fmt: skip
    if not args.quick:
        out.update(extract_compare(tmp))
        same &= out.pop("extract_same")
    out["identical"] = same
    return out


def extract_compare(tmp: Path) -> dict:
    """16 prompts, 4 shards: local against two Ray workers (fresh: each loads the model)."""
    from saelab.pipeline.driver import run_stage
    from saelab.pipeline.executors import LocalExecutor
    from saelab.pipeline.executors_ray import RayExecutor
    from saelab.pipeline.extract import ExtractStage
    from saelab.pipeline.extract_job import ExtractConfig

    walls, runs = {}, {}
    for name in ("local", "ray"):
        folder = tmp / f"x-{name}"
        folder.mkdir()
        ex = Timed(LocalExecutor() if name == "local" else RayExecutor(quiet=True))
        cwd = os.getcwd()
        os.chdir(folder)
        t0 = time.perf_counter()
        try:
            run_stage(ExtractStage(ExtractConfig(prompts="builtin:styles", limit=16, shard_size=4,
                                                 hooks="resid_post.3,resid_post.7", run="r",
                                                 quiet=True)), ex)  # fmt: skip
        finally:
            os.chdir(cwd)
            ex.inner.close()
        walls[name] = time.perf_counter() - t0
        runs[name] = ex
    ray_recs = runs["ray"].records
    first = max(r["seconds"] for r in ray_recs[:2]) - min(r["seconds"] for r in ray_recs[2:])
    same = digests(tmp / "x-ray" / "r", "activations") == digests(tmp / "x-local" / "r",
                                                                  "activations")  # fmt: skip
    return {"extract_local_s": walls["local"], "extract_ray2_s": walls["ray"],
            "model_load_in_worker_s": first, "extract_same": same}  # fmt: skip


def part2(measured: dict) -> tuple[list[dict], list[dict], str]:
    """The simulated job on 1, 2, 4, 8 GPUs; where the 8-GPU time goes; a smaller shard."""
    from saelab.budget.estimate import ExtractWorkload, TokenStats, default_shard_size
    from saelab.models.builtin_shapes import builtin_shape
    from saelab.models.hooks import HookPoint

    shape = builtin_shape("meta-llama/Llama-3.1-8B")
    job, dev = M.Job(), M.Device()
    hooks = tuple(HookPoint(layer, "resid_post") for layer in range(job.layers))
    tokens = TokenStats(job.prompts, job.prompts * job.prompt_tokens, job.prompt_tokens,
                        float(job.prompt_tokens))  # fmt: skip
    shard = default_shard_size(ExtractWorkload(shape, hooks, tokens, positions="last",
                                               model_dtype="bfloat16", batch_size=32,
                                               device="cuda"))  # fmt: skip
    over, rec = measured["overhead_per_unit_s"], measured["record_bytes"]
    stages = M.heavy_job(shape, shard, job, dev, over, rec)
    start = measured["cluster_start_s"] + measured["worker_start_s"]
    rows, where, base = [], [], None
    for n in (1, 2, 4, 8):
        cells: dict = {"GPUs": n}
        total = 0.0
        for st in stages:
            r = M.simulate(st, n, dev, start)
            cells[f"{st.name} s"] = r["seconds"]
            total += r["seconds"]
            if n == 8:
                busy = sum(r[k] for k in ("gpu", "net", "disk", "fs", "wait"))
                where.append({"stage (8 GPUs)": st.name, "units": len(st.units),
                              **{k: f"{100 * r[k] / busy:.0f}%" for k in
                                 ("gpu", "net", "disk", "fs", "wait")}})  # fmt: skip
        cells["total min"] = total / 60
        base = base or total
        cells["speed-up"] = base / total
        cells["efficiency"] = base / total / n
        rows.append(cells)
    small = M.heavy_job(shape, 200, job, dev, over, rec)[0]
    note = (f"extract: {len(stages[0].units)} shards of {shard} prompts (the planner's ~128 MB);"
            f" with --shard-size 200 ({len(small.units)} shards) 8 GPUs take"
            f" {M.simulate(small, 8, dev, start)['seconds']:.1f} s")  # fmt: skip
    return rows, where, note


def main() -> None:
    args = C.base_parser(__doc__).parse_args()
    C.pin_threads(args.threads)
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        m = part1(args, tmp)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"part 1, measured on this machine (2 logical GPUs, torch threads {args.threads}):")
    rows = [
        {"what": "local cluster start (ray.init)", "value": f"{m['cluster_start_s']:.1f} s"},
        {"what": "workers ready (no model yet)", "value": f"{m['worker_start_s']:.1f} s"},
        {"what": "bare actor round trip", "value": f"{1000 * m['round_trip_s']:.2f} ms"},
        {"what": "overhead per unit (Ray - local)",
         "value": f"{1000 * m['overhead_per_unit_s']:.1f} ms ({m['overhead_spread']} s)"},
        {"what": "encode unit here (local)", "value": f"{1000 * m['encode_unit_s']:.0f} ms"},
        {"what": "record back / context sent", "value":
         f"{m['record_bytes']:,} B / {m['sent_bytes_floor']:,} B + the stage's config"},
    ]  # fmt: skip
    if "extract_local_s" in m:
        rows += [
            {"what": "extract 16 prompts: local", "value": f"{m['extract_local_s']:.1f} s"},
            {"what": "extract 16 prompts: 2 Ray workers", "value": f"{m['extract_ray2_s']:.1f} s"},
            {"what": "  of which a worker's model load", "value":
             f"{m['model_load_in_worker_s']:.1f} s"},
        ]  # fmt: skip
    C.print_table(rows)
    print(
        "\npart 2, a SIMULATION (not measured): the heavy job on an assumed A100 node"
        f" ({M.Device()}), Ray start-up and per-unit overhead from part 1"
    )
    table, where, note = part2(m)
    C.print_table(table)
    print(f"  {note}")
    C.print_table(
        where,
        "share of worker time at 8 GPUs: compute (gpu), hub downloads (net),"
        " node disk, shared file system (fs), Ray's per-unit overhead (wait)",
    )
    ok = bool(m["identical"])
    print(C.summary_line("ray vs local", table[-1]["speed-up"], "outputs byte-identical", ok,
                         "8-GPU speed-up of the simulated job"))  # fmt: skip
    C.dump_json(args.json, {"machine": C.machine(), "measured": m, "model": table})
    C.exit_on(ok)


if __name__ == "__main__":
    main()
