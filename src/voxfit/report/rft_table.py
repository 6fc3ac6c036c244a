"""SPM's results table (``spm_list``) for a contrast under random field theory.

Rows as SPM12's ``spm_list('List')`` (r7725) makes them: the maxima of the suprathreshold voxels (``stat >
height``; local maxima among 18-connected neighbours, as ``spm_max``) grouped into 18-connected clusters of at
least `extent` voxels; clusters taken in order of their largest maximum (SPM: "sorted on the Ze-variate of
the peaks"; ``[U, i] = max(Z)`` cluster after cluster), each with up to 3 maxima more than 8 mm apart
(``report._peaks``, SPM's rule). Columns: set level ``p`` and ``c`` (first row), cluster level ``p(FWE)``,
``q(FDR)``, ``k`` (voxels) and ``p(unc)`` (first row of each cluster), peak level ``p(FWE)``, ``q(FDR)``, the
statistic (T, F or Z), the equivalent Z and ``p(unc)``, and the position in mm. Every p-value is one of
``voxfit.inference.rft``'s functions: set ``p_set``, cluster ``p_cluster`` and ``cluster_fdr`` (over all the
clusters above the height, before the extent threshold, as SPM's ``QPc``), peak ``p_peak_fwe`` (with the
search volume's Bonferroni bound), ``peak_fdr`` (over all the maxima above the height, SPM's ``QPp``) and
``p_uncorrected``. Cluster sizes in resels are ``k / voxels_per_resel`` (SPM's stationary default).

The footer holds ``spm_list``'s: the height threshold (with its uncorrected and FWE p), the extent threshold
(with its p), the expected voxels per cluster ``Ek / V2R`` and expected clusters ``Ec * Pn``, the FWE and FDR
critical heights and extents at 0.05, the degrees of freedom, FWHM, the search volume (mm³, voxels, resels)
and the resel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special as sc

from ..inference.clusters import label_clusters
from ..inference.graph import volume_adjacency
from ..inference.rft import (
    cluster_fdr,
    cluster_resels,
    p_cluster,
    p_peak_fwe,
    p_set,
    p_uncorrected,
    peak_fdr,
)
from ..inference.rft_fit import ContrastRFT, RFTInference
from ._peaks import local_maxima, spaced_maxima

__all__ = ["RFTTable", "results_table"]

CONNECTIVITY = 18  # spm_bwlabel(.., 18) for clusters, spm_max's neighbourhood for maxima


@dataclass(frozen=True)
class RFTTable:
    """The table's rows (one per listed maximum; dicts with every column) and its footer (a dict)."""

    rows: list[dict]
    footer: dict

    def tsv(self) -> str:
        """Tab-separated text: a header line, the rows (n/a where a level has no entry on that row)."""
        keys = list(COLUMNS)

        def cell(value):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return "n/a"
            return f"{value:.6g}" if isinstance(value, float) else str(value)

        lines = ["\t".join(keys)] + ["\t".join(cell(row.get(k)) for k in keys) for row in self.rows]
        return "\n".join(lines) + "\n"


COLUMNS = (
    "set_p",
    "set_c",
    "cluster",
    "cluster_p_fwe",
    "cluster_q_fdr",
    "cluster_k",
    "cluster_p_unc",
    "peak_p_fwe",
    "peak_q_fdr",
    "peak_stat",
    "peak_z",
    "peak_p_unc",
    "x_mm",
    "y_mm",
    "z_mm",
)


def results_table(inference: RFTInference, label: str) -> RFTTable:
    """SPM's results table of the contrast `label` of `inference` (see the module's notes)."""
    c: ContrastRFT = inference.contrasts[label]
    sm, mask, u = inference.smoothness, inference.mask, c.height
    extent = inference.options.extent
    R, S, vpr = sm.resels, sm.n_voxels, sm.voxels_per_resel
    flat = np.flatnonzero(mask.ravel(order="F"))
    above = np.flatnonzero(np.isfinite(c.stat) & (c.stat > u))
    footer = _footer(inference, c)
    if above.size == 0:
        return RFTTable([], {**footer, "clusters": 0})
    grid = np.zeros(mask.size, dtype=bool)
    grid[flat[above]] = True
    adjacency = volume_adjacency(grid, mask.shape, CONNECTIVITY)
    values = c.stat[above]
    labels, sizes, _ = label_clusters(np.ones(above.size), adjacency, 0.0)
    maxima = local_maxima(values, adjacency)
    # FDR over everything above the height (SPM's QPc and QPp: before the extent threshold)
    cfdr = cluster_fdr(cluster_resels(sizes, sm), u, c.dof, c.kind, R)
    pfdr = peak_fdr(values[maxima], u, c.dof, c.kind, R)
    peak_q = np.full(above.size, np.nan)
    peak_q[maxima] = pfdr.q
    footer.update(
        fdr_height=pfdr.threshold,
        fwe_extent_voxels=cfdr.fwe_threshold * vpr,
        fdr_extent_voxels=cfdr.threshold * vpr,
    )
    kept_cluster = sizes >= extent
    top = np.full(sizes.size, -np.inf)
    np.maximum.at(top, labels - 1, values)
    order = [k for k in np.lexsort((np.arange(sizes.size), -top)) if kept_cluster[k]]
    rank = np.zeros(sizes.size, dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    cluster = rank[labels - 1]
    ijk = np.stack([flat[above] % mask.shape[0], (flat[above] // mask.shape[0]) % mask.shape[1]], axis=1)
    ijk = np.column_stack([ijk, flat[above] // (mask.shape[0] * mask.shape[1])])
    xyz = ijk @ inference.affine[:3, :3].T + inference.affine[:3, 3]
    kept = spaced_maxima(cluster, values, xyz, maxima)
    n_clusters = len(order)
    rows = []
    set_p = p_set(n_clusters, extent / vpr, u, c.dof, c.kind, R) if n_clusters else math.nan
    heights = values[kept]
    p_fwe = np.atleast_1d(p_peak_fwe(heights, c.dof, c.kind, R, n_voxels=S))
    p_unc = np.atleast_1d(p_uncorrected(heights, c.dof, c.kind))
    previous = 0
    for i, e in enumerate(kept):
        row = dict.fromkeys(COLUMNS)
        if not rows:
            row.update(set_p=float(set_p), set_c=n_clusters)
        k = int(cluster[e])
        if k != previous:
            size = int(sizes[labels[e] - 1])
            rf = p_cluster(size / vpr, u, c.dof, c.kind, R)
            row.update(
                cluster_p_fwe=float(rf.P),
                cluster_q_fdr=float(cfdr.q[labels[e] - 1]),
                cluster_k=size,
                cluster_p_unc=float(rf.p),
            )
            previous = k
        row.update(
            cluster=k,
            peak_p_fwe=float(p_fwe[i]),
            peak_q_fdr=float(peak_q[e]),
            peak_stat=float(values[e]),
            peak_z=_equivalent_z(float(p_unc[i])),
            peak_p_unc=float(p_unc[i]),
            x_mm=round(float(xyz[e, 0]), 1),
            y_mm=round(float(xyz[e, 1]), 1),
            z_mm=round(float(xyz[e, 2]), 1),
        )
        rows.append(row)
    return RFTTable(rows, {**footer, "clusters": n_clusters})


def _equivalent_z(p: float) -> float:
    """SPM's ``Ze = spm_invNcdf(1 - Pz)`` (inf below its tolerance), computed without the subtraction."""
    return math.inf if p <= 0 else float(-sc.ndtri(p))


def _footer(inference: RFTInference, c: ContrastRFT) -> dict:
    sm, extent = inference.smoothness, inference.options.extent
    R, vpr = sm.resels, sm.voxels_per_resel
    rf = p_cluster(extent / vpr, c.height, c.dof, c.kind, R)
    return {
        "statistic": c.kind,
        "height": c.height,
        "height_p_unc": float(p_uncorrected(c.height, c.dof, c.kind)),
        "height_p_fwe": float(p_peak_fwe(c.height, c.dof, c.kind, R, n_voxels=sm.n_voxels)),
        "extent_voxels": extent,
        "extent_p_unc": float(rf.p),
        "extent_p_fwe": float(rf.P),
        "expected_voxels_per_cluster": float(rf.Ek) * vpr,
        "expected_clusters": float(rf.Ec) * float(rf.p),
        "fwe_height": c.fwe_05,
        "dof": list(c.dof),
        "fwhm_mm": sm.fwhm_mm.tolist(),
        "fwhm_voxels": sm.fwhm.tolist(),
        "search_mm3": float(sm.n_voxels * np.prod(inference.voxel_size)),
        "search_voxels": sm.n_voxels,
        "search_resels": float(R[-1]),
        "resel_voxels": vpr,
        "voxel_size_mm": inference.voxel_size.tolist(),
    }
