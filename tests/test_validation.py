"""The validation/ scripts, CI-sized: each check can fail, and its reference does not come from voxfit.

The scripts print full-sized runs; here their functions run at the smallest size that still sees the bias named
in each test, and each rate is checked with the exact (Clopper-Pearson) 95% binomial interval. The references
are the nominal rates of exact tests (exchangeability, the null hypothesis) and nilearn's permuted_ols. Fixed
seeds: a 95% interval misses for 5% of seeds by design, so these tests are sized for a bias, not repeated over
seeds (VOXFIT_TEST_SEED does not move them).
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

VALIDATION = Path(__file__).resolve().parents[1] / "validation"


def script(name):
    spec = importlib.util.spec_from_file_location(f"validation_{name}", VALIDATION / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interval(count, total):
    ci = stats.binomtest(int(count), int(total)).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def test_null_false_positives():
    """80,000 null voxels x 200 scans per noise (two draws of 40,000), an event design (1 s events, HRF, cosine
    drift): the 95% interval of the rate of p < 0.05 is 0.05 +- 0.0015, so a 10% bias (0.055) is seen; p < 0.001
    sees a 45% bias. OLS must be liberal. AR(1) 0.2: ar2 and SPM's pooled ar1-global (whose fixed AR(0.2) basis is
    then right) must hold the nominal rate in their interval. AR(2) (0.5, -0.2) with ar2: the interval must reach
    within 10% of nominal (measured on 240,000 voxels: 0.0506 at p < 0.05; here 0.0514). One draw is not enough:
    the first alone gives ar2 0.0474 and the known model (ar1-global) 0.0485 on AR(0.2), a low draw of the noise
    (six draws: ar2 0.0493, ar1-global 0.0496). (ar1 and ar2 at AR(1) 0.4, block design, strictly:
    tests/test_ar.py.)"""
    nfp = script("null_false_positives")
    counts = {}
    for seed in (4, 5):
        rows = nfp.null_rates(
            40000, 200, seed=seed, noises=((0.2,), (0.5, -0.2)), models=("ols", "ar2", "ar1-global"), design="events"
        )
        for r in rows:
            key = (r["noise"], r["model"], r["alpha"])
            c, n = counts.get(key, (0, 0))
            counts[key] = (c + r["count"], n + r["n"])
    checked = 0
    for (noise, model, alpha), (count, n) in counts.items():
        lo, hi = interval(count, n)
        if model == "ols":
            assert lo > alpha, (noise, alpha, count / n)
        elif noise == "AR(0.2)":
            assert lo <= alpha <= hi, (model, alpha, count / n, lo, hi)
            checked += 1
        elif model == "ar2":
            assert lo <= 1.1 * alpha and hi >= 0.9 * alpha, (alpha, count / n, lo, hi)
            checked += 1
    assert checked == 6


def test_group_null_fwe():
    """1,000 null group studies (12 subjects, smooth noise in a 520-voxel ellipsoid, 100 sign-flips): the
    family-wise error of max-t, cluster extent, cluster mass and TFCE is 0.05 within 0.05 +- 0.0135 (a 30%
    bias is seen; 10% would need 30,000 studies). With N = 100 shuffles p is a multiple of 0.01, so the level
    of p <= 0.05 is exactly 0.05 by exchangeability."""
    fwe = script("group_null_fwe")
    res = fwe.run_studies(
        studies=1000, subjects=12, shape=(12, 12, 10), sigma=1.5, n_perm=100, threshold=3.0, seed=7000, n_jobs=1
    )
    hits = res["hits"]
    for j, method in enumerate(fwe.METHODS):
        lo, hi = interval(hits[:, j].sum(), hits.shape[0])
        assert lo <= 0.05 <= hi, (method, hits[:, j].mean(), lo, hi)


def test_a_whole_study_on_null_data_holds_its_level_at_each_level():
    """A BIDS study of null data with AR(1) noise (phi 0.2-0.5 per voxel) and drifts, 8 subjects x 2 runs x 100
    scans, 10,000 voxels, through voxfit.bids.run with its defaults (validation/study_null.py): at p < 0.05 the run
    level (160,000 p values) and the subject level (80,000), for A and A - B, hold the rate within 10% (their 95%
    intervals, 0.05 +- 0.0011 and +- 0.0015, see a 10% bias); the OLS dataset level is scipy's one-sample t on the
    subjects' maps, its rate within 10% (its interval, +- 0.0044, sees a 20% bias); the default mixed model is
    never liberal (FLAME1's REML between-subject variance at its bound 0 leaves it conservative where that
    variance is small: 0.027 with 40,000 voxels and 10 subjects)."""
    study_null = script("study_null")
    rows = study_null.null_rates(
        voxels=10000, subjects=8, scans=100, seed=1, noises=("ar1",), taus=(0.0,), group_models=("mixed", "ols")
    )
    by = {(r["level"], r["contrast"], r["model"]): r for r in rows}
    for contrast in study_null.CONTRASTS:
        for level in ("run", "subject"):
            row = by[level, contrast, "default"]
            lo, hi = interval(row["counts"][0], row["n"])
            assert lo <= 0.055 and hi >= 0.045, (level, contrast, row)
            assert row["check"].endswith("one-sided: True")
        ols, scipy_ = by["dataset", contrast, "ols"], by["dataset", contrast, "scipy"]
        assert ols["t_diff"] < 1e-4 and ols["counts"] == scipy_["counts"], (ols, scipy_)
        lo, hi = interval(ols["counts"][0], ols["n"])
        assert lo <= 0.055 and hi >= 0.045, (contrast, ols)
        mixed = by["dataset", contrast, "mixed"]
        assert interval(mixed["counts"][0], mixed["n"])[0] <= 0.05, (contrast, mixed)


def test_group_vs_nilearn():
    """voxfit's and nilearn's one-sample sign-flip max-t on the same data: the same t map; null maxima from
    50,000 random flips each exceed their pooled 95th percentile equally often: given the c exceedances of both,
    voxfit's count is Binomial(c, 1/2) (about 5,000: the 95% interval of the share, 0.5 +- 0.014, sees voxfit's
    rate 6% off nilearn's). The FWE p maps agree within the Monte-Carlo error of the two."""
    pytest.importorskip("nilearn")
    cmp = script("group_vs_nilearn")
    n_perm = 50000
    r = cmp.max_t_nulls(subjects=20, shape=(12, 12, 10), sigma=1.5, effect=2.0, n_perm=n_perm, seed=3)
    np.testing.assert_allclose(r["t_voxfit"], r["t_nilearn"], rtol=1e-12, atol=1e-12)
    null_vf, null_nl = r["null_voxfit"], r["null_nilearn"]
    assert null_vf.size == null_nl.size == n_perm
    for q in (0.95, 0.99):
        c = np.quantile(np.concatenate([null_vf, null_nl]), q)
        a, b = int(np.sum(null_vf >= c)), int(np.sum(null_nl >= c))
        lo, hi = interval(a, a + b)
        assert lo <= 0.5 <= hi, (q, a, b)
    p_vf, p_nl = r["p_voxfit"], r["p_nilearn"]
    se = np.sqrt(np.maximum(p_nl * (1 - p_nl), 1.0 / n_perm) * 2.0 / n_perm)
    assert np.all(np.abs(p_vf - p_nl) <= 4.0 * se + 2.0 / n_perm)
    assert np.sum(p_vf <= 0.05) > 0  # the effect is seen: the comparison covers small p too


@functools.cache
def mixed_null_rows():
    """20,000 null voxels per setting (20 subjects, s_i^2 log-uniform over [1, 10] per subject and voxel, exact):
    one-sample and covariates at tau2 0, 1, 4 (about the mean s_i^2) and 40; and the covariates design with the
    largest s_i^2 on the subjects of largest leverage, tau2 0."""
    mn = script("mixed_null")
    cases = mn.settings(layouts=("voxel",), tau2s=(0.0, 1.0, 4.0, 40.0), first_level_dofs=(None,))
    cases += [mn.Setting("covariates", "leverage", 0.0, None)]
    return mn.null_rates(
        20000, 20, seed=11, cases=cases, models=("mixed", "mixed-satt", "ols", "fixed"), alphas=(0.05,)
    )


def test_mixed_null_rate():
    """The 95% interval of the rate of p < 0.05 over 20,000 null voxels is 0.05 +- 0.003: a 10% bias (0.055)
    is seen. mixed (residual dof n - rank, FLAME1's) holds the nominal rate when tau2 dominates (40), is within 10%
    of it where tau2 is comparable to the s_i^2 (1, 4: measured on 100,000 voxels up to 8% high at tau2 4 with
    one pattern of s_i^2 for all voxels, validation/mixed_null.py), and is never liberal at tau2 = 0 (there it is
    conservative, ~0.035: the estimate is bounded at 0). With Satterthwaite dof it holds the rate at tau2 4 and 40.
    Reference: the nominal rate of a test of a true null hypothesis."""
    checked = 0
    for r in mixed_null_rows():
        s, lo, hi = r["setting"], *interval(r["count"], r["n"])
        if (
            s.layout != "voxel"
            or r["model"] not in ("mixed", "mixed-satt")
            or (s.tau2, r["model"]) == (1, "mixed-satt")
        ):
            continue  # (mixed-satt at tau2 1: conservative, 0.046, as at 0)
        if s.tau2 == 0:
            assert lo <= 0.05, r
        elif r["model"] == "mixed" and s.tau2 in (1.0, 4.0):
            assert lo <= 1.1 * 0.05 and hi >= 0.9 * 0.05, (r, lo, hi)
        else:
            assert lo <= 0.05 <= hi, (r, lo, hi)
        checked += 1
    assert checked == 14


def test_fixed_is_liberal_and_ols_too_when_variance_follows_leverage():
    """fixed effects ignore the between-subject variance: with tau2 > 0 its rate of p < 0.05 lies above the 95%
    interval (measured 0.08 at tau2 1, 0.35 at tau2 40). OLS holds the rate when the s_i^2 are drawn anew at every
    voxel, but is liberal when the largest first-level variances go with the covariate's largest leverage
    (measured 0.094), where mixed is not."""
    rows = mixed_null_rows()
    fixed = [r for r in rows if r["model"] == "fixed" and r["setting"].tau2 > 0]
    assert len(fixed) == 6
    for r in fixed:
        assert interval(r["count"], r["n"])[0] > 0.05, r
    for r in rows:
        lo, hi = interval(r["count"], r["n"])
        if r["setting"].layout == "leverage" and r["model"] == "ols":
            assert lo > 0.05, r
        elif r["setting"].layout == "leverage" and r["model"] == "mixed":
            assert lo <= 0.05, r
        elif r["model"] == "ols":
            assert lo <= 0.05 <= hi, r


def test_variance_groups_kenward_roger_against_flame1_dof():
    """validation/variance_groups.py at CI size, 40,000 null voxels per setting (the 95% interval of a rate of
    0.05 is about +-0.0021: a 10% bias is seen). With 4 variance groups of 5 sharing a between-subject variance
    comparable to the first-level ones (4), FLAME1's n - rank is liberal (10.2% on 100,000 voxels) and
    Kenward-Roger's within 10% of 5% (5.5%); in a two-sample test of 5 against 15 subjects whose small group varies
    more (tau2 40 against 4), n - rank gives 7.5% and Kenward-Roger holds 5%. Where the between-subject variance
    dominates (40) in groups of 5, Kenward-Roger stays liberal, at the README's 7.6% (n - rank 12.9%): the rate is
    within the 95% interval of the difference from that figure, drawn from other seeds. Reference: the nominal rate
    of a test of a true null hypothesis."""
    vg = script("variance_groups")
    cases = [
        vg.Setting("one-sample", (5,) * 4, (4.0,) * 4),
        vg.Setting("two-sample", (5, 15), (40.0, 4.0)),
        vg.Setting("one-sample", (5,) * 4, (40.0,) * 4),
    ]
    rows = vg.null_rates(40_000, seed=7, cases=cases, dofs=("residual", "kenward-roger"), alphas=(0.05,))
    by = {(r["setting"], r["dof"]): interval(r["count"], r["n"]) for r in rows}
    rate = {(r["setting"], r["dof"]): r["count"] / r["n"] for r in rows}
    comparable, behrens_fisher, dominant = cases
    for setting in cases:
        assert by[setting, "residual"][0] > 0.05, (setting, rate[setting, "residual"])
    lo, hi = by[comparable, "kenward-roger"]
    assert lo <= 1.1 * 0.05 and hi >= 0.9 * 0.05, rate[comparable, "kenward-roger"]
    lo, hi = by[behrens_fisher, "kenward-roger"]
    assert lo <= 0.05 <= hi, rate[behrens_fisher, "kenward-roger"]
    got = rate[dominant, "kenward-roger"]
    half = 1.96 * np.sqrt(got * (1 - got) * (1 / 40_000 + 1 / 100_000))
    assert abs(got - 0.07578) <= half, got
    assert got < rate[dominant, "residual"] - 0.03


def test_mixed_more_powerful_than_ols():
    """One-sample, 20 subjects, s_i^2 log-uniform over [1, 10] per subject and voxel, tau2 1, an effect of
    0.5 sqrt(mean s_i^2 + tau2) on 20,000 voxels: mixed finds it at p < 0.05 in ~78%, OLS in ~70% (each 95%
    interval about +-0.006: the intervals do not meet), while mixed's rate on null voxels of the same setting is
    not above nominal (so the gain is not a liberal test's)."""
    mp = script("mixed_power")
    setting = mp.null_module().Setting("one-sample", "voxel", 1.0, None)
    rows = mp.power_rates(20000, 20, effect=0.5, seed=5, cases=[setting], models=("mixed", "ols"), alphas=(0.05,))
    by = {(r["kind"], r["model"]): r for r in rows}
    mixed_lo, _ = interval(by["power", "mixed"]["count"], 20000)
    _, ols_hi = interval(by["power", "ols"]["count"], 20000)
    assert mixed_lo > ols_hi + 0.02, rows
    assert interval(by["null", "mixed"]["count"], 20000)[0] <= 0.05, rows


def test_mixed_outliers_table():
    """validation/mixed_outliers.py at CI size: 20 subjects, tau2 40 (where the plain mixed model holds the
    nominal rate), 8,000 voxels per setting (the 95% interval of a rate of 0.05 is about +-0.0048). Without
    outliers, mixed with outlier inference holds the nominal rate; with 10% of the subjects shifted down by
    20 sd, the plain mixed model and OLS are conservative (their estimate is biased down; measured 0.006) and
    lose their power (0.08 against 0.69 without outliers), while outlier inference keeps the rate within 15% of
    nominal (measured 0.052-0.055: the subjects found are still counted in the dof n - rank) and finds the
    effect in 0.66 of the voxels. Reference: the nominal rate of a test of a true null hypothesis."""
    mo = script("mixed_outliers")
    voxels = 8000
    cases = [mo.Setting(40.0, "none"), mo.Setting(40.0, "-20")]
    rows = mo.outlier_rates(voxels, 20, effect=0.5, seed=3, cases=cases, alphas=(0.05,))
    by = {(r["kind"], r["setting"].contamination, r["model"]): r for r in rows}
    lo, hi = interval(by["null", "none", "mixed+out"]["count"], voxels)
    assert lo <= 0.05 <= hi, by["null", "none", "mixed+out"]
    lo, hi = interval(by["null", "-20", "mixed+out"]["count"], voxels)
    assert lo <= 1.15 * 0.05 and hi >= 0.05, (lo, hi)
    for model in ("mixed", "ols"):
        assert interval(by["null", "-20", model]["count"], voxels)[1] < 0.05, by["null", "-20", model]
        assert by["power", "-20", model]["count"] < 0.2 * voxels
    power = interval(by["power", "-20", "mixed+out"]["count"], voxels)[0]
    assert power > interval(by["power", "-20", "mixed"]["count"], voxels)[1] + 0.3


def test_rft_null_fwe():
    """Random field theory on 300 null Gaussian fields of FWHM 3 voxels (32x32x24): voxel-level FWE at the
    RFT threshold and cluster-level FWE (cluster-forming p < 0.001) must not exceed 0.05 (the lower end of the
    95% interval at most 0.05; RFT is conservative at this smoothness, so no lower bound is checked)."""
    rft_null = script("rft_null")
    (row,) = rft_null.null_rates(fwhms=(3,), runs=300, shape=(32, 32, 24), seed=11)
    for key in ("voxel_hits", "cluster_hits"):
        lo, hi = interval(row[key], row["runs"])
        assert lo <= 0.05, (key, row, lo, hi)


def test_rft_on_runs_combined_by_fixed_effects_holds_its_fwe_rate():
    """validation/rft_runs_null.py at CI size: two runs of smooth null data (45 and 50 scans, at least
    voxfit.inference.rft_fit.FIXED_EFFECTS_DOF residual dof each; the second's noise twice the first's; 14^3
    voxels), combined by fixed effects as ``voxfit fit run1 run2 --inference rft`` does: the FWE rate at 0.05 of
    the field of the median dof is at most 5% (the 95% Clopper-Pearson interval's lower end below 0.05; 200
    realisations: it fails at 17 hits, 0.085, a gross failure; the bound itself rests on the script's larger
    runs). Measured with 1000: two runs of 45 scans 0.033, of 30 0.045, of 16 and 20 (refused) 0.061."""
    rows = script("rft_runs_null").null_rates(scans=((45, 50),), realisations=200, shape=(14, 14, 14), seed=2026)
    (row,) = rows
    assert interval(row["field_hits"], row["n"])[0] <= 0.05, row


def test_rft_on_a_mixed_effects_group_holds_its_fwe_rate():
    """validation/rft_group_null.py at CI size: 12 subjects' smooth null maps whose between-subject variance (10)
    outweighs their first-level variances (0.5 to 2), where the mixed model's z taken as a Z field was liberal
    (0.081 [0.065, 0.100] in the script's 1000 realisations; voxfit's field 0.042): the FWE rate at 0.05 of
    voxfit's field of the median dof is at most 5% (the 95% Clopper-Pearson interval's lower end below 0.05; 200
    realisations: it fails at 17 hits, 0.085, a gross failure; the bound itself rests on the script's 1000)."""
    rows = script("rft_group_null").null_rates((12,), (10.0,), realisations=200, shape=(14, 14, 14), seed=2026)
    (row,) = rows
    assert interval(row["field_hits"], row["n"])[0] <= 0.05, row


def test_fmri_default_noise_model_holds_on_realistic_noise():
    """The default noise model of fMRI runs (voxfit.models._routing.fmri_noise: AR(4) for the 300 scans of 600 s
    at TR 2 s) on 20,000 voxels of resting-state-like noise (1/f, AR, aliased cardiac and respiratory peaks;
    validation/noise_realistic.py), 30 s blocks: the 95% interval of its rate of p < 0.05 is about 0.05 +- 0.003,
    so a 10% bias is seen, and must hold 0.05; OLS in the same cell must be liberal (the interval above 0.05)."""
    from voxfit.models._routing import fmri_noise

    default = fmri_noise(300)
    nr = script("noise_realistic")
    rows = nr.rates(20000, designs=("block30",), trs=(2.0,), models=("ols", default), nilearn=False, alphas=(0.05,))
    rate = {r["model"]: r for r in rows}
    lo, hi = interval(rate[default]["count"], rate[default]["n"])
    assert lo <= 0.05 <= hi, (rate[default], lo, hi)
    assert interval(rate["ols"]["count"], rate["ols"]["n"])[0] > 0.05, rate["ols"]


def test_fmri_default_corrects_what_ar_models_miss_at_long_lags():
    """20 s blocks at TR 2 s (300 scans, AR(4) per voxel) on 20,000 voxels of resting-state-like noise: AR(4) alone
    over-states these voxels' variance by about 5% (over four draws of 20,000 voxels its rate of p < 0.05 was 0.0466,
    outside the interval; validation/results/noise_realistic.md), and the default's pooled long-lag correction
    (voxfit.core.long_lags) must shrink it by 2 to 10% (its factor) and hold 0.05 in its 95% interval, which is
    about 0.05 +- 0.003: a 10% bias is seen."""
    from voxfit.design.kinds import column_kinds
    from voxfit.models._routing import fmri_noise
    from voxfit.models.glm import fit_noise_model

    nr = script("noise_realistic")
    design = nr.task_design("block20", 2.0)
    names = list(design.names)
    rng = np.random.default_rng([0, 1, 2])
    masker, cube = nr.chunk_space(20000)
    coarse = nr.draw_parameters(rng, int(cube.max()) + 1)
    par = nr.NoiseParameters(*(getattr(coarse, k)[cube] for k in nr.NoiseParameters.__dataclass_fields__))
    Y = nr.simulate(rng, design.X.shape[0], 2.0, 20000, par) + 1000.0
    default = fmri_noise(300)
    fit = fit_noise_model(
        design.X, Y, names, [("task", "task")], default, kinds=column_kinds(design, names, design.X), tr=2.0
    )
    factor = fit.info["long_lags"]["variance_factors"]["task"]
    p = fit.contrasts["task"].p
    lo, hi = interval(int(np.sum(p < 0.05)), p.size)
    assert default == "ar4+lags" and 0.90 < factor < 0.98 and lo <= 0.05 <= hi, (factor, lo, hi)


def test_fmri_default_noise_model_holds_on_parcel_like_noise():
    """The same on noise as parcels' averaged series have it (validation/noise_realistic.py --regime parcel: the
    1/f and AR parts 10 and 3 times stronger, steeper spectra), where single-voxel models fail most: 14.4 min at
    TR 1 s (864 scans: the default is AR(12)), 30 s blocks, 8,000 voxels (two chunks of the script's 4,000): the
    95% interval of a rate of 0.05 is about 0.05 +- 0.0048, so a 10% bias is seen. The default's rate of p < 0.05
    must hold 0.05; AR(1)'s and OLS's must be liberal (their intervals above 0.05: measured about 0.097 and 0.23),
    as on the issue's real parcels. (Over ten seeds of 8,000 voxels the default's rate was 0.0436 to 0.0517, 0.0479
    pooled: about 4% conservative, so 1 seed in 10 misses 0.05 from below; at 20,000 voxels 3 of 10 seeds did.)"""
    from voxfit.models._routing import fmri_noise

    default = fmri_noise(864)
    nr = script("noise_realistic")
    rows = nr.rates(8000, ("block30",), (1.0,), ("ols", "ar1", default), False, (0.05,), 864.0, regime="parcel")
    rate = {r["model"]: r for r in rows}
    lo, hi = interval(rate[default]["count"], rate[default]["n"])
    assert default == "ar12+lags" and lo <= 0.05 <= hi, (rate[default], lo, hi)
    for liberal in ("ols", "ar1"):
        assert interval(rate[liberal]["count"], rate[liberal]["n"])[0] > 0.05, rate[liberal]


def test_realistic_noise_has_the_spectrum_asked_for():
    """The simulator's AR part against the AR(1) autocorrelation in closed form (white + AR(1) of variance a,
    coefficient exp(-TR / tau): lag-k correlation a rho^k / (1 + a)), and a cardiac peak's share of the variance,
    on 4,000 voxels (standard error of each correlation about 0.002)."""
    nr = script("noise_realistic")
    V, n, tr = 4000, 400, 1.0
    zero = np.zeros(V)
    par = nr.NoiseParameters(zero, zero, np.full(V, 0.8), np.full(V, 2.0), np.full(V, 1.1), zero, np.full(V, 0.3), zero)
    Y = nr.simulate(np.random.default_rng(1), n, tr, V, par)
    var = Y.var()
    rho = np.exp(-tr / 2.0)
    for k in (1, 2, 3):
        assert abs(np.mean(Y[k:] * Y[:-k]) / var - 0.8 * rho**k / 1.8) < 0.01
    assert abs(var - 1.8) < 0.05
    par = nr.NoiseParameters(zero, zero, zero, np.full(V, 2.0), np.full(V, 1.1), np.ones(V), np.full(V, 0.3), zero)
    assert abs(nr.simulate(np.random.default_rng(2), n, tr, V, par).var() - 2.0) < 0.05  # white 1 + cardiac 1
