"""Sums over a run's scans gathered while the run is read, on a side thread, so that only their finishing is left
when the read is over (the OLS fit, ``voxfit.engine.fit.ReadFit``; the AR(p) fit,
``voxfit.engine.streaming.ReadARFit``; RFT's neighbour sums, ``voxfit.engine.smoothness.GridProducts``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from scipy.linalg.blas import dgemm

from .._threads import DaemonExecutor, blas_single_threaded
from ..core.ar import LaggedSums

__all__ = ["READ_BATCH", "ReadAccumulator", "ReadSums", "ScanSums"]

READ_BATCH = 16  # scans gathered during a read before their sums are added (each addition visits every voxel)
TILE_BYTES = 1 << 20  # a tile of shifted scans (float64) that stays in cache while it is used four times
SLAB_SCANS = 32  # scans added to the sums at a time (larger slabs are split): a tile holds them and p held ones


class ReadAccumulator:
    """``voxfit.io.load(observe=...)`` calls :meth:`observe` with the array being filled (n, V) and the number of
    scans read into it; the scans not yet added go to :meth:`add` (which counts them in ``n_scans``) on a side
    thread at a low priority, so that the read never waits for them, once :data:`READ_BATCH` of them wait (or the
    read is complete) and :meth:`ready` says so; until then they wait in the array, for a later call or
    :meth:`add_rest`."""

    def __init__(self):
        self.n_scans = 0
        self._stop, self._task = 0, None  # scans read (observe), and the side thread adding them

    def ready(self) -> bool:
        """Whether the side thread may add scans now."""
        return True

    def add(self, values) -> None:
        """Add k scans (k, V), the next ones; counts them in ``n_scans``."""
        raise NotImplementedError

    def observe(self, out, stop: int) -> None:
        """The read's call: `out` (n, V) holds its first `stop` scans."""
        self._stop = stop
        if self.ready() and (self._task is None or self._task.done()):
            self._task = DaemonExecutor(aside=True).submit(self._catch_up, out)

    def _catch_up(self, out) -> None:
        # one BLAS thread: BLAS's others would take (and spin on) the core the read decompresses on
        with blas_single_threaded():
            while self.ready():
                stop = self._stop
                waiting = stop - self.n_scans
                if waiting <= 0 or (waiting < READ_BATCH and stop < out.shape[0]):
                    return
                self.add(out[self.n_scans : stop])

    def add_rest(self, data) -> None:
        """After the read into `data` (n, V): wait for the side thread, then add the scans it has not."""
        if self._task is not None:
            self._task.result()
        if self.n_scans < data.shape[0]:
            self.add(data[self.n_scans :])


class ScanSums:
    """LaggedSums accumulated slab by slab (scans in order): the products of a basis (its lagged columns for AR(p),
    the design's own for OLS) with the data, the data's lagged sums of products and their totals, each voxel about
    its first scan when `shift` (the design has the constant), so that the sums keep their digits. The streamed
    pass's sums (``voxfit.engine.streaming``) and a read's (:class:`ReadSums`).

    The products are kept by tiles of voxels, (tiles, basis columns + 1, width), the last row the totals: each
    tile is one C-ordered block, its transpose Fortran-ordered, so BLAS adds a slab's products into it in place
    (beta = 1) while the tile's shifted scans are still in cache, with no product array to add afterwards."""

    def __init__(self, basis, order: int, n_voxels: int, shift: bool):
        self.basis, self.p, self.shift_allowed = basis, order, shift
        self.n_voxels = n_voxels
        self.width = max(256, TILE_BYTES // (8 * (order + SLAB_SCANS)))
        self.tiles = np.zeros((-(-n_voxels // self.width), basis.shape[1] + 1, self.width))
        self.s = np.zeros((order + 1, n_voxels))
        self.top = np.zeros((order, n_voxels))
        self.tail = np.zeros((0, n_voxels))  # the last p scans seen
        self.shift = None
        self.t = 0

    def add(self, Y) -> None:
        if self.shift is None:
            self.shift = np.asarray(Y[0], dtype=np.float64).copy() if self.shift_allowed else np.zeros(Y.shape[1])
        for i in range(0, Y.shape[0], SLAB_SCANS):
            self._add(Y[i : i + SLAB_SCANS])

    def _add(self, Y) -> None:
        k, p = Y.shape[0], self.p
        held = self.tail.shape[0]
        width = self.width
        # the slab's rows of the lagged basis and a column of ones for the totals, (k, columns + 1), Fortran-ordered
        rows = np.asfortranarray(np.column_stack([self.basis[self.t : self.t + k], np.ones(k)]))
        z_buf = np.empty((held + k, width))
        with np.errstate(invalid="ignore", over="ignore"):  # voxels with NaN or inf: left out of the mask
            for tile, j0 in enumerate(range(0, self.n_voxels, width)):
                cols = slice(j0, j0 + width)
                w = min(width, self.n_voxels - j0)
                z = z_buf if w == width else z_buf[:, :w]  # the held scans, then this slab's, shifted, float64
                z[:held] = self.tail[:, cols]
                y = z[held:]
                y[...] = Y[:, cols]
                y -= self.shift[cols]
                _add_product(self.tiles[tile] if w == width else self.tiles[tile, :, :w], y, rows)
                self.s[0, cols] += np.einsum("tv,tv->v", y, y)
                for lag in range(1, p + 1):  # pairs whose later scan is in this slab
                    first = max(lag, held)
                    if first < z.shape[0]:
                        self.s[lag, cols] += np.einsum("tv,tv->v", z[first:], z[first - lag : z.shape[0] - lag])
        if self.t < p:
            take = min(p - self.t, k)
            self.top[self.t : self.t + take] = Y[:take] - self.shift
        if p:
            last = np.asarray(Y[-p:], dtype=np.float64) - self.shift
            self.tail = np.concatenate([self.tail, last])[-p:]
        self.t += k

    def products(self) -> NDArray:
        """The products with the basis's columns, then the totals, (columns + 1, voxels)."""
        tiles = self.tiles
        return tiles.transpose(1, 0, 2).reshape(tiles.shape[1], -1)[:, : self.n_voxels]

    def result(self, rank: int) -> LaggedSums:
        products = self.products()
        lagged = products[:-1].reshape(self.p + 1, rank, -1)
        shift = self.shift if self.shift_allowed else None
        return LaggedSums(lagged, self.s, self.top, self.tail[::-1].copy(), products[-1], shift)


def _add_product(out, y, rows) -> None:
    """``out += rows.T @ y``: in place by BLAS (``out.T = y.T @ rows + out.T``) where `out` is one C-ordered block."""
    if out.flags.c_contiguous:
        done = dgemm(1.0, y.T, rows, beta=1.0, c=out.T, overwrite_c=True)
        if np.shares_memory(done, out):
            return
    out += rows.T @ y


class ReadSums(ReadAccumulator):
    """A read's :class:`ScanSums` of a design's :meth:`basis` (``voxfit.engine.fit.ReadFit``: OLS, order 0;
    ``voxfit.engine.streaming.ReadARFit``: AR(p), the lagged basis), added as :class:`ReadAccumulator` hands the
    scans over; scans beyond the design's rows are counted and not added (the read's check refuses the run)."""

    def __init__(self, design, order: int = 0):
        super().__init__()
        self.design, self.order = design, order
        self.sums: ScanSums | None = None

    def basis(self) -> NDArray:
        """The basis whose products with the data are summed (made on the side thread, at the first scans)."""
        return self.design.basis

    def add(self, values) -> None:
        k, V = values.shape
        if self.n_scans + k > self.design.n_scans:  # more scans than the design has rows: refused after the read
            self.n_scans += k
            return
        if self.sums is None:
            self.sums = ScanSums(self.basis(), self.order, V, shift=self.design.has_intercept)
        self.sums.add(values)
        self.n_scans += k

    def mean(self) -> NDArray:
        """Each voxel's mean over the scans (after ``finish``)."""
        return self.sums.shift + self.sums.products()[-1] / self.n_scans
