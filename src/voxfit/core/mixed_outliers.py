"""Outlier inference in the mixed-effects group model (FSL flameo ``--io``, Woolrich 2008), vectorised over voxels.

Subject i's effect at a voxel is ``y_i = x_i' beta + u_i + e_i``, ``e_i ~ N(0, s_i^2)`` its first-level error and
its random effect u_i drawn from a mixture: the population ``N(0, tau2)`` with probability ``1 - pi``, or an outlier
population ``N(0, tau2 + omega)`` of larger variance with probability pi (Woolrich 2008, "Robust group analysis
using outlier inference", NeuroImage 41:286, the model of flameo ``--io``). So

    y_i ~ (1 - pi) N(x_i' beta, v_i) + pi N(x_i' beta, v_i + omega),   v_i = s_i^2 + tau2.

AFNI's 3dMEMA ``-model_outliers`` gives the random effects one heavier-tailed (Laplace) distribution instead; the
mixture is followed here because it yields what flameo writes, each subject's posterior probability of being an
outlier at each voxel, and because it is the plain mixed model exactly when pi = 0.

Estimation at each voxel, all voxels of a block together (each in its own units, effects divided by the root
mean first-level variance, as ``voxfit.core.mixed`` does):

1. the start: the plain mixed fit (REML, :func:`voxfit.core.mixed.fit_mixed_block`), its checks and outcomes;
   a robust tau2_rob from its residuals' median absolute deviation (which outliers do not inflate); beta by
   weighted least squares and tau2 by the moment estimate over the subjects within 5 robust standard
   deviations of the median residual (outliers inflate the plain tau2 and mask one another: from the plain fit,
   two subjects shifted by 16 sd in twenty were missed); ``pi = 0.1``; omega at its lower bound
   ``omega_min = 1000 (tau2_rob + max_i s_i^2)``. The outlier population is one of a much larger variance, as
   in flameo (whose outlier variance is at least 100 (tau2 + 100 max s^2)), so that a subject is an outlier
   only when its residual is far beyond what the population explains (``|e_i| / sqrt(v_i)`` beyond about 3.5
   at the estimate) and the population's own tails are seldom trimmed (which would bias its tau2 down and the
   test up: 0.07 at p < 0.05 from a start at tau2_rob alone; validation/mixed_outliers.py has the table).
2. maximum likelihood of the mixture by an expectation-conditional-maximisation (ECM) algorithm, each iteration:
   E-step, each subject's posterior outlier probability ``r_i``; CM-steps, ``pi = mean(r)`` (at most 0.25, as
   flameo bounds it), beta by weighted least squares with ``w_i = (1 - r_i) / v_i + r_i / (v_i + omega)`` (its
   exact maximiser), then (tau2, omega) by one projected Newton step (Fisher scoring where the expected
   complete-data log-likelihood is not concave) halved until that expectation rises (Armijo). Each step raises
   the expected complete-data log-likelihood, so the mixture's likelihood never decreases (a generalised EM).
   pi is estimated at each voxel, as flameo does (its ``global_prob_outlier`` is a map, "global" over the
   subjects): one prior shared over the mask would tie the voxels of a block to every other block, and a voxel's
   outliers (a subject's artefact in one region) are local. A voxel whose pi falls below ``1 / (10 n)`` has no
   outlier population (flameo's rule): it keeps the plain mixed fit exactly, with r = 0, pi = 0 and omega = 0.
   The iterations stop when, in the voxel's units (mean s^2 = 1), pi changes by at most `tol`, the coefficients
   of beta on the design's orthonormal basis by at most ``tol sqrt(tau2 + 1)``, tau2 by at most
   ``tol (tau2 + 1)`` and omega by at most ``tol (omega + tau2 + 1)``; a voxel still moving after `max_iter`
   iterations is ``NOT_CONVERGED`` (NaN outputs).
3. tau2 again, by restricted maximum likelihood given the responsibilities r and omega: the root of the score of

       l_R(tau2) = -1/2 [sum_i ((1 - r_i) log v_i + r_i log(v_i + omega)) + log|X' W X| + y' P y],

   W = diag(w), P = W - W X (X' W X)^-1 X' W (the plain restricted log-likelihood when every r_i = 0), whose score
   is ``1/2 [sum_i d_i (h_i + e_i^2) - sum_i w_i]`` with ``d_i = (1 - r_i) / v_i^2 + r_i / (v_i + omega)^2``,
   ``h_i = x_i' (X'WX)^-1 x_i`` and e the GLS residuals: 0 where the score at 0 is <= 0, else found by the
   Illinois (regula falsi) method in a bracket. ML alone would bias tau2 down by the design's rank, as ML does
   for a plain mixed model; REML keeps the t of an outlier-free voxel the plain model's.
4. beta by GLS with the weights w at that tau2, and their covariance ``(X' W X)^-1``: the t and F of the engine,
   with n - rank degrees of freedom (FLAME1's).

One variance group (several are refused by the engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .design import DesignFactor, factorize
from .mixed import NOT_CONVERGED, OK, MixedBlock, fit_mixed_block

__all__ = ["PRIOR_MAX", "SPREAD_MIN", "OutlierBlock", "fit_outlier_block"]

PRIOR_MAX = 0.25  # the largest outlier prior (flameo's bound)
_PRIOR_START = 0.1
START_REJECT = 5.0
SPREAD_MIN = 1e3  # omega's lower bound, in units of a robust tau2 + the voxel's largest s^2
_HALVINGS = 30
_ARMIJO = 1e-4
_BRACKET_DOUBLINGS = 200
_REML_TOL = 1e-12
_REML_ITER = 200


@dataclass(frozen=True, eq=False)
class OutlierBlock:
    """A mixed model with outlier inference fitted to a block of v voxels of n subjects.

    fit: betas, covariance, tau2 (REML given the responsibilities), outcome, loglik (the mixture's log-likelihood
    at the estimate, not restricted) and iterations (of the ECM algorithm; 0 where pi fell to 0 at once) as a
    ``MixedBlock``; probability: (n, v) each subject's posterior outlier probability r_i; prior: (v,) pi;
    outlier_variance: (v,) omega. NaN where ``fit.outcome != OK``.
    """

    fit: MixedBlock
    probability: NDArray[np.float64]
    prior: NDArray[np.float64]
    outlier_variance: NDArray[np.float64]


def fit_outlier_block(
    X, effects, variances, *, max_iter: int = 1000, tol: float = 1e-8, compiled: bool | None = None
) -> OutlierBlock:
    """Fit the mixed model with outlier inference to a block of voxels (see the module's docstring).

    X : (n, p) array or DesignFactor; effects, variances : (n, v) arrays (a 1-D array is one voxel);
    max_iter, tol : the ECM iterations and their tolerance; compiled : the plain fit's kernel choice
    (:func:`voxfit.core.mixed.fit_mixed_block`).
    """
    design = X if isinstance(X, DesignFactor) else factorize(X, warn=False)
    Y = np.asarray(effects, dtype=np.float64)
    S = np.asarray(variances, dtype=np.float64)
    Y, S = (Y[:, None], S[:, None]) if Y.ndim == 1 else (Y, S)
    n, v = Y.shape
    plain = fit_mixed_block(design, Y, S, model="mixed", compiled=compiled)
    betas, covariance, tau2 = plain.betas.copy(), plain.covariance.copy(), plain.tau2.copy()
    outcome, loglik = plain.outcome.copy(), np.full(v, np.nan)
    iterations = np.zeros(v, dtype=np.int32)
    probability = np.full((n, v), np.nan)
    prior, omega = np.full(v, np.nan), np.full(v, np.nan)
    idx = np.flatnonzero(outcome == OK)
    if idx.size:
        k = np.sqrt(S[:, idx].mean(axis=0))  # each voxel in its own units: mean first-level variance 1
        Yk, Sk = Y[:, idx] / k, S[:, idx] / k**2
        with np.errstate(all="ignore"):  # (numbers that are not finite are caught below)
            em = _ecm(design, Yk, Sk, plain.betas[:, idx] / k, plain.tau2[0, idx] / k**2, max_iter, tol)
            part = _final(design, Yk, Sk, em)
        mixture = part.prior > 0  # elsewhere the plain fit stands, exactly
        at = idx[mixture]
        betas[:, at] = part.betas[:, mixture] * k[mixture]
        covariance[at] = part.covariance[mixture] * (k[mixture] ** 2)[:, None, None]
        tau2[0, at] = part.tau2[mixture] * k[mixture] ** 2
        loglik[idx] = part.loglik - n * np.log(k)
        probability[:, idx], prior[idx], omega[idx] = part.probability, part.prior, part.omega * k**2
        iterations[idx] = em.iterations
        finite = np.isfinite(betas[:, idx]).all(axis=0) & np.isfinite(covariance[idx]).all(axis=(1, 2))
        finite &= np.isfinite(tau2[0, idx]) & np.isfinite(probability[:, idx]).all(axis=0) & np.isfinite(omega[idx])
        outcome[idx[~finite | (part.status == NOT_CONVERGED)]] = NOT_CONVERGED
    bad = outcome != OK
    betas[:, bad] = tau2[:, bad] = probability[:, bad] = np.nan
    covariance[bad] = np.nan
    loglik[bad] = prior[bad] = omega[bad] = np.nan
    fit = MixedBlock(betas, covariance, tau2, outcome, loglik, iterations)
    return OutlierBlock(fit, probability, prior, omega)


@dataclass
class _ECMState:
    """The ECM estimates of v voxels in their own units: mixture (prior > 0) or none (prior = 0)."""

    gamma: NDArray  # (v, r) coefficients on the basis Q
    tau2: NDArray  # (v,) ML
    omega: NDArray  # (v,)
    prior: NDArray  # (v,)
    probability: NDArray  # (n, v)
    iterations: NDArray  # (v,)
    status: NDArray  # (v,) OK or NOT_CONVERGED


def _ecm(design: DesignFactor, Y: NDArray, S: NDArray, betas0: NDArray, tau20: NDArray, max_iter: int, tol: float):
    """Step 2 of the module's docstring for the voxels `Y`, `S` (n, v), from the plain fit's `betas0`, `tau20`."""
    n, v = Y.shape
    Q = design.basis
    collapse = 1.0 / (10 * n)
    gamma0 = (Q.T @ (design.X @ betas0)).T
    tau2_rob = _robust_tau2(Y - Q @ gamma0.T, S)
    w_min = SPREAD_MIN * (tau2_rob + S.max(axis=0))
    gamma1, tau21 = _start(Q, Y, S, gamma0, tau2_rob)
    state = _ECMState(
        gamma=gamma1,
        tau2=tau21,
        omega=w_min.copy(),
        prior=np.full(v, _PRIOR_START),
        probability=np.zeros((n, v)),
        iterations=np.zeros(v, dtype=np.int32),
        status=np.full(v, OK, dtype=np.int8),
    )
    act = np.arange(v)
    g, t, w_, p = state.gamma.copy(), state.tau2.copy(), state.omega.copy(), state.prior.copy()
    for _ in range(max_iter):
        if not act.size:
            break
        y, s = Y[:, act], S[:, act]
        state.iterations[act] += 1
        resid = y - Q @ g.T
        r = _responsibilities(resid, s + t, s + t + w_, p)
        new_p = np.minimum(r.mean(axis=0), PRIOR_MAX)
        weights = (1 - r) / (s + t) + r / (s + t + w_)
        new_g = _wls(Q, y, weights)
        resid = y - Q @ new_g.T
        new_t, new_w = _variance_step(resid, s, r, t, w_, w_min[act])
        gone = new_p < collapse  # no outlier population: the plain fit
        done = (
            (np.abs(new_p - p) <= tol)
            & (np.abs(new_g - g).max(axis=1) <= tol * np.sqrt(t + 1))
            & (np.abs(new_t - t) <= tol * (t + 1))
            & (np.abs(new_w - w_) <= tol * (w_ + t + 1))
        ) | gone
        state.probability[:, act] = r
        state.gamma[act], state.tau2[act], state.omega[act], state.prior[act] = new_g, new_t, new_w, new_p
        at = act[gone]
        state.prior[at] = state.omega[at] = 0.0
        state.probability[:, at] = 0.0
        state.gamma[at], state.tau2[at] = gamma0[at], tau20[at]
        keep = ~done
        act, g, t, w_, p = act[keep], new_g[keep], new_t[keep], new_w[keep], new_p[keep]
    state.status[act] = NOT_CONVERGED
    return state


def _start(Q: NDArray, Y: NDArray, S: NDArray, gamma0: NDArray, tau2_rob: NDArray) -> tuple[NDArray, NDArray]:
    """The ECM's start (coefficients (v, r) and tau2 (v,)) without the subjects beyond `START_REJECT` robust
    standard deviations from the median residual of the plain fit: weighted least squares of the others, and
    tau2 by the moment estimate ``sum (e_i^2 - s_i^2) / (m - r)`` over them (m of them), at least 0; the plain
    fit where fewer than r + 2 would remain."""
    n, r = Q.shape
    resid = Y - Q @ gamma0.T
    keep = np.abs(resid - np.median(resid, axis=0)) <= START_REJECT * np.sqrt(S + tau2_rob)
    m = keep.sum(axis=0)
    enough = m >= r + 2
    weights = np.where(keep | ~enough, 1.0 / (S + tau2_rob), 0.0)
    gamma = _wls(Q, Y, weights)
    resid = Y - Q @ gamma.T
    moment = np.where(keep, resid * resid - S, 0.0).sum(axis=0) / np.maximum(m - r, 1)
    return np.where(enough[:, None], gamma, gamma0), np.where(enough, np.maximum(moment, 0.0), tau2_rob)


def _robust_tau2(resid: NDArray, S: NDArray) -> NDArray:
    """tau2 (v,) that outliers do not inflate: the squared scale of the residuals by their median absolute
    deviation (1.4826 median |e - median e|, the normal's standard deviation; centred, since outliers on one
    side move the plain fit), less the median first-level variance, at least 0."""
    scale = 1.4826 * np.median(np.abs(resid - np.median(resid, axis=0)), axis=0)
    return np.maximum(0.0, scale**2 - np.median(S, axis=0))


def _responsibilities(resid: NDArray, v_in: NDArray, v_out: NDArray, prior: NDArray) -> NDArray:
    """Each subject's posterior probability of the outlier population (E-step), in logs."""
    e2 = resid * resid
    log_in = np.log1p(-prior) - 0.5 * (np.log(v_in) + e2 / v_in)
    log_out = np.log(prior) - 0.5 * (np.log(v_out) + e2 / v_out)
    return np.exp(log_out - np.logaddexp(log_in, log_out))


def _wls(Q: NDArray, y: NDArray, weights: NDArray) -> NDArray:
    """Coefficients (v, r) on the basis Q of the weighted least-squares fit of `y` (n, v) with `weights`."""
    n, r = Q.shape
    M = np.einsum("iv,ia,ib->vab", weights, Q, Q)
    return np.linalg.solve(M, ((weights * y).T @ Q)[:, :, None])[:, :, 0]


def _expected_loglik(resid2, s, r, t, w) -> NDArray:
    """The expected complete-data log-likelihood's variance part (v,), less constants."""
    v_in, v_out = s + t, s + t + w
    return -0.5 * ((1 - r) * (np.log(v_in) + resid2 / v_in) + r * (np.log(v_out) + resid2 / v_out)).sum(axis=0)


def _variance_step(resid, s, r, t, w, w_min) -> tuple[NDArray, NDArray]:
    """One projected Newton (or Fisher-scoring) step on tau2 >= 0, omega >= `w_min` of the expected complete-data
    log-likelihood, halved until it rises by Armijo's rule; unchanged where no step rises."""
    e2 = resid * resid
    v_in, v_out = s + t, s + t + w
    a, b = 1 - r, r
    out_part = b * (e2 - v_out) / v_out**2
    score = 0.5 * np.stack([(a * (e2 - v_in) / v_in**2 + out_part).sum(0), out_part.sum(0)])  # (2, v)
    h_tw = (b * (0.5 * v_out - e2) / v_out**3).sum(0)
    hess = np.array([[(a * (0.5 * v_in - e2) / v_in**3).sum(0) + h_tw, h_tw], [h_tw, h_tw]])  # (2, 2, v)
    f_tw = 0.5 * (b / v_out**2).sum(0)
    fisher = np.array([[0.5 * (a / v_in**2).sum(0) + f_tw, f_tw], [f_tw, f_tw]])
    x = np.stack([t, w - w_min])  # (the bounds at 0)
    free = (x > 0) | (score > 0)  # the bound constraints that are not active
    A = np.where((-hess[0, 0] > 0) & (hess[0, 0] * hess[1, 1] - hess[0, 1] ** 2 > 0), -hess, fisher)
    step = _solve_free(A, score, free)
    base = _expected_loglik(e2, s, r, t, w)
    new = x.copy()
    pending = np.arange(t.size)
    alpha = 1.0
    for _ in range(_HALVINGS):
        trial = np.maximum(0.0, x[:, pending] + alpha * step[:, pending])
        trial_w = w_min[pending] + trial[1]
        gain = _expected_loglik(e2[:, pending], s[:, pending], r[:, pending], trial[0], trial_w) - base[pending]
        rise = np.einsum("kv,kv->v", score[:, pending], trial - x[:, pending])
        ok = (gain >= _ARMIJO * rise) & (gain >= 0)
        new[:, pending[ok]] = trial[:, ok]
        pending = pending[~ok]
        if not pending.size:
            break
        alpha *= 0.5
    return new[0], w_min + new[1]


def _solve_free(A: NDArray, score: NDArray, free: NDArray) -> NDArray:
    """``A^-1 score`` (2, v) on the free coordinates (0 on the others), A (2, 2, v) positive definite."""
    both = free[0] & free[1]
    det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    step = np.zeros_like(score)
    step[0] = np.where(both, (A[1, 1] * score[0] - A[0, 1] * score[1]) / det, score[0] / A[0, 0])
    step[1] = np.where(both, (A[0, 0] * score[1] - A[1, 0] * score[0]) / det, score[1] / A[1, 1])
    step[0] = np.where(free[0], step[0], 0.0)
    step[1] = np.where(free[1], step[1], 0.0)
    return np.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class _Final:
    betas: NDArray  # (p, v)
    covariance: NDArray  # (v, p, p)
    tau2: NDArray  # (v,)
    omega: NDArray
    prior: NDArray
    probability: NDArray
    loglik: NDArray
    status: NDArray


def _final(design: DesignFactor, Y: NDArray, S: NDArray, em: _ECMState) -> _Final:
    """Steps 3 and 4 of the module's docstring: tau2 by REML given the responsibilities, the GLS fit there, and
    the mixture's log-likelihood at the estimate, for the voxels with an outlier population (prior > 0)."""
    n, v = Y.shape
    p = design.n_columns
    status = em.status.copy()
    tau2 = np.zeros(v)
    betas, covariance = np.full((p, v), np.nan), np.full((v, p, p), np.nan)
    mix = np.flatnonzero((em.prior > 0) & (status == OK))
    if mix.size:
        r, w, y, s = em.probability[:, mix], em.omega[mix], Y[:, mix], S[:, mix]
        t, ok = _reml_given(design.basis, y, s, r, w, em.tau2[mix])
        status[mix[~ok]] = NOT_CONVERGED
        tau2[mix] = t
        weights = (1 - r) / (s + t) + r / (s + t + w)
        M = np.einsum("iv,ia,ib->vab", weights, design.basis, design.basis)
        Minv = np.linalg.inv(M)
        gamma = np.einsum("vab,vb->va", Minv, (weights * y).T @ design.basis)
        B = design.basis_pinv
        betas[:, mix] = B @ gamma.T
        covariance[mix] = np.einsum("ia,vab,jb->vij", B, Minv, B, optimize=True)
        em.gamma[mix] = gamma
    tau2_all = np.where(em.prior > 0, tau2, em.tau2)  # (where prior is 0 the caller keeps the plain fit)
    resid = Y - design.basis @ em.gamma.T
    v_in = S + tau2_all
    e2 = resid * resid
    log_in = np.log1p(-em.prior) - 0.5 * (np.log(v_in) + e2 / v_in)
    log_out = np.log(em.prior) - 0.5 * (np.log(v_in + em.omega) + e2 / (v_in + em.omega))
    loglik = (np.logaddexp(log_in, log_out) - 0.5 * np.log(2 * np.pi)).sum(axis=0)
    return _Final(betas, covariance, tau2, em.omega, em.prior, em.probability, loglik, status)


def _reml_given(Q: NDArray, y, s, r, w, start) -> tuple[NDArray, NDArray]:
    """tau2 (v,) maximising the restricted log-likelihood given the responsibilities `r` and omega `w` (step 3),
    and whether it was found (a bracket and its convergence)."""
    v = y.shape[1]
    tau2 = np.zeros(v)
    found = np.ones(v, dtype=bool)
    at0 = _reml_score(Q, y, s, r, w, np.zeros(v))
    act = np.flatnonzero(at0 > 0)
    if not act.size:
        return tau2, found
    lo, f_lo = np.zeros(act.size), at0[act]
    hi = np.maximum(2 * start[act], 1.0)
    f_hi = _reml_score(Q, y[:, act], s[:, act], r[:, act], w[act], hi)
    for _ in range(_BRACKET_DOUBLINGS):  # an upper end where the score is negative
        up = f_hi > 0
        if not up.any():
            break
        lo[up], f_lo[up] = hi[up], f_hi[up]
        hi[up] *= 2
        sub = act[up]
        f_hi[up] = _reml_score(Q, y[:, sub], s[:, sub], r[:, sub], w[sub], hi[up])
    found[act[~(f_hi <= 0)]] = False
    side = np.zeros(act.size, dtype=np.int8)  # Illinois: the end kept twice in a row has its value halved
    x = lo.copy()
    for _ in range(_REML_ITER):
        live = np.flatnonzero((hi - lo > _REML_TOL * (hi + 1)) & (f_hi <= 0))
        if not live.size:
            break
        x[live] = (lo[live] * f_hi[live] - hi[live] * f_lo[live]) / (f_hi[live] - f_lo[live])
        bad = ~((x[live] > lo[live]) & (x[live] < hi[live]))
        x[live[bad]] = 0.5 * (lo[live[bad]] + hi[live[bad]])
        sub = act[live]
        f = _reml_score(Q, y[:, sub], s[:, sub], r[:, sub], w[sub], x[live])
        pos = f > 0
        up, down = live[pos], live[~pos]
        lo[up], f_lo[up] = x[up], f[pos]
        f_hi[up] = np.where(side[up] == 1, 0.5 * f_hi[up], f_hi[up])
        side[up] = 1
        hi[down], f_hi[down] = x[down], f[~pos]
        f_lo[down] = np.where(side[down] == -1, 0.5 * f_lo[down], f_lo[down])
        side[down] = -1
    found[act[hi - lo > _REML_TOL * 1e3 * (hi + 1)]] = False
    tau2[act] = 0.5 * (lo + hi)
    return tau2, found


def _reml_score(Q: NDArray, y, s, r, w, t) -> NDArray:
    """The derivative in tau2 of the restricted log-likelihood given r and omega (step 3), at `t` (v,)."""
    v_in, v_out = s + t, s + t + w
    weights = (1 - r) / v_in + r / v_out
    d = (1 - r) / v_in**2 + r / v_out**2
    M = np.einsum("iv,ia,ib->vab", weights, Q, Q)
    Minv = np.linalg.inv(M)
    gamma = np.einsum("vab,vb->va", Minv, (weights * y).T @ Q)
    resid = y - Q @ gamma.T
    h = np.einsum("ia,vab,ib->iv", Q, Minv, Q)
    return 0.5 * ((d * (h + resid * resid)).sum(axis=0) - weights.sum(axis=0))
