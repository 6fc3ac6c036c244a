"""Every bad input gets one clear sentence naming the argument, what was given and what was expected."""

import numpy as np
import pandas as pd
import pytest

import voxfit
from voxfit.engine import parse_memory, plan_blocks
from voxfit.engine.memory import DEFAULT_BLOCK_VOXELS, DEFAULT_TILE_BYTES, NUMPY_TILE_BYTES
from voxfit.exceptions import DataTypeError, DegreesOfFreedomWarning, InputError, VoxfitError

X = np.column_stack([np.arange(6.0), np.ones(6)])
Y = np.arange(18.0).reshape(6, 3) ** 1.5


@pytest.mark.parametrize(
    "x,y,kwargs,error,message",
    [
        (X, Y[:5], {}, InputError, r"`Y` has 5 rows \(scans\) but the design `X` has 6"),
        (X, Y.T, {}, InputError, r"`Y` has 3 rows .* Did you mean Y.T\?"),
        (X, Y[:, :0], {}, InputError, r"`Y` has no voxels"),
        (X, Y[:, :, None], {}, InputError, r"`Y` must be 2-D \(n_scans, n_voxels\); got shape \(6, 3, 1\)"),
        (X, Y.astype(str), {}, DataTypeError, r"`Y` must be numeric .* got dtype <U"),
        (X, Y.astype(complex), {}, DataTypeError, r"`Y` must be numeric"),
        (X, [["a"] * 3] * 6, {}, DataTypeError, r"`Y` must be numeric"),
        (X[:, 0], Y, {}, InputError, r"`X` must be 2-D .* got shape \(6,\)\. For a single regressor pass X\[:, None\]"),
        (np.zeros((0, 2)), Y, {}, InputError, r"`X` must have at least one scan and one column"),
        (np.zeros((6, 0)), Y, {}, InputError, r"`X` must have at least one scan and one column"),
        (np.zeros((6, 2)), Y, {}, InputError, r"`X` has no non-zero column"),
        (np.where(X == 3, np.nan, X), Y, {}, InputError, r"`X` contains NaN or infinite values in column\(s\) 'x0'"),
        (X.astype(object), Y, {}, DataTypeError, r"`X` must be a numeric array; got dtype object"),
        (pd.DataFrame({"a": list("abcdef"), "b": 1.0}), Y, {}, DataTypeError, r"design column\(s\) 'a' are not"),
        (X, Y, {"names": ["a"]}, InputError, r"`names` has 1 entries but `X` has 2 columns"),
        (X, Y, {"names": ["a", "a"]}, InputError, r"names must be unique; 'a' appear"),
        (
            X,
            Y,
            {"max_memory": "lots"},
            InputError,
            r"`max_memory` must be a size like '64K', '500M' or '2G' \(units K, M, G, T\); got 'lots'",
        ),
        (X, Y, {"max_memory": "-5M"}, InputError, r"`max_memory` must be a size"),
        (X, Y, {"max_memory": 0}, InputError, r"`max_memory` must be a positive size; got 0"),
        (X, Y, {"max_memory": True}, InputError, r"`max_memory` must be a size"),
        (
            X,
            Y,
            {"max_memory": "10"},
            InputError,
            r"`max_memory`='10' is too small: one voxel of 6 scans needs \d+ bytes",
        ),
        (X, Y, {"block_size": 0}, InputError, r"`block_size` must be a positive number of voxels; got 0"),
        (X, Y, {"block_size": 2.5}, InputError, r"`block_size` must be a positive number"),
        (X, Y, {"block_size": 4, "max_memory": "1M"}, InputError, r"either `max_memory` or `block_size`, not both"),
        (X, Y, {"n_jobs": 0}, InputError, r"`n_jobs` must be a number of threads from 1 to 1024; got 0"),
        (X, Y, {"n_jobs": 10**9}, InputError, r"`n_jobs` must be a number of threads from 1 to 1024; got 1000000000"),
        (X, Y, {"progress": "no"}, InputError, r"`progress` must be True, False or None; got 'no'"),
        (X, Y, {"compiled": "no"}, InputError, r"`compiled` must be True, False or None; got 'no'"),
    ],
)
def test_bad_inputs(x, y, kwargs, error, message):
    with pytest.raises(error, match=message) as err:
        voxfit.fit(x, y, **kwargs)
    assert isinstance(err.value, VoxfitError)
    assert "\n" not in str(err.value) and str(err.value).endswith((".", "?"))


def test_errors_subclass_the_builtins_callers_catch():
    with pytest.raises(ValueError):
        voxfit.fit(X, Y[:5])
    with pytest.raises(TypeError):
        voxfit.fit(X, Y.astype(str))


def test_no_residual_dof_warns_and_gives_nan_statistics():
    with pytest.warns(DegreesOfFreedomWarning, match="no residual degrees of freedom"):
        fit = voxfit.fit(X[:2], Y[:2])
    assert fit.dof == 0
    assert np.isnan(fit.residual_variance).all()
    assert np.isnan(fit.contrast([1, 0]).t).all()
    assert np.isfinite(fit.betas).all()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("64K", 65536),
        ("500M", 500 * 2**20),
        ("2G", 2 * 2**30),
        ("1.5GB", int(1.5 * 2**30)),
        ("512MiB", 512 * 2**20),
        ("2g", 2 * 2**30),
        (" 3 T ", 3 * 2**40),
        ("4096", 4096),
        (10**6, 10**6),
    ],
)
def test_memory_sizes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("tile_bytes", [DEFAULT_TILE_BYTES, NUMPY_TILE_BYTES])
def test_plans_respect_the_budget(tile_bytes):
    for budget in (2**16, 2**20, 2**26):
        for workers in (1, 2, 4):
            block, tile = plan_blocks(300, 15, 4, budget, workers=workers, tile_bytes=tile_bytes)
            assert 1 <= tile <= block
            assert tile * 300 * 4 <= tile_bytes
            per_worker = tile * 300 * (4 + 16) + block * ((15 + 2) * 4 + 8 * (3 * 15 + 12))
            assert per_worker * workers <= budget
    assert plan_blocks(300, 15, 4, block_size=5, tile_bytes=tile_bytes) == (5, 5)
    # a generous budget gives the whole tile asked for, and never a tile over a block: with few scans, blocks of
    # the default size for the threads to share
    assert plan_blocks(300, 15, 4, 2**30, tile_bytes=tile_bytes)[1] == tile_bytes // (300 * 4)
    assert plan_blocks(8, 3, 4, 2**30, workers=2, tile_bytes=tile_bytes) == (DEFAULT_BLOCK_VOXELS,) * 2


def test_numpys_pass_takes_its_own_tiles(monkeypatch, rng):
    """``voxfit.fit`` gives numpy's pass tiles of NUMPY_TILE_BYTES and the compiled pass tiles of DEFAULT_TILE_BYTES
    (of data in the working dtype), the same numbers either way to rounding."""
    import importlib

    engine_fit = importlib.import_module("voxfit.engine.fit")  # (the module: voxfit.engine.fit is also a function)

    tiles, original = [], engine_fit.BlockFitter

    def spy(design, dtype, tile, compiled=True):
        tiles.append((tile, compiled))
        return original(design, dtype, tile, compiled)

    monkeypatch.setattr(engine_fit, "BlockFitter", spy)
    X = np.column_stack([rng.standard_normal(300), np.ones(300)])
    Y = rng.standard_normal((300, 5_000)).astype(np.float32)
    fits = [voxfit.fit(X, Y, compiled=compiled, n_jobs=1) for compiled in (False, True)]
    assert tiles == [(NUMPY_TILE_BYTES // (300 * 4), False), (DEFAULT_TILE_BYTES // (300 * 4), True)]
    np.testing.assert_allclose(fits[0].betas, fits[1].betas, rtol=1e-5, atol=1e-6)
