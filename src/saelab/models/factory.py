"""`module:package.module:factory` model specs: a user's own PyTorch model by import path.

A factory is any callable taking no arguments that returns one of:

* a `torch.nn.Module` (wrapped with `wrap`'s defaults),
* `(module, tokenizer)`,
* a dict of `wrap` arguments (`{"module": m, "tokenizer": t, "layers": "blocks", ...}`),
* a `LoadedModel` (the factory called `saelab.models.wrap` itself).

So `saelab extract --model module:mypkg.models:build` runs the user's model in every stage.
The module is imported as Python would: from the installed packages, else (like `python -m`)
from the current folder.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.custom import retarget, wrap
from saelab.models.loaded import LoadedModel, ModelSource

SCHEME = "module:"
_FORM = "write it as module:package.module:factory (a function returning the model)"


def is_module_spec(spec: str) -> bool:
    return spec.startswith(SCHEME)


def module_source(spec: str) -> ModelSource:
    """Check the form of a `module:` spec without importing anything."""
    target = spec[len(SCHEME) :].strip()
    mod, _, fn = target.partition(":")
    if not mod or not fn or not all(p.isidentifier() for p in [*mod.split("."), *fn.split(".")]):
        raise SaelabError(f"model {spec!r} is not a module spec: {_FORM}")
    return ModelSource("module", target, SCHEME + target)  # the name reloads it from a run


def _import(name: str, spec: str) -> Any:
    cwd = os.getcwd()
    searched = cwd in sys.path or "" in sys.path
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        ours = e.name is not None and name.split(".")[0] == e.name.split(".")[0]
        if not ours or searched:
            raise SaelabError(
                f"model {spec}: importing {name} failed ({e}); install it or run from the"
                " folder that holds it"
            ) from e
    sys.path.insert(0, cwd)  # as `python -m` would have it (and keeps: lazy imports need it)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise SaelabError(
            f"model {spec}: no module {name} here or in the installed packages ({e}); install"
            " it or run from the folder that holds it"
        ) from e


def call_factory(source: ModelSource) -> Any:
    """Import the module and call the factory; what it returns, unchecked."""
    mod_name, _, fn_name = source.location.partition(":")
    spec = SCHEME + source.location
    obj: Any = _import(mod_name, spec)
    for part in fn_name.split("."):
        if not hasattr(obj, part):
            raise SaelabError(f"model {spec}: {mod_name} has no {fn_name}; check the name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SaelabError(f"model {spec}: {fn_name} is not callable; point at a factory function")
    try:
        inspect.signature(obj).bind()
    except TypeError as e:
        raise SaelabError(
            f"model {spec}: {fn_name} needs arguments ({e}); point at a function that takes"
            " none (wrap yours in one)"
        ) from e
    except ValueError:
        pass  # no signature to check (a builtin): just call it
    return obj()


def load_module_model(source: ModelSource, dtype: str, device: torch.device) -> LoadedModel:
    """Build the model from its factory and wrap it (see the module docstring)."""
    if dtype == "nf4" or (dtype == "int8" and device.type != "cpu"):
        raise SaelabError(
            f"`dtype` {dtype} is for Hugging Face models; a custom module runs in float32,"
            " float16, bfloat16 or (on cpu) int8"
        )
    made = call_factory(source)
    spec = SCHEME + source.location
    if isinstance(made, LoadedModel):
        made.source = source
        return retarget(made, dtype, device)
    kwargs: dict[str, Any]
    if isinstance(made, torch.nn.Module):
        kwargs = {"module": made}
    elif isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        kwargs = {"module": made[0], "tokenizer": made[1]}
    elif isinstance(made, Mapping) and isinstance(made.get("module"), torch.nn.Module):
        kwargs = dict(made)
    else:
        raise SaelabError(
            f"model {spec}: the factory returned {type(made).__name__}; return a torch module,"
            " (module, tokenizer), a dict of wrap() arguments, or saelab.models.wrap(...)"
        )
    kwargs.setdefault("name", source.name)
    return wrap(**kwargs, dtype=dtype, device=device, source=source)
