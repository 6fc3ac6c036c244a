"""Permutation inference for one contrast: Freedman-Lane, maximum statistic, cluster extent and mass, TFCE.

The contrast C of a design X is partitioned as FSL randomise does (Smith et al., 2007; Winkler et al. 2014,
NeuroImage 92:381): effects of interest ``X C^+`` and nuisance ``Z = X (I - C^+ C)``. Freedman and Lane's
procedure shuffles the residuals of the nuisance model, ``E = R_Z Y``; for a shuffle P the statistic of the
full model on ``P E + H_Z Y`` needs only ``G = [U, Q_Z]' P E`` (U an orthonormal basis of the interest
effects after the nuisance is removed, Q_Z one of the nuisance) and ``||E||^2``:

    t = U'PE / sqrt((||E||^2 - ||G||^2) / dof),    F = ||U'PE||^2 / q / ((||E||^2 - ||G||^2) / dof)

so a batch of shuffles is one matrix product ``[U, Q_Z]'P`` (rows stacked over shuffles) times E, taken a tile
of voxels at a time and reduced (maxima, exceedance counts) while the tile is in cache. The identity is
always one of the shuffles and uses the observed statistic exactly. p-values count the shuffles whose
statistic reaches the observed one (the identity included): ``p = #{b: s_b >= s_obs} / N``, with ties
judged at a relative tolerance of 1e-6 for float32 data (1e-10 for float64), widened where the residual sum
of squares is a small part of ``||E||^2`` (the null statistics lose those digits; at most 10%), and 1e-5 for TFCE
and cluster values (their null maps are float32).
Voxels without residual variance get no statistic and NaN p. t contrasts are one-sided (large
positive t); test the other tail with the negated contrast.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import check_data_matrix, check_same_rows, unit_scale, working_dtype
from .._checks import check_flag
from .._dask import run_tasks
from .._memory import check_memory, parse_memory
from .._execution import Execution
from .._progress import Progress
from .._threads import blas_single_threaded, numba_threads, resolve_workers, run_in_threads
from ..core import check_contrast, factorize
from ..core.design import orthonormal_basis
from ..core.mixed import OK, fit_mixed_block, no_fixed_effects
from ..core.ols import exact_fits
from ..exceptions import InputError
from .shuffles import Shuffles, count_shuffles, make_shuffles

__all__ = ["PermutationResult", "mixed_permutation_test", "mixed_scheme", "partition", "permutation_test"]


@dataclass(frozen=True, eq=False)
class ClusterInference:
    """Clusters of the observed map above `threshold`, with FWE p-values from the null of the largest cluster."""

    threshold: float
    labels: NDArray[np.int32]  # (V,), 0 outside clusters, 1.. by decreasing size
    sizes: NDArray[np.float64]
    masses: NDArray[np.float64]
    p_extent: NDArray[np.float64]  # per cluster
    p_mass: NDArray[np.float64]
    null_extent: NDArray[np.float64]  # (N,) largest cluster size per shuffle
    null_mass: NDArray[np.float64]

    def __post_init__(self) -> None:
        _read_only(self)

    def voxel_map(self, per_cluster: NDArray, fill: float = 1.0) -> NDArray[np.float64]:
        """A per-cluster value spread over its voxels (`fill` outside clusters)."""
        out = np.full(self.labels.shape, fill)
        inside = self.labels > 0
        out[inside] = per_cluster[self.labels[inside] - 1]
        return out


@dataclass(frozen=True, eq=False)
class PermutationResult:
    """Permutation inference for one contrast over V voxels (see the module docstring)."""

    name: str
    kind: str  # 't' or 'F'
    stat: NDArray[np.float64]
    dof: float
    scheme: str  # 'flip' or 'permute'
    n_shuffles: int
    exhaustive: bool
    p_uncorrected: NDArray[np.float64]
    p_fwe: NDArray[np.float64]
    null_max: NDArray[np.float64]
    clusters: ClusterInference | None = None
    tfce: NDArray[np.float64] | None = None
    p_tfce_fwe: NDArray[np.float64] | None = None
    null_tfce: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        _read_only(self)


def _read_only(result) -> None:
    """A result's arrays made read-only, as voxfit's other results are (frozen, not only its fields)."""
    for value in vars(result).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)


def partition(X: NDArray, weights: NDArray) -> tuple[NDArray, NDArray, int]:
    """``(U, Q_Z, dof)``: orthonormal bases of the interest effects (after the nuisance) and of the nuisance."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    C = np.asarray(weights, dtype=np.float64)
    Cp = np.linalg.pinv(C)
    Z = X - X @ Cp @ C
    Qz = orthonormal_basis(Z, np.linalg.norm(X, 2))  # (a contrast of every column leaves Z of rounding only)
    Xi = X @ Cp
    Xi = Xi - Qz @ (Qz.T @ Xi)
    U = orthonormal_basis(Xi)
    if U.shape[1] == 1 and np.sum(U[:, 0] * Xi[:, 0]) < 0:  # orient as the contrast: t = c'beta / se
        U = -U
    rank = U.shape[1] + Qz.shape[1]
    return U, Qz, n - rank


def _projector_rows(basis: NDArray, shuffles: Shuffles, start: int, stop: int, dtype) -> NDArray:
    """``basis' P_b`` for the shuffles start..stop, stacked: (stop - start, r, n)."""
    if shuffles.kind == "flip":
        rows = shuffles.signs[start:stop, None, :] * basis.T[None, :, :]
    else:
        inverse = np.argsort(shuffles.order[start:stop], axis=1)  # (P E)_i = E_order[i]: column j gets basis row inv[j]
        rows = basis.T[:, inverse].transpose(1, 0, 2)
    return np.ascontiguousarray(rows, dtype=dtype)


def _statistic(G: NDArray, ee: NDArray, dof: float, q: int, is_t: bool) -> NDArray[np.float64]:
    """t or F from projections G (r, V) and ||E||^2 (float64)."""
    G = np.asarray(G, dtype=np.float64)
    proj = np.einsum("kv,kv->v", G[:q], G[:q])
    rss = ee - np.einsum("kv,kv->v", G, G)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(rss > 0, rss / dof, np.nan)
        return G[0] / np.sqrt(scale) if is_t else proj / q / scale


def permutation_test(
    X,
    Y,
    contrast,
    *,
    names=None,
    n_permutations: int = 5000,
    scheme: str = "auto",
    blocks=None,
    whole_blocks: bool = False,
    seed=None,
    adjacency=None,
    cluster_threshold: float | None = None,
    tfce: bool = False,
    tfce_E: float = 0.5,
    tfce_H: float = 2.0,
    weights=None,
    max_memory: int | str | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
    name: str | None = None,
    scheduler=None,
    device: str | None = None,
    execution: Execution | None = None,
) -> PermutationResult:
    """Permutation (or sign-flip) inference for one t or F contrast at every voxel.

    Parameters
    ----------
    X : (n, p) array
        Design (one row per subject or map).
    Y : (n, V) array
        Data; float32 stays float32 in the shuffled products, statistics are float64.
    contrast : str or weights
        A t (one row) or F (several rows) contrast, as for :meth:`voxfit.Fit.contrast`.
    n_permutations : int
        Shuffles to use, the identity included; all of them when there are no more than this.
    scheme : {'auto', 'flip', 'permute'}
        Sign-flipping (independent symmetric errors: one-sample and paired tests) or permutation
        (exchangeable errors). ``auto``: flip when the design is a single constant column, else permute.
    blocks, whole_blocks, seed :
        Exchangeability blocks (FSL .grp), whole-block shuffling, random seed (see ``make_shuffles``).
    adjacency : voxfit.inference.graph.Adjacency
        Neighbours of each voxel; needed for clusters and TFCE.
    cluster_threshold : float, optional
        Cluster-forming threshold on the statistic (t or F); cluster extent and mass FWE p-values.
    tfce, tfce_E, tfce_H, weights :
        TFCE of the statistic (volumes: E 0.5, H 2; surfaces: E 1, H 2) with FWE p-values; `weights`
        (e.g. vertex areas) measure extent.
    max_memory : int or str, optional
        Bound on the working memory of one batch of shuffles (default: the ``batch`` budget of `execution`,
        256 MiB unless a model planned it; see ``voxfit._execution.BUDGETS``): its null maps (4 V bytes per shuffle,
        with clusters or TFCE), per-tile maxima and products (see :func:`batch_size`), and the sign-flip
        tables (half of it). The data's own memory is not in it: the residuals E, in the working dtype (a
        copy of Y's size for float32), and about a dozen float64 vectors of length V; the caller plans those
        (``voxfit.SecondLevel`` splits its cap, see :func:`voxfit.models.second_level.group_memory`).
    n_jobs : int, optional
        Threads sharing the voxel tiles of each batch (default: all CPUs); BLAS runs single-threaded inside.
    scheduler : dask.distributed.Client or str, optional
        Run the batches of shuffles on a Dask cluster (a client, or a scheduler address such as
        ``tcp://host:8786``); the numbers are those of the local run.
    device : str, optional
        ``cuda`` (or ``cuda:N``) to run the shuffles on a GPU through CuPy or PyTorch (``strict``: the
        array-API reference library, for tests); float32 on the device, clusters and TFCE on the host.
    execution : voxfit.Execution, optional
        `n_jobs`, `progress`, `scheduler`, `device` and the batch budget in one object (as the models pass them).
    """
    execution = Execution.resolve(execution, n_jobs=n_jobs, progress=progress, scheduler=scheduler, device=device)
    max_memory = execution.budgets.batch if max_memory is None else parse_memory(max_memory)
    n_jobs, progress, scheduler, device = execution.n_jobs, execution.progress, execution.scheduler, execution.device
    test = _permutation_test_iv(
        X,
        Y,
        contrast,
        names,
        n_permutations,
        scheme,
        blocks,
        whole_blocks,
        seed,
        adjacency,
        cluster_threshold,
        tfce,
        n_jobs,
        name,
        device,
        execution.max_memory,
    )
    dtype = working_dtype(test.Y.dtype)
    flips = test.shuffles.kind == "flip" and device in (None, "cpu")
    tile = _tile_width(flips, test.basis, np.dtype(dtype).itemsize, n_jobs, max_memory)
    tiles = [(a, min(test.Y.shape[1], a + tile)) for a in range(0, test.Y.shape[1], tile)]
    obs = _observed(test, tiles, dtype)
    settings = _Settings(
        adjacency, cluster_threshold, tfce, tfce_E, tfce_H, weights, device, scheduler, n_jobs, max_memory, progress
    )
    return _inference(test, obs, tiles, settings)


@dataclass(frozen=True, eq=False)
class _Settings:
    """How a test's shuffles run and what they feed (see :func:`permutation_test`'s parameters)."""

    adjacency: object
    cluster_threshold: float | None
    tfce: bool
    tfce_E: float
    tfce_H: float
    weights: NDArray | None
    device: str | None
    scheduler: object
    n_jobs: int | None
    max_memory: int
    progress: bool | None


def _inference(test, obs: _Observed, tiles: list, settings: _Settings) -> PermutationResult:
    """The shuffles of a checked `test` (its label, bases, shuffles, q, dof, t or F) run on the observed side
    `obs` (tiles of residuals, one matrix or one per row of the basis, statistic, keys), and the p-values,
    clusters and TFCE from their null distributions."""
    s = settings
    dtype = obs.E_tiles[0].dtype if obs.E_tiles else np.dtype(np.float32)
    V, N, r = obs.valid.size, test.shuffles.n, test.basis.shape[1]
    flips = test.shuffles.kind == "flip" and s.device in (None, "cpu")
    tile = max((b - a for a, b in tiles), default=1)
    problem = _NullProblem(
        E_tiles=obs.E_tiles,
        tiles=tiles,
        basis=test.basis,
        shuffles=test.shuffles,
        ee_w=obs.ee_w,
        okey=obs.okey,
        dof=float(test.dof),
        q=test.q,
        is_t=test.is_t,
        valid=obs.valid,
        adjacency=s.adjacency,
        cluster_threshold=s.cluster_threshold,
        tfce=s.tfce,
        tfce_E=s.tfce_E,
        tfce_H=s.tfce_H,
        weights=s.weights,
        device=s.device,
    )
    runner = _NullRunner(problem, 1 if s.scheduler is not None else s.n_jobs)  # on Dask, the workers' threads
    batch = _batch(runner, V, N, r, tile, len(tiles), flips, s.max_memory, dtype, s.n_jobs)
    nulls = _null_distributions(runner, obs.stat, batch, f"permutations ({test.label})", s.progress, s.scheduler)
    valid, stat = obs.valid, obs.stat
    counts = nulls.counts + valid  # the identity reaches the observed statistic
    p_unc = np.where(valid, counts / N, np.nan)
    p_fwe = np.where(valid, _exceedance(nulls.null_max, stat, obs.tol) / N, np.nan)

    clusters = tfce_map = p_tfce = None
    # TFCE and clusters of the observed map as the null maps are made (the identity through the same path), so
    # that a shuffle giving the same map (the negated flips of an F test) ties exactly
    identity = runner.run(0, 1, return_maps=True)[0] if runner.need_maps else None
    if s.cluster_threshold is not None:
        clusters = _cluster_inference(identity, s.adjacency, s.cluster_threshold, s.weights, nulls, N)
    if s.tfce:
        from .tfce import tfce as tfce_fn

        tfce_map = tfce_fn(identity, s.adjacency, E=s.tfce_E, H=s.tfce_H, weights=s.weights).astype(np.float64)
        nulls.tfce[0] = np.nanmax(tfce_map) if tfce_map.size else 0.0
        p_tfce = np.where(valid, _exceedance(nulls.tfce, tfce_map, MAP_TOL) / N, np.nan)
    return PermutationResult(
        test.label,
        "t" if test.is_t else "F",
        stat,
        float(test.dof),
        test.shuffles.kind,
        N,
        test.shuffles.exhaustive,
        p_unc,
        p_fwe,
        nulls.null_max,
        clusters,
        tfce_map,
        p_tfce,
        nulls.tfce if s.tfce else None,
    )


def mixed_scheme(scheme: str, model: str) -> str:
    """The rearrangements of a mixed- or fixed-effects permutation test: sign-flips ('auto' or 'flip'); 'permute'
    refused, within exchangeability blocks too (the subjects of a block have their own first-level variances)."""
    if scheme in ("auto", "flip"):
        return "flip"
    if scheme == "permute":
        raise InputError(
            f"scheme 'permute' with model {model!r} is refused: first-level variances that differ between subjects "
            "make the errors not exchangeable, which permutations need, while sign-flips need only independent "
            "symmetric errors (Winkler et al. 2014, NeuroImage 92:381, as FSL randomise and PALM); use scheme "
            "'flip' or 'auto'."
        )
    raise InputError(f"`scheme` must be auto, flip or permute; got {scheme!r}.")


def mixed_permutation_test(
    X,
    effects,
    variances,
    contrast,
    *,
    names=None,
    groups=None,
    model: str = "mixed",
    n_permutations: int = 5000,
    scheme: str = "auto",
    blocks=None,
    whole_blocks: bool = False,
    seed=None,
    adjacency=None,
    cluster_threshold: float | None = None,
    tfce: bool = False,
    tfce_E: float = 0.5,
    tfce_H: float = 2.0,
    weights=None,
    max_memory: int | str | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
    name: str | None = None,
    scheduler=None,
    device: str | None = None,
    execution: Execution | None = None,
) -> PermutationResult:
    """Sign-flip inference for one t or F contrast of a mixed- or fixed-effects group model at every voxel.

    With first-level variances that differ between subjects the errors are not exchangeable, so rows are not
    permuted; independent symmetric errors still allow sign-flips, for any design (Winkler et al. 2014,
    NeuroImage 92:381; PALM's and randomise's rule). The statistic is the weighted least-squares t (or F) of
    the null model: at each voxel the weights ``w_i = 1 / (s2_i + tau2)``, tau2 estimated once by REML under
    the reduced model ``Z = X (I - C^+ C)`` (no columns for a one-sample test; 0 for ``fixed``), not refitted
    per shuffle. In the whitened model (``sqrt(w) o y``, ``sqrt(w) o X``) it is the OLS statistic of
    :func:`permutation_test`: Freedman and Lane's residuals of the reduced model, ``e~ = sqrt(w) o e``, are
    flipped (flips commute with the weighting), and for signs s

        t = c'b* / sqrt(sigma2* c'(X'WX)^+ c),    F = (C b*)' (C (X'WX)^+ C')^+ (C b*) / q / sigma2*,

    ``sigma2* = ||R_X~ (s o e~)||^2 / (n - rank)``: one row ``u_k o e~`` per column u_k of ``[U, Q_Z]`` of the
    whitened design, whose flipped sums are the projections. The residual variance makes the statistic
    pivotal, as Freedman-Lane needs (the unscaled known-variance z, FLAME's form, gave 0.08 for 0.05 with a
    covariate and n = 10). For a one-sample test without covariates tau2 depends on the effects only through
    their squares and ``||e~||^2`` is unchanged by flips: the test is exact. The observed statistic (the
    identity) therefore differs from the parametric mixed t of :func:`voxfit.mixed_effects` (whose tau2 comes
    from the full model, and which has no residual scale); `stat` of the result is this one, `dof` n - rank.
    p-values, maximum-statistic FWE, clusters and TFCE are those of :func:`permutation_test`.

    Parameters
    ----------
    X : (n, p) array
        Group design, one row per subject.
    effects, variances : (n, V) arrays
        Each subject's effect and first-level variance at each voxel (FSL's cope and varcope).
    contrast : str or weights
        A t (one row) or F (several rows) contrast.
    groups : (n,) labels, optional
        Variance groups: a between-subject variance each under the reduced model (``mixed``).
    model : {'mixed', 'fixed'}
        ``fixed``: tau2 = 0, weights ``1 / s2``.
    scheme : {'auto', 'flip'}
        Sign-flips; 'permute' is refused (see :func:`mixed_scheme`).
    blocks, whole_blocks, seed, adjacency, cluster_threshold, tfce, tfce_E, tfce_H, weights, max_memory, n_jobs,
    progress, name, scheduler, execution :
        As for :func:`permutation_test` (blocks matter with `whole_blocks`: each block's signs flipped as one).
    device : None
        CPUs only (this machine's, or a Dask cluster's through `scheduler`): a device is refused (the weights
        differ per voxel, so the shuffles are not one matrix product).
    """
    execution = Execution.resolve(execution, n_jobs=n_jobs, progress=progress, scheduler=scheduler, device=device)
    max_memory = execution.budgets.batch if max_memory is None else parse_memory(max_memory)
    test = _mixed_permutation_test_iv(
        X,
        effects,
        variances,
        contrast,
        names,
        groups,
        model,
        n_permutations,
        scheme,
        blocks,
        whole_blocks,
        seed,
        adjacency,
        cluster_threshold,
        tfce,
        execution,
        name,
    )
    n_jobs = execution.n_jobs
    dtype = working_dtype(np.result_type(test.effects.dtype, test.variances.dtype))
    V = test.effects.shape[1]
    tile = _tile_width(True, test.basis, np.dtype(dtype).itemsize, n_jobs, max_memory)
    tiles = [(a, min(V, a + tile)) for a in range(0, V, tile)]
    obs = _mixed_observed(test, tiles, dtype, n_jobs)
    settings = _Settings(
        adjacency,
        cluster_threshold,
        tfce,
        tfce_E,
        tfce_H,
        weights,
        None,
        execution.scheduler,
        n_jobs,
        max_memory,
        execution.progress,
    )
    return _inference(test, obs, tiles, settings)


@dataclass(frozen=True, eq=False)
class _CheckedMixed:
    """A mixed-effects permutation test's arguments as checked: the effects and variances (n, V), the label,
    the factorised design and reduced (nuisance) design, the interest effects ``X C^+`` (n, q; for F, C an
    orthonormal basis of the contrast's row space), the variance-group codes and count, the model, the kernel's
    basis (ones, n x r: each row of ``[U, Q_Z]`` weights its own residuals), q, the dof n - rank, t or F, and
    the sign-flips."""

    effects: NDArray
    variances: NDArray
    label: str
    design: object
    reduced: object
    interest: NDArray
    codes: NDArray
    n_groups: int
    model: str
    basis: NDArray
    q: int
    dof: int
    is_t: bool
    shuffles: Shuffles


def _mixed_permutation_test_iv(
    X,
    effects,
    variances,
    contrast,
    names,
    groups,
    model,
    n_permutations,
    scheme,
    blocks,
    whole_blocks,
    seed,
    adjacency,
    cluster_threshold,
    tfce,
    execution: Execution,
    name,
) -> _CheckedMixed:
    """The arguments of :func:`mixed_permutation_test` checked (an `InputError` for each that cannot be used)
    and converted into a :class:`_CheckedMixed`."""
    check_flag(whole_blocks, "`whole_blocks`")
    check_flag(tfce, "`tfce`")
    if model not in ("mixed", "fixed"):
        raise InputError(f"`model` must be 'mixed' or 'fixed' (for 'ols': permutation_test); got {model!r}.")
    kind = mixed_scheme(scheme, model)
    if execution.on_device:
        raise InputError(
            "mixed- and fixed-effects permutations run on CPUs (this machine's or a Dask cluster's); drop `device`."
        )
    design = factorize(X, names, warn=False, max_memory=execution.max_memory)
    n = design.n_scans
    maps = []
    check_same_rows(X=X, effects=effects, variances=variances, groups=groups)
    for label, a in (("effects", effects), ("variances", variances)):
        maps.append(check_data_matrix(a, label, n, "subject", "an (n_subjects, n_voxels) array"))
    if maps[0].shape != maps[1].shape:
        raise InputError(
            f"`variances` has shape {maps[1].shape} but `effects` has {maps[0].shape}; give one variance per effect."
        )
    codes = np.zeros(n, dtype=np.intp)
    if groups is not None:
        values = np.asarray(groups)
        if values.shape != (n,):
            raise InputError(f"`groups` must have one label per subject ({n}); got shape {values.shape}.")
        codes = np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.intp)
    w = check_contrast(contrast, design)
    label = name or (contrast if isinstance(contrast, str) else "contrast")
    if design.dof < 1:
        raise InputError(f"the design leaves {design.dof} degrees of freedom; permutation tests need at least 1.")
    if (cluster_threshold is not None or tfce) and adjacency is None:
        raise InputError("clusters and TFCE need the neighbours of each voxel (`adjacency`).")
    rows = w if w.shape[0] == 1 else orthonormal_basis(w.T).T  # F: the statistic depends on the rows' span only
    Z = orthonormal_basis(design.X - design.X @ np.linalg.pinv(rows) @ rows, np.linalg.norm(design.X, 2))  # reduced
    reduced = factorize(Z, warn=False) if Z.shape[1] else no_fixed_effects(n)
    interest = design.X @ np.linalg.pinv(rows)
    basis = np.ones((n, rows.shape[0] + Z.shape[1]))  # (each row of [U, Q_Z] weights its own residuals)
    _check_table_memory(n_permutations, kind, basis, blocks, whole_blocks, maps[0].shape[1], execution.max_memory)
    shuffles = make_shuffles(kind, basis, n_permutations, blocks=blocks, whole_blocks=whole_blocks, seed=seed)
    resolve_workers(execution.n_jobs)  # a clear error now for a number of threads that cannot be
    return _CheckedMixed(
        maps[0],
        maps[1],
        label,
        design,
        reduced,
        interest,
        codes,
        int(codes.max()) + 1,
        model,
        basis,
        rows.shape[0],
        design.dof,
        w.shape[0] == 1,
        shuffles,
    )


def _mixed_observed(test: _CheckedMixed, tiles: list, dtype, n_jobs) -> _Observed:
    """The observed side of a mixed-effects test, a tile of voxels at a time (in threads): tau2 of the reduced
    model, the whitened residuals projected row by row, ``f_k = u_k o e~`` (r, n, v) in the working dtype (for
    signs s, ``G_k = s' f_k``), ``||e~||^2``, the statistic, its tie tolerance and keys, as for OLS."""
    V = test.effects.shape[1]
    stat, tol, valid, ee = np.empty(V), np.empty(V), np.empty(V, dtype=bool), np.empty(V)
    E_tiles: list = [None] * len(tiles)

    def work(k: int) -> None:
        a, b = tiles[k]
        f, ee_tile, ok = _weighted_residuals(test, a, b)
        G = f.sum(axis=1)
        rss = ee_tile - np.einsum("kv,kv->v", G, G)
        ok &= (ee_tile > 0) & (rss > 1e-10 * ee_tile)  # no residual variance: no statistic, no p
        f[:, :, ~ok] = 0.0
        stat[a:b] = np.where(ok, _statistic(G, np.where(ok, ee_tile, 1.0), test.dof, test.q, test.is_t), np.nan)
        tol[a:b] = _tie_tolerance(dtype, ee_tile, np.where(ok, rss, 1.0))
        valid[a:b], ee[a:b] = ok, np.where(ok, ee_tile, 1.0)
        E_tiles[k] = np.ascontiguousarray(f, dtype=dtype)

    with blas_single_threaded():
        run_in_threads(work, range(len(tiles)), resolve_workers(n_jobs))
    observed = np.where(valid, stat - tol * np.maximum(np.abs(stat), 1.0), np.inf)
    from ._maxstat import to_key

    okey = to_key(observed, test.is_t).astype(dtype)
    okey[~valid] = np.inf
    return _Observed(E_tiles, ee.astype(dtype), stat, tol, okey, valid)


def _weighted_residuals(test: _CheckedMixed, a: int, b: int):
    """For the voxels a..b: the whitened residuals of the reduced model projected row by row, f (r, n, v)
    (float64; ``f_k = u_k o e~``, u_k the k-th column of ``[U, Q_Z]`` of the whitened design at the voxel,
    ``e~ = sqrt(w) o e``), ``||e~||^2`` (v,), and the voxels the reduced model fitted (finite effects, positive
    finite variances, a likelihood that is not flat)."""
    y = np.array(test.effects[:, a:b], dtype=np.float64)
    s2 = np.array(test.variances[:, a:b], dtype=np.float64)
    null = fit_mixed_block(
        test.reduced,
        y,
        s2,
        test.codes,
        model=test.model,
        n_groups=test.n_groups,
        compiled=False if test.reduced.rank == 0 else None,
    )
    ok = null.outcome == OK
    tau2 = np.where(ok, null.tau2, 0.0)
    with np.errstate(invalid="ignore"):
        total = s2 + tau2[test.codes]
        ok &= np.isfinite(total).all(axis=0) & (total > 0).all(axis=0) & np.isfinite(y).all(axis=0)
    total[:, ~ok], y[:, ~ok] = 1.0, 0.0
    sw = (1.0 / np.sqrt(total)).T[:, :, None]  # (v, n, 1): the whitening sqrt(w) of each voxel
    Qz = np.linalg.qr(sw * test.reduced.basis[None])[0] if test.reduced.rank else np.zeros((b - a, y.shape[0], 0))
    Xi = sw * test.interest[None]
    Xi = Xi - Qz @ (Qz.transpose(0, 2, 1) @ Xi)  # the interest effects after the (whitened) nuisance
    U = np.linalg.qr(Xi)[0]
    if test.is_t:  # oriented as the contrast: t = c'b / se
        U = U * np.sign(np.einsum("vi,vi->v", U[:, :, 0], Xi[:, :, 0]))[:, None, None]
    yw = sw[:, :, 0] * y.T  # (v, n)
    e = yw - np.einsum("vik,vk->vi", Qz, np.einsum("vik,vi->vk", Qz, yw))  # Freedman-Lane: reduced residuals
    f = np.concatenate([U, Qz], axis=2).transpose(2, 1, 0) * e.T[None]
    ee = np.einsum("vi,vi->v", e, e)
    ok &= ~exact_fits(ee, np.einsum("vi,vi->v", yw, yw), y.shape[0])  # (effects the nuisance fits: rounding left)
    return f, ee, ok


MAP_TOL = 1e-5  # the tie tolerance of TFCE and cluster values: they come from float32 maps
TIE_TOL_MAX = 0.1  # the widest tie tolerance of a statistic (see _tie_tolerance)


def _tie_tolerance(dtype, ee: NDArray, rss: NDArray) -> NDArray:
    """The relative tolerance at which a null statistic ties the observed one: 1e-6 in float32 (1e-10 in float64),
    widened where the residual sum of squares `rss` is a small part of `ee` (``||E||^2``), as null statistics in the
    working precision lose about eps * ee / rss of their digits; at most TIE_TOL_MAX. Unbounded, a voxel of t
    4,000 (its subjects' values 0.07% apart) had a tolerance beyond 100%, every shuffle tied it, and its p was 1
    where only the identity reaches it (1/N); its null statistics are then known only roughly, the identity's
    exactly."""
    eps = np.finfo(dtype).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        tol = np.maximum(1e-6 if dtype == np.float32 else 1e-10, 8 * eps * ee / rss)
    return np.minimum(tol, TIE_TOL_MAX)


@dataclass(frozen=True, eq=False)
class _Observed:
    """The observed side of a permutation test: the residuals of the nuisance model as tiles of E (working
    dtype), ||E||^2 per voxel (`ee_w`: 1 where invalid), the statistic (NaN where invalid), its tie tolerance
    `tol`, the keys the null statistics are compared with (`okey`), and the voxels with residual variance."""

    E_tiles: list
    ee_w: NDArray
    stat: NDArray
    tol: NDArray
    okey: NDArray
    valid: NDArray


def _observed(test: _CheckedTest, tiles: list, dtype) -> _Observed:
    """The observed statistic of `test` and what its shuffles need, computed a tile at a time: the residuals
    in float64 and kept in the working dtype (no float64 copy of Y; E held once, as the tiles the shuffles
    read)."""
    E, ee, rss_obs, valid, G_obs = _residuals(test.Y, test.Qz, test.basis, tiles, dtype)
    stat = _statistic(G_obs, ee, test.dof, test.q, test.is_t)
    del G_obs
    stat[~valid] = np.nan
    tol = _tie_tolerance(dtype, ee, np.where(valid, rss_obs, 1.0))
    del rss_obs
    observed = np.where(np.isfinite(stat), stat - tol * np.maximum(np.abs(stat), 1.0), np.inf)
    from ._maxstat import to_key

    okey = to_key(observed, test.is_t).astype(dtype)
    okey[~np.isfinite(observed)] = np.inf
    del observed
    ee_w = np.where(valid, ee, 1.0).astype(dtype)
    return _Observed(E, ee_w, stat, tol, okey, valid)


def _batch(runner, V: int, N: int, r: int, tile: int, n_tiles: int, flips: bool, max_memory: int, dtype, n_jobs):
    """Shuffles per batch under `max_memory` (half of it when the sign-flip tables may take the other half),
    checked against the memory there is: each batch holds the maxima of every tile of voxels for every shuffle
    (and maps of batch x V with clusters)."""
    budget = max_memory // 2 if flips else max_memory
    batch = batch_size(V, N, r, tile, runner.need_maps, flips, budget, np.dtype(dtype).itemsize, n_jobs)
    if runner.on_device:  # one product per batch, the (batch, V) keys on the device
        batch = int(max(1, min(4096, max_memory // (4 * V * (2 * r + 5)))))
    check_memory(
        batch * (n_tiles * np.dtype(dtype).itemsize + (4 * V if runner.need_maps else 0) + 64),
        f"a batch of {batch:,} shuffles x {V:,} voxels",
        None,
        "Ask for fewer permutations, or give a smaller mask.",
    )
    return batch


def _cluster_inference(identity, adjacency, cluster_threshold, weights, nulls, N: int) -> ClusterInference:
    """The clusters of the observed map `identity` above `cluster_threshold`, with extent and mass FWE p from
    the null maxima `nulls` (the identity's own maxima set first)."""
    from .clusters import label_clusters

    labels, sizes, masses = label_clusters(identity, adjacency, cluster_threshold, weights=weights)
    nulls.extent[0] = sizes.max() if sizes.size else 0.0
    nulls.mass[0] = masses.max() if masses.size else 0.0
    return ClusterInference(
        float(cluster_threshold),
        labels,
        sizes,
        masses,
        _exceedance(nulls.extent, sizes, MAP_TOL) / N,
        _exceedance(nulls.mass, masses, MAP_TOL) / N,
        nulls.extent,
        nulls.mass,
    )


@dataclass(frozen=True, eq=False)
class _CheckedTest:
    """A permutation test's arguments as :func:`_permutation_test_iv` checked and converted them: the data `Y`
    (n, V), the contrast's label, the bases ``[U, Q_Z]`` (`basis`, n x r) and ``Q_Z`` of the contrast's
    partition (see :func:`partition`), the number of interest columns `q` (of U), the residual degrees of
    freedom, whether the contrast is a t (one row), and the shuffles (the identity first)."""

    Y: NDArray
    label: str
    basis: NDArray
    Qz: NDArray
    q: int
    dof: int
    is_t: bool
    shuffles: Shuffles


def _permutation_test_iv(
    X,
    Y,
    contrast,
    names,
    n_permutations,
    scheme,
    blocks,
    whole_blocks,
    seed,
    adjacency,
    cluster_threshold,
    tfce,
    n_jobs,
    name,
    device,
    cap=None,
) -> _CheckedTest:
    """The arguments of :func:`permutation_test` checked (a clear `InputError` for each that cannot be used,
    and for a table of shuffles that memory cannot hold) and converted into a :class:`_CheckedTest`."""
    check_flag(whole_blocks, "`whole_blocks`")
    check_flag(tfce, "`tfce`")
    design = factorize(X, names, warn=False)
    check_same_rows(X=X, Y=Y)
    Y = check_data_matrix(
        Y, "Y", design.n_scans, "map", "an (n, V) array of maps (for image files: voxfit.SecondLevel)"
    )
    w = check_contrast(contrast, design)
    label = name or (contrast if isinstance(contrast, str) else "contrast")
    U, Qz, dof = partition(design.X, w)
    if dof < 1:
        raise InputError(f"the design leaves {dof} degrees of freedom; permutation tests need at least 1.")
    if (cluster_threshold is not None or tfce) and adjacency is None:
        raise InputError("clusters and TFCE need the neighbours of each voxel (`adjacency`).")
    ones = np.ones(design.n_scans)
    tests_mean = design.has_intercept and np.linalg.norm(ones - Qz @ (Qz.T @ ones)) > 1e-8 * np.sqrt(design.n_scans)
    if scheme == "auto":  # the mean is part of the effect tested: only sign-flips can move it (as PALM's -ise)
        scheme = "flip" if tests_mean else "permute"
    if scheme not in ("flip", "permute"):
        raise InputError(f"`scheme` must be auto, flip or permute; got {scheme!r}.")
    if scheme == "permute" and tests_mean:
        raise InputError(
            f"contrast {label!r} tests the mean (the constant is part of the effect), which permuting "
            "rows cannot change; use sign-flips (scheme 'flip' or 'auto')."
        )
    basis = np.column_stack([U, Qz])
    _check_table_memory(n_permutations, scheme, basis, blocks, whole_blocks, Y.shape[1], cap)
    shuffles = make_shuffles(scheme, basis, n_permutations, blocks=blocks, whole_blocks=whole_blocks, seed=seed)
    if device not in (None, "cpu"):
        from .._array import device_namespace

        device_namespace(device)  # a clear error now for a device that is not there
    resolve_workers(n_jobs)  # a clear error now for a number of threads that cannot be
    return _CheckedTest(Y, label, basis, Qz, U.shape[1], dof, w.shape[0] == 1, shuffles)


def _check_table_memory(n_permutations, scheme: str, basis, blocks, whole_blocks, V: int, max_memory=None) -> None:
    """Refuse a table of shuffles (N x n) and null distributions (N each), whole-run, that `max_memory` (the
    command's --max-memory; None: the memory there is) cannot hold beside the maps' float64 working copies of `V`
    voxels (:func:`shuffle_table_bytes`; a wrong `n_permutations` is left to ``make_shuffles``). Checked against the
    memory there is only, 5,000,000 sign-flips of 40 maps took 859 MiB under --max-memory 300M (a tester's)."""
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        return
    N = min(int(n_permutations), count_shuffles(scheme, basis, blocks, whole_blocks))
    n = basis.shape[0]
    check_memory(
        shuffle_table_bytes(N, n, V, scheme),
        f"{N:,} {'permutations' if scheme == 'permute' else 'sign-flips'} of {n} maps ({V:,} voxels)",
        max_memory,
        "Ask for fewer permutations (5000 to 10000 are usual).",
        interpreter=True,
    )


def shuffle_table_bytes(n_permutations: int, n_maps: int, n_voxels: int, scheme: str = "permute") -> int:
    """The bytes :func:`_check_table_memory` counts: a table of `n_permutations` shuffles of `n_maps` rows (int64
    rows to permute, int8 signs, with their keys), its null distributions, and the maps' two float64 working copies
    of `n_voxels` voxels."""
    return n_permutations * (n_maps * (8 if scheme == "permute" else 3) + 64) + 16 * n_maps * n_voxels


@dataclass(frozen=True, eq=False)
class _Nulls:
    """The null distributions of a test (each (N,), row 0 the identity's): the maxima of the statistic, the
    largest cluster's extent and mass and the maxima of TFCE (row 0 left at 0 for the observed map's), and
    per voxel how many shuffles but the identity reached the observed statistic (V,)."""

    null_max: NDArray
    extent: NDArray
    mass: NDArray
    tfce: NDArray
    counts: NDArray


def _null_distributions(runner: _NullRunner, stat, batch: int, title: str, progress, scheduler) -> _Nulls:
    """The shuffles but the identity run by `runner`, `batch` at a time (on a Dask cluster with `scheduler`,
    batches of at most 1024); row 0 of the maxima is the observed statistic's (`stat`), of the others 0."""
    problem = runner.problem
    V, N = problem.valid.size, problem.shuffles.n
    from ._maxstat import from_key

    counts = np.zeros(V, dtype=np.int64)
    null_max = np.empty(N)
    null_max[0] = np.nanmax(stat) if np.isfinite(stat).any() else np.nan
    null_extent, null_mass, null_tfce = np.zeros(N), np.zeros(N), np.zeros(N)
    bar = Progress(title, N, progress)
    spans = [(a, min(N, a + batch)) for a in range(1, N, batch)]  # row 0 is the identity: the observed statistic
    if scheduler is not None:  # a Dask cluster: the runner (data included) is sent once, then batches
        spans = [(a, min(N, a + min(batch, 1024))) for a in range(1, N, min(batch, 1024))]
        results = run_tasks(scheduler, _run_batch, runner, spans)
    else:
        results = (runner.run(a, b) for a, b in spans)
    for (a, b), (maxima, hits, extent, mass, tfce_maxima) in zip(spans, results):
        null_max[a:b] = from_key(maxima, problem.is_t)
        counts += hits
        null_extent[a:b], null_mass[a:b], null_tfce[a:b] = extent, mass, tfce_maxima
        bar.update(b)
    bar.close()
    return _Nulls(null_max, null_extent, null_mass, null_tfce, counts)


@dataclass(frozen=True, eq=False)
class _NullProblem:
    """What every batch of shuffles needs (a Dask cluster receives it once, with its runner): the nuisance
    model's residuals E (n, V) as contiguous tiles of voxels `E_tiles` (see _tile_width), the tiles' spans
    `tiles`, the bases ``[U, Q_Z]``, the shuffles, ||E||^2 in the working dtype (1 at invalid voxels,
    `ee_w`), the observed statistics as keys lowered by their tie tolerance (`okey`, see ``_maxstat.to_key``),
    the degrees of freedom, the interest columns `q`, t or F, the valid voxels, and for clusters and TFCE the
    neighbours, the cluster-forming threshold, TFCE's E and H and the extent weights; `device` None or 'cpu'
    for the CPU."""

    E_tiles: list
    tiles: list
    basis: NDArray
    shuffles: Shuffles
    ee_w: NDArray
    okey: NDArray
    dof: float
    q: int
    is_t: bool
    valid: NDArray
    adjacency: object
    cluster_threshold: float | None
    tfce: bool
    tfce_E: float
    tfce_H: float
    weights: NDArray | None
    device: str | None


class _NullRunner:
    """Runs batches of shuffles of a :class:`_NullProblem` with `n_jobs` threads, in one picklable object:
    ``run(start, stop)`` returns the batch's maxima (keys), per-voxel exceedance counts, and cluster and TFCE
    maxima. Local runs call it in a loop; a Dask cluster receives it once and runs batches on its workers."""

    def __init__(self, problem: _NullProblem, n_jobs):
        self.problem, self.n_jobs = problem, n_jobs
        self.dtype = problem.E_tiles[0].dtype if problem.E_tiles else np.dtype(np.float32)
        self.need_maps = problem.cluster_threshold is not None or problem.tfce
        self.on_device = problem.device not in (None, "cpu")
        self.flips = problem.shuffles.kind == "flip" and not self.on_device
        self.tile = max((b - a for a, b in problem.tiles), default=1)
        if self.flips:  # no matrix product: tables of signed partial sums (see _maxstat.flip_tile)
            bits = (problem.shuffles.signs < 0).astype(np.uint8)
            groups = (bits.shape[1] + 7) // 8
            padded = np.zeros((bits.shape[0], 8 * groups), dtype=np.uint8)
            padded[:, : bits.shape[1]] = bits
            self.patterns = np.ascontiguousarray(
                (padded.reshape(-1, groups, 8) << np.arange(8, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
            )
            self.basis_w = np.ascontiguousarray(problem.basis, dtype=np.float64)

    def run(self, start: int, stop: int, return_maps: bool = False):
        if self.on_device:
            return self._run_on_device(start, stop, return_maps)
        p = self.problem
        nb, V, r = stop - start, p.valid.size, p.basis.shape[1]
        stats_tile, flip_tile = _load_kernel()
        maps = np.empty((nb, V), dtype=np.float32) if self.need_maps else np.empty((1, 1), dtype=np.float32)
        rowmax = np.full((len(p.tiles), nb), -np.inf, dtype=self.dtype)
        counts = np.zeros(V, dtype=np.int32)
        rows = None if self.flips else _projector_rows(p.basis, p.shuffles, start, stop, self.dtype).reshape(nb * r, -1)
        local = threading.local()

        def work(k):
            a, b = p.tiles[k]
            if self.flips:
                E = p.E_tiles[k]
                flip_tile(
                    E if E.ndim == 3 else E[None],  # (one residual matrix for every row of the basis)
                    self.basis_w,
                    self.patterns[start:stop],
                    p.ee_w[a:b],
                    p.okey[a:b],
                    p.dof,
                    p.q,
                    p.is_t,
                    rowmax[k],
                    counts[a:b],
                    maps,
                    a,
                    self.need_maps,
                )
                return
            buf = getattr(local, "buf", None)
            if buf is None or buf.shape[0] < nb * r:
                buf = local.buf = np.empty((nb * r, self.tile), dtype=self.dtype)
            G = np.matmul(rows, p.E_tiles[k], out=buf[: nb * r, : b - a]).reshape(nb, r, b - a)
            stats_tile(G, p.ee_w[a:b], p.okey[a:b], p.dof, p.q, p.is_t, rowmax[k], counts[a:b], maps, a, self.need_maps)

        with blas_single_threaded():  # threads share the tiles; a signal stops them between two tiles
            run_in_threads(work, range(len(p.tiles)), resolve_workers(self.n_jobs))
        return self._finish(rowmax.max(axis=0).astype(np.float64), counts, maps, nb, return_maps)

    def _finish(self, maxima, counts, maps, nb, return_maps):
        """The batch's result: its maps alone (`return_maps`), or maxima, counts and map maxima."""
        p = self.problem
        if self.need_maps or return_maps:
            maps[:, ~p.valid] = np.nan
        if return_maps:
            return maps
        extent = mass = tfce_max_values = np.zeros(nb)
        if self.need_maps:
            if p.cluster_threshold is not None:
                from .clusters import cluster_max

                with numba_threads(self.n_jobs):
                    extent, mass = cluster_max(maps, p.adjacency, p.cluster_threshold, weights=p.weights)
            if p.tfce:
                from .tfce import tfce_max

                with numba_threads(self.n_jobs):
                    tfce_max_values = tfce_max(maps, p.adjacency, E=p.tfce_E, H=p.tfce_H, weights=p.weights)
        return maxima, counts, extent, mass, tfce_max_values

    def _run_on_device(self, start: int, stop: int, return_maps: bool = False):
        p = self.problem
        if getattr(self, "_device", None) is None:
            from .._array import device_namespace
            from .device import DeviceNull

            xp, dev = device_namespace(p.device)
            E = np.concatenate(p.E_tiles, axis=1)  # (a host copy while the device takes its own)
            self._device = DeviceNull(xp, dev, E, p.ee_w, p.okey, p.dof, p.q, p.is_t)
        nb = stop - start
        rows = _projector_rows(p.basis, p.shuffles, start, stop, np.float32).reshape(nb * p.basis.shape[1], -1)
        maxima, counts, maps = self._device.run(rows, nb, self.need_maps or return_maps)
        return self._finish(maxima, counts, maps, nb, return_maps)


def _run_batch(runner: _NullRunner, start: int, stop: int):
    return runner.run(start, stop)


def _exceedance(null: NDArray, values: NDArray, tol) -> NDArray[np.float64]:
    """How many null values reach each value (relative tolerance `tol`); NaN for a NaN value."""
    ordered = np.sort(np.where(np.isnan(null), -np.inf, null))
    threshold = values - tol * np.maximum(np.abs(values), 1.0)
    count = (ordered.size - np.searchsorted(ordered, np.nan_to_num(threshold, nan=np.inf), side="left")).astype(
        np.float64
    )
    return np.where(np.isnan(values), np.nan, count)


FLIP_TILE = 512  # voxels per tile of the sign-flip tables (r x groups x 256 x tile values; measured best 512-1024)
PRODUCT_TILE = 2048  # voxels per tile of the shuffled products (permutations)
MAX_BATCH = 1024


def _tile_width(flips: bool, basis: NDArray, itemsize: int, n_jobs, max_memory: int) -> int:
    """Voxels per tile: each thread of sign-flips holds a table of r x groups x 256 x tile values, kept
    within half of `max_memory`."""
    if not flips:
        return PRODUCT_TILE
    table = basis.shape[1] * ((basis.shape[0] + 7) // 8) * 256 * itemsize * resolve_workers(n_jobs)
    return int(max(32, min(FLIP_TILE, (max_memory // 2) // max(table, 1))))


def batch_size(
    V: int, N: int, r: int, tile: int, need_maps: bool, flips: bool, max_memory: int, itemsize: int = 4, n_jobs=None
) -> int:
    """Shuffles per batch: the batch's null maps, float32 (B, V) when clusters or TFCE need them, its
    per-tile maxima and, for permutations, each thread's projected tile (B r tile values), within
    `max_memory`: memory O(batch * V), as scipy's ``permutation_test(batch=...)``. Sign-flips without maps
    take every shuffle in one batch when the memory allows (their tables are built once per tile and batch)."""
    per_tile = 0 if flips else itemsize * r * tile * resolve_workers(n_jobs)
    per_shuffle = (4 * V if need_maps else 0) + itemsize * (V // max(1, tile) + 1) + per_tile + 64
    limit = N if flips and not need_maps else MAX_BATCH
    return int(max(1, min(limit, N, max_memory // per_shuffle)))


def _residuals(Y, Qz: NDArray, basis: NDArray, tiles, dtype):
    """The nuisance model's residuals E = Y - Q_Z Q_Z' Y as contiguous tiles of voxels in `dtype`, with
    ||E||^2, the observed rss, the valid voxels and the observed projections ``G = basis' E`` (float64),
    computed a tile at a time in float64 (no float64 copy of Y), each voxel's at unit scale.
    Voxels with a non-finite value or without residual variance are invalid, and get E = 0 and ||E||^2 = 0."""
    V = Y.shape[1]
    ee, rss, valid = np.empty(V), np.empty(V), np.empty(V, dtype=bool)
    G_obs = np.empty((basis.shape[1], V))
    out = []
    for a, b in tiles:
        y = np.array(Y[:, a:b], dtype=np.float64)
        ok = np.isfinite(y).all(axis=0)
        y[:, ~ok] = 0.0
        e = y - Qz @ (Qz.T @ y)
        ee[a:b] = np.einsum("tv,tv->v", e, e)
        G = basis.T @ e
        rss[a:b] = ee[a:b] - np.einsum("kv,kv->v", G, G)
        # no residual variance (all zero; constant, the nuisance's residuals then rounding, which gave t ~ 1 in every
        # shuffle and moved other voxels' FWE p from 0.56 to 0.79, and did in the mixed path's fixed effects):
        # no statistic, no p, no part in the maxima
        ysq = np.einsum("tv,tv->v", y, y)
        ok &= (ee[a:b] > 0) & (rss[a:b] > 1e-10 * ee[a:b]) & ~exact_fits(ee[a:b], ysq, y.shape[0])
        # each voxel at unit scale (voxfit._array.unit_scale: every statistic the same to the bit): unscaled, the
        # float32 residuals of maps of size 1e-20 underflowed, and the squares of 1e19's overflowed (TFCE 0, p
        # values wrong by up to 0.98, nothing said)
        s = unit_scale(ee[a:b])[0]
        e *= s
        G *= s
        ee[a:b] *= s * s
        rss[a:b] *= s * s
        e[:, ~ok] = 0.0
        ee[a:b][~ok] = 0.0
        G_obs[:, a:b], valid[a:b] = G, ok
        out.append(np.ascontiguousarray(e, dtype=dtype))
    return out, ee, rss, valid, G_obs


def _load_kernel():
    from ._maxstat import kernel

    return kernel()
