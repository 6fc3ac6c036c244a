"""Memory sizes as users write them, and the rule that sends a fit to the streaming path (no heavy imports:
the command line decides before it starts reading)."""

from __future__ import annotations

import math
import re

from .exceptions import InputError

__all__ = ["RESERVED", "needs_streaming", "parse_memory", "reserved_bytes", "size_text"]

# Of a --max-memory cap, kept for the interpreter and the libraries: Python, numpy, scipy, nibabel, numba and
# its compiled kernels take 170 to 250 MiB resident (measured: 12 MiB for `import voxfit.cli`, 170 MiB once a
# group model's permutation kernels have run, 100 MiB for the report's matplotlib); the rest of the cap is
# split among the data, the per-voxel results and the working buffers of each command.
RESERVED = 256 << 20

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(value: str | float) -> int:
    """Bytes in a memory size: an integer number of bytes or a string like ``64K``, ``500M``, ``2G``, ``1.5GB``.

    Units are binary (1K = 1024 bytes), as in ``ulimit`` and SLURM.
    """
    if isinstance(value, bool):
        raise InputError(f"`max_memory` must be a size like '500M' or '2G'; got {value!r}.")
    if isinstance(value, (int, float)):
        size = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise InputError(f"`max_memory` must be a size like '64K', '500M' or '2G'; got {value!r}.")
        size = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not (size > 0 and math.isfinite(size)):
        raise InputError(f"`max_memory` must be a positive size; got {value!r}.")
    return int(size)


def reserved_bytes() -> int:
    """:data:`RESERVED`, read when called (tests set it to 0 to plan kilobyte caps)."""
    return RESERVED


def needs_streaming(n_scans: int, n_elements: int, max_memory, itemsize: int = 4) -> bool:
    """Whether the data, as float32 (or `itemsize` bytes a value, for float64 data), would take more than half
    of what `max_memory` leaves beside :data:`RESERVED` (None: never stream). The other half holds what the
    in-memory path adds to the data: a scaled copy (``--scaling``), the per-voxel results, the working blocks
    of the fit and the maps written."""
    size = max(4, itemsize) * n_scans * n_elements
    return max_memory is not None and size > (parse_memory(max_memory) - RESERVED) // 2


def size_text(nbytes: int) -> str:
    """`nbytes` rounded up, in the units ``--max-memory`` takes: ``"3.7G"``, ``"740M"``, ``"96K"``."""
    if nbytes >= 10 * 2**30:
        return f"{-(-nbytes // 2**30)}G"
    if nbytes >= 2**30:
        return f"{-(-nbytes * 10 // 2**30) / 10:.1f}G"
    return f"{-(-nbytes // 2**20)}M" if nbytes >= 2**20 else f"{-(-nbytes // 2**10)}K"
