"""The default noise model's long-lag factor against the Monte Carlo truth k*, draw by draw.

    python validation/long_lags_truth.py DESIGN TR DRAWS      # e.g. block30 2 8

For each draw (seeds ``[s, 77]``), 20,000 voxels of ``noise_realistic.py``'s resting-state-like noise in a run of
600 s, fitted by the default ``ar{p}+lags`` (p = scans // 70): the factor the correction chose, and k*, the factor by
which AR(p) alone's t must be divided (squared) to make its rate of one-sided p < 0.05 exactly 0.05 (bisection). The
mean of factor - k* over the draws is the correction's bias (validation/results/noise_realistic.md).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from scipy import stats

spec = importlib.util.spec_from_file_location("nr", Path(__file__).with_name("noise_realistic.py"))
nr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nr)

from voxfit.design.kinds import column_kinds  # noqa: E402
from voxfit.models.glm import fit_noise_model  # noqa: E402


def truth(t0: np.ndarray, dof: np.ndarray) -> float:
    """k* such that the rate of one-sided p < 0.05 of t0 / sqrt(k*) is 0.05."""
    lo, hi = 0.5, 2.0
    for _ in range(50):
        k = (lo + hi) / 2
        lo, hi = (k, hi) if np.mean(stats.t.sf(t0 / np.sqrt(k), dof) < 0.05) > 0.05 else (lo, k)
    return k


def main(design_name: str, tr: float, draws: int) -> None:
    design = nr.task_design(design_name, tr)
    names, n = list(design.names), design.X.shape[0]
    noise = f"ar{max(1, min(12, n // 70))}+lags"
    misses = []
    for seed in range(draws):
        rng = np.random.default_rng([seed, 77])
        _, cube = nr.chunk_space(20000)
        coarse = nr.draw_parameters(rng, int(cube.max()) + 1)
        par = nr.NoiseParameters(*(getattr(coarse, k)[cube] for k in nr.NoiseParameters.__dataclass_fields__))
        Y = nr.simulate(rng, n, tr, 20000, par) + 1000.0
        kinds = column_kinds(design, names, design.X)
        fit = fit_noise_model(design.X, Y, names, [("task", "task")], noise, kinds=kinds, tr=tr)
        factor = fit.info["long_lags"]["variance_factors"]["task"]
        st = fit.contrasts["task"]
        k = truth(st.stat * np.sqrt(factor), st.dof)
        misses.append(factor - k)
        print(f"{design_name} TR {tr:g} draw {seed}: factor {factor:.4f}, k* {k:.4f}, rate {np.mean(st.p < 0.05):.4f}")
    print(f"{design_name} TR {tr:g} {noise}: mean of factor - k* over {draws} draws {np.mean(misses):+.4f}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
