"""The sums behind the smoothness of a fit's residuals (random field theory), collected while the fit runs.

SPM's ``spm_est_smoothness`` differentiates the normalised residuals of neighbouring voxels; everything it needs
is ``voxfit.inference.rft.NeighbourSums``: per voxel, the residuals' sum of squares and sum, and the six inner
products over the scans of the residuals of the voxel and its +x, +y, +z neighbours (``neighbour_index``). The
residuals are never formed: with ``d = y - s`` (each voxel's data less its first scan, which keeps the sums'
digits) and the orthonormal basis Q of the design's column space, ``e_a . e_b = d_a . d_b - (Q' d_a) . (Q' d_b)``
when the design spans the constant (the shift then changes no residual), plus terms in the shifts and the ones'
residual otherwise (``_smoothness_numba.residual_products``). One compiled pass over the data
(``_smoothness_numba``) adds the data's products and ``Q' d``; a second compiled pass over the voxels forms the
residuals' sums from them. Exact to the rounding of float64 sums (a relative error of about
``eps * |d|^2 / |e|^2``).

How each route collects them:

- read into memory with an explicit mask (``voxfit fit --mask``, ``fit_images(mask=...)``): :class:`GridProducts`
  is handed the scans as the read gathers them (``voxfit.io.load(observe=...)``) and adds them, with their
  projections, on a side thread while the next scans decompress; only the residuals' pass follows the fit;
- in memory otherwise: :func:`neighbour_sums` on the (n, V) data as stored (float32 stays float32: each value is
  read once per scan, in the dtype it has), a slab of z-planes at a time on `n_jobs` threads;
- on Dask workers reading their own columns: the same slabs as tasks (each reads its planes and the next);
- streamed over scans: :class:`GridProducts` adds each slab of whole-volume scans (the mask is decided only at
  the end of the pass), and :meth:`GridProducts.residual_sums` subtracts the projections the streamed fit
  summed.

Which residuals: OLS and group OLS their own. SPM's ``ar1-global`` (one whitening W for all voxels) its whitened
residuals ``W y - Q_w Q_w' W y``, as SPM (W is applied to each slab's data first). AR(p) per voxel: the OLS
residuals of the same design (each voxel's whitening filter differs from its neighbours', so whitened residuals
of neighbours are not one field; the OLS residuals carry the noise's spatial correlation itself, which is what
the smoothness measures).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .._array import written_zeros
from .._dask import run_tasks
from .._threads import resolve_workers, run_in_threads
from ..core.design import EXACT_INTERCEPT_RTOL, INTERCEPT_RTOL
from ._reading import ReadAccumulator

if TYPE_CHECKING:  # voxfit.inference.rft imports scipy.stats: loaded when sums are made, not with the engine
    from ..inference.rft import NeighbourSums

__all__ = ["GridProducts", "neighbour_sums", "spans_constant", "warm_kernels"]

DENSE_BYTES = 4 << 20  # a chunk of dense float64 scans of a slab (in L2 as the products read it back: 16 MiB cost 1.5x)
SLAB_POSITIONS = 16384  # dense positions of a slab (whole planes): a task

_READY = threading.Event()  # set once warm_kernels has loaded the compiled kernels in this process
_LOCAL = threading.local()  # each thread's dense buffer, reused from slab to slab


def spans_constant(basis: NDArray, whitening: NDArray | None = None, exact: bool = False) -> bool:
    """Whether the column space of the orthonormal `basis` (n, r) holds the constant (whitened by `whitening`
    when given), to 1e-8 per row (``DesignFactor.has_intercept``'s bound: a shift by each voxel's first scan
    keeps the sums' digits, and changes its residuals by that much at most) or, `exact`, to rounding
    (``exact_intercept``'s: the shift's terms vanish)."""
    ones = np.ones(basis.shape[0])
    if whitening is not None:
        ones = whitening @ ones
    scale = max(float(np.linalg.norm(ones)), 1e-300)
    bound = EXACT_INTERCEPT_RTOL if exact else INTERCEPT_RTOL
    return bool(np.linalg.norm(_ones_residual(basis, ones)) <= bound * scale)


def _ones_residual(basis: NDArray, ones: NDArray) -> NDArray:
    return ones - basis @ (basis.T @ ones)


@dataclass(frozen=True, eq=False)
class _Layout:
    """The mask's voxels on its bounding box padded by one plane along each axis (x fastest): ``pos`` (V,)
    each voxel's position, ``sx`` and ``sz`` the strides of y and z, ``starts`` (planes + 1) the first voxel of
    each plane of the box, ``runs`` the first voxel of each run of voxels at consecutive positions (and V: runs
    never cross a row, so each plane starts one), ``rep_src``/``rep_dst`` the voxels copied into the pad planes at
    the grid's far edges (where ``neighbour_index`` gives the voxel itself), sorted by position, and ``nb`` that
    index."""

    pos: NDArray[np.int64]
    sx: int
    sz: int
    starts: NDArray[np.int64]
    runs: NDArray[np.int64]
    rep_src: NDArray[np.int64]
    rep_dst: NDArray[np.int64]
    nb: NDArray[np.int64]


def _layout(mask: NDArray[np.bool_]) -> _Layout:
    from ..inference.rft import neighbour_index

    nb = neighbour_index(mask)
    elements = np.flatnonzero(mask.ravel(order="F"))
    X, Y, _ = mask.shape
    coords = [elements % X, (elements // X) % Y, elements // (X * Y)]
    lo = [int(c.min()) if c.size else 0 for c in coords]
    size = [int(c.max()) - low + 2 if c.size else 2 for c, low in zip(coords, lo, strict=True)]
    sx, sz = size[0], size[0] * size[1]
    steps = np.array([1, sx, sz], dtype=np.int64)
    pos = (coords[0] - lo[0]) + sx * (coords[1] - lo[1]) + sz * (coords[2] - lo[2])
    own = np.arange(elements.size)
    clamped = nb == own[:, None]  # (V, 3): the grid's last plane along that axis
    src, dst = [], []
    for combo in range(1, 8):  # every non-empty set of clamped axes: the pad position that stands for v
        axes = [a for a in range(3) if combo >> a & 1]
        hit = np.flatnonzero(np.all(clamped[:, axes], axis=1))
        src.append(hit)
        dst.append(pos[hit] + steps[axes].sum())
    src, dst = np.concatenate(src), np.concatenate(dst)
    order = np.argsort(dst, kind="stable")
    starts = np.searchsorted(coords[2] - lo[2], np.arange(size[2] + 1)) if elements.size else np.zeros(size[2] + 1)
    runs = np.concatenate([[0], np.flatnonzero(np.diff(pos) != 1) + 1, [pos.size]]).astype(np.int64)
    return _Layout(pos, sx, sz, starts.astype(np.int64), runs, src[order], dst[order], nb)


@dataclass(frozen=True, eq=False)
class _Problem:
    """What every slab needs (sent once to each Dask worker): the layout, the basis (n, r) of the design's
    column space (whitened for ar1-global; r may be 0: no projections), the whitening (n, n) or None, and the
    shift: True (each voxel's first scan), False (none) or each voxel's value (V,)."""

    layout: _Layout
    basis: NDArray[np.float64]
    whitening: NDArray[np.float64] | None
    shift: bool | NDArray[np.float64]


def _slab(shared, z0: int, z1: int):
    """(data sums (voxels, 8), projections (r, voxels)) at the voxels of planes z0 .. z1 - 1 of the layout (a
    task: `shared` is the problem and the data, an array in memory or a column source on a worker)."""
    problem, Y = shared
    lay = problem.layout
    planes = lay.starts.size - 1
    a, own_end = (int(lay.starts[min(z, planes)]) for z in (z0, z1))
    sums, C, shifts = np.zeros((own_end - a, 8)), np.zeros((problem.basis.shape[1], own_end - a)), np.zeros(own_end - a)
    _add_slab(problem, Y, z0, z1, sums, C, shifts)
    return sums, C, shifts


def _add_slab(problem: _Problem, Y, z0: int, z1: int, sums, C, shifts=None) -> None:
    """Add the data's sums and projections at the voxels of planes z0 .. z1 - 1 to `sums` (their voxels, 8) and
    `C` (r, their voxels), and put the shift each voxel's data were taken about in `shifts` (their voxels; when
    given). The scans are scattered, a chunk at a time, into a dense float64 block of the slab's planes and the
    next, whose products and projections the kernel adds up."""
    from ._smoothness_numba import add_neighbour_products, scatter_scans

    lay = problem.layout
    planes = lay.starts.size - 1
    a, own_end, b = (int(lay.starts[min(z, planes)]) for z in (z0, z1, z1 + 1))
    direct = problem.whitening is None and isinstance(Y, np.ndarray) and Y.dtype.kind == "f" and Y.flags.c_contiguous
    block, col0 = (Y, 0) if direct else (np.asarray(Y[:, a:b]), a)
    if block.dtype.kind != "f":
        block = block.astype(np.float64)
    if isinstance(problem.shift, np.ndarray):
        shift = problem.shift[col0:b]
    elif problem.shift:
        shift = np.asarray(block[0, : b - col0], dtype=np.float64)
    else:
        shift = np.zeros(b - col0)
    if shifts is not None:
        shifts[:] = shift[a - col0 : own_end - col0]
    if problem.whitening is not None:
        block = problem.whitening @ (np.asarray(block, dtype=np.float64) - shift)
        shift = np.zeros(b - col0)
    base, own = z0 * lay.sz, (z1 - z0) * lay.sz
    width = own + lay.sz + lay.sx + 1
    lo, hi = np.searchsorted(lay.rep_dst, [base, base + own + lay.sz])
    rep_src, rep_dst = lay.rep_src[lo:hi], lay.rep_dst[lo:hi]
    r0, r1 = np.searchsorted(lay.runs, [a, b])  # (a and b start planes, so runs)
    n = block.shape[0]
    step = max(4, DENSE_BYTES // (8 * width) // 4 * 4)  # whole groups of four scans (the kernel's unrolling)
    D = _dense(min(step, n), width)
    for t0 in range(0, n, step):
        t1 = min(t0 + step, n)
        scatter_scans(block, col0, t0, t1, lay.runs, r0, r1, shift, lay.pos, rep_src, rep_dst, base, D)
        add_neighbour_products(
            D[: t1 - t0], problem.basis[t0:t1], own, lay.sx, lay.sz, a, own_end, lay.pos, base, sums, C
        )


def _dense(rows: int, width: int) -> NDArray[np.float64]:
    """This thread's dense buffer of at least (rows, width), as a C-contiguous (rows, width) view: reused, as a
    fresh one costs its page faults at every slab. Its values outside the mask are whatever an earlier slab left
    (finite data or 0), which reach only the sums of neighbours outside the mask (see the kernel)."""
    held = getattr(_LOCAL, "dense", None)
    if held is None or held.size < rows * width:
        held = _LOCAL.dense = np.zeros(max(rows * width, DENSE_BYTES // 8))
    return held[: rows * width].reshape(rows, width)


def _slabs(layout: _Layout) -> list[tuple[int, int]]:
    """Slabs of whole planes, about SLAB_POSITIONS dense positions each."""
    planes = layout.starts.size - 1
    step = max(1, SLAB_POSITIONS // layout.sz)
    return [(z0, min(z0 + step, planes)) for z0 in range(0, planes, step)]


def _data_sums(problem: _Problem, Y, n_jobs: int = 1, scheduler=None):
    """The data's sums (V, 8), projections (r, V) and each voxel's shift (V,) over all slabs."""
    V, r = problem.layout.pos.size, problem.basis.shape[1]
    if scheduler is not None and getattr(Y, "worker_reads", False):
        parts = run_tasks(scheduler, _slab, (problem, Y), _slabs(problem.layout))
        if not parts:
            return np.zeros((V, 8)), np.zeros((r, V)), np.zeros(V)
        sums, projections, shifts = zip(*parts)
        return np.concatenate(sums), np.concatenate(projections, axis=1), np.concatenate(shifts)
    S, C, shifts = np.zeros((V, 8)), np.zeros((r, V)), np.zeros(V)
    _add_data_sums(problem, Y, S, C, n_jobs, shifts)
    return S, C, shifts


def _add_data_sums(problem: _Problem, Y, S, C, n_jobs: int = 1, shifts=None) -> None:
    """Add the data's sums over all slabs to `S` (V, 8) and projections to `C` (r, V), on `n_jobs` threads
    (each slab adds to its own voxels); each voxel's shift put in `shifts` (V,), when given."""
    starts, planes = problem.layout.starts, problem.layout.starts.size - 1

    def run(call):
        a, b = (int(starts[min(z, planes)]) for z in call)
        _add_slab(problem, Y, *call, S[a:b], C[:, a:b], None if shifts is None else shifts[a:b])

    run_in_threads(run, _slabs(problem.layout), resolve_workers(n_jobs))


def _residual_sums(S, C, basis, nb, n_maps: int, shift=None) -> NeighbourSums:
    """The residuals' NeighbourSums from the data's sums `S` (V, 8) and projections `C` (r, V) about each voxel's
    `shift` (V,; None: none), on the design whose column space has the orthonormal `basis` (n, r) (see
    ``_smoothness_numba.residual_products``)."""
    from ..inference.rft import NeighbourSums
    from ._smoothness_numba import residual_products

    V = S.shape[0]
    q = basis.sum(axis=0)
    shifted = shift is not None and not spans_constant(basis, exact=True)
    residual = _ones_residual(basis, np.ones(basis.shape[0])) if shifted else None
    ones = float(residual @ residual) if shifted else 0.0  # (not n - q'q: it cancels where 1 is near the span)
    shift = np.zeros(V) if shift is None else np.ascontiguousarray(shift, dtype=np.float64)
    rss, total, cross = np.empty(V), np.empty(V), np.empty((V, 6))
    C = np.ascontiguousarray(C, dtype=np.float64)
    residual_products(np.ascontiguousarray(S), C, np.ascontiguousarray(nb), q, shift, ones, rss, total, cross)
    return NeighbourSums(rss, total, cross, int(n_maps))


def neighbour_sums(Y, basis, mask, *, whitening=None, n_jobs: int | None = 1, scheduler=None) -> NeighbourSums:
    """The :class:`~voxfit.inference.rft.NeighbourSums` of the residuals of the (n, V) data `Y` (an array in
    its stored dtype, a memory map, or a column source) on the design whose column space has the orthonormal
    basis `basis` (n, r), at the voxels of the 3-D `mask` (x-fastest order); `whitening` (n, n) is applied to
    the data first (``ar1-global``, with `basis` that of the whitened design). A slab of planes at a time, on
    `n_jobs` threads, or as Dask tasks reading their own columns when `scheduler` is given and `Y` is a column
    source (``Y.worker_reads``)."""
    basis = np.array(basis, dtype=np.float64, order="C")  # writable: one compiled signature for every caller
    mask = np.asarray(mask, dtype=bool)
    layout = _layout(mask)
    W = None if whitening is None else np.asarray(whitening, dtype=np.float64)
    problem = _Problem(layout, basis, W, spans_constant(basis, W))
    S, C, shifts = _data_sums(problem, Y, n_jobs, scheduler)
    # a constant near the span, not in it: the shift's terms kept (whitened data are shifted before the whitening,
    # whose constant's terms these are not: dropped, as they are where the constant is exact)
    near = problem.shift and W is None and not spans_constant(basis, exact=True)
    return _residual_sums(S, C, basis, layout.nb, basis.shape[0], shifts if near else None)


def warm_kernels(dtype=np.float32) -> None:
    """Import numba and load the compiled kernels for data of `dtype` (~0.3 s of CPU once per process, most of it
    holding the GIL), by sums over a tiny grid; e.g. in a thread while the data are read. Then
    :meth:`GridProducts.observe` adds the scans read so far."""
    neighbour_sums(np.zeros((4, 8), dtype=dtype), np.full((4, 1), 0.5), np.ones((2, 2, 2), dtype=bool))
    _READY.set()


class GridProducts(ReadAccumulator):
    """The data's neighbour sums accumulated over slabs of scans as they are read, at candidate voxels (a flat
    boolean over the grid's elements in x-fastest order):

    - on the streamed route, the pass's candidates (a superset of the voxels with sums: the others' residual sums
      are NaN whatever their data), slab by slab with :meth:`add`; the pass sums the projections itself;
    - for a run read into memory with an explicit mask, its voxels, from the read's :meth:`observe` calls and
      :meth:`finish`, with the projections ``Q'(y - shift)`` on the design's `basis` Q (n, r).

    Each voxel's values are taken about its first scan's (`shift`; on the streamed route only when the design
    spans the constant, as the pass's own sums): the sums keep their digits, and the residuals' follow from them
    (``_smoothness_numba.residual_products``)."""

    def __init__(self, shape, shift: bool, candidates=None, basis=None):
        self.shape = tuple(int(s) for s in shape)
        self.shift_allowed = shift
        self.candidates = candidates
        self.basis = None if basis is None else np.array(basis, dtype=np.float64, order="C")
        self.layout = self.elements = self.sums = self.shift = self.projections = None
        super().__init__()

    @staticmethod
    def bytes(shape) -> int:
        """Memory the accumulators and the layout hold for a grid of `shape` (at most: every element a candidate)."""
        return (8 * 8 + 8 * 8) * int(np.prod(shape)) + DENSE_BYTES

    def add(self, values, candidates=None) -> None:
        """Add a slab of k scans, (k, candidates) at the `candidates` (the same at every slab; None: those given
        to the constructor, or all of the grid's elements)."""
        values = np.ascontiguousarray(values)
        k = values.shape[0]
        if self.layout is None:
            keep = self.candidates if candidates is None else candidates
            keep = np.ones(int(np.prod(self.shape)), dtype=bool) if keep is None else np.asarray(keep)
            self.elements = np.flatnonzero(keep)
            self.layout = _layout(keep.reshape(self.shape, order="F"))
            self.sums = written_zeros((self.elements.size, 8))  # (added to beside the read: see written_zeros)
            r = 0 if self.basis is None else self.basis.shape[1]
            self.projections = written_zeros((r, self.elements.size))
            first = np.asarray(values[0], dtype=np.float64)
            self.shift = first.copy() if self.shift_allowed else np.zeros(first.size)
        rows = np.zeros((k, 0)) if self.basis is None else self.basis[self.n_scans : self.n_scans + k]
        with np.errstate(invalid="ignore", over="ignore"):
            _add_data_sums(_Problem(self.layout, rows, None, self.shift), values, self.sums, self.projections)
        self.n_scans += k

    def ready(self) -> bool:
        """During a read (:meth:`observe`, see ``ReadAccumulator``), scans are added once the kernels are loaded
        (:func:`warm_kernels`, in a thread); the compiled sums release the GIL."""
        return _READY.is_set()

    def finish(self, data) -> NeighbourSums:
        """After the read into `data` (n, candidates): add the scans not yet added (waiting for the side thread
        first); the residuals' sums at the candidates (see :meth:`residual_sums`)."""
        self.add_rest(data)
        return self.residual_sums(self.candidates, self.projections, self.basis)

    def residual_sums(self, mask, projections, basis) -> NeighbourSums:
        """The residuals' NeighbourSums at the voxels of `mask` (flat, x-fastest), from these data sums and
        `projections` (r, V): ``Q'(y - shift)`` of each mask voxel (NaN at voxels without sums), with `basis` Q
        (n, r). Mask voxels that were not candidates get NaN."""
        from ..inference.rft import neighbour_index

        mask = np.asarray(mask, dtype=bool).reshape(self.shape, order="F")
        flat = np.flatnonzero(mask.ravel(order="F"))
        C = np.asarray(projections, dtype=np.float64)
        if np.array_equal(flat, self.elements):  # the candidates themselves (a run read with its mask)
            return _residual_sums(self.sums, C, basis, self.layout.nb, self.n_scans, self.shift)
        where = np.minimum(np.searchsorted(self.elements, flat), max(self.elements.size - 1, 0))
        found = self.elements[where] == flat if self.elements.size else np.zeros(flat.size, dtype=bool)
        S = np.full((flat.size, 8), np.nan)
        S[found] = self.sums[where[found]]
        shift = np.full(flat.size, np.nan)
        shift[found] = self.shift[where[found]]
        return _residual_sums(S, C, basis, neighbour_index(mask), self.n_scans, shift)
