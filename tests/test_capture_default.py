"""Capture on the real default model (SmolLM2-135M-Instruct): the numbers users will store."""

from __future__ import annotations

import torch

from saelab.models import HookPoint, parse_hooks, tokenize_prompts
from saelab.models.capture import HookCapture, capture_prompts, make_batch
from tests.conftest import hidden_states, rel_err

TEXTS = [
    "The capital of France is",
    "Sparse autoencoders find features in the residual stream of language models.",
    "2 + 2 =",
]


def test_bos_rule_on_the_default_model(smol):
    tp = tokenize_prompts(smol.tokenizer, ["Hello world"])
    assert tp.ids == [[1, 19556, 905]] and tp.bos_id == 1
    tp = tokenize_prompts(smol.tokenizer, ["Hello world"], prepend_bos=False)
    assert tp.ids == [[19556, 905]] and tp.bos_id is None
    tp = tokenize_prompts(smol.tokenizer, ["a b c d e f"], max_length=3)
    assert len(tp.ids[0]) == 3 and tp.truncated == 1


def test_resid_post_equals_hidden_states_and_last_layer_is_pre_norm(smol):
    hooks = parse_hooks("resid_post.*", smol.n_layers)
    tp = tokenize_prompts(smol.tokenizer, TEXTS)
    b = make_batch(tp.ids, smol.pad_id)
    with HookCapture(smol.model, smol.adapter, hooks) as cap:
        v = cap.run(b)
    hs = hidden_states(smol.model, b)
    m = b.attention_mask.bool()
    for layer in range(smol.n_layers - 1):
        assert rel_err(v[HookPoint(layer, "resid_post")][m], hs[layer + 1][m]) < 1e-6
    last = v[HookPoint(smol.n_layers - 1, "resid_post")]
    with torch.no_grad():
        assert rel_err(smol.model.model.norm(last)[m], hs[-1][m]) < 1e-6


def test_residual_identities_on_the_default_model(smol):
    hooks = parse_hooks(
        ["resid_pre.7", "attn_out.7", "resid_mid.7", "mlp_out.7", "resid_post.7"], 30
    )
    tp = tokenize_prompts(smol.tokenizer, TEXTS)
    b = make_batch(tp.ids, smol.pad_id)
    with HookCapture(smol.model, smol.adapter, hooks) as cap:
        v = cap.run(b)
    m = b.attention_mask.bool()

    def g(site):
        return v[HookPoint(7, site)][m]

    assert rel_err(g("resid_pre") + g("attn_out"), g("resid_mid")) < 1e-5
    assert rel_err(g("resid_mid") + g("mlp_out"), g("resid_post")) < 1e-5


def test_left_right_and_single_prompt_agree(smol):
    hooks = parse_hooks("resid_post.3,mlp_out.12,resid_post.29", smol.n_layers)
    tp = tokenize_prompts(smol.tokenizer, TEXTS)
    single = {}
    for i, ids in enumerate(tp.ids):
        for _, out in capture_prompts(smol.model, smol.adapter, hooks, [ids], pad_id=smol.pad_id):
            single[i] = {h: out[h][0] for h in hooks}
    for side in ("right", "left"):
        for idx, out in capture_prompts(
            smol.model,
            smol.adapter,
            hooks,
            tp.ids,
            pad_id=smol.pad_id,
            batch_size=3,
            padding_side=side,
        ):
            for r, i in enumerate(idx):
                for h in hooks:
                    assert out[h][r].shape == (len(tp.ids[i]), smol.d_model)
                    assert rel_err(out[h][r], single[i][h]) < 1e-5, (side, i, h.name)


def test_last_and_mean_positions_and_drop_bos(smol):
    hooks = [HookPoint(5, "resid_post")]
    tp = tokenize_prompts(smol.tokenizer, TEXTS)
    full = {}
    for idx, out in capture_prompts(smol.model, smol.adapter, hooks, tp.ids, pad_id=smol.pad_id):
        for r, i in enumerate(idx):
            full[i] = out[hooks[0]][r]
    for pos in ("last", "mean"):
        for idx, out in capture_prompts(
            smol.model,
            smol.adapter,
            hooks,
            tp.ids,
            pad_id=smol.pad_id,
            positions=pos,
            drop_bos=True,
            bos_id=1,
        ):
            for r, i in enumerate(idx):
                want = full[i][-1:] if pos == "last" else full[i][1:].mean(0, keepdim=True)
                assert rel_err(out[hooks[0]][r], want) < 1e-5
