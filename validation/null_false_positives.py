"""False-positive rates on null data: OLS is liberal under autocorrelated noise, AR(p) models are nominal.

    python validation/null_false_positives.py [--voxels 40000] [--scans 200] [--seed 0] [--design block|events]
                                              [--nilearn]

Null runs: AR(1) noise with rho in {0.2, 0.35, 0.5} (and one AR(2)), a block design (20 s on/off at TR 2 s)
or an event design (1 s events every 6-14 s), convolved with SPM's HRF, cosine drift (128 s) and a constant.
For each noise model, the fraction of voxels with one-sided p < 0.05 and p < 0.001 for the task regressor, with
the exact (Clopper-Pearson) 95% interval of that rate ("ok" when it holds the nominal rate). ``ar1-global``
(SPM12's pooled ReML AR(1)) needs voxels that pass SPM's effects-of-interest test to pool over: 10% more
voxels with the same noise plus the task effect are added to each run for it, and the rates are counted on the
null voxels only. ``--nilearn`` adds nilearn's FirstLevelModel(noise_model="ar1") on the same data, as a peer.

``null_rates`` returns the counts, for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

NOISES = ((0.2,), (0.35,), (0.5,), (0.5, -0.2))
MODELS = ("ols", "ar1", "ar2", "ar1-global")


def simulate(rng, n, V, phi, burn=200):
    """(n, V) AR(phi) noise with unit innovations, after `burn` scans to reach stationarity."""
    from scipy.signal import lfilter

    e = rng.standard_normal((n + burn, V))
    return lfilter([1.0], np.r_[1.0, -np.asarray(phi, dtype=float)], e, axis=0)[burn:]


def make_null_design(n, tr=2.0, kind="block", seed=0):
    """The task regressor, cosine drift (128 s) and constant of a run of `n` scans."""
    from voxfit.design import make_design

    if kind == "block":
        onsets = np.arange(0.0, n * tr, 40.0)
        events = {"task": {"onset": onsets, "duration": np.full(onsets.size, 20.0)}}
    else:  # events of 1 s, 6 to 14 s apart
        gaps = np.random.default_rng([seed, 7]).uniform(6.0, 14.0, size=int(n * tr / 6.0))
        onsets = np.cumsum(gaps)
        onsets = onsets[onsets < n * tr - 10.0]
        events = {"task": {"onset": onsets, "duration": np.ones(onsets.size)}}
    return make_design(events, tr, n)


def null_rates(
    n_voxels=40000,
    n_scans=200,
    seed=0,
    noises=NOISES,
    models=MODELS,
    alphas=(0.05, 0.001),
    design="block",
    chunk=40000,
    nilearn=False,
):
    """Counts of null voxels with p < alpha for each noise and model.

    Returns a list of dicts ``{"noise", "model", "alpha", "count", "n"}``; the data of noise k come from
    ``np.random.default_rng([seed, k])`` in chunks of `chunk` voxels (memory: about 3 chunk x scans doubles).
    """
    from voxfit import fit
    from voxfit.engine import fit_ar, fit_global_ar

    d = make_null_design(n_scans, kind=design, seed=seed)
    names = list(d.names)
    rows = []
    for k, phi in enumerate(noises):
        rng = np.random.default_rng([seed, k])
        counts = {(m, a): 0 for m in models + (("nilearn-ar1",) if nilearn else ()) for a in alphas}
        for start in range(0, n_voxels, chunk):
            V = min(chunk, n_voxels - start)
            Y = simulate(rng, n_scans, V, phi)
            active = simulate(rng, n_scans, max(1, V // 10), phi) + d.X[:, [0]] * 2.0
            for model in models:
                if model == "ols":
                    p = fit(d.X, Y, names=names).contrast("task").p
                elif model == "ar1-global":
                    both = np.hstack([Y, active])
                    p = fit_global_ar(d.X, both, {"task": "task"}, names=names).contrasts["task"].p[:V]
                else:
                    p = fit_ar(d.X, Y, int(model[2:]), {"task": "task"}, names=names).contrasts["task"].p
                for a in alphas:
                    counts[model, a] += int(np.sum(p < a))
            if nilearn:
                p = nilearn_ar1_p(d.X, names, Y)
                for a in alphas:
                    counts["nilearn-ar1", a] += int(np.sum(p < a))
        label = "AR(%s)" % ", ".join(f"{x:g}" for x in phi)  # noqa: UP031
        rows += [{"noise": label, "model": m, "alpha": a, "count": c, "n": n_voxels} for (m, a), c in counts.items()]
    return rows


def nilearn_ar1_p(X, names, Y):
    """nilearn's one-sided p of the task column under its AR(1) model (binned AR coefficients), for comparison."""
    import pandas as pd
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import run_glm

    labels, results = run_glm(Y, X, noise_model="ar1", n_jobs=1)
    c = np.zeros(X.shape[1])
    c[list(pd.Index(names)).index("task")] = 1.0
    return compute_contrast(labels, results, c, stat_type="t").p_value()


def interval(count, n):
    """Exact (Clopper-Pearson) 95% interval of a binomial rate."""
    from scipy import stats

    ci = stats.binomtest(int(count), int(n)).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=40000)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--design", choices=("block", "events"), default="block")
    ap.add_argument("--nilearn", action="store_true", help="add nilearn's ar1 model as a peer")
    args = ap.parse_args(argv)
    d = make_null_design(args.scans, kind=args.design, seed=args.seed)
    print(f"{args.voxels} null voxels x {args.scans} scans per noise; {args.design} design: {', '.join(d.names)}")
    rows = null_rates(args.voxels, args.scans, args.seed, design=args.design, nilearn=args.nilearn)
    print(f"{'noise':<16}{'model':<13}{'alpha':>7}{'rate':>9}{'95% interval':>22}")
    for r in rows:
        lo, hi = interval(r["count"], r["n"])
        ok = "ok" if lo <= r["alpha"] <= hi else "--"
        print(
            f"{r['noise']:<16}{r['model']:<13}{r['alpha']:>7g}{r['count'] / r['n']:>9.5f}"
            f"{f'[{lo:.5f}, {hi:.5f}]':>22}  {ok}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
