"""Haemodynamic response functions and basis sets, on SPM's microtime grid (pure functions; no state).

Everything follows SPM12 (spm_hrf.m, spm_get_bf.m, spm_orth.m) so that designs match SPM's to rounding:
the canonical HRF is a difference of two gamma densities sampled every ``dt = TR / T`` seconds (itself
computed on a grid T times finer and read out every T-th point), normalised to sum to 1; derivatives are
SPM's finite differences (onset + 1 s; dispersion + 0.01), and a basis set is orthogonalised column by
column (Gram-Schmidt without normalisation, as spm_orth).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = ["spm_hrf", "gamma_difference_hrf", "basis_set", "nilearn_kernels", "spm_orth", "HRF_MODELS"]

SPM_PARAMS = (6.0, 16.0, 1.0, 1.0, 6.0, 0.0, 32.0)  # delay, undershoot, dispersions, ratio, onset, length
GLOVER_PARAMS = (6.0, 12.0, 0.9, 0.9, 1 / 0.48, 0.0, 32.0)  # Glover (1999) as in nilearn: ratio 0.48
HRF_MODELS = (
    "spm",
    "spm+derivative",
    "spm+derivative+dispersion",
    "glover",
    "glover+derivative",
    "glover+derivative+dispersion",
    "fir",
)


def _gamma_pdf(x: NDArray, shape: float, rate: float) -> NDArray:
    """SPM's spm_Gpdf: rate^shape x^(shape-1) exp(-rate x) / Gamma(shape), 0 for x <= 0."""
    out = np.zeros_like(x, dtype=float)
    pos = x > 0
    out[pos] = np.exp(shape * np.log(rate) + (shape - 1) * np.log(x[pos]) - rate * x[pos] - special.gammaln(shape))
    return out


def gamma_difference_hrf(rt: float, params=SPM_PARAMS, T: int = 16) -> NDArray[np.float64]:
    """spm_hrf(RT, P, T): the HRF sampled every `rt` seconds, from a grid T times finer; sums to 1."""
    p1, p2, p3, p4, p5, p6, p7 = params
    dt = rt / T
    u = np.arange(int(np.ceil(p7 / dt)) + 1) - p6 / dt
    hrf = _gamma_pdf(u, p1 / p3, dt / p3) - _gamma_pdf(u, p2 / p4, dt / p4) / p5
    hrf = hrf[np.arange(int(np.floor(p7 / rt)) + 1) * T]
    return hrf / hrf.sum()


def spm_hrf(dt: float, length: float = 32.0, T: int = 16) -> NDArray[np.float64]:
    """SPM's canonical HRF sampled every `dt` seconds (SPM12 defaults), summing to 1."""
    return gamma_difference_hrf(dt, SPM_PARAMS[:6] + (length,), T)


def spm_orth(X: NDArray) -> NDArray[np.float64]:
    """spm_orth: each column minus its projection on the columns before it; no normalisation.

    All-zero columns stay zero and take no part (SPM drops them first); a column that is a combination of
    earlier ones becomes zero. Modified Gram-Schmidt, twice over for full precision.
    """
    X = np.array(X, dtype=float)
    kept: list[NDArray] = []
    for i in range(X.shape[1]):
        col = X[:, i].copy()
        size = np.abs(col).sum()
        if size == 0:
            continue
        for _ in range(2):
            for k in kept:
                col -= (col @ k) / (k @ k) * k
        if np.abs(col).sum() <= 1e-12 * size:
            col[:] = 0.0
        else:
            kept.append(col)
        X[:, i] = col
    return X


def basis_set(model: str, dt: float, T: int = 16, fir_order: int = 1, fir_length: float | None = None):
    """Basis functions on the microtime grid for one HRF model: ``(bf (L, k), column suffixes)``.

    ``fir``: `fir_order` boxcars of ``fir_length / fir_order`` seconds each (SPM's 'Finite Impulse
    Response'); the others: canonical HRF (SPM or Glover), optionally with time and dispersion derivatives.
    """
    if model == "fir":
        length = fir_order * dt * T if fir_length is None else fir_length
        width = int(round(length / fir_order / dt))
        bf = np.kron(np.eye(fir_order), np.ones((width, 1)))
        return bf, [f"_delay{k}" for k in range(fir_order)]
    family, _, extras = model.partition("+")
    params = {"spm": SPM_PARAMS, "glover": GLOVER_PARAMS}[family]
    bf = [gamma_difference_hrf(dt, params, T)]
    suffixes = [""]
    if "derivative" in extras:
        shifted = params[:5] + (params[5] + 1.0, params[6])
        bf.append((bf[0] - gamma_difference_hrf(dt, shifted, T)) / 1.0)
        suffixes.append("_derivative")
    if "dispersion" in extras:
        wider = params[:2] + (params[2] + 0.01,) + params[3:]
        bf.append((bf[0] - gamma_difference_hrf(dt, wider, T)) / 0.01)
        suffixes.append("_dispersion")
    return spm_orth(np.column_stack(bf)), suffixes


def _nilearn_gamma_difference(
    tr, oversampling, onset=0.0, delay=6.0, undershoot=16.0, dispersion=1.0, u_dispersion=1.0, ratio=0.167, length=32.0
) -> NDArray[np.float64]:
    """nilearn's HRF: gamma densities shifted by one fine step, on ``rint(length / dt)`` points spanning
    [0, length] (so the step is slightly above ``dt = tr / oversampling``), normalised to sum to 1."""
    dt = tr / oversampling
    t = np.linspace(0.0, length, int(np.rint(length / dt))) - onset - dt
    h = _gamma_pdf(t, delay / dispersion, 1.0 / dispersion) - ratio * _gamma_pdf(
        t, undershoot / u_dispersion, 1.0 / u_dispersion
    )
    return h / h.sum()


def nilearn_kernels(model: str, tr: float, oversampling: int = 50, fir_delays=(0,)):
    """The kernels nilearn (0.10-0.14, ``hemodynamic_models``) convolves with, on its oversampled grid, and
    the column suffixes: ``(list of 1-D arrays, suffixes)``.

    Its derivatives are finite differences with steps 0.1 s (onset) and 0.01 (dispersion of the peak only:
    the undershoot keeps dispersion 1, also for Glover, whose own HRF has 0.9).
    """
    if model == "fir":
        kernels = [
            np.concatenate([np.zeros(d * oversampling), np.full(oversampling, 1.0 / oversampling)]) for d in fir_delays
        ]
        return kernels, [f"_delay{d}" for d in fir_delays]
    family, _, extras = model.partition("+")
    params = {"spm": {}, "glover": {"undershoot": 12.0, "dispersion": 0.9, "u_dispersion": 0.9, "ratio": 0.48}}[family]
    base = _nilearn_gamma_difference(tr, oversampling, **params)
    kernels, suffixes = [base], [""]
    if "derivative" in extras:
        kernels.append((base - _nilearn_gamma_difference(tr, oversampling, onset=0.1, **params)) / 0.1)
        suffixes.append("_derivative")
    if "dispersion" in extras:
        d = {k: v for k, v in params.items() if k != "u_dispersion"}
        peak = d.get("dispersion", 1.0)
        plain = _nilearn_gamma_difference(tr, oversampling, **d)
        wider = _nilearn_gamma_difference(tr, oversampling, **{**d, "dispersion": peak + 0.01})
        kernels.append((plain - wider) / 0.01)
        suffixes.append("_dispersion")
    return kernels, suffixes
