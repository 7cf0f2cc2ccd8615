"""replace_activations on tiny random models of several families (parallel GPT-NeoX included).

The checks pin down what an edit means: identity edits change nothing bit for bit; an edit
at resid_post.L is the same as one at resid_pre.(L+1) (the value really flows on); input
sites take effect whether hidden states come positionally or as a keyword; hooks never
outlive the context; and generation with a KV cache calls the edit once per step on the new
positions only.
"""

from __future__ import annotations

import pytest
import torch

from saelab.errors import SaelabError
from saelab.models.adapters import adapter_for
from saelab.models.capture import HookCapture, make_batch
from saelab.models.hooks import HookPoint, parse_hooks
from saelab.models.interventions import replace_activations
from tests.test_adapters_tiny import N_LAYERS, build

FAMILIES = ["llama", "gemma2", "gpt2", "gpt_neox_parallel", "gpt_neox"]
IDS = torch.tensor([[5, 9, 17, 3, 44, 2, 7], [11, 12, 60, 61, 62, 63, 1]])


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model = build(request.param)
    return request.param, model, adapter_for(model.config)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def sites(name: str) -> list[str]:
    base = ["resid_pre", "attn_out", "mlp_out", "resid_post"]
    return base if name == "gpt_neox_parallel" else [*base, "resid_mid"]


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def zeros(x):
    return torch.zeros_like(x)


def test_identity_edits_are_bit_identical(tiny):
    name, model, adapter = tiny
    clean = logits(model)
    hooks = parse_hooks([f"{s}.*" for s in sites(name)], N_LAYERS)
    with replace_activations(model, adapter, {h: (lambda x: x) for h in hooks}):
        edited = logits(model)
    assert torch.equal(edited, clean)


def test_resid_post_edit_flows_into_next_layer(tiny):
    name, model, adapter = tiny
    clean = logits(model)
    for layer in range(N_LAYERS - 1):
        for fn in (zeros, lambda x: 2 * x + 0.5):
            with replace_activations(model, adapter, {HookPoint(layer, "resid_post"): fn}):
                post = logits(model)
            with replace_activations(model, adapter, {HookPoint(layer + 1, "resid_pre"): fn}):
                pre = logits(model)
            assert torch.equal(post, pre), (name, layer)
            assert not torch.allclose(post, clean), (name, layer)
    assert no_hooks_left(model)


def test_zero_last_resid_post_gives_logits_of_a_zero_stream():
    model = build("llama")  # RMSNorm(0) = 0 and no lm_head bias: logits must be exactly 0
    adapter = adapter_for(model.config)
    with replace_activations(model, adapter, {HookPoint(N_LAYERS - 1, "resid_post"): zeros}):
        out = logits(model)
    assert torch.count_nonzero(out) == 0


def test_input_sites_take_effect_and_match_capture(tiny):
    name, model, adapter = tiny
    clean = logits(model)
    for site in ("resid_pre", "resid_mid") if name != "gpt_neox_parallel" else ("resid_pre",):
        hook = HookPoint(1, site)
        with replace_activations(model, adapter, {hook: zeros}):
            assert not torch.allclose(logits(model), clean), (name, site)
    # the edited value is what capture (registered inside) reads, and what flows on
    b = make_batch(IDS.tolist(), pad_id=0)
    shift = HookPoint(1, "resid_pre")
    with replace_activations(model, adapter, {shift: lambda x: x + 1.0}):
        with HookCapture(model, adapter, [shift]) as cap:
            seen = cap.run(b)[shift]
    with HookCapture(model, adapter, [shift]) as cap:
        orig = cap.run(b)[shift]
    assert torch.allclose(seen, orig + 1.0)
    assert no_hooks_left(model)


def test_input_site_passed_as_keyword():
    model = build("gpt2")
    adapter = adapter_for(model.config)
    block = model.transformer.h[0]
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        ref = block(torch.zeros_like(x))
        with replace_activations(model, adapter, {HookPoint(0, "resid_pre"): zeros}):
            kw = block(hidden_states=x)
            pos = block(x)
    ref = ref[0] if isinstance(ref, tuple) else ref
    kw = kw[0] if isinstance(kw, tuple) else kw
    pos = pos[0] if isinstance(pos, tuple) else pos
    assert torch.equal(kw, ref) and torch.equal(pos, ref)


def test_edits_compose_in_forward_order(tiny):
    name, model, adapter = tiny
    order = sites(name)
    log: list[str] = []

    def rec(tag):
        def fn(x):
            log.append(tag)
            return x

        return fn

    edits = {HookPoint(1, s): rec(s) for s in reversed(order)}  # insertion order scrambled
    with replace_activations(model, adapter, edits):
        logits(model)
    expected = sorted(order, key=lambda s: HookPoint(1, s).order)
    assert log == expected
    # an edit at resid_pre and at resid_post of the same block both apply
    both = {HookPoint(1, "resid_pre"): zeros, HookPoint(1, "resid_post"): lambda x: x * 3}
    with replace_activations(model, adapter, both):
        got = logits(model)
    post_only = HookPoint(1, "resid_post")
    with replace_activations(model, adapter, {HookPoint(1, "resid_pre"): zeros}):
        b = make_batch(IDS.tolist(), pad_id=0)
        with HookCapture(model, adapter, [post_only]) as cap:
            value = cap.run(b)[post_only]
    with replace_activations(model, adapter, {HookPoint(2, "resid_pre"): lambda x: value * 3}):
        want = logits(model)
    assert torch.allclose(got, want, atol=1e-6)


def test_hooks_removed_after_exit_and_exception(tiny):
    name, model, adapter = tiny
    clean = logits(model)
    hooks = parse_hooks([f"{s}.1" for s in sites(name)], N_LAYERS)
    with replace_activations(model, adapter, {h: zeros for h in hooks}):
        assert not no_hooks_left(model)
    assert no_hooks_left(model)
    with pytest.raises(KeyError):
        with replace_activations(model, adapter, {h: zeros for h in hooks}):
            raise KeyError("boom")
    assert no_hooks_left(model)
    with pytest.raises(SaelabError, match="keep the shape"):
        with replace_activations(model, adapter, {hooks[0]: lambda x: x[:, :1]}):
            logits(model)
    assert no_hooks_left(model)
    assert torch.equal(logits(model), clean)


def test_unknown_sites_raise_before_registering():
    model = build("gpt_neox_parallel")
    adapter = adapter_for(model.config)
    ok = HookPoint(0, "resid_post")
    for bad, msg in (
        (HookPoint(0, "resid_mid"), "no resid_mid"),
        (HookPoint(N_LAYERS, "resid_post"), "past the model's depth"),
        (HookPoint(0, "pattern"), "can be read but not replaced"),
    ):
        with pytest.raises(SaelabError, match=msg):
            with replace_activations(model, adapter, {ok: zeros, bad: zeros}):
                pass
        assert no_hooks_left(model)


def test_dtype_is_restored():
    model = build("llama")
    adapter = adapter_for(model.config)
    clean = logits(model)
    with replace_activations(model, adapter, {HookPoint(1, "resid_post"): lambda x: x.double()}):
        assert torch.equal(logits(model), clean)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox_parallel"])
def test_generation_sees_new_positions_each_step(name):
    model = build(name)
    adapter = adapter_for(model.config)
    prompt = IDS[:, :5]
    shapes: list[tuple[int, ...]] = []

    def rec(x):
        shapes.append(tuple(x.shape))
        return x

    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        clean = model.generate(prompt, output_scores=True, return_dict_in_generate=True, **kw)
        with replace_activations(model, adapter, {HookPoint(1, "resid_post"): rec}):
            same = model.generate(prompt, output_scores=True, return_dict_in_generate=True, **kw)
        with replace_activations(model, adapter, {HookPoint(0, "resid_pre"): zeros}):
            ablated = model.generate(prompt, output_scores=True, return_dict_in_generate=True, **kw)
    assert shapes == [(2, 5, 64)] + [(2, 1, 64)] * 3
    assert torch.equal(same.sequences, clean.sequences)
    assert not torch.allclose(ablated.scores[0], clean.scores[0])
    assert no_hooks_left(model)
