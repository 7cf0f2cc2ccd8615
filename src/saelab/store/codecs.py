"""Storage dtypes, codec chains and the float conversions of the activation store.

Kept apart from the store layout so the numeric choices (how a float32 activation becomes
stored bytes and back) can be read and tested on their own.

Default codec, measured on this machine (2 cores, zarr 3.1.6, numcodecs 0.16.6), 16384 x 576
rows of synthetic activations with eight ~2e4 "massive" dims, 1-2 MB chunks; byte ratios:

    chain                          normal*100 f16/f32   low-rank structured f16/f32
    zstd(3) alone                  1.087 / 1.078        1.056 / 1.066
    byte-shuffle + zstd(1)         1.169 / 1.173        1.118 / 1.159
    byte-shuffle + zstd(3)         1.169 / 1.159        1.118 / 1.143
    blosc(zstd, shuffle) clevel 1  1.085 / 1.078        1.054 / 1.065
    blosc(zstd, shuffle) clevel 5  1.164 / 1.140        1.118 / 1.112

Byte-shuffle + zstd(1) reaches the order-0 entropy bound (~1.13-1.17x, see
reference/measurements.md) at every setting and is the fastest of the good ones (~450-600 MB/s
compress, ~900-1100 MB/s decompress per core). c-blosc1's ratio swings with clevel because its
block size does, so it is not the default even though it is in the zarr v3 core spec.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec

from saelab.errors import SaelabError

ZSTD_LEVEL = 1


@dataclass(frozen=True)
class StoreDType:
    """A logical dtype and how it sits on disk (zarr 3 has no bfloat16: stored as uint16 bits)."""

    name: str
    storage: str
    itemsize: int
    mantissa_bits: int


DTYPES: dict[str, StoreDType] = {
    "float16": StoreDType("float16", "float16", 2, 10),
    "float32": StoreDType("float32", "float32", 4, 23),
    "bfloat16": StoreDType("bfloat16", "uint16", 2, 7),
}


@contextlib.contextmanager
def quiet_numcodecs() -> Iterator[None]:
    """Silence zarr's 'numcodecs codecs are not in the Zarr v3 spec' notice, here only.

    The store deliberately uses numcodecs' shuffle and bitround; the notice would repeat on every
    array opened and tell the user nothing they can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Nn]umcodecs codecs are not")
        warnings.filterwarnings("ignore", message=".*numcodecs.zarr3 module is deprecated")
        yield


def _numcodecs_classes() -> tuple[Any, Any]:
    with quiet_numcodecs():
        try:
            from zarr.codecs.numcodecs import BitRound, Shuffle  # zarr >= 3.1.3
        except ImportError:  # pragma: no cover - older zarr 3
            from numcodecs.zarr3 import BitRound, Shuffle
    return Shuffle, BitRound


def check_dtype(dtype: str) -> StoreDType:
    if dtype not in DTYPES:
        raise SaelabError(
            f"--dtype {dtype!r} is not a storage dtype; use one of {', '.join(DTYPES)}"
        )
    return DTYPES[dtype]


def check_keep_bits(keep_bits: int | None, dt: StoreDType) -> int | None:
    if keep_bits is None:
        return None
    if (
        isinstance(keep_bits, bool)
        or not isinstance(keep_bits, (int, np.integer))
        or not 1 <= keep_bits <= dt.mantissa_bits
    ):
        raise SaelabError(
            f"--keep-bits {keep_bits!r} is out of range for {dt.name}; "
            f"use 1..{dt.mantissa_bits} (or leave it out for lossless storage)"
        )
    return int(keep_bits)


def compressors(itemsize: int) -> list[Any]:
    """Byte-shuffle then zstd: the shuffle groups the low-entropy exponent bytes together;
    then zarr's crc32c, 4 bytes per chunk that catch a damaged file on read (see
    benchmarks/bench_checksum.py for what it costs)."""
    shuffle_cls, _ = _numcodecs_classes()
    with quiet_numcodecs():
        return [shuffle_cls(elementsize=itemsize), ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()]


def filters(dt: StoreDType, keep_bits: int | None) -> list[Any] | None:
    """numcodecs BitRound for float16/float32; bfloat16 bits are rounded in `encode_rows`."""
    if keep_bits is None or dt.name == "bfloat16":
        return None
    _, bitround_cls = _numcodecs_classes()
    with quiet_numcodecs():
        return [bitround_cls(keepbits=keep_bits)]


def codec_description(dt: StoreDType, keep_bits: int | None) -> str:
    """Recorded in the store metadata so a store is never extended with different bytes."""
    parts = [] if keep_bits is None else [f"bitround({keep_bits})"]
    parts += [f"shuffle({dt.itemsize})", f"zstd({ZSTD_LEVEL})"]
    return " + ".join(parts)


def round_bf16_bits(bits: np.ndarray, keep_bits: int) -> np.ndarray:
    """Round bfloat16 bit patterns to `keep_bits` of 7 mantissa bits, to nearest even.

    Same arithmetic as numcodecs BitRound (which refuses integer arrays). inf and NaN are left as
    they are so a NaN cannot round into an inf.
    """
    drop = 7 - keep_bits
    if drop <= 0:
        return bits
    b = bits.astype(np.uint32)
    rounded = b + ((1 << (drop - 1)) - 1) + ((b >> drop) & 1)
    rounded &= np.uint32(0xFFFF ^ ((1 << drop) - 1))
    special = (b & 0x7F80) == 0x7F80
    return np.where(special, b, rounded).astype(np.uint16)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


def encode_rows(x: Any, dt: StoreDType, keep_bits: int | None, hook: str) -> np.ndarray:
    """Cast activations (torch or numpy, any float dtype) to the storage array, rounding to nearest.

    float16 overflow is refused rather than stored as inf: an inf silently poisons every later
    mean, norm and SAE loss, and the user can fix it by choosing a wider dtype.
    """
    if _is_tensor(x):
        import torch

        if not x.is_floating_point():
            raise ValueError(f"activations of {hook} must be floating point, got {x.dtype}")
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise ValueError(f"activations of {hook} must be floating point, got {arr.dtype}")
        if dt.name != "bfloat16":
            t = None
            out = np.ascontiguousarray(arr, dtype=dt.storage)
        else:  # numpy has no bfloat16: let torch do the round-to-nearest-even
            import torch

            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if t is not None:
        if dt.name == "bfloat16":
            out = t.to(torch.bfloat16).cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
        else:
            out = t.to(getattr(torch, dt.name)).cpu().contiguous().numpy()
    # float16 input cannot overflow float16: skip the scan (a sixth of a shard's write time)
    already_f16 = str(getattr(x, "dtype", "")) in ("torch.float16", "float16")
    if dt.name == "float16" and not already_f16 and np.isinf(out).any():
        src = t.float().cpu().numpy() if t is not None else np.asarray(arr, dtype=np.float64)
        overflow = np.isinf(out) & np.isfinite(src)
        if overflow.any():
            raise SaelabError(
                f"activations of {hook} reach {float(np.abs(src[overflow]).max()):.3g}, beyond "
                "float16's range (65504); use --store-dtype bfloat16 or float32"
            )
    if dt.name == "bfloat16" and keep_bits is not None:
        out = round_bf16_bits(out, keep_bits)
    return out


def decode_rows(a: np.ndarray, dt: StoreDType) -> np.ndarray:
    """Stored rows to float32 (exact: every float16 and bfloat16 value is a float32 value)."""
    if dt.name == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)
