"""Streaming readers for training corpora (txt, JSON lines, Parquet, the stdlib docstrings).

Split out of `saelab.data.corpus`, which picks a reader by suffix. Unlike prompt tables, a corpus
may be far larger than memory and is usually read only up to a token budget, so every reader
here is a generator that reads a line, a paragraph or a Parquet batch at a time. Mistakes are
reported as one-line SaelabErrors naming the file, the line or row, and the fix, in the same
words as the prompt readers (`saelab.data.readers`), whose surrogate and type checks are reused.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from saelab.data.readers import _check_encodable, _json_type
from saelab.errors import SaelabError

# Folders of the stdlib tree that are not the standard library's own documentation: installed
# packages, test suites (full of deliberately odd strings) and generated codec tables.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
)
MIN_DOCSTRING_CHARS = 40
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)
_PARQUET_BATCH_ROWS = 1024


def _decode_line(raw: bytes, source: str, number: int, offset: int) -> str:
    """Decode one line strictly: a silently replaced byte would change the tokens trained on.

    Decoding line by line is exact for UTF-8, whose multi-byte sequences never contain b"\\n".
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SaelabError(
            f"corpus file {source} line {number} column {e.start + 1}: invalid UTF-8 byte "
            f"0x{raw[e.start]:02x} at byte offset {offset + e.start}; re-encode the file as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e


def _text_lines(path: Path, source: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs without line endings; a leading byte-order mark is dropped.

    Splits on "\\n" only (and drops a "\\r" before it): str.splitlines would also break at
    \\f or U+2028, which are text, not line ends.
    """
    offset = 0
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                line = _decode_line(raw, source, number, offset)
                offset += len(raw)
                if number == 1:
                    line = line.removeprefix("\ufeff")
                yield number, line.removesuffix("\n").removesuffix("\r")
    except OSError as e:
        raise SaelabError(
            f"corpus file {source} cannot be read ({e.strerror}); check its permissions"
        ) from e


def read_txt(path: Path, source: str) -> Iterator[str]:
    """Paragraphs (runs of non-blank lines) as documents; a file with no blank line is one.

    Lines inside a paragraph keep their indentation and are joined with "\\n"; blank lines
    (empty or whitespace only) only separate documents.
    """
    paragraph: list[str] = []
    for _, line in _text_lines(path, source):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def read_jsonl(path: Path, source: str, text_column: str) -> Iterator[str]:
    """One document per JSON object; rows whose text is null or empty are skipped, as datasets
    often carry them, but a missing column or a non-string text is an error."""
    for number, line in _text_lines(path, source):
        if not line.strip():
            continue
        at = f"corpus file {source} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SaelabError(
                f"{at} column {e.colno}: not valid JSON ({e.msg}); "
                f'write one JSON object per line, like {{"{text_column}": "..."}}'
            ) from e
        if not isinstance(obj, dict):
            raise SaelabError(
                f"{at}: is a JSON {_json_type(obj)}, not an object; "
                f'write one JSON object per line, like {{"{text_column}": "..."}}'
            )
        if text_column not in obj:
            shown = ", ".join(repr(c) for c in obj) or "none"
            raise SaelabError(
                f"{at} has no text column {text_column!r} (columns: {shown}); "
                "name the column that holds the text with `text_column`"
            )
        text = obj[text_column]
        if text is None:
            continue
        if not isinstance(text, str):
            raise SaelabError(
                f"{at}: text in column {text_column!r} is a {_json_type(text)}, not a string; "
                "choose the column that holds the text with `text_column`"
            )
        if text.strip():
            _check_encodable(text, at, text_column)
            yield text


def read_parquet(path: Path, source: str, text_column: str) -> Iterator[str]:
    """The text column, a batch of rows at a time; null and empty texts are skipped."""
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> SaelabError:
        detail = " ".join(str(e).split())
        return SaelabError(
            f"corpus file {source} is not a readable Parquet file ({detail}); "
            "rewrite it with pyarrow or pandas, or use another format"
        )

    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from e
    if text_column not in names:
        shown = ", ".join(repr(c) for c in names) or "none"
        raise SaelabError(
            f"corpus file {source} has no text column {text_column!r} (columns: {shown}); "
            "name the column that holds the text with `text_column`"
        )
    kind = pf.schema_arrow.field(text_column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SaelabError(
            f"corpus file {source}: column {text_column!r} has type {kind}, but texts must be "
            "strings; choose the column that holds the text with `text_column`"
        )
    row = 0
    batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_column])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise unreadable(e) from e
        column = batch.column(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        try:
            texts = column.to_pylist()
        except UnicodeDecodeError:
            raise _bad_utf8_row(column, source, text_column, row) from None
        for text in texts:
            if text is not None and text.strip():
                yield text
        row += len(column)


def _bad_utf8_row(column: pa.Array, source: str, text_column: str, first_row: int) -> SaelabError:
    """Parquet writers do not always validate UTF-8; find and name the row so it can be fixed."""
    for i in range(len(column)):
        try:
            column[i].as_py()
        except UnicodeDecodeError as e:
            return SaelabError(
                f"corpus file {source} row {first_row + i + 1}: column {text_column!r} holds "
                f"invalid UTF-8 (byte offset {e.start} in that text); rewrite that row as "
                "valid UTF-8"
            )
    return SaelabError(
        f"corpus file {source}: column {text_column!r} holds invalid UTF-8 near row "
        f"{first_row + 1}; rewrite the file with valid UTF-8 texts"
    )


def stdlib_root() -> Path:
    """The running Python's standard library folder (the same one `import` would use)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The stdlib .py files read for docstrings, sorted by relative path for a stable order."""
    root = stdlib_root()
    found: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root):
        # prune in place: site-packages alone can hold tens of thousands of files
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP_DIRS]
        base = Path(folder)
        for name in names:
            if name.endswith(".py"):
                path = base / name
                found.append((path.relative_to(root).as_posix(), path))
    return [path for _, path in sorted(found)]


def stdlib_docstrings() -> Iterator[str]:
    """Docstrings of the stdlib: real technical English that every Python install carries.

    Files are parsed with `ast`, never imported (importing would run code such as `antigravity`
    or `this`). Order: sorted files, then module, class and function docstrings in source order.
    Docstrings are dedented with `inspect.cleandoc` and stripped; those shorter than
    MIN_DOCSTRING_CHARS ("Return self.") carry little text and are skipped. Files Python cannot
    parse (a few Python-2 fixtures) are skipped too.
    """
    docstring_nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        stack: list[ast.AST] = [tree]
        while stack:  # depth-first, children in source order
            node = stack.pop()
            if isinstance(node, docstring_nodes):
                doc = ast.get_docstring(node, clean=False)
                if doc is not None:
                    # cleandoc keeps a last line of spaces when no other line is indented
                    doc = inspect.cleandoc(doc).strip()
                    if len(doc) >= MIN_DOCSTRING_CHARS:
                        yield doc
            # Definitions live only in statement bodies (also of if/try/with/match blocks);
            # skipping expressions makes the walk several times cheaper.
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, _BLOCK_NODES)]
            stack.extend(reversed(children))
