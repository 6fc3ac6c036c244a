"""Multiple comparisons: FDR, Bonferroni, permutations, clusters, TFCE.

numba (for the permutation, cluster and TFCE kernels) is imported on first use, not with this package.
"""

from .clusters import cluster_max, label_clusters
from .corrections import bonferroni, fdr, fdr_threshold
from .graph import Adjacency, mesh_adjacency, volume_adjacency
from .permutation import PermutationResult, permutation_test
from .shuffles import count_shuffles, make_shuffles
from .tfce import tfce, tfce_max

__all__ = [
    "Adjacency",
    "PermutationResult",
    "bonferroni",
    "cluster_max",
    "count_shuffles",
    "fdr",
    "fdr_threshold",
    "label_clusters",
    "make_shuffles",
    "mesh_adjacency",
    "permutation_test",
    "tfce",
    "tfce_max",
    "volume_adjacency",
]
