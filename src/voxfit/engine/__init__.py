"""Planning and running the voxel side: blocks of voxels under a memory budget."""

from .._threads import default_workers
from .ar import ARFit, fit_ar
from .fit import fit
from .global_ar import GlobalARFit, fit_global_ar
from .memory import parse_memory, plan_blocks
from .mixed import MixedFit, mixed_effects

__all__ = [
    "ARFit",
    "GlobalARFit",
    "MixedFit",
    "default_workers",
    "fit",
    "fit_ar",
    "fit_global_ar",
    "mixed_effects",
    "parse_memory",
    "plan_blocks",
]
