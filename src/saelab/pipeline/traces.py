"""`extract --generate N`: generation traces, one shard of prompts at a time.

Per batch: generate (left padding, which HF generation needs), cut each answer at its first
EOS, then run ONE forward pass over prompt+answer (right padding, position ids from the mask)
to read the hidden states of every requested hook at every position and, when asked, the
attention maps. Hidden states therefore equal a plain forward pass over prompt+answer, which
is what analyses of a finished answer compare against; reading them during generation would
mix KV-cache numerics into the stored values. Attention maps need the eager kernel: the model
switches to it only for that capture pass, so the generated text is what `model.generate`
gives with the model's usual kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saelab.models.capture import HookCapture, cast_rows, length_sorted_batches, make_batch
from saelab.models.hooks import HookPoint
from saelab.models.loading import LoadedModel
from saelab.pipeline.prompt_shards import PromptShardStage, ShardUnit
from saelab.pipeline.trace_options import clean_answer
from saelab.store import open_traces
from saelab.store.traces import TRACES_DIR, Trace, TraceWriter

_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Generated:
    answer_ids: list[int]
    finish: str  # "eos" | "length"


def eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


@torch.no_grad()
def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[Generated]:
    """Generate for a batch; answers end at (and include) their first EOS token."""
    b = make_batch(prompts, lm.pad_id, "left", lm.device)
    kwargs: dict = {"max_new_tokens": max_new, "pad_token_id": lm.pad_id}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = lm.model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, **kwargs)
    new = out[:, b.input_ids.shape[1] :].tolist()
    stops = eos_ids(lm)
    result = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        if cut is None:
            result.append(Generated(row, "length"))
        else:
            result.append(Generated(row[: cut + 1], "eos"))
    return result


def capture_sequences(
    lm: LoadedModel,
    hooks: Sequence[HookPoint],
    attention_layers: Sequence[int],
    seqs: Sequence[Sequence[int]],
) -> tuple[list[dict[str, torch.Tensor]], list[dict[int, torch.Tensor]]]:
    """One forward pass over whole sequences: per sequence, hook rows and attention squares."""
    patterns = [HookPoint(layer, "pattern") for layer in attention_layers]
    impl = getattr(lm.model.config, "_attn_implementation", "eager")
    if patterns and impl != "eager":
        lm.model.set_attn_implementation("eager")
    try:
        b = make_batch(seqs, lm.pad_id, "right", lm.device)
        with HookCapture(lm.model, lm.adapter, [*hooks, *patterns]) as cap:
            values = cap.run(b)
    finally:
        if patterns and impl != "eager":
            lm.model.set_attn_implementation(impl)
    hidden, attn = [], []
    for r in range(len(seqs)):
        s, e = b.span(r)
        hidden.append({h.name: values[h][r, s:e] for h in hooks})
        attn.append({p.layer: values[p][r, :, s:e, s:e] for p in patterns})
    return hidden, attn


class TracesStage(PromptShardStage):
    """`extract --generate N`: units are the prompt table and prompt shards, as for
    activations; each shard's traces are generated, captured and written whole."""

    store_dir = TRACES_DIR

    def writer(self, tidy: bool = False) -> TraceWriter:
        """The trace store's writer; only the driver tidies what killed writers left."""
        job, o = self.job, self.config
        return TraceWriter(
            self.run.path / TRACES_DIR,
            hooks=[h.name for h in job.hooks],
            d_model={h.name: job.info.shape.d_model for h in job.hooks},
            dtype=job.store_dtype,
            keep_bits=o.keep_bits,
            positions=o.positions,
            attention_layers=job.attention_layers,
            n_heads=job.info.shape.n_heads,
            heads=job.heads,
            attrs={"model": job.info.source.name, **job.generation_config(), "chat": o.chat},
            tidy=tidy,
        )

    def counts(self) -> tuple[int, int, int]:
        traces = open_traces(self.run.path)
        n = traces.n_traces
        return n, sum(len(traces.prompt_ids(i)) + len(traces.answer_ids(i)) for i in range(n)), 0

    def write_shard(self, unit: ShardUnit, lm: LoadedModel, tokens: Any) -> tuple[dict, int]:
        job, o = self.job, self.config
        assert o.generate is not None
        store_dtype = _TORCH[job.store_dtype]
        idx = range(unit.lo, unit.hi)
        torch.manual_seed(o.seed + unit.index)  # sampling depends only on the shard: resumable
        prompts = [tokens.ids[i] for i in idx]
        traces: list[Trace | None] = [None] * len(idx)
        for bidx in length_sorted_batches([len(p) for p in prompts], job.batch_size):
            batch = [prompts[j] for j in bidx]
            gens = generate_batch(lm, batch, o.generate, o.temperature, o.top_p)
            seqs = [p + g.answer_ids for p, g in zip(batch, gens, strict=True)]
            hidden, attn = capture_sequences(lm, job.hooks, job.attention_layers, seqs)
            for j, p, g, hid, att in zip(bidx, batch, gens, hidden, attn, strict=True):
                traces[j] = _trace(idx[j], p, g, hid, att, o, lm, store_dtype)
        files = self.writer().write_shard(unit.index, [t for t in traces if t is not None])
        n_tok = sum(len(t.prompt_ids) + len(t.answer_ids) for t in traces if t)
        return self.in_run(files), n_tok


def _trace(
    index: int,
    prompt: list[int],
    gen: Generated,
    hidden: dict[str, torch.Tensor],
    attn: dict[int, torch.Tensor],
    o: object,
    lm: LoadedModel,
    store_dtype: torch.dtype,
) -> Trace:
    text = lm.tokenizer.decode(gen.answer_ids, skip_special_tokens=True)
    if getattr(o, "positions", "all") == "generated":
        hidden = {h: v[len(prompt) :] for h, v in hidden.items()}
    return Trace(
        index=int(index),
        prompt_ids=np.asarray(prompt, dtype=np.int64),
        answer_ids=np.asarray(gen.answer_ids, dtype=np.int64),
        answer_text=text,
        clean_answer=clean_answer(text, getattr(o, "stop", None)).strip(),
        finish=gen.finish,
        hidden={h: cast_rows(v, store_dtype, h) for h, v in hidden.items()},
        attentions={
            layer: a.to("cpu", dtype=torch.float32, copy=True) for layer, a in attn.items()
        },
    )
