"""Patch sweeps against the peers: saelab's batched sweep vs a TransformerLens hook loop and
SAELens `HookedSAETransformer`, one (edit, prompt) generation at a time.

The sweep of benchmarks/bench_patch.py (same prompts, same random JumpReLU SAE at
`blocks.7.hook_resid_post`, ablations of the features firing most at the prompts' last
tokens, greedy, 32 new tokens, edits at the last prompt token and every generated token):

  saelab      saelab.patch.generate_patched: every (edit, prompt) row plus one unedited row
              per prompt, in batches of --batch rows
  tl_loop     TransformerLens `generate` (KV cache) inside `hooks(fwd_hooks=...)` with a hook
              on blocks.7.hook_resid_post that adds (0 - f_i(x)) W_dec[i] at the last position
              (the cheapest encode: the edited feature's column only)
  sae_lens    SAELens HookedSAETransformer with the same SAE (saved by saelab, loaded by
              SAELens) spliced in with its error term, a hook on `hook_sae_acts_post` setting
              the feature to 0 at the last position, then `generate`

The peers run a subset of the pairs (their whole-sweep time is extrapolated from generated
tokens/s), interleaved with saelab's batches, order rotated; ratios are medians of per-round
ratios of generated tokens/s. Before timings are trusted, the generated tokens of every subset
pair are compared with saelab's; a near tie may flip a greedy token between a batch and a
single row, so at least 90% of pairs must agree.

    .venv-peers/bin/python benchmarks/peers/bench_patch_peers.py [--quick] [--json OUT]
"""

from __future__ import annotations

import json
import math
import tempfile
import time

import _peers as P

C = P.C
import bench_patch as BP  # noqa: E402  (benchmarks/ is on the path via _peers)


class TLLoop:
    def __init__(self, tl, sae, n_new: int, eos: set[int], torch):
        self.tl, self.t, self.n_new, self.eos = tl, torch, n_new, eos
        self.b_dec, self.w_enc = sae.b_dec.detach(), sae.W_enc.detach()
        self.b_enc, self.thr, self.w_dec = (
            sae.b_enc.detach(),
            sae.threshold.detach(),
            sae.W_dec.detach(),
        )

    def run(self, feature: int, prompt: list[int]) -> list[int]:
        t = self.t
        w_enc, b_enc, thr, w_dec = (
            self.w_enc[:, feature],
            self.b_enc[feature],
            self.thr[feature],
            self.w_dec[feature],
        )

        def hook(act, hook):
            x = act[:, -1]
            pre = (x - self.b_dec) @ w_enc + b_enc
            f = t.relu(pre) * (pre > thr)
            act[:, -1] = x - f[:, None] * w_dec
            return act

        ids = t.tensor([prompt], dtype=t.long)
        with t.no_grad(), self.tl.hooks(fwd_hooks=[(BP.HOOK, hook)]):
            out = self.tl.generate(
                ids,
                max_new_tokens=self.n_new,
                do_sample=False,
                use_past_kv_cache=True,
                verbose=False,
                stop_at_eos=False,
            )
        return BP.cut_at_eos(out[0, len(prompt) :].tolist(), self.eos)


class SaeLensLoop:
    def __init__(self, lm, sae, n_new: int, eos: set[int], torch):
        import transformer_lens.loading_from_pretrained as tl_loading
        from sae_lens import SAE as LensSAE
        from sae_lens import HookedSAETransformer

        self.t, self.n_new, self.eos = torch, n_new, eos
        folder = str(P.default_folder())
        if folder not in tl_loading.OFFICIAL_MODEL_NAMES:
            tl_loading.OFFICIAL_MODEL_NAMES.append(folder)
        self.model = HookedSAETransformer.from_pretrained_no_processing(
            folder, hf_model=lm.model, tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32
        )
        sae.cfg.metadata["hook_name"] = BP.HOOK
        with tempfile.TemporaryDirectory() as tmp:
            sae.save(tmp)
            self.sae = LensSAE.load_from_disk(tmp, device="cpu")
        self.sae.cfg.metadata.hook_name = BP.HOOK  # SAELens reads it from its own metadata keys
        self.sae.use_error_term = True
        self.model.add_sae(self.sae)
        self.acts = f"{BP.HOOK}.hook_sae_acts_post"

    def run(self, feature: int, prompt: list[int]) -> list[int]:
        t = self.t

        def hook(act, hook):
            act[:, -1, feature] = 0.0
            return act

        ids = t.tensor([prompt], dtype=t.long)
        with t.no_grad(), self.model.hooks(fwd_hooks=[(self.acts, hook)]):
            out = self.model.generate(
                ids,
                max_new_tokens=self.n_new,
                do_sample=False,
                use_past_kv_cache=True,
                verbose=False,
                stop_at_eos=False,
            )
        return BP.cut_at_eos(out[0, len(prompt) :].tolist(), self.eos)


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--batch", type=int, default=64, help="rows per saelab batch (default 64)")
    a = p.parse_args()
    C.pin_threads(a.threads)
    P.require_peers()
    P.print_versions()
    import torch

    from saelab.patch import Edit, generate_patched
    from saelab.patch.generate import _eos_ids

    print(json.dumps(C.machine()))
    n_edits, n_prompts, n_new = (8, 4, 32) if a.quick else (32, 8, 32)
    b_edits, b_prompts = (2, 2) if a.quick else (4, 4)
    lm = P.load_default()
    prompts = BP.load_prompts(lm, n_prompts)
    acts = BP.prompt_activations(lm, prompts)
    sae = BP.make_sae(acts, torch)
    feats, _, _ = BP.pick_features(sae, acts, n_edits, torch)
    edits = [Edit(BP.HOOK, f, "set", 0.0) for f in feats]
    eos = _eos_ids(lm)
    peers = {
        "tl_loop": TLLoop(P.to_transformer_lens(lm), sae, n_new, eos, torch),
        "sae_lens": SaeLensLoop(lm, sae, n_new, eos, torch),
    }
    rows = [(e, pi) for pi in range(n_prompts) for e in [None, *range(n_edits)]]
    n_batches = max(2, math.ceil(len(rows) / a.batch))
    batches = BP.split(rows, n_batches)
    subset = [(e, pi) for e in range(b_edits) for pi in range(b_prompts)]
    slices = BP.split(subset, n_batches)

    def run_batch(batch) -> dict:
        res = generate_patched(
            lm,
            [prompts[pi] for _, pi in batch],
            [[] if e is None else [edits[e]] for e, _ in batch],
            {BP.HOOK: sae},
            max_new_tokens=n_new,
            at="last+generated",
        )
        return dict(zip(batch, res.token_ids, strict=True))

    runs = {"saelab": run_batch}
    for name, peer in peers.items():
        runs[name] = lambda sl, peer=peer: {
            (e, pi): peer.run(feats[e], prompts[pi]) for e, pi in sl
        }
    run_batch(batches[0][:2])  # warm-up
    for peer in peers.values():
        peer.run(feats[0], prompts[0])
    outs = {n: {} for n in runs}
    secs = {n: 0.0 for n in runs}
    toks = {n: 0 for n in runs}
    ratios = {n: [] for n in peers}
    for r in range(n_batches):
        speed = {}
        for name in C.rotated(list(runs), r):
            t0 = time.perf_counter()
            got = runs[name](batches[r] if name == "saelab" else slices[r])
            dt = time.perf_counter() - t0
            n_tok = sum(len(v) for v in got.values())
            outs[name].update(got)
            secs[name] += dt
            toks[name] += n_tok
            speed[name] = n_tok / dt
        for n in peers:
            ratios[n].append(speed["saelab"] / speed[n])
    agree = {}
    for n in peers:
        same = sum(outs[n][k] == outs["saelab"][k] for k in subset)
        agree[n] = same / len(subset)
    ok_agree = all(v >= 0.9 for v in agree.values())
    print(
        f"agreement with saelab's generated tokens on {len(subset)} pairs: "
        + ", ".join(f"{n} {v:.0%}" for n, v in agree.items())
    )
    rows_out = []
    for n in runs:
        rows_out.append(
            {
                "method": n,
                "generated tokens/s": toks[n] / secs[n],
                "saelab speed-up (median per round)": 1.0 if n == "saelab" else C.median(ratios[n]),
                "pairs agreeing": "-" if n == "saelab" else f"{agree[n]:.0%}",
            }
        )
    print(
        f"\nsweep {n_edits} ablations x {n_prompts} prompts x {n_new} tokens; peers on"
        f" {len(subset)} pairs; {n_batches} rounds; {a.threads} thread(s)"
    )
    C.print_table(rows_out)
    for n in peers:
        r = C.median(ratios[n])
        print(C.summary_line(f"patch.vs_{n}", r, ">= 1.0", r >= 1.0 and ok_agree))
    C.dump_json(
        a.json,
        {
            "machine": C.machine(),
            "versions": P.versions(),
            "rows": rows_out,
            "ratios": ratios,
            "agreement": agree,
        },
    )


if __name__ == "__main__":
    main()
