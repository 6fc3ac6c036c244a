"""The check of an output folder that the command line makes before anything else (standard library only: so that
a wrong folder costs neither a read nor the numerical modules' import), and the hidden folders of runs that died,
which it removes. :class:`voxfit.io.OutputFolder` writes results through such hidden folders."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from ._checks import check_flag
from .exceptions import InputError

__all__ = ["MARKER", "PARTIAL", "check_alone", "check_output_folder", "remove_stale_partials"]

PARTIAL = ".voxfit-partial-"  # the prefix of a run's hidden folder inside its output folder
MARKER = "voxfit-run.json"  # inside a hidden folder: the host and process that made it


def check_output_folder(path, force: bool = False, alone: bool = False) -> Path:
    """`path` as an output folder, or the InputError :class:`~voxfit.io.OutputFolder` gives: a symbolic link, a
    file, a folder with files in it without `force` (its hidden folders of runs that died are removed first),
    and with `alone` a folder another run is writing into (:func:`check_alone`). The command line asks before any
    input is opened, so a wrong folder costs no read."""
    check_flag(force, "`force`")
    final = Path(path)
    if final.is_symlink():
        raise InputError(
            f"output folder {final} is a symbolic link (to {os.readlink(final)}); give "
            f"the folder itself ({final.resolve()}), so that nothing is written elsewhere."
        )
    if final.exists() and not final.is_dir():
        raise InputError(
            f"output {final} exists and is not a folder; give a folder's path with -o (a new one, or one of voxfit's)."
        )
    if final.is_dir():
        remove_stale_partials(final)
        if alone:
            check_alone(final)
    if final.is_dir() and any(final.iterdir()) and not force:
        raise InputError(f"output folder {final} is not empty; choose another or pass `force` to overwrite.")
    return final


def _is_stale_partial(entry: Path) -> bool:
    """Only a hidden folder that voxfit made, on this host, by a process that no longer runs."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    try:
        marker = json.loads((entry / MARKER).read_text())
        if marker.get("host") != socket.gethostname():
            return False
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no marker, another host's, unreadable, or the process runs (or is not ours to signal)
    return False


def remove_stale_partials(folder: Path) -> None:
    """Hidden folders left by runs that were killed (SIGKILL, power loss) before they could clean up."""
    for entry in folder.glob(PARTIAL + "*"):
        if _is_stale_partial(entry):
            shutil.rmtree(entry, ignore_errors=True)


def check_alone(folder: Path, own: Path | None = None) -> None:
    """Refuse a folder that another run is writing into: a hidden folder (not `own`) whose marker names a process
    of this host, not this one, that runs voxfit. Two runs with --force into one folder each committed their files,
    and the folder held one's model.json beside the other's maps (a tester's). A marker of another host cannot be
    checked and does not block (a run killed on a cluster node would block the folder for good), nor does one whose
    process id now belongs to another program (ids are reused, in containers most)."""
    for entry in sorted(folder.glob(PARTIAL + "*")):
        if entry == own or entry.is_symlink() or not entry.is_dir() or _is_stale_partial(entry):
            continue
        try:
            marker = json.loads((entry / MARKER).read_text())
            pid, host = int(marker["pid"]), marker["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # (a hidden folder being made, or not voxfit's: its marker comes with it)
        if host != socket.gethostname() or pid == os.getpid() or not _runs_voxfit(pid):
            continue
        started = f", started {marker['started']}" if "started" in marker else ""
        raise InputError(
            f"another voxfit run (process {pid}{started}) is writing into {folder} (its {entry.name}); wait until it "
            "ends, or give another output folder (if no run is writing there, delete that hidden folder)."
        )


def _runs_voxfit(pid: int) -> bool:
    """Whether process `pid` runs voxfit (its command line names it), where the system tells (/proc); True where it
    does not."""
    if not Path("/proc/self/cmdline").exists():  # (no /proc: macOS; a live process of this host is taken as one)
        return True
    try:
        return b"voxfit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True
