"""Writing a zarr v3 array's chunks directly, in parallel, hashing as they are written.

zarr-python's own write path costs ~3x the codec work on this machine (asyncio hand-offs per
chunk, then a second pass to hash the files: 0.26 s against 0.08 s for 69 MB), which kept
the store at ~6x the speed of gzip+pickle instead of the 10x users were promised. The array
metadata is still created by zarr (`zarr.json`, so readers see a normal array); this module
only produces the chunk files, with exactly the bytes zarr's codec pipeline would produce
(BitRound filter, little-endian bytes, byte shuffle, zstd), which a test checks byte for byte
against zarr itself.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numcodecs import BitRound, Zstd

from saelab.run import TMP_PREFIX


def shuffle_bytes(buf: np.ndarray, itemsize: int) -> bytes:
    """numcodecs' Shuffle(elementsize): byte 0 of every element, then byte 1, ... (a transpose)."""
    raw = np.ascontiguousarray(buf).view(np.uint8).reshape(-1, itemsize)
    return np.ascontiguousarray(raw.T).tobytes()


class ChunkEncoder:
    """The store's codec chain, as plain function calls."""

    def __init__(self, itemsize: int, zstd_level: int, keep_bits: int | None = None):
        self.itemsize = itemsize
        self.zstd = Zstd(level=zstd_level, checksum=False)
        self.bitround = None if keep_bits is None else BitRound(keepbits=keep_bits)

    def encode(self, chunk: np.ndarray) -> bytes:
        a = chunk
        if self.bitround is not None:
            a = np.asarray(self.bitround.encode(a)).reshape(chunk.shape)
        little = a.astype(a.dtype.newbyteorder("<"), copy=False)
        return self.zstd.encode(shuffle_bytes(little, self.itemsize))


def write_chunks(
    array_dir: Path,
    data: np.ndarray,
    chunk_rows: int,
    encoder: ChunkEncoder,
    base: Path,
    fill_value: int | float = 0,
) -> dict[str, str]:
    """Write `data` (1-D, or 2-D chunked along rows only) as the chunks of a zarr v3 array.

    Chunk keys follow zarr's default encoding (`c/i` or `c/i/0`); the last chunk is padded
    to the full chunk shape with `fill_value`, as zarr stores edge chunks. Returns
    {path relative to `base`: sha256} for the files written.
    """
    n = data.shape[0]
    tail = "/0" if data.ndim == 2 else ""
    starts = list(range(0, n, chunk_rows))

    def one(start: int) -> tuple[str, str]:
        block = data[start : start + chunk_rows]
        if len(block) < chunk_rows:
            pad = np.full((chunk_rows - len(block), *data.shape[1:]), fill_value, data.dtype)
            block = np.concatenate([block, pad])
        payload = encoder.encode(block)
        rel = f"c/{start // chunk_rows}{tail}"
        path = array_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(TMP_PREFIX + path.name)
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
        return (path.relative_to(base).as_posix(), hashlib.sha256(payload).hexdigest())

    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers <= 1:
        return dict(one(s) for s in starts)
    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, starts))
