"""What `extract` and `extract --generate` share: plan and budget check before anything is
written, the prompt table, and consecutive prompt shards as units.

Within a shard, batches are sorted by length to waste little padding and the rows are put
back in prompt order. Each shard is written whole and renamed into place, then recorded; a
killed run resumes with the shards not recorded and, because every shard is computed the same
way whatever ran before it, ends byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq

from saelab.atomic import atomic_write_bytes
from saelab.budget.measure import dir_size, process_peak_rss
from saelab.errors import BudgetError
from saelab.models.loading import LoadedModel, local_folder
from saelab.pipeline.extract_job import (
    ExtractConfig,
    ExtractJob,
    prepare_extract,
    tokenize_for,
)
from saelab.pipeline.plan import PlanResult, plan_extract
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.progress import say
from saelab.run import config_hash
from saelab.units import format_bytes, format_seconds

PROMPTS_FILE = "prompts.parquet"


@dataclass(frozen=True)
class ShardUnit(Unit):
    """Prompts lo..hi-1, shard number `index`."""

    index: int = 0
    lo: int = 0
    hi: int = 0


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


def refuse_if_too_big(plan: PlanResult) -> None:
    v = plan.verdict
    if not v.fits:
        fix = ("; it would fit with " + " or ".join(v.suggestions)) if v.suggestions else ""
        raise BudgetError(f"extract does not fit: {'; '.join(v.problems)}{fix}")


class PromptShardStage(Stage[ExtractConfig]):
    """A stage whose units are prompt shards written into one sharded store folder."""

    name = "extract"
    progress = "prompts"
    needs_run = False
    store_dir: ClassVar[str]  # the folder of the store in the run

    def __init__(self, config: ExtractConfig, run: str | Path | None = None) -> None:
        super().__init__(config, run)
        self.lm: LoadedModel | None = None  # a model the caller already loaded (driver side)

    # -- driver ----------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        cfg = self.config
        lm = self.lm if self.lm is not None and self.lm.dtype == cfg.dtype else None
        plan, _ = plan_extract(cfg, calibrate=False, lm=lm)
        refuse_if_too_big(plan)
        if plan.job.tokens is None:
            # A GGUF file not converted yet: convert (the plan allowed for it), then plan
            # again with exact token counts.
            local_folder(plan.job.info.source, quiet=cfg.quiet)
            plan, _ = plan_extract(cfg, calibrate=False, lm=lm)
            refuse_if_too_big(plan)
        self.job = plan.job
        self.run = plan.job.run
        binding = plan.job.config()
        stored = self.run.read_manifest().get("plans", {}).get(self.name)
        if not stored or stored.get("config_hash") != config_hash(binding):
            stored = plan.to_dict()
        self.fields = {"plan": stored}
        return binding

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        return ["activations", "traces", PROMPTS_FILE]

    def units(self) -> list[Unit]:
        assert self.job.tokens is not None
        shards = shards_of(len(self.job.tokens.ids), self.job.shard_size)
        return [
            ShardUnit(f"shard-{k:05d}", len(idx), k, idx.start, idx.stop)
            for k, idx in enumerate(shards)
        ]

    def setup(self) -> dict[str, str]:
        """The prompt table (every later stage reads it) and the store's root."""
        self.writer(tidy=True)
        buf = io.BytesIO()
        pq.write_table(self.job.prompts.to_arrow(), buf, compression="zstd")
        atomic_write_bytes(self.run.path / PROMPTS_FILE, buf.getvalue())
        return hashed(self.run, [self.run.path / PROMPTS_FILE])

    def writer(self, tidy: bool = False) -> Any:
        raise NotImplementedError

    def finish(self, done: Done) -> Finished:
        if done.already:
            say(f"extract: {self.run.path} is already complete", self.config.quiet)
        return Finished(self.result(done))

    def result(self, done: Done) -> ExtractResult:
        run = self.run.path
        n_prompts, n_tokens, rows = self.counts()
        measured = done.measured or {}
        ran = set(done.ran)
        resumed = sum(1 for k in done.records if k.startswith("shard-") and k not in ran)
        return ExtractResult(
            run=run,
            store=run / self.store_dir,
            n_prompts=n_prompts,
            n_tokens=n_tokens,
            rows=rows,
            bytes_on_disk=dir_size(run / self.store_dir),
            seconds=measured.get("wall_seconds", 0.0),
            peak_rss=measured.get("peak_rss_bytes", process_peak_rss()),
            plan=self.run.stage(self.name).get("plan", self.fields.get("plan", {})),
            resumed_shards=0 if done.already else resumed,
            already_complete=done.already,
            model_reused=self.lm is not None and self.lm.dtype == self.config.dtype,
            generated=self.store_dir == "traces",
        )

    def counts(self) -> tuple[int, int, int]:
        """(prompts, tokens, rows per hook) now in the store."""
        raise NotImplementedError

    # -- any process -----------------------------------------------------------------------
    @cached_property
    def job(self) -> ExtractJob:
        """In a worker: the job rebuilt from the config, with the recorded sizes."""
        job = prepare_extract(self.config)
        job.run = self.run
        job.device = str(self.binding["device"])  # as the driver resolved `auto`
        job.batch_size = int(self.binding["batch_size"])
        job.shard_size = int(self.binding["shard_size"])
        return job

    def model(self, worker: Worker) -> LoadedModel:
        cfg = self.config
        if self.lm is not None and self.lm.dtype == cfg.dtype:
            worker.adopt(self.lm)
        return worker.model(cfg.model, dtype=cfg.dtype, device=self.job.device, quiet=cfg.quiet)

    def tokens(self, worker: Worker) -> Any:
        if self.job.tokens is None:
            self.job.tokens = tokenize_for(self.job, self.model(worker).tokenizer)
        return self.job.tokens

    def run_unit(self, unit: ShardUnit, worker: Worker) -> UnitResult:
        lm = self.model(worker)
        tokens = self.tokens(worker)
        files, n_tokens = self.write_shard(unit, lm, tokens)
        return UnitResult(files, {"prompts": [unit.lo, unit.hi], "tokens": n_tokens})

    def write_shard(self, unit: ShardUnit, lm: LoadedModel, tokens: Any) -> tuple[dict, int]:
        """Compute and write one shard; ({path in the run: sha256}, tokens read)."""
        raise NotImplementedError

    def in_run(self, files: dict[str, str]) -> dict[str, str]:
        """A store writer's {path in the store: sha256} as paths in the run folder."""
        return {f"{self.store_dir}/{k}": v for k, v in files.items()}


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
