"""Shared fixtures: seeds that vary between runs (tests must pass for any seed) and reference data; in a parallel
run (pytest-xdist's ``-n``), numba's kernels compiled once into their disk cache while the workers collect."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest


@pytest.fixture(params=[0, 1, 2])
def rng(request):
    """A random generator; VOXFIT_TEST_SEED shifts the seeds so a run can explore others."""
    return np.random.default_rng(request.param + int(os.environ.get("VOXFIT_TEST_SEED", "0")))


@pytest.fixture
def no_reserve(monkeypatch):
    """Streamed fits keep none of the memory cap for the interpreter, so that tests can stream kilobytes of
    data under kilobyte caps (outside tests, 256 MiB of the cap are kept for it)."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)  # (read through reserved_bytes by every plan)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "planted_model_json: the test writes model.json files that are not of this version on purpose (older "
        "forms, refusals); the check of every model.json under its tmp_path is skipped",
    )
    workers = getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") != "no"
    if workers and not hasattr(config, "workerinput") and not config.option.collectonly:
        _warm_numba_cache(config)
        config.option.loadscopereorder = False  # (xdist's order by count of tests; see LONGEST_FIRST)
    if hasattr(config, "workerinput") or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # an xdist worker starts with SIGINT ignored (the controller takes Ctrl-C), as does a run a script started
        # in the background, and the processes the tests start inherit that: the tests of Ctrl-C need Python's own
        # handler, here and in those children
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(config, "workerinput"):
        _share_the_cpus(int(config.workerinput.get("workercount", 1)))


# The files whose tests take longest, longest first (seconds summed over a run's two workers, 2026-12-07): sent
# to the workers before the rest, so that both finish together. xdist's own order, by count of tests, sent
# test_validation (13 tests, 92 s) near the end: one worker ran it alone (486 s against 467 s by this order, the
# run's durations replayed through xdist's scheduling).
LONGEST_FIRST = (
    "test_hostile_memory.py",  # 135 s
    "test_bids_layouts.py",  # 130 s
    "test_validation.py",  # 84 s
    "test_bids_study.py",  # 83 s
    "test_hostile_work.py",  # 68 s
    "test_bids_broken.py",  # 41 s
    "test_bench_users.py",  # 24 s
    "test_group_mixed.py",  # 22 s
)


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # (stable: each file's own order kept)


_LIMITS = []  # (the worker's BLAS limits, held for the whole run)


def _share_the_cpus(workers: int) -> None:
    """Each xdist worker's BLAS and OpenMP pools, and those of the processes its tests start, sized to its share
    of the CPUs, unless the environment sizes them: pools of every worker spinning over all the cores slowed
    the suite (a test of 7 s alone took 50 s beside another worker; two heavy files 36 s, 21 s shared)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if any(name in os.environ for name in names):
        return
    from threadpoolctl import threadpool_limits

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    for name in names:
        os.environ[name] = str(threads)
    _LIMITS.append(threadpool_limits(threads))


WARMUP = "VOXFIT_TEST_WARMUP"  # the file a parallel run's warm-up writes once it has ended, for its workers


def _warm_numba_cache(config) -> None:
    """Compile the kernels into numba's disk cache as the workers start, in ``numba_warmup.py``'s parts at once
    (one process each), so that each kernel is compiled once in the run, not by every worker and child process
    that calls it first; each worker collects the tests meanwhile and waits for the warm-up before its first test
    (:func:`pytest_runtestloop`). From a clean clone on 2 cores the parts take ~21 s and a worker's collection
    ~8 s of imports: in turn, 29 s before the first test. Serial runs skip this: each kernel is then compiled by
    the first test that needs it (or loaded from the cache). A part that fails is reported at the end
    (:func:`pytest_terminal_summary`) and the run goes on: the tests compile what they call, and fail themselves
    where a kernel does."""
    package = importlib.util.find_spec("voxfit").submodule_search_locations[0]
    path = os.pathsep.join([str(Path(package).parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = Path(__file__).with_name("numba_warmup.py")
    parts = ("maps", "fits", "ar")
    children = [
        subprocess.Popen(
            [sys.executable, str(script), part],
            env=dict(os.environ, PYTHONPATH=path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",
        )
        for part in parts
    ]
    folder = Path(tempfile.mkdtemp(prefix="voxfit-warmup-"))
    done = folder / "done.json"
    os.environ[WARMUP] = str(done)  # (the workers, started after this hook, inherit it)

    def wait() -> None:
        """Each part's end (at most 15 minutes, then ended), and the file the workers wait for, written whatever
        happens here: a worker is never left waiting for it."""
        failed = []
        try:
            for part, child in zip(parts, children):
                try:
                    output = child.communicate(timeout=900)[0]
                except subprocess.TimeoutExpired:
                    child.kill()
                    output = child.communicate()[0] + "\n(ended after 15 minutes)"
                if child.returncode and child.returncode < 0:  # (ended by a signal: Ctrl-C, or the kill above)
                    failed.append(f"numba_warmup.py {part} ended by signal {-child.returncode}")
                elif child.returncode:
                    failed.append(f"numba_warmup.py {part} failed ({child.returncode}): {output[-2000:]}")
        except BaseException as exc:  # noqa: BLE001 (said at the end of the run)
            failed.append(f"numba_warmup.py: its end could not be read ({type(exc).__name__}: {exc})")
        finally:
            (folder / "partial").write_text(json.dumps(failed))
            os.replace(folder / "partial", done)  # (whole or absent to the workers that wait for it)

    thread = threading.Thread(target=wait, name="numba-warmup", daemon=True)
    thread.start()
    config.stash[_WARMING] = (children, thread, folder)
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum, frame):
        """Ctrl-C: the warm-up's processes ended at once (a compiler holds its own SIGINT until it returns to
        Python, seconds later), so that no worker waits for them, then the run's own handling."""
        _end_warm_up(config)
        signal.signal(signal.SIGINT, previous)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGINT, interrupted)


_WARMING = pytest.StashKey[tuple]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """A worker of a parallel run, once it has collected the tests: wait for the controller's warm-up
    (:func:`_warm_numba_cache`), at most 30 minutes, before the first test."""
    done = os.environ.get(WARMUP)
    if done is None or not hasattr(session.config, "workerinput"):
        return
    deadline = time.monotonic() + 1800
    while not os.path.exists(done) and time.monotonic() < deadline:
        time.sleep(0.05)


def pytest_terminal_summary(terminalreporter, config):
    """The warm-up's parts that failed, said once the run is over."""
    warming = config.stash.get(_WARMING, None)
    if warming is None:
        return
    warming[1].join()
    done = warming[2] / "done.json"
    for failure in json.loads(done.read_text()) if done.exists() else ["numba_warmup.py: no record of its end"]:
        terminalreporter.write_line(f"WARNING: {failure}", yellow=True)


def pytest_unconfigure(config):
    """The warm-up's processes ended (an interrupted run's too) and its folder removed."""
    warming = _end_warm_up(config)
    if warming is not None:
        warming[1].join()
        shutil.rmtree(warming[2], ignore_errors=True)


def _end_warm_up(config):
    warming = None if config is None else config.stash.get(_WARMING, None)
    for child in warming[0] if warming is not None else ():
        if child.poll() is None:
            child.kill()
    return warming


@pytest.fixture(autouse=True)
def no_voxfit_thread_left():
    """After each test, the voxfit threads that the test started have ended (waited for, 10 s in all): a thread
    left working slows every later test of its worker (one, abandoned in a loop of SVDs, took 4 minutes of a
    core beside the suite). The kernels' compilation in the background (``voxfit-kernels``, once per process,
    which a study leaves running on purpose) is waited for up to 5 minutes: from a cold cache on a busy machine it
    outlasted the 10 s (a serial run, without the parallel run's warm-up)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    # (not one whose start a signal cut short: CPython leaves it unstarted, never running, and join refuses it)
    new = [t for t in threading.enumerate() if t not in before and t.name.startswith("voxfit-") and t.is_alive()]
    for thread in new:
        wait = 300 if thread.name == "voxfit-kernels" else max(0.0, deadline - time.monotonic())
        thread.join(wait)
    left = [thread.name for thread in new if thread.is_alive()]
    assert not left, f"the test left voxfit's threads running: {left}"


@pytest.fixture(autouse=True)
def model_json_valid(request):
    """After each test that has a tmp_path: every model.json under it holds to the package's JSON Schema
    (voxfit/models/model.schema.json), so that every file the suite makes is checked. Files that are not JSON
    objects are left out: voxfit writes only objects, so those were planted by a test of refusals."""
    checked = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("planted_model_json")
    tmp_path = request.getfixturevalue("tmp_path") if checked else None  # (set up first: torn down after the check)
    yield
    for path in tmp_path.rglob("model.json") if checked else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _schema().iter_errors(record)]
            assert not errors, f"{path} does not hold to model.schema.json: {errors}"


@functools.cache
def _schema():
    from voxfit.models.record import schema

    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
