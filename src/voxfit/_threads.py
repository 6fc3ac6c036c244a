"""Work on several threads that Ctrl-C or SIGTERM can stop within a fraction of a second.

``with ThreadPoolExecutor(n) as pool: list(pool.map(fn, items))`` cannot be stopped: an exception in the
calling thread (the KeyboardInterrupt of SIGINT, or of SIGTERM through the command line's handler) leaves the
``with`` block, whose ``shutdown(wait=True)`` then runs every queued item to the end, and the interpreter
joins its threads again at exit. :func:`run_in_threads` takes items one at a time from a shared queue on
daemon threads, waits with a timeout (so that signal handlers run), and on any exception tells the workers to
take no further item and waits (for items that write files) only for the items already running, each
one bounded block of work, so that no thread writes a file after the caller has cleaned up.

:func:`in_chunks` cuts one long compiled or LAPACK call (which holds the main thread until it returns, so no
Python signal handler can run) into calls of bounded size.

How many threads, decided here for every part of voxfit: :func:`default_workers` (the CPUs this process may
run on), :func:`resolve_workers` (an ``n_jobs`` argument checked, or that default), :func:`blas_single_threaded`
(BLAS held to one thread while voxfit's own threads run products) and :func:`numba_threads` (the compiled
kernels' threads). threadpoolctl and numba are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from ._checks import check_n_jobs

# The signals that stop a command as Ctrl-C does, its partial output removed: SIGINT, SIGTERM (kill, a job
# scheduler's end of a job) and SIGHUP (the terminal closed, an ssh session lost)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def handle_stop_signals(handler) -> dict:
    """`handler` for each of :data:`STOP_SIGNALS` but those ignored (SIG_IGN: a background job's SIGINT, nohup's
    SIGHUP, which stay ignored, as they would for the processes a run starts); returns their previous handlers.
    From the main thread."""
    return {s: signal.signal(s, handler) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}


__all__ = [
    "CHUNK_S",
    "GRACE_S",
    "POLL_S",
    "STOP_REQUESTED",
    "STOP_SIGNALS",
    "DaemonExecutor",
    "Flag",
    "blas_single_threaded",
    "default_workers",
    "even_spans",
    "handle_stop_signals",
    "in_chunks",
    "interruptible",
    "numba_threads",
    "resolve_workers",
    "run_in_threads",
    "unpacked_product_limits",
]

POLL_S = 0.05  # how often the waiting thread wakes up to let signal handlers run
CHUNK_S = 0.1  # the length of one uninterruptible call in in_chunks
GRACE_S = 0.5  # how long, after an interruption, items that write files may take to finish theirs


def even_spans(n: int, parts: int) -> list[slice]:
    """`parts` consecutive slices of nearly equal length covering ``range(n)``: one for each thread of a pass over
    independent columns or values (:func:`run_in_threads`)."""
    edges = [n * k // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def run_in_threads(
    fn: Callable, items: Iterable, workers: int, on_done: Callable[[int], None] | None = None, grace: float = 0.0
) -> list:
    """``[fn(item) for item in items]`` on `workers` threads, in item order; ``on_done(count)`` after each item.

    The first exception (from an item, or raised in the calling thread by a signal) stops the work: no new
    item starts, the running ones get up to `grace` seconds to finish, and the exception propagates. Items that
    only compute into memory need none (their daemon threads do not keep the process alive); items that write
    files should get ``GRACE_S``, so that none writes after the caller has removed its partial output.
    """
    items = list(items)
    n = len(items)
    results: list = [None] * n
    if workers <= 1 or n <= 1:
        for k, item in enumerate(items):
            results[k] = fn(item)
            if on_done is not None:
                on_done(k + 1)
        return results
    # The calling thread, where signals arrive, takes no lock that a worker needs: a KeyboardInterrupt raised
    # inside ``with condition:`` (in Condition.__enter__, after its lock is taken) leaves that lock held for
    # good, and the workers waiting for it then never end (2-4% of Ctrl-Cs did, with a shared Condition). It
    # waits on a SimpleQueue (C: its get takes an item or raises, and a put never waits), and stops the workers
    # by a flag it sets without a lock. (Thread.start's own wait is CPython's: a signal there leaves that thread
    # unstarted, never running.)
    order = iter(range(n))
    taking = threading.Lock()  # the workers' own
    news: queue.SimpleQueue = queue.SimpleQueue()  # None for each item done, or the exception that stops the work
    stop = Flag()

    def worker() -> None:
        while True:
            with taking:  # (the stop read with the take: no worker starts an item after another's failed)
                k = None if stop.up else next(order, None)
            if k is None:
                return
            try:
                results[k] = fn(items[k])
            except BaseException as exc:  # noqa: BLE001 (handed to the calling thread, which raises it)
                with taking:
                    stop.up = True
                news.put(exc)
                return
            news.put(None)

    threads = [threading.Thread(target=worker, name=f"voxfit-worker-{i}", daemon=True) for i in range(min(workers, n))]
    done = 0
    try:
        for t in threads:  # (inside: a signal while they start stops those already running too)
            t.start()
        while done < n:
            try:
                item = news.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is not None:
                raise item
            done += 1
            if on_done is not None:
                on_done(done)
        return results
    except BaseException:
        stop.up = True
        deadline = time.monotonic() + grace
        for t in threads:  # the items already running: each is one bounded block
            with contextlib.suppress(RuntimeError):  # not started (or its start cut short: it then takes no item)
                t.join(max(0.0, deadline - time.monotonic()))
        raise


class Flag:
    """A flag that any thread sets and reads without a lock (an attribute's assignment is atomic): a stop that
    the thread where signals arrive sets, where an Event's set takes a Condition (see run_in_threads)."""

    up = False


# set by the command line's handler of a stop signal, cleared as a command starts: an output folder's commit in the
# main thread that sees it raises the KeyboardInterrupt the handler raised, where code that caught it went on (an
# import whose `except ImportError` took it: the run wrote all its maps, exit 0; the memory tester's)
STOP_REQUESTED = Flag()


def in_chunks(fn: Callable[[int, int], None], n: int, first: int = 1, target_s: float = CHUNK_S) -> None:
    """``fn(a, b)`` over consecutive spans ``[a, b)`` covering ``range(n)``, each sized to take about
    `target_s` seconds (measured on the previous span, starting from `first` items), so that a signal is
    handled between two calls however long the whole is. For compiled kernels over rows of maps."""
    a, chunk = 0, max(1, int(first))
    while a < n:
        b = min(n, a + chunk)
        t0 = time.perf_counter()
        fn(a, b)
        took = time.perf_counter() - t0
        a = b
        chunk = max(1, min(4 * chunk, int(chunk * target_s / max(took, 1e-6))))


def interruptible(fn: Callable, *args):
    """``fn(*args)`` in a helper thread while the calling (main) thread waits with a timeout.

    LAPACK and numpy's linear algebra release the GIL but hold the thread that calls them until they return,
    so a signal handler waits for them; called from here, the handler runs at once (the abandoned thread is a
    daemon and does not keep the process alive). Called from another thread, `fn` just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: queue.SimpleQueue = queue.SimpleQueue()  # (not an Event: see run_in_threads)

    def target() -> None:
        try:
            box.put((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 (raised again in the calling thread)
            box.put((False, exc))

    threading.Thread(target=target, name="voxfit-linalg", daemon=True).start()
    while True:
        try:
            ok, value = box.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if not ok:
            raise value
        return value


class DaemonExecutor:
    """``submit(fn, *args) -> Future``, each call on its own daemon thread: side work (input checksums) that
    an interruption abandons. A ``ThreadPoolExecutor`` would be waited for when leaving its ``with`` block
    and again when the interpreter exits. With `aside`, each thread runs at a lower CPU priority (see
    :func:`lower_priority`): work beside a fit that should take the cores the fit leaves."""

    def __init__(self, aside: bool = False):
        self.aside = aside

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        future: Future = Future()

        def target() -> None:
            if not future.set_running_or_notify_cancel():
                return
            if self.aside:
                lower_priority()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 (handed to whoever asks for the result)
                future.set_exception(exc)

        threading.Thread(target=target, name="voxfit-side", daemon=True).start()
        return future


def lower_priority() -> None:
    """Run the calling thread, and the threads it starts, at a low CPU priority where the system allows it
    (Linux: nice 10, per thread), so that its work takes mostly the cores the fit leaves idle. Only for threads
    voxfit starts, never a caller's (a thread cannot raise its priority back). Nice 10, not 19: on a busy
    machine the fit still waits for that work at the end."""
    if sys.platform.startswith("linux"):  # elsewhere a thread id is not a process id for setpriority
        with contextlib.suppress(OSError):  # not permitted: the thread keeps its priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(n_jobs) -> int:
    """The threads to use for an ``n_jobs`` argument: a positive integer, or :func:`default_workers` for None."""
    if n_jobs is None:
        return default_workers()
    return check_n_jobs(n_jobs)


def _blas_pools() -> list:
    """The BLAS libraries loaded in the process (threadpoolctl's controllers of them). Inspected again (1.5 ms) only
    when a module that brings its own BLAS has loaded since: numpy's multiarray, scipy.linalg's _fblas (scipy's
    OpenBLAS; keyed on the extension, which is in sys.modules only once its library is loaded, not on the package,
    which is there from the start of its import)."""
    return _inspect_blas(frozenset(m for m in _BLAS_MODULES if m in sys.modules))


_BLAS_MODULES = ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath", "scipy.linalg._fblas")


@functools.cache
def _inspect_blas(_modules: frozenset) -> list:
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


def unpacked_product_limits() -> tuple[int, int] | None:
    """``(mnk, mn)`` when numpy's BLAS multiplies small matrices without packing them first: OpenBLAS's kernels
    for AVX-512 cores (SkylakeX, Cooperlake, SapphireRapids; Zen 4 and 5 run them too) take a product of
    ``M N K <= mnk`` values that way, and, when its first operand is transposed, of ``M N <= mn`` too (OpenBLAS
    0.3.16 on, ``kernel/x86_64/*gemm_small_kernel_permit_skylakex.c``); such products run ~2x faster than packed
    ones (a float32 operator of 15 rows x 300 scans on tiles of voxels: 0.45 against 0.83 ns a value, one thread).
    None for other BLAS libraries and cores, and when any loaded BLAS is another."""
    pools = _blas_pools()
    if pools and all(
        lib.internal_api == "openblas" and getattr(lib, "architecture", None) in _UNPACKED_CORES for lib in pools
    ):
        return 1_000_000, 1200
    return None


_UNPACKED_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})


def _set_threads(lib, n: int) -> None:
    # threadpoolctl 3.8 lets only one Python thread change a pthreads OpenBLAS's pool: the first that set a limit,
    # until it leaves a `with threadpool_limits` block (plain calls never give the control up); a limit set from any
    # other thread is dropped without a word. Once the main thread had held BLAS to one thread (a factorisation), a
    # read's side thread could not, and BLAS's spinning threads took the core the read decompressed on (1.5 s of
    # CPU in a 2 s fit from .nii.gz). voxfit's sections share one limit under _BLAS_LOCK, so they set it
    # themselves (test_hostile_work checks that a side thread's section holds after the main thread's).
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n)


_BLAS_LOCK = threading.Lock()
_blas_single = {"depth": 0, "before": {}}  # the contexts open in the process; each pool held (by its library's
# file), and its threads before


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """A context in which BLAS runs on one thread: for voxfit's worker threads, which each run their own
    products; BLAS threads that spin between many small products also slow the compiled passes in between.

    The limit is the process's, so the contexts of all threads share one: the first to enter sets it, the last to
    leave restores what was there before. Each thread setting and restoring its own would, when two overlap and
    leave out of order, give BLAS its threads back inside the other's section, or keep it on one thread for good
    (6 of 40 trials of a side thread's sums beside a fit's factorisations). A BLAS loaded while sections are
    open (scipy's, at scipy.linalg's import) is held by the next section to enter, and given back with the rest."""
    with _BLAS_LOCK:
        held = _blas_single["before"]
        # keyed by the library's file: an inspection after a new BLAS has loaded makes new controllers of the held
        # ones too, which would take their threads as 1 and give them back last
        for lib in _blas_pools():
            if lib.filepath not in held and (n := lib.get_num_threads()) is not None:
                held[lib.filepath] = (lib, n)
                _set_threads(lib, 1)
        _blas_single["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _blas_single["depth"] -= 1
            if _blas_single["depth"] == 0:
                for lib, n in _blas_single["before"].values():
                    _set_threads(lib, n)
                _blas_single["before"] = {}


@contextmanager
def numba_threads(n_jobs) -> Iterator[None]:
    """At most `n_jobs` threads for numba's parallel kernels (TFCE, clusters: each thread holds O(V) scratch,
    which the memory plans of ``voxfit.SecondLevel`` count); numba's own default (every CPU) for None."""
    if n_jobs is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(resolve_workers(n_jobs), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)
