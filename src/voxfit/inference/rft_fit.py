"""``--inference rft`` on a fit: the smoothness of its residuals, voxel-level FWE maps and SPM's results table.

The options follow SPM's results dialog: ``p value adjustment to control`` (`correction`: ``fwe`` or ``none``),
``threshold`` (`height`: a p value) and ``& extent threshold {voxels}`` (`extent`). The smoothness comes from
the residuals' neighbour sums the fit collected (``voxfit.engine.smoothness``), through
``voxfit.inference.rft`` (SPM12's ``spm_est_smoothness``, ``spm_resels_vol``, ``spm_P_RF``, ``spm_uc``).

Which random field: t and F maps of models with one residual dof (OLS, ar1-global, group OLS) are T and F
fields of that dof, as SPM takes them. Maps with a dof per voxel (AR(p) per voxel, runs combined by fixed effects,
mixed effects) are T and F fields of the contrast's median dof (an F's denominator's): each voxel's statistic is
mapped to the value of that dof with the same p, so that every voxel keeps its exact p and the field its heavy
tails. Their z maps taken as Z fields (voxfit before 2026-12-07) were liberal at few dof: on smooth null data
(validation/rft_runs_null.py, FWE at 0.05) AR(4) on one run of 150 scans (a median of 21 effective dof) gave 0.062
as a Z field and 0.020 so; two AR(1) runs of 43 scans combined, 0.090 and 0.040; two OLS runs of 30 scans, 0.056
and 0.045 (400 to 1000 realisations each); a mixed-effects group of 12 subjects whose between-subject variance
outweighs their first-level ones (validation/rft_group_null.py), 0.081 and 0.042 (OLS's T field 0.036). Where the
first-level variances weigh, FLAME1's p values are conservative and the field with them (12 subjects: 0.001; OLS
0.046).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special as sc

from .._checks import check_scalar
from ..exceptions import InputError
from .rft import (
    NeighbourSums,
    Smoothness,
    estimate_smoothness,
    gradient_products_from_sums,
    height_threshold,
    p_cluster,
    p_peak_fwe,
    p_uncorrected,
    upper_quantile,
)

__all__ = [
    "CLUSTER_WARNING",
    "ContrastRFT",
    "RFTInference",
    "RFTOptions",
    "FEW_EFFECTIVE_DOF",
    "FIXED_EFFECTS_DOF",
    "check_rft_options",
    "check_volume",
    "few_dof",
    "finite_or_none",
    "median_dof_field",
    "rft_inference",
    "uncorrected_height",
]

CLUSTER_WARNING = (
    "a cluster-forming threshold of p < {p:g} (uncorrected) is looser than p < 0.001: parametric cluster "
    "inference at such thresholds gave familywise error rates far above nominal on real null data (Eklund, "
    "Nichols & Knutsson 2016, PNAS 113:7900, up to 70% at p < 0.01); use p < 0.001 or --permutations."
)


# the fewest dof (a contrast's median over its voxels) each run needs for runs combined by fixed effects under RFT:
# fixed effects is liberal itself at few dof per run, whatever the field (smooth null data, FWE 0.05, fields of the
# median dof; validation/rft_runs_null.py, 1000 realisations): two OLS runs of 16 and 20 scans gave 0.061, three of
# 10 scans 0.204, two of 30 0.045, two of 45 0.033; two AR(4) runs of 150 scans (a median of 21 effective dof)
# 0.068 (400). Runs with fewer are refused
FIXED_EFFECTS_DOF = 40

# the fewest effective dof (a contrast's median) of one run's AR(p) per voxel under RFT: below it the model's own p
# values ran liberal (a reviewer's AR(4) on 60 scans, a median of 6.2: 0.0017 of null voxels beyond z = 3.09
# against 0.001), and its field with them (FWE 0.123 at 0.05, 400 realisations; AR(2) on 40 scans, 7.7 dof: 0.103;
# AR(4) on 100 scans, 10.7 dof: 0.047). Warned of, naming SPM's ar1-global
FEW_EFFECTIVE_DOF = 12


@dataclass(frozen=True)
class RFTOptions:
    """What ``--inference rft`` asks: the height threshold `height` (a p value), corrected by `correction`
    (``fwe``: familywise, SPM's default 0.05; ``none``: uncorrected, e.g. 0.001), and the extent threshold
    `extent` (voxels)."""

    height: float = 0.05
    correction: str = "fwe"
    extent: int = 0


def check_rft_options(height=0.05, correction="fwe", extent=0) -> RFTOptions:
    """The options checked (a p in (0, 1), ``fwe`` or ``none``, an extent of 0 or more voxels); an uncorrected
    height looser than 0.001 warns (see :data:`CLUSTER_WARNING`)."""
    height = check_scalar(
        height, "`height_threshold`", numbers.Real, min_val=0.0, max_val=1.0, include_boundaries="neither"
    )
    if correction not in ("fwe", "none"):
        raise InputError(f"`height_correction` must be fwe or none; got {correction!r}.")
    extent = check_scalar(extent, "`extent_threshold`", numbers.Integral, min_val=0)
    if correction == "none" and height > 0.001:
        warnings.warn(CLUSTER_WARNING.format(p=height), UserWarning, stacklevel=2)
    return RFTOptions(float(height), correction, int(extent))


def check_volume(geometry) -> None:
    """Refuse anything but a 3-D voxel grid, in one line."""
    if getattr(geometry, "shape", None) is None or len(geometry.shape) != 3:
        raise InputError(
            f"--inference rft is for volumes; the data are a {geometry.describe().get('kind', 'non-volume')} "
            "(on surfaces and CIFTI, voxfit group --permutations gives corrected p values)."
        )


@dataclass(frozen=True)
class ContrastRFT:
    """The random-field inference of one contrast.

    kind : ``T``, ``F`` or ``Z`` (SPM's STAT); dof : SPM's ``[df1, df2]`` (``[1, inf]`` for Z).
    stat : (V,) the field's values at the mask's voxels: the t or F map, or where the dof vary by voxel, each
        voxel's t or F mapped to the median dof (:func:`median_dof_field`).
    height : the height threshold on `stat` (``spm_uc`` for fwe; the uncorrected quantile otherwise).
    fwe_05 : the FWE 0.05 height threshold (``spm_uc(0.05, ...)``), whatever `height` is.
    p_fwe : (V,) the voxel-level FWE p of each voxel taken as a peak (``spm_P(1, 0, stat, ...)`` with SPM's
        Bonferroni bound over the search volume), NaN where `stat` is not finite.
    expected_clusters : the expected number of clusters above `height` of `extent` voxels or more (``Ec * Pn``).
    expected_voxels_per_cluster : E{n}, their expected size in voxels (``Ek / V2R``).
    mapped : whether `stat` was mapped to the median dof (the run's own t or F maps are then not its values; its z
        map is, through the equivalent z of `height`: model.json's ``height_z``).
    """

    kind: str
    dof: tuple[float, float]
    stat: NDArray[np.float64]
    height: float
    fwe_05: float
    p_fwe: NDArray[np.float64]
    expected_clusters: float
    expected_voxels_per_cluster: float
    mapped: bool = False


@dataclass(frozen=True)
class RFTInference:
    """``--inference rft`` on a fit: the smoothness of its residuals and each contrast's :class:`ContrastRFT`.

    mask : the search volume (3-D, the fit's mask); voxel_size : mm; affine : voxel -> mm; residuals : which
    residuals the smoothness was estimated from, in words; field : why the fields are t/F or Z, in words.
    """

    smoothness: Smoothness
    options: RFTOptions
    mask: NDArray[np.bool_]
    voxel_size: NDArray[np.float64]
    affine: NDArray[np.float64]
    contrasts: dict[str, ContrastRFT]
    residuals: str
    field: str

    def maps(self) -> list[tuple[str, str | None, str | None, NDArray]]:
        """``(stat, contrast label or None, desc or None, values (V,))`` of each map to write: the RPV map, and
        per contrast the voxel-level FWE p and its -log10."""
        out = [("rpv", None, None, self.smoothness.rpv)]
        for label, c in self.contrasts.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                logp = -np.log10(c.p_fwe)
            out += [("p", label, "rftfwe", c.p_fwe), ("logp", label, "rftfwe", logp)]
        return out

    def record(self) -> dict:
        """What model.json's ``inference`` holds (see ``ModelRecord``)."""
        sm = self.smoothness
        rpv = sm.rpv[np.isfinite(sm.rpv)]
        summary = {
            k: float(f(rpv)) if rpv.size else None for k, f in (("mean", np.mean), ("min", np.min), ("max", np.max))
        }
        return {
            "method": "rft",
            "smoothness": {
                "fwhm_voxels": sm.fwhm.tolist(),
                "fwhm_mm": sm.fwhm_mm.tolist(),
                "resels": sm.resels.tolist(),
                "resel_voxels": sm.voxels_per_resel,
                "rpv": summary,
                "n_valid_voxels": sm.n_valid,
                "residuals": self.residuals,
                "n": sm.n,
                "dof": sm.dof,
            },
            "search": {"voxels": sm.n_voxels, "mm3": float(sm.n_voxels * np.prod(self.voxel_size))},
            "height": {"p": self.options.height, "correction": self.options.correction},
            "extent": self.options.extent,
            "field": self.field,
            "contrasts": {
                label: {
                    "field": c.kind,
                    "dof": list(c.dof),
                    "height_stat": c.height,
                    "height_p_uncorrected": float(p_uncorrected(c.height, c.dof, c.kind)),
                    "fwe_0.05": c.fwe_05,
                    "expected_clusters": c.expected_clusters,
                    "expected_voxels_per_cluster": c.expected_voxels_per_cluster,
                    **({"height_z": _equivalent_z(c)} if c.mapped else {}),
                }
                for label, c in self.contrasts.items()
            },
        }


def _equivalent_z(c: ContrastRFT) -> float:
    """The height of a mapped contrast on its z map: the z whose upper tail is the height's p."""
    return float(-sc.ndtri(p_uncorrected(c.height, c.dof, c.kind)))


def finite_or_none(obj):
    """`obj` (dicts, lists, numbers) with every non-finite float as None, for JSON (inf: no threshold reached;
    a Z field's dof)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def rft_inference(
    contrasts: dict,
    masker,
    sums: NeighbourSums,
    options: RFTOptions,
    *,
    n: float,
    dof: float,
    residuals: str,
    per_voxel_dof: bool = False,
) -> RFTInference:
    """The RFT inference of each contrast (``voxfit.core`` Stats) of a fit on a volume `masker`, from the
    :class:`~voxfit.inference.rft.NeighbourSums` of its residuals (`n` scans, `dof` residual degrees of
    freedom). t and F maps are T and F fields of the contrast's dof; with `per_voxel_dof` (AR(p) per voxel, runs
    combined, mixed effects), of its median dof, each voxel's value mapped to it (see the module's notes)."""
    check_volume(masker.geometry)
    shape = tuple(masker.geometry.shape)
    mask = np.asarray(masker.mask, dtype=bool).reshape(shape, order="F")
    affine = np.asarray(masker.geometry.affine, dtype=np.float64)
    voxel_size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    products = gradient_products_from_sums(sums, mask)
    sm = estimate_smoothness(products, mask, voxel_size, n=n, dof=dof, n_maps=sums.n_maps)
    out = {label: _contrast(s, sm, options, per_voxel_dof) for label, s in contrasts.items()}
    field = (
        "T or F of each contrast's median dof: each voxel's statistic mapped to that dof through its p (the model's "
        "dof vary per voxel)"
        if per_voxel_dof
        else "T or F: the contrast's statistic"
    )
    return RFTInference(sm, options, mask, voxel_size, affine, out, residuals, field)


def _contrast(stats, sm: Smoothness, options: RFTOptions, per_voxel_dof: bool) -> ContrastRFT:
    if per_voxel_dof:
        kind, dof, values = median_dof_field(stats)
    else:
        kind = "T" if stats.kind == "t" else "F"
        d = stats.dof
        dof = (1.0, float(d)) if np.ndim(d) == 0 else (float(d[0]), float(d[1]))
        values = np.asarray(stats.stat, dtype=np.float64)
    S = sm.n_voxels
    fwe_05 = height_threshold(0.05, dof, kind, sm.resels, n_voxels=S)
    if options.correction == "fwe":
        height = (
            fwe_05 if options.height == 0.05 else height_threshold(options.height, dof, kind, sm.resels, n_voxels=S)
        )
    else:
        height = uncorrected_height(options.height, dof, kind)
    finite = np.isfinite(values)
    p = np.full(values.shape, np.nan)
    p[finite] = p_peak_fwe(values[finite], dof, kind, sm.resels, n_voxels=S)
    rf = p_cluster(options.extent / sm.voxels_per_resel, height, dof, kind, sm.resels)
    return ContrastRFT(
        kind,
        dof,
        values,
        float(height),
        float(fwe_05),
        p,
        float(rf.Ec) * float(rf.p),
        float(rf.Ek) * sm.voxels_per_resel,
        mapped=per_voxel_dof and kind != "Z",
    )


def median_dof_field(stats) -> tuple[str, tuple[float, float], NDArray[np.float64]]:
    """A contrast whose dof vary by voxel (``voxfit.core`` Stats) as a field of its median dof (an F's
    denominator's): ``(kind, dof, values)``, SPM's STAT (``T`` or ``F``) and ``[df1, df2]``, and each voxel's t (or
    F) of that dof whose tail is its own p, from its z, each tail from its own side (to 1e-10 against mpmath from
    z = -30 to 37); beyond z = 37.5, whose p is below the smallest double, the value of that double, and at most
    1e150 (a median of 1 or 2 dof: z above about 27); NaN where the z is. A contrast without a finite dof is the Z
    field of its z map."""
    z = np.asarray(stats.z, dtype=np.float64)
    d = _finite_dof(stats)
    d = d[d > 0]
    if not d.size:
        return "Z", (1.0, math.inf), z
    nu = float(np.median(d))
    tiny = np.finfo(np.float64).tiny
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # (b = 1: a t of 0, an F of 0)
        if stats.kind == "t":  # P(|T| > t) = I_b(nu / 2, 1 / 2), b = nu / (nu + t^2): each tail's p, doubled
            tail = np.maximum(2 * sc.ndtr(-np.abs(z)), tiny)  # (NaN stays NaN)
            log_b = _log_beta_inverse(nu / 2, 0.5, np.minimum(tail, 1.0))
            t = np.exp(0.5 * (math.log(nu) + np.log1p(-np.exp(log_b)) - log_b))
            return "T", (1.0, nu), np.copysign(np.minimum(t, _LARGEST), z)
        # P(F > x) = I_b(nu / 2, df1 / 2), b = nu / (nu + df1 x); F below 1 from its own (lower) tail too
        df1 = float(np.ravel(stats.dof[0])[0])
        log_b = _log_beta_inverse(nu / 2, df1 / 2, np.maximum(sc.ndtr(-z), tiny))
        x = np.exp(math.log(nu / df1) + np.log1p(-np.exp(log_b)) - log_b)
        below = z < 0  # (F's lower tail: I_{1-b}(df1 / 2, nu / 2) = p, b near 1 there)
        if below.any():
            log_c = _log_beta_inverse(df1 / 2, nu / 2, np.maximum(sc.ndtr(z[below]), tiny))
            x[below] = np.exp(math.log(nu / df1) + log_c - np.log1p(-np.exp(log_c)))
        return "F", (df1, nu), np.minimum(x, _LARGEST)


def _finite_dof(stats) -> NDArray[np.float64]:
    """A contrast's dof at its voxels (an F's denominator's), the finite ones."""
    dof = np.asarray(stats.dof if stats.kind == "t" else stats.dof[1], dtype=np.float64).ravel()
    return dof[np.isfinite(dof)]


_LARGEST = 1e150  # (values held below it: RFT's p of a T or F near the largest double is NaN, at 1 dof from z ~ 27)


def _log_beta_inverse(a: float, c: float, p: NDArray[np.float64]) -> NDArray[np.float64]:
    """log b with I_b(a, c) = p (the regularized incomplete beta), for p from 1e-308 to 1: where c b < 1e-12 the
    tail's own form, I_b(a, c) = b^a / (a B(a, c)) (1 + O(c b)) (scipy's ``betaincinv`` gave NaN from p ~ 1e-100
    at some dof); elsewhere ``betaincinv``, below p = 1e-100 polished by Newton's method on log I from its series
    (``voxfit.core.distributions``), as scipy's inverse drifted there and its I underflowed (an F of 50 and 10,000
    dof came out NaN, and not monotone in p, beyond z = 34)."""
    from ..core.distributions import log_betainc_series

    log_p = np.log(p)
    log_small = (log_p + math.log(a) + sc.betaln(a, c)) / a
    small = log_small + math.log(max(c, 1.0)) < math.log(1e-12)
    with np.errstate(divide="ignore"):
        guess = np.log(sc.betaincinv(a, c, p))
    far = ~small & ((p < 1e-100) | ~np.isfinite(guess))
    log_b = np.where(small | ~np.isfinite(guess), log_small, guess)
    if far.any():
        u, target = np.minimum(log_b[far], -1e-12), log_p[far]
        for _ in range(8):  # (d log I / d log b = b^a (1 - b)^(c - 1) / (B(a, c) I))
            log1m = np.log1p(-np.exp(u))
            log_i = log_betainc_series(a, c, u, log1m)
            step = (log_i - target) / np.exp(a * u + (c - 1) * log1m - sc.betaln(a, c) - log_i)
            u = np.minimum(u - step, -1e-12)
            if np.all(np.abs(step) < 1e-13 * np.maximum(1.0, np.abs(u))):
                break
        log_b[far] = u
    return log_b


def few_dof(contrasts: dict, bound: float = FIXED_EFFECTS_DOF) -> tuple[str, float] | None:
    """The first of `contrasts` (``voxfit.core`` Stats) whose median dof over its voxels (an F's denominator's) is
    below `bound`, with that median: ``(label, median)``; None where every one has as many."""
    for label, stats in contrasts.items():
        values = _finite_dof(stats)
        median = float(np.median(values)) if values.size else math.inf
        if median < bound:
            return label, median
    return None


def uncorrected_height(p: float, dof, kind: str) -> float:
    """The height of a `kind` field (``T``, ``F``, ``Z``) whose uncorrected upper-tail probability is `p`
    (SPM's ``spm_u``)."""
    return float(upper_quantile(kind, p, dof))
