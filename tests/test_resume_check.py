"""Resume re-checks the units it skips: their sizes, the sha256 of their metadata files and
of one data file drawn at random. A file with the right size and other bytes is refused in
one line naming it and `saelab verify RUN --repair`; after the repair the same command ends
with the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saelab.atomic import tree_digests
from saelab.errors import SaelabError
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.run import RunFolder
from saelab.verify import repair, verify_run
from tests.cli_errors import cli, one_line

HOOK = "blocks.1.hook_resid_post"


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def extracted(smol, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"Prompt {i} says {'hi ' * i}"}) + "\n"
                               for i in range(6)))  # fmt: skip
    run = tmp_path / "run"
    cfg = ExtractConfig(prompts=str(prompts), hooks="resid_post.1", run=str(run), quiet=True,
                        shard_size=2)  # fmt: skip
    run_extract(cfg, lm=smol)
    return run, cfg


def _state(run: Path) -> tuple[bytes, bytes]:
    return (run / "manifest.json").read_bytes(), (run / "run.toml").read_bytes()


def test_a_damaged_metadata_file_is_refused_on_resume(extracted, smol):
    run, cfg = extracted
    before, state = tree_digests(run / "activations"), _state(run)
    meta = run / "activations" / "shards" / "00001" / HOOK / "zarr.json"
    _flip(meta)
    with pytest.raises(SaelabError) as e:
        run_extract(cfg, lm=smol)
    msg = str(e.value)
    assert str(meta) in msg and f"saelab verify {run} --repair" in msg and "\n" not in msg
    assert _state(run) == state  # the refusal changed nothing
    repair(run, verify_run(run))
    run_extract(cfg, lm=smol)
    assert tree_digests(run / "activations") == before


def test_a_damaged_data_file_is_refused_on_resume(extracted, smol, capsys):
    run, cfg = extracted
    shard = run / "activations" / "shards" / "00002"
    rec = RunFolder(run).done_units("extract")["shard-00002"]
    data = [run / rel for rel in rec["files"] if not rel.endswith(".json")]
    assert data and all(str(p).startswith(str(shard)) for p in data)
    for p in data:  # every data file: whichever one the resume draws is damaged
        _flip(p)
    args = ["extract", "--run", str(run), "--prompts", cfg.prompts or "", "--hooks",
            "resid_post.1", "--shard-size", "2"]  # fmt: skip
    code, err = cli(capsys, *args)
    one_line(code, err, "does not match the sha256", f"saelab verify {run} --repair")
    assert str(shard) in err


def test_a_truncated_or_missing_file_is_redone(extracted, smol):
    """A size that differs is not spot-checked: the unit runs again (as before)."""
    run, cfg = extracted
    before = tree_digests(run / "activations")
    chunk = run / "activations" / "shards" / "00000" / HOOK / "c.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    run_extract(cfg, lm=smol)
    assert tree_digests(run / "activations") == before
