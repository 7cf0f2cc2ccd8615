"""Options declared once: each stage's config is a pydantic model whose fields, with their
descriptions, ARE the command's options (`saelab.cli_params` builds the command from them).

`StageOptions` holds what every stage takes (run folder, overwrite, budgets, executor);
`option(...)` declares a field with its help text and, where the flag is not simply the field
name, its command-line spelling. A newcomer finds the one field behind any flag by its name:
`--max-disk` is `max_disk`, declared here; `--k` is `TrainConfig.k` in pipeline/train.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticUndefined

from saelab.budget.planner import Budget
from saelab.errors import SaelabError
from saelab.units import parse_size

EXECUTORS = ("local", "ray")


def option(
    default: Any = ...,
    help: str = "",
    *decls: str,
    argument: bool = False,
    cli: bool = True,
    minimum: int | None = None,
) -> Any:
    """A config field and its command-line option: `help` is its one description; `decls`
    spell the flag when it is not `--field-name` (e.g. "--bos/--no-bos"); `argument` makes
    it positional; `cli=False` keeps it out of the command (set elsewhere, e.g. --quiet on
    the app); `minimum` is the smallest value it takes (a default is spelled by leaving the
    option out, never by 0)."""
    extra = {"decls": list(decls), "argument": argument, "cli": cli, "minimum": minimum}
    return Field(default, description=help, json_schema_extra=extra)


class Options(BaseModel):
    """Base of every command's options: unknown names are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    quiet: bool = option(False, "no progress output", "--quiet", "-q", cli=False)

    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)

    def model_post_init(self, context: Any, /) -> None:
        """Refuse a value under its field's `minimum` as soon as the config is built (before
        any file, model or store is opened), in one line naming the option and its range."""
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            low, value = extra.get("minimum"), getattr(self, name)
            if isinstance(low, int) and isinstance(value, (int, float)) and value < low:
                default = field.default
                hint = "leave it out for the default" + (
                    f" ({default})" if default is not None and default is not PydanticUndefined
                    else ""
                )  # fmt: skip
                raise SaelabError(
                    f"`{name}` {value} is out of range: it must be at least {low}; {hint}"
                    if default is not PydanticUndefined
                    else f"`{name}` {value} is out of range: it must be at least {low}"
                )


class RunOptions(Options):
    """A command that works on a run folder."""

    run: str | None = option(None, "run folder (where the stage reads and writes)")


class StageOptions(RunOptions):
    """What every stage takes: where it runs, whether to start again, budgets, executor."""

    overwrite: bool = option(False, "start this stage of the run folder again")
    max_memory: str | None = option(None, "RAM budget, e.g. 4GB")
    max_gpu_memory: str | None = option(None, "GPU memory budget, e.g. 8GB")
    max_disk: str | None = option(None, "disk budget for what the stage writes, e.g. 20GB")
    executor: str = option(
        "local", "where units run: local (in this process) | ray (a Ray cluster, saelab[ray])"
    )
    ray_address: str | None = option(
        None, "--executor ray: the cluster, auto or HOST:PORT (default: start one here)"
    )
    workers: int | None = option(
        None, "--executor ray: workers (default: one per GPU of the cluster, else one per CPU)"
    )

    def budget(self) -> Budget:
        """The budget flags as sizes (a typo fails here, before anything runs)."""
        return Budget(
            parse_size(self.max_memory, "--max-memory"),
            parse_size(self.max_gpu_memory, "--max-gpu-memory"),
            parse_size(self.max_disk, "--max-disk"),
        )


def check_executor(options: StageOptions) -> str:
    """The executor's name, once its options agree with it."""
    name = options.executor
    if name not in EXECUTORS:
        raise SaelabError(f"--executor {name!r} is not one of {', '.join(EXECUTORS)}")
    if name != "ray":
        for field in ("ray_address", "workers"):
            if getattr(options, field) is not None:
                raise SaelabError(f"`{field}` is for --executor ray; add --executor ray or drop it")
    if options.workers is not None and options.workers < 1:
        raise SaelabError(f"`workers` {options.workers} must be at least 1")
    return name
