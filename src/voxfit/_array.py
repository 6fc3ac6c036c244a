"""Dtype policy shared by the layers: the dtype a block of data is processed in."""

from __future__ import annotations

import sys

import numpy as np

__all__ = [
    "check_array_like",
    "check_data_matrix",
    "check_same_rows",
    "device_namespace",
    "finite_columns",
    "held_as_series",
    "is_dataframe",
    "to_numpy",
    "type_name",
    "unit_scale",
    "working_dtype",
    "written_zeros",
]


def type_name(obj) -> str:
    """The type of `obj` as an error message names it: ``dict``, ``numpy.ndarray``, ``torch.Tensor``,
    ``nibabel.Nifti1Image`` (builtins bare, others prefixed with their top-level package)."""
    kind = type(obj)
    package = kind.__module__.split(".")[0]
    return kind.__qualname__ if package == "builtins" else f"{package}.{kind.__qualname__}"


def check_array_like(obj, name: str, expected: str) -> None:
    """Refuse, naming `name` and the type received, what no array can be made of: text and paths, mappings,
    sets, None and single numbers (numpy would make a 0-d or object array of them and fail later, obscurely)."""
    import numbers
    import os

    from .exceptions import InputError

    if isinstance(obj, (str, bytes, os.PathLike, dict, set, frozenset, numbers.Number)) or obj is None:
        raise InputError(f"`{name}` must be {expected}; got {type_name(obj)}.")
    if isinstance(obj, np.ma.MaskedArray):  # (numpy hands its data on without the mask: a hidden 1e6 was fitted)
        raise InputError(
            f"`{name}` is a numpy masked array, whose mask voxfit would not see; give a plain array, the masked "
            "values filled (`np.ma.filled`, NaN for missing voxels) or left out."
        )


def _is_pandas(obj) -> bool:
    """Whether `obj` is a pandas Series or DataFrame (without importing pandas: see :func:`is_dataframe`)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, (pandas.Series, pandas.DataFrame))


def check_data_matrix(a, name: str, n: int, row: str, expected: str):
    """`a` as an (n, V) numeric array-like, not copied (arrays, memory maps and array-likes pass as they are;
    lists and pandas objects are converted, pandas' nullable numbers with NaN for their missing values; a 1-D
    array is one voxel): one `row` (``scan``, ``subject``) per row of the design, at least one voxel; otherwise an
    InputError or DataTypeError naming `name`."""
    from .exceptions import DataTypeError, InputError

    check_array_like(a, name, expected)
    if _is_pandas(a):
        import pandas as pd

        kinds = [a.dtype] if isinstance(a, pd.Series) else list(a.dtypes)
        numeric = all(pd.api.types.is_numeric_dtype(k) and not pd.api.types.is_bool_dtype(k) for k in kinds)
        a = a.to_numpy(dtype=np.float64, na_value=np.nan) if numeric and a.to_numpy().dtype == object else a.to_numpy()
    elif not hasattr(a, "dtype"):  # lists
        try:
            a = np.asarray(a)
        except ValueError:  # (rows of different lengths)
            raise InputError(f"`{name}` must be {expected}; its rows have different lengths.") from None
    if a.dtype.kind not in "biuf":
        raise DataTypeError(f"`{name}` must be numeric (float or integer); got dtype {a.dtype}.")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"`{name}` must be 2-D (n_{row}s, n_voxels); got shape {a.shape}.")
    if a.shape[0] != n:
        raise InputError(
            f"`{name}` has {a.shape[0]} rows ({row}s) but the design `X` has {n}; arrange {name} as one row per "
            f"{row}." + (f" Did you mean {name}.T?" if a.shape[1] == n else "")
        )
    if a.shape[1] == 0:
        raise InputError(f"`{name}` has no voxels (shape {a.shape}).")
    return a


def check_same_rows(**inputs) -> None:
    """Refuse pandas inputs (design, data, variances, groups: by their names) whose rows are labelled differently:
    they were paired by position (subjects in another order: t -31.5 for +31.5), where statsmodels refuses them.
    Inputs that are not pandas objects are rows by position and not compared."""
    from .exceptions import InputError

    labelled = [(name, a) for name, a in inputs.items() if _is_pandas(a)]
    for name, a in labelled[1:]:
        first, rows = labelled[0]
        if not rows.index.equals(a.index):
            raise InputError(
                f"the rows of `{first}` and `{name}` are labelled differently (their pandas indexes); voxfit pairs "
                f"rows by position: put them in one order first, e.g. `{name}.loc[{first}.index]`."
            )


def is_dataframe(obj) -> bool:
    """Whether `obj` is a pandas DataFrame, without importing pandas (it costs half a second at the command
    line): a DataFrame exists only if pandas was imported by whoever made it."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame)


def finite_columns(Yb) -> tuple[np.ndarray, np.ndarray]:
    """Which columns of a block (n, v) have only finite values, and those columns (the block itself when all
    do). A column whose sum is finite holds no NaN or infinity, so the values themselves are tested only where
    a sum is not (a NaN, an infinity, or finite values whose sum overflows): one pass that reads the block,
    instead of one that also writes a mask of its size."""
    Yb = np.asarray(Yb)
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(Yb.sum(axis=0))
    if not ok.all():
        ok = np.isfinite(Yb).all(axis=0)
    return ok, (Yb if ok.all() else Yb[:, ok])


def held_as_series(a) -> bool:
    """Whether a 2-D array holds each column's values together (F order, as CIFTI runs are read) and not also its
    rows (one row or one column is both)."""
    return a.ndim == 2 and a.flags.f_contiguous and not a.flags.c_contiguous


def working_dtype(dtype, scale: tuple[float, float] | None = None) -> np.dtype:
    """float32 for float32, float16 and 8/16-bit integers (exactly representable); float64 otherwise, and for
    8/16-bit integers whose `scale` (slope, intercept; NIfTI's scl_slope and scl_inter) puts their values where
    float32's spacing exceeds a sixteenth of the slope (the data's own step): |intercept| / |slope| plus the
    largest stored magnitude over 2**20 (int16 with intercept 3e7 and slope 1: float32's spacing there is 2,
    twice the data's step, and a voxel's variance of a few units was read as rounding), or whose slope is beyond
    1e+-30 (scl_slope 1e38: every value overflowed float32, and the automatic mask said no voxel was finite).

    See ``voxfit.core.ols`` for the precision this gives.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    if dtype.kind in "iub" and dtype.itemsize <= 2:
        if scale is not None and dtype.kind != "b":
            slope, inter = abs(float(scale[0])), abs(float(scale[1]))
            largest = max(abs(int(np.iinfo(dtype).min)), int(np.iinfo(dtype).max))
            # (NaN, inf: float64 decides nothing wrong; a slope beyond 1e+-30 over- or underflows float32)
            if not (1e-30 <= slope <= 1e30 and inter <= (2**20 - largest) * slope):
                return np.dtype(np.float64)
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def device_namespace(device: str | None):
    """``(xp, device)`` for a `device` argument: None or ``cpu``: numpy (``xp`` None); ``cuda``, ``cuda:N``:
    CuPy when installed, else PyTorch; ``torch`` or ``torch:cpu``: PyTorch on the CPU; ``strict``: the
    array-api-strict reference library (to test the array-API code path without a GPU). Libraries are
    imported here only, and wrapped by array-api-compat into the array API standard."""
    from .exceptions import InputError

    if device in (None, "cpu"):
        return None, None
    text = str(device)
    try:
        if text == "strict":
            import array_api_strict as xp

            return xp, None
        import array_api_compat
    except ImportError:
        raise InputError(
            f"`device`={text!r} needs array-api-compat (and a GPU array library): pip install 'voxfit[gpu]'."
        ) from None
    if text.startswith("cuda"):
        index = int(text.partition(":")[2] or 0)
        try:
            import cupy

            with cupy.cuda.Device(index):
                cupy.zeros(1)
            return array_api_compat.array_namespace(cupy.zeros(1)), cupy.cuda.Device(index)
        except Exception:  # no CuPy, or no GPU for it: try torch
            pass
        try:
            import torch
        except ImportError:
            raise InputError(
                f"`device`={text!r}: neither CuPy nor PyTorch is installed; pip install 'voxfit[gpu]'."
            ) from None
        if not torch.cuda.is_available():
            raise InputError(f"`device`={text!r}: no CUDA GPU is visible here; use the CPU (no --device).")
        return array_api_compat.array_namespace(torch.zeros(1)), torch.device(f"cuda:{index}")
    if text in ("torch", "torch:cpu"):
        try:
            import torch
        except ImportError:
            raise InputError("`device`='torch' needs PyTorch installed.") from None
        return array_api_compat.array_namespace(torch.zeros(1)), torch.device("cpu")
    raise InputError(f"`device` must be cpu, cuda, cuda:N, torch or strict; got {text!r}.")


def to_numpy(xp, array) -> np.ndarray:
    """An array of namespace `xp` back on the host as numpy."""
    if xp is None or isinstance(array, np.ndarray):
        return np.asarray(array)
    if hasattr(array, "get"):  # CuPy
        return array.get()
    if hasattr(array, "cpu"):  # torch
        return array.cpu().numpy()
    return np.asarray(array)  # array-api-strict


def written_zeros(shape, dtype=np.float64) -> np.ndarray:
    """Zeros written into new pages, for sums added to in place (``+=``) while other threads run. ``np.zeros``
    leaves a large array's pages unmapped; the first read of each maps the kernel's shared zero page, and the first
    write then replaces it (copy on write), flushing the page from every core's TLB by an interrupt to each core
    running a thread of the process: a 230k-voxel, 400-scan OLS fit's sums spent 0.18 s of kernel time so, beside a
    decompression. Written first, each page costs one ordinary fault."""
    out = np.empty(shape, dtype=dtype)
    out.fill(0)
    return out


def unit_scale(ssq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the power of two ``2**-e`` that takes its sum of squares `ssq` into [1/4, 1), and ``e`` (1 and
    0 where `ssq` is 0 or not finite): values so scaled keep every digit (a power of two scales exactly), and any
    ratio of their products is the same to the bit, while single precision holds them whatever their units."""
    _, exponent = np.frexp(np.where(np.isfinite(ssq), np.sqrt(ssq), 0.0))
    return np.ldexp(1.0, -exponent), exponent
