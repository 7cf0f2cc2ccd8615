"""Lower layers name a setting by its field name in backticks (`` `keep_bits` 40 is out of
range``); where the setting is a command-line option, the message the user reads names the
flag instead (``--keep-bits 40 is out of range``). One function does that for every caller:
the CLI for errors, `plan` for its suggestions.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterable, Iterator

from pydantic import BaseModel

from saelab.errors import SaelabError

_NAME = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag(name: str) -> str:
    """The command-line flag of a config field: `max_disk` -> `--max-disk`."""
    return "--" + name.replace("_", "-")


def as_flags(text: str, fields: Iterable[str]) -> str:
    """`text` with every backticked field name that is one of `fields` written as its flag;
    other backticked words (not options of this command) stay as they are."""
    known = set(fields)
    return _NAME.sub(lambda m: flag(m.group(1)) if m.group(1) in known else m.group(0), text)


@contextlib.contextmanager
def flags_in_errors(fields: Iterable[str]) -> Iterator[None]:
    """Re-raise a SaelabError from below with `fields` written as flags (same exception, same
    type and exit code): a stage's config is its command line, so it speaks in flags."""
    try:
        yield
    except SaelabError as e:
        if e.args and isinstance(e.args[0], str):
            e.args = (as_flags(e.args[0], fields), *e.args[1:])
        raise


#: options that do not decide what a stage writes, left out of a rebuild command
_NOT_REBUILT = ("quiet", "overwrite")


def command_line(name: str, config: BaseModel, run: str) -> str:
    """The `saelab NAME ...` command that runs `config` again on `run`: every option that
    differs from its default, written as the user types it (what `verify` prints for a
    damaged unit, so its rebuild needs no memory of the original command)."""
    parts = ["saelab", name]
    for field, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        value = getattr(config, field)
        if field == "run" or field in _NOT_REBUILT or not extra.get("cli", True):
            continue
        if value == info.default:
            continue
        decls = [str(d) for d in extra.get("decls") or []]  # type: ignore[union-attr]
        spelled = decls[0] if decls else flag(field)
        if extra.get("argument"):
            parts.append(shlex.quote(str(value)))
        elif isinstance(value, bool):  # typer's --x/--no-x unless the field spells its own
            on, _, off = spelled.partition("/")
            parts.append(on if value else off or "--no-" + on.removeprefix("--"))
        elif isinstance(value, list):
            parts += [p for v in value for p in (spelled, shlex.quote(str(v)))]
        else:
            parts += [spelled, shlex.quote(str(value))]
    return " ".join([*parts[:2], "--run", shlex.quote(run), *parts[2:]])
