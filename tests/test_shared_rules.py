"""Rules written once and used everywhere: the float64 refit decision of OLS from sums, the check of a scalar
argument, and the scale factors of stored values."""

import numbers

import numpy as np
import numpy.testing as npt
import pytest

from voxfit._checks import check_scalar
from voxfit.core.ols import REFIT_RATIO, REFIT_RATIO_DEVICE, needs_refit
from voxfit.exceptions import InputError
from voxfit.io import ScaledArray, apply_scale


def test_needs_refit_compares_the_rss_with_the_sum_it_was_subtracted_from():
    ssq = np.full(5, 1e5)
    rss = np.array([1.0, 0.99, 2.0, np.nan, 1e5])
    npt.assert_array_equal(needs_refit(rss, ssq), [True, True, False, False, False])  # float64: ratio 1e5
    npt.assert_array_equal(needs_refit(np.array([np.nan]), np.array([np.nan])), [False])
    ssq8 = np.full(3, 8.0)
    npt.assert_array_equal(needs_refit(np.array([1.0, 1.01, 0.5]), ssq8, np.float32), [True, False, True])
    npt.assert_array_equal(needs_refit(np.array([1.0, 1.01]), np.full(2, 1e4), on_device=True), [True, False])
    assert REFIT_RATIO == {np.dtype(np.float32): 8.0, np.dtype(np.float64): 1e5} and REFIT_RATIO_DEVICE == 1e4


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, {}, "`x` must be a positive integer; got 0."),
        (True, {}, "`x` must be a positive integer; got True."),
        (2.0, {}, "`x` must be a positive integer; got 2.0."),
        ("3", {}, "`x` must be a positive integer; got '3'."),
        (-1, {"min_val": 0}, "`x` must be a non-negative integer; got -1."),
        (0.0, {"target_type": numbers.Real, "min_val": 0, "include_boundaries": "right"}, "a positive number"),
        (np.inf, {"target_type": numbers.Real, "min_val": None}, "`x` must be a number; got inf."),
        (np.nan, {"target_type": numbers.Real, "min_val": 0}, "a non-negative number; got nan."),
        (1.0, {"target_type": numbers.Real, "min_val": 0, "max_val": 1, "include_boundaries": "left"}, ">= 0 and < 1"),
        (5, {"max_val": 4}, "`x` must be an integer >= 1 and <= 4; got 5."),
        (0, {"description": "a positive number of threads"}, "`x` must be a positive number of threads; got 0."),
    ],
)
def test_check_scalar_refuses_with_one_message(value, kwargs, message):
    kwargs = {"min_val": 1, **kwargs}
    with pytest.raises(InputError) as info:
        check_scalar(value, "`x`", **kwargs)
    assert message in str(info.value)


def test_check_scalar_returns_what_it_accepts():
    assert check_scalar(np.int64(3), "`x`", min_val=1) == 3
    assert check_scalar(10**400, "`x`", min_val=1) == 10**400  # integers of any size
    assert check_scalar(0.5, "`x`", numbers.Real, min_val=0, max_val=1, include_boundaries="neither") == 0.5
    assert check_scalar(1, "`x`", min_val=1, max_val=1) == 1


@pytest.mark.parametrize(
    "raw_dtype, working", [(np.int16, np.float32), (np.int32, np.float64), (np.float32, np.float32)]
)
def test_scale_factors_are_applied_one_way(raw_dtype, working):
    raw = np.arange(-6, 6, dtype=raw_dtype).reshape(3, 4)
    values = apply_scale(raw, (0.1, 3.3))
    assert values.dtype == working
    npt.assert_array_equal(values, (raw * 0.1 + 3.3).astype(working))
    npt.assert_array_equal(ScaledArray(raw, 0.1, 3.3)[:, 1:3], values[:, 1:3])
    assert apply_scale(raw, None) is raw
    assert apply_scale(raw, (1.0, 0.0), np.float32).dtype == np.float32
