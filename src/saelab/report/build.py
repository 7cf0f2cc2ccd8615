"""`build_report(RUN)` -> RUN/report/index.html: one self-contained page, no network needed.

Libraries, inlined at build time from the installed Python packages (nothing is committed
or fetched): plotly.js from the `plotly` package draws every figure; DataTables (the build
that the `itables` package ships) runs the feature table, paged and rendered lazily
(`deferRender`), so 100,000 rows sort and filter in the browser without 100,000 DOM rows.
What those libraries do not do (feature cards with token shading, filters wired to the
table) is the small `static/app.js`.

Data travels as JSON blocks that the page parses when it needs them; the feature table is
columnar with numbers to 5 significant digits, which keeps a 100,000-row table to a few MB.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import time
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from saelab import __version__
from saelab.errors import SaelabError
from saelab.report import collect, figures, sections
from saelab.run import atomic_write_text

STATIC = Path(__file__).with_name("static")
REPORT_DIR = "report"


def _package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SaelabError(
            f"the report needs the Python package {package}: pip install 'saelab[report]'"
            " (or ./scripts/setup.sh)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise SaelabError(f"{package} is installed but {'/'.join(parts)} is missing; reinstall it")
    return path


def plotly_js() -> str:
    return _package_file("plotly", "package_data", "plotly.min.js").read_text(encoding="utf-8")


def datatables_bundle() -> tuple[str, str]:
    """(base64 of the DataTables ES module, its CSS) from the itables package."""
    js = _package_file("itables", "html", "dt_bundle.js")
    css = js.with_suffix(".css").read_text(encoding="utf-8")
    return base64.b64encode(js.read_bytes()).decode("ascii"), css


def _script_json(text: str) -> str:
    """JSON text safe inside <script>: no '</script>' or '<!--' can end or confuse it."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _clean(obj: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def column_json(values: np.ndarray) -> str:
    """One table column as JSON: numbers to 5 significant digits (NaN as null), booleans as
    1/0, text as {"levels": [...], "index": [...]} (a hook name is not repeated per row)."""
    v = np.asarray(values)
    if v.dtype == bool:
        return "[" + ",".join(np.where(v, "1", "0")) + "]"
    if v.dtype.kind in "iu":
        return "[" + ",".join(v.astype(str)) + "]"
    if v.dtype.kind == "f":
        s = np.char.mod("%.5g", v.astype(np.float64))
        s = np.where(np.isfinite(v), s, "null")
        return "[" + ",".join(s) + "]"
    levels, index = np.unique(
        np.asarray(["" if x is None else str(x) for x in v.tolist()]), return_inverse=True
    )
    return '{"levels":' + json.dumps(levels.tolist()) + ',"index":' + column_json(index) + "}"


def _table_json(cols: dict[str, np.ndarray]) -> str:
    names = list(cols)
    body = ",".join(f"{json.dumps(n)}:{column_json(cols[n])}" for n in names)
    return '{"columns":' + json.dumps(names) + ',"data":{' + body + "}}"


def build_report(run_path: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report (default RUN/report/index.html) and return its path."""
    run = Path(run_path)
    if not run.is_dir():
        raise SaelabError(f"run folder {run_path} does not exist; check the path")
    if not (run / "manifest.json").is_file() and not (run / "run.toml").is_file():
        raise SaelabError(f"{run_path} is not a saelab run folder (no manifest.json or run.toml)")
    stages = collect.stages(run)
    present = {s["stage"] for s in stages}
    cards = collect.cards(run)
    if cards:
        present.add("inspect")
    con = collect.contrast(run)
    patch = collect.patch(run)
    blocks: list[tuple[str, str]] = []  # (script id, JSON text)
    fig_ids: list[str] = []

    saes = collect.sae_quality(run)
    for i, s in enumerate(saes):
        if s.get("density_histogram"):
            blocks.append(
                (
                    f"json-fig-density-{i}",
                    figures.to_json(figures.density_histogram(s["hook"], s["density_histogram"])),
                )
            )
            fig_ids.append(f"json-fig-density-{i}")
    contrast_info = None
    if con is not None:
        contrast_info = _contrast_blocks(con, blocks)
    if patch is not None:
        fig = figures.patch_effects(patch["summary"])
        if fig is not None:
            blocks.append(("json-fig-patch", figures.to_json(fig)))
            fig_ids.append("json-fig-patch")
    data = {
        "run": str(run),
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "figures": fig_ids,
        "contrast": contrast_info,
        "cards": cards,
    }
    page = _page(
        run,
        stages,
        collect.missing_stages(run, present),
        saes,
        con,
        patch,
        collect.traces(run),
        data,
        blocks,
    )
    path = Path(out) if out else run / REPORT_DIR / "index.html"
    atomic_write_text(path, page)
    return path


def _contrast_blocks(con: dict[str, Any], blocks: list[tuple[str, str]]) -> dict[str, Any]:
    cols = con["columns"]
    summ = con["summaries"].get("codes") or next(iter(con["summaries"].values()), {})
    alpha = float(summ.get("alpha", 0.05))
    volcanoes = []
    pairs = sorted(set(zip(cols["source"].tolist(), cols["hook"].tolist(), strict=True)))
    for i, (source, hook) in enumerate(pairs):
        mask = (cols["source"] == source) & (cols["hook"] == hook)
        title = f"{hook} ({source})"
        blocks.append(
            (f"json-volcano-{i}", figures.to_json(figures.volcano(cols, mask, title, alpha)))
        )
        volcanoes.append(
            {"id": f"json-volcano-{i}", "title": title, "hook": hook, "source": source}
        )
    blocks.append(("table-data", _table_json(cols)))
    groups = summ.get("groups", {})
    a, b = summ.get("group_a", "A"), summ.get("group_b", "B")
    return {
        "groups": {"a": a, "b": b, "n_a": groups.get(a), "n_b": groups.get(b)},
        "alpha": alpha,
        "pool": summ.get("pool"),
        "rows": con["rows"],
        "volcanoes": volcanoes,
        "summaries": summ,
    }


def _contrast_html(con: dict[str, Any] | None, info: dict[str, Any] | None) -> str:
    if con is None or info is None:
        return (
            '<p class="empty">No contrast yet: <code>saelab contrast RUN --groups A,B</code>.</p>'
        )
    lines = []
    for source, s in con["summaries"].items():
        n = s.get("groups", {})
        a, b = s.get("group_a"), s.get("group_b")
        per = "; ".join(
            f"{escape(h)}: {v['tested']:,} of {v['features']:,} tested,"
            f" {v['significant']:,} significant"
            for h, v in s.get("hooks", {}).items()
        )
        lines.append(
            f"<p><b>{escape(str(a))}</b> ({n.get(a)}) vs <b>{escape(str(b))}</b> ({n.get(b)}),"
            f" {escape(source)}, pool {escape(str(s.get('pool')))}: {s.get('tested', 0):,} tested,"
            f" <b>{s.get('significant', 0):,} significant</b> at FDR {s.get('alpha')}"
            f" (BH over the run). {per}</p>"
        )
    return (
        "".join(lines)
        + '<div class="filters"><label>volcano: <select id="volcano-hook"></select></label>'
        " <span class=dim>click a point for its card</span></div>"
        '<div id="volcano" class="fig"></div>'
        f"<h3>features ({con['rows']:,} rows; click a row for its card)</h3>"
        '<div class="filters"><label>hook <select id="filter-hook"></select></label>'
        '<label><input type="checkbox" id="filter-sig"> significant only</label>'
        '<label><input type="checkbox" id="filter-card"> with a card</label>'
        '<label>|d| ≥ <input type="number" id="filter-d" step="0.1" min="0"></label></div>'
        '<table id="features" class="display compact" style="width:100%"></table>'
    )


def _page(
    run: Path,
    stages: list,
    missing: list,
    saes: list,
    con: Any,
    patch: Any,
    traces: Any,
    data: dict[str, Any],
    blocks: list[tuple[str, str]],
) -> str:
    dt_b64, dt_css = datatables_bundle() if con is not None else ("", "")
    css = (STATIC / "style.css").read_text(encoding="utf-8")
    app = (STATIC / "app.js").read_text(encoding="utf-8")
    nav = (
        ["overview", "config", "quality", "contrast"]
        + (["patch"] if patch else [])
        + (["traces"] if traces else [])
    )
    sec = {
        "overview": ("Stages: plan beside measured", sections.stages_html(stages, missing)),
        "config": (
            "Configuration (run.toml)",
            f'<pre class="config">{escape(collect.config_text(run)) or "(none)"}</pre>',
        ),
        "quality": ("SAE quality per hook", sections.quality_html(saes)),
        "contrast": ("Contrast", _contrast_html(con, data["contrast"])),
        "patch": (
            "Patch effects",
            '<div id="fig-patch" class="fig"></div>' + sections.patch_html(patch),
        ),
        "traces": ("Generation traces", sections.traces_html(traces)),
    }
    body = "".join(
        f'<section id="{k}"><h2>{escape(sec[k][0])}</h2>{sec[k][1]}</section>' for k in nav
    )
    scripts = "".join(
        f'<script type="application/json" id="{i}">{_script_json(t)}</script>' for i, t in blocks
    )
    data_json = _script_json(json.dumps(_clean(data), allow_nan=False, separators=(",", ":")))
    links = " ".join(f'<a href="#{k}">{k}</a>' for k in nav)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>saelab report: {escape(run.name)}</title>"
        f"<style>{dt_css}</style><style>{css}</style></head><body>"
        f"<header><h1>saelab report · {escape(run.name)}</h1>"
        f'<div class="sub">{escape(str(run))} · {escape(data["generated"])} · saelab'
        f" {escape(__version__)}</div><nav>{links}</nav></header>"
        f'<main>{body}</main><aside id="card" hidden></aside>'
        f'<script type="application/json" id="report-data">{data_json}</script>{scripts}'
        + (f'<script type="text/plain" id="dt-bundle">{dt_b64}</script>' if dt_b64 else "")
        + f'<script>{plotly_js()}</script><script type="module">{app}</script></body></html>'
    )
