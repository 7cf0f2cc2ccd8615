"""Reading generation traces: `open_traces` gives numpy arrays, one trace at a time.

`TraceDataset` (torch tensors, batching, attention graphs) is in `trace_dataset`, so reading
a store with numpy alone never imports torch.

Only zarr chunks, JSON and Parquet are read, never a pickle, so a trace store from anyone is
safe to open. Opening reads the small per-shard index arrays once; a trace's hidden states or
attention maps are then one row-range read of the chunks that hold them (arrays are opened
once per shard and kept), so random access costs milliseconds, not a shard.
Readers never modify the store: a `.tmp-*` folder may be a shard being written right now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saelab.damage import one_line, origin_of
from saelab.errors import SaelabError
from saelab.run import TMP_PREFIX
from saelab.store.chunks import ChunkReader
from saelab.store.codecs import check_dtype, decode_rows
from saelab.store.reader import check_offsets, check_shape, shard_attrs
from saelab.store.traces import (
    ATTN_PREFIX,
    META_FILE,
    TOKEN_ARRAYS,
    TRACES_DIR,
    attention_dtype,
    read_trace_meta,
    tril_mask,
)


def open_traces(path: Path | str) -> TraceStore:
    """Open the trace store of a run folder (or the traces folder itself) for reading."""
    p = Path(path)
    for root in (p, p / TRACES_DIR):
        if read_trace_meta(root) is not None:
            return TraceStore(root)
    run = p.parent if p.name == TRACES_DIR else p
    raise SaelabError(
        f"no generation traces at {p}; record them with `saelab extract --generate N --run {run}`"
    )


def _stats(x: np.ndarray) -> dict[str, float | int | None]:
    if not len(x):
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(x.mean()), "min": int(x.min()), "max": int(x.max())}


class TraceStore:
    """Read access to every complete shard of a trace store, traces in shard order."""

    def __init__(self, root: Path | str) -> None:
        self.path = Path(root)
        meta = read_trace_meta(self.path)
        if meta is None:
            raise SaelabError(f"no generation traces at {self.path}")
        self.origin = origin_of(self.path, TRACES_DIR, "extract --generate")
        try:
            self.hooks: list[str] = [str(h) for h in meta["hooks"]]
            self.d_model: dict[str, int] = {h: int(meta["d_model"][h]) for h in self.hooks}
            self.dtype: str = str(meta["dtype"])
            self.keep_bits: int | None = meta["keep_bits"]
            self.positions: str = str(meta["positions"])
            self.attention_layers: list[int] = [int(x) for x in meta["attention_layers"]]
            self.heads: list[int] = [int(h) for h in meta["heads"]]
            self.n_heads: int | None = meta["n_heads"]
            self.attrs: dict[str, Any] = dict(meta.get("attrs", {}))
            self._dt = check_dtype(self.dtype)
        except (KeyError, TypeError, ValueError, SaelabError) as e:
            raise self.origin.error(self.path / "zarr.json", one_line(e)) from e
        self._adt = attention_dtype(self._dt)
        shard_dir = self.path / "shards"
        found = sorted(
            (p for p in (shard_dir.iterdir() if shard_dir.is_dir() else ()) if p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        self._shards = [p for p in found if (p / "zarr.json").is_file()]  # never .tmp-*
        self.shard_ids: list[int] = [int(p.name) for p in self._shards]
        self._arrays: dict[tuple[int, str], ChunkReader] = {}
        self._tokens: dict[int, np.ndarray] = {}
        self._texts: dict[int, dict[str, list[Any]]] = {}
        idx, plen, tlen, shard_of = [], [], [], []
        self._attrs: list[dict[str, int]] = []
        for s, p in enumerate(self._shards):
            attrs = shard_attrs(p, ("n_traces", "n_tokens", "n_rows", "n_pairs"), self.origin)
            self._attrs.append(attrs)
            n = attrs["n_traces"]
            idx.append(self._index(s, "prompt_index", n))
            plen.append(self._index(s, "prompt_lengths", n))
            offsets = self._index(s, "token_offsets", n + 1)
            check_offsets(offsets, n, attrs["n_tokens"], p / "token_offsets", self.origin)
            tlen.append(np.diff(offsets))
            if (plen[-1] < 0).any() or (plen[-1] > tlen[-1]).any():
                raise self.origin.error(p / "prompt_lengths", "prompt longer than its trace")
            shard_of.append(np.full(n, s, dtype=np.int64))
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        self.indices: np.ndarray = cat(idx).astype(np.int64)
        self.prompt_lengths: np.ndarray = cat(plen)
        self.lengths: np.ndarray = cat(tlen)  # T = P + A per trace
        self.answer_lengths: np.ndarray = self.lengths - self.prompt_lengths
        self.n_traces: int = len(self.indices)
        self._shard_of = cat(shard_of)
        rows = self.lengths if self.positions == "all" else self.answer_lengths
        pairs = len(self.heads) * self.lengths * (self.lengths + 1) // 2
        # each trace's start in its shard's arrays: tokens, hidden rows, attention elements
        self._local = np.zeros((3, self.n_traces + 1), dtype=np.int64)
        for k, size in enumerate((self.lengths, rows, pairs)):
            np.cumsum(size, out=self._local[k, 1:])
        self._first = np.searchsorted(self._shard_of, np.arange(len(self._shards)))
        self._local[:, :-1] -= self._local[:, self._first[self._shard_of]]

    def __len__(self) -> int:
        return self.n_traces

    def __repr__(self) -> str:
        return (
            f"TraceStore({str(self.path)!r}, {self.n_traces} traces, hooks={self.hooks}, "
            f"attention_layers={self.attention_layers}, {self.dtype}, positions={self.positions!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to DataLoader workers) without open arrays or caches: each reopens lazily."""
        state = dict(self.__dict__)
        state.update(_arrays={}, _tokens={}, _texts={})
        return state

    @property
    def run(self) -> Path:
        return self.path.parent if self.path.name == TRACES_DIR else self.path

    def _array(self, s: int, name: str) -> ChunkReader:
        """Shard s's array `name`, opened once (its metadata parsed once) and kept."""
        key = (s, name)
        if key not in self._arrays:
            reader = ChunkReader(self._shards[s] / name, self.origin)
            a = self._attrs[s]
            heads = len(self.heads)
            want = {
                "token_ids": (a["n_tokens"],),
                **{h: (a["n_rows"], self.d_model[h]) for h in self.hooks},
                **{f"{ATTN_PREFIX}{x}": (heads * a["n_pairs"],) for x in self.attention_layers},
            }.get(name)
            self._arrays[key] = reader if want is None else check_shape(reader, want, self.origin)
        return self._arrays[key]

    def _index(self, s: int, name: str, n: int) -> np.ndarray:
        reader = check_shape(self._array(s, name), (n,), self.origin)
        return reader.rows(0, n).astype(np.int64)

    def _all(self, s: int, name: str) -> np.ndarray:
        arr = self._array(s, name)
        return arr.rows(0, arr.shape[0])

    def _locate(self, i: int) -> tuple[int, int]:
        """(shard position, global trace number) of trace i (negative counts from the end)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"trace index must be an int, not {type(i).__name__}")
        if not -self.n_traces <= i < self.n_traces:
            raise IndexError(f"trace {i} out of range for {self.n_traces} stored traces")
        i = int(i) % self.n_traces
        return int(self._shard_of[i]), i

    def check_hook(self, hook: str) -> str:
        if hook not in self.d_model:
            raise SaelabError(
                f"hook {hook!r} is not in trace store {self.path}; "
                f"stored hooks: {', '.join(self.hooks) or 'none'}"
            )
        return hook

    def require_attentions(self) -> None:
        if not self.attention_layers:
            raise SaelabError(
                f"run {self.run} was recorded without attentions; re-run "
                "`saelab extract --generate N --attentions LAYERS`"
            )

    def check_layer(self, layer: int) -> int:
        self.require_attentions()
        if isinstance(layer, bool) or int(layer) not in self.attention_layers:
            raise SaelabError(
                f"attention layer {layer!r} is not in trace store {self.path}; stored layers: "
                + ", ".join(map(str, self.attention_layers))
            )
        return int(layer)

    def _tokens_of(self, i: int) -> np.ndarray:
        s, i = self._locate(i)
        if s not in self._tokens:
            self._tokens[s] = self._all(s, "token_ids").astype(np.int64)
        lo = int(self._local[0, i])
        return self._tokens[s][lo : lo + int(self.lengths[i])]

    def prompt_ids(self, i: int) -> np.ndarray:
        _, i = self._locate(i)
        return self._tokens_of(i)[: int(self.prompt_lengths[i])]

    def answer_ids(self, i: int) -> np.ndarray:
        _, i = self._locate(i)
        return self._tokens_of(i)[int(self.prompt_lengths[i]) :]

    def texts(self, i: int) -> dict[str, str]:
        """answer_text, clean_answer and finish of trace i (the shard's Parquet table, cached)."""
        s, i = self._locate(i)
        if s not in self._texts:
            import pyarrow.parquet as pq

            cols = ["answer_text", "clean_answer", "finish"]
            path = self._shards[s] / META_FILE
            try:
                table = pq.read_table(path, columns=cols).to_pydict()
            except Exception as e:  # pyarrow raises ArrowInvalid, OSError, KeyError, ...
                raise self.origin.error(path, one_line(e)) from e
            if any(len(v) != self._attrs[s]["n_traces"] for v in table.values()):
                raise self.origin.error(path, "row count differs from the shard's traces")
            self._texts[s] = table
        j = i - int(self._first[s])
        return {k: v[j] for k, v in self._texts[s].items()}

    def hidden(self, i: int, hook: str) -> np.ndarray:
        """Hidden states of trace i at `hook`, float32 (T or A rows per `positions`, d)."""
        self.check_hook(hook)
        s, i = self._locate(i)
        lo = int(self._local[1, i])
        n = int(self.lengths[i] if self.positions == "all" else self.answer_lengths[i])
        return decode_rows(self._array(s, hook).rows(lo, lo + n), self._dt)

    def attention_packed(self, i: int, layer: int) -> np.ndarray:
        """Kept heads' causal lower triangles of trace i, float32 (heads, T(T+1)/2), row-major."""
        layer = self.check_layer(layer)
        s, i = self._locate(i)
        t = int(self.lengths[i])
        lo, n = int(self._local[2, i]), len(self.heads) * t * (t + 1) // 2
        flat = self._array(s, f"{ATTN_PREFIX}{layer}").rows(lo, lo + n)
        return decode_rows(flat, self._adt).reshape(len(self.heads), -1)

    def attention(self, i: int, layer: int) -> np.ndarray:
        """Attention map of trace i, float32 (heads, T, T); the upper triangle is zeros."""
        packed = self.attention_packed(i, layer)
        t = int(self.lengths[self._locate(i)[1]])
        out = np.zeros((len(self.heads), t * t), dtype=np.float32)
        out[:, tril_mask(t)] = packed
        return out.reshape(len(self.heads), t, t)

    def summary(self) -> dict[str, Any]:
        """Sizes: every file is counted once, in hidden, attentions, tokens or meta.

        bytes_raw is what dense storage of the same values in the store's dtypes would take
        (hidden rows x d, attentions as full T x T squares per kept head), the usual baseline
        of pickled tensors; ratio = bytes_raw / bytes_on_disk.
        """
        split = {"hidden": 0, "attentions": 0, "tokens": 0, "meta": 0}
        per_array: dict[str, int] = {}
        for f in self.path.rglob("*"):
            rel = f.relative_to(self.path).parts
            if not f.is_file() or any(p.startswith(TMP_PREFIX) for p in rel):
                continue
            size = f.stat().st_size
            name = rel[2] if len(rel) > 3 and rel[0] == "shards" else ""
            per_array[name] = per_array.get(name, 0) + size
            if name in self.d_model:
                split["hidden"] += size
            elif name.startswith(ATTN_PREFIX):
                split["attentions"] += size
            elif name in TOKEN_ARRAYS:
                split["tokens"] += size
            else:  # group metadata, meta.parquet
                split["meta"] += size
        n_rows = int((self.lengths if self.positions == "all" else self.answer_lengths).sum())
        hooks = {
            h: {
                "shape_per_token": [self.d_model[h]],
                "dtype": self.dtype,
                "bytes": per_array.get(h, 0),
                "bytes_raw": n_rows * self.d_model[h] * self._dt.itemsize,
            }
            for h in self.hooks
        }
        per_value = len(self.heads) * self._adt.itemsize
        square = int((self.lengths**2).sum()) * per_value
        packed = int((self.lengths * (self.lengths + 1) // 2).sum()) * per_value
        attentions = {
            layer: {
                "dtype": self._adt.name,
                "bytes": per_array.get(f"{ATTN_PREFIX}{layer}", 0),
                "bytes_raw": square,
                "bytes_packed_raw": packed,
            }
            for layer in self.attention_layers
        }
        disk = sum(split.values())
        raw = sum(v["bytes_raw"] for v in hooks.values()) + square * len(self.attention_layers)
        n = max(self.n_traces, 1)
        return {
            "path": str(self.path),
            "n_traces": self.n_traces,
            "shards": len(self._shards),
            "dtype": self.dtype,
            "keep_bits": self.keep_bits,
            "positions": self.positions,
            "hooks": hooks,
            "attention_layers": self.attention_layers,
            "heads": self.heads,
            "attentions": attentions,
            "answer_len": _stats(self.answer_lengths),
            "prompt_len": _stats(self.prompt_lengths),
            "bytes": split,
            "bytes_per_trace": {k: v / n for k, v in split.items()},
            "bytes_on_disk": disk,
            "bytes_raw": raw,
            "ratio": raw / disk if disk else None,
        }


def __getattr__(name: str) -> Any:
    """`TraceDataset` lives in trace_dataset (it needs torch); importable from here too."""
    if name == "TraceDataset":
        from saelab.store.trace_dataset import TraceDataset

        return TraceDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
