"""What `saelab demo` says about its run, in plain words, every number read from the run's
own files: one note per stage (what it did or measured) and the strongest findings (a feature's
group difference from the contrast table, what setting it did in the patch summary)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from saelab.store.codes import CODES_DIR
from saelab.units import format_bytes

HOOK_DIR = "saes"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _units(run: Path, stage: str) -> list[dict[str, Any]]:
    m = _json(run / "manifest.json")
    return list(m.get("stages", {}).get(stage, {}).get("units", {}).values())


def sae_quality(run: Path) -> dict[str, dict[str, Any]]:
    """Per trained hook, the held-out figures `train` recorded (cfg.json metadata)."""
    out = {}
    for cfg in sorted((run / HOOK_DIR).glob("*/cfg.json")):
        c = _json(cfg)
        out[cfg.parent.name] = {**c.get("metadata", {}), "d_in": c.get("d_in"),
                                "d_sae": c.get("d_sae")}  # fmt: skip
    return out


def stage_notes(run: Path, name: str, settings: Any) -> str:
    """One phrase on what the stage did, from what it wrote."""
    try:
        return _NOTES[name](run, settings)
    except (OSError, KeyError, ValueError, IndexError, TypeError) as e:
        return f"(no summary: {type(e).__name__})"


def _plan(run: Path, s: Any) -> str:
    p = _json(run / "manifest.json").get("plans", {}).get("extract", {})
    e = p.get("estimate", {})
    fits = "fits" if p.get("verdict", {}).get("fits", True) else "does NOT fit"
    return (f"extract predicted {e.get('seconds', 0):.1f} s, {format_bytes(e.get('ram_bytes'))}"
            f" RAM, {format_bytes(e.get('disk_bytes'))} disk: {fits}")  # fmt: skip


def _extract(run: Path, s: Any) -> str:
    units = _units(run, "extract")
    prompts = sum(int(u["prompts"][1]) - int(u["prompts"][0]) for u in units)
    tokens = sum(int(u.get("tokens", 0) or 0) for u in units)
    size = sum(int(u.get("bytes", 0)) for u in units)
    return f"{prompts} statements, {tokens:,} tokens at resid_post.7, {format_bytes(size)}"


def _train(run: Path, s: Any) -> str:
    parts = []
    for q in sae_quality(run).values():
        parts.append(
            f"TopK {q['d_in']}->{q['d_sae']} k=32, {q.get('trained_tokens', 0):,} tokens: held-out"
            f" EV {q['explained_variance']:.3f}, L0 {q['l0']:.1f}, dead {q['dead_features']},"
            f" CE recovered {q.get('ce_loss_recovered', float('nan')):.3f}"
        )
    return "; ".join(parts)


def _encode(run: Path, s: Any) -> str:
    units = _units(run, "encode")
    rows = sum(int(u.get("rows", 0) or 0) for u in units)
    return f"{rows:,} token codes" if rows else f"codes in {CODES_DIR}"


def _contrast(run: Path, s: Any) -> str:
    summary = _json(run / "stats" / "contrast_summary.json")
    h = next(iter(summary.get("hooks", {}).values()))
    g = summary["groups"]
    return (f"{' vs '.join(f'{n} {k}' for k, n in g.items())}: {h['tested']} of {h['features']}"
            f" features tested, {h['significant']} significant (FDR)")  # fmt: skip


def _patch(run: Path, s: Any) -> str:
    summary = pq.read_table(run / "patch" / "summary.parquet").to_pylist()
    edits = {r["edit"] for r in summary if r["edit"] != "baseline"}
    n = next(r["n"] for r in summary if r["group"] == "all")
    return (
        f"{len(edits)} edits x {n} statements + baseline, {s.generate} new tokens each,"
        " target log-probs and labels vs baseline"
    )


def _inspect(run: Path, s: Any) -> str:
    n = len(list((run / "inspect").rglob("*.parquet")))
    return f"feature cards of the {s.top} strongest features ({n} tables)"


def _report(run: Path, s: Any) -> str:
    p = run / "report" / "index.html"
    return f"one self-contained page, {format_bytes(p.stat().st_size)}"


_NOTES = {
    "plan": _plan,
    "extract": _extract,
    "train": _train,
    "encode": _encode,
    "contrast": _contrast,
    "patch": _patch,
    "inspect": _inspect,
    "report": _report,
}


def findings(run: Path, top: int, layer: int, steer: float) -> list[str]:
    """The `top` strongest contrast features in plain words, each with what steering it
    `@steer` did to the statements of the group it fires less on (the patch summary)."""
    t = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    t = t[t["source"] == "codes"] if "source" in t else t
    t = t[t["tested"]].sort_values(["log10_p_t", "feature"]).head(top)
    summary = _json(run / "stats" / "contrast_summary.json")
    a, b = summary.get("group_a", "A"), summary.get("group_b", "B")
    p = run / "patch" / "summary.parquet"
    patch = pq.read_table(p).to_pylist() if p.is_file() else []
    out = []
    for _, r in t.iterrows():
        f, d = int(r["feature"]), float(r["cohen_d"])
        text = (f"feature {f} at layer {layer} fires on {int(r['active_a'])}/{int(r['n_a'])} {a}"
                f" and {int(r['active_b'])}/{int(r['n_b'])} {b} statements (d = {d:.1f},"
                f" q = {_p(r['q'])})")  # fmt: skip
        other = b if d > 0 else a
        edit = f"{r['hook']}:{f}@{steer:g}"
        row = next((p for p in patch if p["edit"] == edit and p["group"] == other), None)
        if row is not None:
            text += "; " + _effect(row, steer, other)
        out.append(text)
    return out


def _effect(r: dict[str, Any], steer: float, other: str) -> str:
    d, ci = r.get("delta_logp_diff"), r.get("ci95") or [math.nan, math.nan]
    toward = "toward ' The' (over ' I')" if (d or 0) >= 0 else "toward ' I' (over ' The')"
    n = int(r["n"])
    text = (f"steering it @{steer:g} in {n} {other} statements moves the next token {toward}"
            f" by {abs(d or 0):.2f} nats (95% CI {ci[0]:+.2f} to {ci[1]:+.2f}; mean KL"
            f" {r['mean_kl']:.2f} from the unpatched next-token distribution)")  # fmt: skip
    labels = [k[len("fisher_p[") : -1] for k in r if k.startswith("fisher_p[") and r[k] is not None]
    if labels:  # the label whose rate changed most (smallest Fisher p; the report has all)
        lab = min(labels, key=lambda x: (r[f"fisher_p[{x}]"], x))
        k, kb = round(r[f"rate[{lab}]"] * n), round(r[f"baseline_rate[{lab}]"] * n)
        said = "say neither 'The' nor 'I'" if lab == "other" else f"say '{lab}'"
        text += (f"; {k}/{n} continuations {said} vs {kb}/{n} unpatched"
                 f" (Fisher p = {_p(r[f'fisher_p[{lab}]'])})")  # fmt: skip
    return text


def _p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}"
