"""Capture against the peers: saelab vs plain HF forward hooks, TransformerLens and nnsight.

The same job for every method: the residual stream after layers L1 and L2 (default 3 and 29,
`blocks.{L}.hook_resid_post`) of SmolLM2-135M-Instruct over batches of real text (full-length
windows, so no padding), kept as per-prompt CPU tensors:

  saelab      saelab.models.capture_prompts (batching, early stop after the deepest hook,
              per-prompt copies)
  hf_hooks    what users write by hand: `register_forward_hook` on the two decoder layers,
              `.detach().clone()` of their outputs, `model.model(...)` (the decoder body: no LM
              head, so the same work as the others minus the final norm)
  hf_stop     the same hooks raising an exception after the deepest layer (the strongest
              plain-HF version)
  tl          TransformerLens `run_with_cache(names_filter=[...], stop_at_layer=L2 + 1)`
  nnsight     `model.trace(ids)`: `.output.save()` of the two layers, then `tracer.stop()`

Before any timing, every method's tensors are compared with saelab's (max |diff| relative to
the tensors' scale must be below 1e-3). Methods alternate batch by batch in rotated order;
ratios are medians of paired ratios (method time / saelab time > 1: saelab faster).

RSS: each method alone in a child process that loads the model its own way (saelab and
HF: the HF model; TransformerLens: the HF model converted to a HookedTransformer, as users
must; nnsight: the HF model wrapped) and captures all batches; its resident memory then
(the target's measure: model(s) and outputs held) and its peak (ru_maxrss, which the model
load sets for every method alike).

    .venv-peers/bin/python benchmarks/peers/bench_capture_peers.py [--quick] [--json OUT]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import _peers as P

C = P.C
METHODS = ("saelab", "hf_hooks", "hf_stop", "tl", "nnsight")


class _Stop(Exception):
    pass


def build(lm, layers: list[int], method: str):
    """A function batch(list of token lists) -> {layer: [per-prompt tensors]}."""
    import torch

    from saelab.models import capture_prompts, parse_hooks

    deepest = max(layers)
    if method == "saelab":
        hooks = parse_hooks(",".join(f"resid_post.{i}" for i in layers), lm.n_layers)

        def run(batch):
            out = {i: [] for i in layers}
            for _idx, got in capture_prompts(
                lm.model, lm.adapter, hooks, batch, pad_id=lm.pad_id, batch_size=len(batch)
            ):
                for h, i in zip(hooks, layers, strict=True):
                    out[i] += got[h]
            return out

        return run
    if method in ("hf_hooks", "hf_stop"):
        stop = method == "hf_stop"

        def run(batch):
            store = {}
            handles = []
            for i in layers:

                def hook(mod, args, output, i=i):
                    h = output[0] if isinstance(output, tuple) else output
                    store[i] = h.detach().clone()
                    if stop and i == deepest:
                        raise _Stop

                handles.append(lm.model.model.layers[i].register_forward_hook(hook))
            ids = torch.tensor(batch, dtype=torch.long)
            try:
                with torch.no_grad():
                    lm.model.model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            return {i: list(store[i].unbind(0)) for i in layers}

        return run
    if method == "tl":
        tl = P.to_transformer_lens(lm)
        names = [f"blocks.{i}.hook_resid_post" for i in layers]

        def run(batch):
            ids = torch.tensor(batch, dtype=torch.long)
            with torch.no_grad():
                _, cache = tl.run_with_cache(ids, names_filter=names, stop_at_layer=deepest + 1)
            return {i: list(cache[n].unbind(0)) for i, n in zip(layers, names, strict=True)}

        return run
    if method == "nnsight":
        nn_model = P.to_nnsight(lm)

        def run(batch):
            ids = torch.tensor(batch, dtype=torch.long)
            saved = {}
            with torch.no_grad(), nn_model.trace(ids) as tracer:
                for i in layers:
                    saved[i] = nn_model.model.layers[i].output.save()
                tracer.stop()
            out = {}
            for i in layers:
                v = saved[i]
                v = v[0] if isinstance(v, tuple) else v
                out[i] = list(v.detach().unbind(0))
            return out

        return run
    raise ValueError(method)


def agreement(ref, got) -> float:
    worst = 0.0
    for i in ref:
        for a, b in zip(ref[i], got[i], strict=True):
            scale = float(a.abs().max())
            worst = max(worst, float((a.float() - b.float()).abs().max()) / scale)
    return worst


def windows(lm, n: int, seq: int):
    return C.token_windows(lm.tokenizer, n, seq, lm.tokenizer.bos_token_id)


def child(method: str, layers: list[int], n_batches: int, bs: int, seq: int) -> None:
    """Peak RSS of one method alone: load its way, capture every batch, keep the outputs."""
    lm = P.load_default()
    ws = windows(lm, n_batches * bs, seq)
    run = build(lm, layers, method)
    after_load = P.peak_rss_mb()
    kept = []
    for k in range(n_batches):
        kept.append(run(ws[k * bs : (k + 1) * bs]))
    print(
        json.dumps(
            {
                "method": method,
                "peak_rss_mb": P.peak_rss_mb(),
                "peak_after_load_mb": after_load,
                "rss_mb": P.rss_mb(),
            }
        )
    )


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--layers", default="3,29")
    p.add_argument("--batches", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds")
    p.add_argument("--child", help=argparse_hidden())
    p.add_argument("--no-rss", action="store_true", help="skip the child processes")
    a = p.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    n_batches = a.batches or (2 if a.quick else 4)
    C.pin_threads(a.threads)
    if a.child:
        child(a.child, layers, n_batches, a.batch_size, a.seq_len)
        return
    P.require_peers()
    P.print_versions()
    print(json.dumps(C.machine()))
    lm = P.load_default()
    ws = windows(lm, n_batches * a.batch_size, a.seq_len)
    batches = [ws[k * a.batch_size : (k + 1) * a.batch_size] for k in range(n_batches)]
    runs = {m: build(lm, layers, m) for m in METHODS}
    ref = runs["saelab"](batches[0])
    diffs = {}
    for m in METHODS:
        diffs[m] = agreement(ref, runs[m](batches[0]))  # also the warm-up
    print(
        "agreement with saelab (max |diff| / max |value|): "
        + ", ".join(f"{m} {d:.1e}" for m, d in diffs.items())
    )
    agree = all(d < 1e-3 for d in diffs.values())
    if not agree:
        print("outputs disagree: timings not trusted")
    budget = a.budget or (20.0 if a.quick else 150.0)
    min_rounds, max_rounds = 2, (3 if a.quick else 10)
    times = {m: [] for m in METHODS}
    t_loop = time.perf_counter()
    rounds = 0
    while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
        for k in range(n_batches):
            for m in C.rotated(METHODS, rounds * n_batches + k):
                times[m].append(C.timed(runs[m], batches[k]))
        rounds += 1
    tok = a.batch_size * a.seq_len
    rows = []
    ratios = {}
    for m in METHODS:
        ratios[m] = C.median([t / s for t, s in zip(times[m], times["saelab"], strict=True)])
        rows.append(
            {
                "method": m,
                "tokens/s (median)": tok / C.median(times[m]),
                "time vs saelab (median paired)": ratios[m],
                "max rel diff": diffs[m],
            }
        )
    rss = {}
    if not a.no_rss:
        for m in METHODS:
            if m == "hf_stop":
                continue
            cmd = [
                sys.executable,
                __file__,
                "--child",
                m,
                "--layers",
                a.layers,
                "--batches",
                str(n_batches),
                "--batch-size",
                str(a.batch_size),
                "--seq-len",
                str(a.seq_len),
                "--threads",
                str(a.threads),
            ]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=C.subprocess_env(a.threads)
            )
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode or not line:
                print(f"RSS child {m} failed:\n{res.stderr[-2000:]}")
                continue
            rss[m] = json.loads(line[-1])
        for r in rows:
            got = rss.get(r["method"])
            r["peak RSS MB"] = got["peak_rss_mb"] if got else None
            r["RSS after capture MB"] = got["rss_mb"] if got else None
    print(
        f"\ncapture resid_post {a.layers}, {n_batches} batches of {a.batch_size}x{a.seq_len}"
        f" tokens, {a.threads} thread(s), {rounds} rounds"
    )
    C.print_table(rows)
    # resident memory once loaded and captured: the peak is set by transformers' model load,
    # the same for every method (1.84 GB here), and hides what each keeps
    rss_ratio = rss["saelab"]["rss_mb"] / rss["tl"]["rss_mb"] if "tl" in rss else None
    checks = [
        ("capture.vs_hf_hooks", ratios["hf_hooks"], ">= 1.0", ratios["hf_hooks"] >= 1.0),
        (
            "capture.vs_hf_hooks_stop",
            ratios["hf_stop"],
            ">= 1.0 (context)",
            ratios["hf_stop"] >= 1.0,
        ),
        ("capture.vs_transformer_lens", ratios["tl"], ">= 1.3", ratios["tl"] >= 1.3),
        ("capture.vs_nnsight", ratios["nnsight"], ">= 1.3", ratios["nnsight"] >= 1.3),
    ]
    for name, r, target, ok in checks:
        print(C.summary_line(name, r, target, ok and agree))
    if rss_ratio is not None:
        print(
            C.summary_line(
                "capture.rss_vs_transformer_lens", rss_ratio, "<= 0.6", rss_ratio <= 0.6 and agree
            )
        )
    C.dump_json(
        a.json,
        {
            "machine": C.machine(),
            "versions": P.versions(),
            "times": times,
            "ratios": ratios,
            "rss": rss,
            "agreement": diffs,
        },
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
