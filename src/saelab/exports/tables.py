"""Any Arrow table as .csv, .parquet, .json or .npz: for `saelab query --out` and the
statistics export.

JSON is a list of row objects (NaN and missing values as null); npz holds one array per
column (strings as unicode arrays, so `np.load` needs no pickle; a missing string is "", a
missing number NaN; integer columns with nulls become float64).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from saelab.errors import SaelabError
from saelab.run import atomic_write_bytes

FORMATS = (".csv", ".parquet", ".json", ".npz")


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def column_array(col: Any) -> np.ndarray:
    """One Arrow column as a numpy array that npz can hold without pickle."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return np.asarray(["" if v is None else str(v) for v in col.to_pylist()], dtype=str)
    if pa.types.is_boolean(t) and col.null_count == 0:
        return col.to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_integer(t) and col.null_count == 0:
        return col.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.asarray([np.nan if v is None else float(v) for v in col.to_pylist()])
    return np.asarray([json.dumps(v, default=str) for v in col.to_pylist()], dtype=str)


def table_bytes(table: Any, suffix: str) -> bytes:
    """The bytes of `table` (a pyarrow.Table) in the format named by `suffix`."""
    suffix = suffix.lower()
    buf = io.BytesIO()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buf, compression="zstd")
    elif suffix == ".csv":  # Python's csv quotes only where needed (as DuckDB and pandas do)
        import csv

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(table.column_names)
        for batch in table.to_batches():
            writer.writerows(zip(*(c.to_pylist() for c in batch.columns), strict=True))
        buf.write(text.getvalue().encode())
    elif suffix == ".json":
        rows = [{k: _finite(v) for k, v in r.items()} for r in table.to_pylist()]
        buf.write((json.dumps(rows, default=str, allow_nan=False) + "\n").encode())
    elif suffix == ".npz":
        arrays = {name: column_array(table.column(name)) for name in table.column_names}
        np.savez_compressed(buf, **arrays)
    else:
        raise SaelabError(f"output {suffix or '(no suffix)'}: use a {', '.join(FORMATS)} file")
    return buf.getvalue()


def write_table(table: Any, out: str | Path) -> int:
    """Write a pyarrow.Table to `out` (.csv, .parquet, .json or .npz) atomically; returns
    the number of rows. A DuckDB relation gives its table with `rel.arrow()`."""
    out = Path(out)
    if hasattr(table, "read_all"):  # a RecordBatchReader (DuckDB's arrow() in newer versions)
        table = table.read_all()
    atomic_write_bytes(out, table_bytes(table, out.suffix))
    return int(table.num_rows)


def read_npz_table(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a table written as .npz, for checking a round trip."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
