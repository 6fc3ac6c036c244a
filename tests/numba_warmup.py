"""Compile voxfit's numba kernels into their disk cache before a parallel test run (see ``conftest.py``).

Run as ``python numba_warmup.py PART`` with PART in ``PARTS``: each part calls, through the public functions
and on tiny data, the kernels of one share of the package in the dtypes the suite uses (float32 and float64),
so that numba compiles and caches them (``cache=True``); the test workers and the commands they start then load
them from the cache instead of compiling them again, each on its own. The parts run at once: two of about
27 s each here, and the AR kernels' (about 5 s) beside them. A kernel this misses is compiled, as before, by the
first test that calls it: the warm-up changes only when compiling happens, never what is compiled or tested.
"""

from __future__ import annotations

import sys

import numpy as np


def _maps() -> None:
    """TFCE and the cluster kernels, one map and batches, float32 and float64 (the largest compile)."""
    from voxfit.inference import cluster_max, label_clusters, tfce, tfce_max, volume_adjacency

    adjacency = volume_adjacency(np.ones((4, 4, 2), dtype=bool), (4, 4, 2))
    for dtype in (np.float64, np.float32):
        stats = np.random.default_rng(0).standard_normal((3, adjacency.n)).astype(dtype)
        tfce(stats[0], adjacency)
        tfce(stats, adjacency)
        tfce_max(stats, adjacency)
        label_clusters(stats[0], adjacency, 0.5)
        cluster_max(stats, adjacency, 0.5)
    held = np.random.default_rng(1).standard_normal(adjacency.n)
    held.flags.writeable = False  # (a map read from a file)
    label_clusters(held, adjacency, 0.5)


def _fits() -> None:
    """The fit's pass over the data, z from t, the permutation tiles, the mixed-effects kernel and the
    smoothness sums."""
    import voxfit
    from voxfit.core._kernels import compile_kernels, hermite_z
    from voxfit.core._mixed_kernels import compile_mixed_kernels
    from voxfit.engine.smoothness import warm_kernels
    from voxfit.inference import permutation_test

    rng = np.random.default_rng(0)
    compile_mixed_kernels()  # (its one signature, compiled eagerly)
    from voxfit.core.mixed import fit_mixed_block

    s2 = np.exp(rng.uniform(0, 7, (8, 16)))  # (first-level variances far apart: the probe for another peak too)
    fit_mixed_block(np.ones((8, 1)), rng.standard_normal((8, 16)) * 10, s2, compiled=True)
    compile_kernels()
    hermite_z(np.linspace(-3, 3, 5), 1.0, np.zeros((4, 4)), np.empty(5))
    X = np.column_stack([np.ones(12), np.arange(12.0)])
    one = np.ones((8, 1))
    two = np.repeat(np.eye(2), 4, axis=0)
    for dtype in (np.float32, np.float64):
        voxfit.fit(X, rng.standard_normal((12, 6)).astype(dtype), compiled=True)
        Y = rng.standard_normal((8, 6)).astype(dtype)
        permutation_test(one, Y, [[1.0]], n_permutations=8, seed=0, n_jobs=1)  # sign-flips, t
        permutation_test(two, Y, [[1.0, -1.0]], n_permutations=8, seed=0, n_jobs=1)  # shuffles, t
        permutation_test(two, Y, np.eye(2), n_permutations=8, seed=0, n_jobs=1)  # shuffles, F
        warm_kernels(dtype)


def _fit_pass_layouts() -> None:
    """The fit's pass over the data in each layout the suite gives it (each one of numba's signatures): a .nii's
    scans (C order), CIFTI's series (F order), a strided view, a read-only memory map, int16 files."""
    from voxfit.core._kernels import shift_and_square

    layouts = [
        (np.float32, "C", True), (np.float32, "C", False), (np.float32, "F", True), (np.float32, "F", False),
        (np.float32, "A", True), (np.float64, "C", True), (np.float64, "C", False), (np.float64, "F", True),
        (np.float64, "F", False), (np.float64, "A", True), (np.int16, "C", True), (np.int16, "F", True),
    ]  # fmt: skip
    for dtype, order, writeable in layouts:
        whole = np.arange(96).reshape(12, 8).astype(dtype, order="F" if order == "F" else "C")
        Y = whole[:, ::2] if order == "A" else whole
        Y.flags.writeable = writeable
        work = np.float64 if dtype == np.float64 else np.float32
        v = Y.shape[1]
        shift_and_square(Y, 0, v, np.arange(12), np.empty((12, v), dtype=work), np.empty(v, dtype=work), np.empty(v))


def _ar() -> None:
    """The AR fit's data pass and AR(1) kernels (explicit signatures, compiled eagerly), and ARMA(1,1)'s per-voxel
    GLS (by a fit of a tiny block); then, as this part is the shortest, the fit's pass over data held in other
    layouts, the smoothness sums over series (F order) and z from t with a dof per voxel."""
    from voxfit.core import factorize
    from voxfit.core._ar_kernels import compile_ar_kernels
    from voxfit.core.arma import fit_arma_block
    from voxfit.core.distributions import _t_to_z_tabled
    from voxfit.engine.smoothness import neighbour_sums

    compile_ar_kernels()
    X = np.column_stack([np.ones(16), np.arange(16.0)])
    fit_arma_block(factorize(X), np.random.default_rng(0).standard_normal((16, 3)), [np.array([[0.0, 1.0]])])
    _fit_pass_layouts()
    neighbour_sums(np.zeros((4, 8), dtype=np.float32, order="F"), np.full((4, 1), 0.5), np.ones((2, 2, 2), dtype=bool))
    _t_to_z_tabled(np.linspace(-3, 3, 8), np.full(8, 20.0))


PARTS = {"maps": _maps, "fits": _fits, "ar": _ar}

if __name__ == "__main__":
    PARTS[sys.argv[1]]()
