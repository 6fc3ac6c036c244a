"""Each subject's first-level effect and variance map, found and paired for the group level.

A mixed- or fixed-effects group model needs, for every subject, the effect map of a contrast and its variance
map (and, for fixed effects, the first-level residual degrees of freedom). They arrive three ways:

- two lists of files (:func:`pair_variances`): the variance maps are matched to the effect maps by subject,
  with the rule of participants tables (:mod:`voxfit.design.subjects`): ``sub-<label>`` from the file name,
  else from a folder below the maps' common folder; ``sub-01`` and ``01`` are one subject. Never by position:
  maps without labels pair only as the files of one first-level fit, side by side in one folder (FSL's
  ``cope<N>``/``varcope<N>``, voxfit's ``..._stat-effect_statmap``/``..._stat-variance_statmap``);
- one 4-D effect file and one 4-D variance file (FSL's ``filtered_func_data`` and ``var_filtered_func_data``
  as ``flameo`` takes them): volume k of one with volume k of the other, the order said in a note;
- first-level output folders (:func:`first_level_maps`): voxfit's (``model.json`` beside
  ``contrast-<label>_stat-effect_statmap`` and ``..._stat-variance_statmap``), or FSL FEAT's (``sub-01.feat``:
  ``stats/cope<N>``, ``stats/varcope<N>``, ``stats/dof``; a higher level's ``cope<N>.feat``, its ``stats/tdof_t<N>``
  map), with the subject from the folder's name, else from
  the inputs its ``model.json`` records, and the first-level degrees of freedom.

Both return a :class:`PairedMaps`. Every variance map is checked to lie on its effect map's grid, and every
effect map on the first one's. With ``paired=True`` (a paired design, as ``voxfit group --paired`` takes its maps:
those of condition A, then those of B) each half is paired as above, the variance maps in the same two halves,
and the halves hold the same subjects, B's rows put in A's order of subjects. First-level dof come as numbers
or as maps (:meth:`PairedMaps.with_dof`: one map, a 4-D file of one volume per row, or one map per subject
matched as the variance maps are).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..exceptions import DesignWarning, InputError
from ..io import expand_run, open_map, statmap_name
from ..io.geometry import ArrayGeometry, CiftiGeometry, SurfaceGeometry, VolumeGeometry, most_common_geometry
from ..io.scans import file_identity
from .subjects import listed, subject_labels

__all__ = [
    "FitRecord",
    "PairedMaps",
    "check_not_statistics",
    "study_folder_error",
    "first_level_maps",
    "pair_variances",
    "read_fit_record",
    "statistic_kind",
]

FIRST_LEVEL_KINDS = ("first-level", "runs")  # model.json kinds whose maps are one subject's
_EXTENSIONS = tuple(g.extension for g in (VolumeGeometry, SurfaceGeometry, CiftiGeometry, ArrayGeometry))
_DOF_UNKNOWN = "first-level dof unknown"  # (a note's start, dropped where --first-level-dof gives them)
_NIFTI = (".nii.gz", ".nii", ".img", ".img.gz")  # FSL's maps (FSLOUTPUTTYPE NIFTI_GZ, NIFTI, NIFTI_PAIR[_GZ])
_COPE = re.compile(r"^cope(\d+)(\.nii(?:\.gz)?|\.img(?:\.gz)?)$")
_EFFECT = "_stat-effect_"
# file names of test statistics (the stem, before its first dot): BIDS derivatives' stat-<t|z|F|p>, FSL's
# tstat<N>, zstat<N>, zfstat<N>, fstat<N>, SPM's spmT_<N>, spmF_<N>
_STATISTIC_NAMES = (
    re.compile(r"(?:^|_)stat-(?P<kind>[tzfp])(?:_|$)", re.IGNORECASE),
    re.compile(r"^(?P<kind>t|z|zf|f)stat\d+$", re.IGNORECASE),
    re.compile(r"^spm(?P<kind>[tf])_\d+$", re.IGNORECASE),
)


def _pick(values: tuple, rows: list[int]) -> tuple:
    return tuple(values[r] for r in rows)


@dataclass(frozen=True)
class PairedMaps:
    """Each subject's effect map and variance map, in the order chosen, for a group model.

    effects, variances: the files, one per row; for a 4-D pair, the one effect file and the one variance file.
    volumes: for a 4-D pair, the volume of each row (in both files); None when each row has its own files.
    subjects: each row's subject label (``01`` for ``sub-01``), None for a row without one.
    dof: each row's first-level residual degrees of freedom, or None when not known for every row.
    notes: what was matched how, in sentences, for the user and model.json.
    matched_by: ``subject`` (sub-<label>), ``folder`` (the files of one fit, side by side) or ``volume``.
    contrast: the contrast taken from first-level folders (None for lists of files).
    paired: the rows are the maps of condition A (the first half), then those of B of the same subjects in the
    same order (a paired design).
    dof_maps: each row's first-level dof as a map, ``(file, volume)``, or a number for a row without one (FEAT
    folders of both levels) (None: `dof`, numbers, or none).
    given: each row's place among the maps as given (None: in that order), for files that follow it (FSL's
    design.grp) when rows are reordered: by a design's participant ids, B's maps by A's subjects.
    dof_problem: what is wrong with a folder's dof file that gives none (unreadable, no number), for a model that
    needs the dof to refuse; None where nothing is.
    masks: the FEAT folders' masks (``mask.nii.gz`` beside the maps taken), within all of which a group model fits
    the maps, as FEAT's higher level does (none for other inputs).
    """

    effects: tuple[Path, ...]
    variances: tuple[Path, ...]
    subjects: tuple[str | None, ...]
    volumes: tuple[int, ...] | None = None
    dof: tuple[float, ...] | None = None
    notes: tuple[str, ...] = ()
    matched_by: str = "subject"
    contrast: str | None = None
    paired: bool = False
    dof_maps: tuple[tuple[Path, int] | float, ...] | None = None
    given: tuple[int, ...] | None = None
    dof_problem: str | None = None
    masks: tuple[Path, ...] = ()

    @property
    def n(self) -> int:
        """The rows: subjects (or volumes of a 4-D pair)."""
        return len(self.subjects)

    @property
    def given_rows(self) -> tuple[int, ...]:
        """Each row's place among the maps as given."""
        return tuple(range(self.n)) if self.given is None else self.given

    def take(self, rows: Sequence[int]) -> PairedMaps:
        """The same pairs in another order (or a subset): row k of the result is row ``rows[k]`` of this one,
        as a design matched to the effect maps by participant ids orders them."""
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < self.n]
        if bad:
            raise InputError(f"rows {bad[:6]} are not rows of these {self.n} pairs of maps; give rows 0..{self.n - 1}.")
        picked = {
            "subjects": _pick(self.subjects, rows),
            "dof": None if self.dof is None else _pick(self.dof, rows),
            "dof_maps": None if self.dof_maps is None else _pick(self.dof_maps, rows),
            "given": _pick(self.given_rows, rows),
        }
        if self.volumes is not None:
            return replace(self, volumes=_pick(self.volumes, rows), **picked)
        return replace(self, effects=_pick(self.effects, rows), variances=_pick(self.variances, rows), **picked)

    def take_pairs(self, rows: Sequence[int]) -> PairedMaps:
        """Paired rows in another order: pair k of the result (its A row and its B row) is pair ``rows[k]``."""
        half = self.n // 2
        return self.take([*rows, *(half + int(r) for r in rows)])

    def with_dof(self, dof) -> PairedMaps:
        """The same pairs with the first-level dof `dof` instead of those found: one positive number, or one per
        row (as `pair_variances` takes them); or maps of per-voxel dof: one map for every row, one 4-D file of
        one volume per row (in this object's row order), or one map per row, matched to the effect maps as the
        variance maps are (by subject, else the ``_stat-dof_`` map beside each ``_stat-effect_`` map; by
        position beside a 4-D pair), each half on its own when `paired`. Where the inputs gave dof (folders'),
        a note says they were replaced."""
        known = self.dof is not None or self.dof_maps is not None
        replaced = ("the first-level dof given (--first-level-dof) replace those the inputs gave",) if known else ()
        notes = [n for n in self.notes if not n.startswith(_DOF_UNKNOWN)]  # (given now)
        base = replace(self, notes=(*notes, *replaced))
        if _are_paths(dof):
            try:
                paths = _files(dof, "first_level_dof")
            except InputError as exc:
                raise InputError(
                    f"the first-level dof must be a positive number or a list of them, one per effect map, or dof "
                    f"maps (files); "
                    f"got {_short(dof)}: {exc}"
                ) from None
            return base._with_dof_maps(paths)
        return replace(base, dof=_dof_per_row(_checked_dof(dof), self.n, "rows"), dof_maps=None)

    def _with_dof_maps(self, paths: list[Path]) -> PairedMaps:
        readers = [open_map(p) for p in paths]
        if len(paths) == 1 and readers[0].n_scans in (1, self.n):
            one = readers[0].n_scans == 1
            rows = tuple((paths[0], 0 if one else k) for k in range(self.n))
            note = f"first-level dof map {paths[0]}" + (
                " for every row" if one else f": volume k the dof of row k, k = 0..{self.n - 1}"
            )
        else:
            several = next(((p, r.n_scans) for p, r in zip(paths, readers) if r.n_scans > 1), None)
            if several is not None or len(paths) != self.n:
                got = f"{several[0]} holds {several[1]} maps" if several else f"{len(paths)} maps for {self.n} rows"
                raise InputError(
                    f"`first_level_dof`: {got}; give one dof map for every subject, a 4-D file of {self.n} volumes "
                    "(one per effect map), or one 3-D map per effect map."
                )
            rows = tuple((paths[k], 0) for k in self._dof_order(paths))
            note = f"{len(paths)} first-level dof maps matched to the effect maps as the variance maps are"
        first = open_map(self.effects[0]).geometry
        for path, reader in zip(paths, readers):
            _check_grid(first, reader.geometry, path, f"the effect map {self.effects[0]}", fix="give dof maps on it")
        return replace(self, dof=None, dof_maps=rows, notes=(*self.notes, note))

    def _dof_order(self, paths: list[Path]) -> list[int]:
        """The index among `paths` of each row's dof map (one 3-D map per row)."""
        if self.volumes is not None:
            return list(range(self.n))
        halves = [(0, self.n // 2), (self.n // 2, self.n)] if self.paired else [(0, self.n)]
        order = []
        for lo, hi in halves:
            effects, maps = list(self.effects[lo:hi]), paths[lo:hi]
            labels, e_labels = subject_labels(maps), list(self.subjects[lo:hi])
            by_subject = None not in e_labels and None not in labels
            match = _match_by_subject if by_subject else _match_by_folder
            order += [lo + k for k in match(effects, maps, e_labels, labels, what="dof")]
        return order

    def record(self) -> dict:
        """What model.json records of the pairing: how the maps were matched, the contrast, the notes, and per
        row the ``map``, the ``variance_map``, the ``subject`` (``sub-<label>`` or None), for a 4-D pair the
        ``volume``, and the first-level ``dof`` when known."""
        rows = []
        for k in range(self.n):
            one = self.volumes is not None
            row = {
                **({"condition": "AB"[2 * k // self.n]} if self.paired else {}),
                "map": str(self.effects[0] if one else self.effects[k]),
                "variance_map": str(self.variances[0] if one else self.variances[k]),
                "subject": None if self.subjects[k] is None else f"sub-{self.subjects[k]}",
            }
            if one:
                row["volume"] = self.volumes[k]
            if self.dof is not None:
                row["dof"] = self.dof[k]
            if self.dof_maps is not None and isinstance(self.dof_maps[k], tuple):
                row["dof_map"], row["dof_volume"] = str(self.dof_maps[k][0]), self.dof_maps[k][1]
            elif self.dof_maps is not None:
                row["dof"] = self.dof_maps[k]
            rows.append(row)
        return {"matched_by": self.matched_by, "contrast": self.contrast, "notes": list(self.notes), "rows": rows}


def pair_variances(effects, variances, *, dof=None, paired: bool = False) -> PairedMaps:
    """Pair each effect map with its subject's variance map.

    effects, variances: lists of files (a path, a folder, a quoted pattern or a .txt list of them is read as
    ``voxfit group`` reads its maps), or one 4-D file each (volume k of one is volume k of the other).
    dof: the first-level residual degrees of freedom: None, one number for every subject, or one per effect
    map (per volume of a 4-D file) in the order given; or maps of them (see :meth:`PairedMaps.with_dof`).
    paired: the effect maps are those of condition A, then those of B (``--paired``), and so are the variance
    maps (or the volumes of a 4-D pair): each half is paired on its own, then B's rows are put in the order of
    A's subjects (by position when no map carries a sub-<label>).

    Rows follow the effect maps as given. Matched by ``sub-<label>`` (file name, else a folder below the maps'
    common folder); maps without labels only as the files of one fit side by side in one folder (``cope<N>``
    with ``varcope<N>``, ``..._stat-effect_statmap`` with ``..._stat-variance_statmap``). Refused, with the
    files named: a subject with an effect map but no variance map or the reverse, a subject twice on either
    side, maps that can be matched neither way, different counts, a variance map on another grid.
    """
    effects, variances, dof = _pair_variances_iv(effects, variances, dof)
    maps = _are_paths(dof)
    numbers = None if maps else dof
    pairs = _paired_lists(effects, variances, numbers) if paired else _pair(effects, variances, numbers)
    return pairs.with_dof(dof) if maps else pairs


def _paired_lists(effects: list[Path], variances: list[Path], dof) -> PairedMaps:
    """The maps of conditions A then B (and their variance maps, in the same halves), each half paired."""
    if len(effects) == 1 and len(variances) == 1:  # a 4-D pair: the first half of the volumes is A
        pairs = _pair(effects, variances, dof)
        _half(pairs.n, "volumes of the 4-D effect file")
        return replace(pairs, paired=True, notes=(*pairs.notes, "--paired: the first half of the volumes is A"))
    half = _half(len(effects), "effect maps")
    if len(variances) != len(effects):
        raise InputError(
            f"--paired: {len(effects)} effect maps but {len(variances)} variance maps; give the variance maps of "
            "condition A, then those of B, one per effect map."
        )
    split = [None, None] if dof is None else [dof, dof] if len(dof) == 1 else [dof[:half], dof[half:]]
    a = _pair(effects[:half], variances[:half], split[0])
    b = _pair(effects[half:], variances[half:], split[1])
    return _conditions(a, b)


def _half(n: int, what: str) -> int:
    if n % 2:
        raise InputError(f"--paired needs the {what} of condition A then those of B (an even number); got {n}.")
    return n // 2


def _dof_rows(a: PairedMaps, b: PairedMaps) -> tuple | None:
    """The rows of `a` then `b` as ``PairedMaps.dof_maps``, where either has dof maps and both know each dof."""
    if a.dof_maps is None and b.dof_maps is None:
        return None
    rows = [p.dof_maps if p.dof_maps is not None else p.dof for p in (a, b)]
    return None if None in rows else (*rows[0], *rows[1])


def _conditions(a: PairedMaps, b: PairedMaps) -> PairedMaps:
    """Condition A's pairs then B's, B's rows in the order of A's subjects (by position when neither carries
    a subject label); refused when the halves hold different subjects, or only one carries labels."""
    la, lb = list(a.subjects), list(b.subjects)
    if len(la) != len(lb):
        raise InputError(
            f"--paired: condition A (the first half) has {len(la)} maps and condition B {len(lb)}; give one map "
            "of each condition per subject."
        )
    if None in la + lb and any(label is not None for label in la + lb):
        raise InputError(
            "--paired: the maps of one condition carry sub-<label> and those of the other do not; label every "
            "map (pairs then match by subject) or none (pairs match by position)."
        )
    how = "by position (no sub-<label>)"
    order = list(range(len(la)))
    if None not in la:
        only_a, only_b = [s for s in la if s not in lb], [s for s in lb if s not in la]
        if only_a or only_b:
            parts = ([f"only in A (first half): {listed([f'sub-{s}' for s in only_a], 3)}"] if only_a else []) + (
                [f"only in B (second half): {listed([f'sub-{s}' for s in only_b], 3)}"] if only_b else []
            )
            raise InputError(
                f"--paired: conditions A and B hold different subjects, {'; '.join(parts)}; give each subject's maps "
                "of condition A, then those of B."
            )
        order, how = [lb.index(s) for s in la], "by subject (sub-<label>)"
    b = b.take(order)
    note = f"--paired: {len(la)} maps of condition A (first half) with those of B (second half), matched {how}"
    return replace(
        a,
        effects=a.effects + b.effects,
        variances=a.variances + b.variances,
        subjects=a.subjects + b.subjects,
        dof=None if a.dof is None or b.dof is None else a.dof + b.dof,
        dof_maps=_dof_rows(a, b),
        dof_problem=a.dof_problem or b.dof_problem,  # (B's had been dropped: a fixed model fitted on n - rank)
        notes=(*(f"A: {n}" for n in a.notes), *(f"B: {n}" for n in b.notes), note),
        # (one condition's folders without masks beside the other's: their maps' non-zero voxels, as in one's)
        masks=(a.masks or a.effects) + (b.masks or b.effects) if a.masks or b.masks else (),
        paired=True,
        given=(*range(a.n), *(a.n + k for k in order)),
    )


def _pair(effects: list[Path], variances: list[Path], dof) -> PairedMaps:
    """One list of effect maps (or one 4-D file) paired with its variance maps."""
    effect_maps, variance_maps = [open_map(p) for p in effects], [open_map(p) for p in variances]
    if len(effects) == 1 and len(variances) == 1 and effect_maps[0].n_scans > 1:
        return _four_d_pair(effects[0], variances[0], effect_maps[0], variance_maps[0], dof)
    _check_one_map_each(effects, variances, effect_maps, variance_maps)
    e_labels, v_labels = subject_labels(effects), subject_labels(variances)
    matched_by = "subject" if None not in e_labels and None not in v_labels else "folder"
    match = _match_by_subject if matched_by == "subject" else _match_by_folder
    order = match(effects, variances, e_labels, v_labels)
    variances, variance_maps = [variances[k] for k in order], [variance_maps[k] for k in order]
    _check_contrasts(effects, variances)
    _check_grids(effects, variances, [m.geometry for m in effect_maps], [m.geometry for m in variance_maps], e_labels)
    notes = [_NOTES[matched_by].format(n=len(effects), shown=listed(map(str, effects), 4))]
    if dof is not None:
        notes.append("first-level dof as given, in the order of the effect maps")
    return PairedMaps(
        effects=tuple(effects),
        variances=tuple(variances),
        subjects=tuple(e_labels),
        dof=_dof_per_row(dof, len(effects), "effect maps"),
        notes=tuple(notes),
        matched_by=matched_by,
    )


def _check_contrasts(effects: list[Path], variances: list[Path]) -> None:
    """Refuse an effect map paired with the variance map of another contrast, where both names say which they
    hold (FEAT's ``cope<N>`` and ``varcope<N>``; a ``contrast-<name>`` entity): matched by subject, a subject's
    cope2 took its varcope1 without a word."""
    for effect, variance in zip(effects, variances):
        held, its = _contrast_named(effect, "cope"), _contrast_named(variance, "varcope")
        if held is not None and its is not None and held[0] == its[0] and held[1] != its[1]:
            raise InputError(
                f"{effect} holds contrast {held[1]} but its variance map, {variance}, contrast {its[1]}: give each "
                "effect map's own contrast's variances (FEAT: varcope<N> of cope<N>)."
            )


def _contrast_named(path: Path, prefix: str) -> tuple[str, str] | None:
    """The contrast a map's name says it holds: ``("feat", N)`` for ``<prefix>N.nii[.gz]``, ``("entity", name)``
    for a ``contrast-<name>`` entity; else None."""
    name = Path(path).name
    if (feat := re.fullmatch(rf"{prefix}(\d+)\.nii(?:\.gz)?", name)) is not None:
        return "feat", feat.group(1)
    if (entity := re.search(r"(?:^|_)contrast-([A-Za-z0-9]+)(?:_|$)", name)) is not None:
        return "entity", entity.group(1)
    return None


_NOTES = {  # what each way of matching did, for the user and model.json
    "subject": (
        "{n} variance maps matched to the effect maps by subject (sub-<label> of the file or folder names), rows in "
        "the order of the effect maps"
    ),
    "folder": (
        "{n} effect maps without sub-<label> on both sides: each variance map is the one beside its effect map in "
        "the same folder (varcope<N> of cope<N>, _stat-variance_ of _stat-effect_); rows in the order the effect "
        "maps were given: {shown}"
    ),
}


def statistic_kind(path) -> str | None:
    """``t``, ``z``, ``F`` or ``p`` when a map's file name says it holds a test statistic (BIDS ``stat-t``,
    FSL's ``tstat1``/``zstat1``/``zfstat1``, SPM's ``spmT_0001``), else None."""
    stem = Path(path).name.split(".")[0]
    for pattern in _STATISTIC_NAMES:
        found = pattern.search(stem)
        if found:
            kind = found["kind"].lower()
            return {"zf": "z", "f": "F"}.get(kind, kind)
    return None


def check_not_statistics(paths, variances: bool = False) -> None:
    """Effect maps named as statistics are warned of (a group model of t or z maps tests their mean, without the
    first-level precision); variance maps so named are refused (a t map is no variance: its negative values would
    drop voxels)."""
    if variances and (residual := next((p for p in paths if Path(p).name.split(".")[0].lower() == "resms"), None)):
        raise InputError(
            f"the variance map {residual} is SPM's ResMS, the residual variance of the fit, not a contrast's variance "
            "(SPM writes none; it is the ResMS times the contrast's c'(X'X)^-1c); give the effects' variances "
            "(voxfit's stat-variance, FSL's varcope), or fit SPM's con images alone with --model ols."
        )
    named = [(p, kind) for p in paths if (kind := statistic_kind(p))]
    if not named:
        return
    path, kind = named[0]
    more = f" (and {len(named) - 1} more)" if len(named) > 1 else ""
    if variances:
        raise InputError(
            f"the variance map {path}{more} is named as a {kind} map; --variances takes each effect's first-level "
            "variance (voxfit's stat-variance, FSL's varcope), or fit the effects alone with --model ols."
        )
    warnings.warn(
        f"the map {path}{more} is named as a {kind} map: a group model of {kind} maps tests their mean, without "
        "each subject's precision; give each subject's effect (contrast estimate: voxfit's stat-effect, FSL's cope, "
        "SPM's con_) if that is not what you meant.",
        DesignWarning,
        stacklevel=3,
    )


def _pair_variances_iv(effects, variances, dof) -> tuple[list[Path], list[Path], list[float] | None]:
    """The two lists of files (folders, patterns and .txt lists expanded) and the dof as a list, or an
    InputError naming the argument; effect or variance maps named as statistics as
    :func:`check_not_statistics` says."""
    effects, variances = _files(effects, "effects"), _files(variances, "variances")
    check_not_statistics(variances, variances=True)
    check_not_statistics(effects)
    both = {file_identity(p) for p in effects} & {file_identity(p) for p in variances}
    if both:
        same = [str(p) for p in effects if file_identity(p) in both]
        raise InputError(
            f"{listed(same, 3)} is given both as an effect map and as a variance map; give each subject's variance "
            "map (stat-variance, varcope) as `variances`."
        )
    return effects, variances, dof if _are_paths(dof) else _checked_dof(dof)


def _are_paths(value) -> bool:
    """Whether `value` names files (a path, or a non-empty list of paths): dof maps, not numbers."""
    items = list(value) if _is_sequence(value) else [value]
    return bool(items) and all(isinstance(v, (str, os.PathLike)) for v in items)


def _checked_dof(dof) -> list[float] | None:
    """`dof` as a list of positive numbers (one, or one per row), or an InputError that says "the first-level dof"
    (the callers' parameter is `dof` or `first_level_dof`)."""
    if dof is None:
        return None
    values = [dof] if isinstance(dof, numbers.Number) else list(dof) if _is_sequence(dof) else None
    if not values or not all(_positive(v) for v in values):
        raise InputError(
            f"the first-level dof must be a positive number or a list of them, one per effect map; got {_short(dof)}."
        )
    return [float(v) for v in values]


def _dof_per_row(dof, n: int, what: str) -> tuple[float, ...] | None:
    """One dof per row from one number or one per row."""
    if dof is None:
        return None
    if len(dof) not in (1, n):
        raise InputError(f"{len(dof)} first-level dof values for {n} {what}; give one number, or one per {what[:-1]}.")
    return tuple(dof) * (n // len(dof))


def _files(value, name: str) -> list[Path]:
    """`value` as a list of existing files (a folder, a quoted pattern or a .txt list read as its files)."""
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value) if _is_sequence(value) else None
    if not items or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise InputError(
            f"`{name}` must be files (a path, a list of paths, a folder or a quoted pattern); got {_short(value)}; "
            "maps in memory go, rows in matching order, to voxfit.mixed_effects."
        )
    if len(items) == 1 and (found := expand_run(items[0])) is not None:
        items = found
    paths = [Path(p) for p in items]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"`{name}`: {listed(missing, 3)} is not a file; give the maps' paths.")
    return paths


def _four_d_pair(effect: Path, variance: Path, effect_map, variance_map, dof) -> PairedMaps:
    """One file of n effect maps and one of n variance maps: row k is volume k of both."""
    n = effect_map.n_scans
    if variance_map.n_scans != n:
        raise InputError(
            f"the 4-D effect file {effect} holds {n} maps but the variance file {variance} holds "
            f"{variance_map.n_scans}; give the variance file of the same subjects, one volume each, in one order."
        )
    _check_grid(effect_map.geometry, variance_map.geometry, variance, f"the effect file {effect}")
    note = (
        f"4-D pair: volume k of {effect.name} (effects) with volume k of {variance.name} (variances), k = 0..{n - 1}, "
        "in the files' order (volumes carry no subject labels: the two files must hold the subjects in one order)"
    )
    return PairedMaps(
        effects=(effect,),
        variances=(variance,),
        subjects=(None,) * n,
        volumes=tuple(range(n)),
        dof=_dof_per_row(dof, n, "volumes"),
        notes=(note,),
        matched_by="volume",
    )


def _check_one_map_each(effects, variances, effect_maps, variance_maps) -> None:
    """Lists of one map per file: a 4-D file among them would stand for many subjects."""
    sides = (("effect", effects, effect_maps, variances), ("variance", variances, variance_maps, effects))
    for what, paths, maps, others in sides:
        several = next(((p, m.n_scans) for p, m in zip(paths, maps) if m.n_scans > 1), None)
        if several is not None:
            other = "variance" if what == "effect" else "effect"
            where = "among other files" if len(paths) > 1 else f"beside {len(others)} {other} files of one map each"
            raise InputError(
                f"the {what} map {several[0]} holds {several[1]} maps {where}; give one {what} map per subject, or "
                "one 4-D effect file with one 4-D variance file (its maps in the same order)."
            )


def _match_by_subject(effects, variances, e_labels, v_labels, what: str = "variance") -> list[int]:
    """The index of each effect map's variance map (`what` map), matched by subject label."""
    _refuse_twice(effects, e_labels, "effect")
    _refuse_twice(variances, v_labels, what)
    where = {label: k for k, label in enumerate(v_labels)}
    no_variance = [f"sub-{label} ({path})" for path, label in zip(effects, e_labels) if label not in where]
    no_effect = [f"sub-{label} ({path})" for path, label in zip(variances, v_labels) if label not in set(e_labels)]
    if no_variance or no_effect:
        parts = ([f"with an effect map but no {what} map: {listed(no_variance, 3)}"] if no_variance else []) + (
            [f"with a {what} map but no effect map: {listed(no_effect, 3)}"] if no_effect else []
        )
        raise InputError(
            f"{len(effects)} effect maps and {len(variances)} {what} maps do not hold the same subjects, "
            f"{'; '.join(parts)}; give each subject's effect map and {what} map."
        )
    return [where[label] for label in e_labels]


def _refuse_twice(paths, labels, what: str) -> None:
    twice = [label for label, c in Counter(labels).items() if c > 1]
    if twice:
        cells = [f"sub-{k} ({', '.join(str(p) for p, label in zip(paths, labels) if label == k)})" for k in twice]
        raise InputError(
            f"two or more {what} maps of one subject: {listed(cells, 3)}; give one {what} map per subject."
        )


def _match_by_folder(effects, variances, e_labels, v_labels, what: str = "variance") -> list[int]:
    """The index of each effect map's variance map (`what` map) when labels are missing: the file of the same
    fit beside it (``varcope<N>`` beside ``cope<N>``, ``_stat-variance_`` beside ``_stat-effect_``)."""
    wanted = [_beside(p, what) for p in effects]
    where = {file_identity(p): k for k, p in enumerate(variances)}
    order = [where.get(file_identity(w)) if w is not None else None for w in wanted]
    if None in order or len(effects) != len(variances):
        unlabelled = [str(p) for p, label in zip(effects + variances, e_labels + v_labels) if label is None]
        if len(effects) != len(variances):
            raise InputError(
                f"{len(effects)} effect maps but {len(variances)} {what} maps, and {listed(unlabelled, 3)} carry "
                f"no sub-<label>; give one {what} map per effect map, named (or in folders named) sub-<label>."
            )
        raise InputError(
            f"{listed(unlabelled, 3)} carry no sub-<label> in their file or folder names, and not every effect map "
            f"has its {what} map beside it ({_BESIDE[what]}); name the maps or their folders sub-<label>, so that "
            "they are matched by subject."
        )
    folders = [p.parent for p in effects]
    twice = [str(f) for f, c in Counter(folders).items() if c > 1]
    if twice:
        raise InputError(
            f"two or more effect maps in one folder ({listed(twice, 3)}) and no sub-<label> to tell their subjects "
            "apart; give one map per subject, named (or in folders named) sub-<label>."
        )
    return order


_BESIDE = {
    "variance": "varcope<N> beside cope<N>, _stat-variance_ beside _stat-effect_",
    "dof": "_stat-dof_ beside _stat-effect_",
}


def _beside(effect: Path, what: str) -> Path | None:
    """The `what` (variance, dof) file a first-level fit writes beside `effect` (FSL, voxfit), or None."""
    if what == "variance" and (m := _COPE.match(effect.name)) is not None:
        return effect.with_name(f"varcope{m.group(1)}{m.group(2)}")
    if _EFFECT in f"_{effect.name}":
        return effect.with_name(f"_{effect.name}".replace(_EFFECT, f"_stat-{what}_", 1)[1:])
    return None


def _check_grids(effects, variances, effect_grids, variance_grids, subjects) -> None:
    """Each variance map on its effect map's grid, and each effect map on the grid of most of them (the first one's
    blamed a subject whose map was on the others' grid where the first map was the odd one)."""
    common = most_common_geometry(effect_grids)
    what = (
        f"the effect maps of most inputs ({effects[common]}, ...)" if common else f"the first effect map {effects[0]}"
    )
    for effect, variance, e, v, label in zip(effects, variances, effect_grids, variance_grids, subjects):
        who = f" (sub-{label})" if label is not None else ""
        _check_grid(e, v, variance, f"its effect map {effect}{who}")
        _check_grid(effect_grids[common], e, f"{effect}{who}", what, fix="resample the maps to one grid")


def _check_grid(reference, other, path, what: str, fix: str = "give the variance map of the same fit") -> None:
    """An InputError when `other` (the geometry of `path`) is not `reference` (the geometry of `what`)."""
    try:
        reference.check_same(other, str(path))
    except InputError:
        if type(other) is not type(reference):
            detail = f"a {other.kind}, not a {reference.kind}"
        elif isinstance(reference, VolumeGeometry) and tuple(other.shape) != tuple(reference.shape):
            detail = f"shape {tuple(other.shape)}, not {tuple(reference.shape)}"
        elif isinstance(reference, VolumeGeometry):
            detail = f"an affine up to {np.abs(other.affine - reference.affine).max():.3g} mm from it"
        elif other.n_elements != reference.n_elements:
            detail = f"{other.n_elements} elements, not {reference.n_elements}"
        elif isinstance(reference, SurfaceGeometry):  # (the other hemisphere: no resampling joins them)
            raise InputError(
                f"{path} lies on {other.structure} but {what} on {reference.structure}; give each hemisphere's maps "
                "apart (a group model per hemisphere)."
            ) from None
        else:
            detail = "other CIFTI brain models"
        raise InputError(f"{path} is on another grid than {what} ({detail}); {fix}.") from None


@dataclass(frozen=True)
class FitRecord:
    """What :func:`first_level_maps` reads of a voxfit ``model.json``: its `kind` and its `inputs`, `runs`,
    `design` and `contrasts` (as :class:`voxfit.models.ModelRecord` holds them; None when absent)."""

    kind: str
    inputs: list | None
    runs: list | None
    design: dict | None
    contrasts: dict


def read_fit_record(folder: Path) -> FitRecord:
    """The parts of ``folder/model.json`` a group model takes from a first-level fit, or an InputError naming
    the folder when it holds none or it is not voxfit's (``ModelRecord.read`` reads the whole file the same way;
    a group model passes it as `read_record`)."""
    path = Path(folder) / "model.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder} holds no model.json; give the output folder of a finished voxfit fit.") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path} is not readable JSON ({type(exc).__name__}); rerun the fit to rewrite it.") from None
    parts = {"inputs": list, "runs": list, "design": dict, "contrasts": dict}
    if not isinstance(raw, dict) or any(raw.get(k) is not None and not isinstance(raw[k], t) for k, t in parts.items()):
        raise InputError(f"{path} is not a voxfit model.json; rerun the fit to rewrite it.")
    kind = raw.get("model_kind") or {"fixed effects across runs": "runs", "group (second level)": "group"}.get(
        raw.get("model"), "first-level"
    )
    return FitRecord(kind, raw.get("inputs"), raw.get("runs"), raw.get("design"), raw.get("contrasts") or {})


@dataclass(frozen=True)
class _Folder:
    """One first-level folder's maps of the contrast, the subject its inputs name, its dof and what was done."""

    effect: Path
    variance: Path
    input_label: str | None
    dof: float | None
    dof_problem: str | None = None  # (a dof file that says no dof: refused by a model that needs them)
    notes: tuple[str, ...] = ()
    dof_map: Path | None = None  # (FEAT's higher level: flameo's tdof_t<N>, the dof at each voxel)
    mask: Path | None = None  # (FEAT's mask of the maps taken: reg_standard's, or the folder's own)


def first_level_maps(
    folders, contrast: str, *, read_record: Callable | None = None, paired: bool = False
) -> PairedMaps:
    """The effect and variance map of `contrast` from each first-level output folder, with each subject's label
    and first-level residual degrees of freedom.

    folders: voxfit output folders (``voxfit fit``, or several runs: ``model.json`` beside the maps) or FSL FEAT
    folders (``sub-01.feat``: ``stats/cope<N>`` and ``stats/varcope<N>``, or those of ``reg_standard/stats``
    when FEAT's registration wrote them; dof from ``stats/dof``, or a higher level's ``cope<N>.feat`` folder with
    its ``stats/tdof_t<N>`` map: ``PairedMaps.dof_maps``), in the order the rows take.
    contrast: the contrast's label (voxfit); for FEAT its number (``1`` or ``cope1``) or its name in
    ``design.con``.
    read_record: how ``model.json`` is read (``voxfit.models.ModelRecord.read``; default :func:`read_fit_record`).
    paired: the folders of condition A, then those of B (``--paired``): each half read on its own, then B's
    rows put in the order of A's subjects.

    The subject of a folder is the ``sub-<label>`` of its name (or of a folder above it, below the folders'
    common folder), else the one label of the input files its model.json records. The dof: the contrast's
    (for an AR model's per-voxel dof, their median, said in a note), else the design's. Refused in one
    sentence each: a folder that is not a finished fit, one without the contrast (its contrasts named), an
    F contrast, two folders of one subject, a variance map on another grid.
    """
    folders, contrast, read_record = _first_level_maps_iv(folders, contrast, read_record)
    if paired:
        half = _half(len(folders), "first-level folders")
        return _conditions(*(_folder_pairs(part, contrast, read_record) for part in (folders[:half], folders[half:])))
    return _folder_pairs(folders, contrast, read_record)


def _folder_pairs(folders: list[Path], contrast: str, read_record) -> PairedMaps:
    """The pairs of maps of `contrast` in first-level `folders` (checked)."""
    found = [_folder_maps(folder, contrast, read_record) for folder in folders]
    names = subject_labels(folders)
    _refuse_other_subject(folders, names, found)
    subjects = tuple(name if name is not None else f.input_label for name, f in zip(names, found))
    _refuse_same_subject(folders, subjects)
    effects, variances = [f.effect for f in found], [f.variance for f in found]
    grids = [[open_map(p).geometry for p in paths] for paths in (effects, variances)]
    _check_grids(effects, variances, *grids, subjects)
    notes = [_subjects_note(folders, names, subjects), *_folders_notes([n for f in found for n in f.notes])]
    # (featregapply's trilinear maps are not 0 in a band outside the resampled mask: fitted, with a tiny varcope,
    # where FEAT's higher level masks them out; a tester's 812 voxels against 800, t 41.5 there). A folder without
    # its mask gives its map's non-zero voxels, as every folder's did before (its zeros had been fitted as data)
    held = sum(f.mask is not None for f in found)
    masks = tuple(f.mask if f.mask is not None else f.effect for f in found) if held else ()
    if masks:
        without = (
            f", and the non-zero voxels of the maps of the {len(found) - held} without" if held < len(found) else ""
        )
        notes.append(
            f"fitted within the intersection of the FEAT folders' masks ({held} mask.nii.gz{without}), as FEAT's "
            "higher level fits its inputs"
        )
    dofs = [f.dof if f.dof_map is None else (f.dof_map, 0) for f in found]
    maps = [str(f.dof_map) for f in found if f.dof_map is not None]
    if maps and None not in dofs:  # (with a folder's dof unknown, none are taken: said below)
        notes.append(f"first-level dof from the maps of FEAT's higher level, {listed(maps, 3)}, per voxel")
    if None in dofs:
        unknown = [str(folder) for folder, d in zip(folders, dofs) if d is None]
        notes.append(
            f"{_DOF_UNKNOWN} for {listed(unknown, 3)} (of {len(folders)} folders): a fixed model then takes "
            "n - rank, not the sum of the subjects' dof less the rank (smaller: conservative); give "
            "--first-level-dof, or the folders' dof"
        )
    return PairedMaps(
        effects=tuple(effects),
        variances=tuple(variances),
        subjects=subjects,
        dof=None if None in dofs or maps else tuple(dofs),
        dof_maps=tuple(dofs) if maps and None not in dofs else None,
        dof_problem=next((f.dof_problem for f in found if f.dof_problem), None),
        notes=tuple(notes),
        matched_by="folder",
        contrast=contrast,
        masks=masks,
    )


def spm_folder_error(folder: Path) -> InputError | None:
    """The refusal of an SPM first-level `folder` (con images, SPM.mat) given as a first-level folder, whatever
    else was asked; None for any other folder."""
    spm = sorted(p.name for p in folder.glob("con_*") if p.suffix in (".nii", ".img"))
    if not spm and not (folder / "SPM.mat").is_file():
        return None
    first = spm[0] if spm else "con_0001.nii"  # (SPM keeps no variance map of a contrast beside its con images)
    return InputError(
        f"{folder} is an SPM first-level folder ({first}...), whose contrasts have no variance map to weigh "
        f"subjects by: give each subject's con image as the maps ({folder / first} and the others' {first}, an "
        "OLS model of them, as SPM's second level fits them)."
    )


def _first_level_maps_iv(folders, contrast, read_record) -> tuple[list[Path], str, Callable]:
    """The folders as a list of existing folders, the contrast as text, the record reader; or an InputError."""
    items = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders) if _is_sequence(folders) else None
    if not items or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise InputError(f"`folders` must be first-level output folders (paths); got {_short(folders)}.")
    paths = [Path(p) for p in items]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise InputError(
            f"`folders`: {listed(missing, 3)} is not a folder; give first-level output folders (voxfit fit's -o, or "
            "FEAT's .feat folders)."
        )
    named: dict = {}
    for p in paths:
        named.setdefault(file_identity(p), []).append(p)
    twice = [str(same[0]) for same in named.values() if len(same) > 1]
    if twice:  # (named by the path given, not its device and inode)
        raise InputError(f"`folders` names a folder twice ({listed(twice, 3)}); give each first-level folder once.")
    if isinstance(contrast, bool) or not isinstance(contrast, (str, numbers.Integral)) or not str(contrast).strip():
        raise InputError(
            f"the first-level contrast must be a contrast's label (FEAT: its number or name); got {contrast!r}."
        )
    if read_record is not None and not callable(read_record):
        raise InputError(f"`read_record` must be a function of a folder (ModelRecord.read); got {_short(read_record)}.")
    return paths, str(contrast).strip(), read_record or read_fit_record


def _folder_maps(folder: Path, contrast: str, read_record) -> _Folder:
    """A voxfit or FEAT folder's maps of `contrast`, or an InputError saying why it has none."""
    if (folder / "model.json").is_file():
        return _voxfit_maps(folder, contrast, read_record(folder))
    if (folder / "stats").is_dir() and any(_COPE.match(p.name) for p in (folder / "stats").iterdir()):
        return _feat_maps(folder, contrast)
    inner = sorted(p.name for p in folder.glob("cope*.feat") if p.is_dir()) if folder.is_dir() else []
    if inner:  # (FEAT's higher level: a .gfeat holds a cope<N>.feat per lower-level contrast)
        raise InputError(
            f"{folder} is a higher-level FEAT folder ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}): "
            "give its cope<N>.feat folder of the contrast to take, whose stats/ hold the group's maps."
        )
    if (study := study_folder_error(folder, contrast)) is not None:
        raise study
    if (spm := spm_folder_error(folder)) is not None:
        raise spm
    raise InputError(
        f"{folder} is not a finished first-level fit (no model.json, and no FEAT stats/cope<N>); give the output "
        "folder of a voxfit fit that ran to the end, or a FEAT folder."
    )


def study_folder_error(folder: Path, contrast: str | None) -> InputError | None:
    """The error of a voxfit bids folder given as a first-level folder (its node-*/ records named by their groups,
    no model.json), saying which maps to give instead; None for any other folder."""
    study = sorted(folder.glob("*_model.json")) or sorted(folder.glob("node-*/*_model.json"))
    if not study:
        return None
    where = "node-<subject node>/" if study[0].parent != folder else ""
    return InputError(
        f"{folder} holds voxfit bids records ({study[0].name}...), not a voxfit fit's model.json: give the "
        f"subjects' maps of the contrast ({where}*_contrast-{contrast or '<name>'}_stat-effect_statmap*), with "
        "--variances their stat-variance maps, or fit the group as the study's dataset node."
    )


def _voxfit_maps(folder: Path, contrast: str, record) -> _Folder:
    if record.kind not in FIRST_LEVEL_KINDS:
        raise InputError(
            f"{folder} holds a {record.kind} model, not one subject's first-level fit; give the output folders of "
            "`voxfit fit` (one per subject)."
        )
    entry = record.contrasts.get(contrast)
    if not isinstance(entry, dict):
        has = ", ".join(record.contrasts) or "none"
        raise InputError(f"{folder} has no contrast {contrast!r} (its contrasts: {has}); give one of those.")
    if entry.get("kind") == "F":
        raise InputError(
            f"contrast {contrast!r} of {folder} is an F contrast; the group level takes a t contrast's effect and "
            "variance map: give a t contrast (one row of weights)."
        )
    effect, variance = (_voxfit_map(folder, contrast, stat) for stat in ("effect", "variance"))
    check = getattr(record, "check_output", None)  # (a ModelRecord's: each map the one the fit wrote)
    if check is not None:
        check(effect)
        check(variance)
    dof, note = _voxfit_dof(folder, contrast, entry.get("dof"), (record.design or {}).get("dof"))
    return _Folder(effect, variance, _input_label(folder, record), dof, notes=(note,) if note else ())


def _voxfit_map(folder: Path, contrast: str, stat: str) -> Path:
    for extension in _EXTENSIONS:
        path = folder / statmap_name(stat, extension, contrast)
        if path.is_file():
            return path
    raise InputError(
        f"{folder} records contrast {contrast!r} but holds no {statmap_name(stat, '.*', contrast)}; the folder is "
        "incomplete: rerun its fit."
    )


def _voxfit_dof(folder: Path, contrast: str, dof, design_dof) -> tuple[float | None, str | None]:
    """The contrast's dof (a number; per-voxel: their median, said in a note), else the design's."""
    if isinstance(dof, dict) and isinstance(dof.get("median"), numbers.Real):
        note = (
            f"{folder.name}: per-voxel dof of contrast {contrast!r} ({dof.get('min', float('nan')):.4g} to "
            f"{dof.get('max', float('nan')):.4g}): their median {dof['median']:.4g} taken"
        )
        return float(dof["median"]), note
    for value in (dof, design_dof):
        if _positive(value):
            return float(value), None
    return None, None


def _input_label(folder: Path, record) -> str | None:
    """The one subject label of the input files a model.json records (None when they name none or several)."""
    inputs = list(record.inputs or []) + [i for run in record.runs or [] for i in (run.get("inputs") or [])]
    paths = [i["path"] for i in inputs if isinstance(i, dict) and isinstance(i.get("path"), str)]
    labels = {subject_labels([p])[0] for p in paths} - {None}
    return labels.pop() if len(labels) == 1 else None


_CONTRAST_NAME = re.compile(r"^/ContrastName(\d+)\s+(.*?)\s*$")


def _feat_maps(folder: Path, contrast: str) -> _Folder:
    """FEAT's ``cope<N>``/``varcope<N>`` (in standard space when ``reg_standard/stats`` holds them)."""
    number = re.fullmatch(r"(?:cope)?(\d+)", contrast)
    names = _feat_contrast_names(folder, contrast if number is None else None)
    named = [k for k, name in names.items() if name == contrast]
    if number is None and len(named) > 1:  # (the first was taken, nothing said)
        raise InputError(
            f"FEAT folder {folder}: contrasts {' and '.join(named)} of its design.con are both named {contrast!r}; "
            "give the number of the one to take with --first-level-contrast."
        )
    n = (
        (number.group(1).lstrip("0") or "0")
        if number
        else next((k for k, name in names.items() if name == contrast), None)
    )
    stats = folder / "stats"
    standard = folder / "reg_standard" / "stats"
    for where in (standard, stats):
        for extension in _NIFTI:
            effect, variance = where / f"cope{n}{extension}", where / f"varcope{n}{extension}"
            if n is not None and where == standard and effect.is_file() and not variance.is_file():
                raise InputError(  # (stats/ beside it are in the subject's own space: not taken in their place)
                    f"FEAT folder {folder} has reg_standard/stats/cope{n} but no varcope{n} beside it; copy the "
                    "folder again whole, or rerun FEAT's registration to standard space (featregapply)."
                )
            if n is not None and effect.is_file() and variance.is_file():
                notes = [
                    f"{folder.name}: maps of reg_standard/stats (standard space)"
                    if where == standard
                    else _feat_unregistered(folder)
                ]
                dof, problem = _feat_dof(folder)
                dof_map = _feat_dof_map(where, n) if dof is None and problem is None else None
                if dof is None and problem is None and dof_map is None:  # (FEAT writes one: a folder copied short,
                    # which a fixed model had fitted on n - rank dof, where a dof file of 0 was refused; a tester's)
                    problem = (
                        f"FEAT folder {folder} has neither stats/dof nor {where.relative_to(folder)}/tdof_t{n} (FEAT "
                        "writes the first level's dof there)"
                    )
                mask = next((m for e in _NIFTI if (m := where.parent / f"mask{e}").is_file()), None)
                if mask is None:
                    notes.append(f"{folder.name}: no mask.nii.gz beside its maps' folder: their non-zero voxels taken")
                notes = tuple(n for n in notes if n is not None)
                return _Folder(effect, variance, None, dof, problem, notes, dof_map, mask)
    has = sorted(int(m.group(1)) for p in stats.iterdir() if (m := _COPE.match(p.name)))
    if n is not None and n.isdigit() and int(n) in has:  # (its cope is there: its varcope is not)
        raise InputError(
            f"FEAT folder {folder} has cope{n} but no varcope{n} beside it (stats/ or reg_standard/stats/); copy "
            "the folder again whole, or rerun its FEAT analysis."
        )
    shown = ", ".join(f"{k}" + (f" ({names[str(k)]})" if str(k) in names else "") for k in has)
    raise InputError(
        f"FEAT folder {folder} has no cope and varcope of contrast {contrast!r} (its contrasts: {shown}); give one "
        "of those numbers or names."
    )


def _feat_unregistered(folder: Path) -> str | None:
    """What a FEAT folder's own maps (``stats/``, no ``reg_standard/``) are: refused where FEAT registered the run to
    standard space (``reg/example_func2standard.mat``, not the identity): they are in the subject's functional space,
    and subjects' maps of one grid were combined voxel by voxel unaligned, exit 0 (a tester's); FEAT's higher level
    resamples them first (featregapply). A note where the folder has no registration (``reg/``: taken as they are);
    None where it is the identity (maps already in one space, fMRIPrep's MNI runs, with FSL's ident.mat)."""
    matrix = folder / "reg" / "example_func2standard.mat"
    if not matrix.is_file():
        return f"{folder.name}: no registration (reg/example_func2standard.mat): its stats/ maps taken as they are"
    try:
        values = np.array(matrix.read_text(errors="replace").split(), dtype=float)
    except (OSError, ValueError):
        values = np.array([])
    if values.size == 16 and np.allclose(values.reshape(4, 4), np.eye(4), atol=1e-3):
        return None
    if values.size != 16 or not np.isfinite(values).all():
        raise InputError(
            f"FEAT folder {folder}: reg/example_func2standard.mat is not FSL's 4 x 4 matrix (16 numbers), so where its "
            "stats/ maps lie cannot be told; write it again (rerun FEAT's registration), or give a folder whose "
            "reg_standard/ holds its maps in standard space (featregapply)."
        )
    raise InputError(
        f"FEAT folder {folder}: its stats/ maps are in the subject's functional space (reg/example_func2standard.mat "
        f"registers them to standard space) and it has no reg_standard/: run `featregapply {folder}` (FSL) to resample "
        "them, as FEAT's higher level does, then give the folder again (maps already in one space: FSL's ident.mat as "
        "that matrix)."
    )


def _feat_contrast_names(folder: Path, contrast: str | None) -> dict[str, str]:
    """The contrast names of FEAT's ``design.con`` (``/ContrastName1 task``): number -> name; none without the
    file. A design.con that cannot be read is said where a `contrast` name is asked for (None: a number, which
    needs no names): the folder was said to have no contrast of that name."""
    path = folder / "design.con"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if contrast is None:
            return {}
        raise InputError.from_os_error(exc, path, f"FEAT's contrast names (for {contrast!r})") from None
    return {m.group(1): m.group(2) for line in lines if (m := _CONTRAST_NAME.match(line))}


def _feat_dof(folder: Path) -> tuple[float | None, str | None]:
    """FEAT's residual dof (``stats/dof``, one number), or None without the file; and what is wrong with a file
    that cannot be read or holds no positive finite number (None where nothing is): a fixed-effects model refuses
    it, where it was taken as missing (n - rank, said in a note alone)."""
    path = folder / "stats" / "dof"
    if not path.exists():
        return None, None
    try:
        text = path.read_text(errors="replace").split()
    except OSError as exc:
        return None, str(InputError.from_os_error(exc, path, "FEAT's dof file"))
    try:
        value = float(text[0])
    except (ValueError, IndexError):
        value = None
    if value is None or not _positive(value):
        shown = " ".join(text)[:40] or "nothing"
        return None, f"{path} holds {shown!r}, not FEAT's residual dof (one positive number)"
    return value, None


def _feat_dof_map(where: Path, n: str) -> Path | None:
    """A higher-level FEAT folder's dof map of contrast `n` (``stats/tdof_t<N>``, written by flameo where the
    folder has no ``stats/dof``: a subject's runs combined, each voxel's dof those of the runs that cover it);
    None without one."""
    return next((path for e in _NIFTI if (path := where / f"tdof_t{n}{e}").is_file()), None)


def _refuse_other_subject(folders, names, found) -> None:
    """A folder named for one subject whose model.json records another's inputs holds someone else's fit."""
    for folder, name, f in zip(folders, names, found):
        if name is not None and f.input_label is not None and name != f.input_label:
            raise InputError(
                f"{folder} is named for sub-{name} but its model.json records the inputs of sub-{f.input_label}; "
                "rename the folder for the subject it holds."
            )


def _refuse_same_subject(folders, subjects) -> None:
    twice = [label for label, c in Counter(subjects).items() if label is not None and c > 1]
    if twice:
        cells = [f"sub-{k} ({', '.join(str(f) for f, s in zip(folders, subjects) if s == k)})" for k in twice]
        raise InputError(
            f"two or more first-level folders of one subject: {listed(cells, 3)}; give one folder per subject "
            "(several runs of one subject: fit them together with voxfit fit, one design per run)."
        )


def _folders_notes(notes: list[str]) -> list[str]:
    """The folders' notes (``<folder>: <what>``), those that say the same of several folders said once, naming them
    (a note per folder said one thing fifty times for fifty subjects)."""
    said: dict[str, list[str]] = {}
    for note in notes:
        name, _, what = note.partition(": ")
        said.setdefault(what, []).append(name)
    return [f"{names[0]}: {what}" if len(names) == 1 else f"{listed(names, 3)}: {what}" for what, names in said.items()]


def _subjects_note(folders, names, subjects) -> str:
    by_name = sum(n is not None for n in names)
    by_inputs = sum(n is None and s is not None for n, s in zip(names, subjects))
    none = [str(f) for f, s in zip(folders, subjects) if s is None]
    parts = [f"{by_name} from the folder names"] if by_name else []
    parts += [f"{by_inputs} from the inputs model.json records"] if by_inputs else []
    parts += [f"none for {listed(none, 3)}"] if none else []
    return f"{len(folders)} first-level folders, in the order given; subjects: {', '.join(parts)}"


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _positive(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _short(value) -> str:
    """`value` in a few words for a message: arrays by their shape, anything else by its repr, cut short."""
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-D array of shape {value.shape}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."
