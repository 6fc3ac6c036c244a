"""p-values and z-scores against high-precision references (mpmath, 60 digits)."""

import math

import mpmath as mp
import numpy as np
import numpy.testing as npt
import pytest

from voxfit.core import f_to_z, t_logsf, t_to_z, z_to_logp, z_to_p
from voxfit.core.distributions import _t_to_z_table

mp.mp.dps = 60
HALF = mp.mpf(1) / 2


@pytest.fixture(autouse=True)
def _sixty_digits():
    """Every reference at 60 digits, whatever another module's test left mpmath's (global) precision at."""
    with mp.workdps(60):
        yield


def ref_t_tail(t, dof):
    """P(T > |t|) at 60 digits, from whichever incomplete-beta form converges."""
    t, dof = mp.mpf(abs(t)), mp.mpf(dof)
    x = dof / (dof + t * t)
    if x < 0.5:
        return mp.betainc(dof / 2, HALF, 0, x, regularized=True) / 2
    with mp.workdps(800):  # 1/2 - I/2 cancels: enough digits for tails down to 1e-700
        return +(HALF - mp.betainc(HALF, dof / 2, 0, 1 - x, regularized=True) / 2)


def ref_z_from_log_tail(log_tail):
    """z > 0 with log P(Z > z) = log_tail."""
    f = lambda z: mp.log(mp.erfc(z / mp.sqrt(2)) / 2) - log_tail  # noqa: E731
    start = mp.sqrt(-2 * log_tail) if log_tail < -1 else mp.mpf("0.5")
    return mp.findroot(f, start)


def ref_t_z(t, dof):
    tail = ref_t_tail(t, dof)
    if tail == HALF:
        return 0.0
    z = ref_z_from_log_tail(mp.log(tail)) if tail < 0.25 else -mp.sqrt(2) * mp.erfinv(2 * tail - 1)
    return float(z if t > 0 else -z)


DOFS = [1, 2, 3, 7, 30, 100, 285, 1000, 1e5]
TS = [1e-8, 1e-3, 0.2, 1.0, 1.96, 4.5, 12.0, 40.0, 333.0, 1e3, 9e3, 2e4, 1e7]


@pytest.mark.parametrize("dof", DOFS)
def test_t_to_z_relative_error_below_1e12(dof):
    t = np.array(TS + [-x for x in TS])
    z = t_to_z(t, dof)
    ref = np.array([ref_t_z(x, dof) for x in t])
    npt.assert_allclose(z, ref, rtol=1e-12, atol=0)


def test_t_40_with_100_dof():
    """The issue's example: a finite, accurate p about 1e-63."""
    t, dof = np.array([40.0]), 100
    ref_p = float(ref_t_tail(40.0, dof))
    assert 1e-64 < ref_p < 1e-62
    z = t_to_z(t, dof)
    npt.assert_allclose(z_to_p(z), ref_p, rtol=1e-9)
    npt.assert_allclose(z_to_logp(z), -math.log10(ref_p), rtol=1e-12)
    npt.assert_allclose(t_logsf(t, dof), float(mp.log(ref_t_tail(40.0, dof))), rtol=1e-13)


def test_extreme_t_gives_finite_monotonic_z_and_logp():
    t = np.concatenate([-np.logspace(300, -3, 400), [0.0], np.logspace(-3, 300, 400)])
    for dof in (1, 10, 100, 1e4):
        z = t_to_z(t, dof)
        assert np.isfinite(z).all()
        assert np.all(np.diff(z) > 0)
        logp = z_to_logp(z)
        assert np.isfinite(logp).all() and np.all(np.diff(logp) >= 0)
    # p underflows to 0 for t = 1e5 with 100 dof (p ~ 1e-450), but log p does not
    assert z_to_p(t_to_z(np.array([1e5]), 100))[0] == 0.0
    npt.assert_allclose(t_logsf(np.array([1e5]), 100), float(mp.log(ref_t_tail(1e5, 100))), rtol=1e-13)
    npt.assert_allclose(z_to_logp(t_to_z(np.array([1e5]), 100)), float(-mp.log10(ref_t_tail(1e5, 100))), rtol=1e-12)


def test_negative_tail_is_accurate():
    """p near 1 for very negative t: z from the lower tail, so it does not saturate at -8."""
    z = t_to_z(np.array([-40.0]), 100)
    assert z[0] < -16
    npt.assert_allclose(z, -t_to_z(np.array([40.0]), 100), rtol=0, atol=0)
    npt.assert_allclose(t_logsf(np.array([-40.0]), 100), math.log1p(-float(ref_t_tail(40.0, 100))), rtol=1e-15)


def test_table_edge_is_continuous():
    """Where the tabulated interpolant hands over to the exact computation, z is continuous and increasing."""
    for dof in (3, 300):
        inv_h, coef = _t_to_z_table(float(dof))
        edge = math.expm1(coef.shape[0] / inv_h)
        t = edge * np.array([1 - 1e-6, 1 - 1e-9, 1 + 1e-9, 1 + 1e-6])
        z = t_to_z(t, dof)
        assert np.all(np.diff(z) >= 0)
        npt.assert_allclose(z, [ref_t_z(x, dof) for x in t], rtol=1e-12)


def test_nan_and_infinite_inputs():
    z = t_to_z(np.array([np.nan, np.inf, -np.inf]), 10)
    assert np.isnan(z[0]) and z[1] == np.inf and z[2] == -np.inf


def test_infinite_dof_is_the_normal():
    t = np.linspace(-5, 5, 11)
    npt.assert_array_equal(t_to_z(t, np.inf), t)
    t = np.array([-np.inf, -50.0, -1.0, 0.0, 2.0, 50.0, 1e5, np.inf])  # a dof per value, some infinite
    dof = np.array([np.inf, np.inf, 10.0, np.inf, np.inf, np.inf, np.inf, 3.0])
    z = t_to_z(t, dof)
    infinite = np.isinf(dof)
    npt.assert_array_equal(z[infinite], t[infinite])
    npt.assert_allclose(z[~infinite], t_to_z(t[~infinite], dof[~infinite]), rtol=1e-15)


@pytest.mark.parametrize("df1,df2", [(1, 10), (2, 30), (5, 285), (20, 3)])
def test_f_to_z_both_tails(df1, df2):
    F = np.array([1e-6, 0.05, 0.5, 1.0, 3.0, 20.0, 500.0, 1e5])
    z = f_to_z(F, df1, df2)
    for f_val, z_val in zip(F, z):
        x = mp.mpf(df2) / (df2 + df1 * mp.mpf(f_val))
        sf = mp.betainc(mp.mpf(df2) / 2, mp.mpf(df1) / 2, 0, x, regularized=True)
        ref = ref_z_from_log_tail(mp.log(sf)) if sf < 0.25 else -mp.sqrt(2) * mp.erfinv(2 * sf - 1)
        npt.assert_allclose(z_val, float(ref), rtol=1e-11)
    assert np.all(np.diff(z) > 0)


def test_f_with_infinite_denominator_dof_is_the_chi_square_limit():
    """df2 = inf (a number, or some of one per F): df1 F is chi-square with df1; z from both tails against mpmath,
    finite far in the tail, and continuous with a large finite df2."""
    F = np.array([1e-6, 0.05, 1.0, 3.0, 50.0, 1e3, 1e6])
    for df1 in (1, 3, 7):
        z = f_to_z(F, df1, np.inf)
        for f_val, z_val in zip(F, z):
            sf = mp.gammainc(mp.mpf(df1) / 2, mp.mpf(df1) * mp.mpf(f_val) / 2, mp.inf, regularized=True)
            ref = ref_z_from_log_tail(mp.log(sf)) if sf < 0.25 else -mp.sqrt(2) * mp.erfinv(2 * sf - 1)
            npt.assert_allclose(z_val, float(ref), rtol=1e-11)
        assert np.all(np.diff(z) > 0)
        npt.assert_allclose(f_to_z(F[:5], df1, 1e9), z[:5], rtol=1e-6)
    each = np.array([np.inf, 30.0, np.inf, 30.0, np.inf, 30.0, np.inf])
    npt.assert_array_equal(f_to_z(F, 3, each)[::2], f_to_z(F, 3, np.inf)[::2])
    npt.assert_array_equal(f_to_z(F, 3, each)[1::2], f_to_z(F[1::2], 3, 30.0))


def test_f_extreme_is_finite():
    z = f_to_z(np.array([1e10, 1e100, 1e300]), 3, 50)
    assert np.isfinite(z).all() and np.all(np.diff(z) > 0)


def test_t_squared_is_f_with_one_numerator_dof():
    """Two-sided t and F(1, dof) agree: P(F > t^2) = 2 P(T > |t|)."""
    t = np.array([0.5, 2.0, 7.0, 60.0])
    dof = 40
    log_f = np.log(z_to_p(f_to_z(t**2, 1, dof)))
    npt.assert_allclose(log_f, np.log(2) + t_logsf(t, dof), rtol=1e-10)


def test_a_dof_per_value_from_the_grid_of_tables_has_relative_error_below_1e12():
    """A dof per value (AR models' effective dofs), interpolated between the tables of nearby grid dofs by the
    compiled kernel: the t of the table above with dofs spread over narrow and wide ranges, off the grid's
    nodes, against mpmath (a few) and the exact computation (all, itself checked against mpmath above);
    values beyond the tables and dofs off the grid are computed exactly."""
    from voxfit.core import _kernels, distributions

    _kernels.compile_kernels()
    rng = np.random.default_rng(3)
    signed = np.array(TS + [-x for x in TS])
    for lo, hi in [(1.0, 2.5), (2.0, 3.0), (7.3, 9.1), (90.0, 183.0), (2.5e3, 3e3), (9.5e4, 1.2e5)]:
        t = np.repeat(signed, 200)  # enough values for the tables
        dof = np.exp(rng.uniform(math.log(lo), math.log(hi), t.size))
        z = t_to_z(t, dof)
        npt.assert_allclose(z, distributions._t_to_z_exact(t, dof), rtol=1e-12, atol=0)
        if hi < 1e3:
            pick = rng.choice(np.flatnonzero(np.abs(t) < 1e4), 3, replace=False)
            npt.assert_allclose(z[pick], [ref_t_z(t[i], dof[i]) for i in pick], rtol=1e-12, atol=0)


def test_a_dof_per_value_loads_the_compiled_tables_after_a_million_exact_values(monkeypatch):
    from voxfit.core import _kernels, distributions

    started = []
    monkeypatch.setattr(_kernels, "compile_in_background", lambda: started.append(True))
    monkeypatch.setattr(_kernels, "kernels_loaded", lambda: False)
    monkeypatch.setattr(distributions, "kernels_loaded", lambda: False)
    monkeypatch.setattr(distributions, "_exact_each_done", 0)
    t, dof = np.linspace(-5, 5, 1 << 19), np.full(1 << 19, 50.0)
    t_to_z(t, dof)
    assert not started
    t_to_z(t, dof + np.linspace(0, 1, t.size))
    assert started


def test_a_dof_per_value_computed_exactly_on_threads_gives_the_same_z(monkeypatch):
    """The exact z of a dof per value, spans of the values on several threads (AR fits' contrasts): the z of
    one thread bit for bit, spans of every length (one value left over, spans of uneven sizes), with NaN t,
    infinite and non-positive dofs among them; and each span is taken (a span whose z were left unset would
    show as garbage, not as the single thread's z)."""
    from voxfit.core import distributions

    monkeypatch.setattr(distributions, "kernels_loaded", lambda: False)  # exact, whatever another test loaded
    monkeypatch.setattr(distributions._kernels, "compile_in_background", lambda: None)
    monkeypatch.setattr(distributions, "_EXACT_SPAN", 1000)
    calls = []
    exact = distributions._t_to_z_exact
    monkeypatch.setattr(distributions, "_t_to_z_exact", lambda t, d: calls.append(t.size) or exact(t, d))
    rng = np.random.default_rng(11)
    for n in (999, 2001, 7919):
        t = rng.standard_t(4, n) * rng.choice([1e-3, 1.0, 30.0], n)
        dof = rng.uniform(0.5, 800.0, n)
        t[::97], dof[::89], dof[::83] = np.nan, np.inf, -1.0
        one = t_to_z(t, dof)
        exact_values = np.count_nonzero(~np.isnan(t) & (dof > 0) & np.isfinite(dof))
        for workers in (2, 3, 16):
            calls.clear()
            z = t_to_z(t, dof, workers)
            assert len(calls) == max(1, min(workers, exact_values // 1000)), (n, workers, calls)
            assert sum(calls) == exact_values
            assert np.array_equal(z, one, equal_nan=True), (n, workers)


def test_one_dof_on_threads_gives_the_z_of_one_thread(monkeypatch):
    """A single dof's table, spans of the values on up to `workers` threads (None: the CPUs): the z of one thread
    bit for bit, spans of uneven sizes, NaN and t beyond the table (computed exactly) in any span, and each span
    taken."""
    import voxfit.core
    from voxfit import _threads
    from voxfit.core import distributions

    voxfit.core.warm_up(30)  # the compiled kernel, which the spans need
    monkeypatch.setattr(distributions, "_TABLED_SPAN", 1000)
    rng = np.random.default_rng(5)
    for n in (999, 2001, 7919):
        t = rng.standard_t(4, n) * rng.choice([1e-3, 1.0, 30.0], n)
        t[::97], t[::101] = np.nan, 1e6 * rng.choice([-1, 1])
        one = t_to_z(t, 30.0, 1)
        calls = []
        kernel = distributions.hermite_z
        monkeypatch.setattr(distributions, "hermite_z", lambda t, *a: calls.append(t.size) or kernel(t, *a))
        for workers in (1, 2, 3, 16, None):
            calls.clear()
            monkeypatch.setattr(_threads, "default_workers", lambda: 5)
            z = t_to_z(t, 30.0, workers)
            assert len(calls) == max(1, min(workers or 5, n // 1000)) and sum(calls) == n, (n, workers, calls)
            assert np.array_equal(z, one, equal_nan=True), (n, workers)
        monkeypatch.setattr(distributions, "hermite_z", kernel)
        beyond = t == 1e6
        npt.assert_allclose(one[beyond], ref_t_z(1e6, 30.0), rtol=1e-12)
