"""``voxfit.mixed_effects``: group models on summary statistics (effects and their first-level variances), block
by block on all cores; the estimation is ``voxfit.core.mixed``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import check_data_matrix, check_same_rows
from .._execution import Execution
from .._memory import check_memory
from .._progress import Progress
from .._threads import blas_single_threaded, resolve_workers, run_in_threads
from ..core import DesignFactor, Stats, check_contrast, factorize
from ..core._kernels import compile_kernels
from ..core.contrast import f_stats, t_stats
from ..core.mixed import MODELS, OK, OUTCOMES, MixedBlock, fit_mixed_block, use_compiled_mixed
from ..core.mixed_outliers import OutlierBlock, fit_outlier_block
from ..exceptions import DegreesOfFreedomWarning, DesignWarning, InputError

__all__ = ["MixedFit", "mixed_effects"]

_MAX_BLOCK = 4096  # voxels per block: enough to amortise Python's overhead, small enough to stay in cache
_SMALL_GROUP = 10  # variance groups of fewer subjects are warned of (validation/variance_groups.py)
_DOF_KINDS = ("residual", "satterthwaite", "kenward-roger")


@dataclass(frozen=True, eq=False)
class MixedFit:
    """A group model fitted to V voxels. Arrays are read-only; NaN wherever ``valid`` is False.

    Attributes
    ----------
    model : {'mixed', 'fixed', 'ols'}
    names : tuple of str
        Design column names, one per row of ``betas``.
    betas : (p, V) array
        Fixed effects: GLS with the total variance (mixed), precision-weighted (fixed), OLS (ols).
    beta_covariance : (V, p, p) array
        Their covariance: ``(X' V^-1 X)^-1`` (mixed, fixed; the pseudo-inverse for a rank-deficient design),
        ``sigma^2 (X'X)^+`` (ols); with ``dof="kenward-roger"`` adjusted for the estimation of the variances
        (mixed: tau2, ``voxfit.core.mixed.kenward_roger_covariance``; fixed: the first-level variances,
        ``voxfit.core.mixed.fixed_kenward_roger``).
    between_variance : (G, V) array
        The between-subject variance tau2 of each variance group (REML, >= 0) for mixed; 0 for fixed; for ols
        the residual variance sigma^2 (G = 1).
    groups : tuple
        The variance groups' labels, in the order of the rows of ``between_variance``.
    dof : float or (V,) array
        The model's residual degrees of freedom, those of ``dof="residual"``: ``n - rank`` (mixed, ols; fixed
        without first-level dof), or the sum of the first-level dof minus the rank (fixed, flameo's; per voxel
        for dof per subject and voxel). With ``dof="satterthwaite"`` or ``"kenward-roger"`` each contrast's own
        per-voxel dof is in ``contrasts[label].dof``, and these are not used.
    valid : (V,) bool array
        Voxels fitted (``outcome == 0``).
    outcomes : dict of str to int
        For each outcome other than fitted, in words, the number of voxels it applies to (empty when every
        voxel was fitted).
    contrasts : dict of str to Stats
        t (one row) or F (several rows) of each contrast asked for, z and p in log space as everywhere.
    outcome : (V,) int8 array
        Each voxel's outcome code (``voxfit.core.mixed.OUTCOMES``).
    log_likelihood : (V,) array
        The restricted log-likelihood at the estimate.
    iterations : (V,) int array
        Evaluations of the likelihood and its derivatives per voxel.
    design : DesignFactor
        The factorised design.
    dof_kind : {'residual', 'satterthwaite', 'kenward-roger'}
    outlier_probability : (n, V) array or None
        With ``outliers=True``: each subject's posterior probability of being an outlier at each voxel (rows in
        the design's order; 0 where the voxel has no outlier population); None otherwise. ``between_variance``
        is then the population's tau2 (REML given these probabilities), ``log_likelihood`` the mixture's
        log-likelihood (not restricted) and ``iterations`` those of the ECM algorithm
        (``voxfit.core.mixed_outliers``).
    outlier_prior : (V,) array or None
        The prior probability pi of an outlier at each voxel (at most 0.25; 0: no outlier population).
    outlier_variance : (V,) array or None
        The outlier population's variance beyond tau2 (omega; 0 where pi is 0).
    """

    model: str
    names: tuple[str, ...]
    betas: NDArray[np.float64]
    beta_covariance: NDArray[np.float64]
    between_variance: NDArray[np.float64]
    groups: tuple
    dof: float | NDArray[np.float64]
    valid: NDArray[np.bool_]
    outcomes: dict[str, int]
    contrasts: dict[str, Stats]
    outcome: NDArray[np.int8]
    log_likelihood: NDArray[np.float64]
    iterations: NDArray[np.int32]
    design: DesignFactor
    dof_kind: str = "residual"
    outlier_probability: NDArray[np.float64] | None = None
    outlier_prior: NDArray[np.float64] | None = None
    outlier_variance: NDArray[np.float64] | None = None

    @property
    def mean_outliers(self) -> float | None:
        """The expected number of outlying subjects per fitted voxel (the mean over voxels of the sum of the
        subjects' outlier probabilities); None without outlier inference."""
        if self.outlier_probability is None:
            return None
        fitted = self.outlier_probability[:, self.valid]
        return float(fitted.sum(axis=0).mean()) if fitted.size else 0.0


@dataclass(frozen=True, eq=False)
class _MixedProblem:
    """The checked arguments of :func:`mixed_effects`."""

    design: DesignFactor
    effects: object  # (n, V) array-like, read a block at a time
    variances: object | None
    codes: NDArray[np.intp]
    labels: tuple
    model: str
    weights: dict[str, NDArray[np.float64]]
    dof: float | NDArray[np.float64]
    dof_kind: str
    execution: Execution
    workers: int
    outliers: bool = False
    first_level_dof: NDArray[np.float64] | None = None  # (n, 1) or (n, V): fixed effects' Kenward-Roger terms'


def mixed_effects(
    X,
    effects,
    variances=None,
    contrasts=None,
    *,
    names=None,
    groups=None,
    model: str = "mixed",
    first_level_dof=None,
    dof: str | None = None,
    outliers: bool = False,
    execution: Execution | None = None,
    max_memory=None,
    n_jobs: int | None = None,
    progress: bool | None = None,
    scheduler=None,
) -> MixedFit:
    r"""Fit a group model to every voxel from the subjects' effects and first-level variances.

    ``mixed`` (FSL FLAME1, AFNI 3dMEMA): each subject's effect has variance ``s_i^2 + tau2``, its first-level
    variance plus a between-subject variance tau2 estimated at every voxel by restricted maximum likelihood,
    bounded at zero (one per variance group); the fixed effects by GLS with that total variance.
    ``fixed`` (flameo's fixed effects): precision-weighted least squares, tau2 = 0; with `first_level_dof`, by
    default, the first-level variances are taken as the estimates they are (see `dof`). ``ols``: ordinary least
    squares on the effects alone (the variances are not used). See ``voxfit.core.mixed`` for the estimation.

    Parameters
    ----------
    X : (n, p) array_like or pandas.DataFrame
        Group design, one row per subject.
    effects : (n, V) array_like
        Each subject's effect (contrast estimate, FSL's cope) at each voxel; a 1-D array is one voxel.
    variances : (n, V) array_like, optional
        Their first-level variances (FSL's varcope); required for ``mixed`` and ``fixed``.
    contrasts : dict or list, optional
        ``{label: expression or weights}``, or a list of ``"label=expression"`` strings (an expression alone is
        its own label); t for one row, F for several.
    names : sequence of str, optional
        Design column names (default: a DataFrame's columns, else ``x0, x1, ...``).
    groups : (n,) array_like, optional
        Variance groups (FLAME's ``--grp``): a between-subject variance is estimated for each distinct label.
        Default: one group, labelled 1. Not with ``ols``.
    model : {'mixed', 'fixed', 'ols'}
    first_level_dof : number, (n,) or (n, V) array_like, optional
        ``fixed`` only: each subject's first-level degrees of freedom, on which its variance was estimated (per
        voxel for (n, V)). By default the weights' error is then taken into account (``dof="kenward-roger"``);
        with ``dof="residual"`` the dof are their sum minus the rank of X (flameo's), a map when they vary over
        voxels. Without them the dof are ``n - rank``, the variances taken as known.
    dof : {'residual', 'satterthwaite', 'kenward-roger'}, optional
        ``residual``: ``n - rank`` for every voxel and contrast (FLAME1's); for ``fixed`` with `first_level_dof`
        the sum of the first-level dof minus the rank and the covariance ``(X'WX)^+`` (flameo's fixed effects,
        which take the estimated weights as known: 4 subjects of 20 first-level dof gave 6.3% of null voxels below
        one-sided p < 0.05, 8 of 10 dof 9.5%; validation/fixed_effects_null.py). ``satterthwaite`` (``mixed`` only):
        each contrast's dof at each voxel by Satterthwaite's approximation from the REML information
        (``voxfit.core.mixed.satterthwaite_dof``, as lmerTest computes it; Fai & Cornelius's rule for F).
        ``kenward-roger``: ``mixed``: the betas' covariance adjusted for the estimation of each group's tau2
        (``voxfit.core.mixed.kenward_roger_covariance``) and Satterthwaite's dof; F is Kenward & Roger's scaled
        F with their dof (``kenward_roger_f``); dof at most n - rank. ``fixed`` (with `first_level_dof`): the
        covariance widened for the error of the estimated weights, ``(X'WX)^+ + 4 (X'WX)^+ [sum_i w_i (1 - h_i)
        / d_i x_i x_i'] (X'WX)^+`` (h_i the weighted leverages), Satterthwaite's dof per contrast and voxel, and
        Kenward & Roger's scaled F (``voxfit.core.mixed.fixed_kenward_roger``; for a one-sample test, Meier's
        term as runs are combined, ``voxfit.models.fixed_effects``). On null data (4-16 subjects, one-sided
        p < 0.05, t and a 2-row F; validation/fixed_effects_null.py) 0.049-0.051 with first-level dof of 100
        (flameo's 0.051-0.056), 0.050-0.055 with 20 (0.058-0.085) and 0.051-0.070 with 10 (0.063-0.136): a
        first-order correction, still liberal on first levels of few dof, most for F and many subjects. Default:
        ``kenward-roger`` for ``mixed`` with several variance groups (with FLAME1's n - rank, 4 groups of 5
        subjects gave 10% of null voxels below p < 0.05: validation/variance_groups.py) and for ``fixed`` with
        `first_level_dof`, else ``residual``.
    outliers : bool
        ``mixed`` only, one variance group, residual dof: outlier inference (FSL flameo's ``--io``, Woolrich
        2008): each subject's random effect comes from the population N(0, tau2) or, with a prior probability
        pi estimated at each voxel, from an outlier population of a much larger variance; subjects are weighted
        by their posterior outlier probability (``voxfit.core.mixed_outliers``), with n - rank dof.
    execution : voxfit.Execution, optional
        `max_memory`, `n_jobs`, `progress` and `scheduler` in one object; its cap bounds the working memory of
        the blocks (the ``block`` budget). With a Dask `scheduler` (a client or an address) the blocks are tasks
        on the cluster, with the same numbers; effects and variances that are ``voxfit.io.ColumnSource``\ s of
        files are read by the workers, a block each; arrays are sent a block per task. No device.
    max_memory, n_jobs, progress, scheduler :
        Shortcuts for `execution`, as in :func:`voxfit.fit`.

    Returns
    -------
    MixedFit
        betas, their covariance, the between-subject variance per group, dof, outcome per voxel and the
        contrasts' statistics.

    Raises
    ------
    InputError, DataTypeError
        For arguments of the wrong shape, type or value, with the fix.
    """
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, progress=progress, scheduler=scheduler
    )
    problem = _mixed_problem(
        X,
        effects,
        variances,
        contrasts,
        names=names,
        groups=groups,
        model=model,
        first_level_dof=first_level_dof,
        dof=dof,
        outliers=outliers,
        execution=execution,
    )
    return _fit(problem)


def _mixed_problem(
    X, effects, variances, contrasts, *, names, groups, model, first_level_dof, dof, outliers, execution: Execution
) -> _MixedProblem:
    """Every argument of :func:`mixed_effects` checked, as one frozen problem."""
    if model not in MODELS:
        raise InputError(f"`model` must be one of {', '.join(map(repr, MODELS))}; got {model!r}.")
    _check_dof_kind(dof, model, first_level_dof)
    _check_outliers(outliers, model, dof)
    if execution.on_device:
        raise InputError("mixed_effects runs on CPUs (this machine's or a Dask cluster's); drop `device`.")
    design = factorize(X, names, max_memory=execution.max_memory)
    n = design.n_scans
    check_same_rows(X=X, effects=effects, variances=variances, groups=groups)
    effects = _check_maps(effects, "effects", n)
    if variances is None:
        if model != "ols":
            raise InputError(
                f"model={model!r} needs `variances` (the first-level variance of each effect); give them, "
                "or model='ols' to fit the effects alone."
            )
    else:
        variances = _check_maps(variances, "variances", n)
        if variances.shape != effects.shape:
            raise InputError(
                f"`variances` has shape {variances.shape} but `effects` has {effects.shape}; give one variance "
                "per effect."
            )
    codes, labels = _check_groups(groups, n, model)
    if outliers and len(labels) > 1:
        raise InputError(
            f"`outliers`=True fits one variance group; `groups` has {len(labels)}. Leave `groups` out, or give "
            "outliers=False for a between-subject variance per group."
        )
    if model == "mixed" and len(labels) > 1:
        _check_identified(design, codes, labels)
        _warn_small_groups(codes, labels)
    if first_level_dof is not None and model != "fixed":
        raise InputError(
            f"`first_level_dof` is used by model='fixed' only (model={model!r} takes its dof from the design); "
            "leave it out."
        )
    if dof is None:
        several_groups = model == "mixed" and len(labels) > 1
        dof = "kenward-roger" if several_groups or first_level_dof is not None else "residual"
    weights = _check_contrasts(contrasts, design)
    first_dof = _check_first_level_dof(first_level_dof, n, effects.shape[1])
    V, p, G = effects.shape[1], design.n_columns, len(labels)
    q = sum(w.shape[0] for w in weights.values())
    check_memory(
        8 * V * (p + p * p + G + 4 + 2 * len(weights) + q + q * q),
        f"the group model's results ({p:,} design columns x {V:,} voxels)",
        None,  # (as voxfit.fit: the cap bounds the working memory; the data and the results come on top)
        "Give a design with fewer columns, or a smaller mask.",
    )
    return _MixedProblem(
        design=design,
        effects=effects,
        variances=variances,
        codes=codes,
        labels=labels,
        model=model,
        weights=weights,
        dof=_model_dof(first_dof, design),
        dof_kind=dof,
        execution=execution,
        workers=resolve_workers(execution.n_jobs),
        outliers=outliers,
        first_level_dof=first_dof if model == "fixed" and dof == "kenward-roger" else None,
    )


def _check_dof_kind(dof, model: str, first_level_dof) -> None:
    """`dof`: one of _DOF_KINDS or None, for a model that has it: Satterthwaite's for mixed alone,
    Kenward-Roger's for mixed and for fixed with the first-level dof its terms come from, residual for all."""
    if dof is not None and dof not in _DOF_KINDS:
        raise InputError(f"`dof` must be 'residual', 'satterthwaite' or 'kenward-roger'; got {dof!r}.")
    if model == "ols" and dof not in (None, "residual"):
        raise InputError(
            f"`dof`={dof!r} applies to model='mixed' and 'fixed' (model='ols' estimates one residual variance, "
            "on n - rank dof); give dof='residual'."
        )
    if model == "fixed" and dof == "satterthwaite":
        raise InputError(
            "`dof`='satterthwaite' applies to model='mixed' only (the between-subject variance's); model='fixed' "
            "takes dof='kenward-roger' (the default with `first_level_dof`: the estimated weights' error taken into "
            "account) or 'residual' (flameo's: the sum of the first-level dof minus the rank)."
        )
    if model == "fixed" and dof == "kenward-roger" and first_level_dof is None:
        raise InputError(
            "`dof`='kenward-roger' with model='fixed' takes the weights' error from each subject's first-level "
            "dof: give `first_level_dof`, or dof='residual' (n - rank, the variances taken as known)."
        )


def _check_outliers(outliers, model: str, dof: str) -> None:
    """`outliers`: a bool, for model='mixed' with residual dof."""
    if not isinstance(outliers, (bool, np.bool_)):
        raise InputError(f"`outliers` must be True or False; got {outliers!r}.")
    if outliers and model != "mixed":
        raise InputError(
            f"`outliers`=True is outlier inference in the mixed model; model={model!r} has no between-subject "
            "variance to separate outliers from. Give model='mixed', or outliers=False."
        )
    if outliers and dof not in (None, "residual"):
        raise InputError(
            f"`outliers`=True takes dof='residual' (n - rank); {dof!r} is not derived for the outlier mixture. "
            "Give dof='residual', or outliers=False."
        )


def _check_maps(a, name: str, n: int):
    """An (n, V) numeric array-like (a 1-D array is one voxel), not copied."""
    return check_data_matrix(a, name, n, "subject", "an (n_subjects, n_voxels) array")


def _check_groups(groups, n: int, model: str) -> tuple[NDArray[np.intp], tuple]:
    """Codes 0..G-1 (in the order of the sorted labels) and the labels; one group labelled 1 by default."""
    if groups is None:
        return np.zeros(n, dtype=np.intp), (1,)
    values = np.asarray(groups)
    if values.ndim != 1 or values.shape[0] != n:
        raise InputError(f"`groups` must have one label per subject ({n}); got shape {values.shape}.")
    try:
        labels, codes = np.unique(values, return_inverse=True)
    except TypeError:
        raise InputError("`groups` must hold labels of one kind (all numbers or all strings).") from None
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError("`groups` contains NaN or infinite labels; give every subject a group.")
    if model == "ols" and labels.size > 1:
        raise InputError(
            f"`groups` has {labels.size} groups but model='ols' fits one residual variance; give model='mixed' "
            "for a between-subject variance per group, or leave `groups` out."
        )
    return codes.astype(np.intp), tuple(label.item() if isinstance(label, np.generic) else label for label in labels)


def _warn_small_groups(codes: NDArray, labels: tuple) -> None:
    """Warn of variance groups of fewer than _SMALL_GROUP subjects, whose tests run liberal where the
    between-subject variance dominates, whatever the dof (the figures: validation/variance_groups.py)."""
    sizes = np.bincount(codes, minlength=len(labels))
    if sizes.min() < _SMALL_GROUP:
        g = int(np.argmin(sizes))
        warnings.warn(
            f"variance group {labels[g]!r} has {sizes[g]} subjects: a between-subject variance estimated from fewer "
            f"than {_SMALL_GROUP} maps makes tests liberal where it dominates the first-level variances (null "
            "p < 0.05 in 7.6% of voxels for 4 groups of 5 with the default Kenward-Roger dof, 12.9% with n - rank); "
            "merge groups whose variances need not differ.",
            DesignWarning,
            stacklevel=4,
        )


def _check_identified(design: DesignFactor, codes: NDArray, labels: tuple) -> None:
    """Refuse a variance group whose subjects the design fits exactly (each with leverage 1, e.g. one subject
    with a column of its own): the likelihood does not depend on its between-subject variance."""
    leverage = np.einsum("ia,ia->i", design.basis, design.basis)
    for g, label in enumerate(labels):
        if (leverage[codes == g] > 1 - 1e-8).all():
            raise InputError(
                f"variance group {label!r} in `groups` cannot have a between-subject variance of its own: the design "
                f"fits its {int(np.sum(codes == g))} subject(s) exactly; merge it with another group."
            )


def _check_contrasts(contrasts, design: DesignFactor) -> dict[str, NDArray[np.float64]]:
    """``{label: (q, p) weights}`` from a dict or a list of ``"label=expression"`` strings, each checked."""
    if contrasts is None:
        return {}
    if isinstance(contrasts, str):
        contrasts = [contrasts]
    if isinstance(contrasts, dict):
        items = [(str(label), expr) for label, expr in contrasts.items()]
    elif isinstance(contrasts, (list, tuple)):
        items = []
        for entry in contrasts:
            if not isinstance(entry, str):
                raise InputError(
                    f"`contrasts` as a list takes strings 'label=expression'; got {entry!r} (give a dict "
                    "{label: weights} for weights)."
                )
            label, _, expr = entry.partition("=")
            items.append((label.strip(), expr) if expr else (entry.strip(), entry))
    else:
        raise InputError(
            f"`contrasts` must be a dict {{label: expression or weights}} or a list of 'label=expression'; got "
            f"{type(contrasts).__name__}."
        )
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise InputError(f"`contrasts` labels must be unique; got {labels}.")
    return {label: check_contrast(expr, design, label) for label, expr in items}


def _check_first_level_dof(first_level_dof, n: int, V: int) -> NDArray[np.float64] | None:
    """`first_level_dof` as (n, 1) (a number, or one per subject) or (n, V) floats, not copied where they are
    floats already (the models layer's dof maps are float32; each block takes its voxels' as float64); None
    without them."""
    if first_level_dof is None:
        return None
    try:
        raw = np.asarray(first_level_dof)
    except (TypeError, ValueError):  # (ragged lists)
        raw = np.asarray(None)
    if raw.dtype.kind not in "iuf":  # (True, "10" or objects would be read as numbers)
        raise InputError(
            f"`first_level_dof` must be a number, or one per subject ({n},) or per subject and voxel ({n}, {V}); "
            f"got {first_level_dof!r}."
        )
    d = raw if raw.dtype.kind == "f" else raw.astype(np.float64)
    if d.shape not in ((), (n,), (n, V)):
        raise InputError(
            f"`first_level_dof` must be a number, or one per subject ({n},) or per subject and voxel ({n}, {V}); "
            f"got shape {d.shape}."
        )
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise InputError("`first_level_dof` must be positive and finite for every subject; some are not.")
    d = np.broadcast_to(d, (n, 1)) if d.ndim == 0 else d.reshape(n, -1)
    if d.flags.writeable:
        d = d.view()
        d.setflags(write=False)
    return d


def _model_dof(first_dof: NDArray | None, design: DesignFactor) -> float | NDArray[np.float64]:
    """``sum(first-level dof) - rank`` (a number, or (V,) for (n, V) dof), or ``n - rank`` without them."""
    if first_dof is None:
        return float(design.dof)
    out = first_dof.sum(axis=0, dtype=np.float64) - design.rank
    if out.size == 1 and first_dof.shape[1] == 1:
        return float(out[0])
    out.setflags(write=False)
    return out


def _block_voxels(problem: _MixedProblem) -> int:
    """Voxels per block: as many as the ``block`` budget holds per worker (at most ``_MAX_BLOCK``)."""
    n, p = problem.design.X.shape
    r, G = problem.design.rank, len(problem.labels)
    per_voxel = 8 * (16 * n + (4 * G + 10) * r * r + 4 * G * G + 2 * p * p + 16)  # see core.mixed.evaluate
    if problem.outliers:  # the ECM's (n, v) arrays and per-voxel (r x r) solves (core.mixed_outliers)
        per_voxel += 8 * (16 * n + 4 * r * r + n * r)
    budget = problem.execution.budgets.block // max(1, problem.workers)
    if budget < per_voxel:
        raise InputError(
            f"`max_memory`={problem.execution.max_memory!r} is too small for a group model: one voxel needs "
            f"{per_voxel} bytes."
        )
    return int(min(_MAX_BLOCK, budget // per_voxel))


def _fit(problem: _MixedProblem) -> MixedFit:
    """Fit the blocks on the worker threads, then the contrasts."""
    design, model = problem.design, problem.model
    V, p, G = problem.effects.shape[1], design.n_columns, len(problem.labels)
    per_voxel_dof = problem.dof_kind != "residual"
    dof_weights = list(problem.weights.values()) if per_voxel_dof else []  # (contrasts whose dof the blocks compute)
    betas = np.full((p, V), np.nan)
    covariance = np.full((V, p, p), np.nan)
    tau2 = np.full((G, V), np.nan)
    outcome = np.zeros(V, dtype=np.int8)
    loglik = np.full(V, np.nan)
    iterations = np.zeros(V, dtype=np.int32)
    contrast_dof = [np.full(V, np.nan) for _ in dof_weights]
    contrast_scale = [np.full(V, np.nan) for _ in dof_weights]
    n = design.n_scans
    probability, prior, spread = (
        (np.full((n, V), np.nan), np.full(V, np.nan), np.full(V, np.nan)) if problem.outliers else (None,) * 3
    )
    step = _block_voxels(problem)
    compiled = use_compiled_mixed(design.n_scans * V)  # decided once, from the whole: every block alike

    block = _Block(
        design, problem.codes, model, G, dof_weights, problem.dof_kind == "kenward-roger", compiled, problem.outliers
    )

    def place(part: slice, res: MixedBlock | OutlierBlock) -> None:
        if isinstance(res, OutlierBlock):
            probability[:, part], prior[part], spread[part] = res.probability, res.prior, res.outlier_variance
            res = res.fit
        betas[:, part], covariance[part], tau2[:, part] = res.betas, res.covariance, res.tau2
        outcome[part], loglik[part], iterations[part] = res.outcome, res.loglik, res.iterations
        for full, d in zip(contrast_dof + contrast_scale, res.contrast_dof + res.contrast_scale):
            full[part] = d

    def run(start: int) -> None:
        part = slice(start, min(start + step, V))
        variances = None if problem.variances is None else problem.variances[:, part]
        place(part, block(problem.effects[:, part], variances, _columns(problem.first_level_dof, part)))

    starts = range(0, V, step)
    scheduler = problem.execution.scheduler
    if scheduler is not None:  # the same blocks as tasks on a Dask cluster: identical numbers
        spans = [(a, min(a + step, V)) for a in starts]
        maps = (problem.effects, problem.variances, problem.first_level_dof)
        for (a, b), res in zip(spans, _on_cluster(scheduler, block, maps, spans)):
            place(slice(a, b), res)
    else:
        bar = Progress("group model", len(starts), enabled=problem.execution.progress, min_total=8)
        with blas_single_threaded():
            run_in_threads(run, starts, min(problem.workers, len(starts)), bar.update)  # stoppable between blocks
        bar.close()

    valid = outcome == OK
    if np.ndim(problem.dof) == 0 and problem.dof <= 0:
        warnings.warn(
            f"The group model leaves no degrees of freedom (dof {problem.dof:g}: {design.n_scans} subjects, "
            f"rank {design.rank}); its statistics are NaN.",
            DegreesOfFreedomWarning,
            stacklevel=3,
        )
    if compiled and model == "mixed" and problem.weights:
        compile_kernels()  # numba is loaded for the fit: z from t by the compiled table too (~5 ms to load)
    stats = {}
    for k, (label, w) in enumerate(problem.weights.items()):
        dof = contrast_dof[k] if per_voxel_dof else problem.dof
        lam = contrast_scale[k] if problem.dof_kind == "kenward-roger" else None  # (Kenward & Roger's lambda F)
        stats[label] = _contrast(label, w, betas, covariance, valid, dof, problem.workers, lam)
    for a in (betas, covariance, tau2, outcome, loglik, iterations, valid, probability, prior, spread):
        if a is not None:
            a.setflags(write=False)
    counts = np.bincount(outcome, minlength=max(OUTCOMES) + 1)
    return MixedFit(
        model=model,
        names=design.names,
        betas=betas,
        beta_covariance=covariance,
        between_variance=tau2,
        groups=problem.labels,
        dof=problem.dof,
        valid=valid,
        outcomes={OUTCOMES[c]: int(counts[c]) for c in OUTCOMES if c != OK and counts[c]},
        contrasts=stats,
        outcome=outcome,
        log_likelihood=loglik,
        iterations=iterations,
        design=design,
        dof_kind=problem.dof_kind,
        outlier_probability=probability,
        outlier_prior=prior,
        outlier_variance=spread,
    )


@dataclass(frozen=True, eq=False)
class _Block:
    """Fits one block of voxels: what every block shares (picklable, sent once to the Dask workers)."""

    design: DesignFactor
    codes: NDArray
    model: str
    n_groups: int
    contrasts: list
    kenward_roger: bool
    compiled: bool
    outliers: bool = False

    def __call__(self, effects, variances, first_level_dof=None) -> MixedBlock | OutlierBlock:
        if self.outliers:
            return fit_outlier_block(self.design, effects, variances, compiled=self.compiled)
        return fit_mixed_block(
            self.design,
            effects,
            variances,
            self.codes,
            model=self.model,
            n_groups=self.n_groups,
            contrasts=self.contrasts,
            kenward_roger=self.kenward_roger,
            compiled=self.compiled,
            first_level_dof=first_level_dof,
        )


def _columns(first_dof: NDArray | None, part: slice) -> NDArray | None:
    """A block's first-level dof: (n, 1) ones are every block's, (n, V) ones cut to its voxels."""
    return first_dof if first_dof is None or first_dof.shape[1] == 1 else first_dof[:, part]


def _on_cluster(scheduler, block: _Block, maps: tuple, spans) -> list[MixedBlock | OutlierBlock]:
    """The blocks `spans` fitted as Dask tasks, `maps` the effects, the variances and the fixed model's
    first-level dof (or None): maps that workers can read themselves (column sources of files) are sent as their
    sources, a worker reading its own block, with the dof; arrays are sent a block per task."""
    from .._dask import run_tasks

    effects, variances, first_dof = maps
    if getattr(effects, "worker_reads", False) and (variances is None or getattr(variances, "worker_reads", False)):
        # (each task its voxels' dof, not every worker all of them: (n, V) of 200 maps of 230k voxels are 184 MB)
        calls = [(a, b, _columns(first_dof, slice(a, b))) for a, b in spans]
        return run_tasks(scheduler, _read_and_fit, (block, effects, variances), calls)
    calls = [
        (effects[:, a:b], None if variances is None else variances[:, a:b], _columns(first_dof, slice(a, b)))
        for a, b in spans
    ]
    return run_tasks(scheduler, _fit_sent, block, calls)


def _read_and_fit(shared, a: int, b: int, first_dof) -> MixedBlock:
    block, effects, variances = shared
    return block(effects[:, a:b], None if variances is None else variances[:, a:b], first_dof)


def _fit_sent(block: _Block, effects, variances, first_dof) -> MixedBlock:
    return block(effects, variances, first_dof)


def _contrast(
    label: str, w: NDArray, betas: NDArray, covariance: NDArray, valid: NDArray, dof, workers: int, f_scale=None
) -> Stats:
    """t (one row) or F (several) of the weights `w` from the betas and their per-voxel covariance; z of t on
    `workers` threads; F multiplied by `f_scale` (per voxel) before its z."""
    effect = w @ betas
    q, p = w.shape
    # w Cov_v w' for every voxel as one product over the flattened p x p covariances (einsum's path was ~0.05 s
    # of a 0.33 s fit of 200,000 voxels with three columns)
    outer = np.einsum("qa,rb->abqr", w, w).reshape(p * p, q * q)
    cov = (covariance.reshape(len(covariance), p * p) @ outer).reshape(-1, q, q)
    with np.errstate(invalid="ignore"):
        usable = valid & np.isfinite(cov).all(axis=(1, 2)) & (np.einsum("vqq->v", cov) > 0)
        if np.ndim(dof):
            usable &= dof > 0
        if w.shape[0] == 1:
            return t_stats(label, w, effect[0], cov[:, 0, 0], usable, dof, workers=workers)
        return f_stats(label, w, effect, cov, usable, dof, f_scale=f_scale)
