"""`encode` with SAEs from a loopback model hub: layer-major fetching (each file once per run),
eviction (never more than one layer's files in the cache), the disk budget (refused before a
byte is fetched), and releases in three formats giving the codes of the same weights."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from saelab.errors import BudgetError, SaelabError
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.sae import SAE
from saelab.store import open_activations
from saelab.store.codes import open_codes
from tests import hub_server
from tests.test_encode import NAMES, copy_run, expected, random_sae, store_run  # noqa: F401
from tests.test_sae_formats import (
    llama_hyper,
    write_clt_layer,
    write_gemma_scope,
    write_llama_scope,
)

hub = hub_server.hub
LAYERS = (2, 4)


def gemma_release(root, saes: dict[int, SAE]) -> str:
    """Gemma Scope's layout: layer_{L}/width_.../average_l0_.../params.npz (no b_dec
    subtraction, so the encoder bias absorbs it)."""
    for layer, sae in saes.items():
        w_enc, b_dec = sae.W_enc.detach(), sae.b_dec.detach()
        write_gemma_scope(root / "org/gemma-like-res" / f"layer_{layer}/width_1k/average_l0_9",
                          w_enc, sae.W_dec.detach(), sae.b_enc.detach() - b_dec @ w_enc, b_dec,
                          sae.threshold.detach())  # fmt: skip
    return "hf://org/gemma-like-res/layer_{L}/width_1k/average_l0_9"


def llama_release(root, saes: dict[int, SAE]) -> str:
    for layer, sae in saes.items():
        s = math.sqrt(576) / 7.0
        w_enc, b_dec = sae.W_enc.detach(), sae.b_dec.detach()
        thr = float(sae.threshold.detach()[0])
        hyper = llama_hyper(576, sae.d_sae, thr=thr / s, norm_in=7.0, norm_out=7.0, layer=layer)
        hyper["sparsity_include_decoder_norm"] = False
        write_llama_scope(root / "org/llama-like" / f"Smol-L{layer}R-1x", w_enc.T / s,
                          sae.b_enc.detach() - b_dec @ w_enc, sae.W_dec.detach().T * s, b_dec * s,
                          hyper)  # fmt: skip
    return "hf://org/llama-like/Smol-L{L}R-1x"


def clt_release(root, saes: dict[int, SAE]) -> str:
    folder = root / "org/clt-like"
    for layer, sae in saes.items():
        w_enc, b_dec = sae.W_enc.detach(), sae.b_dec.detach()
        write_clt_layer(folder, layer, w_enc.T, sae.b_enc.detach() - b_dec @ w_enc, b_dec,
                        sae.threshold.detach())  # fmt: skip
    (folder / "config.yaml").write_text(
        "model_name: HuggingFaceTB/SmolLM2-135M-Instruct\nmodel_kind: cross_layer_transcoder\n"
        "feature_input_hook: hook_resid_post\nfeature_output_hook: hook_mlp_out\n"
    )
    return "hf://org/clt-like/W_enc_{L}.safetensors"


def jumprelu_saes(d_sae: int = 512) -> dict[int, SAE]:
    out = {}
    for layer in LAYERS:
        sae = random_sae("jumprelu", f"blocks.{layer}.hook_resid_post", d_sae=d_sae, seed=layer)
        with torch.no_grad():
            sae.threshold.fill_(float(sae.threshold[0]))  # Llama Scope has one threshold
        out[layer] = sae
    return out


def cache_bytes(hub) -> int:
    return sum(p.stat().st_size for p in hub.cache.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("release", [gemma_release, llama_release, clt_release])
def test_each_release_gives_the_codes_of_the_same_weights(store_run, hub, tmp_path, release):  # noqa: F811
    saes = jumprelu_saes()
    pattern = release(hub.root, saes)
    run = copy_run(store_run, tmp_path / "run")
    res = run_encode(EncodeConfig(saes=pattern, run=str(run), hooks="resid_post.2,resid_post.4",
                                   positions="max", quiet=True))  # fmt: skip
    assert res.fetch["downloads"] >= 2
    store, codes = open_activations(run), open_codes(run)
    for layer, name in zip(LAYERS, NAMES, strict=True):
        got = codes[name].matrix().toarray()
        np.testing.assert_allclose(got, expected(saes[layer], store, name, "max"), rtol=1e-4,
                                   atol=1e-4)  # fmt: skip
    if release is clt_release:  # the decoders (10 GB a layer on the real hub) are never touched
        assert not any("W_dec" in path for _, path in hub.requests)


def test_layer_major_fetches_each_file_once_and_evicts(store_run, hub, tmp_path):  # noqa: F811
    pattern = gemma_release(hub.root, jumprelu_saes(d_sae=2048))
    sizes = [(hub.root / "org/gemma-like-res" / f"layer_{L}/width_1k/average_l0_9/params.npz")
             .stat().st_size for L in LAYERS]  # fmt: skip
    run = copy_run(store_run, tmp_path / "run")
    res = run_encode(EncodeConfig(saes=pattern, run=str(run), hooks="resid_post.2,resid_post.4",
                                   evict=True, quiet=True))  # fmt: skip
    for L in LAYERS:  # 20 prompts in 3 shards: still one download per layer
        assert (
            hub.body_gets("org/gemma-like-res", f"layer_{L}/width_1k/average_l0_9/params.npz") == 1
        )
    assert res.fetch["downloads"] == 2
    assert res.fetch["peak_cache_bytes"] <= max(sizes)  # one layer at a time
    assert cache_bytes(hub) == 0  # evicted: blobs and links gone
    # a second run finds every hook encoded and fetches nothing
    n = len(hub.requests)
    again = run_encode(EncodeConfig(saes=pattern, run=str(run), hooks="resid_post.2,resid_post.4",
                                     evict=True, quiet=True))  # fmt: skip
    assert again.fetch["downloads"] == 0 and len(hub.requests) == n


def test_a_disk_budget_below_one_layer_is_refused_before_any_byte(store_run, hub, tmp_path):  # noqa: F811
    pattern = gemma_release(hub.root, jumprelu_saes(d_sae=2048))
    run = copy_run(store_run, tmp_path / "run")
    with pytest.raises(BudgetError, match="--max-disk"):
        run_encode(EncodeConfig(saes=pattern, run=str(run), hooks="resid_post.2,resid_post.4",
                                 max_disk="1MB", quiet=True))  # fmt: skip
    assert not any(m == "GET" and "params.npz" in p for m, p in hub.requests)
    assert not (run / "codes").exists() or not any((run / "codes").rglob("*.safetensors"))


def test_a_release_path_that_does_not_exist_is_named(store_run, hub, tmp_path):  # noqa: F811
    gemma_release(hub.root, jumprelu_saes())
    run = copy_run(store_run, tmp_path / "run")
    with pytest.raises(SaelabError, match="no SAE found there"):
        run_encode(EncodeConfig(saes="hf://org/gemma-like-res/layer_{L}/width_9k", run=str(run),
                                 hooks="resid_post.2", quiet=True))  # fmt: skip
    with pytest.raises(SaelabError, match="org/missing"):
        run_encode(EncodeConfig(saes="hf://org/missing/x", run=str(run), hooks="resid_post.2",
                                 quiet=True))  # fmt: skip
    shutil.rmtree(run)


def test_a_disk_budget_is_refused_before_the_model_loads(hub, tmp_path, monkeypatch):
    """No store yet: encode would capture first (loading the model); a `--max-disk` below one
    layer's SAE is refused from HEAD requests before that."""
    from saelab.pipeline import stage

    def no_model(*a, **k):  # a tripwire, not a stand-in: the test fails if it is ever reached
        raise AssertionError("the model was loaded before the disk check")

    monkeypatch.setattr(stage, "load_model", no_model)
    pattern = gemma_release(hub.root, jumprelu_saes(d_sae=2048))
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    run = tmp_path / "run"
    with pytest.raises(BudgetError, match="--max-disk"):
        run_encode(EncodeConfig(saes=pattern, run=str(run), hooks="resid_post.2,resid_post.4",
                                prompts=str(prompts), max_disk="1MB", quiet=True))  # fmt: skip
    assert not any(m == "GET" and "params.npz" in p for m, p in hub.requests)
    assert not (run / "activations").exists()
