"""What `saelab show` says about who did the work: per stage, each worker's units and time,
and with `--units` every unit (its worker, time, bytes, peak memory), from the records the
driver kept (`worker` is host:pid, with the GPU a Ray worker held)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from saelab.units import format_bytes, format_seconds


def workers_line(out: Console, units: dict[str, dict[str, Any]]) -> None:
    """One line: each worker, how many units it ran and their time (in the order seen)."""
    per: dict[str, list[float]] = {}
    for rec in units.values():
        per.setdefault(str(rec.get("worker", "?")), []).append(float(rec.get("seconds", 0.0)))
    if not per:
        return
    parts = [f"{w} ({len(s)} unit(s), {format_seconds(sum(s))})" for w, s in per.items()]
    label = "worker" if len(per) == 1 else f"{len(per)} workers"
    out.print(f"  {label}: " + ", ".join(parts))


def units_table(out: Console, stage: str, units: dict[str, dict[str, Any]]) -> None:
    """Every recorded unit of a stage: which worker ran it and what it cost."""
    t = Table(title=f"{stage} units", title_justify="left")
    for col in ("unit", "worker", "time", "bytes", "peak RAM"):
        t.add_column(col, justify="left" if col in ("unit", "worker") else "right")
    for key, rec in units.items():
        t.add_row(
            key,
            str(rec.get("worker", "?")),
            format_seconds(rec.get("seconds")),
            format_bytes(rec.get("bytes")),
            format_bytes(rec.get("peak_rss")),
        )
    out.print(t)
