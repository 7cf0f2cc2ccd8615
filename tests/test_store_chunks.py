"""The direct chunk writer must produce exactly the files zarr itself writes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from numcodecs import BitRound

from saelab.atomic import tree_digests
from saelab.store.chunks import ChunkEncoder, write_chunks
from saelab.store.codecs import DTYPES as STORE_DTYPES
from saelab.store.codecs import ZSTD_LEVEL, compressors, filters, quiet_numcodecs


def write_both(tmp_path, data, chunk, dt_name=None, keep_bits=None, separator="."):
    """Write `data` once through zarr and once through write_chunks; return both digests."""
    dt = STORE_DTYPES[dt_name] if dt_name else None
    out = {}
    for how in ("zarr", "ours"):
        root = tmp_path / how
        with quiet_numcodecs():
            arr = zarr.create_array(
                store=str(root),
                shape=data.shape,
                dtype=data.dtype,
                chunks=(chunk, *data.shape[1:]),
                filters=filters(dt, keep_bits) if dt else None,
                compressors=compressors(data.dtype.itemsize),
                fill_value=0,
                config={"write_empty_chunks": True},
                chunk_key_encoding={"name": "default", "separator": separator},
                zarr_format=3,
            )
            if how == "zarr":
                arr[...] = data
            else:
                enc = ChunkEncoder(data.dtype.itemsize, ZSTD_LEVEL, keep_bits)
                write_chunks(root, data, chunk, enc, root, separator=separator)
            back = zarr.open_array(str(root), mode="r")[...]
        expect = (
            data
            if keep_bits is None
            else BitRound(keep_bits).decode(BitRound(keep_bits).encode(data)).reshape(data.shape)
        )
        np.testing.assert_array_equal(back, expect)
        out[how] = tree_digests(root)
    return out


@pytest.mark.parametrize(
    "dtype, keep_bits",
    [("float16", None), ("float32", None), ("float16", 6), ("float32", 9)],
)
def test_activation_chunks_are_byte_identical_to_zarr(tmp_path, dtype, keep_bits):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((1000, 24)) * 50).astype(dtype)  # 1000 rows: a partial edge chunk
    out = write_both(tmp_path, data, 256, dtype, keep_bits)
    assert out["zarr"] == out["ours"]


def test_bfloat16_bits_are_byte_identical_to_zarr(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**16, size=(700, 16), dtype=np.uint16)
    out = write_both(tmp_path, data, 128, "bfloat16")
    assert out["zarr"] == out["ours"]


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_index_chunks_are_byte_identical_to_zarr(tmp_path, dtype):
    out = write_both(tmp_path, np.arange(1000, dtype=dtype) * 7, 300)
    assert out["zarr"] == out["ours"]


@pytest.mark.parametrize("ndim", [1, 2])
def test_zarr_default_slash_keys_work_too(tmp_path, ndim):
    data = np.arange(1200, dtype=np.float32).reshape((-1, 4) if ndim == 2 else (-1,))
    out = write_both(tmp_path, data, 64, "float32", separator="/")
    assert out["zarr"] == out["ours"]
