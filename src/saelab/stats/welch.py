"""Welch's t-test and standardised effect sizes from per-group means and variances.

Everything here is elementwise over features (arrays of shape (n_features,)), so one hook of
32,768 features takes milliseconds. The formulas are scipy's `ttest_ind(equal_var=False)`:

    t  = (mean_A - mean_B) / sqrt(v_A/n_A + v_B/n_B)
    df = (v_A/n_A + v_B/n_B)^2 / ((v_A/n_A)^2/(n_A-1) + (v_B/n_B)^2/(n_B-1))
    p  = 2 * stdtr(df, -|t|)

A two-sided p underflows to 0 once |t| passes ~38 (df ~ 6400). `log10_p_t` stays finite
there: scipy's `t.logsf` is log(sf) and underflows with it, so the log of the two-sided p,
which is the regularised incomplete beta I_x(df/2, 1/2) with x = df/(df + t^2), is computed
from its continued fraction (Lentz) wherever p < 1e-280.
"""

from __future__ import annotations

import numpy as np
from scipy import special

_UNDERFLOW = 1e-280  # below this, log10 p comes from the continued fraction
_LN10 = np.log(10.0)


def welch_t(
    mean_a: np.ndarray, mean_b: np.ndarray, var_a: np.ndarray, var_b: np.ndarray, n_a: int, n_b: int
) -> dict[str, np.ndarray]:
    """t, df, two-sided p and log10 p of Welch's test (group A minus group B).

    Where both groups are constant at different values (perfect separation, both variances
    0) t is +-inf, p is 0, log10 p is -inf, and df, a 0/0 in the formula, is set to its
    lower bound min(n_A, n_B) - 1. Where the means are equal too, everything is NaN (the
    caller marks such constant features untested).
    """
    vn_a = var_a / n_a
    vn_b = var_b / n_b
    se2 = vn_a + vn_b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2 * se2 / (vn_a * vn_a / (n_a - 1) + vn_b * vn_b / (n_b - 1))
        t = (mean_a - mean_b) / np.sqrt(se2)
    separated = (se2 == 0) & (mean_a != mean_b)
    df[separated] = min(n_a, n_b) - 1.0
    p = 2.0 * special.stdtr(df, -np.abs(t))
    return {"t": t, "df": df, "p_t": p, "log10_p_t": log10_two_sided_p(t, df, p)}


def log10_two_sided_p(t: np.ndarray, df: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
    """log10 of the two-sided Student-t p-value, finite wherever |t| is finite."""
    t = np.asarray(t, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    if p is None:
        p = 2.0 * special.stdtr(df, -np.abs(t))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(p)
    deep = (p < _UNDERFLOW) & np.isfinite(t) & (df > 0)
    if deep.any():
        out[deep] = _log_p_deep(np.abs(t[deep]), df[deep]) / _LN10
    return out


def _log_p_deep(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """ln I_x(df/2, 1/2), x = df/(df+t^2): the two-sided p, for large |t| (tiny x^(df/2))."""
    a = df / 2.0
    b = 0.5
    log_t2 = 2.0 * np.log(t)
    log_den = np.logaddexp(np.log(df), log_t2)  # ln(df + t^2) without overflow
    log_x = np.log(df) - log_den
    log_1mx = log_t2 - log_den
    x = np.exp(log_x)
    front = a * log_x + b * log_1mx - np.log(a) - special.betaln(a, b)
    return front + np.log(_betacf(a, b, x))


def _betacf(a: np.ndarray, b: float, x: np.ndarray, max_iter: int = 20000) -> np.ndarray:
    """Continued fraction of the incomplete beta (modified Lentz), vectorised.

    Converges in O(sqrt(a)) terms for x < (a+1)/(a+b+2), which holds wherever p underflows.
    """
    tiny = 1e-300

    def clamp(v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < tiny, tiny, v)

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 / clamp(1.0 - qab * x / qap)
    h = d.copy()
    todo = np.ones(x.shape, dtype=bool)
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        h = np.where(todo, h * d * c, h)
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / clamp(1.0 + aa * d)
        c = clamp(1.0 + aa / c)
        step = d * c
        h = np.where(todo, h * step, h)
        todo &= np.abs(step - 1.0) > 1e-16
        if not todo.any():
            break
    return h


def effect_sizes(
    mean_a: np.ndarray, mean_b: np.ndarray, var_a: np.ndarray, var_b: np.ndarray, n_a: int, n_b: int
) -> dict[str, np.ndarray]:
    """Cohen's d with the pooled SD, and Hedges' g = d x J(n_A + n_B - 2).

    J is the exact small-sample correction Gamma(m)/(sqrt(m) Gamma(m - 1/2)), m = df/2
    (Hedges 1981), not the 1 - 3/(4 df - 1) approximation. A pooled SD of 0 with different
    means gives +-inf.
    """
    dfp = n_a + n_b - 2.0
    pooled = np.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / dfp)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (mean_a - mean_b) / pooled
    m = dfp / 2.0
    j = special.poch(m - 0.5, 0.5) / np.sqrt(m)
    return {"cohen_d": d, "hedges_g": d * j}
