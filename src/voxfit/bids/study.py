"""``voxfit.bids.run``: a whole study, a BIDS dataset with fMRIPrep derivatives and a BIDS Stats Model, fitted
node by node from each run to the group.

The flow: the dataset is indexed (pybids, a cached index under ``OUT_DIR/.voxfit/bids-index``), its runs found
(:func:`voxfit.bids.layout.find_runs`), the model loaded and validated (the default one from the runs' trial
types without ``model``), pybids' ``BIDSStatsModelsGraph`` built. The Run node fits each run with voxfit's
first level (:func:`voxfit.models.glm.fit_images`) on the design of :func:`voxfit.bids.run_design.run_design`;
each t contrast's effect and variance maps go on as pybids ``ContrastInfo`` to the nodes below it, which pybids
groups (``node.run``). Session and Subject nodes combine their inputs by fixed effects (precision-weighted, the
runs' first-level dof; :func:`voxfit.mixed_effects`); Dataset nodes fit :class:`voxfit.SecondLevel` with the
group model asked for (mixed effects by default) on the effect and variance maps, the node's X from pybids
(participants.tsv columns by name). F contrasts are terminal.

A run or group that fails on bad input is recorded (node, group, the sentence naming the file and field) and
the others go on; what depends on it leaves it out and says so. A group whose inputs and settings are unchanged
since the last run (a checksum over the settings, the node, its design, its contrasts and each input file's
path, size and modification time, kept in its record) is not refitted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._execution import Execution
from .._progress import Progress
from .._version import __version__
from ..exceptions import InputError
from .layout import ENTITIES, RAW, find_runs, index
from .outputs import describe_dataset, group_folder, group_prefix, map_name, open_group

__all__ = ["Failure", "NodeResult", "StudyResult", "run"]

LEVELS = ("run", "session", "subject", "dataset")
GROUP_MODELS = ("mixed", "ols", "fixed")
STATS = ("effect", "variance", "stat", "p", "z")


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


@dataclass(frozen=True)
class Failure:
    """A node group that could not be fitted: the node, the group (its entities as a label) and why."""

    node: str
    group: str
    reason: str

    def __str__(self) -> str:
        return f"node {self.node}, {self.group}: {self.reason}"


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run` did: per node name its groups' results, the failures, the output folder and the model
    file written there."""

    out_dir: Path
    model_file: Path
    nodes: dict[str, tuple[NodeResult, ...]]
    failures: tuple[Failure, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Everything asked for was fitted."""
        return not self.failures


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of :func:`run` that the fits depend on (recorded, and part of every checksum)."""

    level: str
    noise: str
    scaling: str
    convolution: str
    smoothing: float | None
    group_model: str
    permutations: int
    tfce: bool
    cluster_threshold: float | None
    seed: int | None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "level"}


@dataclass(frozen=True)
class _MapRef:
    """The maps a group passes on for one contrast: effect, variance, the dof of the variance, the test."""

    effect: str
    variance: str
    dof: float


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
    noise: str = "ols",
    scaling: str = "none",
    convolution: str = "spm",
    group_model: str = "mixed",
    permutations: int = 0,
    tfce: bool = False,
    cluster_threshold: float | None = None,
    seed: int | None = None,
    report: bool = False,
    force: bool = False,
    execution: Execution | None = None,
    max_memory=None,
    n_jobs: int | None = None,
    scheduler=None,
    progress: bool | None = None,
    command=None,
) -> StudyResult:
    """Fit the BIDS Stats Model `model` (a path, JSON text, a dict; None: voxfit's default model) to the BIDS
    dataset `bids_dir` with its fMRIPrep `derivatives`, from each run to the node level `level` (run, session,
    subject or dataset), writing a BIDS derivatives dataset to `out_dir` (see :mod:`voxfit.bids.outputs`).

    participant_label, task, space, desc: which runs (see :func:`voxfit.bids.layout.find_runs`); smoothing: a
    Gaussian FWHM in mm applied to volumes before the run-level fit (refused for surfaces and CIFTI); noise,
    scaling, convolution: the run level's noise model, scaling and HRF convolution (as ``voxfit fit``);
    group_model: ``mixed`` (default), ``ols`` or ``fixed`` at dataset nodes; permutations, tfce,
    cluster_threshold, seed: their permutation inference (as ``voxfit group``); force: refit every group even
    when unchanged; execution (or its shortcuts max_memory, n_jobs, scheduler, progress): how each fit runs;
    report: an HTML report per subject and for the dataset; command: the command line, recorded.
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
    )
    from bids.modeling import BIDSStatsModelsGraph

    from .spec import default_model, load_model

    out_dir = Path(out_dir)
    layout = index(bids_dir, derivatives, database=out_dir / ".voxfit" / "bids-index")
    labels = tuple(str(p).removeprefix("sub-") for p in participant_label or ())
    if model is None:
        runs = find_runs(layout, task=task, space=space, desc=desc, participant_label=labels, strict=False)
        sessions = any(dict(r.entities).get("session") for r in runs)
        tasks = sorted({dict(r.entities)["task"] for r in runs})
        if all(r.problems for r in runs):  # nothing to fit: the first run's problem is the one to fix
            raise InputError(runs[0].problems[0])
        model = load_model(
            default_model(task or (tasks[0] if len(tasks) == 1 else None), _trial_types(runs), sessions=sessions)
        )
    else:
        model = load_model(model, task=task)
        runs = find_runs(
            layout,
            task=task,
            space=space,
            desc=desc,
            participant_label=labels,
            mask_entities=_mask_entities(model),
            strict=False,
        )
    model_file = describe_dataset(out_dir, model, command)
    graph = BIDSStatsModelsGraph(layout, model)
    graph.load_collections(**({"subject": list(labels)} if labels else {}))
    study = _Study(graph, model, settings, execution, out_dir, force, command, layout)
    study.fit_runs(runs)
    study.fit_higher()
    if report:  # from the records just written, in this process, once each (see voxfit.bids.report)
        from .report import write_study_reports

        write_study_reports(out_dir, failures=study.failures, progress=execution.progress)
    result = StudyResult(out_dir, model_file, {k: tuple(v) for k, v in study.results.items()}, tuple(study.failures))
    return result


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
):
    from .._checks import check_scalar
    from ..models._routing import noise_order

    if level not in LEVELS:
        raise InputError(f"`level` must be one of {', '.join(LEVELS)}; got {level!r}.")
    if group_model not in GROUP_MODELS:
        raise InputError(f"`group_model` must be one of {', '.join(GROUP_MODELS)}; got {group_model!r}.")
    if convolution not in ("spm", "nilearn"):
        raise InputError(f"`convolution` must be spm or nilearn; got {convolution!r}.")
    if scaling not in ("none", "mean", "global"):
        raise InputError(f"`scaling` must be none, mean or global; got {scaling!r}.")
    noise_order(noise)
    if report:
        from .report import check_matplotlib

        check_matplotlib()  # known before the fits, not after them
    if smoothing:
        raise InputError("--smoothing is not available for voxfit bids yet; smooth before, or drop it.")
    if smoothing is not None:
        check_scalar(smoothing, "`smoothing`", min_val=0, description="a FWHM in mm (>= 0)")
        smoothing = float(smoothing) or None
    check_scalar(permutations, "`permutations`", min_val=0, description="0 or a positive number")
    if tfce and not permutations:
        raise InputError("TFCE needs permutations for its p-values; give --permutations N (e.g. 5000).")
    if permutations and group_model != "ols":
        raise InputError(
            f"permutation inference is for OLS group models; the dataset nodes' model is {group_model}: "
            "add --group-model ols, or drop --permutations."
        )
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, scheduler=scheduler, progress=progress
    )
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
    )
    return settings, execution


def _trial_types(runs) -> list[str]:
    """The trial types of the runs' events (their ``trial_type`` column), sorted; empty when none has one."""
    import pandas as pd

    found: set[str] = set()
    for r in runs:
        if r.events is None:
            continue
        try:
            table = pd.read_csv(r.events, sep="\t", na_values="n/a")
        except (OSError, ValueError):
            continue
        if "trial_type" in table:
            found |= {str(t) for t in table["trial_type"].dropna().unique()}
    return sorted(found)


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


def _value(v):
    """An entity's value as one text whatever pandas made of it (1, 1.0, '1' -> '1'); None for NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    return str(v)


_KEYS = tuple(ENTITIES) + ("contrast",)


def _key(entities: dict) -> tuple:
    return tuple((k, _value(entities.get(k))) for k in _KEYS if _value(entities.get(k)) is not None)


def _group_label(entities: dict) -> str:
    parts = [f"{ENTITIES.get(k, k)}-{v}" for k, v in _key(entities)]
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


def _checksum(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Study:
    """The state of one study while it is fitted: the graph, where each contrast's maps are, the results."""

    def __init__(self, graph, model, settings: _Settings, execution, out_dir: Path, force: bool, command, layout):
        self.graph, self.model, self.settings, self.execution = graph, model, settings, execution
        self.out_dir, self.force, self.command, self.layout = out_dir, force, command, layout
        self.maps: dict[tuple, _MapRef] = {}  # _key(contrast entities) -> the maps
        self.outputs: dict[str, list] = {}  # node name -> ContrastInfo passed on
        self.results: dict[str, list[NodeResult]] = {}
        self.failures: list[Failure] = []
        self.hemispheres = False

    def node_dict(self, name: str) -> dict:
        return next(n for n in self.model["Nodes"] if n["Name"] == name)

    # ---- run level -------------------------------------------------------------------------------------------
    def fit_runs(self, runs) -> None:
        from bids.modeling.statsmodels import ContrastInfo

        root = self.graph.root_node
        root = self.graph.get_node(root) if isinstance(root, str) else root
        if root.level != "run":
            raise InputError(
                f"the model's first node {root.name!r} is at the {root.level} level; voxfit fits studies from the "
                "Run level (make a Run node the first node)."
            )
        self.root = root
        self.hemispheres = any(dict(r.entities).get("hemi") for r in runs)
        self.results[root.name] = []
        self.outputs[root.name] = []
        bar = Progress("runs", len(runs), self.execution.progress)
        for k, r in enumerate(runs):
            try:
                if r.problems:
                    raise InputError(" ".join(r.problems))
                result, passed = self.fit_run(root, r)
            except InputError as exc:
                self.failures.append(Failure(root.name, r.label, str(exc)))
                continue
            finally:
                bar.update(k + 1)
            self.results[root.name].append(result)
            for name, ref, entities in passed:
                self.maps[_key(entities)] = ref
                self.outputs[root.name].append(ContrastInfo(name, [name], [1], "t", entities))
        bar.close()

    def fit_run(self, node, r):
        from ..design.kinds import column_kinds
        from .run_design import run_design

        entity = dict(r.entities)
        node_dict = self.node_dict(node.name)
        collections = node.get_collections(**{k: entity[k] for k in RAW if k in entity})
        if not collections:
            raise InputError(f"{r.events}: pybids read no variables for this run; check its events.tsv.")
        try:
            rd = run_design(
                collections[0],
                node_dict,
                tr=r.tr,
                n_scans=r.n_scans,
                convolution=self.settings.convolution,
                slice_time_ref=None,
            )
        except InputError as exc:
            raise InputError(f"{exc} (run {r.bold.name}, events {r.events})") from None
        design = rd.design
        X = np.asarray(design.X if hasattr(design, "X") else design.matrix)
        names = list(design.names)
        contrasts = [c for c in rd.contrasts if c.test in ("t", "F", "pass", None)]
        labels = _labels([c.name for c in contrasts])
        folder = group_folder(self.out_dir, node.name, entity, "run")
        prefix = group_prefix(entity)
        record_path = folder / f"{prefix}model.json"
        checksum = _checksum(
            __version__,
            self.settings.as_dict(),
            node_dict,
            X.tolist(),
            names,
            [[c.name, c.matrix(names).tolist(), c.test] for c in contrasts],
            _file_stamp([r.bold, r.mask, r.events, r.confounds]),
        )
        reused = self.reuse(record_path, checksum)
        if reused is not None:
            return self.reused_result(node, entity, reused, record_path)
        if self.settings.smoothing and r.mask is None and not str(r.bold).endswith((".nii", ".nii.gz")):
            raise InputError(
                f"{r.bold}: --smoothing is for volumes; surface and CIFTI runs are smoothed on their mesh "
                "(not done here): drop --smoothing."
            )
        if str(r.bold).endswith(".dtseries.nii") and self.settings.smoothing:
            raise InputError(f"{r.bold}: --smoothing is for volumes; drop it for CIFTI runs.")
        bold = r.bold
        from ..models.glm import fit_images

        fitted = fit_images(
            bold,
            design,
            {label: c.matrix(names) for label, c in zip(labels, contrasts)},
            mask=r.mask,
            noise=self.settings.noise,
            scaling=self.settings.scaling,
            execution=self.execution,
            progress=False,
        )
        kinds = tuple(column_kinds(design, names, X, None))
        passed, outputs = [], {}
        ext = fitted.masker.geometry.extension
        with open_group(folder) as out:
            for label, c in zip(labels, contrasts):
                s = fitted.contrasts[label]
                self.write_stats(out, prefix, label, s, fitted.masker, ext)
                if s.kind == "t":
                    outputs[c.name] = {
                        "label": label,
                        "effect": str(folder / map_name(prefix, label, "effect", ext)),
                        "variance": str(folder / map_name(prefix, label, "variance", ext)),
                        "dof": float(fitted.fit.dof),
                    }
            from ..models.glm import write_design_files

            write_design_files(out, prefix, X, names, kinds, r.tr)
            from ..models.record import ModelRecord, contrast_record, input_records, mask_record

            fit = fitted.fit
            record = ModelRecord(
                kind="first-level",
                voxfit_version=__version__,
                command=self.command,
                inputs=input_records([p for p in (r.bold, r.mask, r.events, r.confounds) if p is not None]),
                data={
                    "n_scans": r.n_scans,
                    "n_voxels": fitted.masker.n_voxels,
                    "n_invalid_voxels": int(fit.n_invalid),
                    "dtype": "float32",
                    "geometry": fitted.masker.geometry.describe(),
                },
                mask=mask_record(r.mask, None, fitted.masker.n_voxels, fitted.masker.geometry.n_elements),
                design={
                    "columns": names,
                    "n_rows": int(X.shape[0]),
                    "rank": int(fit.rank),
                    "dof": float(fit.dof),
                    "condition_number_scaled": float(fit.design.condition),
                    "kinds": list(kinds),
                    "tr": r.tr,
                },
                contrasts={
                    label: contrast_record(c.matrix(names).tolist(), fitted.contrasts[label])
                    for label, c in zip(labels, contrasts)
                },
                settings={
                    "max_memory": self.execution.max_memory,
                    "n_jobs": self.execution.n_jobs,
                    "noise_model": self.settings.noise,
                    "noise_details": {"model": "OLS" if self.settings.noise == "ols" else self.settings.noise},
                    "scaling": self.settings.scaling,
                    "p": "one-sided upper tail for t; z has the same upper-tail probability",
                    "bids": {  # (with the design's settings, which the study's report shows)
                        **self.bids_record(node, entity, checksum, outputs),
                        "design": {k: rd.settings.get(k) for k in ("hrf", "high_pass_s", "high_pass_from")},
                    },
                },
                run=out.run_record(),
            )
            out.write_json(record_path.name, record.as_dict())
            files = out.commit()
        for name, o in outputs.items():
            passed.append((name, _MapRef(o["effect"], o["variance"], o["dof"]), {**entity, "contrast": name}))
        return NodeResult(node.name, "run", tuple(entity.items()), tuple(labels), tuple(files)), passed

    def bids_record(self, node, entity, checksum, outputs, notes=()) -> dict:
        return {
            "node": node.name,
            "level": node.level,
            "entities": {k: _value(v) for k, v in entity.items()},
            "checksum": checksum,
            "study_settings": self.settings.as_dict(),
            "outputs": outputs,
            "notes": list(notes),
        }

    def reuse(self, record_path: Path, checksum: str) -> dict | None:
        """The record's ``bids`` part when the group at `record_path` was fitted with this checksum and its
        files are all there; None (refit) otherwise, or with `force`."""
        if self.force or not record_path.is_file():
            return None
        try:
            bids = json.loads(record_path.read_text())["settings"]["bids"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if bids.get("checksum") != checksum:
            return None
        files = [f for o in bids.get("outputs", {}).values() for f in (o["effect"], o["variance"])]
        return bids if all(Path(f).is_file() for f in files) else None

    def reused_result(self, node, entity, bids, record_path):
        passed = [
            (name, _MapRef(o["effect"], o["variance"], o["dof"]), {**entity, "contrast": name})
            for name, o in bids["outputs"].items()
        ]
        result = NodeResult(
            node.name,
            node.level,
            tuple(entity.items()),
            tuple(o["label"] for o in bids["outputs"].values()),
            (record_path,),
            reused=True,
            notes=tuple(bids.get("notes", ())),
        )
        return result, passed

    def write_stats(self, out, prefix, label, stats, masker, ext) -> None:
        rows = [f"{label}[{i}]" for i in range(stats.weights.shape[0])] if stats.kind == "F" else [label]
        for stat, values, names in (
            ("effect", stats.effect, rows),
            ("variance", stats.variance, rows),
            (stats.kind, stats.stat, [f"{label} {stats.kind}"]),
            ("p", stats.p, [f"{label} p"]),
            ("z", stats.z, [f"{label} z"]),
        ):
            masker.write(out.path(map_name(prefix, label, stat, ext)), values, names)

    # ---- higher levels ---------------------------------------------------------------------------------------
    def fit_higher(self) -> None:
        """Each node below the root, in the model's edge order, down to the level asked for."""
        stop = LEVELS.index(self.settings.level)
        queue = [self.root]
        seen = set()
        while queue:
            source = queue.pop(0)
            for edge in source.children:
                node = edge.destination
                if LEVELS.index(node.level) > stop:
                    continue
                inputs = self.outputs.get(source.name, [])
                self.fit_node(node, inputs, edge.filter or {})
                if node.name not in seen:
                    seen.add(node.name)
                    queue.append(node)

    def fit_node(self, node, inputs, filters) -> None:
        from bids.modeling.statsmodels import ContrastInfo

        self.results.setdefault(node.name, [])
        self.outputs.setdefault(node.name, [])
        group_by = list(node.group_by or [])
        if self.hemispheres and "hemi" not in group_by:
            group_by.append("hemi")
        filters = {_long(k): v for k, v in filters.items()}
        try:
            groups = node.run(inputs=list(inputs), group_by=group_by, missing_values="fill", **filters)
        except (ValueError, KeyError) as exc:
            self.failures.append(Failure(node.name, "all", f"{exc}; check the node's Model.X and GroupBy."))
            return
        for g in groups:
            entities = {k: v for k, v in g.entities.items() if _value(v) is not None}
            label = _group_label(entities)
            try:
                result, passed = self.fit_group(node, g, entities)
            except InputError as exc:
                self.failures.append(Failure(node.name, label, str(exc)))
                continue
            self.results[node.name].append(result)
            for name, ref, ents in passed:
                self.maps[_key(ents)] = ref
                self.outputs[node.name].append(ContrastInfo(name, [name], [1], "t", ents))

    def fit_group(self, node, g, entities):
        node_dict = self.node_dict(node.name)
        X = g.X.astype(float)
        names = [str(c) for c in X.columns]
        rows = g.metadata.to_dict("records")
        refs = [self.maps.get(_key(row)) for row in rows]
        missing = [row for row, ref in zip(rows, refs) if ref is None]
        if missing:  # (inputs of failed groups were never passed on: a row without maps is pybids' own)
            raise InputError(f"no maps for the input {_group_label(missing[0])}; its lower node failed.")
        Xv = X.to_numpy()
        rank = np.linalg.matrix_rank(Xv) if Xv.size else 0
        if rank < Xv.shape[1]:
            raise InputError(
                f"the design of node {node.name}, group {_group_label(entities)} ({Xv.shape[0]} inputs, columns "
                f"{', '.join(names)}) has rank {rank} < {Xv.shape[1]}: not estimable; drop a column from Model.X "
                "or give more inputs."
            )
        contrasts = [c for c in g.contrasts]
        labels = _labels([c.name for c in contrasts])
        weights = {label: _weights(c, names) for label, c in zip(labels, contrasts)}
        level = node.level
        folder = group_folder(self.out_dir, node.name, entities, level)
        prefix = group_prefix(entities)
        contrast = entities.get("contrast")
        record_path = folder / f"{prefix}{f'contrast-{_labels([contrast])[0]}_' if contrast else ''}model.json"
        checksum = _checksum(
            __version__,
            self.settings.as_dict(),
            node_dict,
            Xv.tolist(),
            names,
            {k: v.tolist() for k, v in weights.items()},
            [c.test for c in contrasts],
            _file_stamp([p for ref in refs for p in (ref.effect, ref.variance)]),
        )
        reused = self.reuse(record_path, checksum)
        if reused is not None:
            return self.reused_result(node, entities, reused, record_path)
        effects = [ref.effect for ref in refs]
        variances = [ref.variance for ref in refs]
        dofs = [ref.dof for ref in refs]
        if level == "dataset":
            stats, masker, model, dof, extra = self.fit_dataset(Xv, names, weights, effects, variances, dofs)
        else:
            stats, masker, model, dof, extra = self.fit_fixed(Xv, names, weights, effects, variances, dofs)
        ext = masker.geometry.extension
        outputs = {}
        with open_group(folder) as out:
            for label, c in zip(labels, contrasts):
                s = stats[label]
                self.write_stats(out, prefix, label, s, masker, ext)
                for stat, values in extra.get(label, ()):
                    masker.write(out.path(map_name(prefix, label, stat, ext)), values, [f"{label} {stat}"])
                if s.kind == "t" and c.test != "F":
                    outputs[c.name] = {
                        "label": label,
                        "effect": str(folder / map_name(prefix, label, "effect", ext)),
                        "variance": str(folder / map_name(prefix, label, "variance", ext)),
                        "dof": dof,
                    }
            from ..design import write_design

            write_design(out.path(record_path.name.removesuffix("model.json") + "design.tsv"), Xv, names)
            self.write_group_record(
                out,
                record_path.name,
                node,
                entities,
                checksum,
                outputs,
                Xv,
                names,
                weights,
                stats,
                effects,
                variances,
                masker,
                model,
            )
            files = out.commit()
        passed = [
            (name, _MapRef(o["effect"], o["variance"], o["dof"]), {**entities, "contrast": name})
            for name, o in outputs.items()
        ]
        return NodeResult(node.name, level, tuple(entities.items()), tuple(labels), tuple(files)), passed

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
        """Fixed effects (precision-weighted) over a subject's (or session's) inputs."""
        from ..engine.mixed import mixed_effects

        E, V, masker = self.load_pairs(effects, variances)
        fit = mixed_effects(
            X, E, V, weights, names=names, model="fixed", first_level_dof=dofs, execution=self.execution
        )
        dof = float(np.nanmedian(fit.dof)) if np.ndim(fit.dof) else float(fit.dof)
        return fit.contrasts, masker, "fixed", dof, {}

    def fit_dataset(self, X, names, weights, effects, variances, dofs):
        """The group model asked for (voxfit.SecondLevel) on the subjects' effect and variance maps."""
        from ..models.second_level import SecondLevel

        s = self.settings
        model = SecondLevel(
            design=(X, names),
            contrasts=weights,
            variances=None if s.group_model == "ols" else list(variances),
            model=s.group_model,
            first_level_dof=list(dofs) if s.group_model == "fixed" else None,
            permutations=s.permutations,
            tfce=s.tfce,
            cluster_threshold=s.cluster_threshold,
            seed=s.seed,
            execution=self.execution,
        )
        fit = model.fit([Path(p) for p in effects], progress=False)
        extra = {}
        for label, perm in fit.permutation.items():
            maps = [("pfwe", perm.p_fwe), ("puncorrected", perm.p_uncorrected)]
            if perm.p_tfce_fwe is not None:
                maps.append(("ptfcefwe", perm.p_tfce_fwe))
            extra[label] = maps
        dof = float(X.shape[0] - np.linalg.matrix_rank(X))
        return fit.parametric, fit.masker, s.group_model, dof, extra

    def write_group_record(
        self, out, name, node, entities, checksum, outputs, X, names, weights, stats, effects, variances, masker, model
    ):
        from ..models.record import MIXED_DOF, ModelRecord, contrast_record, input_records

        s = self.settings
        record = ModelRecord(
            kind="group",
            voxfit_version=__version__,
            command=self.command,
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
                label: contrast_record(weights[label].tolist(), stats[label], per_voxel_dof=MIXED_DOF)
                for label in weights
            },
            settings={
                "permutations": s.permutations if node.level == "dataset" else 0,
                "seed": s.seed,
                "scheme": "auto",
                "exchangeability_blocks": None,
                "whole_blocks": False,
                "tfce": s.tfce and node.level == "dataset",
                "tfce_E": 0.5 if masker.geometry.kind == "volume" else 1.0,
                "tfce_H": 2.0,
                "cluster_threshold": s.cluster_threshold if node.level == "dataset" else None,
                "connectivity": 6,
                "mesh": None,
                "mask": "finite effects and positive variances in every input",
                "p": "one-sided upper tail for t; z has the same upper-tail probability",
                "bids": self.bids_record(node, entities, checksum, outputs),
            },
            n_voxels=int(masker.n_voxels),
            run=out.run_record(),
        )
        out.write_json(name, record.as_dict())


def _read_maps(paths, everything, name: str) -> np.ndarray:
    """The maps `paths` as an (n, elements) float64 array (one 3-D map is read as itself, not as a run)."""
    from ..io import apply_scale, gather, load, open_map

    if len(paths) > 1:
        return np.asarray(load([Path(p) for p in paths], everything, name=name).data, dtype=np.float64)
    reader = open_map(Path(paths[0]))
    return apply_scale(gather(reader, np.flatnonzero(everything)), reader.scale).astype(np.float64)


def _labels(names) -> list[str]:
    """Letters-and-digits labels of the contrasts' names (for file names), made unique."""
    from ..io import sanitize_label

    out: list[str] = []
    for n in names:
        label = sanitize_label(n)
        k, base = 2, label
        while label in out:
            label, k = f"{base}{k}", k + 1
        out.append(label)
    return out


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
