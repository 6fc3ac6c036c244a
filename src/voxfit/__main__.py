"""``python -m voxfit``: a short demonstration on generated data (the command line arrives with ``voxfit demo``).

Fits the tutorial's 12-scan example, then a synthetic run of 50,000 voxels in which 500 respond to a
task, and reports what was found and how long it took.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import voxfit


def main() -> int:
    np.set_printoptions(precision=2, suppress=True)
    X = np.column_stack([np.linspace(-1, 1, 12), np.ones(12)])
    Y = np.array([[-0.73, 1.28, -0.76], [0.8, 0.29, 0.33], [-0.52, 1.71, -1.63], [-1.64, -0.18, 1.19],
                  [-1.23, 0.48, 0.3], [-1.01, -2.79, 0.2], [-0.73, 1.37, -0.03], [-0.53, -0.94, 1.16],
                  [-0.09, 0.84, 1.17], [0.26, -0.25, 0.38], [0.22, 0.36, 0.04], [-1.72, -0.33, 0.79]])  # fmt: skip
    fit = voxfit.fit(X, Y, names=["slope", "intercept"])
    print("The tutorial's example: 12 scans, a linear trend and a constant, 3 voxels")
    print(f"betas (rows: slope, intercept; columns: voxels):\n{fit.betas}")
    print(f"t for the slope: {fit.contrast('slope').t}\n")

    rng = np.random.default_rng(42)
    n, V, active = 200, 50_000, 500
    task = (np.arange(n) // 10 % 2).astype(float)  # 20 s on, 20 s off at TR = 2 s
    design = np.column_stack([task, np.linspace(-1, 1, n), np.ones(n)])
    data = (1000 + 10 * rng.standard_normal((n, V))).astype(np.float32)
    data[:, :active] += 5 * task[:, None].astype(np.float32)  # a 0.5% signal change in the first 500 voxels
    start = time.perf_counter()
    fit = voxfit.fit(design, data, names=["task", "drift", "constant"])
    stats = fit.contrast("task")
    elapsed = time.perf_counter() - start
    hits = stats.z > 3.09  # p < 0.001, uncorrected
    print(f"A synthetic run: {n} scans x {V:,} voxels (float32, {data.nbytes / 2**20:.0f} MiB), "
          f"{active} voxels respond to the task")
    print(f"fit + t contrast + z in {elapsed * 1e3:.0f} ms ({fit.dof} residual dof)")
    print(f"z > 3.09 (p < 0.001): {hits[:active].sum()} of {active} responding voxels, "
          f"{hits[active:].sum()} of {V - active:,} others (about {0.001 * (V - active):.0f} expected by chance)")
    print(f"largest z: {np.nanmax(stats.z):.1f}, smallest p: {stats.p.min():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
