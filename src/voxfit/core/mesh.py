"""The edges of a triangle mesh among its masked vertices: shared by FILM's neighbourhood on a surface
(``voxfit.core.film.mesh_kernel``) and the neighbour graph of clusters and TFCE (``voxfit.inference.graph``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["masked_edges"]


def masked_edges(faces: NDArray, mask: NDArray) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The ends (a, b) of every triangle's three edges whose vertices are both masked, numbered among the masked
    vertices (as ``np.flatnonzero(mask)``); an edge shared by two triangles appears twice, once per direction or
    twice in one (the callers symmetrise and merge)."""
    faces = np.asarray(faces)
    a = faces.ravel().astype(np.int64)
    b = faces[:, [1, 2, 0]].ravel().astype(np.int64)
    keep = mask[a] & mask[b]
    number = np.cumsum(mask) - 1
    return number[a[keep]], number[b[keep]]
