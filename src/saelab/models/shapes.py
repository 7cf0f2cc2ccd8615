"""Model shapes: the few hyper-parameters that size every plan, read without loading weights.

The planner must say how much memory, disk and time a stage needs *before* anything runs, so it
needs a model's parameter count, per-layer size and FLOPs per token from nothing heavier than an
HF `config.json`, a GGUF header, or a table of well-known models shipped with saelab (so
planning works offline). `ModelShape` holds those hyper-parameters and derives exact parameter
counts (checked against `transformers` for every family), weight bytes per dtype and forward
FLOPs. The GGUF header parser lives in `gguf_header` and the built-in table in
`builtin_shapes`; both public functions are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelab.errors import SaelabError

# `x as x` marks a re-export for linters: callers import these from saelab.models.shapes.
from saelab.models.builtin_shapes import builtin_names as builtin_names
from saelab.models.builtin_shapes import builtin_shape as builtin_shape
from saelab.models.gguf_header import _STRING, _Array, read_gguf_header

if TYPE_CHECKING:  # transformers is imported lazily: `import saelab.models.shapes` stays light
    from transformers import PretrainedConfig

FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
)
_GATED = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"})
_LAYERNORM = frozenset({"gpt2", "gpt_neox"})  # LayerNorm with bias (2*d); others RMSNorm (d)
_QK_NORM = frozenset({"qwen3", "gemma3"})
_SANDWICH_NORMS = frozenset({"gemma2", "gemma3"})  # extra post-attention/post-MLP norms
# Default (qkv, attention output, MLP) biases of each family, used when a shape does not say.
_DEFAULT_BIAS: dict[str, tuple[bool, bool, bool]] = {
    "qwen2": (True, False, False),
    "gpt2": (True, True, True),
    "gpt_neox": (True, True, True),
}
# HF model_type -> family: text parts of multimodal configs share their family's modules.
_MODEL_TYPES = {f: f for f in FAMILIES} | {"gemma3_text": "gemma3"}
# GGUF general.architecture -> family. llama.cpp writes Mistral models as "llama".
_GGUF_ARCH = {
    "llama": "llama",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
    "gptneox": "gpt_neox",
}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "qint8": "int8",
}


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of a decoder-only transformer, enough to size it exactly.

    `qkv_bias`, `out_bias` and `mlp_bias` default to the family's usual layout (qwen2: q/k/v
    bias; gpt2 and gpt_neox: every linear has a bias; the rest: none) and are resolved to a bool
    on construction; they exist because some configs switch them (`attention_bias`).
    """

    name: str
    family: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int
    tied_embeddings: bool
    gated_mlp: bool
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    mlp_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise SaelabError(
                f"model family {self.family!r} is not supported; use one of: " + ", ".join(FAMILIES)
            )
        for f in (
            "n_layers",
            "d_model",
            "d_mlp",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "vocab_size",
            "max_position",
        ):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SaelabError(f"model shape {self.name!r}: {f}={v!r} must be a positive int")
        defaults = _DEFAULT_BIAS.get(self.family, (False, False, False))
        for f, d in zip(("qkv_bias", "out_bias", "mlp_bias"), defaults, strict=True):
            if getattr(self, f) is None:
                object.__setattr__(self, f, d)

    # -- parameter bookkeeping -------------------------------------------------------------

    def _linears(self) -> list[tuple[int, int, bool]]:
        """(in, out, has_bias) of every linear map in one layer (gpt2's fused c_attn counts
        the same as separate q/k/v)."""
        d, hd = self.d_model, self.head_dim
        qkv = bool(self.qkv_bias)
        out = [
            (d, self.n_heads * hd, qkv),
            (d, self.n_kv_heads * hd, qkv),
            (d, self.n_kv_heads * hd, qkv),
            (self.n_heads * hd, d, bool(self.out_bias)),
        ]
        mb = bool(self.mlp_bias)
        if self.gated_mlp:
            out += [(d, self.d_mlp, mb), (d, self.d_mlp, mb), (self.d_mlp, d, mb)]
        else:
            out += [(d, self.d_mlp, mb), (self.d_mlp, d, mb)]
        return out

    def _norm_size(self) -> int:
        return 2 * self.d_model if self.family in _LAYERNORM else self.d_model

    def _layer_norm_params(self) -> int:
        """Norm parameters of one layer: two norms, four for Gemma, plus q/k norms."""
        n = (4 if self.family in _SANDWICH_NORMS else 2) * self._norm_size()
        return n + (2 * self.head_dim if self.family in _QK_NORM else 0)

    def embedding_params(self) -> int:
        """Token embeddings, plus gpt2's learned position embeddings."""
        pos = self.max_position * self.d_model if self.family == "gpt2" else 0
        return self.vocab_size * self.d_model + pos

    def head_params(self) -> int:
        """Final norm plus the lm_head when it is not tied to the embeddings."""
        return self._norm_size() + (0 if self.tied_embeddings else self.vocab_size * self.d_model)

    def layer_params(self) -> int:
        """Parameters of one decoder layer (all layers of these families are identical)."""
        lin = sum(i * o + (o if b else 0) for i, o, b in self._linears())
        return lin + self._layer_norm_params()

    @property
    def n_params(self) -> int:
        """Exact parameter count, as `sum(p.numel() for p in model.parameters())`."""
        return self.embedding_params() + self.n_layers * self.layer_params() + self.head_params()

    def _check_layers(self, n_layers: int | None) -> int:
        if n_layers is None:
            return self.n_layers
        if not 0 <= n_layers <= self.n_layers:
            raise SaelabError(
                f"n_layers={n_layers} is out of range for {self.name or self.family} "
                f"({self.n_layers} layers); pass 0..{self.n_layers} or None for the full model"
            )
        return n_layers

    def weight_bytes(self, dtype: str, n_layers: int | None = None) -> int:
        """Bytes of weights needed to run the first `n_layers` layers.

        A truncated run (extraction stops at the deepest hooked layer) needs the embeddings and
        those layers only; the final norm and lm_head count only for the full model
        (`n_layers=None`). `int8` is saelab's weight-only int8 on CPU (`models.int8`): linear
        weights take 1 byte plus one float32 scale per output row; biases, norms, embeddings
        and the output head stay float32 (a tied head is the embedding table itself).
        """
        dt = dtype.lower().removeprefix("torch.")
        dt = _DTYPE_ALIASES.get(dt, dt)
        n = self._check_layers(n_layers)
        full = n_layers is None
        if dt in _DTYPE_BYTES:
            params = self.embedding_params() + n * self.layer_params()
            if full:
                params += self.head_params()
            return _DTYPE_BYTES[dt] * params
        if dt != "int8":
            raise SaelabError(
                f"dtype {dtype!r} is not supported; use float32, float16, bfloat16 or int8"
            )
        layer = self._layer_norm_params() * 4
        for i, o, b in self._linears():
            layer += i * o + 4 * o + (4 * o if b else 0)
        total = 4 * self.embedding_params() + n * layer
        if full:
            total += 4 * self.head_params()
        return total

    def linear_params(self, n_layers: int | None = None) -> int:
        """Weights (no biases) of the first `n_layers` layers' linear maps: what a weight
        quantiser (saelab's int8, bitsandbytes int8/nf4) shrinks; the head is left alone."""
        n = self._check_layers(n_layers)
        return n * sum(i * o for i, o, _ in self._linears())

    def linear_rows(self, n_layers: int | None = None) -> int:
        """Output rows of those linear maps (one quantisation scale each)."""
        n = self._check_layers(n_layers)
        return n * sum(o for _, o, _ in self._linears())

    def flops_per_token(
        self, seq_len: int, n_layers: int | None = None, lm_head: bool = False
    ) -> float:
        """Forward FLOPs per token over a causal sequence of `seq_len` tokens.

        2 FLOPs per weight of every linear map (embedding lookups are free) plus attention:
        QK^T and AV cost 4 * ctx * n_heads * head_dim per layer, with ctx the causal average
        context (seq_len + 1) / 2. Sliding-window layers are counted as full attention (an
        upper bound). Biases and norms are ignored (< 0.1%).
        """
        if seq_len <= 0:
            raise SaelabError(f"seq_len={seq_len} must be positive")
        n = self._check_layers(n_layers)
        matmul = sum(i * o for i, o, _ in self._linears())
        attn = 4.0 * (seq_len + 1) / 2 * self.n_heads * self.head_dim
        total = n * (2.0 * matmul + attn)
        if lm_head:
            total += 2.0 * self.vocab_size * self.d_model
        return total

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for plans and manifests); `from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelShape:
        """Rebuild from `to_dict` output; unknown keys (e.g. a stored n_params) are ignored."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is not None}
        missing = sorted(required - set(d))
        if missing:
            raise SaelabError(
                f"model shape is missing {', '.join(missing)}; write it with ModelShape.to_dict"
            )
        return cls(**{k: v for k, v in d.items() if k in names})


def _family(model_type: str) -> str:
    fam = _MODEL_TYPES.get(model_type)
    if fam is None:
        raise SaelabError(
            f"model_type {model_type!r} is not supported; supported families: "
            + ", ".join(FAMILIES)
        )
    return fam


def shape_from_config(config: Mapping[str, Any] | PretrainedConfig, name: str = "") -> ModelShape:
    """Shape from an HF `config.json` dict or a `transformers` config object.

    A dict is turned into its `transformers` config class first, so the class defaults fill
    what config.json leaves out (Gemma 3's `text_config` omits heads and vocab, for example).
    Multimodal configs contribute their text part.
    """
    if isinstance(config, Mapping):
        d = dict(config)
        mt = d.get("model_type") or (d.get("text_config") or {}).get("model_type")
        if not mt:
            raise SaelabError(
                "config has no model_type; pass a Hugging Face config.json of a causal LM"
            )
        _family(mt)  # refuse unsupported types before importing transformers
        from transformers import AutoConfig

        d.pop("model_type", None)
        cfg = AutoConfig.for_model(mt, **d)
    else:
        cfg = config
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    fam = _family(getattr(text, "model_type", "") or getattr(cfg, "model_type", ""))
    d_model = int(text.hidden_size)
    n_heads = int(text.num_attention_heads)
    kv = getattr(text, "num_key_value_heads", None)
    hd = getattr(text, "head_dim", None)
    if fam == "gpt2":
        d_mlp = getattr(text, "n_inner", None) or 4 * d_model
    else:
        d_mlp = int(text.intermediate_size)
    attn_bias = bool(getattr(text, "attention_bias", False))
    bias: dict[str, bool] = {}
    if fam in ("llama", "qwen3", "gemma2", "gemma3", "gpt_neox"):
        bias = {"qkv_bias": attn_bias, "out_bias": attn_bias}
    if fam == "llama":
        bias["mlp_bias"] = bool(getattr(text, "mlp_bias", False))
    tied = getattr(cfg, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(text, "tie_word_embeddings", False)
    return ModelShape(
        name=name or str(getattr(cfg, "_name_or_path", "") or ""),
        family=fam,
        n_layers=int(text.num_hidden_layers),
        d_model=d_model,
        d_mlp=int(d_mlp),
        n_heads=n_heads,
        n_kv_heads=int(kv) if kv else n_heads,
        head_dim=int(hd) if hd else d_model // n_heads,
        vocab_size=int(text.vocab_size),
        max_position=int(text.max_position_embeddings),
        tied_embeddings=bool(tied),
        gated_mlp=fam in _GATED,
        **bias,
    )


def shape_from_safetensors_folder(folder: str | Path) -> ModelShape:
    """Shape of a local HF model folder, from its config.json (weights are not opened)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise SaelabError(f"{folder} has no config.json; pass a Hugging Face model folder")
    return shape_from_config(json.loads(path.read_text()), name=Path(folder).name)


def shape_from_gguf(path: str | Path, name: str | None = None) -> ModelShape:
    """Shape of a GGUF model from its header (general.architecture and `{arch}.*` keys).

    The vocabulary is the token embedding's row count (what sizes the weights; llama.cpp pads
    the token list to it), embeddings are tied when there is no `output.weight`, and biases
    are read off layer 0's tensor names.
    """
    p = Path(path)
    meta, tensors = read_gguf_header(p)
    arch = meta.get("general.architecture", "")
    fam = _GGUF_ARCH.get(arch)
    if fam is None:
        raise SaelabError(
            f"{p.name}: GGUF architecture {arch!r} is not supported; supported: "
            + ", ".join(sorted(_GGUF_ARCH))
        )

    def key(k: str, default: int | None = None) -> int:
        v = meta.get(f"{arch}.{k}", default)
        if v is None or isinstance(v, _Array):
            raise SaelabError(
                f"{p.name}: GGUF key {arch}.{k} is missing or per-layer; this file's layout "
                "is not supported, use the model's Hugging Face folder instead"
            )
        return int(v)

    d_model, n_heads = key("embedding_length"), key("attention.head_count")
    if "token_embd.weight" in tensors:
        vocab = int(tensors["token_embd.weight"][-1])
    elif f"{arch}.vocab_size" in meta:
        vocab = key("vocab_size")
    else:
        vocab = meta.get("tokenizer.ggml.tokens", _Array(_STRING, 0)).count
    qkv_bias = "blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors
    return ModelShape(
        name=p.name if name is None else name,
        family=fam,
        n_layers=key("block_count"),
        d_model=d_model,
        d_mlp=key("feed_forward_length"),
        n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads),
        head_dim=key("attention.key_length", d_model // n_heads),
        vocab_size=vocab,
        max_position=key("context_length"),
        tied_embeddings="output.weight" not in tensors,
        gated_mlp=fam in _GATED,
        qkv_bias=qkv_bias,
        out_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors or "blk.0.ffn_down.bias" in tensors,
    )
