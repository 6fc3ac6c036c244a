"""The array-API (GPU) code path, run on the CPU through array-api-strict: the same numbers as numpy's."""

import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit
from voxfit.exceptions import InputError
from voxfit.inference import permutation_test

pytest.importorskip("array_api_strict")
pytest.importorskip("array_api_compat")


def test_fit_through_the_array_api(rng):
    n, V = 50, 3000
    X = np.column_stack([np.sin(np.arange(n) / 4), np.arange(n) / n, np.ones(n)])
    Y = (1000 + X @ rng.standard_normal((3, V)) + rng.standard_normal((n, V))).astype(np.float32)
    Y[:, 5] = X @ [1.0, 2.0, 3.0]  # an exact fit: refitted on the host
    Y[3, 9] = np.nan
    ref = fit(X, np.asarray(Y, dtype=np.float64))
    dev = fit(X, Y, device="strict")
    npt.assert_array_equal(dev.valid, ref.valid)
    ok = ref.valid
    scale = np.abs(ref.betas[:, ok]) + ref.stderr[:, ok]
    assert np.max(np.abs(dev.betas[:, ok] - ref.betas[:, ok]) / scale) < 1e-4
    npt.assert_allclose(dev.residual_variance[ok], ref.residual_variance[ok], rtol=1e-3, atol=1e-12)
    npt.assert_allclose(dev.contrast([1, 0, 0]).t[ok], ref.contrast([1, 0, 0]).t[ok], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("design", ["one-sample", "two-groups"])
def test_permutations_through_the_array_api(rng, design):
    n, V = 14, 1500
    X = np.ones((n, 1)) if design == "one-sample" else np.column_stack([np.r_[np.ones(7), np.zeros(7)], np.r_[np.zeros(7), np.ones(7)]])
    c = [1.0] if design == "one-sample" else [1.0, -1.0]
    Y = (rng.standard_normal((n, V)) + 0.5).astype(np.float32)
    cpu = permutation_test(X, Y, c, n_permutations=800, seed=5)
    dev = permutation_test(X, Y, c, n_permutations=800, seed=5, device="strict")
    npt.assert_allclose(dev.null_max, cpu.null_max, rtol=1e-4)
    assert np.abs(dev.p_fwe - cpu.p_fwe).max() <= 2 / 800  # float32 keys: a tie may fall either way
    assert np.abs(dev.p_uncorrected - cpu.p_uncorrected).max() <= 2 / 800


def test_unknown_device_is_refused():
    with pytest.raises(InputError, match="`device` must be cpu, cuda"):
        fit(np.ones((5, 1)), np.ones((5, 3)), device="tpu")
    with pytest.raises(InputError, match="`device` must be cpu, cuda"):
        permutation_test(np.ones((5, 1)), np.ones((5, 3)), [1.0], device="tpu")
