"""False-positive rates and power of the mixed model with outlier inference, against the plain mixed model and OLS.

    python validation/mixed_outliers.py [--voxels 50000] [--subjects 20] [--effect 0.5] [--seed 0]

Each voxel is one one-sample group study: subject i's effect ``y_i ~ N(b, s_i^2 + tau2)`` with s_i^2 drawn
log-uniform over [1, 10] per subject and voxel (validation/mixed_null.py's draw, exact variances given), tau2 in
{1, 4, 40}; then outliers planted: none, each subject shifted with probability 0.1 at each voxel by 20 sd
(``sd = sqrt(mean s^2 + tau2)``) up or down at random (``+-20``), or always down (``-20``: the plain mean is
biased), or two subjects shifted up by 16 sd at every voxel (``2 subj``: a subject outlying everywhere). For
each setting, the rate of one-sided p < alpha without an effect (b = 0) and with ``b = effect x sd`` (power) of
``mixed`` (FLAME1, residual dof), ``mixed+out`` (``outliers=True``, flameo --io's model; residual dof) and
``ols``; null rates are marked against the nominal level's exact 95% interval (ok, + liberal, - conservative).
Setting k draws from ``np.random.default_rng([seed, k])``.

``outlier_rates`` returns the counts, for tests (tests/test_validation.py).
"""

import argparse
import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS = ("mixed", "mixed+out", "ols")
CONTAMINATIONS = ("none", "+-20", "-20", "2 subj")
TAU2 = (1.0, 4.0, 40.0)


@functools.cache
def null_module():
    """validation/mixed_null.py, loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("validation_mixed_null", Path(__file__).with_name("mixed_null.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Setting:
    tau2: float
    contamination: str


def simulate(rng, n: int, V: int, setting: Setting):
    """Null effects (n, V), their first-level variances, and the planted outlier shifts (n, V) of `setting`."""
    mn = null_module()
    S = mn.draw_s2(rng, (n, V))
    sd = np.sqrt(9 / np.log(10) + setting.tau2)  # (mean s^2 = 9 / ln 10)
    Y = rng.standard_normal((n, V)) * np.sqrt(S + setting.tau2)
    shift = np.zeros((n, V))
    if setting.contamination in ("+-20", "-20"):
        hit = rng.random((n, V)) < 0.1
        sign = rng.choice([-1.0, 1.0], (n, V)) if setting.contamination == "+-20" else -1.0
        shift = np.where(hit, 20 * sd * sign, 0.0)
    elif setting.contamination == "2 subj":
        shift[:2] = 16 * sd
    return Y + shift, S, sd


def p_values(effects, variances, model: str):
    import voxfit

    X = np.ones((effects.shape[0], 1))
    if model == "ols":
        return voxfit.mixed_effects(X, effects, None, {"m": [1]}, model="ols").contrasts["m"].p
    return voxfit.mixed_effects(X, effects, variances, {"m": [1]}, outliers=model == "mixed+out").contrasts["m"].p


def outlier_rates(
    n_voxels=50_000, n_subjects=20, effect=0.5, seed=0, cases=None, models=MODELS, alphas=(0.05, 0.001), chunk=25_000
):
    """Counts of p < alpha with the planted effect ("power") and without it ("null"), per setting and model.

    Returns a list of dicts ``{"setting", "model", "alpha", "kind", "count", "n"}``.
    """
    cases = [Setting(t, c) for t in TAU2 for c in CONTAMINATIONS] if cases is None else cases
    rows = []
    for k, setting in enumerate(cases):
        rng = np.random.default_rng([seed, k])
        counts = {(kind, m, a): 0 for kind in ("null", "power") for m in models for a in alphas}
        for start in range(0, n_voxels, chunk):
            Y, S, sd = simulate(rng, n_subjects, min(chunk, n_voxels - start), setting)
            for kind, b in (("null", 0.0), ("power", effect * sd)):
                for m in models:
                    p = p_values(Y + b, S, m)
                    for a in alphas:
                        counts[kind, m, a] += int(np.sum(p < a))
        rows += [
            {"setting": setting, "model": m, "alpha": a, "kind": kind, "count": c, "n": n_voxels}
            for (kind, m, a), c in counts.items()
        ]
    return rows


def print_table(rows, alphas=(0.05, 0.001)) -> None:
    mn = null_module()
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["kind"], r["setting"], r["model"], r["alpha"]): r for r in rows}
    cases = list(dict.fromkeys(r["setting"] for r in rows))
    for a in alphas:
        print(f"\np < {a:g}: the rate on null data (marked), then power")
        head = "".join(f"{'null ' + m:>19}" for m in models) + "".join(f"{'power ' + m:>17}" for m in models)
        print(f"{'tau2':>6} {'outliers':<9}{head}")
        for s in cases:
            null = ""
            for m in models:
                r = by["null", s, m, a]
                null += f"{r['count'] / r['n']:>16.5f} {mn.mark(r['count'], r['n'], a):<2}"
            power = "".join(f"{by['power', s, m, a]['count'] / by['power', s, m, a]['n']:>17.4f}" for m in models)
            print(f"{s.tau2:>6g} {s.contamination:<9}{null}{power}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=50_000, help="voxels (studies) per setting, null and planted each")
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--effect", type=float, default=0.5, help="in units of sqrt(mean s_i^2 + tau2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import voxfit

    print(
        f"voxfit {voxfit.__version__}: {args.voxels:,} voxels per setting, {args.subjects} subjects, one-sample; "
        f"effect {args.effect:g} sd; one-sided p; ok / + (liberal) / - (conservative) against the exact 95% interval"
    )
    print_table(outlier_rates(args.voxels, args.subjects, args.effect, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
