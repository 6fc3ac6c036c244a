"""False-positive rates of the mixed group model with variance groups: FLAME1's n - rank dof against Kenward-Roger's.

    python validation/variance_groups.py [--voxels 100000] [--seed 0]

Each voxel is one group study drawn from the model of ``voxfit.mixed_effects(model="mixed", groups=...)``:
subject i's effect is ``y_i ~ N(x_i'b, s_i^2 + tau2_g(i))``, with its exact first-level variance s_i^2 drawn
log-uniform over [1, 10] per subject and voxel (as validation/mixed_null.py; mean 3.91) and a between-subject
variance tau2_g of its variance group. Designs:

- ``one-sample GxK``: the mean of G*K subjects, tested; G variance groups of K subjects (the groups share one
  tau2, so the model's separate variances are more than the data need: each is estimated from K maps);
- ``two-sample A/B``: group means of A and B subjects, their difference tested, each group its own variance
  group and tau2 (the Behrens-Fisher problem of group studies: patients and controls of unequal spread);
- ``covariate 4x5``: an intercept and a standard normal covariate (fixed by the seed) over 4 groups of 5, the
  covariate's slope (0) tested;
- ``anova A/B/C``: three group means, each group its own variance group, their equality tested by F (two rows).

Reported for each setting and dof (``residual``: n - rank, FLAME1's, the default with one group;
``satterthwaite``: per voxel, from the REML information, the plug-in covariance; ``kenward-roger``: the
covariance adjusted for the estimation of tau2 and Satterthwaite's dof at most n - rank, voxfit's default with
several groups; for F, Kenward & Roger's lambda F and dof): the rate of one-sided p < 0.05 and p < 0.001 (F: its
upper tail) over the voxels with the exact (Clopper-Pearson) 95% interval: "ok" when it holds the nominal
rate, "+" above (liberal), "-" below (conservative). With 100,000 voxels the interval at 0.05 is about
0.05 +- 0.00135. Setting k draws from ``np.random.default_rng([seed, k])``.

``null_rates`` returns the counts, for tests (tests/test_validation.py).
"""

import argparse
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOFS = ("residual", "satterthwaite", "kenward-roger")


def _null_module():
    """validation/mixed_null.py, loaded from beside this file (its variances, interval and marks)."""
    spec = importlib.util.spec_from_file_location("validation_mixed_null", Path(__file__).with_name("mixed_null.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MN = _null_module()


@dataclass(frozen=True)
class Setting:
    """A design (``one-sample``, ``two-sample``, ``covariate``), its variance groups' sizes and their tau2."""

    design: str
    sizes: tuple[int, ...]
    tau2: tuple[float, ...]

    @property
    def name(self) -> str:
        sep = "/" if self.design in ("two-sample", "anova") else "x"
        shape = sep.join(map(str, self.sizes)) if sep == "/" else f"{len(self.sizes)}x{self.sizes[0]}"
        return f"{self.design} {shape}"

    def arrays(self, seed: int):
        """The design (n, p), the group code of each subject and the tested contrast's weights."""
        codes = np.repeat(np.arange(len(self.sizes)), self.sizes)
        n = codes.size
        if self.design == "one-sample":
            return np.ones((n, 1)), codes, [1.0]
        if self.design == "two-sample":
            return np.eye(2)[codes], codes, [1.0, -1.0]
        if self.design == "anova":
            return np.eye(3)[codes], codes, [[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]
        if self.design == "covariate":
            covariate = np.random.default_rng([seed, 99]).standard_normal(n)
            return np.column_stack([np.ones(n), covariate]), codes, [0.0, 1.0]
        raise ValueError(f"unknown design {self.design!r}")


def settings() -> list[Setting]:
    """The settings of the printed table."""
    cases = []
    for G, K in ((4, 5), (2, 10), (4, 3)):
        cases += [Setting("one-sample", (K,) * G, (t,) * G) for t in (0.0, 4.0, 40.0)]
    for sizes in ((10, 10), (5, 15), (4, 12)):
        cases += [Setting("two-sample", sizes, t) for t in ((4.0, 4.0), (40.0, 4.0), (4.0, 40.0))]
    cases += [Setting("covariate", (5,) * 4, (t,) * 4) for t in (4.0, 40.0)]
    cases += [Setting("anova", (4, 8, 12), t) for t in ((4.0, 4.0, 4.0), (40.0, 4.0, 4.0))]
    return cases


def null_rates(n_voxels=100_000, seed=0, cases=None, dofs=DOFS, alphas=(0.05, 0.001), chunk=50_000):
    """Counts of voxels with one-sided p < alpha for each setting (default ``settings()``) and dof.

    Returns a list of dicts ``{"setting", "dof", "alpha", "count", "n"}``.
    """
    import voxfit

    rows = []
    for k, setting in enumerate(settings() if cases is None else cases):
        X, codes, weights = setting.arrays(seed)
        rng = np.random.default_rng([seed, k])
        tau2 = np.asarray(setting.tau2)[codes][:, None]
        counts = {(d, a): 0 for d in dofs for a in alphas}
        for start in range(0, n_voxels, chunk):
            V = min(chunk, n_voxels - start)
            s2 = MN.draw_s2(rng, (len(codes), V))
            effects = np.sqrt(s2 + tau2) * rng.standard_normal((len(codes), V))
            for dof in dofs:
                with warnings.catch_warnings():  # (small groups are what this script measures)
                    warnings.simplefilter("ignore", voxfit.exceptions.DesignWarning)
                    fit = voxfit.mixed_effects(X, effects, s2, {"c": weights}, groups=codes, dof=dof)
                p = fit.contrasts["c"].p
                for a in alphas:
                    counts[dof, a] += int(np.sum(p < a))
        rows += [{"setting": setting, "dof": d, "alpha": a, "count": c, "n": n_voxels} for (d, a), c in counts.items()]
    return rows


def print_table(rows, alphas=(0.05, 0.001)) -> None:
    """One line per setting, one column per dof, for each alpha."""
    dofs = list(dict.fromkeys(r["dof"] for r in rows))
    by = {(r["setting"], r["dof"], r["alpha"]): r for r in rows}
    cases = list(dict.fromkeys(r["setting"] for r in rows))
    for a in alphas:
        n = rows[0]["n"]
        lo, hi = MN.interval(round(a * n), n)
        print(f"\nrate of p < {a:g}; the 95% interval of a rate of {a:g} over {n:,} voxels is [{lo:.5f}, {hi:.5f}]")
        print(f"{'setting':<18}{'tau2 per group':<18}" + "".join(f"{d:>17}" for d in dofs))
        for s in cases:
            cells = [f"{by[s, d, a]['count'] / n:>14.5f} {MN.mark(by[s, d, a]['count'], n, a):<2}" for d in dofs]
            print(f"{s.name:<18}{'/'.join(f'{t:g}' for t in s.tau2):<18}" + "".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=100_000, help="voxels (null studies) per setting")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import voxfit

    print(
        f"voxfit {voxfit.__version__}: {args.voxels:,} null voxels per setting; s_i^2 log-uniform on "
        f"{list(MN.S2_RANGE)}, exact; one-sided p; ok / + (liberal) / - (conservative) against the exact 95% interval"
    )
    print_table(null_rates(args.voxels, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
