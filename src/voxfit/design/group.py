"""Group (second-level) designs: one-sample, two-sample, participants tables, FSL VEST files.

A participants table (TSV/CSV with a header, or a pandas DataFrame) has one row per participant. Its rows
are matched to the maps by identity: the ``participant_id`` column (BIDS ``participants.tsv``; ``sub-01`` or
``01``), or the column named by `id_column`, against each map's ``sub-<label>`` (see :mod:`.subjects`); the
design's rows follow the maps' order, whatever the order of the table. A table without an id column is matched
by position (row k is map k), and says so in a note (and a warning when the maps carry subject labels that
could have been matched). FSL's ``design.mat`` is positional, as in FSL; the order used is in a note.

Numeric columns become regressors; text columns are left out (and reported), except the column named by
``two_sample``, whose two values become one indicator column each; the id column is never a regressor.
An ``intercept`` column is added when the columns do not already span the constant, so that a design of
``age`` alone models the mean as well (as nilearn and most users expect).
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import is_dataframe, type_name
from ..io.checks import check_readable
from ..exceptions import DesignWarning, InputError
from .read import MISSING_CELLS, check_separator, frame_table, table_error
from .subjects import listed, match_rows, subject_labels
from .vest import plain_matrix, read_vest

__all__ = [
    "ADDED_INTERCEPT",
    "GroupDesign",
    "group_design",
    "listed_lines",
    "read_table",
    "table_from_frame",
    "warn_uncentred_covariates",
]

ID_COLUMN = "participant_id"
ADDED_INTERCEPT = "an intercept column was added (the table's columns do not model the mean)"  # (a design's note)


@dataclass(frozen=True, eq=False)
class GroupDesign:
    """A group design: matrix (one row per map), column names, the table columns left out, and which table
    row each map got.

    matched_by: the table column whose ids were matched to the maps' subject labels, ``"position"`` (row k is
    map k: FSL's design.mat, tables without ids, arrays) or None (one-sample, no table); rows: the table's
    data row (0-based) of each map; ids: each map's id cell (empty unless matched by a column); dropped: the
    table rows left without a map (``drop_unmatched_rows``); source: the table's path, or ``"DataFrame"``;
    variance_groups: each map's value in the table's column of variance groups (mixed-effects models), when
    one was named; empty otherwise.
    """

    X: NDArray[np.float64]
    names: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    matched_by: str | None = None
    rows: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    dropped: tuple[tuple[int, str], ...] = ()
    source: str | None = None
    variance_groups: tuple[str, ...] = ()


def read_table(path) -> tuple[list[str], list[list[str]]]:
    """A TSV/CSV table with a header line: ``(column names, rows of text cells)``."""
    path = Path(path)
    check_readable(path, "design")  # (missing, a folder, a pipe or a device: said so)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter=sep) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise table_error(path, exc) from None
    except OSError as exc:
        raise InputError.from_os_error(exc, path, "design") from None
    if not rows:
        raise InputError(f"design {path} is empty; it needs a header line and one row per input map.")
    names = [h.strip() for h in rows[0]]
    check_separator(path, names, sep, sep.join(rows[1]) if len(rows) > 1 else "")
    if _numeric(names) is not None:  # (read as the names, the first row was lost: "7 rows but 8 maps")
        raise InputError(
            f"design {path}: its first line ({', '.join(names[:4])}{', ...' * (len(names) > 4)}) holds numbers, "
            "where a table's header names its columns; add a header line (e.g. participant_id, age), or write the "
            "design as FSL's design.mat."
        )
    if "" in names or len(set(names)) != len(names):
        raise InputError(f"design {path}: the header must name every column once; got {names}.")
    body = rows[1:]
    for i, row in enumerate(body, 2):
        if len(row) != len(names):
            raise InputError(f"design {path}, line {i}: {len(row)} cells but the header names {len(names)} columns.")
    return names, [[c.strip() for c in r] for r in body]


def table_from_frame(frame, id_column: str | None = None) -> tuple[list[str], list[list[str]]]:
    """A pandas DataFrame as :func:`read_table` returns a file: ``(column names, rows of text cells)``.

    Numbers are written exactly (``repr``), missing values as ``n/a``, booleans as text; an index named
    ``participant_id`` (or `id_column`) is read as that column (``pd.read_csv(..., index_col="participant_id")``).
    """
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise InputError(f"the design DataFrame must name every column once; got {names}.")
    _, rows = frame_table(frame)  # (the DataFrames' one rule for missing cells: "n/a")
    index_name = getattr(frame.index, "name", None)
    if index_name is not None and str(index_name) in {ID_COLUMN, id_column} and str(index_name) not in names:
        names.insert(0, str(index_name))
        rows = [[label, *row] for label, row in zip(frame.index, rows)]
    return names, [[_cell(v) for v in row] for row in rows] if names else []


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "n/a" if math.isnan(float(value)) else repr(float(value))
    text = str(value).strip()
    return "n/a" if text in ("<NA>", "NaT") else text


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


def group_design(
    n_maps: int,
    *,
    design=None,
    two_sample: str | None = None,
    maps=None,
    id_column: str | None = None,
    drop_unmatched_rows: bool = False,
    variance_groups: str | None = None,
    covariates=None,
) -> GroupDesign:
    """The design for `n_maps` maps: one-sample (``design=None``), a participants table (a TSV/CSV path or a
    pandas DataFrame), FSL design.mat (``design=path``), or ``(X, names)``; `two_sample` names the table's
    group column.

    maps: the name (path) of each map, for matching table rows to the maps' ``sub-<label>``; None when the maps
    are not one per file (volumes of a 4-D file, rows of an array): then only a table without ids (matched
    by position) can be used. id_column: the table's column of participant ids (default ``participant_id``
    when there is one). drop_unmatched_rows: leave out the table's rows that match no map instead of refusing.
    variance_groups: the table's column of variance groups (mixed-effects models: a between-subject variance
    per group, FSL FLAME's groups); not a regressor unless it is also the `two_sample` column. covariates: the
    table's numeric columns that enter the design beside the `two_sample` groups (a list of names; an empty list
    for none); None: every numeric column, named in a note when they join `two_sample` groups.
    """
    plain = _plain_matrix(design)
    positional = design is None or isinstance(design, tuple) or _is_mat(design) or plain is not None
    if covariates is not None and positional:
        raise InputError(
            "--covariates names columns of a participants table, but the design has no columns; give --design "
            "TABLE with those columns."
        )
    if variance_groups is not None and positional:
        raise InputError(
            f"variance groups {variance_groups!r} name a column of a participants table, but the design has no "
            "columns; give --design TABLE with that column, or an FSL .grp file."
        )
    if maps is not None:
        maps = [str(m) for m in maps]
        if len(maps) != n_maps:
            raise ValueError(f"{len(maps)} map names for {n_maps} maps")  # a caller's bug, not the user's
    if design is None:
        if two_sample is not None:
            raise InputError("--two-sample needs --design TABLE with that column.")
        _no_id_options(id_column, drop_unmatched_rows, "there is no participants table (give --design TABLE)")
        return GroupDesign(np.ones((n_maps, 1)), ("intercept",))
    if isinstance(design, tuple):
        _no_id_options(
            id_column, drop_unmatched_rows, "an (X, names) design has no ids: its rows are the maps' in order"
        )
        X, names = np.asarray(design[0], dtype=float), tuple(design[1])
        return _checked(
            GroupDesign(X, names, matched_by="position", rows=tuple(range(X.shape[0]))), n_maps, "the design"
        )
    if is_dataframe(design):
        names, rows = table_from_frame(design, id_column)
        what, source = "the design DataFrame", "DataFrame"
    elif not isinstance(design, (str, os.PathLike)):
        raise InputError(
            "`design` must be None (one-sample), a path to a participants TSV/CSV or FSL design.mat, a "
            "pandas DataFrame (one row per map) or an (array, names) pair; got "
            f"{type_name(design)}."
        )
    else:
        path = Path(design)
        if _is_mat(path) or plain is not None:
            kind = "a matrix of numbers without a header" if plain is not None else "FSL's design.mat"
            if two_sample is not None:
                raise InputError(f"--two-sample reads a column of a participants table; {kind} has no column names.")
            _no_id_options(
                id_column,
                drop_unmatched_rows,
                f"{kind} has no ids: its rows are the maps in the order given (FSL's convention)",
            )
            X = plain if plain is not None else read_vest(path, "design")[1]
            d = _checked(GroupDesign(X, tuple(f"EV{j + 1}" for j in range(X.shape[1]))), n_maps, f"design {path}")
            return GroupDesign(
                d.X,
                d.names,
                notes=(_order_note(f"design {path}", maps, n_maps, "FSL's convention"),),
                matched_by="position",
                rows=tuple(range(n_maps)),
                source=str(path),
            )
        names, rows = read_table(path)
        what, source = f"design {path}", str(path)
    if id_column is not None and id_column not in names:
        raise InputError(f"{what} has no column {id_column!r} for --id-column; its columns are {', '.join(names)}.")
    column = id_column if id_column is not None else (ID_COLUMN if ID_COLUMN in names else None)
    notes: list[str] = []
    ids: tuple[str, ...] = ()
    dropped: tuple[tuple[int, str], ...] = ()
    if column is None:
        if drop_unmatched_rows:
            raise InputError(
                f"--drop-unmatched-rows drops rows whose id matches no map, but {what} has no "
                f"{ID_COLUMN} column; name its id column with --id-column COLUMN."
            )
        if len(rows) != n_maps:
            raise InputError(
                f"{what} has {len(rows)} rows but {n_maps} maps were given; give one row per map, in the "
                f"same order, or a {ID_COLUMN} column to match rows to the maps' sub-<label>."
            )
        order = tuple(range(n_maps))
        labels = set(subject_labels(maps)) - {None} if maps is not None else set()
        for j, name in enumerate(names):  # an id column under another name (Participant_ID, subject...)
            values = {str(r[j]).strip().removeprefix("sub-") for r in rows}
            if labels and values == labels:
                raise InputError(
                    f"{what} has no {ID_COLUMN} column, but its column {name!r} holds the maps' subject "
                    f"labels; name it with --id-column {name} (`id_column`), so that rows are matched "
                    "by subject, not by position."
                )
        if labels:
            warnings.warn(
                f"{what} has no {ID_COLUMN} column, so its rows are matched to the maps by position (row 1 "
                f"to the first map given, ...), not by subject; add a {ID_COLUMN} column (or name the id "
                "column with --id-column) to match them by the maps' sub-<label>.",
                DesignWarning,
                stacklevel=2,
            )
        notes.append(_order_note(what, maps, n_maps, f"the table has no {ID_COLUMN} column"))
    else:
        cells = [r[names.index(column)] for r in rows]
        if maps is None:
            raise InputError(
                f"{what} matches rows by {column!r}, but the {n_maps} maps are volumes of one file (or rows "
                "of an array) and carry no sub-<label> each; give one file per subject (named, or in a "
                "folder named, sub-<label>), or a table without ids (rows then match the maps by position)."
            )
        matching = match_rows(
            cells, maps, subject_labels(maps), what=what, column=column, drop_unmatched=drop_unmatched_rows
        )
        order = matching.rows
        ids = tuple(cells[r] for r in order)
        dropped = tuple((r, cells[r]) for r in matching.dropped)
        rows = [rows[r] for r in order]
        notes.append(
            f"rows of {what} matched to the {n_maps} maps by {column!r} (the maps' sub-<label>), whatever "
            "the order of the maps and of the table"
        )
        if dropped:
            notes.append(
                f"{len(dropped)} row(s) of {what} without a map dropped (--drop-unmatched-rows): "
                + ", ".join(f"{i} (row {r + 1})" for r, i in dropped)
            )
    columns = {name: [r[j] for r in rows] for j, name in enumerate(names)}
    groups = ()
    if variance_groups is not None:
        if variance_groups not in columns or variance_groups in (column, ID_COLUMN):
            raise InputError(
                f"{what} has no column {variance_groups!r} of variance groups (the id column is not one); its "
                f"columns are {', '.join(names)}."
            )
        groups = tuple(c.strip() for c in columns[variance_groups])
        if any(g.lower() in MISSING_CELLS for g in groups):
            raise InputError(f"{what}: the variance-group column {variance_groups!r} has missing values; fill them.")
    regressors: list[tuple[str, NDArray]] = []
    left_out = []
    if two_sample is not None:
        if two_sample not in columns:
            raise InputError(
                f"{what} has no column {two_sample!r} for --two-sample; its columns are {', '.join(names)}."
            )
        if two_sample in (column, ID_COLUMN):
            raise InputError(f"--two-sample {two_sample!r} is the id column; name the column of the two groups.")
        levels = sorted(set(columns[two_sample]))
        if len(levels) != 2 or "" in levels or "n/a" in levels:
            raise InputError(
                f"--two-sample column {two_sample!r} must hold exactly two group values; it holds {levels}."
            )
        for level in levels:  # numeric codes (1, 2) get the column's name: group_1, group_2
            label = f"{two_sample}_{level}" if _numeric([level]) is not None else level
            regressors.append((label, np.array([c == level for c in columns[two_sample]], dtype=float)))
    chosen = _covariates(covariates, names, (two_sample, column, ID_COLUMN), what)
    for name in names:
        if name in (two_sample, column, ID_COLUMN, variance_groups):  # ids are never regressors, even numeric ones
            continue
        if chosen is not None and name not in chosen:
            continue
        values = _numeric(columns[name])
        if values is None:
            filled = [(k, c) for k, c in enumerate(columns[name], 1) if c.lower() not in MISSING_CELLS]
            if filled and _numeric([c for _, c in filled]) is not None:  # numbers with gaps: a design must be complete
                gaps = [k for k, c in enumerate(columns[name], 1) if c.lower() in MISSING_CELLS]
                where = [columns[ID_COLUMN][k - 1] if ID_COLUMN in columns else f"row {k}" for k in gaps]
                raise InputError(
                    f"{what}: column {name!r} has missing values (n/a) for {listed(where)}; fill them or remove "
                    "the rows (and their maps), or drop the column."
                )
            words = [(k, c) for k, c in filled if _numeric([c]) is None]
            commas = bool(words) and all("," in c and _numeric([c.replace(",", ".", 1)]) is not None for _, c in words)
            if len(words) < len(filled) or commas:  # numbers and a word or two (a typo, a decimal comma), or numbers
                # with decimal commas in every row (a spreadsheet's locale): not a text column
                k, cell = words[0]  # (rows in the maps' order where an id column matched them: named by the id)
                where = f"{ID_COLUMN} {columns[ID_COLUMN][k - 1]}" if ID_COLUMN in columns else f"row {k}"
                what_is = (
                    f"{cell!r} is not a number, where the column's other values are; fix the cell (decimals with a "
                    "point)"
                    if len(words) < len(filled)
                    else f"{cell!r} and the column's other values are numbers written with commas (decimal or "
                    "thousands separators); write them as plain numbers, with a decimal point"
                )
                raise InputError(
                    f"{what}: column {name!r}, {where}: {what_is}, or name the covariates with --covariates (other "
                    "columns are then not read)."
                )
            if chosen is not None:
                raise InputError(f"{what}: --covariates column {name!r} is not numeric; name numeric columns.")
            left_out.append(name)
            continue
        if not np.isfinite(values).all():
            raise InputError(f"{what}: column {name!r} has missing or non-finite values; a design must be complete.")
        regressors.append((name, values))
    if not regressors and left_out:  # (a text column may be meant as groups: not taken for a one-sample test)
        raise InputError(
            f"{what} has no numeric column to use as a regressor (its text columns: {', '.join(left_out)}); for two "
            "groups give --two-sample COLUMN, for a one-sample test leave out --design."
        )
    X = np.column_stack([v for _, v in regressors]) if regressors else np.empty((n_maps, 0))
    out_names = [n for n, _ in regressors]
    if not _spans_constant(X):
        X = np.column_stack([X, np.ones(n_maps)])
        out_names.append("intercept")
        notes.append(ADDED_INTERCEPT)
    if left_out:
        notes.append(f"text columns left out of the design: {', '.join(left_out)}")
    added = [n for n, _ in regressors[2 if two_sample is not None else 0 :]]
    if two_sample is not None and chosen is None and added:
        notes.append(
            f"numeric columns of {what} in the design beside the groups of {two_sample!r}: {', '.join(added)} "
            "(choose them with --covariates, e.g. --covariates none)"
        )
    d = GroupDesign(
        X, tuple(out_names), tuple(left_out), tuple(notes), column or "position", order, ids, dropped, source, groups
    )
    return _checked(d, n_maps, what)


def _covariates(covariates, names: list[str], not_these: tuple, what: str) -> set[str] | None:
    """The covariates asked for, checked against the table's columns (None: every numeric column)."""
    if covariates is None:
        return None
    chosen = [str(c) for c in ([covariates] if isinstance(covariates, str) else covariates)]
    for name in chosen:
        if name not in names:
            raise InputError(f"{what} has no column {name!r} for --covariates; its columns are {', '.join(names)}.")
        if name in not_these:
            raise InputError(f"--covariates {name!r} is the id or the --two-sample column; name the covariates only.")
    return set(chosen)


def _plain_matrix(design) -> NDArray[np.float64] | None:
    """A .txt design of numbers separated by spaces, tabs or commas (Fortran's 1.0D0 too), one row per map and
    no header, as FSL's Text2Vest and PALM take it (its first row had been read as a header: "11 rows but 12
    maps"), or an FSL VEST file (/NumWaves ...) named .txt, as a matrix; None for any other file."""
    if not isinstance(design, (str, os.PathLike)) or Path(design).suffix.lower() != ".txt":
        return None
    path = Path(design)
    try:
        text = path.read_text(encoding="utf-8-sig") if path.is_file() else ""
        if text.lstrip().startswith("/NumWaves"):
            return read_vest(path, "design")[1]
    except (OSError, UnicodeDecodeError):
        return None
    return plain_matrix(text)


def _is_mat(design) -> bool:
    """Whether `design` names an FSL design.mat (by its suffix)."""
    return isinstance(design, (str, os.PathLike)) and Path(design).suffix.lower() == ".mat"


def _no_id_options(id_column, drop_unmatched_rows: bool, why: str) -> None:
    if id_column is not None:
        raise InputError(f"--id-column {id_column!r} names the id column of a participants table, but {why}.")
    if drop_unmatched_rows:
        raise InputError(f"--drop-unmatched-rows drops the rows of a participants table that match no map, but {why}.")


def _order_note(what: str, maps, n_maps: int, why: str) -> str:
    """Which map each row of a positional design goes with, one line each (long lists shortened)."""
    head = f"rows of {what} matched to the {n_maps} maps by position ({why})"
    if maps is None:
        return f"{head}: row k is map k of the input"
    return head + ":" + listed_lines([f"row {k + 1}: {m}" for k, m in enumerate(maps)], "rows")


def listed_lines(lines: list[str], what: str) -> str:
    """`lines` indented one a line for a printed note; beyond 30, the first 20 and the last 5 (model.json has
    them all)."""
    if len(lines) > 30:
        lines = [*lines[:20], f"... ({len(lines) - 25} {what} more; all of them in model.json)", *lines[-5:]]
    return "\n  " + "\n  ".join(lines)


def _checked(d: GroupDesign, n_maps: int, what: str) -> GroupDesign:
    if d.X.shape[0] != n_maps:
        raise InputError(f"{what} has {d.X.shape[0]} rows but {n_maps} maps were given; give one row per map.")
    if len(set(d.names)) != len(d.names):
        raise InputError(f"{what}: column names repeat ({', '.join(d.names)}).")
    return d


def warn_uncentred_covariates(X: NDArray, names, items) -> None:
    """Warn of a contrast that takes a mean (its weights on the intercept, or on the groups' columns of a design of
    group means, do not sum to 0) while a covariate is not centred: it then tests the value at covariate 0 (age 0),
    not at its mean. FSL and nilearn fit the design as given; SPM centres covariates by default, and its users read
    "mean" as at the average age (a tester's: a one-sample mean over ages 20 to 60, said only as "an intercept was
    added"). A contrast of differences (patient - control) does not depend on the centring."""
    from ..core.expr import parse_contrast

    X = np.asarray(X, dtype=float)
    constant = (np.ptp(X, axis=0) == 0) & np.any(X != 0, axis=0)
    binary = np.all((X == 0) | (X == 1), axis=0) & ~constant
    if constant.any():  # (beside an intercept a 0/1 column is a covariate: sex coded 0/1 leaves the mean of 0's)
        levels, covariates = constant, ~constant
    elif binary.any() and np.allclose(X[:, binary].sum(axis=1), 1.0):
        levels, covariates = binary, ~binary  # (cell means: each row in one group)
    else:
        return
    mean, sd = X.mean(axis=0), X.std(axis=0)
    uncentred = np.flatnonzero(covariates & (np.abs(mean) > 0.5 * sd))
    if not uncentred.size:
        return
    for label, expr in items:
        try:
            w = parse_contrast(expr, tuple(names)) if isinstance(expr, str) else np.atleast_2d(np.asarray(expr, float))
        except Exception:  # (the contrast's own check says what is wrong with it)
            continue
        if w.shape[1] != X.shape[1] or np.all(np.abs(w[:, levels].sum(axis=1)) < 1e-12):
            continue
        j = int(uncentred[0])
        warnings.warn(
            f"contrast {label!r} takes a mean while covariate {names[j]!r} is not centred (its mean is {mean[j]:.4g}): "
            f"it tests the value at {names[j]} = 0, not at the average {names[j]}; subtract {mean[j]:.4g} from the "
            f"column (in a BIDS Stats Model, a Demean transformation of it) for the mean at the average (as SPM "
            "centres covariates), or keep it (FSL's and nilearn's convention: the design as given).",
            DesignWarning,
            stacklevel=3,
        )
