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
basis Q. The fit itself does not whiten: ``C^-1 = A'T^-1 A`` with A = I - a L
(the AR filter) and ``T = T_0 + E K E'``, T_0 the MA(1)'s Toeplitz covariance ``(1 + b^2) I + b S_1`` and K
its 2 x 2 corner. Every T_0 is diagonal in the same DST-I eigenbasis (eigenvalues ``1 + b^2 + 2 b cos(pi j /
(n + 1))``), so one transform of the data and of the basis (and of their lags) serves every (a, b):
``Q'C^-1 Q``, ``Q'C^-1 y``, ``y'C^-1 y`` and ``log|C|`` are sums over the n frequencies (quadratic in a; the
corner by Woodbury), for the grid one product per distinct b, for each voxel's own (a, b) one product of its
inverse spectrum with the basis's column products.

Degrees of freedom: 3dREMLfit refers each t to ``n - rank``, as if (a, b) were known; that is liberal (0.064
for 0.05 on ARMA(0.6, 0.3) noise, 200 scans, 10-scan blocks). voxfit refers it to Satterthwaite's dof, which
add the variance of the contrast's log variance through the (a, b) estimate to the chi-square's 2 / (n - rank)
(see ``_estimation_spread``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.fft import dst

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


@dataclass(frozen=True, eq=False)
class _Spectral:
    """A block in the eigenbasis of the MA(1) part (see :func:`_spectral`): the frequencies' ``cos`` (n,), the
    orthonormal DST-I transforms of the basis Q and its lag ``LQ`` (n, r each), of the data ``fy`` and ``fly``
    (n, v each), the transforms' first two rows ``ve`` (n, 2) (``E = [e_0, e_1]`` in the eigenbasis), and the
    products of columns ``pairs`` (n, 3, r, r): Q Q', Q LQ' + LQ Q', LQ LQ' per frequency; ``columns`` (n, 3 + 4r
    + 3 r(r+1)/2), what each voxel's GLS sums over the frequencies with its weights (see :func:`_weighted_sums`)."""

    cos: NDArray
    fq: NDArray
    flq: NDArray
    fy: NDArray
    fly: NDArray
    ve: NDArray
    pairs: NDArray
    columns: NDArray


def _lag(Z: NDArray) -> NDArray:
    """L z: ``(Lz)_0 = 0``, ``(Lz)_t = z_{t-1}`` (the AR filter is ``z - a L z``)."""
    out = np.zeros_like(Z)
    out[1:] = Z[:-1]
    return out


def _spectral(Q: NDArray, Y: NDArray) -> _Spectral:
    """The block's terms in the eigenbasis of the symmetric lag-1 shift (the DST-I vectors ``sqrt(2/(n+1))
    sin(pi (t+1)(j+1)/(n+1))``, eigenvalues ``2 cos(pi (j+1)/(n+1))``), which diagonalises every MA(1)
    covariance ``(1 + b^2) I + b S_1`` at once: one transform of the data serves every (a, b)."""
    n = Q.shape[0]
    fq, flq = dst(Q, type=1, norm="ortho", axis=0), dst(_lag(Q), type=1, norm="ortho", axis=0)
    fy, fly = dst(Y, type=1, norm="ortho", axis=0), dst(_lag(Y), type=1, norm="ortho", axis=0)
    ve = dst(np.eye(n)[:, :2], type=1, norm="ortho", axis=0)
    cross = fq[:, :, None] * flq[:, None, :]
    pairs = np.stack(
        [fq[:, :, None] * fq[:, None, :], cross + cross.transpose(0, 2, 1), flq[:, :, None] * flq[:, None, :]], axis=1
    )
    cos = np.cos(np.pi * np.arange(1, n + 1) / (n + 1))
    iu = np.triu_indices(Q.shape[1])
    columns = np.concatenate(
        [ve[:, [0, 0, 1]] * ve[:, [0, 1, 1]]]  # E'T_0^-1 E's three entries
        + [ve[:, e, None] * part for e in range(2) for part in (fq, flq)]
        + [pairs[:, k][:, iu[0], iu[1]] for k in range(3)],
        axis=1,
    )
    return _Spectral(cos, fq, flq, fy, fly, ve, pairs, columns)


def _corner(a, b, S: NDArray, n: int):
    """For models (a, b) (arrays of one shape) and ``S = E'T_0^-1 E`` (..., 2, 2): the Woodbury factor ``N = (I +
    K S)^-1 K`` (..., 2, 2) of z's covariance ``T = T_0 + E K E'`` (T_0 the MA(1)'s Toeplitz covariance, K the
    corner: z_0 = x_0 has the stationary variance and covariance with z_1), and ``log|T|`` (unit innovations)."""
    g0 = (1.0 + 2.0 * a * b + b * b) / (1.0 - a * a)
    g1 = (1.0 + a * b) * (a + b) / (1.0 - a * a)
    K = np.zeros(np.shape(a) + (2, 2))
    K[..., 0, 0] = g0 - 1.0 - b * b
    K[..., 0, 1] = K[..., 1, 0] = g1 - a * g0 - b
    M = np.eye(2) + K @ S
    N = np.linalg.solve(M, K)
    logdet_t0 = np.log1p(-((b * b) ** (n + 1))) - np.log1p(-b * b)  # det of MA(1)'s covariance: sum_k b^2k
    return N, logdet_t0 + np.log(np.linalg.det(M))


def _quadratic(N: NDArray, u: NDArray, w: NDArray) -> NDArray:
    """``u' N w`` over the leading axes: u (..., 2, i), N (..., 2, 2), w (..., 2, j) -> (..., i, j)."""
    return np.swapaxes(u, -1, -2) @ N @ w


def _grid_criterion(spec: _Spectral, grid: NDArray) -> NDArray:
    """-2 restricted log-likelihood (up to a constant) of every voxel at every grid point (G, v), from the
    block's transforms: for each distinct b, two products of the basis weighted by the MA(1)'s inverse spectrum
    with the data (the a's of that b differ by the terms of ``C^-1 = A'T^-1 A``, A = I - a L, quadratic in a)."""
    n, r = spec.fq.shape
    v = spec.fy.shape[1]
    crit = np.empty((len(grid), v))
    basis = np.concatenate([spec.fq, spec.flq, spec.ve], axis=1)  # (n, 2r + 2)
    squares = np.stack([spec.fy * spec.fy, spec.fy * spec.fly, spec.fly * spec.fly], axis=1)  # (n, 3, v)
    for b in np.unique(grid[:, 1]):
        rows = np.flatnonzero(grid[:, 1] == b)
        d = 1.0 / (1.0 + b * b + 2.0 * b * spec.cos)  # T_0^-1 in the eigenbasis
        weighted = (d[:, None] * basis).T
        on_y, on_ly = weighted @ spec.fy, weighted @ spec.fly  # [Q; LQ; E]' T_0^-1 y, and of Ly: (2r + 2, v)
        qy, lqy, ey = on_y[:r], on_y[r : 2 * r], on_y[2 * r :]
        qly, lqly, ely = on_ly[:r], on_ly[r : 2 * r], on_ly[2 * r :]
        yy = np.tensordot(d, squares, axes=(0, 0))  # y'T_0^-1 y, y'T_0^-1 Ly, (Ly)'T_0^-1 Ly: (3, v)
        dve = d[:, None] * spec.ve
        S = spec.ve.T @ dve
        eq, elq = dve.T @ spec.fq, dve.T @ spec.flq  # (2, r)
        G = np.einsum("j,jkab->kab", d, spec.pairs)  # (3, r, r)
        a = grid[rows, 0][:, None, None]  # the a's of this b, all at once: (A, 1, 1)
        N, logdet = _corner(a[:, 0, 0], np.full(rows.size, b), S, n)
        ep, ez = eq - a * elq, ey - a * ely  # (A, 2, r), (A, 2, v)
        gram = G[0] - a * G[1] + a * a * G[2] - _quadratic(N, ep, ep)  # the same for every voxel
        rhs = qy - a * (qly + lqy) + a * a * lqly - _quadratic(N, ep, ez)  # (A, r, v)
        zz = yy[0] - 2.0 * a[:, 0] * yy[1] + a[:, 0] ** 2 * yy[2] - np.einsum("gav,gab,gbv->gv", ez, N, ez)
        L = np.linalg.cholesky(gram)
        half = np.linalg.inv(L) @ rhs  # L^-1 rhs: (A, r, v)
        rss = zz - np.einsum("gkv,gkv->gv", half, half)
        log_gram = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            crit[rows] = (n - r) * np.log(np.maximum(rss, 1e-300)) + (logdet + log_gram)[:, None]
    return crit


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
    return _estimate(_spectral(design.basis, Y), grid)


def _estimate(spec: _Spectral, grid: NDArray) -> ARMAEstimate:
    """:func:`estimate_arma` from the block's transforms."""
    crit = _grid_criterion(spec, grid)  # (G, v)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    low = crit.min(axis=0)
    # the first grid point within rounding of the least criterion: the models with a + b = 0 are all white noise
    # (the roots cancel), equal criteria that rounding alone would tell apart; white noise is then (0, 0)
    best = np.argmax(crit <= low + 1e-10 * np.abs(low), axis=0)
    est = grid[best].copy()
    da = np.diff(np.unique(grid[:, 0]))[0]
    db = np.diff(np.unique(grid[:, 1]))[0]
    lookup = np.full((int(round(grid[:, 0].max() / da)) + 3, 2 * int(round(np.abs(grid[:, 1]).max() / db)) + 3), -1)
    ia_all, ib_all = np.rint(grid[:, 0] / da).astype(int) + 1, np.rint(grid[:, 1] / db).astype(int)
    off = (lookup.shape[1] - 1) // 2
    lookup[ia_all, ib_all + off] = np.arange(len(grid))
    ia, ib = ia_all[best], ib_all[best] + off
    cols = np.arange(crit.shape[1])

    def at(di, dj):
        idx = lookup[ia + di, np.clip(ib + dj, 0, lookup.shape[1] - 1)]
        idx = np.where((ib + dj >= 0) & (ib + dj < lookup.shape[1]), idx, -1)
        return np.where(idx >= 0, crit[np.maximum(idx, 0), cols], np.nan)

    mid = crit[best, cols]
    refined = est.copy()
    refined[:, 0] += da * _parabola_step(at(-1, 0), mid, at(1, 0))
    refined[:, 1] += db * _parabola_step(at(0, -1), mid, at(0, 1))
    return ARMAEstimate(refined, est, mid)


@dataclass(frozen=True, eq=False)
class _GLSTerms:
    """What each voxel's GLS at its own model (a, b) needs (:func:`_gls_terms`): ``Q'C^-1 Q`` (v, r, r),
    ``Q'C^-1 y`` (v, r), ``y'C^-1 y`` (v,) and ``log|C|`` (v,; unit innovations)."""

    gram: NDArray
    rhs: NDArray
    zz: NDArray
    logdet: NDArray


def _weights(spec: _Spectral, b: NDArray) -> NDArray:
    """The MA(1) models' inverse spectra ``T_0^-1`` in the eigenbasis, (n, v) for the b (v,) of each voxel."""
    return 1.0 / (1.0 + b * b + 2.0 * b * spec.cos[:, None])


def _weighted_sums(spec: _Spectral, b: NDArray) -> NDArray:
    """(v, columns): each voxel's sums over the frequencies of the design's ``columns`` weighted by its MA(1)'s
    inverse spectrum (they depend on b alone: steps along a reuse them), one product for all."""
    return _weights(spec, b).T @ spec.columns


def _small_inputs(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None):
    """What each voxel's GLS at its model (a, b) = `est` (v, 2) needs of the data, for the block's voxels `cols`,
    as matrix products over the block: the voxels' :func:`_weighted_sums` (`sums`, made here when not given),
    ``ez`` (v, 2) = E'T_0^-1 z, ``rhs0`` (v, r) = (Q - a LQ)'T_0^-1 z and ``zz0`` (v,) = z'T_0^-1 z, with z the
    AR-filtered data ``y - a Ly`` (all in the eigenbasis)."""
    a, b = est[:, 0], est[:, 1]
    d = _weights(spec, b)
    fz = spec.fy[:, cols] - a * spec.fly[:, cols]  # the AR-filtered data, transformed
    dz = d * fz
    sums = d.T @ spec.columns if sums is None else sums
    ez = (spec.ve.T @ dz).T
    rhs0 = (spec.fq.T @ dz - a * (spec.flq.T @ dz)).T
    return sums, np.ascontiguousarray(ez), np.ascontiguousarray(rhs0), np.einsum("tv,tv->v", dz, fz)


def _gls_terms(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None) -> _GLSTerms:
    """The GLS terms of the block's voxels `cols` at their models (a, b) = `est` (v, 2), from the block's
    transforms: ``C^-1 = A'(T_0 + E K E')^-1 A`` (A = I - a L, T_0 diagonal in the eigenbasis, the corner by
    Woodbury), from the voxels' :func:`_weighted_sums` (`sums`, made here when not given). (numpy: the reference
    of ``_arma_kernels.small_gls``.)"""
    n, r = spec.fq.shape
    a, b = est[:, 0], est[:, 1]
    v = a.size
    sums, ez, rhs0, zz0 = _small_inputs(spec, est, cols, sums)
    iu = np.triu_indices(r)
    S = sums[:, [0, 1, 1, 2]].reshape(v, 2, 2)
    ep = np.stack(
        [
            sums[:, 3 + 2 * e * r : 3 + (2 * e + 1) * r]
            - a[:, None] * sums[:, 3 + (2 * e + 1) * r : 3 + (2 * e + 2) * r]
            for e in range(2)
        ],
        axis=1,
    )  # (v, 2, r)
    ez = ez[:, :, None]  # (v, 2, 1)
    tri = sums[:, 3 + 4 * r :].reshape(v, 3, iu[0].size)  # the upper triangles of Q Q', Q LQ' + LQ Q', LQ LQ'
    upper = tri[:, 0] - a[:, None] * tri[:, 1] + (a * a)[:, None] * tri[:, 2]
    N, logdet = _corner(a, b, S, n)
    gram = np.empty((v, r, r))
    gram[:, iu[0], iu[1]] = upper
    gram[:, iu[1], iu[0]] = upper
    gram -= _quadratic(N, ep, ep)
    rhs = rhs0 - _quadratic(N, ep, ez)[:, :, 0]  # (v, r)
    zz = zz0 - _quadratic(N, ez, ez)[:, 0, 0]
    return _GLSTerms(gram, rhs, zz, logdet)


def _gls(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None):
    """Per-voxel GLS with each voxel's model (a, b) = `est` (v, 2), for the block's voxels `cols`: ``(coords
    (r, v), rss (v,), gram^-1 (v, r, r), criterion (v,))``, compiled (see ``_arma_kernels``), the voxels it
    flags by :func:`_gls_numpy`."""
    sums, ez, rhs0, zz0 = _small_inputs(spec, est, cols, sums)
    out = _compiled(spec, est, sums, ez, rhs0, zz0, np.zeros((0, spec.fq.shape[1])), [0], True)
    crit, rss, coords, gram_inv, _, flagged = out
    if flagged.size:
        where = _take(cols, flagged)
        coords[:, flagged], rss[flagged], gram_inv[flagged], crit[flagged] = _gls_numpy(
            spec, est[flagged], where, sums[flagged]
        )
    return coords, rss, gram_inv, crit


def _gls_numpy(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None):
    """:func:`_gls` in numpy (the reference), by inverses (a pseudo-inverse where one fails)."""
    n, r = spec.fq.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        t = _gls_terms(spec, est, cols, sums)
        try:
            gram_inv = np.linalg.inv(t.gram)
        except np.linalg.LinAlgError:
            gram_inv = np.linalg.pinv(t.gram, hermitian=True)
        coords = np.einsum("vij,vj->iv", gram_inv, t.rhs)
        rss = t.zz - np.einsum("iv,vi->v", coords, t.rhs)
        crit = (n - r) * np.log(np.maximum(rss, 1e-300)) + t.logdet + np.linalg.slogdet(t.gram)[1]
    return coords, rss, gram_inv, crit


def _take(cols, idx: NDArray) -> NDArray:
    """The block's voxels at positions `idx` of the selection `cols` (a slice of all or an index array)."""
    return idx if isinstance(cols, slice) else np.asarray(cols)[idx]


def _compiled(spec: _Spectral, est, sums, ez, rhs0, zz0, W, bounds, full: bool):
    """``_arma_kernels.small_gls`` on these inputs: (crit, rss, coords, gram_inv, var, flagged voxels)."""
    from ._arma_kernels import small_gls

    n, r = spec.fq.shape
    v = est.shape[0]
    crit, rss = np.full(v, np.nan), np.full(v, np.nan)
    coords = np.zeros((r, v if full else 0))
    gram_inv = np.zeros((v if full else 0, r, r))
    bounds = np.asarray(bounds, dtype=np.int64)
    var = np.zeros((bounds.size - 1, v))
    ok = np.zeros(v, dtype=np.bool_)
    a, b = np.ascontiguousarray(est[:, 0]), np.ascontiguousarray(est[:, 1])
    W = np.ascontiguousarray(W, dtype=np.float64)
    sums = np.ascontiguousarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        small_gls(sums, a, b, n, ez, rhs0, zz0, W, bounds, full, crit, rss, coords, gram_inv, var, ok)
    return crit, rss, coords, gram_inv, var, np.flatnonzero(~ok)


def _criterion_and_variances(
    spec: _Spectral, est: NDArray, wqs: list[NDArray], sums: NDArray | None = None
) -> tuple[NDArray, list[NDArray]]:
    """The REML criterion (v,) at the models `est` and, per contrast wq (q, r), ``tr(wq gram^-1 wq')`` (v,):
    what :func:`_estimation_spread` needs of each step, compiled (see ``_arma_kernels``), the voxels it flags by
    :func:`_criterion_numpy`. `sums`: the voxels' :func:`_weighted_sums` at these b, if known."""
    sums, ez, rhs0, zz0 = _small_inputs(spec, est, slice(None), sums)
    W = np.concatenate([np.zeros((0, spec.fq.shape[1]))] + list(wqs))
    bounds = np.cumsum([0] + [wq.shape[0] for wq in wqs])
    crit, _, _, _, var, flagged = _compiled(spec, est, sums, ez, rhs0, zz0, W, bounds, False)
    if flagged.size:
        crit[flagged], parts = _criterion_numpy(spec, est[flagged], wqs, sums[flagged], flagged)
        for row, part in zip(var, parts):
            row[flagged] = part
    return crit, list(var)


def _criterion_numpy(
    spec: _Spectral, est: NDArray, wqs: list[NDArray], sums: NDArray | None = None, cols=slice(None)
) -> tuple[NDArray, list[NDArray]]:
    """:func:`_criterion_and_variances` in numpy (the reference), for the block's voxels `cols`: by a Cholesky
    factor of each voxel's Gram matrix (a quarter of an inverse and a log-determinant) and forward
    substitution; by :func:`_gls_numpy` where a Gram matrix is not positive definite."""
    n, r = spec.fq.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        t = _gls_terms(spec, est, cols, sums)
    try:
        L = np.linalg.cholesky(t.gram)
    except np.linalg.LinAlgError:
        _, _, gram_inv, crit = _gls_numpy(spec, est, cols, sums)
        return crit, [np.einsum("ai,vij,aj->v", wq, gram_inv, wq) for wq in wqs]
    B = np.concatenate([t.rhs[:, :, None]] + [np.broadcast_to(wq.T, (t.rhs.shape[0],) + wq.T.shape) for wq in wqs], 2)
    X = np.empty_like(B)  # L^-1 B, row by row
    for i in range(r):
        X[:, i] = (B[:, i] - np.einsum("vj,vjk->vk", L[:, i, :i], X[:, :i])) / L[:, i, i, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        rss = t.zz - np.einsum("vi,vi->v", X[:, :, 0], X[:, :, 0])
        log_gram = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        crit = (n - r) * np.log(np.maximum(rss, 1e-300)) + t.logdet + log_gram
    bounds = np.cumsum([1] + [wq.shape[0] for wq in wqs])
    return crit, [np.einsum("vik,vik->v", X[:, :, a:b], X[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


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
    spec = _spectral(Q, Y)
    found = _estimate(spec, grid)
    est = found.refined
    sums = _weighted_sums(spec, est[:, 1])
    coords, rss, gram_inv, crit = _gls(spec, est, sums=sums)
    worse = np.flatnonzero(~(crit <= found.grid_criterion + 1e-9 * np.abs(found.grid_criterion)))
    if worse.size:
        est[worse] = found.grid_best[worse]
        sums[worse] = _weighted_sums(spec, est[worse, 1])
        coords[:, worse], rss[worse], gram_inv[worse], _ = _gls(spec, est[worse], worse, sums[worse])
    if shift is not None:
        coords = coords + np.multiply.outer(Q.T @ np.ones(n), shift)
    betas = design.basis_pinv @ coords
    wqs = [w @ design.basis_pinv for w in weights]  # (q, r) each
    spread = _estimation_spread(spec, est, crit, wqs, sums) if wqs else []
    contrasts = []
    for w, wq, g2 in zip(weights, wqs, spread):
        cov = np.einsum("ai,vij,bj->vab", wq, gram_inv, wq)
        dof = 2.0 / (2.0 / (n - r) + g2)  # Satterthwaite: var(log sigma^2 C) = 2 / nu + var(log C(a, b))
        contrasts.append((w @ betas, cov, dof))
    return ARMABlockFit(betas, rss, est, contrasts, ols_rss, tss)


def _estimation_spread(spec: _Spectral, est, crit, wqs, sums, h: float = 0.02) -> list[NDArray]:
    """For each contrast, ``var(log C(a_hat, b_hat))`` per voxel by the delta method (C = wq gram^-1 wq', its
    trace over q for F): central differences of log C and of the REML criterion along a and along b (steps
    `h`, kept inside the stationary, invertible models), var(a_hat) = 2 / d2crit/da2 (likewise b; their
    covariance left out); 0 where the criterion is not convex along an axis. `sums`: the voxels'
    :func:`_weighted_sums` at `est`, which the steps along a share."""
    out = [np.zeros(est.shape[0]) for _ in wqs]
    for axis in range(2):
        step = np.zeros_like(est)
        step[:, axis] = h
        up, down = est + step, est - step
        up[:, 0], down[:, 0] = np.clip(up[:, 0], -0.98, 0.98), np.clip(down[:, 0], -0.98, 0.98)
        up[:, 1], down[:, 1] = np.clip(up[:, 1], -0.98, 0.98), np.clip(down[:, 1], -0.98, 0.98)
        same_b = sums if axis == 0 else None
        c_up, var_up = _criterion_and_variances(spec, up, wqs, same_b)
        c_down, var_down = _criterion_and_variances(spec, down, wqs, same_b)
        width = up[:, axis] - down[:, axis]
        with np.errstate(invalid="ignore", divide="ignore"):
            curve = (c_up + c_down - 2.0 * crit) / (0.25 * width**2)
            var = np.where(np.isfinite(curve) & (curve > 0), 2.0 / curve, 0.0)
            for i, (cu, cd) in enumerate(zip(var_up, var_down)):
                slope = (np.log(cu) - np.log(cd)) / width
                out[i] += np.where(np.isfinite(slope), slope**2 * var, 0.0)
    return out
