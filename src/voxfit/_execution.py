"""How a run is executed, as one frozen object: the memory cap resolved once into named budgets, the number of
threads, the Dask scheduler, the device and the progress bar.

Models build one :class:`Execution` (from ``--max-memory``, ``--n-jobs``, ``--scheduler``, ``--device``, or the
keyword arguments of the Python API) and hand it down to the engine and the inference. What each memory budget
bounds, and its value with and without a cap, is in :data:`BUDGETS`, the one table of these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ._checks import check_flag, check_n_jobs
from ._memory import parse_memory, reserved_bytes
from .exceptions import InputError

__all__ = ["BUDGETS", "Budgets", "Execution", "cap_holding", "data_bytes"]

# Every memory budget: what it bounds, its default without --max-memory, and its value under a cap P. A budget
# given under a cap is what the cap allows it; the working buffers stay far below it in practice (a block of the
# OLS engine is at most 8192 voxels, see voxfit.engine.memory).
BUDGETS = {
    "process": ("the whole process: data, results, working memory and the interpreter", None, "P"),
    "block": ("the OLS and mixed-effects engines' working memory, all threads together", 64 << 20, "P"),
    "ar_block": (
        "the AR(p) engine's working memory, all threads together (voxfit.engine.ar)",
        128 << 20,
        "(P - reserve) / 4",
    ),
    "batch": ("a batch of shuffles of a permutation test", 256 << 20, "planned by the group model"),
    "stream": ("the cap a one-pass (streamed) fit plans in when streaming is asked for", 2 << 30, "P"),
}


@dataclass(frozen=True)
class Budgets:
    """The bytes each part of a run may take (see :data:`BUDGETS`); `process` is None without a cap."""

    process: int | None
    block: int
    ar_block: int
    batch: int
    stream: int

    @classmethod
    def of(cls, max_memory) -> Budgets:
        """The budgets under the cap `max_memory` (a size as :func:`voxfit._memory.parse_memory` reads it, or
        None: no cap, every budget its default)."""
        cap = None if max_memory is None else parse_memory(max_memory)
        return cls(
            process=cap,
            block=BUDGETS["block"][1] if cap is None else cap,
            ar_block=BUDGETS["ar_block"][1] if cap is None else _ar_block_under(cap),
            batch=BUDGETS["batch"][1],
            stream=BUDGETS["stream"][1] if cap is None else cap,
        )

    def streams(self, n_scans: int, n_elements: int, itemsize: int = 4) -> bool:
        """Whether data of `n_scans` x `n_elements` values go to the one-pass fit: when, as float32 (or
        `itemsize` bytes a value, for float64 data), they are :meth:`over_half` of the cap. The other half holds
        what the in-memory path adds to the data: a scaled copy (``--scaling``), the per-voxel results, the
        working blocks and the maps written."""
        return self.over_half(data_bytes(n_scans, n_elements, itemsize))

    def over_half(self, nbytes: int) -> bool:
        """Whether `nbytes` of data take more than half of what the cap leaves beside
        :data:`~voxfit._memory.RESERVED` (never without a cap): whether the cap is below :func:`cap_holding`."""
        return self.process is not None and nbytes > (self.process - reserved_bytes()) // 2


def _ar_block_under(cap: int) -> int:
    """The AR engine's working memory under the cap `cap`: a quarter of what the cap leaves beside
    :data:`~voxfit._memory.RESERVED` (at least a quarter of the cap, up to 1 MiB). The in-memory route holds its
    data in at most half of that (over half, it streams); the results and the maps share the other half with these
    blocks. The whole cap, as it was, let AR(12) on 64 MiB of data under 384M take blocks of 4,096 voxels a thread
    and peak at 548 MiB."""
    return max(min(1 << 20, cap // 4), (cap - reserved_bytes()) // 4)


def data_bytes(n_scans: int, n_elements: int, itemsize: int = 4) -> int:
    """The bytes of data the in-memory path holds: float32, or `itemsize` bytes a value for float64 data."""
    return max(4, itemsize) * n_scans * n_elements


def cap_holding(nbytes: int) -> int:
    """The smallest memory cap under which `nbytes` of data (see :func:`data_bytes`) are fitted in memory, as
    error messages name it: :data:`~voxfit._memory.RESERVED` and twice the data."""
    return reserved_bytes() + 2 * nbytes


@dataclass(frozen=True)
class Execution:
    """How a run is executed (the models' ``execution=`` argument; their plain keyword arguments
    ``max_memory``, ``n_jobs``, ``scheduler``, ``device`` and ``progress`` are shortcuts for it).

    max_memory : a cap on the whole process (``"2G"``, ``"500M"``, bytes), resolved into :attr:`budgets`;
        None: no cap.
    n_jobs : threads for the fit, the shuffles and the writing of the maps (None: the CPUs this process may
        run on).
    scheduler : a ``dask.distributed.Client`` or a scheduler address: the voxel blocks (and shuffles) run on
        the cluster.
    device : ``cuda`` or ``cuda:N`` to compute on a GPU; None or ``cpu`` for the CPU. Not with a scheduler.
    progress : show a progress bar (None: when the standard error is a terminal).
    budgets : the bytes each part of the run may take; by default resolved from `max_memory` (see
        :meth:`Budgets.of`); a model that plans a part itself says so with :meth:`planned`.
    """

    max_memory: int | str | None = None
    n_jobs: int | None = None
    scheduler: object = None
    device: str | None = None
    progress: bool | None = None
    budgets: Budgets | None = None

    def __post_init__(self) -> None:
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        if self.n_jobs is not None:
            check_n_jobs(self.n_jobs)
        check_flag(self.progress, "`progress`", none=True)
        if self.device is not None and not isinstance(self.device, str):
            raise InputError(f"`device` must be 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}.")
        if self.scheduler is not None and self.on_device:  # a cluster's workers have no view of this GPU
            raise InputError("give either `scheduler` or `device`, not both.")
        if self.budgets is None:
            object.__setattr__(self, "budgets", Budgets.of(self.max_memory))

    def planned(self, n_jobs: int | None = None, **budgets: int) -> Execution:
        """This execution with budgets (and a number of threads) that a model planned under its cap, e.g. a
        group model's batch of shuffles and kernel threads (see ``voxfit.models.second_level.group_memory``)."""
        return replace(self, n_jobs=self.n_jobs if n_jobs is None else n_jobs, budgets=replace(self.budgets, **budgets))

    @property
    def on_device(self) -> bool:
        """Whether the arithmetic runs on a GPU."""
        return self.device not in (None, "cpu")

    @classmethod
    def resolve(cls, execution: Execution | None = None, **shortcuts) -> Execution:
        """The execution of a call that takes both ``execution=`` and its keyword shortcuts: `execution` with
        every shortcut that is not None applied; a shortcut that contradicts `execution` is an InputError."""
        given = {k: v for k, v in shortcuts.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown execution option(s): {', '.join(sorted(unknown))}")
        if execution is None:
            return cls(**given)
        if not isinstance(execution, cls):
            raise InputError(f"`execution` must be a voxfit.Execution; got {type(execution).__name__}.")
        clash = [k for k, v in given.items() if getattr(execution, k) is not None and getattr(execution, k) != v]
        if clash:
            raise InputError(f"give {', '.join(clash)} either in `execution` or as a keyword argument, not both.")
        kept = {f.name: getattr(execution, f.name) for f in fields(cls)}
        if "max_memory" in given:  # a cap given now: the budgets follow it
            kept["budgets"] = None
        return cls(**{**kept, **given})
