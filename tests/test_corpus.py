"""Training corpora: every format read from real files, the real stdlib docstrings, windows
packed with the default model's real tokenizer, and every user mistake reported in one line."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelab.data.corpus import (
    STDLIB_SOURCE,
    TokenWindows,
    builtin_text,
    corpus_fingerprint,
    iter_texts,
    pack_windows,
    split_windows,
)
from saelab.errors import SaelabError


def write(path: Path, content: str | bytes) -> Path:
    """Write exact bytes, so line endings and encodings are what the test says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(path: Path, *objects: Any) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def parquet(path: Path, **columns: list[Any]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@contextlib.contextmanager
def fails(*fragments: str) -> Iterator[None]:
    """Expect a one-line SaelabError that mentions every fragment: the CLI shows only that line."""
    with pytest.raises(SaelabError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.fixture(scope="module")
def tok() -> Any:
    """The default model's tokenizer (no model weights are loaded)."""
    from transformers import AutoTokenizer

    from saelab.models.describe import describe_model

    folder = describe_model("default").folder
    if folder is None:  # first run on this machine: convert the GGUF once (~20 s)
        from saelab.models.loading import convert_gguf, default_gguf_path

        folder = convert_gguf(default_gguf_path())
    return AutoTokenizer.from_pretrained(str(folder))


# --- formats ---------------------------------------------------------------------------------


def test_txt_paragraphs_are_documents(tmp_path: Path) -> None:
    p = write(
        tmp_path / "a.txt",
        "\ufeffFirst para\r\n  keeps indent\n\n \t \n\nSecond\x0cpara\u2028same\n\n",
    )
    assert list(iter_texts(p)) == ["First para\n  keeps indent", "Second\x0cpara\u2028same"]
    one = write(tmp_path / "one.txt", "a whole file\nwithout blank lines")
    assert list(iter_texts(one)) == ["a whole file\nwithout blank lines"]
    assert list(iter_texts(write(tmp_path / "empty.txt", "\n\n"))) == []


def test_jsonl_reads_the_text_column_and_skips_null_and_empty(tmp_path: Path) -> None:
    p = jsonl(
        tmp_path / "c.jsonl",
        {"text": "one", "id": 1},
        {"text": None},
        {"text": "  "},
        {"body": "x", "text": "two\nlines"},
    )
    assert list(iter_texts(p)) == ["one", "two\nlines"]
    q = jsonl(tmp_path / "d.ndjson", {"body": "b1"}, {"body": "b2"})
    assert list(iter_texts(q, text_column="body")) == ["b1", "b2"]


def test_parquet_reads_the_text_column_in_batches(tmp_path: Path) -> None:
    texts = [f"document {i}" for i in range(2500)] + [None, ""]
    p = parquet(tmp_path / "c.parquet", text=texts, n=list(range(len(texts))))
    assert list(iter_texts(p)) == texts[:2500]
    d = tmp_path / "d.parquet"
    pq.write_table(pa.table({"t": pa.array(["x", "y", "x"]).dictionary_encode()}), d)
    assert list(iter_texts(d, text_column="t")) == ["x", "y", "x"]


def test_folder_reads_every_supported_file_recursively_in_path_order(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "b.txt", "from b")
    jsonl(root / "a" / "z.jsonl", {"text": "from a/z"})
    write(root / "a" / "y.txt", "from a/y\n\nsecond a/y")
    parquet(root / "c.parquet", text=["from c"])
    write(root / "README.md", "not a corpus file")
    write(root / ".git" / "x.txt", "hidden")
    assert list(iter_texts(root)) == ["from a/y", "second a/y", "from a/z", "from b", "from c"]


# --- builtin:stdlib --------------------------------------------------------------------------


def test_stdlib_docstrings_are_real_deterministic_clean_and_pack(tok: Any) -> None:
    first = list(itertools.islice(iter_texts(STDLIB_SOURCE), 200))
    assert len(first) == 200
    assert first[:50] == list(itertools.islice(builtin_text("stdlib"), 50))
    for doc in first:
        assert len(doc) >= 40
        assert doc == doc.strip()
    words = " ".join(first).split()
    assert len(words) > 5000
    assert {"the", "Return", "of"} <= set(words)
    w = pack_windows(first, tok, context=128, source=STDLIB_SOURCE)
    assert len(w) > 50
    assert w.n_documents > 100


def test_unknown_builtin() -> None:
    with fails("builtin:nope", "builtin:stdlib"):
        iter_texts("builtin:nope")
    with fails("builtin:nope"):
        corpus_fingerprint("builtin:nope")


# --- errors ----------------------------------------------------------------------------------


def test_missing_path_fails_before_reading(tmp_path: Path) -> None:
    with fails(str(tmp_path / "nope.txt"), "does not exist", STDLIB_SOURCE):
        iter_texts(tmp_path / "nope.txt")


def test_unsupported_suffix_lists_supported(tmp_path: Path) -> None:
    with fails("c.csv", "'.csv'", ".txt, .jsonl, .ndjson, .parquet"):
        iter_texts(write(tmp_path / "c.csv", "text\nhello\n"))


def test_folder_without_supported_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "notes.md", "# hi")
    with fails(str(tmp_path / "d"), "no .txt, .jsonl, .ndjson, .parquet files"):
        iter_texts(tmp_path / "d")


def test_missing_column_lists_columns_and_suggests_the_flag(tmp_path: Path) -> None:
    j = jsonl(tmp_path / "c.jsonl", {"text": "ok"}, {"body": "x", "n": 1})
    with fails("c.jsonl line 2", "'text'", "'body', 'n'", "`text_column`"):
        list(iter_texts(j))
    p = parquet(tmp_path / "c.parquet", body=["x"], n=[1])
    with fails("c.parquet", "'text'", "'body', 'n'", "`text_column`"):
        list(iter_texts(p))
    with fails("c.parquet", "'n'", "int64", "`text_column`"):
        list(iter_texts(p, text_column="n"))


def test_bad_jsonl_lines(tmp_path: Path) -> None:
    with fails("c.jsonl line 2", "not valid JSON"):
        list(iter_texts(write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": \n')))
    with fails("d.jsonl line 1", "not an object"):
        list(iter_texts(write(tmp_path / "d.jsonl", '["a"]\n')))
    with fails("e.jsonl line 1", "is a number, not a string"):
        list(iter_texts(jsonl(tmp_path / "e.jsonl", {"text": 3})))
    with fails("f.jsonl line 1", "surrogate"):
        list(iter_texts(write(tmp_path / "f.jsonl", '{"text": "a\\ud800b"}\n')))


def test_invalid_utf8_names_file_line_and_offset(tmp_path: Path) -> None:
    t = write(tmp_path / "c.txt", b"fine\nbad \xe9 byte\n")
    with fails("c.txt line 2 column 5", "0xe9", "byte offset 9", "UTF-8"):
        list(iter_texts(t))
    j = write(tmp_path / "c.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n')
    with fails("c.jsonl line 2 column 11", "0xff", "byte offset 25"):
        list(iter_texts(j))


def test_invalid_utf8_in_parquet_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    texts = pa.array([b"good", b"bad \xff"], type=pa.binary())
    pq.write_table(pa.table({"text": texts.view(pa.string())}), p)
    with fails("c.parquet", "UTF-8"):
        list(iter_texts(p))


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    f = write(root / "a.txt", "hello")
    jsonl(root / "b.jsonl", {"text": "x"})
    fp = corpus_fingerprint(root)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert corpus_fingerprint(root) == fp
    assert corpus_fingerprint(f) != fp
    os.utime(f, ns=(1, 1))
    touched = corpus_fingerprint(root)
    assert touched != fp
    write(f, "hello, world")
    os.utime(f, ns=(1, 1))
    assert corpus_fingerprint(root) != touched
    write(root / "sub" / "c.txt", "new")
    assert corpus_fingerprint(root) not in (fp, touched)
    std = corpus_fingerprint(STDLIB_SOURCE)
    assert std == corpus_fingerprint(STDLIB_SOURCE) and len(std) == 16
    with fails("does not exist"):
        corpus_fingerprint(tmp_path / "nope")


# --- windows ---------------------------------------------------------------------------------


def test_pack_windows_shapes_bos_and_eos_between_documents(tok: Any) -> None:
    docs = ["The cat sat on the mat.", "A second document, quite short.", "Third one here."]
    enc = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    eos = tok.eos_token_id
    stream = enc[0] + [eos] + enc[1] + [eos] + enc[2]
    w = pack_windows(docs, tok, context=5)
    assert isinstance(w, TokenWindows)
    assert w.bos_id == tok.bos_token_id is not None
    n = len(stream) // 4
    assert w.windows.shape == (n, 5) and w.windows.dtype == np.int32
    assert (w.windows[:, 0] == w.bos_id).all()
    assert w.windows[:, 1:].reshape(-1).tolist() == stream[: n * 4]
    assert w.n_tokens == n * 4
    assert w.n_documents == 3 if n * 4 > len(enc[0]) + len(enc[1]) + 1 else 2

    plain = pack_windows(docs, tok, context=4, prepend_bos=False, separator="none")
    joined = enc[0] + enc[1] + enc[2]
    assert plain.bos_id is None
    assert plain.windows.reshape(-1).tolist() == joined[: len(joined) // 4 * 4]
    assert eos not in plain.windows


def test_pack_windows_drops_the_last_partial_window(tok: Any) -> None:
    w = pack_windows(["word " * 50], tok, context=16)
    assert w.n_tokens == len(w) * 15 <= 50
    assert w.n_documents == 1


def test_max_tokens_is_respected_and_stops_reading(tok: Any) -> None:
    consumed = 0

    def docs() -> Iterator[str]:
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield f"Document number {i} says something about the weather today."

    seen: list[int] = []
    w = pack_windows(docs(), tok, context=32, max_tokens=1000, on_progress=seen.append)
    assert w.n_tokens <= 1000 and w.n_tokens == len(w) * 31 == 1000 // 31 * 31
    assert consumed < 2000  # a few small batches, not the whole generator
    assert seen and seen[-1] >= 1000


def test_zero_windows_error_names_corpus_and_sizes(tok: Any, tmp_path: Path) -> None:
    with fails("corpus tiny.txt", "gives 2 tokens", "one window of 127 tokens"):
        pack_windows(["hello world"], tok, context=128, source="tiny.txt")
    with fails("gives 0 tokens from 0 documents"):
        pack_windows(["", "   "], tok)
    with fails("max_tokens 5", "`max_tokens`"):
        pack_windows(["word " * 100], tok, context=16, max_tokens=5)
    with fails("`context` 2"):
        pack_windows(["x"], tok, context=1)
    with fails("'eos' or 'none'"):
        pack_windows(["x"], tok, separator="newline")


# --- split -----------------------------------------------------------------------------------


def _windows(n: int) -> TokenWindows:
    return TokenWindows(np.arange(n * 4, dtype=np.int32).reshape(n, 4), None, n, n * 4)


def test_split_is_deterministic_and_sized() -> None:
    w = _windows(100)
    train, held = split_windows(w, 0.1, seed=3)
    assert train.shape == (90, 4) and held.shape == (10, 4)
    again_train, again_held = split_windows(w, 0.1, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(held, again_held)
    assert not np.array_equal(held, split_windows(w, 0.1, seed=4)[1])
    rows = {tuple(r) for r in np.concatenate([train, held]).tolist()}
    assert len(rows) == 100
    assert (np.diff(train[:, 0]) > 0).all()  # corpus order kept within each part
    assert split_windows(w, 7)[1].shape == (7, 4)
    assert split_windows(w, 0)[1].shape == (0, 4)


def test_split_keeps_one_window_on_each_side() -> None:
    for holdout in (0.01, 0.99, 1, 50):
        train, held = split_windows(_windows(2), holdout)
        assert len(train) == len(held) == 1
    train, held = split_windows(_windows(1), 0.5)
    assert len(train) == 1 and len(held) == 0
    with fails("below 1"):
        split_windows(_windows(5), 1.0)
    with fails("negative"):
        split_windows(_windows(5), -1)
