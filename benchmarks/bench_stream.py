"""`train --stream` throughput: capture overlapped with training (a prefetching producer thread)
against capture and training taking turns (how the stream ran before).

The same stream source (SmolLM2-135M `blocks.7.hook_resid_post` over 128-token windows of
stdlib docstrings, buffers of 16 windows = 2,032 rows) feeds a TopK 576 -> 4608 trainer for the
same steps of 1024 rows, once with `StreamSource(prefetch=False)` and once with
`prefetch=True` (the default), alternating, order rotated each round. Both must end with
identical weights (a buffer is a pure function of the seed and its number): checked before the
ratio is printed. Throughput is training tokens per second including every capture.

On 2 cores the producer's forward pass and the trainer's step overlap, so the ideal ratio is
(capture + train) / max(capture, train). Thread counts: `--threads` (default 2, the usual
torch setting on a 2-core machine) for the turn-taking run; the prefetching run gives each of
its two threads the same setting (what `saelab train --stream` does) and, for context,
`--threads // 2` each (at least 1), so that neither oversubscribes.

    .venv/bin/python benchmarks/bench_stream.py [--quick] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import json
import time

import _common as C

C.use_repo_source()

HOOK = "blocks.7.hook_resid_post"


def main() -> None:
    p = C.base_parser(__doc__)
    p.set_defaults(threads=2)
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 8)")
    a = p.parse_args()
    import numpy as np
    import torch

    from saelab.models import load_model, parse_hooks
    from saelab.sae.sources import StreamSource
    from saelab.sae.train import SAETrainer, TrainConfig

    print(json.dumps(C.machine()))
    steps = a.steps or (4 if a.quick else 8)
    rounds = 2 if a.quick else 3
    lm = load_model("default", dtype="float32", device="cpu", quiet=True)
    hooks = parse_hooks(HOOK, lm.n_layers)
    n_win = -(-steps * 1024 // 127) + 16
    w = np.asarray(C.token_windows(lm.tokenizer, n_win, 128, lm.tokenizer.bos_token_id))
    torch.set_num_threads(a.threads)
    sample = StreamSource(lm, hooks, w, 1024, 0, 16, prefetch=False).sample(4096)[HOOK]

    def run(prefetch: bool, threads: int) -> tuple[float, torch.Tensor]:
        torch.set_num_threads(threads)
        src = StreamSource(lm, hooks, w, 1024, 0, 16, prefetch=prefetch)
        tr = SAETrainer(TrainConfig(d_sae=4608, k=32, total_steps=steps), 576, sample)
        t0 = time.perf_counter()
        it = src.batches(0)
        for _ in range(steps):
            tr.step(next(it)[HOOK])
        it.close()
        return time.perf_counter() - t0, tr.W_dec.detach().clone()

    half = max(1, a.threads // 2)
    variants = {
        "turns": (False, a.threads),
        "prefetch": (True, a.threads),
        f"prefetch, {half} thread(s) each": (True, half),
    }
    names = list(variants)
    secs = {n: [] for n in names}
    weights = {}
    for r in range(rounds):
        for n in C.rotated(names, r):
            dt, wd = run(*variants[n])
            secs[n].append(dt)
            weights[n] = wd
    same = all(bool(torch.equal(weights["turns"], weights[n])) for n in names)
    ratios = [t / p for t, p in zip(secs["turns"], secs["prefetch"], strict=True)]
    half_ratio = C.median([t / p for t, p in zip(secs["turns"], secs[names[2]], strict=True)])
    tok = steps * 1024
    C.print_table(
        [
            {
                "stream": n,
                "tokens/s (median)": tok / C.median(secs[n]),
                "seconds": C.median(secs[n]),
            }
            for n in names
        ],
        f"train --stream, {steps} steps of 1024 rows, {a.threads} cores' threads",
    )
    ratio = C.median(ratios)
    print(f"check: identical weights after {steps} steps: {same}")
    print(
        C.summary_line(
            "stream.prefetch_vs_turns",
            ratio,
            ">= 1.3",
            ratio >= 1.3 and same,
            f"per round {C.spread(ratios)}; with {half} intra-op thread(s) per"
            f" side {half_ratio:.2f}x",
        )
    )
    C.dump_json(a.json, {"machine": C.machine(), "seconds": secs, "identical": same})


if __name__ == "__main__":
    main()
