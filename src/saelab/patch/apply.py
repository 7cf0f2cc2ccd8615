"""Applying SAE feature edits inside the model, each batch row with its own edits.

An edit at hook h is error-preserving: with f the SAE's code of x and f' the edited code,

    x' = x + (f' - f)[E] @ W_dec[E]                (E: the edited features only)

so whatever the SAE fails to reconstruct stays in place, and only the edited features' decoder
rows are used. f is the full encode for TopK SAEs (whether a feature is in the top k depends on
every feature) and only the edited columns' pre-activations for gate SAEs (JumpReLU, ReLU, a
trained BatchTopK); for layer_norm SAEs the code is of the normalised x and the change is
scaled back by the token's std, as the SAE's forward does. A steering edit adds A * W_dec[i]
without encoding.

Positions are in padded coordinates: prompts are left padded to a width W, so row r's prompt
occupies [W - len_r, W) and generated token k sits at W + k. saelab counts the positions
itself: a pre-hook on the first decoder block adds each forward pass's length to a running
total that starts at 0 (or at the length of a KV cache the caller built and says so), so
cached generation steps (one new position each) and full re-runs (all of them) edit the same
positions without reading any argument of transformers' forward passes by name; when a pass
does carry a KV cache object, its length must equal the count, or the patch stops with an
error instead of editing the wrong positions. `at` picks positions: "last" (W - 1),
"prompt", "generated" (>= W), "all", or "last+generated" (the default: the last prompt
token, which produces the first answer token, and every generated token). Padding is never
edited, and a row with no edits at a hook is not touched.

Every edit is counted: `PatchSession.applied` holds, per hook and row, at how many positions
the row's edits were applied, and `PatchSession.check_applied` refuses a row whose edits were
applied nowhere, so a change in the model library can never turn patching into a silent no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint, parse_hook
from saelab.models.interventions import replace_activations
from saelab.patch.edits import Edit, check_edits, check_row, saes_by_hook
from saelab.sae import SAE

AT = ("last", "prompt", "generated", "all", "last+generated")
_OP_CODE = {"set": 1, "scale": 2, "shift": 3}  # 0: the row does not edit that feature


@dataclass(frozen=True)
class RowEdits:
    """The edits of one batch row (empty: a baseline row, left exactly as the model made it)."""

    row: int
    edits: tuple[Edit, ...] = ()

    @property
    def hooks(self) -> set[str]:
        return {e.hook for e in self.edits}


def feature_codes(
    sae: SAE, x: torch.Tensor, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(codes of x (m, d_in) at `features` (m, u), the per-token std for layer_norm SAEs)."""
    xn, _, std = sae.normalize_input(x)
    if sae.cfg.architecture == "topk":  # membership of the top k depends on every feature
        return sae.activate(sae.pre_acts(x))[:, features], std
    if sae.cfg.apply_b_dec_to_input:
        xn = xn - sae.b_dec
    pre = xn @ sae.W_enc[:, features] + sae.b_enc[features]
    f = torch.relu(pre)
    if sae.threshold is not None:  # jumprelu, and a trained batchtopk
        f = f * (pre > sae.threshold[features])
    return f, std


@dataclass
class HookEdits:
    """Every row's edits at one hook, as dense (rows x edited-features) tables."""

    hook: HookPoint
    sae: SAE
    n_rows: int
    rows: list[RowEdits]
    features: torch.Tensor = field(init=False)  # (u,) union of the edited features
    op: torch.Tensor = field(init=False)  # (n_rows, u) 0 none, 1 set, 2 scale, 3 shift
    value: torch.Tensor = field(init=False)  # (n_rows, u) set value / scale / shift
    steer: torch.Tensor = field(init=False)  # (n_rows, u) steering coefficients
    edited: torch.Tensor = field(init=False)  # (n_rows,) rows with an edit here
    w_dec: torch.Tensor = field(init=False)  # (u, d) the decoder rows of `features`

    def __post_init__(self) -> None:
        name = self.hook.name
        feats = sorted({e.feature for r in self.rows for e in r.edits if e.hook == name})
        col = {f: j for j, f in enumerate(feats)}
        sae = self.sae
        dev, dt = sae.W_enc.device, sae.W_enc.dtype
        u = len(feats)
        op = torch.zeros(self.n_rows, u, dtype=torch.long)
        value = torch.zeros(self.n_rows, u, dtype=torch.float64)
        steer = torch.zeros(self.n_rows, u, dtype=torch.float64)
        edited = torch.zeros(self.n_rows, dtype=torch.bool)
        for r in self.rows:
            for e in r.edits:
                if e.hook != name:
                    continue
                edited[r.row] = True
                if e.op == "steer":
                    steer[r.row, col[e.feature]] = e.value
                else:
                    op[r.row, col[e.feature]] = _OP_CODE[e.op]
                    value[r.row, col[e.feature]] = e.value
        self.features = torch.tensor(feats, dtype=torch.long, device=dev)
        self.op, self.value = op.to(dev), value.to(device=dev, dtype=dt)
        self.steer, self.edited = steer.to(device=dev, dtype=dt), edited
        assert sae.W_dec is not None  # check_edits refuses encoder-only SAEs
        self.w_dec = sae.W_dec.detach()[self.features]
        self._needs_code = bool((op > 0).any())

    @torch.no_grad()
    def delta(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The change x' - x for vectors x (m, d) belonging to batch rows `rows` (m,)."""
        sae = self.sae
        x = x.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        rows = rows.to(sae.W_enc.device)
        coef = self.steer[rows]
        if self._needs_code:
            op, v = self.op[rows], self.value[rows]
            f, std = feature_codes(sae, x, self.features)
            change = torch.where(op == 1, v - f, torch.zeros_like(f))
            change = torch.where(op == 2, f * (v - 1), change)  # exactly 0 for a scale of 1
            change = torch.where(op == 3, v, change)
            if std is not None:  # layer_norm SAE: its decoder works in the normalised space
                change = change * std
            coef = coef + change
        return coef @ self.w_dec


def position_mask(
    positions: torch.Tensor, starts: torch.Tensor, width: int, at: str
) -> torch.Tensor:
    """(rows, n) True where `at` selects padded position positions[j] of row r, whose prompt
    occupies [starts[r], width)."""
    p = positions[None, :]
    s = starts[:, None]
    if at == "last":
        m = p == width - 1
    elif at == "prompt":
        m = (p >= s) & (p < width)
    elif at == "generated":
        m = p >= width
    elif at == "all":
        m = p >= s
    elif at == "last+generated":
        m = p >= width - 1
    else:
        raise SaelabError(f"--at {at!r} is not one of {', '.join(AT)}")
    return m.expand(len(starts), len(positions))


class PositionCounter:
    """Where each forward pass starts, in padded positions, counted from the passes themselves.

    A pre-hook on the first decoder block sees every forward pass exactly once, before any
    edit site of that pass; it reads the pass's length from the hidden states it receives
    (the one (rows, n, d_model) tensor), never from a named argument. A KV cache handed to the
    block (found by type, whatever its argument is called) must hold exactly the positions
    counted so far: a mismatch means the library reorganised generation, and editing on
    would hit the wrong positions, so it is an error.
    """

    def __init__(self, start: int, n_rows: int, d_model: int) -> None:
        self.start = int(start)
        self.n_rows = n_rows
        self.d_model = d_model
        self.seen = int(start)  # positions run so far, including a cache built beforehand
        self.value = int(start)  # first position of the pass in progress
        self.passes = 0

    def pre_hook(self, mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = self._hidden(args, kwargs)
        for v in (*args, *kwargs.values()):
            held = _cache_length(v)
            if held is not None and held != self.seen:
                raise SaelabError(
                    f"patching: the model's KV cache holds {held} positions but saelab counted"
                    f" {self.seen}; this transformers version runs generation in a way saelab"
                    " does not follow yet, so no edit is applied: please report it with the"
                    " transformers version"
                )
        self.value = self.seen
        self.seen += int(hidden.shape[1])
        self.passes += 1

    def _hidden(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        for v in (*args, *kwargs.values()):
            if (
                isinstance(v, torch.Tensor)
                and v.dim() == 3
                and v.shape[0] == self.n_rows
                and v.shape[-1] == self.d_model
            ):
                return v
        raise SaelabError(
            f"patching: the first decoder block received no ({self.n_rows}, n, {self.d_model})"
            " hidden states, so saelab cannot tell which positions a pass covers; no edit is"
            " applied: please report it with the model and transformers version"
        )


def _cache_length(v: Any) -> int | None:
    """Positions held by a KV cache object (anything with `get_seq_length`), else None."""
    get = getattr(v, "get_seq_length", None)
    if get is None or isinstance(v, torch.Tensor) or not callable(get):
        return None
    try:
        return int(get())
    except (TypeError, ValueError, IndexError, AttributeError):
        return None


def _edit_fn(
    he: HookEdits,
    offset: PositionCounter,
    starts: torch.Tensor,
    width: int,
    at: str,
    applied: torch.Tensor,
) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != he.n_rows:
            raise SaelabError(
                f"patching {he.hook.name}: the model ran a batch of shape {tuple(x.shape)}"
                f" but the edits were given for {he.n_rows} rows; run one row per edit row"
            )
        pos = torch.arange(x.shape[1]) + offset.value
        mask = position_mask(pos, starts, width, at) & he.edited[:, None]
        applied.add_(mask.sum(dim=1))
        if not bool(mask.any()):
            return x
        r, p = mask.nonzero(as_tuple=True)
        r, p = r.to(x.device), p.to(x.device)
        xs = x[r, p]
        delta = he.delta(xs, r).to(device=x.device, dtype=torch.float32)
        out = x.clone()
        out[r, p] = (xs.to(torch.float32) + delta).to(x.dtype)
        return out

    return fn


@dataclass
class PatchSession:
    """What a `patched` block did: per hook, at how many positions each row was edited."""

    rows: list[RowEdits]
    start: int
    width: int
    at: str
    applied: dict[str, torch.Tensor] = field(default_factory=dict)  # hook -> (rows,) counts
    counter: PositionCounter | None = None

    def applied_per_row(self) -> list[int]:
        """Positions at which each row's edits were applied (the fewest over its hooks; 0
        for a row without edits)."""
        out = []
        for r in self.rows:
            counts = [int(self.applied[h][r.row]) for h in sorted(r.hooks)]
            out.append(min(counts) if counts else 0)
        return out

    def check_applied(self) -> None:
        """Refuse a row whose requested edits were applied at no position at all."""
        for r in self.rows:
            for hook in sorted(r.hooks):
                if int(self.applied[hook][r.row]) == 0:
                    edit = next(e for e in r.edits if e.hook == hook)
                    passes = self.counter.passes if self.counter is not None else 0
                    raise SaelabError(
                        f"edit {edit.spec} (row {r.row}) was applied at no position: it asks"
                        f" for positions '{self.at}' (prompt padded to {self.width} tokens),"
                        f" but the model ran {passes} forward passes covering positions"
                        f" {self.start}-{self.counter.seen - 1 if self.counter else self.start};"
                        " give more new tokens or another --at"
                    )


def _first_block(model: torch.nn.Module, layers_path: str) -> torch.nn.Module:
    """The first decoder block: every forward pass runs it exactly once."""
    return model.get_submodule(f"{layers_path}.0")


@contextmanager
def patched(
    lm: Any,
    saes: Mapping[str, SAE],
    rows: Sequence[Sequence[Edit]],
    prompt_lengths: Sequence[int],
    at: str = "last+generated",
    left_padded_to: int | None = None,
    cached: int = 0,
) -> Iterator[PatchSession]:
    """While active, every forward pass of `lm.model` applies row i's edits to batch row i.

    `rows[i]` are row i's edits (empty: untouched), `prompt_lengths[i]` its prompt's length;
    prompts are left padded to `left_padded_to` (default: the longest prompt), as
    `make_batch(..., "left")` and HF generation do. The first pass inside the block starts at
    position `cached` (the length of a KV cache the caller built before the block; 0 when
    the sequence starts inside it). Works for full passes with or without a KV cache and for
    `model.generate`. Hooks are removed on exit. The yielded session counts the positions
    each row's edits were applied at (`check_applied` refuses a row edited nowhere).
    """
    if at not in AT:
        raise SaelabError(f"--at {at!r} is not one of {', '.join(AT)}")
    if len(rows) != len(prompt_lengths):
        raise SaelabError(
            f"{len(rows)} edit rows for {len(prompt_lengths)} prompts: give one per prompt"
        )
    if not rows:
        raise SaelabError("no rows to patch: give at least one prompt")
    lengths = [int(n) for n in prompt_lengths]
    width = max(lengths) if left_padded_to is None else int(left_padded_to)
    if min(lengths) < 1 or max(lengths) > width:
        raise SaelabError(
            f"prompt lengths {min(lengths)}-{max(lengths)} do not fit a left padding to"
            f" {width}: each prompt needs 1 to {width} tokens"
        )
    if not 0 <= cached < width:
        raise SaelabError(f"a KV cache of {cached} positions does not fit prompts of {width}")
    by_hook = saes_by_hook(saes, lm.n_layers)
    row_edits = []
    for i, edits in enumerate(rows):
        edits = tuple(edits)
        check_row(edits)
        check_edits(edits, by_hook)
        row_edits.append(RowEdits(i, edits))
    names = sorted({h for r in row_edits for h in r.hooks})
    session = PatchSession(row_edits, cached, width, at)
    if not names:  # nothing to edit: the model runs exactly as it is
        yield session
        return
    starts = torch.tensor([width - n for n in lengths])
    counter = PositionCounter(cached, len(row_edits), int(lm.d_model))
    session.counter = counter
    fns = {}
    for name in names:
        hook = parse_hook(name, lm.n_layers)[0]
        he = HookEdits(hook, by_hook[name], len(row_edits), [r for r in row_edits if r.edits])
        session.applied[name] = torch.zeros(len(row_edits), dtype=torch.long)
        fns[hook] = _edit_fn(he, counter, starts, width, at, session.applied[name])
    block = _first_block(lm.model, lm.adapter.layers_path(lm.model))
    handle = block.register_forward_pre_hook(counter.pre_hook, with_kwargs=True, prepend=True)
    try:
        with replace_activations(lm.model, lm.adapter, fns):
            yield session
    finally:
        handle.remove()
