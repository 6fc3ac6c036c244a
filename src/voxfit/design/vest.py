"""FSL's VEST text files, as randomise and PALM take them: ``design.mat``, ``design.con``, ``design.fts``,
``design.grp``.

Each is a header of ``/Key value`` lines and a ``/Matrix`` section of whitespace-separated numbers. ``.con``
files name their contrasts with ``/ContrastName<k>``; ``.fts`` rows select t contrasts (columns) that form
an F test; ``.grp`` gives each row's exchangeability block (FSL randomise ``-e``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..io.checks import check_readable
from ..exceptions import InputError

__all__ = ["plain_float", "read_vest", "read_contrasts", "read_ftests", "read_groups", "write_vest"]


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eEdD][-+]?\d+)?|[-+]?(nan|inf|infinity)", re.IGNORECASE)


def plain_matrix(text: str) -> NDArray[np.float64] | None:
    """The matrix of a text of numbers separated by spaces, tabs or commas (Fortran's 1.0D0 too), one row a line
    and no header, as FSL's Text2Vest and PALM take it; None where any cell is not a number, or rows differ in
    length."""
    lines = [re.split(r"[\s,]+", line.strip()) for line in text.splitlines() if line.strip()]
    if not lines or not all(_NUMBER.fullmatch(cell) for line in lines for cell in line):
        return None
    if len({len(line) for line in lines}) != 1:
        return None
    return np.array([[float(c.replace("D", "E").replace("d", "e")) for c in line] for line in lines], dtype=np.float64)


def read_vest(path, what: str = "VEST file") -> tuple[dict[str, str], NDArray[np.float64]]:
    """``(header, matrix)`` of a VEST file; the header maps keys (``NumWaves``, ``ContrastName1``...) to text."""
    path = Path(path)
    check_readable(path, what)  # (missing, a folder, a pipe or a device: said so)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InputError.from_os_error(exc, path, what) from None
    if b"\0" in content:
        raise InputError(f"{what} {path}: not a text file (is it an FSL VEST file?).")
    try:
        lines = content.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:  # (a contrast named in Latin-1, as older editors and FSL's GUI wrote accents)
        lines = content.decode("latin-1").splitlines()
    header: dict[str, str] = {}
    rows: list[list[float]] = []
    in_matrix = False
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("/Matrix"):
            in_matrix = True
        elif text.startswith("/") and not in_matrix:
            key, *value = text[1:].split(None, 1)  # FSL separates with a tab, others with spaces
            header[key.strip()] = value[0].strip() if value else ""
        elif in_matrix:
            try:
                rows.append([plain_float(v) for v in text.split()])
            except ValueError:
                raise InputError(
                    f"{what} {path}, line {number}: non-numeric value in the /Matrix section: {text!r}."
                ) from None
    if not rows:
        raise InputError(f"{what} {path}: no /Matrix section with values (is it an FSL VEST file?).")
    if len({len(r) for r in rows}) > 1:
        raise InputError(f"{what} {path}: the /Matrix rows have different numbers of values.")
    matrix = np.array(rows)
    if not np.isfinite(matrix).all():
        raise InputError(f"{what} {path}: the /Matrix section holds non-finite values.")
    for key, axis in (("NumWaves", 1), ("NumPoints", 0), ("NumContrasts", 0)):
        if key not in header:
            continue
        said = header[key].split()[0] if header[key].split() else ""
        if not said.isdigit():  # (-2, "two", 3.0: not a count)
            raise InputError(
                f"{what} {path}: /{key} says {said or 'nothing'}, not a whole number ({key} is a count: the /Matrix "
                f"has {matrix.shape[axis]} {'columns' if axis else 'rows'})."
            )
        if int(said) != matrix.shape[axis]:
            raise InputError(
                f"{what} {path}: /{key} says {said} but the /Matrix has {matrix.shape[axis]} "
                f"{'columns' if axis else 'rows'}."
            )
    return header, matrix


def plain_float(text: str) -> float:
    """A number as a table or VEST file writes one; ValueError for what Python's float reads beyond that: 0.7_5
    (0.75 to Python, a typo in a design)."""
    if "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def read_contrasts(path, n_columns: int | None = None) -> list[tuple[str, NDArray[np.float64]]]:
    """A ``design.con``: ``[(name, weights), ...]`` in file order (names from ``/ContrastName<k>``, else
    ``C<k>``); `n_columns` checks the weights against the design."""
    header, C = read_vest(path, "contrasts")
    if n_columns is not None and C.shape[1] != n_columns:
        raise InputError(f"contrasts {path}: {C.shape[1]} weights per contrast but the design has {n_columns} columns.")
    names = [header.get(f"ContrastName{k + 1}", "").strip() or f"C{k + 1}" for k in range(C.shape[0])]
    zero = [f"{k + 1} ({name})" for k, name in enumerate(names) if not np.any(C[k])]
    if zero:
        raise InputError(
            f"contrasts {path}: contrast {', '.join(zero)} weighs no column (a row of zeros); give it weights, or "
            "leave it out of the file."
        )
    return list(zip(names, C))


def read_ftests(path, n_contrasts: int) -> list[NDArray[np.intp]]:
    """A ``design.fts``: for each F test, the indices of the t contrasts it joins."""
    _, F = read_vest(path, "F tests")
    if F.shape[1] != n_contrasts:
        raise InputError(f"F tests {path}: {F.shape[1]} columns but the .con file has {n_contrasts} contrasts.")
    if not np.isin(F, (0, 1)).all():
        raise InputError(f"F tests {path}: entries must be 0 or 1 (whether each t contrast joins the F test).")
    tests = [np.flatnonzero(row) for row in F]
    if any(t.size == 0 for t in tests):
        raise InputError(f"F tests {path}: every F test must select at least one contrast.")
    return tests


def read_groups(path, n_rows: int) -> NDArray[np.int64]:
    """A ``design.grp``: one exchangeability block label per row of the design (integers); in FSL's VEST form or a
    plain column of numbers (PALM's and Text2Vest's input: refused before, "no /Matrix section")."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        text = ""  # (read_vest says what is wrong with it)
    plain = None if text.lstrip().startswith("/") else plain_matrix(text)
    if plain is None and text.strip() and not text.lstrip().startswith("/"):
        raise InputError(
            f"exchangeability blocks {path}: neither a column of numbers (one block number a line) nor FSL's VEST "
            "form (/NumWaves 1, /NumPoints, /Matrix); write one block number per map, a line each."
        )
    G = plain if plain is not None else read_vest(path, "exchangeability blocks")[1]
    if G.shape != (n_rows, 1):
        raise InputError(
            f"exchangeability blocks {path}: need one value per row of the design ({n_rows}); got shape {G.shape}."
        )
    if not np.all(G == np.round(G)):
        raise InputError(f"exchangeability blocks {path}: block labels must be integers.")
    if np.abs(G).max() > np.iinfo(np.int32).max:  # (FSL reads them as int; 1e20 became -2^63 here)
        raise InputError(
            f"exchangeability blocks {path}: a block label of {np.abs(G).max():g} is not an integer FSL reads (at "
            f"most {np.iinfo(np.int32).max:,} in size); number the groups 1, 2, ..."
        )
    return G[:, 0].astype(np.int64)


def write_vest(path, matrix: NDArray, header: dict[str, str] | None = None, rows_key: str = "NumPoints") -> None:
    """Write a VEST file (``/NumWaves``, ``/NumPoints`` (``/NumContrasts`` for .con and .fts) and any extra
    header lines, then ``/Matrix``)."""
    M = np.atleast_2d(np.asarray(matrix, dtype=float))
    lines = [f"/NumWaves {M.shape[1]}", f"/{rows_key} {M.shape[0]}"]
    lines += [f"/{k} {v}" for k, v in (header or {}).items()]
    lines.append("/Matrix")
    lines += [" ".join(repr(float(v)) for v in row) for row in M]
    Path(path).write_text("\n".join(lines) + "\n")
