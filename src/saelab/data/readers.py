"""Per-format prompt readers (txt, JSON lines, CSV/TSV, Parquet) and the checks they share.

Split out of `saelab.data.prompts`, which keeps `PromptTable` and the `read_prompts` entry point
that picks a reader by suffix. Each reader turns a file into raw rows that remember where they
came from; `_build_columns` then checks them the same way for every format, so a mistake is
reported as one SaelabError naming the file, the line or row, and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from saelab.errors import SaelabError

# A parsed row before validation: where it came from (for messages) and its raw cell values.
_Row = tuple[str, dict[str, Any]]


def _decode(data: bytes, source: str) -> str:
    """Decode strictly: a silently replaced byte would change prompts and their tokens."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SaelabError(
            f"prompts file {source} line {line} column {column}: invalid UTF-8 byte "
            f"0x{data[e.start]:02x} at byte offset {e.start}; re-encode the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from e
    # A byte-order mark would otherwise stick to the first prompt or the first column name.
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """Split on "\\n" only: str.splitlines would also break prompts at \\f, \\x1c or U+2028."""
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_txt(text: str, limit: int | None) -> list[str]:
    texts: list[str] = []
    for line in _lines(text):
        if line.strip():
            texts.append(line)
            if limit is not None and len(texts) >= limit:
                break
    return texts


def _parse_jsonl(text: str, source: str, limit: int | None) -> tuple[list[str], list[_Row]]:
    columns: dict[str, None] = {}
    rows: list[_Row] = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaelabError(
                f"prompts file {source} {where} column {e.colno}: not valid JSON ({e.msg}); "
                'write one JSON object per line, like {"text": "..."}'
            ) from e
        if not isinstance(obj, dict):
            raise SaelabError(
                f"prompts file {source} {where}: is a JSON {_json_type(obj)}, not an object; "
                'write one JSON object per line, like {"text": "..."}'
            )
        columns.update(dict.fromkeys(obj))
        rows.append((where, obj))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise SaelabError(
            f"prompts file {source} has no prompts, only blank lines; "
            'add one JSON object per line, like {"text": "..."}'
        )
    return list(columns), rows


def _parse_delimited(
    text: str, source: str, delimiter: str, limit: int | None
) -> tuple[list[str], list[_Row]]:
    """CSV/TSV through the csv module: every cell stays a string ("001" is not 1)."""
    kind = "CSV" if delimiter == "," else "TSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[_Row] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise SaelabError(
                f"prompts file {source} line {start}: malformed {kind} ({e}); "
                'quote fields that contain quotes or line breaks, doubling inner quotes ("")'
            ) from e
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if header is None:
            duplicates = sorted({c for c in cells if cells.count(c) > 1})
            if duplicates:
                raise SaelabError(
                    f"prompts file {source} line {start}: the header repeats column "
                    f"{duplicates[0]!r}; give every column a distinct name"
                )
            header = cells
            continue
        if len(cells) != len(header):
            raise SaelabError(
                f"prompts file {source} line {start}: {len(cells)} fields but the header has "
                f"{len(header)}; quote fields that contain the delimiter {delimiter!r}"
            )
        rows.append((f"line {start}", dict(zip(header, cells, strict=True))))
        if limit is not None and len(rows) >= limit:
            break
    if header is None or not rows:
        what = "no header row" if header is None else "a header row but no prompts"
        raise SaelabError(
            f"prompts file {source} has {what}; write a header line (e.g. text) "
            "followed by one prompt per row"
        )
    return header, rows


def _parse_parquet(
    p: Path,
    source: str,
    text_column: str,
    id_column: str | None,
    group_column: str | None,
    limit: int | None,
) -> tuple[list[str], list[_Row]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
        names = list(pf.schema_arrow.names)
        wanted = [c for c in dict.fromkeys((text_column, id_column, group_column)) if c in names]
        table = pf.read(columns=wanted)
    except (pa.ArrowException, OSError) as e:
        detail = " ".join(str(e).split())
        raise SaelabError(
            f"prompts file {source} is not a readable Parquet file ({detail}); "
            "rewrite it with pyarrow or pandas, or use another format"
        ) from e
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise SaelabError(f"prompts file {source} has no rows; add at least one prompt")
    values: dict[str, list[Any]] = {}
    for name in wanted:
        column = table.column(name)
        is_text = name == text_column
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        stringish = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if is_text and not stringish:
            raise SaelabError(
                f"prompts file {source}: column {name!r} has type {column.type}, but prompt "
                "texts must be strings; choose the text column with `text_column`"
            )
        try:
            values[name] = column.cast(pa.string()).to_pylist()
        except (pa.ArrowException, UnicodeDecodeError) as e:
            raise SaelabError(
                f"prompts file {source}: column {name!r} of type {column.type} cannot be read "
                "as strings; store ids and groups as strings or integers"
            ) from e
    rows = [
        (f"row {i + 1}", {name: values[name][i] for name in wanted}) for i in range(table.num_rows)
    ]
    return names, rows


def _build_columns(
    source: str,
    columns: list[str],
    rows: list[_Row],
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
            "name the column that holds the prompts with `text_column`"
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
                f"{at}: text in column {text_column!r} is a {_json_type(text)}, not a string; "
                "write the prompt as a quoted string"
            )
        if not text.strip():
            raise SaelabError(
                f"{at}: text in column {text_column!r} is empty; give every row a prompt or "
                "remove it"
            )
        _check_encodable(text, at, text_column)
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
            _check_encodable(value, at, column)
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise SaelabError(
        f"{at}: value in column {column!r} is a {_json_type(value)}; write it as a string"
    )


def _check_encodable(value: str, at: str, column: str) -> None:
    """JSON escapes can smuggle in lone surrogates, which no tokenizer or Parquet file takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SaelabError(
            f"{at}: value in column {column!r} contains an unpaired surrogate escape "
            f"(\\u{ord(value[e.start]):04x}); fix or remove that escape"
        ) from e


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "number" if isinstance(value, int | float) else type(value).__name__
