"""A Dask client for a `scheduler` argument (a client, or a scheduler address); dask is imported only here."""

from __future__ import annotations

from contextlib import contextmanager

from .exceptions import InputError

__all__ = ["dask_client", "run_tasks"]


@contextmanager
def dask_client(scheduler):
    """Yield a dask.distributed Client: `scheduler` itself, or one connected to the address (closed after)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("a Dask scheduler needs dask.distributed: pip install 'voxfit[dask]'.") from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler {scheduler!r} ({type(exc).__name__}: {exc}).") from None
    try:
        yield client
    finally:
        client.close()


def run_tasks(scheduler, fn, shared, calls) -> list:
    """``fn(shared, *call)`` for each call as a task on a Dask cluster, `shared` sent once to every worker;
    the results in call order."""
    with dask_client(scheduler) as client:
        # one piece, under a key of its own: a key from its hash can be the one a previous call is releasing
        [handle] = client.scatter([shared], broadcast=True, hash=False)
        futures = [client.submit(fn, handle, *call, pure=False) for call in calls]
        return [future.result() for future in futures]
