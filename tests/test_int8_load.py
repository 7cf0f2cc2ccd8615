"""int8 on CPU loads tensor by tensor, never as a whole float32 model, and gives exactly the
model that loading in float32 and quantising afterwards gives. Also: module paths of any HF
module as hook points (capture and edits), checked against plain torch hooks."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from saelab.models import HookPoint, capture_prompts, load_model, parse_hooks
from saelab.models.int8 import Int8Linear, quantize_int8
from saelab.models.int8_load import checkpoint_files, iter_tensors, load_int8
from saelab.models.interventions import replace_activations


def same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_default_model_int8_equals_float32_then_quantised(smol):
    lm = load_model("default", dtype="int8")
    n_int8 = sum(isinstance(m, Int8Linear) for m in lm.model.modules())
    assert n_int8 == 30 * 7  # every projection of every layer; the tied head stays float32
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    ref = quantize_int8(load_model("default").model)
    same_model(lm.model, ref)
    ids = torch.tensor([lm.tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, ref(input_ids=ids).logits)


def tiny(path, dtype=torch.float32, shard: str | None = None, tie: bool = False):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=tie,
    )
    model = T.AutoModelForCausalLM.from_config(cfg).to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    return path


@pytest.mark.parametrize(
    "dtype, shard, tie",
    [(torch.bfloat16, None, False), (torch.float32, "40KB", True), (torch.float16, None, True)],
)
def test_half_sharded_and_tied_checkpoints(tmp_path, dtype, shard, tie):
    folder = tiny(tmp_path / "m", dtype, shard, tie)
    if shard:
        assert len(checkpoint_files(folder)) > 1
    cfg = T.AutoConfig.from_pretrained(folder)
    got = load_int8(folder, cfg, None)
    assert got is not None
    ref = T.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    ref = quantize_int8(ref).float()
    same_model(got, ref)
    assert sum(isinstance(m, Int8Linear) for m in got.modules()) == 2 * 7


def test_reader_gives_every_tensor_exactly(tmp_path):
    ts = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 4),
    }
    save_file(ts, tmp_path / "x.safetensors")
    got = dict(iter_tensors(tmp_path / "x.safetensors"))
    assert set(got) == set(ts)
    for k, v in ts.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)


def test_unknown_checkpoint_names_fall_back_to_the_float_load(tmp_path):
    folder = tiny(tmp_path / "m")
    (f,) = checkpoint_files(folder)
    renamed = {f"legacy.{k}": v for k, v in iter_tensors(f)}
    save_file(renamed, f)
    cfg = T.AutoConfig.from_pretrained(folder)
    assert load_int8(folder, cfg, None) is None
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_hf_module_paths_capture_and_edit(smol):
    hooks = parse_hooks(
        "model.layers.3, model.layers.3.mlp.down_proj, model.layers.3.mlp.down_proj.hook_input",
        smol.n_layers,
        smol.hook_for_module_path,
    )
    assert [h.name for h in hooks] == [
        "model.layers.3.mlp.down_proj.hook_output",
        "model.layers.3.mlp.down_proj.hook_input",
        "blocks.3.hook_resid_post",
    ]
    ids = smol.tokenizer("Sparse autoencoders find features").input_ids
    ((_, out),) = list(capture_prompts(smol.model, smol.adapter, hooks, [ids], pad_id=0))
    down = smol.model.model.layers[3].mlp.down_proj
    seen = {}
    h1 = down.register_forward_hook(lambda m, a, o: seen.update(i=a[0][0], o=o[0]))
    try:
        with torch.no_grad():
            smol.model(input_ids=torch.tensor([ids]))
    finally:
        h1.remove()
    assert torch.equal(out[hooks[0]][0], seen["o"]) and out[hooks[0]][0].shape[-1] == 576
    assert torch.equal(out[hooks[1]][0], seen["i"]) and out[hooks[1]][0].shape[-1] == 1536
    # mlp_out of layer 3 is down_proj's output: one tensor, two names
    ((_, mlp),) = list(
        capture_prompts(smol.model, smol.adapter, [HookPoint(3, "mlp_out")], [ids], pad_id=0)
    )
    assert torch.equal(mlp[HookPoint(3, "mlp_out")][0], seen["o"])
    # an edit on the input of down_proj by path is the edit a plain pre-hook makes
    x = torch.tensor([ids])
    with replace_activations(smol.model, smol.adapter, {hooks[1]: torch.zeros_like}):
        with torch.no_grad():
            got = smol.model(input_ids=x).logits
    h2 = down.register_forward_pre_hook(lambda m, a: (torch.zeros_like(a[0]),))
    try:
        with torch.no_grad():
            want = smol.model(input_ids=x).logits
    finally:
        h2.remove()
    assert torch.equal(got, want)


def test_planned_int8_bytes_are_the_loaded_model_bytes():
    """ModelShape.weight_bytes('int8') (what plans use) against the real int8 model's
    tensors, counted once per storage (the tied head shares the embeddings)."""
    from saelab.models.describe import describe_model

    lm = load_model("default", dtype="int8")
    seen, total = set(), 0
    for t in [*lm.model.parameters(), *lm.model.buffers(recurse=True)]:
        if t.data_ptr() not in seen and t.numel():
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    rotary = sum(b.numel() * b.element_size() for n, b in lm.model.named_buffers() if "rotary" in n)
    planned = describe_model("default").shape.weight_bytes("int8")
    assert planned == total - rotary
