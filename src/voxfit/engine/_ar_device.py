"""AR(p) fits with the data's sums on an array-API device (a GPU through CuPy or PyTorch; array-api-strict in
the tests).

Per block of voxels, the work that grows with scans x voxels runs on the device, in float64: the products with
the lagged basis ``[Q, S_1 Q, .., S_p Q]' y``, the lagged sums ``sum_t y_t y_{t+k}``, the totals and the first
and last p scans, all of the data shifted by each voxel's mean as on the CPU (``voxfit.core.ar.lagged_sums``).
The data go to the device in their working dtype (float32 only for values it holds exactly) and are converted
there. These :class:`~voxfit.core.ar.LaggedSums` come back to the host in one transfer, where
``voxfit.core.ar.fit_ar_sums`` does the per-voxel algebra in float64 and refits the few voxels it flags from
the block's data, kept on the host. The numbers equal those of the CPU path to rounding. ``fit_ar`` sizes and
runs the blocks as on the CPU (one per thread), so device memory is bounded like host memory.
"""

from __future__ import annotations

import numpy as np

from .._array import device_namespace, to_numpy, working_dtype
from ..core.ar import ARBlock, LaggedSums, fit_ar_sums

__all__ = ["DeviceARBlock"]


class DeviceARBlock:
    """``fit_ar_block`` with the sums on a device: the lagged basis is held there once; calling the object with
    a finite block ``Y`` (n, v) and the contrast weights returns what ``voxfit.core.ar.fit_ar_sums`` does."""

    def __init__(self, block: ARBlock, device: str):
        self.xp, dev = device_namespace(device)
        self.kw = {} if dev is None else {"device": dev}
        self.block = block
        self.basis = self.xp.asarray(np.ascontiguousarray(block.lagged_basis.T), **self.kw)  # ((p+1) r, n) float64

    def __call__(self, Y, weights: list):
        xp, p, r = self.xp, self.block.order, self.block.design.rank
        n, v = Y.shape
        host = np.ascontiguousarray(Y, dtype=working_dtype(Y.dtype))
        Yd = xp.astype(xp.asarray(host, **self.kw), xp.float64)
        shifted = self.block.ones is not None  # as lagged_sums: by the mean, when the constant is in the design
        if shifted:
            mean = xp.mean(Yd, axis=0, keepdims=True)
            Yd = Yd - mean
        level = mean if shifted else xp.sum(Yd, axis=0, keepdims=True)  # the shift, or the total
        rows = [xp.matmul(self.basis, Yd)] + [
            xp.sum(Yd[: n - k, :] * Yd[k:, :], axis=0, keepdims=True) for k in range(p + 1)
        ]
        out = to_numpy(xp, xp.concat(rows + [Yd[:p, :], Yd[n - p :, :], level], axis=0))
        a, b = (p + 1) * r, (p + 1) * (r + 1)
        shift = out[-1] if shifted else None
        total = np.zeros(v) if shifted else out[-1]
        sums = LaggedSums(
            out[:a].reshape(p + 1, r, v), out[a:b], out[b : b + p], out[b + p : b + 2 * p][::-1], total, shift
        )

        def data(idx):
            return np.subtract(host[:, idx], 0.0 if shift is None else shift[idx], dtype=np.float64)

        return fit_ar_sums(self.block, sums, weights, data)
