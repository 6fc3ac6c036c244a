"""Memory sizes as users write them, and the block size that fits a budget."""

from __future__ import annotations


from .._checks import check_scalar
from .._execution import Budgets
from .._memory import parse_memory
from ..exceptions import InputError

__all__ = ["check_block_size", "parse_memory", "plan_blocks"]

# A tile (the shifted data of a few hundred voxels) stays in a core's L2 cache while the compiled pass and its
# matrix products run; a block (the float64 arithmetic on betas and sums of squares) is large enough to amortise
# Python overhead. The compiled pass reads each scan's row of a tile as one run of memory: wider runs are read
# faster (a pass over 300 scans x 200,000 voxels float32, one thread: 27.4 ms at 512 KiB, 31.6 ms at 256 KiB),
# and the products are made in narrower columns where BLAS is faster so (``core.ols._product_columns``).
DEFAULT_TILE_BYTES = 512 << 10
# numpy's pass makes a tile in separate calls (shift, squares, product), each a pass of its own, and its two
# threads contend for the interpreter between calls: tiles of 2 MiB take fewer calls. The OLS fit of 230,609
# voxels x 400 scans (C order): 88-101 ms against 133-151 ms at 256 KiB; of 91,282 grayordinates x 1,200 frames
# (series): 91-98 ms against 130-186 ms (2 threads, 5 runs each; 4 MiB: 85-98 and 103-121 ms).
NUMPY_TILE_BYTES = 2 << 20
DEFAULT_BLOCK_VOXELS = 8192


def _tile_bytes(n_scans: int, work_itemsize: int) -> int:
    """Working memory per voxel of a tile: the shifted tile, and a float64 copy and residuals if refitted."""
    return n_scans * (work_itemsize + 16)


def _block_bytes(n_columns: int, work_itemsize: int) -> int:
    """Working memory per voxel of a block: GEMM output and a dozen float64 vectors of length ~p."""
    return (n_columns + 2) * work_itemsize + 8 * (3 * n_columns + 12)


def check_block_size(block_size, max_memory) -> None:
    """`block_size`, when given, is a positive number of voxels, and not given with `max_memory`."""
    if block_size is not None and max_memory is not None:
        raise InputError("give either `max_memory` or `block_size`, not both.")
    if block_size is not None:
        check_scalar(block_size, "`block_size`", min_val=1, description="a positive number of voxels")


def plan_blocks(
    n_scans: int,
    n_columns: int,
    work_itemsize: int,
    max_memory: str | int | None = None,
    block_size: int | None = None,
    workers: int = 1,
    *,
    budget: int | None = None,
    tile_bytes: int = DEFAULT_TILE_BYTES,
) -> tuple[int, int]:
    """``(block, tile)`` voxel counts for ``core.BlockFitter``: what fits the budget, split among workers.

    `block_size` fixes the block (and caps the tile); otherwise `budget` bytes (by default the ``block`` budget
    of ``voxfit._execution.Budgets`` under `max_memory`; `max_memory` is named in messages) bound the working
    memory of all workers together: each gets ``budget / workers`` for a tile of at most `tile_bytes` of data
    (``DEFAULT_TILE_BYTES`` for the compiled pass, ``NUMPY_TILE_BYTES`` for numpy's) and the largest block, up to
    ``DEFAULT_BLOCK_VOXELS``, that fits the rest.
    """
    check_block_size(block_size, max_memory)
    tile_cost = _tile_bytes(n_scans, work_itemsize)
    block_cost = _block_bytes(n_columns, work_itemsize)
    # (no tile over a block: few scans would otherwise make tiles, and so blocks, of 65,536 voxels, one thread's)
    default_tile = max(16, min(DEFAULT_BLOCK_VOXELS, tile_bytes // (n_scans * work_itemsize)))
    if block_size is not None:
        return int(block_size), int(min(block_size, default_tile))
    budget = (Budgets.of(max_memory).block if budget is None else budget) // max(1, workers)
    tile = min(default_tile, budget // (tile_cost + block_cost))
    if tile < 1:
        need = (tile_cost + block_cost) * max(1, workers)
        raise InputError(
            f"`max_memory`={max_memory!r} is too small: one voxel of {n_scans} scans needs {need} bytes of "
            f"working memory ({workers} worker(s)); give at least {need}."
        )
    block = min(DEFAULT_BLOCK_VOXELS, (budget - tile * tile_cost) // block_cost)
    return int(max(block, tile)), int(tile)
