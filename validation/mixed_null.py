"""False-positive rates of voxfit's group models (mixed, ols, fixed) on null data with unequal first-level variances.

    python validation/mixed_null.py [--voxels 100000] [--subjects 20] [--first-level-dof 100] [--seed 0]

Each voxel is one group study drawn exactly from the model of ``voxfit.mixed_effects(model="mixed")``: subject
i's effect is ``y_i ~ N(x_i'b, s_i^2 + tau2)``, its first-level variance s_i^2 drawn log-uniform over [1, 10]
(up to 10x between subjects; mean 3.91), either per subject and voxel (layout ``voxel``), or once per subject and
the same at every voxel and in every setting (layout ``subject``, as runs of different lengths; one draw per
seed), or those same values given in the order of the subjects' distance from the tested covariate's mean, the
largest farthest (layout ``leverage``, covariates design only: variance that grows with the covariate, as motion
with age), and the between-subject variance
tau2 in {0, 1, 4 (about the mean s_i^2), 40 (dominant)}. The variances handed to the fit are either the exact
s_i^2 or estimates ``s_i^2 chi2(d) / d`` with d first-level dof (default 100), drawn independently of the effects
(as a normal first level's variance estimate is of its effect); ``fixed`` then gets ``first_level_dof=d``
(voxfit's default for it: Kenward-Roger's covariance and dof for the estimated variances; flameo's sum of the
first-level dof minus the rank is ``dof="residual"``, see validation/fixed_effects_null.py), and n - rank with
exact variances.
Designs (20 subjects): ``one-sample`` (the mean, tested) and ``covariates`` (an intercept of 1 and two standard
normal covariates with slopes 0.5 and 0, fixed by the seed; the second slope is tested: the null holds for it).

Reported for each setting and model (``mixed`` with residual dof n - rank, FLAME1's; ``mixed-satt`` with
Satterthwaite dof; ``ols``; ``fixed``): the rate of one-sided p < 0.05 and p < 0.001 over the voxels, with the
exact (Clopper-Pearson) 95% interval: "ok" when it holds the nominal rate, "+" when the rate is above (liberal),
"-" below (conservative). With 100,000 voxels the interval at 0.05 is about 0.05 +- 0.00135 (a 10% bias,
0.005, is seen) and at 0.001 about +-20%. Setting k draws from ``np.random.default_rng([seed, k])``.

``null_rates`` returns the counts, for tests (tests/test_validation.py); ``simulate`` and ``p_values`` serve
validation/mixed_power.py too.
"""

import argparse
import sys
from dataclasses import dataclass

import numpy as np

MODELS = ("mixed", "mixed-satt", "ols", "fixed")
DESIGNS = ("one-sample", "covariates")
LAYOUTS = ("voxel", "subject", "leverage")
TAU2 = (0.0, 1.0, 4.0, 40.0)
S2_RANGE = (1.0, 10.0)


@dataclass(frozen=True)
class Setting:
    """One null (or planted) simulation: design, layout of the first-level variances, tau2, and the first-level
    dof of the variance estimates (None: the exact variances are given)."""

    design: str
    layout: str
    tau2: float
    first_level_dof: float | None

    @property
    def given(self) -> str:
        return "exact" if self.first_level_dof is None else f"chi2({self.first_level_dof:g})"


def make_design(design: str, n: int, seed: int = 0):
    """The design matrix (n, p), its column names, the tested column, and the betas of the simulation (the tested
    one 0)."""
    if design == "one-sample":
        return np.ones((n, 1)), ["mean"], "mean", np.zeros(1)
    if design == "covariates":
        cov = np.random.default_rng([seed, 99]).standard_normal((n, 2))
        return np.column_stack([np.ones(n), cov]), ["mean", "a", "b"], "b", np.array([1.0, 0.5, 0.0])
    raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")


def draw_s2(rng, shape):
    """First-level variances log-uniform over S2_RANGE."""
    return np.exp(rng.uniform(np.log(S2_RANGE[0]), np.log(S2_RANGE[1]), shape))


def subject_variances(X, tested: int, layout: str, seed: int):
    """The (n, 1) first-level variances of the layouts ``subject`` (one draw per subject from
    ``default_rng([seed, 10000])``, the same in every setting) and ``leverage`` (the same values, the largest
    given to the subjects farthest from the mean of the tested column); None for ``voxel``."""
    if layout == "voxel":
        return None
    s2 = draw_s2(np.random.default_rng([seed, 10000]), (X.shape[0], 1))
    if layout == "leverage":
        distance = np.abs(X[:, tested] - X[:, tested].mean())
        s2[np.argsort(distance), 0] = np.sort(s2[:, 0])
    return s2


def simulate(rng, X, beta, setting: Setting, V: int, subject_s2=None, effect: float = 0.0, tested: int = -1):
    """Effects (n, V) from ``N(X beta, s2 + tau2)`` (plus `effect` on column `tested`), and the first-level
    variances given to the fit (n, V): exact or ``s2 chi2(d) / d``. s2 is drawn per subject and voxel (layout
    ``voxel``), else it is `subject_s2` (n, 1) at every voxel (``subject_variances``)."""
    n = X.shape[0]
    s2 = draw_s2(rng, (n, V)) if subject_s2 is None else np.broadcast_to(subject_s2, (n, V))
    b = beta.copy()
    if effect:
        b[tested] += effect
    effects = X @ b[:, None] + np.sqrt(s2 + setting.tau2) * rng.standard_normal((n, V))
    if setting.first_level_dof is None:
        return effects, np.ascontiguousarray(s2)
    d = setting.first_level_dof
    return effects, s2 * rng.chisquare(d, (n, V)) / d


def p_values(X, names, tested, effects, variances, model: str, first_level_dof=None):
    """One-sided p of the tested column under `model` (one of MODELS)."""
    import voxfit

    kwargs = {}
    if model == "mixed-satt":
        model, kwargs = "mixed", {"dof": "satterthwaite"}
    elif model == "fixed" and first_level_dof is not None:
        kwargs = {"first_level_dof": first_level_dof}
    fit = voxfit.mixed_effects(
        X, effects, None if model == "ols" else variances, {"c": tested}, names=names, model=model, **kwargs
    )
    return fit.contrasts["c"].p


def settings(designs=DESIGNS, layouts=LAYOUTS, tau2s=TAU2, first_level_dofs=(None, 100.0)):
    """Every combination (``leverage`` with the covariates design only: a one-sample design's subjects all have
    the same leverage)."""
    return [
        Setting(d, lay, t, f)
        for d in designs
        for lay in layouts
        for t in tau2s
        for f in first_level_dofs
        if not (lay == "leverage" and d == "one-sample")
    ]


def null_rates(
    n_voxels=100_000,
    n_subjects=20,
    seed=0,
    cases=None,
    models=MODELS,
    alphas=(0.05, 0.001),
    chunk=50_000,
    effect=0.0,
    offset=0,
):
    """Counts of voxels with p < alpha for each setting (default: every one of ``settings()``) and model.

    Returns a list of dicts ``{"setting", "model", "alpha", "count", "n"}``; setting k draws from
    ``np.random.default_rng([seed, offset + k])`` in chunks of `chunk` voxels. `effect` (0: null) is added to the
    tested column's beta (validation/mixed_power.py).
    """
    cases = settings() if cases is None else cases
    rows = []
    for k, setting in enumerate(cases):
        X, names, tested, beta = make_design(setting.design, n_subjects, seed)
        rng = np.random.default_rng([seed, offset + k])
        subject_s2 = subject_variances(X, names.index(tested), setting.layout, seed)
        counts = {(m, a): 0 for m in models for a in alphas}
        for start in range(0, n_voxels, chunk):
            V = min(chunk, n_voxels - start)
            effects, variances = simulate(rng, X, beta, setting, V, subject_s2, effect, names.index(tested))
            for model in models:
                p = p_values(X, names, tested, effects, variances, model, setting.first_level_dof)
                for a in alphas:
                    counts[model, a] += int(np.sum(p < a))
        rows += [
            {"setting": setting, "model": m, "alpha": a, "count": c, "n": n_voxels} for (m, a), c in counts.items()
        ]
    return rows


def interval(count, n):
    """Exact (Clopper-Pearson) 95% interval of a binomial rate."""
    from scipy import stats

    ci = stats.binomtest(int(count), int(n)).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def mark(count, n, alpha) -> str:
    """ "ok" when the 95% interval holds alpha, "+" when it lies above (liberal), "-" below (conservative)."""
    lo, hi = interval(count, n)
    return "ok" if lo <= alpha <= hi else ("+" if lo > alpha else "-")


def print_table(rows, alphas=(0.05, 0.001), value="rate", nominal=True) -> None:
    """One line per setting, one column per model, for each alpha."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["setting"], r["model"], r["alpha"]): r for r in rows}
    cases = list(dict.fromkeys(r["setting"] for r in rows))
    for a in alphas:
        n = rows[0]["n"]
        lo, hi = interval(round(a * n), n)
        note = f"; the 95% interval of a rate of {a:g} over {n:,} voxels is [{lo:.5f}, {hi:.5f}]" if nominal else ""
        print(f"\n{value} of p < {a:g}{note}")
        print(f"{'design':<12}{'layout':<9}{'tau2':>6} {'s2 given':<11}" + "".join(f"{m:>16}" for m in models))
        for s in cases:
            cells = []
            for m in models:
                r = by[s, m, a]
                tag = f" {mark(r['count'], r['n'], a):<2}" if nominal else "   "
                cells.append(f"{r['count'] / r['n']:>13.5f}{tag}")
            print(f"{s.design:<12}{s.layout:<9}{s.tau2:>6g} {s.given:<11}" + "".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=100_000, help="voxels (null studies) per setting")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--first-level-dof", type=float, default=100.0, help="dof of the estimated variances")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import voxfit

    cases = settings(first_level_dofs=(None, args.first_level_dof))
    print(
        f"voxfit {voxfit.__version__}: {args.voxels:,} null voxels per setting, {args.subjects} subjects; s_i^2 "
        f"log-uniform on {list(S2_RANGE)}; one-sided p; ok / + (liberal) / - (conservative) against the exact "
        "95% interval"
    )
    print_table(null_rates(args.voxels, args.subjects, args.seed, cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
