"""The permutation loop on an array-API device (a GPU through CuPy or PyTorch): one matrix product per batch
of shuffles, then the statistics, their maxima and exceedance counts as array operations on the device.

The same code runs on the CPU through array-api-strict in the tests. Only the (N,) maxima and the (V,)
counts come back to the host, and the statistic maps when clusters or TFCE need them (those run on the
host). Arithmetic is float32 on the device; keys order like the statistic (``sign(t) t^2``, F).
"""

from __future__ import annotations

import numpy as np

from .._array import to_numpy

__all__ = ["DeviceNull"]


class DeviceNull:
    """The residuals and per-voxel constants held on the device once; ``run(rows, nb)`` does one batch."""

    def __init__(self, xp, device, E, ee_w, okey, dof: float, q: int, is_t: bool):
        self.xp, self.device = xp, device
        kw = {} if device is None else {"device": device}
        self.E = xp.asarray(np.ascontiguousarray(E, dtype=np.float32), **kw)
        self.ee = xp.asarray(np.asarray(ee_w, dtype=np.float32), **kw)
        self.okey = xp.asarray(np.asarray(okey, dtype=np.float32), **kw)
        self.kw, self.dof, self.q, self.is_t = kw, float(dof), int(q), bool(is_t)

    def run(self, rows: np.ndarray, nb: int, need_maps: bool):
        """rows (nb * r, n): the stacked ``basis' P_b``. Returns (maxima keys (nb,), counts (V,), maps or None)."""
        xp = self.xp
        R = xp.asarray(np.ascontiguousarray(rows, dtype=np.float32), **self.kw)
        G = xp.reshape(xp.matmul(R, self.E), (nb, rows.shape[0] // nb, self.E.shape[1]))
        squares = G * G
        ss = xp.sum(squares[:, : self.q, :], axis=1)
        rs = self.ee - xp.sum(squares, axis=1)
        if self.is_t:
            g0 = G[:, 0, :]
            key = g0 * xp.abs(g0) * self.dof / rs
        else:
            key = ss * (self.dof / self.q) / rs
        maxima = xp.max(key, axis=1)
        counts = xp.sum(xp.astype(key >= self.okey, xp.int32), axis=0)
        maps = None
        if need_maps:
            stat = xp.sign(key) * xp.sqrt(xp.abs(key)) if self.is_t else key
            maps = to_numpy(xp, stat).astype(np.float32)
        return to_numpy(xp, maxima).astype(np.float64), to_numpy(xp, counts).astype(np.int32), maps
