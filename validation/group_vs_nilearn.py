"""One-sample group permutation test: voxfit against nilearn on the same data and number of sign-flips.

    python validation/group_vs_nilearn.py [--subjects 40] [--shape 40 48 36] [--n-perm 2000]
                                          [--n-perm-tfce 200] [--effect 1.2] [--seed 0]

Data: 40 subjects on a 40x48x36 grid inside an ellipsoid mask (~26k voxels, semi-axes 0.45 of the grid);
each map is white noise smoothed with a Gaussian (sigma 1.5 voxels) and rescaled to unit variance, plus a
Gaussian blob (sigma 3 voxels, peak `--effect`) so that some voxels are significant. float64 throughout.
Random streams: data np.random.default_rng([seed, 0]), voxfit's flips [seed, 1], nilearn random_state seed+1..3.

nilearn draws `n_perm` random sign-flips and puts the observed t in the count: p = (1 + #{null >= t}) / (n_perm + 1).
voxfit counts the identity among its N shuffles: p = #{shuffles >= t} / N. So voxfit runs with N = n_perm + 1
(n_perm random flips plus the identity each) and the two p formulas are the same. Settings matched for TFCE
(read from nilearn/mass_univariate/_utils.py calculate_tfce and permuted_least_squares.py): one-sided (positive
t only), E = 0.5, H = 2, face (6-) connectivity (generate_binary_structure(3, 1)), TFCE of the raw t map (no
standardisation), a voxel belongs to the clusters at heights h <= t. nilearn sums e(h)^E h^H over 100 heights
h_k = k max(t) / 100 *without* multiplying by dh (as fslmaths); each map (observed and each null map) gets its own
dh. voxfit integrates exactly. We compare voxfit's TFCE with nilearn's times dh = max(t) / 100, and, as a check
of voxfit's exact integral, with nilearn's calculate_tfce at 1000 heights times its dh.

Reported: max |t difference|; quantiles and a KS test of the null max-t distributions; FWE p maps of
voxfit, nilearn permuted_ols and nilearn non_parametric_inference (the last two are independent nilearn runs,
whose difference shows the Monte-Carlo spread); the same for TFCE. ``max_t_nulls`` returns the max-t part's
numbers, for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


def simulate(rng, n, shape, sigma, effect):
    from scipy.ndimage import gaussian_filter

    grid = np.indices(shape, dtype=float)
    c = (np.array(shape) - 1) / 2
    radii = 0.45 * np.array(shape)
    mask = sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, radii)) <= 1
    delta = np.zeros((25, 25, 25))
    delta[12, 12, 12] = 1
    scale = np.sqrt((gaussian_filter(delta, sigma) ** 2).sum())  # sd of smoothed unit white noise
    blob_centre = c + np.array([0.2, 0.15, 0.1]) * np.array(shape)
    blob = effect * np.exp(-sum((g - b) ** 2 for g, b in zip(grid, blob_centre)) / (2 * 3.0**2))
    data = np.empty(shape + (n,))
    for s in range(n):
        data[..., s] = gaussian_filter(rng.standard_normal(shape), sigma) / scale + blob
    return mask, data


def one_sample_t(Y):
    return Y.mean(axis=0) / (Y.std(axis=0, ddof=1) / np.sqrt(Y.shape[0]))


def p_compare(name, pa, pb, n_null, rows):
    """Max |difference|, voxels differing by > 4 Monte-Carlo se, and FWE p < 0.05 counts."""
    pbar = (pa + pb) / 2
    se = np.sqrt(pbar * (1 - pbar) / n_null)
    diff = np.abs(pa - pb)
    big = int(np.sum(diff > 4 * np.maximum(se, 1e-300)))
    rows.append(f"{name:<38}{diff.max():>10.4f}{big:>10d}{int((pa < 0.05).sum()):>9d}{int((pb < 0.05).sum()):>9d}")


def max_t_nulls(subjects=20, shape=(12, 12, 10), sigma=1.5, effect=0.0, n_perm=20000, seed=0, n_jobs=1):
    """One-sample max-t sign-flip test by voxfit and by nilearn's permuted_ols on the same data (as in main):
    ``{"t_voxfit", "t_nilearn" (voxfit's voxel order), "null_voxfit", "null_nilearn" (n_perm random flips
    each; voxfit's identity left out), "p_voxfit", "p_nilearn" (FWE p maps)}``."""
    from nilearn.mass_univariate import permuted_ols

    from voxfit.inference import permutation_test

    mask, data = simulate(np.random.default_rng([seed, 0]), subjects, tuple(shape), sigma, effect)
    number = np.zeros(shape, dtype=np.int64)
    number[mask] = np.arange(int(mask.sum()))
    to_vf = number.ravel(order="F")[mask.ravel(order="F")]
    Y_nl = data[mask].T
    Y = np.ascontiguousarray(Y_nl[:, to_vf])
    ones = np.ones((subjects, 1))
    vf = permutation_test(
        ones, Y, [1.0], n_permutations=n_perm + 1, seed=np.random.default_rng([seed, 1]), n_jobs=n_jobs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nl = permuted_ols(
            tested_vars=ones,
            target_vars=Y_nl,
            model_intercept=False,
            n_perm=n_perm,
            two_sided_test=False,
            output_type="dict",
            random_state=seed + 1,
            n_jobs=n_jobs,
        )
    return {
        "t_voxfit": vf.stat,
        "t_nilearn": nl["t"].ravel()[to_vf],
        "null_voxfit": vf.null_max[1:],
        "null_nilearn": np.ravel(nl["h0_max_t"]),
        "p_voxfit": vf.p_fwe,
        "p_nilearn": 10.0 ** -nl["logp_max_t"].ravel()[to_vf],
    }


def main(argv=None) -> int:
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference
    from nilearn.mass_univariate import permuted_ols
    from nilearn.mass_univariate._utils import calculate_tfce
    from scipy import stats
    from scipy.ndimage import generate_binary_structure

    from voxfit.inference import make_shuffles, permutation_test, tfce_max
    from voxfit.inference.graph import volume_adjacency

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 48, 36])
    ap.add_argument("--sigma", type=float, default=1.5)
    ap.add_argument("--effect", type=float, default=1.2)
    ap.add_argument("--n-perm", type=int, default=2000, help="random sign-flips for max-t (nilearn n_perm)")
    ap.add_argument("--n-perm-tfce", type=int, default=200, help="random sign-flips for TFCE")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    shape, n, N = tuple(args.shape), args.subjects, args.n_perm
    flip_rng = lambda: np.random.default_rng([args.seed, 1])  # noqa: E731  (data: [seed, 0]; independent streams)
    mask, data = simulate(np.random.default_rng([args.seed, 0]), n, shape, args.sigma, args.effect)
    V = int(mask.sum())
    # nilearn orders masked voxels as data[mask] (z fastest); voxfit as the x-fastest flat index
    number = np.zeros(shape, dtype=np.int64)
    number[mask] = np.arange(V)
    to_vf = number.ravel(order="F")[mask.ravel(order="F")]  # nilearn index of each voxfit element
    Y_nl = data[mask].T  # (n, V), nilearn order
    Y = np.ascontiguousarray(Y_nl[:, to_vf])
    affine = np.eye(4)
    imgs = [nib.Nifti1Image(data[..., s], affine) for s in range(n)]
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    design = pd.DataFrame({"intercept": np.ones(n)})
    unmask = lambda img: np.asarray(img.get_fdata())[mask][to_vf]  # noqa: E731
    print(
        f"{n} subjects, grid {shape}, {V} voxels in mask, smoothing sigma {args.sigma}, effect {args.effect}; "
        f"{N} random sign-flips (voxfit N = {N + 1} with the identity); seed {args.seed}"
    )

    timings = {}
    t0 = time.perf_counter()
    vf = permutation_test(np.ones((n, 1)), Y, [1.0], n_permutations=N + 1, seed=flip_rng(), n_jobs=2)
    timings["voxfit max-t"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nl = permuted_ols(
        tested_vars=np.ones((n, 1)),
        target_vars=Y_nl,
        model_intercept=False,
        n_perm=N,
        two_sided_test=False,
        output_type="dict",
        random_state=args.seed + 1,
        n_jobs=2,
    )
    timings["nilearn permuted_ols"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    npi = non_parametric_inference(
        imgs,
        design_matrix=design,
        second_level_contrast="intercept",
        mask=mask_img,
        n_perm=N,
        two_sided_test=False,
        random_state=args.seed + 2,
        n_jobs=2,
    )
    timings["nilearn non_parametric_inference"] = time.perf_counter() - t0

    t_nl = nl["t"].ravel()[to_vf]
    null_vf, null_nl = vf.null_max[1:], np.ravel(nl["h0_max_t"])
    p_nl = 10.0 ** -nl["logp_max_t"].ravel()[to_vf]
    p_npi = 10.0 ** -unmask(npi)
    print(f"\nmax |t voxfit - t nilearn| = {np.abs(vf.stat - t_nl).max():.3g}  (max t = {vf.stat.max():.3f})")
    print(f"\nnull distribution of max t ({null_vf.size} voxfit, {null_nl.size} nilearn random flips)")
    print(f"{'quantile':<10}{'voxfit':>10}{'nilearn':>10}")
    for q in (0.5, 0.9, 0.95, 0.99):
        print(f"{q:<10}{np.quantile(null_vf, q):>10.3f}{np.quantile(null_nl, q):>10.3f}")
    print(f"two-sample Kolmogorov-Smirnov p = {stats.ks_2samp(null_vf, null_nl).pvalue:.3f}")
    print(f"\nFWE p maps (N = {N + 1}; '>4se': voxels with |diff| > 4 sqrt(p(1-p)/N), p the mean of the two)")
    rows = [f"{'A vs B':<38}{'max|dp|':>10}{'>4se':>10}{'A p<.05':>9}{'B p<.05':>9}"]
    p_compare("voxfit vs permuted_ols", vf.p_fwe, p_nl, N + 1, rows)
    p_compare("voxfit vs non_parametric_inf.", vf.p_fwe, p_npi, N + 1, rows)
    p_compare("permuted_ols vs non_param._inf.", p_nl, p_npi, N + 1, rows)
    print("\n".join(rows))

    # TFCE
    Nt = args.n_perm_tfce
    adjacency = volume_adjacency(mask, shape, 6)
    t0 = time.perf_counter()
    vft = permutation_test(
        np.ones((n, 1)),
        Y,
        [1.0],
        n_permutations=Nt + 1,
        seed=flip_rng(),
        adjacency=adjacency,
        tfce=True,
        tfce_E=0.5,
        tfce_H=2.0,
        n_jobs=2,
    )
    timings["voxfit TFCE"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    npt = non_parametric_inference(
        imgs,
        design_matrix=design,
        second_level_contrast="intercept",
        mask=mask_img,
        n_perm=Nt,
        two_sided_test=False,
        random_state=args.seed + 3,
        n_jobs=2,
        tfce=True,
    )
    timings["nilearn TFCE"] = time.perf_counter() - t0
    tf_vf, tf_nl = vft.tfce, unmask(npt["tfce"])
    t_map = np.zeros(shape)
    t_map[mask] = vft.stat[np.argsort(to_vf)]
    dh = t_map.max() / 100
    bin6 = generate_binary_structure(3, 1)
    fine = calculate_tfce(t_map[..., None], bin6, E=0.5, H=2, dh=t_map.max() / 1000, two_sided_test=False)[..., 0][
        mask
    ][to_vf] * (t_map.max() / 1000)
    top = tf_vf > 0.1 * tf_vf.max()
    rel = lambda a: np.max(np.abs(a[top] - tf_vf[top]) / tf_vf[top])  # noqa: E731
    print(
        f"\nTFCE maps (E 0.5, H 2, 6-connectivity; {int(top.sum())} voxels above 10% of voxfit's max {tf_vf.max():.1f})"
    )
    print(f"max |t voxfit - t nilearn (TFCE run)| = {np.abs(vft.stat - unmask(npt['t'])).max():.3g}")
    print(f"{'comparison':<46}{'corr':>10}{'max rel diff':>14}")
    print(f"{'voxfit vs nilearn raw (no dh)':<46}{np.corrcoef(tf_vf, tf_nl)[0, 1]:>10.6f}{rel(tf_nl):>14.4f}")
    print(
        f"{'voxfit vs nilearn x dh (100 heights)':<46}{np.corrcoef(tf_vf, tf_nl * dh)[0, 1]:>10.6f}"
        f"{rel(tf_nl * dh):>14.4f}"
    )
    print(
        f"{'voxfit vs calculate_tfce x dh (1000 heights)':<46}{np.corrcoef(tf_vf, fine)[0, 1]:>10.6f}{rel(fine):>14.5f}"
    )
    print(f"\nTFCE FWE p maps (N = {Nt + 1})")
    rows = [f"{'A vs B':<38}{'max|dp|':>10}{'>4se':>10}{'A p<.05':>9}{'B p<.05':>9}"]
    p_compare("voxfit vs non_parametric_inf.", vft.p_tfce_fwe, 10.0 ** -unmask(npt["logp_max_tfce"]), Nt + 1, rows)
    p_compare("max-t p: voxfit vs non_param.", vft.p_fwe, 10.0 ** -unmask(npt["logp_max_t"]), Nt + 1, rows)
    print("\n".join(rows))

    # the same sign-flips as voxfit, recomputed here: voxfit's null maxima, and nilearn's TFCE statistic on them
    signs = make_shuffles("flip", np.ones((n, 1)), Nt + 1, seed=flip_rng()).signs.astype(float)
    t0 = time.perf_counter()
    t_null = np.array([one_sample_t(s[:, None] * Y) for s in signs])  # row 0: identity
    exact = tfce_max(t_null, adjacency)
    nl_raw, nl_dh = np.empty(Nt + 1), np.empty(Nt + 1)
    for b, row in enumerate(t_null):
        t_map[mask] = row[np.argsort(to_vf)]
        nl_raw[b] = calculate_tfce(t_map[..., None], bin6, two_sided_test=False).max()
        nl_dh[b] = nl_raw[b] * t_map.max() / 100
    timings["recomputed nulls"] = time.perf_counter() - t0
    rel_null = lambda a, b: np.max(np.abs(a - b) / np.abs(b))  # noqa: E731
    print(f"\nvoxfit's own {Nt + 1} sign-flips recomputed here (one-sample t, voxfit.inference.tfce_max):")
    print(f"  max rel |null_max - recomputed max t|    = {rel_null(vft.null_max, t_null.max(axis=1)):.3g}")
    print(f"  max rel |null_tfce - recomputed max TFCE| = {rel_null(vft.null_tfce, exact):.3g}")
    print("TFCE FWE p over those same flips, observed map and null maxima from one definition of TFCE:")
    rows = [f"{'A vs B':<38}{'max|dp|':>10}{'>4se':>10}{'A p<.05':>9}{'B p<.05':>9}"]
    for label, null, obs in (
        ("nilearn 100 steps, no dh", nl_raw, tf_nl),
        ("nilearn 100 steps x dh", nl_dh, tf_nl * dh),
    ):
        p = (np.sum(null[1:, None] >= obs[None, :] * (1 - 1e-10), axis=0) + 1) / (Nt + 1)
        p_compare(f"voxfit vs {label}", vft.p_tfce_fwe, p, Nt + 1, rows)
    print("\n".join(rows))
    print("\nrun times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
