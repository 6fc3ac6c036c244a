"""Random field theory on fits (issue 18): the residuals' neighbour sums collected while a fit runs, in every
route, equal those of the kept residuals; ``--inference rft`` on ``fit`` and ``group``; SPM's results table."""

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import load
from voxfit._execution import Execution
from voxfit.core import factorize
from voxfit.engine.smoothness import neighbour_sums
from voxfit.engine.streaming import fit_streaming
from voxfit.inference.rft import NeighbourSums

from .imaging import AFFINE


def brute_neighbour_sums(E, mask3d):
    """NeighbourSums by a loop over the voxels and their clamped +x, +y, +z neighbours (x-fastest order)."""
    X, Y, Z = mask3d.shape
    flat = np.flatnonzero(mask3d.ravel(order="F"))
    where = {int(f): k for k, f in enumerate(flat)}
    rss, total, cross = np.zeros(flat.size), np.zeros(flat.size), np.zeros((flat.size, 6))
    for k, f in enumerate(flat):
        x, y, z = f % X, (f // X) % Y, f // (X * Y)
        px = where.get(min(x + 1, X - 1) + X * (y + Y * z))
        py = where.get(x + X * (min(y + 1, Y - 1) + Y * z))
        pz = where.get(x + X * (y + Y * min(z + 1, Z - 1)))
        rss[k], total[k] = E[:, k] @ E[:, k], E[:, k].sum()
        for j, (a, b) in enumerate([(k, px), (k, py), (k, pz), (px, py), (px, pz), (py, pz)]):
            if a is not None and b is not None:
                cross[k, j] = E[:, a] @ E[:, b]
    return NeighbourSums(rss, total, cross, E.shape[0])


def assert_sums_equal(got, want):
    """Equal to 1e-10 relative to the largest sum of squares (products of neighbours can be near 0)."""
    assert got.n_maps == want.n_maps
    atol = 1e-10 * np.abs(want.rss).max()
    for name in ("rss", "total", "cross"):
        npt.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-10, atol=atol, err_msg=name)


def volume(masker, shape):
    return masker.mask.reshape(shape, order="F")


def smooth_run(rng, shape=(9, 8, 7), n=40):
    """A 4-D run of spatially smooth noise about 100 (a box filter along each axis), with a design."""
    e = rng.standard_normal(shape + (n,))
    for axis in range(3):
        e = e + np.roll(e, 1, axis=axis)
    data = 100 + e
    data[0] = 0.0  # background: outside the automatic mask
    t = np.arange(n)
    X = np.column_stack([np.sin(t / 3.0), np.cos(t / 7.0), np.ones(n)])
    return data, X


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_memory_neighbour_sums_equal_the_kept_residuals(rng, n_jobs, dtype):
    data, X = smooth_run(rng)
    ds = load(nib.Nifti1Image(data.astype(dtype), AFFINE), mask_threshold=None)
    Y = np.asarray(ds.data, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    mask3d = volume(ds.masker, data.shape[:3])
    got = neighbour_sums(ds.data, factorize(X).basis, mask3d, n_jobs=n_jobs)
    want = brute_neighbour_sums(E, mask3d)
    assert_sums_equal(got, want)
    assert_sums_equal(NeighbourSums.from_residuals(E, mask3d), want)  # rft's own route agrees


def test_neighbour_sums_without_a_constant_in_the_design_and_with_holes_in_the_mask(rng):
    """No shift when the design does not span the constant; voxels next to holes and on every edge of the grid."""
    data, X = smooth_run(rng, shape=(6, 5, 4), n=30)
    X = X[:, :2]
    mask3d = rng.random(data.shape[:3]) > 0.25
    Y = data.reshape(-1, data.shape[3], order="F")[mask3d.ravel(order="F")].T.astype(np.float32)
    E = Y - X @ np.linalg.lstsq(X, Y.astype(np.float64), rcond=None)[0]
    got = neighbour_sums(Y, factorize(X).basis, mask3d)
    assert_sums_equal(got, brute_neighbour_sums(E, mask3d))


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("scans_per_slab", [1, 7])
def test_streamed_neighbour_sums_equal_the_kept_residuals(tmp_path, rng, order, scans_per_slab):
    data, X = smooth_run(rng)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    res = fit_streaming(path, X, {"a": [1.0, 0, 0]}, order=order, scans_per_slab=scans_per_slab, smoothness=True)
    Y = np.asarray(load(path, mask_threshold=None).data, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]  # AR models: the OLS residuals
    want = brute_neighbour_sums(E, volume(res.masker, data.shape[:3]))
    assert_sums_equal(res.neighbour_sums, want)


@pytest.mark.parametrize("noise", ["ols", "ar1", "ar1-global"])
def test_fit_routes_collect_the_residuals_they_state(rng, noise):
    """In memory: OLS its residuals, AR(p) the OLS residuals, ar1-global the whitened ones (W y less its fit)."""
    from voxfit.models.glm import FirstLevelModel, _neighbour_sums, fit_noise_model

    data, X = smooth_run(rng, n=60)
    data[1:] += 2.0 * X[:, 0]  # an effect of interest, for ar1-global's pooled voxels
    ds = load(nib.Nifti1Image(data.astype(np.float32), AFFINE), mask_threshold=None)
    names = ["s", "c", "one"]
    nf = fit_noise_model(X, ds.data, names, [("a", [1.0, 0, 0])], noise, kinds=("condition", "condition", "drift"))
    order = {"ols": 0, "ar1": 1, "ar1-global": -1}[noise]
    model = FirstLevelModel(X, names, (), [], factorize(X), order)
    got = _neighbour_sums(model, ds.data, nf, ds.masker, Execution())
    Y = np.asarray(ds.data, dtype=np.float64)
    if noise == "ar1-global":
        Yw, Xw = nf.whitening @ Y, nf.fit.design.X
        E = Yw - Xw @ np.linalg.lstsq(Xw, Yw, rcond=None)[0]
    else:
        E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    assert_sums_equal(got, brute_neighbour_sums(E, volume(ds.masker, data.shape[:3])))


def test_rft_options_are_checked_and_loose_cluster_thresholds_warn():
    from voxfit.exceptions import InputError
    from voxfit.inference.rft_fit import check_rft_options

    assert check_rft_options().correction == "fwe"
    with pytest.warns(UserWarning, match="Eklund"):
        check_rft_options(0.01, "none", 10)
    for bad in ({"height": 0.0}, {"height": 1.5}, {"correction": "fdr"}, {"extent": -1}):
        with pytest.raises(InputError):
            check_rft_options(**bad)


def test_rft_refuses_meshes_in_one_line():
    from voxfit.exceptions import InputError
    from voxfit.inference.rft_fit import check_volume
    from voxfit.io.geometry import ArrayGeometry

    with pytest.raises(InputError, match="is for volumes"):
        check_volume(ArrayGeometry(5))
