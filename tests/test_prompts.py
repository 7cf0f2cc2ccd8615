"""Prompt tables: every format read from real files, every user mistake reported in one line."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelab.data import DEMO_SOURCE, PromptTable, demo_prompts, read_prompts
from saelab.errors import SaelabError


def write(path: Path, content: str | bytes) -> Path:
    """Write exact bytes, so line endings and encodings are what the test says."""
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(path: Path, *objects: Any) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


@contextlib.contextmanager
def fails(*fragments: str) -> Iterator[None]:
    """Expect a one-line SaelabError that mentions every fragment: the CLI shows only that line."""
    with pytest.raises(SaelabError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- formats ---------------------------------------------------------------------------------


def test_txt_keeps_lines_exactly_and_skips_blank_ones(tmp_path: Path) -> None:
    p = write(tmp_path / "p.txt", "\ufeffFirst prompt\r\n\n   \n  indented, trailing  \nlast")
    t = read_prompts(p)
    assert t.texts == ["First prompt", "  indented, trailing  ", "last"]
    assert t.ids == ["0", "1", "2"]
    assert t.groups is None
    assert t.source == str(p)
    assert len(t) == 3


def test_txt_does_not_split_on_unicode_line_separators(tmp_path: Path) -> None:
    t = read_prompts(write(tmp_path / "p.txt", "a\u2028b\x0cc\n"))
    assert t.texts == ["a\u2028b\x0cc"]


def test_jsonl_stringifies_ids_and_groups_and_keeps_text(tmp_path: Path) -> None:
    p = write(
        tmp_path / "p.jsonl",
        '{"id": 7, "text": " lead space", "group": "a", "extra": [1]}\n'
        "\n"
        '{"id": "x", "text": "second", "group": null}\r\n'
        '{"id": 1.5, "text": "third", "group": true}\n',
    )
    t = read_prompts(p)
    assert t.ids == ["7", "x", "1.5"]
    assert t.texts == [" lead space", "second", "third"]
    assert t.groups == ["a", None, "true"]
    assert t.group_names() == ["a", "true"]


def test_jsonl_without_id_or_group_numbers_prompts(tmp_path: Path) -> None:
    t = read_prompts(jsonl(tmp_path / "p.jsonl", {"text": "a"}, {"text": "b"}))
    assert t.ids == ["0", "1"]
    assert t.groups is None
    assert t.group_names() == []


def test_group_column_with_only_nulls_is_kept_as_nones(tmp_path: Path) -> None:
    t = read_prompts(jsonl(tmp_path / "p.jsonl", {"text": "a", "group": None}, {"text": "b"}))
    assert t.groups == [None, None]
    assert t.group_names() == []


def test_csv_keeps_values_as_strings(tmp_path: Path) -> None:
    p = write(
        tmp_path / "p.csv",
        'id,text,group\n001,"Hello, world",yes\n\n002," two\nlines",\n010,plain,no\n',
    )
    t = read_prompts(p)
    assert t.ids == ["001", "002", "010"]
    assert t.texts == ["Hello, world", " two\nlines", "plain"]
    assert t.groups == ["yes", None, "no"]


def test_tsv_and_suffix_case(tmp_path: Path) -> None:
    t = read_prompts(write(tmp_path / "P.TSV", "text\tgroup\na, b\tg1\nc\tg2\n"))
    assert t.texts == ["a, b", "c"]
    assert t.groups == ["g1", "g2"]
    assert read_prompts(jsonl(tmp_path / "Q.JSONL", {"text": "x"})).texts == ["x"]


def test_parquet_casts_ids_and_groups_to_strings(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    table = pa.table(
        {"id": [3, 1, 2], "text": ["a", " b", "c"], "group": ["x", None, "y"], "n": [0.1] * 3}
    )
    pq.write_table(table, p)
    t = read_prompts(p)
    assert t.ids == ["3", "1", "2"]
    assert t.texts == ["a", " b", "c"]
    assert t.groups == ["x", None, "y"]


def test_custom_column_names(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "p.jsonl", {"key": "k1", "prompt": "hi", "label": "l"})
    t = read_prompts(p, text_column="prompt", id_column="key", group_column="label")
    assert (t.ids, t.texts, t.groups) == (["k1"], ["hi"], ["l"])
    ignored = read_prompts(p, text_column="prompt", id_column=None, group_column=None)
    assert (ignored.ids, ignored.groups) == (["0"], None)


def test_limit_keeps_first_prompts_and_ignores_the_rest(tmp_path: Path) -> None:
    p = write(tmp_path / "p.jsonl", '{"id": "a", "text": "1"}\n{"id": "b", "text": "2"}\nbad\n')
    assert read_prompts(p, limit=2).ids == ["a", "b"]
    assert read_prompts(write(tmp_path / "p.txt", "a\n\nb\nc\n"), limit=2).texts == ["a", "b"]
    assert read_prompts(write(tmp_path / "p.csv", "text\na\nb\n"), limit=1).texts == ["a"]
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet", limit=2).texts == ["a", "b"]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_refused(tmp_path: Path, limit: int) -> None:
    p = write(tmp_path / "p.txt", "a\n")
    with fails("limit", str(limit), "`limit`"):
        read_prompts(p, limit=limit)


# --- errors ----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with fails("nope.txt", "does not exist", "check the path"):
        read_prompts(tmp_path / "nope.txt")


def test_folder(tmp_path: Path) -> None:
    with fails(str(tmp_path), "is a folder"):
        read_prompts(tmp_path)


def test_unknown_suffix(tmp_path: Path) -> None:
    with fails("p.json", "'.json'", ".jsonl", ".csv", ".parquet"):
        read_prompts(write(tmp_path / "p.json", "[]"))


@pytest.mark.parametrize("name", ["p.txt", "p.jsonl", "p.csv", "p.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    with fails(name, "is empty"):
        read_prompts(write(tmp_path / name, b""))


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("p.txt", "\n  \r\n\t\n", "only blank lines"),
        ("p.jsonl", "\n \n", "only blank lines"),
        ("p.csv", "text\n\n", "no prompts"),
        ("p.csv", "\n\n", "no header"),
    ],
)
def test_no_prompts(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    with fails(name, fragment):
        read_prompts(write(tmp_path / name, content))


def test_parquet_without_rows(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "p.parquet")
    with fails("p.parquet", "no rows"):
        read_prompts(tmp_path / "p.parquet")


@pytest.mark.parametrize("name", ["p.txt", "p.jsonl", "p.csv"])
def test_invalid_utf8_names_line_and_fix(tmp_path: Path, name: str) -> None:
    content = (
        b'{"text": "ok"}\n{"text": "caf\xe9"}\n' if name.endswith("jsonl") else b"text\ncaf\xe9\n"
    )
    with fails(name, "line 2", "0xe9", "UTF-8"):
        read_prompts(write(tmp_path / name, content))


def test_jsonl_invalid_json_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "p.jsonl", '{"text": "a"}\n\n{"text": "b",}\n')
    with fails("p.jsonl", "line 3", "not valid JSON"):
        read_prompts(p)


@pytest.mark.parametrize(("line", "kind"), [('"just text"', "string"), ("[1, 2]", "array")])
def test_jsonl_non_object_names_line(tmp_path: Path, line: str, kind: str) -> None:
    p = write(tmp_path / "p.jsonl", '{"text": "a"}\n' + line + "\n")
    with fails("line 2", kind, "not an object"):
        read_prompts(p)


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv", "p.parquet"])
def test_missing_text_column_lists_columns(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    if name.endswith("jsonl"):
        jsonl(p, {"prompt": "a", "label": "x"})
    elif name.endswith("csv"):
        write(p, "prompt,label\na,x\n")
    else:
        pq.write_table(pa.table({"prompt": ["a"], "label": ["x"]}), p)
    with fails(name, "'text'", "'prompt', 'label'", "`text_column`"):
        read_prompts(p)


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"text": None}, "no text"),
        ({"other": "x"}, "no text"),
        ({"text": 5}, "number, not a string"),
        ({"text": ""}, "is empty"),
        ({"text": "  \t"}, "is empty"),
    ],
)
def test_bad_text_value_in_jsonl_names_line(
    tmp_path: Path, row: dict[str, Any], fragment: str
) -> None:
    p = jsonl(tmp_path / "p.jsonl", {"text": "fine"}, row)
    with fails("line 2", fragment):
        read_prompts(p)


def test_empty_text_cell_in_csv_names_line(tmp_path: Path) -> None:
    with fails("p.csv", "line 3", "is empty"):
        read_prompts(write(tmp_path / "p.csv", "id,text\na,fine\nb,\n"))


def test_null_text_in_parquet_names_row(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "p.parquet")
    with fails("p.parquet", "row 2", "no text"):
        read_prompts(tmp_path / "p.parquet")


def test_non_string_text_column_in_parquet(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "p.parquet")
    with fails("p.parquet", "int64", "`text_column`"):
        read_prompts(tmp_path / "p.parquet")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    with fails("p.parquet", "not a readable Parquet file"):
        read_prompts(write(tmp_path / "p.parquet", b"this is not parquet"))


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("p.jsonl", '{"id": "a", "text": "1"}\n{"id": "b", "text": "2"}\n{"id": "a", "text": "3"}',
         "line 3: duplicate id 'a' (first on line 1)"),
        ("p.csv", "id,text\n001,x\n1,y\n001,z\n", "line 4: duplicate id '001' (first on line 2)"),
    ],
)  # fmt: skip
def test_duplicate_ids(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    with fails(name, fragment):
        read_prompts(write(tmp_path / name, content))


def test_missing_id_value(tmp_path: Path) -> None:
    with fails("line 2", "no id"):
        read_prompts(jsonl(tmp_path / "p.jsonl", {"id": "a", "text": "x"}, {"text": "y"}))


def test_default_group_column_may_be_absent_but_explicit_must_exist(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "p.jsonl", {"text": "a", "label": "x"})
    assert read_prompts(p).groups is None
    with fails("p.jsonl", "'outcome'", "'text', 'label'", "`group_column`"):
        read_prompts(p, group_column="outcome")
    with fails("p.jsonl", "'key'", "`id_column`"):
        read_prompts(p, id_column="key")


def test_txt_refuses_column_options(tmp_path: Path) -> None:
    with fails("p.txt", "no columns"):
        read_prompts(write(tmp_path / "p.txt", "a\n"), group_column="label")


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    with fails("p.csv", "line 3", "3 fields", "header has 2"):
        read_prompts(write(tmp_path / "p.csv", "id,text\na,ok\nb,hello, world\n"))


def test_csv_unterminated_quote(tmp_path: Path) -> None:
    with fails("p.csv", "line 3", "malformed CSV"):
        read_prompts(write(tmp_path / "p.csv", 'text\nok\n"never closed\n'))


def test_unpaired_surrogate_escape_in_jsonl(tmp_path: Path) -> None:
    with fails("line 1", "surrogate"):
        read_prompts(write(tmp_path / "p.jsonl", '{"text": "bad \\ud800 here"}\n'))


# --- the table -------------------------------------------------------------------------------


def make(texts: list[str], groups: list[str | None] | None = None) -> PromptTable:
    return PromptTable([f"p{i}" for i in range(len(texts))], texts, groups, "mem")


def test_to_arrow_columns_and_types() -> None:
    t = make(["a", "b"], ["g", None]).to_arrow()
    assert t.column_names == ["index", "id", "text", "group"]
    assert t.schema.field("index").type == pa.int64()
    assert t.schema.field("group").type == pa.string()
    assert t.to_pydict() == {"index": [0, 1], "id": ["p0", "p1"], "text": ["a", "b"],
                             "group": ["g", None]}  # fmt: skip
    assert make(["a"]).to_arrow().column_names == ["index", "id", "text"]


def test_select_keeps_ids_and_refuses_bad_indices() -> None:
    t = make(["a", "b", "c"], ["x", "y", None])
    s = t.select([2, 0])
    assert (s.ids, s.texts, s.groups, s.source) == (["p2", "p0"], ["c", "a"], [None, "x"], "mem")
    assert s.to_arrow().column("index").to_pylist() == [0, 1]
    assert make(["a"]).select([]).ids == []
    with fails("3", "0..2"):
        t.select([3])
    with fails("-1"):
        t.select([-1])
    with fails("twice"):
        t.select([1, 1])


def test_fingerprint_follows_content_not_source(tmp_path: Path) -> None:
    base = make(["a", "b"], ["x", "y"])
    assert len(base.fingerprint()) == 16
    assert base.fingerprint() == make(["a", "b"], ["x", "y"]).fingerprint()
    assert base.fingerprint() != make(["a", "c"], ["x", "y"]).fingerprint()
    assert base.fingerprint() != make(["a", "b"], ["x", "x"]).fingerprint()
    assert base.fingerprint() != make(["a", "b"]).fingerprint()
    from_jsonl = read_prompts(jsonl(tmp_path / "p.jsonl", {"id": "k", "text": "t", "group": "g"}))
    from_csv = read_prompts(write(tmp_path / "p.csv", "id,text,group\nk,t,g\n"))
    assert from_jsonl.source != from_csv.source
    assert from_jsonl.fingerprint() == from_csv.fingerprint()


def test_to_arrow_parquet_round_trip(tmp_path: Path) -> None:
    t = read_prompts(write(tmp_path / "p.csv", "id,text,group\n001, a,x\n002,b,\n"))
    pq.write_table(t.to_arrow(), tmp_path / "prompts.parquet")
    back = read_prompts(tmp_path / "prompts.parquet")
    assert (back.ids, back.texts, back.groups) == (t.ids, t.texts, t.groups)
    assert back.fingerprint() == t.fingerprint()


def test_table_rejects_inconsistent_columns() -> None:
    with pytest.raises(ValueError):
        PromptTable(["a", "a"], ["x", "y"], None, "mem")
    with pytest.raises(ValueError):
        PromptTable(["a"], ["x", "y"], None, "mem")


# --- demo ------------------------------------------------------------------------------------


def test_demo_prompts_are_paired_true_and_false_statements() -> None:
    t = demo_prompts()
    assert t.source == DEMO_SOURCE
    assert len(t) == 64 and len(set(t.ids)) == 64
    assert t.groups is not None
    assert Counter(t.groups) == {"true": 32, "false": 32}
    assert t.group_names() == ["false", "true"]
    for id_, group, text in zip(t.ids, t.groups, t.texts, strict=True):
        assert id_.startswith(f"{group}-")
        assert 5 <= len(text.split()) <= 20, text
    assert {i.split("-")[1] for i in t.ids if i.startswith("true")} == {
        i.split("-")[1] for i in t.ids if i.startswith("false")
    }
    assert len(set(t.texts)) == 64


def test_demo_is_readable_by_its_source_name() -> None:
    assert read_prompts(DEMO_SOURCE).fingerprint() == demo_prompts().fingerprint()
    assert read_prompts(DEMO_SOURCE, limit=3).ids == ["true-00", "false-00", "true-01"]
