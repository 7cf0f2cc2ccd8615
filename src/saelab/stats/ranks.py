"""Mann-Whitney U of every feature at once, ranking only the non-zero values.

In a sparse column the zeros form one tied block whose average rank is known from counts
alone: with `neg` negative values and `z` zeros, the zeros hold ranks neg+1 .. neg+z. So only
the non-zeros need sorting, and they are sorted for all features together: each non-zero
becomes one uint64 key (feature id | order-preserving 32-bit code of the value | group bit),
and a single `np.sort` of the keys orders them by feature, then value. A non-zero at sorted
position i of feature j has the untied rank i - first[j] + 1 (+ z if positive), so group A's
rank sum is a bincount over A's positions; runs of equal (feature, value) keys are the ties,
whose averaged ranks and sum(t^3 - t) (zero block included) are fixed up run by run. No loop
over features. Cost: one sort of nnz uint64 (~0.1 s for 6.6M), against ~17 s for
`scipy.stats.mannwhitneyu(axis=0)` on the dense matrix.

The statistic and p-value are those of `scipy.stats.mannwhitneyu(x=A, y=B,
method="asymptotic", use_continuity=True)`: U is group A's U1 = R_A - n_A(n_A+1)/2, and
p = 2 * Phi(-(max(U1, U2) - n_A n_B/2 - 1/2) / s), with the tie-corrected
s = sqrt(n_A n_B/12 * ((n+1) - sum(t^3 - t)/(n(n-1)))), clipped to [0, 1]. Rank sums of
half-integers below 2^53 are exact in float64, so U agrees with scipy exactly.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from saelab.stats.moments import A, KeptValues, TwoGroupAccumulator

_SIGN = np.uint32(0x80000000)


def _value_codes(value: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 codes of the non-zero values: > 2^31 exactly for positives.

    Equal values get equal codes and order is kept, so ties and ranks are exactly those of
    the values. float32 values (and float64 values that are exactly float32) use their bit
    pattern, flipped so unsigned order is numeric order; other float64 values use their rank
    among the distinct values (one extra sort), shifted so positives land above 2^31.
    """
    v32 = value if value.dtype == np.float32 else value.astype(np.float32)
    if value.dtype == np.float32 or np.array_equal(v32, value):
        bits = v32.view(np.uint32)
        return np.where(bits & _SIGN, ~bits, bits | _SIGN)
    uniq, inverse = np.unique(value, return_inverse=True)
    n_negative = np.searchsorted(uniq, 0.0)
    codes = inverse.astype(np.uint32)
    positive = codes >= n_negative
    codes[positive] += np.uint32(int(_SIGN) + 1 - n_negative)
    return codes


def mann_whitney(acc: TwoGroupAccumulator, kept: KeptValues) -> dict[str, np.ndarray]:
    """U (of group A), two-sided asymptotic p and AUC = U/(n_A n_B) for every feature.

    Constant columns give NaN (scipy's p there is 1 by clipping a 0/0); callers mark them
    untested anyway.
    """
    f = acc.n_features
    n_a, n_b = (float(v) for v in acc.n)
    n = n_a + n_b
    nz_a = acc.active[A].astype(np.float64)
    zeros = n - acc.active.sum(axis=0).astype(np.float64)
    negative = kept.value < 0
    neg_all = np.bincount(kept.feature[negative], minlength=f).astype(np.float64)
    neg_a = np.bincount(kept.feature[negative & ~kept.in_b], minlength=f).astype(np.float64)
    del negative

    key = _sort_keys(kept)
    first = np.concatenate(([0.0], np.cumsum(acc.active.sum(axis=0))[:-1].astype(np.float64)))

    # untied rank of the element at sorted position i of feature j (1-based, all n rows):
    # i - first[j] + 1, plus the zero block if the value is positive
    is_a = np.flatnonzero((key & np.uint64(1)) == 0)
    feat_a = (key[is_a] >> np.uint64(33)).astype(np.intp)
    rank_sum_a = np.bincount(feat_a, weights=is_a, minlength=f).astype(np.float64)
    del is_a, feat_a
    rank_sum_a += nz_a * (1.0 - first) + zeros * (nz_a - neg_a)

    # ties among the non-zeros: runs of equal (feature, value); average their ranks
    fv = key >> np.uint64(1)
    tied = np.flatnonzero(fv[1:] == fv[:-1])  # position i ties with i + 1
    del fv
    tie_term = zeros**3 - zeros
    if tied.size:
        adjust, run_feature, run_len = _tie_runs(key, tied)
        rank_sum_a += np.bincount(run_feature, weights=adjust, minlength=f)
        tie_term += np.bincount(run_feature, weights=run_len**3 - run_len, minlength=f)
    del key
    # the zero block holds ranks neg+1 .. neg+z: average neg + (z+1)/2
    rank_sum_a += (n_a - nz_a) * (neg_all + (zeros + 1.0) / 2.0)

    u1 = rank_sum_a - n_a * (n_a + 1.0) / 2.0
    u_max = np.maximum(u1, n_a * n_b - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(n_a * n_b / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0))))
        z = (u_max - n_a * n_b / 2.0 - 0.5) / s
        p = np.clip(2.0 * special.ndtr(-z), 0.0, 1.0)
    p[s == 0] = np.nan
    return {"u": u1, "p_u": p, "auc": u1 / (n_a * n_b)}


def _sort_keys(kept: KeptValues) -> np.ndarray:
    """uint64 keys feature << 33 | value code << 1 | in_b, sorted: by feature, then value."""
    key = kept.feature.astype(np.uint64)
    key <<= np.uint64(33)
    code = _value_codes(kept.value).astype(np.uint64)
    code <<= np.uint64(1)
    key |= code
    del code
    key |= kept.in_b
    key.sort()
    return key


def _tie_runs(key: np.ndarray, tied: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per run of tied non-zeros: the change in A's rank sum from averaging, feature, length.

    `tied` holds the sorted positions i whose key ties with i + 1; consecutive positions
    chain into one run [start, stop].
    """
    new_run = np.concatenate(([True], tied[1:] != tied[:-1] + 1))
    start = tied[new_run]
    stop = np.append(tied[np.flatnonzero(new_run)[1:] - 1], tied[-1]) + 1
    length = stop - start + 1
    # the elements of every run, and which run owns each
    owner = np.repeat(np.arange(start.size), length)
    member = start[owner] + (np.arange(owner.size) - np.repeat(np.cumsum(length) - length, length))
    in_a = (key[member] & np.uint64(1)) == 0
    # averaged rank minus untied rank, summed over A's members: (start + (t+1)/2) - (i + 1)
    mean_pos = start + (length + 1.0) / 2.0
    delta = np.where(in_a, mean_pos[owner] - (member + 1.0), 0.0)
    adjust = np.bincount(owner, weights=delta, minlength=start.size)
    run_feature = (key[start] >> np.uint64(33)).astype(np.intp)
    return adjust, run_feature, length.astype(np.float64)
