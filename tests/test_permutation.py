"""Permutation inference: exact enumeration on tiny samples, Freedman-Lane, exchangeability blocks, FDR."""

import itertools
import math

import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit
from voxfit.exceptions import InputError
from voxfit.inference.corrections import bonferroni, fdr, fdr_threshold
from voxfit.inference.permutation import permutation_test
from voxfit.inference.shuffles import count_shuffles, make_shuffles


def _p_values(null: np.ndarray, observed: np.ndarray):
    """Enumerated null (N, V) with the identity in it: uncorrected and max-statistic FWE p."""
    unc = (null >= observed - 1e-12).mean(axis=0)
    fwe = (null.max(axis=1)[:, None] >= observed - 1e-12).mean(axis=0)
    return unc, fwe


def test_one_sample_sign_flips_equal_the_enumeration(rng):
    n, V = 9, 40
    Y = rng.standard_normal((n, V)) + 0.4
    res = permutation_test(np.ones((n, 1)), Y, [1.0], n_permutations=10_000)
    assert res.scheme == "flip" and res.exhaustive and res.n_shuffles == 2**n
    null = []
    for signs in itertools.product([1.0, -1.0], repeat=n):
        Z = np.array(signs)[:, None] * Y
        null.append(Z.mean(0) / (Z.std(0, ddof=1) / np.sqrt(n)))
    null = np.array(null)
    unc, fwe = _p_values(null, null[0])
    npt.assert_allclose(res.stat, null[0], rtol=1e-12)
    npt.assert_array_equal(res.p_uncorrected, unc)
    npt.assert_array_equal(res.p_fwe, fwe)
    npt.assert_allclose(np.sort(res.null_max), np.sort(null.max(axis=1)), rtol=1e-10)


def test_two_sample_permutations_equal_the_enumeration(rng):
    """5 + 5 subjects: the C(10, 5) = 252 relabellings, each once."""
    g = np.r_[np.ones(5), np.zeros(5)]
    X = np.column_stack([g, 1 - g])
    Y = rng.standard_normal((10, 30)) + 0.8 * g[:, None]
    res = permutation_test(X, Y, [1, -1], n_permutations=1000)
    assert res.scheme == "permute" and res.exhaustive and res.n_shuffles == math.comb(10, 5)
    null = []
    for first in itertools.combinations(range(10), 5):
        lab = np.zeros(10, dtype=bool)
        lab[list(first)] = True
        a, b = Y[lab], Y[~lab]
        pooled = ((a.var(0, ddof=1) * 4 + b.var(0, ddof=1) * 4) / 8) * (1 / 5 + 1 / 5)
        null.append((a.mean(0) - b.mean(0)) / np.sqrt(pooled))
    null = np.array(null)
    observed = fit(X, Y).contrast([1, -1]).t
    unc, fwe = _p_values(null, observed)
    npt.assert_allclose(res.stat, observed, rtol=1e-10)
    npt.assert_array_equal(res.p_uncorrected, unc)
    npt.assert_array_equal(res.p_fwe, fwe)


@pytest.mark.parametrize("scheme", ["flip", "permute"])
def test_a_voxel_of_a_huge_statistic_is_reached_by_the_identity_alone(scheme):
    """float32 maps, a voxel whose subjects' values lie 0.02% apart (t in the thousands): its tie tolerance, which
    widens with ||E||^2 / rss, passed 100%, every shuffle tied it, and its p values were 1 (a group tester's);
    exact enumeration gives 1/N there, and the other voxels' p values are the enumeration's too."""
    rng = np.random.default_rng(0)
    n, V = 8 if scheme == "flip" else 10, 20
    if scheme == "flip":
        X, w = np.ones((n, 1)), [1.0]
        Y = rng.standard_normal((n, V)) + 0.3
        Y[:, 0] = 1.0 + 2e-4 * rng.standard_normal(n)
    else:
        g = np.r_[np.ones(5), np.zeros(5)]
        X, w = np.column_stack([g, 1 - g]), [1, -1]
        Y = rng.standard_normal((n, V))
        Y[:, 0] = g + 3e-4 * rng.standard_normal(n)
    Y = Y.astype(np.float32)
    res = permutation_test(X, Y, w, n_permutations=10_000)
    assert res.exhaustive and res.scheme == scheme and res.stat[0] > 4000
    y = Y.astype(np.float64)
    if scheme == "flip":
        flipped = [np.array(signs)[:, None] * y for signs in itertools.product([1.0, -1.0], repeat=n)]
        null = np.array([z.mean(0) / np.sqrt(z.var(0, ddof=1) / n) for z in flipped])
    else:
        null = []
        for first in itertools.combinations(range(n), 5):
            lab = np.zeros(n, dtype=bool)
            lab[list(first)] = True
            a, b = y[lab], y[~lab]
            null.append((a.mean(0) - b.mean(0)) / np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2 * (2 / 5)))
        null = np.array(null)
    unc, fwe = _p_values(null, null[0])
    assert res.p_uncorrected[0] == res.p_fwe[0] == 1 / res.n_shuffles == unc[0]
    npt.assert_array_equal(res.p_uncorrected, unc)
    npt.assert_array_equal(res.p_fwe, fwe)


def test_freedman_lane_statistics_are_the_parametric_ones(rng):
    n = 14
    X = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    Y = rng.standard_normal((n, 25)) + X[:, [1]] * 0.5
    f = fit(X, Y)
    t = permutation_test(X, Y, [0, 1, 0], n_permutations=200, seed=3)
    npt.assert_allclose(t.stat, f.contrast([0, 1, 0]).t, rtol=1e-10)
    F = permutation_test(X, Y, [[0, 1, 0], [0, 0, 1]], n_permutations=200, seed=3)
    assert F.kind == "F"
    npt.assert_allclose(F.stat, f.contrast([[0, 1, 0], [0, 0, 1]]).F, rtol=1e-10)
    assert (t.p_fwe >= t.p_uncorrected).all() and t.p_uncorrected.min() >= 1 / 200
    # float32 data: the same statistics to float32 precision, p-values from the same shuffles
    t32 = permutation_test(X, Y.astype(np.float32), [0, 1, 0], n_permutations=200, seed=3)
    npt.assert_allclose(t32.stat, t.stat, rtol=1e-5)
    assert np.abs(t32.p_uncorrected - t.p_uncorrected).max() <= 2 / 200


def test_freedman_lane_with_nuisance_enumerates_exactly(rng):
    """Two groups plus a covariate: Freedman-Lane permutes the residuals of the nuisance model; with all
    7! orderings of distinct rows, p equals the enumeration of that procedure written out directly."""
    n = 7
    g = np.r_[np.ones(4), np.zeros(3)]
    X = np.column_stack([g, 1 - g, rng.standard_normal(n)])
    Y = rng.standard_normal((n, 6))
    c = np.array([1.0, -1.0, 0.0])
    res = permutation_test(X, Y, c, n_permutations=50_000)
    assert res.exhaustive and res.n_shuffles == math.factorial(n)
    Z = X @ (np.eye(3) - np.linalg.pinv(c[None, :]) @ c[None, :])
    H = Z @ np.linalg.pinv(Z)
    E, fitted = Y - H @ Y, H @ Y
    orders = np.array(list(itertools.permutations(range(n))))
    Ys = E[orders] + fitted  # (N, n, V): each ordering of the residuals, the nuisance fit added back
    beta = np.linalg.pinv(X) @ Ys
    resid = Ys - X @ beta
    sigma2 = np.einsum("bnv,bnv->bv", resid, resid) / (n - 3)
    null = (c @ beta) / np.sqrt(sigma2 * (c @ np.linalg.pinv(X.T @ X) @ c))
    unc, fwe = _p_values(null, res.stat)
    npt.assert_allclose(res.stat, null[0], rtol=1e-10)
    npt.assert_allclose(res.p_uncorrected, unc, atol=1e-12)
    npt.assert_allclose(res.p_fwe, fwe, atol=1e-12)


def test_shuffle_counts_and_blocks():
    g = np.r_[np.ones(4), np.zeros(4)][:, None]
    assert count_shuffles("permute", g) == math.comb(8, 4)
    blocks = np.r_[0, 0, 1, 1, 0, 0, 1, 1]
    # within each block two of each group: C(4, 2)^2
    assert count_shuffles("permute", g, blocks) == math.comb(4, 2) ** 2
    s = make_shuffles("permute", g, 1000, blocks=blocks)
    assert s.exhaustive and s.n == 36 and (s.order[0] == np.arange(8)).all()
    for o in s.order:
        assert (blocks[o] == blocks).all()  # rows move only within their block
    assert len({frozenset(o[g[:, 0] == 1]) for o in s.order}) == 36  # which rows take group 1's places: each once
    flips = make_shuffles("flip", np.ones((6, 1)), 100, blocks=[0, 0, 1, 1, 2, 2], whole_blocks=True)
    assert flips.exhaustive and flips.n == 8 and (flips.signs[:, ::2] == flips.signs[:, 1::2]).all()
    whole = make_shuffles("permute", np.arange(6.0)[:, None], 100, blocks=[0, 0, 1, 1, 2, 2], whole_blocks=True)
    assert whole.n == 6 and all(sorted(o.tolist()) == list(range(6)) for o in whole.order)
    paired_blocks = make_shuffles(
        "permute", np.r_[0, 1, 0, 1, 2, 3, 2, 3.0][:, None], 100, blocks=[0, 0, 1, 1, 2, 2, 3, 3], whole_blocks=True
    )  # blocks 0, 1 alike and 2, 3 alike: 4! / (2! 2!)
    assert paired_blocks.exhaustive and paired_blocks.n == 6
    assert len({frozenset(o[[0, 2]].tolist()) for o in paired_blocks.order}) == 6
    drawn = make_shuffles("flip", np.ones((30, 1)), 500, seed=1)
    again = make_shuffles("flip", np.ones((30, 1)), 500, seed=1)
    assert not drawn.exhaustive and (drawn.signs == again.signs).all() and (drawn.signs[0] == 1).all()
    assert len({r.tobytes() for r in drawn.signs}) == 500  # no repeats


def test_bad_inputs_are_refused(rng):
    Y = rng.standard_normal((6, 4))
    with pytest.raises(InputError, match="whole-block permutation needs blocks of equal size"):
        make_shuffles("permute", np.arange(6.0)[:, None], 10, blocks=[0, 0, 0, 1, 1, 2], whole_blocks=True)
    with pytest.raises(InputError, match=r"8 of the 9 blocks have 2 row\(s\), but block c has 3; give blocks of"):
        labels = ["c"] * 3 + [x for x in "abdefghi" for _ in range(2)]
        make_shuffles("permute", np.arange(19.0)[:, None], 10, blocks=labels, whole_blocks=True)
    with pytest.raises(InputError, match="one exchangeability block per row"):
        make_shuffles("flip", np.ones((6, 1)), 10, blocks=[0, 1])
    with pytest.raises(InputError, match="positive integer"):
        permutation_test(np.ones((6, 1)), Y, [1.0], n_permutations=0)
    with pytest.raises(InputError, match="`scheme` must be"):
        permutation_test(np.ones((6, 1)), Y, [1.0], scheme="bootstrap")
    with pytest.raises(InputError, match="need the neighbours"):
        permutation_test(np.ones((6, 1)), Y, [1.0], tfce=True)
    with pytest.raises(InputError, match="has 6 rows \\(maps\\) but the design `X` has 5"):
        permutation_test(np.ones((5, 1)), Y, [1.0])


def test_fdr_and_bonferroni_match_statsmodels(rng):
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20), [np.nan]])
    ours = fdr(p)
    ref = multitest.multipletests(p[:-1], method="fdr_bh")[1]
    npt.assert_allclose(ours[:-1], ref, rtol=1e-12)
    assert np.isnan(ours[-1])
    npt.assert_allclose(bonferroni(p)[:-1], np.minimum(1, p[:-1] * 220))
    thr = fdr_threshold(p, 0.05)
    assert ((ours <= 0.05) == (p <= thr))[:-1].all()


def test_the_mean_with_covariates_is_tested_by_sign_flips(rng):
    """X = [1, age], contrast on the intercept: the mean is part of the effect, only flips can move it."""
    n = 20
    age = rng.standard_normal(n)
    X = np.column_stack([np.ones(n), age])
    Y = rng.standard_normal((n, 300))
    res = permutation_test(X, Y, [1.0, 0.0], n_permutations=400, seed=0)
    assert res.scheme == "flip"
    assert 0.01 < np.mean(res.p_uncorrected <= 0.05) < 0.10  # null data: about 5%, not half of the voxels
    with pytest.raises(InputError, match="tests the mean"):
        permutation_test(X, Y, [1.0, 0.0], scheme="permute")
    assert permutation_test(X, Y, [0.0, 1.0], n_permutations=50).scheme == "permute"


def test_voxels_without_residual_variance_get_no_p_value(rng):
    Y = rng.standard_normal((10, 6))
    Y[:, 2] = 0.0  # all zero
    Y[:, 4] = 3.0  # constant: fitted exactly by the mean
    Y[0, 5] = np.nan
    before = Y.copy()
    res = permutation_test(np.ones((10, 1)), Y, [1.0], n_permutations=100, seed=1)
    npt.assert_array_equal(Y, before)  # the caller's data untouched
    assert np.isnan(res.p_fwe[5])
    Y[0, 5] = 1.0
    res = permutation_test(np.ones((10, 1)), Y, [1.0], n_permutations=100, seed=1)
    for p in (res.p_uncorrected, res.p_fwe):
        assert np.isnan(p[[2, 4]]).all() and np.isfinite(p[[0, 1, 3, 5]]).all()
    assert np.isfinite(res.null_max).all()


@pytest.mark.parametrize("scale", [2.0**-70, 2.0**64])
def test_maps_of_any_size_give_the_same_statistics_and_p_values(rng, scale):
    """The shuffles' statistics do not depend on the maps' units: float32 residuals of maps of size 1e-21 (2**-70)
    underflowed, and the squares of those of size 1.8e19 (2**64) overflowed: TFCE 0 and p values off by up to 0.98,
    with nothing said. Scaled by a power of two, the maps give the same numbers to the bit."""
    from voxfit.inference.graph import volume_adjacency

    shape = (6, 6, 5)
    adjacency = volume_adjacency(np.ones(shape, dtype=bool), shape)
    Y = (rng.standard_normal((8, 180)) + 0.3).astype(np.float32)
    Y[:, :30] += 2.0
    options = {"n_permutations": 256, "tfce": True, "adjacency": adjacency, "n_jobs": 1}
    a = permutation_test(np.ones((8, 1)), Y, [1.0], **options)
    b = permutation_test(np.ones((8, 1)), Y * np.float32(scale), [1.0], **options)
    assert np.isfinite(a.stat).all() and a.tfce.max() > 0
    for name in ("stat", "p_uncorrected", "p_fwe", "null_max", "tfce", "p_tfce_fwe", "null_tfce"):
        npt.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("level", [3.0, 1234.567])
def test_a_constant_voxel_has_no_statistic_and_leaves_the_others_p_values(rng, dtype, level):
    """A constant voxel beside a nuisance intercept: its residuals are rounding, which gave it t ~ 1 in every
    shuffle, in the maxima, and moved another voxel's FWE p from 0.56 to 0.79 (voxfit.fit gives it NaN)."""
    X = np.column_stack([np.repeat([1.0, 0.0], 5), np.ones(10)])
    Y = rng.standard_normal((10, 3))
    Y[:5, 0] += 1.5
    with_constant = np.column_stack([Y, np.full(10, level)]).astype(dtype)
    a = permutation_test(X, Y.astype(dtype), [1, 0], n_permutations=500, seed=0, n_jobs=1)
    b = permutation_test(X, with_constant, [1, 0], n_permutations=500, seed=0, n_jobs=1)
    assert np.isnan(b.stat[-1]) and np.isnan(b.p_uncorrected[-1]) and np.isnan(b.p_fwe[-1])
    npt.assert_array_equal(b.p_uncorrected[:3], a.p_uncorrected)
    positive = a.stat > 0  # (a voxel without a statistic is 0 in the maxima, as NaN voxels are: p of t <= 0 is ~1)
    assert positive.any()
    npt.assert_array_equal(b.p_fwe[:3][positive], a.p_fwe[positive])


def test_results_are_read_only_as_fits_are():
    """A permutation result's arrays were writable (a Fit's and its Stats' are not): a caller's edit changed it."""
    from voxfit.inference.graph import volume_adjacency

    Y = np.random.default_rng(0).standard_normal((8, 30)) + 1.0
    adjacency = volume_adjacency(np.ones((5, 6, 1), dtype=bool), (5, 6, 1))
    r = permutation_test(np.ones((8, 1)), Y, [1.0], n_permutations=64, tfce=True, adjacency=adjacency,
                         cluster_threshold=1.0, n_jobs=1)  # fmt: skip
    arrays = [getattr(r, f) for f in ("stat", "p_uncorrected", "p_fwe", "null_max", "tfce", "p_tfce_fwe")]
    arrays += [r.clusters.labels, r.clusters.p_extent, r.clusters.null_mass]
    for a in arrays:
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 0


def test_an_f_contrast_spanning_the_whole_design_has_no_nuisance(rng):
    """An F contrast whose rows span every column of the design leaves no nuisance: the part of the design it does
    not span was rounding noise, taken for a column (dof one short and every permuted F wrong: 0.03 for 7.8)."""
    g = np.r_[np.ones(5), np.zeros(5)]
    X = np.column_stack([g, 1 - g])
    Y = rng.standard_normal((10, 12)) + 0.8 * g[:, None]
    a = permutation_test(X, Y, [[1.0, -1.0], [1.0, 1.0]], n_permutations=500, seed=0, n_jobs=1)
    b = permutation_test(X, Y, [[1.0, 0.0], [0.0, 1.0]], n_permutations=500, seed=0, n_jobs=1)
    npt.assert_allclose(a.stat, fit(X, Y).contrast([[1.0, 0.0], [0.0, 1.0]]).F, rtol=1e-10)
    assert a.dof == b.dof == 8
    npt.assert_array_equal(a.p_uncorrected, b.p_uncorrected)


def test_f_ties_under_sign_flips_are_counted(rng):
    """All 2^9 sign-flips: an F map equals its negated shuffle's, so the smallest p is 2/N, also in float32
    with a high R^2 (R^2 ~ 0.99, where the null statistics lose digits) and for TFCE and cluster mass."""
    from voxfit.inference.graph import volume_adjacency

    n = 9
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    Y = (5 * X[:, [1]] + 0.5 * rng.standard_normal((n, 60)) + 3).astype(np.float32)
    adjacency = volume_adjacency(np.ones(60, dtype=bool), (60, 1, 1))
    res = permutation_test(
        X,
        Y,
        [[1.0, 0], [0, 1.0]],
        scheme="flip",
        n_permutations=10_000,
        adjacency=adjacency,
        tfce=True,
        cluster_threshold=1.0,
    )
    assert res.kind == "F" and res.exhaustive and res.n_shuffles == 2**n
    assert res.p_uncorrected.min() >= 2 / 2**n - 1e-12 and res.p_fwe.min() >= 2 / 2**n - 1e-12
    assert res.p_tfce_fwe.min() >= 2 / 2**n - 1e-12 and res.clusters.p_mass.min() >= 2 / 2**n - 1e-12


def test_too_few_rearrangements_for_p_005_are_warned():
    """Fewer than 20 rearrangements (asked for, or all a small design allows) cannot give p < 0.05: FWE maps of
    1 everywhere were written without a word. Warned, with what to do."""
    import warnings

    from voxfit.inference.shuffles import make_shuffles

    X = np.ones((12, 1))
    with pytest.warns(UserWarning, match=r"smallest p they can give is 1/10 = 0.1.*--permutations 5000"):
        make_shuffles("flip", X, 10, seed=0)
    with pytest.warns(UserWarning, match=r"1/16 = 0.0625.*the design allows only 16"):
        make_shuffles("flip", np.ones((4, 1)), 1000, seed=0)
    with pytest.warns(UserWarning, match="1/20 = 0.05"):  # (p < 0.05 is the test: 0.05 is not below it)
        make_shuffles("flip", X, 20, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_shuffles("flip", X, 21, seed=0)


def test_blocks_that_leave_one_rearrangement_say_which_file_they_may_be():
    """FEAT's design.grp (variance groups) given as randomise's exchangeability blocks (--grp): each block holds one
    group, so no label can move between the groups and the one rearrangement gives every FWE p 1 (exit 0). The
    warning named no cause; it names the blocks and the file they may have been."""
    g = np.r_[np.ones(6), np.zeros(6)]
    design = np.column_stack([g, 1 - g])
    with pytest.warns(UserWarning, match=r"the design allows only 1 within its 2 exchangeability blocks \(--grp\)"):
        make_shuffles("permute", design, 1000, blocks=2 - g)


def test_blocks_that_do_not_lower_the_rearrangements_are_not_named_as_their_cause():
    """Sign flips of 4 rows in 2 blocks: 16 rearrangements with the blocks or without; the warning of too few named
    the blocks (and FEAT's design.grp) as their cause."""
    with pytest.warns(UserWarning, match="the design allows only 16") as caught:
        make_shuffles("flip", np.ones((4, 1)), 1000, blocks=[1, 1, 2, 2])
    assert "exchangeability blocks" not in str(caught[0].message)
