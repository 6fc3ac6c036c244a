"""``fit_global_ar``: SPM12's 'AR(1)' noise model, one ReML covariance for all voxels (``--noise ar1-global``).

The steps of SPM12's spm_spm / spm_est_non_sphericity, on voxfit's blocks:

1. OLS fit; SPM's F test of the "effects of interest" (every column except constants and drifts) with its
   degrees of freedom ``trMV`` and ``trRV = n - rank(KX)`` (SPM leaves the high-pass filter's out here);
   voxels above the ``p < 0.001`` threshold are pooled.
2. ``Cy``: the mean over pooled voxels of ``y y'`` divided by each voxel's residual mean square (SPM: the data
   as they are, not filtered, mean included; ReML projects the design out, so voxfit takes the OLS residuals,
   the same estimate without the cancellation of data far from zero).
3. ReML weights of SPM's two AR(0.2) components (``voxfit.core.reml``) for the design ``[X, drifts]``;
   V scaled to trace n; ``W = V^-1/2`` with entries below 1e-6 dropped.
4. The whitened model: SPM filters after whitening (``K W y`` on ``K W X``, K the DCT high-pass), which is
   the regression of ``W y`` on ``[W X, drifts]`` (drifts not whitened); residual dof ``n - rank``
   (SPM's ``trRV^2 / trRVRV``, equal up to its thresholding of W).

The high-pass filter's columns are those of kind ``drift`` or ``nuisance`` (see ``voxfit.design.kinds``:
a design built from events knows them, a design file says them in its JSON sidecar or by the user's
``--nuisance-columns``, else ``drift_<k>`` and nilearn's ``cosine<k>`` are recognised by name); a design
without them is a design without high-pass filter, which is said in a warning, since every other column then
counts as an effect of interest.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special

from .._array import working_dtype
from .._execution import Execution
from ..core import Fit, Stats, factorize
from ..core.reml import ar_components, reml, whitening_matrix
from ..design.kinds import FILTER_KINDS, guess_kind
from ..exceptions import DesignWarning, InputError
from .fit import check_fit_inputs
from .fit import fit as fit_ols

__all__ = ["GlobalARFit", "fast_components", "fit_global_ar"]

UF_P = 0.001  # SPM12's defaults.stats.fmri.ufp
AR_POINT = 0.2  # SPM's expansion point for the AR components


@dataclass(frozen=True, eq=False)
class GlobalARFit:
    """SPM-style global AR(1) fit: the whitened fit (its R^2 is the OLS fit's), the contrasts, the ReML
    weights, the correlation matrix V (trace n), and how many voxels were pooled at threshold F > `threshold`."""

    fit: Fit
    contrasts: dict[str, Stats]
    hyperparameters: np.ndarray
    correlation: np.ndarray
    n_pooled: int
    threshold: float
    whitening: np.ndarray | None = None  # W (n, n): the fit is of W y on the whitened design


class _Whitened:
    """``W @ Y`` seen one block of voxels at a time (the engine reads ``[:, columns]`` slices)."""

    def __init__(self, Y, W):
        self.Y, self.dtype = Y, working_dtype(Y.dtype)
        self.W = W.astype(self.dtype)
        if np.count_nonzero(W) < 0.25 * W.size:  # W is banded once its entries below 1e-6 are dropped
            from scipy import sparse

            self.W = sparse.csr_array(self.W)
        self.shape, self.ndim = Y.shape, 2

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return (self.W @ np.asarray(self.Y[:, cols], dtype=self.dtype))[rows]

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def _constant_columns(X, names, drift, kinds):
    """SPM's session constants (iB): columns constant over the scans, or named ``constant...`` (a run's
    intercept in a design of several runs is constant over its own scans only)."""
    return np.array(
        [
            not d and (k == "constant" or (np.ptp(col) == 0 and col[0] != 0) or name.lower().startswith("constant"))
            for d, col, name, k in zip(drift, X.T, names, kinds)
        ]
    )


def fast_components(n: int, tr: float) -> list[np.ndarray]:
    """SPM12's FAST covariance components for one session of n scans (spm_Ce('fast', n, TR); Corbin et al.
    2018): ``toeplitz(t^j exp(-t / d))`` over the scan times t = 0, TR, .., for j = 0, 1, 2 and the first six
    time constants d of ``2^(floor(log2(TR / 4)) .. log2(64))`` seconds."""
    t = np.arange(n) * float(tr)
    d = 2.0 ** np.arange(np.floor(np.log2(tr / 4.0)), np.log2(64.0) + 1e-12)
    return [linalg.toeplitz(t**j * np.exp(-t / di)) for di in d[:6] for j in range(3)]


def fit_global_ar(
    X,
    Y,
    contrasts: dict,
    *,
    names=None,
    kinds=None,
    max_memory=None,
    n_jobs: int | None = None,
    execution: Execution | None = None,
    components: str = "ar",
    tr: float | None = None,
) -> GlobalARFit:
    """Fit with one AR(1)-type noise covariance for all voxels, estimated by ReML as SPM12 does.

    Parameters are those of :func:`voxfit.fit_ar` (without an order), and `kinds`, each column's kind (see
    ``voxfit.design.kinds``; by default guessed from the names): ``drift`` and ``nuisance`` columns are SPM's
    high-pass filter. Raises InputError when no voxel passes SPM's effects-of-interest test (nothing to pool
    over): use ``ar1`` (per voxel) then. `execution` (a :class:`voxfit.Execution`) holds `max_memory` and
    `n_jobs` as the models pass them. `components`: ``ar`` (SPM's AR(0.2) pair) or ``fast`` (SPM12's FAST
    dictionary, :func:`fast_components`, which needs the repetition time `tr` in seconds).
    """
    if components not in ("ar", "fast"):
        raise InputError(f"`components` must be ar or fast; got {components!r}.")
    if components == "fast" and not (isinstance(tr, (int, float)) and np.isfinite(tr) and tr > 0):
        raise InputError(f"`tr` must be the repetition time in seconds (a positive number) for FAST; got {tr!r}.")
    given = Execution.resolve(execution, max_memory=max_memory, n_jobs=n_jobs)
    execution = Execution(given.max_memory, given.n_jobs)  # on this process's CPU: the pooled fit needs whole scans
    design = factorize(X, names, max_memory=execution.max_memory)
    Y, _ = check_fit_inputs(X, Y, design.n_scans, execution.n_jobs)
    X, names, n = design.X, design.names, design.n_scans
    kinds = tuple(kinds) if kinds is not None else tuple(guess_kind(name, X[:, j]) for j, name in enumerate(names))
    drift = np.array([k in FILTER_KINDS for k in kinds])
    if not drift.any():
        warnings.warn(
            "ar1-global found no drift column (kind drift or nuisance) in the design, so SPM's high-pass "
            "filter is none and every non-constant column counts as an effect of interest; name the "
            'design\'s drift columns with --nuisance-columns (e.g. "hp_*") if it has some.',
            DesignWarning,
            stacklevel=2,
        )
    nuisance = drift | _constant_columns(X, names, drift, kinds)
    if nuisance.all():
        raise InputError(
            "ar1-global pools the voxels that SPM's F test of the effects of interest finds, but the "
            "design has only constant and drift columns; use --noise ar1."
        )
    ols = fit_ols(X, Y, names=names, execution=execution)
    if ols.n_invalid == ols.valid.size:
        raise InputError(f"all {ols.valid.size} voxels have NaN or infinite values in some scan; nothing to fit.")
    # SPM's F of the effects of interest: extra sum of squares over the model of constants and drifts, with
    # trMV = rank(X) - rank(X0) and trRV = n - rank(K X) (the filter's dof left out, as SPM does)
    rss = ols.residual_variance * ols.dof
    if nuisance.any():
        reduced = fit_ols(X[:, nuisance], Y, execution=execution)
        rss0, tr_mv = reduced.residual_variance * reduced.dof, design.rank - reduced.rank
    else:
        rss0 = np.concatenate(
            [
                np.einsum("tv,tv->v", b, b)
                for b in (np.asarray(Y[:, a : a + 4096], dtype=np.float64) for a in range(0, Y.shape[1], 4096))
            ]
        )
        tr_mv = design.rank
    X0 = X[:, drift]
    filtered = X[:, ~drift] - X0 @ np.linalg.lstsq(X0, X[:, ~drift], rcond=None)[0] if drift.any() else X[:, ~drift]
    tr_rv = n - np.linalg.matrix_rank(filtered)
    threshold = float(special.fdtri(tr_mv, tr_rv, 1.0 - UF_P))
    with np.errstate(invalid="ignore", divide="ignore"):
        F = ((rss0 - rss) / tr_mv) / (rss / tr_rv)
        pooled = np.flatnonzero(F > threshold)
    name = "ar1-global" if components == "ar" else "fast"  # (the --noise option, for its messages)
    if pooled.size == 0:
        raise InputError(
            f"{name}: no voxel passes SPM's effects-of-interest F test (p < {UF_P}), so there is "
            "nothing to pool the autocorrelation over; use --noise ar1 (per voxel) or check the design."
        )
    Cy = np.zeros((n, n))
    basis = design.basis
    for a in range(0, pooled.size, 4096):
        idx = pooled[a : a + 4096]
        block = np.asarray(Y[:, idx], dtype=np.float64)
        # the OLS residuals, not the data: ReML projects the design out (P X = 0), so their Cy gives SPM's
        # iterations, to rounding, where the data's lose every digit far from zero (t wrong by 1.1 at 1e9 +- 1)
        block -= basis @ (basis.T @ block)
        block *= np.sqrt(tr_rv / rss[idx])
        Cy += block @ block.T
    Cy /= pooled.size
    Q = ar_components(n, AR_POINT) if components == "ar" else fast_components(n, float(tr))
    try:
        try:
            V, h, _ = reml(Cy, X, Q)
            W = whitening_matrix(V)
        except FloatingPointError:  # SPM reduces the model; voxfit keeps the first component (AR(0.2)-like)
            V, h1, _ = reml(Cy, X, Q[:1])
            h = np.zeros(len(Q))
            h[0] = h1[0]
            W = whitening_matrix(V)
    except (FloatingPointError, np.linalg.LinAlgError):
        raise InputError(
            f"{name}: the ReML estimate of the noise covariance did not converge to a positive "
            "definite matrix for these data; use --noise ar1."
        ) from None
    Xw = X.copy()
    Xw[:, ~drift] = W @ X[:, ~drift]
    fit = fit_ols(Xw, _Whitened(Y, W), names=names, execution=execution)
    # a voxel the design fits exactly (constant) has no residual variance whitened either: the whitened data's
    # rounding (W in the data's float32) gave it a finite t
    exact = ols.residual_variance == 0
    fit = dataclasses.replace(fit, r2=ols.r2, residual_variance=np.where(exact, 0.0, fit.residual_variance))
    results = {label: fit.contrast(expr, name=label, n_jobs=execution.n_jobs) for label, expr in contrasts.items()}
    return GlobalARFit(
        fit=fit,
        contrasts=results,
        hyperparameters=h,
        correlation=V * (n / np.trace(V)),
        n_pooled=int(pooled.size),
        threshold=threshold,
        whitening=W,
    )
