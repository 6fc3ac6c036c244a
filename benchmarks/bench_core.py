"""Benchmark of the estimation core: one design, 200,000 voxels, against one read pass over the data.

    python benchmarks/bench_core.py [--voxels 200000] [--scans 300] [--regressors 15] [--repeat 5]

Data: n x V float32 in memory (n = 300, p = 15, V = 200,000: 240 MB), BOLD-like (mean 1000, noise 10).
Timed (best of --repeat, wall clock) in a session that has loaded the compiled kernels (``warm_up``): one read
pass over Y (``Y.sum()``, the baseline, measured in the same run); ``voxfit.fit`` + residual variance + one t
contrast with z (also with numpy's pass instead of the compiled one); the same with p and -log10 p; per-voxel
loops of statsmodels OLS and numpy lstsq, extrapolated from a sample of voxels; numpy lstsq on all voxels
at once (float64). Peak memory beyond Y is measured in a fresh process (peak resident set during the job
minus the resident set before it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np
from _util import best_call


def make_data(n: int, p: int, V: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.standard_normal((n, p - 1)), np.ones(n)])
    Y = np.empty((n, V), dtype=np.float32)
    for s in range(0, V, 2000):  # build in slabs: no float64 copy of the whole
        e = min(V, s + 2000)
        beta = rng.standard_normal((p, e - s)) * 0.5
        beta[-1] = 1000.0
        Y[:, s:e] = X @ beta + 10.0 * rng.standard_normal((n, e - s))
    return X, Y


def voxfit_job(X, Y, c, with_p=False, **kwargs):
    import voxfit

    fit = voxfit.fit(X, Y, **kwargs)
    stats = fit.contrast(c)
    out = (fit.residual_variance, stats.z)
    if with_p:
        out += (stats.p, stats.logp)
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(n: int, p: int, V: int) -> None:
    """In a fresh process: resident memory just before the fit, and its peak during fit + contrast with z.

    The peak is reset first (``/proc/self/clear_refs``, Linux), so that building Y and compiling kernels
    do not hide the fit's own peak; elsewhere ``ru_maxrss`` is used and may underestimate.
    """
    import gc

    X, Y = make_data(n, p, V)
    c = np.eye(p)[0]
    import voxfit.core

    voxfit.core.warm_up(n - p)  # imports, compiled kernels and the t -> z table are not the data's cost
    voxfit_job(X, Y[:, :1000], c)
    gc.collect()
    try:
        before = _status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        voxfit_job(X, Y, c)
        peak = _status_kib("VmHWM") * 1024
    except (OSError, KeyError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        voxfit_job(X, Y, c)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "after": peak, "y_bytes": Y.nbytes}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--scans", type=int, default=300)
    ap.add_argument("--regressors", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sample", type=int, default=300, help="voxels timed for the per-voxel loops")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n, p, V = args.scans, args.regressors, args.voxels
    if args.memory_child:
        memory_child(n, p, V)
        return 0

    import voxfit
    import voxfit.core

    X, Y = make_data(n, p, V)
    c = np.eye(p)[0]
    voxfit.core.warm_up(n - p)  # a session that fits more than once: compiled kernels loaded, t -> z table built
    print(
        f"voxfit {voxfit.__version__}: n = {n} scans, p = {p} regressors, V = {V:,} voxels, "
        f"Y float32 {Y.nbytes / 2**20:.0f} MiB; best of {args.repeat}"
    )

    rows = []
    read = best_call(lambda: Y.sum(), args.repeat)
    rows.append(("one read pass over Y (Y.sum())", read))
    pinv32 = np.linalg.pinv(X).astype(np.float32)
    rows.append(
        ("for scale: the single GEMM pinv(X) @ Y, float32, BLAS threads", best_call(lambda: pinv32 @ Y, args.repeat))
    )
    rows.append(
        ("voxfit: fit + residual variance + t contrast with z", best_call(lambda: voxfit_job(X, Y, c), args.repeat))
    )
    rows.append(("  same, with p and -log10 p", best_call(lambda: voxfit_job(X, Y, c, with_p=True), args.repeat)))
    rows.append(("  same, one thread (n_jobs=1)", best_call(lambda: voxfit_job(X, Y, c, n_jobs=1), args.repeat)))
    rows.append(
        (
            "  same, numpy pass instead of the compiled one",
            best_call(lambda: voxfit_job(X, Y, c, compiled=False), args.repeat),
        )
    )

    k = min(args.sample, V)
    sample = Y[:, :k].astype(np.float64)

    def lstsq_loop():
        for j in range(k):
            np.linalg.lstsq(X, sample[:, j], rcond=None)

    rows.append((f"numpy lstsq, voxel by voxel (from {k} voxels)", best_call(lstsq_loop, 1) * V / k))
    try:
        import statsmodels.api as sm

        def sm_loop():
            for j in range(k):
                res = sm.OLS(sample[:, j], X).fit()
                res.t_test(c)

        rows.append((f"statsmodels OLS + t_test, voxel by voxel (from {k} voxels)", best_call(sm_loop, 1) * V / k))
    except ImportError:
        print("(statsmodels not installed: pip install '.[bench]')")
    chunk = min(V, 20000)
    rows.append(
        (
            f"numpy lstsq on all voxels at once, float64 (from {chunk})",
            best_call(lambda: np.linalg.lstsq(X, Y[:, :chunk].astype(np.float64), rcond=None), 1) * V / chunk,
        )
    )

    width = max(len(r[0]) for r in rows)
    for label, t in rows:
        print(f"{label:<{width}}  {t * 1e3:10.1f} ms  {t / read:8.2f} x read pass")

    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", f"--voxels={V}", f"--scans={n}", f"--regressors={p}"],
        capture_output=True,
        text=True,
        check=True,
    )
    mem = json.loads(out.stdout)
    extra = mem["after"] - mem["before"]
    print(
        f"peak memory beyond Y (fresh process, VmHWM - VmRSS): {extra / 2**20:.1f} MiB = "
        f"{100 * extra / mem['y_bytes']:.1f}% of Y ({mem['y_bytes'] / 2**20:.0f} MiB); "
        f"results alone (betas + 3 maps) are {(p + 3) * 8 * V / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
