"""The numba kernels of the permutation loop (see ``voxfit.inference._maxstat``); imported on first use.

Module-level functions, so that numba's disk cache serves them to every later process (closures that call
other jitted closures are compiled again in each process).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["stats_tile", "flip_tile"]

# fastmath lets the max reductions vectorise; the inputs hold no NaN (invalid voxels come with E = 0 and
# ||E||^2 = 1, so their key is 0 and their observed key +inf) and the loops are branch-free
_JIT = dict(nogil=True, cache=True, error_model="numpy", fastmath=True)


@numba.njit(**_JIT)
def reduce_row(g0, ss, rs, key, b, d, dq, is_t, okey, rowmax, counts, out, out_offset, store):  # pragma: no cover
    v = key.shape[0]
    if is_t:
        for j in range(v):
            key[j] = g0[j] * abs(g0[j]) * d / rs[j]
    else:
        for j in range(v):
            key[j] = ss[j] * dq / rs[j]
    m = rowmax[b]
    for j in range(v):
        m = max(m, key[j])
    rowmax[b] = m
    for j in range(v):
        counts[j] += key[j] >= okey[j]
    if store:
        dst = out[b, out_offset : out_offset + v]  # a slice indexed from 0: no negative-index handling
        for j in range(v):
            x = key[j]
            dst[j] = (np.sign(x) * np.sqrt(abs(x))) if is_t else x


@numba.njit(**_JIT)
def stats_tile(G, ee, okey, dof, q, is_t, rowmax, counts, out, out_offset, store):  # pragma: no cover - compiled
    """G (B, r, v); ee, okey (v,) in G's dtype; rowmax (B,) keys, updated; counts (v,) updated; with
    `store`, the statistics go to out[:, offset:offset + v]."""
    B, r, v = G.shape
    d = G.dtype.type(dof)
    dq = G.dtype.type(dof / q)
    key = np.empty(v, dtype=G.dtype)
    ss = np.empty(v, dtype=G.dtype)
    rs = np.empty(v, dtype=G.dtype)
    for b in range(B):
        g0 = G[b, 0]
        for j in range(v):
            ss[j] = g0[j] * g0[j]
        for k in range(1, q):
            gk = G[b, k]
            for j in range(v):
                ss[j] += gk[j] * gk[j]
        for j in range(v):
            rs[j] = ee[j] - ss[j]
        for k in range(q, r):
            gk = G[b, k]
            for j in range(v):
                rs[j] -= gk[j] * gk[j]
        reduce_row(g0, ss, rs, key, b, d, dq, is_t, okey, rowmax, counts, out, out_offset, store)


@numba.njit(**_JIT)
def flip_tile(E, basis, patterns, ee, okey, dof, q, is_t, rowmax, counts, out, out_offset, store):  # pragma: no cover
    """Sign-flips without a matrix product ("four Russians"): subjects in groups of 8, every signed sum
    of a group's rows ``basis[i, k] E[i, :]`` tabulated once (256 per group, by Gray code), so each shuffle
    is ``n / 8`` table-row additions per voxel instead of n multiply-adds. `patterns` (B, groups) holds
    each shuffle's sign bits per group (bit i set: subject 8 g + i flipped). E is (m, n, v): m = 1, the
    residuals every row of the basis projects; m = r, row k's own residuals (projected per voxel, as the
    mixed-effects statistic has them, with a basis of ones)."""
    m, n, v = E.shape
    r = basis.shape[1]
    n_groups = patterns.shape[1]
    B = patterns.shape[0]
    d = E.dtype.type(dof)
    dq = E.dtype.type(dof / q)
    table = np.zeros((r, n_groups, 256, v), dtype=E.dtype)
    for k in range(r):
        Ek = E[k if m > 1 else 0]
        for g in range(n_groups):
            t = table[k, g]
            for i in range(8):
                row = 8 * g + i
                if row < n:
                    w = E.dtype.type(basis[row, k])
                    for j in range(v):
                        t[0, j] += w * Ek[row, j]
            for p in range(1, 128):  # p is p ^ low (computed before it) with one more subject flipped
                low = p & -p
                i = 0
                while (1 << i) != low:
                    i += 1
                row = 8 * g + i
                prev = t[p ^ low]
                cur = t[p]
                w = E.dtype.type(-2.0 * basis[row, k]) if row < n else E.dtype.type(0.0)
                for j in range(v):
                    cur[j] = prev[j] + w * Ek[min(row, n - 1), j]
            for p in range(128, 256):  # all signs flipped: exactly the negation, so F maps of s and -s tie
                cur = t[p]
                opposite = t[p ^ 255]
                for j in range(v):
                    cur[j] = -opposite[j]
    key = np.empty(v, dtype=E.dtype)
    ss = np.empty(v, dtype=E.dtype)
    rs = np.empty(v, dtype=E.dtype)
    gk = np.empty((r, v), dtype=E.dtype)
    for b in range(B):
        for k in range(r):
            acc = gk[k]
            first = table[k, 0, patterns[b, 0]]
            for j in range(v):
                acc[j] = first[j]
            for g in range(1, n_groups):
                part = table[k, g, patterns[b, g]]
                for j in range(v):
                    acc[j] += part[j]
        g0 = gk[0]
        for j in range(v):
            ss[j] = g0[j] * g0[j]
        for k in range(1, q):
            for j in range(v):
                ss[j] += gk[k, j] * gk[k, j]
        for j in range(v):
            rs[j] = ee[j] - ss[j]
        for k in range(q, r):
            for j in range(v):
                rs[j] -= gk[k, j] * gk[k, j]
        reduce_row(g0, ss, rs, key, b, d, dq, is_t, okey, rowmax, counts, out, out_offset, store)
