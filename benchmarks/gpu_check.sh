#!/usr/bin/env bash
# GPU check (one short run, well under 5 minutes): voxfit on a CUDA GPU against the CPU, same data.
#   bash benchmarks/gpu_check.sh            (needs CuPy or PyTorch with CUDA, and voxfit installed)
# Prints: OLS fit of 300 scans x 200,000 voxels, AR(1) fit of 300 scans x 100,000 voxels, and 10,000 sign-flips
# with max-T for 40 subjects x 100,000 voxels, each on the CPU and on the GPU, the speed-ups, and the largest
# differences of the results.
set -euo pipefail
python - <<'PY'
import time
import numpy as np
import voxfit
from voxfit.inference import permutation_test

def best(f, k=2):
    f(); times = []
    for _ in range(k):
        t = time.perf_counter(); out = f(); times.append(time.perf_counter() - t)
    return min(times), out

rng = np.random.default_rng(0)
n, V = 300, 200_000
X = np.column_stack([np.sin(np.arange(n) / 7), np.cos(np.arange(n) / 13), np.ones(n)])
Y = (1000 + rng.standard_normal((n, V))).astype(np.float32)
tc, fc = best(lambda: voxfit.fit(X, Y))
tg, fg = best(lambda: voxfit.fit(X, Y, device="cuda"))
dt = np.nanmax(np.abs(fc.contrast([1, 0, 0]).t - fg.contrast([1, 0, 0]).t))
print(f"OLS fit {n} x {V:,} float32: CPU {tc:.3f} s, GPU {tg:.3f} s ({tc / tg:.1f}x); max |t CPU - t GPU| = {dt:.2e}")

V = 100_000
E = rng.standard_normal((n, V)).astype(np.float32)
for k in range(1, n):  # AR(1) noise, 0.4
    E[k] += 0.4 * E[k - 1]
Ya = 1000 + E
tc, ac = best(lambda: voxfit.fit_ar(X, Ya, 1, {"a": [1, 0, 0]}))
tg, ag = best(lambda: voxfit.fit_ar(X, Ya, 1, {"a": [1, 0, 0]}, device="cuda"))
dt = np.nanmax(np.abs(ac.contrasts["a"].t - ag.contrasts["a"].t))
print(f"AR(1) fit {n} x {V:,} float32: CPU {tc:.3f} s, GPU {tg:.3f} s ({tc / tg:.1f}x); max |t CPU - t GPU| = {dt:.2e}, "
      f"max |AR coef CPU - GPU| = {np.nanmax(np.abs(ac.ar - ag.ar)):.2e}")

m, W = 40, 100_000
G = (rng.standard_normal((m, W)) + 0.1).astype(np.float32)
one = np.ones((m, 1))
tc, pc = best(lambda: permutation_test(one, G, [1.0], n_permutations=10_000, seed=0), k=1)
tg, pg = best(lambda: permutation_test(one, G, [1.0], n_permutations=10_000, seed=0, device="cuda"), k=1)
print(f"10,000 sign-flips, max-T, {m} x {W:,}: CPU {tc:.2f} s, GPU {tg:.2f} s ({tc / tg:.1f}x); "
      f"max |p_fwe CPU - GPU| = {np.nanmax(np.abs(pc.p_fwe - pg.p_fwe)):.2e}, "
      f"max |null max CPU - GPU| = {np.max(np.abs(pc.null_max - pg.null_max)):.2e}")
PY
