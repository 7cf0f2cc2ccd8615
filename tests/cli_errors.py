"""Running the CLI in-process and checking its refusals: one line, `saelab: error: `, non-zero."""

from __future__ import annotations

from saelab.cli import main


def cli(capsys, *args: str) -> tuple[int, str]:  # noqa: ANN001
    """(exit code, stderr) of `saelab ARGS...`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *fragments: str, lower: bool = False) -> None:
    """A refusal: non-zero exit, exactly one `saelab: error: ` line naming every fragment."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("saelab: error: "), err
    for f in fragments:
        line = lines[0].lower() if lower else lines[0]
        assert (f.lower() if lower else f) in line, (f, lines[0])
