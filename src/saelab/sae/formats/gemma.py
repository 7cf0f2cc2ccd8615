"""Gemma Scope (Gemma 2: `params.npz`) and Gemma Scope 2 (Gemma 3: `params.safetensors` +
`config.json`): JumpReLU SAEs and transcoders that never subtract b_dec before encoding.

    pre = x @ W_enc + b_enc;  f = pre * (pre > threshold);  x_hat = f @ W_dec + b_dec

Gemma Scope keeps no config: the site comes from the repository name in the path
(`gemma-scope-2b-pt-res` -> resid_post, `-mlp` -> mlp_out, `-att` -> attn.hook_z,
`-transcoders` -> ln2.hook_normalized in, hook_mlp_out out) and the layer from `layer_N`.
Gemma Scope 2 names its HF hook points in config.json, which map to canonical names exactly
where TransformerLens has the same site.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import SAE

NPZ = "params.npz"
ST = "params.safetensors"
CFG = "config.json"
_REPO = re.compile(r"gemma-scope-(\d+(?:\.\d+)?b)-(pt|it)-(res|mlp|att|transcoders)")
_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn.hook_z"}


def _gemma_scope_site(path: Path) -> tuple[str | None, str | None, str | None, str | None]:
    """(hook_name, hook_name_out, model_name, reshape) from a Gemma Scope path."""
    text = path.as_posix().lower()
    m = _REPO.search(text)
    layer = c.layer_in(text)
    model = f"google/gemma-2-{m.group(1)}" + ("-it" if m.group(2) == "it" else "") if m else None
    if "/embedding/" in text:
        return "hook_embed", None, model, None
    if m is None or layer is None:
        return None, None, model, None
    kind = m.group(3)
    if kind == "transcoders":
        return c.hook(layer, "ln2.hook_normalized"), c.hook(layer, "mlp_out"), model, None
    return c.hook(layer, _SITES[kind]), None, model, ("hook_z" if kind == "att" else None)


def load_gemma_scope(path: Path, dtype: str | None) -> SAE:
    """`params.npz` (W_enc [d_model, d_sae], W_dec, b_enc, b_dec, threshold), float32."""
    file = path / NPZ if path.is_dir() else path
    raw = c.read_npz(file)
    arrays = {("W" + k[1:] if k.startswith("w_") else k): v for k, v in raw.items()}
    sf = arrays.pop("scaling_factor", None)
    if sf is not None and not bool(torch.all(sf == 1)):
        raise SaelabError(f"{file} has a scaling_factor other than 1, which saelab does not apply")
    w_enc = c.take(arrays, "W_enc", file)
    if w_enc.ndim != 2:
        raise SaelabError(f"{file}: W_enc has shape {list(w_enc.shape)}, expected [d_model, d_sae]")
    d_in, d_sae = w_enc.shape
    w_dec = c.take(arrays, "W_dec", file)
    d_out = w_dec.shape[-1] if w_dec.ndim == 2 else d_in
    state = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_enc": c.take(arrays, "b_enc", file),
        "b_dec": c.take(arrays, "b_dec", file),
        "threshold": c.take(arrays, "threshold", file),
    }
    said = f"W_enc [{d_in}, {d_sae}] says d_in={d_in}, d_sae={d_sae}"
    for name, shape in (("W_dec", (d_sae, d_out)), ("b_enc", (d_sae,)), ("b_dec", (d_out,))):
        c.expect_shape(file, name, state[name], shape, said)
    hook, hook_out, model, reshape = _gemma_scope_site(file)
    transcoder = hook_out is not None or d_out != d_in
    cfg = c.config(
        d_in,
        d_sae,
        "jumprelu",
        fmt="gemma_scope",
        hook_name=hook,
        hook_name_out=hook_out,
        model_name=model,
        layer=c.layer_in(file.as_posix()),
        d_out=d_out if transcoder else None,
        reshape_activations=reshape or "none",
    )
    sae = c.build(cfg, state, file, c.pick_dtype(w_enc.dtype, dtype, file))
    if hook == "hook_embed":
        # SAELens's reading: the SAE was trained on the raw embedding row, while TL's hook_embed
        # is scaled by sqrt(d_model); fold that scale in (exactly, b_dec included)
        sae.fold_input_scale(1.0 / math.sqrt(d_in))
    return sae


def _width(value: Any) -> int | None:
    """config.json's `width`: 16384, "16k" or "1m" (powers of two, as the folders name them)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)([km]?)", str(value).strip().lower())
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]


def load_gemma_scope_2(path: Path, dtype: str | None) -> SAE:
    """`params.safetensors` (w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc, b_dec,
    threshold, optional affine_skip_connection [d_in, d_out]) + `config.json`."""
    folder = path if path.is_dir() else path.parent
    file, cfg_file = folder / ST, folder / CFG
    raw = c.read_json(cfg_file)
    arch = str(raw.get("architecture", "jump_relu")).lower()
    if arch not in ("jump_relu", "jumprelu"):
        raise SaelabError(f"{cfg_file}: architecture {arch!r} is not the JumpReLU saelab reads")
    tensors, _ = c.read_safetensors(file)
    t = {k.lower(): v for k, v in tensors.items()}
    w_enc = c.take(t, "w_enc", file)
    if w_enc.ndim != 2:
        raise SaelabError(
            f"{file}: w_enc has shape {list(w_enc.shape)}, expected [d_in, d_sae]"
            " (a cross-layer transcoder folder is not a Gemma Scope 2 SAE)"
        )
    d_in, d_sae = w_enc.shape
    width = _width(raw.get("width", d_sae))
    if width is not None and width != d_sae:
        raise SaelabError(
            f"{file}: w_enc has shape {list(w_enc.shape)}, but {cfg_file} says width"
            f" {raw.get('width')} (expected d_sae={width})"
        )
    w_dec = c.take(t, "w_dec", file)
    if w_dec.ndim != 2 or w_dec.shape[0] != d_sae:
        raise SaelabError(f"{file}: w_dec has shape {list(w_dec.shape)}, expected [{d_sae}, d_out]")
    d_out = w_dec.shape[1]
    state = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_enc": c.take(t, "b_enc", file),
        "b_dec": c.take(t, "b_dec", file),
        "threshold": c.take(t, "threshold", file),
    }
    said = f"w_enc/w_dec say d_in={d_in}, d_sae={d_sae}, d_out={d_out}"
    c.expect_shape(file, "b_enc", state["b_enc"], (d_sae,), said)
    c.expect_shape(file, "b_dec", state["b_dec"], (d_out,), said)
    skip = "affine_skip_connection" in t
    if raw.get("affine_connection") and not skip:
        raise SaelabError(
            f"{file} has no tensor 'affine_skip_connection', but {cfg_file} says"
            " affine_connection: true"
        )
    if skip:
        state["W_skip"] = t["affine_skip_connection"]
        c.expect_shape(file, "affine_skip_connection", state["W_skip"], (d_in, d_out), said)
    hf_in = str(raw.get("hf_hook_point_in") or "")
    hf_out = str(raw.get("hf_hook_point_out") or hf_in)
    hook_in, mod_in, io_in = c.hf_hook(hf_in) if hf_in else (None, None, None)
    hook_out, mod_out, io_out = c.hf_hook(hf_out) if hf_out else (None, None, None)
    transcoder = str(raw.get("type", "sae")) == "transcoder" or hf_out != hf_in or skip
    cfg = c.config(
        d_in,
        d_sae,
        "jumprelu",
        fmt="gemma_scope_2",
        hook_name=hook_in,
        hf_hook_name=mod_in,
        hf_hook_io=io_in,
        model_name=raw.get("model_name"),
        hook_name_out=hook_out if transcoder else None,
        hf_hook_name_out=mod_out if transcoder else None,
        hf_hook_io_out=io_out if transcoder else None,
        d_out=d_out if transcoder else None,
        skip_connection=skip,
        reshape_activations="hook_z" if (hook_in or "").endswith("attn.hook_z") else "none",
        metadata={"l0": raw["l0"]} if isinstance(raw.get("l0"), (int, float)) else None,
    )
    return c.build(cfg, state, file, c.pick_dtype(w_enc.dtype, dtype, file))


GEMMA_SCOPE_2 = register(
    FormatSpec(
        "gemma_scope_2",
        (ST, CFG),
        load=load_gemma_scope_2,
        rank=30,
        hub_files=(ST, CFG),
        folder_hint=re.compile(r"layer_\d+_width_\w+?_l0_"),
        hint_rank=1,
    )
)
GEMMA_SCOPE = register(
    FormatSpec(
        "gemma_scope",
        (NPZ,),
        load=load_gemma_scope,
        rank=40,
        hub_files=(NPZ,),
        suffixes=(".npz",),
        folder_hint=re.compile(r"(?:^|/)layer_\d+/width_\w+/|average_l0_\d+|/canonical$"),
        hint_rank=2,
        sniff=lambda file, probe: file.suffix == ".npz",
        sniff_rank=20,
    )
)
