"""Target machines: plan for a GPU (or a bigger CPU box) you do not have yet.

A plan normally checks against this machine: its free RAM, its GPU, its disk. With a target
it checks against a profile instead, and never needs that device to be present:

    t4, colab-free, l4, a100-40g, a100-80g, h100, cpu-16g, cpu-8g      built-in profiles
    gpu:24GB   cpu:32GB   gpu:24GB,ram:64GB,disk:200GB                 free-form

Every number in a profile is an estimate, stated as one: memory is what one process can use
(the card's memory less the CUDA context and allocator reserve; a machine's RAM less the OS),
throughput is a sustained transformer forward, well below the datasheet peak. They size a
plan, they do not promise it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from saelab.errors import SaelabError
from saelab.units import format_bytes, parse_size

GB = 10**9
GiB = 1 << 30


@dataclass(frozen=True)
class Target:
    """A machine to plan for."""

    name: str
    device: str  # "cuda" or "cpu"
    memory: int  # host RAM one process can use (bytes)
    gpu_memory: int | None  # GPU memory one process can use (bytes); None on a CPU machine
    disk: int | None  # free disk (bytes); None: unknown, the plan uses this machine's
    flops_half: float  # sustained FLOP/s of a float16/bfloat16 forward
    flops_float32: float  # sustained FLOP/s of a float32 forward
    bf16: bool = True  # runs bfloat16 natively (T4 does not: float16 there)
    description: str = ""

    @property
    def quantized(self) -> tuple[str, ...]:
        """Weight formats the platform has: int8 everywhere (saelab's own on CPU,
        bitsandbytes on CUDA), 4-bit nf4 on CUDA only."""
        return ("int8", "nf4") if self.device == "cuda" else ("int8",)

    @property
    def half(self) -> str:
        """The 16-bit dtype to run in: bfloat16 where native, else float16."""
        return "bfloat16" if self.bf16 else "float16"

    def flops(self, dtype: str) -> float:
        """Sustained FLOP/s for a model run in `dtype` (quantised weights are dequantised
        per layer: slower than plain half precision)."""
        if dtype == "float32":
            return self.flops_float32
        base = self.flops_half if self.device == "cuda" else self.flops_float32
        if dtype == "bfloat16" and not (self.bf16 or self.device == "cpu"):
            return self.flops_float32 / 4  # emulated
        if self.device == "cpu" and dtype in ("bfloat16", "float16"):
            return self.flops_float32 / 2  # no fast half-precision matmul on most CPUs
        if dtype == "int8":
            return base * (0.5 if self.device == "cuda" else 0.8)
        if dtype == "nf4":
            return base * 0.6
        return base

    def summary(self) -> str:
        gpu = f"{format_bytes(self.gpu_memory)} GPU, " if self.gpu_memory else ""
        disk = f", {format_bytes(self.disk)} disk" if self.disk else ""
        speed = self.flops_half if self.device == "cuda" else self.flops_float32
        return (
            f"{self.name}: {gpu}{format_bytes(self.memory)} RAM{disk}, ~{speed / 1e12:.2g}"
            f" TFLOP/s sustained (estimates)"
        )


def _gpu(name: str, card_gb: float, host_gb: float, half_t: float, f32_t: float, **kw) -> Target:
    """A GPU profile: usable memory is the card's less ~1 GB of context and reserve."""
    return Target(
        name,
        "cuda",
        memory=int((host_gb - 1.5) * GB),
        gpu_memory=int((card_gb - 1.0) * GB),
        disk=kw.pop("disk", None),
        flops_half=half_t * 1e12,
        flops_float32=f32_t * 1e12,
        **kw,
    )


def _cpu(name: str, ram_gb: float, gflops: float, desc: str) -> Target:
    return Target(
        name,
        "cpu",
        memory=int(ram_gb * 0.8 * GB),  # the OS, a browser and the shell keep ~20%
        gpu_memory=None,
        disk=None,
        flops_half=gflops * 0.5e9,
        flops_float32=gflops * 1e9,
        description=desc,
    )


#: Built-in profiles. Sustained throughput is ~30-40% of the datasheet's dense peak for half
#: precision on GPUs (float32 matmuls without TF32, PyTorch's default); host RAM is a typical
#: cloud instance for the card.
PROFILES: dict[str, Target] = {
    "t4": _gpu("t4", 16, 16, 20, 4, bf16=False, description="NVIDIA T4 16 GB, 16 GB host"),
    "colab-free": _gpu(
        "colab-free",
        16,
        12.7,
        20,
        4,
        bf16=False,
        disk=70 * GB,
        description="Google Colab free tier: T4 16 GB, 12.7 GB RAM, ~70 GB free disk",
    ),
    "l4": _gpu("l4", 24, 32, 40, 10, description="NVIDIA L4 24 GB, 32 GB host"),
    "a100-40g": _gpu("a100-40g", 40, 85, 110, 12, description="NVIDIA A100 40 GB, 85 GB host"),
    "a100-80g": _gpu("a100-80g", 80, 170, 120, 12, description="NVIDIA A100 80 GB, 170 GB host"),
    "h100": _gpu("h100", 80, 200, 330, 30, description="NVIDIA H100 80 GB, 200 GB host"),
    "cpu-16g": _cpu("cpu-16g", 16, 150, "a 16 GB laptop or desktop, 8 cores"),
    "cpu-8g": _cpu("cpu-8g", 8, 60, "an 8 GB laptop, 4 cores"),
}
_FREE = re.compile(r"^(gpu|cpu):([^,]+)((?:,\s*(?:ram|disk)[:=][^,]+)*)$", re.IGNORECASE)


def target_names() -> list[str]:
    return [*PROFILES, "gpu:SIZE", "cpu:SIZE"]


def parse_target(spec: str) -> Target:
    """A built-in profile name, or `gpu:24GB` / `cpu:32GB` with optional `,ram:` / `,disk:`.

    A free-form GPU assumes host RAM of twice its memory (at least 16 GB) and the throughput
    of a mid-range card (L4 class); a free-form CPU the throughput of cpu-16g.
    """
    key = spec.strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    m = _FREE.match(key)
    if not m:
        raise SaelabError(
            f"machine profile {spec!r} is not known: use one of {', '.join(PROFILES)}, or"
            " gpu:SIZE / cpu:SIZE such as gpu:24GB or cpu:32GB (optionally ,ram:64GB,disk:200GB)"
        )
    kind, size = m.group(1), parse_size(m.group(2).strip(), "machine profile size")
    extra = dict(
        (k.strip(), parse_size(v.strip(), f"machine profile {k.strip()}"))
        for k, v in (re.split(r"[:=]", part, maxsplit=1) for part in m.group(3).split(",")[1:])
    )
    assert size is not None
    if kind == "gpu":
        host = extra.get("ram") or max(2 * size, 16 * GB)
        t = replace(
            PROFILES["l4"],
            name=key,
            memory=int(host - 1.5 * GB),
            gpu_memory=int(size - 1.0 * GB),
            description=f"a GPU with {format_bytes(size)}, host RAM {format_bytes(host)}"
            + ("" if "ram" in extra else " (assumed: twice the GPU's)"),
        )
    else:
        t = replace(PROFILES["cpu-16g"], name=key, memory=int(size * 0.8), description="")
    if extra.get("disk"):
        t = replace(t, disk=extra["disk"])
    if (t.gpu_memory is not None and t.gpu_memory <= 0) or t.memory <= 0:
        raise SaelabError(f"machine profile {spec!r}: the memory is too small to run anything")
    return t


def plan_device(device: str, target: Target | None) -> str:
    """The device a plan is for, without needing it to be present: the target's for `auto`,
    what was asked otherwise (a plan for `cuda` on a CPU laptop is fine; running it is not)."""
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise SaelabError(f"`device` {device!r} is not one of auto, cpu, cuda, mps")
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto":
        if target is not None:
            return target.device
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if target is not None and device == "cpu":
        return "cpu"
    return device


def gpu_total_here() -> int | None:
    """This machine's GPU memory, when it has a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)
