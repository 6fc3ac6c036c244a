"""Planning and running the voxel side: blocks of voxels under a memory budget."""

from .fit import default_workers, fit
from .memory import parse_memory, plan_blocks

__all__ = ["default_workers", "fit", "parse_memory", "plan_blocks"]
