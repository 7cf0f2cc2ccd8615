"""The generation-trace store: `RUN/traces/`, one zarr v3 group per prompt shard.

A trace is one prompt, the answer generated for it, and what one forward pass over
prompt+answer showed: hidden states of some hook points and, optionally, attention maps.

    traces/
      zarr.json                    root group; attributes["saelab"]: static store metadata
      shards/zarr.json             empty group (zarr v3 has no implicit groups)
      shards/00000/zarr.json       shard group; attributes n_traces, n_tokens, n_rows, n_pairs
      shards/00000/prompt_index    int64 (n,)      position of each prompt in the prompt table
      shards/00000/prompt_lengths  int32 (n,)      P per trace
      shards/00000/token_ids       int32 (sum T,)  prompt then answer tokens, per trace
      shards/00000/token_offsets   int64 (n+1,)    local offsets into token_ids (T = P + A)
      shards/00000/<hook>          (rows, d)       rows = T per trace (positions "all")
                                                   or A per trace (positions "generated")
      shards/00000/attn.<layer>    (sum heads*T(T+1)/2,)  per trace, head-major: each kept
                                   head's causal lower triangle, row-major (query q, keys 0..q)
      shards/00000/meta.parquet    index, prompt_len, answer_len, answer_text, clean_answer, finish

Every per-trace offset (rows, attention elements) follows from the token offsets and prompt
lengths, so none is stored twice. Attention is packed because its upper triangle is exact
zeros (half of a T x T map, which grows as T^2 and outweighs the hidden states); head-major
order compresses ~10% better than interleaving heads, since one head's neighbouring keys
resemble each other more than different heads do. Attention is stored as float16 unless the
store is float32: softmax weights lie in [0, 1], where float16 keeps 3 more mantissa bits than
bfloat16 and needs none of its range. `keep_bits` rounds hidden states and attentions alike.

Shards are written whole (see `shards.write_shard_group`) and nothing depends on time or write
order, so a resumed run ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saelab.damage import one_line, origin_of
from saelab.errors import SaelabError
from saelab.store.codecs import (
    DTYPES,
    StoreDType,
    check_dtype,
    check_keep_bits,
    codec_description,
    encode_rows,
    filters,
)
from saelab.store.shards import (
    ArraySpec,
    index_spec,
    init_shard_root,
    normalise_meta,
    rows_per_chunk,
    write_shard_group,
)

if TYPE_CHECKING:
    import torch

TRACES_DIR = "traces"
FORMAT = "saelab.traces"
VERSION = 1
POSITIONS = ("all", "generated")
TOKEN_ARRAYS = ("prompt_index", "prompt_lengths", "token_ids", "token_offsets")
META_FILE = "meta.parquet"
ATTN_PREFIX = "attn."
# Chunks hold 0.5-1 MiB: about two to four traces of one hook (T=256, d=576, float16 is
# 295 KB), so a random read decodes little beyond the trace itself, while a shard stays at a
# few hundred files: creating a file costs 0.6-1.6 ms on the machines measured, and 256 KiB
# chunks made writing 100 traces 9.7x faster than gzip+pickle instead of 12.8x (random reads
# of all 30 hooks: 22.6 ms median then, 28 ms now).
_CHUNK_BYTES = 2**20


@dataclass
class Trace:
    """One prompt's generation and the forward pass over prompt+answer, as the writer takes it."""

    index: int  # position of the prompt in the run's prompt table
    prompt_ids: np.ndarray  # (P,) int
    answer_ids: np.ndarray  # (A,) int, A >= 0; EOS included if generated
    answer_text: str
    clean_answer: str  # text up to the first stop string
    finish: str  # "eos" | "length"
    hidden: Mapping[str, torch.Tensor | np.ndarray] = field(default_factory=dict)
    attentions: Mapping[int, torch.Tensor | np.ndarray] = field(default_factory=dict)


def attention_dtype(dt: StoreDType) -> StoreDType:
    """float16 for attention weights unless the store is float32 (see the module docstring)."""
    return DTYPES["float32"] if dt.name == "float32" else DTYPES["float16"]


@lru_cache(maxsize=8)
def tril_mask(t: int) -> np.ndarray:
    """Flat (T*T,) bool mask of the causal lower triangle (key <= query) of a T x T map.

    `square.reshape(heads, T*T)[:, mask]` packs in row-major order (query q, keys 0..q), as
    fast as `np.tril_indices` but with T^2 bytes instead of 3 int64 index arrays; read-only,
    since it is cached.
    """
    mask = np.tri(t, dtype=bool).reshape(-1)
    mask.flags.writeable = False
    return mask


def _shard_name(shard: int) -> str:
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or shard < 0:
        raise ValueError(f"shard index must be a non-negative int, got {shard!r}")
    return f"{int(shard):05d}"


def read_trace_meta(root: Path) -> dict[str, Any] | None:
    """The trace store's static metadata, or None when `root` holds no zarr group at all."""
    path = root / "zarr.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text()).get("attributes", {}).get("saelab")
    except (OSError, ValueError, AttributeError) as e:  # ValueError: bad JSON or UTF-8
        raise origin_of(root, TRACES_DIR, "extract").error(path, one_line(e)) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        what = meta.get("format") if isinstance(meta, dict) else None
        raise SaelabError(
            f"{root} is not a saelab trace store"
            + (f" (it holds {what})" if what else "")
            + "; use another run folder"
        )
    if meta.get("version", 0) > VERSION:
        raise SaelabError(
            f"trace store {root} has format version {meta.get('version')}, newer than this "
            f"saelab reads ({VERSION}); upgrade saelab"
        )
    return meta


def _to_numpy(x: Any) -> np.ndarray:
    """A CPU numpy view of a tensor (float32 unless float16/32 already) or an array."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(t.dtype) not in ("torch.float16", "torch.float32"):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


class TraceWriter:
    """Writes whole shards of traces into the store at `root` (the traces folder itself)."""

    def __init__(
        self,
        root: Path | str,
        *,
        hooks: Sequence[str],
        d_model: Mapping[str, int],
        dtype: str = "float16",
        keep_bits: int | None = None,
        positions: str = "all",
        attention_layers: Sequence[int] = (),
        n_heads: int | None = None,
        heads: Sequence[int] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self._dt = check_dtype(dtype)
        self._adt = attention_dtype(self._dt)
        self.keep_bits = check_keep_bits(keep_bits, self._dt)
        if positions not in POSITIONS:
            raise SaelabError(f"--positions {positions!r} is not known for traces; use {POSITIONS}")
        self.positions = positions
        self.hooks = [str(h) for h in hooks]
        if len(set(self.hooks)) != len(self.hooks):
            raise SaelabError(f"hooks {self.hooks} must be distinct; fix --hooks")
        for h in self.hooks:
            reserved = h in TOKEN_ARRAYS or h in (META_FILE, "zarr.json", "shards")
            if "/" in h or h.startswith(("__", ATTN_PREFIX)) or reserved or not h.strip("."):
                raise SaelabError(f"hook name {h!r} cannot be stored; use a canonical hook name")
            if h not in d_model or int(d_model[h]) < 1:
                raise ValueError(f"d_model has no positive width for hook {h!r}")
        self.d_model = {h: int(d_model[h]) for h in self.hooks}
        self.attention_layers = [int(x) for x in attention_layers]
        if len(set(self.attention_layers)) != len(self.attention_layers) or any(
            x < 0 for x in self.attention_layers
        ):
            raise SaelabError(f"attention layers {self.attention_layers} must be distinct, >= 0")
        self.attention_layers.sort()
        self.n_heads = None if n_heads is None else int(n_heads)
        self.heads: list[int] = []
        if self.attention_layers:
            if self.n_heads is None or self.n_heads < 1:
                raise ValueError("n_heads (the model's attention heads) is needed for attentions")
            self.heads = list(range(self.n_heads)) if heads is None else [int(h) for h in heads]
            bad = [h for h in self.heads if not 0 <= h < self.n_heads]
            if bad or not self.heads or len(set(self.heads)) != len(self.heads):
                raise SaelabError(
                    f"--heads {self.heads}: give distinct heads numbered 0-{self.n_heads - 1}"
                )
        meta = normalise_meta(
            {
                "format": FORMAT,
                "version": VERSION,
                "hooks": self.hooks,
                "d_model": self.d_model,
                "dtype": self._dt.name,
                "storage_dtype": self._dt.storage,
                "keep_bits": self.keep_bits,
                "positions": positions,
                "attention_layers": self.attention_layers,
                "n_heads": self.n_heads,
                "heads": self.heads,
                "attention_dtype": self._adt.name,
                "codec": codec_description(self._dt, self.keep_bits),
                "attention_codec": codec_description(self._adt, self.keep_bits),
                "attrs": dict(attrs or {}),
            }
        )
        init_shard_root(self.root, meta, read_trace_meta(self.root), "trace store")

    def has_shard(self, shard: int) -> bool:
        return (self.root / "shards" / _shard_name(shard) / "zarr.json").is_file()

    def write_shard(self, shard: int, traces: Sequence[Trace]) -> dict[str, str]:
        """Write one shard whole (replacing any earlier one); return {relative path: sha256}.

        Hidden states may be any float dtype, torch or numpy; they are rounded to the store
        dtype here. Attentions are the model's full (n_heads, T, T) softmax maps; the kept heads'
        lower triangles are stored, and a map with real weight above the diagonal is refused
        (it would be silently cut).
        """
        final = self.root / "shards" / _shard_name(shard)
        toks, plen, alen = [], [], []
        for tr in traces:
            p, a = np.asarray(tr.prompt_ids).reshape(-1), np.asarray(tr.answer_ids).reshape(-1)
            for name, ids in (("prompt_ids", p), ("answer_ids", a)):
                if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= 2**31):
                    raise ValueError(f"trace {tr.index}: {name} must be integers in [0, 2**31)")
            toks.append(np.concatenate([p, a]).astype(np.int32))
            plen.append(len(p))
            alen.append(len(a))
            self._check(tr, len(p), len(a))
        n = len(traces)
        lengths = np.asarray([p + a for p, a in zip(plen, alen, strict=True)], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = lengths if self.positions == "all" else np.asarray(alen, dtype=np.int64)
        n_pairs = int((lengths * (lengths + 1) // 2).sum())
        arrays = {
            "prompt_index": np.asarray([int(t.index) for t in traces], dtype=np.int64),
            "prompt_lengths": np.asarray(plen, dtype=np.int32),
            "token_ids": np.concatenate(toks) if toks else np.zeros(0, np.int32),
            "token_offsets": offsets,
        }
        specs = {k: index_spec(v, _CHUNK_BYTES) for k, v in arrays.items()}
        keep = self.keep_bits if self._dt.name != "bfloat16" else None  # bf16 rounds in encode
        for h in self.hooks:
            d = self.d_model[h]
            chunk = rows_per_chunk(d * self._dt.itemsize, int(rows.sum()), _CHUNK_BYTES)
            encode = partial(self._hidden, traces, h)
            specs[h] = ArraySpec(encode, chunk, filters(self._dt, self.keep_bits), keep)
        for layer in self.attention_layers:
            size = len(self.heads) * n_pairs
            chunk = max(1, min(_CHUNK_BYTES // self._adt.itemsize, size))
            encode = partial(self._attention, traces, layer)
            specs[f"{ATTN_PREFIX}{layer}"] = ArraySpec(
                encode, chunk, filters(self._adt, self.keep_bits), self.keep_bits
            )
        attrs = {
            "n_traces": n,
            "n_tokens": int(offsets[-1]),
            "n_rows": int(rows.sum()),
            "n_pairs": n_pairs,
        }
        files = {META_FILE: _meta_table(traces, plen, alen)}
        size = int(rows.sum()) * sum(self.d_model.values()) * self._dt.itemsize
        size += len(self.attention_layers) * len(self.heads) * n_pairs * self._adt.itemsize
        return write_shard_group(
            final,
            specs,
            attrs=attrs,
            base=self.root,
            files=files,
            what=f"trace shard {final.name}",
            size_hint=size + 12 * int(offsets[-1]),
        )

    def _check(self, tr: Trace, p: int, a: int) -> None:
        """Shapes and key sets of one trace, checked before anything is written."""
        if set(tr.hidden) != set(self.hooks):
            miss, extra = set(self.hooks) - set(tr.hidden), set(tr.hidden) - set(self.hooks)
            raise ValueError(f"trace {tr.index}: hidden hooks missing {miss}, extra {extra}")
        rows = p + a if self.positions == "all" else a
        for h in self.hooks:
            if tuple(tr.hidden[h].shape) != (rows, self.d_model[h]):
                raise ValueError(
                    f"trace {tr.index}: hidden[{h!r}] has shape {tuple(tr.hidden[h].shape)}, "
                    f"expected {(rows, self.d_model[h])} (positions={self.positions!r}, "
                    f"P={p}, A={a})"
                )
        if set(int(k) for k in tr.attentions) != set(self.attention_layers):
            raise ValueError(
                f"trace {tr.index}: attention layers {sorted(tr.attentions)} differ from the "
                f"store's {self.attention_layers}"
            )
        t = p + a
        for layer, x in tr.attentions.items():
            if tuple(x.shape) != (self.n_heads, t, t):
                raise ValueError(
                    f"trace {tr.index}: attention of layer {layer} has shape {tuple(x.shape)}, "
                    f"expected {(self.n_heads, t, t)} (all heads, T = P + A)"
                )

    def _hidden(self, traces: Sequence[Trace], hook: str) -> np.ndarray:
        """One hook's rows of every trace, in storage dtype (built only while it is written)."""
        parts = [encode_rows(t.hidden[hook], self._dt, self.keep_bits, hook) for t in traces]
        if not parts:
            return np.zeros((0, self.d_model[hook]), dtype=self._dt.storage)
        return np.concatenate(parts)

    def _attention(self, traces: Sequence[Trace], layer: int) -> np.ndarray:
        """One layer's packed lower triangles of every trace (head-major per trace)."""
        parts = []
        for tr in traces:
            x = _to_numpy(tr.attentions[layer])
            kept = x if self.heads == list(range(x.shape[0])) else x[self.heads]
            t = x.shape[-1]
            packed = kept.reshape(len(self.heads), t * t)[:, tril_mask(t)]
            upper = float(kept.sum(dtype=np.float64) - packed.sum(dtype=np.float64))
            if upper > 0.01 * len(self.heads) * t:
                raise ValueError(
                    f"trace {tr.index}: attention of layer {layer} has weight {upper:.3g} above "
                    "the diagonal; the store keeps causal (lower-triangular) maps only"
                )
            what = f"attention of layer {layer}"
            parts.append(encode_rows(packed, self._adt, self.keep_bits, what).reshape(-1))
        if not parts:
            return np.zeros(0, dtype=self._adt.storage)
        return np.concatenate(parts)


def _meta_table(traces: Sequence[Trace], plen: list[int], alen: list[int]) -> bytes:
    """The shard's per-trace texts as Parquet bytes (same inputs, same bytes: no timestamps)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "index": pa.array([int(t.index) for t in traces], pa.int64()),
            "prompt_len": pa.array(plen, pa.int32()),
            "answer_len": pa.array(alen, pa.int32()),
            "answer_text": pa.array([str(t.answer_text) for t in traces], pa.string()),
            "clean_answer": pa.array([str(t.clean_answer) for t in traces], pa.string()),
            "finish": pa.array([str(t.finish) for t in traces], pa.string()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
