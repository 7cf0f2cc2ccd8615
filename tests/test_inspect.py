"""Feature cards on a small real run (default model, builtin:styles, a JumpReLU SAE): every
streamed summary equals a brute-force computation over the dense codes; the logit lens equals
a plain numpy product; texts through the model give the run's own contexts; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from saelab.errors import SaelabError
from saelab.inspect import feature_card, inspect_features, load_cards
from saelab.inspect.accumulate import DoublingHistogram, sample_key
from saelab.inspect.lens import logit_lens
from saelab.store import open_activations, open_codes
from tests.report_run import HOOK, small_run  # noqa: F401

TOP = 7
WINDOW = (12, 4)
QUANTILES = (0.1, 0.3, 0.5, 0.7)


def _features(run: Path) -> list[int]:
    """Two strong contrast features, a common one, and one that never fires (if any)."""
    t = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    t = t[t["hook"] == HOOK]
    strong = t[t["tested"]].sort_values("log10_p_t")["feature"].head(2).tolist()
    common = int(t.assign(n=t.active_a + t.active_b).sort_values("n")["feature"].iloc[-1])
    dead = t[(t.active_a + t.active_b) == 0]["feature"].head(1).tolist()
    return sorted({*strong, common, *dead})


def brute_force(run: Path, feats: list[int]) -> dict[int, dict]:
    """Every summary from the dense token codes, with plain loops."""
    hc = open_codes(run)[HOOK]
    dense = hc.matrix().toarray()[:, feats].astype(np.float64)
    offs = hc.row_offsets
    store = open_activations(run)
    groups = pq.read_table(run / "prompts.parquet").column("group").to_pylist()
    out = {}
    for j, f in enumerate(feats):
        vals, peaks, counts = [], [], {}
        sums: dict[str, float] = {}
        for p in range(len(offs) - 1):
            col = dense[offs[p] + 1 : offs[p + 1], j]  # BOS row left out
            vals += [v for v in col if v != 0]
            g = groups[hc.prompt_index[p]]
            counts[g] = counts.get(g, 0) + 1
            sums[g] = sums.get(g, 0.0) + (col.max() if len(col) else 0.0)
            if len(col) and col.max() > 0:
                pos = 1 + int(np.argmax(col))  # first position of the peak
                lo, hi = max(1, pos - WINDOW[0]), min(len(col) + 1, pos + WINDOW[1] + 1)
                peaks.append(
                    (
                        -col.max(),
                        int(hc.prompt_index[p]),
                        pos,
                        lo,
                        list(store.tokens(p)[lo:hi]),
                        list(dense[offs[p] + lo : offs[p] + hi, j]),
                    )
                )
        vals = np.array(vals)
        res = {
            "n_fire": len(vals),
            "top": sorted(peaks)[:TOP],
            "group_means": {g: sums[g] / counts[g] for g in counts},
        }
        if len(vals):
            hi_edge = 2.0 ** np.frexp(vals.max())[1]
            edges = np.linspace(0, hi_edge, 65)
            h, _ = np.histogram(vals, edges)
            used = np.flatnonzero(h).max() + 1
            res["hist"] = (edges[: used + 1].tolist(), h[:used].tolist())
            keys = sample_key(np.array([x[1] for x in peaks]), f)
            sample = [peaks[i] for i in np.argsort(keys, kind="stable")[:64]]
            sample.sort(key=lambda x: (-x[0], x[1]))
            res["quantile"] = [sample[int(round(q * (len(sample) - 1)))] for q in QUANTILES]
        else:
            res["hist"] = ([], [])
            res["quantile"] = []
        res["n_tokens"] = int(sum(offs[p + 1] - offs[p] - 1 for p in range(len(offs) - 1)))
        out[f] = res
    return out


@pytest.fixture()
def run_copy(small_run, tmp_path) -> Path:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


def test_cards_equal_brute_force_over_dense_codes(run_copy, smol):
    feats = _features(run_copy)
    cards = feature_card(
        run_copy, "resid_post.7", feats, top=TOP, window=WINDOW, lm=smol, quiet=True
    )
    ref = brute_force(run_copy, feats)
    assert [c.feature for c in cards] == feats
    assert sum(len(r["top"]) == TOP and len(r["quantile"]) > 1 for r in ref.values()) >= 2
    for c in cards:
        r = ref[c.feature]
        assert c.source == "codes" and c.hook == HOOK
        assert c.n_fire == r["n_fire"] and c.n_tokens == r["n_tokens"]
        assert c.density == pytest.approx(r["n_fire"] / r["n_tokens"])
        assert (c.hist_edges, c.hist_counts) == r["hist"]
        assert sum(c.hist_counts) == c.n_fire
        tops = [x for x in c.contexts if x["kind"] == "top"]
        assert len(tops) == len(r["top"])
        for got, (neg, prompt, pos, lo, toks, acts) in zip(tops, r["top"], strict=True):
            assert (got["prompt"], got["position"], got["start"]) == (prompt, pos, lo)
            assert got["value"] == -neg and got["token_ids"] == [int(t) for t in toks]
            np.testing.assert_array_equal(got["acts"], acts)
            assert len(got["tokens"]) == len(toks) and got["acts"][pos - lo] == got["value"]
        quant = [x for x in c.contexts if x["kind"] == "quantile"]
        want_q = [(x[1], x[2]) for x in r["quantile"]]
        want_q = list(dict.fromkeys(want_q))  # a quantile landing on the same context once
        assert [(x["prompt"], x["position"]) for x in quant] == want_q
        for g, m in r["group_means"].items():
            assert c.group_means[g] == pytest.approx(m, rel=1e-12, abs=1e-12)
        assert c.contrast is not None and c.contrast["feature"] == c.feature
    dead = [c for c in cards if c.n_fire == 0]
    for c in dead:  # an honest empty card, not an error
        assert c.contexts == [] and c.hist_counts == []


def test_histogram_doubling_equals_numpy():
    rng = np.random.default_rng(0)
    h = DoublingHistogram(64)
    chunks = [rng.gamma(2.0, s, size=500).astype(np.float32) for s in (0.01, 0.3, 5.0, 80.0)]
    for x in chunks:
        h.add(x)
    allv = np.concatenate(chunks).astype(np.float64)
    edges, counts = h.result()
    want, _ = np.histogram(allv, np.linspace(0, edges[-1] * 64 / len(counts), 65))
    assert counts == want[: len(counts)].tolist() and sum(counts) == len(allv)


def test_logit_lens_equals_numpy(smol):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 576, generator=g)
    got = logit_lens(smol, d, k=10)
    norm = smol.model.model.norm
    w_u = smol.model.get_output_embeddings().weight.detach().double().numpy()
    x = d.double().numpy()
    h = x / np.sqrt((x**2).mean(1, keepdims=True) + norm.variance_epsilon)
    h = h * norm.weight.detach().double().numpy()
    logits = h @ w_u.T
    for i in range(3):
        assert got[i]["promoted_ids"] == np.argsort(-logits[i])[:10].tolist()
        assert got[i]["suppressed_ids"] == np.argsort(logits[i])[:10].tolist()
        np.testing.assert_allclose(
            got[i]["promoted_logits"], np.sort(logits[i])[::-1][:10], rtol=1e-4
        )
    with pytest.raises(SaelabError, match="width"):
        logit_lens(smol, torch.zeros(1, 100))


def test_prompts_through_the_model_give_the_runs_contexts(run_copy, smol, tmp_path):
    """The same prompts run through the model and the SAE find the same peaks as the stored
    codes (float32 both ways; batching changes values by ~1e-5 only)."""
    t = pq.read_table(run_copy / "prompts.parquet").to_pylist()
    pf = tmp_path / "p.jsonl"
    pf.write_text(
        "".join(
            json.dumps({"id": r["id"], "text": r["text"], "group": r["group"]}) + "\n" for r in t
        )
    )
    feats = _features(run_copy)[:2]
    a = feature_card(run_copy, HOOK, feats, top=5, lm=smol, quiet=True)
    b = feature_card(run_copy, HOOK, feats, top=5, prompts=str(pf), lm=smol, quiet=True)
    for x, y in zip(a, b, strict=True):
        assert y.source.startswith("prompts:") and x.n_tokens == y.n_tokens
        assert abs(x.n_fire - y.n_fire) <= 1
        tx = [(c["prompt_id"], c["position"]) for c in x.contexts if c["kind"] == "top"]
        ty = [(c["prompt_id"], c["position"]) for c in y.contexts if c["kind"] == "top"]
        assert tx == ty
        assert y.group_means.keys() == x.group_means.keys()


def test_corpus_windows_and_stored_cards(run_copy, smol, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n\n".join(
            f"Paragraph {i}: the weather in town was calm and the committee met again."
            for i in range(40)
        )
    )
    feats = _features(run_copy)[:2]
    cards = inspect_features(
        run_copy, HOOK, feats, top=3, corpus=str(corpus), context=16, lm=smol, quiet=True
    )
    c = cards[0]
    assert c.source == f"corpus:{corpus}" and c.n_tokens == c.n_prompts * 15  # BOS left out
    for x in c.contexts:
        assert x["prompt_id"].startswith("window ") and "".join(x["tokens"]).strip()
    assert c.group_means == {}
    # stored, then replaced (not duplicated) when inspected again from the run's codes
    inspect_features(run_copy, HOOK, feats[:1], top=2, lm=smol, quiet=True)
    stored = load_cards(run_copy)[HOOK]
    assert sorted(stored) == sorted(feats)
    assert stored[feats[0]]["source"] == "codes" and stored[feats[1]]["source"].startswith("corpus")
    assert len([x for x in stored[feats[0]]["contexts"] if x["kind"] == "top"]) <= 2
    assert stored[feats[0]]["contrast"]["feature"] == feats[0]


def test_bad_input_is_one_line(run_copy, smol, tmp_path):
    cases = [
        (dict(features=[512]), "does not exist"),
        (dict(features="1,x"), "not a feature id"),
        (dict(features=[], hook=HOOK), "give the features"),
        (dict(features=[1], hook="resid_post.3"), "no SAE for blocks.3.hook_resid_post"),
        (dict(features=[1], corpus=str(tmp_path / "none.txt")), "does not exist"),
        (dict(features=[1], corpus="builtin:stdlib", prompts="x.jsonl"), "either"),
    ]
    for kw, fragment in cases:
        kw.setdefault("hook", HOOK)
        hook = kw.pop("hook")
        with pytest.raises(SaelabError, match=fragment) as e:
            feature_card(run_copy, hook, lm=smol, quiet=True, **kw)
        assert "\n" not in str(e.value)
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(SaelabError, match="fewer than one window"):
        feature_card(run_copy, HOOK, [1], corpus=str(short), lm=smol, quiet=True)


def test_accumulator_rules_on_a_handmade_block():
    """BOS rows ignored, ties go to the earlier prompt and position, a silent feature gets an
    empty card, prompts without a group count in no group."""
    import scipy.sparse as sp

    from saelab.inspect.accumulate import FeatureAccumulator, TokenBlock

    # 3 prompts of 3 tokens; column 0 = feature 5, column 1 = feature 9 (never fires)
    dense = np.array(
        [
            [9.0, 0],
            [2, 0],
            [2, 0],  # BOS 9 ignored; tie at 2: position 1 wins
            [0, 0],
            [2, 0],
            [1, 0],
            [0, 0],
            [0, 0],
            [3, 0],
        ]
    )
    block = TokenBlock(
        codes=sp.csr_matrix(dense),
        offsets=np.array([0, 3, 6, 9]),
        prompt=np.array([10, 11, 12]),
        token_ids=np.arange(9),
        skip_first=True,
        groups=["a", None, "b"],
    )
    acc = FeatureAccumulator([5, 9], top=3, window=(1, 1), n_sample=8)
    acc.add(block)
    five, nine = acc.results()
    assert five["n_tokens"] == 6 and five["n_fire"] == 5 and five["max_value"] == 3
    tops = [c for c in five["contexts"] if c.kind == "top"]
    assert [(c.prompt, c.position, c.value) for c in tops] == [
        (12, 2, 3.0),
        (10, 1, 2.0),
        (11, 1, 2.0),
    ]
    assert tops[1].start == 1 and tops[1].token_ids == [1, 2] and tops[1].acts == [2.0, 2.0]
    assert five["group_means"] == {"a": 2.0, "b": 3.0}
    assert nine["n_fire"] == 0 and nine["contexts"] == [] and nine["hist_counts"] == []
    assert nine["group_means"] == {"a": 0.0, "b": 0.0}


def test_a_pretrained_format_sae_gives_the_same_cards(run_copy, smol, tmp_path):
    """The run's SAE rewritten in Gemma Scope's layout (params.npz), loaded by saelab.sae's
    importer, finds the same contexts on the same prompts as the stored codes."""
    from saelab.sae import load
    from tests.test_sae_formats import rewrite

    enc = json.loads((run_copy / "codes" / HOOK / "meta.json").read_text())["sae"]
    native = load(enc)
    gemma = rewrite("gemma_scope", native, tmp_path / "gs")
    assert (gemma / "params.npz").is_file()
    t = pq.read_table(run_copy / "prompts.parquet").to_pylist()
    pf = tmp_path / "p.jsonl"
    pf.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in t))
    feats = _features(run_copy)[:2]
    a = feature_card(run_copy, HOOK, feats, top=5, lm=smol, quiet=True)
    b = feature_card(
        run_copy, HOOK, feats, top=5, prompts=str(pf), sae=str(gemma), lm=smol, quiet=True
    )
    for x, y in zip(a, b, strict=True):
        assert y.sae == str(gemma) and y.group_means == {}
        tx = [(c["prompt_id"], c["position"]) for c in x.contexts if c["kind"] == "top"]
        ty = [(c["prompt_id"], c["position"]) for c in y.contexts if c["kind"] == "top"]
        assert tx == ty
        assert y.lens["promoted_ids"] == x.lens["promoted_ids"]
