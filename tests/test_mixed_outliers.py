"""Outlier inference in the mixed group model (``voxfit.mixed_effects(outliers=True)``, FSL flameo's ``--io``).

References independent of the code under test: the nominal rate of a test of a true null hypothesis (exact 95%
binomial intervals), the planted truth (which subjects were shifted), and a per-voxel maximisation with
scipy.optimize, written here, of the mixture likelihood and of the restricted likelihood given the
responsibilities (dense n x n matrices, no basis, no vectorisation). Statistical tests use fixed seeds: a 95%
interval misses for 5% of seeds by design.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest
from scipy import optimize, stats

import voxfit
from voxfit import SecondLevel
from voxfit.cli import main
from voxfit.core.mixed_outliers import PRIOR_MAX, SPREAD_MIN
from voxfit.exceptions import InputError

N = 20
TAU2 = 4.0  # about the mean first-level variance (3.91)


def _null(seed: int, V: int, n: int = N, tau2: float = TAU2):
    """Effects (n, V) from N(0, s^2 + tau2) and first-level variances s^2 log-uniform over [1, 10]."""
    rng = np.random.default_rng(seed)
    S = np.exp(rng.uniform(0, np.log(10), (n, V)))
    return rng.standard_normal((n, V)) * np.sqrt(S + tau2), S, rng


def _t(fit):
    return fit.contrasts["m"].t


def _interval(count, total):
    ci = stats.binomtest(int(count), int(total)).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def test_without_outliers_the_fit_is_the_plain_mixed_fit_and_the_rate_nominal():
    """Gaussian random effects (tau2 40, where the plain mixed model holds the nominal rate: at tau2 near the
    first-level variances it is up to 8% high, tests/test_validation.py), 20 subjects, 40,000 null voxels: the
    outlier prior falls to 0 (flameo's rule,
    below 1 / (10 n)) at all but a few voxels, which keep the plain mixed fit exactly (rtol 1e-10: the same
    numbers); over all voxels the t maps agree to within 0.05 at 99% of the voxels (the voxels with an
    outlier population are those with a subject beyond about 3.5 sd: their t moves, by design). The rate of
    p < 0.05 is inside the 95% interval of 0.05 (+-0.0021 with 40,000 voxels), and no more than 0.001 from the
    plain model's."""
    Y, S, _ = _null(7, 40000, tau2=40.0)
    X = np.ones((N, 1))
    robust = voxfit.mixed_effects(X, Y, S, {"m": [1]}, outliers=True)
    plain = voxfit.mixed_effects(X, Y, S, {"m": [1]})
    none = robust.outlier_prior == 0
    assert none.mean() > 0.95, none.mean()
    assert robust.valid.all() and not robust.outcomes
    npt.assert_allclose(_t(robust)[none], _t(plain)[none], rtol=1e-10)
    npt.assert_allclose(robust.between_variance[:, none], plain.between_variance[:, none], rtol=1e-10, atol=1e-12)
    assert (robust.outlier_probability[:, none] == 0).all()
    assert np.quantile(np.abs(_t(robust) - _t(plain)), 0.99) < 0.05
    assert robust.mean_outliers < 0.05
    hits, hits_plain = (robust.contrasts["m"].p < 0.05).sum(), (plain.contrasts["m"].p < 0.05).sum()
    lo, hi = _interval(hits, Y.shape[1])
    assert lo <= 0.05 <= hi, (hits, lo, hi)
    assert abs(int(hits) - int(hits_plain)) <= 40, (hits, hits_plain)


@pytest.fixture(scope="module")
def planted():
    """20,000 voxels of 20 subjects; at each voxel each subject is an outlier with probability 0.1, its effect
    shifted down by 20 sd (20 sqrt(mean s^2 + tau2)): null data, and the same with an effect of
    0.5 sqrt(mean s^2 + tau2) on every subject."""
    Y, S, rng = _null(11, 20000)
    outlier = rng.random(Y.shape) < 0.1
    sd = np.sqrt(9 / np.log(10) + TAU2)
    Y = Y - 20 * sd * outlier
    X = np.ones((N, 1))
    fits = {}
    for kind, shift in (("null", 0.0), ("effect", 0.5 * sd)):
        for outliers in (False, True):
            fits[kind, outliers] = voxfit.mixed_effects(X, Y + shift, S, {"m": [1]}, outliers=outliers)
    return fits, outlier


def test_planted_outliers_are_found_and_the_test_keeps_its_level(planted):
    """Subjects shifted by 20 sd bias the plain model's mean (down by ~0.1 x 20 sd = 2 sd of a subject) and
    make its test lose its level and power; with outlier inference the shifted subjects have a posterior
    outlier probability above 0.5 at 99% of their voxels or more (measured 0.9998), the others below 0.5 at
    99.5% (measured 0.999), the mean is not biased (|mean beta| < 0.1 sd of a subject, plain's ~2), the rate
    of p < 0.05 on null voxels is within 15% of nominal (its 95% interval, +-0.003 here, reaches 0.0575;
    measured 0.056 with residual dof n - rank: the plain model's own rate without outliers at this tau2 is
    ~0.054, and the subjects found are still counted in the dof), and the power on the planted effect is higher
    than the plain model's by more than 0.05 beyond both 95% intervals (measured 0.69 against 0.09)."""
    fits, outlier = planted
    V = outlier.shape[1]
    sd = np.sqrt(9 / np.log(10) + TAU2)
    robust, plain = fits["null", True], fits["null", False]
    r = robust.outlier_probability
    assert (r[outlier] > 0.5).mean() > 0.99
    assert (r[~outlier] < 0.5).mean() > 0.995
    assert abs(robust.betas[0].mean()) < 0.1 * sd
    assert plain.betas[0].mean() < -1.5 * sd
    assert robust.mean_outliers == pytest.approx(r.sum(axis=0).mean())
    lo, _ = _interval((robust.contrasts["m"].p < 0.05).sum(), V)
    assert lo <= 1.15 * 0.05
    power = (fits["effect", True].contrasts["m"].p < 0.05).sum()
    power_plain = (fits["effect", False].contrasts["m"].p < 0.05).sum()
    assert _interval(power, V)[0] > _interval(power_plain, V)[1] + 0.05, (power, power_plain)


def test_a_subject_outlying_everywhere_is_found():
    """Two of 20 subjects shifted by 40 (16 sd) at every voxel: the plain model's mean is biased by 4 (its rate
    of p < 0.05 far above 0.05); with outlier inference both have an outlier probability above 0.5 at 95% of
    the voxels or more (measured 1.0), the others at none but a few, and the rate of p < 0.05 is within 15% of
    nominal (the plain model's own rate without outliers at this tau2 is ~0.054)."""
    Y, S, _ = _null(3, 20000)
    Y[:2] += 40
    X = np.ones((N, 1))
    robust = voxfit.mixed_effects(X, Y, S, {"m": [1]}, outliers=True)
    plain = voxfit.mixed_effects(X, Y, S, {"m": [1]})
    assert (robust.outlier_probability[:2] > 0.5).mean() > 0.95
    assert (robust.outlier_probability[2:] > 0.5).mean() < 0.005
    V = Y.shape[1]
    assert _interval((plain.contrasts["m"].p < 0.05).sum(), V)[0] > 0.07
    lo, hi = _interval((robust.contrasts["m"].p < 0.05).sum(), V)
    assert lo <= 1.15 * 0.05 and hi >= 0.85 * 0.05, (lo, hi)


# --------------------------------------------------------------------------- the independent reference


def _mixture_loglik(theta, X, y, s):
    p = X.shape[1]
    beta, tau2, omega, prior = theta[:p], theta[p], theta[p + 1], theta[p + 2]
    mu = X @ beta
    v_in, v_out = s + tau2, s + tau2 + omega
    dens = (1 - prior) * stats.norm.pdf(y, mu, np.sqrt(v_in)) + prior * stats.norm.pdf(y, mu, np.sqrt(v_out))
    return np.log(dens).sum()


def _responsibility(theta, X, y, s):
    p = X.shape[1]
    beta, tau2, omega, prior = theta[:p], theta[p], theta[p + 1], theta[p + 2]
    mu = X @ beta
    a = (1 - prior) * stats.norm.pdf(y, mu, np.sqrt(s + tau2))
    b = prior * stats.norm.pdf(y, mu, np.sqrt(s + tau2 + omega))
    return b / (a + b)


def _restricted(tau2, X, y, s, r, omega):
    """-1/2 [sum((1-r) log v + r log(v + omega)) + log|X'WX| + y'Py], W = diag((1-r)/v + r/(v + omega)),
    with dense matrices."""
    v_in, v_out = s + tau2, s + tau2 + omega
    W = np.diag((1 - r) / v_in + r / v_out)
    M = X.T @ W @ X
    P = W - W @ X @ np.linalg.inv(M) @ X.T @ W
    return -0.5 * (((1 - r) * np.log(v_in) + r * np.log(v_out)).sum() + np.linalg.slogdet(M)[1] + y @ P @ y)


def test_estimates_equal_a_direct_maximisation_with_scipy():
    """At voxels with a planted outlier (and a covariate in the design): at the maximum of the mixture
    log-likelihood found by scipy (L-BFGS-B over beta, tau2 >= 0, omega >= its bound 1000 (tau2_rob +
    max s^2), prior in [0, 0.25], the better of two starts: the likelihood has a local maximum without
    outliers), the prior and omega equal the returned ones and the responsibilities the returned outlier
    probabilities (atol 1e-4, omega rtol 1e-3: the ECM stops at steps of 1e-8, scipy at its own tolerance);
    then, given them, tau2 maximising the restricted likelihood (written with dense matrices, minimize_scalar)
    equals the returned between-subject variance (rtol 1e-5), and the GLS betas and covariance with those
    weights the returned ones (rtol 1e-6)."""
    rng = np.random.default_rng(5)
    n, V = 16, 6
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    S = np.exp(rng.uniform(0, np.log(10), (n, V)))
    Y = 1.0 + 0.5 * X[:, 1:2] + rng.standard_normal((n, V)) * np.sqrt(S + 2.0)
    Y[rng.integers(0, n, V), np.arange(V)] += 30.0
    fit = voxfit.mixed_effects(X, Y, S, {"m": [0, 1]}, outliers=True)
    plain = voxfit.mixed_effects(X, Y, S)
    assert (fit.outlier_prior > 0).all()
    for j in range(V):
        y, s = Y[:, j], S[:, j]
        resid = y - X @ plain.betas[:, j]
        tau2_rob = max(0.0, (1.4826 * np.median(np.abs(resid - np.median(resid)))) ** 2 - np.median(s))
        omega_min = SPREAD_MIN * (tau2_rob + s.max())
        bounds = [(None, None)] * 2 + [(0, None), (omega_min, None), (1e-12, PRIOR_MAX)]
        starts = [  # the plain fit (which may lead to the maximum without outliers), and tau2 = 0
            np.r_[plain.betas[:, j], plain.between_variance[0, j], omega_min, 0.1],
            np.r_[plain.betas[:, j], 0.0, omega_min, 0.1],
        ]
        best = min(
            (
                optimize.minimize(
                    lambda th: -_mixture_loglik(th, X, y, s),
                    start,
                    method="L-BFGS-B",
                    bounds=bounds,
                    options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000},
                )
                for start in starts
            ),
            key=lambda res: res.fun,
        )
        r = fit.outlier_probability[:, j]
        npt.assert_allclose(_responsibility(best.x, X, y, s), r, atol=1e-4)
        npt.assert_allclose(best.x[4], fit.outlier_prior[j], atol=1e-4)
        npt.assert_allclose(best.x[3], fit.outlier_variance[j], rtol=1e-3)
        scale = s.mean()
        tau2 = optimize.minimize_scalar(
            lambda t: -_restricted(t * scale, X, y, s, r, fit.outlier_variance[j]),
            bounds=(0, 100),
            method="bounded",
            options={"xatol": 1e-12},
        ).x
        npt.assert_allclose(fit.between_variance[0, j], tau2 * scale, rtol=1e-5, atol=1e-9 * scale)
        t = fit.between_variance[0, j]
        w = (1 - r) / (s + t) + r / (s + t + fit.outlier_variance[j])
        beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y))
        npt.assert_allclose(fit.betas[:, j], beta, rtol=1e-6)
        npt.assert_allclose(fit.beta_covariance[j], np.linalg.inv(X.T @ (w[:, None] * X)), rtol=1e-6)


# ------------------------------------------------------------------------------------- refusals and files


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": "fixed"}, "model='fixed' has no between-subject variance"),
        ({"model": "ols", "variances": None}, "model='ols' has no between-subject variance"),
        ({"dof": "satterthwaite"}, "takes dof='residual'"),
        ({"groups": [1, 2] * 5}, "fits one variance group"),
        ({"outliers": "yes"}, "`outliers` must be True or False"),
    ],
)
def test_refusals(kwargs, words):
    rng = np.random.default_rng(0)
    Y, S = rng.standard_normal((10, 4)), rng.uniform(1, 2, (10, 4))
    kwargs = {"outliers": True, "variances": S, **kwargs}
    with pytest.raises(InputError, match=words):
        voxfit.mixed_effects(np.ones((10, 1)), Y, **kwargs)


@pytest.fixture
def maps(tmp_path):
    """Ten subjects' effect and variance maps (5 x 4 x 3), subject 01 shifted by 50 everywhere."""
    rng = np.random.default_rng(2)
    effects, variances = [], []
    for k in range(10):
        folder = tmp_path / f"sub-{k + 1:02d}"
        folder.mkdir()
        s2 = rng.uniform(1, 4, (5, 4, 3))
        effect = 1 + rng.standard_normal((5, 4, 3)) * np.sqrt(s2 + 1) + (50 if k == 0 else 0)
        for name, values, into in (("effect", effect, effects), ("variance", s2, variances)):
            path = folder / f"stat-{name}.nii.gz"
            nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), path)
            into.append(str(path))
    return tmp_path, effects, variances


def test_cli_writes_the_outlier_maps_and_records_them(maps, capsys):
    """`voxfit group ... --variances ... --outliers`: a 4-D stat-outlierprob map (a volume per subject, in the
    pairing's order), the prior and outlier variance maps, model.json's mixed_effects.outliers (validated
    against the schema by conftest), the summary line's outliers per voxel; the maps equal
    voxfit.mixed_effects on the same arrays."""
    folder, effects, variances = maps
    out = folder / "g"
    assert main(["group", *effects[::-1], "--variances", *variances, "--outliers", "-o", str(out)]) == 0
    assert "outlying subjects per voxel on average" in capsys.readouterr().out
    prob = np.asarray(nib.load(out / "stat-outlierprob_statmap.nii.gz").dataobj)
    assert prob.shape == (5, 4, 3, 10)
    record = json.loads((out / "model.json").read_text())
    mixed = record["settings"]["mixed_effects"]
    assert mixed["outliers"]["outliers"] is True
    assert "outlier inference" in mixed["model"]
    order = [row["subject"] for row in mixed["pairing"]["rows"]]
    first = order.index("sub-01")
    assert (prob[..., first] > 0.5).all()
    Y = np.stack([np.asarray(nib.load(p).dataobj).reshape(-1, order="F") for p in effects])
    Sv = np.stack([np.asarray(nib.load(p).dataobj).reshape(-1, order="F") for p in variances])
    ref = voxfit.mixed_effects(np.ones((10, 1)), Y, Sv, outliers=True)
    npt.assert_allclose(prob[..., first].reshape(-1, order="F"), ref.outlier_probability[0], rtol=1e-5, atol=1e-6)
    assert mixed["outliers"]["mean_outliers_per_voxel"] == pytest.approx(ref.mean_outliers, rel=1e-5)
    for name in ("outlierprior", "outliervariance"):
        assert (out / f"stat-{name}_statmap.nii.gz").is_file()


@pytest.mark.parametrize("model", ["fixed", "ols"])
def test_cli_refuses_outliers_without_the_mixed_model(maps, capsys, model):
    folder, effects, variances = maps
    code = main(["group", *effects, "--variances", *variances, "--model", model, "--outliers", "-o", str(folder / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--outliers" in err[0] and model in err[0], err
    with pytest.raises(InputError, match="--outliers"):
        SecondLevel(model=model, variances=variances, outliers=True).fit(effects)
