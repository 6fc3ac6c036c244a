"""Sign-flip inference on mixed- and fixed-effects group statistics (issue 16): exact enumeration against a
brute-force loop that refits the weighted model per flip (tau2 of the reduced model by scipy), null validity
with unequal first-level variances and heavy-tailed symmetric errors, refusals, and the command line."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest
from scipy import stats
from scipy.optimize import minimize_scalar

from voxfit import SecondLevel
from voxfit.cli import main
from voxfit.exceptions import InputError
from voxfit.inference.permutation import mixed_permutation_test


def _reml_tau2(y, s2, Z):
    """The between-subject variance maximising the restricted likelihood of ``y = Z g + e``,
    ``e_i ~ N(0, s2_i + tau2)`` (Z may have no columns: the likelihood), by scipy's bounded search."""

    def minus_loglik(t):
        v = s2 + t
        w = 1 / v
        if Z.shape[1] == 0:
            return 0.5 * (np.log(v).sum() + (w * y * y).sum())
        ZWZ = Z.T @ (w[:, None] * Z)
        r = y - Z @ np.linalg.solve(ZWZ, Z.T @ (w * y))
        return 0.5 * (np.log(v).sum() + np.linalg.slogdet(ZWZ)[1] + (w * r * r).sum())

    found = minimize_scalar(minus_loglik, bounds=(0, 50 * (s2.max() + y.var())), method="bounded").x
    fine = minimize_scalar(minus_loglik, bounds=(0, 2 * found + 1e-9), method="bounded", options={"xatol": 1e-13}).x
    return min((0.0, fine), key=minus_loglik)


def _brute_force(X, Y, S2, C, Z, fixed=False):
    """Every sign-flip of the reduced model's residuals, the weighted model refitted for each (weights from
    tau2 of the reduced model, fixed per voxel; t and F scaled by the weighted residual variance): the
    statistics (flips, V), identity first."""
    n, V = Y.shape
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    C = np.atleast_2d(np.asarray(C, dtype=float))
    out = np.empty((len(signs), V))
    for v in range(V):
        y, s2 = Y[:, v], S2[:, v]
        w = 1 / (s2 + (0.0 if fixed else _reml_tau2(y, s2, Z)))
        sw = np.sqrt(w)
        fitted = Z @ np.linalg.lstsq(sw[:, None] * Z, sw * y, rcond=None)[0] if Z.shape[1] else 0 * y
        e = y - fitted
        K = C @ np.linalg.pinv(X.T @ (w[:, None] * X)) @ C.T
        for b, s in enumerate(signs):
            ys = s * e + fitted
            beta = np.linalg.lstsq(sw[:, None] * X, sw * ys, rcond=None)[0]
            scale = np.sum(w * (ys - X @ beta) ** 2) / (n - np.linalg.matrix_rank(X))  # the weighted residual variance
            cb = C @ beta
            q = C.shape[0]
            out[b, v] = cb[0] / np.sqrt(scale * K[0, 0]) if q == 1 else cb @ np.linalg.solve(K, cb) / q / scale
    return out


def _p_values(null):
    obs = null[0]
    tol = 1e-7 * np.maximum(np.abs(obs), 1)
    p_unc = (null >= obs - tol).mean(axis=0)
    p_fwe = (null.max(axis=1)[:, None] >= obs - tol).mean(axis=0)
    return obs, p_unc, p_fwe


def _problem(rng, n=8, V=6, effect=0.4):
    s2 = rng.uniform(0.3, 3.0, (n, V))  # first-level variances 10x apart
    Y = effect + rng.standard_normal((n, V)) * np.sqrt(s2 + 0.8)
    return Y, s2


@pytest.mark.parametrize("model", ["mixed", "fixed"])
def test_one_sample_every_flip_matches_a_brute_force_refit(rng, model):
    Y, s2 = _problem(rng)
    X = np.ones((8, 1))
    r = mixed_permutation_test(X, Y, s2, "x0", model=model, n_permutations=10_000, n_jobs=1)
    assert r.exhaustive and r.n_shuffles == 256 and r.scheme == "flip" and r.dof == 7
    obs, p_unc, p_fwe = _p_values(_brute_force(X, Y, s2, [[1.0]], np.zeros((8, 0)), fixed=model == "fixed"))
    npt.assert_allclose(r.stat, obs, rtol=1e-6)
    npt.assert_array_equal(r.p_uncorrected, p_unc)
    npt.assert_array_equal(r.p_fwe, p_fwe)


def test_a_covariate_and_an_f_contrast_match_a_brute_force_freedman_lane(rng):
    n = 8
    Y, s2 = _problem(rng, n)
    age, other = rng.standard_normal(n), rng.standard_normal(n)
    Y = Y + 0.5 * age[:, None]
    ones = np.ones((n, 1))
    X = np.column_stack([ones, age])
    r = mixed_permutation_test(X, Y, s2, [0.0, 1.0], n_permutations=256, n_jobs=2)
    obs, p_unc, p_fwe = _p_values(_brute_force(X, Y, s2, [[0.0, 1.0]], ones))
    npt.assert_allclose(r.stat, obs, rtol=1e-6)
    npt.assert_array_equal(r.p_uncorrected, p_unc)
    npt.assert_array_equal(r.p_fwe, p_fwe)

    X = np.column_stack([ones, age, other])
    C = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    r = mixed_permutation_test(X, Y, s2, C, n_permutations=256, n_jobs=1)
    obs, p_unc, p_fwe = _p_values(_brute_force(X, Y, s2, C, ones))
    assert r.kind == "F" and r.dof == n - 3
    npt.assert_allclose(r.stat, obs, rtol=1e-6)
    npt.assert_array_equal(r.p_uncorrected, p_unc)
    npt.assert_array_equal(r.p_fwe, p_fwe)


def test_float32_maps_give_the_float64_p_values(rng):
    Y, s2 = (a.astype(np.float32) for a in _problem(rng, V=40))
    X = np.ones((8, 1))
    a = mixed_permutation_test(X, Y.astype(np.float64), s2.astype(np.float64), "x0", n_permutations=256, n_jobs=1)
    b = mixed_permutation_test(X, Y, s2, "x0", n_permutations=256, n_jobs=1)
    npt.assert_allclose(b.stat, a.stat, rtol=1e-5)
    # (flips within float32's 1e-6 of the observed statistic count as ties: at most one flip apart)
    npt.assert_allclose(b.p_uncorrected, a.p_uncorrected, atol=1 / 256 + 1e-12)
    assert np.mean(b.p_uncorrected == a.p_uncorrected) >= 0.9
    npt.assert_array_equal(b.p_fwe, a.p_fwe)


@pytest.mark.parametrize(
    ("dtype", "power"), [(np.float64, -300), (np.float64, 300), (np.float32, -40), (np.float32, 40)]
)
@pytest.mark.parametrize("model", ["mixed", "fixed"])
def test_maps_in_any_units_give_the_same_statistics_and_p_values(rng, model, dtype, power):
    """Effects times 2^k and variances times 2^2k (other units) leave the weighted statistic, its shuffles, TFCE
    and every p value the same to the bit: the whitening takes the units out, where the OLS path needed scaling
    (its float32 residuals of maps of 1e-21 had underflowed)."""
    from voxfit.inference.graph import volume_adjacency

    shape = (6, 6, 5)
    adjacency = volume_adjacency(np.ones(shape, dtype=bool), shape)
    E = rng.standard_normal((10, 180)) + 0.5
    E[:, :30] += 2.0
    S = rng.uniform(0.5, 2.0, E.shape)
    options = {"model": model, "n_permutations": 128, "seed": 0, "tfce": True, "adjacency": adjacency, "n_jobs": 1}
    a = mixed_permutation_test(np.ones((10, 1)), E.astype(dtype), S.astype(dtype), [1.0], **options)
    scale = 2.0**power
    b = mixed_permutation_test(
        np.ones((10, 1)), (E * scale).astype(dtype), (S * scale**2).astype(dtype), [1.0], **options
    )
    assert np.isfinite(a.stat).all() and a.tfce.max() > 0
    for name in ("stat", "p_uncorrected", "p_fwe", "null_max", "tfce", "p_tfce_fwe", "null_tfce"):
        npt.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


@pytest.mark.parametrize("model", ["mixed", "fixed"])
def test_constant_effects_have_no_statistic_and_leave_the_others_p_values(rng, model):
    """Effects equal in every subject beside a nuisance intercept: the fixed-effects path gave them a statistic
    from rounding (t -0.63, p 0.76) whose shuffles entered the maxima (another voxel's FWE p 0.42 -> 0.50)."""
    X = np.column_stack([np.repeat([1.0, 0.0], 5), np.ones(10)])
    E = rng.standard_normal((10, 3))
    E[:5, 0] += 1.5
    S = rng.uniform(0.5, 2.0, (10, 4))
    options = {"model": model, "n_permutations": 500, "seed": 0, "n_jobs": 1}
    a = mixed_permutation_test(X, E, S[:, :3], [1, 0], **options)
    b = mixed_permutation_test(X, np.column_stack([E, np.full(10, 3.0)]), S, [1, 0], **options)
    assert np.isnan(b.stat[-1]) and np.isnan(b.p_fwe[-1])
    npt.assert_array_equal(b.p_uncorrected[:3], a.p_uncorrected)
    positive = a.stat > 0  # (a voxel without a statistic is 0 in the maxima, as NaN voxels are: p of t <= 0 is ~1)
    assert positive.any()
    npt.assert_array_equal(b.p_fwe[:3][positive], a.p_fwe[positive])


def test_an_f_contrast_spanning_the_whole_design_is_the_same_whatever_its_rows(rng):
    """Rows spanning the whole design, written two ways, are one F (rounding noise was taken for a nuisance
    column: [[1, -1], [1, 1]] gave another F than [[1, 0], [0, 1]])."""
    Y, s2 = _problem(rng, n=10)
    g = np.r_[np.ones(5), np.zeros(5)]
    X = np.column_stack([g, 1 - g])
    a = mixed_permutation_test(X, Y, s2, [[1.0, -1.0], [1.0, 1.0]], n_permutations=200, seed=0, n_jobs=1)
    b = mixed_permutation_test(X, Y, s2, [[1.0, 0.0], [0.0, 1.0]], n_permutations=200, seed=0, n_jobs=1)
    npt.assert_allclose(a.stat, b.stat, rtol=1e-8)
    npt.assert_array_equal(a.p_uncorrected, b.p_uncorrected)
    assert a.dof == b.dof == 8


def _heteroscedastic_null(rng, n, V, X=None):
    """Null effects: first-level variances 1 to 10 (10x between subjects), t(5) first-level noise and Laplace
    between-subject noise of variance 2 (symmetric, heavy-tailed)."""
    s2 = np.logspace(0, 1, n)[:, None] * rng.uniform(0.8, 1.25, (n, V))
    first = rng.standard_t(5, (n, V)) / np.sqrt(5 / 3)
    between = rng.laplace(0, 1, (n, V))  # variance 2
    return np.sqrt(s2) * first + between, s2


@pytest.mark.parametrize("design", ["one-sample", "covariate"])
def test_null_rate_with_unequal_variances_and_symmetric_errors(rng, design):
    n, V = 10, 10_000  # every one of the 1024 flips: P(p <= 0.05) = 51 / 1024 exactly under symmetric errors
    Y, s2 = _heteroscedastic_null(rng, n, V)
    X = np.ones((n, 1))
    contrast = "x0"
    if design == "covariate":  # Freedman-Lane: a mean and a nuisance slope; the tested covariate's effect is null
        X = np.column_stack([X, rng.standard_normal((n, 2))])
        Y = Y + 1.0 + 0.7 * X[:, 2:]
        contrast = "x1"
    r = mixed_permutation_test(X, Y, s2, contrast, n_permutations=1024, n_jobs=2)
    assert r.exhaustive
    rate = float(np.mean(r.p_uncorrected <= 0.05))
    lo, hi = stats.binom.interval(0.95, V, 51 / 1024)  # +-0.0043: a 10% bias is 0.005
    if design == "one-sample":  # exact
        assert lo / V <= rate <= hi / V, rate
    else:  # Freedman-Lane is approximate at n = 10 (7 dof): not above the interval (measured 0.038 to 0.050)
        assert 0.03 <= rate <= hi / V, rate


def test_permutations_are_refused_with_the_rule(rng):
    Y, s2 = _problem(rng)
    X = np.ones((8, 1))
    for blocks in (None, [1, 1, 1, 1, 2, 2, 2, 2]):
        with pytest.raises(InputError, match="not exchangeable.*Winkler et al. 2014"):
            mixed_permutation_test(X, Y, s2, "x0", scheme="permute", blocks=blocks, n_permutations=10)
    with pytest.raises(InputError, match="`model` must be 'mixed' or 'fixed'"):
        mixed_permutation_test(X, Y, s2, "x0", model="ols")
    with pytest.raises(InputError, match="run on CPUs"):
        mixed_permutation_test(X, Y, s2, "x0", device="cuda")
    with pytest.raises(InputError, match="one variance per effect"):
        mixed_permutation_test(X, Y, s2[:, :3], "x0")
    with pytest.raises(InputError, match="scheme 'permute' with model 'fixed'"):
        SecondLevel(model="fixed", variances=["v.nii"], permutations=10, scheme="permute").fit(["e.nii"])


def test_whole_block_flips(rng):
    Y, s2 = _problem(rng)
    r = mixed_permutation_test(
        np.ones((8, 1)), Y, s2, "x0", blocks=[1, 1, 2, 2, 3, 3, 4, 4], whole_blocks=True, n_permutations=100
    )
    assert r.exhaustive and r.n_shuffles == 16


def test_the_command_line_writes_permutation_maps_and_a_valid_record(tmp_path, rng, capsys):
    shape, n = (6, 5, 4), 8
    effects, variances = [], []
    for k in range(n):
        folder = tmp_path / f"sub-{k + 1:02d}"
        folder.mkdir()
        s2 = rng.uniform(0.5, 5, shape)
        effect = 1.0 + rng.standard_normal(shape) * np.sqrt(s2 + 0.5)
        for name, values, paths in (("effect", effect, effects), ("variance", s2, variances)):
            nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), folder / f"stat-{name}.nii.gz")
            paths.append(str(folder / f"stat-{name}.nii.gz"))
    out = tmp_path / "group"
    argv = ["group", *effects, "--variances", *variances, "--permutations", "100", "--tfce"]
    assert main([*argv, "--cluster-threshold", "2", "--seed", "1", "-o", str(out), "--quiet"]) == 0
    for name in (
        "contrast-intercept_stat-t_statmap",
        "contrast-intercept_stat-t_desc-nullmodel_statmap",
        "contrast-intercept_stat-p_desc-fwe_statmap",
        "contrast-intercept_stat-tfce_statmap",
        "contrast-intercept_stat-p_desc-tfcefwe_statmap",
        "contrast-intercept_stat-p_desc-clusterfwe_statmap",
        "stat-betweenvariance_statmap",
    ):
        assert (out / f"{name}.nii.gz").is_file(), name
    assert (out / "contrast-intercept_clusters.tsv").is_file()
    record = json.loads((out / "model.json").read_text())  # (conftest validates it against the schema)
    assert record["contrasts"]["intercept"]["permutation"] == {"scheme": "flip", "shuffles": 100, "exhaustive": False}
    assert "null model's weighted least-squares" in record["settings"]["mixed_effects"]["permutation_statistic"]
    p_fwe = np.asarray(nib.load(out / "contrast-intercept_stat-p_desc-fwe_statmap.nii.gz").dataobj)
    assert np.nanmin(p_fwe) >= 0.01 and np.nanmax(p_fwe) <= 1
