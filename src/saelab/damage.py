"""Damaged files become one line that names the file, who wrote it and the fix.

A flipped bit, a truncated chunk or a deleted file must never be read as data (zarr itself
would hand back the fill value for a missing chunk, and a byte flipped inside a zstd frame
often still decodes). Readers call `Origin.error` for every such case, so the user sees which
file is damaged, which stage writes it again, and where to check the rest of the run.

This module knows a run folder only as "the folder that holds the store and a manifest.json";
it never imports the run machinery.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c  # a dependency of zarr 3 (its crc32c codec)
import numpy as np

from saelab.errors import SaelabError

MANIFEST_NAME = "manifest.json"  # the run folder's manifest (saelab.run.MANIFEST)


@dataclass(frozen=True)
class Origin:
    """Which stage writes a store's files, and the run folder the store sits in (if any)."""

    stage: str  # e.g. "extract", "encode", "train"
    run: Path | None = None
    fix: str | None = None  # outside a run: what to do instead of "write it again"

    def error(self, file: Path | str, problem: str) -> SaelabError:
        """The one-line error for a damaged or missing `file` (`problem` says how)."""
        if self.run is not None:
            fix = (
                f"run `saelab verify {self.run}` to find every damaged unit; "
                f"`saelab {self.stage}` then rebuilds them"
            )
        elif self.fix:  # not part of a run: who wrote it is unknown
            return SaelabError(f"{file} is damaged ({_short(problem)}): {self.fix}")
        else:
            fix = f"write it again with `saelab {self.stage}`"
        return SaelabError(
            f"{file} is damaged ({_short(problem)}), from `saelab {self.stage}`: {fix}"
        )


def _short(problem: str) -> str:
    return " ".join(str(problem).split())[:200]


def origin_of(root: Path, folder_name: str, stage: str, depth: int = 1) -> Origin:
    """The origin of a store at `root`: its run is the folder `depth` levels up when `root`
    is named `folder_name` there and that folder holds a manifest."""
    root = Path(root)
    run = root.parents[depth - 1] if len(root.parents) >= depth else None
    top = root.parents[depth - 2] if depth > 1 else root
    if run is not None and top.name == folder_name and (run / MANIFEST_NAME).is_file():
        return Origin(stage, run)
    return Origin(stage, None)


def one_line(e: BaseException) -> str:
    """An exception as a short phrase: its type and the first line of its message."""
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


#: safetensors header metadata key holding `tensors_crc32c` of the file's tensors
CRC_KEY = "saelab_crc32c"


def tensors_crc32c(tensors: Mapping[str, Any]) -> str:
    """CRC-32C over each tensor's name and raw bytes, in name order (numpy or torch).

    Kept in a safetensors file's header metadata (`CRC_KEY`) so a flipped byte in a codes or
    SAE-weights file is caught on read, as zarr's crc32c catches one in a store chunk; files
    without it (older, or from other tools) are read as before."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        if hasattr(t, "detach"):  # torch: bytes through a uint8 view (bfloat16 included)
            import torch  # only reached with a tensor, so torch is already imported

            buf = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        else:
            buf = np.ascontiguousarray(t).reshape(-1).view(np.uint8)
        crc = google_crc32c.extend(crc, name.encode())
        crc = google_crc32c.extend(crc, buf)
    return f"{crc:08x}"


def check_crc(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> str | None:
    """None when the stored checksum matches (or there is none), else what is wrong."""
    want = (metadata or {}).get(CRC_KEY)
    if want is None:
        return None
    got = tensors_crc32c(tensors)
    return None if got == want else f"crc32c {got} of its tensors, recorded {want}"


def stable_header(blob: bytes) -> bytes:
    """The same safetensors file with its header's keys in sorted order.

    safetensors writes `__metadata__` from a hash map whose order changes from one process to
    the next, so two runs that store the same tensors and metadata would differ in their
    header bytes; a resumed run must end byte-identical to an uninterrupted one. Offsets are
    relative to the data, so only the header is rewritten (padded with spaces to 8 bytes, as
    safetensors does)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n :]
