"""One noise covariance for all voxels, estimated by ReML as SPM12 does ('AR(1)' in SPM, voxfit's ``ar1-global``).

SPM models serial correlations with two covariance components (spm_Ce('ar', n, 0.2)): ``Q +- a dQ/da`` at
``a = 0.2``, where ``Q = toeplitz(a^k)`` with powers below 1e-4 set to zero (spm_Q) and ``dQ/da`` is a
forward difference with step ``exp(-8)`` (spm_diff). Their weights h are ReML estimates from the
sample covariance of the data pooled over voxels, with the design's fixed effects projected out
(spm_reml): Fisher scoring on the ReML objective, with a weak shrinkage prior (precision ``exp(-8)`` about
0), steps regularised by a matrix exponential (spm_dx; the step's time constant adapts as SPM's does), and
SPM's stopping rule (predicted improvement below 0.1). Reproducing SPM's iteration, not just the maximum,
is what makes the estimate equal to SPM's: SPM stops before full convergence.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import linalg

from .design import orthonormal_basis

__all__ = ["ar_components", "reml", "whitening_matrix"]

_DIFF_STEP = np.exp(-8.0)  # spm_diff's step


def _ar_correlation(a: float, n: int) -> NDArray[np.float64]:
    """spm_Q: the AR(1) correlation ``a^|i-j|`` with entries of the filter inverse at or below 1e-4 dropped."""
    column = a ** np.arange(n, dtype=float)
    column[np.abs(column) <= 1e-4] = 0.0
    return linalg.toeplitz(column)


def ar_components(n: int, a: float = 0.2) -> list[NDArray[np.float64]]:
    """SPM's two AR covariance components for n scans: ``Q - a dQ/da`` and ``Q + a dQ/da``."""
    Q = _ar_correlation(a, n)
    dQ = (_ar_correlation(a + _DIFF_STEP, n) - Q) / _DIFF_STEP
    return [Q - a * dQ, Q + a * dQ]


def _regularised_step(J: NDArray, g: NDArray, t: float) -> NDArray[np.float64]:
    """spm_dx: ``(expm(tau J) - I) J^-1 g`` with ``tau = exp(t - log|det J| / m)``, from the exponential of
    the augmented matrix ``[[0, 0], [tau g, tau J]]`` (no inverse of J needed)."""
    m = g.size
    tau = np.exp(t - np.linalg.slogdet(J)[1] / m)
    if tau > np.exp(16.0):
        return -np.linalg.pinv(J) @ g
    A = np.zeros((m + 1, m + 1))
    A[1:, 0] = tau * g
    A[1:, 1:] = tau * J
    with np.errstate(over="ignore", invalid="ignore"):  # (a step that overflows: reml starts again, as spm_reml)
        return linalg.expm(A)[1:, 0]


def reml(
    YY: NDArray,
    X: NDArray,
    Q: list[NDArray],
    *,
    max_iter: int = 32,
    t: float = 4.0,
    prior_precision: float = np.exp(-8.0),
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """ReML weights h of covariance components: ``V = sum_i h_i Q_i`` for the sample covariance `YY`
    (n x n, one sample) of data with fixed effects `X`. Returns ``(V, h, iterations)``.

    SPM's spm_reml: h starts at 1 for each component whose diagonal is not already covered by an earlier
    one, 0 otherwise; each step is Fisher scoring regularised as :func:`_regularised_step`; iteration stops
    when the predicted improvement of the objective falls below 0.1.
    """
    n, m = YY.shape[0], len(Q)
    Xo = orthonormal_basis(X)
    h = np.zeros(m)
    covered = np.zeros(n, dtype=bool)
    for i, q in enumerate(Q):
        diag = np.diag(q) != 0
        h[i] = float(np.any(diag & ~covered))
        covered |= diag
    previous = np.inf
    for k in range(1, max_iter + 1):  # noqa: B007 (k is the count reported)
        C = sum(hi * q for hi, q in zip(h, Q))
        iC = np.linalg.inv(C)
        iCX = iC @ Xo
        P = iC - iCX @ np.linalg.solve(Xo.T @ iCX, iCX.T)
        PQ = [P @ q for q in Q]
        U = np.eye(n) - P @ YY
        grad = np.array([-0.5 * np.sum(pq * U.T) for pq in PQ])  # -tr(PQ_i U)/2
        info = np.array([[-0.5 * np.sum(a * b.T) for b in PQ] for a in PQ])  # -tr(PQ_i PQ_j)/2
        grad -= prior_precision * h
        info -= prior_precision * np.eye(m)
        step = _regularised_step(info, grad, t)
        with np.errstate(over="ignore", invalid="ignore"):  # (a step not finite: started again just below)
            h = h + step
            predicted = float(grad @ step)
        t = max(t - 1.0, -8.0) if predicted > previous else min(t + 0.25, 8.0)
        if not np.isfinite(predicted) or np.abs(step).max() > 1e6:  # SPM: start again, prior twice as tight
            if prior_precision > 1e6:
                raise FloatingPointError("ReML did not converge")
            return reml(YY, X, Q, max_iter=max_iter, t=t, prior_precision=2 * prior_precision)
        previous = predicted
        if predicted < 0.1:
            break
    V = sum(hi * q for hi, q in zip(h, Q))
    precision = -info  # SPM's Ph = -dFdhh (the prior's precision included)
    if m > 1 and t > -4 and (np.linalg.eigvalsh(V).min() < 0 or np.log(np.linalg.cond(precision, 1)) > 16):
        return _reduced(YY, X, Q, h, precision, prior_precision, max_iter, t)
    return V, h, k


def _reduced(YY, X, Q, h, precision, prior_precision, max_iter, t):
    """spm_reml's Bayesian model reduction (for an indefinite V or an ill-conditioned posterior precision, as
    with FAST's many components): each component in turn is dropped where its removal raises the log evidence
    by more than 2 (spm_log_evidence_reduce, prior mean 0), and ReML runs again on the components kept, with the
    prior twice as tight."""
    m = len(Q)
    qE, qC = h.copy(), np.linalg.inv(precision)
    pC = np.eye(m) / prior_precision
    kept = []
    for i in range(m):
        rC = pC.copy()
        rC[i, :] = 0.0
        rC[:, i] = 0.0
        F, sE, sC = _log_evidence_reduce(qE, qC, pC, rC)
        if F > 2:
            qE, qC, pC = sE, sC, rC
        else:
            kept.append(i)
    V, h_kept, k = reml(YY, X, [Q[i] for i in kept], max_iter=max_iter, t=t, prior_precision=2 * prior_precision)
    h = np.zeros(m)
    h[kept] = h_kept
    return V, h, k


def _spm_inv(A: NDArray, tol: float = 1e-8) -> NDArray:
    """spm_inv with a tolerance: ``inv(A + tol I)``."""
    return np.linalg.inv(A + tol * np.eye(A.shape[0]))


def _log_evidence_reduce(qE, qC, pC, rC):
    """spm_log_evidence_reduce for prior and reduced means 0: the change in log evidence F of the reduced prior
    covariance rC, and the reduced posterior mean and covariance."""
    U = np.eye(pC.shape[0])[:, np.abs(np.diag(pC)) > 1e-6 * np.abs(np.diag(pC)).max()]  # spm_svd of a diagonal
    qE_u, qC_u, pC_u, rC_u = U.T @ qE, U.T @ qC @ U, U.T @ pC @ U, U.T @ rC @ U
    qP, pP, rP = _spm_inv(qC_u), _spm_inv(pC_u), _spm_inv(rC_u)
    sC = _spm_inv(qP + rP - pP)
    pC_u = _spm_inv(pP)
    sE = qP @ qE_u
    F = 0.5 * (_spm_logdet(rP @ qP @ sC @ pC_u) - (qE_u @ qP @ qE_u - sE @ sC @ sE))
    return F, U @ (sC @ sE), U @ sC @ U.T


def _spm_logdet(C: NDArray) -> float:
    """spm_logdet: the log determinant over the rows with a non-zero diagonal, by Cholesky for a symmetric
    matrix, else the sum of the logs of the singular values between 1e-16 and 1e16."""
    keep = np.flatnonzero(np.diag(C))
    C = C[np.ix_(keep, keep)]
    if np.abs(C - C.T).max() <= 1e-16:
        try:
            return 2.0 * float(np.log(np.diag(np.linalg.cholesky(C))).sum())
        except np.linalg.LinAlgError:
            pass
    s = np.linalg.svd(C, compute_uv=False)
    return float(np.log(s[(s > 1e-16) & (s < 1e16)]).sum())


def whitening_matrix(V: NDArray) -> NDArray[np.float64]:
    """SPM's W: V scaled to trace n, then the symmetric ``V^-1/2``, with entries below 1e-6 set to zero."""
    n = V.shape[0]
    V = V * (n / np.trace(V))
    evals, evecs = np.linalg.eigh(V)
    if evals.min() <= 0:
        raise FloatingPointError("the ReML covariance is not positive definite")
    W = (evecs / np.sqrt(evals)) @ evecs.T
    W[np.abs(W) <= 1e-6] = 0.0
    return W
