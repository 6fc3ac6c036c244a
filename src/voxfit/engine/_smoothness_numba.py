"""The compiled pass behind ``voxfit.engine.smoothness``: the data's neighbour sums in one read.

This module imports numba; ``voxfit.engine.smoothness`` imports it on first use only. The kernels are cached on
disk and release the GIL, so that slabs of planes run in threads.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["add_neighbour_products", "residual_products", "scatter_scans"]

_JIT = dict(nogil=True, cache=True, error_model="numpy")
# the products may be fused into multiply-adds (one rounding instead of two): 1.6x faster sums
_FUSED = dict(_JIT, fastmath={"contract"})
_CHUNK = 256  # dense positions whose eight accumulators stay in L1 while the scans go by
_GAP = 8  # positions outside the mask bridged within a run; longer gaps (the rest of a row) are skipped


@numba.njit(**_JIT)
def scatter_scans(Y, col0, t0, t1, runs, r0, r1, shift, pos, rep_src, rep_dst, base, D):  # pragma: no cover - compiled
    """``D[t - t0, pos[v] - base] = Y[t, v - col0] - shift[v - col0]`` for the scans ``t0:t1`` and the voxels of
    the runs ``r0:r1`` (``runs[i]:runs[i + 1]``: voxels at consecutive positions, so that each run is a contiguous
    copy), read in Y's dtype, in float64; and the pad copies ``D[:, rep_dst - base]`` of ``rep_src``. Positions
    of no voxel are left as they are (0: outside the mask)."""
    for t in range(t0, t1):
        row = Y[t]
        out = D[t - t0]
        for i in range(r0, r1):  # (slices of the run: the compiler sees one contiguous loop and vectorises it)
            v0, v1 = runs[i], runs[i + 1]
            p0 = pos[v0] - base
            dst, src, by = out[p0 : p0 + v1 - v0], row[v0 - col0 : v1 - col0], shift[v0 - col0 : v1 - col0]
            for j in range(v1 - v0):
                dst[j] = np.float64(src[j]) - by[j]
        for i in range(rep_src.shape[0]):
            s = rep_src[i]
            out[rep_dst[i] - base] = np.float64(row[s - col0]) - shift[s - col0]


@numba.njit(**_FUSED)
def add_neighbour_products(D, Q, own, sx, sz, v0, v1, pos, base, sums, C):  # pragma: no cover - compiled
    """Add to ``sums[v - v0]`` (v1 - v0, 8), for the voxels ``v0:v1`` at positions ``pos[v] - base < own`` of the
    dense scans `D` (k, L), ``Σ d²``, ``Σ d`` and the products of d with its +x, +y, +z neighbours (offsets 1,
    `sx`, `sz`) and of those neighbours among themselves, in ``voxfit.inference.rft.NeighbourSums``'s order; and
    to ``C[:, v - v0]`` (r, v1 - v0) the projections ``Q' d`` with `Q` (k, r) the basis rows of these scans
    (r may be 0).

    Positions are taken in runs of up to `_CHUNK` from a voxel to the last voxel before a gap of more than
    `_GAP` positions (the positions outside the mask between rows are skipped), their accumulators in L1, and
    scans four at a time (the four scans' terms summed in pairs before they are added), so that each
    accumulator is read and written once per four scans. Positions that are no voxel's hold any finite value:
    their products go only to sums of neighbours outside the mask, which are not used."""
    k = D.shape[0]
    r = Q.shape[1]
    v = v0
    acc = np.empty((8, _CHUNK))
    proj = np.empty((r, _CHUNK))
    while v < v1:
        c0 = pos[v] - base  # a run of positions from a voxel to the last voxel before a gap of over _GAP
        last = v
        while last + 1 < v1 and pos[last + 1] - base < c0 + _CHUNK and pos[last + 1] - pos[last] <= _GAP:
            last += 1
        m = pos[last] - base - c0 + 1
        acc[:, :m] = 0.0
        proj[:, :m] = 0.0
        a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
        t = 0
        while t + 4 <= k:
            r0, r1 = D[t, c0 : c0 + m + sz], D[t + 1, c0 : c0 + m + sz]
            r2, r3 = D[t + 2, c0 : c0 + m + sz], D[t + 3, c0 : c0 + m + sz]
            for j in range(m):
                d0, x0, y0, z0 = r0[j], r0[j + 1], r0[j + sx], r0[j + sz]
                d1, x1, y1, z1 = r1[j], r1[j + 1], r1[j + sx], r1[j + sz]
                d2, x2, y2, z2 = r2[j], r2[j + 1], r2[j + sx], r2[j + sz]
                d3, x3, y3, z3 = r3[j], r3[j + 1], r3[j + sx], r3[j + sz]
                a0[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                a1[j] += (d0 + d1) + (d2 + d3)
                a2[j] += (d0 * x0 + d1 * x1) + (d2 * x2 + d3 * x3)
                a3[j] += (d0 * y0 + d1 * y1) + (d2 * y2 + d3 * y3)
                a4[j] += (d0 * z0 + d1 * z1) + (d2 * z2 + d3 * z3)
                a5[j] += (x0 * y0 + x1 * y1) + (x2 * y2 + x3 * y3)
                a6[j] += (x0 * z0 + x1 * z1) + (x2 * z2 + x3 * z3)
                a7[j] += (y0 * z0 + y1 * z1) + (y2 * z2 + y3 * z3)
            for i in range(r):
                q0, q1, q2, q3 = Q[t, i], Q[t + 1, i], Q[t + 2, i], Q[t + 3, i]
                p = proj[i]
                for j in range(m):
                    p[j] += (q0 * r0[j] + q1 * r1[j]) + (q2 * r2[j] + q3 * r3[j])
            t += 4
        while t < k:
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
            t += 1
        while v < v1 and pos[v] - base < c0 + m:
            j = pos[v] - base - c0
            out = sums[v - v0]
            for a in range(8):
                out[a] += acc[a, j]
            for i in range(r):
                C[i, v - v0] += proj[i, j]
            v += 1


_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # NeighbourSums' cross products: (v, x, y, z) indices


@numba.njit(**_JIT)
def residual_products(S, C, nb, q, shift, ones, rss, total, cross):  # pragma: no cover - compiled
    """The residuals' sums of every voxel from its data's (see ``voxfit.engine.smoothness``): with the data
    ``d = y - s`` about each voxel's `shift` s, their sums `S` (V, 8), projections ``C = Q'd`` (r, V), ``q = Q'1``
    and `ones` ``= |(I - QQ')1|²`` (0 when the design spans the constant: then the shift changes no residual),
    ``e_a . e_b = S_ab - C_a . C_b + s_b w_a + s_a w_b + s_a s_b ones`` with ``w = 1'd - q . C`` (the ones'
    residual times d), and ``Σ e = w + s ones``. Writes `rss` (V,), `total` (V,) and `cross` (V, 6): 0 where a
    neighbour in `nb` (V, 3) is outside the mask (-1)."""
    V = S.shape[0]
    r = C.shape[0]
    idx = np.empty(4, dtype=np.int64)
    w = np.empty(4)
    s = np.empty(4)
    for v in range(V):
        idx[0] = v
        for a in range(3):
            idx[a + 1] = nb[v, a]
        for a in range(4):
            u = idx[a]
            if u < 0:
                continue
            dot = 0.0
            for i in range(r):
                dot += q[i] * C[i, u]
            w[a] = S[u, 1] - dot
            s[a] = shift[u]
        cc = 0.0
        for i in range(r):
            cc += C[i, v] * C[i, v]
        if ones > 0.0:
            rss[v] = S[v, 0] - cc + s[0] * (2.0 * w[0] + s[0] * ones)
            total[v] = w[0] + s[0] * ones
        else:
            rss[v] = S[v, 0] - cc
            total[v] = w[0]
        for k in range(6):
            a, b = _PAIRS[k]
            ua, ub = idx[a], idx[b]
            if ua < 0 or ub < 0:
                cross[v, k] = 0.0
                continue
            cc = 0.0
            for i in range(r):
                cc += C[i, ua] * C[i, ub]
            value = S[v, 2 + k] - cc
            if ones > 0.0:
                value += s[b] * w[a] + s[a] * w[b] + s[a] * s[b] * ones
            cross[v, k] = value
