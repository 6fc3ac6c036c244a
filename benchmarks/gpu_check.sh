#!/usr/bin/env bash
# GPU check (one short run, well under 5 minutes): voxfit on a CUDA GPU against the CPU, same data.
#   bash benchmarks/gpu_check.sh            (needs CuPy or PyTorch with CUDA, and voxfit installed)
#   VOXFIT_DEVICE=strict VOXFIT_CHECK_SCALE=0.01 bash benchmarks/gpu_check.sh
#                                           (the same checks through array-api-strict on the CPU, at a hundredth
#                                            of the sizes: what the tests run, without a GPU)
# Prints: OLS fit of 300 scans x 200,000 voxels, AR(1) fit of 300 scans x 100,000 voxels, and 10,000 sign-flips
# with max-T for 40 subjects x 100,000 voxels, each on the CPU and on the device, the speed-ups, and the largest
# differences of the results; then each difference against its threshold. Exits 1 when one is over.
#
# Thresholds: the device's OLS works in float32 after a shift by the first scan (exact on the host), and refits in
# float64 the voxels whose float32 sums lost digits, so its t values agree with the CPU's to 1e-3 of (1 + |t|) and
# its betas to 1e-4 of each voxel's scale (tests/test_device.py holds the same on array-api-strict); AR(p) sums on
# the device are float64, to 1e-6 of (1 + |t|) and 1e-6 in the AR coefficients; the permutations' maxima of float32
# statistics to 1e-4 relative, their FWE p-values to 5 / permutations (a tie at a float32 key may fall either way).
set -euo pipefail
python - <<'PY'
import os
import sys
import time

import numpy as np

import voxfit
from voxfit.inference import permutation_test

device = os.environ.get("VOXFIT_DEVICE", "cuda")
scale = float(os.environ.get("VOXFIT_CHECK_SCALE", "1"))
failures = []


def best(f, k=2):
    f(); times = []
    for _ in range(k):
        t = time.perf_counter(); out = f(); times.append(time.perf_counter() - t)
    return min(times), out


def check(what, value, limit):
    ok = bool(np.isfinite(value)) and value <= limit
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: {value:.2e} (threshold {limit:.0e})")
    if not ok:
        failures.append(what)


def relative_t(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    if (np.isfinite(a) != np.isfinite(b)).any():
        return np.inf  # a voxel valid on one side only
    return float(np.max(np.abs(a[ok] - b[ok]) / (1 + np.abs(a[ok])), initial=0.0))


rng = np.random.default_rng(0)
n = 300
V = max(500, int(200_000 * scale))
X = np.column_stack([np.sin(np.arange(n) / 7), np.cos(np.arange(n) / 13), np.ones(n)])
Y = (1000 + rng.standard_normal((n, V))).astype(np.float32)
tc, fc = best(lambda: voxfit.fit(X, Y))
tg, fg = best(lambda: voxfit.fit(X, Y, device=device))
tcpu, tdev = fc.contrast([1, 0, 0]).t, fg.contrast([1, 0, 0]).t
print(f"OLS fit {n} x {V:,} float32: CPU {tc:.3f} s, {device} {tg:.3f} s ({tc / tg:.1f}x); "
      f"max |t CPU - t {device}| = {np.nanmax(np.abs(tcpu - tdev)):.2e}")
check("OLS t, |difference| / (1 + |t|)", relative_t(tcpu, tdev), 1e-3)
spread = np.sqrt(np.maximum(fc.residual_variance, 1e-30)) + np.abs(fc.betas).max(axis=0)
check("OLS betas, |difference| / scale", float(np.nanmax(np.abs(fc.betas - fg.betas) / spread)), 1e-4)

V = max(500, int(100_000 * scale))
E = rng.standard_normal((n, V)).astype(np.float32)
for k in range(1, n):  # AR(1) noise, 0.4
    E[k] += 0.4 * E[k - 1]
Ya = 1000 + E
tc, ac = best(lambda: voxfit.fit_ar(X, Ya, 1, {"a": [1, 0, 0]}))
tg, ag = best(lambda: voxfit.fit_ar(X, Ya, 1, {"a": [1, 0, 0]}, device=device))
print(f"AR(1) fit {n} x {V:,} float32: CPU {tc:.3f} s, {device} {tg:.3f} s ({tc / tg:.1f}x); "
      f"max |t CPU - t {device}| = {np.nanmax(np.abs(ac.contrasts['a'].t - ag.contrasts['a'].t)):.2e}, "
      f"max |AR coef CPU - {device}| = {np.nanmax(np.abs(ac.ar - ag.ar)):.2e}")
check("AR(1) t, |difference| / (1 + |t|)", relative_t(ac.contrasts["a"].t, ag.contrasts["a"].t), 1e-6)
check("AR(1) coefficients, |difference|", float(np.nanmax(np.abs(ac.ar - ag.ar))), 1e-6)

m, W = 40, max(500, int(100_000 * scale))
perms = max(200, int(10_000 * scale))
G = (rng.standard_normal((m, W)) + 0.1).astype(np.float32)
one = np.ones((m, 1))
tc, pc = best(lambda: permutation_test(one, G, [1.0], n_permutations=perms, seed=0), k=1)
tg, pg = best(lambda: permutation_test(one, G, [1.0], n_permutations=perms, seed=0, device=device), k=1)
print(f"{perms:,} sign-flips, max-T, {m} x {W:,}: CPU {tc:.2f} s, {device} {tg:.2f} s ({tc / tg:.1f}x); "
      f"max |p_fwe CPU - {device}| = {np.nanmax(np.abs(pc.p_fwe - pg.p_fwe)):.2e}, "
      f"max |null max CPU - {device}| = {np.max(np.abs(pc.null_max - pg.null_max)):.2e}")
check("max-T null maxima, relative", float(np.max(np.abs(pc.null_max - pg.null_max) / np.abs(pc.null_max))), 1e-4)
check("FWE p-values, |difference|", float(np.nanmax(np.abs(pc.p_fwe - pg.p_fwe))), 5 / perms)

print("the device agrees with the CPU" if not failures else f"the device disagrees: {', '.join(failures)}")
sys.exit(1 if failures else 0)
PY
