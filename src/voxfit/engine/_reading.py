"""Sums over a run's scans gathered while the run is read, on a side thread, so that only their finishing is left
when the read is over (the OLS fit, ``voxfit.engine.fit.ReadFit``; the AR(p) fit,
``voxfit.engine.streaming.ReadARFit``; RFT's neighbour sums, ``voxfit.engine.smoothness.GridProducts``)."""

from __future__ import annotations

from .._threads import DaemonExecutor, blas_single_threaded

__all__ = ["READ_BATCH", "ReadAccumulator"]

READ_BATCH = 16  # scans gathered during a read before their sums are added (each addition visits every voxel)


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
