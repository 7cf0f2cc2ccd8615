"""`saelab verify RUN [--repair]` on a real extract run: a flipped byte and a deleted chunk
are named, exit 1; --repair and the rebuild command it prints restore the same bytes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from saelab.atomic import tree_digests
from saelab.cli import main
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.flags import command_line
from saelab.run import RunFolder
from tests.cli_errors import cli, one_line

HOOK = "blocks.1.hook_resid_post"


def _verify(capsys, *args: str) -> tuple[int, str]:  # noqa: ANN001
    """(exit code, stdout) of `saelab -q verify ARGS...`."""
    try:
        main(["-q", "verify", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().out


def _snapshot(run: Path) -> dict[str, str]:
    """sha256 of every file stages wrote (manifest and run.toml hold times: left out)."""
    return {k: v for k, v in tree_digests(run).items() if k not in ("manifest.json", "run.toml")}


def test_verify_names_a_flip_and_a_deletion_and_repair_rebuilds_them(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"Prompt {i} is {'long ' * i}."}) + "\n"
                               for i in range(6)))  # fmt: skip
    run = tmp_path / "run"
    extract = ["extract", "--run", str(run), "--prompts", str(prompts), "--hooks", "resid_post.1",
               "--shard-size", "2", "--store-dtype", "float16"]  # fmt: skip
    code, err = cli(capsys, "-q", *extract)
    assert code == 0, err
    before = _snapshot(run)
    code, out = _verify(capsys, str(run))
    assert code == 0 and "damaged:" not in out and "missing:" not in out

    shards = run / "activations" / "shards"
    flipped = shards / "00000" / HOOK / "c.0.0"
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    flipped.write_bytes(bytes(raw))
    deleted = shards / "00002" / HOOK / "c.0.0"
    deleted.unlink()

    code, out = _verify(capsys, str(run))
    assert code == 1
    assert f"damaged: extract shard-00000: activations/shards/00000/{HOOK}/c.0.0 (damaged)" in out
    assert f"missing: extract shard-00002: activations/shards/00002/{HOOK}/c.0.0 (missing)" in out
    rebuild = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("rebuild extract")]
    assert len(rebuild) == 1 and rebuild[0].startswith(f"saelab extract --run {run} ")

    code, out = _verify(capsys, str(run), "--repair")
    assert code == 1 and "repair: removed" in out
    units = RunFolder(run).stage("extract")["units"]
    assert sorted(units) == ["shard-00001"]
    assert not any(p.is_file() for s in ("00000", "00002") for p in (shards / s).rglob("*"))

    args = shlex.split(rebuild[0])[1:]  # the printed command, as the user would paste it
    code, err = cli(capsys, "-q", *args)
    assert code == 0, err
    assert _snapshot(run) == before
    assert _verify(capsys, str(run))[0] == 0


def test_verify_refusals(tmp_path, capsys):
    one_line(*cli(capsys, "verify", str(tmp_path / "nope")), "does not exist")
    one_line(*cli(capsys, "verify", str(tmp_path)), "no manifest.json")
    one_line(*cli(capsys, "verify"), "saelab verify RUN")
    one_line(*cli(capsys, "verify", str(tmp_path), "--workers", "0"), "--workers 0")


def test_the_rebuild_command_is_the_options_that_differ_from_their_defaults():
    cfg = ExtractConfig(run="r", prompts="my prompts.jsonl", bos=False, stop=["a b", "c"],
                        drop_bos=True, overwrite=True, quiet=True, shard_size=3)  # fmt: skip
    assert command_line("extract", cfg, "runs/x") == (
        "saelab extract --run runs/x --prompts 'my prompts.jsonl' --no-bos --drop-bos"
        " --stop 'a b' --stop c --shard-size 3"
    )
