"""Family-wise error of voxfit's permutation inference on null group studies (one-sample sign-flips).

    python validation/group_null_fwe.py [--studies 400] [--subjects 20] [--shape 32 32 24] [--n-perm 1000]
                                        [--cluster-threshold 3.0] [--seed 0] [--processes 1]

Each study: 20 subjects on a 32x32x24 grid inside an ellipsoid mask (semi-axes 0.45 of the grid, ~9.4k voxels);
each subject's map is white noise smoothed with a Gaussian (sigma 1.5 voxels) and rescaled to unit variance,
with no effect. voxfit.inference.permutation_test(ones, Y, [1]) with 1000 sign-flips (the identity included),
6-connectivity, cluster-forming threshold t > 3.0 (df 19: one-sided p ~ 0.0037), TFCE with E 0.5, H 2. Study k
draws its data from np.random.default_rng([seed + k, 0]) and its flips from default_rng([seed + k, 1]). A study
is a family-wise false positive for a method when any voxel (max-t, TFCE) or any cluster (extent, mass) has
FWE p <= 0.05 (p is a multiple of 1/N with N shuffles: "< 0.05" would test the level 0.05 - 1/N, 0.04 for
N = 100). The rate over the studies should lie in the central 95% range of Binomial(studies, 0.05) / studies
(exact binomial quantiles); the Clopper-Pearson interval of each observed rate is printed too.

Runs the studies one after another, voxfit using both CPUs (threads); with --processes P, P studies run at once,
each single-threaded. ``run_studies`` returns the numbers, for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

METHODS = ("max-t", "cluster extent", "cluster mass", "TFCE")
_SETUP = {}


def make_mask(shape):
    grid = np.indices(shape, dtype=float)
    c = (np.array(shape) - 1) / 2
    radii = 0.45 * np.array(shape)
    return sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, radii)) <= 1


def setup(shape, n, sigma, n_perm, threshold, n_jobs):
    from scipy.ndimage import gaussian_filter

    from voxfit.inference.graph import volume_adjacency

    if n_jobs == 1:
        import numba

        numba.set_num_threads(1)
    mask = make_mask(shape)
    delta = np.zeros((25, 25, 25))
    delta[12, 12, 12] = 1
    scale = np.sqrt((gaussian_filter(delta, sigma) ** 2).sum())
    _SETUP.update(
        shape=shape,
        n=n,
        sigma=sigma,
        n_perm=n_perm,
        threshold=threshold,
        n_jobs=n_jobs,
        mask=mask,
        flat=mask.ravel(order="F"),
        scale=scale,
        adjacency=volume_adjacency(mask, shape, 6),
    )


def study(seed):
    """One null study: (any FWE p <= 0.05 per method, voxel-wise fraction of uncorrected p <= 0.05)."""
    from scipy.ndimage import gaussian_filter

    from voxfit.inference import permutation_test

    S = _SETUP
    rng = np.random.default_rng([seed, 0])
    Y = np.empty((S["n"], int(S["flat"].sum())))
    for s in range(S["n"]):
        smooth = gaussian_filter(rng.standard_normal(S["shape"]), S["sigma"]) / S["scale"]
        Y[s] = smooth.ravel(order="F")[S["flat"]]  # voxfit's element order: x fastest
    r = permutation_test(
        np.ones((S["n"], 1)),
        Y,
        [1.0],
        n_permutations=S["n_perm"],
        scheme="flip",
        seed=np.random.default_rng([seed, 1]),
        adjacency=S["adjacency"],
        cluster_threshold=S["threshold"],
        tfce=True,
        tfce_E=0.5,
        tfce_H=2.0,
        n_jobs=S["n_jobs"],
    )
    c = r.clusters
    hits = (
        bool(np.nanmin(r.p_fwe) <= 0.05),
        bool(c.p_extent.size and c.p_extent.min() <= 0.05),
        bool(c.p_mass.size and c.p_mass.min() <= 0.05),
        bool(np.nanmin(r.p_tfce_fwe) <= 0.05),
    )
    return hits, float(np.mean(r.p_uncorrected <= 0.05)), float(np.quantile(r.null_max, 0.95))


def run_studies(
    studies=400,
    subjects=20,
    shape=(32, 32, 24),
    sigma=1.5,
    n_perm=1000,
    threshold=3.0,
    seed=0,
    processes=1,
    progress=False,
    n_jobs=None,
):
    """Run `studies` null studies; returns ``{"hits": (studies, 4) bool array (any FWE p <= 0.05 per method in
    METHODS), "uncorrected": fraction of voxels with p <= 0.05 per study, "q95": 95th percentile of each study's
    null max t, "seconds": run time}`` (study k uses seed + k, see the module docstring). `n_jobs`: voxfit's
    threads per study (default: every CPU when one process runs the studies, else 1)."""
    if n_jobs is None:
        n_jobs = 1 if processes > 1 else len(os.sched_getaffinity(0))
    init = (tuple(shape), subjects, sigma, n_perm, threshold, n_jobs)
    t0 = time.perf_counter()
    seeds = [seed + k for k in range(studies)]
    if processes > 1:
        with ProcessPoolExecutor(processes, initializer=setup, initargs=init) as pool:
            results = list(pool.map(study, seeds))
    else:
        setup(*init)
        results = []
        for k, s in enumerate(seeds):
            results.append(study(s))
            if progress and (k + 1) % max(1, studies // 10) == 0:
                print(f"  {k + 1}/{studies} studies, {time.perf_counter() - t0:.0f} s", flush=True)
    return {
        "hits": np.array([r[0] for r in results]),
        "uncorrected": np.array([r[1] for r in results]),
        "q95": np.array([r[2] for r in results]),
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    from scipy import stats

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 32, 24])
    ap.add_argument("--sigma", type=float, default=1.5)
    ap.add_argument("--n-perm", type=int, default=1000, help="shuffles per study, the identity included")
    ap.add_argument("--cluster-threshold", type=float, default=3.0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=1, help="studies run at once (each single-threaded if > 1)")
    args = ap.parse_args(argv)
    shape, n, K, alpha = tuple(args.shape), args.subjects, args.studies, args.alpha
    n_jobs = 1 if args.processes > 1 else len(os.sched_getaffinity(0))
    V = int(make_mask(shape).sum())
    p_thr = stats.t.sf(args.cluster_threshold, n - 1)
    print(
        f"{K} null studies: {n} subjects, grid {shape}, {V} voxels, sigma {args.sigma}; {args.n_perm} sign-flips; "
        f"cluster threshold t > {args.cluster_threshold} (df {n - 1}, one-sided p {p_thr:.4f}); TFCE E 0.5 H 2; "
        f"6-connectivity; seeds {args.seed}..{args.seed + K - 1}; {args.processes} process(es) x {n_jobs} thread(s)"
    )
    res = run_studies(
        K, n, shape, args.sigma, args.n_perm, args.cluster_threshold, args.seed, args.processes, progress=True
    )
    hits, elapsed = res["hits"], res["seconds"]
    lo, hi = stats.binom.ppf(0.025, K, alpha), stats.binom.ppf(0.975, K, alpha)
    print(
        f"\nrate of studies with any FWE p <= {alpha}; nominal {alpha}, central 95% of Binomial({K}, {alpha}) / {K}: "
        f"[{lo / K:.3f}, {hi / K:.3f}] ({int(lo)}..{int(hi)} studies)"
    )
    print(f"{'method':<16}{'studies':>9}{'rate':>8}{'Clopper-Pearson 95%':>22}{'inside':>8}")
    for j, name in enumerate(METHODS):
        k = int(hits[:, j].sum())
        ci = stats.binomtest(k, K).proportion_ci(0.95, method="exact")
        inside = "yes" if lo <= k <= hi else "NO"
        print(f"{name:<16}{k:>9d}{k / K:>8.3f}{f'[{ci.low:.3f}, {ci.high:.3f}]':>22}{inside:>8}")
    unc, q95 = res["uncorrected"], res["q95"]
    print(f"\nmean fraction of voxels with uncorrected p <= 0.05: {unc.mean():.4f} (expected ~0.05)")
    print(
        f"max-t FWE threshold (95th percentile of null max t), mean over studies: {q95.mean():.3f} "
        f"(range {q95.min():.3f}..{q95.max():.3f})"
    )
    print(f"any-method overlap: {int(hits.any(axis=1).sum())} studies with at least one method positive")
    print(f"run time {elapsed:.0f} s ({elapsed / K:.2f} s per study)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
