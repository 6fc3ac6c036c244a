"""Readers: every supported file type, seen through one protocol, :class:`Reader` (checked by
``tests/test_readers.py`` on every reader).

Data already in memory take the same protocol: ``open_reader`` accepts a nibabel image (a 4-D or 3-D
volume, GIFTI, CIFTI-2), a list of 3-D nibabel volumes (one per scan) and a 2-D numpy array (scans,
columns); an image loaded from a file that still holds its data there is read from that file. Anything else
is refused by :func:`voxfit.io.memory.check_data` with one sentence naming the argument and the type received.

Uncompressed NIfTI is read a slab of scans at a time on a thread, two slabs ahead of the caller, into three
rotating buffers (:func:`_read_ahead`; the command line's load gathers a mask's voxels from a map of the file
instead, each slab's pages released behind it: ``NiftiReader.mapped_scans``), and blocks of columns by ``pread``
(:func:`_pread_span`: a memory map's pages would count in the process's resident memory); .npy arrays and runs of
3-D scans likewise. Compressed NIfTI is decompressed so too, with the fastest gzip available, so the whole 4-D
image is never in memory.

Sizes in headers are never trusted (hostile or broken files): every reader checks, before it allocates
anything of that size, that its dimensions are positive, that the file can hold what the header promises
(an uncompressed file by its size; a gzip stream can expand at most ``GZIP_MAX_RATIO`` times, and is checked
as it is read: it must not end before the header's data do) and that one scan's working arrays fit the memory
there is (:func:`check_scan_memory`); the data gathered in memory are checked in :mod:`voxfit.io.masking`. A run
that holds a scan's bytes or more after its data is read as nibabel and FSL read it, with a warning
(:func:`extra_data`; a 3-D file without one).
"""

from __future__ import annotations

import binascii
import contextlib
import copy
import functools
import io
import math
import mmap
import os
import queue
import re
import stat
import threading
import warnings
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from .._array import held_as_series, type_name, working_dtype
from .._digest import note_opened
from .._memory import cap_text, check_memory, reserved_bytes, whole_files_cap
from .._threads import Flag
from ..exceptions import InputError
from ._gzip import STREAM_CHUNK, corrupt_gzip, open_gzip, open_gzip_stream
from .checks import check_readable
from .geometry import (
    AFFINE_ATOL,
    ArrayGeometry,
    BrainModels,
    CiftiGeometry,
    Geometry,
    SurfaceGeometry,
    VolumeGeometry,
    brain_models_difference,
    brain_models_fault,
    most_common_geometry,
    same_brain_models,
)
from .memory import MemoryInput, check_data, is_image, memory_input
from .scans import check_scan_run, expand_run, file_identity
from .stores import open_hdf5, open_zarr

__all__ = [
    "ArrayReader",
    "CiftiColumns",
    "CiftiReader",
    "ColumnSource",
    "GiftiReader",
    "HDF5Columns",
    "NiftiColumns",
    "NiftiReader",
    "NpyColumns",
    "NpyReader",
    "Reader",
    "VolumeImageReader",
    "VolumeListReader",
    "ZarrColumns",
    "apply_scale",
    "check_scan_memory",
    "open_map",
    "open_reader",
    "read_mesh",
]

DEFAULT_SLAB_BYTES = 4 << 20


@runtime_checkable
class Reader(Protocol):
    """What every reader offers.

    - ``geometry``: the Geometry of one scan (VolumeGeometry, SurfaceGeometry, CiftiGeometry, ArrayGeometry).
    - ``n_scans``: the number of scans.
    - ``dtype``: the native dtype of the raw values that iter_scans yields (integers stay integers).
    - ``scale``: None, or (slope, inter): the values are slope * raw + inter (NIfTI scl_slope/inter), as
      :func:`apply_scale` computes them.
    - ``paths``: the files read ([] for data in memory).
    - ``in_memory``: () for files; for data in memory (nibabel images, numpy arrays), one MemoryInput per
      object: what it is, shape, dtype, and ``record()`` with a BLAKE3 digest of its values.
    - ``iter_scans(max_bytes)``: an iterator of (first_scan, array (k, n_elements)), in scan order, each array
      at most max_bytes (at least one scan), read sequentially once; an array may be overwritten by the next
      one (copy what you keep).
    - ``column_source(index=None)``: a ColumnSource of the elements `index` (None: all), for a Dask worker to
      read columns itself, with the reader's own way of reading them; None where the files cannot be read by
      columns (compressed NIfTI, GIFTI, compressed or scaled CIFTI, lists of .npy files).
    - optionally, ``scans_into(out, index=None, max_bytes)``: as iter_scans, each slab (of the elements `index`,
      increasing, when given) written straight into its rows of `out` (n_scans, n_elements or len(index)) and
      those rows yielded, for a reader whose files hold scans in another order (CIFTI's grayordinates by
      grayordinate), where a slab is a copy made anyway; with ``series_major`` (bool), whether its files are
      read fastest into an `out` that holds each element's series together (``np.empty((m, n)).T``).
    """

    geometry: Geometry
    n_scans: int
    dtype: np.dtype
    scale: tuple[float, float] | None
    paths: list[Path]
    in_memory: tuple

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]: ...

    def column_source(self, index=None) -> ColumnSource | None: ...


def apply_scale(raw: NDArray, scale: tuple[float, float] | None, dtype=None) -> NDArray:
    """Stored values as the fit sees them: ``slope * raw + inter`` for `scale` ``(slope, inter)``, in `dtype`
    (default: the working dtype of `raw`, float32 for 8- and 16-bit integers), `raw` itself for None. The
    factors are Python floats, so integers are scaled in float64 and float32 values in float32, then rounded
    once to `dtype`. The one rule for scale factors: the data fitted, the masks' thresholds and globals, and
    the columns Dask workers read all use it."""
    if scale is None:
        return raw
    slope, inter = float(scale[0]), float(scale[1])
    return (raw * slope + inter).astype(dtype or working_dtype(raw.dtype, scale))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".dtseries.nii", ".dscalar.nii", ".dtseries.nii.gz", ".dscalar.nii.gz")):
        return "cifti"
    other = next((kind for suffix, kind in _OTHER_CIFTI.items() if name.endswith(suffix)), None)
    if other is not None:
        raise InputError(f"{path}: {other}; voxfit fits dense CIFTI files (.dtseries.nii, .dscalar.nii).")
    if name.endswith(".gii"):
        return "gifti"
    if name.endswith(".npy"):
        return "npy"
    text = str(path).lower()  # (path::group/array: the name is after the last "/")
    if name.endswith((".zarr", ".zarr/")) or ".zarr::" in text:
        return "zarr"
    if name.endswith((".h5", ".hdf5")) or ".h5::" in text or ".hdf5::" in text:
        return "hdf5"
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz", ".hdr.gz")):
        return "nifti"
    if "::" not in text and not os.path.lexists(path):  # (a folder's name mistyped: not a kind of image)
        raise InputError(f"{path}: no such file or folder.")
    raise InputError(
        f"{path}: not an image voxfit can read (expected .nii, .nii.gz, .hdr/.img, .gii, .dtseries.nii, "
        ".dscalar.nii, .npy, .zarr or .h5)."
    )


_PARCELS = (
    "a parcellated CIFTI file (parcels, not grayordinates): fit its rows as a .npy array, scans (or maps) x parcels "
    "(numpy.save('p.npy', nibabel.load(file).get_fdata())), or the dense file"
)
_OTHER_CIFTI = {
    ".ptseries.nii": _PARCELS,
    ".pscalar.nii": _PARCELS,
    ".dlabel.nii": "a CIFTI label file: it holds labels, not data to fit",
    ".plabel.nii": "a CIFTI label file: it holds labels, not data to fit",
    ".dconn.nii": "a CIFTI connectivity matrix, not scans to fit",
    ".pconn.nii": "a CIFTI connectivity matrix, not scans to fit",
    ".pdconn.nii": "a CIFTI connectivity matrix, not scans to fit",
    ".dpconn.nii": "a CIFTI connectivity matrix, not scans to fit",
}


def header_scan_step(reader) -> float | None:
    """The seconds between scans that a 4-D NIfTI header gives (pixdim[4] in seconds, milliseconds or
    microseconds), or a CIFTI file's series map, or a GIFTI run's TimeStep (:func:`_gifti_time_step`), or None where
    the reader has no such header or it gives none (no time unit, or 0)."""
    if isinstance(reader, (CiftiReader, GiftiReader)):
        return reader.scan_step
    header = getattr(getattr(reader, "geometry", None), "header", None)
    if header is None or not hasattr(header, "get_xyzt_units") or len(header.get_zooms()) < 4:
        return None
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(header.get_xyzt_units()[1])
    step = float(header.get_zooms()[3]) * scale if scale else 0.0
    return step if step > 0 else None


def warn_header_tr(reader, tr, name) -> None:
    """A warning where the header of run `name` gives the time between scans (:func:`header_scan_step`) and it is
    not `tr`: a TR copied from another study builds a wrong design silently (FSL and AFNI take the header's; SPM
    and nilearn, as voxfit, the one given)."""
    step = header_scan_step(reader)
    if tr is not None and step is not None and not math.isclose(step, float(tr), rel_tol=0.01):
        warnings.warn(
            f"`tr` {float(tr):g} but the header of {name} gives {step:g} s between scans; the design is built with "
            f"`tr` {float(tr):g}: check which is right.",
            UserWarning,
            stacklevel=3,
        )


class HeaderReadAsWarning(UserWarning):
    """A header field read otherwise than nibabel reads it (a single file's vox_offset inside its header, a NaN
    scl_inter): said once for a run of 3-D scans that share the header (``VolumeListReader``)."""


def load_image(path: Path):
    """nibabel's image object for `path`, with its errors turned into one-line InputErrors; a single file whose
    vox_offset lies inside its header, or whose scl_inter is NaN, which nibabel refuses, read as the NIfTI
    standard and niftilib read it (:func:`_image_nibabel_refuses`)."""
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    check_readable(path)
    header = path.with_suffix(".HDR" if path.suffix == ".IMG" else ".hdr")
    if path.suffix.lower() == ".img" and not header.exists():  # (nibabel: "Cannot work out file type")
        raise InputError(
            f"{path}: the data of an Analyze/NIfTI pair, whose header {header.name} is not beside it; keep the .hdr "
            "with its .img (or give .nii files)."
        )
    try:
        return nib.load(str(path))
    except OSError as exc:
        if exc.errno is not None:  # the system's refusal (permissions, I/O): its reason
            raise InputError.from_os_error(exc, path) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # nibabel raises many types for unreadable files
        img = _image_nibabel_refuses(path, exc) if isinstance(exc, nib.spatialimages.HeaderDataError) else None
        if img is None:
            raise _unreadable(path, exc) from None
        return img


def _image_nibabel_refuses(path: Path, exc: Exception):
    """A single .nii or .nii.gz (NIfTI-1) whose header nibabel refuses, read as the standard or niftilib reads it,
    with one warning: a vox_offset below 352 as 352, as the NIfTI-1 standard says of a single file (niftilib,
    FSL's and AFNI's reader, starts at 348, the header's own size: 4 bytes early for a file written with its data
    at 352); a non-finite scl_inter beside a finite, non-zero scl_slope as 0, as niftilib reads it (FIXED_FLOAT).
    A file too short for its data to start at 352 is refused naming its vox_offset (a .nii.gz once its stream ends
    short: :func:`_data_start_unknown`); None for any other file, or a header with other faults (named by
    :func:`_unreadable`)."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with open_gzip(path) if name.endswith(".gz") else open(path, "rb") as fh:
            header = nib.Nifti1Header(fh.read(348), check=False)  # (the header alone: no extensions read)
            if header["magic"].item() != b"n+1":
                return None
            offset = float(header["vox_offset"])
            if offset >= 352:  # (only the intercept to read otherwise: with its extensions, to keep them)
                fh.seek(0)
                header = nib.Nifti1Header.from_fileobj(fh, check=False)
    except Exception:  # noqa: BLE001 (not a NIfTI-1 header nibabel can parse at all, or broken extensions: refused)
        return None
    read_as = _read_as_the_standard(header)
    try:
        checked = nib.Nifti1Header.from_fileobj(io.BytesIO(header.binaryblock + b"\0" * 4), check=True)
    except Exception:  # noqa: BLE001 (another fault as well)
        return None
    checked.extensions.extend(header.extensions)
    if not read_as:
        return None
    data_bytes = int(np.prod(checked.get_data_shape())) * checked.get_data_dtype().itemsize
    size = None if name.endswith(".gz") else path.stat().st_size
    if offset < 352 and size is not None and size < 352 + data_bytes:
        said = f" (nibabel: {type(exc).__name__}: {exc})"
        raise _data_start_unknown(path, (offset, 352), size, data_bytes, said)
    img = nib.Nifti1Image(nib.arrayproxy.ArrayProxy(str(path), checked), checked.get_best_affine(), checked)
    img.set_filename(str(path))
    warnings.warn(
        f"{path}: read {' and '.join(read_as)}, where nibabel refuses the header; write the file again from its "
        "source to be sure of its data.",
        HeaderReadAsWarning,
        stacklevel=4,
    )
    return img


def _read_as_the_standard(header) -> list[str]:
    """The fields of a single file's NIfTI-1 `header` that nibabel refuses, set in it as the NIfTI-1 standard or
    niftilib reads them (see :func:`_image_nibabel_refuses`), each said as read."""
    read_as = []
    offset, slope, inter = (float(header[key]) for key in ("vox_offset", "scl_slope", "scl_inter"))
    if 0 <= offset < 352:
        header["vox_offset"] = 352
        read_as.append(f"its vox_offset {offset:g} as 352, as the NIfTI-1 standard says of a single file")
    if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
        header["scl_inter"] = 0.0
        read_as.append(f"its scl_inter {inter} as 0, as FSL and AFNI (niftilib) read it")
    return read_as


def _offset_inside_header(path) -> tuple[float, int] | None:
    """``(vox_offset, the header's end)`` of a single NIfTI file whose vox_offset lies inside its header (NIfTI-1:
    0 to 351, read as 352; NIfTI-2: 0 to 543, read as 544; see :func:`_read_as_the_standard`,
    :func:`_data_offset`); None for any other, or a header that cannot be read."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with open_gzip(path) if name.endswith(".gz") else open(path, "rb") as fh:
            head = fh.read(540)
    except Exception:  # noqa: BLE001 (unreadable or corrupt: the error at hand says so)
        return None
    order = _nifti1_order(head) if len(head) >= 348 else None
    if order is not None and head[344:348] == b"n+1\0":
        offset, end = (
            float(np.frombuffer(head, dtype="<f4" if order == "little" else ">f4", count=1, offset=108)[0]),
            352,
        )
    elif len(head) == 540 and head[4:8] == b"n+2\0":
        order = _nifti1_order(head, 540)
        if order is None:
            return None
        offset, end = float(int.from_bytes(head[168:176], order, signed=True)), 544
    else:
        return None
    return (offset, end) if 0 <= offset < end else None


def _data_start_unknown(path, inside: tuple[float, int], held: int, data_bytes: int, said: str = "") -> InputError:
    """The error for a single file whose vox_offset lies inside its header (`inside`: it and the header's end) and
    whose `held` bytes (of a .nii.gz: decompressed) are too few for its data to start at the header's end, as that
    offset is read: written from 348 (NIfTI-1: where niftilib starts), or cut short, no one can tell."""
    (offset, end), decompressed = inside, " (decompressed)" if str(path).lower().endswith(".gz") else ""
    return InputError(
        f"{path}: its vox_offset is {offset:g}, inside its {end}-byte header, and its {held:,} bytes{decompressed} are "
        f"too few for its {data_bytes:,} bytes of data to start at {end}, so where they start is not known: the "
        f"header is broken; write the file again from its source{said}."
    )


def truncated_error(path, held: int, promised: int) -> InputError:
    """The error for a file (a .nii.gz: its stream) that ended after `held` bytes, where its header promises
    `promised`; for a single .nii.gz whose vox_offset lies inside its header (its data then read from the header's
    end), the error that names it (:func:`_data_start_unknown`): its length could not be checked when it was
    opened, as a .nii's is (NiftiReader._check_size), so a .nii ended early was cut short since."""
    inside = _offset_inside_header(path) if str(path).lower().endswith(".gz") else None
    if inside is not None:
        return _data_start_unknown(path, inside, held, promised - inside[1])
    return InputError(
        f"{path}: file is truncated (it ends after {held:,} bytes, where its header promises {promised:,})."
    )


def first_scan(reader) -> NDArray:
    """The first scan of `reader` (a copy), its scale factors applied (float32), as a background image is read. A
    single .nii.gz whose vox_offset lies inside its header is read to its end: only there can it be found too
    short for its data to start at the header's end (a 4-D one's first scan would be read one value off, silently;
    a .nii's length was checked when it was opened)."""
    with contextlib.closing(reader.iter_scans()) as scans:
        first = np.array(apply_scale(next(scans)[1][:1], reader.scale)[0])  # (the read's buffer is used again)
        if getattr(reader, "compressed", False) and _offset_inside_header(getattr(reader, "path", "")) is not None:
            for _ in scans:
                pass
    return first


def repair_copied_header(path: Path) -> None:
    """In a copy of a single NIfTI-1 file that voxfit made itself (a decompressed map), the header fields that
    nibabel refuses set as the original's were read (:func:`_read_as_the_standard`; said of the original then), so
    that opening the copy says nothing of it."""
    with open(path, "r+b") as fh:
        raw = fh.read(348)
        if len(raw) < 348 or _nifti1_order(raw) is None:
            return  # (NIfTI-2, or no header: nothing nibabel refuses that is read otherwise)
        header = nib.Nifti1Header(raw, check=False)
        if header["magic"].item() == b"n+1" and _read_as_the_standard(header):
            fh.seek(0)
            fh.write(header.binaryblock)


def _unreadable(path: Path, exc: Exception) -> InputError:
    first = str(exc).splitlines()[0] if str(exc) else "corrupt"
    said = f"(nibabel: {type(exc).__name__}: {first})"
    misnamed = _misnamed_gzip(path)
    if misnamed is not None:
        return InputError(f"{path}: {misnamed} {said}.")
    fault = _nifti_fault(path)
    if fault is not None:
        return InputError(f"{path}: {fault}: the header is broken; write the file again from its source {said}.")
    if path.name.lower().endswith(".gii") and (fault := _gifti_fault(exc, first)) is not None:
        return InputError(f"{path}: {fault} (nibabel: {type(exc).__name__}: {first}).")
    if (fault := _cifti_extension_fault(path)) is not None:
        return InputError(f"{path}: {fault}: the header is broken; write the file again from its source {said}.")
    if (code := re.fullmatch(r"data code (\d+) not supported", first)) and int(code[1]) in _DATATYPES_UNREAD:
        return InputError(f"{path}: {_DATATYPES_UNREAD[int(code[1])]} {said}.")
    return InputError(f"{path}: not a readable image ({type(exc).__name__}: {first}).")


# NIfTI datatypes of the standard that nibabel reads none of: what to do instead (the message said "not supported")
_DATATYPES_UNREAD = {
    1: "its header's datatype is 1 (DT_BINARY, a bit per voxel), which nibabel does not read; save it as uint8 "
    "(fslmaths in out -odt char, or nibabel with dtype uint8)",
    2048: "its header's datatype is 2048 (DT_COMPLEX256), which nibabel does not read, and voxfit fits real numbers; "
    "save one real value per voxel (its magnitude or real part) as float32",
}


def _cifti_extension_fault(path: Path) -> str | None:
    """What is wrong with the extension of a NIfTI-2 file named as CIFTI (the XML of its grayordinates), read from
    its bytes: a size that is not a multiple of 16 from 16 on, or that runs past the data's offset or the file, a
    code that is not CIFTI's (32); None where it looks whole, or the file is no such NIfTI-2 file. nibabel's words
    had been "does not contain a CIFTI-2 extension", "read length must be non-negative" (a tester's)."""
    if not path.name.lower().endswith((".dtseries.nii", ".dscalar.nii")):
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(552)
        size_of_file = path.stat().st_size
    except OSError:
        return None
    if len(raw) < 552 or int.from_bytes(raw[:4], "little") != 540:
        return None
    offset = int.from_bytes(raw[168:176], "little", signed=True)
    size = int.from_bytes(raw[544:548], "little", signed=True)
    code = int.from_bytes(raw[548:552], "little", signed=True)
    if raw[540] == 0:
        return "its header says it has no extension (byte 540 is 0), where CIFTI keeps the XML of its grayordinates"
    if size < 16 or size % 16 or 544 + size > min(offset, size_of_file):
        return (
            f"its extension's size field gives {size:,} bytes, where the extension must fit in the {offset - 544:,} "
            f"bytes before the data's offset ({offset:,}), a multiple of 16"
        )
    if code != 32:
        return f"its extension's code is {code}, not CIFTI-2's 32"
    return None


_RESHAPE = re.compile(r"cannot reshape array of size (\d+) into shape \(([\d, ]*)\)")


def _gifti_fault(exc: Exception, said: str) -> str | None:
    """What nibabel's refusal of a GIFTI file (`exc`, its first line `said`) means, and what to do: its XML ends
    early or is not XML (expat's "no element found: line 93, column 957"), its data arrays hold other numbers of
    values than their dimensions say (numpy's "cannot reshape array of size 200 into shape (100,)"), or their
    encoded values are corrupt (zlib's, binascii's); None for anything else."""
    from xml.parsers.expat import ExpatError

    if isinstance(exc, ExpatError):
        if said.startswith(("no element found", "unclosed token")):
            return "the file looks truncated (its XML ends before its elements close); copy or export it again"
        return "not valid GIFTI XML; give a GIFTI file (.func.gii, .shape.gii), copied or exported again if it is one"
    reshape = _RESHAPE.search(said) if isinstance(exc, ValueError) else None
    if reshape is not None:
        declared = math.prod(int(n) for n in reshape.group(2).split(",") if n.strip())
        return (
            f"a data array holds {int(reshape.group(1)):,} values where its dimensions (Dim0, Dim1) give "
            f"{declared:,}: the header's dimensions disagree with its data; write the file again from its source"
        )
    if isinstance(exc, (zlib.error, binascii.Error)):
        return "a data array's encoded values are corrupt; copy or export the file again"
    return None


def _misnamed_gzip(path: Path) -> str | None:
    """How a file named .nii, .nii.gz or .hdr is compressed otherwise than its name says (nibabel then says only
    that it cannot work out the file type, or that it is not a gzip file), with the name to give it; None where the
    name is right or the file cannot be read."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".hdr")):
        return None
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if gzipped == name.endswith(".gz"):
            return None
        with open_gzip(path) if gzipped else open(path, "rb") as fh:
            first = fh.read(4)
    except Exception:  # noqa: BLE001 (unreadable, or corrupt gzip: no advice on its name)
        return None
    if len(first) < 4 or not {int.from_bytes(first, e) for e in ("little", "big")} & {348, 540}:
        return None  # (no NIfTI header inside, whatever its name: nibabel's words)
    if gzipped:
        return f"it is gzip-compressed but named {path.suffix}; name it {path.name}.gz"
    return f"it is not gzip-compressed but named .gz; name it {path.name[:-3]}"


def _nifti_fault(path: Path) -> str | None:
    """What is wrong with the header of a file named as NIfTI that nibabel refused, in NIfTI's own terms (its
    words are nibabel's inner state: a dim[0] out of 1-7 in both byte orders reads as "data code 4096 not
    recognized", the header taken as byte-swapped); None where its first 348 bytes show nothing wrong, its first 4
    are not NIfTI-1's 348 (NIfTI-2, or no NIfTI file at all), or the file is not named .nii, .nii.gz or .hdr."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".hdr")):
        return None
    try:
        with open_gzip(path) if name.endswith(".gz") else open(path, "rb") as fh:
            head = fh.read(368)
    except Exception:  # noqa: BLE001 (the file's own fault is then nibabel's words)
        return None
    if 0 < len(head) < 348:  # (an empty file: nibabel says so)
        held = f"{len(head)} bytes{' once decompressed' * name.endswith('.gz')}"
        return f"it holds {held}, fewer than a NIfTI header's 348"
    order = _nifti1_order(head)
    if order is None:  # (NIfTI-2, or no NIfTI at all: nibabel's words stand)
        return None
    single = not name.endswith(".hdr")
    if single and head[344:348] not in (b"n+1\0", b"ni1\0"):  # (nibabel's first refusal: it cannot tell the type)
        return f"its magic string is {bytes(head[344:348])!r}, where a single NIfTI-1 file has b'n+1\\x00'"
    standard, allow = ("NIfTI", "allows") if single else ("NIfTI and Analyze", "allow")
    dims = int.from_bytes(head[40:42], order, signed=True)
    if not 1 <= dims <= 7:
        return f"its dim[0] (the number of dimensions) is {dims}, where {standard} {allow} 1 to 7"
    code = int.from_bytes(head[70:72], order, signed=True)
    if code not in nib.nifti1.data_type_codes.code:
        return f"its datatype code is {code}, not a data type of {standard}"
    return _nifti_field_fault(head, order, single)


def _nifti1_order(head: bytes, sizeof_hdr: int = 348) -> str | None:
    """The byte order ("little", "big") in which a header's first 4 bytes read NIfTI-1's sizeof_hdr, 348 (NIfTI-2's,
    540, with `sizeof_hdr`); None."""
    return {int.from_bytes(head[:4], endian, signed=True): endian for endian in ("little", "big")}.get(sizeof_hdr)


def _nifti_field_fault(head: bytes, order: str, single: bool) -> str | None:
    """A NIfTI-1 header's scaling, data offset and first extension, where nibabel refuses them and they were not
    read as the standard or niftilib reads them (:func:`_image_nibabel_refuses`: a pair's, or beside another
    fault): a finite slope with a non-finite intercept, a vox_offset that is negative or not a number, a single
    file's vox_offset inside its header, an extension of fewer than 8 bytes."""
    end = ">" if order == "big" else "<"
    slope, inter = np.frombuffer(head[112:120], dtype=f"{end}f4")
    if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
        return f"its scl_inter is {inter} beside scl_slope {slope}: a scaled file needs a finite intercept"
    offset = float(np.frombuffer(head[108:112], dtype=f"{end}f4")[0])
    if not np.isfinite(offset) or offset < 0:
        return f"its vox_offset is {offset:g}, which places its data nowhere in the file"
    if single and head[344:348] == b"n+1\0" and 0 < offset < 352:
        return f"its vox_offset is {offset:g}, inside its 352-byte header, so where its data start is not known"
    if single and len(head) >= 360 and head[348] != 0 and offset >= 360:  # (extensions lie between 352 and the data)
        size = int.from_bytes(head[352:356], order, signed=True)
        if size < 8:
            return f"its first header extension gives its size as {size} bytes, where an extension takes at least 8"
    return None


def _scale(proxy) -> tuple[float, float] | None:
    """(slope, inter) of an image's data (nibabel moves scl_slope/inter, or SPM's funused1, to the proxy)."""
    slope, inter = getattr(proxy, "slope", None), getattr(proxy, "inter", None)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


READ_CHUNK = 1 << 20  # bytes per read call (see _read_into)
GZIP_DRAIN_CHUNKS = 64  # of READ_CHUNK: how far a gzip stream longer than its header says is read on for its CRC

# Deflate expands at most 1032:1 (258 bytes from a 2-bit code, plus block overhead; Mark Adler, zlib FAQ), so a
# gzip file of n bytes holds at most ~1032 n bytes of data, whatever its header says; a margin for small files.
GZIP_MAX_RATIO = 1032
GZIP_MARGIN = 1 << 16

# Working memory per element of one scan while reading (io.masking.gather_auto, AutoMask): three rotating slab
# buffers (read ahead, see _read_ahead: NIfTI, a run of 3-D NIfTI scans, .npy), a copy in native byte order and
# the first scan in the stored type, six boolean vectors and an index (8 bytes) per element.
SCAN_BUFFERS = 5
SCAN_OVERHEAD = 14


def check_scan_memory(reader, source: str, max_memory=None) -> None:
    """Refuse a reader whose single scan (with the per-element arrays of the automatic mask) cannot fit the
    memory there is (or `max_memory`), before any of it is allocated: a header's dimensions are only claims."""
    nel = int(reader.geometry.n_elements)
    buffers = SCAN_BUFFERS if isinstance(reader, (NiftiReader, VolumeListReader, NpyReader)) else 2  # a slab, a copy
    need = nel * (buffers * np.dtype(reader.dtype).itemsize + SCAN_OVERHEAD)
    check_memory(
        need,
        f"{source}: one scan of {nel:,} elements (as its header says)",
        max_memory,
        "Check the file's dimensions; voxfit reads one scan at a time, so one scan must fit.",
    )


def _check_file_holds(path: Path, img) -> None:
    """An uncompressed image file holds at least what its header promises (a gzip file at most expands
    GZIP_MAX_RATIO times)."""
    proxy = img.dataobj
    if not hasattr(proxy, "offset"):
        return
    need = int(proxy.offset) + int(np.prod([int(n) for n in img.shape], dtype=object)) * np.dtype(proxy.dtype).itemsize
    have = path.stat().st_size
    limit = GZIP_MAX_RATIO * have + GZIP_MARGIN if path.name.lower().endswith(".gz") else have
    if need > limit:
        raise InputError(f"{path}: file is truncated ({have:,} bytes; the header promises {need:,}).")


_GIFTI_ARRAY = re.compile(rb"<DataArray\b([^>]*)>")
_GIFTI_EXTERNAL = re.compile(rb'\bEncoding\s*=\s*"\s*ExternalFileBinary\s*"')
_GIFTI_EXTERNAL_NAME = re.compile(rb'\bExternalFileName\s*=\s*"([^"]{0,200})')
_GIFTI_DIM = re.compile(rb'\bDim\d+\s*=\s*"\s*(-?\d+)\s*"')
_GIFTI_GZIP = re.compile(rb'\bEncoding\s*=\s*"\s*GZipBase64Binary\s*"')
_GIFTI_TYPE = re.compile(rb'\bDataType\s*=\s*"\s*NIFTI_TYPE_([A-Z0-9]+)\s*"')
# a compressed array inflated by nibabel (a bomb's refused at the first) costs at most this beyond its dimensions
# unchecked; one that could cost more is inflated here first, counted
_GIFTI_SLACK = 64 << 20
_GIFTI_BYTES = {b"UINT8": 1, b"INT8": 1, b"INT16": 2, b"UINT16": 2, b"INT32": 4, b"UINT32": 4, b"FLOAT32": 4}
_GIFTI_ENCODING = re.compile(rb'\bEncoding\s*=\s*"\s*(ASCII|Base64Binary|GZipBase64Binary)\s*"')


def _gifti_data(text, end: int) -> tuple[int, int] | None:
    """Where the ``<Data>`` element of the data array whose tag ends at `end` of `text` lies: the index of its
    ``<Data>`` and of its ``</Data>``; None where it has none of its own before the next array (nibabel's to read
    or refuse)."""
    start, following = text.find(b"<Data>", end), text.find(b"<DataArray", end)
    stop = text.find(b"</Data>", start)
    if start < 0 or stop < 0 or 0 <= following < start:
        return None
    return start, stop


def _check_gifti_payload(path: Path, text, end: int, attributes: bytes, dims: list[int]) -> None:
    """A data array (its tag's `attributes`, its contents from `end` of `text`) declares no more values than its
    encoded data can hold: Base64 gives 3 bytes for 4 characters, a compressed stream inflates at most
    GZIP_MAX_RATIO times, ASCII takes two characters a value at least. A file whose Dim0 claimed 2,000,000,000
    values over 200 was refused as numpy's "cannot reshape array of size 200 into shape (2000000000,)", after
    the declared sizes were checked against the memory as though they were true. An array whose data cannot be
    found here is nibabel's to read or refuse."""
    encoding, kind, span = _GIFTI_ENCODING.search(attributes), _GIFTI_TYPE.search(attributes), _gifti_data(text, end)
    if encoding is None or span is None:
        return
    chars, itemsize = span[1] - span[0] - len(b"<Data>"), _GIFTI_BYTES.get(kind.group(1) if kind else b"", 1)
    most = {
        b"ASCII": (chars + 1) // 2 * itemsize,
        b"Base64Binary": chars * 3 // 4,
        b"GZipBase64Binary": chars * 3 // 4 * GZIP_MAX_RATIO + GZIP_MARGIN,
    }[encoding.group(1)]
    values = int(np.prod(dims, dtype=object))
    if values * itemsize > most:
        raise InputError(
            f"{path}: a data array's dimensions {tuple(dims)} declare {values:,} values, more than its "
            f"{chars:,} characters of {encoding.group(1).decode()} data can hold: the header's dimensions disagree "
            "with its data (a broken file); write it again from its source."
        )


def _check_gifti_inflation(path: Path, text, end: int, attributes: bytes, dims: list[int]) -> None:
    """A GZipBase64Binary data array (its tag's `attributes`, its contents from `end` of `text`) inflates to no
    more than its dimensions and type hold, inflated in pieces and counted, not kept: nibabel inflates the whole
    payload before it compares it with them (a 4 MB file declaring 300 values inflated to 3 GiB, 6 GB resident
    under --max-memory 500M). Only an array whose payload could inflate more than _GIFTI_SLACK beyond its
    dimensions (GZIP_MAX_RATIO times its bytes) is inflated: per-scan arrays cost nothing, a run in one array (12 MB
    of fsaverage5 scans) 0.14 s. An array whose payload cannot be found here is nibabel's to read or refuse."""
    span = _gifti_data(text, end) if _GIFTI_GZIP.search(attributes) else None
    if span is None:
        return
    kind = _GIFTI_TYPE.search(attributes)
    declared = int(np.prod(dims, dtype=object)) * _GIFTI_BYTES.get(kind.group(1) if kind else b"", 8)
    if (span[1] - span[0]) * 3 // 4 * GZIP_MAX_RATIO <= declared + _GIFTI_SLACK:
        return  # (it cannot inflate much beyond its dimensions: an fsaverage5 scan's array, at most 42 MB)
    try:
        payload = binascii.a2b_base64(text[span[0] + len(b"<Data>") : span[1]])
    except binascii.Error:
        return
    inflater, inflated = zlib.decompressobj(), 0
    for start in range(0, len(payload), 1 << 20):
        piece = payload[start : start + (1 << 20)]
        while piece:
            try:
                inflated += len(inflater.decompress(piece, 1 << 20))
            except zlib.error:
                return
            if inflated > declared:
                raise InputError(
                    f"{path}: a data array's compressed values inflate beyond the {declared:,} bytes its "
                    "dimensions declare (Dim0, Dim1, DataType): the file is broken or not what it says; write it "
                    "again from its source."
                )
            piece = inflater.unconsumed_tail


def _check_gifti_sizes(path: Path) -> None:
    """The data arrays a GIFTI file declares (its DataArray tags' Dim0, Dim1...) fit the memory there is, before
    nibabel decodes them; dimensions must be positive, and a compressed array inflates to no more than they hold
    (:func:`_check_gifti_inflation`). Bounded by the file: the tags are read, and compressed data counted, not
    kept."""
    if not path.is_file():
        return
    check_readable(path)
    total = 0
    if path.stat().st_size == 0:
        return  # (nibabel refuses it)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as text:  # no copy of the file
        for tag in _GIFTI_ARRAY.finditer(text):
            if _GIFTI_EXTERNAL.search(tag.group(1)):  # voxfit reads only the input it is given
                where = _GIFTI_EXTERNAL_NAME.search(tag.group(1))
                other = f" ({where.group(1).decode('utf-8', 'replace')})" if where else ""
                raise InputError(
                    f"{path} keeps its data in another file{other} (GIFTI ExternalFileBinary); voxfit "
                    "reads only the input file: save the data inside it (Base64Binary or "
                    "GZipBase64Binary)."
                )
            dims = [int(d) for d in _GIFTI_DIM.findall(tag.group(1))]
            _check_dimensions(path, dims)
            _check_gifti_payload(path, text, tag.end(), tag.group(1), dims)
            total += int(np.prod(dims, dtype=object)) * 8 if dims else 0  # (decoded, then as float64 at most)
            _check_gifti_inflation(path, text, tag.end(), tag.group(1), dims)
    cap = whole_files_cap()
    data = total
    total += reserved_bytes() if cap is not None else 0  # (a cap holds the interpreter and its libraries too)
    held = " (with Python and its libraries)" if cap is not None else ""
    if cap is not None and data <= reserved_bytes() // 16:  # (kilobytes of data: the cap is the interpreter's)
        fix = f"The file is small: give --max-memory {cap_text(total)} or more."
    elif cap is not None:
        fix = (
            "Check the file's dimensions (DataArray Dim0, Dim1); a GIFTI file is decoded whole (as float64 at most): "
            "give a larger --max-memory, or the data as .npy or CIFTI, read a block at a time."
        )
    else:
        fix = "Check the file's dimensions (DataArray Dim0, Dim1)."
    check_memory(total, f"{path}: the data arrays its header declares{held}", cap, fix)


def _check_dimensions(path, shape) -> None:
    if any(int(n) < 1 for n in shape):
        raise InputError(
            f"{path}: the header gives dimensions {tuple(int(n) for n in shape)}; every dimension must be "
            "a positive whole number (a broken or hostile header)."
        )


def _scan_dimensions(path, shape) -> list[int]:
    """The dimensions beyond the third that are not 1: the number of scans, or none for one scan. A 5-D or longer
    shape whose extra dimensions are 1 stores its values as the 4-D one does: (x, y, z, t, 1), which some writers
    give a run, and AFNI's (x, y, z, 1, t), whose fifth dimension AFNI reads as the scans (FSL reads one volume;
    said in a warning). More than one such dimension (x, y, z, t, 2) is no run of scans: refused."""
    beyond = [int(n) for n in shape[3:] if int(n) != 1]
    if len(beyond) > 1:
        raise InputError(
            f"{path}: its dimensions beyond x, y and z are {tuple(int(n) for n in shape[3:])}, where a run has one, "
            "its scans; split it into 4-D runs (e.g. nibabel's slicer, or fslsplit) and give one."
        )
    if beyond and len(shape) > 4 and int(shape[3]) == 1:
        afni = ", as AFNI writes them" if int(shape[4]) == beyond[0] else ""
        warnings.warn(
            f"{path}: its shape {tuple(int(n) for n in shape)} keeps its {beyond[0]} scans in a dimension after the "
            f"fourth{afni}; read as those scans (FSL would read one volume).",
            UserWarning,
            stacklevel=3,
        )
    return beyond


def _check_numeric(path, dtype, header=None) -> None:
    """Refuse stored types that are not real numbers: RGB, complex, structured."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf" or dtype.fields is not None:
        # NIfTI's name for it (RGB, complex64...), else numpy's
        label = header.get_value_label("datatype") if isinstance(header, nib.analyze.AnalyzeHeader) else str(dtype)
        raise InputError(
            f"{path}: the data type is {label}; voxfit fits real numbers (integer or float data; "
            "convert RGB or complex images to one real value per voxel first)."
        )


def _ramped(n: int, k: int) -> Iterator[tuple[int, int]]:
    """``(start, count)`` of slabs covering `n` scans: 1, 2, 4... scans, then `k` at a time."""
    start, count = 0, 1
    while start < n:
        c = min(count, k, n - start)
        yield start, c
        start, count = start + c, 2 * count


def _slab_scans(n_elements: int, itemsize: int, max_bytes: int) -> int:
    return max(1, int(max_bytes) // max(1, n_elements * itemsize))


def _affine(img) -> NDArray[np.float64]:
    """A volume's voxel-to-world affine: an image made in memory without one (``Nifti1Image(data, None)``) takes
    its header's (from its pixdim)."""
    return np.asarray(img.affine if img.affine is not None else img.header.get_best_affine(), dtype=np.float64)


def _check_orientation(where: str, img) -> None:
    """A volume's voxel sizes and orientation are finite, and its affine maps the grid onto a volume (the maps
    written back carry it, and RFT, the report and the masks' checks use it). nibabel sets a zero pixdim to 1,
    so only an sform can be singular."""
    affine = _affine(img)
    if not np.isfinite(affine).all() or not np.isfinite(img.header.get_zooms()[:3]).all():
        raise InputError(
            f"{where}: its header gives non-finite voxel sizes or orientation (pixdim, sform/qform); fix the header "
            "(e.g. nibabel's set_zooms) before fitting."
        )
    if np.linalg.matrix_rank(affine[:3, :3]) < 3:
        raise InputError(
            f"{where}: its header's orientation (sform) maps the voxels onto a plane, a line or a point; fix it "
            "(e.g. FSL's fslorient -copyqform2sform, or sform_code 0 so that the qform is used) before fitting."
        )


_SPM_MAT_BYTES = 64 * 2**20  # the largest SPM .mat sidecar read (4 x 4 doubles a scan: 500,000 scans)
_SPM_ATOL = 1e-4  # SPM12's spm_check_orientations (which spm_spm calls): consecutive scans' matrices differing more


def _moved(mats: list) -> int | None:
    """The first scan whose matrix differs from the one before it by more than SPM's tolerance (as
    spm_check_orientations compares them: scans drifting 2e-5 a scan pass), or None."""
    return next((k for k in range(1, len(mats)) if not np.allclose(mats[k], mats[k - 1], rtol=0, atol=_SPM_ATOL)), None)


def _check_spm_mat(path: Path, affine: NDArray, n_scans: int) -> None:
    """An uncompressed image's SPM sidecar, ``name.mat`` (the voxel-to-world matrix of each scan, ``mat``, 1-based,
    or one ``M``), which SPM reads in place of the header's and nibabel, FSL and voxfit do not: scans it places
    apart (SPM's Realign "Estimate" of a 4-D file, not resliced) are refused, as SPM refuses to fit them; one
    placement other than the header's is said (the maps carry the header's); one that cannot be read too. A scan's
    matrix of zeros is the header's, as SPM reads it (a .mat of the first scan's alone)."""
    mats = _spm_mats(path)
    if mats is None:
        return
    mats = mats[:, :, :n_scans].copy()
    blank = ~mats.any(axis=(0, 1))  # (SPM reads a scan's matrix of zeros, as spm_vol writes it, as the header's)
    mats[:, :, blank] = _spm_matrix(affine)[:, :, None]
    moved = _moved([mats[:, :, k] for k in range(mats.shape[2])])
    if moved is not None:
        raise InputError(
            f"{path}: its SPM sidecar {_spm_sidecar(path).name} places its scans apart (scan {moved + 1} moved from "
            f"scan {moved}: realigned by SPM, not resliced), and SPM would refuse to fit them too; {_RESLICE}."
        )
    _check_spm_placement(path, mats[:, :, 0], affine)


def _check_scans_spm_mats(readers) -> None:
    """:func:`_check_spm_mat` for a run held as one 3-D file a scan (SPM's own layout): each scan is where its
    sidecar places it, or its header where it has none, and scans placed apart are refused, as SPM's fit refuses
    them (an Analyze or NIfTI run realigned by SPM's "Estimate" alone: scan 1 untouched, every other with its own
    .mat); one placement other than the headers', and sidecars that cannot be read, are said once."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        sidecars = [(r.path, _spm_mats(r.path)) for r in readers if _spm_sidecar(r.path) is not None]
    unread = [w for w in said if issubclass(w.category, HeaderReadAsWarning)]
    for w in said:
        if not issubclass(w.category, HeaderReadAsWarning):
            warnings.warn(str(w.message), w.category, stacklevel=4)
    if unread:
        more = f" The sidecars of {len(unread) - 1} other scan(s) could not be read either." if len(unread) > 1 else ""
        warnings.warn(f"{unread[0].message}{more}", HeaderReadAsWarning, stacklevel=4)
    if not sidecars:
        return
    held = dict(sidecars)
    placed = [
        held[r.path][:, :, 0] if held.get(r.path) is not None else _spm_matrix(r.geometry.affine) for r in readers
    ]
    moved = _moved(placed)
    if moved is not None:
        raise InputError(
            f"{readers[moved].path}: the SPM .mat sidecars place image {moved + 1} apart from image {moved}, and SPM "
            f"would refuse to take them together too: the scans of a run SPM's Realign: Estimate left unresliced "
            f"({_RESLICE}), or subjects' maps not written in one space (write them on one grid: SPM's Normalise: "
            "Write, or reslice them to one image)."
        )
    path, mats = next(((p, m) for p, m in sidecars if m is not None), (None, None))
    if mats is not None:
        _check_spm_placement(path, mats[:, :, 0], readers[0].geometry.affine)


_RESLICE = (
    "reslice them first (SPM Realign: Estimate & Reslice, then fit the r-prefixed files), or remove the .mat "
    "sidecars if the images are already resliced"
)


def _spm_sidecar(path: Path) -> Path | None:
    """An image's SPM sidecar ``name.mat`` where it has one (only uncompressed images: SPM writes none for .gz)."""
    if not path.name.lower().endswith((".nii", ".hdr", ".img")):
        return None
    sidecar = path.with_suffix(".mat")
    return sidecar if sidecar.is_file() else None


def _spm_mats(path: Path) -> NDArray | None:
    """The 4 x 4 x k matrices of an image's SPM sidecar (:func:`_spm_sidecar`), or None where it has none or it
    cannot be read (said: the header's orientation is then used, as nibabel and FSL use it)."""
    sidecar = _spm_sidecar(path)
    if sidecar is None:
        return None
    try:
        size = sidecar.stat().st_size
        if size > _SPM_MAT_BYTES:
            raise ValueError(f"{size:,} bytes")
        from scipy.io import loadmat

        held = loadmat(sidecar, variable_names=["mat", "M"])
        mats = np.asarray(held["mat"] if "mat" in held else held["M"], dtype=np.float64)
        if mats.ndim == 2:
            mats = mats[:, :, None]
        if mats.shape[:2] != (4, 4) or mats.ndim != 3 or mats.shape[2] < 1 or not np.isfinite(mats).all():
            raise ValueError(f"not 4 x 4 matrices of numbers: shape {mats.shape}")
    except Exception as exc:  # noqa: BLE001 (any file at all: said, and not read, as nibabel does)
        warnings.warn(
            f"{path}: its SPM sidecar {sidecar.name} could not be read ({type(exc).__name__}: {exc}); the header's "
            "orientation is used, as nibabel and FSL use it (SPM would read the .mat's).",
            HeaderReadAsWarning,
            stacklevel=4,
        )
        return None
    return mats


def _spm_matrix(affine: NDArray) -> NDArray:
    """A header's voxel-to-world matrix as SPM writes it in a .mat: voxels counted from 1."""
    return affine @ _SPM_FROM_ZERO


_SPM_FROM_ZERO = np.array([[1.0, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1], [0, 0, 0, 1]])


def _check_spm_placement(path: Path, mat: NDArray, affine: NDArray) -> None:
    """Say where an SPM sidecar's matrix `mat` places an image otherwise than its header's `affine`."""
    if not np.allclose(mat, _spm_matrix(affine), rtol=0, atol=AFFINE_ATOL):
        warnings.warn(
            f"{path}: its SPM sidecar {path.with_suffix('.mat').name} places the image otherwise than its header (SPM "
            "reads the .mat's, nibabel and FSL the header's); the maps carry the header's: remove the stale .mat, or "
            "write it into the header.",
            HeaderReadAsWarning,
            stacklevel=4,
        )


def _data_offset(path: Path, img) -> int:
    """Where a NIfTI image's data begin in its file: at its header's vox_offset, except that a single file's data
    never start before the end of its header, byte 352 (NIfTI-2: 544), as the NIfTI-1 standard says of a smaller
    vox_offset ("equivalent to 352"; niftilib, FSL's and AFNI's reader, starts at 348). nibabel (5.4) refuses 1 to
    351 (read as the standard says by :func:`_image_nibabel_refuses`) but reads 0 as 0, a header written from a
    nibabel image's own (which holds 0) or by a converter's slip: the header's bytes were the first voxels'
    values, every later value shifted, in maps fitted without a word."""
    offset = int(img.dataobj.offset)
    least = 544 if isinstance(img, nib.Nifti2Image) else 352
    if not isinstance(img, nib.Nifti1Image) or offset >= least:  # (a pair's .img holds data alone: any offset)
        return offset
    warnings.warn(
        f"{path}: its header's vox_offset is {offset}; read as {least}, as the NIfTI standard says (a single "
        f"file's data never start before byte {least}).",
        HeaderReadAsWarning,
        stacklevel=3,
    )
    return least


class NiftiReader:
    """A NIfTI-1/NIfTI-2 or Analyze image, 4-D (or 3-D as one scan when `allow_3d`), .nii, .nii.gz or .hdr/.img."""

    in_memory = ()

    def __init__(self, path, allow_3d: bool = False, spm_sidecar: bool = True):
        """`spm_sidecar`: check an SPM .mat beside the image (:func:`_check_spm_mat`); a run of 3-D files checks
        its scans' together (:func:`_check_scans_spm_mats`)."""
        self.path = Path(path)
        img = load_image(self.path)
        if not isinstance(img, nib.analyze.AnalyzeImage) or isinstance(img, nib.Cifti2Image):
            cifti = isinstance(img, nib.Cifti2Image)
            raise InputError(
                f"{self.path}: a CIFTI-2 file named as a volume; name a dense one .dtseries.nii or .dscalar.nii."
                if cifti
                else f"{self.path}: not a NIfTI or Analyze volume image."
            )
        _check_orientation(str(self.path), img)
        shape = img.shape
        if len(shape) > 3 and min(shape[:3]) >= 1:  # (a 3-D scan of old writers, dim[4] = 0: niftilib, FSL, SPM read 1)
            shape = shape[:3] + tuple(max(int(n), 1) for n in shape[3:])
        _check_dimensions(self.path, shape)
        beyond = _scan_dimensions(self.path, shape)
        if len(shape) == 3 or (allow_3d and not beyond):
            if not allow_3d:
                raise InputError(
                    f"{self.path} is a 3-D image (one scan); give a 4-D image, or several 3-D files, one per scan."
                )
            n_scans = 1
        else:
            n_scans = beyond[0] if beyond else 1
        self._run = not allow_3d or n_scans > 1  # (a run of scans: bytes after its data are warned of)
        proxy = img.dataobj
        _check_numeric(self.path, proxy.dtype, img.header)
        self.geometry = VolumeGeometry(tuple(int(s) for s in shape[:3]), img.affine.astype(np.float64), img.header)
        self.n_scans = int(n_scans)
        if spm_sidecar:
            _check_spm_mat(self.path, self.geometry.affine, self.n_scans)
        self._file_dtype = np.dtype(proxy.dtype)
        self.dtype = self._file_dtype.newbyteorder("=")
        self.scale = _scale(proxy)
        self._offset = _data_offset(self.path, img)
        self._image_file = Path(img.file_map["image"].filename)
        # every file read: a pair named by its .img has its .hdr too (model.json records both)
        header = img.file_map.get("header")  # (a single file has its image only)
        header_file = Path(header.filename) if header is not None and header.filename else self.path
        self.paths = list(dict.fromkeys([self.path, header_file, self._image_file]))
        self._compressed = self._image_file.name.lower().endswith(".gz")
        if proxy.order != "F":
            raise InputError(f"{self.path}: unsupported data layout (order {proxy.order}).")
        if self._image_file != self.path:  # an Analyze/NIfTI pair: the .img must be there and readable
            if not self._image_file.exists():
                raise InputError(
                    f"{self._image_file}: no such file (the data of {self.path}); keep the .img beside "
                    "its .hdr, with the same name."
                )
            check_readable(self._image_file, "image data")
        self._data_bytes = self.n_scans * self.geometry.n_elements * self._file_dtype.itemsize
        self._shape = tuple(shape)
        self._check_size()

    def _check_size(self) -> None:
        """The file holds the data its header promises (an uncompressed one at least as many bytes, a warning where
        a run holds a scan's bytes more; a compressed one no fewer than gzip can expand to them). A 3-D file (a scan
        of a run of them, a mask, a map) is read as nibabel reads it, without a word: the advice on a number of
        scans is not for it, and a run of 400 such scans would repeat it 400 times."""
        need = self._offset + self._data_bytes
        have = self._image_file.stat().st_size
        if not self._compressed and have < need:
            if (inside := _offset_inside_header(self._image_file)) is not None:
                raise _data_start_unknown(self._image_file, inside, have, self._data_bytes)
            if self._offset > have:
                shown = f"{self._offset:,}" if self._offset < 10**15 else f"{float(self._offset):.3g}"
                raise InputError(
                    f"{self._image_file}: its vox_offset is {shown}, beyond the end of its {have:,} bytes: the file "
                    "is truncated or its header is wrong."
                )
            raise InputError(f"{self._image_file}: file is truncated ({have} bytes; the header promises {need}).")
        scan = self.geometry.n_elements * self._file_dtype.itemsize
        if not self._compressed and self._run and have - need >= scan:
            warnings.warn(extra_data(self._image_file, have - need, scan), UserWarning, stacklevel=3)
        if self._compressed and need > GZIP_MAX_RATIO * have + GZIP_MARGIN:
            most = GZIP_MAX_RATIO * have + GZIP_MARGIN
            raise InputError(
                f"{self._image_file}: the header promises {need:,} bytes ({' x '.join(map(str, self._shape))} "
                f"{self._file_dtype}) but {have:,} bytes of gzip can hold at most {most:,}; the file is "
                "truncated or its header is wrong."
            )

    @property
    def image_file(self) -> Path:
        """The file that holds the data (the .img of an Analyze or NIfTI pair)."""
        return self._image_file

    def of_same_header(self, path) -> NiftiReader:
        """This reader for another single-file image whose :func:`_nifti1_key` is this one's (a scan of the same
        run, as SPM writes them): the same geometry, type, scale factors and offset, without nibabel's parse of
        the header (0.5 ms a file); the file's size is checked as the constructor checks it."""
        other = copy.copy(self)
        other.path = other._image_file = Path(path)
        other.paths = [other.path]
        other._compressed = other.path.name.lower().endswith(".gz")
        other._check_size()
        return other

    @property
    def data_offset(self) -> int:
        """Where the data begin in :attr:`image_file` (bytes; in the decompressed stream of a .gz file)."""
        return self._offset

    @property
    def file_dtype(self) -> np.dtype:
        """The stored type, byte order included."""
        return self._file_dtype

    @property
    def compressed(self) -> bool:
        """Whether the data are gzip-compressed (read front to back only)."""
        return self._compressed

    def column_source(self, index=None) -> ColumnSource | None:
        """The data by columns (None for a compressed file: it can only be read front to back)."""
        if self._compressed:
            return None
        nel = self.geometry.n_elements
        columns = NiftiColumns(((str(self._image_file), self._offset),), self._file_dtype, self.n_scans, nel)
        return ColumnSource(columns, self._file_dtype, self.n_scans, nel, scale=self.scale, index=index)

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        nel = self.geometry.n_elements
        k = _slab_scans(nel, self.dtype.itemsize, max_bytes)
        if not self._compressed:
            yield from self._iter_raw(nel, k)
            return
        yield from self._iter_gz(nel, k)

    def _iter_raw(self, nel: int, k: int) -> Iterator[tuple[int, NDArray]]:
        """See :func:`_read_slabs`. (A memory map per slab faulted in every page of the file anew: 0.92 s for a
        1.6 GB run that one read pass takes in 0.26 s; see :meth:`mapped_scans` for one map of the whole file.)"""
        yield from _read_slabs(self._image_file, self._offset, self._file_dtype, (self.n_scans, nel), k)

    def mapped_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]] | None:
        """What :meth:`iter_scans` yields, as read-only views of one map of the whole file (:func:`_mapped_slabs`),
        rather than read into a buffer; None for a compressed file, a byte order not the machine's, an offset not
        aligned to the data type, or a file system that maps no files. Only where the slabs never leave the load
        (``load(map_files=True)``: the command line): a file cut short by another program while it is read ends the
        process with SIGBUS, as for :meth:`CiftiReader.mapped_series`."""
        dtype = self._file_dtype
        if self._compressed or not dtype.isnative or self._offset % dtype.itemsize or not _MAPS_RELEASED:
            return None
        nel = self.geometry.n_elements
        k = _slab_scans(nel, dtype.itemsize, max_bytes)
        return _mapped_slabs(self._image_file, self._offset, dtype, (self.n_scans, nel), k)

    def _iter_gz(self, nel: int, k: int) -> Iterator[tuple[int, NDArray]]:
        """Decompress on a thread (:func:`_read_ahead`), the first slabs 1, 2, 4... scans, so that the caller
        starts early. The decompressor releases the GIL, so the next slab is decompressed while the caller gathers
        the masked voxels of this one: loading costs ~1.1x a bare decompression instead of ~1.4x."""
        path, offset = self._image_file, self._offset
        scan, end = nel * self._file_dtype.itemsize, offset + self._data_bytes

        @contextmanager
        def opened():
            with open_gzip_stream(path) as fh:
                skip = np.empty(min(offset, READ_CHUNK), dtype=np.uint8)
                for done in range(0, offset, READ_CHUNK):  # (a header's offset: skipped, never allocated)
                    _read_into(fh, skip[: min(READ_CHUNK, offset - done)], path, at=done, total=end)
                yield fh

        def fill(fh, slab, start):
            _read_into(fh, slab, path, STREAM_CHUNK, offset + start * scan, end)

        def finish(fh) -> str | None:
            """A run's scan's bytes or more after the data are warned of, as in a .nii (:func:`read_on`)."""
            extra, ended = read_on(fh)
            return extra_data(path, extra, scan, not ended) if self._run and (extra >= scan or not ended) else None

        def failed(exc):  # zlib.error, EOFError, OSError, isal's IsalError...: all mean corrupt data
            return exc if isinstance(exc, InputError) else corrupt_gzip(path, exc)

        slabs = _ramped(self.n_scans, k)
        shape = (min(k, self.n_scans), nel)
        yield from _read_ahead(opened, fill, slabs, shape, self._file_dtype, finish=finish, failed=failed)


def read_on(fh) -> tuple[int, bool]:
    """Read a gzip stream on to its end after the data its header describes, at most GZIP_DRAIN_CHUNKS of
    READ_CHUNK (a bomb after the data is not read): the trailer's CRC and length are checked there, so a corrupt
    stream says so. Returns the bytes read and whether the stream ended."""
    extra = 0
    for _ in range(GZIP_DRAIN_CHUNKS):
        if not (got := len(fh.read(READ_CHUNK))):
            return extra, True
        extra += got
    return extra, not fh.read(1)


def extra_data(path, extra: int, scan: int, at_least: bool = False) -> str:
    """The warning of a file that holds `extra` bytes after the data its header describes (scans of `scan` bytes):
    they are not read, as nibabel and FSL do not read them; a header whose number of scans is short would leave
    scans out, so whole scans' worth are counted."""
    scans = f", as many as {extra // scan} scan(s)" if scan and extra >= scan and not extra % scan else ""
    held = f"at least {extra:,}" if at_least else f"{extra:,}"
    return (
        f"{path}: it holds {held} bytes after the data its header describes{scans}; they are not read (as nibabel "
        "and FSL do not): check the header's number of scans if it should hold more."
    )


def _read_ahead(opened, fill, slabs, shape, dtype, finish=None, failed=None) -> Iterator[tuple[int, NDArray]]:
    """``(first row, rows)`` for each ``(start, count)`` of `slabs`, filled on a thread into three rotating buffers
    of `shape` (rows, elements) and `dtype` by ``fill(fh, rows, start)``, `fh` what the context manager
    ``opened()`` gives that thread, and ``finish(fh)`` called once the last is filled (not where the caller stops
    first; what it returns, if anything, is warned of here): two slabs are read ahead while the caller works on
    one (reads and decompression release the GIL). A yielded slab is valid until the caller asks for the next; in
    native byte order (a copy where `dtype`'s is not). An exception on the thread is raised here, as
    ``failed(exc)`` makes it."""
    dtype = np.dtype(dtype)
    bufs = [np.empty(shape, dtype=dtype) for _ in range(3)]
    # SimpleQueues (C), not Queues: a signal handled in the caller inside a Queue's ``with`` (its Condition's
    # __enter__) would leave its lock held, and the thread, waiting for it to put a slab, would never end
    free: queue.SimpleQueue = queue.SimpleQueue()
    full: queue.SimpleQueue = queue.SimpleQueue()
    for b in bufs:
        free.put(b)
    stop = Flag()

    def produce():
        try:
            with opened() as fh:
                for start, count in slabs:
                    buf = free.get()
                    if stop.up:
                        return
                    fill(fh, buf[:count], start)
                    full.put((start, buf, count))
                note = None if finish is None else finish(fh)
            if note:
                full.put(note)
            full.put(None)
        except BaseException as exc:  # noqa: BLE001 (raised on the caller's thread, which would wait for it)
            try:
                exc = exc if failed is None or not isinstance(exc, Exception) else failed(exc)
            except BaseException as again:  # noqa: BLE001 (its own failure, raised there instead)
                exc = again
            full.put(exc)

    thread = threading.Thread(target=produce, name="voxfit-read", daemon=True)
    held = None
    try:
        thread.start()  # (inside: a signal just after it would otherwise leave the thread waiting for a buffer)
        while True:
            if held is not None:
                free.put(held)
                held = None
            item = full.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, str):  # (the thread's warning, given on the caller's)
                warnings.warn(item, UserWarning, stacklevel=2)
                continue
            start, held, count = item
            yield start, held[:count] if dtype.isnative else held[:count].astype(dtype.newbyteorder("="))
    finally:
        stop.up = True
        free.put(held if held is not None else bufs[0])  # wake the producer if it waits for a buffer
        with contextlib.suppress(RuntimeError):  # (not started: a signal cut its start short)
            thread.join()


def _read_into(fh, out: NDArray, path: Path, chunk: int = READ_CHUNK, at: int = 0, total: int = 0) -> None:
    """Fill `out` from `fh`, `chunk` bytes a call (1 MiB by default: gzip readers in Python decompress each call
    into a new bytes object and copy it, so larger calls cost page faults for a fresh allocation every time,
    1.2x slower at 40 MiB a call, and hold a second copy of the slab; see ``_gzip.STREAM_CHUNK``). `out` starts at
    byte `at` of the file's data (its decompressed stream) of `total` bytes, for the message of a file that ends
    early."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = fh.readinto(view[got : got + chunk])
        if not n:
            raise truncated_error(path, at + got, max(total, at + len(view)))
        got += n


def _read_slabs(path, offset: int, dtype: np.dtype, shape: tuple[int, int], k: int) -> Iterator[tuple[int, NDArray]]:
    """``(first row, rows)`` of the C-ordered (rows, elements) array of `dtype` stored at byte `offset` of `path`,
    `k` rows at a time, read in order on a thread, two slabs ahead of the caller (:func:`_read_ahead`): the
    file's pages are touched once and never mapped into the process, whose resident memory would count them. SPM's
    automatic mask of a 1.65 GB .nii run (400 scans of 4.3 MB), whose checks take each scan as it is read, was
    fitted in 1.57-1.59 s so against 1.76-1.95 s from reads between the checks (5 alternated runs each)."""
    rows, elements = shape
    dtype = np.dtype(dtype)
    row = elements * dtype.itemsize

    @contextmanager
    def opened():
        with open(path, "rb", buffering=0) as fh:
            fh.seek(offset)
            yield fh

    def fill(fh, slab, start):
        _read_into(fh, slab, path, slab.nbytes, offset + start * row, offset + rows * row)

    slabs = [(start, min(k, rows - start)) for start in range(0, rows, k)]
    if len(slabs) > 1:
        yield from _read_ahead(opened, fill, slabs, (min(k, rows), elements), dtype)
        return
    with opened() as fh:  # (one slab, a 3-D scan's: nothing to read ahead of)
        for start, count in slabs:
            slab = np.empty((count, elements), dtype=dtype)
            fill(fh, slab, start)
            yield start, slab if dtype.isnative else slab.astype(dtype.newbyteorder("="))


def _mapped_slabs(path, offset: int, dtype: np.dtype, shape: tuple[int, int], k: int):
    """:func:`_read_slabs`'s slabs as views of one read-only map of the file, each page's mapping released
    (``MADV_DONTNEED``) once the caller asks for the slab after it: the process's resident memory holds a slab of
    the file at a time, as with a buffer, and the pages are not copied. Gathering the masked voxels of a 1.65 GB
    run (400 scans of 97 x 115 x 97, 230,609 voxels) took 0.39-0.44 s so, against 0.53-0.60 s from reads into a
    buffer (the read's copy, 0.2 s of system time), peak memory the same (fresh processes, 3 runs each). A slab
    stays valid after the caller asks for the next, its pages then faulted in again from the page cache. None
    where the file system maps no files; an InputError if the file is now shorter than its header says."""
    rows, elements = shape
    pages = _map_file(path, offset + rows * elements * dtype.itemsize, mmap.MAP_PRIVATE)
    if pages is None:
        return None
    data = np.frombuffer(pages, dtype=dtype, count=rows * elements, offset=offset).reshape(rows, elements)
    return _released_behind(pages, data, offset, k)


# Whether this platform's mmap can release a map's pages (Linux, macOS): the mapped reads need it
_MAPS_RELEASED = all(hasattr(mmap, name) for name in ("MAP_PRIVATE", "PROT_READ", "MADV_DONTNEED"))


def _map_file(path, end: int, flags: int) -> mmap.mmap | None:
    """A read-only map of the first `end` bytes of `path`; None where the file system maps no files; an
    InputError if the file is now shorter (cut short since its header was read: a map past its end faults)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), end, flags=flags, prot=mmap.PROT_READ)
        except ValueError:  # (mmap's own check that the file holds `end` bytes)
            raise _ended_early(path) from None
        except OSError:  # (a file system that maps no files: read)
            return None


def _released_behind(pages: mmap.mmap, data: NDArray, offset: int, k: int) -> Iterator[tuple[int, NDArray]]:
    """Slabs of `k` rows of `data` (a view of `pages` from byte `offset`), the pages before each slab released."""
    row_bytes = data.shape[1] * data.itemsize
    released = 0
    for start in range(0, data.shape[0], k):
        yield start, data[start : start + k]
        done = (offset + min(data.shape[0], start + k) * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if done > released:
            pages.madvise(mmap.MADV_DONTNEED, released, done - released)
            released = done


# The fields of a NIfTI-1 header (byte ranges) that the scans of one run may hold differently without any change to
# what is read or where: cal_max and cal_min, glmax and glmin, descrip and aux_file (SPM writes its own text there)
_NIFTI1_FREE_FIELDS = ((124, 132), (140, 252))


def _nifti1_key(path) -> bytes | None:
    """A single-file NIfTI-1 image's 348-byte header (from the decompressed stream of a .nii.gz) with the fields
    that do not change what is read blanked (:data:`_NIFTI1_FREE_FIELDS`): two files with the same key hold data
    of the same shape, type, scale factors, offset and orientation. None for anything but a regular file named
    .nii or .nii.gz (the .img of a NIfTI or Analyze pair holds voxels where a header would be; a pipe or a device
    is never opened here: opening it can wait forever), and for one that cannot be read (its reader then says
    why)."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open_gzip(path) if name.endswith(".gz") else open(path, "rb") as fh:
            header = bytearray(fh.read(348))
    except Exception:  # noqa: BLE001 (unreadable or corrupt: nibabel's reader says so, in one line)
        return None
    if len(header) != 348 or header[344:348] != b"n+1\0":
        return None
    for a, b in _NIFTI1_FREE_FIELDS:
        header[a:b] = bytes(b - a)
    return bytes(header)


class VolumeListReader:
    """Several 3-D volumes, one per scan (as SPM writes them); all on one grid."""

    in_memory = ()

    def __init__(self, paths):
        """`paths`: the scans' files. Each whose header is the first's but for fields that do not change what is
        read (:func:`_nifti1_key`) is read as the first is (:meth:`NiftiReader.of_same_header`); nibabel parses
        the others (400 scans of a 2 mm grid: 0.18-0.21 s, most of it nibabel's 0.5 ms a header)."""
        with warnings.catch_warnings(record=True) as said:  # (the first's header warnings, said for the others too)
            warnings.simplefilter("always")
            first = NiftiReader(paths[0], allow_3d=True, spm_sidecar=False)
        key = _nifti1_key(first.path)
        reused = [key is not None and _nifti1_key(p) == key for p in paths[1:]]
        self._readers = [first] + [
            first.of_same_header(p) if same else NiftiReader(p, allow_3d=True, spm_sidecar=False)
            for p, same in zip(paths[1:], reused)
        ]
        shared = sum(reused)
        for w in said:
            text = str(w.message)
            if shared and issubclass(w.category, HeaderReadAsWarning):
                text += f" So are the {shared} other scan(s) whose header is the same."
            warnings.warn(text, w.category, stacklevel=2)
        for r in self._readers:
            if r.n_scans != 1:
                raise InputError(f"{r.path} has {r.n_scans} scans; give either one 4-D image or 3-D files only.")
        _check_scans_spm_mats(self._readers)  # (before their grids: nibabel places an Analyze pair by its .mat)
        common = self._readers[most_common_geometry([r.geometry for r in self._readers])]  # (the odd ones named)
        for r in self._readers:
            if r is not common:
                common.geometry.check_same(r.geometry, str(r.path))
        self.geometry = first.geometry
        self.n_scans = len(self._readers)
        self.paths = [p for r in self._readers for p in r.paths]
        same = all(r.dtype == first.dtype and r.scale == first.scale for r in self._readers)
        self.scale = first.scale if same else None
        self.dtype = first.dtype if same else np.dtype(np.float32)
        self._convert = not same

    @property
    def compressed(self) -> bool:
        """Whether any of the files is gzip-compressed."""
        return any(r.compressed for r in self._readers)

    def column_source(self, index=None) -> ColumnSource | None:
        """The data by columns, one scan per file (None if a file is compressed, or the files differ in
        dtype or scale factors)."""
        file_dtype = self._readers[0].file_dtype
        if self._convert or any(r.compressed or r.file_dtype != file_dtype for r in self._readers):
            return None
        files = tuple((str(r.image_file), r.data_offset) for r in self._readers)
        nel = self.geometry.n_elements
        columns = NiftiColumns(files, file_dtype, self.n_scans, nel)
        return ColumnSource(columns, file_dtype, self.n_scans, nel, scale=self.scale, index=index)

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        """Each file's scan in turn; uncompressed files of one type and scale read on a thread, two scans ahead of
        the caller (:func:`_read_ahead`), as one 4-D file's are."""
        file_dtype = self._readers[0].file_dtype
        if not self._convert and not any(r.compressed or r.file_dtype != file_dtype for r in self._readers):
            yield from self._read_ahead(file_dtype)
            return
        for i, r in enumerate(self._readers):
            for _, vol in r.iter_scans(max_bytes):
                if self._convert:  # scale factors differ between files: apply each file's own
                    vol = apply_scale(vol, r.scale or (1.0, 0.0), np.float32)
                yield i, vol

    def _read_ahead(self, file_dtype: np.dtype) -> Iterator[tuple[int, NDArray]]:
        nel = self.geometry.n_elements

        def fill(_, slab, i):
            r = self._readers[i]
            with open(r.image_file, "rb", buffering=0) as fh:
                fh.seek(r.data_offset)
                _read_into(fh, slab, r.image_file, slab.nbytes, r.data_offset, r.data_offset + slab.nbytes)

        slabs = ((i, 1) for i in range(self.n_scans))
        yield from _read_ahead(nullcontext, fill, slabs, (1, nel), file_dtype)

    def mapped_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]] | None:
        """What :meth:`iter_scans` yields, each scan a read-only view of a map of its file
        (:meth:`NiftiReader.mapped_scans`; a file that cannot be mapped, read), the map released once the next
        scan is asked for: 400 scans of a 2 mm grid gathered in 0.36-0.38 s against 0.52-0.68 s from reads. None
        where the first file is compressed (any other compressed one is read) or the files' scale factors differ
        (converted scan by scan: read). Only where the scans never leave the load (see
        :meth:`NiftiReader.mapped_scans`)."""
        if self._convert or self._readers[0].compressed:
            return None
        return self._mapped_scans(max_bytes)

    def _mapped_scans(self, max_bytes: int) -> Iterator[tuple[int, NDArray]]:
        for i, r in enumerate(self._readers):
            slabs = r.mapped_scans(max_bytes)
            for _, vol in r.iter_scans(max_bytes) if slabs is None else slabs:
                yield i, vol


class _RowsReader:
    """Readers whose data are one (scans, elements) array-like in ``_data``: slabs of rows, in ``dtype``."""

    in_memory: tuple = ()

    def column_source(self, index=None) -> ColumnSource | None:
        return None

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        for start in range(0, self.n_scans, k):
            yield start, np.asarray(self._data[start : start + k], dtype=self.dtype)


# a hemisphere in a file's name: BIDS's hemi-L (sub-01_hemi-L_bold.func.gii), FreeSurfer's lh. (lh.thickness,
# sub-01.lh.func.gii) and the dot-separated L of HCP's and fMRIPrep's before 1.2 (100307.L.midthickness.32k_fs_LR
# .surf.gii, sub-01_task-x_bold_space-fsaverage5.L.func.gii)
_HEMI = re.compile(r"(?:^|_)hemi-(?P<bids>[LR])(?=[_.])|(?:^|\.)(?P<fs>[lr])h\.|\.(?P<dot>[LR])\.")
# data arrays that are not values per vertex: a parcellation's labels, a surface's coordinates, its triangles,
# vectors of several values a vertex, a sparse file's vertex numbers
_NOT_MAPS = {
    "NIFTI_INTENT_LABEL": "labels (a parcellation)",
    "NIFTI_INTENT_POINTSET": "a surface's coordinates",
    "NIFTI_INTENT_TRIANGLE": "a surface's triangles",
    "NIFTI_INTENT_VECTOR": "vectors",
    "NIFTI_INTENT_NODE_INDEX": "vertex numbers (a sparse file)",
    "NIFTI_INTENT_RGB_VECTOR": "colours",
    "NIFTI_INTENT_RGBA_VECTOR": "colours",
}


def _intent_name(darray) -> str | None:
    """A GIFTI data array's intent as NIfTI names it (NIFTI_INTENT_LABEL), None for a code NIfTI does not name."""
    try:
        return nib.nifti1.intent_codes.niistring[darray.intent]
    except KeyError:
        return None


def _gifti_time_step(img) -> float | None:
    """The seconds between scans that a GIFTI run's first data array gives in its metadata, TimeStep, as FreeSurfer
    writes it (mri_vol2surf: its TR, in milliseconds; fMRIPrep's surface runs): a value of 20 or more is taken for
    milliseconds, a smaller one for seconds (no run's TR is 20 ms, nor 20 s); None where it gives none."""
    try:
        value = float(dict(img.darrays[0].meta or {}).get("TimeStep", "nan"))
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(value) and value > 0):
        return None
    return value / 1000 if value >= 20 else value


def _gifti_structure(img, name: str = "") -> str | None:
    """The structure a GIFTI file's values lie on: AnatomicalStructurePrimary of the image's metadata or of its
    first data array's (as FreeSurfer, fMRIPrep and Connectome Workbench write it), else the hemisphere its file
    `name` gives (BIDS's hemi-L, FreeSurfer's lh., HCP's .L.: CortexLeft; hemi-R, rh., .R.: CortexRight); None
    where neither says."""
    for meta in (img.meta, img.darrays[0].meta if img.darrays else None):
        value = dict(meta or {}).get("AnatomicalStructurePrimary")
        if value:
            return str(value)
    found = [m.groupdict() for m in _HEMI.finditer(name)]
    sides = {m["bids"] for m in found if m["bids"]} or {next(v for v in m.values() if v).upper() for m in found}
    # (BIDS's hemi- first; names whose other marks disagree, rh.sub-01.L.func.gii, say no side)
    return {"L": "CortexLeft", "R": "CortexRight"}.get(sides.pop()) if len(sides) == 1 else None


class GiftiReader(_RowsReader):
    """GIFTI surface data: one data array per scan, or one 2-D array (vertices x scans); several files allowed."""

    def __init__(self, paths):
        """`paths`: GIFTI files, or GiftiImages in memory."""
        arrays, meta, self.paths, memory, structures, steps = [], {}, [], [], [], []
        for p in paths:
            in_memory = isinstance(p, nib.gifti.GiftiImage)
            if not in_memory:
                _check_gifti_sizes(Path(p))
            img = p if in_memory else load_image(Path(p))
            p = "in-memory GiftiImage" if in_memory else Path(p)
            if not isinstance(img, nib.gifti.GiftiImage):
                raise InputError(f"{p}: not a GIFTI image.")
            if not img.darrays:
                raise InputError(f"{p}: the GIFTI image holds no data array.")
            held = sorted({_NOT_MAPS[i] for i in map(_intent_name, img.darrays) if i in _NOT_MAPS})
            if held or (
                len(img.darrays) > 1 and any(np.ndim(d.data) > 1 and min(np.shape(d.data)) > 1 for d in img.darrays)
            ):
                what = " and ".join(held) or "several values a vertex in each of its data arrays"
                roi = (  # (a medial-wall or cortex .label.gii given as a mask)
                    "; for a mask, a .func.gii/.shape.gii of 0 and 1 (a label's vertices: wb_command "
                    "-gifti-label-to-roi)"
                    if "labels (a parcellation)" in held
                    else ""
                )
                raise InputError(
                    f"{p}: the GIFTI file holds {what}, not a value per vertex in each array; give the data's "
                    f".func.gii (a run) or .func.gii/.shape.gii maps{roi}."
                )
            structures.append((_gifti_structure(img, p.name if isinstance(p, Path) else ""), p))
            steps.append(_gifti_time_step(img))
            if len(img.darrays) == 1 and img.darrays[0].data.ndim == 2:
                _check_gifti_orientation(np.shape(img.darrays[0].data), p)
                arrays.append(np.asarray(img.darrays[0].data).T)  # GIFTI's first dimension is the vertices
            else:
                sizes = sorted({np.asarray(d.data).size for d in img.darrays})
                if len(sizes) > 1:
                    raise InputError(
                        f"{p}: its data arrays differ in length ({', '.join(map(str, sizes[:4]))} "
                        "values); a GIFTI map has one value per vertex in each array."
                    )
                arrays.append(np.stack([np.asarray(d.data).reshape(-1) for d in img.darrays]))
            meta = meta or dict(img.meta or {})
            if in_memory:
                memory.append(
                    MemoryInput(
                        "in-memory nibabel image",
                        "GiftiImage",
                        tuple(arrays[-1].shape),
                        str(arrays[-1].dtype),
                        (arrays[-1],),
                    )
                )
            else:
                self.paths.append(p)
        self.in_memory = tuple(memory)
        _check_same_vertices([a.shape[1] for a in arrays], [p for _, p in structures])
        self._data = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if self._data.dtype.kind not in "iuf":
            first = self.paths[0] if self.paths else "in-memory GiftiImage"
            raise InputError(f"{first}: GIFTI data must be numeric; got {self._data.dtype}.")
        self._data = self._data.astype(self._data.dtype.newbyteorder("="), copy=False)
        n_vertices, known = int(self._data.shape[1]), [(structure, p) for structure, p in structures if structure]
        self.geometry = SurfaceGeometry(n_vertices, meta, known[0][0] if known else None)
        for structure, p in known[1:]:  # (each file on the first's structure, as runs and masks are checked)
            self.geometry.check_same(SurfaceGeometry(n_vertices, structure=structure), str(p))
        self.n_scans = int(self._data.shape[0])
        self.dtype = self._data.dtype
        self.scale = None
        self.scan_step = steps[0]  # (the first file's: a run of one file, as fMRIPrep and FreeSurfer write them)


# the vertex counts of the surfaces runs come on: icosahedral (FreeSurfer's fsaverage3 .. fsaverage, ico3 .. ico7)
# and HCP's fsLR 32k and 164k meshes
_STANDARD_VERTICES = frozenset({10 * 4**k + 2 for k in range(3, 8)} | {32492, 163842})


def _check_gifti_orientation(shape: tuple[int, int], p) -> None:
    """A run's one 2-D data array is vertices x scans, as GIFTI orders it; one of fewer rows than columns is likely
    scans x vertices, and was fitted as such, silently (a tester's 80 scans of fsaverage4 as 2,562 scans of 80
    vertices): refused where its columns are the vertices of a standard surface, said otherwise."""
    rows, columns = shape
    if rows >= columns:
        return
    said = f"{p}: its one data array is {rows} x {columns}, read as GIFTI orders it ({rows} vertices x {columns} scans)"
    if columns in _STANDARD_VERTICES:
        raise InputError(
            f"{said}, and {columns:,} are the vertices of a standard surface: it is scans x vertices; write it "
            "vertices x scans (nibabel: GiftiDataArray(data.T)), or one array per scan."
        )
    warnings.warn(f"{said}: fewer vertices than scans; if it is scans x vertices, write it transposed.", stacklevel=4)


def _check_same_vertices(counts: list[int], names: list) -> None:
    """GIFTI inputs (`names`, each with its number of vertices in `counts`) lie on one surface: the first whose count
    differs from most files' is named, with theirs (a first file of its own count names the second). fsnative
    surfaces differ from subject to subject (a study's subjects fitted in fsnative reached their group model so)."""
    most = max(dict.fromkeys(counts), key=counts.count)  # (on a tie, the first file's count)
    odd = next((i for i, n in enumerate(counts) if n != most), None)
    if odd is not None:
        raise InputError(
            f"{names[odd]} has {counts[odd]:,} vertices, {counts.count(most)} of the {len(counts)} GIFTI files "
            f"{most:,}: they must lie on one surface, and fsnative surfaces differ from subject to subject; give "
            "every file in one template space (e.g. fsaverage5 or fsLR 32k)."
        )


CIFTI_HEADER_LIMIT = 256 << 20  # bytes of a CIFTI file's header and XML read by _stored_cifti (else nibabel's)


@dataclass(frozen=True, eq=False)
class _StoredCifti:
    """A plain CIFTI-2 file read from its header alone (see :func:`_stored_cifti`): its data as nibabel's
    proxy reads them, (scans, grayordinates), its brain models and what its series map says (:func:`_series_map`)."""

    dataobj: nib.arrayproxy.ArrayProxy
    brain_models: nib.cifti2.BrainModelAxis
    series: tuple[int | None, float | None] = (None, None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.dataobj.shape

    def get_data_dtype(self) -> np.dtype:
        return self.dataobj.dtype


def _stored_cifti(path: Path) -> _StoredCifti | None:
    """An uncompressed, unscaled dense CIFTI-2 file from its NIfTI-2 header and the brain models of its XML,
    parsed by ElementTree into one BrainModelAxis: 0.1 s for 91k grayordinates, against 0.3 s for nibabel's
    Cifti2Image, which makes an object of every XML element and deep-copies them. None for anything else
    (compressed, scaled, not NIfTI-2, not dense, malformed in any way), which nibabel reads, or refuses, itself;
    the same BrainModelAxis as nibabel's otherwise."""
    if path.name.lower().endswith(".gz") or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(544)
            header = nib.Nifti2Header(head[:540])
            offset = int(header.get_data_offset())
            if len(head) < 544 or head[540] == 0 or not 544 < offset <= min(CIFTI_HEADER_LIMIT, path.stat().st_size):
                return None
            xml = _cifti_extension(f.read(offset - 544), header.endianness)
        shape = tuple(int(n) for n in header.get_data_shape())
        slope, inter = header.get_slope_inter()
        if xml is None or len(shape) != 6 or shape[:4] != (1, 1, 1, 1) or (slope, inter) not in _UNSCALED:
            return None
        _check_cifti_sizes(path, header)  # (an InputError: refused by _checked_cifti, its XML compared first)
        models = _shared_brain_models(xml, shape[5])
        if models is None:
            return None
        proxy = nib.arrayproxy.ArrayProxy(str(path), (shape[4:], header.get_data_dtype(), offset, 1.0, 0.0), order="F")
        return _StoredCifti(proxy, models, _series_map(xml))
    except Exception:  # noqa: BLE001 - anything unusual is nibabel's to read or to refuse
        return None


_UNSCALED = ((None, None), (1.0, 0.0))
_INDEX_FIELDS = re.compile(rb'(IndexOffset|IndexCount)\s*=\s*["\']\s*([0-9]{1,30})')


def _checked_cifti(path: Path):
    """nibabel's Cifti2Image of a file :func:`_stored_cifti` does not read (compressed, scaled, malformed), once
    its XML's brain models are found within its header's grayordinates: nibabel allocates arrays from their
    IndexOffset and IndexCount as it parses the XML (a 53 KB file whose XML gave IndexCount 300,000,000 took
    14 GB and 25 s to refuse, under any --max-memory). What cannot be read here is nibabel's to refuse."""
    try:
        with open_gzip(path) if path.name.lower().endswith(".gz") else open(path, "rb") as f:
            head = f.read(544)
            header = nib.Nifti2Header(head[:540])
            shape = [int(n) for n in header.get_data_shape()]
            grayordinates = max(shape[4:])
            xml = f.read(max(0, min(int(header.get_data_offset()), CIFTI_HEADER_LIMIT) - 544))
    except Exception:  # noqa: BLE001 (not a NIfTI-2 header, or a broken stream: load_image says what it is)
        return load_image(path)
    fields = [(name.decode(), int(value)) for name, value in _INDEX_FIELDS.findall(xml)]
    for name, value in fields:
        if value > grayordinates:
            raise InputError(
                f"{path}: its CIFTI XML gives a brain model's {name} as {value:,}, beyond its header's "
                f"{grayordinates:,} grayordinates: the file is broken; write it again from its source."
            )
    counted = sum(value for name, value in fields if name == "IndexCount")
    # (nibabel fitted the XML's count, with a warning; a count of dimension 5's is a file stored transposed, said later)
    if fields and len(shape) == 6 and counted not in (shape[5], shape[4]):
        raise InputError(
            f"{path}: its CIFTI XML's brain models hold {counted:,} grayordinates, its header {shape[5]:,}: the "
            "file is broken; write it again from its source."
        )
    if len(shape) == 6:
        _check_cifti_sizes(path, header)
    with warnings.catch_warnings():  # (a series map of another length, said with the file's name by the reader)
        warnings.filterwarnings("ignore", message="Dataobj shape .* does not match shape expected from CIFTI-2")
        return load_image(path)


# bytes a grayordinate's brain model takes as it is parsed (the XML's tree and indices, the axis's voxel, vertex
# and structure-name arrays), the most measured: 270 by voxfit's parser and 330 by nibabel's for 2,000,000 cortical
# vertices, 420 and 520 with 27,000 voxels of the longest structure name (CEREBELLAR_WHITE_MATTER_RIGHT)
BRAIN_MODEL_BYTES = 550


def _check_cifti_sizes(path: Path, header) -> None:
    """A CIFTI file (its NIfTI-2 `header`, of 6 dimensions) holds the data its header promises (a .gz file expands
    at most GZIP_MAX_RATIO times), and the brain models of its grayordinates alone fit the memory there is (or the
    command's --max-memory), before the XML's brain models are parsed into arrays of that size: a 122 KB file
    whose header claimed 10^8 grayordinates took 3.2 GB to refuse under --max-memory 1G, 10^9 was killed at 24 GB.
    (The models alone: what cannot fit is refused, the rest of a command's memory is planned where it is used.)"""
    shape = [int(n) for n in header.get_data_shape()]
    need = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
    have = path.stat().st_size
    if need > (GZIP_MAX_RATIO * have + GZIP_MARGIN if path.name.lower().endswith(".gz") else have):
        raise InputError(f"{path}: file is truncated ({have:,} bytes; the header promises {need:,}).")
    grayordinates = max(shape[4:])
    check_memory(
        grayordinates * BRAIN_MODEL_BYTES,
        f"{path}: the CIFTI brain models of its {grayordinates:,} grayordinates (as its header says)",
        whole_files_cap(),
        "Check the file's dimensions (a broken header), or give a larger --max-memory.",
    )


def _cifti_series(img) -> tuple[int | None, float | None]:
    """What a CIFTI image's series map says (:func:`_series_map`), by voxfit's parser or nibabel's."""
    if isinstance(img, _StoredCifti):
        return img.series
    try:
        axis = img.header.get_axis(0)
    except Exception:  # noqa: BLE001 - no series axis: nothing said
        return None, None
    if not isinstance(axis, nib.cifti2.SeriesAxis):
        return None, None
    return int(axis.size), float(axis.step) if axis.unit == "SECOND" else None


def _series_map(xml: bytes) -> tuple[int | None, float | None]:
    """The number of scans a CIFTI XML's series map gives (NumberOfSeriesPoints) and the seconds between them
    (SeriesStep x 10^SeriesExponent, where SeriesUnit is SECOND), each None where it gives none."""
    for tag in re.findall(rb"<MatrixIndicesMap\b[^>]*>", xml):
        attributes = dict(re.findall(rb'(\w+)="([^"]*)"', tag))
        if attributes.get(b"IndicesMapToDataType") == b"CIFTI_INDEX_TYPE_SERIES":
            points = attributes.get(b"NumberOfSeriesPoints", b"")
            try:
                step = float(attributes[b"SeriesStep"]) * 10.0 ** int(attributes.get(b"SeriesExponent", b"0"))
            except (KeyError, ValueError, OverflowError):
                step = None
            seconds = attributes.get(b"SeriesUnit") == b"SECOND"
            return int(points) if points.isdigit() else None, step if seconds else None
    return None, None


def _said_by_series_map(path, img) -> float | None:
    """The seconds between the scans of CIFTI file `path` that its series map gives, or None where it gives none
    that a run could have; a warning where the map gives the file another number of scans than it holds (nibabel's
    warning named no file) or a time between scans of 0 or less (not compared with the design's then)."""
    points, step = _cifti_series(img)
    rows = int(img.shape[0])
    if points is not None and points != rows:
        warnings.warn(
            f"{path}: its CIFTI series map gives {points:,} scans (NumberOfSeriesPoints) but the file holds {rows:,}; "
            f"fitted on the {rows:,} it holds: if scans are missing, write it again from its source.",
            UserWarning,
            stacklevel=3,
        )
    if step is not None and not (step > 0 and math.isfinite(step)):
        warnings.warn(
            f"{path}: its CIFTI series map gives {step:g} s between scans (SeriesStep), which no run has; the "
            "repetition time given (--tr, or the run's sidecar) builds the design: check the program that wrote it.",
            UserWarning,
            stacklevel=3,
        )
        return None
    return step


def _cifti_extension(extensions: bytes, endianness: str) -> bytes | None:
    """The CIFTI XML (NIfTI extension code 32) among a header's `extensions` (the bytes after its extension flag,
    up to the data: size and code as int32 of the header's byte order, then the content), or None."""
    start = 0
    while start + 8 <= len(extensions):
        size, code = np.frombuffer(extensions, dtype=np.dtype(np.int32).newbyteorder(endianness), count=2, offset=start)
        if size < 8 or start + size > len(extensions):
            return None
        if code == 32:
            return extensions[start + 8 : start + size].rstrip(b"\0")
        start += int(size)
    return None


def _shared_brain_models(xml: bytes, n_elements: int) -> nib.cifti2.BrainModelAxis | None:
    """:func:`_brain_models`, parsed once for the files with the same XML (a group's maps from one pipeline: 100
    HCP-like maps opened in 0.31 s, against 2.5 s parsed one by one, and held in 14 MB, against 14 MB each): each
    file gets its own axis (a shallow copy, with its own ``nvertices``), whose arrays, read-only, are shared."""
    models = _parsed_brain_models(xml, n_elements)
    if models is None:
        return None
    own = copy.copy(models)
    own.nvertices = dict(models.nvertices)
    return own


@functools.lru_cache(maxsize=2)
def _parsed_brain_models(xml: bytes, n_elements: int) -> nib.cifti2.BrainModelAxis | None:
    """:func:`_brain_models` with read-only arrays, for :func:`_shared_brain_models` (the last two XMLs kept: 14 MB
    each for 91k grayordinates, most of it their structures' names)."""
    models = _brain_models(xml, n_elements)
    if models is not None:
        for values in (models.name, models.voxel, models.vertex, models.affine):
            if isinstance(values, np.ndarray):
                values.setflags(write=False)
    return models


def _brain_models(xml: bytes, n_elements: int) -> nib.cifti2.BrainModelAxis | None:
    """The BrainModelAxis of the CIFTI-2 XML's map of dimension 1 (its brain models' structures, vertices and
    voxels, as nibabel's ``from_index_mapping`` makes it), or None where that map is not exactly `n_elements`
    brain models, listed in the order of their offsets, as the CIFTI-2 standard gives them."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    maps = [m for m in root.iterfind("Matrix/MatrixIndicesMap") if "1" in _dimensions(m)]
    version = root.get("Version", "")
    if root.tag != "CIFTI" or not version.startswith("2") or len(maps) != 1:
        return None
    if maps[0].get("IndicesMapToDataType") != "CIFTI_INDEX_TYPE_BRAIN_MODELS":
        return None
    listed, end = maps[0].findall("BrainModel"), 0
    for model in listed:  # (their counts, summed before arrays of the header's count are made: a header can lie)
        first, count = int(model.get("IndexOffset")), int(model.get("IndexCount"))
        if first != end or count < 1 or model.get("BrainStructure") is None:
            return None  # (models out of index order: nibabel names them in the order listed, so it decides)
        end = first + count
    if end != n_elements:
        return None
    voxel = np.full((n_elements, 3), -1, dtype=int)
    vertex = np.full(n_elements, -1, dtype=int)
    structures, counts = [], []
    nvertices, affine, volume_shape = {}, None, None
    for model in listed:
        first, count = int(model.get("IndexOffset")), int(model.get("IndexCount"))
        where, structure = slice(first, first + count), model.get("BrainStructure")
        structures.append(structure)
        counts.append(count)
        if model.get("ModelType") == "CIFTI_MODEL_TYPE_SURFACE":
            vertex[where] = _integers(model.findtext("VertexIndices", "")).reshape(count)
            nvertices[structure] = int(model.get("SurfaceNumberOfVertices"))
        elif model.get("ModelType") == "CIFTI_MODEL_TYPE_VOXELS":
            voxel[where] = _integers(model.findtext("VoxelIndicesIJK", "")).reshape(count, 3)
            if affine is None:
                volume = maps[0].find("Volume")
                volume_shape = tuple(int(n) for n in volume.get("VolumeDimensions").split(","))
                matrix = volume.findtext("TransformationMatrixVoxelIndicesIJKtoXYZ")
                affine = np.array(matrix.split(), dtype=float).reshape(4, 4)
        else:
            return None
    name = np.repeat(np.array(structures, dtype=str), counts)  # (a str array: no objects to convert)
    return BrainModels(name, voxel, vertex, affine, volume_shape, nvertices)


def _integers(text: str) -> NDArray[np.int64]:
    """The non-negative integers of `text`, apart by ASCII whitespace, parsed in C (91k grayordinates' indices:
    2.5 ms, against 16 ms split into strings and converted one by one); a ValueError for anything else, which
    numpy's parser would read otherwise (whitespace alone as one 0; a number past int64 as its largest; text
    after the numbers dropped, or refused, as numpy's version goes), so that nibabel reads the file, or refuses
    it, itself."""
    if not _INDICES.fullmatch(text) or _TOO_LONG.search(text):
        raise ValueError("not a list of indices")
    if not text.strip():
        return np.zeros(0, dtype=np.int64)
    return np.fromstring(text, dtype=np.int64, sep=" ")


_INDICES = re.compile(r"[0-9 \t\n\r]*")
_TOO_LONG = re.compile(r"[0-9]{19}")  # (int64 holds every 18-digit number; an index of 19 digits is nibabel's call)


def _dimensions(index_map) -> list[str]:
    return [d.strip() for d in index_map.get("AppliesToMatrixDimension", "").split(",")]


def _not_dense(path, img) -> str:
    """Why a CIFTI image is not a dense file of scans by grayordinates: transposed, or not dense."""
    if isinstance(img, nib.Cifti2Image) and isinstance(img.header.get_axis(0), nib.cifti2.BrainModelAxis):
        return (
            f"{path}: its grayordinates are its rows and its scans its columns (a transposed dense file); voxfit reads "
            "scans as rows, as Connectome Workbench writes them: transpose it (wb_command -cifti-transpose)."
        )
    if isinstance(img, nib.Cifti2Image) and isinstance(img.header.get_axis(1), nib.cifti2.ParcelsAxis):
        return f"{path}: {_PARCELS}."
    return f"{path}: only dense CIFTI files (brain models: vertices and voxels) are supported."


class CiftiReader:
    """CIFTI-2 dense time series or scalars (.dtseries.nii, .dscalar.nii): rows are scans, columns grayordinates.

    `paths` may hold Cifti2Images in memory as well as files."""

    in_memory: tuple = ()

    def __init__(self, paths):
        self._imgs, self.paths, models, memory = [], [], None, []
        steps = []
        for p in paths:
            in_memory = isinstance(p, nib.Cifti2Image)
            img = p if in_memory else _stored_cifti(Path(p)) or _checked_cifti(Path(p))
            p = "in-memory Cifti2Image" if in_memory else Path(p)
            if not isinstance(img, (nib.Cifti2Image, _StoredCifti)):
                if p.name.lower().endswith(".gz"):  # (nibabel reads the NIfTI-2 image, not its CIFTI XML)
                    raise InputError(
                        f"{p}: a gzip-compressed CIFTI file, which nibabel and Connectome Workbench do not read as "
                        f"CIFTI; decompress it (gunzip) and give the {p.name[:-3]}."
                    )
                raise InputError(f"{p}: not a CIFTI-2 image.")
            axis = img.brain_models if isinstance(img, _StoredCifti) else img.header.get_axis(1)
            if not isinstance(axis, nib.cifti2.BrainModelAxis):
                raise InputError(_not_dense(p, img))
            if models is not None and not same_brain_models(axis, models):
                differ = brain_models_difference(models, axis)
                raise InputError(
                    f"{p} has different CIFTI brain models from the first input ({differ}): every input must be on "
                    "the same grayordinates; resample them to one template's (as fsLR 32k's 91,282)."
                )
            if models is None and (fault := brain_models_fault(axis)):  # (the others are the same as the first)
                raise InputError(f"{p}: its CIFTI brain models are broken: {fault}; write it again from its source.")
            models = axis
            steps.append(_said_by_series_map(p, img))
            if not in_memory:
                _check_dimensions(p, img.shape)
                _check_numeric(p, img.get_data_dtype())
                _check_file_holds(p, img)
            self._imgs.append(img)
            if in_memory:
                memory.append(memory_input(img, np.asanyarray(img.dataobj)))
            else:
                self.paths.append(p)
        self.in_memory = tuple(memory)
        self.geometry = CiftiGeometry(models)
        self.n_scans = int(sum(img.shape[0] for img in self._imgs))
        self.scan_step = steps[0] if steps else None
        # (an image made in memory holds its array; one from a file, the file's stored type)
        stored = {
            np.dtype(img.dataobj.dtype if isinstance(img.dataobj, np.ndarray) else img.get_data_dtype()).newbyteorder(
                "="
            )
            for img in self._imgs
        }
        scaled = any(_scale(img.dataobj) is not None for img in self._imgs)
        # nibabel hands back scaled values: integers with scale factors, or mixed dtypes, become float32
        self.dtype = stored.pop() if len(stored) == 1 and not scaled else np.dtype(np.float32)
        self.scale = None
        self._layouts = [_stored_layout(img) for img in self._imgs]  # each file read as stored; None: nibabel reads it
        # every file read from its stored layout, series by series: into an array of series, no transpose is made
        self.series_major = all(layout is not None for layout in self._layouts)
        self._mapped = None  # (a weak reference to the array mapped_series gave)

    def mapped_series(self) -> NDArray | None:
        """The run's data as its file stores them, (n_scans, grayordinates) F-ordered and read-only: a private
        map of the file's pages, populated at once (``MAP_POPULATE``). A 438 MB run is in memory in 0.03 s,
        against 0.23 s read into a new array, whose every page the process faults in, zeroes and fills (0.09 s
        with huge pages, which the program turns off: see ``voxfit.cli.program_settings``). The pages are the
        page cache's, so they count in the process's memory as the array would. None unless one file holds the
        run, unscaled and uncompressed, in the reader's dtype and the machine's byte order, at an aligned offset,
        on a file system that maps files; an InputError if the file is now shorter than its header says.
        :meth:`scans_into` then reads nothing into the array given.

        Only where the data never leave a run (``load(map_files=True)``: the command line): they are read-only
        and follow the file. A file cut short by another program while the map is held ends the process with
        SIGBUS, as for any memory map (nibabel's own): what such a run leaves is what a killed one does, which
        the next run in the folder removes."""
        if len(self._layouts) != 1 or self._layouts[0] is None or not hasattr(mmap, "MAP_POPULATE"):
            return None
        path, offset, stored = self._layouts[0]
        if stored != self.dtype or not stored.isnative or offset % stored.itemsize:
            return None
        n, G = self.n_scans, self.geometry.n_elements
        pages = _map_file(path, offset + n * G * stored.itemsize, mmap.MAP_PRIVATE | mmap.MAP_POPULATE)
        if pages is None:
            return None
        series = np.frombuffer(pages, dtype=stored, count=n * G, offset=offset).reshape(G, n).T
        self._mapped = weakref.ref(series)
        return series

    def column_source(self, index=None) -> ColumnSource | None:
        """The data by columns, from files that hold each grayordinate's series together in one stored dtype
        (``series_major``); else None (compressed or scaled files, images in memory)."""
        if not self.series_major or len({stored for _, _, stored in self._layouts}) != 1:
            return None
        files = tuple((path, offset, img.shape[0]) for (path, offset, _), img in zip(self._layouts, self._imgs))
        nel, stored = self.geometry.n_elements, self._layouts[0][2]
        return ColumnSource(CiftiColumns(files, stored, nel), stored, self.n_scans, nel, index=index)

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        """Slabs of scans. A file read from its stored layout (each grayordinate's series together) is read again for
        each slab, in order, by tiles of whole series of which the slab's scans are transposed out
        (:func:`_read_transposed`): a slab of scans lies on nearly every page of such a file, and a memory map's pages
        count in the process's resident memory, so an HCP-like run (418 MB) streamed under ``--max-memory 320M``
        peaked at 548-562 MiB through one. The reads come from the page cache after the first."""
        G = self.geometry.n_elements
        k = _slab_scans(G, self.dtype.itemsize, max_bytes)
        first = 0
        for img, stored in zip(self._imgs, self._layouts):
            n = img.shape[0]
            for start in range(0, n, k):
                if stored is None:
                    yield first + start, np.asarray(img.dataobj[start : start + k], dtype=self.dtype)
                    continue
                rows = np.empty((min(k, n - start), G), dtype=self.dtype)
                _read_transposed(*stored, rows, G, first=start, n=n)
                yield first + start, rows
            first += n

    def scans_into(
        self, out: NDArray, index: NDArray | None = None, max_bytes: int = DEFAULT_SLAB_BYTES
    ) -> Iterator[tuple[int, NDArray]]:
        """The scans, or their grayordinates `index` (increasing), written straight into `out` (n_scans, all or
        len(index)) of the reader's dtype, yielding (first scan, the rows filled) by slabs of `max_bytes`. A
        file read from its stored layout is read once, in order, by tiles of whole series transposed into `out`,
        before its slabs are yielded (0.2 s for a 91k x 1200 run, against 0.75 s slab by slab from a memory map,
        each slab touching every page of the file; and the file's pages are not mapped into the process, whose
        peak memory is then the data's), or, into an `out` of series (``series_major``), read into it as stored:
        0.1 s. The array :meth:`mapped_series` gave holds the data already: its slabs are yielded, nothing read."""
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        first = 0
        mapped = self._mapped is not None and self._mapped() is out and index is None  # (holds the data already)
        for img, stored in zip(self._imgs, self._layouts):
            n = img.shape[0]
            if stored is not None and not mapped:
                _read_transposed(*stored, out[first : first + n], self.geometry.n_elements, index)
            for start in range(0, n, k):
                rows = out[first + start : first + min(start + k, n)]
                if stored is None:
                    values = np.asarray(img.dataobj[start : start + k], dtype=self.dtype)
                    rows[...] = values if index is None else values[:, index]
                yield first + start, rows
            first += n


TILE_BYTES = 1 << 20  # of the stored file per tile of a transposed copy (see _transpose_into): within L2
TILE_SERIES = 256  # grayordinates per tile at least
TILE_BUFFER_LIMIT = 16 << 20  # bytes of the buffer of _read_transposed at most (long series: fewer per tile)


def _series_into(stored: NDArray, out: NDArray) -> None:
    """``out[:] = stored.T``: a copy where `out` holds each column's values together (an array of series, as
    stored), else transposed by tiles (:func:`_transpose_into`)."""
    if out.strides[0] == out.itemsize or out.shape[0] == 1:
        np.copyto(out, stored.T)
    else:
        _transpose_into(stored, out)


def _transpose_into(stored: NDArray, out: NDArray) -> None:
    """``out[:] = stored.T`` for stored series (G, k) and their scans `out` (k, G), by tiles of about
    TILE_BYTES: TILE_SERIES grayordinates' whole series (up to 1,024 scans of float32), or, for a few scans, more
    grayordinates. A tile's cache lines serve all its scans before they leave the cache; the transposed
    view itself made every later pass over a scan stride across the whole file (3 s of a 91k x 1200 run's read,
    against 0.1 s for the read)."""
    G, k = stored.shape
    scans = min(k, max(1, TILE_BYTES // (TILE_SERIES * stored.itemsize)))
    grays = max(TILE_SERIES, TILE_BYTES // (scans * stored.itemsize))
    for a in range(0, k, scans):
        for g in range(0, G, grays):
            out[a : a + scans, g : g + grays] = stored[g : g + grays, a : a + scans].T


def _stored_layout(img) -> tuple[str, int, np.dtype] | None:
    """(path, offset, stored dtype) of an uncompressed, unscaled CIFTI file's data, stored grayordinate by
    grayordinate; None for images in memory, compressed or scaled files (read through nibabel's proxy)."""
    proxy = img.dataobj
    if not getattr(proxy, "is_proxy", False) or _scale(proxy) is not None:  # (an array in memory: no proxy)
        return None
    path = getattr(proxy, "file_like", None)
    if not isinstance(path, str) or path.endswith((".gz", ".bz2", ".zst")) or getattr(proxy, "order", "F") != "F":
        return None
    return path, int(proxy.offset), np.dtype(proxy.dtype)


def _read_transposed(
    path: str, offset: int, dtype: np.dtype, out: NDArray, G: int, index=None, first: int = 0, n: int | None = None
) -> None:
    """``out[:] =`` scans ``first .. first + len(out)`` (all of them by default) of a file's data stored as G series
    of `n` values from `offset` (n: out's rows by default), or their columns `index` (increasing, within 0..G-1):
    read in order, TILE_SERIES series (more for short series, fewer for series too long for TILE_BUFFER_LIMIT) at a
    time into one buffer, each tile's series (those of `index`) transposed into `out`."""
    m = out.shape[0]
    n = m if n is None else n
    if index is None and m == n and out.T.flags.c_contiguous and out.dtype == dtype:  # the series as stored
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            _read_exactly(f, memoryview(out.T).cast("B"), path)
        return
    series = n * dtype.itemsize
    grays = max(1, min(max(TILE_SERIES, TILE_BYTES // series), TILE_BUFFER_LIMIT // series))
    buffer = np.empty((min(grays, G), n), dtype=dtype)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        for g in range(0, G, grays):
            tile = buffer[: min(grays, G - g)]
            _read_exactly(f, memoryview(tile).cast("B"), path)
            scans = tile[:, first : first + m]
            if index is None:
                _series_into(scans, out[:, g : g + tile.shape[0]])
                continue
            lo, hi = np.searchsorted(index, (g, g + tile.shape[0]))
            if hi > lo:
                _series_into(scans[index[lo:hi] - g], out[:, lo:hi])


def _read_exactly(f, into: memoryview, path) -> None:
    done = 0
    while done < len(into):
        got = f.readinto(into[done:])
        if not got:
            raise _ended_early(path)
        done += got


def _ended_early(path) -> InputError:
    """A file found shorter than its header said, once opened: cut short while it was read, as a rule."""
    return InputError(f"{path}: the file ended before the data its header promises (truncated while read?).")


def _check_npy_header(path: Path) -> None:
    """A .npy file's header read as numpy's own parser reads it, and refused in the words of a NIfTI file's lies: a
    header numpy cannot parse, Python objects, a shape with no values, or data shorter than the header promises
    (numpy's words had been "mmap length is greater than file size", "malformed node or string"; a tester's)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh, max_header_size=1 << 16)
            offset = fh.tell()
    except Exception as exc:  # noqa: BLE001 (numpy's parser raises ValueError, EOFError, SyntaxError, tokenize's
        # TokenError, OverflowError: every one a header that lies)
        raise InputError(
            f"{path}: not a .npy array numpy can read ({exc}); write it with numpy.save, or give the data as NIfTI."
        ) from None
    if dtype.hasobject:
        raise InputError(f"{path}: the array holds Python objects ({dtype}), not numbers; save a numeric array.")
    if len(shape) not in (1, 2):
        raise InputError(
            f"{path}: the array has {len(shape)} dimensions; give one 2-D array (scans, columns) or several 1-D "
            "arrays of one length."
        )
    if any(int(k) < 0 for k in shape):
        raise InputError(f"{path}: its header gives the shape {shape}, which no array has; write it again.")
    if 0 in shape:
        raise InputError(f"{path}: the array holds no values (shape {shape}); give scans x columns of data.")
    promised = math.prod(int(k) for k in shape) * dtype.itemsize
    held = path.stat().st_size - offset
    if held < promised:
        raise InputError(
            f"{path}: truncated: its header promises an array of shape {shape} of {dtype} ({promised:,} bytes), and "
            f"the file holds {held:,} bytes of data after it."
        )


class NpyReader(_RowsReader):
    """A .npy array of shape (scans, columns), its slabs of scans read ahead of the caller (C order; a Fortran-
    ordered array's slabs come from its memory map); or several 1-D .npy files, one per scan."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        arrays = []
        for p in self.paths:
            if not p.exists():
                raise InputError(f"{p}: no such file.")
            check_readable(p)
            _check_npy_header(p)
            try:
                arrays.append(np.load(p, mmap_mode="r", allow_pickle=False))
            except Exception as exc:  # noqa: BLE001 (a header that lies: numpy's parser raises ValueError, EOFError,
                # tokenize's TokenError, SyntaxError; a negative shape, OverflowError from the map)
                raise InputError(f"{p}: not a readable .npy array ({type(exc).__name__}: {exc}).") from None
        if len(arrays) == 1 and arrays[0].ndim == 2:
            self._data = arrays[0]
        elif all(a.ndim == 1 for a in arrays) and len({a.shape for a in arrays}) == 1:
            self._data = np.stack(arrays)
        else:
            raise InputError(
                f"{self.paths[0]}: give one 2-D array (scans, columns) or several 1-D arrays of one length."
            )
        if self._data.dtype.kind == "b":  # (a mask saved from numpy: 0 and 1, so that its checks say the rest)
            self._data = self._data.view(np.uint8)
        if self._data.dtype.kind not in "iuf":
            raise InputError(f"{self.paths[0]}: data must be numeric; got {self._data.dtype}.")
        self.geometry = ArrayGeometry(int(self._data.shape[1]))
        self.n_scans = int(self._data.shape[0])
        self.dtype = self._data.dtype.newbyteorder("=")
        self.scale = None

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        """Slabs of scans. From one C-ordered file, read ahead of the caller into three buffers, reused (a yielded
        slab is valid until the next is asked for; :func:`_read_slabs`): the memory map's pages would count in the
        process's resident memory and stay there, so a .npy streamed under ``--max-memory 320M`` peaked at 490-507
        MiB. From one Fortran-ordered file (each column's series together), as a CIFTI file's: the file read again
        for each slab, by tiles of whole series (:func:`_read_transposed`); through the map, 229 MiB of data peaked
        at 348 MiB under 300M (a tester's)."""
        data = self._data
        one_file = len(self.paths) == 1 and isinstance(data, np.memmap)
        if one_file and not data.flags.c_contiguous and held_as_series(data):
            G, n = self.geometry.n_elements, self.n_scans
            k = _slab_scans(G, self.dtype.itemsize, max_bytes)
            for start in range(0, n, k):
                rows = np.empty((min(k, n - start), G), dtype=self.dtype)
                _read_transposed(str(self.paths[0]), data.offset, data.dtype, rows, G, first=start, n=n)
                yield start, rows
            return
        if not one_file or not data.flags.c_contiguous:
            yield from super().iter_scans(max_bytes)
            return
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        yield from _read_slabs(self.paths[0], data.offset, data.dtype, data.shape, k)

    def column_source(self, index=None) -> ColumnSource | None:
        """The data by columns (None for several 1-D files)."""
        if len(self.paths) > 1:
            return None
        nel = self.geometry.n_elements
        columns = NpyColumns(str(self.paths[0]))
        return ColumnSource(columns, self._data.dtype, self.n_scans, nel, index=index)


class ArrayReader(_RowsReader):
    """A numpy array in memory, (scans, columns): maps go back as .npy files."""

    def __init__(self, array: np.ndarray, name: str = "inputs"):
        if array.ndim != 2:
            raise InputError(
                f"`{name}` as a numpy array must be 2-D (scans, voxels); got shape {array.shape} (wrap "
                "a volume in a nibabel image: nib.Nifti1Image(data, affine))."
            )
        if array.dtype.kind not in "iuf" or 0 in array.shape:
            raise InputError(
                f"`{name}` must be a numeric array with at least one scan and one column; got "
                f"{array.dtype} of shape {array.shape}."
            )
        self._data = array
        self.paths = []
        self.in_memory = (
            MemoryInput("in-memory numpy array", type_name(array), array.shape, str(array.dtype), (array,)),
        )
        self.geometry = ArrayGeometry(int(array.shape[1]))
        self.n_scans = int(array.shape[0])
        self.dtype = array.dtype.newbyteorder("=")
        self.scale = None


class VolumeImageReader:
    """Volumes in memory (nibabel NIfTI, Analyze, MGH... images): one 4-D image, one 3-D image (one scan), or
    a list of 3-D images, one per scan, on one grid. The geometry (shape, affine, header) is the first
    image's, so maps are written as NIfTI on the same grid; values are the images' own (no scale factors)."""

    def __init__(self, images, name: str = "inputs"):
        self._arrays, memory = [], []
        for k, img in enumerate(images):
            values = np.asanyarray(img.dataobj)  # (an image whose file is gone: read once, scaled by nibabel)
            if values.dtype.kind == "b":
                values = values.view(np.uint8)
            what = f"`{name}[{k}]`" if len(images) > 1 else f"`{name}`"
            if values.ndim > 4:  # (singleton dimensions after the fourth: the 4-D run's values, as from a file)
                values = values.reshape(values.shape[:3] + tuple(_scan_dimensions(what, values.shape) or [1]))
            shape = values.shape
            if len(images) == 1 and len(shape) == 4:
                pass
            elif not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
                need = "a 3-D volume (one scan per image)" if len(images) > 1 else "a 3-D or 4-D volume"
                raise InputError(f"{what} must be {need}; got an image of shape {shape}.")
            if values.dtype.kind not in "iuf":
                raise InputError(f"`{name}`: image data must be numeric; got {values.dtype}.")
            header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None  # (NIfTI-2 included)
            _check_orientation(f"`{name}[{k}]`" if len(images) > 1 else f"`{name}`", img)
            affine = _affine(img)
            geometry = VolumeGeometry(tuple(int(n) for n in shape[:3]), affine, header)
            if k == 0:
                self.geometry = geometry
            else:
                self.geometry.check_same(geometry, f"`{name}[{k}]`")
            self._arrays.append(values)
            memory.append(memory_input(img, values))
        self.in_memory = tuple(memory)
        self.paths = []
        dtypes = {a.dtype.newbyteorder("=") for a in self._arrays}
        if len(dtypes) == 1:
            self.dtype = dtypes.pop()
        else:  # images of several types: their values in a float type that holds them all
            self.dtype = np.dtype(np.float64 if any(d.itemsize > 4 for d in dtypes) else np.float32)
        self._one_per_scan = len(self._arrays) > 1 or self._arrays[0].ndim == 3
        self.n_scans = len(self._arrays) if self._one_per_scan else int(self._arrays[0].shape[3])
        self.scale = None

    def column_source(self, index=None) -> ColumnSource | None:
        return None

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        nel = self.geometry.n_elements
        if self._one_per_scan:
            for i, a in enumerate(self._arrays):
                yield i, np.ascontiguousarray(a.reshape(1, nel, order="F"), dtype=self.dtype)
            return
        data = self._arrays[0]
        k = _slab_scans(nel, self.dtype.itemsize, max_bytes)
        for start in range(0, self.n_scans, k):
            slab = data[..., start : start + k]  # (x, y, z, c): elements x fastest, as in the files
            yield start, np.ascontiguousarray(slab.reshape(nel, -1, order="F").T, dtype=self.dtype)


ZARR_CHUNKS_PER_READ = 4096  # chunks a read of a Zarr store's rows spans at most (see ChunkedArrayReader.iter_scans)


class ChunkedArrayReader(_RowsReader):
    """A 2-D array (scans or subjects, columns) in a Zarr store or an HDF5 file, read a slab of rows at a time.

    ``maps.zarr`` or ``maps.h5`` holding one array (or one named ``data``); ``file.h5::group/name`` picks a
    dataset, ``store.zarr::name`` an array of a group. zarr and h5py are optional (``voxfit[zarr]``,
    ``voxfit[hdf5]``), imported here only. Only the input is read: values kept in other files (HDF5 external
    storage, virtual datasets and external links to other files; Zarr chunk files or folders that are links
    leading out of the store) are refused, here and wherever a :class:`ColumnSource` opens the input again.
    """

    def __init__(self, paths, kind: str):
        if len(paths) != 1:
            raise InputError(f"give one {kind} store holding a 2-D array (rows, columns); got {len(paths)} paths.")
        text = str(paths[0])
        location, _, name = text.partition("::")
        self.paths = [Path(location)]
        if not self.paths[0].exists():
            raise InputError(f"{location}: no such file or store.")
        self._data = open_zarr(location, name) if kind == "zarr" else open_hdf5(location, name)
        if len(self._data.shape) != 2:
            raise InputError(
                f"{text}: the array has shape {tuple(self._data.shape)}; give a 2-D array (rows, columns)."
            )
        _check_dimensions(text, self._data.shape)
        self.dtype = np.dtype(self._data.dtype).newbyteorder("=")
        if self.dtype.kind not in "iuf":
            raise InputError(f"{text}: data must be numeric; got {self.dtype}.")
        self.geometry = ArrayGeometry(int(self._data.shape[1]))
        self.n_scans = int(self._data.shape[0])
        self.scale = None
        self._kind = kind

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        """Slabs of rows, of at most `max_bytes` and, from a Zarr store, of at most ZARR_CHUNKS_PER_READ chunks: zarr
        holds about 2.7 KB beside each chunk a read spans (a store of 1 x 1 chunks, 0.34 MiB of data, peaked at 333
        MiB under --max-memory 300M; a tester's)."""
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        chunks = getattr(self._data, "chunks", None) if self._kind == "zarr" else None
        if chunks:
            across = -(-self.geometry.n_elements // int(chunks[1]))  # (the chunks a row of chunks holds)
            k = min(k, max(1, ZARR_CHUNKS_PER_READ // across) * int(chunks[0]))
        for start in range(0, self.n_scans, k):
            yield start, np.asarray(self._data[start : start + k], dtype=self.dtype)

    def column_source(self, index=None) -> ColumnSource:
        """The data by columns: the array is found again by its path in the store (HDF5: its full name)."""
        path, nel = str(self.paths[0]), self.geometry.n_elements
        columns = ZarrColumns(path, self._data.path) if self._kind == "zarr" else HDF5Columns(path, self._data.name)
        return ColumnSource(columns, self._data.dtype, self.n_scans, nel, index=index)


@contextmanager
def _reading(path: str) -> Iterator[None]:
    """Errors of reading `path` where a worker reads columns, as InputErrors naming it; a path that is not there
    is said to be missing where the data are read before any reader opens it (the stores' own openers would
    call it unreadable)."""
    try:
        if not Path(path).exists():
            raise FileNotFoundError(path)
        yield
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file where the data are read (Dask workers must see the inputs at the client's paths)."
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the data ({type(exc).__name__}: {exc}).") from None


def _pread_span(path: str, offset: int, shape: tuple[int, int], lo: int, hi: int, dtype, fortran: bool = False):
    """Elements lo:hi of each row of the (rows, elements) array of `dtype` stored at byte `offset` of `path` (C
    order; `fortran`: column by column), (rows, hi - lo), read by ``pread``, not through a memory map: a mapped
    file's pages count in the process's resident memory, and on a file not in the page cache the kernel's readahead
    maps large folios around every span read, so a block of columns mapped most of the file (a 131 MB run fitted
    by columns under ``--max-memory 384M`` peaked at 411 MiB from a cold cache, 307 MiB from a warm one; 261 MiB
    either way read so)."""
    rows, elements = shape
    raw = np.empty((hi - lo, rows) if fortran else (rows, hi - lo), dtype=dtype)
    itemsize = raw.dtype.itemsize
    if fortran:  # the columns' values lie together: one read
        spans = [(raw, offset + lo * rows * itemsize)]
    else:  # a read per row
        spans = ((raw[r], offset + (r * elements + lo) * itemsize) for r in range(rows))
    with open(path, "rb", buffering=0) as fh:
        for buffer, start in spans:
            if os.preadv(fh.fileno(), [buffer], start) != buffer.nbytes:
                raise ValueError("the file ends before its data do")
    return raw.T if fortran else raw


def _worker_path(path) -> str:
    """`path` as a Dask worker opens it: absolute, as the client found it. A relative path was looked up in each
    worker's own folder, so a file of that name there was fitted in its place, exit 0 (a tester's: betas 0.002
    where the client's file gives 1)."""
    return os.path.abspath(path)


@dataclass(frozen=True)
class NiftiColumns:
    """How a worker reads columns of uncompressed NIfTI data: `files` ``(path, byte offset of the data)``, one
    4-D file or 3-D files one scan each, each scan's span read by :func:`_pread_span`."""

    files: tuple[tuple[str, int], ...]
    file_dtype: np.dtype
    n_scans: int
    n_elements: int

    def __post_init__(self):
        object.__setattr__(self, "files", tuple((_worker_path(path), offset) for path, offset in self.files))

    def __call__(self, lo: int, hi: int, dtype: np.dtype) -> NDArray:
        """Elements lo:hi of every scan, (n_scans, hi - lo), in `dtype`."""
        out = np.empty((self.n_scans, hi - lo), dtype=dtype)
        rows = self.n_scans // len(self.files)
        for k, (path, offset) in enumerate(self.files):
            with _reading(path):
                out[k * rows : (k + 1) * rows] = _pread_span(
                    path, offset, (rows, self.n_elements), lo, hi, self.file_dtype
                )
        return out


@dataclass(frozen=True)
class CiftiColumns:
    """How a worker reads columns of CIFTI files that hold each grayordinate's series together: `files`
    ``(path, byte offset of the data, scans)``, the runs in order, each file's series of elements lo:hi read as
    one span by :func:`_pread_span`, into an array of series (as :func:`voxfit.io.gather` holds them)."""

    files: tuple[tuple[str, int, int], ...]
    file_dtype: np.dtype
    n_elements: int

    def __post_init__(self):
        object.__setattr__(self, "files", tuple((_worker_path(path), at, rows) for path, at, rows in self.files))

    def __call__(self, lo: int, hi: int, dtype: np.dtype) -> NDArray:
        """Elements lo:hi of every scan, (n_scans, hi - lo), F-ordered, in `dtype`."""
        out = np.empty((hi - lo, sum(rows for _, _, rows in self.files)), dtype=dtype).T
        first = 0
        for path, offset, rows in self.files:
            with _reading(path):
                span = _pread_span(path, offset, (rows, self.n_elements), lo, hi, self.file_dtype, fortran=True)
            out[first : first + rows] = span
            first += rows
        return out


@dataclass(frozen=True)
class _FileColumns:
    """Columns read from the one file or store at `path`, made absolute where the source is made (the client)."""

    path: str

    def __post_init__(self):
        object.__setattr__(self, "path", _worker_path(self.path))


@dataclass(frozen=True)
class NpyColumns(_FileColumns):
    """How a worker reads columns of a 2-D .npy array: its header read through a memory map that touches no data,
    the columns by :func:`_pread_span`."""

    def __call__(self, lo: int, hi: int, dtype: np.dtype) -> NDArray:
        with _reading(self.path):
            header = np.load(self.path, mmap_mode="r", allow_pickle=False)
            shape, stored, offset = header.shape, header.dtype, header.offset
            fortran = held_as_series(header)
            del header
            return np.array(_pread_span(self.path, offset, shape, lo, hi, stored, fortran), dtype=dtype)


@dataclass(frozen=True)
class ZarrColumns(_FileColumns):
    """How a worker reads columns of the array `name` of a Zarr store: the slab ``[:, lo:hi]``."""

    name: str

    def __call__(self, lo: int, hi: int, dtype: np.dtype) -> NDArray:
        with _reading(self.path):
            return np.asarray(open_zarr(self.path, self.name)[:, lo:hi], dtype=dtype)


@dataclass(frozen=True)
class HDF5Columns(_FileColumns):
    """How a worker reads columns of the dataset `name` (its full name) of an HDF5 file: the slab
    ``[:, lo:hi]``, the file closed after it."""

    name: str

    def __call__(self, lo: int, hi: int, dtype: np.dtype) -> NDArray:
        with _reading(self.path):
            array = open_hdf5(self.path, self.name)
            try:
                return np.asarray(array[:, lo:hi], dtype=dtype)
            finally:
                array.file.close()


class ColumnSource:
    """Where the columns of a reader's data are, for a Dask worker to read its own blocks: picklable, no data.

    ``source[:, a:b]`` (shape ``(n_scans, len(index))``; columns are the elements `index` of each scan, all
    of them when None) opens the file where it is called and reads only the elements from the block's first
    column to its last, as the fit sees them (scale factors applied by :func:`apply_scale`). `columns` is the
    reader's own way of reading elements ``lo:hi`` of every scan (:class:`NiftiColumns`, :class:`CiftiColumns`,
    :class:`NpyColumns`, :class:`ZarrColumns`, :class:`HDF5Columns`): ``columns(lo, hi, dtype)``, its errors
    InputErrors naming the file. :meth:`raw` gives the stored values.
    """

    worker_reads = True  # voxfit.engine.fit.map_blocks sends the source, not blocks of data

    def __init__(self, columns, file_dtype, n_scans: int, n_elements: int, *, scale=None, index=None):
        self.columns, self.scale = columns, scale
        self.raw_dtype = np.dtype(file_dtype).newbyteorder("=")
        self.dtype = self.raw_dtype if scale is None else working_dtype(self.raw_dtype, scale)
        self.n_elements = int(n_elements)
        self.index = None if index is None else np.asarray(index, dtype=np.intp)
        self.shape = (int(n_scans), self.n_elements if index is None else self.index.size)
        self.ndim = 2

    def __getitem__(self, key) -> NDArray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        values = self.scaled(self.raw(cols))
        return values if rows == slice(None) else values[rows]

    def spans(self, max_bytes: int = 64 << 20) -> list[tuple[int, int]]:
        """Column ranges ``(a, b)`` covering the columns, each holding at most `max_bytes` of stored values
        (at least one column): one task each on a Dask cluster."""
        n, V = self.shape
        step = max(1, int(max_bytes) // (n * self.raw_dtype.itemsize))
        return [(a, min(V, a + step)) for a in range(0, V, step)]

    def scaled(self, raw: NDArray) -> NDArray:
        """Stored values as the fit sees them (:func:`apply_scale`)."""
        return apply_scale(raw, self.scale, self.dtype)

    def raw(self, cols=slice(None)) -> NDArray:
        """The stored values of columns `cols` (a slice or integers), (n_scans, k), in native byte order: in C
        order, or each column's series together where the file stores them so (a Fortran-ordered .npy; CIFTI,
        as :func:`voxfit.io.gather` holds them too, so that the products of the fits round alike)."""
        if isinstance(cols, slice) and cols.step in (None, 1):
            a, b, _ = cols.indices(self.shape[1])
            elements = np.arange(a, max(a, b)) if self.index is None else self.index[a:b]
        else:
            elements = np.arange(self.shape[1])[cols] if self.index is None else self.index[cols]
        if elements.size == 0:
            return np.empty((self.shape[0], 0), dtype=self.raw_dtype)
        lo, hi = int(elements.min()), int(elements.max()) + 1
        slab = self.columns(lo, hi, self.raw_dtype)
        if elements.size == hi - lo and elements[0] == lo:
            return slab
        if not slab.flags.c_contiguous:  # series together: taken as series
            return np.take(slab.T, elements - lo, axis=0).T
        return np.take(slab, elements - lo, axis=1)


def read_mesh(path, n_vertices: int, structure: str | None = None) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The vertices (n_vertices, 3) and triangles (k, 3) of a GIFTI surface for data on `n_vertices` vertices, of
    the data's `structure` where both say theirs (fsaverage's and fsLR's hemispheres have as many vertices each:
    the other hemisphere's mesh was taken, its clusters and smoothing over another surface's neighbours)."""
    _check_gifti_sizes(Path(path))
    try:
        img = nib.load(str(path))
        coords, faces = img.agg_data(("pointset", "triangle"))
    except Exception as exc:  # nibabel raises many kinds for a file that is not a GIFTI surface
        raise InputError(f"mesh {path}: not a GIFTI surface with vertices and triangles ({exc}).") from None
    lies = _gifti_structure(img, Path(path).name) if isinstance(img, nib.gifti.GiftiImage) else None
    if structure and lies and lies != structure:
        raise InputError(
            f"mesh {path} lies on {lies} but the data on {structure}; give the data's hemisphere's surface."
        )
    if np.ndim(coords) != 2 or np.ndim(faces) != 2:  # (nibabel gives () for an intent the file lacks)
        raise InputError(f"mesh {path}: not a GIFTI surface with vertices and triangles.")
    if coords.shape[0] != n_vertices:
        raise InputError(
            f"mesh {path} has {coords.shape[0]} vertices but the data have {n_vertices}; give the data's surface."
        )
    faces = np.asarray(faces, dtype=np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):  # (else refused in the API's words, later)
        raise InputError(
            f"mesh {path}: its triangles index vertices {faces.min():,} to {faces.max():,}, beyond the data's "
            f"{n_vertices:,} vertices (0 to {n_vertices - 1:,}): the mesh is broken or of another surface; give the "
            "mesh of the same surface as the data."
        )
    coords = np.asarray(coords, dtype=np.float64)
    finite = np.isfinite(coords).all(axis=1)
    if not finite.all():  # (FILM's neighbourhood went NaN, its t changed at every vertex: a tester's)
        bad = np.flatnonzero(~finite)
        which = f"vertex {bad[0]:,} has" if bad.size == 1 else f"vertices {bad[0]:,} and {bad.size - 1:,} more have"
        raise InputError(
            f"mesh {path}: its {which} no finite coordinates; the mesh is broken: write it again from its source (a "
            "surface of the data's, as midthickness)."
        )
    return coords, faces


def open_reader(paths, name: str = "inputs"):
    """The reader for one path or a list of paths (a list of 3-D volumes is one scan per file), a nibabel image,
    a list of 3-D nibabel images (one per scan) or a 2-D numpy array (see :func:`check_data`; `name` is the
    argument's name in messages); a run may be named by a folder of scans, a quoted pattern or a .txt list of
    them (see :mod:`voxfit.io.scans`). A reader is returned as it is: a header read once serves every pass."""
    if isinstance(paths, Reader):
        return paths
    data = check_data(paths, name)
    if isinstance(data, np.ndarray):
        return ArrayReader(data, name)
    if is_image(data) or (isinstance(data, list) and is_image(data[0])):
        return _image_reader([data] if is_image(data) else data, name)
    items = [data] if isinstance(data, Path) else data
    runs = [expand_run(p) for p in items]
    if any(r is not None for r in runs):
        if len(items) > 1:
            raise InputError(
                f"{len(items)} inputs name runs (folders, patterns or lists of scans); give one run here, "
                "or several runs to `voxfit fit` / fit_runs with one design each."
            )
        check_scan_run(items[0], runs[0])  # (a first-level run: a scan lost would move the later ones' times)
        items = runs[0]
    paths = [Path(p) for p in items]
    seen: dict[object, Path] = {}
    for p in paths:  # one scan or map counted twice would inflate the degrees of freedom
        first = seen.setdefault(file_identity(p), p)
        if first is not p:
            also = f" (also as {first})" if str(first) != str(p) else ""
            raise InputError(f"{p} is given twice{also}; each scan or map is one file, given once.")
    kinds = {_kind(p) for p in paths}
    if len(kinds) > 1:
        raise InputError(f"the inputs mix file types ({', '.join(sorted(kinds))}); give files of one type.")
    kind = kinds.pop()
    if kind == "nifti":
        reader = NiftiReader(paths[0]) if len(paths) == 1 else VolumeListReader(paths)
    elif kind in ("zarr", "hdf5"):
        reader = ChunkedArrayReader(paths, kind)
    else:
        reader = {"gifti": GiftiReader, "cifti": CiftiReader, "npy": NpyReader}[kind](paths)
    check_scan_memory(reader, str(paths[0]))
    return _noted(reader)


def _noted(reader):
    """`reader`, the identity of each file it reads noted as it is opened (``voxfit._digest.note_opened``): model.json
    is not written for data whose file changed before the run ended (``ModelRecord.write``)."""
    for path in reader.paths:
        note_opened(path)
    return reader


def _file_of(img) -> Path | None:
    """The file an image loaded with nibabel still reads its data from (None for data in memory)."""
    name = img.get_filename() if hasattr(img, "get_filename") else None
    if name is None or not nib.is_proxy(getattr(img, "dataobj", None)) or not Path(name).is_file():
        return None
    return Path(name)


def _image_reader(images, name: str):
    """The reader of nibabel images: their files when they were loaded from files that still hold the data on
    the same grid (read in slabs, checksummed as files), else the values in memory."""
    files = [_file_of(img) for img in images]
    if all(f is not None for f in files):
        try:
            one_volume = len(files) == 1 and _kind(files[0]) == "nifti"  # a 3-D image is one scan, as in memory
            reader = NiftiReader(files[0], allow_3d=True) if one_volume else open_reader(files)
        except InputError:
            if any(_offset_inside_header(f) is not None for f in files):
                raise  # (nibabel's own image of such a file would hand its header's bytes over as data)
            reader = None
        same = reader is not None and all(
            not isinstance(reader.geometry, VolumeGeometry)
            or (tuple(img.shape[:3]) == reader.geometry.shape and np.allclose(img.affine, reader.geometry.affine))
            for img in images
        )
        if same:
            return _noted(reader)
    kinds = {"volume" if isinstance(img, nib.spatialimages.SpatialImage) else type(img).__name__ for img in images}
    if len(kinds) > 1:
        found = ", ".join(dict.fromkeys(type_name(img) for img in images))
        raise InputError(f"`{name}` mixes kinds of image ({found}); give images of one kind.")
    kind = kinds.pop()
    if kind == "volume":
        return VolumeImageReader(images, name)
    return GiftiReader(images) if kind == "GiftiImage" else CiftiReader(images)


def open_map(path, spm_sidecar: bool = True):
    """The reader of one file of any kind, a 3-D volume allowed: a mask or a statistic map (or such an image
    in memory). `spm_sidecar`: check an SPM .mat beside a volume (not where the header alone is looked at)."""
    if is_image(path):
        return _image_reader([path], "mask")
    path = Path(path)
    if _kind(path) != "nifti":
        return open_reader([path])
    reader = NiftiReader(path, allow_3d=True, spm_sidecar=spm_sidecar)
    check_scan_memory(reader, str(path))
    return _noted(reader)
