"""Results do not depend on how the voxels are split into blocks, tiles and threads."""

import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit.core import fit_block

from .helpers import assert_betas_close, fmri_like


def _assert_same(a, b, rtol):
    assert_betas_close(a.betas, b.betas, b.stderr, rtol)
    npt.assert_allclose(a.residual_variance, b.residual_variance, rtol=rtol)
    npt.assert_allclose(a.r2, b.r2, rtol=rtol, atol=rtol)  # R^2 near 0: absolute
    npt.assert_array_equal(a.valid, b.valid)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_block_size_invariance(rng, dtype, rtol):
    X, Y = fmri_like(rng, n=120, p=5, V=3001, dtype=dtype)
    Y[:, 17] = np.nan  # an invalid voxel, in some block
    reference = voxfit.fit(X, Y, block_size=3001, n_jobs=1)
    for kwargs in (
        dict(block_size=1),
        dict(block_size=7),
        dict(block_size=1000, n_jobs=2),
        dict(max_memory="64K"),
        dict(max_memory="500K", n_jobs=2),
        dict(max_memory=10**6, n_jobs=3),
        dict(),
    ):
        _assert_same(voxfit.fit(X, Y, **kwargs), reference, rtol)


def test_blocks_equal_whole(rng):
    """The core function on one block gives the same numbers as the engine on the whole."""
    X, Y = fmri_like(rng, n=60, p=4, V=200)
    whole = voxfit.fit(X, Y)
    part = fit_block(whole.design, Y[:, 50:90])
    assert_betas_close(part.betas, whole.betas[:, 50:90], whole.stderr[:, 50:90], 1e-12)
    npt.assert_allclose(part.rss / whole.dof, whole.residual_variance[50:90], rtol=1e-12)


def test_memmap_is_read_in_place(rng, tmp_path):
    X, Y = fmri_like(rng, n=50, p=3, V=2000, dtype=np.float32)
    path = tmp_path / "y.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=Y.shape)
    mm[:] = Y
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=Y.shape)
    _assert_same(voxfit.fit(X, ro, block_size=300), voxfit.fit(X, Y), 1e-6)


def test_strided_and_foreign_layouts(rng):
    """Fortran order, a transposed view, big-endian, float16 and int16 all give the float64 answer."""
    X, Y = fmri_like(rng, n=40, p=3, V=300, mean=100.0, noise=5.0)
    Yr = np.round(Y)  # exactly representable in every dtype below
    ref = voxfit.fit(X, Yr)
    for variant, rtol in (
        (np.asfortranarray(Yr), 1e-12),
        (np.ascontiguousarray(Yr.T).T, 1e-12),
        (Yr.astype(">f8"), 1e-12),
        (Yr.astype(np.int16), 1e-5),
        (Yr[:, ::2], 1e-12),
    ):
        fit = voxfit.fit(X, variant, block_size=64)
        cols = slice(None, None, 2) if variant.shape[1] != Yr.shape[1] else slice(None)
        assert_betas_close(fit.betas, ref.betas[:, cols], ref.stderr[:, cols], rtol)
        npt.assert_allclose(fit.residual_variance, ref.residual_variance[cols], rtol=rtol * 10)
    small = np.round(Y / 10)  # float16 holds integers up to 2048 exactly
    ref16 = voxfit.fit(X, small)
    assert_betas_close(voxfit.fit(X, small.astype(np.float16)).betas, ref16.betas, ref16.stderr, 1e-5)
