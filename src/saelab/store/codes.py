"""Sparse SAE codes: `RUN/codes/<hook>/`, CSR per (hook, prompt shard), never dense.

    codes/<hook>/meta.json            what produced them: SAE source, d_sae, positions, features
    codes/<hook>/<shard>.safetensors  indptr int64 [rows+1], indices uint16|uint32 [nnz],
                                      values float32|float16 [nnz], prompt_index int64 [prompts],
                                      row_offsets int64 [prompts+1] (rows of each prompt)

A shard file is written whole and renamed into place, so a killed `encode` leaves only whole
shards and resumes at the first missing (hook, shard). Feature ids in `indices` are the SAE's
own ids even when only some features are kept, so they match dashboards and papers. Indices
are uint16 when d_sae fits (<= 65,536 features): a third of int64's bytes.

Each file's header metadata holds a CRC-32C of its tensors (`saelab.damage.CRC_KEY`), so a
flipped byte is caught when the values are read; reading also checks what a damaged file
would break (a header that does not parse, arrays missing or mis-sized, offsets out of
order, feature ids past d_sae, values that are not finite) and turns it into one line naming
the file and `saelab encode`. Files written before the checksum read as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from saelab.atomic import atomic_write_bytes, atomic_write_json
from saelab.damage import (
    CRC_KEY,
    Origin,
    check_crc,
    one_line,
    origin_of,
    stable_header,
    tensors_crc32c,
)
from saelab.errors import SaelabError
from saelab.progress import say

CODES_DIR = "codes"
PROMPTS_FILE = "prompts.parquet"
FORMAT = "saelab.codes"
VERSION = 1
POSITIONS = ("all", "last", "max", "mean")


def hook_dir(root: Path | str, hook: str) -> Path:
    """A hook's folder in the codes store at `root` (the codes folder itself)."""
    return Path(root) / hook


def index_dtype(d_sae: int) -> np.dtype:
    return np.dtype(np.uint16) if d_sae <= 2**16 else np.dtype(np.uint32)


def _shard_file(shard: int) -> str:
    return f"{int(shard):05d}.safetensors"


@dataclass
class CodesWriter:
    """Writes one hook's code shards into the codes store at `root`; refuses to mix codes
    made another way."""

    root: Path
    hook: str
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self._warned_empty = False  # an SAE that fires on nothing is said once per hook
        self.dir = hook_dir(self.root, self.hook)
        meta = {"format": FORMAT, "version": VERSION, "hook": self.hook, **self.meta}
        old = read_meta(self.dir)
        if old is not None and old != json.loads(json.dumps(meta)):
            diffs = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise SaelabError(
                f"{self.dir} holds codes made differently ({', '.join(diffs[:3])} differ);"
                " write these to another folder or remove the old ones first"
            )
        if old is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "meta.json", meta)
        self.meta = meta

    def has_shard(self, shard: int) -> bool:
        return (self.dir / _shard_file(shard)).is_file()

    @staticmethod
    def exists(root: Path | str, hook: str, shard: int) -> bool:
        """Whether a shard's codes are written (without opening a writer)."""
        return (hook_dir(root, hook) / _shard_file(shard)).is_file()

    def write_shard(
        self,
        shard: int,
        *,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
        prompt_index: np.ndarray,
        row_offsets: np.ndarray,
    ) -> int:
        """Write one shard atomically; return its bytes."""
        from safetensors.numpy import save

        d_sae = int(self.meta["d_sae"])
        if len(indices) and int(indices.max()) >= d_sae:
            raise ValueError(f"feature id {int(indices.max())} >= d_sae {d_sae}")
        with np.errstate(over="ignore"):  # an overflow to inf is refused just below
            stored = np.ascontiguousarray(values, dtype=self.meta.get("values", "float32"))
        if not np.isfinite(stored).all():
            bad = int((~np.isfinite(stored)).sum())
            raise SaelabError(
                f"codes of {self.hook} (shard {shard}) hold {bad} NaN or infinite values (after"
                f" storing as {stored.dtype}); check the SAE and the activations it encodes"
            )
        rows = len(indptr) - 1
        if rows > 0 and not len(stored) and not self._warned_empty:
            self._warned_empty = True
            say(
                f"[yellow]warning[/yellow]: the codes of {self.hook} (shard {shard}) are all"
                f" empty: no feature fired on {rows} rows; the SAE may not fit these"
                " activations (another hook, model or scaling)"
            )
        tensors = {
            "indptr": np.ascontiguousarray(indptr, dtype=np.int64),
            "indices": np.ascontiguousarray(indices, dtype=index_dtype(d_sae)),
            "values": stored,
            "prompt_index": np.ascontiguousarray(prompt_index, dtype=np.int64),
            "row_offsets": np.ascontiguousarray(row_offsets, dtype=np.int64),
        }
        blob = stable_header(save(tensors, metadata={CRC_KEY: tensors_crc32c(tensors)}))
        atomic_write_bytes(self.dir / _shard_file(shard), blob, f"codes shard {shard:05d}")
        return len(blob)


def codes_origin(folder: Path) -> Origin:
    return origin_of(folder, CODES_DIR, "encode", depth=2)


def read_meta(folder: Path) -> dict[str, Any] | None:
    p = folder / "meta.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, not {FORMAT}")
        int(meta["d_sae"]), str(meta["hook"]), str(meta["positions"])
    except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or UTF-8
        raise codes_origin(folder).error(p, one_line(e)) from e
    return meta


_PARTS = {
    "indptr": ("int64",),
    "indices": ("uint16", "uint32"),
    "values": ("float16", "float32"),
    "prompt_index": ("int64",),
    "row_offsets": ("int64",),
}


def _check_index(path: Path, part: dict[str, np.ndarray], n_rows: int, origin: Origin) -> None:
    """prompt_index and row_offsets agree with each other and with `n_rows`."""
    ro, pi = part["row_offsets"], part["prompt_index"]
    if not (
        len(ro) == len(pi) + 1
        and ro[0] == 0
        and ro[-1] == n_rows
        and bool((np.diff(ro) >= 0).all())
        and (not len(pi) or int(pi.min()) >= 0)
    ):
        raise origin.error(path, f"row_offsets do not cover {n_rows} rows of {len(pi)} prompts")


def read_part(path: Path, d_sae: int, origin: Origin | None = None) -> dict[str, np.ndarray]:
    """One shard file's arrays, every invariant checked (see the module docstring)."""
    from safetensors import safe_open

    origin = origin or codes_origin(path.parent)
    try:
        with safe_open(str(path), framework="numpy") as f:
            part = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata()
    except Exception as e:  # SafetensorError, OSError: safetensors has no common base
        raise origin.error(path, one_line(e)) from e
    wrong = check_crc(part, metadata)
    if wrong:
        raise origin.error(path, wrong)
    for name, dtypes in _PARTS.items():
        a = part.get(name)
        if a is None or a.ndim != 1 or a.dtype.name not in dtypes:
            got = "missing" if a is None else f"{a.dtype.name} {list(a.shape)}"
            raise origin.error(path, f"{name} is {got}, expected 1-D {' or '.join(dtypes)}")
    ip, idx, vals = part["indptr"], part["indices"], part["values"]
    if not (
        len(ip) >= 1
        and ip[0] == 0
        and ip[-1] == len(idx) == len(vals)
        and bool((np.diff(ip) >= 0).all())
    ):
        raise origin.error(path, f"indptr does not index {len(idx)} codes")
    if len(idx) and int(idx.max()) >= d_sae:
        raise origin.error(path, f"feature id {int(idx.max())} >= d_sae {d_sae}")
    if not np.isfinite(vals).all():
        raise origin.error(path, "values that are NaN or infinite")
    _check_index(path, part, len(ip) - 1, origin)
    return part


def expected_shards(folder: Path, present: list[int]) -> list[int]:
    """The shards a hook's codes must have: one per shard of the run's activation store
    (encode writes codes shard by shard of it), else every number up to the last present.
    Without this a deleted codes file would just make a hook's codes shorter."""
    store_shards = folder.parent.parent / "activations" / "shards"
    if store_shards.is_dir():
        return [
            int(p.name)
            for p in store_shards.iterdir()
            if p.name.isdigit() and (p / "zarr.json").is_file()
        ]
    return list(range(max(present) + 1)) if present else []


class HookCodes:
    """One hook's codes across shards: a scipy CSR matrix (rows x d_sae) and its prompts."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors import safe_open

        self.folder = folder
        self.meta = meta
        self.origin = codes_origin(folder)
        self.hook: str = meta["hook"]
        self.d_sae: int = int(meta["d_sae"])
        self.positions: str = meta["positions"]
        self.features: list[int] | None = meta.get("features")
        self.shards = sorted(
            int(p.name.split(".")[0])
            for p in folder.glob("*.safetensors")
            if p.name.split(".")[0].isdigit()
        )
        missing = sorted(set(expected_shards(folder, self.shards)) - set(self.shards))
        if missing:
            raise self.origin.error(
                folder / _shard_file(missing[0]),
                f"file missing: {len(missing)} of the codes shards of the activation store",
            )
        offs, pidx, start = [np.zeros(1, np.int64)], [], 0
        for sh in self.shards:  # only the small index arrays; values are read per shard
            path = folder / _shard_file(sh)
            try:
                with safe_open(str(path), framework="numpy") as f:
                    part = {k: f.get_tensor(k) for k in ("row_offsets", "prompt_index")}
                    rows = int(f.get_slice("indptr").get_shape()[0]) - 1
            except Exception as e:  # SafetensorError, OSError, a tensor missing
                raise self.origin.error(path, one_line(e)) from e
            if any(a.ndim != 1 or a.dtype != np.int64 for a in part.values()):
                raise self.origin.error(path, "row_offsets or prompt_index is not 1-D int64")
            _check_index(path, part, rows, self.origin)
            ro, pi = part["row_offsets"], part["prompt_index"]
            offs.append(ro[1:] + start)
            pidx.append(pi)
            start += int(ro[-1])
        self.row_offsets: np.ndarray = np.concatenate(offs)
        self.prompt_index: np.ndarray = np.concatenate(pidx) if pidx else np.zeros(0, np.int64)
        self.n_rows = start
        self._matrix: Any = None

    def iter_parts(self) -> Iterator[dict[str, np.ndarray]]:
        """Each shard's arrays (indptr, indices, values, prompt_index, row_offsets) in turn:
        streaming consumers never hold more than one shard."""
        for sh in self.shards:
            yield read_part(self.folder / _shard_file(sh), self.d_sae, self.origin)

    def matrix(self) -> Any:
        """All rows as one `scipy.sparse.csr_matrix` (rows in prompt-shard order)."""
        import scipy.sparse as sp

        mats = [
            sp.csr_matrix(
                (p["values"], p["indices"].astype(np.int32), p["indptr"]),
                shape=(len(p["indptr"]) - 1, self.d_sae),
            )
            for p in self.iter_parts()
        ]
        if not mats:
            return sp.csr_matrix((0, self.d_sae), dtype=np.float32)
        return sp.vstack(mats, format="csr")

    def prompt(self, i: int) -> Any:
        """Rows of the i-th stored prompt (one row unless positions are all); the matrix is
        built once, not per call."""
        if self._matrix is None:
            self._matrix = self.matrix()
        return self._matrix[int(self.row_offsets[i]) : int(self.row_offsets[i + 1])]

    def __repr__(self) -> str:
        return (
            f"HookCodes({self.hook!r}, {len(self.prompt_index)} prompts, {self.n_rows} rows,"
            f" d_sae {self.d_sae}, positions {self.positions!r})"
        )


class Codes:
    """The codes store at `root`: `codes[hook]`, plus the prompts' ids, texts and groups from
    the prompt table beside it (`prompts.parquet`, when there is one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hooks: list[str] = sorted(
            p.name for p in root.iterdir() if p.is_dir() and read_meta(p) is not None
        )
        self._cache: dict[str, HookCodes] = {}
        self._prompts: Any = None

    def __getitem__(self, hook: str) -> HookCodes:
        if hook not in self.hooks:
            raise SaelabError(
                f"{self.root} has no codes of {hook} (it has {', '.join(self.hooks) or 'none'})"
            )
        if hook not in self._cache:
            folder = hook_dir(self.root, hook)
            self._cache[hook] = HookCodes(folder, read_meta(folder) or {})
        return self._cache[hook]

    def prompts(self) -> dict[str, list[Any]]:
        """The prompt table (ids, texts, groups) in its original order."""
        if self._prompts is None:
            self._prompts = read_prompt_table(self.root.parent / PROMPTS_FILE)
        return self._prompts

    def prompt_ids(self, hook: str) -> list[str]:
        ids = self.prompts()["id"]
        return [ids[i] for i in self[hook].prompt_index]

    def groups(self, hook: str) -> list[str | None]:
        groups = self.prompts()["group"]
        return [groups[i] for i in self[hook].prompt_index]

    def __repr__(self) -> str:
        return f"Codes({str(self.root)!r}, hooks={self.hooks})"


def read_prompt_table(path: Path) -> dict[str, list[Any]]:
    """ids, texts and groups of a prompt table (Parquet with text and optional id, group)."""
    if not path.is_file():
        raise SaelabError(f"no prompt table at {path}")
    try:
        t = pq.read_table(path).to_pydict()
        n = len(t["text"])
        if any(len(v) != n for v in t.values()):
            raise ValueError("columns of different lengths")
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...; a column missing
        raise origin_of(path, path.name, "extract").error(path, one_line(e)) from e
    return {
        "id": [str(x) for x in t.get("id", range(n))],
        "text": list(t.get("text", [])),
        "group": list(t.get("group", [None] * n)),
    }


def open_codes(path: Path | str) -> Codes:
    """Open a codes store (its folder, or a run folder holding one) for reading."""
    p = Path(path)
    if (p / CODES_DIR).is_dir():
        return Codes(p / CODES_DIR)
    if p.is_dir() and any(read_meta(d) is not None for d in p.iterdir() if d.is_dir()):
        return Codes(p)
    raise SaelabError(f"no codes at {p} (nor in its {CODES_DIR}/ folder)")
