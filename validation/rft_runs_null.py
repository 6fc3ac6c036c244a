"""Family-wise error of random field theory on runs combined by fixed effects (``voxfit fit`` of several runs
with ``--inference rft``), on smooth null data.

    python validation/rft_runs_null.py [--scans 30,30 45,45 60,60] [--noise ols|arP] [--noise-ratio 2]
                                       [--realisations 500] [--shape 18 18 18] [--seed 0]

Each realisation: one run per entry of ``--scans`` (its number of scans), each of smooth Gaussian noise (white
noise smoothed to FWHM 3 voxels, periodic; the k-th run's noise ``1 + (ratio - 1) k / (runs - 1)`` times the
first's), a mean's t per run (OLS, or ``--noise arP``: voxfit's AR(P) per voxel, ``voxfit.fit_ar``, whose t has
an effective dof per voxel; the smoothness then from the OLS residuals, as voxfit takes it), the runs combined
by fixed effects (``voxfit.models.runs.fixed_effects``: the
precision-weighted mean, its variance widened for the estimated weights, a Satterthwaite dof per voxel). The
smoothness comes from every run's residuals together (their neighbour sums added, on the runs' dof summed), as
``voxfit fit`` does; the combined contrast is taken, as voxfit takes it, as a T field of its median dof, each
voxel's t mapped to that dof through its p (``voxfit.inference.rft_fit.median_dof_field``, SPM's ``spm_uc`` at FWE
0.05). A false positive is a realisation whose largest value passes the threshold; each rate should be <= 0.05
(its 95% Clopper-Pearson interval is printed). Also printed: the same maps' z taken as a Z field (voxfit before
2026-12-07), for comparison.

Measured (2026-12-07; the median-dof field, then the Z field; ``--seed 11 --realisations 1000`` for OLS,
``--noise ar1 --seed 12 --shape 14 14 14 --realisations 500`` and ``--noise ar4 --seed 13 --shape 14 14 14
--realisations 400`` for AR): two OLS runs of 30 scans, noise ratio 2: 0.045 and 0.056; of 45: 0.033 and
0.039; of 16 and 20: 0.061 and 0.080; three of 10: 0.204 and 0.274; one run of 36: 0.027 and 0.031. AR(p) per
voxel: two AR(1) runs of 43 scans: 0.040 and 0.090; one of 150: 0.036 and 0.042; AR(4) on one run of 150 scans (a
median of 21 effective dof): 0.020 and 0.062; on two: 0.068 and 0.098. So the median-dof field holds the level
where the Z field did not, while fixed effects of runs of few dof is liberal whatever the field: hence
``voxfit.inference.rft_fit.FIXED_EFFECTS_DOF``, below which runs are refused. ``null_rates`` returns the rows,
for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def _smooth(rng, n: int, shape) -> np.ndarray:
    """`n` scans of smooth Gaussian noise on `shape` (FWHM 3 voxels, periodic), (n, V) float32, x fastest."""
    from scipy import ndimage

    sigma = 3.0 / math.sqrt(8 * math.log(2))
    e = ndimage.gaussian_filter(rng.standard_normal((n, *shape)), (0, sigma, sigma, sigma), mode="wrap")
    return np.ascontiguousarray(e.transpose(0, 3, 2, 1).reshape(n, -1), dtype=np.float32)


def null_rates(
    scans=((30, 30), (45, 45), (60, 60)), realisations=500, shape=(18, 18, 18), ratio=2.0, seed=0, noise="ols"
):
    """One row per setting of `scans` (each a tuple of the runs' numbers of scans): ``{"scans", "n",
    "field_hits", "z_hits"}``, the realisations whose largest value passed the FWE 0.05 threshold of the median-dof
    field (voxfit's) and of the Z field of the z map."""
    from voxfit import fit, fit_ar
    from voxfit.core import factorize
    from voxfit.engine.smoothness import neighbour_sums
    from voxfit.inference.rft import estimate_smoothness, gradient_products_from_sums, height_threshold
    from voxfit.inference.rft_fit import median_dof_field
    from voxfit.models.runs import fixed_effects

    mask = np.ones(shape, dtype=bool)
    rows = []
    for k, lengths in enumerate(scans):
        rng = np.random.default_rng([seed, k])
        hits = {"field": 0, "z": 0}
        for _ in range(realisations):
            per_run, sums = [], []
            for r, n in enumerate(lengths):
                Y = _smooth(rng, n, shape) * (1 + (ratio - 1) * r / max(1, len(lengths) - 1))
                X = np.ones((n, 1))
                if noise == "ols":
                    per_run.append(fit(X, Y).contrast([1.0]))
                else:
                    per_run.append(fit_ar(X, Y, int(noise.removeprefix("ar")), {"m": [1.0]}).contrasts["m"])
                sums.append(neighbour_sums(Y, factorize(X).basis, mask))
            combined = fixed_effects("m", per_run) if len(per_run) > 1 else per_run[0]
            total = sum(sums[1:], sums[0])
            dof = float(sum(n - 1 for n in lengths))
            products = gradient_products_from_sums(total, mask)
            sm = estimate_smoothness(products, mask, np.ones(3), n=sum(lengths), dof=dof, n_maps=total.n_maps)
            z = np.asarray(combined.z, dtype=np.float64)
            hits["z"] += bool(z.max() > height_threshold(0.05, (1.0, math.inf), "Z", sm.resels, n_voxels=sm.n_voxels))
            kind, dof, values = median_dof_field(combined)
            u = height_threshold(0.05, dof, kind, sm.resels, n_voxels=sm.n_voxels)
            hits["field"] += bool(np.nanmax(values) > u)
        rows.append({"scans": tuple(lengths), "n": realisations, "field_hits": hits["field"], "z_hits": hits["z"]})
    return rows


def _ci(hits: int, n: int) -> tuple[float, float]:
    from scipy import stats

    ci = stats.binomtest(hits, n).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="+", default=["30,30", "45,45", "60,60"])
    parser.add_argument("--noise", default="ols")
    parser.add_argument("--noise-ratio", type=float, default=2.0)
    parser.add_argument("--realisations", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs=3, default=[18, 18, 18])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scans = [tuple(int(v) for v in s.split(",")) for s in args.scans]
    print(f"FWE 0.05, FWHM 3 voxels, {tuple(args.shape)} voxels, noise ratio {args.noise_ratio:g}")
    print(f"noise model {args.noise}")
    for row in null_rates(scans, args.realisations, tuple(args.shape), args.noise_ratio, args.seed, args.noise):
        f_lo, f_hi = _ci(row["field_hits"], row["n"])
        z_lo, z_hi = _ci(row["z_hits"], row["n"])
        rate = row["field_hits"] / row["n"]
        ok = "LIBERAL" if f_lo > 0.05 else "above 0.05, within its interval" if rate > 0.05 else "ok"
        print(
            f"runs of {row['scans']} scans: field of the median dof {rate:.3f} [{f_lo:.3f}, {f_hi:.3f}] {ok}; "
            f"Z field {row['z_hits'] / row['n']:.3f} [{z_lo:.3f}, {z_hi:.3f}]"
        )


if __name__ == "__main__":
    main()
