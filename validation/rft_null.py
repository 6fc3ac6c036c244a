"""Family-wise error of SPM12's random field theory (voxfit.inference.rft) on null Gaussian fields.

    python validation/rft_null.py [--fwhm 2 3 4 6 8] [--runs 500] [--shape 64 64 48] [--seed 0]

For each FWHM (voxels): white noise on the grid padded by 1.5 FWHM + 2 voxels a side, smoothed with a Gaussian
of that FWHM (scipy.ndimage.gaussian_filter), cropped, and divided by the kernel's norm (unit variance). The
smoothness is estimated as SPM does (gradient_products + estimate_smoothness) from 20 independent fields taken
as the residuals of a model with 20 scans and 19 degrees of freedom (centred), giving the resel counts of the
box; then `runs` independent fields are tested:
- voxel level: a false positive when the field's maximum exceeds the FWE threshold at 0.05 (height_threshold,
  SPM's spm_uc with the Bonferroni bound over the voxels);
- cluster level: clusters of voxels with Z > 3.09 (p < 0.001, 18-connectivity as spm_clusters); a false positive
  when any cluster has FWE p <= 0.05 (p_cluster, its size in resels N / prod(FWHM) as spm_list).
Each rate should be <= 0.05: its 95% Clopper-Pearson interval is printed; RFT is known to be conservative for
the voxel level at low smoothness (Hayasaka & Nichols 2003, NeuroImage 20:2343).
``null_rates`` returns the rows, for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def _field(rng, shape, fwhm, scale):
    from scipy.ndimage import gaussian_filter

    pad = int(math.ceil(1.5 * fwhm)) + 2
    noise = rng.standard_normal(tuple(s + 2 * pad for s in shape))
    return gaussian_filter(noise, fwhm / math.sqrt(8 * math.log(2)))[pad:-pad, pad:-pad, pad:-pad] / scale


def _kernel_norm(fwhm):
    from scipy.ndimage import gaussian_filter

    size = 2 * int(math.ceil(3 * fwhm)) + 1
    delta = np.zeros((size,) * 3)
    delta[(size // 2,) * 3] = 1.0
    return float(np.sqrt((gaussian_filter(delta, fwhm / math.sqrt(8 * math.log(2))) ** 2).sum()))


def null_rates(fwhms=(2, 3, 4, 6, 8), runs=500, shape=(64, 64, 48), seed=0, alpha=0.05, cluster_p=0.001):
    from scipy import stats

    from voxfit.inference import label_clusters, rft, volume_adjacency

    mask = np.ones(shape, bool)
    adjacency = volume_adjacency(mask, shape, connectivity=18)
    u_cluster = float(stats.norm.isf(cluster_p))
    rows = []
    for i, fwhm in enumerate(fwhms):
        rng = np.random.default_rng([seed, i])
        scale = _kernel_norm(fwhm)
        residuals = np.stack([_field(rng, shape, fwhm, scale).ravel(order="F") for _ in range(20)])
        residuals -= residuals.mean(axis=0)
        smooth = rft.estimate_smoothness(rft.gradient_products(residuals, mask), mask, (1, 1, 1), n=20, dof=19)
        u = rft.height_threshold(alpha, None, "Z", smooth.resels, n_voxels=smooth.n_voxels)
        voxel_hits = cluster_hits = 0
        for _ in range(runs):
            z = _field(rng, shape, fwhm, scale).ravel(order="F")
            voxel_hits += bool(z.max() > u)
            sizes = label_clusters(z, adjacency, u_cluster).sizes
            if sizes.size:
                P = rft.p_cluster(rft.cluster_resels(sizes.max(), smooth), u_cluster, None, "Z", smooth.resels).P
                cluster_hits += bool(P <= alpha)
        rows.append(
            {
                "fwhm": fwhm,
                "fwhm_est": float(np.mean(smooth.fwhm)),
                "resels": float(smooth.resels[3]),
                "u": u,
                "runs": runs,
                "voxel_hits": voxel_hits,
                "cluster_hits": cluster_hits,
            }
        )
    return rows


def _ci(hits, runs):
    from scipy import stats

    ci = stats.binomtest(hits, runs).proportion_ci(0.95, method="exact")
    return f"{hits / runs:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fwhm", type=float, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = null_rates(tuple(args.fwhm), args.runs, tuple(args.shape), args.seed)
    print(f"null Gaussian fields, {args.shape} voxels, {args.runs} realisations per FWHM; FWE at 0.05")
    print(
        f"{'FWHM':>5} {'est.':>6} {'R3':>9} {'u':>6}  {'voxel FWE [95% CI]':<22} {'cluster FWE p<0.001 [95% CI]':<22}"
    )
    for r in rows:
        print(
            f"{r['fwhm']:>5g} {r['fwhm_est']:>6.2f} {r['resels']:>9.1f} {r['u']:>6.3f}  "
            f"{_ci(r['voxel_hits'], r['runs']):<22} {_ci(r['cluster_hits'], r['runs']):<22}"
        )
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
