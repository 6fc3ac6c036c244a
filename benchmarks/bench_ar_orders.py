"""Per-voxel AR(p) fits at high orders against AR(1): ``fit_ar`` at several orders and ``fit_film``, one thread.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_ar_orders.py [--scans 200] [--voxels 120000]
        [--orders 1 2 4 8 14] [--repeat 3]

Data (generated, fixed seed): float32 AR(2) noise (0.4, 0.2) around 1000 with an event effect in a quarter of
the voxels; the design has ~15 columns: two event regressors (boxcars convolved with a gamma HRF), six motion
traces (random walks), cosine drifts below 1/128 Hz and the constant. Each model is timed in this process,
best of `--repeat` calls, ``n_jobs=1``; printed as seconds and as a multiple of AR(1). FILM runs without its
spatial step (no mask's grid), which is the same per-voxel work plus a smoothing of the M + 1 autocorrelations.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from _util import best_call


def make_design(n: int, tr: float, rng) -> np.ndarray:
    """Events (2), motion (6), cosine drifts (high-pass 128 s) and the constant: ~15 columns."""
    t = np.arange(n) * tr
    hrf_t = np.arange(0, 30, tr)
    hrf = hrf_t**5 * np.exp(-hrf_t) / 120 - hrf_t**15 * np.exp(-hrf_t) / (6 * 1.3e12)
    events = []
    for _ in range(2):
        onsets = np.sort(rng.choice(n, size=n // 10, replace=False))
        box = np.zeros(n)
        box[onsets] = 1.0
        events.append(np.convolve(box, hrf)[:n])
    motion = np.cumsum(rng.standard_normal((n, 6)) * 0.02, axis=0)
    k = int(np.floor(2 * n * tr / 128))
    cosines = np.cos(np.pi * np.outer(t / tr + 0.5, np.arange(1, k + 1)) / n)
    return np.column_stack(events + [motion, cosines, np.ones(n)])


def make_data(n: int, V: int, X: np.ndarray, rng) -> np.ndarray:
    """float32 AR(2) noise around 1000, the first event's effect in a quarter of the voxels."""
    e = rng.standard_normal((n, V)).astype(np.float32)
    for t in range(2, n):
        e[t] += 0.4 * e[t - 1] + 0.2 * e[t - 2]
    e += 1000.0
    e[:, : V // 4] += (2.0 * X[:, :1]).astype(np.float32)
    return e


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--voxels", type=int, default=120_000)
    ap.add_argument("--orders", type=int, nargs="+", default=[1, 2, 4, 8, 14])
    ap.add_argument("--film", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var) != "1":
            print(f"warning: {var} is not 1; set it before Python starts for one-thread figures", file=sys.stderr)

    from voxfit import Execution
    from voxfit.core.film import film_lags
    from voxfit.engine.ar import fit_ar
    from voxfit.engine.noise_models import fit_film

    rng = np.random.default_rng(0)
    X = make_design(args.scans, 2.0, rng)
    Y = make_data(args.scans, args.voxels, X, rng)
    contrasts = {"a": [1.0] + [0.0] * (X.shape[1] - 1), "a-b": [1.0, -1.0] + [0.0] * (X.shape[1] - 2)}
    execution = Execution(n_jobs=1)
    print(f"{args.scans} scans x {args.voxels} voxels float32, design {X.shape[1]} columns, one thread")
    times = {}
    for p in args.orders:
        times[f"ar{p}"] = best_call(lambda p=p: fit_ar(X, Y, p, contrasts, execution=execution), args.repeat)
        print(f"ar{p:<5d} {times[f'ar{p}']:8.2f} s", flush=True)
    if args.film:
        times["film"] = best_call(lambda: fit_film(X, Y, contrasts, execution=execution), args.repeat)
        print(f"film   {times['film']:8.2f} s  (AR({film_lags(args.scans)}))", flush=True)
    if "ar1" in times:
        print("as a multiple of ar1: " + ", ".join(f"{k} {t / times['ar1']:.2f}x" for k, t in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
