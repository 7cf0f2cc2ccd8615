"""Prompt tables: the texts a run feeds the model, with stable ids and optional group labels.

Every stage that works per prompt (extract, encode, contrast, patch) refers to prompts by id and
position, and a resumed run must prove it is reading the same prompts as before; so a table is
read once, checked strictly here, and fingerprinted. Users bring prompts in whatever file they
have (plain lines, JSON lines, CSV/TSV, Parquet); every mistake in such a file is reported as a
one-line SaelabError that names the file, the line or row, and the fix. The per-format
readers and their checks live in `saelab.data.readers`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import pyarrow as pa

from saelab.data.readers import (
    build_columns,
    parse_delimited,
    parse_jsonl,
    parse_parquet,
    parse_txt,
)
from saelab.data.tables import must_exist, table_format
from saelab.errors import SaelabError

DEMO_SOURCE = "builtin:demo"
_DEMO_RESOURCE = "demo_prompts.jsonl"
STYLES_SOURCE = "builtin:styles"  # 100 statements, each written formally and casually
_BUILTIN = {DEMO_SOURCE: _DEMO_RESOURCE, STYLES_SOURCE: "style_prompts.jsonl"}
_FORMATS = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
_SUPPORTED = ".txt, .jsonl, .ndjson, .csv, .tsv, .parquet"
_FINGERPRINT_VERSION = "saelab-prompts-v1"


@dataclass(frozen=True)
class PromptTable:
    """Prompts in a fixed order; ids are unique so results can be joined back to prompts."""

    ids: list[str]
    texts: list[str]
    groups: list[str | None] | None
    source: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.texts) != n or (self.groups is not None and len(self.groups) != n):
            raise ValueError("PromptTable columns must have the same length")
        if len(set(self.ids)) != n:
            raise ValueError("PromptTable ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, indices: Sequence[int]) -> PromptTable:
        """Subset by position (shards, groups, a user's choice of prompts); ids stay unique."""
        n = len(self)
        seen: set[int] = set()
        for i in indices:
            if isinstance(i, bool) or not 0 <= i < n:
                raise SaelabError(
                    f"prompt index {i!r} is out of range for {n} prompts from {self.source}; "
                    f"use indices 0..{n - 1}"
                )
            if i in seen:
                raise SaelabError(
                    f"prompt index {i} is chosen twice from {self.source}; "
                    "choose each prompt at most once"
                )
            seen.add(i)
        groups = None if self.groups is None else [self.groups[i] for i in indices]
        return PromptTable(
            ids=[self.ids[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            groups=groups,
            source=self.source,
        )

    def to_arrow(self) -> pa.Table:
        """The table as stored in a run folder; `read_prompts` reads its Parquet form back."""
        columns: dict[str, pa.Array] = {
            "index": pa.array(range(len(self)), type=pa.int64()),
            "id": pa.array(self.ids, type=pa.string()),
            "text": pa.array(self.texts, type=pa.string()),
        }
        if self.groups is not None:
            columns["group"] = pa.array(self.groups, type=pa.string())
        return pa.table(columns)

    def fingerprint(self) -> str:
        """Short content hash, so a resumed run can refuse a folder made from other prompts.

        The source path is left out on purpose: the same prompts moved or converted to another
        format are the same prompts.
        """
        payload = json.dumps(
            [_FINGERPRINT_VERSION, self.ids, self.texts, self.groups],
            ensure_ascii=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]

    def group_names(self) -> list[str]:
        """Distinct labels in a stable order, so contrasts name their groups the same way."""
        if self.groups is None:
            return []
        return sorted({g for g in self.groups if g is not None})


def read_prompts(
    path: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = "id",
    group_column: str | None = "group",
    limit: int | None = None,
) -> PromptTable:
    """Read and check a prompts file, so that later stages never meet a malformed prompt.

    The format follows the suffix. `id_column=None` or `group_column=None` ignore those
    columns. A column named by the caller (anything but the defaults) must exist; the default
    `id`/`group` columns are used only when present. `path` may also be "builtin:demo" or
    "builtin:styles".
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SaelabError(
            f"reading prompts from {path}: limit must be a whole number of at least 1 "
            f"(got {limit!r}); pass `limit` 1 or more, or leave it out to read every prompt"
        )
    if str(path) in _BUILTIN:
        table = builtin_prompts(str(path))
        return table if limit is None else table.select(range(min(limit, len(table))))

    p = Path(path).expanduser()
    source = str(p)
    must_exist(p, "prompts file")
    if p.is_dir():
        raise SaelabError(
            f"prompts path {source} is a folder; pass one prompts file ({_SUPPORTED}) inside it"
        )
    json_array = p.suffix.lower() == ".json"
    hint = " (save a JSON array as .jsonl, one object per line)" if json_array else ""
    fmt = table_format(p, _FORMATS, f"prompts file {source}", f"one of {_SUPPORTED}{hint}")
    try:
        f = p.open("rb")
    except OSError as e:
        raise SaelabError(
            f"prompts file {source} cannot be read ({e.strerror}); check its permissions"
        ) from e
    with f:
        if p.stat().st_size == 0:
            raise SaelabError(f"prompts file {source} is empty; add at least one prompt")
        return _read(f, p, fmt, text_column, id_column, group_column, limit)


def _read(
    f: IO[bytes],
    p: Path,
    fmt: str,
    text_column: str,
    id_column: str | None,
    group_column: str | None,
    limit: int | None,
) -> PromptTable:
    source = str(p)
    where = f"prompts file {source}"
    if fmt == "txt":
        custom = text_column != "text" or id_column not in ("id", None)
        if custom or group_column not in ("group", None):
            raise SaelabError(
                f"prompts file {source} is plain text and has no columns; use a .jsonl, .csv "
                "or .parquet file to choose text, id or group columns"
            )
        texts = parse_txt(f, where, limit)
        if not texts:
            raise SaelabError(
                f"prompts file {source} has no prompts, only blank lines; add one prompt per line"
            )
        return PromptTable([str(i) for i in range(len(texts))], texts, None, source)
    if fmt == "parquet":
        columns, rows = parse_parquet(p, where, text_column, id_column, group_column, limit)
    elif fmt == "jsonl":
        columns, rows = parse_jsonl(f, where, limit, text_column)
    else:
        delimiter = "," if fmt == "csv" else "\t"
        columns, rows = parse_delimited(f, where, delimiter, limit)
    ids, texts, groups = build_columns(source, columns, rows, text_column, id_column, group_column)
    return PromptTable(ids, texts, groups, source)


def demo_prompts() -> PromptTable:
    """The built-in true/false statements, so the demo and tests run with no user data."""
    return builtin_prompts(DEMO_SOURCE)


def builtin_prompts(name: str) -> PromptTable:
    """A prompt set shipped with saelab: `builtin:demo` (true/false statements, groups true and
    false) or `builtin:styles` (100 statements, each written formally and casually, groups
    formal and casual: a two-group set where style features must separate the groups)."""
    data = resources.files("saelab.data").joinpath(_BUILTIN[name]).read_bytes()
    columns, rows = parse_jsonl(io.BytesIO(data), f"prompts file {name}", None)
    ids, texts, groups = build_columns(name, columns, rows, "text", "id", "group")
    return PromptTable(ids, texts, groups, name)
