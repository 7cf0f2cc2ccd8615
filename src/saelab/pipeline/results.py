"""The result commands: `inspect` (feature cards), `report` (one HTML page per run) and
`export-stats` (the contrast's full statistics as JSON or npz). Each is a config (its options)
and a call of its library function; none is a stage, they read what stages wrote."""

from __future__ import annotations

from pathlib import Path

from saelab.errors import SaelabError
from saelab.exports import export_stats as _export_stats
from saelab.inspect import inspect_features, print_cards
from saelab.pipeline.options import RunOptions, option
from saelab.report import build_report


def _run(config: RunOptions) -> str:
    if not config.run:
        raise SaelabError("--run is needed: name the run folder")
    return config.run


class InspectConfig(RunOptions):
    """Feature cards: density, histogram, top and quantile contexts, logit lens, group means,
    contrast and patch effects; stored in RUN/inspect/HOOK for the report."""

    hook: str = option(..., "the SAE's hook, e.g. resid_post.7")
    features: str = option(..., "feature ids, e.g. 12,845 or 3-7")
    top: int = option(20, "top-activating contexts per feature", minimum=0)
    prompts: str | None = option(None, "run these prompts through the model and SAE instead")
    corpus: str | None = option(
        None, "or windows of this corpus (txt/jsonl/parquet, folder, builtin:stdlib)"
    )
    context: int = option(64, "--corpus: tokens per window", minimum=2)
    max_tokens: int = option(50_000, "--corpus: tokens to read at most", minimum=1)
    sae: str | None = option(None, "SAE to use (default: the one the run's codes used)")


def run_inspect(c: InspectConfig) -> None:
    cards = inspect_features(
        _run(c), c.hook, c.features, top=c.top, corpus=c.corpus, prompts=c.prompts,
        quiet=c.quiet, context=c.context, max_tokens=c.max_tokens, sae=c.sae,
    )  # fmt: skip
    print_cards(cards)


class ReportConfig(RunOptions):
    """One self-contained HTML page of the run (opens from disk, no network)."""

    out: str | None = option(None, "output file (default RUN/report/index.html)")


def run_report(c: ReportConfig) -> Path:
    path = build_report(_run(c), c.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser")
    return path


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
