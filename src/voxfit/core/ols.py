"""Ordinary least squares for blocks of voxels: betas and sums of squares in one pass over the data.

How a block is fitted
---------------------
1. One compiled pass over the block: each voxel is shifted by an offset (the mean of 8 evenly spaced scans,
   rounded to the working dtype, so that it is exact from then on) and its sum of squares is accumulated
   in float64. The shift keeps the large common level of imaging data (a BOLD mean of ~1000 against
   fluctuations of ~10) out of the rounding of the product that follows.
2. Matrix products per cache-sized tile (in columns of the tile where BLAS multiplies them faster), in the
   working dtype, with an orthonormal basis Q of the design's column space: ``c = Q' y_c``. Then, in float64:
   ``RSS = ||y_c||^2 - ||c||^2`` (no condition number amplifies the rounding here),
   ``betas = (pinv Q) c + (pinv 1) offset``, and the total sum of squares for R^2.
3. Where the subtraction in the RSS would lose digits (in float32: the fit explains more than 7/8 of a
   voxel's variance about its offset; in float64: more than 1 - 1e-5), those voxels are refitted in float64
   from explicit residuals, with one step of iterative refinement of the betas. Residual sums of squares
   at the level of rounding, ``(n eps ||y||)^2``, are set to exactly 0.

Precision policy
----------------
Data stay in their stored dtype; only a tile (512 KiB; 2 MiB in numpy's pass) is ever converted. float64 data
(and integers wider than 16 bits) are processed in float64. float32, float16 and 8/16-bit integer data are
processed in float32 as above; against a float64 fit of the same numbers, betas differ by at most ~1e-5 of
``|beta| + se`` (typically 1e-7), residual variances by at most ~1e-5 relative and t by ~1e-5 (1 + |t|)
(``tests/test_precision.py``).

Voxels whose data contain NaN or infinity get NaN outputs and are reported as invalid; the others are
unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import held_as_series, working_dtype
from .._threads import unpacked_product_limits
from ._kernels import shift_and_square, shift_and_square_numpy
from .design import DesignFactor

__all__ = [
    "BlockFitter",
    "BlockResult",
    "REFIT_RATIO",
    "REFIT_RATIO_DEVICE",
    "empty_result",
    "exact_fits",
    "fit_block",
    "fit_from_sums",
    "fit_operator",
    "finite_columns",
    "fit_sums_of_data",
    "needs_refit",
    "working_dtype",
]

# The float64 refit decision (see needs_refit): the largest ratio of the sum of squares to the RSS subtracted
# from it that the fast sums may keep, by the dtype of the products (float64: at most 5 of 16 digits lost).
REFIT_RATIO = {np.dtype(np.float32): 8.0, np.dtype(np.float64): 1e5}
REFIT_RATIO_DEVICE = 1e4  # sums of squares and products both in float32, on a device (engine.fit's device path)
_OFFSET_ROWS = 8  # scans averaged for each voxel's offset
_TINY_SSQ = np.finfo(np.float64).tiny / np.finfo(np.float64).eps  # ~1e-292: below, squares are nearly subnormal


def exact_fits(rss: NDArray, ysq: NDArray, n: int) -> NDArray[np.bool_]:
    """Voxels whose residual sum of squares `rss` (float64, of `n` scans) is rounding of their sum of squares `ysq`:
    indistinguishable from an exact fit (a constant voxel), so no residual variance: no statistic. Every noise model
    says so: ARMA(1,1), the order BIC chose and the pooled AR(1) gave constant voxels of an explicit mask finite t
    (p 2e-4) from whitened rounding."""
    return rss <= (n * np.finfo(np.float64).eps) ** 2 * ysq


def needs_refit(rss: NDArray, ssq: NDArray, dtype=np.float64, *, on_device: bool = False) -> NDArray[np.bool_]:
    """Voxels whose residual sum of squares, found as a difference ``rss = ssq - ||Q'y||^2`` of sums, has lost
    too many digits and must be refitted in float64 from explicit residuals: True where ``rss * ratio <= ssq``
    (False where either is NaN).

    `ssq` is the sum of squares the RSS was subtracted from (of the data as shifted for the sums); the
    subtraction loses about ``log10(ssq / rss)`` digits of the precision of the products, so the ratio allowed
    depends on the dtype the products were computed in (`dtype`, :data:`REFIT_RATIO`):

    * float64 sums (1e5): at most 5 of 16 digits lost, the RSS to ~1e-11 relative;
    * float32 products, sums of squares in float64 (:class:`BlockFitter`, 8): ``||Q'y||^2`` carries float32
      rounding, so voxels whose fit explains more than 7/8 of their variance about the offset are refitted,
      which keeps the RSS within ~1e-5 relative, the precision promised for float32 data
      (``tests/test_precision.py``);
    * `on_device`, sums of squares and products both in float32 on a device (:data:`REFIT_RATIO_DEVICE`,
      1e4): the device path promises the RSS to ~1e-3 relative (``tests/test_device.py``), and each voxel it
      flags is refitted on the host.
    """
    ratio = REFIT_RATIO_DEVICE if on_device else REFIT_RATIO[np.dtype(dtype)]
    return rss * ratio <= ssq


@dataclass(frozen=True, eq=False)
class BlockResult:
    """Per-voxel results for one block: betas (p, v), rss (v,), tss (v,) and valid (v,)."""

    betas: NDArray[np.float64]
    rss: NDArray[np.float64]
    tss: NDArray[np.float64]
    valid: NDArray[np.bool_]


def fit_operator(design: DesignFactor, dtype: np.dtype) -> NDArray:
    """Rows of the single GEMM: an orthonormal basis Q of the design's column space and, when the constant
    is not in that space, ``(I - H) 1`` (:func:`fit_from_sums` takes products with either).

    Coordinates in an orthonormal basis give the fitted sum of squares without the condition number of X
    amplifying the rounding of the product; betas follow from them through a small (p x rank) product, and
    so does the sum of the data, ``1'y = (Q'1)'(Q'y) + ((I - H) 1)'y``.
    """
    rows = [design.basis.T]
    if not design.exact_intercept:
        rows.append(design.ones_residual[None, :])
    return np.ascontiguousarray(np.vstack(rows), dtype=dtype)


def _product_columns(op: NDArray, tile: int, series: bool) -> int:
    """Voxels per matrix product of the operator `op` (m, n) with a tile: in float32, as many as BLAS multiplies
    unpacked (``voxfit._threads.unpacked_product_limits``), in multiples of 16 and at least 32 (narrower products
    cost more in calls than they save), else the whole tile. A tile held series by series is the product's
    transposed operand (unpacked from 32 scans). A tile held scan by scan is split only up to
    ``_UNPACKED_MAX_SCANS`` scans: the unpacked kernel then adds each coordinate's n products in one chain, whose
    float32 rounding grows with n (residual variances of 1,200 scans and 25 columns within 1.06e-5 relative of
    float64's, against 3.1e-6 packed, worst of test_precision's five data scales). Unpacked float64 products were
    no faster (0.91-0.93 against 0.83 ns a value).

    Fits in the process on 2 cores (Zen 4), against whole tiles, alternating, best of 9 or of 6: 200,000 voxels x
    300 scans float32 with 15 columns 37-42 ms against 40-44 ms (one thread 59 against 65 ms), with 30 columns
    59-66 against 70 ms; numpy's pass on a 2 mm MNI run (230,609 voxels x 400 scans) 79-88 against 91-97 ms, on an
    HCP CIFTI run (91,282 x 1,200, 15 columns) 72-88 against 91-98 ms."""
    limits = unpacked_product_limits()
    if limits is None or op.dtype != np.float32:
        return tile
    m, n = op.shape
    mnk, mn = limits
    if series:
        cols = min(mnk // (m * n), mn // m) if n >= 32 else 0
    else:
        cols = mnk // (m * n) if n <= _UNPACKED_MAX_SCANS else 0
    cols = cols // 16 * 16
    return cols if cols >= 32 else tile


_UNPACKED_MAX_SCANS = 512


def _offset_rows(n: int) -> NDArray[np.intp]:
    return np.unique(np.linspace(0, n - 1, min(n, _OFFSET_ROWS)).round().astype(np.intp))


class BlockFitter:
    """Fits one design to blocks of voxels, reusing its operator and buffers from block to block.

    A block (the voxels ``start:stop`` of Y) is processed in tiles of `tile` voxels: one compiled pass
    shifts a tile and sums its squares, and matrix products give its coordinates while the tile is still in
    cache; the float64 arithmetic on betas and sums of squares is then done once for the whole block.
    Not thread-safe: use one instance per thread. Memory: O(tile * n) plus O(block * p).
    """

    def __init__(self, design: DesignFactor, dtype: np.dtype, tile: int, compiled: bool = True):
        self.design = design
        self.wdt = working_dtype(dtype)
        self.op = fit_operator(design, self.wdt)  # (m, n): op @ tile gives the tile's coordinates, (m, tile)
        self.rows = _offset_rows(design.n_scans)
        self.beta_op = np.column_stack([design.basis_pinv, design.ones_coef])  # [pinv Q, pinv 1]
        self.basis_sums = design.basis.sum(axis=0)
        self.tile = int(tile)
        self._flat = np.empty(design.n_scans * self.tile, dtype=self.wdt)
        self.compiled = compiled

    def __call__(self, Y: NDArray, start: int, stop: int, out: BlockResult) -> None:
        """Fit the voxels ``start:stop`` of ``Y`` (n, V), read in its stored dtype (memory maps included).

        Results are written into `out`, whose arrays have ``stop - start`` voxels (views of the caller's
        full-size outputs, so that nothing is copied twice).
        """
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf in invalid voxels propagate quietly
            offset, ssq, g = self._shifted_products(Y, start, stop)
            valid = out.valid
            np.isfinite(ssq, out=valid)
            overflowed = np.zeros_like(valid)
            if not valid.all():  # non-finite data, or finite values whose shifted values overflow the working dtype
                suspect = np.flatnonzero(~valid)
                overflowed[suspect] = finite_columns(Y, start + suspect, self.tile)
                valid |= overflowed
            scale = self._sums(offset, ssq, g, out)
            # also refit voxels whose sums of squares are near float64's underflow (data below ~1e-146),
            # where the fast sums keep few digits: the exact fit works at unit scale
            redo = np.flatnonzero(valid & (needs_refit(out.rss, scale, self.wdt) | overflowed | (ssq < _TINY_SSQ)))
        for a in range(0, redo.size, self.tile):
            idx = redo[a : a + self.tile]
            exact = _fit_exact(self.design, np.asarray(Y[:, start + idx], dtype=np.float64))
            out.betas[:, idx], out.rss[idx], out.tss[idx] = exact
        invalid = ~valid
        out.betas[:, invalid] = np.nan
        out.rss[invalid] = np.nan
        out.tss[invalid] = np.nan

    def _shifted_products(self, Y: NDArray, start: int, stop: int):
        """Tile by tile: shift, sum squares (compiled, one pass over Y) and multiply by the operator (GEMM)."""
        n, v = self.design.n_scans, stop - start
        g = np.empty((self.op.shape[0], v), dtype=self.wdt)
        offset = np.empty(v, dtype=self.wdt)
        ssq = np.empty(v)
        # the kernel reads numpy arrays as they are; other dtypes and array-likes are converted tile by tile
        direct = (
            isinstance(Y, np.ndarray)
            and Y.dtype.isnative
            and Y.dtype.kind in "iuf"
            and Y.dtype != np.float16
            and Y.dtype.itemsize <= 8
        )
        # numpy's pass over data held as series (F-ordered, as CIFTI runs are read) shifts each series into a
        # tile held the same way: a copy in memory order rather than a transpose
        series = direct and not self.compiled and held_as_series(Y)
        step = _product_columns(self.op, self.tile, series)
        for a in range(0, v, self.tile):
            b = min(v, a + self.tile)
            flat = self._flat[: n * (b - a)]  # contiguous even for a partial tile
            buf = flat.reshape(b - a, n).T if series else flat.reshape(n, b - a)
            src, lo, hi = (
                (Y, start + a, start + b)
                if direct
                else (np.asarray(Y[:, start + a : start + b], dtype=self.wdt), 0, b - a)
            )
            if self.compiled:
                shift_and_square(src, lo, hi, self.rows, buf, offset[a:b], ssq[a:b])
            else:
                shift_and_square_numpy(src, lo, hi, self.rows, buf, offset[a:b], ssq[a:b])
            for c in range(a, b, step):
                d = min(b, c + step)
                np.matmul(self.op, buf[:, c - a : d - a], out=g[:, c:d])
        return offset, ssq, g

    def _sums(self, offset, ssq, g, out: BlockResult) -> NDArray[np.float64]:
        """Betas, RSS and TSS of the block from the shifted products, in float64; returns the RSS's scale.

        With y = y_c + o (o the offset) and Q the orthonormal basis: betas = [pinv Q, pinv 1] [Q'y_c; o],
        RSS = ||y_c||^2 - ||Q'y_c||^2, plus terms in o when the constant is not in the span of Q to rounding
        (:attr:`DesignFactor.exact_intercept`): ``o (2 r'y_c + o r'r)``, r = (I - H) 1. Where the constant is near
        the span, the RSS's scale is ``(|y_c| + |o| |r|)^2``, not ``|y|^2``: its data are refitted only where the
        subtraction itself lost digits.
        """
        design = self.design
        n = design.n_scans
        r = design.rank
        aug = np.empty((r + 1, g.shape[1]))  # [Q'y_c; o]: betas in one product
        aug[:r] = g[:r]
        aug[r] = offset
        coords, off = aug[:r], aug[r]
        np.matmul(self.beta_op, aug, out=out.betas)
        np.subtract(ssq, np.einsum("ij,ij->j", coords, coords), out=out.rss)
        sum_c = self.basis_sums @ coords  # 1'y_c, exact when 1 is in the span of Q
        if design.exact_intercept:
            np.subtract(ssq, sum_c * sum_c / n, out=out.tss)
            return ssq
        r1 = design.ones_residual
        r1y = g[r].astype(np.float64)
        sum_c += r1y
        np.add(out.rss, off * (2.0 * r1y + off * (r1 @ r1)), out=out.rss)
        if design.has_intercept:  # the constant near the span: its terms are small, and the scale theirs too
            np.subtract(ssq, sum_c * sum_c / n, out=out.tss)
            return (np.sqrt(ssq) + np.abs(off) * np.sqrt(r1 @ r1)) ** 2
        np.add(ssq, off * (2.0 * sum_c + n * off), out=out.tss)
        return ssq + n * off * off


def empty_result(n_columns: int, n_voxels: int) -> BlockResult:
    """Uninitialised output arrays for `n_voxels` voxels, to be filled by :class:`BlockFitter`."""
    return BlockResult(
        betas=np.empty((n_columns, n_voxels)),
        rss=np.empty(n_voxels),
        tss=np.empty(n_voxels),
        valid=np.empty(n_voxels, dtype=bool),
    )


def fit_from_sums(design: DesignFactor, c: NDArray, ss: NDArray, total: NDArray, shift: NDArray | None):
    """OLS from per-voxel sums of data shifted by `shift` (v,) (None: not shifted; a shift needs the constant
    in the design): ``c = Q'y`` (r, v), ``ss = sum y^2``, ``total = sum y``. Returns ``(betas, rss, tss)``,
    tss centred when the design has an intercept; rss is clipped at 0. Where ``rss`` is a small part of ``ss``
    the subtraction has lost digits: callers refit those voxels from their data. A constant only near the span
    (not ``exact_intercept``) leaves the shift in the residuals: `c` then has a row more, ``((I - H) 1)'y``, for
    its terms (as ``BlockFitter``'s)."""
    n, r = design.n_scans, design.rank
    c, r1y = c[:r], (c[r] if c.shape[0] > r else None)
    betas = design.basis_pinv @ c
    if shift is not None:  # (Q'y = c + Q'1 shift: basis_pinv Q'1 is pinv 1)
        design.add_level(betas, shift)
    rss = ss - np.einsum("iv,iv->v", c, c)
    if r1y is not None and shift is not None:
        r1 = design.ones_residual
        rss += shift * (2.0 * r1y + shift * (r1 @ r1))
    rss = np.maximum(rss, 0.0)
    tss = ss - total**2 / n if design.has_intercept else ss
    return betas, rss, tss


def finite_columns(Y: NDArray, columns: NDArray, tile: int = 256) -> NDArray[np.bool_]:
    """Whether each of the `columns` of `Y` (n, V) holds finite values only, a tile of columns at a time (memory
    stays within the plan, however many columns are asked about): sums that are not finite come from NaN or
    infinity in the data, or from finite values that overflowed."""
    out = np.zeros(columns.size, dtype=bool)
    for a in range(0, columns.size, tile):
        out[a : a + tile] = np.isfinite(Y[:, columns[a : a + tile]]).all(axis=0)
    return out


def fit_sums_of_data(design: DesignFactor, c, ss, total, shift, Y: NDArray, tile: int = 256) -> BlockResult:
    """OLS of the voxels of `Y` (n, v) from their float64 sums (see :func:`fit_from_sums`; `shift` None when the
    data were not shifted), with :class:`BlockFitter`'s rules: voxels whose data hold NaN or infinity are invalid
    (NaN outputs); those whose sums lost digits (:func:`needs_refit`, float64), whose squares overflowed though
    their data are finite, or whose sums of squares are near underflow are fitted from their data in `Y`."""
    with np.errstate(invalid="ignore", over="ignore"):
        betas, rss, tss = fit_from_sums(design, c, ss, total, shift)
        valid = np.isfinite(ss) & np.isfinite(total) & np.isfinite(c).all(axis=0)
        suspect = np.flatnonzero(~valid)
        overflowed = suspect[finite_columns(Y, suspect, tile)]
        valid[overflowed] = True
        redo = np.flatnonzero(valid & (needs_refit(rss, ss, np.float64) | (ss < _TINY_SSQ)))
    redo = np.union1d(redo, overflowed)
    for a in range(0, redo.size, tile):
        idx = redo[a : a + tile]
        exact = fit_block(design, np.asarray(Y[:, idx]), tile, compiled=False)  # a few voxels: no kernel to load
        betas[:, idx], rss[idx], tss[idx] = exact.betas, exact.rss, exact.tss
    betas[:, ~valid], rss[~valid], tss[~valid] = np.nan, np.nan, np.nan
    return BlockResult(betas=betas, rss=rss, tss=tss, valid=valid)


def fit_block(design: DesignFactor, Y: NDArray, tile: int = 256, compiled: bool = True) -> BlockResult:
    """Fit the design to one block of voxels ``Y`` (n, v); see :class:`BlockFitter` to loop over blocks."""
    out = empty_result(design.n_columns, Y.shape[1])
    BlockFitter(design, Y.dtype, max(1, min(Y.shape[1], tile)), compiled)(Y, 0, Y.shape[1], out)
    return out


def _fit_exact(design: DesignFactor, Y: NDArray[np.float64]):
    """Float64 fit from explicit residuals, for voxels where the fast sums of squares would cancel.

    The data are not shifted here (on the hardest NIST problems a shift costs two digits through the
    rounding of ``pinv @ 1``), and the betas get one step of iterative refinement, ``b += pinv @ (y - X b)``,
    which brings the exact-fit Wampler1 problem from 8.5 to 10 correct digits. Returns ``(betas, rss, tss)``.
    """
    n = Y.shape[0]
    scale = np.abs(Y).max(axis=0)  # work at unit scale: squares of values beyond 1e154 would overflow
    scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
    Y = Y / scale
    betas = design.pinv @ Y
    resid = design.X @ betas
    np.subtract(Y, resid, out=resid)
    betas += design.pinv @ resid
    np.matmul(design.X, betas, out=resid)
    np.subtract(Y, resid, out=resid)
    rss = np.einsum("ij,ij->j", resid, resid)
    ysq = np.einsum("ij,ij->j", Y, Y)
    rss[exact_fits(rss, ysq, n)] = 0.0
    if design.has_intercept:
        np.subtract(Y, Y.mean(axis=0), out=resid)
        tss = np.einsum("ij,ij->j", resid, resid)
        tss[exact_fits(tss, ysq, n)] = 0.0  # a constant voxel, to rounding
    else:
        tss = ysq
    with np.errstate(over="ignore", under="ignore"):
        # sums of squares of values beyond ~1e154 (or below ~1e-154) are not representable in float64: NaN
        # (no statistic) rather than inf or 0, which would give t = 0 or an "exact fit" silently
        rss_out, tss_out = rss * scale**2, tss * scale**2
    tiny = np.finfo(np.float64).tiny
    rss_out[(rss > 0) & ~((rss_out >= tiny) & np.isfinite(rss_out))] = np.nan
    tss_out[(tss > 0) & ~((tss_out >= tiny) & np.isfinite(tss_out))] = np.nan
    return betas * scale, rss_out, tss_out
