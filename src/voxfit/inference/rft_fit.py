"""``--inference rft`` on a fit: the smoothness of its residuals, voxel-level FWE maps and SPM's results table.

The options follow SPM's results dialog: ``p value adjustment to control`` (`correction`: ``fwe`` or ``none``),
``threshold`` (`height`: a p value) and ``& extent threshold {voxels}`` (`extent`). The smoothness comes from
the residuals' neighbour sums the fit collected (``voxfit.engine.smoothness``), through
``voxfit.inference.rft`` (SPM12's ``spm_est_smoothness``, ``spm_resels_vol``, ``spm_P_RF``, ``spm_uc``).

Which random field: t and F maps of models with one residual dof (OLS, ar1-global, group OLS) are t and F
fields; maps with a dof per voxel (AR(p) per voxel, mixed effects) are taken as Z fields through their z maps
(each voxel's z has its own exact p).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

from .._checks import check_scalar
from ..exceptions import InputError

__all__ = ["CLUSTER_WARNING", "RFTOptions", "check_rft_options", "check_volume", "rft_inference"]

CLUSTER_WARNING = (
    "a cluster-forming threshold of p < {p:g} (uncorrected) is looser than p < 0.001: parametric cluster "
    "inference at such thresholds gave familywise error rates far above nominal on real null data (Eklund, "
    "Nichols & Knutsson 2016, PNAS 113:7900, up to 70% at p < 0.01); use p < 0.001 or --permutations."
)


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
            "(use --permutations for surfaces and CIFTI)."
        )


def rft_inference(contrasts, masker, neighbours, options: RFTOptions):
    """The RFT inference of each contrast (see the module docstring)."""
    raise NotImplementedError  # wired to voxfit.inference.rft once it is merged
