"""Memory, disk and time of the extract stage, from shapes alone (no weights loaded).

The constants below were measured on the default model (SmolLM2-135M, CPU, torch 2.13,
transformers 5.23): a Python process with torch, transformers and zarr imported holds
~270 MB; a loaded model adds ~100 MB of tokenizer, config and allocator state beyond its
weights. Weights stored in the dtype they run in are memory-mapped, so only the layers the
forward pass reaches become resident (capture stops after the deepest hook); weights that
are converted at load time (e.g. float32 file -> bfloat16) briefly hold the whole file plus
the converted copy. A forward pass keeps about 4·d_model + 3·d_mlp values per token alive
in the compute dtype, plus float32 attention scores of n_heads x T per token (twice:
scores and softmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from saelab.models.hooks import HookPoint
from saelab.models.shapes import ModelShape

MB = 1 << 20
BASE_RSS = 270 * MB  # python + torch + transformers + zarr imported
LOADED_OVERHEAD = 100 * MB  # tokenizer, configs, allocator arenas once a model is loaded
CUDA_CONTEXT = 500 * MB  # host memory a CUDA context costs
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "nf4": 1}  # nf4: see
# quantized_bytes for its weights; as an activation/store dtype it never occurs
LOAD_SHARD = 5 * 10**9  # transformers' default checkpoint shard size
STORE_SHARD_TARGET = 128 * MB  # activations held per shard before it is written
CPU_TOKENS_PER_BATCH = 4096  # beyond this a CPU forward gets no faster, only bigger
GPU_TOKENS_PER_BATCH = 65536


@dataclass(frozen=True)
class TokenStats:
    """What the plan needs to know of the prompts: counts and lengths."""

    n_prompts: int
    n_tokens: int
    max_len: int
    mean_len: float
    exact: bool = True  # False when lengths were estimated from characters

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], exact: bool = True) -> TokenStats:
        n = len(lengths)
        total = int(sum(lengths))
        return cls(n, total, int(max(lengths, default=0)), total / max(n, 1), exact)


@dataclass(frozen=True)
class ExtractWorkload:
    """Everything that decides the cost of one extract run."""

    shape: ModelShape
    hooks: tuple[HookPoint, ...]
    tokens: TokenStats
    positions: str = "all"
    model_dtype: str = "float32"
    store_dtype: str = "float16"
    batch_size: int = 8
    shard_size: int = 256
    device: str = "cpu"
    file_dtype: str | None = "float32"  # dtype of the weights on disk
    convert_gguf_bytes: int = 0  # size of a GGUF file still to be converted (0: cached)
    drop_bos: bool = False
    generate: int = 0  # new tokens per prompt (generation traces); 0 = plain extract
    attention_layers: int = 0  # attention maps recorded (generation traces)
    heads_kept: int = 0  # heads kept of each recorded attention map

    @property
    def deepest(self) -> int:
        if self.generate:
            return self.shape.n_layers - 1  # generation runs the whole model
        return max(h.layer for h in self.hooks)

    @property
    def seq_max(self) -> int:
        """Longest sequence a forward pass sees (prompt plus answer when generating)."""
        return self.tokens.max_len + self.generate

    @property
    def rows(self) -> int:
        if self.generate:  # upper bound: every answer runs to its full length
            answers = self.tokens.n_prompts * self.generate
            return answers if self.positions == "generated" else self.tokens.n_tokens + answers
        if self.positions == "all":
            dropped = self.tokens.n_prompts if self.drop_bos else 0
            return max(self.tokens.n_tokens - dropped, self.tokens.n_prompts)
        return self.tokens.n_prompts

    @property
    def attention_pair_bytes(self) -> int:
        """Stored attention bytes of all prompts: float16 lower triangles of kept heads."""
        if not self.attention_layers:
            return 0
        t = self.tokens.mean_len + self.generate
        return int(
            self.tokens.n_prompts * t * (t + 1) / 2 * self.heads_kept * 2 * self.attention_layers
        )

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row over all hooks."""
        return self.shape.d_model * DTYPE_BYTES[self.store_dtype] * len(self.hooks)

    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_max


@dataclass
class Estimate:
    """Predicted cost of one stage; `parts` says where the numbers come from."""

    stage: str
    ram: int
    gpu: int
    disk: int
    seconds: float | None
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "ram_bytes": self.ram,
            "gpu_bytes": self.gpu,
            "disk_bytes": self.disk,
            "seconds": self.seconds,
            "parts": self.parts,
            "notes": self.notes,
        }


def forward_bytes(w: ExtractWorkload) -> int:
    """Transient memory of one batch's forward pass plus the captured tensors."""
    s = w.shape
    act = {"int8": 4, "nf4": 2}.get(w.model_dtype) or DTYPE_BYTES.get(w.model_dtype, 4)
    if w.model_dtype == "int8" and w.device == "cuda":
        act = 2  # bitsandbytes computes in float16
    per_token = act * (4 * s.d_model + 3 * s.d_mlp) + 4 * 2 * s.n_heads * w.seq_max
    captured = act * s.d_model * len(w.hooks) + 4 * s.n_heads * w.seq_max * w.attention_layers
    capture_pass = int(w.batch_tokens() * (per_token + captured))
    if not w.generate:
        return capture_pass
    kv = w.batch_tokens() * s.n_layers * 2 * s.n_kv_heads * s.head_dim * act
    logits = w.batch_size * s.vocab_size * 4 * 2
    return max(capture_pass, int(kv + logits))


def shard_rows(w: ExtractWorkload) -> int:
    per_prompt = w.rows / max(w.tokens.n_prompts, 1)
    return int(min(w.shard_size, w.tokens.n_prompts) * per_prompt)


def quantized_bytes(shape: ModelShape, dtype: str, n_layers: int | None = None) -> int:
    """Resident weights of a bitsandbytes model on CUDA: linear weights in int8 (one float32
    scale per row) or nf4 (half a byte, one float32 absmax per 64), the rest (embeddings,
    norms, the head) in float16."""
    lin = shape.linear_params(n_layers)
    rest = shape.weight_bytes("float16", n_layers) - 2 * lin
    if dtype == "int8":
        return lin + 4 * shape.linear_rows(n_layers) + rest
    return lin // 2 + lin // 16 + rest


def weights_bytes(w: ExtractWorkload) -> tuple[int, int]:
    """(resident weights while running, extra transient bytes while loading).

    CPU int8 is loaded tensor by tensor (`models.int8_load`): the transient is the largest
    tensor read, the embedding table in the file's dtype. A CUDA load puts each checkpoint
    shard on the GPU as it is read: the host holds about one shard.
    """
    s = w.shape
    file_dt = w.file_dtype or "float32"
    full_file = s.weight_bytes(file_dt)
    if w.device == "cuda":
        if w.model_dtype in ("int8", "nf4"):
            resident = quantized_bytes(s, w.model_dtype)
        else:
            resident = s.weight_bytes(w.model_dtype)
        return resident, min(full_file, LOAD_SHARD)
    if w.model_dtype == "int8":
        return s.weight_bytes("int8"), s.embedding_params() * DTYPE_BYTES.get(file_dt, 4)
    running = s.weight_bytes(w.model_dtype)
    if w.file_dtype == w.model_dtype:
        # memory-mapped: only the layers the pass reaches are ever read
        reached = None if w.generate else w.deepest + 1
        return s.weight_bytes(w.model_dtype, n_layers=reached), 0
    return running, full_file


def estimate_extract(
    w: ExtractWorkload,
    tokens_per_s: float | None = None,
    flops_per_s: float | None = None,
    load_seconds: float | None = None,
    step_seconds: float | None = None,
) -> Estimate:
    parts: dict[str, float] = {}
    notes: list[str] = []
    on_gpu = w.device == "cuda"
    resident, load_extra = weights_bytes(w)
    fwd = forward_bytes(w)
    shard = 2 * shard_rows(w) * w.row_bytes  # gathered rows + the concatenated copy
    shard += (
        3
        * w.attention_pair_bytes
        * min(w.shard_size, w.tokens.n_prompts)
        // max(w.tokens.n_prompts, 1)
    )  # float32 squares held per trace until the shard is packed
    base = BASE_RSS + LOADED_OVERHEAD + (CUDA_CONTEXT if on_gpu else 0)
    parts.update(base=base, shard_buffer=shard)
    if on_gpu:
        gpu = resident + fwd
        ram = base + shard + load_extra
        parts.update(gpu_weights=resident, gpu_forward=fwd)
    else:
        gpu = 0
        running = resident + fwd + shard
        loading = resident + load_extra
        ram = base + max(running, loading)
        parts.update(weights=resident, forward=fwd, load_transient=load_extra)
    if w.convert_gguf_bytes:
        # dequantising holds the GGUF file, the float32 weights and a copy while saving
        conv = BASE_RSS + LOADED_OVERHEAD + w.convert_gguf_bytes + w.shape.weight_bytes("float32")
        parts["gguf_conversion"] = conv
        ram = max(ram, conv)
        notes.append("first use converts the GGUF file into saelab's cache")

    store = w.rows * w.row_bytes  # lossless compression saves ~10-15%: plan for none
    token_bytes = 4 * w.tokens.n_tokens + 16 * w.tokens.n_prompts
    n_shards = -(-w.tokens.n_prompts // max(w.shard_size, 1))
    meta = n_shards * (len(w.hooks) + 4) * 1024
    disk = store + token_bytes + meta + w.attention_pair_bytes
    parts.update(store=store, tokens=token_bytes, attentions=w.attention_pair_bytes)
    if w.convert_gguf_bytes:
        cache = w.shape.weight_bytes("float32")
        parts["model_cache"] = cache
        disk += cache

    seconds: float | None = None
    fwd_tokens = w.tokens.n_tokens + w.tokens.n_prompts * w.generate
    if tokens_per_s:
        seconds = fwd_tokens / tokens_per_s
        parts["tokens_per_s"] = tokens_per_s
    elif flops_per_s:
        flops = w.shape.flops_per_token(max(int(w.tokens.mean_len), 1), n_layers=w.deepest + 1)
        seconds = fwd_tokens * flops / flops_per_s
        parts["flops_per_token"] = flops
        notes.append("time from a FLOP estimate (run without --no-calibrate to measure)")
    if seconds is not None and w.generate:
        n_batches = -(-w.tokens.n_prompts // max(w.batch_size, 1))
        if step_seconds:
            gen = n_batches * w.generate * step_seconds
        else:
            # A decoding step costs a fixed overhead per layer (many small kernels: ~2.3 ms
            # per layer on this CPU, far less on a GPU) plus the batch's matmuls, which run
            # ~3.5x below the probe's rate (memory-bound): measured on SmolLM2, batch 1-16.
            per_layer = 0.00015 if w.device == "cuda" else 0.0023
            flops = w.shape.flops_per_token(w.seq_max, lm_head=True)
            step = w.shape.n_layers * per_layer
            step += w.batch_size * flops * 3.5 / (flops_per_s or 1e10)
            gen = n_batches * w.generate * step
        parts["generate_seconds"] = gen
        seconds += gen
    if seconds is not None:
        write = store / (150 * MB)  # shuffle+zstd measured at 400+ MB/s; keep a margin
        seconds += write + (load_seconds or 0.0)
        if w.convert_gguf_bytes:
            seconds += 25.0
        parts["load_seconds"] = load_seconds or 0.0
    return Estimate("extract", int(ram), int(gpu), int(disk), seconds, parts, notes)


def default_shard_size(w: ExtractWorkload) -> int:
    """Prompts per shard: ~128 MB of stored rows, a whole number of batches."""
    per_prompt = max(w.rows / max(w.tokens.n_prompts, 1), 1) * max(w.row_bytes, 1)
    n = max(int(STORE_SHARD_TARGET // per_prompt), 1)
    n = max(n // w.batch_size, 1) * w.batch_size
    return int(min(n, 4096))


def token_cap(device: str) -> int:
    return GPU_TOKENS_PER_BATCH if device == "cuda" else CPU_TOKENS_PER_BATCH
