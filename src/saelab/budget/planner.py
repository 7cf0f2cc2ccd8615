"""Verdicts: does a stage fit the budget, and if not, what would make it fit.

A budget is what the user allows (`--max-memory`, `--max-gpu-memory`, `--max-disk`) capped
by what the machine has (available RAM, free disk), or by what a target machine's profile
says it has (`budget.targets`: plan the Colab T4 run from a laptop). A run that cannot fit
is refused before it starts, with the cheapest combination of changes (smaller batch, half
precision, int8 or 4-bit, layer groups, last-token positions, fewer layers) that the same
estimator says would fit (`budget.fit`), or a plain statement that nothing fits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from saelab.budget.estimate import Estimate, ExtractWorkload, estimate_extract, token_cap
from saelab.budget.fit import cheapest_fits
from saelab.budget.measure import available_memory, disk_free
from saelab.budget.targets import Target
from saelab.units import format_bytes


@dataclass(frozen=True)
class Budget:
    """Limits in bytes; None means 'what the machine has'."""

    max_memory: int | None = None
    max_gpu_memory: int | None = None
    max_disk: int | None = None

    def resolve(
        self, disk_path: Path | str, gpu_total: int | None = None, target: Target | None = None
    ) -> Limits:
        """The limits of this machine, or of `target` (its profile, never this machine's RAM
        or GPU; its disk when the profile names one, else this machine's), capped by the
        user's own limits."""
        ram = target.memory if target is not None else available_memory()
        disk = target.disk if target is not None and target.disk else disk_free(disk_path)
        gpu = target.gpu_memory if target is not None else gpu_total
        if self.max_gpu_memory is not None:
            gpu = min(self.max_gpu_memory, gpu) if gpu else self.max_gpu_memory
        return Limits(
            memory=min(self.max_memory, ram) if self.max_memory else ram,
            memory_flag=self.max_memory is not None and self.max_memory <= ram,
            gpu=gpu,
            disk=min(self.max_disk, disk) if self.max_disk else disk,
            disk_flag=self.max_disk is not None and self.max_disk <= disk,
            target=target,
        )


@dataclass(frozen=True)
class Limits:
    memory: int
    memory_flag: bool  # True: the limit is the user's --max-memory, else free RAM
    gpu: int | None
    disk: int
    disk_flag: bool
    target: Target | None = None  # planning for this machine profile instead of this one

    def ram_label(self) -> str:
        if self.memory_flag:
            return "--max-memory"
        return f"{self.target.name}'s RAM (est.)" if self.target else "available RAM"


@dataclass
class Verdict:
    fits: bool
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    tips: list[str] = field(default_factory=list)  # for a run that fits: a faster setting

    def to_dict(self) -> dict[str, object]:
        return {
            "fits": self.fits,
            "problems": self.problems,
            "suggestions": self.suggestions,
            "tips": self.tips,
        }


def judge(est: Estimate, limits: Limits) -> Verdict:
    problems: list[str] = []
    if est.ram > limits.memory:
        problems.append(
            f"needs {format_bytes(est.ram)} of RAM, {limits.ram_label()} is"
            f" {format_bytes(limits.memory)}"
        )
    if limits.gpu is not None and est.gpu > limits.gpu:
        problems.append(
            f"needs {format_bytes(est.gpu)} of GPU memory, the limit is {format_bytes(limits.gpu)}"
        )
    if est.disk > limits.disk:
        what = "--max-disk" if limits.disk_flag else "free disk"
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


NOTHING_FITS = "no setting fits"


def platform_dtypes(limits: Limits, device: str) -> list[str]:
    """Model dtypes the machine planned for can run, least lossy first."""
    t = limits.target
    if device == "cuda":
        half = t.half if t is not None else _local_half()
        return [half, "int8", "nf4"]
    return ["bfloat16", "int8"]


def _local_half() -> str:
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "float16"
    return "bfloat16"


def suggest_extract(w: ExtractWorkload, limits: Limits) -> list[str]:
    """The cheapest changes that would make an extract run fit (see `budget.fit`), each
    checked with the estimator; or one line saying nothing fits, and the minimum."""

    def ok(e: Estimate) -> bool:
        return fits(e, limits)

    found, minimum = cheapest_fits(w, ok, estimate_extract, platform_dtypes(limits, w.device))
    if minimum is None:
        return [f.describe() for f in found]
    e = minimum.estimate
    need = [f"{format_bytes(e.ram)} of RAM"]
    if e.gpu:
        need.append(f"{format_bytes(e.gpu)} of GPU memory")
    need.append(f"{format_bytes(e.disk)} of disk")
    have = [f"{limits.ram_label()} {format_bytes(limits.memory)}"]
    if limits.gpu is not None:
        have.append(f"GPU {format_bytes(limits.gpu)}")
    have.append(f"disk {format_bytes(limits.disk)}")
    return [
        f"{NOTHING_FITS}: even the least this run can take ("
        + ", ".join(minimum.changes or ("as given",))
        + f") needs {', '.join(need)}, and the limits are {', '.join(have)}; plan for a"
        " bigger machine (`target`) or raise the limits"
    ]


def speed_tips(w: ExtractWorkload, limits: Limits) -> list[str]:
    """For a float32 run on a GPU: half precision, when it fits, and how much faster the
    target's profile says it runs (a GPU's float32 matmuls are several times slower)."""
    if w.device != "cuda" or w.model_dtype != "float32":
        return []
    half = platform_dtypes(limits, "cuda")[0]
    est = estimate_extract(dataclasses.replace(w, model_dtype=half))
    if not fits(est, limits):
        return []
    t = limits.target
    speed = f" runs ~{t.flops(half) / t.flops('float32'):.0f}x faster on {t.name} and" if t else ""
    return [f"`dtype` {half}{speed} needs {format_bytes(est.gpu)} of GPU memory (est.)"]
