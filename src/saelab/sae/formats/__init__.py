"""One loader for every pretrained SAE format, from local files.

    from saelab.sae.formats import load_local
    sae = load_local("gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_68")

`detect` says which format a local folder or file is in, `candidates` which formats a path
inside a Hub repository may be in (so a downloader fetches only the files that format needs:
`required` first, `optional` when present), and `load_local` detects and loads. Every loader
returns a `saelab.sae.SAE` that takes raw activations at its hook (dataset-norm scalings and
decoder-norm factors folded in exactly), with `cfg.metadata` holding `format`, the canonical
`hook_name` where it can be known (`blocks.7.hook_resid_post`; TL names such as `attn.hook_z`
for sites saelab does not capture), `hook_name_out` for transcoders, `hf_hook_name` where the
release names an HF module, and `model_name` where known. Formulas and layouts per family are
in each module's docstring (facts from reference/formats.md).

A format is one module here that registers its `FormatSpec` (files, how it is told apart,
loader) with `registry.register`; this package imports every module it holds.
"""

from __future__ import annotations

import importlib
import pkgutil

from saelab.sae.formats.detect import candidates, detect, folder_of, load_local
from saelab.sae.formats.registry import FormatSpec, formats

_GENERIC = {"common", "detect", "registry"}
for _module in pkgutil.iter_modules(__path__):  # each format module registers itself
    if _module.name not in _GENERIC:
        importlib.import_module(f"{__name__}.{_module.name}")

#: In detection priority order: folder layouts first (most specific file pairs first).
FORMATS: tuple[FormatSpec, ...] = formats()

__all__ = ["FORMATS", "FormatSpec", "candidates", "detect", "folder_of", "load_local"]
