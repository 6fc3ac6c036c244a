"""Compiled inner loops (numba), for the passes over the data that numpy would split into several.

numba is imported on first use, not with ``import voxfit``; compiled code is cached on disk.
"""

from __future__ import annotations

import functools

__all__ = ["shift_and_square", "hermite_z"]


@functools.cache
def _compile():
    import numba
    import numpy as np

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def shift_and_square(Y, start, stop, rows, buf, offset, ssq):  # pragma: no cover - compiled
        """One pass over the voxels ``start:stop`` of Y: ``buf = Y - offset`` and ``ssq = sum(buf**2)``.

        Squares are summed in the working dtype over 16 scans at a time (relative error < 16 eps) and those
        partial sums in float64: as accurate as float64 throughout for these sums, 0.4 read passes faster.

        ``offset`` is the mean of the scans ``rows``, stored in ``offset``'s dtype (the working dtype) so
        that it is exact from then on; it is 0 where that mean is not finite. Y is passed whole, with the
        column range, so that a C-contiguous Y compiles to unit-stride (vectorised) inner loops; the loops
        work on local arrays, which the compiler knows do not alias Y or buf.
        """
        n = Y.shape[0]
        t = stop - start
        acc = np.zeros(t)
        for r in rows:
            y = Y[r, start:stop]
            for j in range(t):
                acc[j] += y[j]
        off = np.empty(t, dtype=buf.dtype)
        for j in range(t):
            m = acc[j] / rows.shape[0]
            off[j] = m if np.isfinite(m) else 0.0
        s = np.zeros(t)
        part = np.zeros(t, dtype=buf.dtype)  # partial sums over a few scans in the working dtype, then float64
        for i in range(n):
            y = Y[i, start:stop]
            b = buf[i]
            for j in range(t):
                d = y[j] - off[j]
                b[j] = d
                part[j] += d * d
            if (i + 1) % 16 == 0 or i == n - 1:
                for j in range(t):
                    s[j] += part[j]
                    part[j] = 0.0
        offset[:] = off
        ssq[:] = s

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def hermite_z(t, inv_h, coef, out):  # pragma: no cover - compiled
        """``out = t * g(log1p(|t|))`` with g the cubic Hermite table `coef`; returns how many |t| lie beyond it.

        Entries beyond the table are left NaN for the caller to compute exactly.
        """
        n_int = coef.shape[0]
        beyond = 0
        for k in range(t.shape[0]):
            x = t[k]
            u = np.log1p(abs(x)) * inv_h
            if u < n_int:
                i = int(u)
                f = u - i
                out[k] = x * (((coef[i, 3] * f + coef[i, 2]) * f + coef[i, 1]) * f + coef[i, 0])
            else:
                out[k] = np.nan
                beyond += u >= n_int  # NaN input stays NaN and is not counted
        return beyond

    return shift_and_square, hermite_z


def shift_and_square(Y, start, stop, rows, buf, offset, ssq) -> None:
    """See the compiled function's docstring; arrays are filled in place."""
    _compile()[0](Y, start, stop, rows, buf, offset, ssq)


def hermite_z(t, inv_h, coef, out) -> int:
    """See the compiled function's docstring; `out` is filled in place."""
    return _compile()[1](t, inv_h, coef, out)
