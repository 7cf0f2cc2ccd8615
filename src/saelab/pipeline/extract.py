"""`saelab extract`: activations of chosen hook points over a prompt set, into the run's store.

The prompts are cut into shards of consecutive prompts (the unit of work and of resume);
within a shard, batches are sorted by length to waste little padding and the rows are put
back in prompt order. Each shard is written whole and renamed into place, then recorded in
the manifest; a killed run resumes with the next unrecorded shard and, because every shard is
computed the same way whatever ran before it, ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab import __version__
from saelab.budget.measure import PeakSampler, dir_size, gpu_peak_bytes, process_peak_rss
from saelab.errors import BudgetError
from saelab.models.capture import capture_prompts
from saelab.models.loading import LoadedModel, load_model, local_folder
from saelab.pipeline.extract_job import ExtractJob, ExtractOptions
from saelab.pipeline.plan import PlanResult, plan_extract
from saelab.progress import Reporter, say
from saelab.run import atomic_write_bytes, config_hash
from saelab.store import STORE_DIR, ActivationWriter
from saelab.units import format_bytes, format_seconds

STAGE = "extract"
PROMPTS_FILE = "prompts.parquet"
_TORCH_STORE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ExtractResult:
    run: Path
    store: Path
    n_prompts: int
    n_tokens: int
    rows: int
    bytes_on_disk: int
    seconds: float
    peak_rss: int
    plan: dict[str, Any]
    resumed_shards: int
    already_complete: bool = False
    model_reused: bool = False  # the caller's loaded model was used: no load time spent
    generated: bool = False  # generation traces (RUN/traces) rather than activations


def shards_of(n: int, size: int) -> list[range]:
    """Consecutive prompt ranges: the units of work and of resume."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


TRACES_DIR = "traces"  # saelab.store.traces.TRACES_DIR, without importing the trace store


def output_dir(job: ExtractJob) -> Path:
    return job.run.path / (TRACES_DIR if job.options.generate else STORE_DIR)


def record_shard(
    job: ExtractJob, stage: str, unit: str, idx: range, n_tokens: int, files: dict, t0: float
) -> None:
    """Record a written shard in the manifest: only now does it count as done."""
    job.run.record_unit(
        stage,
        unit,
        {
            "prompts": [idx.start, idx.stop],
            "tokens": n_tokens,
            "files": len(files),
            "sha256": _unit_digest(files),
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )


def _write_prompts(job: ExtractJob) -> None:
    import pyarrow.parquet as pq

    path = job.run.path / PROMPTS_FILE
    if path.exists():
        return
    buf = io.BytesIO()
    pq.write_table(job.prompts.to_arrow(), buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def _unit_digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def refuse_if_too_big(plan: PlanResult) -> None:
    v = plan.verdict
    if not v.fits:
        fix = ("; it would fit with " + " or ".join(v.suggestions)) if v.suggestions else ""
        raise BudgetError(f"extract does not fit: {'; '.join(v.problems)}{fix}")


def run_extract(options: ExtractOptions, lm: LoadedModel | None = None) -> ExtractResult:
    """Plan, check the budget, then extract (or resume) into the run folder."""
    t_start = time.perf_counter()
    if lm is not None and lm.dtype != options.dtype:
        lm = None  # a model loaded for another dtype cannot produce this run's numbers
    reused = lm is not None
    with PeakSampler() as sampler:
        plan, lm = plan_extract(options, calibrate=False, lm=lm)
        refuse_if_too_big(plan)
        if plan.job.tokens is None:
            # A GGUF file not converted yet: convert (the plan allowed for it), then plan
            # again with exact token counts.
            local_folder(plan.job.info.source, quiet=options.quiet)
            plan, lm = plan_extract(options, calibrate=False, lm=lm)
            refuse_if_too_big(plan)
        job = plan.job
        run = job.run
        if options.overwrite and run.path.exists():
            import shutil

            shutil.rmtree(run.path / STORE_DIR, ignore_errors=True)
            shutil.rmtree(run.path / TRACES_DIR, ignore_errors=True)
            (run.path / PROMPTS_FILE).unlink(missing_ok=True)
            run.reset_stage(STAGE)
        cfg = job.config()
        run.bind_config(STAGE, cfg, overwrite=options.overwrite)
        chash = config_hash(cfg)
        stage = run.stage(STAGE)
        if stage.get("complete") and stage.get("config_hash") == chash:
            say(f"extract: {run.path} is already complete", options.quiet)
            return _result(job, stage, t_start, 0, already=True)
        stored_plan = run.read_manifest().get("plans", {}).get(STAGE)
        if not stored_plan or stored_plan.get("config_hash") != chash:
            stored_plan = plan.to_dict()
        run.update_stage(
            STAGE, config_hash=chash, complete=False, plan=stored_plan, saelab=__version__
        )
        _write_prompts(job)

        if lm is None:
            lm = load_model(
                options.model, dtype=options.dtype, device=job.device, quiet=options.quiet
            )
        if options.generate:
            from saelab.pipeline.traces import trace_shards

            resumed = trace_shards(job, lm, STAGE)
        else:
            resumed = _extract_shards(job, lm)
        wall = time.perf_counter() - t_start
    measured = {
        "wall_seconds": wall,
        "peak_rss_bytes": process_peak_rss(),
        "peak_rss_sampled_bytes": sampler.peak,
        "peak_gpu_bytes": gpu_peak_bytes(),
        "disk_bytes": dir_size(output_dir(job)),
    }
    st = run.update_stage(STAGE, complete=True, measured=measured)
    result = _result(job, st, t_start, resumed)
    result.model_reused = reused
    return result


def _extract_shards(job: ExtractJob, lm: LoadedModel) -> int:
    o = job.options
    assert job.tokens is not None
    tokens = job.tokens
    hooks = job.hooks
    writer = ActivationWriter(
        job.run.path / STORE_DIR,
        hooks=[h.name for h in hooks],
        d_model={h.name: lm.d_model for h in hooks},
        dtype=job.store_dtype,
        keep_bits=o.keep_bits,
        positions=o.positions,
        attrs={
            "model": job.info.source.name,
            "model_dtype": o.dtype,
            "prepend_bos": o.prepend_bos,
            "drop_bos": o.drop_bos,
            "bos_id": tokens.bos_id,
            "max_length": o.max_length,
            "prompts_fingerprint": job.prompts.fingerprint(),
        },
    )
    done = job.run.done_units(STAGE)
    shards = shards_of(len(tokens.ids), job.shard_size)
    resumed = 0
    with Reporter("extract", total=len(tokens.ids), unit="prompts", quiet=o.quiet) as rep:
        for k, idx in enumerate(shards):
            unit = f"shard-{k:05d}"
            if unit in done and writer.has_shard(k):
                rep.advance(len(idx))
                resumed += 1
                continue
            t0 = time.perf_counter()
            token_lists = [tokens.ids[i] for i in idx]
            rows: dict[str, list[torch.Tensor | None]] = {h.name: [None] * len(idx) for h in hooks}
            for bidx, out in capture_prompts(
                lm.model,
                lm.adapter,
                hooks,
                token_lists,
                pad_id=lm.pad_id,
                batch_size=job.batch_size,
                positions=o.positions,
                drop_bos=o.drop_bos,
                bos_id=tokens.bos_id,
                padding_side=o.padding_side,
                device=lm.device,
                out_dtype=_TORCH_STORE[job.store_dtype],
            ):
                for h in hooks:
                    for r, j in enumerate(bidx):
                        rows[h.name][j] = out[h][r]
                del out  # else the batch's tensors live on through the next forward pass
                rep.advance(len(bidx), sum(len(token_lists[j]) for j in bidx))
            stored_tokens = [_stored_tokens(t, o.drop_bos, tokens.bos_id) for t in token_lists]
            acts = {name: torch.cat(parts) for name, parts in rows.items()}  # type: ignore[arg-type]
            files = writer.write_shard(
                k,
                prompt_index=np.asarray(list(idx), dtype=np.int64),
                token_ids=[np.asarray(t, dtype=np.int32) for t in stored_tokens],
                acts=acts,
            )
            del acts, rows
            record_shard(job, STAGE, unit, idx, sum(len(t) for t in token_lists), files, t0)
    return resumed


def _stored_tokens(ids: list[int], drop_bos: bool, bos_id: int | None) -> list[int]:
    if drop_bos and bos_id is not None and len(ids) > 1 and ids[0] == bos_id:
        return ids[1:]
    return ids


def _result(
    job: ExtractJob, stage: dict[str, Any], t_start: float, resumed: int, already: bool = False
) -> ExtractResult:
    measured = stage.get("measured", {})
    if job.options.generate:
        from saelab.store.trace_reader import open_traces

        traces = open_traces(job.run.path)
        n_prompts = traces.n_traces
        n_tokens = sum(
            len(traces.prompt_ids(i)) + len(traces.answer_ids(i)) for i in range(n_prompts)
        )
        rows = 0
    else:
        from saelab.store import open_activations

        store = open_activations(job.run.path)
        n_prompts, n_tokens, rows = store.n_prompts, store.n_tokens, store.n_rows
    return ExtractResult(
        run=job.run.path,
        store=output_dir(job),
        n_prompts=n_prompts,
        n_tokens=n_tokens,
        rows=rows,
        bytes_on_disk=dir_size(output_dir(job)),
        seconds=measured.get("wall_seconds", time.perf_counter() - t_start),
        peak_rss=measured.get("peak_rss_bytes", process_peak_rss()),
        plan=stage.get("plan", {}),
        resumed_shards=resumed,
        already_complete=already,
        generated=bool(job.options.generate),
    )


def describe_result(r: ExtractResult) -> str:
    est = r.plan.get("estimate", {}) if r.plan else {}
    planned = est.get("seconds")
    if planned and r.model_reused:  # the plan counted loading the model; this run did not
        planned = max(planned - est.get("parts", {}).get("load_seconds", 0.0), 0.0)
    what = "traces" if r.generated else "activations"
    rows = "" if r.generated else f" {r.rows:,} rows per hook,"
    lines = [
        f"{what}: {r.store}",
        f"  {r.n_prompts} prompts, {r.n_tokens:,} tokens,{rows}"
        f" {format_bytes(r.bytes_on_disk)} on disk",
        f"  time {format_seconds(r.seconds)} (planned {format_seconds(planned)}"
        + (", model already loaded" if r.model_reused else "")
        + ");"
        f" peak RAM {format_bytes(r.peak_rss)} (planned {format_bytes(est.get('ram_bytes'))})",
    ]
    if r.resumed_shards:
        lines.append(f"  resumed: {r.resumed_shards} shard(s) were already done")
    opener = "TraceDataset" if r.generated else "open_activations"
    lines.append(f"  open in Python: from saelab.store import {opener}; {opener}({str(r.run)!r})")
    return "\n".join(lines)
