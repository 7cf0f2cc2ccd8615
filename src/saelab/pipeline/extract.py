"""`saelab extract`: activations of chosen hook points over a prompt set, into the run's
activation store (`RUN/activations/`), one prompt shard per unit.

With `generate`, the same command records generation traces instead (`pipeline.traces`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from saelab.models.capture import capture_prompts
from saelab.models.loading import LoadedModel
from saelab.pipeline.driver import run_stage
from saelab.pipeline.extract_job import ExtractConfig, ExtractJob
from saelab.pipeline.prompt_shards import (
    ExtractResult,
    PromptShardStage,
    ShardUnit,
    describe_result,
)
from saelab.pipeline.traces import TracesStage
from saelab.store import STORE_DIR, ActivationStore, ActivationWriter, open_activations

_TORCH_STORE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

__all__ = ["ExtractConfig", "ExtractResult", "ExtractStage", "describe_result", "run_extract"]


class ExtractStage(PromptShardStage):
    """Units: the prompt table, then one shard of prompts each (captured, written whole)."""

    store_dir = STORE_DIR

    def writer(self, tidy: bool = False) -> ActivationWriter:
        """The store's writer; only the driver tidies what killed writers left (`tidy`)."""
        job = self.job
        return ActivationWriter(
            self.run.path / STORE_DIR,
            hooks=[h.name for h in job.hooks],
            d_model={h.name: job.info.shape.d_model for h in job.hooks},
            dtype=job.store_dtype,
            keep_bits=job.options.keep_bits,
            positions=job.options.positions,
            attrs=store_attrs(job),
            tidy=tidy,
        )

    def counts(self) -> tuple[int, int, int]:
        store: ActivationStore = open_activations(self.run.path)
        return store.n_prompts, store.n_tokens, store.n_rows

    def write_shard(self, unit: ShardUnit, lm: LoadedModel, tokens: Any) -> tuple[dict, int]:
        job, o = self.job, self.config
        hooks = job.hooks
        idx = range(unit.lo, unit.hi)
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
        stored_tokens = [_stored_tokens(t, o.drop_bos, tokens.bos_id) for t in token_lists]
        acts = {name: torch.cat(parts) for name, parts in rows.items()}  # type: ignore[arg-type]
        files = self.writer().write_shard(
            unit.index,
            prompt_index=np.asarray(list(idx), dtype=np.int64),
            token_ids=[np.asarray(t, dtype=np.int32) for t in stored_tokens],
            acts=acts,
        )
        return self.in_run(files), sum(len(t) for t in token_lists)


def _stored_tokens(ids: list[int], drop_bos: bool, bos_id: int | None) -> list[int]:
    if drop_bos and bos_id is not None and len(ids) > 1 and ids[0] == bos_id:
        return ids[1:]
    return ids


def store_attrs(job: ExtractJob) -> dict[str, Any]:
    """What the activation store records about where its rows came from."""
    o = job.options
    assert job.tokens is not None
    return {
        "model": job.info.source.name,
        "model_dtype": o.dtype,
        "prepend_bos": o.bos,
        "drop_bos": o.drop_bos,
        "bos_id": job.tokens.bos_id,
        "max_length": o.max_length,
        "prompts_fingerprint": job.prompts.fingerprint(),
    }


def extract_stage(config: ExtractConfig, lm: LoadedModel | None = None) -> PromptShardStage:
    """The stage `config` asks for: activations, or generation traces with `generate`."""
    stage = TracesStage(config) if config.generate else ExtractStage(config)
    stage.lm = lm
    return stage


def run_extract(config: ExtractConfig, lm: LoadedModel | None = None) -> ExtractResult:
    """Plan, check the budget, then extract (or resume) into the run folder on the executor
    `config` names; `lm` is a model the caller already loaded (used by the local executor
    when its dtype is the one asked for)."""
    return run_stage(extract_stage(config, lm))
