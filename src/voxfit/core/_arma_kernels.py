"""The per-voxel small-matrix work of the ARMA(1,1) fit (``voxfit.core.arma``), compiled.

Each voxel's GLS at its own model (a, b) needs, besides sums over the frequencies that numpy forms as matrix
products for a whole block (``arma._small_inputs``), an r x r Gram matrix assembled from those sums and corrected
by the 2 x 2 corner of its covariance (Woodbury), its Cholesky factor, a few triangular solves and the REML
criterion. In numpy these are batched operations over (v, r, r) stacks, each a pass through memory with its
temporaries (a fancy-indexed fill, three batched products for the corner, an inverse or a factor, a
log-determinant); here one loop over the voxels does them all in a voxel's few KiB. The numpy functions of
``voxfit.core.arma`` stay the reference: the kernel flags the voxels whose Gram matrix is not positive definite
(or not finite), which the numpy path then fits as before.

numba is imported on first use, not with ``import voxfit``; the kernel is cached on disk and releases the GIL
(the blocks of a fit run in threads).
"""

from __future__ import annotations

import functools
import threading

__all__ = ["small_gls", "warm_up"]


def small_gls(sums, a, b, n, ez, rhs0, zz0, W, full, crit, rss, coords, cross, ok) -> None:
    """See the compiled function's docstring; `crit`, `rss`, `coords`, `cross` and `ok` are filled."""
    _compile()(sums, a, b, n, ez, rhs0, zz0, W, full, crit, rss, coords, cross, ok)


def warm_up() -> None:
    """Import numba and load the kernel (about 0.35 s, most of it holding the GIL) by a call on one empty voxel:
    e.g. in a thread while a run is read."""
    import numpy as np

    v, r = 1, 1
    zeros = [np.zeros(v) for _ in range(5)]
    small_gls(
        np.zeros((v, 10)),
        zeros[0],
        zeros[1],
        4,
        np.zeros((v, 2)),
        np.zeros((v, r)),
        zeros[2],
        np.zeros((1, r)),
        True,
        zeros[3],
        zeros[4],
        np.zeros((r, v)),
        np.zeros((v, 1, 1)),
        np.zeros(v, dtype=np.bool_),
    )


_LOCK = threading.Lock()


def _compile():
    with _LOCK:  # the threads of one fit may ask at once: compile once
        return _compile_once()


@functools.cache
def _compile_once():  # noqa: C901 (one function, so that numba caches its kernel)
    import math

    import numba
    import numpy as np

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def kernel(sums, a, b, n, ez, rhs0, zz0, W, full, crit, rss, coords, cross, ok):  # pragma: no cover
        """For each voxel k of models ``(a[k], b[k])``: the GLS terms from its weighted `sums` (v, 3 + 4r + 3 r(r+1)/2;
        see ``arma.ARMATerms.columns``), ``ez`` (v, 2) = E'T_0^-1 z, ``rhs0`` (v, r) = (Q - a LQ)'T_0^-1 z and
        ``zz0`` (v,) = z'T_0^-1 z (z the AR-filtered data, all in the eigenbasis), corrected by the Woodbury corner;
        the Cholesky factor L of the Gram matrix; ``crit[k]`` the REML criterion, ``rss[k]``, and ``cross[k]`` (R, R)
        = ``W gram^-1 W'`` for the rows of `W` (R, r; the contrasts' wq stacked). With `full`, also ``coords[:, k]`` =
        gram^-1 rhs. ``ok[k]`` is False where the Gram matrix is not positive definite or a number is not finite
        (nothing else written for that voxel)."""
        v = a.size
        r = rhs0.shape[1]
        m = r * (r + 1) // 2
        base = 3 + 4 * r
        G = np.empty((r, r))
        x = np.empty(r)
        R = W.shape[0]
        Y = np.empty((R, r))
        ep = np.empty((2, r))
        for k in range(v):
            ak, bk = a[k], b[k]
            one_a2 = 1.0 - ak * ak
            g0 = (1.0 + 2.0 * ak * bk + bk * bk) / one_a2
            g1 = (1.0 + ak * bk) * (ak + bk) / one_a2
            k00 = g0 - 1.0 - bk * bk
            k01 = g1 - ak * g0 - bk
            s00, s01, s11 = sums[k, 0], sums[k, 1], sums[k, 2]
            m00 = 1.0 + k00 * s00 + k01 * s01  # M = I + K S, K = [[k00, k01], [k01, 0]]
            m01 = k00 * s01 + k01 * s11
            m10 = k01 * s00
            m11 = 1.0 + k01 * s01
            det = m00 * m11 - m01 * m10
            n00 = (m11 * k00 - m01 * k01) / det  # N = M^-1 K
            n01 = m11 * k01 / det
            n10 = (m00 * k01 - m10 * k00) / det
            n11 = -m10 * k01 / det
            b2 = bk * bk
            logdet = math.log1p(-(b2 ** (n + 1))) - math.log1p(-b2) + math.log(det)
            for i in range(r):
                ep[0, i] = sums[k, 3 + i] - ak * sums[k, 3 + r + i]
                ep[1, i] = sums[k, 3 + 2 * r + i] - ak * sums[k, 3 + 3 * r + i]
            e0, e1 = ez[k, 0], ez[k, 1]
            idx = 0
            for i in range(r):
                u0 = ep[0, i] * n00 + ep[1, i] * n10  # (ep' N)[i]
                u1 = ep[0, i] * n01 + ep[1, i] * n11
                for j in range(i, r):
                    value = sums[k, base + idx] - ak * sums[k, base + m + idx] + ak * ak * sums[k, base + 2 * m + idx]
                    G[i, j] = value - (u0 * ep[0, j] + u1 * ep[1, j])
                    idx += 1
                x[i] = rhs0[k, i] - (u0 * e0 + u1 * e1)
            zz = zz0[k] - (e0 * (n00 * e0 + n01 * e1) + e1 * (n10 * e0 + n11 * e1))
            good = np.isfinite(logdet) and np.isfinite(zz)
            log_gram = 0.0
            for j in range(r):  # Cholesky, lower, from the upper triangle: L[j, i] in G[i, j] (i >= j)
                if not good:
                    break
                s = G[j, j]
                for p in range(j):
                    s -= G[p, j] * G[p, j]
                if not (s > 0.0):
                    good = False
                    break
                d = math.sqrt(s)
                G[j, j] = d
                log_gram += 2.0 * math.log(d)
                for i in range(j + 1, r):
                    t = G[j, i]
                    for p in range(j):
                        t -= G[p, i] * G[p, j]
                    G[j, i] = t / d  # L[i, j]
            ok[k] = good
            if not good:
                continue
            for i in range(r):  # x = L^-1 rhs
                t = x[i]
                for p in range(i):
                    t -= G[p, i] * x[p]
                x[i] = t / G[i, i]
            q = 0.0
            for i in range(r):
                q += x[i] * x[i]
            rss[k] = zz - q
            crit[k] = (n - r) * math.log(max(rss[k], 1e-300)) + logdet + log_gram
            for row in range(R):
                for i in range(r):  # Y[row] = L^-1 w
                    t = W[row, i]
                    for p in range(i):
                        t -= G[p, i] * Y[row, p]
                    Y[row, i] = t / G[i, i]
            for i in range(R):  # W gram^-1 W' = (L^-1 W')'(L^-1 W')
                for j in range(i, R):
                    t = 0.0
                    for p in range(r):
                        t += Y[i, p] * Y[j, p]
                    cross[k, i, j] = t
                    cross[k, j, i] = t
            if not full:
                continue
            for i in range(r - 1, -1, -1):  # coords = L^-T x
                t = x[i]
                for p in range(i + 1, r):
                    t -= G[i, p] * coords[p, k]
                coords[i, k] = t / G[i, i]

    return kernel
