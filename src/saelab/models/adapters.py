"""Per-architecture adapters: where each hook point lives inside a Hugging Face model.

saelab never re-implements a transformer; it reads (and later edits) the native HF modules.
An adapter maps a `HookPoint` to a `Site` (a module path, whether to read the module's input
or output, and which element of a tuple output), so that the residual identities hold for
every family:

* Llama, Mistral, Qwen 2/3 (pre-norm): resid_mid = resid_pre + attn_out and
  resid_post = resid_mid + mlp_out, with attn_out the attention module's output and mlp_out
  the MLP's output.
* Gemma 2/3 add a norm after attention and after the MLP (`post_attention_layernorm`,
  `post_feedforward_layernorm`) before each is added to the residual. attn_out and mlp_out are
  read *after* those norms (what actually enters the residual stream, as TransformerLens and
  Gemma Scope define them), so the same identities hold. resid_mid is the input of
  `pre_feedforward_layernorm`.
* GPT-2: the same identities with LayerNorm blocks (`ln_2` input is resid_mid).
* GPT-NeoX with parallel residual (Pythia's default): resid_post = resid_pre + attn_out +
  mlp_out; there is no resid_mid, and asking for it is an error. With sequential residual
  resid_mid is the input of `post_attention_layernorm`.

resid_post of the last layer is the block's output, *before* the model's final norm (HF's
`hidden_states[-1]` has the norm applied).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint

IO = Literal["input", "output"]


@dataclass(frozen=True)
class Site:
    """Where a hook point is read: a module, its input or output, and a tuple index."""

    module: str
    io: IO
    index: int | None = None

    def read_output(self, output: Any) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            return output[self.index or 0]
        return output

    def read_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        if self.index is not None:  # a module-path hook point naming a positional argument
            if self.index >= len(args):
                raise SaelabError(
                    f"{self.module} got {len(args)} positional input(s); hook_input_{self.index}"
                    " names one it does not have"
                )
            return args[self.index]
        if args:
            return args[0]
        if "hidden_states" in kwargs:
            return kwargs["hidden_states"]
        # First tensor argument, whatever its name (e.g. `input` for norm modules).
        for v in kwargs.values():
            if isinstance(v, torch.Tensor):
                return v
        raise RuntimeError(f"no tensor input reaches {self.module}")


@dataclass(frozen=True)
class Adapter:
    """Module names of one architecture family."""

    family: str
    layers: tuple[str, ...]  # candidate paths of the block list, first that exists wins
    attn: str
    mlp: str
    resid_mid: tuple[str, IO] | None  # module whose input/output is resid_mid, None = undefined
    attn_out: tuple[str, IO]
    mlp_out: tuple[str, IO]
    final_norm: tuple[str, ...]
    note: str = ""
    module_prefix: str = ""  # where module paths of hook points live inside the run module

    def layers_path(self, model: torch.nn.Module) -> str:
        for path in self.layers:
            try:
                model.get_submodule(path)
                return path
            except AttributeError:
                continue
        raise SaelabError(
            f"model of family {self.family} has none of the block lists {', '.join(self.layers)};"
            " it may be a variant saelab does not support yet: please report it"
        )

    def site(self, hook: HookPoint, layers_path: str) -> Site:
        if hook.module is not None:  # any module, read by path
            return Site(self.module_prefix + hook.module, hook.io, hook.index)  # type: ignore[arg-type]
        base = f"{layers_path}.{hook.layer}"
        if hook.site == "resid_pre":
            return Site(base, "input")
        if hook.site == "resid_post":
            return Site(base, "output", 0)
        if hook.site == "pattern":
            return Site(f"{base}.{self.attn}", "output", 1)
        if hook.site == "resid_mid":
            if self.resid_mid is None:
                raise SaelabError(
                    f"hook {hook.name}: {self.family} blocks have no resid_mid ({self.note});"
                    " use resid_pre, attn_out, mlp_out or resid_post"
                )
            return Site(f"{base}.{self.resid_mid[0]}", self.resid_mid[1], 0)
        if hook.site == "attn_out":
            mod, io = self.attn_out
            return Site(f"{base}.{mod}", io, 0)
        if hook.site == "mlp_out":
            mod, io = self.mlp_out
            return Site(f"{base}.{mod}", io, 0)
        raise SaelabError(f"hook site {hook.site!r} is not supported")

    def hook_for_module_path(self, path: str) -> HookPoint | None:
        """Map an HF module path (model.layers.12, model.layers.12.mlp, ...) to a hook point."""
        for layers in self.layers:
            m = re.fullmatch(re.escape(layers) + r"\.(\d+)(?:\.(\w+))?", path)
            if not m:
                continue
            layer, sub = int(m.group(1)), m.group(2)
            if sub is None:
                return HookPoint(layer, "resid_post")
            if sub == self.attn or sub == self.attn_out[0]:
                return HookPoint(layer, "attn_out")
            if sub == self.mlp or sub == self.mlp_out[0]:
                return HookPoint(layer, "mlp_out")
            if self.resid_mid is not None and sub == self.resid_mid[0]:
                return HookPoint(layer, "resid_mid")
        return None


_LLAMA_LIKE = dict(
    layers=("model.layers", "model.language_model.layers", "language_model.model.layers"),
    attn="self_attn",
    mlp="mlp",
    resid_mid=("post_attention_layernorm", "input"),
    attn_out=("self_attn", "output"),
    mlp_out=("mlp", "output"),
    final_norm=("model.norm", "model.language_model.norm"),
)
_GEMMA = dict(
    _LLAMA_LIKE,
    resid_mid=("pre_feedforward_layernorm", "input"),
    attn_out=("post_attention_layernorm", "output"),
    mlp_out=("post_feedforward_layernorm", "output"),
    note="attn_out and mlp_out are read after Gemma's post-attention/post-MLP norms",
)

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama", **_LLAMA_LIKE),
    "mistral": Adapter("mistral", **_LLAMA_LIKE),
    "qwen2": Adapter("qwen2", **_LLAMA_LIKE),
    "qwen3": Adapter("qwen3", **_LLAMA_LIKE),
    "gemma2": Adapter("gemma2", **_GEMMA),
    "gemma3": Adapter("gemma3", **_GEMMA),
    "gpt2": Adapter(
        "gpt2",
        layers=("transformer.h",),
        attn="attn",
        mlp="mlp",
        resid_mid=("ln_2", "input"),
        attn_out=("attn", "output"),
        mlp_out=("mlp", "output"),
        final_norm=("transformer.ln_f",),
    ),
    "gpt_neox": Adapter(
        "gpt_neox",
        layers=("gpt_neox.layers",),
        attn="attention",
        mlp="mlp",
        resid_mid=("post_attention_layernorm", "input"),
        attn_out=("attention", "output"),
        mlp_out=("mlp", "output"),
        final_norm=("gpt_neox.final_layer_norm",),
    ),
    "gpt_neox_parallel": Adapter(
        "gpt_neox",
        layers=("gpt_neox.layers",),
        attn="attention",
        mlp="mlp",
        resid_mid=None,
        attn_out=("attention", "output"),
        mlp_out=("mlp", "output"),
        final_norm=("gpt_neox.final_layer_norm",),
        note="parallel residual: resid_post = resid_pre + attn_out + mlp_out",
    ),
}

#: HF model_type -> adapter key
_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
}


def supported_families() -> list[str]:
    return sorted(set(_MODEL_TYPES))


def adapter_for(config: Any) -> Adapter:
    """Pick the adapter from a transformers config (or a config dict)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    model_type = get("model_type", None)
    if model_type not in _MODEL_TYPES:
        raise SaelabError(
            f"architecture {model_type!r} is not supported yet; supported: "
            + ", ".join(supported_families())
        )
    key = _MODEL_TYPES[model_type]
    if key == "gpt_neox" and get("use_parallel_residual", True):
        key = "gpt_neox_parallel"
    return ADAPTERS[key]
