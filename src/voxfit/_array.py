"""Dtype policy shared by the layers: the dtype a block of data is processed in."""

from __future__ import annotations

import numpy as np

__all__ = ["working_dtype"]


def working_dtype(dtype) -> np.dtype:
    """float32 for float32, float16 and 8/16-bit integers (exactly representable); float64 otherwise.

    See ``voxfit.core.ols`` for the precision this gives.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    if dtype.kind in "iub" and dtype.itemsize <= 2:
        return np.dtype(np.float32)
    return np.dtype(np.float64)
