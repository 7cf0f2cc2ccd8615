"""Hook-point names: canonical TransformerLens-style names, short forms and ranges.

saelab names every activation it reads or edits with the TransformerLens/SAELens convention
(`blocks.{L}.hook_resid_post`), because pretrained SAE configs carry those names and then
resolve without translation. Users may type short forms (`resid_post.12`, `resid_post.0-29`,
`resid_post.-1`, `mlp_out.*`) or Hugging Face module paths (`model.layers.12`); all become
`HookPoint`s here. Module paths need the model's adapter, so they are resolved through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from saelab.errors import SaelabError

#: Sites of a block, in the order the forward pass produces them.
SITES: tuple[str, ...] = (
    "resid_pre",
    "attn_out",
    "pattern",
    "resid_mid",
    "mlp_out",
    "resid_post",
)
_SITE_ORDER = {s: i for i, s in enumerate(SITES)}
_ALIASES = {
    "attn.hook_pattern": "pattern",
    "hook_pattern": "pattern",
    "attn_pattern": "pattern",
    "resid": "resid_post",
    "attn": "attn_out",
    "mlp": "mlp_out",
}


@dataclass(frozen=True)
class HookPoint:
    """One activation site: a layer and what is read there."""

    layer: int
    site: str

    @property
    def name(self) -> str:
        """The canonical name, e.g. `blocks.12.hook_resid_post`."""
        if self.site == "pattern":
            return f"blocks.{self.layer}.attn.hook_pattern"
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def short(self) -> str:
        return f"{self.site}.{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass: hooks sort by when they fire."""
        return (self.layer, _SITE_ORDER[self.site])

    def __str__(self) -> str:
        return self.name


_CANON = re.compile(r"^blocks\.(-?\d+)\.(?:hook_(\w+)|attn\.hook_pattern)$")
_SHORT = re.compile(r"^(?:hook_)?([a-z_.]+?)\.(\*|all|-?\d+(?:-\d+)?)$")


def _site(name: str, spec: str) -> str:
    s = _ALIASES.get(name, name)
    if s not in _SITE_ORDER:
        raise SaelabError(
            f"unknown hook site {name!r} in {spec!r}: use one of "
            + ", ".join(SITES)
            + " (e.g. resid_post.12 or blocks.12.hook_resid_post)"
        )
    return s


def _layer(raw: int, n_layers: int | None, spec: str) -> int:
    if n_layers is None:  # depth unknown: only plain non-negative layers mean something
        if raw < 0:
            raise SaelabError(
                f"hook {spec!r}: a negative layer counts from the model's last layer, which is"
                " not known here; write the layer number"
            )
        return raw
    layer = raw + n_layers if raw < 0 else raw
    if not 0 <= layer < n_layers:
        raise SaelabError(
            f"hook {spec!r}: layer {raw} is past the model's depth ({n_layers} layers,"
            f" numbered 0-{n_layers - 1}); pick a layer in that range"
        )
    return layer


def split_specs(spec: str | Sequence[str]) -> list[str]:
    """'a,b c' and ['a', 'b,c'] both become ['a', 'b', 'c']."""
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        out.extend(p for p in re.split(r"[,\s]+", item.strip()) if p)
    return out


def parse_hook(
    spec: str,
    n_layers: int | None,
    module_path: Callable[[str], HookPoint | None] | None = None,
) -> list[HookPoint]:
    """Expand one hook spec into hook points (a range gives several).

    `n_layers` is the model's real depth; None (not known, e.g. a name read from a file)
    accepts plain layers unchecked and refuses what needs the depth (negative layers, `*`).
    """
    text = spec.strip()
    m = _CANON.match(text)
    if m:
        site = "pattern" if m.group(2) is None else _site(m.group(2), spec)
        return [HookPoint(_layer(int(m.group(1)), n_layers, spec), site)]
    m = _SHORT.match(text)
    if m and (m.group(1) in _SITE_ORDER or m.group(1) in _ALIASES):
        site = _site(m.group(1), spec)
        sel = m.group(2)
        if sel in ("*", "all"):
            if n_layers is None:
                raise SaelabError(f"hook {spec!r}: every layer needs the model's depth; list them")
            return [HookPoint(layer, site) for layer in range(n_layers)]
        if re.fullmatch(r"\d+-\d+", sel):
            lo, hi = (int(x) for x in sel.split("-"))
            if lo > hi:
                raise SaelabError(f"hook range {spec!r} runs backwards: write {site}.{hi}-{lo}")
            _layer(hi, n_layers, spec)
            return [HookPoint(layer, site) for layer in range(lo, hi + 1)]
        return [HookPoint(_layer(int(sel), n_layers, spec), site)]
    if module_path is not None:
        hp = module_path(text)
        if hp is not None:
            _layer(hp.layer, n_layers, spec)
            return [hp]
    if m and "." not in m.group(1):
        _site(m.group(1), spec)  # SITE.L with an unknown SITE: say which sites exist
    raise SaelabError(
        f"cannot read hook {spec!r}: write blocks.L.hook_SITE, SITE.L, SITE.A-B or SITE.* with"
        f" SITE one of {', '.join(SITES)}, or a module path such as model.layers.L"
    )


def parse_hooks(
    spec: str | Sequence[str],
    n_layers: int | None,
    module_path: Callable[[str], HookPoint | None] | None = None,
) -> list[HookPoint]:
    """Parse, expand, de-duplicate and sort hook specs into forward-pass order."""
    parts = split_specs(spec)
    if not parts:
        raise SaelabError("no hook points given: hooks='' names none; e.g. hooks='resid_post.12'")
    seen: dict[HookPoint, None] = {}
    for part in parts:
        for hp in parse_hook(part, n_layers, module_path):
            seen.setdefault(hp, None)
    return sorted(seen, key=lambda h: h.order)


def hook_point(name: str | HookPoint) -> HookPoint:
    """A canonical or short name of one hook point as a value (no model depth needed)."""
    if isinstance(name, HookPoint):
        return name
    points = parse_hook(name, None)
    if len(points) != 1:
        raise SaelabError(f"hook {name!r} names {len(points)} hook points: name exactly one")
    return points[0]


def select_hooks(
    spec: str | Sequence[str] | Sequence[HookPoint] | None,
    available: Sequence[str | HookPoint] | None,
    n_layers: int,
    module_path: Callable[[str], HookPoint | None] | None = None,
    *,
    where: str = "the model",
    fix: str = "pick one it has",
) -> list[HookPoint]:
    """The hook points `spec` names, among those `available` (None: any of the model's).

    One set of rules for every stage: no spec takes every available hook in the order given;
    a spec is parsed against the model's real depth `n_layers` (so `resid_post.-1` is its last
    layer); a wildcard (`SITE.*`) keeps the available hooks of that site; every other hook it
    names (a layer, a range, a canonical name) must be available, else the error names the
    first missing one, what `where` holds and the `fix`. The result is in forward-pass order.
    """
    have = None if available is None else [hook_point(h) for h in available]
    if (
        spec is None
        or (isinstance(spec, str) and not spec.strip())
        or (not isinstance(spec, str) and not list(spec))
    ):
        if have is None:
            raise SaelabError(
                "no hook points given: hooks='' names none; e.g. hooks='resid_post.12'"
            )
        return have
    if not isinstance(spec, str) and all(isinstance(h, HookPoint) for h in spec):
        parts: list[tuple[str, list[HookPoint]]] = [(h.name, [h]) for h in spec]  # type: ignore[union-attr]
    else:
        parts = [(p, parse_hook(p, n_layers, module_path)) for p in split_specs(spec)]  # type: ignore[arg-type]
    chosen: dict[HookPoint, None] = {}
    for text, points in parts:
        wildcard = bool(re.search(r"\.(\*|all)$", text.strip()))
        for hp in points:
            if have is not None and hp not in have:
                if wildcard:
                    continue
                held = ", ".join(h.name for h in have) or "nothing"
                raise SaelabError(f"{where} has no {hp.name} (it holds {held}): {fix}")
            chosen.setdefault(hp, None)
    if not chosen:
        held = ", ".join(h.name for h in have or []) or "nothing"
        raise SaelabError(f"hooks {spec!r} name none of the hooks {where} holds ({held}): {fix}")
    return sorted(chosen, key=lambda h: h.order)


def hook_names(hooks: Iterable[HookPoint]) -> list[str]:
    return [h.name for h in hooks]


def deepest_layer(hooks: Iterable[HookPoint]) -> int:
    return max(h.layer for h in hooks)
