"""The sums behind the smoothness of a fit's residuals (random field theory), collected while the fit runs.

SPM's ``spm_est_smoothness`` differentiates the normalised residuals ``u = e / |e|`` of neighbouring voxels.
Everything it needs about voxel v and its +x, +y, +z neighbours is seven inner products over the scans of the
residual time series: ``e_v . e_v`` and ``e_v . e_{v+d}`` (d = x, y, z), and ``e_{v+x} . e_{v+y}``,
``e_{v+x} . e_{v+z}``, ``e_{v+y} . e_{v+z}``, since ``(u_{v+a} - u_v) . (u_{v+b} - u_v)`` is a combination of
them divided by the norms. :class:`ResidualNeighbourSums` holds them for every voxel of the mask; the residuals
are never kept.

How each route collects them:

- in memory (and on Dask workers reading their own columns): the residuals of a slab of z-planes (plus the
  next plane), ``E = Y - Q (Q' Y)`` in float64 with Q the orthonormal basis of the design's column space,
  are formed and reduced at once (:func:`residual_neighbour_sums`); exact.
- streamed over scans: each slab of whole-volume scans adds its data's seven grid products, about each voxel's
  first value (:class:`GridProducts`); at the end the projections ``(Q' y_a) . (Q' y_b)``, already summed by the
  streamed fit, are subtracted (:meth:`GridProducts.residual_sums`). Residual cross-products are the data's
  less the projections: exact to the digits the sums keep (those of the streamed fit's own residual sums of
  squares).

Which residuals: OLS and group OLS their own. SPM's ``ar1-global`` (one whitening W for all voxels) its whitened
residuals ``W y - Q_w Q_w' W y``, as SPM. AR(p) per voxel: the OLS residuals of the same design (each voxel's
whitening filter differs from its neighbours', so whitened residuals of neighbours are not one field; the OLS
residuals carry the noise's spatial correlation itself, which is what the smoothness measures). Group mixed
models: the OLS residuals of the group design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._dask import run_tasks
from .._threads import blas_single_threaded

__all__ = ["GridProducts", "ResidualNeighbourSums", "neighbour_positions", "residual_neighbour_sums"]

SLAB_BYTES = 32 << 20  # the float64 residuals of one slab of planes
CHUNK = 1024  # voxels whose residuals are formed at once (in cache)


@dataclass(frozen=True, eq=False)
class ResidualNeighbourSums:
    """Inner products over the scans of residual time series, for each of the V voxels of a volume mask.

    ss : (V,) each voxel's residual sum of squares.
    cross : (3, V) ``e_v . e_{v+x}``, ``e_v . e_{v+y}``, ``e_v . e_{v+z}``.
    among : (3, V) ``e_{v+x} . e_{v+y}``, ``e_{v+x} . e_{v+z}``, ``e_{v+y} . e_{v+z}``.
    Entries whose voxels are not all in the mask are NaN. `shape` is the grid (X, Y, Z), `n_scans` the rows
    of the residuals, `dof` their degrees of freedom.
    """

    ss: NDArray[np.float64]
    cross: NDArray[np.float64]
    among: NDArray[np.float64]
    shape: tuple[int, int, int]
    n_scans: int
    dof: float


def neighbour_positions(mask: NDArray[np.bool_], shape) -> NDArray[np.intp]:
    """(3, V): the position among the mask's voxels of each voxel's +x, +y, +z neighbour, -1 where it is off
    the grid or outside the mask (`mask` flat in x-fastest order, as ``voxfit.io.Masker.mask``)."""
    nx, ny, nz = (int(s) for s in shape)
    index = np.flatnonzero(mask)
    pos = np.full(mask.size + 1, -1, dtype=np.intp)  # the extra element: "off the grid"
    pos[index] = np.arange(index.size)
    x, y, z = index % nx, (index // nx) % ny, index // (nx * ny)
    out = np.empty((3, index.size), dtype=np.intp)
    for d, (coord, size, step) in enumerate(((x, nx, 1), (y, ny, nx), (z, nz, nx * ny))):
        out[d] = pos[np.where(coord + 1 < size, index + step, mask.size)]
    return out


def _grid_products(E: NDArray[np.float64]) -> NDArray[np.float64]:
    """(7, planes - 1, ny, nx): the seven products summed over the scans of (n, planes, ny, nx) residuals (NaN
    outside the mask), for the voxels of all planes but the last (the next slab's first)."""
    n, planes, ny, nx = E.shape
    P = np.full((7, planes - 1, ny, nx), np.nan)
    e = E[:, :-1]

    def dot(a, b):
        return np.einsum("t...,t...->...", a, b)

    P[0] = dot(e, e)
    P[1, :, :, :-1] = dot(e[..., :-1], e[..., 1:])
    P[2, :, :-1, :] = dot(e[:, :, :-1, :], e[:, :, 1:, :])
    P[3] = dot(e, E[:, 1:])
    P[4, :, :-1, :-1] = dot(e[:, :, :-1, 1:], e[:, :, 1:, :-1])  # (v+x) . (v+y)
    P[5, :, :, :-1] = dot(e[..., 1:], E[:, 1:, :, :-1])  # (v+x) . (v+z)
    P[6, :, :-1, :] = dot(e[:, :, 1:, :], E[:, 1:, :-1, :])  # (v+y) . (v+z)
    return P


@dataclass(frozen=True, eq=False)
class _SlabProblem:
    """What every slab of :func:`residual_neighbour_sums` needs (sent once to each Dask worker)."""

    basis: NDArray[np.float64]
    whitening: NDArray[np.float64] | None
    neighbours: NDArray[np.intp]  # (3, V): see neighbour_positions
    starts: NDArray[np.intp]  # the position among the mask's voxels of each plane's first voxel (nz + 1,)


def _slab(shared, z0: int, z1: int) -> NDArray[np.float64]:
    """(7, voxels) the seven products at the mask's voxels of planes z0 .. z1 - 1 (a task: `shared` is the
    problem and the data, a ColumnSource on a worker or the array in memory). The residuals of those planes and
    the next are formed in float64, transposed so that each voxel's series is contiguous; a row of NaN stands
    for the neighbours outside the mask."""
    problem, Y = shared
    nz = problem.starts.size - 1
    a, own, b = (int(problem.starts[z]) for z in (z0, z1, min(z1 + 1, nz)))
    E = np.empty((b - a + 1, problem.basis.shape[0]))
    Q, Qt = problem.basis, problem.basis.T.copy()
    W = None if problem.whitening is None else problem.whitening.T.copy()
    for c in range(0, b - a, CHUNK):  # a chunk of voxels' series in cache for the few products
        rows = E[c : min(c + CHUNK, b - a)]
        rows[:] = np.asarray(Y[:, a + c : a + c + rows.shape[0]]).T
        if W is not None:
            rows[:] = rows @ W
        rows -= (rows @ Q) @ Qt
    E[-1] = np.nan
    E[~np.isfinite(E).all(axis=1)] = np.nan  # invalid voxels: as outside the mask
    local = np.where(problem.neighbours[:, a:own] >= 0, problem.neighbours[:, a:own] - a, b - a)
    out = np.empty((7, own - a))
    buffers = np.empty((3, min(CHUNK, own - a), E.shape[1]))
    for c in range(0, own - a, CHUNK):  # the neighbours' series gathered a chunk at a time, into cached buffers
        part = slice(c, min(c + CHUNK, own - a))
        e = E[part]
        gx, gy, gz = (np.take(E, local[d, part], axis=0, out=buffers[d, : e.shape[0]]) for d in range(3))
        for k, (u, w) in enumerate(((e, e), (e, gx), (e, gy), (e, gz), (gx, gy), (gx, gz), (gy, gz))):
            out[k, part] = np.einsum("vt,vt->v", u, w)
    return out


def residual_neighbour_sums(
    Y, basis, mask, shape, *, dof: float, whitening=None, scheduler=None, slab_bytes: int = SLAB_BYTES
) -> ResidualNeighbourSums:
    """The neighbour sums of the residuals of the (n, V) data `Y` (an array, a memory map or a column source)
    on the design whose column space has the orthonormal basis `basis` (n, rank), for the voxels of `mask`
    (flat, x-fastest, on the grid `shape`); `whitening` (n, n) applied to the data first (``ar1-global``).
    Computed a slab of z-planes at a time in float64 (about `slab_bytes` of residuals), as Dask tasks reading
    their own columns when `scheduler` is given and `Y` is a column source (``Y.worker_reads``)."""
    shape = tuple(int(s) for s in shape)
    nx, ny, nz = shape
    mask = np.asarray(mask, dtype=bool).ravel()
    n = basis.shape[0]
    per_plane = np.bincount(np.flatnonzero(mask) // (nx * ny), minlength=nz)
    starts = np.concatenate([[0], np.cumsum(per_plane)])
    problem = _SlabProblem(np.asarray(basis, dtype=np.float64), whitening, neighbour_positions(mask, shape), starts)
    planes = max(1, slab_bytes // (4 * 8 * n * max(1, int(per_plane.max()))) - 1)
    calls = [(z0, min(z0 + planes, nz)) for z0 in range(0, nz, planes)]
    if scheduler is not None and getattr(Y, "worker_reads", False):
        parts = run_tasks(scheduler, _slab, (problem, Y), calls)
    else:
        with blas_single_threaded():  # many small products: one BLAS thread is the fastest (as engine.fit)
            parts = [_slab((problem, Y), z0, z1) for z0, z1 in calls]
    P = np.concatenate(parts, axis=1)
    return ResidualNeighbourSums(P[0], P[1:4], P[4:7], shape, n, float(dof))


class GridProducts:
    """The seven grid products of the data (not yet residuals), accumulated over slabs of whole-volume scans
    (the streamed route), each voxel's values taken about its first scan's when the design has an intercept
    (the residuals do not change; the sums keep their digits)."""

    def __init__(self, shape, shift: bool):
        self.shape = tuple(int(s) for s in shape)
        nx, ny, nz = self.shape
        self.sums = np.zeros((7, nz, ny, nx))
        self.shift_allowed = shift
        self.shift = None

    @staticmethod
    def bytes(shape) -> int:
        """Memory the accumulators and their working copies hold for a grid of `shape`."""
        return 2 * 7 * 8 * int(np.prod(shape)) + SLAB_BYTES

    def add(self, values) -> None:
        """Add a slab of k scans, (k, n_elements) in the grid's x-fastest order."""
        nx, ny, nz = self.shape
        if self.shift is None:
            self.shift = np.asarray(values[0], dtype=np.float64).copy() if self.shift_allowed else 0.0
        k = values.shape[0]
        step = max(1, SLAB_BYTES // (8 * (nz + 1) * ny * nx))
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(0, k, step):  # a few scans at a time, with a zero plane beyond the last
                rows = np.asarray(values[t : t + step], dtype=np.float64) - self.shift
                padded = np.zeros((rows.shape[0], nz + 1, ny, nx))
                padded[:, :nz] = rows.reshape(rows.shape[0], nz, ny, nx)
                self.sums += _grid_products(padded)

    def residual_sums(self, mask, projections, dof: float, n_scans: int) -> ResidualNeighbourSums:
        """The residuals' neighbour sums at the voxels of `mask`, from these data sums and `projections`
        (rank, V): ``Q' y`` of each mask voxel about the same shift, as the streamed fit summed them."""
        mask = np.asarray(mask, dtype=bool).ravel()
        nbr = neighbour_positions(mask, self.shape)
        flat = self.sums.reshape(7, -1)[:, mask]
        c = np.asarray(projections, dtype=np.float64)
        c = np.concatenate([c, np.full((c.shape[0], 1), np.nan)], axis=1)  # position -1: NaN

        def proj(i, j):
            return np.einsum("rv,rv->v", c[:, i], c[:, j])

        own = np.arange(mask.sum())
        ss = flat[0] - proj(own, own)
        cross = np.stack([flat[1 + d] - proj(own, nbr[d]) for d in range(3)])
        pairs = ((0, 1), (0, 2), (1, 2))
        among = np.stack([flat[4 + k] - proj(nbr[i], nbr[j]) for k, (i, j) in enumerate(pairs)])
        for d in range(3):  # a neighbour outside the mask: NaN, as in memory
            cross[d, nbr[d] < 0] = np.nan
        for k, (i, j) in enumerate(pairs):
            among[k, (nbr[i] < 0) | (nbr[j] < 0)] = np.nan
        return ResidualNeighbourSums(ss, cross, among, self.shape, int(n_scans), float(dof))
