"""The result commands: `inspect` (feature cards), `report` (one HTML page per run) and
`export-stats` (the contrast's full statistics as JSON or npz), registered on the app of
`saelab.cli`. Thin: each parses, calls its library function and prints."""

from __future__ import annotations

from typing import Annotated

import typer

from saelab.cli import Debug, Quiet, app


@app.command()
def inspect(
    run: Annotated[str, typer.Argument(help="run folder")],
    hook: Annotated[str, typer.Option(help="the SAE's hook, e.g. resid_post.7")],
    features: Annotated[str, typer.Option(help="feature ids, e.g. 12,845 or 3-7")],
    top: Annotated[int, typer.Option(help="top-activating contexts per feature")] = 20,
    prompts: Annotated[
        str | None, typer.Option(help="run these prompts through the model and SAE instead")
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(help="or windows of this corpus (txt/jsonl/parquet, folder, builtin:stdlib)"),
    ] = None,
    context: Annotated[int, typer.Option(help="--corpus: tokens per window")] = 64,
    max_tokens: Annotated[int, typer.Option(help="--corpus: tokens to read at most")] = 50_000,
    sae: Annotated[
        str | None, typer.Option(help="SAE to use (default: the one the run's codes used)")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Feature cards: density, histogram, top and quantile contexts, logit lens, group means,
    contrast and patch effects; stored in RUN/inspect/HOOK for the report."""
    from saelab.inspect import inspect_features, print_cards

    cards = inspect_features(
        run,
        hook,
        features,
        top=top,
        corpus=corpus,
        prompts=prompts,
        quiet=quiet,
        context=context,
        max_tokens=max_tokens,
        sae=sae,
    )
    print_cards(cards)


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="run folder")],
    out: Annotated[
        str | None, typer.Option(help="output file (default RUN/report/index.html)")
    ] = None,
    debug: Debug = False,
) -> None:
    """One self-contained HTML page of the run (opens from disk, no network)."""
    from saelab.report import build_report

    path = build_report(run, out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser")


@app.command("export-stats")
def export_stats(
    run: Annotated[str, typer.Argument(help="run folder with contrast results")],
    format: Annotated[str, typer.Option("--format", help="json | npz")] = "json",
    significant: Annotated[bool, typer.Option(help="only the significant features")] = False,
    source: Annotated[str, typer.Option(help="codes | activations")] = "codes",
    out: Annotated[
        str | None, typer.Option(help="output file (default RUN/stats/contrast_stats.FORMAT)")
    ] = None,
    debug: Debug = False,
) -> None:
    """Every tested feature's statistics per layer (group sizes, means, SDs, t, df, p, d, g,
    AUC, q), as JSON or npz."""
    from saelab.exports import export_stats as run_export_stats

    path = run_export_stats(run, format, significant, out=out, source=source)
    print(f"wrote {path}")
