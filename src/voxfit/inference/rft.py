"""Random field theory as SPM12 computes it: smoothness of the residuals, resel counts, Euler-characteristic (EC)
densities, and the corrected p-values and thresholds of SPM's results table.

Every function reproduces one of SPM12's (github.com/spm/spm12, commit 03ac9473), checked against SPM's own code
run under GNU Octave (``tests/data/spm12_rft.*``):

======================================  =====================================================================
voxfit                                  SPM12
======================================  =====================================================================
:func:`gradient_products`               the sums of ``spm_est_smoothness.m`` (r6894) over residual images,
                                        with ``spm_sample_vol.c``'s derivatives (r4452, trilinear, at voxel
                                        centres)
:func:`estimate_smoothness`             the rest of ``spm_est_smoothness``: FWHM, RPV, resel counts
:func:`resel_counts`                    ``spm_resels_vol.c`` (r4453)
:func:`ec_densities`                    ``spm_ECdensity.m`` (r5544)
:func:`p_rf`                            ``spm_P_RF.m`` (r5770)
:func:`height_threshold`                ``spm_uc.m`` (r4419): ``spm_uc_RF`` (r4634), with ``spm_uc_Bonf``
:func:`p_peak_fwe`, :func:`p_cluster`,  ``spm_P.m`` (r4419) as ``spm_list.m`` (r7725) calls it for peaks,
:func:`p_set`, :func:`p_uncorrected`    clusters and the set; ``spm_z2p.m`` (r5824)
:func:`peak_fdr`, :func:`cluster_fdr`   ``spm_P_peakFDR`` (r5160) / ``spm_uc_peakFDR`` (r5224),
                                        ``spm_P_clusterFDR`` (r2764) / ``spm_uc_clusterFDR`` (r5809), through
                                        ``spm_P_FDR`` (r5824): SPM12's topological FDR
======================================  =====================================================================

Smoothness, precisely
---------------------
SPM estimates the roughness matrix Λ (the covariance of the spatial derivatives of the unit-variance residual
field) at every in-mask voxel v as the sum over residual maps of products of forward differences::

    d_x(v) = u(v + x) - u(v)    (0 when v is on the grid's last x plane; likewise y, z)
    Λ_ab(v) = Σ_i d_a,i(v) d_b,i(v)                                      a, b in {x, y, z}

where ``u_i = e_i / sqrt(RSS)`` are the *normalised* residuals (each voxel's residuals over all n scans divided
by the root of their sum of squares). SPM writes standardised residuals ``ResI = e / sqrt(RSS / dof)`` for up to
64 scans and scales their average derivative products by ``n / dof``; with all n scans this is exactly the sum
above, and with a subset of m maps it is ``n / m`` times the sum over the subset (``n_maps``).

The derivatives are those of ``spm_sample_vol`` (trilinear interpolation) at integer coordinates, where SPM's
residual images are NaN outside the mask and NaN times a zero weight stays NaN: a voxel's value and derivatives
are NaN unless all 8 voxels ``v + {0, 1}^3`` (clamped at the grid's far edges) are in the mask and finite. Such a
voxel keeps a NaN RPV and is left out of the global FWHM, as in SPM.

Without keeping residuals, the same sums follow from per-voxel sums a fit can accumulate (:class:`NeighbourSums`):
``rss = Σ e(v)²``, and the cross products of the residuals of v with those of its (clamped) +x, +y, +z neighbours
and of those neighbours among themselves. With ``g(a, b) = Σ e(a) e(b) / sqrt(rss_a rss_b)``::

    Λ_xx = 2 - 2 g(v, v+x)                       (and yy, zz)
    Λ_xy = g(v+x, v+y) - g(v, v+x) - g(v, v+y) + 1   (and xz, yz)

which is exact up to rounding (a relative error of about 1e-16 / (1 - ρ), ρ the correlation of neighbours).

FSL's convention
----------------
:func:`fsl_smoothness` gives FSL ``smoothest``'s DLH, VOLUME and RESELS. FSL's code is not available here; the
formula is that of Flitney & Jenkinson's technical report TR00DF1 (FMRIB, 2000, eq. 21 "the one in the FSL code
base"), with the details (the voxels counted, the centring and scaling of the residuals, the guard against
extreme smoothness and the degrees-of-freedom correction table of DLH) as the R port of smoothest in pTFCE
(github.com/spisakt/pTFCE, ``R/ptfce.r``) describes them: with standardised residuals r (each voxel centred and
divided by its standard deviation over the maps), summed over voxels whose -x, -y and -z neighbours are in the
mask, ``SS_a = Σ r(v) r(v - a)`` and ``S2_a = Σ (r(v)² + r(v - a)²) / 2``; ``σ_a² = -1 / (4 log(SS_a / S2_a))``;
``FWHM_a = sqrt(8 log 2 σ_a²)`` voxels; ``RESELS = Π FWHM_a`` (voxels per resel); ``DLH = |Λ|^½ =
(2^D Π σ_a²)^-½`` times FSL's dof correction; ``VOLUME`` the count of in-mask voxels with non-zero variance.

Surfaces: SPM's mesh smoothness (``spm_mesh_resels``) is not implemented; a mesh's mask (1-D) is refused.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special as sc

from voxfit._checks import check_scalar
from voxfit.core.distributions import t_to_z
from voxfit.exceptions import InputError

__all__ = [
    "ClusterFDR",
    "FslSmoothness",
    "NeighbourSums",
    "PeakFDR",
    "RFProbability",
    "Smoothness",
    "cluster_fdr",
    "cluster_resels",
    "ec_densities",
    "estimate_smoothness",
    "fsl_smoothness",
    "gradient_products",
    "gradient_products_from_sums",
    "height_threshold",
    "neighbour_index",
    "p_cluster",
    "p_cluster_fwe",
    "p_peak_fwe",
    "p_rf",
    "p_set",
    "p_uncorrected",
    "peak_fdr",
    "resel_counts",
    "upper_quantile",
]

_EPS = np.finfo(float).eps  # MATLAB's eps
_LOG4_2 = 4.0 * math.log(2.0)
_KINDS = ("Z", "T", "F", "X")
# columns of the (V, 6) products and of NeighbourSums.cross
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
_MAPS_PER_CHUNK = 16
_MANY = 4096  # heights from which a t tail is computed through voxfit.core's tabulated t -> z


# ----------------------------------------------------------------------------------------------------------------
# smoothness


@dataclass(frozen=True)
class Smoothness:
    """SPM12's smoothness estimate (``spm_est_smoothness``).

    Attributes
    ----------
    fwhm : ndarray, shape (3,)
        FWHM in voxels (1 along a grid axis of one voxel, as SPM).
    fwhm_mm : ndarray, shape (3,)
        FWHM in mm (``fwhm * voxel_size``).
    rpv : ndarray, shape (V,)
        Resels per voxel at each in-mask voxel (x-fastest order), NaN where the derivatives are undefined.
    resels : ndarray, shape (4,)
        Resel counts R0..R3 of the search volume (the mask), ``spm_resels_vol(mask, fwhm)``.
    voxels_per_resel : float
        ``prod(fwhm)``: SPM's ``1 / V2R``; a cluster of N voxels has ``N / voxels_per_resel`` resels.
    dims : int
        The dimension D of the field (grid axes longer than one voxel).
    n, dof : number
        Scans and residual degrees of freedom of the model.
    n_voxels : int
        In-mask voxels (the search volume S of SPM's Bonferroni bound).
    n_valid : int
        Voxels whose RPV entered the mean.
    """

    fwhm: NDArray[np.float64]
    fwhm_mm: NDArray[np.float64]
    rpv: NDArray[np.float64]
    resels: NDArray[np.float64]
    voxels_per_resel: float
    dims: int
    n: float
    dof: float
    n_voxels: int
    n_valid: int


@dataclass(frozen=True)
class FslSmoothness:
    """FSL ``smoothest``'s estimate (see the module's notes): ``dlh`` (|Λ|^½, voxels^-D, dof-corrected), ``volume``
    (voxels), ``resels`` (voxels per resel, ``Π fwhm``), ``fwhm`` and ``sigmasq`` per axis (voxels)."""

    dlh: float
    volume: int
    resels: float
    fwhm: NDArray[np.float64]
    sigmasq: NDArray[np.float64]


@dataclass(frozen=True)
class NeighbourSums:
    """Sums over residual maps that determine SPM's smoothness, accumulated without keeping the residuals.

    For the V in-mask voxels (x-fastest order) and ``nb = neighbour_index(mask)`` (the clamped +x, +y, +z
    neighbours): ``rss[v] = Σ e(v)²``, ``total[v] = Σ e(v)`` and ``cross[v] = Σ [e(v) e(nx), e(v) e(ny),
    e(v) e(nz), e(nx) e(ny), e(nx) e(nz), e(ny) e(nz)]`` with ``nx, ny, nz = nb[v]`` (0 where a neighbour is
    outside the mask), each sum over the ``n_maps`` residual maps. Sums over disjoint sets of maps (blocks of
    scans) add: ``a + b``.
    """

    rss: NDArray[np.float64]
    total: NDArray[np.float64]
    cross: NDArray[np.float64]
    n_maps: int

    def __add__(self, other: NeighbourSums) -> NeighbourSums:
        if not isinstance(other, NeighbourSums) or other.rss.shape != self.rss.shape:
            raise InputError("NeighbourSums can only be added to NeighbourSums of the same mask.")
        return NeighbourSums(
            self.rss + other.rss, self.total + other.total, self.cross + other.cross, self.n_maps + other.n_maps
        )

    @classmethod
    def zeros(cls, n_voxels: int) -> NeighbourSums:
        """Empty sums for `n_voxels` in-mask voxels (the start of an accumulation)."""
        return cls(np.zeros(n_voxels), np.zeros(n_voxels), np.zeros((n_voxels, 6)), 0)

    @classmethod
    def from_residuals(cls, residuals: ArrayLike, mask: ArrayLike) -> NeighbourSums:
        """The sums over the maps of `residuals` (m, V), at the in-mask voxels of `mask` (3-D)."""
        mask = _volume_mask(mask)
        e = _residual_rows(residuals, int(mask.sum()))
        nb = neighbour_index(mask)
        inside = nb >= 0
        safe = np.where(inside, nb, 0)
        rss = np.zeros(e.shape[1])
        total = np.zeros(e.shape[1])
        cross = np.zeros((e.shape[1], 6))
        for start in range(0, e.shape[0], _MAPS_PER_CHUNK):
            block = np.asarray(e[start : start + _MAPS_PER_CHUNK], dtype=np.float64)
            rss += np.einsum("iv,iv->v", block, block)
            total += block.sum(axis=0)
            near = [block[:, safe[:, a]] for a in range(3)]
            terms = (block, *near)
            for col, (a, b) in enumerate(((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))):
                cross[:, col] += np.einsum("iv,iv->v", terms[a], terms[b])
        pair_inside = np.stack(
            [inside[:, 0], inside[:, 1], inside[:, 2]]
            + [inside[:, 0] & inside[:, 1], inside[:, 0] & inside[:, 2], inside[:, 1] & inside[:, 2]],
            axis=1,
        )
        cross[~pair_inside] = 0.0
        return cls(rss, total, cross, e.shape[0])


def neighbour_index(mask: ArrayLike) -> NDArray[np.int64]:
    """For each in-mask voxel of a 3-D `mask` (x-fastest order), the in-mask numbers of its +x, +y and +z
    neighbours, shape (V, 3): the voxel itself on the grid's last plane along that axis (SPM's derivative is 0
    there), -1 where the neighbour is outside the mask."""
    mask = _volume_mask(mask)
    number, x, y, z = _numbering(mask)
    X, Y, Z = mask.shape
    return np.stack(
        [
            _lookup(number, mask.shape, x + (x < X - 1), y, z),
            _lookup(number, mask.shape, x, y + (y < Y - 1), z),
            _lookup(number, mask.shape, x, y, z + (z < Z - 1)),
        ],
        axis=1,
    )


def gradient_products(residuals: ArrayLike, mask: ArrayLike, *, normalised: bool = False) -> NDArray[np.float64]:
    """Sums over residual maps of the products of spatial derivatives, as ``spm_est_smoothness`` forms them.

    Parameters
    ----------
    residuals : array, shape (m, V)
        Residual maps at the in-mask voxels of `mask` (x-fastest order).
    mask : array of bool, shape (X, Y, Z)
        The search volume.
    normalised : bool
        False: `residuals` are a model's residuals over all its scans; each voxel's are divided by the root of
        their sum of squares first. True: they are already normalised (``e / sqrt(RSS)`` with the RSS over all
        scans; SPM's ``ResI`` images divided by ``sqrt(dof)``), possibly a subset of the scans, and are used as
        they are.

    Returns
    -------
    ndarray, shape (V, 6)
        Columns xx, yy, zz, xy, xz, yz of ``Σ_i d_a,i d_b,i`` (see the module's notes); NaN rows where SPM's
        derivatives are undefined (a voxel of ``v + {0, 1}^3`` outside the mask or not finite).
    """
    mask = _volume_mask(mask)
    if not isinstance(normalised, (bool, np.bool_)):
        raise InputError(f"`normalised` must be True or False; got {normalised!r}.")
    e = _residual_rows(residuals, int(mask.sum()))
    if normalised:
        scale = np.ones(e.shape[1])
        finite = np.all(np.isfinite(e), axis=0)
    else:
        rss = np.zeros(e.shape[1])
        for start in range(0, e.shape[0], _MAPS_PER_CHUNK):
            block = np.asarray(e[start : start + _MAPS_PER_CHUNK], dtype=np.float64)
            rss += np.einsum("iv,iv->v", block, block)
        finite = np.isfinite(rss) & (rss > 0)
        scale = np.where(finite, 1.0 / np.sqrt(np.where(finite, rss, 1.0)), np.nan)
    nb = neighbour_index(mask)
    valid = _valid_voxels(mask, finite)
    safe = np.where(nb >= 0, nb, 0)
    products = np.zeros((e.shape[1], 6))
    for start in range(0, e.shape[0], _MAPS_PER_CHUNK):
        u = np.asarray(e[start : start + _MAPS_PER_CHUNK], dtype=np.float64) * scale
        d = [u[:, safe[:, a]] - u for a in range(3)]
        for col, (a, b) in enumerate(_PAIRS):
            products[:, col] += np.einsum("iv,iv->v", d[a], d[b])
    products[~valid] = np.nan
    return products


def gradient_products_from_sums(sums: NeighbourSums, mask: ArrayLike) -> NDArray[np.float64]:
    """:func:`gradient_products` of the residuals whose :class:`NeighbourSums` are `sums` (exact up to rounding)."""
    mask = _volume_mask(mask)
    if not isinstance(sums, NeighbourSums):
        raise InputError(f"`sums` must be NeighbourSums; got {type(sums).__name__}.")
    n_voxels = int(mask.sum())
    if sums.rss.shape != (n_voxels,) or sums.cross.shape != (n_voxels, 6):
        raise InputError(
            f"`sums` holds {sums.rss.shape[0]} voxels but `mask` has {n_voxels}; pass the sums of this mask."
        )
    rss = np.asarray(sums.rss, dtype=np.float64)
    finite = np.isfinite(rss) & (rss > 0)
    root = np.sqrt(np.where(finite, rss, 1.0))
    nb = neighbour_index(mask)
    valid = _valid_voxels(mask, finite)
    safe = np.where(nb >= 0, nb, 0)
    rx, ry, rz = (root[safe[:, a]] for a in range(3))
    moved = [safe[:, a] != np.arange(n_voxels) for a in range(3)]  # False on the grid's last plane: d = 0
    g_v = [sums.cross[:, a] / (root * r) for a, r in enumerate((rx, ry, rz))]
    g_pair = [sums.cross[:, 3] / (rx * ry), sums.cross[:, 4] / (rx * rz), sums.cross[:, 5] / (ry * rz)]
    products = np.empty((n_voxels, 6))
    for a in range(3):
        products[:, a] = np.where(moved[a], 2.0 - 2.0 * g_v[a], 0.0)
    for col, (a, b) in zip((3, 4, 5), ((0, 1), (0, 2), (1, 2)), strict=True):
        value = g_pair[col - 3] - g_v[a] - g_v[b] + 1.0
        products[:, col] = np.where(moved[a] & moved[b], value, 0.0)
    products[~valid] = np.nan
    return products


def estimate_smoothness(
    products: ArrayLike, mask: ArrayLike, voxel_size: ArrayLike, *, n: float, dof: float, n_maps: float | None = None
) -> Smoothness:
    """SPM12's smoothness (``spm_est_smoothness``) from :func:`gradient_products`.

    Parameters
    ----------
    products : array, shape (V, 6)
        Sums of derivative products of normalised residuals (NaN rows: undefined voxels).
    mask : array of bool, shape (X, Y, Z)
    voxel_size : sequence of 3 numbers
        Voxel sizes in mm.
    n, dof : number
        Scans and residual degrees of freedom of the model.
    n_maps : number, optional
        The number of residual maps the products were summed over, when fewer than `n` (SPM: ``n / n_maps``
        scales the sums); `n` by default.
    """
    mask, products, voxel_size, n, dof, n_maps = _smoothness_iv(products, mask, voxel_size, n, dof, n_maps)
    D = sum(d > 1 for d in mask.shape)
    L = products * (n / n_maps)
    if D == 0:
        resels = resel_counts(mask, np.ones(3))
        return Smoothness(
            np.ones(3), voxel_size.copy(), np.full(L.shape[0], np.nan), resels, 1.0, 0, n, dof, L.shape[0], 0
        )
    xx, yy, zz, xy, xz, yz = L.T
    if D == 3:  # SPM's expansion, term by term
        det = xx * yy * zz + xy * yz * xz * 2 - xx * yz * yz - xy * xy * zz - xz * yy * xz
    elif D == 2:
        det = xx * yy - xy * xy
    else:
        det = xx.copy()
    det = np.where(det < 0, 0.0, det)
    rpv = np.sqrt(det / _LOG4_2**D)
    resel_xyz = np.sqrt(L[:, :D] / _LOG4_2)
    ok = np.isfinite(rpv)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rpv = rpv[ok].mean() if ok.any() else np.nan
        mean_xyz = resel_xyz[ok].mean(axis=0) if ok.any() else np.full(D, np.nan)
        resel = mean_rpv ** (1 / D) * (mean_xyz / np.prod(mean_xyz) ** (1 / D))
        fwhm = np.ones(3)
        fwhm[:D] = 1.0 / resel
    fwhm[~np.isfinite(fwhm) | (fwhm == 0)] = 1.0
    return Smoothness(
        fwhm=fwhm,
        fwhm_mm=fwhm * voxel_size,
        rpv=rpv,
        resels=resel_counts(mask, fwhm),
        voxels_per_resel=float(np.prod(fwhm)),
        dims=D,
        n=n,
        dof=dof,
        n_voxels=int(mask.sum()),
        n_valid=int(ok.sum()),
    )


def resel_counts(mask: ArrayLike, fwhm: ArrayLike) -> NDArray[np.float64]:
    """Resel counts R0..R3 of the voxels of a 3-D `mask` for a smoothness `fwhm` (voxels): ``spm_resels_vol``.

    The mask is a union of cubes: R0 is its Euler characteristic and R1..R3 its intrinsic volumes in resels,
    from the counts of points, edges, faces and cubes (Worsley et al. 1996, Hum Brain Mapp 4:58-73).
    """
    mask = _volume_mask(mask)
    fwhm = np.asarray(fwhm, dtype=np.float64)
    if fwhm.shape != (3,) or not np.all(np.isfinite(fwhm)) or np.any(fwhm <= 0):
        raise InputError(f"`fwhm` must be 3 positive numbers (voxels); got {fwhm!r}.")
    r = 1.0 / fwhm
    c = np.pad(mask, ((1, 0), (1, 0), (1, 0)))  # a plane of zeros before each axis, as spm_resels_vol
    cur = c[1:, 1:, 1:]
    mx, my, mz = c[:-1, 1:, 1:], c[1:, :-1, 1:], c[1:, 1:, :-1]
    mxy, mxz, myz = c[:-1, :-1, 1:], c[:-1, 1:, :-1], c[1:, :-1, :-1]
    mxyz = c[:-1, :-1, :-1]
    P = int(cur.sum())
    E = [int((cur & m).sum()) for m in (mx, my, mz)]
    F = [int((cur & a & b & ab).sum()) for a, b, ab in ((mx, my, mxy), (mx, mz, mxz), (my, mz, myz))]
    C = int((cur & mx & my & mz & mxy & mxz & myz & mxyz).sum())
    return np.array(
        [
            P - sum(E) + sum(F) - C,
            (E[0] - F[0] - F[1] + C) * r[0] + (E[1] - F[0] - F[2] + C) * r[1] + (E[2] - F[1] - F[2] + C) * r[2],
            (F[0] - C) * r[0] * r[1] + (F[1] - C) * r[0] * r[2] + (F[2] - C) * r[1] * r[2],
            C * r[0] * r[1] * r[2],
        ],
        dtype=np.float64,
    )


# FSL smoothest's correction of DLH for the residuals' degrees of freedom: dof -> factor (before the square root)
_FSL_DOF_TABLE = {
    5: 1.5423138,
    6: 1.3757105,
    7: 1.2842680,
    8: 1.2272151,
    9: 1.1885232,
    10: 1.1606988,
    11: 1.1398000,
    12: 1.1235677,
    13: 1.1106196,
    14: 1.1000651,
    15: 1.0913060,
    16: 1.0839261,
    17: 1.0776276,
    18: 1.0721920,
    19: 1.0674553,
    20: 1.0632924,
    25: 1.0483053,
    30: 1.0390117,
    40: 1.0281339,
    50: 1.0219834,
    60: 1.0180339,
    70: 1.0152850,
    80: 1.0132621,
    90: 1.0117115,
    100: 1.0104851,
    150: 1.0068808,
    200: 1.0051200,
    300: 1.0033865,
    500: 1.0020191,
}


def _fsl_dof_factor(dof: float) -> float:
    """FSL smoothest's DLH factor for `dof` (linear interpolation in its table, ``sqrt``)."""
    if dof < 6:
        return 1.1
    if dof > 500:
        return math.sqrt(1.0321 / dof + 1.0)
    keys = sorted(_FSL_DOF_TABLE)
    below = max(k for k in keys if k <= dof)
    above = min(k for k in keys if k >= dof)
    if below == above:
        return math.sqrt(_FSL_DOF_TABLE[below])
    lo, hi = _FSL_DOF_TABLE[below], _FSL_DOF_TABLE[above]
    return math.sqrt((lo - hi) / (below - above) * (dof - above) + lo)


def fsl_smoothness(sums: NeighbourSums, mask: ArrayLike, *, dof: float) -> FslSmoothness:
    """FSL ``smoothest``'s DLH, VOLUME and RESELS from the :class:`NeighbourSums` of a model's residuals
    (formula and sources in the module's notes)."""
    mask = _volume_mask(mask)
    if not isinstance(sums, NeighbourSums) or sums.rss.shape != (int(mask.sum()),):
        raise InputError("`sums` must be the NeighbourSums of the residuals at the voxels of `mask`.")
    check_scalar(dof, "`dof`", numbers.Real, min_val=0, include_boundaries="neither")
    m = sums.n_maps
    if m < 2:
        raise InputError(f"FSL's smoothness needs at least 2 residual maps; got {m}.")
    var = (sums.rss - sums.total**2 / m) / (m - 1)
    live = var > 0
    sd = np.sqrt(np.where(live, var, 1.0))
    mean = sums.total / m
    number, x, y, z = _numbering(mask)
    # a voxel counts when it and its -x, -y, -z neighbours are live (in the mask, non-zero variance)
    back = [
        _lookup(number, mask.shape, x - 1, y, z) if mask.shape[0] > 1 else np.full(x.size, -1),
        _lookup(number, mask.shape, x, y - 1, z) if mask.shape[1] > 1 else np.full(x.size, -1),
        _lookup(number, mask.shape, x, y, z - 1),
    ]
    usez = mask.shape[2] > 1
    axes = 3 if usez else 2
    keep = live.copy()
    for a in range(axes):
        keep &= (back[a] >= 0) & (np.where(back[a] >= 0, live[np.maximum(back[a], 0)], False))
    sigmasq = np.zeros(3)
    for a in range(axes):
        w = np.maximum(back[a][keep], 0)  # w = v - a, whose +a cross product is e(w) e(v)
        v = np.flatnonzero(keep)
        products = (sums.cross[w, a] - m * mean[w] * mean[v]) / (sd[w] * sd[v])
        ss = products.sum()
        s2 = float(v.size * (m - 1))  # each standardised voxel has Σ r² = m - 1
        if ss >= 0.99999999 * s2:
            warnings.warn(f"extreme smoothness along axis {a}: FSL's estimate is biased", stacklevel=2)
            ss = 0.99999 * s2
        sigmasq[a] = -1.0 / (4.0 * math.log(abs(ss / s2)))
    fwhm = np.sqrt(8.0 * math.log(2.0) * sigmasq)
    dlh = float(np.prod(sigmasq[:axes]) ** -0.5 * (2.0**axes) ** -0.5 * _fsl_dof_factor(float(dof)))
    return FslSmoothness(
        dlh=dlh, volume=int(live.sum()), resels=float(np.prod(fwhm[:axes])), fwhm=fwhm, sigmasq=sigmasq
    )


# ----------------------------------------------------------------------------------------------------------------
# EC densities and SPM's p-values


@dataclass(frozen=True)
class RFProbability:
    """``spm_P_RF``'s outputs: ``P`` the corrected probability of c or more clusters of k or more resels above u
    (FWE for c = 1), ``p`` the uncorrected probability of a cluster of k or more resels, ``Ec`` the expected
    number of maxima (clusters) above u, ``Ek`` the expected resels per cluster."""

    P: NDArray[np.float64] | float
    p: NDArray[np.float64] | float
    Ec: NDArray[np.float64] | float
    Ek: NDArray[np.float64] | float


@dataclass(frozen=True)
class PeakFDR:
    """SPM12's topological peak FDR: ``q`` per peak (``spm_P_peakFDR``), ``p`` the peaks' uncorrected p-values
    (E{EC}(z) / E{EC}(u)), ``threshold`` the FDR-critical height at level `q` (``spm_uc_peakFDR``; inf if none)."""

    q: NDArray[np.float64]
    p: NDArray[np.float64]
    threshold: float


@dataclass(frozen=True)
class ClusterFDR:
    """SPM12's topological cluster FDR: ``q`` per cluster (``spm_P_clusterFDR``), ``p`` the clusters'
    uncorrected p-values, ``threshold`` the FDR-critical extent and ``fwe_threshold`` the FWE-critical extent,
    both in resels (``spm_uc_clusterFDR``'s u and ue times V2R; inf if none)."""

    q: NDArray[np.float64]
    p: NDArray[np.float64]
    threshold: float
    fwe_threshold: float


def ec_densities(kind: str, u: ArrayLike, dof=None) -> NDArray[np.float64]:
    """The EC densities ρ0..ρ3 of a `kind` field (``'Z'``, ``'T'``, ``'F'``, ``'X'``) at heights `u`, per resel
    (``spm_ECdensity``). `dof` is SPM's ``[df1, df2]`` (T and X use df2; a number is ``[1, number]``).

    Returns an array of shape ``(4,) + shape(u)``. ρ0 is the upper tail probability, computed with scipy's
    survival functions (SPM's ``1 - cdf`` loses digits beyond ~1e-8).
    """
    kind, dof = _kind_iv(kind, dof)
    t = np.asarray(u, dtype=np.float64)
    return _ec(kind, t, dof)


def _ec(kind: str, t: NDArray, dof: tuple[float, float]) -> NDArray[np.float64]:
    a = _LOG4_2
    ec = np.empty((4,) + t.shape)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if kind == "Z":
            b = np.exp(-(t**2) / 2)
            ec[0] = sc.ndtr(-t)
            ec[1] = a**0.5 / (2 * np.pi) * b
            ec[2] = a / (2 * np.pi) ** 1.5 * b * t
            ec[3] = a**1.5 / (2 * np.pi) ** 2 * b * (t**2 - 1)
        elif kind == "T":
            v = dof[1]
            b = np.exp(sc.gammaln((v + 1) / 2) - sc.gammaln(v / 2))
            c = (1 + t**2 / v) ** ((1 - v) / 2)
            # many heights (a whole map): the tabulated t -> z of voxfit.core (relative error < 1e-12), twice as fast
            ec[0] = sc.ndtr(-t_to_z(t, v)) if t.size >= _MANY and math.isfinite(v) else sc.stdtr(v, -t)
            ec[1] = a**0.5 / (2 * np.pi) * c
            ec[2] = a / (2 * np.pi) ** 1.5 * c * t / (v / 2) ** 0.5 * b
            ec[3] = a**1.5 / (2 * np.pi) ** 2 * c * ((v - 1) * t**2 / v - 1)
        elif kind == "X":
            v = dof[1]
            a = a / (2 * np.pi)
            b = t ** (0.5 * (v - 1)) * np.exp(-t / 2 - sc.gammaln(v / 2)) / 2 ** ((v - 2) / 2)
            ec[0] = sc.chdtrc(v, t)
            ec[1] = a**0.5 * b
            ec[2] = a * b * (t - (v - 1))
            ec[3] = a**1.5 * b * (t**2 - (2 * v - 1) * t + (v - 1) * (v - 2))
        else:  # F
            k, v = dof
            a = a / (2 * np.pi)
            b = sc.gammaln(v / 2) + sc.gammaln(k / 2)
            kt = k * t / v
            ec[0] = sc.fdtrc(k, v, t)
            ec[1] = (
                a**0.5
                * np.exp(sc.gammaln((v + k - 1) / 2) - b)
                * 2**0.5
                * kt ** (0.5 * (k - 1))
                * (1 + kt) ** (-0.5 * (v + k - 2))
            )
            ec[2] = (
                a
                * np.exp(sc.gammaln((v + k - 2) / 2) - b)
                * kt ** (0.5 * (k - 2))
                * (1 + kt) ** (-0.5 * (v + k - 2))
                * ((v - 1) * kt - (k - 1))
            )
            ec[3] = (
                a**1.5
                * np.exp(sc.gammaln((v + k - 3) / 2) - b)
                * 2**-0.5
                * kt ** (0.5 * (k - 3))
                * (1 + kt) ** (-0.5 * (v + k - 2))
                * ((v - 1) * (v - 2) * kt**2 - (2 * v * k - v - k - 1) * kt + (k - 1) * (k - 2))
            )
    return ec


def p_rf(c, k, u, dof, kind: str, resels: ArrayLike, n: int = 1) -> RFProbability:
    """``spm_P_RF(c, k, u, df, STAT, R, n)``: the probability of `c` or more clusters with `k` or more resels
    above the height `u` in a search volume of resel counts `resels` (R0..R3), for a conjunction of `n` fields.

    `k` and `u` may be arrays (broadcast together); `c` is a count (1 for FWE p-values).
    """
    c, k, u, dof, kind, resels, n = _rf_iv(c, k, u, dof, kind, resels, n)
    return _p_rf(c, k, u, dof, kind, resels, n)


def _p_rf(c, k, u, dof, kind, R, n, ec=None) -> RFProbability:
    """spm_P_RF; `ec` the EC densities at `u` when the caller has them."""
    k, u = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(u, dtype=np.float64))
    D = int(np.flatnonzero(R)[-1]) + 1
    R = R[:D]
    G = np.sqrt(np.pi) / sc.gamma(np.arange(1, D + 1) / 2)
    ec = np.maximum((_ec(kind, u, dof) if ec is None else ec)[:D], _EPS)
    terms = np.moveaxis(ec, 0, -1) * G  # (..., D)
    P = terms.copy()
    for _ in range(n - 1):  # first row of triu(toeplitz(terms))^n: the power of the polynomial, mod x^D
        P = np.stack([np.sum(P[..., : j + 1] * terms[..., j::-1], axis=-1) for j in range(D)], axis=-1)
    EM = (R / G) * P
    Ec = EM.sum(axis=-1)
    EN = P[..., 0] * R[D - 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Ek = EN / EM[..., D - 1]
        Dm = D - 1
        if Dm == 0:
            p = np.ones_like(k)
        else:
            beta = (sc.gamma(Dm / 2 + 1) / Ek) ** (2 / Dm)
            p = np.where(k == 0, 1.0, np.exp(-beta * k ** (2 / Dm)))
    lam = (Ec + _EPS) * p
    P_c = sc.gammainc(c, lam) if c >= 1 else np.ones_like(lam)
    scalar = np.ndim(P_c) == 0
    out = [float(a) if scalar else a for a in (P_c, p, Ec, Ek)]
    return RFProbability(*out)


def p_uncorrected(u: ArrayLike, dof, kind: str, n: int = 1) -> NDArray[np.float64]:
    """The uncorrected upper-tail probability of heights `u` (``spm_z2p``; ``p ** n`` for a conjunction)."""
    kind, dof = _kind_iv(kind, dof)
    check_scalar(n, "`n`", numbers.Integral, min_val=1)
    return _ec(kind, np.asarray(u, dtype=np.float64), dof)[0] ** n


def p_peak_fwe(u: ArrayLike, dof, kind: str, resels: ArrayLike, n: int = 1, *, n_voxels: int | None = None):
    """Voxel-level FWE p of peaks of height `u` (``spm_P(1, 0, u, ...)``): the random-field p, and at most the
    Bonferroni p over `n_voxels` voxels when that is given (SPM passes the search volume S)."""
    _, _, u, dof, kind, resels, n = _rf_iv(1, 0, u, dof, kind, resels, n)
    if n_voxels is not None:
        check_scalar(n_voxels, "`n_voxels`", numbers.Integral, min_val=1)
    ec = _ec(kind, u, dof)
    P = np.asarray(_p_rf(1, 0, u, dof, kind, resels, n, ec=ec).P)
    if n_voxels is not None and not np.array_equal(resels, [1.0]):
        P = np.minimum(P, np.minimum(n_voxels * ec[0] ** n, 1.0))
    return float(P) if P.ndim == 0 else P


def p_cluster(k: ArrayLike, u: float, dof, kind: str, resels: ArrayLike, n: int = 1) -> RFProbability:
    """Cluster-level p of clusters of `k` resels above the cluster-forming height `u` (``spm_P(1, k, u, ...)``):
    ``.P`` the FWE-corrected p, ``.p`` the uncorrected p. Cluster sizes in resels are ``N / voxels_per_resel``
    (:func:`cluster_resels`), SPM's default (stationary) conversion."""
    c, k, u, dof, kind, resels, n = _rf_iv(1, k, u, dof, kind, resels, n)
    return _p_rf(1, k, u, dof, kind, resels, n)


p_cluster_fwe = p_cluster  # the name the issue uses; .P is the FWE p


def p_set(c: int, k: float, u: float, dof, kind: str, resels: ArrayLike, n: int = 1) -> float:
    """Set-level p: the probability of `c` or more clusters of `k` or more resels above `u` (``spm_P(c, k, u)``)."""
    c, k, u, dof, kind, resels, n = _rf_iv(c, k, u, dof, kind, resels, n)
    return float(_p_rf(c, k, u, dof, kind, resels, n).P)


def cluster_resels(n_voxels: ArrayLike, smoothness: Smoothness) -> NDArray[np.float64]:
    """Cluster sizes in resels, ``N * V2R`` with ``V2R = 1 / prod(FWHM)`` (SPM's stationary conversion)."""
    if not isinstance(smoothness, Smoothness):
        raise InputError(f"`smoothness` must be a Smoothness; got {type(smoothness).__name__}.")
    return np.asarray(n_voxels, dtype=np.float64) / smoothness.voxels_per_resel


def height_threshold(
    alpha: float, dof, kind: str, resels: ArrayLike, n: int = 1, *, n_voxels: int | None = None
) -> float:
    """The FWE-corrected height threshold at level `alpha` (``spm_uc``): ``spm_uc_RF``'s Newton iterations on
    the expected EC, then on the corrected p, and at most the Bonferroni threshold over `n_voxels` when given."""
    check_scalar(alpha, "`alpha`", numbers.Real, min_val=0, max_val=1, include_boundaries="neither")
    _, _, _, dof, kind, resels, n = _rf_iv(1, 0, 0.0, dof, kind, resels, n)
    u = float(upper_quantile(kind, (alpha / resels.max()) ** (1 / n), dof))
    du = 1e-6
    for which in ("Ec", "P"):
        d = 1.0
        for _ in range(1000):
            if abs(d) <= 1e-6 or math.isinf(u):
                break
            p = getattr(_p_rf(1, 0, u, dof, kind, resels, n), which)
            q = getattr(_p_rf(1, 0, u + du, dof, kind, resels, n), which)
            # a flat p (q == p, e.g. few dof): MATLAB's division gives +-Inf and spm_uc_RF returns Inf
            d = (alpha - p) / ((q - p) / du) if q != p else math.copysign(math.inf, alpha - p) if alpha != p else 0.0
            u = u + d
    if math.isinf(u):  # spm_uc_RF's Inf, then spm_uc's Bonferroni bound below
        u = math.inf
    if n_voxels is not None and not np.array_equal(resels, [1.0]):
        check_scalar(n_voxels, "`n_voxels`", numbers.Integral, min_val=1)
        u = min(u, float(upper_quantile(kind, (alpha / n_voxels) ** (1 / n), dof)))
    return u


def upper_quantile(kind: str, a: float, dof) -> float:
    """``spm_u``: the height of a `kind` field (``Z``, ``T``, ``X``, ``F``) with upper tail probability `a` (the
    special functions scipy.stats' ``isf`` calls, without importing scipy.stats: about a second)."""
    if kind == "Z":
        return -sc.ndtri(a)
    if kind == "T":
        return -sc.stdtrit(dof[1], a)
    if kind == "X":
        return sc.chdtri(dof[1], a)
    return sc.fdtri(dof[0], dof[1], 1.0 - a)


def peak_fdr(peaks: ArrayLike, u: float, dof, kind: str, resels: ArrayLike, n: int = 1, *, q: float = 0.05) -> PeakFDR:
    """SPM12's topological peak FDR over the local maxima `peaks` (heights >= the cluster-forming `u`; all the
    maxima of the search volume, as ``spm_uc_peakFDR`` finds them with ``spm_max``)."""
    _, _, z, dof, kind, resels, n = _rf_iv(1, 0, peaks, dof, kind, resels, n)
    check_scalar(q, "`q`", numbers.Real, min_val=0, max_val=1, include_boundaries="right")
    z = np.atleast_1d(z)
    Eu = _p_rf(1, 0, float(u), dof, kind, resels, n).Ec
    p = np.atleast_1d(_p_rf(1, 0, z, dof, kind, resels, n).Ec) / Eu
    qv, order, last = _topological_fdr(p, q)
    return PeakFDR(q=qv, p=p, threshold=float(z[order[last]]) if last >= 0 else math.inf)


def cluster_fdr(
    k: ArrayLike, u: float, dof, kind: str, resels: ArrayLike, n: int = 1, *, q: float = 0.05
) -> ClusterFDR:
    """SPM12's topological cluster FDR over all the clusters above `u`, of `k` resels each."""
    _, k, u, dof, kind, resels, n = _rf_iv(1, k, u, dof, kind, resels, n)
    check_scalar(q, "`q`", numbers.Real, min_val=0, max_val=1, include_boundaries="right")
    k = np.atleast_1d(k)
    rf = _p_rf(1, k, float(u), dof, kind, resels, n)
    p = np.atleast_1d(rf.p)
    Pk = np.atleast_1d(rf.P)
    qv, order, last = _topological_fdr(p, q)
    fwe = k[Pk <= q]
    return ClusterFDR(
        q=qv,
        p=p,
        threshold=float(k[order[last]]) if last >= 0 else math.inf,
        fwe_threshold=float(fwe.min()) if fwe.size else math.inf,
    )


def _topological_fdr(p: NDArray, q: float):
    """``spm_P_FDR(p, [], 'P', n, sort(p))`` for each p (the q-values) and ``spm_uc_*FDR``'s critical index."""
    order = np.argsort(p, kind="stable")
    Ps = p[order]
    S = Ps.size
    if S == 0:
        return np.empty(0), order, -1
    Qs = Ps * S / np.arange(1, S + 1)
    tail_min = np.minimum.accumulate(Qs[::-1])[::-1]
    first = np.searchsorted(Ps, p, side="left")  # first Ps >= p
    qv = np.where(first < S, tail_min[np.minimum(first, S - 1)], 1.0)
    passing = np.flatnonzero(Ps <= np.arange(1, S + 1) / S * q)
    return qv, order, int(passing[-1]) if passing.size else -1


# ----------------------------------------------------------------------------------------------------------------
# validation


def _volume_mask(mask) -> NDArray[np.bool_]:
    mask = np.asarray(mask)
    if mask.ndim == 1:
        raise InputError(
            "random field theory on surface meshes is not supported (SPM's spm_mesh_resels is not implemented); "
            "use permutation inference (--inference permutation) for surface data."
        )
    if mask.ndim != 3 or mask.dtype.kind not in "biuf":
        raise InputError(f"`mask` must be a 3-D boolean array (X, Y, Z); got shape {mask.shape}, dtype {mask.dtype}.")
    return mask != 0


def _numbering(mask: NDArray[np.bool_]):
    """In-mask numbers on the grid (-1 outside, x-fastest order) and the in-mask voxels' coordinates."""
    X, Y, Z = mask.shape
    flat = mask.ravel(order="F")
    elements = np.flatnonzero(flat)
    number = np.full(flat.size, -1, dtype=np.int64)
    number[elements] = np.arange(elements.size)
    return number, elements % X, (elements // X) % Y, elements // (X * Y)


def _lookup(number, shape, x, y, z) -> NDArray[np.int64]:
    """In-mask numbers at coordinates (-1 outside the mask or the grid)."""
    X, Y, Z = shape
    inside = (x >= 0) & (x < X) & (y >= 0) & (y < Y) & (z >= 0) & (z < Z)
    flat = np.where(inside, x + X * (y + Y * z), 0)
    return np.where(inside, number[flat], -1)


def _valid_voxels(mask: NDArray[np.bool_], finite: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Voxels whose 8 corners ``v + {0, 1}^3`` (clamped at the grid's far edges) are in the mask and finite."""
    number, x, y, z = _numbering(mask)
    X, Y, Z = mask.shape
    steps = [(x < X - 1).astype(np.int64), (y < Y - 1).astype(np.int64), (z < Z - 1).astype(np.int64)]
    valid = finite.copy()
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                corner = _lookup(number, mask.shape, x + a * steps[0], y + b * steps[1], z + c * steps[2])
                valid &= corner >= 0
                valid &= np.where(corner >= 0, finite[np.maximum(corner, 0)], False)
    return valid


def _residual_rows(residuals, n_voxels: int):
    e = np.asarray(residuals)
    if e.ndim != 2 or e.shape[1] != n_voxels or e.shape[0] < 1:
        raise InputError(
            f"`residuals` must have shape (n_maps, {n_voxels}) (maps at the mask's voxels); got {e.shape}."
        )
    if e.dtype.kind not in "iuf":
        raise InputError(f"`residuals` must be numbers; got dtype {e.dtype}.")
    return e


def _smoothness_iv(products, mask, voxel_size, n, dof, n_maps):
    mask = _volume_mask(mask)
    V = int(mask.sum())
    products = np.asarray(products, dtype=np.float64)
    if products.shape != (V, 6):
        raise InputError(
            f"`products` must have shape ({V}, 6) (gradient_products at the mask's voxels); got {products.shape}."
        )
    voxel_size = np.asarray(voxel_size, dtype=np.float64)
    if voxel_size.shape != (3,) or not np.all(np.isfinite(voxel_size)) or np.any(voxel_size <= 0):
        raise InputError(f"`voxel_size` must be 3 positive numbers (mm); got {voxel_size.tolist()!r}.")
    check_scalar(n, "`n`", numbers.Real, min_val=0, include_boundaries="neither")
    check_scalar(dof, "`dof`", numbers.Real, min_val=0, include_boundaries="neither")
    if dof > n:
        raise InputError(f"`dof` must be at most `n` ({n}); got {dof}.")
    if n_maps is None:
        n_maps = n
    check_scalar(n_maps, "`n_maps`", numbers.Real, min_val=0, max_val=n, include_boundaries="right")
    shape = mask.shape
    D = sum(d > 1 for d in shape)
    if any(shape[a] == 1 for a in range(D)):
        raise InputError(
            f"a {D}-D search volume must lie along the first {D} axes, as SPM requires; got a mask of shape {shape}."
        )
    return mask, products, voxel_size, float(n), float(dof), float(n_maps)


def _kind_iv(kind, dof) -> tuple[str, tuple[float, float]]:
    if kind not in _KINDS:
        raise InputError(f"`kind` must be one of 'Z', 'T', 'F', 'X' (the statistic); got {kind!r}.")
    if kind == "Z":
        return kind, (1.0, math.inf)
    if isinstance(dof, numbers.Real) and not isinstance(dof, bool):
        dof = (1.0, dof)
    try:
        df = tuple(float(d) for d in dof)
    except (TypeError, ValueError):
        df = ()
    if len(df) != 2 or not all(math.isfinite(d) and d > 0 for d in df):
        raise InputError(
            f"`dof` must be [df_effect, df_residual], two positive numbers, for a {kind} field; got {dof!r}."
        )
    return kind, df


def _rf_iv(c, k, u, dof, kind, resels, n):
    kind, dof = _kind_iv(kind, dof)
    check_scalar(c, "`c` (the number of clusters)", numbers.Integral, min_val=0)
    check_scalar(n, "`n` (fields in the conjunction)", numbers.Integral, min_val=1)
    R = np.asarray(resels, dtype=np.float64).ravel()
    if R.size < 1 or R.size > 4 or not np.all(np.isfinite(R)) or not np.any(R != 0):
        raise InputError(f"`resels` must be 1 to 4 finite resel counts R0..R3, not all 0; got {np.asarray(resels)!r}.")
    k = np.asarray(k, dtype=np.float64)
    if not np.all(k >= 0):
        raise InputError("`k` (cluster extents in resels) must be >= 0.")
    u = np.asarray(u, dtype=np.float64)
    if np.any(np.isnan(u)):
        raise InputError("`u` (heights) must not be NaN.")
    return int(c), k, u, dof, kind, R, int(n)
