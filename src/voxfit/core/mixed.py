"""Group models on summary statistics, vectorised over voxels: mixed effects (REML), fixed effects and OLS.

Subject i of n has an effect y_i with a known first-level variance s_i^2 (its varcope). The models:

- ``mixed`` (FSL's FLAME1, AFNI's 3dMEMA): ``y = X beta + e``, ``e_i ~ N(0, s_i^2 + tau2_g(i))``, with a
  between-subject variance ``tau2_g >= 0`` for each variance group g (FLAME's ``--grp``). tau2 is the
  restricted maximum likelihood (REML) estimate, bounded at zero, and beta its GLS estimate with the total
  variance ``V_i = s_i^2 + tau2_g(i)``; the covariance of beta is ``(X' V^-1 X)^-1``.
- ``fixed`` (flameo's fixed effects): the same with tau2 = 0, i.e. precision-weighted least squares. With each
  s_i^2 an estimate on d_i first-level dof, the covariance of beta and each contrast's dof can take the weights'
  error into account (Kenward & Roger 1997, the s_i^2 as the estimated parameters: :func:`fixed_kenward_roger`).
- ``ols``: ordinary least squares on the effects alone; the first-level variances are not used, and ``tau2``
  holds the residual variance sigma^2 of the fit (one group).

The restricted log-likelihood (Harville 1977; Woolrich et al. 2004, FLAME) is

    l_R(tau2) = -1/2 [(n - r) log 2 pi + log|V| + log|X' V^-1 X| + r' V^-1 r],

r = y - X beta_GLS and r the rank of X. X enters through the orthonormal basis Q (n, r) of its column space
(``voxfit.core.design``): ``log|X' V^-1 X| = log|Q' V^-1 Q| + log pdet(X' X)`` for a full-rank X, and the same
is used as the definition for a rank-deficient one (betas are then the minimum-norm solution, as in the OLS
fit). With ``W = V^-1``, ``M = Q' W Q`` and ``P = W - W Q M^-1 Q' W``, the derivatives used are

    dl/dtau_g = -1/2 [tr(P D_g) - (W r)' D_g (W r)]                    (D_g: the rows of group g)
    Fisher information I_gh = 1/2 tr(P D_g P D_h)
    d2l/dtau_g dtau_h = I_gh - (W r)' D_g P D_h (W r),

each a sum of n terms and products of (r x r) matrices: ``tr(P D_g) = sum_g w_i - tr(M^-1 T_g)``,
``tr(P D_g P D_h) = [g = h] (sum_g w_i^2 - 2 tr(M^-1 U_g)) + tr(M^-1 T_g M^-1 T_h)`` with
``T_g = sum_g w_i^2 q_i q_i'`` and ``U_g = sum_g w_i^3 q_i q_i'``. Nothing of size (n x n) per voxel is formed;
the per-voxel (r x r) sums are matrix products of the (n, v) weights with the (n, r^2) products ``q_i q_i'``.

Maximisation, all voxels of a block together (a voxel stops when its step is below ``tol * (tau2 + mean s^2)``):

- one group: the boundary is decided first, exactly: where the score at tau2 = 0 is <= 0 the estimate is 0
  (the restricted likelihood does not increase into the interior). Elsewhere the root of the score is found by
  Newton's method on the score from the moment estimate (DerSimonian-Laird's, generalised to GLS:
  ``(r'Wr - (n - r)) / tr P`` at 0; a Fisher step from 0 where it is not positive), safeguarded by the bracket
  [last tau2 with a positive score, last with a negative one]: a Newton step where the likelihood is concave, a
  Fisher-scoring step elsewhere, a bisection when the step leaves the bracket. Where the first-level variances
  differ enough for the likelihood to have another, higher peak, it is probed for one, and the maximisation run
  again there (:func:`_other_peak`).
- several groups: projected Newton (Fisher scoring where the Hessian is not negative definite) on the groups
  that are positive or whose score is positive, the step projected onto tau2 >= 0 and halved until the
  restricted likelihood increases (Armijo), then a scaled projected gradient if that fails.

With several variance groups the engine's default (``voxfit.mixed_effects``) adjusts the covariance of beta for
the estimation of tau2 (Kenward & Roger 1997: :func:`kenward_roger_covariance`) and refers each contrast to
Satterthwaite's dof (:func:`satterthwaite_dof`), at most n - rank.

A mixed model of one variance group is fitted by default, on large blocks or once numba is loaded
(:func:`use_compiled_mixed`), by a compiled kernel (``voxfit.core._mixed_kernels``) that runs these steps voxel by
voxel without the (n, v) temporaries of the numpy path, ~7x faster; its numbers equal the numpy path's to
rounding (tested to 1e-10), which remains the path of several groups, ``fixed`` and ``ols``.

Voxels that cannot be fitted get NaN outputs and an outcome code (:data:`OUTCOMES`): non-finite effects; a
first-level variance that is zero, negative or not finite in some subject (mixed and fixed); a flat
likelihood (mixed: no residual degrees of freedom, or a variance group the design absorbs; ols: a zero residual
variance, effects fitted exactly by the design, e.g. all equal in a one-sample test, which a mixed model fits with
tau2 = 0); no convergence, or a
fit whose numbers are not finite (first-level variances too far apart for float64).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._threads import in_chunks
from .design import DesignFactor, factorize
from .distributions import kenward_roger_or_satterthwaite, kenward_roger_reference

__all__ = [
    "BAD_VARIANCE",
    "FLAT",
    "INVALID_DATA",
    "MODELS",
    "NOT_CONVERGED",
    "OK",
    "OUTCOMES",
    "MixedBlock",
    "fit_mixed_block",
    "fixed_kenward_roger",
    "kenward_roger_covariance",
    "kenward_roger_f",
    "no_fixed_effects",
    "satterthwaite_dof",
    "use_compiled_mixed",
]

MODELS = ("mixed", "fixed", "ols")
OK, BAD_VARIANCE, FLAT, NOT_CONVERGED, INVALID_DATA = 0, 1, 2, 3, 4
OUTCOMES = {
    OK: "fitted",
    BAD_VARIANCE: "first-level variance zero, negative or missing in some subject",
    FLAT: "flat likelihood (the data carry no information on the between-subject variance)",
    NOT_CONVERGED: "the estimation did not converge to finite values",
    INVALID_DATA: "effects not finite in some subject",
}
_LOG_2PI = float(np.log(2 * np.pi))
_ARMIJO = 1e-4
_HALVINGS = 30
_LEVERAGE_ONE = 1 - 1e-8  # a subject whose OLS leverage is above this is fitted exactly by the design
# the compiled kernel pays for loading numba and itself (~0.3 s) on blocks of this many effects (subjects x voxels)
AUTO_COMPILE_ELEMENTS = 1 << 21
_KERNEL_LANES = 8  # the kernel's sums over subjects run on padded vectors of this many
_KERNEL_DESIGNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # DesignFactor -> _kernel_design


@dataclass(frozen=True, eq=False)
class MixedBlock:
    """A group model fitted to a block of v voxels (NaN where ``outcome != OK``).

    betas : (p, v) fixed effects; covariance : (v, p, p) their covariance; tau2 : (G, v) between-subject
    variance per variance group (0 for ``fixed``; the residual variance sigma^2 for ``ols``, G = 1);
    outcome : (v,) int8 codes of :data:`OUTCOMES`; loglik : (v,) the restricted log-likelihood at the estimate;
    iterations : (v,) evaluations of the likelihood's derivatives; contrast_dof : one (v,) array per contrast
    given, its Satterthwaite degrees of freedom (``mixed``; see :func:`satterthwaite_dof`), or with
    `kenward_roger` Kenward & Roger's for F (:func:`kenward_roger_f`; ``fixed`` with first-level dof:
    :func:`fixed_kenward_roger`'s); contrast_scale : one (v,) array per contrast, the factor lambda of Kenward &
    Roger's F (1 for one row, and without `kenward_roger`).
    """

    betas: NDArray[np.float64]
    covariance: NDArray[np.float64]
    tau2: NDArray[np.float64]
    outcome: NDArray[np.int8]
    loglik: NDArray[np.float64]
    iterations: NDArray[np.int32]
    contrast_dof: tuple[NDArray[np.float64], ...] = ()
    contrast_scale: tuple[NDArray[np.float64], ...] = ()


def fit_mixed_block(
    X,
    effects,
    variances=None,
    groups=None,
    *,
    model: str = "mixed",
    max_iter: int = 200,
    tol: float = 1e-10,
    n_groups: int | None = None,
    contrasts=(),
    kenward_roger: bool = False,
    compiled: bool | None = None,
    first_level_dof=None,
) -> MixedBlock:
    """Fit a group model to a block of voxels (any block gives the numbers of the whole, to rounding).

    Parameters
    ----------
    X : (n, p) array or DesignFactor
        The design (factorised here when an array is given; the engine passes its factorisation).
    effects, variances : (n, v) arrays
        Each subject's effect and first-level variance at each voxel (`variances` unused, may be None, for
        ``ols``).
    groups : (n,) int array, optional
        Variance-group codes 0..G-1 (default: one group). ``fixed`` reports tau2 = 0 in each group; ``ols``
        ignores them (one residual variance).
    model : {'mixed', 'fixed', 'ols'}
    max_iter, tol : iterations of the REML maximisation and its relative step tolerance.
    n_groups : int, optional
        G, when some codes may be absent from `groups` (default ``groups.max() + 1``).
    contrasts : sequence of (q, p) arrays
        Contrast weights whose Satterthwaite (``mixed``) or Kenward-Roger (`kenward_roger`) degrees of freedom
        are wanted.
    kenward_roger : bool
        ``mixed``: the covariance of the betas adjusted for the estimation of tau2
        (:func:`kenward_roger_covariance`); the dof of a contrast of one row Satterthwaite's, of several rows
        Kenward & Roger's with their scale lambda (:func:`kenward_roger_f`), each at most n - rank. ``fixed``
        (with `first_level_dof`): the covariance and dof of :func:`fixed_kenward_roger`, the first-level
        variances taken as estimates on their first-level dof.
    compiled : bool, optional
        ``mixed`` with one variance group: fit each voxel with the compiled kernel (True) or the numpy path
        (False); their numbers are equal to rounding. Default: :func:`use_compiled_mixed` of the block's size.
        The other models, several groups and `kenward_roger` always take the numpy path.
    first_level_dof : number, (n,) or (n, v) array, optional
        ``fixed`` with `kenward_roger`: each subject's first-level dof (per voxel for (n, v)), positive.
    """
    design = X if isinstance(X, DesignFactor) else factorize(X, warn=False)
    Y = _as_matrix(effects)
    n, v = Y.shape
    codes = np.zeros(n, dtype=np.intp) if groups is None else np.asarray(groups, dtype=np.intp)
    G = 1 if model == "ols" else int(n_groups if n_groups is not None else codes.max() + 1)
    first_dof = None
    if model == "fixed" and kenward_roger:
        if first_level_dof is None:
            raise ValueError("model='fixed' with kenward_roger=True needs `first_level_dof`.")
        d = np.asarray(first_level_dof, dtype=np.float64)
        first_dof = np.broadcast_to(d, (n, 1)) if d.ndim == 0 else d.reshape(n, -1)  # (n, 1) or (n, v)
    if model == "mixed" and G == 1 and not kenward_roger and use_compiled_mixed(n * v, compiled):
        # (the kernel reads float32 and float64 as they are, without a float64 copy of the block)
        block = _fit_one_group_compiled(design, Y, _as_matrix(variances), max_iter, tol, contrasts)
        return _other_peak(design, Y, _as_matrix(variances), block, max_iter, tol, contrasts, kenward_roger, True)
    block = _fit_numpy(design, Y, variances, codes, model, G, max_iter, tol, contrasts, kenward_roger, first_dof)
    if model == "mixed" and G == 1:
        S = _as_matrix(variances)
        return _other_peak(design, Y, S, block, max_iter, tol, contrasts, kenward_roger, compiled)
    return block


def _fit_numpy(
    design, Y, variances, codes, model, G, max_iter, tol, contrasts, kenward_roger, first_dof=None
) -> MixedBlock:
    """:func:`fit_mixed_block` by the numpy path (every model; several variance groups); `first_dof`: fixed
    effects' first-level dof, (n, 1) or (n, v), for their Kenward-Roger terms (None: the weights taken as known)."""
    n, v = Y.shape
    Y = Y.astype(np.float64, copy=False)
    outcome = np.where(np.isfinite(Y).all(axis=0), OK, INVALID_DATA).astype(np.int8)
    S = None
    if model != "ols":
        S = np.asarray(variances, dtype=np.float64)
        S = S[:, None] if S.ndim == 1 else S
        with np.errstate(invalid="ignore"):
            good = (S > 0).all(axis=0) & np.isfinite(S).all(axis=0)
        outcome[(outcome == OK) & ~good] = BAD_VARIANCE

    out = _Outputs.empty(design.n_columns, v, G, len(contrasts))
    idx = np.flatnonzero(outcome == OK)
    if idx.size:
        # each voxel in its own units: effects divided by k (the root mean first-level variance; for ols, the
        # largest effect), so that sums of w^3 neither overflow nor underflow; the estimates are equivariant
        Yk = Y[:, idx]
        if S is None:
            k = np.abs(Yk).max(axis=0)
            k[k == 0] = 1.0
        else:
            k = np.sqrt(S[:, idx].mean(axis=0))
        Yk = Yk / k
        Sk = None if S is None else S[:, idx] / k**2
        with np.errstate(all="ignore"):  # (numbers that are not finite are caught below)
            if model == "ols":
                part = _fit_ols(design, Yk)
            elif model == "fixed":
                dof = first_dof if first_dof is None or first_dof.shape[1] == 1 else first_dof[:, idx]
                part = _fit_fixed(design, Yk, Sk, G, contrasts if dof is not None else (), dof)
            else:
                part = _fit_mixed(_Problem(design, codes, G), Yk, Sk, max_iter, tol, contrasts, kenward_roger)
            part.rescale(k, n - design.rank)
        finite = np.isfinite(part.betas).all(axis=0) & np.isfinite(part.covariance).all(axis=(1, 2))
        part.outcome[(part.outcome == OK) & ~(finite & np.isfinite(part.tau2).all(axis=0))] = NOT_CONVERGED
        out.place(idx, part)
        outcome[idx] = part.outcome
    return out.finish(outcome)


# first-level variances further apart than this in a voxel: its likelihood may have two peaks (none closer in an
# adversarial search: 4 to 40 subjects in two clusters of variances R-fold apart, effects 0.3 to 1000 apart, 76,000
# voxels per ratio; two peaks from R = 2.5 on, 3.5 for 4 subjects; random draws had missed them below n / 2-fold,
# 196 of log-likelihood below the highest for 40 subjects 19.8-fold apart)
_PEAK_RATIO = 2.0
_PEAK_STEP = 2.0  # the ratio of neighbouring points of tau2 where the likelihood is probed


def _other_peak(design, Y, S, block: MixedBlock, max_iter, tol, contrasts, kenward_roger, compiled) -> MixedBlock:
    """One variance group's REML, where the restricted likelihood has a second, higher peak: a subject of small
    first-level variance whose effect lies far from the others' holds tau2 at 0 (or at a low root of the score),
    while the effects' spread makes a higher maximum further in (8 subjects, variances 0.0024 to 2.1: tau2 0,
    t 47.6, log-likelihood -23.3, where tau2 7.2 gives t 0.96 and -12.1). With equal variances the likelihood has
    one peak. Where they differ more than _PEAK_RATIO-fold, it is probed at 0 and at points of tau2
    _PEAK_STEP-fold apart, from the least variance / 2 to 2 times the greatest or the unweighted residuals' moment
    estimate, and at 2 times that estimate (:func:`voxfit.core._mixed_kernels.probe_peaks`); where a point outside the
    estimate's bracket is higher than both its neighbours (a shallow peak between two points can be higher than
    both: 12 subjects, tau2 0 at -19.584 where 1.78 gives -19.574, and the 4-fold points 0.79 and 3.15 lower than
    either), or a point anywhere is higher than the estimate (inside its bracket too: a second peak there), the
    maximisation runs again from it, between its neighbours (a peak lies there), and the higher maximum is kept.
    Checked against a brute-force maximum (a fine grid of tau2, each peak refined) on adversarial and random voxels
    (``tests/test_mixed_core.py``)."""
    n, v = Y.shape
    ok = np.flatnonzero(block.outcome == OK)
    if not ok.size or n <= design.rank:
        return block
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # (over every voxel: no copy of the block)
        spread = S.max(axis=0) > _PEAK_RATIO * S.min(axis=0).astype(np.float64)
    ok = ok[spread[ok]]
    if not ok.size:
        return block
    problem = _Problem(design, np.zeros(n, dtype=np.intp), 1)
    estimate = block.tau2[0, ok].astype(np.float64)
    if use_compiled_mixed(n * ok.size, compiled):
        from ._mixed_kernels import probe_peaks

        found = np.empty((4, ok.size))
        Q = np.ascontiguousarray(problem.Q)
        residual_dof = n - design.rank
        in_chunks(
            lambda a, b: probe_peaks(Y, S, Q, ok[a:b], estimate[a:b], residual_dof, _PEAK_STEP, found[:, a:b]),
            ok.size,
            first=1024,
        )
    else:  # (small blocks, numba not loaded: as the fit, without loading it)
        found = _probe_peaks(problem, *_own_units(Y[:, ok], S[:, ok]), estimate)
    # a point higher than the estimate, or a peak of the points probed outside the estimate's bracket however high
    # (a shallow one between two points can be higher than both)
    higher = np.flatnonzero(found[3] > -np.inf)
    if not higher.size:
        return block
    Yk, Sk, k = _own_units(Y[:, ok[higher]], S[:, ok[higher]])
    start, lo, hi = found[:3, higher] / k**2
    with np.errstate(all="ignore"):
        part = _fit_mixed(problem, Yk, Sk, max_iter, tol, contrasts, kenward_roger, (start, lo, hi))
        part.rescale(k, n - design.rank)
    better = (part.outcome == OK) & (part.loglik > block.loglik[ok[higher]])
    at, src = ok[higher[better]], np.flatnonzero(better)
    if not at.size:
        return block
    betas, covariance = (
        _replaced(block.betas.T, at, part.betas.T[src]).T,
        _replaced(block.covariance, at, part.covariance[src]),
    )
    tau2, loglik = _replaced(block.tau2.T, at, part.tau2.T[src]).T, _replaced(block.loglik, at, part.loglik[src])
    iterations = _replaced(block.iterations, at, block.iterations[at] + part.iterations[src])
    dof = tuple(_replaced(d, at, new[src]) for d, new in zip(block.contrast_dof, part.contrast_dof))
    scale = tuple(_replaced(d, at, new[src]) for d, new in zip(block.contrast_scale, part.contrast_scale))
    return MixedBlock(betas, covariance, tau2, block.outcome, loglik, iterations, dof, scale)


def _own_units(Y, S) -> tuple[NDArray, NDArray, NDArray]:
    """Voxels' effects and first-level variances in float64, each voxel in its own units (as the fits: mean
    first-level variance 1), and the root of that mean, k, by which they were divided (k^2 for the variances)."""
    S = S.astype(np.float64)
    k = np.sqrt(S.mean(axis=0))
    return Y / k, S / k**2, k


def _probe_peaks(problem: _Problem, Y, S, k, estimate) -> NDArray:
    """:func:`voxfit.core._mixed_kernels.probe_peaks` with numpy, all voxels at each point at once (Y, S in their
    own units, k their scale, :func:`_own_units`; `estimate` in original units): the same points, the same (4, v)
    result."""
    estimate = estimate / k**2
    resid = Y - problem.Q @ (problem.Q.T @ Y)
    moment = np.einsum("iv,iv->v", resid, resid) / (Y.shape[0] - problem.r) - 1.0
    low, high = S.min(axis=0), S.max(axis=0)
    extra = _PEAK_STEP * moment
    top = _PEAK_STEP * np.maximum(high, extra)
    count = int(min(78, np.ceil(np.log(np.max(_PEAK_STEP * top / low)) / np.log(_PEAK_STEP)) + 1))
    points = (low / _PEAK_STEP) * _PEAK_STEP ** np.arange(count)[:, None]
    points = np.vstack([np.where(points <= top, points, np.inf), np.where(extra > 0, extra, np.inf)[None]])
    points.sort(axis=0)
    points = np.vstack([np.zeros((1, Y.shape[1])), points])  # (the boundary: a peak at or near it)
    with np.errstate(all="ignore"):
        here = problem.evaluate(estimate[None], Y, S, derivatives=False, loglik=True).loglik
        values = np.stack([problem.evaluate(t[None], Y, S, derivatives=False, loglik=True).loglik for t in points])
    finite = np.isfinite(points)
    values = np.where(finite & ~np.isnan(values), values, -np.inf)
    edge = np.full((1, Y.shape[1]), -np.inf)
    before, after = np.vstack([edge, values[:-1]]), np.vstack([values[1:], edge])
    lo = np.vstack([np.zeros_like(edge), points[:-1]])
    hi = np.vstack([points[1:], np.full_like(edge, np.inf)])  # (beyond the last finite point: inf)
    inner = np.vstack([finite[1:], np.zeros_like(finite[:1])])  # (a point before the last: 0 has none before it)
    peak = inner & (values >= before) & (values >= after)
    own = ((estimate > lo) | (np.arange(points.shape[0]) == 0)[:, None]) & (estimate < hi)
    eligible = finite & ((values > here + 1e-9 * np.maximum(1.0, np.abs(here))) | (peak & ~own))
    masked = np.where(eligible, values, -np.inf)
    at = masked.argmax(axis=0)
    columns = np.arange(Y.shape[1])
    none = ~eligible[at, columns]
    pick = lambda a: np.where(none, np.nan, a[at, columns] * k**2)  # noqa: E731
    return np.stack([pick(points), pick(lo), pick(hi), np.where(none, -np.inf, masked[at, columns] - here)])


def _replaced(values: NDArray, at: NDArray, new: NDArray) -> NDArray:
    out = values.copy()
    out[at] = new
    return out


def _as_matrix(a) -> NDArray:
    """(n, v) float32 or float64 in the machine's byte order (a 1-D array is one voxel), not copied when it is."""
    a = np.asarray(a)
    if a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        a = a.astype(np.float64)
    return a[:, None] if a.ndim == 1 else a


def use_compiled_mixed(n_elements: int, compiled: bool | None = None) -> bool:
    """The choice of the compiled kernel for a mixed model of one variance group: `compiled` when given, else
    whether the kernel is already loaded or the data (`n_elements` = subjects x voxels) are large enough to earn
    its loading."""
    if compiled is not None:
        return bool(compiled)
    from ._mixed_kernels import mixed_kernels_loaded

    return mixed_kernels_loaded() or n_elements >= AUTO_COMPILE_ELEMENTS


def _fit_one_group_compiled(design: DesignFactor, Y: NDArray, S: NDArray, max_iter: int, tol: float, contrasts):
    """``fit_mixed_block`` of a mixed model with one variance group, each voxel by the compiled kernel (the
    numpy path's steps: checks, the voxel's own units, flat voxels, REML, the GLS fit at the estimate), on spans
    of ~0.1 s of voxels so that a signal is handled between them."""
    from ._mixed_kernels import mixed_one_group

    n, v = Y.shape
    p, r = design.n_columns, design.rank
    out = (
        np.empty((p, v)),
        np.empty((v, p, p)),
        np.empty((1, v)),
        np.empty(v),
        np.empty(v, dtype=np.int32),
        np.empty(v, dtype=np.int8),
    )
    wanted = v if len(contrasts) else 0  # M^-1, T and the information, for the Satterthwaite dof
    extra = (np.empty((wanted, r, r)), np.empty((wanted, r, r)), np.empty(wanted))
    args = (*_kernel_design(design), max_iter, tol)

    def call(start: int, stop: int) -> None:
        mixed_one_group(Y, S, start, stop, *args, out, extra)

    in_chunks(call, v, first=1024)  # (~1 ms of work: two calls for a block of 4096 voxels)
    betas, covariance, tau2, loglik, iterations, outcome = out
    dof = []
    ok = np.flatnonzero(outcome == OK)
    for w in contrasts:
        d = np.full(v, np.nan)
        if ok.size:
            Minv, T, info = extra[0][ok], extra[1][ok], extra[2][ok]
            with np.errstate(all="ignore"):
                d[ok] = satterthwaite_dof(design.basis_pinv, w, Minv, T[None], info[:, None, None])
        dof.append(d)
    scale = tuple(np.where(np.isnan(d), np.nan, 1.0) for d in dof)
    return MixedBlock(betas, covariance, tau2, outcome, loglik, iterations, tuple(dof), scale)


def _kernel_design(design: DesignFactor) -> tuple:
    """What the kernel takes of a design, computed once per design (the engine calls it for every block): Q' and
    the products of its rows, zero-padded (rows to three for two or three columns, subjects to whole vectors),
    the betas from the basis, log pdet(X'X), and whether the design fits every subject exactly."""
    cached = _KERNEL_DESIGNS.get(design)
    if cached is not None:
        return cached
    n, r = design.basis.shape
    rows = 3 if r in (2, 3) else r  # (the kernel has one pass for up to three columns: zero rows beyond r)
    Qt = np.zeros((rows, -(-n // _KERNEL_LANES) * _KERNEL_LANES))
    Qt[:r, :n] = design.basis.T
    a, b = np.triu_indices(rows)
    flat_design = bool(n == r or (np.einsum("ia,ia->i", design.basis, design.basis) > _LEVERAGE_ONE).all())
    cached = (Qt, Qt[a] * Qt[b], np.ascontiguousarray(design.basis_pinv), _design_constant(design), flat_design)
    _KERNEL_DESIGNS[design] = cached
    return cached


# ---------------------------------------------------------------------------------------------------- outputs


@dataclass
class _Part:
    """Results of the voxels a fit was given (NaN already set where its own outcome is not OK)."""

    betas: NDArray
    covariance: NDArray
    tau2: NDArray
    outcome: NDArray
    loglik: NDArray
    iterations: NDArray
    contrast_dof: list
    contrast_scale: list

    def rescale(self, k: NDArray, dof: int) -> None:
        """Back to the data's units from effects divided by `k`: betas times k, variances times k^2, the
        restricted log-likelihood less ``(n - r) log k`` (the log-determinants of V and X'V^-1 X)."""
        self.betas *= k
        self.covariance *= (k**2)[:, None, None]
        self.tau2 *= k**2
        self.loglik -= dof * np.log(k)


@dataclass
class _Outputs:
    betas: NDArray
    covariance: NDArray
    tau2: NDArray
    loglik: NDArray
    iterations: NDArray
    contrast_dof: list
    contrast_scale: list

    @classmethod
    def empty(cls, p: int, v: int, G: int, n_contrasts: int) -> _Outputs:
        nan = np.nan
        return cls(
            np.full((p, v), nan),
            np.full((v, p, p), nan),
            np.full((G, v), nan),
            np.full(v, nan),
            np.zeros(v, dtype=np.int32),
            [np.full(v, nan) for _ in range(n_contrasts)],
            [np.full(v, nan) for _ in range(n_contrasts)],
        )

    def place(self, idx: NDArray, part: _Part) -> None:
        self.betas[:, idx], self.covariance[idx], self.tau2[:, idx] = part.betas, part.covariance, part.tau2
        self.loglik[idx], self.iterations[idx] = part.loglik, part.iterations
        for full, dof in zip(self.contrast_dof + self.contrast_scale, part.contrast_dof + part.contrast_scale):
            full[idx] = dof

    def finish(self, outcome: NDArray) -> MixedBlock:
        bad = outcome != OK
        self.betas[:, bad] = self.tau2[:, bad] = np.nan
        self.covariance[bad] = np.nan
        self.loglik[bad] = np.nan
        for dof in self.contrast_dof + self.contrast_scale:
            dof[bad] = np.nan
        return MixedBlock(
            self.betas,
            self.covariance,
            self.tau2,
            outcome,
            self.loglik,
            self.iterations,
            tuple(self.contrast_dof),
            tuple(self.contrast_scale),
        )


def _design_constant(design: DesignFactor) -> float:
    """``log pdet(X' X)``: the product of the squared non-zero singular values of X, in logs (``log|R R'|`` with
    ``R = Q' X``)."""
    R = design.basis.T @ design.X
    return float(np.linalg.slogdet(R @ R.T)[1])


def _flat_residuals(rss: NDArray, Y: NDArray) -> NDArray[np.bool_]:
    """Voxels whose effects the design fits exactly, to rounding: an RSS below ``(16 n eps)^2 sum y^2``."""
    n = Y.shape[0]
    return rss <= (16 * n * np.finfo(float).eps) ** 2 * np.einsum("iv,iv->v", Y, Y)


# ---------------------------------------------------------------------------------------------- ols and fixed


def _fit_ols(design: DesignFactor, Y: NDArray) -> _Part:
    """OLS on the effects: betas ``X^+ y``, sigma^2 = RSS / (n - r) (in ``tau2``), covariance sigma^2 (X'X)^+."""
    n, v = Y.shape
    r = design.rank
    coords = design.basis.T @ Y
    resid = Y - design.basis @ coords
    rss = np.einsum("iv,iv->v", resid, resid)
    dof = n - r
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = rss / dof if dof > 0 else np.full(v, np.nan)
        loglik = -0.5 * ((n - r) * (_LOG_2PI + np.log(sigma2) + 1) + _design_constant(design))
    flat = (dof == 0) | _flat_residuals(rss, Y)
    outcome = np.where(flat, FLAT, OK).astype(np.int8)
    covariance = sigma2[:, None, None] * design.cov_unscaled
    return _Part(design.pinv @ Y, covariance, sigma2[None], outcome, loglik, np.zeros(v, np.int32), [], [])


def _fit_fixed(design: DesignFactor, Y: NDArray, S: NDArray, G: int, contrasts=(), first_dof=None) -> _Part:
    """Precision-weighted least squares: betas ``(X'WX)^+ X'W y``, covariance ``(X'WX)^+``, W = diag(1 / s^2);
    tau2 = 0 in each of the G groups. With `first_dof` (n, 1) or (n, v), the covariance and each contrast's dof
    and F scale of :func:`fixed_kenward_roger`."""
    problem = _Problem(design, np.zeros(Y.shape[0], dtype=np.intp), 1)
    v = Y.shape[1]
    state = problem.evaluate(np.zeros((1, v)), Y, S, derivatives=False, loglik=True)
    covariance, dof, scale = state.Minv, [], []
    if first_dof is not None:
        covariance, dof, scale = fixed_kenward_roger(
            problem.Q, design.basis_pinv, 1.0 / S, state.Minv, first_dof, contrasts
        )
    betas, covariance = problem.betas(state, covariance)
    ones = np.ones(v, np.int32)
    return _Part(betas, covariance, np.zeros((G, v)), np.zeros(v, np.int8), state.loglik, ones, dof, scale)


def fixed_kenward_roger(Q: NDArray, B: NDArray, w: NDArray, Minv: NDArray, first_dof: NDArray, contrasts=()):
    """Fixed effects whose weights ``w_i = 1 / s_i^2`` are estimates, each s_i^2 on d_i first-level dof
    (``var(s_i^2) = 2 s_i^4 / d_i``) independent of the effects: the covariance of the coefficients on the basis,
    and each contrast's dof and F scale, by Kenward & Roger (1997, Biometrics 53:983) with the n first-level
    variances as the estimated covariance parameters.

    V = diag(s_i^2) is linear in them (their R term is 0), ``P_i = -w_i^2 q_i q_i'``, ``Q_ii = w_i^3 q_i q_i'`` and
    their covariance A is diagonal, ``A_ii = 2 / (w_i^2 d_i)``, so that with ``M^-1 = (Q'WQ)^-1`` (flameo's
    covariance) and the weighted leverages ``h_i = w_i q_i' M^-1 q_i`` the adjusted covariance is

        M^-1 + 4 M^-1 [sum_i w_i (1 - h_i) / d_i  q_i q_i'] M^-1.

    A subject of leverage 1 (a column of its own) adds nothing: its effect is its beta, whose variance is its own.
    For a contrast of rows L (weights times `B`, rank q), ``Theta = L' (L M^-1 L')^+ L`` (from the plug-in
    covariance, as :func:`kenward_roger_f`) and the subjects' shares ``g_i = w_i q_i' M^-1 Theta M^-1 q_i``
    (summing to q; for one row c, ``w_i (c' M^-1 q_i)^2 / c' M^-1 c``), each P_i is of rank one, so Kenward and
    Roger's A1 and A2 are equal: ``A1 = A2 = 2 sum_i g_i^2 / d_i``. One row: Satterthwaite's dof
    ``2 / A1 = 1 / sum_i g_i^2 / d_i`` and no scale; several: Kenward & Roger's m and lambda, passing to
    Satterthwaite's dof where their expansion fails (:func:`voxfit.core.distributions.kenward_roger_or_satterthwaite`;
    an F of one independent row is its t's square on the t's dof). For X a column of ones, ``h_i = g_i = f_i``,
    each subject's share of the precision: Meier's (1953) factor ``1 + 4 sum_i f_i (1 - f_i) / d_i`` and
    effective dof ``1 / sum_i f_i^2 / d_i``, as runs combine (``voxfit.models.runs.fixed_effects``). As every
    d_i grows, the plain covariance and a normal (chi2 / q) reference.

    Parameters: `Q` (n, r) the design's orthonormal basis, `B` (p, r) the betas from its coefficients, `w` (n, v)
    the weights, `Minv` (v, r, r), `first_dof` (n, 1) or (n, v), `contrasts` (q, p) weights. Returns the
    adjusted covariance (v, r, r) and a list per contrast of its dof (v,) and of its F scale lambda (v,).
    """
    n, r = Q.shape
    v = w.shape[1]
    QQ = (Q[:, :, None] * Q[:, None, :]).reshape(n, r * r)

    def subject_terms(K: NDArray) -> NDArray:
        """``w_i q_i' K q_i`` for every subject and voxel (n, v), K (v, r, r)."""
        return w * (QQ @ K.reshape(v, r * r).T)

    # (1 - h_i is 0 for a subject the design fits exactly; rounding below 0 would narrow the covariance)
    spread = np.maximum(1.0 - subject_terms(Minv), 0.0)
    inner = ((4.0 * w * spread / first_dof).T @ QQ).reshape(v, r, r)
    adjusted = Minv + Minv @ inner @ Minv
    dofs, scales = [], []
    for weights in contrasts:
        L = np.asarray(weights, dtype=np.float64) @ B  # (q, r)
        q = int(np.linalg.matrix_rank(L))
        shares = subject_terms(Minv @ _theta(L, Minv) @ Minv)
        A = 2.0 * np.sum(shares * shares / first_dof, axis=0)
        if len(L) == 1:
            with np.errstate(divide="ignore"):
                dofs.append(2.0 / A)
            scales.append(np.ones(v))
        else:
            m, lam = kenward_roger_or_satterthwaite(q, A, A)
            dofs.append(m)
            scales.append(lam)
    return adjusted, dofs, scales


def _theta(L: NDArray, Minv: NDArray) -> NDArray:
    """Kenward & Roger's ``Theta = L' (L M^-1 L')^+ L`` (v, r, r) of the contrast rows `L` (q, r), from the plug-in
    covariance `Minv` (v, r, r)."""
    between = np.linalg.pinv(np.einsum("qa,vab,sb->vqs", L, Minv, L), hermitian=True)
    return np.einsum("qa,vqs,sb->vab", L, between, L)


# ------------------------------------------------------------------------------------------------ mixed: REML


@dataclass
class _State:
    """The restricted likelihood and its derivatives at tau2 for v voxels (see the module's docstring)."""

    tau2: NDArray  # (G, v)
    Minv: NDArray  # (v, r, r)
    gamma: NDArray  # (v, r): the GLS coefficients on the basis Q
    score: NDArray | None = None  # (G, v)
    info: NDArray | None = None  # (v, G, G) Fisher information
    hess: NDArray | None = None  # (v, G, G) second derivatives of l_R
    T: NDArray | None = None  # (G, v, r, r): dM/dtau_g = -T_g
    U: NDArray | None = None  # (G, v, r, r): sum over group g of w_i^3 q_i q_i'
    loglik: NDArray | None = None  # (v,)


class _Problem:
    """The design side of a mixed model, computed once per block: basis Q (n, r), the products ``q_i q_i'`` as
    (n, r^2), the rows of each variance group."""

    def __init__(self, design: DesignFactor, codes: NDArray, G: int):
        self.design = design
        self.Q = np.ascontiguousarray(design.basis)
        n, r = self.Q.shape
        self.r = r
        self.QQ = np.ascontiguousarray((self.Q[:, :, None] * self.Q[:, None, :]).reshape(n, r * r))
        self.rows = [np.flatnonzero(codes == g) for g in range(G)]
        # P D_g = W (I - X (X'WX)^-1 X'W) D_g is 0, whatever W, when every unit vector of group g lies in the
        # column space of X (leverage 1): the likelihood does not depend on tau2_g
        leverage = np.einsum("ia,ia->i", self.Q, self.Q)
        self.absorbed = [bool((leverage[rows] > _LEVERAGE_ONE).all()) for rows in self.rows]
        self.codes = codes
        self.G = G
        self.constant = _design_constant(design)

    def evaluate(self, tau2: NDArray, Y: NDArray, S: NDArray, *, derivatives: bool = True, loglik: bool = False):
        """The GLS fit at `tau2` (G, v) of the voxels `Y`, `S` (n, v), with the score, Fisher information and
        Hessian when `derivatives`, and the restricted log-likelihood when `loglik`."""
        n, v = Y.shape
        r, Q, QQ = self.r, self.Q, self.QQ
        total = S + tau2[self.codes] if self.G > 1 else S + tau2[0]
        w = 1.0 / total
        Minv, logdet = _spd_inverse((w.T @ QQ).reshape(v, r, r))
        gamma = np.einsum("vab,vb->va", Minv, (w * Y).T @ Q)
        resid = Y - Q @ gamma.T
        wr = w * resid
        state = _State(tau2, Minv, gamma)
        if loglik:
            quad = np.einsum("iv,iv->v", wr, resid)
            state.loglik = -0.5 * ((n - r) * _LOG_2PI + np.log(total).sum(axis=0) + logdet + self.constant + quad)
        if not derivatives:
            return state
        G = self.G
        score = np.empty((G, v))
        info = np.empty((v, G, G))
        hess = np.empty((v, G, G))
        T = np.empty((G, v, r, r))
        U = np.empty((G, v, r, r))
        MT, z = [], []
        for g, rows in enumerate(self.rows):
            wg, wrg = (w, wr) if G == 1 else (w[rows], wr[rows])
            QQg, Qg = (QQ, Q) if G == 1 else (QQ[rows], Q[rows])
            w2 = wg * wg
            T[g] = (w2.T @ QQg).reshape(v, r, r)
            U[g] = ((w2 * wg).T @ QQg).reshape(v, r, r)
            MT.append(Minv @ T[g])
            wr2 = wrg * wrg
            score[g] = -0.5 * (wg.sum(axis=0) - np.einsum("vaa->v", MT[g]) - wr2.sum(axis=0))
            info[:, g, g] = w2.sum(axis=0) - 2 * np.einsum("vab,vba->v", Minv, U[g])
            hess[:, g, g] = np.einsum("iv,iv->v", wg, wr2)  # (W r)' D_g W D_g (W r), the K_gg term's first part
            z.append((wg * wrg).T @ Qg)
        for g in range(G):
            for h in range(g, G):
                both = 0.5 * np.einsum("vab,vba->v", MT[g], MT[h])
                proj = np.einsum("va,vab,vb->v", z[g], Minv, z[h])
                if g == h:
                    info[:, g, g] = 0.5 * info[:, g, g] + both
                    hess[:, g, g] = info[:, g, g] - (hess[:, g, g] - proj)
                else:
                    info[:, g, h] = info[:, h, g] = both
                    hess[:, g, h] = hess[:, h, g] = both + proj
        state.score, state.info, state.hess, state.T, state.U = score, info, hess, T, U
        return state

    def betas(self, state: _State, basis_covariance: NDArray) -> tuple[NDArray, NDArray]:
        """Betas (p, v) and their covariance (v, p, p) from the coefficients on the basis and their covariance
        (v, r, r): ``X^+ Q gamma``."""
        B = self.design.basis_pinv
        return B @ state.gamma.T, np.einsum("ia,vab,jb->vij", B, basis_covariance, B, optimize=True)


def _spd_inverse(M: NDArray) -> tuple[NDArray, NDArray]:
    """Inverses and log-determinants of symmetric positive definite matrices (v, r, r): for r <= 4 by a
    Cholesky factorisation written out over the stack (LAPACK's per-matrix calls cost more than the arithmetic
    for such sizes), else by numpy.linalg. A matrix that is not positive definite gets NaN."""
    v, r, _ = M.shape
    if r > 4:
        sign, logdet = np.linalg.slogdet(M)
        try:
            inverse = np.linalg.inv(M)
        except np.linalg.LinAlgError:  # some matrix is singular to working precision: NaN for it
            inverse = np.full_like(M, np.nan)
            good = np.flatnonzero((sign > 0) & (np.linalg.cond(M) < 1 / np.finfo(float).eps))
            inverse[good] = np.linalg.inv(M[good])
        return inverse, np.where(sign > 0, logdet, np.nan)
    L = np.zeros_like(M)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(r):
            L[:, j, j] = np.sqrt(M[:, j, j] - np.einsum("vk,vk->v", L[:, j, :j], L[:, j, :j]))
            for i in range(j + 1, r):
                L[:, i, j] = (M[:, i, j] - np.einsum("vk,vk->v", L[:, i, :j], L[:, j, :j])) / L[:, j, j]
        Linv = np.zeros_like(M)  # L^-1, lower triangular, by forward substitution
        for j in range(r):
            Linv[:, j, j] = 1.0 / L[:, j, j]
            for i in range(j + 1, r):
                Linv[:, i, j] = -np.einsum("vk,vk->v", L[:, i, j:i], Linv[:, j:i, j]) / L[:, i, i]
        logdet = 2 * np.log(np.einsum("vjj->vj", L)).sum(axis=1)
    return np.einsum("vki,vkj->vij", Linv, Linv), logdet


def _fit_mixed(
    problem: _Problem, Y: NDArray, S: NDArray, max_iter: int, tol: float, contrasts, kenward_roger: bool, start=None
) -> _Part:
    """REML for the voxels `Y`, `S` (all finite, variances positive), then the GLS fit at the estimate, its
    covariance adjusted by :func:`kenward_roger_covariance` when `kenward_roger`; one group's from `start`, (tau2,
    lo, hi) each (v,), when given (see :func:`_other_peak`)."""
    n, v = Y.shape
    G = problem.G
    outcome = np.zeros(v, dtype=np.int8)
    tau2 = np.zeros((G, v))
    iterations = np.zeros(v, dtype=np.int32)
    # (effects the design fits exactly, all equal in a one-sample test, are not flat: the restricted likelihood falls
    # from tau2 = 0, where the score is -tr(P) / 2 < 0, and the estimate is 0, as metafor's; they had been NaN)
    flat = np.full(v, (n == problem.r) or any(problem.absorbed))
    outcome[flat] = FLAT
    live = np.flatnonzero(~flat)
    if live.size:
        scale = S[:, live].mean(axis=0)  # the absolute part of the tolerance: tau2 near 0
        if start is not None:
            within = tuple(np.asarray(a)[live] for a in start)
            t, it, status = _solve_one_group(problem, Y[:, live], S[:, live], scale, max_iter, tol, within)
        else:
            solve = _solve_one_group if G == 1 else _solve_groups
            t, it, status = solve(problem, Y[:, live], S[:, live], scale, max_iter, tol)
        tau2[:, live], iterations[live], outcome[live] = t, it, status
    state = problem.evaluate(tau2, Y, S, derivatives=bool(len(contrasts)) or kenward_roger, loglik=True)
    B = problem.design.basis_pinv
    dof, scale = [], []
    for w in contrasts:
        if kenward_roger and len(w) > 1:
            m, lam = kenward_roger_f(B, w, state.Minv, state.T, state.info)
        else:
            m, lam = satterthwaite_dof(B, w, state.Minv, state.T, state.info), np.ones(v)
        dof.append(np.minimum(m, n - problem.r) if kenward_roger else m)  # (at most what the data hold)
        scale.append(lam)
    betas, covariance = problem.betas(state, kenward_roger_covariance(state) if kenward_roger else state.Minv)
    return _Part(betas, covariance, tau2, outcome, state.loglik, iterations + 1, dof, scale)


def _solve_one_group(problem: _Problem, Y, S, scale, max_iter: int, tol: float, start=None):
    """tau2 (1, v) of one variance group: 0 where the score at 0 is <= 0, else the score's root by safeguarded
    Newton; with the iterations and outcome of each voxel. From `start`, (tau2, lo, hi) each (v,), when given:
    safeguarded Newton from tau2 in the bracket [lo, hi]."""
    v = Y.shape[1]
    tau2 = np.zeros((1, v))
    iterations = np.ones(v, dtype=np.int32)
    outcome = np.zeros(v, dtype=np.int8)
    if start is None:
        state = problem.evaluate(tau2, Y, S)
        act = np.flatnonzero(state.score[0] > 0)
        t = _start(problem, Y, S, state, act)
        lo, hi = np.zeros(act.size), np.full(act.size, np.inf)
    else:
        act, (t, lo, hi) = np.arange(v), (np.array(a, dtype=np.float64) for a in start)
    for _ in range(max_iter):
        if not act.size:
            break
        iterations[act] += 1
        st = problem.evaluate(t[None], Y[:, act], S[:, act])
        s, h, fisher = st.score[0], st.hess[:, 0, 0], st.info[:, 0, 0]
        lo = np.where(s > 0, t, lo)
        hi = np.where(s <= 0, t, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(h < 0, -s / h, s / fisher)
        new = t + step
        outside = ~((new > lo) & (new < hi))
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = (np.abs(new - t) <= tol * (t + scale[act])) | (s == 0)
        tau2[0, act[done]] = t[done]
        keep = ~done
        act, t, lo, hi = act[keep], new[keep], lo[keep], hi[keep]
    outcome[act] = NOT_CONVERGED
    tau2[0, act] = t
    return tau2, iterations, outcome


def _start(problem: _Problem, Y, S, state: _State, act: NDArray) -> NDArray:
    """The first tau2 of one group's voxels `act`, whose score at 0 (`state`) is positive: the moment estimate
    (DerSimonian-Laird's, generalised: ``E r'Wr = n - r + tau2 tr P`` at 0) where positive, else a Fisher step from
    0 (positive, as the score)."""
    w = 1.0 / S[:, act]
    resid = Y[:, act] - problem.Q @ state.gamma[act].T
    trace_p = w.sum(axis=0) - np.einsum("vab,vba->v", state.Minv[act], state.T[0, act])
    with np.errstate(divide="ignore", invalid="ignore"):
        moment = (np.einsum("iv,iv,iv->v", w, resid, resid) - (Y.shape[0] - problem.r)) / trace_p
    return np.where(moment > 0, moment, state.score[0, act] / state.info[act, 0, 0])


def _solve_groups(problem: _Problem, Y, S, scale, max_iter: int, tol: float):
    """tau2 (G, v) of several variance groups by projected Newton / Fisher scoring with Armijo steps."""
    G = problem.G
    v = Y.shape[1]
    tau2 = np.zeros((G, v))
    iterations = np.ones(v, dtype=np.int32)
    outcome = np.zeros(v, dtype=np.int8)
    start = _moment_start(problem, Y, S)
    state = problem.evaluate(start, Y, S, loglik=True)
    act = np.arange(v)
    t, st = start, state
    for _ in range(max_iter):
        if not act.size:
            break
        iterations[act] += 1
        direction = _projected_direction(t, st)
        new, new_state, moved = _armijo(problem, Y[:, act], S[:, act], t, st, direction)
        change = np.abs(new - t).max(axis=0)
        kkt = ((new > 0) | (new_state.score <= 0)).all(axis=0)
        done = (change <= tol * (new.max(axis=0) + scale[act])) & (kkt | ~moved)  # (no ascent left: a maximum)
        tau2[:, act[done]] = new[:, done]
        keep = ~done
        act, t, st = act[keep], new[:, keep], _take(new_state, np.flatnonzero(keep))
    outcome[act] = NOT_CONVERGED
    tau2[:, act] = t
    return tau2, iterations, outcome


def _moment_start(problem: _Problem, Y: NDArray, S: NDArray) -> NDArray:
    """A starting tau2 (G, v) for several groups: in each, the mean squared OLS residual (scaled by n / (n - r))
    less the mean first-level variance, bounded at 0."""
    n = Y.shape[0]
    resid = Y - problem.Q @ (problem.Q.T @ Y)
    resid *= np.sqrt(n / max(n - problem.r, 1))
    return np.stack([np.maximum(0, (resid[rows] ** 2 - S[rows]).mean(axis=0)) for rows in problem.rows])


def _take(state: _State, idx: NDArray) -> _State:
    """The voxels `idx` of a state (what the Armijo search needs: tau2, score, info, hess, loglik)."""
    return _State(
        state.tau2[:, idx],
        state.Minv[idx],
        state.gamma[idx],
        score=state.score[:, idx],
        info=state.info[idx],
        hess=state.hess[idx],
        loglik=state.loglik[idx],
    )


def _projected_direction(t: NDArray, st: _State) -> NDArray:
    """The Newton step (Fisher step where -Hessian is not positive definite) on the free groups (tau2 > 0 or a
    positive score), 0 on the others; (G, v)."""
    G, v = t.shape
    free = (t > 0) | (st.score > 0)  # (G, v)
    mask = (free.T[:, :, None] & free.T[:, None, :]).astype(float)
    eye = np.broadcast_to(np.eye(G), (v, G, G))
    fixed = eye * (~free.T)[:, :, None]
    newton = -st.hess * mask + fixed
    fisher = st.info * mask + fixed
    definite = np.linalg.eigvalsh(newton)[:, 0] > 0
    A = np.where(definite[:, None, None], newton, fisher)
    diag = np.sqrt(np.abs(np.einsum("vgg->vg", A))) + (np.einsum("vgg->vg", A) == 0)
    scaled = A / diag[:, :, None] / diag[:, None, :]  # a Jacobi scaling before the solve
    rhs = np.where(free, st.score, 0.0).T / diag
    return (np.linalg.solve(scaled, rhs[:, :, None])[:, :, 0] / diag).T


def _armijo(problem: _Problem, Y, S, t, st: _State, direction):
    """The projected step ``max(0, t + a d)`` with a halved until the restricted likelihood rises by Armijo's
    rule; then a projected gradient step scaled by the Fisher information's diagonal. Returns the new tau2,
    its state, and whether each voxel moved."""
    G, v = t.shape
    new, new_state = t.copy(), _take(st, np.arange(v))
    pending = np.arange(v)
    alpha = np.ones(v)
    diag = np.maximum(np.einsum("vgg->gv", st.info), np.finfo(float).tiny)
    d = direction
    for k in range(2 * _HALVINGS):
        if k == _HALVINGS:  # the Newton/Fisher direction failed: the scaled gradient
            d = st.score / diag
            alpha[pending] = 1.0
        trial = np.maximum(0.0, t[:, pending] + alpha[pending] * d[:, pending])
        trial_state = problem.evaluate(trial, Y[:, pending], S[:, pending], loglik=True)
        gain = trial_state.loglik - st.loglik[pending]
        rise = np.einsum("gv,gv->v", st.score[:, pending], trial - t[:, pending])
        ok = gain >= _ARMIJO * rise - 1e-12 * np.abs(st.loglik[pending])
        if ok.any():
            at = pending[ok]
            new[:, at] = trial[:, ok]
            _put(new_state, at, trial_state, np.flatnonzero(ok))
        pending = pending[~ok]
        alpha[pending] *= 0.5
        if not pending.size:
            break
    moved = np.ones(v, dtype=bool)
    moved[pending] = False
    return new, new_state, moved


def _put(state: _State, at: NDArray, source: _State, idx: NDArray) -> None:
    state.tau2[:, at], state.Minv[at], state.gamma[at] = source.tau2[:, idx], source.Minv[idx], source.gamma[idx]
    state.score[:, at], state.info[at], state.hess[at] = source.score[:, idx], source.info[idx], source.hess[idx]
    state.loglik[at] = source.loglik[idx]


# ------------------------------------------------------------------------- small samples: Kenward-Roger, Satterthwaite


def kenward_roger_covariance(state: _State) -> NDArray:
    """The covariance of the GLS coefficients on the basis (v, r, r), adjusted for the estimation of tau2.

    The plug-in ``M^-1`` (M = Q' W Q at the REML estimate) takes the weights as known and is too small where
    each tau2 comes from a few subjects. Kenward & Roger's (1997, Biometrics 53:983) adjustment for a covariance
    linear in its parameters (V = diag(s^2) + sum_g tau2_g D_g, so their R_gh term is 0):

        M^-1 + 2 M^-1 [sum_g,h A_gh (Q_gh - T_g M^-1 T_h)] M^-1,    Q_gg = U_g, Q_gh = 0 for g != h,

    A the inverse Fisher information of tau2, over the groups whose estimate is positive: a group at the
    boundary (tau2_g = 0) is taken as known, its variance of estimation not added: with the whole information
    the adjustment made t conservative where estimates sit at 0 (null data of 4 groups of 5, first-level
    variances 0.05-0.2, tau2 0.1, 20,000 voxels: 2.2% below two-sided p < 0.05; with the positive groups alone
    4.4%; n - rank and the plug-in 9.3%; validation/variance_groups.py has the default's rates). The bracket is
    ``sum A_gh (W D_g Q)' P (W D_h Q)``, positive semi-definite, so the adjustment only widens the covariance.
    """
    Minv, T = state.Minv, state.T
    positive = (state.tau2 > 0).T  # (v, G)
    A = np.linalg.pinv(state.info * positive[:, :, None] * positive[:, None, :], hermitian=True)
    G = len(T)
    inner = np.einsum("vg,gvab->vab", np.einsum("vgg->vg", A), state.U)
    MT = Minv @ T  # (G, v, r, r)
    for g in range(G):
        for h in range(G):
            inner -= A[:, g, h, None, None] * (T[g] @ MT[h])
    return Minv + 2 * Minv @ inner @ Minv


def satterthwaite_dof(B: NDArray, weights: NDArray, Minv: NDArray, T: NDArray, info: NDArray) -> NDArray:
    """Satterthwaite degrees of freedom of a contrast at each voxel of a mixed model.

    For one row c: ``nu = 2 var(c'b)^2 / (g' I^-1 g)`` with ``var(c'b) = a' M^-1 a`` (``a = B' c``, B the betas
    from the basis coefficients), ``g_k = d var / d tau2_k = (M^-1 a)' T_k (M^-1 a)`` and I the Fisher
    information of the REML estimates (Satterthwaite 1946; Giesbrecht & Burns 1985; the denominator dof of
    Kenward & Roger 1997 without their bias correction; lmerTest's "Satterthwaite", Kuznetsova et al. 2017,
    J. Stat. Softw. 82(13)). At tau2 = 0 the information of every group is used, as if the estimate were
    interior. For several rows (F), lmerTest's rule after Fai & Cornelius (1996): the rows are rotated to the
    eigenvectors of their covariance, each gets its nu_m, and ``nu = 2E / (E - q)`` with
    ``E = sum nu_m / (nu_m - 2)`` (2 if some ``nu_m <= 2``; their mean if all are equal).
    """
    L = weights @ B  # (q, r)
    cov = np.einsum("qa,vab,sb->vqs", L, Minv, L)
    Iinv = np.linalg.pinv(info, hermitian=True)
    if L.shape[0] == 1:
        return _one_row_dof(np.broadcast_to(L[0], (Minv.shape[0], L.shape[1])), Minv, T, Iinv)
    evals, evecs = np.linalg.eigh(cov)
    keep = evals > evals[:, -1:] * max(cov.shape[1:]) * np.finfo(float).eps
    nus = np.stack([_one_row_dof(np.einsum("vq,qa->va", evecs[:, :, m], L), Minv, T, Iinv) for m in range(len(L))])
    nus = np.where(keep.T, nus, np.nan)  # (q, v)
    q = keep.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        E = np.nansum(nus / (nus - 2), axis=0)
        dof = np.where(np.nanmin(nus, axis=0) <= 2, 2.0, 2 * E / (E - q))
        same = (np.nanmax(nus, axis=0) - np.nanmin(nus, axis=0)) <= 1e-8 * np.nanmax(nus, axis=0)
    return np.where(same, np.nanmean(nus, axis=0), dof)


def kenward_roger_f(B: NDArray, weights: NDArray, Minv: NDArray, T: NDArray, info: NDArray):
    """Kenward & Roger's (1997) denominator dof m and scale lambda of an F contrast at each voxel: ``lambda F``
    (F from the adjusted covariance, :func:`kenward_roger_covariance`) is referred to F(q, m).

    With ``Theta = L' (L M^-1 L')^+ L`` (L = weights B, of rank q), ``K_g = Theta M^-1 T_g M^-1`` and A the
    inverse Fisher information of tau2: ``A1 = sum A_gh tr K_g tr K_h``, ``A2 = sum A_gh tr(K_g K_h)``, then
    their B, g, c1-c3, V*, E*, rho, ``m = 4 + (q + 2) / (q rho - 1)`` and ``lambda = m / (E* (m - 2))``. Unlike
    the rule of Fai & Cornelius (:func:`satterthwaite_dof`), m and lambda do not depend on how the contrast's rows
    are written. Theta is taken from the plug-in covariance (as in pbkrtest's ``.KR_adjust``, R's reference for
    KRmodcomp and lmerTest: ``solve(L Phi L', L)``, Phi = vcov), so that one row gives lambda = 1 and m =
    Satterthwaite's dof of its t, exactly (A1 = A2 = g'Ag / var^2, m = 2 / A1). Where the approximation fails (m or
    lambda not positive, or not finite) m = 2 and lambda = 1, a conservative reference."""
    L = weights @ B  # (q, r)
    q = int(np.linalg.matrix_rank(L))
    Theta = _theta(L, Minv)
    A = np.linalg.pinv(info, hermitian=True)
    K = [Theta @ Minv @ Tg @ Minv for Tg in T]
    tr = np.stack([np.einsum("vaa->v", k) for k in K])  # (G, v)
    A1 = np.einsum("gv,vgh,hv->v", tr, A, tr)
    A2 = sum(A[:, g, h] * np.einsum("vab,vba->v", K[g], K[h]) for g in range(len(K)) for h in range(len(K)))
    m, lam, _ = kenward_roger_reference(q, A1, A2)
    good = np.isfinite(m) & np.isfinite(lam) & (m > 0) & (lam > 0)
    return np.where(good, m, 2.0), np.where(good, lam, 1.0)


def _one_row_dof(a: NDArray, Minv: NDArray, T: NDArray, Iinv: NDArray) -> NDArray:
    """``2 (a' M^-1 a)^2 / (g' I^-1 g)`` for rows a (v, r)."""
    u = np.einsum("vab,vb->va", Minv, a)
    var = np.einsum("va,va->v", a, u)
    g = np.einsum("va,gvab,vb->vg", u, T, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * var**2 / np.einsum("vg,vgh,vh->v", g, Iinv, g)


# ------------------------------------------------------------------------------------- a model of no columns


def no_fixed_effects(n: int) -> DesignFactor:
    """The design of a model without fixed effects (n rows, no columns), for :func:`fit_mixed_block`: the reduced
    model of a one-sample test. Its restricted likelihood is the likelihood, ``-1/2 [n log 2 pi + log|V| +
    y' V^-1 y]``, so tau2 depends on the effects only through their squares (sign-flips leave it unchanged)."""
    empty = np.zeros((n, 0))
    return DesignFactor(
        X=empty,
        names=(),
        rank=0,
        pinv=np.zeros((0, n)),
        cov_unscaled=np.zeros((0, 0)),
        null_space=np.zeros((0, 0)),
        col_scale=np.zeros(0),
        basis=empty,
        basis_pinv=np.zeros((0, 0)),
        has_intercept=False,
        ones_residual=np.ones(n),
        condition=1.0,
    )
