"""Token streams for SAE training: raw text in, fixed-length token windows out.

`saelab train --stream --corpus FILE|FOLDER` trains on activations of text the user points at
(txt, JSON lines or Parquet files, or a folder of them) rather than on a prompt table. Nothing
may be downloaded, so "builtin:stdlib" gives real English that every machine already has: the
docstrings of the Python standard library. Texts are read lazily (`iter_texts`) so a run that
needs 250k tokens never reads a whole corpus; `pack_windows` tokenizes and cuts them into
windows the SAELens/TransformerLens way; `split_windows` holds some windows out for
evaluation; `corpus_fingerprint` lets a resumed run refuse a corpus that changed.
The per-format readers live in `saelab.data.corpus_readers`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saelab.data.corpus_readers import (
    read_jsonl,
    read_parquet,
    read_txt,
    stdlib_docstrings,
    stdlib_files,
    stdlib_root,
)
from saelab.errors import SaelabError

BUILTIN_PREFIX = "builtin:"
STDLIB_SOURCE = "builtin:stdlib"
_BUILTINS: dict[str, Callable[[], Iterator[str]]] = {"stdlib": stdlib_docstrings}
_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_SUPPORTED = ".txt, .jsonl, .ndjson, .parquet"
_FINGERPRINT_VERSION = "saelab-corpus-v1"
# Texts are tokenized in batches of about this many characters: big enough for the fast
# tokenizer's batch parallelism, small enough that a token budget stops reading soon after
# it is reached.
_BATCH_CHARS = 1 << 18
_MIN_BATCH_CHARS = 1 << 12
_CHARS_PER_TOKEN_GUESS = 4


def builtin_text(name: str = "stdlib") -> Iterator[str]:
    """Documents of a built-in corpus, so tests and the demo train on real text offline."""
    if name not in _BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + k for k in _BUILTINS)
        raise SaelabError(
            f"unknown built-in corpus {BUILTIN_PREFIX}{name}; use one of: {known}, "
            "or a path to your own text files"
        )
    return _BUILTINS[name]()


def corpus_files(source: str | Path) -> list[Path]:
    """The files a corpus path stands for, in reading order (a folder: recursive, sorted).

    Inside a folder, files with other suffixes and hidden files or folders (".git") are
    skipped, so a dataset folder with a README still works.
    """
    p = Path(source).expanduser()
    shown = str(p)
    if not p.exists():
        raise SaelabError(
            f"corpus path {shown} does not exist; check the path (relative paths start from "
            f"{Path.cwd()}), or use {STDLIB_SOURCE} for the built-in corpus"
        )
    if p.is_file():
        if p.suffix.lower() not in _FORMATS:
            raise SaelabError(
                f"corpus file {shown} has unsupported suffix {p.suffix or '(none)'!r}; "
                f"use a {_SUPPORTED} file or a folder of them"
            )
        return [p]
    files = [
        f
        for f in p.rglob("*")
        if f.suffix.lower() in _FORMATS
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
        and f.is_file()
    ]
    if not files:
        raise SaelabError(
            f"corpus folder {shown} has no {_SUPPORTED} files (searched recursively); "
            "add some, or point --corpus at a file"
        )
    return sorted(files, key=lambda f: f.relative_to(p).as_posix())


def iter_texts(source: str | Path, *, text_column: str = "text") -> Iterator[str]:
    """Documents of a corpus, read lazily in a fixed order.

    A .txt file gives one document per paragraph (blank lines separate documents, so a file
    with none is one document); .jsonl/.ndjson one per line and .parquet one per row, from
    `text_column` (null and empty texts are skipped); a folder every such file inside it;
    "builtin:stdlib" the stdlib docstrings. The path is checked now, so a wrong path fails
    before any work starts; file contents are checked as they are read.
    """
    name = str(source)
    if name.startswith(BUILTIN_PREFIX):
        return builtin_text(name.removeprefix(BUILTIN_PREFIX))
    return _read_files(corpus_files(source), text_column)


def _read_files(files: list[Path], text_column: str) -> Iterator[str]:
    for f in files:
        fmt = _FORMATS[f.suffix.lower()]
        if fmt == "txt":
            yield from read_txt(f, str(f))
        elif fmt == "jsonl":
            yield from read_jsonl(f, str(f), text_column)
        else:
            yield from read_parquet(f, str(f), text_column)


def corpus_fingerprint(source: str | Path) -> str:
    """Cheap identity of a corpus, so a resumed run can refuse one that changed in between.

    Files: sha256 over (relative path, size, mtime_ns) of each file, without reading them
    (a corpus can be many gigabytes). builtin:stdlib: over the Python version and the stdlib
    files read (relative path and size). The text column is not part of it; record it beside.
    """
    name = str(source)
    if name.startswith(BUILTIN_PREFIX):
        builtin_text(name.removeprefix(BUILTIN_PREFIX))  # unknown names fail here
        root = stdlib_root()
        listing: list[Any] = [
            [f.relative_to(root).as_posix(), f.stat().st_size] for f in stdlib_files()
        ]
        payload: list[Any] = [_FINGERPRINT_VERSION, name, sys.version, listing]
    else:
        p = Path(source).expanduser()
        files = corpus_files(p)
        base = p if p.is_dir() else p.parent
        listing = []
        for f in files:
            st = f.stat()
            listing.append([f.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns])
        payload = [_FINGERPRINT_VERSION, listing]
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


@dataclass
class TokenWindows:
    """Training windows cut from a corpus's token stream."""

    windows: np.ndarray  # (n_windows, context) int32 token ids
    bos_id: int | None  # when not None, every window starts with it
    n_documents: int  # documents with at least one token in the windows
    n_tokens: int  # stream tokens in the windows (document tokens and separators, not BOS)

    @property
    def context(self) -> int:
        return int(self.windows.shape[1])

    def __len__(self) -> int:
        return int(self.windows.shape[0])


def pack_windows(
    texts: Iterable[str],
    tokenizer: Any,
    *,
    context: int = 128,
    prepend_bos: bool = True,
    max_tokens: int | None = None,
    separator: str = "eos",
    source: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TokenWindows:
    """Tokenize documents into one stream and cut it into windows of `context` tokens.

    Documents are joined with the tokenizer's EOS id (`separator="eos"`, so the model sees
    where one ends) or nothing (`"none"`). With `prepend_bos` each window is [BOS] followed
    by context-1 stream tokens, the SAELens/TransformerLens convention: position 0 is an
    attention sink with huge activations, so every window must have the same one. A tokenizer
    without BOS gives windows of `context` stream tokens and `bos_id=None`. The last partial
    window is dropped. With `max_tokens`, reading stops once that many stream tokens are
    collected, and the windows hold at most that many. `source` names the corpus in errors;
    `on_progress` is called with the number of stream tokens collected after each batch.
    """
    where = f"corpus {source}" if source else "the corpus"
    min_context = 2 if prepend_bos else 1
    if isinstance(context, bool) or not isinstance(context, int) or context < min_context:
        raise SaelabError(
            f"context {context!r} is too short for windows of {where}; pass --context "
            f"{min_context} or more (128 is usual)"
        )
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise SaelabError(
            f"max_tokens {max_tokens!r} for {where} must be a whole number of at least 1; "
            "pass a positive --max-tokens or leave it out to read the whole corpus"
        )
    if separator not in ("eos", "none"):
        raise SaelabError(f"separator {separator!r} for {where} is unknown; use 'eos' or 'none'")
    bos_id = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    sep_id = getattr(tokenizer, "eos_token_id", None) if separator == "eos" else None
    if separator == "eos" and sep_id is None:
        raise SaelabError(
            f"the tokenizer for {where} has no EOS token to separate documents; "
            "pass separator 'none'"
        )
    per_window = context - 1 if bos_id is not None else context

    chunks: list[np.ndarray] = []
    doc_starts: list[int] = []
    collected = 0
    texts_iter = iter(texts)
    exhausted = False
    while not exhausted and (max_tokens is None or collected < max_tokens):
        budget = _BATCH_CHARS
        if max_tokens is not None:  # read little more than the tokens still missing
            missing = (max_tokens - collected) * _CHARS_PER_TOKEN_GUESS
            budget = min(_BATCH_CHARS, max(_MIN_BATCH_CHARS, missing))
        batch: list[str] = []
        chars = 0
        while chars < budget:
            text = next(texts_iter, None)
            if text is None:
                exhausted = True
                break
            if text.strip():
                batch.append(text)
                chars += len(text)
        if not batch:
            break
        encoded = tokenizer(
            batch,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "sequence longer than the model's maximum" warning: we cut it
        )["input_ids"]
        flat: list[int] = []
        for ids in encoded:
            if not len(ids):
                continue
            if sep_id is not None and collected + len(flat) > 0:
                flat.append(sep_id)
            doc_starts.append(collected + len(flat))
            flat.extend(ids)
        chunks.append(np.asarray(flat, dtype=np.int32))
        collected += len(flat)
        if on_progress is not None:
            on_progress(collected)

    available = collected if max_tokens is None else min(collected, max_tokens)
    n_windows = available // per_window
    if n_windows == 0:
        limit = "" if max_tokens is None else f" (max_tokens {max_tokens})"
        bos_note = " after BOS" if bos_id is not None else ""
        raise SaelabError(
            f"{where} gives {available} tokens{limit} from {len(doc_starts)} document"
            f"{'' if len(doc_starts) == 1 else 's'}, fewer "
            f"than one window of {per_window} tokens (context {context}{bos_note}); add text, "
            "raise --max-tokens, or lower --context"
        )
    used = n_windows * per_window
    stream = np.concatenate(chunks)[:used] if chunks else np.zeros(0, np.int32)
    windows = stream.reshape(n_windows, per_window)
    if bos_id is not None:
        bos_column = np.full((n_windows, 1), bos_id, dtype=np.int32)
        windows = np.concatenate([bos_column, windows], axis=1)
    return TokenWindows(
        windows=np.ascontiguousarray(windows),
        bos_id=bos_id,
        n_documents=bisect.bisect_left(doc_starts, used),
        n_tokens=used,
    )


HOLDOUT_CAP = 32  # a default fraction never holds out more prompts/windows than this


def holdout_count(holdout: float | int, n: int, *, cap: int | None = None) -> int:
    """How many of `n` prompts or windows to hold out: a fraction of them (at most `cap`,
    e.g. the default's 32), or a whole count as given. Each side keeps at least one item
    when there are two or more, so evaluation and training always have data."""
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or holdout < 0:
        raise SaelabError(
            f"holdout {holdout!r} must be a fraction below 1 (e.g. 0.1) or a whole number"
        )
    if isinstance(holdout, float):
        if holdout >= 1.0:
            raise SaelabError(
                f"holdout fraction {holdout!r} must be below 1; pass e.g. 0.1, or a whole number"
            )
        k = round(holdout * n)
        if cap is not None:
            k = min(k, cap)
    else:
        k = int(holdout)
    if holdout > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return min(k, n - 1) if n >= 1 else 0


def parse_holdout(text: str | float | int) -> float | int:
    """'0.1' -> 0.1 (a fraction), '32' -> 32 (a count); the CLI's spelling of both."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        raise SaelabError(
            f"holdout {text!r} is neither a fraction (0.1) nor a whole number (32)"
        ) from None


def split_windows(
    w: TokenWindows | np.ndarray, holdout: float | int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split windows into (train, held-out) by a seeded shuffle, the same on every machine.

    `holdout` is a fraction in [0, 1) or a count of windows. With two or more windows and a
    non-zero holdout, each side gets at least one, so evaluation always has data; holdout 0
    holds nothing out. Both parts keep corpus order (shuffling batches is the trainer's job).
    """
    windows = w.windows if isinstance(w, TokenWindows) else np.asarray(w)
    n = int(windows.shape[0])
    if isinstance(holdout, bool) or not isinstance(holdout, int | float):
        raise SaelabError(
            f"holdout {holdout!r} must be a fraction below 1 or a whole number of windows"
        )
    if isinstance(holdout, float):
        if not 0.0 <= holdout < 1.0:
            raise SaelabError(
                f"holdout fraction {holdout!r} must be at least 0 and below 1; "
                "pass e.g. 0.05, or a whole number of windows"
            )
        n_hold = round(holdout * n)
    else:
        if holdout < 0:
            raise SaelabError(f"holdout {holdout!r} must not be negative; pass 0 or more windows")
        n_hold = holdout
    if holdout > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    n_hold = min(n_hold, n - 1) if n >= 1 else 0
    order = np.random.default_rng(seed).permutation(n)
    held = np.sort(order[:n_hold])
    train = np.sort(order[n_hold:])
    return windows[train], windows[held]
