"""What the benchmark scripts share: timing a child process with its peak memory, and a scratch folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def timed_process(argv) -> tuple[float, int]:
    """Wall time and peak resident memory (bytes) of one child process.

    Memory from GNU time's %M where available: the rusage of a child forked from this (large) process
    would count the parent's pages the child held before exec. For a tool that starts worker processes
    (joblib), this is its largest process, not their sum.
    """
    start = time.perf_counter()
    if os.path.exists("/usr/bin/time"):
        proc = subprocess.run(["/usr/bin/time", "-f", "VOXFIT_MAXRSS %M", *argv], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-3000:]}")
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith("VOXFIT_MAXRSS")][-1]
        return wall, int(line.split()[1]) * 1024
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss * 1024


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
