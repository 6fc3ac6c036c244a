"""Data held in memory, as Python users hold them: nibabel images, lists of 3-D images, numpy arrays; the
one check of what the readers accept, and how model.json names an input that has no path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from .._array import type_name
from .._digest import CHUNK, new_hash
from ..exceptions import InputError

__all__ = ["DATA_ACCEPTED", "MemoryInput", "check_data", "is_image", "memory_input", "source_label"]


DATA_ACCEPTED = (
    "a path to an image file (or a list of them), a nibabel image, a list of 3-D nibabel images (one "
    "per scan) or a 2-D numpy array (scans, voxels)"
)


def is_image(obj) -> bool:
    """A nibabel image voxfit reads: any volume (NIfTI, Analyze, MGH...), GIFTI or CIFTI-2."""
    return isinstance(obj, (nib.spatialimages.SpatialImage, nib.gifti.GiftiImage, nib.Cifti2Image))


def check_data(data, name: str = "inputs"):
    """`data` in the form :func:`open_reader` takes: a Path, a list of Paths, a nibabel image, a list of nibabel
    images or a numpy array; anything else is an InputError naming `name` and the type received."""
    if isinstance(data, (str, os.PathLike)):
        return Path(data)
    if is_image(data) or isinstance(data, np.ndarray):
        return data
    if isinstance(data, (list, tuple)):
        if not data:
            raise InputError(f"`{name}` is empty; give {DATA_ACCEPTED}.")
        if all(isinstance(x, (str, os.PathLike)) for x in data):
            return [Path(x) for x in data]
        if all(is_image(x) for x in data):
            return list(data)
        kinds = ", ".join(dict.fromkeys(type_name(x) for x in data))
        raise InputError(f"`{name}` must be {DATA_ACCEPTED}; got a {type_name(data)} of {kinds}.")
    raise InputError(f"`{name}` must be {DATA_ACCEPTED}; got {type_name(data)}.")


def source_label(obj) -> str:
    """How messages and model.json name an input, a mask or a map: its path, or what it is in memory."""
    if is_image(obj):
        shape = getattr(obj, "shape", None)  # (a GiftiImage has none: its arrays' lengths)
        shape = tuple(shape) if shape is not None else tuple(np.shape(d.data)[0] for d in obj.darrays)
        return f"in-memory nibabel image ({type(obj).__name__}, shape {shape})"
    if isinstance(obj, np.ndarray):
        return f"in-memory array (shape {obj.shape}, {int(np.count_nonzero(obj))} non-zero)"
    if isinstance(obj, tuple):  # (masks taken together: the elements within all)
        return f"the intersection of {len(obj)} masks: " + ", ".join(source_label(o) for o in obj)
    return str(obj)


@dataclass(frozen=True, eq=False)
class MemoryInput:
    """An input held in memory, as model.json records it: no path, but what it was, its shape and dtype, and a
    BLAKE3 digest of its values (each array's elements in C order, in its dtype), so a run stays describable."""

    source: str  # "in-memory nibabel image" or "in-memory numpy array"
    type: str
    shape: tuple[int, ...]
    dtype: str
    arrays: tuple = field(repr=False, default=())

    def record(self) -> dict:
        h = new_hash()
        for a in self.arrays:
            a = np.asanyarray(a)
            rows = max(1, CHUNK // max(1, a[:1].nbytes)) if a.ndim else 1
            for i in range(0, max(1, a.shape[0] if a.ndim else 1), rows):  # bounded copies of non-contiguous data
                h.update(np.ascontiguousarray(a[i : i + rows] if a.ndim else a).reshape(-1).view(np.uint8))  # (bytes)
        return {
            "source": self.source,
            "type": self.type,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "blake3": h.hexdigest(),
        }


def memory_input(img, values: NDArray) -> MemoryInput:
    shape = tuple(int(n) for n in img.shape)
    return MemoryInput("in-memory nibabel image", type(img).__name__, shape, str(values.dtype), (values,))
