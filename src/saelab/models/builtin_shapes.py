"""Built-in table of well-known model shapes, so plans for these models work offline.

Kept apart from `saelab.models.shapes`: the table is data (one row per published config.json),
not shape logic; it builds `ModelShape`s from there.
"""

from __future__ import annotations

from saelab.models.shapes import GATED, ModelShape

# name: (family, layers, d_model, d_mlp, heads, kv_heads, head_dim, vocab, max_pos, tied),
# from each model's published config.json (Gemma 3 4B: its text_config).
_BUILTIN: dict[str, tuple[str, int, int, int, int, int, int, int, int, bool]] = {
    "meta-llama/Llama-3.1-8B": ("llama", 32, 4096, 14336, 32, 8, 128, 128256, 131072, False),
    "meta-llama/Llama-3.2-1B": ("llama", 16, 2048, 8192, 32, 8, 64, 128256, 131072, True),
    "google/gemma-2-2b": ("gemma2", 26, 2304, 9216, 8, 4, 256, 256000, 8192, True),
    "google/gemma-2-9b": ("gemma2", 42, 3584, 14336, 16, 8, 256, 256000, 8192, True),
    "google/gemma-3-270m": ("gemma3", 18, 640, 2048, 4, 1, 256, 262144, 32768, True),
    "google/gemma-3-1b-pt": ("gemma3", 26, 1152, 6912, 4, 1, 256, 262144, 32768, True),
    "google/gemma-3-4b-pt": ("gemma3", 34, 2560, 10240, 8, 4, 256, 262208, 131072, True),
    "Qwen/Qwen2.5-0.5B": ("qwen2", 24, 896, 4864, 14, 2, 64, 151936, 32768, True),
    "Qwen/Qwen2.5-7B": ("qwen2", 28, 3584, 18944, 28, 4, 128, 152064, 131072, False),
    "Qwen/Qwen3-0.6B": ("qwen3", 28, 1024, 3072, 16, 8, 128, 151936, 40960, True),
    "mistralai/Mistral-7B-v0.1": ("mistral", 32, 4096, 14336, 32, 8, 128, 32000, 32768, False),
    "mistralai/Mistral-7B-v0.3": ("mistral", 32, 4096, 14336, 32, 8, 128, 32768, 32768, False),
    "openai-community/gpt2": ("gpt2", 12, 768, 3072, 12, 12, 64, 50257, 1024, True),
    "HuggingFaceTB/SmolLM2-135M": ("llama", 30, 576, 1536, 9, 3, 64, 49152, 8192, True),
    "EleutherAI/pythia-70m": ("gpt_neox", 6, 512, 2048, 8, 8, 64, 50304, 2048, False),
}
# Same shapes under other names (instruction-tuned variants, short aliases).
_ALIASES: dict[str, str] = {
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "google/gemma-2-2b-it": "google/gemma-2-2b",
    "google/gemma-2-9b-it": "google/gemma-2-9b",
    "google/gemma-3-270m-it": "google/gemma-3-270m",
    "google/gemma-3-1b-it": "google/gemma-3-1b-pt",
    "google/gemma-3-4b-it": "google/gemma-3-4b-pt",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "gpt2": "openai-community/gpt2",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
}


def builtin_names() -> list[str]:
    """Every full name `builtin_shape` knows (for help texts and error messages)."""
    return sorted(set(_BUILTIN) | {a for a in _ALIASES if "/" in a})


def _lookup() -> dict[str, str]:
    """Lower-cased full names and after-slash parts -> full name (full names win)."""
    table: dict[str, str] = {}
    for full in builtin_names():
        table.setdefault(full.split("/")[-1].lower(), full)
    for full in builtin_names():
        table[full.lower()] = full
    return table


def builtin_shape(name: str) -> ModelShape | None:
    """Shipped shape of a well-known model so plans work offline; None when unknown.

    Matches case-insensitively on the full hub id or on the part after the slash. The shape
    keeps the name it was asked under, resolved to the full id (Instruct variants share their
    base model's shape; Mistral v0.3 differs from v0.1/v0.2 by its 32768-token vocabulary).
    """
    full = _lookup().get(name.strip().lower())
    if full is None:
        return None
    base = _ALIASES.get(full, full)
    fam, layers, d, f, h, kv, hd, vocab, pos, tied = _BUILTIN[base]
    return ModelShape(full, fam, layers, d, f, h, kv, hd, vocab, pos, tied, fam in GATED)
