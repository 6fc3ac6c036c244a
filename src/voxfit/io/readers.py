"""Readers: every supported file type, seen through one protocol.

The protocol (checked by ``tests/test_readers.py`` on every reader)::

    reader.geometry      Geometry of one scan (VolumeGeometry, SurfaceGeometry, CiftiGeometry, ArrayGeometry)
    reader.n_scans       number of scans
    reader.dtype         native dtype of the raw values that iter_scans yields (integers stay integers)
    reader.scale         None, or (slope, inter): the values are slope * raw + inter (NIfTI scl_slope/inter)
    reader.paths         the files read
    reader.iter_scans(max_bytes) -> iterator of (first_scan, array (k, n_elements)), in scan order,
                         each array at most max_bytes (at least one scan), read sequentially once;
                         an array may be overwritten by the next one (copy what you keep)

Uncompressed files are read through memory maps, a slab of scans at a time; compressed NIfTI is decompressed
with the fastest gzip available, a slab of scans at a time, so the whole 4-D image is never in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from ..exceptions import InputError
from ._gzip import open_gzip
from .geometry import ArrayGeometry, CiftiGeometry, Geometry, SurfaceGeometry, VolumeGeometry

__all__ = ["open_reader", "NiftiReader", "VolumeListReader", "GiftiReader", "CiftiReader", "NpyReader"]

DEFAULT_SLAB_BYTES = 4 << 20


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".dtseries.nii", ".dscalar.nii", ".dtseries.nii.gz", ".dscalar.nii.gz")):
        return "cifti"
    if name.endswith(".gii"):
        return "gifti"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".zarr", ".zarr/")) or ".zarr::" in name:
        return "zarr"
    if name.endswith((".h5", ".hdf5")) or ".h5::" in name or ".hdf5::" in name:
        return "hdf5"
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz", ".hdr.gz")):
        return "nifti"
    raise InputError(f"{path}: not an image voxfit can read (expected .nii, .nii.gz, .hdr/.img, .gii, .dtseries.nii, "
                     ".dscalar.nii, .npy, .zarr or .h5).")  # fmt: skip


def _load(path: Path):
    """nibabel's image object for `path`, with its errors turned into one-line InputErrors."""
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}).") from None


def _scale(proxy) -> tuple[float, float] | None:
    """(slope, inter) of an image's data (nibabel moves scl_slope/inter, or SPM's funused1, to the proxy)."""
    slope, inter = getattr(proxy, "slope", None), getattr(proxy, "inter", None)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


def _slab_scans(n_elements: int, itemsize: int, max_bytes: int) -> int:
    return max(1, int(max_bytes) // max(1, n_elements * itemsize))


class NiftiReader:
    """A NIfTI-1/NIfTI-2 or Analyze image, 4-D (or 3-D as one scan when `allow_3d`), .nii, .nii.gz or .hdr/.img."""

    def __init__(self, path, allow_3d: bool = False):
        self.path = Path(path)
        img = _load(self.path)
        if not isinstance(img, nib.analyze.AnalyzeImage) or isinstance(img, nib.Cifti2Image):
            raise InputError(f"{self.path}: not a NIfTI or Analyze volume image.")
        shape = img.shape
        if len(shape) == 3 or (len(shape) == 4 and allow_3d and shape[3] == 1):
            if not allow_3d:
                raise InputError(
                    f"{self.path} is a 3-D image (one scan); give a 4-D image, or several 3-D files, one per scan."
                )
            n_scans = 1
        elif len(shape) == 4:
            n_scans = shape[3]
        else:
            raise InputError(f"{self.path}: expected a 4-D image (x, y, z, scans); got shape {shape}.")
        proxy = img.dataobj
        self.geometry = VolumeGeometry(tuple(int(s) for s in shape[:3]), img.affine.astype(np.float64), img.header)
        self.n_scans = int(n_scans)
        self._file_dtype = np.dtype(proxy.dtype)
        self.dtype = self._file_dtype.newbyteorder("=")
        self.scale = _scale(proxy)
        self._offset = int(proxy.offset)
        self._image_file = Path(img.file_map["image"].filename)
        self.paths = [self.path] if self._image_file == self.path else [self.path, self._image_file]
        self._compressed = self._image_file.name.lower().endswith(".gz")
        if proxy.order != "F":
            raise InputError(f"{self.path}: unsupported data layout (order {proxy.order}).")
        if not self._compressed:
            need = self._offset + self.n_scans * self.geometry.n_elements * self._file_dtype.itemsize
            have = self._image_file.stat().st_size
            if have < need:
                raise InputError(f"{self._image_file}: file is truncated ({have} bytes; the header promises {need}).")

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        nel = self.geometry.n_elements
        k = _slab_scans(nel, self.dtype.itemsize, max_bytes)
        if not self._compressed:  # one short-lived map per slab: its pages leave the process with it
            for start in range(0, self.n_scans, k):
                count = min(k, self.n_scans - start)
                offset = self._offset + start * nel * self._file_dtype.itemsize
                slab = np.memmap(self._image_file, dtype=self._file_dtype, mode="r", offset=offset, shape=(count, nel))
                yield start, slab if self._file_dtype.isnative else slab.astype(self.dtype)
            return
        yield from self._iter_gz(nel, k)

    def _iter_gz(self, nel: int, k: int) -> Iterator[tuple[int, NDArray]]:
        """Decompress in a background thread, a slab of scans at a time, into three rotating buffers.

        The decompressor releases the GIL, so the next slab is decompressed while the caller gathers the
        masked voxels of this one: loading costs ~1.1x a bare decompression instead of ~1.4x. A yielded slab
        is valid until the caller asks for the next.
        """
        bufs = [np.empty((min(k, self.n_scans), nel), dtype=self._file_dtype) for _ in range(3)]
        free: queue.Queue = queue.Queue()
        full: queue.Queue = queue.Queue()
        for b in bufs:
            free.put(b)
        stop = threading.Event()

        def produce():
            try:
                with open_gzip(self._image_file) as fh:
                    _read_into(fh, np.empty(self._offset, dtype=np.uint8), self._image_file)
                    for start in range(0, self.n_scans, k):
                        buf = free.get()
                        if stop.is_set():
                            return
                        count = min(k, self.n_scans - start)
                        _read_into(fh, buf[:count], self._image_file)
                        full.put((start, buf, count))
                full.put(None)
            except InputError as exc:
                full.put(exc)
            except Exception as exc:  # zlib.error, EOFError, OSError, isal's IsalError...: all mean corrupt data
                full.put(InputError(f"{self._image_file}: truncated or corrupt gzip data ({type(exc).__name__}: {exc})."))

        thread = threading.Thread(target=produce, name="voxfit-gunzip", daemon=True)
        thread.start()
        held = None
        try:
            while True:
                if held is not None:
                    free.put(held)
                    held = None
                item = full.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                start, held, count = item
                yield start, held[:count] if self._file_dtype.isnative else held[:count].astype(self.dtype)
        finally:
            stop.set()
            free.put(held if held is not None else bufs[0])  # wake the producer if it waits for a buffer
            thread.join()


def _read_into(fh, out: NDArray, path: Path) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise InputError(f"{path}: file is truncated (the data end {len(view) - got} bytes early).")
        got += n


class VolumeListReader:
    """Several 3-D volumes, one per scan (as SPM writes them); all on one grid."""

    def __init__(self, paths):
        self._readers = [NiftiReader(p, allow_3d=True) for p in paths]
        first = self._readers[0]
        for r in self._readers[1:]:
            if r.n_scans != 1:
                raise InputError(f"{r.path} has {r.n_scans} scans; give either one 4-D image or 3-D files only.")
            first.geometry.check_same(r.geometry, str(r.path))
        if first.n_scans != 1:
            raise InputError(f"{first.path} has {first.n_scans} scans; give either one 4-D image or 3-D files only.")
        self.geometry = first.geometry
        self.n_scans = len(self._readers)
        self.paths = [p for r in self._readers for p in r.paths]
        same = all(r.dtype == first.dtype and r.scale == first.scale for r in self._readers)
        self.scale = first.scale if same else None
        self.dtype = first.dtype if same else np.dtype(np.float32)
        self._convert = not same

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        for i, r in enumerate(self._readers):
            for _, vol in r.iter_scans(max_bytes):
                if self._convert:  # scale factors differ between files: apply each file's own
                    slope, inter = r.scale or (1.0, 0.0)
                    vol = (vol * np.float64(slope) + inter).astype(np.float32)
                yield i, vol


class _RowsReader:
    """Readers whose data are one (scans, elements) array-like in ``_data``: slabs of rows, in ``dtype``."""

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        for start in range(0, self.n_scans, k):
            yield start, np.asarray(self._data[start : start + k], dtype=self.dtype)


class GiftiReader(_RowsReader):
    """GIFTI surface data: one data array per scan, or one 2-D array (vertices x scans); several files allowed."""

    def __init__(self, paths):
        arrays, meta, self.paths = [], {}, []
        for p in paths:
            p = Path(p)
            img = _load(p)
            if not isinstance(img, nib.gifti.GiftiImage):
                raise InputError(f"{p}: not a GIFTI image.")
            if not img.darrays:
                raise InputError(f"{p}: the GIFTI file holds no data array.")
            if len(img.darrays) == 1 and img.darrays[0].data.ndim == 2:
                arrays.append(np.asarray(img.darrays[0].data).T)  # GIFTI's first dimension is the vertices
            else:
                arrays.append(np.stack([np.asarray(d.data).reshape(-1) for d in img.darrays]))
            meta = meta or dict(img.meta or {})
            self.paths.append(p)
        n_vertices = {a.shape[1] for a in arrays}
        if len(n_vertices) > 1:
            raise InputError(f"the GIFTI files have different numbers of vertices ({sorted(n_vertices)}).")
        self._data = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if self._data.dtype.kind not in "iuf":
            raise InputError(f"{self.paths[0]}: GIFTI data must be numeric; got {self._data.dtype}.")
        self._data = self._data.astype(self._data.dtype.newbyteorder("="), copy=False)
        self.geometry = SurfaceGeometry(int(self._data.shape[1]), meta)
        self.n_scans = int(self._data.shape[0])
        self.dtype = self._data.dtype
        self.scale = None



class CiftiReader:
    """CIFTI-2 dense time series or scalars (.dtseries.nii, .dscalar.nii): rows are scans, columns grayordinates."""

    def __init__(self, paths):
        self._imgs, self.paths, models = [], [], None
        for p in paths:
            p = Path(p)
            img = _load(p)
            if not isinstance(img, nib.Cifti2Image):
                raise InputError(f"{p}: not a CIFTI-2 image.")
            axis = img.header.get_axis(1)
            if not isinstance(axis, nib.cifti2.BrainModelAxis):
                raise InputError(f"{p}: only dense CIFTI files (brain models: vertices and voxels) are supported.")
            if models is not None and axis != models:
                raise InputError(f"{p} has different CIFTI brain models from {self.paths[0]}.")
            models = axis
            self._imgs.append(img)
            self.paths.append(p)
        self.geometry = CiftiGeometry(models)
        self.n_scans = int(sum(img.shape[0] for img in self._imgs))
        stored = {np.dtype(img.get_data_dtype()).newbyteorder("=") for img in self._imgs}
        scaled = any(_scale(img.dataobj) is not None for img in self._imgs)
        # nibabel hands back scaled values: integers with scale factors, or mixed dtypes, become float32
        self.dtype = stored.pop() if len(stored) == 1 and not scaled else np.dtype(np.float32)
        self.scale = None

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        k = _slab_scans(self.geometry.n_elements, self.dtype.itemsize, max_bytes)
        first = 0
        for img in self._imgs:
            for start in range(0, img.shape[0], k):
                yield first + start, np.asarray(img.dataobj[start : start + k], dtype=self.dtype)
            first += img.shape[0]


class NpyReader(_RowsReader):
    """A .npy array of shape (scans, columns), memory-mapped; or several 1-D .npy files, one per scan."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        arrays = []
        for p in self.paths:
            if not p.exists():
                raise InputError(f"{p}: no such file.")
            try:
                arrays.append(np.load(p, mmap_mode="r", allow_pickle=False))
            except (ValueError, OSError) as exc:
                raise InputError(f"{p}: not a readable .npy array ({exc}).") from None
        if len(arrays) == 1 and arrays[0].ndim == 2:
            self._data = arrays[0]
        elif all(a.ndim == 1 for a in arrays) and len({a.shape for a in arrays}) == 1:
            self._data = np.stack(arrays)
        else:
            raise InputError(f"{self.paths[0]}: give one 2-D array (scans, columns) or several 1-D arrays of one length.")
        if self._data.dtype.kind not in "iuf":
            raise InputError(f"{self.paths[0]}: data must be numeric; got {self._data.dtype}.")
        self.geometry = ArrayGeometry(int(self._data.shape[1]))
        self.n_scans = int(self._data.shape[0])
        self.dtype = self._data.dtype.newbyteorder("=")
        self.scale = None



class ChunkedArrayReader(_RowsReader):
    """A 2-D array (scans or subjects, columns) in a Zarr store or an HDF5 file, read a slab of rows at a time.

    ``maps.zarr`` or ``maps.h5`` holding one array (or one named ``data``); ``file.h5::group/name`` picks a
    dataset, ``store.zarr::name`` an array of a group. zarr and h5py are optional (``voxfit[zarr]``,
    ``voxfit[hdf5]``), imported here only.
    """

    def __init__(self, paths, kind: str):
        if len(paths) != 1:
            raise InputError(f"give one {kind} store holding a 2-D array (rows, columns); got {len(paths)} paths.")
        text = str(paths[0])
        location, _, name = text.partition("::")
        self.paths = [Path(location)]
        if not self.paths[0].exists():
            raise InputError(f"{location}: no such file or store.")
        self._data = _open_zarr(location, name) if kind == "zarr" else _open_hdf5(location, name)
        if len(self._data.shape) != 2:
            raise InputError(f"{text}: the array has shape {tuple(self._data.shape)}; give a 2-D array (rows, columns).")
        self.dtype = np.dtype(self._data.dtype).newbyteorder("=")
        if self.dtype.kind not in "iuf":
            raise InputError(f"{text}: data must be numeric; got {self.dtype}.")
        self.geometry = ArrayGeometry(int(self._data.shape[1]))
        self.n_scans = int(self._data.shape[0])
        self.scale = None



def _open_zarr(location: str, name: str):
    try:
        import zarr
    except ImportError:
        raise InputError(f"{location}: reading Zarr needs the zarr package: pip install 'voxfit[zarr]'.") from None
    try:
        node = zarr.open(location, mode="r")
    except Exception as exc:  # zarr raises several kinds for what is not a store
        raise InputError(f"{location}: not a readable Zarr store ({type(exc).__name__}).") from None
    if hasattr(node, "shape"):
        return node
    arrays = dict(node.arrays()) if hasattr(node, "arrays") else {}
    pick = name or ("data" if "data" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None))
    if pick is None or pick not in arrays:
        raise InputError(f"{location}: name the array to read as {location}::NAME (arrays: {', '.join(sorted(arrays)) or 'none'}).")
    return arrays[pick]


def _open_hdf5(location: str, name: str):
    try:
        import h5py
    except ImportError:
        raise InputError(f"{location}: reading HDF5 needs the h5py package: pip install 'voxfit[hdf5]'.") from None
    try:
        f = h5py.File(location, "r")
    except OSError as exc:
        raise InputError(f"{location}: not a readable HDF5 file ({exc}).") from None
    if name:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise InputError(f"{location}: no dataset {name!r}.")
        return f[name]
    found: list[str] = []
    f.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
    pick = "data" if "data" in found else (found[0] if len(found) == 1 else None)
    if pick is None:
        raise InputError(f"{location}: name the dataset to read as {location}::NAME (datasets: {', '.join(found) or 'none'}).")
    return f[pick]


def open_reader(paths):
    """The reader for one path or a list of paths (a list of 3-D volumes is one scan per file)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise InputError("no input file given.")
    kinds = {_kind(p) for p in paths}
    if len(kinds) > 1:
        raise InputError(f"the inputs mix file types ({', '.join(sorted(kinds))}); give files of one type.")
    kind = kinds.pop()
    if kind == "nifti":
        return NiftiReader(paths[0]) if len(paths) == 1 else VolumeListReader(paths)
    if kind in ("zarr", "hdf5"):
        return ChunkedArrayReader(paths, kind)
    return {"gifti": GiftiReader, "cifti": CiftiReader, "npy": NpyReader}[kind](paths)


def reader_geometry(path) -> Geometry:
    """Geometry of any readable file (for masks): its reader's, with 3-D volumes allowed."""
    path = Path(path)
    if _kind(path) == "nifti":
        return NiftiReader(path, allow_3d=True).geometry
    return open_reader([path]).geometry
