"""Everything the report shows, read from the run folder (nothing is recomputed).

Each reader returns plain data (dicts, lists, numpy columns) or None when the run lacks that
part; `missing_stages` says which command makes each missing part.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from saelab.errors import SaelabError
from saelab.inspect.store import load_cards
from saelab.run import RunFolder
from saelab.store import open_traces

STAGES = ("plan", "extract", "train", "encode", "contrast", "patch", "inspect")
COMMANDS = {
    "plan": "saelab plan --prompts FILE --hooks HOOKS --run {run}",
    "extract": "saelab extract --prompts FILE --hooks HOOKS --run {run}",
    "train": "saelab train --run {run}  (or encode with a pretrained SAE: saelab encode"
    " --saes hf://... --run {run})",
    "encode": "saelab encode --saes {run}/saes --run {run}",
    "contrast": "saelab contrast --run {run} --groups A,B",
    "patch": "saelab patch --run {run} --sweep top:5 --values 0,@20 --targets ' yes, no'",
    "inspect": "saelab inspect --run {run} --hook HOOK --features 12,845",
}
TABLE_COLUMNS = (
    "source",
    "hook",
    "feature",
    "tested",
    "active_a",
    "active_b",
    "mean_a",
    "mean_b",
    "cohen_d",
    "auc",
    "log10_p_t",
    "q",
    "q_hook",
    "significant",
)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def config_text(run: Path) -> str:
    p = run / "run.toml"
    return p.read_text() if p.is_file() else ""


def stages(run: Path) -> list[dict[str, Any]]:
    """Per stage in pipeline order: state, units, the plan beside what was measured."""
    manifest = RunFolder(run).read_manifest().get("stages", {})
    out = []
    for name in sorted(manifest, key=lambda n: STAGES.index(n) if n in STAGES else 99):
        if name == "report":  # the page being built (a stage too) is not what it reports on
            continue
        st = manifest[name]
        est = (st.get("plan") or {}).get("estimate") or {}
        meas = st.get("measured") or {}
        units = st.get("units") or {}
        seconds = meas.get("wall_seconds") or st.get("seconds")
        if seconds is None and units:
            secs = [_unit_seconds(u) for u in units.values() if isinstance(u, dict)]
            seconds = sum(s for s in secs if s is not None) or None
        out.append(
            {
                "stage": name,
                "complete": bool(st.get("complete")),
                "units": len(units),
                "planned": {
                    "ram": est.get("ram_bytes"),
                    "gpu": est.get("gpu_bytes"),
                    "disk": est.get("disk_bytes"),
                    "seconds": est.get("seconds"),
                },
                "measured": {
                    "ram": meas.get("peak_rss_bytes"),
                    "gpu": meas.get("peak_gpu_bytes"),
                    "disk": meas.get("disk_bytes"),
                    "seconds": seconds,
                },
                "updated": st.get("updated"),
            }
        )
    return out


def _unit_seconds(u: dict[str, Any]) -> float | None:
    """A unit's time: its own `seconds`, or a trained SAE's last progress time plus its
    final evaluation."""
    if isinstance(u.get("seconds"), (int, float)):
        return float(u["seconds"])
    hist = u.get("history") or []
    last = hist[-1].get("seconds") if hist and isinstance(hist[-1], dict) else None
    if not isinstance(last, (int, float)):
        return None
    return float(last) + float((u.get("metrics") or {}).get("seconds_eval") or 0.0)


def missing_stages(run: Path, present: set[str]) -> list[dict[str, str]]:
    """Stages the run has not run yet, each with the command that makes it."""
    out = []
    for name in STAGES:
        if name in present or (name == "train" and "encode" in present):
            continue  # a run encoded with a pretrained SAE needs no training
        out.append({"stage": name, "command": COMMANDS[name].format(run=run)})
    return out


def sae_quality(run: Path) -> list[dict[str, Any]]:
    """Per hook: the quality figures `train` measured, or what `encode` knows of a
    pretrained SAE (its format and mean L0 on the run's prompts)."""
    rf = RunFolder(run)
    cfg = rf.read_config().get("train", {})
    out: dict[str, dict[str, Any]] = {}
    for hook, u in rf.done_units("train").items():
        m = dict(u.get("metrics") or {})
        c = cfg.get(hook, {}) if isinstance(cfg.get(hook), dict) else {}
        hist = [[_finite(a), _finite(b), n] for a, b, n in m.pop("density_histogram", [])]
        out[hook] = {
            "hook": hook,
            "origin": "trained",
            "architecture": c.get("architecture"),
            "d_sae": c.get("d_sae"),
            "k": c.get("k"),
            **{k: _finite(v) for k, v in m.items() if not isinstance(v, (list, dict))},
            "warnings": list(m.get("warnings") or []),
            "density_histogram": hist,
        }
    for hook, u in rf.done_units("encode").items():
        row = out.setdefault(hook, {"hook": hook, "origin": "pretrained", "warnings": []})
        row.update(
            {
                "sae": u.get("sae"),
                "format": u.get("format"),
                "d_sae": u.get("d_sae"),
                "codes_mean_l0": u.get("mean_l0"),
                "codes_rows": u.get("rows"),
            }
        )
    return [out[h] for h in sorted(out)]


def contrast(run: Path) -> dict[str, Any] | None:
    """The contrast table's report columns (numpy arrays) and its summaries."""
    p = run / "stats" / "contrast.parquet"
    if not p.is_file():
        return None
    import pyarrow.parquet as pq

    t = pq.read_table(p)
    cols = {
        c: t.column(c).to_numpy(zero_copy_only=False) for c in TABLE_COLUMNS if c in t.column_names
    }
    if "source" not in cols:
        cols["source"] = np.full(t.num_rows, "codes", dtype=object)
    summaries = {}
    for s in sorted((run / "stats").glob("contrast_summary*.json")):
        d = json.loads(s.read_text())
        summaries[str(d.get("source", "codes"))] = d
    return {"columns": cols, "rows": t.num_rows, "summaries": summaries}


def patch(run: Path) -> dict[str, Any] | None:
    p = run / "patch" / "summary.parquet"
    if not p.is_file():
        return None
    import pyarrow.parquet as pq

    rows = pq.read_table(p).to_pylist()
    clean = [
        {
            k: (_finite(v) if not isinstance(v, list) else [_finite(x) for x in v])
            for k, v in r.items()
        }
        for r in rows
    ]
    n_results = 0
    res = run / "patch" / "results.parquet"
    if res.is_file():
        n_results = pq.read_metadata(res).num_rows
    labels = sorted({k[5:-1] for r in clean for k in r if k.startswith("rate[")})
    return {"summary": clean, "labels": labels, "n_results": n_results}


def traces(run: Path) -> dict[str, Any] | None:
    if not (run / "traces").is_dir():
        return None
    try:
        s = open_traces(run).summary()
    except SaelabError as e:
        return {"error": str(e)}
    return json.loads(json.dumps(s, default=str))


def cards(run: Path) -> dict[str, dict[str, Any]]:
    """Stored feature cards as {"HOOK:FEATURE": card}."""
    out = {}
    for hook, by_feature in load_cards(run).items():
        for f, card in by_feature.items():
            out[f"{hook}:{f}"] = json.loads(json.dumps(card, default=_json_default))
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
