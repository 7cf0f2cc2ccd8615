"""The generation-trace store, on real files with random arrays (no model)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from numcodecs import BitRound

from saelab.errors import SaelabError
from saelab.run import tree_digests
from saelab.store import TRACES_DIR, Trace, TraceDataset, TraceWriter, open_traces
from saelab.store import traces as traces_mod
from saelab.store.chunks import ChunkReader
from saelab.store.codecs import quiet_numcodecs
from saelab.store.shards import ArraySpec, write_shard_group

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]
D = {"blocks.0.hook_resid_post": 12, "blocks.2.hook_mlp_out": 5}
N_HEADS = 4
SHARD_SIZES = [3, 1, 4]  # unequal shards


def causal_softmax(rng: np.random.Generator, heads: int, t: int) -> np.ndarray:
    """Random causal attention: each query's weights over keys 0..q sum to 1, the rest is 0."""
    logits = rng.standard_normal((heads, t, t)).astype(np.float32) * 2
    logits[:, np.triu(np.ones((t, t), dtype=bool), 1)] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_traces(positions: str = "all", layers=(), seed: int = 0) -> list[list[Trace]]:
    """Shards of random traces, float32 numpy and torch mixed, as the extract stage passes."""
    rng = np.random.default_rng(seed)
    shards, k = [], 0
    for n in SHARD_SIZES:
        shard = []
        for _ in range(n):
            p, a = int(rng.integers(1, 7)), int(rng.integers(0, 6))  # A = 0 happens
            rows = p + a if positions == "all" else a
            hidden = {h: rng.standard_normal((rows, D[h])).astype(np.float32) * 50 for h in HOOKS}
            hidden[HOOKS[1]] = torch.from_numpy(hidden[HOOKS[1]])
            attn = {layer: causal_softmax(rng, N_HEADS, p + a) for layer in layers}
            shard.append(
                Trace(
                    index=3 * k + 1,
                    prompt_ids=rng.integers(0, 50000, p),
                    answer_ids=rng.integers(0, 50000, a),
                    answer_text=f"answer {k} é",
                    clean_answer=f"clean {k}",
                    finish="eos" if k % 2 else "length",
                    hidden=hidden,
                    attentions={
                        lyr: torch.from_numpy(x) if lyr % 2 else x for lyr, x in attn.items()
                    },
                )
            )
            k += 1
        shards.append(shard)
    return shards


def writer(root: Path, **kw) -> TraceWriter:
    return TraceWriter(root, hooks=HOOKS, d_model=D, n_heads=N_HEADS, **kw)


def write_all(root: Path, shards, order=None, **kw) -> dict[str, str]:
    w = writer(root, **kw)
    out: dict[str, str] = {}
    for s in order if order is not None else range(len(shards)):
        out.update(w.write_shard(s, shards[s]))
    return out


def as_dtype(x, dtype: str) -> np.ndarray:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(getattr(torch, dtype)).float().numpy()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few rows per chunk, so a trace's rows cross chunk boundaries."""
    monkeypatch.setattr(traces_mod, "_CHUNK_BYTES", 64)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_round_trip_hidden_tokens_texts(tmp_path: Path, dtype: str, positions: str) -> None:
    shards = make_traces(positions)
    write_all(tmp_path / TRACES_DIR, shards, dtype=dtype, positions=positions, attrs={"m": 1})
    st = open_traces(tmp_path)  # the run folder works as well as the traces folder
    flat = [t for s in shards for t in s]
    assert (st.dtype, st.positions, st.attrs, st.hooks) == (dtype, positions, {"m": 1}, HOOKS)
    assert st.n_traces == len(flat) == len(st) and st.shard_ids == [0, 1, 2]
    np.testing.assert_array_equal(st.indices, [t.index for t in flat])
    for i, tr in enumerate(flat):
        np.testing.assert_array_equal(st.prompt_ids(i), tr.prompt_ids)
        np.testing.assert_array_equal(st.answer_ids(i), tr.answer_ids)
        want = {"answer_text": tr.answer_text, "clean_answer": tr.clean_answer}
        assert st.texts(i) == {**want, "finish": tr.finish}
        for h in HOOKS:
            got = st.hidden(i, h)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, as_dtype(tr.hidden[h], dtype))
    np.testing.assert_array_equal(st.hidden(-1, HOOKS[0]), st.hidden(len(flat) - 1, HOOKS[0]))
    with pytest.raises(IndexError):
        st.hidden(len(flat), HOOKS[0])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_attentions_packed_and_unpacked(tmp_path: Path, dtype: str) -> None:
    shards = make_traces(layers=(1, 4))
    write_all(tmp_path, shards, dtype=dtype, attention_layers=[4, 1], heads=[3, 1])
    st = open_traces(tmp_path)
    assert st.attention_layers == [1, 4] and st.heads == [3, 1]
    for i, tr in enumerate(t for s in shards for t in s):
        for layer in (1, 4):
            got = st.attention(i, layer)
            t = len(tr.prompt_ids) + len(tr.answer_ids)
            assert got.shape == (2, t, t) and got.dtype == np.float32
            want = as_dtype(
                np.asarray(tr.attentions[layer])[[3, 1]],
                "float16" if dtype == "float16" else "float32",
            )
            np.testing.assert_array_equal(got, np.tril(want))
            assert not np.triu(got, 1).any()
            np.testing.assert_allclose(got.sum(-1), 1.0, atol=t * 2**-11)


def test_keep_bits_rounds_hidden_and_attention(tmp_path: Path) -> None:
    shards = make_traces(layers=(0,))
    write_all(tmp_path, shards, keep_bits=4, attention_layers=[0])
    st = open_traces(tmp_path)
    tr = shards[0][0]
    br = BitRound(4)
    h16 = np.asarray(tr.hidden[HOOKS[0]], dtype=np.float16)
    np.testing.assert_array_equal(
        st.hidden(0, HOOKS[0]), br.decode(br.encode(h16)).reshape(h16.shape)
    )
    a16 = np.tril(np.asarray(tr.attentions[0], dtype=np.float16))
    np.testing.assert_array_equal(st.attention(0, 0), br.decode(br.encode(a16)).reshape(a16.shape))


def test_same_bytes_in_any_order_and_after_a_crash(tmp_path: Path) -> None:
    shards = make_traces(layers=(2,))
    kw = {"attention_layers": [2], "heads": [0, 2]}
    ref = write_all(tmp_path / "a", shards, **kw)
    assert ref == {
        k: v for k, v in tree_digests(tmp_path / "a").items() if k.startswith("shards/0")
    }
    write_all(tmp_path / "b", shards, order=[2, 0], **kw)
    debris = tmp_path / "b" / "shards" / ".tmp-00001-x"  # a writer killed mid-shard
    debris.mkdir()
    (debris / "zarr.json").write_text("{}")
    assert open_traces(tmp_path / "b").shard_ids == [0, 2]  # readers skip debris, never delete
    assert debris.exists()
    w = writer(tmp_path / "b", **kw)  # reopening removes it
    assert not debris.exists() and not w.has_shard(1) and w.has_shard(2)
    w.write_shard(1, shards[1])
    w.write_shard(2, shards[2])  # rewriting a shard is idempotent
    assert tree_digests(tmp_path / "a") == tree_digests(tmp_path / "b")


def test_empty_store_and_empty_shard(tmp_path: Path) -> None:
    w = writer(tmp_path, attention_layers=[0])
    st = open_traces(tmp_path)
    assert st.n_traces == 0 and st.summary()["answer_len"]["mean"] is None
    w.write_shard(0, [])
    w.write_shard(1, make_traces(layers=(0,))[0])
    st = open_traces(tmp_path)
    assert st.shard_ids == [0, 1] and st.n_traces == SHARD_SIZES[0]
    assert st.attention(2, 0).shape[0] == N_HEADS


def test_refuses_different_metadata(tmp_path: Path) -> None:
    writer(tmp_path, attention_layers=[1], heads=[0])
    writer(tmp_path, attention_layers=[1], heads=[0])  # same settings: fine
    for kw, field in [
        ({"attention_layers": [1], "heads": [1]}, "heads=[0] (now [1])"),
        ({"attention_layers": [1], "heads": [0], "dtype": "bfloat16"}, "dtype='float16'"),
        ({"attention_layers": [1], "heads": [0], "positions": "generated"}, "positions="),
    ]:
        with pytest.raises(SaelabError, match="use another run folder") as e:
            writer(tmp_path, **kw)
        assert field in str(e.value) and "\n" not in str(e.value)


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    shards = make_traces(layers=(0,))
    w = writer(tmp_path, attention_layers=[0])
    bad = shards[0][0]
    full = np.full_like(np.asarray(bad.attentions[0]), 1.0 / bad.attentions[0].shape[-1])
    with pytest.raises(ValueError, match="above the diagonal"):
        w.write_shard(0, [Trace(**{**bad.__dict__, "attentions": {0: full}})])
    with pytest.raises(ValueError, match="expected"):
        w.write_shard(
            0, [Trace(**{**bad.__dict__, "hidden": {h: np.zeros((1, D[h])) for h in HOOKS}})]
        )
    assert not (tmp_path / "shards" / "00000").exists()
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["zarr.json"]  # no debris
    with pytest.raises(SaelabError, match="--heads"):
        writer(tmp_path / "x", attention_layers=[0], heads=[N_HEADS])
    with pytest.raises(SaelabError, match="--positions"):
        writer(tmp_path / "y", positions="last")


def test_summary_counts_every_byte_and_packing_halves_attention(tmp_path, monkeypatch):
    monkeypatch.setattr(traces_mod, "_CHUNK_BYTES", 2**19)
    rng = np.random.default_rng(3)
    traces = []
    for k in range(3):
        p, a = 20, 30 + k
        x = {h: rng.standard_normal((p + a, D[h])).astype(np.float32) for h in HOOKS}
        attn = {0: causal_softmax(rng, N_HEADS, p + a)}
        ids = rng.integers(0, 100, p + a)
        traces.append(Trace(k, ids[:p], ids[p:], "t", "t", "eos", x, attn))
    w = writer(tmp_path, attention_layers=[0])
    w.write_shard(0, traces[:2])
    w.write_shard(1, traces[2:])
    sm = open_traces(tmp_path).summary()
    assert sm["n_traces"] == 3 and sm["attention_layers"] == [0] and sm["heads"] == [0, 1, 2, 3]
    assert sm["answer_len"] == {"mean": 31.0, "min": 30, "max": 32}
    assert sm["prompt_len"] == {"mean": 20.0, "min": 20, "max": 20}
    assert sum(sm["bytes"].values()) == sm["bytes_on_disk"]
    files = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert sm["bytes_on_disk"] == files
    assert sm["bytes"]["hidden"] == sum(v["bytes"] for v in sm["hooks"].values())
    assert sm["hooks"][HOOKS[0]]["shape_per_token"] == [D[HOOKS[0]]]
    att = sm["attentions"][0]
    squares = sum((50 + k) ** 2 for k in range(3)) * N_HEADS * 2
    assert att["bytes_raw"] == squares and att["bytes"] == sm["bytes"]["attentions"]
    assert att["bytes_packed_raw"] < 0.53 * squares
    assert att["bytes"] < 0.55 * squares  # packed + zstd: about half of dense float16
    raw = squares + sum((50 + 51 + 52) * D[h] * 2 for h in HOOKS)
    assert sm["bytes_raw"] == raw and sm["ratio"] == pytest.approx(raw / sm["bytes_on_disk"])


def test_dataset_items_and_collate(tmp_path: Path) -> None:
    shards = make_traces("generated", layers=(0, 3))
    write_all(tmp_path, shards, positions="generated", attention_layers=[0, 3], heads=[2])
    flat = [t for s in shards for t in s]
    ds = TraceDataset(tmp_path, hooks=[HOOKS[1]], attentions=[3])
    assert len(ds) == len(flat)
    item = ds[1]
    tr = flat[1]
    p, a = len(tr.prompt_ids), len(tr.answer_ids)
    assert item["index"] == tr.index and item["finish"] == tr.finish
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (p + a,)
    assert torch.equal(item["input_ids"], torch.cat([item["prompt_ids"], item["answer_ids"]]))
    assert list(item["hidden"]) == [HOOKS[1]] and item["hidden"][HOOKS[1]].shape == (a, D[HOOKS[1]])
    assert list(item["attentions"]) == [3] and item["attentions"][3].shape == (1, p + a, p + a)
    assert TraceDataset(tmp_path, hooks=[], attentions=None)[0]["hidden"] == {}
    assert list(TraceDataset(tmp_path, attentions="all")[0]["attentions"]) == [0, 3]

    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=TraceDataset.collate)
    batch = next(iter(loader))
    t_len = [len(t.prompt_ids) + len(t.answer_ids) for t in flat[:4]]
    a_len = [len(t.answer_ids) for t in flat[:4]]
    assert batch["input_ids"].shape == (4, max(t_len))
    assert batch["attention_mask"].sum(1).tolist() == t_len
    assert batch["hidden"][HOOKS[1]].shape == (4, max(a_len), D[HOOKS[1]])
    assert batch["hidden_mask"].sum(1).tolist() == a_len
    assert batch["attentions"][3].shape == (4, 1, max(t_len), max(t_len))
    assert batch["index"].tolist() == [t.index for t in flat[:4]]
    assert batch["answer_text"] == [t.answer_text for t in flat[:4]]
    for k in range(4):
        tl, al = t_len[k], a_len[k]
        assert not batch["input_ids"][k, tl:].any() and not batch["hidden"][HOOKS[1]][k, al:].any()
        assert torch.equal(batch["hidden"][HOOKS[1]][k, :al], ds[k]["hidden"][HOOKS[1]])
        assert torch.equal(batch["attentions"][3][k, :, :tl, :tl], ds[k]["attentions"][3])
        assert not batch["attentions"][3][k, :, tl:].any()
    again = pickle.loads(pickle.dumps(ds))  # what DataLoader workers started by spawn get
    assert torch.equal(again[2]["hidden"][HOOKS[1]], ds[2]["hidden"][HOOKS[1]])


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_as_graph_matches_brute_force(tmp_path: Path, reduce: str) -> None:
    write_all(tmp_path, make_traces(layers=(0, 5)), attention_layers=[0, 5], heads=[0, 3, 1])
    ds = TraceDataset(tmp_path, hooks=[], attentions="all")
    for i in range(len(ds)):
        graphs = ds.as_graph(i, 0.21, reduce)
        assert list(graphs) == [0, 5]
        for layer, g in graphs.items():
            m = ds.store.attention(i, layer)
            m = m.mean(0) if reduce == "mean" else m.max(0)
            dst, src = np.nonzero(np.tril(m) > 0.21)  # row-major, like the edges
            assert g["src"].dtype == torch.long and g["weight"].dtype == torch.float32
            np.testing.assert_array_equal(g["src"].numpy(), src)
            np.testing.assert_array_equal(g["dst"].numpy(), dst)
            np.testing.assert_array_equal(g["weight"].numpy(), m[dst, src])
            assert (g["src"] <= g["dst"]).all()
    t = len(ds.store.prompt_ids(0)) + len(ds.store.answer_ids(0))
    every = ds.as_graph(0, -1.0, reduce)[0]  # a negative threshold keeps the whole triangle
    assert len(every["src"]) == t * (t + 1) // 2 and (every["src"] <= every["dst"]).all()


def test_errors_name_the_input_and_the_fix(tmp_path: Path) -> None:
    def one_line(exc_info) -> str:
        msg = str(exc_info.value)
        assert "\n" not in msg
        return msg

    with pytest.raises(SaelabError) as e:
        open_traces(tmp_path / "run")
    msg = one_line(e)
    assert str(tmp_path / "run") in msg and "saelab extract --generate N --run" in msg
    write_all(tmp_path / "plain" / TRACES_DIR, make_traces())
    with pytest.raises(SaelabError) as e:
        TraceDataset(tmp_path / "plain", attentions="all")
    assert one_line(e) == (
        f"run {tmp_path / 'plain'} was recorded without attentions; re-run "
        "`saelab extract --generate N --attentions LAYERS`"
    )
    with pytest.raises(SaelabError, match="recorded without attentions"):
        open_traces(tmp_path / "plain").attention(0, 0)
    write_all(tmp_path / "att", make_traces(layers=(2, 7)), attention_layers=[2, 7])
    with pytest.raises(SaelabError) as e:
        TraceDataset(tmp_path / "att", attentions=[3])
    assert "stored layers: 2, 7" in one_line(e)
    with pytest.raises(SaelabError) as e:
        TraceDataset(tmp_path / "att", hooks=["blocks.9.hook_resid_post"])
    assert f"stored hooks: {', '.join(HOOKS)}" in one_line(e)
    with pytest.raises(SaelabError) as e:
        TraceDataset(tmp_path / "plain").as_graph(0, 0.1)
    assert "attentions=" in one_line(e)


def test_reading_never_unpickles(tmp_path: Path, monkeypatch) -> None:
    write_all(tmp_path, make_traces(layers=(1,)), attention_layers=[1])

    def refuse(*a, **k):
        raise AssertionError("a trace store must never be unpickled")

    for mod, name in [(pickle, "loads"), (pickle, "load"), (torch, "load"), (np, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    ds = TraceDataset(tmp_path, attentions="all")
    TraceDataset.collate([ds[i] for i in range(len(ds))])
    ds.as_graph(0, 0.1)
    ds.store.summary()


@pytest.mark.parametrize(
    "dtype, shape, keep_bits",
    [
        ("float16", (1000, 7), None),
        ("float32", (333, 3), 9),
        ("uint16", (50, 4), None),
        ("int64", (999,), None),
    ],
)
def test_chunk_reader_reads_what_zarr_reads(tmp_path: Path, dtype, shape, keep_bits) -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal(shape) * 1000).astype(dtype)
    kw = {}
    if keep_bits:
        with quiet_numcodecs():
            from zarr.codecs.numcodecs import BitRound as BitRoundCodec

            kw = {"filters": [BitRoundCodec(keepbits=keep_bits)], "keep_bits": keep_bits}
    write_shard_group(tmp_path / "g", {"a": ArraySpec(data, 64, **kw)}, attrs={}, base=tmp_path)
    reader = ChunkReader(tmp_path / "g" / "a")
    assert reader._zarr is None  # the direct path, not the fallback
    with quiet_numcodecs():
        z = zarr.open_array(str(tmp_path / "g" / "a"), mode="r")
        for lo, hi in [(0, shape[0]), (5, 6), (63, 129), (shape[0] - 3, shape[0]), (10, 10)]:
            np.testing.assert_array_equal(reader.rows(lo, hi), z[lo:hi])
    (tmp_path / "g" / "a" / ("c.0.0" if len(shape) == 2 else "c.0")).unlink()
    # a missing chunk is an error naming the file, never the fill value
    with pytest.raises(SaelabError, match=r"c\.0(\.0)? is damaged \(chunk file missing\)"):
        ChunkReader(tmp_path / "g" / "a").rows(0, 3)
