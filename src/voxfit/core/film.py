"""FSL FILM's noise model (Woolrich et al. 2001, NeuroImage 14:1370), for ``--noise film``.

Per voxel, the autocorrelation of the OLS residuals at lags 0..M (raw: ``r_k / r_0`` with ``r_k = sum_t e_t
e_{t+k}``), spatially regularised, then tapered by a Tukey window of size M, ``w_k = (1 + cos(pi k / M)) / 2``
(zero from lag M on), with M = round(sqrt(n)) as FILM's default. The spatial step smooths each lag's raw
autocorrelation map within the mask with a SUSAN-like nonlinear filter (Smith and Brady 1997): each voxel's
value becomes the weighted mean of its neighbours' within a Gaussian kernel, each neighbour weighted by
``exp(-d^2 / 2 sigma^2) exp(-((I_j - I_i) / bt)^2)``, I the mean functional image (the USAN is found on the
EPI, as FILM does); see :func:`smooth_autocorrelations` and :func:`susan_brightness_threshold` for the
choices the papers leave open. On a surface (FSL's film_gls has a surface mode too) the neighbours are the
mesh's, along the cortex (:func:`mesh_kernel`); plain arrays have no neighbourhood and are refused.

Whitening: the AR(M) filter that reproduces the tapered autocorrelations at lags 0..M (Levinson), applied
exactly by ``voxfit.core.ar`` (its first M scans by the inverse Cholesky factor of their stationary covariance).
FILM itself whitens in the frequency domain by the inverse square root of the tapered autocorrelation's
spectrum; the two agree on lags 0..M and differ beyond (the AR(M) extension against FILM's zero), which is the
choice made here so that the fit keeps voxfit's exact AR algebra (and its sums). Degrees of freedom: as FILM,
``n - rank`` (the autocorrelation is taken as known).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .mesh import masked_edges

__all__ = [
    "FILM_SIGMA_MM",
    "residual_lagged_products",
    "select_ar_order",
    "film_lags",
    "raw_autocorrelations",
    "smooth_autocorrelations",
    "susan_brightness_threshold",
    "tukey_taper",
    "MeshKernel",
    "VolumeKernel",
    "mesh_kernel",
    "mesh_kernel_bytes",
    "mesh_kernel_chunk",
    "mesh_rings",
    "volume_kernel",
    "volume_kernel_bytes",
]

SMOOTH_CHUNK = 2048  # voxels smoothed together (see smooth_autocorrelations)
MESH_NEIGHBOURS = 96  # at most, per vertex of a surface (see mesh_kernel)
MAX_RINGS = 16  # of mesh edges from a vertex to its farthest neighbour (see mesh_rings)
MESH_CHUNK = 2048  # vertices whose neighbours are searched together (see mesh_kernel)
MIN_MESH_CHUNK = 16  # ... at the least, under a memory cap (see mesh_kernel_chunk)
FILM_SIGMA_MM = 5.0  # FEAT's film_gls call: -sa -ms 5 (SUSAN mask size, taken as the kernel's sigma in mm)


def film_lags(n_scans: int) -> int:
    """FILM's Tukey window size M = round(sqrt(n)) (at least 1)."""
    return max(1, int(round(np.sqrt(n_scans))))


def residual_lagged_products(basis: NDArray, Y: NDArray, lags: int) -> NDArray[np.float64]:
    """(lags+1, v) ``sum_t e_t e_{t+k}`` of the OLS residuals e of Y (n, v; float64) on the orthonormal `basis`."""
    E = Y - basis @ (basis.T @ Y)
    n = E.shape[0]
    return np.stack([np.einsum("tv,tv->v", E[: n - k], E[k:]) for k in range(lags + 1)])


def select_ar_order(residual_lagged: NDArray, n_eff: int, max_order: int) -> NDArray[np.intp]:
    """Each voxel's AR order p in 0..`max_order` minimising BIC, ``n_eff log sigma_p^2 + p log n_eff``, where
    sigma_p^2 is the innovation variance of the Yule-Walker AR(p) fit to the OLS residuals' autocorrelations
    (Levinson's prediction errors, ``prod (1 - kappa_k^2)``; reflection coefficients held within +-0.99)."""
    rho = raw_autocorrelations(residual_lagged)
    v = rho.shape[0]
    err = np.ones(v)
    phi = np.zeros((v, max_order))
    best, best_bic = np.zeros(v, dtype=np.intp), np.zeros(v)
    for k in range(1, max_order + 1):
        past = np.einsum("vj,vj->v", phi[:, : k - 1], rho[:, k - 1 : 0 : -1])
        kappa = np.clip((rho[:, k] - past) / err, -0.99, 0.99)
        if k > 1:
            phi[:, : k - 1] = phi[:, : k - 1] - kappa[:, None] * phi[:, k - 2 :: -1]
        phi[:, k - 1] = kappa
        err = err * (1.0 - kappa**2)
        bic = n_eff * np.log(err) + k * np.log(n_eff)
        better = bic < best_bic
        best[better], best_bic[better] = k, bic[better]
    return best


def raw_autocorrelations(residual_lagged: NDArray, in_place: bool = False) -> NDArray[np.float64]:
    """(v, M+1) raw autocorrelations ``r_k / r_0`` from residual lagged products (M+1, v; float64); 0 where r_0 is
    0. With `in_place`, in the products' own memory (their transpose: Fortran-ordered), which they then hold."""
    if not in_place:
        residual_lagged = np.array(residual_lagged, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(residual_lagged, residual_lagged[0].copy(), out=residual_lagged)
    np.nan_to_num(residual_lagged, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    rho = residual_lagged.T
    rho[:, 0] = 1.0
    return rho


def tukey_taper(rho: NDArray, in_place: bool = False) -> NDArray[np.float64]:
    """Autocorrelations (v, M+1) times FILM's Tukey window ``(1 + cos(pi k / M)) / 2``, k = 0..M (with
    `in_place`, in `rho`)."""
    M = rho.shape[1] - 1
    window = 0.5 * (1.0 + np.cos(np.pi * np.arange(M + 1) / M))
    if in_place:
        rho *= window
        return rho
    return rho * window


def susan_brightness_threshold(brightness: NDArray) -> float:
    """SUSAN's brightness threshold as FEAT sets it for its spatial smoothing: 3/4 of the difference between the
    median and the 2nd percentile of the image within the mask (here the mean functional image)."""
    values = brightness[np.isfinite(brightness)]
    if values.size == 0:
        return 1.0
    bt = 0.75 * float(np.median(values) - np.percentile(values, 2))
    return bt if bt > 0 else 1.0


@dataclass(frozen=True, eq=False)
class VolumeKernel:
    """FILM's neighbourhood on a grid (:func:`volume_kernel`): the grid's voxel numbers padded by the kernel's
    reach (`number`, raveled; -1 outside the mask), each masked voxel's index in it (`flat`, V), and for every
    offset within 2 sigma but the centre, its step in the padded grid (`steps`, K) and its Gaussian weight
    (`weights`, K), in the order the offsets are summed (x outermost, then y, then z)."""

    number: NDArray
    flat: NDArray
    steps: NDArray
    weights: NDArray

    @property
    def slots(self) -> int:
        """How many neighbours each voxel may have (the offsets)."""
        return self.steps.size

    def take(self, k: int, at: slice) -> tuple[NDArray, NDArray | float]:
        """The voxels `at`'s neighbours at offset `k` (-1: none in the mask) and their Gaussian weight."""
        return self.number[self.flat[at] + self.steps[k]], self.weights[k]


@dataclass(frozen=True, eq=False)
class MeshKernel:
    """FILM's neighbourhood on a surface (:func:`mesh_kernel`): for each of the V masked vertices its neighbours
    (`neighbours`, (K, V), nearest first, -1 past the last) and their Gaussian weights (`weights`, (K, V))."""

    neighbours: NDArray
    weights: NDArray

    @property
    def slots(self) -> int:
        """How many neighbours a vertex may have."""
        return self.neighbours.shape[0]

    def take(self, k: int, at: slice) -> tuple[NDArray, NDArray | float]:
        """The vertices `at`'s k-th neighbours (-1: none) and their Gaussian weights."""
        return self.neighbours[k, at], self.weights[k, at]


def volume_kernel(mask: NDArray, voxel_mm, sigma_mm: float = FILM_SIGMA_MM) -> VolumeKernel:
    """The neighbourhood of every masked voxel of a grid (`mask` boolean, 3-D, indexed [x, y, z]) within 2
    sigma, the centre left out, weighted by ``exp(-d^2 / 2 sigma^2)``, d in mm from `voxel_mm` (3,); the V masked
    voxels numbered as ``np.flatnonzero(mask.ravel('F'))`` (x fastest, as Masker numbers them)."""
    mask = np.asarray(mask, dtype=bool)
    reach, padded = _padded_grid(mask.shape, voxel_mm, sigma_mm)
    number = np.full(padded, -1, dtype=np.int64)
    number[tuple(slice(a, a + size) for a, size in zip(reach, mask.shape))][mask] = 0
    flat = np.flatnonzero(number.ravel("F") >= 0)  # x fastest: the masked voxels in Masker's order
    number = number.ravel("F")
    number[flat] = np.arange(flat.size)
    strides = np.array([1, padded[0], padded[0] * padded[1]])
    steps, weights = [], []
    for dx in range(-reach[0], reach[0] + 1):
        for dy in range(-reach[1], reach[1] + 1):
            for dz in range(-reach[2], reach[2] + 1):
                d2 = (dx * voxel_mm[0]) ** 2 + (dy * voxel_mm[1]) ** 2 + (dz * voxel_mm[2]) ** 2
                if (dx == dy == dz == 0) or d2 > (2.0 * sigma_mm) ** 2:
                    continue
                steps.append(int(np.dot([dx, dy, dz], strides)))
                weights.append(np.exp(-d2 / (2.0 * sigma_mm**2)))
    return VolumeKernel(number, flat, np.array(steps, dtype=np.int64), np.array(weights, dtype=float))


def _padded_grid(shape, voxel_mm, sigma_mm: float) -> tuple[NDArray, NDArray]:
    """The kernel's reach in voxels along each axis (2 sigma) and the shape of the grid padded by it."""
    voxel_mm = np.abs(np.asarray(voxel_mm, dtype=float))
    reach = np.floor(2.0 * sigma_mm / voxel_mm).astype(int)
    return reach, np.array(shape) + 2 * reach


def volume_kernel_bytes(shape, voxel_mm, n_voxels: int, sigma_mm: float = FILM_SIGMA_MM) -> int:
    """The most :func:`volume_kernel` holds for `n_voxels` masked voxels of a grid of `shape`: its padded grid of
    numbers (int64), with two copies as it is made, and the masked voxels' places in it."""
    _, padded = _padded_grid(shape, voxel_mm, sigma_mm)
    return 24 * int(np.prod(padded)) + 8 * n_voxels


def mesh_rings(median_edge: float, sigma_mm: float = FILM_SIGMA_MM, max_neighbours: int = MESH_NEIGHBOURS) -> int:
    """How many rings of mesh edges :func:`mesh_kernel` searches: enough to reach 2 sigma, or the radius that holds
    about `max_neighbours` vertices when that is less (``e sqrt(K sqrt(3) / 2 pi)`` for edges e of equilateral
    triangles), times 1.5 because paths along edges zigzag; at least 1, at most MAX_RINGS."""
    e = max(float(median_edge), 1e-6)
    radius = min(2.0 * sigma_mm, e * np.sqrt(max_neighbours * np.sqrt(3.0) / (2.0 * np.pi)))
    return int(min(MAX_RINGS, max(1, np.ceil(1.5 * radius / e))))


def mesh_kernel_bytes(n_vertices: int, chunk: int, max_neighbours: int = MESH_NEIGHBOURS) -> int:
    """The bytes :func:`mesh_kernel` holds for `n_vertices` masked vertices searched `chunk` at a time: its (K, V)
    arrays (int32 and float64) and one chunk's candidates (at most ~4 K per vertex, ~48 bytes each as they are
    sorted)."""
    return 12 * max_neighbours * n_vertices + 48 * 4 * max_neighbours * chunk


def mesh_kernel_chunk(n_vertices: int, budget: int | None, max_neighbours: int = MESH_NEIGHBOURS) -> int:
    """Vertices searched together by :func:`mesh_kernel` within `budget` bytes (None: MESH_CHUNK), as many as
    :func:`mesh_kernel_bytes` allows; 0 when that is under MIN_MESH_CHUNK (the cap cannot hold the neighbourhood)."""
    if budget is None:
        return MESH_CHUNK
    per_vertex = mesh_kernel_bytes(0, 1, max_neighbours)
    chunk = (budget - mesh_kernel_bytes(n_vertices, 0, max_neighbours)) // per_vertex
    return int(min(MESH_CHUNK, chunk)) if chunk >= MIN_MESH_CHUNK else 0


def mesh_kernel(
    coords: NDArray,
    faces: NDArray,
    mask: NDArray,
    sigma_mm: float = FILM_SIGMA_MM,
    max_neighbours: int = MESH_NEIGHBOURS,
    chunk: int = MESH_CHUNK,
) -> MeshKernel:
    """The neighbourhood of every masked vertex of a triangle mesh (`coords` (n, 3) in mm, `faces` (F, 3), `mask`
    (n,) bool): the masked vertices within 2 sigma, nearest first, at most `max_neighbours` of them, the centre
    left out, weighted by ``exp(-d^2 / 2 sigma^2)``.

    The neighbourhood runs along the surface: a vertex is a candidate when a path of mesh edges through masked
    vertices joins it to the centre in at most :func:`mesh_rings` steps, so that neighbours across a sulcus, near
    in space but far on the cortex, are not taken; d is then their distance in space (at most the distance along
    the cortex). On meshes denser than ~1.5 mm the nearest `max_neighbours` hold all the weight that counts and
    memory stays ``K V``. A choice: FSL's surface mode is not published in enough detail to copy. Vertices
    numbered as ``np.flatnonzero(mask)``; the search runs over `chunk` vertices at a time (see
    :func:`mesh_kernel_chunk`)."""
    from scipy import sparse

    mask = np.asarray(mask, dtype=bool)
    xyz = np.asarray(coords, dtype=np.float64)[mask]
    V = xyz.shape[0]
    u, w = masked_edges(faces, mask)
    A = sparse.csr_matrix((np.ones(2 * u.size, dtype=np.int16), (np.r_[u, w], np.r_[w, u])), shape=(V, V))
    A.data[:] = 1  # (an edge shared by two triangles was summed)
    step = (A + sparse.identity(V, dtype=np.int16, format="csr")).tocsr()  # one ring further, the ring kept
    rows = np.repeat(np.arange(V), np.diff(A.indptr))
    edges = np.linalg.norm(xyz[rows] - xyz[A.indices], axis=1)
    rings = mesh_rings(float(np.median(edges)) if edges.size else 2.0 * sigma_mm, sigma_mm, max_neighbours)
    neighbours = np.full((max_neighbours, V), -1, dtype=np.int32 if V < 2**31 else np.int64)
    weights = np.zeros((max_neighbours, V))
    for start in range(0, V, chunk):
        stop = min(V, start + chunk)
        centres = np.arange(start, stop)
        ones = np.ones(centres.size, dtype=np.int16)
        reach = sparse.csr_matrix((ones, (centres - start, centres)), shape=(centres.size, V))
        for _ in range(rings):
            reach = reach @ step
            reach.data[:] = 1  # reached (path counts could pass int16's range)
        reach.sort_indices()
        i = np.repeat(centres, np.diff(reach.indptr))
        j = reach.indices.astype(np.int64)
        d = np.linalg.norm(xyz[i] - xyz[j], axis=1)
        keep = (i != j) & (d <= 2.0 * sigma_mm)
        i, j, d = i[keep], j[keep], d[keep]
        # by centre (the rows' order), then nearest first, ties by number (stable): one key in [i, i + 1)
        order = np.argsort(i + d / (2.0 * sigma_mm * (1.0 + 1e-9)), kind="stable")
        i, j, d = i[order], j[order], d[order]
        rank = np.arange(i.size) - np.searchsorted(i, i)
        keep = rank < max_neighbours
        neighbours[rank[keep], i[keep]] = j[keep]
        weights[rank[keep], i[keep]] = np.exp(-(d[keep] ** 2) / (2.0 * sigma_mm**2))
    slots = int((neighbours >= 0).sum(axis=0).max()) if V else 0
    neighbours, weights = neighbours[:slots], weights[:slots]
    return MeshKernel(neighbours, weights)


def smooth_autocorrelations(
    rho: NDArray,
    kernel: VolumeKernel | MeshKernel,
    brightness: NDArray,
    bt: float,
    valid: NDArray | None = None,
    in_place: bool = False,
) -> NDArray[np.float64]:
    """Each lag's autocorrelation map (rho (V, M+1), finite) smoothed by the SUSAN-like filter: for voxel i the mean of
    its neighbours j (the `kernel` of :func:`volume_kernel` or :func:`mesh_kernel`) weighted by the kernel's
    Gaussian times SUSAN's brightness similarity ``exp(-((I_j - I_i) / bt)^2)`` (I the mean functional image
    `brightness` (V,), bt the brightness threshold), the centre left out as SUSAN does; with `valid` (V, bool), only
    pairs of valid voxels. A voxel with no neighbour weight keeps its own value (SUSAN's local median fallback is
    replaced by the voxel's value: a choice). Lag 0 stays 1. Memory: a copy of the maps (written into `rho` with
    `in_place`: its lags are read from a copy) and a chunk of voxels' sums."""
    V = rho.shape[0]
    lags = np.ascontiguousarray(rho[:, 1:])
    out = rho if in_place else rho.copy()
    for a in range(0, V, SMOOTH_CHUNK):  # a chunk of voxels at a time: its sums stay in cache over the offsets
        at = slice(a, min(V, a + SMOOTH_CHUNK))
        bright = brightness[at]
        total = np.zeros(bright.size)
        sums = np.zeros((bright.size, lags.shape[1]))
        for k in range(kernel.slots):
            j, gauss = kernel.take(k, at)
            there = j >= 0
            if valid is not None:
                there &= valid[at] & valid[np.where(there, j, 0)]
            j = np.where(there, j, 0)
            w = np.where(there, gauss * np.exp(-(((brightness[j] - bright) / bt) ** 2)), 0.0)
            total += w
            taken = lags[j]
            taken *= w[:, None]
            sums += taken
        with np.errstate(invalid="ignore", divide="ignore"):
            out[at, 1:] = np.where((total > 1e-12)[:, None], sums / total[:, None], lags[at])
    return out
