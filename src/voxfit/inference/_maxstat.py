"""Compiled kernel of the permutation loop: statistics from projections, their maxima and exceedance counts.

For a batch of shuffles and a tile of voxels the product ``G = [U, Q_Z]' P E`` (shuffles x rank x voxels)
holds everything: the effect projection(s) ``G[:, :q]`` and, with ``||E||^2``, the residual sum of squares
``||E||^2 - ||G||^2``. One pass keeps each shuffle's maximum over the tile, counts per voxel how often the
null statistic reaches the observed one, and (when clusters or TFCE need whole maps) stores the statistics.

The pass works on a key that orders like the statistic without its square root: ``sign(t) t^2`` for t,
``F`` itself for F. Comparisons and maxima need no square root, and the loop is a few multiplications and
one division per element in the data's precision (float32 data: float32, as FSL randomise). numba is
imported on first use; the kernel releases the GIL so that threads can share the tiles.
"""

from __future__ import annotations

import numpy as np


def to_key(stat, is_t: bool):
    """The ordering key of a statistic (``sign(t) t^2`` for t)."""
    return np.sign(stat) * stat * stat if is_t else stat


def from_key(key, is_t: bool):
    return np.sign(key) * np.sqrt(np.abs(key)) if is_t else key


def kernel():
    """``(stats_tile, flip_tile)``, importing numba and the compiled kernels on first use."""
    from ._maxstat_numba import flip_tile, stats_tile

    return stats_tile, flip_tile
