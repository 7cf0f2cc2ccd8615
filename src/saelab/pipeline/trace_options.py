"""Checking the options of `extract --generate`: generation, stop strings, attention layers.

Kept apart from extract_job so the plain activation path stays readable; everything here
fails before any weights load, with the flag and the fix in one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from saelab.errors import SaelabError

TRACE_POSITIONS = ("all", "generated")


def parse_index_list(spec: str, n: int, flag: str, what: str) -> list[int]:
    """'0,5,10-12' / 'all' / '*' -> sorted unique indices below n; anything else is an error."""
    text = spec.strip().lower()
    if text in ("all", "*"):
        return list(range(n))
    out: set[int] = set()
    for part in (p for p in re.split(r"[,\s]+", text) if p):
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise SaelabError(f"{flag} {spec!r}: write {what} numbers like 0,5,10-12 or 'all'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        lo = lo + n if lo < 0 else lo
        hi = hi + n if hi < 0 else hi
        if lo > hi:
            raise SaelabError(f"{flag} {spec!r}: range {part} runs backwards")
        if not (0 <= lo and hi < n):
            raise SaelabError(
                f"{flag} {spec!r}: {what} {part} does not exist (the model has {n},"
                f" numbered 0-{n - 1})"
            )
        out.update(range(lo, hi + 1))
    if not out:
        raise SaelabError(f"{flag} {spec!r} names no {what}; e.g. {flag} 0,5")
    return sorted(out)


def check_generation(o: Any, n_layers: int, n_heads: int) -> tuple[list[int], list[int] | None]:
    """Validate generation options; return (attention layers, kept heads or None for all)."""
    if o.generate is None:
        for flag, value in (
            ("--attentions", o.attentions),
            ("--heads", o.heads),
            ("--stop", o.stop),
        ):
            if value:
                raise SaelabError(f"{flag} applies to generation traces: add --generate N")
        if o.positions == "generated":
            raise SaelabError("--positions generated needs --generate N")
        return [], None
    if isinstance(o.generate, bool) or int(o.generate) < 1:
        raise SaelabError(f"--generate {o.generate} must be at least 1 (new tokens per prompt)")
    if o.positions not in TRACE_POSITIONS:
        raise SaelabError(
            f"--positions {o.positions!r} with --generate: use all (prompt and answer) or"
            " generated (answer only)"
        )
    if o.temperature < 0:
        raise SaelabError(f"--temperature {o.temperature} must be >= 0 (0 = greedy)")
    if not 0 < o.top_p <= 1:
        raise SaelabError(f"--top-p {o.top_p} must be in (0, 1]")
    for s in o.stop or []:
        if s == "":
            raise SaelabError(
                "--stop '' is empty: give the text that ends an answer, e.g. --stop '\\n'"
            )
    layers = (
        parse_index_list(o.attentions, n_layers, "--attentions", "layer") if o.attentions else []
    )
    heads = None
    if o.heads:
        if not layers:
            raise SaelabError("--heads selects heads of --attentions layers: add --attentions")
        heads = parse_index_list(o.heads, n_heads, "--heads", "head")
    return layers, heads


def clean_answer(text: str, stops: Sequence[str] | None) -> str:
    """The answer up to the first stop string (the earliest of any of them)."""
    cut = len(text)
    for s in stops or []:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]
