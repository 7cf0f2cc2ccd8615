"""What every format loader shares: careful file reading, shape checks, hook names, building.

Every reader turns a library's exception (a truncated zip, a bad safetensors header, a pickle
that wants a class) into one SaelabError line that names the file, because the user sees only
that line. `.pt` files are read with `torch.load(weights_only=True)` only: nothing is unpickled
blindly.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.errors import SaelabError
from saelab.sae.model import SAE, SAEConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_DAMAGED = "it is damaged or truncated: delete it and fetch it again"


def one_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, shortened: errors must stay one line."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- reading files ----------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaelabError(f"{path} is not valid JSON ({one_line(e)}); {_DAMAGED}") from e
    if not isinstance(data, dict):
        raise SaelabError(f"{path} holds a JSON {type(data).__name__}, not an object of settings")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # a dependency of huggingface_hub and transformers

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SaelabError(f"{path} is not valid YAML ({one_line(e)}); {_DAMAGED}") from e
    if not isinstance(data, dict):
        raise SaelabError(f"{path} does not hold a YAML mapping of settings")
    return data


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from the header alone (for detection; no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # SafetensorError, OSError: the library has no common base
        raise SaelabError(
            f"{path} is not a readable safetensors file ({one_line(e)}); {_DAMAGED}"
        ) from e


def read_safetensors(
    path: Path, names: Iterable[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata); `names` limits what is read, so a CLT layer never touches
    tensors it does not need."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            wanted = keys if names is None else [n for n in names if n in keys]
            tensors = {n: f.get_tensor(n) for n in wanted}
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise SaelabError(
            f"{path} is not a readable safetensors file ({one_line(e)}); {_DAMAGED}"
        ) from e
    return tensors, meta


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except Exception as e:  # BadZipFile, EOFError, ValueError, OSError
        raise SaelabError(f"{path} is not a readable .npz file ({one_line(e)}); {_DAMAGED}") from e


def read_pt(path: Path) -> dict[str, Any]:
    """A torch state dict, read with weights_only=True (memory-mapped when the file allows)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"a {found.group(1)} object" if found else "objects other than tensors"
        raise SaelabError(
            f"{path} holds {what}, which only full unpickling could rebuild; saelab reads .pt"
            " files with weights_only=True only: re-save it as a plain state dict or safetensors"
        ) from e
    except Exception as e:  # truncated zip, not a torch file
        raise SaelabError(f"{path} is not a readable torch file ({one_line(e)}); {_DAMAGED}") from e
    if not isinstance(obj, Mapping):
        raise SaelabError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


# -- checking -------------------------------------------------------------------------------------
def take(tensors: Mapping[str, Any], name: str, source: Path | str) -> torch.Tensor:
    """tensors[name] as a tensor, or a one-line error listing what the file has."""
    if name not in tensors:
        names = sorted(k for k, v in tensors.items() if isinstance(v, torch.Tensor))
        raise SaelabError(f"{source} has no tensor {name!r} (has {names})")
    t = tensors[name]
    if not isinstance(t, torch.Tensor):
        raise SaelabError(f"{source}: {name!r} is a {type(t).__name__}, not a tensor")
    return t


def expect_shape(
    source: Path | str, name: str, t: torch.Tensor, shape: tuple[int, ...], said: str
) -> None:
    """Shapes that disagree with the config (`said`: which config, which sizes) stop here."""
    if tuple(t.shape) != tuple(shape):
        raise SaelabError(
            f"{source}: {name} has shape {list(t.shape)}, but {said} (expected {list(shape)})"
        )


def as_int(value: Any, what: str, source: Path | str) -> int:
    try:
        return int(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SaelabError(f"{source}: {what} is {value!r}, not a whole number") from e


# -- hook names -----------------------------------------------------------------------------------
def hook(layer: int, site: str) -> str:
    """saelab's canonical (TransformerLens) name: `blocks.7.hook_resid_post`; a site with a dot
    (`attn.hook_z`, `ln2.hook_normalized`) is a TL name saelab keeps as it is."""
    return (
        f"blocks.{layer}.{site}"
        if "." in site or site.startswith("hook_")
        else (f"blocks.{layer}.hook_{site}")
    )


def layer_in(text: str, pattern: str = r"layer_?(\d+)") -> int | None:
    """The last layer number a path or name mentions (`.../layer_12/width_16k/...` -> 12)."""
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


# Hugging Face module paths (Gemma 2/3, Llama, Qwen, Mistral layouts) -> (site, io). Only sites
# whose TransformerLens meaning is exact are listed; the rest keep just their HF name.
_HF_SITES: dict[str, tuple[str, str]] = {
    ".output": ("resid_post", "output"),
    "": ("resid_post", "output"),
    ".input": ("resid_pre", "input"),
    ".post_feedforward_layernorm.output": ("mlp_out", "output"),
    ".self_attn.o_proj.input": ("attn.hook_z", "input"),
    ".pre_feedforward_layernorm.input": ("resid_mid", "input"),
    ".pre_feedforward_layernorm.output": ("hook_mlp_in", "output"),  # SAELens's name for it
}
_HF_RE = re.compile(
    r"^(?P<module>(?:.*\.)?layers\.(?P<layer>\d+)(?P<rest>(?:\.[A-Za-z_]\w*)*?))"
    r"(?P<io>\.(?:input|output))?$"
)


def hf_hook(hf: str) -> tuple[str | None, str, str]:
    """An HF hook point (`model.layers.17.post_feedforward_layernorm.output`) ->
    (canonical hook name or None, module path, "input"|"output")."""
    m = _HF_RE.match(hf.strip())
    if not m:
        return None, hf, "output"
    io = (m.group("io") or ".output")[1:]
    rest = m.group("rest") + (f".{io}" if m.group("rest") or m.group("io") else "")
    site = _HF_SITES.get(rest)
    if site is None or site[1] != io:
        return None, m.group("module"), io
    return hook(int(m.group("layer")), site[0]), m.group("module"), io


# -- building the SAE -----------------------------------------------------------------------------
def pick_dtype(stored: torch.dtype, dtype: str | None, source: Path | str) -> torch.dtype:
    """The dtype of the returned SAE: as stored (float16/bfloat16 kept) unless one is asked."""
    if dtype is None:
        return stored if stored in _DTYPE_NAMES else torch.float32
    if dtype not in DTYPES:
        raise SaelabError(
            f"dtype {dtype!r} for {source} is not one of {', '.join(DTYPES)}: pick one of those"
        )
    return DTYPES[dtype]


def build(
    cfg: SAEConfig,
    state: Mapping[str, torch.Tensor],
    source: Path | str,
    dtype: torch.dtype,
) -> SAE:
    """The SAE from canonical tensors (SAELens names and orientation), all in `dtype`."""
    cfg.dtype = _DTYPE_NAMES[dtype]
    for k, v in state.items():  # integers cast exactly enough; complex or bool are no weights
        if v.is_complex() or v.dtype == torch.bool:
            raise SaelabError(f"{source}: {k} holds {v.dtype} values, not real-valued weights")
    cast = {k: v.to(dtype) for k, v in state.items()}
    return SAE.from_state(cfg, cast, str(source))


def config(
    d_in: int,
    d_sae: int,
    architecture: str,
    *,
    fmt: str,
    hook_name: str | None,
    k: int | None = None,
    apply_b_dec_to_input: bool = False,
    **extra: Any,
) -> SAEConfig:
    """An SAEConfig with the metadata every loader sets (format, hook names, model)."""
    meta_keys = (
        "hook_name_out",
        "hf_hook_name",
        "hf_hook_io",
        "hf_hook_name_out",
        "hf_hook_io_out",
        "model_name",
        "trained_as",
        "layer",
    )
    meta: dict[str, Any] = {"format": fmt}
    if hook_name:
        meta["hook_name"] = hook_name
    for key in meta_keys:
        if extra.get(key) is not None:
            meta[key] = extra.pop(key)
        else:
            extra.pop(key, None)
    meta.update(extra.pop("metadata", {}) or {})
    return SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=architecture,
        k=k,
        apply_b_dec_to_input=apply_b_dec_to_input,
        metadata=meta,
        **extra,
    )
