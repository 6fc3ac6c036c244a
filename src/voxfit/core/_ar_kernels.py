"""The AR fit's compiled kernels: the data pass of any order, and the AR(1) fit of a block from its sums.

``voxfit.core.ar`` runs both as whole-array numpy steps, the reference. Its data pass copies a block to float64,
sums, shifts and multiplies it in five passes; :func:`shift_and_lag` does it in two. Its AR(1) fit is a few
hundred passes over arrays of a few thousand numbers, most of an AR(1) fit's time once the data's products are
made; the two kernels here run the same algebra in a few fused loops, the voxels in the inner loops:

* :func:`ar1_estimate`: the OLS residuals' lagged products from the sums, the RSS and total sum of squares,
  and the bias-corrected AR(1) estimate (``ARBlock.estimate``'s iterations, the tail beyond lag 1 from its
  Hermite table);
* :func:`ar1_solve`: the whitened fit at that estimate (``_solve_ar1``'s Woodbury solve in the eigenbasis of
  Q'S_1Q), whitened RSS, coordinates, each contrast's covariance, and the estimation terms interpolated from
  their table over atanh(phi).

Each kernel marks the voxels that the numpy path treats specially (digits lost in a difference of sums, a
rounding-level fit, an estimate off a table or at a table's irregular node, a fragile or failed solve, values
that are not finite); the caller fits those with the numpy path. For the others the numbers equal the numpy
path's to rounding (sums in another order).

numba is imported on first use (:func:`compile_ar_kernels`), not with ``import voxfit``; the kernels have
explicit signatures and are cached on disk, so later processes load them at once instead of compiling them.
"""

from __future__ import annotations

import functools
import threading

__all__ = ["ar1_estimate", "ar1_solve", "ar_kernels_loaded", "compile_ar_kernels", "shift_and_lag"]


def ar_kernels_loaded() -> bool:
    """Whether numba and these kernels are already loaded in this process (then they cost nothing more)."""
    return _compile_once.cache_info().currsize > 0


def compile_ar_kernels() -> None:
    """Import numba and load (or compile) the kernels now."""
    _compile()


def shift_and_lag(Y, shifting, out, sums, s) -> None:
    """See the compiled function's docstring; `out`, `sums` and `s` are filled in place."""
    _compile()[2](Y, shifting, out, sums, s)


def ar1_estimate(rotated, s, total, shift, constants, out) -> None:
    """See the compiled function's docstring; the arrays of `out` are filled in place."""
    _compile()[0](rotated, s, total, shift, *constants, *out)


def ar1_solve(rotated, s, top, bottom, phi, constants, out) -> None:
    """See the compiled function's docstring; the arrays of `out` are filled in place."""
    _compile()[1](rotated, s, top, bottom, phi, *constants, *out)


_LOCK = threading.Lock()


def _compile():
    with _LOCK:  # threads of one fit may ask at once: compile once
        return _compile_once()


@functools.cache
def _compile_once():  # noqa: C901 (one function, so that numba caches its kernels)
    import numba
    import numpy as np

    # explicit signatures: every kernel is compiled (or loaded from the cache) here, not at its first call
    f64, i64, flag = numba.float64, numba.int64, numba.types.Array(numba.boolean, 1, "C")
    vector, matrix, stack = (numba.types.Array(numba.float64, d, "A", readonly=True) for d in (1, 2, 3))
    vector_out, matrix_out = numba.types.Array(numba.float64, 1, "C"), numba.types.Array(numba.float64, 2, "C")
    estimate = (stack, matrix, vector, vector, vector, matrix, stack, i64, f64, f64, numba.boolean, f64, f64, i64)
    estimate += (f64, f64, vector_out, vector_out, vector_out, flag)
    sizes, nodes = numba.types.Array(numba.int64, 1, "A", readonly=True), numba.types.Array(numba.boolean, 1, "A")
    solve = (stack, matrix, matrix, matrix, vector, vector, matrix, matrix, sizes, matrix, nodes, f64, f64, f64)
    solve += (matrix_out, vector_out, matrix_out, matrix_out, flag)
    data = [numba.types.Array(dtype, 2, "A", readonly=True) for dtype in (numba.float32, numba.float64)]
    series_out = numba.types.Array(numba.float64, 2, "F")
    lag = [numba.void(Y, numba.boolean, out, vector_out, matrix_out) for Y in data for out in (matrix_out, series_out)]

    @numba.njit([numba.void(*estimate)], nogil=True, cache=True, error_model="numpy")
    def ar1_estimate(  # noqa: PLR0913
        rotated,
        s,
        total,
        shift,
        eig,
        M_inv,
        tail_coef,
        last_lag,
        n,
        nu,
        has_intercept,
        span,
        step,
        iterations,
        max_reflection,
        refit_ratio,
        ols_rss,
        phi,
        tss,
        flag,
    ):  # pragma: no cover - compiled
        """For each voxel j of a block: the OLS residuals' lagged products from the sums (the lag-0 one is the OLS
        RSS, ``ols_rss[j]``), the total sum of squares ``tss`` and the AR(1) estimate ``phi`` as
        ``ARBlock.estimate``.

        The sums: ``rotated`` (2, r, v) = U'(S_k Q)'y in the eigenbasis U of Q'S_1Q (eigenvalues ``eig``), so
        that ``c'Q'Qc = |U'c|^2`` and ``c'Q'S_1Qc = sum eig (U'c)^2``; ``s`` (2, v) = sum y_t y_t+k, ``total``
        (v,) = sum y_t, of the data shifted by ``shift`` (v,) (zero when not shifted), ``n`` scans. The
        estimate: Worsley's correction by ``M_inv`` (2, 2), then `iterations` of the tail beyond lag 1
        (``tail_coef`` (2, 4, nodes - 1), cubic Hermite over atanh(phi) from ``-span`` in steps of ``step``)
        and Bartlett's bias of the ratio (closed-form pair sums up to lag ``last_lag``; ``nu`` = n - rank),
        held within +-max_reflection. ``flag[j]`` is set where the numpy path must take the voxel: more than
        5 digits lost in the residual products (``refit_ratio``), a rounding-level fit, an estimate off the
        tail's table, or a value that is not finite."""
        r, v = rotated.shape[1], rotated.shape[2]
        n_int = tail_coef.shape[2]
        eps2 = (n * 2.220446049250313e-16) ** 2  # (n eps)^2: a rounding-level fit
        u = np.empty((2, v))
        fitted0 = np.zeros(v)  # |c|^2 and c'G_1c - 2 c'b_1, c = Q'y, b_1 = (S_1 Q)'y: over i, all voxels at once
        fitted1 = np.zeros(v)
        for i in range(r):
            for j in range(v):
                c = rotated[0, i, j]
                fitted0[j] += c * c
                fitted1[j] += (eig[i] * c - 2.0 * rotated[1, i, j]) * c
        for j in range(v):
            e0 = s[0, j] - fitted0[j]
            e1 = 0.5 * (2.0 * s[1, j] + fitted1[j])
            ols_rss[j] = e0
            mu = shift[j]
            raw_yy = s[0, j] + 2.0 * mu * total[j] + n * mu * mu
            tss[j] = s[0, j] - total[j] * total[j] / n if has_intercept else raw_yy
            # Worsley's correction, then Levinson for AR(1): the lag-1 autocorrelation, held inside the bound
            u[0, j] = M_inv[0, 0] * e0 + M_inv[0, 1] * e1
            u[1, j] = M_inv[1, 0] * e0 + M_inv[1, 1] * e1
            rho = u[1, j] / u[0, j]
            flag[j] = e0 * refit_ratio <= s[0, j] or e0 <= eps2 * raw_yy or not np.isfinite(rho)
            phi[j] = min(max(rho, -max_reflection), max_reflection)
        for _ in range(iterations):  # all voxels at each step: independent work for the processor to overlap
            for j in range(v):
                if flag[j]:
                    continue
                f = phi[j]
                x = (0.5 * np.log((1.0 + f) / (1.0 - f)) + span) / step  # atanh
                if not (x >= 0.0 and x < n_int):
                    flag[j] = True
                    continue
                k = int(x)
                t = x - k
                tail0 = ((tail_coef[0, 3, k] * t + tail_coef[0, 2, k]) * t + tail_coef[0, 1, k]) * t
                tail0 += tail_coef[0, 0, k]
                tail1 = ((tail_coef[1, 3, k] * t + tail_coef[1, 2, k]) * t + tail_coef[1, 1, k]) * t
                tail1 += tail_coef[1, 0, k]
                f2 = f * f
                end = 1.0  # f2^(last_lag - 1), by squaring
                power, base = last_lag - 1, f2
                while power:
                    if power & 1:
                        end *= base
                    base *= base
                    power >>= 1
                pair0 = f2 * (1.0 - end * f2) / (1.0 - f2)
                pair1 = f * f2 * (1.0 - end) / (1.0 - f2)
                S0 = 1.0 + 2.0 * pair0
                S1 = f + 2.0 * pair1 + f
                w0 = M_inv[0, 0] * tail0 + M_inv[0, 1] * tail1
                w1 = M_inv[1, 0] * tail0 + M_inv[1, 1] * tail1
                share = u[0, j] / (1.0 + w0)
                rho = (u[1, j] - w1 * share) / (u[0, j] - w0 * share)
                if not np.isfinite(rho):
                    rho = 0.0
                rho -= (2.0 / nu) * (f * S0 - S1)
                f = min(max(rho, -max_reflection), max_reflection)
                flag[j] = not np.isfinite(f)
                phi[j] = f

    @numba.njit([numba.void(*solve)], nogil=True, cache=True, error_model="numpy")
    def ar1_solve(  # noqa: PLR0913, PLR0915
        rotated,
        s,
        top,
        bottom,
        phi,
        eig,
        E,
        UtB,
        sizes,
        values,
        regular,
        span,
        step,
        refit_ratio,
        coords,
        rss,
        cov,
        terms,
        flag,
    ):  # pragma: no cover - compiled
        """For each voxel j of a block, the GLS fit at its AR(1) model ``phi[j]``, in the
        eigenbasis U of Q'S_1Q (see :func:`ar1_estimate`; ``E`` (r, 2) = U'(Q's first and last rows), ``UtB``
        (r, K) = U' times the contrasts' columns B).

        The whitened right-hand side h = U'Q'W'Wy and ||Wy||^2 come from the sums (``top``, ``bottom``: the
        data's first and last scans). The Gram matrix is ``D + E C E'`` (D = diag(alpha_0 + alpha_1 eig), C the
        corners' weight twice), so by Woodbury ``gram^-1 b = D^-1 b - D^-1 E s(b)``, with s(b) (2,) from
        ``E'D^-1 b`` and ``E'D^-1 E``: every number wanted is a sum over i of products weighted by 1/D_i,
        accumulated over i with all voxels at once (the inner loops run along the voxels). Out: ``coords``
        (r, v), the GLS coordinates in U's basis; the whitened RSS ``rss`` = ||Wy||^2 - h' gram^-1 h; for
        contrast c of ``sizes[c]`` rows its covariance ``B_c' gram^-1 B_c`` (row-major in ``cov``'s rows from
        the sum of the previous sizes squared) and its (scale, dof) at rows 2c, 2c+1 of ``terms``, the cubic
        through the 4 nearest nodes of the table ``values`` (over atanh(phi), from ``-span`` in steps of
        ``step``). ``flag[j]`` is set where the numpy path must take the voxel: the band's sums cancelling
        (fragile), numbers that are not finite, more than 5 digits lost in the whitened RSS, or an estimate
        whose 4 nodes are not all on the table and regular."""
        r, v = rotated.shape[1], rotated.shape[2]
        K, nodes = UtB.shape[1], values.shape[0]
        x, a0, a1, corner, wyy = np.empty(v), np.empty(v), np.empty(v), np.empty(v), np.empty(v)
        cyt, cyb, node = np.empty(v), np.empty(v), np.zeros(v, dtype=np.int64)
        for j in range(v):
            f = phi[j]
            x[j] = (0.5 * np.log((1.0 + f) / (1.0 - f)) + span) / step  # atanh
            if not (x[j] >= 1.0 and x[j] <= nodes - 2.0):
                flag[j] = True
            else:
                k = min(max(int(np.floor(x[j])), 1), nodes - 3)
                node[j] = k
                flag[j] |= not (regular[k - 1] and regular[k] and regular[k + 1] and regular[k + 2])
            corner[j] = -(f * f)  # W'W = (1 + f^2) I - f S_1, less f^2 at the first and last scans
            a0[j] = 1.0 - corner[j]
            a1[j] = -f
            cyt[j], cyb[j] = corner[j] * top[0, j], corner[j] * bottom[0, j]
            wyy[j] = a0[j] * s[0, j] + a1[j] * (2.0 * s[1, j]) + top[0, j] * cyt[j] + bottom[0, j] * cyb[j]
        # sums over i: ||(S_k Q)'y||^2, ||h||^2, E'D^-1E, h'D^-1h, E'D^-1h, B'D^-1E, B'D^-1B
        size0, size1, size_h = np.zeros(v), np.zeros(v), np.zeros(v)
        e00, e01, e11 = np.zeros(v), np.zeros(v), np.zeros(v)
        hdh, t0, t1 = np.zeros(v), np.zeros(v), np.zeros(v)
        bde0, bde1 = np.zeros((K, v)), np.zeros((K, v))
        n_cov = cov.shape[0]
        bdb = np.zeros((n_cov, v))
        w, d = np.empty((r, v)), np.empty((r, v))
        for i in range(r):
            E0, E1, ei = E[i, 0], E[i, 1], eig[i]
            for j in range(v):
                y0, y1 = rotated[0, i, j], rotated[1, i, j]
                h = a0[j] * y0 + a1[j] * y1 + E0 * cyt[j] + E1 * cyb[j]
                di = 1.0 / (a0[j] + ei * a1[j])
                wi = h * di
                d[i, j], w[i, j] = di, wi
                size0[j] += y0 * y0
                size1[j] += y1 * y1
                size_h[j] += h * h
                e00[j] += E0 * E0 * di
                e01[j] += E0 * E1 * di
                e11[j] += E1 * E1 * di
                hdh[j] += h * wi
                t0[j] += E0 * wi
                t1[j] += E1 * wi
            at, first = 0, 0
            for q in sizes:
                for a in range(first, first + q):
                    ua = UtB[i, a]
                    for j in range(v):
                        bde0[a, j] += ua * E0 * d[i, j]
                        bde1[a, j] += ua * E1 * d[i, j]
                    for b in range(first, first + q):
                        uab = ua * UtB[i, b]
                        for j in range(v):
                            bdb[at, j] += uab * d[i, j]
                        at += 1
                first += q
        s0, s1 = np.empty(v), np.empty(v)
        for j in range(v):
            c = corner[j]
            m00, m01, m11 = 1.0 + e00[j] * c, e01[j] * c, 1.0 + e11[j] * c
            det = m00 * m11 - m01 * m01
            s0[j] = c * (m11 * t0[j] - m01 * t1[j]) / det
            s1[j] = c * (m00 * t1[j] - m01 * t0[j]) / det
            res = wyy[j] - (hdh[j] - s0[j] * t0[j] - s1[j] * t1[j])
            # sum |alpha_k| ||(S_k Q)'y|| against ||Q'W'Wy||: the band's sums cancelling
            fragile = abs(a0[j]) * np.sqrt(size0[j]) + abs(a1[j]) * np.sqrt(size1[j]) > 1e5 * np.sqrt(size_h[j])
            if fragile or not np.isfinite(res) or res * refit_ratio <= wyy[j]:
                flag[j] = True
            rss[j] = res
            at, first = 0, 0
            for q in sizes:  # B_a' gram^-1 B_b = B_a'D^-1B_b - s(B_b) . (B_a'D^-1E)
                for b in range(first, first + q):
                    sb0 = c * (m11 * bde0[b, j] - m01 * bde1[b, j]) / det
                    sb1 = c * (m00 * bde1[b, j] - m01 * bde0[b, j]) / det
                    for a in range(first, first + q):
                        value = bdb[(a - first) * q + (b - first) + at, j] - sb0 * bde0[a, j] - sb1 * bde1[a, j]
                        cov[(a - first) * q + (b - first) + at, j] = value
                        flag[j] |= not np.isfinite(value)
                at += q * q
                first += q
        for i in range(r):
            E0, E1 = E[i, 0], E[i, 1]
            for j in range(v):
                value = w[i, j] - d[i, j] * (E0 * s0[j] + E1 * s1[j])
                coords[i, j] = value
                flag[j] |= not np.isfinite(value)
        for j in range(v):  # the estimation terms from the table (Lagrange's cubic through 4 nodes)
            if flag[j]:
                continue
            k, t = node[j], x[j] - node[j]
            w0 = -t * (t - 1.0) * (t - 2.0) / 6.0
            w1 = (t + 1.0) * (t - 1.0) * (t - 2.0) / 2.0
            w2 = -(t + 1.0) * t * (t - 2.0) / 2.0
            w3 = (t + 1.0) * t * (t - 1.0) / 6.0
            for row in range(terms.shape[0]):
                low = w0 * values[k - 1, row] + w1 * values[k, row]
                terms[row, j] = (low + w2 * values[k + 1, row]) + w3 * values[k + 2, row]

    @numba.njit(lag, nogil=True, cache=True, error_model="numpy")
    def shift_and_lag(Y, shifting, out, sums, s):  # pragma: no cover - compiled
        """One block ``Y`` (n, v), float32 or float64 in any layout, in two passes: ``sums`` (v,) = sum_t y_t in
        float64; ``out`` (n, v) = Y less each voxel's mean when `shifting` (else Y), in float64; ``s`` (p+1,
        v) = sum_t out_t out_t+k for k = 0..p. Row by row, each inner loop over the voxels of one scan (indexed
        directly: views of rows made the compiler take 4x as long, 5 s); series by series where `Y` and `out`
        hold each voxel's series together (F order, as CIFTI runs are read), which the rows' loops would stride
        across (3.5x as long). Both orders add the same terms in the same order: the same numbers."""
        n, v = Y.shape
        p = s.shape[0] - 1
        if Y.strides[0] < Y.strides[1] and out.strides[0] < out.strides[1]:
            for j in range(v):
                total = 0.0
                for i in range(n):
                    total += Y[i, j]
                sums[j] = total
                mean = total / n if shifting else 0.0
                for i in range(n):
                    out[i, j] = Y[i, j] - mean
                for k in range(p + 1):
                    acc = 0.0
                    for i in range(k, n):
                        acc += out[i - k, j] * out[i, j]
                    s[k, j] = acc
            return
        sums[:] = 0.0
        for i in range(n):
            for j in range(v):
                sums[j] += Y[i, j]
        mean = np.zeros(v)
        if shifting:
            for j in range(v):
                mean[j] = sums[j] / n
        s[:] = 0.0
        for i in range(n):
            for j in range(v):
                out[i, j] = Y[i, j] - mean[j]
            for k in range(min(p, i) + 1):
                for j in range(v):
                    s[k, j] += out[i - k, j] * out[i, j]

    return ar1_estimate, ar1_solve, shift_and_lag
