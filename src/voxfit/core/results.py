"""The result of a fit: betas, residual variance and R^2 at every voxel, and contrasts on them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..exceptions import DataRangeWarning
from .contrast import Stats, compute_contrast
from .design import DesignFactor
from .distributions import t_to_z

__all__ = ["Fit", "make_fit", "warm_up"]


@dataclass(frozen=True, eq=False)
class Fit:
    """One design fitted to V voxels. Arrays are read-only.

    Attributes
    ----------
    design : DesignFactor
        The factorised design (``design.X``, ``design.names``, ``design.pinv``, ...).
    betas : (p, V) float64 array
        One row per design column, one column per voxel.
    residual_variance : (V,) float64 array
        ``sigma^2 = RSS / dof``; NaN for invalid voxels or when ``dof == 0``.
    r2 : (V,) float64 array
        Coefficient of determination: centred (``1 - RSS / sum((y - mean)^2)``) when the constant lies in
        the column space of the design, uncentred (``1 - RSS / sum(y^2)``) otherwise, as statsmodels and
        NIST do. NaN where the denominator is zero (a constant voxel).
    valid : (V,) bool array
        False for voxels whose data contain NaN or infinity; all their outputs are NaN.
    mean : (V,) float64 array or None
        Each voxel's mean over the scans where the fit made it from its own sums (``voxfit.fit_ar``, on the CPU,
        here or on Dask workers: float64 sums; NaN or infinite, as the data's mean, for voxels not valid), else
        None.
    """

    design: DesignFactor
    betas: NDArray[np.float64]
    residual_variance: NDArray[np.float64]
    r2: NDArray[np.float64]
    valid: NDArray[np.bool_]
    mean: NDArray[np.float64] | None = None

    @property
    def dof(self) -> int:
        """Residual degrees of freedom, ``n_scans - rank``."""
        return self.design.dof

    @property
    def rank(self) -> int:
        """Numerical rank of the design."""
        return self.design.rank

    @property
    def names(self) -> tuple[str, ...]:
        """Design column names, one per row of ``betas``."""
        return self.design.names

    @property
    def n_invalid(self) -> int:
        """Number of voxels whose data contained NaN or infinity."""
        return int(self.valid.size - np.count_nonzero(self.valid))

    @property
    def stderr(self) -> NDArray[np.float64]:
        """(p, V) standard errors of the betas, ``sqrt(sigma^2 * diag((X'X)^+))``; computed on each access."""
        return np.sqrt(np.outer(np.diag(self.design.cov_unscaled), self.residual_variance))

    def contrast(self, contrast: str | ArrayLike, name: str | None = None, n_jobs: int | None = None) -> Stats:
        """Statistics of a contrast at every voxel.

        Parameters
        ----------
        contrast : str or array_like
            Weights over the design columns: one row (length p) for a t contrast, several rows (q, p) for
            an F contrast; or an expression over column names such as ``"A - B"``, ``"0.5*A + 0.5*B"``, or
            ``"A; B"`` (rows joined by ``;`` make an F contrast).
        name : str, optional
            Label of the contrast; defaults to the expression or the weights.
        n_jobs : int, optional
            Threads for the z of large maps (default: every CPU this process may run on); the same numbers.

        Returns
        -------
        Stats
            ``effect``, ``variance``, ``t`` (or ``F``), ``z``, ``p`` (one-sided upper tail for t) and
            ``logp`` (``-log10 p``), and ``dof`` (``(df1, df2)`` for F).

        Raises
        ------
        ContrastError
            If the contrast is malformed, has the wrong length, or is not estimable on this design.
        """
        return compute_contrast(contrast, self.design, self.betas, self.residual_variance, name, n_jobs)


def make_fit(design: DesignFactor, betas, rss, tss, valid, mean=None) -> Fit:
    """Assemble a Fit from per-voxel sums (as produced block by block by ``fit_block``), and the data's means
    where the fit made them."""
    with np.errstate(divide="ignore", invalid="ignore"):
        residual_variance = rss / design.dof if design.dof > 0 else np.full_like(rss, np.nan)
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
    if design.dof > 0:
        lost = int(np.count_nonzero(valid & np.isnan(residual_variance)))
        if lost:
            warnings.warn(
                f"{lost} voxel(s) have data so large or so small (beyond about 1e154 or below 1e-154) that their "
                "residual sum of squares is not representable in float64; their variance and statistics are NaN. "
                "Rescale the data (e.g. divide by a power of ten).",
                DataRangeWarning,
                stacklevel=3,
            )
    for a in (betas, residual_variance, r2, valid, mean):
        if a is not None:
            a.setflags(write=False)
    return Fit(design=design, betas=betas, residual_variance=residual_variance, r2=r2, valid=valid, mean=mean)


def warm_up(dof: float | None = None, dtype=np.float32) -> None:
    """Do now what the first fit would do once: load the compiled kernels for `dtype` data and, for `dof`,
    the t -> z table (about half a second, worth spending in a thread while data are being read)."""
    from .design import factorize
    from .ols import fit_block

    design = factorize(np.column_stack([np.arange(6.0), np.ones(6)]), warn=False)
    for width in (3, 2):  # a full tile and a partial one
        fit_block(design, np.ones((6, width), dtype=dtype) * np.arange(6.0)[:, None] ** 2, tile=3)
    t_to_z(np.zeros(2), float(dof) if dof else 4.0)
