"""Zarr stores and HDF5 files opened for reading, with their values checked to lie inside them: voxfit reads
only the input it is given (HDF5 external raw storage, virtual datasets and external links, and Zarr links
that lead out of the store, are refused)."""

from __future__ import annotations

import os
from pathlib import Path

from ..exceptions import InputError
from .checks import check_readable

__all__ = ["open_hdf5", "open_zarr"]


def open_zarr(location: str, name: str):
    try:
        import zarr
    except ImportError:
        raise InputError(f"{location}: reading Zarr needs the zarr package: pip install 'voxfit[zarr]'.") from None
    _check_zarr_inside(location)
    try:
        node = zarr.open(location, mode="r")
    except Exception as exc:  # zarr raises several kinds for what is not a store
        raise InputError(f"{location}: not a readable Zarr store ({type(exc).__name__}).") from None
    if hasattr(node, "shape"):
        return node
    arrays = dict(node.arrays()) if hasattr(node, "arrays") else {}
    pick = name or ("data" if "data" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None))
    if pick is None or pick not in arrays:
        raise InputError(
            f"{location}: name the array to read as {location}::NAME (arrays: {', '.join(sorted(arrays)) or 'none'})."
        )
    return arrays[pick]


def open_hdf5(location: str, name: str):
    try:
        import h5py
    except ImportError:
        raise InputError(f"{location}: reading HDF5 needs the h5py package: pip install 'voxfit[hdf5]'.") from None
    check_readable(Path(location))
    try:
        f = h5py.File(location, "r")
    except OSError as exc:
        raise InputError(f"{location}: not a readable HDF5 file ({exc}).") from None
    try:
        if name:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise InputError(f"{location}: no dataset {name!r}.")
            return _check_hdf5_inside(location, name, f[name])
        if isinstance(f.get("data", getlink=True), h5py.ExternalLink) and "data" in f:  # (visititems skips it)
            return _check_hdf5_inside(location, "data", f["data"])
        found: list[str] = []
        f.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
        pick = "data" if "data" in found else (found[0] if len(found) == 1 else None)
        if pick is None:
            raise InputError(
                f"{location}: name the dataset to read as {location}::NAME (datasets: {', '.join(found) or 'none'})."
            )
        return _check_hdf5_inside(location, pick, f[pick])
    except InputError:
        f.close()
        raise


# Only the input is read (issue 14): model.json records and hashes the input file or store, so values must not
# come from anywhere else. HDF5 can keep a dataset's values in other files (external raw storage, virtual
# datasets, external links) and a Zarr store's chunks can be symbolic links to files elsewhere; voxfit refuses
# them (on the client and on every Dask worker that opens the input) rather than read files it never recorded.
_COPY_HINT = "voxfit reads only the input file; copy the values into it"


def _check_hdf5_inside(location: str, name: str, ds, seen=()):
    """`ds`, the dataset `name` of the HDF5 file `location`, if its values are all stored in that file (a virtual
    dataset's sources in the file too, checked in turn); else an InputError naming the dataset and the file it
    points to."""
    where = f"{location}::{name.lstrip('/')}"
    other = ds.file.filename
    if not _same_file(other, location):
        ds.file.close()  # (the linked file h5py opened; the caller closes the input)
        raise InputError(f"{where} is an external link to {other}; {_COPY_HINT} (h5copy, or h5py's copy).")
    if ds.external:
        files = ", ".join(dict.fromkeys(os.fsdecode(entry[0]) for entry in ds.external))
        raise InputError(
            f"{where} keeps its values outside the file, in {files} (HDF5 external storage); "
            f"{_COPY_HINT} (h5repack -l CONTI)."
        )
    if ds.is_virtual:
        sources = ds.virtual_sources()
        outside = [m.file_name for m in sources if m.file_name != "." and not _same_file(m.file_name, location)]
        if outside:
            raise InputError(
                f"{where} is a virtual dataset reading {', '.join(dict.fromkeys(outside))}; "
                f"{_COPY_HINT} (h5repack, or write the dataset's values with h5py)."
            )
        for source in dict.fromkeys(m.dset_name for m in sources):  # (in this file: they may be
            inner = ds.file.get(source)  # external storage or links themselves; a missing one reads as fill)
            if inner is not None and hasattr(inner, "is_virtual") and source not in seen:
                _check_hdf5_inside(location, source, inner, (*seen, name, source))
    return ds


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # (a file that does not exist is not the input)
        return False


def _check_zarr_inside(location: str) -> None:
    """An InputError naming the first symbolic link in the Zarr store `location` (file or folder) that leads
    outside it. The store itself may be a link: its target is the store."""
    root = os.path.realpath(location)
    for folder, dirs, files in os.walk(root):  # (links to folders are listed in dirs, not followed)
        for entry in sorted(dirs + files):
            path = os.path.join(folder, entry)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    raise InputError(
                        f"{location}: {os.path.relpath(path, root)} in the Zarr store is a link to "
                        f"{target}, outside the store; voxfit reads only the store (replace the link "
                        "by a copy of what it points to)."
                    )
