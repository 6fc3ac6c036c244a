"""The pooled long-lag correction of AR(p) fits (``arp+lags``, the fMRI default; voxfit.core.long_lags): its
sandwich algebra against dense matrices, its factor on noise the voxels' models fit, the statistics it rescales,
and the same correction in memory, streamed over the cap and on the command line."""

import json

import numpy as np
import numpy.testing as npt
import pytest
from scipy import linalg, stats
from scipy.signal import lfilter

from voxfit import fit_images
from voxfit.cli import main
from voxfit.core import factorize
from voxfit.core.ar import ar_whiten
from voxfit.core.contrast import t_stats
from voxfit.core.long_lags import _sandwich_ratio, corrected_stats, long_lag_count, long_lag_factors, sample_voxels
from voxfit.models.glm import fit_noise_model

from .test_film_streaming import CONTRASTS, _run


def _blocks(n=200, period=30):
    t = np.arange(n)
    return np.column_stack([np.ones(n), ((t // (period // 2)) % 2).astype(float), np.cos(np.pi * (t + 0.5) / n)])


def test_sandwich_ratio_against_dense_toeplitz_algebra(rng):
    """trace((U'U)^-1 U'PU) / q for U = Xw (Xw'Xw)^-1 w', P the Toeplitz matrix of the autocorrelations: the
    FFT convolution against scipy's dense Toeplitz matrix, per voxel, for a t and a two-row F contrast."""
    X = _blocks(120)
    phi = rng.uniform(-0.5, 0.7, (5, 2)) * [1.0, 0.3]
    Xw = np.stack([ar_whiten(np.repeat(X[:, [j]], 5, axis=1), phi) for j in range(3)], axis=2).transpose(1, 0, 2)
    G = np.linalg.inv(np.einsum("vtk,vtl->vkl", Xw, Xw))
    rho = np.r_[1.0, 0.3 * 0.8 ** np.arange(1, 11)]
    P = linalg.toeplitz(np.r_[rho, np.zeros(120 - rho.size)])
    for w in (np.array([[0, 1.0, 0]]), np.array([[0, 1.0, 0], [0, 0, 1.0]])):
        U = np.einsum("vtk,vkl,ql->vtq", Xw, G, w)
        dense = [np.trace(np.linalg.solve(u.T @ u, u.T @ P @ u)) / w.shape[0] for u in U]
        npt.assert_allclose(_sandwich_ratio(Xw, G, w, rho), dense, rtol=1e-10)
    # an F contrast's redundant rows add nothing: the trace is over its rank, not its rows
    t = _sandwich_ratio(Xw, G, np.array([[0, 1.0, 0]]), rho)
    npt.assert_allclose(_sandwich_ratio(Xw, G, np.array([[0, 1.0, 0], [0, 2.0, 0]]), rho), t, rtol=1e-10)


def test_factor_is_one_on_noise_the_voxels_models_fit(rng):
    """AR(2) noise fitted by AR(2) per voxel: nothing is left at long lags, so every factor is 1 within 3%."""
    n, V = 200, 4000
    X = _blocks(n)
    Y = lfilter([1.0], [1.0, -0.5, 0.2], rng.standard_normal((n + 100, V)), axis=0)[100:] + 50.0
    nf = fit_noise_model(X, Y, ["c", "x", "d"], [("x", "x"), ("both", "x; d")], "ar2+lags", tr=2.0)
    lags = nf.info["long_lags"]
    assert lags["lags"] == long_lag_count(n, 3, 2.0) == 32 and lags["measured_voxels"] == 2000 and lags["applied"]
    assert all(0.97 < f < 1.03 for f in lags["variance_factors"].values()), lags
    assert np.abs(lags["autocorrelation"]).max() < 0.03
    assert nf.info["model"] == "AR(2) per voxel, with a pooled long-lag correction"
    assert nf.info["contrast_variance"].startswith("sigma^2 = whitened RSS / (n - rank - 2)")


def test_factor_is_one_on_short_runs_whose_models_fit_their_noise(rng):
    """60 scans of AR(1) noise fitted by AR(1) (the default's order there): the model fitted to each voxel's own
    residuals soaks up a little of the autocorrelation it leaves (about -1/n at lags 1 and 2), which the correction
    took for long-lag structure: factors 0.956-0.965 where 1 is right, and rates of p < 0.05 of 0.052-0.055 where
    AR(1) alone held 0.05 (a tester's finding). The mean of the factors of coefficients 0, 0.3 and 0.6 must be above
    0.975 and below 1.03 (over 15 draws 0.980-1.010; before, 0.956-0.967), and the rate of p < 0.05 over
    the 60,000 voxels of coefficients 0 and 0.3 hold 0.05 in its 95% interval (about +-0.0018: a 10% bias is
    seen). (At 0.6 AR(1) alone is 2-6% liberal on 60 scans, correction or not: its estimate's own small-sample
    bias, not this one's.)"""
    n, V, hits, factors = 60, 30000, 0, []
    X = _blocks(n, period=20)
    for coefficient in (0.0, 0.3, 0.6):
        Y = lfilter([1.0], [1.0, -coefficient], rng.standard_normal((n + 200, V)), axis=0)[200:] + 50.0
        nf = fit_noise_model(X, Y, ["c", "x", "d"], [("x", "x")], "ar1+lags", tr=2.0)
        factors.append(nf.info["long_lags"]["variance_factors"]["x"])
        hits += int(np.sum(nf.contrasts["x"].p < 0.05)) if coefficient < 0.5 else 0
    assert 0.975 < np.mean(factors) < 1.03, factors
    lo, hi = stats.binomtest(hits, 2 * V).proportion_ci(0.95)
    assert lo <= 0.05 <= hi, hits / (2 * V)


def test_corrected_statistics_divide_t_by_the_root_and_f_by_the_factor(rng):
    n, V = 150, 500
    X = _blocks(n)
    Y = rng.standard_normal((n, V))
    plain = fit_noise_model(X, Y, ["c", "x", "d"], [("x", "x"), ("F", "x; d"), ("F1", "x; c")], "ar1")
    for st in plain.contrasts.values():
        c = corrected_stats(st, 1.21)
        if st.kind == "t":
            npt.assert_allclose(c.stat, st.stat / 1.1, rtol=1e-12)
            npt.assert_allclose(c.variance, st.variance * 1.21, rtol=1e-12)
            npt.assert_allclose(c.p, stats.t.sf(c.stat, st.dof), rtol=1e-9)
        else:
            npt.assert_allclose(c.stat, st.stat / 1.21, rtol=1e-10)
            assert c.dof[0] == st.dof[0]
        npt.assert_array_equal(c.dof if st.kind == "t" else c.dof[1], st.dof if st.kind == "t" else st.dof[1])
    t = t_stats(
        "x",
        plain.contrasts["x"].weights,
        plain.contrasts["x"].effect,
        plain.contrasts["x"].variance,
        np.ones(V, bool),
        plain.contrasts["x"].dof,
    )
    npt.assert_allclose(corrected_stats(t, 1.0).z, plain.contrasts["x"].z, rtol=1e-12)


def test_sample_is_spread_over_the_valid_voxels():
    valid = np.ones(10_000, dtype=bool)
    valid[::3] = False
    at = sample_voxels(valid, 300)
    assert at.size == 2000 and valid[at].all() and at[0] == 1 and at[-1] == np.flatnonzero(valid)[-1]
    assert np.unique(at).size == at.size
    npt.assert_array_equal(sample_voxels(valid[:100], 300), np.flatnonzero(valid[:100]))
    assert sample_voxels(valid, 4000).size == (16 << 20) // (8 * 4000)  # long runs: the sample's bytes bounded


def test_nothing_measurable_leaves_the_statistics_as_they_are(rng):
    """No finite sampled voxel, residuals all exactly zero (data the design fits exactly), or fewer than 200 voxels
    with residuals to measure (a factor from them would be noisier than the bias): every factor 1, recorded."""
    design = factorize(_blocks(100))
    w = {"x": np.array([[0, 1.0, 0]])}
    out = long_lag_factors(design, np.full((100, 3), np.nan), np.zeros((1, 3)), np.zeros((3, 3)), w, 2.0)
    assert out.factors == {"x": 1.0} and out.voxels == 0
    exact = design.X @ rng.standard_normal((3, 500))
    out = long_lag_factors(design, exact, np.full((1, 500), 0.2), np.linalg.pinv(design.X) @ exact, w, 2.0)
    assert out.factors == {"x": 1.0} and out.voxels == 0 and not out.applied
    assert out.record()["why_not"] == "fewer than 200 voxels with residuals to measure"
    assert long_lag_count(100, 3, float("nan")) == long_lag_count(100, 3, None) == 24  # no usable TR: 30 lags at most
    # a mask of fewer measurable voxels than that: the statistics of plain AR(p)
    Y = np.column_stack([exact[:, :5], rng.standard_normal((100, 150))])
    plain, lags = (fit_noise_model(design.X, Y, ["c", "x", "d"], [("x", "x")], m, tr=2.0) for m in ("ar1", "ar1+lags"))
    npt.assert_array_equal(lags.contrasts["x"].stat, plain.contrasts["x"].stat)
    assert lags.info["long_lags"]["applied"] is False and lags.info["long_lags"]["measured_voxels"] == 150


@pytest.mark.usefixtures("no_reserve")
def test_streamed_and_command_line_fits_take_the_same_correction(tmp_path, rng):
    """The correction of a fit streamed over the cap (its sample read again after the pass) equals the in-memory
    fit's; on the command line it is the default with --events, recorded in model.json."""
    path, X = _run(tmp_path, rng)
    names = ["c", "x1", "drift"]
    memory = fit_images(path, (X, names), CONTRASTS, noise="ar2+lags")
    streamed = fit_images(path, (X, names), CONTRASTS, noise="ar2+lags", max_memory="300K")
    plain = fit_images(path, (X, names), CONTRASTS, noise="ar2")
    for label, stat in (("b", "t"), ("both", "F")):
        npt.assert_allclose(getattr(streamed.contrasts[label], stat), getattr(memory.contrasts[label], stat), rtol=1e-7)
        assert not np.allclose(getattr(memory.contrasts[label], stat), getattr(plain.contrasts[label], stat))
    onsets = "onset\tduration\ttrial_type\n" + "".join(f"{t}\t9\ttask\n" for t in range(9, 90, 18))
    (tmp_path / "events.tsv").write_text(onsets)
    args = ["fit", str(path), "--events", str(tmp_path / "events.tsv"), "--tr", "1", "--contrast", "t=task"]
    assert main([*args, "--quiet", "-o", str(tmp_path / "out")]) == 0
    settings = json.loads((tmp_path / "out" / "model.json").read_text())["settings"]
    assert settings["noise_model"] == "ar1+lags" and settings["noise"]["default"] is True
    details = settings["noise_details"]["long_lags"]
    assert details["lags"] == 21 and set(details["variance_factors"]) == {"t"}  # (90 scans - rank 6) // 4


def test_the_suffix_names_ar_models_only(tmp_path, rng, capsys):
    """``arp+lags`` for p = 1 .. 16, in any case; on anything else, or with a bad order, one line and exit 2."""
    from voxfit.exceptions import InputError
    from voxfit.models._routing import long_lags, noise_order

    assert [noise_order(m) for m in ("ar1+lags", "AR12+LAGS", "ar16+lags", "ar3")] == [1, 12, 16, 3]
    assert long_lags("AR4+Lags") and not long_lags("ar4")
    for bad in ("ar0+lags", "ar17+lags", "ols+lags", "film+lags", "ar+lags", "ar4+lag", "ar4+lags+lags", "+lags"):
        with pytest.raises(InputError, match="with or without"):
            noise_order(bad)
    path, X = _run(tmp_path, rng)
    (tmp_path / "d.tsv").write_text("c\tx1\tdrift\n" + "".join("\t".join(repr(float(v)) for v in r) + "\n" for r in X))
    args = ["fit", str(path), "--design", str(tmp_path / "d.tsv"), "--contrast", "t=x1", "--noise", "ar2+lag"]
    assert main([*args, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ar2+lag" in err


def test_a_column_source_sample_is_read_a_span_at_a_time(tmp_path, rng, monkeypatch):
    """On the Dask workers' route the sample comes from the file, a span of columns at a time (a read covers its
    first column to its last), never the whole file at once; the values are load's."""
    import nibabel as nib

    from voxfit import load
    from voxfit.io import ColumnSource, open_reader
    from voxfit.models.glm import _sampled_columns

    nib.save(nib.Nifti1Image(rng.standard_normal((4, 3, 2, 7)).astype(np.float32), np.eye(4)), tmp_path / "b.nii")
    source = open_reader(tmp_path / "b.nii").column_source(None)
    monkeypatch.setattr(ColumnSource, "spans", lambda self, max_bytes=0: [(0, 8), (8, 16), (16, 24)])
    assert _sampled_columns(source, np.array([], dtype=np.intp)).shape == (7, 0)  # no valid voxel: nothing to read
    widths = []
    raw = ColumnSource.raw
    monkeypatch.setattr(ColumnSource, "raw", lambda self, cols: widths.append(np.ptp(cols) + 1) or raw(self, cols))
    at = np.array([1, 5, 9, 20, 23])
    npt.assert_array_equal(
        _sampled_columns(source, at), np.asarray(load(tmp_path / "b.nii", mask_threshold=None).data)[:, at]
    )
    assert widths == [5, 1, 4]


def test_near_unit_root_noise_without_drift_terms(rng):
    """Random walks fitted without drift regressors: voxels' AR models near a unit root, whose coefficient-wise
    median need not be stationary. The correction whitens the design by a sampled voxel's own (stationary) model, so
    the fit ends with finite factors (it raised LinAlgError from that median before)."""
    n, V = 300, 400
    X = _blocks(n)[:, :2]
    Y = np.cumsum(rng.standard_normal((n, V)), axis=0) + 0.1 * rng.standard_normal((n, V))
    fit = fit_noise_model(X, Y, ["c", "x"], [("x", "x")], "ar4+lags", tr=2.0)
    assert fit.info["long_lags"]["applied"] and np.isfinite(fit.info["long_lags"]["variance_factors"]["x"])
    assert np.isfinite(fit.contrasts["x"].stat).all()


def test_the_typical_model_is_stationary_and_continuous():
    """The design is whitened for Worsley's matrix by the model of the median reflection coefficients: stationary
    where the coefficients' own median is not, and moved by rounding as little as its inputs (a choice among the
    voxels' models jumped between two equidistant ones, and serial and worker processes disagreed at 1e-5)."""
    from voxfit.core.ar import reflection_coefficients, _regular
    from voxfit.core.long_lags import _typical_model

    phi = np.array([[0.1], [0.3], [0.5], [0.7]])
    nudged = phi - np.array([[0.0], [0.0], [1e-13], [0.0]])
    assert abs(_typical_model(phi)[0] - _typical_model(nudged)[0]) < 1e-12
    # stationary AR(3) models whose coefficient-wise median is not
    models = np.array([[0.9, 0.91, -0.94], [1.67, -1.45, 0.44], [-0.25, 0.71, 0.08]])
    assert _regular(models).all() and not _regular(np.median(models, axis=0)[None])[0]
    typical = _typical_model(models)
    assert _regular(typical[None])[0]
    npt.assert_allclose(reflection_coefficients(typical[None])[0], np.median(reflection_coefficients(models), axis=0))
