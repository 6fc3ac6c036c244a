"""Design matrices from files: TSV/CSV with a header of column names, or FSL's VEST ``design.mat``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import InputError

__all__ = ["read_design"]


def read_design(path) -> pd.DataFrame:
    """Read a design matrix: one row per scan, one named column per regressor.

    ``.tsv``/``.csv``/``.txt`` files need a header line of column names (unique); FSL ``.mat`` files
    (``/NumWaves``, ``/NumPoints``, ``/Matrix``) get columns ``EV1, EV2, ...``. Every value must be a
    finite number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"design {path}: no such file.")
    if path.suffix.lower() == ".mat":
        return _read_vest(path)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh, delimiter=sep), None)
    except UnicodeDecodeError:
        raise InputError(f"design {path}: not a text table.") from None
    if not header or not any(h.strip() for h in header):
        raise InputError(f"design {path} is empty; it needs a header line of column names and one row per scan.")
    names = [h.strip() for h in header]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"design {path}: column names must be unique; {', '.join(map(repr, dup))} appear more than once.")
    if any(not n for n in names):
        raise InputError(f"design {path}: column {names.index('') + 1} has no name in the header line.")
    try:
        table = pd.read_csv(path, sep=sep, header=0, names=names, na_values=["n/a", "NA", "NaN", ""], keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"design {path}: cannot read the table ({str(exc).splitlines()[0]}).") from None
    return _check(table, path)


def _read_vest(path: Path) -> pd.DataFrame:
    rows, in_matrix = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("/Matrix"):
            in_matrix = True
        elif in_matrix and line.strip():
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError:
                raise InputError(f"design {path}: non-numeric value in the /Matrix section: {line.strip()!r}.") from None
    if not rows:
        raise InputError(f"design {path}: no /Matrix section with values (is it an FSL design.mat?).")
    if len({len(r) for r in rows}) > 1:
        raise InputError(f"design {path}: the /Matrix rows have different numbers of values.")
    table = pd.DataFrame(np.array(rows), columns=[f"EV{j + 1}" for j in range(len(rows[0]))])
    return _check(table, path)


def _check(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if table.shape[0] == 0:
        raise InputError(f"design {path} has a header but no rows; it needs one row per scan.")
    bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise InputError(f"design {path}: column(s) {', '.join(map(repr, bad))} are not numeric.")
    values = table.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise InputError(f"design {path}: missing or non-finite value in column {table.columns[c]!r}, row {r + 1}; a design must be complete.")
    return table.astype(np.float64)
