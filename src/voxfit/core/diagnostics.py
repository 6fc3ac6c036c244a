"""Whiteness of whitened residuals (``--diagnostics``): what a noise model leaves in the residuals.

From each voxel's whitened residuals e (n scans; the raw residuals for OLS):

- the lag-k autocorrelation ``r_k = sum_t e_t e_{t+k} / sum_t e_t^2`` (not demeaned: the residuals' mean is
  the design's business; with a constant in the design OLS residuals sum to zero);
- Ljung-Box's portmanteau ``Q = (r - mu)' C^-1 (r - mu)`` over lags 1..h, referred to a chi-square on ``h - m``
  degrees of freedom, m the noise parameters estimated from the voxel's own residuals (Box and Pierce's
  correction for fitted AR terms; statsmodels' ``model_df``): h = ``LJUNG_BOX_DOF + m`` lags so that every
  voxel's test has ``LJUNG_BOX_DOF`` degrees of freedom. ``mu`` and ``C`` are the mean and covariance of
  the r_k for the residuals ``e = R eps`` of white noise after the fit (R the residual-forming matrix, S_k the
  symmetric lag-k shift; Worsley's ``M_ij = trace(R S_i R S_j) / 2``, ``voxfit.core.ar.bias_matrix``):
  ``mu_k = M_k0 / M_00`` and ``C_jk = M_jk / (M_00 (M_00 + 2))`` (:func:`whiteness_moments`); with no design,
  ``mu_k = 0`` and C diagonal, ``(n - k) / (n (n + 2))``: Ljung and Box's statistic. Without them, 4 smooth columns
  over 200 scans leave ``mu_k ~ -0.02`` at every lag, and the share of rejections of white
  noise is 0.064. Q's tail is heavier than the chi-square's at fMRI
  lengths (Ljung and Box's own statistic rejects white noise at 0.055 for n = 200, h = 10: Var(Q) = 21.6, not
  20), so Q is referred to Satterthwaite's scaled chi-square ``f chi2(d / f)`` with f = Var(Q) / (2h) under
  white noise for the fitted design, Var(Q) from ``NULL_DRAWS`` simulated series (:func:`whiteness_moments`);
- the periodogram ``|sum_t e_t exp(-i w t)|^2 / sum_t e_t^2`` at the Fourier frequencies 0..n/2 (cycles per
  scan): its mean over all n frequencies is 1 (Parseval), so white residuals average 1 at every frequency,
  the flat line the mask's average is drawn against.

The verdict: the residuals of a fit are called not white when the share of voxels whose Ljung-Box p is below
``REJECT_AT`` exceeds both the upper end of the central 95% binomial interval of that share for independent
voxels under whiteness (``binom.ppf(0.975, V, REJECT_AT) / V``) and ``SHARE_FLOOR`` (1.5 x the level). The floor
allows for what the binomial interval does not: the correlation of neighbouring voxels, which widens
the share's spread far beyond the binomial's on real data. The rule is a screen; the spectrum shows where (which
frequencies) colour is left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from .ar import bias_matrix
from .design import DesignFactor
from .film import residual_lagged_products

__all__ = [
    "ACF_LAGS",
    "LJUNG_BOX_DOF",
    "REJECT_AT",
    "SHARE_FLOOR",
    "WhitenessVerdict",
    "autocorrelations",
    "WhitenessMoments",
    "ljung_box",
    "lagged_products",
    "normalised_periodogram",
    "whiteness_moments",
    "whiteness_verdict",
]

ACF_LAGS = 4  # lags of the autocorrelation maps
LJUNG_BOX_DOF = 10  # degrees of freedom of every voxel's Ljung-Box test (h = 10 + the voxel's noise parameters)
NULL_DRAWS = 20000  # white series simulated for Var(Q) (its relative error ~1.5%)
REJECT_AT = 0.05  # the Ljung-Box level whose share of rejections is judged
SHARE_FLOOR = 1.5 * REJECT_AT  # a share at or below it is never called not white (see the module's docstring)


def lagged_products(E: NDArray, lags: int) -> NDArray[np.float64]:
    """(lags+1, v): ``sum_t e_t e_{t+k}`` for k = 0..lags of the residuals E (n, v)."""
    E = np.asarray(E, dtype=np.float64)
    return residual_lagged_products(np.zeros((E.shape[0], 0)), E, lags)


def autocorrelations(lagged: NDArray) -> NDArray[np.float64]:
    """(lags, v): ``r_k = lagged[k] / lagged[0]`` for k = 1..lags; NaN where ``lagged[0]`` is not positive."""
    lagged = np.asarray(lagged, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lagged[0] > 0, lagged[1:] / lagged[0], np.nan)


@dataclass(frozen=True)
class WhitenessMoments:
    """The mean `mu` (h,), variances `var` (h,) and covariance `cov` (h, h) of the lag-1..h autocorrelations of
    a fit's residuals when the
    noise is white (see the module's docstring), and the fit's rank."""

    mu: NDArray[np.float64]
    var: NDArray[np.float64]
    cov: NDArray[np.float64]
    rank: int
    inflation: float = 1.0  # Var(Q) / (2h) under white noise: Satterthwaite's scale (see the module's docstring)


def whiteness_moments(design: DesignFactor, lags: int, ljung_box_lags: int | None = None) -> WhitenessMoments:
    """:class:`WhitenessMoments` of the factorised `design` at lags 1..`lags` (from Worsley's matrix), with the
    variance inflation of Q over `ljung_box_lags` lags (None: no inflation) from ``NULL_DRAWS`` white series
    (a fixed seed: the same numbers every time)."""
    M = bias_matrix(design, lags)
    m0 = M[0, 0]
    cov = M[1:, 1:] / (m0 * (m0 + 2.0))
    moments = WhitenessMoments(M[1:, 0] / m0, np.diag(cov).copy(), cov, int(design.rank))
    if ljung_box_lags is None:
        return moments
    h, Q = ljung_box_lags, design.basis
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(NULL_DRAWS // 1000):
        eps = rng.standard_normal((design.n_scans, 1000))
        q, _ = ljung_box(residual_lagged_products(Q, eps, h), h, moments)
        total += float(np.sum((q - h) ** 2))
    return replace(moments, inflation=total / NULL_DRAWS / (2.0 * h))


def ljung_box(lagged: NDArray, dof, moments: WhitenessMoments) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Ljung-Box ``(Q, p)`` per voxel from the residuals' lagged products (h+1, v) at lags 0..h, the lag-k
    autocorrelations standardised by `moments` (lags 1..h of them used), referred to a chi-square on `dof`
    (scalar or (v,)) degrees of freedom (see the module's docstring)."""
    h = lagged.shape[0] - 1
    r = autocorrelations(lagged) - moments.mu[:h, None]
    Q = np.einsum("kv,kv->v", r, np.linalg.solve(moments.cov[:h, :h], r))
    f = moments.inflation
    return Q, stats.chi2.sf(Q / f, np.asarray(dof, dtype=np.float64) / f)


def normalised_periodogram(E: NDArray) -> NDArray[np.float64]:
    """(n//2+1,): the sum over the columns of E (n, v) of ``|rfft(e)|^2 / sum e^2`` (columns with no variance
    left out); divided by the number of columns it is 1 at every frequency for white residuals."""
    E = np.asarray(E, dtype=np.float64)
    power = np.abs(np.fft.rfft(E, axis=0)) ** 2
    ss = np.einsum("tv,tv->v", E, E)
    ok = ss > 0
    return (power[:, ok] / ss[ok]).sum(axis=1)


@dataclass(frozen=True)
class WhitenessVerdict:
    """The share of voxels whose Ljung-Box p is below `level`, the central 95% binomial interval of that share
    under whiteness for `n_voxels` independent voxels, and whether the residuals pass (share not above it)."""

    share: float
    interval: tuple[float, float]
    level: float
    n_voxels: int

    @property
    def white(self) -> bool:
        return not (self.share > self.interval[1] and self.share > SHARE_FLOOR)

    @property
    def rule(self) -> str:
        return (
            f"not white when the share of voxels with Ljung-Box p < {self.level:g} exceeds the upper end of the "
            f"central 95% binomial interval of that share for {self.n_voxels} independent voxels "
            f"([{self.interval[0]:.4f}, {self.interval[1]:.4f}]) and {SHARE_FLOOR:g}"
        )


def whiteness_verdict(p_values: NDArray, level: float = REJECT_AT) -> WhitenessVerdict:
    """The verdict on the finite `p_values` of a fit's voxels (see the module's docstring)."""
    p = np.asarray(p_values, dtype=np.float64)
    p = p[np.isfinite(p)]
    V = int(p.size)
    if V == 0:
        return WhitenessVerdict(float("nan"), (float("nan"), float("nan")), level, 0)
    lo, hi = stats.binom.ppf([0.025, 0.975], V, level) / V
    return WhitenessVerdict(float(np.mean(p < level)), (float(lo), float(hi)), level, V)
