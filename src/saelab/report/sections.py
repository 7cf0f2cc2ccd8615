"""The report's static sections as HTML: stages (plan beside measured), SAE quality, patch
label rates, traces, and what is missing. Every value from the run is escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from saelab.units import format_bytes, format_seconds


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return escape(str(v))


def _bytes(v: Any) -> str:
    return "–" if v is None else escape(format_bytes(v))


def _secs(v: Any) -> str:
    return "–" if v is None else escape(format_seconds(v))


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A plain HTML table of already-escaped cells."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="plain {cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def stages_html(stages: list[dict[str, Any]], missing: list[dict[str, str]]) -> str:
    rows = []
    for s in stages:
        p, m = s["planned"], s["measured"]
        state = "complete" if s["complete"] else "incomplete (rerun to resume)"
        rows.append(
            [
                f"<b>{escape(s['stage'])}</b>",
                state,
                _num(s["units"]),
                _bytes(p["ram"]),
                _bytes(m["ram"]),
                _bytes(p["disk"]),
                _bytes(m["disk"]),
                _secs(p["seconds"]),
                _secs(m["seconds"]),
            ]
        )
    head = [
        "stage",
        "state",
        "units",
        "RAM planned",
        "RAM peak",
        "disk planned",
        "disk used",
        "time planned",
        "time taken",
    ]
    out = table(head, rows) if rows else "<p>The run has no recorded stage yet.</p>"
    return out + missing_html(missing)


def missing_html(missing: list[dict[str, str]]) -> str:
    if not missing:
        return ""
    items = "".join(
        f"<li><b>{escape(m['stage'])}</b>: <code>{escape(m['command'])}</code></li>"
        for m in missing
    )
    intro = "<p>Not in this run yet, and the command that makes it:</p>"
    return f'<div class="missing">{intro}<ul>{items}</ul></div>'


def quality_html(saes: list[dict[str, Any]]) -> str:
    """One block per hook; a trained SAE's density histogram is drawn into `fig-density-N`."""
    if not saes:
        return '<p class="empty">No SAE in this run yet (see the missing stages above).</p>'
    parts = []
    for i, s in enumerate(saes):
        warn = "".join(f'<div class="warning">WARNING: {escape(w)}</div>' for w in s["warnings"])
        if s.get("origin") == "trained":
            rows = [
                [
                    _num(s.get("architecture")),
                    _num(s.get("d_sae")),
                    _num(s.get("k")),
                    _num(s.get("train_tokens")),
                    _num(s.get("explained_variance")),
                    _num(s.get("l0"), 4),
                    f"{_num(s.get('dead_features'))} ({100 * (s.get('dead_fraction') or 0):.1f}%)",
                    _num(s.get("dense_features")),
                    _num(s.get("ce_loss_recovered")),
                    _num(s.get("kl_div")),
                    _num(s.get("codes_mean_l0"), 4),
                ]
            ]
            head = [
                "arch",
                "d_sae",
                "k",
                "train tokens",
                "explained variance",
                "L0",
                "dead",
                "dense",
                "CE loss recovered",
                "KL",
                "L0 on the run's prompts",
            ]
        else:
            rows = [
                [
                    _num(s.get("sae")),
                    _num(s.get("format")),
                    _num(s.get("d_sae")),
                    _num(s.get("codes_rows")),
                    _num(s.get("codes_mean_l0"), 4),
                ]
            ]
            head = [
                "pretrained SAE",
                "format",
                "d_sae",
                "token rows encoded",
                "mean L0 on the run's prompts",
            ]
        fig = f'<div class="fig" id="fig-density-{i}"></div>' if s.get("density_histogram") else ""
        parts.append(f"<h3>{escape(s['hook'])}</h3>{warn}{table(head, rows)}{fig}")
    return "".join(parts)


def patch_html(patch: dict[str, Any] | None) -> str:
    """Label rates per edit (all prompts) against the baseline, with Fisher's p."""
    if patch is None:
        return ""
    rows_in = [s for s in patch["summary"] if s.get("group") == "all"]
    labels = patch["labels"]
    head = ["edit", "n", "mean KL", "change of logp diff", "95% CI"]
    head += [f"rate {escape(lab)} (baseline)" for lab in labels]
    head += ["labels changed"] if labels else []
    rows = []
    for s in rows_in:
        ci = s.get("ci95")
        r = [
            f"<code>{escape(str(s['edit']))}</code>",
            _num(s.get("n")),
            _num(s.get("mean_kl")),
            _num(s.get("delta_logp_diff")),
            "–" if not ci else f"{_num(ci[0])} to {_num(ci[1])}",
        ]
        for lab in labels:
            rate, base = s.get(f"rate[{lab}]"), s.get(f"baseline_rate[{lab}]")
            p = s.get(f"fisher_p[{lab}]")
            r.append(f"{_num(rate)} ({_num(base)}), p {_num(p, 2)}")
        if labels:
            r.append(_num(s.get("label_changes")))
        rows.append(r)
    return table(head, rows, "patch")


def traces_html(tr: dict[str, Any] | None) -> str:
    if tr is None:
        return ""
    if "error" in tr:
        return f'<p class="warning">{escape(tr["error"])}</p>'
    a, p = tr.get("answer_len", {}), tr.get("prompt_len", {})
    hooks = ", ".join(escape(h) for h in tr.get("hooks", {}))
    per = tr.get("bytes_per_trace", {})
    rows = [
        ["traces", _num(tr.get("n_traces"))],
        [
            "answer tokens (mean, min, max)",
            f"{_num(a.get('mean'))}, {_num(a.get('min'))}, {_num(a.get('max'))}",
        ],
        ["prompt tokens (mean)", _num(p.get("mean"))],
        [
            "hidden states",
            f"{hooks} at {escape(str(tr.get('positions')))} positions,"
            f" {escape(str(tr.get('dtype')))}",
        ],
        ["attention maps", ", ".join(escape(str(k)) for k in tr.get("attentions", {})) or "none"],
        ["bytes per trace", ", ".join(f"{escape(k)} {_bytes(v)}" for k, v in per.items())],
        ["on disk", f"{_bytes(tr.get('bytes_on_disk'))} (ratio {_num(tr.get('ratio'))})"],
    ]
    return table(["", ""], rows)
