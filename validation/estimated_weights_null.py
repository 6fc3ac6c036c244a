"""False-positive rates where estimated weights enter a test: AR(p) F contrasts of many rows and fixed effects
across runs, on null data, beside the exact model.

    python validation/estimated_weights_null.py [--voxels 80000] [--seed 0]

- **AR(p) F over an FIR response's 8 delays** (21 columns, 150 scans at TR 2 s, random 1 s events): white noise
  and AR(1) 0.4, fitted with ``ar1`` and ``ar2``; the reference is exact GLS with the true covariance, on
  n - rank dof. (The rows' uncertainty averaged into one Satterthwaite dof gave 0.055-0.059 at p < 0.05; Kenward
  and Roger's dof and scale are what ``voxfit.core.ar`` uses.)
- **Fixed effects across runs** (``voxfit.models.fixed_effects``): 4 OLS runs of 60 scans (two conditions), the
  t of ``task - other`` and the F of ``task; other``, with runs of equal noise and of unequal noise (SD 1, 3, 5,
  7); the reference for equal noise is the model of the runs concatenated (one sigma, n - rank dof). (FSL's and
  nilearn's variance, the summed precision on the summed dof, gave t 0.055 and F 0.059 at p < 0.05.)

Each line: the fraction of null voxels with p < 0.05 and p < 0.01 and its exact (Clopper-Pearson) 95% interval.
``ar_f_rates`` and ``fixed_effects_rates`` return the counts, for tests (tests/test_ar.py and
tests/test_design_events.py hold CI-sized checks of both).
"""

from __future__ import annotations

import argparse

import numpy as np

ALPHAS = (0.05, 0.01)


def _events(rng, n, tr, conditions):
    onsets = np.sort(rng.uniform(2.0, n * tr - 12.0, int(n * tr / 8)))
    which = rng.integers(0, len(conditions), onsets.size)
    return {
        c: {"onset": onsets[which == k], "duration": np.ones(int((which == k).sum()))} for k, c in enumerate(conditions)
    }


def _ar_noise(rng, n, V, phi, burn=200):
    from scipy.signal import lfilter

    e = rng.standard_normal((n + burn, V))
    return lfilter([1.0], [1.0, -phi], e, axis=0)[burn:] if phi else e[burn:]


def _gls_f_p(X, Y, W, phi):
    """Exact GLS F p-values of the rows `W` with the true AR(1) covariance (identity for phi 0)."""
    from scipy import linalg, stats

    n = X.shape[0]
    if phi:
        S = linalg.toeplitz(phi ** np.arange(n) / (1 - phi**2))
        L = np.linalg.cholesky(S)
        X, Y = linalg.solve_triangular(L, X, lower=True), linalg.solve_triangular(L, Y, lower=True)
    B, *_ = np.linalg.lstsq(X, Y, rcond=None)
    dof = n - np.linalg.matrix_rank(X)
    s2 = ((Y - X @ B) ** 2).sum(axis=0) / dof
    E = W @ B
    C = W @ np.linalg.pinv(X.T @ X) @ W.T
    F = np.einsum("qv,qr,rv->v", E, np.linalg.inv(C), E) / (W.shape[0] * s2)
    return stats.f.sf(F, W.shape[0], dof)


def ar_f_rates(voxels, seed=0):
    """Rows (noise, model, alpha, count, n) of the FIR F on null data."""
    from voxfit.design import make_design
    from voxfit.engine import fit_ar

    rng = np.random.default_rng(seed)
    n = 150
    d = make_design(_events(rng, n, 2.0, ["task"]), 2.0, n, hrf="fir", fir_delays=8)
    delays = [j for j, name in enumerate(d.names) if name.startswith("task")]
    W = np.eye(len(d.names))[delays]
    rows = []
    for phi in (0.0, 0.4):
        Y = _ar_noise(rng, n, voxels, phi)
        ps = {"exact GLS": _gls_f_p(d.X, Y, W, phi)}
        for order in (1, 2):
            fitted = fit_ar(d.X, Y, order, {"F": W}, names=d.names)
            ps[f"ar{order}"] = fitted.contrasts["F"].p
        for model, p in ps.items():
            rows += [(f"AR(1) {phi}" if phi else "white", model, a, int(np.sum(p < a)), voxels) for a in ALPHAS]
    return rows


def fixed_effects_rates(voxels, seed=0, runs=4, scans=60):
    """Rows (noise, test, alpha, count, n) of fixed effects across `runs` OLS runs on null data."""
    from voxfit.design import make_design
    from voxfit.models import fixed_effects
    from voxfit.models.glm import fit_noise_model

    rng = np.random.default_rng(seed)
    rows = []
    for noise in ("equal", "unequal"):
        per_run, designs, data = {"t": [], "F": []}, [], []
        for r in range(runs):
            d = make_design(_events(rng, scans, 2.0, ["task", "other"]), 2.0, scans)
            Y = rng.standard_normal((scans, voxels)) * (1.0 if noise == "equal" else 1.0 + 2.0 * r)
            items = [("t", "task - other"), ("F", "task; other")]
            fitted = fit_noise_model(d.X, 100.0 + Y, list(d.names), items, "ols").contrasts
            for label in per_run:
                per_run[label].append(fitted[label])
            designs.append(d)
            data.append(Y)
        for label, stats_ in per_run.items():
            p = fixed_effects(label, stats_).p
            rows += [(f"{noise} noise", f"fixed effects {label}", a, int(np.sum(p < a)), voxels) for a in ALPHAS]
        if noise == "equal":  # the runs concatenated: one sigma, each run's own columns
            from scipy import linalg, stats

            X = linalg.block_diag(*[d.X for d in designs])
            Y = np.vstack(data)
            B, *_ = np.linalg.lstsq(X, Y, rcond=None)
            dof = X.shape[0] - np.linalg.matrix_rank(X)
            s2 = ((Y - X @ B) ** 2).sum(axis=0) / dof
            names = list(designs[0].names)
            c = np.zeros(len(names))
            c[names.index("task")], c[names.index("other")] = 1.0, -1.0
            c = np.tile(c, runs)
            t = (c @ B) / np.sqrt(s2 * (c @ np.linalg.pinv(X.T @ X) @ c))
            p = stats.t.sf(t, dof)
            rows += [("equal noise", "concatenated t", a, int(np.sum(p < a)), voxels) for a in ALPHAS]
    return rows


def _print(rows):
    from scipy import stats

    for what, model, alpha, count, n in rows:
        ci = stats.binomtest(count, n).proportion_ci(0.95, method="exact")
        mark = "ok" if ci.low <= alpha <= ci.high else "off"
        print(f"{what:<14} {model:<22} p < {alpha:<5} {count / n:.4f} [{ci.low:.4f}, {ci.high:.4f}] {mark}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voxels", type=int, default=80000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"AR(p) F over 8 FIR delays, 150 scans, {args.voxels:,} null voxels")
    _print(ar_f_rates(args.voxels, args.seed))
    print(f"fixed effects across 4 OLS runs of 60 scans, {args.voxels:,} null voxels")
    _print(fixed_effects_rates(args.voxels, args.seed))


if __name__ == "__main__":
    main()
