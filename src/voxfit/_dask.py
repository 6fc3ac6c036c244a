"""A Dask client for a `scheduler` argument (a client, or a scheduler address); dask is imported only here.

No wait on the network is endless. dask.distributed bounds the TCP connect by its timeout but not the
handshake that follows it: an address that accepts connections and never answers (a wrong port, a frozen
server, a proxy) hung :class:`distributed.Client` for ever. So an address is first probed in an event loop
of our own, where the connect, the handshake and the scheduler's answer to ``identity`` share one deadline
(:data:`CONNECT_TIMEOUT_S`) and a late answer is cancelled cleanly; the Client is then made in a thread
that is waited for no longer than that. While tasks run, the scheduler is asked for its identity every
:data:`PING_INTERVAL_S` and must answer within :data:`ANSWER_TIMEOUT_S`; a scheduler that dies or stops
answering mid-run is an :class:`InputError` naming its address (the command line exits 2), not a hang. So are
workers that all leave (the data sent to them are lost: distributed cancels the tasks) and tasks that kill
their workers (KilledWorker).
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from contextlib import contextmanager, suppress

from .exceptions import InputError

__all__ = ["dask_client", "run_tasks"]

CONNECT_TIMEOUT_S = 10.0  # connecting to a scheduler, its handshake and its first answer, together
ANSWER_TIMEOUT_S = 60.0  # a running scheduler's answer to a ping (generous: a busy scheduler answers late)
PING_INTERVAL_S = 30.0  # how often a scheduler is pinged while the client waits for results


def _timeouts() -> tuple:
    """What a wait cut by its deadline raises: TimeoutError, and asyncio's own class of it before Python 3.11.
    (asyncio is imported here, where a scheduler is used: 11 ms that a run without Dask does not pay.)"""
    import asyncio

    return (asyncio.TimeoutError, TimeoutError)


def _deadline() -> tuple:
    """What a connection cut by its deadline raises: under load, the deadline's cancellation can surface as a
    CancelledError rather than a TimeoutError."""
    import asyncio

    return (*_timeouts(), asyncio.CancelledError, CancelledError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _unreachable(address, why: str) -> InputError:
    return InputError(f"cannot reach the Dask scheduler {address!r} ({why}); check --scheduler / `scheduler`.")


def _malformed(address, exc: BaseException) -> InputError:
    return InputError(
        f"cannot reach the Dask scheduler {address!r}: the address is malformed ({_one_line(exc)}); "
        "give one such as tcp://host:8786."
    )


def _in_thread(fn, seconds: float):
    """``fn()`` run in a daemon thread, waited for at most `seconds`: ``(finished, result or exception)``."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            box["error"] = exc

    thread = threading.Thread(target=target, name="voxfit-dask-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return False, None
    if "error" in box:
        return True, box["error"]
    return True, box["result"]


def _probe(address: str, seconds: float) -> None:
    """Connect to `address`, handshake and ask for its identity, all within `seconds`; an InputError naming
    the address otherwise (or when what answers is not a Dask scheduler)."""
    import asyncio

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address
    from distributed.security import Security

    try:
        parse_address(address)
    except (ValueError, TypeError) as exc:
        raise _malformed(address, exc) from None
    args = Security().get_connection_args("client")  # TLS settings from the dask configuration, as Client's

    async def ask():
        try:  # (connect retries until its timeout: a scheduler may be starting; its error names the last cause)
            comm = await connect(address, timeout=0.75 * seconds, **args)
        except OSError as exc:
            while exc.__cause__ is not None:  # the first cause: connection refused...
                exc = exc.__cause__
            raise ConnectionError(_one_line(exc)) from None
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded():
        return await asyncio.wait_for(ask(), seconds)

    # a fresh event loop in a thread of its own: the caller may itself be inside a running loop (Jupyter)
    finished, answer = _in_thread(lambda: asyncio.run(bounded()), seconds + 5.0)
    if not finished or isinstance(answer, _deadline()):
        raise _unreachable(address, f"no answer within {seconds:g} s")
    if isinstance(answer, ValueError):
        raise _malformed(address, answer) from None
    if isinstance(answer, ConnectionError):  # (distributed words a connect cut by its deadline as "CancelledError")
        cut = not str(answer) or "CancelledError" in str(answer)
        raise _unreachable(address, f"no answer within {seconds:g} s" if cut else str(answer))
    if isinstance(answer, BaseException):
        raise _unreachable(address, _one_line(answer))
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise InputError(
            f"{address!r} is not a Dask scheduler (it answered as {kind or 'something else'}); give "
            "the scheduler's address, e.g. tcp://host:8786."
        )


def _connect(address: str, seconds: float):
    """A Client connected to `address` within about `seconds` (after a successful probe)."""
    from dask.distributed import Client

    abandoned = threading.Event()

    def make():
        client = Client(address, timeout=seconds)
        if abandoned.is_set():  # too late: nobody will use or close it
            client.close()
        return client

    finished, client = _in_thread(make, 2 * seconds + 5.0)
    if not finished:
        abandoned.set()
        raise _unreachable(address, f"the connection was not ready within {2 * seconds + 5:g} s")
    if isinstance(client, _deadline()):
        raise _unreachable(address, f"no answer within {seconds:g} s")
    if isinstance(client, BaseException):
        raise _unreachable(address, _one_line(client))
    return client


@contextmanager
def dask_client(scheduler):
    """Yield a dask.distributed Client: `scheduler` itself, or one connected to the address (closed after)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("a Dask scheduler needs dask.distributed: pip install 'voxfit[dask]'.") from None
    if isinstance(scheduler, Client):
        if scheduler.status != "running":
            raise InputError(
                f"the Dask client given as `scheduler` is {scheduler.status}, not running; give a "
                "connected client or the scheduler's address."
            )
        yield scheduler
        return
    if not isinstance(scheduler, str):
        raise InputError(
            f"`scheduler` must be a dask.distributed Client or a scheduler address such as "
            f"tcp://host:8786; got {type(scheduler).__name__}."
        )
    _probe(scheduler, CONNECT_TIMEOUT_S)
    client = _connect(scheduler, CONNECT_TIMEOUT_S)
    try:
        yield client
    finally:
        _in_thread(client.close, CONNECT_TIMEOUT_S)  # a dead scheduler must not hang the clean-up either


def _address(client) -> str:
    """The scheduler's address (a closed client no longer knows it)."""
    return str(getattr(client.scheduler, "address", None) or "unknown: the client is closed")


def _lost(client, why: str) -> InputError:
    return InputError(
        f"the Dask scheduler {_address(client)!r} {why} during the run; no output was written "
        "(restart the cluster, or run without --scheduler / `scheduler`)."
    )


def _ping(client) -> None:
    """The scheduler's identity within ANSWER_TIMEOUT_S, or an InputError: a frozen scheduler would keep the
    connection open and never send a result."""
    try:
        client.sync(client.scheduler.identity, callback_timeout=ANSWER_TIMEOUT_S)
    except _timeouts():
        raise _lost(client, f"did not answer within {ANSWER_TIMEOUT_S:g} s") from None
    except (OSError, CancelledError) as exc:
        raise _lost(client, f"was lost ({_one_line(exc)})") from None


def _result(client, future):
    """The future's result; waiting for it, the scheduler is pinged every PING_INTERVAL_S."""
    from distributed import KilledWorker

    timeout = PING_INTERVAL_S
    while True:
        try:
            return future.result(timeout=timeout)
        except _timeouts():
            if timeout is None:  # (the task's own TimeoutError)
                raise
            if future.status == "error":  # the task failed, maybe just after the wait's deadline: its own error,
                timeout = None  # asked for again without one (at once)
                continue
            _ping(client)  # (a finished task's data can be late, a worker busy: waited for)
        except CancelledError as exc:  # the scheduler went away, or the workers holding the data did
            why = "was lost" if client.status != "running" else "or its workers went away"  # (which, is a race)
            raise _lost(client, f"{why} ({_one_line(exc)})") from None
        except KilledWorker as exc:
            raise _lost(client, f"lost the workers running a task, several times ({_one_line(exc)})") from None


def run_tasks(scheduler, fn, shared, calls) -> list:
    """``fn(shared, *call)`` for each call as a task on a Dask cluster, `shared` sent once to every worker;
    the results in call order. Without a scheduler (None), the calls in turn here."""
    if scheduler is None:
        return [fn(shared, *call) for call in calls]
    with dask_client(scheduler) as client:
        try:
            # one piece, under a key of its own: a key from its hash can be the one a previous call is releasing
            [handle] = client.scatter([shared], broadcast=True, hash=False)
            futures = [client.submit(fn, handle, *call, pure=False) for call in calls]
        except CancelledError as exc:
            raise _lost(client, f"was lost ({_one_line(exc)})") from None
        except (OSError, *_timeouts()) as exc:  # (CommClosedError is an OSError)
            raise _lost(client, f"did not take the tasks ({_one_line(exc)})") from None
        try:
            return [_result(client, future) for future in futures]
        except BaseException:  # (Ctrl-C, a lost task): the others stop, not left to run on the user's own Client
            with suppress(Exception):
                client.cancel([handle, *futures], force=True)
            raise
