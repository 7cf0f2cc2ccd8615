"""Any `torch.nn.Module` as a saelab model: `wrap(module, tokenizer, layers=...)`.

    from saelab.models import wrap
    lm = wrap(my_model, tokenizer=vocab, layers="encoder.layers")
    hooks = parse_hooks("encoder.layers.8, resid_post.3, encoder.layers.2.ff", lm.n_layers,
                        lm.hook_for_module_path)

The result is the same `LoadedModel` a Hugging Face model gives, so capture, the activation
store, SAE training, encode, contrast and patching all work on it. Hook points:

* a block of the layer stack by canonical name: `blocks.8.hook_resid_post` (or
  `resid_post.8`, or the path `encoder.layers.8`) is the output of `layers[8]` (element 0 of
  a tuple), `resid_pre.8` its input; `attn_out`, `mlp_out` and `resid_mid` exist when
  `sites=` names the block's submodule for them (`{"mlp_out": "ff"}`);
* any module by path: `encoder.layers.8.ff` (its output), or explicitly
  `encoder.layers.8.ff.hook_output`, `...hook_output_1` (tuple element 1), `...hook_input`.

Calling convention: saelab runs batches of padded token ids. `collate(input_ids,
attention_mask)` turns one into what the module's forward takes: a tensor (one positional
argument), a tuple (positional arguments), a dict (keyword arguments) or `(args, kwargs)`.
Without a collate the ids go in positionally, plus `attention_mask=` and `position_ids=` when
forward has parameters of those names. The ids need not be text tokens: they can index rows of
your own tensors, which your collate looks up. Rows may be left padded (patching does that);
the mask says where each row's tokens are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.adapters import IO, Adapter, Site
from saelab.models.capture import HookCapture, make_batch
from saelab.models.hooks import HookPoint
from saelab.models.int8 import quantize_int8
from saelab.models.loaded import LoadedModel, ModelSource, torch_dtype
from saelab.models.simple_tokenizer import as_tokenizer

Collate = Callable[[torch.Tensor, torch.Tensor], Any]
PREFIX = "module."  # where the user's module sits inside the ModuleLM that runs it
_BLOCK_SITES = ("attn_out", "mlp_out", "resid_mid", "pattern")


@dataclass(frozen=True)
class ModuleAdapter(Adapter):
    """Hook points of a wrapped module: blocks of its layer stack, and any module by path."""

    block_sites: tuple[tuple[str, str, IO, int | None], ...] = ()  # (site, sub, io, index)

    def _block_site(self, site: str) -> tuple[str, IO, int | None] | None:
        for name, sub, io, index in self.block_sites:
            if name == site:
                return sub, io, index
        return None

    @property
    def stack(self) -> str:
        """The layer stack's path inside the user's module."""
        return self.layers[0][len(self.module_prefix) :]

    def site(self, hook: HookPoint, layers_path: str) -> Site:
        if hook.module is not None or hook.site in ("resid_pre", "resid_post"):
            return super().site(hook, layers_path)
        found = self._block_site(hook.site)
        if found is None:
            raise SaelabError(
                f"hook {hook.name}: saelab does not know which part of this model's blocks is"
                f" {hook.site}; pass sites={{'{hook.site}': 'SUBMODULE'}} to wrap(), or read a"
                f" module by path (e.g. {self.stack}.{hook.layer}.SUBMODULE)"
            )
        sub, io, index = found
        return Site(f"{layers_path}.{hook.layer}.{sub}", io, index)

    def hook_for_module_path(self, path: str) -> HookPoint | None:
        """`STACK.L` is resid_post.L; `STACK.L.SUB` is the site `sites=` named SUB for."""
        m = re.fullmatch(re.escape(self.stack) + r"\.(\d+)(?:\.(.+))?", path)
        if not m:
            return None
        layer, sub = int(m.group(1)), m.group(2)
        if sub is None:
            return HookPoint(layer, "resid_post")
        for name, s, io, index in self.block_sites:
            if s == sub and io == "output" and index in (None, 0) and name != "pattern":
                return HookPoint(layer, name)
        return None


def _parse_site(site: str, spec: str) -> tuple[str, str, IO, int | None]:
    """`{"mlp_out": "ff"}`-style entries: 'SUB', 'SUB.hook_input', 'SUB.hook_output_1'."""
    if site not in _BLOCK_SITES:
        raise SaelabError(
            f"sites= key {site!r} is not one of {', '.join(_BLOCK_SITES)} (resid_pre and"
            " resid_post are the block's input and output already)"
        )
    m = re.fullmatch(r"(?P<sub>[\w.]+?)(?:\.hook_(?P<io>input|output)(?:_(?P<i>\d+))?)?", spec)
    if not m:
        raise SaelabError(f"sites={{{site!r}: {spec!r}}}: write a submodule path such as 'ff'")
    io: IO = "input" if m.group("io") == "input" else "output"
    index = int(m.group("i")) if m.group("i") else (1 if site == "pattern" else None)
    return site, m.group("sub"), io, index


def default_collate(module: torch.nn.Module) -> Collate:
    """Ids positionally, plus attention_mask / position_ids when forward takes them by name."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    wants_mask = "attention_mask" in params
    wants_pos = "position_ids" in params

    def collate(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        if not (wants_mask or wants_pos):
            return input_ids
        kw: dict[str, Any] = {}
        if wants_mask:
            kw["attention_mask"] = attention_mask
        if wants_pos:
            kw["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return ((input_ids,), kw)

    return collate


def _logits(out: Any) -> torch.Tensor | None:
    """The (B, T, vocab) scores in a module's output, if it has them."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if isinstance(out, torch.Tensor) and out.dim() == 3:
        return out
    return None


class ModuleLM(torch.nn.Module):
    """Runs a user's module the way saelab runs Hugging Face models (keyword batches in,
    an object with `.logits` out), and generates greedily or by sampling without a KV
    cache (each step re-runs the whole sequence)."""

    supports_kv_cache = False

    def __init__(self, module: torch.nn.Module, collate: Collate | None, eos_token_id: Any):
        super().__init__()
        self.module = module
        self.collate = collate or default_collate(module)
        self.generation_config = SimpleNamespace(eos_token_id=eos_token_id)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **_: Any,  # position_ids, use_cache, past_key_values: HF-style extras, not used
    ) -> SimpleNamespace:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = self.collate(input_ids, attention_mask)
        if isinstance(inputs, dict):
            out = self.module(**inputs)
        elif isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], dict):
            out = self.module(*inputs[0], **inputs[1])
        elif isinstance(inputs, (tuple, list)):
            out = self.module(*inputs)
        else:
            out = self.module(inputs)
        return SimpleNamespace(logits=_logits(out), output=out, past_key_values=None)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        pad_token_id: int | None = None,
        return_dict_in_generate: bool = False,
        **_: Any,
    ) -> Any:
        """Append up to `max_new_tokens` tokens per row; rows stop at an EOS (then padded)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        seq = input_ids
        eos = self.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        steps = []
        for _step in range(max_new_tokens):
            logits = self(input_ids=seq, attention_mask=mask).logits
            if logits is None:
                raise SaelabError(
                    "this module's output has no (batch, tokens, vocab) logits, so it cannot"
                    " generate; patch it with full forward passes instead"
                )
            last = logits[:, -1].float()
            steps.append(last)
            nxt = _pick(last, do_sample, temperature, top_p)
            if pad_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
            for s in stops:
                done |= nxt == s
            if bool(done.all()):
                break
        if not return_dict_in_generate:
            return seq
        return SimpleNamespace(sequences=seq, logits=tuple(steps))


def _pick(
    logits: torch.Tensor, sample: bool, temperature: float | None, top_p: float | None
) -> torch.Tensor:
    if not sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / max(float(temperature or 1.0), 1e-6), dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cut = sorted_p.cumsum(-1) - sorted_p > top_p
        sorted_p = sorted_p.masked_fill(cut, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1)[:, 0]


def _module_lists(module: torch.nn.Module) -> list[tuple[str, int]]:
    return [
        (name, len(m))
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.ModuleList) and name and len(m)
    ]


def _find_layers(module: torch.nn.Module, layers: str | None, explicit: bool) -> str:
    """The layer stack: the path given, else the one ModuleList with the most entries."""
    if layers is not None:
        try:
            stack = module.get_submodule(layers)
        except AttributeError:
            stack = None
        if isinstance(stack, (torch.nn.ModuleList, torch.nn.Sequential)) and len(stack):
            return layers
        if explicit:
            found = ", ".join(f"{n} ({k})" for n, k in _module_lists(module)) or "none"
            raise SaelabError(
                f"layers={layers!r} is not a ModuleList of blocks in this "
                f"{type(module).__name__} (ModuleLists found: {found}); pass layers= its path"
            )
    found = sorted(_module_lists(module), key=lambda t: -t[1])
    if not found or (len(found) > 1 and found[0][1] == found[1][1]):
        names = ", ".join(f"{n} ({k})" for n, k in found) or "none"
        raise SaelabError(
            f"cannot tell which ModuleList of this {type(module).__name__} holds its blocks"
            f" (found: {names}); pass layers='PATH' to wrap()"
        )
    return found[0][0]


def _dtype_name(module: torch.nn.Module) -> str:
    p = next(iter(module.parameters()), None)
    return str(p.dtype).removeprefix("torch.") if p is not None else "float32"


def _device(module: torch.nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


_DEFAULT_LAYERS = "encoder.layers"


def wrap(
    module: torch.nn.Module,
    tokenizer: Any = None,
    layers: str | None = _DEFAULT_LAYERS,
    collate: Collate | None = None,
    *,
    sites: Mapping[str, str] | None = None,
    name: str | None = None,
    d_model: int | None = None,
    dtype: str | None = None,
    device: str | torch.device | None = None,
    source: ModelSource | None = None,
) -> LoadedModel:
    """Make any module a saelab model (see the module docstring).

    tokenizer: None (prompts are ids as text), a {token: id} vocabulary, an object with
        encode/decode, a function text -> ids, or a Hugging Face tokenizer.
    layers: path of the ModuleList holding the blocks (found by itself when the default
        'encoder.layers' does not exist and one ModuleList is clearly the stack).
    sites: submodules of a block for attn_out / mlp_out / resid_mid / pattern.
    d_model: width of the blocks' output; measured by one probe forward when not given.
    dtype, device: cast/move the module first (float32, float16, bfloat16, int8 on CPU).
    The module is put in eval mode with gradients off (call .train() to train it again).
    """
    if not isinstance(module, torch.nn.Module):
        raise SaelabError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
    stack = _find_layers(module, layers, explicit=layers != _DEFAULT_LAYERS)
    block_sites = tuple(_parse_site(k, v) for k, v in (sites or {}).items())
    tok = as_tokenizer(tokenizer)
    module = _cast(module, dtype, device)
    module.eval()
    module.requires_grad_(False)
    runner = ModuleLM(module, collate, getattr(tok, "eos_token_id", None))
    adapter = ModuleAdapter(
        family="custom",
        layers=(PREFIX + stack,),
        attn="",
        mlp="",
        resid_mid=None,
        attn_out=("", "output"),
        mlp_out=("", "output"),
        final_norm=(),
        note="a wrapped torch module",
        module_prefix=PREFIX,
        block_sites=block_sites,
    )
    label = name or type(module).__name__
    lm = LoadedModel(
        model=runner,
        tokenizer=tok,
        adapter=adapter,
        name=label,
        source=source or ModelSource("module", label, label),
        dtype=dtype or _dtype_name(module),
        device=_device(module),
        n_layers=len(module.get_submodule(stack)),  # type: ignore[arg-type]
        d_model=int(d_model or 0),
    )
    if not d_model:
        lm.d_model = probe_widths(lm, [HookPoint(0, "resid_post")])["blocks.0.hook_resid_post"]
    return lm


def _cast(
    module: torch.nn.Module, dtype: str | None, device: str | torch.device | None
) -> torch.nn.Module:
    if device is not None:
        module = module.to(device)
    if dtype == "int8":
        return quantize_int8(module)
    if dtype is not None:
        return module.to(torch_dtype(dtype))
    return module


def retarget(lm: LoadedModel, dtype: str, device: torch.device) -> LoadedModel:
    """A wrapped model (a factory's own `wrap` result) in the dtype and on the device asked."""
    runner = lm.model
    if not isinstance(runner, ModuleLM):
        return lm
    if dtype != lm.dtype or device != lm.device:
        runner.module = _cast(runner.module, dtype, device)
        lm.dtype, lm.device = dtype, _device(runner.module)
    return lm


def probe_widths(lm: LoadedModel, hooks: list[HookPoint]) -> dict[str, int]:
    """The last dimension at each hook point, from one forward pass over two probe tokens
    (the tokenizer's BOS, else id 0)."""
    tok = lm.tokenizer
    first = getattr(tok, "bos_token_id", None)
    first = 0 if first is None else int(first)
    batch = make_batch([[first, first]], lm.pad_id, device=lm.device)
    try:
        with HookCapture(lm.model, lm.adapter, hooks) as cap:
            values = cap.run(batch)
    except SaelabError:
        raise
    except Exception as e:
        raise SaelabError(
            f"could not run {lm.name} on a probe input of token ids [[{first}, {first}]]"
            f" ({type(e).__name__}: {e}); pass d_model= to wrap(), or a collate= that"
            " turns token ids into the module's inputs"
        ) from e
    return {h.name: int(values[h].shape[-1]) for h in hooks}


def hook_widths(lm: LoadedModel, hooks: list[HookPoint]) -> dict[str, int]:
    """Width of every hook point: d_model for residual sites, probed for module paths."""
    probe = [h for h in hooks if h.is_module]
    widths = {h.name: lm.d_model for h in hooks if not h.is_module}
    if probe:
        widths.update(probe_widths(lm, probe))
    return widths
