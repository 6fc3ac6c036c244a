"""Dask: the voxel blocks and the shuffles on a LocalCluster give the local run's numbers exactly."""

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit, fit_ar
from voxfit.cli import main
from voxfit.exceptions import InputError
from voxfit.inference import permutation_test

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
        npt.assert_array_equal(np.asarray(nib.load(tmp_path / "dask" / name).dataobj),
                               np.asarray(nib.load(tmp_path / "local" / name).dataobj))  # fmt: skip
    assert main([*args, "--scheduler", "nosuch://host", "-o", str(tmp_path / "nowhere")]) == 2


def test_unreachable_scheduler_is_an_input_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        fit(np.ones((5, 1)), np.ones((5, 3)), scheduler="nosuch://host")
