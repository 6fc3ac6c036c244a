"""A BIDS dataset and its fMRIPrep derivatives as the runs to fit: pybids' layout, cached, and one
:class:`RunInput` per preprocessed BOLD run (a hemisphere of a surface run is a run of its own).

The cached index (below ``database``) is pybids' SQLite database, one per fingerprint of the dataset's files (each
file's path relative to its dataset, size and modification time in nanoseconds, over the raw dataset and every
derivatives folder): a study reuses the one of its dataset as it is now, so that an added, removed or rewritten
file is always seen. Studies into one output folder at once (a BIDS app's participant-level runs) share it: the
first builds it under an exclusive lock while the others wait, and each reads it under a shared lock; an index of
an older fingerprint is removed once no study reads it.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import errno
import fcntl
import fnmatch
import functools
import hashlib
import inspect
import json
import math
import numbers
import os
import re
import shutil
import threading
import time
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import is_number
from ..design.subjects import listed
from ..exceptions import InputError
from ..io import write_file_atomically

__all__ = [
    "ENTITIES",
    "RunInput",
    "dataset_stamp",
    "entity_label",
    "find_runs",
    "grid_name",
    "index",
    "index_in_use",
    "input_filters",
    "naming_file",
    "release_index",
    "short_entities",
    "value_text",
]

# BIDS entities a run keeps through every level, as pybids names them, with their short (file name) keys
ENTITIES = {  # (in BIDS's order of entities, which output names follow: hemi before space, res before den)
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "echo": "echo",
    "hemi": "hemi",
    "space": "space",
    "res": "res",
    "den": "den",
}
RAW = ("subject", "session", "task", "acquisition", "reconstruction", "direction", "run", "echo")
BOLD_EXTENSIONS = (".nii.gz", ".nii", ".func.gii", ".dtseries.nii")
_FINGERPRINT = "voxfit-fingerprint.txt"
_DATABASE_FILE = "layout_index.sqlite"  # pybids' file in its database_path
# the entities by which voxfit chooses runs and names their outputs: read from a folder above the dataset, each
# would be every file's (see _check_folders_above)
PATH_ENTITIES = ("subject", "session", "task", "acquisition", "run", "echo", "space", "desc", "hemi")
_LOCK_SUFFIX = ".lock"  # the lock of index folder <fingerprint>: <fingerprint>.lock beside it


@dataclass(frozen=True)
class RunInput:
    """One BOLD run to fit: its `entities` (pybids names, see :data:`ENTITIES`), the preprocessed `bold`, the
    brain `mask` (None: the automatic mask), the `confounds` TSV, the raw `events` TSV, the repetition time
    `tr` (s), the `slice_timing` (s, or None), the number of scans `n_scans` (from the header), the
    `problems` found (one sentence each; empty when the run can be fitted), `sidecars`, a digest of the raw
    BOLD's metadata as its sidecars give it with BIDS inheritance (a rerun compares it), and the preprocessed
    BOLD's `start_time` (see :attr:`slice_time_ref`)."""

    entities: tuple[tuple[str, object], ...]
    bold: Path
    mask: Path | None
    confounds: Path | None
    events: Path | None
    tr: float | None
    slice_timing: tuple[float, ...] | None
    n_scans: int
    problems: tuple[str, ...] = field(default=())
    sidecars: str = ""
    start_time: float | None = None  # the preprocessed BOLD's StartTime (s): slice-timing corrected to it
    raw_scans: int | None = None  # the raw BOLD's scans (its header), where it has other than `n_scans`

    @property
    def slice_time_ref(self) -> float | None:
        """The fraction of the TR at which the preprocessed scans are sampled: ``StartTime / tr`` where the
        derivatives' sidecar gives a StartTime (fMRIPrep's, after slice-timing correction), else None."""
        return None if self.start_time is None or not self.tr else self.start_time / self.tr

    @property
    def entity(self) -> dict:
        return dict(self.entities)

    @property
    def label(self) -> str:
        """The run's entities as a file name prefix, ``sub-01_ses-a_task-x_run-1_hemi-L``."""
        return short_entities(self.entity)


def short_entities(entities: dict, keep=ENTITIES) -> str:
    """``sub-01_[ses-a_]task-x_...`` of the `entities` (pybids names) in BIDS order, those of `keep` only."""
    return "_".join(f"{ENTITIES[k]}-{entities[k]}" for k in ENTITIES if k in keep and entities.get(k) is not None)


def value_text(value) -> str | None:
    """A table's value as its file writes it, whatever pandas made of it (an entity, a trial type): a number's
    text (2.0, read as a float beside an n/a, is "2"); None for a missing value (None, NaN)."""
    if value is None or (isinstance(value, numbers.Real) and value != value):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _bids():
    try:
        import bids
    except ImportError:
        raise InputError("voxfit bids needs pybids: pip install 'voxfit[bids]'.") from None
    _configs_committed_once()
    _entities_read_once()
    _files_read_once()
    _nearest_among_the_subjects_files()
    return bids


def _configs_committed_once() -> None:
    """pybids (0.16 to 0.22 at least) writes its configurations into each new index committing once per entity,
    and each commit expires every object of the session, which the next entity reloads: about 0.1 s of CPU for
    every layout built (the raw dataset's, and one per derivatives folder; an index of a 3-subject dataset and its
    derivatives took 0.59 s against 0.37 s once wrapped), 12% of the CPU of test_bids_study. Its
    ``ConnectionManager.reset_database`` is wrapped, once per process, to flush where it committed and commit
    once at its end: the same rows, in one transaction (rolled back where the method fails). A pybids whose method
    is not the one read here is left as it is."""
    from bids.layout import db

    def wrap(reset):
        def reset_database(self, init_args, config):
            session = self.session
            session.commit = session.flush  # (an attribute of this session alone, taken away below)
            try:
                reset(self, init_args, config)
            except BaseException:
                del session.commit
                session.rollback()  # (what was flushed, uncommitted, would hold SQLite's lock on the file)
                raise
            del session.commit
            session.commit()

        return reset_database

    _wrap_once(db.ConnectionManager, "reset_database", ["self", "init_args", "config"], wrap)


def _entities_read_once() -> None:
    """pybids (0.22 at least; its own "TODO: memoize results") reads a layout's entities anew at every
    ``get_entities`` call, and with ``metadata=False`` joins every file's tags to do it: ``get_nearest`` calls it
    for each run's events and confounds, so a study's loading grew with the square of its runs (28 ms a call for
    100 subjects x 2 runs, half of pybids' 26 s loading them). ``BIDSLayout.get_entities`` is wrapped, once per
    process, to keep each layout's answer per scope and filter (:func:`_read_once`). Each call gets its own dict
    of the same entities. A pybids whose method is not the one read here is left as it is."""
    from bids.layout import BIDSLayout

    def wrap(read):
        def get_entities(self, scope="all", metadata=None):
            found = _read_once(self, "_voxfit_entities", scope, (_frozen(scope), metadata), read, scope, metadata)
            return dict(found)

        return get_entities

    _wrap_once(BIDSLayout, "get_entities", ["self", "scope", "metadata"], wrap)


def _files_read_once() -> None:
    """pybids (0.22) queries its database at every ``get``: ``get_nearest`` gets every events file of the dataset
    for each run (twice: events, then physiological recordings), so that part of a study's loading grew with the
    square of its runs too (12 ms a call for 100 subjects x 2 runs). ``BIDSLayout.get`` is wrapped, once per
    process, to keep each layout's answer per query (:func:`_read_once`), for calls by keyword (pybids' own and
    voxfit's); each call gets its own list of the same files. A pybids whose method is not the one read here is
    left as it is."""
    from bids.layout import BIDSLayout

    def wrap(read):
        def get(self, *args, **filters):
            if args:  # (pybids' parameters given by position: read as pybids reads them)
                return read(self, *args, **filters)
            key = _query_key(filters)
            narrowed = getattr(_NARROWED, "files", None)
            if narrowed is not None and narrowed[0] is self and narrowed[1] == key:
                return list(narrowed[2])
            found = _read_once(self, "_voxfit_files", filters.get("scope", "all"), key, read, **filters)
            return list(found) if isinstance(found, list) else found

        return get

    parameters = ["self", "return_type", "target", "scope", "regex_search", "absolute_paths", "invalid_filters"]
    _wrap_once(BIDSLayout, "get", [*parameters, "filters"], wrap)


def _nearest_among_the_subjects_files() -> None:
    """pybids (0.22) finds each run's events (then its physiological recordings) with ``get_nearest(...,
    full_search=True)``, which reads the folder and entities of every such file of the dataset for each run: a
    study's loading grew with the square of its runs (26 s of thread time for 400 subjects x 2 runs). Under strict
    matching a file of another subject is never a run's, so ``BIDSLayout.get_nearest`` is wrapped, once per
    process, to hand pybids' own method, for a layout voxfit has built and a search for every strict match of a
    suffix (pybids' own calls), only the files its query gets of the run's subject and of none (the dataset's
    top-level tables), in the order pybids gets them (:data:`_NARROWED`, read by the wrapped ``get``): the same
    files found, in the same order along the run's folders (among folders off that path pybids' order is a set's,
    which varies from process to process). A pybids whose method is not the one read here is left as it is."""
    from bids.layout import BIDSLayout

    def wrap(nearest):
        def get_nearest(
            self, path, return_type="filename", strict=True, all_=False, ignore_strict_entities="extension",
            full_search=False, **filters,
        ):  # fmt: skip
            args = (self, path, return_type, strict, all_, ignore_strict_entities, full_search)
            ignored = ignore_strict_entities
            ignored = ignored if isinstance(ignored, (list, tuple)) else [ignored]
            # (all of them: the first alone is from the first folder holding any file gotten, even one it refuses;
            # a suffix: without one pybids asks for the path's own)
            every_match = strict and all_ and filters.get("suffix") and "subject" not in [*filters, *ignored]
            narrowed = _subjects_files(self, path, filters) if every_match else None
            if narrowed is None:
                return nearest(*args, **filters)
            outer = getattr(_NARROWED, "files", None)
            try:
                _NARROWED.files = (self, _query_key(filters), narrowed)
                return nearest(*args, **filters)
            finally:
                _NARROWED.files = outer

        return get_nearest

    parameters = ["self", "path", "return_type", "strict", "all_", "ignore_strict_entities", "full_search"]
    _wrap_once(BIDSLayout, "get_nearest", [*parameters, "filters"], wrap)


_NARROWED = threading.local()  # files (layout, query key, files): what this thread's get answers that query with


def _subjects_files(layout, path, filters: dict) -> list | None:
    """The files ``layout.get(**filters)`` gets of the subject `path` names (as pybids reads it: the subject
    entity's pattern in the absolute path) and of no subject, in that order; None where voxfit did not build the
    layout, the path names no subject, or a file's subject is not a plain label."""
    memo = layout.__dict__.get("_voxfit_subjects")
    subject = layout.get_entities(metadata=False).get("subject") if memo is not None else None
    found = subject.regex.search(str(Path(path).absolute())) if subject is not None else None
    if found is None:
        return None
    key = _scoped_key(layout, filters.get("scope", "all"), _query_key(filters))
    if key is None:
        return None
    if key not in memo:
        groups: dict = {}
        for k, f in enumerate(layout.get(**filters)):
            label = f.entities.get("subject")
            if not isinstance(label, (str, type(None))):
                groups = None
                break
            groups.setdefault(label, []).append((k, f))
        memo[key] = groups
    groups = memo[key]
    if groups is None:
        return None
    return [f for _, f in sorted(groups.get(found.group(1), []) + groups.get(None, []), key=lambda kf: kf[0])]


def _query_key(filters: dict) -> tuple:
    """A query of pybids' ``get`` by keyword as a key: its filters sorted, their values :func:`_frozen`."""
    return tuple(sorted((name, _frozen(value)) for name, value in filters.items()))


def _read_once(layout, memo: str, scope, key, read, /, *args, **kwargs):
    """``read(layout, *args, **kwargs)``, kept in the layout's dict `memo` under :func:`_scoped_key`, once voxfit
    has built the layout (:func:`_layout`: while pybids indexes it, its files and entities grow, the metadata's
    last). A layout being built or built elsewhere, or a key or scope pybids refuses, is read each time."""
    kept = layout.__dict__.get(memo)
    key = None if kept is None else _scoped_key(layout, scope, key)
    if key is None:
        return read(layout, *args, **kwargs)
    if key not in kept:
        kept[key] = read(layout, *args, **kwargs)
    return kept[key]


def _scoped_key(layout, scope, key) -> tuple | None:
    """`key` and the layouts then in `scope` (a derivatives folder added after is another scope); None for a key
    that cannot be hashed or a scope pybids refuses (its own error, then, from its own method)."""
    try:
        scoped = (key, tuple(map(id, layout._get_layouts_in_scope(scope))))
        hash(scoped)
    except (AttributeError, TypeError, ValueError):
        return None
    return scoped


def _frozen(value):
    """A query's value as a key: lists (pybids takes a list of scopes, suffixes...) as tuples, each value with its
    type (1, 1.0 and True are equal in Python, but pybids asks for a subject "1", "1.0" or "True")."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else (type(value), value)


def _wrap_once(owner, name: str, parameters: list[str], wrap) -> None:
    """pybids' method `owner.name` replaced by ``wrap(method)`` once per process (marked ``_voxfit_wrapped``,
    pybids' own as its ``__wrapped__``), where it takes `parameters`: a pybids whose method is another is left as
    it is."""
    method = getattr(owner, name, None)
    if method is None or getattr(method, "_voxfit_wrapped", False):
        return
    if list(inspect.signature(method).parameters) != parameters:
        return
    wrapped = functools.wraps(method)(wrap(method))
    wrapped._voxfit_wrapped = True
    setattr(owner, name, wrapped)


def _fingerprint(folders, exclude=(), broken: list[Path] | None = None) -> str:
    """A digest of (relative path, size, mtime_ns) of every file under `folders` (hidden entries and the
    folders `exclude` skipped), through links to folders (a subject's folder moved to scratch space and linked
    back: its files' changes were not seen, and a rerun kept its old maps), each real folder once. A DataLad
    dataset's files not retrieved (links to files that are not there; git-annex's pointer files, in its unlocked
    mode) are added to `broken`."""
    h = hashlib.sha256()
    skip = {os.path.realpath(e) for e in exclude}
    seen: set[str] = set()
    for root in folders:
        root = Path(root)
        for folder, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # (a link back up the tree, or a folder linked twice)
                dirs[:] = []
                continue
            seen.add(real)
            unread = _UNINDEXED if Path(folder) == root else ()  # (pybids never reads them: their changes no matter)
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and d not in unread and os.path.realpath(os.path.join(folder, d)) not in skip
            )
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                try:
                    st = path.stat()
                except OSError:
                    if broken is not None and path.is_symlink():
                        broken.append(path)
                    continue
                if broken is not None and st.st_size < 1024 and name.endswith(_TABLES) and _annex_pointer(path):
                    broken.append(path)
                h.update(f"{root}|{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _layout(bids, bids_dir: Path, **kwargs):
    """pybids' ``BIDSLayout``; a JSON sidecar it cannot decode is bad input (pybids raises an OSError naming the
    file, from the decoder's error; a file nested beyond Python's stack, the decoder's RecursionError)."""
    try:
        with warnings.catch_warnings():  # (fMRIPrep 1.x's description: nothing a user of its outputs can change)
            warnings.filterwarnings("ignore", message="The PipelineDescription field was superseded")
            layout = bids.BIDSLayout(str(bids_dir), **kwargs)
    except (OSError, ValueError, RecursionError) as exc:  # (ValueError: a JSON integer of more than 4300 digits)
        if isinstance(exc, OSError) and not isinstance(exc.__cause__, ValueError):
            raise
        what = " ".join(str(exc).split())[:300] if not isinstance(exc, RecursionError) else "a JSON file nests deeply"
        if "has already been added" in what:  # (two derivatives folders whose descriptions name one pipeline)
            raise InputError(
                f"two --derivatives folders hold one pipeline ({what}); give each pipeline's folder once, or give "
                "their dataset_description.json files different Names."
            ) from None
        raise InputError(f"{bids_dir}: pybids could not index the dataset ({what}); fix that JSON file.") from None
    for built in (layout, *getattr(layout, "derivatives", {}).values()):
        for memo in _MEMOS:  # (built: its entities and files read once per query, see _read_once)
            setattr(built, memo, {})
    return layout


# a built layout's answers kept (_read_once, _subjects_files), until release_index
_MEMOS = ("_voxfit_entities", "_voxfit_files", "_voxfit_subjects")


_UNINDEXED = ("code", "models", "sourcedata", "stimuli")  # a dataset's top folders pybids does not index
# sessions.json and scans.json (their columns' descriptions, Levels, Units): pybids 0.22 takes their entries for
# entities of the tables' variables and fails querying them (NotImplementedError: 'Dict' nodes), exit 1 at every
# Session node; voxfit reads no description of a column
_TABLE_SIDECARS = re.compile(r"/(?:[^/]*_)?(?:sessions|scans)\.json$")
_INDEX_RULES = "3"  # what the index leaves out, in the stamp: a cached index of other rules is built again
_TABLES = (".tsv", ".json", ".nii", ".nii.gz", ".gii", ".tsv.gz")  # the kinds of files a study reads


def _annex_pointer(path: Path) -> bool:
    """Whether a small file is git-annex's pointer to its content (an unlocked file not retrieved)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(15) == b"/annex/objects/"
    except OSError:
        return False


def dataset_stamp(bids_dir, derivatives=(), exclude=(), broken: list[Path] | None = None) -> str:
    """What the cached index is compared with: the fingerprint of every file of the raw dataset and the
    `derivatives` (the folders `exclude`, such as an output folder inside the dataset, left out), the dataset's
    .bidsignore and the folders' paths; links to files that are not there are added to `broken`."""
    folders = [Path(bids_dir), *(Path(d) for d in derivatives)]
    ignore = _bidsignore(Path(bids_dir))
    rules = [f"rules {_INDEX_RULES}", *folders, *ignore]
    return _fingerprint(folders, exclude, broken) + "\n" + "\n".join(map(str, rules))


def _bidsignore(bids_dir: Path) -> list[str]:
    """The patterns of the dataset's .bidsignore (gitignore's form: ``sub-03/``, ``*_physio.tsv``, ``extra/x``),
    which pybids 0.22 does not read."""
    try:
        text = (bids_dir / ".bidsignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _indexer(bids_dir: Path, derivatives: list[Path], broken):
    """pybids' indexer leaving out what it should not read: its own defaults (code, sourcedata, ...), the raw
    dataset's paths its .bidsignore names (a subject fMRIPrep was not run on was counted as failed runs) and the
    files a DataLad dataset has not retrieved (indexing a sidecar's metadata through one stopped the study,
    whichever subjects it chose). pybids gives one indexer to the dataset and its derivatives, and matches paths
    from each one's root: a path ignored is one of the raw dataset's that no derivatives folder has (a line
    ``*_mask.nii.gz`` for defacing masks would have hidden fMRIPrep's brain masks)."""
    from bids.layout.index import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    patterns = [*DEFAULT_LOCATIONS_TO_IGNORE, _TABLE_SIDECARS]
    for rel in _ignored_paths(bids_dir, _bidsignore(bids_dir)):
        theirs = [d / rel for d in derivatives if (d / rel).exists()]
        if not theirs:
            patterns.append(re.compile("^/" + re.escape(rel) + "(/|$)"))
        elif (bids_dir / rel).is_dir():  # (a folder the derivatives have too, figures alone: the raw files they lack)
            for folder, _, files in os.walk(bids_dir / rel, followlinks=True):
                for name in files:
                    inner = os.path.relpath(os.path.join(folder, name), bids_dir)
                    if not any((d / inner).exists() for d in derivatives):
                        patterns.append(re.compile("^/" + re.escape(inner) + "$"))
    # (pybids reads JSON sidecars as it indexes, and a subject's tables and preprocessed runs' headers as it loads
    # its variables: those not retrieved are left out, each by its path from its folder's top, and the runs they
    # belong to fail, see _unretrieved; a raw BOLD's data are never read, and it holds the raw sidecars' metadata)
    for path in broken:
        for root in (bids_dir, *derivatives):
            rel = os.path.relpath(path, root)
            read = path.name.endswith((".json", ".tsv", ".tsv.gz")) or root != bids_dir
            if read and not rel.startswith("..") and rel.startswith("sub-"):
                patterns.append(re.compile("^/" + re.escape(rel) + "$"))
    return BIDSLayoutIndexer(validate=False, ignore=patterns)


def _ignored_paths(bids_dir: Path, lines: list[str]) -> list[str]:
    """The paths of the raw dataset (relative, its folders' as whole) that .bidsignore `lines` name, read as
    gitignore reads them: a line with a slash inside is a path from the top (``*`` within one name, ``**`` any
    folders), one without names a file or folder at any depth, a trailing slash a folder only; the last line that
    matches a path decides, and a ``!`` line takes back what earlier lines named (``*_physio.tsv`` then
    ``!sub-01_physio.tsv``), except inside a folder left out (as in git); ``\\!`` and ``\\#`` begin names."""
    rules = [_rule(line) for line in lines]
    if not any(not negated for *_, negated in rules):
        return []
    if not any(negated for *_, negated in rules):
        # nothing to take back: "extra/**" leaves out the folder whole, not each of its files (one pattern each,
        # which pybids tests every path against: 4 x 3,000 files took an index 8.5 s, against 0.7 s)
        rules = [(s if folder else _whole(s), p, folder, n) for s, p, folder, n in rules]
    out, seen = [], set()
    for folder, dirs, files in os.walk(bids_dir, followlinks=True):  # (a subject's folder linked in: walked too)
        if os.path.realpath(folder) in seen:  # (a link back up the tree)
            dirs[:] = []
            continue
        seen.add(os.path.realpath(folder))
        base = Path(folder).relative_to(bids_dir).parts
        if not base:  # (the top folders pybids never indexes, and derivatives, are not the raw dataset's to hide)
            dirs[:] = [d for d in dirs if d not in (*_UNINDEXED, "derivatives")]
        for name, is_folder in [*((d, True) for d in dirs), *((f, False) for f in files)]:
            parts = (*base, name)
            last = next((rule for rule in reversed(rules) if _ignored(parts, rule, is_folder)), None)
            if last is not None and not last[-1]:
                out.append("/".join(parts))
                if is_folder:
                    dirs.remove(name)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return out


def _rule(line: str) -> tuple[list[str] | None, str, bool, bool]:
    """A .bidsignore line as (its steps from the top, or None for a name at any depth; its pattern; whether it
    takes folders only; whether it takes paths back, ``!``)."""
    negated = line.startswith("!")
    line = line[1:] if negated or line.startswith(("\\!", "\\#")) else line
    folder_only, pattern = line.endswith("/"), line.strip("/")
    return (pattern.split("/") if "/" in line.rstrip("/") else None, pattern, folder_only, negated)


def _whole(steps: list[str] | None) -> list[str] | None:
    """A rule's steps with a trailing ``**`` dropped: the folder itself, rather than everything inside it."""
    return steps[:-1] if steps and len(steps) > 1 and steps[-1] == "**" else steps


def _ignored(parts: tuple[str, ...], rule, is_folder: bool) -> bool:
    steps, pattern, folder_only, _ = rule
    if folder_only and not is_folder:
        return False
    if steps is None:
        return fnmatch.fnmatchcase(parts[-1], pattern)
    return _steps_match(list(parts), steps)


def _steps_match(parts: list[str], steps: list[str]) -> bool:
    """Whether path `parts` match gitignore `steps` from the top (``**`` any number of folders; a trailing ``**``
    everything inside, not the folder itself: ``extra/**`` then ``!extra/keep.tsv`` takes that file back)."""
    if not steps:
        return not parts
    if steps[0] == "**":
        if len(steps) == 1:
            return bool(parts)
        return any(_steps_match(parts[k:], steps[1:]) for k in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], steps[0]) and _steps_match(parts[1:], steps[1:])


def _folders_in(parent: Path) -> list[Path]:
    """The folders in `parent` (none where it cannot be listed)."""
    try:
        return [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return []


def index(bids_dir, derivatives=(), *, database=None, stamp: str | None = None, broken=()):
    """The pybids ``BIDSLayout`` of `bids_dir` with the `derivatives` folders (validate=False), cached in the
    folder `database` when given (see the module docstring for when the cache is reused; `stamp`: the
    :func:`dataset_stamp` already computed; `broken`: the links to files not there it found, left out)."""
    bids = _bids()
    bids_dir = Path(bids_dir)
    for folder, what in ((bids_dir, "BIDS dataset"), *((Path(d), "derivatives folder") for d in derivatives)):
        if folder.is_file():
            raise InputError(f"{what} {folder} is a file; give its folder.")
        if not folder.is_dir():  # (said as a folder without a description: a typo in its name was not said)
            near = difflib.get_close_matches(folder.name, [p.name for p in _folders_in(folder.parent)], 1, 0.75)
            raise InputError(
                f"{what} {folder} does not exist"
                + (f"; did you mean {folder.parent / near[0]}?" if near else "; check the path.")
            )
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(
            f"{bids_dir} is not a BIDS dataset (no dataset_description.json); give the raw dataset's root folder."
        )
    derivatives = [Path(d) for d in derivatives]
    for d in derivatives:
        if not (d / "dataset_description.json").is_file():  # (the folder above it: derivatives/fmriprep named)
            raise InputError(f"derivatives folder {d} has no dataset_description.json; {_give_fmriprep(d, '*')}")
        if os.path.realpath(d) == os.path.realpath(bids_dir):  # (its raw runs had "no preprocessed BOLD run")
            raise InputError(f"derivatives folder {d} is the raw dataset itself; {_give_fmriprep(d, 'derivatives/*')}")
    stamp = stamp or dataset_stamp(bids_dir, derivatives)
    # (pybids reads entities from whole paths: a dataset given as ../../ds from a folder sub-07/x would carry sub-07)
    bids_dir, derivatives = Path(os.path.abspath(bids_dir)), [Path(os.path.abspath(d)) for d in derivatives]
    _check_folders_above(bids, bids_dir, derivatives)
    kwargs = {"validate": False, "derivatives": [str(d) for d in derivatives] or False}
    if database is None:
        layout = _layout(bids, bids_dir, indexer=_indexer(bids_dir, derivatives, broken), **kwargs)
        layout._voxfit_unretrieved = tuple(broken)
        return layout
    name = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    database = Path(database)
    folder, marker = database / name, database / name / _FINGERPRINT
    database.mkdir(parents=True, exist_ok=True)
    # (the lock beside the folder, never removed: a study that opened it locks what the next one will)
    lock = open(database / f"{name}{_LOCK_SUFFIX}", "a")  # noqa: SIM115 (held until release_index)
    layout = None
    try:
        locking = _flock(lock, fcntl.LOCK_SH)
        while not (marker.is_file() and marker.read_text() == stamp):
            if locking:  # (built by another study meanwhile: its shared lock follows the build)
                _flock(lock, fcntl.LOCK_UN)
                if not _flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, wait=False):
                    time.sleep(0.05)
                    _flock(lock, fcntl.LOCK_SH)
                    continue
            if not (marker.is_file() and marker.read_text() == stamp):
                shutil.rmtree(folder, ignore_errors=True)  # (a build that did not finish)
                folder.mkdir()
                indexer = _indexer(bids_dir, derivatives, broken)  # (made for a build only: it walks the dataset)
                with _synced_once(folder):
                    layout = _layout(
                        bids, bids_dir, database_path=str(folder), reset_database=True, indexer=indexer, **kwargs
                    )
                write_file_atomically(marker, lambda tmp: Path(tmp).write_text(stamp))
            if locking:
                _flock(lock, fcntl.LOCK_SH)
        if layout is None:
            layout = _layout(bids, bids_dir, database_path=str(folder), reset_database=False, **kwargs)
    except BaseException:
        lock.close()
        raise
    layout._voxfit_index_lock = lock  # (see release_index)
    layout._voxfit_unretrieved = tuple(broken)  # (see _unretrieved)
    if locking:
        _remove_unread_indexes(database, keep=name)
    return layout


_BUILDING: set[str] = set()  # the index folders being built now (see _synced_once), their real paths
_BUILDING_LOCK = threading.Lock()


@contextlib.contextmanager
def _synced_once(folder: Path):
    """pybids builds its index committing about 80 times into its SQLite files (the dataset's, and one per
    derivatives folder below it: configurations, then files), and SQLite waits for the disk at each commit: 7 ms
    each on an ext4 disk others write to, up to half a second of a study (19 s of the BIDS layout tests' 64). While
    the index in `folder` is built, connections to the files below it neither sync nor keep their journal on disk;
    they are synced once, after the build. A build cut off (a crash, a power cut) has written no fingerprint beside
    it, so it is built again, never read. The connection listener is registered once and never removed (SQLAlchemy
    iterates its listeners unlocked: adding or removing one while another thread connects fails that connect)."""
    target = os.path.realpath(folder)
    _listen_for_builds()
    with _BUILDING_LOCK:
        _BUILDING.add(target)
    try:
        yield
    finally:
        with _BUILDING_LOCK:
            _BUILDING.discard(target)
    for database in Path(target).rglob(_DATABASE_FILE):
        fd = os.open(database, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _listen_for_builds() -> None:
    """SQLAlchemy's connect listener of :func:`_synced_once`, registered once per process."""
    import sqlalchemy

    with _BUILDING_LOCK:
        if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _unsynced_while_built):
            sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _unsynced_while_built)


def _unsynced_while_built(connection, _record) -> None:
    """A SQLite connection to a file below an index folder being built: no sync, its journal in memory."""
    with _BUILDING_LOCK:
        building = tuple(_BUILDING)
    if not building or type(connection).__module__ != "sqlite3":
        return
    for row in connection.execute("PRAGMA database_list"):
        path = os.path.realpath(row[2]) if row[2] else None
        if path and any(os.path.commonpath([path, folder]) == folder for folder in building):
            connection.execute("PRAGMA synchronous = OFF")
            connection.execute("PRAGMA journal_mode = MEMORY")
            return


def _give_fmriprep(folder: Path, below: str) -> str:
    """What to give for a derivatives folder that is not fMRIPrep's: the derivatives datasets in the folders
    `below` it (a glob: ``*``, ``derivatives/*``) named, where there are any."""
    inside = sorted(str(p.parent) for p in folder.glob(f"{below}/dataset_description.json"))
    named = f" ({listed(inside, 3)})" if inside else ""
    return f"give fMRIPrep's output folder{named}, the one holding its dataset_description.json and sub-*."


def _flock(lock, operation: int, wait: bool = True) -> bool:
    """flock(2) on the file `lock`: False where it is not taken, a non-blocking one held by another study, or a
    file system that locks no files (NFS without its lock daemon, some FUSE mounts: studies into one folder at
    once are then not kept apart, as before voxfit locked them)."""
    try:
        fcntl.flock(lock, operation)
    except BlockingIOError:
        if wait:
            raise
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        return False
    return True


def release_index(layout) -> None:
    """Let other studies rebuild or remove the index `layout` reads (its lock released: a study releases its own
    when it ends), and drop what kept the layout alive in a process that runs study after study: the answers kept
    for it (:func:`_read_once`) and pybids' own memos (:func:`_forget_pybids_memos`). None: nothing."""
    lock = getattr(layout, "_voxfit_index_lock", None)
    if lock is not None:
        lock.close()  # (closed twice: nothing)
    for built in (layout, *getattr(layout, "derivatives", {}).values()) if layout is not None else ():
        for memo in _MEMOS:
            built.__dict__.get(memo, {}).clear()
    if layout is not None:
        _forget_pybids_memos()


def _forget_pybids_memos() -> None:
    """Empty the memos of pybids' properties (``functools.lru_cache`` on the class, 128 entries each, pybids 0.15
    to 0.22: ``BIDSLayout.config``, ``ConnectionManager.layout_info``, ``BIDSFile.relpath``): each kept the last 128
    layouts alive, with their SQLite connections and SQLAlchemy's compiled queries: a process that had run 31
    small studies held 631,000 objects against 398,000 so, and each of the interpreter's full collections walked
    them all. The layouts still in use compute their entries again."""
    from bids.layout import db, layout, models

    for cls in (layout.BIDSLayout, db.ConnectionManager, models.BIDSFile):
        for attribute in vars(cls).values():
            clear = getattr(getattr(attribute, "fget", None), "cache_clear", None)
            if clear is not None:
                clear()


def _remove_unread_indexes(database: Path, keep: str) -> None:
    """The indexes of other fingerprints below `database` that no study reads now (their lock is free), built over
    a minute ago (a study that has just built one takes its shared lock in two steps: flock does not turn an
    exclusive lock into a shared one at once); their lock files stay (empty)."""
    for lock_path in database.glob(f"*{_LOCK_SUFFIX}"):
        name = lock_path.name.removesuffix(_LOCK_SUFFIX)
        marker = database / name / _FINGERPRINT
        try:
            if name == keep or marker.stat().st_mtime > time.time() - 60:
                continue
        except OSError:  # (no fingerprint: being built, or gone)
            continue
        with _unheld(lock_path) as free:
            if free:
                shutil.rmtree(database / name, ignore_errors=True)


def index_in_use(database: Path) -> bool:
    """Whether a study may read an index below `database` now: a lock held (and, where the file system locks
    nothing, any index there: a folder is then left, not removed)."""
    for lock_path in Path(database).glob(f"*{_LOCK_SUFFIX}"):
        with _unheld(lock_path) as free:
            if free is False:
                return True
    return False


@contextlib.contextmanager
def _unheld(lock_path: Path):
    """Within the block: True when no study holds the lock at `lock_path` (it is held exclusively meanwhile), False
    when one does or the file system locks nothing, None when it cannot be opened (removed meanwhile, or not
    ours)."""
    try:
        lock = open(lock_path, "a")  # noqa: SIM115 (closed below: the lock with it)
    except OSError:
        yield None
        return
    with lock:
        yield _flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, wait=False)


def _check_folders_above(bids, bids_dir: Path, derivatives: list[Path]) -> None:
    """Refuse a dataset whose folders above it pybids would read the entities voxfit chooses runs and names outputs
    by from (:data:`PATH_ENTITIES`; pybids matches its entity patterns against whole paths, the first match
    winning: a dataset kept in a folder ``ses-2`` has a session 2 in every file; pybids issue 595), and from a
    folder named as a datatype other than func (``motion``, ``beh``, ``anat``: no run is then functional, said as
    "No functional images that match criteria found", a tester's). Entities that choose nothing here (``den-`` in
    ``alden-lab``, ``model-``, a ``func`` folder) are left to pybids."""
    from bids.layout.models import Config

    for root, configs in ((bids_dir, ("bids",)), *((d, ("bids", "derivatives")) for d in derivatives)):
        above = str(root).rstrip(os.sep) + os.sep  # (the root's own name too: "ds" is none, "ses-2" would be)
        for config in configs:
            for entity in Config.load(config).entities.values():
                found = entity.regex.search(above) if entity.name in (*PATH_ENTITIES, "datatype") else None
                if found and not (entity.name == "datatype" and found.group(1) == "func"):
                    name = found.group(0).strip(os.sep + "_")
                    folder = next((part for part in root.parts if part == name), None) or next(
                        part for part in root.parts if name in part
                    )
                    raise InputError(
                        f"{root} lies below a folder named like a BIDS entity ({folder}): pybids would give every "
                        f"file of it {entity.name} {found.group(1)!r}; move the dataset, or rename that folder."
                    )


def _check_timing(bold, meta: dict) -> None:
    """The run's sidecars (`meta`: their values for `bold`, inherited ones included) give its RepetitionTime as a
    positive number of seconds and its SliceTiming as a list of numbers, where they give them: otherwise the whole
    study is bad input, as pybids divides by the repetition time of every run whose variables it loads."""
    tr, timing = meta.get("RepetitionTime"), meta.get("SliceTiming")
    if tr is not None and not (_number(tr) and tr > 0):
        raise InputError(f"{bold}: its sidecars give RepetitionTime {tr!r:.40}, not a positive number of seconds.")
    if timing is not None and not (isinstance(timing, list) and all(_number(t) for t in timing)):
        raise InputError(f"{bold}: its sidecars give SliceTiming {timing!r:.60}, not a list of times in seconds.")


def _number(value) -> bool:
    """A JSON number (not a boolean, nor text), finite as a float (an integer of 400 digits is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


# the runs' own space (fMRIPrep 24's --output-spaces run): BOLD without a space-, its brain mask space-run
NATIVE = "run"


def _check_task(layout, task: str) -> None:
    """Refuse a --task that no preprocessed run has, naming the tasks that do (a typo was blamed on --space, whose
    spaces were none of that task's)."""
    tasks = sorted(map(str, layout.get(return_type="id", target="task", suffix="bold", scope="derivatives")))
    if task in tasks or not tasks:
        return
    close = difflib.get_close_matches(task, tasks, 1)
    raise InputError(
        f"no preprocessed BOLD run of task {task!r} in the derivatives (their tasks: {listed(tasks)}); "
        + (f"did you mean --task {close[0]}?" if close else "check --task.")
    )


def _spaces(files) -> list[str]:
    """The spaces of runs `files`, :data:`NATIVE` for volumes named without a space (BIDS: the data's own)."""
    return sorted({f.entities.get("space") or NATIVE for f in files if f.entities.get("space") or _is_volume(f.path)})


def _native_named(spaces: list[str]) -> str:
    return ", ".join(f"{s} (the runs' own space, named without space-)" if s == NATIVE else s for s in spaces)


def find_runs(
    layout,
    *,
    task=None,
    space=None,
    desc="preproc",
    participant_label=(),
    sessions=None,
    entities=None,
    mask_entities=None,
    strict: bool = True,
) -> tuple[RunInput, ...]:
    """One :class:`RunInput` per preprocessed BOLD run of the derivatives (per hemisphere for GIFTI).

    task, space: filters (the default space: the one the derivatives have; refused, naming them, when they
    have several); desc: of preprocessed volumes (surface and CIFTI runs, which fMRIPrep writes without one,
    are taken with or without it); participant_label: subjects (``01`` or ``sub-01``); sessions: labels;
    entities: other entities' values ``{entity: [values]}`` (a model's Input.run, Input.acquisition...);
    mask_entities: the model's ``Options.Mask`` entities selecting the mask instead of fMRIPrep's brain mask.
    With `strict`, the first problem of a run (no events, no repetition time, confounds of another length)
    is raised as an InputError; otherwise it is kept in the run's ``problems``.
    """
    labels = [str(p).removeprefix("sub-") for p in participant_label or ()]
    filters = {"suffix": "bold", "extension": list(BOLD_EXTENSIONS), "scope": "derivatives"}
    if task is not None:
        filters["task"] = task
    if sessions:
        filters["session"] = list(sessions)
    candidates = [
        f
        for f in layout.get(**filters)
        if (f.entities.get("desc") == desc if _is_volume(f.path) else f.entities.get("desc") in (None, desc))
    ]
    candidates = _combined_echoes(_selected(candidates, entities, lambda f: f.entities))
    if not candidates and isinstance(task, str):
        _check_task(layout, task)
    space, qualifiers = _space_qualifiers(space)
    spaces = _spaces(candidates)
    if space is None:
        if len(spaces) > 1:
            raise InputError(
                f"the derivatives hold runs in several spaces ({_native_named(spaces)}); choose one with --space."
            )
        space = spaces[0] if spaces else None
    elif space not in spaces:
        raise InputError(
            f"no preprocessed BOLD run in space {space!r} in the derivatives (spaces found: "
            f"{_native_named(spaces) or 'none'})"
            f"{(not spaces and _old_fmriprep_names(layout)) or '; give one of them with --space'}."
        )
    space = None if space == NATIVE and NATIVE in spaces else space
    in_space = [f for f in candidates if f.entities.get("space") == space]
    chosen = _one_grid(in_space, space, qualifiers)
    hemis = {str(f.entities["hemi"]) for f in chosen if f.entities.get("hemi")}  # (of the whole dataset's runs)
    if labels:
        have = {f.entities["subject"] for f in chosen}
        absent = [p for p in labels if p not in have]
        if absent:
            of_sessions = f" of session {', '.join(map(str, sessions))} (the model's Input.session)" if sessions else ""
            raise InputError(
                f"participant label {absent[0]} has no preprocessed BOLD run"
                f"{f' of task {task}' if task else ''}{of_sessions}{f' in space {space}' if space else ''} in the "
                f"derivatives; check the label (subjects with runs: {', '.join(sorted(have)) or 'none'})."
            )
        chosen = [f for f in chosen if f.entities["subject"] in labels]
    if not chosen:
        what = ", ".join(f"{k} {v}" for k, v in (("task", task), ("space", space), ("desc", desc)) if v)
        chosen_by = f" and the model's Input ({json.dumps(entities)})" if entities else ""
        raise InputError(
            f"no preprocessed BOLD run in the derivatives for {what or 'these filters'}{chosen_by}"
            + (
                (not candidates and _old_fmriprep_names(layout))
                or f"; check --derivatives (fMRIPrep's output folder), --task, --space and --desc"
                f"{chosen_by and ', and Input'}"
            )
            + "."
        )
    files = _RunFiles(layout, mask_entities)
    runs = _apart(tuple(_run_input(layout, files, f) for f in sorted(chosen, key=lambda f: f.path)), files.roots)
    grid = (space, qualifiers, [f for f in in_space if f not in chosen])  # (a run at another resolution is said)
    runs += _unprocessed(layout, chosen, task, grid, desc, labels, sessions, entities) + _lost_hemispheres(runs, hemis)
    if strict:
        for r in runs:
            if r.problems:
                raise InputError(r.problems[0])
    return runs


# what pybids tells a run's variables apart by (and the hemisphere of a GIFTI run, which voxfit fits alone)
_PYBIDS_RUN_KEYS = ("subject", "session", "task", "run", "hemi")


def _apart(runs: tuple[RunInput, ...], roots=()) -> tuple[RunInput, ...]:
    """The runs, each of those that share subject, session, task and run with another (told apart by acq-, rec-,
    dir- or echo-) with a problem: pybids keeps one set of events and confounds per subject, session, task and run,
    so the others' would be lost, or taken from the wrong run's tables."""
    shared: dict[tuple, list[RunInput]] = {}
    for r in runs:
        shared.setdefault(tuple(str(r.entity.get(k)) for k in _PYBIDS_RUN_KEYS), []).append(r)
    out = []
    for r in runs:
        others = shared[tuple(str(r.entity.get(k)) for k in _PYBIDS_RUN_KEYS)]
        if len(others) == 1:
            out.append(r)
            continue
        apart = [k for k in ENTITIES if len({str(o.entity.get(k)) for o in others}) > 1]
        if apart:
            named = sorted("_".join(f"{ENTITIES[k]}-{o.entity.get(k)}" for k in apart) for o in others)
            problem = (
                f"{short_entities(r.entity, _PYBIDS_RUN_KEYS)}: runs {listed(named)} differ only by "
                f"{'/'.join(ENTITIES[k] + '-' for k in apart)}, which BIDS Stats Models (pybids) do not tell runs "
                "apart by: their events would be lost or mixed up; give them distinct run- numbers, or keep one of "
                "them in the dataset (a study each)."
            )
        elif len({o.bold.name for o in others}) < len(others):  # (one name in two folders)
            paths = [str(o.bold) for o in others]
            problem = f"{listed(sorted(paths), 3)} are one run: keep one ({_why_several(paths, roots)})."
        elif len({o.bold.name.split(".")[0] for o in others}) == 1:  # (run.nii beside run.nii.gz)
            problem = (
                f"{listed(sorted(o.bold.name for o in others))} are the same run, saved twice (as .nii and as "
                ".nii.gz?); keep one of them in the derivatives."
            )
        else:  # (told apart by a part of their names that pybids does not read, as fMRIPrep's cohort-)
            problem = (
                f"{listed(sorted(o.bold.name for o in others))} are one run to pybids: they differ in a part of "
                "their names it does not read (as cohort-); keep one of them in the derivatives (a study each)."
            )
        out.append(dataclasses.replace(r, problems=(*r.problems, problem)))
    return tuple(out)


def _lost_hemispheres(runs: tuple[RunInput, ...], hemis: set[str]) -> tuple[RunInput, ...]:
    """A run (with its problem) for each hemisphere of `hemis` (those of the dataset's runs, whoever is chosen) a
    GIFTI run lacks: fMRIPrep writes both, and a subject's hemisphere fitted from fewer runs than the other, or
    a subject fitted alone with one hemisphere, was said nowhere."""
    have: dict[tuple, dict[str, RunInput]] = {}
    for r in runs:
        if r.entity.get("hemi") is not None:
            key = tuple((k, v) for k, v in r.entities if k != "hemi")
            have.setdefault(key, {})[str(r.entity["hemi"])] = r
    out = []
    for key, found in have.items():
        for hemi in sorted(hemis - set(found)):
            r = next(iter(found.values()))
            bold = r.bold.with_name(r.bold.name.replace(f"hemi-{r.entity['hemi']}", f"hemi-{hemi}"))
            problem = (
                f"{bold}: this hemisphere of the run is missing from the derivatives (its other one, "
                f"{r.bold.name}, is there); rerun fMRIPrep for sub-{r.entity['subject']}, or leave the subject "
                "out with --participant-label."
            )
            entities = tuple(sorted({**dict(key), "hemi": hemi}.items(), key=lambda kv: list(ENTITIES).index(kv[0])))
            out.append(RunInput(entities, bold, None, None, None, None, None, 0, (problem,)))
    return tuple(out)


def _old_fmriprep_names(layout) -> str:
    """What to do where the derivatives hold runs named as fMRIPrep named them before BIDS Derivatives reached its
    outputs: surface runs before 20.2 (``..._space-fsaverage5_hemi-L.func.gii``, no ``_bold``: not a BOLD run to a
    BIDS query), or every output before 1.2 (``..._bold_space-MNI152NLin2009cAsym_preproc.nii.gz``); else ''."""
    files = [os.path.basename(f) for f in layout.get(scope="derivatives", return_type="filename")]
    surfaces = sorted(f for f in files if re.search(r"_hemi-[LR]\.func\.gii$", f))
    volumes = sorted(f for f in files if re.search(r"_bold_space-[^_]+_preproc\.nii(?:\.gz)?$", f))
    if volumes:
        return (
            f"; the derivatives name their runs as fMRIPrep did before 1.2 ({listed(volumes, 1)}): voxfit reads BIDS "
            "Derivatives' names (..._space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz, "
            "..._desc-confounds_timeseries.tsv); rerun fMRIPrep 1.2 or later"
        )
    if surfaces:
        return (
            f"; the derivatives name their surface runs as fMRIPrep did before 20.2, without _bold "
            f"({listed(surfaces, 1)}): voxfit reads BIDS's names (..._hemi-L_bold.func.gii); rename them so, or rerun "
            "fMRIPrep 20.2 or later"
        )
    return ""


def _space_qualifiers(space: str | None) -> tuple[str | None, dict[str, str]]:
    """fMRIPrep's ``--output-spaces`` notation: ``MNI152NLin2009cAsym:res-2`` is the space and ``{"res": "2"}``
    (``res`` and ``den`` qualifiers, ``res-native`` for files without one; another is refused)."""
    if space is None or ":" not in space:
        return space, {}
    name, *parts = space.split(":")
    qualifiers = {}
    for part in parts:
        key, _, value = part.partition("-")
        if key not in ("res", "den") or not value:
            raise InputError(
                f"--space {space}: {part!r} is not a resolution or density qualifier; write the space as fMRIPrep "
                "names it, e.g. MNI152NLin2009cAsym:res-2 or fsLR:den-91k."
            )
        qualifiers[key] = value
    return name, qualifiers


def _combined_echoes(chosen: list) -> list:
    """The runs of `chosen` less each echo of a multi-echo run whose echoes fMRIPrep also combined into one run, in
    any space (``--me-output-echos`` writes each echo, in the run's own space, for tedana and the like: the combined
    run is the one fitted). Runs are matched by their raw entities (fMRIPrep's outputs differ in no other)."""
    combined = {_raw_key({**f.entities, "echo": None}) for f in chosen if f.entities.get("echo") is None}
    return [
        f for f in chosen if f.entities.get("echo") is None or _raw_key({**f.entities, "echo": None}) not in combined
    ]


def _one_grid(chosen: list, space: str | None, qualifiers: dict[str, str]) -> list:
    """The runs of `chosen` at the resolution and density `qualifiers` ask for; refused when a run is there at
    several of them and nothing says which (fMRIPrep writes one file per ``--output-spaces`` entry)."""
    at = [f for f in chosen if all(str(f.entities.get(k, "native")) == v for k, v in qualifiers.items())]
    if chosen and not at:  # (the space's runs are all at other resolutions or densities: said as the grids found)
        found = sorted({grid_name(space, f.entities) for f in chosen})
        if any(":res-" in g for g in found):  # (a volume's files without res- beside others: res-native, as --space)
            found = sorted(g if ":res-" in g else g.replace(f"{space}", f"{space}:res-native", 1) for g in found)
        raise InputError(
            f"no preprocessed BOLD run of space {grid_name(space, qualifiers)} in the derivatives: its runs are at "
            f"{listed(found)}; give one of them with --space."
        )
    chosen = at
    grids: dict[tuple, set] = {}
    for f in chosen:
        grids.setdefault(_raw_key(f.entities), set()).add((f.entities.get("res"), f.entities.get("den")))
    several = next((g for g in grids.values() if len(g) > 1), None)
    if several is None:
        return chosen
    options = sorted(  # (res-native: a volume's files without res-; a surface's have a den- alone)
        f"{space}:"
        + ":".join(f"{k}-{v or 'native'}" for k, v in zip(("res", "den"), g) if v or (k == "res" and not g[1]))
        for g in several
    )
    raise InputError(
        f"the derivatives hold the runs of space {space} at several resolutions or densities ({', '.join(options)}); "
        f"choose one with --space, e.g. --space {options[-1]}."
    )


def _unretrieved(layout, raw: dict, bold: dict) -> str | None:
    """The problem of a run one of whose files a DataLad dataset has not retrieved (a link to no file, a git-annex
    pointer), among those the study reads of it: its events, its raw sidecars (inherited ones too), the
    preprocessed BOLD and sidecar of its `bold` entities (space, res, den, hemi, desc), its confounds and brain
    mask; or None. The raw BOLD's data, other spaces', resolutions' and descs' files are not read."""
    for path in getattr(layout, "_voxfit_unretrieved", ()):
        if _read_by_run(path.name, raw, bold):
            return (
                f"{path}: this file of the run is not there (a link to no file, or a git-annex pointer: a DataLad "
                "dataset's file not retrieved?); retrieve it (datalad get), or leave the subject out "
                "(--participant-label)."
            )
    return None


def _read_by_run(name: str, raw: dict, bold: dict) -> bool:
    stem, _, extension = name.partition(".")
    *parts, suffix = stem.split("_")
    pairs = {}
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep:
            return False
        pairs[key] = entity_label(value)
    run = {ENTITIES[k]: entity_label(v) for k, v in raw.items()}
    combined = {k: v for k, v in run.items() if k != "echo"}  # (fMRIPrep's files of a multi-echo run: no echo)
    derived = {k: pairs.pop(k) for k in ("space", "res", "den", "hemi", "desc") if k in pairs}
    if suffix == "events":
        return pairs in (run, combined)
    if suffix == "bold" and not derived:  # (the raw run's sidecars, inherited ones too; not its data)
        return extension == "json" and pairs.items() <= run.items()
    if pairs != combined:
        return False
    wanted = {k: entity_label(bold[k]) for k in ("space", "res", "den", "hemi") if bold.get(k) is not None}
    same_grid = all(derived.get(k) == v for k, v in wanted.items() if k != "hemi" or suffix == "bold")
    if suffix in ("timeseries", "regressors"):
        return derived.get("desc") == "confounds"
    if suffix == "bold":
        return same_grid and derived.get("desc") in (None, bold.get("desc"))
    return suffix == "mask" and derived.get("desc") == "brain" and same_grid


def entity_label(value) -> str:
    """An entity's value as a label to compare, leading zeros of a number aside (run-01 is run 1, as pybids reads
    it)."""
    text = str(value)
    return str(int(text)) if text.isdigit() else text


def _unprocessed(layout, chosen, task, grid, desc, labels, sessions, wanted=None) -> tuple[RunInput, ...]:
    """A run (with its problem) for each raw BOLD run of the chosen task, subjects, sessions and `wanted` entities
    (:func:`find_runs`' `entities`) that has no preprocessed run among `chosen` (matched by subject, session, task,
    acquisition and run: fMRIPrep combines echoes; run numbers as numbers, as pybids matches them: fMRIPrep 20.2
    and 21 named a raw run-01 run-1), e.g. a subject fMRIPrep failed on. `grid`: the space, its resolution and
    density qualifiers, and the space's runs at other ones (a run there is named)."""

    def key(entities) -> tuple:
        return tuple(_entity_text(k, entities.get(k)) for k in ("subject", "session", "task", "acquisition", "run"))

    done = {key(f.entities) for f in chosen}
    space, qualifiers, elsewhere = grid
    other_grids = {key(f.entities): grid_name(space, f.entities) for f in elsewhere}
    filters = {"scope": "raw", "suffix": "bold", "extension": [".nii.gz", ".nii"]}
    for name, value in (("task", task), ("subject", list(labels) or None), ("session", list(sessions or ()) or None)):
        if value is not None:
            filters[name] = value
    out = []
    raw = [(f, f.get_entities()) for f in layout.get(**filters)]  # (a raw file's entities ask the index: once)
    for f, ent in sorted(_selected(raw, wanted, lambda pair: pair[1]), key=lambda pair: pair[0].path):
        if key(ent) in done:
            continue
        entities = tuple((k, ent[k]) for k in RAW if ent.get(k) is not None)
        other = other_grids.get(key(ent))
        asked = grid_name(space, qualifiers)
        problem = _unretrieved(layout, dict(entities), {"space": space, "desc": desc}) or (
            f"{f.path}: this raw run has no preprocessed BOLD run in the derivatives"
            + (
                f" at {asked}, only at {other}; rerun fMRIPrep for sub-{ent['subject']} with --output-spaces "
                f"{asked}, or leave the subject out with --participant-label."
                if other is not None
                else f"{f' (space {space}, desc {desc})' if space else ''}; rerun fMRIPrep for sub-{ent['subject']}, "
                "or leave the subject out with --participant-label."
            )
        )
        out.append(RunInput(entities, Path(f.path), None, None, None, None, None, 0, (problem,)))
    return tuple(out)


def grid_name(space, entities: dict) -> str:
    """fMRIPrep's name of a space at a resolution and density (``MNI152NLin2009cAsym:res-2``), from `entities`
    (a file's, or --space's qualifiers)."""
    return ":".join([str(space), *(f"{k}-{entities[k]}" for k in ("res", "den") if k in entities)])


def _selected(files: list, entities: dict | None, entities_of) -> list:
    """The `files` whose entities (``entities_of(file)``) hold one of the values `entities` lists for each entity
    that some of the files carry: an entity none of them has is no filter of theirs (fMRIPrep's outputs carry no
    echo, raw files no space or desc: Input.echo would have left no preprocessed run, Input.space no raw one to
    tell unprocessed). Index entities (run, echo...) compare as numbers: Input.run 1 is run-01."""
    if not entities:
        return list(files)
    found = [(f, entities_of(f)) for f in files]  # (each file's entities read once: a raw file's ask the index)
    wanted = {
        k: {_entity_text(k, v) for v in values}
        for k, values in entities.items()
        if any(e.get(k) is not None for _, e in found)
    }
    return [f for f, e in found if all(_entity_text(k, e.get(k)) in w for k, w in wanted.items())]


_INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "chunk"})  # (BIDS' index entities: numbers; labels are not)


def _entity_text(entity: str, value) -> str | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return None if value is None else entity_label(value) if entity in _INDEX_ENTITIES else str(value)


def input_filters(layout, model_input: dict | None, *, task=None, participant_label=()) -> dict:
    """The runs a model's ``Input`` (pybids entity names) selects, as :func:`find_runs`' ``task``,
    ``participant_label``, ``sessions`` and ``entities`` (the others: run, acquisition...; combined with the
    command line's `task` and `participant_label`); a value of ``Input`` that the dataset does not have is refused,
    naming the entity and the values it has. (Input.run was checked and not used: the runs it left out were fitted
    without variables, each a failure saying "check its events.tsv".)"""
    # each entity's values as a list (a value alone, as the specification allows it), entities of no value left out
    model_input = {k: (v if isinstance(v, list) else [v]) for k, v in (model_input or {}).items() if v is not None}
    for entity, values in model_input.items():
        try:
            have = {str(v) for v in layout.get(return_type="id", target=entity, suffix="bold")}  # (bold only: fast)
        except (ValueError, KeyError, TypeError):
            have = set()
        absent = [
            v
            for v in values
            if v is not None and _entity_text(entity, v) not in {_entity_text(entity, h) for h in have}
        ]
        if absent:
            raise InputError(
                f"the model's Input names {entity} {absent[0]!r}, which the dataset does not have ({entity}: "
                f"{', '.join(sorted(have)) or 'none'}); fix Input.{entity} in the model."
            )
    tasks = [str(t) for t in model_input["task"]] if "task" in model_input else None
    if task is not None and tasks is not None and task not in tasks:
        raise InputError(f"--task {task} is not among the model's Input.task ({', '.join(tasks)}); drop one of them.")
    labels = [str(p).removeprefix("sub-") for p in participant_label or ()]
    if "subject" in model_input:
        subjects = [str(s) for s in model_input["subject"]]
        outside = [p for p in labels if p not in subjects]
        if outside:
            raise InputError(
                f"participant label {outside[0]} is not among the model's Input.subject ({', '.join(subjects)}); "
                "drop it or change the model's Input."
            )
        labels = labels or subjects
    others = {k: [v for v in values if v is not None] for k, values in model_input.items()}
    return {
        "entities": {k: v for k, v in others.items() if v and k not in ("task", "subject", "session")} or None,
        "task": task if task is not None else (tasks[0] if tasks and len(tasks) == 1 else tasks),
        "participant_label": tuple(labels),
        "sessions": [str(x) for x in model_input["session"]] if "session" in model_input else None,
    }


def _is_volume(path) -> bool:
    return str(path).endswith((".nii.gz", ".nii")) and not str(path).endswith(".dtseries.nii")


class _RunFiles:
    """The raw BOLD runs, events tables, confounds tables and masks of the dataset, each listed by one query of
    the index and looked up by a run's raw entities (an entity the run lacks must be absent from the file too).
    A query per run and kind took 25 ms in pybids' database: 4 s for 40 runs, minutes for a large study."""

    def __init__(self, layout, mask_entities):
        self.mask_given = dict(mask_entities or {})  # (the model's Options.Mask: a run it finds nothing for fails)
        want = dict(mask_entities or {"desc": "brain"})
        want.setdefault("suffix", "mask")
        queries = {
            "raw BOLD": {"scope": "raw", "suffix": "bold", "extension": [".nii.gz", ".nii"]},
            "events files": {"scope": "raw", "suffix": "events", "extension": ".tsv"},
            "confounds tables": {
                "scope": "derivatives",
                "suffix": ["timeseries", "regressors"],  # (fMRIPrep 1.2 to 20.1: _regressors)
                "desc": "confounds",
                "extension": ".tsv",
            },
            "masks": {"scope": "derivatives", "extension": [".nii.gz", ".nii"], **want},
        }
        self.by_key: dict[str, dict[tuple, list]] = {}
        for what, query in queries.items():
            table: dict[tuple, list] = {}
            for f in layout.get(**query):
                entities = f.get_entities()
                table.setdefault(_raw_key(entities), []).append((f.path, entities))
            self.by_key[what] = table
        self.root = Path(layout.root)
        self.roots = [Path(d.root) for d in getattr(layout, "derivatives", {}).values()]  # (the derivatives folders)
        # the events files by task and subject (None: of every subject), where each run looks
        self.events_of: dict[tuple, dict[tuple, list]] = {}
        for key, items in self.by_key["events files"].items():
            self.events_of.setdefault((key[RAW.index("task")], key[RAW.index("subject")]), {})[key] = items

    def one(self, what: str, entities: dict, bold, **also) -> Path | None:
        """The file of kind `what` with the run's raw `entities` and the values `also` (None: absent), or None;
        several are refused."""
        found = [
            path
            for path, ent in self.by_key[what].get(_raw_key(entities), ())
            if all(ent.get(k) == v for k, v in also.items())
        ]
        return _at_most_one(found, f"several {what} match {bold}", _why_several(found, self.roots))

    def events(self, entities: dict, bold) -> Path | None:
        """The run's events file: its own (the run's raw entities), or the one BIDS's inheritance principle gives
        it, in the run's folder or one above it: a top-level ``task-x_events.tsv``, a subject's without ``run-``,
        one without the ``acq-`` the run has (each of whose entities is the run's). Several that apply are refused:
        BIDS gives a run the nearest, but pybids reads every one and merges their events, in no set order."""
        run, task = _raw_key(entities), RAW.index("task")
        subject, session = entities.get("subject"), entities.get("session")
        above = {self.root, self.root / f"sub-{subject}"}
        if session is not None:
            above |= {
                self.root / f"sub-{subject}" / f"ses-{session}",
                self.root / f"sub-{subject}" / f"ses-{session}" / "func",
            }
        else:
            above.add(self.root / f"sub-{subject}" / "func")
        found = [
            path
            for of in (subject, None)
            for key, items in self.events_of.get((run[task], of), {}).items()
            if all(v is None or v == r for v, r in zip(key, run))
            for path, _ in items
            if Path(path).parent in above
        ]
        why = "BIDS gives a run the nearest, but pybids reads them all and merges their events"
        if len({Path(p).parent for p in found}) > 1:  # (a file above beside the run's own: the others need it)
            why += "; where the file above serves runs without their own, copy it beside each of them, then remove it"
        return _at_most_one(found, f"several events files apply to {bold}", why)

    def raw_bold(self, entities: dict, bold) -> Path | None:
        """The raw BOLD of a preprocessed run: of its part (``part-mag``) where it has one, else the one without
        a part, else the magnitude (fMRIPrep preprocesses a complex-valued run's magnitude and may name it without
        ``part-``); or its first echo (:meth:`first_echo`)."""
        part = entities.get("part")
        found = self.one("raw BOLD", entities, bold, part=part)
        if found is None and part is None:
            found = self.one("raw BOLD", entities, bold, part="mag")
        return found or self.first_echo(entities)

    def first_echo(self, entities: dict) -> Path | None:
        """The raw BOLD of the lowest echo of a run whose preprocessed file has no echo (fMRIPrep combines a
        multi-echo run's echoes; their sidecars share its RepetitionTime and SliceTiming), or None."""
        if entities.get("echo") is not None:
            return None
        key = _raw_key(entities)[:-1]  # (RAW's last entity: echo)
        echoes = [
            (float(ent["echo"]) if is_number(str(ent["echo"])) else math.inf, path)
            for k, items in self.by_key["raw BOLD"].items()
            if k[:-1] == key
            for path, ent in items
            if ent.get("echo") is not None
        ]
        return Path(min(echoes)[1]) if echoes else None


def _why_several(paths: list[str], roots=()) -> str:
    """Why several files match one run, where it can be told from their paths: one file of one name under several
    of the derivatives folders `roots` (a pipeline's outputs given twice), copies of one file in folders of one
    dataset, fMRIPrep's confounds table as versions before and after 20.2 named it (_regressors, _timeseries: an
    older run's table left beside a newer one's), or else a part of their names not chosen by."""
    paths = sorted(set(map(str, paths)))
    names = {Path(p).name for p in paths}
    if len(names) < len(paths):
        within = {p: next((r for r in roots if Path(p).is_relative_to(r)), None) for p in paths}
        relative = {str(Path(p).relative_to(r)) if r is not None else p for p, r in within.items()}
        if len(relative) == 1 and None not in within.values():
            folders = sorted({str(r) for r in within.values()})
            return f"one file under the derivatives folders {listed(folders, 3)}: give each pipeline's folder once"
        folders = sorted({str(Path(p).parent) for p in paths})
        return f"copies of one file, in {listed(folders, 3)}: remove the stray copy"
    if len(names) == 2 and len({re.sub(r"_(?:regressors|timeseries)\.tsv$", "", n) for n in names}) == 1:
        return (
            "fMRIPrep named its confounds table _regressors before 20.2 and _timeseries from then: an older run's "
            "table remains beside a newer one's; remove the _regressors one"
        )
    return "they differ in a part of their names that voxfit does not choose by, as cohort-"


def _at_most_one(found: list[str], several: str, why: str) -> Path | None:
    """The one path of `found` (repeats aside), or None; several are refused, saying `several` and `why`."""
    paths = sorted(set(found))
    if len(paths) > 1:
        raise InputError(f"{several}: {', '.join(paths[:3])}; keep one ({why}).")
    return Path(paths[0]) if paths else None


def _raw_key(entities: dict) -> tuple:
    return tuple(entities.get(k) for k in RAW)


def naming_file(path, exc: Exception) -> str:
    """The error `exc` about the file `path`, beginning with its path once: a reader's errors mostly name their file
    already ("X: X: not a readable image" was a study's failure line)."""
    said = str(exc)
    return said if said.startswith(f"{path}:") or said.startswith(f"{path} ") else f"{path}: {said}"


def _run_input(layout, files: _RunFiles, f) -> RunInput:
    from ..io import header_scan_step, open_reader

    ent = f.get_entities()
    entities = tuple((k, ent[k]) for k in ENTITIES if ent.get(k) is not None)
    raw = {k: ent[k] for k in RAW if ent.get(k) is not None}
    problems = []
    missing = _unretrieved(layout, raw, ent)  # (then the run's other problems follow from it)
    bold = Path(f.path)
    step = None
    try:
        reader = open_reader(str(bold), "bold")
        n_scans, step = int(reader.n_scans), header_scan_step(reader)
        # (a GIFTI's AnatomicalStructurePrimary, as its writer spells it: CortexLeft, CORTEX_LEFT, Cortex_Left...)
        structure = str(getattr(reader.geometry, "structure", None) or "")
        said = re.sub(r"[^a-z]", "", structure.lower())
        own, other = {"L": ("left", "right"), "R": ("right", "left")}.get(str(ent.get("hemi")), ("", ""))
        if other and other in said and own not in said:
            problems.append(  # (the other hemisphere's: fitted as it, then its dataset node failed for everyone)
                f"{bold}: its name says hemi-{ent['hemi']} but its metadata {structure} "
                "(AnatomicalStructurePrimary): fix the one that is wrong."
            )
    except InputError as exc:
        problems.append(naming_file(bold, exc))
        n_scans = 0
    raw_bold = files.raw_bold(ent, bold)
    meta = layout.get_metadata(str(raw_bold)) if raw_bold else {}
    raw_scans = _raw_scans(raw_bold, n_scans)
    preprocessed = layout.get_metadata(str(bold))
    _check_timing(raw_bold, meta)
    _check_timing(bold, preprocessed)
    tr = meta.get("RepetitionTime") or preprocessed.get("RepetitionTime")
    theirs = preprocessed.get("RepetitionTime")
    if tr is not None and theirs is not None and not math.isclose(float(tr), float(theirs), rel_tol=1e-3):
        problems.append(
            f"{bold}: its sidecar says RepetitionTime {theirs} s but the raw run's says {tr} s; one of them is wrong: "
            "fix it (the design would be built with the raw one)."
        )
    # (a sidecar's TR of 100 or more is no fMRI run's in seconds; a header whose unit alone is wrong is not said)
    if tr is not None and step is not None and tr >= 100 and math.isclose(float(tr), 1000 * step, rel_tol=0.01):
        problems.append(
            f"{bold}: its sidecars give RepetitionTime {tr:g} and its header {step:g} s between scans: the sidecar's "
            f"is in milliseconds, where BIDS gives seconds; write {step:g} in the run's JSON sidecar."
        )
    elif tr is not None and step is not None and not math.isclose(float(tr), step, rel_tol=0.01):
        warnings.warn(  # (BIDS takes the sidecar's, as SPM and nilearn do; FSL and AFNI the header's)
            f"{bold}: its sidecars give RepetitionTime {float(tr):g} s but its header {step:g} s between scans; the "
            "design is built with the sidecar's (BIDS): check which is right.",
            UserWarning,
            stacklevel=2,
        )
    sidecar = bold.name.split(".")[0] + ".json"
    if tr is None:
        problems.append(
            f"{bold}: RepetitionTime is missing from every sidecar of the run (raw and derivatives); add it to "
            f"its JSON sidecar, {sidecar}, as fMRIPrep writes it (pybids reads the run's events with it)."
        )
    elif theirs is None:
        problems.append(
            f"{bold}: its JSON sidecar gives no RepetitionTime (the raw run's: {tr:g} s), and pybids reads the run's "
            f'events with the preprocessed run\'s; add "RepetitionTime": {tr:g} to {sidecar}, as fMRIPrep writes it.'
        )
    timing = meta.get("SliceTiming")
    start_time = preprocessed.get("StartTime")
    if (
        start_time is not None
        and tr is not None
        and not (isinstance(start_time, (int, float)) and 0 <= start_time < tr)
    ):
        problems.append(
            f"{bold}: its sidecar's StartTime ({start_time!r}) is not a time within the repetition time ({tr} s); "
            "fix the preprocessed run's JSON sidecar (fMRIPrep writes the time slice-timing correction shifted "
            "the scans to)."
        )
        start_time = None
    try:
        events, several = files.events(ent, bold), None
    except InputError as exc:  # (several apply: this run's problem)
        events, several = None, str(exc)
    if events is not None and (problem := _events_problem(events)) is not None:
        problems.append(problem)
    if several is not None:
        problems.append(several)
    elif events is None:
        parts = short_entities(raw, RAW)
        problems.append(
            f"{bold}: no events.tsv for this run in {layout.root}; add {parts}_events.tsv to the raw dataset "
            "(or drop the run with --participant-label / --task)."
        )
    confounds = files.one("confounds tables", ent, bold)
    if confounds is not None and n_scans:
        rows = _rows(confounds)
        if rows != n_scans:
            problems.append(
                f"{confounds}: {rows} rows, but the run {bold.name} has {n_scans} scans; the confounds table must "
                "have one row per scan (rerun fMRIPrep, or fix the table)."
            )
    mask = None
    if _is_volume(bold):
        grid = {k: ent.get(k) for k in ("space", "res", "den")}
        mask = files.one("masks", ent, bold, **grid)
        if mask is None and grid["space"] is None:  # (a run in its own space: fMRIPrep 24 names its mask space-run)
            mask = files.one("masks", ent, bold, **{**grid, "space": NATIVE})
        if mask is None and files.mask_given:
            given = ", ".join(
                f"{k} {' or '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in files.mask_given.items()
            )
            problems.append(
                f"{bold}: the model's Options.Mask ({given}) matches no mask of this run in the derivatives (of its "
                "space and resolution); check its entities against the masks' names (fMRIPrep's: desc brain)."
            )
    sidecars = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
    problems = [missing] if missing else problems
    return RunInput(
        entities=entities,
        bold=bold,
        mask=mask,
        confounds=confounds,
        events=events,
        tr=float(tr) if tr is not None else None,
        slice_timing=tuple(float(t) for t in timing) if timing else None,
        n_scans=n_scans,
        problems=tuple(problems),
        sidecars=sidecars,
        start_time=None if start_time is None else float(start_time),
        raw_scans=raw_scans,
    )


def _raw_scans(raw_bold: Path | None, n_scans: int) -> int | None:
    """The raw BOLD's number of scans, where its header gives other than the preprocessed run's `n_scans`
    (fMRIPrep keeps every scan: scans cut after it shift the events, which BIDS times from the raw run's first
    scan); None where they agree or it cannot be read (the preprocessed run's problems say the rest)."""
    import nibabel as nib

    if raw_bold is None or not n_scans:
        return None
    try:  # (its header alone, by nibabel: the reader's warnings are of a file the study does not fit)
        shape = nib.load(str(raw_bold)).shape
    except Exception:  # noqa: BLE001 - not there (a DataLad link), not an image...: nothing to compare
        return None
    raw = int(shape[3]) if len(shape) > 3 else 1
    return raw if raw != n_scans else None


def _events_problem(path: Path) -> str | None:
    """What makes a run's events.tsv unreadable as a BIDS table, where pybids would stop the whole study on it
    (pandas' errors, exit 1) or drop a row: empty, not tab-separated (no onset and duration in its header), a row
    of another length than the header, an onset or duration that is not a number (a duration may be n/a)."""
    try:  # (quoted cells as pandas reads them: R's write.table quotes every string, BIDS a string with a tab)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t", quotechar='"') if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"{path}: not a readable text table ({exc})."
    fix = "; fix the events file (tab-separated, a header line naming onset, duration and trial_type)."
    if not rows:
        return f"{path} is empty" + fix
    header = [h.strip() for h in rows[0]]
    if not {"onset", "duration"} <= set(header):
        return f"{path}: its header {chr(9).join(rows[0])!r} names no onset and duration columns" + fix
    for n, row in enumerate(rows[1:], 2):
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            return f"{path}, line {n}: {len(cells)} values for the header's {len(header)} columns" + fix
        for column in ("onset", "duration"):
            value = cells[header.index(column)]
            if not is_number(value) and not (column == "duration" and value == "n/a"):
                return f"{path}, line {n}: {column} {value!r} is not a number" + fix
    if "trial_type" in header:  # (pybids keeps spaces around a name: a condition split in two, across runs too)
        for n, row in enumerate(rows[1:], 2):
            if (cell := row[header.index("trial_type")]).strip() and cell != cell.strip():
                return (
                    f"{path}, line {n}: trial_type {cell!r} has spaces around it, which pybids keeps: it would be a "
                    f"condition apart from {cell.strip()!r}; remove them."
                )
    return None


def _rows(table: Path) -> int:
    """The data rows of a TSV (lines after the header, blank lines at the end not counted)."""
    with open(table, encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh.read().splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    return max(0, len(lines) - 1)
