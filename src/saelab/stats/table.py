"""The per-feature table of `saelab contrast`: every two-group statistic of one hook.

`two_group_stats(acc)` turns a filled `TwoGroupAccumulator` into columns (numpy arrays of
length n_features, one entry per feature), ready for Parquet:

    feature                     int64   feature id
    tested                      bool    the feature went into the tests (see below)
    n_a, n_b                    int64   rows of each group
    active_a, active_b          int64   rows where the feature is non-zero
    mean_a, mean_b, sd_a, sd_b  float64 per-group mean and sample SD (ddof=1)
    t, df, p_t, log10_p_t       float64 Welch's t-test of A vs B, two-sided; log10_p_t stays
                                        finite where p_t underflows to 0
    cohen_d, hedges_g           float64 (mean_A - mean_B) / pooled SD; small-sample corrected
    u, p_u, auc                 float64 Mann-Whitney U of group A, asymptotic two-sided p
                                        (tie and continuity corrected), AUC = U/(n_A n_B)
    rate_test                   str     "fisher" or "chi2" (which test gave p_rate), "" untested
    p_rate                      float64 p of the firing-rate test on the (fires/silent) x group
                                        table

A feature is tested iff active_a + active_b >= min_active (a rule blind to the labels, so BH
over the tested features stays valid) and it is not constant over all rows (dead features
included). Untested features keep their counts, means and SDs, and get NaN in every test
statistic, effect size and p-value, never 0 or 1. Without kept values
(`keep_values=False`) the Mann-Whitney columns are NaN for every feature.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

from saelab.errors import SaelabError
from saelab.stats.moments import A, B, TwoGroupAccumulator, group_means_vars
from saelab.stats.ranks import mann_whitney
from saelab.stats.rates import rate_tests
from saelab.stats.welch import effect_sizes, welch_t

COLUMNS = (
    "feature",
    "tested",
    "n_a",
    "n_b",
    "active_a",
    "active_b",
    "mean_a",
    "mean_b",
    "sd_a",
    "sd_b",
    "t",
    "df",
    "p_t",
    "log10_p_t",
    "cohen_d",
    "hedges_g",
    "u",
    "p_u",
    "auc",
    "rate_test",
    "p_rate",
)
TEST_COLUMNS = ("t", "df", "p_t", "log10_p_t", "cohen_d", "hedges_g", "u", "p_u", "auc", "p_rate")


def check_groups(n_a: int, n_b: int) -> None:
    """Refuse groups too small to test, with a one-line message naming the sizes and the fix."""
    if n_a + n_b == 0:
        raise SaelabError("no prompts were given to compare; label at least 2 prompts per group")
    for name, size, other_name, other in (("A", n_a, "B", n_b), ("B", n_b, "A", n_a)):
        if size == 0:
            raise SaelabError(
                f"all {other} prompts are in group {other_name} and none in group {name};"
                f" label at least 2 prompts of group {name} to compare the two"
            )
    for name, size, other_name, other in (("A", n_a, "B", n_b), ("B", n_b, "A", n_a)):
        if size < 2:
            raise SaelabError(
                f"group {name} has {size} prompt (group {other_name} has {other}); each group"
                f" needs at least 2 prompts: add prompts to group {name}"
            )


def two_group_stats(acc: TwoGroupAccumulator, *, min_active: int = 1) -> dict[str, np.ndarray]:
    """Every per-feature statistic of one hook (columns in `COLUMNS`; see the module doc)."""
    if int(min_active) != min_active or min_active < 0:
        raise ValueError(f"min_active must be a non-negative integer, got {min_active}")
    n_a, n_b = (int(v) for v in acc.n)
    check_groups(n_a, n_b)
    f = acc.n_features
    active_a, active_b = acc.active[A].copy(), acc.active[B].copy()
    tested = ((active_a + active_b) >= min_active) & ~acc.column_constant()

    kept = acc.kept() if acc.keep_values else None
    mean, var = group_means_vars(acc, kept)
    if kept is not None:
        mw = mann_whitney(acc, kept)
    else:
        mw = {name: np.full(f, np.nan) for name in ("u", "p_u", "auc")}
    del kept

    welch = welch_t(mean[A], mean[B], var[A], var[B], n_a, n_b)
    effects = effect_sizes(mean[A], mean[B], var[A], var[B], n_a, n_b)
    rate_kind, p_rate = rate_tests(active_a, active_b, n_a, n_b, tested)

    out: dict[str, np.ndarray] = {
        "feature": np.arange(f, dtype=np.int64),
        "tested": tested,
        "n_a": np.full(f, n_a, dtype=np.int64),
        "n_b": np.full(f, n_b, dtype=np.int64),
        "active_a": active_a,
        "active_b": active_b,
        "mean_a": mean[A],
        "mean_b": mean[B],
        "sd_a": np.sqrt(var[A]),
        "sd_b": np.sqrt(var[B]),
        **welch,
        **effects,
        **mw,
        "rate_test": rate_kind,
        "p_rate": p_rate,
    }
    untested = ~tested
    for name in TEST_COLUMNS:
        out[name][untested] = np.nan
    return {name: out[name] for name in COLUMNS}


def contrast_table(
    blocks: Iterable[tuple[sp.spmatrix | sp.sparray | np.ndarray, np.ndarray]],
    n_features: int | None = None,
    *,
    min_active: int = 1,
    keep_values: bool = True,
) -> dict[str, np.ndarray]:
    """Accumulate (block, in_a) pairs of one hook and return `two_group_stats` of them.

    n_features defaults to the width of the first block.
    """
    acc: TwoGroupAccumulator | None = None
    if n_features is not None:
        acc = TwoGroupAccumulator(n_features, keep_values=keep_values)
    for block, in_a in blocks:
        if acc is None:
            acc = TwoGroupAccumulator(block.shape[1], keep_values=keep_values)
        acc.add(block, in_a)
    if acc is None:
        raise SaelabError("no blocks of codes were given; encode the hook before contrasting it")
    return two_group_stats(acc, min_active=min_active)
