"""Turning extract options into a validated job, before any weights load.

Everything a user can get wrong (prompts file, model spec, hooks, positions, dtypes) is
checked here, so a mistake costs a second and leaves no file behind. `plan` and `extract`
share this step, so they always agree on what the run will be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.budget.estimate import (
    ExtractWorkload,
    TokenStats,
    default_shard_size,
    estimate_extract,
)
from saelab.budget.planner import Limits, auto_batch_size, fit_shard_size
from saelab.budget.targets import Target, gpu_total_here, parse_target, plan_device
from saelab.data import PromptTable, demo_prompts, read_prompts
from saelab.errors import SaelabError
from saelab.models.capture import POSITIONS
from saelab.models.describe import ModelInfo, describe_model
from saelab.models.hooks import HookPoint, select_hooks
from saelab.models.loading import DTYPES, file_key, resolve_device
from saelab.models.tokens import TokenizedPrompts, tokenize_prompts
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.trace_options import check_generation
from saelab.run import RunFolder
from saelab.store.codecs import check_dtype, check_keep_bits

STORE_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_HOOKS = "resid_post.*"
MODEL_HELP = "'default' (SmolLM2-135M-Instruct), a HF id, a folder or a .gguf"
PROMPTS_HELP = (
    "txt (one per line) / jsonl / csv / parquet with a text column; default: the built-in"
    " demo prompts"
)
TEXT_COLUMN_HELP = "column holding the prompt text"
DEVICE_HELP = "auto, cpu, cuda, mps"


class ExtractConfig(StageOptions):
    """Capture activations of hook points over prompts into the run's store (resumable).

    With --generate N, record generation traces instead: each prompt's answer, and the hidden
    states (and, with --attentions, attention maps) over prompt and answer. Without --run,
    the run folder is runs/<prompts>-<model>.
    """

    model: str = option("default", MODEL_HELP)
    prompts: str | None = option(None, PROMPTS_HELP)
    text_column: str = option("text", TEXT_COLUMN_HELP)
    limit: int | None = option(None, "use only the first N prompts", minimum=1)
    hooks: str = option(
        DEFAULT_HOOKS,
        "hook points: resid_post.12, resid_post.0-29, mlp_out.*, blocks.5.hook_resid_mid,"
        " model.layers.3 (comma-separated)",
    )
    positions: str = option("all", "all | last | mean; with --generate: all | generated")
    dtype: str = option("float32", "model compute dtype: float32, float16, bfloat16, int8")
    store_dtype: str = option(
        "auto", "stored dtype: auto (float16; bfloat16 for Gemma), float16, bfloat16, float32"
    )
    keep_bits: int | None = option(
        None, "lossy: keep N mantissa bits (smaller store; default lossless)"
    )
    device: str = option("auto", DEVICE_HELP)
    batch_size: str = option("auto", "prompts per batch, or 'auto' (largest that fits)")
    max_length: int | None = option(None, "truncate prompts to N tokens", minimum=1)
    bos: bool = option(True, "start every prompt with BOS", "--bos/--no-bos")
    drop_bos: bool = option(False, "do not store the BOS position")
    padding_side: str = option("right", "right | left (results are the same)")
    chat: bool = option(False, "wrap each prompt in the model's chat template")
    generate: int | None = option(
        None, "record generation traces: up to N new tokens per prompt", minimum=1
    )
    temperature: float = option(0.0, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling threshold")
    seed: int = option(0, "sampling seed (per shard: seed + shard index)")
    stop: list[str] | None = option(None, "the cleaned answer ends before this text (repeatable)")
    attentions: str | None = option(None, "record attention maps of these layers: 0,5,10-12 or all")
    heads: str | None = option(None, "keep only these heads of --attentions")
    shard_size: int | None = option(None, "prompts per shard (unit of resume)", minimum=1)


@dataclass
class ExtractJob:
    """A validated extract: every choice resolved, nothing loaded but the tokenizer."""

    options: ExtractConfig
    prompts: PromptTable
    info: ModelInfo
    hooks: list[HookPoint]
    device: str
    run: RunFolder
    store_dtype: str = "float16"
    attention_layers: list[int] = field(default_factory=list)
    heads: list[int] | None = None
    tokens: TokenizedPrompts | None = None
    batch_size: int = 1
    shard_size: int = 1
    limits: Limits | None = None
    target: Target | None = None  # planning for this machine profile

    def token_stats(self) -> TokenStats:
        if self.tokens is not None:
            return TokenStats.from_lengths(self.tokens.lengths)
        # No tokenizer yet (GGUF not converted): ~4 characters per token, plus BOS.
        est = [max(1, len(t) // 4) + int(self.options.bos) for t in self.prompts.texts]
        if self.options.max_length:
            est = [min(n, self.options.max_length) for n in est]
        return TokenStats.from_lengths(est, exact=False)

    def workload(self, **overrides: Any) -> ExtractWorkload:
        fields = dict(
            shape=self.info.shape,
            hooks=tuple(self.hooks),
            tokens=self.token_stats(),
            positions=self.options.positions,
            model_dtype=self.options.dtype,
            store_dtype=self.store_dtype,
            batch_size=self.batch_size,
            shard_size=self.shard_size,
            device=self.device,
            file_dtype=self.info.file_dtype,
            convert_gguf_bytes=self.info.gguf_pending_bytes,
            drop_bos=self.options.drop_bos,
            generate=int(self.options.generate or 0),
            attention_layers=len(self.attention_layers),
            heads_kept=len(self.heads) if self.heads else self.info.shape.n_heads,
        )
        fields.update(overrides)
        return ExtractWorkload(**fields)

    def config(self) -> dict[str, Any]:
        """What decides the bytes of the result: recorded in run.toml, checked on resume."""
        o = self.options
        return {
            "model": self.info.source.name,
            "model_key": model_key(self.info),
            "prompts": self.prompts.source,
            "prompts_fingerprint": self.prompts.fingerprint(),
            "n_prompts": len(self.prompts),
            "hooks": [h.name for h in self.hooks],
            "positions": o.positions,
            "dtype": o.dtype,
            "store_dtype": self.store_dtype,
            "keep_bits": o.keep_bits,
            "device": self.device,
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "max_length": o.max_length,
            "prepend_bos": o.bos,
            "drop_bos": o.drop_bos,
            "padding_side": o.padding_side,
            "chat": o.chat,
            **self.generation_config(),
        }

    def generation_config(self) -> dict[str, Any]:
        o = self.options
        if o.generate is None:
            return {}
        return {
            "generate": int(o.generate),
            "temperature": float(o.temperature),
            "top_p": float(o.top_p),
            "seed": int(o.seed),
            "stop": list(o.stop or []),
            "attention_layers": self.attention_layers,
            "heads": self.heads,
        }


def model_key(info: ModelInfo) -> str:
    """Identifies the weights without depending on where a venv or cache happens to live."""
    src = info.source
    if src.kind == "gguf":
        return f"gguf:{file_key(Path(src.location))}"
    return f"{src.kind}:{src.location}"


def _choose(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise SaelabError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
    return value


def default_run_dir(prompts: PromptTable, model_name: str) -> Path:
    src = prompts.source
    stem = src.split(":", 1)[1] if src.startswith("builtin:") else Path(src).stem
    return Path("runs") / f"{stem}-{model_name.split('/')[-1]}"


def prepare_extract(
    o: ExtractConfig, tokenizer: Any | None = None, planning: bool = False
) -> ExtractJob:
    """Validate options; resolve hooks, device, run folder. Cheap: loads no weights.

    `planning`: the device need not be here (a plan for cuda, or for a `target` machine)."""
    if o.generate is None:
        _choose(o.positions, (*POSITIONS, "generated"), "--positions")
    _choose(o.dtype, DTYPES, "--dtype")
    _choose(o.store_dtype, ("auto", *STORE_DTYPES), "--store-dtype")
    _choose(o.padding_side, ("right", "left"), "--padding-side")
    if o.max_length is not None and o.max_length < 1:
        raise SaelabError(f"--max-length {o.max_length} must be at least 1")
    if o.shard_size is not None and o.shard_size < 1:
        raise SaelabError(f"--shard-size {o.shard_size} must be at least 1")
    o.budget()  # parse sizes early: a typo fails before anything runs
    prompts = (
        demo_prompts() if o.prompts is None else read_prompts(o.prompts, text_column=o.text_column)
    )
    if o.limit is not None:
        if o.limit < 1:
            raise SaelabError(f"--limit {o.limit} must be at least 1")
        prompts = prompts.select(range(min(o.limit, len(prompts))))
    info = describe_model(o.model)
    adapter = info.adapter()
    hooks = select_hooks(o.hooks, None, info.shape.n_layers, info.hook_for_module_path)
    for h in hooks:
        adapter.site(h, adapter.layers[0])  # e.g. resid_mid of a parallel-residual block
    patterns = [h.name for h in hooks if h.site == "pattern"]
    if patterns:
        raise SaelabError(
            f"hook {patterns[0]} is an attention map, not a residual activation: the dense store"
            " holds resid/attn_out/mlp_out hooks only; drop it from --hooks"
        )
    attention_layers, heads = check_generation(o, info.shape.n_layers, info.shape.n_heads)
    store_dtype = resolve_store_dtype(o.store_dtype, info.shape.family)
    check_keep_bits(o.keep_bits, check_dtype(store_dtype))
    target_spec = getattr(o, "target", None)  # plan's option
    target = parse_target(target_spec) if target_spec else None
    device = plan_device(o.device, target) if planning else resolve_device(o.device).type
    run_dir = Path(o.run) if o.run else default_run_dir(prompts, info.source.name)
    job = ExtractJob(o, prompts, info, hooks, device, RunFolder(run_dir), store_dtype)
    job.attention_layers, job.heads = attention_layers, heads
    job.target = target
    if tokenizer is not None:
        job.tokens = tokenize_for(job, tokenizer)
    return job


def resolve_store_dtype(choice: str, family: str) -> str:
    """float16 halves the store and is exact enough, but Gemma's residual stream exceeds
    its range (Gemma 3 270M reaches ~6.8e4 by layer 7, float16 stops at 65504), so Gemma
    families get bfloat16 unless the user chose."""
    if choice != "auto":
        return choice
    return "bfloat16" if family in ("gemma2", "gemma3") else "float16"


def tokenize_for(job: ExtractJob, tokenizer: Any) -> TokenizedPrompts:
    o = job.options
    tp = tokenize_prompts(
        tokenizer,
        job.prompts.texts,
        prepend_bos=o.bos,
        max_length=o.max_length,
        chat=o.chat,
    )
    for i, ids in enumerate(tp.ids):
        if not ids:
            raise SaelabError(
                f"prompt {job.prompts.ids[i]!r} has no tokens; remove it or keep --bos on"
            )
    return tp


def resolve_sizes(job: ExtractJob) -> None:
    """Fix batch and shard sizes: recorded ones on resume, else from the budget."""
    o = job.options
    recorded = job.run.read_config().get("extract", {}) if not o.overwrite else {}
    gpu = gpu_total_here() if job.device == "cuda" else None
    job.limits = o.budget().resolve(job.run.path, gpu_total=gpu, target=job.target)
    if o.batch_size == "auto" or o.batch_size is None:
        if recorded.get("batch_size"):
            job.batch_size = int(recorded["batch_size"])
        else:
            job.batch_size = auto_batch_size(
                job.workload(batch_size=1, shard_size=1), job.limits, estimate_extract
            )
    else:
        try:
            job.batch_size = int(o.batch_size)
        except ValueError as e:
            raise SaelabError(f"--batch-size {o.batch_size!r} must be 'auto' or a number") from e
        if job.batch_size < 1:
            raise SaelabError(f"--batch-size {job.batch_size} must be at least 1")
    if o.shard_size:
        job.shard_size = o.shard_size
    elif recorded.get("shard_size") and o.batch_size == "auto":
        job.shard_size = int(recorded["shard_size"])
    else:
        job.shard_size = default_shard_size(job.workload(shard_size=1))
        job.shard_size = fit_shard_size(job.workload(), job.limits, estimate_extract)
