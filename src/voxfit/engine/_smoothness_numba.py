"""The compiled pass behind ``voxfit.engine.smoothness``: the data's neighbour sums in one read.

This module imports numba; ``voxfit.engine.smoothness`` imports it on first use only. The kernels are cached on
disk and release the GIL, so that slabs of planes run in threads.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["add_neighbour_products", "scatter_scans"]

_JIT = dict(nogil=True, cache=True, error_model="numpy")
_CHUNK = 256  # dense positions whose eight accumulators stay in L1 while the scans go by


@numba.njit(**_JIT)
def scatter_scans(Y, col0, t0, t1, v0, v2, shift, pos, rep_src, rep_dst, base, D):  # pragma: no cover - compiled
    """``D[t - t0, pos[v] - base] = Y[t, v - col0] - shift[v - col0]`` for the scans ``t0:t1`` and the voxels
    ``v0:v2`` (read in Y's dtype, in float64), and the pad copies ``D[:, rep_dst - base]`` of ``rep_src``.
    Positions of no voxel are left as they are (0: outside the mask)."""
    for t in range(t0, t1):
        row = Y[t]
        out = D[t - t0]
        for v in range(v0, v2):
            out[pos[v] - base] = np.float64(row[v - col0]) - shift[v - col0]
        for i in range(rep_src.shape[0]):
            s = rep_src[i]
            out[rep_dst[i] - base] = np.float64(row[s - col0]) - shift[s - col0]


@numba.njit(**_JIT)
def add_neighbour_products(D, Q, own, sx, sz, v0, v1, pos, base, sums, C):  # pragma: no cover - compiled
    """Add to ``sums[v - v0]`` (v1 - v0, 8), for the voxels ``v0:v1`` at positions ``pos[v] - base < own`` of the
    dense scans `D` (k, L), ``Σ d²``, ``Σ d`` and the products of d with its +x, +y, +z neighbours (offsets 1,
    `sx`, `sz`) and of those neighbours among themselves, in ``voxfit.inference.rft.NeighbourSums``'s order; and
    to ``C[:, v - v0]`` (r, v1 - v0) the projections ``Q' d`` with `Q` (k, r) the basis rows of these scans."""
    k = D.shape[0]
    r = Q.shape[1]
    v = v0
    for c0 in range(0, own, _CHUNK):
        m = min(_CHUNK, own - c0)
        a0, a1, a2, a3 = np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m)
        a4, a5, a6, a7 = np.zeros(m), np.zeros(m), np.zeros(m), np.zeros(m)
        proj = np.zeros((r, m))
        for t in range(k):
            row = D[t, c0 : c0 + m + sz]
            for j in range(m):
                d = row[j]
                gx = row[j + 1]
                gy = row[j + sx]
                gz = row[j + sz]
                a0[j] += d * d
                a1[j] += d
                a2[j] += d * gx
                a3[j] += d * gy
                a4[j] += d * gz
                a5[j] += gx * gy
                a6[j] += gx * gz
                a7[j] += gy * gz
            for i in range(r):
                q = Q[t, i]
                p = proj[i]
                for j in range(m):
                    p[j] += q * row[j]
        while v < v1 and pos[v] - base < c0 + m:
            j = pos[v] - base - c0
            out = sums[v - v0]
            out[0] += a0[j]
            out[1] += a1[j]
            out[2] += a2[j]
            out[3] += a3[j]
            out[4] += a4[j]
            out[5] += a5[j]
            out[6] += a6[j]
            out[7] += a7[j]
            for i in range(r):
                C[i, v - v0] += proj[i, j]
            v += 1
