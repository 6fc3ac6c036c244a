"""Tail probabilities and z-scores of t and F statistics that never saturate.

Conventions (those of SPM and nilearn):

* ``p`` of a t statistic is the one-sided upper-tail probability ``P(T > t)``; ``z`` is the signed
  standard-normal value with the same upper-tail probability, so ``P(Z > z) = p``.
* ``p`` of an F statistic is ``P(F' > F)``; ``z`` is the normal value with that upper-tail probability.
* ``logp`` is ``-log10 p``.

Everything is computed in log space where it matters: ``log P(T > t)`` comes from the regularised incomplete
beta function while it is representable and from its hypergeometric series (DLMF 8.17.8) where it would
underflow, and z from ``log p`` through :func:`scipy.special.ndtri_exp`. So t = 40 with 100 degrees of
freedom gives p = 1.0e-63 and z = 16.8, and t = 1e3 a finite z.

Speed: converting t to z voxel by voxel with the incomplete beta function costs about four read passes
over a float32 data set. For a given number of degrees of freedom, z/t is a smooth, bounded function of
``s = log1p(|t|)``, so :func:`t_to_z` tabulates it once (exact values and exact derivatives at 2**9 nodes
per unit of s) and evaluates a cubic Hermite interpolant: relative error below 1e-12 (tested against
mpmath), at the cost of a dozen vectorised operations per voxel. Values of |t| beyond the table
(|t| > 1e4) are computed exactly; the two agree to 1e-12 where they meet. With a dof per value (the
effective dofs of AR models), z is interpolated in log dof between the tables of a grid of dofs (64 per unit
of log dof, 8 points) by a compiled kernel, once the process has numba loaded: also below 1e-12.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special as sc

from .._threads import even_spans, resolve_workers, run_in_threads
from . import _kernels
from ._kernels import hermite_z, hermite_z_numpy, kernels_loaded

__all__ = [
    "kenward_roger_reference",
    "log_betainc_series",
    "kenward_roger_or_satterthwaite",
    "t_logsf",
    "t_to_z",
    "f_logsf",
    "f_to_z",
    "z_to_p",
    "z_to_logp",
]

_LN10 = math.log(10.0)
_TINY = 1e-290  # below this a tail probability is computed from the series in log space
_T_TABLE_MAX = 1e4
_NODES_PER_UNIT = 512
# A dof per value: tables on a grid of dofs exp(k / 64), interpolated in log dof (8 points).
_DOF_GRID_PER_UNIT = 64
_DOF_GRID_RANGE = (2.0, 1e5)  # the tables are checked against mpmath up to 1e5
_DOF_GRID_MAX_NODES = 160  # ~150 kB each; a wider spread of dofs is computed exactly
_MANY_EACH = 4096  # fewer values than this: exact, no tables
_EXACT_EACH_BEFORE_COMPILING = 1 << 20  # this many values done exactly: load the compiled kernel for the rest
_EXACT_SPAN = 1 << 14  # values a thread takes at least, exactly (~6 ms: a thread's start is worth it)
_TABLED_SPAN = 1 << 16  # values a thread takes at least from a single dof's table (~1 ms)
_exact_each_done = 0


def log_betainc_series(a, b, log_x, log1m_x):
    """``log I_x(a, b)`` for small x, from I_x = x^a (1-x)^b / (a B(a, b)) * 2F1(a+b, 1; a+1; x).

    Used where the incomplete beta function underflows: here, where x is tiny, so the series converges in a
    few terms; and by ``voxfit.inference.rft_fit``'s inverse below p = 1e-100, where x may be near 1 for
    hundreds of dof (its terms shrink as ((a + b) / (a + 1)) x). The loop stops when every term is below
    double-precision rounding.
    """
    a, b, log_x, log1m_x = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, log_x, log1m_x)))
    x = np.exp(log_x)
    term = np.ones_like(x)
    total = np.ones_like(x)
    for k in range(100_000):
        term = term * ((a + b + k) / (a + 1.0 + k)) * x
        total = total + term
        if not np.any(term > 1e-17 * total):
            break
    return a * log_x + b * log1m_x - np.log(a) - sc.betaln(a, b) + np.log(total)


def _log_x_pair(log_q: NDArray):
    """``log(x)`` and ``log(1 - x)`` for ``x = 1 / (1 + q)``, given ``log q``: no overflow, no cancellation."""
    return -np.logaddexp(0.0, log_q), -np.logaddexp(0.0, -log_q)


def t_logsf(t: ArrayLike, dof: float) -> NDArray[np.float64]:
    """Natural log of the upper tail ``P(T > t)`` of Student's t with `dof` degrees of freedom.

    Accurate in both tails and finite for any finite t: for large positive t it follows the
    asymptotic series instead of underflowing to ``log(0)``.
    """
    t = np.asarray(t, dtype=float)
    each = np.ndim(dof) > 0  # one dof per value of t
    if not each and math.isinf(dof):
        return sc.log_ndtr(-t)
    sf = sc.stdtr(dof, -t)
    with np.errstate(divide="ignore"):
        out = np.log(sf)
    upper = sf > 0.5  # (none for t >= 0: the lower tail only where it is needed)
    if np.any(upper):
        out[upper] = np.log1p(-sc.stdtr(np.broadcast_to(dof, t.shape)[upper] if each else dof, t[upper]))
    tiny = sf < _TINY
    if np.any(tiny):
        tt = np.abs(t[tiny])
        d = np.broadcast_to(np.asarray(dof, dtype=float), t.shape)[tiny] if each else float(dof)
        log_x, log1m_x = _log_x_pair(2.0 * (np.log(tt) - 0.5 * np.log(d)))  # x = dof / (dof + t^2)
        out[tiny] = math.log(0.5) + log_betainc_series(d / 2.0, 0.5, log_x, log1m_x)
    return out


def _z_from_logsf(logsf: NDArray) -> NDArray[np.float64]:
    """z with ``log P(Z > z) = logsf``: scipy's ndtri_exp, then one Newton step on log_ndtr.

    ndtri_exp alone is off by ~1e-11 relative for log p ~ -1e5; the Newton step brings it to rounding.
    """
    z = -sc.ndtri_exp(logsf)
    with np.errstate(invalid="ignore", over="ignore"):
        log_sf_z = sc.log_ndtr(-z)
        step = (log_sf_z - logsf) / np.exp(-0.5 * z * z - 0.5 * math.log(2 * math.pi) - log_sf_z)
    return np.where(np.isfinite(step), z + step, z)


def _t_to_z_exact(t: NDArray, dof) -> NDArray[np.float64]:
    """z with ``P(Z > z) = P(T > t)``, accurate to rounding in relative terms for every t; `dof` a number or
    an array of t's shape.

    Tails from log p; the centre (|z| < 0.67) from ``P(|T| < |t|) = I_y(1/2, dof/2)``, y = t^2/(dof + t^2),
    since 1/2 - p has already lost its relative accuracy there: ``z = sqrt(2) erfinv(P(|T| < |t|))``.
    """
    t = np.asarray(t, dtype=float)
    # P(|T| < 1) >= 1/2 for dof >= 1: those |t| >= 1 are in the tails, and their centre is not evaluated
    central = np.where(np.abs(t) >= 1.0, 1.0, np.nan)
    near = ~((np.abs(t) >= 1.0) & (np.asarray(dof) >= 1.0)) & ~np.isnan(t)
    d = np.broadcast_to(dof, t.shape)[near] if np.ndim(dof) > 0 else dof
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        central[near] = sc.betainc(0.5, np.divide(d, 2.0), 1.0 / (1.0 + d / (t[near] * t[near])))
    z = np.sign(t) * np.where(central < 0.5, math.sqrt(2.0) * sc.erfinv(central), np.nan)
    tail = ~(central < 0.5) & ~np.isnan(t)
    d = dof[tail] if np.ndim(dof) > 0 else dof
    z[tail] = np.sign(t[tail]) * _z_from_logsf(t_logsf(np.abs(t[tail]), d))
    return z


def _log_gamma_ratio_half(a: float) -> float:
    """``log(Gamma(a + 1/2) / Gamma(a))`` to full double precision.

    A difference of two ``gammaln`` (or scipy's ``betaln``) loses up to 1e-10 for a ~ 1e5; for a >= 10 the
    difference of the two Stirling series is taken term by term instead (truncation error < 1e-17).
    """
    if a < 10.0:
        return float(sc.gammaln(a + 0.5) - sc.gammaln(a))
    b = a + 0.5
    stirling = sum(
        c * (b ** -(2 * k - 1) - a ** -(2 * k - 1)) for k, c in enumerate((1 / 12, -1 / 360, 1 / 1260, -1 / 1680), 1)
    )
    return 0.5 * math.log(a) + (a * math.log1p(0.5 / a) - 0.5) + stirling


def _t_logpdf(t: NDArray, dof: float) -> NDArray[np.float64]:
    return _log_gamma_ratio_half(dof / 2.0) - 0.5 * math.log(dof * math.pi) - (dof + 1.0) / 2.0 * np.log1p(t * t / dof)


@functools.lru_cache(maxsize=64)
def _t_to_z_table(dof: float) -> tuple[float, NDArray[np.float64]]:
    """:func:`_hermite_table`, kept for the last 64 dofs asked."""
    return _hermite_table(dof)


@functools.lru_cache(maxsize=_DOF_GRID_MAX_NODES)
def _grid_table(k: int) -> NDArray[np.float64]:
    """The coefficients of :func:`_hermite_table` for the grid's dof ``exp(k / 64)``."""
    table = _hermite_table(math.exp(k / _DOF_GRID_PER_UNIT))[1]
    _GRID_MADE.add(k)
    return table


_GRID_MADE: set[int] = set()  # the nodes whose tables have been made (and are cached, unless the cache let them go)


def _hermite_table(dof: float) -> tuple[float, NDArray[np.float64]]:
    """Cubic Hermite coefficients of g(s) = z(t) / t on s = log1p(t), t >= 0, uniform in s.

    Returns ``(1/h, coef)`` with ``coef[i] = (c0, c1, c2, c3)`` for the interval ``[i*h, (i+1)*h]``.
    """
    h = 1.0 / _NODES_PER_UNIT
    n_int = int(math.ceil(math.log1p(_T_TABLE_MAX) / h))
    s = np.arange(n_int + 1) * h
    t = np.expm1(s)
    z = _t_to_z_exact(t, dof)
    # dz/dt = f_T(t) / phi(z), in log space so that neither density underflows.
    dz_dt = np.exp(_t_logpdf(t, dof) - (-0.5 * z * z - 0.5 * math.log(2 * math.pi)))
    g = np.empty_like(t)
    dg_ds = np.empty_like(t)
    g[0] = math.exp(_t_logpdf(np.zeros(1), dof)[0] + 0.5 * math.log(2 * math.pi))  # ratio of densities at 0
    dg_ds[0] = 0.0  # g is even in t
    tt = t[1:]
    g[1:] = z[1:] / tt
    dg_ds[1:] = (1.0 + tt) * (dz_dt[1:] * tt - z[1:]) / (tt * tt)
    y0, y1 = g[:-1], g[1:]
    m0, m1 = h * dg_ds[:-1], h * dg_ds[1:]
    coef = np.stack([y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1], axis=1)
    return 1.0 / h, np.ascontiguousarray(coef)


def t_to_z(t: ArrayLike, dof, workers: int | None = None) -> NDArray[np.float64]:
    """z-scores of t statistics: the signed normal value with the same upper-tail probability.

    `dof` is a number, or an array of t's shape (a dof per value; NaN where dof <= 0). Large inputs are converted
    on up to `workers` threads (None: every CPU this process may run on), each a span of the values, giving the
    z of one thread bit for bit: with a dof per value computed exactly (see :func:`_t_to_z_each`) and its tables;
    with one dof, by the compiled kernel once loaded, spans of at least 65,536 values (200,000 values: 1.9 against
    2.7 ms on 2 cores, best of 21).

    Relative error below 1e-12 for every t and dof >= 1 (checked against mpmath); NaN stays NaN.
    """
    t = np.asarray(t, dtype=float)
    workers = resolve_workers(workers)
    if np.ndim(dof) > 0:  # a dof per value (effective dof of AR models)
        dof = np.broadcast_to(np.asarray(dof, dtype=float), t.shape)
        z = np.full(t.shape, np.nan)
        ok = ~np.isnan(t) & (dof > 0)
        normal = ok & np.isinf(dof)  # infinite dof: t is already a z
        z[normal] = t[normal]
        ok &= ~normal
        z[ok] = _t_to_z_each(t[ok], dof[ok], workers)
        return z
    dof = float(dof)
    if not dof > 0:
        raise ValueError(f"`dof` must be positive; got {dof}.")
    if math.isinf(dof):
        return t.copy()
    inv_h, coef = _t_to_z_table(dof)
    flat = np.ascontiguousarray(t).reshape(-1)
    z = np.empty_like(flat)
    if kernels_loaded():  # (never import numba just for this) spans on the CPUs: the kernel releases the GIL
        parts = max(1, min(workers, flat.size // _TABLED_SPAN))
        spans = even_spans(flat.size, parts)
        beyond = sum(run_in_threads(lambda s: hermite_z(flat[s], inv_h, coef, z[s]), spans, parts))
    else:
        beyond = hermite_z_numpy(flat, inv_h, coef, z)
    if beyond:
        beyond = np.isnan(z) & ~np.isnan(flat)  # left NaN by the kernel
        z[beyond] = _t_to_z_exact(flat[beyond], dof)
    return z.reshape(t.shape)


def _t_to_z_each(t: NDArray, dof: NDArray, workers: int = 1) -> NDArray[np.float64]:
    """z for t with a dof each (dof > 0, no NaN): interpolated between the tables of a grid of dofs by the
    compiled kernel where it is loaded and worth it, otherwise exact (on `workers` threads).

    Exact costs ~0.35 us per value (the incomplete beta function), the tables ~2 ms per grid dof once and
    then ~20 ns per value; the compiled kernel takes ~0.5 s to load, so it is loaded (in the background)
    only once a process has converted a million values exactly.
    """
    global _exact_each_done
    if t.size >= _MANY_EACH and kernels_loaded():
        z = _t_to_z_tabled(t, dof, workers)
        if z is not None:
            return z
    _exact_each_done += t.size
    if _exact_each_done >= _EXACT_EACH_BEFORE_COMPILING:
        _kernels.compile_in_background()
    return _exact_in_spans(t, dof, workers)


def _exact_in_spans(t: NDArray, dof: NDArray, workers: int) -> NDArray[np.float64]:
    """:func:`_t_to_z_exact` with a dof per value, spans of at least _EXACT_SPAN values on up to `workers`
    threads. scipy's special functions release the GIL, and each z depends on its own t and dof only, so the
    spans give the z that one call gives, bit for bit (the 230k voxels of an AR(1) fit: 0.075 s on one thread,
    0.036 s on two)."""
    parts = max(1, min(workers, t.size // _EXACT_SPAN))
    if parts == 1:
        return _t_to_z_exact(t, dof)
    z = np.empty_like(t)

    def span(s: slice) -> None:
        z[s] = _t_to_z_exact(t[s], dof[s])

    run_in_threads(span, even_spans(t.size, parts), parts)
    return z


def _t_to_z_tabled(t: NDArray, dof: NDArray, workers: int = 1) -> NDArray[np.float64] | None:
    """:func:`_t_to_z_each` by the compiled kernel over the grid's tables (values off the grid or beyond the
    tables exact); None where no dof is on the grid or they spread over more than _DOF_GRID_MAX_NODES nodes."""
    lo, hi = _DOF_GRID_RANGE
    on_grid = (dof >= lo) & (dof <= hi)
    if not on_grid.any():
        return None
    log_dof = np.log(dof[on_grid])
    first = math.floor(log_dof.min() * _DOF_GRID_PER_UNIT) - 4  # a node to spare at either end
    last = math.floor(log_dof.max() * _DOF_GRID_PER_UNIT) + 5
    if last - first >= _DOF_GRID_MAX_NODES:
        return None
    nodes = range(first, last + 1)
    missing = [k for k in nodes if k not in _GRID_MADE]  # made on `workers` threads (scipy's functions release the GIL)
    run_in_threads(_grid_table, missing, min(workers, len(missing)))
    coef = np.stack([_grid_table(k) for k in nodes])
    z = np.empty_like(t)
    tabled = t[on_grid]
    zt = np.empty_like(tabled)
    _kernels.hermite_z_dofs(tabled, log_dof, _NODES_PER_UNIT, coef, first, _DOF_GRID_PER_UNIT, zt)
    z[on_grid] = zt
    exact = ~on_grid
    exact[on_grid] = np.isnan(zt)  # |t| beyond the tables
    z[exact] = _t_to_z_exact(t[exact], dof[exact])
    return z


def _log_gammaincc_far(a: float, y: NDArray) -> NDArray[np.float64]:
    """``log Q(a, y)``, the regularized upper incomplete gamma function, for y > a + 1 (its far tail, where Q
    underflows): Legendre's continued fraction by the modified Lentz method, in log space."""
    tiny = 1e-300
    b = y + 1.0 - a
    c = np.full_like(y, 1.0 / tiny)
    d = 1.0 / b
    h = d.copy()
    for i in range(1, 10_000):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-16):
            break
    return -y + a * np.log(y) - sc.gammaln(a) + np.log(h)


def _chi2_logsf(x: NDArray, k: float) -> NDArray[np.float64]:
    """``log P(X > x)`` for X chi-square with k degrees of freedom, finite for any finite x (the F
    distribution's limit as its denominator dof grows: df1 F is chi-square with df1)."""
    sf = sc.chdtrc(k, x)
    with np.errstate(divide="ignore"):
        out = np.where(sf > 0.5, np.log1p(-sc.chdtr(k, x)), np.log(sf))
    far = sf < _TINY
    if np.any(far):
        out[far] = _log_gammaincc_far(k / 2.0, x[far] / 2.0)
    return out


def _f_with_infinite_df2(F: NDArray, df2) -> NDArray[np.bool_] | None:
    """Where the denominator dof `df2` (a number or one per F) is infinite, or None if nowhere."""
    infinite = np.broadcast_to(np.isinf(np.asarray(df2, dtype=float)), F.shape)
    return infinite if infinite.any() else None


def f_logsf(F: ArrayLike, df1: float, df2) -> NDArray[np.float64]:
    """Natural log of the upper tail ``P(F' > F)`` of the F distribution, finite for any finite F; `df2` a
    number or one per F, infinite for the chi-square limit."""
    F = np.asarray(F, dtype=float)
    infinite = _f_with_infinite_df2(F, df2)
    if infinite is not None:
        out = np.empty(F.shape)
        out[infinite] = _chi2_logsf(df1 * F[infinite], df1)
        if not infinite.all():
            finite_df2 = np.broadcast_to(np.asarray(df2, dtype=float), F.shape)[~infinite]
            out[~infinite] = f_logsf(F[~infinite], df1, finite_df2)
        return out
    sf = sc.fdtrc(df1, df2, F)
    with np.errstate(divide="ignore"):
        out = np.where(sf > 0.5, np.log1p(-sc.fdtr(df1, df2, F)), np.log(sf))
    tiny = sf < _TINY
    if np.any(tiny):
        ff = F[tiny]
        # P(F' > F) = I_x(df2/2, df1/2) with x = df2 / (df2 + df1 F)
        d2 = np.broadcast_to(np.asarray(df2, dtype=float), F.shape)[tiny] if np.ndim(df2) > 0 else float(df2)
        log_x, log1m_x = _log_x_pair(np.log(ff) + math.log(df1) - np.log(d2))
        out[tiny] = log_betainc_series(d2 / 2.0, df1 / 2.0, log_x, log1m_x)
    return out


def f_to_z(F: ArrayLike, df1: float, df2) -> NDArray[np.float64]:
    """z-scores of F statistics: the normal value whose upper-tail probability is the F's p-value (`df2` a
    number or one per F; infinite: the chi-square limit).

    Computed from whichever tail of F is smaller, so that z is accurate for p near 0 and near 1.
    """
    F = np.asarray(F, dtype=float)
    logsf = f_logsf(F, df1, df2)
    infinite = _f_with_infinite_df2(F, df2)
    with np.errstate(divide="ignore", invalid="ignore"):
        logcdf = np.log(sc.fdtr(df1, df2, F))
        if infinite is not None:  # (fdtr is NaN there) the chi-square limit
            logcdf = np.where(infinite, np.log(sc.chdtr(df1, df1 * F)), logcdf)
    upper = logsf < math.log(0.5)
    return np.where(upper, _z_from_logsf(logsf), -_z_from_logsf(np.where(upper, -1.0, logcdf)))


def z_to_p(z: ArrayLike) -> NDArray[np.float64]:
    """Upper-tail probability ``P(Z > z)`` of the standard normal."""
    return sc.ndtr(-np.asarray(z, dtype=float))


def z_to_logp(z: ArrayLike) -> NDArray[np.float64]:
    """``-log10 P(Z > z)``, finite however large z is."""
    return sc.log_ndtr(-np.asarray(z, dtype=float)) / -_LN10


def kenward_roger_reference(q, A1, A2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kenward and Roger's (1997) reference of an F of `q` independent rows, from ``A1 = sum_gh A_gh tr K_g tr
    K_h`` and ``A2 = sum_gh A_gh tr(K_g K_h)`` (A: the covariance of the variance parameters' estimates, K_g:
    Theta times the covariance's derivative in parameter g): ``(m, lambda, reach)``, ``lambda F`` referred to
    F(q, m). ``reach`` says how far the expansion is from failing: the 8-norm of ``c3 B``, ``-c1 B`` and
    ``A2 / q``, each of which must stay below 1 (V* and E* turn negative or infinite there). No fallback: m and
    lambda may be NaN or out of range where the expansion fails; callers choose theirs."""
    q, A1, A2 = (np.asarray(x, dtype=np.float64) for x in (q, A1, A2))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        B = (A1 + 6.0 * A2) / (2.0 * q)
        g = ((q + 1.0) * A1 - (q + 4.0) * A2) / ((q + 2.0) * A2)
        d = 3.0 * q + 2.0 * (1.0 - g)
        c1, c2, c3 = g / d, (q - g) / d, (q + 2.0 - g) / d
        E = 1.0 / (1.0 - A2 / q)
        V = 2.0 / q * (1.0 + c1 * B) / ((1.0 - c2 * B) ** 2 * (1.0 - c3 * B))
        rho = V / (2.0 * E * E)
        m = 4.0 + (q + 2.0) / (q * rho - 1.0)
        lam = m / (E * (m - 2.0))
        reach = (np.maximum(c3 * B, 0.0) ** 8 + np.maximum(-c1 * B, 0.0) ** 8 + (A2 / q) ** 8) ** 0.125
    return m, lam, reach


def kenward_roger_or_satterthwaite(q, A1, A2) -> tuple[np.ndarray, np.ndarray]:
    """The denominator dof ``m`` and scale ``lambda`` of an F of `q` independent rows from Kenward and Roger's
    ``A1`` and ``A2`` (:func:`kenward_roger_reference`) where their expansion holds, and Satterthwaite's dof of
    the rows' mean trace, ``2 q^2 / A1``, with no scale where it fails: as its ``reach`` goes from 0.5 to 0.9, m
    and lambda pass from one to the other smoothly (smootherstep), and the latter holds beyond, or wherever Kenward
    and Roger's m is not above 2 or lambda not positive. The AR F's reference (``voxfit.core.ar._ar_f_reference``:
    few dof or an uncertain phi make the expansion fail there) and that of fixed effects weighted by estimated
    first-level variances (``voxfit.core.mixed.fixed_kenward_roger``). For one row with ``A1 = A2``, both are
    ``2 / A1`` and 1."""
    m, lam, reach = kenward_roger_reference(q, A1, A2)
    with np.errstate(divide="ignore", invalid="ignore"):
        satterthwaite = 2.0 * np.asarray(q, dtype=np.float64) ** 2 / A1
    x = np.clip((0.9 - reach) / 0.4, 0.0, 1.0)
    w = x * x * x * (x * (6.0 * x - 15.0) + 10.0)
    w = np.where(np.isfinite(m) & np.isfinite(lam) & (m > 2.0) & (lam > 0.0), w, 0.0)
    with np.errstate(invalid="ignore"):
        return (
            np.where(w > 0, w * m + (1.0 - w) * satterthwaite, satterthwaite),
            np.where(w > 0, w * lam + (1.0 - w), 1.0),
        )
