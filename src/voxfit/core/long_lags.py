"""What per-voxel AR(p) models miss at long lags, measured over the mask and taken into the contrasts' variances.

An AR(p) model at repetition time TR resolves the noise spectrum only to about 1/(p TR) Hz. Resting-state noise
rises as 1/f below 0.1 Hz, so the fitted spectrum is smoothed over the frequencies where slow block designs sit
(0.017 Hz for 30 s blocks, 0.025 Hz for 20 s blocks, just above a 128 s high-pass): too low at some, too high at
others. A contrast's variance is then off by a few per cent, in a direction that depends on the design, and its
false-positive rate with it (validation/results/noise_realistic.md, "The default over five seeds": 20 s blocks 6%
conservative at every TR, 30 s blocks up to 9% liberal). A longer AR per voxel cannot resolve it within a run's
degrees of freedom.

What is left after each voxel's own whitening W is nearly the same everywhere, so it is estimated once, pooled:
1. the whitened residuals ``r = W y - W X b`` of a sample of voxels spread over the mask (:data:`SAMPLE_VOXELS`);
2. their autocorrelations at lags 1..L (L covering :data:`LAG_SECONDS`), each voxel's normalised by its own
   variance, averaged, and corrected for the bias the fit puts in them (Worsley et al. 2002, NeuroImage 15:1, as
   :func:`voxfit.core.ar.bias_matrix` does for the AR estimates, with the residual-forming matrix of the design
   whitened by the model of the median reflection coefficients), less what fitting each voxel's model to its own
   residuals takes out of them (:func:`_self_fit_bias`, by simulation of the sampled voxels' models: about -1/n at
   lags 1..p+1, a factor of 0.96 in place of 1 on 60 scans of AR(1) noise fitted by AR(1)): the correlation matrix
   P of the whitened noise (not tapered; see below); with fewer than :data:`MIN_VOXELS` voxels to measure (small
   masks, exact fits), no correction;
3. per contrast ``c``, with ``u = W X (X'W'WX)^+ c'`` of each sampled voxel, the ratio of the sandwich variance
   ``u'P u`` to the model's ``u'u``, divided by the ratio ``trace(R P) / (n - rank)`` by which P biases the
   residual variance; the mean over the sample is the contrast's factor (an F contrast's, the mean of
   ``trace((U'U)^+ U'PU) / rank(U)``).

Every voxel's variance of that contrast is multiplied by the factor (its t divided by the root; an F by the factor);
the degrees of freedom are kept. The factor varies little between voxels (5-95% range within 0.01 on the simulated
noise), so one per contrast is what is estimated, its sandwich ratio on :data:`SANDWICH_VOXELS` of the sample. On
white or AR(p) noise that the voxels' models fit, P is the identity to sampling error and the factors are 1 within
a few per cent.

L: 64 s. On 8 cells of 40,000 voxels of validation/noise_realistic.py's noise (blocks of 10, 20 and 30 s and
events, TR 0.7 to 3 s), the factor that makes the rate of p < 0.05 exactly 0.05 was 0.949-1.036; the correction's
factor missed it by 1.5% (root mean square) with 64 s and the taper, 1.9% with 128 s, more with 256 s or without
the taper, and 3.2% without any correction. What was left, a 1% under-estimate everywhere that AR(p) alone has on
noise it fits too, was the p degrees of freedom of the voxels' AR coefficients, now counted in their variance
(``voxfit.core.ar.estimation_terms``; validation/results/noise_realistic.md, "The long-lag correction" and "The AR
coefficients' degrees of freedom").

The taper was dropped when the AR fit's own term was taken out (2026-12-07): over 8 draws of 20,000 voxels in each
of 8 cells (blocks of 10, 20, 30 s and events at TR 2 and 3), the mean of factor - k* was 0.016 (root mean square
over the cells) with the taper and 0.005 without it (0.005 with a taper four times as wide); with the earlier
estimate, which lacked that term, the taper had been the better (0.005 against 0.016, blocks of 30 s 3% liberal
without it): the taper had been making up for the missing term (validation/results/noise_realistic.md, "The AR
fit's own term").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .ar import (
    ARBlock,
    ar_whiten,
    ar_whitening,
    bias_matrix,
    fit_ar_sums,
    lagged_sums,
    model_autocorrelations,
    reflection_coefficients,
)
from .contrast import Stats, f_stats, t_stats
from .design import DesignFactor, factorize

__all__ = [
    "LAG_SECONDS",
    "SAMPLE_VOXELS",
    "LongLags",
    "corrected_stats",
    "long_lag_count",
    "long_lag_factors",
    "sample_voxels",
]

LAG_SECONDS = 64.0  # the lags pooled: about a minute (chosen over 128 and 256 s; see the module docstring)
MAX_LAGS = 200  # at the shortest TRs
SAMPLE_VOXELS = 2000  # voxels whose whitened residuals are pooled (spread evenly over the mask)
MIN_VOXELS = 200  # measurable voxels (not fitted exactly) below which no correction is made (factors 1)
SANDWICH_VOXELS = 200  # of the sample: their whitened designs give each contrast's sandwich ratio
SAMPLE_BYTES = 16 << 20  # of the sample's data, at most (long runs sample fewer voxels)
CHUNK = 256  # sampled voxels whitened together
ROUNDING = 1e-20  # residuals below it, relative to the data's sum of squares, are an exact fit's rounding
SELF_FIT_SERIES = 2000  # simulated series that measure what fitting the voxels' own AR models adds (_self_fit_bias)
SELF_FIT_BYTES = 8 << 20  # of those series, at most (long runs simulate fewer)
SELF_FIT_SEED = 20021  # the same series every run: the correction is a function of the design and the models
SELF_FIT_WORK = 4_000_000  # series x rank^2 x (order + 1), at most: 2,000 series of rank 20 at AR(4)


@dataclass(frozen=True)
class LongLags:
    """The pooled correction of a fit: the lags L, the whitened noise's autocorrelations at lags 0..L,
    the voxels measured, each contrast's variance factor, and whether it was made (`applied`: False, every factor 1,
    with fewer than :data:`MIN_VOXELS` measurable voxels)."""

    lags: int
    autocorrelation: NDArray
    voxels: int
    factors: dict[str, float]
    applied: bool = True

    def corrected(self, stats: dict[str, Stats], workers: int | None = None) -> dict[str, Stats]:
        """The contrasts' statistics with their variances multiplied by the factors (z of t on up to `workers`
        threads; None: every CPU)."""
        return {label: corrected_stats(st, self.factors[label], workers) for label, st in stats.items()}

    def record(self) -> dict:
        """For model.json."""
        return {
            "applied": self.applied,
            **({} if self.applied else {"why_not": f"fewer than {MIN_VOXELS} voxels with residuals to measure"}),
            "lags": self.lags,
            "measured_voxels": self.voxels,
            "variance_factors": {k: round(v, 6) for k, v in self.factors.items()},
            "autocorrelation": [round(float(r), 6) for r in self.autocorrelation[1:]],
        }


def long_lag_count(n_scans: int, rank: int, tr: float | None) -> int:
    """L: the lags within :data:`LAG_SECONDS` (30 without a TR), at most :data:`MAX_LAGS` and a quarter of the
    residual degrees of freedom."""
    wanted = int(round(LAG_SECONDS / float(tr))) if tr is not None and np.isfinite(tr) and tr > 0 else 30
    return max(1, min(wanted, MAX_LAGS, (n_scans - rank) // 4))


def sample_voxels(valid: NDArray, n_scans: int, count: int = SAMPLE_VOXELS) -> NDArray[np.intp]:
    """Up to `count` positions among the `valid` voxels, evenly spaced (the same every run), as many as
    :data:`SAMPLE_BYTES` holds of runs of `n_scans` scans in float64 (at least :data:`SANDWICH_VOXELS`)."""
    count = max(SANDWICH_VOXELS, min(count, SAMPLE_BYTES // (8 * max(1, int(n_scans)))))
    idx = np.flatnonzero(valid)
    if idx.size <= count:
        return idx
    return idx[np.linspace(0, idx.size - 1, count).round().astype(np.intp)]


def long_lag_factors(
    design: DesignFactor, Y: NDArray, phi: NDArray, betas: NDArray, weights: dict, tr: float | None
) -> LongLags:
    """The correction (see the module docstring) from the data `Y` (n, s) of the sampled voxels, their AR
    coefficients `phi` (p, s) and whitened fit's `betas` (columns, s) as the fit estimated them, and the contrasts'
    weights ``{label: w (q, columns)}``."""
    lags = long_lag_count(design.n_scans, design.rank, tr)
    keep = np.isfinite(Y).all(axis=0) & np.isfinite(phi).all(axis=0) & np.isfinite(betas).all(axis=0)
    phi = np.ascontiguousarray(phi[:, keep].T)
    pooled, count = _pooled_autocorrelations(design.X, Y[:, keep], phi, betas[:, keep], lags)
    if count < MIN_VOXELS:  # (a factor from a few voxels would be noisier than the bias it corrects)
        return _none(lags, weights, count)
    pooled = pooled - _self_fit_bias(design, phi, lags)
    rho, residual_share = _whitened_noise(design, phi, pooled)
    if not (np.isfinite(rho).all() and residual_share > 0):  # nothing usable in the lags
        return _none(lags, weights, count)
    few = phi[:: max(1, phi.shape[0] // SANDWICH_VOXELS)]  # the factor varies little between voxels
    ratios = {label: [] for label in weights}
    for a in range(0, few.shape[0], CHUNK // 8):  # each voxel's whitened design holds n x columns values
        Xw, G = _whitened_designs(design.X, few[a : a + CHUNK // 8])
        for label, w in weights.items():
            ratios[label].append(_sandwich_ratio(Xw, G, w, rho))
    factors = {}
    for label, parts in ratios.items():
        r = np.concatenate(parts)
        r = r[np.isfinite(r)]
        factor = float(np.mean(r) / residual_share) if r.size else 1.0
        factors[label] = factor if np.isfinite(factor) and factor > 0 else 1.0
    return LongLags(lags, rho, count, factors)


def _pooled_autocorrelations(X: NDArray, Y: NDArray, phi: NDArray, betas: NDArray, lags: int) -> tuple[NDArray, int]:
    """The whitened residuals' ``W (y - X b)`` lagged products at lags 0..`lags`, each voxel's divided by its own sum
    of squares, averaged over the voxels that the design does not fit exactly; and how many those are."""
    pooled, count = np.zeros(lags + 1), 0
    for a in range(0, phi.shape[0], CHUNK):  # (a chunk at a time: the FFT's work stays a few MiB)
        part = slice(a, a + CHUNK)
        y = np.asarray(Y[:, part], dtype=np.float64)
        e = y - X @ betas[:, part]
        noise = np.einsum("tv,tv->v", e, e) > ROUNDING * np.einsum("tv,tv->v", y, y)  # not an exact fit's rounding
        lagged = _lagged(ar_whiten(e[:, noise], phi[part][noise]), lags)
        pooled += np.sum(lagged / lagged[0], axis=1)
        count += int(noise.sum())
    return pooled / max(count, 1), count


def _self_fit_bias(design: DesignFactor, phi: NDArray, lags: int) -> NDArray:
    """What whitening each voxel by the AR model fitted to its own residuals adds to the pooled autocorrelations
    (lags 0..`lags`), beyond the design's bias that Worsley's matrix takes out: the model soaks up a little of the
    very autocorrelations it leaves (about -1/n at lags 1..p+1 of an AR(p); for 60 scans of AR(1), 0.96 in place
    of a factor of 1 on noise the model fits). Measured by simulation, as a difference: series of the sampled
    voxels' models (spread over `phi` (v, p)), fitted as the fits do and whitened by the models fitted to them,
    less the same series whitened by their true models, whose pooled autocorrelations are Worsley's exactly (for
    a projection R, ``e'De / e'e`` is unbiased). The difference is O(1/n) per series, so a few thousand series
    measure it to about 0.002 of a factor."""
    n, p, r = design.n_scans, phi.shape[1], design.rank
    # (fewer for designs of many columns: the AR fit of one series costs r^2 (p + 1); rank 250 at AR(8), 200 series)
    series = min(SELF_FIT_SERIES, SELF_FIT_BYTES // (8 * n), SELF_FIT_WORK // (r * r * (p + 1)))
    series = max(SANDWICH_VOXELS, series)
    models = phi[np.linspace(0, phi.shape[0] - 1, min(series, phi.shape[0])).round().astype(np.intp)]
    models = _held_from_unit_root(np.tile(models, (-(-series // models.shape[0]), 1))[:series])
    rng = np.random.default_rng(SELF_FIT_SEED)
    block = ARBlock(design, p)
    # a chunk of series at a time: the AR fit holds a few r x r matrices per series (rank 250: 0.5 MiB each)
    chunk = int(max(8, min(series, SELF_FIT_BYTES // (8 * (n + 8 * (p + 1) * r * r)))))
    own, true, count = np.zeros(lags + 1), np.zeros(lags + 1), 0
    for a in range(0, series, chunk):
        part = models[a : a + chunk]
        Y = _ar_series(rng, part, n)
        sums, _ = lagged_sums(block, Y)
        fitted = fit_ar_sums(block, sums, [])  # (no data: series whose sums lose digits are flagged, not refitted)
        known = fit_ar_sums(block, sums, [], autocorrelations=lambda _, m=part: model_autocorrelations(m)[0])
        kept = np.setdiff1d(np.arange(part.shape[0]), np.union1d(fitted.flagged, known.flagged))
        if not kept.size:
            continue
        mean_own, _ = _pooled_autocorrelations(design.X, Y[:, kept], fitted.phi[kept], fitted.betas[:, kept], lags)
        mean_true, _ = _pooled_autocorrelations(design.X, Y[:, kept], part[kept], known.betas[:, kept], lags)
        own, true, count = own + kept.size * mean_own, true + kept.size * mean_true, count + kept.size
    return (own - true) / max(count, 1)


def _held_from_unit_root(phi: NDArray, bound: float = 0.9) -> NDArray:
    """The AR models `phi` (v, p) with each reflection coefficient held within +-`bound`: near a unit root the
    simulated series' fits lose digits and are refitted one at a time (40 s for 2,000 series at 0.97; a reviewer's),
    for a term that is O(1/n) whatever the model."""
    return _from_reflections(np.clip(reflection_coefficients(phi), -bound, bound))


def _from_reflections(K: NDArray) -> NDArray:
    """AR models (v, p) of reflection coefficients `K` (v, p), by Levinson's step-up."""
    a = np.zeros((K.shape[0], 0))
    for j in range(K.shape[1]):
        a = np.concatenate([a - K[:, j : j + 1] * a[:, ::-1], K[:, j : j + 1]], axis=1)
    return a


def _ar_series(rng: np.random.Generator, phi: NDArray, n: int) -> NDArray:
    """(n, v) series of the AR models `phi` (v, p) with unit innovations, stationary from the first scan (its first
    p scans drawn from the model's covariance: the inverse of the fits' whitening there)."""
    v, p = phi.shape
    rho, gamma0 = model_autocorrelations(phi)
    root = np.linalg.inv(ar_whitening(phi, rho, gamma0))  # (v, p, p)
    innovations = rng.standard_normal((n, v))
    out = np.empty((n, v))
    out[:p] = np.einsum("vab,bv->av", root, innovations[:p])
    taps = np.ascontiguousarray(phi.T)  # (p, v): lag 1 first
    for t in range(p, n):
        out[t] = innovations[t] + np.einsum("jv,jv->v", taps, out[t - 1 :: -1][:p])
    return out


def _whitened_noise(design: DesignFactor, phi: NDArray, pooled: NDArray) -> tuple[NDArray, float]:
    """P's autocorrelations from the pooled ones, corrected for the fit's bias by Worsley's matrix of the design
    whitened by the sampled voxels' typical model (:func:`_typical_model`); and ``trace(R P) / (n - rank)``, the
    bias P puts in the residual variance."""
    X, lags = design.X, pooled.size - 1
    typical = _typical_model(phi)
    M = bias_matrix(factorize(ar_whiten(X, np.broadcast_to(typical, (X.shape[1], typical.size))), warn=False), lags)
    gamma = np.linalg.lstsq(M, pooled, rcond=None)[0]
    rho = gamma / gamma[0]
    # over n - rank, though the AR contrasts take sigma^2 over n - rank - p: the consistent (trace(R P) - p) / (n -
    # rank - p) differs by p (share - 1) / (n - rank - p), under 0.1% at the default orders (0.6% for AR(16) over 300
    # scans with a share of 1.1); the factors and the validation's tables are kept as measured
    return rho, float(M[0] @ rho) / (design.n_scans - design.rank)


def _none(lags: int, weights: dict, voxels: int = 0) -> LongLags:
    """No correction (every factor 1): too few voxels with residuals to measure, or nothing measurable in them."""
    return LongLags(lags, np.r_[1.0, np.zeros(lags)], voxels, dict.fromkeys(weights, 1.0), applied=False)


def _typical_model(phi: NDArray) -> NDArray:
    """The AR model (p,) of the median of each reflection coefficient over the models `phi` (v, p): stationary (each
    median within (-1, 1); the coefficients' own median need not be) and continuous in them (a rounding-level
    change moves it as little: a choice among the voxels' models could jump)."""
    return _from_reflections(np.median(reflection_coefficients(phi), axis=0)[None, :])[0]


def _whitened_designs(X: NDArray, phi: NDArray) -> tuple[NDArray, NDArray]:
    """Each voxel's whitened design ``W X`` (v, n, columns), whitened as the fits do, and the pseudo-inverse of its
    Gram matrix (v, columns, columns), for the AR coefficients `phi` (v, p)."""
    Xw = np.ascontiguousarray(ar_whiten(np.repeat(X[:, :, None], phi.shape[0], axis=2), phi).transpose(2, 0, 1))
    return Xw, np.linalg.pinv(Xw.transpose(0, 2, 1) @ Xw, hermitian=True)


def _lagged(R: NDArray, lags: int) -> NDArray:
    """(lags+1, v): sum_t r_t r_{t+h} for h = 0..lags, by FFT."""
    n = R.shape[0]
    size = 1 << int(np.ceil(np.log2(n + lags + 1)))
    F = np.fft.rfft(R, size, axis=0)
    return np.fft.irfft(F.real**2 + F.imag**2, size, axis=0)[: lags + 1]


def _sandwich_ratio(Xw: NDArray, G: NDArray, w: NDArray, rho: NDArray) -> NDArray:
    """Per voxel, ``trace((U'U)^+ U'PU) / rank(U)`` with ``U = Xw G w'`` (n, q) and P the Toeplitz matrix of `rho`
    (the rank, not q: an F contrast's redundant rows add nothing)."""
    U = Xw @ (G @ w.T)  # (v, n, q)
    n, lags = U.shape[1], rho.size - 1
    size = 1 << int(np.ceil(np.log2(n + lags)))
    kernel = np.zeros(size)  # P u = u convolved with rho at lags -L..L: circularly, with room for no wrap-around
    kernel[: lags + 1], kernel[size - lags :] = rho, rho[:0:-1]
    PU = np.fft.irfft(np.fft.rfft(U, size, axis=1) * np.fft.rfft(kernel)[None, :, None], size, axis=1)[:, :n]
    Ut = U.transpose(0, 2, 1)
    A_inv = np.linalg.pinv(Ut @ U, hermitian=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(A_inv @ (Ut @ PU), axis1=1, axis2=2) / np.trace(A_inv @ (Ut @ U), axis1=1, axis2=2)


def corrected_stats(st: Stats, factor: float, workers: int | None = None) -> Stats:
    """`st` with every voxel's variance multiplied by `factor`: t divided by its root, F by it; the same dof."""
    usable = np.isfinite(st.stat)
    if st.kind == "t":
        return t_stats(st.name, st.weights, st.effect, st.variance * factor, usable, st.dof, workers=workers)
    scale = None if st.scale is None else st.scale * factor
    covariance = st.unscaled_covariance if scale is not None else st.unscaled_covariance * factor
    return f_stats(st.name, st.weights, st.effect, covariance, usable, st.dof[1], scale=scale)
