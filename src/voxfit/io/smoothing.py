"""Gaussian smoothing of volumes before a fit, as nilearn's ``smooth_img`` does it: the FWHM (mm) becomes a
sigma per axis from the affine's voxel sizes (the norms of its first three columns), the three axes are filtered
one after another with 1-D Gaussians (scipy's ``gaussian_filter1d``: truncated at 4 sigma, edges mirrored
about the outer voxels' edges, scipy's ``reflect``), non-finite values are set to 0 first, float32 stays
float32. :class:`SmoothedReader` smooths a run a slab of scans at a time as it is read, so a run that does not
fit in memory is streamed smoothed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from ..exceptions import InputError
from .geometry import VolumeGeometry
from .readers import DEFAULT_SLAB_BYTES, apply_scale

__all__ = ["SmoothedReader", "fwhm_sigmas", "smooth_volumes"]

FWHM_PER_SIGMA = float(np.sqrt(8 * np.log(2)))


def fwhm_sigmas(affine, fwhm: float) -> NDArray[np.float64]:
    """The Gaussian's sigma along each of the three axes, in voxels, for a FWHM of `fwhm` mm on the grid of
    `affine` (4 x 4 or 3 x 3)."""
    voxel = np.sqrt(np.sum(np.asarray(affine, dtype=np.float64)[:3, :3] ** 2, axis=0))
    return float(fwhm) / (FWHM_PER_SIGMA * voxel)


def smooth_volumes(volumes: NDArray, sigmas) -> NDArray:
    """`volumes` ``(k, z, y, x)`` (C order: k scans, each a volume flattened with x fastest, as the readers
    give them reshaped) smoothed in place by separable Gaussians of `sigmas` ``(x, y, z)`` voxels, x first;
    non-finite values become 0 before. Vectorised over the scans. Returns `volumes`."""
    from scipy.ndimage import gaussian_filter1d

    volumes[~np.isfinite(volumes)] = 0
    for axis, sigma in zip((3, 2, 1), sigmas):
        if sigma > 0:
            gaussian_filter1d(volumes, float(sigma), axis=axis, output=volumes, mode="reflect", truncate=4.0)
    return volumes


class SmoothedReader:
    """The scans of a volume reader smoothed by a Gaussian of `fwhm` mm as they are read (see the module
    docstring): the reader protocol of :mod:`voxfit.io.readers`, values scaled and in float32 (float64 data
    stay float64), no column source (smoothing needs whole volumes, so Dask workers cannot read columns)."""

    in_memory = ()

    def __init__(self, reader, fwhm: float):
        if not isinstance(reader.geometry, VolumeGeometry):
            raise InputError(
                f"{reader.paths[0] if reader.paths else 'the data'}: smoothing is for volumes (NIfTI); surface "
                "and CIFTI data are not smoothed here: drop --smoothing (`smoothing`)."
            )
        self._reader = reader
        self.fwhm = float(fwhm)
        self.geometry = reader.geometry
        self.n_scans = reader.n_scans
        self.dtype = np.dtype(np.float64 if reader.dtype == np.float64 or reader.dtype.itemsize > 4 else np.float32)
        self.scale = None
        self.paths = list(reader.paths)
        self.sigmas = fwhm_sigmas(self.geometry.affine, self.fwhm)

    def column_source(self, index=None):
        return None

    def iter_scans(self, max_bytes: int = DEFAULT_SLAB_BYTES) -> Iterator[tuple[int, NDArray]]:
        x, y, z = self.geometry.shape
        for start, raw in self._reader.iter_scans(max_bytes):
            block = np.array(apply_scale(raw, self._reader.scale), dtype=self.dtype, copy=True)
            smooth_volumes(block.reshape(-1, z, y, x), self.sigmas)
            yield start, block
