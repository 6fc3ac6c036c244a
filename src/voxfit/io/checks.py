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
            f" (the data have {n_rows} elements a scan: is the run stored the other way round? an array is scans by "
            "columns, one series alone a column of shape (scans, 1), and a 1-D .npy one scan; a GIFTI run's one 2-D "
            "array is vertices by scans, as FreeSurfer and fMRIPrep write it)"
            if n_elements == n_rows
            else ""
        )
        scans = "1 scan" if n_scans == 1 else f"{n_scans} scans"
        raise InputError(
            f"the design has {n_rows} rows but the data have {scans}{swapped}; give one design row per scan."
        )


# the largest text table (events, confounds, design) read: fMRIPrep's confounds of 3,000 scans and 1,000 columns
# take ~60 MB; a table is held as Python's lists of text while it is parsed, ten times its size or more
TABLE_BYTES = 256 << 20


def check_readable(path: Path, what: str = "", table: bool = False) -> None:
    """Open `path` once for reading, so that a file that is missing, unreadable (permissions) or a folder is
    refused with the system's reason, not reported later as some other fault (nibabel calls an unreadable
    file "Cannot work out file type"). A pipe or a device is refused unopened: opening a pipe waits forever. A
    `table` (text read whole) over :data:`TABLE_BYTES` is refused before it is read (an image given as events was
    read whole before it was found not to be text)."""
    label = f"{what} {path}" if what else str(path)
    try:
        info = os.stat(path)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{label}: is a folder, where a file is expected.")
        if not stat.S_ISREG(mode):
            raise InputError(f"{label}: not a regular file (a pipe, socket or device); give a file.")
        if table and info.st_size > TABLE_BYTES:
            raise InputError(
                f"{label}: {info.st_size / 2**20:,.0f} MiB, more than any text table of {what or 'its'} kind holds "
                f"({TABLE_BYTES >> 20} MiB at most); is it the right file (not an image or an archive)?"
            )
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError.from_os_error(exc, path, what) from None
