"""Batched forward passes that keep only the requested hook points and stop early.

Why not `output_hidden_states=True`: it keeps every layer (memory), runs every layer (time),
applies the final norm to its last entry (wrong resid_post), and has no attn_out/mlp_out.
Here a forward hook per needed module copies exactly the requested tensors, and once the
deepest one has been read the pass is abandoned with an exception, so capturing layer L of N
costs about (L+1)/N of a full pass and never computes logits.

Padding: prompts of a batch are padded (right by default) and position ids come from the
attention mask, so left and right padding give the same numbers as one prompt at a time.
Padding rows never leave this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from saelab.errors import SaelabError
from saelab.models.adapters import Adapter, Site
from saelab.models.hooks import HookPoint

Positions = Literal["all", "last", "mean"]
POSITIONS: tuple[str, ...] = ("all", "last", "mean")


class _StopForward(Exception):
    """Raised from a hook once every requested tensor has been read."""


@dataclass
class Batch:
    """Padded token ids of several prompts plus what is needed to undo the padding."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    lengths: list[int]
    padding_side: str

    def span(self, row: int) -> tuple[int, int]:
        """Start and end (exclusive) of the real tokens of a row."""
        t = self.input_ids.shape[1]
        n = self.lengths[row]
        return (t - n, t) if self.padding_side == "left" else (0, n)


def make_batch(
    token_lists: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
) -> Batch:
    lengths = [len(t) for t in token_lists]
    if min(lengths) < 1:
        raise ValueError("a prompt with no tokens cannot be run")
    width = max(lengths)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, toks in enumerate(token_lists):
        n = len(toks)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[i, sl] = torch.as_tensor(list(toks), dtype=torch.long)
        mask[i, sl] = 1
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids.to(device), mask.to(device), pos.to(device), lengths, padding_side)


class HookCapture:
    """Registers one hook per needed (module, input/output) and collects the tensors.

    Use as a context manager so hooks are always removed, even when the pass is stopped.
    """

    def __init__(self, model: torch.nn.Module, adapter: Adapter, hooks: Sequence[HookPoint]):
        self.model = model
        self.adapter = adapter
        self.hooks = list(hooks)
        layers = adapter.layers_path(model)
        self.sites: dict[HookPoint, Site] = {h: adapter.site(h, layers) for h in self.hooks}
        self.values: dict[HookPoint, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._pending: set[tuple[str, str]] = set()
        self.stop_early = True

    def _keys(self) -> dict[tuple[str, str], list[HookPoint]]:
        by: dict[tuple[str, str], list[HookPoint]] = {}
        for h, s in self.sites.items():
            by.setdefault((s.module, s.io), []).append(h)
        return by

    def __enter__(self) -> HookCapture:
        found = []
        for (module, io), hps in self._keys().items():  # resolve all before registering any
            try:
                found.append((self.model.get_submodule(module), module, io, hps))
            except AttributeError as e:
                raise SaelabError(
                    f"hook {hps[0].name}: this model has no module {module}; check the path"
                    " against the model's named_modules()"
                ) from e
        for mod, module, io, hps in found:
            if io == "input":
                handle = mod.register_forward_pre_hook(
                    self._pre_hook(module, hps), with_kwargs=True
                )
            else:
                handle = mod.register_forward_hook(self._post_hook(module, hps))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _done(self, key: tuple[str, str]) -> None:
        self._pending.discard(key)
        if self.stop_early and not self._pending:
            raise _StopForward

    def _pre_hook(self, module: str, hps: list[HookPoint]) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            for h in hps:
                self.values[h] = self.sites[h].read_input(args, kwargs).detach()
            self._done((module, "input"))

        return hook

    def _post_hook(self, module: str, hps: list[HookPoint]) -> Callable[..., None]:
        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            for h in hps:
                value = self.sites[h].read_output(output)
                if value is None:
                    raise RuntimeError(
                        f"{module} returned no attention weights: the model must run with"
                        " eager attention to read attn.hook_pattern"
                    )
                self.values[h] = value.detach()
            self._done((module, "output"))

        return hook

    @torch.no_grad()  # not inference_mode: callers may feed results to autograd (SAE training)
    def run(self, batch: Batch, stop_early: bool = True) -> dict[HookPoint, torch.Tensor]:
        """One forward pass; returns the padded tensors (B, T, d) or (B, heads, T, T)."""
        self.values = {}
        self._pending = set(self._keys())
        self.stop_early = stop_early
        try:
            self.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            )
        except _StopForward:
            pass
        missing = [h.name for h in self.hooks if h not in self.values]
        if missing:
            raise RuntimeError(f"hooks never fired: {missing}")
        return self.values


def select_positions(
    value: torch.Tensor,
    batch: Batch,
    row: int,
    positions: str,
    skip_first: bool,
) -> torch.Tensor:
    """The rows of one prompt to keep: all real tokens, the last one, or their mean (float32)."""
    start, end = batch.span(row)
    if skip_first:
        start += 1
    if value.dim() == 4:  # attention pattern (B, heads, T, T): keep the prompt's square
        return value[row, :, start:end, start:end]
    if positions == "all":
        return value[row, start:end]
    if positions == "last":
        return value[row, end - 1 : end]
    if positions == "mean":
        return value[row, start:end].float().mean(dim=0, keepdim=True)
    raise ValueError(f"unknown positions {positions!r}")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first) to waste little padding.

    Longest first means the first batch shows the peak memory at once, so a too-large batch
    fails immediately rather than at the end.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def capture_prompts(
    model: torch.nn.Module,
    adapter: Adapter,
    hooks: Sequence[HookPoint],
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
    positions: str = "all",
    drop_bos: bool = False,
    bos_id: int | None = None,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
    stop_early: bool = True,
    out_dtype: torch.dtype | None = None,
) -> Iterator[tuple[list[int], dict[HookPoint, list[torch.Tensor]]]]:
    """Yield (prompt indices, per-hook list of per-prompt tensors) batch by batch.

    Tensors are detached CPU copies in `out_dtype` (default: the model's dtype; float32 for
    `mean`): casting here, straight from the padded batch, means no full-precision copy of a
    batch is ever held beside the one the caller keeps. With `drop_bos`, a prompt's first
    token is skipped when it is the BOS token.
    """
    with HookCapture(model, adapter, hooks) as cap:
        for idx in length_sorted_batches([len(t) for t in token_lists], batch_size):
            batch = make_batch([token_lists[i] for i in idx], pad_id, padding_side, device)
            values = cap.run(batch, stop_early=stop_early)
            out: dict[HookPoint, list[torch.Tensor]] = {h: [] for h in hooks}
            for r, i in enumerate(idx):
                skip = bool(drop_bos and bos_id is not None and token_lists[i][0] == bos_id)
                if skip and len(token_lists[i]) < 2:
                    skip = False
                for h in hooks:
                    sel = select_positions(values[h], batch, r, positions, skip)
                    out[h].append(cast_rows(sel, out_dtype, h.name))
            del values
            yield idx, out


_F16_MAX = 65504.0


def cast_rows(x: torch.Tensor, dtype: torch.dtype | None, hook: str) -> torch.Tensor:
    """A CPU copy in `dtype`; refuses float16 overflow instead of storing inf."""
    if dtype is None or dtype == x.dtype:
        return x.to("cpu", copy=True)
    if dtype == torch.float16 and x.numel() and float(x.abs().max()) > _F16_MAX:
        raise SaelabError(
            f"activations of {hook} reach {float(x.abs().max()):.3g}, beyond float16's"
            " range (65504); store them as bfloat16 or float32 (--store-dtype)"
        )
    return x.to("cpu", dtype=dtype, copy=True)
