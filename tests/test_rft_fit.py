"""Random field theory on fits (issue 18): the residuals' neighbour sums collected while a fit runs, in every
route, equal those of the kept residuals; ``--inference rft`` on ``fit`` and ``group``; SPM's results table."""

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import load
from voxfit.core import factorize
from voxfit.engine.smoothness import neighbour_positions, residual_neighbour_sums
from voxfit.engine.streaming import fit_streaming

from .imaging import AFFINE


def brute_neighbour_sums(E, mask, shape):
    """The seven inner products by a loop over the voxels and their neighbours (x-fastest flat order)."""
    nx, ny, nz = shape
    index = np.flatnonzero(mask)
    where = {int(f): k for k, f in enumerate(index)}
    out = np.full((7, index.size), np.nan)
    for k, f in enumerate(index):
        x, y, z = f % nx, (f // nx) % ny, f // (nx * ny)

        def at(dx, dy, dz):
            a, b, c = x + dx, y + dy, z + dz
            if a >= nx or b >= ny or c >= nz:
                return None
            return where.get(a + nx * (b + ny * c))

        own, px, py, pz = k, at(1, 0, 0), at(0, 1, 0), at(0, 0, 1)
        pairs = [(own, own), (own, px), (own, py), (own, pz), (px, py), (px, pz), (py, pz)]
        for j, (a, b) in enumerate(pairs):
            if a is not None and b is not None:
                out[j, k] = E[:, a] @ E[:, b]
    return out


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


def stacked(sums):
    return np.vstack([sums.ss[None], sums.cross, sums.among])


@pytest.mark.parametrize("slab_bytes", [1, 1 << 30])
def test_in_memory_neighbour_sums_equal_the_kept_residuals(rng, slab_bytes):
    data, X = smooth_run(rng)
    ds = load(nib.Nifti1Image(data.astype(np.float32), AFFINE), mask_threshold=None)
    design = factorize(X)
    Y = np.asarray(ds.data, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    shape = data.shape[:3]
    got = residual_neighbour_sums(ds.data, design.basis, ds.masker.mask, shape, dof=design.dof, slab_bytes=slab_bytes)
    npt.assert_allclose(stacked(got), brute_neighbour_sums(E, ds.masker.mask, shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("scans_per_slab", [1, 7])
def test_streamed_neighbour_sums_equal_the_kept_residuals(tmp_path, rng, order, scans_per_slab):
    data, X = smooth_run(rng)
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    res = fit_streaming(path, X, {"a": [1.0, 0, 0]}, order=order, scans_per_slab=scans_per_slab, smoothness=True)
    Y = np.asarray(load(path, mask_threshold=None).data, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]  # AR models: the OLS residuals
    want = brute_neighbour_sums(E, res.masker.mask, data.shape[:3])
    npt.assert_allclose(stacked(res.neighbour_sums), want, rtol=1e-10, atol=1e-9)


def test_neighbour_positions_off_the_grid_and_outside_the_mask():
    mask = np.ones(2 * 2 * 2, dtype=bool)
    mask[1] = False  # (1, 0, 0)
    nbr = neighbour_positions(mask, (2, 2, 2))
    assert nbr[:, 0].tolist() == [-1, 1, 3]  # +x outside the mask, +y is voxel 2 (flat 2), +z flat 4


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
    got = _neighbour_sums(model, ds.data, nf, ds.masker, None)
    Y = np.asarray(ds.data, dtype=np.float64)
    if noise == "ar1-global":
        Yw, Xw = nf.whitening @ Y, nf.fit.design.X
        E = Yw - Xw @ np.linalg.lstsq(Xw, Yw, rcond=None)[0]
    else:
        E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    want = brute_neighbour_sums(E, ds.masker.mask, data.shape[:3])
    npt.assert_allclose(stacked(got), want, rtol=1e-10, atol=1e-10)


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
