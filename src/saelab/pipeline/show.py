"""`saelab show --run RUN`: what a run holds and how its plan compared with reality."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from saelab.errors import SaelabError
from saelab.pipeline.options import RunOptions, option
from saelab.pipeline.show_units import units_table, workers_line
from saelab.progress import console
from saelab.run import RunFolder
from saelab.store import open_activations, open_traces
from saelab.units import format_bytes, format_seconds


class ShowConfig(RunOptions):
    """Describe a run: its stages, its activation store, plan against measurement."""

    units: bool = option(False, "list every unit: the worker that ran it, its time and size")


def show_run(path: str | Path, units: bool = False) -> None:
    run = RunFolder(path)
    if not run.path.is_dir():
        raise SaelabError(f"run folder {path} does not exist; check the path")
    if not run.exists() and not any((run.path / d).is_dir() for d in ("activations", "traces")):
        raise SaelabError(f"{path} is not a saelab run folder (no manifest.json)")
    out = console()
    cfg = run.read_config()
    manifest = run.read_manifest()
    out.print(f"[bold]run[/bold] {run.path}")
    names = ("plan", "extract", "train", "encode", "contrast", "patch")
    order = {n: i for i, n in enumerate(names)}
    stages = sorted(manifest.get("stages", {}).items(), key=lambda kv: order.get(kv[0], 99))
    for name, stage in stages:
        c = cfg.get(name, {})
        done = stage.get("units", {})
        state = "complete" if stage.get("complete") else "incomplete (rerun to resume)"
        out.print(f"[bold]{name}[/bold]: {state}; {len(done)} unit(s) done")
        workers_line(out, done)
        if units and done:
            units_table(out, name, done)
        if name == "train":
            _train_table(out, c, done)
            continue
        if name == "encode":
            _encode_table(out, c, stage, done)
            continue
        if name == "contrast":
            _contrast_line(out, run.path)
            continue
        if name == "patch":
            out.print(
                f"  {stage.get('edit_sets', 0)} edit set(s) x {stage.get('prompts', 0)} prompts:"
                " RUN/patch/results.parquet, summary.parquet (saelab query: patch_results,"
                " patch_summary)"
            )
            continue
        if c:
            out.print(
                f"  model {c.get('model')}, prompts {c.get('prompts')} ({c.get('n_prompts')}),"
                f" positions {c.get('positions')}, dtype {c.get('dtype')} ->"
                f" {c.get('store_dtype')}"
                + (f", keep_bits {c['keep_bits']}" if c.get("keep_bits") else "")
            )
        _plan_vs_measured(out, stage)
    if (run.path / "activations").is_dir():
        _store_table(out, run.path)
    if (run.path / "traces").is_dir():
        _traces_table(out, run.path)


def _train_table(out: Console, cfg: dict, units: dict) -> None:
    """One row per trained SAE: its shape and the quality figures `train` measured."""
    t = Table(title="SAEs (RUN/saes/<hook>)", title_justify="left")
    cols = ("hook", "arch", "d_sae", "k", "tokens", "EV", "L0", "dead", "dense", "CE rec.", "KL")
    for col in cols:
        t.add_column(col, justify="left" if col == "hook" else "right")
    warnings = []
    trained = {hook: h for u in units.values() for hook, h in u.get("hooks", {}).items()}
    for hook, u in trained.items():
        m, c = u.get("metrics", {}), cfg.get(hook, {})
        t.add_row(
            hook,
            str(c.get("architecture", "?")),
            f"{c.get('d_sae', 0):,}",
            str(c.get("k") or "-"),
            f"{m.get('train_tokens', 0):,}",
            _num(m.get("explained_variance")),
            _num(m.get("l0"), 1),
            f"{m.get('dead_features', 0):,} ({100 * m.get('dead_fraction', 0):.1f}%)",
            f"{m.get('dense_features', 0):,}",
            _num(m.get("ce_loss_recovered")),
            _num(m.get("kl_div"), 4),
        )
        warnings += [f"{hook}: {w}" for w in m.get("warnings", [])]
    out.print(t)
    for w in warnings:
        out.print(f"  [bold red]WARNING[/bold red] {w}")


def _encode_table(out: Console, cfg: dict, stage: dict, units: dict) -> None:
    """One row per encoded hook: which SAE, how sparse, how big (RUN/codes/<hook>/)."""
    t = Table(title=f"codes (RUN/codes/<hook>), positions {cfg.get('positions', '?')}",
              title_justify="left")  # fmt: skip
    for col in ("hook", "SAE", "format", "d_sae", "rows", "mean L0", "bytes"):
        t.add_column(col, justify="left" if col in ("hook", "SAE", "format") else "right")
    for key, u in units.items():
        t.add_row(
            str(u.get("hook") or key),
            str(u.get("sae", "?")),
            str(u.get("format", "?")),
            f"{u.get('d_sae', 0):,}",
            f"{u.get('rows', 0):,}",
            _num(u.get("mean_l0"), 1),
            format_bytes(u.get("bytes")),
        )
    out.print(t)
    f = stage.get("fetch") or {}
    if f.get("downloads") or f.get("cache_hits"):
        out.print(
            f"  downloads {f['downloads']} ({format_bytes(f.get('bytes_downloaded'))}), peak"
            f" hub cache {format_bytes(f.get('peak_cache_bytes'))}"
        )


def _contrast_line(out: Console, run: Path) -> None:
    for p in sorted((run / "stats").glob("contrast_summary*.json")):
        s = json.loads(p.read_text())
        n = s.get("groups", {})
        a, b = s.get("group_a"), s.get("group_b")
        out.print(
            f"  {a} ({n.get(a)}) vs {b} ({n.get(b)}), {s.get('source')}, pool {s.get('pool')}:"
            f" {s.get('tested', 0):,} tested, {s.get('significant', 0):,} significant at FDR"
            f" {s.get('alpha')} (RUN/stats/contrast.parquet; saelab query)"
        )


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _plan_vs_measured(out: Console, stage: dict) -> None:
    est = stage.get("plan", {}).get("estimate")
    meas = stage.get("measured")
    if not est:
        return
    t = Table(title="plan vs measured", title_justify="left")
    for col in ("", "peak RAM", "disk", "time"):
        t.add_column(col, justify="right")
    t.add_row(
        "planned",
        format_bytes(est.get("ram_bytes")),
        format_bytes(est.get("disk_bytes")),
        format_seconds(est.get("seconds")),
    )
    if meas:
        t.add_row(
            "measured",
            format_bytes(meas.get("peak_rss_bytes")),
            format_bytes(meas.get("disk_bytes")),
            format_seconds(meas.get("wall_seconds")),
        )
    out.print(t)


def _store_table(out: Console, path: Path) -> None:
    store = open_activations(path)
    s = store.summary()
    total = RunFolder(path).read_config().get("extract", {}).get("n_prompts")
    done = f"{s['n_prompts']} of {total}" if total else str(s["n_prompts"])
    out.print(
        f"[bold]activations[/bold]: {done} prompts done, {s['n_tokens']:,} tokens,"
        f" {s['n_rows']:,} rows per hook, {s['shards']} shard(s); positions {s['positions']},"
        f" dtype {s['dtype']}" + (f", keep_bits {s['keep_bits']}" if s.get("keep_bits") else "")
    )
    t = Table()
    for col in ("hook", "shape", "dtype", "on disk", "raw", "ratio"):
        t.add_column(col, justify="left" if col == "hook" else "right", no_wrap=True)
    for hook, h in s["hooks"].items():
        t.add_row(
            hook,
            " x ".join(str(x) for x in h["shape"]),
            h["dtype"],
            format_bytes(h["bytes_on_disk"]),
            format_bytes(h["bytes_raw"]),
            f"{h['ratio']:.3f}",
        )
    t.add_row(
        "total",
        "",
        "",
        format_bytes(s["bytes_on_disk"]),
        format_bytes(s["bytes_raw"]),
        f"{s['ratio']:.3f}",
    )
    out.print(t)


def _traces_table(out: Console, path: Path) -> None:
    s = open_traces(path).summary()
    a, p = s["answer_len"], s["prompt_len"]
    out.print(
        f"[bold]traces[/bold]: {s['n_traces']} traces in {s['shards']} shard(s); answer tokens"
        f" mean {a['mean']:.1f} (min {a['min']}, max {a['max']}), prompt tokens mean"
        f" {p['mean']:.1f}; hidden states at {s['positions']} positions, dtype {s['dtype']}"
        + (f", keep_bits {s['keep_bits']}" if s.get("keep_bits") else "")
    )
    t = Table()
    for col in ("hook / layer", "per token", "dtype", "on disk", "raw", "ratio"):
        t.add_column(col, justify="left" if col == "hook / layer" else "right", no_wrap=True)
    for hook, h in s["hooks"].items():
        t.add_row(
            hook,
            str(h["shape_per_token"][0]),
            h["dtype"],
            format_bytes(h["bytes"]),
            format_bytes(h["bytes_raw"]),
            f"{h['bytes_raw'] / max(h['bytes'], 1):.3f}",
        )
    heads = s.get("heads") or []
    for layer, at in s.get("attentions", {}).items():
        t.add_row(
            f"attentions {layer} ({len(heads)} heads, packed)",
            "T x T",
            at["dtype"],
            format_bytes(at["bytes"]),
            format_bytes(at["bytes_raw"]),
            f"{at['bytes_raw'] / max(at['bytes'], 1):.3f}",
        )
    out.print(t)
    per = s["bytes_per_trace"]
    out.print(
        "  bytes per trace: "
        + ", ".join(f"{k} {format_bytes(v)}" for k, v in per.items())
        + f"; total {format_bytes(s['bytes_on_disk'])} on disk, compression ratio"
        f" {s['ratio']:.2f} against dense {s['dtype']} (attention maps as full squares)"
    )
