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
    shifted) and ``total += y``. Every inner loop runs over voxels with unit stride on slices of the tile,
    indexed from 0 so that numba needs no negative-index handling and the loops vectorise (2.5x faster than
    indexing the whole arrays at ``j0 + j``)."""
    k, v = Y.shape
    m = rows.shape[1]
    p = s.shape[0] - 1
    held = tail.shape[0]
    ring = np.empty((p + 1, TILE))  # this scan's shifted values and the p before, for the tile
    for j0 in range(0, v, TILE):
        j1 = min(v, j0 + TILE)
        w = j1 - j0
        sh, sq, tot = shift[j0:j1], s[0, j0:j1], total[j0:j1]
        for i in range(k):
            y = ring[i % (p + 1), :w]
            row = Y[i, j0:j1]
            for j in range(w):
                y[j] = np.float64(row[j]) - sh[j]
            for j in range(w):
                sq[j] += y[j] * y[j]
                tot[j] += y[j]
            for c in range(m):
                weight = rows[i, c]
                acc = products[c, j0:j1]
                for j in range(w):
                    acc[j] += weight * y[j]
            for lag in range(1, p + 1):
                acc = s[lag, j0:j1]
                if i >= lag:
                    prev = ring[(i - lag) % (p + 1), :w]
                elif held - (lag - i) >= 0:
                    prev = tail[held - (lag - i), j0:j1]
                else:
                    continue
                for j in range(w):
                    acc[j] += y[j] * prev[j]
