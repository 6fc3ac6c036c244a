"""Reference data and generators shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


def load_nist(name: str):
    """Design, response and certified values of one NIST StRD linear-regression dataset."""
    d = json.loads((DATA / f"nist_{name}.json").read_text())
    y = np.array(d["y"], dtype=float)
    x = np.array(d["x"], dtype=float)
    if d.get("x_columns"):
        X = np.column_stack([np.ones(len(y)), x])
    else:
        first = 0 if d["intercept"] else 1
        X = np.column_stack([x**k for k in range(first, d["polynomial_degree"] + 1)])
    return X, y, d["certified"]


def fmri_like(rng, n=200, p=6, V=500, mean=1000.0, noise=10.0, dtype=np.float64):
    """A design with an intercept and data with a large mean level, as BOLD data have."""
    X = np.column_stack([rng.standard_normal((n, p - 1)), np.ones(n)])
    beta = rng.standard_normal((p, V))
    beta[-1] = mean
    Y = X @ beta + noise * rng.standard_normal((n, V))
    return X, Y.astype(dtype)


def assert_betas_close(actual, desired, stderr, rtol):
    """|actual - desired| <= rtol * (|desired| + stderr), elementwise; NaN where and only where desired is.

    Betas near zero are compared at the scale of their standard error: relative error alone is meaningless
    for an estimate of 1e-4 +- 1.
    """
    actual, desired, stderr = np.asarray(actual), np.asarray(desired), np.asarray(stderr)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired))
    ok = np.isnan(desired) | (np.abs(actual - desired) <= rtol * (np.abs(desired) + stderr))
    if not ok.all():
        worst = np.nanmax(np.abs(actual - desired) / (np.abs(desired) + stderr))
        raise AssertionError(f"{np.count_nonzero(~ok)} betas differ; worst error {worst:.3g} of |beta| + se > {rtol}")


def assert_smoothness_of_residuals(out: Path, Y, X, mask, affine) -> None:
    """model.json's smoothness in `out` (FWHM and resels) equals SPM's from the OLS residuals of the data `Y`
    (n, V) at the voxels of the 3-D `mask`, on the design `X` (full rank), to 1e-10."""
    import numpy.testing as npt

    from voxfit.inference.rft import estimate_smoothness, gradient_products

    Y = np.asarray(Y, dtype=np.float64)
    E = Y - X @ np.linalg.lstsq(X, Y, rcond=None)[0]
    voxel_size = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    n, p = X.shape
    want = estimate_smoothness(gradient_products(E, mask), mask, voxel_size, n=n, dof=n - p)
    got = json.loads((Path(out) / "model.json").read_text())["inference"]["smoothness"]
    npt.assert_allclose(got["fwhm_voxels"], want.fwhm, rtol=1e-10)
    npt.assert_allclose(got["resels"], want.resels, rtol=1e-10)


def reseal(folder: Path, name: str = "model.json", **changes) -> None:
    """Rewrite a voxfit output folder's record as if the fit itself had written the folder as it is now: `changes`
    to its top-level keys, the BLAKE3 digest of each file its ``outputs`` list (written by the ``blake3`` package,
    not voxfit's code) and the digest of its content (``record_blake3``, as model.schema.json defines it). For tests
    of a report's own checks on folders a fit could write (a map of no finite value, a record without a mesh)."""
    import blake3

    path = Path(folder) / name
    record = {k: v for k, v in json.loads(path.read_text()).items() if k != "record_blake3"} | changes
    record["outputs"] = {
        n: blake3.blake3((path.parent / n).read_bytes()).hexdigest()
        for n in record.get("outputs", {})
        if (path.parent / n).is_file()
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text(json.dumps(record | {"record_blake3": blake3.blake3(text.encode()).hexdigest()}))
