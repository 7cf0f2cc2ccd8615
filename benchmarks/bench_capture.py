"""Capture throughput: saelab's capture of the last layer against a plain HF forward.

Compares, over the same batches of real text (full-length windows, no padding), the
tokens/s of:

  plain          model(input_ids, attention_mask, use_cache=False): what users run today
                 (computes the logits); the baseline
  hidden_states  the same call with output_hidden_states=True, the usual way to get
                 activations (keeps all 31 hidden states)
  base_model     model.model(input_ids, attention_mask, use_cache=False): the decoder stack
                 without the LM head, i.e. the same work as the capture; shows the cost of
                 the hooks themselves
  saelab         saelab.models.capture_prompts(...) of ONE hook point of the LAST layer
                 (resid_post.29), including batching and the per-prompt CPU copies

Methods alternate batch by batch, in rotated order, and the summary is the median of the
paired ratios plain_time / method_time (> 1: faster than the plain forward).
Target: saelab >= 0.95x the plain forward's tokens/s.

    .venv/bin/python benchmarks/bench_capture.py [--quick] [--json OUT]
"""

from __future__ import annotations

import time

import _common as C

C.use_repo_source()


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--batches", type=int, default=None, help="batches per round (default 4)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per prompt (default 128)")
    p.add_argument("--hook", default="resid_post.29", help="hook point captured by saelab")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds")
    a = p.parse_args()
    n_batches = a.batches or (2 if a.quick else 4)
    a.batch_size = a.batch_size or (2 if a.quick else 4)
    budget = a.budget or (10.0 if a.quick else 60.0)
    min_rounds, max_rounds = 2, (3 if a.quick else 8)

    C.pin_threads(a.threads)
    import torch

    from saelab.models import capture_prompts, load_model, parse_hooks

    t0 = time.perf_counter()
    lm = load_model("default", dtype="float32", device="cpu")
    load_s = time.perf_counter() - t0
    hooks = parse_hooks(a.hook, lm.n_layers)
    bos = lm.tokenizer.bos_token_id
    windows = C.token_windows(lm.tokenizer, n_batches * a.batch_size, a.seq_len, bos)
    batches = [windows[i : i + a.batch_size] for i in range(0, len(windows), a.batch_size)]
    tensors = [
        (torch.tensor(b, dtype=torch.long), torch.ones(len(b), a.seq_len, dtype=torch.long))
        for b in batches
    ]
    tokens_per_batch = a.batch_size * a.seq_len
    model = lm.model

    def plain(k: int) -> None:
        ids, mask = tensors[k]
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, use_cache=False)
        assert out.logits.shape[-1] > 0

    def hidden_states(k: int) -> None:
        ids, mask = tensors[k]
        with torch.no_grad():
            out = model(
                input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True
            )
        assert len(out.hidden_states) == lm.n_layers + 1

    def base_model(k: int) -> None:
        ids, mask = tensors[k]
        with torch.no_grad():
            out = model.model(input_ids=ids, attention_mask=mask, use_cache=False)
        assert out.last_hidden_state.shape[1] == a.seq_len

    def saelab(k: int) -> None:
        n = 0
        for _idx, out in capture_prompts(
            model, lm.adapter, hooks, batches[k], pad_id=lm.pad_id, batch_size=a.batch_size
        ):
            n += sum(int(t.shape[0]) for t in out[hooks[0]])
        assert n == tokens_per_batch

    methods = {
        "plain": plain,
        "hidden_states": hidden_states,
        "base_model": base_model,
        "saelab": saelab,
    }
    names = list(methods)

    # Warm-up (first calls allocate) and a check that the captured tensor is layer 29's
    # output: the final norm applied to it must give hidden_states[-1].
    last = hooks[0].layer == lm.n_layers - 1
    check = _check_capture(lm, hooks, batches[0], tensors[0]) if last else None
    for n, f in methods.items():
        if check is None or n in ("plain", "base_model"):  # the check ran the other two
            f(0)

    times: dict[str, list[list[float]]] = {n: [] for n in names}
    t_loop = time.perf_counter()
    rounds = 0
    while C.another_round(rounds, min_rounds, max_rounds, t_loop, budget):
        for n in names:
            times[n].append([0.0] * n_batches)
        for k in range(n_batches):
            for n in C.rotated(names, rounds * n_batches + k):
                times[n][rounds][k] = C.timed(methods[n], k)
        rounds += 1

    def paired(base: str, n: str) -> list[float]:
        return [times[base][r][k] / times[n][r][k] for r in range(rounds) for k in range(n_batches)]

    pairs = {n: paired("plain", n) for n in names}
    per_round_tps = {
        n: [tokens_per_batch * n_batches / sum(times[n][r]) for r in range(rounds)] for n in names
    }
    rows = []
    for n in names:
        rows.append(
            {
                "method": n,
                "tokens/s (median of rounds)": C.median(per_round_tps[n]),
                "range over rounds": C.spread(per_round_tps[n]),
                "vs plain (median paired)": C.median(pairs[n]),
                "paired range": C.spread(pairs[n]),
            }
        )
    print(
        f"capture throughput, default model float32 on cpu, {a.threads} thread(s);"
        f" {n_batches} batches of {a.batch_size}x{a.seq_len} tokens of real text,"
        f" {rounds} rounds ({rounds * n_batches} pairs); saelab hook {hooks[0].name}"
    )
    C.print_table(rows)
    if check is not None:
        print(f"check: norm(saelab {hooks[0].name}) vs hidden_states[-1]: max |diff| {check:.2e}")
    ratio = C.median(pairs["saelab"])
    hs = C.median(pairs["hidden_states"])
    vs_hs = C.median(paired("hidden_states", "saelab"))
    vs_base = C.median(paired("base_model", "saelab"))
    print(
        C.summary_line(
            "capture.saelab_vs_plain_forward",
            ratio,
            ">= 0.95",
            ratio >= 0.95,
            f"saelab vs output_hidden_states {vs_hs:.3f}x; vs model.model (no LM head)"
            f" {vs_base:.3f}x; output_hidden_states vs plain {hs:.3f}x",
        )
    )
    C.dump_json(
        a.json,
        {
            "benchmark": "capture",
            "machine": C.machine(),
            "config": {
                "batches": n_batches,
                "batch_size": a.batch_size,
                "seq_len": a.seq_len,
                "hook": hooks[0].name,
                "rounds": rounds,
                "quick": a.quick,
                "load_seconds": load_s,
            },
            "seconds": times,
            "tokens_per_s_per_round": per_round_tps,
            "paired_ratio_vs_plain": pairs,
            "summary": {
                "saelab_vs_plain": ratio,
                "hidden_states_vs_plain": hs,
                "saelab_vs_hidden_states": vs_hs,
                "saelab_vs_base_model": vs_base,
                "target": 0.95,
                "pass": ratio >= 0.95,
            },
            "check_max_abs_diff": check,
        },
    )


def _check_capture(lm, hooks, token_lists, tensors) -> float:  # noqa: ANN001
    import torch

    from saelab.models import capture_prompts

    ids, mask = tensors
    with torch.no_grad():
        ref = lm.model(
            input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True
        ).hidden_states[-1]
        got = []
        for _idx, out in capture_prompts(
            lm.model, lm.adapter, hooks, token_lists, pad_id=lm.pad_id, batch_size=len(token_lists)
        ):
            got += out[hooks[0]]
        # capture_prompts sorts by length; all windows have the same length, so order is kept
        normed = lm.model.model.norm(torch.stack(got))
    return float((normed - ref).abs().max())


if __name__ == "__main__":
    main()
