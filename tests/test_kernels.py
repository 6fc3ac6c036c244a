"""The compiled (numba) and numpy passes over the data give the same numbers; when each is chosen."""

import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit.core import _kernels
from voxfit.core.distributions import _t_to_z_table

from .helpers import assert_betas_close, fmri_like


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_compiled_and_numpy_passes_agree(rng, dtype):
    X, Y = fmri_like(rng, n=83, p=5, V=700, dtype=np.float64)
    Y = np.round(Y).astype(dtype)
    Y[:, 5] = Y[0, 5]  # a constant voxel
    if dtype != np.int16:
        Y[7, 9] = np.nan
    a = voxfit.fit(X, Y, compiled=True, block_size=250)
    b = voxfit.fit(X, Y, compiled=False, block_size=250)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert_betas_close(a.betas, b.betas, b.stderr, rtol)
    npt.assert_allclose(a.residual_variance, b.residual_variance, rtol=rtol)
    npt.assert_array_equal(a.valid, b.valid)


def test_numpy_and_compiled_t_to_z_agree(rng):
    t = np.concatenate([rng.standard_normal(1000) * 5, [0.0, np.nan, 1e5, -1e6]])
    inv_h, coef = _t_to_z_table(37.0)
    z1, z2 = np.empty_like(t), np.empty_like(t)
    n1 = _kernels.hermite_z(t, inv_h, coef, z1)
    n2 = _kernels.hermite_z_numpy(t, inv_h, coef, z2)
    assert n1 == n2 == 2
    npt.assert_allclose(z1, z2, rtol=1e-14, equal_nan=True)


def test_automatic_choice():
    assert _kernels.use_compiled(10, True) and not _kernels.use_compiled(10**12, False)
    assert _kernels.use_compiled(_kernels.AUTO_COMPILE_ELEMENTS, None)
    voxfit.core.warm_up(10)
    assert _kernels.kernels_loaded() and _kernels.use_compiled(10, None)


def test_kernels_load_in_the_background():
    from voxfit.core._ar_kernels import ar_kernels_loaded

    _kernels.compile_in_background(ar=True)
    for thread in set(_kernels._BACKGROUND.values()):
        thread.join(120)
    assert _kernels.kernels_loaded() and ar_kernels_loaded()
