"""Autoregressive noise, per voxel and exact: AR(p) estimated from OLS residuals and removed by prewhitening.

For each voxel, AR(p) coefficients come from the autocovariances of its OLS residuals, corrected for the
bias that the fit itself puts in them (Worsley et al. 2002, NeuroImage 15:1-15, as in fmristat: the
expected residual autocovariances are ``M v`` with ``M_ij = trace(R D_i R D_j)``, R the residual-forming
matrix and D_j the symmetric lag-j shift, so ``v = M^-1 r``), then Yule-Walker by Levinson-Durbin with
reflection coefficients held inside (-0.99, 0.99) so every model is stationary. No binning of coefficients.

The whitening W of a voxel is exact: its first p scans by the inverse Cholesky factor of the stationary
covariance of p consecutive values, the others by the AR filter, so that ``W'W`` is the inverse of the
AR correlation matrix. With a design X shared by all voxels, ``X'W'WX`` is a per-voxel weighted sum of a
few fixed Gram matrices of lagged rows of X, and ``X'W'Wy`` one matrix product with the doubly filtered
data: the n x V work stays a few matrix products, and the p x p algebra per voxel is batched.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .design import DesignFactor

__all__ = ["bias_matrix", "estimate_ar", "ar_whitening", "fit_ar_block", "ARBlock"]

MAX_REFLECTION = 0.99


def _shift_sum(A: NDArray, j: int) -> NDArray:
    """D_j A for the symmetric lag-j shift D_j (identity for j = 0), without forming D_j."""
    if j == 0:
        return A.copy()
    out = np.zeros_like(A)
    out[j:] += A[:-j]
    out[:-j] += A[j:]
    return out


def bias_matrix(design: DesignFactor, order: int) -> NDArray[np.float64]:
    """Worsley's (p+1) x (p+1) matrix M: expected residual autocovariances = M @ true autocovariances.

    ``M_ij = trace(R D_i R D_j) / (2 if i > 0 else 1)`` with ``R = I - QQ'``, expanded into terms of the
    design's basis Q (n x r) so that no n x n matrix is formed: O(p^2 n r) time, O(p n r) memory.
    """
    n, Q = design.n_scans, design.basis
    DQ = [_shift_sum(Q, j) for j in range(order + 1)]
    QDQ = [Q.T @ dq for dq in DQ]
    M = np.empty((order + 1, order + 1))
    for i in range(order + 1):
        for j in range(order + 1):
            dd = 0.0 if i != j else (n if i == 0 else 2.0 * (n - i))  # trace(D_i D_j)
            M[i, j] = (dd - 2.0 * np.sum(DQ[i] * DQ[j]) + np.sum(QDQ[i] * QDQ[j])) / (2.0 if i > 0 else 1.0)
    return M


def _lagged_products(E: NDArray, order: int) -> NDArray[np.float64]:
    """(order+1, v): sum_t e_t e_{t+k} for k = 0..order."""
    return np.stack([np.einsum("tv,tv->v", E[: E.shape[0] - k], E[k:]) for k in range(order + 1)])


def estimate_ar(residual_autocov: NDArray, M_inv: NDArray) -> tuple[NDArray, NDArray, NDArray]:  # noqa: D417
    """Bias-corrected Yule-Walker for each voxel.

    Returns ``(phi (v, p), rho (v, p+1) model autocorrelations, gamma0 (v,))`` where gamma0 is the variance
    of the AR process for unit innovation variance.
    """
    v = M_inv @ residual_autocov  # (p+1, v) corrected autocovariances
    p = v.shape[0] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_in = (v / v[0]).T  # (V, p+1)
    rho_in = np.where(np.isfinite(rho_in), rho_in, 0.0)
    n_vox = rho_in.shape[0]
    phi = np.zeros((n_vox, p))  # phi[:, j - 1] is the lag-j coefficient
    rho = np.ones((n_vox, p + 1))  # the fitted model's autocorrelations
    err = np.ones(n_vox)
    for k in range(1, p + 1):
        past = np.einsum("vj,vj->v", phi[:, : k - 1], rho[:, k - 1 : 0 : -1])  # sum_j phi_j rho_{k-j}
        kappa = np.clip((rho_in[:, k] - past) / err, -MAX_REFLECTION, MAX_REFLECTION)
        rho[:, k] = kappa * err + past  # the input rho_k unless kappa was clipped
        if k > 1:
            phi[:, : k - 1] = phi[:, : k - 1] - kappa[:, None] * phi[:, k - 2 :: -1]
        phi[:, k - 1] = kappa
        err = err * (1.0 - kappa**2)
    return phi, rho, 1.0 / err


def ar_whitening(phi: NDArray, rho: NDArray, gamma0: NDArray) -> NDArray[np.float64]:
    """(v, p, p) inverse Cholesky factors whitening the first p scans of each voxel."""
    p = phi.shape[1]
    idx = np.abs(np.arange(p)[:, None] - np.arange(p)[None, :])
    cov = rho[:, idx] * gamma0[:, None, None]
    return np.linalg.inv(np.linalg.cholesky(cov))


def _whiten(Z: NDArray, phi: NDArray, L_inv: NDArray) -> NDArray:
    """W z for each column z of Z (n, v): the AR filter from scan p on, L^-1 on the first p scans."""
    p = phi.shape[1]
    out = np.empty_like(Z)
    np.multiply(phi[:, 0], Z[p - 1 : Z.shape[0] - 1], out=out[p:])
    for i in range(2, p + 1):
        out[p:] += phi[:, i - 1] * Z[p - i : Z.shape[0] - i]
    np.subtract(Z[p:], out[p:], out=out[p:])
    out[:p] = np.einsum("vab,bv->av", L_inv, Z[:p])
    return out


def _whiten_transpose(Z: NDArray, phi: NDArray, L_inv: NDArray) -> NDArray:
    """W' z for each column (the adjoint of :func:`_whiten`)."""
    p = phi.shape[1]
    out = np.zeros_like(Z)
    out[p:] = Z[p:]
    for i in range(1, p + 1):
        out[p - i : Z.shape[0] - i] -= phi[:, i - 1] * Z[p:]
    out[:p] += np.einsum("vba,bv->av", L_inv, Z[:p])
    return out


class ARBlock:
    """What the AR fit of one design needs, computed once: bias matrix and lagged Gram matrices.

    The algebra runs in the coordinates of the design's orthonormal basis Q (X = Q T): the per-voxel
    matrices Q'V^-1 Q are as well conditioned as the noise model allows, whatever the scaling of X, and
    rank-deficient designs need no special case (betas = T^+ (Q'V^-1 Q)^-1 Q'V^-1 y, the minimum-norm
    solution, as for OLS).
    """

    def __init__(self, design: DesignFactor, order: int):
        if order < 1:
            raise ValueError("order must be at least 1")
        if design.n_scans <= 2 * order + design.rank:
            raise ValueError("too few scans for this AR order")
        self.design, self.order = design, order
        Q, n, p, r = design.basis, design.n_scans, order, design.rank
        self.M_inv = np.linalg.pinv(bias_matrix(design, order))
        # rows t >= p: (sum_i a_i q_{t-i})(sum_j a_j q_{t-j})' = sum_ij a_i a_j G_ij, flattened for one GEMM
        G = np.stack([[Q[p - i : n - i].T @ Q[p - j : n - j] for j in range(p + 1)] for i in range(p + 1)])
        self.G = G.reshape((p + 1) ** 2, r * r)
        # first p rows: sum_ab (Gamma^-1)_ab q_a q_b'
        self.H = np.einsum("ak,bl->abkl", Q[:p], Q[:p]).reshape(p * p, r * r)


def fit_ar_block(block: ARBlock, Y: NDArray, weights: list[NDArray]):
    """AR(p) fit of one block Y (n, v) in float64: betas (pc, v), whitened RSS (v,), phi (v, p), for each
    contrast weight matrix w (q, pc) (effect (q, v), unscaled covariance w (X'V^-1X)^+ w' as (v, q, q)),
    and the OLS RSS (v,)."""
    design, p = block.design, block.order
    Q, r = design.basis, design.rank
    Y = np.asarray(Y, dtype=np.float64)
    E = Y - Q @ (Q.T @ Y)
    r_lag = _lagged_products(E, p)
    ols_rss = r_lag[0].copy()
    phi, rho, gamma0 = estimate_ar(r_lag, block.M_inv)
    exact = ols_rss <= (Y.shape[0] * np.finfo(float).eps) ** 2 * np.einsum("tv,tv->v", Y, Y)
    phi[exact], rho[exact], gamma0[exact] = 0.0, np.eye(p + 1)[0], 1.0  # rounding-level residuals: white
    L_inv = ar_whitening(phi, rho, gamma0)

    v = Y.shape[1]
    a = np.concatenate([np.ones((v, 1)), -phi], axis=1)  # filter taps (v, p+1)
    gram = (a[:, :, None] * a[:, None, :]).reshape(v, -1) @ block.G
    gamma_inv = (L_inv[:, :, :, None] * L_inv[:, :, None, :]).sum(axis=1)  # L'L = Gamma^-1; p is small
    gram += gamma_inv.reshape(v, -1) @ block.H
    gram = gram.reshape(v, r, r)
    wy = _whiten(Y, phi, L_inv)
    rhs = (Q.T @ _whiten_transpose(wy, phi, L_inv)).T  # (v, r)
    wqs = [w @ design.basis_pinv for w in weights]  # contrasts in basis coordinates, (q, r) each
    # one batched solve for the coefficients and every contrast: [rhs | wq'] -> gram^-1 [rhs | wq']
    cols = np.concatenate([rhs[:, :, None]] + [np.broadcast_to(wq.T, (v,) + wq.T.shape) for wq in wqs], axis=2)
    sol = np.linalg.solve(gram, cols)
    coords = sol[:, :, 0].T
    # whitened RSS = ||Wy||^2 - coords . Q'W'Wy; where that subtraction loses more than 5 of 16 digits (a
    # near-exact fit), it is recomputed from explicit whitened residuals
    wyy = np.einsum("tv,tv->v", wy, wy)
    rss = wyy - np.einsum("kv,vk->v", coords, rhs)
    redo = np.flatnonzero(rss * 1e5 <= wyy)
    if redo.size:
        resid = _whiten(Y[:, redo] - Q @ coords[:, redo], phi[redo], L_inv[redo])
        rss[redo] = np.einsum("tv,tv->v", resid, resid)
    rss[rss <= (Y.shape[0] * np.finfo(float).eps) ** 2 * wyy] = 0.0  # exact fit, to rounding
    betas = design.basis_pinv @ coords
    contrasts, k = [], 1
    for w, wq in zip(weights, wqs):
        cov = np.einsum("qk,vkr->vqr", wq, sol[:, :, k : k + wq.shape[0]])  # wq gram^-1 wq'
        contrasts.append((w @ betas, cov))
        k += wq.shape[0]
    return betas, rss, phi, contrasts, ols_rss
