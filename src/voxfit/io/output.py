"""Output folders that never hold half a result: files are written under a hidden folder and moved in at the end."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import json
import os
import re
import secrets
import shutil
import stat
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from .._folders import MARKER as _MARKER
from .._folders import PARTIAL as _PARTIAL
from .._folders import check_alone, check_output_folder
from .._threads import STOP_REQUESTED, STOP_SIGNALS
from ..exceptions import DISK_FULL, InputError

__all__ = [
    "OutputFolder",
    "before_commit",
    "check_output_folder",
    "clusters_table_name",
    "disk_error",
    "exclusive_file",
    "make_folder",
    "missing_folders",
    "remove_made_folders",
    "sanitize_label",
    "signals_held",
    "stat_maps",
    "statmap_name",
    "write_file_atomically",
    "write_files_atomically",
    "write_stats",
]


MAX_LABEL = 100  # letters and digits of a label: its files' names (at most 255 bytes) hold entities and stat too


def sanitize_label(name: str, what: str = "contrast") -> str:
    """Letters and digits only (BIDS labels): a name like ``../../x`` cannot leave the output folder; at most
    MAX_LABEL of them (a contrast named in 300 letters failed as its maps were written, after the fit)."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise InputError(
            f"{what} name {name!r} has no ASCII letter or digit (a-z, A-Z, 0-9), of which its files' names are made "
            "(BIDS labels); give it one."
        )
    if len(label) > MAX_LABEL:
        raise InputError(
            f"{what} name {str(name)[:40]!r}... makes a label of {len(label)} letters and digits, of which its files' "
            f"names are made (at most 255 bytes each); give it a name of at most {MAX_LABEL}."
        )
    return label


def clusters_table_name(contrast: str, prefix: str = "") -> str:
    """``[<prefix>]contrast-<label>_clusters.tsv``: a contrast's table of clusters (voxfit group's, a study's group
    with its entities as `prefix`)."""
    return f"{prefix}contrast-{contrast}_clusters.tsv"


def statmap_name(
    stat: str, extension: str, contrast: str | None = None, entity: str = "contrast", desc: str | None = None
) -> str:
    """BIDS-derivatives style: ``contrast-<label>_stat-<stat>[_desc-<desc>]_statmap<ext>`` (or without the
    contrast)."""
    prefix = f"{entity}-{contrast}_" if contrast is not None else ""
    return f"{prefix}stat-{stat}" + (f"_desc-{desc}" if desc else "") + f"_statmap{extension}"


_BACKUP = ".replaced"  # inside a hidden folder: what the commit replaced, until it has succeeded
_BEFORE_COMMIT: contextvars.ContextVar[tuple] = contextvars.ContextVar("voxfit_before_commit", default=())
COMMITTED: list[Path] = []  # every folder committed in this process (the CLI tells an interrupt after one)


@contextlib.contextmanager
def before_commit(fn):
    """``with before_commit(fn):`` every :class:`OutputFolder` committed in the block first calls ``fn(out)``,
    which may add files with ``out.path(name)`` (the report of a run is written this way, so that maps and
    report appear together or not at all). Hooks of nested blocks run first."""
    token = _BEFORE_COMMIT.set(_BEFORE_COMMIT.get() + (fn,))
    try:
        yield
    finally:
        _BEFORE_COMMIT.reset(token)


_INPUTS: contextvars.ContextVar[tuple] = contextvars.ContextVar("voxfit_inputs", default=())


@contextlib.contextmanager
def inputs_of_run(paths):
    """``with inputs_of_run(paths):`` no output written in the block (an :class:`OutputFolder`'s files, a file of
    :func:`write_file_atomically`) may replace one of `paths`, the run's own inputs, even with ``--force``."""
    token = _INPUTS.set(_INPUTS.get() + tuple(str(p) for p in paths if isinstance(p, (str, os.PathLike))))
    try:
        yield
    finally:
        _INPUTS.reset(token)


def check_replaceable(dest: Path) -> None:
    """Refuse to replace `dest` when it is one of the run's inputs (see :func:`inputs_of_run`) or something other
    than a regular file or a link (a device, a pipe: ``-o /dev/null --force`` must not turn it into a file)."""
    try:
        st = os.lstat(dest)
    except OSError:
        return  # nothing there: nothing replaced
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputError(
            f"{dest} is not a regular file (a device, pipe or socket); voxfit writes only files: choose another output."
        )
    for path in _INPUTS.get():
        try:
            same = os.path.samefile(dest, path)
        except OSError:
            continue
        if same:
            raise InputError(
                f"{dest} is an input of this run; an output may not replace it, even with --force: "
                "choose another output folder or name."
            )


def disk_error(exc: BaseException, path) -> InputError | None:
    """A full disk (or quota) is bad input: the one-line error naming the device and the file being written."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL:
        return None
    return InputError.from_os_error(exc, path)


def exclusive_file(folder, name: str) -> tuple[int, Path]:
    """A new hidden file ``.<name>.<random>.partial`` in `folder`, created exclusively and never through a
    link (O_EXCL | O_NOFOLLOW; mode 0666 less the umask, as an ordinary file): ``(descriptor, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = Path(folder) / f".{name}.{secrets.token_hex(6)}.partial"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def check_not_folder(dest: Path, instead: str) -> None:
    """Refuse to write a file at `dest` where the user has a folder (a rename would fail, or replace it); `instead`:
    what to do else."""
    if dest.is_dir() and not dest.is_symlink():
        raise InputError(f"{dest} is a folder; voxfit writes a file of that name there. Move it, or {instead}.")


def write_file_atomically(target, write) -> Path:
    """``write(tmp_path)`` into an exclusive temporary beside `target`, then rename it onto `target` (which
    replaces a link named `target`, never the file it points to). Removes the temporary on any failure;
    a full disk becomes an :class:`InputError`."""
    return write_files_atomically({target: write})[0]


def write_files_atomically(writes: dict) -> list[Path]:
    """:func:`write_file_atomically` of several files that belong together (``{target: write}``: a design and its
    sidecar): every temporary written first, then all renamed in one step that a signal cannot split, so that
    an error or an interruption before the renames leaves every target as it was."""
    targets = [Path(t) for t in writes]
    for target in targets:  # (all checked before any is written: a rename onto a folder would fail after the first)
        check_replaceable(target)
        check_not_folder(target, "choose another name")
    made: list[Path] = []
    current = targets[0] if targets else None
    try:
        for target, write in zip(targets, writes.values()):
            current = target
            with signals_held():  # (a signal as a temporary is made is raised once it is recorded, then removed)
                fd, tmp = exclusive_file(target.parent, target.name)
                made.append(tmp)
                os.close(fd)
            write(tmp)
        with signals_held():
            for tmp, target in zip(made, targets):
                current = target
                os.replace(tmp, target)
    except BaseException as exc:
        for tmp in made:
            tmp.unlink(missing_ok=True)
        error = disk_error(exc, current)
        if error is not None:
            raise error from None
        raise
    return targets


def missing_folders(path) -> list[Path]:
    """The folders from `path` up that do not exist yet (deepest first): what creating `path` would make."""
    path = Path(path)
    missing = []
    for p in (path, *path.parents):
        if os.path.lexists(p):
            break
        missing.append(p)
    return missing


def make_folder(path, output=None) -> list[Path]:
    """Create folder `path` with its parents; returns the folders this made (deepest first), for
    :func:`remove_made_folders`. `output`: the output folder its errors name (default `path`)."""
    path = Path(path)
    made = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission, a full disk...
        remove_made_folders(made)
        raise folder_error(exc, path, output) from None
    return made


def folder_error(exc: OSError, path, output=None) -> InputError:
    """Why folder `path` cannot be made or written, in one line naming `output` (default `path`): a file on its
    way named (the system said "File exists" or "Not a directory"), a full disk, else the system's reason and
    what to do."""
    path = Path(path)
    output = path if output is None else output
    blocking = next((p for p in (path, *path.parents) if os.path.lexists(p) and not p.is_dir()), None)
    if blocking is not None:
        if not Path(output).is_absolute() and blocking.is_absolute():  # (named as the output folder is)
            blocking = Path(os.path.relpath(blocking))
        what = (
            f"a link to {os.readlink(blocking)}, which is not there"
            if blocking.is_symlink() and not blocking.exists()
            else "a file, not a folder"
        )
        return InputError(
            f"cannot write to output folder {output}: {blocking} is {what}; choose another output folder, or move "
            f"{'that link' if blocking.is_symlink() else 'that file'}."
        )
    return disk_error(exc, output) or InputError.from_os_error(exc, output, "cannot write to output folder")


def remove_made_folders(made) -> None:
    """Remove folders :func:`make_folder` made, deepest first, while they are empty (one already gone is passed)."""
    for p in made:
        try:
            p.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


class OutputFolder:
    """``with OutputFolder(path, force) as out: out.path(name) ...; out.commit()``.

    Refuses a non-empty folder unless `force` (then same-named files are replaced, each by an atomic rename,
    and the folder's other files left alone), and a folder that is a symbolic link. Until ``commit()`` every
    file lives in a hidden folder inside `path`, made with a random name (``mkdtemp``: exclusively, mode 0700)
    and holding a marker of this host and process; leaving the block without committing (an error, Ctrl-C)
    removes it, and the folders this created for `path`. A later run removes such a hidden folder only when
    its marker shows a process of this host that no longer runs. A full disk becomes an :class:`InputError`.
    With `alone` (a command's own folder, not a study's groups that its workers share) a folder another run is
    writing into is refused, before and once this one's hidden folder is made.
    """

    def __init__(self, path, force: bool = False, alone: bool = False):
        self.final = check_output_folder(path, force, alone)
        self.force, self.alone = force, alone
        self.started = datetime.datetime.now().astimezone()
        self._clock = time.perf_counter()
        self._made: list[Path] = []
        self._tmp: Path | None = None
        self._last: str | None = None
        self._names: dict[str, None] = {}  # insertion-ordered; setdefault is atomic, so threads may add names
        self._obsolete: set[str] = set()  # files of the folder this commit outdates (see drop)

    @property
    def staging(self) -> Path:
        """The hidden folder that holds the files until the commit."""
        if self._tmp is None:
            raise RuntimeError("the output folder is not open")
        return self._tmp

    def __enter__(self) -> OutputFolder:
        try:
            # (a signal while the folders are made, before they are recorded, would leave them: held until they
            # are, then raised here and cleaned up like any other error, since __exit__ runs only after this)
            with signals_held():
                self._made = make_folder(self.final)
                self._tmp = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=self.final))
            marker = {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started.isoformat()}
            (self._tmp / _MARKER).write_text(json.dumps(marker) + "\n")
            if self.alone:  # (again, once this run's own hidden folder is there: of two at once, neither goes on)
                check_alone(self.final, self._tmp)
        except OSError as exc:
            self._cleanup()
            raise folder_error(exc, self.final) from None
        except BaseException:
            self._cleanup()
            raise
        return self

    def path(self, name: str) -> Path:
        """Where to write `name` now (inside the hidden folder); it appears in the output on commit."""
        if Path(name).name != name or name.startswith(".") or name == _MARKER:
            raise InputError(f"invalid output file name {name!r}.")
        self._names.setdefault(name)
        self._last = name
        return self.staging / name

    def run_record(self, **steps: float) -> dict:
        """What model.json says of the run so far: start time, `steps` (seconds), seconds since this folder
        was opened, and the peak resident memory of the process (None where the system does not tell)."""
        return {
            "started": self.started.isoformat(timespec="seconds"),
            **{k: round(v, 3) for k, v in steps.items()},
            "elapsed_s": round(time.perf_counter() - self._clock, 3),
            "peak_memory_mib": peak_memory_mib(),
        }

    def write_json(self, name: str, obj) -> None:
        self.path(name).write_text(json.dumps(obj, indent=2, default=str) + "\n")

    def drop(self, *names: str) -> None:
        """Files of the folder that this commit makes obsolete, removed with the moves unless written again (files
        and links only; a link is removed, never followed): a report of earlier maps, where a rerun with --force
        writes none; the files an earlier version of what is committed wrote (a study's group rewritten)."""
        self._obsolete.update(names)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the files written so far (each :meth:`path` asked for)."""
        return tuple(self._names)

    def commit(self) -> list[Path]:
        """Run the :func:`before_commit` hooks, then move every file into the output folder: all of them or,
        if a move fails, none (the moved ones go back, the replaced ones are restored). Same file system:
        each move is an atomic rename; Ctrl-C waits until the moves are done or undone; the files :meth:`drop`
        names go with them. A stop signal the command line had (:data:`voxfit._threads.STOP_REQUESTED`) ends it here,
        in the main thread, where what it raised was lost on the way."""
        if STOP_REQUESTED.up and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        for hook in reversed(_BEFORE_COMMIT.get()):
            hook(self)
        missing = [n for n in self._names if not os.path.lexists(self.staging / n)]
        if missing:
            raise RuntimeError(f"{missing[0]} was named but not written")
        for name in self._names:  # a folder of the user's is never replaced by a file (nor removed)
            dest = self.final / name
            check_replaceable(dest)
            if not (self.staging / name).is_dir():
                check_not_folder(dest, "choose another output folder")
        with signals_held():
            done = self._move_all()
            for name in self._obsolete - set(self._names):
                old = self.final / name
                if Path(name).name == name and (old.is_symlink() or old.is_file()):
                    old.unlink(missing_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)  # (the marker, and what was replaced)
        self._tmp = None
        return done

    def _move_all(self) -> list[Path]:
        backup = self.staging / _BACKUP
        backup.mkdir()
        moved: list[str] = []
        kept: dict[str, bool] = {}  # name -> the old entry was moved aside (True) or hard-linked (False)
        current = ""
        try:
            for current in self._names:
                name = current
                src, dest = self.staging / name, self.final / name
                if os.path.lexists(dest):
                    if dest.is_symlink() or dest.is_dir() or src.is_dir():
                        os.rename(dest, backup / name)  # (a link is moved, never followed)
                        kept[name] = True
                    else:
                        try:  # the old file stays reachable for the undo, and is replaced in one rename
                            os.link(dest, backup / name)
                            kept[name] = False
                        except OSError:
                            pass
                os.replace(src, dest)
                moved.append(name)
        except BaseException as exc:
            for name in reversed(moved):
                try:
                    os.replace(self.final / name, self.staging / name)
                except OSError:
                    pass
            for name, aside in kept.items():
                try:
                    if aside or name in moved:
                        os.replace(backup / name, self.final / name)
                except OSError:
                    pass
            error = disk_error(exc, self.final / current)
            if error is not None:
                raise error from None
            raise
        COMMITTED.append(self.final)
        return [self.final / name for name in self._names]

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None:
            self._cleanup()
        error = disk_error(exc, self.final / self._last if self._last else self.final) if exc is not None else None
        if error is not None:
            raise error from None

    def _cleanup(self) -> None:
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
        remove_made_folders(self._made)
        self._made = []


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP (from the main thread) for a few steps: the renames of a commit, the making of
    the folders, the start of a thread that writes and its record (``voxfit.bids.study``). A handler that only
    notes them stands in meanwhile, and the previous handler is called for the first one noted once the steps
    are done. (Blocking them with the main thread's signal mask did not hold them: the kernel hands a signal
    sent to the process to any thread that does not block it, and Python then runs the handler in the main
    thread, inside the steps.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum, frame) -> None:
        noted.append(signum)

    # (a handler installed from C reads as None and cannot be put back from Python: that signal is not held)
    held = [s for s in STOP_SIGNALS if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, note) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if noted:
            handler = previous[noted[0]]
            if callable(handler):
                handler(noted[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(noted[0])


def peak_memory_mib() -> float | None:
    """Peak resident memory of this process so far, in MiB (getrusage: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


P_VALUE = ("p value", ())  # the NIfTI intent of a map of p values (``Geometry.write``'s `intent`)


def stat_intent(stats) -> tuple | None:
    """The NIfTI intent of a contrast's t or F map: its distribution and dof (``("t test", (dof,))``), the
    standard's way for a reader (AFNI's, for one) to turn the statistic into p; None where the dof vary over the
    voxels (AR models, mixed effects: the dof map beside it says them)."""
    import numpy as np

    dof = tuple(stats.dof) if stats.kind == "F" else (stats.dof,)
    if any(np.ndim(d) != 0 or not (np.isfinite(d) and d > 0) for d in dof):
        return None
    return ("f test" if stats.kind == "F" else "t test", tuple(float(d) for d in dof))


def contrast_maps(stats, label: str) -> list[tuple[str, object, list[str], tuple | None]]:
    """The maps of one contrast as ``(stat, values, map names, NIfTI intent)``: effect, variance, t or F, p, z."""
    rows = [f"{label}[{i}]" for i in range(stats.weights.shape[0])] if stats.kind == "F" else [label]
    return [
        ("effect", stats.effect, [f"{r} effect" for r in rows], None),
        ("variance", stats.variance, [f"{r} variance" for r in rows], None),
        (stats.kind, stats.stat, [f"{label} {stats.kind}"], stat_intent(stats)),
        ("p", stats.p, [f"{label} p"], P_VALUE),
        ("z", stats.z, [f"{label} z"], ("z score", ())),
    ]


def stat_maps(stats, label: str, extension: str) -> list[tuple[str, object, list[str], tuple | None]]:
    """The maps of one contrast as ``(file name, values, map names, NIfTI intent)`` (:func:`contrast_maps`)."""
    return [(statmap_name(stat, extension, label), *rest) for stat, *rest in contrast_maps(stats, label)]


def write_stats(stats, masker, folder, label: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write a contrast's maps (``Fit.contrast(...)``) into `folder` in the input's format and geometry.

    Files are named ``contrast-<label>_stat-<effect|variance|t|F|p|z>_statmap<ext>``; `label` defaults to
    the contrast's name, keeping letters and digits. Existing files are refused unless `overwrite`.
    """
    label = sanitize_label(stats.name if label is None else label)
    folder = Path(folder)
    maps = stat_maps(stats, label, masker.geometry.extension)
    existing = [name for name, *_ in maps if (folder / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{folder / existing[0]} exists; pass overwrite=True to replace it.")
    with OutputFolder(folder, force=True) as out:
        for name, values, names, intent in maps:
            masker.write(out.path(name), values, names, intent)
        return out.commit()
