"""The numba kernel of streamed fits (``voxfit.engine.streaming``); imported on first use, cached on disk."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["accumulate"]

TILE = 2048  # voxels whose accumulators (a few dozen float64 each) stay in cache while a slab passes


@numba.njit(cache=True, nogil=True, error_model="numpy")
def accumulate(Y, shift, rows, tail, products, s, total):  # pragma: no cover - compiled
    """One pass over a slab Y (k, v), a tile of voxels at a time: with ``y = Y - shift``,
    ``products += rows' y`` (rows: the slab's rows of the lagged basis, (k, m)), ``s[0] += y^2``,
    ``s[lag] += y_t y_{t-lag}`` (the first scans paired with `tail`, the previous slab's last scans, already
    shifted) and ``total += y``. Every inner loop runs over voxels with unit stride (vectorised)."""
    k, v = Y.shape
    m = rows.shape[1]
    p = s.shape[0] - 1
    held = tail.shape[0]
    ring = np.empty((p + 1, TILE))  # this scan's shifted values and the p before, for the tile
    for j0 in range(0, v, TILE):
        w = min(v, j0 + TILE) - j0
        for i in range(k):
            y = ring[i % (p + 1)]
            for j in range(w):
                y[j] = np.float64(Y[i, j0 + j]) - shift[j0 + j]
            acc0 = s[0]
            for j in range(w):
                acc0[j0 + j] += y[j] * y[j]
                total[j0 + j] += y[j]
            for c in range(m):
                weight = rows[i, c]
                acc = products[c]
                for j in range(w):
                    acc[j0 + j] += weight * y[j]
            for lag in range(1, p + 1):
                acc = s[lag]
                if i >= lag:
                    prev = ring[(i - lag) % (p + 1)]
                    for j in range(w):
                        acc[j0 + j] += y[j] * prev[j]
                elif held - (lag - i) >= 0:
                    prev = tail[held - (lag - i)]
                    for j in range(w):
                        acc[j0 + j] += y[j] * prev[j0 + j]
