"""`saelab query --run RUN "SQL"`: DuckDB over the run's tables, without loading them first.

Each table is a view over its Parquet file, so DuckDB reads only the columns and row groups a
query needs. Tables: `prompts` (prompt_index, id, text, group), `contrast` (when `contrast`
ran), `patch_results` and `patch_summary` (when `patch` ran), and any other RUN/stats/*.parquet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saelab.atomic import atomic_write_bytes
from saelab.errors import SaelabError
from saelab.pipeline.options import RunOptions, option
from saelab.progress import console


def run_tables(run: Path) -> dict[str, Path]:
    tables = {}
    if (run / "prompts.parquet").is_file():
        tables["prompts"] = run / "prompts.parquet"
    for p in sorted((run / "stats").glob("*.parquet")):
        tables[p.stem] = p
    for p in sorted((run / "patch").glob("*.parquet")):
        tables[f"patch_{p.stem}"] = p
    return tables


def connect(run: Path) -> Any:
    import duckdb

    tables = run_tables(run)
    if not tables:
        raise SaelabError(f"{run} has no tables yet; run extract (prompts) or contrast first")
    con = duckdb.connect()
    for name, path in tables.items():
        src = f"read_parquet('{_sql_str(path)}')"
        if name == "prompts":  # the row number is the prompt index every other table uses
            src = f"(SELECT row_number() OVER () - 1 AS prompt_index, * FROM {src})"
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {src}')
    return con


def _sql_str(p: Path) -> str:
    return str(p).replace("'", "''")


class QueryConfig(RunOptions):
    """SQL (DuckDB) over the run's tables."""

    sql: str = option(..., "SQL over the tables prompts, contrast, ...", argument=True)
    out: str | None = option(None, "write all rows to a .csv or .parquet")
    limit: int = option(50, "rows to print")


def run_query(run: str, sql: str, out: str | None = None, limit: int = 50) -> int:
    """Run `sql`; print up to `limit` rows, or write every row to `out` (.csv or .parquet).
    Returns the number of rows."""
    import duckdb

    path = Path(run)
    if not path.is_dir():
        raise SaelabError(f"run folder {run} does not exist; check the path")
    con = connect(path)
    try:
        rel = con.sql(sql)
    except duckdb.Error as e:
        names = ", ".join(run_tables(path))
        msg = str(e).splitlines()[0]
        raise SaelabError(f"query failed: {msg} (tables: {names})") from e
    if rel is None:
        return 0
    if out:
        return _write(con, rel, Path(out))
    cols = rel.columns
    rows = rel.fetchall()
    from rich.table import Table

    t = Table()
    for c in cols:
        t.add_column(str(c))
    for r in rows[:limit]:
        t.add_row(*[_cell(v) for v in r])
    console().print(t)
    if len(rows) > limit:
        console().print(f"({len(rows):,} rows; the first {limit} shown; --out FILE writes all)")
    return len(rows)


def _write(con: Any, rel: Any, out: Path) -> int:
    fmt = {".csv": "CSV, HEADER", ".parquet": "PARQUET"}.get(out.suffix.lower())
    if fmt is None:
        raise SaelabError(f"--out {out}: use a .csv or .parquet file name")
    tmp = out.with_name(f".{out.name}.tmp")
    n = len(rel)
    rel.create_view("__result", replace=True)
    con.execute(f"COPY (SELECT * FROM __result) TO '{_sql_str(tmp)}' (FORMAT {fmt})")
    atomic_write_bytes(out, tmp.read_bytes())
    tmp.unlink(missing_ok=True)
    console().print(f"wrote {n:,} rows to {out}")
    return n


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
