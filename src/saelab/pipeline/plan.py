"""`saelab plan`: memory, disk and time of each stage before it runs, and whether it fits.

Sizes come from shapes and headers; time from a short calibration on this machine (two
batches of typical length through the real model and hooks) or, with `--no-calibrate`,
from a FLOP estimate and a matmul probe, which needs no weights at all. The plan goes into
the run's manifest, where `extract` later writes what it measured beside it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

from saelab.budget.calibrate import (
    Calibration,
    calibrate_capture,
    calibrate_generation,
    machine_flops,
)
from saelab.budget.estimate import Estimate, estimate_extract
from saelab.budget.planner import (
    NOTHING_FITS,
    Verdict,
    judge,
    speed_tips,
    suggest_extract,
)
from saelab.models.describe import describe_model
from saelab.models.loading import LoadedModel, load_model
from saelab.pipeline.extract_job import (
    ExtractJob,
    ExtractOptions,
    prepare_extract,
    resolve_sizes,
    tokenize_for,
)
from saelab.run import config_hash
from saelab.units import format_bytes, format_seconds

_LOAD_GUESS = 3.0  # seconds to load a cached model when the plan does not load it


@dataclass
class PlanResult:
    job: ExtractJob
    estimate: Estimate
    verdict: Verdict
    calibration: Calibration | None

    def to_dict(self) -> dict[str, Any]:
        lim = self.job.limits
        return {
            "config_hash": config_hash(self.job.config()),
            "estimate": self.estimate.to_dict(),
            "verdict": self.verdict.to_dict(),
            "limits": None
            if lim is None
            else {"memory": lim.memory, "gpu": lim.gpu, "disk": lim.disk},
            "batch_size": self.job.batch_size,
            "shard_size": self.job.shard_size,
            "tokens_exact": self.job.token_stats().exact,
            "calibration": None
            if self.calibration is None
            else {
                "tokens_per_s": self.calibration.tokens_per_s,
                "batches": self.calibration.batches,
                "seconds": self.calibration.seconds,
                "step_seconds": self.calibration.step_seconds,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def load_tokenizer(job: ExtractJob) -> Any | None:
    """The tokenizer, when it is cheap to get (a local or cached folder, a custom module's)."""
    if job.info.loaded is not None:
        return job.info.loaded.tokenizer
    if job.info.folder is None:
        return None
    from transformers import AutoTokenizer

    from saelab.models.loading import _quiet_transformers

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(str(job.info.folder))


def estimate_job(
    job: ExtractJob,
    calibration: Calibration | None = None,
    load_seconds: float | None = None,
) -> PlanResult:
    w = job.workload()
    if calibration is not None:
        est = estimate_extract(
            w,
            tokens_per_s=calibration.tokens_per_s,
            load_seconds=load_seconds,
            step_seconds=calibration.step_seconds,
        )
    elif job.target is not None:
        est = estimate_extract(w, flops_per_s=job.target.flops(w.model_dtype))
        est.notes = [n for n in est.notes if "FLOP estimate" not in n]
        est.notes.append(f"time from {job.target.name}'s estimated throughput, not measured")
    else:
        est = estimate_extract(w, flops_per_s=machine_flops(), load_seconds=load_seconds)
    if job.device == "cuda" and job.limits is not None and job.limits.gpu is None:
        est.notes.append(
            "no GPU here: GPU memory is not checked; pass --target (e.g. t4) or --max-gpu-memory"
        )
    assert job.limits is not None
    verdict = judge(est, job.limits)
    if not verdict.fits:
        verdict.suggestions = [as_flag_text(x) for x in suggest_extract(w, job.limits)]
    else:
        verdict.tips = [as_flag_text(x) for x in speed_tips(w, job.limits)]
    return PlanResult(job, est, verdict, calibration)


def as_flag_text(text: str) -> str:
    """Setting names as the lower layers write them (`batch_size` 4) as CLI flags."""
    return re.sub(r"`(\w+)`", lambda m: "--" + m.group(1).replace("_", "-"), text)


def plan_extract(
    options: ExtractOptions, calibrate: bool = True, lm: LoadedModel | None = None
) -> tuple[PlanResult, LoadedModel | None]:
    """Plan an extract run; with `calibrate`, load the model and time real batches.

    The predicted time counts from here: describing the model and importing transformers
    cost a fresh process seconds, and the real run pays them too.
    """
    t0 = time.perf_counter()
    job = prepare_extract(options, planning=True)
    if job.target is not None:
        calibrate = False  # another machine's speed cannot be timed here
    tok = lm.tokenizer if lm is not None else load_tokenizer(job)
    if tok is not None:
        job.tokens = tokenize_for(job, tok)
    resolve_sizes(job)
    calibration = None
    load_seconds = time.perf_counter() - t0 + (_LOAD_GUESS if lm is None else 0.0)
    if calibrate:
        if lm is None:
            lm = load_model(
                options.model, dtype=options.dtype, device=job.device, quiet=options.quiet
            )
            load_seconds = time.perf_counter() - t0
            if job.tokens is None:
                # the GGUF file was converted while loading: describe the cached copy
                job.info = describe_model(options.model)
                job.tokens = tokenize_for(job, lm.tokenizer)
                resolve_sizes(job)
        calibration = calibrate_capture(
            lm, job.hooks, job.tokens.ids, job.batch_size, options.padding_side
        )
        if options.generate:
            step = calibrate_generation(lm, job.tokens.ids, job.batch_size)
            calibration = dataclasses.replace(calibration, step_seconds=step)
    return estimate_job(job, calibration, load_seconds), lm


def record_plan(result: PlanResult) -> None:
    run = result.job.run
    m = run.read_manifest()
    m.setdefault("plans", {})["extract"] = result.to_dict()
    run.write_manifest(m)


def plan_rows(result: PlanResult) -> list[dict[str, str]]:
    e = result.estimate
    return [
        {
            "stage": e.stage,
            "peak RAM": format_bytes(e.ram),
            "peak GPU": format_bytes(e.gpu) if e.gpu else "-",
            "disk": format_bytes(e.disk),
            "time": format_seconds(e.seconds),
            "verdict": "fits" if result.verdict.fits else "does not fit",
        }
    ]


def render_plan(result: PlanResult) -> None:
    from rich.table import Table

    from saelab.progress import console

    out = console()
    job = result.job
    e = result.estimate
    ts = job.token_stats()
    out.print(
        f"[bold]plan[/bold] {job.info.source.name} ({job.info.shape.n_layers} layers,"
        f" d_model {job.info.shape.d_model}) on {job.device}; {ts.n_prompts} prompts,"
        f" {'' if ts.exact else '~'}{ts.n_tokens:,} tokens (longest {ts.max_len});"
        f" {len(job.hooks)} hook(s), positions {job.options.positions};"
        f" batch {job.batch_size}, shard {job.shard_size}"
    )
    table = Table()
    rows = plan_rows(result)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
    for r in rows:
        style = "green" if result.verdict.fits else "red"
        table.add_row(*[f"[{style}]{v}[/{style}]" if k == "verdict" else v for k, v in r.items()])
    out.print(table)
    p = e.parts
    detail = [
        f"weights {format_bytes(p.get('weights', p.get('gpu_weights', 0)))}",
        f"forward {format_bytes(p.get('forward', p.get('gpu_forward', 0)))}",
        f"shard buffer {format_bytes(p.get('shard_buffer', 0))}",
        f"store {format_bytes(p.get('store', 0))} (before compression)",
    ]
    if result.calibration:
        detail.append(f"measured {result.calibration.tokens_per_s:,.0f} tokens/s")
    out.print("  " + "; ".join(detail))
    lim = job.limits
    if job.target is not None:
        out.print(f"  target {job.target.summary()}")
    if lim is not None:
        out.print(
            f"  limits: RAM {format_bytes(lim.memory)}, disk {format_bytes(lim.disk)}"
            + (f", GPU {format_bytes(lim.gpu)}" if lim.gpu else "")
        )
    for note in e.notes:
        out.print(f"  note: {note}")
    for prob in result.verdict.problems:
        out.print(f"  [red]problem:[/red] {prob}")
    sugg = result.verdict.suggestions
    if sugg and sugg[0].startswith(NOTHING_FITS):
        out.print(f"  [red]{NOTHING_FITS}[/red]{sugg[0][len(NOTHING_FITS) :]}")
    elif sugg:
        out.print("  would fit with: " + "; or ".join(sugg))
    for tip in result.verdict.tips:
        out.print(f"  faster: {tip}")
