"""float32 data give the float64 answer: the precision policy of voxfit.core.ols.

Policy: float32 data are processed in float32 after a per-voxel shift, with float64 sums of squares and
corrections, and voxels whose fit explains most of their variance are refitted in float64. Against a float64
fit of the same float32 numbers: betas within 2e-5 of (|beta| + se) (worst seen over 6 x 45,000 betas:
1.1e-5; median 1e-7), residual variances within 1e-5 relative, t within 1e-5 * (1 + |t|).
"""

import warnings

import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit.core import factorize

from .helpers import assert_betas_close, fmri_like


@pytest.mark.parametrize("layout", ["scans", "series"])
@pytest.mark.parametrize("mean,noise", [(1000.0, 10.0), (0.0, 1.0), (0.0, 4.0), (1e5, 3.0), (50.0, 50.0)])
def test_float32_matches_float64(rng, mean, noise, layout):
    """Data held scan by scan, and series by series (as CIFTI runs are read) through numpy's pass, which then
    shifts each series into a tile held the same way."""
    X, Y = fmri_like(rng, n=300, p=15, V=3000, mean=mean, noise=noise, dtype=np.float32)
    f32 = voxfit.fit(X, Y) if layout == "scans" else voxfit.fit(X, np.asfortranarray(Y), compiled=False)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    assert_betas_close(f32.betas, f64.betas, f64.stderr, 2e-5)
    npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-5)
    npt.assert_allclose(f32.r2, f64.r2, rtol=1e-5, atol=1e-5)
    t32, t64 = f32.contrast(np.eye(15)[3]).t, f64.contrast(np.eye(15)[3]).t
    assert np.all(np.abs(t32 - t64) <= 1e-5 * (1 + np.abs(t64)))


@pytest.mark.parametrize("mean,noise", [(1000.0, 10.0), (0.0, 1.0), (1e5, 3.0), (50.0, 50.0)])
def test_float32_matches_float64_on_long_runs(rng, mean, noise):
    """1,200 scans (an HCP run) and 25 columns: the same bounds, for the compiled pass and numpy's on data held scan
    by scan, and numpy's on series; and residual variances within 6e-7 relative in root mean square, which BLAS's
    packed products hold (3-4e-7) and its unpacked ones, adding each coordinate's 1,200 products in one float32
    chain, did not (~1e-6)."""
    X, Y = fmri_like(rng, n=1200, p=25, V=1000, mean=mean, noise=noise, dtype=np.float32)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    for f32 in (
        voxfit.fit(X, Y, compiled=True),
        voxfit.fit(X, Y, compiled=False),
        voxfit.fit(X, np.asfortranarray(Y), compiled=False),
    ):
        assert_betas_close(f32.betas, f64.betas, f64.stderr, 2e-5)
        npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-5)
        relative = f32.residual_variance / f64.residual_variance - 1
        assert np.sqrt(np.mean(relative**2)) < 6e-7, np.sqrt(np.mean(relative**2))


def test_float32_with_strong_effects_uses_the_exact_path(rng):
    """R^2 near 1: the fast sums of squares would cancel, so those voxels are refitted in float64."""
    X, Y = fmri_like(rng, n=100, p=4, V=500, mean=1000.0, noise=1e-3, dtype=np.float32)
    f32 = voxfit.fit(X, Y)
    f64 = voxfit.fit(X, Y.astype(np.float64))
    assert np.median(f64.r2) > 0.999999
    npt.assert_allclose(f32.residual_variance, f64.residual_variance, rtol=1e-9)


def test_float32_input_is_not_copied_whole(rng):
    """Working memory is bounded by max_memory, not by the size of Y (numpy allocations are traced)."""
    import tracemalloc

    X, Y = fmri_like(rng, n=200, p=5, V=20000, dtype=np.float32)  # 16 MB
    voxfit.fit(X, Y[:, :10])  # compile first
    tracemalloc.start()
    fit = voxfit.fit(X, Y, max_memory="2M")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results = fit.betas.nbytes + 3 * fit.residual_variance.nbytes + fit.valid.nbytes
    assert peak - results < 2 * 2**20 + 256 * 2**10, peak - results  # the cap, plus the factorised design


@pytest.fixture(scope="module")
def near_constant():
    """A design whose third column is the constant to 5e-9 per row (``has_intercept``, not ``exact_intercept``), AR
    noise of SD 1, and the same noise plus 1e9 times that column: every fit of the second must be the first's (its
    residuals are the same: what is added lies in the design's span), with the betas moved by 1e9. Before the
    fits kept the constant's terms, each shifted the data by its level as if the constant were exact: the residual
    variance came out 98% short, t of 0.20 as 1.02."""
    rng = np.random.default_rng(7)
    n, V = 120, 64
    X = np.column_stack([rng.standard_normal(n), rng.standard_normal(n), 1 + 5e-9 * rng.standard_normal(n)])
    noise = np.empty((n, V))
    noise[0] = rng.standard_normal(V)
    for t in range(1, n):
        noise[t] = 0.3 * noise[t - 1] + rng.standard_normal(V)
    low = noise + 100 * X[:, [2]]  # (a level for the automatic mask)
    return X, low, noise + 1e9 * X[:, [2]]


def _close_t(high, low):
    assert np.abs(high - low).max() <= 1e-5 * np.abs(low).max()


def test_a_column_near_the_constant_keeps_the_shifts_terms_in_memory(near_constant):
    X, low, high = near_constant
    design = factorize(X)
    assert design.has_intercept and not design.exact_intercept
    for compiled in (True, False):
        a, b = voxfit.fit(X, low, compiled=compiled), voxfit.fit(X, high, compiled=compiled)
        npt.assert_allclose(b.residual_variance, a.residual_variance, rtol=1e-5)
        npt.assert_allclose(b.betas[:2], a.betas[:2], atol=1e-5 * np.abs(a.betas[:2]).max())
        _close_t(b.contrast([1, 0, 0]).t, a.contrast([1, 0, 0]).t)
        assert np.all(b.r2 <= 1)
    for order in (1, 2):
        a, b = (voxfit.fit_ar(X, Y, order, {"a": [1, 0, 0]}) for Y in (low, high))
        npt.assert_allclose(b.ar, a.ar, atol=1e-6)
        _close_t(b.contrasts["a"].t, a.contrasts["a"].t)
        # R^2 is the OLS fit's, its total sum of squares taken from the data where the sums' lost their digits
        npt.assert_allclose(b.fit.r2, voxfit.fit(X, high).r2, atol=1e-6)


def test_a_column_near_the_constant_on_a_device_keeps_its_promise(near_constant):
    """The array-API path (``device="strict"``: its float32 steps on the CPU) shifts by the first scan and keeps
    the shift's terms: data about 100 +- 1 within its 1e-3 (unshifted, 1.3e-2 off: too few digits lost for a
    refit)."""
    X, Y, _ = near_constant
    betas = np.linalg.lstsq(X, Y, rcond=None)[0]
    residuals = Y - X @ betas
    variance = np.einsum("tv,tv->v", residuals, residuals) / (X.shape[0] - 3)
    npt.assert_allclose(voxfit.fit(X, Y, device="strict").residual_variance, variance, rtol=1e-3)


@pytest.mark.parametrize(
    "noise,mask",
    [
        ("ols", True),
        ("ols", False),
        ("ar1", True),
        ("ar1", False),
        ("film", True),
        ("arma11", True),
        ("ar1-global", True),
    ],
)
def test_a_column_near_the_constant_keeps_the_shifts_terms_from_files(near_constant, tmp_path, noise, mask):
    """The command line's fits from a .nii: from the sums gathered while it is read (OLS, AR(1)), by the streamed
    automatic mask (checked from sums about the first scan), FILM's, ARMA(1,1)'s and SPM's pooled AR(1) (whose
    sample covariance of the data, mean included, lost every digit: t off by 1.1)."""
    import nibabel as nib

    from voxfit.cli import main

    X, low, high = near_constant
    np.savetxt(tmp_path / "design.tsv", X, delimiter="\t", header="A\tB\tC", comments="")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "mask.nii")
    t, r2 = [], []
    for name, Y in (("low", low), ("high", high)) + ((("ols", high),) if noise != "ols" else ()):
        nib.save(nib.Nifti1Image(Y.T.reshape(4, 4, 4, -1), np.eye(4)), tmp_path / f"{name}.nii")
        out = tmp_path / f"out-{name}"
        argv = [str(tmp_path / f"{name}.nii"), "--design", str(tmp_path / "design.tsv"), "--contrast", "a=A"]
        argv += ["--noise", "ols" if name == "ols" else noise, "--out", str(out)]
        argv += ["--mask", str(tmp_path / "mask.nii")] if mask else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the design's columns are collinear with the constant: said)
            assert main(["fit", *argv]) == 0
        t.append(np.asarray(nib.load(out / "contrast-a_stat-t_statmap.nii.gz").dataobj, dtype=np.float64))
        r2.append(np.asarray(nib.load(out / "stat-rsquared_statmap.nii.gz").dataobj, dtype=np.float64))
    _close_t(t[1], t[0])
    if noise != "ols":  # (the OLS fit's R^2: 0.999 or NaN for 0.02 where the sums' total lost its digits)
        npt.assert_allclose(r2[1], r2[2], atol=1e-6)


@pytest.mark.parametrize("route", ["memory", "mask", "streamed"])
def test_rft_smoothness_of_a_near_constant_design_is_its_noises(tmp_path, route):
    """RFT's residual smoothness for the near-constant design: the same noise, smooth in space, at 100 and at 1e6
    (1e9 for the routes that shift by each voxel's first scan and keep the shift's terms: in memory, and the sums
    read beside a masked run) gives the same FWHM. The streamed route sums such data unshifted (as its fit does),
    to 1e-3 at 1e6. Before, the in-memory sums dropped the shift's terms (FWHM 5x off at 1e9), and a streamed
    route that shifted while its fit did not put every FWHM at 1 voxel."""
    import json

    import nibabel as nib
    import pandas as pd
    from scipy.ndimage import gaussian_filter

    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models.glm import fit_images

    rng = np.random.default_rng(11)
    n, shape = 120, (8, 8, 8)
    noise = np.stack([gaussian_filter(s, 1.5) for s in rng.standard_normal((n, *shape))])
    design = pd.DataFrame(
        {"A": rng.standard_normal(n), "B": rng.standard_normal(n), "C": 1 + 5e-9 * rng.standard_normal(n)}
    )
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), tmp_path / "mask.nii")
    options = {"mask": str(tmp_path / "mask.nii")} if route == "mask" else {"mask_threshold": 0}
    options |= {"streaming": True} if route == "streamed" else {}
    high = 1e6 if route == "streamed" else 1e9

    def fwhm(level):
        data = noise / noise.std() + level * design["C"].to_numpy()[:, None, None, None]
        nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1), np.eye(4)), tmp_path / "run.nii")
        out = tmp_path / f"out-{level:g}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_images(str(tmp_path / "run.nii"), design, {"a": "A"}, out_dir=out, rft=check_rft_options(), **options)
        return np.array(json.loads((out / "model.json").read_text())["inference"]["smoothness"]["fwhm_voxels"])

    low = fwhm(100.0)
    assert np.all(low > 2)
    npt.assert_allclose(fwhm(high), low, rtol=1e-3 if route == "streamed" else 1e-5)


@pytest.mark.parametrize("scale", [(1.0, 3e7), (1e38, 0.0)])
@pytest.mark.parametrize("route", ["4-D", "3-D scans", "streamed"])
def test_int16_scans_with_a_large_intercept_are_fitted_as_their_values(tmp_path, route, scale, no_reserve):
    """int16 scans with scl_inter 3e7 (slope 1): float32's spacing there is 2, twice the data's step, so a
    voxel's noise of a few units was read as rounding (t off by up to 29%); with scl_slope 1e38 every value
    overflowed float32 (exit 2: "the automatic mask is empty"). Such values are read in float64: the t map of the
    scaled file is the t map of its values written as float64, through each way a run is read (a 4-D .nii in
    memory, one 3-D file per scan, and an AR(1) fit streamed under --max-memory)."""
    import json

    import nibabel as nib

    from voxfit.cli import main

    rng = np.random.default_rng(5)
    n, shape = 70, (8, 8, 8)
    X = np.column_stack([np.sin(np.arange(n) / 3.0), np.ones(n)])
    raw = np.round(rng.normal(0, 3, (*shape, n)) + 2.0 * X[:, 0]).astype(np.int16)
    np.savetxt(tmp_path / "design.tsv", X, delimiter="\t", header="A\tB", comments="")
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)), tmp_path / "mask.nii")
    options = ["--noise", "ar1", "--max-memory", "100K"] if route == "streamed" else ["--noise", "ols"]  # (143 KB)
    t = []
    exact = raw * scale[0] + scale[1]
    for name, values, factors in (("scaled", raw, scale), ("exact", exact, None)):
        images = [values[..., k] for k in range(n)] if route == "3-D scans" else [values]
        inputs = [str(tmp_path / f"{name}-{k:02d}.nii") for k in range(len(images))]
        for path, data in zip(inputs, images):
            img = nib.Nifti1Image(data, np.eye(4))
            if factors is not None:
                img.header.set_slope_inter(*factors)
            nib.save(img, path)
        out = tmp_path / f"out-{name}"
        argv = [*inputs, "--design", str(tmp_path / "design.tsv"), "--contrast", "a=A", "--out", str(out)]
        assert main(["fit", *argv, "--mask", str(tmp_path / "mask.nii"), *options, "--quiet"]) == 0
        t.append(np.asarray(nib.load(out / "contrast-a_stat-t_statmap.nii.gz").dataobj, dtype=np.float64))
        if route == "streamed":
            assert json.loads((out / "model.json").read_text())["settings"]["noise_details"]["streamed"] is True
    npt.assert_allclose(t[0], t[1], rtol=1e-6, atol=1e-6)
