"""Models: load any spec, name hook points, capture activations.

Usable on its own from a notebook::

    from saelab.models import load_model, parse_hooks, capture_prompts
    lm = load_model("default")

Any `torch.nn.Module` becomes the same kind of model with `wrap(module, tokenizer,
layers="encoder.layers")`, or from a spec with `load_model("module:package.module:factory")`.
"""

from saelab.models.adapters import ADAPTERS, Adapter, Site, adapter_for, supported_families
from saelab.models.capture import (
    POSITIONS,
    Batch,
    HookCapture,
    capture_prompts,
    length_sorted_batches,
    make_batch,
)
from saelab.models.custom import ModuleAdapter, hook_widths, wrap
from saelab.models.hooks import SITES, HookPoint, parse_hook, parse_hooks
from saelab.models.loading import (
    DTYPES,
    LoadedModel,
    ModelSource,
    cache_dir,
    load_model,
    resolve_device,
    resolve_spec,
)
from saelab.models.tokens import TokenizedPrompts, tokenize_prompts

__all__ = [
    "ADAPTERS",
    "DTYPES",
    "POSITIONS",
    "SITES",
    "Adapter",
    "Batch",
    "HookCapture",
    "HookPoint",
    "LoadedModel",
    "ModelSource",
    "ModuleAdapter",
    "Site",
    "TokenizedPrompts",
    "adapter_for",
    "cache_dir",
    "capture_prompts",
    "hook_widths",
    "length_sorted_batches",
    "load_model",
    "make_batch",
    "parse_hook",
    "parse_hooks",
    "resolve_device",
    "resolve_spec",
    "supported_families",
    "tokenize_prompts",
    "wrap",
]
