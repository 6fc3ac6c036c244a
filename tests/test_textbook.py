"""The worked example of tests/data/seed-estimation-for-many-voxels.txt (the text that started the project), with
the numbers it prints."""

import numpy as np
import numpy.testing as npt

import voxfit

# The design: a linear trend from -1 to 1 and a constant, 12 scans.
X = np.ones((12, 2))
X[:, 0] = np.linspace(-1, 1, 12)

# The three data vectors as the tutorial prints them (two decimals), one per column.
Y = np.array(
    [
        [-0.73, 1.28, -0.76],
        [0.8, 0.29, 0.33],
        [-0.52, 1.71, -1.63],
        [-1.64, -0.18, 1.19],
        [-1.23, 0.48, 0.3],
        [-1.01, -2.79, 0.2],
        [-0.73, 1.37, -0.03],
        [-0.53, -0.94, 1.16],
        [-0.09, 0.84, 1.17],
        [0.26, -0.25, 0.38],
        [0.22, 0.36, 0.04],
        [-1.72, -0.33, 0.79],
    ]
)


def test_pseudo_inverse_matches_the_printed_one():
    fit = voxfit.fit(X, Y)
    assert fit.design.pinv.shape == (2, 12)
    printed = [
        [-0.21, -0.17, -0.13, -0.1, -0.06, -0.02, 0.02, 0.06, 0.1, 0.13, 0.17, 0.21],
        [0.08] * 12,
    ]
    npt.assert_array_equal(np.round(fit.design.pinv, 2), printed)


def test_betas_match_the_printed_ones():
    fit = voxfit.fit(X, Y)
    npt.assert_array_equal(np.round(fit.betas, 2), [[-0.01, -0.50, 0.59], [-0.58, 0.15, 0.26]])


def test_one_multiply_equals_three_separate_fits():
    together = voxfit.fit(X, Y)
    for j in range(3):
        alone = voxfit.fit(X, Y[:, j])
        npt.assert_allclose(together.betas[:, j], alone.betas[:, 0], rtol=1e-13, atol=1e-15)
        npt.assert_allclose(together.residual_variance[j], alone.residual_variance[0], rtol=1e-12)
        npt.assert_allclose(together.betas[:, j], np.linalg.pinv(X) @ Y[:, j], rtol=1e-12, atol=1e-15)


def test_rows_are_design_columns_and_columns_are_voxels():
    fit = voxfit.fit(X, Y, names=["slope", "intercept"])
    assert fit.betas.shape == (2, 3)
    assert fit.names == ("slope", "intercept")
    # first row: slopes, second row: intercepts, first column: y_0
    npt.assert_allclose(fit.betas[0], np.polyfit(X[:, 0], Y, 1)[0], rtol=1e-12)
    npt.assert_allclose(fit.betas[1], Y.mean(axis=0), rtol=1e-12)
    npt.assert_allclose(fit.betas[:, 0], np.linalg.lstsq(X, Y[:, 0], rcond=None)[0], rtol=1e-12)
