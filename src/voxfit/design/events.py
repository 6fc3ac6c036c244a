"""First-level designs from events, with SPM's microtime conventions reproduced exactly.

SPM12 (spm_get_ons.m, spm_fMRI_design.m) builds each condition's regressor on a grid of ``T`` bins per
scan (``dt = TR / T``; SPM's fMRI_T, default 16): an event at onset ``o`` seconds and duration ``d``
seconds starts at bin ``round(o / dt) + 33`` and ends ``round(d / dt) + 1`` bins later (MATLAB's
rounding, half away from zero; a 32-bin lead-in), with height 1, or ``1 / dt`` when every event of the
condition has zero duration; the stimulus function is convolved with the basis set and read out at bin
``(i * T + T0 + 32)`` for scan i, T0 being SPM's fMRI_T0 (1-based: T0 = 1 reads at the start of each scan,
T0 = T/2 + 1 in its middle); a trial type's columns are then orthogonalised in order (spm_orth), so a
derivative is orthogonal to its HRF regressor at the scan times. nilearn's ``slice_time_ref`` s is the same as ``T0 = 1 + s * T``.

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
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import warnings

from .._array import is_dataframe, type_name
from ..exceptions import DesignWarning, InputError
from .hrf import HRF_MODELS, basis_set, nilearn_kernels, spm_orth
from .read import frame_table

__all__ = ["Design", "make_design", "variance_inflation", "read_events", "read_confounds", "cosine_drift", "polynomial_drift",
           "parse_high_pass"]  # fmt: skip


@dataclass(frozen=True, eq=False)
class Design:
    """A first-level design: the matrix, its column names, what each column is, and how it was built."""

    X: NDArray[np.float64]
    names: tuple[str, ...]
    kinds: tuple[str, ...]  # "condition", "derivative", "drift", "confound", "constant"
    tr: float
    settings: dict = field(default_factory=dict)

    def check(self, max_vif: float = 10.0) -> dict:
        """Rank, condition number (columns scaled to unit norm) and VIFs; warns for VIF above `max_vif`."""
        scaled = self.X / np.linalg.norm(self.X, axis=0).clip(min=1e-300)
        sv = np.linalg.svd(scaled, compute_uv=False)
        rank = int(np.sum(sv > sv[0] * max(self.X.shape) * np.finfo(float).eps))
        vif = self.variance_inflation()
        for name, value in vif.items():
            if value > max_vif:
                warnings.warn(
                    f"regressor {name!r} has a variance inflation factor of {value:.1f} (> {max_vif:g}): other columns "
                    "explain most of it, so contrasts on it are barely estimable.",
                    DesignWarning,
                    stacklevel=2,
                )
        return {"rank": rank, "n_columns": self.X.shape[1], "condition_number": float(sv[0] / sv[rank - 1]), "vif": vif}

    def write(self, path) -> None:
        """Write the design as TSV with a header of column names."""
        from .read import write_design

        write_design(path, self.X, self.names)

    @property
    def conditions(self) -> list[str]:
        return [n for n, k in zip(self.names, self.kinds) if k == "condition"]

    def variance_inflation(self) -> dict[str, float]:
        """VIF of each regressor of interest (conditions and their derivatives); see :func:`variance_inflation`."""
        columns = [j for j, kind in enumerate(self.kinds) if kind in ("condition", "derivative")]
        return variance_inflation(self.X, self.names, columns)


def variance_inflation(X: NDArray, names, columns) -> dict[str, float]:
    """VIF of each column j in `columns`: 1 / (1 - R^2) of column j regressed on all the others, R^2 about
    the column's mean (inf when the others explain it entirely)."""
    out = {}
    for j in columns:
        others = np.delete(X, j, axis=1)
        coef, *_ = np.linalg.lstsq(others, X[:, j], rcond=None)
        resid = X[:, j] - others @ coef
        centred = X[:, j] - X[:, j].mean()
        denom = float(resid @ resid)
        out[names[j]] = float(centred @ centred) / denom if denom > 0 else math.inf
    return out


def _matlab_round(x: NDArray) -> NDArray[np.int64]:
    """MATLAB's round: halves away from zero (numpy rounds them to even)."""
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def parse_high_pass(value) -> float:
    """High-pass cutoff as a period in seconds: ``128`` (SPM's seconds) or ``"0.008Hz"`` (nilearn's frequency)."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(hz|s)?", text, re.IGNORECASE)
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"`high_pass` must be a period in seconds (128) or a frequency (0.008Hz); got {value!r}.")
    number = float(m.group(1))
    return 1.0 / number if (m.group(2) or "").lower() == "hz" else number


def cosine_drift(n_scans: int, tr: float, period: float) -> NDArray[np.float64]:
    """SPM's discrete cosine high-pass set (spm_filter/spm_dctmtx) without the constant: floor(2 n TR / period)
    columns, at most n - 1."""
    order = min(int(math.floor(2 * n_scans * tr / period)), n_scans - 1)  # beyond n - 1 the DCT repeats itself
    k = np.arange(1, order + 1)
    i = np.arange(n_scans)[:, None]
    return np.sqrt(2.0 / n_scans) * np.cos(np.pi * (2 * i + 1) * k / (2 * n_scans))


def polynomial_drift(n_scans: int, order: int) -> NDArray[np.float64]:
    """Powers 1..order of scan time scaled to [0, 1], each orthogonalised against the lower ones and the
    constant (Gram-Schmidt without normalisation): the same columns as nilearn's polynomial drift."""
    t = np.arange(n_scans) / max(n_scans - 1, 1)
    return spm_orth(np.vander(t, order + 1, increasing=True))[:, 1:]


EVENTS_FRAME = "a pandas DataFrame (onset, duration[, trial_type, modulation])"
EVENTS_ACCEPTED = f"a path to a BIDS events.tsv, {EVENTS_FRAME} or a {{condition: {{onset, duration}}}} dict"


def _value(cell) -> float:
    """A table cell as a float: a number as it is, text parsed (ValueError if it is not a number)."""
    if isinstance(cell, numbers.Real) and not isinstance(cell, bool):
        return float(cell)
    if isinstance(cell, str):
        return float(cell.strip())
    raise ValueError(cell)


def _text(cell) -> str:
    return cell.strip() if isinstance(cell, str) else str(cell)


def read_events(path) -> dict[str, dict[str, NDArray]]:
    """BIDS events: onset, duration, trial_type (optional, default 'trial'), modulation (optional; n/a = 1),
    from an events.tsv or a pandas DataFrame with those columns (the same rules for both)."""
    if is_dataframe(path):
        where, first_line, what = "events DataFrame", 0, "row"
        header, body = frame_table(path)
    elif isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"events {path}: no such file.")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t") if r]
        if not rows:
            raise InputError(f"events {path} is empty; it needs a header with onset and duration.")
        where, first_line, what = f"events {path}", 2, "line"
        header, body = [h.strip() for h in rows[0]], rows[1:]
    else:
        raise InputError(f"`events` must be a path to a BIDS events.tsv or {EVENTS_FRAME}; got {type_name(path)}.")
    for needed in ("onset", "duration"):
        if needed not in header:
            raise InputError(f"{where} has no {needed!r} column (columns: {', '.join(header)}).")
    col = {name: i for i, name in enumerate(header)}
    conditions: dict[str, dict[str, list]] = {}
    for r, row in enumerate(body, start=first_line):
        if len(row) != len(header):
            raise InputError(f"{where}, {what} {r}: {len(row)} values for {len(header)} columns.")
        trial = _text(row[col["trial_type"]]) if "trial_type" in col else "trial"
        if trial in ("", "n/a"):
            raise InputError(f"{where}, {what} {r}: trial_type is empty.")
        values = {}
        for key, default in (("onset", None), ("duration", None), ("modulation", 1.0)):
            cell = row[col[key]] if key in col else default
            if key == "modulation" and isinstance(cell, str) and cell.strip().lower() in ("", "n/a"):
                cell = 1.0  # an unmodulated event
            try:
                values[key] = _value(cell)
            except ValueError:
                raise InputError(f"{where}, {what} {r}: {key} {_text(cell)!r} is not a number.") from None
            if not math.isfinite(values[key]):
                raise InputError(f"{where}, {what} {r}: {key} must be finite.")
        if values["duration"] < 0:
            raise InputError(f"{where}, {what} {r}: duration {values['duration']} is negative.")
        cond = conditions.setdefault(trial, {"onset": [], "duration": [], "modulation": []})
        for key in cond:
            cond[key].append(values[key])
    if not conditions:
        raise InputError(f"{where} lists no event.")
    return {name: {k: np.array(v) for k, v in c.items()} for name, c in conditions.items()}


def read_confounds(path, columns: str | list[str], n_scans: int) -> tuple[NDArray[np.float64], list[str]]:
    """Columns of an fMRIPrep-style confounds TSV (or a pandas DataFrame of one), chosen by names or glob
    patterns (``"trans_*,rot_*"``).

    Policy for ``n/a`` (in a DataFrame: NaN or None): values missing at the start of a column (fMRIPrep's
    derivatives and framewise displacement have no value for the first scan) are set to 0; a missing value
    anywhere else is an error.
    """
    if is_dataframe(path):
        where = "confounds DataFrame"
        header, body = frame_table(path)
    elif isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"confounds {path}: no such file.")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t") if r]
        if len(rows) < 2:
            raise InputError(f"confounds {path} has no rows.")
        where = f"confounds {path}"
        header, body = [h.strip() for h in rows[0]], rows[1:]
    else:
        raise InputError(f"`confounds` must be a path to a confounds TSV or a pandas DataFrame; got {type_name(path)}.")
    if not body:
        raise InputError(f"{where} has no rows.")
    if isinstance(columns, str):
        patterns = [p.strip() for p in columns.split(",") if p.strip()]
    elif isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns):
        patterns = [p.strip() for p in columns if p.strip()]
    else:
        raise InputError("`confounds_columns` must be names or patterns (a string or a list of strings); got "
                         f"{type_name(columns)}.")  # fmt: skip
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
            if isinstance(cell, str) and cell.strip().lower() in ("n/a", "na", "nan", ""):
                if not leading:
                    raise InputError(f"{where}: column {name!r} has a missing value at row {i + 1}; only leading n/a "
                                     "are allowed.")  # fmt: skip
                X[i, j] = 0.0
                continue
            leading = False
            try:
                X[i, j] = _value(cell)
            except ValueError:
                raise InputError(f"{where}: column {name!r}, row {i + 1}: {_text(cell)!r} is not a number.") from None
    return X, chosen


def _check_events(events: dict) -> dict:
    """Events given as a dict: finite onsets and modulations, finite non-negative durations, one length each."""
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
        if not (np.isfinite(onset).all() and np.isfinite(duration).all() and np.isfinite(modulation).all()):
            raise InputError(f"events of {name!r}: onsets, durations and modulations must be finite numbers.")
        if (duration < 0).any():
            raise InputError(f"events of {name!r}: durations must not be negative.")
        checked[str(name)] = {"onset": onset, "duration": duration, "modulation": modulation}
    return checked


def _stimulus(onsets, durations, amplitudes, dt: float, n_bins: int) -> NDArray[np.float64]:
    """spm_get_ons: the stimulus function of one condition on the microtime grid (32-bin lead-in)."""
    u = np.asarray(amplitudes, dtype=float).copy()
    if not np.any(durations):
        u /= dt  # events: unit area
    ton = _matlab_round(np.asarray(onsets) / dt) + 32  # 0-based; SPM's 1-based "+ 33"
    tof = _matlab_round(np.asarray(durations) / dt) + ton + 1
    ton, tof = np.maximum(ton, 0), np.maximum(tof, 0)
    sf = np.zeros(n_bins + 96)
    keep_on, keep_off = ton + 1 < sf.size, tof + 1 < sf.size  # MATLAB: size(sf, 1) > ton(j)
    np.add.at(sf, ton[keep_on], u[keep_on])
    np.add.at(sf, tof[keep_off], -u[keep_off])
    return np.cumsum(sf)[:n_bins]


def _spm_columns(conditions: dict, tr: float, n_scans: int, hrf: str, T: int, T0: int, fir_delays: int):
    """Each condition's regressors on SPM's microtime grid: ``[(name, kind, column), ...]``."""
    dt = tr / T
    n_bins = n_scans * T + 32
    bf, suffixes = basis_set(hrf, dt, T, fir_order=fir_delays, fir_length=fir_delays * tr)
    readout = np.arange(n_scans) * T + T0 + 31
    out = []
    for name, ev in conditions.items():
        sf = _stimulus(ev["onset"], ev["duration"], ev["modulation"], dt, n_bins)
        sampled = np.column_stack([np.convolve(sf, bf[:, b])[:n_bins][readout] for b in range(bf.shape[1])])
        for b, (suffix, col) in enumerate(zip(suffixes, spm_orth(sampled).T)):  # within trial type, as SPM12
            out.append((f"{name}{suffix}", "condition" if b == 0 or hrf == "fir" else "derivative", col))
    return out


def _nilearn_columns(conditions: dict, tr: float, n_scans: int, hrf: str, slice_time_ref: float, fir_delays: int,
                     oversampling: int = 50, min_onset: float = -24.0):  # fmt: skip
    """Each condition's regressors as nilearn computes them: ``[(name, kind, column), ...]``."""
    frame_times = (np.arange(n_scans) + slice_time_ref) * tr
    first, last = frame_times[0], frame_times[-1]
    n_fine = int(np.rint((n_scans - 1) / (last - first) * (last * (1 + 1 / (n_scans - 1)) - first - min_onset) * oversampling + 1))
    grid = np.linspace(first + min_onset, last * (1 + 1 / (n_scans - 1)), n_fine)
    kernels, suffixes = nilearn_kernels(hrf, tr, oversampling, range(int(fir_delays)))
    if hrf == "fir":
        suffixes = [f"_delay_{d}" for d in range(int(fir_delays))]  # nilearn's FIR names
    out = []
    for name, ev in sorted(conditions.items()):  # nilearn orders conditions by name
        onsets, durations, heights = ev["onset"], ev["duration"], ev["modulation"]
        if (onsets < first + min_onset).any():
            warnings.warn(f"events of {name!r} before {first + min_onset:g} s are moved to that time, the start of "
                          "nilearn's grid, as nilearn does.", DesignWarning, stacklevel=3)  # fmt: skip
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
) -> Design:
    """A first-level design from events, SPM's way (see the module docstring).

    Parameters
    ----------
    events : path, pandas.DataFrame or dict
        A BIDS events.tsv, a DataFrame with its columns (onset, duration[, trial_type, modulation]), or
        ``{condition: {"onset": [...], "duration": [...], "modulation": [...]}}`` (seconds; modulation
        optional, it scales each event's height).
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

    Columns: conditions (one per basis function, named ``<trial_type><suffix>``), confounds, drifts
    (``drift_1``.., as nilearn names them), ``constant``.
    """
    if convolution not in ("spm", "nilearn"):
        raise InputError(f"`convolution` must be spm or nilearn; got {convolution!r}.")
    if convolution == "nilearn" and (microtime_resolution is not None or microtime_onset is not None):
        raise InputError("the microtime settings are SPM's; with convolution='nilearn' give `slice_time_ref` instead.")
    T = 16 if microtime_resolution is None else int(microtime_resolution)
    if T < 1:
        raise InputError(f"`microtime_resolution` must be a positive integer; got {microtime_resolution}.")
    if isinstance(tr, bool) or not isinstance(tr, numbers.Real) or not (tr > 0 and math.isfinite(tr)):
        raise InputError(f"`tr` must be a positive number of seconds; got {tr!r}.")
    tr = float(tr)
    if not (isinstance(n_scans, (int, np.integer)) and n_scans > 0):
        raise InputError(f"`n_scans` must be a positive integer; got {n_scans!r}.")
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
            raise InputError(f"`slice_time_ref` {slice_time_ref} times the microtime resolution {T} must be a whole number of bins; choose a resolution that makes it one.")
        microtime_onset = int(round(t0))
    T0 = max(1, T // 2) if microtime_onset is None else int(microtime_onset)  # SPM12: 8 of 16, the middle
    if not 1 <= T0 <= T:
        raise InputError(f"`microtime_onset` (SPM's T0, 1-based) must lie in 1..{T}; got {microtime_onset}.")
    if hrf == "fir" and (isinstance(fir_delays, bool) or not isinstance(fir_delays, (int, np.integer)) or fir_delays < 1):
        raise InputError(f"`fir_delays` must be a positive number of one-TR windows; got {fir_delays!r}.")
    if drift == "polynomial" and (not isinstance(drift_order, (int, np.integer)) or drift_order < 1):
        raise InputError(f"`drift_order` must be a positive integer; got {drift_order!r}.")
    if hrf not in HRF_MODELS:
        raise InputError(f"`hrf` must be one of {', '.join(HRF_MODELS)}; got {hrf!r}.")
    if isinstance(events, (str, Path)) or is_dataframe(events):
        conditions = read_events(events)
    else:
        conditions = _check_events(events)

    if convolution == "nilearn":
        regressors = _nilearn_columns(conditions, tr, n_scans, hrf, float(slice_time_ref or 0.0), int(fir_delays))
    else:
        regressors = _spm_columns(conditions, tr, n_scans, hrf, T, T0, int(fir_delays))
    names = [r[0] for r in regressors]
    kinds = [r[1] for r in regressors]
    columns = [r[2] for r in regressors]
    if confounds is not None:
        values, cnames = confounds
        columns += list(np.asarray(values, dtype=float).T)
        names += list(cnames)
        kinds += ["confound"] * len(cnames)
    if drift == "cosine":
        period = parse_high_pass(high_pass)
        D = cosine_drift(n_scans, tr, period)
    elif drift == "polynomial":
        D = polynomial_drift(n_scans, int(drift_order))
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
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"design column names repeat ({', '.join(dup)}); rename the trial types or confounds.")
    settings = {"hrf": hrf, "drift": drift, "high_pass_s": parse_high_pass(high_pass) if drift == "cosine" else None,
                "drift_order": drift_order if drift == "polynomial" else None, "microtime_resolution": T,
                "microtime_onset": T0, "tr": tr, "n_scans": n_scans, "convolution": convolution}  # fmt: skip
    if convolution == "nilearn":
        settings.update(microtime_resolution=None, microtime_onset=None, slice_time_ref=float(slice_time_ref or 0.0),
                        oversampling=50)  # fmt: skip
    return Design(X=np.column_stack(columns), names=tuple(names), kinds=tuple(kinds), tr=float(tr), settings=settings)
