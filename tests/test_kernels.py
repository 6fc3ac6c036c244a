"""The compiled (numba) and numpy passes over the data give the same numbers; when each is chosen."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit.core import _kernels
from voxfit.core.distributions import _t_to_z_table

from .conftest import WARMUP
from .helpers import assert_betas_close, fmri_like


@pytest.mark.parametrize("layout", ["scans", "series"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_compiled_and_numpy_passes_agree(rng, dtype, layout):
    """Data held scan by scan (C order) or series by series (F order, as CIFTI runs are read: numpy's pass then
    shifts each series into a tile held the same way)."""
    X, Y = fmri_like(rng, n=83, p=5, V=700, dtype=np.float64)
    Y = np.round(Y).astype(dtype)
    Y[:, 5] = Y[0, 5]  # a constant voxel
    if dtype != np.int16:
        Y[7, 9] = np.nan
    if layout == "series":
        Y = np.asfortranarray(Y)
    a = voxfit.fit(X, Y, compiled=True, block_size=250)
    b = voxfit.fit(X, Y, compiled=False, block_size=250)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert_betas_close(a.betas, b.betas, b.stderr, rtol)
    npt.assert_allclose(a.residual_variance, b.residual_variance, rtol=rtol)
    npt.assert_array_equal(a.valid, b.valid)


@pytest.mark.parametrize("n", [1, 15, 16, 83, 1200])
def test_numpy_pass_into_a_series_tile_equals_the_scan_tile(rng, n):
    """The same offsets and shifted values whichever way the tile is held; the sums of squares (the scan tile's
    in float32 groups of 16 scans, the series tile's pairwise along each series) match float64 sums."""
    Y = np.asfortranarray((1000 + 10 * rng.standard_normal((n, 300))).astype(np.float32))
    Y[n // 2, 47] = np.nan
    rows = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(np.intp))
    start, stop = 40, 250
    out = {}
    for layout in ("scans", "series"):
        width = stop - start
        buf = np.empty((n, width), np.float32) if layout == "scans" else np.empty((width, n), np.float32).T
        offset, ssq = np.empty(stop - start, np.float32), np.empty(stop - start)
        _kernels.shift_and_square_numpy(Y, start, stop, rows, buf, offset, ssq)
        out[layout] = buf, offset, ssq
    npt.assert_array_equal(out["series"][0], out["scans"][0])
    npt.assert_array_equal(out["series"][1], out["scans"][1])
    shifted = out["scans"][0].astype(np.float64)
    for layout in ("scans", "series"):
        npt.assert_allclose(out[layout][2], (shifted**2).sum(axis=0), rtol=16 * np.finfo(np.float32).eps)
        assert np.isnan(out[layout][2][47 - start])


def test_numpy_pass_takes_series_tiles_for_data_held_as_series(rng, monkeypatch):
    """BlockFitter hands numpy's pass a tile held as the data are (F order for F-ordered data of more than one
    voxel per tile), and a scan-ordered tile otherwise."""
    from voxfit.core import ols

    seen = []
    real = ols.shift_and_square_numpy
    monkeypatch.setattr(ols, "shift_and_square_numpy", lambda *a: seen.append(a[4].flags.c_contiguous) or real(*a))
    X, Y = fmri_like(rng, n=40, p=3, V=90, dtype=np.float32)
    voxfit.fit(X, np.asfortranarray(Y), compiled=False, block_size=64)
    assert len(seen) == 2 and not any(seen)  # (blocks of 64 and 26 voxels)
    seen.clear()
    voxfit.fit(X, Y, compiled=False, block_size=64)
    assert seen and all(seen)


def test_numpy_and_compiled_t_to_z_agree(rng):
    t = np.concatenate([rng.standard_normal(1000) * 5, [0.0, np.nan, 1e5, -1e6]])
    inv_h, coef = _t_to_z_table(37.0)
    z1, z2 = np.empty_like(t), np.empty_like(t)
    n1 = _kernels.hermite_z(t, inv_h, coef, z1)
    n2 = _kernels.hermite_z_numpy(t, inv_h, coef, z2)
    assert n1 == n2 == 2
    npt.assert_allclose(z1, z2, rtol=1e-14, equal_nan=True)


def test_automatic_choice():
    assert _kernels.use_compiled(10, True) and not _kernels.use_compiled(10**12, False)
    assert _kernels.use_compiled(_kernels.AUTO_COMPILE_ELEMENTS, None)
    voxfit.core.warm_up(10)
    assert _kernels.kernels_loaded() and _kernels.use_compiled(10, None)


def test_kernels_load_in_the_background():
    from voxfit.core._ar_kernels import ar_kernels_loaded

    _kernels.compile_in_background(ar=True)
    for thread in set(_kernels._BACKGROUND.values()):
        thread.join(120)
    assert _kernels.kernels_loaded() and ar_kernels_loaded()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("layout", ["scans", "series"])
def test_products_in_columns_equal_products_of_whole_tiles(rng, monkeypatch, layout, compiled):
    """BlockFitter multiplies a tile in columns where BLAS is faster so: the same fit to rounding, whatever the
    columns' width against the tile's (here 7 and 32 voxels in tiles and blocks of 120, and the whole tile)."""
    from voxfit.core import ols

    X, Y = fmri_like(rng, n=60, p=4, V=500, dtype=np.float32)
    Y[3, 11] = np.nan
    if layout == "series":
        Y = np.asfortranarray(Y)
    fits = []
    for width in (None, 7, 32):
        monkeypatch.setattr(ols, "_product_columns", lambda op, tile, series, w=width: w or tile)
        fits.append(voxfit.fit(X, Y, compiled=compiled, block_size=120, n_jobs=1))
    for other in fits[1:]:
        assert_betas_close(other.betas, fits[0].betas, fits[0].stderr, 1e-5)
        npt.assert_allclose(other.residual_variance, fits[0].residual_variance, rtol=1e-5)
        npt.assert_array_equal(other.valid, fits[0].valid)


def test_product_columns_follow_blas(monkeypatch):
    """Columns as wide as OpenBLAS multiplies unpacked (M N K <= 100^3; for a tile held series by series, its
    transposed operand, M N <= 1200 and K >= 32), in multiples of 16, at least 32, tiles held scan by scan only up
    to 512 scans; otherwise, and in float64, the whole tile."""
    from voxfit.core import ols

    def op(m, n, dtype=np.float32):
        return np.zeros((m, n), dtype)

    monkeypatch.setattr(ols, "unpacked_product_limits", lambda: None)
    assert ols._product_columns(op(15, 300), 436, False) == 436
    monkeypatch.setattr(ols, "unpacked_product_limits", lambda: (1_000_000, 1200))
    assert ols._product_columns(op(15, 300), 436, False) == 208  # 222 voxels of 15 x 300
    assert ols._product_columns(op(15, 300), 436, True) == 80  # 1200 / 15
    assert ols._product_columns(op(25, 1200), 109, True) == 32
    assert ols._product_columns(op(30, 1200), 109, True) == 109  # 27 voxels: narrower than 32
    assert ols._product_columns(op(15, 512), 436, False) == 128
    assert ols._product_columns(op(15, 513), 436, False) == 436  # more scans: packed, its rounding
    assert ols._product_columns(op(2, 31), 436, True) == 436  # a transposed product of fewer than 32 scans
    assert ols._product_columns(op(15, 300, np.float64), 218, False) == 218


def test_unpacked_product_limits(monkeypatch):
    from types import SimpleNamespace

    from voxfit import _threads

    def pools(*libs):
        monkeypatch.setattr(
            _threads, "_blas_pools", lambda: [SimpleNamespace(internal_api=a, architecture=c) for a, c in libs]
        )

    pools(("openblas", "SkylakeX"), ("openblas", "Cooperlake"))
    assert _threads.unpacked_product_limits() == (1_000_000, 1200)
    for libs in ([("openblas", "Haswell")], [("mkl", None)], [("openblas", "SkylakeX"), ("mkl", None)], []):
        pools(*libs)
        assert _threads.unpacked_product_limits() is None


_CACHE_MISSES = """
import gc, sys
sys.path.insert(0, sys.argv[1])
import numba_warmup
for part in numba_warmup.PARTS.values():
    part()
from numba.core.dispatcher import Dispatcher
print(sorted({d.py_func.__qualname__ for d in gc.get_objects() if isinstance(d, Dispatcher) and d.stats.cache_misses}))
"""


def test_every_kernel_compiled_in_one_process_is_loaded_from_the_cache_by_the_next(tmp_path):
    """numba's disk cache keys a kernel by its closure's contents too: the probe for a second REML peak called a
    kernel held in its closure, whose pickle differs in every process, so every process compiled it again (4 s
    before a mixed fit's first block, and one more cache file each time). Every kernel the suite's warm-up calls
    (``numba_warmup.py``, all its parts), called in a second process, is loaded, none compiled."""
    command = [sys.executable, "-c", _CACHE_MISSES, str(Path(__file__).parent)]
    # a parallel run's warm-up compiled them in processes of its own; a serial run compiles them here first
    for _ in range(1 if os.environ.get(WARMUP) else 2):
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"compiled again, not loaded from the cache: {done.stdout.strip()}"
