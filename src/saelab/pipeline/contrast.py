"""`saelab contrast RUN --groups A,B`: which features separate two groups of prompts.

Per hook the pooled codes (or raw activations, `--source activations`) stream shard by shard
into float64 group sums and a feature-major list of non-zeros (saelab.stats); every statistic
follows from those without a dense prompts x features matrix. Benjamini-Hochberg runs once over
every tested (hook, feature) of the run (and again within each hook); untested features (dead,
constant, or firing in fewer than --min-active prompts, a label-free filter that keeps BH
valid) are counted, kept in the table with NaN statistics, and never enter the correction.

Outputs: RUN/stats/contrast.parquet (one row per source x hook x feature: a `--source
activations` run replaces only its own rows, so both sit side by side),
RUN/stats/contrast_summary.json (per hook: counts and the top features;
contrast_summary_activations.json for raw activations), and a printed table.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.errors import SaelabError
from saelab.pipeline.contrast_data import (
    POOLS,
    activation_blocks,
    code_blocks,
    read_labels,
)
from saelab.progress import Reporter, console, say
from saelab.run import RunFolder, atomic_write_bytes, atomic_write_json

STAGE = "contrast"
STATS_DIR = "stats"
TABLE = "contrast.parquet"
SUMMARY = "contrast_summary.json"
SOURCES = ("codes", "activations")


@dataclass
class ContrastOptions:
    run: str
    groups: str
    group_column: str = "group"
    pool: str = "max"
    hooks: str | None = None
    min_active: int = 5
    alpha: float = 0.05
    source: str = "codes"
    top: int = 20
    quiet: bool = False


def run_contrast(o: ContrastOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = RunFolder(o.run)
    if not run.path.is_dir():
        raise SaelabError(f"run folder {o.run} does not exist; check the path")
    if o.pool not in POOLS:
        raise SaelabError(f"--pool {o.pool!r} is not one of {', '.join(POOLS)}")
    if o.source not in SOURCES:
        raise SaelabError(f"--source {o.source!r} is not one of {', '.join(SOURCES)}")
    if not 0 < o.alpha < 1:
        raise SaelabError(f"--alpha {o.alpha} must be between 0 and 1, e.g. 0.05")
    if o.min_active < 1:
        raise SaelabError(f"--min-active {o.min_active} must be at least 1")
    labels = read_labels(run.path, o.groups, o.group_column)
    hooks, blocks_of = _inputs(o, run)
    from saelab.stats import hook_tables

    def labelled(hook: str):  # one hook's blocks, reduced to the prompts of the two groups
        for block in blocks_of(hook):
            a = labels.in_a[block.prompt_index]
            keep = a | labels.in_b[block.prompt_index]
            if keep.any():
                yield block.x[np.flatnonzero(keep)], a[keep]

    with Reporter("contrast", total=len(hooks), unit="hooks", quiet=o.quiet) as rep:
        per_hook = hook_tables(
            hooks, labelled, min_active=o.min_active, done=lambda _h: rep.advance(1)
        )
    table = _table(o, per_hook)
    summary = _summary(o, labels, per_hook, table)
    _write(run, table, summary)
    run.bind_config(STAGE, _conf(o), overwrite=True)
    run.update_stage(STAGE, complete=True, seconds=round(time.perf_counter() - t0, 3))
    _print(o, labels, table, summary)  # the result itself: printed even with --quiet
    return summary


def _conf(o: ContrastOptions) -> dict[str, Any]:
    return {
        "groups": o.groups,
        "group_column": o.group_column,
        "pool": o.pool,
        "hooks": o.hooks or "",
        "min_active": o.min_active,
        "alpha": o.alpha,
        "source": o.source,
    }


def _inputs(o: ContrastOptions, run: RunFolder) -> tuple[list[tuple[str, int]], Any]:
    """(hook, width) pairs to test and a function hook -> pooled blocks."""
    from saelab.store import open_activations

    store = None
    try:
        store = open_activations(run.path)
    except SaelabError:
        if o.source == "activations":
            raise
    skip_first = bool(store and store.attrs.get("prepend_bos", True)) and not (
        store and store.attrs.get("drop_bos", False)
    )
    if o.source == "activations":
        assert store is not None
        names = _pick(o.hooks, list(store.hooks), "activation store")
        return [(h, int(store.d_model[h])) for h in names], (
            lambda h: activation_blocks(store, h, o.pool, skip_first)
        )
    from saelab.store.codes import open_codes

    codes = open_codes(run.path)
    names = _pick(o.hooks, codes.hooks, "codes")
    return [(h, codes[h].d_sae) for h in names], (
        lambda h: code_blocks(codes, h, o.pool, skip_first)
    )


def _pick(spec: str | None, available: list[str], what: str) -> list[str]:
    if not spec:
        return sorted(available)
    from saelab.models.hooks import parse_hooks

    wanted = [h.name for h in parse_hooks(spec, 10_000)] if "*" not in spec else available
    missing = [h for h in wanted if h not in available]
    if missing:
        raise SaelabError(
            f"--hooks: the run's {what} has no {missing[0]} (it has {', '.join(available)})"
        )
    return wanted


def _table(o: ContrastOptions, per_hook: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """One flat table over all hooks, with BH across the run and within each hook."""
    from saelab.stats import bh_adjust

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


def _summary(
    o: ContrastOptions, labels: Any, per_hook: dict[str, Any], table: dict[str, Any]
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
            top.append({k: _py(table[k][i]) for k in _TOP_KEYS})
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


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _write(run: RunFolder, table: dict[str, Any], summary: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute)
    import pyarrow.parquet as pq

    arrays = {}
    for k, v in table.items():
        arrays[k] = pa.array(v.tolist() if v.dtype == object else v)
    new = pa.table(arrays)
    folder = run.path / STATS_DIR
    source = summary["source"]
    if (folder / TABLE).is_file():  # the other source's rows stay beside this one's
        old = pq.read_table(folder / TABLE)
        if old.schema.names == new.schema.names:
            keep = old.filter(pa.compute.not_equal(old["source"], source))
            new = pa.concat_tables([keep, new.cast(old.schema)])
    buf = io.BytesIO()
    pq.write_table(new, buf, compression="zstd")
    atomic_write_bytes(folder / TABLE, buf.getvalue())
    atomic_write_json(folder / summary_name(source), summary)


def summary_name(source: str) -> str:
    """contrast_summary.json for SAE codes, contrast_summary_activations.json beside it."""
    return SUMMARY if source == "codes" else f"contrast_summary_{source}.json"


def _print(o: ContrastOptions, labels: Any, table: dict[str, Any], summary: dict[str, Any]) -> None:
    from rich.table import Table

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
        f'table: {Path(o.run) / STATS_DIR / TABLE}; query it with saelab query {o.run} "..."',
        o.quiet,
    )


def _p(p: float, log10p: float) -> str:
    return f"{p:.2g}" if p > 0 else f"1e{log10p:.0f}"


def summary_json(run: str | Path) -> dict[str, Any]:
    return json.loads((Path(run) / STATS_DIR / SUMMARY).read_text())
