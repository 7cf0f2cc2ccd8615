"""Hook-point names: canonical TransformerLens-style names, short forms and ranges.

saelab names every activation it reads or edits with the TransformerLens/SAELens convention
(`blocks.{L}.hook_resid_post`), because pretrained SAE configs carry those names and then
resolve without translation. Users may type short forms (`resid_post.12`, `resid_post.0-29`,
`resid_post.-1`, `mlp_out.*`) or Hugging Face module paths (`model.layers.12`); all become
`HookPoint`s here. Module paths need the model's adapter, so they are resolved through it.

Any module of any model can also be read directly by its path: `encoder.layers.8.ff.hook_output`
(the module's output; element 0 of a tuple), `...hook_output_1` (element 1), `...hook_input`
(its first positional input; `hook_input_2` the third). Such a hook point is a value like the
others (site "module"): it parses without the model, so stored names round-trip, and its
`layer` is the first number in the path (the block it sits in; 0 outside the blocks), used
for sorting only.
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
#: The site of a hook point named by module path; it sorts mid-block (after resid_mid).
MODULE_SITE = "module"
_MODULE_ORDER = _SITE_ORDER["resid_mid"]
IOS = ("input", "output")
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
    """One activation site: a layer and what is read there.

    Canonical sites are `HookPoint(layer, site)`. A module-path hook point
    (`HookPoint.at_module("encoder.layers.8.ff")`) also carries the module path, whether its
    input or output is read, and which tuple element (None: the tensor itself, or element 0).
    """

    layer: int
    site: str
    module: str | None = None
    io: str = "output"
    index: int | None = None

    def __post_init__(self) -> None:
        if (self.site == MODULE_SITE) != (self.module is not None):
            raise ValueError("a module path goes with site 'module', and only there")
        if self.io not in IOS:
            raise ValueError(f"io must be one of {IOS}, got {self.io!r}")
        if self.index is not None and self.index < 0:
            raise ValueError(f"tuple index must be >= 0, got {self.index}")

    @classmethod
    def at_module(cls, path: str, io: str = "output", index: int | None = None) -> HookPoint:
        """The hook point reading module `path` (dotted, as `named_modules` spells it)."""
        if not _MODULE_PATH.fullmatch(path):
            raise SaelabError(
                f"module path {path!r} is not a dotted module path such as encoder.layers.8"
            )
        return cls(module_layer(path), MODULE_SITE, path, io, index)

    @property
    def is_module(self) -> bool:
        return self.module is not None

    @property
    def name(self) -> str:
        """The canonical name, e.g. `blocks.12.hook_resid_post` or `enc.layers.8.hook_output`."""
        if self.module is not None:
            tail = "" if self.index is None else f"_{self.index}"
            return f"{self.module}.hook_{self.io}{tail}"
        if self.site == "pattern":
            return f"blocks.{self.layer}.attn.hook_pattern"
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def short(self) -> str:
        return self.name if self.module is not None else f"{self.site}.{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass: hooks sort by when they fire."""
        if self.module is not None:
            return (self.layer, _MODULE_ORDER)
        return (self.layer, _SITE_ORDER[self.site])

    def __str__(self) -> str:
        return self.name


_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*")
_MODULE_HOOK = re.compile(
    r"^(?P<path>[A-Za-z_]\w*(?:\.\w+)*)\.hook_(?P<io>input|output)(?:_(?P<i>\d+))?$"
)


def module_layer(path: str) -> int:
    """The block a module path sits in: its first all-digit component (0 when none)."""
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return 0


def parse_module_hook(text: str) -> HookPoint | None:
    """`PATH.hook_output[_N]` / `PATH.hook_input[_N]` as a hook point; None for other text."""
    m = _MODULE_HOOK.match(text.strip())
    if not m:
        return None
    i = m.group("i")
    return HookPoint.at_module(m.group("path"), m.group("io"), None if i is None else int(i))


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


def _layer(raw: int, n_layers: int, spec: str) -> int:
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
    n_layers: int,
    module_path: Callable[[str], HookPoint | None] | None = None,
) -> list[HookPoint]:
    """Expand one hook spec into hook points (a range gives several)."""
    text = spec.strip()
    mod = parse_module_hook(text)
    if mod is not None:
        return [mod]
    m = _CANON.match(text)
    if m:
        site = "pattern" if m.group(2) is None else _site(m.group(2), spec)
        return [HookPoint(_layer(int(m.group(1)), n_layers, spec), site)]
    m = _SHORT.match(text)
    if m and (m.group(1) in _SITE_ORDER or m.group(1) in _ALIASES):
        site = _site(m.group(1), spec)
        sel = m.group(2)
        if sel in ("*", "all"):
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
            if not hp.is_module:
                _layer(hp.layer, n_layers, spec)
            return [hp]
    if m and "." not in m.group(1):
        _site(m.group(1), spec)  # SITE.L with an unknown SITE: say which sites exist
    raise SaelabError(
        f"cannot read hook {spec!r}: write blocks.L.hook_SITE, SITE.L, SITE.A-B or SITE.* with"
        f" SITE one of {', '.join(SITES)}, a module path such as model.layers.L, or"
        " PATH.hook_output / PATH.hook_input for any module"
    )


def parse_hooks(
    spec: str | Sequence[str],
    n_layers: int,
    module_path: Callable[[str], HookPoint | None] | None = None,
) -> list[HookPoint]:
    """Parse, expand, de-duplicate and sort hook specs into forward-pass order."""
    parts = split_specs(spec)
    if not parts:
        raise SaelabError("no hook points given: pass --hooks, e.g. --hooks resid_post.12")
    seen: dict[HookPoint, None] = {}
    for part in parts:
        for hp in parse_hook(part, n_layers, module_path):
            seen.setdefault(hp, None)
    return sorted(seen, key=lambda h: h.order)


def hook_names(hooks: Iterable[HookPoint]) -> list[str]:
    return [h.name for h in hooks]


def deepest_layer(hooks: Iterable[HookPoint]) -> int:
    """The deepest block a capture must reach (module hook points count by `layer`)."""
    return max(h.layer for h in hooks)
