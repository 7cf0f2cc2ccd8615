"""Prompt tables from the rows of `saelab.data.tables` (txt, JSON lines, CSV/TSV, Parquet).

`saelab.data.prompts` keeps `PromptTable` and the `read_prompts` entry point that picks a
parser by suffix. Each parser reads a file's rows (remembering where they came from, up to a
limit) and `build_columns` checks them the same way for every format, so a mistake is one
SaelabError naming the file, the line or row, and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from saelab.data.tables import (
    Row,
    check_encodable,
    delimited_rows,
    first,
    json_rows,
    json_type,
    lines,
    parquet_batches,
    parquet_columns,
)
from saelab.errors import SaelabError


def parse_txt(f: IO[bytes], where: str, limit: int | None) -> list[str]:
    """Every non-blank line is one prompt."""
    texts: list[str] = []
    for _, line in lines(f, where):
        if line.strip():
            texts.append(line)
            if limit is not None and len(texts) >= limit:
                break
    return texts


def parse_jsonl(
    f: IO[bytes], where: str, limit: int | None, text_column: str = "text"
) -> tuple[list[str], list[Row]]:
    rows = first(json_rows(f, where, text_column), limit)
    if not rows:
        raise SaelabError(
            f"{where} has no prompts, only blank lines; "
            'add one JSON object per line, like {"text": "..."}'
        )
    columns: dict[str, None] = {}
    for _, obj in rows:
        columns.update(dict.fromkeys(obj))
    return list(columns), rows


def parse_delimited(
    f: IO[bytes], where: str, delimiter: str, limit: int | None
) -> tuple[list[str], list[Row]]:
    header, it = delimited_rows(f, where, delimiter)
    rows = first(it, limit)
    if not header or not rows:
        what = "a header row but no prompts" if header else "no header row"
        raise SaelabError(
            f"{where} has {what}; write a header line (e.g. text) followed by one prompt per row"
        )
    return header, rows


def parse_parquet(
    p: Path,
    where: str,
    text_column: str,
    id_column: str | None,
    group_column: str | None,
    limit: int | None,
) -> tuple[list[str], list[Row]]:
    pf, names = parquet_columns(p, where, text_column)
    wanted = [c for c in dict.fromkeys((text_column, id_column, group_column)) if c in names]
    if text_column not in names and pf.metadata.num_rows:  # build_columns names what is missing
        return names, [("row 1", {})]
    rows: list[Row] = []
    for start, values in parquet_batches(pf, where, wanted):
        n = len(next(iter(values.values()))) if values else 0
        for i in range(n):
            rows.append((f"row {start + i + 1}", {name: values[name][i] for name in wanted}))
            if limit is not None and len(rows) >= limit:
                return names, rows
    if not rows:
        raise SaelabError(f"{where} has no rows; add at least one prompt")
    return names, rows


def build_columns(
    source: str,
    columns: list[str],
    rows: list[Row],
    text_column: str,
    id_column: str | None,
    group_column: str | None,
) -> tuple[list[str], list[str], list[str | None] | None]:
    """Checks shared by every columnar format, so each mistake reads the same everywhere.

    Returns the ids, texts and groups (None without a group column) of a `PromptTable`.
    """
    shown = ", ".join(repr(c) for c in columns) or "none"
    if text_column not in columns:
        raise SaelabError(
            f"prompts file {source} has no text column {text_column!r} (columns: {shown}); "
            "name the column that holds the text with `text_column`"
        )
    explicit = ((id_column, "id", "`id_column`"), (group_column, "group", "`group_column`"))
    for column, default, flag in explicit:
        if column is not None and column != default and column not in columns:
            raise SaelabError(
                f"prompts file {source} has no column {column!r} (columns: {shown}); "
                f"fix {flag} or leave it out"
            )
    use_ids = id_column is not None and id_column in columns
    use_groups = group_column is not None and group_column in columns

    ids: list[str] = []
    texts: list[str] = []
    groups: list[str | None] = []
    first_seen: dict[str, str] = {}
    for position, (where, row) in enumerate(rows):
        at = f"prompts file {source} {where}"
        text = row.get(text_column)
        if text is None:
            raise SaelabError(
                f"{at}: no text in column {text_column!r}; give every row a prompt or remove it"
            )
        if not isinstance(text, str):
            raise SaelabError(
                f"{at}: text in column {text_column!r} is a {json_type(text)}, not a string; "
                "write the prompt as a quoted string"
            )
        if not text.strip():
            raise SaelabError(
                f"{at}: text in column {text_column!r} is empty; give every row a prompt or "
                "remove it"
            )
        check_encodable(text, at, text_column)
        texts.append(text)

        if use_ids:
            assert id_column is not None
            raw_id = _scalar(row.get(id_column), at, id_column)
            if raw_id is None or not raw_id.strip():
                raise SaelabError(
                    f"{at}: no id in column {id_column!r}; give every row an id, or leave the "
                    "column out to number prompts from 0"
                )
            if raw_id in first_seen:
                raise SaelabError(
                    f"{at}: duplicate id {raw_id!r} (first on {first_seen[raw_id]}); make every "
                    "id unique, or leave the id column out to number prompts from 0"
                )
            first_seen[raw_id] = where
            ids.append(raw_id)
        else:
            ids.append(str(position))

        if use_groups:
            assert group_column is not None
            group = _scalar(row.get(group_column), at, group_column)
            groups.append(group if group is not None and group.strip() else None)
    return ids, texts, groups if use_groups else None


def _scalar(value: Any, at: str, column: str) -> str | None:
    """Ids and groups may be written as numbers or booleans; they are compared as strings."""
    if value is None or isinstance(value, str):
        if value is not None:
            check_encodable(value, at, column)
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise SaelabError(
        f"{at}: value in column {column!r} is a {json_type(value)}; write it as a string"
    )
