"""`extract` end to end on the real default model: contents, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.atomic import tree_digests
from saelab.errors import BudgetError, SaelabError
from saelab.models import HookPoint, tokenize_prompts
from saelab.models.capture import capture_prompts
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.run import RunFolder
from saelab.store import open_activations

HOOKS = "resid_post.2,mlp_out.6,resid_post.11"


@pytest.fixture()
def prompts_file(tmp_path):
    texts = [f"Example number {i} says {'many words ' * (i % 7)}here." for i in range(40)]
    p = tmp_path / "prompts.jsonl"
    p.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "text": t, "group": "a" if i % 2 else "b"}) + "\n"
            for i, t in enumerate(texts)
        )
    )
    return p, texts


def opts(run, prompts, **kw):
    base = dict(prompts=str(prompts), hooks=HOOKS, run=str(run), quiet=True, device="cpu")
    base.update(kw)
    return ExtractConfig(**base)


def test_store_holds_exactly_what_the_model_computes(smol, tmp_path, prompts_file):
    prompts, texts = prompts_file
    run = tmp_path / "run"
    res = run_extract(opts(run, prompts, batch_size="7", shard_size=16), lm=smol)
    store = open_activations(run)
    assert store.n_prompts == 40 and list(store.prompt_index) == list(range(40))
    assert res.n_tokens == store.n_tokens
    tp = tokenize_prompts(smol.tokenizer, texts)
    hooks = [HookPoint(2, "resid_post"), HookPoint(6, "mlp_out"), HookPoint(11, "resid_post")]
    # reference: one prompt at a time, cast to float16
    for i in (0, 13, 39):
        assert list(store.tokens(i)) == tp.ids[i]
        for _, out in capture_prompts(smol.model, smol.adapter, hooks, [tp.ids[i]], pad_id=2):
            for h in hooks:
                want = out[h][0].to(torch.float16).float().numpy()
                got = store.prompt(h.name, i)
                assert got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    # run folder: config, prompts table, manifest with plan and measurement
    rf = RunFolder(run)
    cfg = rf.read_config()["extract"]
    assert cfg["hooks"] == [h.name for h in hooks] and cfg["shard_size"] == 16
    st = rf.stage("extract")
    assert st["complete"] and len(st["units"]) == 3
    assert st["plan"]["estimate"]["ram_bytes"] > 0 and st["measured"]["peak_rss_bytes"] > 0
    import pyarrow.parquet as pq

    table = pq.read_table(run / "prompts.parquet")
    assert table.column("id").to_pylist()[:2] == ["p0", "p1"]
    assert table.column("group").to_pylist()[:2] == ["b", "a"]


def test_positions_and_drop_bos(smol, tmp_path, prompts_file):
    prompts, _ = prompts_file
    full = open_activations(run_extract(opts(tmp_path / "all", prompts, limit=6), lm=smol).run)
    last = open_activations(
        run_extract(opts(tmp_path / "last", prompts, limit=6, positions="last"), lm=smol).run
    )
    nobos = open_activations(
        run_extract(opts(tmp_path / "nobos", prompts, limit=6, drop_bos=True), lm=smol).run
    )
    assert last.n_rows == 6 and full.n_rows == full.n_tokens
    assert nobos.n_rows == full.n_rows - 6 and nobos.tokens(0)[0] != 1
    h = "blocks.11.hook_resid_post"
    for i in range(6):
        np.testing.assert_array_equal(last.prompt(h, i)[0], full.prompt(h, i)[-1])
        np.testing.assert_array_equal(nobos.prompt(h, i), full.prompt(h, i)[1:])


def test_resume_after_a_crash_is_byte_identical(smol, tmp_path, prompts_file):
    prompts, _ = prompts_file
    a, b = tmp_path / "a", tmp_path / "b"
    run_extract(opts(a, prompts, batch_size="8", shard_size=8), lm=smol)
    run_extract(opts(b, prompts, batch_size="8", shard_size=8), lm=smol)
    # simulate a kill: last two shards lost (one never recorded, one half-written)
    rf = RunFolder(b)
    m = rf.read_manifest()
    del m["stages"]["extract"]["units"]["shard-00004"]
    del m["stages"]["extract"]["units"]["shard-00003"]
    m["stages"]["extract"]["complete"] = False
    rf.write_manifest(m)
    import shutil

    shutil.rmtree(b / "activations/shards/00004")
    (b / "activations/shards/.tmp-00004-x").mkdir()
    (b / "activations/shards/.tmp-00004-x/junk").write_text("half")
    res = run_extract(opts(b, prompts, batch_size="8", shard_size=8), lm=smol)
    assert res.resumed_shards == 3
    assert tree_digests(a / "activations") == tree_digests(b / "activations")
    again = run_extract(opts(b, prompts, batch_size="8", shard_size=8), lm=smol)
    assert again.already_complete


def test_another_configuration_is_refused_and_changes_nothing(smol, tmp_path, prompts_file):
    prompts, _ = prompts_file
    run = tmp_path / "run"
    run_extract(opts(run, prompts, limit=4), lm=smol)
    before = tree_digests(run)
    with pytest.raises(SaelabError, match="different extract configuration.*hooks"):
        run_extract(opts(run, prompts, limit=4, hooks="resid_post.3"), lm=smol)
    assert tree_digests(run) == before
    res = run_extract(opts(run, prompts, limit=4, hooks="resid_post.3", overwrite=True), lm=smol)
    assert open_activations(res.run).hooks == ["blocks.3.hook_resid_post"]


def test_budget_refusals_leave_nothing_behind(smol, tmp_path, prompts_file):
    prompts, _ = prompts_file
    run = tmp_path / "run"
    with pytest.raises(BudgetError, match="disk, --max-disk is"):
        run_extract(opts(run, prompts, max_disk="10KB"), lm=smol)
    with pytest.raises(BudgetError, match="RAM, --max-memory is"):
        run_extract(opts(run, prompts, max_memory="200MB"), lm=smol)
    assert not run.exists()


def test_auto_batch_size_follows_the_memory_budget(smol, tmp_path):
    from saelab.pipeline.plan import plan_extract

    prompts = tmp_path / "long.txt"
    prompts.write_text(
        "".join(f"{i} " + "a long prompt of many words " * 50 + "\n" for i in range(24))
    )
    roomy, _ = plan_extract(opts(tmp_path / "r", prompts), calibrate=False, lm=smol)
    tight, _ = plan_extract(
        opts(tmp_path / "t", prompts, hooks="resid_post.29", max_memory="1.0GB"),
        calibrate=False,
        lm=smol,
    )
    assert tight.job.batch_size < roomy.job.batch_size
    assert tight.verdict.fits and tight.estimate.ram <= 1.0e9 and tight.job.batch_size >= 1


def test_keep_bits_makes_a_smaller_store(smol, tmp_path, prompts_file):
    prompts, _ = prompts_file
    exact = run_extract(opts(tmp_path / "x", prompts, limit=10), lm=smol)
    lossy = run_extract(opts(tmp_path / "y", prompts, limit=10, keep_bits=5), lm=smol)
    assert lossy.bytes_on_disk < 0.8 * exact.bytes_on_disk
    a = open_activations(exact.run)["blocks.11.hook_resid_post"].to_numpy()
    b = open_activations(lossy.run)["blocks.11.hook_resid_post"].to_numpy()
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert rel.max() < 2**-5


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_smaller_model_dtypes_extract_close_to_float32(smol, tmp_path, prompts_file, dtype):
    prompts, _ = prompts_file
    ref = open_activations(run_extract(opts(tmp_path / "f", prompts, limit=4), lm=smol).run)
    got = open_activations(run_extract(opts(tmp_path / dtype, prompts, limit=4, dtype=dtype)).run)
    h = "blocks.11.hook_resid_post"
    a, b = ref[h].to_numpy(), got[h].to_numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.95
    assert not np.array_equal(a, b)
