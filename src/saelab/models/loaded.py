"""What a loaded model is, whoever loaded it: `LoadedModel`, its source, dtypes and devices.

Split out of `loading` so that both ways of getting a model share one type without importing
each other: `loading` reads Hugging Face folders, hub ids and GGUF files, `custom` wraps any
`torch.nn.Module` (and `loading` hands `module:` specs to it). Everything downstream (capture,
the activation store, training, encode, patching) sees only a `LoadedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.adapters import Adapter
from saelab.models.hooks import MODULE_SITE, HookPoint

#: Model compute dtypes. int8: weight-only int8 on CPU, bitsandbytes on CUDA; nf4: 4-bit
#: bitsandbytes weights (CUDA only).
DTYPES = ("float32", "float16", "bfloat16", "int8", "nf4")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model spec: what kind of thing it is and where it lies."""

    kind: str  # "gguf" | "folder" | "hub" | "module" (a user's torch module)
    location: str  # file path, folder path, hub id, or "package.module:factory"
    name: str  # display / metadata name (e.g. the hub id the weights come from)


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SaelabError(f"`device` {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SaelabError(
            "`device` cuda: no CUDA GPU is visible here; use `device` cpu or auto (to plan for"
            " a GPU machine from this one, plan with `target` t4, l4, a100-40g, gpu:24GB, ...)"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SaelabError("`device` mps: Apple MPS is not available here; use `device` cpu")
    return torch.device(device)


def torch_dtype(dtype: str) -> torch.dtype:
    """The dtype activations run in (int8 keeps float32 activations; nf4 computes in float16)."""
    if dtype not in DTYPES:
        raise SaelabError(f"`dtype` {dtype!r} is not one of {', '.join(DTYPES)}")
    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "nf4": torch.float16,
    }.get(dtype, torch.float32)


@dataclass
class LoadedModel:
    """A model ready for capture: the module, its tokenizer and its adapter.

    For Hugging Face models `model` is the HF module. For a wrapped `torch.nn.Module`
    (`saelab.models.wrap`), `model` runs the user's module with saelab's calling convention
    and holds it as `model.module`; module paths in hook points stay relative to the user's
    module (`encoder.layers.8`), the adapter adds the prefix.
    """

    model: torch.nn.Module
    tokenizer: Any
    adapter: Adapter
    name: str
    source: ModelSource
    dtype: str
    device: torch.device
    n_layers: int
    d_model: int

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def kv_cache(self) -> bool:
        """Whether the model keeps a KV cache between generation steps (HF models do)."""
        return bool(getattr(self.model, "supports_kv_cache", True))

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0

    def hook_for_module_path(self, path: str) -> HookPoint | None:
        """A module path typed by a user: a block or block part the adapter knows becomes
        its canonical hook point (model.layers.12 -> resid_post.12); any other module of
        this model is read by path (its output)."""
        hp = self.adapter.hook_for_module_path(path)
        if hp is not None:
            return hp
        try:
            self.model.get_submodule(self.adapter.module_prefix + path)
        except AttributeError:
            return None
        return HookPoint.at_module(path)

    def check_hooks(self, hooks: list[HookPoint]) -> None:
        """Refuse module-path hook points naming modules this model does not have."""
        for h in hooks:
            if h.site != MODULE_SITE:
                continue
            try:
                self.model.get_submodule(self.adapter.module_prefix + str(h.module))
            except AttributeError as e:
                raise SaelabError(
                    f"hook {h.name}: this model has no module {h.module}; check the path"
                    " against the model's named_modules()"
                ) from e

    def use_eager_attention(self) -> None:
        """Attention weights are only returned by the eager kernel; switch when asked for."""
        cfg = self.config
        if cfg is not None and getattr(cfg, "_attn_implementation", "eager") != "eager":
            self.model.set_attn_implementation("eager")
