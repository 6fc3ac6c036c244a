"""First-level designs from events, with SPM's microtime conventions reproduced exactly.

SPM12 (spm_get_ons.m, spm_fMRI_design.m) builds each condition's regressor on a grid of ``T`` bins per
scan (``dt = TR / T``; SPM's fMRI_T, default 16): an event at onset ``o`` seconds and duration ``d``
seconds starts at bin ``round(o / dt) + 33`` and ends ``round(d / dt) + 1`` bins later (MATLAB's
rounding, half away from zero; a 32-bin lead-in), with height 1, or ``1 / dt`` when every event of the
condition has zero duration; the stimulus function is convolved with the basis set and read out at bin
``(i * T + T0 + 32)`` for scan i, T0 being SPM's fMRI_T0 (1-based: T0 = 1 reads at the start of each scan,
T0 = T/2 + 1 in its middle); a trial type's columns are then orthogonalised in order (spm_orth), so a
derivative is orthogonal to its HRF regressor at the scan times.
nilearn's ``slice_time_ref`` s is the same as ``T0 = 1 + s * T``.

Parametric modulators are SPM's (spm_get_ons.m, spm_fMRI_design.m): a condition with modulator values P and
polynomial order h has the event-by-event inputs ``[1, P, P^2, ..., P^h]`` (one row per event, several
modulators one after another), serially orthogonalised across its events (spm_orth: P^1 is centred, P^2
orthogonal to 1 and P, ...), each column made into a stimulus function and convolved with every basis
function; all the condition's columns (condition and modulators, every basis function, in that order) are
then orthogonalised in order at the scan times. The columns are named ``<condition>x<modulator>^<order>``,
as SPM names them, with the basis function's suffix. Onsets and durations are in seconds, or in scans with
``units="scans"`` (SPM's UNITS: 0-based scan indices, ``onset * TR`` seconds).

``convolution="nilearn"`` builds the regressors nilearn's way instead (``make_first_level_design_matrix``,
0.10-0.14): a grid 50 times finer than the TR starting 24 s before the first scan, events as boxcars of
height `modulation` (zero durations one fine step long), nilearn's sampled HRFs, and linear interpolation
at the scan times ``(i + slice_time_ref) * TR``; conditions in sorted order and FIR columns named
``<condition>_delay_<k>``, as nilearn has them. Use it to reproduce a nilearn analysis; SPM's grid is the
default.
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import io
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import is_dataframe, type_name
from .._checks import check_scalar, is_number, repeated
from .._memory import check_memory
from ..io.checks import check_readable
from ..exceptions import DesignWarning, InputError
from .hrf import HRF_MODELS, basis_set, nilearn_kernels, spm_orth
from .read import MISSING_CELLS, frame_table

__all__ = [
    "Design",
    "cosine_drift",
    "make_design",
    "parse_high_pass",
    "parse_modulators",
    "polynomial_drift",
    "read_confounds",
    "read_events",
    "variance_inflation",
]


@dataclass(frozen=True, eq=False)
class Design:
    """A first-level design: the matrix, its column names, what each column is, and how it was built."""

    X: NDArray[np.float64]
    names: tuple[str, ...]
    kinds: tuple[str, ...]  # "condition", "modulator", "derivative", "drift", "confound", "constant"
    tr: float
    settings: dict = field(default_factory=dict)

    def check(self, max_vif: float = 10.0) -> dict:
        """Rank, condition number (columns scaled to unit norm) and VIFs; warns for VIF above `max_vif`."""
        scaled = self.X / np.linalg.norm(self.X, axis=0).clip(min=1e-300)
        sv = np.linalg.svd(scaled, compute_uv=False)
        rank = int(np.sum(sv > sv[0] * max(self.X.shape) * np.finfo(float).eps))
        vif = self.variance_inflation()
        high = [(name, value) for name, value in vif.items() if value > max_vif]
        for name, value in high[:MAX_VIF_WARNINGS]:
            warnings.warn(
                f"regressor {name!r} has a variance inflation factor of {value:.1f} (> {max_vif:g}): other columns "
                "explain most of it, so contrasts on it are barely estimable.",
                DesignWarning,
                stacklevel=2,
            )
        if len(high) > MAX_VIF_WARNINGS:  # (one line each made 2,000 lines of 2,000 trial types; a tester's)
            warnings.warn(
                f"{len(high) - MAX_VIF_WARNINGS} more regressors have variance inflation factors above {max_vif:g}"
                + (f": the design has more columns ({self.X.shape[1]}) than scans ({self.X.shape[0]})"
                   if self.X.shape[1] > self.X.shape[0] else "") + ".",
                DesignWarning,
                stacklevel=2,
            )  # fmt: skip
        return {"rank": rank, "n_columns": self.X.shape[1], "condition_number": float(sv[0] / sv[rank - 1]), "vif": vif}

    def write(self, path, sidecar=True) -> None:
        """Write the design as TSV with a header of column names, and beside it (``design.tsv`` ->
        ``design.json``; or at `sidecar`, a path) each column's kind and the TR (see ``voxfit.design.kinds``),
        so that the kinds survive a design file."""
        from .kinds import sidecar_path, write_sidecar
        from .read import write_design

        write_design(path, self.X, self.names)
        if sidecar:
            write_sidecar(sidecar_path(path) if sidecar is True else sidecar, self.names, self.kinds, self.tr)

    @property
    def conditions(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kinds) if k == "condition"]

    def variance_inflation(self) -> dict[str, float]:
        """VIF of each regressor of interest (conditions, modulators, derivatives); see :func:`variance_inflation`."""
        columns = [j for j, kind in enumerate(self.kinds) if kind in ("condition", "modulator", "derivative")]
        return variance_inflation(self.X, self.names, columns)


MAX_VIF_WARNINGS = 10  # regressors named one a line in Design.check's warnings; the others in one line


def variance_inflation(X: NDArray, names, columns) -> dict[str, float]:
    """VIF of each column j in `columns`: 1 / (1 - R^2) of column j regressed on all the others (inf when they
    explain it entirely), R^2 about the column's mean where the others span a constant, else about zero: cell
    means without an intercept (group.control, group.patient) had VIFs of 0.5, where a VIF is at least 1.

    A design of full column rank with a constant column takes every VIF from one inverse (:func:`_vif_at_once`):
    a regression per column cost O(n k^3) for k columns, 83 s for 2,000 trial types; the others, one regression
    per column; more columns than scans, inf for each (the others span every column)."""
    columns = list(columns)
    if X.shape[1] > X.shape[0]:
        return {names[j]: math.inf for j in columns}
    if (at_once := _vif_at_once(X, columns)) is not None:
        return {names[j]: v for j, v in zip(columns, at_once)}
    out = {}
    ones = np.ones(X.shape[0])
    for j in columns:
        others = np.delete(X, j, axis=1)
        coef, *_ = np.linalg.lstsq(others, X[:, j], rcond=None)
        resid = X[:, j] - others @ coef
        spans, *_ = np.linalg.lstsq(others, ones, rcond=None) if others.shape[1] else (np.zeros(0),)
        constant = others.shape[1] > 0 and np.allclose(others @ spans, ones, atol=1e-8)
        about = X[:, j] - X[:, j].mean() if constant else X[:, j]
        denom = float(resid @ resid)
        out[names[j]] = float(about @ about) / denom if denom > 0 else math.inf
    return out


def _vif_at_once(X: NDArray, columns: list[int]) -> NDArray | None:
    """The VIFs of `columns` from ``inv(X'X)``'s diagonal (a column's residual sum of squares on the others is
    ``1 / inv(X'X)_jj``), by a QR of X with unit-norm columns; None where X has no constant column other than those
    (R^2 is about the mean only where the others span a constant) or is near rank-deficient (said exactly by the
    regressions, inf or not)."""
    norms = np.linalg.norm(X, axis=0)
    constant = np.flatnonzero((np.ptp(X, axis=0) == 0) & (norms > 0))
    if not (norms > 0).all() or constant.size != 1 or constant[0] in columns:
        return None
    R = np.linalg.qr(X / norms, mode="r")
    d = np.abs(np.diag(R))
    if d.min() <= 1e-8 * d.max():
        return None
    R_inv = np.linalg.solve(R, np.eye(R.shape[0]))
    diag = np.einsum("ij,ij->i", R_inv, R_inv)[columns]  # inv(X'X)_jj of the scaled columns
    centred = X[:, columns] - X[:, columns].mean(axis=0)
    return np.einsum("tj,tj->j", centred, centred) / norms[columns] ** 2 * diag


def _matlab_round(x: NDArray) -> NDArray[np.int64]:
    """MATLAB's round: halves away from zero (numpy rounds them to even)."""
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def parse_high_pass(value) -> float:
    """High-pass cutoff as a period in seconds: ``128`` (SPM's seconds; ``"128s"``, ``1.28e2`` alike) or
    ``"0.008Hz"`` (nilearn's frequency). A period longer than the run gives no cosine (as in SPM); zero, a negative,
    an infinite or a missing number is refused, pointing to ``drift="none"`` for no high-pass filter at all."""
    text = str(value).strip()
    m = re.fullmatch(r"(.*?)\s*(hz|s)?", text, re.IGNORECASE) if not isinstance(value, bool) else None
    try:
        number = float(m.group(1)) if m is not None else math.nan
    except ValueError:
        number = math.nan
    if math.isnan(number):
        raise InputError(f"`high_pass` must be a period in seconds (128) or a frequency (0.008Hz); got {value!r}.")
    period = 1.0 / number if (m.group(2) or "").lower() == "hz" and number else number
    if not 0 < number < math.inf or not period < math.inf:
        raise InputError(
            f"`high_pass` must be a positive, finite period in seconds (128) or frequency (0.008Hz); got {value!r}. "
            "For no high-pass filter, give --drift none (voxfit fit, design) or a period longer than the run."
        )
    return period


def check_high_pass(period: float, tr: float) -> float:
    """The high-pass period (s), refused when shorter than two scans: above the Nyquist frequency, its cosines
    would take out every frequency of the run (no signal, no degrees of freedom left)."""
    if period < 2 * tr and tr >= 100:  # (a TR in milliseconds, said as a high-pass too short: a tester's)
        raise InputError(
            f"a repetition time of {tr:g} s: repetition times are in seconds (--tr, BIDS' RepetitionTime), and "
            f"{tr:g} looks like milliseconds: give {tr / 1000:g}."
        )
    if period < 2 * tr:
        raise InputError(
            f"the high-pass period {period:g} s ({1 / period:g} Hz) is shorter than two scans ({2 * tr:g} s: "
            f"the Nyquist frequency, {1 / (2 * tr):g} Hz, at TR {tr:g} s): it would take out every frequency of "
            "the run; give a longer period (SPM's 128 s, or a frequency such as 0.008Hz)."
        )
    return period


def cosine_drift(n_scans: int, tr: float, period: float, order: int | None = None) -> NDArray[np.float64]:
    """SPM's discrete cosine high-pass set (spm_filter/spm_dctmtx) without the constant: floor(2 n TR / period)
    columns (or `order`: :func:`cosine_order`), at most n - 1 (a period of at least two scans:
    :func:`check_high_pass`)."""
    check_high_pass(period, tr)
    if order is None:
        order = min(int(math.floor(2 * n_scans * tr / period)), n_scans - 1)  # beyond n - 1 the DCT repeats itself
    k = np.arange(1, order + 1)
    i = np.arange(n_scans)[:, None]
    return np.sqrt(2.0 / n_scans) * np.cos(np.pi * (2 * i + 1) * k / (2 * n_scans))


def cosine_order(n_scans: int, tr: float, high_pass, slice_time_ref: float | None = None) -> int:
    """The number of cosines of :func:`cosine_drift`: SPM's floor(2 n TR / period), at most n - 1; with
    `slice_time_ref` (nilearn's convolution), nilearn's own floor(2 n f dt), f the cutoff in Hz as given and dt
    from its frame times: the two differ by one where 2 n TR f is a whole number (TR 0.8 s, 375 scans, 0.01 Hz:
    5 cosines in nilearn, 6 by the period), as floating point lands either side of it."""
    if slice_time_ref is None:
        return min(int(math.floor(2 * n_scans * tr / parse_high_pass(high_pass))), n_scans - 1)
    text = str(high_pass).strip().lower()
    hz = float(text[:-2]) if text.endswith("hz") else 1.0 / parse_high_pass(high_pass)
    frames = (np.arange(n_scans) + slice_time_ref) * tr
    dt = (frames[-1] - frames[0]) / (n_scans - 1)
    return int(min(n_scans - 1, int(np.floor(2 * n_scans * hz * dt))))


def polynomial_drift(n_scans: int, order: int, slice_time_ref: float = 0.0) -> NDArray[np.float64]:
    """Powers 1..order of scan time scaled to [0, 1] (nilearn's: frame times, shifted by `slice_time_ref` of a
    scan, over the last one's), each orthogonalised against the lower ones and the constant (Gram-Schmidt without
    normalisation): the same columns as nilearn's polynomial drift."""
    t = (np.arange(n_scans) + slice_time_ref) / max(n_scans - 1 + slice_time_ref, 1)
    return spm_orth(np.vander(t, order + 1, increasing=True))[:, 1:]


_EVENTS_EXPECTED = (
    "voxfit reads a BIDS events file: tab-separated text with a header line naming onset and duration "
    "(and optionally trial_type, modulation and numeric modulator columns), one event a line"
)
_RESERVED = ("onset", "duration", "trial_type")


def parse_modulators(value) -> dict[str, int]:
    """Parametric modulators as ``{column: polynomial order}`` from ``"rt:1,difficulty:2"`` (an order may be left
    out: ``"rt"`` is ``rt:1``), a mapping, or a list of column names; None or empty: none."""
    if value is None:
        return {}
    if isinstance(value, str):
        items = []
        for part in (x.strip() for x in value.split(",")):
            if not part:
                continue
            name, _, order = part.partition(":")
            items.append((name.strip(), order.strip() or "1"))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        items = [(name, 1) for name in value]
    out: dict[str, int] = {}
    for name, order in items:
        try:
            k = int(order) if not isinstance(order, (bool, float)) else None
        except (TypeError, ValueError):
            k = None
        if not isinstance(name, str) or not name or k is None or k < 1:
            raise InputError(
                f"`modulators` must name events columns with polynomial orders 1, 2, ..., as "
                f'"rt:1,difficulty:2"; got {name!s}:{order!s}.'
            )
        if name in _RESERVED:
            raise InputError(f"`modulators`: {name!r} is an events column of its own, not a modulator.")
        if name in out:
            raise InputError(f"`modulators` names {name!r} twice.")
        out[name] = k
    return out


EVENTS_FRAME = "a pandas DataFrame (onset, duration[, trial_type, modulation, modulators])"
EVENTS_ACCEPTED = f"a path to a BIDS events.tsv, {EVENTS_FRAME} or a {{condition: {{onset, duration}}}} dict"


def _value(cell) -> float:
    """A table cell as a float: a number as it is, text parsed (ValueError if it is not a number)."""
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool):
        return float(cell)
    if isinstance(cell, str):
        return float(cell.strip())
    raise ValueError(cell)


def _refuse_fsl_ev(header: list[str], where: str) -> None:
    """Refuse a header line of numbers in FSL's 3-column EV format (onset, duration, height; no header line),
    separated by tabs or, as FSL writes them, spaces (said to be "not tab-separated": a tester's)."""
    cells = header[0].split() if len(header) == 1 else header
    if len(cells) == 3 and all(is_number(c) for c in cells) and "onset" not in cells:
        raise InputError(
            f"{where} is FSL's 3-column format (onset, duration, height; one file per condition, no header line): "
            "give one BIDS events.tsv of the run, a header line 'onset<TAB>duration<TAB>trial_type' and a line per "
            "event naming its condition (its height, where not 1, in a modulation column)."
        )


def _text(cell) -> str:
    return cell.strip() if isinstance(cell, str) else str(cell)


def _missing(cell) -> bool:
    return isinstance(cell, str) and cell.strip().lower() in ("", "n/a")


def _tsv_file(path: Path, what: str, expected: str, header_check=None) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a TSV (`what`: "events", "confounds"); anything else (a CSV, a spreadsheet, an
    SPM.mat, an image) refused in one line saying what is `expected`, after ``header_check(header)`` has said what
    it knows of a header line (a format of its own)."""
    check_readable(path, what, table=True)  # (missing, a folder, a pipe or a device: said so)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError.from_os_error(exc, path, what) from None
    if b"\0" in raw[:65536]:
        raise InputError(f"{what} {path} is not a text table (a binary file such as .mat or .xlsx?); {expected}.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {exc.start + 1}: a binary file, or a table saved "
            f"in another encoding?); {expected}."
        ) from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t") if r]
    except csv.Error as exc:
        raise InputError(f"{what} {path} is not a readable table ({exc}); {expected}.") from None
    if not rows:
        raise InputError(f"{what} {path} is empty; {expected}.")
    header = [h.strip() for h in rows[0]]
    if header_check is not None:
        header_check(header)
    if len(header) == 1 and any(sep in header[0] for sep in (",", ";", " ")):
        raise InputError(f"{what} {path} is not tab-separated (a CSV, or spaces?); {expected}.")
    return header, rows[1:]


_CONFOUNDS_EXPECTED = (
    "voxfit reads an fMRIPrep-style confounds file: tab-separated text with a header line of "
    "column names and one row per scan"
)


def read_events(path, modulators=()) -> dict[str, dict[str, NDArray]]:
    """BIDS events: onset, duration, trial_type (optional, default 'trial'), modulation (optional; n/a: NaN, see
    :func:`make_design`)
    and the numeric columns named in `modulators` (n/a or empty cells are NaN: an event without a value), from
    an events.tsv or a pandas DataFrame with those columns (the same rules for both).

    Anything else (a CSV, a spreadsheet, an SPM.mat, a table without onset and duration) is refused with an
    :class:`InputError` saying what is expected.
    """
    wanted = list(parse_modulators(modulators))
    if is_dataframe(path):
        where, first_line, what = "events DataFrame", 0, "row"
        header, body = frame_table(path)
        _refuse_fsl_ev(header, where)  # (a DataFrame read without a header line)
    elif isinstance(path, (str, Path)):
        path = Path(path)
        where, first_line, what = f"events {path}", 2, "line"
        header, body = _tsv_file(path, "events", _EVENTS_EXPECTED, lambda h: _refuse_fsl_ev(h, where))
    else:
        raise InputError(f"`events` must be a path to a BIDS events.tsv or {EVENTS_FRAME}; got {type_name(path)}.")
    for needed in ("onset", "duration"):
        if needed not in header:
            raise InputError(f"{where} has no {needed!r} column (columns: {', '.join(header)}); {_EVENTS_EXPECTED}.")
    for name in wanted:
        if name not in header:
            close = [h for h in header if h.lower() == name.lower()] or difflib.get_close_matches(
                name, header, n=3, cutoff=0.6
            )
            hint = f"; similar columns: {', '.join(close)}" if close else f" (columns: {', '.join(header)})"
            raise InputError(f"{where} has no column {name!r} for the modulator{hint}.")
    col = {name: i for i, name in enumerate(header)}
    conditions: dict[str, dict[str, list]] = {}
    seen, repeated = set(), []  # (trial type, onset, duration) of the events, and the rows that repeat one
    spelled: dict[str, set] = {}  # each trial type's spellings in the file (spaces around it)
    for r, row in enumerate(body, start=first_line):
        if len(row) != len(header):
            raise InputError(f"{where}, {what} {r}: {len(row)} values for {len(header)} columns.")
        trial = _text(row[col["trial_type"]]) if "trial_type" in col else "trial"
        if trial in ("", "n/a"):
            raise InputError(
                f"{where}, {what} {r}: trial_type is {'n/a' if trial else 'empty'}: give the event its condition, or "
                "leave its line out (BIDS Stats Models leave such an event out of every trial type's regressor)."
            )
        if "trial_type" in col:
            spelled.setdefault(trial, set()).add(str(row[col["trial_type"]]))
        values = {}
        for key, default in (("onset", None), ("duration", None), ("modulation", 1.0)):
            cell = row[col[key]] if key in col else default
            if key == "modulation" and isinstance(cell, str) and cell.strip().lower() in ("", "n/a"):
                values[key] = math.nan  # (no height given: make_design decides, as each convolution's tool does)
                continue
            try:
                values[key] = _value(cell)
            except ValueError:
                unknown = " (BIDS's n/a, an unknown duration: give 0 for an impulse, as SPM and nilearn model one)"
                said = unknown if key == "duration" and _text(cell).lower() == "n/a" else ""
                raise InputError(f"{where}, {what} {r}: {key} {_text(cell)!r} is not a number{said}.") from None
            if not math.isfinite(values[key]):
                raise InputError(f"{where}, {what} {r}: {key} must be finite.")
        if values["duration"] < 0:
            raise InputError(f"{where}, {what} {r}: duration {values['duration']} is negative.")
        for name in wanted:
            cell = row[col[name]]
            try:
                values[name] = math.nan if _missing(cell) else _value(cell)
            except ValueError:
                raise InputError(f"{where}, {what} {r}: modulator {name} {_text(cell)!r} is not a number.") from None
            if not (math.isfinite(values[name]) or _missing(cell)):
                raise InputError(f"{where}, {what} {r}: modulator {name} must be a finite number or n/a.")
        cond = conditions.setdefault(trial, {k: [] for k in ("onset", "duration", "modulation", *wanted)})
        for key in cond:
            cond[key].append(values[key])
        key = (trial, values["onset"], values["duration"])
        if key in seen:
            repeated.append(r)
        seen.add(key)
    if not conditions:
        raise InputError(f"{where} lists no event.")
    merged = next(((t, sorted(v)) for t, v in spelled.items() if len(v) > 1), None)
    if merged is not None:  # (a typo's space, as a rule; nilearn keeps them apart)
        warnings.warn(
            f"{where}: the trial types {', '.join(map(repr, merged[1]))} differ only by spaces around them; they are "
            f"read as one, {merged[0]!r} (nilearn keeps them apart): check the file if they are not one.",
            DesignWarning,
            stacklevel=2,
        )
    cased: dict[str, list[str]] = {}
    for trial in conditions:
        cased.setdefault(trial.casefold(), []).append(trial)
    if two := next((sorted(names) for names in cased.values() if len(names) > 1), None):  # (a typo's capital)
        warnings.warn(
            f"{where}: the trial types {', '.join(map(repr, two))} differ only in case; they are kept apart, as SPM "
            "and nilearn keep them, each a condition of its own: check the file if they are one.",
            DesignWarning,
            stacklevel=2,
        )
    if repeated:  # (an events log exported twice: summed without a word, where nilearn warns)
        warnings.warn(
            f"{where}: {len(repeated)} event(s) repeat another's trial type, onset and duration (the first at "
            f"{what} {repeated[0]}); their regressors are summed, as SPM and nilearn do: check for rows given twice.",
            DesignWarning,
            stacklevel=2,
        )
    return {name: {k: np.array(v) for k, v in c.items()} for name, c in conditions.items()}


# the motion parameters SPM's realignment (rp_*.txt) and FSL's MCFLIRT (.par) write, six columns without a header,
# in fMRIPrep's names: SPM's translations (mm) then rotations (radians) about x, y and z; MCFLIRT's rotations first
MOTION_FILES = {
    "spm": ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"),
    "fsl": ("rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"),
}


def motion_file(path) -> str | None:
    """Whose motion parameters file `path` is by its name ("spm": rp_*.txt, "fsl": *.par), or None."""
    name = Path(path).name.lower() if isinstance(path, (str, Path)) else ""
    return "spm" if name.startswith("rp_") and name.endswith(".txt") else "fsl" if name.endswith(".par") else None


def _motion_table(path: Path, whose: str) -> tuple[list[str], list[list[str]]]:
    """The six columns of a motion parameters file (:data:`MOTION_FILES`), named as fMRIPrep names them."""
    check_readable(path, "confounds", table=True)
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"confounds {path}: not a readable text file ({exc}).") from None
    bad = next((k for k, cells in enumerate(lines) if len(cells) != 6), None)
    if bad is not None:
        tool = "SPM realignment" if whose == "spm" else "MCFLIRT"
        raise InputError(
            f"confounds {path}: line {bad + 1} holds {len(lines[bad])} values; {tool} motion parameters are six a "
            "line (three translations and three rotations)."
        )
    return list(MOTION_FILES[whose]), lines


def read_confounds(path, columns: str | list[str], n_scans: int) -> tuple[NDArray[np.float64], list[str]]:
    """Columns of an fMRIPrep-style confounds TSV (or a pandas DataFrame of one), chosen by names or glob
    patterns (``"trans_*,rot_*"``); SPM's rp_*.txt and FSL's .par motion parameters (six columns, no header) are
    read with fMRIPrep's names (:data:`MOTION_FILES`).

    Policy for ``n/a`` (in a DataFrame: NaN or None): values missing at the start of a column (fMRIPrep's
    derivatives and framewise displacement have no value for the first scan) are set to 0; a missing value
    anywhere else is an error.
    """
    if is_dataframe(path):
        where = "confounds DataFrame"
        header, body = frame_table(path)
    elif isinstance(path, (str, Path)) and (whose := motion_file(path)) is not None:
        path = Path(path)
        header, body = _motion_table(path, whose)
        where = f"confounds {path}"
    elif isinstance(path, (str, Path)):
        path = Path(path)
        header, body = _tsv_file(path, "confounds", _CONFOUNDS_EXPECTED)
        where = f"confounds {path}"
        if all(is_number(h) for h in header):  # (a first row of numbers taken as names: "49 rows of 50")
            raise InputError(
                f"{where}: its first line holds numbers ({', '.join(header[:3])}{', ...' if len(header) > 3 else ''}), "
                "not column names; add a header line naming the columns (as trans_x, trans_y...), or name SPM's "
                "motion parameters rp_*.txt and FSL's *.par, which voxfit reads without one."
            )
    else:
        raise InputError(f"`confounds` must be a path to a confounds TSV or a pandas DataFrame; got {type_name(path)}.")
    if not body:
        raise InputError(f"{where} has no rows.")
    if isinstance(columns, str):
        patterns = [p.strip() for p in columns.split(",") if p.strip()]
    elif isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns):
        patterns = [p.strip() for p in columns if p.strip()]
    else:
        raise InputError(
            f"`confounds_columns` must be names or patterns (a string or a list of strings); got {type_name(columns)}."
        )
    chosen: list[str] = []
    for pattern in patterns:
        hits = [h for h in header if fnmatch.fnmatchcase(h, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, header, n=5, cutoff=0.6)
            hint = f"; similar columns: {', '.join(close)}" if close else ""
            raise InputError(f"{where}: no column matches {pattern!r}{hint}.")
        chosen += [h for h in hits if h not in chosen]
    if len(body) != n_scans:
        raise InputError(f"{where} has {len(body)} rows but the run has {n_scans} scans.")
    X = np.empty((n_scans, len(chosen)))
    for j, name in enumerate(chosen):
        c = header.index(name)
        leading = True
        for i, row in enumerate(body):
            cell = row[c] if c < len(row) else ""
            if isinstance(cell, str) and cell.strip().lower() in MISSING_CELLS:
                if not leading:
                    raise InputError(
                        f"{where}: column {name!r} has a missing value at row {i + 1}; only leading n/a are allowed."
                    )
                X[i, j] = 0.0
                continue
            leading = False
            try:
                X[i, j] = _value(cell)
            except ValueError:
                raise InputError(f"{where}: column {name!r}, row {i + 1}: {_text(cell)!r} is not a number.") from None
            if not math.isfinite(X[i, j]):  # (a design's SVD then fails to converge)
                raise InputError(f"{where}: column {name!r}, row {i + 1}: {_text(cell)!r} is not a finite number.")
        if leading:
            raise InputError(f"{where}: column {name!r} holds no value (n/a in every row); leave it out.")
    return X, chosen


def _unmodulated(conditions: dict, modulators, convolution: str) -> dict:
    """The events whose modulation is n/a, given a height: 1 (an event of no other height) with SPM's convolution,
    0 with nilearn's, as nilearn's design sums the heights of each trial type's events with pandas, to which NaN
    is nothing (the event is left out); said, as the two tools differ."""
    if "modulation" in modulators:  # (a parametric modulator: n/a is a missing value of it)
        return conditions
    height = 0.0 if convolution == "nilearn" else 1.0
    missing = {name: int(np.isnan(ev["modulation"]).sum()) for name, ev in conditions.items()}
    if not any(missing.values()):
        return conditions
    named = ", ".join(f"{k} of {name!r}" for name, k in missing.items() if k)
    warnings.warn(
        f"the events' modulation is n/a for {named}: taken as {height:g} ("
        + (
            "left out, as nilearn's design sums heights without them"
            if height == 0
            else "an event of height 1; nilearn's convolution leaves such events out"
        )
        + ").",
        DesignWarning,
        stacklevel=3,
    )
    return {
        name: {**ev, "modulation": np.where(np.isnan(ev["modulation"]), height, ev["modulation"])}
        for name, ev in conditions.items()
    }


def _check_events(events: dict, modulators=()) -> dict:
    """Events given as a dict: finite onsets and modulations, finite non-negative durations, one length each;
    the arrays of the modulators named in `modulators` (NaN: no value) where a condition has them."""
    if not isinstance(events, dict) or not events or not all(isinstance(ev, dict) for ev in events.values()):
        got = type_name(events) if not isinstance(events, dict) else "a dict that is not {condition: {onset, duration}}"
        raise InputError(f"`events` must be {EVENTS_ACCEPTED}; got {got}.")
    checked = {}
    for name, ev in events.items():
        onset = np.atleast_1d(np.asarray(ev.get("onset", []), dtype=float))
        duration = np.atleast_1d(np.asarray(ev.get("duration", np.zeros_like(onset)), dtype=float))
        modulation = np.atleast_1d(np.asarray(ev.get("modulation", np.ones_like(onset)), dtype=float))
        if not (onset.size and onset.size == duration.size == modulation.size):
            raise InputError(f"events of {name!r}: onset, duration and modulation need one value per event.")
        if not np.isfinite(onset).all():
            raise InputError(f"events of {name!r}: onsets must be finite numbers (seconds from the run's start).")
        if not np.isfinite(duration).all():  # (BIDS allows n/a where the duration is unknown; a regressor needs one)
            at = onset[~np.isfinite(duration)][0]
            raise InputError(
                f"events of {name!r}: the event at onset {at:g} s has no duration (n/a, or not finite); give each "
                "event's duration in seconds (0 for an impulse)."
            )
        if (duration < 0).any():
            raise InputError(f"events of {name!r}: durations must not be negative.")
        checked[str(name)] = {"onset": onset, "duration": duration, "modulation": modulation}
        for mod in modulators:
            if mod in ev:
                try:
                    values = np.atleast_1d(np.asarray(ev[mod], dtype=float))
                except (TypeError, ValueError):
                    raise InputError(f"events of {name!r}: modulator {mod!r} must be numbers.") from None
                if values.shape != onset.shape or np.isinf(values).any():
                    raise InputError(
                        f"events of {name!r}: modulator {mod!r} needs one finite value (or NaN) per event."
                    )
                checked[str(name)][mod] = values
        if "modulation" not in modulators and not np.isfinite(modulation).all():
            raise InputError(f"events of {name!r}: modulations must be finite numbers.")
    return checked


def _parametric(conditions: dict, modulators: dict[str, int]) -> dict:
    """Each condition's event-by-event inputs, SPM's ``u`` (spm_get_ons): ``(u (n_events, k), name suffixes)``.

    Without modulators u is the events' heights (`modulation`, nilearn's amplitude modulation). With them it is
    ``[1, P1, P1^2, .., P2, ..]``, serially orthogonalised across the events (spm_orth), names ``x<mod>^<order>``.
    A condition whose events all lack a modulator (n/a) has no column for it; some lacking it is an error.
    """
    found = dict.fromkeys(modulators, False)
    out = {}
    for name, ev in conditions.items():
        columns, suffixes = [], []
        for mod, order in modulators.items():
            values = ev.get(mod)
            if values is None or np.isnan(values).all():
                continue
            if np.isnan(values).any():
                raise InputError(
                    f"events of {name!r}: modulator {mod!r} has values for {int(np.isfinite(values).sum())} of "
                    f"{values.size} events; give it for every event of the condition, or for none (n/a)."
                )
            found[mod] = True
            for j in range(1, order + 1):
                columns.append(values**j)
                suffixes.append(f"x{mod}^{j}")
        if not columns:  # heights: the modulation column, unless it is a parametric modulator
            out[name] = ((np.ones_like(ev["onset"]) if "modulation" in modulators else ev["modulation"])[:, None], [""])
            continue
        if "modulation" not in modulators and (ev["modulation"] != 1).any():
            raise InputError(
                f"events of {name!r}: a modulation column (amplitudes, nilearn's) and parametric modulators "
                "(SPM's) cannot be combined; use one, or name modulation as a modulator."
            )
        u = spm_orth(np.column_stack([np.ones(ev["onset"].size), *columns]))
        for j, suffix in enumerate(suffixes, start=1):
            if not np.any(u[:, j]):
                mod, _, order = suffix[1:].rpartition("^")
                why = (
                    "is the same for every event"
                    if order == "1"
                    else f"to the power {order} is a combination of its lower powers"
                )
                fix = (
                    "give n/a for every event of this condition (no modulator there) or drop the modulator"
                    if order == "1"
                    else f"use order {int(order) - 1}"
                )
                raise InputError(
                    f"events of {name!r}: modulator {mod!r} {why} ({len(set(ev[mod].tolist()))} distinct "
                    f"values), so its column {name}{suffix} would be empty; {fix}."
                )
        out[name] = (u, ["", *suffixes])
    missing = [mod for mod, seen in found.items() if not seen]
    if missing:
        raise InputError(f"modulator {missing[0]!r} has no values in any condition (every event n/a).")
    return out


def _check_timing(conditions: dict, run_end: float, n_scans: int, tr: float) -> None:
    """Refuse a condition whose events all start after the run; warn for some that do."""
    for name, ev in conditions.items():
        late = int(np.count_nonzero(ev["onset"] >= run_end))
        where = f"the end of the run ({n_scans} scans x {tr:g} s = {run_end:g} s)"
        if late == ev["onset"].size:
            raise InputError(
                f"every event of {name!r} starts at or after {where}, so its regressor would be empty; check the "
                "events file belongs to this run, and the units of its onsets (BIDS: seconds; voxfit fit: --units)."
            )
        if late:
            warnings.warn(
                f"{late} of {ev['onset'].size} events of {name!r} start at or after {where}; they are left "
                "out of the design (check the events file belongs to this run, and the units of its onsets: BIDS' "
                "seconds, or voxfit fit --units scans).",
                DesignWarning,
                stacklevel=3,
            )


def _warn_before_lead_in(name: str, onsets, dt: float) -> None:
    """Warn of events that start before SPM's microtime grid, 32 bins (2 TR at SPM's 16 bins a scan) before the
    first scan: the part of each before it is left out (an impulse 6 s before a 2 s TR's first scan added nothing,
    silently: a tester's). SPM refuses such onsets; nilearn's convolution models them whole."""
    early = int(np.count_nonzero(_matlab_round(np.asarray(onsets) / dt) + 32 < 0))
    if early:
        warnings.warn(
            f"{early} of {np.size(onsets)} events of {name!r} start more than {32 * dt:g} s before the first scan "
            "(SPM's microtime grid begins there): what comes of them before it is left out of the design (SPM "
            "refuses such onsets; --convolution nilearn models them whole).",
            DesignWarning,
            stacklevel=4,
        )


def _stimulus(onsets, durations, amplitudes, dt: float, n_bins: int) -> NDArray[np.float64]:
    """spm_get_ons: the stimulus functions (n_bins, k) of one condition's inputs `amplitudes` (n_events, k) on the
    microtime grid (32-bin lead-in); one function (n_bins,) for heights (n_events,)."""
    if np.ndim(amplitudes) == 1:
        return _stimulus(onsets, durations, np.asarray(amplitudes)[:, None], dt, n_bins)[:, 0]
    u = np.array(amplitudes, dtype=float)
    if not np.any(durations):
        u /= dt  # events: unit area
    ton = _matlab_round(np.asarray(onsets) / dt) + 32  # 0-based; SPM's 1-based "+ 33"
    tof = _matlab_round(np.asarray(durations) / dt) + ton + 1
    ton, tof = np.maximum(ton, 0), np.maximum(tof, 0)
    sf = np.zeros((n_bins + 96, u.shape[1]))
    keep_on, keep_off = ton + 1 < sf.shape[0], tof + 1 < sf.shape[0]  # MATLAB: size(sf, 1) > ton(j)
    np.add.at(sf, ton[keep_on], u[keep_on])
    np.add.at(sf, tof[keep_off], -u[keep_off])
    return np.cumsum(sf, axis=0)[:n_bins]


def _check_design_memory(
    conditions, inputs, tr, n_scans, hrf, T, fir_delays, n_other, spm_grid=True, max_memory=None
) -> None:
    """Refuse, before building anything, a design whose microtime grid, kernels or matrix cannot fit `max_memory`
    (with the interpreter's share; None: the memory there is): `n_scans`, `tr`, the microtime resolution `T`
    (nilearn: its oversampling) and `fir_delays` are options, and their products (a 32 s HRF at tr / T seconds a
    bin, FIR kernels of fir_delays x T bins for each of fir_delays columns; SPM's spm_hrf samples its gammas on a
    grid T times finer still, 32 T^2 / tr points) grow faster than any one of them. The matrix is held in a few
    copies while it is checked (its SVD, the VIFs' QR): checked against the memory there is only, a design of
    30,000 scans at 4096 bins a scan took 10.5 GiB under --max-memory 400M (a tester's)."""
    n_basis = fir_delays if hrf == "fir" else 1 + hrf.count("+")
    n_inputs = sum(len(inputs[name][1]) if name in inputs else 1 for name in conditions) or 1
    kernel = max(32.0 * T / tr, (fir_delays * T) if hrf == "fir" else 0) + T  # bins of one basis function
    grid = n_scans * T + 32 + 24.0 * T / tr  # bins of one regressor before sampling (nilearn starts 24 s early)
    n_columns = n_inputs * n_basis + n_other + 1  # (n_other: confounds and drifts)
    nbytes = 8 * (kernel * n_basis + 2 * (grid + kernel) + grid * n_inputs + 5 * n_scans * n_columns)
    nbytes += 8 * 2 * n_columns * n_columns  # (the checks' k x k factors)
    if spm_grid and hrf != "fir":  # spm_hrf's fine grid: a few float64 temporaries of 32 T^2 / tr points
        nbytes = max(nbytes, 8 * 5 * (32.0 * T * T / tr + 1))
    check_memory(
        nbytes,
        f"the design ({n_scans:,} scans x {n_columns:,} columns at most, TR {tr:g} s, "
        f"{T} microtime bins a scan, {n_basis} basis function(s))",
        max_memory,
        "Check the number of scans, the TR, the microtime resolution, the drift and the FIR delays.",
        interpreter=True,
    )


def _check_hrf_sampled(kernels, tr: float, hrf: str) -> None:
    """Refuse a repetition time at which the HRF's kernels, sampled on the microtime grid and normalised, hold no
    finite value: no sample falls inside the response (a TR given in milliseconds: the design's SVD failed, exit 1)."""
    if all(np.isfinite(np.asarray(k, dtype=float)).all() for k in kernels):  # (FIR's: kernels of several lengths)
        return
    ms = f"; {tr:g} looks like milliseconds: give {tr / 1000:g}" if tr >= 100 else ""
    raise InputError(
        f"a repetition time of {tr:g} s samples the {hrf} HRF (32 s long) at no point of its response: repetition "
        f"times are in seconds (--tr, BIDS' RepetitionTime){ms}."
    )


def _spm_columns(conditions: dict, inputs: dict, tr: float, n_scans: int, hrf: str, T: int, T0: int, fir_delays: int):
    """Each condition's regressors on SPM's microtime grid: ``[(name, kind, column), ...]``, in SPM's order
    (each input of the condition, see :func:`_parametric`, convolved with each basis function)."""
    dt = tr / T
    n_bins = n_scans * T + 32
    with np.errstate(invalid="ignore", divide="ignore"):
        bf, suffixes = basis_set(hrf, dt, T, fir_order=fir_delays, fir_length=fir_delays * tr)
    _check_hrf_sampled(bf, tr, hrf)  # (SPM's HRF sampled every tr / T s: past tr ~ 512 s, no sample inside it)
    readout = np.arange(n_scans) * T + T0 + 31
    out = []
    for name, ev in conditions.items():
        u, input_names = inputs[name]
        _warn_before_lead_in(name, ev["onset"], dt)
        sf = _stimulus(ev["onset"], ev["duration"], u, dt, n_bins)
        sampled = np.column_stack(
            [np.convolve(sf[:, k], bf[:, b])[:n_bins][readout] for k in range(sf.shape[1]) for b in range(bf.shape[1])]
        )
        labels = [(k, b) for k in range(sf.shape[1]) for b in range(bf.shape[1])]
        for (k, b), col in zip(labels, spm_orth(sampled).T):  # within trial type, all inputs together, as SPM12
            kind = ("condition" if k == 0 else "modulator") if b == 0 or hrf == "fir" else "derivative"
            out.append((f"{name}{input_names[k]}{suffixes[b]}", kind, col))
    return out


def _nilearn_columns(
    conditions: dict,
    tr: float,
    n_scans: int,
    hrf: str,
    slice_time_ref: float,
    fir_delays: int,
    oversampling: int = 50,
    min_onset: float = -24.0,
):
    """Each condition's regressors as nilearn computes them: ``[(name, kind, column), ...]``."""
    frame_times = (np.arange(n_scans) + slice_time_ref) * tr
    first, last = frame_times[0], frame_times[-1]
    n_fine = int(
        np.rint(
            (n_scans - 1) / (last - first) * (last * (1 + 1 / (n_scans - 1)) - first - min_onset) * oversampling + 1
        )
    )
    grid = np.linspace(first + min_onset, last * (1 + 1 / (n_scans - 1)), n_fine)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernels, suffixes = nilearn_kernels(hrf, tr, oversampling, range(int(fir_delays)))
    _check_hrf_sampled(kernels, tr, hrf)  # (nilearn's, sampled every tr / 50 s)
    if hrf == "fir":
        suffixes = [f"_delay_{d}" for d in range(int(fir_delays))]  # nilearn's FIR names
    out = []
    for name, ev in sorted(conditions.items()):  # nilearn orders conditions by name
        onsets, durations, heights = ev["onset"], ev["duration"], ev["modulation"]
        if (onsets < first + min_onset).any():
            warnings.warn(
                f"events of {name!r} before {first + min_onset:g} s are moved to that time, the start of "
                "nilearn's grid, as nilearn does.",
                DesignWarning,
                stacklevel=3,
            )
        on = np.minimum(np.searchsorted(grid, onsets), n_fine - 1)
        off = np.minimum(np.searchsorted(grid, onsets + durations), n_fine - 1)
        off[(off == on) & (off < n_fine - 1)] += 1  # zero duration: one fine step
        u = np.zeros(n_fine)
        np.add.at(u, on, heights)
        np.subtract.at(u, off, heights)
        u = np.cumsum(u)
        conv = [np.convolve(u, k)[:n_fine] for k in kernels]
        if hrf == "fir":  # nilearn reads FIR windows one fine step short of their ends
            cols = [np.interp(frame_times, grid[: 1 - oversampling], c[oversampling - 1 :]) for c in conv]
        else:
            cols = list(spm_orth(np.column_stack([np.interp(frame_times, grid, c) for c in conv])).T)
        for b, (suffix, col) in enumerate(zip(suffixes, cols)):
            out.append((f"{name}{suffix}", "condition" if b == 0 or hrf == "fir" else "derivative", col))
    return out


def make_design(
    events,
    tr: float,
    n_scans: int,
    *,
    hrf: str = "spm",
    drift: str = "cosine",
    high_pass=128.0,
    drift_order: int = 1,
    microtime_resolution: int | None = None,
    microtime_onset: int | None = None,
    slice_time_ref: float | None = None,
    fir_delays: int = 1,
    confounds: tuple[NDArray, list[str]] | None = None,
    convolution: str = "spm",
    units: str = "secs",
    modulators=None,
    max_memory=None,
) -> Design:
    """A first-level design from events, SPM's way (see the module docstring).

    Parameters
    ----------
    events : path, pandas.DataFrame or dict
        A BIDS events.tsv, a DataFrame with its columns (onset, duration[, trial_type, modulation, modulators]),
        or ``{condition: {"onset": [...], "duration": [...], "modulation": [...]}}`` (modulation optional, it
        scales each event's height; modulators' values under their names).
    tr, n_scans : float, int
        Repetition time (seconds) and number of scans.
    hrf : str
        One of ``spm``, ``spm+derivative``, ``spm+derivative+dispersion``, ``glover`` (and the same
        derivatives), ``fir`` (`fir_delays` boxcars of one TR each).
    drift : {"cosine", "polynomial", "none"}
        Cosine: SPM's DCT high-pass with cutoff `high_pass` (a period in seconds, or ``"0.008Hz"``).
        Polynomial: degrees 1..`drift_order`.
    microtime_resolution, microtime_onset : int
        SPM's fMRI_T (default 16) and fMRI_T0 (1-based; default T // 2, SPM12's 8 of 16). Alternatively
        `slice_time_ref` (nilearn's, in [0, 1)): ``T0 = 1 + slice_time_ref * T``, which must be an integer.
    confounds : (array (n_scans, c), names), optional
        Nuisance regressors added as they are (see :func:`read_confounds` for files and DataFrames).
    convolution : {"spm", "nilearn"}
        ``spm`` (default): SPM12's microtime grid, as above. ``nilearn``: nilearn's grid and HRF sampling, to
        reproduce its designs (`slice_time_ref` in [0, 1], default 0; no microtime settings).
    units : {"secs", "scans"}
        Unit of onsets and durations (SPM's UNITS): seconds (default, as BIDS), or scans, onsets being 0-based
        scan indices (an onset of 10 is the start of the 11th scan, ``10 * tr`` seconds).
    modulators : str, dict or list, optional
        SPM's parametric modulators: events columns (dict keys) with polynomial orders, ``"rt:1,difficulty:2"``
        or ``{"rt": 1, "difficulty": 2}`` (a list of names: order 1). Each condition whose events have values
        gets columns ``<condition>x<modulator>^<order>`` (kind ``modulator``, effects of interest), built and
        orthogonalised as SPM12 does (see the module docstring); events with n/a for all of them get none.
        Modulators and amplitudes other than 1 in `modulation` cannot be combined (unless `modulation` is
        named as a modulator: it is then a parametric modulator and the heights are 1). SPM's grid only.

    Columns: conditions (one per basis function, named ``<trial_type><suffix>``), each followed by its
    modulators' columns, confounds, drifts (``drift_1``.., as nilearn names them), ``constant``.

    A condition whose events all start at or after the end of the run (``n_scans * tr`` seconds) is refused;
    events partly after it are left out with a :class:`DesignWarning`.
    """
    if convolution not in ("spm", "nilearn"):
        raise InputError(f"`convolution` must be spm or nilearn; got {convolution!r}.")
    if convolution == "nilearn" and (microtime_resolution is not None or microtime_onset is not None):
        raise InputError(
            "the microtime settings (`microtime_resolution`, `microtime_onset`) are SPM's convolution's; with "
            "`convolution` nilearn give the slice time as `slice_time_ref` instead."
        )
    T = 16 if microtime_resolution is None else int(microtime_resolution)
    if T < 1:
        raise InputError(f"`microtime_resolution` must be a positive integer; got {microtime_resolution}.")
    check_scalar(
        tr, "`tr`", numbers.Real, min_val=0, include_boundaries="neither", description="a positive number of seconds"
    )
    tr = float(tr)
    check_scalar(n_scans, "`n_scans`", min_val=1)
    if convolution == "nilearn":
        if not 0 <= (slice_time_ref or 0.0) <= 1:
            raise InputError(f"`slice_time_ref` must lie in [0, 1] (a fraction of the TR); got {slice_time_ref}.")
        if n_scans < 2:
            raise InputError("nilearn's convolution needs at least 2 scans.")
    elif slice_time_ref is not None:
        if microtime_onset is not None:
            raise InputError("give either `microtime_onset` (SPM's T0) or `slice_time_ref` (nilearn's), not both.")
        if not 0 <= slice_time_ref < 1:
            raise InputError(f"`slice_time_ref` must lie in [0, 1) (a fraction of the TR); got {slice_time_ref}.")
        t0 = 1 + slice_time_ref * T
        if abs(t0 - round(t0)) > 1e-9:
            raise InputError(
                f"`slice_time_ref` {slice_time_ref} times the microtime resolution {T} "
                "must be a whole number of bins; choose a resolution that makes it one."
            )
        microtime_onset = int(round(t0))
    # SPM12's default fMRI_T0 is 8 whatever fMRI_T is (spm_get_defaults stats.fmri.t0); T/2 below 8 bins
    T0 = (8 if T >= 8 else max(1, T // 2)) if microtime_onset is None else int(microtime_onset)
    if not 1 <= T0 <= T:
        raise InputError(f"`microtime_onset` (SPM's T0, 1-based) must lie in 1..{T}; got {microtime_onset}.")
    if hrf == "fir":
        check_scalar(fir_delays, "`fir_delays`", min_val=1, description="a positive number of one-TR windows")
    if hrf == "fir" and fir_delays > n_scans:
        raise InputError(
            f"`fir_delays` ({fir_delays}) must be at most the number of scans ({n_scans}): each delay "
            "is a one-TR window of the run."
        )
    if drift == "polynomial":
        check_scalar(drift_order, "`drift_order`", min_val=1)
    if drift == "polynomial" and drift_order >= n_scans:
        raise InputError(f"`drift_order` ({drift_order}) must be less than the number of scans ({n_scans}).")
    if hrf not in HRF_MODELS:
        raise InputError(f"`hrf` must be one of {', '.join(HRF_MODELS)}; got {hrf!r}.")
    if units not in ("secs", "scans"):
        raise InputError(f"`units` (of onsets and durations) must be secs or scans, as SPM's UNITS; got {units!r}.")
    modulators = parse_modulators(modulators)
    if modulators and convolution == "nilearn":
        raise InputError("parametric modulators are built as SPM builds them; they need convolution='spm'.")
    if isinstance(events, (str, Path)) or is_dataframe(events):
        conditions = _unmodulated(read_events(events, modulators), modulators, convolution)
    else:
        conditions = _check_events(events, modulators)
    if units == "scans":  # seconds as SPM computes them: ons * (T * dt), then / dt on the grid
        scan = T * (tr / T) if convolution == "spm" else tr
        conditions = {
            name: {**ev, "onset": ev["onset"] * scan, "duration": ev["duration"] * scan}
            for name, ev in conditions.items()
        }
    _check_timing(conditions, n_scans * tr, n_scans, tr)
    inputs = _parametric(conditions, modulators)
    nilearn_times = float(slice_time_ref or 0.0) if convolution == "nilearn" else None  # (its drifts' frame times)
    if drift == "cosine":
        period = check_high_pass(parse_high_pass(high_pass), tr)
        n_drifts = cosine_order(n_scans, tr, high_pass, nilearn_times)
    else:
        n_drifts = int(drift_order) if drift == "polynomial" else 0
    n_confounds = 0 if confounds is None else len(confounds[1])
    _check_design_memory(
        conditions,
        inputs,
        tr,
        n_scans,
        hrf,
        50 if convolution == "nilearn" else T,
        int(fir_delays),
        n_confounds + n_drifts,
        spm_grid=convolution == "spm",
        max_memory=max_memory,
    )

    if convolution == "nilearn":
        regressors = _nilearn_columns(conditions, tr, n_scans, hrf, float(slice_time_ref or 0.0), int(fir_delays))
    else:
        regressors = _spm_columns(conditions, inputs, tr, n_scans, hrf, T, T0, int(fir_delays))
    names = [r[0] for r in regressors]
    kinds = [r[1] for r in regressors]
    columns = [r[2] for r in regressors]
    if confounds is not None:
        values, cnames = confounds
        columns += list(np.asarray(values, dtype=float).T)
        names += list(cnames)
        kinds += ["confound"] * len(cnames)
    if drift == "cosine":
        D = cosine_drift(n_scans, tr, period, n_drifts)
    elif drift == "polynomial":
        D = polynomial_drift(n_scans, int(drift_order), nilearn_times or 0.0)
    elif drift in ("none", None):
        D = np.zeros((n_scans, 0))
    else:
        raise InputError(f"`drift` must be cosine, polynomial or none; got {drift!r}.")
    columns += list(D.T)
    names += [f"drift_{k + 1}" for k in range(D.shape[1])]
    kinds += ["drift"] * D.shape[1]
    columns.append(np.ones(n_scans))
    names.append("constant")
    kinds.append("constant")
    if len(set(names)) != len(names):
        dup = repeated(names)
        raise InputError(f"design column names repeat ({', '.join(dup)}); rename the trial types or confounds.")
    settings = {
        "hrf": hrf,
        "drift": drift,
        "high_pass_s": parse_high_pass(high_pass) if drift == "cosine" else None,
        "drift_order": drift_order if drift == "polynomial" else None,
        "microtime_resolution": T,
        "microtime_onset": T0,
        "tr": tr,
        "n_scans": n_scans,
        "convolution": convolution,
        "units": units,
        "modulators": modulators,
    }
    if convolution == "nilearn":
        settings.update(
            microtime_resolution=None,
            microtime_onset=None,
            slice_time_ref=float(slice_time_ref or 0.0),
            oversampling=50,
        )
    X = np.column_stack(columns)
    for j, (name, kind) in enumerate(zip(names, kinds)):  # (events before the run's start, beyond its HRF's reach)
        if kind == "condition" and not np.any(X[:, j]):
            raise InputError(
                f"the regressor {name!r} is zero at every scan: no scan samples its events' response (they lie "
                f"before the run beyond the HRF's reach, or after its last scan, at {(n_scans - 1) * tr:g} s of "
                f"{n_scans} scans x {tr:g} s), or all have modulation 0 (or n/a, left out by nilearn's convolution); "
                "check the events file belongs to this run, the units of its onsets (BIDS: seconds; voxfit fit: "
                "--units) and its modulation column."
            )
    return Design(X=X, names=tuple(names), kinds=tuple(kinds), tr=float(tr), settings=settings)
