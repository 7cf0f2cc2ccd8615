"""`verify_run` finds a flipped byte and a deleted chunk in a real extract run; `repair` plus
the same extract restores identical bytes. The per-file manifest layout and today's encode and
train records are checked too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import saelab.store.activations as act
from saelab.atomic import file_digest, tree_digests
from saelab.errors import SaelabError
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.run import RunFolder
from saelab.sae import SAE, SAEConfig
from saelab.store.codes import CodesWriter
from saelab.verify import CHECKED, DAMAGED, INTACT, MISSING, repair, verify_run

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def _extract(run: Path, prompts: Path, smol) -> None:
    run_extract(
        ExtractConfig(prompts=str(prompts), hooks="resid_post.1,resid_post.2", run=str(run),
                       quiet=True, store_dtype="float16", shard_size=4),
        lm=smol,
    )  # fmt: skip


def test_verify_finds_a_flip_and_a_deleted_chunk_and_repair_rebuilds_them(
    smol, tmp_path, monkeypatch
):
    monkeypatch.setattr(act, "_CHUNK_BYTES", 8192)  # several chunks per array
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"text": f"Prompt number {i} is {'long ' * i}."}) + "\n" for i in range(11)
        )
    )
    run = tmp_path / "run"
    _extract(run, prompts, smol)
    before = tree_digests(run / "activations")
    seen: list[tuple[int, int]] = []
    report = verify_run(run, workers=2, progress=lambda done, total: seen.append((done, total)))
    # three shards and the stage's own prompt table; the store's two root groups are setup's
    assert report.ok and report.counts()[INTACT] == 4 and report.files_hashed == len(before) - 1
    assert seen and seen[-1][0] == seen[-1][1] == report.bytes_hashed

    shards = run / "activations" / "shards"
    flipped = shards / "00000" / HOOKS[0] / "c.1.0"
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    flipped.write_bytes(bytes(raw))
    deleted = shards / "00002" / HOOKS[1] / "c.0.0"
    deleted.unlink()

    report = verify_run(run)
    by_unit = {u.unit: u for u in report.units}
    assert not report.ok
    assert by_unit["shard-00000"].status == DAMAGED
    # units record each file's hash: the damaged and the missing file are named exactly
    assert by_unit["shard-00000"].damaged == [f"activations/shards/00000/{HOOKS[0]}/c.1.0"]
    assert by_unit["shard-00001"].status == INTACT
    assert by_unit["shard-00002"].status == MISSING
    assert by_unit["shard-00002"].missing == [f"activations/shards/00002/{HOOKS[1]}/c.0.0"]
    assert report.rebuild() == {"extract": f"saelab extract --run {run} --prompts {prompts}"
                                " --hooks resid_post.1,resid_post.2 --store-dtype float16"
                                " --shard-size 4"}  # fmt: skip

    removed = repair(run, report)
    shards_removed = sorted({"/".join(r.split("/")[:3]) for r in removed})
    assert shards_removed == ["activations/shards/00000", "activations/shards/00002"]
    stage = RunFolder(run).stage("extract")
    assert set(stage["units"]) == {"shard-00001"} and stage["complete"] is False
    kept = file_digest(shards / "00001" / HOOKS[0] / "c.0.0")

    _extract(run, prompts, smol)  # the same command rebuilds exactly the two shards
    assert tree_digests(run / "activations") == before
    assert file_digest(shards / "00001" / HOOKS[0] / "c.0.0") == kept
    assert verify_run(run).counts()[INTACT] == 4


def test_units_recorded_file_by_file(tmp_path):
    """The layout every stage will record: {"files": {path from the run root: sha256}}."""
    run = tmp_path / "run"
    (run / "out").mkdir(parents=True)
    files = {}
    for name in ("a.bin", "b.bin", "c.bin"):
        (run / "out" / name).write_bytes(name.encode() * 100)
        files[f"out/{name}"] = file_digest(run / "out" / name)
    folder = RunFolder(run)
    folder.record_unit(
        "patch", "set-1", {"files": {k: files[k] for k in ("out/a.bin", "out/b.bin")}}
    )
    folder.record_unit("patch", "set-2", {"files": {"out/c.bin": files["out/c.bin"]}})
    assert verify_run(run).counts()[INTACT] == 2
    (run / "out" / "b.bin").write_bytes(b"changed")
    (run / "out" / "c.bin").unlink()
    report = verify_run(run)
    units = {u.unit: u for u in report.units}
    assert units["set-1"].status == DAMAGED and units["set-1"].damaged == ["out/b.bin"]
    assert units["set-2"].status == MISSING and units["set-2"].missing == ["out/c.bin"]
    assert sorted(repair(run, report)) == ["out/a.bin", "out/b.bin"]
    assert folder.done_units("patch") == {} and not (run / "out" / "a.bin").exists()
    assert verify_run(run).ok


def test_todays_encode_and_train_records_are_read_back(tmp_path):
    run = tmp_path / "run"
    hook = HOOKS[0]
    w = CodesWriter(run / "codes", hook, {"d_sae": 8, "positions": "last"})
    for s in range(2):
        w.write_shard(s, indptr=np.array([0, 1]), indices=np.array([3]),
                      values=np.array([1.0], np.float32), prompt_index=np.array([s]),
                      row_offsets=np.array([0, 1]))  # fmt: skip
    SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu")).save(run / "saes" / hook)
    folder = RunFolder(run)
    folder.record_unit("encode", hook, {"rows": 2, "nnz": 2})
    folder.record_unit("train", hook, {"config_hash": "x", "metrics": {}})
    report = verify_run(run)
    assert [u.status for u in report.units] == [CHECKED, CHECKED] and report.ok
    shard = run / "codes" / hook / "00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 1
    shard.write_bytes(bytes(raw))
    weights = run / "saes" / hook / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    report = verify_run(run)
    units = {u.stage: u for u in report.units}
    assert units["encode"].status == DAMAGED and "00001.safetensors" in units["encode"].detail
    assert units["train"].status == DAMAGED and "sae_weights" in units["train"].detail
    assert units["encode"].damaged == [f"codes/{hook}/00001.safetensors"]
    repair(run, report)  # only the bad codes shard goes: encode writes what is not there
    assert (run / "codes" / hook / "00000.safetensors").is_file() and not shard.exists()
    assert not (run / "saes" / hook).exists()
    assert folder.done_units("encode") == {} and folder.done_units("train") == {}


def test_not_a_run(tmp_path):
    with pytest.raises(SaelabError, match="does not exist"):
        verify_run(tmp_path / "nope")
    with pytest.raises(SaelabError, match="no manifest.json"):
        verify_run(tmp_path)
