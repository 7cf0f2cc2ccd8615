"""Reading the dense activation store: every complete shard, in shard-index order, as one table
(what every sharded store reader shares is in `sharded`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from saelab.store.activations import STORE_DIR, read_root_meta
from saelab.store.codecs import decode_rows, quiet_numcodecs
from saelab.store.sharded import ShardedStore, open_store


@dataclass(frozen=True)
class ShardSpan:
    shard: int
    prompt_lo: int
    prompt_hi: int
    row_lo: int
    row_hi: int


def _open_array(path: Path) -> zarr.Array:
    with quiet_numcodecs():
        return zarr.open_array(store=str(path), mode="r", zarr_format=3)


def open_activations(path: Path | str) -> ActivationStore:
    """Open an activation store (its folder, or a run folder holding one) for reading."""
    return open_store(path, STORE_DIR, read_root_meta, ActivationStore, "activation store")


class ActivationStore(ShardedStore):
    """Read access to every complete shard, in shard-index order, as one virtual table."""

    what = "activation store"

    def __init__(self, root: Path | str) -> None:
        super().__init__(root, read_root_meta(Path(root)))
        found = self._shard_paths
        pidx, toff, roff = [np.zeros(0, np.int64)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
        rows, tokens, prompts = [0], [0], [0]
        for p in found:
            attrs = json.loads((p / "zarr.json").read_text())["attributes"]
            local = _open_array(p / "token_offsets")[...]
            pidx.append(_open_array(p / "prompt_index")[...])
            toff.append(local[1:] + tokens[-1])
            local_rows = local if self.positions == "all" else np.arange(len(local), dtype=np.int64)
            roff.append(local_rows[1:] + rows[-1])
            prompts.append(prompts[-1] + int(attrs["n_prompts"]))
            tokens.append(tokens[-1] + int(attrs["n_tokens"]))
            rows.append(rows[-1] + int(attrs["n_rows"]))
        self.prompt_index: np.ndarray = np.concatenate(pidx).astype(np.int64)
        self.token_offsets: np.ndarray = np.concatenate(toff)
        self.row_offsets: np.ndarray = np.concatenate(roff)
        self.n_prompts, self.n_tokens, self.n_rows = prompts[-1], tokens[-1], rows[-1]
        self._shard_prompt_starts = np.asarray(prompts, dtype=np.int64)
        self._shard_row_starts = np.asarray(rows, dtype=np.int64)
        self._token_cache: dict[int, np.ndarray] = {}
        self._hook_arrays: dict[str, HookArray] = {}

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
            self._token_cache[s] = _open_array(self._shard_paths[s] / "token_ids")[...]
        base = self.token_offsets[self._shard_prompt_starts[s]]
        lo, hi = self.token_offsets[i] - base, self.token_offsets[i + 1] - base
        return self._token_cache[s][lo:hi]

    def __getitem__(self, hook: str) -> HookArray:
        self.check_hook(hook)
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
        sizes = self.file_sizes()
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
        self._arrays: dict[int, zarr.Array] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"HookArray({self.hook!r}, shape={self.shape}, dtype={self.dtype})"

    def _array(self, s: int) -> zarr.Array:
        if s not in self._arrays:
            self._arrays[s] = _open_array(self._store._shard_paths[s] / self.hook)
        return self._arrays[s]

    def _range(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo:hi, which may span shards."""
        out = np.empty((max(0, hi - lo), self.shape[1]), dtype=np.float32)
        s = int(np.searchsorted(self._starts, lo, side="right")) - 1
        pos = lo
        with quiet_numcodecs():
            while pos < hi:
                a, b = int(self._starts[s]), int(self._starts[s + 1])
                end = min(hi, b)
                if end > pos:
                    out[pos - lo : end - lo] = decode_rows(
                        self._array(s)[pos - a : end - a], self._store._dt
                    )
                pos = max(pos, end)
                s += 1
        return out

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Fancy indexing: one orthogonal read per shard touched, each chunk decoded once."""
        uniq, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(uniq), self.shape[1]), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, uniq, side="right") - 1
        with quiet_numcodecs():
            for s in np.unique(shard_of):
                sel = np.flatnonzero(shard_of == s)
                local = uniq[sel] - self._starts[s]
                rows = self._array(int(s)).get_orthogonal_selection((local, slice(None)))
                out[sel] = decode_rows(rows, self._store._dt)
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
