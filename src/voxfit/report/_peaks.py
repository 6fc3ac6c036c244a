"""Local maxima of suprathreshold clusters, chosen as SPM lists them.

SPM's results table (``spm_list``) gives each cluster's largest maximum and up to two more: the cluster's
local maxima are taken by decreasing height, and one is kept when it lies more than 8 mm from every maximum
already kept in that cluster. A local maximum (``spm_get_lm``) is an element at least as large as each of its
neighbours among the suprathreshold elements, so ties on a plateau are all maxima until the distance rule
thins them. SPM uses 18-connected neighbours on volumes and the mesh's edges on surfaces; here the neighbours
are whatever adjacency the caller passes (the report uses the clusters' connectivity and says which).

Both steps are vectorised: the neighbours' maximum is one ``np.maximum.reduceat`` over the adjacency's CSR
rows, and the distance rule is applied to every cluster at once, one pass per kept rank (three passes).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..inference.graph import Adjacency

__all__ = ["MAXIMA_PER_CLUSTER", "MIN_DISTANCE_MM", "components", "local_maxima", "spaced_maxima"]

MAXIMA_PER_CLUSTER = 3  # SPM's default (spm_list: Num = 3)
MIN_DISTANCE_MM = 8.0  # SPM's default (spm_list: Dis = 8): kept when more than this from those kept


def components(adjacency: Adjacency) -> NDArray[np.intp]:
    """Each element's cluster (0, 1, ...) under `adjacency`, by scipy's graph search (the inference's compiled
    labelling would load numba, about 1 s of a report)."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    n = adjacency.indptr.size - 1
    graph = csr_array((np.ones(adjacency.indices.size, dtype=np.int8), adjacency.indices, adjacency.indptr), (n, n))
    return connected_components(graph, directed=False)[1]


def local_maxima(values: NDArray, adjacency: Adjacency) -> NDArray[np.bool_]:
    """Which of the V elements are at least as large as each of their neighbours in `adjacency`.

    Parameters
    ----------
    values : array, shape (V,)
        Finite values of the elements the adjacency numbers (e.g. the suprathreshold voxels).
    adjacency : Adjacency
        Their neighbours; an element without neighbours is a maximum.

    Returns
    -------
    ndarray of bool, shape (V,)
    """
    values = np.asarray(values, dtype=np.float64)
    largest = np.full(values.size, -np.inf)
    rows = np.flatnonzero(np.diff(adjacency.indptr) > 0)
    if rows.size:  # empty rows are skipped, so each start's segment runs to the next non-empty row's start
        largest[rows] = np.maximum.reduceat(values[adjacency.indices], adjacency.indptr[rows])
    return values >= largest


def spaced_maxima(
    cluster: NDArray,
    values: NDArray,
    xyz: NDArray,
    candidates: NDArray,
    *,
    most: int = MAXIMA_PER_CLUSTER,
    apart: float = MIN_DISTANCE_MM,
) -> NDArray[np.intp]:
    """Up to `most` maxima of each cluster, SPM's way: the cluster's `candidates` by decreasing value (ties:
    lower element number first), each kept when it is more than `apart` (mm) from every one kept before it.

    Parameters
    ----------
    cluster : array of int, shape (V,)
        Cluster number of each element (0: in none).
    values : array, shape (V,)
        The statistic.
    xyz : array, shape (V, d)
        Positions in mm.
    candidates : array of bool, shape (V,)
        The local maxima (see :func:`local_maxima`).

    Returns
    -------
    ndarray of int
        Element numbers of the kept maxima, by increasing cluster number, then decreasing value.
    """
    cluster = np.asarray(cluster)
    values = np.asarray(values, dtype=np.float64)
    xyz = np.asarray(xyz, dtype=np.float64)
    index = np.flatnonzero(np.asarray(candidates, dtype=bool) & (cluster > 0))
    index = index[np.lexsort((index, -values[index], cluster[index]))]
    label = cluster[index]
    where = xyz[index]
    alive = np.ones(index.size, dtype=bool)
    newest = np.full((int(cluster.max(initial=0)) + 1, xyz.shape[1]), np.nan)
    kept = []
    for _ in range(most):
        open_ = np.flatnonzero(alive)
        if not open_.size:
            break
        # the first open candidate of each cluster is the next one the sequential rule keeps there: every
        # candidate before it was kept or lies within `apart` of one that was
        _, first = np.unique(label[open_], return_index=True)
        chosen = open_[first]
        kept.append(chosen)
        alive[chosen] = False
        newest[:] = np.nan
        newest[label[chosen]] = where[chosen]
        # clusters that kept none this pass have NaN distances, which compare False: they stay open
        alive &= ~(np.linalg.norm(where - newest[label], axis=1) <= apart)
    if not kept:
        return np.empty(0, dtype=np.intp)
    chosen = np.concatenate(kept)
    return index[np.sort(chosen)]  # index is ordered by cluster then value: sorting positions keeps that order
