"""Neighbourhood graphs over the masked elements of a volume or a surface, for clusters and TFCE.

An :class:`Adjacency` lists, for each of the V masked elements (numbered 0..V-1 in increasing order of their
index in the full image, i.e. ``np.flatnonzero(mask)``), its masked neighbours in CSR form. Volumes follow
voxfit's flat element order, x fastest: element ``e = x + X * (y + Y * z)`` for a grid of shape (X, Y, Z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from voxfit.core.mesh import masked_edges
from voxfit.exceptions import DataTypeError, InputError

__all__ = ["Adjacency", "as_rows", "as_weights", "check_adjacency", "mesh_adjacency", "volume_adjacency"]

# how many coordinates may differ by one between neighbours, for each connectivity
_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True, eq=False)
class Adjacency:
    """Symmetric neighbour lists, without self loops, over V elements (compressed sparse rows).

    Attributes
    ----------
    indptr : ndarray of int64, shape (V + 1,)
        The neighbours of element ``i`` are ``indices[indptr[i]:indptr[i + 1]]``.
    indices : ndarray of int32, shape (indptr[-1],)
        Neighbour numbers, in 0..V-1.
    """

    indptr: NDArray[np.int64]
    indices: NDArray[np.int32]

    def __post_init__(self):
        indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        fix = "build an Adjacency with volume_adjacency, mesh_adjacency or Adjacency.from_edges"
        if (
            indptr.ndim != 1
            or indptr.size == 0
            or indptr[0] != 0
            or indptr[-1] != indices.size
            or np.any(np.diff(indptr) < 0)
        ):
            raise InputError(f"`indptr` must be 1-D, non-decreasing, start at 0 and end at len(indices); {fix}.")
        n = indptr.size - 1
        if indices.ndim != 1 or (indices.size and not 0 <= indices.min() <= indices.max() < n):
            raise InputError(f"`indices` must be 1-D neighbour numbers in 0..{n - 1}; {fix}.")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)

    @property
    def n(self) -> int:
        """The number of elements V."""
        return self.indptr.size - 1

    @classmethod
    def from_edges(cls, i, j, n: int) -> Adjacency:
        """The graph on `n` elements with the undirected edges ``(i[k], j[k])`` (duplicates and self loops dropped)."""
        i = np.asarray(i, dtype=np.int64).ravel()
        j = np.asarray(j, dtype=np.int64).ravel()
        if i.shape != j.shape:
            raise InputError(f"`i` and `j` must have the same length; got {i.size} and {j.size}.")
        if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
            raise InputError(
                f"edge ends must be element numbers in 0..{n - 1}; got values from "
                f"{min(i.min(), j.min())} to {max(i.max(), j.max())}."
            )
        keep = i != j
        rows = np.concatenate([i[keep], j[keep]])
        cols = np.concatenate([j[keep], i[keep]])
        code = np.unique(rows * n + cols)  # sorted by row, then column; duplicates gone
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(code // n, minlength=n), out=indptr[1:])
        return cls(indptr, (code % n).astype(np.int32))


def volume_adjacency(mask, shape, connectivity: int = 6) -> Adjacency:
    """Face (6), edge (18) or corner (26) neighbours among the masked voxels of a grid.

    Parameters
    ----------
    mask : array of bool, shape (X * Y * Z,) or `shape`
        The masked elements, flat in x-fastest order (as ``voxfit.io.Masker.mask``); an array of shape
        `shape` is read as indexed ``[x, y, z]``.
    shape : tuple of int
        The grid (X, Y, Z); a 1-D or 2-D grid is padded with ones.
    connectivity : {6, 18, 26}
        Neighbours share a face, a face or an edge, or any corner. On a 2-D grid 6 gives 4 neighbours, 18 and 26 give 8.

    Returns
    -------
    Adjacency
        Over the V = ``mask.sum()`` masked voxels, numbered as ``np.flatnonzero(mask)``.
    """
    if isinstance(connectivity, bool) or connectivity not in (6, 18, 26):
        raise InputError(
            f"`connectivity` must be 6 (faces), 18 (faces and edges) or 26 (and corners); got {connectivity!r}."
        )
    bad_shape = f"`shape` must be a tuple of 1 to 3 positive integers such as (91, 109, 91); got {shape!r}."
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InputError(bad_shape) from None
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise InputError(bad_shape)
    mask = _as_mask(mask, "mask")
    if mask.ndim > 1:
        if mask.shape != dims:
            raise InputError(
                f"`mask` has shape {mask.shape} but `shape` is {dims}; pass the flat mask or one of shape `shape`."
            )
        mask = mask.ravel(order="F")
    X, Y, Z = dims + (1,) * (3 - len(dims))
    if mask.size != X * Y * Z:
        raise InputError(
            f"`mask` has {mask.size} elements but `shape` {dims} has {X * Y * Z}; pass the mask of that grid."
        )

    elements = np.flatnonzero(mask)
    number = np.full(mask.size, -1, dtype=np.int32)
    number[elements] = np.arange(elements.size, dtype=np.int32)
    x = elements % X
    y = (elements // X) % Y
    z = elements // (X * Y)
    # offsets in increasing order of their flat step, so that each voxel's neighbours come out sorted
    steps = sorted(
        (dx + X * (dy + Y * dz), dx, dy, dz)
        for dz in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if 0 < abs(dx) + abs(dy) + abs(dz) <= _CONNECTIVITY[connectivity]
    )
    neighbours = np.full((elements.size, len(steps)), -1, dtype=np.int32)
    for k, (step, dx, dy, dz) in enumerate(steps):
        inside = np.ones(elements.size, dtype=bool)
        for c, d, size in ((x, dx, X), (y, dy, Y), (z, dz, Z)):
            if d:
                inside &= (c + d >= 0) & (c + d < size)
        neighbours[inside, k] = number[elements[inside] + step]
    present = neighbours >= 0
    indptr = np.zeros(elements.size + 1, dtype=np.int64)
    np.cumsum(present.sum(axis=1), out=indptr[1:])
    return Adjacency(indptr, neighbours[present])


def mesh_adjacency(faces, mask) -> Adjacency:
    """Neighbours along the edges of a triangle mesh, among the masked vertices.

    Parameters
    ----------
    faces : array of int, shape (F, 3)
        Vertex numbers of each triangle, in 0..n_vertices-1.
    mask : array of bool, shape (n_vertices,)
        The masked vertices.

    Returns
    -------
    Adjacency
        Over the masked vertices, numbered as ``np.flatnonzero(mask)``; two are neighbours when a triangle
        has an edge between them.
    """
    mask = _as_mask(mask, "mask")
    if mask.ndim != 1:
        raise InputError(f"`mask` must be 1-D (n_vertices,); got shape {mask.shape}.")
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise InputError(f"`faces` must have shape (n_faces, 3); got shape {faces.shape}.")
    if faces.dtype.kind not in "iu":
        raise DataTypeError(f"`faces` must be integer vertex numbers; got dtype {faces.dtype}.")
    if faces.size and (faces.min() < 0 or faces.max() >= mask.size):
        raise InputError(
            f"`faces` must hold vertex numbers in 0..{mask.size - 1} (the mask has {mask.size} vertices); "
            f"got values from {faces.min()} to {faces.max()}."
        )
    return Adjacency.from_edges(*masked_edges(faces, mask), int(mask.sum()))


def _as_mask(mask, name: str) -> NDArray[np.bool_]:
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise DataTypeError(f"`{name}` must be a boolean array; got dtype {mask.dtype}.")
    return mask if mask.dtype == bool else mask != 0


def check_adjacency(adjacency) -> Adjacency:
    if not isinstance(adjacency, Adjacency):
        raise InputError(
            f"`adjacency` must be an Adjacency (from volume_adjacency or mesh_adjacency); "
            f"got {type(adjacency).__name__}."
        )
    return adjacency


def as_rows(values, adjacency: Adjacency, name: str):
    """`values` as a C-contiguous (B, V) float32/float64 array, and whether it was given as (V,)."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise DataTypeError(f"`{name}` must be a real-valued array; got dtype {values.dtype}.")
    if values.ndim not in (1, 2) or values.shape[-1] != adjacency.n:
        raise InputError(
            f"`{name}` must have shape (V,) or (B, V) with V = {adjacency.n} elements of the adjacency; "
            f"got shape {values.shape}."
        )
    dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
    rows = values.reshape(1 if values.ndim == 1 else values.shape[0], adjacency.n)
    return np.ascontiguousarray(rows, dtype=dtype), values.ndim == 1


def as_weights(weights, adjacency: Adjacency) -> NDArray[np.float64]:
    """Element weights (V,) float64, non-negative and finite; ones when None."""
    if weights is None:
        return np.ones(adjacency.n)
    weights = np.asarray(weights)
    if weights.dtype.kind not in "iuf":
        raise DataTypeError(f"`weights` must be a real-valued array; got dtype {weights.dtype}.")
    if weights.shape != (adjacency.n,):
        raise InputError(
            f"`weights` must have shape ({adjacency.n},), one per element of the adjacency; got {weights.shape}."
        )
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights) & (weights >= 0)):
        raise InputError(
            "`weights` must be finite and non-negative (e.g. vertex areas); got negative or non-finite values."
        )
    return weights
