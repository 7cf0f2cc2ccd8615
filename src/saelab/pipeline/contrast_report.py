"""What `contrast` writes and prints from the per-hook statistics its units computed: one
table over every hook with Benjamini-Hochberg across the run and within each hook, a summary
per hook with the strongest features, and the printed table."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table

from saelab.atomic import atomic_write_bytes, atomic_write_json
from saelab.exports.stats import json_value
from saelab.progress import console, say
from saelab.run import RunFolder
from saelab.stats import bh_adjust

STATS_DIR = "stats"
TABLE = "contrast.parquet"
SUMMARY = "contrast_summary.json"


def build_table(o: Any, per_hook: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """One flat table over all hooks, with BH across the run and within each hook."""
    cols: dict[str, list[np.ndarray]] = {}
    for hook, st in per_hook.items():
        n = len(st["feature"])
        cols.setdefault("source", []).append(np.full(n, o.source, dtype=object))
        cols.setdefault("hook", []).append(np.full(n, hook, dtype=object))
        tested = st["tested"]
        q_hook = np.full(n, np.nan)
        q_hook[tested] = bh_adjust(st["p_t"][tested])
        cols.setdefault("q_hook", []).append(q_hook)
        for k, v in st.items():
            cols.setdefault(k, []).append(np.asarray(v))
    flat = {k: np.concatenate(v) for k, v in cols.items()}
    tested = flat["tested"].astype(bool)
    for src, dst in (("p_t", "q"), ("p_u", "q_u"), ("p_rate", "q_rate")):
        q = np.full(len(tested), np.nan)
        q[tested] = bh_adjust(flat[src][tested])
        flat[dst] = q
    flat["significant"] = tested & (flat["q"] < o.alpha)
    return flat


def summarise(
    o: Any, labels: Any, per_hook: dict[str, Any], table: dict[str, Any]
) -> dict[str, Any]:
    n_a, n_b = labels.sizes
    out: dict[str, Any] = {
        "groups": {labels.a: n_a, labels.b: n_b},
        "group_a": labels.a,
        "group_b": labels.b,
        "source": o.source,
        "pool": o.pool,
        "alpha": o.alpha,
        "min_active": o.min_active,
        "hooks": {},
    }
    hooks = table["hook"]
    for hook in per_hook:
        m = hooks == hook
        tested = table["tested"][m].astype(bool)
        active = table["active_a"][m] + table["active_b"][m]
        sig = table["significant"][m]
        order = _rank(table, m)
        top = []
        for i in order[: o.top]:
            top.append({k: json_value(table[k][i]) for k in _TOP_KEYS})
        out["hooks"][hook] = {
            "features": int(m.sum()),
            "tested": int(tested.sum()),
            "untested": int((~tested).sum()),
            "untested_dead": int(((~tested) & (active == 0)).sum()),
            "untested_rare": int(((~tested) & (active > 0) & (active < o.min_active)).sum()),
            "significant": int(sig.sum()),
            "top": top,
        }
    out["significant"] = int(table["significant"].sum())
    out["tested"] = int(table["tested"].sum())
    return out


_TOP_KEYS = (
    "hook", "feature", "p_t", "log10_p_t", "q", "q_hook", "cohen_d", "hedges_g", "mean_a",
    "mean_b", "sd_a", "sd_b", "active_a", "active_b", "auc", "p_u", "q_u",
)  # fmt: skip


def _rank(table: dict[str, Any], mask: np.ndarray) -> np.ndarray:
    """Indices of tested rows in `mask`, strongest first: by log10 p (finite when p
    underflows), then by |d|."""
    idx = np.flatnonzero(mask & table["tested"].astype(bool))
    lp = table["log10_p_t"][idx]
    d = np.abs(np.nan_to_num(table["cohen_d"][idx]))
    return idx[np.lexsort((-d, lp))]


def write_outputs(run: RunFolder, table: dict[str, Any], summary: dict[str, Any]) -> None:
    arrays = {}
    for k, v in table.items():
        arrays[k] = pa.array(v.tolist() if v.dtype == object else v)
    new = pa.table(arrays)
    folder = run.path / STATS_DIR
    source = summary["source"]
    if (folder / TABLE).is_file():  # the other source's rows stay beside this one's
        old = pq.read_table(folder / TABLE)
        if old.schema.names == new.schema.names:
            keep = old.filter(pc.not_equal(old["source"], source))
            new = pa.concat_tables([keep, new.cast(old.schema)])
    buf = io.BytesIO()
    pq.write_table(new, buf, compression="zstd")
    atomic_write_bytes(folder / TABLE, buf.getvalue())
    atomic_write_json(folder / summary_name(source), summary)


def summary_name(source: str) -> str:
    """contrast_summary.json for SAE codes, contrast_summary_activations.json beside it."""
    return SUMMARY if source == "codes" else f"contrast_summary_{source}.json"


def print_table(o: Any, labels: Any, table: dict[str, Any], summary: dict[str, Any]) -> None:
    n_a, n_b = labels.sizes
    out = console()
    out.print(
        f"[bold]contrast[/bold] {labels.a} ({n_a}) vs {labels.b} ({n_b}), {o.source}, pool"
        f" {o.pool}: {summary['tested']:,} tested, {summary['significant']:,} significant at"
        f" FDR {o.alpha} (BH over the run)"
    )
    for hook, h in summary["hooks"].items():
        out.print(
            f"  {hook}: {h['features']:,} features, {h['tested']:,} tested ({h['untested_dead']:,}"
            f" dead, {h['untested_rare']:,} below --min-active {o.min_active}),"
            f" {h['significant']:,} significant"
        )
    order = _rank(table, np.ones(len(table["hook"]), dtype=bool))[: o.top]
    t = Table(title="strongest features", title_justify="left")
    for col in ("hook", "feature", f"mean {labels.a}", f"mean {labels.b}", "fires",
                "d", "AUC", "p", "q"):  # fmt: skip
        t.add_column(col, justify="left" if col == "hook" else "right")
    for i in order:
        t.add_row(
            str(table["hook"][i]),
            str(int(table["feature"][i])),
            f"{table['mean_a'][i]:.3g}",
            f"{table['mean_b'][i]:.3g}",
            f"{int(table['active_a'][i])}/{int(table['active_b'][i])}",
            f"{table['cohen_d'][i]:+.2f}",
            f"{table['auc'][i]:.2f}",
            _p(table["p_t"][i], table["log10_p_t"][i]),
            f"{table['q'][i]:.2g}",
        )
    out.print(t)
    say(
        f'table: {Path(o.run) / STATS_DIR / TABLE}; query it with saelab query --run {o.run} "..."',
        o.quiet,
    )


def _p(p: float, log10p: float) -> str:
    return f"{p:.2g}" if p > 0 else f"1e{log10p:.0f}"


def summary_json(run: str | Path) -> dict[str, Any]:
    return json.loads((Path(run) / STATS_DIR / SUMMARY).read_text())
