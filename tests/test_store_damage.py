"""Damaged store files are never read as data: each is one SaelabError line naming the file,
the stage that wrote it and `saelab verify` (inside a run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from saelab.errors import SaelabError
from saelab.sae import SAE, SAEConfig
from saelab.store import ActivationWriter, Trace, TraceWriter, open_activations, open_traces
from saelab.store.codecs import quiet_numcodecs
from saelab.store.codes import CodesWriter, open_codes

HOOK = "blocks.0.hook_resid_post"


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"saelab_manifest": 1, "stages": {}}')
    return run


def _acts(run: Path, monkeypatch, d: int = 8) -> np.ndarray:
    """Two shards of 40 rows each in 64-byte chunks (several chunk files per array)."""
    import saelab.store.activations as act

    monkeypatch.setattr(act, "_CHUNK_BYTES", 64)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((80, d)).astype(np.float32)
    w = ActivationWriter(run / "activations", hooks=[HOOK], d_model={HOOK: d}, dtype="float32")
    for s in range(2):
        w.write_shard(
            s,
            prompt_index=np.arange(4 * s, 4 * s + 4),
            token_ids=[np.arange(10, dtype=np.int32)] * 4,
            acts={HOOK: data[40 * s : 40 * s + 40]},
        )
    return data


def _chunk(run: Path, shard: int = 1, c: int = 2) -> Path:
    return run / "activations" / "shards" / f"{shard:05d}" / HOOK / f"c.{c}.0"


def test_intact_store_reads_back_exactly(tmp_path, monkeypatch):
    run = _run(tmp_path)
    data = _acts(run, monkeypatch)
    arr = open_activations(run)[HOOK]
    np.testing.assert_array_equal(arr.to_numpy(), data)
    np.testing.assert_array_equal(arr[np.array([79, 3, 41, 3])], data[[79, 3, 41, 3]])
    meta = json.loads((_chunk(run).parent / "zarr.json").read_text())
    assert meta["codecs"][-1] == {"name": "crc32c"}
    with quiet_numcodecs():  # zarr itself reads the checksummed chunks too
        z = zarr.open_array(str(_chunk(run).parent), mode="r")[...]
    np.testing.assert_array_equal(z, data[40:])


@pytest.mark.parametrize("how", ["flip", "delete", "truncate", "garbage", "empty"])
def test_a_damaged_chunk_is_an_error_naming_it(tmp_path, monkeypatch, how):
    run = _run(tmp_path)
    _acts(run, monkeypatch)
    f = _chunk(run)
    raw = bytearray(f.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x04
        f.write_bytes(bytes(raw))
    elif how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "garbage":
        f.write_bytes(b"\x00garbage" * 9)
    else:
        f.write_bytes(b"")
    store = open_activations(run)
    with pytest.raises(SaelabError) as e:
        store[HOOK].to_numpy()
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "is damaged" in msg
    assert "saelab extract" in msg and f"saelab verify {run}" in msg
    # rows away from the damaged chunk still read; fancy indexing meets the same error
    assert store[HOOK][0:8].shape == (8, 8)
    with pytest.raises(SaelabError, match="is damaged"):
        store[HOOK][np.array([0, 44])]  # chunk 2 of shard 1 holds rows 44-45


def test_a_flipped_byte_in_an_old_store_without_checksums_still_reads(tmp_path, monkeypatch):
    """Stores written before the crc32c codec stay readable (their flips go unseen, as before;
    `verify` compares them with the manifest's hashes)."""
    run = _run(tmp_path)
    data = _acts(run, monkeypatch)
    for meta_file in (run / "activations" / "shards").rglob("zarr.json"):
        meta = json.loads(meta_file.read_text())
        if meta.get("node_type") != "array":
            continue
        meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "crc32c"]
        meta_file.write_text(json.dumps(meta))
        for chunk in meta_file.parent.glob("c.*"):
            chunk.write_bytes(chunk.read_bytes()[:-4])
    np.testing.assert_array_equal(open_activations(run)[HOOK].to_numpy(), data)
    _chunk(run).unlink()
    with pytest.raises(SaelabError, match="chunk file missing"):
        open_activations(run)[HOOK].to_numpy()


@pytest.mark.parametrize(
    "rel",
    [
        "zarr.json",
        "shards/00001/zarr.json",
        f"shards/00001/{HOOK}/zarr.json",
        "shards/00001/token_offsets/zarr.json",
        "shards/00001/token_offsets/c.0",
    ],
)
@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"shape": 3}'])
def test_damaged_metadata_is_an_error_naming_it(tmp_path, monkeypatch, rel, content):
    run = _run(tmp_path)
    _acts(run, monkeypatch)
    path = run / "activations" / rel
    path.write_bytes(content)
    with pytest.raises(SaelabError) as e:
        store = open_activations(run)
        store[HOOK].to_numpy()
        store.tokens(5)
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value) or "not a saelab activation store" in str(e.value)


def test_trace_store_damage(tmp_path):
    run = _run(tmp_path)
    w = TraceWriter(run / "traces", hooks=[HOOK], d_model={HOOK: 4}, dtype="float32")
    rng = np.random.default_rng(1)
    traces = [
        Trace(
            i,
            np.arange(3),
            np.arange(2),
            "ab",
            "ab",
            "eos",
            hidden={HOOK: rng.standard_normal((5, 4)).astype(np.float32)},
        )
        for i in range(3)
    ]
    w.write_shard(0, traces)
    np.testing.assert_array_equal(open_traces(run).hidden(2, HOOK), traces[2].hidden[HOOK])
    shard = run / "traces" / "shards" / "00000"
    chunk = shard / HOOK / "c.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[-7] ^= 0x80
    chunk.write_bytes(bytes(raw))
    with pytest.raises(SaelabError, match=r"c\.0\.0 is damaged \(crc32c checksum mismatch\)"):
        open_traces(run).hidden(0, HOOK)
    (shard / "meta.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(SaelabError, match=r"meta\.parquet is damaged .*saelab extract"):
        open_traces(run).texts(0)
    (shard / "token_offsets" / "c.0").unlink()
    with pytest.raises(SaelabError, match="chunk file missing"):
        open_traces(run)


def _codes(run: Path) -> Path:
    w = CodesWriter(run, HOOK, {"d_sae": 16, "positions": "last"})
    w.write_shard(
        0,
        indptr=np.array([0, 2, 3]),
        indices=np.array([1, 15, 4]),
        values=np.array([0.5, 1.5, 2.0], dtype=np.float32),
        prompt_index=np.array([0, 1]),
        row_offsets=np.array([0, 1, 2]),
    )
    return run / "codes" / HOOK / "00000.safetensors"


@pytest.mark.parametrize("how", ["truncate", "garbage", "header", "flip"])
def test_damaged_codes_file_is_an_error_naming_it(tmp_path, how):
    run = _run(tmp_path)
    f = _codes(run)
    dense = open_codes(run)[HOOK].matrix().toarray()
    assert dense[0, 15] == 1.5 and dense.sum() == 4.0
    raw = f.read_bytes()
    flipped = raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:]  # in the values or offsets
    f.write_bytes(
        flipped
        if how == "flip"
        else raw[: len(raw) - 5]
        if how == "truncate"
        else b"garbage!" * 3
        if how == "garbage"
        else (10**6).to_bytes(8, "little") + raw[8:]
    )
    with pytest.raises(SaelabError) as e:
        open_codes(run)[HOOK].matrix()
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "saelab encode" in msg and "verify" in msg


def test_a_deleted_codes_shard_is_an_error(tmp_path):
    run = _run(tmp_path)
    f = _codes(run)
    w = CodesWriter(run, HOOK, {"d_sae": 16, "positions": "last"})
    w.write_shard(
        1,
        indptr=np.array([0, 1]),
        indices=np.array([3]),
        values=np.array([1.0], dtype=np.float32),
        prompt_index=np.array([2]),
        row_offsets=np.array([0, 1]),
    )
    assert open_codes(run)[HOOK].matrix().shape == (3, 16)
    f.unlink()
    with pytest.raises(SaelabError, match=r"00000\.safetensors is damaged \(file missing"):
        open_codes(run)[HOOK]


def test_codes_that_break_their_invariants_are_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    run = _run(tmp_path)
    f = _codes(run)
    good = load_file(str(f))
    for key, bad in [
        ("indices", np.array([1, 99, 4], dtype=np.uint16)),  # past d_sae
        ("indptr", np.array([0, 3, 2])),  # decreasing
        ("values", np.array([0.5, np.nan, 2.0], dtype=np.float32)),
        ("row_offsets", np.array([0, 1, 5])),
        ("values", np.array([1, 2, 3], dtype=np.int32)),  # wrong dtype
    ]:
        save_file({**good, key: bad}, str(f))
        with pytest.raises(SaelabError, match=r"00000\.safetensors is damaged"):
            open_codes(run)[HOOK].matrix()


@pytest.mark.parametrize("how", ["truncate", "garbage", "flip"])
def test_damaged_sae_weights_name_the_file_and_train(tmp_path, how):
    run = _run(tmp_path)
    folder = run / "saes" / HOOK
    SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu")).save(folder)
    w = folder / "sae_weights.safetensors"
    raw = w.read_bytes()
    if how == "flip":
        w.write_bytes(raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:])
    else:
        w.write_bytes(raw[: len(raw) // 2] if how == "truncate" else b"\x08" + b"\x00" * 7 + b"{")
    with pytest.raises(SaelabError) as e:
        SAE.load(folder)
    msg = str(e.value)
    assert str(w) in msg and "saelab train" in msg and f"saelab verify {run}" in msg
    loose = tmp_path / "loose"
    SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu")).save(loose)
    (loose / "sae_weights.safetensors").write_bytes(raw[:20])
    with pytest.raises(SaelabError, match="is damaged .*fetch"):
        SAE.load(loose)


def test_a_damaged_cfg_never_allocates_what_it_claims(tmp_path):
    folder = tmp_path / "sae"
    SAE(SAEConfig(d_in=4, d_sae=8, architecture="relu")).save(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_sae"] = 10**12  # would be terabytes if allocated before the shapes are checked
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaelabError, match="W_enc has shape"):
        SAE.load(folder)
    cfg["d_sae"] = "8"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaelabError, match="d_sae is '8', not a whole number"):
        SAE.load(folder)
    assert torch.get_default_dtype() == torch.float32
