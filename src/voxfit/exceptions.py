"""The exception and warning types raised by voxfit.

Every error a user can cause is a :class:`VoxfitError`; each type also subclasses the builtin a caller
would naturally catch (``ValueError``, ``TypeError``), as scikit-learn does. Messages are one sentence that
names the argument, says what was given and what was expected.
"""

from __future__ import annotations

__all__ = [
    "VoxfitError",
    "InputError",
    "DataTypeError",
    "ContrastError",
    "RankDeficiencyWarning",
    "DegreesOfFreedomWarning",
    "DesignWarning",
    "DataRangeWarning",
]


class VoxfitError(Exception):
    """Base class of every error voxfit raises on purpose."""


class InputError(VoxfitError, ValueError):
    """An argument has the wrong shape, size, value or units."""


class DataTypeError(VoxfitError, TypeError):
    """An argument is not numeric (strings, objects, complex numbers, booleans)."""


class ContrastError(InputError):
    """A contrast is malformed, refers to unknown columns, or is not estimable on the design."""


class RankDeficiencyWarning(UserWarning):
    """The design matrix does not have full column rank; the message names the columns involved."""


class DegreesOfFreedomWarning(UserWarning):
    """The design leaves no residual degrees of freedom, so variances and statistics are undefined."""


class DesignWarning(UserWarning):
    """A design that can be fitted but estimates some regressor poorly (high variance inflation)."""


class DataRangeWarning(UserWarning):
    """Some voxels' data are so large or small that their sums of squares are not representable in float64."""
