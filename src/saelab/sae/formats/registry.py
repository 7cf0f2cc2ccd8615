"""The table of SAE formats: each format module registers one `FormatSpec` (its files, how it
is told apart, its loader) when `saelab.sae.formats` imports it, so a new format is one file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import saelab.sae.formats.common as c

if TYPE_CHECKING:
    from saelab.sae.model import SAE


class Probe:
    """What a single local file holds, read at most once whatever many formats ask."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._pt: dict[str, Any] | None = None
        self._keys: list[str] | None = None

    def pt(self) -> dict[str, Any]:
        if self._pt is None:
            self._pt = c.read_pt(self.file)
        return self._pt

    def safetensors_keys(self) -> list[str]:
        if self._keys is None:
            self._keys = c.safetensors_keys(self.file)
        return self._keys


@dataclass(frozen=True)
class FormatSpec:
    """A pretrained-SAE file layout: what to fetch, what tells it apart, how to load it.

    Local folders are tried in `rank` order (the first whose `required` files are all there);
    a single local file is offered to each format's `sniff` in `sniff_rank` order. For a path
    inside a Hub repository (not listed), `name_re` / `hub_files` (a file name only this format
    has), `suffixes` (single files; `path_hint` moves it first) and `folder_hint` (a folder
    name it is usually published under, in `hint_rank` order) choose what to probe.
    """

    name: str  # e.g. "saelens", "gemma_scope", "llama_scope", "clt_layer"
    required: tuple[str, ...]  # relative to the SAE's folder; "" = the source itself is the file
    optional: tuple[str, ...] = ()  # used when present (sparsity, a parent folder's config)
    load: Callable[[Path, str | None], SAE] | None = field(default=None, compare=False)
    rank: int = 100
    hub_files: tuple[str, ...] = ()
    name_re: re.Pattern[str] | None = None
    suffixes: tuple[str, ...] = ()
    path_hint: re.Pattern[str] | None = None
    suffix_rank: int = 100
    folder_hint: re.Pattern[str] | None = None
    hint_rank: int = 100
    sniff: Callable[[Path, Probe], bool] | None = field(default=None, compare=False)
    sniff_rank: int = 100

    @property
    def is_file(self) -> bool:
        """True when the SAE is one file (the path itself), not a folder of files."""
        return self.required == ("",)

    @property
    def local_names(self) -> tuple[str, ...]:
        """Its files that live inside its folder (not "" and not a parent's file)."""
        return tuple(r for r in self.required + self.optional if r and not r.startswith(".."))


_REGISTRY: dict[str, FormatSpec] = {}


def register(spec: FormatSpec) -> FormatSpec:
    """Add a format (a module calls this once, at import); its name must be new."""
    if spec.name in _REGISTRY:
        raise ValueError(f"SAE format {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def formats() -> tuple[FormatSpec, ...]:
    """Every registered format, in detection priority order (folder layouts first)."""
    return tuple(sorted(_REGISTRY.values(), key=lambda f: (f.rank, f.name)))
