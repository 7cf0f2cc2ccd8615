"""How cost grows: capture, training, encode and contrast at 1x, 4x and 16x the work.

Each (stage, size) runs alone in a fresh child process, so its peak memory (ru_maxrss) is its
own; the child also reports its resident memory after setup (imports, model load, inputs
made), so "peak over setup" is what the work itself added. What a user should see: time
growing linearly (seconds per unit of work flat across sizes) and memory flat, except where
the output itself is kept and grows with the work (named in the table).

  capture   capture_prompts of resid_post.7 over 128-token windows of real text, batches of
            4; 1x = 8 prompts (1,024 tokens). Per-prompt float16 copies are kept (as extract
            does before writing a shard), so memory grows by 147 KB a prompt.
  train     SAETrainer steps (TopK 576 -> 4608, k 32, batch 1024) on Gaussian rows with a
            few directions (cost does not depend on the data); 1x = 8 steps.
  encode    encode_rows of 576 -> 4608 TopK codes into CSR; 1x = 8,192 rows. The CSR grows
            with the rows (~260 B a row at L0 32).
  contrast  hook_tables over synthetic SAE codes of 6,400 prompts x 32,768 features
            (benchmarks/bench_contrast.py), workers 1; 1x = 1 hook. Each hook's table is
            kept (~6.5 MB).

    .venv/bin/python benchmarks/bench_scaling.py [--quick] [--stages capture,train] [--json OUT]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

C.use_repo_source()

STAGES = ("capture", "train", "encode", "contrast")
MULTIPLIERS = (1, 4, 16)
BASE = {"capture": 8, "train": 8, "encode": 8192, "contrast": 1}
UNIT = {"capture": "prompts", "train": "steps", "encode": "rows", "contrast": "hooks"}


def _peak_mb() -> float:
    from saelab.budget.measure import process_peak_rss  # VmHWM, not the parent's ru_maxrss

    return process_peak_rss() / 2**20


def _rss_mb() -> float:
    import os

    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(stage: str, n: int) -> dict:
    import torch

    if stage == "capture":
        from saelab.models import capture_prompts, load_model, parse_hooks

        lm = load_model("default", dtype="float32", device="cpu")
        hooks = parse_hooks("resid_post.7", lm.n_layers)
        ws = C.token_windows(lm.tokenizer, n, 128, lm.tokenizer.bos_token_id)
        setup = _rss_mb()
        t0 = time.perf_counter()
        kept = []
        for _idx, out in capture_prompts(
            lm.model, lm.adapter, hooks, ws, pad_id=lm.pad_id, batch_size=4, out_dtype=torch.float16
        ):
            kept += out[hooks[0]]
        secs = time.perf_counter() - t0
        check = sum(int(t.shape[0]) for t in kept) == n * 128
    elif stage == "train":
        from saelab.sae.train import SAETrainer, TrainConfig

        g = torch.Generator().manual_seed(0)
        dirs = torch.randn(2048, 576, generator=g)
        batches = []
        for _ in range(4):  # four distinct batches, reused: the cost is in the step
            idx = torch.randint(0, 2048, (1024, 16), generator=g)
            batches.append((torch.rand(1024, 16, 1, generator=g) * dirs[idx]).sum(1) + 3.0)
        tr = SAETrainer(TrainConfig(d_sae=4608, k=32, total_steps=n), 576, batches[0])
        setup = _rss_mb()
        t0 = time.perf_counter()
        for s in range(n):
            st = tr.step(batches[s % 4])
        secs = time.perf_counter() - t0
        check = bool(torch.isfinite(torch.tensor(st.loss)))
    elif stage == "encode":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_encode import make_sae

        from saelab.sae.encode import encode_rows

        sae = make_sae(576, 4608, "topk", 32, torch)
        x = torch.randn(n, 576)
        setup = _rss_mb()
        t0 = time.perf_counter()
        csr = encode_rows(sae, x)
        secs = time.perf_counter() - t0
        check = len(csr.indptr) == n + 1 if hasattr(csr, "indptr") else True
    elif stage == "contrast":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_contrast import make_hook

        from saelab.stats import hook_tables

        def blocks_of(hook: str):
            return [make_hook(100 + int(hook), 3200, 3200, 32768)]

        setup = _rss_mb()
        t0 = time.perf_counter()
        tables = hook_tables([(str(h), 32768) for h in range(n)], blocks_of, workers=1)
        secs = time.perf_counter() - t0
        check = len(tables) == n
    else:
        raise ValueError(stage)
    return {
        "stage": stage,
        "n": n,
        "seconds": secs,
        "setup_rss_mb": setup,
        "peak_rss_mb": _peak_mb(),
        "check": check,
    }


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--child", help=argparse_hidden())
    p.add_argument("--n", type=int, help=argparse_hidden())
    a = p.parse_args()
    C.pin_threads(a.threads)
    if a.child:
        print(json.dumps(child(a.child, a.n)))
        return
    print(json.dumps(C.machine()))
    mults = (1, 2, 4) if a.quick else MULTIPLIERS
    rows, raw = [], []
    for stage in a.stages.split(","):
        base = max(1, BASE[stage] // (2 if a.quick and stage != "contrast" else 1))
        first = None
        for m in mults:
            n = base * m
            cmd = [
                sys.executable,
                __file__,
                "--child",
                stage,
                "--n",
                str(n),
                "--threads",
                str(a.threads),
            ]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=C.subprocess_env(a.threads)
            )
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode or not line:
                print(f"{stage} x{m} failed:\n{res.stderr[-2000:]}")
                continue
            r = json.loads(line[-1])
            raw.append(r)
            per = r["seconds"] / n
            first = first or per
            rows.append(
                {
                    "stage": stage,
                    "work": f"{m}x ({n:,} {UNIT[stage]})",
                    "seconds": r["seconds"],
                    "s per unit vs 1x": per / first,
                    "peak RSS MB": r["peak_rss_mb"],
                    "peak over setup MB": r["peak_rss_mb"] - r["setup_rss_mb"],
                    "check": r["check"],
                }
            )
    C.print_table(
        rows, f"cost at {', '.join(f'{m}x' for m in mults)} the work, {a.threads} thread(s)"
    )
    for stage in a.stages.split(","):
        got = [r for r in rows if r["stage"] == stage]
        if len(got) == len(mults):
            growth = got[-1]["s per unit vs 1x"]
            print(
                C.summary_line(
                    f"scaling.{stage}.time_per_unit_at_{mults[-1]}x",
                    growth,
                    "<= 1.25 (linear)",
                    growth <= 1.25 and all(r["check"] for r in got),
                    f"peak over setup {got[0]['peak over setup MB']:.0f} ->"
                    f" {got[-1]['peak over setup MB']:.0f} MB",
                )
            )
    C.dump_json(a.json, {"machine": C.machine(), "rows": rows, "raw": raw})


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
