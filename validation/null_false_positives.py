"""False-positive rates on null data: OLS is liberal under autocorrelated noise, AR(p) models are nominal.

    python validation/null_false_positives.py [--voxels 4000] [--scans 200] [--seed 0]

Null runs: AR(1) noise with rho in {0.2, 0.35, 0.5} (and one AR(2)), a block design (20 s on/off at TR 2 s,
convolved with SPM's HRF), cosine drift (128 s) and a constant. For each noise model, the fraction of voxels
with one-sided p < 0.05 and p < 0.001 for the task regressor, with the binomial 95% interval of the nominal
rate ("ok" when inside it). ``ar1-global`` (SPM12's pooled ReML AR(1)) needs voxels that pass SPM's
effects-of-interest test to pool over: 10% more voxels with the same noise plus the task effect are added to
each run for it, and the rates are counted on the null voxels only.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def simulate(rng, n, V, phi):
    e = rng.standard_normal((n + 200, V))
    for t in range(len(phi), n + 200):
        for i, ph in enumerate(phi, 1):
            e[t] += ph * e[t - i]
    return e[200:]


def main(argv=None) -> int:
    from voxfit import fit
    from voxfit.design import make_design
    from voxfit.engine import fit_ar, fit_global_ar

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=4000)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n, V, tr = args.scans, args.voxels, 2.0
    onsets = np.arange(0.0, n * tr, 40.0)
    design = make_design({"task": {"onset": onsets, "duration": np.full(onsets.size, 20.0)}}, tr, n)
    rng = np.random.default_rng(args.seed)
    print(f"{V} voxels x {n} scans per run; design: {', '.join(design.names)}")
    print(f"{'noise':<16}{'model':<11}{'p<0.05':>9}{'':>4}{'p<0.001':>9}{'':>4}")
    for phi in ([0.2], [0.35], [0.5], [0.5, -0.2]):
        Y = simulate(rng, n, V, phi)
        label = "AR(%s)" % ", ".join(f"{p:g}" for p in phi)
        active = simulate(rng, n, V // 10, phi) + design.X[:, [0]] * 2.0
        for model in ("ols", "ar1", "ar2", "ar1-global"):
            if model == "ols":
                p = fit(design.X, Y, names=design.names).contrast("task").p
            elif model == "ar1-global":
                both = np.hstack([Y, active])
                p = fit_global_ar(design.X, both, {"task": "task"}, names=design.names).contrasts["task"].p[:V]
            else:
                p = fit_ar(design.X, Y, int(model[2]), {"task": "task"}, names=design.names).contrasts["task"].p
            cells = []
            for alpha in (0.05, 0.001):
                rate = float(np.mean(p < alpha))
                half = 1.96 * np.sqrt(alpha * (1 - alpha) / V)
                cells.append(f"{rate:9.4f}{'  ok' if abs(rate - alpha) <= half else '  --'}")
            print(f"{label:<16}{model:<11}{''.join(cells)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
