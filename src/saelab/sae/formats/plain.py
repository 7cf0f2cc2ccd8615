"""Plain tensor files: a torch/safetensors dict of W_enc/b_enc/W_dec/b_dec (`torch_dict`), and
one layer of a cross-layer transcoder (`clt_layer`, `W_enc_{L}.safetensors`).

torch_dict: W_enc [d_in, d_sae] (SAELens) or [d_sae, d_in] (circuit-tracer's `layer_{L}`
files; told apart by b_enc's length), W_dec [d_sae, d_out], b_enc, b_dec, optional threshold
(or `activation_function.threshold`), k, W_skip. Settings come from a `config`/`cfg` dict in the
file (`.pt`) or its header metadata (`.safetensors`: a JSON `config`/`cfg` string or flat keys):
hook_name, hook_name_out, model_name, architecture, k, apply_b_dec_to_input (default false: the
plain pre = x @ W_enc + b_enc that Gemma-style and circuit-tracer files use). Without them a
circuit-tracer `config.yaml` beside the file (or one folder up) names the hooks.

clt_layer: `W_enc_{L}` [d_t, d_model], `b_enc_{L}`, `b_dec_{L}` [d_model], optional
`threshold_{L}` (JumpReLU if present, else ReLU). f = act(x @ W_enc^T + b_enc); only the encoder
is read: a CLT's decoders (10+ GiB per layer) are never needed for activations.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, Probe, register
from saelab.sae.model import SAE

CLT_RE = re.compile(r"^W_enc_(\d+)\.safetensors$")
YAMLS = ("config.yaml", "../config.yaml")
_ARCH = {
    "jump_relu": "jumprelu",
    "standard": "relu",
    "relu": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
}


def _yaml_near(file: Path) -> tuple[dict[str, Any], Path | None]:
    for rel in YAMLS:
        p = Path(os.path.normpath(file.parent / rel))  # no resolve(): cache files are links
        if p.is_file():
            return c.read_yaml(p), p
    return {}, None


def _yaml_hooks(y: dict[str, Any], layer: int | None) -> tuple[str | None, str | None]:
    """circuit-tracer's feature_input_hook/feature_output_hook (`hook_resid_mid`,
    `ln2.hook_normalized`) at block `layer`."""
    if layer is None:
        return None, None
    h_in, h_out = y.get("feature_input_hook"), y.get("feature_output_hook")
    return (
        c.hook(layer, str(h_in)) if h_in else None,
        c.hook(layer, str(h_out)) if h_out else None,
    )


def _settings(sd: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    for key in ("config", "cfg"):
        v = sd.get(key)
        if isinstance(v, dict):
            return dict(v)
        if key in meta:
            try:
                loaded = json.loads(meta[key])
            except json.JSONDecodeError:
                continue
            if isinstance(loaded, dict):
                return loaded
    return {k: v for k, v in meta.items() if k != "format"}


def load_torch_dict(path: Path, dtype: str | None) -> SAE:
    file = path
    if file.suffix == ".safetensors":
        sd, meta = c.read_safetensors(file)
        sd = dict(sd)
    else:
        sd, meta = c.read_pt(file), {}
    conf = _settings(sd, meta)
    w_enc, b_enc = c.take(sd, "W_enc", file), c.take(sd, "b_enc", file)
    w_dec, b_dec = c.take(sd, "W_dec", file), c.take(sd, "b_dec", file)
    if w_enc.ndim != 2 or w_dec.ndim != 2:
        raise SaelabError(f"{file}: W_enc {list(w_enc.shape)} and W_dec must be matrices")
    d_sae = b_enc.shape[0] if b_enc.ndim == 1 else -1
    flipped = w_enc.shape[1] != d_sae and w_enc.shape[0] == d_sae  # [d_sae, d_in]
    if flipped:
        w_enc = w_enc.T
    d_in = w_enc.shape[0]
    d_out = w_dec.shape[1]
    said = f"W_enc {list(w_enc.shape)} and b_enc say d_in={d_in}, d_sae={d_sae}"
    c.expect_shape(file, "W_enc", w_enc, (d_in, d_sae), said)
    c.expect_shape(file, "W_dec", w_dec, (d_sae, d_out), said)
    c.expect_shape(file, "b_dec", b_dec, (d_out,), said + f", d_out={d_out}")
    state = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    thr = sd.get("threshold", sd.get("activation_function.threshold"))
    k_raw = conf.get("k", sd.get("k"))
    k = c.as_int(k_raw, "k", file) if k_raw is not None else None
    arch = str(conf.get("architecture") or conf.get("activation") or "").lower()
    arch = _ARCH.get(arch.replace("_transcoder", "").replace("_skip", ""), arch)
    if not arch:
        arch = "topk" if k is not None else "jumprelu" if thr is not None else "relu"
    if arch == "jumprelu":
        if not isinstance(thr, torch.Tensor):
            raise SaelabError(f"{file} has no tensor 'threshold', which a JumpReLU SAE needs")
        state["threshold"] = thr
    skip = isinstance(sd.get("W_skip"), torch.Tensor)
    if skip:
        state["W_skip"] = sd["W_skip"].T if flipped else sd["W_skip"]
    y, _ = _yaml_near(file)
    layer = c.layer_in(file.stem)
    yin, yout = _yaml_hooks(y, layer)
    hook_in = conf.get("hook_name") or conf.get("hook_point") or yin
    hook_out = conf.get("hook_name_out") or yout
    transcoder = d_out != d_in or skip or bool(hook_out and hook_out != hook_in)
    cfg = c.config(
        d_in,
        d_sae,
        arch,
        k=k if arch == "topk" else None,
        fmt="torch_dict",
        hook_name=str(hook_in) if hook_in else None,
        apply_b_dec_to_input=bool(conf.get("apply_b_dec_to_input", False)) and not transcoder,
        hook_name_out=str(hook_out) if transcoder and hook_out else None,
        model_name=conf.get("model_name") or y.get("model_name"),
        d_out=d_out if transcoder else None,
        skip_connection=skip,
    )
    return c.build(cfg, state, file, c.pick_dtype(w_enc.dtype, dtype, file))


def load_clt_layer(path: Path, dtype: str | None) -> SAE:
    file = path
    m = CLT_RE.match(file.name)
    if m:
        layer = int(m.group(1))
    else:  # renamed: the tensor names still carry the layer
        found = [re.fullmatch(r"W_enc_(\d+)", k) for k in c.safetensors_keys(file)]
        layers = [int(f.group(1)) for f in found if f]
        if len(layers) != 1:
            raise SaelabError(f"{file} does not hold exactly one CLT layer's W_enc_L")
        layer = layers[0]
    names = [f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}", f"threshold_{layer}"]
    t, _ = c.read_safetensors(file, names)
    w_enc = c.take(t, names[0], file)
    if w_enc.ndim != 2:
        raise SaelabError(f"{file}: {names[0]} has shape {list(w_enc.shape)}, expected 2-D")
    d_t, d_model = w_enc.shape
    said = f"{names[0]} [{d_t}, {d_model}] says d_transcoder={d_t}, d_model={d_model}"
    state = {"W_enc": w_enc.T, "b_enc": c.take(t, names[1], file)}
    c.expect_shape(file, names[1], state["b_enc"], (d_t,), said)
    state["b_dec"] = t[names[2]] if names[2] in t else torch.zeros(d_model, dtype=w_enc.dtype)
    c.expect_shape(file, names[2], state["b_dec"], (d_model,), said)
    y, _ = _yaml_near(file)
    act = str(y.get("activation") or "").lower()
    k = None
    if names[3] in t and act in ("", "jumprelu", "jump_relu"):
        arch = "jumprelu"
        state["threshold"] = t[names[3]]
    elif act == "topk":
        arch, k = "topk", c.as_int(y.get("k"), "k", "config.yaml")
    elif act in ("", "relu"):
        arch = "relu"
    else:
        raise SaelabError(f"config.yaml beside {file}: activation {act!r} is not supported")
    hook_in, hook_out = _yaml_hooks(y, layer)
    cfg = c.config(
        d_model,
        d_t,
        arch,
        k=k,
        fmt="clt_layer",
        hook_name=hook_in,
        hook_name_out=hook_out,
        model_name=y.get("model_name"),
        layer=layer,
        d_out=d_model,
        has_decoder=False,
    )
    return c.build(cfg, state, file, c.pick_dtype(w_enc.dtype, dtype, file))


def _is_clt(file: Path, probe: Probe) -> bool:
    if CLT_RE.match(file.name):
        return True
    keys = probe.safetensors_keys() if file.suffix == ".safetensors" else []
    return any(re.fullmatch(r"W_enc_\d+", k) for k in keys)


def _is_torch_dict(file: Path, probe: Probe) -> bool:
    if file.suffix == ".pt":
        sd = probe.pt()
        return "W_enc" in sd and "b_enc" in sd
    return file.suffix == ".safetensors" and "W_enc" in probe.safetensors_keys()


CLT_LAYER = register(
    FormatSpec(
        "clt_layer",
        ("",),
        YAMLS,
        load=load_clt_layer,
        rank=70,
        name_re=CLT_RE,
        sniff=_is_clt,
        sniff_rank=10,
    )
)
TORCH_DICT = register(
    FormatSpec(
        "torch_dict",
        ("",),
        YAMLS,
        load=load_torch_dict,
        rank=90,
        suffixes=(".pt", ".safetensors"),
        suffix_rank=1,
        sniff=_is_torch_dict,
        sniff_rank=40,
    )
)
