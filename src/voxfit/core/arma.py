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
corner by Woodbury). What depends on the design alone is made once per fit (:func:`arma_terms`): each grid
point's Gram matrix and factor, and the matrices that give its criterion from the data by two products; each
voxel's own (a, b) then needs the weighted sums of the basis's column products at its b, tabulated for every b a
refined estimate can take (b is rounded to 1/128 of the grid's step), and the products of its data. The criterion
depends on the data through their OLS residuals alone, on which the grid's products are made in single
precision (the GLS at each voxel's estimate is in double precision).

Degrees of freedom: 3dREMLfit refers each t to ``n - rank``, as if (a, b) were known; that is liberal (0.064
for 0.05 on ARMA(0.6, 0.3) noise, 200 scans, 10-scan blocks). voxfit refers it to Satterthwaite's dof, which
add the variance of the contrast's log variance through the (a, b) estimate to the chi-square's 2 / (n - rank)
(see ``_estimation_spread``: the slopes of log C from a design-only lattice, the REML criterion's curvature from
the grid around the estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .._array import unit_scale
from .design import DesignFactor
from .ols import exact_fits

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
B_DIVISIONS = 128  # a refined b is rounded to 1/128 of the grid's step in b, whose weighted sums are tabulated


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
class _GridGroup:
    """The grid points that share one b, as the grid criterion needs them (design-only): their positions `rows` in
    the grid, their a's (A,), the MA(1)'s inverse spectrum `d` (n,), the Woodbury factors `N` (A, 2, 2), ``log|C|
    + log|Q'C^-1 Q|`` per point `logdet` (A,), and two matrices (float32): `base` (3r + 4, n), applied to the data,
    gives what is common to the points (Q'T_0^-1 z = p0 - a p1 + a^2 p2 for z the AR-filtered data, and E'T_0^-1 z =
    u - a w), and `combine` (A r, 3r + 4) gives each point's L^-1 rhs from those (L the Cholesky factor of
    ``Q'C^-1 Q``, rhs = ``Q'C^-1 y``, its corner by Woodbury)."""

    rows: NDArray
    a: NDArray
    d: NDArray
    N: NDArray
    logdet: NDArray
    base: NDArray
    combine: NDArray


@dataclass(frozen=True, eq=False)
class _VarianceLattice:
    """Design-only slopes of ``log tr(wq gram(a, b)^-1 wq')`` along a and along b, per contrast, on a lattice of
    models (a0 + i step, b0 + j step): `slopes` holds (d/da, d/db) arrays (na, nb) per contrast."""

    a0: float
    b0: float
    step: float
    slopes: list[tuple[NDArray, NDArray]]


@dataclass(frozen=True, eq=False)
class ARMATerms:
    """What an ARMA(1,1) fit needs of the design, its contrasts and the grid alone, made once per fit
    (:func:`arma_terms`) and shared by its blocks: in the eigenbasis of the symmetric lag-1 shift (the DST-I
    vectors ``sqrt(2/(n+1)) sin(pi (t+1)(j+1)/(n+1))``, eigenvalues ``2 cos(pi (j+1)/(n+1))``, which diagonalise
    every MA(1) covariance ``(1 + b^2) I + b S_1`` at once), the frequencies' ``cos`` (n,), the transforms of the
    basis Q and its lag ``LQ`` (n, r each) and of ``E = [e_0, e_1]`` (``ve``, n x 2); ``columns`` (n, 3 + 4r + 3
    r(r+1)/2), what each voxel's GLS sums over the frequencies with its weights (see :func:`_weighted_sums`);
    ``transform`` (2n, n), the transform of the data and of its lag as one product; the grid and its
    :class:`_GridGroup` per b; the contrasts' :class:`_VarianceLattice` (None without contrasts); the weighted
    sums ``table`` (B, columns) of every b a refined estimate can take (``b0 + k table_step``, see
    :func:`_estimate`)."""

    cos: NDArray
    fq: NDArray
    flq: NDArray
    ve: NDArray
    columns: NDArray
    transform: NDArray
    grid: NDArray
    groups: list[_GridGroup]
    lattice: _VarianceLattice | None
    table: NDArray
    b0: float
    table_step: float


@dataclass(frozen=True, eq=False)
class _Spectral:
    """A block in the eigenbasis (see :class:`ARMATerms`): the design's `terms` and the transforms of the data
    ``fy`` and of its lag ``fly`` (n, v each)."""

    terms: ARMATerms
    fy: NDArray
    fly: NDArray


def _lag(Z: NDArray) -> NDArray:
    """L z: ``(Lz)_0 = 0``, ``(Lz)_t = z_{t-1}`` (the AR filter is ``z - a L z``)."""
    out = np.zeros_like(Z)
    out[1:] = Z[:-1]
    return out


def arma_terms(design: DesignFactor, weights=(), grid: NDArray = ARMA_GRID) -> ARMATerms:
    """The design-only terms of an ARMA(1,1) fit of `design` with contrast weight matrices `weights` (q, pc) over
    `grid` (see :class:`ARMATerms`)."""
    Q = design.basis
    n, r = Q.shape
    t = np.arange(1, n + 1)
    sine = np.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(t, t) / (n + 1))  # the orthonormal DST-I, symmetric
    shifted = np.zeros_like(sine)
    shifted[:, :-1] = sine[:, 1:]  # S L: (S L y) = S (y_{t-1})
    transform = np.concatenate([sine, shifted])  # rows give S y and S L y
    fq, flq, ve = sine @ Q, sine @ _lag(Q), sine[:, :2].copy()
    cross = fq[:, :, None] * flq[:, None, :]
    pairs = [fq[:, :, None] * fq[:, None, :], cross + cross.transpose(0, 2, 1), flq[:, :, None] * flq[:, None, :]]
    iu = np.triu_indices(r)
    columns = np.concatenate(
        [ve[:, [0, 0, 1]] * ve[:, [0, 1, 1]]]  # E'T_0^-1 E's three entries
        + [ve[:, e, None] * part for e in range(2) for part in (fq, flq)]
        + [pair[:, iu[0], iu[1]] for pair in pairs],
        axis=1,
    )
    cos = np.cos(np.pi * t / (n + 1))
    step_b = np.diff(np.unique(grid[:, 1]))[0]
    b0, table_step = grid[:, 1].min() - step_b / 2, step_b / B_DIVISIONS
    table_b = b0 + table_step * np.arange(int(round(np.ptp(grid[:, 1]) / table_step)) + B_DIVISIONS + 1)
    terms = ARMATerms(cos, fq, flq, ve, columns, transform, grid, [], None, np.zeros((0, columns.shape[1])), b0, 1.0)
    terms = replace(terms, table=_weighted_sums(terms, table_b), table_step=table_step)  # (the sums need columns)
    wqs = [w @ design.basis_pinv for w in weights]
    groups = [_grid_group(terms, grid, b) for b in np.unique(grid[:, 1])]
    return replace(terms, groups=groups, lattice=_variance_lattice(terms, grid, wqs) if wqs else None)


def _grid_group(terms: ARMATerms, grid: NDArray, b: float) -> _GridGroup:
    """The :class:`_GridGroup` of the grid points whose MA coefficient is `b`: ``C^-1 = A'(T_0 + E K E')^-1 A``
    with A = I - a L (the AR filter), T_0 the MA(1)'s covariance (diagonal in the eigenbasis) and the corner K by
    Woodbury, so that every point's Gram matrix, factor and row matrix are products of n x n matrices at most."""
    n, r = terms.fq.shape
    rows = np.flatnonzero(grid[:, 1] == b)
    a = grid[rows, 0]
    d = 1.0 / (1.0 + b * b + 2.0 * b * terms.cos)  # T_0^-1 in the eigenbasis
    dve = d[:, None] * terms.ve
    N, logdet = _corner(a, np.full(a.size, b), terms.ve.T @ dve, n)
    P = terms.fq - a[:, None, None] * terms.flq  # (A, n, r): (Q - a LQ) in the eigenbasis
    ep = dve.T @ P  # (A, 2, r)
    gram = np.swapaxes(P, 1, 2) @ (d[:, None] * P) - _quadratic(N, ep, ep)
    L = np.linalg.cholesky(gram)
    S, SL = terms.transform[:n], terms.transform[n:]  # z = (S - a SL) y in the eigenbasis
    dq, dlq = (d[:, None] * terms.fq).T, (d[:, None] * terms.flq).T
    base = np.concatenate([dq @ S, dq @ SL + dlq @ S, dlq @ SL, dve.T @ S, dve.T @ SL])
    eye, corner = np.broadcast_to(np.eye(r), (a.size, r, r)), -np.swapaxes(ep, 1, 2) @ N  # (A, r, 2)
    power = a[:, None, None]
    pieces = np.concatenate([eye, -power * eye, power**2 * eye, corner, -power * corner], axis=2)  # rhs from base
    combine = np.linalg.solve(L, pieces).reshape(a.size * r, 3 * r + 4)
    log_gram = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
    return _GridGroup(rows, a, d, N, logdet + log_gram, base.astype(np.float32), combine.astype(np.float32))


def _spectral(terms: ARMATerms, Y: NDArray) -> _Spectral:
    """The block Y (n, v) in the eigenbasis: one product for the data and its lag."""
    n = Y.shape[0]
    both = terms.transform @ Y
    return _Spectral(terms, both[:n], both[n:])


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


def _grid_criterion(spec: _Spectral, Y: NDArray) -> NDArray:
    """-2 restricted log-likelihood (up to a constant) of every voxel of Y (n, v: OLS residuals; `spec` their
    transform) at every grid point (G, v): per distinct b, one product of its points' row matrices with the data
    (see :class:`_GridGroup`), and the data's weighted squares ``z'T_0^-1 z`` (quadratic in a) for all b at once.

    The products are in single precision, which halves the fit's largest cost: on residuals, whose projections
    are a small part of their squares, they move the criterion by about 1e-7 of itself (2e-4 at most, measured on
    10,000 voxels), while what the grid decides turns on differences of whole units. Each voxel is worked at unit
    scale (times a power of two, exact, and its log added back): unscaled, data of size 1e20 overflowed single
    precision when squared and data of 1e-30 underflowed, and the fit's t moved by up to 1000x."""
    terms = spec.terms
    n, r = terms.fq.shape
    v = Y.shape[1]
    crit = np.empty((len(terms.grid), v))
    d = np.stack([g.d for g in terms.groups])
    scale, exponent = unit_scale(np.einsum("tv,tv->v", Y, Y))  # (no residuals: scale 1)
    fy, fly = spec.fy * scale, spec.fly * scale
    yy = [d @ (fy * fy), d @ (fy * fly), d @ (fly * fly)]  # (B, v) each
    single = (Y * scale).astype(np.float32)
    for k, g in enumerate(terms.groups):
        common = g.base @ single
        half = (g.combine @ common).reshape(g.a.size, r, v)
        ez = common[None, -4:-2] - g.a[:, None, None] * common[None, -2:]  # (A, 2, v)
        a = g.a[:, None]
        zz = yy[0][k] - 2.0 * a * yy[1][k] + a * a * yy[2][k] - np.einsum("gav,gab,gbv->gv", ez, g.N, ez)
        rss = zz - np.einsum("gkv,gkv->gv", half, half)
        with np.errstate(divide="ignore", invalid="ignore"):
            crit[g.rows] = (n - r) * np.log(np.maximum(rss, 1e-300)) + g.logdet[:, None]
    return crit + (n - r) * (2.0 * np.log(2.0)) * exponent  # (the scale's log: the criterion of Y itself)


def _parabola_step(left: NDArray, mid: NDArray, right: NDArray) -> NDArray:
    """The vertex offset (in grid steps, within +-1/2) of the parabola through three equally spaced values;
    0 where it is not a minimum or a side is missing."""
    curve = left + right - 2.0 * mid
    with np.errstate(invalid="ignore", divide="ignore"):
        step = 0.5 * (left - right) / curve
    return np.where(np.isfinite(step) & (curve > 0), np.clip(step, -0.5, 0.5), 0.0)


def _second_difference(mid: NDArray, lower: tuple[NDArray, NDArray], upper: tuple[NDArray, NDArray]) -> NDArray:
    """Second differences (in grid steps) at `mid` from the values one and two steps below and above (NaN where
    missing): central where both sides are there, else one-sided; NaN where neither."""
    central = lower[0] + upper[0] - 2.0 * mid
    below, above = mid - 2.0 * lower[0] + lower[1], mid - 2.0 * upper[0] + upper[1]
    return np.where(np.isfinite(central), central, np.where(np.isfinite(below), below, above))


@dataclass(frozen=True, eq=False)
class ARMAEstimate:
    """REML estimates for a block: ``refined`` (v, 2) (a, b) after the parabolas, the best grid point
    ``grid_best`` (v, 2), its criterion ``grid_criterion`` (v,) and the criterion's second derivatives there
    along a and along b, ``curvature`` (v, 2; from the neighbouring grid points, NaN where there are none)."""

    refined: NDArray
    grid_best: NDArray
    grid_criterion: NDArray
    curvature: NDArray


def estimate_arma(design: DesignFactor, Y: NDArray, grid: NDArray = ARMA_GRID) -> ARMAEstimate:
    """REML estimates (a, b) for the voxels of Y (n, v; finite): the best grid point, refined by parabolas along a
    and along b through the criterion at the neighbouring grid points (b rounded to 1/`B_DIVISIONS` of a step)."""
    E = np.asarray(Y, dtype=np.float64)
    E = E - design.basis @ (design.basis.T @ E)  # the criterion depends on the OLS residuals alone
    return _estimate(_spectral(arma_terms(design, grid=grid), E), E)


def _estimate(spec: _Spectral, E: NDArray) -> ARMAEstimate:
    """:func:`estimate_arma` from the OLS residuals E (n, v) and their transforms `spec`."""
    grid = spec.terms.grid
    crit = _grid_criterion(spec, E)  # (G, v)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    low = crit.min(axis=0)
    # the first grid point within 1e-3 of the least criterion (a likelihood ratio of 1.0005; the single-precision
    # products move it by 2e-4 at most): the models with a + b = 0 are all white noise (the roots cancel), equal
    # criteria that rounding alone would tell apart; white noise is then (0, 0)
    best = np.argmax(crit <= low + 1e-3, axis=0)
    steps = [np.diff(np.unique(grid[:, k]))[0] for k in range(2)]
    index = [np.rint((grid[:, k] - grid[:, k].min()) / steps[k]).astype(int) + 2 for k in range(2)]
    lookup = np.full((index[0].max() + 3, index[1].max() + 3), -1)  # two missing points beyond every edge
    lookup[index[0], index[1]] = np.arange(len(grid))
    ia, ib, cols = index[0][best], index[1][best], np.arange(crit.shape[1])

    def at(di: int, dj: int) -> NDArray:
        idx = lookup[ia + di, ib + dj]
        return np.where(idx >= 0, crit[np.maximum(idx, 0), cols], np.nan)

    mid = crit[best, cols]
    refined = grid[best].copy()
    refined[:, 0] += steps[0] * _parabola_step(at(-1, 0), mid, at(1, 0))
    refined[:, 1] += steps[1] * np.rint(B_DIVISIONS * _parabola_step(at(0, -1), mid, at(0, 1))) / B_DIVISIONS
    curvature = np.column_stack(
        [
            _second_difference(mid, (at(-1, 0), at(-2, 0)), (at(1, 0), at(2, 0))) / steps[0] ** 2,
            _second_difference(mid, (at(0, -1), at(0, -2)), (at(0, 1), at(0, 2))) / steps[1] ** 2,
        ]
    )
    return ARMAEstimate(refined, grid[best].copy(), mid, curvature)


@dataclass(frozen=True, eq=False)
class _GLSTerms:
    """What each voxel's GLS at its own model (a, b) needs (:func:`_gls_terms`): ``Q'C^-1 Q`` (v, r, r),
    ``Q'C^-1 y`` (v, r), ``y'C^-1 y`` (v,) and ``log|C|`` (v,; unit innovations)."""

    gram: NDArray
    rhs: NDArray
    zz: NDArray
    logdet: NDArray


def _weights(terms: ARMATerms, b: NDArray) -> NDArray:
    """The MA(1) models' inverse spectra ``T_0^-1`` in the eigenbasis, (n, v) for the b (v,) of each voxel."""
    return 1.0 / (1.0 + b * b + 2.0 * b * terms.cos[:, None])


def _weighted_sums(terms: ARMATerms, b: NDArray) -> NDArray:
    """(v, columns): each voxel's sums over the frequencies of the design's ``columns`` weighted by its MA(1)'s
    inverse spectrum (they depend on b alone): looked up in the terms' table where every b is one of its values
    (a refined estimate always is), else one product for all."""
    where = (b - terms.b0) / terms.table_step
    rows = np.rint(where)
    if b.size and np.all((np.abs(where - rows) < 1e-6) & (rows >= 0) & (rows < len(terms.table))):
        return terms.table[rows.astype(np.intp)]
    return _weights(terms, b).T @ terms.columns


def _small_inputs(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None):
    """What each voxel's GLS at its model (a, b) = `est` (v, 2) needs of the data, for the block's voxels `cols`,
    as matrix products over the block: the voxels' :func:`_weighted_sums` (`sums`, made here when not given),
    ``ez`` (v, 2) = E'T_0^-1 z, ``rhs0`` (v, r) = (Q - a LQ)'T_0^-1 z and ``zz0`` (v,) = z'T_0^-1 z, with z the
    AR-filtered data ``y - a Ly`` (all in the eigenbasis)."""
    terms = spec.terms
    a, b = est[:, 0], est[:, 1]
    d = _weights(terms, b)
    fz = spec.fy[:, cols] - a * spec.fly[:, cols]  # the AR-filtered data, transformed
    dz = d * fz
    sums = d.T @ terms.columns if sums is None else sums
    ez = (terms.ve.T @ dz).T
    rhs0 = (terms.fq.T @ dz - a * (terms.flq.T @ dz)).T
    return sums, np.ascontiguousarray(ez), np.ascontiguousarray(rhs0), np.einsum("tv,tv->v", dz, fz)


def _gls_terms(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None) -> _GLSTerms:
    """The GLS terms of the block's voxels `cols` at their models (a, b) = `est` (v, 2), from the block's
    transforms: ``C^-1 = A'(T_0 + E K E')^-1 A`` (A = I - a L, T_0 diagonal in the eigenbasis, the corner by
    Woodbury), from the voxels' :func:`_weighted_sums` (`sums`, made here when not given). (numpy: the reference
    of ``_arma_kernels.small_gls``.)"""
    n, r = spec.terms.fq.shape
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


def _gls(spec: _Spectral, est: NDArray, W: NDArray, cols=slice(None), sums: NDArray | None = None):
    """Per-voxel GLS with each voxel's model (a, b) = `est` (v, 2), for the block's voxels `cols`: ``(coords
    (r, v), rss (v,), W gram^-1 W' (v, R, R) for the rows W (R, r), criterion (v,))``, compiled (see
    ``_arma_kernels``), the voxels it flags by :func:`_gls_numpy`."""
    n, r = spec.terms.fq.shape
    sums, ez, rhs0, zz0 = _small_inputs(spec, est, cols, sums)
    crit, rss, coords, cross, flagged = _compiled(n, est, sums, ez, rhs0, zz0, W, True)
    if flagged.size:
        where = _take(cols, flagged)
        coords[:, flagged], rss[flagged], gram_inv, crit[flagged] = _gls_numpy(spec, est[flagged], where, sums[flagged])
        cross[flagged] = W @ gram_inv @ W.T
    return coords, rss, cross, crit


def _gls_numpy(spec: _Spectral, est: NDArray, cols=slice(None), sums: NDArray | None = None):
    """:func:`_gls` in numpy (the reference), by inverses (a pseudo-inverse where one fails)."""
    n, r = spec.terms.fq.shape
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


def _compiled(n: int, est, sums, ez, rhs0, zz0, W, full: bool):
    """``_arma_kernels.small_gls`` on these inputs (n scans): (crit, rss, coords, W gram^-1 W', flagged voxels)."""
    from ._arma_kernels import small_gls

    v, r = rhs0.shape
    crit, rss = np.full(v, np.nan), np.full(v, np.nan)
    coords = np.zeros((r, v if full else 0))
    cross = np.full((v, W.shape[0], W.shape[0]), np.nan)
    ok = np.zeros(v, dtype=np.bool_)
    a, b = np.ascontiguousarray(est[:, 0]), np.ascontiguousarray(est[:, 1])
    W = np.ascontiguousarray(W, dtype=np.float64)
    sums = np.ascontiguousarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        small_gls(sums, a, b, n, ez, rhs0, zz0, W, full, crit, rss, coords, cross, ok)
    return crit, rss, coords, cross, np.flatnonzero(~ok)


LATTICE_STEP = 0.02  # the spacing of the models at which log tr(wq gram^-1 wq') is tabulated


def contrast_variances(terms: ARMATerms, models: NDArray, wqs: list[NDArray]) -> list[NDArray]:
    """``tr(wq gram^-1 wq')`` (v,) per contrast wq (q, r) at the models (v, 2), ``gram = Q'C^-1 Q``: design-only,
    by the compiled Cholesky factor (NaN where a Gram matrix is not positive definite)."""
    n, r = terms.fq.shape
    v = models.shape[0]
    values, where = np.unique(models[:, 1], return_inverse=True)
    sums = _weighted_sums(terms, values)[where]
    zeros = np.zeros((v, 2)), np.zeros((v, r)), np.zeros(v)
    cross = _compiled(n, models, sums, *zeros, np.concatenate(wqs) if wqs else np.zeros((0, r)), False)[3]
    return [np.trace(cross[:, rows, rows], axis1=1, axis2=2) for rows in _row_blocks(wqs)]


def _row_blocks(wqs: list[NDArray]) -> list[slice]:
    """The rows of each contrast in their stack."""
    bounds = np.cumsum([0] + [wq.shape[0] for wq in wqs])
    return [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _variance_lattice(terms: ARMATerms, grid: NDArray, wqs: list[NDArray], step: float = LATTICE_STEP):
    """The :class:`_VarianceLattice` over every model a refined estimate can take (the grid's range and half a
    grid step beyond it, within the stationary, invertible models), by central differences inside it."""
    axes = []
    for k in range(2):
        half = 0.5 * np.diff(np.unique(grid[:, k]))[0] + step
        low, high = max(grid[:, k].min() - half, -0.98), min(grid[:, k].max() + half, 0.98)
        axes.append(low + step * np.arange(int(np.ceil((high - low) / step)) + 1))
    A, B = np.meshgrid(*axes, indexing="ij")
    variances = contrast_variances(terms, np.column_stack([A.ravel(), B.ravel()]), wqs)
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = [np.gradient(np.log(var.reshape(A.shape)), step, step) for var in variances]
    return _VarianceLattice(float(axes[0][0]), float(axes[1][0]), step, [tuple(s) for s in slopes])


def _bilinear(table: NDArray, lattice: _VarianceLattice, models: NDArray) -> NDArray:
    """`table` (na, nb) on the lattice, interpolated bilinearly at the models (v, 2) (held at its edges)."""
    out = []
    for k, origin in enumerate((lattice.a0, lattice.b0)):
        x = np.clip((models[:, k] - origin) / lattice.step, 0.0, table.shape[k] - 1.0)
        i = np.minimum(x.astype(int), table.shape[k] - 2)
        out.append((i, x - i))
    (i, fi), (j, fj) = out
    low = table[i, j] * (1 - fj) + table[i, j + 1] * fj
    high = table[i + 1, j] * (1 - fj) + table[i + 1, j + 1] * fj
    return low * (1 - fi) + high * fi


def fit_arma_block(
    design: DesignFactor,
    Y: NDArray,
    weights: list[NDArray],
    grid: NDArray = ARMA_GRID,
    terms: ARMATerms | None = None,
) -> ARMABlockFit:
    """ARMA(1,1) fit of one block Y (n, v; finite): REML estimates of (a, b) per voxel (:func:`estimate_arma`;
    a refined point is kept where its criterion is below the best grid point's), then generalised least squares
    with each voxel's exact whitening; contrasts with Satterthwaite's degrees of freedom (see the module's notes)
    for the contrast weight matrices `weights` (q, pc). `terms`: :func:`arma_terms` of the design, these weights
    and the grid, made here when not given (a fit makes them once for all its blocks)."""
    terms = terms or arma_terms(design, weights, grid)
    n, Q, r = design.n_scans, design.basis, design.rank
    Y = np.asarray(Y, dtype=np.float64)
    coef = Q.T @ Y
    E = Y - Q @ coef  # the GLS coordinates of Y are coef plus E's, its RSS and criterion E's
    ols_rss = np.einsum("tv,tv->v", E, E)
    ysq = np.einsum("tv,tv->v", Y, Y)
    if design.has_intercept:  # the total sum of squares about the mean (with 1's residual where 1 is near the span)
        mean, r1 = Y.mean(axis=0), design.ones_residual
        coef_centred = coef - np.multiply.outer(Q.T @ np.ones(n), mean)
        tss = ols_rss + np.einsum("kv,kv->v", coef_centred, coef_centred) + mean * (mean * (r1 @ r1) - 2.0 * (r1 @ E))
    else:
        tss = ysq
    exact = exact_fits(ols_rss, ysq, n)  # (a constant voxel: no residual variance)
    del Y
    spec = _spectral(terms, E)
    found = _estimate(spec, E)
    est = found.refined
    wqs = [w @ design.basis_pinv for w in weights]  # (q, r) each
    W = np.concatenate(wqs) if wqs else np.zeros((0, r))
    sums = _weighted_sums(terms, est[:, 1])
    coords, rss, cross, crit = _gls(spec, est, W, sums=sums)
    worse = np.flatnonzero(~(crit <= found.grid_criterion + 1e-9 * np.abs(found.grid_criterion)))
    if worse.size:
        est[worse] = found.grid_best[worse]
        sums[worse] = _weighted_sums(terms, est[worse, 1])
        coords[:, worse], rss[worse], cross[worse], _ = _gls(spec, est[worse], W, worse, sums[worse])
    betas = design.basis_pinv @ (coef + coords)
    rss[exact], ols_rss[exact] = 0.0, 0.0  # (whitened rounding is no variance: no statistic, as OLS has none)
    spread = _estimation_spread(terms.lattice, est, found.curvature) if wqs else []
    contrasts = []
    for w, rows, g2 in zip(weights, _row_blocks(wqs), spread):
        dof = 2.0 / (2.0 / (n - r) + g2)  # Satterthwaite: var(log sigma^2 C) = 2 / nu + var(log C(a, b))
        contrasts.append((w @ betas, cross[:, rows, rows], dof))
    return ARMABlockFit(betas, rss, est, contrasts, ols_rss, tss)


def _estimation_spread(lattice: _VarianceLattice, est: NDArray, curvature: NDArray) -> list[NDArray]:
    """For each contrast, ``var(log C(a_hat, b_hat))`` per voxel by the delta method (C = tr(wq gram^-1 wq')):
    the slopes of log C at each voxel's model (a, b) = `est` (v, 2), from the design's lattice, squared and times
    var(a_hat) = 2 / d2crit/da2 (likewise b; their covariance left out), the REML criterion's `curvature` (v, 2)
    taken from the grid around the voxel's estimate; 0 along an axis where the criterion is not convex."""
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(np.isfinite(curvature) & (curvature > 0), 2.0 / curvature, 0.0)  # var(a_hat), var(b_hat)
    out = []
    for along_a, along_b in lattice.slopes:
        total = np.zeros(est.shape[0])
        for k, slope in enumerate((_bilinear(along_a, lattice, est), _bilinear(along_b, lattice, est))):
            total += np.where(np.isfinite(slope), slope**2 * spread[:, k], 0.0)
        out.append(total)
    return out
