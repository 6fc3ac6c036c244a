"""What the benchmark scripts share: timing a child process with its peak memory, and a scratch folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timing:
    """One child process: wall time (s), peak resident memory (bytes), CPU time (user + system, s)."""

    wall: float
    peak: int
    cpu: float


def timed_run(argv) -> Timing:
    """Wall time, peak resident memory and CPU time of one child process.

    Memory from GNU time's %M where available: the rusage of a child forked from this (large) process
    would count the parent's pages the child held before exec. For a tool that starts worker processes
    (joblib), this is its largest process, not their sum (CPU time: all of them, as GNU time counts).
    """
    start = time.perf_counter()
    if os.path.exists("/usr/bin/time"):
        proc = subprocess.run(["/usr/bin/time", "-f", "VOXFIT_MAXRSS %M %U %S", *argv], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-3000:]}")
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith("VOXFIT_MAXRSS")][-1].split()
        return Timing(wall, int(line[1]) * 1024, float(line[2]) + float(line[3]))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr.read().decode()[-3000:]}")
    return Timing(wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)


def timed_process(argv) -> tuple[float, int]:
    """Wall time and peak resident memory (bytes) of one child process (see :func:`timed_run`)."""
    t = timed_run(argv)
    return t.wall, t.peak


def best(argv, repeat: int, before=None) -> tuple[float, int]:
    """Best wall time and largest peak memory over `repeat` runs (`before()` called ahead of each)."""
    runs = []
    for _ in range(repeat):
        if before is not None:
            before()
        runs.append(timed_process(argv))
    return min(r[0] for r in runs), max(r[1] for r in runs)


@contextlib.contextmanager
def work_folder(keep: Path | None, prefix: str):
    """`keep` (created if needed, left in place) or a temporary folder removed afterwards."""
    folder = keep or Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def best_call(fn, repeat: int) -> float:
    """The fastest of `repeat` calls of `fn` in this process, in seconds (wall clock)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def best_timing(argv, repeat: int, before=None) -> Timing:
    """The fastest of `repeat` runs of one child process (`before()` called ahead of each), with the largest peak
    memory seen over the runs."""
    runs = []
    for _ in range(repeat):
        if before is not None:
            before()
        runs.append(timed_run(argv))
    return fastest(runs)


def best_in_turn(argv, baseline_argv, repeat: int) -> tuple[Timing, Timing]:
    """The fastest of `repeat` runs of `argv` and of its baseline's, each run of one beside a run of the other
    (baseline, then tool, `repeat` times): their ratio holds where the machine's speed drifts during a benchmark
    (a floor measured once, at its start, moved 1.4x between two runs of bench_users.py's mni part, and the
    ratios with it)."""
    tool, baseline = [], []
    for _ in range(repeat):
        baseline.append(timed_run(baseline_argv))
        tool.append(timed_run(argv))
    return fastest(tool), fastest(baseline)


def fastest(runs: list[Timing]) -> Timing:
    """The fastest run's wall and CPU time, with the largest peak memory seen over the runs."""
    best = min(runs, key=lambda t: t.wall)
    return Timing(best.wall, max(t.peak for t in runs), best.cpu)


def ellipsoid(shape, radii):
    """A boolean ellipsoid with the given radii (voxels) centred in a grid of `shape`."""
    import numpy as np

    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def task_design(n_scans: int, rng, tr: float = 2.0):
    """A 15-column first-level design as a DataFrame: 4 HRF-convolved block conditions A-D (16 s blocks in turn
    with a rest block), 6 motion-like random walks, 4 cosine drifts and a constant."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    t = np.arange(n_scans) * tr
    dt = tr / 16
    ht = np.arange(0, 32, dt)
    hrf = stats.gamma.pdf(ht, 6) - stats.gamma.pdf(ht, 16) / 6
    cols = {}
    for k, name in enumerate("ABCD"):
        box = np.repeat(((t // 16) % 5 == k).astype(float), 16)
        cols[name] = np.convolve(box, hrf)[: box.size][::16] * dt
    for k in range(6):
        cols[f"motion{k}"] = np.cumsum(rng.normal(0, 0.02, n_scans))
    for k in range(1, 5):
        cols[f"drift{k}"] = np.cos(np.pi * (np.arange(n_scans) + 0.5) * k / n_scans)
    cols["constant"] = np.ones(n_scans)
    return pd.DataFrame(cols)
