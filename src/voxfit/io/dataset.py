"""``voxfit.load``: image files in, an (n_scans x n_voxels) data matrix and the masker that maps it back."""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import working_dtype
from .checks import check_design_rows
from .masking import Masker, ScanGlobals, explicit_mask, gather, gather_auto, resolve_mask_threshold
from .readers import DEFAULT_SLAB_BYTES, apply_scale, open_reader

__all__ = ["Dataset", "ScaledArray", "load", "preloaded"]

# A load already under way (see `preloaded`): [key, future], emptied by the load that takes it.
_PRELOADED: contextvars.ContextVar[list | None] = contextvars.ContextVar("voxfit_preloaded", default=None)
_MAP_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar("voxfit_map_files", default=False)


class ScaledArray:
    """Integer data kept compact, seen as ``slope * raw + inter`` one block at a time.

    Indexing returns float32 arrays (float64 for 32-bit integers and float64 data, as the precision policy);
    ``voxfit.fit`` reads it block by block, so the scaled copy of the whole
    never exists.
    """

    def __init__(self, raw: NDArray, slope: float, inter: float):
        self.raw, self.slope, self.inter = raw, float(slope), float(inter)
        self.dtype = working_dtype(raw.dtype, (self.slope, self.inter))
        self.shape = raw.shape
        self.ndim = raw.ndim

    def __getitem__(self, key) -> NDArray:
        return apply_scale(self.raw[key], (self.slope, self.inter), self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Loaded data: `data` (n_scans, n_voxels), `masker` (maps back to files), the files read (`paths`) and the
    inputs held in memory (`memory`: :class:`~voxfit.io.memory.MemoryInput`, for model.json)."""

    data: NDArray | ScaledArray
    masker: Masker
    paths: tuple[Path, ...]
    memory: tuple = ()
    globals: NDArray[np.float64] | None = None  # SPM's global of each whole scan, when asked for (`scan_globals`)

    @property
    def n_scans(self) -> int:
        return self.data.shape[0]

    @property
    def n_voxels(self) -> int:
        return self.data.shape[1]


def load(
    paths,
    mask=None,
    *,
    mask_threshold: float | str | None = None,
    progress: bool | None = None,
    n_scans: int | None = None,
    scan_globals: bool = False,
    name: str = "paths",
    observe=None,
    map_files: bool | None = None,
    slab_bytes: int = DEFAULT_SLAB_BYTES,
    maps: bool = False,
) -> Dataset:
    """Read image files (or images in memory) into an (n_scans, n_voxels) matrix, in one sequential pass.

    Parameters
    ----------
    paths : path, list of paths, nibabel image, list of nibabel images, or numpy array
        A 4-D NIfTI (.nii, .nii.gz, .hdr/.img), several 3-D NIfTI/Analyze files (one per scan), GIFTI
        (.func.gii, .shape.gii), CIFTI-2 (.dtseries.nii, .dscalar.nii) or .npy (scans, columns); or the same
        in memory: a nibabel image (4-D volume, a 3-D volume as one scan, GiftiImage, Cifti2Image), a list
        of 3-D nibabel volumes (one per scan) or a 2-D array (scans, columns). Maps of a volume in memory
        are written as NIfTI with its affine and shape; of an array, as .npy. A run of 3-D files may be
        named by a folder, a quoted pattern or a .txt list of them (see :mod:`voxfit.io.scans`).
    mask : path, nibabel image or boolean array, optional
        Elements to fit (an image of the data's geometry: non-zero finite values are in). Default: the
        automatic mask (finite in every scan and not constant over time; with `mask_threshold`, also above
        SPM's relative intensity threshold).
    mask_threshold : float, "auto" or None, optional
        With the automatic mask, SPM's relative intensity threshold: a voxel is kept when it is above this
        fraction of each scan's global in every scan (SPM's 0.8 for fMRI). ``"auto"`` (the default of
        first-level fits: ``fit_images``, ``FirstLevel``, ``fit_runs``, ``voxfit fit``) is 0.8 for volumes and
        none for surfaces, CIFTI and arrays; None (the default here: a loader of any maps) or 0: none.
    progress : bool, optional
        Show a progress bar on stderr (default: when stderr is a terminal).
    n_scans : int, optional
        The number of scans the caller expects (e.g. rows of a design): checked from the headers, before
        any data are read.
    scan_globals : bool
        Also compute SPM's global of each whole scan in the same pass (``Dataset.globals``; for SPM's global
        scaling, which does not depend on the mask).
    name : str
        The argument's name in error messages (callers pass their own: ``inputs``, ``bold``).
    observe : callable, optional
        With an explicit `mask`: called after each slab of scans is read, ``observe(out, stop)``: the
        (n_scans, n_voxels) array being filled, in the raw dtype, and the number of scans read into it so far
        (sums gathered during the read, e.g. ``voxfit.engine.smoothness.GridProducts.observe``).
    map_files : bool, optional
        Hold a CIFTI run that one uncompressed file stores as wanted (every grayordinate's series) as that file's
        own pages, mapped read-only (:meth:`~voxfit.io.CiftiReader.mapped_series`: 0.03 s against 0.23 s for
        438 MB), and gather the voxels of an explicit mask from a map of an uncompressed NIfTI run's file, not reads
        (:meth:`~voxfit.io.NiftiReader.mapped_scans`: 0.39-0.44 s against 0.53-0.60 s for 1.65 GB), as the command
        line does (:func:`files_mapped`): a CIFTI run's data are then read-only and change if the file is
        rewritten, and a file cut short while it is mapped ends the process (SIGBUS). By default (None) they are
        read into memory, except within :func:`files_mapped`.
    slab_bytes : int, optional
        With an explicit `mask`, the most bytes of whole scans read at a time (at least one scan; three such slabs
        of a .nii.gz in flight): 4 MiB by default, one scan of a 2 mm MNI run (4.3 MB). A .nii.gz is
        decompressed on a thread into three slabs in turn, faster the fewer bytes they span (its output written to
        memory still in the cache): whole fits of a 400-scan MNI .nii.gz, OLS 1.71-1.76 s against 1.77-1.95 s in
        16 MiB slabs, AR(1) 1.95-2.03 s against 2.02-2.08 s (6 alternated runs each, 2 cores; its .nii and 3-D
        scans as fast either way). 16 MiB had been chosen while the read began as the numerical modules imported,
        each slab's retake of the GIL then waiting up to the interpreter's switch interval.

    maps : bool, optional
        The paths are a group's maps, one per subject: an empty automatic mask is said in their words.

    Returns
    -------
    Dataset
        Its columns are the masked voxels in the order NIfTI stores them, x fastest (``Dataset.masker``; not
        numpy's ``volume[mask]`` order, z fastest): ``masker.inverse(values)[0].reshape(shape, order="F")`` is a
        column's values on the grid.
    """
    map_files = _MAP_FILES.get() if map_files is None else map_files
    held = _PRELOADED.get()
    key = _load_key(paths, mask, mask_threshold, n_scans, scan_globals, name)
    if held and key is not None and held[0] == key and observe is None:  # read by `preloaded`'s thread: taken once
        future = held.pop()
        held.clear()
        return future.result()
    reader = open_reader(paths, name)
    if n_scans is not None:
        check_design_rows(n_scans, reader.n_scans, reader.geometry.n_elements)
    globals_ = ScanGlobals(reader.n_scans, reader.scale) if scan_globals else None
    threshold = resolve_mask_threshold(mask_threshold, reader.geometry, explicit=mask is not None)
    if mask is None:
        if observe is not None:
            raise ValueError("`observe` needs an explicit mask (the automatic one is decided after the read).")
        raw, mask_array = gather_auto(reader, threshold, progress, globals_, map_files, maps)
    else:
        mask_array = explicit_mask(mask, reader.geometry)
        index = np.flatnonzero(mask_array)
        raw = gather(reader, index, progress, globals_, observe, slab_bytes, map_files=map_files)
    data = raw if reader.scale is None else ScaledArray(raw, *reader.scale)
    return Dataset(
        data=data,
        masker=Masker(reader.geometry, mask_array),
        paths=tuple(reader.paths),
        globals=None if globals_ is None else globals_.values,
        memory=tuple(reader.in_memory),
    )


def _load_key(paths, mask, mask_threshold, n_scans, scan_globals, name) -> tuple | None:
    """What makes two loads of files the same load (None for anything but paths: images in memory)."""
    items = paths if isinstance(paths, (list, tuple)) else [paths]
    if not all(isinstance(p, (str, os.PathLike)) for p in [*items, *([mask] if mask is not None else [])]):
        return None
    return (tuple(map(os.fspath, items)), mask and os.fspath(mask), mask_threshold, n_scans, scan_globals, name)


@contextlib.contextmanager
def files_mapped():
    """Within the block (in this context: not in threads it starts), :func:`load` holds a CIFTI run that one file
    stores as wanted as the file's own pages, and gathers an uncompressed NIfTI run from its file's map
    (``map_files``): for the command line's fits, whose data never leave the run, a run of one file or each of
    several runs (``fit_runs``)."""
    token = _MAP_FILES.set(True)
    try:
        yield
    finally:
        _MAP_FILES.reset(token)


@contextlib.contextmanager
def preloaded(
    future, paths, mask=None, *, mask_threshold=None, n_scans: int | None = None, scan_globals=False, name="paths"
):
    """Within the block, the first :func:`load` (in this context) of the same files with the same arguments
    (`progress` aside) returns ``future.result()``: that load, started earlier by the caller in a thread, so that
    the data are read while the numerical modules import (the command line's ``voxfit group``). Only files are
    matched, by their paths as given; any other load reads its own."""
    key = _load_key(paths, mask, mask_threshold, n_scans, scan_globals, name)
    token = _PRELOADED.set([key, future] if key is not None else None)
    try:
        yield
    finally:
        _PRELOADED.reset(token)
