"""The dense activation store: `RUN/activations/`, a zarr v3 hierarchy written one prompt shard
at a time.

    activations/
      zarr.json                 root group; attributes["saelab"]: the static store metadata
      shards/zarr.json          empty group (zarr v3 has no implicit groups; keeps the tree valid)
      shards/00000/zarr.json    shard group; attributes n_prompts, n_rows, n_tokens
      shards/00000/prompt_index   int64 (n_prompts,)   position in the prompt table
      shards/00000/token_ids      int32 (n_tokens,)    each prompt's tokens, concatenated
      shards/00000/token_offsets  int64 (n_prompts+1,) local offsets into token_ids
      shards/00000/<hook>         (n_rows, d) per hook; rows chunked to ~1-2 MB, full d per chunk

A shard is the unit of work: built in a temporary folder and renamed into place, so a killed run
leaves only whole shards. Nothing in any file depends on time, randomness or write order (JSON is
sorted, compression deterministic), so a resumed run ends byte-identical to an uninterrupted one.
Readers (`reader.py`) see exactly the shard folders present, skipping `.tmp-*` leftovers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saelab.damage import one_line, origin_of
from saelab.errors import SaelabError
from saelab.store.codecs import (
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

STORE_DIR = "activations"
FORMAT = "saelab.activations"
VERSION = 1
POSITIONS = ("all", "last", "mean")
_RESERVED = ("prompt_index", "token_ids", "token_offsets", "zarr.json")
_CHUNK_BYTES = 2**21  # rows per chunk: the power of two giving 1-2 MiB (tests shrink this)


def _shard_name(shard: int) -> str:
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or shard < 0:
        raise ValueError(f"shard index must be a non-negative int, got {shard!r}")
    return f"{int(shard):05d}"


def _rows_per_chunk(d: int, itemsize: int, n_rows: int) -> int:
    return rows_per_chunk(d * itemsize, n_rows, _CHUNK_BYTES)


def read_root_meta(root: Path) -> dict[str, Any] | None:
    """The store's static metadata, or None when `root` holds no saelab activation store."""
    path = root / "zarr.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text()).get("attributes", {}).get("saelab")
    except (OSError, ValueError, AttributeError) as e:  # ValueError: bad JSON or UTF-8
        raise origin_of(root, STORE_DIR, "extract").error(path, one_line(e)) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SaelabError(f"{root} is not a saelab activation store; use another run folder")
    if meta.get("version", 0) > VERSION:
        raise SaelabError(
            f"activation store {root} has format version {meta.get('version')}, newer than this "
            f"saelab reads ({VERSION}); upgrade saelab"
        )
    return meta


class ActivationWriter:
    """Writes whole prompt shards into the store at `root` (the activations folder itself)."""

    def __init__(
        self,
        root: Path | str,
        *,
        hooks: Sequence[str],
        d_model: Mapping[str, int],
        dtype: str = "float16",
        keep_bits: int | None = None,
        positions: str = "all",
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self._dt = check_dtype(dtype)
        self.keep_bits = check_keep_bits(keep_bits, self._dt)
        if positions not in POSITIONS:
            raise SaelabError(f"--positions {positions!r} is not known; use one of {POSITIONS}")
        self.positions = positions
        self.hooks = [str(h) for h in hooks]
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise SaelabError(f"hooks {self.hooks} must be non-empty and distinct; fix --hooks")
        for h in self.hooks:
            if "/" in h or h.startswith("__") or h in _RESERVED or not h.strip("."):
                raise SaelabError(f"hook name {h!r} cannot be stored; use a canonical hook name")
            if h not in d_model or int(d_model[h]) < 1:
                raise ValueError(f"d_model has no positive width for hook {h!r}")
        self.d_model = {h: int(d_model[h]) for h in self.hooks}
        meta = normalise_meta(
            {
                "format": FORMAT,
                "version": VERSION,
                "hooks": self.hooks,
                "d_model": self.d_model,
                "dtype": self._dt.name,
                "storage_dtype": self._dt.storage,
                "positions": positions,
                "keep_bits": self.keep_bits,
                "codec": codec_description(self._dt, self.keep_bits),
                "attrs": dict(attrs or {}),
            }
        )
        init_shard_root(self.root, meta, read_root_meta(self.root), "activation store")

    def has_shard(self, shard: int) -> bool:
        return (self.root / "shards" / _shard_name(shard) / "zarr.json").is_file()

    def write_shard(
        self,
        shard: int,
        *,
        prompt_index: np.ndarray,
        token_ids: Sequence[np.ndarray],
        acts: Mapping[str, torch.Tensor | np.ndarray],
    ) -> dict[str, str]:
        """Write one shard whole (replacing any earlier one); return {relative path: sha256}.

        `acts[hook]` holds only real tokens (no padding): one row per token for positions "all",
        one per prompt otherwise. Any float dtype, torch or numpy; rounded to the store dtype here.
        """
        final = self.root / "shards" / _shard_name(shard)
        pidx = np.asarray(prompt_index)
        if pidx.ndim != 1 or (pidx.size and pidx.dtype.kind not in "iu"):
            raise ValueError(f"prompt_index must be a 1-D integer array, got {pidx.dtype}")
        n_prompts = len(pidx)
        if len(token_ids) != n_prompts:
            raise ValueError(f"{len(token_ids)} token_ids arrays for {n_prompts} prompts")
        toks = [np.asarray(t).reshape(-1) for t in token_ids]
        offsets = np.zeros(n_prompts + 1, dtype=np.int64)
        np.cumsum([len(t) for t in toks], out=offsets[1:])
        n_tokens = int(offsets[-1])
        flat = np.concatenate(toks) if toks else np.zeros(0, dtype=np.int32)
        if flat.size and (flat.dtype.kind not in "iu" or flat.min() < 0 or flat.max() >= 2**31):
            raise ValueError("token_ids must be non-negative integers below 2**31")
        n_rows = n_tokens if self.positions == "all" else n_prompts
        if set(acts) != set(self.hooks):
            missing, extra = set(self.hooks) - set(acts), set(acts) - set(self.hooks)
            raise ValueError(f"acts hooks differ from the store: missing {missing}, extra {extra}")
        for h in self.hooks:
            shape = tuple(acts[h].shape)
            if shape != (n_rows, self.d_model[h]):
                raise ValueError(
                    f"acts[{h!r}] has shape {shape}, expected {(n_rows, self.d_model[h])} "
                    f"(positions={self.positions!r}, {n_prompts} prompts, {n_tokens} tokens)"
                )
        arrays = {
            "prompt_index": index_spec(pidx.astype(np.int64), _CHUNK_BYTES),
            "token_ids": index_spec(flat.astype(np.int32), _CHUNK_BYTES),
            "token_offsets": index_spec(offsets, _CHUNK_BYTES),
        }
        # bfloat16 bits are rounded in encode_rows; BitRound works on float16/float32 only
        keep = self.keep_bits if self._dt.name != "bfloat16" else None
        for h in self.hooks:
            arrays[h] = ArraySpec(
                partial(encode_rows, acts[h], self._dt, self.keep_bits, h),
                _rows_per_chunk(self.d_model[h], self._dt.itemsize, n_rows),
                filters(self._dt, self.keep_bits),
                keep,
            )
        attrs = {"n_prompts": n_prompts, "n_rows": n_rows, "n_tokens": n_tokens}
        size = n_rows * sum(self.d_model.values()) * self._dt.itemsize + 12 * n_tokens
        return write_shard_group(
            final,
            arrays,
            attrs=attrs,
            base=self.root,
            what=f"activation shard {final.name}",
            size_hint=size,
        )
