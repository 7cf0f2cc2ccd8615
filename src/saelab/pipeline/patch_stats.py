"""Per edit set (and per prompt group): what the edit changed against the unpatched baseline.

The baseline and every edit run on the same prompts, so changes are paired per prompt: the
mean change of the target log-prob difference gets a t-based 95% interval over prompts; label
rates are compared with Fisher's exact test on (label, not label) x (edited, baseline).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saelab.atomic import atomic_write_bytes


def summarise(
    results: list[dict[str, Any]], targets: list[str], labels: list[str]
) -> list[dict[str, Any]]:
    from scipy import stats

    base = {r["prompt_id"]: r for r in results if r["edit"] == "baseline"}
    edits = list(dict.fromkeys(r["edit"] for r in results))
    groups = sorted({str(r["group"]) for r in results if r["group"] is not None})
    out = []
    for edit in edits:
        mine = [r for r in results if r["edit"] == edit]
        for g in ["all", *groups]:
            rows = mine if g == "all" else [r for r in mine if str(r["group"]) == g]
            if not rows:
                continue
            s: dict[str, Any] = {"edit": edit, "group": g, "n": len(rows)}
            s["mean_kl"] = float(np.mean([r["kl"] for r in rows]))
            if len(targets) >= 2:
                d = np.array([r["logp_diff"] - base[r["prompt_id"]]["logp_diff"] for r in rows])
                s["delta_logp_diff"] = float(d.mean())
                if len(d) > 1 and d.std(ddof=1) > 0:
                    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                    s["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
                else:
                    s["ci95"] = [float(d.mean()), float(d.mean())]
            changes, ps = 0, []
            for lab in [*labels, "other"] if labels else []:
                k = sum(r["label"] == lab for r in rows)
                kb = sum(base[r["prompt_id"]]["label"] == lab for r in rows)
                s[f"rate[{lab}]"] = k / len(rows)
                s[f"baseline_rate[{lab}]"] = kb / len(rows)
                p = stats.fisher_exact([[k, len(rows) - k], [kb, len(rows) - kb]])[1]
                s[f"fisher_p[{lab}]"] = float(p)
                ps.append(float(p))
            if labels:
                changes = sum(r["label"] != base[r["prompt_id"]]["label"] for r in rows)
                s["label_changes"] = changes
                s["min_fisher_p"] = min(ps)
            out.append(s)
    return out


def table_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    return buf.getvalue()


def write_tables(
    folder: Path, results: list[dict[str, Any]], summary: list[dict[str, Any]]
) -> None:
    atomic_write_bytes(folder / "results.parquet", table_bytes(results))
    flat = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()} for s in summary]
    atomic_write_bytes(folder / "summary.parquet", table_bytes(flat))
