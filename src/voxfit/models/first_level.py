"""``voxfit.FirstLevel``: an fMRI run from BIDS events to contrast maps (settings stored; ``fit`` does the work)."""

from __future__ import annotations

from dataclasses import dataclass

from ..design import make_design, read_confounds
from ..io import open_reader
from .glm import ImageFit, fit_images

__all__ = ["FirstLevel"]


@dataclass(frozen=True)
class FirstLevel:
    """First-level model settings (as ``voxfit fit --events``); :meth:`fit` returns an :class:`ImageFit`.

    >>> model = FirstLevel(tr=2.0, hrf="spm+derivative", noise="ar1")              # doctest: +SKIP
    >>> result = model.fit("bold.nii.gz", "events.tsv", {"fh": "faces - houses"})  # doctest: +SKIP

    `units` ("secs" or "scans") and `modulators` (SPM's parametric modulators, ``"rt:1,difficulty:2"``) are
    those of :func:`voxfit.design.make_design`.
    """

    tr: float
    hrf: str = "spm"
    drift: str = "cosine"
    high_pass: float | str = 128.0
    drift_order: int = 1
    microtime_resolution: int | None = None
    microtime_onset: int | None = None
    slice_time_ref: float | None = None
    fir_delays: int = 1
    convolution: str = "spm"
    units: str = "secs"
    modulators: str | dict | tuple | None = None
    noise: str = "ols"
    scaling: str = "none"
    mask_threshold: float | str | None = "auto"  # as `voxfit fit`: SPM's brain mask (0.8) for volumes
    max_memory: str | int | None = None
    n_jobs: int | None = None

    def design(self, events, n_scans: int, confounds=None, confounds_columns=None):
        """The design this model would fit for `events` and `n_scans` scans (optionally with confounds)."""
        extra = read_confounds(confounds, confounds_columns or "*", n_scans) if confounds is not None else None
        return make_design(
            events, self.tr, n_scans, hrf=self.hrf, drift=self.drift, high_pass=self.high_pass,
            drift_order=self.drift_order, microtime_resolution=self.microtime_resolution,
            microtime_onset=self.microtime_onset, slice_time_ref=self.slice_time_ref, fir_delays=self.fir_delays,
            confounds=extra, convolution=self.convolution, units=self.units, modulators=self.modulators,
        )  # fmt: skip

    def fit(self, bold, events, contrasts, *, confounds=None, confounds_columns=None, mask=None, out_dir=None,
            force: bool = False) -> ImageFit:  # fmt: skip
        """Build the design from `events` for the run `bold`, fit it, compute `contrasts`, write to `out_dir`."""
        n_scans = open_reader(bold).n_scans
        design = self.design(events, n_scans, confounds, confounds_columns)
        return fit_images(bold, design, contrasts, mask=mask, max_memory=self.max_memory, n_jobs=self.n_jobs,
                          out_dir=out_dir, force=force, noise=self.noise, scaling=self.scaling,
                          mask_threshold=None if mask is not None else self.mask_threshold)  # fmt: skip
