"""What a model spec costs, found without loading (or converting) its weights.

The planner needs the shape, the dtype the weights are stored in, and whether a GGUF file
still has to be converted; all of it comes from config.json, GGUF and safetensors headers,
or saelab's table of well-known models when a hub model is not cached (offline planning).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from saelab.errors import SaelabError
from saelab.models.adapters import Adapter, adapter_for
from saelab.models.hooks import HookPoint
from saelab.models.loaded import LoadedModel
from saelab.models.loading import ModelSource, gguf_cache_path, load_model, resolve_spec
from saelab.models.module_shape import ModuleShape
from saelab.models.shapes import ModelShape, builtin_shape, shape_from_config, shape_from_gguf

_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class ModelInfo:
    source: ModelSource
    shape: ModelShape  # or a ModuleShape (same interface) for a custom module
    file_dtype: str  # dtype of the weights saelab will load from
    folder: Path | None  # local HF-style folder if one exists already
    gguf_pending_bytes: int  # > 0 when a GGUF file must still be converted
    config: dict | None = None  # the raw config.json when there is one
    loaded: LoadedModel | None = None  # a custom module is built to be described: kept

    def adapter_config(self) -> dict:
        """What `adapter_for` needs: the real config, else the family from the shape."""
        return self.config or {"model_type": self.shape.family}

    def adapter(self) -> Adapter:
        """The model's adapter: a custom module's own, else the one of its family."""
        return (
            self.loaded.adapter if self.loaded is not None else adapter_for(self.adapter_config())
        )

    def hook_for_module_path(self, path: str) -> HookPoint | None:
        """Module paths typed by a user, resolved without loading an HF model's weights."""
        if self.loaded is not None:
            return self.loaded.hook_for_module_path(path)
        return self.adapter().hook_for_module_path(path)


def safetensors_dtype(folder: Path) -> str | None:
    """The dtype of the first floating tensor in the folder's safetensors files."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                dt = _ST_DTYPES.get(st.get_slice(key).get_dtype())
                if dt:
                    return dt
    return None


def _config_dtype(cfg: dict) -> str | None:
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    return dt if dt in ("float32", "float16", "bfloat16") else None


def _cached_hub_folder(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]
            )
        )
    except Exception:
        return None


def describe_model(spec: str) -> ModelInfo:
    source = resolve_spec(spec)
    if source.kind == "module":  # built by its factory (cheap for a model one trains oneself)
        lm = load_model(spec)
        return ModelInfo(source, ModuleShape.of(lm), lm.dtype, None, 0, None, lm)  # type: ignore[arg-type]
    if source.kind == "gguf":
        gguf = Path(source.location)
        cached = gguf_cache_path(gguf)
        if (cached / "saelab-cache.json").is_file():
            cfg = json.loads((cached / "config.json").read_text())
            shape = shape_from_config(cfg, source.name)
            return ModelInfo(source, shape, "float32", cached, 0, cfg)
        shape = shape_from_gguf(gguf, name=source.name)
        return ModelInfo(source, shape, "float32", None, os.path.getsize(gguf))
    if source.kind == "folder":
        folder = Path(source.location)
        cfg = json.loads((folder / "config.json").read_text())
        dtype = safetensors_dtype(folder) or _config_dtype(cfg) or "float32"
        return ModelInfo(source, shape_from_config(cfg, source.name), dtype, folder, 0, cfg)
    folder = _cached_hub_folder(source.location)
    if folder is not None and (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        dtype = safetensors_dtype(folder) or _config_dtype(cfg) or "float32"
        return ModelInfo(source, shape_from_config(cfg, source.name), dtype, folder, 0, cfg)
    shape = builtin_shape(source.location)
    if shape is None:
        raise SaelabError(
            f"model {source.location!r} is neither a file, a folder, a cached Hugging Face model"
            " nor one of saelab's known shapes: pass a local folder or .gguf file, or download"
            f" it first (`hf download {source.location}`)"
        )
    return ModelInfo(source, shape, "bfloat16", None, 0)
