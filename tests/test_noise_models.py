"""Noise models beyond AR(p): FILM, ARMA(1,1), AR order by BIC, SPM12's FAST; references independent of the code."""

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest
from scipy import stats
from scipy.linalg import cholesky, solve_triangular, toeplitz
from scipy.signal import lfilter

from voxfit import fit_images
from voxfit.core import factorize
from voxfit.core.arma import arma_autocorrelations, arma_grid, arma_whiten, estimate_arma, fit_arma_block
from voxfit.core.film import film_lags, select_ar_order, smooth_autocorrelations, tukey_taper, volume_kernel
from voxfit.core.reml import reml, whitening_matrix
from voxfit.engine.global_ar import fast_components
from voxfit.engine.noise_models import fit_arma11, fit_auto_ar, fit_film
from voxfit.exceptions import InputError
from voxfit.models._routing import noise_order

DATA = Path(__file__).parent / "data"


def design(n):
    t = np.arange(n)
    return np.column_stack([np.ones(n), ((t // 10) % 2).astype(float), np.cos(np.pi * (t + 0.5) / n)])


def arma_noise(rng, n, V, a, b):
    return lfilter([1.0, b], [1.0, -a], rng.standard_normal((n + 200, V)), axis=0)[200:]


def binomial_interval(k, p=0.05):
    """95% interval of the rate of k Bernoulli(p) trials."""
    lo, hi = stats.binom.interval(0.95, k, p)
    return lo / k, hi / k


@pytest.mark.parametrize("a, b", [(0.5, 0.3), (0.8, -0.6), (0.0, 0.8), (0.79, 0.79)])
def test_arma_whitening_is_the_inverse_cholesky_factor(a, b):
    n = 50
    rho = arma_autocorrelations([a], [b], n - 1)[0]
    C = toeplitz(rho) * (1 + 2 * a * b + b * b) / (1 - a * a)
    Z = np.random.default_rng(0).standard_normal((n, 4))
    W, logdet = arma_whiten(Z, a, b)
    npt.assert_allclose(W, solve_triangular(cholesky(C, lower=True), Z, lower=True), atol=1e-10)
    npt.assert_allclose(logdet[0], np.linalg.slogdet(C)[1], atol=1e-10)
    W2, _ = arma_whiten(Z, np.full(4, a), np.full(4, b))  # one model per column
    npt.assert_allclose(W2, W, atol=1e-12)


@pytest.mark.parametrize("intercept", [True, False])
def test_arma_criterion_and_gls_from_the_eigenbasis_equal_the_dense_computation(intercept):
    """The REML criterion at every grid point and the GLS fit at each voxel's (a, b), which arma.py computes in
    the MA(1)'s eigenbasis with the corner by Woodbury, equal those of the dense covariance C (n x n Toeplitz of
    the ARMA autocovariances, unit innovations): the GLS to 1e-10, the grid's criterion (its products in single
    precision) to 1e-7."""
    rng = np.random.default_rng(11)
    n, V = 60, 6
    X = design(n) if intercept else rng.normal(size=(n, 3))
    Y = arma_noise(rng, n, V, 0.5, 0.3) + X @ rng.normal(size=(3, V))
    d = factorize(X)
    Q, r = d.basis, d.rank

    def dense(a, b, y):
        g0 = (1 + 2 * a * b + b * b) / (1 - a * a)
        C = g0 * toeplitz(arma_autocorrelations([a], [b], n - 1)[0])
        Ci = np.linalg.inv(C)
        gram, rhs = Q.T @ Ci @ Q, Q.T @ Ci @ y
        coords = np.linalg.solve(gram, rhs)
        rss = y @ Ci @ y - rhs @ coords
        crit = (n - r) * np.log(rss) + np.linalg.slogdet(C)[1] + np.linalg.slogdet(gram)[1]
        return coords, rss, crit

    Yc = Y - Y.mean(axis=0) if intercept else Y
    est = estimate_arma(d, Yc)
    grid = arma_grid()
    for v in range(V):
        g = np.flatnonzero((grid == est.grid_best[v]).all(axis=1))[0]
        npt.assert_allclose(est.grid_criterion[v], dense(*grid[g], Yc[:, v])[2], rtol=1e-7)  # single precision
    fit = fit_arma_block(d, Y, [])
    for v in range(V):
        coords, rss, _ = dense(*fit.phi[v], Yc[:, v])
        beta = d.basis_pinv @ coords + (
            np.linalg.lstsq(X, np.full(n, Y[:, v].mean()), rcond=None)[0] if intercept else 0
        )
        npt.assert_allclose(fit.rss[v], rss, rtol=1e-10)
        npt.assert_allclose(fit.betas[:, v], beta, rtol=1e-9, atol=1e-10)


def dense_arma(d, a, b):
    """The dense ARMA(1,1) covariance C (n x n Toeplitz of the autocovariances, unit innovations) and the Gram
    matrix Q'C^-1 Q of the design's basis."""
    n = d.n_scans
    C = (1 + 2 * a * b + b * b) / (1 - a * a) * toeplitz(arma_autocorrelations([a], [b], n - 1)[0])
    return C, d.basis.T @ np.linalg.solve(C, d.basis)


def test_arma_contrast_variances_equal_the_dense_computation():
    """tr(wq gram^-1 wq') at models across the stationary, invertible range and at its edges (the compiled
    Cholesky factor and solves, from the weighted sums) equals the dense computation to 1e-10, for a t and an F
    contrast."""
    from voxfit.core.arma import arma_terms, contrast_variances

    rng = np.random.default_rng(5)
    d = factorize(design(80))
    models = np.column_stack([rng.uniform(-0.98, 0.98, 30), rng.uniform(-0.98, 0.98, 30)])
    models[:3] = [[0.98, -0.98], [0.0, 0.0], [-0.98, 0.98]]
    wqs = [np.array([[0.0, 1.0, 0.0]]) @ d.basis_pinv, np.eye(3)[1:] @ d.basis_pinv]
    got = contrast_variances(arma_terms(d), models, wqs)
    for k, (a, b) in enumerate(models):
        gram_inv = np.linalg.inv(dense_arma(d, a, b)[1])
        for c, wq in zip(got, wqs):
            npt.assert_allclose(c[k], np.trace(wq @ gram_inv @ wq.T), rtol=1e-10)


def test_arma_dof_equal_the_delta_method_at_each_voxels_estimate():
    """Satterthwaite's dof of arma11 (the slopes of log C from the design's lattice, the criterion's curvature
    from the grid around each estimate) equal the delta method done densely at each voxel's refined (a, b): the
    slope of log C and the criterion's second derivatives by central differences (steps 0.02) on the n x n
    covariance. Within 3% where (a, b) is well determined (measured: 1.5%), on voxels across the grid."""
    rng = np.random.default_rng(3)
    n, V = 120, 16
    X = design(n)
    d = factorize(X)
    Q, r = d.basis, d.rank
    Y = np.concatenate(
        [arma_noise(rng, n, 4, a, b) for a, b in [(0.5, 0.3), (0.8, 0.0), (0.0, 0.6), (0.3, -0.2)]], axis=1
    )
    Yc = Y - Y.mean(axis=0)
    w = np.array([[0.0, 1.0, 0.0]])
    wq = w @ d.basis_pinv
    fit = fit_arma_block(d, Y, [w])

    def crit(a, b, y):
        C, gram = dense_arma(d, a, b)
        rhs = Q.T @ np.linalg.solve(C, y)
        rss = y @ np.linalg.solve(C, y) - rhs @ np.linalg.solve(gram, rhs)
        return (n - r) * np.log(rss) + np.linalg.slogdet(C)[1] + np.linalg.slogdet(gram)[1]

    def log_c(a, b):
        return np.log(wq @ np.linalg.solve(dense_arma(d, a, b)[1], wq.T))[0, 0]

    h = 0.02
    for v in range(V):
        (a, b), y = fit.phi[v], Yc[:, v]
        g2 = 0.0
        for step in ([h, 0.0], [0.0, h]):
            up, down = (a + step[0], b + step[1]), (a - step[0], b - step[1])
            curve = (crit(*up, y) + crit(*down, y) - 2 * crit(a, b, y)) / h**2
            g2 += ((log_c(*up) - log_c(*down)) / (2 * h)) ** 2 * 2 / curve if curve > 0 else 0.0
        # where a + b is small the models lie along the white-noise ridge, the criterion is far from quadratic, and
        # differences of any step are rough (measured: up to 25%)
        npt.assert_allclose(fit.contrasts[0][2][v], 2 / (2 / (n - r) + g2), rtol=0.03 if a + b > 0.3 else 0.35)


@pytest.mark.parametrize("columns", ["task", "no constant", "constant only"])
def test_compiled_arma_gls_equals_numpy(columns):
    """``_arma_kernels.small_gls`` (each voxel's Gram matrix from its weighted sums, the Woodbury corner,
    Cholesky, solves, criterion) equals the numpy reference (``_gls_numpy``) to 1e-10: coefficients, RSS,
    W gram^-1 W' for the rows of a t and an F contrast, and criteria, on a subset of the block's voxels too;
    voxels whose model is not stationary (a = +-1: nothing finite) are flagged and fitted by numpy, as before."""
    from voxfit.core.arma import _gls, _gls_numpy, _spectral, arma_terms

    rng = np.random.default_rng(8)
    n, V = 70, 30
    X = {"task": design(n), "no constant": rng.normal(size=(n, 3)), "constant only": np.ones((n, 1))}[columns]
    d = factorize(X)
    Y = arma_noise(rng, n, V, 0.5, 0.2) + 50.0
    spec = _spectral(arma_terms(d), Y - Y.mean(axis=0) if d.has_intercept else Y)
    est = np.column_stack([rng.uniform(-0.9, 0.9, V), rng.uniform(-0.9, 0.9, V)])
    est[:3] = [[1.0, 0.2], [-1.0, 0.0], [0.0, 0.0]]
    W = np.concatenate([d.basis_pinv[:1], d.basis_pinv[: min(2, d.rank)]])  # a t and an F contrast's rows

    def check(got, want):
        coords, rss, gram_inv, crit = want
        for g, w in zip(got, (coords, rss, W @ gram_inv @ W.T, crit)):
            npt.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * np.nanmax(np.abs(w)), equal_nan=True)

    got = _gls(spec, est, W)
    check(got, _gls_numpy(spec, est))
    assert np.isnan(got[1][:2]).all() and np.isfinite(got[1][2:]).all()
    part = np.array([3, 7, 1, 20])  # a subset of the block's voxels (the refits of fit_arma_block)
    check(_gls(spec, est[part], W, part), _gls_numpy(spec, est[part], part))


def test_arma11_recovers_parameters_as_statsmodels_does():
    """REML (a, b) per voxel against statsmodels' ARIMA(1,0,1) with the design as regressors, on a few voxels
    (ML there, REML here: they differ by O(1/n)), and unbiased over many."""
    sm = pytest.importorskip("statsmodels.tsa.arima.model")
    rng = np.random.default_rng(11)
    n, V, a, b = 300, 400, 0.6, 0.3
    X = design(n)
    Y = arma_noise(rng, n, V, a, b) + X @ rng.normal(size=(3, V))
    est = estimate_arma(factorize(X), Y - Y.mean(axis=0)).refined
    assert abs(np.median(est[:, 0]) - a) < 0.05 and abs(np.median(est[:, 1]) - b) < 0.07
    for j in range(4):
        res = sm.ARIMA(Y[:, j], exog=X[:, 1:], order=(1, 0, 1), trend="c").fit()
        npt.assert_allclose(est[j], [res.params[-3], res.params[-2]], atol=0.12)


def test_null_rates_hold_on_arma_noise():
    """On ARMA(1,1) noise with no effect, the one-sided p < 0.05 rate of each model is inside the 95% binomial
    interval (4,000 voxels)."""
    rng = np.random.default_rng(1)
    n, V = 200, 4000
    X = design(n)
    Y = arma_noise(rng, n, V, 0.6, 0.3)
    lo, hi = binomial_interval(V)
    for fit in (fit_arma11, fit_auto_ar):
        p = np.asarray(fit(X, Y, {"b": "x1"}).contrasts["b"].p)
        assert lo <= np.mean(p < 0.05) <= hi, fit.__name__


def test_whitened_residuals_are_white():
    """Ljung-Box at lag 10 (8 dof: two noise parameters) of arma11's whitened residuals rejects at about the
    nominal 5% over 1,000 voxels; OLS residuals of the same data almost always."""
    rng = np.random.default_rng(8)
    n, V = 300, 1000
    X = design(n)
    Y = arma_noise(rng, n, V, 0.5, 0.4)
    d = factorize(X)
    Yc = Y - Y.mean(axis=0)
    est = estimate_arma(d, Yc).refined
    WY, _ = arma_whiten(Yc, est[:, 0], est[:, 1])
    WQ, _ = arma_whiten(np.repeat(d.basis[:, :, None], V, axis=2), est[:, 0], est[:, 1])
    resid = np.stack(
        [WY[:, j] - WQ[:, :, j] @ np.linalg.lstsq(WQ[:, :, j], WY[:, j], rcond=None)[0] for j in range(V)], 1
    )

    def ljung_box(E, lags=10):
        E = E - E.mean(axis=0)
        r = np.stack([np.sum(E[k:] * E[: n - k], axis=0) for k in range(1, lags + 1)]) / np.sum(E * E, axis=0)
        return n * (n + 2) * np.sum(r**2 / (n - np.arange(1, lags + 1))[:, None], axis=0)

    rate = np.mean(stats.chi2.sf(ljung_box(resid), 8) < 0.05)
    assert 0.02 <= rate <= 0.09
    ols = Yc - d.basis @ (d.basis.T @ Yc)
    assert np.mean(stats.chi2.sf(ljung_box(ols), 8) < 0.05) > 0.9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_voxels_have_no_statistic_in_any_noise_model(dtype):
    """A voxel constant over the run (kept by an explicit mask) has no residual variance: NaN t, as OLS and AR(p)
    give. ARMA(1,1), the order BIC chose and the pooled AR(1) (float32) gave finite t from whitened rounding (p
    down to 2e-4)."""
    from voxfit.engine import fit_global_ar

    rng = np.random.default_rng(4)
    n = 100
    X = design(n)
    Y = 1000 + 10 * arma_noise(rng, n, 60, 0.4, 0.0) + 8 * X[:, 1:2]
    constants = [1.0, 1000.0, 1234.567, -3.3e5]
    Y[:, : len(constants)] = constants
    Y = Y.astype(dtype)
    fits = {
        "arma11": fit_arma11(X, Y, {"b": "x1"}),
        "auto": fit_auto_ar(X, Y, {"b": "x1"}),
        "ar1-global": fit_global_ar(X, Y, {"b": "x1"}, kinds=["constant", "condition", "drift"]),
    }
    for name, fitted in fits.items():
        t = np.asarray(fitted.contrasts["b"].stat)
        assert np.isnan(t[: len(constants)]).all(), (name, t[: len(constants)])
        assert np.isfinite(t[len(constants) :]).all(), name


def test_arma11_does_not_depend_on_the_datas_scale():
    """The grid's products are in single precision: data of size 1e20 overflowed it when squared, and of 1e-30
    underflowed (t moved by up to 1000x). Scaled by powers of two, the fit is the same to rounding."""
    rng = np.random.default_rng(5)
    n = 120
    X = design(n)
    Y = 1000 + 2 * X[:, 1:2] + 10 * arma_noise(rng, n, 40, 0.4, 0.2)
    t = {s: np.asarray(fit_arma11(X, Y * s, {"b": "x1"}).contrasts["b"].stat) for s in (1.0, 2.0**66, 2.0**-100)}
    for s in (2.0**66, 2.0**-100):
        npt.assert_allclose(t[s], t[1.0], rtol=1e-6)


def test_auto_chooses_the_order_of_the_data():
    rng = np.random.default_rng(3)
    n, V = 400, 500
    X = design(n)
    d = factorize(X)
    white = rng.standard_normal((n, V))
    ar2 = lfilter([1.0], [1.0, -0.5, 0.3], rng.standard_normal((n + 100, V)), axis=0)[100:]

    def lagged(Y):
        E = Y - d.basis @ (d.basis.T @ Y)
        return np.stack([np.sum(E[: n - k] * E[k:], axis=0) for k in range(9)])

    assert np.mean(select_ar_order(lagged(white), n - 3, 8) == 0) > 0.9
    assert np.bincount(select_ar_order(lagged(ar2), n - 3, 8)).argmax() == 2
    fitted = fit_auto_ar(X, np.concatenate([white, ar2], axis=1), {"b": "x1"})
    assert fitted.orders.shape == (2 * V,) and np.mean(fitted.orders[V:] == 2) > 0.8
    npt.assert_allclose(np.median(fitted.parameters[:2, V:], axis=1), [0.5, -0.3], atol=0.05)


def test_film_taper_and_smoothing_against_loops():
    M = film_lags(200)
    assert M == 14
    rho = np.random.default_rng(0).uniform(-0.5, 0.5, (6, M + 1))
    rho[:, 0] = 1
    tapered = tukey_taper(rho)
    npt.assert_allclose(tapered[:, 3], rho[:, 3] * 0.5 * (1 + np.cos(np.pi * 3 / M)))
    assert np.all(tapered[:, M] == 0)
    mask = np.zeros((4, 3, 2), bool)
    mask[:3, :2, :] = True
    V = int(mask.sum())
    rng = np.random.default_rng(1)
    maps = np.column_stack([np.ones(V), rng.normal(size=(V, 2))])
    bright = rng.normal(100, 5, V)
    kernel = volume_kernel(mask, (2.0, 2.0, 3.0), sigma_mm=2.0)
    out = smooth_autocorrelations(maps, kernel, bright, 4.0)
    ijk = np.array([(x, y, z) for z in range(2) for y in range(3) for x in range(4) if mask[x, y, z]])
    for i in range(V):  # brute force: every other voxel within 2 sigma, Gaussian times brightness weights
        d2 = np.sum(((ijk - ijk[i]) * np.array([2.0, 2.0, 3.0])) ** 2, axis=1)
        w = np.exp(-d2 / 8.0) * np.exp(-(((bright - bright[i]) / 4.0) ** 2)) * (d2 <= 16.0) * (d2 > 0)
        npt.assert_allclose(out[i, 1:], w @ maps[:, 1:] / w.sum(), rtol=1e-12)


def test_film_null_rate_and_fit_images_on_a_volume(tmp_path):
    rng = np.random.default_rng(21)
    n, shape = 150, (12, 12, 10)
    X = design(n)
    V = int(np.prod(shape))
    noise = lfilter([1.0], [1.0, -0.4], rng.standard_normal((n + 100, V)), axis=0)[100:] + 100.0
    p = np.asarray(fit_film(X, noise, {"b": "x1"}).contrasts["b"].p)  # no spatial step
    lo, hi = binomial_interval(V)
    assert lo <= np.mean(p < 0.05) <= hi
    img = nib.Nifti1Image(noise.T.reshape(*shape, n, order="F").astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    res = fit_images(
        img, (X, ["c", "x1", "drift"]), {"b": "x1"}, noise="film", mask=np.ones(shape, bool), out_dir=tmp_path / "out"
    )
    p = np.asarray(res.contrasts["b"].p)
    assert lo <= np.mean(p < 0.05) <= hi
    assert (tmp_path / "out" / "stat-arcoef_statmap.nii.gz").exists()
    with pytest.raises(InputError, match="volume"):
        fit_images(noise, (X, ["c", "x1", "drift"]), {"b": "x1"}, noise="film")


def test_fast_equals_spm12_under_octave():
    ref = np.load(DATA / "spm12_fast.npz")
    X, Cy, tr = ref["X"], ref["Cy"], float(ref["tr"])
    Q = fast_components(X.shape[0], tr)
    assert len(Q) == int(ref["n_components"]) == 18
    V, h, _ = reml(Cy, X, Q)
    n = X.shape[0]
    npt.assert_allclose(h, ref["h"], atol=1e-6)
    npt.assert_allclose(V * n / np.trace(V), ref["V"], atol=1e-6)
    npt.assert_allclose(whitening_matrix(V), ref["W"], atol=1e-6)


def test_refusals_in_one_line():
    X = design(60)
    Y = np.random.default_rng(0).standard_normal((60, 20))
    for bad in ("arma", "ar17", "film2"):
        with pytest.raises(InputError, match="`noise` must be"):
            noise_order(bad)
    with pytest.raises(InputError, match="repetition time"):
        fit_images(Y, (X, ["c", "x1", "drift"]), {"b": "x1"}, noise="fast")
    with pytest.raises(InputError, match="fast"):
        fit_images(Y, (X, ["c", "x1", "drift"]), {"b": "x1"}, noise="fast", streaming=True)
    for name in ("film", "arma11", "auto"):
        with pytest.raises(InputError) as err:
            fit_images(Y, (X, ["c", "x1", "drift"]), {"b": "x1"}, noise=name, streaming=True)
        assert "\n" not in str(err.value) and name in str(err.value)


@pytest.mark.parametrize(
    "shape, voxel_mm, order", [((9, 8, 7), 3.0, 9), ((24, 28, 24), 2.0, 17), ((16, 16, 14), 1.5, 20)]
)
def test_film_autocorrelations_hold_no_more_than_their_estimate_beside_the_lagged_products(shape, voxel_mm, order):
    """A streamed FILM fit makes its autocorrelations after the pass, beside the sums; their memory was not counted
    (a run of 460,800 voxels peaked at 675 MiB under the 592M it named). They are now made in the lagged products'
    memory, and what they hold beside them, measured by tracemalloc, is within film_stage_bytes, which the streamed
    pass's cap counts; the autocorrelations are those of the steps made on copies, as they had been."""
    import tracemalloc

    from voxfit.core.film import raw_autocorrelations, susan_brightness_threshold
    from voxfit.engine.noise_models import FilmSpace, film_autocorrelations, film_stage_bytes
    from voxfit.io.geometry import VolumeGeometry

    rng = np.random.default_rng(1)
    grid = rng.random(shape) < 0.6
    V = int(grid.sum())
    lagged = rng.random((order + 1, V)) + np.arange(order + 1)[::-1, None]
    lagged[:, 5] = 0.0  # (no variance: autocorrelations 0)
    space = FilmSpace(grid, np.full(3, voxel_mm), 100 + rng.standard_normal(V))
    valid = rng.random(V) < 0.95
    bright = space.brightness
    rho = raw_autocorrelations(lagged)
    assert (rho[:, 0] == 1).all() and not rho[5, 1:].any()
    smoothed = smooth_autocorrelations(rho, space.kernel(), bright, susan_brightness_threshold(bright[valid]), valid)
    expected = tukey_taper(smoothed)
    tracemalloc.start()
    got, _ = film_autocorrelations(lagged, valid, space)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    geometry = VolumeGeometry(shape, np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0]))
    assert peak <= film_stage_bytes(V, order, geometry), (peak, film_stage_bytes(V, order, geometry))
    npt.assert_array_equal(got, expected)
    assert got.flags.c_contiguous and got.shape == (V, order + 1)
