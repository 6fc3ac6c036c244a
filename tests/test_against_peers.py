"""Property tests: voxfit against numpy.linalg.lstsq and statsmodels OLS on random designs.

Well-conditioned designs (full rank) and rank-deficient ones (a column that is a combination of others):
betas (the minimum-norm solution for deficient designs, as lstsq and statsmodels' pinv give), residual
variance, t, F and p. Tolerances: 1e-9 relative on quantities of order one; the designs are generated
with bounded condition numbers so that the references themselves are accurate to that.
"""

import warnings

import numpy as np
import numpy.testing as npt
import pytest
from statsmodels.regression.linear_model import OLS  # (statsmodels.api: 0.5 s more of each worker's collection)
from hypothesis import given, settings
from hypothesis import strategies as st

import voxfit
from voxfit.exceptions import RankDeficiencyWarning

RTOL = 1e-9


@st.composite
def problems(draw, deficient=False):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = draw(st.integers(1, 6))
    n = draw(st.integers(p + 3, 60))
    V = draw(st.integers(1, 40))
    X = rng.standard_normal((n, p)) * rng.uniform(0.1, 10, p)  # columns of different scales
    if draw(st.booleans()):
        X[:, 0] = 1.0  # intercept
    if deficient:
        a = rng.standard_normal(p)
        X = np.column_stack([X, X @ a])  # one exactly dependent column
    Y = X @ rng.standard_normal((X.shape[1], V)) + rng.uniform(0.1, 5) * rng.standard_normal((n, V))
    if draw(st.booleans()):
        Y += rng.uniform(-1e3, 1e3)  # a large common level, as imaging data have
    return X, Y


def _fit(X, Y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficiencyWarning)
        return voxfit.fit(X, Y)


def _scale(Y):
    return np.abs(Y).max()


@settings(max_examples=60, deadline=None)
@given(problems())
def test_full_rank_against_lstsq(problem):
    X, Y = problem
    fit = _fit(X, Y)
    beta, _, rank, _ = np.linalg.lstsq(X, Y, rcond=None)
    assert fit.rank == rank == X.shape[1]
    resid = Y - X @ beta
    npt.assert_allclose(fit.betas, beta, rtol=RTOL, atol=RTOL * _scale(Y))
    npt.assert_allclose(fit.residual_variance, (resid**2).sum(0) / (X.shape[0] - rank), rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(problems(deficient=True))
def test_rank_deficient_against_lstsq(problem):
    X, Y = problem
    with pytest.warns(RankDeficiencyWarning, match="rank deficient"):
        fit = voxfit.fit(X, Y)
    beta, _, rank, _ = np.linalg.lstsq(X, Y, rcond=None)
    assert fit.rank == rank == X.shape[1] - 1
    assert fit.dof == X.shape[0] - rank
    npt.assert_allclose(fit.betas, beta, rtol=1e-8, atol=1e-8 * _scale(Y))
    resid = Y - X @ beta
    npt.assert_allclose(fit.residual_variance, (resid**2).sum(0) / fit.dof, rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(problems(), st.data())
def test_statistics_against_statsmodels(problem, data):
    X, Y = problem
    fit = _fit(X, Y)
    p = X.shape[1]
    c = np.array(data.draw(st.lists(st.integers(-2, 2), min_size=p, max_size=p).filter(any)), float)
    stats = fit.contrast(c)
    for j in range(min(Y.shape[1], 5)):
        ref = OLS(Y[:, j], X).fit()
        npt.assert_allclose(fit.betas[:, j], ref.params, rtol=RTOL, atol=RTOL * _scale(Y))
        npt.assert_allclose(fit.stderr[:, j], ref.bse, rtol=1e-8)
        npt.assert_allclose(fit.r2[j], ref.rsquared, rtol=1e-8, atol=1e-10)
        tt = ref.t_test(c)
        npt.assert_allclose(stats.effect[j], tt.effect[0], rtol=RTOL, atol=RTOL * _scale(Y))
        npt.assert_allclose(stats.t[j], tt.tvalue.item(), rtol=1e-8, atol=1e-10)
        # statsmodels gives the two-sided p; voxfit's is the upper tail
        p_two = 2 * min(stats.p[j], 1 - stats.p[j])
        npt.assert_allclose(p_two, tt.pvalue.item(), rtol=1e-7, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_f_contrast_against_statsmodels(problem):
    X, Y = problem
    p = X.shape[1]
    fit = _fit(X, Y)
    C = np.eye(p)[: max(1, min(p, 3))]
    if C.shape[0] == 1:
        C = np.vstack([C, C])  # a redundant second row: still an F of one numerator dof (of a one-column design too)
    stats = fit.contrast(C)
    assert stats.kind == "F"
    independent_rows = C[: np.linalg.matrix_rank(C)]  # statsmodels needs linearly independent rows
    for j in range(min(Y.shape[1], 5)):
        ft = OLS(Y[:, j], X).fit().f_test(independent_rows)
        npt.assert_allclose(stats.F[j], np.asarray(ft.fvalue).item(), rtol=1e-8)
        npt.assert_allclose(stats.p[j], np.asarray(ft.pvalue).item(), rtol=1e-7, atol=1e-14)
        assert stats.dof == (ft.df_num, ft.df_denom)


def test_estimable_contrast_on_deficient_design_equals_full_rank_model(rng):
    """A - B on [A, B, A + B] gives the statistics of A - B on [A, B]."""
    n = 40
    A, B = rng.standard_normal(n), rng.standard_normal(n)
    Y = rng.standard_normal((n, 30)) + 3 * A[:, None]
    full = voxfit.fit(np.column_stack([A, B]), Y)
    with pytest.warns(RankDeficiencyWarning):
        deficient = voxfit.fit(np.column_stack([A, B, A + B]), Y, names=["A", "B", "AB"])
    s1 = full.contrast([1, -1])
    s2 = deficient.contrast("A - B")
    assert deficient.dof == full.dof
    npt.assert_allclose(s2.effect, s1.effect, rtol=1e-10)
    npt.assert_allclose(s2.t, s1.t, rtol=1e-10)
    npt.assert_allclose(s2.z, s1.z, rtol=1e-10)
