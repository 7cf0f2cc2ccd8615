"""Exports for other tools: the full statistics of a run's contrast (JSON or npz) and any
query result as .csv, .parquet, .json or .npz."""

from saelab.exports.stats import collect_stats, export_stats, read_stats
from saelab.exports.tables import read_npz_table, write_table

__all__ = ["collect_stats", "export_stats", "read_npz_table", "read_stats", "write_table"]
