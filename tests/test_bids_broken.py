"""voxfit bids on broken datasets, through the command line: each breakage is named on one line (the file, the
column, the node), the exit status is 2, and what is not broken is fitted.

tests/test_bids_study.py covers a missing events file, confounds of the wrong length and the repetition time
missing from every sidecar; these are the other classes the issue lists: a model naming a column the data lack
(in one run, in every run), a model whose Input names an entity value the dataset lacks, and a subject without
preprocessed runs.
"""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("bids")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402

MODEL = {
    "Name": "broken",
    "BIDSModelVersion": "1.0.0",
    "Input": {"task": ["stroop"]},
    "Nodes": [
        {
            "Level": "Run",
            "Name": "runlevel",
            "GroupBy": ["run", "subject"],
            "Model": {
                "Type": "glm",
                "X": ["congruent", "incongruent", "nuisance", 1],
                "HRF": {"Variables": ["congruent", "incongruent"], "Model": "spm"},
            },
            "DummyContrasts": {"Contrasts": ["congruent"], "Test": "t"},
        },
        {
            "Level": "Subject",
            "Name": "subjectlevel",
            "GroupBy": ["subject", "contrast"],
            "Model": {"Type": "meta", "X": [1]},
            "DummyContrasts": {"Test": "t"},
        },
        {
            "Level": "Dataset",
            "Name": "grouplevel",
            "GroupBy": ["contrast"],
            "Model": {"Type": "glm", "X": [1]},
            "DummyContrasts": {"Test": "t"},
        },
    ],
}


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds", subjects=3, runs=2, scans=40, extra_confounds=("nuisance",))


def _dataset(tmp_path, subjects, runs):
    """The `dataset` fixture's study at fewer subjects or runs, for claims that do not depend on 3 x 2 (each
    `voxfit bids` costs about 0.5 s of pybids, 0.25 s a run, whatever the volumes' size)."""
    return make_dataset(tmp_path / "ds", subjects=subjects, runs=runs, scans=40, extra_confounds=("nuisance",))


def _bids(tmp_path, study, capsys, model=None, level="dataset"):
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model or MODEL))
    argv = ["bids", str(study.root), str(tmp_path / "out"), level, "--derivatives", str(study.derivatives)]
    code = main([*argv, "--model", str(path), "--quiet"])
    err = capsys.readouterr().err
    # (the notes of groups built without a failed input are checked in test_bids_run.py)
    return code, [
        line for line in err.splitlines() if line.startswith("voxfit:") and not line.startswith("voxfit: note:")
    ]


def test_a_column_missing_from_one_run(tmp_path, capsys):
    dataset = _dataset(tmp_path, subjects=2, runs=2)
    table = dataset.derivatives / "sub-02" / "func" / "sub-02_task-stroop_run-1_desc-confounds_timeseries.tsv"
    pd.read_csv(table, sep="\t").drop(columns="nuisance").to_csv(table, sep="\t", index=False, na_rep="n/a")
    code, lines = _bids(tmp_path, dataset, capsys)
    assert code == 2
    assert len(lines) == 1
    line = lines[0]
    assert "node runlevel" in line and "sub-02_task-stroop_run-1" in line and '"nuisance"' in line
    out = tmp_path / "out"
    assert len(list(out.glob("sub-*/node-runlevel/*contrast-congruent_stat-z_statmap.nii.gz"))) == 2 * 2 - 1
    assert len(list(out.glob("sub-*/node-subjectlevel/*contrast-congruent_stat-z_statmap.nii.gz"))) == 2
    assert (out / "node-grouplevel" / "contrast-congruent_stat-z_statmap.nii.gz").is_file()


def test_a_column_no_run_has(tmp_path, capsys):
    dataset = _dataset(tmp_path, subjects=2, runs=1)
    model = json.loads(json.dumps(MODEL))
    model["Nodes"][0]["Model"]["X"] = ["congruent", "incongruent", "nuisance_typo", 1]
    code, lines = _bids(tmp_path, dataset, capsys, model)
    assert code == 2
    runs = [line for line in lines if "node runlevel" in line]
    assert len(runs) == 2 and all('"nuisance_typo"' in line and "_desc-preproc_bold.nii.gz" in line for line in runs)
    later = [line for line in lines if "node runlevel" not in line]
    assert len(later) == 2 and all("no inputs" in line for line in later)  # not pybids' entity-index message
    assert "node subjectlevel" in later[0] and "node grouplevel" in later[1]


@pytest.mark.parametrize("entity, value", [("task", "nback"), ("subject", "09"), ("session", "pre")])
def test_model_input_naming_an_absent_entity(tmp_path, capsys, entity, value):
    dataset = _dataset(tmp_path, subjects=1, runs=1)  # (refused before anything is fitted)
    model = json.loads(json.dumps(MODEL))
    model["Input"] = {"task": ["stroop"], entity: [value]}
    code, lines = _bids(tmp_path, dataset, capsys, model)
    assert code == 2 and len(lines) == 1
    assert "Input" in lines[0] and entity in lines[0] and repr(value) in lines[0]
    assert not (tmp_path / "out" / "sub-01").exists()  # refused before anything was fitted


def test_model_input_chooses_the_subjects(tmp_path, capsys):
    dataset = _dataset(tmp_path, subjects=3, runs=1)
    model = json.loads(json.dumps(MODEL))
    model["Input"] = {"task": "stroop", "subject": ["01", "03"]}
    code, lines = _bids(tmp_path, dataset, capsys, model)
    assert code == 0 and not lines
    assert sorted(p.name for p in (tmp_path / "out").glob("sub-*")) == ["sub-01", "sub-03"]


@pytest.mark.parametrize("run", [[1], 2, ["02"]])
def test_model_input_chooses_the_runs(tmp_path, capsys, run):
    """Input.run (an entity other than task, subject or session) was checked and not used: the runs it leaves out
    were fitted without variables, each a failure ("check its events.tsv"), exit 2."""
    dataset = _dataset(tmp_path, subjects=2, runs=2)
    model = json.loads(json.dumps(MODEL))
    model["Input"] = {"task": "stroop", "run": run}
    code, lines = _bids(tmp_path, dataset, capsys, model)
    assert code == 0 and not lines, lines
    kept = int(run[0] if isinstance(run, list) else run)
    fitted = sorted(p.name.split("_run-")[1][0] for p in (tmp_path / "out").glob("sub-*/node-runlevel/*_model.json"))
    assert fitted == [str(kept)] * 2


def test_a_studys_failures_name_the_command_lines_options(tmp_path, capsys):
    """A run's failure is said in the command line's words, as fit's and group's errors are: it named the Python
    parameter `max_memory` where the user gave --max-memory."""
    dataset = _dataset(tmp_path, subjects=1, runs=1)
    argv = ["bids", str(dataset.root), str(tmp_path / "out"), "run", "--derivatives", str(dataset.derivatives)]
    assert main([*argv, "--max-memory", "1M", "--quiet"]) == 2
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("voxfit: failed:")]
    assert failures and all("--max-memory='1M' cannot hold" in line and "`" not in line for line in failures)


def test_a_run_without_a_brain_mask_says_it_is_fitted_within_the_automatic_mask(tmp_path, capsys):
    """fMRIPrep's desc-brain_mask missing for a run: fitted within the automatic mask, which was said nowhere (on
    unmasked BOLD it takes in what is bright enough outside the brain); its model.json said the rule without SPM's
    threshold that it applied (threshold null), and says it now."""
    dataset = _dataset(tmp_path, subjects=1, runs=2)  # (run-2 keeps its mask)
    next(dataset.derivatives.glob("sub-01/func/*run-1*_desc-brain_mask.nii.gz")).unlink()
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(MODEL))
    argv = ["bids", str(dataset.root), str(tmp_path / "out"), "run", "--derivatives", str(dataset.derivatives)]
    assert main([*argv, "--model", str(path)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "no brain mask for the run" in line]
    assert len(notes) == 1 and "sub-01_task-stroop_run-1" in notes[0] and "automatic mask" in notes[0], notes
    records = {p.name: json.loads(p.read_text())["mask"] for p in (tmp_path / "out").rglob("*run-*_model.json")}
    automatic = [m for name, m in records.items() if "sub-01_task-stroop_run-1" in name]
    assert len(automatic) == 1 and automatic[0]["threshold"] == 0.8 and "SPM's" in automatic[0]["rule"], records
    assert all(m["threshold"] is None and m["source"] != "automatic" for m in records.values() if m not in automatic)


def test_a_models_mask_that_matches_no_file_fails_the_run_saying_so(tmp_path, capsys):
    """Model.Options.Mask naming a mask no file matches (a typo: desc "brian") fitted every run within the automatic
    mask, noting "no brain mask for the run in the derivatives" (a BIDS Stats Models tester's): each run fails,
    naming the model's entities; the mask it names is the one fitted within."""
    import copy

    dataset = _dataset(tmp_path, subjects=1, runs=2)
    model = copy.deepcopy(MODEL)
    model["Nodes"][0]["Model"]["Options"] = {"Mask": {"desc": ["brian"]}}
    code, lines = _bids(tmp_path, dataset, capsys, model, level="run")
    assert code == 2 and lines and all("the model's Options.Mask (desc brian) matches no mask" in x for x in lines)
    model["Nodes"][0]["Model"]["Options"] = {"Mask": {"desc": "brain"}}
    code, lines = _bids(tmp_path, dataset, capsys, model, level="run")
    assert code == 0, lines
    records = [json.loads(p.read_text())["mask"] for p in (tmp_path / "out").rglob("*run-*_model.json")]
    assert records and all(m["source"].endswith("_desc-brain_mask.nii.gz") for m in records)


def test_a_run_with_fewer_scans_than_its_raw_run_says_the_events_may_be_shifted(tmp_path, capsys):
    """Dummy scans cut from the preprocessed run after fMRIPrep (which keeps every scan): BIDS times the events
    from the raw run's first scan, so the design is as many TRs off, and nothing said (exit 0)."""
    dataset = _dataset(tmp_path, subjects=1, runs=2)  # (run-2 whole: said of run-1 alone)
    raw = next(dataset.root.glob("sub-01/func/*run-1_bold.nii.gz"))
    image = nib.load(raw)
    nib.save(nib.Nifti1Image(np.zeros(image.shape[:3] + (image.shape[3] + 4,), np.int16), image.affine), raw)
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(MODEL))
    argv = ["bids", str(dataset.root), str(tmp_path / "out"), "run", "--derivatives", str(dataset.derivatives)]
    assert main([*argv, "--model", str(path)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "the raw run has" in line]
    assert len(notes) == 1 and "sub-01_task-stroop_run-1" in notes[0], notes
    tr = json.loads(next(dataset.root.glob("*bold.json")).read_text())["RepetitionTime"]
    assert f"{image.shape[3] + 4} scans and the preprocessed one {image.shape[3]}" in notes[0], notes
    assert f"take 4 x TR ({4 * tr:g} s) from the onsets" in notes[0], notes


@pytest.mark.parametrize("how", ["no derivatives folder", "no preprocessed BOLD", "Input.space"])
def test_a_subject_without_preprocessed_runs(tmp_path, dataset, capsys, how):
    """Each raw run without its preprocessed run is a failure, also where the model's Input names an entity raw
    files do not carry (Input.space left every raw run out of the check: the subject vanished without a word)."""
    model = json.loads(json.dumps(MODEL))
    if how == "no derivatives folder":
        shutil.rmtree(dataset.derivatives / "sub-03")
    else:
        for bold in (dataset.derivatives / "sub-03" / "func").glob("*_bold.*"):
            bold.unlink()
        if how == "Input.space":
            model["Input"] = {"task": ["stroop"], "space": [dataset.space]}
    code, lines = _bids(tmp_path, dataset, capsys, model)
    assert code == 2
    failed = [line for line in lines if line.startswith("voxfit: failed:")]
    skipped = [line for line in lines if line.startswith("voxfit: skipped:")]
    assert len(failed) == 2 and len(lines) == 3  # one line per raw run, each naming the raw file
    assert "sub-03" in skipped[0] and "no input left" in skipped[0]  # its subject node says why it is not fitted
    said = re.findall(r"(sub-03_task-stroop_run-\d) failed at node", skipped[0])
    assert sorted(said) == ["sub-03_task-stroop_run-1", "sub-03_task-stroop_run-2"], skipped  # (each once)
    for run, line in zip((1, 2), sorted(failed)):
        assert "node runlevel" in line and f"sub-03_task-stroop_run-{run}_bold.nii.gz" in line
        assert "no preprocessed BOLD run" in line
    out = tmp_path / "out"
    assert len(list(out.glob("sub-0[12]/node-subjectlevel/*contrast-congruent_stat-z_statmap.nii.gz"))) == 2
    assert (out / "node-grouplevel" / "contrast-congruent_stat-z_statmap.nii.gz").is_file()


def test_a_subject_with_no_functional_data_is_not_a_failure(tmp_path, capsys):
    """A subject with anatomy only (no run of any task) has nothing to fit: not a failure."""
    dataset = _dataset(tmp_path, subjects=1, runs=1)
    anat = dataset.root / "sub-04" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(next((dataset.root / "sub-01" / "func").glob("*_bold.nii.gz")), anat / "sub-04_T1w.nii.gz")
    code, lines = _bids(tmp_path, dataset, capsys, level="subject")
    assert code == 0 and not lines


def test_sidecars_pybids_or_voxfit_cannot_read(tmp_path, capsys):
    """A sidecar JSON that does not decode or nests beyond Python's stack, or that gives a RepetitionTime or
    SliceTiming that is not numbers (pybids divides by every run's repetition time as it loads the confounds),
    stops the study in one line naming the file (internal errors before: pybids' OSError, the decoder's
    RecursionError, pybids' TypeError)."""
    dataset = _dataset(tmp_path, subjects=2, runs=1)  # (sub-02's run broken, sub-01's fitted)
    top = dataset.root / "task-stroop_bold.json"
    good = top.read_text()
    for text in ("{bad", '{"a":' * 100000 + "1" + "}" * 100000, '{"RepetitionTime": ' + "1" * 5000 + "}"):
        top.write_text(text)
        code, lines = _bids(tmp_path, dataset, capsys)
        assert code == 2 and len(lines) == 1 and "pybids could not index the dataset" in lines[0], lines
    top.write_text(good)
    sidecar = (
        dataset.derivatives
        / "sub-02"
        / "func"
        / "sub-02_task-stroop_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.json"
    )
    meta = json.loads(sidecar.read_text())
    for key, value in (
        ("RepetitionTime", "abc"),
        ("RepetitionTime", -2),
        ("RepetitionTime", 10**400),
        ("SliceTiming", ["0", "1"]),
    ):
        sidecar.write_text(json.dumps({**meta, key: value}))
        code, lines = _bids(tmp_path, dataset, capsys, level="run")
        assert code == 2 and len(lines) == 1 and key in lines[0] and "sub-02_task-stroop_run-1" in lines[0], lines


def test_the_output_folder_is_neither_the_dataset_nor_a_foreign_folder(tmp_path, capsys):
    """A study writes its own dataset_description.json: into the raw dataset or a derivatives folder it would
    replace theirs, so those are refused even with --force; a non-empty folder that holds no voxfit study is
    refused unless --force; a study's own folder is reused. Nothing is written when refused."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=40, shape=(10, 10, 8))
    before = {
        p / "dataset_description.json": (p / "dataset_description.json").read_bytes()
        for p in (study.root, study.derivatives)
    }
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "dataset_description.json").write_text('{"Name": "my notes"}')

    def bids(out, *extra):
        code = main(
            ["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives), "--quiet", *extra]
        )
        return code, capsys.readouterr().err

    for out, message in (
        (study.root, "is the BIDS dataset; give a folder of its own"),
        (study.derivatives, "is a --derivatives folder; give a folder of its own"),
    ):
        for extra in ((), ("--force",)):
            code, err = bids(out, *extra)
            assert code == 2 and err.count("\n") == 1 and message in err, err
    code, err = bids(mine)
    assert code == 2 and err.count("\n") == 1 and "is not empty and holds no voxfit study" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["dataset_description.json"]
    assert {p: p.read_bytes() for p in before} == before  # (the dataset's and fMRIPrep's descriptions kept)
    assert bids(tmp_path / "out") == (0, "") and bids(tmp_path / "out") == (0, "")  # (its own folder: reused)
    assert bids(mine, "--force")[0] == 0 and "voxfit" in (mine / "dataset_description.json").read_text()


BROKEN_EVENTS = {  # (each breakage, in turn, in run-1 of subjects 01, 02, ...: what its failure says)
    "empty": "events.tsv is empty",
    "commas": "names no onset and duration columns",
    "onset": "line 2: onset 'abc' is not a number",
    "short": "line 3: 2 values for the header's 4 columns",
}


def test_an_events_file_pybids_cannot_read_fails_its_runs_alone(tmp_path, capsys):
    """Events tables that stopped the whole study inside pybids (pandas' EmptyDataError, KeyError, AttributeError:
    exit 1), or lost a row silently (a short one): the run fails with what is wrong, and the rest is fitted: its
    subject's other run (its tables read alone, where pybids cannot read the subject's whole; it failed with
    pybids' words before), the other subject, the dataset node of both. (One study: a subject per breakage, its
    run-1 broken its own way, and a last subject whole, where each breakage was a study of two subjects: each
    failure is still its own line, naming its run and what is wrong with it.)"""
    study = make_dataset(tmp_path / "ds", subjects=len(BROKEN_EVENTS) + 1, runs=2, scans=40, shape=(10, 10, 8))
    for subject, breakage in zip(study.subjects, BROKEN_EVENTS):
        events = study.root / f"sub-{subject}" / "func" / f"sub-{subject}_task-stroop_run-1_events.tsv"
        lines = events.read_text().splitlines()
        if breakage == "empty":
            events.write_text("")
        elif breakage == "commas":
            events.write_text("\n".join(line.replace("\t", ",") for line in lines) + "\n")
        elif breakage == "onset":
            events.write_text("\n".join([lines[0], "abc" + lines[1][lines[1].index("\t") :], *lines[2:]]) + "\n")
        else:
            events.write_text("\n".join([*lines[:2], "\t".join(lines[2].split("\t")[:2]), *lines[3:]]) + "\n")
    out = tmp_path / "out"
    code = main(["bids", str(study.root), str(out), "dataset", "--derivatives", str(study.derivatives), "--quiet"])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("voxfit: failed:")]
    assert code == 2 and "Traceback" not in err and "internal error" not in err, err
    assert len(failed) == len(BROKEN_EVENTS), failed  # (one line per broken run, none for the runs beside them)
    for subject, (breakage, message) in zip(study.subjects, BROKEN_EVENTS.items()):
        (line,) = [line for line in failed if f"sub-{subject}_task-stroop_run-" in line]
        assert message in line and f"sub-{subject}_task-stroop_run-1" in line, (breakage, line)
        maps = list((out / f"sub-{subject}" / "node-subject").glob("*_stat-z_statmap.nii.gz"))
        assert len(maps) == 2, (breakage, maps)  # (its run-2, both contrasts)
    assert len(list((out / f"sub-{study.subjects[-1]}" / "node-subject").glob("*_stat-z_statmap.nii.gz"))) == 2
    assert len(list((out / "node-dataset").glob("*_stat-z_statmap.nii.gz"))) == 2


def test_a_repetition_time_the_raw_and_preprocessed_sidecars_disagree_on(tmp_path, capsys):
    """The raw sidecar's TR built the design, silently, whatever fMRIPrep's said: now the run fails, naming both
    (one of them is wrong), and the others are fitted."""
    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    sidecar = study.root / "sub-01" / "func" / "sub-01_task-stroop_run-1_bold.json"  # (overrides the task's)
    sidecar.write_text(json.dumps({"RepetitionTime": 1.0}))
    out = tmp_path / "out"
    code = main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "sub-01" in err and "says RepetitionTime 2.0 s but the raw run's says 1.0 s" in err, err
    assert len(list((out / "sub-02" / "node-run").glob("*_stat-z_statmap.nii.gz"))) == 2


def test_a_study_that_fits_nothing_leaves_no_output_folder(tmp_path, capsys):
    """Refused on bad input after pybids indexed the dataset (an unknown --space), or with every run failed (and
    then no report): the output folder it made is gone (it held pybids' index and the description only); one
    given empty, or holding hidden files only (.gitkeep), is left as it was, and is written into by a study."""
    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    bids = ["bids", str(study.root), "OUT", "dataset", "--derivatives", str(study.derivatives)]
    made, given, hidden = tmp_path / "made", tmp_path / "given", tmp_path / "hidden"
    given.mkdir()
    hidden.mkdir()
    (hidden / ".gitkeep").write_text("")
    for out in (made, given, hidden):
        argv = [str(out) if a == "OUT" else a for a in bids]
        assert main([*argv, "--space", "nowhere", "--quiet"]) == 2
        assert "no preprocessed BOLD run in space 'nowhere'" in capsys.readouterr().err
        assert main([*argv, "--max-memory", "150M", "--report"]) == 2  # (every run fails: too small a cap)
        printed = capsys.readouterr()
        assert "cannot hold" in printed.err and "nothing written" in printed.out and "reports:" not in printed.out
    assert not made.exists() and list(given.iterdir()) == [] and [p.name for p in hidden.iterdir()] == [".gitkeep"]
    assert main([*[str(hidden) if a == "OUT" else a for a in bids], "--quiet"]) == 0
    assert (hidden / "node-dataset").is_dir()


def test_events_files_with_quoted_cells_are_read(tmp_path, capsys):
    """R's write.table quotes every string, and BIDS quotes a string holding a tab: such events files are read
    (the quotes taken off, as pandas does), not refused as lacking onset and duration columns."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=40, shape=(10, 10, 8))
    for events in study.root.glob("sub-*/func/*_events.tsv"):
        lines = [line.split("\t") for line in events.read_text().splitlines()]
        quoted = [[f'"{c}"' if not c.replace(".", "").isdigit() else c for c in row] for row in lines]
        quoted[1][-1] = '"said\tslowly"' if len(quoted[1]) > 3 else quoted[1][-1]  # (a tab inside quotes)
        events.write_text("\n".join("\t".join(row) for row in quoted) + "\n")
    out = tmp_path / "out"
    code = main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives), "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_a_model_high_pass_above_nyquist_fails_the_runs(tmp_path, capsys):
    """Options.HighPassFilterCutoffHz of 1 Hz at TR 2 s (Nyquist 0.25 Hz): every frequency of the run would go
    to the drifts; each run fails saying so, as `voxfit design` refuses it."""
    import copy

    dataset = _dataset(tmp_path, subjects=1, runs=2)
    model = copy.deepcopy(MODEL)
    model["Nodes"][0]["Model"]["Options"] = {"HighPassFilterCutoffHz": 1}
    code, lines = _bids(tmp_path, dataset, capsys, model, level="run")
    assert code == 2 and lines and all("shorter than two scans" in line for line in lines), lines


def test_an_unreadable_bold_fails_its_own_run_not_the_subjects_others(tmp_path):
    """One preprocessed BOLD that is not an image, in one session: pybids reads every run's BOLD header for its
    duration as it loads the subject's tables, and its error failed every run of the subject, in every session,
    with a message naming no file. That run fails alone (naming its file); the subject's other runs are fitted."""
    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=1, runs=2, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    bold = next((study.derivatives / "sub-01" / "ses-2").rglob("*run-1*_desc-preproc_bold.nii.gz"))
    bold.write_bytes(b"not an image " * 100)
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="subject", progress=False)
    runs = [f for f in result.failures if f.node == "run"]
    assert [f.group.split("_space")[0] for f in runs] == ["sub-01_ses-2_task-stroop_run-1"]
    assert bold.name in runs[0].reason
    assert len(list((tmp_path / "out").rglob("node-run/*_model.json"))) == 2 * 2 - 1  # (its 3 other runs)


def test_a_run_whose_confounds_pybids_cannot_parse_leaves_its_siblings_designs_as_they_were(tmp_path):
    """A confounds row with two cells too many in sub-01's run-2: pybids loaded the subject's events, then failed
    on the confounds; reading each run alone then loaded the events a second time, and pybids added the two up, so
    run-1's condition columns were doubled and its effects halved (the reviewer's finding). A load that fails keeps
    nothing: run-1's design is that of the study without the broken table."""
    from voxfit.bids import run
    from voxfit.bids.synthetic import nilearn_model

    study = make_dataset(tmp_path / "ds", subjects=1, runs=2, scans=40, shape=(8, 8, 6))
    kw = {"derivatives": [study.derivatives], "level": "run", "progress": False}
    assert run(study.root, tmp_path / "clean", model=nilearn_model(), **kw).ok
    confounds = next(study.derivatives.glob("sub-01/func/*run-2*_desc-confounds_timeseries.tsv"))
    lines = confounds.read_text().splitlines()
    lines[5] += "\t1.0\t2.0"
    confounds.write_text("\n".join(lines) + "\n")
    broken = run(study.root, tmp_path / "broken", model=nilearn_model(), **kw)
    assert [f.group.split("_space")[0] for f in broken.failures] == ["sub-01_task-stroop_run-2"]
    for folder in ("clean", "broken"):
        design = next((tmp_path / folder).glob("sub-01/node-run/*run-1*_design.tsv"))
        if folder == "clean":
            want = pd.read_csv(design, sep="\t")
        else:
            pd.testing.assert_frame_equal(pd.read_csv(design, sep="\t"), want)


def test_a_broken_hemisphere_is_named_by_its_own_run_and_its_partner_says_why_it_failed(tmp_path):
    """fsaverage5 runs, one run's hemi-R GIFTI cut in half: pybids reads the number of scans of every BOLD file
    of a run, both hemispheres', so the intact hemi-L failed too, blaming "this run's events or confounds tables,
    or its BOLD's header". The hemi-R run names its file, once; the hemi-L run says that pybids reads the other
    hemisphere's header too and that the broken file's own failure names it; the other run is fitted."""
    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=1, runs=2, scans=30, space="fsaverage5", vertices=200)
    bad = next(study.derivatives.rglob("*run-1_hemi-R_space-fsaverage5_bold.func.gii"))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="run", progress=False)
    reasons = {"".join(re.findall(r"run-\d+|hemi-[LR]", f.group)): f.reason for f in result.failures}
    assert sorted(reasons) == ["run-1hemi-L", "run-1hemi-R"], reasons
    assert reasons["run-1hemi-R"].count(bad.name) == 1, reasons  # (it was said twice: "X: X: not a readable...")
    assert "other hemispheres" in reasons["run-1hemi-L"] and "its own failure names it" in reasons["run-1hemi-L"]
    assert len(list((tmp_path / "out").rglob("node-run/*_model.json"))) == 2


def test_runs_named_as_fmriprep_before_1_2_are_named_with_what_to_do(tmp_path, capsys):
    """fMRIPrep before 1.2 named its outputs before BIDS Derivatives (..._bold_space-MNI152NLin2009cAsym_preproc.nii.gz,
    ..._bold_confounds.tsv): the study said only that no run was found "for desc preproc; check --derivatives, --task,
    --space and --desc", none of which helps. It names such a file and says what to do."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    renames = {
        "_space-MNI152NLin2009cAsym_desc-preproc_bold": "_bold_space-MNI152NLin2009cAsym_preproc",
        "_space-MNI152NLin2009cAsym_desc-brain_mask": "_bold_space-MNI152NLin2009cAsym_brainmask",
        "_desc-confounds_timeseries": "_bold_confounds",
    }
    for f in [p for p in study.derivatives.rglob("sub-*") if p.is_file()]:
        for new, old in renames.items():
            if new in f.name:
                f.rename(f.with_name(f.name.replace(new, old)))
    assert (
        main(["bids", str(study.root), str(tmp_path / "out"), "dataset", "--derivatives", str(study.derivatives)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "as fMRIPrep did before 1.2" in err[0] and "_bold_space-" in err[0], err
    assert "rerun fMRIPrep 1.2 or later" in err[0] and "check --derivatives" not in err[0]
    assert not (tmp_path / "out").exists()


def test_surface_runs_named_as_fmriprep_before_20_2_are_named_with_what_to_do(tmp_path, capsys):
    """fMRIPrep before 20.2 wrote surface runs without `_bold` (..._hemi-L.func.gii): no BOLD run to a BIDS query.
    The study said only that no run was found "for desc preproc" (a volume's entity), or with --space fsaverage5
    "spaces found: none; give one of them with --space"; it now names such a file and says what to do."""
    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=30, space="fsaverage5", vertices=50)
    for f in study.derivatives.rglob("*_bold.func.gii"):
        parts = f.name.removesuffix("_bold.func.gii").split("_")
        hemi = next(p for p in parts if p.startswith("hemi-"))
        f.rename(f.with_name("_".join(p for p in parts if p != hemi) + f"_{hemi}.func.gii"))
    argv = ["bids", str(study.root), str(tmp_path / "out"), "dataset", "--derivatives", str(study.derivatives)]
    for extra in ([], ["--space", "fsaverage5"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "as fMRIPrep did before 20.2, without _bold" in err[0], err
        assert "_hemi-L.func.gii and 3 more" in err[0] and "rerun fMRIPrep 20.2 or later" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_raw_dataset_given_as_its_derivatives_is_told_where_they_are(tmp_path, capsys):
    """--derivatives given the raw dataset's root (which holds derivatives/fmriprep): every raw run was said to have
    "no preprocessed BOLD run in the derivatives", then to check --derivatives. The folder is refused at once,
    naming the pipeline's folder inside it; nothing is written."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the raw dataset itself" in err[0] and f"({study.derivatives})" in err[0], err
    assert not out.exists()


def test_a_folder_that_does_not_exist_is_said_so_with_the_one_meant(tmp_path, capsys):
    """--derivatives .../fmriprp (a typo) was said to have no dataset_description.json, as a folder that is not
    fMRIPrep's would be (a tester's): now that it does not exist, and the folder beside it that was meant; the
    dataset's root likewise."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    out = tmp_path / "out"
    typo = study.derivatives.parent / "fmriprp"
    assert main(["bids", str(study.root), str(out), "run", "--derivatives", str(typo)]) == 2
    err = capsys.readouterr().err
    assert f"derivatives folder {typo} does not exist; did you mean {study.derivatives}?" in err, err
    root = ["bids", str(tmp_path / "dss"), str(out), "run", "--derivatives", str(study.derivatives)]
    assert main(root) == 2
    assert f"BIDS dataset {tmp_path / 'dss'} does not exist; did you mean {study.root}?" in capsys.readouterr().err
    root[1] = str(study.root / "participants.tsv")  # (a file: said so, not as a folder that does not exist)
    assert main(root) == 2
    assert f"BIDS dataset {study.root / 'participants.tsv'} is a file; give its folder." in capsys.readouterr().err
    # the folder above fMRIPrep's (derivatives/): the one inside it named (a tester's)
    above = ["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives.parent)]
    assert main(above) == 2
    assert f"give fMRIPrep's output folder ({study.derivatives}), the one" in capsys.readouterr().err
    assert not out.exists()
