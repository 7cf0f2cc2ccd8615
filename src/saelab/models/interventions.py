"""Replacing activations at hook points during any forward pass, generation included.

Capture (`capture.py`) reads tensors; an intervention writes them. `replace_activations`
registers, for the duration of a `with` block, one hook per (module, input/output) that
replaces the tensor at each hook point by `fn(tensor)`:

* output sites (resid_post, attn_out, mlp_out): a forward hook returns the module's output
  with the tensor swapped (element `index` of a tuple output; the other elements are kept);
* input sites (resid_pre, and resid_mid for most families): a forward pre-hook returns the
  module's (args, kwargs) with the hidden states swapped, whether they came positionally or
  as a keyword.

The same adapter sites as capture are used, so an edit at `resid_post.5` changes exactly the
tensor that capture reads as `resid_post.5`, and the edited value is what flows on into the
rest of the model. Because the hooks sit on the native modules, they work unchanged inside
`model.generate`: with a KV cache every step after the first sees only the new positions, so
`fn` receives (B, n_new, d). Edits that must target particular positions (the last prompt
token, generated tokens) are the caller's `fn`'s job; this module only places them.

Order: edits run in forward-pass order, and several edits on the same (module, io) compose in
hook-point order. A `HookCapture` registered before this context sees the original value at
a shared site, one registered inside it sees the edited value (PyTorch runs hooks in
registration order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.adapters import Adapter, Site
from saelab.models.hooks import HookPoint

Edit = Callable[[torch.Tensor], torch.Tensor]
_Item = tuple[HookPoint, Site, Edit]


def _apply(hook: HookPoint, fn: Edit, x: torch.Tensor) -> torch.Tensor:
    """Run one edit and check it kept the shape; dtype/device are restored for the caller.

    An SAE often runs in float32 beside a bfloat16 model (or on another device); casting the
    result back here saves every caller from doing it, while a wrong shape is a bug in the
    edit and is reported with the hook's name.
    """
    new = fn(x)
    if not isinstance(new, torch.Tensor):
        raise SaelabError(
            f"the edit at {hook.name} returned {type(new).__name__}, not a tensor: it must"
            f" return a tensor of shape {tuple(x.shape)}"
        )
    if new.shape != x.shape:
        raise SaelabError(
            f"the edit at {hook.name} returned shape {tuple(new.shape)} for an activation of"
            f" shape {tuple(x.shape)}: an edit must keep the shape"
        )
    if new.dtype != x.dtype or new.device != x.device:
        new = new.to(device=x.device, dtype=x.dtype)
    return new


def _pre_hook(items: list[_Item]) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def hook(
        mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        site = items[0][1]  # one (module, input, index) per group; see _plan
        i = site.index or 0
        if len(args) > i and isinstance(args[i], torch.Tensor):
            x = args[i]
            for hp, _, fn in items:
                x = _apply(hp, fn, x)
            return (*args[:i], x, *args[i + 1 :]), kwargs
        if i:
            raise SaelabError(
                f"{site.module} got {len(args)} positional input(s); hook_input_{i} names one"
                " it does not have"
            )
        name = _tensor_kwarg(kwargs)
        if name is None:
            raise RuntimeError(f"no tensor input reaches {items[0][1].module}")
        x = kwargs[name]
        for hp, _, fn in items:
            x = _apply(hp, fn, x)
        return args, {**kwargs, name: x}

    return hook


def _tensor_kwarg(kwargs: dict[str, Any]) -> str | None:
    """The keyword carrying the hidden states: `hidden_states`, else the first tensor
    (norm modules name it `input` or `x`); mirrors `Site.read_input`."""
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return "hidden_states"
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return k
    return None


def _post_hook(items: list[_Item]) -> Callable[..., Any]:
    def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, (tuple, list)):
            out = list(output)
            for hp, site, fn in items:
                i = site.index or 0
                out[i] = _apply(hp, fn, out[i])
            return type(output)(out) if isinstance(output, list) else tuple(out)
        for hp, _, fn in items:
            output = _apply(hp, fn, output)
        return output

    return hook


def _plan(
    model: torch.nn.Module, adapter: Adapter, edits: Mapping[HookPoint, Edit]
) -> dict[tuple[str, str], list[_Item]]:
    """Resolve every hook point to its module before any hook is registered, so a bad hook
    point raises without leaving half the hooks behind."""
    layers = adapter.layers_path(model)
    n_layers = len(model.get_submodule(layers))  # type: ignore[arg-type]
    groups: dict[tuple[str, str], list[_Item]] = {}
    for hook in sorted(edits, key=lambda h: h.order):
        if hook.site == "pattern":
            raise SaelabError(
                f"hook {hook.name}: attention patterns can be read but not replaced (the"
                " attention module has already used them when its output appears); edit"
                " attn_out or resid_* instead"
            )
        if not hook.is_module and not 0 <= hook.layer < n_layers:
            raise SaelabError(
                f"hook {hook.name}: layer {hook.layer} is past the model's depth ({n_layers}"
                f" layers, numbered 0-{n_layers - 1}); pick a layer in that range"
            )
        site = adapter.site(hook, layers)  # raises SaelabError for sites a family lacks
        try:
            model.get_submodule(site.module)
        except AttributeError as e:
            if hook.is_module:
                raise SaelabError(
                    f"hook {hook.name}: this model has no module {hook.module}; check the path"
                    " against the model's named_modules()"
                ) from e
            raise SaelabError(
                f"hook {hook.name}: module {site.module} is missing from this {adapter.family}"
                " model; it may be a variant saelab does not support yet: please report it"
            ) from e
        key = (site.module, site.io if site.io == "output" else f"input{site.index or 0}")
        groups.setdefault(key, []).append((hook, site, edits[hook]))
    return groups


@contextmanager
def replace_activations(
    model: torch.nn.Module, adapter: Adapter, edits: Mapping[HookPoint, Edit]
) -> Iterator[None]:
    """While active, every forward pass replaces the tensor at each hook point by `fn(x)`.

    `fn` gets the activation as the model holds it ((B, T, d) for a full pass, (B, n_new, d)
    for a cached generation step) and must return the same shape; dtype and device are cast
    back to the activation's. Hooks are removed on exit, also when the block raises.
    Raises SaelabError for a hook point the model does not have.
    """
    groups = _plan(model, adapter, edits)
    handles: list[Any] = []
    try:
        for (module, io), items in groups.items():
            mod = model.get_submodule(module)
            if io.startswith("input"):
                handles.append(mod.register_forward_pre_hook(_pre_hook(items), with_kwargs=True))
            else:
                handles.append(mod.register_forward_hook(_post_hook(items)))
        yield
    finally:
        for h in handles:
            h.remove()
