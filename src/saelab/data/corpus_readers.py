"""Documents of training corpora (txt paragraphs, JSON lines, Parquet, the stdlib docstrings).

`saelab.data.corpus` picks a reader by suffix. A corpus may be far larger than memory and is
usually read only up to a token budget, so every reader is a generator over the streaming rows
of `saelab.data.tables` (the same reader and the same messages as prompt files).
"""

from __future__ import annotations

import ast
import inspect
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from saelab.data.tables import (
    check_encodable,
    json_rows,
    json_type,
    lines,
    parquet_batches,
    parquet_columns,
)
from saelab.errors import SaelabError

# Folders of the stdlib tree that are not the standard library's own documentation: installed
# packages, test suites (full of deliberately odd strings) and generated codec tables.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
)
MIN_DOCSTRING_CHARS = 40
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)


def _open(path: Path, source: str) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as e:
        raise SaelabError(
            f"corpus file {source} cannot be read ({e.strerror}); check its permissions"
        ) from e


def read_txt(path: Path, source: str) -> Iterator[str]:
    """Paragraphs (runs of non-blank lines) as documents; a file with no blank line is one.

    Lines inside a paragraph keep their indentation and are joined with "\n"; blank lines
    (empty or whitespace only) only separate documents.
    """
    paragraph: list[str] = []
    with _open(path, source) as f:
        for _, line in lines(f, f"corpus file {source}"):
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
    where = f"corpus file {source}"
    with _open(path, source) as f:
        for line, obj in json_rows(f, where, text_column):
            at = f"{where} {line}"
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
                    f"{at}: text in column {text_column!r} is a {json_type(text)}, not a string;"
                    " choose the column that holds the text with `text_column`"
                )
            if text.strip():
                check_encodable(text, at, text_column)
                yield text


def read_parquet(path: Path, source: str, text_column: str) -> Iterator[str]:
    """The text column, a batch of rows at a time; null and empty texts are skipped."""
    where = f"corpus file {source}"
    pf, names = parquet_columns(path, where, text_column)
    if text_column not in names:
        shown = ", ".join(repr(c) for c in names) or "none"
        raise SaelabError(
            f"{where} has no text column {text_column!r} (columns: {shown}); "
            "name the column that holds the text with `text_column`"
        )
    for _, values in parquet_batches(pf, where, [text_column]):
        for text in values[text_column]:
            if text is not None and text.strip():
                yield text


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
