"""Confounds as fMRIPrep users choose them: nilearn's named strategies (``load_confounds_strategy``), and scrubbing
by censoring.

Strategies (nilearn 0.14's presets; options override them, ``"scrubbing:fd_threshold=0.3,motion=basic"``):

========== ===================================================================================================
simple     fMRIPrep's cosine regressors, motion ``full`` (6 parameters, derivatives, squares, squared
           derivatives: 24), white matter and CSF ``basic``
scrubbing  cosines, motion ``full``, white matter and CSF ``full``, high-motion scans censored: framewise
           displacement > 0.5 mm or standardised DVARS > 1.5, and the segments left shorter than 5 scans
compcor    cosines, motion ``full``, aCompCor ``anat_combined`` components (``n_compcor`` of them, or all that
           the sidecar lists with that mask; ``compcor_variance``: the first components reaching that fraction
           of the variance explained, by the sidecar's "CumulativeVarianceExplained" / "VarianceExplained")
ica_aroma  cosines, white matter and CSF ``basic``; for fMRIPrep's ``desc-smoothAROMAnonaggr_bold`` runs (the
           table must have ``aroma_motion_*`` columns)
========== ===================================================================================================

Every strategy takes ``global_signal`` (``basic``, ``derivatives``, ``power2``, ``full``) and ``demean``.
fMRIPrep's non-steady-state scans (``non_steady_state_outlier*`` columns) are always censored, as nilearn does.

Censoring removes a scan from the fit: the design gets one indicator column per censored scan (kind
``confound``, named ``censored_<scan>``, 0-based), never a column of the strategy's own. For OLS this is the fit
of the other scans exactly (the same betas and residuals; the rank, and so the degrees of freedom, lower by one
per censored scan). For the noise models that whiten (AR(p), ``ar1-global``), generalised least squares with
indicator columns equals generalised least squares on the remaining scans under their own correlation matrix
(the censored rows and columns removed from the full one: the Schur complement), so the gaps are handled with
the correct correlation between the scans on either side; the AR coefficients are estimated from the OLS
residuals, zero at censored scans, and the bias correction (``voxfit.core.ar``: the expected lagged products
through the residual-forming matrix, which includes the indicators) accounts for those zeros exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import is_dataframe, type_name
from ..exceptions import InputError
from .subjects import listed

__all__ = ["STRATEGIES", "ConfoundSelection", "confounds_strategy", "parse_strategy"]

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
LEVELS = ("basic", "derivatives", "power2", "full")
COMPCOR = ("anat_combined", "anat_separated", "temporal", "temporal_anat_combined", "temporal_anat_separated")
STRATEGIES: dict[str, dict] = {  # nilearn 0.14's preset_strategies
    "simple": {"parts": ("high_pass", "motion", "wm_csf"), "motion": "full", "wm_csf": "basic"},
    "scrubbing": {
        "parts": ("high_pass", "motion", "wm_csf", "scrub"),
        "motion": "full",
        "wm_csf": "full",
        "scrub": 5,
        "fd_threshold": 0.5,
        "std_dvars_threshold": 1.5,
    },
    "compcor": {
        "parts": ("high_pass", "motion", "compcor"),
        "motion": "full",
        "compcor": "anat_combined",
        "n_compcor": "all",
    },
    "ica_aroma": {"parts": ("high_pass", "wm_csf", "ica_aroma"), "wm_csf": "basic"},
}
OPTIONS = {  # option: (parser, what it accepts)
    "motion": (str, "basic, derivatives, power2 or full"),
    "wm_csf": (str, "basic, derivatives, power2 or full"),
    "global_signal": (str, "basic, derivatives, power2 or full"),
    "scrub": (int, "a number of scans, 0 or more"),
    "fd_threshold": (float, "millimetres, above 0"),
    "std_dvars_threshold": (float, "a standardised DVARS, above 0"),
    "compcor": (str, ", ".join(COMPCOR)),
    "n_compcor": (str, "a number of components or all"),
    "compcor_variance": (float, "a fraction of variance in (0, 1]"),
    "demean": (str, "true or false"),
}


@dataclass(frozen=True, eq=False)
class ConfoundSelection:
    """What a strategy chose from a confounds table: the columns ``X`` (n, k) and their ``names`` (demeaned over
    the kept scans when ``demean``), the ``censored`` scans (bool, n), the strategy and its options."""

    X: NDArray[np.float64]
    names: list[str]
    censored: NDArray[np.bool_]
    strategy: str
    options: dict = field(default_factory=dict)

    @property
    def sample_mask(self) -> NDArray[np.int64] | None:
        """The kept scans' indices (nilearn's ``sample_mask``), None when none is censored."""
        return None if not self.censored.any() else np.flatnonzero(~self.censored)

    def design_columns(self) -> tuple[NDArray[np.float64], list[str]]:
        """The strategy's columns and one indicator column per censored scan (see the module's docstring)."""
        idx = np.flatnonzero(self.censored)
        spikes = np.zeros((self.censored.size, idx.size))
        spikes[idx, np.arange(idx.size)] = 1.0
        return np.hstack([self.X, spikes]), self.names + [f"censored_{i}" for i in idx]

    def describe(self) -> dict:
        """For model.json: the strategy, its options, the columns chosen and the censored scans."""
        return {
            "strategy": self.strategy,
            "options": self.options,
            "columns": self.names,
            "censored_scans": np.flatnonzero(self.censored).tolist(),
            "censoring": "indicator columns: the scans removed from the fit (see voxfit.design.confounds)",
        }


def parse_strategy(text: str) -> tuple[str, dict]:
    """``"NAME[:key=value,...]"`` -> (name, options): the strategy's defaults with the options given over them,
    each checked (see the module's docstring)."""
    name, options = _split_strategy(text)
    return name, _checked_options(name, options)


def _split_strategy(text: str) -> tuple[str, dict]:
    """``"NAME[:key=value,...]"`` -> (name, {key: value text}), the name and keys checked."""
    if not isinstance(text, str):
        raise InputError(f"--confounds-strategy must be NAME[:options] text; got {type_name(text)}.")
    name, _, rest = text.strip().partition(":")
    if name not in STRATEGIES:
        raise InputError(
            f"--confounds-strategy {name!r} is not a strategy; use one of {', '.join(STRATEGIES)} "
            '(options after a colon, e.g. "scrubbing:fd_threshold=0.3").'
        )
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in OPTIONS:
            raise InputError(
                f"--confounds-strategy option {item!r} is not KEY=VALUE with KEY one of {', '.join(OPTIONS)}."
            )
        options[key] = value.strip()
    return name, options


def _checked_options(name: str, options: dict) -> dict:
    """The strategy's defaults with `options` over them, each option's value parsed and its range checked."""
    out = {k: v for k, v in STRATEGIES[name].items() if k != "parts"}
    out.setdefault("global_signal", None)
    out.setdefault("demean", True)
    for key, value in options.items():
        parse, accepted = OPTIONS[key]
        bad = InputError(f"--confounds-strategy option {key}={value!r} is not valid; give {accepted}.")
        if key in ("motion", "wm_csf", "global_signal") and value not in LEVELS:
            raise bad
        if key == "compcor" and value not in COMPCOR:
            raise bad
        if key == "demean":
            if str(value).lower() not in ("true", "false", "1", "0"):
                raise bad
            out[key] = str(value).lower() in ("true", "1")
            continue
        if key == "n_compcor":
            if value != "all" and not (str(value).isdigit() and int(value) > 0):
                raise bad
            out[key] = value if value == "all" else int(value)
            continue
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(parsed, float) and not (np.isfinite(parsed) and parsed > 0):
            raise bad
        if key == "compcor_variance" and parsed > 1:
            raise bad
        if key == "scrub" and parsed < 0:
            raise bad
        out[key] = parsed
    return out


def _with_suffixes(params, level: str) -> list[str]:
    """nilearn's ``add_suffix``: the parameters, then their derivatives and squares as `level` asks."""
    suffixes = {"basic": (), "derivatives": ("derivative1",), "power2": ("power2",)}
    chosen = suffixes.get(level, ("derivative1", "power2", "derivative1_power2"))
    return list(params) + [f"{p}_{s}" for p in params for s in chosen]


def _read_table(confounds):
    """(pandas DataFrame, where) of a confounds TSV path or a DataFrame."""
    import pandas as pd

    if is_dataframe(confounds):
        return confounds.copy(), "confounds DataFrame"
    if not isinstance(confounds, (str, os.PathLike)):
        raise InputError(
            f"`confounds` must be a path to a confounds TSV or a pandas DataFrame; got {type_name(confounds)}."
        )
    path = Path(confounds)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN", "nan", ""])
    except OSError as exc:
        raise InputError.from_os_error(exc, path) from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"confounds {path} is not a tab-separated table with a header ({exc}).") from None
    return table, f"confounds {path}"


def _read_sidecar(confounds, sidecar) -> dict:
    """fMRIPrep's confounds JSON: `sidecar` (a path or a dict), or the .json beside a confounds TSV path."""
    if isinstance(sidecar, dict):
        return sidecar
    if sidecar is None and isinstance(confounds, (str, os.PathLike)):
        sidecar = Path(confounds).with_suffix(".json")
        if not sidecar.is_file():
            return {}
    if sidecar is None:
        return {}
    try:
        record = json.loads(Path(sidecar).read_text())
    except OSError as exc:
        raise InputError.from_os_error(exc, sidecar) from None
    except (ValueError, RecursionError):
        raise InputError(f"confounds sidecar {sidecar} is not JSON; fix it or give the table without it.") from None
    if not isinstance(record, dict):
        raise InputError(f"confounds sidecar {sidecar} must hold a JSON object (fMRIPrep's); got another value.")
    return record


def _compcor_columns(meta: dict, how: str, n_compcor, variance) -> list[str]:
    """nilearn's ``find_compcor`` (the sidecar's components, by prefix and, for aCompCor, mask), with
    `variance` keeping the first components whose cumulative variance explained reaches it."""
    prefixes = {
        "temporal_anat_combined": ("t", "a"),
        "temporal_anat_separated": ("t", "a", "w", "c"),
        "temporal": ("t",),
        "anat_combined": ("a",),
        "anat_separated": ("a", "w", "c"),
    }[how]
    masks = ("WM", "CSF") if how.endswith("separated") else ("combined",)
    out = []
    for prefix in prefixes:
        names = [c for c in meta if f"{prefix}_comp_cor" in c and c.startswith(f"{prefix}_comp_cor")]
        names = [c for c in names if isinstance(meta[c], dict)]
        for cols in [[c for c in names if meta[c].get("Mask") == m] for m in masks] if prefix == "a" else [names]:
            cols = [c for c in cols if meta[c].get("Retained", True) is not False]
            if variance is not None:
                kept, total = [], 0.0
                for c in cols:
                    kept.append(c)
                    total = meta[c].get("CumulativeVarianceExplained", total + meta[c].get("VarianceExplained", 0.0))
                    if total >= variance:
                        break
                cols = kept
            elif n_compcor != "all":
                cols = cols[: int(n_compcor)]
            out += cols
    return out


def _scrubbed(table, scrub: int, fd: float, dvars: float, where: str) -> NDArray[np.bool_]:
    """nilearn's ``_load_scrub`` and ``optimize_scrub``: scans above either threshold, and the segments between
    them (and at either end) shorter than `scrub` scans."""
    for column in ("framewise_displacement", "std_dvars"):
        if column not in table:
            raise InputError(f"{where} has no {column!r} column, which scrubbing needs; use another strategy.")
    n = len(table)
    with np.errstate(invalid="ignore"):
        out = (table["framewise_displacement"].to_numpy(float) > fd) | (table["std_dvars"].to_numpy(float) > dvars)
    idx = np.flatnonzero(out)
    if scrub > 0 and idx.size:
        if idx[0] < scrub:
            out[: idx[0]] = True
        if n - (idx[-1] + 1) < scrub:
            out[idx[-1] :] = True
        for a, b in zip(idx[:-1], idx[1:]):
            if 1 < b - a < scrub + 1:
                out[a + 1 : b] = True
    return out


# fMRIPrep's names of its confounds before 1.4 (then renamed trans_x, rot_x, csf...), which nilearn's strategies do
# not read
_NAMES_BEFORE_1_4 = ("X", "Y", "Z", "RotX", "RotY", "RotZ", "CSF", "WhiteMatter", "GlobalSignal")
_PART_COLUMNS = {"motion": MOTION, "wm_csf": ("csf", "white_matter"), "global_signal": ("global_signal",)}


def _lacking_columns(where: str, name: str, part: str, missing: list[str], have) -> InputError:
    """The error of a confounds table that lacks columns a strategy's `part` needs, with what to do: the lighter
    levels of the part whose columns the table has (a table without the derivatives of csf and white_matter, say);
    else, where the table names its columns as fMRIPrep did before 1.4, that."""
    have = set(have)
    base = _PART_COLUMNS.get(part, ())
    levels = [level for level in LEVELS if base and set(_with_suffixes(base, level)) <= have]
    if levels:
        fix = f"choose a level of {part} that it has ({', '.join(f'{name}:{part}={level}' for level in levels)})"
    elif old := [c for c in _NAMES_BEFORE_1_4 if c in have]:
        fix = (
            f"its columns are named as fMRIPrep named them before 1.4 ({', '.join(old[:4])}...), which nilearn's "
            "strategies do not read: rerun fMRIPrep 1.4 or later, or choose its columns yourself "
            "(--confounds-columns; in a study, a model's X)"
        )
    else:
        fix = "choose another strategy, or the table's columns yourself (--confounds-columns; in a study, a model's X)"
    return InputError(f"{where} lacks the column(s) {listed(missing)} that the {name} strategy's {part} needs; {fix}.")


def confounds_strategy(confounds, strategy: str = "simple", n_scans: int | None = None, sidecar=None, **options):
    """The confounds of a named strategy (see the module's docstring) from an fMRIPrep confounds table (a TSV
    path, with its JSON sidecar beside it, or a DataFrame with `sidecar` a dict or path), as nilearn's
    ``load_confounds_strategy`` chooses them. `strategy` may carry options (``"scrubbing:fd_threshold=0.3"``);
    `options` (keyword arguments, as nilearn's) override them. Returns a :class:`ConfoundSelection`; its
    ``design_columns()`` are what a design takes."""
    name, given = _split_strategy(strategy)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(
            f"confounds_strategy: unknown option(s) {', '.join(unknown)}; options are {', '.join(OPTIONS)}."
        )
    params = _checked_options(name, {**given, **{k: str(v) for k, v in options.items() if v is not None}})
    table, where = _read_table(confounds)
    meta = _read_sidecar(confounds, sidecar)
    if n_scans is not None and len(table) != n_scans:
        raise InputError(f"{where} has {len(table)} rows but the run has {n_scans} scans.")
    parts = STRATEGIES[name]["parts"] + (("global_signal",) if params.get("global_signal") else ())
    columns: list[str] = []
    for part in parts:
        if part == "high_pass":
            want = [c for c in table.columns if "cosine" in c]
        elif part in _PART_COLUMNS:  # motion, wm_csf, global_signal: the columns at the level asked
            want = _with_suffixes(_PART_COLUMNS[part], params[part])
        elif part == "compcor":
            if not meta:
                raise InputError(f"{where}: the compcor strategy needs fMRIPrep's confounds JSON sidecar beside it.")
            want = _compcor_columns(meta, params["compcor"], params["n_compcor"], params.get("compcor_variance"))
            if not want:
                raise InputError(f"{where}'s sidecar lists no {params['compcor']} CompCor component.")
        elif part == "ica_aroma":
            if not any(c.startswith("aroma_motion_") for c in table.columns):
                raise InputError(
                    f"{where} has no aroma_motion_* columns: ica_aroma is for runs fMRIPrep processed with "
                    "--use-aroma (fit their desc-smoothAROMAnonaggr_bold); use another strategy."
                )
            want = []
        else:  # scrub: censoring, not columns
            want = []
        missing = [c for c in want if c not in table.columns]
        if missing:
            raise _lacking_columns(where, name, part, missing, table.columns)
        columns += [c for c in want if c not in columns]
    censored = np.zeros(len(table), dtype=bool)
    # (fMRIPrep's own motion_outlierNN spikes are not read, as nilearn reads none: scrubbing finds its own)
    for c in table.columns:
        if "non_steady_state" in c:
            censored |= table[c].fillna(0).to_numpy(float) != 0
    if "scrub" in parts:
        censored |= _scrubbed(table, params["scrub"], params["fd_threshold"], params["std_dvars_threshold"], where)
    if censored.all():
        raise InputError(f"{where}: every scan is censored by the {name} strategy; loosen its thresholds.")
    X = np.array(table[columns], dtype=float) if columns else np.zeros((len(table), 0))
    first = np.isnan(X[0])
    X[0, first] = X[1, first] if len(table) > 1 else 0.0  # fMRIPrep's derivatives have no first value (nilearn's)
    if np.isnan(X).any():
        j = int(np.flatnonzero(np.isnan(X).any(axis=0))[0])
        raise InputError(f"{where}: column {columns[j]!r} has a missing value after its first row.")
    if np.isinf(X).any():  # (a design's SVD then fails to converge)
        j = int(np.flatnonzero(np.isinf(X).any(axis=0))[0])
        raise InputError(f"{where}: column {columns[j]!r} holds an infinite value; fix the confounds table.")
    if params["demean"] and X.size:
        X = X - X[~censored].mean(axis=0)
    record = {k: v for k, v in params.items() if v is not None}
    return ConfoundSelection(X, columns, censored, name, record)
