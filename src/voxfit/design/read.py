"""Design matrices from files: TSV/CSV with a header of column names, or FSL's VEST ``design.mat``.

Read with the standard library and numpy (pandas costs half a second to import at the command line).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._checks import repeated
from ..io.checks import check_readable
from ..exceptions import InputError
from .vest import plain_float

__all__ = ["MISSING_CELLS", "check_separator", "frame_table", "read_design", "table_error", "write_design"]

MISSING_CELLS = frozenset({"", "n/a", "na", "nan"})  # a table cell that holds no value (lower case)


def table_error(path: Path, exc: Exception) -> InputError:
    """What a design table that Python's csv cannot read is, and what to do: text in another encoding than
    UTF-8 (Latin-1, UTF-16: "save it as UTF-8"), a cell too long for a table, or csv's own words."""
    if isinstance(exc, UnicodeDecodeError):
        return InputError(
            f"design {path}: not UTF-8 text (byte {exc.start + 1}: 0x{exc.object[exc.start]:02x}); save it as "
            "UTF-8 (a spreadsheet's 'CSV UTF-8' or 'Unicode text'), tab-separated, or as .csv."
        )
    if "field larger than field limit" in str(exc):
        return InputError(
            f"design {path}: a cell of more than {csv.field_size_limit():,} characters, which no design holds; is it "
            "a table, one row per line?"
        )
    return InputError(f"design {path}: not a text table ({exc}).")


def read_design(path) -> tuple[NDArray[np.float64], list[str]]:
    """Read a design matrix: ``(X, names)``, one row per scan, one named column per regressor.

    ``.tsv``/``.csv``/``.txt`` files need a header line of unique column names; FSL ``.mat`` files
    (``/NumWaves``, ``/NumPoints``, ``/Matrix``) get columns ``EV1, EV2, ...``. Every value must be a
    finite number (``n/a`` and empty cells are refused, with the row and column named).
    """
    path = Path(path)
    check_readable(path, "design", table=True)  # (missing, a folder, a pipe or a device: said so)
    if path.suffix.lower() == ".mat":
        return _read_vest(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter=sep) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise table_error(path, exc) from None
    except OSError as exc:  # unreadable (permissions), a folder...: the system's reason, exit status 2
        raise InputError.from_os_error(exc, path, "design") from None
    if not rows or not any(h.strip() for h in rows[0]):
        raise InputError(f"design {path} is empty; it needs a header line of column names and one row per scan.")
    names = [h.strip() for h in rows[0]]
    _check_header(path, names, sep, sep.join(rows[1]) if len(rows) > 1 else "")
    _check_characters(path, names, sep, more_rows=len(rows) > 1)
    if "" in names:
        at = names.index("") + 1
        where = " (a separator at the end of the line?)" if not any(names[at - 1 :]) else ""
        raise InputError(
            f"design {path}: column {at} has no name in the header line{where}; name it, or remove the empty column."
        )
    dup = repeated(names)
    if dup:
        raise InputError(
            f"design {path}: column names must be unique; {', '.join(map(repr, dup))} appear more than once."
        )
    body = rows[1:]
    if not body:
        raise InputError(f"design {path} has a header but no rows; it needs one row per scan.")
    values = []
    for i, row in enumerate(body):
        if len(row) != len(names):
            raise InputError(
                f"design {path}: row {i + 1} has {len(row)} values but the header names {len(names)} columns."
            )
        values.append([_number(cell, path, i, names[j]) for j, cell in enumerate(row)])
    return np.array(values, dtype=np.float64).reshape(len(body), len(names)), names


_SEPARATORS = {"\t": "tabs", ",": "commas", ";": "semicolons", " ": "spaces"}


def _check_characters(path: Path, names: list[str], sep: str, more_rows: bool) -> None:
    """Refuse a header whose quote no quote closes (csv read the rest of the file into that cell: "a header but
    no rows", where `more_rows` is False), a line break in a name within quotes, and column names holding control
    characters (a NUL was taken into the name, which no contrast can write)."""
    for j, name in enumerate(names, 1):
        if "\n" in name or "\r" in name:
            if not more_rows:
                raise InputError(
                    f'design {path}: a quote (") in column {j} of the header line opens a cell that no quote closes, '
                    "and the rest of the file was read into it; remove the quote, or close it."
                )
            raise InputError(
                f"design {path}: the name of column {j} ({name[:40]!r}) holds a line break, inside quotes; name the "
                "column on one line."
            )
        if bad := next((c for c in name if ord(c) < 32 or ord(c) == 127), None):
            raise InputError(
                f"design {path}: the name of column {j} ({name[:40]!r}) holds the control character {bad!r}; is the "
                f"file a text table, its columns separated by {_SEPARATORS[sep]}? Name the column in letters."
            )


def _check_header(path: Path, names: list[str], sep: str, first_row: str) -> None:
    """Refuse a header that is not column names: one column that another separator splits as it splits the first
    row (a table saved with semicolons, as spreadsheets in many locales do, or with spaces; a column named
    ``face up`` above single values is a name), or decimal numbers alone (a matrix with no header, whose first
    row would be taken for names and lost). Integers alone are names: pandas names a DataFrame's columns 0, 1, ...
    (and a matrix of integers without a header is refused by its count of rows)."""
    check_separator(path, names, sep, first_row)
    if all(_DECIMAL.fullmatch(name) for name in names) and not all(_INTEGER.fullmatch(name) for name in names):
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise InputError(
            f"design {path}: its first line holds numbers ({shown}), not column names; add a header line naming "
            "the columns (as 'A<tab>B<tab>constant') above one row per scan."
        )


def check_separator(path: Path, names: list[str], sep: str, first_row: str) -> None:
    """Refuse a table read as one column that another separator splits as it splits the first row (`first_row`,
    as written): saved with semicolons, as spreadsheets in many locales do, or with spaces."""
    other = next(
        (
            s
            for s in _SEPARATORS
            if s != sep and len(names) == 1 and len(_split(names[0], s)) == len(_split(first_row, s)) > 1
        ),
        None,
    )
    if other is not None:
        raise InputError(
            f"design {path}: its header line {names[0].strip()[:60]!r} is one column separated by "
            f"{_SEPARATORS[other]}; voxfit reads a .tsv or .txt separated by tabs, a .csv by commas: save it so."
        )


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _split(text: str, sep: str) -> list[str]:
    return text.split() if sep == " " else text.strip().split(sep)  # (spaces: any run of them, as aligned columns)


def frame_table(frame) -> tuple[list[str], list[list]]:
    """A DataFrame as ``(column names, rows of cells)``; missing cells (NaN, None, pd.NA) become ``"n/a"``, as
    a BIDS file writes them, and numbers stay numbers (no round trip through text)."""
    header = [str(c).strip() for c in frame.columns]
    rows = []
    for row in frame.itertuples(index=False, name=None):
        cells = []
        for v in row:
            missing = v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType")
            cells.append("n/a" if missing else v)
        rows.append(cells)
    return header, rows


def _number(cell: str, path: Path, row: int, column: str) -> float:
    text = cell.strip()
    try:
        value = plain_float(text)
    except ValueError:
        if text.lower() not in MISSING_CELLS:
            raise InputError(f"design {path}: column {column!r}, row {row + 1} is not a number ({text!r}).") from None
        value = float("nan")
    if not math.isfinite(value):
        raise InputError(
            f"design {path}: missing or non-finite value in column "
            f"{column!r}, row {row + 1}; a design must be complete."
        )
    return value


def _read_vest(path: Path) -> tuple[NDArray[np.float64], list[str]]:
    from .vest import read_vest

    X = read_vest(path, "design")[1]
    return X, [f"EV{j + 1}" for j in range(X.shape[1])]


def write_design(path, X: NDArray, names) -> None:
    """Write a design as TSV with a header of column names (what ``read_design`` reads back exactly)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(names)
        writer.writerows([repr(v) for v in row] for row in np.asarray(X, dtype=np.float64).tolist())
