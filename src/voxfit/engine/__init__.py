"""Planning and running the voxel side: blocks of voxels under a memory budget."""

from .fit import fit
from .memory import parse_memory, plan_blocks

__all__ = ["fit", "parse_memory", "plan_blocks"]
