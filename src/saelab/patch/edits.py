"""The edit grammar of `saelab patch`: what one SAE feature edit says, parsed and checked.

    HOOK:FEATURE=VALUE    set the feature to VALUE (=0 ablates it)
    HOOK:FEATURE*S        scale the feature by S
    HOOK:FEATURE+=D       shift the feature by D
    HOOK:FEATURE@A        steer: add A * W_dec[FEATURE] without encoding

HOOK is a canonical hook name (`blocks.7.hook_resid_post`) or a short form (`resid_post.7`,
`resid_post.-1` when the model's depth is known). Every user mistake is a one-line
SaelabError that shows the grammar.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint, parse_hook
from saelab.sae import SAE

OPS = ("set", "scale", "shift", "steer")
GRAMMAR = (
    "HOOK:FEATURE=VALUE (set; =0 ablates), HOOK:FEATURE*S (scale), HOOK:FEATURE+=D (shift) or"
    " HOOK:FEATURE@A (steer), e.g. resid_post.7:123=0"
)
_SYMBOL = {"=": "set", "*": "scale", "+=": "shift", "@": "steer"}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SPEC = re.compile(
    rf"^(?P<hook>[^:\s]+)\s*:\s*(?P<feature>\d+)\s*(?P<op>\+=|=|\*|@)\s*(?P<value>{_NUMBER})$"
)


@dataclass(frozen=True)
class Edit:
    """One feature edit at one hook point."""

    hook: str  # canonical hook name, e.g. blocks.7.hook_resid_post
    feature: int
    op: str  # "set" | "scale" | "shift" | "steer"
    value: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SaelabError(f"edit op {self.op!r} is not one of {', '.join(OPS)}")
        if self.feature < 0:
            raise SaelabError(f"edit feature {self.feature} is negative: features count from 0")
        if not math.isfinite(self.value):
            raise SaelabError(f"edit value {self.value} is not a finite number")

    @property
    def spec(self) -> str:
        """The edit written back in the grammar (parse_edit(e.spec) == e)."""
        sym = {v: k for k, v in _SYMBOL.items()}[self.op]
        return f"{self.hook}:{self.feature}{sym}{self.value:g}"

    def __str__(self) -> str:
        return self.spec


def canonical_hook(spec: str, n_layers: int | None = None, what: str = "hook") -> str:
    """One hook spec as its canonical name; a range or a layer past the depth is an error.
    Without the model's depth (None) plain layers are taken as written."""
    hooks: list[HookPoint] = parse_hook(spec, n_layers)
    if len(hooks) != 1:
        raise SaelabError(f"{what} {spec!r} names {len(hooks)} hook points: name exactly one")
    return hooks[0].name


def parse_edit(spec: str, n_layers: int | None = None) -> Edit:
    """Parse one edit spec (grammar in the module docstring)."""
    text = spec.strip()
    m = _SPEC.match(text)
    if m is None:
        raise SaelabError(f"cannot read edit {spec!r}: write {GRAMMAR}")
    value = float(m.group("value"))
    if not math.isfinite(value):
        raise SaelabError(f"edit {spec!r}: the value must be a finite number ({GRAMMAR})")
    try:
        hook = canonical_hook(m.group("hook"), n_layers)
    except SaelabError as e:
        raise SaelabError(f"edit {text!r}: {e} (edits read {GRAMMAR})") from None
    return Edit(hook, int(m.group("feature")), _SYMBOL[m.group("op")], value)


def parse_edits(specs: Sequence[str], n_layers: int | None = None) -> list[Edit]:
    """Parse several specs (one row's edits); an exact repeat is kept once, two different
    edits of the same (hook, feature) are a conflict."""
    out: list[Edit] = []
    seen: dict[tuple[str, int], Edit] = {}
    for spec in specs:
        e = parse_edit(spec, n_layers)
        prev = seen.get((e.hook, e.feature))
        if prev is None:
            seen[(e.hook, e.feature)] = e
            out.append(e)
        elif prev != e:
            raise SaelabError(
                f"edits {prev.spec!r} and {e.spec!r} conflict: both change feature {e.feature}"
                f" at {e.hook}; keep one of them"
            )
    return out


def check_row(edits: Sequence[Edit]) -> None:
    """Two different edits of one (hook, feature) in one row are a conflict."""
    seen: dict[tuple[str, int], Edit] = {}
    for e in edits:
        prev = seen.setdefault((e.hook, e.feature), e)
        if prev != e:
            raise SaelabError(
                f"edits {prev.spec!r} and {e.spec!r} conflict: both change feature {e.feature}"
                f" at {e.hook}; keep one of them"
            )


def saes_by_hook(saes: Mapping[str, SAE], n_layers: int | None = None) -> dict[str, SAE]:
    """The SAE mapping keyed by canonical hook names (short forms accepted as keys)."""
    out: dict[str, SAE] = {}
    for key, sae in saes.items():
        name = canonical_hook(key, n_layers, what="SAE hook")
        if name in out and out[name] is not sae:
            raise SaelabError(f"two SAEs given for hook {name}: give one SAE per hook")
        out[name] = sae
    return out


def check_edits(edits: Sequence[Edit], saes: Mapping[str, SAE]) -> None:
    """Each edit must name a hook that has an SAE able to patch, and a feature it has."""
    by_hook = saes_by_hook(saes)
    for e in edits:
        sae = by_hook.get(e.hook)
        if sae is None:
            have = ", ".join(sorted(by_hook)) or "none"
            raise SaelabError(
                f"edit {e.spec!r}: no SAE at {e.hook} (SAEs given for: {have}); load an SAE"
                " for that hook or edit a hook that has one"
            )
        if not 0 <= e.feature < sae.d_sae:
            raise SaelabError(
                f"edit {e.spec!r}: feature {e.feature} is past the SAE's width (d_sae"
                f" {sae.d_sae}, features 0-{sae.d_sae - 1})"
            )
        if sae.W_dec is None:
            raise SaelabError(
                f"edit {e.spec!r}: the SAE at {e.hook} was loaded encoder-only, and patching"
                " needs its decoder rows; load it with its decoder"
            )
        if sae.is_transcoder or sae.W_skip is not None:
            raise SaelabError(
                f"edit {e.spec!r}: the SAE at {e.hook} is a transcoder (it writes to another"
                " site than it reads); saelab patches autoencoders only so far"
            )
