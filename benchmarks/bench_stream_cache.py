"""`train --stream --epochs N`: later epochs from memory (`StreamSource(cache=True)`, what
`saelab train` uses when the stream's rows fit 1 GiB) against capturing every epoch anew.

The same windows (SmolLM2-135M `blocks.7.hook_resid_post`, 128-token windows of stdlib
docstrings) feed a TopK 576 -> 4608 trainer for `--epochs` passes (default 3), once with the
cache and once without, alternating, order rotated each round. Checked before the ratio is
printed: epoch 0's batches are identical both ways (the cache only changes where later epochs
come from), and the cached run captured each window once. Throughput is training tokens per
second including every capture.

    .venv/bin/python benchmarks/bench_stream_cache.py [--quick] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import itertools
import json
import time

import _common as C

C.use_repo_source()

HOOK = "blocks.7.hook_resid_post"


def main() -> None:
    p = C.base_parser(__doc__)
    p.set_defaults(threads=2)
    p.add_argument("--epochs", type=int, default=3, help="passes over the windows")
    a = p.parse_args()
    import numpy as np
    import torch

    from saelab.models import load_model, parse_hooks
    from saelab.sae.sources import StreamSource
    from saelab.sae.train import SAETrainer, TrainConfig

    print(json.dumps(C.machine()))
    n_win = 32 if a.quick else 96
    rounds = 2 if a.quick else 3
    lm = load_model("default", dtype="float32", device="cpu", quiet=True)
    hooks = parse_hooks(HOOK, lm.n_layers)
    w = np.asarray(C.token_windows(lm.tokenizer, n_win, 128, lm.tokenizer.bos_token_id))
    torch.set_num_threads(a.threads)
    per_buffer = n_win // 2

    class Counting(StreamSource):
        windows_run = 0

        def capture(self, windows, ids=None, stop=None):  # type: ignore[override]
            self.windows_run += len(windows)
            return super().capture(windows, ids, stop)

    def make(cache: bool) -> Counting:
        return Counting(lm, hooks, w, 1024, 0, per_buffer, cache=cache)

    sample = make(False).sample(4096)[HOOK]
    steps = make(False).batches_per_epoch * a.epochs

    def run(cache: bool) -> tuple[float, list[torch.Tensor], int]:
        src = make(cache)
        tr = SAETrainer(TrainConfig(d_sae=4608, k=32, total_steps=steps), 576, sample)
        first = []
        t0 = time.perf_counter()
        it = src.batches(0)
        for i, b in enumerate(itertools.islice(it, steps)):
            if i < src.batches_per_epoch:
                first.append(b[HOOK].clone())
            tr.step(b[HOOK])
        it.close()
        return time.perf_counter() - t0, first, src.windows_run

    names = ["recapture", "cache"]
    secs: dict[str, list[float]] = {n: [] for n in names}
    firsts, runs = {}, {}
    for r in range(rounds):
        for n in C.rotated(names, r):
            dt, firsts[n], runs[n] = run(n == "cache")
            secs[n].append(dt)
    same = all(torch.equal(x, y) for x, y in zip(firsts["recapture"], firsts["cache"], strict=True))
    once = runs["cache"] == n_win
    ratios = [t / c for t, c in zip(secs["recapture"], secs["cache"], strict=True)]
    tok = steps * 1024
    C.print_table(
        [
            {
                "stream": n,
                "tokens/s (median)": tok / C.median(secs[n]),
                "seconds": C.median(secs[n]),
                "windows run": runs[n],
            }
            for n in names
        ],  # fmt: skip
        f"train --stream, {a.epochs} epochs of {n_win} windows ({steps} steps of 1024 rows)",
    )
    print(f"check: epoch 0 identical: {same}; cached run captured each window once: {once}")
    ratio = C.median(ratios)
    print(C.summary_line("stream.cache_vs_recapture", ratio, ">= 1.5", ratio >= 1.5 and same
                         and once, f"per round {C.spread(ratios)}"))  # fmt: skip
    C.dump_json(a.json, {"machine": C.machine(), "seconds": secs, "identical": same})


if __name__ == "__main__":
    main()
