"""Dask: the voxel blocks and the shuffles on a LocalCluster give the local run's numbers exactly; inputs read
by columns (voxfit.io.ColumnSource) are read by the workers, not by the client."""

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import SecondLevel, fit, fit_ar, fit_images, load, mixed_effects
from voxfit.cli import main
from voxfit.exceptions import InputError
from voxfit.inference import permutation_test
from voxfit.io import ColumnSource, open_reader
from voxfit.io.readers import NpyColumns
from voxfit.io.readers import NiftiReader, _RowsReader

from .imaging import write_cifti_runs

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_fits_on_a_cluster_equal_local_fits(client):
    rng = np.random.default_rng(0)
    n, V = 60, 5000
    X = np.column_stack([np.sin(np.arange(n) / 3), np.ones(n)])
    Y = (100 + rng.standard_normal((n, V))).astype(np.float32)
    Y[5, 7] = np.nan
    local = fit(X, Y, block_size=1200)
    remote = fit(X, Y, block_size=1200, scheduler=client)
    npt.assert_array_equal(remote.betas, local.betas)
    npt.assert_array_equal(remote.residual_variance, local.residual_variance)
    a = fit_ar(X, Y, 2, {"s": [1, 0]}, block_size=1000)
    b = fit_ar(X, Y, 2, {"s": [1, 0]}, block_size=1000, scheduler=client)
    npt.assert_array_equal(b.contrasts["s"].t, a.contrasts["s"].t)
    npt.assert_array_equal(b.ar, a.ar)


@pytest.mark.parametrize("design", ["one-sample", "covariate"])
def test_permutations_on_a_cluster_equal_local_ones(client, design):
    rng = np.random.default_rng(1)
    n, V = 16, 2000
    X = np.ones((n, 1)) if design == "one-sample" else np.column_stack([np.ones(n), rng.standard_normal(n)])
    Y = (rng.standard_normal((n, V)) + 0.3).astype(np.float32)
    c = [1.0] if design == "one-sample" else [0, 1.0]
    local = permutation_test(X, Y, c, n_permutations=1500, seed=4)
    remote = permutation_test(X, Y, c, n_permutations=1500, seed=4, scheduler=client)
    npt.assert_array_equal(remote.null_max, local.null_max)
    npt.assert_array_equal(remote.p_uncorrected, local.p_uncorrected)
    npt.assert_array_equal(remote.p_fwe, local.p_fwe)


def test_group_command_with_a_scheduler_address(client, tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for i in range(8):
        data = rng.standard_normal((6, 5, 4)).astype(np.float32) + 0.5
        paths.append(tmp_path / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4)), paths[-1])
    args = ["group", *map(str, paths), "--permutations", "200", "--seed", "0", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    assert main([*args, "--scheduler", client.scheduler.address, "-o", str(tmp_path / "dask")]) == 0
    for name in ("contrast-intercept_stat-p_desc-fwe_statmap.nii.gz", "contrast-intercept_stat-t_statmap.nii.gz"):
        npt.assert_array_equal(
            np.asarray(nib.load(tmp_path / "dask" / name).dataobj),
            np.asarray(nib.load(tmp_path / "local" / name).dataobj),
        )
    assert main([*args, "--scheduler", "nosuch://host", "-o", str(tmp_path / "nowhere")]) == 2


def test_unreachable_scheduler_is_an_input_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        fit(np.ones((5, 1)), np.ones((5, 3)), scheduler="nosuch://host")


def _group_maps(rng, n=12, V=4000):
    """Group maps with columns the automatic group mask drops: a zero, a constant column, a NaN."""
    Y = (rng.standard_normal((n, V)) + 0.3).astype(np.float32)
    Y[3, :50] = 0
    Y[:, 60:70] = 1.0
    Y[2, 80] = np.nan
    return Y


def _same_outputs(a, b):
    names = sorted(p.name for p in a.iterdir() if p.suffix == ".npy")
    assert len(names) > 5 and names == sorted(p.name for p in b.iterdir() if p.suffix == ".npy")
    for name in names:
        npt.assert_array_equal(np.load(b / name), np.load(a / name), err_msg=name)


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_group_maps_in_a_store_are_read_by_the_workers(client, tmp_path, kind):
    Y = _group_maps(np.random.default_rng(3))
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        group = zarr.open_group(tmp_path / "maps.zarr", mode="w")
        group.create_array("maps", shape=Y.shape, chunks=(12, 1000), dtype="f4")[:] = Y
        path, mask = f"{tmp_path / 'maps.zarr'}::maps", []
    else:
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "maps.h5", "w") as f:
            f.create_dataset("grp/maps", data=Y, chunks=(12, 500))
        np.save(tmp_path / "mask.npy", (np.arange(Y.shape[1]) % 3 > 0)[None].astype(np.uint8))
        path, mask = f"{tmp_path / 'maps.h5'}::grp/maps", ["--mask", str(tmp_path / "mask.npy")]
    args = ["group", path, "--one-sample", *mask, "--quiet"]
    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    assert main([*args, "--scheduler", client.scheduler.address, "-o", str(tmp_path / "dask")]) == 0
    _same_outputs(tmp_path / "local", tmp_path / "dask")


def _refuse(*args, **kwargs):
    raise AssertionError("the client read data values")


@pytest.mark.parametrize("files", ["4-D int16 with scale factors", "3-D files"])
def test_the_client_reads_no_group_data(client, tmp_path, monkeypatch, files):
    rng = np.random.default_rng(4)
    maps = _group_maps(rng, V=6 * 5 * 4).reshape(12, 6, 5, 4).transpose(1, 2, 3, 0)
    if files == "3-D files":
        paths = [tmp_path / f"s{i}.nii" for i in range(12)]
        for i, p in enumerate(paths):
            nib.save(nib.Nifti1Image(maps[..., i], np.eye(4)), p)
    else:
        img = nib.Nifti1Image(np.nan_to_num(maps * 100 + 50), np.eye(4))
        img.set_data_dtype(np.int16)  # nibabel picks the scale factors
        paths = [tmp_path / "maps.nii"]
        nib.save(img, paths[0])
    local = SecondLevel().fit(paths)
    assert open_reader(paths if len(paths) > 1 else paths[0]).column_source() is not None
    for cls, method in [
        (ColumnSource, "raw"),
        (ColumnSource, "__getitem__"),
        (NiftiReader, "iter_scans"),
        (_RowsReader, "iter_scans"),
    ]:
        monkeypatch.setattr(cls, method, _refuse)  # in this process only: the workers are other processes
    remote = SecondLevel(scheduler=client).fit(paths)
    npt.assert_array_equal(remote.masker.mask, local.masker.mask)
    for key in ("effect", "t", "p"):
        npt.assert_array_equal(
            getattr(remote.parametric["intercept"], key), getattr(local.parametric["intercept"], key)
        )


@pytest.mark.parametrize(
    "noise, dtype, masked",
    [
        ("ols", np.float32, True),
        ("ols", np.int16, True),
        ("ar1", np.int16, True),
        ("ar1+lags", np.int16, True),  # its sample read by spans of columns in this process
        ("ols", np.float32, False),
        ("ar1", np.int16, False),
    ],
)
def test_first_level_is_read_by_the_workers(client, tmp_path, monkeypatch, noise, dtype, masked):
    rng = np.random.default_rng(5)
    n = 40
    data = 1000 + 20 * rng.standard_normal((6, 5, 4, n))
    data[1, 2, 3, 7] = np.nan  # (int16: stored as a number)
    data[0] = 0.0  # background: out of the automatic mask
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(dtype)  # int16: with scale factors
    nib.save(img, tmp_path / "bold.nii")
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    mask[1:5, 1:4, :] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii")
    X = np.column_stack([np.sin(np.arange(n) / 3), np.ones(n)])
    args = (tmp_path / "bold.nii", (X, ["s", "c"]), ["s=s"])
    m = tmp_path / "mask.nii" if masked else None  # else the automatic mask, found by the workers
    local = fit_images(*args, mask=m, noise=noise)
    monkeypatch.setattr("voxfit.models.glm.load", _refuse)
    remote = fit_images(*args, mask=m, noise=noise, scheduler=client)
    npt.assert_array_equal(remote.masker.mask, local.masker.mask)
    # the automatic mask (SPM's 0.8 threshold, its globals summed from the workers') drops the background and
    # the NaN voxel (stored in int16 as a number far below the threshold)
    assert masked or local.masker.n_voxels == data[..., 0].size - 20 - 1
    npt.assert_array_equal(remote.fit.betas, local.fit.betas)
    npt.assert_array_equal(remote.fit.residual_variance, local.fit.residual_variance)
    npt.assert_array_equal(remote.contrasts["s"].t, local.contrasts["s"].t)
    assert np.isnan(remote.contrasts["s"].t).sum() == (dtype == np.float32 and masked)


def test_column_sources_read_what_load_reads(tmp_path):
    rng = np.random.default_rng(6)
    img = nib.Nifti1Image(rng.standard_normal((4, 3, 2, 7)) * 50, np.eye(4))
    img.set_data_dtype(">i2")
    nib.save(img, tmp_path / "big-endian.nii")
    np.save(tmp_path / "y.npy", rng.standard_normal((7, 30)).astype(np.float32))
    for path, index in [(tmp_path / "big-endian.nii", [1, 2, 5, 9, 23]), (tmp_path / "y.npy", None)]:
        source = open_reader(path).column_source(index)
        mask = None if index is None else np.isin(np.arange(24), index).reshape(4, 3, 2, order="F")
        data = np.asarray(load(path, mask).data) if index is not None else np.load(path)
        assert source.shape == data.shape and source.dtype == data.dtype
        npt.assert_array_equal(source[:, 1:4], data[:, 1:4])
        npt.assert_array_equal(source[:, [0, 3]], data[:, [0, 3]])
        assert source[:, [0, 3]].flags.c_contiguous  # as load's: BLAS rounds alike
    nib.save(img, tmp_path / "compressed.nii.gz")
    assert open_reader(tmp_path / "compressed.nii.gz").column_source() is None


@pytest.mark.parametrize("stored", ["<f4", ">f4", "<i2"])
def test_cifti_column_sources_read_what_load_reads(tmp_path, stored):
    """CIFTI files hold each grayordinate's series together: a column source reads a block of them as one span per
    run, the values and the order (series together) of load's; none for files nibabel scales or compresses."""
    rng = np.random.default_rng(8)
    paths = [str(p) for p in write_cifti_runs(tmp_path, rng, stored=stored)]
    data = np.asarray(load(paths, mask=np.ones(60, dtype=bool)).data)
    index = np.array([0, 3, 4, 5, 11, 40, 59])
    for source, want in [
        (open_reader(paths).column_source(), data),
        (open_reader(paths).column_source(index), data[:, index]),
        (open_reader(paths[1]).column_source(), data[17:]),
    ]:
        assert source.shape == want.shape and source.dtype == want.dtype
        npt.assert_array_equal(source[:, :], want)
        npt.assert_array_equal(source[:, 2:5], want[:, 2:5])
        npt.assert_array_equal(source[:, [0, 3]], want[:, [0, 3]])
        assert source[:, 2:5].flags.f_contiguous == data.flags.f_contiguous  # (as load's: BLAS rounds alike)
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 120, 2), 120, name="CortexLeft")
    img = nib.Cifti2Image(data[:17] * 0.37 + 0.5, header=(nib.cifti2.SeriesAxis(0, 2, 17), models))
    img.set_data_dtype(np.int16)  # nibabel picks the scale factors
    nib.save(img, tmp_path / "scaled.dtseries.nii")
    assert open_reader(str(tmp_path / "scaled.dtseries.nii")).column_source() is None
    assert open_reader(img).column_source() is None
    source = open_reader(paths).column_source()
    with open(paths[1], "r+b") as f:  # the second run cut short after the source was made: one line, naming it
        f.truncate(f.seek(0, 2) - 100)
    with pytest.raises(InputError, match="run-1.dtseries.nii: cannot read the data") as info:
        source[:, 50:60]
    assert "\n" not in str(info.value)
    Path(paths[0]).unlink()
    with pytest.raises(InputError, match="run-0.dtseries.nii: no such file"):
        source[:, :5]


@pytest.mark.parametrize("noise, masked", [("ols", False), ("ar1", True), ("ar2+lags", False)])
def test_cifti_runs_are_read_by_the_workers(client, tmp_path, monkeypatch, noise, masked):
    """Two CIFTI runs fitted by the Dask workers, each reading its block of series from the files: the numbers of
    the local fit, the automatic mask found by the workers."""
    rng = np.random.default_rng(9)
    paths = [str(p) for p in write_cifti_runs(tmp_path, rng)]
    n = 40
    X = np.column_stack([np.sin(np.arange(n) / 3), np.arange(n) < 17, np.ones(n)])
    mask = (np.arange(60) % 4 > 0) if masked else None
    args = (paths, (X, ["s", "r", "c"]), ["s=s"])
    local = fit_images(*args, mask=mask, noise=noise)
    monkeypatch.setattr("voxfit.models.glm.load", _refuse)
    remote = fit_images(*args, mask=mask, noise=noise, scheduler=client)
    npt.assert_array_equal(remote.masker.mask, local.masker.mask)
    assert masked or local.masker.n_voxels == 58
    npt.assert_array_equal(remote.fit.betas, local.fit.betas)
    npt.assert_array_equal(remote.fit.residual_variance, local.fit.residual_variance)
    npt.assert_array_equal(remote.contrasts["s"].t, local.contrasts["s"].t)


def test_cifti_over_the_cap_is_fitted_by_blocks_of_series(tmp_path, monkeypatch):
    """arma11 on a CIFTI run larger than half of --max-memory: blocks of grayordinates' series read from the file
    (before, refused), the maps of the fit in memory to float32 rounding."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    rng = np.random.default_rng(10)
    paths = [str(p) for p in write_cifti_runs(tmp_path, rng, frames=(380,), vertices=600)]  # 912 kB
    (tmp_path / "d.tsv").write_text("s\tc\n" + "".join(f"{np.sin(i / 3):.6f}\t1\n" for i in range(380)))
    args = ["fit", *paths, "--design", str(tmp_path / "d.tsv"), "--contrast", "s=s", "--noise", "arma11", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "memory")]) == 0
    assert main([*args, "--max-memory", "1M", "-o", str(tmp_path / "blocks")]) == 0
    record = (tmp_path / "blocks" / "model.json").read_text()
    assert "read_by_columns" in record
    for name in ("contrast-s_stat-t_statmap.dscalar.nii", "stat-armacoef_statmap.dscalar.nii"):
        npt.assert_allclose(
            nib.load(tmp_path / "blocks" / name).get_fdata(),
            nib.load(tmp_path / "memory" / name).get_fdata(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_vanished_input_is_a_one_line_input_error(client, tmp_path):
    np.save(tmp_path / "y.npy", np.random.default_rng(7).standard_normal((6, 100)))
    source = open_reader(tmp_path / "y.npy").column_source()
    (tmp_path / "y.npy").unlink()
    with pytest.raises(InputError, match="y.npy: no such file") as info:
        fit(np.ones((6, 1)), source, scheduler=client)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("masked", [True, False])
def test_fit_command_with_a_small_cap_is_read_by_the_workers(client, tmp_path, monkeypatch, masked):
    """Data over --max-memory with --scheduler (and --mask, or the automatic mask): no one-pass streaming and
    no read in the client."""
    rng = np.random.default_rng(7)
    n = 60  # 57.6 kB of float32 in the volume: over half of a 40K cap
    nib.save(
        nib.Nifti1Image((500 + rng.standard_normal((8, 6, 5, n))).astype(np.float32), np.eye(4)), tmp_path / "bold.nii"
    )
    mask = np.zeros((8, 6, 5), dtype=np.uint8)
    mask[1:7, 1:5, 1:4] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii")
    (tmp_path / "d.tsv").write_text("s\tc\n" + "".join(f"{np.sin(i / 3):.6f}\t1\n" for i in range(n)))
    args = [
        "fit",
        str(tmp_path / "bold.nii"),
        "--design",
        str(tmp_path / "d.tsv"),
        "--contrast",
        "s=s",
        "--noise",
        "ar1",
        "--quiet",
    ] + (["--mask", str(tmp_path / "mask.nii")] if masked else [])
    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    for name in ("voxfit.models.glm.load", "voxfit.cli._in_thread", "voxfit.models.glm._fit_streamed"):
        monkeypatch.setattr(name, _refuse)
    monkeypatch.setattr(ColumnSource, "__getitem__", _refuse)  # in this process; the workers are others
    monkeypatch.setattr(ColumnSource, "raw", _refuse)
    assert (
        main([*args, "--max-memory", "40K", "--scheduler", client.scheduler.address, "-o", str(tmp_path / "dask")]) == 0
    )
    for name in ("contrast-s_stat-t_statmap.nii.gz", "stat-arcoef_statmap.nii.gz", "stat-mean_statmap.nii.gz"):
        npt.assert_array_equal(
            np.asarray(nib.load(tmp_path / "dask" / name).dataobj),
            np.asarray(nib.load(tmp_path / "local" / name).dataobj),
        )


def test_mixed_effects_on_a_cluster_equal_local_ones(client, tmp_path, no_reserve):
    """Arrays sent a block per task, and maps in uncompressed NIfTI files read by the workers, a block each:
    the numbers of the local fit."""
    rng = np.random.default_rng(7)
    n, shape = 12, (6, 5, 4)
    V = int(np.prod(shape))
    s2 = rng.uniform(1, 10, (n, V))
    Y = 0.5 + rng.standard_normal((n, V)) * np.sqrt(s2 + 1.0)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    local = mixed_effects(X, Y, s2, {"slope": [0, 1]}, max_memory="16K")
    remote = mixed_effects(X, Y, s2, {"slope": [0, 1]}, max_memory="16K", scheduler=client)
    np.testing.assert_array_equal(remote.contrasts["slope"].t, local.contrasts["slope"].t)
    # fixed effects' Kenward-Roger terms from first-level dof per subject and voxel, cut to each task's block
    d = rng.integers(10, 100, (n, V)).astype(float)
    kw = dict(model="fixed", first_level_dof=d, max_memory="16K")
    local = mixed_effects(X, Y, s2, {"slope": [0, 1], "F": "x0; x1"}, **kw)
    remote = mixed_effects(X, Y, s2, {"slope": [0, 1], "F": "x0; x1"}, scheduler=client, **kw)
    # ... and with maps the workers read themselves, each task sent its own block's dof (not all of them)
    sources = []
    for name, values in (("effects", Y), ("variances", s2)):
        np.save(tmp_path / f"{name}.npy", values)
        sources.append(ColumnSource(NpyColumns(str(tmp_path / f"{name}.npy")), values.dtype, n, V))
    read = mixed_effects(X, *sources, {"slope": [0, 1], "F": "x0; x1"}, scheduler=client, **kw)
    for label in ("slope", "F"):
        for other in (remote, read):
            np.testing.assert_array_equal(other.contrasts[label].stat, local.contrasts[label].stat)
            np.testing.assert_array_equal(other.contrasts[label].p, local.contrasts[label].p)
    effects, variances = [], []
    for k in range(n):
        for name, values, out in (("effect", Y, effects), ("variance", s2, variances)):
            path = tmp_path / f"sub-{k + 1:02d}_{name}.nii"
            nib.save(nib.Nifti1Image(values[k].reshape(shape, order="F").astype(np.float32), np.eye(4)), path)
            out.append(path)
    model = SecondLevel(variances=variances, max_memory="64K")
    here = model.fit(effects)
    there = SecondLevel(variances=variances, max_memory="64K", scheduler=client).fit(effects)
    np.testing.assert_array_equal(there.masker.mask, here.masker.mask)
    np.testing.assert_allclose(there.parametric["intercept"].t, here.parametric["intercept"].t, rtol=1e-12)


@pytest.mark.parametrize("noise, masked", [("ols", True), ("ar1", True), ("ols", False)])
def test_rft_smoothness_summed_by_the_workers_equals_the_local_one(client, tmp_path, monkeypatch, noise, masked):
    """``--inference rft`` on a cluster: the neighbour sums are taken by the workers from their own columns (the
    client reads no data), and the smoothness, resels and resels-per-voxel map equal the local run's."""
    import json

    from voxfit.engine import smoothness
    from voxfit.inference.rft_fit import check_rft_options

    rng = np.random.default_rng(11)
    n, shape = 30, (9, 8, 7)
    e = rng.standard_normal(shape + (n,))
    for axis in range(3):  # spatially smooth noise
        e = e + np.roll(e, 1, axis=axis)
    data = 100 + e
    data[0] = 0.0  # background: out of the automatic mask
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "bold.nii")
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:8, 1:7, 1:6] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "mask.nii")
    X = np.column_stack([np.sin(np.arange(n) / 3), np.ones(n)])
    kwargs = dict(mask=tmp_path / "mask.nii" if masked else None, noise=noise, rft=check_rft_options())
    fit_images(tmp_path / "bold.nii", (X, ["s", "c"]), ["s=s"], out_dir=tmp_path / "local", **kwargs)
    monkeypatch.setattr("voxfit.models.glm.load", _refuse)
    tasks = []  # the sums' Dask tasks (the client's threads only warm the compiled kernels up on a tiny grid)
    run_tasks = smoothness.run_tasks
    monkeypatch.setattr(smoothness, "run_tasks", lambda *a, **k: tasks.append(a[1]) or run_tasks(*a, **k))
    fit_images(tmp_path / "bold.nii", (X, ["s", "c"]), ["s=s"], out_dir=tmp_path / "dask", scheduler=client, **kwargs)
    assert [t.__name__ for t in tasks] == ["_slab"]
    local, remote = (json.loads((tmp_path / k / "model.json").read_text())["inference"] for k in ("local", "dask"))
    for key in ("fwhm_voxels", "fwhm_mm", "resels"):
        npt.assert_allclose(remote["smoothness"][key], local["smoothness"][key], rtol=1e-12, err_msg=key)
    a, b = (nib.load(tmp_path / k / "stat-rpv_statmap.nii.gz").get_fdata() for k in ("local", "dask"))
    npt.assert_allclose(b, a, rtol=1e-6, equal_nan=True)


def test_group_rft_on_a_cluster_equals_the_local_one(client, tmp_path):
    """``voxfit group --inference rft`` on 3-D files with a scheduler (the group fit's blocks on the workers; RFT
    holds the maps in memory, and the neighbour sums of a group's few maps are taken here): the smoothness,
    resels and the results table equal the local run's."""
    import json

    rng = np.random.default_rng(12)
    paths = []
    for i in range(10):
        e = rng.standard_normal((10, 9, 8))
        for axis in range(3):
            e = e + np.roll(e, 1, axis=axis)
        paths.append(tmp_path / f"sub-{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image((e + 0.8).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), paths[-1])
    args = ["group", *map(str, paths), "--one-sample", "--inference", "rft", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    assert main([*args, "--scheduler", client.scheduler.address, "-o", str(tmp_path / "dask")]) == 0
    local, remote = (json.loads((tmp_path / k / "model.json").read_text()) for k in ("local", "dask"))
    for key in ("fwhm_voxels", "fwhm_mm", "resels"):
        a, b = (m["inference"]["smoothness"][key] for m in (local, remote))
        npt.assert_allclose(b, a, rtol=1e-12, err_msg=key)
    tables = sorted(p.name for p in (tmp_path / "local").glob("*.tsv"))
    assert tables and tables == sorted(p.name for p in (tmp_path / "dask").glob("*.tsv"))
    for name in tables:
        assert (tmp_path / "dask" / name).read_text() == (tmp_path / "local" / name).read_text(), name


def _slow(shared, seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_an_interrupted_run_cancels_its_tasks_on_the_users_client(client, monkeypatch):
    """Ctrl-C while voxfit waits for its tasks on the user's own Client (a notebook's): the tasks went on running
    on the cluster, their futures held by the traceback (an address's client is closed, which cancels them).
    They are cancelled."""
    import voxfit._dask as vd

    def interrupted(c, future):
        raise KeyboardInterrupt

    monkeypatch.setattr(vd, "_result", interrupted)
    before = set(client.futures)
    with pytest.raises(KeyboardInterrupt):
        vd.run_tasks(client, _slow, None, [(30,), (30,), (30,)])
    left = [key for key in client.futures if key not in before]
    assert not left  # (a cancelled future is released by the client: none of the run's is held)


def test_column_sources_of_relative_paths_read_the_clients_files_from_any_folder(tmp_path, monkeypatch):
    """A Dask worker opens each input where the column source says. Made from a path as the user typed it
    (``voxfit fit sub/data.npy --scheduler ...``), it was opened relative to each worker's own folder: a file of
    that name there, another array of the same shape, was fitted with exit 0 (a tester's: betas 0.002 where the
    client's file gives 1). Sources now name the files the client opened, whatever folder reads them."""
    import h5py
    import zarr

    rng = np.random.default_rng(3)
    client, worker = tmp_path / "client", tmp_path / "worker"
    for folder, offset in ((client, 0.0), (worker, 1000.0)):  # (the worker's: the same names, other values)
        (folder / "sub").mkdir(parents=True)
        data = (offset + rng.standard_normal((12, 30))).astype(np.float32)
        np.save(folder / "sub" / "data.npy", data)
        np.save(folder / "sub" / "fortran.npy", np.asfortranarray(data))
        nib.save(nib.Nifti1Image(data.T.reshape(5, 6, 1, 12), np.eye(4)), folder / "sub" / "bold.nii")
        for k in range(12):
            nib.save(nib.Nifti1Image(data[k].reshape(5, 6, 1), np.eye(4)), folder / "sub" / f"scan{k:02d}.nii")
        zarr.save_array(str(folder / "sub" / "data.zarr"), data)
        with h5py.File(folder / "sub" / "data.h5", "w") as f:
            f["y"] = data
        write_cifti_runs(folder / "sub", np.random.default_rng(int(offset)), frames=(12,))
    monkeypatch.chdir(client)
    inputs = ["sub/data.npy", "sub/fortran.npy", "sub/bold.nii", [f"sub/scan{k:02d}.nii" for k in range(12)]]
    inputs += ["sub/data.zarr", "sub/data.h5", "sub/run-0.dtseries.nii"]
    sources = []
    for path in inputs:
        reader = open_reader(path)
        sources.append((reader.column_source(), np.concatenate([slab.copy() for _, slab in reader.iter_scans()])))
    monkeypatch.chdir(worker)
    for path, (source, expected) in zip(inputs, sources):
        assert source is not None, path
        npt.assert_array_equal(np.asarray(source[:, :]), expected, err_msg=str(path))
