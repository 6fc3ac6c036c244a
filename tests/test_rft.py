"""voxfit.inference.rft against SPM12's own functions under GNU Octave (tests/data/spm12_rft.*, README.md there),
FSL smoothest's algorithm written out as a loop, and a null simulation of smooth Gaussian fields."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from voxfit.exceptions import InputError
from voxfit.inference import label_clusters, rft, volume_adjacency

REF = np.load(Path(__file__).parent / "data" / "spm12_rft.npz")
RTOL = 1e-6
N, DOF, DF = 20, 18, (1, 18)
CASES = {1: ("T", DF, 1), 2: ("Z", None, 1), 3: ("F", (2, 18), 1), 4: ("T", DF, 2)}


def _close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def smooth():
    products = rft.gradient_products(REF["residuals"], REF["mask"])
    return rft.estimate_smoothness(products, REF["mask"], REF["voxel_size"], n=N, dof=DOF)


def test_smoothness_equals_spm_est_smoothness(smooth):
    _close(smooth.fwhm, REF["fwhm"])
    _close(smooth.fwhm_mm, REF["fwhm"] * REF["voxel_size"])
    _close(smooth.resels, REF["resels"])
    np.testing.assert_array_equal(np.isnan(smooth.rpv), np.isnan(REF["rpv"]))
    assert 0 < np.isnan(smooth.rpv).sum() < smooth.rpv.size  # the mask's edges are exercised
    _close(smooth.rpv[np.isfinite(smooth.rpv)], REF["rpv"][np.isfinite(REF["rpv"])])
    assert smooth.n_voxels == REF["S"] and smooth.voxels_per_resel == pytest.approx(1 / REF["V2R"], rel=RTOL)


def test_smoothness_from_a_subset_of_standardised_residuals():
    """SPM's ResI images (e / sqrt(RSS / dof)), every other one, with ndf = [20 18]."""
    e = REF["residuals"]
    resi = e / np.sqrt((e**2).sum(axis=0) / DOF)
    products = rft.gradient_products(resi[::2] / math.sqrt(DOF), REF["mask"], normalised=True)
    s = rft.estimate_smoothness(products, REF["mask"], REF["voxel_size"], n=N, dof=DOF, n_maps=10)
    _close(s.fwhm, REF["fwhm_sub"])
    _close(s.resels, REF["resels_sub"])
    _close(s.rpv[np.isfinite(s.rpv)], REF["rpv_sub"][np.isfinite(REF["rpv_sub"])])


def test_neighbour_sums_in_blocks_give_the_same_products():
    e, mask = REF["residuals"], REF["mask"]
    direct = rft.gradient_products(e, mask)
    sums = rft.NeighbourSums.zeros(e.shape[1])
    for start in range(0, N, 6):  # blocks of scans, as a streamed fit sees them
        sums = sums + rft.NeighbourSums.from_residuals(e[start : start + 6], mask)
    assert sums.n_maps == N
    from_sums = rft.gradient_products_from_sums(sums, mask)
    np.testing.assert_array_equal(np.isnan(from_sums), np.isnan(direct))
    _close(from_sums[np.isfinite(direct)], direct[np.isfinite(direct)], rtol=0, atol=1e-12)


def test_gradient_products_match_a_brute_force_loop():
    """SPM's rule written out: forward differences of normalised residuals, 0 on the grid's last plane, NaN unless
    the 8 voxels v + {0,1}^3 are in the mask."""
    rng = np.random.default_rng(5)
    mask = rng.random((5, 4, 3)) > 0.15
    V = int(mask.sum())
    e = rng.standard_normal((7, V))
    grid = np.full((7,) + mask.shape, np.nan)
    coords = np.argwhere(mask.transpose(2, 1, 0))[:, ::-1]  # (x, y, z) in x-fastest order
    for v, (x, y, z) in enumerate(coords):
        grid[:, x, y, z] = e[:, v] / np.sqrt((e[:, v] ** 2).sum())
    expected = np.full((V, 6), np.nan)
    for v, (x, y, z) in enumerate(coords):
        step = [int(x < 4), int(y < 3), int(z < 2)]
        corners = [
            grid[0, x + a * step[0], y + b * step[1], z + c * step[2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)
        ]
        if not np.all(np.isfinite(corners)):
            continue
        here = grid[:, x, y, z]
        d = [grid[:, x + step[0], y, z] - here, grid[:, x, y + step[1], z] - here, grid[:, x, y, z + step[2]] - here]
        expected[v] = [np.sum(d[a] * d[b]) for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
    got = rft.gradient_products(e, mask)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    _close(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=1e-12)


def test_resel_counts_equal_spm_resels_vol():
    _close(rft.resel_counts(REF["mask"], [1, 1, 1]), REF["resels_unit"])
    _close(rft.resel_counts(REF["mask"], [2.5, 3, 4]), REF["resels_aniso"])
    cube = np.ones((3, 4, 5), bool)  # a box: R = [1, (2 + 3 + 4), (2*3 + 2*4 + 3*4), 2*3*4] for FWHM 1
    _close(rft.resel_counts(cube, [1, 1, 1]), [1, 9, 26, 24])


@pytest.mark.parametrize(
    ("kind", "dof", "u", "ec"),
    [
        ("Z", None, "ec_u_z", "ec_z"),
        ("T", (1, 10), "ec_u_t", "ec_t10"),
        ("T", (1, 40), "ec_u_t", "ec_t40"),
        ("F", (3, 20), "ec_u_f", "ec_f3_20"),
        ("F", (2, 50), "ec_u_f", "ec_f2_50"),
    ],
)
def test_ec_densities_equal_spm_ecdensity(kind, dof, u, ec):
    _close(rft.ec_densities(kind, REF[u], dof), REF[ec], atol=1e-15)


def test_p_rf_equals_spm_p_rf():
    for case, c, k, u, P, p, Ec, Ek in REF["prf"]:
        kind, dof, n = CASES[int(case)]
        got = rft.p_rf(int(c), k, u, dof, kind, REF["resels"], n=n)
        # SPM's P is 1 - (1 - P): its last digits are rounding below ~1e-16 absolute. For Z fields SPM's ρ0 is
        # 1 - (0.5 + 0.5 erf(u / √2)), which keeps ~4 digits at u = 7 (ρ0 = 1.3e-12); voxfit uses the exact tail,
        # so Ek and p (which follow ρ0) agree to 1e-3 there
        rtol = 1e-3 if kind == "Z" and u > 6 else RTOL
        _close([got.P, got.p, got.Ec, got.Ek], [P, p, Ec, Ek], rtol=rtol, atol=1e-15)
    for resels, key in (([1, 4, 9], "prf_2d"), ([1, 4], "prf_1d")):
        got = rft.p_rf(1, 0.2, 3.0, DF, "T", resels)
        _close([got.P, got.p, got.Ec, got.Ek], REF[key], atol=1e-15)


def test_height_thresholds_equal_spm_uc():
    for case, alpha, u_rf, u_spm in REF["uc"]:
        kind, dof, _ = CASES[int(case)]
        _close(rft.height_threshold(alpha, dof, kind, REF["resels"]), u_rf)
        _close(rft.height_threshold(alpha, dof, kind, REF["resels"], n_voxels=int(REF["S"])), u_spm)
    _close(rft.height_threshold(0.05, DF, "T", REF["resels"], 2, n_voxels=int(REF["S"])), REF["uc_conj"])


def test_peak_fwe_equals_spm_p_with_bonferroni():
    got = rft.p_peak_fwe(REF["peak_u"], DF, "T", REF["resels"], n_voxels=int(REF["S"]))
    _close(got, REF["peak_fwe"], atol=1e-15)


def test_cluster_and_set_level_equal_spm_list():
    mask, stat, ui = REF["mask"], REF["stat"], float(REF["ui"])
    clusters = label_clusters(stat, volume_adjacency(mask, mask.shape, connectivity=18), ui)  # spm_clusters: 18
    np.testing.assert_array_equal(np.sort(clusters.sizes), np.sort(REF["N"]))
    k = REF["N"] * REF["V2R"]
    got = rft.p_cluster(k, ui, DF, "T", REF["resels"])
    _close(got.P, REF["cluster_P"])
    _close(got.p, REF["cluster_p"])
    fdr = rft.cluster_fdr(k, ui, DF, "T", REF["resels"])
    _close(fdr.q, REF["cluster_q"])
    assert fdr.threshold == float(REF["cluster_fdr_u"]) and fdr.fwe_threshold == float(REF["cluster_fwe_u"])
    c = int(REF["N"].size)
    _close(rft.p_set(c, 0, ui, DF, "T", REF["resels"]), REF["set_p"])
    _close(rft.p_set(c, 2 * float(REF["V2R"]), ui, DF, "T", REF["resels"]), REF["set_p_k"])


def test_peak_fdr_equals_spm():
    got = rft.peak_fdr(REF["peaks"], float(REF["ui"]), DF, "T", REF["resels"])
    _close(got.q, REF["peak_q"])
    _close(got.threshold, REF["peak_fdr_u"])
    syn = rft.peak_fdr(REF["syn_z"], float(REF["ui"]), DF, "T", REF["resels"])
    _close(syn.p, REF["syn_zp"])
    _close(syn.q, REF["syn_zq"])
    syn = rft.cluster_fdr(REF["syn_k"], float(REF["ui"]), DF, "T", REF["resels"])
    _close(syn.p, REF["syn_kp"])
    _close(syn.q, REF["syn_kq"])


def test_fsl_smoothness_matches_its_algorithm_as_a_loop():
    """FSL smoothest's estimate (TR00DF1 eq. 21, as pTFCE's port describes it) computed voxel by voxel here."""
    e, mask = REF["residuals"], REF["mask"]
    got = rft.fsl_smoothness(rft.NeighbourSums.from_residuals(e, mask), mask, dof=DOF)
    grid = np.full((N,) + mask.shape, np.nan)
    coords = np.argwhere(mask.transpose(2, 1, 0))[:, ::-1]
    r = (e - e.mean(axis=0)) / e.std(axis=0, ddof=1)
    for v, (x, y, z) in enumerate(coords):
        grid[:, x, y, z] = r[:, v]
    ss, s2 = np.zeros(3), np.zeros(3)
    for x, y, z in coords:
        if min(x, y, z) < 1 or not (mask[x - 1, y, z] and mask[x, y - 1, z] and mask[x, y, z - 1]):
            continue
        here = grid[:, x, y, z]
        for a, back in enumerate((grid[:, x - 1, y, z], grid[:, x, y - 1, z], grid[:, x, y, z - 1])):
            ss[a] += np.sum(here * back)
            s2[a] += 0.5 * np.sum(here**2 + back**2)
    sigmasq = -1 / (4 * np.log(ss / s2))
    fwhm = np.sqrt(8 * np.log(2) * sigmasq)
    _close(got.sigmasq, sigmasq, rtol=1e-10)
    _close(got.fwhm, fwhm, rtol=1e-10)
    assert got.volume == mask.sum()
    _close(got.resels, np.prod(fwhm), rtol=1e-10)
    factor = math.sqrt(1.0721920)  # FSL's table at dof 18
    _close(got.dlh, np.prod(sigmasq) ** -0.5 / math.sqrt(8) * factor, rtol=1e-10)


def test_smoothness_of_gaussian_fields_is_recovered():
    """White noise smoothed with a Gaussian of FWHM 4 voxels: SPM's and FSL's estimates within 10%."""
    rng = np.random.default_rng(1)
    shape, pad, fwhm = (24, 24, 20), 12, 4.0
    mask = np.ones(shape, bool)
    maps = []
    for _ in range(30):
        field = ndimage.gaussian_filter(
            rng.standard_normal(tuple(s + 2 * pad for s in shape)), fwhm / math.sqrt(8 * math.log(2))
        )
        maps.append(field[pad:-pad, pad:-pad, pad:-pad].ravel(order="F"))
    e = np.stack(maps)
    e = e - e.mean(axis=0)
    spm = rft.estimate_smoothness(rft.gradient_products(e, mask), mask, (2, 2, 2), n=30, dof=29)
    np.testing.assert_allclose(spm.fwhm, fwhm, rtol=0.1)
    fsl = rft.fsl_smoothness(rft.NeighbourSums.from_residuals(e, mask), mask, dof=29)
    np.testing.assert_allclose(fsl.fwhm, fwhm, rtol=0.1)


def test_null_gaussian_fields_fwe_rate_at_the_rft_threshold():
    """Voxel-level FWE at the RFT threshold (alpha 0.05) on Z fields of FWHM 3 voxels: the rate is not above 5%
    (the lower end of its 95% Clopper-Pearson interval is at most 0.05)."""
    rng = np.random.default_rng(2026)
    shape, pad, fwhm, runs = (32, 32, 24), 10, 3.0, 300
    sigma = fwhm / math.sqrt(8 * math.log(2))
    mask = np.ones(shape, bool)
    resels = rft.resel_counts(mask, [fwhm] * 3)
    u = rft.height_threshold(0.05, None, "Z", resels)
    hits = 0
    for _ in range(runs):
        field = ndimage.gaussian_filter(rng.standard_normal(tuple(s + 2 * pad for s in shape)), sigma)
        field = field[pad:-pad, pad:-pad, pad:-pad]
        hits += field.max() / field.std() > u  # unit variance: the kernel's norm, up to sampling
    low = stats.binomtest(int(hits), runs).proportion_ci(0.95).low
    assert low <= 0.05, f"{hits}/{runs} fields exceed u = {u:.3f}"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rft.gradient_products(np.zeros((3, 10)), np.ones(10, bool)), "surface meshes"),
        (lambda: rft.gradient_products(np.zeros((3, 9)), np.ones((2, 5, 1), bool)), "shape \\(n_maps, 10\\)"),
        (lambda: rft.gradient_products(np.zeros((3, 8)), np.ones((2, 2, 2), bool), normalised="yes"), "normalised"),
        (lambda: rft.estimate_smoothness(np.zeros((8, 6)), np.ones((2, 2, 2)), (2, 2), n=5, dof=3), "voxel_size"),
        (lambda: rft.estimate_smoothness(np.zeros((8, 6)), np.ones((2, 2, 2)), (2, 2, 2), n=5, dof=6), "`dof`"),
        (lambda: rft.estimate_smoothness(np.zeros((7, 6)), np.ones((2, 2, 2)), (2, 2, 2), n=5, dof=3), "products"),
        (lambda: rft.estimate_smoothness(np.zeros((4, 6)), np.ones((1, 4, 1)), (2, 2, 2), n=5, dof=3), "first 1"),
        (lambda: rft.ec_densities("t", 3.0, 10), "`kind`"),
        (lambda: rft.ec_densities("T", 3.0, None), "`dof`"),
        (lambda: rft.ec_densities("F", 3.0, (2, -1)), "`dof`"),
        (lambda: rft.p_rf(1, 0, 3.0, DF, "T", [0, 0, 0, 0]), "`resels`"),
        (lambda: rft.p_rf(1, -1, 3.0, DF, "T", [1, 2, 3, 4]), "`k`"),
        (lambda: rft.p_rf(1, 0, 3.0, DF, "T", [1, 2, 3, 4], n=0), "`n`"),
        (lambda: rft.height_threshold(1.5, DF, "T", [1, 2, 3, 4]), "`alpha`"),
        (lambda: rft.resel_counts(np.ones((2, 2, 2)), [1, 0, 1]), "`fwhm`"),
        (lambda: rft.peak_fdr([4.0], 3.0, DF, "T", [1, 2, 3, 4], q=2), "`q`"),
        (lambda: rft.fsl_smoothness(rft.NeighbourSums.zeros(3), np.ones((2, 2, 2)), dof=5), "NeighbourSums"),
    ],
)
def test_bad_input_is_refused_in_one_sentence(call, match):
    with pytest.raises(InputError, match=match):
        call()
