"""Loading a Hugging Face model straight into weight-only int8 on the CPU, tensor by tensor.

Loading in float32 and quantising afterwards holds the whole float32 model once (for a
bfloat16 checkpoint, twice its file size) before the int8 model exists: Llama 3.2 1B, 2.3 GB
on disk, peaked near 10 GB. Here the model is built with uninitialised weights (their pages
are never touched, so they cost no resident memory), every linear layer but the output head
is swapped for an empty `Int8Linear`, and the checkpoint is read one tensor at a time with
plain file reads (no memory map: a mapped file's touched pages count as resident until it
is closed): a linear weight is quantised straight into its layer, everything else becomes
float32 in place. The peak is the int8 model plus one tensor.

A checkpoint whose names do not cover the model's parameters (renamed keys, fused layouts)
falls back to the float32 load (`None` from `load_int8`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from saelab.models.int8 import Int8Linear

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder (those its index names, when sharded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a safetensors file, read into its own buffer, in file order."""
    header, start = read_header(path)
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    with open(path, "rb", buffering=0) as f:
        for name, meta in entries:
            dtype = _DTYPES.get(meta["dtype"])
            if dtype is None:
                raise ValueError(
                    f"{path.name}: tensor {name} has unsupported dtype {meta['dtype']}"
                )
            a, b = meta["data_offsets"]
            t = torch.empty(meta["shape"], dtype=dtype)
            view = memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else None
            if view is not None:
                f.seek(start + a)
                got = f.readinto(view)
                while got < b - a:
                    more = f.readinto(view[got:])
                    if not more:
                        raise ValueError(f"{path.name}: tensor {name} is truncated")
                    got += more
            yield name, t


def _swap_linears(model: torch.nn.Module) -> dict[str, Int8Linear]:
    """Replace every nn.Linear except the output head by an empty Int8Linear shell."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shells: dict[str, Int8Linear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                shell = Int8Linear(shape=(child.out_features, child.in_features))
                if child.bias is not None:
                    shell.bias = torch.zeros(child.out_features)
                setattr(module, child_name, shell)
                shells[f"{name}.{child_name}" if name else child_name] = shell
    return shells


def _key(name: str, known: dict[str, Any], prefix: str) -> str | None:
    """The model's name for a checkpoint key (base-model checkpoints lack the prefix)."""
    if name in known:
        return name
    alt = f"{prefix}.{name}" if prefix else name
    return alt if alt in known else None


def load_int8(folder: Path, config: Any, attn_implementation: str | None) -> Any | None:
    """The model of `folder` with int8 linears, never holding float32 weights of the whole
    model; None when the checkpoint's names do not cover the model (use the float path)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    files = checkpoint_files(folder)
    if not files:
        return None
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.tie_weights()  # a tied head then shares the embedding's Parameter, loaded once
    shells = _swap_linears(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    targets = {**params, **{f"{n}.weight": s for n, s in shells.items()}}
    prefix = getattr(model, "base_model_prefix", "")
    known = {**targets, **buffers}
    done: set[int] = set()
    for path in files:
        for name, t in iter_tensors(path):
            key = _key(name, known, prefix)
            if key is None:
                continue  # e.g. a stored causal-mask buffer the model rebuilds itself
            mod_name, _, leaf = key.rpartition(".")
            if mod_name in shells:
                shell = shells[mod_name]
                if leaf == "weight":
                    shell.load_weight(t)
                    done.add(id(shell))
                else:
                    shell.load_bias(t)
            elif key in params:
                p = params[key]
                if tuple(p.shape) != tuple(t.shape):
                    return None
                p.data = t if t.dtype == torch.float32 else t.float()
                done.add(id(p))
            else:
                buffers[key].data = t.to(buffers[key].dtype)
            del t
    expected = {id(p) for p in params.values()} | {id(s) for s in shells.values()}
    if expected - done:
        return None
    return model
