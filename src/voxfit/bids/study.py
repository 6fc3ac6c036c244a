"""``voxfit.bids.run``: a whole study, a BIDS dataset with fMRIPrep derivatives and a BIDS Stats Model, fitted
node by node from each run to the group.

The flow: the dataset is indexed (pybids, a cached index under ``OUT_DIR/.voxfit/bids-index``), its runs found
(:func:`voxfit.bids.layout.find_runs`), the model loaded and validated (the default one from the runs' trial
types without ``model``). The Run node fits each run with voxfit's first level
(:func:`voxfit.models.glm.fit_images`) on the design of :func:`voxfit.bids.run_design.run_design`, the volumes
smoothed first when asked (:class:`voxfit.io.smoothing.SmoothedReader`); each t contrast's effect and variance
maps go on as pybids ``ContrastInfo`` to the nodes below it, which pybids groups (``node.run``). Session and
Subject nodes combine their inputs by fixed effects (precision-weighted, the runs' first-level dof;
:func:`voxfit.mixed_effects`); Dataset nodes fit :class:`voxfit.SecondLevel` with the group model asked for
(mixed effects by default) on the effect and variance maps, the node's X from pybids (participants.tsv columns
by name). F contrasts are terminal.

Runs are fitted where the execution says: in this process (``n_jobs`` None or 1), in ``n_jobs`` worker
processes (spawned; each fits whole runs with its share of ``max_memory`` and ``cpus / workers`` threads; fewer
workers when the cap cannot hold that many runs in memory beside this process's reserve), or as tasks on a
Dask cluster (``scheduler``). Each group's files are committed at once by whoever fits it
(:class:`voxfit.io.OutputFolder`), so an interruption leaves every finished group whole and nothing
half-written; the workers are stopped (SIGTERM, then SIGKILL after a second) before the interruption goes on.

A run or group that fails on bad input is recorded (node, group, the sentence naming the file and field) and
the others go on; a group built without some of its inputs says which and why in its record's notes, a group
left with no input is skipped with its reason, and dataset groups list the subjects they used and left out.

Reruns, cheapest first: (1) the whole study is reused without pybids when the dataset's files (path, size,
modification time), the model, the settings and the filters equal those of the last complete study
(``OUT_DIR/.voxfit/study.json``) and its outputs are as it left them; (2) a run is reused before its design is
built when its input checksum (path, size and modification time of the BOLD and mask; the contents of the
events and confounds tables; the raw BOLD's sidecar metadata; the run node; the run-level settings) equals its
record's; (3) a node is reused before pybids groups its inputs when its checksum (its inputs' maps by path,
size and modification time, the failures above it, the subject tables' contents, the node, the settings)
equals the last one; (4) otherwise each group is reused when its design, contrasts and inputs are unchanged.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import fnmatch
import functools
import gc
import hashlib
import io
import json
import numbers
import os
import re
import shutil
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._checks import is_number, repeated
from .._execution import Execution, cap_holding, data_bytes
from .._memory import release_freed_memory, reserved_bytes, whole_files_capped
from .._progress import Progress
from .._threads import DaemonExecutor, handle_stop_signals
from .._version import __version__
from ..design.subjects import listed
from ..exceptions import InputError
from .layout import (
    BOLD_EXTENSIONS,
    ENTITIES,
    NATIVE,
    RAW,
    RunInput,
    dataset_stamp,
    entity_label,
    find_runs,
    grid_name,
    index,
    index_in_use,
    input_filters,
    naming_file,
    release_index,
    value_text,
)
from ..io.output import (
    clusters_table_name,
    missing_folders,
    remove_made_folders,
    signals_held,
    write_files_atomically,
)
from .outputs import (
    check_name_lengths,
    describe_dataset,
    description_files,
    group_folder,
    group_prefix,
    group_records,
    grouped_by_others,
    map_name,
    open_group,
)

__all__ = ["Failure", "NodeResult", "StudyResult", "run"]

LEVELS = ("run", "session", "subject", "dataset")
GROUP_MODELS = ("mixed", "ols", "fixed")
STATS = ("effect", "variance", "stat", "p", "z")
MANIFEST = "study.json"  # under OUT_DIR/.voxfit: what the last study fitted, for reruns
MANY_RUNS = 8  # AR runs fitted here one by one from which numba's compiled kernels are worth loading at once
STOP_WAIT_S = 1.0  # how long interrupted workers may take to remove their partial folders before SIGKILL


@dataclass(frozen=True)
class NodeResult:
    """One node group fitted (or reused): the node's `name` and `level`, the group's `entities`, the
    `contrasts` it computed, the `files` written, whether it was `reused` (unchanged since the last run) and
    `notes` (inputs left out, and why)."""

    name: str
    level: str
    entities: tuple[tuple[str, object], ...]
    contrasts: tuple[str, ...]
    files: tuple[Path, ...]
    reused: bool = False
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The group's entities as in file names (``sub-01_contrast-congruent``; ``all`` for none)."""
        return _group_label(dict(self.entities))


@dataclass(frozen=True)
class Failure:
    """A node group that could not be fitted, or was skipped: the node, the group (its entities as a label),
    why, the group's `entities` (pybids names; empty for a whole node) and, where its record's place holds
    another study's group of the output folder, that `other_study` (its model, task, space and desc, as said)."""

    node: str
    group: str
    reason: str
    entities: tuple[tuple[str, object], ...] = ()
    other_study: str | None = None

    def __str__(self) -> str:
        return f"node {self.node}, {self.group}: {self.reason}"


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run` did: per node name its groups' results, the failures, the groups skipped for want of
    inputs (their lower groups failed), the output folder, the model file written there and the number of
    worker processes that fitted runs (0: this process or a Dask cluster)."""

    out_dir: Path
    model_file: Path
    nodes: dict[str, tuple[NodeResult, ...]]
    failures: tuple[Failure, ...] = field(default=())
    skipped: tuple[Failure, ...] = field(default=())
    workers: int = 0
    removed: int = 0  # files of the groups an earlier run of the study wrote that this one left stale (_remove_stale)

    @property
    def ok(self) -> bool:
        """Everything asked for was fitted."""
        return not self.failures and not self.skipped

    @property
    def notes(self) -> tuple[tuple[NodeResult, str], ...]:
        """Every group's notes (inputs left out), with the group."""
        return tuple((g, n) for groups in self.nodes.values() for g in groups for n in g.notes)


@dataclass(frozen=True)
class _GroupFitted:
    """A higher node group's fit: its contrasts' Stats by label, the masker, the model's name, its dof, more maps
    of each contrast (``(stat, values)``: permutation p), the dataset's RFT inference and cluster tables, and the
    dof passed on with a contrast's maps where they are the contrast's own (fixed effects' Kenward-Roger dof,
    their median over the voxels; else `dof`)."""

    stats: dict
    masker: object
    model: str
    dof: float
    maps: dict = field(default_factory=dict)
    rft: object = None
    tables: dict = field(default_factory=dict)
    shuffles: dict = field(default_factory=dict)  # each contrast's shuffles as made (scheme, count, all of them)
    contrast_dof: dict = field(default_factory=dict)


class ReportsInterrupted(KeyboardInterrupt):
    """A study interrupted while its reports were written: every group was fitted or failed, what it fitted is
    committed and stale groups are removed (`result`); a report is written whole or not at all."""

    def __init__(self, result: StudyResult):
        super().__init__()
        self.result = result


RUN_ONLY = ("high_pass", "confounds_strategy", "diagnostics", "preset")  # settings of the run level alone


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of :func:`run` that the fits depend on (recorded, and part of every checksum)."""

    level: str
    noise: str | None  # None: the fMRI default for each run's length (models._routing.fmri_noise)
    scaling: str
    convolution: str
    smoothing: float | None
    group_model: str
    permutations: int
    tfce: bool
    cluster_threshold: float | None
    seed: int | None
    high_pass: float | str | None = None  # the preset's, where the run node's model names none
    confounds_strategy: str | None = None  # its columns added to the run design (see run())
    diagnostics: bool = False
    preset: dict | None = None  # what the command line's --preset applied (recorded)
    rft: dict | None = None  # --inference rft at dataset nodes: voxfit.inference.rft_fit.RFTOptions as a dict

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "level"}

    def of_level(self, level: str) -> dict:
        """The settings a group at `level` depends on (a run's fit does not depend on the group model)."""
        if level == "run":
            return {k: getattr(self, k) for k in ("noise", "scaling", "convolution", "smoothing", *RUN_ONLY)}
        if level == "dataset":
            return {k: v for k, v in self.as_dict().items() if k not in ("noise", "scaling", "convolution", *RUN_ONLY)}
        return {}


@dataclass(frozen=True)
class _MapRef:
    """The maps a group passes on for one contrast: effect, variance, the dof of the variance, the test."""

    effect: str
    variance: str
    dof: float


@dataclass(frozen=True)
class _Node:
    """A node of the model as the study walks it (pybids' node object is needed only to group inputs)."""

    name: str
    level: str
    spec: dict
    study: tuple[tuple[str, object], ...] = ()  # the study that writes its groups (_Study.identity; records name it)

    def key(self, entities: dict) -> tuple:
        """What tells apart the maps of the node's groups (`entities`, a group's and its contrast's, or those of an
        input of a node below it, which pybids gives with other columns): their BIDS entities and contrast, then
        the other keys the node groups by (a participants.tsv column)."""
        others = sorted(k for k in map(_long, self.spec.get("GroupBy") or ()) if k not in _KEYS)
        return _key(entities) + tuple((k, _value(entities.get(k))) for k in others)


@dataclass(frozen=True, eq=False)
class _RunJob:
    """Everything a process needs to fit one run and write its group: picklable, no pybids object."""

    index: int
    run: RunInput
    node: _Node
    design: object
    X: np.ndarray
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    contrasts: tuple[tuple[str, str, np.ndarray], ...]  # (label, contrast name, weights)
    folder: Path
    prefix: str
    checksum: str
    settings: _Settings
    execution: Execution
    command: tuple[str, ...] | None
    design_settings: dict = field(default_factory=dict)  # hrf, high-pass and its source (the report shows them)
    confounds: dict | None = None  # the confounds strategy's record (ConfoundSelection.describe), if any
    notes: tuple[str, ...] = ()  # contrasts not made for the run (a trial type it has no event of)


@dataclass(frozen=True)
class _RunDone:
    """A run fitted and committed: its files and, per t contrast, the maps passed on (or the error)."""

    index: int
    files: tuple[Path, ...] = ()
    outputs: dict = field(default_factory=dict)
    error: str | None = None
    warned: tuple = ()  # (a worker process's warnings, (category, message, file, line): the study says them)


def run(
    bids_dir,
    out_dir,
    *,
    level: str = "dataset",
    model=None,
    derivatives=(),
    participant_label=(),
    task: str | None = None,
    space: str | None = None,
    desc: str = "preproc",
    smoothing: float | None = None,
    noise: str | None = None,
    scaling: str = "none",
    convolution: str = "spm",
    group_model: str = "mixed",
    permutations: int = 0,
    tfce: bool = False,
    cluster_threshold: float | None = None,
    seed: int | None = None,
    rft=None,
    report: bool = False,
    force: bool = False,
    execution: Execution | None = None,
    max_memory=None,
    n_jobs: int | None = None,
    scheduler=None,
    progress: bool | None = None,
    command=None,
    high_pass: float | str | None = None,
    confounds_strategy: str | None = None,
    diagnostics: bool = False,
    preset: dict | None = None,
) -> StudyResult:
    """Fit the BIDS Stats Model `model` (a path, JSON text, a dict; None: voxfit's default model) to the BIDS
    dataset `bids_dir` with its fMRIPrep `derivatives`, from each run to the node level `level` (run, session,
    subject or dataset), writing a BIDS derivatives dataset to `out_dir` (see :mod:`voxfit.bids.outputs`).

    participant_label, task, space, desc: which runs (see :func:`voxfit.bids.layout.find_runs`); smoothing: a
    Gaussian FWHM in mm applied to each volume before the run-level fit, as nilearn's ``smooth_img`` (refused
    for surfaces and CIFTI); noise, scaling, convolution: the run level's noise model, scaling and HRF
    convolution (as ``voxfit fit``); group_model: ``mixed`` (default), ``ols`` or ``fixed`` at dataset nodes;
    permutations, tfce, cluster_threshold, seed: their permutation inference (as ``voxfit group``); rft: a
    ``voxfit.inference.rft_fit.RFTOptions``, random field theory at dataset nodes instead (as ``voxfit group
    --inference rft``: maps, results tables and model.json's inference in the node's folder); force:
    refit every group even when unchanged; execution (or its shortcuts max_memory, n_jobs, scheduler,
    progress): `n_jobs` worker processes fit runs side by side, together within `max_memory` (the whole
    command's cap), or a Dask `scheduler`'s workers fit them; `progress`: a bar over the runs (None: on a
    terminal); report: an HTML report per subject and for the dataset; command: the command line, recorded.
    high_pass: the run designs' high-pass period (seconds or ``"0.008Hz"``) where the run node's model sets no
    Options.HighPassFilterCutoffHz (a preset's; the model's own choice wins); confounds_strategy: a named
    strategy (``voxfit.design.confounds``, as ``voxfit fit --confounds-strategy``) on each run's fMRIPrep
    confounds table, its columns (and one indicator per censored scan) added to the run design after the node's
    Model.X, as confounds listed in X are: a column already in X by name is not added twice; diagnostics: the
    whiteness of each run's whitened residuals (``voxfit fit --diagnostics``), maps and model.json; preset:
    what a ``--preset`` applied, recorded in each run's model.json.
    Returns a :class:`StudyResult`; failures on bad input are in it, not raised (except those that stop
    everything: no dataset, no runs, an invalid model).
    """
    settings, execution = _run_iv(
        report,
        level,
        noise,
        scaling,
        convolution,
        smoothing,
        group_model,
        permutations,
        tfce,
        cluster_threshold,
        seed,
        execution,
        max_memory,
        n_jobs,
        scheduler,
        progress,
        high_pass,
        confounds_strategy,
        diagnostics,
        preset,
        rft,
    )
    # (absolute: every path a study records or hands to its workers means the same folder from any working folder)
    out_dir = Path(out_dir).absolute()
    labels = tuple(str(p).removeprefix("sub-") for p in participant_label or ())
    if any(not label.strip() for label in labels):
        raise InputError("--participant-label: an empty label; give labels such as 01 or sub-01.")
    derivatives = list({os.path.realpath(d): Path(d) for d in derivatives}.values())  # (a folder given twice: once)
    _check_study_folder(out_dir, Path(bids_dir), derivatives, force)
    _remove_dead_partials(out_dir)
    broken: list[Path] = []
    stamp = dataset_stamp(bids_dir, derivatives, exclude=[out_dir], broken=broken) if Path(bids_dir).is_dir() else ""
    _check_retrieved(broken, labels, [Path(bids_dir), *derivatives])
    study_key = _checksum(
        __version__, stamp, _model_key(model), settings.__dict__, [labels, task, space, desc], str(out_dir.resolve())
    )
    if not force and (done := _reuse_study(out_dir, study_key)) is not None:
        if report:
            _write_reports(out_dir, done.failures, execution.progress)
        return done

    from .spec import default_model, load_model

    before = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else None  # (None: made by this study)
    layout = None
    try:
        database = out_dir / ".voxfit" / "bids-index"
        layout = index(bids_dir, derivatives, database=database, stamp=stamp or None, broken=broken)
        default_types, names = [], []  # (voxfit's default model: its trial types, each run's own: _Study.run_spec)
        if model is None:
            runs = find_runs(layout, task=task, space=space, desc=desc, participant_label=labels, strict=False)
            sessions = any(dict(r.entities).get("session") for r in runs)
            # (the tasks of the runs that can be fitted: a resting-state or raw-only task beside fails on its own)
            tasks = sorted({dict(r.entities)["task"] for r in runs if not r.problems})
            if all(r.problems for r in runs):  # nothing to fit: the first run's problem is the one to fix
                raise InputError(runs[0].problems[0])
            if len(tasks) > 1:  # (one task's conditions would be pooled with another's of the same name)
                raise InputError(
                    f"the dataset holds the tasks {listed(tasks)}; voxfit's default model is of one task: choose one "
                    f"with --task {tasks[0]} (a study each), or give a model (--model) that says how to combine them."
                )
            runs = _without_eventless_tasks(layout, runs, tasks) if task is None else runs
            default_types = _trial_types([r.events for r in runs])
            if not default_types:
                raise InputError(_no_trial_types([r.events for r in runs if not r.problems]))
            names = _trial_type_names(default_types, [r.events for r in runs])
            model = load_model(default_model(task or (tasks[0] if tasks else None), names, sessions=sessions))
        else:
            model = load_model(model, task=task)
            chosen = input_filters(layout, model.get("Input"), task=task, participant_label=labels)
            runs = find_runs(
                layout, space=space, desc=desc, mask_entities=_mask_entities(model), strict=False, **chosen
            )
        _check_dataset_inference(model, settings)
        levels = [str(n.get("Level", "")).lower() for n in model.get("Nodes", ())]
        if settings.level not in levels:  # (the study would end below it, having fitted less than asked, exit 0)
            raise InputError(
                f"the analysis level {settings.level} has no node in the model (its levels: "
                f"{', '.join(dict.fromkeys(levels))}); choose one of them."
            )
        _check_participants_table(Path(bids_dir) / "participants.tsv", settings.level)
        lines = _table_lines(Path(bids_dir) / "participants.tsv")
        participants = _participants_rows(lines)
        _check_participants(Path(bids_dir) / "participants.tsv", lines, runs, model)
        _check_participant_values(Path(bids_dir) / "participants.tsv", participants, runs, model, settings.level)
        session_columns, session_ids = _sessions_tables(Path(bids_dir))
        _check_sessions(Path(bids_dir), model, session_columns, runs)
        columns = [c for c in participants[0] if c != "participant_id"] if participants else []  # (any place)
        tables = {"participants": columns, "sessions": session_columns}
        no_participants = settings.level == "dataset" and not (Path(bids_dir) / "participants.tsv").is_file()
        _check_misnamed_columns(model, [*tables["participants"], *tables["sessions"]], no_participants)
        _check_table_levels(model, tables)
        _check_scans_tables(Path(bids_dir), model, labels)
        _check_trial_type_readings(runs, model)
        surface = next((r.bold for r in runs if not _is_volume(r.bold)), None)
        if settings.smoothing and surface is not None:
            raise InputError(
                f"--smoothing is for volumes, and {surface.name} is a surface or CIFTI run (smoothing on the mesh is "
                "not done here): drop --smoothing, or choose volume runs with --space."
            )
        if str(settings.noise).lower() == "film" and surface is not None:  # (each run failed alone, saying so)
            raise InputError(
                f"--noise film (FSL's FILM, --preset fsl's) smooths the noise's autocorrelation over neighbouring "
                f"voxels or vertices, and {surface.name} is a surface or CIFTI run, whose mesh a study takes none of: "
                "give --noise arma11 (or auto, ar1 .. ar16; beside --preset fsl, where given), or choose volume runs "
                "with --space."
            )
        _check_surface_inference(settings, surface)
        _check_own_space_levels(settings.level, runs, levels)
        _check_dataset_subjects(settings.level, runs, model)
        _check_aroma(settings, desc)
        described = {f: f.read_bytes() if f.is_file() else None for f in description_files(out_dir, model)}
        model_file = describe_dataset(out_dir, model, command)
        identity = (("model", model_file.name), *_runs_chosen(runs), ("desc", desc))
        study = _Study(layout, model, settings, execution, out_dir, force, command, labels, identity)
        study.default_types = tuple(default_types)
        study.default_names = dict(zip(default_types, names))
        if default_types:  # (the labels of the dataset's trial types, whichever participants are chosen: see below)
            study.label_trial_types()
        ids = _participant_ids(participants)
        study.participants = None if ids is None else set(ids)
        study.session_ids = session_ids
        study.participant_columns = tuple(columns)
        study.participant_rows = participants
        study.session_columns = tuple(session_columns)
        # the index's objects (pybids' and SQLAlchemy's, ~200k) left out of the full collections (7 of them took
        # 0.5 s of the benchmark study, every thread stopped meanwhile; 0.2 s so); not if the caller froze some
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            study.fit_runs(runs)
            study.fit_higher()
        finally:
            if freeze:
                gc.unfreeze()
        subjects = {str(dict(r.entities)["subject"]) for r in runs}
        removed = _remove_stale(out_dir, dict(study.identity), study.results, subjects, settings.level)
        result = StudyResult(
            out_dir,
            model_file,
            {k: tuple(v) for k, v in study.results.items()},
            tuple(study.failures),
            tuple(study.skipped),
            study.workers,
            removed,
        )
        study.write_manifest(study_key if result.ok else None, model_file)
        release_index(layout)  # (before the folder is judged unused: a lock held means another study reads it)
        if not any(result.nodes.values()):  # (no report of a study that fitted nothing: the failures are said)
            if not _drop_if_unused(out_dir, before):  # an earlier study's folder: its description as it was
                kept = {f: data for f, data in described.items() if data is not None}
                write_files_atomically({f: lambda tmp, b=data: Path(tmp).write_bytes(b) for f, data in kept.items()})
                for f in (f for f, data in described.items() if data is None):
                    f.unlink(missing_ok=True)
            return result
        if report:
            try:
                _write_reports(out_dir, study.failures, execution.progress)
            except KeyboardInterrupt:
                raise ReportsInterrupted(result) from None
        elif (out_dir / "index.html").is_file():  # (an earlier study's pages described fits this one replaced)
            from .report import remove_study_reports

            remove_study_reports(out_dir)
    except BaseException:
        release_index(layout)
        _drop_if_unused(out_dir, before)
        raise
    return result


def _remove_dead_partials(out_dir: Path) -> None:
    """The hidden folders that killed processes (SIGKILL, power loss) left in the study's group folders: a group
    reused by the rerun is never opened again, so its folder kept one (a 0-byte map in sub-04/node-run)."""
    from .._folders import remove_stale_partials

    for folder in ("node-*", "sub-*/node-*", "sub-*/ses-*/node-*"):
        for path in out_dir.glob(folder):
            remove_stale_partials(path)


def _check_retrieved(broken: list[Path], labels, roots: list[Path]) -> None:
    """Refuse a study whose tables a DataLad dataset has not retrieved (`broken`: git-annex's links into
    .git/annex that point nowhere, or its pointer files), where the study reads them whatever runs it fits: the
    participants table and the tasks' sidecars at the top of the dataset or a derivatives folder (`roots`), the
    chosen subjects' sessions and scans tables (a pointer participants.tsv failed the dataset node with KeyError
    'subject'). A run's own files not retrieved fail that run (see voxfit.bids.layout); files no study reads
    (sourcedata, anatomy, other spaces) are no matter."""
    tops = {os.path.realpath(root) for root in roots}
    wanted = []
    for path in broken:
        top = os.path.realpath(path.parent) in tops and path.name.startswith(("participants.", "task-"))
        subject = next((part.removeprefix("sub-") for part in path.parts if part.startswith("sub-")), None)
        tables = path.name.endswith(("_sessions.tsv", "_scans.tsv")) and (not labels or subject in labels)
        if top or tables:
            wanted.append(path)
    if wanted:
        raise InputError(
            f"{len(wanted)} table(s) the study reads are not there, {wanted[0]} first (links to no file, or "
            "git-annex pointers: a DataLad dataset whose files were not all retrieved?); retrieve them (datalad get)."
        )


def _hashable_entities(collection) -> None:
    """A higher node's variables without lists: pybids reads a session's scans.tsv with the BOLD sidecars'
    metadata as variables and entities (SliceTiming, a list of times), and merging them with the node's other
    variables on every common column failed ("unhashable type: 'list'"): any dataset with sessions and scans.tsv
    files failed its Session node. Variables of lists (no model's covariate) are left out, entities' lists made
    tuples."""
    for name, variable in list(collection.variables.items()):
        values = getattr(variable, "values", None)
        if values is not None and values.map(lambda v: isinstance(v, list)).any():
            del collection.variables[name]
            continue
        index = getattr(variable, "index", None)
        for column in [] if index is None else list(index.columns):
            if index[column].map(lambda v: isinstance(v, list)).any():
                index[column] = index[column].map(lambda v: tuple(v) if isinstance(v, list) else v)
        entities = getattr(variable, "entities", None)
        if isinstance(entities, dict):
            for key, value in entities.items():
                if isinstance(value, list):
                    entities[key] = tuple(value)


def _sessions_rows(collection, sessions: set | None) -> None:
    """A higher node's variables of sessions (sessions.tsv's, scans.tsv's) kept to the rows of the (subject,
    session) pairs `sessions` of its inputs (None: all): pybids transforms the rows of a subject's sessions.tsv before
    it matches them to the inputs, so a row of a session without data (one not preprocessed, or whose runs all
    failed) entered the Demean of its column, the intercept of the subject's model then the fit at another value."""
    if sessions is None:
        return
    for variable in collection.variables.values():
        index = getattr(variable, "index", None)
        if index is None or not {"subject", "session"} <= set(index.columns) or not hasattr(variable, "select_rows"):
            continue
        pairs = zip(index["subject"].map(_value), index["session"].map(_value))
        keep = np.array([session is None or (subject, session) in sessions for subject, session in pairs], dtype=bool)
        if not keep.all():
            variable.select_rows(np.flatnonzero(keep))


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` but hidden ones (.DS_Store, .gitkeep, voxfit's own .voxfit)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _drop_if_unused(out_dir: Path, before: set[str] | None) -> bool:
    """A study given no output folder (`before` None: it made it) or one holding hidden files only (the names
    `before`), that wrote no node group there (it stopped on bad input or Ctrl-C before, or every run failed),
    leaves it as it was: it removes what it wrote (pybids' index, the description), unless another study reads
    the index there now (one started with it into the same new folder). Whether it did."""
    if before is not None and any(not name.startswith(".") for name in before):
        return False
    if not out_dir.is_dir() or any(p.is_dir() and p.name.startswith(("sub-", "node-")) for p in out_dir.iterdir()):
        return False
    if index_in_use(out_dir / ".voxfit" / "bids-index"):  # (another study into the same folder, started with this)
        return False
    if before is None:
        shutil.rmtree(out_dir, ignore_errors=True)
        return True
    for p in out_dir.iterdir():
        if p.name not in before:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return True


def _remove_stale(out_dir: Path, study: dict, results: dict, subjects: set[str], level: str) -> int:
    """Remove the groups an earlier run of the same `study` (model file and runs chosen: ``_Study.identity``) wrote
    to `out_dir` and this one, complete, did not write or keep: of the levels it fitted (up to `level`), a contrast
    or a node gone from the model, a run that now fails or left the dataset; as SPM removes an earlier analysis's
    images from the folder it estimates into. Only groups of the study's `subjects` are touched, and dataset-level
    groups only when this study wrote or kept some: studies of other participants, models or runs into the same
    folder (a BIDS app's participant-level runs) keep theirs. A group is its record, where this study would write
    it (not a copy elsewhere, nor through a link), and the files the record lists; no file of a group written or
    kept now is removed, and a record that lists no files (an older build's) is left. A file that cannot be
    removed is warned of. Returns the number of files removed. (A group rewritten removes its own earlier files as
    it is committed: ``OutputFolder.drop``.)"""
    if not any(results.values()):
        return 0  # (a study that fitted nothing, every run failed: nothing is stale for it)
    # records are matched by their last parts (node-x/r.json up to sub-01/ses-1/node-x/r.json): a worker elsewhere
    # may have written them through another path to the same folder
    kept = {Path(f).parts[-k:] for groups in results.values() for g in groups for f in g.files for k in (2, 3, 4)}
    dataset_kept = any(g.level == "dataset" for groups in results.values() for g in groups)
    scope = (study, subjects, LEVELS.index(level), dataset_kept)
    records = [r for r in group_records(out_dir) if r.relative_to(out_dir).parts not in kept]
    stale = {r: files for r in records if (files := _stale_files(out_dir, r, scope)) is not None}
    if not stale:
        return 0
    protected = set()  # every file of every group written or kept now
    for groups in results.values():
        for g in groups:
            record = next(f for f in g.files if f.name.endswith("model.json"))
            listed = [record.parent / name for name in _listed_files(record, study)] if g.reused else []
            protected.update(os.path.abspath(f) for f in (*g.files, *listed))
    removed, emptied = 0, set()
    for record, files in stale.items():
        for name in {*files, record.name}:
            f = record.parent / name
            if Path(name).name != name or os.path.abspath(f) in protected or not (f.is_symlink() or f.is_file()):
                continue
            try:
                f.unlink()
            except OSError as exc:
                warnings.warn(f"could not remove {f}, left by an earlier run of this study: {exc}", UserWarning)
                continue
            removed += 1
            emptied.add(record.parent)
    for folder in emptied:  # the node's folder and its subject's or session's, where nothing is left in them
        with contextlib.suppress(OSError):  # (not empty: another study writes there now)
            for empty in (folder, folder.parent, folder.parent.parent):
                if empty == out_dir:
                    break
                empty.rmdir()
    return removed


def _stale_files(out_dir: Path, record: Path, scope: tuple) -> list[str] | None:
    """The files `record` lists, where it is a group :func:`_remove_stale` may remove, not written or kept now: of
    the same study, of the `scope`'s levels and subjects, where that study writes its groups; else None."""
    study, subjects, reach, dataset_kept = scope
    bids = _read_bids(record)
    if bids is None or not _same_study(bids.get("study"), study) or not isinstance(bids.get("files"), list):
        return None  # (another study's group, or an older build's record, which lists no files)
    entities, level = bids.get("entities"), bids.get("level")
    if not isinstance(entities, dict) or level not in LEVELS or LEVELS.index(level) > reach:
        return None
    if not dataset_kept if level == "dataset" else str(entities.get("subject")) not in subjects:
        return None
    folder = group_folder(out_dir, str(bids.get("node")), entities, level)
    # (not a copy of a group in another folder, nor a folder reached through a link)
    if record.parent != folder or folder.resolve() != out_dir.resolve() / folder.relative_to(out_dir):
        return None
    return [str(f) for f in bids["files"]]


def _runs_chosen(runs) -> tuple[tuple[str, object], ...]:
    """The task and space (with its resolution or density) of the runs a study fits, as its identity names them:
    what it chose, not the options that chose it, so that a rerun naming the space or task an earlier run took by
    default (or fsLR:den-91k for fsLR) is the same study (each of its groups was refused as another study's)."""
    fitted = [r for r in runs if not r.problems] or list(runs)
    tasks = sorted({str(r.entity.get("task")) for r in fitted})
    grids = sorted({grid_name(r.entity.get("space") or NATIVE, r.entity) for r in fitted})
    return ("task", ", ".join(tasks) or None), ("space", ", ".join(grids) or None)


def _same_study(recorded, study: dict) -> bool:
    """Whether a record's study (its ``bids`` part's ``study``) is `study`: equal, or of the same model and desc with
    tasks and grids of which one study's are among the other's (a study of some of the subjects, or at one of its
    grids, as --participant-label or --space chose it), or written by an older voxfit, which named the --task and
    --space given (None where the study chose them) rather than those chosen."""
    if recorded == study:
        return True
    if not isinstance(recorded, dict) or recorded.keys() != study.keys():
        return False

    def among(k, v) -> bool:
        if recorded[k] == v or (k in ("task", "space") and recorded[k] is None):
            return True
        if k not in ("task", "space") or not isinstance(recorded[k], str) or not isinstance(v, str):
            return False
        theirs, ours = set(recorded[k].split(", ")), set(v.split(", "))
        return theirs <= ours or ours <= theirs

    return all(among(k, v) for k, v in study.items())


class _ForeignGroup(InputError):
    """The refusal of a group whose record's place holds another study's group (:func:`_foreign_group`), with
    that study as said (`whose`), so that the study's failures can count them."""

    def __init__(self, record_path: Path, whose: str):
        super().__init__(
            f"{record_path.name} in {record_path.parent} is the group of another study of this output folder "
            f"({whose}), whose maps this one would replace: give each study its own output folder (or `force` to "
            "replace them)."
        )
        self.whose = whose


def _foreign_group(record_path: Path, bids: dict | None, study: dict) -> _ForeignGroup | None:
    """Why the group whose record would be at `record_path` cannot be written there: the record there (its
    ``bids`` part) is another study's of this folder (another model file, --task, --space or --desc), whose maps
    this study's would replace (a study of task flanker after one of task stroop replaced stroop's subject and
    dataset maps, exit 0), as an error to raise; None where it is this study's (or an older build's, which names
    none)."""
    other = None if bids is None else bids.get("study")
    if not isinstance(other, dict) or _same_study(other, study):
        return None
    whose = ", ".join(f"{k} {v}" for k, v in other.items() if v is not None)
    return _ForeignGroup(record_path, whose or "another model")


def _listed_files(record_path: Path, study: dict) -> list[str]:
    """The files the record at `record_path` lists of its group, where `study` wrote it (none where there is no
    readable record, or another study's: a group at the same path of another model keeps its other files)."""
    bids = _read_bids(record_path)
    files = bids.get("files") if bids is not None and _same_study(bids.get("study"), study) else None
    return [str(f) for f in files] if isinstance(files, list) else []


def _write_reports(out_dir: Path, failures, progress) -> None:
    """The study's HTML reports from the records on disk, in this process, once each; pages whose inputs are
    unchanged are kept (see voxfit.bids.report)."""
    from .report import write_study_reports

    write_study_reports(out_dir, failures=failures, progress=progress)


def _run_iv(
    report,
    level,
    noise,
    scaling,
    convolution,
    smoothing,
    group_model,
    permutations,
    tfce,
    cluster_threshold,
    seed,
    execution,
    max_memory,
    n_jobs,
    scheduler,
    progress,
    high_pass=None,
    confounds_strategy=None,
    diagnostics=False,
    preset=None,
    rft=None,
):
    from .._checks import check_cluster_threshold, check_scalar
    from ..design.confounds import parse_strategy
    from ..design.events import parse_high_pass
    from ..models._routing import noise_order

    if level not in LEVELS:
        raise InputError(f"`level` must be one of {', '.join(LEVELS)}; got {level!r}.")
    if group_model not in GROUP_MODELS:
        raise InputError(f"`group_model` must be one of {', '.join(GROUP_MODELS)}; got {group_model!r}.")
    if convolution not in ("spm", "nilearn"):
        raise InputError(f"`convolution` must be spm or nilearn; got {convolution!r}.")
    if scaling not in ("none", "mean", "global"):
        raise InputError(f"`scaling` must be none, mean or global; got {scaling!r}.")
    if noise is not None:
        noise_order(noise)
    if high_pass is not None:
        parse_high_pass(high_pass)
    if confounds_strategy is not None:
        parse_strategy(confounds_strategy)
    if not isinstance(diagnostics, bool):
        raise InputError(f"`diagnostics` must be True or False; got {diagnostics!r}.")
    if report:
        from .report import check_matplotlib

        check_matplotlib()  # known before the fits, not after them
    if smoothing is not None:
        check_scalar(smoothing, "`smoothing`", numbers.Real, min_val=0, description="a finite FWHM in mm (>= 0)")
        smoothing = float(smoothing) or None
    check_scalar(permutations, "`permutations`", min_val=0, description="0 or a positive number")
    if tfce and not permutations:
        raise InputError("TFCE needs permutations for its p-values; give `permutations` (e.g. 5000).")
    if cluster_threshold is not None:
        check_cluster_threshold(cluster_threshold)
    if seed is not None and not permutations:  # (as voxfit group: a seed without shuffles is passed over)
        raise InputError("`seed` chooses the permutations' shuffles; add `permutations`, or drop it.")
    if permutations and group_model != "ols":
        raise InputError(
            f"permutation inference is for OLS group models (`group_model` ols, at Dataset nodes of Model.Type glm); "
            f"the group model is {group_model}: add `group_model` ols, or drop `permutations`."
        )
    if cluster_threshold is not None and group_model != "ols":  # (else refused at the dataset level, after the fits)
        raise InputError(
            f"`cluster_threshold` is for OLS group models; the dataset nodes' model is {group_model}: add "
            "`group_model` ols (with `permutations` for the clusters' p values), or drop `cluster_threshold`."
        )
    rft = _rft_iv(rft, level, permutations)
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, scheduler=scheduler, progress=progress
    )
    if execution.on_device:
        raise InputError("voxfit bids fits runs on the CPU; drop `device`.")
    settings = _Settings(
        level,
        noise,
        scaling,
        convolution,
        smoothing,
        group_model,
        int(permutations),
        bool(tfce),
        None if cluster_threshold is None else float(cluster_threshold),
        seed,
        high_pass,
        confounds_strategy,
        diagnostics,
        preset,
        rft,
    )
    return settings, execution


def _rft_iv(rft, level: str, permutations) -> dict | None:
    """``--inference rft``'s options as a dict (None without it): dataset nodes only, never beside
    permutations."""
    if rft is None:
        return None
    from dataclasses import asdict

    from ..inference.rft_fit import RFTOptions

    if not isinstance(rft, RFTOptions):
        raise InputError(f"`rft` must be a voxfit.inference.rft_fit.RFTOptions (check_rft_options()); got {rft!r}.")
    if level != "dataset":
        raise InputError(f"--inference rft is made at the dataset nodes; the analysis level is {level}: give dataset.")
    if permutations:
        raise InputError("--inference rft and --permutations are two inferences on the same maps; give one of them.")
    return asdict(rft)


def _extension(path: Path) -> str:
    """A BOLD file's extension as pybids' entity has it (``.nii.gz``, ``.func.gii``, ``.dtseries.nii``)."""
    name = Path(path).name
    return next(e for e in (*sorted(BOLD_EXTENSIONS, key=len, reverse=True), Path(name).suffix) if name.endswith(e))


def _is_volume(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz")) and not path.name.endswith(".dtseries.nii")


def _model_key(model) -> object:
    """What identifies the `model` argument for the study's checksum: a file's path and contents, the text or
    dict itself, None for the default model."""
    if isinstance(model, (str, os.PathLike)) and not str(model).lstrip().startswith("{"):
        try:
            return [str(model), hashlib.sha256(Path(model).read_bytes()).hexdigest()]
        except OSError:
            return str(model)
    return model


def _trial_types(events, before: float | None = None) -> list[str]:
    """The trial types of the `events` files (their ``trial_type`` column; None: no file), sorted; empty when none
    has one. With `before` (seconds), those with an event starting before it."""
    import pandas as pd

    found: set[str] = set()
    for path in events:
        if path is None:
            continue
        try:
            table = pd.read_csv(path, sep="\t", na_values="n/a")
        except (OSError, ValueError):
            continue
        if "trial_type" in table:
            if before is not None and "onset" in table:
                table = table[pd.to_numeric(table["onset"], errors="coerce") < before]
            found |= {value_text(t) for t in table["trial_type"].dropna().unique()}
    return sorted(found)


def _no_trial_types(events) -> str:
    """Why the default model finds no trial type in the runs' `events` files (paths; None: none): a trial_type
    column named with spaces around it, columns without a value, or no such column (the model's own message,
    "got []", had said the column was missing where it was not: a tester's)."""
    headers = _events_headers(events)
    padded = next(
        ((p, c) for p, h in headers.items() for c in h if c != "trial_type" and c.strip() == "trial_type"), None
    )
    if padded:
        return f"{padded[0]}: its column {padded[1]!r} has spaces around its name; name it trial_type."
    if with_column := [p for p, h in headers.items() if "trial_type" in h]:
        return (
            f"the runs' events files have a trial_type column but no trial type in it (every row n/a, or no rows: "
            f"{with_column[0]}); the default model takes the trial types: fill them, or give --model."
        )
    if not headers:
        return "the runs have no events.tsv, whose trial types the default model takes: give them, or give --model."
    return (
        f"the runs' events files have no trial_type column ({next(iter(headers))}), which the default model takes: "
        "give --model naming their columns, or add the column."
    )


def _check_trial_type_readings(runs, model: dict) -> None:
    """Each events file's trial types as pybids reads them (pandas, guessing the column's type), where the
    model's Run nodes take trial types (name trial_type, or one of them): refused where that merges two of them,
    or loses them, as written (a tester's: '1' and '1.0' one regressor, 'True' and 'False' a condition without
    events, each exit 0 or a message that was not true), naming the file and what to do."""
    import pandas as pd

    strings = {t for n in model.get("Nodes", ()) if str(n.get("Level", "")).lower() == "run" for t in _spec_strings(n)}
    for path in sorted({r.events for r in runs if r.events is not None and not r.problems}):
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
            written = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)["trial_type"]
            read = pd.read_csv(io.StringIO(text), sep="\t")["trial_type"]
        except (KeyError, OSError, ValueError):  # (no trial_type column, or a table the run's checks refuse)
            continue
        if not any("trial_type" in t for t in strings) and not strings & {*written, *map(value_text, read)}:
            continue  # (a model of other columns: its trial types are not read)
        if read.dtype == bool:
            raise InputError(
                f"{path}: pybids reads its trial types {', '.join(map(repr, sorted(set(written))))} as booleans, "
                "which it does not name as conditions; name them otherwise (go, stop)."
            )
        names: dict[str, set[str]] = {}
        for cell, value in zip(written, read):
            if value_text(value) is not None:
                names.setdefault(value_text(value), set()).add(cell.strip())
        if merged := next((sorted(cells) for cells in names.values() if len(cells) > 1), None):
            raise InputError(
                f"{path}: pybids reads its trial types as numbers, and {' and '.join(map(repr, merged))} as one "
                f"({value_text(float(merged[0]))}): they would be one condition; name them otherwise, a letter "
                "first (c1, c2)."
            )


def _trial_type_names(types: list[str], events) -> list[str]:
    """The default model's variable of each trial type: its own name, or pybids' Factor name
    (``trial_type.pumps_demean``) where an events column has that name (ds000001's parametric modulators are
    columns named as their trial types: the default model took the column, its map labelled with the trial type
    holding the modulator's effect, exit 0; runs whose modulator is 0 throughout failed)."""
    columns = {c.strip() for header in _events_headers(events).values() for c in header}
    return [f"trial_type.{t}" if t in columns else t for t in types]


def _events_headers(events) -> dict[Path, list[str]]:
    """The header cells, as written, of each of the `events` files (paths; None: no file) that can be read, in
    the order of their paths."""
    headers = {}
    for path in sorted({p for p in events if p is not None}):
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as fh:
                headers[path] = fh.readline().rstrip("\r\n").split("\t")
        except OSError:
            continue
    return headers


def _mask_entities(model: dict) -> dict | None:
    """The Run node's ``Options.Mask`` entities (pybids names), or None."""
    for node in model.get("Nodes", ()):
        mask = (node.get("Model", {}).get("Options") or {}).get("Mask")
        if node.get("Level", "").lower() == "run" and isinstance(mask, dict):
            return {_long(k): v for k, v in mask.items()}
    return None


def _long(key: str) -> str:
    short = {v: k for k, v in ENTITIES.items()}
    return short.get(key, key)


# The value given to an input's grouping entity that it lacks where other inputs have one (a subject without sessions
# beside subjects with them): pybids would copy such an input into the group of every value it saw (its runs fitted
# once per session of the others, then counted as many times at the subject level); with this value it makes a group
# of its own, whose entity is absent again for voxfit (_value).
_ABSENT = "\x00absent"

# what pybids (and pandas under it) raise on tables and models it cannot read: bad input, said as the node's or
# run's failure (a Factor of a column with n/a: TypeError; a sidecar's dict taken for an entity: NotImplementedError)
_PYBIDS_ERRORS = (ValueError, KeyError, TypeError, AttributeError, NotImplementedError)


def _value(v):
    """An entity's value as one text whatever pandas made of it (1, 1.0, '1' -> '1'); None for NaN (and for
    :data:`_ABSENT`)."""
    return None if isinstance(v, str) and v == _ABSENT else value_text(v)


_KEYS = tuple(ENTITIES) + ("contrast",)


def _key(entities: dict) -> tuple:
    return tuple((k, _value(entities.get(k))) for k in _KEYS if _value(entities.get(k)) is not None)


def _group_label(entities: dict) -> str:
    """A group's entities as in file names, then any other key it is grouped by (a participants.tsv column)."""
    parts = [f"{ENTITIES.get(k, k)}-{v}" for k, v in _key(entities)]
    parts += [f"{k}-{_value(entities[k])}" for k in grouped_by_others(entities) if _value(entities[k]) is not None]
    return "_".join(parts) or "all"


def _file_stamp(paths) -> list:
    """(path, size, mtime_ns) of each file (None for a missing one): what a checksum of the inputs covers."""
    out = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        try:
            st = Path(p).stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def _grid_selectors(runs) -> dict:
    """pybids selectors of the BOLD files of `runs` by space, resolution and density (an entity none of them
    has: absent), so that pybids reads each run's tables once, not once per output space of fMRIPrep's."""
    from bids.layout import Query

    selectors = {}
    for key in ("space", "res", "den"):
        values = {r.entity.get(key) for r in runs}
        if values == {None}:
            selectors[key] = Query.NONE
        elif None not in values:
            selectors[key] = sorted(map(str, values))
    return selectors


def _spec_strings(value) -> list[str]:
    """Every text a node's specification holds (its values, at any depth): the names it may use."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [s for item in items for s in _spec_strings(item)]


def _named_columns(spec: dict, tables) -> tuple[list[str], tuple[str, ...]]:
    """The confounds columns a Run node can use, and those it cannot: a column is used when the node names it
    anywhere (Model.X, a transformation's Input or Query, a contrast), whole, as a word of an expression, or
    through a wildcard pattern. pybids makes a variable of every column it reads, 5 ms each: fMRIPrep's
    tables have hundreds, the models a few."""
    strings = _spec_strings(spec)
    words = set(strings) | {w for s in strings for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)}
    patterns = [s for s in strings if re.search(r"[*?\[]", s)]
    header: dict[str, None] = {}
    for table in tables:
        with open(table, encoding="utf-8", errors="replace") as fh:
            header.update(dict.fromkeys(fh.readline().rstrip("\r\n").split("\t")))
    used = [c for c in header if c in words or any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return used, tuple(c for c in header if c not in used)


def _unused_columns(spec: dict, columns) -> set[str]:
    """The `columns` (sessions.tsv's) that node `spec` does not name anywhere (as :func:`_named_columns` reads a
    Run node's confounds): pybids merges every column of every subject's table, and one whose cells a subject left
    all n/a (acq_time, in an anonymised dataset) is numbers there and words in the others' tables, which failed
    every subject's groups ("merge on str and float64 columns") though the model took no column of the table."""
    strings = _spec_strings(spec)
    words = set(strings) | {w for s in strings for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)}
    patterns = [s for s in strings if re.search(r"[*?\[]", s)]
    return {c for c in columns if c not in words and not any(fnmatch.fnmatchcase(c, p) for p in patterns)}


def _content(paths) -> list:
    """(path, SHA-256 of the bytes) of each small file (tables, sidecars); None for a missing one."""
    out = []
    for p in paths:
        try:
            out.append(None if p is None else [str(p), hashlib.sha256(Path(p).read_bytes()).hexdigest()])
        except OSError:
            out.append([str(p), None])
    return out


# Raised whenever what a study computes from the same inputs changes within a version, so that a rerun refits
# rather than reusing what an earlier build made (2: a subject without sessions beside subjects with them is
# grouped once; covariates with gaps are refused rather than filled with 0; each run its own trial types; 3: each
# group's record names its study and lists its files, so that a rerun can tell what it leaves stale: _remove_stale;
# 4: Model.Type read, the events' modulation, fMRIPrep's cosines as the high-pass, AR variances held positive,
# cluster inference's maps written, GIFTI runs' own confounds; 5: meta nodes' fixed effects take the estimated
# weights' error into account (Kenward-Roger), their t maps passed on with the median of their effective dof;
# 6: --inference rft on models whose dof vary by voxel takes T and F fields of the median dof, not Z fields).
STUDY_RULES = 6


def _checksum(*parts) -> str:
    """The key of a study, a run or a group: what its results depend on (and :data:`STUDY_RULES`)."""
    return hashlib.sha256(json.dumps((STUDY_RULES, *parts), sort_keys=True, default=str).encode()).hexdigest()


def _read_bids(record_path: Path) -> dict | None:
    """The ``settings.bids`` part of a group's model.json, or None when it cannot be read; its outputs' maps, which
    the record names by their file names (they lie beside it: the folder may move), as paths."""
    try:
        bids = json.loads(Path(record_path).read_text())["settings"]["bids"]
        for o in bids.get("outputs", {}).values():
            o["effect"], o["variance"] = (
                str(Path(record_path).parent / Path(o[k]).name) for k in ("effect", "variance")
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return bids


def _subjects_dropped(record_path: Path, extra: dict) -> list[str]:
    """The note of a dataset group refitted without subjects that the group it replaces had (its record at
    `record_path`, written by an earlier study: a --participant-label subset, subjects whose inputs now fail); []
    for other groups."""
    used = extra.get("subjects_used")
    before = (_read_bids(record_path) or {}).get("subjects_used") if used is not None else None
    if not isinstance(before, list):
        return []
    gone = sorted(set(map(str, before)) - set(used))
    if not gone:
        return []
    return [
        f"replaces the group of {len(before)} subjects written before, without {', '.join(gone)} now ({len(used)} "
        "subjects: --participant-label, or their inputs failed)"
    ]


def _outputs_intact(bids: dict, record_path: Path) -> bool:
    """Whether a group's maps passed on are all there and are those it wrote: its record unedited and each effect
    and variance map of the digest it holds (a map copied over another after the study had been passed on to the
    next level as the group's own, the dataset group refitted from it with nothing said)."""
    from ..models.record import ModelRecord

    maps = [Path(f) for o in bids.get("outputs", {}).values() for f in (o["effect"], o["variance"])]
    if not all(f.is_file() for f in maps):
        return False
    try:
        record = ModelRecord.read(record_path)
        for f in maps:
            record.check_output(f)
    except InputError:
        return False
    return True


def _node_result(bids: dict, record_path: Path) -> NodeResult:
    """A reused group's result from its record's ``bids`` part."""
    return NodeResult(
        bids["node"],
        bids["level"],
        tuple((k, v) for k, v in bids["entities"].items() if v is not None),
        tuple(o["label"] for o in bids["outputs"].values()),
        (Path(record_path),),
        reused=True,
        notes=tuple(bids.get("notes", ())),
    )


def _check_study_folder(out_dir: Path, bids_dir: Path, derivatives: list[Path], force: bool) -> None:
    """Before anything is written: the output folder is neither the dataset nor one of its derivatives (whose
    dataset_description.json the study's would replace), and, unless `force`, it is empty, or a voxfit study's
    (its ``.voxfit`` folder, or a description voxfit generated), whose groups are reused or refitted."""
    sources = [(bids_dir, "the BIDS dataset", bids_dir / "derivatives" / "voxfit")]
    sources += [(d, "a --derivatives folder", d.parent / "voxfit") for d in derivatives]
    for source, what, example in sources:
        if source.is_dir() and out_dir.exists() and os.path.samefile(out_dir, source):
            raise InputError(f"the output folder {out_dir} is {what}; give a folder of its own (e.g. {example}).")
    if force or not out_dir.is_dir() or (out_dir / ".voxfit").is_dir() or not _visible(out_dir):
        return  # (hidden files only, as Finder's .DS_Store or a .gitkeep: empty)
    try:
        generated = json.loads((out_dir / "dataset_description.json").read_text()).get("GeneratedBy") or []
        ours = any(isinstance(g, dict) and g.get("Name") == "voxfit" for g in generated)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise InputError(
            f"output folder {out_dir} is not empty and holds no voxfit study; choose an empty folder, or pass `force` "
            "to write into it (files of the same names are replaced)."
        )


def _numbers(X, rows: list[dict]):
    """A group's design as numbers: a value that is missing (n/a) or not a number (a participants.tsv column
    with a gap or a word) is refused, naming the inputs, rather than filled with 0 or left to fail in the fit."""
    import pandas as pd

    values = X.apply(pd.to_numeric, errors="coerce").astype(float)
    for column in values.columns:
        missing = np.flatnonzero(~np.isfinite(values[column].to_numpy()))
        words = sorted({str(w) for w in X[column].iloc[missing] if isinstance(w, str) and w.strip().lower() != "n/a"})
        if words and missing.size == len(values):  # (a column of levels, a group's: Factor makes its columns)
            raise InputError(
                f"the design's column {column!r} holds words ({listed(words, 4)}), not numbers: a Factor "
                f'transformation of it makes a column per level (Model.X: "{column}.{words[0]}", ...), or give its '
                "levels as numbers in participants.tsv."
            )
        if missing.size:  # (each input named by its subject and what tells it from the group's others)
            gaps = list(dict.fromkeys(_told_apart(rows, i) for i in missing))
            raise InputError(
                f"the design's column {column!r} has no number for {listed(gaps)} (n/a or text in participants.tsv, "
                "sessions.tsv or scans.tsv?); fill it, or leave those subjects out (--participant-label)."
            )
    return values


def _told_apart(rows: list[dict], i: int) -> str:
    """Input `i` of a group, for a message: its subject and session, and the entities in which the group's inputs
    differ (a subject's runs), not those they share (the contrast, the suffix)."""
    keys = {k for row in rows for k in row}
    varying = {k for k in keys if len({str(_value(row.get(k))) for row in rows}) > 1}
    return _group_label({k: v for k, v in rows[i].items() if k in varying or k in ("subject", "session")})


def _left_behind(inputs, group, filters: dict, participants: set[str] | None, sessions: dict) -> list[str]:
    """The inputs that belong to a group (its entities, the node's filters) that pybids left out of it for want of
    a row in participants.tsv (ids `participants`; None: no table) or in their subject's sessions.tsv (`sessions`,
    each subject's that has one), when the node's Model.X takes a column of it. Inputs the model leaves out itself
    (a Filter or DropNA transformation) have their rows."""
    entities = {k: _value(v) for k, v in group.entities.items() if _value(v) is not None}
    have = {_key(row) for row in group.metadata.to_dict("records")}
    out = []
    for _, ents in inputs:
        if all(_value(ents.get(k)) == v for k, v in entities.items()) and _passes(ents, filters):
            subject, session = _value(ents.get("subject")), _value(ents.get("session"))
            no_row = participants is not None and subject not in participants
            no_row |= session is not None and subject in sessions and session not in sessions[subject]
            if _key(ents) not in have and subject is not None and no_row:
                out.append(_input_name(ents))
    return out


def _table_lines(path: Path) -> list[list[str]]:
    """A table's lines of cells as written (blank lines too): participants.tsv's, a scans.tsv's; none where it is
    absent or unreadable (pybids' index says so where a node reads it)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.reader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _table_gap(rows: list[list[str]], spec: dict, subjects) -> tuple[str, list[str]] | None:
    """A column of participants.tsv (`rows`, the header first) that the node `spec` takes (its Model.X or a
    Transformation's Input) with no value (:func:`_missing_cells`) for some of `subjects`: ``(column, ["sub-03",
    ...])``."""
    taken = list((spec.get("Model") or {}).get("X", ()))
    for instruction in _instructions(spec):
        taken += _listed_names(instruction.get("Input"))
    return _missing_cells(rows, taken, subjects)


def _missing_cells(rows: list[list[str]], columns, subjects, rowless: bool = False) -> tuple[str, list[str]] | None:
    """The first of `columns` of participants.tsv (`rows`, the header first) with no value (a cell pandas, and so
    pybids, reads as missing: :data:`PANDAS_MISSING`) for some of `subjects` (with `rowless`, a subject without a
    row counts too): ``(column, ["sub-03", ...])``, or None."""
    if not rows or "participant_id" not in rows[0]:
        return None
    header, at = rows[0], rows[0].index("participant_id")
    wanted = {str(s) for s in subjects}
    listed_ids = {r[at].removeprefix("sub-") for r in rows[1:] if len(r) > at}
    for column in dict.fromkeys(x for x in columns if isinstance(x, str) and x in header and x != "participant_id"):
        j = header.index(column)
        where = [
            r[at]
            for r in rows[1:]
            if len(r) > max(at, j) and r[at].removeprefix("sub-") in wanted and r[j] in PANDAS_MISSING
        ]
        where += sorted(s for s in wanted if s not in listed_ids) if rowless else []
        if where:
            return column, [w if w.startswith("sub-") else f"sub-{w}" for w in where]
    return None


def _ungrouped(node: str, column: str, where: list[str]) -> str:
    """Why a Dataset node grouped by participants.tsv's `column` is refused: the subjects `where` have no value."""
    return (
        f"participants.tsv's column {column!r}, by which node {node} groups (GroupBy), has no value (n/a, or no row) "
        f"for {listed(where)}; fill it, or leave those subjects out (--participant-label)."
    )


def _participants_rows(lines: list[list[str]]) -> list[list[str]]:
    """participants.tsv's rows of cells, stripped of the white space pandas strips reading them for pybids (ASCII:
    a no-break space beside a number is text to pandas, which the group fit refused after every run was fitted),
    its header first (its blank lines left out)."""
    return [[c.strip(_PANDAS_SPACE) for c in r] for r in lines if any(c.strip(_PANDAS_SPACE) for c in r)]


_PANDAS_SPACE = " \t\r\n\x0b\x0c"
# the cells pandas.read_csv reads as missing by default (its na_values, case as written), with which pybids reads
# participants.tsv and sessions.tsv: "NULL", "None" or "#N/A" for a subject's group put it in every group where
# voxfit's own tables' rule (n/a, na, nan, empty in any case) saw a value, and "na" is a word to pandas
PANDAS_MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"}
    | {"NULL", "NaN", "None", "n/a", "nan", "null"}
)


def _run_collection(collections: list, entity: dict):
    """One collection of the run's variables from pybids' collections for its entities: each variable once, of
    this run's files. A GIFTI run is two BOLD files (a hemisphere each), and pybids gives its events to one of them
    only and its confounds to both, and, loaded a subject at a time, another subject's confounds among them:
    merged, every confounds column was twice the run's length (or more), and the other hemisphere had no events."""
    from bids.variables import merge_collections as merge

    if len(collections) == 1:
        return collections[0]
    if entity.get("hemi") is None:
        return merge(collections)
    mine = {k: entity_label(_value(entity[k])) for k in RAW if k in entity}
    kept: dict = {}
    for collection in collections:
        for name, variable in collection.variables.items():
            infos = getattr(variable, "run_info", None) or []
            ours = all(all(entity_label(_value(i.entities.get(k))) == v for k, v in mine.items()) for i in infos)
            if infos and ours and name not in kept:
                kept[name] = variable
    if not kept:
        raise InputError(
            f"pybids' variables of {_group_label(entity)} name none of its files; check the run's entities."
        )
    return merge([type(collections[0])(list(kept.values()))])


def _check_pooled_contrasts(node: _Node, entities: dict, rows: list[dict], X: np.ndarray) -> None:
    """A group above the run level that takes inputs of several contrasts (a GroupBy without contrast): refused at
    the dataset level where it holds a subject twice (the group model takes one map per subject, and a subject's
    maps are not independent rows: fitted as such, an unpaired test with the dof of twice the subjects); refused
    where a row of the design `X` is all zeros (an input of no column: Model.X names the indicators of some of the
    contrasts, not of this one); said in a warning below the dataset level where rows of different contrasts have
    the same design row (fixed effects pool them into one effect, as asked). Not said where the design tells the
    contrasts apart (their indicators, or an intercept and an indicator, in Model.X)."""
    if _value(entities.get("contrast")) is not None:
        return
    named = [str(_value(r.get("contrast"))) for r in rows]
    contrasts = sorted(set(named))
    if len(contrasts) < 2:
        return
    subjects = [_value(r.get("subject")) for r in rows]
    if node.level == "dataset" and len(set(subjects)) < len(subjects):
        raise InputError(
            f"it takes each subject's maps of the contrasts {listed(contrasts)} in one group (the node's GroupBy, "
            f"{node.spec.get('GroupBy') or []}, lacks contrast), as independent rows, which a subject's maps are not; "
            'add "contrast" to its GroupBy (a group per contrast), or compare the contrasts at the subject level '
            "(a Subject node whose contrast is their difference) and pass that on."
        )
    if zero := [named[i] for i in np.flatnonzero(~X.any(axis=1))]:
        raise InputError(
            f"the maps of contrast {zero[0]} are rows of no column of its design (Model.X names the indicators of "
            "other contrasts, not of this one); name it in Model.X, or pass on only the contrasts it names (a "
            "Filter on contrast in the edge to the node)."
        )
    rows_of = {}
    for name, row in zip(named, map(tuple, X.tolist())):
        rows_of.setdefault(row, set()).add(name)
    if node.level != "dataset" and any(len(names) > 1 for names in rows_of.values()):
        warnings.warn(
            f"node {node.name}: its GroupBy lacks contrast, so each of its groups pools the maps of the contrasts "
            f'{listed(contrasts)} into one effect; add "contrast" to its GroupBy for one each.',
            UserWarning,
            stacklevel=2,
        )


def _check_factor_levels(node: _Node, rows: list[dict], X: np.ndarray, names: list[str]) -> None:
    """A group's input whose design row is all zeros where Model.X names the levels of a column the node's Factor
    splits (``group.control``, ``group.patient``): its value is a level Model.X leaves out, often a typo
    (``"patient "``, ``Patient``) in participants.tsv. Fitted, it stays in the residuals as an effect of 0 and
    moves every estimate, without a word; refused, naming the inputs and the levels named."""
    zero = np.flatnonzero(~X.any(axis=1))
    if not zero.size:
        return
    instructions = _instructions(node.spec)
    factored = [c for i in instructions if i.get("Name") == "Factor" for c in _spec_strings(i.get("Input"))]
    inputs = ["_".join(f"{k[:3]}-{_value(rows[i][k])}" for k in ("subject", "session") if rows[i].get(k)) for i in zero]
    for column in factored:
        levels = [n for n in names if n.startswith(f"{column}.")]
        if levels:
            raise InputError(
                f"node {node.name}: the design row of {listed(inputs)} is all zeros: its {column} is a level Model.X "
                f"does not name (it names {listed(levels)}), so it would be fitted as an effect of 0; correct its "
                "value in participants.tsv (spaces, capitals?), name its level in Model.X, or leave it out "
                "(--participant-label)."
            )


def _correlated_inputs(rows: list[dict], X: np.ndarray, weights: dict) -> list[str]:
    """The notes of a group whose contrasts combine maps of different contrasts of one input below (a GroupBy
    without contrast and their indicators in Model.X, FitLins' idiom: a subject's A - B from its runs' A and B).
    Each map's variance is in its file, but not the covariance of a run's two contrasts (their estimates share the
    run's noise), so the group takes them as independent: the combination's variance is approximate, too large or
    too small (1.5-1.65x too large for congruent + IvC, IvC being incongruent - congruent). An input's rows that
    enter a contrast are those of the nonzero entries of ``pinv(X)' c'``."""
    named = [str(_value(r.get("contrast"))) for r in rows]
    if len(set(named)) < 2 or not X.size:
        return []
    inputs = [_key({**r, "contrast": None}) for r in rows]  # (each map's input below: its entities but contrast)
    influence = np.linalg.pinv(X).T  # (X pinv(X'X), of X's condition number rather than its square)
    notes = []
    for label, w in weights.items():
        h = np.abs(influence @ np.atleast_2d(w).T).max(axis=1)
        entering: dict[tuple, set[str]] = {}
        for i in np.flatnonzero(h > 1e-9 * max(h.max(), 1e-300)):
            entering.setdefault(inputs[i], set()).add(named[i])
        shared = [(where, sorted(names)) for where, names in entering.items() if len(names) > 1]
        if shared:
            where, names = shared[0]
            notes.append(
                f"contrast {label} combines the maps of {' and '.join(names)} of the same input "
                f"({_group_label(dict(where))}{', and others' if len(shared) > 1 else ''}) as if "
                "independent: their covariance is in no map, so its variance is approximate, too large or too "
                "small; for an exact one, make the combination a contrast of the node below and pass it on."
            )
    return notes


def _dof_per_map(rows: list[dict], dofs: list[float]) -> list[float]:
    """Each map's first-level dof as the fixed-effects sum takes them: the maps of different contrasts of one input
    below (a GroupBy without contrast) are estimates from that input's one noise, so they share its dof (the mean
    of theirs), counted once: a subject's A - B from two runs' A and B had the dof of four runs (104 for 51). (Fixed
    effects' Kenward-Roger terms then take the shares as independent estimates, each on its share: conservative,
    where the maps' variances, from one noise, are estimated together on the whole.)"""
    inputs = [_key({**r, "contrast": None}) for r in rows]
    maps: dict[tuple, list[float]] = {}
    for where, dof in zip(inputs, dofs):
        maps.setdefault(where, []).append(dof)
    return [float(np.mean(maps[where])) / len(maps[where]) for where in inputs]


def _maps_by_subject(rows: list[dict]) -> dict[str, list[dict]]:
    """A group's input `rows` by their subject (rows without one left out)."""
    seen: dict[str, list[dict]] = {}
    for row in rows:
        if (subject := _value(row.get("subject"))) is not None:
            seen.setdefault(subject, []).append(row)
    return seen


def _check_one_map_per_subject(node: _Node, rows: list[dict], group_model: str) -> None:
    """A dataset-level group holding several maps of one subject (a Session node's maps grouped by contrast alone,
    or runs passed on to the dataset), refused before its fit saying what to do, where the group model takes one map
    per subject (mixed, fixed): the group tool refused it after every fit, in a line listing every map's path
    (kilobytes). OLS (which takes the maps as independent rows, as before) and Model.Type meta take them all."""
    if node.level != "dataset" or group_model == "ols" or (node.spec.get("Model") or {}).get("Type") == "meta":
        return
    seen = _maps_by_subject(rows)
    twice = {s: r for s, r in seen.items() if len(r) > 1}
    if not twice:
        return
    subject, held = next(iter(twice.items()))
    key = _apart(held)
    values = sorted({str(_value(r.get(key))) for r in held}) if key else []
    what, group = (
        (f"{key}s {listed(values)}", f"add {key} to the node's GroupBy (a test per {key}), or ")
        if key
        else ("maps", "")
    )
    raise InputError(
        f"the group holds {len(held)} maps of sub-{subject} ({what}; {len(twice)} subject(s) so), and the "
        f"{group_model} group model takes one map per subject: {group}combine each subject's maps first (a Subject "
        "node between)."
    )


def _repeated_subjects(node: _Node, rows: list[dict], group_model: str) -> list[str]:
    """The note of a dataset-level OLS group holding several maps of some subjects (a Session node's maps grouped
    by contrast alone): OLS takes them as independent rows, so its dof count maps, not subjects (15 maps of 8
    subjects: dof 14), and a subject's maps, which share the subject's effect, make its p values too small. The
    group models that take one map per subject refuse it (:func:`_check_one_map_per_subject`)."""
    if node.level != "dataset" or group_model != "ols" or (node.spec.get("Model") or {}).get("Type") == "meta":
        return []
    by_subject = _maps_by_subject(rows)
    several = sorted(s for s, held in by_subject.items() if len(held) > 1)
    if not several:
        return []
    key = _apart(by_subject[several[0]])
    group = f"add {key} to the node's GroupBy (a test per {key}), or " if key else ""
    return [
        f"the group holds {len(rows)} maps of {len(by_subject)} subjects (several of {len(several)}: sub-"
        f"{', sub-'.join(several[:5])}{', ...' if len(several) > 5 else ''}), which OLS takes as independent: its "
        f"dof count maps, not subjects, and its p values are too small where a subject's maps share its effect; "
        f"{group}combine each subject's maps first (a Subject node between)"
    ]


def _node_outputs(node, inputs: list, group_by: list[str], filters: dict) -> list:
    """pybids' ``BIDSStatsModelsNode.run(inputs, group_by, missing_values="ignore", **filters)``, less the groups
    that hold no input: pybids puts participants.tsv's collection (no contrast, no task) in every combination of the
    GroupBy's values, those no input has too (a contrast of one task under another, GroupBy contrast and task over
    two tasks), and failed on them ("reduce() of empty iterable"; the node refused, exit 2; a tester's)."""
    from bids.modeling.statsmodels import BIDSStatsModelsNodeOutput
    from bids.utils import matches_entities
    from bids.variables import BIDSVariableCollection

    inputs = [i for i in inputs if matches_entities(i, filters)] if filters else inputs
    collections = [c for c in node._collections if matches_entities(c, filters)] if filters else node._collections
    outputs = []
    for entities, held in node._build_groups(inputs + collections, group_by).items():
        given = [x for x in held if not isinstance(x, BIDSVariableCollection)]
        if given:
            tables = [x for x in held if isinstance(x, BIDSVariableCollection)]
            outputs.append(
                BIDSStatsModelsNodeOutput(
                    node=node, entities=dict(entities), collections=tables, inputs=given, missing_values="ignore"
                )
            )
    return outputs


def _apart(held: list[dict]) -> str | None:
    """The entity whose values tell one subject's maps `held` apart (task, session, run, then any other), to add to
    a GroupBy; None where none does."""
    first = ("task", "session", "run")
    keys = [*first, *sorted({k for r in held for k in r} - set(first))]
    varying = [k for k in keys if k not in ("subject", "contrast") and len({str(_value(r.get(k))) for r in held}) > 1]
    return varying[0] if varying else None


_SUBJECT_SPACES = ("T1w", "T2w", "fsnative")  # fMRIPrep's spaces of a subject's own anatomy


def _check_dataset_subjects(level: str, runs, model: dict) -> None:
    """Refuse, before anything is fitted, a study to the dataset level of one subject with runs to fit, where a
    Dataset node fits a GLM (of Model.Type glm) on one map per subject, from Subject nodes grouped by subject alone
    (and contrast): it has no dof (each group failed so once every run and subject was fitted, a tester's). A meta
    node passes one subject's maps on; a node fed by runs or sessions (Run -> Dataset) has a row of each (a
    reviewer's: refused, where it was fitted)."""
    from .spec import node_edges

    subjects = sorted({str(r.entity.get("subject")) for r in runs if not r.problems})
    nodes = model.get("Nodes", ())
    by_name = {n.get("Name"): n for n in nodes}
    edges = node_edges(model)

    def one_per_subject(node: dict) -> bool:
        sources = [by_name.get(source) for source, destination in edges if destination == node.get("Name")]
        return bool(sources) and all(
            s is not None
            and str(s.get("Level", "")).lower() == "subject"
            and set(s.get("GroupBy") or ()) <= {"subject", "contrast"}
            for s in sources
        )

    glm = [n for n in nodes if str(n.get("Level", "")).lower() == "dataset" and one_per_subject(n)]
    glm = [n for n in glm if (n.get("Model") or {}).get("Type", "glm") != "meta"]
    if level == "dataset" and glm and len(subjects) == 1:
        raise InputError(
            f"the dataset level's group model (node {glm[0].get('Name')}) needs two subjects or more, and only "
            f"sub-{subjects[0]} has runs to fit here: fit up to the subject level (voxfit bids ... subject), or "
            "choose more subjects (--participant-label)."
        )


def _own_space(r) -> bool:
    """Whether run `r` is in its own space: a volume named without space- (BIDS: the data's own; fMRIPrep 24's
    --output-spaces run), whatever its mask's name (fMRIPrep 24 names it space-run, or without space- too: such runs
    were pooled up to the dataset level, exit 0, a tester's), or one whose brain mask is space-run."""
    return (_is_volume(r.bold) and not r.entity.get("space")) or (r.mask is not None and "_space-run_" in r.mask.name)


def _check_own_space_levels(level: str, runs, levels=("run", "subject", "dataset")) -> None:
    """Refuse, before anything is fitted, a study above the run level of runs in their own space (fMRIPrep 24's
    ``--output-spaces run``: no space-, a ``space-run`` brain mask): each run's grid is its own reference's, and
    runs are not aligned with one another, even where their grids' affines agree; and a dataset level of several
    subjects' runs in their own anatomy's space (T1w, fsnative), which no two subjects share, or at several
    resolutions or densities of a space (fsLR den-91k and den-170k; the dataset node failed on maps of other grids,
    after every run and subject was fitted, or pooled the grids where they were of one size)."""
    own = next((r for r in runs if not r.problems and _own_space(r)), None)
    if level != "run" and own is not None:
        raise InputError(
            f"{own.bold.name} is in its run's own space, which no other run shares (fMRIPrep aligns runs in T1w or a "
            f"template space): fit the run level alone (voxfit bids ... run --space run), or choose a space the "
            "runs share with --space."
        )
    grids: dict[str, set[str]] = {}  # (each resolution or density of the runs fitted: their subjects)
    for r in runs:
        if not r.problems:
            grid = ":".join(f"{k}-{r.entity[k]}" for k in ("res", "den") if k in r.entity) or "res-native"
            grids.setdefault(grid, set()).add(str(r.entity.get("subject")))
    if level == "dataset" and len(grids) > 1:  # (the dataset node failed on maps of another grid, once all were fit)
        space = next(str(r.entity.get("space")) for r in runs if not r.problems)
        said = "; ".join(f"{g} ({listed(sorted(f'sub-{s}' for s in subs), 3)})" for g, subs in sorted(grids.items()))
        most = max(grids, key=lambda g: len(grids[g]))
        raise InputError(
            f"the runs of space {space} are at several resolutions or densities across subjects ({said}), and the "
            f"dataset level needs one grid: choose one with --space {space}:{most} (the subjects without it fail "
            "alone), or resample the others' runs to it."
        )
    subjects = {str(r.entity.get("subject")) for r in runs}
    anatomical = next((r for r in runs if r.entity.get("space") in _SUBJECT_SPACES), None)
    if level == "dataset" and anatomical is not None and len(subjects) > 1:
        space = anatomical.entity["space"]
        below = next((lv for lv in ("subject", "session", "run") if lv in levels), "run")  # (the model's levels)
        raise InputError(
            f"{anatomical.bold.name} is in space {space}, its subject's own anatomy, which no other subject shares: "
            "the dataset level needs the subjects' maps in one template space (MNI152NLin2009cAsym, fsaverage, "
            f"fsLR...); choose it with --space, or fit up to the {below} level (voxfit bids ... {below} --space "
            f"{space})."
        )


def _check_surface_inference(settings: _Settings, surface: Path | None) -> None:
    """Refuse, before anything is fitted, the group inference a study cannot run on surface maps: TFCE and cluster
    inference need each hemisphere's mesh (voxfit group --mesh; a study takes none), RFT a volume."""
    if surface is None or not (settings.tfce or settings.cluster_threshold or settings.rft):
        return
    option = "--tfce" if settings.tfce else "--cluster-threshold" if settings.cluster_threshold else "--inference rft"
    if settings.rft:
        raise InputError(
            f"--inference rft is for volumes, and {surface.name} is a surface or CIFTI run: drop it (the maximum "
            "statistic's FWE p with --permutations needs no mesh), or choose volume runs with --space."
        )
    if str(surface).endswith(".gii"):
        raise InputError(
            f"{option} on surfaces needs each hemisphere's mesh, which a study is not given: drop it (--permutations "
            "alone gives the maximum statistic's FWE p), or run voxfit group --mesh on the subjects' maps."
        )
    raise InputError(  # (CIFTI: voxfit's clusters and TFCE do not cross its surfaces and voxels yet)
        f"{option} is not done on CIFTI files ({surface.name}): drop it (--permutations alone gives the maximum "
        "statistic's FWE p), or choose volume runs with --space."
    )


def _check_aroma(settings: _Settings, desc: str | None) -> None:
    """--confounds-strategy ica_aroma is for fMRIPrep's non-aggressively denoised runs, as nilearn's is: the
    aroma_motion columns are already out of them, and the strategy adds none (refused for others, which it would
    fit without any motion regressor)."""
    from ..design.confounds import parse_strategy

    strategy = settings.confounds_strategy  # (checked in _run_iv: parsed without fail)
    if strategy and parse_strategy(strategy)[0] == "ica_aroma" and desc != "smoothAROMAnonaggr":
        raise InputError(
            f"--confounds-strategy ica_aroma is for fMRIPrep's runs denoised by ICA-AROMA (desc-smoothAROMAnonaggr), "
            f"and the runs chosen are desc-{desc}: add --desc smoothAROMAnonaggr, or choose another strategy."
        )


def _check_dataset_inference(model: dict, settings: _Settings) -> None:
    """Refuse a group model's inference (--permutations, --tfce, --cluster-threshold, --inference rft) for a model
    whose Dataset nodes are all of Model.Type meta: fixed effects, which none of them would apply to; and for an
    F contrast of one row at the dataset level, which that inference would take for a one-sided t."""
    datasets = [n for n in model.get("Nodes", ()) if str(n.get("Level", "")).lower() == "dataset"]
    asked = [
        option
        for option, value in (
            ("--permutations", settings.permutations),
            ("--tfce", settings.tfce),
            ("--cluster-threshold", settings.cluster_threshold),
            ("--inference rft", settings.rft),
        )
        if value
    ]
    if not datasets or not asked:
        return
    if all((n.get("Model") or {}).get("Type") == "meta" for n in datasets):
        raise InputError(
            f"{asked[0]} is inference of a group model, and the model's Dataset node is of Model.Type meta (fixed "
            "effects over the subjects, inference to them alone); make it glm, or leave the option out."
        )
    for node in (n for n in datasets if (n.get("Model") or {}).get("Type") != "meta"):  # (meta: no inference)
        one_row = [c.get("Name") for c in node.get("Contrasts") or () if c.get("Test") == "F" and _rows(c) == 1]
        if (node.get("DummyContrasts") or {}).get("Test") == "F":  # (a column each)
            one_row.append("its DummyContrasts")
        if one_row:
            raise InputError(
                f"node {node.get('Name')}'s F contrast of one row ({one_row[0]}) asks for a two-sided test, and "
                f"{asked[0]} tests one row one-sided, as a t; give it Test t (one-sided), or leave the option out."
            )


def _rows(contrast: dict) -> int:
    """The rows of a model's contrast: its Weights are a list of numbers (one) or of lists (one each)."""
    weights = contrast.get("Weights") or []
    return len(weights) if weights and isinstance(weights[0], list) else 1


def _participant_ids(rows: list[list[str]]) -> list[str] | None:
    """The labels of participants.tsv's participant_id column (`rows`: :func:`_participants_rows`), sub- taken
    off, in the table's order; None without that column."""
    if not rows or "participant_id" not in rows[0]:
        return None
    j = rows[0].index("participant_id")
    return [r[j].removeprefix("sub-") if len(r) > j else "" for r in rows[1:]]


def _input_name(entities: dict) -> str:
    """An input of a higher node, for a message: its subject and session where it has them."""
    named = {k: entities[k] for k in ("subject", "session") if _value(entities.get(k)) is not None}
    return _group_label(named or entities)


def _sessions_tables(bids_dir: Path) -> tuple[list[str], dict[str, set[str]]]:
    """The columns of the dataset's sessions.tsv files (their header lines), and each subject's sessions as its
    table lists them (labels without ``ses-``; tables with a session_id column, found by its name as pybids
    finds it, wherever it is: BIDS puts it first, and users' tables do not always), each table read once
    (unreadable ones: none; pybids says so where a node reads them)."""
    columns: dict[str, None] = {}
    ids = {}
    for path in sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        rows = [[c.strip() for c in r] for r in _table_lines(path) if any(c.strip() for c in r)]
        if not rows:
            continue
        columns.update(dict.fromkeys(c for c in rows[0] if c != "session_id"))
        if "session_id" in rows[0]:
            j = rows[0].index("session_id")
            subject = path.name[len("sub-") : -len("_sessions.tsv")]
            ids[subject] = {r[j].removeprefix("ses-") for r in rows[1:] if len(r) > j}
    return list(columns), ids


def _subject_sessions(root: Path, subject: str) -> tuple[Path, list[dict[str, str]]]:
    """A subject's sessions.tsv and its rows, each as {column: cell} (stripped; ``session_id`` without ``ses-``,
    found by its name wherever it is); no rows where the table is missing, empty or has no session_id column."""
    path = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    rows = _participants_rows(_table_lines(path))
    if not rows or "session_id" not in rows[0]:
        return path, []
    table = [dict(zip(rows[0], r)) for r in rows[1:]]
    for row in table:
        row["session_id"] = row.get("session_id", "").removeprefix("ses-")
    return path, table


def _contrast_names(node: dict) -> set[str]:
    """The names of a node's contrasts (its Contrasts and the DummyContrasts it lists): what the nodes after it
    may name in their Model.X."""
    names = {str(c.get("Name")) for c in node.get("Contrasts") or ()}
    return names | {str(x) for x in (node.get("DummyContrasts") or {}).get("Contrasts") or ()}


# the level whose nodes pybids gives each table's columns (its variables' levels)
_TABLE_LEVELS = {"participants": "dataset", "sessions": "subject"}


def _check_table_levels(model: dict, tables: dict[str, list[str]]) -> None:
    """A node's Model.X naming a column of participants.tsv or sessions.tsv at a level pybids gives that table to
    no node of: participants.tsv's to Dataset nodes, sessions.tsv's to Subject nodes (a subject's sessions). pybids
    failed on it ("not found in data matrix") once every run was fitted. Names of another table, that another node
    makes (a contrast) or that the node's Transformations output are left to pybids (a Scale of the column in place
    is not such an output: the node still needs the table's column)."""
    nodes = model.get("Nodes") or ()
    made = {name for n in nodes for name in _contrast_names(n)}
    made |= {str(x) for n in nodes if str(n.get("Level", "")).lower() == "run" for x in n["Model"].get("X") or ()}
    for node in nodes:
        level = str(node.get("Level", "")).lower()
        if level == "run":
            continue
        taken = made | _transformation_outputs(node)
        for term in (x for x in (node.get("Model") or {}).get("X") or () if isinstance(x, str) and x not in taken):
            if term in ENTITIES or term in ENTITIES.values():
                raise InputError(
                    f'node {node.get("Name")}: Model.X names "{term}", an entity of its inputs, which pybids then '
                    "takes out of them (their maps could not be found, and a label is no number); give a column of "
                    "numbers instead (sessions.tsv's or scans.tsv's, as a session's or run's), or group by it "
                    "(GroupBy)."
                )
            theirs = [t for t, columns in tables.items() if term in columns]
            if theirs and all(_TABLE_LEVELS[t] != level for t in theirs):
                table = theirs[0]
                raise InputError(
                    f'node {node.get("Name")} ({node.get("Level")}): Model.X names "{term}", a column of {table}.tsv, '
                    f"which pybids gives only to {_TABLE_LEVELS[table].capitalize()} nodes; model it there."
                )


def _transformation_outputs(node: dict) -> set[str]:
    """The names a node's Transformations give their outputs (each instruction's Output), which need not be columns
    of a table (a Rename's)."""
    return {name for instruction in _instructions(node) for name in _listed_names(instruction.get("Output"))}


def _check_scans_tables(bids_dir: Path, model: dict, labels) -> None:
    """Where a node's Model.X takes a column of the scans.tsv files: each row of the chosen subjects' tables names a
    file of the dataset. pybids takes the entities of the rows whose files exist and puts them beside the values by
    position, so after a row of a file no longer there (a run dropped for motion) each run was given the next row's
    values (exit 0)."""
    taken = {str(x) for node in model.get("Nodes", ()) for x in (node.get("Model") or {}).get("X") or ()}
    for path in sorted([*bids_dir.glob("sub-*/sub-*_scans.tsv"), *bids_dir.glob("sub-*/ses-*/sub-*_scans.tsv")]):
        subject = next(p for p in path.relative_to(bids_dir).parts if p.startswith("sub-")).removeprefix("sub-")
        if labels and subject not in labels:
            continue
        lines = _table_lines(path)
        if not lines or "filename" not in lines[0] or not taken & set(lines[0]):
            continue
        column = lines[0].index("filename")
        for n, row in enumerate(lines[1:], 2):
            name = row[column].strip() if len(row) > column else ""
            if name and not (path.parent / name).exists():
                raise InputError(
                    f"{path}, line {n}: {name} is not in the dataset, and pybids then gives each run after it the "
                    "next row's values of the columns the model takes; remove the row (a run left out?)."
                )


def _check_misnamed_columns(model: dict, columns: list[str], no_participants: bool = False) -> None:
    """A node above the run level whose Model.X or GroupBy names no column of participants.tsv or sessions.tsv
    (`columns`) nor anything else it could take (an entity, another node's variable or contrast), but one close to
    a column ("agee", "Age" for age): refused before anything is fitted. pybids failed on it only once every run
    was fitted. In a node with Transformations, each instruction's Input is checked against the names before it
    (the tables', and the instructions' Outputs), and Model.X against those and every Output, leaving out names
    that Factor or Split make from a column's values ("group.patient", or "sex_M" of a Sep "_": names that begin
    with the column's); names with wildcards are left to pybids. With `no_participants` (a study that reaches its
    Dataset node, of a dataset without participants.tsv), a Dataset node's name of no table at all is refused as
    such (pybids' "not found in data matrix", once every run was fitted, did not name the table: a tester's)."""
    nodes = model.get("Nodes") or ()

    def names(node: dict) -> set[str]:
        return {str(x) for x in (node.get("Model") or {}).get("X") or ()} | _contrast_names(node)

    keys = sorted({*ENTITIES, *ENTITIES.values(), "contrast"})
    for node in nodes:  # (a GroupBy key close to an entity's: "subjetc", of any node, found after every run's fit)
        for term in node.get("GroupBy") or ():
            if isinstance(term, str) and term not in keys and not difflib.get_close_matches(term, columns, 1, 0.75):
                if close := difflib.get_close_matches(term, keys, 1, 0.75):
                    raise InputError(
                        f'node {node.get("Name")}: GroupBy names "{term}", neither an entity nor a column of '
                        f'participants.tsv or sessions.tsv; did you mean "{close[0]}"?'
                    )
    for node in nodes:
        if str(node.get("Level", "")).lower() == "run":
            continue
        known = {*columns, *ENTITIES, *ENTITIES.values(), "contrast", "intercept"}
        known |= {name for other in nodes if other is not node for name in names(other)}
        terms, made = [], ()
        for instruction in _instructions(node):
            what = f"Transformations' {instruction.get('Name')} Input"
            terms += [(what, x, set(known)) for x in _listed_names(instruction.get("Input"))]
            known |= set(_listed_names(instruction.get("Output")))
            if instruction.get("Name") in ("Factor", "Split"):  # (names of the column's values: "group.patient")
                made += tuple(_listed_names(instruction.get("Input")))  # (any Sep: "sex_M" of Sep "_")
        terms += [("Model.X", x, known) for x in _listed_names((node.get("Model") or {}).get("X"))]
        terms += [("GroupBy", k, known) for k in _listed_names(node.get("GroupBy"))]
        for where, term, before in terms:
            if term in before or term.startswith(made) or any(c in term for c in "*?["):
                continue
            same = [c for c in columns if c.lower() == term.lower()]
            if close := same or difflib.get_close_matches(term, columns, 1, 0.75):
                raise InputError(
                    f'node {node.get("Name")}: {where} names "{term}", a column of no table, and participants.tsv or '
                    f'sessions.tsv has "{close[0]}"; did you mean it?'
                )
            if no_participants and str(node.get("Level", "")).lower() == "dataset":
                raise InputError(
                    f'node {node.get("Name")}: {where} names "{term}", which pybids looks for in participants.tsv, '
                    f'and the dataset has none; add it (participant_id and "{term}"), or take "{term}" out.'
                )


# Transformations that neither leave rows out nor fill in a value where the table has none (Scale's ReplaceNA, any
# option naming a replacement, is taken as filling): the table's gaps stay gaps through them
_KEEPING_ROWS = frozenset({"Demean", "Scale", "Factor", "Rename", "Copy", "Orthogonalize", "Product", "Sum", "Split"})


def _instructions(node: dict) -> list[dict]:
    """A node's Transformations' instructions (none where it has none, or they are not a list of objects: the
    model's validation says what is wrong with them)."""
    instructions = (node.get("Transformations") or {}).get("Instructions") if isinstance(node, dict) else None
    return [i for i in instructions if isinstance(i, dict)] if isinstance(instructions, list) else []


def _listed_names(value) -> list[str]:
    """The names of a model's field that holds one name or a list of them (other entries, as X's 1, left out)."""
    return (
        [value]
        if isinstance(value, str)
        else [x for x in value if isinstance(x, str)]
        if isinstance(value, list)
        else []
    )


def _refuse_repeated(path: Path, ids: list[str], prefix: str, what: str) -> None:
    """A table's ids (`ids`, its rows' in turn, `prefix` taken off: participants.tsv's subjects, a sessions.tsv's
    sessions) each once: pybids takes one of two rows of an id silently."""
    if twice := repeated(ids):
        where = [f"{prefix}{i} (lines {', '.join(str(n + 2) for n, x in enumerate(ids) if x == i)})" for i in twice]
        raise InputError(f"{path} names {listed(where)} more than once; keep one row per {what}.")


def _model_columns(model: dict, level: str) -> set[str]:
    """The names the nodes' Model.X, GroupBy and Transformations' Inputs take (a table's columns among them: a
    Factor's Input is the column, its Model.X the levels, "group.patient"), of the nodes at `level` (pybids gives
    participants.tsv's columns to Dataset nodes, a sessions.tsv's to Subject nodes)."""
    nodes = [n for n in model.get("Nodes", ()) if isinstance(n, dict) and str(n.get("Level", "")).lower() == level]
    taken = {x for node in nodes for x in _listed_names((node.get("Model") or {}).get("X"))}
    taken |= {x for node in nodes for i in _instructions(node) for x in _listed_names(i.get("Input"))}
    return taken | {k for node in nodes for k in _listed_names(node.get("GroupBy"))}


def _check_words(path: Path, lines: list[list[str]], taken: set[str], ids: str) -> None:
    """A table's (participants.tsv's, a sessions.tsv's: `lines` as written, its ids in column `ids`) header and
    the cells of its ids and of the columns the model takes (`taken`), as pybids reads them (pandas, which keeps
    the spaces around a word and its case): refused where a name or a word has spaces around it (a Factor's
    subject of 'patient ' was fitted in the reference level, a control, and a session_id 'ses-b ' left its
    session out of the subject's model, each exit 0: a tester's) or a taken column is named twice; values that
    differ only in case ('patient', 'Patient') are said, as they may be two (genotypes AA, Aa, aa)."""
    numbered = [(n, row) for n, row in enumerate(lines, 1) if any(c.strip() for c in row)]  # (as pandas skips)
    if not numbered:
        return
    header = _checked_header(path, numbered[0][1], taken)
    for j, column in enumerate(header):
        if column in taken or column == ids:
            cells = [(n, row[j] if j < len(row) else "") for n, row in numbered[1:]]
            spellings = _column_words(path, column, cells, numbers=column != ids)
            if column != ids:
                _say_cased(path, column, spellings)


def _checked_header(path: Path, cells: list[str], taken: set[str]) -> list[str]:
    """A table's header (`cells` as written), each name stripped: refused where a name the model takes has spaces
    around it (pybids keeps them: it is not that column) or is given twice."""
    header = [c.strip() for c in cells]
    for name, written in zip(header, cells):
        if name in taken and name != written:
            raise InputError(
                f"{path}: its column {written!r} has spaces around its name, which pybids keeps: it is not {name!r}, "
                "which the model takes; remove them."
            )
    if twice := [h for h in repeated(header) if h in taken]:
        raise InputError(f"{path} has two columns {twice[0]!r}, which the model takes; rename or remove one.")
    return header


def _column_words(path: Path, column: str, cells: list[tuple[int, str]], numbers: bool) -> dict[str, dict[str, int]]:
    """The words of a column (`cells`: line and cell), as ``{casefolded: {spelling: first line}}``; refused where
    one has spaces around it (a no-break space too), which pybids keeps: another value. A missing value is no
    word, nor, with `numbers` (not an ids column), a number; pandas' true and false in any case are not kept."""
    spellings: dict[str, dict[str, int]] = {}
    for n, cell in cells:
        word = cell.strip()
        if not word or word in PANDAS_MISSING or (numbers and _number(word) is not None):
            continue
        if cell != word:
            raise InputError(
                f"{path}, line {n}: {column} {cell!r} has spaces around it, which pybids keeps: it is another value "
                f"than {word!r}; remove them."
            )
        if word.casefold() not in ("true", "false"):
            spellings.setdefault(word.casefold(), {}).setdefault(word, n)
    return spellings


def _say_cased(path: Path, column: str, spellings: dict[str, dict[str, int]]) -> None:
    """A warning where a column's values differ only in case (:func:`_column_words`): two values to pybids."""
    if same := next((forms for forms in spellings.values() if len(forms) > 1), None):
        said = " and ".join(f"{form!r} (line {line})" for form, line in list(same.items())[:3])
        warnings.warn(
            f"{path}: its column {column!r} holds {said}, which differ only in case: pybids takes them for "
            f"{len(same)} values; write them one way if they are one.",
            UserWarning,
            stacklevel=2,
        )


def _check_sessions(bids_dir: Path, model: dict, columns, runs) -> None:
    """Where a node's Model.X or GroupBy takes a column of the sessions.tsv files (`columns`): the table of each
    subject of the `runs` names each of its sessions once (as participants.tsv its subjects)."""
    taken = _model_columns(model, _TABLE_LEVELS["sessions"])
    if not taken & set(columns):
        return
    for subject in sorted({str(dict(r.entities)["subject"]) for r in runs}):
        path, rows = _subject_sessions(bids_dir, subject)
        _check_words(path, _table_lines(path), taken, "session_id")
        _refuse_repeated(path, [row["session_id"] for row in rows], "ses-", "session")


def _check_participants_table(path: Path, level: str) -> None:
    """participants.tsv, where the study reaches its Dataset node: pybids reads it for every such node, whatever
    the model takes of it, and failed there once every run and subject was fitted, on a table not UTF-8, empty, or
    without its participant_id column (columns separated by spaces: one), said as "the events or confounds tables"
    (a tester's). Refused before any fit, saying what is wrong with it; one that cannot be read at all is pybids'
    to say."""
    if level != "dataset":
        return
    try:
        raw = path.read_bytes()
    except OSError:
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}), as BIDS's tables are; "
            "pybids reads it for the Dataset node: save it as UTF-8."
        ) from None
    header = next((line for line in text.splitlines() if line.strip(_PANDAS_SPACE)), None)
    if header is None:
        raise InputError(
            f"{path} is empty; pybids reads it for the Dataset node: write its header (participant_id, then the "
            "columns) and a row per subject, or remove it."
        )
    cells = header.split("\t")
    if "participant_id" in cells:
        _check_pandas_reads(path, text)
        return
    if padded := next((c for c in cells if c != "participant_id" and c.strip() == "participant_id"), None):
        raise InputError(
            f"{path} names its ids column {padded!r}, with spaces around the name, which pybids keeps: it finds "
            "no participant_id; remove them."
        )
    cells = [c.strip() for c in cells]
    near = [h for h in cells if h.lower().replace("_", "") in ("participantid", "subjectid", "subject")]
    if near:  # (pybids then fails on its key, 'subject')
        raise InputError(f"{path} names its ids {near[0]!r}; BIDS names that column participant_id: rename it.")
    how = "its columns are not separated by tabs" if "participant_id" in header else "its first line is its header"
    raise InputError(
        f"{path} has no participant_id column ({how}); BIDS's participants.tsv is tab-separated, with a column "
        "participant_id naming each subject (sub-01): write it so, or remove it."
    )


def _check_pandas_reads(path: Path, text: str) -> None:
    """participants.tsv (`text`) as pybids reads it, with pandas: refused, with pandas' reason, where it cannot
    (a quote that opens a cell no quote closes: "EOF inside string", once every run was fitted: a reviewer's)."""
    import pandas as pd

    try:
        pd.read_csv(io.StringIO(text), sep="\t")
    except (ValueError, pd.errors.ParserError) as exc:
        what = " ".join(str(exc).split())[:200]
        quote = "inside string" in what
        fix = 'a quote (") opens a cell that no quote closes: remove it, or close it' if quote else "fix the table"
        raise InputError(f"{path} is a table pybids cannot read (pandas: {what}); {fix}.") from None


def _check_participants(path: Path, lines: list[list[str]], runs, model: dict) -> None:
    """Where a node's Model.X takes a column of participants.tsv (`lines`, read from `path`): the table has its
    participant_id column, and names each subject of the `runs` once (pybids takes one of two rows of a subject
    silently) and as its folders do (sub-001 for sub-01 matched nothing)."""
    taken = _model_columns(model, _TABLE_LEVELS["participants"])
    rows = _participants_rows(lines)
    if not rows or not taken & set(rows[0]):
        return
    if "participant_id" not in rows[0]:  # (refused where the study reaches its Dataset node: _check_participants_table)
        return
    ids = _participant_ids(rows)
    _check_words(path, lines, taken, "participant_id")  # (an id with spaces around it: its subject left out)
    _refuse_repeated(path, ids, "sub-", "subject")
    mine = {_value(dict(r.entities).get("subject")) for r in runs}
    unmatched = {_id_key(s): s for s in mine - set(ids)}
    if otherwise := sorted(i for i in set(ids) - mine if _id_key(i) in unmatched):
        written = otherwise[0] if otherwise[0].casefold().startswith("sub-") else f"sub-{otherwise[0]}"
        raise InputError(
            f"{path} names {written}, but the dataset's subject is written otherwise (sub-"
            f"{unmatched[_id_key(otherwise[0])]}: case, leading zeros, a spreadsheet's '.0'); write the ids as the "
            "dataset's folders do."
        )


def _id_key(label: str) -> str:
    """A subject's label as a person reads it: case, leading zeros, a sub- prefix and a number's '.0' (a
    spreadsheet's 1.0 for 01) left out."""
    key = label.casefold().removeprefix("sub-")
    key = key.removesuffix(".0") if key.removesuffix(".0").isdigit() else key
    return key.lstrip("0") or "0"


def _check_participant_values(path: Path, rows: list[list[str]], runs, model: dict, level: str) -> None:
    """Where the study reaches a Dataset node whose Model.X or GroupBy takes a column of participants.tsv (`rows`:
    :func:`_participants_rows`) and that nothing can leave subjects out of or fill in (no Edge's Filter, and no
    Transformations on a node above the runs but those of :data:`_KEEPING_ROWS`, as Demean): each subject of the
    `runs` that can be fitted has a row, with a number in a column of Model.X (that no instruction writes) and a
    value in one of GroupBy.
    Refused before any run is fitted, as the node's group fit refuses them (:func:`_numbers`, :func:`_left_behind`)
    once every run and subject was (a study whose Dataset node demeaned age was refused only then: a tester's). A
    column of words alone is left to that fit, which says to Factor it."""
    nodes = model.get("Nodes", ())
    above = [n for n in nodes if str(n.get("Level", "")).lower() != "run"]
    instructions = [i for n in above for i in _instructions(n)]
    pruned = any(edge.get("Filter") for edge in model.get("Edges") or ()) or any(
        i.get("Name") not in _KEEPING_ROWS or any("replace" in str(k).lower() for k in i) for i in instructions
    )  # (a subject may be left out, or a gap filled, on the way to the Dataset node: DropNA, Filter, Replace...)
    if level != "dataset" or pruned or not rows or "participant_id" not in rows[0]:
        return
    written = set().union(*map(_transformation_outputs, above))
    header = [c if c not in written else None for c in rows[0]]  # (a column an instruction replaces: not the table's)
    table = dict(zip(_participant_ids(rows), rows[1:]))
    # (a subject whose every run fails is left out of the dataset's group: said by its runs' failures)
    subjects = sorted({str(_value(dict(r.entities).get("subject"))) for r in runs if not r.problems})
    for node in nodes:
        if str(node.get("Level", "")).lower() != "dataset":
            continue
        if gap := _missing_cells(rows, node.get("GroupBy") or (), subjects, rowless=True):
            raise InputError(_ungrouped(node.get("Name"), *gap))  # (pybids puts such a subject in every group)
        for column in [x for x in (node.get("Model") or {}).get("X", ()) if x in header and x != "participant_id"]:
            lacking = [f"sub-{s}" for s in subjects if s not in table]
            if lacking:
                raise InputError(
                    f"the input(s) {listed(lacking)} of the group left out of its design: {path.name} has no row for "
                    f"them, and node {node.get('Name')}'s Model.X takes its column {column!r}; add their rows, or "
                    "leave them out (--participant-label, or the model's Input)."
                )
            j = header.index(column)
            cells = {s: table[s][j] if j < len(table[s]) else "" for s in subjects}
            gaps = {f"sub-{s}": cell for s, cell in cells.items() if _number(cell) is None}
            words = [c for c in gaps.values() if c not in PANDAS_MISSING]
            if words and len(words) == len(cells) and all(_NUMBER_AS_TEXT.fullmatch(w) for w in words):
                raise InputError(  # (left to the fit, it said to Factor them, once every run was fitted)
                    f"the design's column {column!r} holds numbers written as text in {path.name} "
                    f"({', '.join(map(repr, words[:3]))}, node {node.get('Name')}); write them as numbers, a point "
                    "for a decimal comma and no unit (or, labels, make a column of each: a Factor of it)."
                )
            if gaps and not (words and len(gaps) == len(cells)):
                said = f": {words[0]!r}" if words else ""  # (a cell that reads as a number: '\xa019')
                raise InputError(
                    f"the design's column {column!r} has no number for {listed(list(gaps))} (n/a or text in "
                    f"{path.name}{said}, node {node.get('Name')}); fill it, or leave those subjects out "
                    "(--participant-label)."
                )


# a number with a decimal comma, or a unit after it ("56,5", "56y", "1.5 mg"): text to pandas, which a group fit
# would take for words of a column to Factor
_NUMBER_AS_TEXT = re.compile(r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)\s*[^\W\d_]*%?")


def _number(text: str) -> float | None:
    """A table cell's number (finite) as the group fit reads it (pandas, from pybids' table: :func:`_numbers`),
    else None: n/a, empty, a word, and what Python's float reads beyond pandas (``1_000``, digits of other
    scripts), which the group fit refused once every run was fitted."""
    if not text.isascii() or "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _passes(entities: dict, filters: dict) -> bool:
    """Whether an input's entities pass a node's filters (``{entity: value or values}``)."""
    for name, wanted in filters.items():
        allowed = {_value(w) for w in (wanted if isinstance(wanted, (list, tuple, set)) else [wanted])}
        if _value(entities.get(name)) not in allowed:
            return False
    return True


def _reuse_study(out_dir: Path, study_key: str) -> StudyResult | None:
    """The last study's results when it was complete with the same `study_key` and every file it wrote is as
    it left it (size and modification time); None otherwise."""
    try:
        manifest = json.loads((out_dir / ".voxfit" / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("study") != study_key or not isinstance(manifest.get("files"), dict):
        return None
    for path, stamp in manifest["files"].items():
        if _file_stamp([path])[0][1:] != stamp:
            return None
    nodes = {}
    for name, entry in manifest.get("nodes", {}).items():
        groups = []
        for record in entry["records"]:
            bids = _read_bids(Path(record))
            if bids is None:
                return None
            groups.append(_node_result(bids, Path(record)))
        nodes[name] = tuple(groups)
    return StudyResult(out_dir, Path(manifest["model_file"]), nodes)


def _plan_workers(execution: Execution, jobs) -> tuple[int, Execution]:
    """How many worker processes fit the `jobs` and the execution each one gets: at most ``n_jobs`` and one per
    run; under a cap, as many as hold a run in memory each (:func:`voxfit._execution.cap_holding` of the
    largest) beside this process's reserve, each with an equal share of the rest; ``cpus / workers`` threads
    each. 1 (with the execution as given, less its progress bar): fit them in this process."""
    from .._threads import default_workers

    serial = replace(execution, progress=False)
    n = execution.n_jobs
    if execution.scheduler is not None or n is None or n <= 1 or len(jobs) <= 1:
        return 1, serial
    k = min(n, len(jobs))
    cap = execution.budgets.process
    if cap is not None:
        need = max(cap_holding(data_bytes(j.run.n_scans, _elements(j.run))) for j in jobs)
        k = min(k, max(1, (cap - reserved_bytes()) // need))
    if k <= 1:
        return 1, serial
    share = None if cap is None else (cap - reserved_bytes()) // k
    return k, Execution(max_memory=share, n_jobs=max(1, default_workers() // k), progress=False)


def _finished(result) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


class _Writer:
    """Where :meth:`_Study._in_turn` writes a fitted run (``submit(fn, *args) -> Future``, as a DaemonExecutor):
    on a thread beside the next fit, or here, at once, when the next run's data (``next_read``, a Future, or None)
    are still being read. Reading (decompression, checksums, pybids' variables) then takes more than the fits,
    and the side threads are what the study waits for: this thread would only wait for them, so it takes the
    writing off them (on two cores, 10% of the study)."""

    def __init__(self):
        self.aside = DaemonExecutor()
        self.next_read: Future | None = None
        self.started: list[Future] = []  # every run written on a thread: an interruption waits for them all

    def submit(self, fn, *args) -> Future:
        if self.next_read is not None and not self.next_read.done():
            return _finished(fn(*args))
        with signals_held():  # (interrupted between the thread's start and its record, it would not be waited for)
            future = self.aside.submit(fn, *args)
            self.started.append(future)
        return future

    def finish(self) -> None:
        """Wait for every run being written on a thread (each commits its group whole, or removes its partial
        folder on an error): the process must not end, interrupted, while a thread still writes."""
        wait(self.started)


def _read_ahead(execution: Execution, s: _Settings, r: RunInput, beside: RunInput | None):
    """The data of run `r`, read (decompressed, masked) on a thread while the run `beside` fits (or while `r`'s
    own design is made: None), as a Future of what ``fit_images`` would load; None where that run is not
    fitted in memory (smoothed, streamed or spread over a Dask cluster), or where its data beside `beside`'s
    would pass the cap. Reading a run takes a third of its fit: the next one's is hidden behind this one's. Only the
    run's files are needed, not its design: its rows are checked against the data when it is fitted."""
    from ..io import load, open_reader
    from ..models._routing import MEMORY, choose_route, first_level_needs, fmri_noise

    if s.smoothing or execution.scheduler is not None:
        return None
    try:
        reader = open_reader(str(r.bold), "bold")
        noise = s.noise or fmri_noise(r.n_scans)
        if choose_route(reader, execution, first_level_needs(noise, s.scaling, reader)).kind != MEMORY:
            return None
    except InputError:
        return None  # (found again, and reported, when that run is fitted)
    cap = execution.budgets.process
    held = data_bytes(r.n_scans, reader.geometry.n_elements, reader.dtype.itemsize)
    fitting = 0 if beside is None else cap_holding(data_bytes(beside.n_scans, _elements(beside)))
    if cap is not None and fitting + held > cap:
        return None
    return DaemonExecutor().submit(
        load,
        reader,
        r.mask,
        mask_threshold="auto",
        progress=False,
        scan_globals=s.scaling == "global",
        name="inputs",
    )


def _elements(r: RunInput) -> int:
    """The elements of one scan of a run, from its header (the data of a run are n_scans x this)."""
    from ..io import open_reader

    try:
        return int(open_reader(str(r.bold), "bold").geometry.n_elements)
    except InputError:
        return 0


# ---- fitting one run (in this process, a worker process or a Dask worker) --------------------------------------

_IN_WORKER = False  # set in worker processes: an interruption ends the process once its partial folder is gone
_BUSY = False


def _worker_start(threads: int) -> None:
    """A worker process's set-up: BLAS limited to its threads; SIGINT, SIGTERM and SIGHUP end it, after the run it fits
    has removed its partial folder (a KeyboardInterrupt in the run, then exit 130)."""
    global _IN_WORKER, _LIMITS
    _IN_WORKER = True
    release_freed_memory()  # (it fits runs one after another, as `voxfit bids` does)
    try:
        from threadpoolctl import threadpool_limits

        _LIMITS = threadpool_limits(threads)
    except ImportError:  # pragma: no cover (threadpoolctl comes with scipy)
        pass
    handle_stop_signals(_worker_signal)  # (one ignored where the worker started, as nohup leaves SIGHUP, stays so)
    warnings.showwarning = _worker_warning


def _worker_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A worker's warning, kept for the run's :class:`_RunDone` (:func:`_fit_job`): the study's process says it as
    its own, so that the command line's --quiet, its words and its one line per message hold for it (printed here,
    it was Python's two-line form, under --quiet too). A category the pickle cannot carry is sent as UserWarning."""
    import pickle

    try:
        pickle.dumps(category)
    except Exception:  # (a class of a function's own, say: the run's result would not reach the study)
        category = UserWarning
    _WARNED.append((category, str(message), str(filename), int(lineno)))


_WARNED: list = []  # (a worker process's warnings since its last run ended)


_LIMITS = None


def _ignore_signal(signum, frame):
    """Further signals in a worker that is stopping: nothing (see voxfit.cli.ignore_signal)."""


def _worker_signal(signum, frame):
    handle_stop_signals(_ignore_signal)  # (not SIG_IGN: see voxfit.cli.ignore_signal)
    if _BUSY:
        raise KeyboardInterrupt
    os._exit(130)


def _fit_job(job: _RunJob, dataset=None, writer=None):
    """Fit one run and commit its group (bad input: the error, not raised, so that the other runs go on);
    `dataset`: its data, read ahead (a Future of ``voxfit.io.load``'s Dataset), or None; `writer`: see
    :func:`_fit_run`."""
    global _BUSY
    _BUSY = True
    _WARNED.clear()  # (a run before that failed otherwise than on bad input: its warnings went with it)
    try:
        with whole_files_capped(job.execution.max_memory):  # (a worker's share: GIFTI runs are decoded whole)
            done = _fit_run(job, dataset, writer)
    except InputError as exc:
        done = _RunDone(job.index, error=str(exc))
    except KeyboardInterrupt:
        if _IN_WORKER:  # (its partial folder was removed on the way out)
            os._exit(130)
        raise
    finally:
        _BUSY = False
    if _IN_WORKER:  # (a worker fits with no writer: `done` is the run's _RunDone)
        done = replace(done, warned=tuple(_WARNED))
        _WARNED.clear()
    return done


def _fit_task(shared, job: _RunJob) -> _RunDone:
    """A Dask task: one run (`shared` is unused; every job carries its own settings)."""
    return _fit_job(job)


def _fit_run(job: _RunJob, dataset=None, writer=None):
    """Fit one run and write its group: the :class:`_RunDone`; with a `writer` (a DaemonExecutor), the fit
    here and the writing on its thread, returned as a Future of the _RunDone (bad input while writing: the
    error in it, as :func:`_fit_job` returns it)."""
    from ..models._routing import choose_route, first_level_needs, fmri_noise
    from ..models.glm import fit_images
    from ..models.record import input_records

    r, s = job.run, job.settings
    noise = s.noise or fmri_noise(r.n_scans)  # (the fMRI default for this run's length)
    paths = [p for p in (r.bold, r.mask, r.events, r.confounds) if p is not None]
    records = DaemonExecutor(aside=True).submit(input_records, paths)  # checksums beside the fit; abandoned on Ctrl-C
    route = None
    if s.smoothing:
        from ..io import open_reader
        from ..io.smoothing import SmoothedReader

        try:
            reader = SmoothedReader(open_reader(str(r.bold), "bold"), s.smoothing)
        except InputError as exc:
            raise InputError(naming_file(r.bold, exc)) from None
        route = choose_route(reader, job.execution, first_level_needs(noise, s.scaling, reader))
    fitted = fit_images(
        r.bold,
        job.design,
        {label: weights for label, _, weights in job.contrasts},
        mask=r.mask,
        noise=noise,
        scaling=s.scaling,
        route=route,
        dataset=dataset,
        execution=job.execution,
        diagnostics=s.diagnostics,
    )
    write = functools.partial(_write_run, job, fitted, noise, records, route)
    return write() if writer is None else writer.submit(_errors_returned, write, job.index)


def _errors_returned(write, index: int) -> _RunDone:
    try:
        return write()
    except InputError as exc:
        return _RunDone(index, error=str(exc))


def _write_run(job: _RunJob, fitted, noise: str, records, route) -> _RunDone:
    """A fitted run's maps, design and model.json, committed as its group."""
    from ..io.masking import resolve_mask_threshold
    from ..models.glm import write_design_files
    from ..models.record import ModelRecord, contrast_record, mask_record

    r, s = job.run, job.settings
    outputs = {}
    masker, fit = fitted.masker, fitted.fit
    threshold = resolve_mask_threshold("auto", masker.geometry, explicit=r.mask is not None)  # (fit_images's)
    ext = masker.geometry.extension
    stats = {label: _as_tested(fitted.contrasts[label], weights) for label, _, weights in job.contrasts}
    with open_group(job.folder) as out:
        for label, name, _ in job.contrasts:
            st = stats[label]
            write_stats(out, job.prefix, label, st, masker, ext)
            if st.kind == "t":
                outputs[name] = {
                    "label": label,
                    "effect": str(job.folder / map_name(job.prefix, label, "effect", ext)),
                    "variance": str(job.folder / map_name(job.prefix, label, "variance", ext)),
                    "dof": _map_dof(st.dof, fit.dof),
                }
        write_design_files(out, job.prefix, job.X, list(job.names), job.kinds, r.tr)
        extra = _run_settings(out, job, fitted)
        record_name = f"{job.prefix}model.json"
        bids = bids_record(job.node, r.entity, job.checksum, s, outputs, job.notes, design=job.design_settings)
        bids["files"] = sorted({*out.names, record_name})
        if s.smoothing:
            bids["smoothing"] = {
                "fwhm_mm": s.smoothing,
                "sigma_voxels": [float(v) for v in route.reader.sigmas],
                "method": "separable Gaussians (scipy gaussian_filter1d, reflect, 4 sigma), non-finite values as 0 "
                "first, as nilearn's smooth_img",
            }
        record = ModelRecord(
            kind="first-level",
            voxfit_version=__version__,
            command=list(job.command) if job.command else None,
            inputs=records.result(),
            data={
                "n_scans": r.n_scans,
                "n_voxels": masker.n_voxels,
                "n_invalid_voxels": int(fit.n_invalid),
                "dtype": "float32",
                "geometry": masker.geometry.describe(),
            },
            mask=mask_record(r.mask, threshold, masker.n_voxels, masker.geometry.n_elements),
            design={
                "columns": list(job.names),
                "n_rows": int(job.X.shape[0]),
                "rank": int(fit.rank),
                "dof": float(fit.dof),
                "condition_number_scaled": float(fit.design.condition),
                "kinds": list(job.kinds),
                "tr": r.tr,
            },
            contrasts={label: contrast_record(weights.tolist(), stats[label]) for label, _, weights in job.contrasts},
            settings={
                "max_memory": job.execution.max_memory,
                "n_jobs": job.execution.n_jobs,
                "noise_model": noise,
                "noise_details": {
                    "model": "OLS" if noise == "ols" else noise,
                    "default": s.noise is None,
                    **{k: v for k, v in fitted.noise_details.items() if k in ("contrast_variance", "long_lags")},
                },
                "scaling": s.scaling,
                "p": "one-sided upper tail for t; z has the same upper-tail probability",
                **extra,
                "bids": bids,
            },
            run=out.run_record(),
        )
        record.write(out, record_name)
        out.drop(*_listed_files(job.folder / record_name, dict(job.node.study)))
        files = out.commit()
    return _RunDone(job.index, tuple(files), outputs)


def _map_dof(dof, design_dof) -> float:
    """The degrees of freedom a run's t map carries to the levels above (fixed effects): its contrast's own; per
    voxel (AR models' Satterthwaite dof, below n - rank), the median the run's model.json records of them
    (``voxfit.models.record.dof_record``), as ``voxfit group`` takes it (``voxfit.design.paired_maps``); the
    design's where no voxel has one."""
    from ..models.record import dof_record

    recorded = dof_record(dof)
    return recorded if isinstance(recorded, float) else float(recorded.get("median", design_dof))


def _run_settings(out, job: _RunJob, fitted) -> dict:
    """A run's model.json settings from the study's --preset, --confounds-strategy and --diagnostics (whose maps
    and spectrum it writes, prefixed by the run's entities)."""
    extra = {}
    if job.settings.preset:
        extra["preset"] = job.settings.preset
    if job.confounds is not None:
        extra["confounds"] = job.confounds
    d = fitted.diagnostics
    if d is not None:
        from ..engine.diagnostics import SPECTRUM_FILE

        masker = fitted.masker
        for name, values, labels in d.maps(masker.geometry.extension):
            masker.write(out.path(f"{job.prefix}{name}"), values, labels)
        out.path(f"{job.prefix}{SPECTRUM_FILE}").write_text(d.spectrum_tsv(job.run.tr))
        extra["diagnostics"] = d.record(job.run.tr)
    return extra


def _as_tested(stats, weights: np.ndarray):
    """A contrast's Stats as its Test asks: weights given as a matrix are an F test, of one row too (the core
    takes one row for a t)."""
    from ..core.contrast import as_f

    return as_f(stats) if weights.ndim == 2 else stats


def write_stats(out, prefix, label, stats, masker, ext) -> None:
    """A contrast's effect, variance, statistic, p and z maps into the output folder `out`."""
    from ..io.output import contrast_maps

    for stat, values, names, intent in contrast_maps(stats, label):
        masker.write(out.path(map_name(prefix, label, stat, ext)), values, names, intent)


def bids_record(node: _Node, entity, checksum, settings: _Settings, outputs, notes=(), **extra) -> dict:
    """The ``settings.bids`` part of a group's model.json."""
    return {
        "node": node.name,
        "level": node.level,
        "entities": {k: _value(v) for k, v in entity.items()},
        "checksum": checksum,
        "study": dict(node.study),
        "study_settings": settings.as_dict(),
        "outputs": {
            k: {**o, "effect": Path(o["effect"]).name, "variance": Path(o["variance"]).name} for k, o in outputs.items()
        },
        "notes": list(notes),
        **extra,
    }


def _in_processes(jobs, workers: int, collect) -> None:
    """The jobs fitted by `workers` spawned processes; ``collect(result)`` as each finishes. Interrupted (or
    failing), the workers are stopped before the exception goes on."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    threads = jobs[0].execution.n_jobs
    # the folders the workers' groups would make (those a killed worker leaves empty are removed)
    absent = {str(j.folder): missing_folders(j.folder) for j in jobs}
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(threads,))
    try:
        remaining = {pool.submit(_fit_job, job) for job in jobs}
        while remaining:
            finished, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                done = future.result()
                for category, message, filename, lineno in done.warned:  # (as the study's own: _worker_warning)
                    try:
                        warnings.warn_explicit(message, category, filename, lineno)
                    except Exception:  # (a category that cannot be made of its message alone)
                        warnings.warn_explicit(message, UserWarning, filename, lineno)
                collect(done)
    except BaseException:
        remaining = finished = future = None  # (the pool's queues are released with the pool, below)
        _stop_workers(pool, absent)
        raise
    pool.shutdown(wait=True)


def _stop_workers(pool, absent: dict) -> None:
    """After an interruption: SIGTERM to every worker (each removes its partial folder and exits), SIGKILL to
    those still running after STOP_WAIT_S, the partial folders of killed workers removed (an OutputFolder
    removes those of processes that no longer run) with the folders they made that are left empty (`absent`:
    each job's folder -> those of its folders that did not exist before the workers started), and the pool shut
    down, so that its queues' semaphores are released before the process ends."""
    import threading
    import time

    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_WAIT_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    killed = [p for p in processes if p.is_alive()]
    for p in killed:
        p.kill()
    for p in killed:
        p.join(0.5)
    closing = threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    closing.start()
    closing.join(0.5)
    if killed:
        for folder, made in absent.items():
            if Path(folder).is_dir():
                open_group(folder)  # (its constructor removes the partial folders of dead processes)
            remove_made_folders(made)


def _unmasked_note(r) -> tuple[str, ...]:
    """The note of a volume run without a brain mask in the derivatives (desc-brain_mask, or the model's
    Options.Mask): fitted within the automatic mask (SPM's), which on unmasked BOLD takes in what is bright enough
    outside the brain too."""
    if r.mask is not None or not _is_volume(r.bold):
        return ()
    return (
        "no brain mask for the run in the derivatives (desc-brain_mask, or the model's Options.Mask): fitted within "
        "the automatic mask (SPM's: voxels above 0.8 of each scan's global mean)",
    )


def _raw_scans_note(r) -> tuple[str, ...]:
    """The note of a run whose preprocessed BOLD has other scans than its raw BOLD: BIDS times the events from the
    raw run's first scan, and the design from the preprocessed run's (dummy scans cut after fMRIPrep, which keeps
    them all, shift every event by as many TRs, without a word)."""
    if r.raw_scans is None:
        return ()
    cut = r.raw_scans - r.n_scans
    fix = (
        f"if scans were cut from its start, take {cut} x TR ({cut * r.tr:g} s) from the onsets"
        if cut > 0
        else "check that the raw and preprocessed runs are each other's"
    )
    return (
        f"the raw run has {r.raw_scans} scans and the preprocessed one {r.n_scans} (fMRIPrep keeps them all): the "
        f"events are timed from the preprocessed run's first scan; {fix}",
    )


def _without_eventless_tasks(layout, runs, tasks: list[str]) -> tuple:
    """The runs of the default model's one task (`tasks`: those whose runs can be fitted) without the runs of tasks
    that the raw dataset has no events.tsv of (resting state), warned of: the model written says Input.task of the
    one task, and the study fits what it says. Each such run had failed ("no events.tsv for this run", exit 2) and
    been noted on every group above it, though no events model could take it; a task with events whose runs all
    fail for other reasons (or that fMRIPrep did not process) still fails, run by run."""
    others = sorted({dict(r.entities)["task"] for r in runs} - set(tasks))
    query = {"suffix": "events", "extension": ".tsv", "scope": "raw", "return_type": "filename"}
    eventless = [t for t in others if not layout.get(task=t, **query)]
    if not tasks or not eventless:
        return runs
    warnings.warn(
        f"task {listed(eventless)}: the dataset has no events.tsv of it, so its runs are not in voxfit's default "
        f"model, which is of task {tasks[0]}; give a model (--model) to fit them.",
        UserWarning,
        stacklevel=2,
    )
    return tuple(r for r in runs if dict(r.entities)["task"] not in eventless)


def _untyped_events_note(r, spec: dict) -> tuple[str, ...]:
    """The note of a run whose events.tsv has events without a trial type (n/a or empty, read as pybids reads the
    table: pandas' missing values) beside events with one, under a Run node (its `spec`) that takes trial types
    (naming one, or ``trial_type``): those events are in no trial type's regressor (pybids' Factor makes none of
    them), where ``voxfit design`` refuses such a row. Said by their lines (the header is line 1, blank lines
    counted as pandas skips them); a table whose events all lack one is left unsaid (its model reads other
    columns)."""
    import pandas as pd

    if r.events is None:
        return ()
    try:  # (the file read once: its text for the lines, as pandas reads it for the values)
        text = Path(r.events).read_text(encoding="utf-8-sig", errors="replace")
        written = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)["trial_type"]
    except (KeyError, OSError, ValueError):  # (no trial_type column, or a table the run's checks refuse)
        return ()
    lines = text.splitlines()
    absent = written.isin(PANDAS_MISSING).to_numpy()  # (the cells pandas reads as missing, as pybids reads them)
    if not absent.any() or absent.all():
        return ()
    strings = _spec_strings(spec)
    if not any("trial_type" in text for text in strings) and not set(written[~absent]) & set(strings):
        return ()
    rows = [n for n, line in enumerate(lines[1:], 2) if line.strip()]  # (each data row's line in the file)
    missing = np.flatnonzero(absent)
    untyped = [str(rows[k]) if k < len(rows) else str(k + 2) for k in missing]
    # (words pandas reads as missing, as pybids reads the table: a trial type 'null' or 'NA' of the file's)
    words = sorted({written.iloc[k].strip() for k in missing} - {"", "n/a"})
    if len(untyped) == 1:
        said = f"line {untyped[0]} (1 event)"
    else:
        shown = f"{', '.join(untyped[:-1])} and {untyped[-1]}" if len(untyped) <= 6 else listed(untyped)
        said = f"lines {shown} ({len(untyped)} events)"
    if words:
        return (
            f"{r.events.name}, {said}: trial type {' or '.join(map(repr, words))}, which pybids reads as missing (as "
            "pandas reads such words), in no trial type's regressor; name it otherwise to model it",
        )
    return (
        f"{r.events.name}, {said}: no trial type (n/a or empty), in no trial type's regressor as BIDS Stats Models "
        "fit them; give each its trial type to model it",
    )


def _lacking_notes(settings: dict) -> tuple[str, ...]:
    """The notes on a run design's regressors of zeros: the study's trial types the run has no event of, and what
    its Transformations would have made of them (``voxfit.bids.run_design.run_design``'s settings)."""

    def own(name, trial_type):  # (the trial type's variable itself, by its name or pybids' Factor's)
        return name in (trial_type, f"trial_type.{trial_type}")

    notes = []
    for k, instruction, gone, trial_types, whole in settings["instructions_pruned"]:
        names, types = ", ".join(f'"{g}"' for g in gone), ", ".join(f'"{t}"' for t in trial_types)
        what = f"Transformations.Instructions[{k}] ({instruction})"
        notes.append(
            f"{what} left out: the run has no {types} event"
            if whole
            else f"{what} without {names}: the run has no {types} event"
        )
    for name, trial_type in settings["left_out_of_x"]:
        why = "no such event" if own(name, trial_type) else f'no "{trial_type}" event to make it of'
        notes.append(f'"{name}" left out of Model.X: the run has {why}')
    for contrast, name, trial_type in settings["contrasts_not_made"]:
        why = f'no "{trial_type}" event' if own(name, trial_type) else f'no "{trial_type}" event to make "{name}" of'
        notes.append(f'contrast "{contrast}" not made: the run has {why}')
    for trial_type in settings.get("after_the_run", ()):
        end = settings["n_scans"] * settings["tr"]
        notes.append(
            f'every "{trial_type}" event starts at or after the run\'s end ({settings["n_scans"]} scans x '
            f"{settings['tr']:g} s = {end:g} s): taken as a trial type the run has no event of"
        )
    for name, count in settings.get("events_without_value", ()):  # (a response time of a trial without a response)
        notes.append(
            f'{count} "{name}" event{"s" if count > 1 else ""} without a value (n/a) left out of its regressor, '
            "as a value of 0 would be"
        )
    for pattern in settings.get("patterns_unmatched", ()):
        notes.append(f'Model.X pattern "{pattern}" matches none of the run\'s variables: it adds no column')
    if convolved := settings.get("convolved_at_scan_start"):
        notes.append(
            f"{', '.join(map(repr, convolved))} convolved by pybids (a later instruction takes the output of a "
            "Convolve with derivatives or FIR): pybids samples them at each scan's start, while voxfit samples the "
            f"design's other regressors at {settings['slice_time_ref']:.3g} of the TR (the slice-timing reference); "
            "make the Convolve the last instruction that takes them (or convolve them through Model.HRF) to sample "
            "them all alike"
        )
    return tuple(notes)


class _Study:
    """The state of one study while it is fitted: the graph, where each contrast's maps are, the results."""

    def __init__(
        self, layout, model, settings: _Settings, execution, out_dir: Path, force: bool, command, labels, identity
    ):
        self.layout, self.model, self.settings, self.execution = layout, model, settings, execution
        self.out_dir, self.force, self.labels = out_dir, force, labels
        # the model file's name in out_dir and the runs chosen (--task, --space, --desc): what a group's record names
        # of the study that wrote it, which a rerun removes the stale groups of (_remove_stale)
        self.identity: tuple[tuple[str, object], ...] = tuple(identity)
        declared = [c["Name"] for node in model["Nodes"] for c in node.get("Contrasts") or []]
        self.contrast_labels = ContrastLabels(declared)  # (the file's names first, in its order)
        self.default_types: tuple[str, ...] = ()
        self.default_names: dict[str, str] = {}  # (the default model's variable of each: see _trial_type_names)
        self._runs: list[RunInput] = []  # the run node's runs
        self._inputs: dict[str, list[dict]] = {}  # the entities of each node's inputs, by node name
        self._trial_types: tuple[str, ...] | None = None  # the trial types of the runs' tasks, read once (checksums)
        self.participants: set[str] | None = None  # participants.tsv's ids (None: no table)
        self.session_ids: dict[str, set[str]] = {}  # each subject's sessions.tsv's sessions (where it has one)
        self.participant_columns: tuple[str, ...] = ()  # its other columns, for messages
        self.participant_rows: list[list[str]] = []  # its rows of cells, the header first
        self.session_columns: tuple[str, ...] = ()  # the sessions.tsv files' columns
        self._run_types: dict[Path, set[str]] = {}  # each events file's trial types (run_spec, asked twice a run)
        self.command = tuple(map(str, command)) if command else None
        self.maps: dict[tuple[str, tuple], _MapRef] = {}  # (node name, its key of the contrast's group) -> the maps
        self.outputs: dict[str, list[tuple[str, dict]]] = {}  # node name -> (contrast name, entities) passed on
        self.results: dict[str, list[NodeResult]] = {}
        self.renamed: dict[str, dict] = {}  # node name -> its groups' contrast -> the contrasts they passed on
        self.failures: list[Failure] = []
        self.skipped: list[Failure] = []
        self.hemispheres = False
        self.bold_extensions: list[str] = []  # of the runs fitted (pybids' extension entity)
        self.confounds_tables: list[Path] = []  # of the runs fitted
        self.grid: dict = {}  # pybids selectors of the runs' space, resolution and density
        self.unloaded: dict[str, tuple[str, ...]] = {}  # per run node: confounds columns its model does not name
        self.workers = 0
        self.manifest = self.read_manifest()
        self.node_checksums: dict[str, str] = {}
        self._graph = None
        self._loaded: set = set()  # the nodes whose variables pybids has loaded (a run node's: (name, subject))
        self._unreadable: set = set()  # (run node, subject) whose tables pybids could not read whole
        self._rows_of: dict[str, list[str]] = {}  # per higher node: the subjects whose rows it holds, if not all
        self._sessions_of: dict[str, set] = {}  # per higher node: its inputs' (subject, session) pairs
        self._columns: dict[str, list] = {}  # per run node: the confounds columns its model names
        self._recordings = False  # whether the dataset has physio or stim recordings
        self._tables = None

    # ---- the model, pybids' graph, the manifest ----------------------------------------------------------------
    def node(self, name: str) -> _Node:
        spec = next(n for n in self.model["Nodes"] if n["Name"] == name)
        return _Node(name, spec["Level"].lower(), spec, self.identity)

    def edges(self) -> list[tuple[str, str, dict]]:
        edges = self.model.get("Edges")
        if edges is None:
            names = [n["Name"] for n in self.model["Nodes"]]
            return [(a, b, {}) for a, b in zip(names, names[1:])]
        return [(e["Source"], e["Destination"], e.get("Filter") or {}) for e in edges]

    def pybids_node(
        self, name: str, subject: str | None = None, subjects: list[str] | None = None, sessions=None, run=None
    ):
        """pybids' node `name` of the model's BIDSStatsModelsGraph, with its variables loaded the first time a
        design or a grouping asks for them (a rerun whose runs are all reused never reads the run level's
        tables). A run node's are loaded one `subject` at a time, as its runs' designs ask for them: the first
        design waits for one subject's tables, not the whole dataset's (2.7 s for the benchmark's 20 subjects,
        with a core idle meanwhile). A higher node's are the rows of `subjects`, those of its inputs: its
        transformations (Demean, Scale) then take the subjects it models, not every row of participants.tsv (a
        subject left out by a Filter, or whose runs all failed, moved the mean of age by 15%); none for no
        subject (a dataset-level node's groups); and of those subjects' sessions, the (subject, session) pairs
        `sessions` of its inputs: a sessions.tsv row of a session without data (not preprocessed, or whose runs
        failed) moved a Subject node's Demean of its column.

        Run nodes take their variables from the preprocessed BOLD files of the kinds fitted (the derivatives'
        scope, the runs' extensions), where voxfit's runs are: pybids reads a run's events and confounds
        once per BOLD file it lists, and by default it lists the raw BOLD and every derivative of it too (the
        raw pass re-reads the same tables into the same run: half of the time, for the same collections).
        pybids also looks for each file's physio and stim recordings in the index; where the dataset has none,
        it is told so. Where a subject's tables cannot be read whole (pybids reads every run's BOLD header for its
        duration: one unreadable BOLD failed every run of the subject, in every session), each run's are read alone,
        the `run` (its entities) asked for."""
        if self._graph is None:
            from bids.modeling import BIDSStatsModelsGraph

            self._graph = BIDSStatsModelsGraph(self.layout, self.model)
        node = self._graph.get_node(name)
        run_level = node.level == "run" and bool(self.bold_extensions)
        key = (name, subject) if run_level and subject is not None else name
        if key in self._loaded or name in self._loaded or subjects == []:
            return node
        if run is not None and key in self._unreadable:  # (a subject's tables not read whole: this run's alone)
            return self._run_alone(node, name, run)
        kwargs = {"subject": list(self.labels)} if self.labels else {}
        if key != name:
            kwargs["subject"] = [subject]
        elif subjects is not None:
            kwargs["subject"] = subjects
        if sessions is not None:
            self._sessions_of[name] = sessions
        try:
            self._load(name, run_level, kwargs)
        except _PYBIDS_ERRORS as exc:
            if run is not None and key != name:
                self._unreadable.add(key)
                return self._run_alone(node, name, run)
            whose = f"subject {subject}" if key != name else f"node {name}"
            raise InputError(
                f"pybids could not read the events or confounds tables of {whose} ({type(exc).__name__}: {exc}); "
                "fix the tables (the runs' own failures say which)."
            ) from None
        self._loaded.add(key)
        return node

    def _run_alone(self, node, name: str, run: dict):
        """pybids' run node with the variables of the one run `run` (its entities) loaded, once."""
        key = (name, _key(run))
        if key not in self._loaded:
            try:
                self._load(name, True, {k: [run[k]] for k in RAW if k in run})
            except _PYBIDS_ERRORS as exc:
                if "scan duration" in str(exc):  # (pybids reads every BOLD file of the run: each hemisphere's too)
                    raise InputError(
                        "pybids could not read the number of scans of every BOLD file of this run: it reads each "
                        "one's header, those of the run's other hemispheres and spaces too, and a broken one fails "
                        f"them all (its own failure names it) ({type(exc).__name__}: {exc}); fix that file."
                    ) from None
                raise InputError(
                    f"pybids could not read this run's events or confounds tables, or its BOLD's header ("
                    f"{type(exc).__name__}: {exc}); fix them."
                ) from None
            self._loaded.add(key)
        return node

    def _load(self, name: str, run_level: bool, kwargs: dict) -> None:
        if run_level:
            kwargs.update(scope="derivatives", extension=list(self.bold_extensions), **self.grid)
            if name not in self.unloaded:
                self._recordings = bool(self.layout.get(suffix=["physio", "stim"], extension=".tsv.gz"))
                self._columns[name], self.unloaded[name] = _named_columns(self.node(name).spec, self.confounds_tables)
            kwargs.update(physio=self._recordings, stim=self._recordings)
            loaded = self._graph.get_node(name)._collections
            held = len(loaded)
            try:
                self._graph.load_collections(nodes=[name], regressors=False, **kwargs)
                if self._columns[name]:
                    kwargs.update(physio=False, stim=False)
                    self._graph.load_collections(nodes=[name], events=False, columns=self._columns[name], **kwargs)
            except BaseException:  # (the events loaded, the confounds not: none kept, or a run alone reads its
                del loaded[held:]  # events twice, which pybids adds up: its effects were halved)
                raise
        else:
            self._graph.load_collections(nodes=[name], **kwargs)
            unused = _unused_columns(self.node(name).spec, self.session_columns)
            collections = self._graph.get_node(name)._collections
            for collection in collections:
                _hashable_entities(collection)
                _sessions_rows(collection, self._sessions_of.get(name))
                for variable in [v for v in collection.variables.values() if v.source == "sessions"]:
                    if variable.name in unused:
                        del collection.variables[variable.name]
            collections[:] = [c for c in collections if c.variables]  # (pybids cannot make a table of none)

    def tables(self) -> list:
        """The contents of the dataset's participants, sessions and scans tables and their sidecars (what the
        higher nodes' variables come from)."""
        if self._tables is None:
            files = self.layout.get(
                scope="raw", suffix=["participants", "sessions", "scans"], extension=[".tsv", ".json"]
            )
            self._tables = _content(sorted(f.path for f in files))
        return self._tables

    def read_manifest(self) -> dict:
        try:
            manifest = json.loads((self.out_dir / ".voxfit" / MANIFEST).read_text())
        except (OSError, ValueError):
            return {"nodes": {}}
        return manifest if isinstance(manifest.get("nodes"), dict) else {"nodes": {}}

    def write_manifest(self, study_key: str | None, model_file: Path) -> None:
        """``OUT_DIR/.voxfit/study.json``: per node its checksum (when every group was fitted), its records
        and skipped groups; with `study_key` (a complete study) also the stamp of every file written."""
        from ..io import write_file_atomically

        nodes = dict(self.manifest.get("nodes", {}))
        for name, groups in self.results.items():
            checksum = self.node_checksums.get(name)
            nodes[name] = {
                "checksum": checksum if not any(f.node == name for f in self.failures) else None,
                "records": [str(r) for g in groups for r in g.files if str(r).endswith("model.json")],
                "skipped": [[f.group, f.reason, list(f.entities)] for f in self.skipped if f.node == name],
            }
        manifest = {"study": study_key, "model_file": str(model_file), "nodes": nodes, "files": None}
        if study_key is not None:
            manifest["nodes"] = {k: v for k, v in nodes.items() if k in self.results}
            files = [model_file]
            for entry in manifest["nodes"].values():
                for record in entry["records"]:
                    bids = _read_bids(Path(record)) or {}
                    files.append(record)
                    files += [f for o in bids.get("outputs", {}).values() for f in (o["effect"], o["variance"])]
            manifest["files"] = {str(p): _file_stamp([p])[0][1:] for p in files}
        text = json.dumps(manifest, indent=1, default=str) + "\n"
        folder = self.out_dir / ".voxfit"
        folder.mkdir(parents=True, exist_ok=True)
        write_file_atomically(folder / MANIFEST, lambda tmp: Path(tmp).write_text(text))

    def reuse(self, record_path: Path, checksum: str, study: dict) -> dict | None:
        """The record's ``bids`` part when the group at `record_path` was fitted with this checksum and its
        files are all there; None (refit) otherwise, or with `force`. A record of another `study` there is refused
        (an InputError, :func:`_foreign_group`): this study's group would replace its maps."""
        if self.force or not record_path.is_file():
            return None
        bids = _read_bids(record_path)
        if foreign := _foreign_group(record_path, bids, study):
            raise foreign
        if bids is None or bids.get("checksum") != checksum:
            return None
        return bids if _outputs_intact(bids, record_path) else None

    def pass_on(self, node_name: str, bids_or_outputs: dict, entity: dict) -> None:
        """The t contrasts' maps of a group, passed on to the nodes below."""
        node = self.node(node_name)
        held = _value(entity.get("contrast"))  # (the group's own contrast, its inputs': what it renamed)
        self.renamed.setdefault(node_name, {}).setdefault(held, set()).update(bids_or_outputs)
        for name, o in bids_or_outputs.items():
            ents = {**entity, "contrast": name}
            self.maps[node_name, node.key(ents)] = _MapRef(o["effect"], o["variance"], o["dof"])
            self.outputs[node_name].append((name, ents))

    # ---- run level -------------------------------------------------------------------------------------------
    def fit_runs(self, runs) -> None:
        node = self.node(self.model["Nodes"][0]["Name"])
        if node.level != "run":
            raise InputError(
                f"the model's first node {node.name!r} is at the {node.level} level; voxfit fits studies from the "
                "Run level (make a Run node the first node)."
            )
        self.root = node
        self.hemispheres = any(dict(r.entities).get("hemi") for r in runs)
        self.bold_extensions = sorted({_extension(r.bold) for r in runs if not r.problems})
        self.confounds_tables = sorted({r.confounds for r in runs if r.confounds is not None and not r.problems})
        self.grid = _grid_selectors([r for r in runs if not r.problems])
        self._runs = runs
        self.results[node.name] = []
        self.outputs[node.name] = []
        bar = Progress("runs", len(runs), self.execution.progress)
        count = 0  # runs finished (fitted, failed or unchanged), for the bar

        def advance() -> None:
            nonlocal count
            count += 1
            bar.update(count)

        def failed(r: RunInput, message: str, other_study: str | None = None) -> None:
            self.failures.append(Failure(node.name, r.label, message, r.entities, other_study))
            advance()

        done: dict[int, tuple] = {}
        pending = []
        for k, r in enumerate(runs):
            if r.problems:
                failed(r, " ".join(r.problems))
                continue
            checksum = self.run_checksum(node, r)
            folder = group_folder(self.out_dir, node.name, r.entity, "run")
            record_path = folder / f"{group_prefix(r.entity)}model.json"
            try:
                bids = self.reuse(record_path, checksum, dict(node.study))
            except _ForeignGroup as exc:
                failed(r, str(exc), exc.whose)
                continue
            if bids is not None:
                done[k] = (_node_result(bids, record_path), bids["outputs"], r)
                advance()
            else:
                pending.append((k, r, checksum))
        by_index: dict[int, _RunJob] = {}

        def collect(result: _RunDone) -> None:
            job = by_index[result.index]
            r = job.run
            if result.error is not None:
                failed(r, result.error)
                return
            advance()
            labels = tuple(o for o, _, _ in job.contrasts)
            done[result.index] = (
                NodeResult(node.name, "run", tuple(r.entity.items()), labels, result.files, notes=job.notes),
                result.outputs,
                r,
            )

        if self.execution.scheduler is None and (self.execution.n_jobs or 1) <= 1:  # fitted here, one by one
            if len(pending) >= MANY_RUNS and self.settings.noise != "ols":
                # AR models give each voxel its own dof: z from the compiled tables, and AR(p) fits take the
                # compiled data pass (AR(1) the compiled fit too); numba loading meanwhile
                from ..core._kernels import compile_in_background
                from ..models._routing import noise_order

                noise = self.settings.noise  # (None: each run's default, an AR(p))
                compile_in_background(ar=noise is None or noise_order(noise) > 0)
            jobs = self.prepared_aside(node, pending, by_index, failed)
            runs = [(k, r) for k, r, _ in pending]
            self._in_turn(jobs, replace(self.execution, progress=False), collect, runs)
        else:
            for k, r, checksum in pending:
                try:
                    by_index[k] = self.prepare(k, node, r, checksum)
                except InputError as exc:
                    failed(r, str(exc))
            self.execute(list(by_index.values()), collect)
        bar.close()
        for k in sorted(done):  # (in the runs' order, whichever process finished first)
            result, outputs, r = done[k]
            self.results[node.name].append(result)
            self.pass_on(node.name, outputs, r.entity)

    def trial_types(self) -> tuple[str, ...]:
        """The trial types of the raw dataset's events of the model's tasks (its Input's, else the runs'), whichever
        participants or --task are chosen (a contrast naming one that a run has none of is not made for that run;
        one naming no trial type of any run is refused, as a name mistyped)."""
        if self._trial_types is None:
            tasks = (self.model.get("Input") or {}).get("task") or sorted(
                {str(_value(r.entity.get("task"))) for r in self._runs if r.entity.get("task") is not None}
            )
            tasks = [tasks] if isinstance(tasks, str) else list(tasks)
            files = self.layout.get(
                scope="raw", suffix="events", extension=".tsv", task=tasks or None, return_type="filename"
            )
            self._trial_types = tuple(self.default_types) or tuple(_trial_types(sorted(files)))
        return self._trial_types

    def label_trial_types(self) -> None:
        """Under voxfit's default model, the file labels of every trial type of the raw dataset's events of its task,
        in sorted order, before any run is fitted: names whose labels clash (go-left and go_left: goleft) are then
        numbered alike in every study of the dataset. Numbered as the chosen runs' names came, a study of sub-01,
        which has no go-left, labelled go_left goleft, and one of every subject labelled it goleft2 (a tester's):
        one file name, two conditions."""
        tasks = (self.model.get("Input") or {}).get("task")
        files = sorted(
            self.layout.get(scope="raw", suffix="events", extension=".tsv", task=tasks or None, return_type="filename")
        )
        every = _trial_types(files)
        self.contrast_labels(_trial_type_names(every, files))

    def named_trial_types(self, spec: dict) -> tuple[str, ...]:
        """The dataset's trial types a run's node `spec` names (anywhere: Model.X, Model.HRF, its contrasts, its
        transformations): those whose absence from a run changes its design, in each run's checksum (another trial
        type added to a run refits that run alone, through its events' content). Under the default model, the run's
        own spec (:meth:`run_spec`) names its own trial types only: a study of some participants and one of all
        name the same (a run of sub-01 was refitted by the study of every subject, whose trial types were more)."""
        named = set(_spec_strings(spec))
        return tuple(t for t in self.trial_types() if t in named or f"trial_type.{t}" in named)

    def run_spec(self, node: _Node, r: RunInput) -> dict:
        """The Run node for run `r`: as the model gives it, but for voxfit's default model (each trial type against
        baseline), whose trial types are those of every run, only those of this run's events (as SPM builds each
        session from its own conditions): a condition that some runs lack (error trials, misses) is then
        estimated from the runs that have it, rather than failing the others. A condition whose events all start
        after the run's last scan (a run cut short) is one it lacks, where others start within it (when none does,
        the run is refused: onsets in milliseconds, or a run cut too short)."""
        if not self.default_types or r.events is None:
            return node.spec
        if r.events not in self._run_types:
            end = r.n_scans * r.tr if r.tr and r.n_scans else None
            within = set(_trial_types([r.events], before=end))
            self._run_types[r.events] = within or set(_trial_types([r.events]))
        present = [self.default_names[t] for t in self.default_types if t in self._run_types[r.events]]
        if not present or len(present) == len(self.default_types):
            return node.spec
        model = {**node.spec["Model"], "X": [*present, 1], "HRF": {**node.spec["Model"]["HRF"], "Variables": present}}
        return {**node.spec, "Model": model, "DummyContrasts": {**node.spec["DummyContrasts"], "Contrasts": present}}

    def run_checksum(self, node: _Node, r: RunInput) -> str:
        """What a run's fit depends on, decided before its design is built (see the module docstring)."""
        return _checksum(
            __version__,
            dict(node.study).get("model"),
            self.settings.of_level("run"),
            self.run_spec(node, r),
            _key(r.entity),
            _file_stamp([r.bold, r.mask]),
            _content([r.events, r.confounds]),
            r.sidecars,
            r.tr,
            r.slice_timing,
            r.start_time,
            r.n_scans,
            self.named_trial_types(self.run_spec(node, r)),
        )

    def prepared_aside(self, node: _Node, pending, by_index: dict, failed) -> Iterator[_RunJob]:
        """The jobs of `pending` ((index, run, checksum) each), in order, their designs made on a thread while the
        runs before them fit (pybids' variables and the transformations: ~80 ms a run, a tenth of its fit); each
        is entered in `by_index`; a run whose design is bad input is ``failed(run, message)`` and skipped."""
        futures = [Future() for _ in pending]

        def prepare_all() -> None:
            for (k, r, checksum), future in zip(pending, futures):
                try:
                    future.set_result(self.prepare(k, node, r, checksum))
                except BaseException as exc:  # noqa: BLE001 (raised where the job is asked for)
                    future.set_exception(exc)

        DaemonExecutor().submit(prepare_all)
        for (k, r, _), future in zip(pending, futures):
            try:
                by_index[k] = future.result()
            except InputError as exc:
                failed(r, str(exc))
                continue
            yield by_index[k]

    def _no_confounds_note(self, node: _Node, r: RunInput) -> tuple[str, ...]:
        """The note of a run without a confounds table whose Run node takes the study's confounds columns through
        patterns alone (named whole, the run fails: see :meth:`prepare`): those patterns add nothing to its design,
        which said only that they match none of its variables."""
        if r.confounds is None and (columns := self._columns.get(node.name)):
            return (
                "the derivatives hold no confounds table for this run (fMRIPrep's desc-confounds_timeseries.tsv): "
                f"the columns the model's patterns take from the other runs' tables ({listed(columns)}) are not in "
                "its design",
            )
        return ()

    def _confounds_named_whole(self, node: _Node) -> list[str]:
        """The columns of the study's confounds tables that the Run node names whole (in Model.X, a transformation,
        a contrast), not only through a pattern, which a run's table may lack (FitLins' "motion_outlier*")."""
        strings = set(_spec_strings(node.spec))
        return [c for c in self._columns.get(node.name, ()) if c in strings]

    def prepare(self, k: int, node: _Node, r: RunInput, checksum: str) -> _RunJob:
        """The run's design from the node (pybids variables and transformations), as a job to fit."""
        from ..design.kinds import column_kinds
        from .run_design import run_design

        entity = r.entity
        pybids_node = self.pybids_node(node.name, entity.get("subject"), run=entity)
        if r.confounds is None and (named := self._confounds_named_whole(node)):
            raise InputError(
                f"{r.bold.name}: the derivatives hold no confounds table for this run (fMRIPrep's "
                f"desc-confounds_timeseries.tsv), whose columns node {node.name}'s model names ({listed(named)}); "
                "rerun fMRIPrep for the run, or leave it out of the model's Input."
            )
        collections = pybids_node.get_collections(**{k: entity[k] for k in RAW if k in entity})
        if not collections:
            raise InputError(f"{r.events}: pybids read no variables for this run; check its events.tsv.")
        try:
            rd = run_design(
                _run_collection(collections, entity),
                self.run_spec(node, r),
                tr=r.tr,
                n_scans=r.n_scans,
                convolution=self.settings.convolution,
                slice_time_ref=r.slice_time_ref,
                high_pass=self._high_pass(node),
                unloaded=self.unloaded.get(node.name, ()),
                trial_types=self.trial_types(),
                max_memory=self.execution.max_memory,
            )
        except InputError as exc:
            named = re.search(r'Model\.X names "([^"]+)", but the run has no variable', str(exc))
            if named and named.group(1) in self.participant_columns:  # (a subject's value: a group's covariate)
                raise InputError(
                    f'Model.X names "{named.group(1)}", a column of participants.tsv: one value per '
                    "subject, which a run's model cannot estimate; put it in the Model.X of the Dataset node (a "
                    "covariate of the group), or leave it out of this node's."
                ) from None
            raise InputError(f"{exc} (run {r.bold.name}, events {r.events})") from None
        design, chosen = self._with_strategy(rd.design, r)
        X = np.asarray(design.X if hasattr(design, "X") else design.matrix)
        names = list(design.names)
        contrasts = [c for c in rd.contrasts if c.test in ("t", "F", "pass", None)]
        labels = self.contrast_labels([c.name for c in contrasts])
        kinds = tuple(column_kinds(design, names, X, None))
        # (drift columns Model.X's own held, left out as the design was built, or the strategy's, left out here)
        dropped = rd.design.settings["drifts_held"] + rd.design.kinds.count("drift") - kinds.count("drift")
        held = "drift columns the design's own hold (fMRIPrep's cosines) left out" if dropped else ""
        check_name_lengths(group_prefix(entity), labels, ".nii.gz" if _is_volume(r.bold) else _extension(r.bold))
        return _RunJob(
            index=k,
            run=r,
            node=node,
            design=design,
            X=X,
            names=tuple(names),
            kinds=kinds,
            contrasts=tuple((label, c.name, c.matrix(names)) for label, c in zip(labels, contrasts)),
            folder=group_folder(self.out_dir, node.name, entity, "run"),
            prefix=group_prefix(entity),
            checksum=checksum,
            settings=self.settings,
            execution=self.execution,
            command=list(self.command) if self.command else None,
            design_settings={
                **{k: rd.settings.get(k) for k in ("hrf", "high_pass_s", "high_pass_from", "slice_time_ref")},
                **({"high_pass_from": f"{rd.settings['high_pass_from']}; {held}"} if held else {}),
                "slice_time_from": "the preprocessed BOLD's StartTime / RepetitionTime (when each scan samples)"
                if r.start_time is not None
                else f"none in the preprocessed BOLD's sidecar: {self.settings.convolution}'s default",
            },
            confounds=None if chosen is None else chosen.describe(),
            notes=_lacking_notes(rd.settings)
            + self._default_types_note(r)
            + _unmasked_note(r)
            + _raw_scans_note(r)
            + _untyped_events_note(r, node.spec)
            + self._no_confounds_note(node, r),
        )

    def _default_types_note(self, r: RunInput) -> tuple[str, ...]:
        """Under voxfit's default model, the study's trial types run `r` has no event of (its design is of its own:
        :meth:`run_spec`), said as a model's trial types a run lacks are (they were not: a tester's)."""
        if not self.default_types or r.events not in self._run_types:
            return ()
        lacking = [t for t in self.default_types if t not in self._run_types[r.events]]
        if not lacking or len(lacking) == len(self.default_types):
            return ()
        said, them = ", ".join(f'"{t}"' for t in lacking), "them" if len(lacking) > 1 else "it"
        # (a name the run has in another case: BIDS values are case-sensitive, but a user's logs may not be)
        own = {t.lower(): t for t in self._run_types[r.events]}
        cased = [f'"{own[t.lower()]}" for "{t}"' for t in lacking if t.lower() in own]
        case = f" (it has {', '.join(cased)}: trial types differ in case, which BIDS keeps apart)" if cased else ""
        return (
            f"the run has no {said} event{case}: voxfit's default model fits it without {them}, and the levels above "
            f"take {them} from the runs that have {them}",
        )

    def _high_pass(self, node: _Node):
        """The preset's high-pass period, unless the run node's model sets its own."""
        options = node.spec.get("Model", {}).get("Options") or {}
        return None if options.get("HighPassFilterCutoffHz") is not None else self.settings.high_pass

    def _with_strategy(self, design, r: RunInput):
        """The run design with the confounds strategy's columns added after the node's (those X already holds
        by name are not added twice), and the strategy's selection; the design as it is without a strategy."""
        strategy = self.settings.confounds_strategy
        if strategy is None:
            return design, None
        from ..design.confounds import confounds_strategy

        if r.confounds is None:
            raise InputError(
                f"--confounds-strategy {strategy} needs fMRIPrep's confounds table, and run {r.bold.name} has none."
            )
        chosen = confounds_strategy(r.confounds, strategy, r.n_scans)
        values, names = chosen.design_columns()
        new = [j for j, name in enumerate(names) if name not in design.names]
        if not new:
            return design, chosen
        from .run_design import duplicated_columns

        drift = np.array([kind == "drift" for kind in design.kinds])
        held = np.zeros(len(design.kinds), dtype=bool)  # (drifts the strategy's columns hold: fMRIPrep's cosines)
        held[drift] = duplicated_columns(design.X[:, drift], values[:, new])
        if held.any():
            own = np.flatnonzero(~held)
            design = replace(
                design,
                X=design.X[:, own],
                names=tuple(design.names[j] for j in own),
                kinds=tuple(design.kinds[j] for j in own),
            )
        end = next((j for j, kind in enumerate(design.kinds) if kind in ("drift", "constant")), len(design.names))
        X = np.column_stack([design.X[:, :end], values[:, new], design.X[:, end:]])
        names = (*design.names[:end], *(names[j] for j in new), *design.names[end:])
        kinds = (*design.kinds[:end], *("confound" for _ in new), *design.kinds[end:])
        return replace(design, X=X, names=names, kinds=kinds), chosen

    def execute(self, jobs: list, collect) -> None:
        """``collect(result)`` for each job's :class:`_RunDone`, in the order they finish: in this process, in
        worker processes or on a Dask cluster (see the module docstring)."""
        if not jobs:
            return
        if self.execution.scheduler is not None:
            from .._dask import run_tasks

            dask_jobs = [replace(j, execution=Execution(n_jobs=1, progress=False)) for j in jobs]
            for result in run_tasks(self.execution.scheduler, _fit_task, None, [(j,) for j in dask_jobs]):
                collect(result)
            return
        workers, execution = _plan_workers(self.execution, jobs)
        if workers == 1:
            self._in_turn(jobs, execution, collect)
            return
        self.workers = workers
        _in_processes([replace(job, execution=execution) for job in jobs], workers, collect)

    def _in_turn(self, jobs, execution: Execution, collect, runs=None) -> None:
        """The jobs (any iterable) fitted one after another in this process, each overlapped with the reading of
        the next run's data and the writing of the previous run's maps, on threads (see :class:`_Writer`: a run
        is written here instead when the next run's data are not read yet). Interrupted, a run being written on
        a thread is finished first; one being written here is left out, whole.

        `runs`: the (index, RunInput) of the jobs, in their order, when they are known before the jobs (designs
        made on a thread, see :meth:`prepared_aside`; a job may be missing, its design bad input): the first
        run's data are then read while its design is made, and each next run's without waiting for its design.
        By default the jobs' own (`jobs` a list)."""
        if runs is None:
            jobs = list(jobs)
            runs = [(job.index, job.run) for job in jobs]
        position = {k: i for i, (k, _) in enumerate(runs)}
        reads: dict[int, Future | None] = {}  # run position -> its data, being read

        def read(i: int, beside: RunInput | None) -> None:
            if i < len(runs) and i not in reads:
                reads[i] = _read_ahead(execution, self.settings, runs[i][1], beside)

        writer, writing = _Writer(), None
        read(0, None)
        try:
            for job in jobs:
                i = position[job.index]
                for passed in [j for j in reads if j < i]:  # runs whose designs failed: their data unused
                    del reads[passed]
                read(i + 1, job.run)
                writer.next_read = reads.get(i + 1)
                result = _fit_job(replace(job, execution=execution), reads.pop(i, None), writer)
                if writing is not None:
                    collect(writing.result())
                writing = result if isinstance(result, Future) else _finished(result)
            if writing is not None:
                collect(writing.result())
        finally:  # (interrupted while the previous run's writing was collected, the next one's is on a thread too)
            writer.finish()

    # ---- higher levels ---------------------------------------------------------------------------------------
    def fit_higher(self) -> None:
        """Each node below the root, in the model's edge order, down to the level asked for."""
        stop = LEVELS.index(self.settings.level)
        queue = [self.root.name]
        seen = set()
        edges = self.edges()
        while queue:
            source = queue.pop(0)
            for src, dst, filters in edges:
                if src != source:
                    continue
                node = self.node(dst)
                if LEVELS.index(node.level) > stop:
                    continue
                self.fit_node(node, source, filters)
                if node.name not in seen:
                    seen.add(node.name)
                    queue.append(node.name)

    def upstream_failures(self, source: str, filters: dict) -> list[Failure]:
        """The failures of groups on the node's own path through the graph (node `source`, which its edge names,
        with that edge's `filters`, and the nodes before it, edge by edge), whose maps are missing from its
        inputs; each with the entities of the input it would have given the node: its contrast renamed as the
        nodes between rename it (``word`` -> ``word_change``), one failure per contrast it would have passed on.
        Failures of other branches (a sibling Subject node's) are no input of this node."""
        into = {dst: (src, f) for src, dst, f in self.edges()}
        path = [(source, filters)]  # (the node and the edge's filters after it, nearest first)
        while path[-1][0] in into and len(path) <= len(into):
            src, f = into[path[-1][0]]
            path.append((src, f))
        path.reverse()
        found = []
        for f in self.failures:
            start = next((i for i, (name, _) in enumerate(path) if name == f.node), None)
            if not f.entities or start is None:
                continue
            phantoms = [dict(f.entities)]
            for name, edge_filters in path[start:]:  # (each node's groups would have passed them on, renamed)
                grouped = "contrast" in {_long(k) for k in self.node(name).spec.get("GroupBy") or ()}
                renamed = self.renamed.get(name, {})
                passed = []
                for ents in phantoms:
                    held = _value(ents.get("contrast")) if grouped else None
                    names = renamed.get(held)
                    if names is None:  # (no group of that contrast passed any on: any of its contrasts)
                        passed.append({k: v for k, v in ents.items() if k != "contrast"})
                    else:
                        passed += [{**ents, "contrast": c} for c in sorted(names)]
                filtered = {_long(k): v for k, v in edge_filters.items()}
                phantoms = [e for e in passed if _passes(e, {k: v for k, v in filtered.items() if k in e})]
            seen = set()
            for ents in phantoms:
                if (key := _key(ents)) not in seen:
                    seen.add(key)
                    found.append(replace(f, entities=tuple(ents.items())))
        return found

    def map_of(self, source: str, entities: dict) -> _MapRef | None:
        """The maps node `source` passed on for the input of `entities` (a node's groups take their inputs from
        the node an edge names, never from another whose groups have the same entities)."""
        return self.maps.get((source, self.node(source).key(entities)))

    def fit_node(self, node: _Node, source: str, filters: dict) -> None:
        self.results.setdefault(node.name, [])
        self.outputs.setdefault(node.name, [])
        inputs = self.outputs.get(source, [])
        failed = self.upstream_failures(source, filters)
        refs = [self.map_of(source, ents) for _, ents in inputs]
        checksum = _checksum(
            __version__,
            dict(node.study).get("model"),
            self.settings.of_level(node.level),
            node.spec,
            filters,
            self.hemispheres,
            sorted([_key(ents), _file_stamp([ref.effect, ref.variance])] for (_, ents), ref in zip(inputs, refs)),
            sorted([f.node, f.group, f.reason] for f in failed),
            self.tables(),
        )
        self.node_checksums[node.name] = checksum
        if not self.force and self.reuse_node(node, checksum):
            return
        self.group_node(node, source, inputs, filters, failed)

    def reuse_node(self, node: _Node, checksum: str) -> bool:
        """The node's groups as the last study left them, when its checksum is unchanged and their records and
        maps are all there (no grouping by pybids, no refit)."""
        entry = self.manifest["nodes"].get(node.name) or {}
        if entry.get("checksum") != checksum:
            return False
        found = []
        for record in entry.get("records", ()):
            bids = _read_bids(Path(record))
            if bids is None or not _outputs_intact(bids, Path(record)):
                return False
            found.append((bids, Path(record)))
        for bids, record in found:
            self.results[node.name].append(_node_result(bids, record))
            self.pass_on(node.name, bids["outputs"], {k: v for k, v in bids["entities"].items() if v is not None})
        for group, reason, entities in entry.get("skipped", ()):
            self.skipped.append(Failure(node.name, group, reason, tuple(tuple(e) for e in entities)))
        return True

    def group_node(self, node: _Node, source: str, inputs, filters, failed) -> None:
        from bids.modeling.statsmodels import ContrastInfo

        inputs = self.without_sessions_tables(node, inputs)
        self._inputs[node.name] = [ents for _, ents in inputs]  # (whom a group leaves out: see left_out)
        if not inputs:  # (pybids' own message for this names its entity index, not the cause)
            reason = "no inputs: every group of the node before it failed (see above) or passed on no t contrast."
            self.failures.append(Failure(node.name, "all", reason))
            return
        group_by = list(node.spec.get("GroupBy") or [])
        if self.hemispheres and "hemi" not in group_by:
            group_by.append("hemi")
        filters = {_long(k): v for k, v in filters.items()}
        if not any(_passes(ents, filters) for _, ents in inputs):  # (pybids' message: KeyError 'subject')
            values = {k: sorted({str(_value(e.get(k))) for _, e in inputs}) for k in filters}
            reason = (
                f"the edge's Filter {json.dumps(filters)} keeps none of the {len(inputs)} inputs from node {source} "
                f"(their values: {'; '.join(f'{k} {listed(v)}' for k, v in values.items())}); give values they have."
            )
            self.failures.append(Failure(node.name, "all", reason))
            return
        keys = {_long(k) for k in group_by}
        held = {k for _, ents in inputs for k in keys if _value(ents.get(k)) is not None}
        carried = {k for r in self._runs for k, v in r.entities if v is not None}  # (by the runs: pybids names)
        lost = sorted(k for k in keys - held if k in ENTITIES and k in carried)
        if lost:  # (the runs had it, the node before combined over it: one pooled group, no word said)
            reason = (
                f"its GroupBy names {lost[0]}, which none of its {len(inputs)} inputs from node {source} carries: "
                f"that node combined them over {lost[0]}; add {lost[0]} to the GroupBy of node {source} to keep them "
                "apart, or leave it out of this node's."
            )
            self.failures.append(Failure(node.name, "all", reason))
            return
        infos = [
            ContrastInfo(name, [name], [1], "t", {**ents, **{k: _ABSENT for k in held if _value(ents.get(k)) is None}})
            for name, ents in inputs
        ]
        try:
            # (missing values kept, not filled with 0: _numbers refuses them, naming the inputs). The groups of a
            # dataset-level node are no subject's: pybids merged participants.tsv into them by subject (KeyError)
            subjects = {_value(ents.get("subject")) for _, ents in inputs if _passes(ents, filters)} - {None}
            sessions = {(_value(e.get("subject")), _value(e.get("session"))) for _, e in inputs if _passes(e, filters)}
            pybids_node = self.pybids_node(node.name, subjects=sorted(subjects), sessions=sessions)
            groups = _node_outputs(pybids_node, infos, group_by, filters)
        except _PYBIDS_ERRORS as exc:
            absent = re.search(r"X specification includes variable\(s\) \[(.*?)\], but these were not", str(exc))
            lacking = self.lacking_levels(node, absent.group(1), sessions) if absent and node.level == "subject" else {}
            if lacking:  # (those subjects' groups fail, naming the level; the others are fitted)
                for subject, reason in sorted(lacking.items()):
                    entities = (("subject", subject),)
                    self.failures.append(Failure(node.name, _group_label(dict(entities)), reason, entities))
                collections = self._graph.get_node(node.name)._collections
                collections[:] = [c for c in collections if _value(c.entities.get("subject")) not in lacking]
                kept = [(name, e) for name, e in inputs if _value(e.get("subject")) not in lacking]
                if kept:
                    self.group_node(node, source, kept, filters, failed)
                return
            named = {"dataset": self.participant_columns, "subject": self.session_columns}.get(node.level, ())
            table = "participants.tsv" if node.level == "dataset" else "sessions.tsv"
            columns = f" ({table}'s columns: {listed(named)})" if named else ""
            what = "" if isinstance(exc, (ValueError, KeyError)) else f"{type(exc).__name__}: "
            reason = (
                f"pybids could not build the node's groups ({what}{str(exc).strip().rstrip('.')}); check the "
                f"node's Model.X, GroupBy and Transformations{columns}."
            )
            merged = re.search(r"merge on \w+ and \w+ columns for key '([^']+)'", str(exc))
            if node.level == "subject" and merged and (said := self.unmerged(merged.group(1), subjects)):
                reason = said
            gap = _table_gap(self.participant_rows, node.spec, subjects) if node.level == "dataset" else None
            if isinstance(exc, TypeError) and gap:  # (pybids' Factor of a column with n/a: "'<' not supported ...")
                column, where = gap
                reason = (
                    f"participants.tsv's column {column!r}, which the node takes, has no value (n/a) for "
                    f"{listed(where)}; fill it, or leave those subjects out (--participant-label)."
                )
            self.failures.append(Failure(node.name, "all", reason))
            return
        if not groups:  # (pybids built none: a subject node grouped by a sessions.tsv column fitted nothing, exit 0)
            reason = (
                f"pybids built no group of its {len(inputs)} inputs from node {source} by its GroupBy "
                f"({', '.join(group_by)}); group by entities of the inputs"
                + (" or participants.tsv columns" if node.level == "dataset" else "")
                + ", or leave the others out of GroupBy."
            )
            self.failures.append(Failure(node.name, "all", reason))
            return
        if node.level == "dataset" and (gap := _missing_cells(self.participant_rows, group_by, subjects, True)):
            # (pybids, missing values ignored, put them in every group: fitted in each, exit 0)
            self.failures.append(Failure(node.name, "all", _ungrouped(node.name, *gap)))
            return
        # one file label per contrast name across the study (ContrastLabels: "reward+" and "reward-" are reward and
        # reward2 at every level), and each group's record claimed once: two groups of one path would each write
        # over the other
        names = {c.name for g in groups for c in g.contrasts} | {
            str(_value(g.entities.get("contrast"))) for g in groups if _value(g.entities.get("contrast")) is not None
        }
        labels = dict(zip(sorted(names), self.contrast_labels(sorted(names))))
        claimed: dict[Path, str] = {}
        produced = []
        writer, writing = DaemonExecutor(), None  # each group written on a thread while the next one fits

        def fail(entities: dict, exc: InputError) -> None:
            whose = exc.whose if isinstance(exc, _ForeignGroup) else None
            self.failures.append(Failure(node.name, _group_label(entities), str(exc), tuple(entities.items()), whose))

        def written(future: Future, entities: dict) -> None:
            try:
                result, outputs = future.result()
            except InputError as exc:
                fail(entities, exc)
                return
            self.results[node.name].append(result)
            self.pass_on(node.name, outputs, entities)

        try:
            for g in groups:
                entities = {k: v for k, v in g.entities.items() if _value(v) is not None}
                produced.append(entities)
                try:
                    g = self.own_subjects(node, g, infos, group_by, filters, sorted(subjects))
                    sessions = self.session_ids if self.sessions_taken(node) else {}
                    if behind := _left_behind(inputs, g, filters, self.participants, sessions):
                        raise InputError(
                            f"the input(s) {listed(behind)} of the group left out of its design (a subject without "
                            "a row in participants.tsv, or a session without one in its subject's sessions.tsv, "
                            "whose columns the node's Model.X takes?); add their rows, or leave them out "
                            "(--participant-label, or the model's Input)."
                        )
                    write = self.fit_group(node, source, g, entities, failed, labels, claimed)
                except InputError as exc:
                    fail(entities, exc)
                    continue
                if writing is not None:
                    written(*writing)
                with signals_held():  # (interrupted between the thread's start and this record: not waited for)
                    writing = (writer.submit(write), entities)
            if writing is not None:
                written(*writing)
        finally:  # (interrupted: the group being written is finished first)
            if writing is not None:
                wait([writing[0]])
        self.skip_empty(node, group_by, produced, failed)

    def lacking_levels(self, node: _Node, names: str, sessions: set) -> dict[str, str]:
        """The subjects (of the (subject, session) pairs `sessions` of the node's inputs) whose sessions have no
        row of a level of a sessions.tsv column that pybids' Factor makes a variable of (`names`, those pybids did
        not find: "'timepoint.post'"), each with why: pybids failed the whole node for them, none named, as voxfit
        fails a run without an event of a trial type alone."""
        root, lacking = Path(self.layout.root), {}
        for name in re.findall(r"'([^']+)'", names):
            column, _, level = name.partition(".")
            if column not in self.session_columns or not level:
                continue
            for subject in sorted({s for s, _ in sessions} - {None}):
                rows = _subject_sessions(root, subject)[1]
                if not rows or column not in rows[0]:
                    continue
                own = {ses for s, ses in sessions if s == subject}
                levels = {row[column] for row in rows if row["session_id"] in own and column in row}
                if level not in levels and subject not in lacking:
                    lacking[subject] = (
                        f"sub-{subject} has no session whose {column} is {level!r} (its sessions' {column}: "
                        f"{listed(sorted(levels)) or 'none'}), and the node's Model.X takes {name}; leave it out of "
                        "Model.X, or the subject out (--participant-label)."
                    )
        return lacking

    def unmerged(self, column: str, subjects) -> str | None:
        """Why pybids could not merge sessions.tsv's `column` (which the node takes) over `subjects`' tables: a table
        whose cells of it are all n/a (numbers to pandas) beside others of words, or numbers beside words."""
        kinds: dict[str, list[str]] = {}
        root = Path(self.layout.root)
        for subject in sorted(subjects):
            path, rows = _subject_sessions(root, subject)
            if not rows or column not in rows[0]:
                continue
            cells = [row[column] for row in rows if column in row and row[column] not in PANDAS_MISSING]
            kind = "no value" if not cells else "numbers" if all(map(is_number, cells)) else "words"
            kinds.setdefault(kind, []).append(str(path.relative_to(root)))
        if len(kinds) < 2:
            return None
        odd = "no value" if "no value" in kinds else min(kinds, key=lambda k: len(kinds[k]))
        others = " and ".join(k for k in ("numbers", "words") if k in kinds and k != odd)
        what = "is n/a in every row of" if odd == "no value" else f"holds {odd} in"
        todo = "fill it, or leave those subjects out (--participant-label)" if odd == "no value" else "write it alike"
        return (
            f"sessions.tsv's column {column!r}, which the node takes, {what} {listed(kinds[odd])} and holds {others} "
            f"in the other subjects' tables, which pybids cannot merge; {todo}."
        )

    def sessions_taken(self, node: _Node) -> list[str]:
        """The sessions.tsv columns a Subject node's Model.X takes (pybids gives that table to Subject nodes only)."""
        if node.level != "subject":
            return []
        return sorted({str(x) for x in (node.spec.get("Model") or {}).get("X") or ()} & set(self.session_columns))

    def without_sessions_tables(self, node: _Node, inputs: list) -> list:
        """The inputs of a Subject node whose Model.X takes a column of sessions.tsv, but those of subjects without a
        sessions.tsv, whose groups fail, saying so: pybids failed the whole node for them ("not found in data
        matrix"), every subject's groups lost, none named."""
        taken = self.sessions_taken(node)
        if not taken:
            return inputs
        lacking = sorted({_value(e.get("subject")) for _, e in inputs} - set(self.session_ids) - {None})
        for subject in lacking:
            reason = (
                f"sub-{subject} has no sessions.tsv, whose column(s) {listed(taken)} the node's Model.X takes; add "
                "its table, or leave the subject out (--participant-label)."
            )
            entities = (("subject", subject),)
            self.failures.append(Failure(node.name, _group_label(dict(entities)), reason, entities))
        return [(name, e) for name, e in inputs if _value(e.get("subject")) not in lacking]

    def longest_stat(self, level: str) -> str:
        """The longest ``stat-`` part of a group's maps at `level` (its name's length checked before the fit)."""
        s = self.settings
        stats = ["variance"]
        if level == "dataset" and s.permutations:
            stats += ["puncorrected", *(["pclustermassfwe"] if s.cluster_threshold else [])]
            stats += ["ptfcefwe"] if s.tfce else []
        if level == "dataset" and s.rft:
            stats.append("logp_desc-rftfwe")
        return max(stats, key=len)

    def own_subjects(self, node: _Node, g, infos, group_by, filters, loaded: list[str]):
        """Group `g` built again from the participants.tsv and sessions.tsv rows of its own subjects, where the
        node transforms them and the rows `loaded` for the node were others too (a group per contrast of which a
        subject failed, a group per participants.tsv column's value): Demean and Scale then take the subjects of
        the group's model, not those of the node's other groups."""
        rows = g.metadata.to_dict("records")
        own = sorted({_value(r.get("subject")) for r in rows} - {None})
        # (a group of one subject: pybids reads each subject's sessions.tsv apart, and its participants.tsv row is
        # one value; rebuilt, 55 ms a subject)
        if not node.spec.get("Transformations") or len(own) < 2 or own == loaded:
            return g
        keys = {_key(r) for r in rows}
        mine = [info for info in infos if _key(info.entities) in keys]
        pybids = self._graph.get_node(node.name)
        if self._rows_of.get(node.name) != own:  # (a subject's groups in turn: its rows loaded once)
            pybids._collections = []  # (pybids' load_collections adds to those it has: these subjects' rows alone)
            self._load(node.name, False, {"subject": own})
            self._rows_of[node.name] = own
        wanted = {k: _value(v) for k, v in g.entities.items()}
        try:
            again = _node_outputs(pybids, mine, group_by, filters)
            same = [h for h in again if {k: _value(v) for k, v in h.entities.items()} == wanted]
        except _PYBIDS_ERRORS as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise InputError(f"pybids could not transform its subjects' variables ({why}).") from None
        if len(same) != 1:  # (pybids' grouping of the same inputs is the same: not met)
            raise InputError(f"pybids grouped its {len(mine)} inputs otherwise from their own subjects' rows.")
        return same[0]

    def skip_empty(self, node: _Node, group_by, produced, failed) -> None:
        """A group that pybids did not make because every input of it failed above: skipped, with why."""
        keys = [_long(k) for k in group_by if _long(k) != "contrast"]
        have = {tuple(_value(e.get(k)) for k in keys) for e in produced}
        lost: dict[tuple, list[Failure]] = {}
        for f in failed:
            ents = dict(f.entities)
            if all(k in ents for k in keys):
                where = tuple(_value(ents[k]) for k in keys)
                if where not in have:
                    lost.setdefault(where, []).append(f)
        for where, fs in lost.items():
            entities = dict(zip(keys, where))
            why = "; ".join(dict.fromkeys(f"{f.group} failed at node {f.node}" for f in fs))  # (once, not a contrast)
            reason = f"skipped: no input left ({why})"
            self.skipped.append(Failure(node.name, _group_label(entities), reason, tuple(entities.items())))

    def left_out(self, node: _Node, entities: dict, rows, failed) -> tuple[list[str], dict]:
        """The notes of a group built without some inputs (those of `failed` groups within its entities) and,
        for a dataset group, its subjects used and left out."""
        notes, extra = [], {}
        mine = []
        for f in failed:
            ents = dict(f.entities)
            same = any((f.node, f.group) == (m.node, m.group) for m in mine)  # (two of its contrasts here)
            if not same and all(_value(ents[k]) == _value(v) for k, v in entities.items() if k in ents):
                mine.append(f)
        for f in mine:
            notes.append(f"built without {f.group}: it failed at node {f.node} ({f.reason})")
        if node.level == "dataset":
            used = sorted({_value(row.get("subject")) for row in rows if _value(row.get("subject")) is not None})
            out = {}
            for f in mine:
                subject = _value(dict(f.entities).get("subject"))
                if subject is not None and subject not in used:
                    out.setdefault(subject, f"{f.group} failed at node {f.node}")
            # and the subjects with inputs to the node, of this group's other entities, none of them in its rows: a
            # subject whose runs lack the group's condition (no map of its contrast), or one the node's rows leave out
            theirs = {
                _value(e.get("subject"))
                for e in self._inputs.get(node.name, ())
                if all(_value(e.get(k)) == _value(v) for k, v in entities.items() if k != "contrast" and k in e)
            }
            for subject in sorted(theirs - set(used) - set(out) - {None}):
                out[subject] = "none of its inputs to the node is in this group's rows (no map of its contrast)"
            extra = {"subjects_used": used, "subjects_left_out": out}
            if out:
                notes.append(
                    f"subjects used: {', '.join(used)}; left out: "
                    + ", ".join(f"{s} ({why})" for s, why in sorted(out.items()))
                )
        return notes, extra

    def fit_group(self, node: _Node, source: str, g, entities, failed, labels: dict, claimed: dict):
        """Fit pybids' group `g` of the node's inputs (the groups of node `source`); returns a function that writes
        its maps and record (in their folder, committed whole) and returns its ``(NodeResult, outputs)``. A group
        whose checksum is unchanged is not refitted: the function returns what its record says. `labels`: the file
        label of each contrast name of the node; `claimed`: the records of the node's groups so far, by casefolded
        path (a group whose files another group writes is refused)."""
        rows = g.metadata.to_dict("records")
        X = _numbers(g.X, rows)
        names = [str(c) for c in X.columns]
        refs = [self.map_of(source, row) for row in rows]
        missing = [row for row, ref in zip(rows, refs) if ref is None]
        if missing:  # (inputs of failed groups were never passed on: a row without maps is pybids' own)
            raise InputError(f"no maps for the input {_input_name(missing[0])}; its lower node failed.")
        Xv = X.to_numpy()
        _check_pooled_contrasts(node, entities, rows, Xv)
        _check_factor_levels(node, rows, Xv, names)
        _check_one_map_per_subject(node, rows, self.settings.group_model)
        rank = np.linalg.matrix_rank(Xv) if Xv.size else 0
        if rank < Xv.shape[1]:
            raise InputError(
                f"the design of node {node.name}, group {_group_label(entities)} ({Xv.shape[0]} inputs, columns "
                f"{', '.join(names)}) has rank {rank} < {Xv.shape[1]}: not estimable; drop a column from Model.X "
                "or give more inputs."
            )
        contrasts = [c for c in g.contrasts]
        weights = {labels[c.name]: _weights(c, names) for c in contrasts}
        level = node.level
        folder = group_folder(self.out_dir, node.name, entities, level)
        prefix = group_prefix(entities)
        contrast = _value(entities.get("contrast"))
        named = "" if contrast is None else f"contrast-{labels[str(contrast)]}_"
        record_path = folder / f"{prefix}{named}model.json"
        key = Path(str(record_path).casefold())  # (on macOS's and Windows' file systems one file whatever its case)
        if key in claimed:
            raise InputError(
                f"its files ({record_path.name} and its maps) are those of group {claimed[key]} too: their "
                "entities differ only in characters a file name leaves out, or in case; rename one (its contrast, or "
                "the participants.tsv value it is grouped by)."
            )
        extension = Path(refs[0].effect).name.split("_statmap")[-1]  # (the inputs' maps': the group's are alike)
        check_name_lengths(prefix, [labels[c.name] for c in g.contrasts], extension, self.longest_stat(level))
        claimed[key] = _group_label(entities)
        notes, extra = self.left_out(node, entities, rows, failed)
        notes += _correlated_inputs(rows, Xv, weights) + _repeated_subjects(node, rows, self.settings.group_model)
        checksum = _checksum(
            __version__,
            self.settings.of_level(level),
            node.spec,
            Xv.tolist(),
            names,
            {k: v.tolist() for k, v in weights.items()},
            [c.test for c in contrasts],
            _file_stamp([p for ref in refs for p in (ref.effect, ref.variance)]),
            notes,
        )
        bids = self.reuse(record_path, checksum, dict(node.study))
        if bids is not None:
            return lambda: (_node_result(bids, record_path), bids["outputs"])
        replaced = _subjects_dropped(record_path, extra)  # (said when refitted only: not in its checksum or record)
        effects = [ref.effect for ref in refs]
        variances = [ref.variance for ref in refs]
        dofs = _dof_per_map(rows, [ref.dof for ref in refs])
        # the node's Model.Type: "meta", fixed effects over its inputs; "glm", the group model asked for at the
        # dataset level, and an ordinary GLM of the inputs' effects (OLS) below it (as the specification and
        # FitLins read them: a Subject node of Type glm was fitted by fixed effects, a Dataset meta by mixed)
        if (node.spec.get("Model") or {}).get("Type") == "meta":
            fitted = self.fit_fixed(Xv, names, weights, effects, variances, dofs)
        else:
            fitted = self.fit_dataset(Xv, names, weights, effects, variances, dofs, level)
        stats = {label: _as_tested(s, weights[label]) for label, s in fitted.stats.items()}
        masker, rft = fitted.masker, fitted.rft

        def write():
            from ..design import write_design
            from ..models.glm import rft_record, write_rft
            from ..models.second_level import write_cluster_table

            ext = masker.geometry.extension
            outputs = {}
            with open_group(folder) as out:
                for c in contrasts:
                    label = labels[c.name]
                    s = stats[label]
                    write_stats(out, prefix, label, s, masker, ext)
                    for stat, values in fitted.maps.get(label, ()):
                        masker.write(out.path(map_name(prefix, label, stat, ext)), values, [f"{label} {stat}"])
                    if label in fitted.tables:  # (voxfit group's clusters.tsv, the group's prefix before it)
                        write_cluster_table(out.path(clusters_table_name(label, prefix)), fitted.tables[label])
                    if s.kind == "t" and c.test != "F":
                        outputs[c.name] = {
                            "label": label,
                            "effect": str(folder / map_name(prefix, label, "effect", ext)),
                            "variance": str(folder / map_name(prefix, label, "variance", ext)),
                            "dof": fitted.contrast_dof.get(label, fitted.dof),
                        }
                shared = record_path.name.removesuffix("model.json")  # the RPV map: one per group (of a contrast)
                footers = {} if rft is None else write_rft(out, rft, masker, prefix, shared)
                write_design(out.path(shared + "design.tsv"), Xv, names)
                bids = bids_record(node, entities, checksum, self.settings, outputs, notes, **extra)
                bids["files"] = sorted({*out.names, record_path.name})
                inference = None if rft is None else rft_record(rft, footers, prefix)
                self.write_group_record(
                    out, record_path.name, node, bids, Xv, names, weights, stats, effects, variances, fitted, inference
                )
                out.drop(*_listed_files(record_path, dict(node.study)))
                files = out.commit()
            result = NodeResult(
                node.name, level, tuple(entities.items()), tuple(weights), tuple(files), notes=(*notes, *replaced)
            )
            return result, outputs

        return write

    def load_pairs(self, effects, variances):
        """The effect and variance maps in memory at the elements finite in all of them with positive
        variances, and their masker."""
        from ..io import Masker, open_map

        geometry = open_map(Path(effects[0])).geometry
        everything = np.ones(geometry.n_elements, dtype=bool)
        E = _read_maps(effects, everything, "effects")
        V = _read_maps(variances, everything, "variances")
        keep = np.isfinite(E).all(0) & np.isfinite(V).all(0) & (V > 0).all(0)
        if not keep.any():
            raise InputError(
                f"no voxel has a finite effect and a positive variance in every input ({effects[0]}, ...)."
            )
        return E[:, keep], V[:, keep], Masker(geometry, keep)

    def fit_fixed(self, X, names, weights, effects, variances, dofs):
        """Fixed effects (precision-weighted) over a subject's (or session's) inputs, their variances taken as
        estimates on their dof (Kenward-Roger's, voxfit.mixed_effects' default): each t contrast's maps are passed
        on with the median over the voxels of its effective dof, where they were flameo's sum of the inputs' dof
        minus the rank, which takes the weights as known."""
        from ..engine.mixed import mixed_effects

        E, V, masker = self.load_pairs(effects, variances)
        fit = mixed_effects(
            X, E, V, weights, names=names, model="fixed", first_level_dof=dofs, execution=self.execution
        )
        dof = float(np.nanmedian(fit.dof)) if np.ndim(fit.dof) else float(fit.dof)
        own = {
            label: float(np.nanmedian(s.dof)) if np.ndim(s.dof) else float(s.dof)
            for label, s in fit.contrasts.items()
            if s.kind == "t" and np.isfinite(s.dof).any()
        }
        return _GroupFitted(fit.contrasts, masker, "fixed", dof, contrast_dof=own)

    def fit_dataset(self, X, names, weights, effects, variances, dofs, level: str = "dataset"):
        """The group model asked for (voxfit.SecondLevel) on the subjects' effect and variance maps; at another
        `level` (a Subject or Session node of Model.Type glm), OLS on the inputs' effects, parametric inference."""
        from ..inference.rft_fit import RFTOptions
        from ..models.second_level import SecondLevel

        s = self.settings
        group_model = s.group_model if level == "dataset" else "ols"
        n, rank = X.shape[0], int(np.linalg.matrix_rank(X))
        if n < 2 or (group_model != "fixed" and n <= rank):
            fewer = "runs or sessions, or the node's Model.Type meta (fixed effects),"
            more = "subjects" if level == "dataset" else fewer
            raise InputError(
                f"a group model of {n} input(s) and {rank} design column(s) at the {level} level leaves no degrees of "
                f"freedom; it needs more {more} (inputs left out failed above or were not chosen), or end the study "
                "at the level below."
            )
        dataset = level == "dataset"
        model = SecondLevel(
            design=(X, names),
            contrasts=weights,
            variances=None if group_model == "ols" else list(variances),
            model=group_model,
            first_level_dof=list(dofs) if group_model == "fixed" else None,
            permutations=s.permutations if dataset else 0,
            tfce=s.tfce and dataset,
            cluster_threshold=s.cluster_threshold if dataset else None,
            seed=s.seed if dataset else None,  # (the dataset's shuffles: --seed comes with --permutations)
            rft=None if s.rft is None or not dataset else RFTOptions(**s.rft),
            execution=self.execution,
        )
        fit = model.fit([Path(p) for p in effects], progress=False)
        extra = {}
        for label, perm in fit.permutation.items():
            maps = [("pfwe", perm.p_fwe), ("puncorrected", perm.p_uncorrected)]
            if perm.clusters is not None:  # (cluster extent and mass FWE p, as voxfit group writes them)
                maps.append(("pclusterfwe", perm.clusters.voxel_map(perm.clusters.p_extent)))
                maps.append(("pclustermassfwe", perm.clusters.voxel_map(perm.clusters.p_mass)))
            if perm.p_tfce_fwe is not None:
                maps.append(("ptfcefwe", perm.p_tfce_fwe))
            extra[label] = maps
        dof = float(X.shape[0] - np.linalg.matrix_rank(X))
        shuffles = {  # (the count made, not the one asked for: 4 subjects have 16 sign-flips, however many asked)
            label: {"scheme": perm.scheme, "shuffles": perm.n_shuffles, "exhaustive": perm.exhaustive}
            for label, perm in fit.permutation.items()
        }
        return _GroupFitted(fit.parametric, fit.masker, group_model, dof, extra, fit.rft, dict(fit.clusters), shuffles)

    def write_group_record(
        self, out, name, node, bids, X, names, weights, stats, effects, variances, fitted: _GroupFitted, inference=None
    ):
        """The group's model.json, into `out`: of its `fitted` model (masker, model, shuffles made) and `inference`
        (RFT's, or None)."""
        from ..models.record import MIXED_DOF, ModelRecord, contrast_record, input_records

        s, masker, model, shuffles = self.settings, fitted.masker, fitted.model, fitted.shuffles
        inferred = node.level == "dataset" and (node.spec.get("Model") or {}).get("Type") != "meta"
        record = ModelRecord(
            kind="group",
            voxfit_version=__version__,
            command=list(self.command) if self.command else None,
            inputs=input_records([Path(p) for p in (*effects, *variances)]),
            design={
                "columns": names,
                "n_rows": int(X.shape[0]),
                "notes": [f"{model} effects over the inputs of node {node.name}; X from the BIDS Stats Model"],
                "paired": False,
                "table": None,
                "matched_by": None,
                "rows": [{"map": str(p)} for p in effects],
            },
            contrasts={
                label: contrast_record(
                    weights[label].tolist(),
                    stats[label],
                    per_voxel_dof=MIXED_DOF,
                    **({"permutation": shuffles[label]} if shuffles and label in shuffles else {}),
                )
                for label in weights
            },
            settings={
                "permutations": s.permutations if inferred else 0,
                "seed": s.seed,
                "scheme": "auto",
                "exchangeability_blocks": None,
                "whole_blocks": False,
                "tfce": s.tfce and inferred,
                "tfce_E": 0.5 if masker.geometry.kind == "volume" else 1.0,
                "tfce_H": 2.0,
                "cluster_threshold": s.cluster_threshold if inferred else None,
                "connectivity": 6,
                "mesh": None,
                "mask": "finite effects and positive variances in every input",
                "p": "one-sided upper tail for t; z has the same upper-tail probability",
                "bids": bids,
            },
            n_voxels=int(masker.n_voxels),
            inference=inference,
            run=out.run_record(),
        )
        record.write(out, name)


def _read_maps(paths, everything, name: str) -> np.ndarray:
    """The maps `paths` as an (n, elements) float64 array (one 3-D map is read as itself, not as a run)."""
    from ..io import apply_scale, gather, load, open_map

    if len(paths) > 1:
        return np.asarray(load([Path(p) for p in paths], everything, name=name).data, dtype=np.float64)
    reader = open_map(Path(paths[0]))
    return apply_scale(gather(reader, np.flatnonzero(everything)), reader.scale).astype(np.float64)


class ContrastLabels:
    """One letters-and-digits file label per contrast name across the whole study (its maps are named
    ``contrast-<label>_...``), made unique: a name that is a label keeps it (c2 was contrast-c22 in the runs that
    had a contrast c_2 too, contrast-c2 in the others); the others' take a number where theirs is taken, in the
    order the names first come: the model's contrasts in the file's order, then any other (DummyContrasts'
    columns). Labels chosen per node had given "IvC-" and "IvC+" the labels IvC and IvC2 at the run level, in the
    file's order, and the other way round above it, in sorted order: one file name, opposite contrasts. Labels are
    unique whatever their case (Go and go give Go and go2): a folder of contrast-Go and contrast-go files copied to a
    file system that ignores case (macOS's, Windows') keeps one of each pair, under either's name."""

    def __init__(self, names=()):
        self._of: dict[str, str] = {}
        self._lock = threading.Lock()
        self(names)

    def __call__(self, names) -> list[str]:
        """The labels of `names`, those not seen before given theirs."""
        from ..io import sanitize_label

        names = [str(n) for n in names]
        with self._lock:
            taken = {label.casefold() for label in self._of.values()}
            fresh = [n for n in dict.fromkeys(names) if n not in self._of]
            for n in fresh:  # (first, so that a name that is a label is not taken by another's)
                if sanitize_label(n) == n and n.casefold() not in taken:
                    self._of[n] = n
                    taken.add(n.casefold())
            for n in fresh:
                if n in self._of:
                    continue
                label = base = sanitize_label(n)
                k = 2
                while label.casefold() in taken:
                    label, k = f"{base}{k}", k + 1
                self._of[n] = label
                taken.add(label.casefold())
            return [self._of[n] for n in names]


def _weights(contrast, names) -> np.ndarray:
    """A pybids ContrastInfo's weights over the design columns `names` (its conditions may be a subset)."""
    conditions = ["intercept" if c == 1 else str(c) for c in contrast.conditions]
    w = np.atleast_2d(np.asarray(contrast.weights, dtype=float))
    out = np.zeros((w.shape[0], len(names)))
    for j, c in enumerate(conditions):
        if c not in names:
            raise InputError(
                f"contrast {contrast.name!r} names {c!r}, which is not a column of the node's design "
                f"({', '.join(names)}); name a column of Model.X."
            )
        out[:, names.index(c)] = w[:, j]
    return out[0] if out.shape[0] == 1 and (contrast.test or "t") != "F" else out
