"""The array-API (GPU) code path, run on the CPU through array-api-strict: the same numbers as numpy's."""

import os
import subprocess
from pathlib import Path

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
    X = (
        np.ones((n, 1))
        if design == "one-sample"
        else np.column_stack([np.r_[np.ones(7), np.zeros(7)], np.r_[np.zeros(7), np.ones(7)]])
    )
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


def _ar_agreement(cpu, dev, labels):
    """Largest differences of two AR fits: betas in units of |beta| + stderr, the rest relative."""
    npt.assert_array_equal(dev.fit.valid, cpu.fit.valid)
    ok = cpu.fit.valid
    scale = np.abs(cpu.fit.betas[:, ok]) + cpu.fit.stderr[:, ok]
    assert np.max(np.abs(dev.fit.betas[:, ok] - cpu.fit.betas[:, ok]) / scale) < 1e-9
    npt.assert_allclose(dev.fit.residual_variance, cpu.fit.residual_variance, rtol=1e-9, atol=0)
    npt.assert_allclose(dev.ar, cpu.ar, rtol=0, atol=1e-9)
    for label in labels:
        a, b = cpu.contrasts[label], dev.contrasts[label]
        npt.assert_allclose(b.t if b.kind == "t" else b.F, a.t if a.kind == "t" else a.F, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("intercept", [True, False])
def test_ar_fit_through_the_array_api(rng, monkeypatch, order, intercept):
    """AR(p) with the sums on the device in float64 equals the CPU fit to rounding; the voxels that need their
    data (an exact fit, a near-exact fit, an AR(2) filter near a unit root) are refitted from the block on the host."""
    import voxfit.engine._ar_device as on_device
    from voxfit.engine import fit_ar

    n, V = 80, 700
    t = np.arange(n)
    X = np.column_stack(
        [((t // 10) % 2).astype(float), np.cos(np.pi * (t + 0.5) / n)] + ([np.ones(n)] if intercept else [])
    )
    E = rng.standard_normal((n, V))
    for k in range(1, n):
        E[k] += 0.4 * E[k - 1]
    Y = X @ rng.standard_normal((X.shape[1], V)) + E + (1000 if intercept else 0)
    Y[:, 5] = X @ np.arange(1.0, X.shape[1] + 1)  # exact fit
    Y[:, 6] = 1000 * Y[:, 5] + 1e-2 * rng.standard_normal(n)  # near-exact: the sums cancel 11 digits
    Y[:, 7] = 10 * np.sin(0.2 * t) + 1e-3 * rng.standard_normal(n)  # AR(2) at the stationarity limit: fragile
    Y[3, 9] = np.nan
    Y[:, 10] = np.inf
    contrasts = {"task": [1.0, 0, 0][: X.shape[1]], "both": np.eye(X.shape[1])[:2]}
    refitted, fit_ar_sums = [], on_device.fit_ar_sums

    def spy(block, sums, weights, data):
        return fit_ar_sums(block, sums, weights, lambda idx: refitted.extend(idx) or data(idx))

    cpu = fit_ar(X, Y, order, contrasts, block_size=256)
    monkeypatch.setattr(on_device, "fit_ar_sums", spy)
    dev = fit_ar(X, Y, order, contrasts, block_size=256, device="strict")
    _ar_agreement(cpu, dev, contrasts)
    assert dev.fit.n_invalid == 2 and np.isnan(dev.ar[:, [9, 10]]).all()
    assert dev.fit.residual_variance[5] == 0 and ({5, 6} if order == 1 else {5, 6, 7}) <= set(refitted)
    Y32 = Y.astype(np.float32)  # float32 data go to the device as they are, and are converted there
    _ar_agreement(fit_ar(X, Y32, order, contrasts), fit_ar(X, Y32, order, contrasts, device="strict"), contrasts)


def test_ar_command_line_through_the_array_api(tmp_path, rng, capsys):
    """``voxfit fit --noise ar1 --device``: the maps equal the CPU's; ar1-global is refused on a device."""
    import nibabel as nib

    from voxfit.cli import main
    from voxfit.engine import fit_ar

    from .imaging import volume_data, write_nifti

    n = 40
    write_nifti(tmp_path / "b.nii.gz", volume_data(rng, n))
    (tmp_path / "d.tsv").write_text("task\tconstant\n" + "".join(f"{t // 5 % 2}\t1\n" for t in range(n)))
    args = ["fit", str(tmp_path / "b.nii.gz"), "--design", str(tmp_path / "d.tsv"), "--contrast", "task", "--quiet"]
    assert main(args + ["--noise", "ar1", "-o", str(tmp_path / "cpu")]) == 0
    assert main(args + ["--noise", "ar1", "--device", "strict", "-o", str(tmp_path / "dev")]) == 0
    for name in (
        "stat-arcoef_statmap.nii.gz",
        "contrast-task_stat-t_statmap.nii.gz",
        "stat-residualvariance_statmap.nii.gz",
    ):
        cpu, dev = (np.asarray(nib.load(tmp_path / d / name).dataobj, dtype=np.float64) for d in ("cpu", "dev"))
        npt.assert_allclose(dev, cpu, rtol=1e-6, atol=1e-6)  # float32 maps
    assert main(args + ["--noise", "ar1-global", "--device", "strict", "-o", str(tmp_path / "global")]) == 2
    assert "ar1-global runs on the CPU only; drop --device" in capsys.readouterr().err
    with pytest.raises(InputError, match="either `scheduler` or `device`"):
        fit_ar(np.ones((n, 1)), np.ones((n, 3)), 1, {}, device="strict", scheduler="tcp://localhost:1")


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_passes_where_the_device_agrees_and_fails_where_it_does_not(tmp_path):
    """benchmarks/gpu_check.sh, run through array-api-strict at a hundredth of its sizes: every difference within
    its threshold, exit 0; with the device's OLS betas off by 1%, its OLS lines fail and it exits 1."""
    env = {**os.environ, "VOXFIT_DEVICE": "strict", "VOXFIT_CHECK_SCALE": "0.01"}
    agrees = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=300)
    assert agrees.returncode == 0, agrees.stdout + agrees.stderr
    assert "FAIL" not in agrees.stdout and agrees.stdout.count("  ok   ") == 6
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "import voxfit.engine.fit\n"
        "f = sys.modules['voxfit.engine.fit']\n"
        "real = f._fit_on_device\n"
        "def off(*args, **kwargs):\n"
        "    fit = real(*args, **kwargs)\n"
        "    rss = fit.residual_variance * fit.design.dof\n"
        "    return f.make_fit(fit.design, fit.betas * 1.01, rss, rss, fit.valid)\n"
        "f._fit_on_device = off\n"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    disagrees = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=300)
    assert disagrees.returncode == 1, disagrees.stdout + disagrees.stderr
    assert "FAIL OLS t" in disagrees.stdout and "FAIL OLS betas" in disagrees.stdout
    assert "the device disagrees: OLS t" in disagrees.stdout
