"""The compiled AR data pass and AR(1) fit (``voxfit.core._ar_kernels``) against the numpy path they replace: the
same numbers to rounding for every kind of voxel, and the voxels the numpy path treats specially handed to it."""

import numpy as np
import numpy.testing as npt
import pytest
from scipy.signal import lfilter

from voxfit.core import factorize
from voxfit.core._ar_kernels import ar_kernels_loaded, shift_and_lag
from voxfit.core.ar import ARBlock, _lagged_products, fit_ar_block, fit_ar_sums, lagged_sums
from voxfit.engine import fit_ar


def _designs(n, rng):
    """Designs as users have them: with a constant (the data shifted by their means), without one, rank-deficient
    (a column repeated), and a short one with a single regressor."""
    t = np.arange(n)
    blocks = ((t // 12) % 2).astype(float)
    drift = np.cos(np.pi * (t + 0.5) / n)
    events = rng.standard_normal(n)
    return {
        "constant": np.column_stack([blocks, events, drift, np.ones(n)]),
        "no constant": np.column_stack([blocks, events, drift]),
        "rank-deficient": np.column_stack([blocks, blocks, drift, np.ones(n)]),
        "one column": np.ones((n, 1)),
    }


def _voxels(rng, X, v=300):
    """AR(1) noise from -0.8 to 0.97 plus a few voxels of each special kind: constant, an exact fit of the design,
    a near-exact one on a large offset (the sums lose digits), a random walk (at the unit root), white noise with a
    huge offset, NaN-free all."""
    n = X.shape[0]
    phis = np.linspace(-0.8, 0.97, v)
    e = rng.standard_normal((n + 50, v))
    Y = np.stack([lfilter([1.0], [1.0, -phi], e[:, j])[50:] for j, phi in enumerate(phis)], axis=1)
    Y += X @ rng.standard_normal((X.shape[1], v))
    Y[:, 0] = 7.0
    Y[:, 1] = X @ np.arange(1.0, X.shape[1] + 1)
    Y[:, 2] = 1e4 * Y[:, 1] + 1e-3 * rng.standard_normal(n)
    Y[:, 3] = np.cumsum(rng.standard_normal(n))
    Y[:, 4] = 1e6 + rng.standard_normal(n)
    return Y


def _weights(X):
    """No contrast, a t contrast, and an F contrast of two rows (or of one where the design has one column)."""
    pc = X.shape[1]
    t = np.eye(pc)[[0]]
    F = np.eye(pc)[: min(2, pc)]
    return [[], [t], [t, F]]


def _assert_same(a, b, *, rtol=1e-9):
    for name in ("betas", "rss", "phi", "ols_rss", "tss"):
        x, y = getattr(a, name), getattr(b, name)
        scale = np.maximum(np.abs(y), 1e-12 * np.max(np.abs(y), initial=1.0))
        assert np.all(np.abs(x - y) <= rtol * scale), name
    assert len(a.contrasts) == len(b.contrasts)
    for (ea, ca, da), (eb, cb, db) in zip(a.contrasts, b.contrasts):
        npt.assert_allclose(ea, eb, rtol=rtol, atol=rtol * np.max(np.abs(eb), initial=1.0))
        npt.assert_allclose(ca, cb, rtol=rtol, atol=rtol * np.max(np.abs(cb), initial=1.0))
        npt.assert_allclose(da, db, rtol=rtol)
    npt.assert_array_equal(np.sort(a.flagged), np.sort(b.flagged))


@pytest.mark.parametrize("kind", ["constant", "no constant", "rank-deficient", "one column"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_ar1_fit_equals_the_numpy_path(rng, kind, dtype):
    """Block by block, with the data (explicit refits) and from the sums alone (voxels flagged for the caller):
    betas, RSS, phi, OLS RSS, total sums of squares, each contrast's effect, covariance and dof, and the flags."""
    X = _designs(120, rng)[kind]
    design = factorize(X, warn=False)
    Y = _voxels(rng, X).astype(dtype)
    compiled, numpy = ARBlock(design, 1, compiled=True), ARBlock(design, 1, compiled=False)
    for weights in _weights(X):
        _assert_same(fit_ar_block(compiled, Y, weights), fit_ar_block(numpy, Y, weights))
        sums, _ = lagged_sums(numpy, Y)
        _assert_same(fit_ar_sums(compiled, sums, weights), fit_ar_sums(numpy, sums, weights))
    assert fit_ar_sums(compiled, sums, weights).flagged.size  # the special voxels were there


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("kind", ["constant", "no constant"])
def test_the_numpy_paths_sums_by_tiles_equal_those_of_the_whole_block(rng, monkeypatch, layout, kind):
    """The numpy path sums a block a tile of 16 columns at a time (``TILE_BYTES`` shrunk here; 1 MiB of float64
    otherwise): its sums, first and last rows and the columns it hands to the refits are those of the whole
    shifted block, as scans (C) or series (F, CIFTI) in float32; the fit with its refits is the compiled path's."""
    from voxfit.core import ar

    X = _designs(120, rng)[kind]
    block = ARBlock(factorize(X), 2, compiled=False)
    Y = np.array(_voxels(rng, X, v=75), dtype=np.float32, order=layout)
    monkeypatch.setattr(ar, "TILE_BYTES", 8 * 120 * 16)
    sums, shifted = lagged_sums(block, Y)
    assert shifted is None  # (no whole shifted copy)
    whole = Y.astype(np.float64)
    shift = whole.mean(axis=0) if kind == "constant" else None
    whole -= 0.0 if shift is None else shift
    scale = np.abs(whole).max() ** 2 * 120
    npt.assert_allclose(sums.s, _lagged_products(whole, 2), rtol=1e-12, atol=1e-13 * scale)
    lagged = (block.lagged_basis.T @ whole).reshape(sums.lagged.shape)
    npt.assert_allclose(sums.lagged, lagged, rtol=1e-12, atol=1e-13 * np.abs(lagged).max())
    npt.assert_array_equal(sums.top, whole[:2])
    npt.assert_array_equal(sums.bottom, whole[::-1][:2])
    npt.assert_array_equal(ar.shifted_columns(Y, [3, 40, 74], sums.shift), whole[:, [3, 40, 74]])
    if shift is not None:
        npt.assert_allclose(sums.shift, shift, rtol=1e-14)
    weights = [np.eye(X.shape[1])[[0]]]
    one = ARBlock(factorize(X), 1, compiled=False)
    _assert_same(fit_ar_block(one, Y, weights), fit_ar_block(ARBlock(factorize(X), 1, compiled=True), Y, weights))


def test_compiled_ar1_fit_flags_what_the_numpy_path_flags_near_cancellation(rng):
    """Sums whose residual products cancel more and more digits (the data's sum of squares brought down towards
    the fitted one, from 2 to 8 digits): the OLS products lose digits for some, only the whitened RSS for others;
    both paths flag the same voxels and agree elsewhere."""
    import dataclasses

    from voxfit.core.ar import residual_lagged_sums

    X = _designs(120, rng)["constant"]
    Y = _voxels(rng, X, v=1000)
    compiled, numpy = ARBlock(factorize(X), 1, compiled=True), ARBlock(factorize(X), 1, compiled=False)
    sums, _ = lagged_sums(numpy, Y)
    s = sums.s.copy()
    s[0] -= residual_lagged_sums(numpy, sums)[0] * (1.0 - 10.0 ** -np.linspace(2, 8, s.shape[1]))
    sums = dataclasses.replace(sums, s=s)
    weights = [np.eye(4)[[0]], np.eye(4)[:2]]
    fitted = fit_ar_sums(compiled, sums, weights)
    assert 200 < fitted.flagged.size < 900
    _assert_same(fitted, fit_ar_sums(numpy, sums, weights), rtol=1e-7)


def test_compiled_fit_of_a_strided_block_and_of_one_voxel(rng):
    """A block that is a view into wider data (strided rows), and a block of a single voxel."""
    X = _designs(90, rng)["constant"]
    Y = _voxels(rng, X, v=64)
    wide = np.zeros((90, 200))
    wide[:, 10:74] = Y
    compiled, numpy = ARBlock(factorize(X), 1, compiled=True), ARBlock(factorize(X), 1, compiled=False)
    weights = [np.eye(4)[[0]]]
    _assert_same(fit_ar_block(compiled, wide[:, 10:74], weights), fit_ar_block(numpy, Y, weights))
    _assert_same(fit_ar_block(compiled, Y[:, 40:41], weights), fit_ar_block(numpy, Y[:, 40:41], weights))


def test_integer_blocks_take_the_numpy_data_pass(rng):
    """Data of another dtype (int16 here) than the compiled pass's float32 and float64: the numpy pass."""
    X = _designs(60, rng)["constant"]
    Y = (100 * _voxels(rng, X, v=20)[:, 5:]).astype(np.int16)
    weights = [np.eye(4)[[0]]]
    compiled, numpy = ARBlock(factorize(X), 1, compiled=True), ARBlock(factorize(X), 1, compiled=False)
    _assert_same(fit_ar_block(compiled, Y, weights), fit_ar_block(numpy, Y, weights))


@pytest.mark.parametrize("order", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_data_pass_equals_numpy(rng, order, dtype):
    """``shift_and_lag``: the sums, the data less their means (or not) and the lagged products of that."""
    Y = (rng.standard_normal((40, 33)) + 100.0).astype(dtype)[:, ::2]  # strided, like a block of wider data
    for shifting in (True, False):
        out, sums, s = np.empty(Y.shape), np.empty(Y.shape[1]), np.empty((order + 1, Y.shape[1]))
        shift_and_lag(Y, shifting, out, sums, s)
        ref = Y.astype(np.float64)
        npt.assert_allclose(sums, ref.sum(axis=0), rtol=1e-13)
        ref = ref - ref.mean(axis=0) if shifting else ref
        npt.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        npt.assert_allclose(s, _lagged_products(ref, order), rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("order", [1, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_data_pass_series_by_series_gives_the_same_numbers(rng, order, dtype):
    """Blocks held series by series (F order, as CIFTI runs are read) go voxel by voxel, adding the same terms in
    the same order as the scan-by-scan loops: bit for bit the same sums, shifted data and lagged products, and
    an AR fit of such a block equals the numpy path's."""
    Y = (rng.standard_normal((45, 37)) * 10 + 1000.0).astype(dtype)
    Y[3, 5] = np.nan  # carried through as in rows
    series = np.asfortranarray(Y)
    for shifting in (True, False):
        got, want = [], []
        for data, out in ((series, np.empty(Y.shape, order="F")), (Y, np.empty(Y.shape))):
            sums, s = np.empty(Y.shape[1]), np.empty((order + 1, Y.shape[1]))
            shift_and_lag(data, shifting, out, sums, s)
            (got if data is series else want).extend([out, sums, s])
        for a, b in zip(got, want):
            npt.assert_array_equal(a, b)
    X = _designs(45, rng)["constant"]
    Y = np.asfortranarray(_voxels(rng, X, v=30).astype(dtype))
    weights = [np.eye(4)[[0]]]
    compiled, numpy = ARBlock(factorize(X), order, compiled=True), ARBlock(factorize(X), order, compiled=False)
    rtol = 1e-8 if order > 1 else 1e-10
    _assert_same(fit_ar_block(compiled, Y, weights), fit_ar_block(numpy, np.ascontiguousarray(Y), weights), rtol=rtol)
    assert lagged_sums(compiled, Y)[1].flags.f_contiguous  # the series route taken
    assert lagged_sums(compiled, np.ascontiguousarray(Y))[1].flags.c_contiguous


@pytest.mark.parametrize("order", [2, 3])
def test_higher_orders_take_the_compiled_data_pass(rng, order):
    """AR(p > 1) blocks of a compiled design take the compiled data pass and the numpy fit: the same numbers."""
    X = _designs(150, rng)["constant"]
    Y = _voxels(rng, X, v=50)
    weights = [np.eye(4)[[0]]]
    compiled, numpy = ARBlock(factorize(X), order, compiled=True), ARBlock(factorize(X), order, compiled=False)
    _assert_same(fit_ar_block(compiled, Y, weights), fit_ar_block(numpy, Y, weights), rtol=1e-8)


def test_fit_ar_decides_once_for_every_block(rng, monkeypatch):
    """``fit_ar`` asks for the compiled kernels on large data, and otherwise takes them only when they are
    loaded already; its maps equal the numpy path's either way."""
    from voxfit.core import ar as core_ar
    from voxfit.engine import ar as engine_ar

    X = _designs(100, rng)["constant"]
    Y = _voxels(rng, X, v=500)
    seen = []
    real = core_ar.ARBlock.__init__

    def spy(self, design, order, compiled=None, **kw):
        real(self, design, order, compiled, **kw)
        seen.append(self.compiled)

    monkeypatch.setattr(core_ar.ARBlock, "__init__", spy)
    contrasts = {"a": [1, 0, 0, 0], "b": [0, 1, 0, 0]}
    monkeypatch.setattr(engine_ar, "AUTO_COMPILE_ELEMENTS", 10**12)
    monkeypatch.setattr(core_ar, "ar_kernels_loaded", lambda: False)
    plain = fit_ar(X, Y, 1, contrasts, block_size=64)
    monkeypatch.setattr(engine_ar, "AUTO_COMPILE_ELEMENTS", 1)
    fast = fit_ar(X, Y, 1, contrasts, block_size=64)
    assert seen == [False, True] and ar_kernels_loaded()
    for label in contrasts:
        npt.assert_allclose(fast.contrasts[label].z, plain.contrasts[label].z, rtol=1e-9, atol=1e-9)
    npt.assert_allclose(fast.ar, plain.ar, rtol=1e-10, atol=1e-12)
