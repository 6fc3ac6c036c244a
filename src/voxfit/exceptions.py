"""The exception and warning types raised by voxfit.

Every error a user can cause is a :class:`VoxfitError`; each type also subclasses the builtin a caller
would naturally catch (``ValueError``, ``TypeError``), as scikit-learn does. Messages are one sentence that
names the argument, says what was given and what was expected.
"""

from __future__ import annotations

import errno
import os

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

    @classmethod
    def from_os_error(cls, exc: OSError, path=None, what: str = "") -> InputError:
        """The one-line error for a file that cannot be opened, read or written (`exc`, from the system): the
        file (`path`, else the error's own), `what` it is ("design", "output folder"), the system's reason and,
        for the common ones, what to do. These are the user's environment, not voxfit's bugs: exit status 2."""
        name = path if path is not None else (exc.filename if exc.filename is not None else "a file")
        if exc.errno in DISK_FULL:  # one wording for a full disk, whichever command met it
            what_full = "no space left on device" if exc.errno == errno.ENOSPC else os.strerror(exc.errno).lower()
            return cls(f"{what_full} while writing {name}; free some space or choose another output.")
        label = f"{what} {name}" if what else f"{name}"
        return cls(f"{label}: {_os_reason(exc)}")


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}  # errno of a full disk or quota
_OS_FIXES = {
    "ENOENT": "no such file or folder",
    "EACCES": "permission denied; make it readable (an output: its folder writable) or run as a user who may",
    "EPERM": "operation not permitted; check the file's permissions and owner",
    "EISDIR": "is a folder, where a file is expected",
    "ENOTDIR": "a part of the path is not a folder",
    "ENOSPC": "no space left on the device; free some space or write to another disk",
    "EDQUOT": "disk quota exceeded; free some space or write to another disk",
    "EROFS": "the file system is read-only; write to another folder",
    "ENAMETOOLONG": "the name is too long for the file system (255 bytes a name at most); choose a shorter one",
    "EMFILE": "too many open files; raise the limit (ulimit -n)",
    "EIO": "input/output error on the device; check the disk",
    "ELOOP": "too many symbolic links in the path",
    "EFBIG": "the file would be too large for the file system",
}


def _os_reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "")
    text = _OS_FIXES.get(code) or (exc.strerror or str(exc) or type(exc).__name__)
    return text + "."


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
