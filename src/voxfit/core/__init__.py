"""Pure array math: the design factorisation, OLS on blocks of voxels, contrasts and distributions.

Nothing here reads files, prints, or imports optional packages; every function works on any block of
voxels, so that a block on one machine gives the same numbers as the whole.
"""

from .contrast import Stats, check_contrast, compute_contrast, contrast_matrix
from .design import DesignFactor, as_design_matrix, factorize
from .distributions import f_logsf, f_to_z, t_logsf, t_to_z, z_to_logp, z_to_p
from .expr import parse_contrast
from .ols import BlockFitter, BlockResult, empty_result, fit_block, working_dtype
from .results import Fit, make_fit, warm_up

__all__ = [
    "BlockFitter",
    "BlockResult",
    "DesignFactor",
    "Fit",
    "Stats",
    "as_design_matrix",
    "check_contrast",
    "compute_contrast",
    "contrast_matrix",
    "empty_result",
    "f_logsf",
    "f_to_z",
    "factorize",
    "fit_block",
    "make_fit",
    "parse_contrast",
    "t_logsf",
    "t_to_z",
    "warm_up",
    "working_dtype",
    "z_to_logp",
    "z_to_p",
]
