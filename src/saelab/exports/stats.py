"""Full statistics exports of a run's contrast: every tested feature (or only the significant
ones) with the shape two-group studies report, as JSON or npz.

    {"format": "saelab.stats", "version": 1, "groups": {...}, "alpha": ..., "pool": ...,
     "layers": [{"hook", "layer", "n_features", "n_tested", "n_a", "n_b", "n_significant",
                 "significant_features": [...]}, ...],
     "features": {"hook": [...], "layer": [...], "feature": [...], "mean_a": [...], ...}}

`features` is columnar (one list per statistic, one entry per exported feature): compact for
31 layers x 32,768 features, and what numpy and pandas read directly. In npz the same arrays
are `features/<column>`, the per-layer numbers `layers/<key>`, each layer's significant
features the slice `layers/significant_offsets[i]:[i+1]` of `layers/significant_features`,
and the rest `meta` (a JSON string). `read_stats` reads either back into the JSON's shape.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from saelab.atomic import atomic_write_bytes
from saelab.errors import SaelabError
from saelab.stats.table import COLUMNS as TABLE_COLUMNS

FORMAT = "saelab.stats"
VERSION = 1
FORMATS = ("json", "npz")
#: the contrast table's statistics (stats.table.COLUMNS, less its bookkeeping columns), placed
#: by hook and layer, with the multiple-testing columns the contrast stage adds
COLUMNS = (
    "hook",
    "layer",
    *(c for c in TABLE_COLUMNS if c not in ("tested", "rate_test")),
    "q",
    "q_hook",
    "q_u",
    "q_rate",
    "significant",
)
LAYER_KEYS = ("hook", "layer", "n_features", "n_tested", "n_a", "n_b", "n_significant")


def hook_layer(hook: str) -> int:
    """The layer number in a hook name (blocks.12.hook_resid_post -> 12), -1 when none."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else -1


def _contrast(run: Path, source: str) -> Any:
    p = run / "stats" / "contrast.parquet"
    if not p.is_file():
        raise SaelabError(f"{run} has no contrast results: run `saelab contrast --run {run}` first")
    import pyarrow.parquet as pq

    t = pq.read_table(p).to_pandas()
    if "source" in t:
        if source not in set(t["source"]):
            raise SaelabError(
                f"{run}'s contrast has no {source!r} rows (it has"
                f" {', '.join(sorted(set(t['source'])))})"
            )
        t = t[t["source"] == source]
    return t


def _summary(run: Path, source: str) -> dict[str, Any]:
    name = "contrast_summary.json" if source == "codes" else f"contrast_summary_{source}.json"
    p = run / "stats" / name
    return json.loads(p.read_text()) if p.is_file() else {}


def collect_stats(
    run_path: str | Path, *, significant_only: bool = False, source: str = "codes"
) -> dict[str, Any]:
    """The export as a dict (columns as numpy arrays), before it is written."""
    run = Path(run_path)
    if not run.is_dir():
        raise SaelabError(f"run folder {run_path} does not exist; check the path")
    t = _contrast(run, source)
    s = _summary(run, source)
    t = t.assign(layer=[hook_layer(h) for h in t["hook"]])
    layers = []
    for hook in sorted(set(t["hook"]), key=lambda h: (hook_layer(h), h)):
        h = t[t["hook"] == hook]
        tested = h[h["tested"].astype(bool)]
        sig = tested[tested["significant"].astype(bool)].sort_values(["q", "feature"])
        layers.append(
            {
                "hook": hook,
                "layer": hook_layer(hook),
                "n_features": int(len(h)),
                "n_tested": int(len(tested)),
                "n_a": int(h["n_a"].iloc[0]) if len(h) else 0,
                "n_b": int(h["n_b"].iloc[0]) if len(h) else 0,
                "n_significant": int(len(sig)),
                "significant_features": [int(f) for f in sig["feature"]],
            }
        )
    rows = t[t["tested"].astype(bool)]
    if significant_only:
        rows = rows[rows["significant"].astype(bool)]
    rows = rows.assign(_l=rows["layer"]).sort_values(["_l", "hook", "feature"])
    features = {c: rows[c].to_numpy() for c in COLUMNS if c in rows}
    features["hook"] = rows["hook"].astype(str).to_numpy()
    groups = s.get("groups", {})
    return {
        "format": FORMAT,
        "version": VERSION,
        "run": str(run),
        "source": source,
        "groups": {
            "a": s.get("group_a"),
            "b": s.get("group_b"),
            "n_a": groups.get(s.get("group_a")),
            "n_b": groups.get(s.get("group_b")),
        },
        "alpha": s.get("alpha"),
        "pool": s.get("pool"),
        "min_active": s.get("min_active"),
        "significant_only": bool(significant_only),
        "n_exported": int(len(rows)),
        "layers": layers,
        "features": features,
    }


def json_value(v: Any) -> Any:
    """A numpy scalar as a plain Python value; NaN and infinities (not JSON) as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def export_stats(
    run_path: str | Path,
    fmt: str = "json",
    significant_only: bool = False,
    *,
    out: str | Path | None = None,
    source: str = "codes",
) -> Path:
    """Write the statistics export (default RUN/stats/contrast_stats.FMT); returns its path."""
    if fmt not in FORMATS:
        raise SaelabError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    d = collect_stats(run_path, significant_only=significant_only, source=source)
    suffix = "_significant" if significant_only else ""
    path = Path(out) if out else Path(run_path) / "stats" / f"contrast_stats{suffix}.{fmt}"
    feats = d.pop("features")
    if fmt == "json":
        d["features"] = {k: [json_value(x) for x in v.tolist()] for k, v in feats.items()}
        blob = (json.dumps(d, allow_nan=False, separators=(",", ":")) + "\n").encode()
    else:
        layers = d.pop("layers")
        arrays: dict[str, np.ndarray] = {f"features/{k}": v for k, v in feats.items()}
        arrays["features/hook"] = np.asarray(feats["hook"], dtype=str)
        for k in LAYER_KEYS:
            vals = [x[k] for x in layers]
            arrays[f"layers/{k}"] = np.asarray(vals, dtype=str if k == "hook" else np.int64)
        sig = [x["significant_features"] for x in layers]
        arrays["layers/significant_features"] = np.asarray(
            [f for s in sig for f in s], dtype=np.int64
        )
        arrays["layers/significant_offsets"] = np.cumsum([0] + [len(s) for s in sig]).astype(
            np.int64
        )
        arrays["meta"] = np.asarray(json.dumps(d, default=json_value))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        blob = buf.getvalue()
    atomic_write_bytes(path, blob)
    return path


def read_stats(path: str | Path) -> dict[str, Any]:
    """A statistics export (JSON or npz) back in the JSON's shape, columns as numpy arrays
    (null -> NaN in float columns)."""
    path = Path(path)
    if path.suffix == ".json":
        d = json.loads(path.read_text())
        feats = {}
        for k, v in d["features"].items():
            if any(isinstance(x, float) for x in v) or (v and any(x is None for x in v)):
                feats[k] = np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
            else:
                feats[k] = np.asarray(v)
        d["features"] = feats
        return d
    with np.load(path, allow_pickle=False) as z:
        d = json.loads(str(z["meta"]))
        d["features"] = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("features/")}
        offs = z["layers/significant_offsets"]
        sig = z["layers/significant_features"]
        n = len(z["layers/hook"])
        d["layers"] = [
            {
                **{
                    k: (str(z[f"layers/{k}"][i]) if k == "hook" else int(z[f"layers/{k}"][i]))
                    for k in LAYER_KEYS
                },
                "significant_features": [int(f) for f in sig[offs[i] : offs[i + 1]]],
            }
            for i in range(n)
        ]
    return d
