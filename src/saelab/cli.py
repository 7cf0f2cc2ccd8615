"""The `saelab` command: one subcommand per stage, each generated from the stage's config
(`saelab.cli_params`), so every option is the one documented field behind it.

A user's mistake (SaelabError) prints one line and exits non-zero, naming options as the
flags the user typed; `--debug` shows the traceback. Progress and status go to stderr,
results to stdout. `--quiet` and `--debug` are the app's own options (`saelab --quiet
extract ...`); written after the subcommand they are still understood.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
import typer

from saelab.cli_params import DEBUG, QUIET, command
from saelab.errors import SaelabError
from saelab.pipeline.cache import (
    CacheClearConfig,
    CacheListConfig,
    plan_cache_clear,
    run_cache_clear,
    run_cache_list,
)
from saelab.pipeline.contrast import ContrastConfig, run_contrast
from saelab.pipeline.demo import DemoConfig, run_demo
from saelab.pipeline.encode import EncodeConfig, describe_encode, run_encode
from saelab.pipeline.export import ExportConfig, run_export
from saelab.pipeline.extract import describe_result, run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.flags import as_flags
from saelab.pipeline.patch import PatchConfig, run_patch
from saelab.pipeline.plan import PlanConfig, plan_extract, record_plan, render_plan
from saelab.pipeline.query import QueryConfig, run_query
from saelab.pipeline.results import (
    ExportStatsConfig,
    InspectConfig,
    ReportConfig,
    run_export_stats,
    run_inspect,
    run_report,
)
from saelab.pipeline.show import ShowConfig, show_run
from saelab.pipeline.train import TrainConfig, run_train
from saelab.pipeline.verify import VerifyConfig, run_verify

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse-autoencoder experiments on language models, planned to fit the machine.",
)

GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


@app.callback()
def _app(ctx: typer.Context, quiet: QUIET = False, debug: DEBUG = False) -> None:
    ctx.obj = {"quiet": quiet, "debug": debug}


def _extract(cfg: ExtractConfig) -> None:
    typer.echo(describe_result(run_extract(cfg)))


def _plan(cfg: PlanConfig) -> None:
    result, _ = plan_extract(cfg, calibrate=cfg.calibrate)
    render_plan(result)
    if cfg.run is not None or result.job.run.exists():
        record_plan(result)
    if not result.verdict.fits:
        raise typer.Exit(3)


def _encode(cfg: EncodeConfig) -> None:
    typer.echo(describe_encode(run_encode(cfg), str(cfg.run)))


def _export(cfg: ExportConfig) -> None:
    typer.echo(f"wrote {run_export(cfg)}")


def _needs_run(cfg: Any) -> str:
    if not cfg.run:
        raise SaelabError("--run is needed: name the run folder")
    return str(cfg.run)


COMMANDS: list[tuple[str, type, Any]] = [
    ("plan", PlanConfig, _plan),
    ("extract", ExtractConfig, _extract),
    ("train", TrainConfig, run_train),
    ("encode", EncodeConfig, _encode),
    ("export", ExportConfig, _export),
    ("contrast", ContrastConfig, run_contrast),
    ("query", QueryConfig, lambda c: run_query(_needs_run(c), c.sql, out=c.out, limit=c.limit)),
    ("patch", PatchConfig, run_patch),
    ("show", ShowConfig, lambda c: show_run(_needs_run(c), units=c.units)),
    ("inspect", InspectConfig, run_inspect),
    ("report", ReportConfig, run_report),
    ("export-stats", ExportStatsConfig, run_export_stats),
    ("verify", VerifyConfig, run_verify),
    ("demo", DemoConfig, run_demo),
]
for _name, _config, _handler in COMMANDS:
    app.command(_name)(command(_config, _handler))


def _cache_clear(cfg: CacheClearConfig) -> None:
    if not plan_cache_clear(cfg):
        return
    if not cfg.yes and not typer.confirm("go ahead?", default=False):
        raise typer.Exit(1)
    run_cache_clear(cfg)


cache_app = typer.Typer(
    no_args_is_help=True,
    help="Show and clear the Hugging Face cache (models and SAE releases), blob and link.",
)
app.add_typer(cache_app, name="cache")
cache_app.command("list")(command(CacheListConfig, run_cache_list))
cache_app.command("clear")(command(CacheClearConfig, _cache_clear))


def hoist_global_flags(args: list[str]) -> list[str]:
    """`saelab extract ... --quiet` as `saelab --quiet extract ...`: the app's own flags
    are understood after the subcommand too."""
    flags = [a for a in args if a in GLOBAL_FLAGS]
    return [*flags, *(a for a in args if a not in GLOBAL_FLAGS)]


def _options_of_command(args: list[str]) -> list[str]:
    """The option names of the subcommand in `args`, to write lower layers' field names as
    the flags the user typed."""
    name = next((a for a in args if not a.startswith("-")), "")
    config = next((c for n, c, _ in COMMANDS if n == name), None)
    return config.field_names() if config is not None else []


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage-error classes, abort classes) of click and of the copy typer vendors.

    typer 0.2x raises exceptions of its own vendored click (`typer._click`), which are not
    subclasses of the installed click's: both must be caught, or a typo in an option ends in
    a traceback.
    """
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
    args = hoist_global_flags(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in args or os.environ.get("SAELAB_DEBUG") == "1"
    usage, abort = _click_errors()
    try:
        rc = app(args=args, prog_name="saelab", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SaelabError as e:
        if debug:
            raise
        print(f"saelab: error: {as_flags(str(e), _options_of_command(args))}", file=sys.stderr)
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
