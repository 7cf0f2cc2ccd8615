"""EleutherAI sparsify: `<hookpoint>/cfg.json` + `<hookpoint>/sae.safetensors`, TopK SAEs.

    f = TopK_k(relu(encoder(x - b_dec)))      (a transcoder, `transcode: true`, skips - b_dec)
    x_hat = f @ W_dec + b_dec (+ x @ W_skip.T with a skip connection)

Tensors: encoder.weight [num_latents, d_in], encoder.bias, W_dec [num_latents, d_in], b_dec,
optional W_skip [d_in, d_in] (nn.Linear orientation). The folder name is the hookpoint, a module
path relative to the model's base (`layers.5`, `layers.5.mlp`); it is kept as hf_hook_name and
mapped to the canonical site. The repository's top-level config.json names the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, register
from saelab.sae.model import SAE

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
_HOOKPOINT = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attention|attn))?$")
_SITES = {
    None: "resid_post",
    "mlp": "mlp_out",
    "self_attn": "attn_out",
    "attention": "attn_out",
    "attn": "attn_out",
}


def _site(hookpoint: str, transcode: bool) -> tuple[str | None, str | None]:
    """(hook_name, hook_name_out) for a sparsify hookpoint."""
    m = _HOOKPOINT.match(hookpoint)
    if not m:
        return None, None
    layer, part = int(m.group(1)), m.group(2)
    if transcode:
        # reads the module's input, writes its output: only the output has a canonical name
        out = c.hook(layer, _SITES[part]) if part else None
        return None, out
    return c.hook(layer, _SITES[part]), None


def load_sparsify(path: Path, dtype: str | None) -> SAE:
    folder = path if path.is_dir() else path.parent
    cfg_file, file = folder / CFG, folder / WEIGHTS
    raw = c.read_json(cfg_file)
    d_in = c.as_int(raw.get("d_in"), "d_in", cfg_file)
    n = c.as_int(raw.get("num_latents") or 0, "num_latents", cfg_file) or d_in * c.as_int(
        raw.get("expansion_factor"), "expansion_factor", cfg_file
    )
    k = c.as_int(raw.get("k"), "k", cfg_file)
    if raw.get("signed"):
        raise SaelabError(f"{cfg_file}: signed sparsify SAEs are not supported (signed: true)")
    activation = str(raw.get("activation", "topk"))
    if activation != "topk":
        raise SaelabError(f"{cfg_file}: activation {activation!r} is not supported (only topk)")
    transcode = bool(raw.get("transcode", False))
    tensors, _ = c.read_safetensors(file)
    said = f"{cfg_file} says d_in={d_in}, num_latents={n}"
    enc = c.take(tensors, "encoder.weight", file)
    c.expect_shape(file, "encoder.weight", enc, (n, d_in), said)
    state = {"W_enc": enc.T, "b_enc": c.take(tensors, "encoder.bias", file)}
    c.expect_shape(file, "encoder.bias", state["b_enc"], (n,), said)
    state["b_dec"] = c.take(tensors, "b_dec", file)
    c.expect_shape(file, "b_dec", state["b_dec"], (d_in,), said)
    state["W_dec"] = c.take(tensors, "W_dec", file)
    c.expect_shape(file, "W_dec", state["W_dec"], (n, d_in), said)
    skip = "W_skip" in tensors
    if skip:
        c.expect_shape(file, "W_skip", tensors["W_skip"], (d_in, d_in), said)
        state["W_skip"] = tensors["W_skip"].T
    hookpoint = folder.name
    hook_in, hook_out = _site(hookpoint, transcode)
    top = folder.parent / "config.json"
    model = None
    if top.is_file():
        model = c.read_json(top).get("model")
    transcoder = transcode or skip
    cfg = c.config(
        d_in,
        n,
        "topk",
        k=k,
        fmt="sparsify",
        hook_name=hook_in,
        apply_b_dec_to_input=not transcode,
        hf_hook_name=hookpoint,
        hf_hook_io="input" if transcode else "output",
        hook_name_out=hook_out,
        hf_hook_name_out=hookpoint if transcode else None,
        hf_hook_io_out="output" if transcode else None,
        model_name=str(model) if model else None,
        d_out=d_in if transcoder else None,
        skip_connection=skip,
    )
    return c.build(cfg, state, file, c.pick_dtype(enc.dtype, dtype, file))


SPARSIFY = register(
    FormatSpec(
        "sparsify",
        (CFG, WEIGHTS),
        ("../config.json",),
        load=load_sparsify,
        rank=20,
        hub_files=(CFG, WEIGHTS),
        folder_hint=re.compile(r"(?:^|/)(?:[\w.]*\.)?(?:layers|h)\.\d+(?:\.\w+)?$"),
        hint_rank=5,
    )
)
