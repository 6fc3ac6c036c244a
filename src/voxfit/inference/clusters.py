"""Supra-threshold clusters: labels, sizes and masses of one map, and the largest of each row for permutation nulls.

A cluster is a connected component (under an :class:`~voxfit.inference.graph.Adjacency`) of the elements
whose statistic exceeds the threshold (``stat > threshold``; NaN never does). Its size is the number of its
elements, or the sum of their `weights` (e.g. vertex areas); its mass is the sum of the statistic over its
elements (FSL randomise's cluster mass), weighted by `weights` when given, i.e. the integral of the statistic
over the cluster's area.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from voxfit._threads import in_chunks
from voxfit.exceptions import InputError
from voxfit.inference.graph import Adjacency, as_rows, as_weights, check_adjacency

__all__ = ["Clusters", "ClusterMaxima", "label_clusters", "cluster_max"]


class Clusters(NamedTuple):
    """The clusters of one map (unpacks as ``labels, sizes, masses``).

    Attributes
    ----------
    labels : ndarray of int32, shape (V,)
        0 outside every cluster; clusters numbered 1..n by decreasing size (ties: larger mass, then the one
        holding the lowest-numbered element first).
    sizes, masses : ndarray of float64, shape (n,)
        Size and mass of cluster ``k + 1`` at index k.
    """

    labels: NDArray[np.int32]
    sizes: NDArray[np.float64]
    masses: NDArray[np.float64]


class ClusterMaxima(NamedTuple):
    """The largest cluster size and the largest cluster mass of each row (unpacks as ``max_size, max_mass``)."""

    max_size: NDArray[np.float64]
    max_mass: NDArray[np.float64]


def label_clusters(stat, adjacency: Adjacency, threshold: float, weights=None) -> Clusters:
    """Label the clusters of elements with ``stat > threshold``.

    Parameters
    ----------
    stat : array, shape (V,)
        One statistic map over the elements of `adjacency`.
    adjacency : Adjacency
        Neighbours of the V elements.
    threshold : float
        Cluster-forming threshold on the statistic's scale (e.g. t for p < 0.001).
    weights : array, shape (V,), optional
        Non-negative size of each element (e.g. vertex areas).

    Returns
    -------
    Clusters
        ``(labels, sizes, masses)``.
    """
    rows, one, threshold, weights = _clusters_iv(stat, adjacency, threshold, weights, "stat")
    if not one:
        raise InputError(
            f"`stat` must be one map of shape ({adjacency.n},); got shape {np.shape(stat)}. "
            "For the largest cluster of each row use cluster_max."
        )
    from voxfit.inference import _kernels

    s = rows[0]
    roots = np.empty(s.size, dtype=np.int64)
    _kernels.cluster_roots(s, adjacency.indptr, adjacency.indices, threshold, roots)
    inside = np.flatnonzero(roots >= 0)
    # roots are the smallest element of each cluster, so np.unique orders clusters by their first element
    first, member = np.unique(roots[inside], return_inverse=True)
    sizes = np.bincount(member, weights=weights[inside], minlength=first.size).astype(np.float64)  # float if empty
    masses = np.bincount(member, weights=weights[inside] * s[inside], minlength=first.size).astype(np.float64)
    order = np.lexsort((first, -masses, -sizes))
    rank = np.empty(first.size, dtype=np.int32)
    rank[order] = np.arange(1, first.size + 1, dtype=np.int32)
    labels = np.zeros(s.size, dtype=np.int32)
    labels[inside] = rank[member]
    return Clusters(labels, sizes[order], masses[order])


def cluster_max(stats, adjacency: Adjacency, threshold: float, weights=None) -> ClusterMaxima:
    """The largest cluster size and the largest cluster mass of each row, for permutation nulls.

    Parameters
    ----------
    stats : array, shape (B, V)
        One map per row; rows are processed in parallel, with O(V) scratch memory per thread.
    adjacency, threshold, weights
        As in :func:`label_clusters`.

    Returns
    -------
    ClusterMaxima
        ``(max_size, max_mass)``, float64 arrays of shape (B,); 0 for a row where no element exceeds the
        threshold. The two maxima may come from different clusters.
    """
    rows, one, threshold, weights = _clusters_iv(stats, adjacency, threshold, weights, "stats")
    if one:
        raise InputError(
            f"`stats` must be 2-D (B, V), one map per row; got shape {np.shape(stats)}. "
            "For a single map pass stats[None, :] or use label_clusters."
        )
    from voxfit.inference import _kernels

    max_size = np.empty(rows.shape[0])
    max_mass = np.empty(rows.shape[0])

    def call(a: int, b: int) -> None:
        _kernels.cluster_max_rows(
            rows[a:b], adjacency.indptr, adjacency.indices, threshold, weights, max_size[a:b], max_mass[a:b]
        )

    in_chunks(call, rows.shape[0], first=_kernels.numba.get_num_threads())  # a signal is handled between calls
    return ClusterMaxima(max_size, max_mass)


def _clusters_iv(stat, adjacency, threshold, weights, name):
    adjacency = check_adjacency(adjacency)
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or not np.isfinite(threshold):
        raise InputError(f"`threshold` must be a finite number on the statistic's scale (e.g. 3.1); got {threshold!r}.")
    rows, one = as_rows(stat, adjacency, name)
    return rows, one, float(threshold), as_weights(weights, adjacency)
