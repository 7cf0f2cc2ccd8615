"""The report's figures, built with plotly and serialised as plotly JSON.

The page draws each one with plotly.js (inlined from the plotly package) when its section is
shown, so a run with many hooks does not draw every volcano before the first paint. Above
`WEBGL_POINTS` points a volcano uses plotly's WebGL scatter, which stays smooth with 100,000
points where SVG markers would not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEBGL_POINTS = 5_000
_LAYOUT = dict(margin=dict(l=60, r=20, t=40, b=50), template="plotly_white", height=360)


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def to_json(fig: Any) -> str:
    import plotly.io as pio

    return pio.to_json(fig, validate=False, pretty=False, engine="json")


def density_histogram(hook: str, hist: list[list[Any]]) -> Any:
    """Bars of a trained SAE's log10 feature densities (dead features first)."""
    go = _go()
    labels, counts = [], []
    for lo, hi, n in hist:
        if lo is None and hi is None:
            labels.append("dead")
        elif lo is None:
            labels.append(f"< 1e{int(hi)}")
        else:
            labels.append(f"1e{int(lo)}..1e{int(hi)}")
        counts.append(n)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=counts,
            marker_color="#4a78b5",
            hovertemplate="%{x}: %{y} features<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"feature density, {hook}",
        xaxis_title="fraction of tokens firing",
        yaxis_title="features",
        **{**_LAYOUT, "height": 300},
    )
    return fig


def volcano(cols: dict[str, np.ndarray], mask: np.ndarray, title: str, alpha: float) -> Any:
    """Effect size (Cohen's d) against -log10 q of the tested features in `mask`."""
    go = _go()
    tested = mask & cols["tested"].astype(bool)
    d = cols["cohen_d"][tested].astype(np.float64)
    q = cols["q"][tested].astype(np.float64)
    # q underflows to 0 for the strongest features: show them at the top of the axis
    y = -np.log10(np.clip(q, 1e-300, 1.0))
    feat = cols["feature"][tested].astype(np.int64)
    sig = cols["significant"][tested].astype(bool)
    scatter = go.Scattergl if len(d) > WEBGL_POINTS else go.Scatter
    traces = []
    for name, sel, color in (
        ("not significant", ~sig, "#9aa5b1"),
        (f"q < {alpha:g}", sig, "#d1495b"),
    ):
        traces.append(
            scatter(
                x=np.round(d[sel], 4),
                y=np.round(y[sel], 3),
                customdata=feat[sel],
                mode="markers",
                name=name,
                marker=dict(color=color, size=6, opacity=0.75),
                hovertemplate="feature %{customdata}<br>d %{x:.3f}<br>-log10 q %{y:.2f}"
                "<extra></extra>",
            )
        )
    fig = go.Figure(traces)
    fig.add_hline(y=-np.log10(alpha), line_dash="dot", line_color="#d1495b", opacity=0.5)
    fig.update_layout(
        title=title,
        xaxis_title="Cohen's d (A - B)",
        yaxis_title="-log10 q (BH, run-wide)",
        **_LAYOUT,
    )
    return fig


def patch_effects(summary: list[dict[str, Any]]) -> Any | None:
    """Per edit (all prompts): the change of the target log-prob difference with its 95%
    interval, or the mean KL when no targets were measured."""
    go = _go()
    rows = [s for s in summary if s.get("group") == "all" and s.get("edit") != "baseline"]
    if not rows:
        return None
    edits = [s["edit"] for s in rows]
    if any(s.get("delta_logp_diff") is not None for s in rows):
        x = [s.get("delta_logp_diff") for s in rows]
        ci = [s.get("ci95") or [v, v] for s, v in zip(rows, x, strict=True)]
        err_hi = [None if v is None else c[1] - v for v, c in zip(x, ci, strict=True)]
        err_lo = [None if v is None else v - c[0] for v, c in zip(x, ci, strict=True)]
        trace = go.Scatter(
            x=x,
            y=edits,
            mode="markers",
            marker=dict(size=9, color="#2b6cb0"),
            error_x=dict(type="data", array=err_hi, arrayminus=err_lo),
            hovertemplate="%{y}<br>change %{x:.3f}<extra></extra>",
        )
        xt = "change of the target log-prob difference (95% CI)"
    else:
        trace = go.Bar(
            x=[s.get("mean_kl") for s in rows], y=edits, orientation="h", marker_color="#2b6cb0"
        )
        xt = "mean KL from the baseline's next-token distribution"
    fig = go.Figure(trace)
    fig.update_layout(
        title="patch effects per edit (all prompts)",
        xaxis_title=xt,
        **{
            **_LAYOUT,
            "height": max(260, 40 + 28 * len(rows)),
            "margin": dict(l=260, r=20, t=40, b=50),
        },
    )
    fig.update_yaxes(autorange="reversed")
    return fig
