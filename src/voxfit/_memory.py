"""Memory sizes as users write them, and the rule that sends a fit to the streaming path (no heavy imports:
the command line decides before it starts reading)."""

from __future__ import annotations

import re

from .exceptions import InputError

__all__ = ["parse_memory", "needs_streaming"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(value: str | int | float) -> int:
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
    if not size > 0 or size != size or size == float("inf"):
        raise InputError(f"`max_memory` must be a positive size; got {value!r}.")
    return int(size)


def needs_streaming(n_scans: int, n_elements: int, max_memory) -> bool:
    """Whether the data, as float32, would take more than half of `max_memory` (None: never stream)."""
    return max_memory is not None and 4 * n_scans * n_elements > parse_memory(max_memory) // 2
