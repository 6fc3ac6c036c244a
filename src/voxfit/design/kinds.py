"""What each design column is: its kind, recorded with the design so that it survives a design file.

Kinds: ``condition``, ``modulator``, ``derivative`` (a design built from events), ``regressor`` (a column of
a design file, of interest unless said otherwise), ``confound``, ``drift`` and ``nuisance`` (columns named by
the user as nuisance: for SPM's ``ar1-global`` they act, with the drifts, as SPM's high-pass filter), and
``constant``.

A design built from events knows its kinds. A design file carries them in a JSON sidecar beside it
(``design.tsv`` -> ``design.json``: ``{"columns": [{"name": ..., "kind": ...}, ...]}``), which voxfit writes
with every design it writes; without one, kinds are guessed from the columns: constant columns (or named
``constant...``/``intercept``) are ``constant``, ``drift_<k>`` (voxfit's), ``cosine<k>``/``cosine_<k>``
(nilearn's) are ``drift``, every other column is a ``regressor``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..exceptions import DesignWarning, InputError

__all__ = ["FILTER_KINDS", "INTEREST_KINDS", "column_kinds", "guess_kind", "sidecar_path", "write_sidecar"]

INTEREST_KINDS = ("condition", "modulator", "derivative", "regressor")
FILTER_KINDS = ("drift", "nuisance")  # SPM's high-pass filter (K.X0) for ar1-global
KINDS = (*INTEREST_KINDS, "confound", *FILTER_KINDS, "constant")
_DRIFT = re.compile(r"(drift_|cosine_?)\d+")


def guess_kind(name: str, column=None) -> str:
    """The kind of a column known only by its name (and values): see the module docstring."""
    lowered = name.lower()
    constant = column is not None and np.ptp(column) == 0 and column[0] != 0
    if constant or lowered in ("intercept", "mean") or lowered.startswith("constant"):
        return "constant"
    return "drift" if _DRIFT.fullmatch(lowered) else "regressor"


def sidecar_path(design_path) -> Path:
    return Path(design_path).with_suffix(".json")


def write_sidecar(path, names, kinds, tr: float | None = None) -> None:
    """Write the kinds of a design's columns to `path`, the sidecar of a design TSV (``sidecar_path``)."""
    record = {"columns": [{"name": n, "kind": k} for n, k in zip(names, kinds)]}
    if tr is not None:
        record["RepetitionTime"] = float(tr)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def _sidecar(path, any_json: bool = False) -> tuple[Path, dict | None] | None:
    """The sidecar beside the design file `path` and what it holds: None where there is none (or the design is a
    JSON file itself), its record None where it is not voxfit's (not JSON, or no "columns": a BIDS sidecar...;
    with `any_json`, any JSON object)."""
    side = sidecar_path(path)
    if Path(path).suffix.lower() == ".json" or not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError, RecursionError):  # (nested beyond Python's stack: not a sidecar of voxfit's)
        record = None
    return side, (record if isinstance(record, dict) and (any_json or "columns" in record) else None)


def sidecar_tr(path) -> float | None:
    """The repetition time in seconds that the sidecar of a design file gives (``RepetitionTime``, as
    :func:`write_sidecar` writes it for ``voxfit design --tr``, or as a BIDS sidecar has it: a JSON object without
    voxfit's "columns" was passed over, and --noise fast then asked for the sidecar it had), else None."""
    side, record = _sidecar(path, any_json=True) or (None, None)
    tr = None if record is None else record.get("RepetitionTime")
    if tr is None:
        return None
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not 1e-3 <= tr <= 1e4:
        raise InputError(f"{side}: its RepetitionTime must be a number of seconds from 0.001 to 10000; got {tr!r}.")
    return float(tr)


def _read_sidecar(path: Path, names) -> list[str] | None:
    found = _sidecar(path)
    if found is None:
        return None
    side, record = found
    if record is None:
        warnings.warn(
            f"{side} is not voxfit's design sidecar (no \"columns\"), so the kinds of the design's "
            "columns are guessed from their names.",
            DesignWarning,
            stacklevel=3,
        )
        return None
    try:
        listed = [c["name"] for c in record["columns"]]
        kinds = [c["kind"] for c in record["columns"]]
    except (KeyError, TypeError):
        raise InputError(
            f'{side}: its "columns" must be a list of {{"name": ..., "kind": ...}}; fix or remove it.'
        ) from None
    if listed != list(names):
        raise InputError(
            f"{side} describes columns {_few(listed)} but {path.name} has {_few(names)}; update or remove the sidecar."
        )
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InputError(
            f"{side}: unknown column kind(s) {', '.join(map(repr, unknown))}; kinds are {', '.join(KINDS)}."
        )
    return kinds


def _few(names, k: int = 8) -> str:
    names = [str(n)[:40] for n in names]
    return ", ".join(names[:k]) + (f" ... ({len(names):,} in all)" if len(names) > k else "")


def column_kinds(design, names, X, nuisance=None) -> tuple[str, ...]:
    """The kind of each column of a design (a voxfit Design knows them; a design file's sidecar says them;
    otherwise they are guessed), with the columns matching the `nuisance` names or patterns
    (``"cosine*,motion_*"``, or a list) made ``nuisance``."""
    kinds = list(getattr(design, "kinds", None) or [])
    if not kinds and isinstance(design, (str, Path)):
        kinds = _read_sidecar(Path(design), names) or []
    if not kinds:
        kinds = [guess_kind(n, X[:, j]) for j, n in enumerate(names)]
    if len(str(nuisance or "")) > 4096:
        raise InputError(
            f"--nuisance-columns is {len(str(nuisance)):,} characters long; give at most 4096 (names or "
            'patterns such as "hp_*,motion*").'
        )
    patterns = [p.strip() for p in (nuisance.split(",") if isinstance(nuisance, str) else nuisance or []) if p.strip()]
    for pattern in patterns:
        hits = [j for j, n in enumerate(names) if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, list(names), n=5, cutoff=0.5)
            hint = f"; similar columns: {', '.join(close)}" if close else f" (columns: {', '.join(names)})"
            raise InputError(f"--nuisance-columns: no design column matches {pattern[:80]!r}{hint[:300]}.")
        for j in hits:
            if kinds[j] == "constant":
                raise InputError(f"--nuisance-columns: {names[j]!r} is a constant column, not a nuisance regressor.")
            kinds[j] = "nuisance"
    return tuple(kinds)
