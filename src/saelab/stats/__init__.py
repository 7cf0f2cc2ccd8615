"""Per-feature two-group statistics of sparse SAE codes, and multiple-testing control.

Streams one hook's codes (CSR row blocks with a boolean group label per row) through
`TwoGroupAccumulator` in O(nnz), then `two_group_stats` gives, per feature: Welch's t (p
and a log10 p that does not underflow), Cohen's d and Hedges' g, Mann-Whitney U/AUC/p, and a
firing-rate test (Fisher or Yates chi-square), all matching scipy; `bh_adjust` is a NaN-aware
Benjamini-Hochberg for one hook or for all hooks at once. Knows nothing of runs or the CLI.
"""

from saelab.stats.fdr import bh_adjust
from saelab.stats.hooks import default_workers, hook_tables
from saelab.stats.moments import TwoGroupAccumulator
from saelab.stats.table import COLUMNS, check_groups, contrast_table, two_group_stats

__all__ = [
    "COLUMNS",
    "TwoGroupAccumulator",
    "bh_adjust",
    "check_groups",
    "contrast_table",
    "default_workers",
    "hook_tables",
    "two_group_stats",
]
