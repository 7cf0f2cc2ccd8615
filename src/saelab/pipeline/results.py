"""`export-stats` (the contrast's full statistics as JSON or npz): a config (its options) and
a call of its library function; not a stage, it reads what stages wrote.

`inspect` and `report` were result commands too; they are stages now
(`pipeline/inspect.py`, `pipeline/report.py`), and their configs and entry points are
re-exported here for the callers that import them from this module."""

from __future__ import annotations

from pathlib import Path

from saelab.errors import SaelabError
from saelab.exports import export_stats as _export_stats
from saelab.pipeline.inspect import InspectConfig, run_inspect
from saelab.pipeline.options import RunOptions, option
from saelab.pipeline.report import ReportConfig, run_report

__all__ = [
    "ExportStatsConfig",
    "InspectConfig",
    "ReportConfig",
    "run_export_stats",
    "run_inspect",
    "run_report",
]


def _run(config: RunOptions) -> str:
    if not config.run:
        raise SaelabError("--run is needed: name the run folder")
    return config.run


class ExportStatsConfig(RunOptions):
    """Every tested feature's statistics per layer (group sizes, means, SDs, t, df, p, d, g,
    AUC, q), as JSON or npz."""

    format: str = option("json", "json | npz", "--format")
    significant: bool = option(False, "only the significant features")
    source: str = option("codes", "codes | activations")
    out: str | None = option(None, "output file (default RUN/stats/contrast_stats.FORMAT)")


def run_export_stats(c: ExportStatsConfig) -> Path:
    path = _export_stats(_run(c), c.format, c.significant, out=c.out, source=c.source)
    print(f"wrote {path}")
    return path
