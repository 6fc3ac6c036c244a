"""Compiled kernel of the permutation loop: statistics from projections, their maxima and exceedance counts.

For a batch of shuffles and a tile of voxels the product ``G = [U, Q_Z]' P E`` (shuffles x rank x voxels)
holds everything: the effect projection(s) ``G[:, :q]`` and, with ``||E||^2``, the residual sum of squares
``||E||^2 - ||G||^2``. One pass turns them into t or F, keeps each shuffle's maximum over the tile, counts per
voxel how often the null statistic reaches the observed one, and (when clusters or TFCE need whole maps)
stores the statistics. numba is imported on first use.
"""

from __future__ import annotations

import functools


@functools.cache
def kernel():
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=True, error_model="numpy")
    def stats_tile(G, ee, obs, dof, q, is_t, rowmax, counts, out, out_offset, store):  # pragma: no cover - compiled
        """G (B, r, v); ee, obs (v,); updates rowmax (n_chunks, B) and counts (v,); writes out[:, offset:]."""
        B, r, v = G.shape
        chunk = 256
        n_chunks = (v + chunk - 1) // chunk
        for c in numba.prange(n_chunks):
            lo = c * chunk
            w = min(v, lo + chunk) - lo
            s = np.empty(w)
            ss = np.empty(w)
            proj = np.empty(w)
            hits = np.zeros(w, dtype=np.int64)
            for b in range(B):
                for j in range(w):  # unit-stride loops over voxels: vectorised
                    a = np.float64(G[b, 0, lo + j])
                    proj[j] = a * a
                for k in range(1, q):
                    for j in range(w):
                        g = np.float64(G[b, k, lo + j])
                        proj[j] += g * g
                for j in range(w):
                    ss[j] = proj[j]
                for k in range(q, r):
                    for j in range(w):
                        g = np.float64(G[b, k, lo + j])
                        ss[j] += g * g
                if is_t:
                    for j in range(w):
                        rss = ee[lo + j] - ss[j]
                        s[j] = np.float64(G[b, 0, lo + j]) / np.sqrt(rss / dof) if rss > 0 else np.nan
                else:
                    for j in range(w):
                        rss = ee[lo + j] - ss[j]
                        s[j] = proj[j] / q / (rss / dof) if rss > 0 else np.nan
                m = rowmax[c, b]
                for j in range(w):
                    if s[j] > m:
                        m = s[j]
                    hits[j] += s[j] >= obs[lo + j]
                rowmax[c, b] = m
                if store:
                    for j in range(w):
                        out[b, out_offset + lo + j] = s[j]
            for j in range(w):
                counts[lo + j] += hits[j]

    return stats_tile
