"""Streamed fits (one sequential read keeping per-voxel sums) equal the in-memory fits."""

import json
import re

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit, fit_ar, load
from voxfit.cli import main
from voxfit.engine.streaming import fit_streaming
from voxfit.exceptions import InputError
from voxfit.io.masking import AutoMask

from .imaging import AFFINE


def _run(tmp_path, rng, n=70, dtype=np.float32, scaled=False):
    shape = (7, 6, 5)
    e = rng.standard_normal(shape + (n,))
    for t in range(1, n):
        e[..., t] += 0.5 * e[..., t - 1]
    data = 500 + 5 * e
    data[0] = 0.0  # background
    data[1, 1, 1] = 7.0  # constant: outside the automatic mask
    data[2, 2, 2, 0] = 0.0  # zero in the first scan only: kept, fitted in the second pass
    data[3, 3, 3, 20] = np.nan  # NaN later on: outside the automatic mask
    data[4, 4, 4, 30] = -np.inf  # so is an infinity
    img = nib.Nifti1Image(data.astype(dtype), AFFINE)
    if scaled:
        img.set_data_dtype(np.int16)
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    t = np.arange(n)
    X = np.column_stack([np.sin(t / 4.0), np.cos(t / 9.0), np.ones(n)])
    return path, X


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("scans_per_slab", [1, 3, 64])
def test_streamed_fit_equals_the_in_memory_fit(tmp_path, rng, order, scans_per_slab):
    path, X = _run(tmp_path, rng)
    contrasts = {"a": [1.0, 0, 0], "ab": [[1.0, 0, 0], [0, 1.0, 0]]}
    res = fit_streaming(path, X, contrasts, order=order, scans_per_slab=scans_per_slab)
    f, stats, phi, masker, mean = res.fit, res.contrasts, res.ar_coef, res.masker, res.mean
    ds = load(path, mask_threshold=None)  # the engine's default: no intensity threshold
    npt.assert_array_equal(masker.mask, ds.masker.mask)
    Y = np.asarray(ds.data, dtype=np.float64)
    if order:
        ref = fit_ar(X, Y, order, contrasts)
        rf, rs = ref.fit, ref.contrasts
        npt.assert_allclose(phi, ref.ar, rtol=1e-9, atol=1e-12)
    else:
        rf = fit(X, Y)
        rs = {k: rf.contrast(w, name=k) for k, w in contrasts.items()}
    npt.assert_allclose(f.betas, rf.betas, rtol=1e-9, atol=1e-9)
    npt.assert_allclose(f.residual_variance, rf.residual_variance, rtol=1e-8)
    npt.assert_allclose(f.r2, rf.r2, rtol=1e-8, atol=1e-10)
    npt.assert_allclose(stats["a"].t, rs["a"].t, rtol=1e-8)
    npt.assert_allclose(stats["ab"].F, rs["ab"].F, rtol=1e-8)
    npt.assert_allclose(mean, Y.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("order", [0, 1])
def test_streamed_fit_of_data_all_zero_in_the_first_scan(tmp_path, rng, order):
    # no voxel is a candidate of the first scan: every one of the mask comes from the second pass
    path, X = _run(tmp_path, rng)
    data = np.asarray(nib.load(path).dataobj).copy()
    data[..., 0] = 0.0
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    res = fit_streaming(path, X, {"a": [1.0, 0, 0]}, order=order, scans_per_slab=4)
    f, masker, mean = res.fit, res.masker, res.mean
    ds = load(path, mask_threshold=None)  # the engine's default: no intensity threshold
    npt.assert_array_equal(masker.mask, ds.masker.mask)
    Y = np.asarray(ds.data, dtype=np.float64)
    ref = fit_ar(X, Y, order, {"a": [1.0, 0, 0]}).fit if order else fit(X, Y)
    npt.assert_allclose(f.betas, ref.betas, rtol=1e-9, atol=1e-9)
    npt.assert_allclose(mean, Y.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    "case", ["threshold", "nonzero", "no intercept", "float64", "mask with NaN", "AR blocks", "OLS blocks"]
)
def test_streamed_masks_and_fits_in_other_settings(tmp_path, rng, monkeypatch, case):
    path, X = _run(tmp_path, rng, dtype=np.float64 if case == "float64" else np.float32)
    n = X.shape[0]  # elements in the file's order (x fastest), as the masker numbers them
    Y_all = np.asarray(nib.load(path).dataobj, dtype=np.float64).reshape((-1, n), order="F").T
    kwargs, mask_file = {}, None
    if case == "threshold":
        kwargs["mask_threshold"] = 0.8
    elif case == "nonzero":
        kwargs["nonzero"] = True
        Y_all[40, 100] = 0.0  # zero in one later scan: out
        nib.save(nib.Nifti1Image(Y_all.T.reshape((7, 6, 5, n), order="F").astype(np.float32), AFFINE), path)
    elif case == "no intercept":
        X = X[:, :2]
    elif case == "mask with NaN":  # an explicit mask keeps only the voxels finite in every scan
        m = np.zeros((7, 6, 5), dtype=np.uint8)
        m[3:5, 3:5, 3:5] = 1  # holds the voxels NaN and -inf later on
        nib.save(nib.Nifti1Image(m, AFFINE), tmp_path / "mask.nii.gz")
        kwargs["mask"] = mask_file = tmp_path / "mask.nii.gz"
    elif case.endswith("blocks"):  # several blocks of voxels fitted from the sums (AR: in threads)
        monkeypatch.setattr("voxfit.engine.streaming.SUMS_BLOCK", 16)
    order = 0 if case in ("no intercept", "OLS blocks") else 1
    res = fit_streaming(
        path, X, {"a": [1.0, 0]} if X.shape[1] == 2 else {"a": [1.0, 0, 0]}, order=order, scans_per_slab=6, **kwargs
    )
    f, masker = res.fit, res.masker
    if case == "nonzero":
        keep = np.isfinite(Y_all).all(0) & (Y_all != Y_all[0]).any(0) & (Y_all != 0).all(0)
    elif case == "mask with NaN":
        keep = (np.asarray(nib.load(mask_file).dataobj).reshape(-1, order="F") > 0) & np.isfinite(Y_all).all(0)
    else:
        keep = load(path, mask_threshold=kwargs.get("mask_threshold", None)).masker.mask.reshape(-1)
    npt.assert_array_equal(masker.mask.reshape(-1), keep)
    if case == "threshold":
        assert keep.sum() < load(path, mask_threshold=None).masker.mask.sum()  # the threshold removed some
    Y = Y_all[:, keep]
    ref = fit_ar(X, Y, 1, {}).fit if order else fit(X, Y)
    npt.assert_allclose(f.betas, ref.betas, rtol=1e-9, atol=1e-9)
    npt.assert_allclose(f.residual_variance, ref.residual_variance, rtol=1e-8)


def test_streaming_keeps_room_for_the_interpreter(tmp_path, rng):
    # a cap the interpreter and libraries alone would nearly fill cannot be honoured: refused, saying what can
    # and how much of it is the interpreter's
    path, X = _run(tmp_path, rng)
    with pytest.raises(InputError, match=r"give at least 25[67]M \(256M of it for Python and its libraries\)\.$"):
        fit_streaming(path, X, {}, max_memory="200M")


def test_automask_checks_columns_only_after_whole_scans():
    auto = AutoMask(4, True)
    with pytest.raises(ValueError, match="whole scans first"):
        auto.add(np.ones((2, 2), dtype=np.float32), np.array([0, 1]))
    auto.add(np.array([[1, 0, 2, 3]], dtype=np.float32))
    auto.add(np.array([[1, 5], [np.nan, 5]], dtype=np.float32), np.array([0, 1]))
    npt.assert_array_equal(auto.candidates, [True, False, True, True])
    auto.add_squares(np.array([2, 3]), np.array([0.0, 4.0]))
    npt.assert_array_equal(auto.mask(), [False, True, False, True])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int16, np.uint8])
@pytest.mark.parametrize("layout", ["scans", "series"])
def test_automask_checks_equal_their_value_by_value_definition(rng, dtype, layout):
    """finite and varies, from the columns' minima and maxima (series) or from every value (scans), against their
    value-by-value definition: NaN, infinities, -0.0 against 0.0, the extremes of the dtype, constant columns, a
    NaN or an infinity in the first scan, and blocks with no scan, whole or by columns."""
    floats = np.dtype(dtype).kind == "f"
    info = np.finfo(dtype) if floats else np.iinfo(dtype)
    specials = [0, 1, info.max, info.min] + ([np.nan, np.inf, -np.inf, -0.0, info.tiny] if floats else [])
    n, m = 9, 400
    data = rng.choice(np.array(specials, dtype=np.float64), size=(n, m))
    data[:, : m // 4] = data[:1, : m // 4]  # constant columns, some of them NaN, infinite or -0.0 throughout
    flip = rng.random((n, m)) < 0.1
    data[flip & (data == 0)] = -0.0
    data = data.astype(dtype)
    data = np.asfortranarray(data) if layout == "series" else np.ascontiguousarray(data)
    columns = np.sort(rng.choice(m, size=m // 3, replace=False))
    auto = AutoMask(m, floats)
    auto.add(data[:1])
    auto.add(data[1:5])
    auto.add(data[5:5])
    auto.add(data[5:, columns], columns)
    auto.add(data[5:5, columns], columns)
    seen = np.ones((n, m), dtype=bool)
    seen[5:] = False
    seen[5:, columns] = True
    with np.errstate(invalid="ignore"):
        finite = (np.isfinite(data) | ~seen).all(axis=0) if floats else np.ones(m, dtype=bool)
        varies = ((data != data[0]) & seen).any(axis=0)
    npt.assert_array_equal(auto.finite, finite)
    npt.assert_array_equal(auto.varies, varies)


def test_streaming_integer_data_explicit_mask_and_exact_fits(tmp_path, rng):
    path, X = _run(tmp_path, rng, scaled=True)
    mask = np.zeros((7, 6, 5), dtype=np.uint8)
    mask[2:5, 2:5, 1:4] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    res = fit_streaming(path, X, {"a": [1.0, 0, 0]}, order=1, mask=tmp_path / "mask.nii.gz", scans_per_slab=5)
    f, masker = res.fit, res.masker
    ds = load(path, tmp_path / "mask.nii.gz")
    npt.assert_array_equal(masker.mask, ds.masker.mask)
    ref = fit_ar(X, np.asarray(ds.data, dtype=np.float64), 1, {"a": [1.0, 0, 0]})
    npt.assert_allclose(f.betas, ref.fit.betas, rtol=1e-9, atol=1e-9, equal_nan=True)
    # an exact fit (data in the design's span, large mean) goes through the second pass and is exact
    n = X.shape[0]
    exact = (X @ np.array([2.0, -1.0, 1000.0]))[None, None, None, :] * np.ones((3, 3, 3, 1))
    nib.save(nib.Nifti1Image(exact.astype(np.float64), AFFINE), tmp_path / "exact.nii.gz")
    res2 = fit_streaming(tmp_path / "exact.nii.gz", X, {"a": [1.0, 0, 0]}, order=1, scans_per_slab=7)
    f2, s2 = res2.fit, res2.contrasts
    npt.assert_allclose(f2.betas[:, 0], [2.0, -1.0, 1000.0], rtol=1e-10)
    assert f2.residual_variance[0] == 0 and np.isnan(s2["a"].t[0])
    assert n == 70


@pytest.mark.usefixtures("no_reserve")
def test_command_line_streams_above_the_memory_cap(tmp_path, rng, capsys):
    path, X = _run(tmp_path, rng)
    (tmp_path / "d.tsv").write_text("s\tc\tconstant\n" + "".join("\t".join(str(float(v)) for v in r) + "\n" for r in X))
    args = ["fit", str(path), "--design", str(tmp_path / "d.tsv"), "--contrast", "s=s", "--noise", "ar1", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "mem")]) == 0
    assert main([*args, "--max-memory", "100K", "-o", str(tmp_path / "stream")]) == 0  # 70 x 210 x 4 B > 50K
    settings = json.loads((tmp_path / "stream" / "model.json").read_text())["settings"]
    assert settings["noise_details"]["streamed"] is True
    for name in ("contrast-s_stat-t_statmap.nii.gz", "stat-arcoef_statmap.nii.gz", "stat-rsquared_statmap.nii.gz"):
        a = np.asarray(nib.load(tmp_path / "mem" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "stream" / name).dataobj)
        npt.assert_allclose(b, a, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)
    assert main([*args, "--max-memory", "2K", "-o", str(tmp_path / "tiny")]) == 2
    err = capsys.readouterr().err
    assert "cannot hold the per-voxel sums" in err
    need = re.search(r"give at least (\d+[KM])", err).group(1)  # and that much is enough
    assert main([*args, "--max-memory", need, "-o", str(tmp_path / "tiny")]) == 0
    assert main([*args, "--max-memory", "100K", "--scaling", "mean", "-o", str(tmp_path / "scaled")]) == 2
    assert "--scaling none" in capsys.readouterr().err
    with pytest.raises(InputError, match="design has 5 rows"):
        fit_streaming(path, X[:5], {}, order=0)


@pytest.mark.parametrize("slabs", [(1, 2, 4, 13, 40), (40, 40), (3, 3, 3, 3, 3, 25)])
def test_the_lagged_sums_keep_the_last_scans_in_one_buffer(slabs):
    """An AR(p) pass keeps the last p scans of each slab for the next slab's lagged products. It kept them by
    concatenating them to those held and slicing the result, which held them three times over as the slab was added
    (190 MiB beyond the cap for 460,800 voxels under FILM's AR(17): a run peaked at 762 MiB under 738M). The scans
    are now kept in one buffer; the sums are those of the whole data at once, whatever the slabs."""
    import tracemalloc

    from voxfit.engine._reading import ScanSums

    rng = np.random.default_rng(0)
    n, V, p = sum(slabs), 100_000, 8
    basis = np.linalg.qr(rng.standard_normal((n, 3)))[0]
    Y = (100 + rng.standard_normal((n, V))).astype(np.float32)
    sums = ScanSums(basis, p, V, shift=True)
    start, peaks = 0, []
    for k in slabs:
        tracemalloc.start()
        sums.add(Y[start : start + k])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        start += k
    assert max(peaks[1:]) < p * V * 8, [f"{b / 2**20:.1f} MiB" for b in peaks]  # (was at least 3 p V 8 bytes)
    shifted = Y.astype(np.float64) - Y[0].astype(np.float64)
    npt.assert_array_equal(sums.tail, shifted[-p:])
    for lag in range(p + 1):
        npt.assert_allclose(sums.s[lag], np.einsum("tv,tv->v", shifted[lag:], shifted[: n - lag]), rtol=1e-12)
