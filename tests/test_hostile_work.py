"""Issue 14, hostile and broken input: work that cannot be stopped (class 3) and wrong numbers with exit 0 (class 5).

Class 3: every command stops within 2 s of SIGINT, SIGTERM or SIGHUP, exit 130, one line, nothing left behind; checked
on child processes at several phases of workloads that take well over 10 s (fitting, permutations, writing, a
streamed read). Contrast expressions and F contrasts are bounded before any work is done.

Class 5: extreme but valid numbers give the numbers of an independent reference (numpy's lstsq on a rescaled
design, mpmath at 50 digits); numbers that float64 cannot carry through the fit are refused or made NaN with
a message, never turned into a confident wrong answer.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

import voxfit
from voxfit import _threads, cli
from voxfit._threads import DaemonExecutor, blas_single_threaded, in_chunks, interruptible, run_in_threads
from voxfit.core import factorize, parse_contrast
from voxfit.core.ols import fit_from_sums
from voxfit.core.expr import MAX_EXPRESSION_LENGTH, MAX_NESTING
from voxfit.exceptions import ContrastError, DataRangeWarning, InputError

SRC = Path(voxfit.__file__).resolve().parents[1]
NAMES = ("A", "B", "c")


def small_design(rng, n=24):
    return np.column_stack([rng.standard_normal(n), rng.standard_normal(n), np.ones(n)])


# ----------------------------------------------------------------------------------------------------------
# class 3: bounded expressions and contrasts


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 250, 5000])
def test_deep_parentheses_are_refused_with_the_limit(depth):
    with pytest.raises(ContrastError, match=f"nested more than {MAX_NESTING} deep"):
        parse_contrast("(" * depth + "A" + ")" * depth, NAMES)


def test_nesting_up_to_the_limit_parses():
    npt.assert_array_equal(parse_contrast("(" * MAX_NESTING + "A - B" + ")" * MAX_NESTING, NAMES), [[1, -1, 0]])
    npt.assert_array_equal(parse_contrast("2*((A) - ((B)/2))", NAMES), [[2, -1, 0]])


@pytest.mark.parametrize("count", [1, 2, 999, 10_000, 50_001])
def test_runs_of_signs_are_a_loop_not_recursion(count):
    sign = -1.0 if count % 2 else 1.0
    npt.assert_array_equal(parse_contrast("-" * count + "A", NAMES), [[sign, 0, 0]])
    if 4 * count < MAX_EXPRESSION_LENGTH:
        npt.assert_array_equal(parse_contrast("B" + " + -" * count + "A", NAMES), [[sign, 1, 0]])


@pytest.mark.parametrize("text", ["-" * 100_000 + "A", "A" + " + A" * 30_000, "A;" * 60_000 + "A"])
def test_huge_expressions_are_refused_by_length(text):
    t0 = time.perf_counter()
    with pytest.raises(ContrastError, match=f"limit of {MAX_EXPRESSION_LENGTH:,}") as info:
        parse_contrast(text, NAMES)
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value)) < 400  # the message does not echo it all


def test_more_contrast_rows_than_columns_are_refused_at_once():
    """Rows past the design's columns, as text and as an array, of 4, 100 and 10,000 rows (the data do not matter:
    the refusal comes before them)."""
    rng = np.random.default_rng(0)
    fit = voxfit.fit(small_design(rng), rng.standard_normal((24, 50)), names=NAMES)
    fit.contrast("A - B")  # (a worker's first contrast loads the z kernels from numba's cache)
    gc.collect()
    gc.disable()  # (a full collection of a worker's heap, late in a run, took 1.7 s of the timed 0.1 s in CI, twice)
    try:
        for rows in (4, 100, 10_000):
            text = ";".join(["A - B"] * rows)  # 10,000 rows: the 60 KB argument that ran for 10 minutes
            t0 = time.perf_counter()
            with pytest.raises(ContrastError, match=f"{rows:,} rows but the design has only 3 columns"):
                fit.contrast(text)
            with pytest.raises(ContrastError, match=f"{rows:,} rows but the design has only 3 columns"):
                fit.contrast(np.tile([1.0, -1.0, 0.0], (rows, 1)))
            took = time.perf_counter() - t0
            assert took < 5.0, (rows, took)  # (0.1 s alone; the regression it guards against took 10 minutes)
    finally:
        gc.enable()


def test_f_contrast_is_reduced_to_its_rank(rng):
    """Redundant rows (and rows of very different sizes) give the F of an orthonormal basis of the row space."""
    X, Y = small_design(rng), rng.standard_normal((24, 40))
    fit = voxfit.fit(X, Y, names=NAMES)
    ref = fit.contrast("A; B")
    for text in ("A; B; A + B", "A - B; 2*A; 3*A - 7*B", "1e90*A; 1e-90*B; A"):
        stats = fit.contrast(text)
        assert stats.dof == (2.0, 21.0) and stats.effect.shape == (len(text.split(";")), 40)
        npt.assert_allclose(stats.F, ref.F, rtol=1e-9)
    # the textbook formula on the two independent rows
    C = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    s2 = ((Y - X @ beta) ** 2).sum(axis=0) / 21
    e = C @ beta
    M = C @ np.linalg.inv(X.T @ X) @ C.T
    npt.assert_allclose(ref.F, np.einsum("iv,ij,jv->v", e, np.linalg.inv(M), e) / 2 / s2, rtol=1e-9)


def test_cli_refuses_a_huge_f_contrast_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(rng.standard_normal((4, 4, 3, 24)).astype(np.float32) + 100, np.eye(4)), img)
    design = tmp_path / "design.tsv"
    np.savetxt(design, small_design(rng), delimiter="\t", header="A\tB\tc", comments="")
    t0 = time.perf_counter()
    code = cli.main(
        [
            "fit",
            str(img),
            "--design",
            str(design),
            "--contrast",
            "f=" + ";".join(["A - B"] * 10_000),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "10,000 rows but the design has only 3 columns" in err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# class 3: the machinery that makes work stoppable


def _interrupt_main_after(seconds: float) -> None:
    """SIGINT to this process from a timer: the main thread gets KeyboardInterrupt as from Ctrl-C."""
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()


def test_run_in_threads_stops_taking_items_on_ctrl_c():
    started, lock = [], threading.Lock()

    def item(k):
        with lock:
            started.append(k)
        time.sleep(0.2)  # one bounded block of work
        return k

    _interrupt_main_after(0.5)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_in_threads(item, range(200), 2)  # 20 s of work in all
    took = time.perf_counter() - t0
    assert took < 1.5, took
    time.sleep(0.4)
    assert len(started) <= 10  # nothing new started after the interruption


def _ctrl_c_at_random_moments(work, trials: int, within: float = 0.01) -> None:
    """`work()` interrupted by SIGINT at a random moment, `trials` times: the threads each call started all end
    (they must not wait for a lock that the interrupted thread was left holding)."""
    rng = np.random.default_rng(0)
    for _ in range(trials):
        before = set(threading.enumerate())
        with contextlib.suppress(KeyboardInterrupt):
            _interrupt_main_after(rng.uniform(0.0005, within))  # (inside: it may land before start returns)
            work()
            time.sleep(1)  # (the work ended first: the signal lands here)
        # (a thread whose start the signal cut short, its Thread.start waiting on an Event, is CPython's own case:
        # it never runs, and is_alive says False; it may have its ident already, and join refuses it: taken as the
        # tests' thread check takes it, by is_alive)
        new = [t for t in threading.enumerate() if t not in before and t.name.startswith("voxfit-") and t.is_alive()]
        for thread in new:
            thread.join(2)
        assert not [t.name for t in new if t.is_alive()], "a thread was left waiting for a lock"


def test_threads_end_whenever_ctrl_c_lands():
    # a Ctrl-C handled while the calling thread held a lock the workers need (inside ``with condition:``) left
    # 2% of run_in_threads calls' workers, or a read-ahead's reader, waiting for it for good
    from voxfit.io.readers import _read_ahead

    _ctrl_c_at_random_moments(lambda: run_in_threads(lambda k: k, range(50_000), 2), trials=200)

    def read_all():
        slabs = [(k, 1) for k in range(100_000)]
        for _ in _read_ahead(contextlib.nullcontext, lambda fh, buf, start: buf.fill(start), slabs, (1, 4), "f4"):
            pass

    _ctrl_c_at_random_moments(read_all, trials=100)


def test_a_read_aheads_failure_reaches_the_caller_whatever_it_is():
    # the reader thread's error is raised on the caller's; a BaseException, or a `failed` that itself raised, ended
    # the thread with nothing said, and the caller waited for the next slab for good
    from voxfit.io.readers import _read_ahead

    class Stop(BaseException):
        pass

    def refuse(exc):
        raise RuntimeError(f"while reporting {exc!r}")

    def fill_failing(error):
        def fill(fh, buf, start):
            if start == 3:
                raise error
            buf.fill(start)

        return fill

    cases = [(ValueError("bad slab"), None, ValueError), (Stop(), None, Stop), (ValueError("x"), refuse, RuntimeError)]
    for error, failed, raised in cases:
        box = []

        def consume(error=error, failed=failed):
            slabs = [(k, 1) for k in range(10)]
            try:
                for _ in _read_ahead(contextlib.nullcontext, fill_failing(error), slabs, (1, 4), "f4", failed=failed):
                    pass
            except BaseException as exc:  # noqa: BLE001 (what the caller got)
                box.append(exc)

        caller = threading.Thread(target=consume, daemon=True)
        caller.start()
        caller.join(10)
        assert not caller.is_alive(), f"the caller still waits after {error!r}"
        assert isinstance(box[0], raised)


# a suite run under nohup passes SIGHUP ignored to its children, which then rightly outlive it: the children that are
# sent it take it as from a terminal
_HANGUP_AS_A_TERMINAL_LEAVES_IT = "signal.signal(signal.SIGHUP, signal.SIG_DFL)"
_VOXFIT_AS_FROM_A_TERMINAL = (
    f"import runpy, signal; {_HANGUP_AS_A_TERMINAL_LEAVES_IT}; runpy.run_module('voxfit', run_name='__main__', "
    "alter_sys=True)"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_program_loads_ends_it_as_any_interruption(tmp_path, sig):
    # the command line's module takes 80 ms to load, and installs the handlers: a signal before them printed
    # Python's traceback (SIGINT) or killed the process without a word (SIGTERM, SIGHUP: exit -15, -1)
    child = (
        "import builtins, os, signal, sys\n"
        f"{_HANGUP_AS_A_TERMINAL_LEAVES_IT}\n"
        "import voxfit._program as entry\n"
        "real = builtins.__import__\n"
        "def arriving(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if level == 1 and name == 'cli':  # the signal lands as the command line's module loads\n"
        f"        os.kill(os.getpid(), {int(sig)})\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = arriving\n"
        f"sys.argv = ['voxfit', 'fit', {str(tmp_path / 'missing.nii')!r}, '-o', {str(tmp_path / 'out')!r}]\n"
        "entry.program()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == ["voxfit: interrupted; no output was written."]
    assert sorted(os.listdir(tmp_path)) == []


def test_an_interruption_while_the_parser_is_built_or_turned_into_another_error_is_said_as_one(monkeypatch, capsys):
    # a signal while argparse builds the parser (0.07 s into the process) escaped the command's handling; numba's
    # lazy import turns a KeyboardInterrupt into "ImportError: numba._devicearray failed to import" (exit 1)
    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cli, "_get_parser", interrupted)
        assert cli.main(["fit", "--help"]) == 130

    def converted(*args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("numba._devicearray failed to import")  # noqa: B904 (as numba's C code raises it)

    monkeypatch.setattr(cli, "_run", converted)
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err.splitlines() == ["voxfit: interrupted; no output was written."] * 2


def test_run_in_threads_keeps_order_progress_and_errors():
    counts = []
    assert run_in_threads(lambda k: k * k, range(50), 3, counts.append) == [k * k for k in range(50)]
    assert counts[-1] == 50 and counts == sorted(counts)
    ran = []

    def failing(k):
        ran.append(k)
        if k == 3:
            raise ValueError("block 3 failed")
        time.sleep(0.05)

    with pytest.raises(ValueError, match="block 3 failed"):
        run_in_threads(failing, range(400), 2)
    assert len(ran) < 50  # the error stopped the others


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_side_threads_run_at_a_lower_priority_and_the_callers_thread_keeps_its_own(tmp_path):
    # the fit's thread keeps its core while side work (the inputs' checksums) takes what is left;
    # hashing inputs on the caller's own thread (SecondLevel.fit writing its record) must not lower its priority
    # for good, since a thread cannot raise it back
    from voxfit.models.record import input_records

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    aside = DaemonExecutor(aside=True).submit(nice).result()
    plain = DaemonExecutor().submit(nice).result()
    inner = DaemonExecutor(aside=True).submit(lambda: DaemonExecutor().submit(nice).result()).result()
    assert plain == mine and aside == max(mine, 10) and inner == aside  # (threads inherit their maker's)
    path = tmp_path / "input.bin"
    path.write_bytes(b"x" * 1000)
    assert input_records([path])[0]["bytes"] == 1000
    assert nice() == mine


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    """BLAS on two threads for the test (under `pytest -n 2` the worker holds it to one, which would hide a section
    that does not hold it). From the main thread, which threadpoolctl lets set the limit (the conftest's holder, or
    none), in a `with` block that gives the control back."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        if _blas_threads() != {2}:  # (one CPU, or a BLAS started on one thread that cannot grow)
            pytest.skip("BLAS cannot run on two threads here")
        yield


def test_overlapping_single_blas_thread_sections_share_one_limit(two_blas_threads):
    """Two threads' sections on one BLAS thread that overlap and leave out of order (a read's side thread and a
    fit's factorisation): BLAS stays on one thread until the last leaves, and then has its threads back."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with blas_single_threaded():
            a_in.set()
            b_in.wait(5)
        seen["first left"] = _blas_threads()
        a_out.set()

    def second():
        a_in.wait(5)
        with blas_single_threaded():
            b_in.set()
            a_out.wait(5)
            seen["second inside"] = _blas_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"first left": {1}, "second inside": {1}}
    assert _blas_threads() == {2}


def test_a_side_threads_section_holds_blas_after_the_main_thread_held_it(two_blas_threads):
    """threadpoolctl 3.8 lets only the thread that first set a pthreads OpenBLAS's limit (until it leaves a `with`
    block) set it again: after the main thread's section (a factorisation), a read's side thread's section must
    still hold BLAS to one thread, and give its threads back when it leaves."""
    with blas_single_threaded():
        assert _blas_threads() == {1}
    seen = {}

    def side():
        with blas_single_threaded():
            seen["inside"] = _blas_threads()
        seen["after"] = _blas_threads()

    thread = threading.Thread(target=side)
    thread.start()
    thread.join(10)
    assert seen == {"inside": {1}, "after": {2}}


def test_a_blas_loaded_while_a_section_is_open_is_held_by_the_next_and_given_back(monkeypatch):
    """scipy's OpenBLAS loads at scipy.linalg's import, which may come while another thread's section is open:
    the next section to enter holds it too, and the last to leave gives it its threads back. The inspection that
    finds it makes new controllers of the pools already held: each library is held once, and every one gets its
    own threads back."""
    from voxfit import _threads

    threads = {"numpy": 4, "scipy": 4}  # each library's pool, which every controller of it sets

    class Pool:  # a controller of a BLAS, as threadpoolctl's inspections make them
        def __init__(self, filepath):
            self.filepath = filepath

        def get_num_threads(self):
            return threads[self.filepath]

        def set_num_threads(self, n):
            threads[self.filepath] = n

    loaded = ["numpy"]
    monkeypatch.setattr(_threads, "_blas_pools", lambda: [Pool(f) for f in loaded])  # a new inspection each time
    with blas_single_threaded():
        assert threads == {"numpy": 1, "scipy": 4}
        loaded.append("scipy")  # (imported inside the first section)
        with blas_single_threaded():
            assert threads == {"numpy": 1, "scipy": 1}
        assert threads == {"numpy": 1, "scipy": 1}  # held until the last section leaves
    assert threads == {"numpy": 4, "scipy": 4}


def test_in_chunks_covers_everything_in_short_calls():
    spans = []
    in_chunks(lambda a, b: (spans.append((a, b)), time.sleep(0.001 * (b - a))), 1000, first=2, target_s=0.02)
    assert spans[0] == (0, 2) and spans[-1][1] == 1000
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(spans))
    assert max(b - a for a, b in spans) <= 40  # ~20 items of 1 ms per call


def _svd_side(seconds: float, largest: int = 2000) -> int:
    """The side of a square matrix whose SVD (values only) takes about `seconds` of LAPACK on this machine, at
    most `largest`: scaled as n^3 from the quickest of three SVDs of a 400 x 400 one. A 2000 x 2000 SVD took
    1.2-1.7 s on one machine and 11 s of CPU (14 s) on another, whose test then took 17-27 s. (On a shared
    machine a burst of load during the timing makes the SVD that follows shorter than asked, by 4 times seen.)"""
    A = np.random.default_rng(1).standard_normal((400, 400))
    took = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.linalg.svd(A, compute_uv=False)
        took.append(time.perf_counter() - t0)
    return int(min(largest, 400 * (seconds / max(min(took), 1e-6)) ** (1 / 3)))


def test_interruptible_linear_algebra_lets_ctrl_c_through():
    n = _svd_side(3.0)  # one SVD of about 3 s (2000 x 2000 at most), well past the signal at 0.3 s, wherever it runs
    A = np.random.default_rng(0).standard_normal((n, n))
    stop, ended = threading.Event(), []
    deadline = time.perf_counter() + 30  # (no interrupt: the test fails, it does not hang)

    def slow():
        while not stop.is_set() and time.perf_counter() < deadline:
            np.linalg.svd(A, compute_uv=False)  # LAPACK, which holds the thread that calls it until it returns
            ended.append(time.perf_counter())
        return "finished"

    _interrupt_main_after(0.3)
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            interruptible(slow)
        caught = time.perf_counter()
    finally:
        stop.set()  # the abandoned thread ends with its SVD (it ran 10,000 small ones before: 4 minutes of a core)
        for thread in threading.enumerate():  # waited for: `ended` needs its first SVD's end
            if thread.name == "voxfit-linalg":
                thread.join(30)
    assert (
        caught - t0 < 2.0
    )  # (the signal at 0.3 s; the commands' bound: 1.0 was missed at 1.0002 s on a loaded machine)
    assert ended and caught < ended[0]  # Ctrl-C was handled while LAPACK held the helper thread, not after
    assert interruptible(np.add, 1, 2) == 3
    with pytest.raises(ZeroDivisionError):
        interruptible(lambda: 1 / 0)


def test_large_designs_are_factorised_where_a_signal_reaches_them(monkeypatch):
    import voxfit.core.design as design_module

    calls = []

    def spy(fn, *args):
        calls.append(args[0].shape)
        return fn(*args)

    monkeypatch.setattr(design_module, "interruptible", spy)
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal((200, 10)), rng.standard_normal((1000, 320))  # n p^2: 2e4, 1.02e8
    npt.assert_allclose(factorize(large).pinv, np.linalg.pinv(large), atol=1e-12)
    factorize(small)
    assert calls == [(1000, 320)]


# ----------------------------------------------------------------------------------------------------------
# class 3: commands interrupted at each phase, in child processes


SHAPE = (64, 64, 30)
N_SCANS = 60


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """Data and designs for runs of over 10 s (measured on 2 cores, idle / busy: the AR(8) fit of 41 regressors
    on 123k voxels -, 125 s; 10,000 sign-flips with TFCE 25 s, -; 70 contrasts on 553k voxels to compute and
    write 11 s, -), and the AR(8) data gzipped for a streamed read (113 s busy)."""
    folder = tmp_path_factory.mktemp("work")
    rng = np.random.default_rng(0)
    data = (1000 + 10 * rng.standard_normal(SHAPE + (N_SCANS,), dtype=np.float32)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), folder / "bold.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), folder / "bold.nii.gz")
    t = np.arange(N_SCANS)
    X = np.column_stack([np.cos(np.pi * k * (t + 0.5) / N_SCANS) for k in range(1, 41)] + [np.ones(N_SCANS)])
    names = [f"c{k}" for k in range(1, 41)] + ["const"]
    np.savetxt(folder / "design.tsv", X, delimiter="\t", header="\t".join(names), comments="")
    maps = (0.3 + rng.standard_normal((40, 40, 30, 20), dtype=np.float32)).astype(np.float32)
    nib.save(nib.Nifti1Image(maps, np.eye(4)), folder / "maps.nii")
    # many maps of a large grid to compress: 70 contrasts on 553k voxels and 16 scans (peak memory 1.6 GB)
    wide = (1000 + 10 * rng.standard_normal((96, 96, 60, 16), dtype=np.float32)).astype(np.float32)
    nib.save(nib.Nifti1Image(wide, np.eye(4)), folder / "wide.nii")
    t = np.arange(16)
    Xw = np.column_stack([np.cos(np.pi * k * (t + 0.5) / 16) for k in range(1, 5)] + [np.ones(16)])
    np.savetxt(folder / "wide.tsv", Xw, delimiter="\t", header="c1\tc2\tc3\tc4\tconst", comments="")
    contrasts = [f"--contrast=k{i}={i}*c1 - c2 + c3" for i in range(1, 71)]
    return {
        "fitting": [
            "fit",
            folder / "bold.nii",
            "--design",
            folder / "design.tsv",
            "--contrast",
            "a=c1 - c2",
            "--noise",
            "ar8",
        ],
        "writing": ["fit", folder / "wide.nii", "--design", folder / "wide.tsv", "--mask-threshold", "0", *contrasts],
        "permutations": ["group", folder / "maps.nii", "--permutations", "10000", "--tfce"],
        "reading": [
            "fit",
            folder / "bold.nii.gz",
            "--design",
            folder / "design.tsv",
            "--contrast",
            "a=c1 - c2",
            "--noise",
            "ar8",
            "--max-memory",
            "700M",
        ],  # (at least what the sums need)
    }


def _interrupt(tmp_path: Path, args, sig, wait_for: str, delay: float, repeat: int = 0):
    """Start ``python -m voxfit ARGS -o <tmp>/out``, wait until its hidden output folder (`wait_for` = "folder")
    or a first file in it ("file") appears, then `delay` s more; send `sig`. Returns (exit code, seconds from
    the signal to the exit, stderr)."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, "-c", _VOXFIT_AS_FROM_A_TERMINAL, *map(str, args), "--n-jobs", "2", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    pattern = ".voxfit-partial-*" + ("/*" if wait_for == "file" else "")
    t0 = time.monotonic()
    while proc.poll() is None and not any(out.glob(pattern)) and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
    sent = time.monotonic()
    proc.send_signal(sig)
    for _ in range(repeat):  # impatient users: more signals while the run cleans up
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, time.monotonic() - sent, err


@pytest.mark.parametrize(
    ("phase", "wait_for", "delay", "sig"),
    [
        ("fitting", "folder", 2.0, signal.SIGINT),
        ("fitting", "folder", 4.0, signal.SIGTERM),
        ("writing", "file", 0.1, signal.SIGINT),
        ("writing", "file", 0.5, signal.SIGTERM),
        ("permutations", "folder", 2.0, signal.SIGINT),
        ("permutations", "folder", 5.0, signal.SIGTERM),
        ("reading", "folder", 0.0, signal.SIGINT),
        ("reading", "folder", 1.0, signal.SIGTERM),
        # (the terminal closed: the partial folder was left.) SIGHUP once: the command line's one handler takes
        # SIGINT, SIGTERM and SIGHUP alike (cli._on_signal, installed for each of _threads.STOP_SIGNALS), so a
        # SIGHUP at a phase and moment that a SIGINT case already covers, as fitting at 2.0 s did, ran the same path
        ("writing", "file", 0.1, signal.SIGHUP),
    ],
)
def test_commands_stop_within_two_seconds_of_a_signal(workload, tmp_path, phase, wait_for, delay, sig):
    code, took, err = _interrupt(tmp_path, workload[phase], sig, wait_for, delay)
    assert code == 130, err
    assert err == "voxfit: interrupted; no output was written.\n"
    assert took < 2.0, f"{phase}: {took:.2f} s from {sig.name} to the exit"
    assert list(tmp_path.iterdir()) == []  # no output folder, no hidden partial folder, nothing beside it


@pytest.fixture(scope="module")
def mixed_work(tmp_path_factory):
    """A 4-D pair of 40 effect and 40 variance maps on 553 k voxels (88 MB each), uncompressed and gzipped, and
    FSL's design.grp of two variance groups: a mixed-effects group fit of 0.9 s from the output folder's making
    to the end (one group, the compiled kernel; two quiet cores), 7 s (two groups)."""
    from voxfit.io import open_gzip

    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(2)
    shape = (96, 96, 60, 40)
    v = rng.uniform(1, 10, shape).astype(np.float32)
    e = (0.3 + rng.standard_normal(shape, dtype=np.float32) * np.sqrt(v + 1)).astype(np.float32)
    for name, values in (("effects", e), ("variances", v)):
        nib.save(nib.Nifti1Image(values, np.eye(4)), folder / f"{name}.nii")
        with open(folder / f"{name}.nii", "rb") as src, open_gzip(folder / f"{name}.nii.gz", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    groups = "\n".join(["1"] * 20 + ["2"] * 20)
    (folder / "design.grp").write_text(f"/NumWaves 1\n/NumPoints 40\n/Matrix\n{groups}\n")
    return folder


@pytest.mark.parametrize(
    ("extension", "options", "delay"),
    [
        ("nii", [], 0.4),  # in memory, during the fit (compiled kernel)
        ("nii", ["--grp", "GRP"], 2.0),  # two variance groups
        ("nii.gz", ["--max-memory", "600M"], 0.3),  # over the cap: while the maps are decompressed
        ("nii.gz", ["--max-memory", "600M"], 0.8),  # ...or while the fit reads them a block at a time (1.2 s here)
    ],
)
def test_a_mixed_fit_stops_within_two_seconds_of_ctrl_c(mixed_work, tmp_path, extension, options, delay):
    """SIGINT during a mixed-effects group fit: exit 130 within 2 s, one line, and no output folder, partial
    folder or decompressed temporary left behind."""
    maps = [mixed_work / f"effects.{extension}", "--variances", mixed_work / f"variances.{extension}"]
    options = [mixed_work / "design.grp" if o == "GRP" else o for o in options]
    code, took, err = _interrupt(tmp_path, ["group", *maps, *options], signal.SIGINT, "folder", delay)
    assert code == 130, err
    assert err == "voxfit: interrupted; no output was written.\n"
    assert took < 2.0, f"{took:.2f} s from SIGINT to the exit"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("phase", ["writing", "permutations"])
def test_signals_during_the_clean_up_do_not_leave_it_half_done(workload, tmp_path, phase):
    code, took, err = _interrupt(
        tmp_path, workload[phase], signal.SIGINT, "file" if phase == "writing" else "folder", 0.2, repeat=5
    )
    assert code == 130 and err == "voxfit: interrupted; no output was written.\n" and took < 2.0
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def study_work(tmp_path_factory):
    """A BIDS dataset of 3 subjects x 2 runs (40 scans on 10 x 12 x 10 voxels), fitted with AR(8) noise: about
    a second a run on two busy cores, the whole study (run and subject levels) 10 s."""
    pytest.importorskip("bids")
    from voxfit.bids.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("study") / "ds", subjects=3, runs=2, scans=40)


def _records(out: Path) -> list[Path]:
    """The model.json files committed under `out` (os.walk: folders that vanish while it looks are skipped)."""
    found = []
    for folder, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".voxfit-partial-")]
        found += [Path(folder) / f for f in files if f.endswith("model.json")]
    return sorted(found)


def _then_sigint(fn):
    """`fn`, then a SIGINT as it returns: Ctrl-C during the system call it makes (the handler runs as it returns)."""

    def call(*args, **kwargs):
        value = fn(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return value

    return call


def test_a_signal_as_a_temporary_file_is_made_leaves_nothing(monkeypatch, tmp_path):
    """Ctrl-C during the system call that makes write_file_atomically's temporary (its handler runs as the call
    returns): the temporary is removed, as on any other interruption (it was made just before the block that
    removes it). Every atomic write takes this path: reports, `voxfit design`, a study's records."""
    from voxfit.io import output

    real_open = os.open

    def open_then_sigint(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        if str(path).endswith(".partial"):
            signal.raise_signal(signal.SIGINT)
        return fd

    monkeypatch.setattr(os, "open", open_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        output.write_file_atomically(tmp_path / "report.html", lambda tmp: tmp.write_text("page"))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_signal_as_a_group_makes_its_decompression_folder_leaves_nothing(monkeypatch, tmp_path):
    """Ctrl-C during the making of the folder that a group model decompresses .nii.gz maps into (beside a run
    without an output folder: the system's temporary folder): the folder is removed."""
    import tempfile
    from dataclasses import dataclass

    from voxfit.models import group_mixed

    @dataclass(frozen=True)
    class Paired:
        effects: tuple
        variances: tuple

    maps = []
    for name in ("effect", "variance"):
        maps.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 2), dtype=np.float32), np.eye(4)), maps[-1])
    system = tmp_path / "system-tmp"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    monkeypatch.setattr(group_mixed.tempfile, "mkdtemp", _then_sigint(tempfile.mkdtemp))
    with pytest.raises(KeyboardInterrupt), group_mixed.by_columns(Paired((str(maps[0]),), (str(maps[1]),)), None):
        pass
    assert list(system.iterdir()) == []


def test_voxfit_design_writes_the_design_and_its_sidecar_together(monkeypatch, tmp_path, capsys):
    """Ctrl-C, or an error, while `voxfit design` writes the sidecar: neither file appears, and an earlier pair
    (--force) stays whole (the design was renamed in place before its sidecar was written)."""
    from voxfit.design import kinds

    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n0\t10\tA\n30\t10\tA\n")
    out = tmp_path / "design.tsv"
    argv = ["design", str(events), "--n-scans", "40", "--tr", "2", "-o", str(out), "--quiet"]
    real = kinds.write_sidecar

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(kinds, "write_sidecar", interrupted)
    assert cli.main(argv) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.tsv"]
    monkeypatch.setattr(kinds, "write_sidecar", real)
    assert cli.main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kinds, "write_sidecar", failing)
    assert cli.main([*argv[:2], "--n-scans", "50", *argv[4:], "--force"]) == 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.setattr(kinds, "write_sidecar", real)
    sidecar = tmp_path / "design.json"  # a folder where the sidecar goes: refused before the design is replaced
    sidecar.unlink()
    sidecar.mkdir()
    assert cli.main([*argv[:2], "--n-scans", "50", *argv[4:], "--force"]) == 2
    assert out.read_bytes() == before["design.tsv"] and "design.json is a folder" in capsys.readouterr().err


def test_a_signal_as_the_demo_makes_its_folders_leaves_nothing(monkeypatch, tmp_path):
    """Ctrl-C during the demo's making of its hidden data folder beside the output: that folder, and the parent
    folders the demo made, are removed."""
    import tempfile

    from voxfit.models import demo

    monkeypatch.setattr(demo.tempfile, "mkdtemp", _then_sigint(tempfile.mkdtemp))
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(tmp_path / "sub" / "demo", progress=False)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_run_in_threads_interrupted_while_starting_its_threads_lets_running_items_finish(monkeypatch):
    """A signal while run_in_threads is still starting its threads (one per CPU: a map writer's file can be under
    way before the last starts): the items running finish within the grace before the exception goes on, and none
    starts after it (raised at once, the threads went on writing maps while the output's hidden folder was
    removed, and left it behind without its marker)."""
    from voxfit._threads import GRACE_S

    started, finished = [], []

    def item(k: int) -> None:
        started.append(k)
        time.sleep(0.2)
        finished.append(k)

    real_start = threading.Thread.start
    calls = []

    def start(self) -> None:
        real_start(self)
        calls.append(self)
        if len(calls) == 2:
            time.sleep(0.05)  # (the first two threads have taken an item each)
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        run_in_threads(item, range(20), 4, grace=GRACE_S)
    assert len(started) == 2 and sorted(finished) == sorted(started)
    time.sleep(0.4)
    assert len(started) == 2


def test_an_interrupted_study_waits_for_every_run_being_written(monkeypatch):
    """Ctrl-C while a study collects the previous run's writing, when the next run is already being written on a
    thread: both writings are waited for (the process ending with a thread mid-write left that run's partial
    folder behind; the test below caught it once in CI)."""
    from dataclasses import dataclass
    from types import SimpleNamespace

    from voxfit.bids import study

    @dataclass(frozen=True)
    class Job:
        index: int
        run: object = None
        execution: object = None

    written = []

    def write(k: int) -> int:
        time.sleep(0.2 + k)  # the second run's writing outlasts the first's
        written.append(k)
        return k

    def collect(result):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "_read_ahead", lambda *args: None)
    monkeypatch.setattr(study, "_fit_job", lambda job, dataset, writer: writer.submit(write, job.index))
    with pytest.raises(KeyboardInterrupt):
        study._Study._in_turn(SimpleNamespace(settings=None), [Job(0), Job(1)], None, collect)
    assert written == [0, 1]


_STUBBORN_WORKER = """
import signal, sys, time
from voxfit.io.output import OutputFolder
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (a worker that does not stop when asked)
with OutputFolder(sys.argv[1], force=True) as out:
    out.path("map.nii.gz").write_bytes(b"x" * 100)
    print("open", flush=True)
    time.sleep(60)
"""


def test_a_study_worker_killed_mid_write_leaves_nothing(tmp_path):
    """A study's worker that does not stop within STOP_WAIT_S of SIGTERM is killed mid-write: its partial folder
    and the group folders it made are removed (the folders left empty stayed behind); a folder of finished
    groups stays."""
    from types import SimpleNamespace

    from voxfit.bids import study
    from voxfit.io.output import missing_folders

    out = tmp_path / "out"
    (out / "sub-02" / "node-run").mkdir(parents=True)
    (out / "sub-02" / "node-run" / "done.json").write_text("{}")
    folders = [out / "sub-01" / "node-run", out / "sub-02" / "node-run"]
    absent = {str(f): missing_folders(f) for f in folders}
    env = dict(os.environ, PYTHONPATH=str(SRC))
    child = subprocess.Popen([sys.executable, "-c", _STUBBORN_WORKER, str(folders[0])], stdout=subprocess.PIPE, env=env)
    assert child.stdout.readline().strip() == b"open"

    class Process:  # (what _stop_workers asks of a pool's process)
        def is_alive(self):
            return child.poll() is None

        def terminate(self):
            child.terminate()

        def kill(self):
            child.kill()

        def join(self, timeout=None):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)

    study._stop_workers(SimpleNamespace(_processes={child.pid: Process()}, shutdown=lambda **kw: None), absent)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "sub-02",
        "sub-02/node-run",
        "sub-02/node-run/done.json",
    ]


@pytest.mark.parametrize("jobs", [[], ["--n-jobs", "2"]])
def test_a_study_stops_within_two_seconds_of_ctrl_c_keeping_finished_groups(study_work, tmp_path, jobs):
    """SIGINT once a first run is committed: exit 130 within 2 s, one line; the groups finished before are
    whole (valid records, their maps there), nothing half-written anywhere (no partial folder, no temporary);
    the same command then fits only what was missing."""
    import json

    import jsonschema

    from voxfit.bids import run
    from voxfit.models.record import schema

    out = tmp_path / "out"
    args = ["bids", study_work.root, out, "subject", "--derivatives", study_work.derivatives, "--noise", "ar8"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxfit", *map(str, args), *jobs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    t0 = time.monotonic()
    while proc.poll() is None and not _records(out) and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    said = [line for line in err.splitlines() if not line.startswith("voxfit: warning: AR(8) per voxel on 40 scans")]
    assert len(said) == 1 and said[0].startswith("voxfit: interrupted; the node groups finished before are kept"), err
    assert took < 2.0, f"{took:.2f} s from SIGINT to the exit"
    time.sleep(0.5)  # (workers that outlived the parent would still be writing)
    assert not [p for p in out.rglob("*") if ".voxfit-partial-" in p.name or p.name.endswith(".partial")]
    kept = _records(out)
    assert kept and len(kept) < 6 + 3 * 2
    validator = jsonschema.Draft202012Validator(schema())
    for record in kept:
        content = json.loads(record.read_text())
        assert not list(validator.iter_errors(content)), record
        for o in content["settings"]["bids"]["outputs"].values():
            assert (record.parent / o["effect"]).is_file() and (record.parent / o["variance"]).is_file()
    again = run(
        study_work.root, out, level="subject", derivatives=[study_work.derivatives], noise="ar8", progress=False
    )
    assert again.ok
    reused = {str(g.files[0]) for groups in again.nodes.values() for g in groups if g.reused}
    assert reused == {str(p) for p in kept}
    assert sum(len(groups) for groups in again.nodes.values()) == 6 + 3 * 2


# ----------------------------------------------------------------------------------------------------------
# class 5: extreme values in the design


def _lstsq_rescaled(X, Y):
    """Independent reference: numpy's SVD least squares on the design with unit columns, scaled back."""
    norms = np.sqrt(((X / np.abs(X).max(axis=0)) ** 2).sum(axis=0)) * np.abs(X).max(axis=0)
    return np.linalg.lstsq(X / norms, Y, rcond=None)[0] / norms[:, None]


@pytest.mark.parametrize("value", [1e308, 1e300, 1e200, 1e155, 1e-300, -1e250])
def test_one_huge_or_tiny_design_value_is_refused_not_made_dependent(rng, value):
    X = small_design(rng)
    X[3, 0] = value
    if abs(value) < 1:  # a tiny entry among values ~1 is harmless: fitted as it is
        fit = voxfit.fit(X, rng.standard_normal((24, 5)), names=NAMES)
        assert fit.rank == 3 and np.isfinite(fit.contrast("A - B").t).all()
        return
    with pytest.raises(InputError, match="design column 'A' has values of size .* multiply it by 1e-"):
        voxfit.fit(X, rng.standard_normal((24, 5)), names=NAMES)


@pytest.mark.parametrize("factor", [1e300, 1e160, 1e-160, 1e-300])
def test_columns_beyond_float64_reach_are_refused_with_the_rescaling(rng, factor):
    X = small_design(rng)
    X[:, 1] *= factor  # its square (or its inverse's square) is not representable
    with pytest.raises(InputError, match="design column 'B' .* norms between 1e-100 and 1e\\+100"):
        factorize(X, NAMES)


@pytest.mark.parametrize("factor", [1e90, 1e60, 1e-60, 1e-90])
def test_extreme_but_valid_columns_match_an_independent_reference(rng, factor):
    X, Y = small_design(rng), rng.standard_normal((24, 30)) + 5
    Xs = X.copy()
    Xs[:, 0] *= factor
    fit = voxfit.fit(Xs, Y, names=NAMES)
    ref = _lstsq_rescaled(Xs, Y)
    npt.assert_allclose(fit.betas, ref, rtol=1e-10, atol=0)
    plain = voxfit.fit(X, Y, names=NAMES)  # the statistics do not depend on the units of a column
    for c in ("A", "B", "A; B", "A; c"):
        npt.assert_allclose(fit.contrast(c).stat, plain.contrast(c).stat, rtol=1e-9)
    npt.assert_allclose(fit.contrast([factor, -1, 0]).t, plain.contrast("A - B").t, rtol=1e-9)
    assert fit.rank == 3 and not fit.design.null_space.size


def test_extreme_design_against_mpmath():
    """A tiny design with columns 1e80 apart, solved from the normal equations at 400 digits."""
    mpmath = pytest.importorskip("mpmath")
    X = np.array([[1e80, 1.0, 1.0], [2e80, -1.0, 1.0], [-1e80, 0.5, 1.0], [3e80, 2.0, 1.0], [0.5e80, -3.0, 1.0]])
    y = np.array([1.0, 2.0, -1.0, 4.0, 0.25])
    fit = voxfit.fit(X, y, names=NAMES)
    with mpmath.workdps(400):  # X'X spans 1e160: the normal equations need far more than 50 digits
        Xm, ym = mpmath.matrix(X.tolist()), mpmath.matrix(y.tolist())
        beta = mpmath.lu_solve(Xm.T * Xm, Xm.T * ym)
        resid = ym - Xm * beta
        s2 = sum(r**2 for r in resid) / 2
        cov = (Xm.T * Xm) ** -1
        t_a = beta[0] / mpmath.sqrt(s2 * cov[0, 0])
    npt.assert_allclose(fit.betas[:, 0], [float(b) for b in beta], rtol=1e-9)
    npt.assert_allclose(fit.contrast("A").t, float(t_a), rtol=1e-9)


def _mpmath_ols(X, y, W):
    """betas, and the F (or t for one row) of the rows W, from the normal equations at 60 digits."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        Xm, ym, Wm = mpmath.matrix(X.tolist()), mpmath.matrix(y.tolist()), mpmath.matrix(W.tolist())
        inv = (Xm.T * Xm) ** -1
        beta = inv * (Xm.T * ym)
        resid = ym - Xm * beta
        s2 = (resid.T * resid)[0] / (X.shape[0] - X.shape[1])
        effect = Wm * beta
        cov = Wm * inv * Wm.T * s2
        stat = (effect.T * cov**-1 * effect)[0] / W.shape[0] if W.shape[0] > 1 else effect[0] / mpmath.sqrt(cov[0, 0])
        return np.array([float(b) for b in beta]), float(stat)


@pytest.mark.parametrize("d", [1e-6, 1e-8, 1e-10])
def test_an_f_contrast_beside_near_collinear_columns_keeps_every_row(rng, d):
    """Columns a and a + d b, full rank by the design's own rule (condition ~1/d): an F of three rows kept only
    one (the least informative: df1 1, F 4.06 against 60.49 at d = 1e-8, p 0.048 against 1e-17), its rank
    decided on the eigenvalues of the rows' covariance, the squares of their singular values. Against mpmath."""
    a, b, c = rng.standard_normal((3, 60))
    X = np.column_stack([a, a + d * b, c, np.ones(60)])
    y = X @ [1.0, 1.0, 0.3, 0.0] + rng.standard_normal(60)
    W = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    fit = voxfit.fit(X, y, names=("a", "a2", "c", "k"))
    assert fit.rank == 4
    F = fit.contrast(W)
    _, reference = _mpmath_ols(X, y, W)
    assert F.dof == (3.0, 56.0)
    npt.assert_allclose(F.stat, reference, rtol=1e-5)


def test_a_level_far_from_zero_on_an_ill_conditioned_design_moves_no_beta(rng):
    """A design of condition 2.4e9 after scaling (a column 1000 + 1e-6 b beside the intercept) and data at a level
    of 2.5e8: each voxel's offset times the rounding of pinv @ 1 moved the trend's beta by 30 standard errors
    (t -39.5 against 1.19). Betas, t and F against mpmath, from the fast pass and from summed data."""
    a, b = rng.standard_normal((2, 60))
    X = np.column_stack([a * 1e6, b * 1e-6 + 1000, np.ones(60), np.arange(60.0)])
    Y = rng.standard_normal((60, 3)) + (X @ [1e-6, 1e6, 0, 0.01])[:, None]
    fit = voxfit.fit(X, Y, names=("a", "b", "k", "t"))
    shift = Y[0]  # (summed data, as streamed fits hold them: shifted by a scan, Q'(y - shift) and the shift)
    summed, _, _ = fit_from_sums(fit.design, fit.design.basis.T @ (Y - shift), ((Y - shift) ** 2).sum(0), 0, shift)
    for v in range(3):
        betas, t = _mpmath_ols(X, Y[:, v], np.array([[0, 0, 0, 1.0]]))
        _, F = _mpmath_ols(X, Y[:, v], np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
        se = np.sqrt(np.diag(fit.design.cov_unscaled) * fit.residual_variance[v])  # (the intercept's is 1e8)
        assert (np.abs(fit.betas[:, v] - betas) <= 1e-5 * se).all() and (
            np.abs(summed[:, v] - betas) <= 1e-5 * se
        ).all()
        npt.assert_allclose(fit.contrast("t").t[v], t, rtol=1e-5)
        npt.assert_allclose(fit.contrast("a; b; t").stat[v], F, rtol=1e-5)


@pytest.mark.parametrize("order", [1, 2])
def test_an_ar_fit_does_not_depend_on_the_level_of_the_data(rng, order):
    """The same design (condition 2.4e9 after scaling) and data at a level of 2.5e8 and at 0: AR(p)'s betas of the
    columns other than the constant, and its t, are the same (the mean each voxel is shifted by returned through
    pinv @ 1, refined); unrefined, the trend's t was -23 to -61 against 0.8 to 3.7 at level 0."""
    a, b = rng.standard_normal((2, 120))
    X = np.column_stack([a * 1e6, b * 1e-6 + 1000, np.ones(120), np.arange(120.0)])
    noise = rng.standard_normal((120, 4))
    contrasts = {"t": "t", "a": "a"}
    names = ("a", "b", "k", "t")
    level = voxfit.fit_ar(X, noise + 2.5e8 + (X @ [1e-6, 0, 0, 0.01])[:, None], order, contrasts, names=names)
    zero = voxfit.fit_ar(X, noise + (X @ [1e-6, 0, 0, 0.01])[:, None], order, contrasts, names=names)
    for label in contrasts:
        npt.assert_allclose(level.contrasts[label].t, zero.contrasts[label].t, rtol=1e-5)


def test_dependent_columns_at_extreme_scales_are_found_with_finite_relations(rng):
    X = small_design(rng)
    X = np.column_stack([X, (X[:, 0] + X[:, 1]) * 1e50])  # D = 1e50 (A + B)
    with pytest.warns(UserWarning, match="rank deficient"):
        design = factorize(X, (*NAMES, "D"))
    assert design.rank == 3 and np.isfinite(design.null_space).all()
    assert set(design.involved_columns()) == {"A", "B", "D"}
    Y = rng.standard_normal((24, 4))
    with pytest.warns(UserWarning, match="rank deficient"):
        fit = voxfit.fit(X, Y, names=(*NAMES, "D"))
    plain = voxfit.fit(X[:, :3], Y, names=NAMES)  # the same column space
    for text in ("A", "D", "A + B"):
        with pytest.raises(ContrastError, match="not estimable"):
            fit.contrast(text)
    npt.assert_allclose(fit.contrast("A - B").t, plain.contrast("A - B").t, rtol=1e-8)
    npt.assert_allclose(fit.contrast("A + 1e50*D").t, plain.contrast("A").t, rtol=1e-8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_designs_are_refused_from_arrays_dataframes_and_files(tmp_path, rng, bad):
    import pandas as pd

    X = small_design(rng)
    X[5, 1] = bad
    with pytest.raises(InputError, match="NaN or infinite values in column.*'B'"):
        factorize(X, NAMES)
    with pytest.raises(InputError, match="NaN or infinite values in column.*'B'"):
        voxfit.fit(pd.DataFrame(X, columns=list(NAMES)), rng.standard_normal((24, 3)))
    path = tmp_path / "design.tsv"
    np.savetxt(path, X, delimiter="\t", header="\t".join(NAMES), comments="")
    img = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(rng.standard_normal((3, 3, 2, 24)).astype(np.float32) + 100, np.eye(4)), img)
    code = cli.main(["fit", str(img), "--design", str(path), "--contrast", "a=A", "-o", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


def test_overflowing_design_file_is_refused_on_the_command_line(tmp_path, capsys, rng):
    X = small_design(rng)
    X[3, 0] = 1e308
    path = tmp_path / "design.tsv"
    np.savetxt(path, X, delimiter="\t", header="\t".join(NAMES), comments="")
    img = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(rng.standard_normal((3, 3, 2, 24)).astype(np.float32) + 100, np.eye(4)), img)
    code = cli.main(["fit", str(img), "--design", str(path), "--contrast", "d=A - B", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "design column 'A' has values of size 1e+308" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# class 5: extreme contrast weights and data


@pytest.mark.parametrize("weights", [[1e308, 0, 0], [1e101, -1e101, 0], [1e-101, 0, 0], [np.nan, 1, 0], [np.inf, 0, 0]])
def test_extreme_or_non_finite_weights_are_refused(rng, weights):
    fit = voxfit.fit(small_design(rng), rng.standard_normal((24, 5)), names=NAMES)
    with pytest.raises(ContrastError, match="weights"):
        fit.contrast(weights)


@pytest.mark.parametrize("text", ["1e308*A*10", "1e308*A*10 - 1e308*A*10", "1e200*1e200*A", "1e309*A"])
def test_expression_weights_that_overflow_are_refused(text):
    with pytest.raises(ContrastError, match="overflows"):
        parse_contrast(text, NAMES)


@pytest.mark.parametrize("scale", [1e99, 1e50, 1e-50, 1e-99])
def test_the_statistic_does_not_depend_on_the_scale_of_a_row(rng, scale):
    fit = voxfit.fit(small_design(rng), rng.standard_normal((24, 20)), names=NAMES)
    npt.assert_allclose(fit.contrast([scale, -scale, 0]).t, fit.contrast("A - B").t, rtol=1e-12)
    npt.assert_allclose(fit.contrast([[scale, 0, 0], [0, 1, 0]]).F, fit.contrast("A; B").F, rtol=1e-9)


@pytest.mark.parametrize(
    ("dtype", "factor"),
    [(np.float32, 3e37), (np.float32, 1e-37), (np.float64, 1e150), (np.float64, 1e-145), (np.float64, 1e100)],
)
def test_data_near_the_limits_of_their_dtype_give_the_reference_statistics(rng, dtype, factor):
    X = small_design(rng)
    base = rng.standard_normal((24, 6)) + 2 * X[:, :1]
    ref = voxfit.fit(X, base, names=NAMES)
    fit = voxfit.fit(X, (base * factor).astype(dtype), names=NAMES)
    rtol = 1e-4 if dtype == np.float32 else 1e-9
    npt.assert_allclose(fit.contrast("A - B").t, ref.contrast("A - B").t, rtol=rtol)
    npt.assert_allclose(fit.betas / factor, ref.betas, rtol=rtol, atol=rtol * np.abs(ref.betas).max())


@pytest.mark.parametrize("factor", [1e300, 1e200, 1e-200, 1e-300])
def test_data_whose_squares_leave_float64_give_nan_statistics_and_a_warning(rng, factor):
    X = small_design(rng)
    Y = (rng.standard_normal((24, 4)) + 2 * X[:, :1]) * factor
    Y[:, 0] = rng.standard_normal(24)  # an ordinary voxel beside them
    with pytest.warns(DataRangeWarning, match="3 voxel\\(s\\) have data so large or so small"):
        fit = voxfit.fit(X, Y, names=NAMES)
    t = fit.contrast("A").t
    assert np.isfinite(t[0]) and np.isnan(t[1:]).all()  # never a t of 0 (inf variance) or inf (zero variance)
    assert fit.valid.all() and np.isnan(fit.residual_variance[1:]).all()
    npt.assert_allclose(fit.betas[:, 1:] / factor, _lstsq_rescaled(X, Y[:, 1:] / factor), rtol=1e-9)


@pytest.mark.parametrize("when", ["during", "at the end"])
def test_ctrl_c_in_a_finalizer_is_not_swallowed(monkeypatch, capsys, when):
    """Python ignores an exception raised while the main thread runs a finalizer ("Exception ignored in"): a
    Ctrl-C whose handler ran inside one (SQLAlchemy's, of pybids' index, in a study) was lost, and the command,
    deaf to further signals (its handler had set them aside for the clean-up), finished with exit 0 and a
    traceback. It is raised again once the finalizer has returned: exit 130, nothing printed for it; one that
    came as the command returned gives 130 too, saying so, and never reaches the caller afterwards."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # (the handler runs here, inside the finalizer)
            sum(range(1000))

    def command(argv):
        try:
            Finalized()
            if when == "during":
                time.sleep(2.0)
            return 0  # (at the end: the re-raise is still to come as the command returns)
        except KeyboardInterrupt:
            return 130

    monkeypatch.setattr(cli, "_main", command)
    seen = []
    record = seen.append
    monkeypatch.setattr(sys, "unraisablehook", record)
    start = time.perf_counter()
    assert cli._command([], program=False) == 130
    assert time.perf_counter() - start < 1.0 and not seen  # (woken from its sleep; nothing else unraisable)
    assert sys.unraisablehook is record and signal.getsignal(signal.SIGINT) is not cli.ignore_signal
    time.sleep(0.1)  # (no interruption reaches the caller after the command)
    said = capsys.readouterr().err
    assert said == (
        "" if when == "during" else "voxfit: interrupted as the command ended; what it wrote is complete.\n"
    )


@pytest.mark.parametrize("interrupted", [True, False])
def test_a_finalizer_failing_after_ctrl_c_adds_nothing_to_the_programs_one_line(monkeypatch, interrupted):
    """Interrupted, the program says one line: a finalizer that the interruption had cut short leaves its object
    half closed, and the next one fails as that object goes (llvmlite's ObjectRef, as numba loaded a kernel: its
    traceback followed "voxfit: interrupted", 1 run in a few hundred of the suite's). Not interrupted, such a
    failure is Python's to print, as ever."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")

    class HalfClosed:
        def __del__(self):
            raise AttributeError("'HalfClosed' object has no attribute '_ptr'")

    def command(argv):
        try:
            if interrupted:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2.0)
            HalfClosed()
            return 0
        except KeyboardInterrupt:
            HalfClosed()
            return 130

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(cli, "_main", command)
    monkeypatch.setattr(cli, "_PROGRAM", True)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    try:
        assert cli._command([], program=True) == (130 if interrupted else 0)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        _threads.STOP_REQUESTED.up = False
    assert [type(u.exc_value) for u in seen] == ([] if interrupted else [AttributeError])


NOHUP_WORKER = r"""
import multiprocessing, os, signal, time
from concurrent.futures import ProcessPoolExecutor
from voxfit.bids.study import _worker_start
def job(x):
    time.sleep(1.5)
    return "survived"
if __name__ == "__main__":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=_worker_start, initargs=(1,))
    done = pool.submit(job, 1)
    time.sleep(1.0)
    os.killpg(0, signal.SIGHUP)  # the logout's signal to the job's process group
    print(done.result())
"""


def test_a_studys_workers_under_nohup_outlive_the_logout(tmp_path):
    """A study's worker processes keep SIGHUP ignored where the command was started with it ignored (nohup):
    they took it as a stop signal, and the study died with the logout that nohup was there to survive."""
    script = tmp_path / "nohup_worker.py"
    script.write_text(NOHUP_WORKER)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "survived", done.stderr[-2000:]


def test_an_interruption_that_code_swallowed_still_ends_the_command_before_it_commits(monkeypatch, tmp_path, capsys):
    """A SIGINT landing while nibabel imports xml.etree was lost (the memory tester's: 4 of ~140 tries on a busy
    machine): the KeyboardInterrupt of the handler was taken by an ``except ImportError`` on the way, and the run
    wrote all its maps, exit 0. The handler's flag now ends the command where it would commit its output: exit
    130, one line, nothing written."""
    rng = np.random.default_rng(0)
    n = 40
    nib.save(
        nib.Nifti1Image((100 + rng.standard_normal((4, 4, 3, n))).astype(np.float32), np.eye(4)), tmp_path / "b.nii"
    )
    (tmp_path / "d.tsv").write_text("A\tc\n" + "".join(f"{rng.standard_normal():.6f}\t1\n" for _ in range(n)))
    real = cli._run_fit

    def swallowing(*args, **kwargs):
        try:  # (as an import's try/except would: the signal's KeyboardInterrupt never reaches the command)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "_run_fit", swallowing)
    argv = ["fit", str(tmp_path / "b.nii"), "--design", str(tmp_path / "d.tsv"), "--contrast", "a=A"]
    assert cli.main([*argv, "-o", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err, err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["b.nii", "d.tsv"]
    monkeypatch.setattr(cli, "_run_fit", real)
    assert cli.main([*argv, "-o", str(tmp_path / "out"), "--quiet"]) == 0  # (the next command starts afresh)
