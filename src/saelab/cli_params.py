"""A command from a config: each field of an options model (pydantic, `pipeline.options`)
becomes one option of the command, with the field's description as its help, so a flag and
the field behind it are one declaration. `--quiet` and `--debug` belong to the app itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic_core import PydanticUndefined

from saelab.pipeline.options import Options, StageOptions

#: the app's own options (declared on its callback, read by every command)
QUIET = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
DEBUG = Annotated[bool, typer.Option("--debug", help="show tracebacks")]


def parameters(config: type[Options]) -> list[inspect.Parameter]:
    """One keyword parameter per command-line field of `config`, annotated for typer."""
    out = []
    common = set(StageOptions.model_fields)
    names = sorted(config.model_fields, key=lambda n: n in common)  # its own options first
    for name in names:
        field = config.model_fields[name]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("cli", True):
            continue
        decls = [str(d) for d in extra.get("decls") or []]  # type: ignore[union-attr]
        if extra.get("argument"):
            info: Any = typer.Argument(help=field.description, show_default=False)
        else:
            info = typer.Option(*decls, help=field.description)
        default = inspect.Parameter.empty if field.default is PydanticUndefined else field.default
        out.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[field.annotation, info],
            )
        )
    return out


def command(config: type[Options], handler: Callable[[Any], Any]) -> Callable[..., Any]:
    """A typer command whose options are `config`'s fields; it builds the config (with the
    app's --quiet) and hands it to `handler`."""

    def run(ctx: typer.Context, **kw: Any) -> None:
        root = ctx.find_root().obj or {}
        handler(config(**kw, quiet=bool(root.get("quiet"))))  # results print; exit codes raise

    ctx_param = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    params = [ctx_param, *parameters(config)]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = config.__doc__
    run.__name__ = config.__name__
    return run
