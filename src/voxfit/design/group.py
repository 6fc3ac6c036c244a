"""Group (second-level) designs: one-sample, two-sample, participants tables, FSL VEST files.

A participants table (TSV/CSV with a header) is one row per input map, in the order the maps are given.
Its numeric columns become regressors; text columns are left out (and reported), except the column named by
``two_sample``, whose two values become one indicator column each; ``participant_id`` is never a regressor.
An ``intercept`` column is added when the columns do not already span the constant, so that a design of
``age`` alone models the mean as well (as nilearn and most users expect).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import is_dataframe, type_name
from ..exceptions import InputError
from .read import frame_table
from .vest import read_vest

__all__ = ["GroupDesign", "group_design", "read_table"]


@dataclass(frozen=True, eq=False)
class GroupDesign:
    """A group design: matrix (one row per map), column names, and the table columns left out."""

    X: NDArray[np.float64]
    names: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_table(path) -> tuple[list[str], list[list[str]]]:
    """A TSV/CSV table with a header line: ``(column names, rows of text cells)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"design {path}: no such file.")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter=sep) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"design {path}: not a text table ({exc}).") from None
    if not rows:
        raise InputError(f"design {path} is empty; it needs a header line and one row per input map.")
    names = [h.strip() for h in rows[0]]
    if "" in names or len(set(names)) != len(names):
        raise InputError(f"design {path}: the header must name every column once; got {names}.")
    body = rows[1:]
    for i, row in enumerate(body, 2):
        if len(row) != len(names):
            raise InputError(f"design {path}, line {i}: {len(row)} cells but the header names {len(names)} columns.")
    return names, [[c.strip() for c in r] for r in body]


def _numeric(cells: list[str]) -> NDArray[np.float64] | None:
    try:
        values = np.array([float(c) for c in cells])
    except ValueError:
        return None
    return values


def _spans_constant(X: NDArray) -> bool:
    if X.shape[1] == 0:
        return False
    ones = np.ones(X.shape[0])
    return bool(np.linalg.norm(X @ np.linalg.lstsq(X, ones, rcond=None)[0] - ones) <= 1e-8 * np.sqrt(X.shape[0]))


def group_design(n_maps: int, *, design=None, two_sample: str | None = None) -> GroupDesign:
    """The design for `n_maps` maps: one-sample (``design=None``), a participants table or FSL design.mat
    (``design=path``), a participants table as a pandas DataFrame (the same rules), or ``(X, names)``;
    `two_sample` names the table's group column."""
    if design is None:
        if two_sample is not None:
            raise InputError("--two-sample needs --design TABLE with that column.")
        return GroupDesign(np.ones((n_maps, 1)), ("intercept",))
    if isinstance(design, tuple) and len(design) == 2:
        X, names = np.asarray(design[0], dtype=float), tuple(design[1])
        return _checked(GroupDesign(X, names), n_maps, "the design")
    if is_dataframe(design):  # a participants table in memory: "design DataFrame" in messages
        path: Path | str = "DataFrame"
        names, rows = frame_table(design)
        names = [str(n) for n in names]
        rows = [["n/a" if c == "n/a" else (c.strip() if isinstance(c, str) else str(c)) for c in r] for r in rows]
    elif isinstance(design, (str, os.PathLike)):
        path = Path(design)
        if path.suffix.lower() == ".mat":
            if two_sample is not None:
                raise InputError("--two-sample reads a column of a participants table; FSL's design.mat has no "
                                 "column names.")  # fmt: skip
            X = read_vest(path, "design")[1]
            return _checked(GroupDesign(X, tuple(f"EV{j + 1}" for j in range(X.shape[1]))), n_maps, f"design {path}")
        names, rows = read_table(path)
    else:
        raise InputError("`design` must be None (one-sample), a path to a participants TSV/CSV or FSL design.mat, a "
                         "pandas DataFrame (one row per map) or an (array, names) pair; got "
                         f"{type_name(design)}.")  # fmt: skip
    columns = {name: [r[j] for r in rows] for j, name in enumerate(names)}
    if len(rows) != n_maps:
        raise InputError(f"design {path} has {len(rows)} rows but {n_maps} maps were given; give one row per map, in the same order.")
    regressors: list[tuple[str, NDArray]] = []
    left_out, notes = [], []
    if two_sample is not None:
        if two_sample not in columns:
            raise InputError(f"design {path} has no column {two_sample!r} for --two-sample; its columns are {', '.join(names)}.")
        levels = sorted(set(columns[two_sample]))
        if len(levels) != 2 or "" in levels or "n/a" in levels:
            raise InputError(f"--two-sample column {two_sample!r} must hold exactly two group values; it holds {levels}.")
        for level in levels:  # numeric codes (1, 2) get the column's name: group_1, group_2
            label = f"{two_sample}_{level}" if _numeric([level]) is not None else level
            regressors.append((label, np.array([c == level for c in columns[two_sample]], dtype=float)))
    for name in names:
        if name == two_sample or name == "participant_id":
            continue
        values = _numeric(columns[name])
        if values is None:
            cells = [c for c in columns[name] if c.lower() not in ("n/a", "na", "nan", "")]
            if cells and _numeric(cells) is not None:  # numbers with gaps: a design must be complete
                raise InputError(f"design {path}: column {name!r} has missing values (n/a); fill them or remove the "
                                 "rows (and their maps), or drop the column.")  # fmt: skip
            left_out.append(name)
            continue
        if not np.isfinite(values).all():
            raise InputError(f"design {path}: column {name!r} has missing or non-finite values; a design must be complete.")
        regressors.append((name, values))
    if not regressors:
        raise InputError(f"design {path} has no numeric column to use as a regressor.")
    X = np.column_stack([v for _, v in regressors])
    out_names = [n for n, _ in regressors]
    if not _spans_constant(X):
        X = np.column_stack([X, np.ones(n_maps)])
        out_names.append("intercept")
        notes.append("an intercept column was added (the table's columns do not model the mean)")
    if left_out:
        notes.append(f"text columns left out of the design: {', '.join(left_out)}")
    return _checked(GroupDesign(X, tuple(out_names), tuple(left_out), tuple(notes)), n_maps, f"design {path}")


def _checked(d: GroupDesign, n_maps: int, what: str) -> GroupDesign:
    if d.X.shape[0] != n_maps:
        raise InputError(f"{what} has {d.X.shape[0]} rows but {n_maps} maps were given; give one row per map.")
    if len(set(d.names)) != len(d.names):
        raise InputError(f"{what}: column names repeat ({', '.join(d.names)}).")
    return d
