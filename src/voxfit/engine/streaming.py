"""Fits that read the data once, front to back, keeping per-voxel sums only: for runs larger than memory.

A .nii.gz can only be decompressed from its start, so the data arrive a slab of scans at a time. For each
voxel the pass accumulates what an OLS or AR(p) fit needs (``voxfit.core.ar.LaggedSums``): the products of
the data with the design's orthonormal basis and its lag-shifted copies, the lagged sums of squares, the
sum, and the first and last p scans, all of the data shifted by the voxel's first value (exact in float64,
so the sums keep their digits). The fit is then done from the sums, as the in-memory path does from a
block. The few voxels that need their data after all (near-exact fits, filters near a unit root, or voxels
zero in the first scan that the automatic mask keeps) are read in a second pass, for them only, and fitted
in memory.

Memory: the cap covers the whole process: the accumulators, ``8 (p + 1) r + 8 (3p + 4)`` bytes per candidate
voxel (r the design's rank), slabs of scans with their copies (the results of the fit and its working
blocks use that room after the pass), and 256 MiB for the interpreter and the libraries (they take 70 to
150 MiB); :func:`fit_streaming` refuses a cap that cannot hold the sums, two scans and that reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import working_dtype
from .._execution import Execution
from .._memory import cap_text, reserved_bytes, size_text
from .._progress import Progress
from .._threads import blas_single_threaded, resolve_workers, run_in_threads
from ..core import Fit, Stats, check_contrast, factorize, make_fit
from ..core.ar import ARBlock, LaggedSums, fit_ar_block, fit_ar_sums, residual_lagged_sums
from ..core.film import film_lags, residual_lagged_products
from ..core.ols import finite_columns, fit_from_sums, needs_refit
from ..exceptions import InputError
from ..io import check_design_rows, Masker, ScaledArray, explicit_mask, open_reader
from ..io.masking import AutoMask, gather, resolve_mask_threshold, scaled_globals
from ..core._kernels import AUTO_COMPILE_ELEMENTS
from ._reading import ReadSums, ScanSums
from .ar import ARFit, ARMaps
from .fit import fit as fit_in_memory
from .noise_models import check_film_geometry, film_autocorrelations, film_space, film_stage_bytes
from .smoothness import GridProducts

__all__ = ["StreamedFit", "fit_streaming", "read_voxels", "streaming_bytes"]

SUMS_BLOCK = 8192  # voxels per fit from the sums


def streaming_bytes(n_voxels: int, rank: int, order: int) -> int:
    """Bytes the accumulators of a streamed fit hold for `n_voxels` candidate voxels."""
    return 8 * n_voxels * ((order + 1) * rank + order + 4 + 2 * order)


class ReadARFit(ReadSums):
    """The AR(`order`) fit of a run from the lagged sums gathered while it is read (``voxfit.io.load(observe=...)``;
    see ``ReadSums``): the streamed pass's sums of the lagged basis, added on a side thread, so that only the fit
    from the sums follows the read. :meth:`finish` gives what ``voxfit.engine.ar.fit_ar`` gives from the data, to
    rounding: voxels with a NaN or an infinity are invalid, and those whose sums lose digits (or overflow though
    their data are finite) are fitted from their data."""

    def __init__(self, X, order: int, contrasts: dict, names=None):
        super().__init__(factorize(X, names), int(order))
        self.weights = {label: check_contrast(expr, self.design, label) for label, expr in contrasts.items()}

    @staticmethod
    def sums_bytes(rank: int, order: int) -> int:
        """Per voxel: what the sums hold."""
        return 8 * ((order + 1) * (rank + 1) + 3 * order + 3)

    def basis(self):
        return ARBlock(self.design, self.order, compiled=False).lagged_basis

    def finish(self, data, execution: Execution | None = None) -> ARFit:
        """After the read into `data` (n, V): the fit (the scans not yet added added first), from the sums of
        blocks of voxels on `execution`'s threads, as many at once as its ``ar_block`` budget holds."""
        self.add_rest(data)
        design, weights = self.design, list(self.weights.values())
        n, V = data.shape
        if n <= 2 * self.order + design.rank:
            raise InputError(
                f"an AR({self.order}) model needs more than {2 * self.order + design.rank} scans; the data have {n}."
            )
        # the compiled AR(1) fit as fit_ar decides (loading numba during the read slowed the read more than it saves)
        execution = execution or Execution()
        compiled = True if n * V >= AUTO_COMPILE_ELEMENTS else None
        block = ARBlock(design, self.order, compiled=compiled, max_memory=execution.max_memory)
        workers = resolve_workers(execution.n_jobs)
        per_voxel = ar_block_bytes(design.rank, self.order, weights, n) // SUMS_BLOCK
        size = int(min(SUMS_BLOCK, max(256, execution.budgets.ar_block // (workers * per_voxel))))
        sums = self.sums.result(design.rank)
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(sums.s).all(axis=0) & np.isfinite(sums.lagged).all(axis=(0, 1))
            finite &= np.isfinite(sums.total) & np.isfinite(sums.top).all(axis=0) & np.isfinite(sums.bottom).all(axis=0)
        valid = finite.copy()
        maps = ARMaps(design.X.shape[1], self.order, self.weights, V)
        shift = sums.shift

        def shifted(at):
            values = np.array(data[:, at], dtype=np.float64)
            return values if shift is None else values - shift[at]

        def fit_part(a: int) -> None:
            at = np.flatnonzero(finite[a : a + size]) + a
            # a block of finite voxels only (as a rule): its sums are views, its results placed by a slice
            span = slice(a, a + at.size) if at.size == min(size, V - a) else at
            if at.size:
                maps.place(span, fit_ar_sums(block, sums.take(span), weights, lambda idx: shifted(at[idx])))

        starts = range(0, V, size)
        with blas_single_threaded():
            run_in_threads(fit_part, starts, max(1, min(workers, len(starts))))  # stoppable between blocks
        suspect = np.flatnonzero(~finite)  # non-finite sums: data with NaN or inf, or finite but overflowing
        overflowed = suspect[finite_columns(data, suspect)]
        if overflowed.size:
            maps.place(overflowed, fit_ar_block(block, np.asarray(data[:, overflowed]), weights))
            valid[overflowed] = True
        fit, stats = maps.result(design, valid, workers)
        return ARFit(fit=fit, ar=maps.phi, contrasts=stats, order=self.order)


def ar_block_bytes(rank: int, order: int, weights, n_scans: int) -> int:
    """A bound on the memory of one AR fit from the sums of `SUMS_BLOCK` voxels (``fit_ar_sums``): per voxel,
    a few copies of the lagged products, the Gram matrix and its factor, and the contrasts' right-hand
    sides and solutions (measured peaks: 5 MiB for AR(1), rank 3 and a t contrast; 109 MiB for AR(8), rank 20
    and a t and a 10-row F contrast; about half the bound); and from AR(2) on, the models' autocorrelations at
    every lag (``ARBlock._model_lags``: up to one series of `n_scans` a voxel, with the products made of it:
    36 KiB a voxel for AR(12) over 1,024 scans, which the bound without them put at 6.6 KiB and so let 64 MiB
    of data under a 384M cap peak at 400 MiB)."""
    r, p, q = rank, order, sum(w.shape[0] for w in weights)
    lags = 5 * n_scans if order >= 2 else 0
    return 8 * SUMS_BLOCK * (4 * (p + 1) * (r + 1) + 4 * r * r + 4 * p * p + 4 * r * (q + 1) + 64 + lags)


def _columns(sums: LaggedSums, cols) -> LaggedSums:
    """The sums of some voxels (a view for a slice, a copy for an index array)."""
    return LaggedSums(
        sums.lagged[:, :, cols],
        sums.s[:, cols],
        sums.top[:, cols],
        sums.bottom[:, cols],
        sums.total[cols],
        None if sums.shift is None else sums.shift[cols],
    )


def _scaled(raw, reader):
    """Scale factors applied by ``io.ScaledArray``, as the in-memory path applies them, so results agree."""
    return raw if reader.scale is None else ScaledArray(raw, *reader.scale)[...]


@dataclass(frozen=True, eq=False)
class StreamedFit:
    """A streamed fit over the V voxels of the mask: the fit (R^2 of the OLS fit for AR models), the
    statistics of the contrasts ``{label: Stats}``, the AR coefficients (order, V) (None for OLS), the masker
    of the voxels fitted and each voxel's mean over the scans (V,)."""

    fit: Fit
    contrasts: dict[str, Stats]
    ar_coef: NDArray | None
    masker: Masker
    mean: NDArray
    neighbour_sums: object | None = None  # voxfit.inference.rft.NeighbourSums, with `smoothness`
    film: dict | None = None  # FILM's settings (``voxfit.engine.noise_models.film_autocorrelations``), with `film`


@dataclass(frozen=True, eq=False)
class _Pass:
    """What the pass over the data leaves: the sums of the candidate voxels (those read into sums), the
    masker of the voxels kept, which columns of the sums are kept (`kept`, None: all) and their positions
    among the mask's voxels (`targets`), the positions of the voxels kept that have no sums (zero in the
    first scan: they are refitted from their data), and the slabs' share of the memory cap (the fit's working
    room after the pass)."""

    sums: LaggedSums
    masker: Masker
    kept: NDArray | None
    targets: NDArray
    unread: NDArray
    slab_bytes: int
    grid: GridProducts | None = None

    def sums_of(self, part: slice) -> LaggedSums:
        """The sums of ``targets[part]``: a view, or a copy of the block only."""
        return _columns(self.sums, part if self.kept is None else self.kept[part])


def fit_streaming(
    paths,
    X,
    contrasts: dict,
    *,
    order: int = 0,
    names=None,
    mask=None,
    mask_threshold=None,
    max_memory=None,
    progress: bool | None = None,
    scans_per_slab: int | None = None,
    nonzero: bool = False,
    execution: Execution | None = None,
    smoothness: bool = False,
    film: bool = False,
    mesh=None,
) -> StreamedFit:
    """Fit `X` to the images `paths` in one sequential read, holding per-voxel sums only.

    The numbers equal those of the in-memory fit to rounding. `order` 0 is OLS, p >= 1 AR(p) per voxel.
    `max_memory` (or the cap of `execution`, which also holds `progress`) bounds the whole process (see the module
    docstring; without a cap, the ``stream`` budget of ``voxfit._execution.BUDGETS``: 2 GiB); `scans_per_slab`
    overrides the slab
    size it implies (for tests and tuning). With `nonzero`, the automatic mask is the group-level one: voxels
    finite and non-zero in every row. Three steps: the pass accumulating the sums (:func:`_accumulate`), the
    fit from the sums (:func:`_fit_from_sums`), and the refit of the voxels that need their data
    (:func:`_refit`). With `smoothness` (a volume), the residuals' neighbour sums are collected on the way
    (``voxfit.engine.smoothness``; AR models: those of the OLS residuals). With `film` (a volume), FSL FILM's
    model as ``voxfit.engine.noise_models.fit_film`` fits it (`order` is then FILM's window, round(sqrt n)): its
    autocorrelations from the sums between the pass and the fit (:func:`_film_autocorrelations`); on a surface,
    over its `mesh` (vertices and triangles).
    """
    execution = Execution.resolve(execution, max_memory=max_memory, progress=progress)
    reader = open_reader(paths)
    design = factorize(X, names, max_memory=execution.max_memory)
    n = design.n_scans
    check_design_rows(n, reader.n_scans, reader.geometry.n_elements)
    weights = {label: check_contrast(expr, design, label) for label, expr in contrasts.items()}
    if film:
        check_film_geometry(reader.geometry, mesh)
        order = film_lags(n)
    if order:
        if n <= 2 * order + design.rank:
            raise InputError(
                f"an AR({order}) model needs more than {2 * order + design.rank} scans; the data have {n}."
            )
        block = ARBlock(design, order, max_memory=execution.max_memory)
        basis = block.lagged_basis
    else:
        block, basis = None, design.basis
    grid = GridProducts(reader.geometry.shape, design.exact_intercept) if smoothness else None  # (as the pass's sums)
    accumulated = _accumulate(
        reader, design, basis, order, mask, mask_threshold, nonzero, execution, scans_per_slab, grid, film
    )
    mean = _mean(accumulated, n)
    rho, film_info = _film_autocorrelations(reader, block, accumulated, mean, mesh, execution) if film else (None, None)
    maps, flagged = _fit_from_sums(accumulated, design, block, weights, execution.n_jobs, rho)
    at = np.union1d(accumulated.unread, flagged)
    _refit(reader, design, block, weights, accumulated.masker, at, maps, mean, rho)
    valid = np.isfinite(maps.rss)
    neighbours = None if grid is None else _neighbour_sums(accumulated, grid, design)
    if order:
        fit, stats = maps.result(design, valid, resolve_workers(execution.n_jobs))
        return StreamedFit(fit, stats, maps.phi, accumulated.masker, mean, neighbours, film_info)
    fit = make_fit(design, maps.betas, maps.rss, maps.tss, valid)
    stats = {label: fit.contrast(expr, name=label, n_jobs=execution.n_jobs) for label, expr in contrasts.items()}
    return StreamedFit(fit, stats, None, accumulated.masker, mean, neighbours)


def _neighbour_sums(accumulated: _Pass, grid: GridProducts, design):
    """The OLS residuals' neighbour sums from the grid's data products and the projections Q'y the pass summed
    (NaN at the voxels without sums)."""
    c = np.full((design.rank, accumulated.masker.n_voxels), np.nan)
    lagged = accumulated.sums.lagged[0]
    c[:, accumulated.targets] = lagged if accumulated.kept is None else lagged[:, accumulated.kept]
    return grid.residual_sums(accumulated.masker.mask, c, design.basis)


def _accumulate(
    reader,
    design,
    basis,
    order: int,
    mask,
    mask_threshold,
    nonzero: bool,
    execution: Execution,
    scans_per_slab,
    grid: GridProducts | None = None,
    film: bool = False,
) -> _Pass:
    """The one pass over the data: the sums of the candidate voxels (from `basis`, the design's or its lagged
    one), and the mask, decided on the way (automatic: voxels finite and not constant, or non-zero with
    `nonzero`; or the explicit `mask` less its voxels not finite). The cap holds the sums and two scans, and with
    `film` FILM's autocorrelations after the pass beside the sums (:func:`_film_autocorrelations`): at the cap
    this had named, a run of 460,800 voxels peaked at 675 MiB under 592M."""
    nel = reader.geometry.n_elements
    cap = execution.budgets.stream
    threshold = resolve_mask_threshold(mask_threshold, reader.geometry, explicit=mask is not None)
    if mask is not None:
        candidates = explicit_mask(mask, reader.geometry)  # a file, a nibabel image or a boolean array
    else:
        candidates = None  # decided on the first scan
    V0 = nel if candidates is None else int(candidates.sum())
    held = streaming_bytes(V0, design.rank, order) + (0 if grid is None else GridProducts.bytes(grid.shape))
    # a scan of the slab costs: the reader's buffers (up to three slabs: one in use, two read ahead), the
    # scaled values (a float64 product, then the working copy), the candidates' gathered copy and the mask
    # checks' boolean temporaries; the tiles of the sums are a few MiB
    work = working_dtype(reader.dtype, reader.scale).itemsize
    per_scan = 3 * nel * reader.dtype.itemsize + (nel * (8 + work) if reader.scale else 0) + V0 * work + 2 * nel
    after = _film_bytes(V0, order, reader.geometry) if film else 0
    slab_bytes = cap - held - reserved_bytes()
    if slab_bytes < max(2 * per_scan, after):
        need = held + max(2 * per_scan, after) + reserved_bytes()
        raise InputError(
            f"`max_memory`={execution.max_memory or size_text(cap)!r} cannot hold the per-voxel sums of this fit "
            f"({held / 2**20:.1f} MiB) and {'two scans' if after <= 2 * per_scan else 'FILM autocorrelations'}; give "
            f"at least {cap_text(need)}."
        )
    auto = AutoMask(nel, reader.dtype.kind == "f", threshold, nonzero=nonzero)
    sums = index = kept = None
    k = max(1, slab_bytes // per_scan) if scans_per_slab is None else int(scans_per_slab)
    max_bytes = k * nel * reader.dtype.itemsize
    bar = Progress("reading", design.n_scans, enabled=execution.progress)
    # after the first slab, the candidates' mask checks come from their sums of squares when those are taken
    # about the first scan's values and the data are worked in float32 (the squares cannot overflow); the
    # other voxels are checked scan by scan (none with an explicit mask: only its voxels are kept)
    by_sums = design.exact_intercept and work == 4 and threshold is None and not nonzero
    rest = None
    # one BLAS thread: the products are small, and another core decompresses
    with blas_single_threaded():
        for start, raw in reader.iter_scans(max_bytes=max_bytes):
            bar.update(start + raw.shape[0])
            values = _scaled(raw, reader)
            first = sums is None
            if first:
                auto.add(values)
                if candidates is None:
                    candidates = auto.candidates
                index = np.flatnonzero(candidates)
                sums = ScanSums(basis, order, index.size, shift=design.exact_intercept)
                if by_sums:
                    rest = np.flatnonzero(~candidates) if mask is None else np.zeros(0, dtype=int)
            gathered = values if index.size == nel else np.take(values, index, axis=1)
            if first:
                if rest is None and (mask is not None or auto.settled()):
                    kept = auto.restricted(index)  # only the candidates can be kept: checked on their values
            elif kept is not None:
                kept.add(gathered, globals_=None if threshold is None else scaled_globals(values))
            elif rest is None:
                auto.add(values)
            elif rest.size:
                auto.add(np.take(values, rest, axis=1), rest)
            sums.add(gathered)
            if grid is not None:
                grid.add(gathered, candidates)
    bar.close()
    del raw, values  # the last slab's buffer
    if rest is not None:
        auto.add_squares(index, sums.s[0])
    if kept is not None:
        final = np.zeros(nel, dtype=bool)
        final[index] = kept.finite if mask is not None else kept.mask()
    else:
        final = (candidates & auto.finite) if mask is not None else auto.mask()
    if not final.any():
        raise InputError(
            "the automatic mask is empty: no voxel is finite and not constant over time in every scan."
            if mask is None
            else f"no voxel of mask {mask} has finite values in every scan."
        )
    masker = Masker(reader.geometry, final)
    pos = np.full(nel, -1)
    pos[masker.index] = np.arange(masker.n_voxels)
    kept = np.flatnonzero(final[index])  # the candidates kept, as columns of the sums
    return _Pass(
        sums.result(design.rank),
        masker,
        None if kept.size == index.size else kept,
        pos[index[kept]],
        pos[np.flatnonzero(final & ~candidates)],
        slab_bytes,
        grid,
    )


def _mean(accumulated: _Pass, n: int) -> NDArray:
    """Each voxel's mean over the `n` scans, from its sums: its shift plus the mean of the shifted data (NaN at
    the voxels without sums)."""
    S = accumulated.sums
    mean = np.full(accumulated.masker.n_voxels, np.nan)
    total = S.total if accumulated.kept is None else S.total[accumulated.kept]
    shift = 0.0 if S.shift is None else (S.shift if accumulated.kept is None else S.shift[accumulated.kept])
    mean[accumulated.targets] = total / n + shift
    return mean


def _film_bytes(n_voxels: int, order: int, geometry=None) -> int:
    """What :func:`_film_autocorrelations` holds beside the sums for `n_voxels` voxels: the lagged products, the
    mean image and FILM's own (``voxfit.engine.noise_models.film_stage_bytes``; without `geometry`, all but the
    neighbourhood)."""
    return 8 * n_voxels * (order + 2) + film_stage_bytes(n_voxels, order, geometry)


def _film_autocorrelations(
    reader, block: ARBlock, accumulated: _Pass, mean: NDArray, mesh=None, execution: Execution | None = None
) -> tuple[NDArray, dict]:
    """FILM's autocorrelations of every voxel of the mask (V, M+1) and its settings: the OLS residuals' lagged
    products from the sums (from the data, read for them only, where there are no sums or they cancelled too
    many digits; their means set in `mean`), then FILM's spatial step on the mask's grid over the mean image,
    and its taper, as the in-memory fit does (``voxfit.engine.noise_models.film_autocorrelations``)."""
    targets, design = accumulated.targets, block.design
    lagged = np.zeros((block.order + 1, accumulated.masker.n_voxels))
    lost = [accumulated.unread]
    for a in range(0, targets.size, SUMS_BLOCK):
        part = slice(a, a + SUMS_BLOCK)
        sums = accumulated.sums_of(part)
        lagged[:, targets[part]] = residual_lagged_sums(block, sums)
        lost.append(targets[part][needs_refit(lagged[0, targets[part]], sums.s[0])])
    at = np.unique(np.concatenate(lost))
    if at.size:
        data = np.asarray(_scaled(gather(reader, accumulated.masker.index[at]), reader), dtype=np.float64)
        mean[at] = data.mean(axis=0)
        shifted = data - mean[at] if design.exact_intercept else data  # (the residuals unchanged)
        lagged[:, at] = residual_lagged_products(design.basis, shifted, block.order)
    valid = np.ones(accumulated.masker.n_voxels, dtype=bool)
    # (the room the pass's slabs had, less what FILM holds beside its neighbourhood)
    room = accumulated.slab_bytes - _film_bytes(accumulated.masker.n_voxels, block.order)
    space = film_space(accumulated.masker, mean, mesh, execution, budget=room if mesh is not None else None)
    return film_autocorrelations(lagged, valid, space)


def _fit_from_sums(
    accumulated: _Pass, design, block: ARBlock | None, weights: dict, n_jobs: int | None = None, rho=None
) -> tuple[ARMaps, NDArray]:
    """The fit of the voxels with sums, a block of `SUMS_BLOCK` at a time (AR blocks in up to `n_jobs`
    threads; with `rho` (V, p+1), FILM's autocorrelations, their AR(p) whitening): the maps (NaN at the voxels
    without sums) and the positions of the voxels whose sums cancelled too many digits (their refit needs
    their data)."""
    targets, V = accumulated.targets, accumulated.masker.n_voxels
    pc = design.X.shape[1]
    order = 0 if block is None else block.order
    maps = ARMaps(pc, order, weights if order else {}, V)
    flagged = np.zeros(targets.size, dtype=bool)  # of the targets
    if order:  # from the sums, a block of voxels at a time (the per-voxel algebra holds a few hundred values
        # each; FILM's AR(M) a few thousand), the blocks in threads: numpy's batched algebra releases the GIL
        # blocks as large and as many at once as the slabs' share of the cap holds beside the results (see
        # ar_block_bytes)
        results = 8 * V * (pc + 6 + order + sum(w.shape[0] * (w.shape[0] + 4) for w in weights.values()))
        room = accumulated.slab_bytes - results - (0 if rho is None else rho.nbytes)
        per_voxel = ar_block_bytes(design.rank, order, list(weights.values()), design.n_scans) // SUMS_BLOCK
        size = int(min(SUMS_BLOCK, max(256, room // per_voxel)))

        def fit_part(a: int) -> None:
            part = slice(a, a + size)
            known = None if rho is None else (lambda _r: rho[targets[part]])
            res = fit_ar_sums(block, accumulated.sums_of(part), list(weights.values()), autocorrelations=known)
            flagged[a + res.flagged] = True
            maps.place(targets[part], res)

        starts = range(0, targets.size, size)
        workers = max(1, min(resolve_workers(n_jobs), len(starts), room // (size * per_voxel)))
        with blas_single_threaded():
            run_in_threads(fit_part, starts, workers)  # stoppable between blocks
    else:
        for a in range(0, targets.size, SUMS_BLOCK):
            part = slice(a, a + SUMS_BLOCK)
            piece, at = accumulated.sums_of(part), targets[part]
            maps.betas[:, at], maps.rss[at], maps.tss[at] = fit_from_sums(
                design, piece.lagged[0], piece.s[0], piece.total, piece.shift
            )
            flagged[part] = needs_refit(maps.rss[at], piece.s[0])
    return maps, targets[flagged]


def read_voxels(reader, elements) -> NDArray[np.float64]:
    """The series (n, k) of the elements `elements` of `reader`'s scans, as the fit sees them, in float64: read
    again (a second pass over the files)."""
    return np.asarray(_scaled(gather(reader, elements), reader), dtype=np.float64)


def _refit(
    reader, design, block: ARBlock | None, weights: dict, masker: Masker, at, maps: ARMaps, mean, rho=None
) -> None:
    """The voxels at positions `at` fitted in memory from their data, read in a second pass (float64, as exact
    as the sums): those zero in the first scan yet kept, and those whose sums cancelled too many digits (with
    `rho`, FILM's autocorrelations of every voxel, whitened by them)."""
    if not at.size:
        return
    data = read_voxels(reader, masker.index[at])
    mean[at] = data.mean(axis=0)
    if block is not None:
        known = None if rho is None else (lambda _r: rho[at])
        maps.place(at, fit_ar_block(block, data, list(weights.values()), autocorrelations=known))
    else:
        exact = fit_in_memory(design.X, data, names=list(design.names), n_jobs=1)
        maps.betas[:, at], maps.rss[at] = exact.betas, exact.residual_variance * design.dof
        centred = data - data.mean(axis=0) if design.has_intercept else data
        maps.tss[at] = np.einsum("tv,tv->v", centred, centred)
