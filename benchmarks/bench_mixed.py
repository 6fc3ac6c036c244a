"""Mixed-effects group model: voxfit.mixed_effects against a read pass over the data and against nipy.

    python benchmarks/bench_mixed.py [--subjects 40] [--voxels 200000] [--repeat 3] [--keep DIR]

Data (fixed seed): n = 40 subjects x V = 200,000 voxels of float32 effects and first-level variances in memory
(32 MB each), the variances log-uniform over [1, 10] per subject and voxel, a between-subject variance uniform
over [0, 4] per voxel and a mean effect of 0.3. Two designs: one-sample (the mean tested) and an intercept with
two standard normal covariates (the first covariate's slope tested).

- In this process (best of --repeat, wall clock): one read pass over effects and variances (their sums, the
  baseline); ``voxfit.mixed_effects(model="mixed")`` with one t contrast and its z, one thread (n_jobs=1) and
  all threads.
- Whole processes (GNU time, best of --repeat): ``python -c`` loading both arrays from .npy and summing them
  (no voxfit), against the same loading followed by the voxfit fit (all threads).
- nipy (``nipy.algorithms.statistics.mixed_effects_stat``: ``one_sample_ttest``, ``mfx_stat`` for the
  covariates; EM for the ML between-subject variance, likelihood-ratio t), one core (OMP/OPENBLAS/MKL threads 1
  and threadpoolctl), in a child process on float64 copies of the same arrays (the cast is not timed), the call
  alone timed on every voxel: with nipy's default n_iter=5, and with the iterations it needs to converge,
  extrapolated from the times at n_iter=5 and 50 (its cost is a fixed part plus a part per EM iteration).
  Convergence: the smallest n_iter of 5, 10, 20, 50, ..., 10000 at which the likelihood-ratio t of 99% of 2,000
  voxels is within 1e-2 of its value at 20,000 iterations (EM crawls where tau2 nears 0; the n_iter for 1e-3 is
  reported too, with the share within each at n_iter=5). voxfit's one-thread time is the one-core figure the
  ratios use.
- Peak memory of voxfit's fit (all threads) in a fresh process: the peak resident set during the fit (VmHWM
  after resetting it through /proc/self/clear_refs; ``getrusage`` ru_maxrss where that is not possible) minus
  the resident set (VmRSS) just before it, the arrays loaded from .npy, set against effects + variances.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from _util import best as best_process
from _util import best_call, work_folder

DESIGNS = ("one-sample", "covariates")
CHECKPOINTS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

FIT = """
import sys, numpy as np
sys.path.insert(0, {bench!r})
from bench_mixed import design
E = np.load({folder!r} + "/effects.npy"); S = np.load({folder!r} + "/variances.npy")
X, names, c, _ = design({kind!r}, E.shape[0])
"""
VOXFIT_PROCESS = (
    FIT
    + """
import voxfit
voxfit.mixed_effects(X, E, S, {{"c": c}}, names=names).contrasts["c"].z
"""
)
READ_PROCESS = """
import numpy as np
E = np.load({folder!r} + "/effects.npy"); S = np.load({folder!r} + "/variances.npy")
E.sum(); S.sum()
"""
NIPY_PROCESS = (
    FIT
    + """
import json, time
from threadpoolctl import threadpool_limits
from nipy.algorithms.statistics.mixed_effects_stat import mfx_stat, one_sample_ttest
E = E[:, :{voxels}].astype(np.float64); S = S[:, :{voxels}].astype(np.float64)
with threadpool_limits(1):
    t0 = time.perf_counter()
    if {kind!r} == "one-sample":
        t = one_sample_ttest(E, S, n_iter={n_iter})
    else:
        t = mfx_stat(E, S, X, 1, n_iter={n_iter})[0]
    print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""
)


def design(kind: str, n: int):
    """The design (n, p), its names, the tested column's name and index."""
    if kind == "one-sample":
        return np.ones((n, 1)), ["mean"], "mean", 0
    cov = np.random.default_rng(1).standard_normal((n, 2))
    return np.column_stack([np.ones(n), cov]), ["mean", "a", "b"], "a", 1


def make_data(n: int, V: int, seed: int = 0):
    """Effects and variances (n, V) float32, built in slabs (no float64 copy of the whole)."""
    rng = np.random.default_rng(seed)
    effects = np.empty((n, V), dtype=np.float32)
    variances = np.empty((n, V), dtype=np.float32)
    for s in range(0, V, 20000):
        e = min(V, s + 20000)
        s2 = np.exp(rng.uniform(0.0, np.log(10.0), (n, e - s)))
        tau2 = rng.uniform(0.0, 4.0, e - s)
        effects[:, s:e] = 0.3 + np.sqrt(s2 + tau2) * rng.standard_normal((n, e - s))
        variances[:, s:e] = s2
    return effects, variances


def voxfit_job(kind, E, S, **kwargs):
    import voxfit

    X, names, c, _ = design(kind, E.shape[0])
    return voxfit.mixed_effects(X, E, S, {"c": c}, names=names, **kwargs).contrasts["c"].z


def nipy_convergence(kind, E, S, sample=2000, reference=20000):
    """For tolerances 1e-2 and 1e-3: the smallest checkpoint n_iter at which 99% of `sample` voxels' likelihood-
    ratio t are within the tolerance of their value at `reference` iterations (`reference` if none), and the share
    within it at n_iter=5; by nipy's own EM steps (as mfx_stat: a model with and one without the tested column),
    one thread."""
    from nipy.algorithms.statistics.mixed_effects_stat import MixedEffectsModel
    from threadpoolctl import threadpool_limits

    X, _, _, column = design(kind, E.shape[0])
    Y, V1 = E[:, :sample].astype(np.float64), S[:, :sample].astype(np.float64)
    X0 = X * (1 - np.eye(X.shape[1])[column])
    with threadpool_limits(1):
        m1, m0 = MixedEffectsModel(X, n_iter=0).fit(Y, V1), MixedEffectsModel(X0, n_iter=0).fit(Y, V1)
        ts = {}
        for k in range(1, reference + 1):
            m1._one_step(Y, V1)
            m0._one_step(Y, V1)
            if k in CHECKPOINTS or k == reference:
                lr = np.maximum(0, 2 * (m1.log_like(Y, V1) - m0.log_like(Y, V1)))
                ts[k] = np.sqrt(lr) * np.sign(m1.beta_[column])
    out = {}
    for tol in (1e-2, 1e-3):
        close = {k: np.abs(ts[k] - ts[reference]) <= tol for k in CHECKPOINTS}
        needed = next((k for k in CHECKPOINTS if close[k].mean() >= 0.99), reference)
        out[tol] = (needed, float(close[5].mean()))
    return out


def nipy_seconds(folder: Path, kind: str, voxels: int, n_iter: int) -> float:
    code = NIPY_PROCESS.format(
        bench=str(Path(__file__).parent), folder=str(folder), kind=kind, voxels=voxels, n_iter=n_iter
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **ONE_CORE}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_child(folder: Path, kind: str) -> None:
    """In a fresh process: the resident set before the fit and the peak after it (bytes). The peak is reset first
    (``/proc/self/clear_refs``, Linux) so that imports and the warm-up do not hide the fit's own; where that is not
    possible, ``getrusage`` ru_maxrss, which may then underestimate (its value before the fit is printed)."""
    import gc
    import resource

    E, S = np.load(folder / "effects.npy"), np.load(folder / "variances.npy")
    voxfit_job(kind, E[:, :1000], S[:, :1000])  # imports and first calls are not the data's cost
    gc.collect()
    before = _status_bytes("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        voxfit_job(kind, E, S)
        peak, how = _status_bytes("VmHWM"), "VmHWM after clear_refs"
    except OSError:
        voxfit_job(kind, E, S)
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    data = E.nbytes + S.nbytes
    print(json.dumps({"before": before, "maxrss_before": maxrss_before, "peak": peak, "how": how, "data": data}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--voxels", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the .npy data in this folder")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(Path(args.memory_child[0]), args.memory_child[1])
        return 0

    import voxfit

    n, V = args.subjects, args.voxels
    E, S = make_data(n, V)
    print(
        f"voxfit {voxfit.__version__}: {n} subjects x {V:,} voxels, effects and variances float32 "
        f"({(E.nbytes + S.nbytes) / 2**20:.0f} MiB together); {os.cpu_count()} CPUs; best of {args.repeat}"
    )
    try:
        import nipy

        nipy_version = nipy.__version__
    except ImportError:
        nipy_version = None
        print("(nipy not installed: pip install '.[bench]'; its rows are left out)")
    read = best_call(lambda: (E.sum(), S.sum()), args.repeat)
    with work_folder(args.keep, "voxfit-bench-mixed-") as folder:
        np.save(folder / "effects.npy", E)
        np.save(folder / "variances.npy", S)
        read_proc = best_process([sys.executable, "-c", READ_PROCESS.format(folder=str(folder))], args.repeat)
        for kind in DESIGNS:
            print(f"\n{kind}: mixed, REML tau2, one t contrast with z")
            voxfit_job(kind, E[:, :1000], S[:, :1000])  # imports
            one = best_call(lambda kind=kind: voxfit_job(kind, E, S, n_jobs=1), args.repeat)
            every = best_call(lambda kind=kind: voxfit_job(kind, E, S), args.repeat)
            code = VOXFIT_PROCESS.format(bench=str(Path(__file__).parent), folder=str(folder), kind=kind)
            proc = best_process([sys.executable, "-c", code], args.repeat)
            rows = [
                ("one read pass over effects + variances (sums), in process", read, None),
                ("voxfit.mixed_effects, one thread (n_jobs=1)", one, None),
                ("voxfit.mixed_effects, all threads", every, None),
                ("whole process: python -c, load .npy + sums (no voxfit)", read_proc[0], read_proc[1]),
                ("whole process: load .npy + voxfit.mixed_effects (all threads)", proc[0], proc[1]),
            ]
            if nipy_version:
                conv = nipy_convergence(kind, E, S)
                needed = conv[1e-2][0]
                t5 = nipy_seconds(folder, kind, V, 5)
                t50 = nipy_seconds(folder, kind, V, 50)
                converged = t5 + (needed - 5) * (t50 - t5) / 45
                rows += [
                    (f"nipy {nipy_version}, n_iter=5 (its default), one core", t5, None),
                    ("nipy, n_iter=50, one core", t50, None),
                    (f"nipy, n_iter={needed} (converged to 1e-2 in t), one core, extrapolated", converged, None),
                ]
            width = max(len(r[0]) for r in rows)
            for label, t, rss in rows:
                mem = f"  peak {rss / 2**20:7.0f} MiB" if rss else ""
                print(
                    f"{label:<{width}}  {t:9.3f} s  {t / read:8.1f} x read pass  {t / one:8.2f} x voxfit 1 thread{mem}"
                )
            if nipy_version:
                print(
                    "nipy's EM: the share of 2,000 voxels whose t is within 1e-2 / 1e-3 of its value at 20,000 "
                    f"iterations is {100 * conv[1e-2][1]:.1f}% / {100 * conv[1e-3][1]:.1f}% at n_iter=5; 99% are "
                    f"within 1e-2 at n_iter={conv[1e-2][0]} and within 1e-3 at n_iter={conv[1e-3][0]}. "
                    f"One core each, nipy takes {t5 / one:.1f}x voxfit's time at n_iter=5 and {converged / one:.0f}x "
                    f"converged (1e-2)"
                )
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(folder), kind],
                capture_output=True,
                text=True,
                check=True,
            )
            mem = json.loads(out.stdout)
            extra = mem["peak"] - mem["before"]
            print(
                f"peak memory of the fit (fresh process, {mem['how']} - VmRSS before): {extra / 2**20:.1f} MiB = "
                f"{extra / mem['data']:.2f} x effects + variances ({mem['data'] / 2**20:.0f} MiB); ru_maxrss before "
                f"the fit was {(mem['maxrss_before'] - mem['before']) / 2**20:.1f} MiB above VmRSS"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
