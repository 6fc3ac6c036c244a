"""Corrections for testing many voxels at once: Bonferroni and Benjamini-Hochberg FDR."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._array import check_array_like
from .._checks import check_scalar
from ..exceptions import InputError

__all__ = ["bonferroni", "fdr", "fdr_threshold"]


def _p_values(p) -> NDArray[np.float64]:
    """`p` as float64 p values, each in [0, 1] or NaN (a voxel without one): a negative p or an infinity gave
    negative q values, or every voxel active, with nothing said."""
    check_array_like(p, "p", "an array of p values")
    try:
        values = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"`p` must be an array of p values; got {type(p).__name__} that is not numbers.") from None
    outside = ~np.isnan(values) & ~((values >= 0.0) & (values <= 1.0))
    if outside.any():
        raise InputError(
            f"`p` holds {int(outside.sum()):,} value(s) outside [0, 1] (the first: {float(values[outside][0])!r}); "
            "give p values, NaN where a voxel has none."
        )
    return values


def bonferroni(p: ArrayLike) -> NDArray[np.float64]:
    """Bonferroni-adjusted p-values, ``min(1, p * m)`` with m the number of finite p-values (NaN stays NaN)."""
    p = _p_values(p)
    m = int(np.isfinite(p).sum())
    return np.minimum(1.0, p * m)


def fdr(p: ArrayLike) -> NDArray[np.float64]:
    """Benjamini-Hochberg adjusted p-values (q-values): the smallest FDR level at which each voxel is declared
    active, ``min over k >= rank of p_(k) m / k``, capped at 1. NaN stays NaN and is not counted in m."""
    p = _p_values(p)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    values = p[finite]
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values, kind="stable")
    scaled = values[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.minimum(adjusted, 1.0)
    out[finite] = result
    return out


def fdr_threshold(p: ArrayLike, q: float = 0.05) -> float:
    """The largest p-value declared active at FDR level `q` (Benjamini-Hochberg step-up), or 0 if none is."""
    check_scalar(
        q,
        "`q`",
        numbers.Real,
        min_val=0,
        max_val=1,
        include_boundaries="neither",
        description="an FDR level between 0 and 1 (0.05)",
    )
    p = _p_values(p)
    values = np.sort(p[np.isfinite(p)])
    if values.size == 0:
        return 0.0
    below = np.flatnonzero(values <= q * np.arange(1, values.size + 1) / values.size)
    return float(values[below[-1]]) if below.size else 0.0
