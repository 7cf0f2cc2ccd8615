"""Writing one shard group of a zarr v3 store whole: the unit of work of every dense store.

Both the activation store and the generation-trace store write a shard as a zarr group of
row-chunked arrays (plus, for traces, a Parquet table), built in a temporary folder and
renamed into place by `atomic_dir`, so a killed writer leaves either the whole shard or
nothing. The array metadata (`zarr.json`) comes from zarr itself, so any zarr reader sees a
normal group; the chunk files come from `chunks.write_chunks`, which produces the bytes zarr
would and hashes them as it writes (zarr's own write path costs ~3x the codec work).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from saelab.errors import SaelabError
from saelab.nospace import disk_space_for
from saelab.run import atomic_dir, atomic_write_json, file_digest, remove_debris
from saelab.store.chunks import KEY_ENCODING, ChunkEncoder, write_chunks
from saelab.store.codecs import ZSTD_LEVEL, compressors, quiet_numcodecs


@dataclass(frozen=True)
class ArraySpec:
    """One array of a shard group: the stored values and how they are chunked and encoded.

    `data` is already in its storage dtype (bfloat16 as uint16 bits), 1-D or 2-D, or a function
    returning it, called only when the array is written so that a shard of many hooks holds one
    encoded copy at a time rather than all of them; chunks span
    `chunk_rows` rows and the full width, which keeps a row range one contiguous read.
    `filters` is what zarr records in the array metadata (e.g. numcodecs BitRound) and
    `keep_bits` what the chunk encoder applies to match it; they must agree.
    """

    data: np.ndarray | Callable[[], np.ndarray]
    chunk_rows: int
    filters: list[Any] | str | None = "auto"  # zarr's default: no filter for numbers
    keep_bits: int | None = None


def rows_per_chunk(row_bytes: int, n_rows: int, chunk_bytes: int) -> int:
    """The power of two of rows that fills `chunk_bytes / 2 .. chunk_bytes` (at least one row).

    A power of two keeps chunk boundaries identical whatever the shard size, so the files of a
    shard depend only on its own contents.
    """
    r = max(1, chunk_bytes // max(1, row_bytes))
    return max(1, min(1 << (r.bit_length() - 1), n_rows))


def index_spec(data: np.ndarray, chunk_bytes: int) -> ArraySpec:
    """A 1-D index array (ids, offsets) chunked to at most `chunk_bytes`."""
    chunk = max(1, min(chunk_bytes // data.dtype.itemsize, len(data)))
    return ArraySpec(data, chunk)


def write_shard_group(
    final: Path,
    arrays: Mapping[str, ArraySpec],
    *,
    attrs: dict[str, Any],
    base: Path,
    files: Mapping[str, bytes] | None = None,
    what: str | None = None,
    size_hint: int | None = None,
) -> dict[str, str]:
    """Write a zarr v3 group at `final` atomically; return {path relative to `base`: sha256}.

    Arrays are created in the order given; `files` are extra files (e.g. a Parquet table) put
    into the group folder before the rename, so they appear together with the arrays. An
    existing `final` is replaced. Nothing written depends on time or order of calls, so
    rewriting a shard with the same inputs gives the same bytes. A full disk removes the
    temporary folder and is one SaelabError naming `what` and the space needed (`size_hint`,
    e.g. the shard's uncompressed size, else what the arrays seen so far hold).
    """
    prefix = final.relative_to(base).as_posix()
    digests: dict[str, str] = {}
    workers = max(1, min(os.cpu_count() or 1, 8))
    raw = [sum(len(b) for b in (files or {}).values())]
    with (
        disk_space_for(what or f"shard {final.name}", final, lambda: size_hint or raw[0]),
        atomic_dir(final) as tmp,
        ThreadPoolExecutor(workers) as pool,
    ):
        _write_json(
            tmp / "zarr.json", {"attributes": attrs, "zarr_format": 3, "node_type": "group"}
        )
        for name, spec in arrays.items():
            data = spec.data() if callable(spec.data) else spec.data
            raw[0] += data.nbytes
            meta = array_metadata(data, spec.chunk_rows, spec.filters)
            (tmp / name).mkdir()  # (write_chunks would too; the metadata goes in first)
            _write_json(tmp / name / "zarr.json", meta)
            enc = ChunkEncoder(data.dtype.itemsize, ZSTD_LEVEL, spec.keep_bits)
            digests.update(write_chunks(tmp / name, data, spec.chunk_rows, enc, tmp, pool=pool))
        for rel, payload in (files or {}).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
            digests[rel] = file_digest(path)
        for meta_file in tmp.rglob("zarr.json"):
            digests[meta_file.relative_to(tmp).as_posix()] = file_digest(meta_file)
    return {f"{prefix}/{k}": v for k, v in sorted(digests.items())}


def array_metadata(data: np.ndarray, chunk_rows: int, filters: Any) -> dict[str, Any]:
    """The `zarr.json` of a row-chunked array, as zarr itself writes it.

    zarr builds the metadata of each distinct (dtype, rank, filters) once, in memory; arrays
    then only change shape and chunk shape. Creating every array through zarr cost ~3 ms
    each, a sixth of a trace shard's write time.
    """
    key = (data.dtype.str, data.ndim, repr(filters))
    template = _TEMPLATES.get(key)
    if template is None:
        with quiet_numcodecs():
            store = zarr.storage.MemoryStore()
            zarr.create_array(
                store=store,
                shape=(1, *data.shape[1:]) if data.ndim > 1 else (1,),
                dtype=data.dtype,
                chunks=(1, *data.shape[1:]) if data.ndim > 1 else (1,),
                filters=filters,
                compressors=compressors(data.dtype.itemsize),
                fill_value=0,
                chunk_key_encoding=KEY_ENCODING,
                config={"write_empty_chunks": True},
                zarr_format=3,
            )
            template = json.loads(store._store_dict["zarr.json"].to_bytes())
        _TEMPLATES[key] = template
    meta = json.loads(json.dumps(template))
    meta["shape"] = list(data.shape)
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [chunk_rows, *data.shape[1:]]
    return meta


_TEMPLATES: dict[tuple[str, int, str], dict[str, Any]] = {}


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# -- the root of a sharded store (activations, traces) --------------------------------------
def group_json(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"attributes": attributes, "node_type": "group", "zarr_format": 3}


def normalise_meta(obj: Any) -> Any:
    """What the metadata looks like after a JSON round trip, so old and new compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def meta_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first few keys (attrs expanded) that differ, for a one-line refusal."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "attrs" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"attrs.{k}={a.get(k)!r} (now {b.get(k)!r})"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            diffs.append(f"{key}={a!r} (now {b!r})")
    return ", ".join(diffs[:3]) + (", ..." if len(diffs) > 3 else "")


def init_shard_root(
    root: Path, meta: dict[str, Any], old: dict[str, Any] | None, what: str
) -> None:
    """Create a store's root group (or check it holds the same metadata) and its empty
    `shards` group, then clear what a killed writer left: the start every sharded writer
    shares. A different configuration is refused naming the keys that differ."""
    if old is None:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "zarr.json", group_json({"saelab": meta}))
    elif old != meta:
        raise SaelabError(
            f"{what} {root} was written with {meta_diff(old, meta)}; use another run folder"
        )
    shards = root / "shards"
    if not (shards / "zarr.json").is_file():
        shards.mkdir(exist_ok=True)
        atomic_write_json(shards / "zarr.json", group_json({}))
    remove_debris(root)
    remove_debris(shards)
