"""Early stop: the cost of capturing resid_post.L relative to a full pass, against (L+1)/N.

saelab's capture abandons the forward pass once the deepest requested hook has fired, so
capturing layer L of N should cost about (L+1)/N of a pass through all N layers. For each L,
every round times, on the same batch of real text and in rotated order:

  full      HookCapture of resid_post.{N-1}: all N decoder layers, no LM head (the baseline)
  L         HookCapture of resid_post.L (stop early)
  plain     model(input_ids, attention_mask, use_cache=False) with logits, for context

and the fraction t(L) / t(full) is taken within the round, then the median over rounds.
Target (ours; the brief gives none): each fraction <= (L+1)/N + 0.05, i.e. the fixed cost
outside the decoder layers (embedding, masks, rotary tables, hooks) stays under 5% of a pass.

    .venv/bin/python benchmarks/bench_early_stop.py [--quick] [--json OUT]
"""

from __future__ import annotations

import time

import _common as C

C.use_repo_source()

SLACK = 0.05


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--layers", default=None, help="comma-separated layers (default 0,3,7,14,21)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per prompt (default 128)")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds")
    a = p.parse_args()
    budget = a.budget or (10.0 if a.quick else 60.0)
    min_rounds, max_rounds = (2, 3) if a.quick else (3, 12)
    a.batch_size = a.batch_size or (2 if a.quick else 4)

    C.pin_threads(a.threads)
    import torch

    from saelab.models import load_model, make_batch, parse_hooks
    from saelab.models.capture import HookCapture

    lm = load_model("default", dtype="float32", device="cpu")
    n = lm.n_layers
    default_layers = "0,7,21" if a.quick else "0,3,7,14,21"
    layers = sorted({int(x) for x in (a.layers or default_layers).split(",")} - {n - 1})
    bos = lm.tokenizer.bos_token_id
    n_batches = 2
    windows = C.token_windows(lm.tokenizer, n_batches * a.batch_size, a.seq_len, bos)
    batches = [
        make_batch(windows[i : i + a.batch_size], lm.pad_id)
        for i in range(0, len(windows), a.batch_size)
    ]
    names = ["full"] + [str(L) for L in layers] + ["plain"]
    caps = {"full": parse_hooks(f"resid_post.{n - 1}", n)}
    caps.update({str(L): parse_hooks(f"resid_post.{L}", n) for L in layers})

    def run(name: str, k: int) -> None:
        b = batches[k]
        if name == "plain":
            with torch.no_grad():
                lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            return
        with HookCapture(lm.model, lm.adapter, caps[name]) as cap:
            out = cap.run(b)
        assert next(iter(out.values())).shape[1] == a.seq_len

    for name in names:  # warm-up
        run(name, 0)

    times: dict[str, list[float]] = {name: [] for name in names}
    t_loop = time.perf_counter()
    rounds = 0
    while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
        k = rounds % n_batches
        for name in C.rotated(names, rounds):
            times[name].append(C.timed(run, name, k))
        rounds += 1

    tokens = a.batch_size * a.seq_len
    fractions = {name: [times[name][r] / times["full"][r] for r in range(rounds)] for name in names}
    rows = []
    results = {}
    for name in names:
        ideal = 1.0 if name == "full" else (int(name) + 1) / n if name != "plain" else None
        frac = C.median(fractions[name])
        rows.append(
            {
                "capture": f"resid_post.{n - 1} (full)"
                if name == "full"
                else "plain forward + logits"
                if name == "plain"
                else f"resid_post.{name}",
                "tokens/s (median)": C.median([tokens / t for t in times[name]]),
                "fraction of full (median)": frac,
                "range": C.spread(fractions[name]),
                "ideal (L+1)/N": ideal,
                "measured / ideal": None if ideal is None else frac / ideal,
                "speed-up vs full": 1 / frac,
            }
        )
        results[name] = {"fraction": frac, "ideal": ideal, "fractions": fractions[name]}
    print(
        f"early stop, default model ({n} layers) float32 on cpu, {a.threads} thread(s);"
        f" batches of {a.batch_size}x{a.seq_len} tokens of real text, {rounds} rounds"
    )
    C.print_table(rows)
    all_ok = True
    for L in layers:
        r = results[str(L)]
        ok = r["fraction"] <= r["ideal"] + SLACK
        all_ok &= ok
        print(
            C.summary_line(
                f"early_stop.resid_post.{L}",
                r["fraction"],
                f"<= (L+1)/N + {SLACK} = {r['ideal'] + SLACK:.3f} of a full pass",
                ok,
                f"ideal {r['ideal']:.3f}; {1 / r['fraction']:.1f}x faster than capturing"
                f" layer {n - 1}",
            )
        )
    C.dump_json(
        a.json,
        {
            "benchmark": "early_stop",
            "machine": C.machine(),
            "config": {
                "layers": layers,
                "n_layers": n,
                "batch_size": a.batch_size,
                "seq_len": a.seq_len,
                "rounds": rounds,
                "quick": a.quick,
            },
            "seconds": times,
            "results": results,
            "summary": {"slack": SLACK, "pass": all_ok},
        },
    )


if __name__ == "__main__":
    main()
