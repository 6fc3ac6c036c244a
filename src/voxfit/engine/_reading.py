"""Sums over a run's scans gathered while the run is read, on a side thread, so that only their finishing is left
when the read is over (the OLS fit, ``voxfit.engine.fit.ReadFit``; the AR(p) fit,
``voxfit.engine.streaming.ReadARFit``; RFT's neighbour sums, ``voxfit.engine.smoothness.GridProducts``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .._array import written_zeros
from .._threads import DaemonExecutor, blas_single_threaded
from ..core.ar import LaggedSums

__all__ = ["READ_BATCH", "ReadAccumulator", "ReadSums", "ScanSums"]

READ_BATCH = 32  # scans added at a time during a read (each addition visits every voxel: 16 at a time took 0.34 s
# of one core for a 230k-voxel, 400-scan OLS run, 32 at a time 0.27 s, 64 at a time 0.26 s)
TILE_BYTES = 1 << 20  # a tile of shifted scans (float64) that stays in cache while it is used four times


class ReadAccumulator:
    """``voxfit.io.load(observe=...)`` calls :meth:`observe` with the array being filled (n, V) and the number of
    scans read into it; the scans not yet added go to :meth:`add` (which counts them in ``n_scans``) on a side
    thread at a low priority, so that the read never waits for them, :data:`READ_BATCH` at a time (fewer for the
    run's last ones) as they wait and :meth:`ready` says so; until then they wait in the array, for a later call or
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
        """The read's call: `out` (n, V) holds its first `stop` scans. A side thread starts only when a batch waits
        for it: the read calls once a slab, and a thread started for each (90 in a 2 mm MNI .nii.gz run of 400
        scans, against 21) cost the read a wait for each start beside the imports, and 0.03-0.08 s of CPU."""
        self._stop = stop
        if self._batch(out) and self.ready() and (self._task is None or self._task.done()):
            self._task = DaemonExecutor(aside=True).submit(self._catch_up, out)

    def _batch(self, out) -> int:
        """How many scans the next addition takes: READ_BATCH (fewer for the run's last ones), or 0 until that many
        have been read."""
        batch = min(READ_BATCH, out.shape[0] - self.n_scans)
        return batch if 0 < batch <= self._stop - self.n_scans else 0

    def _catch_up(self, out) -> None:
        # one BLAS thread: BLAS's others would take (and spin on) the core the read decompresses on
        with blas_single_threaded():
            while self.ready() and (batch := self._batch(out)):
                self.add(out[self.n_scans : self.n_scans + batch])

    def add_rest(self, data) -> None:
        """After the read into `data` (n, V): wait for the side thread, then add the scans it has not, by the same
        batches of READ_BATCH scans: the sums are the same whatever the side thread had time for. (Added as they
        waited, a .nii.gz AR(1) fit's maps differed from one run to the next by a float32 ulp at a voxel or two.)"""
        if self._task is not None:
            self._task.result()
        while self.n_scans < data.shape[0]:
            self.add(data[self.n_scans : self.n_scans + READ_BATCH])


class ScanSums:
    """LaggedSums accumulated slab by slab (scans in order): the products of a basis (its lagged columns for AR(p),
    the design's own for OLS) with the data, the data's lagged sums of products and their totals, each voxel about
    its first scan when `shift` (the design has the constant), so that the sums keep their digits. The streamed
    pass's sums (``voxfit.engine.streaming``) and a read's (:class:`ReadSums`)."""

    def __init__(self, basis, order: int, n_voxels: int, shift: bool):
        self.basis, self.p, self.shift_allowed = basis, order, shift
        self.products = written_zeros((basis.shape[1], n_voxels))
        self.s = written_zeros((order + 1, n_voxels))
        self.total = written_zeros(n_voxels)
        self.top = written_zeros((order, n_voxels))
        self._last = np.empty((order, n_voxels))  # the last p scans seen, in order, in its last `held` rows
        self.held = 0
        self.shift = None
        self.t = 0

    @property
    def tail(self) -> NDArray:
        """The last scans seen (at most p), shifted, in order."""
        return self._last[self.p - self.held :]

    def add(self, Y) -> None:
        if self.shift is None:
            self.shift = np.asarray(Y[0], dtype=np.float64).copy() if self.shift_allowed else np.zeros(Y.shape[1])
        k, p = Y.shape[0], self.p
        held = self.tail.shape[0]
        m = self.products.shape[0]
        # the slab's rows of the lagged basis, and a row of ones for the totals: one product per tile
        rows = np.ascontiguousarray(np.column_stack([self.basis[self.t : self.t + k], np.ones(k)]).T)
        width = max(256, min(Y.shape[1], TILE_BYTES // (8 * (held + k))))
        z_buf, out_buf = np.empty((held + k, width)), np.empty((m + 1, width))
        with np.errstate(invalid="ignore", over="ignore"):  # voxels with NaN or inf: left out of the mask
            for j0 in range(0, Y.shape[1], width):
                cols = slice(j0, j0 + width)
                z = z_buf[:, : min(width, Y.shape[1] - j0)]  # the held scans, then this slab's, shifted, float64
                z[:held] = self.tail[:, cols]
                y = z[held:]
                # the tile as float64, then the shift subtracted in place: a third faster than one mixed subtraction
                # through numpy's casting buffers, and the same values (longdouble data, as from a .npy, are rounded
                # to float64 first, a float64 ulp at most)
                np.copyto(y, Y[:, cols])
                y -= self.shift[cols]
                out = out_buf[:, : z.shape[1]]
                np.matmul(rows, y, out=out)
                self.products[:, cols] += out[:m]
                self.total[cols] += out[m]
                self.s[0, cols] += np.einsum("tv,tv->v", y, y)
                for lag in range(1, p + 1):  # pairs whose later scan is in this slab
                    first = max(lag, held)
                    if first < z.shape[0]:
                        self.s[lag, cols] += np.einsum("tv,tv->v", z[first:], z[first - lag : z.shape[0] - lag])
        if self.t < p:
            take = min(p - self.t, k)
            self.top[self.t : self.t + take] = Y[:take] - self.shift
        if p:  # (in place: a concatenation held the last scans three times over, 190 MiB of 460,800 voxels' AR(17))
            self._keep_last(Y)
        self.t += k

    def _keep_last(self, Y) -> None:
        """The last p scans of those seen and of the slab `Y` (shifted, float64) into their buffer."""
        p, k = self.p, Y.shape[0]
        held = min(p, self.held + k)
        kept = held - min(k, p)  # (of the scans held before)
        for row in range(kept):  # (moved towards the buffer's start, earliest first: none overwritten unread)
            self._last[p - held + row] = self._last[p - kept + row]
        new = self._last[p - min(k, p) :]
        np.copyto(new, Y[k - min(k, p) :])  # (float64 first, then the shift: as the tiles above)
        new -= self.shift
        self.held = held

    def result(self, rank: int) -> LaggedSums:
        lagged = self.products.reshape(self.p + 1, rank, -1)
        shift = self.shift if self.shift_allowed else None
        return LaggedSums(lagged, self.s, self.top, self.tail[::-1].copy(), self.total, shift)


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
            self.sums = ScanSums(self.basis(), self.order, V, shift=self.design.exact_intercept)
        self.sums.add(values)
        self.n_scans += k

    def mean(self) -> NDArray:
        """Each voxel's mean over the scans (after ``finish``)."""
        return self.sums.shift + self.sums.total / self.n_scans
