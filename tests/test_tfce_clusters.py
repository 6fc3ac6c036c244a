"""Neighbourhood graphs, exact TFCE and supra-threshold clusters, checked against scipy.ndimage and by hand."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from voxfit.exceptions import DataTypeError, InputError
from voxfit.inference.clusters import cluster_max, label_clusters
from voxfit.inference.graph import Adjacency, mesh_adjacency, volume_adjacency
from voxfit.inference.tfce import tfce, tfce_max

RANK = {6: 1, 18: 2, 26: 3}  # connectivity -> scipy.ndimage.generate_binary_structure's `connectivity`
# an octahedron: 0 on top, 5 below, 1-4 around the equator
OCTAHEDRON = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [5, 2, 1], [5, 3, 2], [5, 4, 3], [5, 1, 4]])


def _csr(adjacency):
    n = adjacency.n
    return csr_matrix((np.ones(adjacency.indices.size), adjacency.indices, adjacency.indptr), shape=(n, n))


def _same_partition(a, b):
    """Two labellings of the same elements define the same groups (a bijection between their labels)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


def _ellipsoid(shape):
    centre = [(d - 1) / 2 for d in shape]
    grid = np.meshgrid(*[np.arange(d) for d in shape], indexing="ij")
    return sum(((g - c) / (d / 2)) ** 2 for g, c, d in zip(grid, centre, shape)) < 1


def _smooth_field(rng, shape, sigma=1.5):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / field.std() + 0.5  # mostly positive with several blobs


def _tfce_brute(stat, adjacency, E, H, weights=None):
    """The definition, level by level: components of {stat >= u} for every distinct positive value u."""
    w = np.ones(stat.size) if weights is None else weights
    graph = _csr(adjacency)
    levels = np.unique(stat[stat > 0])[::-1]
    out = np.zeros(stat.size)
    for u, below in zip(levels, np.append(levels[1:], 0.0)):
        on = np.flatnonzero(stat >= u)
        _, comp = connected_components(graph[on][:, on], directed=False)
        extent = np.bincount(comp, weights=w[on])
        out[on] += extent[comp] ** E * (u ** (H + 1) - below ** (H + 1)) / (H + 1)
    return out


def _random_graph(rng, n, n_edges):
    i, j = rng.integers(0, n, (2, n_edges))
    return Adjacency.from_edges(i, j, n)


# ---------------------------------------------------------------------------------------------- adjacency


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_volume_adjacency_matches_brute_force_neighbours(rng, connectivity):
    shape = (5, 4, 3)
    mask = rng.random(np.prod(shape)) < 0.6
    adj = volume_adjacency(mask, shape, connectivity)
    elements = np.flatnonzero(mask)
    xyz = np.stack(np.unravel_index(elements, shape, order="F"), axis=1)  # x fastest
    diff = np.abs(xyz[:, None, :] - xyz[None, :, :])
    expected = (diff.max(axis=2) == 1) & ((diff > 0).sum(axis=2) <= RANK[connectivity])
    assert adj.n == elements.size and adj.indptr.dtype == np.int64 and adj.indices.dtype == np.int32
    np.testing.assert_array_equal(_csr(adj).toarray() > 0, expected)
    assert all(np.all(np.diff(adj.indices[a:b]) > 0) for a, b in zip(adj.indptr[:-1], adj.indptr[1:]))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_volume_adjacency_components_match_ndimage_label(rng, connectivity):
    shape = (9, 7, 6)
    mask3d = ndimage.gaussian_filter(rng.standard_normal(shape), 1) > 0.1
    adj = volume_adjacency(mask3d.ravel(order="F"), shape, connectivity)
    labels, _ = ndimage.label(mask3d, ndimage.generate_binary_structure(3, RANK[connectivity]))
    _, components = connected_components(_csr(adj), directed=False)
    assert _same_partition(components, labels.ravel(order="F")[mask3d.ravel(order="F")])
    # a mask shaped like the grid, indexed [x, y, z], is the same mask
    same = volume_adjacency(mask3d, shape, connectivity)
    np.testing.assert_array_equal(same.indptr, adj.indptr)
    np.testing.assert_array_equal(same.indices, adj.indices)


def test_volume_adjacency_on_a_2d_grid():
    adj = volume_adjacency(np.ones(6, bool), (3, 2), connectivity=6)
    # 0 1 2 / 3 4 5 (x fastest): 4-neighbours
    assert [list(adj.indices[a:b]) for a, b in zip(adj.indptr[:-1], adj.indptr[1:])] == [
        [1, 3],
        [0, 2, 4],
        [1, 5],
        [0, 4],
        [1, 3, 5],
        [2, 4],
    ]
    assert volume_adjacency(np.ones(6, bool), (3, 2), connectivity=26).indices.size == 2 * (7 + 4)


def test_mesh_adjacency_on_an_octahedron():
    full = mesh_adjacency(OCTAHEDRON, np.ones(6, bool))
    assert np.all(np.diff(full.indptr) == 4)  # every vertex of an octahedron has 4 neighbours
    adj = mesh_adjacency(OCTAHEDRON, np.array([False, True, True, True, True, True]))
    # vertices 1..5 are numbered 0..4: the equator's square, and vertex 5 joined to all of it
    rows = [sorted(adj.indices[a:b]) for a, b in zip(adj.indptr[:-1], adj.indptr[1:])]
    assert rows == [[1, 3, 4], [0, 2, 4], [1, 3, 4], [0, 2, 4], [0, 1, 2, 3]]
    # without the poles the equator is a cycle; without vertices 2 and 4, vertices 1 and 3 touch no edge
    assert np.all(np.diff(mesh_adjacency(OCTAHEDRON, np.array([0, 1, 1, 1, 1, 0], bool)).indptr) == 2)
    assert mesh_adjacency(OCTAHEDRON, np.array([0, 1, 0, 1, 0, 0], bool)).indices.size == 0


# ---------------------------------------------------------------------------------------------- TFCE


def test_tfce_on_a_chain_by_hand():
    # chain 0-1-2-3-4-5; element 3 is negative and splits it; elements 4 and 5 tie
    adj = Adjacency.from_edges([0, 1, 2, 3, 4], [1, 2, 3, 4, 5], 6)
    stat = np.array([1.0, 3.0, 2.0, -1.0, 2.0, 2.0])
    for E, H in [(0.5, 2.0), (1.0, 2.0), (2.0, 1.0)]:
        F = lambda h: h ** (H + 1) / (H + 1)  # noqa: E731 - the integral of h^H
        # element 1: alone on (2, 3], with element 2 on (1, 2], with 0 and 2 on (0, 1]
        expected = [
            3**E * F(1),
            F(3) - F(2) + 2**E * (F(2) - F(1)) + 3**E * F(1),
            2**E * (F(2) - F(1)) + 3**E * F(1),
            0.0,
            2**E * F(2),
            2**E * F(2),
        ]
        np.testing.assert_allclose(tfce(stat, adj, E, H), expected, rtol=1e-14)
        # weights w: extents become sums of weights
        w = np.array([0.5, 2.0, 1.5, 9.0, 0.25, 1.0])
        expected_w = [
            4**E * F(1),
            2**E * (F(3) - F(2)) + 3.5**E * (F(2) - F(1)) + 4**E * F(1),
            3.5**E * (F(2) - F(1)) + 4**E * F(1),
            0.0,
            1.25**E * F(2),
            1.25**E * F(2),
        ]
        np.testing.assert_allclose(tfce(stat, adj, E, H, weights=w), expected_w, rtol=1e-14)


def test_tfce_equals_fine_numerical_integration_of_the_definition(rng):
    """A 100,000-step midpoint sum with extents from scipy.ndimage.label: max error < 1e-4 of the peak.

    Measured over seeds 0-5: 0.8e-5 to 1.6e-5 of the peak TFCE for both (E, H), and < 6e-5 relative at every
    voxel above a quarter of the peak statistic; with 20,000 steps 3.6e-5 to 7.8e-5 and < 3.3e-4: the error
    is the midpoint sum's own, O(dh), at each jump of the extent and at the upper limit. The exact sweep
    agrees with the level-by-level definition (``_tfce_brute``) to ~2e-15.
    """
    shape = (16, 14, 10)
    mask = _ellipsoid(shape)
    field = np.where(mask, _smooth_field(rng, shape), 0.0)
    flat_mask = mask.ravel(order="F")
    stat = field.ravel(order="F")[flat_mask]
    adj = volume_adjacency(flat_mask, shape, 6)
    n_steps = 100_000
    dh = stat.max() / n_steps
    h = (np.arange(n_steps) + 0.5) * dh
    # {field >= h} is the same set for every h between two consecutive values: label each distinct set once
    n_on = stat.size - np.searchsorted(np.sort(stat), h)
    settings = [(0.5, 2.0), (1.0, 2.0)]
    reference = np.zeros((len(settings), stat.size))
    structure = ndimage.generate_binary_structure(3, 1)
    for n in np.unique(n_on):
        steps = h[n_on == n]
        labels, _ = ndimage.label(field >= steps[0], structure)  # field is 0 outside the mask
        lab = labels.ravel(order="F")[flat_mask]
        extent = np.bincount(lab)[lab] * (lab > 0)
        for k, (E, H) in enumerate(settings):
            reference[k] += extent**E * np.sum(steps**H * dh)
    for k, (E, H) in enumerate(settings):
        exact = tfce(stat, adj, E, H)
        error = np.abs(exact - reference[k])
        assert error.max() < 1e-4 * reference[k].max(), (E, H, error.max() / reference[k].max())
        high = stat > 0.25 * stat.max()
        assert np.all(error[high] < 2e-4 * reference[k][high])
        np.testing.assert_allclose(exact, _tfce_brute(stat, adj, E, H), rtol=1e-12, atol=0)


@pytest.mark.parametrize("E,H", [(0.5, 2.0), (1.0, 2.0), (0.0, 0.0), (2.0, 0.5)])
def test_tfce_is_exact_on_random_graphs_with_ties_and_weights(rng, E, H):
    adj = _random_graph(rng, 60, 70)  # several components, some isolated elements
    stat = np.round(rng.standard_normal(60) * 2, 0)  # many ties, zeros and negatives
    stat[rng.integers(0, 60, 3)] = np.nan
    areas = rng.random(60)
    np.testing.assert_allclose(tfce(stat, adj, E, H), _tfce_brute(stat, adj, E, H), rtol=1e-12, atol=0)
    np.testing.assert_allclose(tfce(stat, adj, E, H, weights=areas), _tfce_brute(stat, adj, E, H, areas), rtol=1e-12)


def test_tfce_is_exact_on_a_large_map_with_ties(rng):
    """Beyond 4096 positive elements the sweep orders them with a radix sort; still the definition, exactly."""
    shape = (30, 30, 24)
    field = np.round(_smooth_field(rng, shape, 2.0) * 20) / 20  # ~60 distinct positive values, many ties
    adj = volume_adjacency(np.ones(field.size, bool), shape, 26)
    stat = field.ravel(order="F")
    assert np.count_nonzero(stat > 0) > 4096
    np.testing.assert_allclose(tfce(stat, adj), _tfce_brute(stat, adj, 0.5, 2.0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_elements_sorted_by_decreasing_value(rng, dtype):
    from voxfit.inference._kernels import _decreasing

    for n in (100, 50_000):
        s = rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)
        s[: n // 4] = s[n // 4 : n // 2]  # ties
        s[-5:] = [np.nan, 0.0, -0.0, 5e-324, np.inf]
        s = s.astype(dtype)
        order = _decreasing(s)
        np.testing.assert_array_equal(np.sort(order), np.flatnonzero(s > 0))
        assert np.all(np.diff(s[order]) <= 0)


def test_tfce_with_surface_areas_on_an_octahedron():
    adj = mesh_adjacency(OCTAHEDRON, np.ones(6, bool))
    stat = np.array([3.0, 1.0, 2.0, -1.0, 0.5, 2.5])
    areas = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.25])
    out = tfce(stat, adj, 1.0, 2.0, weights=areas)
    np.testing.assert_allclose(out, _tfce_brute(stat, adj, 1.0, 2.0, areas), rtol=1e-13)
    assert not np.allclose(out, tfce(stat, adj, 1.0, 2.0))
    np.testing.assert_allclose(tfce(stat, adj, 0.5, 2.0, weights=np.full(6, 4.0)), 2 * tfce(stat, adj, 0.5, 2.0))


def test_tfce_batch_equals_row_by_row_and_tfce_max_equals_the_maximum(rng):
    shape = (10, 9, 8)
    mask = _ellipsoid(shape).ravel(order="F")
    adj = volume_adjacency(mask, shape, 26)
    stats = np.stack([_smooth_field(rng, shape).ravel(order="F")[mask] for _ in range(7)])
    stats[3] = -1.0  # a row with nothing positive
    stats[4, :5] = np.nan
    batch = tfce(stats, adj)
    assert batch.shape == stats.shape and batch.dtype == np.float64
    for b in range(stats.shape[0]):
        np.testing.assert_array_equal(batch[b], tfce(stats[b], adj))
    assert np.all(batch[3] == 0) and np.all(batch[4, :5] == 0)
    np.testing.assert_array_equal(tfce_max(stats, adj), batch.max(axis=1))
    # float32 in, float32 out, computed in float64
    single = tfce(stats.astype(np.float32), adj)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, batch, rtol=4 * np.sqrt(np.finfo(np.float32).eps), atol=0)


# ---------------------------------------------------------------------------------------------- clusters


@pytest.mark.parametrize("connectivity", [6, 26])
def test_label_clusters_matches_ndimage_label(rng, connectivity):
    shape = (14, 12, 10)
    mask = _ellipsoid(shape)
    field = np.where(mask, _smooth_field(rng, shape, sigma=1.0), -np.inf)
    flat_mask = mask.ravel(order="F")
    stat = field.ravel(order="F")[flat_mask]
    threshold = 1.2
    labels, sizes, masses = label_clusters(stat, volume_adjacency(flat_mask, shape, connectivity), threshold)
    expected, n = ndimage.label(field > threshold, ndimage.generate_binary_structure(3, RANK[connectivity]))
    expected = expected.ravel(order="F")[flat_mask]
    assert labels.dtype == np.int32 and n > 1 and sizes.size == n
    assert _same_partition(labels, expected)
    assert np.all(np.diff(sizes) <= 0)  # numbered by decreasing size
    np.testing.assert_array_equal(sizes, np.bincount(labels)[1:])
    np.testing.assert_allclose(masses, np.bincount(labels, weights=stat * (labels > 0))[1:], rtol=1e-13)
    np.testing.assert_array_equal(np.sort(sizes), np.sort(np.bincount(expected)[1:]))
    np.testing.assert_allclose(np.sort(masses), np.sort(ndimage.sum_labels(stat, expected, np.arange(1, n + 1))))


def test_cluster_max_equals_label_clusters_row_by_row(rng):
    shape = (10, 9, 8)
    mask = _ellipsoid(shape).ravel(order="F")
    adj = volume_adjacency(mask, shape, 18)
    stats = np.stack([_smooth_field(rng, shape, 1.0).ravel(order="F")[mask] for _ in range(6)])
    stats[2] = 0.0  # no cluster
    stats[3, ::3] = np.nan
    weights = rng.random(adj.n) + 0.5
    for w in (None, weights):
        max_size, max_mass = cluster_max(stats, adj, 1.0, weights=w)
        for b in range(stats.shape[0]):
            _, sizes, masses = label_clusters(stats[b], adj, 1.0, weights=w)
            assert max_size[b] == (sizes.max() if sizes.size else 0.0)
            np.testing.assert_allclose(max_mass[b], masses.max() if masses.size else 0.0, rtol=1e-14)
    assert max_size[2] == max_mass[2] == 0.0
    labels, sizes, masses = label_clusters(stats[2], adj, 1.0)
    assert not labels.any() and sizes.shape == masses.shape == (0,) and sizes.dtype == masses.dtype == np.float64


def test_cluster_weights_on_an_octahedron():
    adj = mesh_adjacency(OCTAHEDRON, np.ones(6, bool))
    stat = np.array([3.0, 1.0, 2.0, -1.0, 0.5, 2.5])
    areas = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.25])
    # above 1.5: vertices 0, 2, 5 (0-2 and 2-5 are edges) -> one cluster
    labels, sizes, masses = label_clusters(stat, adj, 1.5, weights=areas)
    np.testing.assert_array_equal(labels, [1, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(sizes, [1.75])
    np.testing.assert_allclose(masses, [3.0 + 1.0 + 0.625])
    # above 2.2: vertices 0 and 5 are opposite poles -> two clusters, the larger (by area) first
    labels, sizes, masses = label_clusters(stat, adj, 2.2, weights=areas)
    np.testing.assert_array_equal(labels, [1, 0, 0, 0, 0, 2])
    np.testing.assert_allclose(sizes, [1.0, 0.25])
    labels, sizes, masses = label_clusters(stat, adj, 2.2)  # equal sizes: the larger mass first
    np.testing.assert_array_equal(labels, [1, 0, 0, 0, 0, 2])
    np.testing.assert_allclose(masses, [3.0, 2.5])


# ---------------------------------------------------------------------------------------------- errors, imports


ADJ = Adjacency.from_edges([0, 1], [1, 2], 3)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: tfce(np.ones(4), ADJ), InputError, r"`stat` must have shape \(V,\) or \(B, V\) with V = 3 .* \(4,\)"),
        (lambda: tfce(np.ones((2, 3, 1)), ADJ), InputError, r"`stat` must have shape"),
        (lambda: tfce(np.ones(3), ADJ, E=-0.5), InputError, r"`E` must be a finite number >= 0 .* got -0.5"),
        (lambda: tfce(np.ones(3), ADJ, H=-2), InputError, r"`H` must be a finite number >= 0 .* got -2"),
        (lambda: tfce(np.ones(3), ADJ, H=np.inf), InputError, r"`H` must be a finite number"),
        (lambda: tfce(np.array([1.0, np.inf, 0]), ADJ), InputError, r"`stat` contains \+inf"),
        (lambda: tfce(np.ones(3), ADJ, weights=np.ones(2)), InputError, r"`weights` must have shape \(3,\)"),
        (lambda: tfce(np.ones(3), ADJ, weights=-np.ones(3)), InputError, r"`weights` must be finite and non-negative"),
        (lambda: tfce(np.ones(3), np.eye(3)), InputError, r"`adjacency` must be an Adjacency .* got ndarray"),
        (lambda: tfce(np.array(["a", "b", "c"]), ADJ), DataTypeError, r"`stat` must be a real-valued array"),
        (lambda: tfce_max(np.ones(3), ADJ), InputError, r"`stats` must be 2-D \(B, V\)"),
        (lambda: label_clusters(np.ones((2, 3)), ADJ, 1.0), InputError, r"`stat` must be one map of shape \(3,\)"),
        (lambda: label_clusters(np.ones(3), ADJ, np.nan), InputError, r"`threshold` must be a finite number"),
        (lambda: cluster_max(np.ones((2, 4)), ADJ, 1.0), InputError, r"`stats` must have shape .* got shape \(2, 4\)"),
        (lambda: cluster_max(np.ones(3), ADJ, 1.0), InputError, r"`stats` must be 2-D"),
        (
            lambda: volume_adjacency(np.ones(8, bool), (2, 2, 2), 7),
            InputError,
            r"`connectivity` must be 6 \(faces\), 18 \(faces and edges\) or 26 \(and corners\); got 7",
        ),
        (lambda: volume_adjacency(np.ones(9, bool), (2, 2, 2)), InputError, r"`mask` has 9 elements but `shape` .* 8"),
        (lambda: volume_adjacency(np.ones((2, 4), bool), (2, 2, 2)), InputError, r"`mask` has shape \(2, 4\)"),
        (lambda: volume_adjacency(np.ones(8, bool), (2, 2, 2, 1)), InputError, r"`shape` must be a tuple of 1 to 3"),
        (
            lambda: mesh_adjacency(OCTAHEDRON, np.ones(5, bool)),
            InputError,
            r"`faces` must hold vertex numbers in 0..4 \(the mask has 5 vertices\); got values from 0 to 5",
        ),
        (lambda: mesh_adjacency(OCTAHEDRON - 1, np.ones(6, bool)), InputError, r"`faces` must hold vertex numbers"),
        (lambda: mesh_adjacency(OCTAHEDRON[:, :2], np.ones(6, bool)), InputError, r"`faces` must have shape"),
        (lambda: mesh_adjacency(OCTAHEDRON * 1.0, np.ones(6, bool)), DataTypeError, r"`faces` must be integer"),
        (lambda: Adjacency(np.array([0, 1]), np.array([3])), InputError, r"`indices` must be .* in 0..0"),
        (lambda: Adjacency.from_edges([0], [5], 3), InputError, r"edge ends must be element numbers in 0..2"),
    ],
)
def test_bad_inputs_raise_one_clear_sentence(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_importing_tfce_and_clusters_does_not_import_numba():
    code = (
        "import sys, voxfit.inference.tfce, voxfit.inference.clusters, voxfit.inference.graph; "
        "print('numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
