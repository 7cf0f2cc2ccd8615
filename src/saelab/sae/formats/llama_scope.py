"""Llama Scope (`fnlp/Llama3_1-8B-Base-LX{R,A,M,TC}-{8x,32x}`): `hyperparams.json` +
`checkpoints/final.safetensors` (nn.Linear layout), trained on dataset-normalised activations.

The released forward works on x scaled by s = sqrt(d_model) / dataset_average_activation_norm:

    pre   = s_in * (x @ E.T) + b_E
    f     = pre * (pre > s_in * jump_relu_threshold)          (one scalar threshold)
    x_hat = (f @ D.T + b_D) / s_out

saelab folds both factors in exactly (W_enc = s_in E.T, threshold = s_in thr, W_dec = D.T / s_out,
b_dec = b_D / s_out), so the SAE takes raw activations straight from the model and its codes are
the release's. Transcoders (TC) have different in and out norms, hence two factors. The fold is
computed in float32 and cast back to the stored dtype (bfloat16 on the Hub).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import SAE

HYPER = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
_NORM_TOL = 1e-3  # decoder columns this close to unit norm count as unit norm


def _model_name(raw: dict, folder: Path) -> str | None:
    if raw.get("model_name"):
        return str(raw["model_name"])
    m = re.search(r"Llama3_1-8B-(Base|Instruct)", folder.as_posix())
    if m:
        return "meta-llama/Llama-3.1-8B" + ("-Instruct" if m.group(1) == "Instruct" else "")
    return None


def _scale(raw: dict, key: str, d_model: int, source: Path) -> float:
    mode = str(raw.get("norm_activation", "dataset-wise"))
    if mode in ("none", "inference"):
        return 1.0
    if mode != "dataset-wise":
        raise SaelabError(
            f"{source}: norm_activation {mode!r} is not supported (saelab folds only the"
            " dataset-wise scaling Llama Scope releases use)"
        )
    norms = raw.get("dataset_average_activation_norm") or {}
    try:
        norm = float(norms[key])
    except (KeyError, TypeError, ValueError) as e:
        raise SaelabError(
            f"{source} has no dataset_average_activation_norm.{key}, which dataset-wise"
            " scaling needs"
        ) from e
    if not norm > 0:
        raise SaelabError(f"{source}: dataset_average_activation_norm.{key} is {norm}, not > 0")
    return math.sqrt(d_model) / norm


def load_llama_scope(path: Path, dtype: str | None) -> SAE:
    folder = path if path.is_dir() else path.parent.parent
    hyper, file = folder / HYPER, folder / WEIGHTS
    raw = c.read_json(hyper)
    tensors, _ = c.read_safetensors(file)
    enc = c.take(tensors, "encoder.weight", file)
    if enc.ndim != 2:
        raise SaelabError(f"{file}: encoder.weight has shape {list(enc.shape)}, expected 2-D")
    d_model = c.as_int(raw.get("d_model", enc.shape[1]), "d_model", hyper)
    d_sae = c.as_int(raw.get("d_sae", enc.shape[0]), "d_sae", hyper)
    said = f"{hyper} says d_model={d_model}, d_sae={d_sae}"
    c.expect_shape(file, "encoder.weight", enc, (d_sae, d_model), said)
    dec = c.take(tensors, "decoder.weight", file)
    c.expect_shape(file, "decoder.weight", dec, (d_model, d_sae), said)
    b_e = c.take(tensors, "encoder.bias", file)
    c.expect_shape(file, "encoder.bias", b_e, (d_sae,), said)
    if raw.get("use_decoder_bias", True) or "decoder.bias" in tensors:
        b_d = c.take(tensors, "decoder.bias", file)
        c.expect_shape(file, "decoder.bias", b_d, (d_model,), said)
    else:
        b_d = torch.zeros(d_model, dtype=enc.dtype)

    s_in = _scale(raw, "in", d_model, hyper)
    s_out = _scale(raw, "out", d_model, hyper)
    # folded in float32 and in place: one float copy of each matrix at most (the tensors are
    # this loader's own, fresh from the file)
    E, D, bE, bD = (t.float() for t in (enc, dec, b_e, b_d))  # noqa: N806 (the paper's names)
    norms = D.norm(dim=0)  # in the normalised space, where lm_saes measures them
    if raw.get("apply_decoder_bias_to_pre_encoder", False):
        bE = bE - E @ bD  # noqa: N806 (pre = E (s x - b_D) + b_E, so b_D moves into the bias)
    state = {"W_enc": E.mul_(s_in).T, "b_enc": bE, "W_dec": D.div_(s_out).T, "b_dec": bD / s_out}

    act = str(raw.get("act_fn", "jumprelu")).lower()
    k = None
    if act == "jumprelu":
        arch = "jumprelu"
        thr = torch.full((d_sae,), s_in * float(raw.get("jump_relu_threshold", 0.0)))
        if raw.get("sparsity_include_decoder_norm") and (norms - 1).abs().max() > _NORM_TOL:
            # lm_saes gates pre * ||D[:, i]|| against the threshold, then divides the norm back
            thr = torch.where(norms > 0, thr / norms.clamp_min(1e-12), torch.inf)
        state["threshold"] = thr
    elif act == "topk":
        arch, k = "topk", c.as_int(raw.get("top_k"), "top_k", hyper)
    elif act == "relu":
        arch = "relu"
    else:
        raise SaelabError(f"{hyper}: act_fn {act!r} is not one of jumprelu, topk, relu")

    hook_in = str(raw.get("hook_point_in") or "") or None
    hook_out = str(raw.get("hook_point_out") or "") or hook_in
    transcoder = hook_out != hook_in or s_in != s_out
    layer = c.layer_in(hook_in or "", r"blocks\.(\d+)\.")
    cfg = c.config(
        d_model,
        d_sae,
        arch,
        k=k,
        fmt="llama_scope",
        hook_name=hook_in,
        hook_name_out=hook_out if transcoder else None,
        model_name=_model_name(raw, folder),
        layer=layer,
        d_out=d_model if transcoder else None,
        metadata={"norm_scaling_in": s_in, "norm_scaling_out": s_out},
    )
    return c.build(cfg, state, file, c.pick_dtype(enc.dtype, dtype, file))


LLAMA_SCOPE = register(
    FormatSpec(
        "llama_scope",
        (HYPER, WEIGHTS),
        load=load_llama_scope,
        rank=50,
        hub_files=(HYPER, "final.safetensors"),
        folder_hint=re.compile(r"L\d+(?:R|A|M|TC)-\d+x"),
        hint_rank=3,
    )
)
