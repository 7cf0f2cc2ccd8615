"""Every adapter on a tiny randomly initialised model of its family.

Checks that the names mean what TransformerLens/SAELens mean: resid_post equals HF's hidden
state (and, for the last layer, the block output before the final norm), the family's
residual identities hold, padding on either side matches one prompt at a time, patterns are
softmax rows, and capture stops after the deepest requested layer.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from saelab.errors import SaelabError
from saelab.models.adapters import adapter_for
from saelab.models.capture import HookCapture, capture_prompts, make_batch
from saelab.models.hooks import HookPoint, parse_hooks
from tests.conftest import hidden_states, rel_err

N_LAYERS = 3
COMMON = dict(num_hidden_layers=N_LAYERS, vocab_size=128)
LLAMA_LIKE = dict(
    COMMON, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2
)

CONFIGS = {
    "llama": lambda: T.LlamaConfig(**LLAMA_LIKE),
    "mistral": lambda: T.MistralConfig(**LLAMA_LIKE),
    "qwen2": lambda: T.Qwen2Config(**LLAMA_LIKE),
    "qwen3": lambda: T.Qwen3Config(**LLAMA_LIKE, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**LLAMA_LIKE, head_dim=16),
    "gemma3": lambda: T.Gemma3TextConfig(**LLAMA_LIKE, head_dim=16, sliding_window=4),
    "gpt2": lambda: T.GPT2Config(
        n_embd=64,
        n_layer=N_LAYERS,
        n_head=4,
        vocab_size=128,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        **COMMON,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        use_parallel_residual=False,
    ),
    "gpt_neox_parallel": lambda: T.GPTNeoXConfig(
        **COMMON,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        use_parallel_residual=True,
    ),
}
PROMPTS = [[5, 9, 17, 3, 44, 2, 7], [11, 12], [60, 61, 62, 63, 1]]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[name](), dtype=torch.float32)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=list(CONFIGS))
def tiny(request):
    model = build(request.param)
    return request.param, model, adapter_for(model.config)


def all_hooks(name: str) -> list[HookPoint]:
    sites = ["resid_pre", "attn_out", "mlp_out", "resid_post"]
    if name != "gpt_neox_parallel":
        sites.append("resid_mid")
    return parse_hooks([f"{s}.*" for s in sites], N_LAYERS)


def run(model, adapter, hooks, prompts, side="right", stop_early=True):
    b = make_batch(prompts, pad_id=0, padding_side=side)
    with HookCapture(model, adapter, hooks) as cap:
        return b, dict(cap.run(b, stop_early=stop_early))


def test_resid_post_matches_hidden_states_and_final_norm(tiny):
    name, model, adapter = tiny
    hooks = all_hooks(name)
    b, v = run(model, adapter, hooks, PROMPTS, stop_early=False)
    hs = hidden_states(model, b)
    m = b.attention_mask.bool()
    assert rel_err(v[HookPoint(0, "resid_pre")][m], hs[0][m]) < 1e-6
    for layer in range(N_LAYERS - 1):
        assert rel_err(v[HookPoint(layer, "resid_post")][m], hs[layer + 1][m]) < 1e-6
        assert rel_err(v[HookPoint(layer + 1, "resid_pre")][m], hs[layer + 1][m]) < 1e-6
    # last entry of hidden_states has the final norm applied; our resid_post does not
    norm = next(model.get_submodule(p) for p in adapter.final_norm if _has(model, p))
    last = v[HookPoint(N_LAYERS - 1, "resid_post")]
    assert rel_err(norm(last)[m], hs[-1][m]) < 1e-6
    assert rel_err(last[m], hs[-1][m]) > 1e-3


def _has(model, path):
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def test_residual_identities(tiny):
    name, model, adapter = tiny
    hooks = all_hooks(name)
    b, v = run(model, adapter, hooks, PROMPTS)
    m = b.attention_mask.bool()
    for layer in range(N_LAYERS):

        def g(site, layer=layer):
            return v[HookPoint(layer, site)][m]

        if name == "gpt_neox_parallel":
            total = g("resid_pre") + g("attn_out") + g("mlp_out")
            assert rel_err(total, g("resid_post")) < 1e-5
        else:
            assert rel_err(g("resid_pre") + g("attn_out"), g("resid_mid")) < 1e-5
            assert rel_err(g("resid_mid") + g("mlp_out"), g("resid_post")) < 1e-5


def test_parallel_neox_has_no_resid_mid():
    model = build("gpt_neox_parallel")
    adapter = adapter_for(model.config)
    with pytest.raises(SaelabError, match="no resid_mid"):
        HookCapture(model, adapter, [HookPoint(0, "resid_mid")])


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_matches_single_prompts(tiny, side):
    name, model, adapter = tiny
    hooks = all_hooks(name)
    b, v = run(model, adapter, hooks, PROMPTS, side=side)
    for i, toks in enumerate(PROMPTS):
        _, single = run(model, adapter, hooks, [toks])
        s, e = b.span(i)
        for h in hooks:
            assert rel_err(v[h][i, s:e], single[h][0]) < 1e-5, (name, side, h.name)


def test_capture_prompts_positions(tiny):
    name, model, adapter = tiny
    hooks = [HookPoint(1, "resid_post")]
    _, ref = run(model, adapter, hooks, PROMPTS)
    ref_b = make_batch(PROMPTS, 0)
    got = {}
    for pos in ("all", "last", "mean"):
        rows = {}
        for idx, out in capture_prompts(
            model, adapter, hooks, PROMPTS, pad_id=0, batch_size=2, positions=pos
        ):
            for r, i in enumerate(idx):
                rows[i] = out[hooks[0]][r]
        got[pos] = rows
    for i, toks in enumerate(PROMPTS):
        s, e = ref_b.span(i)
        full = ref[hooks[0]][i, s:e]
        assert got["all"][i].shape == (len(toks), 64)
        assert rel_err(got["all"][i], full) < 1e-5
        assert rel_err(got["last"][i], full[-1:]) < 1e-5
        assert rel_err(got["mean"][i], full.mean(0, keepdim=True)) < 1e-5


def test_drop_bos_skips_first_token_only_when_bos():
    model = build("llama")
    adapter = adapter_for(model.config)
    prompts = [[1, 5, 6, 7], [8, 9, 10]]  # BOS=1 on the first prompt only
    hooks = [HookPoint(0, "resid_post")]
    rows = {}
    for idx, out in capture_prompts(
        model, adapter, hooks, prompts, pad_id=0, positions="all", drop_bos=True, bos_id=1
    ):
        for r, i in enumerate(idx):
            rows[i] = out[hooks[0]][r]
    assert rows[0].shape[0] == 3 and rows[1].shape[0] == 3


def test_pattern_rows_sum_to_one_under_eager():
    model = build("llama")
    model.set_attn_implementation("eager")
    adapter = adapter_for(model.config)
    hooks = [HookPoint(1, "pattern")]
    b, v = run(model, adapter, hooks, PROMPTS)
    pat = v[hooks[0]]
    assert pat.shape == (3, 4, 7, 7)
    for i in range(3):
        s, e = b.span(i)
        sq = pat[i, :, s:e, s:e]
        assert torch.allclose(sq.sum(-1), torch.ones_like(sq.sum(-1)), atol=1e-5)
        assert torch.all(sq.triu(diagonal=1) == 0)  # causal


def test_pattern_without_eager_is_a_clear_error():
    model = build("llama")  # sdpa returns no weights
    adapter = adapter_for(model.config)
    with pytest.raises(RuntimeError, match="eager attention"):
        run(model, adapter, [HookPoint(0, "pattern")], PROMPTS)


def test_capture_stops_after_deepest_layer(tiny):
    name, model, adapter = tiny
    layers = model.get_submodule(adapter.layers_path(model))
    calls = [0] * N_LAYERS
    handles = [
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    head = model.get_output_embeddings()
    head_calls = []
    handles.append(head.register_forward_hook(lambda *a: head_calls.append(1)))
    try:
        run(model, adapter, [HookPoint(1, "resid_post")], PROMPTS)
        assert calls == [1, 1, 0] and not head_calls
        calls[:] = [0] * N_LAYERS
        run(model, adapter, [HookPoint(N_LAYERS - 1, "resid_post")], PROMPTS)
        assert calls == [1] * N_LAYERS and not head_calls  # no logits computed
    finally:
        for h in handles:
            h.remove()


def test_unsupported_architecture_is_refused():
    cfg = T.BertConfig()
    with pytest.raises(SaelabError, match="not supported yet"):
        adapter_for(cfg)
