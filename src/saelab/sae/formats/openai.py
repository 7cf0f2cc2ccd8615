"""OpenAI's GPT-2 small SAEs (openai/sparse_autoencoder): one `{layer}.pt` state dict per layer
under `{location}_v5_{32k|128k}/autoencoders/`.

    pre_bias [d], encoder.weight [n, d] (no bias), latent_bias [n], decoder.weight [d, n],
    activation "TopK" with activation_state_dict {k, postact_fn: "ReLU"} (v5), or "ReLU" (v1/v4)

    TopK SAEs layer-normalise each token first: x' = (x - mean) / (std + 1e-5), then
    f = TopK_k(relu(encoder(x' - pre_bias) + latent_bias)), x_hat = (f W_dec^T + pre_bias) * std
    + mean. In saelab that is normalize_activations="layer_norm" with b_dec = pre_bias applied to
    the input. Location: resid_post_mlp -> resid_post, resid_post_attn -> resid_mid,
    resid_delta_attn -> attn_out, resid_delta_mlp -> mlp_out; the layer is the file's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import SAE

KEYS = ("pre_bias", "latent_bias", "encoder.weight", "decoder.weight")
_LOCATIONS = {
    "resid_post_mlp": "resid_post",
    "resid_post_attn": "resid_mid",
    "resid_delta_attn": "attn_out",
    "resid_delta_mlp": "mlp_out",
    "mlp_post_act": "mlp.hook_post",
}
_LOC_RE = re.compile("|".join(_LOCATIONS))


def load_openai_v5(path: Path, dtype: str | None) -> SAE:
    file = path
    sd = c.read_pt(file)
    t = {name: c.take(sd, name, file) for name in KEYS}
    enc = t["encoder.weight"]
    if enc.ndim != 2:
        raise SaelabError(f"{file}: encoder.weight has shape {list(enc.shape)}, expected [n, d]")
    n, d = enc.shape
    said = f"encoder.weight [{n}, {d}] says d={d}, n_latents={n}"
    c.expect_shape(file, "pre_bias", t["pre_bias"], (d,), said)
    c.expect_shape(file, "latent_bias", t["latent_bias"], (n,), said)
    c.expect_shape(file, "decoder.weight", t["decoder.weight"], (d, n), said)
    activation = str(sd.get("activation", "ReLU"))
    k = None
    if activation == "TopK":
        act_sd = sd.get("activation_state_dict") or {}
        post = str(act_sd.get("postact_fn", "ReLU"))
        if post != "ReLU":
            raise SaelabError(f"{file}: TopK with postact_fn {post!r} is not supported (ReLU)")
        arch, k, norm = "topk", c.as_int(act_sd.get("k"), "activation_state_dict k", file), True
    elif activation == "ReLU":
        arch, norm = "relu", False
    else:
        raise SaelabError(f"{file}: activation {activation!r} is not one of TopK, ReLU")
    state = {
        "W_enc": enc.T,
        "b_enc": t["latent_bias"],
        "W_dec": t["decoder.weight"].T,
        "b_dec": t["pre_bias"],
    }
    m = _LOC_RE.search(file.as_posix())
    layer = int(file.stem) if file.stem.isdigit() else None
    hook = c.hook(layer, _LOCATIONS[m.group(0)]) if m and layer is not None else None
    cfg = c.config(
        d,
        n,
        arch,
        k=k,
        fmt="openai_v5",
        hook_name=hook,
        apply_b_dec_to_input=True,
        model_name="openai-community/gpt2" if m else None,
        layer=layer,
        normalize_activations="layer_norm" if norm else "none",
    )
    return c.build(cfg, state, file, c.pick_dtype(enc.dtype, dtype, file))


OPENAI_V5 = register(
    FormatSpec(
        "openai_v5",
        ("",),
        load=load_openai_v5,
        rank=80,
        suffixes=(".pt",),
        path_hint=re.compile(r"resid_(?:post|delta)_(?:mlp|attn)|mlp_post_act"),
        suffix_rank=3,
        sniff=lambda file, probe: file.suffix == ".pt" and all(k in probe.pt() for k in KEYS),
        sniff_rank=30,
    )
)
