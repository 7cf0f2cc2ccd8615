"""The analysis commands: `encode`, `export`, `contrast`, `query` (registered on the app of
`saelab.cli`, with its shared option types), kept apart so each CLI module stays small."""

from __future__ import annotations

from typing import Annotated

import typer

from saelab.cli import Debug, Model, Overwrite, Quiet, TextColumn, app


@app.command()
def encode(
    saes: Annotated[
        str,
        typer.Option(
            help="SAE folder or file, a folder of per-hook SAEs (e.g. RUN/saes), or"
            " hf://ORG/NAME/PATH with {L} for the layer"
        ),
    ],
    run: Annotated[str, typer.Option(help="run folder (its store is reused or made)")],
    hooks: Annotated[
        str | None, typer.Option(help="hooks to encode (needed with {L} or without a store)")
    ] = None,
    positions: Annotated[str, typer.Option(help="all | last | max | mean")] = "all",
    features: Annotated[
        str | None, typer.Option(help="keep only these feature ids, e.g. 645,1170,3-7")
    ] = None,
    prompts: Annotated[
        str | None, typer.Option(help="prompts to capture when the run has no store yet")
    ] = None,
    model: Model = "default",
    text_column: TextColumn = "text",
    batch_size: Annotated[str, typer.Option(help="capture batch size or 'auto'")] = "auto",
    max_memory: Annotated[str | None, typer.Option(help="RAM budget for the capture")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="SAE weights dtype (default: as stored)")
    ] = None,
    max_disk: Annotated[
        str | None, typer.Option(help="disk budget for downloaded SAE files, e.g. 20GB")
    ] = None,
    evict: Annotated[
        bool | None,
        typer.Option(help="delete each SAE's files once its hook is done (default: when tight)"),
    ] = None,
    strict: Annotated[bool, typer.Option(help="refuse an SAE made for another hook")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """SAE codes of every prompt, layer-major, as sparse CSR in RUN/codes/."""
    kw = {k_: v for k_, v in locals().items() if k_ != "debug"}
    from saelab.pipeline.encode import EncodeOptions, run_encode

    res = run_encode(EncodeOptions(**kw))
    for hook, info in res.hooks.items():
        l0 = info.get("mean_l0")
        print(
            f"{hook}: {info.get('rows', 0):,} rows, mean L0 {l0:.1f}" if l0 is not None else hook,
            f"({info.get('format', '')}, {info.get('bytes', 0):,} bytes)",
        )
    f = res.fetch
    if f["downloads"] or f["cache_hits"]:
        print(
            f"downloads: {f['downloads']} file(s), {f['bytes_downloaded']:,} bytes; peak cache"
            f" {f['peak_cache_bytes']:,} bytes"
        )
    print(f"codes in {run}/codes; read them with saelab.store.open_codes({run!r})")


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="run folder with codes")],
    features: Annotated[str | None, typer.Option(help="feature ids, e.g. 645,1170")] = None,
    format: Annotated[str, typer.Option("--format", help="json | npz")] = "json",
    hooks: Annotated[str | None, typer.Option(help="hooks (default: every encoded hook)")] = None,
    out: Annotated[
        str | None, typer.Option(help="output file (default: RUN/export.FORMAT)")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Per-prompt, per-token activations of chosen features as JSON or npz."""
    from saelab.pipeline.export import run_export

    path = run_export(run, features=features, fmt=format, hooks=hooks, out=out, quiet=quiet)
    print(f"wrote {path}")


@app.command()
def contrast(
    run: Annotated[str, typer.Argument(help="run folder with codes (or activations)")],
    groups: Annotated[str, typer.Option(help="the two groups to compare, e.g. formal,casual")],
    group_column: Annotated[str, typer.Option(help="prompt column holding the group")] = "group",
    pool: Annotated[str, typer.Option(help="token codes -> one value: last | max | mean")] = "max",
    hooks: Annotated[str | None, typer.Option(help="hooks (default: all encoded)")] = None,
    min_active: Annotated[
        int, typer.Option(help="test a feature only if it fires in N+ prompts (both groups)")
    ] = 5,
    alpha: Annotated[float, typer.Option(help="false discovery rate")] = 0.05,
    source: Annotated[
        str, typer.Option(help="codes | activations (raw hidden dimensions, a baseline)")
    ] = "codes",
    top: Annotated[int, typer.Option(help="strongest features to print and summarise")] = 20,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Which features separate two groups of prompts: Welch, Mann-Whitney, firing rates, BH."""
    kw = {k_: v for k_, v in locals().items() if k_ != "debug"}
    from saelab.pipeline.contrast import ContrastOptions, run_contrast

    run_contrast(ContrastOptions(**kw))


@app.command()
def query(
    run: Annotated[str, typer.Argument(help="run folder")],
    sql: Annotated[str, typer.Argument(help="SQL over the tables prompts, contrast, ...")],
    out: Annotated[str | None, typer.Option(help="write all rows to a .csv or .parquet")] = None,
    limit: Annotated[int, typer.Option(help="rows to print")] = 50,
    debug: Debug = False,
) -> None:
    """SQL (DuckDB) over the run's tables."""
    from saelab.pipeline.query import run_query

    run_query(run, sql, out=out, limit=limit)


@app.command()
def patch(
    run: Annotated[str, typer.Argument(help="run folder (its prompts, SAEs and contrast)")],
    edits: Annotated[
        list[str] | None,
        typer.Option(
            help="HOOK:F=V | HOOK:F*S | HOOK:F+=D | HOOK:F@A (repeatable; applied together)"
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="top:N (strongest contrast features) or top:N/hook")
    ] = None,
    values: Annotated[str, typer.Option(help="sweep values: 0,x2,mean_A,mean_B,@A,+=D")] = "0",
    saes: Annotated[str | None, typer.Option(help="SAEs (default: those encode used)")] = None,
    prompts: Annotated[str | None, typer.Option(help="prompts (default: the run's)")] = None,
    generate: Annotated[int, typer.Option(help="new tokens per prompt")] = 16,
    at: Annotated[
        str, typer.Option(help="last | prompt | generated | all | last+generated")
    ] = "last+generated",
    temperature: Annotated[float, typer.Option(help="0: greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling")] = 1.0,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    targets: Annotated[
        str | None, typer.Option(help="tokens whose log-probs to compare, e.g. ' yes, no'")
    ] = None,
    outcome: Annotated[
        list[str] | None, typer.Option(help="LABEL=REGEX labelling each generation (repeatable)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="rows per generation batch")] = 32,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Set, scale, ablate or steer SAE features during generation; measure what changes."""
    kw = {k_: v for k_, v in locals().items() if k_ != "debug"}
    from saelab.pipeline.patch import PatchOptions, run_patch

    run_patch(PatchOptions(**kw))
