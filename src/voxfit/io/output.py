"""Output folders that never hold half a result: files are written under a hidden folder and moved in at the end."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ..exceptions import InputError

__all__ = ["OutputFolder", "sanitize_label", "stat_maps", "statmap_name", "write_stats"]


def sanitize_label(name: str, what: str = "contrast") -> str:
    """Letters and digits only (BIDS labels): a name like ``../../x`` cannot leave the output folder."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise InputError(f"{what} name {name!r} has no letter or digit; name it with letters and digits.")
    return label


def statmap_name(stat: str, extension: str, contrast: str | None = None, entity: str = "contrast",
                 desc: str | None = None) -> str:  # fmt: skip
    """BIDS-derivatives style: ``contrast-<label>_stat-<stat>[_desc-<desc>]_statmap<ext>`` (or without the
    contrast)."""
    prefix = f"{entity}-{contrast}_" if contrast is not None else ""
    return f"{prefix}stat-{stat}" + (f"_desc-{desc}" if desc else "") + f"_statmap{extension}"


_PARTIAL = ".voxfit-partial-"


def _remove_stale_partials(folder: Path) -> None:
    """Hidden folders left by runs that were killed (SIGKILL, power loss) before they could clean up."""
    for entry in folder.glob(_PARTIAL + "*"):
        try:
            pid = int(entry.name[len(_PARTIAL) :])
            os.kill(pid, 0)  # still running: leave it alone
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue


class OutputFolder:
    """``with OutputFolder(path, force) as out: out.path(name) ...; out.commit()``.

    Refuses a non-empty folder unless `force` (then same-named files are replaced, others left alone).
    Until ``commit()`` every file lives in a hidden folder inside `path`; leaving the block without
    committing (an error, Ctrl-C) removes it, and removes `path` too if this created it.
    """

    def __init__(self, path, force: bool = False):
        self.final = Path(path)
        if self.final.exists() and not self.final.is_dir():
            raise InputError(f"output {self.final} exists and is not a folder.")
        if self.final.is_dir():
            _remove_stale_partials(self.final)
        if self.final.is_dir() and any(self.final.iterdir()) and not force:
            raise InputError(f"output folder {self.final} is not empty; choose another or pass --force to overwrite.")
        self.force = force
        self.started = datetime.datetime.now().astimezone()
        self._clock = time.perf_counter()
        self._created = not self.final.exists()
        self._tmp: Path | None = None
        self._names: dict[str, None] = {}  # insertion-ordered; setdefault is atomic, so threads may add names

    def __enter__(self) -> OutputFolder:
        try:
            self.final.mkdir(parents=True, exist_ok=True)
            self._tmp = self.final / f"{_PARTIAL}{os.getpid()}"
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            self._cleanup()
            raise InputError(f"cannot write to output folder {self.final}: {exc.strerror or exc}.") from None
        return self

    def path(self, name: str) -> Path:
        """Where to write `name` now (inside the hidden folder); it appears in the output on commit."""
        if Path(name).name != name or name.startswith("."):
            raise InputError(f"invalid output file name {name!r}.")
        self._names.setdefault(name)
        return self._tmp / name

    def run_record(self, **steps: float) -> dict:
        """What model.json says of the run so far: start time, `steps` (seconds), seconds since this folder
        was opened, and the peak resident memory of the process (None where the system does not tell)."""
        return {"started": self.started.isoformat(timespec="seconds"), **{k: round(v, 3) for k, v in steps.items()},
                "elapsed_s": round(time.perf_counter() - self._clock, 3), "peak_memory_mib": peak_memory_mib()}  # fmt: skip

    def write_json(self, name: str, obj) -> None:
        self.path(name).write_text(json.dumps(obj, indent=2, default=str) + "\n")

    def commit(self) -> list[Path]:
        """Move every file into the output folder (same file system: each move is an atomic rename)."""
        done = []
        for name in self._names:
            os.replace(self._tmp / name, self.final / name)
            done.append(self.final / name)
        self._tmp.rmdir()
        self._tmp = None
        return done

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        if self._created and self.final.is_dir() and not any(self.final.iterdir()):
            self.final.rmdir()


def peak_memory_mib() -> float | None:
    """Peak resident memory of this process so far, in MiB (getrusage: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def stat_maps(stats, label: str, extension: str) -> list[tuple[str, object, list[str]]]:
    """The maps of one contrast as ``(file name, values, map names)``: effect, variance, t or F, p, z."""
    rows = [f"{label}[{i}]" for i in range(stats.weights.shape[0])] if stats.kind == "F" else [label]
    return [
        (statmap_name("effect", extension, label), stats.effect, rows),
        (statmap_name("variance", extension, label), stats.variance, rows),
        (statmap_name(stats.kind, extension, label), stats.stat, [f"{label} {stats.kind}"]),
        (statmap_name("p", extension, label), stats.p, [f"{label} p"]),
        (statmap_name("z", extension, label), stats.z, [f"{label} z"]),
    ]


def write_stats(stats, masker, folder, label: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write a contrast's maps (``Fit.contrast(...)``) into `folder` in the input's format and geometry.

    Files are named ``contrast-<label>_stat-<effect|variance|t|F|p|z>_statmap<ext>``; `label` defaults to
    the contrast's name, keeping letters and digits. Existing files are refused unless `overwrite`.
    """
    label = sanitize_label(stats.name if label is None else label)
    folder = Path(folder)
    maps = stat_maps(stats, label, masker.geometry.extension)
    existing = [name for name, _, _ in maps if (folder / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{folder / existing[0]} exists; pass overwrite=True to replace it.")
    with OutputFolder(folder, force=True) as out:
        for name, values, names in maps:
            masker.write(out.path(name), values, names)
        return out.commit()
