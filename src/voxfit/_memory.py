"""Memory sizes as users write them, and the check that every size read from a header or an option fits the
memory there is before anything of that size is allocated (no heavy imports: the command line decides before
it starts reading). What each part of a run may take under a cap is in :mod:`voxfit._execution`.

Sizes come from headers (image dimensions), options (``--n-scans``, ``--microtime-resolution``...) or both
multiplied (permutations x voxels); a header can claim 10^13 voxels in 81 bytes. :func:`check_memory` refuses
such a size with an :class:`~voxfit.exceptions.InputError` naming it, so a bad input exits with status 2 in
milliseconds instead of being killed by the kernel half-way through a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re

from .exceptions import InputError

__all__ = [
    "RESERVED",
    "available_memory",
    "cap_text",
    "check_memory",
    "format_bytes",
    "parse_memory",
    "release_freed_memory",
    "reserved_bytes",
    "size_text",
    "whole_files_cap",
    "whole_files_capped",
]

# a command's --max-memory, for the inputs decoded whole as they are opened (see whole_files_capped)
_WHOLE_FILES_CAP: contextvars.ContextVar = contextvars.ContextVar("voxfit_whole_files_cap", default=None)


@contextlib.contextmanager
def whole_files_capped(max_memory):
    """Within the block, an input that is decoded whole as it is opened (a GIFTI file: its data arrays are text,
    not read a block at a time) must fit `max_memory` (a command's --max-memory; None: the memory available)."""
    token = _WHOLE_FILES_CAP.set(max_memory)
    try:
        yield
    finally:
        _WHOLE_FILES_CAP.reset(token)


def whole_files_cap():
    """The cap set by :func:`whole_files_capped` (None outside it)."""
    return _WHOLE_FILES_CAP.get()


# Of a --max-memory cap, kept for the interpreter and the libraries: Python, numpy, scipy, nibabel, numba and
# its compiled kernels take 170 to 250 MiB resident (measured: 12 MiB for `import voxfit.cli`, 170 MiB once a
# group model's permutation kernels have run, 100 MiB for the report's matplotlib); the rest of the cap is
# split among the data, the per-voxel results and the working buffers of each command.
RESERVED = 256 << 20

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(value: str | float) -> int:
    """Bytes in a memory size: an integer number of bytes or a string like ``64K``, ``500M``, ``2G``, ``1.5GB``.

    Units are binary (1K = 1024 bytes), as in ``ulimit`` and SLURM.
    """
    if isinstance(value, bool):
        raise InputError(f"`max_memory` must be a size like '500M' or '2G'; got {value!r}.")
    if isinstance(value, (int, float)):
        size = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise InputError(
                f"`max_memory` must be a size like '64K', '500M' or '2G' (units K, M, G, T); got {value!r}."
            )
        size = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not (size > 0 and math.isfinite(size)):
        raise InputError(f"`max_memory` must be a positive size; got {value!r}.")
    return int(size)


def reserved_bytes() -> int:
    """:data:`RESERVED`, read when called (tests set it to 0 to plan kilobyte caps)."""
    return RESERVED


def size_text(nbytes: int) -> str:
    """`nbytes` rounded up, in the units ``--max-memory`` takes: ``"3.7G"``, ``"740M"``, ``"96K"``."""
    if nbytes >= 10 * 2**30:
        return f"{-(-nbytes // 2**30)}G"
    if nbytes >= 2**30:
        return f"{-(-nbytes * 10 // 2**30) / 10:.1f}G"
    return f"{-(-nbytes // 2**20)}M" if nbytes >= 2**20 else f"{-(-nbytes // 2**10)}K"


def cap_text(need: int) -> str:
    """A cap of `need` bytes to ask for in an error (``size_text``), with the part of it kept for the interpreter
    (:data:`RESERVED`) said: "give at least 257M" for kilobytes of data was a puzzle."""
    reserve = reserved_bytes()
    text = size_text(need)
    return f"{text} ({size_text(reserve)} of it for Python and its libraries)" if 0 < reserve < need else text


def format_bytes(n: float) -> str:
    """``n`` bytes as people read them: ``512 bytes``, ``3.2 MiB``, ``9.3 GiB``, ``7 EiB``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What the process's cgroup (v2, or v1) still allows, when it sets a limit: the limit less the usage, the
    usage less the inactive file cache that the kernel reclaims before it kills anything."""
    for folder, limit, usage, cache in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    ):
        try:
            with open(os.path.join(folder, limit)) as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            with open(os.path.join(folder, usage)) as fh:
                used = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(folder, "memory.stat")) as fh:
                used -= next((int(line.split()[1]) for line in fh if line.split()[0] == cache), 0)
        except (OSError, ValueError, IndexError):
            pass
        return max(0, int(text) - max(0, used))
    return None


def _address_space_available() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) leaves of the address space, when it is set."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - platforms without resource
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as fh:
            used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        used = 0
    return max(0, soft - used)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the memory the system has available, what its cgroup
    allows and what ``ulimit -v`` leaves (None when none of them can be read)."""
    known = [v for v in (_meminfo_available(), _cgroup_available(), _address_space_available()) if v is not None]
    return min(known) if known else None


def check_memory(nbytes: float, what: str, max_memory=None, fix: str = "", interpreter: bool = False) -> None:
    """Refuse, before anything is allocated, a size that cannot fit: `nbytes` (what `what` would take) against
    `max_memory` when given (as :func:`parse_memory` reads it; with `interpreter`, beside the interpreter's share of
    it, :func:`reserved_bytes`), else against :func:`available_memory`.

    `what` names the size and where it came from ("data of 10000 x 10000 x 100 voxels (the header of
    bold.nii.gz)"); `fix` is what the user can do (a sentence ending in a full stop), appended.
    """
    if max_memory is not None:
        limit, source = parse_memory(max_memory), f"--max-memory/`max_memory` {max_memory}"
        if interpreter:
            nbytes, what = nbytes + reserved_bytes(), f"{what}, with the interpreter's share,"
    else:
        limit, source = available_memory(), "the memory available"
        if limit is None:
            return
    if nbytes > limit:
        tail = f" {fix}" if fix else ""
        # (the need rounded up, in the cap's units: "348 MiB, more than 348M (348 MiB)" was one of a tester's)
        held = f"; {size_text(math.ceil(nbytes))} would hold it" if max_memory is not None else ""
        raise InputError(
            f"{what} would take {format_bytes(nbytes)} of memory, more than {source} ({format_bytes(limit)}{held})."
            f"{tail}"
        )


# glibc's mallopt parameters (malloc.h), and what release_freed_memory sets them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_FROM, _TRIM_FROM = 8 << 20, 4 << 20


def release_freed_memory() -> bool:
    """Have glibc's malloc give memory back to the system once it is freed, in a process that holds runs one after
    another (``voxfit bids``, its worker processes). By default malloc raises its thresholds to the largest block
    freed: blocks up to 32 MiB then come from its heap, and up to 64 MiB freed at the heap's top stay there, so a
    study kept the slabs and per-voxel arrays of the runs before beside the two runs it holds. Blocks from 8 MiB
    are mapped on their own (returned when freed) and the heap's top returned beyond 4 MiB: a study of 6 subjects
    x 2 runs x 200 scans (118,880 voxels) peaked at 535-547 MiB rather than 616-650, in the same CPU time (a
    128 KiB top: 529-544 MiB, 0.5 s more system time). False, with nothing changed, where the C library is not
    glibc, and where the user tunes malloc through the environment (``MALLOC_*_``, ``GLIBC_TUNABLES``)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _malloc_tuned(os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover (glibc has it)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM) and mallopt(_M_TRIM_THRESHOLD, _TRIM_FROM))


def _malloc_tuned(environ) -> bool:
    """Whether `environ` sets glibc's malloc parameters (``MALLOC_TRIM_THRESHOLD_`` as Dask advises, ...)."""
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in environ) or "malloc" in environ.get(
        "GLIBC_TUNABLES", ""
    )
