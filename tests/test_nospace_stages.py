"""A full disk in train (its checkpoints), contrast and patch, through the CLI: one line
naming what was being written and the space it needed; the same command, once space is
freed, ends with the bytes of a run that never ran out.

The command runs in a child process under a file size limit (RLIMIT_FSIZE: writes past it
fail with EFBIG, which saelab reports like a full disk), so no mount is needed. The limit
sits above every file the run keeps rewriting (manifest.json, run.toml) and below the
stage's own largest output, so the stage's output is what fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saelab.atomic import TMP_PREFIX, tree_digests
from saelab.cli import main

pytestmark = pytest.mark.slow  # the five stages once, then three commands in children

SRC = Path(__file__).resolve().parent.parent / "src"
#: patch's targets: each adds a log-prob per record, so its parts outgrow the manifest
WORDS = (
    "the a yes no I you it to of and in is be on at by we he she they this that with as"
    " for not but or if so do go up out one two all new old big"
).split()
STAGES = {
    "train": ["train", "--run", "run", "--expansion", "2", "--k", "4", "--batch-size", "32",
              "--checkpoint-every", "1", "--no-splice"],
    "encode": ["encode", "--run", "run", "--saes", "run/saes"],
    "contrast": ["contrast", "--run", "run", "--groups", "a,b", "--min-active", "1"],
    "patch": ["patch", "--run", "run", "--sweep", "top:1", "--values", "0", "--generate", "3",
              "--targets", ",".join(f" {w}" for w in WORDS)],
}  # fmt: skip

_CHILD = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from saelab.cli import main
main(["-q", *sys.argv[3:]])
"""


def _outputs(work: Path) -> dict[str, str]:
    """Every file of the run but manifest.json (it records times, memory and pids)."""
    return {k: v for k, v in tree_digests(work / "run").items() if k != "manifest.json"}


@pytest.fixture(scope="module")
def reference(smol, tmp_path_factory):
    """The uninterrupted run (extract, train, encode, contrast, patch), kept after each
    stage: {stage: folder holding `run` as that stage left it}."""
    base = tmp_path_factory.mktemp("nospace")
    work = base / "ref"
    work.mkdir()
    with (work / "p.jsonl").open("w") as f:
        for i in range(24):
            text = f"Dear colleague, kindly review item {i}." if i % 2 else f"yo grab thing {i} lol"
            f.write(json.dumps({"text": text, "group": "a" if i % 2 else "b"}) + "\n")
    cwd = os.getcwd()
    os.chdir(work)  # relative paths: a run records them, and the copies must match
    try:
        stages = {}
        assert _in_process(["extract", "--run", "run", "--prompts", "p.jsonl", "--hooks",
                            "resid_post.1", "--shard-size", "24"]) == 0  # fmt: skip
        stages["extract"] = _keep(work, base / "after-extract")
        for stage, argv in STAGES.items():
            assert _in_process(argv) == 0
            stages[stage] = _keep(work, base / f"after-{stage}")
    finally:
        os.chdir(cwd)
    return stages


def _in_process(argv: list[str]) -> int:
    """`saelab -q ARGV` in this process (a refusal's line stays in the captured stderr)."""
    try:
        main(["-q", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _keep(work: Path, dest: Path) -> Path:
    shutil.copytree(work, dest)
    return dest


@pytest.mark.parametrize("stage,before,what", [
    ("train", "extract", "training checkpoint blocks.1.hook_resid_post.pt"),
    ("contrast", "encode", "contrast"),
    ("patch", "contrast", "patch"),
])  # fmt: skip
def test_a_full_disk_is_one_line_and_the_same_command_resumes(
    reference, tmp_path, monkeypatch, stage, before, what
):
    work = tmp_path / "work"
    shutil.copytree(reference[before], work)
    after = reference[stage]
    kept = [after / "run" / n for n in ("manifest.json", "run.toml")]
    limit = max(p.stat().st_size for p in kept) + 1024
    written = {k: (after / "run" / k).stat().st_size for k in set(_outputs(after)) -
               set(_outputs(reference[before]))}  # fmt: skip
    assert max(written.values()) > limit, (written, limit)  # the test's own premise

    r = subprocess.run([sys.executable, "-c", _CHILD, str(SRC), str(limit), *STAGES[stage]],
                       cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("saelab: error: writing ") and what in lines[0], lines[0]
    assert "file size limit" in lines[0] and "needs about" in lines[0], lines[0]
    assert not [p for p in (work / "run").rglob("*") if p.name.startswith(TMP_PREFIX)]

    monkeypatch.chdir(work)  # space freed: the same command, to the end
    assert _in_process(STAGES[stage]) == 0
    assert _outputs(work) == _outputs(after)
