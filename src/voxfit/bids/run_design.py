"""One run's design from the Run node of a BIDS Stats Model: pybids' variables and transformations, voxfit's
convolution, drifts and contrasts.

What goes where:

- **Transformations** are pybids' own (``bids.modeling.transformations.TransformerManager``, instruction by
  instruction), except the convolutions voxfit does itself: a ``Convolve`` instruction is taken out of pybids'
  list when no later instruction names its inputs or outputs (its output feeds Model.X directly) and its
  inputs are events (sparse variables); voxfit then convolves them as Model.HRF's variables are, with the
  instruction's Model, Derivative, Dispersion and FIRDelays; its derivatives' columns (``x_derivative``,
  ``x_dispersion``) are variables of their own, as pybids makes them, in the design where Model.X names them
  (by name or pattern: they come after the other variables). A ``Convolve`` of events (without derivatives or
  FIR) whose output (or input) a later instruction other than ``Select`` names is voxfit's too, made where it is
  in the list, as a time series at the TR that the later instructions take (pybids' own convolution samples each
  scan at its start, where voxfit samples at the slice-timing reference: two references in one design). One with
  derivatives or FIR, or whose input is a time series when it is reached, stays with pybids, and its result
  enters the design as pybids computed it (a note says so where the scans have a slice-timing reference). A
  trial type of the study that the run has no event of is a regressor of zeros: the instructions go on without
  it (:func:`_without_absent`), and what they would have made of it is absent too.
- **Trial types as variables**: the levels of the events' ``trial_type`` column are variables under their own
  names (``congruent``), as the specification's examples write Model.X; a level named as another variable (an
  events column: ds000001's ``pumps_demean`` is a trial type and its modulator's column) is made under pybids'
  Factor name, ``trial_type.pumps_demean``, the plain name staying the column's. pybids' ``Factor`` names every
  level ``trial_type.congruent``, and both spellings work. They follow the column as the
  instructions change it (a Replace or Filter of ``trial_type``), as Factor's levels do.
- **Convolution** (Model.HRF and voxfit's Convolve instructions) is ``voxfit.design.make_design``: SPM's
  microtime grid (`convolution="spm"`) or nilearn's (`"nilearn"`, equal to nilearn's
  ``make_first_level_design_matrix``). Events whose amplitude is n/a or 0 add nothing and are left out.
- **Time series** (confounds and other dense variables) are taken at the TR (pybids resamples those at another
  rate). n/a values at the start of a column (fMRIPrep's derivatives and framewise displacement have none for
  the first scan) are 0, as voxfit's ``read_confounds`` and nilearn's ``load_confounds`` have them; n/a
  anywhere else is refused. Events variables in Model.X that nothing convolves enter as pybids densifies them
  (boxcars at the TR).
- **Model.X**: names or Unix-glob patterns (``trans_*``, matched as pybids matches them) against the variables
  after the transformations; ``1`` is voxfit's ``constant`` column (last). A name the run lacks is refused,
  naming the node, the variable, the run's file and the variables there are.
- **High-pass filter**: SPM's discrete cosine set (``drift_<k>`` columns) with the period from the
  `high_pass` argument (the command line's; seconds or ``"0.008Hz"``), else Options.HighPassFilterCutoffHz,
  else SPM's 128 s; which one is recorded in ``settings["high_pass_from"]``.
- **Contrasts** (DummyContrasts first, in Model.X's order, then Contrasts in the node's order): weights over
  the design's columns, a variable's weight on its main column (HRF derivatives get 0), ``1`` on
  ``constant``; a DummyContrast of ``1`` is named ``intercept``, as pybids names it. An F contrast naming a
  FIR-convolved variable has one row per delay; a t contrast cannot name one.
"""

from __future__ import annotations

import copy
import fnmatch
import numbers
import re
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .._checks import check_scalar, repeated
from ..design import Design, make_design
from ..core.design import check_factor_memory
from ..design.events import cosine_drift, cosine_order, parse_high_pass
from ..exceptions import DesignWarning, InputError
from ..io.scans import natural_key
from .layout import value_text
from .spec import HRF_MODELS, hrf_settings, weight_value

__all__ = ["NodeContrast", "RunDesign", "run_design"]

SPM_HIGH_PASS_S = 128.0


@dataclass(frozen=True, eq=False)
class NodeContrast:
    """A contrast of a node over the design's columns: `weights` ``{column: weight}`` (t and pass), or a tuple
    of such rows (F); columns not named weigh 0."""

    name: str
    weights: dict | tuple
    test: str  # "t", "F" or "pass"

    def matrix(self, names) -> np.ndarray:
        """The weights over the columns `names`: a vector (t, pass) or a (rows, columns) matrix (F)."""
        rows = self.weights if isinstance(self.weights, tuple) else (self.weights,)
        index = {name: j for j, name in enumerate(names)}
        out = np.zeros((len(rows), len(names)))
        for i, row in enumerate(rows):
            for column, weight in row.items():
                out[i, index[column]] = weight
        return out if self.test == "F" else out[0]


@dataclass(frozen=True, eq=False)
class RunDesign:
    """One run's design from a Run node: the voxfit :class:`~voxfit.design.Design`, the node's contrasts over
    its columns, the variable each column came from (`sources`, ``{column: variable}``; drifts and the constant
    are their own) and the settings used (`settings`: hrf per variable, high-pass period and where it came from,
    convolution, TR, scans, the run's file, the instructions pybids applied)."""

    design: Design
    contrasts: tuple[NodeContrast, ...]
    sources: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def fit_contrasts(self) -> dict[str, np.ndarray]:
        """``{name: weights}`` over ``design.names`` (a vector for t and pass, a matrix for F), the form
        ``voxfit.fit_images(..., contrasts=...)`` takes (its names must be labels: letters and digits)."""
        return {c.name: c.matrix(self.design.names) for c in self.contrasts}


@dataclass(frozen=True)
class _Problem:
    node: dict
    where: str  # 'node "run", run <file>' for messages
    run_file: str
    tr: float
    n_scans: int
    convolution: str
    slice_time_ref: float | None
    high_pass_s: float
    high_pass_from: str
    unloaded: tuple[str, ...] = ()  # confounds columns not read (the node does not name them)
    max_memory: object = None  # the cap the design's factorisation must fit, checked before its drifts are made


def run_design(
    collection,
    node: dict,
    *,
    tr: float,
    n_scans: int,
    convolution: str = "spm",
    slice_time_ref: float | None = None,
    high_pass: float | str | None = None,
    unloaded=(),
    trial_types=(),
    max_memory=None,
) -> RunDesign:
    """The design and contrasts of one run for the Run `node` of a validated model (see the module docstring).

    `collection` is pybids' ``BIDSRunVariableCollection`` of the run (``graph.get_node(name).get_collections(
    subject=..., run=...)``: the events' sparse and the confounds' dense variables); it is not changed.
    `tr` and `n_scans` are the run's; `convolution` ``spm`` or ``nilearn`` (voxfit.design.make_design);
    `slice_time_ref` the fraction of the TR at which scans are sampled (make_design's); `high_pass` the
    high-pass period (seconds, or ``"0.008Hz"``) overriding the model's Options.HighPassFilterCutoffHz;
    `unloaded` the confounds table's columns left out of the collection (named in messages with its variables).
    `max_memory` the cap (``voxfit.fit``'s) the design's factorisation must fit, checked before its drifts are made
    (None: the memory there is; the convolution's own check is against the memory there is, as the cap's share for
    the interpreter would refuse every design under a cap below it, where the data's check says what to do).
    `trial_types`: the study's trial types (every run's); one that this run has no event of is left out of its
    Model.X and Model.HRF (as SPM and FSL leave an empty condition out; ``settings``'s ``left_out_of_x``), and a
    contrast naming it is not made for the run (pybids' and FitLins' rule: the run's other contrasts are; listed in
    ``settings``'s ``contrasts_not_made``: [contrast, name, trial type]; ``left_out_of_x``: [name, trial type]).
    Its regressor would be zeros, and so the Transformations take it (see :func:`_without_absent`; ``settings``'s
    ``instructions_pruned``: [index, instruction, names left out, their trial types, whether left out whole]):
    pybids' Factor and Convolve of every trial type, FitLins' usual model, refused a run without error trials.
    A pattern of Model.X that matches none of the run's variables adds nothing (``patterns_unmatched``). A Convolve
    with derivatives or FIR whose output a later instruction takes is pybids', sampled at each scan's start where
    the scans have a slice-timing reference (``convolved_at_scan_start``: its inputs).
    """
    problem = _check_arguments(collection, node, tr, n_scans, convolution, slice_time_ref, high_pass)
    problem = replace(problem, unloaded=tuple(unloaded), max_memory=max_memory)
    variables = collection.clone()
    made = _add_trial_types(variables, problem, trial_types)
    _warn_column_named_as_trial_type(node, made)
    lacking = [t for t in trial_types if t not in made.levels]  # (the study's trial types this run has no event of)
    transformed = _transform(variables, problem, lacking, made, trial_types)
    absent, pybids_instructions = transformed.absent, transformed.theirs
    hrfs = _take_convolutions(transformed.ours, variables, problem)
    derived = _derived_columns(hrfs, problem)
    x, left_out, unmatched = _expand_x(node["Model"]["X"], variables, problem, absent, derived)
    by_model = _hrf_variables(node, variables, x, problem, absent)
    twice = sorted(set(by_model) & set(hrfs))
    if twice:
        raise InputError(
            f'{problem.where}: "{twice[0]}" is convolved twice (Model.HRF.Variables and a Convolve instruction); '
            "convolve it once."
        )
    hrfs = by_model | hrfs
    design, sources = _build(variables, x, hrfs, problem, derived)
    contrasts, not_made = _contrasts(node, x, sources, hrfs, design, problem, absent)
    left_out = tuple((name, absent[name]) for name in left_out)
    not_made = tuple((contrast, name, absent[name]) for contrast, name in not_made)
    if (left_out or not_made) and not contrasts:
        missing = [*(t for _, t in left_out), *(t for _, _, t in not_made)]
        raise InputError(
            f'{problem.where}: the run has no event of "{missing[0]}", and none of the node\'s contrasts is left for '
            "it; leave the run out (the model's Input), or give the node a contrast of what the run has."
        )
    settings = {
        "node": node["Name"],
        "run": problem.run_file,
        "tr": problem.tr,
        "n_scans": problem.n_scans,
        "convolution": problem.convolution,
        "slice_time_ref": problem.slice_time_ref,
        "hrf": {
            name: {"model": model, "fir_delays": delays}
            for name, (model, delays) in {**hrfs, **transformed.in_chain}.items()
        },
        "high_pass_s": problem.high_pass_s,
        "high_pass_from": problem.high_pass_from,
        "pybids_instructions": pybids_instructions,
        "instructions_pruned": transformed.pruned,
        "contrasts_not_made": not_made,
        "left_out_of_x": left_out,
        "patterns_unmatched": unmatched,
        "after_the_run": transformed.late,
        "events_without_value": design.settings["events_without_value"],  # ([variable, events])
        "convolved_at_scan_start": _convolved_by_pybids(pybids_instructions, problem),
    }
    return RunDesign(design=design, contrasts=contrasts, sources=sources, settings=settings)


def _convolved_by_pybids(instructions: list[dict], problem: _Problem) -> list[str]:
    """The inputs of the Convolve instructions pybids applied (a later instruction takes their outputs), where the
    scans are sampled after their start (a slice-timing reference: fMRIPrep's StartTime): pybids samples at each
    scan's start, so those regressors are sampled at another time than voxfit's own in the same design (a hostile
    tester's Glover regressor: 0.652 against 0.464 at its peak)."""
    if not problem.slice_time_ref:
        return []
    return [str(name) for i in instructions if i["Name"] == "Convolve" for name in _listed(i.get("Input"))]


def _check_arguments(collection, node, tr, n_scans, convolution, slice_time_ref, high_pass) -> _Problem:
    if not (isinstance(node, dict) and node.get("Level") == "Run" and isinstance(node.get("Model"), dict)):
        level = node.get("Level") if isinstance(node, dict) else type(node).__name__
        raise InputError(f"run_design needs the Run node of a validated model (load_model); got {level!r}.")
    if not hasattr(collection, "variables") or not hasattr(collection, "clone"):
        raise InputError(
            f'node "{node["Name"]}": run_design needs a pybids BIDSRunVariableCollection; got '
            f"{type(collection).__name__}."
        )
    check_scalar(tr, "`tr`", numbers.Real, min_val=0, include_boundaries="neither", description="a positive number")
    check_scalar(n_scans, "`n_scans`", min_val=2)
    if convolution not in ("spm", "nilearn"):
        raise InputError(f"`convolution` must be spm or nilearn; got {convolution!r}.")
    run_file = _run_file(collection)
    options = node["Model"].get("Options") or {}
    if high_pass is not None:
        period, origin = parse_high_pass(high_pass), "argument"
    elif options.get("HighPassFilterCutoffHz") is not None:
        period, origin = 1.0 / float(options["HighPassFilterCutoffHz"]), "model"
    else:
        period, origin = SPM_HIGH_PASS_S, "default (SPM's 128 s)"
    return _Problem(
        node=node,
        where=f'node "{node["Name"]}", run {run_file}',
        run_file=run_file,
        tr=float(tr),
        n_scans=int(n_scans),
        convolution=convolution,
        slice_time_ref=slice_time_ref,
        high_pass_s=period,
        high_pass_from=origin,
    )


def _run_file(collection) -> str:
    for variable in collection.variables.values():
        info = getattr(variable, "run_info", None)
        if info:
            return str(info[0].image)
    entities = getattr(collection, "entities", {}) or {}
    return "_".join(f"{k}-{entities[k]}" for k in ("subject", "session", "task", "run") if k in entities) or "?"


@dataclass(frozen=True)
class _TrialTypes:
    """What :func:`_add_trial_types` found and made: the run's trial types (`levels`), the variables it made
    for them, by name (`variables`: not a level that a variable of its name already stood for), the trial types
    whose every event in the run starts at or after its end (`late`: not among `levels`), each event's weight
    from the modulation column, by the events' row (`weights`), and every name it has made (`seen`)."""

    levels: frozenset
    variables: dict
    late: frozenset
    weights: object  # pandas Series, or None without a trial_type column
    seen: frozenset


def _add_trial_types(variables, problem: _Problem, study=(), before: _TrialTypes | None = None) -> _TrialTypes:
    """Each level of the events' categorical ``trial_type`` as a sparse variable of its own name, unless a variable
    has that name: over every event of the table, 1 at its own and 0 at the others', as pybids' ``Factor`` makes
    ``trial_type.<level>`` (aligned with the events' other columns: ``Product`` with ``response_time`` was refused
    as misaligned). Numeric codes (1, 2: BIDS's trial types are labels) are levels too, named as
    :func:`~voxfit.bids.layout.value_text` names them. A trial type of the `study` whose every event in the run
    starts at or after the run's end (a run cut short while the task went on) adds nothing to it, and is one the
    run has no event of (its regressor is zeros: the run failed whole, its other trial types' maps lost), unless
    every trial type's are. `before`: what an earlier call made, the column having changed since (see
    :func:`_retake_trial_types`): the events' weights are its own, by row, and a name it made that is not a
    level's now (deleted, renamed or changed by an instruction) is not made again."""
    from bids.variables import SparseRunVariable

    trial_type = variables.variables.get("trial_type")
    if not isinstance(trial_type, SparseRunVariable) or trial_type.values.dtype.kind in "bc":
        return _TrialTypes(frozenset(), {}, frozenset(), None, frozenset())
    frame = trial_type.to_df(condition=True, entities=True).drop(columns="condition")
    names = frame["amplitude"].map(value_text)
    weights = _weights(variables, trial_type, before)
    levels = {level for level in names.dropna() if level not in ("", "n/a")}
    if before is None:
        _warn_repeated(frame, names, problem)
    end = problem.n_scans * problem.tr
    late = {t for t in levels & set(study) if (frame["onset"][names == t] >= end).all()}
    if late == levels:  # (every event after the end: onsets in other units, or another run's events, as the
        late = set()  # design's own refusal says)
    levels -= late
    made = {}
    for level in dict.fromkeys(names.dropna()):
        # (a level named as another variable, an events column ds000001's pumps_demean is both, is made under
        # pybids' Factor name: the plain name stays the column's)
        name = level if level not in variables.variables else f"trial_type.{level}"
        if name in variables.variables or level not in levels or (before is not None and name in before.seen):
            continue
        rows = frame.copy()
        rows["amplitude"] = (names == level).astype(float).to_numpy() * weights.to_numpy()
        variables.variables[name] = made[name] = SparseRunVariable(
            name=name, data=rows.reset_index(drop=True), run_info=trial_type.run_info, source="events"
        )
    seen = frozenset(made) | (before.seen if before is not None else frozenset())
    return _TrialTypes(frozenset(levels), made, frozenset(late), weights, seen)


def _retake_trial_types(variables, made: _TrialTypes, problem: _Problem, study) -> tuple[_TrialTypes, list[str]]:
    """The trial types' variables made again from the events' ``trial_type`` as an instruction left it (Replace,
    Filter, Assign...), where they were the column's before it (Model.X's "b" kept the "a" events a Replace
    {"a": "b"} had merged into it, exit 0): those `made` that no instruction has changed, renamed or deleted since
    are taken back, then made again from the column's levels as :func:`_add_trial_types` makes them, with the
    levels it has that were never made (a Replace's new names); any level of the column may now be late (a Replace
    renames a study's trial type). Returns what it made now, and the names taken back and not made again (the
    levels the instruction took out)."""
    untouched = {name for name, variable in made.variables.items() if variables.variables.get(name) is variable}
    for name in untouched:
        del variables.variables[name]
    reopened = replace(made, seen=made.seen - untouched)
    levels = {value_text(v) for v in variables.variables["trial_type"].values.dropna()}
    now = _add_trial_types(variables, problem, set(study) | levels, before=reopened)
    return now, sorted(n for n in untouched if n not in now.variables and n not in variables.variables)


def _weights(variables, trial_type, before: _TrialTypes | None):
    """Each event's weight from the modulation column (:func:`_modulation`), by the events' row: once the column has
    changed (a Filter keeps some rows), the rows it keeps take the weights they had (matching events to the
    modulation column again by onset and duration refused two events of one onset and duration)."""
    import pandas as pd

    index = trial_type.values.index
    if before is not None and before.weights is not None and index.isin(before.weights.index).all():
        return before.weights.reindex(index)
    return pd.Series(np.broadcast_to(_modulation(variables, trial_type), (len(index),)), index=index)


def _warn_column_named_as_trial_type(node: dict, made: _TrialTypes) -> None:
    """A warning where Model.X names a variable that is both an events column and a trial type (ds000001's
    pumps_demean): the column is taken, as BIDS Stats Models read a name, where the trial type may have been meant."""
    both = [name for name in made.variables if name.startswith("trial_type.")]  # (levels named as a column)
    named = [name for name in both if name.split(".", 1)[1] in node["Model"]["X"]]
    if named:
        plain = named[0].split(".", 1)[1]
        warnings.warn(
            f'node "{node["Name"]}": Model.X names "{plain}", both an events column and a trial type; the column is '
            f'taken, as BIDS Stats Models read a name: name "{named[0]}" for the trial type\'s regressor.',
            DesignWarning,
            stacklevel=3,
        )


def _warn_repeated(frame, names, problem: _Problem) -> None:
    """A warning where events of one trial type repeat another's onset and duration (an events log exported twice):
    summed without a word, as SPM and nilearn sum them (nilearn warns too)."""
    rows = frame[["onset", "duration"]].assign(name=names.to_numpy())
    again = rows[rows.duplicated(["name", "onset", "duration"])]
    if len(again):
        first = again.iloc[0]
        warnings.warn(
            f"{problem.where}: {len(again)} event(s) repeat another's trial type, onset and duration (the first: "
            f'"{first["name"]}" at {first["onset"]:g} s); their regressors are summed, as SPM and nilearn do: check '
            "the events for rows given twice.",
            DesignWarning,
            stacklevel=3,
        )


def _modulation(variables, trial_type) -> np.ndarray | float:
    """Each event's amplitude from the events' ``modulation`` column (BIDS; n/a is 1), as voxfit fit --events and
    nilearn read it: the trial types' regressors were 1 at every event whatever it said. 1 without the column."""
    import pandas as pd

    modulation = variables.variables.get("modulation")
    if modulation is None:
        return 1.0
    events = trial_type.to_df()[["onset", "duration"]].reset_index(drop=True)
    given = modulation.to_df()[["onset", "duration", "amplitude"]].reset_index(drop=True)
    cells = given["amplitude"].map(lambda v: np.nan if isinstance(v, str) and v.strip().lower() in ("n/a", "") else v)
    numbers = pd.to_numeric(cells, errors="coerce")
    words = numbers.isna() & cells.notna()
    if words.any():
        word = cells[words].iloc[0]
        raise InputError(f"the events' modulation {word!r} is not a number; give numbers, or n/a for 1.")
    given["amplitude"] = numbers.astype(float)
    if len(given) == len(events):  # (a row for every event: row by row, n/a 1)
        values = given["amplitude"].to_numpy()
        return np.where(np.isfinite(values), values, 1.0)
    # (pybids leaves out a column's n/a cells: the others matched to the events by onset and duration, where
    # that is one event)
    if given.duplicated(["onset", "duration"]).any() or events.duplicated(["onset", "duration"]).any():
        raise InputError(
            "the events' modulation column has n/a cells beside events of the same onset and duration, which "
            "cannot be told apart; give each event's modulation (1 for none)."
        )
    values = events.merge(given, on=["onset", "duration"], how="left")["amplitude"].to_numpy(dtype=float)
    return np.where(np.isfinite(values), values, 1.0)


# -- transformations ----------------------------------------------------------------------------------------------


def _mentions(instruction: dict, names) -> bool:
    """Whether any value of the instruction (its inputs, outputs, other variables) names or matches one of `names`."""
    values = []
    for key, value in instruction.items():
        if key != "Name":
            values += value if isinstance(value, list) else [value]
    texts = [v for v in values if isinstance(v, str)]
    return any(t == n or (re.search(r"[*?\[]", t) and fnmatch.fnmatchcase(n, t)) for t in texts for n in names)


def _takeable(instructions: list[dict], k: int) -> bool:
    """Whether the Convolve instructions[k] feeds Model.X directly: no later instruction but a Select that keeps
    all its outputs (changing nothing of them) names its inputs or outputs. (A Select that drops one drops the
    events too, which voxfit's convolution, made after the instructions, then lacked: refused, exit 2.)"""
    instruction = instructions[k]
    inputs = _listed(instruction["Input"])
    outputs = _listed(instruction.get("Output")) or inputs
    later = instructions[k + 1 :]
    for select in (i for i in later if i["Name"] == "Select"):
        kept = _listed(select.get("Input"))
        if not all(any(_glob(pattern, name) for pattern in kept) for name in outputs):
            return False
    return not any(_mentions(i, inputs + outputs) for i in later if i["Name"] != "Select")


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@dataclass(frozen=True)
class _Transformed:
    """What :func:`_transform` did: voxfit's Convolve instructions of Model.X's inputs (`ours`, made in the design),
    the instructions pybids applied (`theirs`), the names of regressors of zeros there are then (`absent`: {name:
    trial type}), [index, instruction, names left out, their trial types, whether left out whole] for each
    instruction that left any out (`pruned`), and ``{output: (voxfit hrf, 1)}`` of the Convolve instructions voxfit
    made in the chain (`in_chain`: their outputs are time series at the TR that later instructions took), and the
    trial types whose events all start after the run's end (`late`)."""

    ours: list
    theirs: list
    absent: dict
    pruned: list
    in_chain: dict
    late: list


def _transform(variables, problem: _Problem, lacking, levels: _TrialTypes, study) -> _Transformed:
    """pybids' transformations, one instruction at a time so that a failure names its instruction, but for the
    Convolve instructions voxfit does (see the module docstring; their inputs events when they are reached), each
    without the regressors of zeros of the `lacking` trial types (the study's that the run has no event of, under
    their own names, and as pybids' Factor names them once a Factor of trial_type is applied; see
    :func:`_without_absent`). The trial types' variables (`levels`, made by :func:`_add_trial_types`) follow the events'
    ``trial_type`` as each instruction leaves it (:func:`_retake_trial_types`; a level it took out is then a
    lacking one); a trial type of the `study` whose events all start after the run's end is a lacking one, and
    pybids' Factor levels of it are taken out."""
    from bids.modeling.transformations import TransformerManager

    manager = TransformerManager("pybids-transforms-v1", keep_history=False)
    instructions = list((problem.node.get("Transformations") or {}).get("Instructions") or [])
    ours, theirs, pruned, absent, in_chain = [], [], [], {t: t for t in lacking}, {}
    for k, instruction in enumerate(instructions):
        now = {name: t for name, t in absent.items() if name not in variables.variables}
        applied, made, gone = _without_absent(instruction, now)
        absent.update(made)
        if applied is not instruction:
            pruned.append([k, instruction["Name"], gone, sorted({now[g] for g in gone}), applied is None])
        if applied is None:
            continue
        if applied["Name"] == "Convolve":
            inputs = [m for entry in _listed(applied["Input"]) for m in _matches(entry, variables)]
            events = all(name in variables.variables and _is_sparse(variables.variables[name]) for name in inputs)
            if events and _takeable(instructions, k):
                ours.append(applied)
                continue
            if events and _convolve_setting(applied, problem) in (("spm", 1), ("glover", 1)):
                in_chain.update(_convolve_in_chain(applied, inputs, variables, problem))
                continue
        theirs.append(applied)
        if applied["Name"] == "Factor" and "trial_type" in _listed(applied.get("Input")):
            absent.update({f"trial_type.{t}": t for t in lacking})
        trial_type = variables.variables.get("trial_type")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*(sparse|dense).*", category=UserWarning)
                manager.transform(variables, [copy.deepcopy(_numbers_too(applied))])
        except Exception as exc:  # pybids raises ValueError, KeyError, TypeError...: all the model's or the data's
            detail = str(exc).strip().rstrip(".") or type(exc).__name__
            lacks = (  # (a regressor of zeros that reached pybids: one this instruction cannot do without)
                f'; the run has no "{now[gone[0]]}" event, which its {instruction["Name"]} instruction cannot do '
                "without: leave the run out (the model's Input)"
                if gone and applied is instruction
                else ""
            )
            unnamed = re.search(r"name '([^']+)' is not defined", detail)
            if instruction["Name"] == "Filter" and unnamed and unnamed.group(1) in variables.variables:
                lacks = (  # (pybids' words name a variable the run has: the Query sees only Input and By)
                    f'; a Filter\'s Query sees its Input and the variables of its "By": add "By": '
                    f'["{unnamed.group(1)}"]'
                )
            if instruction["Name"] == "Scale" and "truth value of a Series is ambiguous" in detail:
                lacks = (  # (pybids 0.22 tests `data.nunique() == 1` on a time series' DataFrame)
                    "; pybids' Scale fails on every time series (confounds, convolved regressors): Demean it "
                    "instead, or scale it before convolving"
                )
            raise InputError(
                f"{problem.where}: Transformations.Instructions[{k}] ({instruction['Name']}) failed in pybids: "
                f"{detail}{lacks}; the run's variables are {_names(variables, problem)}."
            ) from None
        changed = variables.variables.get("trial_type")  # (pybids replaces a variable it changes; Factor drops it)
        if changed is not None and changed is not trial_type:
            levels, gone = _retake_trial_types(variables, levels, problem, study)
            for name in [*gone, *levels.late]:  # (both spellings: a Factor after it makes neither)
                absent.update({name: name, f"trial_type.{name}": name})
        if applied["Name"] == "Factor" and "trial_type" in _listed(applied.get("Input")):
            _modulate_levels(variables, trial_type, levels.weights)
            for t in levels.late:  # (pybids made them of events after the run's end: zeros)
                variables.variables.pop(f"trial_type.{t}", None)
                absent[f"trial_type.{t}"] = t
    absent = {name: t for name, t in absent.items() if name not in variables.variables}
    return _Transformed(ours, theirs, absent, pruned, in_chain, sorted(levels.late))


def _numbers_too(instruction: dict) -> dict:
    """A Replace instruction with its keys that read as numbers given as numbers too: a JSON object's keys are
    text, which pandas' replace never matches to a numeric column's values, and never to onsets and durations
    (``{"2": 0.5}`` of durations, ``{"1": 0}`` of a column of 1, 2 and 3 changed nothing, exit 0; a tester's)."""
    replace = instruction.get("Replace")
    if instruction["Name"] != "Replace" or not isinstance(replace, dict):
        return instruction
    numbers = {}
    for key, value in replace.items():
        try:
            number = float(key)
        except (TypeError, ValueError):
            continue
        if np.isfinite(number):
            numbers.setdefault(number, value)
    return {**instruction, "Replace": {**replace, **numbers}} if numbers else instruction


def _modulate_levels(variables, trial_type, weights) -> None:
    """pybids' Factor of trial_type makes each level's variable 1 at its events (or its Constraint's code), whatever
    the events' modulation column says: each event's value is scaled by its weight (`weights`, by the events' row),
    so that ``trial_type.face`` is the regressor ``face`` is (one model, one design, whichever spelling)."""
    if weights is None or bool((weights == 1.0).all()):
        return
    for name, variable in variables.variables.items():
        if not name.startswith("trial_type."):
            continue
        if not np.array_equal(variable.onset, trial_type.onset):  # (Factor keeps the events, in their order)
            raise RuntimeError(f"pybids' Factor made {name} of other events than trial_type's")
        variable.values = variable.values * weights.to_numpy()


def _convolve_in_chain(instruction: dict, inputs: list[str], variables, problem: _Problem) -> dict:
    """A Convolve of events (one HRF, no derivatives) that later instructions take, made by voxfit where it stands:
    each input convolved as Model.HRF's variables are (the slice-timing reference kept), put in the collection as
    a time series at the TR under its output's name (the input's own without Output), as pybids' Convolve leaves
    its result. Returns ``{output: (hrf, 1)}``."""
    from bids.variables import DenseRunVariable

    setting = _convolve_setting(instruction, problem)
    pairs = list(zip(inputs, _convolve_outputs(instruction, inputs, problem)))
    sources = {target: variables.variables[source] for source, target in pairs}
    piece = _convolved(
        {target: _events(sources[target], source, problem) for source, target in pairs}, setting, problem
    )
    index = {name: j for j, name in enumerate(piece.names)}  # (its columns, and a constant)
    for target, variable in sources.items():
        variables.variables[target] = DenseRunVariable(
            name=target,
            values=piece.X[:, index[target] : index[target] + 1],
            run_info=variable.run_info,
            source=variable.source,
            sampling_rate=1 / problem.tr,
        )
    return dict.fromkeys(sources, setting)


def _convolved(conditions: dict, setting: tuple[str, int], problem: _Problem):
    """`conditions` (name: events) convolved with the (voxfit hrf, fir delays) `setting`, sampled at the run's
    scans (its slice-timing reference): the design of those columns alone (voxfit.design.make_design)."""
    hrf, delays = setting
    return make_design(
        conditions,
        problem.tr,
        problem.n_scans,
        hrf=hrf,
        drift="none",
        fir_delays=delays,
        convolution=problem.convolution,
        **_sampling(problem),
    )


# What an instruction makes of an input that is a regressor of zeros (a trial type the run has no event of, or
# what an instruction made of one), and so what is left of the instruction without it: an output for each input,
# itself left out, zeros (and for a Convolve its derivatives' and FIR delays' outputs); nothing added (Sum, Or);
# an output of zeros, left out (Product, And); nothing changed (Select keeps what it names, Delete removes it).
# Orthogonalizing against zeros changes nothing. Threshold and Replace can make zeros something else, and pybids
# refuses them, as any other instruction, where one names such a regressor.
_EACH_INPUT = frozenset(
    {"Convolve", "Copy", "Demean", "DropNA", "Filter", "Lag", "Orthogonalize", "Rename", "Scale", "ToDense"}
)
_ADDING, _ZEROING, _KEEPING = frozenset({"Sum", "Or"}), frozenset({"Product", "And"}), frozenset({"Select", "Delete"})
_UNPAIRED = frozenset({"Convolve", "Orthogonalize"})  # (pybids pairs the others' list parameters with their inputs)


def _without_absent(instruction: dict, absent: dict) -> tuple[dict | None, dict, list]:
    """`instruction` without the regressors of zeros `absent` names (``{name: trial type}``; see above): None where
    nothing is left to do, the instruction itself where it names none or pybids is to refuse it; the names of the
    outputs it would have made of them (``{name: trial type}``, absent in turn); and the names of `absent` it
    names."""
    name, inputs = instruction["Name"], _listed(instruction.get("Input"))
    other = _listed(instruction.get("Other")) if name == "Orthogonalize" else []
    named = inputs + other + _listed(instruction.get("Target"))
    gone = [n for n in named if isinstance(n, str) and n in absent]
    if not gone:
        return instruction, {}, gone
    kept = [i for i in inputs if i not in absent]
    outputs = _listed(instruction.get("Output"))
    if name in _KEEPING:
        return ({**instruction, "Input": kept} if kept or name == "Select" else None), {}, gone
    if name in _ADDING | _ZEROING:
        if name in _ZEROING or not kept:
            return None, dict.fromkeys(outputs, absent[gone[0]]), gone
        weights = _listed(instruction.get("Weights"))
        pruned = {**instruction, "Input": kept}
        if len(weights) == len(inputs):
            pruned["Weights"] = [w for i, w in zip(inputs, weights) if i not in absent]
        return pruned, {}, gone
    if name not in _EACH_INPUT or (outputs and len(outputs) != len(inputs)):
        return instruction, {}, gone
    made = {
        n: absent[i]
        for i, o in zip(inputs, outputs or [None] * len(inputs))
        if i in absent
        for n in _outputs(instruction, i, o)
    }
    pruned = {**instruction, "Input": kept}
    if outputs:
        pruned["Output"] = [o for i, o in zip(inputs, outputs) if i not in absent]
    if name not in _UNPAIRED:
        for key, value in instruction.items():
            if key not in ("Name", "Input", "Output") and isinstance(value, list) and len(value) == len(inputs):
                pruned[key] = [v for i, v in zip(inputs, value) if i not in absent]
    if other:
        pruned["Other"] = [o for o in other if o not in absent]
        if not pruned["Other"]:  # against zeros only: the inputs as they are
            pruned = {"Name": "Copy", "Input": kept, "Output": pruned["Output"]} if outputs else None
    return (pruned if kept else None), made, gone


def _outputs(instruction: dict, source: str, output: str | None) -> list[str]:
    """The names of the variables an instruction makes of input `source` (`output`: its Output, if given). pybids'
    Convolve names its derivatives' (``_derivative``, ``_dispersion``) and, for FIR, every delay's regressor
    (``_<delay>``) after the input, and gives the Output name to the first of them only."""
    if instruction["Name"] != "Convolve":
        return [output or source]
    if str(instruction.get("Model", "")).lower() == "fir":
        names = [f"{source}_{int(d)}" for d in _listed(instruction.get("FIRDelays"))]
    else:
        extra = [s for s, key in (("derivative", "Derivative"), ("dispersion", "Dispersion")) if instruction.get(key)]
        names = [source, *(f"{source}_{s}" for s in extra)]
    return [output, *names[1:]] if output is not None and names else names


def _names(variables, problem: _Problem, limit: int = 30) -> str:
    names = list(variables.variables) + [c for c in problem.unloaded if c not in variables.variables]
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# -- Model.X and convolution --------------------------------------------------------------------------------------


def _expand_x(
    X: list, variables, problem: _Problem, absent: dict, derived: dict
) -> tuple[list, tuple[str, ...], tuple[str, ...]]:
    """Model.X with its patterns expanded against the variables (in the variables' order, then the `derived`
    columns'), ``1`` kept; the names of trial types it takes that the run has no event of (`absent`),
    left out; and its patterns that match none of the run's variables, which add nothing (as pybids expands them:
    FitLins' "motion_outlier*", whose columns fMRIPrep writes only for a run with outliers, failed every run
    without)."""
    pool = [*variables.variables, *derived]  # (pybids' Convolve adds its derivatives after the collection's variables)
    named = set(pool)
    out, left_out, unmatched = [], [], []
    for entry in X:
        pattern = False
        if entry == 1 and not isinstance(entry, bool):
            found = [1]
        elif entry not in named and re.search(r"[*?\[]", entry):  # (pybids' Split names hold [])
            # (in their names' order, numbers by value: pybids' collection gave rot_* shuffled, a tester's)
            pattern, found = True, sorted((n for n in pool if fnmatch.fnmatchcase(n, entry)), key=natural_key)
        else:
            found = [entry] if entry in named else []
        if not found and entry in absent:
            left_out.append(entry)
        elif not found and pattern:
            unmatched.append(entry)
        elif not found:
            raise InputError(
                f'{problem.where}: Model.X names "{entry}", but the run has no variable "{entry}"; its variables are '
                f"{_names(variables, problem)}."
            )
        out += [f for f in found if f not in out]
    return out, tuple(left_out), tuple(unmatched)


def _take_convolutions(instructions: list[dict], variables, problem: _Problem) -> dict:
    """``{variable: (voxfit hrf, fir delays)}`` for voxfit's Convolve instructions, their inputs copied to their
    outputs' names (in place without Output)."""
    hrfs = {}
    for instruction in instructions:
        setting = _convolve_setting(instruction, problem)
        inputs = [m for entry in _listed(instruction["Input"]) for m in _matches(entry, variables)]
        for source, target in zip(inputs, _convolve_outputs(instruction, inputs, problem)):
            if source not in variables.variables:
                raise InputError(
                    f'{problem.where}: Convolve names "{source}", which the run does not have; its variables are '
                    f"{_names(variables, problem)}."
                )
            if target != source:
                variable = variables.variables[source].clone()
                variable.name = target
                variables.variables[target] = variable
            hrfs[target] = setting
    return hrfs


def _convolve_outputs(instruction: dict, inputs: list[str], problem: _Problem) -> list[str]:
    """The names a Convolve instruction gives its convolved `inputs`: its Output, one per input, else their own."""
    outputs = _listed(instruction.get("Output")) or inputs
    if len(outputs) != len(inputs):
        raise InputError(
            f"{problem.where}: Convolve has {len(inputs)} inputs ({', '.join(inputs)}) but {len(outputs)} outputs; "
            "give one Output per Input."
        )
    return outputs


def _hrf_variables(node: dict, variables, x: list, problem: _Problem, absent: dict) -> dict:
    """``{variable: (voxfit hrf, fir delays)}`` for Model.HRF's variables (names or patterns over Model.X), but
    trial types the run has no event of (`absent`)."""
    hrf = node["Model"].get("HRF")
    if hrf is None:
        return {}
    setting = hrf_settings(hrf)
    hrfs = {}
    for entry in hrf["Variables"]:
        names = [n for n in x if isinstance(n, str) and (n == entry or fnmatch.fnmatchcase(n, entry))]
        if not names and entry in absent:
            continue
        if not names:
            raise InputError(
                f'{problem.where}: Model.HRF.Variables names "{entry}", which the run\'s design does not have; its '
                f"variables are {_names(variables, problem)}."
            )
        hrfs.update(dict.fromkeys(names, setting))
    return hrfs


def _matches(entry: str, variables) -> list[str]:
    if entry not in variables.variables and re.search(r"[*?\[]", entry):
        return [name for name in variables.variables if fnmatch.fnmatchcase(name, entry)]
    return [entry] if entry in variables.variables else [entry]


def _convolve_setting(instruction: dict, problem: _Problem) -> tuple[str, int]:
    from bids.utils import convert_JSON

    args = convert_JSON(instruction)
    family = str(args.get("model", "spm")).lower()
    name = (
        family + ("+derivative" if args.get("derivative") else "") + ("+dispersion" if args.get("dispersion") else "")
    )
    if name not in HRF_MODELS.values():
        raise InputError(
            f'{problem.where}: Convolve with Model "{args.get("model", "spm")}", Derivative '
            f"{bool(args.get('derivative'))} and Dispersion {bool(args.get('dispersion'))} is not an HRF voxfit "
            f"builds ({', '.join(HRF_MODELS.values())})."
        )
    if name != "fir":
        return name, 1
    delays = args.get("fir_delays")
    if not (isinstance(delays, list) and delays and delays == list(range(len(delays)))):
        raise InputError(
            f"{problem.where}: Convolve with the fir model needs FIRDelays [0, 1, ..., k-1] (one-TR windows); "
            f"got {delays!r}."
        )
    return name, len(delays)


def _suffixes(hrf: str, fir_delays: int, convolution: str) -> list[str]:
    """The column suffixes make_design gives a condition convolved with `hrf`."""
    if hrf == "fir":
        return [f"_delay_{k}" if convolution == "nilearn" else f"_delay{k}" for k in range(fir_delays)]
    return [""] + (["_derivative"] if "derivative" in hrf else []) + (["_dispersion"] if "dispersion" in hrf else [])


def _events(variable, name: str, problem: _Problem) -> dict:
    from bids.variables import SparseRunVariable

    if not isinstance(variable, SparseRunVariable):
        raise InputError(
            f'{problem.where}: "{name}" is a time series, not events; voxfit convolves events (onset, duration, '
            "amplitude): leave it out of Model.HRF.Variables, or convolve it with a Convolve instruction that a "
            "later instruction uses (pybids then convolves it)."
        )
    values = variable.values
    if getattr(values, "ndim", 1) == 2 and values.shape[1] == 1:  # (pybids' Orthogonalize of events gives a frame)
        values = values.iloc[:, 0]
    if values.dtype.kind not in "bifc":
        import pandas as pd

        given = values.dropna()
        words = given[pd.to_numeric(given, errors="coerce").isna()].unique()
        if len(words) < len(given.unique()) / 2:  # (mostly numbers: a response time with "missed", a decimal comma)
            raise InputError(
                f'{problem.where}: "{name}" holds numbers and text ({", ".join(map(repr, words[:5]))}); write n/a for '
                "a missing value, and numbers with a decimal point, in the run's events.tsv."
            )
        raise InputError(
            f'{problem.where}: "{name}" holds categories ({", ".join(map(str, given.unique()[:5]))}), not '
            f'amplitudes; name one of its levels, or Factor it first ("{name}.<level>").'
        )
    amplitude = np.asarray(values, dtype=float)
    keep = np.isfinite(amplitude) & (amplitude != 0)
    if not keep.any():
        raise InputError(
            f'{problem.where}: "{name}" has no event in this run (none with an amplitude other than 0 or n/a), '
            "so its regressor would be empty; leave the run out or the variable out of Model.X."
        )
    return {
        "onset": np.asarray(variable.onset, dtype=float)[keep],
        "duration": np.asarray(variable.duration, dtype=float)[keep],
        "modulation": amplitude[keep],
    }


def _is_sparse(variable) -> bool:
    from bids.variables import SparseRunVariable

    return isinstance(variable, SparseRunVariable)


def _series(variable, name: str, problem: _Problem) -> np.ndarray:
    """A variable as one value per scan: dense ones at the TR (pybids resamples), sparse ones densified by pybids;
    leading n/a are 0, n/a elsewhere refused."""
    from bids.variables import DenseRunVariable

    rate = 1.0 / problem.tr
    if not isinstance(variable, DenseRunVariable):
        variable = variable.to_dense(rate)
    if abs(variable.sampling_rate - rate) > 1e-9 * rate:
        variable = variable.resample(rate)
    values = np.asarray(variable.values, dtype=float).ravel()
    if values.size != problem.n_scans:
        raise InputError(
            f'{problem.where}: "{name}" has {values.size} values at the TR but the run has {problem.n_scans} scans; '
            "check the confounds file belongs to this run."
        )
    missing = ~np.isfinite(values)
    if missing.all():  # (every n/a is leading, and the message said only leading n/a are allowed)
        raise InputError(
            f'{problem.where}: "{name}" is n/a in every scan: it holds no value to fit; leave it out of Model.X.'
        )
    if missing.any():
        leading = int(np.argmin(missing))
        if missing[leading:].any():
            row = leading + int(np.argmax(missing[leading:])) + 1
            raise InputError(
                f'{problem.where}: "{name}" has a missing value (n/a) at scan {row}; only leading n/a (as in '
                "fMRIPrep's derivatives) are allowed: fill them with a Replace transformation or leave the column out."
            )
        values = np.where(missing, 0.0, values)
    return values


def _sampling(problem: _Problem) -> dict:
    """make_design's arguments for scans sampled at `slice_time_ref` of the TR: nilearn's own; on SPM's grid,
    the microtime resolution (16, or the first above that puts the time on a bin, up to 1024: fMRIPrep's
    StartTime has milliseconds) and the bin (SPM's fMRI_T, fMRI_T0), the nearest of 16 where none does."""
    s = problem.slice_time_ref
    if s is None or problem.convolution == "nilearn":
        return {"slice_time_ref": s}
    resolution = next((T for T in range(16, 1025) if abs(s * T - round(s * T)) < 1e-6), 16)
    return {"microtime_resolution": resolution, "microtime_onset": 1 + min(resolution - 1, round(s * resolution))}


def duplicated_columns(candidates: np.ndarray, columns: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Which of the `candidates` columns (n, k) one of `columns` (n, m) holds already: the absolute cosine of
    their angle, about their means, within `tol` of 1 (fMRIPrep's cosine regressors against voxfit's drift: the
    same discrete cosine basis, scaled otherwise)."""
    if not candidates.size or not columns.size:
        return np.zeros(candidates.shape[1], dtype=bool)
    a = candidates - candidates.mean(axis=0)
    b = columns - columns.mean(axis=0)
    norms = np.linalg.norm(a, axis=0)[:, None] * np.linalg.norm(b, axis=0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.abs(a.T @ b) / norms
    return (np.nan_to_num(cosines) > 1 - tol).any(axis=1)


def _derived_columns(convolved: dict, problem: _Problem) -> dict[str, str]:
    """``{column: variable}`` of the derivatives' columns of voxfit's Convolve instructions (`convolved`:
    :func:`_take_convolutions`; ``x_derivative``, ``x_dispersion``): variables of their own, as pybids' Convolve
    makes them, which Model.X takes or leaves (Model.HRF's derivatives, its model's basis, come with their
    variable; FIR delays with theirs)."""
    return {
        name + suffix: name
        for name, (hrf, delays) in convolved.items()
        if hrf != "fir"
        for suffix in _suffixes(hrf, delays, problem.convolution)[1:]
    }


def _build(variables, x: list, hrfs: dict, problem: _Problem, derived: dict) -> tuple[Design, dict]:
    """The design: Model.X's variables in order (one of Model.HRF with its derivative or delay columns; the
    `derived` columns of a Convolve where Model.X names them), the cosine drifts, the constant (when X has 1)."""
    groups: dict[tuple, dict] = {}
    unvalued = []  # (the events of a convolved variable whose value is n/a: left out, as 0, where a note says so)
    for name in x:
        source = derived.get(name, name)
        if name != 1 and source in hrfs:
            groups.setdefault(hrfs[source], {})[source] = _events(variables.variables[source], source, problem)
            count = int(np.isnan(np.asarray(variables.variables[source].values, dtype=float)).sum())
            if count and [source, count] not in unvalued:
                unvalued.append([source, count])
    columns: dict[str, tuple[np.ndarray, str, str]] = {}  # column -> (values, kind, source variable)
    for (hrf, delays), conditions in groups.items():
        piece = _convolved(conditions, (hrf, delays), problem)
        index = {n: j for j, n in enumerate(piece.names)}
        for name in conditions:
            for suffix in _suffixes(hrf, delays, problem.convolution):
                j = index[name + suffix]
                columns[name + suffix] = (piece.X[:, j], piece.kinds[j], name)
    names, kinds, values, sources = [], [], [], {}
    taken = set(derived.values())  # (variables whose derivatives are columns of their own)
    for name in x:
        if name == 1:
            continue
        if name in derived:
            own = [name]
        elif name in hrfs:
            own = [name] if name in taken else [c for c, (_, _, source) in columns.items() if source == name]
        else:
            variable = variables.variables[name]
            kind = "condition" if getattr(variable, "source", "") == "events" else "confound"
            if _is_sparse(variable):
                warnings.warn(
                    f'{problem.where}: "{name}" (events) is in Model.X but nothing convolves it, so it enters as '
                    "boxcars at the TR; list it in Model.HRF.Variables to model the hemodynamic response.",
                    DesignWarning,
                    stacklevel=3,
                )
            columns[name] = (_series(variable, name, problem), kind, name)
            own = [name]
        for column in own:
            if column in sources:
                raise InputError(
                    f'{problem.where}: the design would have two columns named "{column}"; rename one of the '
                    "variables (a Rename transformation)."
                )
            names.append(column)
            kinds.append(columns[column][1])
            values.append(columns[column][0])
            sources[column] = name  # (a derivative's column its own variable: contrasts name it)
    # the design's size before its drifts are made (their number from the run's length and TR, both the files'
    # claims): at least the larger of the model's columns and the drifts, whichever of the drifts the model holds
    n_drifts = cosine_order(problem.n_scans, problem.tr, problem.high_pass_s)
    check_factor_memory(problem.n_scans, max(len(values), n_drifts) + (1 in x), problem.max_memory)
    # a drift column the model's columns hold already (fMRIPrep's cosine00, ...: FitLins' and nilearn's way with
    # load_confounds) is left out: beside it the design was singular to rounding (correlation 0.9999999999987)
    drifts = cosine_drift(problem.n_scans, problem.tr, problem.high_pass_s, n_drifts)
    held = duplicated_columns(drifts, np.column_stack(values) if values else np.zeros((problem.n_scans, 0)))
    drifts = drifts[:, ~held]
    for k in range(drifts.shape[1]):
        names.append(f"drift_{k + 1}")
        kinds.append("drift")
        values.append(drifts[:, k])
        sources[f"drift_{k + 1}"] = "high-pass filter"
    if 1 in x:
        names.append("constant")
        kinds.append("constant")
        values.append(np.ones(problem.n_scans))
        sources["constant"] = 1
    else:
        warnings.warn(
            f"{problem.where}: Model.X has no 1, so the design has no constant column; add 1 to Model.X unless "
            "the data are centred.",
            DesignWarning,
            stacklevel=3,
        )
    clash = repeated(names)
    if clash:
        raise InputError(
            f'{problem.where}: the design would have two columns named "{clash[0]}" (a variable named like a '
            "drift or the constant); rename the variable (a Rename transformation)."
        )
    hrf_of = {name: model for name, (model, _) in hrfs.items()}
    settings = {
        "hrf": hrf_of,
        "drift": "cosine",
        "drifts_held": int(held.sum()),  # (drift columns Model.X's own held, left out)
        "high_pass_s": problem.high_pass_s,
        "tr": problem.tr,
        "n_scans": problem.n_scans,
        "convolution": problem.convolution,
        "events_without_value": unvalued,
    }
    X = np.column_stack(values) if values else np.zeros((problem.n_scans, 0))
    return Design(X=X, names=tuple(names), kinds=tuple(kinds), tr=problem.tr, settings=settings), sources


# -- contrasts ----------------------------------------------------------------------------------------------------


def _contrasts(node: dict, x: list, sources: dict, hrfs: dict, design: Design, problem: _Problem, absent: dict):
    """The node's contrasts over the run's columns, and ``(name, condition)`` of those not made: a condition of
    `absent`, a trial type this run has no event of (another name that is no column is refused)."""
    specs = []
    dummy = node.get("DummyContrasts")
    if dummy is not None:
        listed = dummy.get("Contrasts")
        listed = x if listed is None else [*listed, *([1] if "intercept" in listed else [])]  # (1: pybids' intercept)
        chosen = [n for n in x if n in listed or any(_glob(p, n) for p in listed)]
        for name in chosen:
            specs.append(("intercept" if name == 1 else name, [name], [1], dummy["Test"]))
    for con in node.get("Contrasts") or []:
        specs.append((con["Name"], con["ConditionList"], con["Weights"], con["Test"]))
    columns_of: dict = {}
    for column, source in sources.items():
        columns_of.setdefault(source, []).append(column)
    out, not_made = [], []
    for name, conditions, weights, test in specs:
        missing = [c for c in conditions if c not in columns_of and c in absent]
        if missing:
            not_made.append((name, missing[0]))
            continue
        rows = weights if weights and isinstance(weights[0], list) else [weights]
        built = []
        for row in rows:
            mains = [_main_columns(c, columns_of, hrfs, problem, name, test) for c in conditions]
            for k in range(max(len(m) for m in mains)):  # FIR variables (F only): one row per delay
                built.append({m[min(k, len(m) - 1)]: weight_value(w) for m, w in zip(mains, row)})
        out.append(NodeContrast(name=name, weights=tuple(built) if test == "F" else built[0], test=test))
    return tuple(out), tuple(not_made)


def _glob(pattern, name) -> bool:
    return isinstance(pattern, str) and isinstance(name, str) and fnmatch.fnmatchcase(name, pattern)


def _main_columns(condition, columns_of: dict, hrfs: dict, problem: _Problem, contrast: str, test: str) -> list[str]:
    """The column(s) a contrast's condition weighs: a variable's first column (its FIR delays for an F)."""
    if condition not in columns_of:
        raise InputError(
            f'{problem.where}: contrast "{contrast}" names "{condition}", which is not a column of the run\'s '
            f"design ({', '.join(map(str, columns_of))})."
        )
    columns = columns_of[condition]
    if condition in hrfs and hrfs[condition][0] == "fir":
        if test != "F":
            raise InputError(
                f'{problem.where}: contrast "{contrast}" ({test}) names "{condition}", convolved with FIR delays '
                "(one column each); make it an F contrast, which tests every delay."
            )
        return columns
    return columns[:1]
