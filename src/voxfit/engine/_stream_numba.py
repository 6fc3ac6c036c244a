"""The numba kernel of streamed fits (``voxfit.engine.streaming``); imported on first use, cached on disk."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["accumulate"]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def accumulate(Y, shift, tail, out, s, total):  # pragma: no cover - compiled
    """One pass over a slab Y (k, v): ``out = Y - shift`` (float64), ``s[0] += out^2``, ``s[lag] +=`` the
    products with the scans `lag` before (from `tail`, the last scans of the previous slab, at the start),
    ``total += out``."""
    k, v = Y.shape
    p = s.shape[0] - 1
    held = tail.shape[0]
    for i in range(k):
        for j in range(v):  # unit stride over voxels: vectorised
            y = np.float64(Y[i, j]) - shift[j]
            out[i, j] = y
            s[0, j] += y * y
            total[j] += y
        for lag in range(1, p + 1):
            if i >= lag:
                prev = out[i - lag]
            elif held - (lag - i) >= 0:
                prev = tail[held - (lag - i)]
            else:
                continue
            row = out[i]
            acc = s[lag]
            for j in range(v):
                acc[j] += prev[j] * row[j]
