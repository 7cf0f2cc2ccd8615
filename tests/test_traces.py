"""Generation traces on the real default model: answers, hidden states, attentions, resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from saelab.atomic import tree_digests
from saelab.errors import SaelabError
from saelab.models import HookPoint, tokenize_prompts
from saelab.models.capture import HookCapture, make_batch
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.run import RunFolder
from tests.conftest import rel_err

TEXTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "My favourite animal is the",
    "1, 2, 3, 4,",
    "The opposite of hot is",
]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "p.txt"
    p.write_text("".join(t + "\n" for t in TEXTS))
    return p


def opts(run, prompts, **kw):
    base = dict(
        prompts=str(prompts),
        hooks="resid_post.3,mlp_out.7,resid_post.29",
        run=str(run),
        quiet=True,
        device="cpu",
        generate=10,
        batch_size="2",
        shard_size=2,
    )
    base.update(kw)
    return ExtractConfig(**base)


@pytest.fixture(scope="module")
def greedy_run(smol, prompts_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("traces") / "run"
    run_extract(
        opts(run, prompts_file, attentions="2,29", store_dtype="float32", stop=["\n"]), lm=smol
    )
    return run


def reference(smol, seq, layers):
    """One plain forward pass over prompt+answer, eager attention, one sequence alone."""
    smol.model.set_attn_implementation("eager")
    try:
        hooks = [HookPoint(3, "resid_post"), HookPoint(7, "mlp_out"), HookPoint(29, "resid_post")]
        pats = [HookPoint(layer, "pattern") for layer in layers]
        with HookCapture(smol.model, smol.adapter, hooks + pats) as cap:
            v = cap.run(make_batch([seq], smol.pad_id))
    finally:
        smol.model.set_attn_implementation("sdpa")
    return {h.name: v[h][0] for h in hooks}, {p.layer: v[p][0] for p in pats}


def test_answers_equal_model_generate(smol, greedy_run):
    from saelab.store import open_traces

    tr = open_traces(greedy_run)
    assert tr.n_traces == len(TEXTS) and list(tr.indices) == list(range(len(TEXTS)))
    tp = tokenize_prompts(smol.tokenizer, TEXTS)
    for i, ids in enumerate(tp.ids):
        with torch.no_grad():
            out = smol.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=smol.pad_id,
            )
        want = out[0, len(ids) :].tolist()
        if 2 in want:
            want = want[: want.index(2) + 1]
        assert list(tr.prompt_ids(i)) == ids
        assert list(tr.answer_ids(i)) == want, i
        texts = tr.texts(i)
        assert texts["answer_text"] == smol.tokenizer.decode(want, skip_special_tokens=True)
        assert texts["clean_answer"] == texts["answer_text"].split("\n")[0].strip()
    assert "Paris" in tr.texts(0)["clean_answer"]


def test_hidden_states_and_attentions_equal_one_forward_pass(smol, greedy_run):
    from saelab.store import open_traces

    tr = open_traces(greedy_run)
    for i in range(tr.n_traces):
        seq = list(tr.prompt_ids(i)) + list(tr.answer_ids(i))
        hid, att = reference(smol, seq, [2, 29])
        for name, want in hid.items():
            got = torch.from_numpy(tr.hidden(i, name))
            assert got.shape == want.shape
            assert rel_err(got, want) < 1e-5, (i, name)
        for layer, want in att.items():
            got = torch.from_numpy(tr.attention(i, layer))
            assert got.shape == want.shape == (9, len(seq), len(seq))
            assert (got - want).abs().max() < 1e-3  # float16 storage of probabilities
            assert torch.allclose(got.sum(-1), torch.ones(9, len(seq)), atol=5e-3)
            assert torch.all(got.triu(1) == 0)


def test_generated_positions_float16_and_resume_bytes(smol, prompts_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    o = dict(positions="generated", hooks="resid_post.5")
    run_extract(opts(a, prompts_file, **o), lm=smol)
    run_extract(opts(b, prompts_file, **o), lm=smol)
    rf = RunFolder(b)
    m = rf.read_manifest()
    del m["stages"]["extract"]["units"]["shard-00002"]
    m["stages"]["extract"]["complete"] = False
    rf.write_manifest(m)
    shutil.rmtree(b / "traces/shards/00002")
    res = run_extract(opts(b, prompts_file, **o), lm=smol)
    assert res.resumed_shards == 2
    assert tree_digests(a / "traces") == tree_digests(b / "traces")
    from saelab.store import open_traces

    tr = open_traces(b)
    for i in range(tr.n_traces):
        n_answer = len(tr.answer_ids(i))
        got = torch.from_numpy(tr.hidden(i, "blocks.5.hook_resid_post"))
        assert got.shape == (n_answer, 576)
        seq = list(tr.prompt_ids(i)) + list(tr.answer_ids(i))
        b5 = HookPoint(5, "resid_post")
        with HookCapture(smol.model, smol.adapter, [b5]) as cap:
            want = cap.run(make_batch([seq], smol.pad_id))[b5][0, -n_answer:]
        assert rel_err(got, want.to(torch.float16).float()) < 1e-3  # float16 rounding only


def test_sampling_is_reproducible_per_seed(smol, prompts_file, tmp_path):
    from saelab.store import open_traces

    answers = []
    for k, seed in enumerate((1, 1, 2)):
        run = tmp_path / f"s{k}"
        run_extract(
            opts(run, prompts_file, temperature=1.2, top_p=0.95, seed=seed, hooks="resid_post.1"),
            lm=smol,
        )
        tr = open_traces(run)
        answers.append([list(tr.answer_ids(i)) for i in range(tr.n_traces)])
    assert answers[0] == answers[1]
    assert answers[0] != answers[2]


def test_dataset_collate_graph_and_errors(greedy_run, tmp_path, smol, prompts_file):
    from saelab.store import TraceDataset

    ds = TraceDataset(greedy_run, hooks=["blocks.3.hook_resid_post"], attentions=[29])
    item = ds[0]
    t = len(item["input_ids"])
    assert item["hidden"]["blocks.3.hook_resid_post"].shape == (t, 576)
    assert item["attentions"][29].shape == (9, t, t)
    batch = TraceDataset.collate([ds[i] for i in range(3)])
    tmax = max(len(ds[i]["input_ids"]) for i in range(3))
    assert batch["input_ids"].shape == (3, tmax) and batch["attention_mask"].sum() == sum(
        len(ds[i]["input_ids"]) for i in range(3)
    )
    g = ds.as_graph(0, threshold=0.2)
    src, dst, w = g[29]["src"], g[29]["dst"], g[29]["weight"]
    assert len(src) > 0 and torch.all(src <= dst) and torch.all(w > 0.2)
    plain = tmp_path / "plain"
    run_extract(opts(plain, prompts_file, hooks="resid_post.1", limit=2), lm=smol)
    with pytest.raises(SaelabError, match="without attentions"):
        TraceDataset(plain, attentions=[1])
    with pytest.raises(SaelabError, match="blocks.3.hook_resid_post"):
        TraceDataset(greedy_run, hooks=["blocks.4.hook_resid_post"])
    with pytest.raises(SaelabError):
        TraceDataset(greedy_run, attentions=[5])


def test_show_describes_traces(greedy_run, capsys):
    from saelab.cli import main

    try:
        main(["show", "--run", str(greedy_run)])
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "traces" in out and "attentions" in out and "answer" in out
