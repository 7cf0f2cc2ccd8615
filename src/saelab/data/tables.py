"""One streaming reader for the tables users give: prompt sets and training corpora alike.

Text files are read a line at a time and decoded strictly (a silently replaced byte would
change the tokens), JSON lines and CSV/TSV become rows that remember where they came from,
Parquet is read a batch of rows at a time. A corpus may be far larger than memory and is read
only up to a token budget, so nothing here reads a whole file. Every mistake is one
SaelabError naming the file (as `kind`: "prompts file", "corpus file"), the line or row, and
the fix, in the same words for prompts and corpora.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from saelab.errors import SaelabError

#: A row before validation: where it came from (for messages) and its raw cell values.
Row = tuple[str, dict[str, Any]]
PARQUET_BATCH_ROWS = 1024


def must_exist(p: Path, what: str, otherwise: str = "") -> None:
    """A path the user named must be there; say where relative paths start from."""
    if not p.exists():
        raise SaelabError(
            f"{what} {p} does not exist; check the path (relative paths start from"
            f" {Path.cwd()}){otherwise}"
        )


def table_format(p: Path, formats: dict[str, str], where: str, use: str) -> str:
    """The format a file's suffix says; another suffix is refused with what to `use`."""
    fmt = formats.get(p.suffix.lower())
    if fmt is None:
        raise SaelabError(f"{where} has unsupported suffix {p.suffix or '(none)'!r}; use {use}")
    return fmt


def lines(f: IO[bytes], where: str, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line) of a binary file; a leading byte-order mark is dropped.

    Splits on "\\n" only and, unless `keep_ends`, drops it and a "\\r" before it:
    str.splitlines would also break at \\f or U+2028, which are text, not line ends. Decoding
    line by line is exact for UTF-8, whose multi-byte sequences never contain b"\\n".
    """
    offset = 0
    for number, raw in enumerate(f, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SaelabError(
                f"{where} line {number} column {e.start + 1}: invalid UTF-8 byte "
                f"0x{raw[e.start]:02x} at byte offset {offset + e.start}; re-encode the file as "
                "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from e
        offset += len(raw)
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield number, line if keep_ends else line.removesuffix("\n").removesuffix("\r")


def json_rows(f: IO[bytes], where: str, text_column: str = "text") -> Iterator[Row]:
    """One object per non-blank line, as ("line N", object)."""
    example = f'write one JSON object per line, like {{"{text_column}": "..."}}'
    for number, line in lines(f, where):
        if not line.strip():
            continue
        at = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaelabError(
                f"{where} {at} column {e.colno}: not valid JSON ({e.msg}); {example}"
            ) from e
        if not isinstance(obj, dict):
            raise SaelabError(f"{where} {at}: is a JSON {json_type(obj)}, not an object; {example}")
        yield at, obj


def delimited_rows(f: IO[bytes], where: str, delimiter: str) -> tuple[list[str], Iterator[Row]]:
    """(header, rows) of CSV/TSV through the csv module: every cell stays a string ("001" is
    not 1), quoted fields may hold delimiters and line breaks."""
    kind = "CSV" if delimiter == "," else "TSV"
    reader = csv.reader((line for _, line in lines(f, where, keep_ends=True)),
                        delimiter=delimiter, strict=True)  # fmt: skip

    def records() -> Iterator[tuple[int, list[str]]]:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise SaelabError(
                    f"{where} line {start}: malformed {kind} ({e}); quote fields that contain"
                    ' quotes or line breaks, doubling inner quotes ("")'
                ) from e
            if cells and not (len(cells) == 1 and not cells[0].strip()):
                yield start, cells

    it = records()
    first = next(it, None)
    if first is None:
        return [], iter(())
    start, header = first
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise SaelabError(
            f"{where} line {start}: the header repeats column {duplicates[0]!r}; give every"
            " column a distinct name"
        )

    def rows() -> Iterator[Row]:
        for line, cells in it:
            if len(cells) != len(header):
                raise SaelabError(
                    f"{where} line {line}: {len(cells)} fields but the header has {len(header)};"
                    f" quote fields that contain the delimiter {delimiter!r}"
                )
            yield f"line {line}", dict(zip(header, cells, strict=True))

    return header, rows()


def parquet_columns(path: Any, where: str, text_column: str) -> tuple[pq.ParquetFile, list[str]]:
    """The file and its column names; the text column, when there, must hold strings."""
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        raise unreadable_parquet(e, where) from e
    if text_column in names:
        kind = pf.schema_arrow.field(text_column).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise SaelabError(
                f"{where}: column {text_column!r} has type {kind}, but texts must be strings;"
                " choose the column that holds the text with `text_column`"
            )
    return pf, names


def parquet_batches(
    pf: pq.ParquetFile, where: str, columns: list[str]
) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    """(first row number, {column: values as Python strings or None}) a batch at a time;
    text that is not valid UTF-8 names its row."""
    row = 0
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise unreadable_parquet(e, where) from e
        values = {}
        for name, column in zip(columns, batch.columns, strict=True):
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            try:
                values[name] = column.cast(pa.string()).to_pylist()
            except UnicodeDecodeError:
                raise _bad_utf8_row(column, where, name, row) from None
            except pa.ArrowException as e:
                raise SaelabError(
                    f"{where}: column {name!r} of type {column.type} cannot be read as strings;"
                    " store ids and groups as strings or integers"
                ) from e
        yield row, values
        row += batch.num_rows


def unreadable_parquet(e: Exception, where: str) -> SaelabError:
    detail = " ".join(str(e).split())
    return SaelabError(
        f"{where} is not a readable Parquet file ({detail}); rewrite it with pyarrow or pandas,"
        " or use another format"
    )


def _bad_utf8_row(column: pa.Array, where: str, name: str, first_row: int) -> SaelabError:
    """Parquet writers do not always validate UTF-8; find and name the row so it can be fixed."""
    for i in range(len(column)):
        try:
            column[i].as_py()
        except UnicodeDecodeError as e:
            return SaelabError(
                f"{where} row {first_row + i + 1}: column {name!r} holds invalid UTF-8 (byte"
                f" offset {e.start} in that text); rewrite that row as valid UTF-8"
            )
    return SaelabError(
        f"{where}: column {name!r} holds invalid UTF-8 near row {first_row + 1}; rewrite the"
        " file with valid UTF-8 texts"
    )


def check_encodable(value: str, at: str, column: str) -> None:
    """JSON escapes can smuggle in lone surrogates, which no tokenizer or Parquet file takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SaelabError(
            f"{at}: value in column {column!r} contains an unpaired surrogate escape "
            f"(\\u{ord(value[e.start]):04x}); fix or remove that escape"
        ) from e


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "number" if isinstance(value, int | float) else type(value).__name__


def first(rows: Iterable[Row], limit: int | None) -> list[Row]:
    """At most `limit` rows (all without a limit), reading no further than needed."""
    out: list[Row] = []
    for r in rows:
        out.append(r)
        if limit is not None and len(out) >= limit:
            break
    return out
