"""Verdicts: does a stage fit the budget, and if not, what would make it fit.

A budget is what the user allows (`max_memory`, `max_gpu_memory`, `max_disk`) capped
by what the machine has (available RAM, free disk). A run that cannot fit is refused before
it starts, with the concrete options (smaller batch, smaller dtype, last-token positions,
fewer layers) that the same estimator says would fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from saelab.budget.estimate import Estimate, ExtractWorkload, estimate_extract, token_cap
from saelab.budget.measure import available_memory, disk_free
from saelab.units import format_bytes


@dataclass(frozen=True)
class Budget:
    """Limits in bytes; None means 'what the machine has'."""

    max_memory: int | None = None
    max_gpu_memory: int | None = None
    max_disk: int | None = None

    def resolve(self, disk_path: Path | str, gpu_total: int | None = None) -> Limits:
        ram = available_memory()
        disk = disk_free(disk_path)
        return Limits(
            memory=min(self.max_memory, ram) if self.max_memory else ram,
            memory_flag=self.max_memory is not None and self.max_memory <= ram,
            gpu=self.max_gpu_memory or gpu_total,
            disk=min(self.max_disk, disk) if self.max_disk else disk,
            disk_flag=self.max_disk is not None and self.max_disk <= disk,
        )


@dataclass(frozen=True)
class Limits:
    memory: int
    memory_flag: bool  # True: the limit is the user's `max_memory`, else free RAM
    gpu: int | None
    disk: int
    disk_flag: bool


@dataclass
class Verdict:
    fits: bool
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"fits": self.fits, "problems": self.problems, "suggestions": self.suggestions}


def judge(est: Estimate, limits: Limits) -> Verdict:
    problems: list[str] = []
    if est.ram > limits.memory:
        what = "`max_memory`" if limits.memory_flag else "available RAM"
        problems.append(
            f"needs {format_bytes(est.ram)} of RAM, {what} is {format_bytes(limits.memory)}"
        )
    if limits.gpu is not None and est.gpu > limits.gpu:
        problems.append(
            f"needs {format_bytes(est.gpu)} of GPU memory, the limit is {format_bytes(limits.gpu)}"
        )
    if est.disk > limits.disk:
        what = "`max_disk`" if limits.disk_flag else "free disk"
        problems.append(
            f"needs {format_bytes(est.disk)} of disk, {what} is {format_bytes(limits.disk)}"
        )
    return Verdict(not problems, problems)


def fits(est: Estimate, limits: Limits) -> bool:
    return judge(est, limits).fits


def auto_batch_size(
    w: ExtractWorkload, limits: Limits, estimate: Callable[[ExtractWorkload], Estimate]
) -> int:
    """Largest batch (in prompts) that fits memory, capped where throughput stops growing."""
    cap = max(1, token_cap(w.device) // max(w.tokens.max_len, 1))
    cap = min(cap, 256, max(w.tokens.n_prompts, 1))
    best = 1
    lo, hi = 1, cap
    while lo <= hi:
        mid = (lo + hi) // 2
        # the smallest shard a batch allows: shards are sized after the batch
        est = estimate(dataclasses.replace(w, batch_size=mid, shard_size=mid))
        gpu_ok = limits.gpu is None or est.gpu <= limits.gpu
        if est.ram <= limits.memory and gpu_ok:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def fit_shard_size(
    w: ExtractWorkload,
    limits: Limits,
    estimate: Callable[[ExtractWorkload], Estimate],
) -> int:
    """Shrink the shard (whole batches, at least one) until the stage fits memory."""
    size = w.shard_size
    while size > w.batch_size:
        est = estimate(dataclasses.replace(w, shard_size=size))
        if est.ram <= limits.memory:
            break
        size = max(w.batch_size, (size // 2) // w.batch_size * w.batch_size)
    return size


def suggest_extract(w: ExtractWorkload, limits: Limits) -> list[str]:
    """Options that would make an extract run fit, each checked with the estimator."""
    out: list[str] = []

    def ok(v: ExtractWorkload) -> bool:
        return fits(estimate_extract(v), limits)

    if w.batch_size > 1:
        for b in sorted({max(1, w.batch_size // 2), max(1, w.batch_size // 4), 1}, reverse=True):
            if b < w.batch_size and ok(dataclasses.replace(w, batch_size=b)):
                out.append(f"`batch_size` {b}")
                break
    if w.model_dtype == "float32":
        for dt in ("bfloat16", "int8"):
            if ok(dataclasses.replace(w, model_dtype=dt)):
                out.append(f"`dtype` {dt}")
                break
    if w.store_dtype == "float32" and ok(dataclasses.replace(w, store_dtype="float16")):
        out.append("`store_dtype` float16")
    if w.positions == "all":
        for pos in ("last", "mean"):
            if ok(dataclasses.replace(w, positions=pos)):
                out.append(f"`positions` {pos}")
                break
    if len(w.hooks) > 1:
        for keep in (len(w.hooks) // 2, len(w.hooks) // 4, 1):
            if keep >= 1 and ok(dataclasses.replace(w, hooks=w.hooks[:keep])):
                out.append(f"fewer hooks (e.g. {keep} of {len(w.hooks)})")
                break
    if w.tokens.n_prompts > 1:
        for frac in (2, 4, 10):
            n = max(1, w.tokens.n_prompts // frac)
            t = dataclasses.replace(
                w.tokens, n_prompts=n, n_tokens=int(w.tokens.n_tokens * n / w.tokens.n_prompts)
            )
            if ok(dataclasses.replace(w, tokens=t)):
                out.append(f"fewer prompts (`limit` {n})")
                break
    return out
