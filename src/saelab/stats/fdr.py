"""Benjamini-Hochberg adjusted p-values that survive NaN.

statsmodels' `multipletests` turns every adjusted p into NaN when one input is NaN, and
scipy's `false_discovery_control` refuses NaN. Untested features carry NaN p by design, so
here NaN inputs stay NaN and are left out of the family: m counts only the finite p-values
(the features actually tested; filtering them by a label-free rule keeps BH valid).
"""

from __future__ import annotations

import numpy as np


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p, NaN-aware, any shape (the family is every non-NaN entry).

    On the non-NaN entries this equals statsmodels `multipletests(p, method="fdr_bh")[1]`:
    sorted p times m / rank, made monotone from the top, capped at 1.
    """
    arr = np.asarray(p, dtype=np.float64)
    flat = arr.reshape(-1)
    out = np.full(flat.shape, np.nan)
    ok = ~np.isnan(flat)
    q = flat[ok]
    m = q.size
    if m == 0:
        return out.reshape(arr.shape)
    if q.min() < 0.0 or q.max() > 1.0:
        raise ValueError("p-values must lie in [0, 1] (or be NaN for untested features)")
    order = np.argsort(q, kind="stable")
    ecdf = np.arange(1, m + 1, dtype=np.float64) / m
    adjusted = q[order] / ecdf
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    np.minimum(adjusted, 1.0, out=adjusted)
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out.reshape(arr.shape)
