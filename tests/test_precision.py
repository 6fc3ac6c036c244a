"""float32 data give the float64 answer: the precision policy of voxfit.core.ols.

Policy: float32 data are processed in float32 after a per-voxel shift, with float64 sums of squares and
corrections, and voxels whose fit explains most of their variance are refitted in float64. Against a float64
fit of the same float32 numbers: betas within 2e-5 of (|beta| + se) (worst seen over 6 x 45,000 betas:
1.1e-5; median 1e-7), residual variances within 1e-5 relative, t within 1e-5 * (1 + |t|).
"""

import numpy as np
import numpy.testing as npt
import pytest

import voxfit

from .helpers import assert_betas_close, fmri_like


@pytest.mark.parametrize("layout", ["scans", "series"])
@pytest.mark.parametrize("mean,noise", [(1000.0, 10.0), (0.0, 1.0), (0.0, 4.0), (1e5, 3.0), (50.0, 50.0)])
def test_float32_matches_float64(rng, mean, noise, layout):
    """Data held scan by scan, and series by series (as CIFTI runs are read) through numpy's pass, which then
    shifts each series into a tile held the same way."""
    X, Y = fmri_like(rng, n=300, p=15, V=3000, mean=mean, noise=noise, dtype=np.float32)
    f32 = voxfit.fit(X, Y) if layout == "scans" else voxfit.fit(X, np.asfortranarray(Y), compiled=False)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    assert_betas_close(f32.betas, f64.betas, f64.stderr, 2e-5)
    npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-5)
    npt.assert_allclose(f32.r2, f64.r2, rtol=1e-5, atol=1e-5)
    t32, t64 = f32.contrast(np.eye(15)[3]).t, f64.contrast(np.eye(15)[3]).t
    assert np.all(np.abs(t32 - t64) <= 1e-5 * (1 + np.abs(t64)))


@pytest.mark.parametrize("mean,noise", [(1000.0, 10.0), (0.0, 1.0), (1e5, 3.0), (50.0, 50.0)])
def test_float32_matches_float64_on_long_runs(rng, mean, noise):
    """1,200 scans (an HCP run) and 25 columns: the same bounds, for the compiled pass and numpy's on data held scan
    by scan, and numpy's on series; and residual variances within 6e-7 relative in root mean square, which BLAS's
    packed products hold (3-4e-7) and its unpacked ones, adding each coordinate's 1,200 products in one float32
    chain, did not (~1e-6)."""
    X, Y = fmri_like(rng, n=1200, p=25, V=1000, mean=mean, noise=noise, dtype=np.float32)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    for f32 in (
        voxfit.fit(X, Y, compiled=True),
        voxfit.fit(X, Y, compiled=False),
        voxfit.fit(X, np.asfortranarray(Y), compiled=False),
    ):
        assert_betas_close(f32.betas, f64.betas, f64.stderr, 2e-5)
        npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-5)
        relative = f32.residual_variance / f64.residual_variance - 1
        assert np.sqrt(np.mean(relative**2)) < 6e-7, np.sqrt(np.mean(relative**2))


def test_float32_with_strong_effects_uses_the_exact_path(rng):
    """R^2 near 1: the fast sums of squares would cancel, so those voxels are refitted in float64."""
    X, Y = fmri_like(rng, n=100, p=4, V=500, mean=1000.0, noise=1e-3, dtype=np.float32)
    f32 = voxfit.fit(X, Y)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    assert np.median(f64.r2) > 0.999999
    npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-9)


def test_float32_input_is_not_copied_whole(rng):
    """Working memory is bounded by max_memory, not by the size of Y (numpy allocations are traced)."""
    import tracemalloc

    X, Y = fmri_like(rng, n=200, p=5, V=20000, dtype=np.float32)  # 16 MB
    voxfit.fit(X, Y[:, :10])  # compile first
    tracemalloc.start()
    fit = voxfit.fit(X, Y, max_memory="2M")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results = fit.betas.nbytes + 3 * fit.residual_variance.nbytes + fit.valid.nbytes
    assert peak - results < 2 * 2**20 + 256 * 2**10, peak - results  # the cap, plus the factorised design
