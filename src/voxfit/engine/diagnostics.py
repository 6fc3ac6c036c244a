"""Diagnostics of a fit's whitened residuals, a block of voxels at a time (``voxfit fit --diagnostics``).

Each noise model's own whitened residuals (see ``voxfit.core.diagnostics`` for the statistics and the rule):

- OLS: the raw residuals ``y - X b``;
- pooled models (``ar1-global``, ``fast``): ``W y - X_w b``, the whitened design ``X_w`` as fitted (SPM's: the
  drift columns left unwhitened);
- AR(p) per voxel (``ar1`` .. ``ar8``, ``auto`` at each voxel's order, ``film``'s AR(M) filter): each voxel's
  exact whitening (``voxfit.core.ar.ar_whiten``) of its GLS residuals ``y - X b``;
- ``arma11``: each voxel's exact ARMA(1,1) whitening (``voxfit.core.arma.arma_whiten``) of ``y - X b``.

Degrees of freedom taken by the noise model per voxel (Ljung-Box's ``m``): OLS, pooled models and FILM 0 (the
pooled covariance is estimated from all voxels; FILM's autocorrelations are tapered and smoothed over
neighbours, so the voxel's own residuals do not fit them freely: 0 errs towards no warning), AR(p) p, ``auto``
the order chosen at the voxel, ARMA(1,1) 2.

The residuals are formed for one block of voxels at a time (under the ``block`` budget) and reduced at once to
lagged products, Ljung-Box statistics and the block's share of the mask's mean periodogram; no n x V residual
array is kept (:func:`whitened_residuals` forms them all, for small data and tests).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from .._execution import Execution
from .._threads import blas_single_threaded, resolve_workers, run_in_threads
from ..core.ar import ar_whiten
from ..core.arma import arma_whiten
from ..core.diagnostics import (
    ACF_LAGS,
    LJUNG_BOX_DOF,
    WhitenessVerdict,
    autocorrelations,
    lagged_products,
    ljung_box,
    normalised_periodogram,
    whiteness_moments,
    whiteness_verdict,
)
from ..core import factorize
from ..exceptions import InputError
from ..io import statmap_name

__all__ = [
    "ResidualDiagnostics",
    "WhitenessWarning",
    "Whitener",
    "noise_whitener",
    "residual_diagnostics",
    "whitened_residuals",
]

SPECTRUM_FILE = "desc-whitened_spectrum.tsv"


class WhitenessWarning(UserWarning):
    """The whitened residuals of a fit are not white by the rule of ``voxfit.core.diagnostics``."""


@dataclass(frozen=True, eq=False)
class Whitener:
    """How to form a fit's whitened residuals: ``kind`` (``ols``, ``pooled``, ``ar``, ``arma``), the fitted
    design `design` (n, pc; the whitened one for pooled models) and `betas` (pc, V), the voxels fitted
    (`valid`, V), the pooled `whitening` W (n, n), the per-voxel noise `parameters` (k, V: AR coefficients, or
    a and b), the noise parameters each voxel's residuals fitted (`model_df`, V), and what the residuals are."""

    kind: str
    design: np.ndarray
    betas: np.ndarray
    valid: np.ndarray
    whitening: np.ndarray | None
    parameters: np.ndarray | None
    model_df: np.ndarray
    residuals: str

    def block(self, Y, columns: slice) -> np.ndarray:
        """The whitened residuals (n, v) of the data Y (n, v) of the voxels `columns` (finite voxels only)."""
        Y = np.asarray(Y, dtype=np.float64)
        if self.kind == "pooled":
            return self.whitening @ Y - self.design @ self.betas[:, columns]
        U = Y - self.design @ self.betas[:, columns]
        if self.kind == "ar":
            return ar_whiten(U, np.ascontiguousarray(self.parameters[:, columns].T))
        if self.kind == "arma":
            return arma_whiten(U, self.parameters[0, columns], self.parameters[1, columns])[0]
        return U


def noise_whitener(noise: str, fit, parameters=None, whitening=None, orders=None) -> Whitener:
    """The :class:`Whitener` of a fit with the noise model `noise` (see ``voxfit.fit_images``): `fit` the Fit,
    `parameters` the per-voxel noise parameters (k, V; None for OLS and the pooled models), `whitening` the
    pooled W, `orders` the AR order chosen per voxel (``auto``)."""
    noise = str(noise).lower()
    V = fit.betas.shape[1]
    design, betas, valid = np.asarray(fit.design.X, dtype=np.float64), np.asarray(fit.betas), np.asarray(fit.valid)
    df = np.zeros(V, dtype=np.int64)
    if whitening is not None:
        return Whitener("pooled", design, betas, valid, np.asarray(whitening), None, df, "W y - W X b (pooled W)")
    if parameters is None:
        return Whitener("ols", design, betas, valid, None, None, df, "y - X b (OLS residuals)")
    parameters = np.where(np.isfinite(parameters), parameters, 0.0)
    if noise == "arma11":
        df[:] = 2
        return Whitener("arma", design, betas, valid, None, parameters, df, "each voxel's ARMA(1,1) W (y - X b)")
    if orders is not None:
        df = np.where(orders >= 0, orders, 0).astype(np.int64)
    elif (m := re.fullmatch(r"ar(\d+)(\+lags)?", noise)) is not None:
        df[:] = int(m.group(1))
    what = "each voxel's FILM AR(M) W (y - X b)" if noise == "film" else "each voxel's AR(p) W (y - X b)"
    return Whitener("ar", design, betas, valid, None, parameters, df, what)


@dataclass(frozen=True, eq=False)
class ResidualDiagnostics:
    """What :func:`residual_diagnostics` finds: per voxel the lag-1..``ACF_LAGS`` autocorrelation (`acf`,
    (ACF_LAGS, V)), Ljung-Box's Q over `lags` lags and its p on `dof` degrees of freedom (NaN for voxels not
    fitted); the mask's mean normalised periodogram `spectrum` (n//2+1; 1 for white residuals) at
    ``frequencies``; the verdict; what the residuals are."""

    acf: np.ndarray
    ljung_box: np.ndarray
    ljung_box_p: np.ndarray
    lags: int
    dof: int
    spectrum: np.ndarray
    verdict: WhitenessVerdict
    residuals: str
    noise: str
    n_scans: int
    expected: np.ndarray  # (lags,): the lag-k autocorrelation the fit leaves in white noise's residuals
    inflation: float  # Var(Q) / (2 lags) under white noise (Satterthwaite's scale; voxfit.core.diagnostics)

    def frequencies(self, tr: float | None = None) -> np.ndarray:
        """The spectrum's frequencies: cycles per scan, or Hz with the repetition time `tr`."""
        f = np.arange(self.spectrum.size) / self.n_scans
        return f if tr is None else f / float(tr)

    @property
    def warning(self) -> str | None:
        """The warning's text when the residuals are not white; else None."""
        v = self.verdict
        if v.white:
            return None
        lo, hi = v.interval
        return (
            f"the whitened residuals of --noise {self.noise} are not white: {100 * v.share:.1f}% of "
            f"{v.n_voxels:,} voxels have Ljung-Box p < {v.level:g} (95% binomial interval for white residuals "
            f"{100 * lo:.1f}-{100 * hi:.1f}%); the noise model leaves autocorrelation that biases t and p "
            "(try a higher order, --noise auto, arma11 or film; see the spectrum in the report)."
        )

    def maps(self, extension: str) -> list[tuple[str, np.ndarray, list[str]]]:
        """``(file name, values, volume names)`` of the diagnostic maps: ``stat-acf`` (one volume per lag),
        ``stat-ljungbox`` (Q) and ``stat-ljungboxp`` (its p)."""
        labels = [f"lag{k}" for k in range(1, self.acf.shape[0] + 1)]
        return [
            (statmap_name("acf", extension, desc="whitened"), self.acf, labels),
            (statmap_name("ljungbox", extension, desc="whitened"), self.ljung_box, ["ljungbox"]),
            (statmap_name("ljungboxp", extension, desc="whitened"), self.ljung_box_p, ["ljungboxp"]),
        ]

    def spectrum_tsv(self, tr: float | None = None) -> str:
        """The mean spectrum as a TSV: frequency (cycles per scan), frequency_hz (with `tr`), power."""
        f = self.frequencies()
        head = "frequency\tfrequency_hz\tpower" if tr is not None else "frequency\tpower"
        rows = [
            f"{a:.10g}\t{a / tr:.10g}\t{p:.10g}" if tr is not None else f"{a:.10g}\t{p:.10g}"
            for a, p in zip(f, self.spectrum)
        ]
        return "\n".join([head, *rows]) + "\n"

    def record(self, tr: float | None = None) -> dict:
        """model.json's ``settings.diagnostics``."""
        acf = self.acf[:, np.isfinite(self.acf).all(axis=0)]
        q = np.nanpercentile(acf, [5, 50, 95], axis=1) if acf.size else np.full((3, self.acf.shape[0]), np.nan)
        v = self.verdict
        return _finite(
            {
                "residuals": self.residuals,
                "acf_lags": list(range(1, self.acf.shape[0] + 1)),
                "acf_mean": np.mean(acf, axis=1).tolist() if acf.size else [None] * self.acf.shape[0],
                "acf_p5_median_p95": q.T.tolist(),
                "acf_expected_if_white": self.expected[: self.acf.shape[0]].tolist(),
                "ljung_box": {
                    "lags": self.lags,
                    "dof": self.dof,
                    "dof_rule": "lags minus the noise parameters fitted to the voxel's own residuals",
                    "standardised_by": "the mean and variance of the autocorrelations of white noise's residuals "
                    "after the fitted design (exact for OLS and pooled models; the unwhitened design's for "
                    "per-voxel whitening); see voxfit.core.diagnostics",
                    "satterthwaite_inflation": self.inflation,
                    "share_p_below": v.share,
                    "level": v.level,
                    "binomial_interval_95": list(v.interval),
                    "n_voxels": v.n_voxels,
                },
                "white": bool(v.white),
                "rule": v.rule,
                "warning": self.warning,
                "spectrum": {
                    "file": SPECTRUM_FILE,
                    "normalisation": "each voxel's periodogram over its sum of squares: 1 at every frequency "
                    "for white residuals",
                    "frequency_unit": "cycles per scan" if tr is None else "cycles per scan; Hz with the TR",
                    "tr": tr,
                    "power": self.spectrum.tolist(),
                },
                "maps": [name for name, _, _ in self.maps("")],
            }
        )


def _finite(value):
    """`value` with non-finite floats as None (JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _step(n: int, execution: Execution, workers: int) -> int:
    """Voxels per block: data, residuals and their spectrum (float64 and complex) within the noise models' budget
    (``ar_block``; under a cap, a quarter of what it leaves beside the reserve. The OLS engine's ``block``, the whole
    cap, let --diagnostics on 64 MiB of data of 1,024 scans under 384M peak at 425 MiB)."""
    per_voxel = 8 * n * 6
    return int(max(1, min(4096, execution.budgets.ar_block // max(1, workers) // per_voxel)))


def whitened_residuals(data, whitener: Whitener) -> np.ndarray:
    """Every voxel's whitened residuals (n, V; NaN for voxels not fitted): for small data and tests."""
    n, V = data.shape
    out = np.full((n, V), np.nan)
    ok = np.flatnonzero(whitener.valid)
    if ok.size:
        out[:, ok] = whitener.block(np.asarray(data)[:, ok], ok)
    return out


def residual_diagnostics(data, whitener: Whitener, noise: str, execution: Execution | None = None):
    """The :class:`ResidualDiagnostics` of a fit's whitened residuals (see the module's docstring) from the data
    it fitted (n, V; arrays, memory maps, column sources), a block of voxels at a time in threads; warns
    (:class:`WhitenessWarning`) when they are not white."""
    execution = execution or Execution()
    n, V = data.shape
    lags = LJUNG_BOX_DOF + int(whitener.model_df.max(initial=0))
    if n <= 2 * lags:
        raise InputError(
            f"--diagnostics tests the residuals' whiteness over {lags} lags and needs more than {2 * lags} scans; "
            f"the data have {n}: drop --diagnostics."
        )
    top = max(lags, ACF_LAGS)
    moments = whiteness_moments(factorize(whitener.design), top, lags)
    acf = np.full((ACF_LAGS, V), np.nan)
    Q = np.full(V, np.nan)
    p = np.full(V, np.nan)
    workers = resolve_workers(execution.n_jobs)
    step = _step(n, execution, workers)
    starts = list(range(0, V, step))

    def task(start: int) -> np.ndarray:
        ok = start + np.flatnonzero(whitener.valid[start : start + step])
        if not ok.size:
            return np.zeros(n // 2 + 1)
        E = whitener.block(np.asarray(data[:, start : start + step])[:, ok - start], ok)
        lagged = lagged_products(E, top)
        acf[:, ok] = autocorrelations(lagged[: ACF_LAGS + 1])
        Q[ok], p[ok] = ljung_box(lagged[: lags + 1], lags - whitener.model_df[ok], moments)
        return normalised_periodogram(E)

    with blas_single_threaded():
        parts = run_in_threads(task, starts, min(workers, len(starts)))
    counted = int(np.isfinite(p).sum())
    spectrum = np.sum(parts, axis=0) / max(counted, 1)
    result = ResidualDiagnostics(
        acf,
        Q,
        p,
        lags,
        LJUNG_BOX_DOF,
        spectrum,
        whiteness_verdict(p),
        whitener.residuals,
        str(noise),
        n,
        moments.mu,
        moments.inflation,
    )
    if result.warning is not None:
        warnings.warn(result.warning, WhitenessWarning, stacklevel=2)
    return result
