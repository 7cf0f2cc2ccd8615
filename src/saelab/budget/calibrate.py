"""Throughput measured on this machine: a matmul probe, or a few real batches.

Speed on small shared machines swings by 2x within seconds, so the plan times the real
workload (the model, the hooks, typical batch lengths) rather than trusting a formula; the
FLOP probe is the fallback when loading the model is not wanted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saelab.models.capture import HookCapture, length_sorted_batches, make_batch
from saelab.models.hooks import HookPoint
from saelab.models.loading import LoadedModel


@dataclass(frozen=True)
class Calibration:
    tokens_per_s: float
    batches: int
    seconds: float
    step_seconds: float | None = None  # one generation step of a typical batch


def machine_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.15) -> float:
    """Sustained matmul FLOP/s of this machine at transformer-like shapes, halved.

    A transformer forward reaches about half of a bare matmul's speed (attention, norms,
    activations, memory traffic), so the probe's result is halved.
    """
    a = torch.randn(1024, 576, dtype=dtype)
    b = torch.randn(576, 1536, dtype=dtype)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    dt = time.perf_counter() - t0
    return 0.5 * n * 2 * 1024 * 576 * 1536 / dt


def calibrate_capture(
    lm: LoadedModel,
    hooks: Sequence[HookPoint],
    token_lists: Sequence[Sequence[int]],
    batch_size: int,
    padding_side: str = "right",
    max_batches: int = 2,
) -> Calibration:
    """Tokens/s of the real capture on batches of typical length (one warm-up batch first)."""
    batches = length_sorted_batches([len(t) for t in token_lists], batch_size)
    mid = len(batches) // 2
    chosen = batches[mid : mid + max_batches] or batches[:1]
    total, elapsed = 0, 0.0
    with HookCapture(lm.model, lm.adapter, hooks) as cap:
        warm = make_batch([token_lists[i] for i in chosen[0]], lm.pad_id, padding_side, lm.device)
        cap.run(warm)
        for idx in chosen:
            batch = make_batch([token_lists[i] for i in idx], lm.pad_id, padding_side, lm.device)
            t0 = time.perf_counter()
            cap.run(batch)
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            total += sum(batch.lengths)
    return Calibration(total / max(elapsed, 1e-9), len(chosen), elapsed)


def calibrate_generation(
    lm: LoadedModel,
    token_lists: Sequence[Sequence[int]],
    batch_size: int,
    steps: int = 4,
) -> float:
    """Seconds per generation step of one typical batch (after a warm-up step)."""
    batches = length_sorted_batches([len(t) for t in token_lists], batch_size)
    idx = batches[len(batches) // 2]
    b = make_batch([token_lists[i] for i in idx], lm.pad_id, "left", lm.device)
    kw = {"do_sample": False, "pad_token_id": lm.pad_id, "temperature": None, "top_p": None}
    kw["top_k"] = None
    with torch.no_grad():
        lm.model.generate(
            input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=1, **kw
        )
        t0 = time.perf_counter()
        lm.model.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            **kw,
        )
        elapsed = time.perf_counter() - t0
    return elapsed / steps
