"""The one exception type a user's mistake raises.

The CLI prints a SaelabError as a single line and exits non-zero; anything else is a bug and
gets a traceback. Messages name the offending input and the fix, because the user reads only
that line.
"""

from __future__ import annotations


class SaelabError(Exception):
    """A problem the user can fix (bad input, missing file, budget too small)."""

    exit_code = 2


class BudgetError(SaelabError):
    """The plan says the work cannot fit the memory or disk budget."""

    exit_code = 3
