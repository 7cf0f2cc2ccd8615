"""`saelab query` reads the run's tables and nothing else, and writes nothing but `--out`."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelab.errors import SaelabError
from saelab.pipeline.query import run_query
from saelab.run import tree_digests


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "stats").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": ["a", "b,c", "d"], "text": ["x", "y", "z"], "group": ["g", "h", None]}),
        run / "prompts.parquet",
    )
    pq.write_table(
        pa.table({"feature": [1, 2, 3], "q": [0.01, 0.5, 0.04]}), run / "stats" / "contrast.parquet"
    )
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    return run


def test_the_run_tables_are_queryable(run, tmp_path):
    assert run_query(str(run), "SELECT * FROM contrast WHERE q < 0.05") == 2
    assert (
        run_query(
            str(run),
            "SELECT p.id, c.q FROM prompts p JOIN contrast c ON c.feature = p.prompt_index + 1",
        )
        == 3
    )
    assert run_query(str(run), "WITH s AS (SELECT * FROM contrast) SELECT count(*) FROM s") == 1
    assert run_query(str(run), "DESCRIBE contrast") == 2
    assert run_query(str(run), "EXPLAIN SELECT * FROM prompts") >= 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{run}/../run/prompts.parquet', filename=true) "
        "UNION ALL SELECT *, 'x' FROM read_csv('{secret}')",
        "COPY (SELECT 1) TO '{tmp}/x.csv'",
        "COPY (SELECT 1 AS feature, 0.0 AS q) TO '{run}/stats/contrast.parquet'"
        " (USE_TMP_FILE false)",
        "COPY contrast FROM '{secret}'",
        "ATTACH '{tmp}/new.duckdb' AS d",
        "ATTACH '{run}/stats/contrast.parquet' AS d",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "EXPORT DATABASE '{tmp}/exp'",
        "SELECT 1; COPY (SELECT 1) TO '{tmp}/y.csv'",
        "CREATE TABLE t AS SELECT * FROM read_csv('{secret}')",
    ],
)
def test_anything_outside_the_run_is_refused(run, tmp_path, sql):
    before = tree_digests(tmp_path)
    query = sql.format(secret=tmp_path / "secret.csv", tmp=tmp_path, run=run)
    with pytest.raises(SaelabError) as e:
        run_query(str(run), query)
    msg = str(e.value)
    assert "\n" not in msg and "hunter2" not in msg and "root:" not in msg
    assert tree_digests(tmp_path) == before  # nothing written, nothing overwritten


def test_out_is_written_by_saelab_not_by_sql(run, tmp_path):
    out = tmp_path / "ids.csv"
    assert run_query(str(run), 'SELECT id, "group" FROM prompts ORDER BY id', out=str(out)) == 3
    assert list(csv.reader(out.open())) == [["id", "group"], ["a", "g"], ["b,c", "h"], ["d", ""]]
    assert out.read_text().splitlines()[0] == "id,group"
    pq_out = tmp_path / "c.parquet"
    assert run_query(str(run), "SELECT * FROM contrast", out=str(pq_out)) == 3
    assert pq.read_table(pq_out).to_pydict() == {"feature": [1, 2, 3], "q": [0.01, 0.5, 0.04]}
    with pytest.raises(SaelabError, match="does not exist"):
        run_query(str(run), "SELECT 1", out=str(tmp_path / "nodir" / "x.csv"))
    with pytest.raises(SaelabError, match=r"\.csv, \.parquet, \.json, \.npz"):
        run_query(str(run), "SELECT 1", out=str(tmp_path / "x.txt"))
    assert not (tmp_path / "nodir").exists()
