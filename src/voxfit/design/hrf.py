"""Haemodynamic response functions (pure functions of time; no state)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = ["spm_hrf"]


def _gamma_pdf(t: NDArray, shape: float) -> NDArray:
    """Gamma density with unit scale (scipy.stats costs a second to import; the formula does not)."""
    out = np.zeros_like(t)
    pos = t > 0
    out[pos] = np.exp((shape - 1) * np.log(t[pos]) - t[pos] - special.gammaln(shape))
    return out


def spm_hrf(dt: float, length: float = 32.0) -> NDArray[np.float64]:
    """SPM's canonical HRF sampled every `dt` seconds: a gamma of peak 6 s minus 1/6 of a gamma of peak 16 s.

    Parameters as in SPM12's spm_hrf.m defaults (delay 6, undershoot 16, dispersions 1, ratio 6, onset 0,
    length 32 s); normalised to sum to 1.
    """
    t = np.arange(0.0, length + dt / 2, dt)
    h = _gamma_pdf(t, 6.0) - _gamma_pdf(t, 16.0) / 6.0
    return h / h.sum()
