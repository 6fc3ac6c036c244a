"""The mixed-effects fit of one variance group, one voxel at a time, compiled with numba.

``voxfit.core.mixed`` fits blocks of voxels with numpy, every step on (n, v) arrays; most of its time goes to
the temporaries of each evaluation of the restricted likelihood. The kernel here runs, per voxel and without
temporaries, the numpy path's arithmetic in the same order of steps: the checks of the effects and variances,
the voxel's own units, the flat-likelihood test, the boundary decided by the score at tau2 = 0, the safeguarded
Newton iteration on the score from the moment estimate, and the GLS fit at the estimate (the state of the last
evaluation, not a new one), back in the data's units. Its numbers equal the numpy path's to rounding (sums in
another order). Effects and variances stored as float64 are read as they are; float32 maps are read into float64 a
chunk of voxels at a time (~1 ms of work each), so that the kernel has one compiled signature.

numba is imported on first use (:func:`compile_mixed_kernels`), not with ``import voxfit``; the kernel is one
function, so that it is cached on disk and loaded, not compiled, by later processes.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["compile_mixed_kernels", "mixed_kernels_loaded", "mixed_one_group", "probe_peaks"]


def mixed_kernels_loaded() -> bool:
    """Whether numba and the kernel are already loaded in this process (then they cost nothing more)."""
    return _compile_once.cache_info().currsize > 0


def compile_mixed_kernels() -> None:
    """Import numba and load (or compile) the kernel now."""
    _compile()


def mixed_one_group(Y, S, start, stop, Qt, QQt, B, constant, flat_design, max_iter, tol, out, extra) -> None:
    """See the compiled function's docstring; the arrays of `out` and `extra` are filled in place. Effects and
    variances stored in another dtype than float64 (float32 maps) are read into float64 for the voxels
    ``start:stop`` here (as the kernel reads them), so that it has one compiled signature (4.5 s of CPU)."""
    if Y.dtype != np.float64 or S.dtype != np.float64:
        Y, S = (np.asarray(a[:, start:stop], dtype=np.float64) for a in (Y, S))
        betas, covariance, tau2, loglik, iterations, outcome = out
        part = slice(start, stop)
        out = (betas[:, part], covariance[part], tau2[:, part], loglik[part], iterations[part], outcome[part])
        extra = tuple(e[part] if e.shape[0] else e for e in extra)  # (empty: no M^-1, T and information asked for)
        start, stop = 0, stop - start
    _compile()[0](Y, S, start, stop, Qt, QQt, B, constant, flat_design, max_iter, tol, *out, *extra)


def probe_peaks(Y, S, Q, columns, estimate, dof, step, out) -> None:
    """For each voxel of `columns` (of Y, S (n, V), as stored; Q (n, r) the design's orthonormal
    basis, `dof` n - r), in its own units (mean first-level variance 1), the restricted log-likelihood of one
    variance group (less its constants) at its `estimate` of tau2 (original units), at 0, and at points
    `step`-fold apart from its least first-level variance over `step` to `step` times the larger of its greatest
    and the unweighted residuals' moment estimate, and at `step` x that estimate where positive: ``out`` (4, v),
    points in original units, gets, of the points higher than the estimate (by more than 1e-9 of its
    likelihood) and the peaks of the points probed (0 higher than the next point, any other higher than both its
    neighbours) outside the estimate's bracket (its neighbours among them), the highest, its neighbours below and
    above (0 and inf at the ends), and how much higher than at the estimate its likelihood is (-inf, and NaN
    points, where there is none). Data stored in another dtype than float64 are read into float64 for `columns`
    here, as for :func:`mixed_one_group`."""
    if Y.dtype != np.float64 or S.dtype != np.float64:
        Y, S = (np.asarray(a[:, columns], dtype=np.float64) for a in (Y, S))
        columns = np.arange(len(columns))
    _compile()[1](Y, S, Q, columns, estimate, float(dof), float(step), out)


_LOCK = threading.Lock()
# sums over subjects in any order (vectorised), products and sums fused; no assumption on NaN or inf
_FASTMATH = {"reassoc", "contract"}


def _compile():
    with _LOCK:  # threads of one fit may ask at once: compile once
        return _compile_once()


@functools.cache
def _compile_once():  # noqa: C901 (one function, so that numba caches it)
    import math

    import numba

    # effects and variances in float64 (other dtypes read into it by the wrappers): any layout, read-only or not
    double = numba.types.Array(numba.float64, 2, "A", readonly=True)
    matrix = numba.types.Array(numba.float64, 2, "A")
    stack = numba.types.Array(numba.float64, 3, "A")
    vector = numba.types.Array(numba.float64, 1, "A")
    i64, f64 = numba.int64, numba.float64
    codes = (numba.types.Array(numba.int32, 1, "A"), numba.types.Array(numba.int8, 1, "A"))
    design = numba.types.Array(numba.float64, 2, "C", readonly=True)
    rest = (i64, i64, design, design, design, f64, numba.boolean, i64, f64)
    outputs = (matrix, stack, matrix, vector, *codes, stack, stack, vector)
    signatures = [numba.void(double, double, *rest, *outputs)]

    @numba.njit(signatures, nogil=True, cache=True, error_model="numpy", fastmath=_FASTMATH)
    def mixed_one_group(  # noqa: C901, PLR0912, PLR0915
        Y,
        S,
        start,
        stop,
        Qt,
        QQt,
        B,
        constant,
        flat_design,
        max_iter,
        tol,
        betas,
        covariance,
        tau2,
        loglik,
        iterations,
        outcome,
        Minv_out,
        T_out,
        info_out,
    ):  # pragma: no cover - compiled
        """REML of one variance group for the voxels ``start:stop`` (columns of Y and S, (n, v)).

        Qt (r, n): the orthonormal basis Q of the design's column space, transposed; QQt (r(r+1)/2, n): the
        products q_ia q_ib, a <= b, in the row-major order of the upper triangle; B (p, r): the betas from the
        coefficients on Q; `constant`: log pdet(X'X); `flat_design`: the design fits every subject exactly (no
        residual dof). Outputs, at the voxel's column: betas (p, v), covariance (v, p, p), tau2 (1, v), loglik
        (v,), iterations (v,), outcome (v,) (codes of ``voxfit.core.mixed.OUTCOMES``, NaN outputs where not 0),
        and when Minv_out has v rows, M^-1, T (both (v, r, r)) and the Fisher information (v,) at the estimate,
        in the voxel's own units (for the Satterthwaite dof).
        """
        n = Y.shape[0]
        p, r = B.shape
        rk, npad = Qt.shape  # (beyond subject n and column r: zeros; every sum on padded vectors)
        m = QQt.shape[0]
        extra = Minv_out.shape[0] > 0
        log_2pi = math.log(2 * math.pi)
        bound = 10.0 ** (290.0 / n)
        y = np.empty(npad)
        s = np.empty(npad)
        w = np.empty(npad)
        w2 = np.empty(npad)
        w3 = np.empty(npad)
        wy = np.empty(npad)
        res = np.empty(npad)
        ww = np.empty(npad)
        y[n:] = 0.0
        s[n:] = np.inf  # (a weight 1 / (s + t) of 0)
        Mp = np.empty(m)
        Tp = np.empty(m)
        Up = np.empty(m)
        L = np.empty((rk, rk))
        Linv = np.empty((rk, rk))
        Minv = np.empty((rk, rk))
        T = np.empty((rk, rk))
        MT = np.empty((rk, rk))
        bq = np.empty(rk)
        gamma = np.empty(rk)
        z = np.empty(rk)
        BM = np.empty((p, r))
        for j in range(start, stop):
            for a in range(p):
                betas[a, j] = np.nan
                for b in range(p):
                    covariance[j, a, b] = np.nan
            tau2[0, j] = np.nan
            loglik[j] = np.nan
            iterations[j] = 0
            # the checks: effects finite (else 4), variances positive and finite (else 1); without branches
            nan_y = 0.0  # (NaN when some value is not finite: inf * 0 is NaN)
            nan_s = 0.0
            positive = 0.0
            mean_s = 0.0
            for i in range(n):
                yi = Y[i, j]
                si = S[i, j]
                y[i] = yi
                s[i] = si
                nan_y += yi * 0.0
                nan_s += si * 0.0
                positive += 1.0 if si > 0 else 0.0
                mean_s += si
            if nan_y != 0:
                outcome[j] = 4
                continue
            if nan_s != 0 or positive < n:
                outcome[j] = 1
                continue
            # the voxel's own units: effects over k, the root mean first-level variance
            k = math.sqrt(mean_s / n)
            k2 = k * k
            scale = 0.0
            inv_k = 1.0 / k
            inv_k2 = 1.0 / k2
            for i in range(n):
                y[i] = y[i] * inv_k
                s[i] = s[i] * inv_k2
                scale += s[i]
            scale /= n
            # a flat likelihood: a design that fits every subject exactly (effects it fits exactly are not: the
            # score at 0 is below 0, the estimate 0)
            iterations[j] = 1
            if flat_design:
                outcome[j] = 2
                continue
            # the score at 0 decides the boundary; then Newton on the score, safeguarded by [lo, hi]
            t = 0.0
            lo = 0.0
            hi = np.inf
            evaluations = -1  # evaluations in the loop; -1: the one at tau2 = 0
            final = False
            code = 0
            while True:
                # --- the restricted likelihood's derivatives at t (the numpy path's evaluate); each sum is a
                # loop over the subjects alone, so that it is vectorised
                if r == 1:  # (one design column: every sum in two passes over the subjects)
                    sw = 0.0
                    sw2 = 0.0
                    xm = 0.0
                    xt = 0.0
                    xu = 0.0
                    xb = 0.0
                    for i in range(npad):
                        wi = 1.0 / (s[i] + t)
                        w[i] = wi
                        qq = QQt[0, i]
                        sw += wi
                        sw2 += wi * wi
                        xm += wi * qq
                        xt += wi * wi * qq
                        xu += wi * wi * wi * qq
                        xb += wi * y[i] * Qt[0, i]
                    L[0, 0] = math.sqrt(xm) if xm >= 0 else np.nan
                    mi = 1.0 / xm if xm > 0 else np.nan
                    Minv[0, 0] = mi
                    T[0, 0] = xt
                    g = mi * xb
                    gamma[0] = g
                    quad = 0.0
                    wr2 = 0.0
                    hp = 0.0
                    xz = 0.0
                    for i in range(npad):
                        ri = y[i] - Qt[0, i] * g
                        wr = w[i] * ri
                        quad += wr * ri
                        wr2 += wr * wr
                        hp += w[i] * wr * wr
                        xz += w[i] * wr * Qt[0, i]
                    trMT = mi * xt
                    trMU = mi * xu
                    both = trMT * trMT
                    proj = xz * mi * xz
                elif rk == 3:
                    # (two or three columns, padded to three: each sum in one pass, the 3 x 3 algebra written out)
                    sw = sw2 = b0 = b1 = b2 = 0.0
                    m0 = m1 = m2 = m3 = m4 = m5 = 0.0
                    t0 = t1 = t2 = t3 = t4 = t5 = 0.0
                    u0 = u1 = u2 = u3 = u4 = u5 = 0.0
                    for i in range(npad):
                        wi = 1.0 / (s[i] + t)
                        w[i] = wi
                        wi2 = wi * wi
                        wi3 = wi2 * wi
                        sw += wi
                        sw2 += wi2
                        wyi = wi * y[i]
                        b0 += wyi * Qt[0, i]
                        b1 += wyi * Qt[1, i]
                        b2 += wyi * Qt[2, i]
                        q = QQt[0, i]
                        m0 += wi * q
                        t0 += wi2 * q
                        u0 += wi3 * q
                        q = QQt[1, i]
                        m1 += wi * q
                        t1 += wi2 * q
                        u1 += wi3 * q
                        q = QQt[2, i]
                        m2 += wi * q
                        t2 += wi2 * q
                        u2 += wi3 * q
                        q = QQt[3, i]
                        m3 += wi * q
                        t3 += wi2 * q
                        u3 += wi3 * q
                        q = QQt[4, i]
                        m4 += wi * q
                        t4 += wi2 * q
                        u4 += wi3 * q
                        q = QQt[5, i]
                        m5 += wi * q
                        t5 += wi2 * q
                        u5 += wi3 * q
                    # M^-1 by Cholesky, written out (a padded column: M 1 there, its terms 0)
                    if r == 2:
                        m5 = 1.0
                    l00 = math.sqrt(m0) if m0 >= 0 else np.nan
                    l10 = m1 / l00
                    l20 = m2 / l00
                    d = m3 - l10 * l10
                    l11 = math.sqrt(d) if d >= 0 else np.nan
                    l21 = (m4 - l20 * l10) / l11
                    d = m5 - l20 * l20 - l21 * l21
                    l22 = math.sqrt(d) if d >= 0 else np.nan
                    i00 = 1.0 / l00
                    i11 = 1.0 / l11
                    i22 = 1.0 / l22
                    i10 = -(l10 * i00) / l11
                    i21 = -(l21 * i11) / l22
                    i20 = -(l20 * i00 + l21 * i10) / l22
                    n00 = i00 * i00 + i10 * i10 + i20 * i20
                    n01 = i10 * i11 + i20 * i21
                    n02 = i20 * i22
                    n11 = i11 * i11 + i21 * i21
                    n12 = i21 * i22
                    n22 = i22 * i22
                    g0 = n00 * b0 + n01 * b1 + n02 * b2
                    g1 = n01 * b0 + n11 * b1 + n12 * b2
                    g2 = n02 * b0 + n12 * b1 + n22 * b2
                    quad = wr2 = hp = z0 = z1 = z2 = 0.0
                    for i in range(npad):
                        ri = y[i] - Qt[0, i] * g0 - Qt[1, i] * g1 - Qt[2, i] * g2
                        wr = w[i] * ri
                        quad += wr * ri
                        wr2 += wr * wr
                        wwi = w[i] * wr
                        hp += wwi * wr
                        z0 += wwi * Qt[0, i]
                        z1 += wwi * Qt[1, i]
                        z2 += wwi * Qt[2, i]
                    trMT = n00 * t0 + n11 * t3 + n22 * t5 + 2 * (n01 * t1 + n02 * t2 + n12 * t4)
                    trMU = n00 * u0 + n11 * u3 + n22 * u5 + 2 * (n01 * u1 + n02 * u2 + n12 * u4)
                    a00 = n00 * t0 + n01 * t1 + n02 * t2  # M^-1 T
                    a01 = n00 * t1 + n01 * t3 + n02 * t4
                    a02 = n00 * t2 + n01 * t4 + n02 * t5
                    a10 = n01 * t0 + n11 * t1 + n12 * t2
                    a11 = n01 * t1 + n11 * t3 + n12 * t4
                    a12 = n01 * t2 + n11 * t4 + n12 * t5
                    a20 = n02 * t0 + n12 * t1 + n22 * t2
                    a21 = n02 * t1 + n12 * t3 + n22 * t4
                    a22 = n02 * t2 + n12 * t4 + n22 * t5
                    both = a00 * a00 + a11 * a11 + a22 * a22 + 2 * (a01 * a10 + a02 * a20 + a12 * a21)
                    proj = (
                        n00 * z0 * z0
                        + n11 * z1 * z1
                        + n22 * z2 * z2
                        + 2 * (n01 * z0 * z1 + n02 * z0 * z2 + n12 * z1 * z2)
                    )
                    # (the state the outputs are taken from)
                    L[0, 0], L[1, 1], L[2, 2] = l00, l11, l22
                    Minv[0, 0], Minv[0, 1], Minv[0, 2] = n00, n01, n02
                    Minv[1, 0], Minv[1, 1], Minv[1, 2] = n01, n11, n12
                    Minv[2, 0], Minv[2, 1], Minv[2, 2] = n02, n12, n22
                    T[0, 0], T[0, 1], T[0, 2] = t0, t1, t2
                    T[1, 0], T[1, 1], T[1, 2] = t1, t3, t4
                    T[2, 0], T[2, 1], T[2, 2] = t2, t4, t5
                    gamma[0], gamma[1], gamma[2] = g0, g1, g2
                else:
                    sw = 0.0
                    sw2 = 0.0
                    for i in range(npad):
                        wi = 1.0 / (s[i] + t)
                        w[i] = wi
                        w2[i] = wi * wi
                        w3[i] = wi * wi * wi
                        wy[i] = wi * y[i]
                        sw += wi
                        sw2 += wi * wi
                    for a in range(rk):
                        x = 0.0
                        for i in range(npad):
                            x += wy[i] * Qt[a, i]
                        bq[a] = x
                    for e in range(m):
                        xm = 0.0
                        xt = 0.0
                        xu = 0.0
                        for i in range(npad):
                            qq = QQt[e, i]
                            xm += w[i] * qq
                            xt += w2[i] * qq
                            xu += w3[i] * qq
                        Mp[e] = xm
                        Tp[e] = xt
                        Up[e] = xu
                    # M^-1 and log|M| by Cholesky (NaN where M is not positive definite)
                    e = 0
                    for a in range(rk):
                        for b in range(a, rk):
                            L[b, a] = Mp[e]  # (the lower triangle; M is symmetric)
                            T[a, b] = Tp[e]
                            T[b, a] = Tp[e]
                            e += 1
                    for c in range(rk):
                        d = L[c, c]
                        for q in range(c):
                            d -= L[c, q] * L[c, q]
                        d = math.sqrt(d) if d >= 0 else np.nan
                        L[c, c] = d
                        for i2 in range(c + 1, rk):
                            x = L[i2, c]
                            for q in range(c):
                                x -= L[i2, q] * L[c, q]
                            L[i2, c] = x / d
                    for c in range(rk):
                        Linv[c, c] = 1.0 / L[c, c]
                        for i2 in range(c + 1, rk):
                            x = 0.0
                            for q in range(c, i2):
                                x += L[i2, q] * Linv[q, c]
                            Linv[i2, c] = -x / L[i2, i2]
                    for a in range(rk):
                        for b in range(a, rk):
                            x = 0.0
                            for q in range(b, rk):
                                x += Linv[q, a] * Linv[q, b]
                            Minv[a, b] = x
                            Minv[b, a] = x
                    for a in range(rk):
                        x = 0.0
                        for b in range(rk):
                            x += Minv[a, b] * bq[b]
                        gamma[a] = x
                    for i in range(npad):
                        res[i] = y[i]
                    for a in range(rk):
                        g = gamma[a]
                        for i in range(npad):
                            res[i] -= Qt[a, i] * g
                    quad = 0.0
                    wr2 = 0.0
                    hp = 0.0
                    for i in range(npad):
                        wr = w[i] * res[i]
                        quad += wr * res[i]
                        wr2 += wr * wr
                        ww[i] = w[i] * wr
                        hp += ww[i] * wr
                    for a in range(rk):
                        x = 0.0
                        for i in range(npad):
                            x += ww[i] * Qt[a, i]
                        z[a] = x
                    trMT = 0.0
                    trMU = 0.0
                    e = 0
                    for a in range(rk):
                        for b in range(a, rk):
                            factor = 1.0 if a == b else 2.0
                            trMT += factor * Minv[a, b] * Tp[e]
                            trMU += factor * Minv[a, b] * Up[e]
                            e += 1
                    for a in range(rk):
                        for b in range(rk):
                            x = 0.0
                            for q in range(rk):
                                x += Minv[a, q] * T[q, b]
                            MT[a, b] = x
                    both = 0.0
                    proj = 0.0
                    for a in range(rk):
                        for b in range(rk):
                            both += MT[a, b] * MT[b, a]
                            proj += z[a] * Minv[a, b] * z[b]
                score = -0.5 * (sw - trMT - wr2)
                info = 0.5 * (sw2 - 2 * trMU) + 0.5 * both
                hess = info - (hp - proj)
                # --- the step
                if final:
                    break  # (the state at the estimate of a voxel that did not converge)
                if evaluations == -1:
                    evaluations = 0
                    if not score > 0:
                        break  # the estimate is 0, the state is this one
                    # the start: the moment estimate (DerSimonian-Laird's, generalised: E r'Wr = n - r + tau2 tr P
                    # at 0) where positive, else a Fisher step from 0 (positive)
                    moment = (quad - (n - r)) / (sw - trMT)
                    t = moment if moment > 0 else score / info
                else:
                    evaluations += 1
                    if score > 0:
                        lo = t
                    if score <= 0:
                        hi = t
                    step = -score / hess if hess < 0 else score / info
                    new = t + step
                    if not (new > lo and new < hi):
                        new = 0.5 * (lo + hi)
                    if abs(new - t) <= tol * (t + scale) or score == 0:
                        break  # the estimate is t, the state is this one
                    t = new
                if evaluations == max_iter:
                    code = 3
                    final = True  # one more evaluation, at the estimate t
            iterations[j] = evaluations + 2
            logdet = 0.0
            for c in range(r):
                d = L[c, c]
                logdet += 2 * math.log(d) if d > 0 else (-np.inf if d == 0 else np.nan)
            # the GLS fit at the estimate t (the last state), back in the data's units
            # sum log(s_i + t): the log of their product where every factor lies within 1/bound..bound (the
            # product then within 1e+-290), else logs of partial products of at most ~1e+-200
            prod = 1.0
            outside = 0.0
            for i in range(n):
                f = s[i] + t
                prod *= f
                outside += 0.0 if 1 / bound <= f <= bound else 1.0
            if outside == 0:
                sumlog = math.log(prod)
            else:
                sumlog = 0.0
                prod = 1.0
                for i in range(n):
                    f = s[i] + t
                    if 1e-100 < f < 1e100:
                        prod *= f
                        if not 1e-100 < prod < 1e100:
                            sumlog += math.log(prod)
                            prod = 1.0
                    else:
                        sumlog += math.log(f)
                sumlog += math.log(prod)
            finite = np.isfinite(t * k2)
            for a in range(p):
                x = 0.0
                for b in range(r):
                    x += B[a, b] * gamma[b]
                    u = 0.0
                    for q in range(r):
                        u += Minv[b, q] * B[a, q]
                    BM[a, b] = u  # (B M^-1, M^-1 symmetric)
                betas[a, j] = x * k
                finite &= np.isfinite(x * k)
            for a in range(p):
                for c in range(a, p):
                    x = 0.0
                    for b in range(r):
                        x += BM[a, b] * B[c, b]
                    x *= k2
                    covariance[j, a, c] = x
                    covariance[j, c, a] = x
                    finite &= np.isfinite(x)
            if code == 0 and not finite:
                code = 3
            outcome[j] = code
            if code != 0:
                for a in range(p):
                    betas[a, j] = np.nan
                    for b in range(p):
                        covariance[j, a, b] = np.nan
                continue
            tau2[0, j] = t * k2
            loglik[j] = -0.5 * ((n - r) * log_2pi + sumlog + logdet + constant + quad) - (n - r) * math.log(k)
            if extra:
                for a in range(r):
                    for b in range(r):
                        Minv_out[j, a, b] = Minv[a, b]
                        T_out[j, a, b] = T[a, b]
                info_out[j] = info

    probe_signatures = [numba.void(double, double, design, numba.types.Array(i64, 1, "A"), vector, f64, f64, matrix)]

    @numba.njit(probe_signatures, nogil=True, cache=True, error_model="numpy", fastmath=_FASTMATH)
    def probe_peaks(Y, S, Q, columns, estimate, dof, step, out):  # pragma: no cover - compiled
        """See the Python function's docstring."""

        def reml(y, s, Qt, t, L, b, w):
            """The restricted log-likelihood of one group at tau2 `t`, less its constants: -(sum log(s + t) + log|M|
            + r'Wr) / 2 with M = Q'WQ (by Cholesky; -inf where M is not positive definite); Qt (r, n) the basis
            transposed, `w` (n,) room for the weights. Each sum a loop of its own into a scalar (vectorised: sums
            into the arrays L and b, a load and a store per subject, took 3 times as long). Inside the kernel, not
            a kernel of its own in its closure: numba's cache keys a kernel by its closure's pickle too, and a
            kernel's differs in every process (each compiled the probe again)."""
            r, n = Qt.shape
            for i in range(n):
                w[i] = 1.0 / (s[i] + t)
            sumlog = 0.0
            for lo in range(0, n, 16):  # (sum log f as the log of products of 16, each log where one is not finite)
                hi = min(n, lo + 16)
                prod = 1.0
                for i in range(lo, hi):
                    prod *= s[i] + t
                if 1e-280 < prod < 1e280:
                    sumlog += math.log(prod)
                else:
                    for i in range(lo, hi):
                        sumlog += math.log(s[i] + t)
            yy = 0.0
            for i in range(n):
                yy += w[i] * y[i] * y[i]
            for a in range(r):
                q = Qt[a]
                x = 0.0
                for i in range(n):
                    x += w[i] * y[i] * q[i]
                b[a] = x
                for c in range(a + 1):
                    x = 0.0
                    for i in range(n):
                        x += w[i] * q[i] * Qt[c, i]
                    L[a, c] = x
            logdet = 0.0
            for c in range(r):  # Cholesky in place, then b := L^-1 b: r'Wr = y'Wy - |L^-1 b|^2
                d = L[c, c]
                for q in range(c):
                    d -= L[c, q] * L[c, q]
                if not d > 0:
                    return -np.inf
                d = math.sqrt(d)
                L[c, c] = d
                logdet += 2.0 * math.log(d)
                for i2 in range(c + 1, r):
                    x = L[i2, c]
                    for q in range(c):
                        x -= L[i2, q] * L[c, q]
                    L[i2, c] = x / d
            quad = yy
            for a in range(r):
                x = b[a]
                for q in range(a):
                    x -= L[a, q] * b[q]
                b[a] = x / L[a, a]
                quad -= b[a] * b[a]
            return -0.5 * (sumlog + logdet + quad)

        n, r = Q.shape
        L = np.empty((r, r))
        b = np.empty(r)
        w = np.empty(n)
        Qt = np.ascontiguousarray(Q.T)
        points = np.empty(80)
        values = np.empty(80)
        tile = 256
        ys = np.empty((tile, n))
        ss = np.empty((tile, n))
        for j in range(columns.shape[0]):
            u = j % tile
            if u == 0:  # the tile's columns read a row at a time (a column at a time, a page per subject)
                width = min(tile, columns.shape[0] - j)
                for i in range(n):
                    for q in range(width):
                        ys[q, i] = Y[i, columns[j + q]]
                        ss[q, i] = S[i, columns[j + q]]
            y = ys[u]  # (the voxel's column, contiguous, in its own units: mean s2 1, as the fits')
            s = ss[u]
            k2 = 0.0
            for i in range(n):
                k2 += s[i]
            k2 /= n
            k = math.sqrt(k2)
            low, high, yy = np.inf, 0.0, 0.0
            for i in range(n):
                y[i] /= k
                s[i] /= k2
                low = min(low, s[i])
                high = max(high, s[i])
                yy += y[i] * y[i]
            for a in range(r):  # the unweighted residuals' moment estimate of tau2
                qy = 0.0
                for i in range(n):
                    qy += Q[i, a] * y[i]
                yy -= qy * qy
            moment = yy / dof - 1.0
            estimate_k = estimate[j] / k2
            extra = step * moment
            top = step * max(high, extra)
            placed = not extra > 0
            points[0] = 0.0  # (the boundary: a peak at or near it, below the least positive point)
            m = 1
            t = low / step
            while t <= top and m < 78:  # the points from min s2 / step, step-fold apart, with step x moment
                if not placed and extra < t:
                    points[m] = extra
                    m += 1
                    placed = True
                points[m] = t
                m += 1
                t *= step
            if not placed:
                points[m] = extra
                m += 1
            here = reml(y, s, Qt, estimate_k, L, b, w)
            for e in range(m):
                values[e] = reml(y, s, Qt, points[e], L, b, w)
            higher = here + 1e-9 * max(1.0, abs(here))
            best, at = -np.inf, -1
            for e in range(m):  # the highest point of another peak than the estimate's (see the Python docstring)
                lo = points[e - 1] if e > 0 else 0.0
                hi = points[e + 1] if e < m - 1 else np.inf
                own = (estimate_k > lo or e == 0) and estimate_k < hi
                peak = e < m - 1 and values[e] >= values[e + 1] and (e == 0 or values[e] >= values[e - 1])
                if (values[e] > higher or (peak and not own)) and values[e] > best:
                    best, at = values[e], e
            if at < 0:
                out[0, j], out[1, j], out[2, j], out[3, j] = np.nan, np.nan, np.nan, -np.inf
                continue
            out[0, j] = points[at] * k2
            out[1, j] = points[at - 1] * k2 if at > 0 else 0.0
            out[2, j] = points[at + 1] * k2 if at < m - 1 else np.inf
            out[3, j] = best - here

    return mixed_one_group, probe_peaks
