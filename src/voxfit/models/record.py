"""``model.json``: what a fit records of itself, written and read by one class, :class:`ModelRecord`.

The file's form is also given as a JSON Schema (draft 2020-12), ``model.schema.json`` beside this module
(:func:`schema`). The helpers below make the parts of the record that more than one model writes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .._digest import CHUNK, changed_since_opened, file_digest, new_hash
from .._threads import DaemonExecutor
from ..exceptions import InputError
from ..io import source_label

__all__ = [
    "KINDS",
    "RECORD_VERSION",
    "ModelRecord",
    "check_output",
    "is_output",
    "contrast_record",
    "design_record",
    "design_rows_record",
    "dof_record",
    "input_record",
    "input_records",
    "start_input_records",
    "mask_record",
    "schema",
]

RECORD_VERSION = 2  # raised when a key changes meaning or goes away (not when one is added)
KINDS = ("first-level", "runs", "group")
MODEL_TEXT = {"runs": "fixed effects across runs", "group": "group (second level)"}  # the older "model" key
FILE = "model.json"


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """What a fit records of itself in ``model.json``, so that it can be repeated and reported.

    Made with keywords. Written as one JSON object, keys in the order of the fields below and under their
    names, except `version` (written first, as ``record_version``) and `kind` (``model_kind``); runs and group
    records also carry ``model`` (``"fixed effects across runs"``, ``"group (second level)"``), the kind in the
    words of files older than ``model_kind``. A field that is None is not written (except `command`); a key
    missing from a file is read as None (older files lack some); unknown keys of a file are ignored.

    kind: ``"first-level"`` (one design fitted to one run, ``voxfit fit``), ``"runs"`` (several runs, each
        with its design, combined by fixed effects) or ``"group"`` (``voxfit group``, maps of subjects).
    voxfit_version: the version of voxfit that wrote the file.
    command: the command line that made the run (a list of arguments); None when called from Python.
    inputs: first level and group (runs: per run, in `runs`): per file ``path`` (absolute), ``bytes`` and
        ``blake3`` (its BLAKE3 digest, as ``b3sum`` prints it; of a store folder: over its files, see
        :func:`input_record`); per input given in memory ``source``, ``type``, ``shape``, ``dtype`` and
        ``blake3`` of its values. (Record version 1 gave SHA-256s, as ``sha256``.)
    runs: runs only: per run ``inputs``, ``columns``, ``n_scans``, ``kinds``, ``tr`` (as in `design`) and
        ``noise_details`` (as in `settings`).
    data: first level only: ``n_scans``, ``n_voxels`` (in the mask), ``n_invalid_voxels`` (in the mask but not
        fitted: NaN or infinite values), ``dtype`` (as stored), ``geometry`` (``kind``: volume, surface, CIFTI
        file, plain array; ``n_elements`` of the grid; volumes' ``shape`` and ``affine`` (mm), CIFTI's
        ``structures``).
    mask: first level and runs: see :func:`mask_record`.
    design: first level: ``columns``, ``n_rows``, ``rank``, ``dof`` (rows - rank), ``condition_number_scaled``
        (of the design with unit-norm columns), ``kinds`` (each column's kind, see ``voxfit.design.kinds``),
        ``tr`` (seconds; only for designs built from events). Group: ``columns``, ``n_rows`` (maps; pairs with
        --paired), ``notes`` (what the design builder did), ``paired`` and which map each row got (see
        :func:`design_rows_record`). Absent for runs (see `runs`).
    contrasts: per contrast label (see :func:`contrast_record`): ``expression`` (as given: text, or weights as
        nested lists), ``weights`` (rows over the design's columns; absent for runs, whose designs differ),
        ``kind`` (``t`` or ``F``), ``dof`` (see :func:`dof_record`); for groups also ``p_thresholds``
        (``fdr_0.05``: the largest p that passes FDR q < 0.05, 0 when none does; ``bonferroni_0.05``: 0.05 /
        the voxels with a p) and ``permutation`` (``scheme`` flip or permute, ``shuffles``, ``exhaustive``;
        None without permutations).
    settings: the options of the fit. First level: ``max_memory`` (as given, e.g. ``"2G"``; None: no cap),
        ``n_jobs``, ``noise_model`` (``ols``, ``ar1`` .. ``ar8``, ``ar1-global``), ``noise_details`` (what the
        noise model found: ``model`` in words, ``streamed`` for one-pass fits; for ar1-global SPM's ReML
        hyperparameters, the pooled voxels, their F threshold and the lag-1 correlation), ``scaling``
        (``none``, ``mean``, ``global``), ``p`` (which tail the p maps hold). Runs: ``noise_model``,
        ``scaling``, ``mask_threshold`` (fraction of each scan's global; None when not used), ``mask`` (its
        source, in words). Group: ``permutations``, ``seed``, ``scheme``, ``exchangeability_blocks`` (a block
        per map, or None), ``whole_blocks``, ``tfce``, ``tfce_E``, ``tfce_H``, ``cluster_threshold`` (on the
        statistic, or None), ``connectivity`` (neighbours of a voxel: 6, 18, 26), ``mesh`` (absolute path, or
        None), ``mask`` (its source, in words), ``p``.
    n_voxels: runs and group: the voxels (vertices, columns) fitted, those of the mask.
    inference: first level and group with ``--inference rft`` (None otherwise): ``method`` (``rft``),
        ``smoothness`` (``fwhm_voxels`` and ``fwhm_mm`` (x, y, z), ``resels`` R0..R3, ``resel_voxels`` (voxels
        per resel), ``rpv`` (the resels-per-voxel map's ``mean``, ``min``, ``max``), ``residuals`` (which
        ones), ``dof``), ``search`` (``voxels``, ``mm3``), ``height`` (``p`` and ``correction`` as asked),
        ``extent`` (voxels) and per contrast label ``contrasts`` (``field`` T, F or Z (Z: a model whose dof vary
        by voxel, before 2026-12-07), ``dof``, ``height_stat`` (the threshold on the statistic), ``height_z``
        (where the dof vary by voxel: the field's values are each voxel's statistic mapped to the median dof, and
        this the threshold on the z map), ``height_p_uncorrected``, ``fwe_0.05`` (the statistic's FWE 0.05
        threshold), ``expected_voxels_per_cluster``, ``expected_clusters``, ``clusters`` (found), ``table``
        (the results table's file)).
    run: ``started`` (ISO 8601, to the second), the seconds of each step (first level: ``load_s``,
        ``fit_s``), ``elapsed_s`` (seconds from opening the output folder to writing the file) and
        ``peak_memory_mib`` (peak resident memory of the process, MiB; None where the system does not tell).
    demo: ``voxfit demo`` only: ``seed``, ``data`` (where the synthetic run is) and ``repeat`` (the command
        that refits the data from the output folder).
    outputs: the BLAKE3 digest of each file the fit wrote into its folder before the record (maps, tables,
        designs), by name: what a report checks each file it reads against (written by :meth:`write`; a map
        edited or copied in from another fit had been drawn beside this fit's others). The file also carries
        ``record_blake3``, the digest of its own content (see :func:`_record_digest`): a record edited after
        voxfit wrote it is refused as it is read.
    version: the version of this record's form, :data:`RECORD_VERSION`; files older than the key are read as
        version 1 (their keys are those of version 1). Version 2 gives the inputs' BLAKE3 digests (``blake3``)
        where version 1 gave SHA-256s (``sha256``).
    """

    kind: str
    voxfit_version: str
    command: list[str] | None
    inputs: list[dict] | None = None
    runs: list[dict] | None = None
    data: dict | None = None
    mask: dict | None = None
    design: dict | None = None
    contrasts: dict
    settings: dict
    n_voxels: int | None = None
    inference: dict | None = None
    run: dict | None = None
    demo: dict | None = None
    outputs: dict | None = None
    version: int = RECORD_VERSION

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ModelRecord.kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")

    def as_dict(self) -> dict:
        """The record as model.json holds it (a JSON object)."""
        values = asdict(self)
        kind = values.pop("kind")
        out = {"record_version": values.pop("version"), "model_kind": kind}
        out |= {"voxfit_version": values.pop("voxfit_version"), "command": values.pop("command")}
        if kind in MODEL_TEXT:
            out["model"] = MODEL_TEXT[kind]
        return out | {k: v for k, v in values.items() if v is not None}

    def write(self, out, name: str = FILE) -> None:
        """Write ``model.json`` (or `name`: a study's node groups name theirs) into the output folder `out` (a
        :class:`voxfit.io.OutputFolder`); refused (an InputError, so that nothing is committed) where an input file
        changed after a reader opened it: the maps might mix its old and new data, and the record would describe
        another file."""
        for path in self._input_paths():
            if changed_since_opened(path):
                raise InputError(
                    f"{path} was written to, replaced or removed while this run read it: its maps could mix old and "
                    "new data; run again once nothing writes to it."
                )
        staging = out.path(name).parent
        outputs = {n: file_digest(staging / n) for n in out.names if n != name and (staging / n).is_file()}
        record = json.loads(json.dumps(replace(self, outputs=outputs or None).as_dict(), default=str))  # (as read)
        out.write_json(name, record | {SEAL: _record_digest(record)})

    def check_output(self, path) -> None:
        """:func:`check_output` of the record's ``outputs``."""
        check_output(self.outputs, path)

    def _input_paths(self) -> list[str]:
        """The paths of the files the run read, as recorded: its data (of each run, for runs), an explicit mask (a
        first level's ``mask``, a group's ``settings``), a mixed group's variance and dof maps (its pairing's
        rows). Names that are no file (``automatic``, an image in memory) were never noted as opened."""
        inputs = list(self.inputs or []) + [i for run in self.runs or [] for i in run.get("inputs") or []]
        paths = [i.get("path") for i in inputs if isinstance(i, dict)]
        paths += [(self.mask or {}).get("source"), self.settings.get("mask")]
        rows = ((self.settings.get("mixed_effects") or {}).get("pairing") or {}).get("rows") or []
        paths += [row.get(key) for row in rows if isinstance(row, dict) for key in ("variance_map", "dof_map")]
        return [p for p in paths if isinstance(p, str)]

    @classmethod
    def read(cls, path) -> ModelRecord:
        """The record of an output folder, or of a ``model.json`` file (or ``<entities>_model.json``, as a study's
        node groups name theirs); an InputError if there is none or it is not one. Files written before
        ``model_kind`` existed are read by their keys (see :func:`_kind`)."""
        path = Path(path)
        named = path.name == FILE or path.name.endswith(f"_{FILE}")
        folder, path = (path.parent, path) if named and not path.is_dir() else (path, path / FILE)
        if not path.is_file():
            raise InputError(f"{folder} holds no {FILE}; give the output folder of a finished voxfit fit or group run.")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # (nested beyond Python's stack: not voxfit's)
            raise InputError(
                f"{path} is not readable JSON ({type(exc).__name__}); rerun the fit to rewrite it."
            ) from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} is not a voxfit {FILE} (not a JSON object); rerun the fit to rewrite it.")
        seal = raw.pop(SEAL, None)
        if seal is not None and seal != _record_digest(raw):
            raise InputError(
                f"{path} was edited after voxfit wrote it (its content no longer gives its {SEAL}); rerun the fit "
                "to rewrite it."
            )
        version = raw.get("record_version", 1)  # (files older than the key: version 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InputError(
                f"{path} has record_version {version!r}, not a version of voxfit's {FILE}; rerun the fit to rewrite it."
            )
        if version > RECORD_VERSION:
            raise InputError(
                f"{path} was written by a newer voxfit (record_version {version}; this one reads versions up to "
                f"{RECORD_VERSION}); upgrade voxfit to read it."
            )
        values = {"kind": _kind(raw, path), "version": version}
        for f in fields(cls):
            if f.name not in values:
                value = raw.get(f.name)
                if value is not None and not isinstance(value, _JSON_TYPES[f.name]):
                    raise InputError(
                        f"{path} holds {f.name!r} of the wrong type ({type(value).__name__}); rerun the fit to "
                        "rewrite it."
                    )
                values[f.name] = value
        values["contrasts"] = values["contrasts"] or {}  # (required when written; tolerated when absent)
        values["settings"] = values["settings"] or {}
        values["voxfit_version"] = values["voxfit_version"] or "unknown"
        return cls(**values)


SEAL = "record_blake3"  # the key of the record's digest of its own content


def is_output(outputs: dict | None, path) -> bool:
    """Whether `path` is a file of the fit whose record lists `outputs`: there, and among them where the record
    lists its files (a file an earlier fit left in the folder, kept by ``--force``, is not)."""
    path = Path(path)
    return path.is_file() and (outputs is None or path.name in outputs)


def check_output(outputs: dict | None, path) -> None:
    """Refuse a file of a record's folder that is not the one the fit wrote (its digest is not the one in the
    record's `outputs`): a map or table edited since, or one of another fit copied over it. Files the record does
    not list (records older than ``outputs``) are not checked."""
    expected = (outputs or {}).get(Path(path).name)
    if expected is not None and file_digest(path) != expected:
        raise InputError(
            f"{path} is not the file the fit wrote (its BLAKE3 checksum differs from its record's): it was edited "
            "or replaced since; rerun the fit to make the folder's files one fit's again."
        )


def _record_digest(record: dict) -> str:
    """The BLAKE3 digest of a record's content, the JSON object as read back (without its seal): its keys
    sorted, no spaces, so that the file's layout does not count."""
    h = new_hash()
    h.update(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


_JSON_TYPES = {  # what each field must be in a file (when present and not null)
    "voxfit_version": str,
    "command": list,
    "contrasts": dict,
    "settings": dict,
    "run": dict,
    "inputs": list,
    "data": dict,
    "mask": dict,
    "design": dict,
    "runs": list,
    "n_voxels": int,
    "inference": dict,
    "demo": dict,
    "outputs": dict,
}


def _kind(raw: dict, path: Path) -> str:
    """The model kind of a file: its ``model_kind``, or for files older than that key, its ``model`` text
    (runs, group), and first level where it has none."""
    kind = raw.get("model_kind")
    if kind is None:
        text = raw.get("model")
        kind = "first-level" if text is None else next((k for k, t in MODEL_TEXT.items() if t == text), text)
    if kind not in KINDS:
        raise InputError(
            f"{path} records a model of kind {kind!r}, not one of {', '.join(KINDS)}; rerun the fit to rewrite it."
        )
    return kind


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of model.json, shipped beside this module."""
    return json.loads((Path(__file__).parent / "model.schema.json").read_text())


AR_DOF = (
    "effective degrees of freedom of the AR model (Satterthwaite's for t, Kenward-Roger's for F of several rows); "
    "see voxfit.core.ar"
)
RUNS_DOF = (
    "effective (Satterthwaite) degrees of freedom of the runs' estimated weights (the runs' dof summed where their "
    "shares are equal); see voxfit.models.runs.fixed_effects"
)
MIXED_DOF = (
    "per-voxel degrees of freedom of the group model (mixed: Satterthwaite's, also with Kenward-Roger's covariance; "
    "fixed: Kenward-Roger's for the estimated first-level variances, or with voxfit group --dof residual flameo's "
    "sum of the first-level dof minus the rank)"
)


def contrast_record(expr, stats, weights: bool = True, per_voxel_dof: str = AR_DOF, **more) -> dict:
    """A contrast as model.json records it: its `expr` as given, its weights (unless not `weights`), its kind
    and degrees of freedom (from its `stats`; `per_voxel_dof` says what per-voxel ones are), and `more` (the
    group's thresholds and permutations)."""
    return {
        "expression": expr if isinstance(expr, str) else np.asarray(expr).tolist(),
        **({"weights": stats.weights.tolist()} if weights else {}),
        "kind": stats.kind,
        "dof": dof_record(stats.dof, per_voxel_dof),
        **more,
    }


def dof_record(dof, per_voxel: str = AR_DOF):
    """A contrast's degrees of freedom for model.json: the number, ``[df1, df2]`` for F, and for per-voxel
    (effective) degrees of freedom their range and median over the voxels that have them, with what they are
    (`per_voxel`, in words); per-voxel ones that are one number everywhere (FILM's n - rank) are that number."""
    if isinstance(dof, tuple):
        return [dof_record(d, per_voxel) for d in dof]
    if np.ndim(dof) == 0:
        return float(dof)
    finite = np.asarray(dof)[np.isfinite(dof)]
    if finite.size and finite.min() == finite.max():
        return float(finite[0])
    summary = {"per_voxel": per_voxel}
    if finite.size:
        summary.update(min=float(finite.min()), median=float(np.median(finite)), max=float(finite.max()))
    return summary


def mask_record(mask, threshold, n_voxels: int, n_elements: int) -> dict:
    """What model.json says of the mask: its ``source`` (path, or ``automatic``), the ``threshold`` of the
    automatic mask (fraction of each scan's global; None when not used), its ``rule`` in words, the
    ``n_voxels`` it kept and their ``fraction_of_grid``."""
    if mask is not None:
        source, rule = source_label(mask), "explicit: non-zero, finite values"
    elif threshold is not None:
        source, rule = (
            "automatic",
            (f"SPM's: above {threshold:g} x each scan's global (spm_global) in every scan, finite and not constant"),
        )
    else:
        source, rule = "automatic", "finite and not constant over the scans"
    return {
        "source": source,
        "threshold": threshold,
        "rule": rule,
        "n_voxels": int(n_voxels),
        "fraction_of_grid": round(n_voxels / max(1, n_elements), 6),
    }


def design_record(design, kinds) -> dict:
    """What model.json records of a design beside its columns: each column's kind (see
    ``voxfit.design.kinds``) and, for a design built from events, the TR."""
    return {"kinds": list(kinds), **({"tr": design.tr} if hasattr(design, "tr") else {})}


def design_rows_record(d, paths, paired: bool) -> dict:
    """model.json's record of which table row each map got: ``table`` (path, ``DataFrame`` or None),
    ``matched_by`` (the id column, ``position``, or None for a one-sample design) and ``rows``: per design row,
    the map (with `paired`, the A map and the B map subtracted from it), its participant id and its row in the
    table (1-based, counting data rows, the header excluded); ``dropped_rows`` likewise for rows without a map.
    When the maps are the volumes of one file, ``rows`` is None: design row k is volume k."""
    n = d.X.shape[0]
    record = {"table": d.source, "matched_by": d.matched_by}
    if len(paths) != (2 * n if paired else n):  # volumes of one file (or a few): in the file's order
        return {**record, "rows": None, "order": "design row k is map k of the input, in the order of its volumes"}
    names = [str(p) for p in paths]
    rows = []
    for k in range(n):
        row = {"map": names[k]}
        if paired:
            row["minus"] = names[n + k]
        if d.ids:
            row["participant_id"] = d.ids[k]
        if d.matched_by is not None:
            row["table_row"] = int(d.rows[k]) + 1
        rows.append(row)
    return {**record, "rows": rows, "dropped_rows": [{"participant_id": i, "table_row": r + 1} for r, i in d.dropped]}


def input_record(path: Path, digest: str | None = None) -> dict:
    """What model.json says of an input file: its path as named (:func:`recorded_path`: a DataLad dataset's files
    are links into its annex, whose object names tell no run, space or table), the real path where links lead
    elsewhere (``target``), size, BLAKE3 digest (of a store folder such as a Zarr store: over its files' relative
    names and digests, in sorted order)."""
    path = Path(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    named, target = recorded_path(path), os.path.realpath(path)
    record = {"path": named, "target": target} if target != named else {"path": named}
    return {**record, "bytes": size, "blake3": digest or _digest(path)}


def recorded_path(path) -> str:
    """How model.json names a file: its absolute path as named, links and ``..`` kept (a normalised ``a/link/..``
    would name another file than the one read)."""
    return str(Path(path).absolute())


def input_records(paths, memory=()) -> list[dict]:
    """What model.json says of the inputs: each file's :func:`input_record`, and for data given in memory
    (nibabel images, arrays: :class:`voxfit.io.MemoryInput`) what they were, their shape and a BLAKE3 digest
    of their values (run on a thread beside the fit: ``DaemonExecutor(aside=True)``)."""
    return [input_record(p) for p in paths] + [m.record() for m in memory]


def start_input_records(reader) -> Future:
    """:func:`input_records` of a reader's inputs, started on a daemon thread as their read starts (an
    interruption abandons it: a pool's ``with`` block and the interpreter's exit would both wait to the end of a
    file of gigabytes). At a low priority beside a decompression, which is then the longest task; else at the
    fit's own: with SHA-256 (1.15 s for a 1.65 GB .nii, whose read and fit take 0.65 s) the low priority made the
    fit wait, 1.74 against 1.67 s; with BLAKE3 (0.55-0.6 s of CPU) the priority makes no difference there
    (1.27-1.87 s against 1.30-1.54 s at the low priority, 5 alternating runs each). The command line has started
    the files' digests earlier still (``voxfit._digest.start_digests``); these records take them."""
    hashing = DaemonExecutor(aside=getattr(reader, "compressed", False))
    return hashing.submit(input_records, reader.paths, reader.in_memory)


def _digest(path: Path, buf: memoryview | None = None) -> str:
    """The BLAKE3 digest of a file's bytes (:func:`voxfit._digest.file_digest`: the one the command line started,
    if any), or of a folder's (see :func:`input_record`)."""
    if not Path(path).is_dir():
        return file_digest(path, buf)
    h = new_hash()
    buf = buf if buf is not None else memoryview(bytearray(CHUNK))  # (one for all the files)
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(bytes.fromhex(_digest(f, buf)))
    return h.hexdigest()
