"""Reading the dense activation store: every complete shard, in shard-index order, as one table.

Readers never modify the store: a `.tmp-*` folder may be a shard another process is writing
right now, so it is skipped, not removed (removing debris is the writer's job).

Chunks are read by `ChunkReader` (the store's own decoder, zarr's for other chains), so a
missing or damaged chunk is a one-line error naming the file, never zeros or wrong values;
the small index arrays are checked against the shard's attributes when the store is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.damage import Origin, one_line, origin_of
from saelab.errors import SaelabError
from saelab.run import TMP_PREFIX
from saelab.store.activations import STORE_DIR, read_root_meta
from saelab.store.chunks import ChunkReader
from saelab.store.codecs import StoreDType, check_dtype, decode_rows


@dataclass(frozen=True)
class ShardSpan:
    shard: int
    prompt_lo: int
    prompt_hi: int
    row_lo: int
    row_hi: int


def shard_attrs(shard: Path, keys: tuple[str, ...], origin: Origin) -> dict[str, int]:
    """A shard group's integer attributes (n_prompts, ...), or one line naming its zarr.json."""
    path = shard / "zarr.json"
    try:
        attrs = json.loads(path.read_text())["attributes"]
        out = {k: int(attrs[k]) for k in keys}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise origin.error(path, one_line(e)) from e
    if min(out.values(), default=0) < 0:
        raise origin.error(path, f"negative sizes {out}")
    return out


def check_offsets(offsets: np.ndarray, n: int, total: int, what: Path, origin: Origin) -> None:
    """Offsets into a concatenation: n+1 of them, from 0 to `total`, never decreasing."""
    ok = (
        offsets.ndim == 1
        and len(offsets) == n + 1
        and offsets[0] == 0
        and offsets[-1] == total
        and bool((np.diff(offsets) >= 0).all())
    )
    if not ok:
        raise origin.error(what, f"offsets do not run from 0 to {total} over {n} items")


def check_shape(reader: ChunkReader, shape: tuple[int, ...], origin: Origin) -> ChunkReader:
    if reader.shape != shape:
        raise origin.error(
            reader.path / "zarr.json", f"shape {list(reader.shape)}, expected {list(shape)}"
        )
    return reader


def open_activations(path: Path | str) -> ActivationStore:
    """Open the store of a run folder (or the activations folder itself) for reading."""
    p = Path(path)
    for root in (p, p / STORE_DIR):
        if read_root_meta(root) is not None:
            return ActivationStore(root)
    run = p.parent if p.name == STORE_DIR else p
    raise SaelabError(f"no activation store at {p}; run `saelab extract --run {run}` first")


class ActivationStore:
    """Read access to every complete shard, in shard-index order, as one virtual table."""

    def __init__(self, root: Path | str) -> None:
        self.path = Path(root)
        self.origin = origin_of(self.path, STORE_DIR, "extract")
        meta = read_root_meta(self.path)
        if meta is None:
            raise SaelabError(f"no activation store at {self.path}; run `saelab extract` first")
        try:
            self.hooks: list[str] = [str(h) for h in meta["hooks"]]
            self.d_model: dict[str, int] = {h: int(meta["d_model"][h]) for h in self.hooks}
            self.dtype: str = str(meta["dtype"])
            self._dt: StoreDType = check_dtype(self.dtype)
            self.positions: str = str(meta["positions"])
            self.keep_bits: int | None = meta["keep_bits"]
            self.attrs: dict[str, Any] = dict(meta.get("attrs", {}))
        except (KeyError, TypeError, ValueError, SaelabError) as e:
            raise self.origin.error(self.path / "zarr.json", one_line(e)) from e
        shard_dir = self.path / "shards"
        found = []
        if shard_dir.is_dir():
            found = [
                p
                for p in shard_dir.iterdir()
                if p.name.isdigit() and (p / "zarr.json").is_file()  # never a .tmp-* folder
            ]
        found.sort(key=lambda p: int(p.name))
        self.shard_ids: list[int] = [int(p.name) for p in found]
        self._shard_paths = found
        pidx, toff, roff = [np.zeros(0, np.int64)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
        rows, tokens, prompts = [0], [0], [0]
        self._attrs: list[dict[str, int]] = []
        for p in found:
            attrs = shard_attrs(p, ("n_prompts", "n_tokens", "n_rows"), self.origin)
            self._attrs.append(attrs)
            n = attrs["n_prompts"]
            local = self._index(p, "token_offsets", n + 1)
            check_offsets(local, n, attrs["n_tokens"], p / "token_offsets", self.origin)
            pidx.append(self._index(p, "prompt_index", n))
            toff.append(local[1:] + tokens[-1])
            local_rows = local if self.positions == "all" else np.arange(len(local), dtype=np.int64)
            if int(local_rows[-1]) != attrs["n_rows"]:
                raise self.origin.error(p / "zarr.json", f"n_rows {attrs['n_rows']} disagrees")
            roff.append(local_rows[1:] + rows[-1])
            prompts.append(prompts[-1] + n)
            tokens.append(tokens[-1] + attrs["n_tokens"])
            rows.append(rows[-1] + attrs["n_rows"])
        self.prompt_index: np.ndarray = np.concatenate(pidx).astype(np.int64)
        self.token_offsets: np.ndarray = np.concatenate(toff)
        self.row_offsets: np.ndarray = np.concatenate(roff)
        self.n_prompts, self.n_tokens, self.n_rows = prompts[-1], tokens[-1], rows[-1]
        self._shard_prompt_starts = np.asarray(prompts, dtype=np.int64)
        self._shard_row_starts = np.asarray(rows, dtype=np.int64)
        self._token_cache: dict[int, np.ndarray] = {}
        self._hook_arrays: dict[str, HookArray] = {}

    def _index(self, shard: Path, name: str, n: int) -> np.ndarray:
        """A shard's 1-D index array, checked to hold `n` values."""
        reader = check_shape(ChunkReader(shard / name, self.origin), (n,), self.origin)
        return reader.rows(0, n).astype(np.int64)

    def reader(self, s: int, name: str, rows: int | None = None) -> ChunkReader:
        """Shard position s's array `name`, its shape checked (rows x the hook's width)."""
        width = () if name not in self.d_model else (self.d_model[name],)
        n = self._attrs[s]["n_rows"] if rows is None else rows
        reader = ChunkReader(self._shard_paths[s] / name, self.origin)
        return check_shape(reader, (n, *width), self.origin)

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, {len(self.hooks)} hooks, {self.n_prompts} "
            f"prompts, {self.n_rows} rows, {self.dtype}, positions={self.positions!r})"
        )

    def _prompt_shard(self, i: int) -> tuple[int, int]:
        if not -self.n_prompts <= i < self.n_prompts:
            raise IndexError(f"prompt {i} out of range for {self.n_prompts} stored prompts")
        i %= self.n_prompts
        s = int(np.searchsorted(self._shard_prompt_starts, i, side="right")) - 1
        return s, i

    def tokens(self, i: int) -> np.ndarray:
        s, i = self._prompt_shard(i)
        if s not in self._token_cache:
            n = self._attrs[s]["n_tokens"]
            self._token_cache[s] = self.reader(s, "token_ids", n).rows(0, n)
        base = self.token_offsets[self._shard_prompt_starts[s]]
        lo, hi = self.token_offsets[i] - base, self.token_offsets[i + 1] - base
        return self._token_cache[s][lo:hi]

    def __getitem__(self, hook: str) -> HookArray:
        if hook not in self.d_model:
            raise SaelabError(
                f"hook {hook!r} is not in activation store {self.path}; "
                f"stored hooks: {', '.join(self.hooks)}"
            )
        if hook not in self._hook_arrays:
            self._hook_arrays[hook] = HookArray(self, hook)
        return self._hook_arrays[hook]

    def shards(self) -> list[ShardSpan]:
        """Each complete shard's id and its prompt and row ranges in the whole table: the
        unit of work of stages that go shard by shard (encode) and resume per shard."""
        return [
            ShardSpan(
                sid,
                int(self._shard_prompt_starts[k]),
                int(self._shard_prompt_starts[k + 1]),
                int(self._shard_row_starts[k]),
                int(self._shard_row_starts[k + 1]),
            )
            for k, sid in enumerate(self.shard_ids)
        ]

    def prompt(self, hook: str, i: int) -> np.ndarray:
        _, i = self._prompt_shard(i)
        return self[hook][int(self.row_offsets[i]) : int(self.row_offsets[i + 1])]

    def summary(self) -> dict[str, Any]:
        """Sizes and ratios. Per hook, bytes_raw is rows*d*itemsize; the totals' bytes_on_disk
        counts every file of the store (token ids, metadata too), bytes_raw the activations only,
        so the total ratio is what the store costs against raw activations."""
        sizes: dict[str, int] = {}
        for f in self.path.rglob("*"):
            rel = f.relative_to(self.path)
            if f.is_file() and not any(part.startswith(TMP_PREFIX) for part in rel.parts):
                sizes[rel.as_posix()] = f.stat().st_size
        hooks: dict[str, Any] = {}
        for h in self.hooks:
            disk = sum(
                n for k, n in sizes.items() if k.startswith("shards/") and k.split("/")[2:3] == [h]
            )
            raw = self.n_rows * self.d_model[h] * self._dt.itemsize
            hooks[h] = {
                "shape": [self.n_rows, self.d_model[h]],
                "dtype": self.dtype,
                "bytes_on_disk": disk,
                "bytes_raw": raw,
                "ratio": raw / disk if disk else None,
            }
        disk = sum(sizes.values())
        raw = sum(v["bytes_raw"] for v in hooks.values())
        return {
            "path": str(self.path),
            "positions": self.positions,
            "dtype": self.dtype,
            "keep_bits": self.keep_bits,
            "n_prompts": self.n_prompts,
            "n_tokens": self.n_tokens,
            "n_rows": self.n_rows,
            "shards": len(self.shard_ids),
            "hooks": hooks,
            "bytes_on_disk": disk,
            "bytes_raw": raw,
            "ratio": raw / disk if disk else None,
        }


class HookArray:
    """One hook's rows over all shards, read as float32 without loading the rest."""

    def __init__(self, store: ActivationStore, hook: str) -> None:
        self._store = store
        self.hook = hook
        self.shape: tuple[int, int] = (store.n_rows, store.d_model[hook])
        self.dtype: str = store.dtype
        self._starts = store._shard_row_starts
        self._arrays: dict[int, ChunkReader] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"HookArray({self.hook!r}, shape={self.shape}, dtype={self.dtype})"

    def _array(self, s: int) -> ChunkReader:
        if s not in self._arrays:
            self._arrays[s] = self._store.reader(s, self.hook)
        return self._arrays[s]

    def _range(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo:hi, which may span shards."""
        out = np.empty((max(0, hi - lo), self.shape[1]), dtype=np.float32)
        s = int(np.searchsorted(self._starts, lo, side="right")) - 1
        pos = lo
        while pos < hi:
            a, b = int(self._starts[s]), int(self._starts[s + 1])
            end = min(hi, b)
            if end > pos:
                out[pos - lo : end - lo] = decode_rows(
                    self._array(s).rows(pos - a, end - a), self._store._dt
                )
            pos = max(pos, end)
            s += 1
        return out

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Fancy indexing: one orthogonal read per shard touched, each chunk decoded once."""
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), self.shape[1]), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, uniq, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = uniq[sel] - self._starts[s]
            out[sel] = decode_rows(self._array(int(s)).take(local), self._store._dt)
        return out[inverse.reshape(-1)]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -n <= key < n:
                raise IndexError(f"row {key} out of range for {n} rows of {self.hook}")
            k = int(key) % n
            return self._range(k, k + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._range(start, max(start, stop))
            key = np.arange(start, stop, step)
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} rows")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise IndexError(f"index rows with an int, a slice or a 1-D int array, not {key!r}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows of {self.hook}")
        return self._take(np.where(idx < 0, idx + n, idx))

    def iter_chunks(self, rows: int = 65536) -> Iterator[np.ndarray]:
        """Sequential float32 blocks of `rows` rows (the last may be shorter), across shards."""
        for lo in range(0, self.shape[0], rows):
            yield self._range(lo, min(self.shape[0], lo + rows))

    def to_numpy(self) -> np.ndarray:
        return self._range(0, self.shape[0])
