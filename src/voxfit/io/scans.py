"""A run given as one name: a folder of 3-D scans, a quoted pattern, or a text file listing the scans.

SPM users hold a run as one 3-D file per scan, in a folder that usually also holds the other steps' files
(SPM's realignment writes ``mean*.img`` and ``rp_*.txt`` beside ``fM*.img``; smoothing adds ``sw*.img``).
So a run can be named three ways, each read in natural order (``scan_2`` before ``scan_10``):

- a folder whose image files form one series: the same name apart from their numbers
  (``fM00223_004.img``, ``fM00223_005.img``, ...); a folder holding several series is refused with their
  names, since which one is the run cannot be guessed;
- a quoted pattern, e.g. ``'run1/sw*.img'`` (expanded here, not by the shell, so that one pattern is one run);
- a text file (``.txt``) listing the scans, one path per line, relative to the list's folder; blank lines
  and lines starting with ``#`` are skipped.

A first-level run named by a folder or pattern whose scans are numbered with a gap (``vol_5`` missing from
``vol_1`` .. ``vol_40``), or a folder holding an Analyze header without its image, is refused (:func:`check_scan_run`):
every scan after a lost one would be fitted a TR early against the events. Scans left out on purpose are named in a
.txt list. A group's maps, numbered by subject, are not checked.

Zarr stores (folders named ``*.zarr``) are data sets, not folders of scans.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from ..exceptions import InputError

__all__ = ["check_scan_run", "expand_run", "file_identity", "natural_key"]

MAX_SCANS = 100_000  # scans in one run named by a folder, a pattern or a list (checked before any is opened)
_SCAN_SUFFIXES = (".nii", ".nii.gz", ".img", ".img.gz")
_PATTERN = re.compile(r"[*?\[]")


def file_identity(path) -> tuple | str:
    """What makes two names the same file: its device and inode (links and hard links included), else its
    resolved path (a name that does not exist yet)."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)


def natural_key(path: Path) -> tuple[list, str]:
    """Sort key that orders the numbers in a name by value: ``scan_2`` before ``scan_10``; names of equal numbers
    (``x00``, ``x0``) by their text. (The split's odd parts are its numbers: a digit it does not split at, as ``²``,
    stays text.)"""
    parts = re.split(r"(\d+)", str(path))
    return [int(part) if k % 2 else part for k, part in enumerate(parts)], str(path)


def _order_key(path) -> list:
    """The order of a scan's name: each folder of its path, then its name less the image suffix, with their
    numbers by value (``vol.nii`` before ``vol2.nii``, ``run/a.nii`` before ``run2/a.nii``)."""
    p = Path(path)
    return [natural_key(Path(part)) for part in p.parent.parts] + [natural_key(Path(_stem(p.name)))]


def shell_order_pair(paths) -> tuple[str, str] | None:
    """The first two of `paths` out of their numbers' order (:func:`_order_key`: folders and name, numbers by value)
    where the whole list is in exactly a shell's text order, an unquoted pattern's (sub-10/ before sub-2/); None
    where it is not, or is in their numbers' order too."""
    names = [str(p) for p in paths]
    if names != sorted(names):
        return None
    keys = [_order_key(p) for p in names]
    return next(((a, b) for a, b, ka, kb in zip(names, names[1:], keys, keys[1:]) if kb < ka), None)


def warn_out_of_order(paths, listed_in: Path | None = None) -> None:
    """Scans given out of the order of their numbers. One folder's scans in exactly a shell's text order (scan_10
    before scan_2: an unquoted pattern's) are refused, saying how to give them in order: fitted as given, the run's
    scans were shuffled against its design, which --quiet left unsaid (exit 0). Any other order (a .txt list,
    `listed_in`, in its writer's; names given one by one; files of several folders) is fitted as given, but said."""
    import warnings

    keys = [_order_key(p) for p in paths]
    one_folder = len({str(Path(p).parent) for p in paths}) == 1
    if listed_in is None and one_folder and (shell := shell_order_pair(paths)):
        raise InputError(
            f"the scans are in the text order a shell's pattern gives ({Path(shell[0]).name} comes before "
            f"{Path(shell[1]).name}), not their numbers': quote the pattern ('scans/*.nii') or give their folder, "
            "which voxfit orders by number, or list them in a .txt file in the order to fit."
        )
    for a, b, ka, kb in zip(paths, paths[1:], keys, keys[1:]):
        if kb < ka:
            pair = f"{Path(a).name} comes before {Path(b).name}" if one_folder else f"{a} comes before {b}"
            where = f" listed in {listed_in.name}" if listed_in is not None else ""
            warnings.warn(
                f"the scans{where} are not in the order of their numbers ({pair}); they are fitted in the order given.",
                stacklevel=3,
            )
            return


def _is_scan(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(_SCAN_SUFFIXES)


def _stem(name: str) -> str:
    """A scan's name less its image suffix (``run1.vol_3.img.gz``: ``run1.vol_3``)."""
    lower = name.lower()
    return next((name[: -len(s)] for s in (*_SCAN_SUFFIXES, ".hdr") if lower.endswith(s)), name)


def _series(name: str) -> str:
    return re.sub(r"\d+", "#", name)


def _from_folder(folder: Path) -> list[Path]:
    scans = sorted((p for p in folder.iterdir() if _is_scan(p)), key=natural_key)
    if not scans:
        raise InputError(f"{folder}: a folder given as a run holds no image files (.nii, .nii.gz, .img).")
    series: dict[str, list[Path]] = {}
    for p in scans:
        series.setdefault(_series(p.name), []).append(p)
    if len(series) > 1:
        biggest = sorted(series.values(), key=len, reverse=True)
        found = ", ".join(f"{v[0].name} ({len(v)} file{'s' if len(v) > 1 else ''})" for v in biggest[:4])
        found += f" and {len(biggest) - 4} more series" if len(biggest) > 4 else ""
        if len(biggest[0]) == 1:  # (one file a series: a folder of 4-D files, as FEAT's and SPM's hold them)
            largest = max(scans, key=lambda p: p.stat().st_size)
            raise InputError(
                f"{folder} holds several images, none a series of scans: {found}; give the run's own file, e.g. "
                f"{largest} (the largest), or name 3-D scans with a quoted pattern or a .txt list."
            )
        first = next(iter(sorted(series.values(), key=len, reverse=True)))[0].name
        prefix = re.match(r"\D*", first).group(0) or first
        raise InputError(
            f"{folder} holds several series of images: {found}; name the run's scans with a quoted "
            f"pattern such as '{folder / prefix}*{''.join(Path(first).suffixes)}', or a .txt list."
        )
    return scans


def check_scan_run(item, scans: list[Path]) -> None:
    """Refuse a first-level run named by `item` (a folder or a pattern; a .txt list names its scans on purpose)
    whose `scans` lack one: an Analyze header in the folder without its image, or a gap in the scans' numbers
    where the names differ in one number counted by ones (``vol_5`` missing from ``vol_1`` .. ``vol_40``). Every
    later scan would be fitted a TR early against the events. Not for a group's maps, whose numbers are
    subjects'."""
    if not isinstance(item, (str, Path)) or Path(item).suffix.lower() == ".txt":
        return
    folder = Path(item)
    if folder.is_dir():
        series = _series(_stem(scans[0].name))
        for h in sorted(folder.iterdir(), key=natural_key):
            stem, suffix = os.path.splitext(h.name)
            if suffix.lower() != ".hdr" or h.name.startswith(".") or _series(stem) != series:
                continue
            if not any(h.with_name(stem + s).exists() for s in (".img", ".img.gz", ".IMG")):
                raise InputError(
                    f"{h} is an Analyze header without its image (.img): the run would lose that scan and every "
                    "later scan its time; restore the image, or name the run's scans in a .txt list."
                )
    numbers = [re.findall(r"\d+", p.name) for p in scans]
    if len(scans) < 3 or len({len(n) for n in numbers}) != 1 or len({_series(p.name) for p in scans}) != 1:
        return
    varying = [k for k in range(len(numbers[0])) if len({n[k] for n in numbers}) > 1]
    if len(varying) != 1:
        return
    values = sorted(int(n[varying[0]]) for n in numbers)
    steps = [b - a for a, b in zip(values, values[1:])]
    if min(steps) != 1:  # (numbered by a time or another step: not checked)
        return
    missing = [v for a, b in zip(values, values[1:]) for v in range(a + 1, min(b, a + 6))]
    if missing:
        count = sum(b - a - 1 for a, b in zip(values, values[1:]))
        shown = ", ".join(map(str, missing[:5])) + (f" and {count - 5} more" if count > 5 else "")
        raise InputError(
            f"{item}: the scans are numbered {values[0]} to {values[-1]} without {shown}: a missing file would "
            "move every later scan's time; restore it, or name the scans in a .txt list if they were left out on "
            "purpose."
        )


def _from_pattern(pattern: str) -> list[Path]:
    names = glob.glob(pattern)
    if len(names) > MAX_SCANS:
        raise InputError(f"{pattern} matches {len(names):,} files; a run is at most {MAX_SCANS:,} scans.")
    images = {_stem(Path(p).name).lower() for p in names if _is_scan(Path(p))}
    # an Analyze pair named by its header ('scans/*.hdr', as SPM's file selector lists them), once: its .img too
    headers = [Path(p) for p in names if p.lower().endswith(".hdr") and _stem(Path(p).name).lower() not in images]
    scans = sorted([*(Path(p) for p in names if _is_scan(Path(p))), *headers], key=natural_key)
    if not scans:
        raise InputError(f"{pattern}: no image file matches this pattern.")
    return scans


def _one_volume(listed_in: Path, name: str) -> bool:
    """Whether `name` (a list's line, less SPM's ",1") is an image of one volume: its first volume is then the image
    itself. A 4-D file's first volume alone is not a run of it (SPM's selection of one frame). One header read, the
    first line's: the run's reader opens every scan after."""
    import nibabel as nib

    if not name.lower().endswith((*_SCAN_SUFFIXES, ".hdr")):
        return False
    image = Path(name) if Path(name).is_absolute() else listed_in.parent / name
    try:
        shape = nib.load(str(image)).shape
    except Exception:  # noqa: BLE001 (a file that is not there or not an image: refused as a line below)
        return False
    return len(shape) < 4 or shape[3] == 1


def _from_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # (a byte-order mark is not part of a name)
    except OSError as exc:
        raise InputError.from_os_error(exc, path, "list of scans") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot read this list of scans ({type(exc).__name__}).") from None
    if len(lines) > MAX_SCANS:
        raise InputError(f"{path} lists {len(lines):,} lines; a run is at most {MAX_SCANS:,} scans.")
    scans = []
    # SPM's lists of 3-D images (SPM.xY.P, spm_select's ExtFPList) name each by its first volume, "fMRI_0001.nii,1":
    # the image itself, unless a line names another volume or the first names a 4-D file's (volumes of a 4-D file,
    # refused below with what to give; a 4-D file named later is refused by the run's reader, as among 3-D scans)
    volumes = [
        None if not line.strip() or line.strip().startswith("#") else re.fullmatch(r"(.+),\s*(\d+)", line.strip())
        for line in lines
    ]
    named = [v for v in volumes if v is not None]
    firsts = bool(named) and all(int(v.group(2)) == 1 for v in named) and _one_volume(path, named[0].group(1))
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        volume = volumes[number - 1]
        if firsts and volume is not None and volume.group(1).lower().endswith((*_SCAN_SUFFIXES, ".hdr")):
            text = volume.group(1)
        if not text.lower().endswith((*_SCAN_SUFFIXES, ".hdr")):  # (an Analyze pair by its header, as positional)
            frame = re.fullmatch(r"(.+),\s*\d+", text)  # (SPM's file,N: the Nth volume of a 4-D file)
            hint = (
                f"; {text[:60]!r} is SPM's notation of a volume of a 4-D file: give the 4-D file itself "
                f"({Path(frame.group(1)).name}) as the run"
                if frame is not None and frame.group(1).lower().endswith(_SCAN_SUFFIXES)
                else f"; line {number} is {text[:60]!r}"
            )
            raise InputError(f"{path}: not a list of scans (a .txt input lists image files, one per line){hint}.")
        scan = Path(text) if Path(text).is_absolute() else path.parent / text
        if not scan.is_file():
            raise InputError(f"{path}, line {number}: {text} is not a file (paths are relative to the list's folder).")
        scans.append(scan)
    if not scans:
        raise InputError(f"{path}: the list of scans is empty.")
    return scans


def expand_run(item) -> list[Path] | None:
    """The scans of a run named by a folder, a pattern or a .txt list (see the module docstring); None when
    `item` is none of these (a file, or a Zarr store, read as it is)."""
    if not isinstance(item, (str, Path)):
        return None
    path = Path(item)
    if path.is_dir() and not path.name.lower().endswith(".zarr"):
        return _from_folder(path)
    if path.suffix.lower() == ".txt" and path.is_file():
        return _from_list(path)
    if not path.exists() and _PATTERN.search(str(item)) and "::" not in str(item):
        return _from_pattern(str(item))
    return None
