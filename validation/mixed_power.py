"""Power of voxfit's mixed-effects group model against OLS when first-level variances differ up to 10x.

    python validation/mixed_power.py [--voxels 50000] [--subjects 20] [--effect 0.5] [--seed 0]

The simulations of validation/mixed_null.py (same designs, layouts of s_i^2 log-uniform over [1, 10], tau2 and
first-level dof; see its docstring), with tau2 in {0, 1, 4} and an effect planted on the tested column (the mean,
or the second covariate's slope): ``effect * sqrt(mean s_i^2 + tau2)``, mean s_i^2 = 9 / ln 10 = 3.91. For each
setting, the rate of one-sided p < 0.05 and p < 0.001 (power) of ``mixed`` (residual dof), ``mixed-satt``
(Satterthwaite dof) and ``ols``, and beside them the same models' rates on null data of the same setting (the
same draws without the effect: the same seeds), marked against the nominal level's exact 95% interval (ok, +
liberal, - conservative), so that power is compared at the false-positive rate each model actually has.
Setting k draws from ``np.random.default_rng([seed, k])``.

``power_rates`` returns the counts, for tests (tests/test_validation.py).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np

MODELS = ("mixed", "mixed-satt", "ols")
TAU2 = (0.0, 1.0, 4.0)


@functools.cache
def null_module():
    """validation/mixed_null.py, loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("validation_mixed_null", Path(__file__).with_name("mixed_null.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def power_rates(
    n_voxels=50_000, n_subjects=20, effect=0.5, seed=0, cases=None, models=MODELS, alphas=(0.05, 0.001), chunk=50_000
):
    """Counts of p < alpha with the planted effect ("power") and without it ("null"), per setting and model.

    Returns a list of dicts ``{"setting", "model", "alpha", "count", "n", "kind"}`` with kind "power" or "null";
    `effect` is in units of ``sqrt(mean s_i^2 + tau2)`` of each setting.
    """
    mn = null_module()
    cases = mn.settings(tau2s=TAU2) if cases is None else cases
    lo, hi = np.log(mn.S2_RANGE[0]), np.log(mn.S2_RANGE[1])
    mean_s2 = (mn.S2_RANGE[1] - mn.S2_RANGE[0]) / (hi - lo)
    rows = []
    for k, setting in enumerate(cases):
        size = effect * np.sqrt(mean_s2 + setting.tau2)
        for kind, planted in (("power", size), ("null", 0.0)):
            part = mn.null_rates(n_voxels, n_subjects, seed, [setting], models, alphas, chunk, effect=planted, offset=k)
            rows += [dict(r, kind=kind) for r in part]
    return rows


def print_table(rows, alphas=(0.05, 0.001)) -> None:
    mn = null_module()
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["kind"], r["setting"], r["model"], r["alpha"]): r for r in rows}
    cases = list(dict.fromkeys(r["setting"] for r in rows))
    for a in alphas:
        print(f"\np < {a:g}: power, then the rate on null data of the same setting")
        head = "".join(f"{'power ' + m:>17}" for m in models) + "".join(f"{'null ' + m:>19}" for m in models)
        print(f"{'design':<12}{'layout':<9}{'tau2':>6} {'s2 given':<11}{head}")
        for s in cases:
            power = "".join(f"{by['power', s, m, a]['count'] / by['power', s, m, a]['n']:>17.4f}" for m in models)
            null = ""
            for m in models:
                r = by["null", s, m, a]
                null += f"{r['count'] / r['n']:>16.5f} {mn.mark(r['count'], r['n'], a):<2}"
            print(f"{s.design:<12}{s.layout:<9}{s.tau2:>6g} {s.given:<11}{power}{null}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=50_000, help="voxels (studies) per setting, planted and null each")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--effect", type=float, default=0.5, help="in units of sqrt(mean s_i^2 + tau2)")
    ap.add_argument("--first-level-dof", type=float, default=100.0, help="dof of the estimated variances")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import voxfit

    mn = null_module()
    cases = mn.settings(tau2s=TAU2, first_level_dofs=(None, args.first_level_dof))
    print(
        f"voxfit {voxfit.__version__}: {args.voxels:,} voxels per setting with the effect and as many without, "
        f"{args.subjects} subjects; effect {args.effect:g} x sqrt(mean s_i^2 + tau2); one-sided p"
    )
    print_table(power_rates(args.voxels, args.subjects, args.effect, args.seed, cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
