"""False-positive rates of fixed-effects group models whose weights are estimated first-level variances.

    python validation/fixed_effects_null.py [--voxels 100000] [--seed 0] [--methods exact,flameo,kenward-roger]

Each voxel is one group study of n subjects (4, 8, 16), drawn exactly from the fixed-effects model: subject i's
effect is ``y_i ~ N(0, s_i^2)``, its true first-level variance s_i^2 log-uniform over [0.5, 2] per subject and
voxel, and the variance handed to the fit its estimate ``s_i^2 chi2(d_i) / d_i``, independent of the effect (as
a normal first level's), with d_i first-level dof of 10, 20 or 100 for every subject, or 10 and 100 in turn
("10/100"). Designs: ``one-sample`` (the mean's t), ``two-group`` (two indicator columns, n / 2 subjects each;
the t of their difference), ``covariate`` (an intercept and a centred covariate, evenly spaced; the slope's t)
and ``covariate F`` (the F of both rows, intercept and slope: 2 rows, null for both).

Methods:

- ``exact``: GLS with the true variances, t referred to the normal and F to chi2(2) / 2: exact by construction,
  the check of the simulation.
- ``flameo``: ``voxfit.mixed_effects(model="fixed", first_level_dof=d, dof="residual")``, FSL flameo's fixed
  effects: the covariance ``(X'WX)^+`` of the estimated weights taken as known, on the sum of the first-level dof
  minus the rank.
- ``kenward-roger``: the same with voxfit's default (``dof="kenward-roger"``): the covariance widened for the
  weights' error and Satterthwaite's dof per contrast and voxel, Kenward & Roger's scaled F for 2 rows
  (``voxfit.core.mixed.fixed_kenward_roger``).

Each line: the fraction of null voxels with p < 0.05 and p < 0.01 (one-sided upper tail for t, voxfit's p) and
its exact (Clopper-Pearson) 95% interval, "ok" where it holds the nominal rate. ``null_rates`` returns the counts,
for tests (tests/test_mixed_core.py holds a CI-sized check). Setting k draws from ``np.random.default_rng([seed,
k])``, whatever the methods asked for, so the methods of one setting see the same data.
"""

from __future__ import annotations

import argparse

import numpy as np

ALPHAS = (0.05, 0.01)
SUBJECTS = (4, 8, 16)
DOFS = ("10", "20", "100", "10/100")
DESIGNS = ("one-sample", "two-group", "covariate", "covariate F")
METHODS = ("exact", "flameo", "kenward-roger")


def design(name: str, n: int) -> tuple[np.ndarray, list[str], dict]:
    """The design `name` of `n` subjects, its column names and its contrast ``{"c": rows}``."""
    if name == "one-sample":
        return np.ones((n, 1)), ["mean"], {"c": [[1.0]]}
    if name == "two-group":
        first = (np.arange(n) < n // 2).astype(float)
        return np.column_stack([first, 1.0 - first]), ["a", "b"], {"c": [[1.0, -1.0]]}
    x = np.linspace(-1.0, 1.0, n)
    rows = [[0.0, 1.0]] if name == "covariate" else [[1.0, 0.0], [0.0, 1.0]]
    return np.column_stack([np.ones(n), x]), ["constant", "x"], {"c": rows}


def first_level_dof(text: str, n: int) -> np.ndarray:
    """Each subject's first-level dof: one number for all, or ``a/b`` in turn."""
    values = [float(v) for v in text.split("/")]
    return np.resize(values, n)


def simulate(rng, n: int, d: np.ndarray, voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Null effects (n, V), their true variances and their estimates on `d` dof."""
    s2 = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n, voxels)))
    effects = np.sqrt(s2) * rng.standard_normal((n, voxels))
    estimates = s2 * rng.chisquare(d[:, None], (n, voxels)) / d[:, None]
    return effects, s2, estimates


def p_values(method: str, X, names, contrast, effects, s2, estimates, d) -> np.ndarray:
    """One-sided p (t) or p (F) of the contrast under `method`."""
    from scipy import stats

    import voxfit

    if method == "exact":
        fit = voxfit.mixed_effects(X, effects, s2, names=names, model="fixed")
        L = np.asarray(contrast["c"])
        e = L @ fit.betas
        C = np.einsum("qa,vab,rb->vqr", L, fit.beta_covariance, L)
        if len(L) == 1:
            return stats.norm.sf(e[0] / np.sqrt(C[:, 0, 0]))
        chi2 = np.einsum("qv,vqr,rv->v", e, np.linalg.inv(C), e)
        return stats.chi2.sf(chi2, len(L))
    dof = "residual" if method == "flameo" else "kenward-roger"
    fit = voxfit.mixed_effects(X, effects, estimates, contrast, names=names, model="fixed", first_level_dof=d, dof=dof)
    return fit.contrasts["c"].p


def null_rates(voxels, seed=0, subjects=SUBJECTS, dofs=DOFS, designs=DESIGNS, methods=METHODS, alphas=ALPHAS):
    """Rows ``(design, n, dof, method, alpha, count, voxels)``."""
    rows = []
    k = 0
    for name in designs:
        for n in subjects:
            for text in dofs:
                rng = np.random.default_rng([seed, k])
                k += 1
                d = first_level_dof(text, n)
                X, names, contrast = design(name, n)
                effects, s2, estimates = simulate(rng, n, d, voxels)
                for method in methods:
                    p = p_values(method, X, names, contrast, effects, s2, estimates, d)
                    rows += [(name, n, text, method, a, int(np.sum(p < a)), voxels) for a in alphas]
    return rows


def main():
    from scipy import stats

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--voxels", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    args = ap.parse_args()
    methods = tuple(args.methods.split(","))
    print(f"fixed effects on estimated first-level variances, {args.voxels:,} null voxels per setting")
    print(f"{'design':<12} {'n':>3} {'dof':>7} {'method':<14} {'p < 0.05':>8} {'95% interval':<17}  p < 0.01")
    rows = null_rates(args.voxels, args.seed, methods=methods)
    for at in range(0, len(rows), len(ALPHAS)):
        (name, n, dof, method, _, _, V), *_ = rows[at : at + len(ALPHAS)]
        cells = []
        for _, _, _, _, alpha, count, _ in rows[at : at + len(ALPHAS)]:
            ci = stats.binomtest(count, V).proportion_ci(0.95, method="exact")
            mark = "ok" if ci.low <= alpha <= ci.high else ("+" if ci.low > alpha else "-")
            cells.append(f"{count / V:.4f} [{ci.low:.4f}, {ci.high:.4f}] {mark:<2}")
        print(f"{name:<12} {n:>3} {dof:>7} {method:<14} {'  '.join(cells)}")


if __name__ == "__main__":
    main()
