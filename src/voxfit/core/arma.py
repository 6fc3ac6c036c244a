"""ARMA(1,1) noise per voxel, estimated by REML over a grid as AFNI's 3dREMLfit does (``--noise arma11``).

The noise ``x_t = a x_{t-1} + e_t + b e_{t-1}`` has autocorrelations ``rho_k = lambda a^(k-1)`` (k >= 1) with
``lambda = (a + b)(1 + a b) / (1 + 2 a b + b^2)``. 3dREMLfit scans a grid of (a, b): a in [0, MAXa], b in
[-MAXb, MAXb], MAXa = MAXb = 0.8 and 2^3 divisions of each range by default (-Grid 3), keeping positive lag-1
correlations (a + b >= 0, its default -POScor), and picks for each voxel the point of largest restricted
likelihood. voxfit does the same, then refines each voxel's point by a parabola through the criterion at the
grid's neighbouring points along a and along b (kept only where it improves the criterion).

Exact whitening without n x n matrices: after the AR filter ``z_0 = x_0``, ``z_t = x_t - a x_{t-1}``, the
vector z has a tridiagonal covariance (``var z_0 = gamma_0``, ``cov(z_0, z_1) = gamma_1 - a gamma_0``, then
the MA(1)'s ``1 + b^2`` and ``b``; zero elsewhere, since ``gamma_k = a gamma_{k-1}`` beyond lag 1), whose
Cholesky factor is a scalar recursion; both are recursions over the scans, vectorised over voxels. The REML
criterion (sigma^2 profiled out) is ``(n - r) log RSS_w + log|C| + log|Q'C^-1 Q|`` for the design's orthonormal
basis Q. Every grid point's whitening is shared by all voxels: one filter of the block and one product with
the whitened basis per grid point.

Degrees of freedom: 3dREMLfit refers each t to ``n - rank``, as if (a, b) were known; that is liberal (0.064
for 0.05 on ARMA(0.6, 0.3) noise, 200 scans, 10-scan blocks). voxfit refers it to Satterthwaite's dof, which
add the variance of the contrast's log variance through the (a, b) estimate to the chi-square's 2 / (n - rank)
(see ``_estimation_spread``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .design import DesignFactor

__all__ = [
    "ARMA_GRID",
    "ARMABlockFit",
    "ARMAEstimate",
    "estimate_arma",
    "arma_autocorrelations",
    "arma_grid",
    "arma_whiten",
    "fit_arma_block",
]

MAX_A = 0.8  # 3dREMLfit -MAXa default
MAX_B = 0.8  # 3dREMLfit -MAXb default
GRID_LEVEL = 3  # 3dREMLfit -Grid default: 2^3 divisions of each range


def arma_grid(max_a: float = MAX_A, max_b: float = MAX_B, level: int = GRID_LEVEL) -> NDArray[np.float64]:
    """(G, 2) grid points (a, b): a in [0, max_a], b in [-max_b, max_b], 2^level steps each, a + b >= 0."""
    a = np.linspace(0.0, max_a, 2**level + 1)
    b = np.linspace(-max_b, max_b, 2**level + 1)
    A, B = np.meshgrid(a, b, indexing="ij")
    keep = A + B >= -1e-12
    return np.column_stack([A[keep], B[keep]])


ARMA_GRID = arma_grid()


def arma_autocorrelations(a, b, lags: int) -> NDArray[np.float64]:
    """(len(a), lags + 1) autocorrelations of ARMA(1,1) models (a, b) at lags 0..`lags`."""
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    lam = (a + b) * (1.0 + a * b) / (1.0 + 2.0 * a * b + b * b)
    k = np.arange(1, lags + 1)
    return np.column_stack([np.ones(a.size), lam[:, None] * a[:, None] ** (k - 1)])


def _cholesky_terms(a: NDArray, b: NDArray, n: int) -> tuple[NDArray, NDArray]:
    """The tridiagonal Cholesky factor of z's covariance (unit innovations): diagonal l (n, v), subdiagonal m
    (n, v; m[0] unused)."""
    g0 = (1.0 + 2.0 * a * b + b * b) / (1.0 - a * a)
    g1 = (1.0 + a * b) * (a + b) / (1.0 - a * a)
    diag, sub = np.empty((n, a.size)), np.zeros((n, a.size))
    diag[0] = np.sqrt(g0)
    c = g1 - a * g0
    for t in range(1, n):
        sub[t] = c / diag[t - 1]
        diag[t] = np.sqrt(1.0 + b * b - sub[t] ** 2)
        c = b
    return diag, sub


def _cholesky_scalar(a: float, b: float, n: int) -> tuple[NDArray, NDArray]:
    """:func:`_cholesky_terms` for one model, in Python floats (n, 1) each."""
    diag, sub = [np.sqrt((1.0 + 2.0 * a * b + b * b) / (1.0 - a * a))], [0.0]
    c = (1.0 + a * b) * (a + b) / (1.0 - a * a) - a * diag[0] ** 2
    for _ in range(1, n):
        m = c / diag[-1]
        sub.append(m)
        diag.append(np.sqrt(1.0 + b * b - m * m))
        c = b
    return np.array(diag)[:, None], np.array(sub)[:, None]


def arma_whiten(Z: NDArray, a, b) -> tuple[NDArray, NDArray]:
    """``W z`` for each column of Z (n, ...; the last axis runs over voxels, one (a, b) each, or a and b scalars
    shared by all), with ``W'W = C^-1`` exactly; also ``log|C|`` per model (unit innovation variance)."""
    n = Z.shape[0]
    a_, b_ = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    shared = a_.size == 1
    diag, sub = _cholesky_terms(a_, b_, n) if not shared else _cholesky_scalar(float(a_[0]), float(b_[0]), n)
    logdet = 2.0 * np.log(diag).sum(axis=0)
    z = Z.copy()
    z[1:] -= (a_[0] if shared else a_) * Z[:-1]  # z_0 = x_0, z_t = x_t - a x_{t-1}
    if shared:
        diag, sub = diag[:, 0], sub[:, 0]
    out = z  # w_t = (z_t - m_t w_{t-1}) / l_t, in place
    out[0] /= diag[0]
    for t in range(1, n):
        out[t] -= sub[t] * out[t - 1]
        out[t] /= diag[t]
    return out, logdet


@dataclass(frozen=True, eq=False)
class ARMABlockFit:
    """The ARMA(1,1) fit of a block of v voxels: ``betas`` (pc, v), whitened RSS ``rss`` (v,), ``phi`` (v, 2)
    holding each voxel's (a, b), ``contrasts`` as :class:`voxfit.core.ar.ARBlockFit`'s (effect, unscaled
    covariance (v, q, q), dof (v,)), the OLS RSS ``ols_rss`` and total sum of squares ``tss``."""

    betas: NDArray
    rss: NDArray
    phi: NDArray
    contrasts: list[tuple[NDArray, NDArray, NDArray]]
    ols_rss: NDArray
    tss: NDArray


def _criterion_shared(Q: NDArray, Y: NDArray, a: float, b: float) -> NDArray:
    """-2 restricted log-likelihood (up to a constant) of every voxel of Y (n, v) at one (a, b)."""
    n, r = Q.shape
    WQ, logdet = arma_whiten(Q, a, b)
    WY, _ = arma_whiten(Y, a, b)
    Qw, R = np.linalg.qr(WQ)
    proj = Qw.T @ WY
    rss = np.einsum("tv,tv->v", WY, WY) - np.einsum("kv,kv->v", proj, proj)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (n - r) * np.log(np.maximum(rss, 1e-300)) + logdet[0] + 2.0 * np.log(np.abs(np.diag(R))).sum()


def _parabola_step(left: NDArray, mid: NDArray, right: NDArray) -> NDArray:
    """The vertex offset (in grid steps, within +-1/2) of the parabola through three equally spaced values;
    0 where it is not a minimum or a side is missing."""
    curve = left + right - 2.0 * mid
    with np.errstate(invalid="ignore", divide="ignore"):
        step = 0.5 * (left - right) / curve
    return np.where(np.isfinite(step) & (curve > 0), np.clip(step, -0.5, 0.5), 0.0)


@dataclass(frozen=True, eq=False)
class ARMAEstimate:
    """REML estimates for a block: ``refined`` (v, 2) (a, b) after the parabolas, the best grid point
    ``grid_best`` (v, 2) and its criterion ``grid_criterion`` (v,)."""

    refined: NDArray
    grid_best: NDArray
    grid_criterion: NDArray


def estimate_arma(design: DesignFactor, Y: NDArray, grid: NDArray = ARMA_GRID) -> ARMAEstimate:
    """REML estimates (a, b) for the voxels of Y (n, v; float64, finite): the best grid point, refined by
    parabolas along a and along b through the criterion at the neighbouring grid points."""
    Q = design.basis
    crit = np.stack([_criterion_shared(Q, Y, a, b) for a, b in grid])  # (G, v)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    best = np.argmin(crit, axis=0)
    est = grid[best].copy()
    da = np.diff(np.unique(grid[:, 0]))[0]
    db = np.diff(np.unique(grid[:, 1]))[0]
    lookup = np.full((int(round(grid[:, 0].max() / da)) + 3, 2 * int(round(np.abs(grid[:, 1]).max() / db)) + 3), -1)
    ia_all, ib_all = np.rint(grid[:, 0] / da).astype(int) + 1, np.rint(grid[:, 1] / db).astype(int)
    off = (lookup.shape[1] - 1) // 2
    lookup[ia_all, ib_all + off] = np.arange(len(grid))
    ia, ib = ia_all[best], ib_all[best] + off
    cols = np.arange(Y.shape[1])

    def at(di, dj):
        idx = lookup[ia + di, np.clip(ib + dj, 0, lookup.shape[1] - 1)]
        idx = np.where((ib + dj >= 0) & (ib + dj < lookup.shape[1]), idx, -1)
        return np.where(idx >= 0, crit[np.maximum(idx, 0), cols], np.nan)

    mid = crit[best, cols]
    refined = est.copy()
    refined[:, 0] += da * _parabola_step(at(-1, 0), mid, at(1, 0))
    refined[:, 1] += db * _parabola_step(at(0, -1), mid, at(0, 1))
    return ARMAEstimate(refined, est, mid)


def _gls(Q: NDArray, Y: NDArray, est: NDArray):
    """Per-voxel GLS with each voxel's whitening: ``(coords (r, v), rss (v,), gram^-1 (v, r, r), criterion
    (v,))``."""
    n, r = Q.shape
    v = Y.shape[1]
    a, b = est[:, 0], est[:, 1]
    WY, logdet = arma_whiten(Y, a, b)
    WQ, _ = arma_whiten(np.repeat(Q[:, :, None], v, axis=2), a, b)  # (n, r, v)
    gram = np.einsum("tiv,tjv->vij", WQ, WQ)
    rhs = np.einsum("tiv,tv->vi", WQ, WY)
    gram_inv = np.linalg.pinv(gram, hermitian=True)
    coords = np.einsum("vij,vj->iv", gram_inv, rhs)
    resid = WY - np.einsum("tiv,iv->tv", WQ, coords)
    rss = np.einsum("tv,tv->v", resid, resid)
    with np.errstate(divide="ignore", invalid="ignore"):
        crit = (n - r) * np.log(np.maximum(rss, 1e-300)) + logdet + np.linalg.slogdet(gram)[1]
    return coords, rss, gram_inv, crit


def fit_arma_block(design: DesignFactor, Y: NDArray, weights: list[NDArray], grid: NDArray = ARMA_GRID) -> ARMABlockFit:
    """ARMA(1,1) fit of one block Y (n, v; finite): REML estimates of (a, b) per voxel (:func:`estimate_arma`;
    a refined point is kept where its criterion is below the best grid point's), then generalised least squares
    with each voxel's exact whitening; contrasts with Satterthwaite's degrees of freedom (see the module's notes)
    for the contrast weight matrices `weights` (q, pc)."""
    n, Q, r = design.n_scans, design.basis, design.rank
    shift = None
    if design.has_intercept:  # shifting by the mean only moves the constant's estimate, and keeps digits
        shift = Y.mean(axis=0, dtype=np.float64)
        Y = np.subtract(Y, shift, dtype=np.float64)
    else:
        Y = np.asarray(Y, dtype=np.float64)
    coef = Q.T @ Y
    tss = np.einsum("tv,tv->v", Y, Y)  # centred when the design has an intercept (Y was shifted)
    ols_rss = tss - np.einsum("kv,kv->v", coef, coef)
    found = estimate_arma(design, Y, grid)
    est = found.refined
    coords, rss, gram_inv, crit = _gls(Q, Y, est)
    worse = np.flatnonzero(~(crit <= found.grid_criterion + 1e-9 * np.abs(found.grid_criterion)))
    if worse.size:
        est[worse] = found.grid_best[worse]
        coords[:, worse], rss[worse], gram_inv[worse], _ = _gls(Q, Y[:, worse], est[worse])
    if shift is not None:
        coords = coords + np.multiply.outer(Q.T @ np.ones(n), shift)
    betas = design.basis_pinv @ coords
    wqs = [w @ design.basis_pinv for w in weights]  # (q, r) each
    spread = _estimation_spread(Q, Y, est, crit, wqs) if wqs else []
    contrasts = []
    for w, wq, g2 in zip(weights, wqs, spread):
        cov = np.einsum("ai,vij,bj->vab", wq, gram_inv, wq)
        dof = 2.0 / (2.0 / (n - r) + g2)  # Satterthwaite: var(log sigma^2 C) = 2 / nu + var(log C(a, b))
        contrasts.append((w @ betas, cov, dof))
    return ARMABlockFit(betas, rss, est, contrasts, ols_rss, tss)


def _estimation_spread(Q, Y, est, crit, wqs, h: float = 0.02) -> list[NDArray]:
    """For each contrast, ``var(log C(a_hat, b_hat))`` per voxel by the delta method (C = wq gram^-1 wq', its
    trace over q for F): central differences of log C and of the REML criterion along a and along b (steps
    `h`, kept inside the stationary, invertible models), var(a_hat) = 2 / d2crit/da2 (likewise b; their
    covariance left out); 0 where the criterion is not convex along an axis."""
    out = [np.zeros(est.shape[0]) for _ in wqs]
    for axis in range(2):
        step = np.zeros_like(est)
        step[:, axis] = h
        up, down = est + step, est - step
        up[:, 0], down[:, 0] = np.clip(up[:, 0], -0.98, 0.98), np.clip(down[:, 0], -0.98, 0.98)
        up[:, 1], down[:, 1] = np.clip(up[:, 1], -0.98, 0.98), np.clip(down[:, 1], -0.98, 0.98)
        _, _, g_up, c_up = _gls(Q, Y, up)
        _, _, g_down, c_down = _gls(Q, Y, down)
        width = up[:, axis] - down[:, axis]
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = (c_up + c_down - 2.0 * crit) / (0.25 * width**2)
            var = np.where(np.isfinite(curve) & (curve > 0), 2.0 / curve, 0.0)
            for i, wq in enumerate(wqs):
                cu = np.einsum("ai,vij,aj->v", wq, g_up, wq)
                cd = np.einsum("ai,vij,aj->v", wq, g_down, wq)
                slope = (np.log(cu) - np.log(cd)) / width
                out[i] += np.where(np.isfinite(slope), slope**2 * var, 0.0)
    return out
