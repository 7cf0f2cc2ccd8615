"""Pretrained SAE formats: each release's layout, written here from small random weights, loads
to an SAE whose codes and reconstructions equal that release's own formula; a natively saved
SAE rewritten in each foreign layout gives the same codes; bad inputs are one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saelab.errors import SaelabError
from saelab.sae import SAE, SAEConfig
from saelab.sae.formats import FORMATS, candidates, detect, folder_of, load_local
from saelab.sae.model import init_weights

D, S, K = 16, 64, 8


def rnd(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def inputs(n=24, d=D, seed=99):
    return rnd(n, d, seed=seed, scale=2.0) + 0.5


def topk_codes(r, k):
    """The k largest entries of each row of r (assumed >= 0), others 0."""
    vals, idx = r.topk(k, dim=-1)
    return torch.zeros_like(r).scatter(-1, idx, vals)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def one_line_error(fn, match):
    with pytest.raises(SaelabError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


# -- writers: each release's own layout ---------------------------------------------------------
def write_gemma_scope(folder, w_enc, w_dec, b_enc, b_dec, thr):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr}
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    return folder


def write_gemma_scope_2(folder, t, hf_in, hf_out=None, kind="sae", affine=False):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "params.safetensors"))
    cfg = {
        "width": t["w_enc"].shape[1],
        "model_name": "google/gemma-3-1b-pt",
        "architecture": "jump_relu",
        "l0": 40,
        "affine_connection": affine,
        "type": kind,
        "hf_hook_point_in": hf_in,
        "hf_hook_point_out": hf_out or hf_in,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_llama_scope(folder, enc, b_e, dec, b_d, hyper):
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": enc,
        "encoder.bias": b_e,
        "decoder.weight": dec,
        "decoder.bias": b_d,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_LS))
    (folder / "hyperparams.json").write_text(json.dumps(hyper))
    return folder


WEIGHTS_LS = "checkpoints/final.safetensors"


def llama_hyper(d, s, thr=0.3, norm_in=5.0, norm_out=5.0, layer=19, site="R", act="jumprelu"):
    hook = {"R": "hook_resid_post", "TC": "ln2.hook_normalized"}[site]
    return {
        "hook_point_in": f"blocks.{layer}.{hook}",
        "hook_point_out": f"blocks.{layer}.hook_mlp_out"
        if site == "TC"
        else f"blocks.{layer}.{hook}",
        "d_model": d,
        "d_sae": s,
        "expansion_factor": s // d,
        "act_fn": act,
        "jump_relu_threshold": thr,
        "top_k": K,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "sparsity_include_decoder_norm": True,
    }


def write_sparsify(root, hookpoint, enc, b_e, w_dec, b_dec, k=K, **cfg):
    folder = root / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"encoder.weight": enc, "encoder.bias": b_e, "W_dec": w_dec, "b_dec": b_dec}
    save_file({n: v.contiguous() for n, v in tensors.items()}, str(folder / "sae.safetensors"))
    conf = {
        "d_in": enc.shape[1],
        "num_latents": 0,
        "expansion_factor": enc.shape[0] // enc.shape[1],
    }
    conf |= {"k": k, "signed": False, "normalize_decoder": True, "multi_topk": False, **cfg}
    (folder / "cfg.json").write_text(json.dumps(conf))
    (root / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    return folder


def write_dictionary_learning(folder, dict_class, sd, k=None, layer=3, sub="resid_post_layer_3"):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "ae.pt")
    trainer = {
        "trainer_class": dict_class.replace("AutoEncoder", "") + "Trainer",
        "dict_class": dict_class,
        "activation_dim": D,
        "dict_size": S,
        "layer": layer,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": sub,
    }
    if k is not None:
        trainer["k"] = k
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"io": "out"}}))
    return folder


def write_openai(file, enc, latent_bias, dec, pre_bias, k=K):
    file.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        "pre_bias": pre_bias,
        "encoder.weight": enc,
        "latent_bias": latent_bias,
        "decoder.weight": dec,
        "stats_last_nonzero": torch.zeros(enc.shape[0], dtype=torch.long),
        "latents_activation_frequency": torch.ones(enc.shape[0]),
        "latents_mean_square": torch.zeros(enc.shape[0]),
        "activation": "TopK",
        "activation_state_dict": {"k": k, "postact_fn": "ReLU"},
    }
    torch.save(sd, file)
    return file


def write_clt_layer(root, layer, w_enc, b_enc, b_dec, thr=None, activation=None, k=None):
    root.mkdir(parents=True, exist_ok=True)
    t = {f"W_enc_{layer}": w_enc, f"b_enc_{layer}": b_enc, f"b_dec_{layer}": b_dec}
    if thr is not None:
        t[f"threshold_{layer}"] = thr
    save_file({n: v.contiguous() for n, v in t.items()}, str(root / f"W_enc_{layer}.safetensors"))
    # the decoder file is huge on the Hub; here it is garbage, to prove it is never opened
    (root / f"W_dec_{layer}.safetensors").write_bytes(b"not a safetensors file")
    conf = [
        "model_name: google/gemma-2-2b",
        "model_kind: cross_layer_transcoder",
        "feature_input_hook: hook_resid_mid",
        "feature_output_hook: hook_mlp_out",
    ]
    conf += [f"activation: {activation}"] if activation else []
    conf += [f"k: {k}"] if k else []
    (root / "config.yaml").write_text("\n".join(conf) + "\n")
    return root / f"W_enc_{layer}.safetensors"


def jump(pre, thr):
    return pre * (pre > thr)


# -- each release against its own formula ------------------------------------------------------
@pytest.mark.parametrize(
    "repo, hook, hook_out",
    [
        ("gemma-scope-2b-pt-res", "blocks.7.hook_resid_post", None),
        ("gemma-scope-2b-pt-mlp", "blocks.7.hook_mlp_out", None),
        ("gemma-scope-9b-it-att", "blocks.7.attn.hook_z", None),
        ("gemma-scope-2b-pt-transcoders", "blocks.7.ln2.hook_normalized", "blocks.7.hook_mlp_out"),
    ],
)
def test_gemma_scope(tmp_path, repo, hook, hook_out):
    w_enc, w_dec = rnd(D, S, seed=1), rnd(S, D, seed=2)
    b_enc, b_dec, thr = rnd(S, seed=3, scale=0.1), rnd(D, seed=4), rnd(S, seed=5).abs()
    folder = tmp_path / "models--google--" / repo / "layer_7/width_16k/average_l0_50"
    write_gemma_scope(folder, w_enc, w_dec, b_enc, b_dec, thr)
    sae = load_local(folder)
    x = inputs()
    f = jump(x @ w_enc + b_enc, thr)  # no b_dec subtraction
    close(sae.encode(x), f)
    close(sae.decode(f), f @ w_dec + b_dec)
    meta = sae.cfg.metadata
    assert meta["format"] == "gemma_scope" and meta["hook_name"] == hook
    assert meta.get("hook_name_out") == hook_out
    assert meta["model_name"] == (
        "google/gemma-2-9b-it" if "9b-it" in repo else "google/gemma-2-2b"
    )
    assert sae.W_enc.dtype == torch.float32 and sae.is_transcoder == (hook_out is not None)


def test_gemma_scope_embedding_takes_the_scaled_embedding(tmp_path):
    w_enc, w_dec = rnd(D, S, seed=1), rnd(S, D, seed=2)
    b_enc, b_dec, thr = rnd(S, seed=3, scale=0.1), rnd(D, seed=4), rnd(S, seed=5).abs()
    folder = tmp_path / "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6"
    sae = load_local(write_gemma_scope(folder, w_enc, w_dec, b_enc, b_dec, thr))
    x = inputs()
    f = jump(x @ w_enc + b_enc, thr)  # trained on the raw embedding row
    close(sae.encode(x * math.sqrt(D)), f)  # TL's hook_embed is that row times sqrt(d_model)
    close(sae(x * math.sqrt(D)), (f @ w_dec + b_dec) * math.sqrt(D))
    assert sae.cfg.metadata["hook_name"] == "hook_embed"


def test_hf_hook_points_map_only_where_exact():
    from saelab.sae.formats.common import hf_hook

    assert hf_hook("model.layers.3.self_attn.o_proj.input") == (
        "blocks.3.attn.hook_z",
        "model.layers.3.self_attn.o_proj",
        "input",
    )
    assert hf_hook("model.language_model.layers.2.output")[0] == "blocks.2.hook_resid_post"
    assert hf_hook("model.layers.2")[0] == "blocks.2.hook_resid_post"
    assert hf_hook("model.layers.2.input")[0] == "blocks.2.hook_resid_pre"
    assert hf_hook("model.layers.2.mlp.output") == (None, "model.layers.2.mlp", "output")
    assert hf_hook("lm_head")[0] is None


def test_gemma_scope_2_sae_and_skip_transcoder(tmp_path):
    t = {
        "w_enc": rnd(D, S, seed=1),
        "w_dec": rnd(S, D, seed=2),
        "b_enc": rnd(S, seed=3, scale=0.1),
        "b_dec": rnd(D, seed=4),
        "threshold": rnd(S, seed=5).abs(),
    }
    x = inputs()
    f = jump(x @ t["w_enc"] + t["b_enc"], t["threshold"])
    sae = load_local(
        write_gemma_scope_2(
            tmp_path / "resid_post/layer_17_width_16k_l0_medium", t, "model.layers.17.output"
        )
    )
    close(sae.encode(x), f)
    close(sae(x), f @ t["w_dec"] + t["b_dec"])
    meta = sae.cfg.metadata
    assert (
        meta["hook_name"] == "blocks.17.hook_resid_post"
        and meta["hf_hook_name"] == "model.layers.17"
    )
    assert meta["model_name"] == "google/gemma-3-1b-pt" and not sae.is_transcoder

    t["affine_skip_connection"] = rnd(D, D, seed=6, scale=0.1)
    tc = load_local(
        write_gemma_scope_2(
            tmp_path / "transcoder/layer_12_width_16k_l0_big_affine",
            t,
            "model.layers.12.pre_feedforward_layernorm.output",
            "model.layers.12.post_feedforward_layernorm.output",
            kind="transcoder",
            affine=True,
        )
    )
    close(tc.encode(x), f)
    close(tc(x), f @ t["w_dec"] + t["b_dec"] + x @ t["affine_skip_connection"])
    meta = tc.cfg.metadata
    assert meta["hook_name"] == "blocks.12.hook_mlp_in"  # SAELens's name for that site
    assert meta["hook_name_out"] == "blocks.12.hook_mlp_out" and tc.is_transcoder
    assert meta["hf_hook_name_out"] == "model.layers.12.post_feedforward_layernorm"
    # transcoder and skip survive the native layout
    tc.save(tmp_path / "native")
    back = SAE.load(tmp_path / "native")
    close(back(x), tc(x))
    assert back.cfg.metadata["hook_name_out"] == "blocks.12.hook_mlp_out"


@pytest.mark.parametrize("site", ["R", "TC"])
def test_llama_scope_folds_the_dataset_norm_exactly(tmp_path, site):
    enc, dec = rnd(S, D, seed=1, scale=0.3), rnd(D, S, seed=2)
    dec = dec / dec.norm(dim=0, keepdim=True)  # released decoders have unit-norm columns
    b_e, b_d = rnd(S, seed=3, scale=0.2), rnd(D, seed=4)
    n_in, n_out = (5.0, 5.0) if site == "R" else (8.0, 3.0)
    hyper = llama_hyper(D, S, thr=0.3, norm_in=n_in, norm_out=n_out, site=site)
    folder = write_llama_scope(
        tmp_path / f"Llama3_1-8B-Base-L19{site}-8x", enc, b_e, dec, b_d, hyper
    )
    sae = load_local(folder)
    x = inputs()
    s_in, s_out = math.sqrt(D) / n_in, math.sqrt(D) / n_out
    pre = s_in * (x @ enc.T) + b_e
    f = pre * (pre > s_in * 0.3)
    close(sae.encode(x), f)
    close(sae(x), (f @ dec.T + b_d) / s_out)
    assert 0 < (f > 0).float().sum(-1).mean() < S
    meta = sae.cfg.metadata
    assert meta["hook_name"] == (
        "blocks.19.hook_resid_post" if site == "R" else "blocks.19.ln2.hook_normalized"
    )
    assert meta["model_name"] == "meta-llama/Llama-3.1-8B"
    assert sae.is_transcoder == (site == "TC")


def test_llama_scope_gates_on_the_decoder_norm_and_keeps_bfloat16(tmp_path):
    enc, dec = rnd(S, D, seed=1, scale=0.3), rnd(D, S, seed=2)  # columns not unit norm
    b_e, b_d = rnd(S, seed=3, scale=0.2), rnd(D, seed=4)
    folder = write_llama_scope(tmp_path / "L3R", enc, b_e, dec, b_d, llama_hyper(D, S, layer=3))
    sae = load_local(folder)
    s, x = math.sqrt(D) / 5.0, inputs()
    pre = s * (x @ enc.T) + b_e
    close(sae.encode(x), pre * (pre * dec.norm(dim=0) > s * 0.3))  # lm_saes' gate, divided back
    bf = write_llama_scope(
        tmp_path / "bf", *(t.bfloat16() for t in (enc, b_e, dec, b_d)), llama_hyper(D, S)
    )
    assert load_local(bf).W_enc.dtype == torch.bfloat16
    assert load_local(bf, dtype="float32").W_enc.dtype == torch.float32


@pytest.mark.parametrize(
    "hookpoint, hook",
    [("layers.5", "blocks.5.hook_resid_post"), ("layers.5.mlp", "blocks.5.hook_mlp_out")],
)
def test_sparsify(tmp_path, hookpoint, hook):
    enc, b_e = rnd(S, D, seed=1), rnd(S, seed=2, scale=0.1)
    w_dec, b_dec = rnd(S, D, seed=3), rnd(D, seed=4)
    sae = load_local(write_sparsify(tmp_path, hookpoint, enc, b_e, w_dec, b_dec))
    x = inputs()
    f = topk_codes(torch.relu((x - b_dec) @ enc.T + b_e), K)  # sparsify's encode
    close(sae.encode(x), f)
    close(sae(x), f @ w_dec + b_dec)
    meta = sae.cfg.metadata
    assert meta["hook_name"] == hook and meta["hf_hook_name"] == hookpoint
    assert meta["model_name"] == "EleutherAI/pythia-70m" and sae.cfg.k == K


def dl_state(cls, seed=0):
    enc, b_e = rnd(S, D, seed=seed + 1), rnd(S, seed=seed + 2, scale=0.1)
    dec = rnd(D, S, seed=seed + 3)
    dec = dec / dec.norm(dim=0, keepdim=True)
    bias = rnd(D, seed=seed + 4)
    k = torch.tensor(K, dtype=torch.int)
    if cls == "AutoEncoder":
        return {"bias": bias, "encoder.weight": enc, "encoder.bias": b_e, "decoder.weight": dec}
    if cls == "AutoEncoderNew":
        return {
            "encoder.weight": enc,
            "encoder.bias": b_e,
            "decoder.weight": dec,
            "decoder.bias": bias,
        }
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        sd = {"encoder.weight": enc, "encoder.bias": b_e, "decoder.weight": dec, "b_dec": bias}
        return sd | {"k": k, "threshold": torch.tensor(0.4)}
    sd = {
        "W_enc": enc.T.clone(),
        "b_enc": b_e,
        "W_dec": dec.T * rnd(S, 1, seed=9).abs(),
        "b_dec": bias,
    }
    if cls == "JumpReluAutoEncoder":
        return sd | {"threshold": rnd(S, seed=seed + 5).abs() * 0.5}
    return sd | {"k": k, "threshold": torch.tensor(0.4), "group_sizes": torch.tensor([16, 48])}


def dl_formula(cls, sd, x):
    """dictionary_learning's own encode/decode, from the raw state dict."""
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        w_enc, b_enc, w_dec, b_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"]
        if cls == "JumpReluAutoEncoder":
            pre = x @ w_enc + b_enc
            n = w_dec.norm(dim=1)
            f = torch.relu(pre * (pre > sd["threshold"])) * n
            return f, (f / n) @ w_dec + b_dec
        r = torch.relu((x - b_dec) @ w_enc + b_enc)
        f = r * (r > sd["threshold"])
        return f, f @ w_dec + b_dec
    enc, b_e, dec = sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"]
    if cls == "AutoEncoderNew":
        f = torch.relu(x @ enc.T + b_e)
        return f, f @ dec.T + sd["decoder.bias"]
    bias = sd["bias"] if cls == "AutoEncoder" else sd["b_dec"]
    r = torch.relu((x - bias) @ enc.T + b_e)
    if cls == "AutoEncoderTopK":
        f = topk_codes(r, K)
    elif cls == "BatchTopKSAE":
        f = r * (r > sd["threshold"])
    else:
        f = r
    return f, f @ dec.T + bias


@pytest.mark.parametrize(
    "cls",
    [
        "AutoEncoder",
        "AutoEncoderNew",
        "AutoEncoderTopK",
        "BatchTopKSAE",
        "MatryoshkaBatchTopKSAE",
        "JumpReluAutoEncoder",
    ],
)
def test_dictionary_learning(tmp_path, cls):
    sd = dl_state(cls)
    k = K if "TopK" in cls else None
    folder = write_dictionary_learning(tmp_path / "resid_post_layer_3/trainer_0", cls, sd, k=k)
    sae = load_local(folder)
    x = inputs()
    f, recon = dl_formula(cls, sd, x)
    close(sae.encode(x), f)
    close(sae(x), recon)
    meta = sae.cfg.metadata
    assert meta["hook_name"] == "blocks.3.hook_resid_post" and meta["trained_as"] == cls
    assert meta["model_name"] == "EleutherAI/pythia-70m-deduped"
    assert detect(folder / "ae.pt").name == "dictionary_learning"


@pytest.mark.parametrize(
    "location, hook",
    [
        ("resid_post_mlp", "blocks.4.hook_resid_post"),
        ("resid_post_attn", "blocks.4.hook_resid_mid"),
        ("resid_delta_attn", "blocks.4.hook_attn_out"),
        ("resid_delta_mlp", "blocks.4.hook_mlp_out"),
    ],
)
def test_openai_v5_layer_norm(tmp_path, location, hook):
    enc, lat, dec, pre_bias = (
        rnd(S, D, seed=1),
        rnd(S, seed=2, scale=0.1),
        rnd(D, S, seed=3),
        rnd(D, seed=4, scale=0.1),
    )
    file = write_openai(
        tmp_path / f"gpt2-small/{location}_v5_32k/autoencoders/4.pt", enc, lat, dec, pre_bias
    )
    sae = load_local(file)
    x = inputs() * 10
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    xn = (x - mu) / (std + 1e-5)
    pre = (xn - pre_bias) @ enc.T + lat
    vals, idx = pre.topk(K, dim=-1)  # OpenAI's TopK: top k of the pre-activations, then ReLU
    f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    close(sae.encode(x), f)
    close(sae(x), (f @ dec.T + pre_bias) * std + mu)
    assert sae.cfg.metadata["hook_name"] == hook and sae.cfg.normalize_activations == "layer_norm"
    sae.save(tmp_path / "native")  # the layer norm survives the native layout
    close(SAE.load(tmp_path / "native")(x), sae(x))


def test_torch_dict_both_orientations(tmp_path):
    w_enc, w_dec = rnd(D, S, seed=1), rnd(S, 24, seed=2)  # a transcoder: d_out 24
    b_enc, b_dec, thr = rnd(S, seed=3, scale=0.1), rnd(24, seed=4), rnd(S, seed=5).abs()
    config = {"hook_name": "blocks.2.hook_resid_mid", "hook_name_out": "blocks.2.hook_mlp_out"}
    sd = {
        "W_enc": w_enc,
        "b_enc": b_enc,
        "W_dec": w_dec,
        "b_dec": b_dec,
        "threshold": thr,
        "config": config,
    }
    torch.save(sd, tmp_path / "tc.pt")
    sae = load_local(tmp_path / "tc.pt")
    x = inputs()
    f = jump(x @ w_enc + b_enc, thr)
    close(sae.encode(x), f)
    close(sae(x), f @ w_dec + b_dec)
    assert sae.cfg.metadata["hook_name_out"] == "blocks.2.hook_mlp_out" and sae.cfg.d_out == 24
    # circuit-tracer's per-layer layout: W_enc [d_sae, d_in], config.yaml one folder up
    (tmp_path / "plt").mkdir()
    (tmp_path / "config.yaml").write_text("model_name: m\nfeature_input_hook: hook_resid_mid\n")
    t = {"W_enc": w_enc.T.contiguous(), "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    t["activation_function.threshold"] = thr
    save_file(t, str(tmp_path / "plt/layer_6.safetensors"))
    plt = load_local(tmp_path / "plt/layer_6.safetensors")
    close(plt.encode(x), f)
    assert plt.cfg.metadata["hook_name"] == "blocks.6.hook_resid_mid"
    assert plt.cfg.metadata["model_name"] == "m"


@pytest.mark.parametrize("with_threshold", [True, False])
def test_clt_layer_reads_only_the_encoder(tmp_path, with_threshold):
    w, b_enc, b_dec = rnd(S, D, seed=1), rnd(S, seed=2, scale=0.1), rnd(D, seed=3)
    thr = rnd(S, seed=4).abs() if with_threshold else None
    file = write_clt_layer(
        tmp_path / "clt",
        3,
        w.bfloat16(),
        b_enc.bfloat16(),
        b_dec.bfloat16(),
        thr.bfloat16() if thr is not None else None,
    )
    sae = load_local(file, dtype="float32")
    x = inputs()
    pre = x @ w.bfloat16().float().T + b_enc.bfloat16().float()
    f = jump(pre, thr.bfloat16().float()) if with_threshold else torch.relu(pre)
    close(sae.encode(x), f)
    meta = sae.cfg.metadata
    assert (
        meta["hook_name"] == "blocks.3.hook_resid_mid"
        and meta["hook_name_out"] == "blocks.3.hook_mlp_out"
    )
    assert meta["model_name"] == "google/gemma-2-2b" and sae.W_dec is None
    one_line_error(lambda: sae.decode(f), "decoder was not loaded")
    assert load_local(file).W_enc.dtype == torch.bfloat16  # as stored
    sae.save(tmp_path / "native")  # encoder-only survives the native layout
    back = SAE.load(tmp_path / "native")
    close(back.encode(x), f)
    assert back.W_dec is None


# -- a native SAE rewritten in every foreign layout gives the same codes -----------------------
def native(tmp_path, arch, seed=0):
    sae = init_weights(SAE(SAEConfig(d_in=D, d_sae=S, architecture=arch, k=K)), seed)
    with torch.no_grad():
        sae.b_enc.copy_(rnd(S, seed=seed + 1, scale=0.1))
        sae.b_dec.copy_(rnd(D, seed=seed + 2, scale=0.3))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.full((S,), 0.15))  # one value: Llama Scope has a scalar
    sae.save(tmp_path / "native")
    return SAE.load(tmp_path / "native")


def rewrite(fmt, sae, root):
    """`sae` in `fmt`'s layout; biases moved so the release's formula gives sae's codes."""
    w_enc, b_enc, w_dec, b_dec = (
        p.detach().clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    folded = b_enc - b_dec @ w_enc  # for formats that do not subtract b_dec before encoding
    thr = sae.threshold.detach().clone() if sae.threshold is not None else None
    arch = sae.cfg.architecture
    if fmt == "saelens":
        sae.save(root / "s")
        return root / "s"
    if fmt == "gemma_scope":
        return write_gemma_scope(
            root / "gemma-scope-2b-pt-res/layer_1/width_16k/x", w_enc, w_dec, folded, b_dec, thr
        )
    if fmt == "gemma_scope_2":
        t = {"w_enc": w_enc, "w_dec": w_dec, "b_enc": folded, "b_dec": b_dec, "threshold": thr}
        return write_gemma_scope_2(root / "layer_1_width_16k_l0_small", t, "model.layers.1.output")
    if fmt == "llama_scope":
        s = math.sqrt(D) / 7.0
        hyper = llama_hyper(
            D,
            S,
            thr=float(thr[0]) / s if thr is not None else 0.0,
            norm_in=7.0,
            norm_out=7.0,
            act="jumprelu" if arch == "jumprelu" else "topk",
        )
        hyper["sparsity_include_decoder_norm"] = False  # decoder columns here have norm s
        return write_llama_scope(root / "L1R", w_enc.T / s, folded, w_dec.T * s, b_dec * s, hyper)
    if fmt == "sparsify":
        return write_sparsify(root, "layers.1", w_enc.T, b_enc, w_dec, b_dec)
    if fmt == "dictionary_learning":
        if arch == "topk":
            sd = {
                "encoder.weight": w_enc.T,
                "encoder.bias": b_enc,
                "decoder.weight": w_dec.T,
                "b_dec": b_dec,
            }
            return write_dictionary_learning(
                root / "dl", "AutoEncoderTopK", sd | {"k": torch.tensor(K)}, k=K
            )
        sd = {"W_enc": w_enc, "b_enc": folded, "W_dec": w_dec, "b_dec": b_dec, "threshold": thr}
        return write_dictionary_learning(root / "dl", "JumpReluAutoEncoder", sd)
    if fmt == "openai_v5":
        return write_openai(
            root / "resid_post_mlp_v5_32k/autoencoders/1.pt", w_enc.T, b_enc, w_dec.T, b_dec
        )
    if fmt == "torch_dict":
        sd = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
        sd["config"] = {
            "architecture": arch,
            "k": K,
            "apply_b_dec_to_input": True,
            "hook_name": "blocks.1.hook_resid_post",
        }
        if thr is not None:
            sd["threshold"] = thr
        root.mkdir(parents=True)
        torch.save(sd, root / "sae.pt")
        return root / "sae.pt"
    assert fmt == "clt_layer"
    return write_clt_layer(
        root / "clt",
        1,
        w_enc.T,
        folded,
        b_dec,
        thr,
        activation="topk" if arch == "topk" else None,
        k=K if arch == "topk" else None,
    )


ROUND_TRIPS = [
    (fmt, arch)
    for fmt in [f.name for f in FORMATS]
    for arch in ("jumprelu", "topk")
    if (fmt, arch)
    not in {
        ("gemma_scope", "topk"),
        ("gemma_scope_2", "topk"),
        ("sparsify", "jumprelu"),
        ("openai_v5", "jumprelu"),
    }
]


@pytest.mark.parametrize("fmt, arch", ROUND_TRIPS)
def test_native_sae_rewritten_in_each_format_gives_the_same_codes(tmp_path, fmt, arch):
    sae = native(tmp_path, arch)
    loaded = load_local(rewrite(fmt, sae, tmp_path / "out"))
    assert loaded.cfg.metadata["format"] == fmt
    x = inputs()
    want = sae.encode(x)
    if fmt == "openai_v5":  # OpenAI's SAEs see the layer-normalised input
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        want = sae.encode((x - mu) / (std + 1e-5))
    got = loaded.encode(x)
    close(got, want)
    assert 0 < (want > 0).sum() < want.numel()
    if loaded.W_dec is not None and fmt != "openai_v5":
        close(loaded(x), sae(x))


# -- detection, Hub paths, errors ----------------------------------------------------------------
def test_unknown_folder_lists_what_it_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/a.json").write_text("{}")
    msg = one_line_error(lambda: detect(tmp_path), "no known SAE format")
    assert "notes.txt, sub/a.json, weights.bin" in msg and "gemma_scope (params.npz)" in msg
    one_line_error(lambda: load_local(tmp_path / "missing"), "does not exist")
    one_line_error(lambda: load_local(tmp_path, dtype="float8"), "dtype 'float8'")


def test_damaged_files_are_named(tmp_path):
    g = write_gemma_scope(tmp_path / "g", rnd(D, S), rnd(S, D), rnd(S), rnd(D), rnd(S).abs())
    data = (g / "params.npz").read_bytes()
    (g / "params.npz").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_local(g), r"g/params.npz is not a readable .npz file.*truncated")

    s = write_sparsify(tmp_path / "sp", "layers.1", rnd(S, D), rnd(S), rnd(S, D), rnd(D))
    data = (s / "sae.safetensors").read_bytes()
    (s / "sae.safetensors").write_bytes(data[:-100])
    one_line_error(lambda: load_local(s), r"sae.safetensors is not a readable safetensors file")

    d = write_dictionary_learning(tmp_path / "dl", "AutoEncoder", dl_state("AutoEncoder"))
    data = (d / "ae.pt").read_bytes()
    (d / "ae.pt").write_bytes(data[: len(data) // 3])
    one_line_error(lambda: load_local(d), r"ae.pt is not a readable torch file")

    torch.save({"W_enc": rnd(D, S), "where": Path("x")}, tmp_path / "pickled.pt")
    one_line_error(
        lambda: load_local(tmp_path / "pickled.pt"),
        r"pickled.pt holds a pathlib.*Path object.*weights_only=True",
    )

    (d / "config.json").write_text("{oops")
    one_line_error(lambda: load_local(d), r"config.json is not valid JSON")


def test_shapes_that_disagree_with_the_config_name_the_file(tmp_path):
    s = write_sparsify(tmp_path / "sp", "layers.1", rnd(S, D), rnd(S), rnd(S, D), rnd(D))
    conf = json.loads((s / "cfg.json").read_text())
    (s / "cfg.json").write_text(json.dumps(conf | {"d_in": 17}))
    one_line_error(
        lambda: load_local(s),
        r"sae.safetensors: encoder.weight has shape \[64, 16\], but .*d_in=17",
    )

    d = write_dictionary_learning(
        tmp_path / "dl", "AutoEncoderTopK", dl_state("AutoEncoderTopK"), k=K
    )
    conf = json.loads((d / "config.json").read_text())
    conf["trainer"]["dict_size"] = 128
    (d / "config.json").write_text(json.dumps(conf))
    one_line_error(
        lambda: load_local(d),
        r"ae.pt: encoder.weight has shape \[64, 16\], but config.json says activation_dim=16,"
        r" dict_size=128",
    )

    t = {
        "w_enc": rnd(D, S),
        "w_dec": rnd(S, D),
        "b_enc": rnd(S),
        "b_dec": rnd(D),
        "threshold": rnd(S),
    }
    g2 = write_gemma_scope_2(tmp_path / "g2", t, "model.layers.1.output")
    (g2 / "config.json").write_text(
        json.dumps(json.loads((g2 / "config.json").read_text()) | {"width": "16k"})
    )
    one_line_error(
        lambda: load_local(g2), r"params.safetensors: w_enc has shape \[16, 64\].*width 16k"
    )

    ls = write_llama_scope(
        tmp_path / "ls", rnd(S, D), rnd(S), rnd(D, S), rnd(D), llama_hyper(32, S)
    )
    one_line_error(lambda: load_local(ls), r"final.safetensors: encoder.weight .* says d_model=32")

    g = write_gemma_scope(tmp_path / "g", rnd(D, S), rnd(S, D), rnd(S), rnd(D), rnd(S))
    with np.load(g / "params.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "threshold"}
    np.savez(g / "params.npz", **arrays)
    one_line_error(lambda: load_local(g), r"params.npz has no tensor 'threshold'")


def test_detect_by_file_and_folder(tmp_path):
    sae = native(tmp_path, "topk")
    assert detect(tmp_path / "native").name == "saelens"
    assert detect(tmp_path / "native/sae_weights.safetensors").name == "saelens"
    assert load_local(tmp_path / "native/cfg.json").cfg.metadata["format"] == "saelens"
    ls = write_llama_scope(tmp_path / "ls", rnd(S, D), rnd(S), rnd(D, S), rnd(D), llama_hyper(D, S))
    assert detect(ls / "checkpoints/final.safetensors").name == "llama_scope"
    assert load_local(ls / "checkpoints/final.safetensors").d_sae == S
    assert sae.cfg.to_dict().keys().isdisjoint({"d_out", "skip_connection", "has_decoder"})


def test_candidates_for_hub_paths():
    names = lambda p: [f.name for f in candidates(p)]  # noqa: E731
    assert names("W_enc_12.safetensors") == ["clt_layer"]
    assert names("layer_5/width_16k/average_l0_68/params.npz") == ["gemma_scope"]
    assert names("layer_5/width_16k/average_l0_68")[0] == "gemma_scope"
    assert names("resid_post/layer_17_width_16k_l0_medium")[0] == "gemma_scope_2"
    assert names("Llama3_1-8B-Base-L19R-8x")[0] == "llama_scope"
    assert names("layers.5")[0] == "sparsify"
    assert names("blocks.7.hook_resid_post")[0] == "saelens"
    assert names("resid_post_mlp_v5_32k/autoencoders/4.pt")[0] == "openai_v5"
    assert set(names("some/file.pt")) == {"torch_dict", "dictionary_learning", "openai_v5"}
    assert names("x/ae.pt") == ["dictionary_learning"]
    assert names("x/y.safetensors") == ["torch_dict"]
    assert set(names("a/b")) == {f.name for f in FORMATS if not f.is_file}
    spec = candidates("Llama3_1-8B-Base-L19R-8x/checkpoints/final.safetensors")[0]
    assert (
        folder_of("Llama3_1-8B-Base-L19R-8x/checkpoints/final.safetensors", spec)
        == "Llama3_1-8B-Base-L19R-8x"
    )
    assert folder_of(
        "layer_5/width_16k/average_l0_68", candidates("layer_5/width_16k/average_l0_68")[0]
    ) == ("layer_5/width_16k/average_l0_68")
    assert folder_of("W_enc_3.safetensors", candidates("W_enc_3.safetensors")[0]) == ""
