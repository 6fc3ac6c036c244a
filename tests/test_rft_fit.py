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

from .helpers import assert_smoothness_of_residuals
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("constant", [True, False])
def test_sums_observed_during_a_read_equal_the_kept_residuals(rng, monkeypatch, dtype, constant):
    """``GridProducts.observe`` as a read calls it (scan by scan into the array being filled): scans wait while
    the kernels are not loaded, then are added READ_BATCH at a time on a side thread, the rest by ``finish``;
    every voxel's values about its first scan, with or without the constant in the design (then the shift
    enters the residuals' sums: ``residual_products``), next to holes and on the grid's edges."""
    from voxfit.engine import smoothness
    from voxfit.engine._reading import READ_BATCH

    data, X = smooth_run(rng, shape=(7, 6, 5), n=45)
    if not constant:
        X = X[:, :2]
    mask3d = rng.random(data.shape[:3]) > 0.2
    Y = data.reshape(-1, data.shape[3], order="F")[mask3d.ravel(order="F")].T.astype(dtype)
    basis = factorize(X).basis
    ready = smoothness._READY
    smoothness.warm_kernels()
    monkeypatch.setattr(smoothness, "_READY", __import__("threading").Event())  # not loaded yet
    grid = smoothness.GridProducts(mask3d.shape, True, mask3d.ravel(order="F"), basis)
    out = np.zeros_like(Y)
    added = []
    add = grid.add
    monkeypatch.setattr(grid, "add", lambda values: added.append(len(values)) or add(values))
    for t in range(Y.shape[0]):
        out[t] = Y[t]
        if t == 20:
            smoothness._READY.set()  # loaded: the waiting scans go at the next call
        grid.observe(out, t + 1)
        if grid._task is not None and t in (20, 35, 36):
            grid._task.result()  # (the side thread, caught up, at points of the read)
    got = grid.finish(out)
    assert ready.is_set() and added == [READ_BATCH] * (45 // READ_BATCH) + [45 % READ_BATCH]
    E = Y.astype(np.float64) - X @ np.linalg.lstsq(X, Y.astype(np.float64), rcond=None)[0]
    assert_sums_equal(got, brute_neighbour_sums(E, mask3d))


def test_sums_of_a_read_finish_alone_when_the_kernels_never_load(rng, monkeypatch):
    """No warm-up thread: every scan waits in the array and ``finish`` adds them (loading the kernels itself)."""
    from voxfit.engine import smoothness

    data, X = smooth_run(rng, shape=(5, 4, 6), n=30)
    mask3d = np.ones(data.shape[:3], dtype=bool)
    Y = data.reshape(-1, data.shape[3], order="F").T
    monkeypatch.setattr(smoothness, "_READY", __import__("threading").Event())
    grid = smoothness.GridProducts(mask3d.shape, True, mask3d.ravel(order="F"), factorize(X).basis)
    for t in range(Y.shape[0]):
        grid.observe(Y, t + 1)
    assert grid.n_scans == 0
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    assert_sums_equal(grid.finish(Y), brute_neighbour_sums(E, mask3d))


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


def test_a_fits_smoothness_equals_that_of_its_kept_residuals(tmp_path, rng):
    """``fit_images(rft=...)``'s model.json: FWHM and resels equal estimate_smoothness(gradient_products(E))."""
    import json

    from voxfit.inference.rft import estimate_smoothness, gradient_products
    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models.glm import fit_images

    data, X = smooth_run(rng)
    img = nib.Nifti1Image(data.astype(np.float32), AFFINE)
    fit_images(img, X, {"s": [1.0, 0, 0]}, out_dir=tmp_path, mask_threshold=None, rft=check_rft_options())
    ds = load(img, mask_threshold=None)
    Y = np.asarray(ds.data, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    mask3d = volume(ds.masker, data.shape[:3])
    voxel_size = np.sqrt((AFFINE[:3, :3] ** 2).sum(axis=0))
    want = estimate_smoothness(gradient_products(E, mask3d), mask3d, voxel_size, n=X.shape[0], dof=X.shape[0] - 3)
    got = json.loads((tmp_path / "model.json").read_text())["inference"]["smoothness"]
    npt.assert_allclose(got["fwhm_voxels"], want.fwhm, rtol=1e-10)
    npt.assert_allclose(got["fwhm_mm"], want.fwhm_mm, rtol=1e-10)
    npt.assert_allclose(got["resels"], want.resels, rtol=1e-10)
    rpv = nib.load(tmp_path / "stat-rpv_statmap.nii.gz").get_fdata().ravel(order="F")[ds.masker.mask]
    npt.assert_allclose(rpv, want.rpv.astype(np.float32), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("noise", ["ols", "ar1"])
def test_sums_gathered_while_reading_with_an_explicit_mask_equal_the_kept_residuals(tmp_path, rng, monkeypatch, noise):
    """With an explicit mask the data's neighbour sums are gathered slab by slab during the read (the .nii.gz
    run decompresses in slabs) with their projections: the same smoothness as from the residuals."""
    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models import glm

    data, X = smooth_run(rng, n=60)
    path, mask_path = tmp_path / "bold.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    mask = np.all(data > 50, axis=3)
    mask[4, 4, 3] = False  # a hole
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    seen = []

    def refuse(*args, **kwargs):  # the sums after the fit: not this route
        raise AssertionError("the neighbour sums were not gathered while reading")

    monkeypatch.setattr(glm, "_neighbour_sums", refuse)
    from voxfit.engine.smoothness import GridProducts

    add = GridProducts.add
    monkeypatch.setattr(
        GridProducts, "add", lambda self, v, candidates=None: seen.append(len(v)) or add(self, v, candidates)
    )
    out = tmp_path / "out"
    glm.fit_images(path, X, {"s": [1.0, 0, 0]}, mask=mask_path, noise=noise, out_dir=out, rft=check_rft_options())
    assert sum(seen) == X.shape[0]  # every scan, in slabs
    assert_smoothness_of_residuals(out, load(path, mask_path).data, X, mask, AFFINE)


def planted_inference(extent=0):
    """An RFTInference on a 20 x 18 x 16 grid of 3 mm voxels with a planted T map: two blobs (one with two
    peaks 12 mm apart, one with a plateau) and scattered single voxels above the height."""
    from voxfit.inference.rft import estimate_smoothness, gradient_products
    from voxfit.inference.rft_fit import ContrastRFT, RFTInference, RFTOptions

    rng = np.random.default_rng(3)
    shape = (20, 18, 16)
    mask = np.ones(shape, dtype=bool)
    mask[:2] = False
    flat = np.flatnonzero(mask.ravel(order="F"))
    e = rng.standard_normal((12,) + shape)
    for axis in (1, 2, 3):
        e = e + np.roll(e, 1, axis=axis)
    E = e.reshape(12, -1, order="F")[:, flat]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-30, -27, -24]
    sm = estimate_smoothness(gradient_products(E, mask), mask, [3.0, 3.0, 3.0], n=12, dof=10)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    t = 0.3 * rng.standard_normal(shape)
    t += 6.0 * np.exp(-((x - 6) ** 2 + (y - 6) ** 2 + (z - 6) ** 2) / 4.0)
    t += 5.0 * np.exp(-((x - 10) ** 2 + (y - 6) ** 2 + (z - 6) ** 2) / 4.0)  # 12 mm from the first peak
    t[14:17, 12:15, 10:13] = 4.5  # a plateau: every voxel a local maximum
    t[15, 2, 2] = 4.0  # a single voxel
    stat = t.ravel(order="F")[flat]
    height = 3.0
    c = ContrastRFT("T", (1.0, 10.0), stat, height, 9.0, np.full(stat.size, np.nan), 0.0, 0.0)
    options = RFTOptions(0.001, "none", extent)
    return RFTInference(sm, options, mask, np.full(3, 3.0), affine, {"c": c}, "test", "T"), shape, t


def spm_maxima(t, mask, height, affine, extent):
    """SPM's listing by brute force: 18-connected clusters (scipy.ndimage), their 18-neighbour local maxima,
    clusters in order of their largest maximum, up to 3 maxima each more than 8 mm from those kept."""
    from scipy import ndimage

    above = mask & (t > height)
    s18 = ndimage.generate_binary_structure(3, 2)
    labels, n = ndimage.label(above, structure=s18)
    rows = []
    peaks = []
    for k in range(1, n + 1):
        members = np.argwhere(labels == k)
        if members.shape[0] < extent:
            continue
        maxima = []
        for v in members:
            lo, hi = np.maximum(v - 1, 0), np.minimum(v + 2, t.shape)
            box = np.argwhere(above[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]) + lo
            near = [w for w in box if np.abs(w - v).sum() <= 2]
            if all(t[tuple(v)] >= t[tuple(w)] for w in near):
                maxima.append(v)
        maxima.sort(key=lambda v: (-t[tuple(v)], v[0] + t.shape[0] * (v[1] + t.shape[1] * v[2])))
        kept = []
        for v in maxima:
            mm = affine[:3, :3] @ v + affine[:3, 3]
            if len(kept) < 3 and all(np.linalg.norm(mm - m) > 8.0 for _, m in kept):
                kept.append((v, mm))
        peaks.append((t[tuple(kept[0][0])], members.shape[0], kept))
    peaks.sort(key=lambda p: -p[0])
    for _, size, kept in peaks:
        for i, (v, mm) in enumerate(kept):
            rows.append((size if i == 0 else None, float(t[tuple(v)]), tuple(np.round(mm, 1))))
    return rows, n


@pytest.mark.parametrize("extent", [0, 5])
def test_results_table_lists_spm_maxima_with_rft_p_values(extent):
    from voxfit.inference.rft import (
        cluster_fdr,
        p_cluster,
        p_peak_fwe,
        p_set,
        p_uncorrected,
        peak_fdr,
    )
    from voxfit.report.rft_table import results_table

    inference, shape, t = planted_inference(extent)
    table = results_table(inference, "c")
    want, _ = spm_maxima(t, inference.mask, 3.0, inference.affine, extent)
    got = [(r["cluster_k"], r["peak_stat"], (r["x_mm"], r["y_mm"], r["z_mm"])) for r in table.rows]
    assert [(k, round(s, 9), xyz) for k, s, xyz in got] == [(k, round(s, 9), xyz) for k, s, xyz in want]
    assert len(table.rows) >= 4  # two maxima 12 mm apart, a plateau's maxima, single voxels (extent 0)

    sm, dof, R, S = inference.smoothness, (1.0, 10.0), inference.smoothness.resels, inference.smoothness.n_voxels
    vpr = sm.voxels_per_resel
    n_clusters = table.footer["clusters"]
    assert table.rows[0]["set_p"] == pytest.approx(p_set(n_clusters, extent / vpr, 3.0, dof, "T", R), rel=1e-12)
    # FDR over all clusters and all maxima above the height (before the extent threshold)
    from scipy import ndimage

    above = inference.mask & (t > 3.0)
    labels, n = ndimage.label(above, structure=ndimage.generate_binary_structure(3, 2))
    all_sizes = np.bincount(labels.ravel())[1:]
    all_maxima = ndimage.maximum_filter(np.where(above, t, -np.inf), footprint=ndimage.generate_binary_structure(3, 2))
    heights = t[above & (t >= all_maxima)]
    cq = cluster_fdr(all_sizes / vpr, 3.0, dof, "T", R)
    pq = peak_fdr(heights, 3.0, dof, "T", R)
    for row in table.rows:
        u = row["peak_stat"]
        assert row["peak_p_fwe"] == pytest.approx(p_peak_fwe(u, dof, "T", R, n_voxels=S), rel=1e-12)
        assert row["peak_p_unc"] == pytest.approx(float(p_uncorrected(u, dof, "T")), rel=1e-12)
        assert row["peak_q_fdr"] == pytest.approx(pq.q[np.argmin(np.abs(heights - u))], rel=1e-12)
        if row["cluster_k"] is not None:
            rf = p_cluster(row["cluster_k"] / vpr, 3.0, dof, "T", R)
            assert row["cluster_p_fwe"] == pytest.approx(rf.P, rel=1e-12)
            assert row["cluster_p_unc"] == pytest.approx(rf.p, rel=1e-12)
            assert row["cluster_q_fdr"] == pytest.approx(cq.q[list(all_sizes).index(row["cluster_k"])], rel=1e-12)
    rf = p_cluster(extent / vpr, 3.0, dof, "T", R)
    assert table.footer["expected_voxels_per_cluster"] == pytest.approx(rf.Ek * vpr)
    assert table.footer["expected_clusters"] == pytest.approx(rf.Ec * rf.p)
    assert table.footer["search_resels"] == pytest.approx(R[3])
    assert table.tsv().count("\n") == len(table.rows) + 1


def test_voxel_level_fwe_rate_of_rft_on_smooth_null_data_is_at_most_5_percent():
    """Smooth Gaussian null data (30 scans, FWHM 3 voxels, 24^3 voxels), a one-sample t per realisation: the
    fraction of realisations whose largest t passes the FWE 0.05 threshold of voxfit's route (neighbour sums
    -> smoothness -> spm_uc) is at most 5% (the 95% Clopper-Pearson interval's lower end below 0.05); RFT is
    conservative at this smoothness."""
    from scipy import stats

    from voxfit import fit
    from voxfit.inference.rft_fit import check_rft_options, rft_inference
    from voxfit.io.geometry import VolumeGeometry
    from voxfit.io.masking import Masker

    rng = np.random.default_rng(2024)
    shape, n, reps = (24, 24, 24), 30, 200
    masker = Masker(VolumeGeometry(shape, np.eye(4)), np.ones(int(np.prod(shape)), dtype=bool))
    X = np.ones((n, 1))
    basis = factorize(X).basis
    options = check_rft_options()
    hits, fwhm = 0, []
    for _ in range(reps):
        Y = _smooth_null(rng, n, shape)
        f = fit(X, Y)
        sums = neighbour_sums(Y, basis, np.ones(shape, dtype=bool))
        inf = rft_inference({"m": f.contrast([1.0])}, masker, sums, options, n=n, dof=n - 1, residuals="OLS")
        c = inf.contrasts["m"]
        hits += bool(np.nanmax(c.stat) > c.height)
        fwhm.append(inf.smoothness.fwhm.mean())
    assert 2.5 < np.mean(fwhm) < 4.0  # the estimate is near the smoothing applied
    low = stats.beta.ppf(0.025, hits, reps - hits + 1) if hits else 0.0
    assert low <= 0.05, f"{hits} of {reps} realisations passed the FWE 0.05 threshold"


def _smooth_null(rng, n: int, shape) -> np.ndarray:
    """`n` scans of smooth Gaussian noise on `shape` (FWHM 3 voxels, periodic), (n, V) float32, x fastest."""
    from scipy import ndimage

    sigma = 3.0 / np.sqrt(8 * np.log(2))
    e = ndimage.gaussian_filter(rng.standard_normal((n,) + tuple(shape)), (0, sigma, sigma, sigma), mode="wrap")
    return np.ascontiguousarray(e.transpose(0, 3, 2, 1).reshape(n, -1), dtype=np.float32)


def test_group_ols_rft_uses_the_group_models_residuals(tmp_path, rng):
    import json

    from voxfit.exceptions import InputError
    from voxfit.inference.rft import estimate_smoothness, gradient_products
    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models.second_level import SecondLevel

    data, _ = smooth_run(rng, n=14)
    img = nib.Nifti1Image(data.astype(np.float32), AFFINE)
    SecondLevel(rft=check_rft_options()).fit(img, tmp_path)
    record = json.loads((tmp_path / "model.json").read_text())["inference"]
    maps = np.asarray(data, dtype=np.float32).reshape(-1, data.shape[3], order="F").T.astype(np.float64)
    mask = (maps != 0).all(axis=0) & np.isfinite(maps).all(axis=0)
    E = maps[:, mask] - maps[:, mask].mean(axis=0)
    mask3d = mask.reshape(data.shape[:3], order="F")
    voxel_size = np.sqrt((AFFINE[:3, :3] ** 2).sum(axis=0))
    want = estimate_smoothness(gradient_products(E, mask3d), mask3d, voxel_size, n=14, dof=13)
    npt.assert_allclose(record["smoothness"]["fwhm_voxels"], want.fwhm, rtol=1e-9)
    npt.assert_allclose(record["smoothness"]["resels"], want.resels, rtol=1e-9)
    assert (tmp_path / "contrast-intercept_desc-rft_table.tsv").exists()
    with pytest.raises(InputError, match="--inference rft and --permutations"):
        SecondLevel(rft=check_rft_options(), permutations=10).fit(img, tmp_path / "b")


def test_group_mixed_rft_takes_a_t_field_of_the_median_dof(tmp_path, rng):
    """A mixed model's dof vary by voxel: each voxel's z (its exact p) mapped to the t of the contrast's median
    dof, a T field of that dof; the report thresholds the z map at the height's equivalent z."""
    import json

    from scipy import stats

    from voxfit.inference.rft import estimate_smoothness, gradient_products
    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models.second_level import SecondLevel

    data, _ = smooth_run(rng, n=10)
    effects, variances = [], []
    for i in range(10):
        folder = tmp_path / f"sub-{i:02d}"
        folder.mkdir()
        effects.append(folder / f"sub-{i:02d}_stat-effect_statmap.nii.gz")
        variances.append(folder / f"sub-{i:02d}_stat-variance_statmap.nii.gz")
        nib.save(nib.Nifti1Image(data[..., i].astype(np.float32), AFFINE), effects[-1])
        nib.save(nib.Nifti1Image(np.full(data.shape[:3], 1.0 + i / 10, dtype=np.float32), AFFINE), variances[-1])
    out = tmp_path / "out"
    SecondLevel(model="mixed", variances=variances, rft=check_rft_options()).fit(effects, out)
    record = json.loads((out / "model.json").read_text())["inference"]
    entry = record["contrasts"]["intercept"]
    assert entry["field"] == "T"
    nu = entry["dof"][1]
    assert 1 <= nu <= 9
    npt.assert_allclose(entry["height_z"], stats.norm.isf(stats.t.sf(entry["height_stat"], nu)), rtol=1e-9)
    maps = data[..., :10].astype(np.float32).reshape(-1, 10, order="F").T.astype(np.float64)
    mask = (maps != 0).all(axis=0)
    E = maps[:, mask] - maps[:, mask].mean(axis=0)
    mask3d = mask.reshape(data.shape[:3], order="F")
    voxel_size = np.sqrt((AFFINE[:3, :3] ** 2).sum(axis=0))
    want = estimate_smoothness(gradient_products(E, mask3d), mask3d, voxel_size, n=10, dof=9)
    npt.assert_allclose(record["smoothness"]["fwhm_voxels"], want.fwhm, rtol=1e-9)
    z = nib.load(out / "contrast-intercept_stat-z_statmap.nii.gz").get_fdata().ravel(order="F")[mask]
    p = nib.load(out / "contrast-intercept_stat-p_desc-rftfwe_statmap.nii.gz").get_fdata().ravel(order="F")[mask]
    from voxfit.inference.rft import p_peak_fwe

    t = stats.t.isf(stats.norm.sf(z), nu)
    npt.assert_allclose(p, p_peak_fwe(t, (1.0, nu), "T", want.resels, n_voxels=int(mask.sum())), rtol=1e-5)


@pytest.mark.parametrize("kind", ["t", "F"])
def test_a_statistic_whose_dof_vary_by_voxel_is_mapped_to_its_median_dof_keeping_each_voxels_p(kind):
    """median_dof_field: each voxel's z (its exact p) to the T or F of the median dof with the same tail: checked
    against scipy.stats' inverses where they are exact, and by scipy's forward tails (p back) in the far tail,
    where the F's isf is inf; both tails; NaN kept; beyond z = 37.5 (p below the smallest double) finite."""
    from types import SimpleNamespace

    from scipy import stats

    from voxfit.inference.rft_fit import median_dof_field

    z = np.array([-8.0, -1.5, 0.0, 0.3, 2.0, 5.0, 9.0, 20.0, 37.0, 40.0, np.nan])
    nu = np.array([5.0, 8.0, 12.0, 20.0, 40.0, 12.0, 30.0, 6.0, 12.0, 50.0, 12.0])  # (median 12)
    stats_ = SimpleNamespace(kind=kind, z=z, dof=nu if kind == "t" else (3.0, nu))
    field, dof, values = median_dof_field(stats_)
    assert field == ("T" if kind == "t" else "F") and dof == (1.0 if kind == "t" else 3.0, 12.0)
    dist = stats.t(12.0) if kind == "t" else stats.f(3.0, 12.0)
    moderate = np.abs(z) <= 5
    want = np.where(z > 0, dist.isf(stats.norm.sf(z)), dist.ppf(stats.norm.cdf(z)))
    npt.assert_allclose(values[moderate], want[moderate], rtol=1e-9)
    far = (z > 5) & (z < 30)  # (scipy's t sf is NaN at the t of p ~ 1e-300)
    npt.assert_allclose(dist.sf(values[far]), stats.norm.sf(z[far]), rtol=1e-8)
    assert np.isfinite(values[9]) and values[9] >= values[8] > values[7]
    assert np.isnan(values[-1])
    if kind == "t":
        npt.assert_allclose(dist.cdf(values[0]), stats.norm.cdf(-8.0), rtol=1e-8)  # (the lower tail, from its side)


@pytest.mark.parametrize(("nu", "d1"), [(6.25, 5.0), (1e4, 50.0), (616.0, 1.0)])
@pytest.mark.parametrize("kind", ["t", "F"])
def test_the_mapping_to_the_median_dof_holds_in_the_far_tails_where_scipys_inverse_fails(kind, nu, d1):
    """Where scipy's betaincinv fails (NaN at p ~ 1e-100 at 6.25 and 5 dof; drifting, not monotone, beyond z = 34
    at 50 and 10,000: a reviewer's finding): each value's tail against mpmath's (50 digits), from z = -30 to 37,
    and the values in the order of the z."""
    from types import SimpleNamespace

    import mpmath as mp

    from voxfit.inference.rft_fit import median_dof_field

    z = np.array([-30.0, -10.0, -3.0, 0.5, 3.0, 10.0, 21.3, 25.0, 34.0, 35.0, 35.5, 36.0, 37.0])
    stats_ = SimpleNamespace(kind=kind, z=z, dof=np.full(z.size, nu) if kind == "t" else (d1, np.full(z.size, nu)))
    _, _, values = median_dof_field(stats_)
    assert np.all(np.diff(values) >= 0) and np.all(np.diff(values[1:]) > 0)
    with mp.workdps(50):
        for zi, vi in zip(z, values):
            if vi == 0:  # (an F of 1 dof at z = -30: about 1e-396, below the smallest double)
                continue
            x = mp.mpf(float(vi))
            if kind == "t":  # P(T > |t|) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2
                tail, want = mp.betainc(nu / 2, 0.5, 0, nu / (nu + x * x), regularized=True) / 2, mp.ncdf(-abs(zi))
            elif zi > 0:
                tail, want = mp.betainc(nu / 2, d1 / 2, 0, nu / (nu + d1 * x), regularized=True), mp.ncdf(-zi)
            else:  # (the lower tail: P(F < x) = I_{d1 x / (d1 x + nu)}(d1 / 2, nu / 2))
                tail, want = mp.betainc(d1 / 2, nu / 2, 0, d1 * x / (d1 * x + nu), regularized=True), mp.ncdf(zi)
            assert abs(float(tail / want) - 1) < 1e-10, (zi, vi)


def test_values_of_a_median_dof_field_stay_where_rfts_p_is_finite():
    """At a median of 1 dof a z of 30 maps to a t near 1e196, where RFT's p was NaN (a reviewer's finding): values
    are held at 1e150, and the FWE p map stays finite."""
    from types import SimpleNamespace

    from voxfit.inference.rft import p_peak_fwe
    from voxfit.inference.rft_fit import median_dof_field

    z = np.array([-30.0, 3.0, 27.0, 30.0])
    for kind, dof in (("t", np.ones(4)), ("F", (2.0, np.full(4, 2.0)))):
        field, d, values = median_dof_field(SimpleNamespace(kind=kind, z=z, dof=dof))
        assert np.all(np.abs(values) <= 1e150) and values[-1] == 1e150
        p = p_peak_fwe(values, d[1] if field == "T" else d, field, [1.0, 10.0, 50.0, 100.0], n_voxels=1000)
        assert np.all(np.isfinite(p)) and p[-1] < 1e-100
