"""Autoregressive noise, per voxel and exact: AR(p) estimated from OLS residuals and removed by prewhitening.

For each voxel, AR(p) coefficients come from the autocovariances of its OLS residuals, corrected for the
bias that the fit itself puts in them (Worsley et al. 2002, NeuroImage 15:1-15, as in fmristat: the
expected residual autocovariances are ``M v`` with ``M_ij = trace(R D_i R D_j)``, R the residual-forming
matrix and D_j the symmetric lag-j shift, so ``v = M^-1 r``), then Yule-Walker by Levinson-Durbin with
reflection coefficients held inside (-0.99, 0.99) so every model is stationary. No binning of coefficients.

The whitening W of a voxel is exact: its first p scans by the inverse Cholesky factor of the stationary
covariance of p consecutive values, the others by the AR filter, so that ``W'W`` is the inverse of the
AR correlation matrix. With a design X shared by all voxels, ``X'W'WX`` is a per-voxel weighted sum of a
few fixed Gram matrices of lagged rows of X, and ``X'W'Wy`` one matrix product with the doubly filtered
data: the n x V work stays a few matrix products, and the p x p algebra per voxel is batched.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import held_as_series
from .._memory import check_memory
from .design import DesignFactor
from .distributions import kenward_roger_or_satterthwaite
from ._ar_kernels import ar1_estimate, ar1_solve, ar_kernels_loaded, compile_ar_kernels, shift_and_lag
from .ols import REFIT_RATIO, needs_refit

__all__ = [
    "ARBlock",
    "ARBlockFit",
    "LaggedSums",
    "ar1_estimation_terms",
    "ar_information",
    "ar_whiten",
    "ar_whitening",
    "bias_matrix",
    "efficiency_loss",
    "estimate_ar",
    "estimation_terms",
    "fit_ar_block",
    "model_autocorrelations",
    "fit_ar_sums",
    "lag_traces",
    "lagged_sums",
    "reflection_coefficients",
    "residual_lagged_sums",
    "shifted_columns",
]

MAX_REFLECTION = 0.99
MIN_PREDICTION_ERROR = 1e-6  # of the variance: a clipped coefficient below it ends the model (see _levinson)
AR_ITERATIONS = 4  # of the bias correction (see ARBlock.estimate)
_TERMS_CHECKED = 16 << 20  # bytes of AR terms above which they are checked (smaller cost no more than a cap's rounding)
BIAS_BLOCK_BYTES = 16 << 20  # of shifted bases held at once by bias_matrix (its lags reach 200: voxfit.core.long_lags)
AR1_TABLE_NODES = 2049  # of the AR(1) estimation terms' table over atanh(phi) (see ar1_estimation_terms)
AR1_TABLE_SPAN = float(np.arctanh(0.995))  # the table's atanh(phi) range: every estimate is within +-0.99
AR1_TABLE_STEP = 2.0 * AR1_TABLE_SPAN / (AR1_TABLE_NODES - 1)  # between the nodes, in atanh(phi)
AR1_TABLE_CHUNK = 64  # nodes of the table computed together, when a voxel first needs one of them
TILE_BYTES = 4 << 20  # of float64 data that a block's sums (lagged_sums) use while they are in cache (see _tiled_sums)
_TABLE_LOCK = threading.Lock()  # one thread computes a table while the others of the fit wait for it


def ar_terms_bytes(n_scans: int, rank: int, order: int) -> int:
    """The most memory :class:`ARBlock`'s design-only terms take while they are made, for a design of `rank`
    columns over `n_scans` scans and AR(`order`): its lagged basis (n x (p+1) r) and the FFTs of its basis, the Gram
    terms of its lags and corners ((p+1+p^2) r^2) and the spectrum's table ((p+2)(p+1) frequencies). Fitted to
    tracemalloc's peaks over twelve designs (n 800-10,000, rank 5-500, order 1-100: within 8% below and 11% above
    each), with a tenth added. A run's length and TR are the files' claims: the default model's AR(12) terms of a
    run of 32,767 scans and 1,026 columns took 14 GB under --max-memory 2G."""
    n, r, p = int(n_scans), int(rank), int(order)
    lags, grams, table = (
        1.6 * n * r * (p + 1) + 5.2 * n * r,
        4.6 * r * r * p * p + 1.5 * r * r * (p + 1),
        1.2 * n * (p + 1) * (p + 2),
    )
    return int(8 * (lags + grams + table))


def check_ar_terms(design: DesignFactor, orders, max_memory=None) -> None:
    """Refuse, before they are made, AR models of the `orders` (an order, or several held at once) whose design
    terms (:func:`ar_terms_bytes`) cannot fit `max_memory` (None: the memory there is)."""
    orders = [orders] if np.ndim(orders) == 0 else list(orders)
    need = sum(ar_terms_bytes(design.n_scans, design.rank, p) for p in orders)
    if need > _TERMS_CHECKED:
        fix = "Give a design of fewer columns or a lower order (--noise)"
        fix += ", or a larger --max-memory (`max_memory`)." if max_memory is not None else "."
        what = (
            f"the AR({max(orders)}) noise model's terms of a design of rank {design.rank:,}, {design.n_scans:,} scans"
        )
        check_memory(need, what, max_memory, fix)


def _shift_sum(A: NDArray, j: int) -> NDArray:
    """D_j A for the symmetric lag-j shift D_j (identity for j = 0), without forming D_j."""
    if j == 0:
        return A.copy()
    out = np.zeros_like(A)
    out[j:] += A[:-j]
    out[:-j] += A[j:]
    return out


def bias_matrix(design: DesignFactor, order: int) -> NDArray[np.float64]:
    """Worsley's (p+1) x (p+1) matrix M: expected residual autocovariances = M @ true autocovariances.

    ``M_ij = trace(R D_i R D_j) / (2 if i > 0 else 1)`` with ``R = I - QQ'``, expanded into terms of the
    design's basis Q (n x r) so that no n x n matrix is formed: O(p^2 n r) time, two blocks of shifted bases of at
    most BIAS_BLOCK_BYTES each in memory.
    """
    n, Q = design.n_scans, design.basis
    step = max(1, BIAS_BLOCK_BYTES // (8 * Q.size))  # lags whose shifted bases are held at once

    def shifted(a: int) -> tuple[NDArray, NDArray]:  # D_j Q and Q'D_j Q of lags a .. a + step - 1, flattened
        DQ = np.stack([_shift_sum(Q, j) for j in range(a, min(order + 1, a + step))])
        return DQ.reshape(len(DQ), -1), (Q.T @ DQ).reshape(len(DQ), -1)

    lags = np.arange(order + 1)
    M = np.diag(np.where(lags == 0, n, 2.0 * (n - lags)).astype(float))  # trace(D_i D_j)
    for a in range(0, order + 1, step):
        DQa, QDQa = shifted(a)
        for b in range(a, order + 1, step):
            DQb, QDQb = (DQa, QDQa) if b == a else shifted(b)
            part = QDQa @ QDQb.T - 2.0 * (DQa @ DQb.T)
            M[a : a + len(DQa), b : b + len(DQb)] += part
            if b != a:
                M[b : b + len(DQb), a : a + len(DQa)] += part.T
    M[1:] /= 2.0
    return M


def lag_traces(design: DesignFactor, order: int) -> NDArray[np.float64]:
    """(p+1, n): ``T_ik = trace(R D_i R D_k) / (2 if i > 0 else 1)`` for every lag k = 0..n-1.

    Expected residual lagged products are ``T @ gamma`` for the noise's autocovariances gamma at all lags
    (``bias_matrix`` is the first p+1 columns). ``trace(Q'D_i D_k Q)`` and ``trace(Q'D_i Q Q'D_k Q)`` are
    cross-correlations of columns, at every lag at once by FFT: O(p r n log n), no n x n matrix.
    """
    n, Q = design.n_scans, design.basis
    size = 1 << int(np.ceil(np.log2(2 * n)))
    FQ = np.fft.rfft(Q, size, axis=0)

    def against_shifted_q(A):  # sum_t sum_a A[t, a] (D_k Q)[t, a] for k = 0..n-1
        c = np.fft.irfft((np.conj(np.fft.rfft(A, size, axis=0)) * FQ).sum(axis=1), size)
        out = c[:n].copy()  # c[k] = sum_t A[t] Q[t + k]; c[size - k] = sum_t A[t] Q[t - k]
        out[1:] += c[size - 1 : size - n : -1]
        return out

    T = np.empty((order + 1, n))
    for i in range(order + 1):
        DQ = _shift_sum(Q, i)
        T[i] = against_shifted_q(Q @ (Q.T @ DQ)) - 2.0 * against_shifted_q(DQ)
        T[i, i] += n if i == 0 else 2.0 * (n - i)  # trace(D_i D_k): only k = i
        T[i] /= 2.0 if i > 0 else 1.0
    return T


def _lagged_products(E: NDArray, order: int) -> NDArray[np.float64]:
    """(order+1, v): sum_t e_t e_{t+k} for k = 0..order."""
    return np.stack([np.einsum("tv,tv->v", E[: E.shape[0] - k], E[k:]) for k in range(order + 1)])


def _levinson(rho_in: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """Yule-Walker by Levinson-Durbin for autocorrelations `rho_in` (v, p+1), reflection coefficients held in
    (-MAX_REFLECTION, MAX_REFLECTION). Returns ``(phi (v, p), model autocorrelations (v, p+1), gamma0 (v,))``.

    Autocorrelations that no stationary model has give reflection coefficients beyond the bound, each held at it,
    which divides the one-step prediction error by 50. Where a clipped coefficient at lag k would take that error
    below MIN_PREDICTION_ERROR of the variance, the AR(k - 1) model is kept and no later lag is fitted: a cascade
    of clips (from corrected autocorrelations of short runs at high orders) would soon make the model's covariance
    singular to rounding."""
    n_vox, p = rho_in.shape[0], rho_in.shape[1] - 1
    phi = np.zeros((n_vox, p))  # phi[:, j - 1] is the lag-j coefficient
    rho = np.ones((n_vox, p + 1))  # the fitted model's autocorrelations
    err = np.ones(n_vox)
    fitting = np.ones(n_vox, dtype=bool)  # no coefficient clipped yet
    for k in range(1, p + 1):
        past = np.einsum("vj,vj->v", phi[:, : k - 1], rho[:, k - 1 : 0 : -1])  # sum_j phi_j rho_{k-j}
        with np.errstate(invalid="ignore"):
            raw = np.where(fitting, (rho_in[:, k] - past) / err, 0.0)
            kappa = np.clip(raw, -MAX_REFLECTION, MAX_REFLECTION)
            fitting &= ~((np.abs(raw) > MAX_REFLECTION) & (err * (1.0 - kappa**2) < MIN_PREDICTION_ERROR))
            kappa = np.where(fitting, kappa, 0.0)
        rho[:, k] = kappa * err + past  # the input rho_k unless kappa was clipped
        if k > 1:
            phi[:, : k - 1] = phi[:, : k - 1] - kappa[:, None] * phi[:, k - 2 :: -1]
        phi[:, k - 1] = kappa
        err = err * (1.0 - kappa**2)
    return phi, rho, 1.0 / err


def _correlations(v: NDArray) -> NDArray:
    """(v, p+1) autocorrelations from autocovariances (p+1, v); 0 where the variance is not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_in = (v / v[0]).T
    return np.where(np.isfinite(rho_in), rho_in, 0.0)


def estimate_ar(residual_autocov: NDArray, M_inv: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """Yule-Walker for each voxel from autocovariances corrected by ``M_inv`` (Worsley's lags 0..p only).

    Returns ``(phi (v, p), rho (v, p+1) model autocorrelations, gamma0 (v,))`` where gamma0 is the variance
    of the AR process for unit innovation variance. :meth:`ARBlock.estimate` is the estimator the fits use.
    """
    return _levinson(_correlations(M_inv @ residual_autocov))


def ar_whitening(phi: NDArray, rho: NDArray, gamma0: NDArray) -> NDArray[np.float64]:
    """(v, p, p) inverse Cholesky factors whitening the first p scans of each voxel."""
    p = phi.shape[1]
    idx = np.abs(np.arange(p)[:, None] - np.arange(p)[None, :])
    cov = rho[:, idx] * gamma0[:, None, None]
    return np.linalg.inv(np.linalg.cholesky(cov))


def ar_whiten(Z: NDArray, phi: NDArray) -> NDArray[np.float64]:
    """W z for each column z of Z (n, v) under the AR models phi (v, p), exactly as the fits whiten (the first p
    scans by the inverse Cholesky factor of the model's stationary covariance, then the AR filter); Z (n, ..., v):
    every z along the middle axes whitened by its voxel's model (a design's columns: one factor per voxel)."""
    rho, gamma0 = model_autocorrelations(phi)
    return _whiten(np.asarray(Z, dtype=np.float64), phi, ar_whitening(phi, rho, gamma0))


def _whiten(Z: NDArray, phi: NDArray, L_inv: NDArray) -> NDArray:
    """W z for each column z of Z (n, ..., v): the AR filter from scan p on, L^-1 on the first p scans."""
    p = phi.shape[1]
    out = np.empty_like(Z)
    np.multiply(phi[:, 0], Z[p - 1 : Z.shape[0] - 1], out=out[p:])
    for i in range(2, p + 1):
        out[p:] += phi[:, i - 1] * Z[p - i : Z.shape[0] - i]
    np.subtract(Z[p:], out[p:], out=out[p:])
    out[:p] = np.einsum("vab,b...v->a...v", L_inv, Z[:p])
    return out


class ARBlock:
    """What the AR fit of one design needs, computed once: bias matrix, lagged bases, Gram terms.

    The algebra runs in the coordinates of the design's orthonormal basis Q (X = Q T): the per-voxel
    matrices Q'V^-1 Q are as well conditioned as the noise model allows, whatever the scaling of X, and
    rank-deficient designs need no special case (betas = T^+ (Q'V^-1 Q)^-1 Q'V^-1 y, the minimum-norm
    solution, as for OLS).

    The inverse correlation matrix of an AR(p) process is banded: ``W'W = sum_k alpha_k S_k`` (S_k the
    symmetric lag-k shift, S_0 = I, ``alpha_k = sum_j a_j a_{j+k}`` for filter taps a = (1, -phi)) except in
    its top-left and bottom-right p x p corners. So everything a voxel's fit needs comes from one matrix
    product ``[Q, S_1 Q, .., S_p Q]' y``, the lagged sums ``sum_t y_t y_{t+k}`` and its first and last p
    values: the sufficient statistics that can also be gathered scan by scan.

    `compiled`: whether the blocks of this design take the compiled data pass and AR(1) fit
    (:mod:`voxfit.core._ar_kernels`, loaded here if need be; the same numbers to rounding); by default, whether
    those kernels are already loaded in this process. One decision for every block, so a fit's voxels are all
    computed alike. `max_memory`: the cap its terms must fit while they are made (:func:`check_ar_terms`; None:
    the memory there is).
    """

    def __init__(self, design: DesignFactor, order: int, compiled: bool | None = None, max_memory=None):
        if order < 1:
            raise ValueError("order must be at least 1")
        if design.n_scans <= 2 * order + design.rank:
            raise ValueError("too few scans for this AR order")
        check_ar_terms(design, order, max_memory)
        self.design, self.order = design, order
        # the compiled data pass and AR(1) fit (voxfit.core._ar_kernels) for every block of this design, or none
        self.compiled = ar_kernels_loaded() if compiled is None else bool(compiled)
        if self.compiled:
            compile_ar_kernels()
        Q, p = design.basis, order
        self.M = bias_matrix(design, order)
        self.M_inv = np.linalg.pinv(self.M)
        self.beyond = lag_traces(design, order)[:, p + 1 :]  # (p+1, n-p-1): what lags > p add to the products
        self.nu = design.n_scans - design.rank
        # for the information about phi (ar_information): the half spectrum's frequencies, their weights, and
        # the share of each that the design takes away from the residuals (||Q'e_w||^2, e_w a Fourier vector)
        n = design.n_scans
        self.freqs = 2.0 * np.pi * np.arange(n // 2 + 1) / n
        self.freq_weights = np.where((np.arange(n // 2 + 1) == 0) | (2 * np.arange(n // 2 + 1) == n), 1.0, 2.0)
        self.basis_fft = np.fft.rfft(Q, axis=0)  # (f, r)
        self.residual_share = 1.0 - np.sum(np.abs(self.basis_fft) ** 2, axis=1) / n
        lags = np.arange(1, p + 1)[None, :, None] - np.arange(p + 1)[:, None, None]  # j - l, (p+1, p, 1)
        ls = np.arange(p + 1)[:, None, None] * self.freqs  # l w: A's real and imaginary parts
        # ((p+2) f, p+1): this @ taps is Re(e^{ijw} conj(A)) for j = 1..p, then Re(A) and Im(A) (_spectrum_parts)
        table = np.concatenate([np.cos(lags * self.freqs), np.cos(ls), -np.sin(ls)], axis=1)  # (p+1, p+2, f)
        self.tap_cosines = np.ascontiguousarray(table.transpose(1, 2, 0).reshape(-1, p + 1))
        self.information_weights = 2.0 * self.freq_weights * self.residual_share  # g(w) |A(w)|^4 of ar_information
        shifted = [_shift_sum(Q, k) for k in range(p + 1)]
        self.lagged_basis = np.concatenate(shifted, axis=1)  # (n, (p+1) r)
        self.G = np.stack([Q.T @ sq for sq in shifted])  # (p+1, r, r): Q'S_k Q
        self.top, self.bottom = Q[:p], Q[::-1][:p]  # rows 0..p-1 and n-1, n-2, .., n-p
        # the same correction C_ab in both corners (see _band_and_corners): its term is e_a e_b' at both ends
        corners = np.einsum("ai,bj->abij", self.top, self.top) + np.einsum("ai,bj->abij", self.bottom, self.bottom)
        self.gram_terms = np.concatenate([self.G.reshape(p + 1, -1), corners.reshape(p * p, -1)])  # (p+1+p^2, r^2)
        # the same Gram matrices by their lower triangles, C's symmetric pairs as one term (see _gram_coefs)
        iu, il = np.triu_indices(p), np.tril_indices(design.rank)
        pairs = corners + corners.transpose(1, 0, 2, 3) * (np.arange(p)[:, None] != np.arange(p))[:, :, None, None]
        self.lower_terms = np.concatenate([self.G[:, il[0], il[1]], pairs[iu][:, il[0], il[1]]])  # (T, r(r+1)/2)
        self.ones = Q.T @ np.ones(design.n_scans) if design.exact_intercept else None
        w = np.linspace(0, np.pi, 256)
        self.cosines = np.cos(np.outer(w, np.arange(p + 1))) * np.r_[1.0, 2.0 * np.ones(p)]  # for |A(w)|^2
        if p == 1:  # Q'W'WQ = alpha_0 I + alpha_1 Q'S_1Q + two corner outer products: diagonal in the
            self.eig, self.U = np.linalg.eigh(self.G[1])  # eigenbasis of Q'S_1Q plus a rank-2 update
            self.edges = self.U.T @ np.column_stack([self.top[0], self.bottom[0]])  # (r, 2)
        self._tail_table = None  # AR(1) only: see _ar1_tail_table
        self.ar1_tables: dict = {}  # contrasts -> spline of their estimation terms in atanh(phi) (AR(1) only)

    def estimate(self, residual_lagged: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        """AR(p) per voxel from its OLS residual lagged products ``sum_t e_t e_{t+k}`` (p+1, v), unbiased for
        the design and to first order in 1/n; returns what :func:`estimate_ar` does.

        Worsley's correction ``M^-1 r`` assumes no autocovariance beyond lag p, but an AR(p) process has
        some at every lag, and a smooth design turns them into a bias (0.474 for an AR(1) of 0.5 with a block
        design and cosine drifts over 200 scans). So the correction is solved with the current model's
        autocovariances beyond lag p added, ``r = M gamma_0..p + T_>p gamma_>p(phi)``, and iterated. The
        autocorrelations of those unbiased autocovariances, a ratio, are still biased by
        ``(2/nu) (rho_k S_0 - S_k)`` with ``S_k = sum_m rho_m rho_m+k`` (Bartlett's variance and covariance of
        the autocovariances; -2 rho / n for an AR(1), nu = n - rank); that is subtracted too, at the model's
        rho. A fixed number of iterations: the same numbers whatever the block.
        """
        u = self.M_inv @ residual_lagged
        phi, rho, gamma0 = _levinson(_correlations(u))
        for _ in range(AR_ITERATIONS):
            tail, S = self._beyond_p(phi, rho)
            w = self.M_inv @ tail  # r = (M + tail e_0') gamma: solved by Sherman-Morrison
            with np.errstate(invalid="ignore", divide="ignore"):
                v = u - w * (u[0] / (1.0 + w[0]))
            rho_in = _correlations(v)
            rho_in[:, 1:] -= (2.0 / self.nu) * (rho[:, 1:] * S[:1].T - S[1:].T)
            phi, rho, gamma0 = _levinson(rho_in)
        if self.order > 1:  # unbiased autocorrelations still give phi biased by Levinson's curvature (-1/nu for phi_2)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                rho_new, _ = model_autocorrelations(phi - self._levinson_bias(rho_in, phi))
            ok = np.isfinite(rho_new).all(axis=1) & (np.abs(rho_new[:, 1:]) < 1.0).all(axis=1)
            phi_new, rho_new, gamma0_new = _levinson(np.where(ok[:, None], rho_new, rho_in))
            phi, rho, gamma0 = phi_new, rho_new, gamma0_new
        return phi, rho, gamma0

    def _levinson_bias(self, rho_in: NDArray, phi: NDArray, h: float = 0.05) -> NDArray:
        """(v, p): ``E[L(rho_hat)] - L(rho)`` to second order for Levinson's map L from autocorrelations to
        phi: ``tr(Hess L cov(rho_hat)) / 2``, with ``cov(rho_hat) = J^-1 cov(phi) J^-T`` (J = dL/drho, cov(phi)
        the inverse of :func:`ar_information`); by second differences along the columns of a square root of
        cov(rho_hat), ``J^-1 R^-T`` with ``R R'`` the information (Cholesky), steps of `h` of them."""
        v, p = phi.shape

        def L(r):
            return _levinson(np.concatenate([np.ones((v, 1)), r], axis=1))[0]

        r0 = rho_in[:, 1:]
        J = np.empty((v, p, p))
        for j in range(p):
            e = np.zeros(p)
            e[j] = 1e-4  # J only scales an O(1/n) term: its step's error matters less than rounding's
            J[:, :, j] = (L(r0 + e) - L(r0 - e)) / 2e-4
        root = _inverse_root(ar_information(self, phi))  # (v, p, p): root root' = cov(phi)
        clipped = ~(np.abs(reflection_coefficients(phi)) < MAX_REFLECTION - 1e-3).all(axis=1)  # L is flat there
        steps = np.empty((v, p, p))
        steps[clipped] = np.linalg.pinv(J[clipped]) @ root[clipped]
        try:
            steps[~clipped] = np.linalg.solve(J[~clipped], root[~clipped])
        except np.linalg.LinAlgError:  # singular without a clipped coefficient: to rounding, at a unit root
            steps[~clipped] = np.linalg.pinv(J[~clipped]) @ root[~clipped]
        base, bias = L(r0), np.zeros((v, p))
        for k in range(p):  # one call per step: Levinson's arrays for one block stay in cache
            step = h * steps[:, :, k]
            bias += (L(r0 + step) + L(r0 - step) - 2.0 * base) / (2.0 * h * h)
        return np.where(np.isfinite(bias), bias, 0.0)

    def _beyond_p(self, phi: NDArray, rho: NDArray) -> tuple[NDArray, NDArray]:
        """For the AR models (phi, rho): ``T_>p @ rho_>p`` (p+1, v), what their autocorrelations beyond lag p
        add to the expected residual products per unit variance, and Bartlett's sums ``S_k`` (p+1, v) =
        ``sum over all integers m of rho_m rho_m+k`` (rho_-m = rho_m, lags up to n-1).

        AR(1)'s are powers, summed in closed form (:meth:`_beyond_ar1`). For higher orders the autocorrelations
        at every lag are made first (:meth:`_model_lags`), then each sum is one product over all lags: a few
        whole-array operations instead of a dozen small ones per lag."""
        p = self.order
        a = rho.T  # (p+1, v): a_0 .. a_p
        if p == 1:
            tail, pairs = self._beyond_ar1(phi[:, 0])
        else:
            lags = self._model_lags(phi, a)  # a_1 .. a_L
            m = lags.shape[0] - p  # lags beyond p that count
            tail = self.beyond[:, :m] @ lags[p:]
            pairs = [np.einsum("jv,jv->v", lags[: lags.shape[0] - k], lags[k:]) for k in range(p + 1)]  # j >= 1
        S = np.empty((p + 1, phi.shape[0]))
        S[0] = 1.0 + 2.0 * pairs[0]
        for k in range(1, p + 1):
            S[k] = a[k] + 2.0 * pairs[k] + np.einsum("mv,mv->v", a[1 : k + 1], a[k - 1 :: -1][:k])
        return tail, S

    def _beyond_ar1(self, f: NDArray) -> tuple[NDArray, NDArray]:
        """:meth:`_beyond_p`'s tail and lag-pair sums ``sum_j rho_j rho_j+k`` (j = 1..n-1-k; k = 0, 1) for AR(1)
        models `f` (v,), whose autocorrelations are powers, ``rho_k = f^k``: the pair sums in closed form, the
        tail (a polynomial of degree n - 1 in f) from :meth:`_ar1_tail_table` (or, for f off the table, from
        the powers themselves: :meth:`_ar1_tail_by_powers`)."""
        L = self.beyond.shape[1] + 1  # the last lag, n - 1
        coef = self._ar1_tail_table()
        x = _table_position(f)
        inside = (x >= 0.0) & (x < AR1_TABLE_NODES - 1)  # False for NaN
        x = np.where(inside, x, 0.0)
        i = x.astype(np.intp)
        s = x - i
        tail = np.empty((2, f.size))
        for row, c in zip(tail, coef):  # Horner on the interval's cubic, every array 1-D and contiguous
            np.multiply(c[3].take(i), s, out=row)
            for k in (2, 1, 0):
                row += c[k].take(i)
                if k:
                    row *= s
        if not inside.all():
            off = np.flatnonzero(~inside)
            tail[:, off] = self._ar1_tail_by_powers(f[off])
        # sum_j=1..L-k f^(2j+k) = f^(k+2) (1 - f^(2(L-k))) / (1 - f^2)
        f2 = f * f
        with np.errstate(invalid="ignore", divide="ignore"):  # |f| <= MAX_REFLECTION: 1 - f^2 > 0
            end = np.exp((L - 1) * np.log(f2))  # f^(2(L-1)), several times faster than a power
            pairs = [f2 * (1.0 - end * f2) / (1.0 - f2), f * f2 * (1.0 - end) / (1.0 - f2)]
        return tail, pairs

    def _ar1_tail_table(self) -> NDArray:
        """The AR(1) tail ``T(f) = beyond @ (f^2 .. f^(n-1))`` (p+1 = 2 rows) as a cubic Hermite interpolant
        in u = atanh(f) between the AR1_TABLE_NODES nodes of :func:`_table_position`, from T and dT/du at the
        nodes: ``coef[row, k, i]`` the coefficient of s^k on interval i (s in [0, 1)). Absolute error
        below 1e-11 of T's largest value (tested). Made on first use, once per design."""
        with _TABLE_LOCK:
            if self._tail_table is None:
                step = AR1_TABLE_STEP
                f = np.tanh(-AR1_TABLE_SPAN + step * np.arange(AR1_TABLE_NODES))
                lags = np.arange(2, self.beyond.shape[1] + 2)
                y, m = np.empty((2, f.size)), np.empty((2, f.size))  # T and step dT/du at the nodes
                width = max(16, (1 << 15) // lags.size)  # nodes at a time: (n - 2, width) powers in 256 KiB, in cache
                for a in range(0, f.size, width):
                    fa = f[a : a + width]
                    with np.errstate(divide="ignore", invalid="ignore"):  # (f = 0 at the middle node)
                        log_power = np.outer(lags - 1.0, np.log(np.abs(fa)))
                    log_power[log_power < -650.0] = -np.inf  # 0, not subnormals (100x slower to multiply)
                    below = np.exp(log_power)  # |f|^(j-1), j = 2 .. n-1, then its sign
                    below[::2, fa < 0] *= -1.0  # odd powers
                    y[:, a : a + width] = self.beyond @ (below * fa)
                    m[:, a : a + width] = (self.beyond * lags) @ below * (step * (1.0 - fa * fa))
                y0, y1, m0, m1 = y[:, :-1], y[:, 1:], m[:, :-1], m[:, 1:]
                coef = np.stack([y0, m0, 3.0 * (y1 - y0) - 2.0 * m0 - m1, 2.0 * (y0 - y1) + m0 + m1], axis=1)
                self._tail_table = np.ascontiguousarray(coef)
        return self._tail_table

    def _ar1_tail_by_powers(self, f: NDArray) -> NDArray:
        """The tail of :meth:`_beyond_ar1` from the powers of f, made by doubling (a few products over the
        whole table instead of one per lag) up to the lag at which every |f|^k is below 1e-20 (later terms are
        below rounding)."""
        n_beyond = self.beyond.shape[1]  # lags 2 .. n-1
        top = np.max(np.abs(f), initial=0.0, where=np.isfinite(f))
        m = n_beyond if top >= 1.0 else min(n_beyond, int(np.log(1e-20) / np.log(max(top, 1e-20))) + 1)
        powers = np.empty((m, f.size))  # f^2 .. f^(m+1); m >= 1
        powers[0] = f * f
        step, f_step = 1, f.copy()  # f_step = f^step
        while step < m:
            count = min(step, m - step)
            np.multiply(powers[:count], f_step, out=powers[step : step + count])
            step, f_step = step + count, f_step * f_step if count == step else f_step
        return self.beyond[:, :m] @ powers

    def _model_lags(self, phi: NDArray, a: NDArray) -> NDArray:
        """(L, v): the models' autocorrelations at lags 1..L, from `a` (p+1, v) at lags 0..p and the recursion
        ``rho_k = sum_j phi_j rho_k-j`` beyond; up to lag n-1, or to the first lag p + 16 i at which the last p
        are all below 1e-20 (every later term is below rounding; voxels with NaN, left out later, do not
        count). For p >= 2 (AR(1)'s are powers: :meth:`_beyond_ar1`)."""
        p, v = phi.shape[1], phi.shape[0]
        n_beyond = self.beyond.shape[1]
        out = np.empty((p + n_beyond, v))
        out[:p] = a[1:]
        phi_t = np.ascontiguousarray(phi.T[::-1])  # phi_t[p - j] = phi_j, against rows k-p .. k-1
        for start in range(0, n_beyond, 16):
            if not (np.abs(out[start : start + p]) > 1e-20).any():
                return out[: p + start]
            for k in range(p + start, p + min(start + 16, n_beyond)):  # row k: lag k + 1
                out[k] = np.einsum("jv,jv->v", phi_t, out[k - p : k])
        return out


def _band_and_corners(phi: NDArray) -> tuple[NDArray, NDArray]:
    """For each voxel: alpha (v, p+1) of the band of W'W, and the correction C (v, p, p) of its corners.

    ``W'W = sum_k alpha_k S_k + C in the top-left corner (rows 0..p-1) + C in the bottom-right corner (rows
    n-1, n-2, ..)``: the inverse of a stationary covariance is persymmetric, so both corners take the same
    correction. The bottom one is the band's rows past the end, ``C_uw = -sum_s a_{1+u+s} a_{1+w+s}`` (filter
    taps a = (1, -phi), 0 beyond p): exact from phi, with no inverse of the p x p covariance (which is as
    ill-conditioned as the model is close to a unit root). Each diagonal of C is a cumulative sum from its end,
    ``C_uw = -a_{1+u} a_{1+w} + C_{u+1,w+1}``: p vectorised steps; and ``alpha_k = a_k - C_0k`` (k < p),
    ``alpha_p = a_p``."""
    v, p = phi.shape
    taps = -phi.T  # (p, v): a_1 .. a_p
    C = np.empty((p, p, v))
    for u in range(p - 1, -1, -1):  # row u, columns w >= u, from row u + 1
        row = C[u, u:]
        np.multiply(-taps[u], taps[u:], out=row)
        if u < p - 1:
            row[:-1] += C[u + 1, u + 1 :]
    iu = np.triu_indices(p, 1)
    C[iu[1], iu[0]] = C[iu]
    alpha = np.empty((v, p + 1))
    alpha[:, 0] = 1.0 - C[0, 0]
    alpha[:, 1:p] = (taps[: p - 1] - C[0, 1:]).T
    alpha[:, p] = taps[p - 1]
    return alpha, C.transpose(2, 0, 1)


def _cholesky(A: NDArray) -> NDArray:
    """Batched over the last axis: the lower Cholesky factor of each A (r, r, v) symmetric positive definite (its
    lower triangle is read, and overwritten by the factor); NaN for a voxel whose A is not positive definite.
    Vectorised over voxels (r is small): several times faster than LAPACK per voxel."""
    r = A.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(r):
            d = A[j, j] - np.einsum("kv,kv->v", A[j, :j], A[j, :j])
            A[j, j] = np.sqrt(np.where(d > 0, d, np.nan))
            A[j + 1 :, j] = (A[j + 1 :, j] - np.einsum("ikv,kv->iv", A[j + 1 :, :j], A[j, :j])) / A[j, j]
    return A


def _forward(L: NDArray, B: NDArray) -> NDArray:
    """``L^-1 B`` (r, k, v) for lower triangular L (r, r, v) (lower triangle read) and B (r, k, v), or (r, k, 1)
    the same for every voxel: forward substitution vectorised over voxels."""
    r, v = L.shape[0], L.shape[2]
    Z = np.empty(B.shape[:2] + (v,))
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(r):
            Z[i] = (B[i] - np.einsum("kv,kqv->qv", L[i, :i], Z[:i])) / L[i, i]
    return Z


def _factored_solve(L: NDArray, B: NDArray) -> NDArray:
    """``(L L')^-1 B`` for lower Cholesky factors L (r, r, v) and B (r, k, v): forward substitution, then back
    substitution (by L', read from L's lower triangle), vectorised over voxels."""
    r = L.shape[0]
    Z = _forward(L, B)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.empty_like(Z)
        for i in range(r - 1, -1, -1):
            X[i] = (Z[i] - np.einsum("kv,kqv->qv", L[i + 1 :, i], X[i + 1 :])) / L[i, i]
    return X


def _cholesky_solve(A: NDArray, B: NDArray) -> NDArray:
    """Batched over the last axis: A (r, r, v) symmetric positive definite, B (r, k, v). Returns ``A^-1 B``
    by Cholesky factorisation (A's lower triangle is overwritten by the factor); NaN for a voxel whose A is
    not positive definite."""
    return _factored_solve(_cholesky(A), B)


def _solve_ar1(block: ARBlock, alpha: NDArray, corner: NDArray, B: NDArray) -> NDArray:
    """``gram^-1 B`` (B (r, k, v), its columns after the first the same for every voxel) for AR(1),
    gram = U (alpha_0 + alpha_1 eig) U' + E C E' (E the first and last rows of Q, C their corner weight
    `corner` (v,) twice), by the Woodbury identity in U's basis: O(r) per voxel instead of O(r^3)."""
    r, k, v = B.shape
    d_inv = 1.0 / (alpha[:, 0] + np.multiply.outer(block.eig, alpha[:, 1]))  # (r, v)
    C = np.stack([corner, corner])  # (2, v)
    E = block.edges  # (r, 2)
    Bu = np.empty((r, k, v))  # D^-1 U'B; columns 1.. (the contrasts) are the same for every voxel
    Bu[:, 0] = block.U.T @ B[:, 0]
    Bu[:, 1:] = (block.U.T @ B[:, 1:, 0])[:, :, None]
    Bu *= d_inv[:, None, :]
    EDE = ((E[:, :, None] * E[:, None, :]).reshape(r, 4).T @ d_inv).reshape(2, 2, v)  # E'D^-1E
    M = np.eye(2)[:, :, None] + EDE * C[None, :, :]  # I + E'D^-1E C
    det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
    t = (E.T @ Bu.reshape(r, -1)).reshape(2, k, v)  # E'D^-1U'B
    s = np.stack([C[0] * (M[1, 1] * t[0] - M[0, 1] * t[1]) / det, C[1] * (M[0, 0] * t[1] - M[1, 0] * t[0]) / det])
    Bu -= (E @ s.reshape(2, -1)).reshape(r, k, v) * d_inv[:, None, :]
    return (block.U @ Bu.reshape(r, -1)).reshape(r, k, v)


def model_autocorrelations(phi: NDArray) -> tuple[NDArray, NDArray]:
    """The autocorrelations (v, p+1) and variance (v,) (unit innovations) of AR models phi (v, p)."""
    v, p = phi.shape
    A = np.broadcast_to(np.eye(p + 1), (v, p + 1, p + 1)).copy()
    for k in range(p + 1):
        for i in range(1, p + 1):
            A[:, k, abs(k - i)] -= phi[:, i - 1]
    e0 = np.eye(p + 1)[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        try:
            g = np.linalg.solve(A, np.broadcast_to(e0[:, None], (v, p + 1, 1)))[:, :, 0]
        except np.linalg.LinAlgError:  # a model on a unit root (singular): NaN for it, the others solved
            g = np.array([_solve_or_nan(a, e0) for a in A]).reshape(v, p + 1)
        return g / g[:, :1], g[:, 0]


def _solve_or_nan(A: NDArray, b: NDArray) -> NDArray:
    """``A^-1 b``, or NaN where A is singular."""
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        return np.full(b.shape, np.nan)


def reflection_coefficients(phi: NDArray) -> NDArray:
    """(v, p): the reflection coefficients k_1 .. k_p of AR models phi (v, p), by Levinson's step-down (the
    inverse of :func:`_levinson`'s step-up): ``k_m = phi^(m)_m`` and ``phi^(m-1)_j = (phi^(m)_j + k_m
    phi^(m)_(m-j)) / (1 - k_m^2)``. O(p^2) per model; not finite after a ``|k_m| = 1``."""
    p = phi.shape[1]
    k = np.empty_like(phi)
    a = np.array(phi, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for m in range(p, 0, -1):
            k[:, m - 1] = a[:, m - 1]
            if m > 1:
                km = k[:, m - 1 : m]
                a[:, : m - 1] = (a[:, : m - 1] + km * a[:, m - 2 :: -1]) / (1.0 - km * km)
    return k


def _regular(phi: NDArray) -> NDArray:
    """(v,) whether each AR model phi (v, p) is stationary and away from its edge: every reflection coefficient
    inside (-1, 1) (Schur-Cohn: the covariance of p consecutive values is positive definite) and that covariance's
    smallest eigenvalue above 1e-12 of its largest (below, it is singular to rounding). False where phi is not
    finite.

    The eigenvalues are needed only for the few models near a unit root: those of the correlation matrix R of p
    consecutive values lie between the extremes of the spectrum ``1 / (gamma0 |A(w)|^2)``, so its smallest is at
    least ``prod(1 - k_j^2) / (1 + sum |phi_j|)^2`` and its largest at most ``trace R = p``."""
    k = reflection_coefficients(phi)
    ok = (np.abs(k) < 1.0).all(axis=1)
    p = phi.shape[1]
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.prod(1.0 - k * k, axis=1) / ((1.0 + np.abs(phi).sum(axis=1)) ** 2 * p)
    near = np.flatnonzero(ok & ~(bound > 1e-10))
    if near.size:
        rho, gamma0 = model_autocorrelations(phi[near])
        cov = rho[:, np.abs(np.arange(p)[:, None] - np.arange(p)[None, :])] * gamma0[:, None, None]
        with np.errstate(invalid="ignore"):
            eig = np.linalg.eigvalsh(np.where(np.isfinite(cov), cov, 0.0))
        ok[near] = (eig[:, 0] > 1e-12 * eig[:, -1]) & np.isfinite(cov).all(axis=(1, 2))
    return ok


def _inverse_root(info: NDArray) -> NDArray:
    """(v, p, p): S with ``S S'`` the pseudo-inverse of each symmetric `info` (v, p, p): ``R^-T`` for its Cholesky
    factor R; where it is not positive definite or is near singular (a pivot below 1e-6 of the largest diagonal
    entry's root: a condition number that may pass 1e12), ``axes / sqrt(lam)`` over its eigenvalues above 1e-15 of
    the largest, as ``np.linalg.pinv``'s; NaN where not finite."""
    v, p, _ = info.shape
    R = _cholesky(np.array(info.transpose(1, 2, 0)))
    root = _forward(R, np.eye(p)[:, :, None]).transpose(2, 1, 0)  # (R^-1)' per voxel
    with np.errstate(invalid="ignore"):
        pivots = np.diagonal(R)  # (v, p)
        steady = pivots.min(axis=1) > 1e-6 * np.sqrt(np.diagonal(info, axis1=1, axis2=2).max(axis=1))
    bad = ~(steady & np.isfinite(root).all(axis=(1, 2)))
    if bad.any():
        finite = np.isfinite(info[bad]).all(axis=(1, 2))
        lam, axes = np.linalg.eigh(np.where(finite[:, None, None], info[bad], 0.0))
        keep = lam > 1e-15 * np.abs(lam).max(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            root[bad] = axes * np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)[:, None, :]
        root[np.flatnonzero(bad)[~finite]] = np.nan
    return root


def _gram_coefs(phi: NDArray) -> NDArray:
    """(v, p+1+p(p+1)/2): the weights of ``block.lower_terms`` that make ``Q'W'WQ`` for AR models phi (v, p): the
    band's alpha, then the corner correction's upper triangle (row by row); NaN for a model that is not stationary
    or at its edge (:func:`_regular`)."""
    alpha, corner = _band_and_corners(phi)
    iu = np.triu_indices(phi.shape[1])
    coefs = np.concatenate([alpha, corner[:, iu[0], iu[1]]], axis=1)
    coefs[~_regular(phi)] = np.nan
    return coefs


def _lower_grams(block: ARBlock, coefs: NDArray) -> NDArray:
    """(r, r, v): the lower triangles of ``Q'W'WQ`` for the weights `coefs` (v, T) of :func:`_gram_coefs`, one
    matrix product; the upper triangles are zero (the Cholesky factorisations read the lower ones only)."""
    r, v = block.design.rank, coefs.shape[0]
    il = np.tril_indices(r)
    grams = np.zeros((r, r, v))
    grams[il] = block.lower_terms.T @ coefs.T
    return grams


def ar_information(block: ARBlock, phi: NDArray) -> NDArray:
    """(v, p, p) Fisher information about phi in the OLS residuals, in Whittle's frequency-domain form:
    ``I_jk = 1/2 sum_w s(w) d_j(w) d_k(w)`` over the Fourier frequencies w, ``d_j = d log f / d phi_j =
    2 Re(e^{ijw} conj(A(w))) / |A(w)|^2`` (A the AR polynomial), ``s(w)`` the share of frequency w that the
    design leaves to the residuals. Without a design it is n times Yule-Walker's ``Gamma_p`` (unit
    innovations). A smooth design removes the low frequencies, where an AR(1) of 0.5 says most about phi: with
    8 such columns over 200 scans its estimate varies 25% more than Yule-Walker's (1 - phi^2) / n says.

    With taps a = (1, -phi), ``Re(e^{ijw} conj(A)) = sum_l a_l cos((j-l)w)``: linear in the taps, so all of
    them are one matrix product with a table of cosines, and ``|A|^2`` another."""
    v, p = phi.shape
    f = block.freqs.size
    info = np.empty((v, p, p))
    chunk = max(1, (1 << 20) // max(1, (p + 2) * f))  # voxels at a time: work arrays of ~8 MiB
    for a in range(0, v, chunk):
        part = slice(a, a + chunk)
        R, A2 = _spectrum_parts(block, phi[part])
        Rg = R * (block.information_weights[:, None] / (A2 * A2))
        for j in range(p):
            for k in range(j + 1):
                info[part, j, k] = info[part, k, j] = np.einsum("fv,fv->v", Rg[j], R[k])
    return info


def _spectrum_parts(block: ARBlock, phi: NDArray) -> tuple[NDArray, NDArray]:
    """For AR models phi (v, p), voxels last: ``Re(e^{ijw} conj(A(w)))`` (p, f, v) for j = 1..p, which is
    ``|A|^2 d_j / 2`` (``d_j = d log f / d phi_j``), and ``|A(w)|^2`` (f, v) from A's real and imaginary parts (no
    cancellation), at the block's frequencies: linear in the taps a = (1, -phi), so one product with the block's
    table of cosines."""
    v, p = phi.shape
    taps = np.concatenate([np.ones((v, 1)), -phi], axis=1)  # (v, p+1)
    R = (block.tap_cosines @ taps.T).reshape(p + 2, block.freqs.size, v)  # then Re(A), Im(A)
    return R[:p], R[p] ** 2 + R[p + 1] ** 2


def efficiency_loss(block: ARBlock, phi: NDArray, phi_cov: NDArray, factor: NDArray, U: NDArray) -> NDArray:
    """(v, q, q): Kackar and Harville's extra covariance of ``wq beta_hat`` from whitening with phi_hat instead of
    phi, per unit innovation variance: ``U' (Q_jk - P_j gram^-1 P_k) U`` weighted by cov(phi)_jk, with ``U =
    gram^-1 wq'`` (r, q, v), ``P_j = Q' dV^-1/dphi_j Q`` and ``Q_jk = Q' dV^-1/dphi_j V dV^-1/dphi_k Q`` in
    Whittle's frequency-domain form (``dV^-1/dphi_j ~ -d_j / f``, ``1/f = |A|^2``; see :func:`ar_information`),
    gram^-1 exactly (`factor`: the Cholesky factors (r, r, v) of the Gram matrices at phi). The variance of an
    event design's contrast is 1-3% more than GLS's for AR(1) or AR(2) noise of 0.4 over 200 scans.

    The weighted sum over (j, k) is taken inside the sums over frequencies: ``sum_jk cov_jk d_j(w) d_k(w)`` is one
    number per frequency, and ``sum_jk cov_jk (P_j U)' gram^-1 P_k U`` one solve with the p q columns ``P_j U``."""
    r, q, v = U.shape
    p, f = phi.shape[1], block.freqs.size
    step = max(1, (1 << 20) // ((3 * p + 2 * q + 2 * p * q) * f + 3 * p * q * r))  # voxels: arrays of ~8 MiB
    loss = np.empty((v, q, q))
    for a in range(0, v, step):
        part = slice(a, a + step)
        loss[part] = _efficiency_loss_part(block, phi[part], phi_cov[part], factor[:, :, part], U[:, :, part])
    return np.where(np.isfinite(loss), loss, 0.0)


def _efficiency_loss_part(block: ARBlock, phi: NDArray, phi_cov: NDArray, factor: NDArray, U: NDArray) -> NDArray:
    """:func:`efficiency_loss` for a few voxels, with the Cholesky factors (r, r, v) of their Gram matrices."""
    r, q, v = U.shape
    p = phi.shape[1]
    qf = block.basis_fft  # (f, r): Fourier transforms of the basis's columns
    R, A2 = _spectrum_parts(block, phi)  # (p, f, v), (f, v)
    d = (2.0 * R / A2).transpose(2, 0, 1)  # d_j(w), (v, p, f)
    dw = 2.0 * R.transpose(2, 0, 1) * (block.freq_weights / block.design.n_scans)  # d_j |A|^2 c / n, (v, p, f)
    Uv = U.transpose(2, 1, 0).reshape(v * q, r)
    zu_re = (Uv @ qf.real.T).reshape(v, q, -1)  # Fourier transforms of Q u, (v, q, f)
    zu_im = (Uv @ qf.imag.T).reshape(v, q, -1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        weight = np.einsum("vjf,vjf->vf", np.matmul(phi_cov, d), dw)  # sum_jk cov_jk |A|^2 d_j d_k c / n
        quad = np.matmul(zu_re * weight[:, None, :], zu_re.transpose(0, 2, 1))  # sum_w weight Re(conj(z_a) z_b)
        quad += np.matmul(zu_im * weight[:, None, :], zu_im.transpose(0, 2, 1))
        proj = -(  # P_j u_a, (v, p, q, r): Re(sum_w dw_j z_a conj(qf)) in real arithmetic
            (dw[:, :, None, :] * zu_re[:, None, :, :]).reshape(v * p * q, -1) @ qf.real
            + (dw[:, :, None, :] * zu_im[:, None, :, :]).reshape(v * p * q, -1) @ qf.imag
        ).reshape(v, p, q, r)
        solved = _factored_solve(factor, np.ascontiguousarray(proj.reshape(v, p * q, r).transpose(2, 1, 0)))
        weighted = np.matmul(phi_cov, solved.transpose(2, 1, 0).reshape(v, p, q * r)).reshape(v, p, q, r)
        return quad - np.einsum("vjar,vjbr->vab", proj, weighted)


def estimation_terms(block: ARBlock, phi: NDArray, B: NDArray, sizes: list[int]):
    """What estimating phi does to each contrast's variance: ``(scale, dof, kappa, lambda)`` per contrast, each
    (v,): the GLS covariance is multiplied by ``scale = (1 + lambda) / (1 + kappa) nu / (nu - p)`` and has `dof`
    degrees of freedom.

    A contrast's variance is ``sigma^2 C(phi)`` with ``C = wq gram^-1 wq'`` (wq: `sizes` rows of the shared
    right-hand sides ``B = wq'`` (r, sum(sizes), v)), estimated at phi_hat, whose covariance ``cov(phi)`` is
    the inverse of :func:`ar_information`. ``C(phi_hat)`` varies and is biased, to first and second order, by

    * ``var(log C) = g' cov(phi) g``, ``g_j = tr(C^-1 dC/dphi_j) / q`` (for t, d log C / dphi_j; q: the rank of
      the contrast's rows, C^-1 the pseudo-inverse where they are redundant);
    * ``kappa = E[C(phi_hat)] / C(phi) - 1 = sum_jk cov_jk tr(C^-1 d2C/dphi_j dphi_k) / (2 q)``: C is convex in
      phi (2.5% for an AR(1) of 0.5 and a block design over 200 scans), so the variance is divided by
      ``1 + kappa``;
    * ``lambda = tr(C^-1 Lambda) / q``, Kackar and Harville's extra variance of the estimate itself from the
      weights' error (:func:`efficiency_loss`), which the covariance should include;

    * ``nu / (nu - p)`` (nu = n - rank): the whitened RSS, divided by nu into sigma^2, is short of ``nu sigma^2``
      by ``p sigma^2``, because phi_hat is fitted to the same residuals and whitens them best (as a regression's
      RSS is short by its columns; measured: ``E[RSS_w] / (nu sigma^2) = 0.9865`` for an AR(4) over 300 scans of
      white noise, ``(nu - p) / nu = 0.9864``). Without it every per-voxel AR model understates the variance by
      p / nu, about 1.4% at the default order (p = n // 70), and is 3% liberal at p < 0.05;

    and Satterthwaite's degrees of freedom match ``var(log sigma^2 C) = 2 / (nu - p) + g' cov g`` to a scaled
    chi-square's ``2 / dof``: about 44 instead of 192 for that AR(1), where the AR estimate is most of the
    uncertainty. The derivatives are exact (:func:`_gram_derivatives`). A kappa outside (-0.5, 1), a
    variance more than doubled or halved by a second-order term, says that the expansion does not hold (a model at
    the edge of the stationary ones, cov(phi) reaching past it): it is held at those bounds.
    """
    return _estimation_terms(block, phi, B, sizes)[0]


def _phi_covariance(info: NDArray) -> NDArray:
    """cov(phi) (v, p, p), the inverse of the information `info` (v, p, p) (its pseudo-inverse where it is not
    positive definite; see :func:`_inverse_root`)."""
    root = _inverse_root(info)
    return np.matmul(root, np.swapaxes(root, 1, 2))


@functools.cache
def _tap_indices(p: int) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Indices into the taps ``a = (1, -phi_1, .., -phi_p, 0)`` (index p + 1 reads the 0) for
    :func:`_gram_derivatives`: ``dalpha_k/dphi_m = -(a_{m+k} + a_{m-k})`` (two (p+1, p) index arrays, k by m) and
    ``dC_uw/dphi_m = a_{w+m-u} [u < m] + a_{u+m-w} [w < m]`` (two (p, p, p) index arrays, m by u by w), every
    index outside 0..p reading the 0."""
    zero = p + 1
    k, m = np.arange(p + 1)[:, None], np.arange(1, p + 1)[None, :]
    band = [np.where(i <= p, i, zero) for i in (m + k, m - k)]
    band[1] = np.where(m - k >= 0, band[1], zero)
    m, u, w = (np.arange(p)[:, None, None] + 1, np.arange(p)[None, :, None], np.arange(p)[None, None, :])
    first = np.where((u < m) & (w + m - u <= p), w + m - u, zero)
    second = np.where((w < m) & (u + m - w <= p), u + m - w, zero)
    return band[0], band[1], first, second


def _gram_derivatives(phi: NDArray) -> tuple[NDArray, NDArray]:
    """The derivatives of the Gram weights of :func:`_band_and_corners` in phi (v, p), voxels last: ``dalpha``
    (p+1, p, v), ``dalpha_k / dphi_m`` as ``dalpha[k, m - 1]``, and ``dC`` (p, p, p, v), ``dC_uw / dphi_m`` as
    ``dC[m - 1, u, w]``. The weights are quadratic in the taps a = (1, -phi): ``alpha_k = sum_j a_j a_{j+k}``,
    ``C_uw = -sum_s a_{1+u+s} a_{1+w+s}``. Each entry is a copy of a row of taps (all voxels at once)."""
    v, p = phi.shape
    a = np.zeros((p + 2, v))
    a[0], a[1 : p + 1] = 1.0, -phi.T
    b1, b2, c1, c2 = _tap_indices(p)
    return -(a[b1] + a[b2]), a[c1] + a[c2]


def _second_derivative_weights(phi_cov: NDArray) -> tuple[NDArray, NDArray]:
    """``sum_jk cov_jk d2(weight)/dphi_j dphi_k`` for the Gram weights (constant: they are quadratic in phi):
    (v, p+1) for alpha, ``2 sum_m cov_{m, m+k}``, and (v, p, p) for the corner correction, ``-2 sum_s cov_{u+s,
    w+s}`` (a cumulative sum along each diagonal from its end, as :func:`_band_and_corners`)."""
    v, p, _ = phi_cov.shape
    w_alpha = np.zeros((v, p + 1))
    for k in range(p):
        w_alpha[:, k] = 2.0 * np.trace(phi_cov, offset=k, axis1=1, axis2=2)
    W = np.array(phi_cov)
    for u in range(p - 2, -1, -1):
        W[:, u, : p - 1] += W[:, u + 1, 1:]
    return w_alpha, -2.0 * W


def _estimation_terms(block: ARBlock, phi: NDArray, B: NDArray, sizes: list[int]):
    """:func:`estimation_terms`, and a mask (v,) of the voxels whose terms are all finite (stationary models with a
    positive definite Gram matrix and a nonsingular information about phi) and whose kappa is within its bounds.

    With ``U = gram^-1 B`` and ``F_m = (d gram / dphi_m) U``: ``dC/dphi_m = -U' F_m``, and ``sum_jk cov_jk
    d2C/dphi_j dphi_k = 2 sum_jk cov_jk F_j' gram^-1 F_k - U' (sum_jk cov_jk d2 gram/dphi_j dphi_k) U``. The Gram
    matrix is ``sum_k alpha_k G_k`` plus the corner correction on the first and last p rows of Q (see
    :class:`ARBlock`), so ``F_m`` comes from ``G_k U`` and those rows' ``U``, never from a Gram matrix per
    derivative."""
    v, p = phi.shape
    r, n_cols = B.shape[0], B.shape[1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        phi_cov = _phi_covariance(ar_information(block, phi))
        factor = _cholesky(_lower_grams(block, _gram_coefs(phi)))
        U = _factored_solve(factor, np.array(B, dtype=np.float64))  # (r, Q, v)
        flat = U.reshape(r, -1)
        GU = np.matmul(block.G, flat).reshape(p + 1, r, n_cols, v)
        tU = (block.top @ flat).reshape(p, n_cols, v)  # the first and last p rows of Q U
        bU = (block.bottom @ flat).reshape(p, n_cols, v)
        dalpha, dC = _gram_derivatives(phi)
        F = np.einsum("kmv,krqv->rmqv", dalpha, GU)  # (r, p, Q, v)
        for rows, RU in ((block.top, tU), (block.bottom, bU)):
            corner = np.einsum("muwv,wqv->umqv", dC, RU)
            F += (rows.T @ corner.reshape(p, -1)).reshape(r, p, n_cols, v)
        w_alpha, w_C = _second_derivative_weights(phi_cov)
        UGU = np.einsum("raV,krbV->kVab", U, GU)  # (p+1, v, Q, Q)
        curvature = np.einsum("Vk,kVab->Vab", w_alpha, UGU)
        for RU in (tU, bU):
            curvature += np.einsum("uaV,Vuw,wbV->Vab", RU, w_C, RU)
        Z = _forward(factor, F.reshape(r, p * n_cols, v)).reshape(r, p, n_cols, v)
        Zv = np.ascontiguousarray(Z.transpose(3, 1, 0, 2)).reshape(v, p, r * n_cols)  # (v, p, r Q)
        Zc = np.matmul(phi_cov, Zv).reshape(v, p * r, n_cols)
        H = 2.0 * np.matmul(Zv.reshape(v, p * r, n_cols).transpose(0, 2, 1), Zc) - curvature  # sum_jk cov_jk C_jk''
        dCs = -np.einsum("raV,rmbV->Vmab", U, F)  # (v, p, Q, Q)
        C = np.einsum("raV,rbV->Vab", np.asarray(B, dtype=np.float64), U)
        loss = efficiency_loss(block, phi, phi_cov, factor, U)  # every contrast at once
        regular = np.isfinite(phi_cov).all(axis=(1, 2))  # (models _regular refuses: NaN Gram weights, NaN terms)
        out, a = [], 0
        for q in sizes:
            cols = slice(a, a + q)
            a += q
            Ci = C[:, cols, cols]
            C_inv = 1.0 / Ci if q == 1 else np.linalg.pinv(Ci, hermitian=True)
            # (each trace over C^-1 is the contrast's row space's, as for its full-rank rows: divided by that rank,
            # not by q, an F of redundant rows is its hypothesis's, and F of a row twice the t's square; the rank is
            # C's as its pseudo-inverse keeps it, trace(C^+ C), the F's own df1: contrast.f_stats)
            kept = np.rint(np.einsum("Vab,Vba->V", C_inv, Ci)) if q > 1 else np.ones(v)
            rank = np.where(np.isfinite(kept) & (kept >= 1), kept, q)
            g = np.einsum("Vab,Vmba->Vm", C_inv, dCs[:, :, cols, cols]) / rank[:, None]
            spread = np.einsum("Vm,Vml,Vl->V", g, phi_cov, g)
            kappa = np.einsum("Vab,Vba->V", C_inv, H[:, cols, cols]) / (2.0 * rank)
            lam_ = np.einsum("Vab,Vba->V", C_inv, loss[:, cols, cols]) / rank
            # a curvature term that would more than double or halve the variance says that the expansion does not
            # hold (a model at the stationary models' edge, where cov(phi) reaches past it): it is held at those
            steady = (kappa > -0.5) & (kappa < 1.0)
            # Kackar and Harville's term is an extra variance (lambda >= 0): one below zero is the expansion failing
            # too (few dof, cov(phi) large: a run of 30 scans and 24 confounds had variances down to -29), held at 0
            regular &= np.isfinite(spread) & steady & np.isfinite(lam_) & (lam_ > -1e-6)
            kappa = np.where(np.isfinite(kappa), np.clip(kappa, -0.5, 1.0), 0.0)
            spread, lam_ = (np.where(np.isfinite(x), x, 0.0) for x in (spread, np.maximum(lam_, 0.0)))
            scale = (1.0 + lam_) / (1.0 + kappa) * block.nu / (block.nu - p)
            dof = 2.0 / (2.0 / (block.nu - p) + spread)
            if q > 1:  # an F: Kenward and Roger's dof and scale, from each row's uncertainty, not their mean's
                M = np.einsum("Vab,Vmbc->Vmac", C_inv, dCs[:, :, cols, cols])  # C^-1 dC/dphi_m
                across = np.einsum("Vjk,Vjab,Vkba->V", phi_cov, M, M)
                m, shrink = _ar_f_reference(rank, rank * rank * spread, across, block.nu - p)
                several = rank > 1  # (an F of one independent row is its t's square, on the t's dof)
                dof, scale = np.where(several, m, dof), np.where(several, scale / shrink, scale)
            out.append((scale, dof, kappa, lam_))
    return out, regular


def _ar_f_reference(q: NDArray, a1: NDArray, a2: NDArray, nu: float) -> tuple[NDArray, NDArray]:
    """The denominator dof ``m`` and scale ``lambda`` of an AR(p) F of `q` (v,) independent rows, whose covariance
    ``sigma^2 C(phi)`` is estimated with ``sigma^2`` on `nu` dof and phi of covariance cov(phi): Kenward and
    Roger's (:func:`voxfit.core.distributions.kenward_roger_reference`) from `a1` = ``sum_jk cov_jk tr(C^-1 dC_j)
    tr(C^-1 dC_k)`` and `a2` = ``sum_jk cov_jk tr(C^-1 dC_j C^-1 dC_k)`` (phi's terms; sigma^2's, ``2 q^2 / nu``
    and ``2 q / nu``, are added here: sigma^2 and phi_hat are independent to first order). F is multiplied by
    ``lambda`` (the caller divides the covariance by it). The Satterthwaite dof of the rows' mean trace,
    ``2 q^2 / A1``, counts only `a1`: rows whose variances move apart as phi moves cancel in it, and an F of an
    FIR response's 8 delays over 150 scans was 0.055-0.059 at p < 0.05 on null data.

    Kenward and Roger's expansion fails as its ``reach`` nears 1 (few dof, phi uncertain: AR(1) 0.8 over 60
    scans; sigma^2 alone on nu < 6): from reach 0.5 to 0.9 m and lambda pass smoothly to that Satterthwaite dof
    and no scale (smootherstep: the AR(1) fits interpolate them in phi), which hold beyond, as before. With phi
    known (a1 = a2 = 0) both give F(q, nu), exactly."""
    return kenward_roger_or_satterthwaite(q, 2.0 * q * q / nu + a1, 2.0 * q / nu + a2)


class _AR1Table:
    """The table of :func:`ar1_estimation_terms` for one design and contrasts, its nodes computed in chunks of
    AR1_TABLE_CHUNK as voxels need them (a run's AR(1) estimates span a fifth of the table or so; each node's
    numbers are the same whichever others are computed with it)."""

    def __init__(self, n_contrasts: int):
        self.values = np.full((AR1_TABLE_NODES, 2 * n_contrasts), np.nan)
        self.regular = np.zeros(AR1_TABLE_NODES, dtype=bool)
        self.done = np.zeros(-(-AR1_TABLE_NODES // AR1_TABLE_CHUNK), dtype=bool)

    def fill(self, block: ARBlock, B0: NDArray, sizes: list[int], i: NDArray) -> None:
        """Compute the chunks holding nodes i - 1 .. i + 2 that are not computed yet."""
        wanted = np.zeros(self.done.size, dtype=bool)
        for d in (-1, 0, 1, 2):
            wanted[(i + d) // AR1_TABLE_CHUNK] = True
        chunks = np.flatnonzero(wanted & ~self.done)
        if not chunks.size:
            return
        nodes = (chunks[:, None] * AR1_TABLE_CHUNK + np.arange(AR1_TABLE_CHUNK)).ravel()
        nodes = nodes[nodes < AR1_TABLE_NODES]
        u = -AR1_TABLE_SPAN + nodes * AR1_TABLE_STEP
        B = np.repeat(B0[:, :, None], u.size, axis=2)
        grid, regular = _estimation_terms(block, np.tanh(u)[:, None], B, sizes)
        self.values[nodes] = np.stack([x for scale, dof, _, _ in grid for x in (scale, dof)], axis=1)
        self.regular[nodes] = regular
        self.done[chunks] = True


def _table_position(phi: NDArray) -> NDArray[np.float64]:
    """Where AR(1) models `phi` fall among the nodes of the tables over atanh(phi) (node k at
    ``-AR1_TABLE_SPAN + k AR1_TABLE_STEP``), in steps; NaN for NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.arctanh(phi) + AR1_TABLE_SPAN) / AR1_TABLE_STEP


def _stacked(wqs: list[NDArray]) -> tuple[NDArray, list[int]]:
    """The contrasts `wqs` (in basis coordinates, (q, r) each) as the columns of one (r, sum q) matrix, and their
    sizes q."""
    sizes = [wq.shape[0] for wq in wqs]
    return np.concatenate([wq.T for wq in wqs], axis=1), sizes


def _table_nodes(phi: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """For AR(1) models `phi` (v,): their positions on the tables of :func:`_table_position`, whether the 4 nodes
    around each are on the table (False for NaN), and the second of those nodes (1 where not inside)."""
    x = _table_position(phi)
    inside = (x >= 1.0) & (x <= AR1_TABLE_NODES - 2.0)
    i = np.clip(np.floor(np.where(inside, x, 1.0)).astype(np.intp), 1, AR1_TABLE_NODES - 3)
    return x, inside, i


def _ar1_table(block: ARBlock, B0: NDArray, sizes: list[int], nodes: NDArray) -> _AR1Table:
    """The table of :func:`ar1_estimation_terms` for the block and the contrasts `B0` (:func:`_stacked`), its
    nodes around `nodes` computed."""
    key = (tuple(sizes), B0.tobytes())
    with _TABLE_LOCK:
        table = block.ar1_tables.get(key)
        if table is None:
            table = _AR1Table(len(sizes))
            block.ar1_tables[key] = table
        table.fill(block, B0, sizes, nodes)
    return table


def ar1_estimation_terms(block: ARBlock, phi: NDArray, wqs: list[NDArray]) -> list[tuple[NDArray, NDArray]]:
    """``(scale, dof)`` of :func:`estimation_terms` for AR(1) models phi (v, 1) and contrasts `wqs` (in basis
    coordinates, (q, r) each), from a table: for one design and its contrasts they depend on phi alone, so they
    are computed once per block and contrasts, as voxels need them (:class:`_AR1Table`), at AR1_TABLE_NODES
    values of atanh(phi), evenly spaced, and
    interpolated per voxel by the cubic through the 4 nearest nodes (in atanh(phi) they are smooth up to the
    unit root: relative error below 1e-8 against direct evaluation, see the tests). A voxel whose 4 nodes are not
    all regular (a step of the derivatives left the stationary models, and a term was dropped: a kink), outside
    the table or with phi not finite is evaluated directly."""
    B0, sizes = _stacked(wqs)
    x, inside, i = _table_nodes(phi[:, 0])
    table = _ar1_table(block, B0, sizes, i[inside])
    values, regular = table.values, table.regular
    s = np.where(inside, x, 1.0) - i
    inside &= regular[i - 1] & regular[i] & regular[i + 1] & regular[i + 2]
    weights = [
        -s * (s - 1) * (s - 2) / 6,
        (s + 1) * (s - 1) * (s - 2) / 2,
        -(s + 1) * s * (s - 2) / 2,
        (s + 1) * s * (s - 1) / 6,
    ]
    out = sum(w[:, None] * values[i + k - 1] for k, w in enumerate(weights))
    if not inside.all():
        idx = np.flatnonzero(~inside)
        direct, _ = _estimation_terms(block, phi[idx], np.repeat(B0[:, :, None], idx.size, axis=2), sizes)
        out[idx] = np.stack([x for scale, dof, _, _ in direct for x in (scale, dof)], axis=1)
    return [(out[:, 2 * k], out[:, 2 * k + 1]) for k in range(len(sizes))]


@dataclass(frozen=True, eq=False)
class LaggedSums:
    """What an AR(p) fit needs of a block of v voxels, accumulable scan by scan (float64):
    ``lagged`` (p+1, r, v) = (S_k Q)' y, ``s`` (p+1, v) = sum_t y_t y_{t+k}, the first and last p scans
    (``top``, ``bottom``: rows 0..p-1 and n-1, n-2, ..), ``total`` = sum_t y_t, all of the data shifted by
    ``shift`` (v,) (None: not shifted); a shift is allowed only when the constant is in the design."""

    lagged: NDArray
    s: NDArray
    top: NDArray
    bottom: NDArray
    total: NDArray
    shift: NDArray | None

    def take(self, idx: NDArray | slice) -> LaggedSums:
        """The sums of the voxels `idx` (copies; views for a slice)."""
        shift = None if self.shift is None else self.shift[idx]
        return LaggedSums(
            self.lagged[:, :, idx], self.s[:, idx], self.top[:, idx], self.bottom[:, idx], self.total[idx], shift
        )


def lagged_sums(block: ARBlock, Y: NDArray) -> tuple[LaggedSums, NDArray | None]:
    """The sums of a whole block Y (n, v), shifted by each voxel's mean when the design allows; also returns
    the shifted float64 data where the compiled pass made them (None otherwise: :func:`shifted_columns` gives the
    few columns the exact fallbacks need)."""
    (n, v), p, r = Y.shape, block.order, block.design.rank
    shifting = block.ones is not None  # shifting by the mean only moves the constant's estimate, and keeps digits
    if block.compiled and Y.dtype in (np.float32, np.float64):  # two passes over Y instead of five
        series = held_as_series(Y)  # (held so, the kernel runs series by series)
        shifted, total, s = np.empty((n, v), order="F" if series else "C"), np.empty(v), np.empty((p + 1, v))
        shift_and_lag(Y, shifting, shifted, total, s)
        shift = total / n if shifting else None
        lagged = (block.lagged_basis.T @ shifted).reshape(p + 1, r, v)
        top, bottom = shifted[:p].copy(), shifted[::-1][:p].copy()
    else:
        shifted = None
        lagged, s, total = _tiled_sums(block, Y, shifting)
        shift = total / n if shifting else None
        top, bottom = shifted_columns(Y[:p], slice(None), shift), shifted_columns(Y[::-1][:p], slice(None), shift)
    if shifting:
        total = np.zeros(v)
    return LaggedSums(lagged, s, top, bottom, total, shift), shifted


def _tiled_sums(block: ARBlock, Y: NDArray, shifting: bool) -> tuple[NDArray, NDArray, NDArray]:
    """``(lagged (p+1, r, v), s (p+1, v), total (v,))`` of a block Y (n, v), a tile of columns at a time: each
    tile copied as float64 (in Y's own layout), shifted by its columns' means, and used for every sum while it is
    in cache. The same operations per column as on the whole block, so the same numbers to rounding (BLAS splits
    a narrower product otherwise, and a tile of one column held scan by scan is summed pairwise: an ulp or so); a
    whole shifted float64 copy (8 bytes a value) read four times over took 1.6x as long (a 1,200-scan CIFTI block
    of 13k grayordinates: 0.077 s against 0.048 s, and a new copy's pages faulted in for each block).

    Tiles of 4 MiB (436 series of 1,200 scans): the product with the lagged basis, of (p+1) r rows only, ran at
    29 GFLOP/s on 109 columns and 45 on 256 or more (one core); an HCP-like CIFTI AR(1) fit took 1.06-1.14 s
    against 1.12-1.30 s with 1 MiB tiles, a 2 mm MNI .nii one 1.34-1.41 s against 1.41-1.44 s."""
    (n, v), p, r = Y.shape, block.order, block.design.rank
    lagged, s, total = np.empty(((p + 1) * r, v)), np.empty((p + 1, v)), np.empty(v)
    width = max(16, TILE_BYTES // (8 * n))
    for a in range(0, v, width):
        cols = slice(a, min(v, a + width))
        tile = np.array(Y[:, cols], dtype=np.float64)  # (Y's layout kept, and with it how numpy adds a column)
        total[cols] = tile.sum(axis=0)
        if shifting:
            tile -= total[cols] / n
        s[:, cols] = _lagged_products(tile, p)
        np.matmul(block.lagged_basis.T, tile, out=lagged[:, cols])
    return lagged.reshape(p + 1, r, v), s, total


def shifted_columns(Y: NDArray, idx, shift: NDArray | None) -> NDArray[np.float64]:
    """The columns `idx` of a block Y as float64, less their shift (each voxel's mean) where there is one: the
    values :func:`lagged_sums` summed."""
    out = np.array(Y[:, idx], dtype=np.float64)
    if shift is not None:
        out -= shift[idx]
    return out


@dataclass(frozen=True, eq=False)
class ARBlockFit:
    """The AR(p) fit of a block of v voxels (:func:`fit_ar_sums`).

    ``betas`` (pc, v), the whitened RSS ``rss`` (v,), ``phi`` (v, p); ``contrasts``, for each contrast weight
    matrix w (q, pc): ``(effect (q, v), unscaled covariance w (X'V^-1X)^+ w' as (v, q, q), effective degrees of
    freedom (v,))`` (see :func:`estimation_terms`, which also scales the covariance); the OLS RSS ``ols_rss``
    (v,), the total sum of squares ``tss`` (v,; centred when the design has an intercept), and ``flagged``:
    the indices of the voxels whose values from the sums lost too many digits and need a refit from their
    data (empty when the fit had the data); ``mean`` (v,), the data's mean over the scans, where asked for
    (:func:`fit_ar_block`), else None."""

    betas: NDArray
    rss: NDArray
    phi: NDArray
    contrasts: list[tuple[NDArray, NDArray, NDArray]]
    ols_rss: NDArray
    tss: NDArray
    flagged: NDArray
    mean: NDArray | None = None


def residual_lagged_sums(block: ARBlock, sums: LaggedSums) -> NDArray[np.float64]:
    """(p+1, v) the OLS residuals' lagged products ``sum_t e_t e_{t+k}`` from the sums alone:
    ``e'S_k e = y'S_k y - 2 c'b_k + c'G_k c`` (c = Q'y, b_k = (S_k Q)'y), halved for k > 0. Digits cancel where
    the residuals are small against the data (see ``needs_refit``)."""
    p, r = block.order, block.design.rank
    c, v = sums.lagged[0], sums.s.shape[1]
    ys = np.concatenate([sums.s[:1], 2.0 * sums.s[1:]])  # y'S_k y
    Gc = (block.G.reshape(-1, r) @ c).reshape(p + 1, r, v)
    quad = ys + np.einsum("kiv,iv->kv", Gc - 2.0 * sums.lagged, c)
    return np.concatenate([quad[:1], 0.5 * quad[1:]])


def fit_ar_block(
    block: ARBlock, Y: NDArray, weights: list[NDArray], autocorrelations=None, *, with_mean: bool = False
) -> ARBlockFit:
    """AR(p) fit of one block Y (n, v; finite, any float dtype; computed in float64); see :func:`fit_ar_sums`.
    `with_mean`: also each voxel's mean over the scans, from the float64 sums the fit makes anyway."""
    sums, shifted = lagged_sums(block, Y)
    data = (lambda idx: shifted[:, idx]) if shifted is not None else (lambda idx: shifted_columns(Y, idx, sums.shift))
    fit = fit_ar_sums(block, sums, weights, data, autocorrelations)
    if not with_mean:
        return fit
    return dataclasses.replace(fit, mean=sums.total / Y.shape[0] if sums.shift is None else sums.shift)


def fit_ar_sums(
    block: ARBlock, sums: LaggedSums, weights: list[NDArray], data=None, autocorrelations=None
) -> ARBlockFit:
    """AR(p) fit from a block's :class:`LaggedSums` and the contrast weight matrices `weights`.

    `data(idx)` returns the shifted data of the voxels `idx` (n, len(idx)) for the few voxels whose sums lose
    too many digits (near-exact fits, filters near a unit root); with `data` None those voxels keep the
    values from the sums and are listed in the result's ``flagged`` (for the caller to refit them).

    `autocorrelations(residual_lagged)`, when given, replaces :meth:`ARBlock.estimate`: it returns the noise's
    autocorrelations (v, p+1) at lags 0..p, estimated elsewhere (FILM's tapered and smoothed ones,
    ``voxfit.core.film``), and the whitening is the AR(p) filter that reproduces them (Levinson); it is then
    taken as known, and each contrast has ``n - rank`` degrees of freedom and no
    estimation terms.

    AR(1) estimated here takes the compiled kernels (:mod:`voxfit.core._ar_kernels`) when the block says so
    (``ARBlock.compiled``): the same arithmetic per voxel, and the voxels they flag by the numpy path."""
    if block.order == 1 and autocorrelations is None and sums.s.shape[1] and block.compiled:
        fit = _fit_ar1_compiled(block, sums, weights, data)
    else:
        fit = _fit_sums(block, sums, weights, data, autocorrelations)
    return _centred_tss(block.design, sums, fit, data)


def _centred_tss(design, sums: LaggedSums, fit: ARBlockFit, data) -> ARBlockFit:
    """`fit` with its centred total sum of squares, ``s_0 - total^2 / n``, taken from the data where that
    subtraction lost more than 5 digits (the voxels flagged where there are no data). Only sums not shifted
    though the design has an intercept can lose them: its constant near its span, not in it
    (``DesignFactor.exact_intercept``), for data far from zero (an R^2 of 0.999 or NaN for 0.02 at 1e6)."""
    if sums.shift is not None or not design.has_intercept:
        return fit
    lost = np.flatnonzero(~(fit.tss * REFIT_RATIO[np.dtype(np.float64)] > sums.s[0]))  # (NaN and below 0 too)
    if not lost.size:
        return fit
    if data is None:
        return dataclasses.replace(fit, flagged=np.union1d(fit.flagged, lost))
    values = data(lost)
    centred = values - values.mean(axis=0)
    fit.tss[lost] = np.einsum("tv,tv->v", centred, centred)
    return fit


def _fit_ar1_compiled(block: ARBlock, sums: LaggedSums, weights: list[NDArray], data) -> ARBlockFit:
    """:func:`fit_ar_sums` of AR(1) by the compiled kernels, and the voxels they flag by :func:`_fit_sums`. The
    kernels work in the eigenbasis U of Q'S_1Q, where the Gram matrices are diagonal but for the corners: the
    sums are turned into it by one product, and the coordinates back by another."""
    design = block.design
    r, v, n_out = design.rank, sums.s.shape[1], len(weights)
    wqs = [w @ design.basis_pinv for w in weights]
    B0, sizes = _stacked(wqs) if wqs else (np.zeros((r, 0)), [])
    shift = np.zeros(v) if sums.shift is None else sums.shift
    rotated = np.matmul(block.U.T, sums.lagged)  # (2, r, v)
    ols_rss, phi, tss, flag = np.empty(v), np.empty(v), np.empty(v), np.zeros(v, dtype=bool)
    constants = (block.eig, block.M_inv, block._ar1_tail_table(), block.beyond.shape[1] + 1)
    constants += (float(design.n_scans), float(block.nu), design.has_intercept, AR1_TABLE_SPAN, AR1_TABLE_STEP)
    constants += (AR_ITERATIONS, MAX_REFLECTION, REFIT_RATIO[np.dtype(np.float64)])
    ar1_estimate(rotated, sums.s, sums.total, shift, constants, (ols_rss, phi, tss, flag))
    if wqs:
        _, inside, i = _table_nodes(phi)
        table = _ar1_table(block, B0, sizes, i[inside & ~flag])
        values, regular = table.values, table.regular
    else:  # no terms to interpolate
        values, regular = np.zeros((AR1_TABLE_NODES, 0)), np.ones(AR1_TABLE_NODES, dtype=bool)
    coords, rss = np.empty((r, v)), np.empty(v)
    cov, terms = np.empty((sum(q * q for q in sizes), v)), np.empty((2 * n_out, v))
    constants = (block.eig, block.edges, block.U.T @ B0, np.array(sizes, dtype=np.int64), values, regular)
    constants += (AR1_TABLE_SPAN, AR1_TABLE_STEP, REFIT_RATIO[np.dtype(np.float64)])
    ar1_solve(rotated, sums.s, sums.top, sums.bottom, phi, constants, (coords, rss, cov, terms, flag))
    betas = (design.basis_pinv @ block.U) @ coords
    if sums.shift is not None:
        design.add_level(betas, sums.shift)
    contrasts, at = [], 0
    for c, (w, q) in enumerate(zip(weights, sizes)):
        covariance = cov[at : at + q * q].T.reshape(v, q, q) * terms[2 * c][:, None, None]
        contrasts.append((w @ betas, covariance, terms[2 * c + 1]))
        at += q * q
    fit = ARBlockFit(betas, rss, phi[:, None], contrasts, ols_rss, tss, np.zeros(0, dtype=np.intp))
    idx = np.flatnonzero(flag)
    if not idx.size:
        return fit
    part = _fit_sums(block, sums.take(idx), weights, None if data is None else (lambda k: data(idx[k])), None)
    fit.betas[:, idx], fit.rss[idx], fit.phi[idx], fit.ols_rss[idx], fit.tss[idx] = (
        part.betas,
        part.rss,
        part.phi,
        part.ols_rss,
        part.tss,
    )
    for (effect, covariance, dof), (e, cv, d) in zip(fit.contrasts, part.contrasts):
        effect[:, idx], covariance[idx], dof[idx] = e, cv, d
    return dataclasses.replace(fit, flagged=idx[part.flagged])


def _fit_sums(block: ARBlock, sums: LaggedSums, weights: list[NDArray], data=None, autocorrelations=None) -> ARBlockFit:
    """:func:`fit_ar_sums` by whole-array numpy steps over the block."""
    design, p = block.design, block.order
    Q, r, n = design.basis, design.rank, design.n_scans
    lagged, s, mu = sums.lagged, sums.s, sums.shift
    v = s.shape[1]
    c = lagged[0]
    # y'S_k y, held column by column whatever the sums' layout (a slice's views, an index array's copies), so that
    # the sums over k below add in one order: the same statistics from either
    ys = np.asfortranarray(np.concatenate([s[:1], 2.0 * s[1:]]))
    r_lag = residual_lagged_sums(block, sums)
    lost = np.flatnonzero(needs_refit(r_lag[0], s[0]))  # more than 5 digits cancelled: explicit residuals
    if lost.size and data is not None:
        r_lag[:, lost] = _lagged_products(data(lost) - Q @ c[:, lost], p)
    ols_rss = r_lag[0].copy()
    raw_yy = s[0] if mu is None else s[0] + 2.0 * mu * sums.total + n * mu**2
    tss = s[0] - sums.total**2 / n if design.has_intercept else raw_yy
    if autocorrelations is None:
        phi, rho, gamma0 = block.estimate(r_lag)
    else:
        phi, rho, gamma0 = _levinson(autocorrelations(r_lag))
    exact = ols_rss <= (n * np.finfo(float).eps) ** 2 * raw_yy
    phi[exact], rho[exact], gamma0[exact] = 0.0, np.eye(p + 1)[0], 1.0  # rounding-level residuals: white

    alpha, corner = _band_and_corners(phi)
    y_top, y_bottom = sums.top, sums.bottom
    cy_top = np.einsum("vab,bv->av", corner, y_top)
    cy_bottom = np.einsum("vab,bv->av", corner, y_bottom)
    rhs = np.einsum("vk,kiv->iv", alpha, lagged) + block.top.T @ cy_top + block.bottom.T @ cy_bottom  # Q'W'Wy
    wyy = (
        np.einsum("vk,kv->v", alpha, ys)
        + np.einsum("av,av->v", y_top, cy_top)
        + np.einsum("av,av->v", y_bottom, cy_bottom)
    )
    wqs = [w @ design.basis_pinv for w in weights]  # contrasts in basis coordinates, (q, r) each
    rhs_all = np.concatenate([rhs[:, None, :]] + [np.repeat(wq.T[:, :, None], v, axis=2) for wq in wqs], axis=1)
    coefs = np.concatenate([alpha, corner.reshape(v, -1)], axis=1)
    if p == 1:
        sol = _solve_ar1(block, alpha, corner[:, 0, 0], rhs_all)
    else:
        sol = _cholesky_solve((block.gram_terms.T @ coefs.T).reshape(r, r, v), rhs_all)  # gram = Q'W'WQ
    # Where the band sums cancel too much (filters near a unit root, high orders: the Gram matrix's smallest
    # eigenvalue, about min |A(w)|^2, far below sum |alpha_k|), or where the solve failed, the voxel is
    # refitted from its explicitly whitened data and design instead.
    terms = np.einsum("vk,kv->v", np.abs(alpha), np.sqrt(np.einsum("kiv,kiv->kv", lagged, lagged)))
    fragile = terms > 1e5 * np.sqrt(np.einsum("iv,iv->v", rhs, rhs))
    if p > 1:  # for AR(1), sum |alpha| / min |A|^2 = ((1 + |phi|) / (1 - |phi|))^2 <= 4e4 with |phi| <= 0.99
        spectrum = block.cosines @ alpha.T  # |A(w)|^2 = alpha_0 + 2 sum_k alpha_k cos(k w) on a grid, (256, v)
        fragile |= np.abs(alpha).sum(axis=1) > 1e6 * spectrum.min(axis=0)
    failed = ~np.isfinite(sol).all(axis=(0, 1))
    redo_explicit = np.flatnonzero((fragile if data is not None else np.zeros(v, bool)) | failed)
    explicit = data(redo_explicit) if (redo_explicit.size and data is not None) else None
    if explicit is not None:  # the whitening of the first p scans, only for the voxels whitened explicitly
        L_explicit = ar_whitening(phi[redo_explicit], rho[redo_explicit], gamma0[redo_explicit])
    for i, j in enumerate(redo_explicit):
        if explicit is None:  # no data to fall back on: the pseudo-inverse of the Gram matrix
            g = (block.gram_terms.T @ coefs[j]).reshape(r, r)
            sol[:, :, j] = np.linalg.pinv(g, hermitian=True) @ rhs_all[:, :, j]
            continue
        WQ = _whiten(Q, np.repeat(phi[[j]], r, 0), np.repeat(L_explicit[[i]], r, 0))
        wy_j = _whiten(explicit[:, [i]], phi[[j]], L_explicit[[i]])[:, 0]
        P = np.linalg.pinv(WQ)  # least squares by SVD, not the normal equations
        rhs[:, j] = WQ.T @ wy_j
        sol[:, 1:, j] = P @ (P.T @ rhs_all[:, 1:, j])
        sol[:, 0, j] = P @ wy_j
        wyy[j] = wy_j @ wy_j
    coords = sol[:, 0]
    # whitened RSS = ||Wy||^2 - coords . Q'W'Wy; where that subtraction loses more than 5 of 16 digits (a
    # near-exact fit), it is recomputed from explicit whitened residuals
    rss = wyy - np.einsum("kv,kv->v", coords, rhs)
    redo = np.flatnonzero(needs_refit(rss, wyy))
    if redo.size and data is not None:
        L_redo = ar_whitening(phi[redo], rho[redo], gamma0[redo])
        resid = _whiten(data(redo) - Q @ coords[:, redo], phi[redo], L_redo)
        rss[redo] = np.einsum("tv,tv->v", resid, resid)
    rss[(rss <= (n * np.finfo(float).eps) ** 2 * wyy) | exact] = 0.0  # exact fit (of the OLS model: so GLS too)
    need = np.zeros(v, dtype=bool)
    if data is None:
        need[lost] = need[redo] = True
        need |= fragile | failed
    betas = design.basis_pinv @ coords
    if mu is not None:  # (the shift by each voxel's mean back)
        design.add_level(betas, mu)
    contrasts, k = [], 1
    if not wqs:
        terms = []
    elif autocorrelations is not None:
        terms = [(np.ones(v), np.full(v, float(block.nu))) for _ in wqs]
    elif p == 1:  # tabulated: the same numbers to ~1e-9, several times faster
        terms = ar1_estimation_terms(block, phi, wqs)
    else:
        terms = [t[:2] for t in estimation_terms(block, phi, rhs_all[:, 1:], [wq.shape[0] for wq in wqs])]
    for w, wq, (scale, dof) in zip(weights, wqs, terms):
        q = wq.shape[0]
        cov = np.einsum("kav,kbv->vab", rhs_all[:, k : k + q], sol[:, k : k + q])  # wq gram^-1 wq'
        scale[exact], dof[exact] = 1.0, block.nu  # white by decision: nothing estimated
        contrasts.append((w @ betas, cov * scale[:, None, None], dof))
        k += q
    return ARBlockFit(betas, rss, phi, contrasts, ols_rss, tss, np.flatnonzero(need))
