"""Threshold-free cluster enhancement (Smith & Nichols 2009), computed exactly.

``TFCE(v) = integral from 0 to stat(v) of e(h)^E h^H dh``, where e(h) is the extent (number of elements, or
sum of their weights such as vertex areas) of the connected component that holds v among the elements with
stat >= h. The extent is constant between consecutive distinct values of the map, so the integral is a finite
sum, found by one union-find sweep over the elements in decreasing order: O(V log V) per map, no step `dh`
(see ``voxfit.inference._kernels``). Only the positive part is enhanced; for negative effects pass ``-stat``.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import NDArray

from voxfit._threads import in_chunks
from voxfit.exceptions import InputError
from voxfit.inference.graph import Adjacency, as_rows, as_weights, check_adjacency

__all__ = ["tfce", "tfce_max"]


def tfce(stat, adjacency: Adjacency, E: float = 0.5, H: float = 2.0, weights=None) -> NDArray[np.floating]:
    """Threshold-free cluster enhancement of the positive part of one map or of each row of a batch.

    Parameters
    ----------
    stat : array, shape (V,) or (B, V)
        Statistic maps over the elements of `adjacency`. Values <= 0 or NaN contribute nothing and get 0.
    adjacency : Adjacency
        Neighbours of the V elements (``volume_adjacency``, ``mesh_adjacency``).
    E, H : float
        Extent and height exponents, >= 0. Smith & Nichols recommend E=0.5, H=2 for volumes; E=1, H=2 is
        usual on surfaces.
    weights : array, shape (V,), optional
        Non-negative size of each element (e.g. vertex areas); the extent is then the sum of the weights.

    Returns
    -------
    ndarray, same shape as `stat`
        TFCE scores, float32 for float32 input, float64 otherwise (computed in float64). Memory O(B V);
        use :func:`tfce_max` for permutation nulls.
    """
    rows, one, E, H, weights = _tfce_iv(stat, adjacency, E, H, weights, "stat")
    from voxfit.inference import _kernels

    out = np.empty_like(rows)

    def call(a: int, b: int) -> None:
        _kernels.tfce_rows(rows[a:b], adjacency.indptr, adjacency.indices, weights, E, H, out[a:b])

    in_chunks(call, rows.shape[0], first=_kernels.numba.get_num_threads())  # a signal is handled between calls
    return out[0] if one else out


def tfce_max(stats, adjacency: Adjacency, E: float = 0.5, H: float = 2.0, weights=None) -> NDArray[np.float64]:
    """The maximum TFCE score of each row, without keeping the maps: ``tfce(stats, ...).max(axis=1)``.

    Parameters
    ----------
    stats : array, shape (B, V)
        One map per row (e.g. a batch of permutations); rows are processed in parallel, with O(V) scratch
        memory per thread.
    adjacency, E, H, weights
        As in :func:`tfce`.

    Returns
    -------
    ndarray of float64, shape (B,)
        Each row's largest TFCE score (0 for a row with no positive value).
    """
    rows, one, E, H, weights = _tfce_iv(stats, adjacency, E, H, weights, "stats")
    if one:
        raise InputError(
            f"`stats` must be 2-D (B, V), one map per row; got shape {np.shape(stats)}. "
            "For a single map pass stats[None, :]."
        )
    from voxfit.inference import _kernels

    out = np.empty(rows.shape[0])

    def call(a: int, b: int) -> None:
        _kernels.tfce_max_rows(rows[a:b], adjacency.indptr, adjacency.indices, weights, E, H, out[a:b])

    # rows a few at a time: one compiled call over a whole batch held the main thread (and Ctrl-C) for seconds
    in_chunks(call, rows.shape[0], first=_kernels.numba.get_num_threads())
    return out


def _tfce_iv(stat, adjacency, E, H, weights, name):
    adjacency = check_adjacency(adjacency)
    for exponent, value in (("E", E), ("H", H)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < np.inf:
            raise InputError(f"`{exponent}` must be a finite number >= 0 (usually E=0.5, H=2); got {value!r}.")
    rows, one = as_rows(stat, adjacency, name)
    if np.isposinf(rows).any():
        raise InputError(
            f"`{name}` contains +inf, whose TFCE is infinite; replace it with a large finite value or NaN."
        )
    return rows, one, float(E), float(H), as_weights(weights, adjacency)
