"""Whitened-residual diagnostics (``--diagnostics``; voxfit.core.diagnostics, voxfit.engine.diagnostics).

References independent of the code: numpy's products on the kept whitened residuals, a brute-force GLS with
the AR(1) covariance built by scipy's toeplitz, statsmodels' Ljung-Box, the binomial interval of the share of
rejections (3,000 voxels: +-0.008 around 0.05)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import linalg, stats

from voxfit.core import factorize
from voxfit.core.diagnostics import WhitenessMoments, ljung_box, whiteness_moments, whiteness_verdict
from voxfit.engine.diagnostics import WhitenessWarning, noise_whitener, residual_diagnostics, whitened_residuals
from voxfit.exceptions import InputError
from voxfit.models.glm import fit_images, fit_noise_model

N, V = 200, 3000


def design(n=N, tr=2.0):
    t = np.arange(n) * tr
    box = ((t // 20) % 2).astype(float)
    cosines = np.cos(np.pi * np.outer(np.arange(n) + 0.5, [1, 2]) / n)
    return np.column_stack([box, cosines, np.ones(n)]), ["task", "c1", "c2", "constant"]


def ar1_noise(rng, n, v, phi):
    e = rng.standard_normal((n, v))
    y = np.empty_like(e)
    y[0] = e[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + e[t]
    return y


def diagnose(Y, noise, X=None, names=None):
    if X is None:
        X, names = design(Y.shape[0])
    nf = fit_noise_model(X, Y, names, [("task", "task")], noise)
    whitener = noise_whitener(noise, nf.fit, nf.ar_coef, nf.whitening, nf.orders)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WhitenessWarning)
        d = residual_diagnostics(Y, whitener, noise)
    warned = [w for w in caught if issubclass(w.category, WhitenessWarning)]
    return d, whitener, warned


def inside(share, v=V, level=0.05):
    lo, hi = stats.binom.interval(0.95, v, level)
    return lo / v <= share <= hi / v


def test_white_noise_ols_rejections_inside_the_binomial_interval(rng):
    d, _, warned = diagnose(rng.standard_normal((N, V)), "ols")
    assert inside(d.verdict.share), d.verdict
    assert d.verdict.white and not warned
    assert abs(np.median(d.spectrum) - 1.0) < 0.05  # flat at 1 (but the bins the design's columns empty)


def test_ar1_noise_with_ols_is_not_white_and_warns(rng):
    d, _, warned = diagnose(ar1_noise(rng, N, V, 0.4), "ols")
    assert d.verdict.share > 0.5
    assert not d.verdict.white
    assert len(warned) == 1 and "not white" in str(warned[0].message)
    assert np.nanmean(d.acf[0]) > 0.3  # lag 1 of an AR(1) of 0.4, less the fit's bias
    assert d.spectrum[3:10].mean() > 1.5 > d.spectrum[-10:].mean()  # red: power at low frequencies


def test_ar1_noise_with_ar1_is_not_flagged(rng):
    d, _, warned = diagnose(ar1_noise(rng, N, V, 0.4), "ar1")
    # not above the interval: per-voxel AR fits are a little conservative (0.044 over 30,000 voxels)
    assert d.verdict.share <= stats.binom.interval(0.95, V, 0.05)[1] / V, d.verdict
    assert d.verdict.white and not warned
    assert d.lags == 11 and d.dof == 10


@pytest.mark.parametrize("noise", ["ols", "ar1", "ar3", "auto", "arma11", "ar1-global"])
def test_acf_equals_numpy_on_the_kept_whitened_residuals(noise):
    rng = np.random.default_rng(7)
    Y = ar1_noise(rng, 120, 60, 0.3)
    Y[:, 3] = np.nan  # a voxel not fitted: NaN throughout
    X, names = design(120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d, whitener, _ = diagnose(Y, noise, X, names)
    E = whitened_residuals(Y, whitener)
    assert np.isnan(E[:, 3]).all() and np.isnan(d.acf[:, 3]).all()
    for k in range(1, 5):
        ref = np.sum(E[:-k] * E[k:], axis=0) / np.sum(E * E, axis=0)
        np.testing.assert_allclose(d.acf[k - 1], ref, rtol=0, atol=1e-10)
    ok = np.isfinite(d.ljung_box_p)
    assert ok.sum() == 59


def test_whitened_residuals_match_a_brute_force_gls():
    """AR(1) per voxel: W from the Cholesky factor of the stationary covariance (scipy's toeplitz), b by least
    squares on W X: W y - W X b equals the residuals the diagnostics use."""
    rng = np.random.default_rng(3)
    n = 80
    X, names = design(n)
    Y = ar1_noise(rng, n, 5, 0.5)
    nf = fit_noise_model(X, Y, names, [("task", "task")], "ar1")
    E = whitened_residuals(Y, noise_whitener("ar1", nf.fit, nf.ar_coef))
    for v in range(5):
        phi = nf.ar_coef[0, v]
        C = linalg.toeplitz(phi ** np.arange(n)) / (1 - phi**2)
        W = np.linalg.inv(np.linalg.cholesky(C))
        b = np.linalg.lstsq(W @ X, W @ Y[:, v], rcond=None)[0]
        e = W @ Y[:, v] - W @ X @ b
        np.testing.assert_allclose(E[:, v], e, atol=1e-8 * np.abs(e).max())


def test_ljung_box_matches_statsmodels():
    from statsmodels.stats.diagnostic import acorr_ljungbox

    rng = np.random.default_rng(4)
    E = rng.standard_normal((150, 3))
    E -= E.mean(axis=0)  # statsmodels demeans; these are demeaned already
    lagged = np.stack([np.sum(E[: 150 - k] * E[k:], axis=0) for k in range(11)])
    k = np.arange(1, 11)
    var = (150 - k) / (150 * 152.0)
    Q, p = ljung_box(lagged, 10, WhitenessMoments(np.zeros(10), var, np.diag(var), 0))
    for v in range(3):
        ref = acorr_ljungbox(E[:, v], lags=[10])
        np.testing.assert_allclose(Q[v], ref["lb_stat"].iloc[0], rtol=1e-10)
        np.testing.assert_allclose(p[v], ref["lb_pvalue"].iloc[0], rtol=1e-8)


def test_whiteness_moments_match_simulated_residuals():
    """The mean and variance of OLS residuals' lag-k autocorrelation over many white series."""
    rng = np.random.default_rng(5)
    X, _ = design(100)
    Q = np.linalg.qr(X)[0]
    Y = rng.standard_normal((100, 40000))
    E = Y - Q @ (Q.T @ Y)
    moments = whiteness_moments(factorize(X), 3)
    for k in range(1, 4):
        r = np.sum(E[:-k] * E[k:], axis=0) / np.sum(E * E, axis=0)
        assert abs(r.mean() - moments.mu[k - 1]) < 4 * r.std() / np.sqrt(r.size)
        assert abs(r.var() / moments.var[k - 1] - 1) < 0.05  # (sampling: +-0.007 sd at 40,000 series)


def test_verdict_rule():
    white = whiteness_verdict(np.r_[np.full(95, 0.5), np.full(5, 0.01)])
    assert white.white and white.share == 0.05
    red = whiteness_verdict(np.r_[np.full(80, 0.5), np.full(20, 0.01)])
    assert not red.white and "binomial" in red.rule


def test_fit_images_writes_the_maps_the_spectrum_and_the_record(tmp_path, rng):
    X, names = design(100)
    Y = ar1_noise(rng, 100, 40, 0.5) + 100
    out = tmp_path / "out"
    with pytest.warns(WhitenessWarning):
        result = fit_images(Y, (X, names), ["task=task"], out_dir=out, noise="ols", diagnostics=True)
    assert result.diagnostics is not None and not result.diagnostics.verdict.white
    files = {p.name for p in out.iterdir()}
    for stat in ("acf", "ljungbox", "ljungboxp"):
        assert any(f.startswith(f"stat-{stat}_desc-whitened_statmap") for f in files), files
    spectrum = np.loadtxt(out / "desc-whitened_spectrum.tsv", skiprows=1)
    assert spectrum.shape == (51, 2)
    record = json.loads((out / "model.json").read_text())["settings"]["diagnostics"]
    assert record["white"] is False and record["warning"].startswith("the whitened residuals of --noise ols")
    assert len(record["acf_mean"]) == 4


def test_diagnostics_refused_when_streamed(tmp_path, no_reserve):
    X, names = design(60)
    Y = np.random.default_rng(0).standard_normal((60, 50)).astype(np.float32) + 10
    np.save(tmp_path / "y.npy", Y)
    with pytest.raises(InputError, match="--diagnostics .* streamed"):
        fit_images(tmp_path / "y.npy", (X, names), ["task=task"], diagnostics=True, streaming=True)


def test_diagnostics_refused_for_too_few_scans():
    X, names = design(20)
    Y = np.random.default_rng(0).standard_normal((20, 10))
    with pytest.raises(InputError, match="needs more than 20 scans; the data have 20"):
        fit_images(Y, (X, names), ["task=task"], diagnostics=True)


def test_cli_diagnostics_with_film_and_the_report(tmp_path, rng):
    """voxfit fit --diagnostics on a volume with FILM (its AR(M) whitening), then the report's section."""
    from voxfit.cli import main

    from .imaging import volume_data, write_nifti

    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, n=60))
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n10\t10\ta\n60\t10\ta\n90\t10\ta\n")
    out = tmp_path / "out"
    argv = ["fit", str(bold), "--events", str(events), "--tr", "2", "--contrast", "a=a", "-o", str(out), "--quiet"]
    assert main([*argv, "--noise", "film", "--diagnostics", "--report"]) == 0
    record = json.loads((out / "model.json").read_text())["settings"]["diagnostics"]
    assert record["residuals"].startswith("each voxel's FILM") and record["ljung_box"]["dof"] == 10
    page = (out / "report.html").read_text()
    assert "Residual whiteness (noise model film)" in page and "Ljung-Box" in page


def test_cli_diagnostics_refused_for_several_runs(tmp_path, rng, capsys):
    from voxfit.cli import main

    from .imaging import volume_data, write_nifti

    runs = [write_nifti(tmp_path / f"r{i}.nii.gz", volume_data(rng, n=30)) for i in range(2)]
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n10\t10\ta\n")
    argv = ["fit", *map(str, runs), "--events", str(events), str(events), "--tr", "2", "--contrast", "a"]
    assert main([*argv, "-o", str(tmp_path / "o"), "--diagnostics"]) == 2
    assert "--diagnostics is for one run at a time" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bids_preset_confounds_strategy_and_diagnostics(tmp_path, capsys):
    """voxfit bids --preset nilearn --confounds-strategy simple --diagnostics: the run level takes nilearn's noise
    model and convolution, the strategy's columns join the design after the node's X, the diagnostics are
    written beside each run's maps; all recorded in the run's model.json."""
    pytest.importorskip("bids")
    from voxfit.bids.synthetic import make_dataset
    from voxfit.cli import PRESETS, main

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=60)
    out = tmp_path / "out"
    argv = ["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives)]
    code = main([*argv, "--preset", "nilearn", "--confounds-strategy", "simple:motion=basic", "--diagnostics"])
    assert code == 0, capsys.readouterr().err
    assert "preset nilearn (run level): noise ar1" in capsys.readouterr().out
    records = list(out.rglob("*model.json"))
    assert len(records) == 1
    settings = json.loads(records[0].read_text())["settings"]
    assert settings["noise_model"] == PRESETS["nilearn"]["noise"]
    assert settings["preset"]["applied"]["convolution"] == "nilearn"
    assert settings["confounds"]["strategy"] == "simple" and "trans_x" in settings["confounds"]["columns"]
    columns = (records[0].parent / records[0].name.replace("model.json", "design.tsv")).read_text().split("\n")[0]
    assert "trans_x" in columns.split("\t")
    assert settings["diagnostics"]["ljung_box"]["dof"] == 10
    assert settings["bids"]["study_settings"]["confounds_strategy"] == "simple:motion=basic"
    assert any(p.name.endswith("stat-acf_desc-whitened_statmap.nii.gz") for p in out.rglob("*"))


def test_bids_bad_confounds_strategy_exits_2(tmp_path, capsys):
    pytest.importorskip("bids")
    from voxfit.bids.synthetic import make_dataset
    from voxfit.cli import main

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30)
    argv = ["bids", str(study.root), str(tmp_path / "o"), "run", "--derivatives", str(study.derivatives)]
    assert main([*argv, "--confounds-strategy", "everything"]) == 2
    assert "'everything' is not a strategy" in capsys.readouterr().err
