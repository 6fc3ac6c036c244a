"""OLS and AR(p) from sums gathered while a run is read (``voxfit.engine.fit.ReadFit`` and ``GridFit``,
``voxfit.engine.streaming.ReadARFit``): the same fit as the data's, by the same rules, whether the scans arrive in
batches on the side thread or at the end; and the command line's use of them."""

import warnings

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from voxfit import fit, fit_images
from voxfit.core import factorize
from voxfit.cli import main
from voxfit.engine.fit import ReadFit

from .imaging import AFFINE, write_cifti_runs


def awkward_voxels(rng, X, dtype):
    """Data (n, V) about 1000 with the awkward voxels of a real run: a NaN, an infinity, a constant voxel, a
    voxel the design fits exactly (the sums' subtraction loses every digit), and in float64 values near 1e200
    (squares overflow) and near 1e-160 (squares near underflow)."""
    n = X.shape[0]
    Y = 1000 + rng.standard_normal((n, 60)) + X @ rng.standard_normal((X.shape[1], 60))
    Y[7, 1] = np.nan
    Y[3, 2] = np.inf
    Y[:, 3] = 5.0
    Y[:, 4] = X @ np.arange(1.0, X.shape[1] + 1)
    if dtype == np.float64:
        Y[:, 5] *= 1e197
        Y[:, 6] *= 1e-163
    return Y.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("steps", [5, 40, 0])
def test_sums_gathered_while_reading_fit_as_the_data_do(rng, dtype, intercept, steps):
    """Betas, residual variances, R^2 and validity from the sums equal the float64 fit of the same values to
    1e-9, with scans handed over as a read does (`steps` scans a call; 0: none until the end), with and without
    the constant in the design; the mean image is the data's."""
    n = 40
    X = rng.standard_normal((n, 3))
    if intercept:
        X = np.column_stack([X, np.ones(n)])
    Y = awkward_voxels(rng, X, dtype)
    sums = ReadFit(X)
    out = np.full_like(Y, np.nan)
    for stop in range(steps, n + 1, steps or n + 1):  # the read fills `out` and says how far it has got
        out[:stop] = Y[:stop]
        sums.observe(out, stop)
    with np.errstate(invalid="ignore", over="ignore"):
        got, want = sums.finish(Y), fit(X, Y.astype(np.float64))
    npt.assert_array_equal(got.valid, want.valid)
    assert not got.valid[[1, 2]].any() and got.valid[[0, 3, 4]].all()
    ok = want.valid
    se = np.sqrt(np.nan_to_num(want.residual_variance[ok]))  # (NaN where the RSS is not representable: 1e200)
    scale = np.abs(want.betas[:, ok]) + se
    assert np.all(np.abs(got.betas[:, ok] - want.betas[:, ok]) <= 1e-9 * scale + 1e-300)
    npt.assert_allclose(got.residual_variance[ok], want.residual_variance[ok], rtol=1e-9, atol=1e-12, equal_nan=True)
    npt.assert_allclose(got.r2[ok], want.r2[ok], rtol=1e-9, atol=1e-9, equal_nan=True)
    assert got.residual_variance[4] <= (1e-6 * np.abs(Y[:, 4]).max()) ** 2  # fitted exactly but for rounding
    assert got.residual_variance[3] == 0 or not intercept  # constant
    with np.errstate(invalid="ignore", over="ignore"):
        npt.assert_allclose(sums.mean()[ok], Y[:, ok].astype(np.float64).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("noise", ["ols", "ar1"])
def test_a_run_longer_than_its_design_is_refused_after_the_read(tmp_path, capsys, noise):
    """The sums skip scans beyond the design's rows, so the read's check refuses the run in one line (exit 2)."""
    rng = np.random.default_rng(1)
    bold, mask, design = write_run(tmp_path, rng, n=200)
    pd.DataFrame({"a": rng.standard_normal(199)}).to_csv(design, sep="\t", index=False)
    out = tmp_path / "o"
    argv = ["fit", str(bold), "--design", str(design), "--contrast", "a", "--mask", str(mask), "--noise", noise]
    code = main([*argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "200" in err and "199" in err, err
    assert not out.exists()


def write_run(folder, rng, n=30):
    data = (1000 + 5 * rng.standard_normal((7, 6, 5, n))).astype(np.float32)
    data[0, 0, 0, 4] = np.nan  # a voxel with a NaN, inside the mask
    bold, mask = folder / "bold.nii.gz", folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    inside = np.ones((7, 6, 5), dtype=np.uint8)
    inside[6] = 0
    nib.save(nib.Nifti1Image(inside, AFFINE), mask)
    return bold, mask, folder / "design.tsv"


@pytest.mark.parametrize("layout", ["4-D file", "3-D files"])
def test_fit_with_a_mask_fits_ols_while_reading(tmp_path, capsys, monkeypatch, layout):
    """voxfit fit --mask (OLS), from a 4-D .nii.gz or a folder of 3-D .nii.gz scans: the command line's read hands
    its scans to the sums and the fit is made from them, not from the data after the read; its maps equal
    voxfit.fit's on the data as read (1e-5: the fit of data held in float32 keeps float32's digits, the sums
    float64's)."""
    from voxfit.models import glm
    from voxfit.models._routing import ScanObserver

    rng = np.random.default_rng(2)
    bold, mask, design = write_run(tmp_path, rng)
    run = bold
    if layout == "3-D files":  # one file per scan, as SPM users hold a run
        run = tmp_path / "scans"
        run.mkdir()
        image = nib.load(bold)
        for t in range(image.shape[3]):
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj[..., t]), AFFINE), run / f"scan-{t:03d}.nii.gz")
    X = np.column_stack([rng.standard_normal(30), np.ones(30)])
    pd.DataFrame(X, columns=["a", "const"]).to_csv(design, sep="\t", index=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the OLS fit was made from the data after the read")

    monkeypatch.setattr(glm, "fit_engine", refuse)
    finished = []
    finish = ReadFit.finish

    def spy(self, data):
        fitted = finish(self, data)
        finished.append(self.n_scans)  # the scans in the sums, whether added during the read or at its end
        return fitted

    monkeypatch.setattr(ReadFit, "finish", spy)
    seen = []
    call = ScanObserver.__call__
    monkeypatch.setattr(ScanObserver, "__call__", lambda self, out, stop: seen.append(stop) or call(self, out, stop))
    out = tmp_path / "out"
    code = main(["fit", str(run), "--design", str(design), "--contrast", "a", "--mask", str(mask), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert finished == [30]
    assert seen and seen[-1] == 30  # the command line's read carried the observer to which the sums attach
    img = np.asarray(nib.load(bold).dataobj)
    inside = np.asarray(nib.load(mask).dataobj) > 0
    Y = img[inside].T
    want = fit(X, Y.astype(np.float64), names=["a", "const"])
    t = want.contrast("a").t
    got = np.asarray(nib.load(out / "contrast-a_stat-t_statmap.nii.gz").dataobj)[inside]
    npt.assert_allclose(got, t, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(got[0]) and np.isfinite(got[1:]).all()
    mean = np.asarray(nib.load(out / "stat-mean_statmap.nii.gz").dataobj)[inside]
    npt.assert_allclose(mean[1:], Y[:, 1:].astype(np.float64).mean(axis=0), rtol=1e-6)


def test_mean_image_is_the_datas_mean_on_any_threads(tmp_path, rng):
    """The mean image of data held in memory is their float64 mean bit for bit, on one thread or several (each a
    span of voxels): C- and F-ordered arrays of integers near zero (whose exact means of 0 stay 0) and of floats;
    end to end, a CIFTI run held as stored, OLS and AR(1), on 1 and 2 threads."""
    from voxfit.models.glm import mean_over_scans

    for values in (rng.integers(-3, 4, (64, 70001)).astype(np.int16), rng.standard_normal((64, 70001))):
        for data in (values, np.asfortranarray(values), values.astype(np.float32)[:, ::2]):
            want = data.mean(axis=0, dtype=np.float64)
            assert np.count_nonzero(want == 0) > 0 or data.dtype.kind == "f"
            for workers in (1, 2, 3):
                npt.assert_array_equal(mean_over_scans(data, workers), want)
    [run] = write_cifti_runs(tmp_path, rng, frames=(40,))
    want = nib.load(run).get_fdata().mean(axis=0).astype(np.float32)
    X = np.column_stack([np.sin(np.arange(40.0) / 3), np.ones(40)])
    for noise in ("ols", "ar1"):
        for n_jobs in (1, 2):
            out = tmp_path / f"{noise}{n_jobs}"
            fit_images(run, (X, ["task", "one"]), {"c": "task"}, out_dir=out, noise=noise, n_jobs=n_jobs)
            mean = np.asarray(nib.load(out / "stat-mean_statmap.dscalar.nii").dataobj)[0]
            inside = np.asarray(nib.load(out / "mask.dscalar.nii").dataobj)[0] > 0
            assert inside.sum() == 58  # (the constant vertex and the one with a NaN are out)
            npt.assert_array_equal(mean[inside], want[inside])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rft_sums_fit_ols_as_the_data_do(rng, dtype):
    """RFT's read-time sums of a masked run (``GridProducts``: the data about each voxel's first scan) give the
    OLS fit too (``GridFit``): equal to the float64 fit of the same values to 1e-9, by the same rules for invalid
    voxels; its neighbour sums are those ``GridProducts.finish`` gives, and the mean image is the data's."""
    from voxfit.engine.fit import GridFit
    from voxfit.engine.smoothness import GridProducts, warm_kernels

    warm_kernels()
    n, shape = 40, (6, 5, 4)
    X = np.column_stack([rng.standard_normal((n, 2)), np.ones(n)])
    mask = rng.random(shape) > 0.3
    V = int(mask.sum())
    Y = (1000 + rng.standard_normal((n, V)) + X @ rng.standard_normal((3, V))).astype(dtype)
    Y[7, 1] = np.nan
    Y[:, 3] = 5.0
    grid = GridProducts(shape, True, mask.ravel(order="F"), factorize(X).basis)
    ols = GridFit(grid, X)
    out = np.full_like(Y, np.nan)
    for stop in range(5, n + 1, 5):
        out[:stop] = Y[:stop]
        grid.observe(out, stop)
    got, want = ols.finish(Y), fit(X, Y.astype(np.float64))
    npt.assert_array_equal(got.valid, want.valid)
    ok = want.valid
    scale = np.abs(want.betas[:, ok]) + np.sqrt(want.residual_variance[ok])
    assert np.all(np.abs(got.betas[:, ok] - want.betas[:, ok]) <= 1e-9 * scale)
    npt.assert_allclose(got.residual_variance[ok], want.residual_variance[ok], rtol=1e-9, atol=1e-12)
    assert ols.neighbours is not None and ols.neighbours.rss.shape == (V,)
    npt.assert_allclose(ols.neighbours.rss[ok], want.residual_variance[ok] * want.dof, rtol=1e-9, atol=1e-9)
    npt.assert_allclose(ols.mean()[ok], Y[:, ok].astype(np.float64).mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [5, 0])
def test_ar_sums_gathered_while_reading_fit_as_the_data_do(rng, dtype, order, steps):
    """AR(p) from the lagged sums gathered as a read hands the scans over (``ReadARFit``: the streamed pass's sums,
    on the side thread) equals ``fit_ar`` of the same data to 1e-9: t and F, AR coefficients, betas, residual
    variances and validity, with the awkward voxels of a run (NaN, infinity, constant, values near 1e200)."""
    from voxfit.engine.ar import fit_ar
    from voxfit.engine.streaming import ReadARFit

    n = 60
    X = np.column_stack([np.ones(n), np.sin(np.arange(n) / 4), rng.standard_normal(n)])
    Y = awkward_voxels(rng, X, dtype)
    e = rng.standard_normal((n, 30))
    for t in range(1, n):
        e[t] += 0.5 * e[t - 1]
    Y[:, 30:] += e.astype(dtype)  # AR noise in half the voxels
    contrasts, names = {"t": "x1", "F": np.eye(3)[1:]}, ["c", "x1", "x2"]
    sums = ReadARFit(X, order, contrasts, names)
    out = np.full_like(Y, np.nan)
    for stop in range(steps, n + 1, steps or n + 1):
        out[:stop] = Y[:stop]
        sums.observe(out, stop)
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the data-range warning of the 1e200 voxel, in both)
        got, want = sums.finish(Y), fit_ar(X, Y, order, contrasts, names=names)
    npt.assert_array_equal(got.fit.valid, want.fit.valid)
    assert not got.fit.valid[[1, 2]].any() and got.fit.valid[[0, 3, 4, 10, 40]].all()
    ok = want.fit.valid.copy()
    ok[[3, 4]] = False  # constant and exactly fitted: their residuals, and so their AR estimates, are rounding
    npt.assert_allclose(got.ar[:, ok], want.ar[:, ok], rtol=1e-9, atol=1e-9)
    scale = np.abs(want.fit.betas[:, ok]) + np.sqrt(np.nan_to_num(want.fit.residual_variance[ok]))
    assert np.all(np.abs(got.fit.betas[:, ok] - want.fit.betas[:, ok]) <= 1e-9 * scale)
    for label, stat in (("t", "t"), ("F", "F")):
        npt.assert_allclose(
            getattr(got.contrasts[label], stat)[ok], getattr(want.contrasts[label], stat)[ok], rtol=1e-8, atol=1e-8
        )


def test_fit_with_a_mask_fits_ar1_while_reading(tmp_path, capsys, monkeypatch):
    """voxfit fit --mask --noise ar1 from a .nii.gz: the AR(1) fit is made from the sums the read gathered (the
    in-memory fit is refused), and its t map equals fit_ar's on the data as read."""
    from voxfit.engine.ar import fit_ar
    from voxfit.models import glm

    rng = np.random.default_rng(3)
    bold, mask, design = write_run(tmp_path, rng, n=200)  # (the sums, 96 bytes a voxel, under half the data's)
    X = np.column_stack([rng.standard_normal(200), np.ones(200)])
    pd.DataFrame(X, columns=["a", "const"]).to_csv(design, sep="\t", index=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the AR fit was made from the data after the read")

    monkeypatch.setattr(glm, "fit_ar", refuse)
    out = tmp_path / "out"
    argv = ["fit", str(bold), "--design", str(design), "--contrast", "a", "--mask", str(mask), "--noise", "ar1"]
    assert main([*argv, "-o", str(out)]) == 0, capsys.readouterr().err
    inside = np.asarray(nib.load(mask).dataobj) > 0
    Y = np.asarray(nib.load(bold).dataobj)[inside].T
    t = fit_ar(X, Y, 1, {"a": "a"}, names=["a", "const"]).contrasts["a"].t
    got = np.asarray(nib.load(out / "contrast-a_stat-t_statmap.nii.gz").dataobj)[inside]
    npt.assert_allclose(got, t, rtol=1e-5, atol=1e-5, equal_nan=True)  # (the maps are float32)


def test_sums_larger_than_half_the_data_are_not_gathered(tmp_path, capsys, monkeypatch):
    """A design with many columns for its scans (a memory plan counts the data, not the sums): 21 columns on 30
    scans would hold 192 bytes a voxel of sums against 120 of data, so the run is fitted from its data after the
    read, to the same result."""
    rng = np.random.default_rng(4)
    bold, mask, design = write_run(tmp_path, rng)
    X = np.column_stack([rng.standard_normal((30, 20)), np.ones(30)])
    names = [f"c{k}" for k in range(20)] + ["const"]
    pd.DataFrame(X, columns=names).to_csv(design, sep="\t", index=False)

    def refuse(*args, **kwargs):
        raise AssertionError("sums were gathered")

    monkeypatch.setattr(ReadFit, "finish", refuse)
    out = tmp_path / "out"
    code = main(["fit", str(bold), "--design", str(design), "--contrast", "c0", "--mask", str(mask), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    inside = np.asarray(nib.load(mask).dataobj) > 0
    Y = np.asarray(nib.load(bold).dataobj)[inside].T
    t = fit(X, Y.astype(np.float64), names=names).contrast("c0").t
    got = np.asarray(nib.load(out / "contrast-c0_stat-t_statmap.nii.gz").dataobj)[inside]
    npt.assert_allclose(got, t, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_mean_over_scans_is_the_same_for_arrays_memory_maps_and_scaled_arrays(tmp_path, rng):
    """The run's mean image: an array in memory is reduced scan by scan, anything else by blocks of voxels; the
    float64 means are the same."""
    from voxfit.io import ScaledArray
    from voxfit.models.glm import mean_over_scans

    Y = (rng.standard_normal((57, 3001)) * 10 + 1000).astype(np.float32)
    np.save(tmp_path / "y.npy", Y)
    expected = Y.astype(np.float64).mean(axis=0)
    npt.assert_allclose(mean_over_scans(Y), expected, rtol=1e-14)
    npt.assert_array_equal(mean_over_scans(np.load(tmp_path / "y.npy", mmap_mode="r")), mean_over_scans(Y))
    raw = rng.integers(-500, 500, Y.shape).astype(np.int16)  # (integers with scale factors)
    npt.assert_allclose(mean_over_scans(ScaledArray(raw, 2.0, 1.0)), 2.0 * raw.mean(axis=0) + 1.0, rtol=1e-12)


def test_the_sums_of_a_read_do_not_depend_on_when_the_side_thread_adds_them():
    """ReadSums adds the scans by batches of READ_BATCH however the read calls it (every scan, in jumps, once at
    the end): the same float64 sums bit for bit, so that a run's maps are the same from one run to the next."""
    from voxfit.core import factorize
    from voxfit.engine._reading import READ_BATCH, ReadSums

    rng = np.random.default_rng(8)
    n, V = 5 * READ_BATCH + 7, 300
    X = np.column_stack([np.ones(n), rng.standard_normal((n, 3))])
    data = (1000.0 + rng.standard_normal((n, V)) * 10.0).astype(np.float32)
    results = []
    for stops in ([], list(range(1, n + 1)), [3, 40, 41, 77, n], [n]):
        for order in (0, 2):
            sums = ReadSums(factorize(X), order)
            for stop in stops:
                sums.observe(data, stop)
                if sums._task is not None:
                    sums._task.result()
            sums.add_rest(data)
            s = sums.sums
            results.append((order, s.products.copy(), s.s.copy(), s.total.copy(), s.top.copy(), s.tail.copy()))
    for order in (0, 2):
        first, *rest = [r[1:] for r in results if r[0] == order]
        for other in rest:
            for a, b in zip(first, other):
                assert np.array_equal(a, b)


def test_a_read_starts_a_side_thread_only_when_a_batch_of_scans_waits(monkeypatch):
    """A read that hands its scans over one at a time starts a side thread for each batch of READ_BATCH scans (and
    the run's last, shorter one), not one per call that finds nothing to add."""
    from voxfit.core import factorize
    from voxfit.engine import _reading
    from voxfit.engine._reading import READ_BATCH, ReadSums

    started = []
    submit = _reading.DaemonExecutor.submit
    monkeypatch.setattr(
        _reading.DaemonExecutor, "submit", lambda self, fn, *a: started.append(1) or submit(self, fn, *a)
    )
    rng = np.random.default_rng(3)
    n = 3 * READ_BATCH + 5
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    data = rng.standard_normal((n, 50)).astype(np.float32)
    sums = ReadSums(factorize(X))
    for stop in range(1, n + 1):
        sums.observe(data, stop)
        if sums._task is not None:
            sums._task.result()
    assert len(started) == 4
    assert sums.n_scans == n  # every scan added beside the read, none left for the end


def test_the_mean_image_of_a_scaled_fit_is_the_datas(tmp_path):
    """The mean image is the data's mean as stored, whichever fit made the maps: an AR(1) fit in memory of an
    uncompressed run gives its own means (``Fit.mean``) for unscaled data only; with --scaling mean (a fit of the
    data in percent of their means, whose means are all 0) the mean image is the stored data's, as without."""
    rng = np.random.default_rng(4)
    data = (1000 + 5 * rng.standard_normal((7, 6, 5, 30))).astype(np.float32)
    data[0, 0, 0, 4] = np.nan  # inside the mask: NaN, as numpy's mean gives
    bold, mask, design = tmp_path / "bold.nii", tmp_path / "mask.nii.gz", tmp_path / "design.tsv"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    nib.save(nib.Nifti1Image(np.ones((7, 6, 5), dtype=np.uint8), AFFINE), mask)
    pd.DataFrame({"a": np.sin(np.arange(30) / 3.0), "const": 1.0}).to_csv(design, sep="\t", index=False)
    want = data.mean(axis=3, dtype=np.float64)
    for scaling in ("none", "mean"):
        out = tmp_path / scaling
        args = ["fit", str(bold), "--design", str(design), "--contrast", "a", "--mask", str(mask), "--noise", "ar1"]
        assert main([*args, "--scaling", scaling, "--quiet", "-o", str(out)]) == 0
        mean = np.asarray(nib.load(out / "stat-mean_statmap.nii.gz").dataobj)
        npt.assert_allclose(mean, want, rtol=1e-7, equal_nan=True)
        assert np.isnan(mean[0, 0, 0])
