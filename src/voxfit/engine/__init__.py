"""Planning and running the voxel side: blocks of voxels under a memory budget."""

from .ar import ARFit, fit_ar
from .fit import default_workers, fit
from .memory import parse_memory, plan_blocks

__all__ = ["ARFit", "fit_ar", "default_workers", "fit", "parse_memory", "plan_blocks"]
