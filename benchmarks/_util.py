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
