"""Which edits `saelab patch` runs: explicit `--edits`, or a sweep over `contrast`'s strongest
features with `--values` (0 ablates, x2 doubles, mean_A / mean_B clamp to a group's mean from
the contrast table, @A steers, +=D shifts). Each edit set becomes one row per prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.errors import SaelabError
from saelab.patch.edits import Edit, parse_edits

VALUE_GRAMMAR = "0 (ablate), xS (scale), mean_A / mean_B (a group's mean), @A (steer), +=D (shift)"


@dataclass(frozen=True)
class EditSet:
    """One patched condition: its name (the specs joined) and its edits."""

    name: str
    edits: tuple[Edit, ...]


def from_specs(specs: list[str], n_layers: int) -> list[EditSet]:
    """`--edits` specs: all of them applied together, as one condition."""
    edits = parse_edits(specs, n_layers)
    return [EditSet(" ".join(e.spec for e in edits), tuple(edits))]


def parse_sweep(spec: str) -> tuple[int, bool]:
    """`top:N` (the N strongest overall) or `top:N/hook` (N per hook)."""
    m = re.fullmatch(r"top:(\d+)(/hook)?", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise SaelabError(f"--sweep {spec!r}: write top:N (overall) or top:N/hook (per hook)")
    return int(m.group(1)), bool(m.group(2))


def from_sweep(run: Path, spec: str, values: str) -> list[EditSet]:
    """One single-feature edit set per (strong feature, value)."""
    n, per_hook = parse_sweep(spec)
    table = _contrast(run)
    tested = table[table["tested"]]
    if tested.empty:
        raise SaelabError(f"{run}: contrast tested no feature; nothing to sweep")
    tested = tested.sort_values(["log10_p_t", "feature"])
    picked = tested.groupby("hook", sort=False).head(n) if per_hook else tested.head(n)
    out = []
    for _, row in picked.iterrows():
        for v in _values(values):
            out.append(_edit_set(row, v))
    return out


def _contrast(run: Path) -> Any:
    import pyarrow.parquet as pq

    p = run / "stats" / "contrast.parquet"
    if not p.is_file():
        raise SaelabError(
            f"--sweep needs contrast results: run `saelab contrast --run {run}` first"
        )
    t = pq.read_table(p).to_pandas()
    return t[t["source"] == "codes"] if "source" in t else t


def _values(spec: str) -> list[str]:
    items = [v.strip() for v in spec.split(",") if v.strip()]
    if not items:
        raise SaelabError(f"--values {spec!r} is empty; use e.g. 0,x2,mean_A ({VALUE_GRAMMAR})")
    for v in items:
        if not re.fullmatch(r"0|x-?[\d.]+|mean_[AB]|@-?[\d.]+|\+=-?[\d.]+|=-?[\d.]+", v):
            raise SaelabError(f"--values: {v!r} is not one of {VALUE_GRAMMAR}")
    return items


def _edit_set(row: Any, value: str) -> EditSet:
    hook, f = str(row["hook"]), int(row["feature"])
    if value == "0":
        e = Edit(hook, f, "set", 0.0)
    elif value.startswith("x"):
        e = Edit(hook, f, "scale", float(value[1:]))
    elif value.startswith("mean_"):
        mean = float(row["mean_a" if value.endswith("A") else "mean_b"])
        e = Edit(hook, f, "set", mean if np.isfinite(mean) else 0.0)
    elif value.startswith("@"):
        e = Edit(hook, f, "steer", float(value[1:]))
    elif value.startswith("+="):
        e = Edit(hook, f, "shift", float(value[2:]))
    else:
        e = Edit(hook, f, "set", float(value[1:]))
    return EditSet(f"{e.spec} ({value})" if value.startswith("mean_") else e.spec, (e,))


def compile_outcomes(specs: list[str] | None) -> list[tuple[str, re.Pattern[str]]]:
    """`--outcome LABEL=REGEX ...`: the first label whose regex matches a generation wins."""
    out = []
    for s in specs or []:
        label, sep, rx = s.partition("=")
        if not sep or not label.strip() or not rx:
            raise SaelabError(f"--outcome {s!r}: write LABEL=REGEX, e.g. bet='(?i)\\bbet\\b'")
        try:
            out.append((label.strip(), re.compile(rx)))
        except re.error as e:
            raise SaelabError(f"--outcome {s!r}: the regex does not compile ({e})") from e
    return out
