"""``voxfit.fit``: one design, many voxels, processed block by block on all cores."""

from __future__ import annotations

import threading
import warnings

import numpy as np
from numpy.typing import ArrayLike

from .._array import check_data_matrix, check_same_rows
from .._dask import run_tasks
from .._memory import check_memory
from .._execution import Execution
from .._progress import Progress
from .._threads import blas_single_threaded, resolve_workers, run_in_threads
from ..core import Fit, factorize, make_fit, working_dtype
from ..core._kernels import use_compiled
from ..core.ols import (
    BlockFitter,
    BlockResult,
    empty_result,
    fit_from_sums,
    fit_operator,
    fit_sums_of_data,
    needs_refit,
)
from ..exceptions import DegreesOfFreedomWarning
from ._reading import ReadSums
from .memory import DEFAULT_TILE_BYTES, NUMPY_TILE_BYTES, plan_blocks

__all__ = ["GridFit", "ReadFit", "check_fit_inputs", "fit", "fit_read_sums", "map_blocks"]


def check_fit_inputs(X, Y, n_scans: int, n_jobs):
    """Check the data (numeric, (n, V), n matching the design `X`, rows labelled as its rows where both are
    pandas objects; a 1-D y is one voxel) and `n_jobs`."""
    check_same_rows(X=X, Y=Y)
    Y = check_data_matrix(
        Y,
        "Y",
        n_scans,
        "scan",
        "an (n_scans, n_voxels) array (for image files or nibabel images: voxfit.load or voxfit.fit_images)",
    )
    return Y, resolve_workers(n_jobs)


def fit(
    X,
    Y: ArrayLike,
    *,
    names=None,
    max_memory: str | int | None = None,
    block_size: int | None = None,
    n_jobs: int | None = None,
    progress: bool | None = None,
    compiled: bool | None = None,
    scheduler=None,
    device: str | None = None,
    execution: Execution | None = None,
) -> Fit:
    """Fit one linear model to every voxel at once: ``betas = pinv(X) @ Y``, block by block.

    Parameters
    ----------
    X : (n, p) array_like or pandas.DataFrame
        Design matrix, one row per scan; a DataFrame's column names become the names used in contrasts.
    Y : (n, V) array_like
        Data, one row per scan, one column per voxel, in any float or integer dtype; a memory map is read
        block by block and never copied whole. A 1-D array is one voxel. Float32 data are processed in
        float32 with float64 corrections (see ``voxfit.core.ols`` for the precision policy).
    names : sequence of str, optional
        Design column names (default: a DataFrame's columns, else ``x0, x1, ...``).
    max_memory : str or int, optional
        Bound on the working memory of the computation, e.g. ``"64K"``, ``"500M"``, ``"2G"`` or bytes
        (default 64M). It covers every temporary buffer of all threads; ``Y`` itself and the results,
        ``(p + 3) * 8`` bytes per voxel, come on top. Results do not depend on it beyond rounding.
    block_size : int, optional
        Voxels per block, instead of `max_memory`. Memory is O(block_size * p + tile * n) per thread.
    n_jobs : int, optional
        Threads to use (default: every CPU this process may run on). BLAS is held to one thread per worker
        while they run, so that the two do not oversubscribe the cores.
    progress : bool, optional
        Show a progress bar on stderr (default: only when stderr is a terminal and the fit is large).
    compiled : bool, optional
        Use the numba-compiled pass over the data (faster than numpy's, which works in larger tiles: fit and one t
        contrast of 200,000 voxels x 300 scans on 2 cores, 44 ms against 58-60 ms, ``benchmarks/bench_core.py``;
        loading it costs ~0.6 s once per process).
        Default: when already loaded, or for data of 2**29 elements or more. Results agree to rounding either way.
        ``voxfit.core.warm_up()`` loads it ahead of time.
    scheduler : dask.distributed.Client or str, optional
        Fit the blocks as tasks on a Dask cluster (a client or a scheduler address); the blocks are those
        of the local run, so the numbers are identical. When `Y` is a ``voxfit.io.ColumnSource`` each worker
        reads its own block from the file (at the same path); otherwise this process sends each block.
    device : str, optional
        ``cuda`` (``cuda:N``) to fit on a GPU through CuPy or PyTorch (``strict``: the array-API reference
        library, for tests). The design is factorised on the CPU in float64; the data go to the device a
        block at a time, shifted by their first scan, and are multiplied in float32; voxels where the sums
        lose digits are refitted on the CPU in float64.
    execution : voxfit.Execution, optional
        `max_memory`, `n_jobs`, `progress`, `scheduler` and `device` in one object (as the models pass them);
        here its cap is the working memory's (the ``block`` budget of ``voxfit._execution.BUDGETS``).

    Returns
    -------
    Fit
        ``betas`` (p, V), ``residual_variance`` (V,), ``r2`` (V,), ``dof``, ``rank``, ``valid`` (V,) and
        ``contrast(...)``.

    Raises
    ------
    InputError, DataTypeError
        For designs or data of the wrong shape or type, non-finite designs, or impossible memory settings.
    """
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, progress=progress, scheduler=scheduler, device=device
    )
    design = factorize(X, names, max_memory=execution.max_memory)
    Y, n_jobs = check_fit_inputs(X, Y, design.n_scans, execution.n_jobs)
    n, p = design.X.shape
    V = Y.shape[1]
    wdt = working_dtype(Y.dtype)
    budget = execution.budgets.block
    compiled = use_compiled(n * V, compiled)
    block, tile = plan_blocks(
        n,
        p,
        wdt.itemsize,
        execution.max_memory,
        block_size,
        workers=n_jobs,
        budget=budget,
        tile_bytes=DEFAULT_TILE_BYTES if compiled else NUMPY_TILE_BYTES,
    )
    _warn_without_dof(design)

    # the results (betas p x V and per-voxel sums) exist whole, whatever the blocks: p comes from a design file
    check_memory(
        8 * V * (p + 3),
        f"the fit's results ({p:,} design columns x {V:,} voxels)",
        None,
        "Give a design with fewer columns, or a smaller mask.",
    )
    out = empty_result(p, V)
    scheduler = execution.scheduler
    if execution.on_device:
        return _fit_on_device(design, Y, execution.device, block)
    if scheduler is not None:  # the same blocks, each a task on a Dask cluster
        spans = [(a, min(a + block, V)) for a in range(0, V, block)]
        args = (design, tile, compiled)
        for (a, b), (betas, rss, tss, valid) in zip(spans, map_blocks(scheduler, _fit_block, args, Y, spans)):
            out.betas[:, a:b], out.rss[a:b], out.tss[a:b], out.valid[a:b] = betas, rss, tss, valid
        return make_fit(design, out.betas, out.rss, out.tss, out.valid)
    local = threading.local()

    def run(start: int) -> None:
        fitter = getattr(local, "fitter", None)
        if fitter is None:
            fitter = local.fitter = BlockFitter(design, Y.dtype, min(tile, V), compiled)
        stop = min(start + block, V)
        part = slice(start, stop)
        fitter(Y, start, stop, BlockResult(out.betas[:, part], out.rss[part], out.tss[part], out.valid[part]))

    starts = range(0, V, block)
    workers = min(n_jobs, len(starts))
    bar = Progress("fitting", len(starts), enabled=execution.progress, min_total=8)  # (None: when stderr is a terminal)
    # One BLAS thread per worker, even for a single worker: BLAS threads that spin between the many small
    # products slow the compiled pass that runs in between by up to 3x (measured on 2 cores).
    with blas_single_threaded():
        run_in_threads(run, starts, workers, bar.update)  # stops within a block of Ctrl-C or SIGTERM
    bar.close()
    return make_fit(design, out.betas, out.rss, out.tss, out.valid)


def _warn_without_dof(design) -> None:
    if design.dof == 0:
        warnings.warn(
            f"The design leaves no residual degrees of freedom ({design.n_scans} scans, rank {design.rank}); "
            "residual variances and statistics are NaN.",
            DegreesOfFreedomWarning,
            stacklevel=3,
        )


class ReadFit(ReadSums):
    """The OLS fit of a run from sums gathered while it is read (``voxfit.io.load(observe=...)``; see ``ReadSums``:
    on a side thread, so that only the fit's finishing follows the read): per voxel, in float64, ``Q'(y - shift)``,
    ``sum (y - shift)^2`` and ``sum (y - shift)``, the shift its first scan when the design spans the constant (so
    that the sums keep their digits). :meth:`finish` gives the :class:`Fit` that :func:`fit` gives from the data,
    to rounding, by the same rules (``voxfit.core.ols.fit_sums_of_data``)."""

    def __init__(self, X, names=None):
        super().__init__(factorize(X, names))

    def finish(self, data) -> Fit:
        """After the read into `data` (n, V): the fit (the scans not yet added added first)."""
        self.add_rest(data)
        s = self.sums.result(self.design.rank)
        return fit_read_sums(self.design, s.lagged[0], s.s[0], s.total, s.shift, data)


class GridFit:
    """The OLS fit of a run from RFT's sums gathered while it is read (``voxfit.engine.smoothness.GridProducts``
    at the voxels of the run's mask, on the design's basis, each voxel shifted by its first scan: they hold
    ``Q'(y - y0)``, ``sum (y - y0)^2`` and ``sum (y - y0)`` too), for a design with the constant; as
    :class:`ReadFit`. :attr:`neighbours`: the residuals' neighbour sums, made by :meth:`finish`."""

    def __init__(self, grid, X, names=None):
        self.grid, self.design, self.neighbours = grid, factorize(X, names), None

    def finish(self, data) -> Fit:
        self.neighbours = self.grid.finish(data)
        S = self.grid.sums
        return fit_read_sums(self.design, self.grid.projections, S[:, 0], S[:, 1], self.grid.shift, data)

    def mean(self) -> np.ndarray:
        return self.grid.shift + self.grid.sums[:, 1] / self.grid.n_scans


def fit_read_sums(design, c, ss, total, shift, data) -> Fit:
    """The :class:`Fit` of the data (n, V) from their sums gathered during the read (see
    ``voxfit.core.ols.fit_sums_of_data``)."""
    _warn_without_dof(design)
    out = fit_sums_of_data(design, c, ss, total, shift, data)
    return make_fit(design, out.betas, out.rss, out.tss, out.valid)


def _fit_on_device(design, Y, device: str, block: int) -> Fit:
    """OLS on an array-API device: per block, Q'Y and the sums of squares on the device, in float32 after a
    shift by the first scan (exact on the host); the rest on the host in float64."""
    from .._array import device_namespace, to_numpy

    xp, dev = device_namespace(device)
    kw = {} if dev is None else {"device": dev}
    V = Y.shape[1]
    Qd = xp.asarray(fit_operator(design, np.float32), **kw)  # (with (I - H) 1 for a shift's terms: fit_from_sums)
    out = empty_result(design.X.shape[1], V)
    step = max(block, 8192)
    for a in range(0, V, step):
        Yb = np.asarray(Y[:, a : a + step], dtype=np.float64)
        valid = np.isfinite(Yb).all(axis=0)
        Yb = np.where(valid, Yb, 0.0)
        shift = Yb[0].copy() if design.has_intercept else None  # (float32 keeps the digits about the first scan)
        Yd = xp.asarray(np.ascontiguousarray(Yb if shift is None else Yb - shift, dtype=np.float32), **kw)
        c = to_numpy(xp, xp.matmul(Qd, Yd)).astype(np.float64)
        ss = to_numpy(xp, xp.sum(Yd * Yd, axis=0)).astype(np.float64)
        total = to_numpy(xp, xp.sum(Yd, axis=0)).astype(np.float64)
        b = slice(a, a + Yb.shape[1])
        out.betas[:, b], out.rss[b], out.tss[b] = fit_from_sums(design, c, ss, total, shift)
        out.valid[b] = valid
        redo = np.flatnonzero(valid & needs_refit(out.rss[b], ss, on_device=True))  # float32 sums lost digits
        if redo.size:
            exact = fit(design.X, Yb[:, redo], n_jobs=1)
            idx = a + redo
            out.betas[:, idx], out.rss[idx] = exact.betas, exact.residual_variance * design.dof
        out.betas[:, b][:, ~valid] = np.nan
        out.rss[b][~valid] = out.tss[b][~valid] = np.nan
    return make_fit(design, out.betas, out.rss, out.tss, out.valid)


def _fit_block(design, tile: int, compiled: bool, Yb):
    """One block fitted on its own (a Dask task): betas, rss, tss, valid."""
    out = empty_result(design.X.shape[1], Yb.shape[1])
    with blas_single_threaded():
        BlockFitter(design, Yb.dtype, min(tile, Yb.shape[1]), compiled)(
            Yb, 0, Yb.shape[1], BlockResult(out.betas, out.rss, out.tss, out.valid)
        )
    return out.betas, out.rss, out.tss, out.valid


def map_blocks(scheduler, fn, args, Y, spans):
    """``fn(*args, Y[:, a:b])`` for each span as Dask tasks (`args` sent once to every worker); results in
    span order. `scheduler` is a dask.distributed Client or a scheduler address.

    When Y is a :class:`voxfit.io.ColumnSource` (``Y.worker_reads``), it is sent once with `args` and each
    task reads its own ``Y[:, a:b]`` on its worker; otherwise the client reads each block and sends it."""
    if getattr(Y, "worker_reads", False):
        return run_tasks(scheduler, _apply, (fn, list(args), Y), spans)
    return run_tasks(scheduler, _apply, (fn, list(args), None), ((np.asarray(Y[:, a:b]),) for a, b in spans))


def _apply(shared, *call):
    """One task: `call` is a block of data, or the span (a, b) of the source in `shared` to read here."""
    fn, args, source = shared
    return fn(*args, call[0] if source is None else source[:, call[0] : call[1]])
