"""The reader protocol, checked on every reader; loading, masking and writing maps back (round trips)."""

import errno
import gzip
import mmap
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest
from blake3 import blake3

import voxfit
from voxfit.exceptions import InputError
from voxfit.io import CiftiGeometry, Masker, Reader, ScaledArray, SurfaceGeometry, VolumeGeometry, open_reader
from voxfit.engine.streaming import fit_streaming
from voxfit.io.masking import AutoMask, greater, spm_globals
from voxfit.io.readers import GiftiReader, open_map

from .helpers import assert_betas_close
from .imaging import (
    AFFINE,
    N_SCANS,
    SHAPE,
    as_matrix,
    cifti_axes,
    read_back,
    volume_data,
    write_cifti,
    write_cifti_runs,
    write_gifti,
    write_nifti,
    write_volume_list,
)


def _make(kind, tmp_path, rng):
    """(paths, expected float64 matrix (n, n_elements)); "paths" are nibabel images or an array for the kinds
    held in memory."""
    if kind in ("nifti1-image", "nifti2-image", "analyze-image", "image-list", "loaded-image"):
        data = volume_data(rng)
        if kind == "loaded-image":  # read from its file (which it still reads its data from)
            return [nib.load(write_nifti(tmp_path / "bold.nii.gz", data))], as_matrix(data).astype(np.float64)
        if kind == "image-list":  # one 3-D image per scan, as SPM users hold them
            return [nib.Nifti1Image(data[..., i], AFFINE) for i in range(N_SCANS)], as_matrix(data).astype(np.float64)
        klass = {"nifti2-image": nib.Nifti2Image, "analyze-image": nib.Spm2AnalyzeImage}.get(kind, nib.Nifti1Image)
        return [klass(data, AFFINE)], as_matrix(data).astype(np.float64)
    if kind == "gifti-image":
        matrix = (50 + rng.standard_normal((N_SCANS, 40))).astype(np.float32)
        return [nib.load(write_gifti(tmp_path / "lh.func.gii", matrix))], matrix.astype(np.float64)
    if kind == "cifti-image":
        series, models = cifti_axes()
        matrix = (50 + rng.standard_normal((N_SCANS, len(models)))).astype(np.float32)
        return [nib.Cifti2Image(matrix, header=(series, models))], matrix.astype(np.float64)
    if kind == "array":
        matrix = rng.standard_normal((N_SCANS, 25))
        return [matrix], matrix
    if kind in ("nii", "nii.gz", "nifti2", "int16-scaled.nii.gz", "analyze-4d"):
        data = volume_data(rng)
        name = {
            "nii": "bold.nii",
            "nii.gz": "bold.nii.gz",
            "nifti2": "bold2.nii",
            "int16-scaled.nii.gz": "bold.nii.gz",
            "analyze-4d": "bold.hdr",
        }[kind]
        klass = {"nifti2": nib.Nifti2Image, "analyze-4d": nib.Spm2AnalyzeImage}.get(kind, nib.Nifti1Image)
        path = write_nifti(tmp_path / name, data, klass, stored_dtype=np.int16 if "int16" in kind else None)
        return [path], read_back(path)
    if kind in ("3d-list", "analyze-list-scaled"):
        data = volume_data(rng)
        scaled = "scaled" in kind
        paths = write_volume_list(tmp_path, data, ".img" if "analyze" in kind else ".nii", np.int16 if scaled else None)
        return paths, np.vstack([read_back(p) for p in paths])
    if kind in ("gifti", "gifti-2d"):
        matrix = (50 + rng.standard_normal((N_SCANS, 40))).astype(np.float32)
        return [write_gifti(tmp_path / "lh.func.gii", matrix, two_d=kind == "gifti-2d")], matrix.astype(np.float64)
    if kind == "cifti":
        n = len(cifti_axes()[1])
        matrix = (50 + rng.standard_normal((N_SCANS, n))).astype(np.float32)
        return [write_cifti(tmp_path / "sub_bold.dtseries.nii", matrix)], matrix.astype(np.float64)
    if kind == "npy":
        matrix = rng.standard_normal((N_SCANS, 25))
        np.save(tmp_path / "data.npy", matrix)
        return [tmp_path / "data.npy"], matrix
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        matrix = rng.standard_normal((N_SCANS, 25)).astype(np.float32)
        z = zarr.open(str(tmp_path / "maps.zarr"), mode="w", shape=matrix.shape, chunks=(5, 10), dtype="f4")
        z[:] = matrix
        return [tmp_path / "maps.zarr"], matrix.astype(np.float64)
    if kind == "hdf5":
        h5py = pytest.importorskip("h5py")
        matrix = rng.standard_normal((N_SCANS, 25))
        with h5py.File(tmp_path / "maps.h5", "w") as f:
            f.create_dataset("group/betas", data=matrix, chunks=(4, 25))
        return [tmp_path / "maps.h5"], matrix
    raise AssertionError(kind)


KINDS = [
    "nii",
    "nii.gz",
    "nifti2",
    "int16-scaled.nii.gz",
    "analyze-4d",
    "3d-list",
    "analyze-list-scaled",
    "gifti",
    "gifti-2d",
    "cifti",
    "npy",
    "zarr",
    "hdf5",
    "nifti1-image",
    "nifti2-image",
    "analyze-image",
    "image-list",
    "loaded-image",
    "gifti-image",
    "cifti-image",
    "array",
]
IN_MEMORY = {"nifti1-image", "nifti2-image", "analyze-image", "image-list", "gifti-image", "cifti-image", "array"}


def test_zarr_and_hdf5_names_and_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    zarr = pytest.importorskip("zarr")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.ones((3, 4)), np.zeros((3, 5))
    with pytest.raises(InputError, match="name the dataset to read as"):
        open_reader(tmp_path / "two.h5")
    assert open_reader(f"{tmp_path / 'two.h5'}::b").geometry.n_elements == 5
    with pytest.raises(InputError, match="no dataset 'c'"):
        open_reader(f"{tmp_path / 'two.h5'}::c")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("data", shape=(3, 6), dtype="f8")[:] = 1.0
    g.create_array("other", shape=(2, 2), dtype="f8")
    assert open_reader(tmp_path / "g.zarr").geometry.n_elements == 6  # the array named 'data'
    three_d = zarr.open(str(tmp_path / "cube.zarr"), mode="w", shape=(2, 3, 4), dtype="f4")
    three_d[:] = 0
    with pytest.raises(InputError, match="give a 2-D array"):
        open_reader(tmp_path / "cube.zarr")
    with pytest.raises(InputError, match="no such file or store"):
        open_reader(tmp_path / "missing.zarr")


@pytest.mark.parametrize("kind", KINDS)
def test_reader_protocol(kind, tmp_path, rng):
    paths, expected = _make(kind, tmp_path, rng)
    reader = open_reader(paths if len(paths) > 1 else paths[0])
    assert isinstance(reader, Reader)
    assert reader.n_scans == expected.shape[0] == N_SCANS
    assert reader.geometry.n_elements == expected.shape[1]
    assert reader.dtype.isnative
    assert all(p.exists() for p in reader.paths)
    # files are named by path; data in memory by what they are, their shape and a checksum of their values
    assert bool(reader.paths) == (kind not in IN_MEMORY) and bool(reader.in_memory) == (kind in IN_MEMORY)
    for item in reader.in_memory:
        record = item.record()
        assert record["source"].startswith("in-memory") and "path" not in record
        values = b"".join(np.ascontiguousarray(a).tobytes() for a in item.arrays)  # (each array in C order)
        assert record["blake3"] == blake3(values).hexdigest()
        assert record == item.record()  # the same data, the same record
    for max_bytes in (1, 10**9):  # one scan per slab, and everything in one
        seen = 0
        for start, block in reader.iter_scans(max_bytes):
            assert start == seen and block.ndim == 2 and block.shape[1] == expected.shape[1]
            assert block.dtype == reader.dtype
            values = block.astype(np.float64)
            if reader.scale is not None:
                values = values * reader.scale[0] + reader.scale[1]
            npt.assert_allclose(values, expected[start : start + block.shape[0]], rtol=1e-6)
            seen += block.shape[0]
        assert seen == reader.n_scans


def test_saved_images_are_the_same_bytes_each_time_and_plain_gzip(tmp_path, rng, monkeypatch):
    """save_nifti's gzip header carries no time stamp (as nibabel's own): the same image written at two times
    gives the same bytes, hence the same digest (BLAKE3) in model.json; any gzip reader reads it."""
    from voxfit.io import save_nifti

    img = nib.Nifti1Image(rng.standard_normal((4, 5, 6, 3)).astype(np.float32), AFFINE)
    first, second = (tmp_path / "first" / "map.nii.gz", tmp_path / "second" / "map.nii.gz")  # (the header names it)
    first.parent.mkdir(), second.parent.mkdir()
    save_nifti(img, str(first))  # (a str path, as a library user passes)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # a later clock, were the writer to read it
    save_nifti(img, second)
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()) == img.to_bytes()
    npt.assert_array_equal(nib.load(second).get_fdata(), img.get_fdata())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("name", ["map.nii.gz", "map.nii"])
def test_saving_onto_a_full_device_raises_no_space_left(tmp_path, rng, name):
    """A real ENOSPC (the file a link to /dev/full), not a stand-in: save_nifti raises OSError 28, which the
    command line turns into its one-line message (tests/test_hostile_inputs.py)."""
    from voxfit.io import save_nifti

    target = tmp_path / name
    target.symlink_to("/dev/full")
    img = nib.Nifti1Image(rng.standard_normal((4, 5, 6)).astype(np.float32), AFFINE)
    with pytest.raises(OSError) as caught:
        save_nifti(img, target)
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize("kind", KINDS)
def test_load_and_write_round_trip(kind, tmp_path, rng):
    paths, expected = _make(kind, tmp_path, rng)
    ds = voxfit.load(paths if len(paths) > 1 else paths[0])
    auto = np.isfinite(expected).all(0) & (expected != expected[0]).any(0)
    npt.assert_array_equal(ds.masker.mask, auto)
    npt.assert_allclose(np.asarray(ds.data, dtype=np.float64), expected[:, auto], rtol=1e-6)
    # maps back to the input's format and geometry
    geom = ds.masker.geometry
    out = tmp_path / f"map{geom.extension}"
    values = np.arange(ds.n_voxels, dtype=np.float64)
    ds.masker.write(out, values, ["index"])
    back = open_map(out).geometry
    geom.check_same(back, "written map")
    read_back = (
        next(iter(open_reader(out).iter_scans()))[1][0]
        if geom.kind != "volume"
        else np.asarray(nib.load(out).dataobj).reshape(-1, order="F")
    )
    npt.assert_array_equal(read_back[auto], values)
    assert np.isnan(read_back[~auto]).all()
    if isinstance(geom, VolumeGeometry):
        npt.assert_allclose(nib.load(out).affine, AFFINE)
        assert nib.load(out).shape == SHAPE


def test_integer_data_stay_compact_and_scaled_per_block(tmp_path, rng):
    paths, expected = _make("int16-scaled.nii.gz", tmp_path, rng)
    ds = voxfit.load(paths[0])
    assert isinstance(ds.data, ScaledArray) and ds.data.raw.dtype == np.int16
    X = np.column_stack([np.arange(N_SCANS, dtype=float), np.ones(N_SCANS)])
    ref = voxfit.fit(X, expected[:, ds.masker.mask])
    fit = voxfit.fit(X, ds.data, block_size=7)
    npt.assert_allclose(fit.betas, ref.betas, rtol=1e-5, atol=1e-5 * np.abs(ref.betas).max())
    npt.assert_allclose(fit.residual_variance, ref.residual_variance, rtol=1e-5)


def test_explicit_mask_and_threshold(tmp_path, rng):
    paths, expected = _make("nii.gz", tmp_path, rng)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:5, 1:4, 1:3] = 1
    mpath = write_nifti(tmp_path / "mask.nii", mask)
    ds = voxfit.load(paths[0], mask=mpath)
    flat = mask.reshape(-1, order="F").astype(bool)
    npt.assert_array_equal(ds.masker.mask, flat)
    npt.assert_allclose(ds.data, expected[:, flat], rtol=1e-6)
    same = voxfit.load(paths[0], mask=mask.astype(bool))
    npt.assert_array_equal(same.data, ds.data)
    # SPM's relative threshold drops the zero background and keeps bright voxels
    thr = voxfit.load(paths[0], mask_threshold=0.8)
    assert thr.masker.mask.sum() <= ds.masker.mask.size and not thr.masker.mask[0]


@pytest.mark.parametrize("stored", [np.int16, np.int8])
def test_a_mask_with_scale_factors_selects_the_voxels_it_means(tmp_path, rng, stored):
    """nibabel saves a 0/1 float mask as int16 (int8) with scl_inter 0.5 (0.502): its zeros are stored as -32768
    (-128). The stored integers were tested for zero, so every voxel was in the mask, with exit 0; the report's
    maps were read stored, too."""
    import nibabel as nib

    from voxfit.report import read_map

    paths, _ = _make("nii", tmp_path, rng)
    mask = np.zeros(SHAPE)
    mask[2:5, 1:4, 1:3] = 1.0
    mpath = tmp_path / "mask.nii"
    nib.save(nib.Nifti1Image(mask, AFFINE, dtype=stored), mpath)
    assert nib.load(mpath).dataobj.inter != 0 and np.allclose(nib.load(mpath).get_fdata(), mask, atol=1e-6)
    flat = mask.reshape(-1, order="F") != 0
    npt.assert_array_equal(voxfit.load(paths[0], mask=mpath).masker.mask, flat)
    npt.assert_allclose(read_map(mpath)[1][0], mask.reshape(-1, order="F"), atol=1e-6)


def test_zero_in_first_scan_but_varying_is_kept(tmp_path, rng):
    data = volume_data(rng)
    data[3, 3, 3, 0] = 0.0  # zero only in the first scan: gathered in a second pass
    path = write_nifti(tmp_path / "b.nii.gz", data)
    ds = voxfit.load(path, mask_threshold=None)  # (a brain mask would drop a voxel dark in a scan)
    flat = as_matrix(data)
    j = np.ravel_multi_index((3, 3, 3), SHAPE, order="F")
    assert ds.masker.mask[j]
    npt.assert_array_equal(ds.data[:, np.searchsorted(ds.masker.index, j)], flat[:, j])
    npt.assert_array_equal(ds.data, flat[:, ds.masker.mask])


def test_cifti_automatic_mask_gathers_every_grayordinate_into_one_array(tmp_path, rng, monkeypatch):
    """A .dtseries.nii's automatic mask and data, its scans written straight into the gathered array: a
    grayordinate constant, one with a NaN, one zero only in the first scan (kept, without a second pass) are
    treated as the same values from a .npy file; an explicit mask of every grayordinate, or of some, reads the
    same way (from the stored layout across tiles, and from nibabel's image)."""
    from voxfit.io import masking, readers

    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 90, 2), 90, name="CortexLeft")
    data = rng.standard_normal((23, len(models))).astype(np.float32)
    data[:, 3] = 4.0
    data[7, 5] = np.nan
    data[0, 9] = 0.0
    path = tmp_path / "run.dtseries.nii"
    nib.save(nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 2, 23), models)), path)
    np.save(tmp_path / "run.npy", data)
    take = masking._take_columns

    def copies_none(block, index, out):
        raise AssertionError("a CIFTI slab copied again")

    monkeypatch.setattr(masking, "_take_columns", copies_none)
    ds = voxfit.load(str(path))
    monkeypatch.setattr(masking, "_take_columns", take)
    same = voxfit.load(str(tmp_path / "run.npy"))
    npt.assert_array_equal(ds.masker.mask, same.masker.mask)
    assert not ds.masker.mask[[3, 5]].any() and ds.masker.mask[9] and ds.masker.mask.sum() == len(models) - 2
    npt.assert_array_equal(ds.data, same.data)
    monkeypatch.setattr(masking, "_take_columns", copies_none)
    every = voxfit.load(str(path), mask=np.ones(len(models), dtype=bool))
    npt.assert_array_equal(every.data, data)
    some = rng.random(len(models)) < 0.3  # an explicit mask: its grayordinates read from each tile of series
    monkeypatch.setattr(readers, "TILE_SERIES", 4)
    monkeypatch.setattr(readers, "TILE_BYTES", 4 * 23 * 4)
    npt.assert_array_equal(voxfit.load(str(path), mask=some).data, data[:, some])
    reader = open_reader(str(path))
    out = np.empty((23, int(some.sum())), dtype=np.float32)
    assert all(np.shares_memory(b, out) for _, b in reader.scans_into(out, np.flatnonzero(some), max_bytes=200))
    npt.assert_array_equal(out, data[:, some])
    image = nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 2, 23), models))  # (nibabel's proxy: in memory)
    out[:] = np.nan
    list(open_reader(image).scans_into(out, np.flatnonzero(some)))
    npt.assert_array_equal(out, data[:, some])
    monkeypatch.setattr(readers, "TILE_BUFFER_LIMIT", 3 * 23 * 4)  # (series too long for a tile of 4: 3 a tile)
    out[:] = np.nan
    list(open_reader(str(path)).scans_into(out, np.flatnonzero(some)))
    npt.assert_array_equal(out, data[:, some])
    monkeypatch.setattr(masking, "_take_columns", take)  # indices outside the grayordinates: numpy's take, wrapped
    wrapped = masking.gather(open_reader(str(path)), np.array([-1, 0, len(models)]))
    npt.assert_array_equal(wrapped, data[:, [-1, 0, 0]])


@pytest.mark.parametrize("stored", ["<f4", ">f4", "<i2", "<f8"])
def test_cifti_series_are_held_as_stored(tmp_path, rng, monkeypatch, stored):
    """CIFTI files store each grayordinate's series together; voxfit holds them so (the data F-ordered, with no
    transpose made) when no whole scan is wanted: one run or two, every grayordinate or an explicit mask's, the
    automatic mask's (constant and NaN series moved out in the same buffer), in every stored dtype and byte
    order; the values are those of the scans as nibabel reads them, and the fits those of the scans in C order."""
    from voxfit.io import masking, readers

    paths = write_cifti_runs(tmp_path, rng, stored=stored)  # a constant series and a NaN
    runs = [np.asarray(nib.load(p).get_fdata(dtype=np.float64)) for p in paths]
    whole = np.concatenate(runs)

    def transposed(*args):
        raise AssertionError("a transpose made")

    monkeypatch.setattr(readers, "_transpose_into", transposed)
    monkeypatch.setattr(readers, "TILE_SERIES", 8)  # (tiles of series across the runs' files)
    monkeypatch.setattr(readers, "TILE_BYTES", 8 * 23 * 4)
    monkeypatch.setattr(masking, "SERIES_TILE_BYTES", 5 * 40 * 8)  # (the automatic mask's checks by tiles)
    for inputs, want in ((paths[:1], runs[0]), (paths, whole)):
        reader = open_reader([str(p) for p in inputs])
        assert reader.series_major
        auto = voxfit.load([str(p) for p in inputs])
        keep = np.isfinite(want).all(axis=0) & (want != want[0]).any(axis=0)
        npt.assert_array_equal(auto.masker.mask, keep)
        assert auto.data.flags.f_contiguous and auto.data.dtype == np.dtype(stored).newbyteorder("=")
        npt.assert_array_equal(auto.data, want[:, keep])
        some = rng.random(whole.shape[1]) < 0.4
        explicit = voxfit.load([str(p) for p in inputs], mask=some)
        assert explicit.data.flags.f_contiguous
        npt.assert_array_equal(explicit.data, want[:, some])
        X = np.column_stack([np.ones(len(want)), np.arange(len(want)), rng.standard_normal(len(want))])
        exact = voxfit.engine.fit(X, np.ascontiguousarray(explicit.data, dtype=np.float64))  # (by another route)
        for data in (explicit.data, np.ascontiguousarray(explicit.data)):  # to the precision policy's bounds
            fit = voxfit.engine.fit(X, data)  # (tests/test_precision.py)
            assert_betas_close(fit.betas, exact.betas, exact.stderr, 2e-5)
            npt.assert_allclose(fit.residual_variance, exact.residual_variance, rtol=1e-5)
    monkeypatch.undo()
    globals_ = voxfit.load([str(p) for p in paths], scan_globals=True)  # whole scans wanted: held as scans
    assert globals_.data.flags.c_contiguous
    npt.assert_array_equal(globals_.data, whole[:, np.isfinite(whole).all(axis=0) & (whole != whole[0]).any(axis=0)])


@pytest.mark.parametrize("stored", ["<f4", ">f4", "<i2", "<f8"])
def test_a_cifti_run_stored_as_held_is_the_files_map(tmp_path, rng, monkeypatch, stored):
    """With ``map_files`` (the command line's), one CIFTI run stored in the machine's byte order, unscaled, is
    held as the file's own pages (a read-only private map: nothing read into memory of the process's own), every
    grayordinate's series as stored; the automatic mask's kept series are copied out of it. Without it (the
    library's default) the data are read into memory, writable. Other byte orders, several runs, and file systems that
    map no files are read into memory. Either way the values are those nibabel reads, and a file truncated once
    opened is refused."""
    from voxfit.io import masking, readers

    paths = write_cifti_runs(tmp_path, rng, stored=stored)  # a constant series and a NaN
    runs = [np.asarray(nib.load(p).get_fdata(dtype=np.float64)) for p in paths]
    mapped = nib.load(paths[0]).get_data_dtype().isnative  # (nibabel may write another byte order than asked)
    for inputs, want in ((paths[:1], runs[0]), (paths, np.concatenate(runs))):
        every = masking.gather(open_reader([str(p) for p in inputs]), np.arange(want.shape[1]), map_files=True)
        npt.assert_array_equal(every, want)
        assert every.flags.f_contiguous
        held = mapped and len(inputs) == 1 and hasattr(mmap, "MAP_POPULATE")  # (Linux)
        assert (masking._file_map(every) is not None) is held and every.flags.writeable is not held
        whole = voxfit.load([str(p) for p in inputs], mask=np.ones(want.shape[1], bool), map_files=True)
        assert (masking._file_map(whole.data) is not None) is held
        read = voxfit.load([str(p) for p in inputs], mask=np.ones(want.shape[1], bool))  # (by default: read)
        assert read.data.flags.writeable and masking._file_map(read.data) is None
        npt.assert_array_equal(read.data, want)
        auto = voxfit.load([str(p) for p in inputs], map_files=True)
        keep = np.isfinite(want).all(axis=0) & (want != want[0]).any(axis=0)
        npt.assert_array_equal(auto.masker.mask, keep)
        npt.assert_array_equal(auto.data, want[:, keep])
        assert auto.data.flags.f_contiguous and auto.data.flags.writeable and masking._file_map(auto.data) is None
    with monkeypatch.context() as m:  # a file system that maps no files: read
        m.setattr(readers.mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError(19, "No such device")))
        read = masking.gather(open_reader(str(paths[0])), np.arange(runs[0].shape[1]), map_files=True)
        npt.assert_array_equal(read, runs[0])
        assert read.flags.writeable and read.flags.f_contiguous
    reader = open_reader(str(paths[0]))
    with open(paths[0], "r+b") as f:
        f.truncate(paths[0].stat().st_size - 8)
    with pytest.raises(InputError, match="ended before the data its header promises"):
        masking.gather(reader, np.arange(runs[0].shape[1]), map_files=True)


def _assert_same_maps(folder: Path, other: Path, pattern: str) -> None:
    """Two output folders hold the same maps (`pattern`), with the same values."""
    maps = sorted(p.name for p in folder.glob(pattern))
    assert maps and maps == sorted(p.name for p in other.glob(pattern))
    for name in maps:
        npt.assert_array_equal(nib.load(folder / name).get_fdata(), nib.load(other / name).get_fdata())


@pytest.mark.skipif(not hasattr(mmap, "MAP_POPULATE"), reason="files are mapped on Linux")
@pytest.mark.parametrize("rng", [0], indirect=True)  # (one draw: what is read and written, not the values)
def test_the_command_line_holds_each_cifti_run_as_its_files_pages(tmp_path, rng, monkeypatch):
    """``voxfit fit`` of one CIFTI run or of several (fixed effects) holds each run as its file's own pages
    (``files_mapped``); the library's load, outside it, reads. The maps are those of the runs read into memory."""
    import pandas as pd

    from voxfit.cli import main
    from voxfit.io import dataset, readers

    paths = write_cifti_runs(tmp_path, rng)  # (a constant series and a NaN: the kept series copied out)
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 120, 2), 120, name="CortexLeft")
    for r, n in enumerate((17, 23)):  # every series kept: the read-only map itself reaches the fit
        clean = (rng.standard_normal((n, 60)) * 50 + 100).astype(np.float32)
        paths.append(tmp_path / f"clean-{r}.dtseries.nii")
        nib.save(nib.Cifti2Image(clean, header=(nib.cifti2.SeriesAxis(0, 2, n), models)), paths[-1])
    designs = []
    for r, n in enumerate((17, 23)):
        designs.append(tmp_path / f"design-{r}.tsv")
        pd.DataFrame({"A": np.sin(np.arange(n) / 3.0 + r), "constant": 1.0}).to_csv(designs[-1], sep="\t", index=False)
    held, original = [], readers.CiftiReader.mapped_series

    def spy(self):
        series = original(self) if mapping else None
        held.append(series is not None)
        return series

    monkeypatch.setattr(readers.CiftiReader, "mapped_series", spy)
    outs = {}
    for mapping in (True, False):
        for runs in ((0,), (0, 1), (2,), (2, 3)):
            out = tmp_path / f"out-{mapping}-{'-'.join(map(str, runs))}"
            argv = ["fit", *(str(paths[r]) for r in runs), "--design", *(str(designs[r % 2]) for r in runs)]
            assert main([*argv, "--contrast", "a=A", "-o", str(out), "--quiet"]) == 0
            outs[mapping, runs] = out
    assert held == [True] * 6 + [False] * 6
    for runs in ((0,), (0, 1), (2,), (2, 3)):
        _assert_same_maps(outs[True, runs], outs[False, runs], "*.dscalar.nii")
    mapping = True
    voxfit.load(str(paths[0]))
    assert len(held) == 12 and not dataset._MAP_FILES.get()  # (outside the command line: read, never mapped)


def _peak_growth(code: str) -> tuple[int, str]:
    """Run `code` in a child Python process that defines ``peak()`` first (the kernel's high-water mark of the
    process's memory in KiB, VmHWM: from its exec, unlike ru_maxrss); `code` prints ``before peak value``. Returns
    how far the peak grew (KiB) and the value printed."""
    import subprocess
    import sys

    peak = (
        'def peak():\n    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1])\n'
    )
    proc = subprocess.run([sys.executable, "-c", peak + code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, value = proc.stdout.split()
    return int(after) - int(before), value


@pytest.mark.skipif(not hasattr(mmap, "MAP_POPULATE"), reason="files are mapped on Linux")
def test_kept_series_of_a_files_map_release_its_pages(tmp_path):
    """The automatic mask's series kept from a file's map are copied out a tile at a time, the map's pages
    released behind them: with the first series dropped and every other kept, the peak memory of a process
    that does it is the data's once and a little, not twice (the kernel's accounting: VmHWM)."""
    n, G = 200, 60_000  # 48 MB of float32
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(G), G, name="CortexLeft")
    values = np.random.default_rng(0).random((n, G), dtype=np.float32) + 1
    values[:, 0] = 5.0  # constant: out of the automatic mask
    path = tmp_path / "run.dtseries.nii"
    nib.save(nib.Cifti2Image(values, header=(nib.cifti2.SeriesAxis(0, 1, n), models)), path)
    small = write_cifti_runs(tmp_path, np.random.default_rng(0), frames=(5,))[0]
    child = """
import numpy as np, voxfit
from voxfit.io import masking, readers

{release}
voxfit.load({small!r})  # (the modules a load imports, imported)
before = peak()
ds = voxfit.load({path!r}, map_files=True)
assert masking._file_map(ds.data) is None and ds.data.shape == {shape}, ds.data.shape
print(before, peak(), float(ds.data[:, -1].sum()))
"""
    data_kib = values.nbytes / 1024
    # (the header's 60,000 vertices take 10 MB to parse; the map released behind the copy: 1.27x the data, and
    # 2.2x when it is not, the copy's pages beside all of the map's)
    for release, bound in (("", 1.45), ("masking.mmap.MADV_DONTNEED = readers.mmap.MADV_NORMAL", 1.9)):
        grew, last = _peak_growth(child.format(release=release, path=str(path), small=str(small), shape=(n, G - 1)))
        assert grew < bound * data_kib if not release else grew > bound * data_kib, (release, grew, data_kib)
    assert float(last) == pytest.approx(float(values[:, -1].sum(dtype=np.float64)), rel=1e-6)


@pytest.mark.parametrize(
    "name, stored, mapped",
    [
        ("run.nii", np.float32, True),
        ("run.nii", np.int16, True),  # scale factors: the raw values gathered, scaled as read ones are
        ("nifti2.nii", np.float64, True),
        ("pair.img", np.float32, True),  # an Analyze/NIfTI pair: the .img mapped
        ("run.nii.gz", np.float32, False),
        ("big.nii", ">f4", False),  # not the machine's byte order: read (and swapped)
    ],
)
def test_an_uncompressed_nifti_run_is_gathered_from_its_files_map(tmp_path, rng, name, stored, mapped):
    """With ``map_files`` (the command line's), the scans of an uncompressed NIfTI run in the machine's byte order
    are views of one map of its file (``NiftiReader.mapped_scans``), slab by slab as ``iter_scans`` reads them;
    loads with an explicit mask (with SPM's globals too) give the same data, and so do those with the automatic
    one (SPM's threshold too), which read."""
    data = volume_data(rng) * 40 + 900
    if name == "pair.img":
        img = nib.Nifti1Pair(data.astype(np.float32), AFFINE)
        nib.save(img, tmp_path / "pair.img")
        path = tmp_path / "pair.hdr"
    else:
        klass = nib.Nifti2Image if name.startswith("nifti2") else nib.Nifti1Image
        header = nib.Nifti1Header(endianness=">") if name.startswith("big") else None  # (else saved native)
        img = klass(data.astype(stored) if np.dtype(stored).kind == "f" else data, AFFINE, header=header)
        img.set_data_dtype(stored)
        nib.save(img, tmp_path / name)
        path = tmp_path / name
    reader = open_reader(path)
    for max_bytes in (1, 3 * data[..., 0].size * reader.dtype.itemsize, 1 << 30):  # 1, 3 and every scan a slab
        slabs = reader.mapped_scans(max_bytes)
        assert (slabs is not None) == mapped
        if slabs is None:
            continue
        got = [(start, block.copy()) for start, block in slabs]
        want = [(start, block.copy()) for start, block in reader.iter_scans(max_bytes)]
        assert [g[0] for g in got] == [w[0] for w in want]
        for (_, g), (_, w) in zip(got, want):
            npt.assert_array_equal(g, w)
    assert reader.file_dtype.isnative != name.startswith("big")
    mask = np.zeros(data.shape[:3], bool)
    mask[1:4, 2:, 1:3] = True
    for kwargs in ({"mask": mask}, {}, {"mask_threshold": 0.8}, {"mask": mask, "scan_globals": True}):
        held = voxfit.load(path, map_files=True, **kwargs)
        read = voxfit.load(path, map_files=False, **kwargs)
        npt.assert_array_equal(np.asarray(held.data), np.asarray(read.data))
        npt.assert_array_equal(held.masker.mask, read.masker.mask)
        if kwargs.get("scan_globals"):
            npt.assert_array_equal(held.globals, read.globals)


@pytest.mark.parametrize("rng", [0], indirect=True)  # (one draw: what is read and written, not the values)
def test_the_command_line_gathers_a_nifti_run_from_its_files_map(tmp_path, rng, monkeypatch):
    """``voxfit fit`` of an uncompressed NIfTI run with an explicit mask gathers its scans from the file's map
    (``files_mapped``; with the automatic one, they are read); the library's load, outside it, reads. The maps are
    those of the run read."""
    import pandas as pd

    from voxfit.cli import main
    from voxfit.io import readers

    path = write_nifti(tmp_path / "run.nii", volume_data(rng, n=30) * 10 + 100)
    mask = write_nifti(tmp_path / "mask.nii", (np.arange(120).reshape(SHAPE) % 3 > 0).astype(np.uint8))
    design = tmp_path / "design.tsv"
    pd.DataFrame({"A": np.sin(np.arange(30) / 3.0), "constant": 1.0}).to_csv(design, sep="\t", index=False)
    held, original = [], readers.NiftiReader.mapped_scans

    def spy(self, *args):
        slabs = original(self, *args) if mapping else None
        held.append(slabs is not None)
        return slabs

    monkeypatch.setattr(readers.NiftiReader, "mapped_scans", spy)
    outs = {}
    for mapping in (True, False):
        for masked in (True, False):
            out = tmp_path / f"out-{mapping}-{masked}"
            argv = ["fit", str(path), "--design", str(design), "--contrast", "a=A", "-o", str(out), "--quiet"]
            assert main(argv + (["--mask", str(mask)] if masked else [])) == 0
            outs[mapping, masked] = out
    assert held == [True, False]  # (asked for with the explicit mask only)
    for masked in (True, False):
        _assert_same_maps(outs[True, masked], outs[False, masked], "*.nii.gz")
    mapping = True
    voxfit.load(str(path))
    voxfit.load(str(path), mask=str(mask))
    assert len(held) == 2  # (outside the command line: read, never mapped)


def test_a_files_map_is_released_behind_each_slab():
    """``_released_behind`` releases the pages of each slab once the next is asked for, page-aligned from the
    map's start, and every page of the data once the last is done with."""
    from voxfit.io import readers

    class Pages:
        def __init__(self):
            self.released = []

        def madvise(self, how, start, length):
            assert how == mmap.MADV_DONTNEED and start % mmap.PAGESIZE == 0 and length % mmap.PAGESIZE == 0
            self.released.append((start, start + length))

    offset, rows, elements = 352, 10, 3000  # 12,000 bytes a row
    data = np.zeros((rows, elements), np.float32)
    pages = Pages()
    slabs = readers._released_behind(pages, data, offset, 3)
    for start, block in slabs:
        assert block.shape[0] == min(3, rows - start)
        # nothing of this slab released before the caller asks for the next
        assert not pages.released or pages.released[-1][1] <= offset + start * 12_000
    ends = [b for _, b in pages.released]
    assert [a for a, _ in pages.released] == [0, *ends[:-1]]  # contiguous, in order
    assert ends[-1] == (offset + rows * 12_000) // mmap.PAGESIZE * mmap.PAGESIZE


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="files are mapped on Linux")
def test_a_nifti_run_gathered_from_its_map_holds_a_slab_of_it_at_a_time(tmp_path):
    """The peak memory of a process that gathers a few voxels of an 86 MB .nii from its file's map (the kernel's
    accounting: VmHWM) grows by a slab or two of the file (16 MiB each), not by the file, because each slab's
    pages are released behind it; it grows by the whole file when they are not."""
    data = np.random.default_rng(0).random((60, 60, 60, 100), dtype=np.float32)  # 86 MB
    path = write_nifti(tmp_path / "run.nii", data)
    mask = np.zeros(data.shape[:3], np.uint8)
    every = np.unravel_index(np.arange(0, mask.size, 1000), mask.shape, order="F")  # (the file's voxel order)
    mask[every] = 1  # a voxel in every page of each scan: every page of the file read
    mask_path = write_nifti(tmp_path / "mask.nii", mask)
    small = write_nifti(tmp_path / "small.nii", data[:4, :4, :4, :3])
    child = """
import numpy as np, voxfit
from voxfit.io import readers

{release}
voxfit.load({small!r}, map_files=True)  # (the modules a load imports, imported)
before = peak()
ds = voxfit.load({path!r}, mask={mask!r}, map_files=True)
print(before, peak(), float(ds.data.sum(dtype=np.float64)))
"""
    data_kib = data.nbytes / 1024
    for release, grows in (("", False), ("readers.mmap.MADV_DONTNEED = readers.mmap.MADV_NORMAL", True)):
        grew, total = _peak_growth(child.format(release=release, path=str(path), mask=str(mask_path), small=str(small)))
        assert (grew > 0.9 * data_kib) if grows else (grew < 0.45 * data_kib), (release, grew, data_kib)
    want = data[every].sum(dtype=np.float64)
    assert float(total) == pytest.approx(float(want), rel=1e-6)


def test_a_nifti_run_cut_short_after_it_was_opened_is_refused_before_it_is_mapped(tmp_path, rng):
    data = volume_data(rng)
    path = write_nifti(tmp_path / "run.nii", data)
    reader = open_reader(path)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(InputError, match="ended before the data"):
        reader.mapped_scans()


def test_keep_columns_moves_series_within_their_buffer(rng):
    """keep_columns on data held as series (F-ordered) keeps the columns asked for, in order, in the same buffer
    and order, for every step of the moves; C-ordered data as before."""
    from voxfit.io import masking

    for step_bytes in (1, 3 * 7 * 4, 1 << 20):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(masking, "SERIES_TILE_BYTES", step_bytes)
            for order in "FC":
                data = np.asarray(rng.standard_normal((7, 40)), dtype=np.float32, order=order)
                index = np.flatnonzero(rng.random(40) < 0.5)
                want = data[:, index].copy()
                kept = masking.keep_columns(data, index)
                npt.assert_array_equal(kept, want)
                assert np.shares_memory(kept, data) and kept.flags[f"{order}_CONTIGUOUS"]


def test_masker_inverse_puts_each_value_at_its_element(rng):
    """Maps from values, against the boolean mask's own assignment: float values as float32 unless a finite one
    would overflow it, or fall below its smallest normal number but for 0 (a p value of 1e-60 written as 0; then
    float64; NaN and infinities do not count), (V,) and (k, V) values, integer and boolean values as they are,
    NaN outside the mask; the index handed out is a copy."""
    mask = rng.random(1000) < 0.3
    m = Masker(SurfaceGeometry(mask.size), mask)
    V = int(mask.sum())
    big = np.full(V, 1.0)
    big[7] = 1e39
    edge = rng.standard_normal(V)
    edge[[0, 5]] = np.nan, np.inf
    edge[3] = np.finfo(np.float32).max
    edge[4] = 0.0
    tiny = np.abs(rng.standard_normal(V))  # p values, one of them beyond float32
    tiny[9] = 1e-60
    low = tiny.copy()
    low[9] = np.finfo(np.float32).tiny  # (the smallest normal float32: kept)
    for values, dtype in [
        (tiny, np.float64),
        (low, np.float32),
        (rng.standard_normal(V), np.float32),
        (rng.standard_normal((3, V)).astype(np.float32), np.float32),
        (big, np.float64),
        (edge, np.float32),
        (rng.integers(-5, 5, (2, V)), np.int64),
    ]:
        want = np.full((np.atleast_2d(values).shape[0], mask.size), np.nan if dtype != np.int64 else 0, dtype=dtype)
        want[:, mask] = values
        got = m.inverse(values, fill=np.nan if dtype != np.int64 else 0)
        assert got.dtype == dtype
        npt.assert_array_equal(got, want)
    m.index[:] = 0
    npt.assert_array_equal(m.index, np.flatnonzero(mask))


def test_masker_inverse_checks_sizes():
    m = Masker(SurfaceGeometry(5), np.array([1, 0, 1, 1, 0], bool))
    npt.assert_array_equal(m.inverse([1.0, 2.0, 3.0])[0, [0, 2, 3]], [1, 2, 3])
    with pytest.raises(InputError, match="`values` have 2 voxels but the mask has 3"):
        m.inverse([1.0, 2.0])


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: d / "run1", "run1: no such file or folder"),  # (a folder mistyped: "not an image voxfit can read")
        (lambda d: (d / "notes.csv").write_text("hi") and d / "notes.csv", "not an image voxfit can read"),
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "not a list of scans .* line 1 is 'hi'"),
        (
            lambda d: (d / "fake.nii").write_bytes(b"not a nifti header at all" * 20) and d / "fake.nii",
            "not a readable image",
        ),
        (lambda d: write_nifti(d / "three.nii.gz", np.ones(SHAPE, np.float32)), "is a 3-D image \\(one scan\\)"),
    ],
)
def test_unreadable_inputs(setup, message, tmp_path):
    with pytest.raises(InputError, match=message):
        voxfit.load(setup(tmp_path))


def _broken_header(path: Path, at: int, value: bytes, cut: int | None = None) -> Path:
    """A 4-D run whose NIfTI-1 header has `value` written at byte `at` (or, with `cut`, its first `cut` bytes)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 3))
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    raw = bytearray(header.binaryblock + b"\0" * 4 + bytes(96))
    raw[at : at + len(value)] = value
    raw = raw[:cut] if cut else raw
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize(
    "name,at,value,cut,message",
    [  # nibabel's words for these: "data code 4096 not recognized", "Cannot work out file type"
        ("dims.nii", 40, (9).to_bytes(2, "little"), None, r"its dim\[0\] \(the number of dimensions\) is 9, where"),
        ("code.nii.gz", 70, (999).to_bytes(2, "little"), None, r"its datatype code is 999, not a data type of NIfTI"),
        ("magic.nii", 344, b"xx1\0", None, r"its magic string is b'xx1\\x00', where a single NIfTI-1 file has"),
        ("short.nii.gz", 0, b"", 100, r"it holds 100 bytes once decompressed, fewer than a NIfTI header's 348"),
        ("offset.nii", 108, np.array([100.0], "<f4").tobytes(), 400, r"its vox_offset is 100, inside its 352-byte"),
    ],
)
def test_a_broken_nifti_header_is_said_in_nifti_terms(tmp_path, name, at, value, cut, message):
    with pytest.raises(InputError, match=rf"{name}: {message}.*the header is broken.*\(nibabel: \w+: "):
        voxfit.load(_broken_header(tmp_path / name, at, value, cut))
    # an extension of size 0 before data at byte 368 (nibabel: "read length must be non-negative or -1")
    ext = bytearray(_broken_header(tmp_path / "ext.nii", 108, np.array([368.0], "<f4").tobytes()).read_bytes())
    ext[348:360] = b"\1\0\0\0" + bytes(8)
    (tmp_path / "ext.nii").write_bytes(bytes(ext))
    with pytest.raises(InputError, match=r"ext\.nii: its first header extension gives its size as 0 bytes"):
        voxfit.load(tmp_path / "ext.nii")
    # the extension flag of a file whose data start at 352 (no room for one: the first voxel is no size), beside
    # an unknown datatype, which is what nibabel refused
    flagged = bytearray(_broken_header(tmp_path / "flag.nii", 70, (999).to_bytes(2, "little")).read_bytes())
    flagged[348] = 1
    (tmp_path / "flag.nii").write_bytes(bytes(flagged))
    with pytest.raises(InputError, match=r"flag\.nii: its datatype code is 999"):
        voxfit.load(tmp_path / "flag.nii")
    # no advice on the name of a file that holds no NIfTI header, gzip or not
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "words.nii.gz").write_bytes(b"not an image" * 40)
    for path in ("empty.nii.gz", "words.nii.gz"):
        with pytest.raises(InputError) as refused:
            voxfit.load(tmp_path / path)
        assert "name it" not in str(refused.value)
    # a file compressed otherwise than its name says: the name to give it
    good = _broken_header(tmp_path / "good.nii", 0, b"")
    (tmp_path / "packed.nii").write_bytes(gzip.compress(good.read_bytes()))
    (tmp_path / "plain.nii.gz").write_bytes(good.read_bytes())
    for path, said in (
        ("packed.nii", "gzip-compressed but named .nii; name it packed.nii.gz"),
        ("plain.nii.gz", "not gzip-compressed but named .gz; name it plain.nii"),
    ):
        with pytest.raises(InputError, match=rf"{path}: it is {said} \(nibabel: "):
            voxfit.load(tmp_path / path)
    # nibabel's own words where the header shows no such fault: a file that is no NIfTI at all, an empty one
    (tmp_path / "text.nii").write_bytes(b"hello" * 100)
    (tmp_path / "empty.nii").write_bytes(b"")
    for path in (tmp_path / "text.nii", tmp_path / "empty.nii"):
        with pytest.raises(InputError, match="not a readable image"):
            voxfit.load(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_headers_nibabel_refuses_are_read_as_the_standard_and_niftilib_read_them(tmp_path, suffix):
    """A single file's vox_offset of 1 to 351, and a NaN scl_inter beside a finite scl_slope: nibabel refuses the
    header. voxfit reads the data from byte 352, as the NIfTI-1 standard says (niftilib starts at 348, 4 bytes
    early here), with an intercept of 0, as FSL and AFNI (niftilib's FIXED_FLOAT) do, with one warning: the values
    are those of the file written right. Such a field beside another fault (dim[0] 9) is refused naming that one;
    a file (a .nii.gz: its stream) too short for its data to start at 352 naming its vox_offset, 0 among them
    (written with its data at 348: nibabel refuses it where the first value's byte flags an extension, else reads
    it), as is an extension flag's file (no extension read: nibabel's reading of one to the end of the file
    failed), .hdr named single files are left to nibabel."""
    data = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3) + 0.5
    right = tmp_path / f"right{suffix}"
    nib.save(nib.Nifti1Image(data, np.eye(4)), right)
    raw = right.read_bytes()
    raw = bytearray(gzip.decompress(raw) if suffix.endswith(".gz") else raw)

    def broken(name, *fields):
        edited = bytearray(raw)
        for at, value in fields:
            edited[at : at + len(value)] = value
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(gzip.compress(bytes(edited)) if suffix.endswith(".gz") else bytes(edited))
        return path

    offset, inter = (108, np.array([100.0], "<f4").tobytes()), (112, np.array([2.0, np.nan], "<f4").tobytes())
    standard, niftilib = "as 352, as the NIfTI-1 standard says of a single file", "as 0, as FSL and AFNI \\(niftilib\\)"
    zero, flag = (108, np.zeros(1, "<f4").tobytes()), (348, b"\1")
    for path, read_as, values in (
        (broken("offset", offset), rf"vox_offset 100 {standard}, where nibabel", data),
        (broken("flagged", offset, flag), rf"vox_offset 100 {standard}, where nibabel", data),
        (broken("inter", inter), rf"scl_inter nan {niftilib}", 2 * data),
        (broken("both", offset, inter), rf"vox_offset 100 {standard} and its scl_inter nan {niftilib}", 2 * data),
        (broken("zero", zero, inter), rf"vox_offset 0 {standard} and its scl_inter nan {niftilib}", 2 * data),
    ):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            loaded = voxfit.load(path, mask=np.ones((2, 2, 2), bool))
        assert len(said) == 1 and re.search(rf"{path.name}: read its {read_as}", str(said[0].message)), said
        npt.assert_array_equal(loaded.data, values.reshape(8, 3, order="F").T)
    with pytest.raises(InputError, match=r"its dim\[0\] \(the number of dimensions\) is 9"):
        voxfit.load(broken("dims", offset, (40, (9).to_bytes(2, "little"))))
    early = raw[:348] + raw[352:]  # (data right after the 348-byte header, where niftilib reads them: too short)
    for at, first in ((100, 0.5), (348, 0.5), (0, 0.5), (0, 0.0)):  # (a first value 0: nibabel reads the header)
        edited = early[:108] + np.float32(at).tobytes() + early[112:348] + np.float32(first).tobytes() + early[352:]
        path = tmp_path / f"early{at}-{first}{suffix}"
        path.write_bytes(gzip.compress(bytes(edited)) if suffix.endswith(".gz") else bytes(edited))
        held = f"{len(edited):,} bytes" + (r" \(decompressed\)" if suffix.endswith(".gz") else "")
        with pytest.raises(
            InputError,
            match=rf"{path.name}: its vox_offset is {at}, inside its 352-byte header, and "
            rf"its {held} are too few for its 96 bytes of data to start at 352",
        ):
            voxfit.load(path)
        if (at, first) == (0, 0.0):  # nibabel's image of it (its data from byte 0) is refused as the file is
            with pytest.raises(InputError, match=rf"{path.name}: its vox_offset is 0"):
                voxfit.load(nib.load(path), mask=np.ones((2, 2, 2), bool))
    if suffix.endswith(".gz"):  # read whole, accepted with its warning: the background's first scan, a copy
        from voxfit.io.readers import first_scan, open_map

        ten = np.arange(2 * 2 * 2 * 10, dtype=np.float32).reshape(2, 2, 2, 10) + 1  # (slabs enough to reuse buffers)
        nib.save(nib.Nifti1Image(ten, np.eye(4)), tmp_path / "ten.nii")
        zeroed = bytearray((tmp_path / "ten.nii").read_bytes())
        zeroed[108:112] = zero[1]
        path = tmp_path / f"zeroed{suffix}"
        path.write_bytes(gzip.compress(bytes(zeroed)))
        with pytest.warns(UserWarning, match="vox_offset is 0"):
            npt.assert_array_equal(first_scan(open_map(path)), ten[..., 0].reshape(-1, order="F"))
    else:  # a .nii cut short after its length was checked: truncated, whatever its vox_offset
        from voxfit.io.readers import truncated_error

        assert "file is truncated" in str(truncated_error(broken("cut", zero), 300, 352 + 96))
        (tmp_path / "short.nii").write_bytes(raw[:350])
        with pytest.raises(InputError, match=r"its vox_offset is 352, beyond the end of its 350 bytes: the file is tr"):
            voxfit.load(tmp_path / "short.nii")
    for name, at in (("nan", np.nan), ("negative", -4.0), ("infinite", np.inf)):  # (nibabel: ValueError and others)
        with pytest.raises(InputError, match=rf"its vox_offset is {at:g}, which places its data nowhere in the file"):
            voxfit.load(broken(name, (108, np.array([at], "<f4").tobytes())))
    if suffix == ".nii":
        with pytest.raises(InputError, match=r"its vox_offset is 1e\+30, beyond the end of its \d+ bytes"):
            voxfit.load(broken("beyond", (108, np.array([1e30], "<f4").tobytes())))
        (tmp_path / "single.hdr").write_bytes(broken("named", offset).read_bytes())
        with pytest.raises(InputError, match=r"single\.hdr: "):
            voxfit.load(tmp_path / "single.hdr")
        noted = nib.Nifti1Image(data, np.eye(4))  # a NaN intercept's file keeps its header extensions
        noted.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"kept"))
        nib.save(noted, tmp_path / "noted.nii")
        with_extension = bytearray((tmp_path / "noted.nii").read_bytes())
        with_extension[112:120] = inter[1]
        (tmp_path / "noted.nii").write_bytes(bytes(with_extension))
        with pytest.warns(UserWarning, match="scl_inter nan as 0"):
            extensions = voxfit.io.readers.load_image(tmp_path / "noted.nii").header.extensions
        assert [e.get_content() for e in extensions] == [b"kept"]
    scans = tmp_path / f"scans{suffix.replace('.', '-')}"  # 3-D scans of one header: one warning, for them all
    scans.mkdir()
    for k in range(3):
        volume = bytearray(raw)
        volume[40:56] = np.array([3, 2, 2, 2, 1, 1, 1, 1], "<i2").tobytes()
        volume[108:112] = offset[1]
        (scans / f"s{k}.nii").write_bytes(bytes(volume[: 352 + 32]))  # (each the first scan of the run)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loaded = voxfit.load(scans, mask=np.ones((2, 2, 2), bool))
    assert len(said) == 1 and "So are the 2 other scan(s) whose header is the same." in str(said[0].message)
    npt.assert_array_equal(loaded.data, np.repeat(data.reshape(8, 3, order="F")[:, :1].T, 3, axis=0))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti2_file_with_its_data_at_540_is_refused_naming_its_vox_offset(tmp_path, suffix):
    """NIfTI-2's header takes 540 bytes and its data start no earlier than 544: a vox_offset of 0 (nibabel reads
    it, from byte 0) is read as 544, and a file written with its data at 540 is refused naming the vox_offset, as
    is nibabel's image of it (whose own data would be the header's bytes)."""
    data = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3) + 1
    nib.save(nib.Nifti2Image(data, np.eye(4)), tmp_path / "right.nii")
    raw = bytearray((tmp_path / "right.nii").read_bytes())
    raw[168:176] = bytes(8)  # (vox_offset 0, an int64)
    early = bytes(raw[:540] + raw[544:])
    path = tmp_path / f"early{suffix}"
    path.write_bytes(gzip.compress(early) if suffix.endswith(".gz") else early)
    said = rf"early{re.escape(suffix)}: its vox_offset is 0, inside its 544-byte header, and its 636 bytes"
    with pytest.raises(InputError, match=said):
        voxfit.load(path, mask=np.ones((2, 2, 2), bool))
    with pytest.raises(InputError, match=said):
        voxfit.load(nib.load(path), mask=np.ones((2, 2, 2), bool))
    (tmp_path / "whole.nii").write_bytes(bytes(raw))  # (its data at 544: read from there, with a warning)
    with pytest.warns(UserWarning, match="vox_offset is 0; read as 544"):
        npt.assert_array_equal(voxfit.load(tmp_path / "whole.nii").data, data.reshape(8, 3, order="F").T)


def test_a_gzip_fault_is_told_apart_by_a_second_pass(tmp_path):
    """Where reading a .nii.gz failed, a second pass over the file says why: bytes after its whole streams (after
    two streams too), a file no longer gzip (replaced while read), or a stream that ends early."""
    from voxfit.io._gzip import corrupt_gzip

    whole = gzip.compress(b"voxel data" * 1000)
    cases = {
        "tail.gz": (whole + b"xyz", r"3 byte\(s\) that are not gzip data follow"),
        "two.gz": (whole + gzip.compress(b"more") + b"\n", r"1 byte\(s\) that are not gzip data follow"),
        "plain.gz": (b"voxel data" * 100, r"it is no longer gzip data: it was replaced or rewritten"),
        "cut.gz": (whole[:-20], r"truncated or corrupt gzip data \(EOFError: ended\)"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert re.search(message, str(corrupt_gzip(tmp_path / name, EOFError("ended")))), name


def test_truncated_files(tmp_path, rng):
    data = volume_data(rng)
    gz = write_nifti(tmp_path / "t.nii.gz", data)
    raw = gzip.decompress(gz.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match="truncated"):
        voxfit.load(tmp_path / "cut.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])
    with pytest.raises(InputError, match="truncated|corrupt|not a readable"):
        voxfit.load(tmp_path / "corrupt.nii.gz")
    nii = write_nifti(tmp_path / "t.nii", data)
    (tmp_path / "short.nii").write_bytes(nii.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        voxfit.load(tmp_path / "short.nii")


def test_mask_geometry_mismatch(tmp_path, rng):
    path = write_nifti(tmp_path / "b.nii.gz", volume_data(rng))
    small = write_nifti(tmp_path / "m1.nii", np.ones((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match="has shape \\(3, 3, 3\\) but the data have \\(6, 5, 4\\)"):
        voxfit.load(path, mask=small)
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE + _translate(5)), tmp_path / "m2.nii")
    with pytest.raises(InputError, match="different affine"):
        voxfit.load(path, mask=tmp_path / "m2.nii")
    empty = write_nifti(tmp_path / "m3.nii", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match="selects no voxel"):
        voxfit.load(path, mask=empty)
    gii = write_gifti(tmp_path / "m.shape.gii", np.ones((1, 40), np.float32))
    with pytest.raises(InputError, match="is a surface but the data are a volume"):
        voxfit.load(path, mask=gii)


def _translate(mm):
    t = np.zeros((4, 4))
    t[0, 3] = mm
    return t


def test_all_nan_data_give_an_empty_automatic_mask(tmp_path):
    path = write_nifti(tmp_path / "nan.nii", np.full(SHAPE + (N_SCANS,), np.nan, np.float32))
    for threshold in ("auto", None):
        with pytest.raises(InputError, match="automatic mask is empty"):
            voxfit.load(path, mask_threshold=threshold)


def test_volume_list_geometry_must_agree(tmp_path, rng):
    paths = write_volume_list(tmp_path, volume_data(rng, n=3))
    nib.save(nib.Nifti1Image(np.ones((6, 5, 3), np.float32), AFFINE), tmp_path / "odd.nii")
    with pytest.raises(InputError, match="odd.nii has shape \\(6, 5, 3\\)"):
        voxfit.load(paths + [tmp_path / "odd.nii"])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_scans_whose_header_is_the_first_scans_are_read_as_it_is(tmp_path, rng, monkeypatch, suffix):
    """A run of 3-D files whose headers differ from the first's only in fields that do not change what is read
    (descrip, aux_file, cal_max/min, glmax/glmin: SPM writes its own text there) are read with the first's reader
    (``NiftiReader.of_same_header``: nibabel parses the first header only); a scan whose header differs in anything
    else (orientation, scale factors, shape) is parsed by nibabel, and refused or converted as before. The data
    are nibabel's either way, read or (the command line's load) gathered from each file's map; a file cut short is
    refused by its size."""
    from voxfit.io import readers

    data = volume_data(rng, n=6)
    paths = []
    for i in range(data.shape[-1]):
        img = nib.Nifti1Image(data[..., i], AFFINE)
        img.header["descrip"] = f"scan {i} realigned".encode()
        img.header["aux_file"] = b"spm" if i % 2 else b""
        img.header["cal_max"], img.header["glmax"] = float(i), i
        paths.append(tmp_path / f"scan{i}{suffix}")
        nib.save(img, paths[-1])
    parsed, original = [], readers.NiftiReader.__init__

    def spy(self, path, *args, **kwargs):
        parsed.append(Path(path).name)
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(readers.NiftiReader, "__init__", spy)
    held = voxfit.load([str(p) for p in paths], mask=np.ones(SHAPE, bool))
    assert parsed == [paths[0].name]  # (the others read as the first is)
    npt.assert_array_equal(held.data, np.stack([read_back(p)[0] for p in paths]))
    assert held.paths == tuple(paths)
    # the command line's load (map_files): each uncompressed scan gathered from its file's map, the same data
    assert (open_reader([str(p) for p in paths]).mapped_scans() is None) == (suffix == ".nii.gz")
    mapped = voxfit.load([str(p) for p in paths], mask=np.ones(SHAPE, bool), map_files=True)
    npt.assert_array_equal(mapped.data, held.data)

    moved = nib.Nifti1Image(data[..., 0], AFFINE + np.diag([0, 0, 0.5, 0]))  # another orientation: parsed, refused
    nib.save(moved, tmp_path / f"moved{suffix}")
    scaled = nib.Nifti1Image(np.round(data[..., 0] * 10).astype(np.int16), AFFINE)  # another type: parsed, converted
    scaled.header.set_slope_inter(0.1, 0.0)
    nib.save(scaled, tmp_path / f"scaled{suffix}")
    parsed.clear()
    mixed = voxfit.load([str(p) for p in paths[:2]] + [str(tmp_path / f"scaled{suffix}")], mask=np.ones(SHAPE, bool))
    assert parsed == [paths[0].name, f"scaled{suffix}"]
    npt.assert_allclose(np.asarray(mixed.data)[2], read_back(tmp_path / f"scaled{suffix}")[0], rtol=1e-6)
    mixed_paths = [str(p) for p in paths[:2]] + [str(tmp_path / f"scaled{suffix}")]
    assert open_reader(mixed_paths).mapped_scans() is None  # (converted scan by scan: read)
    npt.assert_array_equal(voxfit.load(mixed_paths, mask=np.ones(SHAPE, bool), map_files=True).data, mixed.data)
    with pytest.raises(InputError, match="different affine"):
        voxfit.load([str(paths[0]), str(tmp_path / f"moved{suffix}")])
    if suffix == ".nii":
        cut = tmp_path / "cut.nii"
        cut.write_bytes(paths[1].read_bytes()[:-100])
        with pytest.raises(InputError, match="cut.nii: file is truncated"):
            voxfit.load([str(paths[0]), str(cut)])


def test_scans_named_by_their_img_or_holding_their_own_scale_factors_are_parsed(tmp_path, rng, monkeypatch):
    """Only a regular .nii or .nii.gz file's header is compared with the first scan's: the .img of a NIfTI or
    Analyze pair holds voxels where a header would be (even voxels that spell the NIfTI magic), so each pair is
    parsed by nibabel, its own .hdr's scale factors honoured; and a scan whose scale factor alone differs (same
    type) has another header, parsed."""
    from voxfit.io import readers

    parsed, original = [], readers.NiftiReader.__init__

    def spy(self, path, *args, **kwargs):
        parsed.append(Path(path).name)
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(readers.NiftiReader, "__init__", spy)
    flat = np.zeros(1000, np.int16)  # a 10 x 10 x 10 grid: 2,000 bytes of voxels
    flat[172:174] = np.frombuffer(b"n+1\0", np.int16)  # the NIfTI magic at bytes 344-347 of the .img
    flat[174:] = rng.integers(1, 100, flat.size - 174)
    values = flat.reshape((10, 10, 10), order="F")
    pairs = []
    for i, slope in enumerate((1.0, 10.0)):
        img = nib.Nifti1Pair(values, AFFINE)
        img.header.set_slope_inter(slope, 0.0)
        nib.save(img, tmp_path / f"pair{i}.img")
        pairs.append(str(tmp_path / f"pair{i}.img"))
    assert readers._nifti1_key(pairs[0]) is None
    held = voxfit.load(pairs, mask=np.ones(values.shape, bool))
    assert parsed == ["pair0.img", "pair1.img"]
    # every file read is an input (model.json's digests): a pair named by its .img has its .hdr too
    assert [p.name for p in held.paths] == ["pair0.img", "pair0.hdr", "pair1.img", "pair1.hdr"]
    npt.assert_allclose(np.asarray(held.data), np.stack([read_back(tmp_path / f"pair{i}.hdr")[0] for i in (0, 1)]))
    parsed.clear()
    scans = []
    for i, slope in enumerate((0.5, 0.5, 2.0)):
        img = nib.Nifti1Image(values, AFFINE)
        img.header.set_slope_inter(slope, 0.0)
        nib.save(img, tmp_path / f"scan{i}.nii")
        scans.append(str(tmp_path / f"scan{i}.nii"))
    held = voxfit.load(scans, mask=np.ones(values.shape, bool))
    assert parsed == ["scan0.nii", "scan2.nii"]
    npt.assert_allclose(np.asarray(held.data), np.stack([read_back(Path(p))[0] for p in scans]))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="pipes on POSIX")
@pytest.mark.parametrize("rng", [0], indirect=True)  # (a pipe's refusal, whatever the scans: one seed's)
def test_a_pipe_among_the_scans_is_refused_not_waited_on(tmp_path, rng):
    """A pipe named among a run's 3-D scans is refused in one line (opening it would wait for a writer forever),
    as it was before the scans' headers were compared with the first's; in a child process, so that a wait would
    fail the test rather than hang it."""
    import subprocess
    import sys

    paths = write_volume_list(tmp_path, volume_data(rng, n=2))
    os.mkfifo(tmp_path / "scan999.nii")
    code = (
        "import sys, voxfit\n"
        "from voxfit.exceptions import InputError\n"
        "try:\n"
        "    voxfit.load(sys.argv[1:])\n"
        "except InputError as exc:\n"
        "    print(exc)\n"
    )
    args = [str(p) for p in paths] + [str(tmp_path / "scan999.nii")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scan999.nii: not a regular file" in proc.stdout


@pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="files are mapped on Linux")
def test_a_run_that_cannot_be_mapped_is_read_and_one_cut_short_is_refused(tmp_path, rng, monkeypatch):
    """Where the file system maps no files (mmap's OSError), the command line's load reads the run and its scans
    instead, with the same data; a file found shorter than its header as it is mapped (mmap's ValueError, in the
    instant after its size was checked) is refused in one line."""
    from voxfit.io import readers

    data = volume_data(rng, n=4)
    run = write_nifti(tmp_path / "run.nii", data)
    scans = [str(p) for p in write_volume_list(tmp_path, data)]
    mask = np.ones(SHAPE, bool)
    want = voxfit.load(run, mask=mask).data

    class Unmappable:
        def __init__(self, error):
            self.error = error

        def mmap(self, *args, **kwargs):
            raise self.error

        def __getattr__(self, name):
            return getattr(mmap, name)

    monkeypatch.setattr(readers, "mmap", Unmappable(OSError(19, "No such device")))
    npt.assert_array_equal(voxfit.load(run, mask=mask, map_files=True).data, want)
    npt.assert_array_equal(voxfit.load(scans, mask=mask, map_files=True).data, want)
    monkeypatch.setattr(readers, "mmap", Unmappable(ValueError("mmap length is greater than file size")))
    with pytest.raises(InputError, match="run.nii: the file ended before the data"):
        voxfit.load(run, mask=mask, map_files=True)


def test_cifti_and_gifti_geometries(tmp_path, rng):
    paths, _ = _make("cifti", tmp_path, rng)
    geom = open_reader(paths[0]).geometry
    assert isinstance(geom, CiftiGeometry) and geom.describe()["structures"] == [
        "CIFTI_STRUCTURE_CORTEX_LEFT",
        "CIFTI_STRUCTURE_THALAMUS_LEFT",
    ]
    other = nib.cifti2.BrainModelAxis.from_surface(np.arange(5), 10, name="CortexRight")
    with pytest.raises(InputError, match="different CIFTI brain models"):
        geom.check_same(CiftiGeometry(other), "mask")


def test_write_stats_from_python(tmp_path, rng):
    paths, _ = _make("nii.gz", tmp_path, rng)
    ds = voxfit.load(paths[0])
    X = np.column_stack([np.linspace(-1, 1, N_SCANS), np.ones(N_SCANS)])
    stats = voxfit.fit(X, ds.data, names=["slope", "mean"]).contrast("slope", name="up/../x")
    files = voxfit.write_stats(stats, ds.masker, tmp_path / "maps")
    assert sorted(f.name for f in files) == sorted(
        f"contrast-upx_stat-{s}_statmap.nii.gz" for s in ("effect", "variance", "t", "p", "z")
    )
    t = np.asarray(nib.load(tmp_path / "maps" / "contrast-upx_stat-t_statmap.nii.gz").dataobj).reshape(-1, order="F")
    npt.assert_allclose(t[ds.masker.mask], stats.t, rtol=1e-6)
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        voxfit.write_stats(stats, ds.masker, tmp_path / "maps")
    assert len(voxfit.write_stats(stats, ds.masker, tmp_path / "maps", overwrite=True)) == 5


def test_corrupt_gzip_data_is_an_error_not_a_hang(tmp_path, rng):
    """Corruption inside the compressed stream (not just a cut): the decompression thread reports it."""
    data = np.repeat(volume_data(rng, n=3), 40, axis=3)  # compressible, so a flipped byte breaks the stream
    gz = write_nifti(tmp_path / "c.nii.gz", data)
    raw = bytearray(gz.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(16)
    (tmp_path / "bad.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="truncated or corrupt|not a readable"):
        voxfit.load(tmp_path / "bad.nii.gz")


def test_big_endian_nifti_follows_the_protocol(tmp_path, rng):
    data = volume_data(rng)
    for name in ("be.nii", "be.nii.gz"):
        img = nib.Nifti1Image(data.astype(">f4"), AFFINE, header=nib.Nifti1Header(endianness=">"))
        nib.save(img, tmp_path / name)
        reader = open_reader(tmp_path / name)
        assert reader.file_dtype == np.dtype(">f4")  # (nibabel saves its header's byte order, native by default)
        for _, block in reader.iter_scans(1):
            assert block.dtype == reader.dtype and block.dtype.isnative
        npt.assert_array_equal(
            voxfit.load(tmp_path / name).data, as_matrix(data)[:, voxfit.load(tmp_path / name).masker.mask]
        )


@pytest.mark.parametrize("order", ["<", ">"])
def test_scans_read_ahead_of_their_caller(tmp_path, rng, order):
    """A 4-D .nii and a run of 3-D .nii files are read on a thread, two slabs ahead of the caller: the same values
    as nibabel's, in native byte order; a file cut short is named; a caller that stops early leaves no thread (the
    suite's fixture checks) and each slab keeps its values until the next is asked for."""
    data = volume_data(rng).astype(f"{order}f4")
    header = nib.Nifti1Header(endianness=order)
    nib.save(nib.Nifti1Image(data, AFFINE, header=header), tmp_path / "run.nii")
    scans = [tmp_path / f"scan{i:02d}.nii" for i in range(data.shape[-1])]
    for i, path in enumerate(scans):
        nib.save(nib.Nifti1Image(data[..., i], AFFINE, header=header), path)
    expected = as_matrix(data.astype(np.float32))
    for reader in (open_reader(tmp_path / "run.nii"), open_reader([str(p) for p in scans])):
        slabs = [(start, block.copy()) for start, block in reader.iter_scans(1)]
        assert [start for start, _ in slabs] == list(range(data.shape[-1]))
        assert all(block.dtype.isnative for _, block in slabs)
        npt.assert_array_equal(np.concatenate([block for _, block in slabs]), expected)
        first = reader.iter_scans(1)
        held = next(first)[1]
        npt.assert_array_equal(held, expected[:1])  # (the thread has read on into the other buffers meanwhile)
        first.close()
    reader = open_reader([str(p) for p in scans])
    cut = scans[5].read_bytes()
    scans[5].write_bytes(cut[: len(cut) - 40])  # (after its header was read: while the run is read)
    with pytest.raises(InputError, match=r"scan05\.nii: file is truncated"):
        list(reader.iter_scans())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_runs_with_singleton_dimensions_after_the_fourth_are_read_as_4d(tmp_path, rng, suffix):
    """(x, y, z, t, 1) and longer trailing 1s store a run as (x, y, z, t) does; AFNI's (x, y, z, 1, t) keeps the
    scans in the fifth dimension (read so, with a warning); (x, y, z, t, 2) is refused; 3-D scans of shape
    (x, y, z, 1, 1) are scans."""
    data = volume_data(rng)
    expected = voxfit.load(write_nifti(tmp_path / f"run{suffix}", data)).data
    for name, stored in (("trail", data[..., None]), ("seven", data[..., None, None, None])):
        npt.assert_array_equal(voxfit.load(write_nifti(tmp_path / f"{name}{suffix}", stored)).data, expected)
    with pytest.warns(UserWarning, match=r"keeps its 12 scans in a dimension after the fourth, as AFNI"):
        afni = voxfit.load(write_nifti(tmp_path / f"afni{suffix}", data[:, :, :, None, :]))
    npt.assert_array_equal(afni.data, expected)
    with pytest.raises(InputError, match=r"its dimensions beyond x, y and z are \(12, 2\), where a run has one"):
        voxfit.load(write_nifti(tmp_path / f"two{suffix}", np.stack([data, data], axis=-1)))
    scans = [write_nifti(tmp_path / f"s{i:02d}{suffix}", data[..., i, None, None]) for i in range(data.shape[-1])]
    npt.assert_array_equal(voxfit.load([str(p) for p in scans]).data, expected)
    in_memory = nib.Nifti1Image(data[..., None], AFFINE)  # (the same, as a nibabel image the caller made)
    npt.assert_array_equal(voxfit.load(in_memory).data, expected)
    npt.assert_array_equal(
        voxfit.load([nib.Nifti1Image(data[..., i, None, None], AFFINE) for i in range(12)]).data, expected
    )


def test_scaled_integer_cifti_keeps_its_values(tmp_path, rng):
    series, models = cifti_axes()
    values = (50 + rng.standard_normal((N_SCANS, len(models)))).astype(np.float32)
    img = nib.Cifti2Image(values, header=(series, models))
    img.set_data_dtype(np.int16)  # nibabel stores integers with scale factors
    nib.save(img, tmp_path / "s.dtseries.nii")
    expected = nib.load(tmp_path / "s.dtseries.nii").get_fdata()
    reader = open_reader(tmp_path / "s.dtseries.nii")
    assert reader.dtype == np.float32
    npt.assert_allclose(next(iter(reader.iter_scans(10**9)))[1], expected, rtol=1e-6)


def test_written_maps_do_not_inherit_display_range_or_intent(tmp_path, rng):
    data = volume_data(rng)
    img = nib.Nifti1Image(data, AFFINE)
    img.header["cal_min"], img.header["cal_max"] = 90, 110
    img.header.set_intent("label")
    nib.save(img, tmp_path / "b.nii")
    ds = voxfit.load(tmp_path / "b.nii")
    ds.masker.write(tmp_path / "t.nii.gz", np.zeros(ds.n_voxels), ["t"])
    hdr = nib.load(tmp_path / "t.nii.gz").header
    assert hdr["cal_min"] == hdr["cal_max"] == 0 and hdr.get_intent()[0] == "none"


@pytest.mark.parametrize("rng", [0], indirect=True)  # (one draw: what is read and written, not the values)
def test_written_statistics_say_their_distribution_and_dof_in_their_headers(tmp_path, rng):
    """A t map's header names its distribution and dof (NIfTI intent "t test", p1 the dof), an F map's its two dof,
    z and p maps theirs, as AFNI, MRIcroGL and FSLeyes read them to turn a statistic into p (the intent was none
    and the descrip 'voxfit: a t'); an AR model's t, whose dof vary by voxel, names none (its dof map does).
    Effect and variance maps, and an RFT FWE p beside the uncorrected p, say which they are (they shared 'a')."""
    from scipy import stats as sps

    from voxfit.cli import main

    data = volume_data(rng)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "bold.nii")
    n = data.shape[3]
    design = tmp_path / "design.tsv"
    design.write_text("a\tb\tconst\n" + "".join(f"{np.sin(t / 3):.5f}\t{np.cos(t / 5):.5f}\t1\n" for t in range(n)))
    argv = ["fit", str(tmp_path / "bold.nii"), "--design", str(design), "--contrast", "a=a", "--contrast", "f=a; b"]
    assert main([*argv, "-o", str(tmp_path / "ols"), "--inference", "rft", "--quiet"]) == 0
    out = tmp_path / "ols"
    header = nib.load(out / "contrast-a_stat-t_statmap.nii.gz").header
    assert header.get_intent() == ("t test", (n - 3.0,), "")
    t = np.asarray(nib.load(out / "contrast-a_stat-t_statmap.nii.gz").dataobj)
    p = np.asarray(nib.load(out / "contrast-a_stat-p_statmap.nii.gz").dataobj)
    inside = np.isfinite(t) & (t != 0)
    npt.assert_allclose(p[inside], sps.t.sf(t[inside], header.get_intent()[1][0]), rtol=1e-4, atol=1e-30)
    assert nib.load(out / "contrast-f_stat-F_statmap.nii.gz").header.get_intent() == ("f test", (2.0, n - 3.0), "")
    assert nib.load(out / "contrast-a_stat-z_statmap.nii.gz").header.get_intent()[0] == "z score"
    assert nib.load(out / "contrast-a_stat-p_statmap.nii.gz").header.get_intent()[0] == "p value"
    descrip = {
        f: bytes(nib.load(out / f"contrast-a_stat-{f}_statmap.nii.gz").header["descrip"]).rstrip(b"\0")
        for f in ("effect", "variance", "p", "p_desc-rftfwe")
    }
    assert len(set(descrip.values())) == 4 and descrip["p_desc-rftfwe"] == b"voxfit: a p rftfwe", descrip
    assert main([*argv, "-o", str(tmp_path / "ar"), "--noise", "ar1", "--quiet"]) == 0
    assert nib.load(tmp_path / "ar" / "contrast-a_stat-t_statmap.nii.gz").header.get_intent()[0] == "none"
    # GIFTI maps too (their intent was none: a surface tester's), the dof in the array's metadata
    write_gifti(tmp_path / "lh.func.gii", data.reshape(-1, n)[:40].T.copy())
    argv[1] = str(tmp_path / "lh.func.gii")
    assert main([*argv, "-o", str(tmp_path / "gii"), "--quiet"]) == 0
    (array,) = nib.load(tmp_path / "gii" / "contrast-a_stat-t_statmap.func.gii").darrays
    assert array.intent == 3 and array.meta["DegreesOfFreedom"] == f"{n - 3}"  # (NIFTI_INTENT_TTEST)
    (array,) = nib.load(tmp_path / "gii" / "contrast-f_stat-F_statmap.func.gii").darrays
    assert array.intent == 4 and array.meta["DegreesOfFreedom"] == f"2 {n - 3}"  # (NIFTI_INTENT_FTEST)


def test_mask_threshold_excludes_dim_voxels(tmp_path, rng):
    data = volume_data(rng)
    data[3, 2, 1, :] = 20 + rng.standard_normal(N_SCANS)  # varying but dim: below 0.8 x the global mean
    path = write_nifti(tmp_path / "b.nii", data)
    j = np.ravel_multi_index((3, 2, 1), SHAPE, order="F")
    assert voxfit.load(path, mask_threshold=0).masker.mask[j]
    assert voxfit.load(path, mask_threshold=None).masker.mask[j]
    assert not voxfit.load(path, mask_threshold=0.8).masker.mask[j]
    assert not voxfit.load(path, mask_threshold="auto").masker.mask[j]  # first-level fits' default: SPM's 0.8
    assert voxfit.load(path).masker.mask[j]  # a loader of any maps: no intensity rule by default


def _spm_mask(Y, threshold):
    """SPM's automatic mask of (n, V) values as the fit sees them, in float64, scan by scan: finite and varying,
    and above `threshold` x the scan's global (the mean of its finite values above 1/8 of their mean)."""
    keep = np.isfinite(Y).all(axis=0) & (Y != Y[0]).any(axis=0)
    for y in Y:
        f = y[np.isfinite(y)]
        keep &= y > threshold * f[f > f.mean() / 8].mean()
    return keep


@pytest.mark.parametrize("route", ["nii.gz", "nii", "image-list", "streamed"])
@pytest.mark.parametrize("values", ["float32", "negative global", "int16 with intercept"])
def test_thresholded_automatic_mask_is_spms_rule_in_every_scan(tmp_path, rng, monkeypatch, route, values):
    """The mask's later scans are checked on the first scan's candidates alone when nothing else can still be
    kept; otherwise (a negative global, or an intercept that lifts the stored zeros above the threshold) on
    every element. Both equal SPM's rule computed on every element of every scan in float64."""
    n = 24
    data = 100 + rng.standard_normal(SHAPE + (n,))
    data[0] = 0.0  # background
    scale = None
    if values == "float32":
        data[1, 1, 1, 17] = 10.0  # bright, then dim in one later scan: out
        data[1, 1, 2, 9] = np.nan  # NaN in a later scan: out
        data[1, 2, 1] = 100.0  # constant: out
        data[1, 2, 2, 0] = 0.0  # zero in the first scan only: below the threshold there, out
        data[2, 1, 1, 5:] = 85.0 + rng.standard_normal(n - 5)  # about 0.8 x the global in later scans
    elif values == "negative global":  # most of the brain far below zero, the rest a little below: the global
        data[1:3] -= 1100.0  # is below zero, and so are 0.8 x it and the zeros above it
        data[3:] -= 130.0
        data[0, 1, 1, 1:] = rng.standard_normal(n - 1)  # zero, then varying about it: kept
    else:
        data = np.round(data - 100.0)
        data[0, 2, 2, 1:] = np.arange(1, n)  # stored zero first, then varying: lifted above the threshold, kept
        scale = (1.0, 1000.0)
    paths = []
    if route == "image-list":
        frames = data.astype(np.float32) if scale is None else data.astype(np.int16)
        for t in range(n):
            img = nib.Nifti1Image(frames[..., t], AFFINE)
            if scale:
                img.header.set_slope_inter(*scale)
            paths.append(tmp_path / f"scan{t:02d}.nii")
            nib.save(img, paths[-1])
        source = paths
    else:
        img = nib.Nifti1Image(data.astype(np.float32) if scale is None else data.astype(np.int16), AFFINE)
        if scale:
            img.header.set_slope_inter(*scale)
        source = tmp_path / ("bold.nii" if route == "nii" else "bold.nii.gz")
        nib.save(img, source)
    stored = as_matrix(data).astype(np.float64)
    Y = stored if scale is None else stored * scale[0] + scale[1]
    want = _spm_mask(Y, 0.8).reshape(SHAPE, order="F")
    if values == "float32":
        assert want.sum() > 60 and not want[0].any() and not want[1, 1:3, 1:3].any()
    else:  # a voxel zero in the first scan is kept, as no candidate of it
        assert want[(0, 1, 1) if values == "negative global" else (0, 2, 2)]
    restricted, original = [], AutoMask.restricted
    monkeypatch.setattr(AutoMask, "restricted", lambda auto, index: restricted.append(index) or original(auto, index))
    if route == "streamed":
        X = np.column_stack([np.arange(n) / n, np.ones(n)])
        got = fit_streaming(source, X, {}, mask_threshold=0.8, scans_per_slab=5).masker.mask
    else:
        got = voxfit.load(source, mask_threshold=0.8).masker.mask
    npt.assert_array_equal(got.reshape(SHAPE, order="F"), want)
    # the later scans checked on a part of the elements (the first scan's candidates) only where that is right
    assert any(index.size < want.size for index in restricted) == (values == "float32")


def test_greater_compares_float32_values_as_float64_does():
    x = (rng := np.random.default_rng(3)).standard_normal(5000).astype(np.float32) * 1e3
    big = np.finfo(np.float32).max
    x = np.concatenate([x, np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, big, -big, 1e-45], dtype=np.float32)])
    x = np.concatenate([x, np.nextafter(x[:5000], np.float32(np.inf)), np.nextafter(x[:5000], np.float32(-np.inf))])
    cuts = [float(c) + d for c in x[:400] for d in (0.0, 1e-9, -1e-9, 1e-13)]
    cuts += [1e39, -1e39, np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-300, -1e-300, 1 / 3, float(rng.random())]
    for cut in cuts:
        npt.assert_array_equal(greater(x, cut), x.astype(np.float64) > cut, err_msg=f"cut {cut!r}")
    ints = np.arange(-5, 6, dtype=np.int16)
    npt.assert_array_equal(greater(ints, 0.5), ints > 0.5)


def test_spm_globals_equal_their_float64_definition(rng):
    scans = (100 + 10 * rng.standard_normal((6, 500))).astype(np.float32)
    scans[:, :100] = 0.0
    scans[1, 3] = np.nan  # a scan with non-finite values: the mean of the finite ones
    scans[2, 4] = np.inf
    scans[3] = np.nan  # none finite: NaN
    scans[4] = -50.0  # none above 1/8 of the mean: NaN

    def want(values):
        out = []
        for y in values.astype(np.float64):
            f = y[np.isfinite(y)]
            above = f[f > f.mean() / 8] if f.size else f
            out.append(above.mean() if above.size else np.nan)
        return out

    integers = np.round(scans[[0, 5]]).astype(np.int16)
    with np.errstate(invalid="ignore"):
        npt.assert_allclose(spm_globals(scans), want(scans), rtol=1e-15)
        npt.assert_allclose(spm_globals(scans.astype(np.float64)), want(scans), rtol=1e-15)
        npt.assert_allclose(spm_globals(integers), want(integers), rtol=1e-15)


def test_cifti_maps_are_the_file_nibabel_writes_with_the_dense_scalar_intent(tmp_path, rng):
    """CiftiGeometry.write composes the NIfTI-2 file itself (nibabel's image re-parses the header of every map),
    the brain models' XML serialised once: byte for byte nibabel's Cifti2Image file but for the intent code
    (ConnDenseScalar, the standard's for .dscalar.nii), and it reads back with the same brain models, names and
    values. The brain models' XML is made once per geometry from the axis's arrays: surfaces and voxels in HCP's
    order and in others (voxels first, a surface between two structures of voxels, an affine with fractions and a
    negative zero), each with names in ASCII; names not in ASCII, or empty, are serialised whole by nibabel."""
    affine = np.array([[-2.0, 0, -0.0, 90.25], [0, 2, 0, -126.125], [0, 0, 2, -72], [0, 0, 0, 1]])
    left = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 300, 2), 300, name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_surface(np.array([7, 1, 4]), 9, name="CortexRight")
    thalamus = nib.cifti2.BrainModelAxis.from_mask(rng.random((4, 5, 3)) > 0.5, name="ThalamusLeft", affine=np.eye(4))
    layouts = [left + thalamus]
    for name, surface in (("Accumbens_Left", right), ("Cerebellum", left)):
        voxels = nib.cifti2.BrainModelAxis.from_mask(rng.random((4, 5, 3)) > 0.5, name=name, affine=affine)
        stem = nib.cifti2.BrainModelAxis.from_mask(rng.random((4, 5, 3)) > 0.7, name="brain_stem", affine=affine)
        layouts.append(voxels + surface + stem)
    for k, names in enumerate((["a t"], ["b[0]", "b[1]"], ["a&b<c>d\"e'"], ["état", "x"], ["", "y"])):
        models = layouts[k % len(layouts)]
        geometry = CiftiGeometry(models)
        maps = rng.standard_normal((len(names), len(models)))
        ours = tmp_path / f"ours{k}.dscalar.nii"
        geometry.write(ours, maps, names)
        theirs = tmp_path / f"theirs{k}.dscalar.nii"
        image = nib.cifti2.Cifti2Image(maps.astype(np.float32), header=(nib.cifti2.ScalarAxis(names), models))
        image.nifti_header.set_intent("ConnDenseScalar")
        nib.save(image, theirs)
        assert ours.read_bytes() == theirs.read_bytes()
        back = nib.load(ours)
        assert back.header.get_axis(1) == models
        read_back = ["None" if name == "" else name for name in names]  # (nibabel reads <MapName /> as "None")
        assert list(back.header.get_axis(0).name) == read_back
        assert back.nifti_header.get_intent()[0] == "ConnDenseScalar"
        npt.assert_array_equal(back.get_fdata(dtype=np.float32), maps.astype(np.float32))


def test_cifti_brain_models_from_the_header_alone_equal_nibabels(tmp_path, rng):
    """A plain .dtseries.nii / .dscalar.nii is opened from its NIfTI-2 header and XML (the right surface, voxels
    with an affine, the left surface): the same brain models and values as nibabel's Cifti2Image. Compressed,
    scaled, parcel and malformed files are nibabel's to read or refuse."""
    from voxfit.io.readers import _stored_cifti

    left = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 400, 3), 400, name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_surface(np.array([5, 2, 9, 7]), 12, name="CortexRight")
    voxels = nib.cifti2.BrainModelAxis.from_mask(
        rng.random((5, 4, 3)) > 0.4,
        name="ThalamusLeft",
        affine=np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1.0]]),
    )
    models = right + voxels + left
    data = rng.standard_normal((7, len(models))).astype(np.float32)
    for name, axis0 in (
        ("run.dtseries.nii", nib.cifti2.SeriesAxis(0, 2, 7)),
        ("maps.dscalar.nii", nib.cifti2.ScalarAxis(list("abcdefg"))),
    ):
        nib.save(nib.Cifti2Image(data, header=(axis0, models)), tmp_path / name)
        stored = _stored_cifti(tmp_path / name)
        assert stored is not None and stored.brain_models == models
        reader = open_reader(str(tmp_path / name))
        assert reader.geometry.brain_models == models and reader.dtype == np.float32
        npt.assert_array_equal(np.concatenate([b for _, b in reader.iter_scans()]), data)
    (tmp_path / "gz.dtseries.nii.gz").write_bytes(gzip.compress((tmp_path / "run.dtseries.nii").read_bytes()))
    assert _stored_cifti(tmp_path / "gz.dtseries.nii.gz") is None
    scaled = nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 2, 7), models))
    scaled.nifti_header.set_data_dtype(np.int16)
    nib.save(scaled, tmp_path / "int.dtseries.nii")  # (nibabel scales float data into int16)
    assert _stored_cifti(tmp_path / "int.dtseries.nii") is None
    reader = open_reader(str(tmp_path / "int.dtseries.nii"))
    assert reader.geometry.brain_models == models
    npt.assert_allclose(np.concatenate([b for _, b in reader.iter_scans()]), data, atol=1e-3)
    parcels = nib.cifti2.ParcelsAxis.from_brain_models([("one", left), ("two", right)])
    nib.save(
        nib.Cifti2Image(data[:, :2], header=(nib.cifti2.SeriesAxis(0, 2, 7), parcels)), tmp_path / "p.dtseries.nii"
    )
    assert _stored_cifti(tmp_path / "p.dtseries.nii") is None
    with pytest.raises(InputError, match="a parcellated CIFTI file"):  # (parcels in a file named as dense)
        open_reader(str(tmp_path / "p.dtseries.nii"))
    # CIFTI files voxfit does not fit, said for what they are: parcels, labels, a transposed dense file, a dense
    # file named .nii (each was "not a NIfTI or Analyze volume image", or "only dense CIFTI files")
    nib.save(
        nib.Cifti2Image(data[:, :2], header=(nib.cifti2.SeriesAxis(0, 2, 7), parcels)), tmp_path / "p.ptseries.nii"
    )
    nib.save(
        nib.Cifti2Image(data.T.copy(), header=(models, nib.cifti2.SeriesAxis(0, 2, 7))), tmp_path / "t.dtseries.nii"
    )
    label = nib.cifti2.LabelAxis(["l"], {0: ("x", (0, 0, 0, 0))})
    nib.save(nib.Cifti2Image(data[:1], header=(label, models)), tmp_path / "l.dlabel.nii")
    shutil.copy(tmp_path / "run.dtseries.nii", tmp_path / "run.nii")
    for name, message in (
        (
            "p.ptseries.nii",
            r"a parcellated CIFTI file .* as a .npy array, scans .or maps. x parcels .*voxfit fits dense",
        ),
        ("l.dlabel.nii", "a CIFTI label file: it holds labels, not data to fit; voxfit fits dense CIFTI files"),
        ("t.dtseries.nii", r"its grayordinates are its rows .* transpose it \(wb_command -cifti-transpose\)"),
        ("run.nii", r"a CIFTI-2 file named as a volume; name a dense one .dtseries.nii or .dscalar.nii\.$"),
    ):
        with pytest.raises(InputError, match=message):
            open_reader(str(tmp_path / name))
    raw = (tmp_path / "run.dtseries.nii").read_bytes()
    assert b"<VertexIndices>5 2 9 7</VertexIndices>" in raw
    for k, (old, new) in enumerate(
        [
            (b'IndexCount="4"', b'IndexCount="5"'),
            (b"<VertexIndices>", b"<VertexIndices>x "),
            (b">5 2 9 7<", b">5 2 9.7<"),
        ]
    ):
        broken = tmp_path / f"broken{k}.dtseries.nii"
        broken.write_bytes(raw.replace(old, new, 1))
        assert _stored_cifti(broken) is None
        with pytest.raises(InputError):
            open_reader(str(broken))
    # CIFTI-1's version, and models listed out of the order of their offsets (nibabel names them as listed)
    start = raw.index(b"<BrainModel ")
    end = raw.index(b"</BrainModel>", start) + len(b"</BrainModel>")
    last = raw.rindex(b"<BrainModel ")
    close = raw.index(b"</BrainModel>", last) + len(b"</BrainModel>")
    swapped = raw[:start] + raw[last:close] + raw[end:last] + raw[start:end] + raw[close:]
    for name, odd in (("v1", raw.replace(b'<CIFTI Version="2', b'<CIFTI Version="1', 1)), ("swapped", swapped)):
        path = tmp_path / f"{name}.dtseries.nii"
        path.write_bytes(odd)
        assert len(odd) == len(raw) and _stored_cifti(path) is None
        try:
            theirs = nib.load(path).header.get_axis(1)
        except Exception as exc:  # noqa: BLE001 - nibabel's refusal is the reader's
            with pytest.raises(InputError):
                open_reader(str(path))
            print(f"{name}: {type(exc).__name__}")
        else:
            assert open_reader(str(path)).geometry.brain_models == theirs


def test_cifti_files_with_the_same_xml_share_their_brain_models_arrays(tmp_path, rng):
    """A group's maps written by one pipeline carry the same XML: parsed once (each parsed on its own took 25 ms
    for 91k grayordinates, and kept 14 MB), each file's axis its own, sharing read-only arrays; another XML is
    parsed for itself, and a map whose XML matches but whose header counts other grayordinates is not read from
    the shared arrays."""
    from voxfit.io.readers import _stored_cifti

    left = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 40, 3), 40, name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_surface(np.arange(5), 12, name="CortexRight")
    voxels = nib.cifti2.BrainModelAxis.from_mask(rng.random((3, 4, 2)) > 0.3, affine=np.eye(4), name="ThalamusLeft")
    for k, models in enumerate((left + voxels, left + voxels, left + right)):
        data = rng.standard_normal((1, len(models))).astype(np.float32)
        nib.save(
            nib.Cifti2Image(data, header=(nib.cifti2.ScalarAxis(["effect"]), models)), tmp_path / f"{k}.dscalar.nii"
        )
    one, two, other = (_stored_cifti(tmp_path / f"{k}.dscalar.nii").brain_models for k in range(3))
    assert one == left + voxels == two and other == left + right
    assert one is not two and all(getattr(one, a) is getattr(two, a) for a in ("name", "voxel", "vertex", "affine"))
    assert not any(getattr(one, a).flags.writeable for a in ("name", "voxel", "vertex", "affine"))
    one.nvertices["CIFTI_STRUCTURE_CORTEX_LEFT"] = 999  # (one file's axis changed: not the next file's)
    assert _stored_cifti(tmp_path / "1.dscalar.nii").brain_models == left + voxels
    reader = open_reader([str(tmp_path / "0.dscalar.nii"), str(tmp_path / "1.dscalar.nii")])
    assert reader.n_scans == 2 and reader.geometry.brain_models == left + voxels
    with pytest.raises(InputError, match="different CIFTI brain models from the first input .structures CIFTI_"):
        open_reader([str(tmp_path / "0.dscalar.nii"), str(tmp_path / "2.dscalar.nii")])
    # (another medial wall: said with the structure and its counts, where it named neither: a surface tester's)
    walled = nib.cifti2.BrainModelAxis.from_surface(np.arange(1, 40, 3), 40, name="CortexLeft") + voxels
    nib.save(nib.Cifti2Image(np.ones((1, len(walled)), np.float32), header=(nib.cifti2.ScalarAxis(["e"]), walled)),
             tmp_path / "walled.dscalar.nii")  # fmt: skip
    said = r"\(CIFTI_STRUCTURE_CORTEX_LEFT: 13 vertices, the first input's 14\): every input must be on the same"
    with pytest.raises(InputError, match=said):
        open_reader([str(tmp_path / "0.dscalar.nii"), str(tmp_path / "walled.dscalar.nii")])
    raw = (tmp_path / "0.dscalar.nii").read_bytes()
    header = nib.Nifti2Header(raw[:540])
    header.set_data_shape((1, 1, 1, 1, 1, len(left + voxels) - 1))  # (the same XML, one grayordinate fewer)
    (tmp_path / "short.dscalar.nii").write_bytes(header.binaryblock + raw[540:-4])
    assert _stored_cifti(tmp_path / "short.dscalar.nii") is None


def test_cifti_indices_are_parsed_as_integers_or_refused():
    """A brain model's indices, as CIFTI's XML writes them: integers apart by ASCII whitespace, parsed whole;
    anything else (signs, decimals, words, numbers past int64, other whitespace) refused, for nibabel to read or
    refuse, where numpy's parser alone would stop, read a sign, or cap a number."""
    from voxfit.io.readers import _integers

    npt.assert_array_equal(_integers(" 5 2\n\t9   7\n"), [5, 2, 9, 7])
    npt.assert_array_equal(_integers("922337203685477580 0"), [922337203685477580, 0])
    for blank in ("", " ", "\n\t "):  # (numpy's parser reads whitespace alone as one 0)
        assert _integers(blank).size == 0
    for text in ("5 2 9 -7", "5 2 9.7", "5 2 9 7 x", "5,2", "5 2 1e3", "+5", "99999999999999999999 5", "5\u00a02"):
        with pytest.raises(ValueError):
            _integers(text)


def test_brain_models_converted_by_runs_are_nibabels(rng):
    """BrainModels (names converted once per run of one name) holds nibabel's arrays: names spelt as nibabel
    accepts them, a structure in two runs, voxels between surfaces; its masks, slices, sums, structures and
    pickles are nibabel's; an unknown name is nibabel's ValueError."""
    from voxfit.io.geometry import BrainModels

    names = ["CortexLeft"] * 4 + ["thalamus_left"] * 3 + ["CIFTI_STRUCTURE_CORTEX_RIGHT"] * 2 + ["CortexLeft"] * 2
    vertex = np.r_[0, 2, 5, 9, -1, -1, -1, 1, 3, 11, 12]
    voxel = np.full((11, 3), -1)
    voxel[4:7] = rng.integers(0, 4, (3, 3))
    args = (vertex, np.diag([2.0, 2, 2, 1]), (4, 4, 4), {"CortexLeft": 20, "CortexRight": 8})
    ours, theirs = BrainModels(names, voxel, *args), nib.cifti2.BrainModelAxis(names, voxel, *args)
    assert ours == theirs and ours.name.dtype == theirs.name.dtype
    npt.assert_array_equal(ours.name, theirs.name)
    npt.assert_array_equal(ours.surface_mask, theirs.surface_mask)
    npt.assert_array_equal(ours.volume_mask, theirs.volume_mask)
    for part in (slice(2, 9), slice(None, None, 3), np.array([10, 0, 5])):
        assert isinstance(ours[part], BrainModels) and ours[part] == theirs[part]
        npt.assert_array_equal(ours[part].surface_mask, theirs[part].surface_mask)
    assert ours + ours[:3] == theirs + theirs[:3]
    assert pickle.loads(pickle.dumps(ours)) == theirs
    assert CiftiGeometry(ours).describe() == CiftiGeometry(theirs).describe()
    for bad in (["CortexLeft", "Nowhere"], [("cortex", "left")] * 2, []):
        with pytest.raises((ValueError, TypeError)) as ours_error:
            BrainModels(bad, vertex=np.arange(len(bad)), nvertices={"CortexLeft": 4})
        with pytest.raises(ours_error.type):
            nib.cifti2.BrainModelAxis(bad, vertex=np.arange(len(bad)), nvertices={"CortexLeft": 4})
    # names assigned as nibabel takes them: tuples, a generator, strings and tuples mixed
    kinds = (BrainModels, nib.cifti2.BrainModelAxis)
    for names in ([("cortex", "left")] * 3, ["CortexLeft", ("cortex", "left"), "cortex_left"], None):
        models = [cls(["CortexLeft"] * 3, vertex=np.arange(3), nvertices={"CortexLeft": 4}) for cls in kinds]
        for axis in models:
            axis.name = names if names is not None else (s for s in ["CortexLeft"] * 3)
        npt.assert_array_equal(models[0].name, models[1].name)


def test_cifti_series_read_from_the_stored_layout_in_slabs(tmp_path, rng, monkeypatch):
    """An uncompressed, unscaled .dtseries.nii is read from its stored (grayordinate-major) layout, slab by slab,
    each slab's scans transposed out of tiles of whole series read in order (no memory map): the same scans as
    nibabel's; images in memory go through nibabel. ``scans_into`` writes the same slabs straight into one array,
    across files."""
    from voxfit.io import readers
    from voxfit.io.readers import _read_transposed, _stored_layout

    cortex = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 400, 3), 400, name="CortexLeft")
    models = cortex + nib.cifti2.BrainModelAxis.from_mask(
        rng.random((5, 4, 3)) > 0.4, name="ThalamusLeft", affine=np.eye(4)
    )
    data = rng.standard_normal((37, len(models))).astype(np.float32)
    image = nib.Cifti2Image(data, header=(nib.cifti2.SeriesAxis(0, 2, 37), models))
    path = tmp_path / "run.dtseries.nii"
    nib.save(image, path)
    reader = open_reader(str(path))
    assert _stored_layout(reader._imgs[0]) is not None and _stored_layout(image) is None
    slabs = list(reader.iter_scans(max_bytes=5 * len(models) * 4))
    assert [start for start, _ in slabs] == list(range(0, 37, 5))
    npt.assert_array_equal(np.concatenate([block for _, block in slabs]), data)
    assert all(block.flags.c_contiguous for _, block in slabs)  # (copied a tile at a time, not a strided view)
    out = np.empty((6, len(models)))
    monkeypatch.setattr(readers, "TILE_SERIES", 7)
    monkeypatch.setattr(readers, "TILE_BYTES", 7 * 4 * 4)  # tiles of 4 scans and 7 grayordinates
    _read_transposed(*_stored_layout(reader._imgs[0]), out, len(models), first=3, n=37)
    npt.assert_array_equal(out, data[3:9])
    npt.assert_array_equal(np.concatenate([b for _, b in reader.iter_scans(max_bytes=5 * len(models) * 4)]), data)
    npt.assert_array_equal(np.concatenate([b for _, b in open_reader(image).iter_scans(max_bytes=400)]), data)
    image2 = nib.Cifti2Image(data[:11] + 1, header=(nib.cifti2.SeriesAxis(0, 2, 11), models))
    nib.save(image2, tmp_path / "run2.dtseries.nii")
    for source in ([str(path), str(tmp_path / "run2.dtseries.nii")], [image, image2]):  # stored layout, nibabel's
        both = open_reader(source)
        out = np.full((48, len(models)), np.nan, dtype=np.float32)
        slabs = list(both.scans_into(out, max_bytes=5 * len(models) * 4))
        assert [start for start, _ in slabs] == [*range(0, 37, 5), 37, 42, 47]
        assert all(np.shares_memory(block, out) for _, block in slabs)
        npt.assert_array_equal(out, np.concatenate([data, data[:11] + 1]))
    opened = open_reader(str(path))
    path.write_bytes(path.read_bytes()[:-100])  # (cut short after its header was checked)
    with pytest.raises(InputError, match="ended before the data its header promises"):
        list(opened.scans_into(np.empty((37, len(models)), dtype=np.float32)))


def test_take_columns_copies_only_when_every_column_is_kept_in_order():
    """The gather's fast path (a plain copy of the slab) is taken only for every column in order; a permutation,
    a subset or no column are taken element by element, as numpy's take."""
    from voxfit.io.masking import _take_columns

    block = np.arange(24.0).reshape(4, 6)
    for index in (np.arange(6), np.array([1, 0, 2, 3, 4, 5]), np.array([0, 2, 5]), np.array([], dtype=np.intp)):
        out = np.empty((4, index.size))
        _take_columns(block, index, out)
        npt.assert_array_equal(out, block[:, index])


def test_same_brain_models_is_nibabels_equality():
    """Brain models compared from their arrays when those are the same, else by nibabel: equal, or not, exactly
    where nibabel's ``==`` says so (a changed vertex, structure or affine; voxel indices left on surface
    elements, which nibabel ignores)."""
    from voxfit.io.geometry import same_brain_models

    def models(vertices=(0, 3, 6), name="CortexLeft", affine=np.eye(4)):
        cortex = nib.cifti2.BrainModelAxis.from_surface(np.array(vertices), 10, name=name)
        voxels = nib.cifti2.BrainModelAxis.from_mask(np.ones((2, 1, 2), bool), name="ThalamusLeft", affine=affine)
        return cortex + voxels

    base = models()
    junk = models()
    junk.voxel[0] = (1, 1, 1)  # (a voxel index on a surface element)
    others = [models((0, 3, 7)), models(name="CortexRight"), models(affine=np.diag([2.0, 2, 2, 1])), junk]
    assert same_brain_models(base, models())
    for other in others:
        assert same_brain_models(base, other) == (base == other)
    assert same_brain_models(base, junk) and not same_brain_models(base, others[0])


def test_a_nii_cut_short_after_it_was_opened_says_where_it_ends(tmp_path, rng):
    """A .nii cut short by another program once its header was read: the slabs' read says where the file ends and
    what its header promises (it gave the missing bytes of the slab being read, 176 for a run missing 60 MB)."""
    path = write_nifti(tmp_path / "run.nii", volume_data(rng))
    reader = open_reader(path)
    offset, size = reader.data_offset, path.stat().st_size
    os.truncate(path, offset + 5 * 4 * int(np.prod(SHAPE)) + 7)  # (five scans and 7 bytes of the sixth)
    with pytest.raises(
        InputError,
        match=rf"file is truncated \(it ends after {offset + 20 * int(np.prod(SHAPE)) + 7:,} "
        rf"bytes, where its header promises {size:,}\)",
    ):
        list(reader.iter_scans(max_bytes=4 * int(np.prod(SHAPE))))


def _hemisphere_gifti(path: Path, rows, structure=None, intent="NIFTI_INTENT_NONE") -> str:
    meta = {"AnatomicalStructurePrimary": structure} if structure else {}
    arrays = [nib.gifti.GiftiDataArray(np.asarray(r, np.float32), intent=intent) for r in rows]
    nib.save(nib.gifti.GiftiImage(darrays=arrays, meta=nib.gifti.GiftiMetaData(meta)), str(path))
    return str(path)


@pytest.mark.parametrize("told_by", ["metadata", "file name"])
def test_a_mesh_of_the_other_hemisphere_is_refused(tmp_path, told_by):
    """fsaverage's and fsLR's hemispheres have as many vertices each: a CortexRight mesh beside CortexLeft data
    was taken for TFCE, clusters, FILM's smoothing and the report (a surface tester's); refused, by its metadata or
    its name's hemi-; a mesh that says nothing, or the data's own, is taken."""
    from voxfit.io.readers import read_mesh

    coords = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int32)

    def mesh(name, structure):
        meta = {"AnatomicalStructurePrimary": structure} if told_by == "metadata" and structure else {}
        arrays = [
            nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(faces, intent="NIFTI_INTENT_TRIANGLE"),
        ]
        nib.save(nib.gifti.GiftiImage(darrays=arrays, meta=nib.gifti.GiftiMetaData(meta)), str(tmp_path / name))
        return tmp_path / name

    right = mesh("hemi-R_sphere.surf.gii" if told_by == "file name" else "sphere.surf.gii", "CortexRight")
    with pytest.raises(InputError, match="lies on CortexRight but the data on CortexLeft"):
        read_mesh(right, 4, "CortexLeft")
    assert read_mesh(right, 4, "CortexRight")[1].shape == (2, 3)
    assert read_mesh(mesh("plain.surf.gii", None), 4, "CortexLeft")[1].shape == (2, 3)


def test_a_mesh_whose_triangles_point_past_its_vertices_is_named(tmp_path, capsys):
    """A --mesh of 300 vertices whose triangles index vertex 100,000 was refused in the API's words: "`faces` must
    hold vertex numbers in 0..299 (the mask has 300 vertices)", naming no file and saying "mask". The mesh is
    named, with the vertices its triangles index beyond the data's, and the fix (the data's surface's mesh)."""
    from voxfit.cli import main

    coords = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 100_000]], dtype=np.int32)
    mesh = tmp_path / "oob.surf.gii"
    arrays = [
        nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(faces, intent="NIFTI_INTENT_TRIANGLE"),
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(mesh))
    rng = np.random.default_rng(1)
    maps = [
        _hemisphere_gifti(tmp_path / f"sub-{k:02d}_effect.func.gii", rng.standard_normal((1, 40))) for k in range(6)
    ]
    group = ["group", *maps, "--permutations", "20", "--tfce", "--mesh", str(mesh), "-o", str(tmp_path / "g")]
    assert main([*group, "--quiet"]) == 2
    err = capsys.readouterr().err
    said = f"mesh {mesh}: its triangles index vertices 0 to 100,000, beyond the data's 40 vertices (0 to 39)"
    assert err.count("\n") == 1 and said in err and "give the mesh of the same surface as the data" in err, err
    # a vertex of NaN coordinates: FILM's neighbourhood went NaN, its t changed at every vertex (a tester's)
    coords[7] = np.nan
    arrays[0] = nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET")
    arrays[1] = nib.gifti.GiftiDataArray(faces[:2], intent="NIFTI_INTENT_TRIANGLE")
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(mesh))
    assert main([*group, "--quiet"]) == 2
    said = f"mesh {mesh}: its vertex 7 has no finite coordinates; the mesh is broken"
    assert said in capsys.readouterr().err


def test_maps_fitted_from_a_run_named_by_its_hemisphere_carry_it(tmp_path, capsys):
    """A GIFTI run whose hemisphere is its name's hemi- alone: its fit's maps (named without hemi-) carried no
    structure, and a group model took three left and three right subjects' maps as six (a surface tester's); the
    maps now carry AnatomicalStructurePrimary, and such a group is refused, --first-level folders too."""
    from voxfit.cli import main

    rng = np.random.default_rng(0)
    n, v = 30, 40
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n" + "".join(f"{o}\t8\ttask\n" for o in range(0, 60, 16)))
    folders = []
    for k in range(4):
        hemi = "L" if k < 2 else "R"
        run = _hemisphere_gifti(tmp_path / f"sub-{k:02d}_hemi-{hemi}_bold.func.gii", 100 + rng.standard_normal((n, v)))
        folders.append(tmp_path / f"sub-{k:02d}")
        fit = ["fit", str(run), "--events", str(events), "--tr", "2", "--contrast", "t=task", "--noise", "ols"]
        assert main([*fit, "-o", str(folders[-1]), "--quiet"]) == 0
    effects = [str(f / "contrast-t_stat-effect_statmap.func.gii") for f in folders]
    assert nib.load(effects[0]).meta["AnatomicalStructurePrimary"] == "CortexLeft"
    assert main(["group", *effects, "-o", str(tmp_path / "g"), "--quiet"]) == 2
    assert "lies on CortexRight but the data on CortexLeft" in capsys.readouterr().err
    first_level = ["group", "--first-level", *map(str, folders), "--first-level-contrast", "t", "--quiet"]
    assert main([*first_level, "-o", str(tmp_path / "m")]) == 2
    assert "lies on CortexRight but the first effect map" in capsys.readouterr().err


@pytest.mark.parametrize(
    "pattern",
    [
        "{h}h.{name}.func.gii",
        "sub-01.{h}h.{name}.func.gii",
        "{name}.{H}.func.gii",
        "{name}_space-fsaverage5.{H}.func.gii",
    ],
    ids=["freesurfer", "freesurfer-inside", "hcp", "old-fmriprep"],
)
def test_hemispheres_named_as_freesurfer_or_hcp_name_them_are_not_combined(tmp_path, pattern, capsys):
    """GIFTI files without AnatomicalStructurePrimary named lh.run1.func.gii and rh.run1.func.gii were fitted as two
    runs of one surface and combined, and lh.sub01-06 with rh.sub01-06 tested as 12 subjects (exit 0; a surface
    tester's): only BIDS's hemi-L/hemi-R was read from a name. FreeSurfer's lh./rh. and the .L./.R. of HCP's and
    of fMRIPrep's names before 1.2 now give the hemisphere too: refused as hemi- names are; one hemisphere's fitted."""
    from voxfit.cli import main

    rng = np.random.default_rng(0)
    n, v = 30, 50

    def gifti(hemi, name, rows):
        return _hemisphere_gifti(tmp_path / pattern.format(h=hemi.lower(), H=hemi, name=name), rows)

    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n" + "".join(f"{o}\t8\ttask\n" for o in range(0, 60, 16)))
    runs = [gifti(h, "run1", 100 + rng.standard_normal((n, v))) for h in "LR"]
    fit = ["fit", "--events", str(events), str(events), "--tr", "2", "--contrast", "t=task", "--quiet"]
    assert main([*fit[:1], *runs, *fit[1:], "-o", str(tmp_path / "fit")]) == 2
    assert "lies on CortexRight but the data on CortexLeft" in capsys.readouterr().err
    maps = {h: [gifti(h, f"sub{k:02d}", rng.standard_normal((1, v))) for k in range(1, 4)] for h in "LR"}
    assert main(["group", *maps["L"], *maps["R"], "-o", str(tmp_path / "group"), "--quiet"]) == 2
    assert "lies on CortexRight but the data on CortexLeft" in capsys.readouterr().err
    assert main(["group", *maps["R"], "-o", str(tmp_path / "right"), "--quiet"]) == 0
    written = nib.load(tmp_path / "right" / "contrast-intercept_stat-t_statmap.func.gii")
    assert written.meta["AnatomicalStructurePrimary"] == "CortexRight"


@pytest.mark.parametrize(
    ("name", "structure"),
    [
        ("rh.sub-01_hemi-L_bold.func.gii", "CortexLeft"),  # (BIDS's hemi- first: the leftmost mark was taken)
        ("sub-01_hemi-L_bold.rh.func.gii", "CortexLeft"),
        ("rh.sub-01.L.func.gii", None),  # (marks that disagree say no side)
        ("lh.sub-01.L.func.gii", "CortexLeft"),
        ("flh.func.gii", None),
        ("sub-01_task-lhand.func.gii", None),
    ],
)
def test_a_hemisphere_is_read_from_a_name_only_where_its_marks_agree(name, structure):
    from voxfit.io.readers import _gifti_structure

    assert _gifti_structure(nib.gifti.GiftiImage(), name) == structure


def test_maps_of_different_vertex_counts_name_the_file_that_differs(tmp_path, capsys):
    """Subjects' maps in fsnative (a study's subjects fitted so, reaching its dataset node) were refused saying only
    "the GIFTI files have different numbers of vertices ([180, 200])": the first file that differs from most is
    named, with their count, and the fix: one template space."""
    from voxfit.cli import main

    rng = np.random.default_rng(0)
    counts = {"sub-01": 200, "sub-02": 200, "sub-03": 180, "sub-04": 200}
    maps = [
        _hemisphere_gifti(tmp_path / f"{s}_effect.func.gii", rng.standard_normal((1, v))) for s, v in counts.items()
    ]
    assert main(["group", *maps, "-o", str(tmp_path / "g"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{maps[2]} has 180 vertices, 3 of the 4 GIFTI files 200" in err, err
    assert "fsnative surfaces differ from subject to subject" in err and "fsaverage5" in err
    with pytest.raises(InputError, match=re.escape(f"{maps[2]} has 180 vertices, 1 of the 2 GIFTI files 200")):
        open_reader([maps[0], maps[2]])  # (on a tie, the first file's count is taken as the surface's)


@pytest.mark.parametrize("told_by", ["metadata", "file name"])
def test_runs_maps_and_masks_of_the_other_hemisphere_are_refused(tmp_path, told_by, capsys):
    """fsaverage's hemispheres have as many vertices each: a hemi-R run beside a hemi-L one was fitted as its
    second run, and a group model took three left and three right maps as six subjects, without a word (exit 0).
    Each GIFTI's structure is its AnatomicalStructurePrimary, else its name's BIDS hemi- entity: runs, maps,
    variances and masks of the other hemisphere are refused (exit 2); one hemisphere's are fitted."""
    from voxfit.cli import main

    rng = np.random.default_rng(0)
    n, v = 30, 50

    def gifti(name, hemi, rows):
        structure = {"L": "CortexLeft", "R": "CortexRight"}[hemi] if told_by == "metadata" else None
        name = name.format(hemi=hemi if told_by == "file name" else "X")
        return _hemisphere_gifti(tmp_path / name, rows, structure)

    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n" + "".join(f"{o}\t8\ttask\n" for o in range(0, 60, 16)))
    runs = [
        gifti(f"sub-01_run-{k}_hemi-{{hemi}}_bold.func.gii", h, 100 + rng.standard_normal((n, v)))
        for k, h in ((1, "L"), (2, "R"))
    ]
    fit = ["fit", "--events", str(events), str(events), "--tr", "2", "--contrast", "t=task", "--quiet"]
    assert main([*fit[:1], *runs, *fit[1:], "-o", str(tmp_path / "fit")]) == 2
    assert "lies on CortexRight but the data on CortexLeft" in capsys.readouterr().err
    maps = [
        gifti(f"sub-{k:02d}_hemi-{{hemi}}_effect.func.gii", "L" if k <= 3 else "R", rng.standard_normal((1, v)))
        for k in range(1, 7)
    ]
    assert main(["group", *maps, "-o", str(tmp_path / "group"), "--quiet"]) == 2
    assert "CortexRight but" in capsys.readouterr().err and not (tmp_path / "group").exists()
    left = maps[:3]
    right_variances = [gifti(f"sub-{k:02d}_hemi-{{hemi}}_variance.func.gii", "R", np.ones((1, v))) for k in (1, 2, 3)]
    mixed = ["group", *left, "--variances", *right_variances, "--model", "mixed", "-o", str(tmp_path / "mixed")]
    assert main([*mixed, "--quiet"]) == 2
    assert "lies on CortexRight but its effect map" in capsys.readouterr().err
    mask = gifti("mask_hemi-{hemi}.func.gii", "R", np.ones((1, v)))
    assert main(["group", *left, "--mask", mask, "-o", str(tmp_path / "masked"), "--quiet"]) == 2
    assert "CortexRight" in capsys.readouterr().err
    assert main(["group", *left, "-o", str(tmp_path / "left"), "--quiet"]) == 0
    other_left = gifti("sub-01_run-3_hemi-{hemi}_bold.func.gii", "L", 100 + rng.standard_normal((n, v)))
    assert main([*fit[:1], runs[0], other_left, *fit[1:], "-o", str(tmp_path / "left-runs")]) == 0


@pytest.mark.parametrize(
    ("intent", "shape", "said"),
    [
        ("NIFTI_INTENT_LABEL", (1, 40), "labels (a parcellation)"),
        ("NIFTI_INTENT_POINTSET", (40, 3), "a surface's coordinates"),
        ("NIFTI_INTENT_VECTOR", (3, 40, 3), "vectors"),
        ("NIFTI_INTENT_NONE", (3, 40, 3), "several values a vertex"),
    ],
)
def test_a_gifti_of_labels_coordinates_or_vectors_is_refused(tmp_path, intent, shape, said):
    """A parcellation's .label.gii was fitted as a run and as group maps, a surface's coordinates (one 40 x 3
    array) as 3 scans of 40 vertices, and arrays of 3 values a vertex flattened into 3 x 40 "vertices": refused,
    saying what the file holds."""
    rows = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = _hemisphere_gifti(
        tmp_path / "x.gii", rows if len(shape) == 3 else [rows] if shape[0] > 1 else rows, intent=intent
    )
    with pytest.raises(InputError, match=re.escape(f"holds {said}")) as refused:
        open_reader(path)
    assert ("wb_command -gifti-label-to-roi" in str(refused.value)) == intent.endswith("LABEL")  # (a mask's way)


@pytest.mark.parametrize("suffix", [".dtseries.nii", ".dtseries.nii.gz"])
def test_a_cifti_whose_xml_counts_more_grayordinates_than_its_header_is_refused_before_nibabel_parses_it(
    tmp_path, suffix
):
    """A 53 KB CIFTI file whose XML gave a brain model IndexCount 300,000,000 (its header: 312 grayordinates)
    grew the command to 14 GB over 25 s before nibabel's refusal, under any --max-memory: nibabel allocates from
    the counts as it parses the XML. Here 3,000,000, so that the code before this check stays quick; refused
    from the XML's text, naming the count, compressed or not; and so is a header of fewer grayordinates than the
    XML's brain models hold."""
    import gzip

    cortex = nib.cifti2.BrainModelAxis.from_surface(np.arange(300), 300, name="CortexLeft")
    models = cortex + nib.cifti2.BrainModelAxis.from_surface(np.arange(12), 12, name="CortexRight")
    y = np.ones((5, len(models)), dtype=np.float32)
    good = tmp_path / "good.dtseries.nii"
    nib.save(nib.Cifti2Image(y, header=(nib.cifti2.SeriesAxis(0, 2.0, 5), models)), good)
    raw = good.read_bytes().replace(b'IndexCount="300"', b'IndexCount="3000000"', 1)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    with pytest.raises(InputError, match="IndexCount as 3,000,000, beyond its header's 312 grayordinates"):
        open_reader(bad)
    assert open_reader(good).geometry.n_elements == 312
    # a header of 311 grayordinates beside the XML's 312: nibabel fitted 312 columns with a warning, exit 0
    raw = bytearray(good.read_bytes())
    raw[64:72] = (311).to_bytes(8, "little")  # (NIfTI-2 dim[6])
    short = tmp_path / f"short{suffix}"
    short.write_bytes(gzip.compress(bytes(raw)) if suffix.endswith(".gz") else bytes(raw))
    with pytest.raises(InputError, match="brain models hold 312 grayordinates, its header 311"):
        open_reader(short)


@pytest.mark.parametrize("parser", ["voxfit", "nibabel"])
@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (b'SurfaceNumberOfVertices="300"', b'SurfaceNumberOfVertices="100"', "lists vertex 100, outside its "),
        (b"<VertexIndices>0 1 2", b"<VertexIndices>0 1 1", "CORTEX_LEFT lists vertex 1 twice"),
        (b"<VoxelIndicesIJK>0 0 0", b"<VoxelIndicesIJK>0 0 9", "voxel (0, 0, 9) lies outside its volume's dimen"),
        (b"<VoxelIndicesIJK>0 0 0\n1 0 0", b"<VoxelIndicesIJK>0 0 0\n0 0 0", "voxel (0, 0, 0) is listed twice"),
    ],
)
def test_a_cifti_whose_brain_models_list_vertices_or_voxels_it_cannot_hold_is_refused(
    tmp_path, monkeypatch, parser, old, new, said
):
    """A CIFTI file whose surface listed vertex 299 beside SurfaceNumberOfVertices 100 was fitted, and its maps
    written with the same impossible brain models (Connectome Workbench refuses them; nibabel reads them):
    vertices outside their surface's count or listed twice, and voxels outside the volume or listed twice, are
    refused, naming the first, whether voxfit or nibabel parses the XML (as for a scaled file)."""
    from voxfit.io import readers

    if parser == "nibabel":
        monkeypatch.setattr(readers, "_stored_cifti", lambda path: None)
    cortex = nib.cifti2.BrainModelAxis.from_surface(np.arange(300), 300, name="CortexLeft")
    voxels = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    models = cortex + nib.cifti2.BrainModelAxis("thalamus_left", voxel=voxels, affine=np.eye(4), volume_shape=(2, 2, 2))
    y = np.ones((5, len(models)), dtype=np.float32)
    good = tmp_path / "good.dtseries.nii"
    nib.save(nib.Cifti2Image(y, header=(nib.cifti2.SeriesAxis(0, 2.0, 5), models)), good)
    raw = good.read_bytes()
    assert raw.count(old) == 1
    bad = tmp_path / "bad.dtseries.nii"
    bad.write_bytes(raw.replace(old, new))
    with pytest.raises(InputError, match=re.escape(said)):
        open_reader(bad)
    assert open_reader(good).geometry.n_elements == 303


def test_a_gzip_compressed_cifti_is_refused_saying_to_decompress_it(tmp_path):
    """nibabel reads a .dtseries.nii.gz as a NIfTI-2 image, not as CIFTI (nor does Workbench read it): it was
    refused as "not a CIFTI-2 image"; it now says to decompress it."""
    import gzip

    cortex = nib.cifti2.BrainModelAxis.from_surface(np.arange(30), 30, name="CortexLeft")
    good = tmp_path / "run.dtseries.nii"
    nib.save(nib.Cifti2Image(np.ones((5, 30), np.float32), header=(nib.cifti2.SeriesAxis(0, 2.0, 5), cortex)), good)
    packed = tmp_path / "run.dtseries.nii.gz"
    packed.write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(InputError, match=r"gzip-compressed CIFTI file, .*\(gunzip\) and give the run\.dtseries\.nii\."):
        open_reader(packed)


@pytest.mark.parametrize("meta", [{"Name": "x"}, {}])
def test_a_gifti_whose_compressed_data_inflate_beyond_their_dimensions_is_refused_before_nibabel_inflates_them(
    tmp_path, meta
):
    """A 4 MB GIFTI declaring 300 float32 values whose GZipBase64Binary payload inflated to 3 GiB grew the
    command to 6 GB under --max-memory 500M: its declared sizes were checked, and nibabel inflates the payload
    whole before comparing. Each compressed array that could inflate more than 64 MiB beyond its dimensions is
    now inflated in pieces and counted first (here 1 MiB of random bytes, in a file nibabel wrote, its array with
    metadata and without: the first check's pattern found no data after an empty one); a file's true arrays pass."""
    import base64
    import zlib

    values = nib.gifti.GiftiDataArray(np.ones(300, np.float32), meta=meta, encoding="GZipBase64Binary")
    good = tmp_path / "good.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[values]), good)
    text = good.read_bytes()
    start = text.index(b"<Data>") + len(b"<Data>")
    bomb = base64.b64encode(zlib.compress(np.random.default_rng(0).bytes(1 << 20)))  # (could inflate 1,032-fold)
    bad = tmp_path / "bad.func.gii"
    bad.write_bytes(text[:start] + bomb + text[text.index(b"</Data>") :])
    with pytest.raises(InputError, match="inflate beyond the 1,200 bytes its dimensions declare"):
        open_reader(bad)
    assert open_reader(good).geometry.n_elements == 300


def test_a_truncated_or_corrupt_gifti_says_so_and_what_to_do(tmp_path):
    """A fsaverage5 run cut in half was refused as "not a readable image (ExpatError: no element found: line 93,
    column 957)", the XML parser's words (a surface tester's): it says the file looks truncated and to copy or
    export it again; text that is no XML, and a compressed array whose stream is corrupt, are said as such."""
    rows = np.random.default_rng(0).standard_normal((4, 200)).astype(np.float32)
    arrays = [nib.gifti.GiftiDataArray(r, encoding="GZipBase64Binary") for r in rows]
    good = tmp_path / "good_hemi-R.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=arrays), good)
    text = good.read_bytes()
    cut, prose, corrupt = (tmp_path / f"{name}_hemi-R.func.gii" for name in ("cut", "prose", "corrupt"))
    cut.write_bytes(text[: len(text) // 2])
    prose.write_bytes(b"hello world\n")
    start = text.index(b"<Data>") + 20
    corrupt.write_bytes(text[:start] + b"AAAA" + text[start + 4 :])
    for path, said in (
        (cut, "the file looks truncated (its XML ends before its elements close); copy or export it again (nibabel: "),
        (prose, "not valid GIFTI XML; give a GIFTI file (.func.gii, .shape.gii), copied or exported again if it is"),
        (corrupt, "a data array's encoded values are corrupt; copy or export the file again (nibabel: "),
    ):
        with pytest.raises(InputError, match=re.escape(f"{path}: {said}")):
            open_reader(path)
    assert open_reader(good).n_scans == 4


@pytest.mark.parametrize("encoding", ["ASCII", "Base64Binary", "GZipBase64Binary"])
def test_a_gifti_whose_dimensions_disagree_with_its_data_says_so(tmp_path, encoding, capsys):
    """A GIFTI whose first DataArray's Dim0 claimed 2,000,000,000 values over 200 was refused as numpy's "cannot
    reshape array of size 200 into shape (2000000000,)", and under --max-memory as data too large for it: the
    claim is compared with what the array's encoded data can hold before anything is decoded, and said to
    disagree with them; a claim within that bound (100 of 200 values) is said so once nibabel has decoded them."""
    from voxfit.cli import main

    rows = np.random.default_rng(0).standard_normal((30, 200)).astype(np.float32)
    good = tmp_path / "good_hemi-L.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r, encoding=encoding) for r in rows]), good)
    design = tmp_path / "design.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{np.sin(i / 3):.3f}\t1\n" for i in range(30)))
    for claim, said in (
        (2_000_000_000, "a data array's dimensions (2000000000,) declare 2,000,000,000 values, more than its "),
        (100, "a data array holds 200 values where its dimensions (Dim0, Dim1) give 100: the header's dimensions "),
    ):
        bad = tmp_path / f"bad{claim}_hemi-L.func.gii"
        bad.write_bytes(good.read_bytes().replace(b'Dim0="200"', f'Dim0="{claim}"'.encode(), 1))
        fit = ["fit", str(bad), "--design", str(design), "--contrast", "a=A", "-o", str(tmp_path / "o")]
        assert main([*fit, "--max-memory", "1G", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{bad}: {said}" in err and "disagree with its data" in err, err
    assert open_reader(good).n_scans == 30


def test_a_gifti_run_stored_scans_by_vertices_is_said_to_be_the_other_way_round(tmp_path, capsys):
    """One 2-D GIFTI array is vertices by scans (FreeSurfer's, fMRIPrep's); a run stored scans by vertices was
    refused as "the design has 60 rows but the data have 642 scans", no more (a surface tester's), and with
    --events, whose design takes the data's length, fitted as 60 vertices of 642 scans, exit 0 (another's). Refused
    where its columns are a standard surface's vertices (642: fsaverage3), said where they are not."""
    import warnings

    from voxfit.cli import main

    rows = np.random.default_rng(0).standard_normal((60, 642)).astype(np.float32)
    run = tmp_path / "run.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(rows)]), str(run))
    design = tmp_path / "design.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{np.sin(i / 3):.3f}\t1\n" for i in range(60)))
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t10\tA\n60\t10\tA\n")
    for given in (["--design", str(design)], ["--events", str(tmp_path / "events.tsv"), "--tr", "2"]):
        assert main(["fit", str(run), *given, "--contrast", "a=A", "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "its one data array is 60 x 642, read as GIFTI orders it (60 vertices x 642 scans), and 642 are" in err
        assert "it is scans x vertices; write it vertices x scans" in err and not (tmp_path / "o").exists()
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(rows[:, :600])]), str(run))
    with pytest.warns(UserWarning, match="60 x 600, .*: fewer vertices than scans; if it is scans x vertices"):
        GiftiReader([run])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(rows.T)]), str(run))
        assert GiftiReader([run]).n_scans == 60


def test_maps_keep_the_inputs_qform_beside_its_sform(tmp_path):
    """An input whose qform and sform differ (both set): the maps' qform was overwritten by the sform, code kept, so
    that a tool reading the qform placed the maps otherwise than the input. Each form is kept as the input has it."""
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform[:3, 3] = [-10, -12, -8]
    sform = qform.copy()
    sform[:3, 3] += [1.5, 0, 0]
    img = nib.Nifti1Image(np.ones((4, 5, 3, 6), np.float32), None)
    img.set_qform(qform, 1)
    img.set_sform(sform, 2)
    nib.save(img, tmp_path / "bold.nii")
    geometry = open_map(tmp_path / "bold.nii").geometry
    geometry.write(tmp_path / "map.nii", np.zeros(60), ["map"])
    header = nib.load(tmp_path / "map.nii").header
    npt.assert_allclose(header.get_qform(), qform, atol=1e-5)
    npt.assert_allclose(header.get_sform(), sform)
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)


def test_a_small_gifti_under_a_cap_below_the_interpreters_is_told_the_cap_to_give(tmp_path):
    """A GIFTI of kilobytes under --max-memory 250M: told to check the file's dimensions and give the data as .npy
    or CIFTI, where the cap was the interpreter's reserve (256M) alone. It is told the cap to give."""
    from voxfit._memory import whole_files_capped
    from voxfit.io.readers import _check_gifti_sizes

    path = tmp_path / "lh.func.gii"
    nib.save(nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.ones(50, np.float32)) for _ in range(4)]), path)
    with (
        whole_files_capped("250M"),
        pytest.raises(InputError, match=r"The file is small: give --max-memory 257M \(256M"),
    ):
        _check_gifti_sizes(path)


def test_a_boolean_npy_mask_is_a_mask(tmp_path, capsys):
    """A mask saved from numpy is boolean: it was refused as "data must be numeric; got bool", hiding what else was
    wrong with it (a surface tester's). Read as 0 and 1."""
    from voxfit.cli import main

    rng = np.random.default_rng(0)
    np.save(tmp_path / "data.npy", rng.standard_normal((12, 30)).astype(np.float32))
    keep = np.arange(30) % 3 > 0
    np.save(tmp_path / "mask.npy", keep[None])
    design = tmp_path / "design.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{k % 2}\t1\n" for k in range(12)))
    argv = ["fit", str(tmp_path / "data.npy"), "--design", str(design), "--contrast", "a=A", "--quiet"]
    assert main([*argv, "--mask", str(tmp_path / "mask.npy"), "-o", str(tmp_path / "o")]) == 0, capsys.readouterr()
    t = np.load(tmp_path / "o" / "contrast-a_stat-t_statmap.npy")
    assert np.isfinite(t).ravel().tolist() == keep.tolist()


def test_a_fortran_ordered_npy_is_read_by_slabs_without_its_map(tmp_path):
    """A Fortran-ordered .npy (each column's series together) was read in slabs through its memory map, whose pages
    count in the process's resident memory and stay there: 229 MiB of data peaked at 348 MiB under --max-memory
    300M, whatever the cap (a tester's). Its slabs are now read from the file by tiles of whole series, as a CIFTI
    file's: the values of the C-ordered file's, in the same slabs, and the file's pages are not mapped."""
    from voxfit.io import open_reader

    rng = np.random.default_rng(0)
    data = (100 + rng.standard_normal((60, 100_000))).astype(">f4")  # (big-endian: converted on the way)
    np.save(tmp_path / "c.npy", data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))

    def rss_file() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
        return 0

    expected = [(start, slab.copy()) for start, slab in open_reader(tmp_path / "c.npy").iter_scans(max_bytes=4 << 20)]
    reader = open_reader(tmp_path / "f.npy")
    before = rss_file()
    got = [(start, slab.copy()) for start, slab in reader.iter_scans(max_bytes=4 << 20)]
    assert rss_file() - before < data.nbytes // 4  # (through the map: the whole file, 24 MB)
    assert [s for s, _ in got] == [s for s, _ in expected] and len(got) > 2
    for (_, a), (_, b) in zip(got, expected):
        assert a.dtype == np.float32
        npt.assert_array_equal(a, b)


def test_a_zarr_store_of_small_chunks_is_read_a_few_thousand_chunks_at_a_time(tmp_path, monkeypatch):
    """zarr holds about 2.7 KB beside each chunk a read spans: a store of 1 x 1 chunks (0.34 MiB of data) peaked at
    333 MiB under --max-memory 300M, its slabs sized by bytes alone (a tester's; 167 MiB so). A slab spans at most
    ZARR_CHUNKS_PER_READ chunks (here made 40: rows of 16 chunks, two rows a slab), with the store's values."""
    zarr = pytest.importorskip("zarr")
    from voxfit.io import open_reader, readers

    data = np.random.default_rng(0).standard_normal((9, 64)).astype(np.float32)
    store = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(1, 4), dtype="f4")
    store[:] = data
    monkeypatch.setattr(readers, "ZARR_CHUNKS_PER_READ", 40)
    slabs = [(start, slab.copy()) for start, slab in open_reader(tmp_path / "s.zarr").iter_scans()]
    assert [start for start, _ in slabs] == [0, 2, 4, 6, 8]
    npt.assert_array_equal(np.concatenate([slab for _, slab in slabs]), data)
