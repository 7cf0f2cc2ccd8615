"""`saelab verify RUN [--repair]`: every file the manifest records hashed again (in parallel,
with progress), a table of what is intact, damaged or missing and the command that rebuilds
each damaged unit; exit 1 when anything is damaged or missing. `--repair` removes the
damaged units' files and records so that command rebuilds exactly those (`saelab.verify`).
"""

from __future__ import annotations

import threading

import typer
from rich.table import Table

from saelab.errors import SaelabError
from saelab.pipeline.options import RunOptions, option
from saelab.progress import Reporter, console, say
from saelab.units import format_bytes, format_seconds
from saelab.verify import CHECKED, DAMAGED, INTACT, MISSING, VerifyReport, repair, verify_run

_MiB = 1 << 20


class VerifyConfig(RunOptions):
    """Check a run folder against the sha256 of every file its manifest records."""

    run: str | None = option(None, "the run folder to check", argument=True)
    repair: bool = option(
        False, "remove damaged units (files and records) so their stage command rebuilds them"
    )
    workers: int | None = option(None, "files hashed at once (default: CPUs, at most 8)", minimum=1)


def run_verify(c: VerifyConfig) -> None:
    """Verify (and with --repair clear) the run; exit 1 when anything was wrong."""
    if not c.run:
        raise SaelabError("name the run folder to check: saelab verify RUN")
    if c.workers is not None and c.workers < 1:
        raise SaelabError(f"--workers {c.workers} must be at least 1")
    report = _verify(c)
    print_report(report)
    if report.ok:
        return
    if c.repair:
        removed = repair(report.run, report)
        console().print(
            f"repair: removed {len(removed)} path(s) and their records; run the rebuild"
            " command(s) above to write them again",
            highlight=False,
        )
    raise typer.Exit(1)


def _verify(c: VerifyConfig) -> VerifyReport:
    """verify_run with a progress bar over the bytes hashed (MiB); the hashing threads
    report to it under a lock."""
    lock = threading.Lock()
    state: dict[str, Reporter | int] = {"seen": 0}
    rep: Reporter | None = None

    def progress(done: int, total: int) -> None:
        nonlocal rep
        with lock:
            if rep is None:
                rep = Reporter("verify", total=max(1, -(-total // _MiB)), unit="MiB",
                               rate_unit="MiB", quiet=c.quiet).__enter__()  # fmt: skip
            now = -(-done // _MiB) if done < total else max(1, -(-total // _MiB))
            seen = int(state["seen"])  # type: ignore[arg-type]
            if now > seen:
                rep.advance(now - seen, now - seen)
                state["seen"] = now

    try:
        return verify_run(c.run or ".", workers=c.workers, progress=progress)
    finally:
        if rep is not None:
            rep.__exit__(None, None, None)


def print_report(report: VerifyReport) -> None:
    """Per stage the units intact / damaged / missing; then each bad unit, its files and the
    command that rebuilds it (after --repair)."""
    out = console()
    t = Table(title=f"verify {report.run}", title_justify="left")
    for col in ("stage", "units", INTACT, "read back", DAMAGED, MISSING):
        t.add_column(col, justify="left" if col == "stage" else "right")
    stages: dict[str, dict[str, int]] = {}
    for u in report.units:
        row = stages.setdefault(u.stage, {INTACT: 0, CHECKED: 0, DAMAGED: 0, MISSING: 0})
        row[u.status] += 1
    for stage, row in stages.items():
        t.add_row(stage, str(sum(row.values())), *(str(row[s]) for s in
                  (INTACT, CHECKED, DAMAGED, MISSING)))  # fmt: skip
    out.print(t)
    bad = report.problems()
    for u in bad:  # plain lines, not a table: paths stay whole for copying and grep
        files = [*(f"{f} (damaged)" for f in u.damaged), *(f"{f} (missing)" for f in u.missing)]
        shown = ", ".join(files[:5]) + (f", ... {len(files) - 5} more" if len(files) > 5 else "")
        out.print(f"{u.status}: {u.stage} {u.unit}: {shown or u.detail}", markup=False,
                  highlight=False)  # fmt: skip
    fallback = report.rebuild()  # units of one stage made by several commands: each one
    for stage, command in dict.fromkeys((u.stage, u.command or fallback[u.stage]) for u in bad):
        out.print(f"rebuild {stage} (after --repair): {command}", markup=False, highlight=False)
    counts = report.counts()
    say(
        f"verify: {report.files_hashed} files, {format_bytes(report.bytes_hashed)} hashed in"
        f" {format_seconds(report.seconds)}; {counts[DAMAGED]} unit(s) damaged,"
        f" {counts[MISSING]} missing" + ("" if bad else "; everything is intact"),
    )
