"""Voxels with NaN or infinite data, constant voxels and exact fits."""

import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit.exceptions import DataRangeWarning

from .helpers import assert_betas_close, fmri_like


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_and_inf_voxels_are_nan_and_counted(rng, dtype):
    X, Y = fmri_like(rng, n=80, p=4, V=400, dtype=dtype)
    clean = voxfit.fit(X, Y)
    bad = Y.copy()
    bad[3, 10] = np.nan
    bad[0, 11] = np.inf
    bad[79, 12] = -np.inf
    bad[:, 13] = np.nan
    bad[[5, 6], 300] = [np.inf, -np.inf]
    fit = voxfit.fit(X, bad, block_size=50)
    invalid = [10, 11, 12, 13, 300]
    assert fit.n_invalid == 5
    npt.assert_array_equal(np.flatnonzero(~fit.valid), invalid)
    stats = fit.contrast([1, 0, 0, 0])
    for arr in (
        fit.betas[:, invalid],
        fit.residual_variance[invalid],
        fit.r2[invalid],
        stats.t[invalid],
        stats.z[invalid],
    ):
        assert np.isnan(arr).all()
    ok = np.setdiff1d(np.arange(400), invalid)
    # (blocks of 50 voxels are multiplied in other columns than one block of 400: the same to the working dtype's
    # rounding)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    assert_betas_close(fit.betas[:, ok], clean.betas[:, ok], clean.stderr[:, ok], rtol)
    npt.assert_allclose(fit.residual_variance[ok], clean.residual_variance[ok], rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_voxels_give_nan_statistics(rng, dtype):
    X, Y = fmri_like(rng, n=50, p=3, V=20, dtype=dtype)
    Y[:, 4] = 1234.5
    Y[:, 5] = 0.0
    fit = voxfit.fit(X, Y)
    stats = fit.contrast([1, 0, 0])
    for j in (4, 5):
        assert fit.valid[j]
        assert fit.residual_variance[j] == 0.0
        assert np.isnan(fit.r2[j])  # 0 / 0
        assert np.isnan(stats.t[j]) and np.isnan(stats.z[j]) and np.isnan(stats.p[j])
        npt.assert_allclose(fit.betas[:, j], [0, 0, Y[0, j]], atol=1e-9 * max(1, abs(Y[0, j])))
    assert np.isfinite(stats.t[[0, 1, 2, 3, 6]]).all()


def test_exact_fit_has_zero_residual_variance(rng):
    X, _ = fmri_like(rng, n=30, p=4, V=1)
    Y = X @ rng.standard_normal((4, 10)) * 100 + 50
    fit = voxfit.fit(X, Y)
    npt.assert_array_equal(fit.residual_variance, 0.0)
    npt.assert_allclose(fit.r2, 1.0)
    assert np.isnan(fit.contrast([0, 1, 0, 0]).t).all()
    npt.assert_allclose(fit.betas, np.linalg.lstsq(X, Y, rcond=None)[0], rtol=1e-10, atol=1e-10)


def test_huge_finite_values_are_not_invalid():
    """float32 values near the top of the range: shifted values overflow float32, the voxel is still fitted."""
    n = 20
    X = np.column_stack([np.arange(n, dtype=float), np.ones(n)])
    y = np.linspace(-3e38, 3e38, n).astype(np.float32)
    fit = voxfit.fit(X, y[:, None])
    assert fit.valid.all()
    npt.assert_allclose(fit.betas[:, 0], np.linalg.lstsq(X, y.astype(float), rcond=None)[0], rtol=1e-9)


def test_all_voxels_invalid():
    fit = voxfit.fit(np.ones((5, 1)), np.full((5, 3), np.nan))
    assert fit.n_invalid == 3
    assert np.isnan(fit.betas).all()


def test_constant_voxel_without_an_exact_mean_has_nan_r2():
    """0.1 has no exact binary mean: the centred sum of squares is rounding, not variance."""
    X = np.column_stack([np.arange(7.0), np.ones(7)])
    fit = voxfit.fit(X, np.full((7, 2), 0.1))
    assert np.isnan(fit.r2).all() and (fit.residual_variance == 0).all()


def test_huge_float64_values_are_not_perfect_fits(rng):
    X = np.column_stack([rng.standard_normal(20), np.ones(20)])
    y = rng.standard_normal(20) * 1e160
    with pytest.warns(DataRangeWarning, match="not representable"):
        fit = voxfit.fit(X, y)
    # the variance (~1e320) is not representable: NaN and no statistic, never 0 (a perfect fit) or inf (t = 0)
    assert fit.valid.all() and np.isnan(fit.residual_variance[0]) and not fit.r2[0] == 1
    assert np.isnan(fit.contrast([1, 0]).t).all()
    npt.assert_allclose(fit.betas[:, 0], np.linalg.lstsq(X, y / 1e160, rcond=None)[0] * 1e160, rtol=1e-9)


def test_finite_columns_tests_values_only_where_sums_are_not_finite():
    """A NaN, an infinity, infinities of both signs (a NaN sum), and finite float32 values whose sum overflows
    (kept): only the first three columns are dropped."""
    from voxfit._array import finite_columns

    Y = np.ones((4, 6), dtype=np.float32)
    Y[1, 0], Y[2, 1], Y[:2, 2] = np.nan, np.inf, [np.inf, -np.inf]
    Y[:, 3] = 3e38
    ok, finite = finite_columns(Y)
    npt.assert_array_equal(ok, [False, False, False, True, True, True])
    npt.assert_array_equal(finite, Y[:, 3:])
    everything = np.arange(12).reshape(3, 4)
    ok, same = finite_columns(everything)
    assert ok.all() and same is everything
