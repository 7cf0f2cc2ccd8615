"""The dense activation store, on real files with random arrays (no model)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch

from saelab.atomic import tree_digests
from saelab.errors import SaelabError
from saelab.store import STORE_DIR, ActivationWriter, open_activations
from saelab.store import activations as act_mod
from saelab.store.codecs import DTYPES, round_bf16_bits

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
D = {"blocks.0.hook_resid_post": 24, "blocks.1.hook_mlp_out": 16}
SHARD_PROMPTS = [3, 1, 5]  # unequal shards


def make_shards(positions: str, seed: int = 0, massive: bool = True) -> list[dict]:
    """Prompt shards of random tokens and activations (float32), as the extract stage passes."""
    rng = np.random.default_rng(seed)
    shards, start = [], 0
    for n in SHARD_PROMPTS:
        toks = [rng.integers(0, 50000, size=int(rng.integers(1, 9))) for _ in range(n)]
        rows = sum(len(t) for t in toks) if positions == "all" else n
        acts = {}
        for h in HOOKS:
            a = rng.standard_normal((rows, D[h])).astype(np.float32) * 100
            if massive:
                a[:, 3] = 2e4 * (1 + 0.01 * rng.standard_normal(rows))
            acts[h] = a
        pidx = np.arange(start, start + n, dtype=np.int64) * 2 + 7
        shards.append({"prompt_index": pidx, "token_ids": toks, "acts": acts})
        start += n
    return shards


def write_all(root: Path, shards: list[dict], order=None, **kw) -> dict[str, str]:
    w = ActivationWriter(root, hooks=HOOKS, d_model=D, **kw)
    digests: dict[str, str] = {}
    for i in order if order is not None else range(len(shards)):
        digests.update(w.write_shard(i, **shards[i]))
    return digests


def expected(shards: list[dict], hook: str, dtype: str) -> np.ndarray:
    x = torch.from_numpy(np.concatenate([s["acts"][hook] for s in shards]))
    return x.to(getattr(torch, dtype)).float().numpy()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few rows per chunk, so reads cross chunk boundaries inside a shard as well."""
    monkeypatch.setattr(act_mod, "_CHUNK_BYTES", 256)


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
@pytest.mark.parametrize("positions", ["all", "last", "mean"])
def test_round_trip(tmp_path: Path, dtype: str, positions: str) -> None:
    shards = make_shards(positions)
    write_all(tmp_path / STORE_DIR, shards, dtype=dtype, positions=positions, attrs={"m": "x"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the numcodecs notice must stay silenced
        store = open_activations(tmp_path)
    assert store.attrs == {"m": "x"} and store.dtype == dtype and store.positions == positions
    assert store.shard_ids == [0, 1, 2]
    toks = [t for s in shards for t in s["token_ids"]]
    assert store.n_prompts == len(toks) == len(store.prompt_index)
    assert store.n_tokens == sum(len(t) for t in toks)
    np.testing.assert_array_equal(
        store.prompt_index, np.concatenate([s["prompt_index"] for s in shards])
    )
    for i, t in enumerate(toks):
        np.testing.assert_array_equal(store.tokens(i), t)
    np.testing.assert_array_equal(store.tokens(-1), toks[-1])
    assert store.token_offsets[-1] == store.n_tokens
    assert store.row_offsets[-1] == store.n_rows
    for h in HOOKS:
        want = expected(shards, h, dtype)
        arr = store[h]
        assert arr.shape == want.shape == (store.n_rows, D[h]) and len(arr) == store.n_rows
        assert arr.dtype == dtype
        got = arr.to_numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        n = len(arr)
        b1 = len(shards[0]["acts"][h])  # first shard boundary
        for sl in (slice(b1 - 2, n - 1), slice(1, b1 + 1), slice(None, None, 3), slice(-3, None)):
            np.testing.assert_array_equal(arr[sl], want[sl])
        idx = np.array([n - 1, 0, b1, b1 - 1, 0, -2])
        np.testing.assert_array_equal(arr[idx], want[idx])
        np.testing.assert_array_equal(arr[b1], want[b1])
        np.testing.assert_array_equal(arr[np.arange(n) % 2 == 0], want[::2])
        assert arr[np.array([], dtype=np.int64)].shape == (0, D[h])
        np.testing.assert_array_equal(np.concatenate(list(arr.iter_chunks(rows=4))), want)
        i = store.n_prompts - 2
        rows = store.prompt(h, i)
        np.testing.assert_array_equal(rows, want[store.row_offsets[i] : store.row_offsets[i + 1]])
        assert len(rows) == (len(toks[i]) if positions == "all" else 1)
        with pytest.raises(IndexError):
            arr[n]


@pytest.mark.parametrize("dtype,keep", [("float16", 3), ("float32", 7), ("bfloat16", 3)])
def test_keep_bits_shrinks_with_bounded_error(tmp_path: Path, dtype: str, keep: int) -> None:
    shards = make_shards("all", massive=False)
    write_all(tmp_path / "lossless", shards, dtype=dtype)
    write_all(tmp_path / "lossy", shards, dtype=dtype, keep_bits=keep)
    exact, lossy = open_activations(tmp_path / "lossless"), open_activations(tmp_path / "lossy")
    assert lossy.keep_bits == keep
    assert lossy.summary()["bytes_on_disk"] < exact.summary()["bytes_on_disk"]
    for h in HOOKS:
        want, got = exact[h].to_numpy(), lossy[h].to_numpy()
        normal = np.abs(want) > 1e-3  # float16 subnormals carry less precision to begin with
        rel = np.abs(got - want)[normal] / np.abs(want)[normal]
        assert rel.max() <= 2.0 ** -(keep + 1) and rel.max() > 0
        x = np.concatenate([s["acts"][h] for s in shards])
        row_err = np.linalg.norm(got - x, axis=1) / np.linalg.norm(x, axis=1)
        assert row_err.max() < 2.0**-keep


def test_bf16_bit_rounding_keeps_specials_and_rounds_to_even() -> None:
    bits = np.array(
        [0x3F80, 0x3F84, 0x3F8C, 0x3F85, 0x3F83, 0x7F80, 0xFF80, 0x7FC1, 0x7F7F], np.uint16
    )
    out = round_bf16_bits(bits, 4)  # drop 3 of 7 mantissa bits; ties go to even
    assert out.tolist() == [
        0x3F80, 0x3F80, 0x3F90, 0x3F88, 0x3F80, 0x7F80, 0xFF80, 0x7FC1, 0x7F80
    ]  # fmt: skip
    # and it agrees with numcodecs BitRound on the same values held as float32
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(1000).astype(np.float32) * 50).bfloat16()
    b16 = x.view(torch.int16).numpy().view(np.uint16)
    for keep in (1, 3, 6):
        ours = (round_bf16_bits(b16, keep).astype(np.uint32) << 16).view(np.float32)
        theirs = numcodecs.BitRound(keep).encode(x.float().numpy()).view(np.float32)
        np.testing.assert_array_equal(ours, theirs)


def test_float16_overflow_is_refused(tmp_path: Path) -> None:
    w = ActivationWriter(tmp_path, hooks=["h"], d_model={"h": 2}, positions="last")
    acts = {"h": torch.tensor([[1.0, 7e4]])}
    with pytest.raises(SaelabError, match="beyond float16's range.*`store_dtype` bfloat16"):
        w.write_shard(0, prompt_index=np.array([0]), token_ids=[np.array([1, 2])], acts=acts)
    assert not w.has_shard(0) and not list((tmp_path / "shards").glob(".tmp-*"))


def test_resume_and_order_are_byte_identical(tmp_path: Path) -> None:
    shards = make_shards("all")
    ref = write_all(tmp_path / "ref", shards)
    write_all(tmp_path / "reversed", shards, order=[2, 0, 1])
    # a killed run: shard 1 missing, its half-written temp folder left behind, shard 0 to redo
    crashed = tmp_path / "crashed"
    write_all(crashed, shards, order=[0, 2])
    debris = crashed / "shards" / ".tmp-00001-abc"
    (debris / "blocks.0.hook_resid_post").mkdir(parents=True)
    (debris / "zarr.json").write_text("{")
    (crashed / ".tmp-zarr.json-x").write_text("half")
    w = ActivationWriter(crashed, hooks=HOOKS, d_model=D)
    assert not debris.exists() and not (crashed / ".tmp-zarr.json-x").exists()
    assert w.has_shard(0) and not w.has_shard(1)
    got = w.write_shard(1, **shards[1])
    w.write_shard(0, **shards[0])  # overwrite in place
    assert set(got) == {k for k in ref if k.startswith("shards/00001/")}
    assert all(ref[k] == v for k, v in got.items())
    assert "shards/00001/blocks.0.hook_resid_post/zarr.json" in got
    assert tree_digests(tmp_path / "ref") == tree_digests(tmp_path / "reversed")
    assert tree_digests(tmp_path / "ref") == tree_digests(crashed)
    # torch input (float32 or float64) gives the same bytes as numpy
    as_torch = dict(
        shards[1], acts={h: torch.from_numpy(a).double() for h, a in shards[1]["acts"].items()}
    )
    assert ActivationWriter(crashed, hooks=HOOKS, d_model=D).write_shard(1, **as_torch) == got


def test_reader_skips_incomplete_shards(tmp_path: Path) -> None:
    shards = make_shards("last")
    write_all(tmp_path, shards, order=[0, 2], positions="last")
    (tmp_path / "shards" / ".tmp-00001-zz").mkdir()
    store = open_activations(tmp_path)
    assert store.shard_ids == [0, 2] and store.n_prompts == SHARD_PROMPTS[0] + SHARD_PROMPTS[2]
    np.testing.assert_array_equal(
        store[HOOKS[0]][:], expected([shards[0], shards[2]], HOOKS[0], "float16")
    )


def test_different_static_metadata_is_refused(tmp_path: Path) -> None:
    ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, attrs={"model": "a"})
    ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, attrs={"model": "a"})  # same: fine
    for kw, needle in [
        ({"dtype": "bfloat16"}, "dtype='float16' \\(now 'bfloat16'\\)"),
        ({"attrs": {"model": "b"}}, "attrs.model='a' \\(now 'b'\\)"),
        ({"keep_bits": 5, "attrs": {"model": "a"}}, "keep_bits=None \\(now 5\\)"),
        ({"positions": "last", "attrs": {"model": "a"}}, "positions"),
    ]:
        args = {"hooks": HOOKS, "d_model": D, "attrs": {"model": "a"}} | kw
        with pytest.raises(SaelabError, match=f"was written with .*{needle}.*use another run"):
            ActivationWriter(tmp_path, **args)


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(SaelabError, match="`keep_bits` 11 .*float16; use 1..10"):
        ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, keep_bits=11)
    with pytest.raises(SaelabError, match="`keep_bits` 0 .*float32; use 1..23"):
        ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, dtype="float32", keep_bits=0)
    with pytest.raises(SaelabError, match="`keep_bits` 8 .*bfloat16; use 1..7"):
        ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, dtype="bfloat16", keep_bits=8)
    with pytest.raises(SaelabError, match="`store_dtype` 'int8'"):
        ActivationWriter(tmp_path, hooks=HOOKS, d_model=D, dtype="int8")
    missing = tmp_path / "nope"
    with pytest.raises(SaelabError, match=re.escape(f"no activation store at {missing}")):
        open_activations(missing)
    with pytest.raises(SaelabError, match=re.escape(f"no activation store at {missing}")):
        open_activations(missing / STORE_DIR)
    write_all(tmp_path / STORE_DIR, make_shards("mean")[:1], positions="mean")
    store = open_activations(tmp_path / STORE_DIR)
    with pytest.raises(SaelabError) as e:
        store["blocks.9.hook_resid_post"]
    msg = str(e.value)
    assert "\n" not in msg and "blocks.9.hook_resid_post" in msg and ", ".join(HOOKS) in msg


def test_write_shard_validates_shapes(tmp_path: Path) -> None:
    w = ActivationWriter(tmp_path, hooks=HOOKS, d_model=D)
    s = make_shards("all")[0]
    with pytest.raises(ValueError, match="missing"):
        w.write_shard(0, **dict(s, acts={HOOKS[0]: s["acts"][HOOKS[0]]}))
    bad = dict(s["acts"], **{HOOKS[1]: s["acts"][HOOKS[1]][:-1]})
    with pytest.raises(ValueError, match="expected"):
        w.write_shard(0, **dict(s, acts=bad))
    with pytest.raises(ValueError, match="token_ids"):
        w.write_shard(0, **dict(s, token_ids=s["token_ids"][:-1]))
    assert not w.has_shard(0)


def test_summary_sizes(tmp_path: Path) -> None:
    write_all(tmp_path, make_shards("all"), dtype="bfloat16")
    summ = open_activations(tmp_path).summary()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert summ["bytes_on_disk"] == sum(os.path.getsize(p) for p in files)
    assert summ["shards"] == 3 and summ["dtype"] == "bfloat16" and summ["keep_bits"] is None
    for h in HOOKS:
        info = summ["hooks"][h]
        on_disk = sum(
            os.path.getsize(p) for p in (tmp_path / "shards").glob(f"*/{h}/**/*") if p.is_file()
        )
        assert info["bytes_on_disk"] == on_disk
        assert info["bytes_raw"] == summ["n_rows"] * D[h] * 2
        assert info["ratio"] == pytest.approx(info["bytes_raw"] / on_disk)
    assert summ["bytes_raw"] == sum(v["bytes_raw"] for v in summ["hooks"].values())
    assert summ["ratio"] == pytest.approx(summ["bytes_raw"] / summ["bytes_on_disk"])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_lossless_default_is_not_bigger_than_raw(tmp_path: Path, monkeypatch, dtype) -> None:
    """Realistic chunks (default chunk size), a few MB per hook: shuffle+zstd must not expand."""
    monkeypatch.setattr(act_mod, "_CHUNK_BYTES", 2**21)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 256)).astype(np.float32) * 100
    x[:, [3, 77]] = 2e4 * (1 + 0.01 * rng.standard_normal((4096, 2)))
    w = ActivationWriter(tmp_path, hooks=["h"], d_model={"h": 256}, dtype=dtype)
    w.write_shard(0, prompt_index=np.arange(64), token_ids=[np.arange(64)] * 64, acts={"h": x})
    info = open_activations(tmp_path).summary()["hooks"]["h"]
    assert info["ratio"] > 0.97
    if dtype == "float16":  # byte-shuffle finds the exponent redundancy (~1.16x measured)
        assert info["ratio"] > 1.1
