"""BIDS Stats Models read and validated (voxfit.bids.spec): the specification's examples, the default model, and
each class of refusal (the JSON Schema's, then the specification's textual rules), one line each."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bids")
pytest.importorskip("jsonschema")

from voxfit.bids.spec import SCHEMA, default_model, load_model, node_edges  # noqa: E402
from voxfit.exceptions import InputError  # noqa: E402

MODELS = Path(__file__).parent / "data" / "bids_models"
EXAMPLE = json.loads((MODELS / "model-example_smdl.json").read_text())


def test_the_specification_examples_validate():
    example = load_model(MODELS / "model-example_smdl.json")
    assert [n["Name"] for n in example["Nodes"]] == ["run", "subject", "dataset"]
    walkthrough = load_model(str(MODELS / "model-walkthrough_smdl.json"))
    # its Input writes one task as a string, which the schema's Filter (lists) does not allow: read as a list
    assert walkthrough["Input"] == {"subject": ["01", "02", "03"], "task": ["simon"]}
    assert node_edges(walkthrough) == [("run_level", "subject_level"), ("subject_level", "one-sample_dataset")]


def test_sources_json_text_dict_and_none():
    text = (MODELS / "model-example_smdl.json").read_text()
    assert load_model(text) == load_model(EXAMPLE) == load_model(MODELS / "model-example_smdl.json")
    assert EXAMPLE == json.loads(text)  # the caller's dict is not changed
    assert load_model(None, task="stroop", trial_types=["a", "b"]) == default_model("stroop", ["a", "b"])


def test_the_schema_is_the_specifications(tmp_path):
    """The shipped schema is what ``python -m bsmschema`` writes (the two keys voxfit adds aside)."""
    pytest.importorskip("bsmschema")
    subprocess.run([sys.executable, "-m", "bsmschema", str(tmp_path)], check=True)
    generated = json.loads((tmp_path / "BIDSStatsModel.json").read_text())
    shipped = json.loads(SCHEMA.read_text())
    assert "99ee5b2df9865f2c24aecfccf49ea0959488c01c" in shipped.pop("$comment")
    shipped.pop("$schema")
    assert shipped == generated


def test_the_schema_is_package_data():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"voxfit.bids" = ["bids_stats_models.schema.json"]' in pyproject


def test_default_model():
    model = default_model("stroop", ["congruent", "incongruent"])
    run, subject, dataset = model["Nodes"]
    assert run["Model"] == {
        "Type": "glm",
        "X": ["congruent", "incongruent", 1],
        "HRF": {"Variables": ["congruent", "incongruent"], "Model": "spm"},
    }
    assert run["DummyContrasts"] == {"Contrasts": ["congruent", "incongruent"], "Test": "t"}
    assert (subject["Level"], subject["Model"], subject["GroupBy"]) == (
        "Subject",
        {"Type": "meta", "X": [1]},
        ["subject", "contrast"],
    )
    assert (dataset["Level"], dataset["Model"], dataset["GroupBy"]) == (
        "Dataset",
        {"Type": "glm", "X": [1]},
        ["contrast"],
    )
    assert model["Input"] == {"task": ["stroop"]}
    with_sessions = default_model("stroop", ["a"], sessions=True)
    assert [n["Level"] for n in with_sessions["Nodes"]] == ["Run", "Session", "Subject", "Dataset"]
    assert node_edges(with_sessions) == [("run", "session"), ("session", "subject"), ("subject", "dataset")]
    assert load_model(with_sessions) == with_sessions
    with pytest.raises(InputError, match="trial types"):
        default_model("stroop", [])


def _edit(change):
    model = copy.deepcopy(EXAMPLE)
    change(model)
    return model


def _node(i, key, value):
    return lambda m: m["Nodes"][i].__setitem__(key, value)


def _model(i, key, value):
    return lambda m: m["Nodes"][i]["Model"].__setitem__(key, value)


def _contrast(key, value):
    return lambda m: m["Nodes"][0]["Contrasts"][0].__setitem__(key, value)


SCHEMA_REFUSALS = {
    "model type": (
        _model(1, "Type", "mixed"),
        'model: node "subject" (Nodes[1]): Model.Type must be one of glm, meta; got "mixed".',
    ),
    "missing X": (lambda m: m["Nodes"][1]["Model"].pop("X"), 'node "subject" (Nodes[1]): Model has no X, which'),
    "missing Name": (lambda m: m.pop("Name"), "model: the model has no Name, which the specification requires."),
    "level": (
        _node(0, "Level", "run"),
        'node "run" (Nodes[0]): Level must be one of Run, Session, Subject, Dataset; got "run" (the specification '
        'spells it "Run": write that).',
    ),
    "model type spelt otherwise": (  # (FitLins 0.11 takes "Meta" for fixed effects, and fits its "meta" as a GLM)
        _model(1, "Type", "Meta"),
        'Model.Type must be one of glm, meta; got "Meta" (the specification spells it "meta": write that).',
    ),
    "X item": (_model(0, "X", ["congruent", 2]), "Model.X[1] must be 1 or a string; got 2."),
    "weights": (
        _contrast("Weights", [1, {}]),
        "Contrasts[0].Weights must be a list of numbers or strings or a list of lists",
    ),
    "test": (_contrast("Test", "z"), 'Contrasts[0].Test must be one of pass, t, F; got "z".'),
    "group by": (_node(0, "GroupBy", "run"), 'GroupBy must be a list; got "run".'),
    "transformer": (
        _node(0, "Transformations", {"Transformer": "fsl", "Instructions": []}),
        'Transformations.Transformer must be "pybids-transforms-v1"; got "fsl".',
    ),
    "input": (lambda m: m.__setitem__("Input", 3), "model: Input must be an object or null; got 3."),
    "dummy contrasts true": (
        _node(1, "DummyContrasts", True),
        'DummyContrasts must be an object or null; got true (for a t test of every column: {"Test": "t"}).',
    ),
    "edge": (lambda m: m["Edges"][0].__setitem__("Source", 1), "edge (Edges[0]): Source must be a string; got 1."),
}


@pytest.mark.parametrize("case", SCHEMA_REFUSALS)
def test_schema_refusals(case):
    change, message = SCHEMA_REFUSALS[case]
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_model(_edit(change))
    assert "\n" not in str(info.value)


def _hrf(model, **extra):
    return _model(0, "HRF", {"Variables": ["congruent"], "Model": model, **extra})


def _instructions(*instructions):
    return _node(0, "Transformations", {"Transformer": "pybids-transforms-v1", "Instructions": list(instructions)})


def _f_passed(m):
    m["Nodes"][0]["Contrasts"].append(
        {"Name": "both", "ConditionList": ["congruent", "incongruent"], "Weights": [[1, 0], [0, 1]], "Test": "F"}
    )
    m["Nodes"][1]["Model"]["X"] = ["both"]


RULE_REFUSALS = {
    "version": (
        lambda m: m.__setitem__("BIDSModelVersion", "2.0"),
        'BIDSModelVersion must be 1.x (voxfit implements BIDS Stats Models 1.0); got "2.0".',
    ),
    "unknown field": (
        _node(0, "DummyContrast", {"Test": "t"}),
        '"DummyContrast" is not a field of a node in BIDS Stats Models 1.0; did you mean "DummyContrasts"?',
    ),
    "no nodes": (lambda m: m.update(Nodes=[], Edges=[]), "Nodes is empty"),
    "names repeat": (_node(2, "Name", "subject"), 'node "subject" (Nodes[2]): Name repeats Nodes[1]\'s.'),
    "edge to nowhere": (
        lambda m: m["Edges"].append({"Source": "subject", "Destination": "group"}),
        'Destination "group" names no node',
    ),
    "cycle": (
        lambda m: m["Edges"].append({"Source": "dataset", "Destination": "subject"}),
        "Edges make a cycle (subject -> dataset -> subject)",
    ),
    "two roots": (lambda m: m["Edges"].pop(0), "the graph must have one root node"),
    # a node fed by two edges: fitted once per edge into the same files, the last edge's kept (exit 0)
    "two sources": (
        lambda m: m["Edges"].append({"Source": "run", "Destination": "dataset"}),
        'node "dataset" is the Destination of two edges from "subject" and "run": its groups of each would be',
    ),
    # names a folder name makes one: both nodes wrote into sub-*/node-run, the last over the first (exit 0)
    "folder names": (
        lambda m: [
            m["Nodes"][1].update(Name="r-un"),
            *(e.update({k: "r-un" for k, v in e.items() if v == "subject"}) for e in m["Edges"]),
        ],
        'node "r-un" (Nodes[1]) would write into node-run, as node "run" does',
    ),
    "edge twice": (
        lambda m: m["Edges"].append(dict(m["Edges"][1])),
        'node "dataset" is the Destination of two edges from "subject": its groups',
    ),
    # Filter keys pybids ignores, passing every input: a participants.tsv column, a capital, a plural
    "filter column": (
        lambda m: m["Edges"][1].__setitem__("Filter", {"group": ["patient"]}),
        'edge (Edges[1]): Filter "group" is not an entity of the inputs, and pybids would pass every input on it',
    ),
    "filter capital": (
        lambda m: m["Edges"][1].__setitem__("Filter", {"Subject": ["01"]}),
        'Filter "Subject" is not an entity of the inputs, and pybids would pass every input on it; did you mean '
        '"subject"?',
    ),
    "filter plural": (
        lambda m: m["Edges"][0].__setitem__("Filter", {"subjects": ["01"]}),
        'did you mean "subject"?',
    ),
    "run not root": (_node(1, "Level", "Run"), 'node "subject" (Nodes[1]): a Run node must be the root'),
    "meta at run": (
        _model(0, "Type", "meta"),
        'Model.Type "meta" (a meta-analysis of lower-level maps) needs a level above Run',
    ),
    "formula": (
        _model(0, "Formula", "congruent + 1"),
        "Model.Formula is not supported by voxfit; list the design's columns in Model.X",
    ),
    "X twice": (_model(0, "X", ["congruent", "congruent", 1]), 'Model.X names "congruent" twice.'),
    "condition not in X": (
        _contrast("ConditionList", ["incongruent", "neutral"]),
        'ConditionList names "neutral", which is not in Model.X',
    ),
    "weights count": (
        _contrast("Weights", [1, -1, 0]),
        "Weights must have one value per condition of ConditionList (2); got [1, -1, 0].",
    ),
    "t with rows": (_contrast("Weights", [[1, -1]]), "Weights of a t contrast must be one list of numbers"),
    "weight text": (_contrast("Weights", [1, "one"]), 'Weights must be numbers or fractions such as "1/3"; got "one".'),
    "contrast names repeat": (
        lambda m: m["Nodes"][0]["Contrasts"].append(copy.deepcopy(m["Nodes"][0]["Contrasts"][0])),
        "Name repeats another contrast's",
    ),
    # a name whose files' labels would be empty: each run failed alone, after the run before it was fitted
    "contrast name no label": (_contrast("Name", "+"), "Contrasts[0] \"+\": contrast name '+' has no ASCII letter or"),
    "contrast is a dummy": (
        lambda m: m["Nodes"][0].update(
            DummyContrasts={"Contrasts": ["incongruent_vs_congruent"], "Test": "t"},
            Model={"Type": "glm", "X": ["incongruent_vs_congruent", "congruent", "incongruent"]},
        ),
        'contrast "incongruent_vs_congruent" is also made by DummyContrasts',
    ),
    "dummy not in X": (
        _node(0, "DummyContrasts", {"Contrasts": ["neutral"], "Test": "t"}),
        'DummyContrasts.Contrasts names "neutral", which is not in Model.X',
    ),
    "hrf model": (
        _hrf("afni"),
        "Model.HRF.Model must be one of spm, spm + derivative, spm + derivative + dispersion, glover, glover + "
        'derivative, glover + derivative + dispersion, fir (the models voxfit implements); got "afni".',
    ),
    "hrf variable": (
        _model(0, "HRF", {"Variables": ["neutral"], "Model": "spm"}),
        'Model.HRF.Variables names "neutral", which is not in Model.X',
    ),
    "hrf parameters": (_hrf("spm", Parameters={"delay": 5}), '"delay" is not a parameter of the spm model in voxfit'),
    "fir delays": (
        _hrf("fir", Parameters={"fir_delays": [1, 2]}),
        "fir_delays must list the FIR delays in scans from 0",
    ),
    "hrf above run": (
        _model(1, "HRF", {"Variables": [], "Model": "spm"}),
        "Model.HRF convolves time series, which only a Run node has",
    ),
    "low pass": (
        _model(0, "Options", {"LowPassFilterCutoffHz": 0.1}),
        "Model.Options.LowPassFilterCutoffHz (a low-pass filter) is not supported by voxfit",
    ),
    "replace variables": (
        _model(0, "Options", {"ReplaceVariables": {"x": "voxel"}}),
        "Options.ReplaceVariables (replacing design columns by voxel time series) is not supported",
    ),
    "aggregate": (
        _model(0, "Options", {"Aggregate": "mean"}),
        "Options.Aggregate (aggregating time series within a mask) is not supported",
    ),
    "high pass sign": (
        _model(0, "Options", {"HighPassFilterCutoffHz": 0}),
        "HighPassFilterCutoffHz must be a positive frequency in Hz",
    ),
    "high pass above run": (
        _model(1, "Options", {"HighPassFilterCutoffHz": 0.01}),
        "filters time series, which only a Run node has",
    ),
    "F passed on": (
        _f_passed,
        'node "subject" (Nodes[1]) uses "both", an F contrast of node "run"; F contrasts are terminal',
    ),
    "F in edge filter": (
        lambda m: (
            m["Nodes"][0].update(DummyContrasts={"Contrasts": ["congruent"], "Test": "F"}),
            m["Edges"][0].update(Filter={"contrast": ["congruent"]}),
        ),
        'uses "congruent", an F contrast of node "run"',
    ),
    "transformation group": (
        _instructions({"Name": "Group", "Input": ["trans_x", "trans_y"]}),
        '"Group" cannot be written in a model',
    ),
    "transformation name": (
        _instructions({"Name": "Scal", "Input": ["x"]}),
        '"Scal" is not a transformation of pybids-transforms-v1; did you mean "Scale"?',
    ),
    "transformation field missing": (
        _instructions({"Name": "Rename", "Input": ["x"]}),
        'Instructions[0] "Rename" has no Output, which Rename requires.',
    ),
    "transformation input missing": (_instructions({"Name": "Scale"}), '"Scale" has no Input, which Scale requires.'),
    "transformation unknown argument": (
        _instructions({"Name": "Threshold", "Input": ["x"], "Cutoff": 2}),
        '"Cutoff" is not an argument of Threshold',
    ),
    "transformation query": (
        _instructions({"Name": "Filter", "Input": ["x"]}),
        '"Filter" has no Query, which Filter requires.',
    ),
    "run node grouped without run": (  # (pybids models a subject's runs in one design: they were fitted apart)
        _node(0, "GroupBy", ["subject"]),
        'GroupBy ["subject"] leaves out "run": pybids would model the runs of each group in one design',
    ),
    "transformation above run": (
        lambda m: m["Nodes"][1].update(
            Transformations={"Transformer": "pybids-transforms-v1", "Instructions": [{"Name": "Lag", "Input": ["x"]}]}
        ),
        '"Lag" works on time series, which only a Run node has.',
    ),
}


@pytest.mark.parametrize("case", RULE_REFUSALS)
def test_rule_refusals(case):
    change, message = RULE_REFUSALS[case]
    with pytest.raises(InputError, match=re.escape(message)) as info:
        load_model(_edit(change))
    assert "\n" not in str(info.value)


def test_read_refusals(tmp_path):
    with pytest.raises(InputError, match=r"model .*absent_smdl.json: no such file"):
        load_model(tmp_path / "absent_smdl.json")
    bad = tmp_path / "bad_smdl.json"
    bad.write_text('{"Name": "x",')
    with pytest.raises(InputError, match=r"bad_smdl.json is not valid JSON \(line 1"):
        load_model(bad)
    bad.write_text('{"a":' * 100000 + "1" + "}" * 100000)  # (beyond Python's stack: a RecursionError before)
    with pytest.raises(InputError, match=r"bad_smdl.json nests its values deeper than a BIDS Stats Model does"):
        load_model(bad)
    good = default_model("stroop", ["congruent"])  # nested just short of the decoder's limit: the validator's own
    for depth in range(900, 1010, 5):  # recursion, or an error's repr, ran out (an internal error at ~975 deep)
        text = json.dumps(good).replace('"Type": "glm"', '"Type": "glm", "Options": ' + "[" * depth + "]" * depth, 1)
        with pytest.raises(InputError):
            load_model(text)
    with pytest.raises(InputError, match="a BIDS Stats Model is a JSON object; got a list"):
        load_model(_listed_model(tmp_path))
    with pytest.raises(InputError, match="must be a path to a BIDS Stats Model"):
        load_model(3)


def _listed_model(tmp_path):
    path = tmp_path / "list_smdl.json"
    path.write_text("[1]")
    return path


def test_valid_variants():
    """What the specification allows is accepted: F contrasts 1-D or 2-D, fractions as text, wildcards in X,
    nodes chained in order without Edges, transformations with their fields, FIR with its delays."""
    model = _edit(lambda m: m.pop("Edges"))
    run = model["Nodes"][0]
    run["Model"]["X"] = ["congruent", "incongruent", "trans_*", 1]
    run["Model"]["HRF"] = {
        "Variables": ["congruent", "incongruent"],
        "Model": "fir",
        "Parameters": {"fir_delays": [0, 1, 2]},
    }
    run["Model"]["Options"] = {"HighPassFilterCutoffHz": 0.01, "Mask": {"desc": "brain"}}
    run["Contrasts"] += [
        {"Name": "avg", "ConditionList": ["congruent", "incongruent"], "Weights": ["1/2", "1/2"], "Test": "t"},
        {"Name": "motion", "ConditionList": ["trans_x", "trans_y"], "Weights": [[1, 0], [0, 1]], "Test": "F"},
        {"Name": "one", "ConditionList": [1], "Weights": [1], "Test": "pass"},
    ]
    run["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [
            {"Name": "Factor", "Input": ["trial_type"]},
            {"Name": "Scale", "Input": ["trans_x"], "Demean": True, "Rescale": False, "Output": ["trans_x_c"]},
            {"Name": "Convolve", "Input": ["trial_type.congruent"], "Model": "spm", "Derivative": True},
            {"Name": "And", "Input": ["a", "b"], "Output": "ab"},
        ],
    }
    assert load_model(model)["Nodes"][0]["Contrasts"][-1]["Test"] == "pass"
    assert node_edges(model) == [("run", "subject"), ("subject", "dataset")]
    dataset = model["Nodes"][-1]  # ("intercept" is pybids' name of Model.X's 1: a contrast may call it so)
    dataset["Model"] = {"Type": "glm", "X": [1, "age"]}
    dataset.pop("DummyContrasts", None)
    dataset["Contrasts"] = [{"Name": "mean", "ConditionList": ["intercept"], "Weights": [1], "Test": "t"}]
    assert load_model(model)["Nodes"][-1]["Contrasts"][0]["ConditionList"] == ["intercept"]
    dataset.pop("Contrasts")
    dataset["DummyContrasts"] = {"Contrasts": ["intercept"], "Test": "t"}
    assert load_model(model)["Nodes"][-1]["DummyContrasts"]["Contrasts"] == ["intercept"]


def test_contrasts_given_as_null_are_none():
    """The schema allows a node's Contrasts and DummyContrasts to be null, and pybids' own validation failed on
    them ("argument of type 'NoneType' is not iterable": exit 1, nothing written; a tester's): null is none."""
    from bids.modeling.statsmodels import validate_model
    from bids.utils import convert_JSON

    def nulls(m):
        m["Nodes"][0]["Contrasts"] = None
        m["Nodes"][1]["DummyContrasts"] = None

    model = load_model(_edit(nulls))
    assert "Contrasts" not in model["Nodes"][0] and "DummyContrasts" not in model["Nodes"][1]
    validate_model(convert_JSON(model))


def test_a_filter_on_a_key_the_source_node_groups_by_is_taken():
    """A Filter on participants.tsv's group after a node grouped by it (its groups carry the key): pybids filters
    on it, so it is not refused as a key of no input."""

    def change(m):
        m["Nodes"][2]["GroupBy"] = ["contrast", "group"]
        m["Nodes"].append({**m["Nodes"][2], "Name": "patients", "GroupBy": ["contrast"]})
        m["Edges"].append({"Source": "dataset", "Destination": "patients", "Filter": {"group": ["patient"]}})

    assert load_model(_edit(change))["Edges"][-1]["Filter"] == {"group": ["patient"]}
