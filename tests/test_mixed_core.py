"""Mixed-effects group models on summary statistics (voxfit.core.mixed, voxfit.mixed_effects): REML against a
per-voxel maximisation of the textbook restricted likelihood with scipy.optimize, closed forms, fixed effects and
OLS computed directly, nipy's EM, the outcomes of voxels that cannot be fitted, and blocks."""

import warnings

import numpy as np
import numpy.testing as npt
import pytest
from scipy import optimize, stats

import voxfit
from voxfit.core import factorize
from voxfit.core.mixed import BAD_VARIANCE, FLAT, INVALID_DATA, NOT_CONVERGED, OK, OUTCOMES, fit_mixed_block
from voxfit.exceptions import InputError

# ------------------------------------------------------------------------------------ the reference: textbook REML


def _parts(tau, X, s2, codes):
    """V, W = V^-1, X'WX and P = W - W X (X'WX)^-1 X'W, as n x n matrices (Harville 1977)."""
    V = s2 + np.asarray(tau, dtype=float)[codes]
    W = np.diag(1 / V)
    XtWX = X.T @ W @ X
    P = W - W @ X @ np.linalg.solve(XtWX, X.T @ W)
    return V, W, XtWX, P


def reml_loglik(tau, X, y, s2, codes):
    """-1/2 [(n - p) log 2 pi + log|V| + log|X'V^-1 X| + r'V^-1 r], r the GLS residuals (y'Py)."""
    V, _, XtWX, P = _parts(tau, X, s2, codes)
    n, p = X.shape
    return -0.5 * ((n - p) * np.log(2 * np.pi) + np.log(V).sum() + np.linalg.slogdet(XtWX)[1] + y @ P @ y)


def reml_score(tau, X, y, s2, codes, G):
    """dl/dtau_g = -1/2 [tr(P D_g) - y'P D_g P y]."""
    _, _, _, P = _parts(tau, X, s2, codes)
    Py = P @ y
    return np.array(
        [-0.5 * (np.trace(P[np.ix_(codes == g, codes == g)]) - Py[codes == g] @ Py[codes == g]) for g in range(G)]
    )


def reference_fit(X, y, s2, codes, G):
    """tau2 by scipy.optimize on the textbook likelihood, then the GLS betas and their covariance.

    One group: minimize_scalar (bounded) of -l, its answer polished to the root of the textbook score by brentq
    (the likelihood's values alone locate the maximum only to ~sqrt(eps)); 0 where the score at 0 is <= 0.
    Several groups: L-BFGS-B with bounds >= 0 and the textbook score as gradient, from two starts."""
    f = lambda t: -reml_loglik(np.atleast_1d(t), X, y, s2, codes)  # noqa: E731
    if G == 1:
        score = lambda t: reml_score([t], X, y, s2, codes, 1)[0]  # noqa: E731
        top = 10 * (y.var() * y.size + s2.max())
        if score(0.0) <= 0:
            tau = np.zeros(1)
        else:
            t = optimize.minimize_scalar(f, bounds=(0, top), method="bounded", options={"xatol": 1e-9 * top}).x
            lo, hi = 0.5 * t, 2 * t + 1e-12
            while score(hi) > 0:
                hi *= 2
            lo = lo if score(lo) > 0 else 0.0
            tau = np.array([optimize.brentq(score, lo, hi, xtol=1e-300, rtol=1e-15)])
    else:
        grad = lambda t: -reml_score(t, X, y, s2, codes, G)  # noqa: E731
        best = None
        for start in (np.zeros(G), np.full(G, y.var())):
            options = {"ftol": 1e-300, "gtol": 1e-13, "maxiter": 10000}
            res = optimize.minimize(f, start, jac=grad, method="L-BFGS-B", bounds=[(0, None)] * G, options=options)
            best = res if best is None or res.fun < best.fun else best
        tau = best.x
    W = 1 / (s2 + tau[codes])
    cov = np.linalg.inv(X.T @ (W[:, None] * X))
    return tau, cov @ X.T @ (W * y), cov


def random_problem(rng, n, v, G, p):
    """A design with an intercept and p - 1 covariates, variance groups, first-level variances differing up to
    10x between subjects, and between-subject variances of which about a third are 0."""
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    codes = rng.permutation(np.arange(n) % G)
    s2 = rng.uniform(0.2, 2.0, (n, v))
    tau = rng.uniform(0, 1.5, (G, v)) * (rng.random((G, v)) > 0.3)
    Y = rng.standard_normal((n, v)) * np.sqrt(s2 + tau[codes]) + 0.5
    return X, Y, s2, codes


@pytest.mark.parametrize("G", [1, 2, 3])
@pytest.mark.parametrize("p", [1, 3])
def test_equals_textbook_reml_maximised_by_scipy(rng, G, p):
    n, v = 24, 12
    X, Y, s2, codes = random_problem(rng, n, v, G, p)
    names = ["a", "b", "c"][:p]
    contrast = {"t": "a" if p == 1 else "b - 0.5*c"}
    fit = voxfit.mixed_effects(X, Y, s2, contrast, names=names, groups=codes, dof="residual")  # (the plug-in)
    w = np.array([1.0] if p == 1 else [0, 1, -0.5])
    assert fit.valid.all() and fit.outcomes == {}
    for j in range(v):
        tau, b, cov = reference_fit(X, Y[:, j], s2[:, j], codes, G)
        scale = s2[:, j].mean()
        npt.assert_allclose(fit.between_variance[:, j], tau, rtol=1e-6, atol=1e-6 * scale)
        npt.assert_allclose(fit.betas[:, j], b, rtol=1e-6, atol=1e-9)
        npt.assert_allclose(fit.beta_covariance[j], cov, rtol=1e-6, atol=1e-12)
        npt.assert_allclose(fit.contrasts["t"].stat[j], (w @ b) / np.sqrt(w @ cov @ w), rtol=1e-6)
        npt.assert_allclose(fit.log_likelihood[j], reml_loglik(tau, X, Y[:, j], s2[:, j], codes), rtol=1e-10)
    assert fit.dof == n - p and fit.groups == tuple(range(G))
    npt.assert_allclose(fit.contrasts["t"].p, stats.t.sf(fit.contrasts["t"].stat, n - p), rtol=1e-8)


def _same_inputs_once(reference):
    """`reference` (a function of arrays) computed once for each set of inputs, by their values: the tests of the
    compiled kernel and of the numpy path (parametrized by ``compiled``) hold the same data to the same written-out
    likelihood, whose fine grids took most of their time, computed for each (the results are read-only)."""
    cache = {}

    def cached(*arrays):
        key = tuple((a.dtype.str, a.shape, a.tobytes()) for a in map(np.asarray, arrays))
        if key not in cache:
            results = reference(*arrays)
            for r in results if isinstance(results, tuple) else (results,):
                r.flags.writeable = False
            cache[key] = results
        return cache[key]

    return cached


def _one_sample_reml(t, y, s2):
    """The restricted log-likelihood of a one-sample model at between-subject variance `t` (columns: voxels),
    less its constants, written out: -(sum log v + log sum w + sum w (y - b)^2) / 2, v = s2 + t, w = 1 / v."""
    v = s2 + t
    w = 1 / v
    b = (w * y).sum(axis=0) / w.sum(axis=0)
    return -0.5 * (np.log(v).sum(axis=0) + np.log(w.sum(axis=0)) + (w * (y - b) ** 2).sum(axis=0))


@_same_inputs_once
def _highest_peak(y, s2):
    """The restricted likelihood's highest point on a fine grid of tau2 (0, then 1e-6 to 1e4 at 3000 points)."""
    grid = np.concatenate([[0.0], np.exp(np.linspace(np.log(1e-6), np.log(1e4), 3000))])
    values = np.stack([_one_sample_reml(t, y, s2) for t in grid])
    return grid[values.argmax(axis=0)], values.max(axis=0)


@pytest.mark.parametrize("compiled", [True, False])
def test_the_estimate_is_the_likelihoods_highest_peak_not_a_lower_one(compiled):
    """A voxel whose restricted likelihood has two peaks: a subject of small first-level variance far from the
    others held tau2 at 0 (log-likelihood -23.3, t 47.6, p 2e-10) where tau2 7.2 is far higher (-12.1, t 0.96;
    group tester, 8 subjects' varcopes 0.0024 to 2.1); and voxels drawn with first-level variances up to 1000-fold
    apart, where it missed the highest peak in 0.2% of them. Against a fine grid of the likelihood written out."""
    y = -np.array([5.6845, 0.9057, -4.5098, -2.0614, -1.3288, -1.5609, -2.2471, -2.1039])
    s2 = np.array([1.43781, 1.6402, 2.1184, 0.01582, 0.5609, 1.73473, 0.02955, 0.0024])
    one = fit_mixed_block(np.ones((8, 1)), y, s2, compiled=compiled)
    peak, _ = _highest_peak(y[:, None], s2[:, None])
    assert one.tau2[0, 0] == pytest.approx(peak[0], rel=5e-3) and one.tau2[0, 0] == pytest.approx(7.21, rel=1e-3)
    assert one.betas[0, 0] / np.sqrt(one.covariance[0, 0, 0]) == pytest.approx(0.961, abs=1e-3)
    rng = np.random.default_rng(1)
    n, v = 8, 5000
    s2 = 0.1 * np.exp(rng.uniform(0, np.log(1000), (n, v)))
    y = rng.normal(0, np.sqrt(s2 + np.exp(rng.uniform(np.log(1e-3), np.log(10), v)) * (rng.uniform(size=v) < 0.5)))
    fit = fit_mixed_block(np.ones((n, 1)), y, s2, compiled=compiled)
    _, best = _highest_peak(y, s2)
    missed = best - _one_sample_reml(fit.tau2[0], y, s2)
    assert (fit.outcome == OK).all() and (missed > 0.05).sum() == 0, np.sort(missed)[-5:]


def test_rank_deficient_design_gives_the_full_rank_fit(rng):
    n, v = 20, 30
    X, Y, s2, codes = random_problem(rng, n, v, 2, 3)
    Xd = np.column_stack([X, X[:, 1] + X[:, 2]])
    with pytest.warns(voxfit.exceptions.RankDeficiencyWarning):
        deficient = voxfit.mixed_effects(Xd, Y, s2, {"d": [0, 1, -1, 0]}, groups=codes)
    full = voxfit.mixed_effects(X, Y, s2, {"d": [0, 1, -1]}, groups=codes)
    npt.assert_allclose(deficient.between_variance, full.between_variance, rtol=1e-8, atol=1e-12)
    npt.assert_allclose(deficient.contrasts["d"].stat, full.contrasts["d"].stat, rtol=1e-8)
    shift = deficient.log_likelihood - full.log_likelihood  # log pdet(X'X) of the two parametrisations
    npt.assert_allclose(shift, shift[0], rtol=1e-9)
    npt.assert_allclose(deficient.betas, np.linalg.pinv(Xd) @ (X @ full.betas), rtol=1e-8, atol=1e-12)  # minimum norm
    assert deficient.dof == full.dof == n - 3


# ---------------------------------------------------------------------------------------------------- closed forms


def test_equal_variances_give_ols(rng):
    """With s_i^2 = s^2 for all subjects, V = (s^2 + tau2) I: REML gives s^2 + tau2 = RSS / (n - r), so
    tau2 = max(0, sigma2_ols - s^2) and the betas are OLS's; where tau2 > 0 the t is the OLS t exactly, and where
    sigma2_ols <= s^2 it is the t with the variance s^2 (X'X)^-1."""
    n, v = 16, 400
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Y = rng.standard_normal((n, v)) * rng.uniform(0.5, 1.5, v) + 0.3
    s = rng.uniform(0.3, 2.0, v)
    fit = voxfit.mixed_effects(X, Y, np.broadcast_to(s, (n, v)), {"slope": [0, 1]})
    ols = voxfit.fit(X, Y)
    sigma2 = ols.residual_variance
    interior = sigma2 > s
    assert 0.2 < interior.mean() < 0.9
    npt.assert_allclose(fit.between_variance[0], np.maximum(0, sigma2 - s), rtol=1e-9, atol=1e-12)
    npt.assert_allclose(fit.betas, ols.betas, rtol=1e-10, atol=1e-12)
    t_ols = ols.contrast([0, 1]).stat
    npt.assert_allclose(fit.contrasts["slope"].stat[interior], t_ols[interior], rtol=1e-8)
    t_known = ols.betas[1] / np.sqrt(s * ols.design.cov_unscaled[1, 1])
    npt.assert_allclose(fit.contrasts["slope"].stat[~interior], t_known[~interior], rtol=1e-10)


def test_zero_between_variance_is_fixed_effects(rng):
    n, v = 20, 200
    X, Y, s2, _ = random_problem(rng, n, v, 1, 3)
    Y = X @ rng.standard_normal((3, v)) + rng.standard_normal((n, v)) * np.sqrt(s2) * 0.6  # tau2 = 0 mostly
    mixed = voxfit.mixed_effects(X, Y, s2, ["c=x1"])
    fixed = voxfit.mixed_effects(X, Y, s2, ["c=x1"], model="fixed")
    zero = mixed.between_variance[0] == 0
    assert zero.mean() > 0.5
    npt.assert_array_equal(fixed.between_variance, 0)
    npt.assert_allclose(mixed.betas[:, zero], fixed.betas[:, zero], rtol=1e-12, atol=1e-14)
    npt.assert_allclose(mixed.beta_covariance[zero], fixed.beta_covariance[zero], rtol=1e-12)
    npt.assert_allclose(mixed.contrasts["c"].stat[zero], fixed.contrasts["c"].stat[zero], rtol=1e-12)


def test_fixed_effects_is_precision_weighted_least_squares(rng):
    """dof='residual': flameo's fixed effects exactly, the weights taken as known (covariance (X'WX)^-1, the sum of
    the first-level dof minus the rank)."""
    n, v = 12, 50
    X, Y, s2, _ = random_problem(rng, n, v, 1, 2)
    first = rng.integers(20, 200, n)
    contrasts = {"slope": [0, 1], "both": "x0; x1"}
    fit = voxfit.mixed_effects(X, Y, s2, contrasts, model="fixed", first_level_dof=first, dof="residual")
    assert fit.dof == first.sum() - 2 and fit.dof_kind == "residual"
    for j in range(v):
        sw = 1 / np.sqrt(s2[:, j])
        b, *_ = np.linalg.lstsq(X * sw[:, None], Y[:, j] * sw, rcond=None)  # weighted rows
        cov = np.linalg.inv((X * sw[:, None] ** 2).T @ X)
        npt.assert_allclose(fit.betas[:, j], b, rtol=1e-10)
        npt.assert_allclose(fit.beta_covariance[j], cov, rtol=1e-10)
        F = b @ np.linalg.solve(cov, b) / 2
        npt.assert_allclose(fit.contrasts["both"].stat[j], F, rtol=1e-9)
    t = fit.contrasts["slope"].stat
    npt.assert_allclose(fit.contrasts["slope"].p, stats.t.sf(t, first.sum() - 2), rtol=1e-8)
    # a dof map: one per subject and voxel; without first-level dof, n - rank
    per_voxel = rng.integers(20, 200, (n, v))
    mapped = voxfit.mixed_effects(X, Y, s2, ["s=x1"], model="fixed", first_level_dof=per_voxel, dof="residual")
    npt.assert_array_equal(mapped.dof, per_voxel.sum(axis=0) - 2)
    npt.assert_allclose(mapped.contrasts["s"].p, stats.t.sf(t, per_voxel.sum(axis=0) - 2), rtol=1e-8)
    assert voxfit.mixed_effects(X, Y, s2, model="fixed").dof == n - 2


def _kenward_roger_by_hand(X, y, s2, d, L):
    """Kenward & Roger (1997) written out with n x n and p x p matrices for one voxel, the first-level variances
    the parameters (sigma_i^2 on d_i dof: A = diag(2 sigma_i^4 / d_i)), from their definitions: P_i =
    X' dV^-1/dsigma_i^2 X, Q_ii = X' dV^-1 V dV^-1 X, R = 0; Phi_A = Phi + 2 Phi [sum A_ii (Q_ii - P_i Phi P_i)] Phi;
    Theta = L' (L Phi L')^-1 L; A1 = sum A_ii tr(Theta Phi P_i Phi)^2, A2 = sum A_ii tr(Theta Phi P_i Phi Theta Phi
    P_i Phi). Returns the betas, Phi_A, A1, A2 and the Satterthwaite dof of each row of L."""
    W = np.diag(1 / s2)
    Phi = np.linalg.inv(X.T @ W @ X)
    betas = Phi @ X.T @ W @ y
    A = 2 * s2**2 / d
    P = [-(X.T @ np.outer(W[:, i], W[i]) @ X) for i in range(len(y))]
    Q = [X.T @ np.outer(W[:, i], W[i]) @ np.diag(s2) @ np.outer(W[:, i], W[i]) @ X for i in range(len(y))]
    inner = sum(a * (q - p @ Phi @ p) for a, q, p in zip(A, Q, P))
    Phi_A = Phi + 2 * Phi @ inner @ Phi
    Theta = L.T @ np.linalg.inv(L @ Phi @ L.T) @ L
    K = [Theta @ Phi @ p @ Phi for p in P]
    A1 = sum(a * np.trace(k) ** 2 for a, k in zip(A, K))
    A2 = sum(a * np.trace(k @ k) for a, k in zip(A, K))
    nus = [2 * (c @ Phi @ c) ** 2 / sum(a * (c @ Phi @ p @ Phi @ c) ** 2 for a, p in zip(A, P)) for c in L]
    return betas, Phi_A, A1, A2, nus


def test_fixed_effects_kenward_roger_against_its_definitions(rng):
    """The default of model='fixed' with first-level dof (per subject and voxel here): Kenward & Roger's covariance,
    t on Satterthwaite's dof, and their scaled F (m, lambda of voxfit.core.distributions.kenward_roger_reference
    where the expansion holds: dof 30-200) against the matrices of their definitions, voxel by voxel."""
    from voxfit.core.distributions import kenward_roger_reference

    n, v = 9, 20
    X, Y, s2, _ = random_problem(rng, n, v, 1, 3)
    d = rng.integers(30, 200, (n, v)).astype(float)
    L = np.array([[0.0, 1, 0], [0, 0, 1]])
    fit = voxfit.mixed_effects(X, Y, s2, {"t": L[:1], "F": L}, model="fixed", first_level_dof=d)
    assert fit.dof_kind == "kenward-roger"
    npt.assert_array_equal(fit.dof, d.sum(axis=0) - 3)  # (the residual kind's, flameo's, kept for the record)
    t, F = fit.contrasts["t"], fit.contrasts["F"]
    for j in range(v):
        betas, Phi_A, A1, A2, nus = _kenward_roger_by_hand(X, Y[:, j], s2[:, j], d[:, j], L)
        npt.assert_allclose(A1, A2, rtol=1e-10)  # (each P_i of rank one)
        npt.assert_allclose(fit.betas[:, j], betas, rtol=1e-10)
        npt.assert_allclose(fit.beta_covariance[j], Phi_A, rtol=1e-10)
        npt.assert_allclose(t.t[j], betas[1] / np.sqrt(Phi_A[1, 1]), rtol=1e-10)
        npt.assert_allclose(t.dof[j], nus[0], rtol=1e-10)
        m, lam, reach = kenward_roger_reference(2, A1, A2)
        assert reach < 0.5
        e = L @ betas
        npt.assert_allclose(F.stat[j], lam * e @ np.linalg.solve(L @ Phi_A @ L.T, e) / 2, rtol=1e-9)
        npt.assert_allclose(F.dof[1][j], m, rtol=1e-9)
    npt.assert_allclose(t.p, stats.t.sf(t.t, t.dof), rtol=1e-8)


def test_fixed_effects_kenward_roger_of_one_sample_is_meier_as_runs_combine(rng):
    """X a column of ones: the subjects combine as runs do (voxfit.models.fixed_effects: Meier's factor and the
    weights' effective dof), t and dof equal, per subject and voxel dof too."""
    from voxfit.core.contrast import t_stats
    from voxfit.models import fixed_effects

    n, v = 5, 300
    s2 = rng.uniform(0.2, 5.0, (n, v))
    Y = rng.standard_normal((n, v)) * np.sqrt(s2)
    d = rng.integers(4, 60, (n, v)).astype(float)
    w = np.ones((1, 1))
    per_run = [t_stats("m", w, Y[i], s2[i], np.ones(v, bool), d[i]) for i in range(n)]
    runs = fixed_effects("m", per_run)
    fit = voxfit.mixed_effects(np.ones((n, 1)), Y, s2, {"m": [1.0]}, model="fixed", first_level_dof=d)
    npt.assert_allclose(fit.contrasts["m"].t, runs.t, rtol=1e-12)
    npt.assert_allclose(fit.contrasts["m"].dof, runs.dof, rtol=1e-12)
    npt.assert_allclose(fit.contrasts["m"].p, runs.p, rtol=1e-10)


def test_fixed_effects_kenward_roger_limits(rng):
    """A subject with a column of its own adds nothing (the others' covariance and dof are those of the fit
    without it); an F of one independent row is its t's square on the t's dof; as every first-level dof grows,
    the plain covariance and F referred to chi2(q) / q."""
    n, v = 10, 200
    X, Y, s2, _ = random_problem(rng, n, v, 1, 2)
    d = rng.integers(5, 40, n).astype(float)
    own = np.column_stack([X, np.eye(n)[:, 0]])
    fit = voxfit.mixed_effects(own, Y, s2, {"s": [0, 1, 0]}, model="fixed", first_level_dof=d)
    rest = voxfit.mixed_effects(X[1:], Y[1:], s2[1:], {"s": [0, 1]}, model="fixed", first_level_dof=d[1:])
    npt.assert_allclose(fit.beta_covariance[:, :2, :2], rest.beta_covariance, rtol=1e-10)
    npt.assert_allclose(fit.contrasts["s"].dof, rest.contrasts["s"].dof, rtol=1e-10)
    twice = voxfit.mixed_effects(X, Y, s2, {"t": [0, 1], "F": [[0, 1], [0, 2]]}, model="fixed", first_level_dof=d)
    t, F = twice.contrasts["t"], twice.contrasts["F"]
    assert F.dof[0] == 1
    npt.assert_allclose(F.stat, t.t**2, rtol=1e-10)
    npt.assert_allclose(F.dof[1], t.dof, rtol=1e-10)
    plain = voxfit.mixed_effects(X, Y, s2, {"F": "x0; x1"}, model="fixed", first_level_dof=1e9, dof="residual")
    large = voxfit.mixed_effects(X, Y, s2, {"F": "x0; x1"}, model="fixed", first_level_dof=1e9)
    scale = np.abs(plain.beta_covariance).max()
    npt.assert_allclose(large.beta_covariance, plain.beta_covariance, rtol=1e-7, atol=1e-7 * scale)
    npt.assert_allclose(large.contrasts["F"].stat, plain.contrasts["F"].stat, rtol=1e-7)
    assert large.contrasts["F"].dof[1].min() > 1e9
    npt.assert_allclose(large.contrasts["F"].p, stats.chi2.sf(2 * plain.contrasts["F"].stat, 2), rtol=1e-4)


def test_fixed_effects_with_estimated_weights_hold_their_level():
    """40,000 null voxels of 4 subjects (true first-level variances log-uniform over [0.5, 2] per subject and voxel),
    each variance estimated on 20 dof: the rate of one-sided p < 0.05 of the mean's t, and of an F of 2 rows
    (intercept and covariate), within 10% of nominal (the exact 95% interval reaches [0.045, 0.055]; half-width
    0.0021). flameo's fixed effects (now dof='residual'), the estimated weights taken as known, gave 0.063 and 0.071;
    Kenward & Roger's terms 0.0516 and 0.0522 on 100,000 voxels (validation/fixed_effects_null.py, where first-level
    dof of 10 still give 0.051-0.070: a first-order correction). One fixed seed: the rates' spread is 0.0011."""
    n, V, d = 4, 40000, 20.0
    rng = np.random.default_rng(20270114)
    x = np.linspace(-1.0, 1.0, n)
    for X, contrast in ((np.ones((n, 1)), {"c": [1.0]}), (np.column_stack([np.ones(n), x]), {"c": "x0; x1"})):
        s2 = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n, V)))
        Y = np.sqrt(s2) * rng.standard_normal((n, V))
        estimates = s2 * rng.chisquare(d, (n, V)) / d
        p = voxfit.mixed_effects(X, Y, estimates, contrast, model="fixed", first_level_dof=d).contrasts["c"].p
        ci = stats.binomtest(int(np.sum(p < 0.05)), V).proportion_ci(0.95, method="exact")
        assert ci.low <= 1.1 * 0.05 and ci.high >= 0.9 * 0.05, (contrast, np.mean(p < 0.05), ci)


def test_ols_is_voxfit_fit(rng):
    n, v = 15, 300
    X, Y, s2, _ = random_problem(rng, n, v, 1, 3)
    fit = voxfit.mixed_effects(X, Y, None, {"t": [0, 1, 0], "F": "x1; x2"}, model="ols")
    ols = voxfit.fit(X, Y)
    npt.assert_allclose(fit.betas, ols.betas, rtol=1e-10, atol=1e-13)
    npt.assert_allclose(fit.between_variance[0], ols.residual_variance, rtol=1e-10)
    for label, c in (("t", [0, 1, 0]), ("F", "x1; x2")):
        ref = ols.contrast(c)
        npt.assert_allclose(fit.contrasts[label].stat, ref.stat, rtol=1e-9)
        npt.assert_allclose(fit.contrasts[label].z, ref.z, rtol=1e-8, atol=1e-12)
    # the variances are not used by ols
    other = voxfit.mixed_effects(X, Y, s2, {"t": [0, 1, 0]}, model="ols")
    npt.assert_array_equal(other.contrasts["t"].stat, fit.contrasts["t"].stat)


# ------------------------------------------------------------------------------------------- Satterthwaite dof


def test_satterthwaite_dof_against_finite_differences(rng):
    """nu = 2 v^2 / (g' I^-1 g): v(tau) = c'(X'V^-1 X)^-1 c differentiated numerically, I from the textbook P."""
    n, v, G = 18, 8, 2
    X, Y, s2, codes = random_problem(rng, n, v, G, 2)
    fit = voxfit.mixed_effects(X, Y, s2, {"slope": [0, 1], "both": "x0; x1"}, groups=codes, dof="satterthwaite")
    c = np.array([0.0, 1.0])
    for j in range(v):
        tau = fit.between_variance[:, j]

        def var(t, j=j):
            W = 1 / (s2[:, j] + t[codes])
            return c @ np.linalg.inv(X.T @ (W[:, None] * X)) @ c

        h = 1e-6 * (tau.max() + s2[:, j].mean())
        g = np.array([(var(tau + h * e) - var(tau - h * e)) / (2 * h) for e in np.eye(G)])
        _, _, _, P = _parts(tau, X, s2[:, j], codes)
        info = np.array([[0.5 * np.sum(P[np.ix_(codes == a, codes == b)] ** 2) for b in range(G)] for a in range(G)])
        nu = 2 * var(tau) ** 2 / (g @ np.linalg.solve(info, g))
        npt.assert_allclose(fit.contrasts["slope"].dof[j], nu, rtol=1e-5)
    assert fit.dof == n - 2
    F_dof = fit.contrasts["both"].dof[1]
    assert F_dof.shape == (v,) and (F_dof >= 2).all() and np.isfinite(F_dof).all()


def test_kenward_roger_against_finite_differences(rng):
    """Kenward & Roger's adjusted covariance for a covariance linear in tau2: Phi_A = Phi - sum_gh A_gh
    d2 Phi / dtau_g dtau_h, with Phi(tau) = (X'V^-1 X)^-1 inverted directly and differentiated numerically, A the
    inverse of the textbook REML information over the groups whose tau2 is positive (a group at 0 taken as known);
    t from Phi_A, and Satterthwaite's dof at most n - rank. It is the default with several variance groups."""
    n, v, G = 18, 10, 3
    X, Y, s2, codes = random_problem(rng, n, v, G, 2)
    fit = voxfit.mixed_effects(X, Y, s2, {"slope": [0, 1], "both": "x0; x1"}, groups=codes)
    satt = voxfit.mixed_effects(X, Y, s2, {"slope": [0, 1]}, groups=codes, dof="satterthwaite")
    assert fit.dof_kind == "kenward-roger" and fit.valid.all()
    assert ((fit.between_variance == 0).any(axis=0) & (fit.between_variance > 0).any(axis=0)).any()  # both kinds
    for j in range(v):
        tau = fit.between_variance[:, j]

        def phi(t, j=j):
            W = 1 / (s2[:, j] + t[codes])
            return np.linalg.inv(X.T @ (W[:, None] * X))

        h = 1e-4 * (tau.max() + s2[:, j].mean())
        E = np.eye(G) * h
        second = np.array(
            [
                [(phi(tau + a + b) - phi(tau + a - b) - phi(tau - a + b) + phi(tau - a - b)) / (4 * h * h) for b in E]
                for a in E
            ]
        )
        _, _, _, P = _parts(tau, X, s2[:, j], codes)
        info = np.array([[0.5 * np.sum(P[np.ix_(codes == a, codes == b)] ** 2) for b in range(G)] for a in range(G)])
        positive = tau > 0
        A = np.zeros((G, G))
        A[np.ix_(positive, positive)] = np.linalg.inv(info[np.ix_(positive, positive)])
        adjusted = phi(tau) - np.einsum("gh,ghab->ab", A, second)
        npt.assert_allclose(fit.beta_covariance[j], adjusted, rtol=2e-5, atol=1e-9 * np.abs(adjusted).max())
        npt.assert_allclose(fit.contrasts["slope"].t[j], fit.betas[1, j] / np.sqrt(adjusted[1, 1]), rtol=2e-5)
        npt.assert_allclose(fit.betas[:, j], satt.betas[:, j], rtol=1e-12)
        assert np.all(np.linalg.eigvalsh(adjusted - phi(tau)) >= -1e-12)  # the adjustment only widens
    npt.assert_allclose(fit.contrasts["slope"].dof, np.minimum(satt.contrasts["slope"].dof, n - 2), rtol=1e-12)
    assert (satt.contrasts["slope"].dof > n - 2).any()  # (the cap was used)
    assert voxfit.mixed_effects(X, Y, s2, {"s": [0, 1]}).dof_kind == "residual"  # one group: FLAME1's


def test_kenward_roger_f_does_not_depend_on_how_its_rows_are_written(rng):
    """Kenward & Roger's F: lambda F and its dof m are the same for every writing of one hypothesis (rows
    combined, scaled, or one more redundant row), where the rule of Fai & Cornelius gave dof differing up to 30%
    (a reviewer's finding); and for one row, lambda = 1 and m = Satterthwaite's dof of its t exactly."""
    from voxfit.core.mixed import kenward_roger_f, satterthwaite_dof

    n, v = 24, 60
    codes = np.repeat(np.arange(3), [4, 8, 12])
    X = np.eye(3)[codes]
    s2 = rng.uniform(1, 10, (n, v))
    Y = rng.standard_normal((n, v)) * np.sqrt(s2 + rng.uniform(0, 8, (3, v))[codes])
    forms = {
        "a": [[1, -1, 0], [0, 1, -1]],
        "b": [[1, 0, -1], [0, 1, -1]],
        "c": [[10, -10, 0], [0, 1, -1]],
        "d": [[1, -1, 0], [0, 1, -1], [1, 0, -1]],
    }
    kr = voxfit.mixed_effects(X, Y, s2, forms, groups=codes)
    satt = voxfit.mixed_effects(X, Y, s2, forms, groups=codes, dof="satterthwaite")
    assert kr.valid.all()
    blocks = voxfit.mixed_effects(X, Y, s2, forms, groups=codes, max_memory="40K", n_jobs=2)  # a few voxels each
    npt.assert_allclose(blocks.contrasts["a"].F, kr.contrasts["a"].F, rtol=1e-8)
    npt.assert_allclose(blocks.contrasts["a"].dof[1], kr.contrasts["a"].dof[1], rtol=1e-8)
    for k in "bcd":
        npt.assert_allclose(kr.contrasts[k].F, kr.contrasts["a"].F, rtol=1e-8)
        npt.assert_allclose(kr.contrasts[k].dof[1], kr.contrasts["a"].dof[1], rtol=1e-8)
        assert kr.contrasts[k].dof[0] == 2
    assert np.abs(satt.contrasts["d"].dof[1] / satt.contrasts["a"].dof[1] - 1).max() > 0.05  # (what it mends)
    # one row: lambda 1 and Satterthwaite's dof, on the plug-in pieces of a fit
    from voxfit.core.mixed import _Problem

    design = factorize(X, warn=False)
    state = _Problem(design, codes, 3).evaluate(kr.between_variance, Y, s2)
    w = np.array([[1.0, -1.0, 0.0]])
    m, lam = kenward_roger_f(design.basis_pinv, w, state.Minv, state.T, state.info)
    npt.assert_allclose(lam, 1.0, rtol=1e-9)
    npt.assert_allclose(m, satterthwaite_dof(design.basis_pinv, w, state.Minv, state.T, state.info), rtol=1e-9)


def test_small_variance_groups_are_warned_of(rng):
    """Groups of fewer than 10 subjects: a DesignWarning naming the smallest group and the measured rates (the
    validation/variance_groups.py figures); groups of 10 fit silently, as one group does."""
    Y, s2 = rng.standard_normal((20, 5)), rng.uniform(1, 2, (20, 5))
    groups = np.array(["pat"] * 6 + ["con"] * 14)
    with pytest.warns(voxfit.exceptions.DesignWarning, match=r"variance group 'pat' has 6 subjects.*7\.6%"):
        voxfit.mixed_effects(np.ones((20, 1)), Y, s2, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voxfit.mixed_effects(np.ones((20, 1)), Y, s2, groups=np.arange(20) // 10)
        voxfit.mixed_effects(np.ones((20, 1)), Y, s2)


def test_satterthwaite_f_of_one_row_is_its_t():
    rng = np.random.default_rng(5)
    X, Y, s2, _ = random_problem(rng, 20, 30, 1, 2)
    fit = voxfit.mixed_effects(X, Y, s2, {"t": [0, 1], "F": [[0, 1], [0, 2]]}, dof="satterthwaite")
    npt.assert_allclose(fit.contrasts["F"].dof[1], fit.contrasts["t"].dof, rtol=1e-9)
    npt.assert_allclose(fit.contrasts["F"].stat, fit.contrasts["t"].stat ** 2, rtol=1e-9)


# --------------------------------------------------------------------------------------------------------- nipy


def test_agrees_with_nipy_em():
    """nipy's EM maximises the (unrestricted) likelihood: at its converged between-subject variance, its betas are
    our GLS betas (model='fixed' with s^2 + tau2_ML); with equal first-level variances its tau2 is RSS / n - s^2
    where ours is RSS / (n - rank) - s^2, each bounded at 0."""
    mfx = pytest.importorskip("nipy.algorithms.statistics.mixed_effects_stat")
    rng = np.random.default_rng(0)
    n, v = 20, 60
    X, Y, s2, _ = random_problem(rng, n, v, 1, 2)
    model = mfx.MixedEffectsModel(X, n_iter=2000).fit(Y, s2)
    before = model.V2.copy()
    model._one_step(Y, s2)
    converged = np.abs(model.V2 - before) <= 1e-12 * (model.V2 + 1)
    assert converged.sum() > v // 4  # (EM crawls near tau2 = 0)
    ours = voxfit.mixed_effects(X, Y, s2 + model.V2, model="fixed")
    npt.assert_allclose(ours.betas[:, converged], model.beta_[:, converged], rtol=1e-6, atol=1e-9)

    s = rng.uniform(0.2, 1.0, v)
    ml = mfx.MixedEffectsModel(X, n_iter=3000).fit(Y, np.broadcast_to(s, (n, v)).copy())
    rss = voxfit.fit(X, Y).residual_variance * (n - 2)
    positive = rss / n - s > 0.05
    npt.assert_allclose(ml.V2[positive], rss[positive] / n - s[positive], rtol=1e-6)
    assert (ml.V2[~positive] < 0.05).all()  # EM crawls towards the boundary
    reml = voxfit.mixed_effects(X, Y, np.broadcast_to(s, (n, v)))
    npt.assert_allclose(reml.between_variance[0], np.maximum(0, rss / (n - 2) - s), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------------- outcomes


def test_voxels_that_cannot_be_fitted_get_nan_and_an_outcome(rng):
    n, v = 12, 10
    X, Y, s2, codes = random_problem(rng, n, v, 2, 2)
    Y[:, 1] = 3.0  # constant effects: fitted exactly by the intercept
    Y[:, 2] = X @ [1.0, -2.0]  # fitted exactly by the design
    Y[4, 3] = np.nan
    Y[0, 4] = np.inf
    s2[2, 5] = 0.0
    s2[3, 6] = np.nan
    s2[7, 7] = -1.0
    fit = voxfit.mixed_effects(X, Y, s2, {"t": [0, 1], "F": [[1, 0], [0, 1]]}, groups=codes)
    expected = [OK, OK, OK, INVALID_DATA, INVALID_DATA, BAD_VARIANCE, BAD_VARIANCE, BAD_VARIANCE, OK, OK]
    npt.assert_array_equal(fit.outcome, expected)
    bad = fit.outcome != OK
    npt.assert_array_equal(fit.valid, ~bad)
    assert np.isnan(fit.betas[:, bad]).all() and np.isnan(fit.beta_covariance[bad]).all()
    assert np.isnan(fit.between_variance[:, bad]).all() and np.isnan(fit.log_likelihood[bad]).all()
    for stats_ in fit.contrasts.values():
        assert np.isnan(stats_.stat[bad]).all() and np.isnan(stats_.z[bad]).all()
        assert np.isfinite(stats_.stat[~bad]).all()
    assert fit.outcomes == {OUTCOMES[INVALID_DATA]: 2, OUTCOMES[BAD_VARIANCE]: 3}
    # effects the design fits exactly: the between-subject variance 0 (see the test below), as fixed effects
    fixed = voxfit.mixed_effects(X, Y, s2, model="fixed")
    npt.assert_array_equal(fixed.outcome, [OK, OK, OK, *expected[3:]])
    assert (fit.between_variance[:, 1:3] == 0).all()
    npt.assert_allclose(fit.betas[:, 1:3], fixed.betas[:, 1:3], rtol=1e-12)
    # ols: zero variances are not looked at, constant effects are flat (no residual variance)
    ols = voxfit.mixed_effects(X, Y, s2, model="ols")
    npt.assert_array_equal(ols.outcome, [OK, FLAT, FLAT, INVALID_DATA, INVALID_DATA, OK, OK, OK, OK, OK])


@pytest.mark.parametrize("compiled", [False, True])
def test_effects_the_design_fits_exactly_have_no_between_subject_variance(compiled):
    """Eight subjects' effects all 3, their first-level variances unequal: the restricted likelihood falls from
    tau2 = 0 (its score there is -tr(P) / 2), so the estimate is 0 and the fit is fixed effects', as R's metafor
    gives it (rma(yi, vi, method="REML", test="t"): tau2 0, b 3, t 9.165 on 7 dof, on a tester's voxel). voxfit
    had said "flat likelihood" and left the voxel NaN, and adding 1e-9 to one effect gave metafor's numbers."""
    s2 = np.array([0.5, 1.0, 2.0, 0.8, 1.5, 3.0, 0.6, 1.2])[:, None] * [1.0, 1.0]
    Y = np.full((8, 2), 3.0)
    Y[0, 1] += 1e-9  # (nearly constant: fitted as before)
    fit = fit_mixed_block(np.ones((8, 1)), Y, s2, contrasts=[np.ones((1, 1))], compiled=compiled)
    npt.assert_array_equal(fit.outcome, [OK, OK])
    npt.assert_array_equal(fit.tau2, 0.0)
    variance = 1 / (1 / s2[:, 0]).sum()  # (GLS of one mean on known variances, written out)
    npt.assert_allclose(fit.betas[0], 3.0, rtol=1e-9)
    npt.assert_allclose(fit.covariance[:, 0, 0], variance, rtol=1e-9)
    loglik = [  # (the restricted likelihood, written out, falls from 0)
        -0.5 * (np.log(s2[:, 0] + t).sum() + np.log((1 / (s2[:, 0] + t)).sum())) for t in (0.0, 0.1, 1.0, 10.0)
    ]
    assert loglik == sorted(loglik, reverse=True)
    t = voxfit.mixed_effects(np.ones((8, 1)), Y, s2, {"mean": [1.0]}).contrasts["mean"].stat
    npt.assert_allclose(t, 3.0 / np.sqrt(variance), rtol=1e-6)


def test_no_residual_dof_is_flat(rng):
    X = np.column_stack([np.ones(3), [0.0, 1, 2], [1.0, 0, 2]])
    Y, s2 = rng.standard_normal((3, 4)), rng.uniform(1, 2, (3, 4))
    with pytest.warns(voxfit.exceptions.DegreesOfFreedomWarning):
        fit = voxfit.mixed_effects(X, Y, s2, ["m=x0"])
    npt.assert_array_equal(fit.outcome, FLAT)
    assert np.isnan(fit.contrasts["m"].z).all()


def test_a_group_the_design_absorbs_is_flat():
    """One subject in a group that has its own design column: the restricted likelihood does not depend on its
    between-subject variance."""
    rng = np.random.default_rng(3)
    n, v = 10, 5
    X = np.column_stack([np.ones(n), np.eye(n)[0]])
    codes = np.r_[1, np.zeros(n - 1, dtype=int)]
    Y, s2 = rng.standard_normal((n, v)), rng.uniform(1, 2, (n, v))
    npt.assert_array_equal(fit_mixed_block(X, Y, s2, codes).outcome, FLAT)
    with pytest.raises(InputError, match="variance group 1 in `groups` cannot have"):
        voxfit.mixed_effects(X, Y, s2, groups=codes)


# ------------------------------------------------------------------------------------------ blocks and threads


@pytest.mark.parametrize("G", [1, 3])
@pytest.mark.parametrize("rng", [0], indirect=True)  # (one draw: blocks against the whole, on the same data)
def test_blocks_and_threads_give_the_numbers_of_the_whole(rng, G):
    n, v = 20, 700
    X, Y, s2, codes = random_problem(rng, n, v, G, 3)
    Y[:, 5] = np.nan
    args = (X, Y, s2, {"t": [0, 1, 0], "F": "x1; x2"})
    kw = {"groups": codes, "dof": "satterthwaite"}
    whole = fit_mixed_block(X, Y, s2, codes, n_groups=G)
    small = voxfit.mixed_effects(*args, **kw, max_memory="40K", n_jobs=2)  # blocks of a few voxels
    one = voxfit.mixed_effects(*args, **kw, n_jobs=1)
    for fit in (small, one):
        npt.assert_array_equal(fit.outcome, whole.outcome)
        npt.assert_allclose(fit.between_variance, whole.tau2, rtol=1e-9, atol=1e-12)
        npt.assert_allclose(fit.betas, whole.betas, rtol=1e-9, atol=1e-12)
        npt.assert_allclose(fit.beta_covariance, whole.covariance, rtol=1e-9)
    for label in ("t", "F"):
        npt.assert_allclose(small.contrasts[label].stat, one.contrasts[label].stat, rtol=1e-8)
        dof_small, dof_one = (fit.contrasts[label].dof for fit in (small, one))
        if label == "F":
            dof_small, dof_one = dof_small[1], dof_one[1]
        npt.assert_allclose(dof_small, dof_one, rtol=1e-7)


@pytest.mark.parametrize("rng", [0], indirect=True)  # (one draw: blocks against the whole, on the same data)
def test_fixed_effects_blocks_take_their_voxels_first_level_dof(rng):
    """First-level dof per subject and voxel are cut to each block's voxels (and a voxel not fitted does not move
    the others'): blocks of a few voxels on two threads give the numbers of one block."""
    n, v = 12, 500
    X, Y, s2, _ = random_problem(rng, n, v, 1, 2)
    Y[:, 7] = np.nan
    d = rng.integers(8, 80, (n, v)).astype(float)
    args = (X, Y, s2, {"t": [0, 1], "F": "x0; x1"})
    small = voxfit.mixed_effects(*args, model="fixed", first_level_dof=d, max_memory="40K", n_jobs=2)
    one = voxfit.mixed_effects(*args, model="fixed", first_level_dof=d, n_jobs=1)
    npt.assert_allclose(small.beta_covariance, one.beta_covariance, rtol=1e-12)
    for label in ("t", "F"):
        npt.assert_allclose(small.contrasts[label].stat, one.contrasts[label].stat, rtol=1e-12)
        npt.assert_allclose(small.contrasts[label].p, one.contrasts[label].p, rtol=1e-10)
    assert np.isnan(small.contrasts["t"].dof[7]) and np.isfinite(np.delete(small.contrasts["t"].dof, 7)).all()


def test_float32_memmap_inputs_and_frozen_result(tmp_path, rng):
    n, v = 10, 40
    X, Y, s2, _ = random_problem(rng, n, v, 1, 1)
    path = tmp_path / "effects.npy"
    np.save(path, Y.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    fit = voxfit.mixed_effects(X, mapped, s2.astype(np.float32), ["m=x0"], names=["x0"])
    ref = voxfit.mixed_effects(X, Y.astype(np.float32).astype(float), s2.astype(np.float32).astype(float), ["m=x0"])
    npt.assert_array_equal(fit.contrasts["m"].stat, ref.contrasts["m"].stat)
    for a in (fit.betas, fit.beta_covariance, fit.between_variance, fit.valid, fit.outcome, fit.contrasts["m"].z):
        assert not a.flags.writeable
    with pytest.raises(AttributeError):
        fit.model = "ols"
    assert fit.groups == (1,) and fit.names == ("x0",)
    labelled = voxfit.mixed_effects(X, Y, s2, groups=np.array(["b", "a"] * (n // 2)))
    assert labelled.groups == ("a", "b") and labelled.between_variance.shape == (2, v)


def test_compiled_float32_maps_give_their_float64_values_numbers_with_one_signature(rng):
    """The kernels have one compiled signature (float64: 7.5 s to compile against 14.1 s for two); float32 maps are
    read into float64 a chunk of voxels at a time, as the kernels read them: the numbers of the same values in
    float64, bit for bit, over several chunks, with the peaks probed (first-level variances far apart) and the
    contrasts' Satterthwaite and Kenward-Roger dofs."""
    from voxfit.core._mixed_kernels import _compile
    from voxfit.core.mixed import fit_mixed_block

    n, v = 20, 3000
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    S = np.exp(rng.uniform(-1, 3, (n, v))).astype(np.float32)
    Y = (rng.standard_normal((n, v)) * np.sqrt(S + 2)).astype(np.float32)
    Y[:, :3] = np.nan
    for kenward_roger in (False, True):
        fits = [
            fit_mixed_block(X, y, s, compiled=True, contrasts=[np.eye(2)[1:], np.eye(2)], kenward_roger=kenward_roger)
            for y, s in ((Y, S), (Y.astype(np.float64), S.astype(np.float64)))
        ]
        for name in ("betas", "covariance", "tau2", "loglik", "outcome", "contrast_dof", "contrast_scale"):
            npt.assert_array_equal(*(np.asarray(getattr(f, name)) for f in fits), err_msg=name)
    assert [len(kernel.signatures) for kernel in _compile()] == [1, 1]


# ------------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": "flame"}, "`model` must be one of"),
        ({"variances": None}, "needs `variances`"),
        ({"variances": np.ones((6, 2))}, "`variances` has shape"),
        ({"model": "ols", "groups": [0, 1] * 3}, "fits one residual variance"),
        ({"model": "fixed", "dof": "satterthwaite"}, "applies to model='mixed' only"),
        ({"model": "fixed", "dof": "kenward-roger"}, "give `first_level_dof`, or dof='residual'"),
        ({"model": "ols", "dof": "kenward-roger"}, "model='ols' estimates one residual variance"),
        ({"dof": "kenward"}, "`dof` must be"),
        ({"first_level_dof": 10}, "model='fixed' only"),
        ({"model": "fixed", "first_level_dof": [1, 2]}, "`first_level_dof` must be"),
        ({"model": "fixed", "first_level_dof": -3}, "positive and finite"),
        ({"groups": [0, 1]}, "one label per subject"),
        ({"contrasts": [[1, 0]]}, "'label=expression'"),
        ({"contrasts": ["a=x0", "a=x1"]}, "labels must be unique"),
        ({"effects": np.ones((4, 3))}, "`effects` has 4 rows"),
    ],
)
def test_refusals_name_the_parameter(kwargs, words):
    X = np.column_stack([np.ones(6), np.arange(6.0)])
    args = {"effects": np.ones((6, 3)), "variances": np.ones((6, 3)), **kwargs}
    with pytest.raises(InputError, match=words):
        voxfit.mixed_effects(X, **args)


def test_the_core_uses_the_design_factorisation(rng):
    X, Y, s2, codes = random_problem(rng, 14, 20, 2, 2)
    a = fit_mixed_block(X, Y, s2, codes)
    b = fit_mixed_block(factorize(X), Y, s2, codes)
    npt.assert_array_equal(a.tau2, b.tau2)
    npt.assert_array_equal(a.betas, b.betas)


# ------------------------------------------------------------------------------ the compiled kernel (one group)


def _kernel_problem(rng, n, v, p):
    """Random voxels with every outcome: estimates at the boundary (tau2 = 0) and inside, effects the design fits
    exactly (constant, or X b: at the boundary), effects not finite, variances zero, negative, NaN or infinite, and
    voxels in extreme units."""
    X, Y, s2, _ = random_problem(rng, n, v, 1, p)
    Y[:, 0] = 3.0
    Y[:, 1] = X @ rng.standard_normal(p)
    Y[2, 2], Y[0, 3] = np.nan, -np.inf
    s2[1, 4], s2[3, 5], s2[5, 6], s2[0, 7] = 0.0, -1.0, np.nan, np.inf
    s2[:, 8] *= 1e150
    Y[:, 8] *= 1e75
    s2[:, 9] *= 1e-150
    Y[:, 9] *= 1e-75
    s2[0, 10] *= 1e-3  # one subject far more precise than the others
    return X, Y, s2


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_compiled_kernel_equals_the_numpy_path(rng, p):
    """The kernel runs the numpy path's steps: the same outcomes and evaluations, the same numbers to rounding."""
    n, v = 17, 300
    X, Y, s2 = _kernel_problem(rng, n, v, p)
    contrasts = [np.eye(p)[:1], np.eye(p)[: min(p, 2)]]
    for max_iter in (200, 2):  # (2: voxels that do not converge, fitted at their last step)
        ref = fit_mixed_block(X, Y, s2, contrasts=contrasts, max_iter=max_iter, compiled=False)
        fit = fit_mixed_block(X, Y, s2, contrasts=contrasts, max_iter=max_iter, compiled=True)
        npt.assert_array_equal(fit.outcome, ref.outcome)
        npt.assert_array_equal(fit.iterations, ref.iterations)
        if max_iter == 200:
            assert {OK, INVALID_DATA, BAD_VARIANCE} <= set(ref.outcome.tolist())
            assert (ref.outcome[:2] == OK).all() and (ref.tau2[0, :2] == 0).all()  # (fitted exactly: 0)
            assert (ref.tau2[0] == 0).sum() > 10 and (ref.tau2[0] > 0).sum() > 10  # the boundary and inside
        k = np.sqrt(np.abs(s2).mean(axis=0))  # each voxel's units
        npt.assert_allclose(fit.tau2, ref.tau2, rtol=1e-10, atol=0)
        npt.assert_allclose(fit.betas / k, ref.betas / k, rtol=1e-10, atol=1e-13)
        d = np.sqrt(np.einsum("vaa->va", ref.covariance))  # covariances relative to the variances beside them
        norm = d[:, :, None] * d[:, None, :]
        npt.assert_allclose(fit.covariance / norm, ref.covariance / norm, rtol=1e-10, atol=1e-10)
        npt.assert_allclose(fit.loglik, ref.loglik, rtol=1e-12, atol=1e-10)
        for mine, theirs in zip(fit.contrast_dof, ref.contrast_dof, strict=True):
            npt.assert_allclose(mine, theirs, rtol=1e-9)
    assert (ref.outcome == NOT_CONVERGED).any()


@pytest.mark.parametrize("p", [1, 3])
def test_compiled_kernel_equals_textbook_reml(rng, p):
    n, v = 24, 12
    X, Y, s2, codes = random_problem(rng, n, v, 1, p)
    fit = fit_mixed_block(X, Y, s2, compiled=True)
    assert (fit.outcome == OK).all()
    for j in range(v):
        tau, b, cov = reference_fit(X, Y[:, j], s2[:, j], codes, 1)
        npt.assert_allclose(fit.tau2[:, j], tau, rtol=1e-6, atol=1e-6 * s2[:, j].mean())
        npt.assert_allclose(fit.betas[:, j], b, rtol=1e-6, atol=1e-9)
        npt.assert_allclose(fit.covariance[j], cov, rtol=1e-6, atol=1e-12)
        npt.assert_allclose(fit.loglik[j], reml_loglik(tau, X, Y[:, j], s2[:, j], codes), rtol=1e-10)


def test_mixed_effects_on_the_kernel_gives_the_numbers_of_the_numpy_path(rng, monkeypatch):
    """Blocks and threads on the kernel (chosen once for the whole fit) give the numbers of the numpy path."""
    n, v = 20, 700
    X, Y, s2, _ = random_problem(rng, n, v, 1, 3)
    Y[:, 5] = np.nan
    args = (X, Y, s2, {"t": [0, 1, 0], "F": "x1; x2"})
    ref = fit_mixed_block(X, Y, s2, compiled=False)
    monkeypatch.setattr(voxfit.core.mixed, "AUTO_COMPILE_ELEMENTS", 0)
    for fit in (
        voxfit.mixed_effects(*args, dof="satterthwaite", max_memory="40K", n_jobs=2),
        voxfit.mixed_effects(*args, n_jobs=1),
    ):
        npt.assert_array_equal(fit.outcome, ref.outcome)
        npt.assert_allclose(fit.between_variance, ref.tau2, rtol=1e-10, atol=1e-14)
        npt.assert_allclose(fit.betas, ref.betas, rtol=1e-10, atol=1e-12)
        npt.assert_allclose(fit.beta_covariance, ref.covariance, rtol=1e-10)
    assert voxfit.core.mixed.use_compiled_mixed(0) and not voxfit.core.mixed.use_compiled_mixed(10**9, False)


def test_kernel_reads_float32_as_its_float64_values(rng):
    """The kernel reads float32 effects and variances as they are stored: the numbers of their float64 copies,
    exactly, and those of the numpy path to rounding."""
    X, Y, s2 = _kernel_problem(rng, 17, 200, 3)
    Y[:, 8:10], s2[:, 8:10] = Y[:, 20:22], s2[:, 20:22]  # (units beyond float32's range: not float32 data)
    Y32, s32 = Y.astype(np.float32), s2.astype(np.float32)
    fit = fit_mixed_block(X, Y32, s32, compiled=True)
    wide = fit_mixed_block(X, Y32.astype(np.float64), s32.astype(np.float64), compiled=True)
    ref = fit_mixed_block(X, Y32, s32, compiled=False)
    for name in ("betas", "covariance", "tau2", "loglik", "outcome", "iterations"):
        npt.assert_array_equal(getattr(fit, name), getattr(wide, name))
    npt.assert_array_equal(fit.outcome, ref.outcome)
    npt.assert_allclose(fit.tau2, ref.tau2, rtol=1e-10, atol=0)


def _reml_written_out(t, y, s2, X):
    """The restricted log-likelihood at tau2 `t` (v,) of voxels y, s2 (n, v) with design X (n, p), less its
    constants, written out: -(sum log v + log |X'WX| + r'Wr) / 2, v = s2 + t, W = 1 / v."""
    w = 1 / (s2 + t)
    M = np.einsum("iv,ia,ib->vab", w, X, X)
    b = np.linalg.solve(M, np.einsum("iv,ia->va", w * y, X)[..., None])[..., 0]
    r = y - X @ b.T
    return -0.5 * (np.log(s2 + t).sum(axis=0) + np.linalg.slogdet(M)[1] + (w * r * r).sum(axis=0))


@_same_inputs_once
def _reml_maximum(y, s2, X):
    """The likelihood's highest value: at 0 and 600 points of tau2 from 1e-6 x the least variance to 1e5 x the
    greatest, then golden-section search within a point of each voxel's two highest peaks of the grid."""
    grid = np.geomspace(1e-6 * s2.min(axis=0), 1e5 * np.maximum(s2.max(axis=0), y.var(axis=0)), 600)
    grid = np.vstack([np.zeros((1, y.shape[1])), grid])
    values = np.stack([_reml_written_out(t, y, s2, X) for t in grid])
    inner = np.full(values.shape, -np.inf)
    inner[1:-1] = np.where((values[1:-1] >= values[:-2]) & (values[1:-1] >= values[2:]), values[1:-1], -np.inf)
    columns = np.arange(y.shape[1])
    best = values.max(axis=0)
    for k in np.argsort(inner, axis=0)[-2:]:  # (each voxel's two highest peaks)
        lo = np.log(np.maximum(grid[k - 1, columns], 1e-300))
        hi = np.log(grid[np.minimum(k + 1, len(grid) - 1), columns])
        for _ in range(60):
            a, b = hi - 0.618 * (hi - lo), lo + 0.618 * (hi - lo)
            left = _reml_written_out(np.exp(a), y, s2, X) > _reml_written_out(np.exp(b), y, s2, X)
            lo, hi = np.where(left, lo, a), np.where(left, b, hi)
        best = np.maximum(best, _reml_written_out(np.exp(0.5 * (lo + hi)), y, s2, X))
    return best


@pytest.mark.parametrize("compiled", [True, False])
def test_no_voxel_stops_at_a_lower_peak_of_the_likelihood(compiled):
    """Voxels whose restricted likelihood has two peaks that the probe for a second one passed over (reviewer and
    group tester): variances 19.8-fold apart, under the probe's n / 2 gate (40 subjects: tau2 0 and t 3.47, 196
    below the maximum, where it gives t 0.20); a peak between two probe points, lower at both than at the
    estimate (40 subjects: 1.75 below); a higher point inside the estimate's bracket (0.84 below); a shallow peak
    near 0 under the least point probed (40 subjects, a covariate: 0.35 below); and the families of such voxels:
    two clusters of subjects whose variances are 3- to 100-fold apart, and precise subjects with outlying ones
    (peaks closer than the probe's 2-fold points can still be missed, by less than 0.01 here). Against the
    likelihood written out, maximised on a fine grid."""
    rng = np.random.default_rng(0)
    sign = lambda k: np.where(np.arange(k) % 2, 1.0, -1.0)  # noqa: E731
    cases = [  # (y, s2, X) of one voxel each
        (np.r_[0.6 + 0.3 * rng.standard_normal(38), -80.0, 80.0], np.r_[np.ones(38), 19.8, 19.8], np.ones((40, 1))),
        (np.r_[np.zeros(35), 73.2801 * sign(5)], np.r_[np.ones(35), np.full(5, 100.0)], np.ones((40, 1))),
        (np.r_[3.0 * sign(35), 52.3382057 * sign(5)], np.r_[np.ones(35), np.full(5, 100.0)], np.ones((40, 1))),
    ]
    Y, S, X = [np.column_stack([c[k] for c in cases]) for k in (0, 1)] + [np.ones((40, 1))]
    fit = fit_mixed_block(X, Y, S, compiled=compiled)
    npt.assert_array_less(_reml_maximum(Y, S, X) - _reml_written_out(fit.tau2[0], Y, S, X), 1e-6)
    for n, R in ((8, 3.5), (20, 3.0), (40, 3.5), (40, 100.0)):  # two clusters of subjects
        ys, ss = [], []
        for k in range(1, n, max(1, n // 8)):
            for A in np.geomspace(0.5, 300, 24):
                for c in (0.0, 0.7):
                    ys.append(np.r_[c * sign(k), A * sign(n - k)])
                    ss.append(np.r_[np.ones(k), np.full(n - k, R)])
        Y, S, X = np.array(ys).T, np.array(ss).T, np.ones((n, 1))
        fit = fit_mixed_block(X, Y, S, compiled=compiled)
        missed = _reml_maximum(Y, S, X) - _reml_written_out(fit.tau2[0], Y, S, X)
        assert (fit.outcome == OK).all() and missed.max() < 0.01, (n, R, np.sort(missed)[-3:])
    for n, m in ((12, 1), (40, 2)):  # precise subjects, 1-3 outlying ones, a covariate
        v = 500
        R = rng.uniform(2, n / 2, v)
        S = np.ones((n, v))
        S[:m] = R
        Y = 0.5 + rng.standard_normal((n, v))
        Y[:m] = rng.choice([-1, 1], (m, v)) * rng.uniform(2, 12, (m, v)) * np.sqrt(R)
        X = np.column_stack([np.ones(n), rng.standard_normal(n)])
        fit = fit_mixed_block(X, Y, S, compiled=compiled)
        missed = _reml_maximum(Y, S, X) - _reml_written_out(fit.tau2[0], Y, S, X)
        assert (fit.outcome == OK).all() and missed.max() < 0.01, (n, m, np.sort(missed)[-3:])
