"""One run's design from a Run node (voxfit.bids.run_design) on a synthetic BIDS dataset with fMRIPrep-style
derivatives: nilearn's design matrix as the independent reference for the convolution, confounds and high-pass;
pybids' own transformations applied beside voxfit's as the reference that voxfit hands each one over and uses its
result; the specification's example models and voxfit's default model; the refusals."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("bids")
pytest.importorskip("jsonschema")

from voxfit.bids.run_design import run_design  # noqa: E402
from voxfit.bids.spec import default_model, load_model  # noqa: E402
from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.exceptions import DesignWarning, InputError  # noqa: E402

MODELS = Path(__file__).parent / "data" / "bids_models"
TR, SCANS = 2.0, 40


def _collection(root: Path, derivatives: Path, task: str, **filters):
    """The first run's variable collection as the runner gets it (BIDSStatsModelsGraph, load_collections,
    get_collections of the run node)."""
    from bids import BIDSLayout
    from bids.modeling import BIDSStatsModelsGraph

    layout = BIDSLayout(root, derivatives=[str(derivatives)])
    graph = BIDSStatsModelsGraph(layout, default_model(task, ["x"]))
    graph.load_collections(subject="01")
    (collection,) = graph.get_node("run").get_collections(subject="01", run=1, **filters)
    return collection


@pytest.fixture(scope="module")
def stroop(tmp_path_factory):
    """A dataset shaped like the specification's model-example_smdl.json: task stroop, trial types congruent and
    incongruent, confounds with nuissance1 and nuissance2."""
    study = make_dataset(
        tmp_path_factory.mktemp("stroop"),
        subjects=1,
        runs=1,
        scans=SCANS,
        tr=TR,
        extra_confounds=("nuissance1", "nuissance2"),
    )
    return study, _collection(study.root, study.derivatives, "stroop")


def _files(study):
    func = study.root / "sub-01" / "func"
    events = pd.read_csv(func / "sub-01_task-stroop_run-1_events.tsv", sep="\t")
    confounds = pd.read_csv(
        study.derivatives / "sub-01" / "func" / "sub-01_task-stroop_run-1_desc-confounds_timeseries.tsv", sep="\t"
    )
    return events, confounds


def _run_node(X, **model):
    return {"Level": "Run", "Name": "run", "GroupBy": ["run", "subject"], "Model": {"Type": "glm", "X": X, **model}}


def _model(node):
    return load_model({"Name": "m", "BIDSModelVersion": "1.0.0", "Nodes": [node]})["Nodes"][0]


@pytest.mark.parametrize(
    ("hrf", "slice_time_ref", "cutoff_hz"),
    [("spm", 0.0, None), ("spm + derivative", 0.5, 0.01), ("glover + derivative", 0.0, 0.02), ("glover", 0.5, None)],
)
def test_equals_nilearn(stroop, hrf, slice_time_ref, cutoff_hz):
    """convolution="nilearn": the design equals nilearn's make_first_level_design_matrix for the same events,
    confounds (fMRIPrep's leading n/a as 0) and high-pass, column by column, to 1e-10."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    study, collection = stroop
    events, confounds = _files(study)
    regressors = ["nuissance1", "nuissance2", "trans_x_derivative1"]
    options = {"Options": {"HighPassFilterCutoffHz": cutoff_hz}} if cutoff_hz else {}
    node = _model(
        _run_node(
            ["congruent", "incongruent", *regressors, 1],
            HRF={"Variables": ["congruent", "incongruent"], "Model": hrf},
            **options,
        )
    )
    result = run_design(collection, node, tr=TR, n_scans=SCANS, convolution="nilearn", slice_time_ref=slice_time_ref)
    reference = make_first_level_design_matrix(
        (np.arange(SCANS) + slice_time_ref) * TR,
        events[["onset", "duration", "trial_type"]],
        hrf_model=hrf,
        drift_model="cosine",
        high_pass=cutoff_hz or 1 / 128,
        add_regs=confounds[regressors].fillna(0).to_numpy(),
        add_reg_names=regressors,
    )
    design = result.design
    assert sorted(design.names) == sorted(reference.columns)
    for name in reference.columns:
        np.testing.assert_allclose(design.X[:, design.names.index(name)], reference[name], rtol=0, atol=1e-10)
    assert result.settings["high_pass_s"] == pytest.approx(1 / (cutoff_hz or 1 / 128))
    assert result.settings["high_pass_from"] == ("model" if cutoff_hz else "default (SPM's 128 s)")
    kinds = dict(zip(design.names, design.kinds))
    assert kinds["congruent"] == "condition" and kinds["nuissance1"] == "confound" and kinds["constant"] == "constant"
    assert result.sources["nuissance1"] == "nuissance1" and result.sources["constant"] == 1


def test_the_specification_examples(tmp_path):
    """Both example models build their run design on datasets shaped like the ones they name (stroop with
    nuisance confounds; simon), with their contrast over the trial types; their X names events that nothing
    convolves, which is said."""
    example = load_model(MODELS / "model-example_smdl.json")
    study = make_dataset(
        tmp_path / "stroop", subjects=1, runs=1, scans=SCANS, extra_confounds=("nuissance1", "nuissance2")
    )
    walkthrough = load_model(MODELS / "model-walkthrough_smdl.json")
    simon = make_dataset(tmp_path / "simon", subjects=1, runs=1, scans=SCANS, task="simon")
    for model, data in ((example, study), (walkthrough, simon)):
        collection = _collection(data.root, data.derivatives, data.task)
        with pytest.warns(DesignWarning, match="nothing convolves it"):
            result = run_design(collection, model["Nodes"][0], tr=TR, n_scans=SCANS)
        X = [x for x in model["Nodes"][0]["Model"]["X"] if x != 1]
        assert [n for n, k in zip(result.design.names, result.design.kinds) if k not in ("drift", "constant")] == X
        (contrast,) = result.contrasts
        assert contrast.weights == {"incongruent": 1.0, "congruent": -1.0} and contrast.test == "t"
        vector = result.fit_contrasts()[contrast.name]
        assert vector[result.design.names.index("incongruent")] == 1 and np.count_nonzero(vector) == 2


def test_default_model_on_the_dataset(stroop):
    """voxfit's default model: each trial type convolved with SPM's HRF, the constant, a t contrast per trial
    type; its columns are the ones voxfit's own make_design gives for the events file."""
    from voxfit.design import make_design

    study, collection = stroop
    events, _ = _files(study)
    model = load_model(None, task="stroop", trial_types=sorted(events["trial_type"].unique()))
    result = run_design(collection, model["Nodes"][0], tr=TR, n_scans=SCANS)
    reference = make_design(events[["onset", "duration", "trial_type"]], TR, SCANS)
    assert result.design.names == reference.names
    np.testing.assert_allclose(result.design.X, reference.X, rtol=0, atol=1e-12)
    assert [(c.name, c.test) for c in result.contrasts] == [("congruent", "t"), ("incongruent", "t")]
    assert result.fit_contrasts()["incongruent"].tolist() == [0, 1] + [0] * (len(reference.names) - 2)


def _pybids(collection, instructions):
    """pybids' own result of the instructions, applied to a copy of the collection (the reference)."""
    from bids.modeling.transformations import TransformerManager

    variables = collection.clone()
    manager = TransformerManager("pybids-transforms-v1", keep_history=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.transform(variables, copy.deepcopy(instructions))
    return variables


def _at_tr(variable):
    if variable.sampling_rate != 1 / TR:
        variable = variable.resample(1 / TR)
    return np.nan_to_num(np.asarray(variable.values, dtype=float).ravel())


def test_time_series_transformations_are_pybids(stroop):
    """Demean, Orthogonalize, Threshold, Not, And, Or, Product, Sum, Lag, Copy, Rename, Resample, Replace
    and Delete on the confounds: each design column is pybids' variable after the instructions, at the TR (the
    Replace's key "1" given to pybids as the number it reads as: as text it matched nothing, the column 0/1)."""
    _, collection = stroop
    instructions = [
        {"Name": "Demean", "Input": ["rot_x"]},
        {"Name": "Orthogonalize", "Input": ["trans_y"], "Other": ["trans_x"], "Output": ["trans_y_orth"]},
        {"Name": "Threshold", "Input": ["global_signal"], "Threshold": 1000, "Binarize": True, "Output": ["gs_high"]},
        {"Name": "Not", "Input": ["gs_high"], "Output": ["gs_low"]},
        {"Name": "And", "Input": ["gs_high", "gs_low"], "Output": "gs_and"},
        {"Name": "Or", "Input": ["gs_high", "gs_low"], "Output": "gs_or"},
        {"Name": "Product", "Input": ["trans_x", "trans_z"], "Output": "txz"},
        {"Name": "Sum", "Input": ["trans_x", "trans_z"], "Weights": [1, -2], "Output": "tsum"},
        {"Name": "Lag", "Input": ["trans_z"], "Output": ["trans_z_lag"]},
        {"Name": "Copy", "Input": ["csf"], "Output": ["csf_copy"]},
        {"Name": "Rename", "Input": ["white_matter"], "Output": ["wm"]},
        {"Name": "Resample", "Input": ["nuissance1"], "SamplingRate": 1, "Output": ["n1_1hz"]},
        {"Name": "Replace", "Input": ["gs_high"], "Replace": {"1": 5}, "Output": ["gs_five"]},
        {"Name": "Delete", "Input": ["a_comp_cor_04"]},
    ]
    outputs = ["rot_x", "trans_y_orth", "gs_high", "gs_low", "gs_and", "gs_or", "txz", "tsum"]
    outputs += ["trans_z_lag", "csf_copy", "wm", "n1_1hz", "gs_five"]
    node = _run_node([*outputs, "a_comp_cor_*", 1])
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    result = run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    reference = _pybids(collection, [dict(i, Replace={1.0: 5}) if i["Name"] == "Replace" else i for i in instructions])
    design = result.design
    assert set(np.unique(design.X[:, design.names.index("gs_five")])) == {0.0, 5.0}
    for name in outputs:
        np.testing.assert_allclose(design.X[:, design.names.index(name)], _at_tr(reference.variables[name]), atol=1e-12)
    assert [n for n in design.names if n.startswith("a_comp")] == [f"a_comp_cor_0{k}" for k in range(4)]  # Delete
    assert not np.allclose(design.X[:, design.names.index("rot_x")], _at_tr(collection.variables["rot_x"]))
    assert result.settings["pybids_instructions"] == instructions


def test_a_trial_type_named_plainly_is_pybids_factor_level(stroop):
    """The trial types voxfit names plainly ("congruent") are pybids' Factor levels ("trial_type.congruent"): over
    every event, 1 at their own. Product with response_time was refused ("Misaligned sparse variables"): they held
    their own events only. The designs of both routes are equal; a Scale sees the same 0/1 values."""
    _, collection = stroop
    plain = [{"Name": "Product", "Input": ["congruent", "response_time"], "Output": "con_rt"}]
    factored = [
        {"Name": "Factor", "Input": ["trial_type"]},
        {"Name": "Product", "Input": ["trial_type.congruent", "response_time"], "Output": "con_rt"},
    ]
    designs = []
    for instructions in (plain, factored):
        node = _run_node(["con_rt", "incongruent", 1], HRF={"Variables": ["con_rt", "incongruent"], "Model": "spm"})
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
        designs.append(run_design(collection, _model(node), tr=TR, n_scans=SCANS).design)
    np.testing.assert_array_equal(designs[0].X, designs[1].X)
    assert np.abs(designs[0].X[:, 0]).max() > 0


@pytest.mark.parametrize(
    "change",
    [
        {"Name": "Replace", "Input": ["trial_type"], "Replace": {"incongruent": "congruent"}},
        {"Name": "Filter", "Input": ["trial_type"], "Query": "response_time < 0.9", "By": ["response_time"]},
    ],
    ids=["Replace", "Filter"],
)
def test_a_trial_type_named_plainly_follows_the_instructions_on_trial_type(stroop, change):
    """A Replace or Filter of trial_type reaches the trial types named plainly as it reaches pybids' Factor levels:
    the plain names were made before the instructions, and Model.X's "congruent" kept the events the instruction
    had merged into it or taken out (exit 0, nothing said)."""
    # (every fourth event slow, half the congruent ones: the Filter takes them out)
    collection = _broken(stroop[1], "response_time", lambda v: v.values.iloc.__setitem__(slice(None, None, 4), 1.0))
    factor = {"Name": "Factor", "Input": ["trial_type"]}
    designs = []
    for instructions, name in (([change], "congruent"), ([change, factor], "trial_type.congruent"), ([], "congruent")):
        node = _run_node([name, 1], HRF={"Variables": [name], "Model": "spm"})
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
        designs.append(run_design(collection, _model(node), tr=TR, n_scans=SCANS).design)
    plain, factored, unchanged = designs
    np.testing.assert_array_equal(plain.X, factored.X)
    assert np.abs(plain.X[:, 0] - unchanged.X[:, 0]).max() > 0.1


def test_trial_types_an_instruction_renames_merges_or_deletes_keep_what_it_made_of_them(stroop, tmp_path):
    """The plain names made again after an instruction changes trial_type: a late trial type renamed stays late (the
    run failed); one merged with events in the run is fitted, not said to be late; one the model deleted stays
    deleted (a Model.X pattern took it back); a Filter keeps each event's modulation (the events matched again by
    onset and duration were refused, two of them sharing one)."""

    def late(variable):
        variable.onset = np.where(variable.values == "incongruent", variable.onset + SCANS * TR, variable.onset)

    def design(collection, x, instructions, hrf=None):
        node = _run_node([*x, 1], HRF={"Variables": hrf or x, "Model": "spm"})
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
        node["DummyContrasts"] = {"Test": "t"}
        return run_design(collection, _model(node), tr=TR, n_scans=SCANS, trial_types=("congruent", "incongruent"))

    cut = _broken(stroop[1], "trial_type", late)
    renamed = design(
        cut, ["congruent", "hard"], [{"Name": "Replace", "Input": ["trial_type"], "Replace": {"incongruent": "hard"}}]
    )
    assert renamed.settings["after_the_run"] == ["hard"] and renamed.design.names[0] == "congruent"
    merged = design(
        cut, ["incongruent"], [{"Name": "Replace", "Input": ["trial_type"], "Replace": {"congruent": "incongruent"}}]
    )
    assert merged.settings["after_the_run"] == [] and np.abs(merged.design.X[:, 0]).max() > 0.1
    deleted = design(
        stroop[1],
        ["*congruent"],
        [
            {"Name": "Delete", "Input": ["incongruent"]},
            {"Name": "Replace", "Input": ["trial_type"], "Replace": {"x": "y"}},
        ],
        hrf=["congruent"],
    )
    assert deleted.design.names[:1] == ("congruent",) and "incongruent" not in deleted.design.names
    collections = []
    for name, kept in (("all", lambda e: e), ("kept", lambda e: e[e["response_time"] < 0.9])):
        study = make_dataset(tmp_path / name, subjects=1, runs=1, scans=SCANS, tr=TR)
        events_file = next(study.root.glob("sub-01/func/*_events.tsv"))
        events = pd.read_csv(events_file, sep="\t")
        events["modulation"] = np.arange(1.0, len(events) + 1)
        events["response_time"] = np.where(np.arange(len(events)) % 4 == 0, 1.0, 0.5)
        events.loc[1, "onset"] = events.loc[0, "onset"]  # (two events at one onset and duration)
        kept(events).to_csv(events_file, sep="\t", index=False)
        collections.append(_collection(study.root, study.derivatives, "stroop"))
    keep = {"Name": "Filter", "Input": ["trial_type"], "Query": "response_time < 0.9", "By": ["response_time"]}
    filtered, reference = design(collections[0], ["congruent"], [keep]), design(collections[1], ["congruent"], [])
    np.testing.assert_allclose(filtered.design.X, reference.design.X)
    # a trial type's event given twice (a log exported twice): summed, and said naming the run (nilearn warns too)
    twice = _broken(stroop[1], "trial_type", lambda v: v.onset.__setitem__(2, v.onset[0]))
    with pytest.warns(DesignWarning, match=r'node "run", run .*: 1 event\(s\) repeat another\'s trial type, onset and'):
        design(twice, ["congruent"], [])


def test_events_transformations_are_pybids(stroop):
    """Factor, Replace, Split, Filter, Select, DropNA, Copy, Scale, Threshold and Product on the events, then
    convolved by voxfit (Model.HRF and a Convolve instruction it takes over), and ToDense, Convolve kept by pybids:
    the events voxfit convolves are pybids' after the instructions (nilearn's design of those events is the
    reference)."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    _, collection = stroop
    instructions = [
        {"Name": "Replace", "Input": ["trial_type"], "Replace": {"incongruent": "incon"}},
        {"Name": "Split", "Input": ["response_time"], "By": ["trial_type"]},
        {
            "Name": "Filter",
            "Input": ["response_time"],
            "Query": "trial_type == 'congruent'",
            "By": ["trial_type"],
            "Output": ["only_con"],
        },
        {"Name": "Factor", "Input": ["trial_type"]},
        {"Name": "Copy", "Input": ["trial_type.incon"], "Output": ["incon_copy"]},
        {"Name": "Scale", "Input": ["trial_type.congruent"], "Output": ["con_scaled"]},
        {"Name": "DropNA", "Input": ["response_time"], "Output": ["rt"]},
        {"Name": "Threshold", "Input": ["rt"], "Threshold": 0.4, "Binarize": True, "Output": ["rt_bin"]},
        {"Name": "Product", "Input": ["trial_type.congruent", "rt"], "Output": "con_rt"},
        {"Name": "Convolve", "Input": ["incon_copy"], "Model": "spm", "Derivative": True},  # voxfit's
        {"Name": "ToDense", "Input": ["rt_bin"], "Output": ["rt_dense"]},
        {"Name": "Convolve", "Input": ["rt_dense"], "Model": "glover"},  # dense: stays with pybids
        {
            "Name": "Select",
            "Input": ["con_rt", "con_scaled", "incon_copy", "rt_dense", "response_time.trial_type*", "only_con"],
        },
    ]
    events_x = ["con_rt", "con_scaled", "response_time.trial_type[congruent]", "only_con"]
    x = [*events_x, "incon_copy", "incon_copy_derivative", "rt_dense", 1]  # (a Convolve's derivative: its own name)
    node = _run_node(x, HRF={"Variables": events_x, "Model": "spm + derivative"})
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    node = _model(node)
    result = run_design(collection, node, tr=TR, n_scans=SCANS, convolution="nilearn")
    assert result.settings["pybids_instructions"] == [i for i in instructions if i is not instructions[9]]
    reference = _pybids(collection, result.settings["pybids_instructions"])
    assert set(reference.variables) == {
        "con_rt",
        "con_scaled",
        "incon_copy",
        "rt_dense",
        "response_time.trial_type[congruent]",
        "response_time.trial_type[incon]",
        "only_con",
    }
    rows = []
    for name in [*events_x, "incon_copy"]:
        variable = reference.variables[name]
        keep = np.asarray(variable.values, dtype=float) != 0
        rows.append(
            pd.DataFrame(
                {
                    "onset": variable.onset[keep],
                    "duration": variable.duration[keep],
                    "trial_type": name,
                    "modulation": np.asarray(variable.values, dtype=float)[keep],
                }
            )
        )
    expected = make_first_level_design_matrix(
        np.arange(SCANS) * TR, pd.concat(rows), hrf_model="spm + derivative", drift_model=None
    )
    design = result.design
    for name in expected.columns.drop("constant"):
        np.testing.assert_allclose(design.X[:, design.names.index(name)], expected[name], atol=1e-10)
    assert design.kinds[design.names.index("incon_copy_derivative")] == "derivative"
    np.testing.assert_allclose(
        design.X[:, design.names.index("rt_dense")], _at_tr(reference.variables["rt_dense"]), atol=1e-12
    )
    assert result.settings["hrf"]["incon_copy"] == {"model": "spm+derivative", "fir_delays": 1}


# Run nodes whose Transformations name "error", a trial type of the study that the stroop run has no event of,
# and the same node written without it: {case: (instructions, Model.X, instructions without error, Model.X without
# error, [index, instruction, names left out, their trial types, whether left out whole])}
TT = "trial_type."


def _factor_convolve(settings: dict, made: tuple[str, ...] = (), copied: bool = False) -> tuple:
    """A LACKING case: Factor, then a Convolve of congruent and error to "con" and "err" with `settings` (then, with
    `copied`, a Copy of its outputs: a later instruction that names them leaves the Convolve to pybids); Model.X
    takes each output and the regressors `made` of its input (pybids' derivatives, FIR delays)."""

    def node(kinds):
        outputs = {"congruent": "con", "error": "err"}
        steps = [
            {"Name": "Factor", "Input": ["trial_type"]},
            {
                "Name": "Convolve",
                "Input": [f"{TT}{k}" for k in kinds],
                "Output": [outputs[k] for k in kinds],
                **settings,
            },
        ]
        if copied:
            steps.append(
                {"Name": "Copy", "Input": [outputs[k] for k in kinds], "Output": [f"{outputs[k]}_copy" for k in kinds]}
            )
        return steps, [n for k in kinds for n in (outputs[k], *(f"{TT}{k}_{m}" for m in made))] + [1]

    pruned = [[1, "Convolve", [f"{TT}error"], ["error"], False]] + (
        [[2, "Copy", ["err"], ["error"], False]] if copied else []
    )
    return (*node(["congruent", "error"]), *node(["congruent"]), pruned)


LACKING = {
    "Factor, Convolve (voxfit's)": _factor_convolve({"Model": "spm"}),
    "Convolve with derivatives (pybids'), Orthogonalize against it": (
        [
            {"Name": "Convolve", "Input": ["congruent", "error"], "Model": "spm", "Derivative": True},
            {"Name": "Orthogonalize", "Input": ["congruent"], "Other": ["error"], "Output": ["con_orth"]},
        ],
        ["con_orth", "congruent_derivative", "error", "error_derivative", 1],
        [
            {"Name": "Convolve", "Input": ["congruent"], "Model": "spm", "Derivative": True},
            {"Name": "Copy", "Input": ["congruent"], "Output": ["con_orth"]},
        ],
        ["con_orth", "congruent_derivative", 1],
        [[0, "Convolve", ["error"], ["error"], False], [1, "Orthogonalize", ["error"], ["error"], False]],
    ),
    "Factor, Convolve with derivatives to named outputs (pybids')": _factor_convolve(
        {"Model": "spm", "Derivative": True}, ("derivative",), copied=True
    ),
    "Factor, FIR Convolve to named outputs (pybids')": _factor_convolve(
        {"Model": "fir", "FIRDelays": [0, 1, 2]}, ("1", "2"), copied=True
    ),
    "Scale with a parameter per input, Rename": (
        [
            {"Name": "Scale", "Input": ["congruent", "error"], "Demean": [True, False], "Rescale": [False, True]},
            {"Name": "Rename", "Input": ["error"], "Output": ["err"]},
        ],
        ["congruent", "err", 1],
        [{"Name": "Scale", "Input": ["congruent"], "Demean": [True], "Rescale": [False]}],
        ["congruent", 1],
        [[0, "Scale", ["error"], ["error"], False], [1, "Rename", ["error"], ["error"], True]],
    ),
    "Sum with weights, Product, Select": (
        [
            {"Name": "Sum", "Input": ["congruent", "error"], "Weights": [1, 2], "Output": "task"},
            {"Name": "Product", "Input": ["congruent", "error"], "Output": "both"},
            {"Name": "Select", "Input": ["task", "both", "incongruent", "error"]},
        ],
        ["task", "both", "incongruent", 1],
        [
            {"Name": "Sum", "Input": ["congruent"], "Weights": [1], "Output": "task"},
            {"Name": "Select", "Input": ["task", "incongruent"]},
        ],
        ["task", "incongruent", 1],
        [
            [0, "Sum", ["error"], ["error"], False],
            [1, "Product", ["error"], ["error"], True],
            [2, "Select", ["both", "error"], ["error"], False],
        ],
    ),
}


@pytest.mark.parametrize("factored", [False, True], ids=["plain", "Factor"])
def test_a_trial_type_whose_events_start_after_the_runs_end_is_one_the_run_lacks(stroop, factored):
    """A run cut short while the task went on: its "incongruent" events all start after its last scan. The run
    failed whole ("every event ... starts at or after the end"), its other trial types' maps lost; it is now
    fitted as a run without such events, its design the one written without them, and said. Every trial type's
    events after the end (onsets in other units) is still refused."""

    def late(variable, which=("incongruent",)):
        variable.onset = np.where(np.isin(variable.values, which), variable.onset + SCANS * TR, variable.onset)

    collection = _broken(stroop[1], "trial_type", late)
    name = "trial_type.{}" if factored else "{}"
    factor = [{"Name": "Factor", "Input": ["trial_type"]}] if factored else []
    designs, types = [], ("congruent", "incongruent")
    for x in ([name.format("congruent"), name.format("incongruent"), 1], [name.format("congruent"), 1]):
        node = _run_node(x, HRF={"Variables": x[:-1], "Model": "spm"}, Options={"HighPassFilterCutoffHz": 0.01})
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": factor}
        node["DummyContrasts"] = {"Test": "t"}
        designs.append(run_design(collection, _model(node), tr=TR, n_scans=SCANS, trial_types=types))
    np.testing.assert_array_equal(designs[0].design.X, designs[1].design.X)
    assert designs[0].settings["after_the_run"] == ["incongruent"]
    assert designs[0].settings["left_out_of_x"] == ((name.format("incongruent"), "incongruent"),)
    every = _broken(stroop[1], "trial_type", lambda v: late(v, ("congruent", "incongruent")))
    with pytest.raises(InputError, match="starts at or after the end of the run"):
        run_design(every, _model(node), tr=TR, n_scans=SCANS, trial_types=types)


@pytest.mark.parametrize("case", LACKING)
def test_transformations_go_on_without_a_trial_type_the_run_has_no_event_of(stroop, case):
    """A trial type of the study that the run has no event of is a regressor of zeros: each instruction that names
    it goes on without it (its outputs left out in turn, with a derivative's; a Sum adds nothing for it, a Product
    of it is zeros, an Orthogonalize against it alone changes nothing, a Select keeps the rest), and the design is
    the one of the node written without it, but the contrast of what it made."""
    _, collection = stroop
    instructions, X, without, X_without, pruned = LACKING[case]
    designs = []
    for steps, x in ((instructions, X), (without, X_without)):
        events = [n for n in x if n in ("congruent", "incongruent", "error", "task", "both")]
        node = _run_node(x, **({"HRF": {"Variables": events, "Model": "spm"}} if events else {}))
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": steps}
        node["Contrasts"] = [{"Name": "first", "ConditionList": [x[0]], "Weights": [1], "Test": "t"}]
        if steps is instructions:  # (of what was made of the trial type: not made)
            made = next(n for n in x if n not in X_without)
            node["Contrasts"].append({"Name": "second", "ConditionList": [made], "Weights": [1], "Test": "t"})
        designs.append(run_design(collection, _model(node), tr=TR, n_scans=SCANS, trial_types=("congruent", "error")))
    got, want = designs
    assert got.design.names == want.design.names
    np.testing.assert_allclose(got.design.X, want.design.X, rtol=1e-12, atol=1e-12)
    assert got.settings["instructions_pruned"] == pruned
    assert [c.name for c in got.contrasts] == ["first"]
    assert all(t == "error" for *_, t in got.settings["left_out_of_x"]) and got.settings["left_out_of_x"]


@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        (  # zeros thresholded at 0 and binarized are ones: pybids refuses it, and the message says why
            [{"Name": "Threshold", "Input": ["error"], "Threshold": 0, "Binarize": True}],
            r'Instructions\[0\] \(Threshold\) failed in pybids: .*the run has no "error" event, which its Threshold '
            r"instruction cannot do without: leave the run out",
        ),
        (  # a trial type the run has events of, named before Factor makes it: the model's mistake, refused
            [{"Name": "Scale", "Input": [f"{TT}congruent"]}, {"Name": "Factor", "Input": ["trial_type"]}],
            r"Instructions\[0\] \(Scale\) failed in pybids: No variable named 'trial_type.congruent'",
        ),
        (  # error trials modulated by response time: Assign cannot do without them
            [
                {"Name": "Factor", "Input": ["trial_type"]},
                {"Name": "Assign", "Input": ["response_time"], "Target": [f"{TT}error"]},
            ],
            r'Instructions\[1\] \(Assign\) failed in pybids: .*the run has no "error" event, which its Assign '
            r"instruction cannot do without",
        ),
        (  # the run has no error trials, but the name is used before Factor makes any: refused as in every run
            [{"Name": "Scale", "Input": [f"{TT}error"]}, {"Name": "Factor", "Input": ["trial_type"]}],
            r"Instructions\[0\] \(Scale\) failed in pybids: No variable named 'trial_type.error'",
        ),
        (  # a Copy that fails for another name keeps no word about the trial type it did without
            [{"Name": "Copy", "Input": ["error", "congruen"], "Output": ["e", "c"]}],
            r"Instructions\[0\] \(Copy\) failed in pybids: No variable named 'congruen'[^\n]*; the run's variables",
        ),
    ],
)
def test_a_transformation_that_cannot_do_without_a_trial_type_is_refused_saying_so(stroop, instructions, message):
    _, collection = stroop
    node = _run_node(["congruent", 1], HRF={"Variables": ["congruent"], "Model": "spm"})
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    with pytest.raises(InputError, match=message) as info:
        run_design(collection, _model(node), tr=TR, n_scans=SCANS, trial_types=("congruent", "error"))
    assert "\n" not in str(info.value)
    assert "cannot do without" not in str(info.value) or instructions[-1]["Name"] in ("Threshold", "Assign")


def test_events_orthogonalized_by_pybids_are_convolved_by_voxfit(stroop):
    """pybids' Orthogonalize of events (a trial type's against another's) gives its amplitudes as a one-column
    table, which voxfit's Convolve then took for a category and crashed on (AttributeError, exit 1): its design
    column is nilearn's convolution of pybids' orthogonalized events."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    _, collection = stroop
    instructions = [
        {"Name": "Factor", "Input": ["trial_type"]},
        {
            "Name": "Orthogonalize",
            "Input": [f"{TT}congruent"],
            "Other": [f"{TT}incongruent"],
            "Output": ["con_orth"],
        },
        {"Name": "Convolve", "Input": ["con_orth"], "Model": "spm"},  # voxfit's: its input is events
    ]
    node = _run_node(["con_orth", 1])
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    result = run_design(collection, _model(node), tr=TR, n_scans=SCANS, convolution="nilearn")
    assert result.settings["hrf"]["con_orth"]["model"] == "spm"
    variable = _pybids(collection, instructions[:2]).variables["con_orth"]
    amplitude = np.asarray(variable.values, dtype=float).ravel()
    events = pd.DataFrame(
        {"onset": variable.onset, "duration": variable.duration, "trial_type": "con_orth", "modulation": amplitude}
    )[amplitude != 0]
    expected = make_first_level_design_matrix(np.arange(SCANS) * TR, events, hrf_model="spm", drift_model=None)
    design = result.design
    np.testing.assert_allclose(design.X[:, design.names.index("con_orth")], expected["con_orth"], atol=1e-10)


def test_convolve_taken_over_equals_model_hrf(stroop):
    """A Convolve whose output feeds Model.X is voxfit's convolution: the same design as Model.HRF's."""
    _, collection = stroop
    by_hrf = _model(_run_node(["congruent", 1], HRF={"Variables": ["congruent"], "Model": "glover + derivative"}))
    node = _run_node(["convolved", "convolved_derivative", 1])  # (a Convolve's derivative: a variable of its own)
    node["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [
            {"Name": "Convolve", "Input": ["congruent"], "Output": ["convolved"], "Model": "glover", "Derivative": True}
        ],
    }
    a = run_design(collection, by_hrf, tr=TR, n_scans=SCANS).design
    b = run_design(collection, _model(node), tr=TR, n_scans=SCANS).design
    assert b.names == tuple(n.replace("congruent", "convolved") for n in a.names)
    np.testing.assert_array_equal(a.X, b.X)


@pytest.mark.parametrize("key", ["2", "2.0"])
def test_a_replace_of_numbers_written_as_json_keys_replaces_them(stroop, key):
    """A JSON object's keys are text: Replace {"2": 0.5} of the events' durations (2 s) matched nothing in
    pandas and changed nothing, exit 0 (a tester's). The column is now nilearn's convolution of the events with
    their durations replaced."""
    from nilearn.glm.first_level import make_first_level_design_matrix

    study, collection = stroop
    instructions = [
        {"Name": "Factor", "Input": ["trial_type"]},
        {"Name": "Replace", "Input": [f"{TT}congruent"], "Replace": {key: 0.5}, "Attribute": "duration"},
        {"Name": "Convolve", "Input": [f"{TT}congruent"], "Model": "spm"},
    ]
    node = _run_node([f"{TT}congruent", 1])
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    design = run_design(collection, _model(node), tr=TR, n_scans=SCANS, convolution="nilearn").design
    events, _ = _files(study)
    events = events[events["trial_type"] == "congruent"].assign(duration=0.5)[["onset", "duration", "trial_type"]]
    expected = make_first_level_design_matrix(np.arange(SCANS) * TR, events, hrf_model="spm", drift_model=None)
    np.testing.assert_allclose(design.X[:, design.names.index(f"{TT}congruent")], expected["congruent"], atol=1e-10)


def test_a_select_after_a_convolve_keeps_what_it_keeps(stroop):
    """Factor, Convolve of both trial types, then a Select of one: voxfit took the Convolve as its own, made after
    the instructions, and the Select had dropped the other's events meanwhile ("Convolve names
    trial_type.incongruent, which the run does not have": every run refused, exit 2; a tester's). The column kept
    is the convolution of Model.HRF's, to rounding."""
    _, collection = stroop
    by_hrf = _model(_run_node([f"{TT}congruent", 1], HRF={"Variables": [f"{TT}congruent"], "Model": "spm"}))
    node = _run_node([f"{TT}congruent", 1])
    node["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [
            {"Name": "Factor", "Input": ["trial_type"]},
            {"Name": "Convolve", "Input": [f"{TT}congruent", f"{TT}incongruent"], "Model": "spm"},
            {"Name": "Select", "Input": [f"{TT}congruent"]},
        ],
    }
    by_hrf = dict(by_hrf, Transformations={"Transformer": "pybids-transforms-v1", "Instructions": [
        {"Name": "Factor", "Input": ["trial_type"]}]})  # fmt: skip
    a = run_design(collection, by_hrf, tr=TR, n_scans=SCANS).design
    b = run_design(collection, _model(node), tr=TR, n_scans=SCANS).design
    assert a.names == b.names
    np.testing.assert_allclose(a.X, b.X, atol=1e-10)


@pytest.mark.parametrize(
    "X",
    [
        ["trial_type.congruent", "trial_type.incongruent", 1],
        ["trial_type.congruent", "trial_type.congruent_derivative", "trial_type.incongruent", 1],
        ["trial_type.*", 1],
    ],
)
def test_a_convolves_derivatives_are_variables_model_x_takes_or_leaves(stroop, X):
    """pybids' Convolve with Derivative makes x_derivative a variable of its own, which Model.X takes or leaves:
    voxfit put every derivative in the design whatever X said, refused X naming one ("the run has no variable"),
    refused a contrast of one, and left them out of DummyContrasts (a BIDS Stats Models tester's). The design's
    columns are Model.X's over pybids' variables (a pattern's in their names' order); a contrast and the
    DummyContrasts name derivatives."""
    _, collection = stroop
    instructions = [
        {"Name": "Factor", "Input": ["trial_type"]},
        {"Name": "Convolve", "Input": ["trial_type.congruent", "trial_type.incongruent"], "Derivative": True},
    ]
    theirs = list(_pybids(collection, instructions).variables)
    # (a pattern's columns in their names' order: each condition beside its derivative, as SPM orders them)
    expected = [n for entry in X if entry != 1 for n in sorted(theirs) if fnmatch.fnmatchcase(n, entry)]
    node = _run_node(X)
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    node["DummyContrasts"] = {"Test": "t"}
    derivatives = [n for n in expected if n.endswith("_derivative")]
    if derivatives:
        node["Contrasts"] = [
            {"Name": "d", "ConditionList": derivatives, "Weights": [1] * len(derivatives), "Test": "t"}
        ]
    result = run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    names = [n for n in result.design.names if not n.startswith("drift_") and n != "constant"]
    assert names == expected
    assert [c.name for c in result.contrasts] == [*expected, "intercept", *(["d"] if derivatives else [])]
    for d in derivatives:
        assert result.design.kinds[result.design.names.index(d)] == "derivative"


def test_pybids_scale_of_a_time_series_fails_saying_what_to_do_instead(stroop):
    """pybids 0.22's Scale fails on every time series (``data.nunique() == 1`` on a DataFrame: "The truth value of
    a Series is ambiguous"), which voxfit passed on alone; it now says to Demean it instead."""
    _, collection = stroop
    node = _run_node(["nuissance1", 1])
    node["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Scale", "Input": ["nuissance1"]}],
    }
    try:
        run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    except InputError as exc:  # (a pybids that scales time series: nothing to say)
        assert "pybids' Scale fails on every time series (confounds, convolved regressors): Demean it" in str(exc)


def test_a_filter_whose_query_names_another_variable_says_to_add_it_to_by(stroop):
    """A Filter of a trial type's events by response_time, without "By": pybids says "name 'response_time' is not
    defined", and the message went on "the run's variables are response_time, ...": it says to add "By" (a
    tester's); with it, the Filter runs."""
    _, collection = stroop
    instructions = [
        {"Name": "Factor", "Input": ["trial_type"]},
        {"Name": "Filter", "Input": [f"{TT}congruent"], "Query": "response_time > 0.2", "Output": ["slow"]},
        {"Name": "Convolve", "Input": ["slow"], "Model": "spm"},
    ]
    node = _run_node(["slow", 1])
    node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
    with pytest.raises(InputError, match=r'add "By": \["response_time"\]'):
        run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    instructions[1]["By"] = ["response_time"]
    assert "slow" in run_design(collection, _model(node), tr=TR, n_scans=SCANS).design.names


def test_contrasts(stroop):
    """DummyContrasts (1 named intercept) then Contrasts; fractions as text; derivatives weigh 0; an F contrast over
    FIR delays has a row per delay."""
    _, collection = stroop
    node = _run_node(
        ["congruent", "incongruent", "trans_x", 1], HRF={"Variables": ["congruent"], "Model": "spm + derivative"}
    )
    node["DummyContrasts"] = {"Contrasts": ["trans_x", 1], "Test": "pass"}
    node["Contrasts"] = [
        {"Name": "third", "ConditionList": ["congruent", 1], "Weights": ["1/3", "-2/3"], "Test": "t"},
        {"Name": "both", "ConditionList": ["congruent", "trans_x"], "Weights": [[1, 0], [0, 1]], "Test": "F"},
    ]
    with pytest.warns(DesignWarning, match='"incongruent" .* nothing convolves it'):
        result = run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    names = result.design.names
    assert [(c.name, c.test) for c in result.contrasts] == [
        ("trans_x", "pass"),
        ("intercept", "pass"),
        ("third", "t"),
        ("both", "F"),
    ]
    weights = result.fit_contrasts()
    assert weights["third"][names.index("congruent")] == pytest.approx(1 / 3)
    assert weights["third"][names.index("constant")] == pytest.approx(-2 / 3)
    assert weights["third"][names.index("congruent_derivative")] == 0
    assert weights["both"].shape == (2, len(names)) and weights["intercept"][names.index("constant")] == 1
    node["DummyContrasts"]["Contrasts"] = ["trans_x", "intercept"]  # (pybids' name for 1: the same contrast)
    with pytest.warns(DesignWarning):
        named = run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    assert [c.name for c in named.contrasts] == [c.name for c in result.contrasts]
    fir = _run_node(
        ["congruent", 1], HRF={"Variables": ["congruent"], "Model": "fir", "Parameters": {"fir_delays": [0, 1, 2]}}
    )
    fir["DummyContrasts"] = {"Contrasts": ["congruent"], "Test": "F"}
    result = run_design(collection, _model(fir), tr=TR, n_scans=SCANS)
    matrix = result.fit_contrasts()["congruent"]
    assert matrix.shape == (3, len(result.design.names))
    assert [result.design.names[j] for j in matrix.argmax(1)] == [
        "congruent_delay0",
        "congruent_delay1",
        "congruent_delay2",
    ]
    fir["DummyContrasts"]["Test"] = "t"
    with pytest.raises(InputError, match='contrast "congruent" \\(t\\) names "congruent", convolved with FIR delays'):
        run_design(collection, _model(fir), tr=TR, n_scans=SCANS)


def test_high_pass(stroop):
    """The argument overrides Options.HighPassFilterCutoffHz, which overrides SPM's 128 s; each is recorded."""
    _, collection = stroop
    node = _model(
        _run_node(
            ["congruent", 1],
            HRF={"Variables": ["congruent"], "Model": "spm"},
            Options={"HighPassFilterCutoffHz": 0.025},
        )
    )
    from_model = run_design(collection, node, tr=TR, n_scans=SCANS)
    from_argument = run_design(collection, node, tr=TR, n_scans=SCANS, high_pass="0.0125Hz")
    assert (from_model.settings["high_pass_s"], from_model.settings["high_pass_from"]) == (40.0, "model")
    assert (from_argument.settings["high_pass_s"], from_argument.settings["high_pass_from"]) == (80.0, "argument")
    assert from_model.design.kinds.count("drift") == 4 and from_argument.design.kinds.count("drift") == 2


def _broken(collection, name, change):
    broken = collection.clone()
    variable = broken.variables[name].clone()
    change(variable)
    broken.variables[name] = variable
    return broken


REFUSALS = {
    "absent variable": (
        lambda c: c,
        ["congruent", "reaction_time", 1],
        r'node "run", run .*sub-01_task-stroop_run-1_.*_bold.nii.gz: Model.X names "reaction_time", but the run has no '
        r'variable "reaction_time"; its variables are .*trans_x',
    ),
    "n/a inside a confound": (
        lambda c: _broken(c, "nuissance1", lambda v: v.values.iloc.__setitem__((5, 0), np.nan)),
        ["congruent", "nuissance1", 1],
        '"nuissance1" has a missing value \\(n/a\\) at scan 6; only leading n/a',
    ),
    "confound n/a in every scan": (  # (every n/a leading: "only leading n/a are allowed" was the message)
        lambda c: _broken(c, "nuissance1", lambda v: v.values.iloc.__setitem__((slice(None), 0), np.nan)),
        ["congruent", "nuissance1", 1],
        '"nuissance1" is n/a in every scan: it holds no value to fit; leave it out of Model.X',
    ),
    "confound of another length": (
        lambda c: _broken(c, "nuissance1", lambda v: setattr(v, "values", v.values.iloc[:30])),
        ["congruent", "nuissance1", 1],
        '"nuissance1" has 30 values at the TR but the run has 40 scans',
    ),
    "failing transformation": (
        lambda c: c,
        ["congruent", 1],
        r"Transformations.Instructions\[0\] \(Scale\) failed in pybids: No variable named 'nothing'",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals(stroop, case):
    _, collection = stroop
    change, X, message = REFUSALS[case]
    node = _run_node(X, HRF={"Variables": ["congruent"], "Model": "spm"})
    if case == "failing transformation":
        node["Transformations"] = {
            "Transformer": "pybids-transforms-v1",
            "Instructions": [{"Name": "Scale", "Input": ["nothing"]}],
        }
    with pytest.raises(InputError, match=message) as info:
        run_design(change(collection), _model(node), tr=TR, n_scans=SCANS)
    assert "\n" not in str(info.value)


def test_a_pattern_of_model_x_that_matches_nothing_adds_nothing(stroop):
    """As pybids expands a pattern: FitLins' "motion_outlier*" (fMRIPrep writes those columns only for a run with
    outliers) made every run without outliers a failure; the run's design leaves it out, said in its settings."""
    _, collection = stroop
    node = _run_node(["congruent", "motion_outlier*", "trans_?", 1], HRF={"Variables": ["congruent"], "Model": "spm"})
    rd = run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    assert rd.settings["patterns_unmatched"] == ("motion_outlier*",)
    assert "trans_x" in rd.design.names and not any(n.startswith("motion_outlier") for n in rd.design.names)


@pytest.mark.parametrize("slice_time_ref", [0.4375, None])
def test_a_convolution_a_later_instruction_takes_is_sampled_as_the_others(stroop, slice_time_ref):
    """A Convolve whose output a later instruction takes was pybids': sampled at each scan's start, while voxfit
    samples the design's other regressors at the slice-timing reference (a Glover regressor 0.464 against 0.652 at
    its peak). voxfit makes it where it stands in the list, as Model.HRF would: the same column. One with a
    derivative stays pybids', and a note says so where there is a reference."""
    _, collection = stroop
    options = {"tr": TR, "n_scans": SCANS, "convolution": "nilearn", "slice_time_ref": slice_time_ref}
    by_hrf = _run_node(
        ["congruent", "incongruent", 1], HRF={"Variables": ["congruent", "incongruent"], "Model": "glover"}
    )
    reference = run_design(collection, _model(by_hrf), **options).design
    node = _run_node(["congruent", "incongruent", 1], HRF={"Variables": ["congruent"], "Model": "glover"})
    then = {"Name": "Rename", "Input": ["incongruent"], "Output": ["incongruent"]}
    node["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Convolve", "Input": ["incongruent"], "Model": "glover"}, then],
    }
    rd = run_design(collection, _model(node), **options)
    assert rd.design.names == reference.names and rd.settings["convolved_at_scan_start"] == []
    np.testing.assert_allclose(rd.design.X, reference.X, rtol=0, atol=1e-12)
    assert rd.settings["hrf"]["incongruent"] == {"model": "glover", "fir_delays": 1}
    node["Transformations"]["Instructions"][0]["Derivative"] = True
    rd = run_design(collection, _model(node), **options)
    assert rd.settings["convolved_at_scan_start"] == (["incongruent"] if slice_time_ref else [])


def test_time_series_in_hrf_and_categories_refused(stroop):
    _, collection = stroop
    node = _model(_run_node(["trans_x", 1], HRF={"Variables": ["trans_x"], "Model": "spm"}))
    with pytest.raises(InputError, match='"trans_x" is a time series, not events'):
        run_design(collection, node, tr=TR, n_scans=SCANS)
    node = _model(_run_node(["trial_type", 1], HRF={"Variables": ["trial_type"], "Model": "spm"}))
    with pytest.raises(InputError, match='"trial_type" holds categories .*name one of its levels, or Factor it'):
        run_design(collection, node, tr=TR, n_scans=SCANS)
    with pytest.raises(InputError, match="needs the Run node"):
        run_design(collection, {"Level": "Subject", "Model": {}}, tr=TR, n_scans=SCANS)


def test_the_collection_is_not_changed(stroop):
    _, collection = stroop
    before = {name: v.values.copy() for name, v in collection.variables.items()}
    node = _run_node(["congruent", "trans_x", 1], HRF={"Variables": ["congruent"], "Model": "spm"})
    node["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Demean", "Input": ["trans_x"]}],
    }
    run_design(collection, _model(node), tr=TR, n_scans=SCANS)
    assert set(collection.variables) == set(before)
    for name, values in before.items():
        assert collection.variables[name].values.equals(values)
    assert json.dumps(node)  # the node stays plain JSON
    assert re.search("trans_x", json.dumps(node))


def test_pybids_factor_levels_take_the_events_modulation_as_plain_names_do(tmp_path):
    """One model, two spellings: the events' modulation column scaled "congruent" (nilearn's reading) but not
    pybids' Factor level "trial_type.congruent", so the betas differed by 25-60% with the spelling (study tester).
    Both are the modulated regressor, after a Filter of the events too (each kept event its own weight)."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=SCANS, tr=TR)
    events_file = next(study.root.glob("sub-01/func/*_events.tsv"))
    events = pd.read_csv(events_file, sep="\t")
    events["modulation"] = np.where(np.arange(len(events)) % 3 == 0, "n/a", np.arange(1.0, len(events) + 1))
    events["response_time"] = np.where(np.arange(len(events)) % 4 == 0, 1.0, 0.5)
    events.to_csv(events_file, sep="\t", index=False)
    collection = _collection(study.root, study.derivatives, "stroop")
    factor = {"Name": "Factor", "Input": ["trial_type"]}
    keep = {"Name": "Filter", "Input": ["trial_type"], "Query": "response_time < 0.9", "By": ["response_time"]}
    designs = {}
    for spelling, name, instructions in (
        ("plain", "congruent", []),
        ("factor", "trial_type.congruent", [factor]),
        ("plain kept", "congruent", [keep]),
        ("factor kept", "trial_type.congruent", [keep, factor]),
    ):
        node = _run_node([name, 1], HRF={"Variables": [name], "Model": "spm"})
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
        result = run_design(collection, _model(node), tr=TR, n_scans=SCANS, convolution="nilearn", slice_time_ref=0.0)
        designs[spelling] = result.design.X[:, 0]
    np.testing.assert_allclose(designs["factor"], designs["plain"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(designs["factor kept"], designs["plain kept"], rtol=1e-12, atol=1e-14)
    from nilearn.glm.first_level import make_first_level_design_matrix

    given = events.assign(modulation=pd.to_numeric(events["modulation"], errors="coerce").fillna(1.0))
    given = given[given["trial_type"] == "congruent"][["onset", "duration", "trial_type", "modulation"]]
    reference = make_first_level_design_matrix(np.arange(SCANS) * TR, given, hrf_model="spm", drift_model=None)
    np.testing.assert_allclose(designs["factor"], reference["congruent"], atol=1e-10)
