"""The `saelab` command: one subcommand per stage; parses, calls the pipeline, prints.

A user's mistake (SaelabError) prints one line and exits non-zero; `--debug` shows the
traceback. Progress and status go to stderr, results to stdout.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from saelab.errors import SaelabError

if TYPE_CHECKING:
    from saelab.pipeline.extract_job import ExtractOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse-autoencoder experiments on language models, planned to fit the machine.",
)

# -- options shared by plan and extract (each documented once) -----------------------------
Model = Annotated[
    str, typer.Option(help="'default' (SmolLM2-135M-Instruct), a HF id, a folder or a .gguf")
]
Prompts = Annotated[
    str | None,
    typer.Option(
        help="txt (one per line) / jsonl / csv / parquet with a text column; "
        "default: the built-in demo prompts"
    ),
]
TextColumn = Annotated[str, typer.Option(help="column holding the prompt text")]
Limit = Annotated[int | None, typer.Option(help="use only the first N prompts")]
Hooks = Annotated[
    str,
    typer.Option(
        help="hook points: resid_post.12, resid_post.0-29, mlp_out.*, "
        "blocks.5.hook_resid_mid, model.layers.3 (comma-separated)"
    ),
]
Positions = Annotated[str, typer.Option(help="all | last | mean; with --generate: all | generated")]
Dtype = Annotated[str, typer.Option(help="model compute dtype: float32, float16, bfloat16, int8")]
StoreDtype = Annotated[
    str,
    typer.Option(
        help="stored dtype: auto (float16; bfloat16 for Gemma), float16, bfloat16, float32"
    ),
]
KeepBits = Annotated[
    int | None, typer.Option(help="lossy: keep N mantissa bits (smaller store; default lossless)")
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, mps")]
BatchSize = Annotated[str, typer.Option(help="prompts per batch, or 'auto' (largest that fits)")]
MaxLength = Annotated[int | None, typer.Option(help="truncate prompts to N tokens")]
Bos = Annotated[bool, typer.Option("--bos/--no-bos", help="start every prompt with BOS")]
DropBos = Annotated[bool, typer.Option(help="do not store the BOS position")]
PaddingSide = Annotated[str, typer.Option(help="right | left (results are the same)")]
ShardSize = Annotated[int | None, typer.Option(help="prompts per shard (unit of resume)")]
Run = Annotated[str | None, typer.Option(help="run folder (default runs/<prompts>-<model>)")]
MaxMemory = Annotated[str | None, typer.Option(help="RAM budget, e.g. 4GB")]
MaxGpuMemory = Annotated[str | None, typer.Option(help="GPU memory budget, e.g. 8GB")]
MaxDisk = Annotated[str | None, typer.Option(help="disk budget for the run, e.g. 20GB")]
Overwrite = Annotated[bool, typer.Option(help="start the run folder's stage again")]
Chat = Annotated[bool, typer.Option(help="wrap each prompt in the model's chat template")]
Generate = Annotated[
    int | None, typer.Option(help="record generation traces: up to N new tokens per prompt")
]
Temperature = Annotated[float, typer.Option(help="sampling temperature (0 = greedy)")]
TopP = Annotated[float, typer.Option(help="nucleus sampling threshold")]
Seed = Annotated[int, typer.Option(help="sampling seed")]
Stop = Annotated[
    list[str] | None,
    typer.Option(help="the cleaned answer ends before this text (repeatable)"),
]
Attentions = Annotated[
    str | None, typer.Option(help="record attention maps of these layers: 0,5,10-12 or all")
]
Heads = Annotated[str | None, typer.Option(help="keep only these heads of --attentions")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
Debug = Annotated[bool, typer.Option(help="show tracebacks")]


def _options(**kw: Any) -> ExtractOptions:
    from saelab.pipeline.extract_job import ExtractOptions

    kw["prepend_bos"] = kw.pop("bos")
    kw.pop("debug", None)
    return ExtractOptions(**kw)


@app.command()
def extract(
    model: Model = "default",
    prompts: Prompts = None,
    text_column: TextColumn = "text",
    limit: Limit = None,
    hooks: Hooks = "resid_post.*",
    positions: Positions = "all",
    dtype: Dtype = "float32",
    store_dtype: StoreDtype = "auto",
    keep_bits: KeepBits = None,
    device: Device = "auto",
    batch_size: BatchSize = "auto",
    max_length: MaxLength = None,
    bos: Bos = True,
    drop_bos: DropBos = False,
    padding_side: PaddingSide = "right",
    chat: Chat = False,
    generate: Generate = None,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    stop: Stop = None,
    attentions: Attentions = None,
    heads: Heads = None,
    shard_size: ShardSize = None,
    run: Run = None,
    max_memory: MaxMemory = None,
    max_gpu_memory: MaxGpuMemory = None,
    max_disk: MaxDisk = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Capture activations of hook points over prompts into the run's store (resumable).

    With --generate N, record generation traces instead: each prompt's answer, and the hidden
    states (and, with --attentions, attention maps) over prompt and answer.
    """
    opts = _options(**locals())
    from saelab.pipeline.extract import describe_result, run_extract

    result = run_extract(opts)
    typer.echo(describe_result(result))


def _options_of(template: Any, drop: tuple[str, ...] = (), add: tuple[Any, ...] = ()) -> Any:
    """Give a command the same options as `template`, minus `drop`, plus `add`.

    typer reads options from the function signature; `plan` takes every option of `extract`
    (it plans exactly that run), so the signature is copied rather than written twice.
    """

    def wrap(fn: Any) -> Any:
        params = [
            p
            for p in inspect.signature(template, eval_str=True).parameters.values()
            if p.name not in drop
        ]
        params[-2:-2] = list(add)  # before --quiet and --debug
        fn.__signature__ = inspect.Signature(params, return_annotation=None)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return wrap


_CALIBRATE = inspect.Parameter(
    "calibrate",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    default=True,
    annotation=Annotated[
        bool, typer.Option(help="time a few real batches (else: FLOP estimate, no weights)")
    ],
)


_TARGET = inspect.Parameter(
    "target",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Option(
            help="plan for another machine: t4, colab-free, l4, a100-40g, a100-80g, h100,"
            " cpu-16g, cpu-8g, or gpu:24GB / cpu:32GB (estimates; README, plan)"
        ),
    ],
)


@app.command()
@_options_of(extract, drop=("overwrite",), add=(_CALIBRATE, _TARGET))
def plan(**kw: Any) -> None:
    """Say how much memory, disk and time extract needs, and whether it fits."""
    calibrate = kw.pop("calibrate")
    opts = _options(**kw)
    from saelab.pipeline.plan import plan_extract, record_plan, render_plan

    result, _ = plan_extract(opts, calibrate=calibrate)
    render_plan(result)
    if kw["run"] is not None or result.job.run.exists():
        record_plan(result)
    if not result.verdict.fits:
        raise typer.Exit(3)


@app.command()
def train(
    run: Annotated[str, typer.Option(help="run folder (its activation store, or --stream)")],
    hooks: Annotated[
        str | None, typer.Option(help="hooks to train (default: every stored hook)")
    ] = None,
    arch: Annotated[str, typer.Option(help="topk | batchtopk | jumprelu | relu")] = "topk",
    expansion: Annotated[int | None, typer.Option(help="d_sae = expansion x d_in")] = 8,
    d_sae: Annotated[int | None, typer.Option(help="latents (overrides --expansion)")] = None,
    k: Annotated[int | None, typer.Option(help="active latents per token (topk, batchtopk)")] = 32,
    l1: Annotated[float, typer.Option(help="relu: L1 coefficient")] = 0.2,
    l0_coef: Annotated[float, typer.Option(help="jumprelu: L0 coefficient")] = 2e-3,
    lr: Annotated[
        float | None,
        typer.Option(help="Adam learning rate (default: 0.03/sqrt(d_in) topk, else 4e-4)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="tokens per step")] = 1024,
    tokens: Annotated[
        int | None,
        typer.Option(
            help="training tokens (default: --epochs over the data; --stream reads"
            " tokens/epochs of the corpus, 250,000 without --tokens)"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 1,
    seed: Annotated[int, typer.Option(help="initialisation and data order")] = 0,
    dtype: Annotated[str, typer.Option(help="encoder matmul: float32 | bfloat16")] = "float32",
    device: Device = "cpu",
    patience: Annotated[
        int | None, typer.Option(help="stop after N evaluations without EV gain (0: never)")
    ] = 3,
    eval_every: Annotated[int | None, typer.Option(help="steps between evaluations")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="steps between checkpoints")] = None,
    holdout: Annotated[
        str,
        typer.Option(
            help="held out for evaluation: a fraction of the prompts/windows (at most 32)"
            " or a whole number of them"
        ),
    ] = "0.1",
    stream: Annotated[bool, typer.Option(help="capture from the model over --corpus")] = False,
    corpus: Annotated[
        str | None, typer.Option(help="--stream text: txt/jsonl/parquet file or folder")
    ] = None,
    model: Model = "default",
    context: Annotated[int, typer.Option(help="--stream: tokens per window")] = 128,
    text_column: TextColumn = "text",
    splice: Annotated[bool, typer.Option(help="measure CE loss recovered in the model")] = True,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train SAEs (TopK, BatchTopK, JumpReLU, ReLU-L1) per hook; resumable; honest metrics."""
    kw = {k_: v for k_, v in locals().items() if k_ != "debug"}
    from saelab.pipeline.train import TrainOptions, run_train

    run_train(TrainOptions(**kw))


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="run folder")],
    debug: Debug = False,
) -> None:
    """Describe a run: its stages, its activation store, plan against measurement."""
    from saelab.pipeline.show import show_run

    show_run(run)


@app.command()
def demo(
    run: Annotated[str, typer.Option(help="run folder")] = "runs/demo",
    hooks: Hooks = "resid_post.0-29",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """The main job on the default model: plan, extract, train, encode, contrast."""
    from saelab.pipeline.demo import run_demo

    run_demo(run=run, hooks=hooks, quiet=quiet)


# registering: encode, export, contrast, query / inspect, report, export-stats / cache
from saelab import cli_analysis, cli_cache, cli_report  # noqa: E402,F401


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage-error classes, abort classes) of click and of the copy typer vendors.

    typer 0.2x raises exceptions of its own vendored click (`typer._click`), which are not
    subclasses of the installed click's: both must be caught, or a typo in an option ends in
    a traceback.
    """
    import click

    usage: list[type] = [click.exceptions.ClickException]
    abort: list[type] = [click.exceptions.Abort]
    for mod in ("typer._click.exceptions", "typer.exceptions"):
        try:
            vendored = importlib.import_module(mod)
        except ImportError:
            continue
        usage += [c for c in (getattr(vendored, "ClickException", None),) if c]
        abort += [c for c in (getattr(vendored, "Abort", None),) if c]
    return tuple(usage), tuple(abort)


def _usage_line(e: Exception) -> str:
    """One line for a usage error: the message and where to find the right spelling."""
    msg = " ".join(str(e.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`saelab --help`"
    return f"{msg} (see {where})"


def main(argv: list[str] | None = None) -> None:
    """Entry point: SaelabError -> one line on stderr and a non-zero exit (unless --debug).

    Usage errors (an unknown option, a value of the wrong type) are one line too, exit 2."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("SAELAB_DEBUG") == "1"
    usage, abort = _click_errors()
    try:
        rc = app(args=args, prog_name="saelab", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SaelabError as e:
        if debug:
            raise
        print(f"saelab: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("saelab: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except abort:
        print("saelab: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except usage as e:
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(2)
        print(f"saelab: error: {_usage_line(e)}", file=sys.stderr)
        code = int(getattr(e, "exit_code", 2))
        sys.exit(code if code else 2)
