"""Inner loops over the data: compiled with numba, and the same arithmetic in numpy.

The compiled pass reads each element once (~1.6 read passes for shift + squares); numpy needs several
passes (~5). But importing numba and loading the cached kernels costs ~0.6 s and ~50 MB once per process,
which a one-shot command on a few hundred MB of data never earns back; ``voxfit.fit`` uses the compiled
kernels, and the command line uses them only for large data. numba is imported on first use, not with
``import voxfit``; compiled code is cached on disk.
"""

from __future__ import annotations

import functools
import threading

from .._checks import check_flag

__all__ = [
    "compile_in_background",
    "compile_kernels",
    "hermite_z",
    "hermite_z_dofs",
    "hermite_z_numpy",
    "kernels_loaded",
    "shift_and_square",
    "shift_and_square_numpy",
    "use_compiled",
]


# the compiled kernels pay for their ~0.6 s of loading on data of this many elements (n_scans x n_voxels)
AUTO_COMPILE_ELEMENTS = 1 << 29


def kernels_loaded() -> bool:
    """Whether numba and the kernels are already loaded in this process (then they cost nothing more)."""
    return _compile_once.cache_info().currsize > 0


def use_compiled(n_elements: int, compiled: bool | None = None) -> bool:
    """The choice for `compiled` = None: if already loaded, or if the data are large enough to earn it."""
    if check_flag(compiled, "`compiled`", none=True) is not None:
        return bool(compiled)
    return kernels_loaded() or n_elements >= AUTO_COMPILE_ELEMENTS


def compile_kernels() -> None:
    """Import numba and load (or compile) the kernels now, e.g. in a thread while data are being read."""
    _compile()


_LOCK = threading.Lock()


def _compile():
    with _LOCK:  # a warm-up thread and the first fit may ask at once: compile once
        return _compile_once()


@functools.cache
def _compile_once():
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

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def hermite_z_dofs(t, log_dof, inv_h, coef, first, per_unit, out):  # pragma: no cover - compiled
        """``out = t * g(log1p(|t|), log dof)``, g interpolated between the Hermite tables of nearby dofs.

        ``coef[m]`` is the table (as in ``hermite_z``) of dof ``exp((first + m) / per_unit)``; each value's g
        is the 8-point Lagrange interpolant in log dof of the tables at the four grid dofs below its dof
        and the four above (the caller makes sure they are in `coef`). Entries whose |t| is beyond the
        tables are left NaN for the caller; returns how many.
        """
        n_int = coef.shape[1]
        denominators = np.empty(8)  # prod over b != a of (a - b), offsets a, b in -3..4
        for a in range(8):
            d = 1.0
            for b in range(8):
                if b != a:
                    d *= a - b
            denominators[a] = d
        left = np.empty(9)
        beyond = 0
        for k in range(t.shape[0]):
            x = t[k]
            u = np.log1p(abs(x)) * inv_h
            if not u < n_int:
                out[k] = np.nan
                beyond += 1
                continue
            i = int(u)
            r = u - i
            p = log_dof[k] * per_unit - first
            j = int(p)
            f = p - j + 3.0  # position among the nodes j-3 .. j+4, numbered 0..7
            left[0] = 1.0
            for a in range(8):
                left[a + 1] = left[a] * (f - a)
            right = 1.0
            g = 0.0
            for a in range(7, -1, -1):
                c = coef[j - 3 + a, i]
                g += left[a] * right / denominators[a] * (((c[3] * r + c[2]) * r + c[1]) * r + c[0])
                right *= f - a
            out[k] = x * g
        return beyond

    return shift_and_square, hermite_z, hermite_z_dofs


def shift_and_square(Y, start, stop, rows, buf, offset, ssq) -> None:
    """See the compiled function's docstring; arrays are filled in place."""
    _compile()[0](Y, start, stop, rows, buf, offset, ssq)


def hermite_z(t, inv_h, coef, out) -> int:
    """See the compiled function's docstring; `out` is filled in place."""
    return _compile()[1](t, inv_h, coef, out)


def hermite_z_dofs(t, log_dof, inv_h, coef, first, per_unit, out) -> int:
    """See the compiled function's docstring; `out` is filled in place."""
    return _compile()[2](t, log_dof, inv_h, coef, first, per_unit, out)


def compile_in_background(*, ar: bool = False) -> None:
    """Load the kernels on a daemon thread, once per process, unless they are loaded already (never waits for
    a compilation under way elsewhere); with `ar`, then the AR fit's kernels (``voxfit.core._ar_kernels``)."""
    from ._ar_kernels import ar_kernels_loaded, compile_ar_kernels

    wanted = [("kernels", _compile, kernels_loaded)]
    if ar:
        wanted.append(("ar", compile_ar_kernels, ar_kernels_loaded))
    with _BACKGROUND_LOCK:
        wanted = [(name, load) for name, load, loaded in wanted if name not in _BACKGROUND and not loaded()]
        if not wanted:
            return
        thread = threading.Thread(target=lambda: [load() for _, load in wanted], daemon=True, name="voxfit-kernels")
        _BACKGROUND.update((name, thread) for name, _ in wanted)
    thread.start()


_BACKGROUND: dict = {}  # the kernels ("kernels", "ar") a background thread was started for, and that thread
_BACKGROUND_LOCK = threading.Lock()


def shift_and_square_numpy(Y, start, stop, rows, buf, offset, ssq) -> None:
    """``shift_and_square`` in numpy: the same offsets and float32 partial sums over the same 16 scans. Into a tile
    held series by series (F order, ``BlockFitter``'s for data held so) each voxel's squares are summed along its
    series by numpy's pairwise summation, in float32: errors of the same order as the 16-scan groups' (~1e-7
    relative at 1,200 scans), and faster than those groups, whose einsum runs an inner loop of 16 values per group
    (a tile of 218 voxels x 1,200 scans: 71 us against 101 us; a 91k-grayordinate HCP run's OLS fit, in the
    process: 0.10-0.11 s against 0.14-0.18 s, best of 4)."""
    import numpy as np

    from .._array import held_as_series

    block = Y[:, start:stop]
    mean = block[rows].mean(axis=0, dtype=np.float64)
    mean[~np.isfinite(mean)] = 0.0
    offset[:] = mean
    np.subtract(block, offset, out=buf, casting="unsafe")
    if held_as_series(buf):  # each voxel's series together (BlockFitter's tile for data held so)
        series = buf.T
        ssq[:] = np.add.reduce(np.square(series), axis=1)
        return
    # the squares of each 16 scans summed in one pass over buf (einsum), not squared into a scratch tile and summed
    # (25-30% faster on 1,200 scans x 91,282 voxels)
    whole = (buf.shape[0] // 16) * 16
    groups = buf[:whole].reshape(-1, 16, buf.shape[1])
    np.sum(np.einsum("kij,kij->kj", groups, groups), axis=0, dtype=np.float64, out=ssq)
    rest = buf[whole:]
    if rest.shape[0]:
        ssq += np.einsum("ij,ij->j", rest, rest)


def hermite_z_numpy(t, inv_h, coef, out) -> int:
    """``hermite_z`` in numpy."""
    import numpy as np

    n_int = coef.shape[0]
    u = np.log1p(np.abs(t))
    u *= inv_h
    with np.errstate(invalid="ignore"):
        idx = u.astype(np.intp)
    np.clip(idx, 0, n_int - 1, out=idx)
    f = u - idx
    c = coef[idx]
    z = ((c[:, 3] * f + c[:, 2]) * f + c[:, 1]) * f + c[:, 0]
    np.multiply(z, t, out=out)
    beyond = u >= n_int  # NaN compares False
    out[beyond] = np.nan
    return int(np.count_nonzero(beyond))
