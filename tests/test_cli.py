"""The command line: one-line errors, exit codes, no partial files, and the happy paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from saelab.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("saelab: error: ") and "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text(json.dumps({"prompt": "hi"}) + "\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return [
        (["--prompts", str(tmp_path / "missing.txt")], ["missing.txt", "does not exist"]),
        (["--prompts", str(empty)], ["empty.txt"]),
        (["--prompts", str(nocol)], ["nocol.jsonl", "text", "--text-column"]),
        (["--prompts", str(latin)], ["latin.txt", "UTF-8"]),
        (["--hooks", "resid_sideways.3"], ["resid_sideways", "unknown hook site"]),
        (["--hooks", "resid_post.30"], ["resid_post.30", "30 layers"]),
        (["--model", str(bert)], ["bert", "not supported"]),
        (["--model", "./no/such/model"], ["./no/such/model", "neither a file nor a folder"]),
        (["--model", "a/b/c"], ["a/b/c"]),
        (["--positions", "first"], ["--positions", "first"]),
        (["--max-disk", "1KB"], ["--max-disk", "disk"]),
        (["--max-memory", "lots"], ["--max-memory", "lots"]),
        (["--keep-bits", "40"], ["--keep-bits"]),
        (["--generate", "0"], ["--generate 0", "at least 1"]),
        (["--generate", "-3"], ["--generate -3"]),
        (["--generate", "4", "--attentions", "30"], ["--attentions", "30", "numbered 0-29"]),
        (["--generate", "4", "--stop", ""], ["--stop", "empty"]),
        (["--generate", "4", "--positions", "last"], ["--positions", "generated"]),
        (["--attentions", "3"], ["--attentions", "--generate"]),
        (["--generate", "4", "--attentions", "1", "--heads", "9"], ["--heads", "9"]),
    ]


@pytest.mark.parametrize("command", ["extract", "plan"])
def test_bad_inputs_get_one_line_and_leave_nothing(capsys, tmp_path, command):
    for i, (args, fragments) in enumerate(bad_inputs(tmp_path)):
        run = tmp_path / f"run{i}"
        extra = ["--no-calibrate"] if command == "plan" else []
        code, _, err = cli(capsys, command, *args, "--run", str(run), "--quiet", *extra)
        if command == "plan" and args[0] == "--max-disk":
            assert code == 3  # plan shows the problem in its table and exits non-zero
            continue
        assert_one_line_error(code, err, *fragments)
        assert not run.exists(), args


def test_keep_bits_out_of_range_is_refused_before_loading(capsys, tmp_path):
    code, _, err = cli(capsys, "extract", "--keep-bits", "40", "--run", str(tmp_path / "r"))
    assert_one_line_error(code, err, "--keep-bits")
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    from saelab.errors import SaelabError

    with pytest.raises(SaelabError):
        main(["extract", "--prompts", str(tmp_path / "missing.txt"), "--debug"])


def test_extract_show_and_a_changed_configuration(capsys, tmp_path):
    run = str(tmp_path / "run")
    base = ["extract", "--limit", "3", "--hooks", "resid_post.1", "--run", run, "--quiet"]
    code, out, err = cli(capsys, *base)
    assert code == 0, err
    assert "activations:" in out and "open_activations" in out
    code, out, _ = cli(capsys, "show", run)
    assert code == 0 and "blocks.1.hook_resid_post" in out and "plan vs measured" in out
    code, _, err = cli(capsys, *base[:-3], "--hooks", "resid_post.2", "--run", run, "--quiet")
    assert_one_line_error(code, err, "different extract configuration", "--overwrite")
    code, _, err = cli(capsys, "show", str(tmp_path / "nothing"))
    assert_one_line_error(code, err, "does not exist")


def test_console_script_runs_as_a_program(tmp_path):
    """The real entry point in a fresh process: exit code and stderr as a user sees them."""
    res = subprocess.run(
        [sys.executable, "-m", "saelab", "extract", "--hooks", "resid_post.99", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("saelab: error: hook 'resid_post.99'")
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()
    res = subprocess.run(
        [sys.executable, "-m", "saelab", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0
    for cmd in ("plan", "extract", "show", "demo"):
        assert cmd in res.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["show", "runs/x", "--bogus"], "No such option: --bogus"),
        (["extract", "--generate", "abc"], "--generate"),
        (["extract", "--positions"], "requires an argument"),
        (["nocommand"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(capsys, args, fragment):
    """typer raises its vendored click's exceptions: still one line, exit 2, no traceback."""
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert_one_line_error(code, err, fragment, "--help")
