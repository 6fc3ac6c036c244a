"""FSL FILM streamed under --max-memory (issue 19): one pass keeping per-voxel sums, FILM's autocorrelations from
them, equal to the in-memory FILM fit to rounding; peak memory under the cap, measured by the kernel."""

import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit_images, load
from voxfit._memory import parse_memory
from voxfit.cli import main
from voxfit.engine.noise_models import film_space, fit_film
from voxfit.engine.streaming import fit_streaming
from voxfit.exceptions import InputError

from .test_hostile_memory import MiB, _voxfit

SHAPE = (9, 8, 7)


def _run(tmp_path, rng, n=90):
    """A .nii.gz of AR(1) noise on a brightness varying over space, 3 mm voxels; a background, a voxel zero in
    the first scan only (no sums: read in the second pass), and one whose sums lose digits (a strong fit of
    small residuals: its residual products from its data)."""
    e = rng.standard_normal((*SHAPE, n))
    for t in range(1, n):
        e[..., t] += 0.4 * e[..., t - 1]
    t = np.arange(n)
    X = np.column_stack([np.ones(n), ((t // 9) % 2).astype(float), np.cos(np.pi * (t + 0.5) / n)])
    data = 500 + 40 * rng.standard_normal(SHAPE)[..., None] + 5 * e
    data[0] = 0.0  # background
    data[2, 2, 2, 0] = 0.0
    data[4, 4, 4] = 1000 + 400 * X[:, 1] + 0.05 * e[4, 4, 4]
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), path)
    return path, X


CONTRASTS = {"b": [0, 1.0, 0], "both": [[0, 1.0, 0], [0, 0, 1.0]]}


@pytest.mark.parametrize("scans_per_slab", [1, 7, 200])
def test_streamed_film_equals_the_in_memory_film(tmp_path, rng, scans_per_slab):
    path, X = _run(tmp_path, rng)
    res = fit_streaming(path, X, CONTRASTS, film=True, scans_per_slab=scans_per_slab)
    ds = load(path, mask_threshold=None)
    npt.assert_array_equal(res.masker.mask, ds.masker.mask)
    Y = np.asarray(ds.data, dtype=np.float64)
    ref = fit_film(X, Y, CONTRASTS, space=film_space(ds.masker, Y.mean(axis=0)))
    assert res.film == ref.info and res.film["spatial_smoothing"] == "SUSAN-like" and res.film["tukey_window"] == 9
    npt.assert_allclose(res.ar_coef, ref.parameters, rtol=1e-8, atol=1e-10)
    npt.assert_allclose(res.fit.betas, ref.fit.betas, rtol=1e-8)
    npt.assert_allclose(res.fit.residual_variance, ref.fit.residual_variance, rtol=1e-8)
    npt.assert_allclose(res.fit.r2, ref.fit.r2, rtol=1e-8, atol=1e-12)
    npt.assert_allclose(res.contrasts["b"].t, ref.contrasts["b"].t, rtol=1e-8)
    npt.assert_allclose(res.contrasts["both"].F, ref.contrasts["both"].F, rtol=1e-8)
    npt.assert_allclose(res.mean, Y.mean(axis=0), rtol=1e-12)


@pytest.mark.usefixtures("no_reserve")
def test_fit_images_and_the_command_line_stream_film_over_the_cap(tmp_path, rng, capsys):
    """FILM streamed at the smallest cap it names: its autocorrelations, made after the pass beside the sums, are
    counted (a run of 460,800 voxels peaked at 675 MiB under the 592M it had named)."""
    path, X = _run(tmp_path, rng, n=300)
    names = ["c", "x1", "drift"]
    memory = fit_images(path, (X, names), CONTRASTS, noise="film")
    with pytest.raises(InputError, match=r"the per-voxel sums of this fit \(.*\) and FILM autocorrelations; give") as e:
        fit_images(path, (X, names), CONTRASTS, noise="film", max_memory="300K")
    cap = str(e.value).split("give at least ")[1].rstrip(".")
    streamed = fit_images(path, (X, names), CONTRASTS, noise="film", max_memory=cap)  # 300 x 504 x 4 B: over half
    for label, stat in (("b", "t"), ("both", "F")):
        npt.assert_allclose(getattr(streamed.contrasts[label], stat), getattr(memory.contrasts[label], stat), rtol=1e-8)
    npt.assert_allclose(streamed.fit.betas, memory.fit.betas, rtol=1e-8)
    (tmp_path / "d.tsv").write_text("c\tx1\tdrift\n" + "".join("\t".join(repr(float(v)) for v in r) + "\n" for r in X))
    args = ["fit", str(path), "--design", str(tmp_path / "d.tsv"), "--contrast", "b=x1", "--noise", "film", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "mem")]) == 0
    assert main([*args, "--max-memory", cap, "-o", str(tmp_path / "stream")]) == 0
    record = json.loads((tmp_path / "stream" / "model.json").read_text())
    details = record["settings"]["noise_details"]
    assert details["streamed"] is True and details["model"] == "FSL FILM per voxel" and len(details["parameters"]) == 17
    assert record["contrasts"]["b"]["dof"] == 300 - 3  # (FILM's n - rank at every voxel: a number, not a summary
    # of per-voxel effective dof, which it said they were)
    for name in ("contrast-b_stat-t_statmap.nii.gz", "stat-arcoef_statmap.nii.gz", "stat-rsquared_statmap.nii.gz"):
        a = np.asarray(nib.load(tmp_path / "mem" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "stream" / name).dataobj)
        npt.assert_allclose(b, a, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=name)  # float32 maps
    # arma11 over the cap reads blocks of voxels from uncompressed files only; film on data that are not a volume
    # is refused in one line
    assert main([*args[:-2], "arma11", "--quiet", "--max-memory", "300K", "-o", str(tmp_path / "arma")]) == 2
    err = capsys.readouterr().err
    assert "with arma11 and auto (gunzip the run)" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="film smooths the autocorrelation over neighbouring voxels of a volume"):
        fit_images(np.asarray(load(path).data), (X, names), CONTRASTS, noise="film", streaming=True)


@pytest.mark.usefixtures("no_reserve")
@pytest.mark.parametrize("noise", ["arma11", "auto"])
def test_per_voxel_models_read_blocks_of_voxels_over_the_cap(tmp_path, rng, noise):
    """arma11 and auto need each voxel's whole series: over the cap, from an uncompressed file, this process reads
    blocks of voxels by columns (the automatic mask found from them too) and fits them as in memory."""
    path, X = _run(tmp_path, rng)
    img = nib.load(path)
    nii = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), nii)
    names = ["c", "x1", "drift"]
    memory = fit_images(nii, (X, names), CONTRASTS, noise=noise)
    columns = fit_images(nii, (X, names), CONTRASTS, noise=noise, max_memory="300K", out_dir=tmp_path / "o")
    npt.assert_array_equal(columns.masker.mask, memory.masker.mask)
    # ARMA(1,1)'s REML criterion is flat near its optimum: the products of blocks of other widths (the cap's blocks
    # against memory's), equal to rounding, move (a, b), the betas by up to 1.0e-6 (values near 500 and 2.5, noise
    # SD 5: VOXFIT_TEST_SEED=3, the slope's; held to a millionth of the noise's SD) and F by up to 4e-8 of itself
    # (3e-8 where F is near 0)
    exact = noise == "auto"
    npt.assert_allclose(columns.fit.betas, memory.fit.betas, rtol=1e-10, atol=1e-10 if exact else 5e-6)
    F = columns.contrasts["both"].F, memory.contrasts["both"].F
    npt.assert_allclose(*F, rtol=1e-10 if exact else 1e-6, atol=0 if exact else 1e-6, equal_nan=True)
    details = json.loads((tmp_path / "o" / "model.json").read_text())["settings"]["noise_details"]
    assert "read_by_columns" in details


def test_streamed_film_stays_under_the_cap(tmp_path):
    """A .nii.gz of 34 MB of float32 data, over half of what a 320 MiB cap leaves beside the interpreter's 256 MiB,
    streamed with FILM's AR(17) sums: the child's peak resident memory stays under the cap."""
    rng = np.random.default_rng(0)
    shape, n = (32, 32, 28), 300
    data = (100 + rng.standard_normal(shape, dtype=np.float32))[..., None] + rng.standard_normal(
        (*shape, n), dtype=np.float32
    )
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3, 3, 1])), path)
    del data
    design = tmp_path / "design.tsv"
    design.write_text("task\tintercept\n" + "".join(f"{np.sin(t / 5):.6f}\t1\n" for t in range(n)))
    out, cap = tmp_path / "out", "320M"
    argv = ["fit", str(path), "--design", str(design), "--contrast", "t=task", "--noise", "film"]
    rc, peak, err = _voxfit([*argv, "-o", str(out), "--max-memory", cap, "--quiet"], tmp_path)
    assert rc == 0, err
    details = json.loads((out / "model.json").read_text())["settings"]["noise_details"]
    assert details["streamed"] is True and details["tukey_window"] == 17
    print(f"film streamed under {cap}: peak {peak / MiB:.0f} MiB")
    assert peak <= parse_memory(cap)
