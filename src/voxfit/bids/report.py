"""The reports of a study (``voxfit bids --report``): one HTML page per subject (``OUT_DIR/sub-<label>.html``),
one for the dataset (``OUT_DIR/dataset.html``, when the study has dataset-level nodes) and ``OUT_DIR/index.html``
linking them, with the nodes and the failures.

They are built from what the study wrote, never refitted: each node group's record (``*_model.json``, read by
:class:`voxfit.models.record.ModelRecord`), its design TSV and its maps. :func:`voxfit.bids.run` calls
:func:`write_study_reports` once after the nodes are fitted, in the same process; it can be called again later
on the output folder alone. A subject's page holds its runs' designs and contrasts, its session- and
subject-level (fixed-effects) maps per contrast, its failures and the settings its run records hold (noise
model, HRF, high-pass, smoothing); the dataset's page the group design, each contrast's group maps, the group
model, the subjects used and left out and the study's failures. Each fit is drawn by voxfit's own report
(:func:`voxfit.report.report_sections`: slices and clusters of volumes, distributions and structures of
surfaces and CIFTI files), with its maps found under the study's names (a group's entities before
``contrast-<c>_stat-<s>``; permutation p maps ``stat-pfwe``, ``stat-ptfcefwe``, ``stat-puncorrected``) and
the FDR and Bonferroni p maps that ``voxfit group`` writes computed from the p map.

Each page records a checksum of its inputs (every file of its node groups' folders by path, size and
modification time, the failures it lists, the pages it links to, voxfit's version) in a ``<meta>`` of its head;
a later call rebuilds only the pages whose checksum changed (all with ``force``), each written atomically.
The failures are the study's (``failures=``, as :func:`voxfit.bids.run` passes them), kept in
``OUT_DIR/.voxfit/failures.json`` for the calls without them.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import html
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import Progress
from .._version import __version__
from ..exceptions import InputError
from ..io import clusters_table_name, write_file_atomically
from ..report import (
    Contrast,
    DesignView,
    Results,
    expression_text,
    html_page,
    html_table,
    read_one_map,
    report_sections,
)
from .layout import ENTITIES
from .outputs import group_prefix, group_records, grouped_by_others, map_name

__all__ = ["StudyReports", "check_matplotlib", "write_study_reports"]

LEVEL_ORDER = ("run", "session", "subject", "dataset")
FAILURES = Path(".voxfit") / "failures.json"
_SUBJECT = re.compile(r"(?:^|[_/\s])sub-([A-Za-z0-9]+)")
_MAP = re.compile(r"^(?:contrast-(?P<c>[^_]+)_)?stat-(?P<s>[^_]+)(?:_desc-(?P<d>[^_]+))?_statmap(?P<ext>\..+)$")
REPORT_LEVELS = {  # a node's level -> how voxfit's report thresholds its maps (first level: z; group: corrected p)
    "run": "first level",
    "session": "fixed effects across runs",
    "subject": "fixed effects across runs",
    "dataset": "group",
}
_PERMUTATION_P = {
    "fwe": "pfwe",
    "tfcefwe": "ptfcefwe",
    "clusterfwe": "pclusterfwe",
    "clustermassfwe": "pclustermassfwe",
}
GROUP_MODELS = {
    "mixed": "mixed effects (mixed): each subject's effect weighted by 1 / (its variance + the between-subject "
    "variance), the between-subject variance estimated by REML at each voxel (its map is not among the study's "
    "outputs)",
    "ols": "ordinary least squares (ols) on the subjects' effect maps: the between-subject variance is the residual "
    "variance (the subjects' variance maps are not used)",
    "fixed": "fixed effects (fixed): each subject's effect weighted by 1 / its variance, no between-subject variance "
    "(inference about these subjects only); the variances taken as estimates on their first-level dof "
    "(Kenward-Roger's covariance and dof)",
}


def check_matplotlib() -> None:
    """An InputError (one line) when matplotlib, which the reports draw with, is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("reports need matplotlib: pip install 'voxfit[report]' (or drop --report).") from None


@dataclass(frozen=True)
class StudyReports:
    """The pages of a study: `index`, per subject label its page (`subjects`), the `dataset` page (None when
    the study has no dataset-level node), and which pages were `built` this time or left `unchanged`."""

    index: Path
    subjects: dict[str, Path]
    dataset: Path | None
    built: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()


@dataclass(frozen=True)
class _Group:
    """One node group as its record holds it: the record's path and content, node, level and entities."""

    path: Path
    record: dict
    node: str
    level: str
    entities: dict

    @property
    def stem(self) -> str:
        """The record's name without ``model.json`` (its design TSV is ``<stem>design.tsv``)."""
        return self.path.name.removesuffix("model.json")

    @property
    def title(self) -> str:
        keys = [k for k in (*ENTITIES, "contrast") if k != "subject" and k in self.entities]  # (in BIDS order)
        keys += sorted(k for k in self.entities if k not in keys and k != "subject")  # (GroupBy on other columns)
        words = [f"{ENTITIES.get(k, k)}-{self.entities[k]}" for k in keys]
        return f"{self.level.capitalize()} node {self.node}" + (f": {', '.join(words)}" if words else "")


@dataclass(frozen=True)
class _Failure:
    node: str
    group: str
    reason: str

    @property
    def subject(self) -> str | None:
        found = _SUBJECT.search(self.group) or _SUBJECT.search(self.reason)
        return found.group(1) if found else None


def write_study_reports(out_dir, *, failures=None, force: bool = False, progress: bool | None = None) -> StudyReports:
    """Write the reports of the study in `out_dir` (see the module's description) and return where they are.

    failures: the study's failures (:class:`voxfit.bids.study.Failure`, or anything with ``node``, ``group``
    and ``reason``); None: those kept by the last call that had them (none if no call had). force: rebuild
    every page, changed or not. progress: a bar over the pages.
    """
    out_dir, failures = _write_iv(out_dir, failures)
    groups = _read_groups(out_dir)
    if not groups and not failures:
        raise InputError(
            f"{out_dir} holds no node records of voxfit bids (sub-*/node-*/*_model.json); give the OUT_DIR of a "
            "study, or run voxfit bids first."
        )
    model_files = sorted(p.name for p in out_dir.glob("model-*_smdl.json"))
    subjects = sorted({g.entities["subject"] for g in groups if g.entities.get("subject")} | _failed(failures))
    dataset = [g for g in groups if g.level == "dataset"]
    pages = {f"sub-{s}": out_dir / f"sub-{s}.html" for s in subjects}
    if dataset:
        pages["dataset"] = out_dir / "dataset.html"
    pages["index"] = out_dir / "index.html"
    links = sorted(p.name for p in pages.values())
    bar = Progress("reports", len(pages), progress)
    built, unchanged = [], []
    for k, (name, path) in enumerate(pages.items(), 1):
        if name == "index":  # (its nodes table: the records; its links: the pages)
            mine, fails, files, linked = groups, failures, [g.path for g in groups], links
        elif name == "dataset":  # (its subjects left out: the study's subjects)
            mine, fails, files, linked = dataset, failures, _files({g.path.parent for g in dataset}), subjects
        else:
            label = name.removeprefix("sub-")
            mine = [g for g in groups if g.entities.get("subject") == label and g.level != "dataset"]
            fails = [f for f in failures if f.subject == label]
            files, linked = _files({g.path.parent for g in mine}), "dataset" in pages
        checksum = _checksum(files, name, fails, linked, model_files)
        if not force and _recorded_checksum(path) == checksum:
            unchanged.append(path)
        else:
            if name == "index":
                text = _index_page(out_dir, groups, failures, pages, model_files, checksum)
            elif name == "dataset":
                text = _dataset_page(out_dir, dataset, groups, subjects, failures, model_files, checksum)
            else:
                text = _subject_page(name.removeprefix("sub-"), mine, fails, "dataset" in pages, checksum)
            _write(path, text)
            built.append(path)
        bar.update(k)
    bar.close()
    return StudyReports(
        pages["index"],
        {s: pages[f"sub-{s}"] for s in subjects},
        pages.get("dataset"),
        tuple(built),
        tuple(unchanged),
    )


def _write_iv(out_dir, failures) -> tuple[Path, list[_Failure]]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} is not a folder; give the OUT_DIR of a voxfit bids study.")
    check_matplotlib()
    kept = out_dir / FAILURES
    if failures is None:
        try:
            saved = json.loads(kept.read_text())["failures"] if kept.is_file() else []
            return out_dir, [_Failure(str(f["node"]), str(f["group"]), str(f["reason"])) for f in saved]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{kept} is not voxfit's list of failures; delete it or pass failures=.") from None
    out = [_Failure(str(f.node), str(f.group), str(f.reason)) for f in failures]
    content = {
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "failures": [{"node": f.node, "group": f.group, "reason": f.reason} for f in out],
    }
    kept.parent.mkdir(parents=True, exist_ok=True)
    _write(kept, json.dumps(content, indent=1) + "\n")
    return out_dir, out


def _failed(failures) -> set[str]:
    return {f.subject for f in failures if f.subject}


def _read_groups(out_dir: Path) -> list[_Group]:
    """Every node group's record under `out_dir` (dataset-level nodes, then subjects' and sessions' nodes),
    ordered by level, node and entities."""
    from ..models.record import ModelRecord

    found = []
    for path in group_records(out_dir):
        try:
            record = ModelRecord.read(path).as_dict()
        except InputError as exc:  # (another participant's, say: this study cannot rewrite it)
            warnings.warn(f"{exc} It is left out of the reports.", UserWarning, stacklevel=2)
            continue
        bids = (record.get("settings") or {}).get("bids")
        if not isinstance(bids, dict):
            continue  # (not a study's record)
        entities = {k: v for k, v in (bids.get("entities") or {}).items() if v is not None}
        found.append(_Group(path, record, str(bids.get("node")), str(bids.get("level")), entities))
    order = {name: n for n, name in enumerate(LEVEL_ORDER)}
    found.sort(key=lambda g: (order.get(g.level, 9), g.node, _entity_key(g.entities)))
    return found


def _entity_key(entities: dict) -> tuple:
    keys = (*ENTITIES, "contrast")
    return tuple((str(entities.get(k)).zfill(8) if entities.get(k) is not None else "") for k in keys)


def _files(folders) -> list[Path]:
    """The files of the node groups' `folders` (not the hidden folders of groups being written)."""
    return sorted(f for folder in folders for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def _checksum(files: list[Path], *other) -> str:
    """A digest of the `files` (path, size, modification time), the `other` values (failures by their fields)
    and voxfit's version."""
    stamps = []
    for f in files:
        try:
            st = f.stat()
            stamps.append([str(f), st.st_size, st.st_mtime_ns])
        except OSError:
            stamps.append([str(f), None, None])
    plain = [
        [[x.node, x.group, x.reason] for x in o] if isinstance(o, list) and o and isinstance(o[0], _Failure) else o
        for o in other
    ]
    return hashlib.sha256(json.dumps([__version__, stamps, plain], default=str).encode()).hexdigest()


def _recorded_checksum(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    found = re.search(r"<meta name='voxfit-inputs' content='([0-9a-f]{64})'>", head)
    return found.group(1) if found else None


def remove_study_reports(out_dir: Path) -> None:
    """The pages an earlier study wrote in `out_dir` (index.html, dataset.html, sub-<label>.html, each with its
    voxfit-inputs checksum), removed by a rerun without --report: they described the earlier fits (permutations,
    TFCE) beside records that no longer hold them."""
    for path in [out_dir / "index.html", out_dir / "dataset.html", *sorted(out_dir.glob("sub-*.html"))]:
        if _recorded_checksum(path) is not None:
            path.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    try:
        write_file_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from None


# ---------------------------------------------------------------- one node group, as voxfit's report reads it


@dataclass
class _GroupResults(Results):
    """A node group's maps: voxfit's names (``contrast-<c>_stat-<s>[_desc-<d>]_statmap<ext>``) read under the
    group's prefix and the study's names of permutation p maps; the FDR and Bonferroni p maps of voxfit group
    computed from the uncorrected p map."""

    prefix: str = ""
    cache: dict = field(default_factory=dict)

    def clusters_table(self, label: str) -> Path:
        return self.folder / clusters_table_name(label, self.prefix)

    def read_map(self, name: str):
        if name not in self.cache:
            self.cache[name] = self._find(name)
        return self.cache[name]

    def _find(self, name: str):
        from ..inference import bonferroni, fdr

        parts = _MAP.match(name)
        if parts is None or parts["c"] is None:
            return None  # (the mean image, a regressor's map: not written by the study)
        c, stat, desc, ext = parts["c"], parts["s"], parts["d"], parts["ext"]

        def file(s):
            path = self.folder / map_name(self.prefix, c, s, ext)
            return read_one_map(self.checked(path))[1] if self.present(path) else None

        if desc is None:
            return file(stat)
        if stat != "p":
            return None
        if desc in _PERMUTATION_P:
            return file(_PERMUTATION_P[desc])
        uncorrected = file("puncorrected")
        uncorrected = file("p") if uncorrected is None else uncorrected
        if desc == "uncorrected" or uncorrected is None:
            return uncorrected
        if desc == "fdr":
            return fdr(uncorrected)
        if desc == "bonferroni" and file("pfwe") is None:  # (voxfit group writes it without permutations)
            return bonferroni(uncorrected)
        return None


def _results(g: _Group) -> _GroupResults:
    """The group's maps, design and contrasts as voxfit's report reads a finished output folder."""
    from ..design import read_design
    from ..design.kinds import column_kinds
    from ..models.record import check_output

    record = g.record
    outputs = record.get("outputs")
    folder = g.path.parent
    prefix = group_prefix(g.entities)
    contrasts = []
    shuffles = (((record.get("settings") or {}).get("permutations")) or 0) if g.level == "dataset" else 0
    for label, entry in (record.get("contrasts") or {}).items():
        if shuffles and not entry.get("permutation"):  # (the study records how many were asked for, not how)
            entry = {**entry, "permutation": {"shuffles": int(shuffles), "scheme": None}}
        weights = np.atleast_2d(np.asarray(entry["weights"], dtype=float)) if "weights" in entry else None
        contrasts.append(Contrast(label, label, entry.get("kind") or "t", "", weights, entry))  # (said below)
    if not contrasts:
        raise InputError(f"{g.path} records no contrast.")
    effect = sorted(folder.glob(glob.escape(map_name(prefix, contrasts[0].label, "effect", "")) + ".*"))
    if not effect:
        raise InputError(f"{g.path}: the effect map of contrast {contrasts[0].label!r} is missing beside it.")
    check_output(outputs, effect[0])
    geometry, values = read_one_map(effect[0])
    extension = effect[0].name.split("_statmap", 1)[1]
    designs = []
    design_file = folder / f"{g.stem}design.tsv"
    info = record.get("design") or {}
    if design_file.is_file() and g.level in ("run", "dataset"):
        check_output(outputs, design_file)
        X, names = read_design(design_file)
        kinds = list(info.get("kinds") or column_kinds(design_file, names, X))
        title = "Design" if g.level == "run" else "Group design"
        designs.append(DesignView(title, X, list(names), kinds, info.get("tr")))
    for c in contrasts:  # (weights, a node's: said over the design's columns, as names)
        c.expression = expression_text(c.info.get("expression", ""), designs)
    level = REPORT_LEVELS[g.level]
    mask = np.isfinite(values)
    return _GroupResults(folder, record, level, designs, contrasts, geometry, mask, extension, outputs, prefix)


def _group_html(g: _Group, anchor: str) -> tuple[str, list[str]]:
    """The sections of a node group (its design and contrasts, drawn by voxfit's report) under a heading, and
    the notes on how they are drawn; a group whose maps cannot be read says why instead."""
    head = f"<h2 class='group'>{html.escape(g.title)}</h2>" + _about(g)
    try:
        parts = report_sections(_results(g), anchor=anchor, mesh_option=False)
    except InputError as exc:
        return f"<div id='{anchor}top'>{head}<p class='warn'>{html.escape(str(exc))}</p></div>", []
    body = parts.design + "".join(parts.contrasts)
    return f"<div id='{anchor}top'>{head}{body}</div>", list(parts.notes)


def _about(g: _Group) -> str:
    """What a group was fitted to, in one paragraph, with the notes of the study (inputs left out)."""
    r = g.record
    design = r.get("design") or {}
    if g.level == "run":
        data = r.get("data") or {}
        text = (
            f"{data.get('n_scans', '?')} scans × {data.get('n_voxels', '?'):,} elements; design of "
            f"{len(design.get('columns', []))} columns, dof {design.get('dof', '?')}; record {g.path.name}."
        )
    else:
        inputs = [Path(row.get("map", "")).name for row in design.get("rows") or []]
        what = (design.get("notes") or [""])[0]
        text = f"{what}: {len(inputs)} inputs ({', '.join(_short_input(i) for i in inputs)}); record {g.path.name}."
    notes = ((r.get("settings") or {}).get("bids") or {}).get("notes") or []
    return f"<p class='small'>{html.escape(text)}</p>" + "".join(
        f"<p class='warn'>{html.escape(str(n))}</p>" for n in notes
    )


def _short_input(name: str) -> str:
    return name.split("_contrast-", 1)[0] or name.split("_stat-", 1)[0]


# ---------------------------------------------------------------- pages


def _failures_html(failures: list[_Failure], anchor: str = "failures") -> str:
    rows = [{"node": f.node, "group": f.group, "reason": f.reason} for f in failures]
    heading = f"Failures ({len(rows)})" if rows else "Failures"
    return f"<section id='{anchor}'><h2>{heading}</h2>{html_table(rows) if rows else '<p>None.</p>'}</section>"


def _nav(links: dict[str, str]) -> list[str]:
    return [f"<a href='{html.escape(href)}'>{html.escape(text)}</a>" for text, href in links.items()]


def _settings(groups: list[_Group]) -> dict[str, str]:
    """The run level's settings from the run records: each value, or the values when runs differ."""
    seen: dict[str, list[str]] = {}

    def add(key: str, value) -> None:
        text = "not recorded" if value is None else str(value)
        seen.setdefault(key, [])
        if text not in seen[key]:
            seen[key].append(text)

    for g in groups:
        if g.level != "run":
            continue
        s = g.record.get("settings") or {}
        bids = s.get("bids") or {}
        study = bids.get("study_settings") or {}
        design = bids.get("design") or {}
        add("noise model", (s.get("noise_details") or {}).get("model") or s.get("noise_model"))
        hrf = design.get("hrf")
        add("HRF", None if hrf is None else _hrf_text(hrf))
        add("convolution", study.get("convolution"))
        period = design.get("high_pass_s")
        origin = design.get("high_pass_from", "?")
        if period is not None and not (0 < period < np.inf):
            period = "none"
        add("high-pass", period if not isinstance(period, float) else f"{period:g} s ({1 / period:.4g} Hz, {origin})")
        add("smoothing", f"{study['smoothing']:g} mm FWHM" if study.get("smoothing") else "none")
        add("scaling", s.get("scaling"))
    return {k: "; ".join(v) for k, v in seen.items()}


def _hrf_text(hrf: dict) -> str:
    """``{variable: {model, fir_delays}}`` as ``spm: congruent, incongruent``."""
    if not hrf:
        return "no convolved regressors"
    by_model: dict[str, list[str]] = {}
    for variable, spec in hrf.items():
        model = spec.get("model") if isinstance(spec, dict) else spec
        delays = spec.get("fir_delays") if isinstance(spec, dict) else None  # (how many one-TR delays)
        key = f"{model} ({delays} delays)" if model == "fir" else str(model)
        by_model.setdefault(key, []).append(str(variable))
    return "; ".join(f"{m}: {', '.join(v)}" for m, v in by_model.items())


def _definitions(mapping: dict[str, str]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in mapping.items())
    return f"<table class='settings'>{rows}</table>"


def _subject_page(label: str, groups: list[_Group], failures: list[_Failure], dataset: bool, checksum: str) -> str:
    links = {"index": "index.html"} | ({"dataset": "dataset.html"} if dataset else {})
    links |= {"settings": "#settings", "failures": "#failures"}
    body, notes = [_failures_html(failures)] if failures else [], []
    body.append(f"<section id='settings'><h2>Settings of the runs</h2>{_definitions(_settings(groups))}</section>")
    for n, g in enumerate(groups, 1):
        part, drawn = _group_html(g, f"g{n}-")
        body.append(part)
        notes += [d for d in drawn if d not in notes]
        links[_short_title(g)] = f"#g{n}-top"
    if not failures:
        body.append(_failures_html(failures))
    runs = sum(g.level == "run" for g in groups)
    contrasts = sorted({c for g in groups for c in (g.record.get("contrasts") or {})})
    lines = [
        f"{runs} run-level and {len(groups) - runs} higher-level node groups; "
        f"contrasts: {', '.join(contrasts) or 'none'}; {len(failures)} failure(s).",
        *notes,
    ]
    return html_page(f"voxfit study report: sub-{label}", lines, _nav(links), "".join(body), _meta(checksum))


def _short_title(g: _Group) -> str:
    parts = [str(g.entities[k]) for k in ("session", "run", "hemi", "contrast") if g.entities.get(k) is not None]
    parts += [f"{k}-{g.entities[k]}" for k in grouped_by_others(g.entities)]  # (a participants.tsv column)
    return f"{g.node} {' '.join(parts)}".strip()


def _meta(checksum: str) -> dict:
    return {"voxfit-inputs": checksum, "generator": f"voxfit {__version__}"}


def _subjects_of(g: _Group) -> list[str]:
    rows = (g.record.get("design") or {}).get("rows") or []
    return [m.group(1) if (m := _SUBJECT.search(Path(r.get("map", "")).name)) else "?" for r in rows]


def _dataset_page(out_dir, dataset, groups, subjects, failures, model_files, checksum) -> str:
    study = ((dataset[0].record.get("settings") or {}).get("bids") or {}).get("study_settings") or {}
    # (the model each group was fitted by, as its record says: a Dataset node of Model.Type meta is fixed effects
    # whatever --group-model the study was given)
    fitted = {str(((g.record.get("design") or {}).get("notes") or ["?"])[0]).split(" ")[0] for g in dataset}
    model = fitted.pop() if len(fitted) == 1 and fitted <= set(GROUP_MODELS) else study.get("group_model", "?")
    about = {
        "group model": GROUP_MODELS.get(model, model),
        "permutations": f"{study['permutations']} asked (each page says the shuffles made)"
        if study.get("permutations")
        else "none",
        "TFCE": "yes" if study.get("tfce") else "no",
        "cluster-forming threshold": str(study.get("cluster_threshold") or "none"),
        "model file": ", ".join(model_files) or "none",
    }
    body = [f"<section id='model'><h2>Model</h2>{_definitions(about)}</section>"]
    used_rows = []
    # each group's entities but the participants.tsv columns it is grouped by: sibling groups share them
    shared = {id(g): {k: v for k, v in g.entities.items() if k not in grouped_by_others(g.entities)} for g in dataset}
    for g in dataset:
        used = _subjects_of(g)
        # (subjects of a sibling group, split from this one by a participants.tsv column, are not left out of it)
        siblings = [
            o for o in dataset if o is not g and grouped_by_others(o.entities) and shared[id(o)] == shared[id(g)]
        ]
        elsewhere = {s for o in siblings for s in _subjects_of(o)}
        left = [s for s in subjects if s not in used and s not in elsewhere]
        reasons = {s: "; ".join(f"{f.node}: {f.reason}" for f in failures if f.subject == s) for s in left}
        used_rows.append(
            {
                "group": _short_title(g),
                "subjects used": ", ".join(f"sub-{s}" for s in used),
                "left out": ", ".join(f"sub-{s}" + (f" ({reasons[s]})" if reasons[s] else "") for s in left) or "none",
            }
        )
    body.append(f"<section id='subjects'><h2>Subjects</h2>{html_table(used_rows)}</section>")
    links = {"index": "index.html", "model": "#model", "subjects": "#subjects"}
    notes = []
    for n, g in enumerate(dataset, 1):
        part, drawn = _group_html(g, f"g{n}-")
        body.append(part + _design_table(g))
        notes += [d for d in drawn if d not in notes]
        links[_short_title(g)] = f"#g{n}-top"
    body.append(_failures_html(failures))
    links["failures"] = "#failures"
    lines = [
        f"{len(subjects)} subjects; {len(dataset)} dataset-level group(s); {model} group model; "
        f"{len(failures)} failure(s) in the study.",
        *notes,
    ]
    return html_page("voxfit study report: dataset", lines, _nav(links), "".join(body), _meta(checksum))


def _design_table(g: _Group) -> str:
    """The group design's rows: each input's subject with its values of the columns (participants.tsv's)."""
    from ..design import read_design

    path = g.path.parent / f"{g.stem}design.tsv"
    if not path.is_file():
        return "<p class='small'>The group design's values are not on disk (a study written before they were).</p>"
    X, names = read_design(path)
    rows = [
        {"subject": f"sub-{s}", **{n: round(float(v), 4) for n, v in zip(names, x)}} for s, x in zip(_subjects_of(g), X)
    ]
    return f"<details><summary>the group design's values ({len(rows)} rows)</summary>{html_table(rows)}</details>"


def _index_page(out_dir, groups, failures, pages, model_files, checksum) -> str:
    reports = [
        f"<li><a href='{html.escape(p.name)}'>{html.escape(name)}</a></li>"
        for name, p in pages.items()
        if name != "index"
    ]
    nodes: dict[str, dict] = {}
    for name in _model_nodes(out_dir, model_files):
        nodes[name["Name"]] = {"node": name["Name"], "level": str(name.get("Level", "")).lower(), "groups": 0}
    for g in groups:
        row = nodes.setdefault(g.node, {"node": g.node, "level": g.level, "groups": 0})
        row["groups"] += 1
        row.setdefault("contrasts", set()).update((g.record.get("contrasts") or {}).keys())
    for row in nodes.values():
        row["contrasts"] = ", ".join(sorted(row.get("contrasts", ()))) or "—"
        row["failures"] = sum(f.node == row["node"] for f in failures)
    model = "".join(f"<li><a href='{html.escape(m)}'>{html.escape(m)}</a></li>" for m in model_files)
    body = (
        f"<section id='reports'><h2>Reports</h2><ul>{''.join(reports)}</ul></section>"
        f"<section id='nodes'><h2>Nodes</h2>{html_table(list(nodes.values()))}"
        + (f"<p>The model:</p><ul>{model}</ul>" if model else "")
        + "</section>"
        + _failures_html(failures)
    )
    lines = [f"{len(groups)} node groups on disk; {len(failures)} failure(s)."]
    links = {"reports": "#reports", "nodes": "#nodes", "failures": "#failures"}
    return html_page(f"voxfit study: {out_dir.resolve().name}", lines, _nav(links), body, _meta(checksum))


def _model_nodes(out_dir: Path, model_files) -> list[dict]:
    nodes = []
    for name in model_files:
        try:
            nodes += [n for n in json.loads((out_dir / name).read_text()).get("Nodes", []) if isinstance(n, dict)]
        except (OSError, ValueError, AttributeError):
            continue
    return [n for n in nodes if "Name" in n]
