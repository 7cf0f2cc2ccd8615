"""GGUF header reader: metadata and tensor shapes of a .gguf file, without its tensor data.

Split out of `saelab.models.shapes`, which only needs a few integers from the header to size a
plan. Reading a header is a self-contained binary format parser (its own types, offsets and
error handling), so it lives here; `shapes` re-exports `read_gguf_header`.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

from saelab.errors import SaelabError


class _Array(NamedTuple):
    """A GGUF array value, kept only as its length (tokenizer tables are skipped, not read)."""

    item_type: int
    count: int


_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes of a GGUF file, without touching tensor data.

    Hand-written because `gguf.GGUFReader` builds a numpy view for every token string of the
    tokenizer tables (3 s for SmolLM2, 14 s for Gemma 3 on 2 cores) where a plan needs a few
    integers; this skips arrays in well under a second. Tensor shapes are in GGUF order
    (innermost first: token_embd.weight is [d_model, vocab]). Arrays come back as `_Array`.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse_gguf(mm, p)
    except (OSError, ValueError) as e:
        raise SaelabError(f"cannot read GGUF file {p}: {e}; check the path") from e
    except (struct.error, IndexError, KeyError, UnicodeDecodeError) as e:
        raise SaelabError(f"{p} is a truncated or corrupt GGUF file; download it again") from e


def _parse_gguf(buf: Any, p: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    if buf[:4] != b"GGUF":
        raise SaelabError(f"{p} is not a GGUF file (bad magic); pass a .gguf model file")
    end = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written big-endian
        end, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version < 2:
        raise SaelabError(f"{p} is GGUF v{version}; re-convert it with a current llama.cpp")
    n_tensors, n_kv = struct.unpack_from(end + "QQ", buf, 8)
    off = 24

    def string(o: int) -> tuple[str, int]:
        (n,) = struct.unpack_from(end + "Q", buf, o)
        return bytes(buf[o + 8 : o + 8 + n]).decode("utf-8"), o + 8 + n

    def value(t: int, o: int) -> tuple[Any, int]:
        if t == _STRING:
            return string(o)
        if t == _ARRAY:
            it, count = struct.unpack_from(end + "IQ", buf, o)
            o += 12
            if it == _STRING:
                for _ in range(count):
                    o += 8 + struct.unpack_from(end + "Q", buf, o)[0]
            elif it == _ARRAY:
                for _ in range(count):
                    o = value(_ARRAY, o)[1]
            else:
                o += count * struct.calcsize(_SCALAR[it])
            return _Array(it, count), o
        fmt = end + _SCALAR[t]
        return struct.unpack_from(fmt, buf, o)[0], o + struct.calcsize(fmt)

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key, off = string(off)
        (t,) = struct.unpack_from(end + "I", buf, off)
        meta[key], off = value(t, off + 4)
    tensors: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        tname, off = string(off)
        (nd,) = struct.unpack_from(end + "I", buf, off)
        tensors[tname] = struct.unpack_from(end + "Q" * nd, buf, off + 4)
        off += 4 + 8 * nd + 4 + 8  # dims, ggml type, data offset
    return meta, tensors
