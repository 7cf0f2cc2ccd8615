"""`saelab query RUN "SQL"`: DuckDB over the run's tables, without loading them first.

Each table is a view over its Parquet file, so DuckDB reads only the columns and row groups a
query needs. Tables: `prompts` (prompt_index, id, text, group), `contrast` (when `contrast`
ran), `patch_results` and `patch_summary` (when `patch` ran), and any other RUN/stats/*.parquet.

A query sees the run and nothing else: once the views exist, DuckDB's external access is
switched off (only the tables' own files stay readable, through `allowed_paths`) and the
configuration locked, so `read_csv('/etc/passwd')`, `COPY`, `ATTACH`, `INSTALL`/`LOAD` and
any `SET` that would undo it are refused by DuckDB itself. Because an allowed file could
still be overwritten by `COPY ... TO` it, only read statements (SELECT, EXPLAIN, DESCRIBE,
SHOW, SUMMARIZE) are accepted at all; `--out` is written here from the result, not by SQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saelab.errors import SaelabError
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
    confine(con, list(tables.values()))
    return con


def confine(con: Any, readable: list[Path]) -> None:
    """Only `readable` files stay reachable; nothing can switch external access back on."""
    paths = ", ".join(f"'{_sql_str(p.resolve())}'" for p in readable)
    con.execute(f"SET allowed_paths = [{paths}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


_READ_ONLY = ("SELECT", "EXPLAIN")  # DESCRIBE, SHOW and SUMMARIZE parse as SELECT


def _check_read_only(sql: str) -> None:
    import duckdb

    try:
        kinds = [s.type.name for s in duckdb.extract_statements(sql)]
    except duckdb.Error as e:
        raise SaelabError(f"query failed: {str(e).splitlines()[0]}") from e
    refused = [k for k in kinds if k not in _READ_ONLY]
    if refused:
        raise SaelabError(
            f"query: {refused[0]} statements are refused; a query only reads the run's tables"
            " (SELECT); save a result with --out FILE"
        )


def _sql_str(p: Path) -> str:
    return str(p).replace("'", "''")


def run_query(run: str, sql: str, out: str | None = None, limit: int = 50) -> int:
    """Run `sql`; print up to `limit` rows, or write every row to `out` (.csv or .parquet).
    Returns the number of rows."""
    import duckdb

    path = Path(run)
    if not path.is_dir():
        raise SaelabError(f"run folder {run} does not exist; check the path")
    _check_read_only(sql)
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
    """The result written from Arrow (DuckDB may not write files: see the module docstring),
    as .csv, .parquet, .json or .npz."""
    from saelab.exports.tables import FORMATS, write_table

    if out.suffix.lower() not in FORMATS:
        raise SaelabError(f"--out {out}: use a {', '.join(FORMATS)} file name")
    if not out.parent.is_dir():
        raise SaelabError(f"--out {out}: folder {out.parent} does not exist; create it first")
    try:
        n = write_table(rel.to_arrow_table(), out)
    except OSError as e:
        raise SaelabError(
            f"--out {out}: cannot write it ({e.strerror or e}); pick another path"
        ) from e
    console().print(f"wrote {n:,} rows to {out}")
    return n


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
