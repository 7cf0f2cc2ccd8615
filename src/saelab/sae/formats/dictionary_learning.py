"""dictionary_learning (saprmarks/dictionary_learning): `ae.pt` + `config.json` ({"trainer": {
dict_class, activation_dim, dict_size, k, layer, submodule_name, lm_name, ...}, "buffer": ...}).

The state dict's names depend on the dictionary class (their public `Dictionary` classes):

    AutoEncoder            encoder.weight [dict, act], encoder.bias, decoder.weight [act, dict],
                           bias [act]               f = relu(encoder(x - bias))
    AutoEncoderNew         encoder.*, decoder.weight, decoder.bias; f = relu(encoder(x))
    AutoEncoderTopK        encoder.*, decoder.weight, b_dec, k, threshold
                           f = TopK_k(relu(encoder(x - b_dec)))
    BatchTopKSAE           as AutoEncoderTopK; at inference f = r * (r > threshold),
                           r = relu(encoder(x - b_dec)), one scalar threshold
    MatryoshkaBatchTopKSAE W_enc [act, dict], b_enc, W_dec [dict, act], b_dec, k, threshold,
                           group_sizes; inference as BatchTopKSAE
    JumpReluAutoEncoder    W_enc, b_enc, W_dec, b_dec, threshold [dict]; no b_dec subtraction;
                           f = relu(pre) * (pre > threshold) * ||W_dec[i]||, decode divides back

Checkpoints are saved with any activation normalisation already folded into the biases, so
they take raw activations. The JumpReLU decoder-norm factor is folded exactly (W_enc, b_enc and
threshold scaled by the norm, W_dec divided by it), which changes nothing for the unit-norm
decoders its trainer keeps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import SAE

AE = "ae.pt"
CFG = "config.json"
_SUBMODULE_SITES = (
    ("resid_pre", "resid_pre"),
    ("resid_mid", "resid_mid"),
    ("mlp", "mlp_out"),
    ("attn", "attn_out"),
    ("embed", "hook_embed"),
)


def infer_class(sd: dict[str, Any]) -> str:
    """The dictionary class a state dict was saved from, by its tensor names."""
    if "r_mag" in sd or "gate_bias" in sd:
        return "GatedAutoEncoder"
    if "W_enc" in sd:
        return (
            "MatryoshkaBatchTopKSAE"
            if "group_sizes" in sd or "k" in sd
            else ("JumpReluAutoEncoder")
        )
    if "encoder.weight" in sd:
        if "bias" in sd:
            return "AutoEncoder"
        if "decoder.bias" in sd:
            return "AutoEncoderNew"
        if "b_dec" in sd:
            return "AutoEncoderTopK"
    return "unknown"


def _site(trainer: dict[str, Any], buffer: dict[str, Any], path: Path) -> str | None:
    layer = trainer.get("layer")
    sub = str(trainer.get("submodule_name") or "")
    text = (sub or path.as_posix()).lower()
    if not isinstance(layer, int):
        layer = c.layer_in(text)
    site = next((s for key, s in _SUBMODULE_SITES if key in text), "resid_post")
    if site == "hook_embed":
        return "hook_embed"
    if layer is None:
        return None
    if site == "resid_post" and buffer.get("io") == "in":  # the input of block L
        site = "resid_pre"
    return c.hook(layer, site)


def _fold_decoder_norms(state: dict[str, torch.Tensor]) -> None:
    """JumpReluAutoEncoder multiplies codes by ||W_dec[i]|| and decode divides it back: the same
    function with the factor moved into the encoder (a zero-norm feature never fires)."""
    n = state["W_dec"].float().norm(dim=1)
    if bool(((n - 1).abs() < 1e-6).all()):
        return
    live = n > 0
    safe = torch.where(live, n, torch.ones_like(n))
    dt = state["W_enc"].dtype
    state["W_enc"] = (state["W_enc"].float() * torch.where(live, n, 0.0)).to(dt)
    state["b_enc"] = (state["b_enc"].float() * torch.where(live, n, 0.0)).to(dt)
    state["threshold"] = (state["threshold"].float() * safe).to(dt)
    state["W_dec"] = (state["W_dec"].float() / safe[:, None]).to(dt)


def load_dictionary_learning(path: Path, dtype: str | None) -> SAE:
    file = path / AE if path.is_dir() else path
    cfg_file = file.parent / CFG
    raw = c.read_json(cfg_file) if cfg_file.is_file() else {}
    trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    buffer = raw.get("buffer") if isinstance(raw.get("buffer"), dict) else {}
    sd = c.read_pt(file)
    cls = str(trainer.get("dict_class") or infer_class(sd))
    k = None
    # canonical name -> (the file's name for it, stored transposed as in nn.Linear)
    names: dict[str, tuple[str, bool]]
    if cls in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        bias = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(cls, "b_dec")
        names = {
            "W_enc": ("encoder.weight", True),
            "b_enc": ("encoder.bias", False),
            "W_dec": ("decoder.weight", True),
            "b_dec": (bias, False),
        }
        apply, arch = cls != "AutoEncoderNew", "relu"
        if cls == "AutoEncoderTopK":
            arch, k = "topk", c.as_int(c.take(sd, "k", file), "k", file)
        elif cls == "BatchTopKSAE":
            arch, k = "jumprelu", c.as_int(c.take(sd, "k", file), "k", file)
            names["threshold"] = ("threshold", False)
    elif cls in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        names = {n: (n, False) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        arch, apply = "jumprelu", cls != "JumpReluAutoEncoder"
        if cls == "MatryoshkaBatchTopKSAE":
            k = c.as_int(c.take(sd, "k", file), "k", file)
    else:
        raise SaelabError(
            f"{file}: dictionary class {cls!r} is not supported (saelab reads AutoEncoder,"
            " AutoEncoderNew, AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE and"
            " JumpReluAutoEncoder)"
        )
    raw_t = {name: c.take(sd, stored, file) for name, (stored, _) in names.items()}
    enc_name, enc_flipped = names["W_enc"]
    if raw_t["W_enc"].ndim != 2:
        raise SaelabError(f"{file}: {enc_name} has shape {list(raw_t['W_enc'].shape)}, not 2-D")
    d_in, d_sae = raw_t["W_enc"].shape[::-1] if enc_flipped else raw_t["W_enc"].shape
    d_in = c.as_int(trainer.get("activation_dim", d_in), "activation_dim", cfg_file)
    d_sae = c.as_int(trainer.get("dict_size", d_sae), "dict_size", cfg_file)
    said = (
        f"{cfg_file.name} says activation_dim={d_in}, dict_size={d_sae}"
        if trainer
        else f"{enc_name} says d_in={d_in}, d_sae={d_sae}"
    )
    orient = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    state: dict[str, torch.Tensor] = {}
    for name, t in raw_t.items():
        stored, flipped = names[name]
        if name in orient:
            shape = orient[name][::-1] if flipped else orient[name]
            c.expect_shape(file, stored, t, shape, said)
        state[name] = t.T if flipped else t
    if cls == "JumpReluAutoEncoder":
        c.expect_shape(file, "threshold", state["threshold"], (d_sae,), said)
        _fold_decoder_norms(state)
    if k is not None and trainer.get("k") not in (None, k):
        raise SaelabError(f"{file} holds k={k}, but {cfg_file} says k={trainer.get('k')}")
    meta_k = k if arch == "jumprelu" else None
    cfg = c.config(
        d_in,
        d_sae,
        arch,
        k=k if arch == "topk" else None,
        fmt="dictionary_learning",
        hook_name=_site(trainer, buffer, file),
        apply_b_dec_to_input=apply,
        model_name=trainer.get("lm_name"),
        layer=trainer.get("layer"),
        trained_as=cls,
        metadata={"k": meta_k} if meta_k is not None else None,
    )
    return c.build(cfg, state, file, c.pick_dtype(state["W_enc"].dtype, dtype, file))


DICTIONARY_LEARNING = register(
    FormatSpec(
        "dictionary_learning",
        (AE,),
        (CFG,),
        load=load_dictionary_learning,
        rank=60,
        hub_files=(AE, CFG),
        suffixes=(".pt",),
        suffix_rank=2,
        folder_hint=re.compile(r"(?:^|/)trainer_\d+$|_layer_?\d+/"),
        hint_rank=4,
        sniff=lambda file, probe: file.suffix == ".pt" and infer_class(probe.pt()) != "unknown",  # noqa: E501
        sniff_rank=50,
    )
)
