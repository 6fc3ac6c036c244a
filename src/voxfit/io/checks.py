"""Checks of inputs: a file before any reader opens it, and the design's rows against the data's scans."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..exceptions import InputError

__all__ = ["check_design_rows", "check_readable"]


def check_design_rows(n_rows: int, n_scans: int, n_elements: int | None = None) -> None:
    """The design has one row per scan of the data (of `n_elements` elements a scan, where known: a design of
    as many rows as that is a run read the other way round, a GIFTI array of scans by vertices)."""
    if n_rows != n_scans:
        swapped = (
            f" (the data have {n_rows} elements a scan: is the run stored the other way round? a GIFTI run's one "
            "2-D array is vertices by scans, as FreeSurfer and fMRIPrep write it)"
            if n_elements == n_rows
            else ""
        )
        raise InputError(
            f"the design has {n_rows} rows but the data have {n_scans} scans{swapped}; give one design row per scan."
        )


def check_readable(path: Path, what: str = "") -> None:
    """Open `path` once for reading, so that a file that is missing, unreadable (permissions) or a folder is
    refused with the system's reason, not reported later as some other fault (nibabel calls an unreadable
    file "Cannot work out file type"). A pipe or a device is refused unopened: opening a pipe waits forever."""
    label = f"{what} {path}" if what else str(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{label}: is a folder, where a file is expected.")
        if not stat.S_ISREG(mode):
            raise InputError(f"{label}: not a regular file (a pipe, socket or device); give a file.")
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError.from_os_error(exc, path, what) from None
