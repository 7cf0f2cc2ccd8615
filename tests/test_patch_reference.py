"""Patched generation against a reference that shares none of saelab.patch's machinery.

The reference re-runs the whole sequence for every new token, one row at a time, with no KV
cache and no padding, and edits through a plain forward hook on the decoder block: it encodes
the block's output with the SAE, changes the chosen features, and adds (f' - f) @ W_dec (or
A * W_dec[i] for a steer) at the positions `at` names, counted in the unpadded sequence. The
batched, cached, left-padded result of `generate_patched` must give the same greedy tokens and
log-probs within float32 rounding, for every `at` mode, in batches that mix several edit sets,
baseline rows and repeated prompts (which take the shared-prefix path), on the default model
and on a tiny random model of every supported family. Each patched row must also report at
how many positions its edits were applied, and a row edited nowhere must be refused.
"""

from __future__ import annotations

import pytest
import torch

from saelab.errors import SaelabError
from saelab.models.adapters import adapter_for
from saelab.models.loading import LoadedModel
from saelab.models.tokens import tokenize_prompts
from saelab.patch import generate_patched, parse_edit
from saelab.patch.apply import AT
from saelab.sae import SAE
from tests.test_patch import DEAD, MID, PROMPTS, TOPK, random_sae, saes  # noqa: F401

N_NEW = 5


def reference_rows(lm, sae_map, prompt_ids, edits, at, n_new):
    """Greedy tokens, their log-probs and the first answer distribution of one row, without
    saelab.patch: full re-runs, a plain forward hook, positions of the unpadded sequence."""
    layers = lm.model.get_submodule(lm.adapter.layers_path(lm.model))
    by_layer: dict[int, list] = {}
    for e in edits:
        by_layer.setdefault(int(e.hook.split(".")[1]), []).append(e)
    n_prompt = len(prompt_ids)

    def selected(p: int) -> bool:
        return {
            "last": p == n_prompt - 1,
            "prompt": p < n_prompt,
            "generated": p >= n_prompt,
            "all": True,
            "last+generated": p >= n_prompt - 1,
        }[at]

    def hook_for(layer_edits):
        sae: SAE = sae_map[layer_edits[0].hook]

        def hook(mod, args, output):
            x = output[0] if isinstance(output, tuple) else output
            x = x.clone()
            for p in range(x.shape[1]):
                if not selected(p):
                    continue
                v = x[0, p].float()
                f = sae.encode(v[None])[0]
                new = f.clone()
                add = torch.zeros_like(v)
                for e in layer_edits:
                    if e.op == "set":
                        new[e.feature] = e.value
                    elif e.op == "scale":
                        new[e.feature] = f[e.feature] * e.value
                    elif e.op == "shift":
                        new[e.feature] = f[e.feature] + e.value
                    else:  # steer
                        add = add + e.value * sae.W_dec[e.feature]
                x[0, p] = (v + (new - f) @ sae.W_dec + add).to(x.dtype)
            return (x, *output[1:]) if isinstance(output, tuple) else x

        return hook

    seq = list(prompt_ids)
    toks, lps, first = [], [], None
    for _ in range(n_new):
        handles = [
            layers[layer].register_forward_hook(hook_for(es)) for layer, es in by_layer.items()
        ]
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        lp = torch.log_softmax(logits.float(), -1)
        if first is None:
            first = lp
        tok = int(lp.argmax())
        toks.append(tok)
        lps.append(float(lp[tok]))
        seq.append(tok)
    return toks, lps, first


def check_against_reference(lm, sae_map, prompt_ids, rows, at, n_new, tol):
    res = generate_patched(lm, prompt_ids, rows, sae_map, max_new_tokens=n_new, at=at)
    for i, (ids, edits) in enumerate(zip(prompt_ids, rows, strict=True)):
        toks, lps, first = reference_rows(lm, sae_map, ids, edits, at, n_new)
        got = res.token_ids[i]
        assert got == toks[: len(got)], (at, i)
        torch.testing.assert_close(
            torch.tensor(res.token_logprobs[i]), torch.tensor(lps[: len(got)]), atol=tol, rtol=0
        )
        torch.testing.assert_close(res.first_logprobs[i], first, atol=tol, rtol=0)
        if edits:
            assert res.applied[i] > 0, (at, i)
        else:
            assert res.applied[i] == 0
    return res


@pytest.mark.parametrize("at", AT)
def test_mixed_sweep_batch_equals_the_reference(smol, saes, at):  # noqa: F811
    """Three edit sets (a steer, a baseline, a set + shift at two hooks) x two prompts of
    different lengths: rows repeat prompts, so `last`-anchored modes share the prefix cache."""
    sets = [
        [parse_edit(f"{MID}:3@60")],
        [],
        [parse_edit(f"{TOPK}:9=8"), parse_edit(f"{MID}:{DEAD}+=20")],
    ]
    prompts = tokenize_prompts(smol.tokenizer, [PROMPTS[0], PROMPTS[1]]).ids
    ids = [p for _ in sets for p in prompts]
    rows = [s for s in sets for _ in prompts]
    res = check_against_reference(smol, saes, ids, rows, at, N_NEW, tol=1e-3)
    # the counts are those of the positions `at` names (padding never counts)
    width = max(len(p) for p in prompts)
    for i, p in enumerate(ids):
        if not rows[i]:
            continue
        fed = N_NEW - 1  # generated tokens that are fed back through the model
        want = {"last": 1, "prompt": len(p), "generated": fed, "all": len(p) + fed,
                "last+generated": 1 + fed}[at]  # fmt: skip
        assert res.applied[i] == want, (at, i, width)


def test_a_strong_steer_changes_every_row(smol, saes):  # noqa: F811
    prompts = tokenize_prompts(smol.tokenizer, PROMPTS).ids
    rows = [[parse_edit(f"{MID}:3@300")] for _ in prompts] + [[] for _ in prompts]
    res = generate_patched(smol, prompts + prompts, rows, saes, max_new_tokens=3)
    base, steer = res.first_logprobs[len(prompts) :], res.first_logprobs[: len(prompts)]
    kl = (base.exp() * (base - steer)).sum(-1)
    assert (kl > 0.1).all(), kl


def test_an_edit_that_cannot_apply_is_refused(smol, saes):  # noqa: F811
    with pytest.raises(SaelabError, match="at least 2 new tokens"):
        generate_patched(
            smol, PROMPTS[:1], [[parse_edit(f"{MID}:3@60")]], saes, max_new_tokens=1, at="generated"
        )


# -- every family's adapter: tiny random models ------------------------------------------------
def tiny_lm(family: str) -> LoadedModel:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tests.test_adapters_tiny import N_LAYERS, build

    model = build(family)
    model.generation_config.eos_token_id = None  # run every row the full length
    vocab = {f"t{i}": i for i in range(128)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    d = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    return LoadedModel(model=model, tokenizer=tok, adapter=adapter_for(model.config),
                       name=family, source=None, dtype="float32",  # type: ignore[arg-type]
                       device=torch.device("cpu"), n_layers=N_LAYERS, d_model=d)  # fmt: skip


@pytest.mark.parametrize(
    "family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox"]
)
def test_every_family_matches_the_reference(family):
    lm = tiny_lm(family)
    hook = "blocks.1.hook_resid_post"
    sae_map = {hook: random_sae(lm.d_model, 96, "jumprelu", 5)}
    prompts = [[5, 9, 17, 3, 44, 2, 7], [11, 12]]
    sets = [[parse_edit(f"{hook}:3@4")], [], [parse_edit(f"{hook}:5*3")]]
    ids = [p for _ in sets for p in prompts]
    rows = [s for s in sets for _ in prompts]
    for at in ("generated", "last+generated", "prompt"):
        check_against_reference(lm, sae_map, ids, rows, at, 4, tol=1e-4)
