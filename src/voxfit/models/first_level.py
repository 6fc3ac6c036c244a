"""``voxfit.FirstLevel``: an fMRI run from BIDS events to contrast maps (settings stored; ``fit`` does the work)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._array import is_dataframe, type_name
from .._execution import Execution
from ..design import make_design, read_confounds
from ..exceptions import InputError
from ..io import check_data, check_mask, open_reader, warn_header_tr
from ._routing import FMRI_NOISE, fmri_noise
from .glm import ImageFit, fit_images

__all__ = ["FMRI_NOISE", "FirstLevel"]


@dataclass(frozen=True)
class FirstLevel:
    """First-level model settings (as ``voxfit fit --events``); :meth:`fit` returns an :class:`ImageFit`.

    >>> model = FirstLevel(tr=2.0, hrf="spm+derivative", noise="ar1")              # doctest: +SKIP
    >>> result = model.fit("bold.nii.gz", "events.tsv", {"fh": "faces - houses"})  # doctest: +SKIP

    `units` ("secs" or "scans") and `modulators` (SPM's parametric modulators, ``"rt:1,difficulty:2"``) are
    those of :func:`voxfit.design.make_design`.
    `bold` may also be a nibabel image (4-D, or a list of 3-D images, one per scan) or a 2-D array (scans,
    voxels); `events` and `confounds` pandas DataFrames with the files' columns. `mask_threshold` (SPM's
    relative threshold for the automatic mask: "auto" is SPM's 0.8 for volumes, as on the command line),
    `execution` (a :class:`voxfit.Execution`) or its shortcuts `max_memory`, `n_jobs`, `scheduler` and `device`
    are those of :func:`voxfit.fit_images`.
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
    noise: str | None = None  # None: the fMRI default for the run's length (see _routing.fmri_noise)
    scaling: str = "none"
    mask_threshold: float | str | None = "auto"  # as `voxfit fit`: SPM's brain mask (0.8) for volumes
    max_memory: str | int | None = None
    n_jobs: int | None = None
    scheduler: object = None
    device: str | None = None
    execution: Execution | None = None
    diagnostics: bool = False  # whiteness of the whitened residuals (see fit_images)

    def design(self, events, n_scans: int, confounds=None, confounds_columns=None):
        """The design this model would fit for `events` (a BIDS events.tsv, a DataFrame with its columns, or a
        ``{condition: {onset, duration}}`` dict) and `n_scans` scans (optionally with confounds: a TSV or a
        DataFrame, columns chosen by names or patterns)."""
        _check_tables(events, confounds)
        extra = read_confounds(confounds, confounds_columns or "*", n_scans) if confounds is not None else None
        return make_design(
            events,
            self.tr,
            n_scans,
            hrf=self.hrf,
            drift=self.drift,
            high_pass=self.high_pass,
            drift_order=self.drift_order,
            microtime_resolution=self.microtime_resolution,
            microtime_onset=self.microtime_onset,
            slice_time_ref=self.slice_time_ref,
            fir_delays=self.fir_delays,
            confounds=extra,
            convolution=self.convolution,
            units=self.units,
            modulators=self.modulators,
            max_memory=self.max_memory if self.execution is None else self.execution.max_memory,
        )

    def fit(
        self,
        bold,
        events,
        contrasts,
        *,
        confounds=None,
        confounds_columns=None,
        mask=None,
        out_dir=None,
        force: bool = False,
        progress: bool | None = None,
    ) -> ImageFit:
        """Build the design from `events` for the run `bold`, fit it, compute `contrasts`, write to `out_dir`."""
        bold = check_data(bold, "bold")  # every argument's type checked before any file is read
        _check_tables(events, confounds)
        check_mask(mask)
        reader = open_reader(bold, "bold")
        warn_header_tr(reader, self.tr, "the run" if not isinstance(bold, (str, os.PathLike)) else bold)
        n_scans = reader.n_scans
        design = self.design(events, n_scans, confounds, confounds_columns)
        return fit_images(
            bold,
            design,
            contrasts,
            mask=mask,
            mask_threshold=self.mask_threshold,
            out_dir=out_dir,
            force=force,
            noise=self.noise or fmri_noise(n_scans),
            scaling=self.scaling,
            execution=self.execution,
            max_memory=self.max_memory,
            n_jobs=self.n_jobs,
            scheduler=self.scheduler,
            device=self.device,
            progress=progress,
            diagnostics=self.diagnostics,
        )


def _check_tables(events, confounds) -> None:
    """Refuse `events` or `confounds` of a type the design cannot read, naming the type received."""
    if not (isinstance(events, (str, os.PathLike, dict)) or is_dataframe(events)):
        raise InputError(
            "`events` must be a path to a BIDS events.tsv, a pandas DataFrame (onset, duration[, "
            "trial_type, modulation]) or a {condition: {onset, duration}} dict; got "
            f"{type_name(events)}."
        )
    if not (confounds is None or isinstance(confounds, (str, os.PathLike)) or is_dataframe(confounds)):
        raise InputError(
            f"`confounds` must be a path to a confounds TSV or a pandas DataFrame; got {type_name(confounds)}."
        )
