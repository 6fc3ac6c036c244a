"""``fit_ar``: one design with per-voxel AR(p) noise, block by block (see ``voxfit.core.ar``)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .._checks import check_scalar
from .._array import finite_columns
from .._execution import Execution
from .._memory import size_text
from .._progress import Progress
from .._threads import blas_single_threaded, run_in_threads
from ..core import Fit, Stats, check_contrast, factorize, make_fit
from ..core._kernels import AUTO_COMPILE_ELEMENTS
from ..core.ar import ARBlock, ARBlockFit, fit_ar_block
from ..core.contrast import f_stats, t_stats
from ..exceptions import InputError
from .fit import check_fit_inputs, map_blocks
from .memory import check_block_size

__all__ = ["ARFit", "fit_ar"]


@dataclass(frozen=True, eq=False)
class ARFit:
    """An AR(p) fit: the fit (whitened betas and residual variance; R^2 of the OLS fit), the AR coefficients
    (p, V) and the statistics of the contrasts asked for (a whitened model's contrasts need per-voxel
    covariances, which are not kept)."""

    fit: Fit
    ar: np.ndarray
    contrasts: dict[str, Stats]
    order: int


def _block_voxels(n: int, pc: int, order: int, execution: Execution, block_size, workers: int) -> int:
    """Voxels per block of an AR fit: `block_size`, or as many as the ``ar_block`` budget holds per worker."""
    max_memory = execution.max_memory
    check_block_size(block_size, max_memory)
    if block_size is not None:
        return int(block_size)
    # see core.ar.fit_ar_block (one n: the models' autocorrelations at every lag, ARBlock._model_lags)
    per_voxel = 8 * (4 * n + 3 * pc * pc + 4 * (order + 1) ** 2 + (order + 4) * pc)
    budget = execution.budgets.ar_block // max(1, workers)
    if budget < per_voxel:
        if max_memory is not None:
            raise InputError(
                f"`max_memory`={max_memory!r} is too small for an AR fit: one voxel needs {per_voxel} bytes."
            )
        raise InputError(  # (no cap: the default budget is too small for a design this wide)
            f"an AR fit of a design of {pc:,} columns needs {size_text(per_voxel)} a voxel, more than its working "
            f"memory ({size_text(budget)} a thread); give fewer columns, or fit it with --noise ols."
        )
    return int(min(4096, budget // per_voxel))


def fit_ar(
    X,
    Y,
    order: int,
    contrasts: dict,
    *,
    names=None,
    max_memory=None,
    block_size: int | None = None,
    n_jobs: int | None = None,
    scheduler=None,
    device: str | None = None,
    progress: bool | None = None,
    execution: Execution | None = None,
) -> ARFit:
    """Fit a design with AR(`order`) noise estimated and removed for every voxel separately.

    Parameters
    ----------
    X, Y, names, max_memory, block_size, n_jobs :
        As in :func:`voxfit.fit` (blocks are processed in float64; `max_memory` is shared by the threads).
    order : int
        AR order, 1 or more.
    contrasts : dict
        ``{label: expression or weights}``; t for one row, F for several, computed on the whitened model.
    scheduler : dask.distributed.Client or str, optional
        Run the blocks as tasks on a Dask cluster; identical numbers. A ``voxfit.io.ColumnSource`` `Y` is
        read by the workers, a block each; other data are sent by this process.
    progress : bool, optional
        Show a progress bar on stderr (default: when stderr is a terminal and there are more than 8 blocks).
    device : str, optional
        ``cuda`` (``cuda:N``) to compute, per block, the sums that grow with scans x voxels on a GPU through
        CuPy or PyTorch (``strict``: the array-API reference library, for tests): the products with the
        lagged basis, the lagged sums of products, the totals, the first and last `order` scans, in float64
        after the CPU path's shift. The per-voxel AR estimates, whitened fit, contrasts and exact fallbacks
        run on the host in float64 (see ``voxfit.engine._ar_device``), so the numbers equal the CPU path's
        to rounding. The blocks are those of the CPU path, so `max_memory` bounds the device memory too.
        Not with `scheduler`.
    execution : voxfit.Execution, optional
        `max_memory`, `n_jobs`, `scheduler`, `device` and `progress` in one object; its cap bounds the working
        memory here (the ``ar_block`` budget of ``voxfit._execution.BUDGETS``: by default 128 MiB).
    """
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, scheduler=scheduler, device=device, progress=progress
    )
    scheduler = execution.scheduler
    check_scalar(order, "`order` of the AR model", min_val=1, description="a positive integer")
    design = factorize(X, names, max_memory=execution.max_memory)
    Y, n_jobs = check_fit_inputs(X, Y, design.n_scans, execution.n_jobs)
    n, pc = design.X.shape
    if n <= 2 * order + design.rank:
        raise InputError(f"an AR({order}) model needs more than {2 * order + design.rank} scans; the data have {n}.")
    if not isinstance(contrasts, dict):  # (a list or a string failed deep inside: 'list' object has no 'items')
        raise InputError(
            f"`contrasts` must be a dict {{label: expression or weights}}; got {type(contrasts).__name__}."
        )
    weights = {label: check_contrast(expr, design, label) for label, expr in contrasts.items()}
    compiled = True if n * Y.shape[1] >= AUTO_COMPILE_ELEMENTS else None
    block = ARBlock(design, int(order), compiled=compiled, max_memory=execution.max_memory)
    fit_block = functools.partial(fit_ar_block, block, with_mean=True)  # (the mean image, free from its sums)
    if execution.on_device:
        from ._ar_device import DeviceARBlock

        fit_block = DeviceARBlock(block, execution.device)
    V = Y.shape[1]
    step = _block_voxels(n, pc, order, execution, block_size, n_jobs)
    maps = ARMaps(pc, order, weights, V, means=True)
    valid = np.zeros(V, dtype=bool)

    def _place(start: int, ok, res: ARBlockFit | None, invalid_means) -> None:
        valid[start : start + ok.size] = ok
        if res is not None:
            maps.place(start + np.flatnonzero(ok), res)
        if invalid_means is not None:
            maps.place_means(start + np.flatnonzero(~ok), invalid_means)

    def run(start: int) -> None:
        _place(start, *_ar_task(fit_block, list(weights.values()), Y[:, start : min(V, start + step)]))

    starts = range(0, V, step)
    if scheduler is not None:  # the same blocks as Dask tasks
        spans = [(a, min(V, a + step)) for a in starts]
        for (a, _), done in zip(spans, map_blocks(scheduler, _ar_task, (fit_block, list(weights.values())), Y, spans)):
            _place(a, *done)
    else:
        bar = Progress("AR fit", len(starts), enabled=execution.progress, min_total=8)
        with blas_single_threaded():
            run_in_threads(run, starts, min(n_jobs, len(starts)), bar.update)  # stoppable between blocks
        bar.close()
    fit, stats = maps.result(design, valid, n_jobs)
    return ARFit(fit=fit, ar=maps.phi, contrasts=stats, order=int(order))


class ARMaps:
    """The per-voxel results of an AR(p) fit of V voxels, filled block by block (NaN where none is placed):
    betas, whitened and OLS RSS, total sums of squares, AR coefficients (p, V), and each contrast's effects,
    unscaled covariances and degrees of freedom, for the contrast weights `weights` ``{label: w (q, pc)}``; with
    `means`, the data's means, which every block placed then carries (``ARBlockFit.mean``; None once one does not,
    as a device's blocks do not), with those of the voxels not fitted (:meth:`place_means`)."""

    def __init__(self, pc: int, order: int, weights: dict, V: int, means: bool = False):
        self.weights = weights
        self.betas = np.full((pc, V), np.nan)
        self.rss = np.full(V, np.nan)
        self.ols_rss = np.full(V, np.nan)
        self.tss = np.full(V, np.nan)
        self.phi = np.full((order, V), np.nan)
        self.effects = {k: np.full((w.shape[0], V), np.nan) for k, w in weights.items()}
        self.covs = {k: np.full((V, w.shape[0], w.shape[0]), np.nan) for k, w in weights.items()}
        self.dofs = {k: np.full(V, np.nan) for k in weights}
        self.mean = np.full(V, np.nan) if means else None

    def place(self, at, res: ARBlockFit) -> None:
        """The fit of a block at the voxels `at`."""
        self.betas[:, at], self.rss[at], self.tss[at] = res.betas, res.rss, res.tss
        mean = self.mean  # (once: the blocks are placed from several threads)
        if mean is not None:
            if res.mean is None:
                self.mean = None
            else:
                mean[at] = res.mean
        self.phi[:, at], self.ols_rss[at] = res.phi.T, res.ols_rss
        for label, (effect, cov, dof) in zip(self.weights, res.contrasts):
            self.effects[label][:, at], self.covs[label][at], self.dofs[label][at] = effect, cov, dof

    def place_means(self, at, values) -> None:
        """The means of voxels `at` that no block fitted (their data hold NaN or infinity)."""
        mean = self.mean
        if mean is not None:
            mean[at] = values

    def result(self, design, valid, workers: int = 1) -> tuple[Fit, dict[str, Stats]]:
        """The fit of the voxels `valid` (R^2 of the OLS fit) and the contrasts' statistics (z of t on `workers`
        threads); the AR coefficients ``phi`` become read-only."""
        fit = make_fit(design, self.betas, self.rss, self.tss, valid, self.mean)
        with np.errstate(divide="ignore", invalid="ignore"):  # R^2 of the OLS fit: whitened and raw sums differ
            r2 = np.where(self.tss > 0, 1.0 - self.ols_rss / self.tss, np.nan)
        r2.setflags(write=False)
        fit = dataclasses.replace(fit, r2=r2)
        stats = {
            label: contrast_stats(
                label, w, self.effects[label], self.covs[label], fit.residual_variance, self.dofs[label], workers
            )
            for label, w in self.weights.items()
        }
        self.phi.setflags(write=False)
        return fit, stats


def _ar_task(fit_block, weights: list, Yb):
    """One block: which voxels are finite, the fit of those (None if none is) by ``fit_block(Y, weights)``
    (``fit_ar_block`` bound to the ARBlock, or a ``DeviceARBlock``), and the means of the others, NaN or
    infinite as numpy's mean of their data gives (None if there are none)."""
    ok, finite = finite_columns(Yb)
    invalid_means = None
    if not ok.all():
        with np.errstate(invalid="ignore", over="ignore"):
            invalid_means = np.asarray(Yb[:, ~ok]).mean(axis=0, dtype=np.float64)
    return ok, fit_block(finite, weights) if ok.any() else None, invalid_means


def contrast_stats(label, w, effect, cov, sigma2, dof, workers: int = 1) -> Stats:
    """t or F from the whitened fit, with each voxel's effective degrees of freedom `dof` (V,) (see
    ``voxfit.core.ar.estimation_terms``); z of t on `workers` threads."""
    usable = (sigma2 > 0) & np.isfinite(sigma2) & (dof > 0)
    with np.errstate(invalid="ignore"):
        if w.shape[0] == 1:
            return t_stats(label, w, effect[0], cov[:, 0, 0] * sigma2, usable, dof, workers=workers)
        return f_stats(label, w, effect, cov, usable, dof, scale=sigma2)
