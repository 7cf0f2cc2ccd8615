"""Lower layers name a setting by its field name in backticks (`` `keep_bits` 40 is out of
range``); where the setting is a command-line option, the message the user reads names the
flag instead (``--keep-bits 40 is out of range``). One function does that for every caller:
the CLI for errors, `plan` for its suggestions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator

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
