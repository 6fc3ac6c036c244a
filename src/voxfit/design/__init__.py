"""Designs: design matrices from files, from events (SPM's microtime conventions), HRFs, drifts, confounds; each
subject's first-level effect and variance maps for a group model (:mod:`.paired_maps`, which reads image
headers: imported on first use, so that ``voxfit design`` does not load the image readers)."""

from .._lazy import first_use
from .events import (
    Design,
    cosine_drift,
    make_design,
    parse_high_pass,
    parse_modulators,
    polynomial_drift,
    read_confounds,
    read_events,
)
from .hrf import HRF_MODELS, basis_set, spm_hrf, spm_orth
from .read import read_design, write_design
from .vest import read_contrasts, read_ftests, read_groups, read_vest, write_vest

__all__ = [
    "Design",
    "HRF_MODELS",
    "PairedMaps",
    "basis_set",
    "cosine_drift",
    "first_level_maps",
    "make_design",
    "pair_variances",
    "parse_high_pass",
    "parse_modulators",
    "polynomial_drift",
    "read_confounds",
    "read_contrasts",
    "read_design",
    "read_events",
    "read_ftests",
    "read_groups",
    "read_vest",
    "spm_hrf",
    "spm_orth",
    "write_design",
    "write_vest",
]

_FIRST_USE = {
    "PairedMaps": "paired_maps",
    "first_level_maps": "paired_maps",
    "pair_variances": "paired_maps",
}


__getattr__, __dir__ = first_use(globals(), _FIRST_USE)
