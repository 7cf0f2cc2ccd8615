"""Plan against reality: `saelab extract`'s predicted peak RAM and time beside what it used.

Writes a prompts file of real text (stdlib docstrings, cut to 128 tokens by --max-length),
then in fresh processes (so peak RSS is the stage's own, not this script's):

  1. python -m saelab plan    --run RUN ...   records a calibrated plan in RUN/manifest.json
  2. python -m saelab extract --run RUN ...   keeps that plan (same config) and records
                                              stages.extract.measured beside it

The baseline is the plan: ratios are measured / predicted. Peak RSS is read three ways:
the manifest's ru_maxrss of the extract process, its 20 ms RSS sampler, and this script's
os.wait4() rusage of the child (the same number as ru_maxrss, taken from outside).
Targets: peak RAM within 25% of the plan, wall time within 50%.

    .venv/bin/python benchmarks/bench_extract_rss.py [--quick] [--json OUT]
        [--prompts N] [--hooks resid_post.0-29] [--batch-size auto] [--keep DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

MEM_TOL, TIME_TOL = 0.25, 0.50
DEFAULT_HOOKS = "resid_post.0,resid_post.4,resid_post.8,resid_post.12"


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS bytes of the child alone, output)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=C.REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return proc.returncode, wall, peak, text


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--prompts", type=int, default=None, help="prompts (default 256, quick 16)")
    p.add_argument("--hooks", default=DEFAULT_HOOKS, help=f"hook points (default {DEFAULT_HOOKS})")
    p.add_argument("--max-length", type=int, default=128, help="tokens per prompt at most")
    p.add_argument("--batch-size", default="auto", help="passed to plan and extract")
    p.add_argument("--keep", default=None, help="use this folder and keep it (default: temp)")
    a = p.parse_args()
    n_prompts = a.prompts or (16 if a.quick else 256)

    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="saelab-bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    prompts = work / "prompts.jsonl"
    texts = C.stdlib_docstrings(min_chars=200, limit=n_prompts)
    with open(prompts, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc{i}", "text": t}) + "\n")

    env = C.subprocess_env(a.threads)
    common = [
        "--prompts", str(prompts),
        "--hooks", a.hooks,
        "--max-length", str(a.max_length),
        "--batch-size", str(a.batch_size),
        "--device", "cpu",
        "--run", str(run_dir),
        "--quiet",
    ]  # fmt: skip
    py = [sys.executable, "-m", "saelab"]
    try:
        rc, plan_wall, plan_rss, plan_out = run_child(py + ["plan", *common], env)
        if rc != 0:
            sys.exit(f"saelab plan failed ({rc}):\n{plan_out}")
        rc, wall, child_rss, ex_out = run_child(py + ["extract", *common], env)
        if rc != 0:
            sys.exit(f"saelab extract failed ({rc}):\n{ex_out}")
        manifest = json.loads((run_dir / "manifest.json").read_text())
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    recorded = manifest.get("plans", {}).get("extract", {})
    stage = manifest["stages"]["extract"]
    plan, measured = stage["plan"], stage["measured"]
    est = plan["estimate"]
    kept = bool(recorded) and plan.get("created") == recorded.get("created")
    calibrated = plan.get("calibration") is not None
    pred_ram, pred_s = int(est["ram_bytes"]), float(est["seconds"])
    rss, rss_sampled = int(measured["peak_rss_bytes"]), int(measured["peak_rss_sampled_bytes"])
    secs = float(measured["wall_seconds"])
    parts = est.get("parts", {})
    n_tokens = sum(u.get("tokens", 0) for u in stage.get("units", {}).values()) or None

    mib = 1 / (1 << 20)
    rows = [
        {
            "quantity": "peak RAM (MiB)",
            "predicted": pred_ram * mib,
            "measured (manifest ru_maxrss)": rss * mib,
            "measured / predicted": rss / pred_ram,
            "sampled (20 ms)": rss_sampled * mib,
            "child rusage (wait4)": child_rss * mib,
        },
        {
            "quantity": "wall time (s)",
            "predicted": pred_s,
            "measured (manifest ru_maxrss)": secs,
            "measured / predicted": secs / pred_s,
            "sampled (20 ms)": None,
            "child rusage (wait4)": wall,
        },
    ]
    print(
        f"extract plan vs measured: default model float32 on cpu, {a.threads} thread(s),"
        f" {n_prompts} prompts of real text (<= {a.max_length} tokens"
        f"{f', {n_tokens:,} tokens' if n_tokens else ''}), hooks {a.hooks};"
        f" batch {plan.get('batch_size')}, shard {plan.get('shard_size')};"
        f" plan calibrated: {calibrated}"
        f" ({(plan.get('calibration') or {}).get('tokens_per_s', float('nan')):.0f} tokens/s),"
        f" recorded plan kept by extract: {kept}"
    )
    C.print_table(rows)
    print(
        "  (time row: 'measured' is the stage's own wall time; the wait4 column is the whole"
        " child process incl. interpreter start and imports)"
    )
    print(
        "  plan parts (MiB): "
        + ", ".join(
            f"{k} {v * mib:.0f}"
            for k, v in parts.items()
            if k in ("base", "weights", "forward", "shard_buffer", "load_transient")
        )
        + f"; load {parts.get('load_seconds', 0):.1f} s; plan process: {plan_wall:.1f} s,"
        f" peak RSS {plan_rss * mib:.0f} MiB"
    )
    mem_ratio, time_ratio = rss / pred_ram, secs / pred_s
    mem_ok = abs(mem_ratio - 1) <= MEM_TOL
    time_ok = abs(time_ratio - 1) <= TIME_TOL
    print(
        C.summary_line(
            "extract.peak_rss_measured_over_planned",
            mem_ratio,
            f"within {MEM_TOL:.0%}: {1 - MEM_TOL:.2f}-{1 + MEM_TOL:.2f}",
            mem_ok,
            f"measured {rss * mib:.0f} MiB vs planned {pred_ram * mib:.0f} MiB",
        )
    )
    print(
        C.summary_line(
            "extract.wall_time_measured_over_planned",
            time_ratio,
            f"within {TIME_TOL:.0%}: {1 - TIME_TOL:.2f}-{1 + TIME_TOL:.2f}",
            time_ok,
            f"measured {secs:.1f} s vs planned {pred_s:.1f} s",
        )
    )
    C.pin_threads(a.threads)  # only so that machine() reports the thread count used
    C.dump_json(
        a.json,
        {
            "benchmark": "extract_rss",
            "machine": C.machine(),
            "config": {
                "prompts": n_prompts,
                "tokens": n_tokens,
                "hooks": a.hooks,
                "max_length": a.max_length,
                "batch_size": plan.get("batch_size"),
                "shard_size": plan.get("shard_size"),
                "quick": a.quick,
            },
            "plan": plan,
            "measured": measured,
            "child": {"wall_seconds": wall, "peak_rss_bytes": child_rss},
            "plan_process": {"wall_seconds": plan_wall, "peak_rss_bytes": plan_rss},
            "recorded_plan_kept": kept,
            "summary": {
                "ram_ratio": mem_ratio,
                "time_ratio": time_ratio,
                "pass": mem_ok and time_ok,
            },
        },
    )


if __name__ == "__main__":
    main()
