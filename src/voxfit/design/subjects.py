"""Which row of a participants table belongs to which map: subjects' labels, matched by identity.

A map's subject is the BIDS entity ``sub-<label>`` of its file name (``sub-01_contrast-x_stat-effect_statmap.nii.gz``)
or else of the nearest folder above it (``derivatives/voxfit/sub-01/contrast-x_stat-effect_statmap.nii.gz``,
``sub-01.feat/``). Only folders below the maps' common folder count: a folder that holds every map names no
one subject. A table's id (``participant_id``, or the column the user names) is the label with or without the
``sub-`` prefix: ``sub-01`` and ``01`` are the same subject, ``1`` is another.

Matching never falls back on the order of the inputs: a map without a row, a row without a map (unless the
caller drops such rows), two rows or two maps of one subject, or a map without a label stop with the ids named.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePath

from ..exceptions import InputError
from .read import MISSING_CELLS

__all__ = ["Matching", "listed", "match_rows", "normalize_id", "pair_by_subject", "subject_labels"]

_SUB = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)(?=[_.]|$)")


def normalize_id(value: str) -> str:
    """A participant id as a subject label: ``sub-01`` and ``01`` are both ``01``."""
    value = str(value).strip()
    return value.removeprefix("sub-")


def subject_labels(paths) -> list[str | None]:
    """The subject label of each path (None where there is none): ``sub-<label>`` in the file name, else in
    the nearest folder above it that lies below the folder common to all the paths."""
    paths = [PurePath(os.path.abspath(str(p).partition("::")[0])) for p in paths]  # (a store, not its array)
    if not paths:
        return []
    common = PurePath(os.path.commonpath([str(p.parent) for p in paths])) if len(paths) > 1 else None
    labels = []
    for path in paths:
        label = _label(path.name)
        if label is None:
            for folder in path.parents:
                if common is not None and (folder == common or folder in common.parents):
                    break
                label = _label(folder.name)
                if label is not None:
                    break
        labels.append(label)
    return labels


def _label(name: str) -> str | None:
    found = _SUB.search(name)
    return found.group(1) if found else None


def listed(items, k: int = 6) -> str:
    """The first `k` of `items` for a message, comma-separated, and how many more there are."""
    items = list(items)
    shown = ", ".join(map(str, items[:k]))
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


@dataclass(frozen=True)
class Matching:
    """Table rows (0-based, in the table's order of data rows) of each map, and the rows left without a map."""

    rows: tuple[int, ...]
    dropped: tuple[int, ...] = ()


def match_rows(ids, maps, labels, *, what: str, column: str, drop_unmatched: bool = False) -> Matching:
    """Match each map to the table row whose id (`ids`, the cells of `column`) is the map's subject label.

    `maps` names the maps in messages; `labels` are their subject labels (:func:`subject_labels`; None for a
    map without one). Refused, with the ids named: empty or repeated ids, maps without a label, two maps of one
    subject, maps without a row and, unless `drop_unmatched`, rows without a map.
    """
    ids = [str(i).strip() for i in ids]
    empty = [k + 1 for k, i in enumerate(ids) if i.lower() in MISSING_CELLS or i == "sub-"]
    if empty:
        raise InputError(
            f"{what}: column {column!r} is empty in row(s) {listed(empty)}; every row needs the id of its participant."
        )
    keys = [normalize_id(i) for i in ids]
    repeated = [k for k, c in Counter(keys).items() if c > 1]
    if repeated:
        cells = [f"sub-{k} (rows {', '.join(str(r + 1) for r, key in enumerate(keys) if key == k)})" for k in repeated]
        raise InputError(f"{what}: column {column!r} repeats ids: {listed(cells, 4)}; give each participant one row.")
    unlabelled = [str(m) for m, label in zip(maps, labels) if label is None]
    if unlabelled:
        raise InputError(
            f"{what} matches rows by {column!r}, but {len(unlabelled)} map(s) have no sub-<label> in "
            f"their file or folder names: {listed(unlabelled, 3)}; name the maps (or their folders) "
            "sub-<label>, or give a table without ids (rows then match the maps by position)."
        )
    twice = [k for k, c in Counter(labels).items() if c > 1]
    if twice:
        cells = [f"sub-{k} ({', '.join(str(m) for m, label in zip(maps, labels) if label == k)})" for k in twice]
        raise InputError(f"two or more maps of the same subject: {listed(cells, 3)}; give one map per subject.")
    where = {key: r for r, key in enumerate(keys)}
    missing = [label for label in labels if label not in where]
    if missing:
        hint = ""
        bare = {key.lstrip("0"): key for key in keys}
        close = [f"sub-{m} ~ {ids[where[bare[m.lstrip('0')]]]!r}" for m in missing if m.lstrip("0") in bare]
        if close:
            hint = (
                f" (ids differ only in leading zeros: {listed(close, 3)}; labels must be equal, and pandas reads "
                "01 as 1 unless told dtype={'participant_id': str})"
            )
        raise InputError(
            f"{what} has no row for {len(missing)} map(s): {listed(f'sub-{m}' for m in missing)} (matched "
            f"by {column!r}){hint}; add their rows or leave those maps out."
        )
    rows = tuple(where[label] for label in labels)
    unmatched = tuple(sorted(set(range(len(ids))) - set(rows)))
    if unmatched and not drop_unmatched:
        raise InputError(
            f"{what} has {len(unmatched)} row(s) without a map: {listed(ids[r] for r in unmatched)}; "
            "give their maps, remove the rows, or pass --drop-unmatched-rows (Python: "
            "drop_unmatched_rows=True) to leave them out."
        )
    return Matching(rows, unmatched)


def pair_by_subject(maps) -> tuple[list[int], list[str | None]]:
    """For paired designs (the n maps of condition A, then the n maps of B): the index in B of each A map's
    subject, and the A maps' labels. Maps without labels pair by position; some labelled and some not,
    a subject twice in A or in B, or a subject in only one of them are refused."""
    half = len(maps) // 2
    labels = subject_labels(maps)
    a, b = labels[:half], labels[half:]
    if all(label is None for label in labels):
        return list(range(half)), a
    if any(label is None for label in labels):
        unlabelled = [str(m) for m, label in zip(maps, labels) if label is None]
        raise InputError(
            f"--paired: {len(unlabelled)} map(s) have no sub-<label> in their file or folder names "
            f"({listed(unlabelled, 3)}) while others do; label every map (pairs then match by subject) "
            "or none (pairs match by position)."
        )
    for name, side, paths in (("A", a, maps[:half]), ("B", b, maps[half:])):
        twice = [k for k, c in Counter(side).items() if c > 1]
        if twice:
            cells = [f"sub-{k} ({', '.join(str(m) for m, label in zip(paths, side) if label == k)})" for k in twice]
            raise InputError(
                f"--paired: the maps of condition {name} (the {half} maps of the "
                f"{'first' if name == 'A' else 'second'} half) hold a subject twice: {listed(cells, 3)}."
            )
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if only_a or only_b:
        parts = [
            f"only in A (first half): {listed(f'sub-{k}' for k in only_a)}" if only_a else "",
            f"only in B (second half): {listed(f'sub-{k}' for k in only_b)}" if only_b else "",
        ]
        raise InputError(
            f"--paired: the two halves of the maps hold different subjects, {'; '.join(p for p in parts if p)}; "
            "give the maps of condition A, then those of B, one per subject in each."
        )
    where = {label: k for k, label in enumerate(b)}
    return [where[label] for label in a], a
