"""saelab.stats against scipy and statsmodels, feature by feature, on data built to break it.

The codes mix every awkward kind of feature SAE codes have: dead, constant non-zero, firing in
one group only, constant in each group (perfect separation), tied values from a small set
(negatives too), single firings, dense and ordinary sparse ones, with unequal groups. Every
tested feature's statistics must equal scipy's (`ttest_ind(equal_var=False)`,
`mannwhitneyu(method="asymptotic")`, `fisher_exact` / `chi2_contingency`) and the BH must
equal statsmodels' `multipletests(method="fdr_bh")` on the tested set, to 1e-9 relative.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from scipy.stats.contingency import expected_freq

from saelab.errors import SaelabError
from saelab.stats import (
    COLUMNS,
    TwoGroupAccumulator,
    bh_adjust,
    contrast_table,
    hook_tables,
    two_group_stats,
)
from saelab.stats.rates import fisher_two_sided
from saelab.stats.welch import log10_two_sided_p

multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests

RTOL = 1e-9
KINDS = (
    "dead",
    "constant",
    "separated",  # constant c in A, 0 in B: both groups constant
    "only_a",
    "only_b",
    "const_b_var_a",  # fires in every A row (varied), constant c in every B row
    "tied",
    "tied_signed",
    "single",
    "dense",
    "sparse",
    "rare",
)


def make_codes(
    n_a: int, n_b: int, per_kind: int, seed: int, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Dense (rows x features) codes with A rows and B rows interleaved at random."""
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    in_a = np.zeros(n, dtype=bool)
    in_a[rng.choice(n, n_a, replace=False)] = True
    cols, kinds = [], []
    for kind in KINDS:
        for _ in range(per_kind):
            col = np.zeros(n)
            if kind == "constant":
                col[:] = rng.choice([0.75, 3.0, -2.5])
            elif kind == "separated":
                col[in_a] = 1.25
            elif kind == "only_a":
                fire = in_a & (rng.random(n) < rng.uniform(0.2, 0.9))
                col[fire] = rng.exponential(2.0, fire.sum())
            elif kind == "only_b":
                fire = ~in_a & (rng.random(n) < rng.uniform(0.2, 0.9))
                col[fire] = rng.exponential(2.0, fire.sum())
            elif kind == "const_b_var_a":
                col[in_a] = rng.exponential(1.0, n_a) + 0.1
                col[~in_a] = 0.5
            elif kind == "tied":
                fire = rng.random(n) < rng.uniform(0.1, 0.9)
                col[fire] = rng.choice([0.5, 1.0, 2.0], fire.sum())
            elif kind == "tied_signed":
                fire = rng.random(n) < rng.uniform(0.3, 0.9)
                col[fire] = rng.choice([-1.0, -0.5, 0.5, 1.0, 4.0], fire.sum())
            elif kind == "single":
                col[rng.integers(n)] = rng.exponential(1.0) + 0.1
            elif kind == "dense":
                col[:] = rng.normal(5.0, 1.0, n) + 0.3 * in_a
                col[col == 0] = 1.0
            elif kind == "sparse":
                rate = rng.uniform(0.05, 0.6)
                lift = rng.choice([1.0, 1.0, 3.0])
                fire = rng.random(n) < np.where(in_a, min(rate * lift, 0.95), rate)
                col[fire] = rng.exponential(1.0, fire.sum()) * np.where(in_a[fire], 1.5, 1.0)
            elif kind == "rare":
                fire = rng.random(n) < 0.04
                col[fire] = rng.exponential(1.0, fire.sum())
            cols.append(col)
            kinds.append(kind)
    x = np.stack(cols, axis=1)
    if dtype == np.float32:
        x = x.astype(np.float32)
    else:  # float64 values that float32 cannot hold: the other ranking path
        x = x * (1.0 + 1e-12 * rng.random(x.shape)) * (x != x.round(3)) + x * (x == x.round(3))
    return x, in_a, kinds


def quiet_stats(acc: TwoGroupAccumulator, **kw: int) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return two_group_stats(acc, **kw)


def accumulate(x: np.ndarray, in_a: np.ndarray, pieces: int = 1, **kw: bool) -> TwoGroupAccumulator:
    acc = TwoGroupAccumulator(x.shape[1], **kw)
    bounds = np.linspace(0, x.shape[0], pieces + 1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            acc.add(sp.csr_matrix(x[lo:hi]), in_a[lo:hi])
    return acc


def close(ours: float, ref: float, what: str, j: int) -> None:
    assert ours == pytest.approx(ref, rel=RTOL, abs=0.0), f"{what} of feature {j}: {ours} vs {ref}"


def reference_rate(aa: int, ab: int, n_a: int, n_b: int) -> tuple[str, float]:
    table = np.array([[aa, ab], [n_a - aa, n_b - ab]])
    if (expected_freq(table) < 5).any():
        return "fisher", float(stats.fisher_exact(table).pvalue)
    return "chi2", float(stats.chi2_contingency(table).pvalue)


def check_against_scipy(
    x: np.ndarray, in_a: np.ndarray, res: dict[str, np.ndarray], mann_whitney: bool = True
) -> None:
    with warnings.catch_warnings():  # scipy warns on the near-constant columns it is fed
        warnings.simplefilter("ignore", RuntimeWarning)
        _check_against_scipy(x, in_a, res, mann_whitney)


def _check_against_scipy(
    x: np.ndarray, in_a: np.ndarray, res: dict[str, np.ndarray], mann_whitney: bool
) -> None:
    xa, xb = x[in_a].astype(np.float64), x[~in_a].astype(np.float64)
    n_a, n_b = len(xa), len(xb)
    for j in np.flatnonzero(res["tested"]):
        a, b = xa[:, j], xb[:, j]
        va, vb = a.var(ddof=1), b.var(ddof=1)
        assert res["active_a"][j] == np.count_nonzero(a)
        assert res["active_b"][j] == np.count_nonzero(b)
        close(res["mean_a"][j], a.mean(), "mean_a", j)
        close(res["sd_b"][j], b.std(ddof=1), "sd_b", j)
        tt = stats.ttest_ind(a, b, equal_var=False)
        if va == 0 and vb == 0:  # perfect separation: scipy's t is inf, p 0
            assert res["t"][j] == tt.statistic and res["p_t"][j] == 0 == tt.pvalue
            assert res["log10_p_t"][j] == -np.inf and res["df"][j] == min(n_a, n_b) - 1
            assert np.isinf(res["cohen_d"][j]) and np.isinf(res["hedges_g"][j])
        else:
            close(res["t"][j], tt.statistic, "t", j)
            close(res["p_t"][j], tt.pvalue, "p_t", j)
            df = (va / n_a + vb / n_b) ** 2 / (
                (va / n_a) ** 2 / (n_a - 1) + (vb / n_b) ** 2 / (n_b - 1)
            )
            close(res["df"][j], df, "df", j)
            close(res["log10_p_t"][j], math.log10(tt.pvalue), "log10_p_t", j)
            pooled = math.sqrt(((n_a - 1) * va + (n_b - 1) * vb) / (n_a + n_b - 2))
            d = (a.mean() - b.mean()) / pooled
            m = (n_a + n_b - 2) / 2
            j_corr = math.exp(math.lgamma(m) - math.lgamma(m - 0.5)) / math.sqrt(m)
            close(res["cohen_d"][j], d, "cohen_d", j)
            close(res["hedges_g"][j], d * j_corr, "hedges_g", j)
        if mann_whitney:
            mw = stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=True)
            assert res["u"][j] == mw.statistic, f"U of feature {j}"
            close(res["p_u"][j], mw.pvalue, "p_u", j)
            close(res["auc"][j], mw.statistic / (n_a * n_b), "auc", j)
        kind, p = reference_rate(int(res["active_a"][j]), int(res["active_b"][j]), n_a, n_b)
        assert res["rate_test"][j] == kind, f"rate test of feature {j}"
        close(res["p_rate"][j], p, "p_rate", j)
        for name in COLUMNS:
            if res[name].dtype.kind != "f" or (name in ("u", "p_u", "auc") and not mann_whitney):
                continue
            assert not np.isnan(res[name][j]), f"{name} is NaN for tested feature {j}"


@pytest.mark.parametrize(
    ("n_a", "n_b", "per_kind", "seed", "dtype"),
    [(37, 11, 6, 0, np.float32), (11, 37, 6, 1, np.float64), (240, 180, 12, 2, np.float32)],
)
def test_matches_scipy_feature_by_feature(
    n_a: int, n_b: int, per_kind: int, seed: int, dtype: type
) -> None:
    x, in_a, kinds = make_codes(n_a, n_b, per_kind, seed, dtype)
    res = quiet_stats(accumulate(x, in_a))
    assert list(res) == list(COLUMNS)
    assert all(len(v) == x.shape[1] for v in res.values())
    kinds_arr = np.array(kinds)
    # dead and constant features are never tested, and carry NaN, never 0 or 1
    untested = (x == x[0]).all(axis=0)
    assert untested[np.isin(kinds_arr, ["dead", "constant"])].all()
    np.testing.assert_array_equal(res["tested"], ~untested)
    for name in ("t", "df", "p_t", "log10_p_t", "cohen_d", "hedges_g", "u", "p_u", "auc"):
        assert np.isnan(res[name][untested]).all(), name
    assert np.isnan(res["p_rate"][untested]).all()
    assert (res["rate_test"][untested] == "").all()
    assert set(res["rate_test"][~untested]) <= {"fisher", "chi2"}
    if n_a + n_b > 100:
        assert {"fisher", "chi2"} <= set(res["rate_test"][~untested])
    check_against_scipy(x, in_a, res)

    tested = res["tested"]
    for col in ("p_t", "p_u", "p_rate"):
        q = bh_adjust(res[col])
        assert np.isnan(q[~tested]).all()
        ref = multipletests(res[col][tested], method="fdr_bh")[1]
        np.testing.assert_allclose(q[tested], ref, rtol=RTOL, atol=0)


def test_min_active_is_a_label_free_filter() -> None:
    x, in_a, _ = make_codes(37, 11, 6, 3)
    acc = accumulate(x, in_a)
    res = quiet_stats(acc, min_active=5)
    fires = (x != 0).sum(axis=0)
    constant = (x == x[0]).all(axis=0)
    np.testing.assert_array_equal(res["tested"], (fires >= 5) & ~constant)
    assert np.isnan(res["p_t"][~res["tested"]]).all()
    check_against_scipy(x, in_a, res)


def test_pieces_and_storage_details_give_the_same_table() -> None:
    x, in_a, _ = make_codes(60, 45, 8, 4)
    one = quiet_stats(accumulate(x, in_a))
    # uneven pieces, an empty block, blocks holding one group only, float64 and float16-free
    acc = TwoGroupAccumulator(x.shape[1])
    order = np.argsort(~in_a, kind="stable")  # all A rows first: blocks of one group
    xs, labels = x[order], in_a[order]
    for lo, hi in [(0, 7), (7, 7), (7, 59), (59, 60), (60, 61), (61, 105)]:
        acc.add(sp.csr_matrix(xs[lo:hi].astype(np.float64)), labels[lo:hi])
    many = quiet_stats(acc)
    # explicit stored zeros and a CSC block must not count as firings
    block = sp.csr_matrix(x)
    block.data[::7] = 0.0
    x_zeroed = block.toarray()
    acc_z = TwoGroupAccumulator(x.shape[1])
    acc_z.add(block, in_a)
    zeroed = quiet_stats(acc_z)
    ref_z = quiet_stats(accumulate(x_zeroed, in_a, pieces=3))

    for a, b in ((one, many), (zeroed, ref_z)):
        for name in COLUMNS:
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    check_against_scipy(x_zeroed, in_a, zeroed)


def test_without_kept_values_welch_agrees_and_mann_whitney_is_absent() -> None:
    x, in_a, _ = make_codes(37, 11, 6, 5)
    full = quiet_stats(accumulate(x, in_a))
    lean_acc = accumulate(x, in_a, pieces=4, keep_values=False)
    lean = quiet_stats(lean_acc)
    assert lean_acc.nnz == np.count_nonzero(x)
    for name in ("t", "df", "p_t", "cohen_d", "hedges_g", "p_rate", "mean_a", "sd_b"):
        np.testing.assert_allclose(lean[name], full[name], rtol=1e-9, atol=0, err_msg=name)
    np.testing.assert_array_equal(lean["tested"], full["tested"])
    for name in ("u", "p_u", "auc"):
        assert np.isnan(lean[name]).all()
    check_against_scipy(x, in_a, lean, mann_whitney=False)


def test_log10_p_stays_finite_where_p_underflows() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    in_a = np.arange(2 * n) < n
    cols = [
        np.where(in_a, 1.0 + 0.01 * rng.random(2 * n), 0.1 * rng.random(2 * n)),  # huge t
        np.where(in_a, 1.0, 0.0) * rng.exponential(1.0, 2 * n),  # t ~ 37, p < 1e-280
        np.where(rng.random(2 * n) < 0.3, rng.exponential(1.0, 2 * n), 0.0),  # null
    ]
    x = np.stack(cols, axis=1).astype(np.float32)
    res = quiet_stats(accumulate(x, in_a))
    assert res["p_t"][0] == 0.0 and np.isfinite(res["log10_p_t"]).all()
    assert res["log10_p_t"][0] < -1000
    assert res["log10_p_t"][1] < -280
    # where scipy's logsf is still finite it agrees (continued fraction vs log(sf))
    finite = np.isfinite(stats.t.logsf(np.abs(res["t"]), res["df"]))
    ref = (np.log(2) + stats.t.logsf(np.abs(res["t"]), res["df"])) / np.log(10)
    np.testing.assert_allclose(res["log10_p_t"][finite], ref[finite], rtol=1e-12)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for t, df in [(res["t"][0], res["df"][0]), (45.0, 6398.0), (1e4, 50.0), (300.0, 2.5)]:
        xx = mpmath.mpf(df) / (df + mpmath.mpf(t) ** 2)
        exact = float(mpmath.log10(mpmath.betainc(df / 2, 0.5, 0, xx, regularized=True)))
        ours = log10_two_sided_p(np.array([t]), np.array([df]))[0]
        assert ours == pytest.approx(exact, rel=1e-12)


def test_fisher_matches_scipy_on_every_table() -> None:
    """Every 2x2 table with the given group sizes, symmetric ties included."""
    for n_a, n_b in [(10, 10), (37, 11), (3, 25), (2, 2)]:
        n = n_a + n_b
        xs, ks = [], []
        for k in range(0, n + 1):
            for x in range(max(0, k - n_b), min(k, n_a) + 1):
                xs.append(x)
                ks.append(k)
        ours = fisher_two_sided(np.array(xs), np.array(ks), n_a, n)
        for x, k, p in zip(xs, ks, ours, strict=True):
            ref = stats.fisher_exact([[x, k - x], [n_a - x, n_b - (k - x)]]).pvalue
            assert p == pytest.approx(ref, rel=RTOL, abs=0.0), (n_a, n_b, x, k)


def test_bh_adjust_is_nan_aware() -> None:
    rng = np.random.default_rng(7)
    p = rng.random((4, 50)) ** 3
    p[rng.random(p.shape) < 0.2] = np.nan
    p[0, :5] = p[0, 5]  # ties
    p[1, 0] = 0.0
    q = bh_adjust(p)
    assert q.shape == p.shape
    ok = ~np.isnan(p)
    assert np.isnan(q[~ok]).all()
    ref = multipletests(p[ok], method="fdr_bh")[1]
    np.testing.assert_allclose(q[ok], ref, rtol=1e-12, atol=0)
    # m counts the tested (non-NaN) p only: a lone p stays itself
    assert bh_adjust(np.array([np.nan, 0.02, np.nan]))[1] == 0.02
    assert np.isnan(bh_adjust(np.array([np.nan, np.nan]))).all()
    assert bh_adjust(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bh_adjust(np.array([0.5, 1.5]))


@pytest.mark.parametrize(
    ("n_a", "n_b", "message"),
    [
        (5, 0, "all 5 prompts are in group A and none in group B"),
        (0, 4, "all 4 prompts are in group B and none in group A"),
        (1, 9, "group A has 1 prompt .group B has 9.; each group needs at least 2"),
        (9, 1, "group B has 1 prompt .group A has 9.; each group needs at least 2"),
    ],
)
def test_refuses_groups_too_small(n_a: int, n_b: int, message: str) -> None:
    rng = np.random.default_rng(8)
    x = sp.random(n_a + n_b, 20, density=0.3, format="csr", random_state=rng)
    in_a = np.arange(n_a + n_b) < n_a
    acc = TwoGroupAccumulator(20)
    acc.add(x, in_a)
    with pytest.raises(SaelabError, match=message) as err:
        two_group_stats(acc)
    assert "\n" not in str(err.value)


def test_refuses_bad_input() -> None:
    acc = TwoGroupAccumulator(10)
    with pytest.raises(SaelabError, match="has 12 features but the accumulator expects 10"):
        acc.add(sp.csr_matrix((3, 12)), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        acc.add(sp.csr_matrix((3, 10)), np.ones(3))
    with pytest.raises(ValueError, match="one label per row"):
        acc.add(sp.csr_matrix((3, 10)), np.ones(4, dtype=bool))
    bad = sp.csr_matrix(np.array([[0.0, np.nan] + [0.0] * 8]))
    with pytest.raises(SaelabError, match="NaN or infinite"):
        acc.add(bad, np.ones(1, dtype=bool))
    with pytest.raises(SaelabError, match="no prompts"):
        two_group_stats(TwoGroupAccumulator(10))
    with pytest.raises(SaelabError, match="no blocks"):
        contrast_table([])


def test_contrast_table_streams_blocks() -> None:
    x, in_a, _ = make_codes(30, 20, 4, 9)
    blocks = ((sp.csr_matrix(x[i : i + 8]), in_a[i : i + 8]) for i in range(0, 50, 8))
    res = contrast_table(blocks, min_active=2)
    ref = quiet_stats(accumulate(x, in_a), min_active=2)
    for name in COLUMNS:
        if res[name].dtype.kind == "f":
            np.testing.assert_allclose(res[name], ref[name], rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(res[name], ref[name], err_msg=name)


def test_block_kinds_and_an_all_zero_hook() -> None:
    """Dense float16 arrays, CSC, csr_array and integer codes read like float32 CSR."""
    x, in_a, _ = make_codes(20, 16, 3, 10)
    x = np.round(x * 4) / 4  # exact in float16 and as integers x 4
    ref = quiet_stats(accumulate(x.astype(np.float32), in_a))
    for block in (
        x.astype(np.float16),
        sp.csc_matrix(x.astype(np.float32)),
        sp.csr_array(x.astype(np.float64)),
    ):
        res = contrast_table([(block, in_a)])
        for name in ("tested", "t", "p_t", "u", "p_u", "p_rate"):
            np.testing.assert_allclose(res[name], ref[name], rtol=1e-12, err_msg=name)
    as_int = contrast_table([(sp.csr_matrix((x * 4).astype(np.int32)), in_a)])
    np.testing.assert_allclose(as_int["t"], ref["t"], rtol=1e-12)
    np.testing.assert_array_equal(as_int["u"], ref["u"])

    acc = TwoGroupAccumulator(7)
    acc.add(sp.csr_matrix((6, 7), dtype=np.float32), np.array([1, 1, 1, 0, 0, 0], dtype=bool))
    res = quiet_stats(acc)
    assert not res["tested"].any() and np.isnan(res["p_t"]).all() and np.isnan(res["p_u"]).all()
    assert (res["mean_a"] == 0).all() and (res["active_b"] == 0).all()


def test_hooks_in_parallel_equal_one_at_a_time() -> None:
    """Forked workers (the 31-hook contrast) give exactly the one-at-a-time tables."""
    codes = {}
    for i, per_kind in enumerate((2, 3, 1)):
        x, in_a, _ = make_codes(n_a=30, n_b=25, per_kind=per_kind, seed=10 + i)
        codes[f"blocks.{i}.hook_resid_post"] = (sp.csr_matrix(x), in_a)
    hooks = [(h, codes[h][0].shape[1]) for h in codes]

    def blocks_of(hook: str):
        x, in_a = codes[hook]
        return [(x[:20], in_a[:20]), (x[20:], in_a[20:])]

    seen: list[str] = []
    par = hook_tables(hooks, blocks_of, workers=2, done=seen.append)
    assert list(par) == [h for h, _ in hooks] and seen == list(par)
    for hook, width in hooks:
        ref = contrast_table(blocks_of(hook), width)
        for col in COLUMNS:
            np.testing.assert_array_equal(par[hook][col], ref[col], err_msg=f"{hook} {col}")
    assert hook_tables(hooks, blocks_of, workers=1).keys() == par.keys()
