"""Does a feature fire more often in one group? A 2x2 test per feature, vectorised.

The table of a feature is

                 group A             group B
    fires        active_A            active_B
    silent       n_A - active_A      n_B - active_B

Where any expected count (row total x column total / n) is below 5 it gets Fisher's exact
test, otherwise the chi-square test with Yates' continuity correction. Both reproduce scipy
step by step, for all features at once:

- `scipy.stats.chi2_contingency(table)` (correction=True): each cell moves toward its
  expected count by min(0.5, |observed - expected|); p = chi2.sf(stat, 1), as
  erfc(sqrt(stat/2)).
- `scipy.stats.fisher_exact(table)` (two-sided): scipy's own decision, with the same
  hypergeometric pmf/cdf/sf calls (Boost) and its relative tolerance 1e-14 for "as likely
  as observed". scipy finds the far-tail boundary by binary search on the monotone side of
  the mode; here the same boundary is the count of support points on that side whose pmf
  passes the threshold, evaluated only over the support (at most min(margins) + 1 points;
  an expected count below 5 keeps that short).
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy.stats import hypergeom

_GAMMA = 1.0 + 1e-14  # scipy's relative tolerance for ties in the pmf


def rate_tests(
    active_a: np.ndarray, active_b: np.ndarray, n_a: int, n_b: int, tested: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rate_test, p_rate) for every feature: "fisher"/"chi2" and the p-value.

    Untested features get "" and NaN.
    """
    n = n_a + n_b
    k = (active_a + active_b).astype(np.int64)  # fires, all rows
    # expected counts r_i c_j / n of the cells (fires|silent) x (A|B), as scipy computes them
    cells = [
        (active_a, k * n_a / n),
        (active_b, k * n_b / n),
        (n_a - active_a, (n - k) * n_a / n),
        (n_b - active_b, (n - k) * n_b / n),
    ]
    fisher = tested & np.logical_or.reduce([e < 5 for _, e in cells])
    chi = tested & ~fisher

    kind = np.full(k.shape, "", dtype="<U6")
    kind[fisher] = "fisher"
    kind[chi] = "chi2"
    p = np.full(k.shape, np.nan)
    if chi.any():
        p[chi] = _chi2_yates([(o[chi], e[chi]) for o, e in cells])
    if fisher.any():
        # features with the same table share its p: compute each distinct table once
        code = active_a[fisher].astype(np.int64) * (n + 1) + k[fisher]
        tables, inverse = np.unique(code, return_inverse=True)
        p[fisher] = fisher_two_sided(tables // (n + 1), tables % (n + 1), n_a, n)[inverse]
    return kind, p


def _chi2_yates(cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """p of chi2_contingency on 2x2 tables given as (observed, expected) per cell, C order.

    Yates: each cell moves toward its expected count by min(0.5, |observed - expected|).
    """
    stat = np.zeros(cells[0][1].shape)
    for observed, expected in cells:
        diff = expected - observed
        adjusted = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
        stat += (adjusted - expected) ** 2 / expected
    # chi2.sf(stat, 1) is erfc(sqrt(stat / 2)): 25x faster than scipy's chdtrc(1, stat),
    # and equal to it within 3e-13 relative over the whole range (checked to p ~ 1e-300)
    return special.erfc(np.sqrt(stat / 2.0))


def fisher_two_sided(x: np.ndarray, k: np.ndarray, n_a: int, n: int) -> np.ndarray:
    """Two-sided Fisher p of tables [[x, k - x], [n_a - x, n - n_a - (k - x)]], vectorised.

    x = fires in group A, k = fires in all, n_a = rows of group A, n = all rows: the
    hypergeometric law of x is hypergeom(M=n, n=k, N=n_a), as in scipy.
    """
    x = np.asarray(x, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    p = np.ones(x.shape, dtype=np.float64)
    live = (k > 0) & (k < n)  # a zero margin gives p = 1, as in scipy
    if not live.any():
        return p
    xs, ks = x[live], k[live]
    out = np.ones(xs.shape, dtype=np.float64)

    def pmf(v: np.ndarray, kk: np.ndarray) -> np.ndarray:
        return hypergeom.pmf(v, n, kk, n_a)

    mode = ((n_a + 1) * (ks + 1) / (n + 2)).astype(np.int64)
    p_exact = pmf(xs, ks)
    p_mode = pmf(mode, ks)
    with np.errstate(invalid="ignore", divide="ignore"):
        near = np.abs(p_exact - p_mode) / np.maximum(p_exact, p_mode) <= 1e-14
    threshold = p_exact * _GAMMA
    lo_support = np.maximum(0, n_a - (n - ks))
    hi_support = np.minimum(ks, n_a)

    lower = ~near & (xs < mode)  # observed left of the mode: far tail on the right
    if lower.any():
        ks_l, mode_l, thr = ks[lower], mode[lower], threshold[lower]
        # scipy: guess = last i in [mode, n_a] with pmf(i) >= threshold
        counted = _count_over(mode_l, hi_support[lower], ks_l, pmf, lambda v, t: v >= t, thr)
        guess = mode_l - 1 + counted
        out[lower] = hypergeom.cdf(xs[lower], n, ks_l, n_a) + hypergeom.sf(guess, n, ks_l, n_a)

    upper = ~near & (xs >= mode)  # observed right of the mode: far tail on the left
    if upper.any():
        ks_u, mode_u, thr = ks[upper], mode[upper], threshold[upper]
        # scipy: guess = last i in [0, mode] with pmf(i) <= threshold; below the support
        # pmf is 0, so those points all count
        lo = lo_support[upper]
        counted = _count_over(lo, mode_u, ks_u, pmf, lambda v, t: v <= t, thr)
        guess = lo - 1 + counted
        tail_obs = hypergeom.sf(xs[upper] - 1, n, ks_u, n_a)
        out[upper] = tail_obs + hypergeom.cdf(guess, n, ks_u, n_a)

    p[live] = np.minimum(out, 1.0)
    return p


def _count_over(start, stop, ks, pmf, keep, threshold) -> np.ndarray:  # noqa: ANN001
    """For each table, how many i in [start, stop] satisfy keep(pmf(i), threshold)."""
    length = np.maximum(stop - start + 1, 0)
    owner = np.repeat(np.arange(length.size), length)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(length) - length, length)
    points = start[owner] + offset
    hits = keep(pmf(points, ks[owner]), threshold[owner])
    return np.bincount(owner, weights=hits, minlength=length.size).astype(np.int64)
