"""voxfit bids on datasets as users hold them: names a file name would merge, several tasks, runs pybids cannot tell
apart, Model.Type, surfaces' hemispheres and confounds, the events' modulation, fMRIPrep's cosines, timing sidecars,
cluster inference, and what a study refuses before it fits (split from test_bids_study so that the two CI workers
share the studies)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bids")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402
from voxfit.exceptions import InputError  # noqa: E402

from .test_bids_study import SPACE, _maps, _study  # noqa: E402


def _drop_derivative_tr(study) -> None:
    for sidecar in study.derivatives.rglob("*_bold.json"):
        content = json.loads(sidecar.read_text())
        content.pop("RepetitionTime", None)
        sidecar.write_text(json.dumps(content))


def test_a_repetition_time_in_milliseconds_is_said_to_be(tmp_path, capsys):
    """RepetitionTime 2000 in the sidecars of runs whose headers give 2 s between scans: the design's high-pass
    was refused as shorter than two scans ("give a longer period"), and a longer one failed on NaN in a
    condition's column. Said for what it is."""
    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    _drop_derivative_tr(study)
    top = study.root / "task-stroop_bold.json"
    top.write_text(json.dumps({**json.loads(top.read_text()), "RepetitionTime": 2000}))
    assert main(["bids", str(study.root), str(tmp_path / "out"), "run", *deriv]) == 2
    err = capsys.readouterr().err
    assert (
        "its sidecars give RepetitionTime 2000 and its header 2 s between scans: the sidecar's is in milliseconds"
        in err
    )
    # a header whose time unit alone is wrong (milliseconds, pixdim 2) beside a sidecar's 2 s: the sidecar is right
    import nibabel as nib

    top.write_text(json.dumps({**json.loads(top.read_text()), "RepetitionTime": 2.0}))
    for sidecar in study.derivatives.rglob("*_bold.json"):
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "RepetitionTime": 2.0}))
    for bold in study.derivatives.rglob("*_desc-preproc_bold.nii.gz"):
        img = nib.load(bold)
        img.header.set_xyzt_units("mm", "msec")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), bold)
    assert main(["bids", str(study.root), str(tmp_path / "out2"), "run", *deriv, "--quiet"]) == 0


def test_a_multi_echo_runs_timing_comes_from_its_echoes_sidecars(tmp_path):
    """fMRIPrep combines a multi-echo run's echoes (_echo-N_bold in the raw dataset, no echo in the derivatives):
    the raw sidecars, whose RepetitionTime and SliceTiming the echoes share, were never read (no raw BOLD matched
    without an echo). A run whose preprocessed sidecar lacks RepetitionTime is refused, saying where it goes
    (pybids reads the run's events with it: it failed with 'fix the tables')."""
    import shutil

    from voxfit.bids.layout import find_runs, index, release_index

    study, _ = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    for bold in list(study.root.glob("sub-01/func/*_bold.nii.gz")):
        for echo in (1, 2):
            shutil.copy(bold, str(bold).replace("_bold.nii.gz", f"_echo-{echo}_bold.nii.gz"))
        bold.unlink()
    layout = index(study.root, [study.derivatives])
    try:
        (r,) = find_runs(layout, strict=False)
    finally:
        release_index(layout)
    assert r.tr == 2.0 and r.slice_timing is not None and len(r.slice_timing) == 8 and not r.problems
    _drop_derivative_tr(study)
    layout = index(study.root, [study.derivatives])
    try:
        (r,) = find_runs(layout, strict=False)
    finally:
        release_index(layout)
    assert "its JSON sidecar gives no RepetitionTime (the raw run's: 2 s)" in r.problems[0]
    assert '"RepetitionTime": 2 to sub-01_task-stroop_run-1_space' in r.problems[0]


def test_the_default_model_of_a_dataset_of_two_tasks_needs_one_chosen(tmp_path, capsys):
    """Two tasks with a trial type of the same name: the default model (no Input.task) pooled each subject's
    "congruent" of both tasks into one fixed effect, exit 0. Refused, naming the tasks and --task; with --task,
    that task's runs alone."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(8, 8, 6), task="nback")
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "subject", *deriv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the dataset holds the tasks nback, stroop; voxfit's default model is of one task" in err, err
    assert "--task nback" in err and not out.exists()
    assert main(["bids", str(study.root), str(out), "subject", *deriv, "--task", "stroop", "--quiet"]) == 0
    record = json.loads(next((out / "sub-01" / "node-subject").glob("*congruent_model.json")).read_text())
    assert record["inputs"] and all("task-stroop" in i["path"] for i in record["inputs"]), record["inputs"]
    # a task of runs that cannot be fitted (resting state: no events) beside one task is not a choice to make: its
    # runs are left out of the default model, as the model written says (they failed, exit 2, and were noted on every
    # group above, where rerunning the written model gave exit 0), and warned of
    for path in study.root.rglob("*task-nback*_events.tsv"):
        path.unlink()
    capsys.readouterr()
    assert main(["bids", str(study.root), str(tmp_path / "out2"), "subject", *deriv]) == 0
    err = capsys.readouterr().err
    assert "default model is of one task" not in err and "no events.tsv for this run" not in err, err
    assert "task nback: the dataset has no events.tsv of it, so its runs are not in voxfit's default model" in err
    assert "built without" not in err
    assert len(list((tmp_path / "out2").glob("sub-*/node-run/*task-stroop*_model.json"))) == 2
    assert not list((tmp_path / "out2").rglob("*task-nback*"))


def test_runs_told_apart_only_by_acquisition_are_refused_not_merged(tmp_path, capsys):
    """Two runs of a subject that differ only by acq- (or dir-, rec-): pybids keeps one set of variables per
    subject, task and run, so one run's events were lost ("pybids read no variables for this run; check its
    events.tsv", though they were fine) and the subject fitted from the other alone. Both are refused, naming
    why and what to do; the other subject is fitted."""
    study, deriv = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    for path in sorted(p for p in study.root.rglob("sub-01_*run-*") if p.is_file()):
        path.rename(path.with_name(path.name.replace("run-1", "acq-a_run-1").replace("run-2", "acq-b_run-1")))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", *deriv]) == 2
    err = capsys.readouterr().err
    assert "sub-01_task-stroop_run-1: runs acq-a, acq-b differ only by acq-, which BIDS Stats Models" in err, err
    assert "give them distinct run- numbers" in err and "pybids read no variables" not in err
    assert len(list((out / "sub-02" / "node-run").glob("*_model.json"))) == 2 and not (out / "sub-01").exists()


def _one_events_file(tmp_path):
    """One subject of two runs whose events are the same (run-1's copied over run-2's: one inherited file can hold
    them): the study, its --derivatives and the runs' events files."""
    import shutil

    study, deriv = _study(tmp_path, subjects=1, runs=2, scans=30, shape=(6, 6, 4))
    own = sorted(study.root.glob("sub-01/func/*_events.tsv"))
    shutil.copy(own[0], own[1])
    return study, deriv, own


@pytest.fixture(scope="module")
def own_events(tmp_path_factory):
    """The designs of `_one_events_file`'s study, each run with its own events file (make_dataset is seeded: every
    test's copy of the dataset is this one)."""
    tmp = tmp_path_factory.mktemp("own-events")
    study, deriv, _ = _one_events_file(tmp)
    assert main(["bids", str(study.root), str(tmp / "own"), "run", *deriv, "--quiet"]) == 0
    return sorted((tmp / "own").rglob("*_design.tsv"))


@pytest.mark.parametrize("held", ["top level", "subject", "acq- in the runs alone"])
def test_events_files_a_run_inherits_are_its_events(tmp_path, capsys, held, own_events):
    """BIDS's inheritance principle: an events file applies to every run whose entities include its own (a
    top-level task-x_events.tsv of a block design, a subject's without run-, one without the acq- its runs carry),
    as pybids and the validator read it. Each study was refused ("no events.tsv for this run ... add
    sub-01_task-stroop_run-1_events.tsv"); now each run's design is the one its own events file gave. Two files
    as near to a run are refused, naming them."""
    import shutil

    study, deriv, own = _one_events_file(tmp_path)  # (its designs, each run with its own file: `own_events`)
    if held == "top level":
        moved = [study.root / "task-stroop_events.tsv"]
    elif held == "subject":
        moved = [study.root / "sub-01" / "func" / "sub-01_task-stroop_events.tsv"]
    else:
        for path in sorted(p for p in study.root.rglob("*_run-*") if p.is_file() and "_events" not in p.name):
            path.rename(path.with_name(path.name.replace("_run-", "_acq-mb4_run-")))
        moved = [own[0].with_name("sub-01_task-stroop_run-1_events.tsv"), own[1]]
    shutil.copy(own[0], tmp_path / "events.tsv")
    for path in own:
        path.unlink()
    for path in moved:
        shutil.copy(tmp_path / "events.tsv", path)
    out = tmp_path / "inherited"
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--quiet"]) == 0, capsys.readouterr().err
    designs = sorted(out.rglob("*_design.tsv"))
    assert len(designs) == 2
    for mine, theirs in zip(designs, own_events):
        assert mine.read_text() == theirs.read_text()
    if held.startswith("acq"):  # beside each, as near: the subject's of the runs' acq-
        shutil.copy(moved[0], moved[0].with_name("sub-01_task-stroop_acq-mb4_events.tsv"))
        assert main(["bids", str(study.root), str(tmp_path / "two"), "run", *deriv]) == 2
        err = capsys.readouterr().err
        assert "several events files apply to" in err and "sub-01_task-stroop_acq-mb4_events.tsv" in err, err
    if moved[0].parent == study.root:  # the top-level file beside one run's own: what to do with the one above
        shutil.copy(moved[0], own[0])
        assert main(["bids", str(study.root), str(tmp_path / "three"), "run", *deriv]) == 2
        err = capsys.readouterr().err
        assert "where the file above serves runs without their own, copy it beside each of them, then remove" in err


@pytest.fixture(scope="module")
def plain_design(tmp_path_factory):
    """The design of a study of one subject's one run, held plain (make_dataset is seeded: each test's copy of the
    dataset is this one)."""
    tmp = tmp_path_factory.mktemp("plain")
    study, deriv = _study(tmp, subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    assert main(["bids", str(study.root), str(tmp / "plain"), "run", *deriv, "--quiet"]) == 0
    (design,) = sorted((tmp / "plain").rglob("*_design.tsv"))
    return design


@pytest.mark.parametrize("named", [False, True])
def test_a_complex_valued_runs_raw_magnitude_is_its_raw_run(tmp_path, capsys, named, plain_design):
    """Complex-valued BOLD (raw part-mag and part-phase runs, as for NORDIC): fMRIPrep preprocesses the magnitude,
    naming it with part-mag or without. Two raw runs matched each, and the study was refused saying to keep one (to
    delete raw phase data from a valid dataset); each run now takes its magnitude's sidecars (the phase's here
    give another RepetitionTime, which would be refused), and its design is the one of the same run held plain."""
    import shutil

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=30, shape=(6, 6, 4))  # (held plain: `plain_design`)
    for bold in list(study.root.glob("sub-*/func/*_bold.nii.gz")):
        for part in ("mag", "phase"):
            shutil.copy(bold, str(bold).replace("_bold.nii.gz", f"_part-{part}_bold.nii.gz"))
        bold.with_name(bold.name.replace("_bold.nii.gz", "_part-phase_bold.json")).write_text(
            json.dumps({"RepetitionTime": 3.0})
        )
        bold.unlink()
    if named:
        for path in [p for p in study.derivatives.rglob("*_space-*") if p.is_file()]:
            path.rename(str(path).replace("_space-", "_part-mag_space-"))
    out = tmp_path / "complex"
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--quiet"]) == 0, capsys.readouterr().err
    (mine,) = sorted(out.rglob("*_design.tsv"))
    assert mine.read_text() == plain_design.read_text()


@pytest.mark.parametrize("padded", ["raw", "derivatives"])
def test_a_run_number_padded_on_one_side_only_is_the_same_run(tmp_path, capsys, padded, plain_design):
    """fMRIPrep 20.2 and 21 named a raw run-01 run-1 (nipreps/fmriprep#2666). pybids takes them for one run, and the
    run was fitted with its own events and confounds; but the raw run-01 was also taken for a raw run without a
    preprocessed one, a failure (exit 2) telling to rerun fMRIPrep, and its groups were noted as built without it.
    Run numbers now compare as numbers there too: the study fits, and the design is the one of the run held
    plain."""
    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=30, shape=(6, 6, 4))  # (held plain: `plain_design`)
    root = study.root if padded == "raw" else study.derivatives
    for path in [p for p in root.rglob("*_run-1_*") if p.is_file() and "derivatives" not in p.relative_to(root).parts]:
        path.rename(path.with_name(path.name.replace("_run-1_", "_run-01_")))
    out = tmp_path / "padded"
    assert main(["bids", str(study.root), str(out), "subject", *deriv, "--quiet"]) == 0, capsys.readouterr().err
    (mine,) = sorted(out.rglob("node-run/*_design.tsv"))
    assert mine.read_text() == plain_design.read_text()
    for record in sorted(out.rglob("node-subject/*_model.json")):
        assert "built without" not in record.read_text()


def test_events_without_a_trial_type_are_noted_where_others_have_one(tmp_path, capsys):
    """An event whose trial_type is n/a or empty is in no trial type's regressor (pybids' Factor makes none of it),
    as BIDS Stats Models tools fit it; the study left it out without a word, where ``voxfit design`` refuses the
    same file. The run's record and stderr now name its lines; a run whose events all lack one says nothing (its
    model reads other columns)."""
    study, deriv = _study(tmp_path, subjects=1, runs=2, scans=30, shape=(6, 6, 4))
    events = sorted(study.root.rglob("*_events.tsv"))
    for table, untyped in zip(events, ([2, 4], "all")):
        lines = table.read_text().splitlines()
        for k in range(1, len(lines)) if untyped == "all" else untyped:
            cells = lines[k].split("\t")
            cells[2] = "n/a" if k != 4 else ""
            lines[k] = "\t".join(cells)
        table.write_text("\n".join(lines) + "\n")
    assert main(["bids", str(study.root), str(tmp_path / "out"), "run", *deriv]) == 2  # (run 2: no trial type)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "no trial type" in line]
    assert len(said) == 1 and "run-1" in said[0] and "lines 3 and 5 (2 events)" in said[0], err
    (record,) = sorted((tmp_path / "out").rglob("node-run/*run-1*_model.json"))
    assert "lines 3 and 5 (2 events)" in record.read_text()


def test_a_run_without_a_confounds_table_that_its_model_names_is_told_so(tmp_path):
    """A run whose confounds table is missing from the derivatives, under a model naming its columns: the run failed
    with 'Model.X names "trans_x", but the run has no variable "trans_x"; its variables are ...', listing as its own
    the columns of the other runs' tables, and never said that the table is missing. It fails saying so, naming the
    columns; the study's other run is fitted."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=1, runs=2, scans=30, shape=(6, 6, 4))
    for path in study.derivatives.rglob("*run-2_desc-confounds_timeseries.*"):
        path.unlink()
    model = default_model("stroop", ["congruent"])
    model["Nodes"][0]["Model"]["X"] = ["congruent", "trans_x", "rot_z", 1]
    result = run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], level="run")
    (failure,) = result.failures
    assert "run-2" in failure.group and "no confounds table" in failure.reason, failure.reason
    assert "desc-confounds_timeseries.tsv" in failure.reason and "(trans_x, rot_z)" in failure.reason, failure.reason
    assert "trans_x_power2" not in failure.reason
    assert len(list((tmp_path / "out").rglob("node-run/*run-1*_model.json"))) == 1
    # through a pattern alone (FitLins' "motion_outlier*" may match nothing): fitted, and its record says why the
    # pattern added nothing
    model["Nodes"][0]["Model"]["X"] = ["congruent", "rot_*", 1]
    result = run(study.root, tmp_path / "patterns", model=model, derivatives=[study.derivatives], level="run")
    assert not result.failures
    (record,) = sorted((tmp_path / "patterns").rglob("node-run/*run-2*_model.json"))
    assert "no confounds table for this run" in record.read_text() and "rot_z" in record.read_text()
    (other,) = sorted((tmp_path / "patterns").rglob("node-run/*run-1*_model.json"))
    assert "no confounds table" not in other.read_text()


@pytest.mark.parametrize("how", ["renamed", "copied"])
def test_two_confounds_tables_of_a_run_are_refused_saying_why(tmp_path, capsys, how):
    """Two confounds tables for a run were refused as differing "in a part of their names that voxfit does not
    choose by, as cohort-": said of fMRIPrep 20.2's _timeseries table beside an older run's _regressors one, and of
    one fMRIPrep folder given twice (copied under another name), whose tables have one name. Each case now says
    what it is and what to do."""
    import shutil

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    folders = [study.derivatives]
    if how == "renamed":
        for path in list(study.derivatives.rglob("*_desc-confounds_timeseries.*")):
            shutil.copy(path, path.with_name(path.name.replace("_timeseries", "_regressors")))
    else:
        folders.append(study.derivatives.with_name("fmriprep-20.2"))
        shutil.copytree(study.derivatives, folders[1])
        description = folders[1] / "dataset_description.json"
        description.write_text(json.dumps({**json.loads(description.read_text()), "Name": "fMRIPrep again"}))
    argv = ["bids", str(study.root), str(tmp_path / "out"), "run", "--derivatives", *map(str, folders)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cohort-" not in err[0], err
    if how == "renamed":
        assert "_regressors before 20.2 and _timeseries from then" in err[0] and "remove the _regressors" in err[0]
    else:
        assert "one file under the derivatives folders" in err[0] and "give each pipeline's folder once" in err[0], err


def test_a_dataset_level_of_subjects_in_their_own_anatomy_is_refused_before_any_fit(tmp_path, capsys):
    """Runs in T1w space (each subject's own anatomy, on a grid of its own): the dataset node failed on maps of
    other grids only after every run and subject was fitted. It is refused at once, saying what to choose; the
    subject level in T1w is fitted."""
    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=30, shape=(6, 6, 4))
    for path in [p for p in study.derivatives.rglob("*_space-*") if p.is_file()]:  # (here on one grid: still apart)
        path.rename(path.with_name(path.name.replace("_space-MNI152NLin2009cAsym_", "_space-T1w_")))
    argv = ["bids", str(study.root), str(tmp_path / "out"), "dataset", "--derivatives", str(study.derivatives)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in space T1w, its subject's own anatomy" in err[0], err
    assert "voxfit bids ... subject --space T1w" in err[0] and not (tmp_path / "out").exists()
    assert main([*argv[:3], "subject", *argv[4:], "--quiet"]) == 0, capsys.readouterr().err


def test_untyped_events_are_noted_only_under_a_model_of_trial_types(tmp_path):
    """The note of events without a trial type is for a Run node that takes trial types (by name, or trial_type):
    under a model of another column (response_time) such an event is in its regressor. A blank line inside the table
    (which pandas skips) does not shift the lines named."""
    from types import SimpleNamespace

    from voxfit.bids.study import _untyped_events_note

    table = tmp_path / "sub-01_task-x_events.tsv"
    table.write_text("onset\tduration\ttrial_type\tresponse_time\n1\t1\tface\t0.5\n\n4\t1\tn/a\t0.7\n")
    run = SimpleNamespace(events=table)
    for X in (["face", 1], ["trial_type.face", 1]):
        (note,) = _untyped_events_note(run, {"Model": {"X": X}})
        assert "line 4 (1 event)" in note, note
    assert _untyped_events_note(run, {"Model": {"X": ["response_time", 1]}}) == ()


def test_files_found_twice_are_told_apart_by_where_they_are(tmp_path, capsys):
    """Why several files match a run: a stray copy inside one derivatives folder is not "a pipeline given twice";
    a run's BOLD under two derivatives folders is one run given twice, not "saved as .nii and as .nii.gz"; and a
    stale file named as fMRIPrep named it before 1.2, beside runs named as it names them now, does not take the
    place of the spaces found."""
    import shutil

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    func = study.derivatives / "sub-01" / "func"
    argv = ["bids", str(study.root), str(tmp_path / "out"), "run", "--quiet", "--derivatives", str(study.derivatives)]
    (func / "old").mkdir()
    table = next(func.glob("*_desc-confounds_timeseries.tsv"))
    shutil.copy(table, func / "old" / table.name)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "copies of one file" in err and "remove the stray copy" in err and "pipeline's folder" not in err, err
    shutil.rmtree(func / "old")
    again = study.derivatives.with_name("again")
    (again / "sub-01" / "func").mkdir(parents=True)
    (again / "dataset_description.json").write_text(json.dumps({"Name": "again", "BIDSVersion": "1.8.0"}))
    bold = next(func.glob("*_desc-preproc_bold.nii.gz"))
    for path in func.glob("*_desc-preproc_bold.*"):
        shutil.copy(path, again / "sub-01" / "func" / path.name)
    assert main([*argv, str(again)]) == 2
    err = capsys.readouterr().err
    assert "are one run: keep one (one file under the derivatives folders" in err and "as .nii.gz?" not in err, err
    stale = func / "sub-01_task-stroop_run-1_bold_space-MNI152NLin2009cAsym_preproc.nii.gz"
    shutil.copy(bold, stale)
    assert main([*argv[:5], "--space", "T1w", *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert "spaces found: MNI152NLin2009cAsym); give one of them with --space" in err and "before 1.2" not in err


def test_the_refusal_of_t1w_at_the_dataset_level_suggests_a_level_the_model_has():
    from pathlib import Path

    from voxfit.bids.layout import RunInput
    from voxfit.bids.study import _check_own_space_levels

    runs = [
        RunInput(
            (("subject", s), ("space", "T1w")), Path(f"sub-{s}_space-T1w_bold.nii.gz"), None, None, None, 2.0, None, 30
        )
        for s in ("01", "02")
    ]
    for levels, below in ((("run", "subject", "dataset"), "subject"), (("run", "dataset"), "run")):
        with pytest.raises(InputError, match=f"fit up to the {below} level \\(voxfit bids ... {below} --space T1w\\)"):
            _check_own_space_levels("dataset", runs, levels)


def test_a_rerun_naming_the_space_and_task_a_study_took_by_default_is_the_same_study(tmp_path, capsys):
    """A study's identity named the --task and --space given, None where it chose them: a rerun naming the space
    (or task) the first run took by default was refused at every group as "the group of another study of this
    output folder", exit 2. The identity is now what the study chose; records of an older voxfit, which name None,
    are this study's too."""
    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=30, shape=(6, 6, 4))
    out = tmp_path / "out"
    argv = ["bids", str(study.root), str(out), "subject", "--derivatives", str(study.derivatives)]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main([*argv, "--space", SPACE, "--task", "stroop"]) == 0, capsys.readouterr().err
    assert "0 node groups fitted" in capsys.readouterr().out
    for record in out.rglob("*_model.json"):  # (as an older voxfit wrote them)
        data = json.loads(record.read_text())
        data["settings"]["bids"]["study"].update(task=None, space=None)
        data.pop("record_blake3", None)
        record.write_text(json.dumps(data))
    assert main([*argv, "--space", SPACE]) == 0, capsys.readouterr().err
    assert "another study" not in capsys.readouterr().err
    # subjects at two resolutions (the study's space "X:res-1, X:res-2"), then one subject, or one resolution: the
    # same study, of fewer of its runs (each was refused as another study's)
    for path in [p for p in (study.derivatives / "sub-02").rglob("*_space-*") if p.is_file()]:
        path.rename(path.with_name(path.name.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")))
    mixed = ["bids", str(study.root), str(tmp_path / "mixed"), "subject", "--derivatives", str(study.derivatives)]
    assert main([*mixed, "--quiet"]) == 0, capsys.readouterr().err
    assert main([*mixed, "--participant-label", "02", "--quiet"]) == 0, capsys.readouterr().err
    assert main([*mixed, "--space", f"{SPACE}:res-2"]) == 2  # (sub-01 has no run at res-2: it fails alone)
    err = capsys.readouterr().err
    assert "another study" not in err and "no preprocessed BOLD run in the derivatives at" in err, err


def test_a_dataset_level_of_subjects_at_several_densities_is_refused_before_any_fit(tmp_path, capsys):
    """fsLR runs at den-91k for one subject and den-170k for another (each subject's only one): fitted to the
    subject level, then the dataset node failed on maps of another grid, or pooled them where they were of one size
    (here: exit 0). Refused before anything is fitted, naming the subjects of each density."""
    study = make_dataset(tmp_path / "ds", subjects=3, runs=1, scans=30, space="fsLR", vertices=60)
    for path in [p for p in (study.derivatives / "sub-02").rglob("*den-91k*") if p.is_file()]:
        path.rename(path.with_name(path.name.replace("den-91k", "den-170k")))
    argv = ["bids", str(study.root), str(tmp_path / "out"), "dataset", "--derivatives", str(study.derivatives)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(den-170k (sub-02); den-91k (sub-01, sub-03))" in err[0], err
    assert "--space fsLR:den-91k" in err[0] and not (tmp_path / "out").exists()  # (most subjects')


def test_a_gifti_run_whose_metadata_gives_the_other_hemisphere_fails_alone(tmp_path):
    """A hemi-L GIFTI whose AnatomicalStructurePrimary says CortexRight: fitted at the run and subject levels as
    CortexRight, then the hemisphere's dataset node failed for every subject. The run fails at once, naming the
    two; the other runs are fitted."""
    import nibabel as nib

    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=1, runs=2, scans=30, space="fsaverage5", vertices=40)
    (bold,) = study.derivatives.rglob("*run-1_hemi-L_space-fsaverage5_bold.func.gii")
    img = nib.load(bold)
    img.meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": "CortexRight"})
    nib.save(img, bold)
    (right,) = study.derivatives.rglob("*run-2_hemi-L_space-fsaverage5_bold.func.gii")  # (spelt otherwise: fine)
    img = nib.load(right)
    img.meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": "CORTEX_LEFT"})
    nib.save(img, right)
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="run", progress=False)
    (failure,) = result.failures
    assert "its name says hemi-L but its metadata CortexRight" in failure.reason, failure.reason
    assert len(list((tmp_path / "out").rglob("node-run/*_model.json"))) == 3


def test_runs_in_their_own_space_are_a_space_with_their_space_run_mask(tmp_path, capsys):
    """fMRIPrep 24 writes a run in its own space without space- (sub-01_task-x_run-1_desc-preproc_bold.nii.gz) and
    its brain mask as space-run. Beside runs in other spaces they were never offered (the spaces listed left them
    out, and no --space chose them); alone, they were fitted within the automatic mask, their mask unread. They are
    the space "run", fitted within their own mask, at the run level only (runs in their own spaces are not aligned
    with one another); the echoes fMRIPrep writes in their own space beside a combined multi-echo run
    (--me-output-echos) are left to it, whatever its space."""
    import shutil

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    func = study.derivatives / "sub-01" / "func"
    bold = next(func.glob(f"*_space-{SPACE}_desc-preproc_bold.nii.gz"))
    for echo in (1, 2):  # (fMRIPrep's default with --me-output-echos: the echoes in their own space, combined in MNI)
        shutil.copy(bold, func / f"sub-01_task-stroop_run-1_echo-{echo}_desc-preproc_bold.nii.gz")
    argv = ["bids", str(study.root), str(tmp_path / "out"), "run", *deriv, "--quiet"]
    assert main([*argv[:2], str(tmp_path / "mni"), *argv[3:]]) == 0, capsys.readouterr().err
    for path in sorted(func.glob(f"*_space-{SPACE}_*")):
        own = path.name.replace(f"_space-{SPACE}_desc-preproc", "_desc-preproc")
        shutil.copy(path, func / own.replace(f"_space-{SPACE}_desc-brain", "_space-run_desc-brain"))
    mask = func / "sub-01_task-stroop_run-1_space-run_desc-brain_mask.nii.gz"
    assert mask.is_file()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"several spaces ({SPACE}, run (the runs' own space, named without space-))" in err, err
    assert main([*argv, "--space", "run"]) == 0, capsys.readouterr().err
    (record,) = (tmp_path / "out").rglob("*_model.json")
    held = json.loads(record.read_text())
    assert held["mask"]["source"] == str(mask)
    assert [Path(i["path"]).name for i in held["inputs"]][0] == "sub-01_task-stroop_run-1_desc-preproc_bold.nii.gz"
    subject = ["bids", str(study.root), str(tmp_path / "subject"), "subject", *deriv, "--space", "run"]
    assert main(subject) == 2 and not (tmp_path / "subject" / "sub-01").exists()
    assert "is in its run's own space, which no other run shares" in capsys.readouterr().err
    mask.rename(func / "sub-01_task-stroop_run-1_desc-brain_mask.nii.gz")  # (fMRIPrep's other name of it: pooled)
    assert main(subject) == 2 and not (tmp_path / "subject" / "sub-01").exists()
    assert "is in its run's own space, which no other run shares" in capsys.readouterr().err


def test_runs_told_apart_by_a_cohort_are_refused_not_overwritten(tmp_path, capsys):
    """fMRIPrep's pediatric cohorts (_space-X_cohort-N_), an entity pybids does not read: two runs of the same
    entities, the second cohort's maps written over the first's (exit 0), with the first's mask. Refused."""
    import shutil

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    for f in list(study.derivatives.glob(f"sub-01/func/*_space-{SPACE}_*")):
        for cohort in (1, 2):
            if cohort == 1 or "_mask" not in f.name:  # (one cohort's mask only)
                shutil.copy(f, str(f).replace(f"_space-{SPACE}_", f"_space-{SPACE}_cohort-{cohort}_"))
        f.unlink()
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cohort-1_desc-preproc_bold.nii.gz, sub-01" in err and "are one run to pybids" in err, err
    assert "keep one of them in the derivatives" in err and not list(out.rglob("*_model.json"))


def test_model_type_chooses_fixed_effects_or_a_glm_at_every_level(tmp_path, capsys):
    """Model.Type as the specification (and FitLins) reads it: a Subject node of Type glm is an ordinary GLM of its
    runs' effects (their mean, dof runs - 1), a Dataset node of Type meta fixed effects over the subjects (the
    precision-weighted mean). Both were ignored: the subject level was always fixed effects, the dataset level
    the group model. A group model's inference asked of a meta Dataset node is refused."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][1]["Model"]["Type"] = "glm"
    model["Nodes"][2]["Model"]["Type"] = "meta"
    out = tmp_path / "out"
    assert run(study.root, out, model=model, derivatives=[study.derivatives], progress=False).ok
    subjects = []
    for s in ("01", "02"):
        runs = sorted((out / f"sub-{s}" / "node-run").glob("*contrast-congruent_stat-effect_statmap.nii.gz"))
        folder = out / f"sub-{s}" / "node-subject"
        effect = _maps(next(folder.glob("*contrast-congruent_stat-effect_statmap.nii.gz")))
        variance = _maps(next(folder.glob("*contrast-congruent_stat-variance_statmap.nii.gz")))
        runs = np.array([_maps(r) for r in runs])
        ok = np.isfinite(effect)
        assert len(runs) == 2 and ok.any()
        np.testing.assert_allclose(effect[ok], runs.mean(axis=0)[ok], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance[ok], runs.var(axis=0, ddof=1)[ok] / 2, rtol=1e-4, atol=1e-6)
        record = json.loads(next(folder.glob("*_contrast-congruent_model.json")).read_text())
        assert record["contrasts"]["congruent"]["dof"] == 1.0
        subjects.append((effect, variance))
    E, V = np.array([e for e, _ in subjects]), np.array([v for _, v in subjects])
    dataset = _maps(out / "node-dataset" / "contrast-congruent_stat-effect_statmap.nii.gz")
    ok = np.isfinite(dataset)
    np.testing.assert_allclose(dataset[ok], ((E / V).sum(0) / (1 / V).sum(0))[ok], rtol=1e-4, atol=1e-6)
    if importlib.util.find_spec("matplotlib") is not None:  # (the dataset's page names the model fitted)
        assert run(study.root, out, model=model, derivatives=[study.derivatives], report=True, progress=False).ok
        assert "group model</th><td>fixed effects (fixed)" in (out / "dataset.html").read_text()
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(model))
    argv = ["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path), "--group-model", "ols"]
    assert main([*argv, "--permutations", "100"]) == 2
    assert "--permutations is inference of a group model, and the model's Dataset node is of Model.Type meta" in (
        capsys.readouterr().err
    )


def test_a_column_the_participants_table_lacks_is_said_with_the_columns_it_has(tmp_path):
    """A Dataset node's Model.X naming a column participants.tsv lacks (and no near miss of one, which is refused
    before any fit): pybids' words alone, "not found in data matrix"; now with the table's columns."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][2]["Model"]["X"] = [1, "weight"]
    result = run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], group_model="ols")
    (failure,) = result.failures
    assert "'weight'" in failure.reason and "(participants.tsv's columns: age, group)." in failure.reason
    # a column of words (levels) without a Factor: said as such, where it named every input as lacking a number
    model["Nodes"][2]["Model"]["X"] = [1, "group"]
    result = run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], group_model="ols")
    assert all(g.reused for node in ("run", "subject") for g in result.nodes[node])  # (the dataset node's alone)
    assert result.failures and all("holds words (" in f.reason and "a Factor" in f.reason for f in result.failures)
    # numbers written as text in every row (a decimal comma, a unit): said as such before any fit, where they were
    # said as words to Factor once every run was fitted (a tester's)
    table = study.root / "participants.tsv"
    for text in ("{},5", "{}y"):
        lines = table.read_text().splitlines()
        rows = [line.split("\t") for line in lines[1:]]
        body = ["\t".join([r[0], text.format(r[1].split(",")[0].rstrip("y")), *r[2:]]) for r in rows]
        table.write_text("\n".join([lines[0], *body]) + "\n")
        model["Nodes"][2]["Model"]["X"] = [1, "age"]
        with pytest.raises(InputError, match="column 'age' holds numbers written as text in participants.tsv"):
            run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], group_model="ols")


def test_groups_that_pool_several_contrasts_are_said_to(tmp_path):
    """A GroupBy without contrast above the run level: a dataset group then held each subject twice, refused as
    "give one effect map per subject" (the node's fix unsaid); a subject group pooled its contrasts into one effect
    without a word. The first is refused naming the GroupBy fix, the second warned of."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][2]["GroupBy"] = []
    kw = {"derivatives": [study.derivatives], "progress": False, "group_model": "ols"}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    (failure,) = result.failures
    assert failure.node == "dataset" and "maps of the contrasts congruent, incongruent in one group" in failure.reason
    assert 'lacks contrast), as independent rows, which a subject\'s maps are not; add "contrast" to its GroupBy' in (
        failure.reason
    )
    model["Nodes"][2]["GroupBy"] = ["contrast"]
    model["Nodes"][1]["GroupBy"] = ["subject"]
    with pytest.warns(UserWarning, match="node subject: its GroupBy lacks contrast, so each of its groups pools"):
        pooled = run(study.root, tmp_path / "out", model=model, **kw)  # (its runs' groups reused)
    assert pooled.ok and all(g.reused for g in pooled.nodes["run"])
    assert not any(g.reused for g in pooled.nodes["subject"])


def test_options_a_study_cannot_honour_are_refused_before_it_fits(tmp_path, capsys):
    """--confounds-strategy ica_aroma on desc-preproc runs fitted them with no motion regressor and no denoising
    (exit 0; nilearn refuses it); --tfce on surfaces failed every dataset group after every run was fitted,
    asking for a --mesh voxfit bids does not take. Both are refused at once, saying what to do."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--confounds-strategy", "ica_aroma"]) == 2
    err = capsys.readouterr().err
    assert "ica_aroma is for fMRIPrep's runs denoised by ICA-AROMA" in err and "--desc smoothAROMAnonaggr" in err
    surface, sderiv = _study(tmp_path / "s", subjects=2, runs=1, scans=40, space="fsaverage5", vertices=60)
    argv = ["bids", str(surface.root), str(out), "dataset", *sderiv, "--group-model", "ols", "--permutations", "50"]
    for option in (["--tfce"], ["--cluster-threshold", "2"]):
        assert main([*argv, *option]) == 2
        err = capsys.readouterr().err
        assert f"{option[0]} on surfaces needs each hemisphere's mesh" in err and err.count("\n") == 1, err
    assert not out.exists()
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--confounds-strategy", " ica_aroma"]) == 2
    assert "ica_aroma is for fMRIPrep's runs denoised by ICA-AROMA" in capsys.readouterr().err
    cifti, cderiv = _study(tmp_path / "c", subjects=2, runs=1, scans=40, space="fsLR", vertices=60)
    argv = ["bids", str(cifti.root), str(out), "dataset", *cderiv, "--group-model", "ols", "--permutations", "50"]
    assert main([*argv, "--tfce"]) == 2
    assert "--tfce is not done on CIFTI files" in capsys.readouterr().err and not out.exists()


def test_a_short_runs_ar_variances_stay_positive(tmp_path):
    """A run cut to 30 scans under a model with 24 motion columns (19 dof): AR(1)'s Kackar-Harville term, an extra
    variance, came out below -1 at some voxels, so their contrast variances were negative (down to -29), their t
    NaN, and they vanished from the subject's and the dataset's maps without a word. Held at 0 there, as the
    expansion failing."""
    import nibabel as nib

    from voxfit.bids import run
    from voxfit.bids.synthetic import make_dataset, nilearn_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=2, scans=40, shape=(8, 8, 6), extra_confounds=("nuisance1",))
    for path in study.root.rglob("sub-01_task-stroop_run-2*bold.nii.gz"):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :30], img.affine, img.header), path)
    table = next(study.derivatives.rglob("sub-01_task-stroop_run-2_desc-confounds_timeseries.tsv"))
    table.write_text("\n".join(table.read_text().splitlines()[:31]) + "\n")
    kw = {"derivatives": [study.derivatives], "progress": False, "noise": "ar1", "participant_label": ["01"]}
    assert run(study.root, tmp_path / "out", model=nilearn_model(), level="run", **kw).ok
    maps = list((tmp_path / "out" / "sub-01" / "node-run").glob("*run-2*_stat-variance_statmap.nii.gz"))
    assert maps
    for path in maps:
        variance = _maps(path)
        assert (variance[np.isfinite(variance)] > 0).all(), (path.name, np.nanmin(variance))
        full = _maps(Path(str(path).replace("run-2", "run-1")))  # (the 40-scan run, in the same mask)
        assert np.isfinite(variance).sum() == np.isfinite(full).sum() > 0


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """Five subjects of one run, fitted to the dataset level with an OLS group model, 40 permutations and a cluster
    threshold (read only: a test that studies it again copies its output folder)."""
    tmp = tmp_path_factory.mktemp("clusters")
    study, deriv = _study(tmp, subjects=5, runs=1, scans=40, shape=(8, 8, 6))
    out = tmp / "out"
    options = ["--permutations", "40", "--cluster-threshold", "2"]
    argv = ["bids", str(study.root), str(out), "dataset", *deriv, "--group-model", "ols"]
    return study, deriv, out, options, main([*argv, *options, "--quiet"])


def test_a_study_writes_the_cluster_inference_it_computes(clusters, tmp_path):
    """--permutations with --cluster-threshold: the dataset groups' cluster-extent and cluster-mass FWE maps and
    their clusters.tsv were computed and dropped (only voxel FWE written). Written, and equal to voxfit group's
    on the same subject maps."""
    study, deriv, out, options, code = clusters
    assert code == 0
    folder = out / "node-dataset"
    for stat in ("pclusterfwe", "pclustermassfwe", "pfwe"):
        assert (folder / f"contrast-congruent_stat-{stat}_statmap.nii.gz").is_file(), stat
    maps = sorted(str(p) for p in out.glob("sub-*/node-subject/*_contrast-congruent_stat-effect_statmap.nii.gz"))
    assert main(["group", *maps, *options, "-o", str(tmp_path / "g"), "--quiet"]) == 0
    ours = (folder / "contrast-congruent_clusters.tsv").read_text()
    assert ours == (tmp_path / "g" / "contrast-intercept_clusters.tsv").read_text() and len(ours.splitlines()) > 1
    np.testing.assert_array_equal(
        _maps(folder / "contrast-congruent_stat-pclusterfwe_statmap.nii.gz"),
        _maps(tmp_path / "g" / "contrast-intercept_stat-p_desc-clusterfwe_statmap.nii.gz"),
    )
    # the record says the shuffles made: 5 subjects have 32 sign-flips, the 40 asked for were said on the page
    (record,) = [r for r in folder.glob("*model.json") if "congruent" in json.loads(r.read_text())["contrasts"]]
    made = json.loads(record.read_text())["contrasts"]["congruent"]["permutation"]
    assert made == {"scheme": "flip", "shuffles": 32, "exhaustive": True}


def test_a_studys_shuffles_are_reproduced_by_its_seed(clusters, tmp_path, capsys):
    """voxfit bids had no --seed (the Python API and voxfit group have): the same study's FWE p moved by up to 0.065
    from one run to the next, its record saying seed null. A seed without permutations is refused, as in group.
    (The 5 subjects of the `clusters` study, in two copies of its folder, each studied again with --permutations
    20 --seed 7: their dataset groups are fitted anew, the same drawn shuffles in both; 6 subjects of their own
    before, whose runs and subjects were fitted twice.)"""
    import shutil

    # (5 subjects: 32 sign-flips, of which 20 are drawn, by the seed)
    study, deriv, fitted, _, code = clusters
    assert code == 0
    argv = ["bids", str(study.root), "OUT", "dataset", *deriv, "--group-model", "ols", "--quiet"]
    maps = []
    for out in ("a", "b"):
        shutil.copytree(fitted, tmp_path / out, symlinks=True)
        command = [str(tmp_path / out) if a == "OUT" else a for a in argv]
        assert main([*command, "--permutations", "20", "--seed", "7"]) == 0
        maps.append(_maps(tmp_path / out / "node-dataset" / "contrast-congruent_stat-pfwe_statmap.nii.gz"))
    np.testing.assert_array_equal(maps[0], maps[1])
    original = _maps(fitted / "node-dataset" / "contrast-congruent_stat-pfwe_statmap.nii.gz")
    assert not np.array_equal(maps[0], original, equal_nan=True)  # (the dataset group refitted, not reused)
    record = json.loads((tmp_path / "b" / "node-dataset" / "contrast-congruent_model.json").read_text())
    made = record["contrasts"]["congruent"]["permutation"]
    assert made == {"scheme": "flip", "shuffles": 20, "exhaustive": False}  # (drawn: the seed chose them)
    assert main([str(tmp_path / "c") if a == "OUT" else a for a in argv] + ["--seed", "7"]) == 2
    assert "--seed chooses the permutations' shuffles; add --permutations, or drop it" in capsys.readouterr().err


def test_the_events_modulation_column_scales_the_trial_types(tmp_path):
    """BIDS events' modulation column (n/a: 1) scales each event's amplitude, as voxfit fit --events and nilearn
    read it: the study's trial types were 1 at every event whatever it said (its maps unchanged)."""
    import pandas as pd

    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    kw = {"derivatives": [study.derivatives], "progress": False, "level": "run", "noise": "ols"}
    assert run(study.root, tmp_path / "plain", **kw).ok
    events = next(study.root.glob("sub-01/func/*_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table["modulation"] = np.where(table["trial_type"] == "congruent", 2.0, 0.5)
    table.loc[table.index[-1], "modulation"] = np.nan  # (n/a: 1)
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    assert run(study.root, tmp_path / "mod", **kw).ok
    designs = [
        pd.read_csv(next((tmp_path / name / "sub-01" / "node-run").glob("*_design.tsv")), sep="\t")
        for name in ("plain", "mod")
    ]
    last = table["trial_type"].iloc[-1]
    other = "incongruent" if last == "congruent" else "congruent"
    np.testing.assert_allclose(designs[1][other], designs[0][other] * (2.0 if other == "congruent" else 0.5), atol=1e-9)
    assert not np.allclose(designs[1][last], designs[0][last] * (2.0 if last == "congruent" else 0.5))
    # a word among the numbers is refused, as voxfit fit --events refuses it (it was read as 1)
    table["modulation"] = table["modulation"].astype(object)
    table.loc[table.index[0], "modulation"] = "high"
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    failed = run(study.root, tmp_path / "text", **kw)
    assert "the events' modulation 'high' is not a number" in failed.failures[0].reason


def test_a_lost_hemisphere_of_a_surface_run_is_a_failure(tmp_path):
    """A GIFTI run whose right hemisphere fMRIPrep did not write: the subject's right hemisphere was fitted from
    one run and its left from two, exit 0, said nowhere. The missing hemisphere is a run's failure."""
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=2, scans=40, space="fsaverage5", vertices=60)
    (lost,) = study.derivatives.glob("sub-02/func/sub-02_task-stroop_run-2_hemi-R_*bold.func.gii")
    lost.unlink()
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="subject", progress=False)
    (failure,) = result.failures
    assert failure.node == "run" and "hemi-R" in failure.group and "run-2" in failure.group
    assert "this hemisphere of the run is missing from the derivatives" in failure.reason
    assert any("built without sub-02_task-stroop_run-2" in note for _, note in result.notes)
    # a subject fitted alone, its right hemisphere missing everywhere: its runs' right hemispheres are failures
    for path in study.derivatives.glob("sub-02/func/*hemi-R*"):
        path.unlink()
    kw = {"derivatives": [study.derivatives], "level": "run", "participant_label": ["02"], "progress": False}
    alone = run(study.root, tmp_path / "two", **kw)
    assert len(alone.failures) == 2 and all("hemi-R" in f.group for f in alone.failures)


def test_fmriprep_cosines_in_the_design_are_its_high_pass_filter(tmp_path):
    """fMRIPrep's cosine columns in Model.X ("cosine*", FitLins' idiom) or from --confounds-strategy: voxfit's own
    drift beside them made the design singular to rounding (correlation 0.9999999999987) with a rank and dof one
    too many. They are the high-pass filter then, as nilearn advises with load_confounds, and the record says so."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.synthetic import nilearn_model

    study, _ = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    model = nilearn_model()
    model["Nodes"][0]["Model"]["X"].insert(-1, "cosine*")
    kw = {"derivatives": [study.derivatives], "progress": False, "level": "run", "noise": "ols"}
    assert run(study.root, tmp_path / "x", model=model, **kw).ok
    assert run(study.root, tmp_path / "s", confounds_strategy="simple:motion=basic", **kw).ok
    for name in ("x", "s"):
        folder = tmp_path / name / "sub-01" / "node-run"
        columns = list(pd.read_csv(next(folder.glob("*_design.tsv")), sep="\t").columns)
        assert "cosine00" in columns and not [c for c in columns if c.startswith("drift_")], columns
        record = json.loads(next(folder.glob("*_model.json")).read_text())
        assert (
            "drift columns the design's own hold (fMRIPrep's cosines) left out"
            in record["settings"]["bids"]["design"]["high_pass_from"]
        )
        assert record["design"]["rank"] == len(columns)


def test_a_surface_study_takes_each_runs_own_confounds(tmp_path):
    """fsaverage5 runs (a GIFTI file per hemisphere) under a model naming confounds: pybids gives a run's events to
    one hemisphere's file and its confounds to both (and, loaded a subject at a time, the first subject's to the
    second), so every run but the first subject's failed ("trans_x has 80 values ... the run has 40 scans"). Each
    hemisphere's design now holds the run's own confounds and events."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.synthetic import nilearn_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, space="fsaverage5", vertices=60)
    for path in sorted(p for p in study.root.rglob("*run-1*") if p.is_file()):  # (labels written run-01)
        path.rename(path.with_name(path.name.replace("run-1", "run-01")))
    kw = {"derivatives": [study.derivatives], "progress": False, "level": "run", "noise": "ols"}
    result = run(study.root, tmp_path / "out", model=nilearn_model(), **kw)
    assert result.ok, result.failures
    for subject in ("01", "02"):
        confounds = pd.read_csv(next(study.derivatives.glob(f"sub-{subject}/func/*_timeseries.tsv")), sep="\t")
        for hemi in ("L", "R"):
            design = next((tmp_path / "out" / f"sub-{subject}" / "node-run").glob(f"*hemi-{hemi}*_design.tsv"))
            design = pd.read_csv(design, sep="\t")
            np.testing.assert_array_equal(design["rot_z"], confounds["rot_z"])
            assert np.abs(design["congruent"]).max() > 0


def test_a_study_interrupted_while_its_reports_are_written_says_its_fits_are_complete(tmp_path, monkeypatch, capsys):
    """Interrupted after every group was fitted and the stale ones removed, while the reports were written: the
    message says the fits are complete and how many stale files went (it said the groups finished before were
    kept and to rerun "to fit the rest")."""
    pytest.importorskip("matplotlib")
    from voxfit.bids import study as study_module
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    model = default_model("stroop", ["congruent", "incongruent"])
    path = tmp_path / "stroop.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    argv = ["bids", str(study.root), str(out), "run", *deriv, "--model", str(path), "--quiet"]
    assert main(argv) == 0
    before = sorted(p.relative_to(out) for p in out.glob("sub-*/node-run/*"))
    model["Nodes"][0]["Name"] = "runs"  # (the groups of node "run" are stale)
    model["Edges"][0]["Source"] = "runs"
    path.write_text(json.dumps(model))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "_write_reports", stop)
    capsys.readouterr()
    assert main([*argv, "--report"]) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"voxfit: interrupted while the reports were written; the study's fits are complete in {out}")
    assert f"; {len(before)} files of stale groups were removed; no report is half-written" in err
    assert before and not list(out.glob("sub-*/node-run")) and list(out.glob("sub-*/node-runs/*_statmap.nii.gz"))
    # with a run that fails: its failure is said, and the fits are not said to be complete
    next(study.root.glob("sub-02/func/*_events.tsv")).unlink()
    assert main([*argv, "--report"]) == 130
    err = capsys.readouterr().err
    assert "voxfit: failed: node runs, sub-02" in err and "every group was fitted, or failed as said above," in err


def test_a_dataset_level_grouped_by_task_over_two_tasks_of_their_own_trial_types(tmp_path):
    """Two tasks of different trial types (stroop: congruent, incongruent; nback: zero, two), each subject's maps
    kept apart by task: a dataset node grouped by contrast and task failed for every group (pybids put
    participants.tsv in every contrast-and-task pair, also congruent under nback, and failed there: "reduce() of
    empty iterable"; a tester's). Grouped by contrast alone, the tasks' maps of "intercept" are pooled, and the
    note said to add session to the GroupBy: it names task. Each task's group is the plain mean of its subjects'."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    make_dataset(
        tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(8, 8, 6), task="nback", conditions=("zero", "two")
    )
    model = default_model(None, ["congruent", "incongruent", "zero", "two"])
    run_node, subject_node, dataset_node = model["Nodes"]
    run_node["GroupBy"] = ["run", "task", "subject"]
    run_node["DummyContrasts"] = {"Test": "t"}  # (with the intercept: a contrast of both tasks)
    subject_node["GroupBy"] = ["subject", "task", "contrast"]
    dataset_node["GroupBy"] = ["contrast", "task"]
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "group_model": "ols", "progress": False}
    result = run(study.root, out, model=model, level="dataset", **kw)
    assert result.ok, result.failures
    names = sorted({p.name.split("_stat-")[0] for p in (out / "node-dataset").glob("*_stat-effect_statmap.nii.gz")})
    expected = [f"task-nback_contrast-{c}" for c in ("intercept", "two", "zero")]
    assert names == expected + [f"task-stroop_contrast-{c}" for c in ("congruent", "incongruent", "intercept")]
    for task in ("nback", "stroop"):
        subjects = [
            _maps(p) for p in sorted(out.glob(f"sub-0*/node-subject/*task-{task}*contrast-intercept_stat-effect*"))
        ]
        mean = _maps(next((out / "node-dataset").glob(f"task-{task}_contrast-intercept_stat-effect_statmap.nii.gz")))
        assert len(subjects) == 2
        np.testing.assert_allclose(mean, (subjects[0] + subjects[1]) / 2, rtol=1e-5, atol=1e-6)
    dataset_node["GroupBy"] = ["contrast"]
    pooled = run(study.root, tmp_path / "pooled", model=model, level="dataset", **kw)
    notes = [note for group, note in pooled.notes if "contrast-intercept" in group.label and "maps of" in note]
    assert pooled.ok and len(notes) == 1 and "add task to the node's GroupBy (a test per task)" in notes[0], notes


def test_a_participants_column_in_a_run_nodes_model_says_where_it_goes(tmp_path):
    """Model.X of the Run node naming "age", a participants.tsv column: each run failed on "the run has no
    variable 'age'", its variables listed (a tester's); it now says that age is a subject's value, for the Dataset
    node's Model.X. In a table whose participant_id is not its first column too (age first was taken for the ids:
    another tester's)."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    table = study.root / "participants.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0][:2] == ["participant_id", "age"]
    table.write_text("".join(f"{r[1]}\t{r[0]}\t" + "\t".join(r[2:]) + "\n" for r in rows))  # (age first)
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][0]["Model"]["X"].insert(0, "age")
    result = run(
        study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], level="run", progress=False
    )
    (failure,) = result.failures
    assert failure.reason.startswith('Model.X names "age", a column of participants.tsv: one value per subject')
    assert "put it in the Model.X of the Dataset node" in failure.reason


def test_a_contrast_whose_name_is_a_label_keeps_it_whatever_the_others():
    """Contrast c2 was labelled c22 in the runs that had a contrast c_2 (whose letters are c2 too) and c2 in those
    that had not, so contrast-c2 named different contrasts in different runs; a name that is a label keeps it, and
    the sanitised one takes the number, whatever names come later."""
    from voxfit.bids.study import ContrastLabels

    assert ContrastLabels()(["c_2", "c2"]) == ["c22", "c2"] and ContrastLabels()(["c2"]) == ["c2"]
    assert ContrastLabels()(["I/C_2", "IC2", "IC22"]) == ["IC23", "IC2", "IC22"]
    labels = ContrastLabels(["reward+", "reward-"])
    assert labels(["reward-"]) == ["reward2"] and labels(sorted(["reward-", "reward+"])) == ["reward", "reward2"]
    assert labels(["reward", "a", "a"]) == ["reward3", "a", "a"]


def test_one_contrast_label_names_one_contrast_at_every_level(tmp_path):
    """Contrasts "IvC-" (congruent - incongruent) and "IvC+" (the reverse) share the letters IvC: the run level
    labelled them IvC and IvC2 in the file's order, the subject and dataset levels in sorted order ("+" before
    "-"), so contrast-IvC held one contrast's maps at the run level and the opposite one's above it, exit 0 (a
    tester's). Each label now names one contrast at every level."""
    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    pair = [
        {"Name": "IvC-", "ConditionList": ["incongruent", "congruent"], "Weights": [-1, 1], "Test": "t"},
        {"Name": "IvC+", "ConditionList": ["incongruent", "congruent"], "Weights": [1, -1], "Test": "t"},
    ]
    conditions = {"Model": "spm", "Variables": ["trial_type.congruent", "trial_type.incongruent"]}
    factor = {"Transformer": "pybids-transforms-v1", "Instructions": [{"Name": "Factor", "Input": ["trial_type"]}]}
    nodes = [
        {
            "Level": "Run",
            "Name": "run",
            "GroupBy": ["run", "subject"],
            "Transformations": factor,
            "Model": {"Type": "glm", "X": ["trial_type.congruent", "trial_type.incongruent", 1], "HRF": conditions},
            "Contrasts": [
                {**c, "ConditionList": [f"trial_type.{k}" for k in c["ConditionList"]]} for c in pair
            ],
        },
        {"Level": "Subject", "Name": "subject", "GroupBy": ["contrast", "subject"], "Model": {"Type": "meta", "X": [1]},
         "DummyContrasts": {"Test": "t"}},
        {"Level": "Dataset", "Name": "dataset", "GroupBy": ["contrast"], "Model": {"Type": "glm", "X": [1]},
         "DummyContrasts": {"Test": "t"}},
    ]  # fmt: skip
    model = {"Name": "labels", "BIDSModelVersion": "1.0.0", "Input": {"task": ["stroop"]}, "Nodes": nodes}
    out = tmp_path / "out"
    kw = {"derivatives": [study.derivatives], "level": "dataset", "group_model": "ols", "progress": False}
    result = run(study.root, out, model=model, **kw)
    assert result.ok, result.failures

    def effect(node, label, subject="*"):
        folder = f"node-{node}" if node == "dataset" else f"{subject}/node-{node}"
        (path,) = out.glob(f"{folder}/*contrast-{label}_stat-effect_statmap.nii.gz")
        return _maps(path)

    for label in ("IvC", "IvC2"):
        runs = [effect("run", label, s) for s in ("sub-01", "sub-02")]
        assert np.nanmax(np.abs(runs[0])) > 0
        for s, values in zip(("sub-01", "sub-02"), runs):
            np.testing.assert_allclose(effect("subject", label, s), values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(effect("dataset", label), (runs[0] + runs[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(effect("run", "IvC", "sub-01"), -effect("run", "IvC2", "sub-01"), rtol=1e-5)


@pytest.mark.parametrize("gap", ["n/a", "no row"])
def test_a_subject_without_the_grouping_value_is_refused_not_put_in_every_group(tmp_path, gap):
    """A dataset node grouped by a participants.tsv column: a subject whose cell is n/a, or who has no row, was
    fitted in every group (pybids, missing values ignored), exit 0 and nothing said; then refused by the node once
    every run was fitted; now before any run is."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=4, runs=1, scans=40, shape=(8, 8, 6))
    table = study.root / "participants.tsv"
    lines = table.read_text().splitlines()
    at = lines[0].split("\t").index("group")
    kept = []
    for line in lines:
        cells = line.split("\t")
        if cells[0] == "sub-03":
            if gap == "no row":
                continue
            cells[at] = "n/a"
        kept.append("\t".join(cells))
    table.write_text("\n".join(kept) + "\n")
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][2]["GroupBy"] = ["contrast", "group"]
    kwargs = {"model": model, "derivatives": [study.derivatives], "group_model": "ols", "progress": False}
    with pytest.raises(InputError) as refused:  # (before any run is fitted: the runs could not change it)
        run(study.root, tmp_path / "out", **kwargs)
    said = str(refused.value)
    assert "participants.tsv's column 'group', by which node dataset groups (GroupBy), has no value" in said
    assert "sub-03" in said
    assert not list((tmp_path / "out").rglob("*model.json"))
    if gap == "n/a":  # where a Filter may leave subjects out (this one keeps them all), the node's own fit judges
        model["Edges"][-1]["Filter"] = {"subject": ["01", "02", "03", "04"]}
        result = run(study.root, tmp_path / "out", **kwargs)
        (failure,) = [f for f in result.failures if f.node == "dataset"]
        assert "by which node dataset groups (GroupBy), has no value" in str(failure) and "sub-03" in str(failure)
        assert not list((tmp_path / "out").glob("node-dataset/*model.json"))


def test_a_node_of_which_pybids_builds_no_group_is_a_failure(tmp_path):
    """A subject node grouped by a variable its inputs do not carry (a sessions.tsv column): pybids built no group,
    and the study ended "fitted" with the runs alone, exit 0, nothing said."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(6, 6, 5), sessions=("s1", "s2"))
    for s in ("01", "02"):
        (study.root / f"sub-{s}" / f"sub-{s}_sessions.tsv").write_text("session_id\tdrug\nses-s1\ta\nses-s2\tb\n")
    model = default_model("stroop", ["congruent", "incongruent"], sessions=True)
    subject = next(n for n in model["Nodes"] if n["Level"] == "Subject")
    subject["GroupBy"] = ["subject", "contrast", "drug"]
    result = run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], level="subject",
                 progress=False)  # fmt: skip
    (failure,) = [f for f in result.failures if f.node == subject["Name"]]
    assert not result.ok and "pybids built no group of its" in str(failure), result.failures


def test_groups_whose_names_a_file_name_would_merge_keep_their_own_files(tmp_path):
    """Contrasts named "reward+" and "reward-" (one label, "reward", in a file name), and a dataset node grouped by a
    participants.tsv column: above the run level each group wrote the same files as the others, the last one kept
    (exit 0). Each now has its own (reward, reward2; group-control_, group-patient_), with its own numbers."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=4, runs=1, scans=40, shape=(8, 8, 6), conditions=("reward+", "reward-"))
    model = default_model("stroop", ["reward+", "reward-"])
    model["Nodes"][2]["GroupBy"] = ["contrast", "group"]
    out = tmp_path / "out"
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok
    records = {}
    for path in out.rglob("*model.json"):
        if "node-run" not in path.parts[-2] and path.parent != out:
            bids = json.loads(path.read_text())["settings"]["bids"]
            records[path.relative_to(out).as_posix()] = bids["entities"]
    assert len(records) == 4 * 2 + 2 * 2  # (every subject's two contrasts; each group's two at the dataset level)
    assert records["sub-01/node-subject/sub-01_contrast-reward_model.json"]["contrast"] == "reward+"
    assert records["sub-01/node-subject/sub-01_contrast-reward2_model.json"]["contrast"] == "reward-"
    assert records["node-dataset/group-patient_contrast-reward2_model.json"] == {
        "contrast": "reward-",
        "group": "patient",
    }
    design = (out / "node-dataset" / "group-control_contrast-reward_design.tsv").read_text().splitlines()
    assert len(design) == 1 + 2  # (two controls of four subjects)
    z = [
        _maps(out / "node-dataset" / f"group-{g}_contrast-reward_stat-z_statmap.nii.gz") for g in ("control", "patient")
    ]
    assert not np.allclose(z[0], z[1], equal_nan=True)
    # the dataset's page tells the groups apart, and no subject of one is said to be left out of the other
    pytest.importorskip("matplotlib")
    assert run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", report=True).ok
    page = (out / "dataset.html").read_text()
    assert "dataset reward+ group-control" in page and "dataset reward+ group-patient" in page
    from voxfit.bids.report import _GroupResults

    holder = type("R", (), {"folder": out, "prefix": "group-control_"})()  # (a group's own table, under its prefix)
    assert _GroupResults.clusters_table(holder, "reward") == out / "group-control_contrast-reward_clusters.tsv"
    assert "left out</th>" in page and page.count("<td>none</td>") >= 4 and "(voxfit" not in page
    # groups whose values still write the same files ("con-trol" and "control") are refused, not merged
    table = study.root / "participants.tsv"
    table.write_text(table.read_text().replace("patient", "con-trol"))
    again = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert [f.node for f in again.failures] == ["dataset", "dataset"]
    assert {f.group for f in again.failures} == {"contrast-reward+_group-con-trol", "contrast-reward-_group-con-trol"}
    assert "are those of group " in again.failures[0].reason and "rename one" in again.failures[0].reason
    # ... and so are values that differ only in case ("Control" and "control"): one file on macOS and Windows
    table.write_text(table.read_text().replace("con-trol", "Control"))
    with pytest.warns(UserWarning, match="holds 'control' .* and 'Control' .*, which differ only in case"):
        again = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert len(again.failures) == 2 and "or in case; rename one" in again.failures[0].reason


def test_each_node_takes_the_maps_of_its_own_source_node(tmp_path):
    """Two Subject nodes beside each other (fixed effects and an OLS of the runs), a Dataset node after the first:
    the maps handed on were keyed by BIDS entities and the contrast alone, so the dataset node took the subjects'
    maps of whichever Subject node was fitted last, the other's (exit 0). Each node now takes its source's."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(8, 8, 6), conditions=("A",))
    model = default_model("stroop", ["A"])
    fixed = model["Nodes"][1]
    ols = {**fixed, "Name": "subject_ols", "Model": {"Type": "glm", "X": [1]}}
    model["Nodes"].insert(2, ols)
    model["Edges"] = [
        {"Source": "run", "Destination": "subject"},
        {"Source": "run", "Destination": "subject_ols"},
        {"Source": "subject", "Destination": "dataset"},
    ]
    out = tmp_path / "out"
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok, result.failures
    subjects = [
        _maps(out / f"sub-0{s}" / "node-subject" / f"sub-0{s}_contrast-A_stat-effect_statmap.nii.gz") for s in (1, 2)
    ]
    others = _maps(out / "sub-01" / "node-subjectols" / "sub-01_contrast-A_stat-effect_statmap.nii.gz")
    assert not np.allclose(subjects[0], others, equal_nan=True)
    mean = _maps(out / "node-dataset" / "contrast-A_stat-effect_statmap.nii.gz")
    np.testing.assert_allclose(mean, np.mean(subjects, axis=0), rtol=1e-5, atol=1e-6)


def test_a_dataset_node_takes_the_groups_of_a_dataset_node_grouped_by_a_participants_column(tmp_path):
    """Run -> Subject -> a Dataset node grouped by participants.tsv's `group` -> a Dataset node over the groups'
    means. pybids merged participants.tsv into the groups' maps by subject, which they have none of: the last node
    failed (KeyError 'subject'). And the maps handed on were keyed by BIDS entities and the contrast alone, the
    last group's taken for both groups' (contrast-A)."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=4, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    model = default_model("stroop", ["A"])
    dataset = model["Nodes"][2]
    model["Nodes"][2:] = [{**dataset, "Name": "groups", "GroupBy": ["contrast", "group"]}, {**dataset, "Name": "both"}]
    del model["Edges"]  # (the nodes in turn)
    out = tmp_path / "out"
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok, result.failures
    effect = [
        _maps(out / "node-groups" / f"group-{g}_contrast-A_stat-effect_statmap.nii.gz") for g in ("control", "patient")
    ]
    assert not np.allclose(*effect, equal_nan=True)
    mean = _maps(out / "node-both" / "contrast-A_stat-effect_statmap.nii.gz")
    np.testing.assert_allclose(mean, np.mean(effect, axis=0), rtol=1e-5, atol=1e-6)
    assert len((out / "node-both" / "contrast-A_design.tsv").read_text().splitlines()) == 1 + 2


def test_an_f_contrast_of_one_row_is_an_f_test_at_every_level(tmp_path):
    """A contrast of Test "F" with one row of weights (SPM's F of one row: is the difference nonzero, either way)
    was written as a t contrast, its p one-sided (p 0.992 where F = t^2 gives 0.012), and passed on to the next
    node as a t. It is an F: F = t^2 on (1, dof), p two-sided, no effect passed on."""
    import scipy.stats

    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(8, 8, 6), conditions=("A", "B"))
    model = default_model("stroop", ["A", "B"])
    differ = {"Name": "AorB", "ConditionList": ["A", "B"], "Weights": [[1, -1]], "Test": "F"}
    model["Nodes"][0]["Contrasts"] = [differ]
    model["Nodes"][2]["Contrasts"] = [{"Name": "mean", "ConditionList": [1], "Weights": [[1]], "Test": "F"}]
    model["Nodes"][2]["DummyContrasts"] = {"Test": "t"}
    out = tmp_path / "out"
    result = run(
        study.root, out, model=model, derivatives=[study.derivatives], noise="ols", group_model="ols", progress=False
    )
    assert result.ok, result.failures
    stem = out / "sub-01" / "node-run" / f"sub-01_task-stroop_run-1_space-{SPACE}_contrast-AorB_stat-"
    assert not Path(f"{stem}t_statmap.nii.gz").exists()
    F, p = _maps(f"{stem}F_statmap.nii.gz"), _maps(f"{stem}p_statmap.nii.gz")
    record = json.loads((stem.parent / f"sub-01_task-stroop_run-1_space-{SPACE}_model.json").read_text())
    assert record["contrasts"]["AorB"]["kind"] == "F"
    dof = record["design"]["dof"]
    ok = np.isfinite(F)
    np.testing.assert_allclose(p[ok], scipy.stats.f.sf(F[ok], 1, dof), rtol=1e-4, atol=1e-7)
    assert "AorB" not in record["settings"]["bids"]["outputs"]
    assert not list((out / "sub-01" / "node-subject").glob("*AorB*"))
    # at the dataset level: the F of the mean of A's subject maps (pybids names it A_mean) is the square of its t
    Fd = _maps(out / "node-dataset" / "contrast-Amean_stat-F_statmap.nii.gz")
    td = _maps(out / "node-dataset" / "contrast-A_stat-t_statmap.nii.gz")
    np.testing.assert_allclose(Fd, td**2, rtol=1e-5, equal_nan=True)
    pd_ = _maps(out / "node-dataset" / "contrast-Amean_stat-p_statmap.nii.gz")
    np.testing.assert_allclose(pd_[np.isfinite(td)], 2 * scipy.stats.t.sf(np.abs(td[np.isfinite(td)]), 2), rtol=1e-4)
    # the dataset's permutations test one row one-sided, as a t: an F of one row there is refused before any fit
    refused = tmp_path / "refused"
    with pytest.raises(InputError, match=r"node dataset's F contrast of one row \(mean\) asks for a two-sided test"):
        run(study.root, refused, model=model, derivatives=[study.derivatives], permutations=100, group_model="ols")
    assert not refused.exists()


def test_a_higher_node_pybids_cannot_group_is_that_nodes_failure(tmp_path, capsys):
    """A Factor of a participants.tsv column with an n/a in it (pybids' TypeError, comparing a float and a text)
    ended the whole study with an internal error (exit 1), then was the node's failure in pybids' words; an edge's
    Filter that keeps no input was pybids' KeyError 'subject'. Each is the node's failure, saying what to fix (the
    column and the subject), the run and subject levels kept."""
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    table = study.root / "participants.tsv"
    table.write_text(table.read_text().replace("\tcontrol", "\tn/a", 1))
    model = default_model("stroop", ["A"])
    model["Nodes"][2]["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Factor", "Input": ["group"]}],
    }
    model["Nodes"][2]["Model"]["X"] = [1, "group.patient"]
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    gap = "node dataset, all: participants.tsv's column 'group', which the node takes, has no value (n/a) for sub-"
    assert gap in err and "not supported" not in err, err
    assert len(list(out.glob("sub-*/node-subject/*_model.json"))) == 3
    del model["Nodes"][2]["Transformations"]
    model["Nodes"][2]["Model"]["X"] = [1]
    model["Edges"][1]["Filter"] = {"contrast": ["a"]}
    path.write_text(json.dumps(model))
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'the edge\'s Filter {"contrast": ["a"]} keeps none of the 3 inputs from node subject' in err, err
    assert "(their values: contrast A); give values they have" in err


@pytest.mark.parametrize("X", [["A", "B"], [1, "A"]])
def test_a_node_whose_design_holds_each_contrast_apart_is_not_said_to_pool_them(tmp_path, recwarn, X):
    """A Subject node grouped by subject alone whose Model.X tells the contrasts apart (their indicators, FitLins'
    idiom, or an intercept and one indicator): it warned that it pooled them into one effect (its numbers right).
    No warning; the subject's A - B is its A minus its B. A Dataset node taking each subject's A and B as
    independent rows (an unpaired test, the dof of twice the subjects) is refused, and so is a design where a
    contrast's maps are rows of no column."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(8, 8, 6), conditions=("A", "B"))
    model = default_model("stroop", ["A", "B"])
    subject = {**model["Nodes"][1], "GroupBy": ["subject"], "Model": {"Type": "meta", "X": X}}
    weights = [1, -1] if X[0] == "A" else [0, 1]  # (with the intercept, B's map, A's column is A - B)
    one = [1, 0]  # (A's maps alone; with the intercept, B's alone)
    subject["Contrasts"] = [
        {"Name": "AvB", "ConditionList": X, "Weights": weights, "Test": "t"},
        {"Name": "one", "ConditionList": X, "Weights": one, "Test": "t"},
    ]
    del subject["DummyContrasts"]
    model["Nodes"][1] = subject
    model["Edges"][1]["Filter"] = {"contrast": ["AvB"]}
    out = tmp_path / "out"
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok, result.failures
    assert not [w for w in recwarn if "pools the maps" in str(w.message)]
    # A - B from a run's A and B: its variance takes them as independent, which a run's two contrasts are not
    said = {g.label: n for g, n in result.notes if g.name == "subject"}
    assert sorted(said) == ["sub-01", "sub-02", "sub-03"], result.notes
    run_1 = "sub-01_task-stroop_run-1_space-MNI152NLin2009cAsym"
    assert f"contrast AvB combines the maps of A and B of the same input ({run_1})" in said["sub-01"]
    assert "too large or too small" in said["sub-01"] and "contrast one" not in " ".join(said.values())
    a, b = (_maps(next((out / "sub-01" / "node-run").glob(f"*contrast-{c}_stat-effect_statmap.nii.gz"))) for c in "AB")
    d = _maps(out / "sub-01" / "node-subject" / "sub-01_contrast-AvB_stat-effect_statmap.nii.gz")
    np.testing.assert_allclose(d, a - b, rtol=1e-5, atol=1e-6)
    # its dof are at most the run's, once (each map's share, half the mean of its A's and B's, in Kenward-Roger's
    # effective dof: the run's where A's and B's variances are equal, half where one dominates); they were the sum
    # of both (twice), and with the shares flameo's run's dof less the rank
    record = json.loads((out / "sub-01" / "node-run" / f"{run_1}_model.json").read_text())
    run_dof = np.mean([record["settings"]["bids"]["outputs"][c]["dof"] for c in "AB"])
    subject_record = json.loads((out / "sub-01" / "node-subject" / "sub-01_model.json").read_text())
    dof = subject_record["contrasts"]["AvB"]["dof"]
    assert run_dof / 2 <= dof["min"] <= dof["max"] <= run_dof * (1 + 1e-12)
    if X[0] != "A":
        return
    dataset = {**model["Nodes"][2], "GroupBy": [], "Model": {"Type": "glm", "X": ["A", "B"]}}
    dataset["Contrasts"] = [{"Name": "unpaired", "ConditionList": ["A", "B"], "Weights": [1, -1], "Test": "t"}]
    del dataset["DummyContrasts"]
    subject["DummyContrasts"] = {"Contrasts": ["A", "B"], "Test": "t"}
    model["Nodes"][2] = dataset
    model["Edges"][1]["Filter"] = {"contrast": ["A", "B"]}
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    (failure,) = result.failures
    assert "as independent rows, which a subject's maps are not" in failure.reason
    del model["Edges"][1]["Filter"]
    model["Nodes"][2] = {**model["Nodes"][2], "GroupBy": ["subject"], "Level": "Subject"}
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": ["A", "B"]}
    result = run(study.root, out, model=model, derivatives=[study.derivatives], level="subject", progress=False)
    assert "the maps of contrast AvB are rows of no column of its design" in result.failures[0].reason


def test_a_dataset_nodes_demean_takes_the_subjects_it_models(tmp_path):
    """Demean of participants.tsv's age at the Dataset node, the subjects chosen by the edge's Filter: pybids
    centred age over every row of participants.tsv (the intercept then the mean at another age: 15% off, exit 0).
    It is centred over the subjects the node models, as SPM and FSL centre a covariate."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=7, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    table = study.root / "participants.tsv"
    table.write_text(table.read_text() + "sub-99\t90\tpatient\n")  # (a row of a subject without data)
    model = default_model("stroop", ["A"])
    model["Nodes"][2]["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Demean", "Input": ["age"]}],
    }
    model["Nodes"][2]["Model"]["X"] = [1, "age"]
    model["Edges"][1]["Filter"] = {"subject": ["01", "02", "04"]}
    out = tmp_path / "out"
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok, result.failures
    ages = pd.read_csv(table, sep="\t").set_index("participant_id").loc[["sub-01", "sub-02", "sub-04"], "age"]
    design = pd.read_csv(out / "node-dataset" / "contrast-A_design.tsv", sep="\t")
    np.testing.assert_allclose(sorted(design["age"]), sorted(ages - ages.mean()))
    # a model per participants.tsv group: each centres age over its own subjects, not over the node's
    model["Nodes"][2]["GroupBy"] = ["contrast", "group"]
    del model["Edges"][1]["Filter"]
    result = run(study.root, out, model=model, derivatives=[study.derivatives], group_model="ols", progress=False)
    assert result.ok, result.failures
    table = pd.read_csv(table, sep="\t").set_index("participant_id")
    for group in ("control", "patient"):
        ages = table.loc[[f"sub-0{s}" for s in "1234567" if table.loc[f"sub-0{s}", "group"] == group], "age"]
        design = pd.read_csv(out / "node-dataset" / f"group-{group}_contrast-A_design.tsv", sep="\t")
        np.testing.assert_allclose(sorted(design["age"]), sorted(ages - ages.mean()), atol=1e-9)


@pytest.mark.parametrize("term", ["agee", "Age", "grup", "Demean Age"])
def test_a_misnamed_participants_column_is_refused_before_anything_is_fitted(tmp_path, capsys, term):
    """Model.X (or GroupBy) of the Dataset node naming "agee" for participants.tsv's age: pybids failed on it at
    the dataset level, once every run and subject was fitted. Refused at once, naming the column meant; in a node
    with Transformations too (a Demean of "Age", the usual way a covariate is entered, was left to pybids: a
    tester's), where the names its instructions make (a Factor's "group.patient") are not refused."""
    from voxfit.bids.spec import default_model
    from voxfit.bids.study import _check_misnamed_columns

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    model = default_model("stroop", ["A"])
    if term == "grup":
        model["Nodes"][2]["GroupBy"] = ["contrast", term]
    elif term == "Demean Age":
        term = "Age"
        instructions = [{"Name": "Factor", "Input": "group", "Sep": "_"}, {"Name": "Demean", "Input": [term]}]
        model["Nodes"][2]["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": instructions}
        model["Nodes"][2]["Model"]["X"] = [1, term, "group_patient"]
        fine = json.loads(json.dumps(model))  # (the names a Factor of Sep "_" makes: not refused, a reviewer's)
        fine["Nodes"][2]["Transformations"]["Instructions"] = [{"Name": "Factor", "Input": "sex", "Sep": "_"}]
        fine["Nodes"][2]["Model"]["X"] = [1, "age", "sex_M"]
        _check_misnamed_columns(fine, ["age", "sex"])
    else:
        model["Nodes"][2]["Model"]["X"] = [1, term]
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path)]) == 2
    meant = "group" if term == "grup" else "age"
    field = (
        "GroupBy"
        if term == "grup"
        else "Model.X"
        if "Transformations" not in model["Nodes"][2]
        else ("Transformations' Demean Input")
    )
    err = capsys.readouterr().err
    said = f'node dataset: {field} names "{term}", a column of no table, and participants.tsv or sessions.tsv has '
    assert f'{said}"{meant}"; did you mean it?' in err
    assert not out.exists()


def test_a_misnamed_entity_in_a_group_by_is_refused_before_anything_is_fitted(tmp_path, capsys):
    """GroupBy "subjetc" of the Subject node: every run was fitted, then pybids failed (a tester's). Refused at once,
    naming the entity meant."""
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    model = default_model("stroop", ["A"])
    model["Nodes"][1]["GroupBy"] = ["subjetc", "contrast"]
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'GroupBy names "subjetc", neither an entity nor a column of participants.tsv' in err, err
    assert 'did you mean "subject"?' in err and not out.exists()


def test_a_subject_nodes_demean_of_a_sessions_column_is_within_each_subject(tmp_path):
    """Demean of sessions.tsv's load at a Subject node (one model per subject over its sessions): each subject's
    design centres it over its own sessions (pybids reads each subject's table apart; kept so now that a group's
    rows are its own subjects')."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2", "3"), scans=40, shape=(8, 8, 6))
    loads = {"01": [3, 5, 13], "02": [20, 2, 8]}
    for sub, values in loads.items():
        rows = "".join(f"ses-{k}\t{v}\n" for k, v in zip("123", values))
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\n" + rows)
    model = default_model("stroop", ["congruent"], sessions=True)
    subject = model["Nodes"][2]
    subject["Model"] = {"Type": "glm", "X": [1, "load"]}
    subject["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Demean", "Input": ["load"]}],
    }
    out = tmp_path / "out"
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    assert run(study.root, out, model=model, **kw).ok
    for sub, values in loads.items():
        design = pd.read_csv(out / f"sub-{sub}" / "node-subject" / f"sub-{sub}_contrast-congruent_design.tsv", sep="\t")
        np.testing.assert_allclose(sorted(design["load"]), sorted(np.subtract(values, np.mean(values))))


def test_a_subject_nodes_demean_takes_the_sessions_it_models(tmp_path):
    """sessions.tsv rows of sessions without data: pybids transformed a subject's rows before matching them to its
    inputs, so a row of a session not preprocessed (sub-01's ses-4) or whose runs all failed (sub-02's ses-3)
    entered the Demean of its column: the subject's intercept was the fit at another load (exit 0). Each subject's
    load is now centred over the sessions it models. A session with data but no row of its own (sub-03's ses-3)
    was left out of the subject's model with no word; its groups now fail, naming it."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=3, runs=1, sessions=("1", "2", "3"), scans=40, shape=(8, 8, 6))
    loads = {"01": {"3": 13, "1": 3, "2": 5, "4": 999}, "02": {"2": 2, "1": 20, "3": 8}, "03": {"1": 4, "2": 6}}
    for sub, values in loads.items():
        rows = "".join(f"ses-{k}\t{v}\n" for k, v in values.items())
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\n" + rows)
    for confounds in (study.derivatives / "sub-02" / "ses-3").rglob("*_desc-confounds_timeseries.tsv"):
        table = pd.read_csv(confounds, sep="\t")
        table.drop(columns="trans_x").to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][0]["Model"]["X"] = ["congruent", "trans_x", 1]
    subject = model["Nodes"][2]
    subject["Model"] = {"Type": "meta", "X": [1, "load"]}  # (fixed effects: two sessions suffice)
    subject["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Demean", "Input": ["load"]}],
    }
    out = tmp_path / "out"
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, out, model=model, **kw)
    modelled = {"01": [13, 3, 5], "02": [2, 20]}
    for sub, values in modelled.items():
        design = pd.read_csv(out / f"sub-{sub}" / "node-subject" / f"sub-{sub}_contrast-congruent_design.tsv", sep="\t")
        np.testing.assert_allclose(sorted(design["load"]), sorted(np.subtract(values, np.mean(values))))
    subject_failures = [f for f in result.failures if f.node == "subject"]
    assert subject_failures and all("sub-03" in f.group for f in subject_failures)
    assert all("sub-03_ses-3" in f.reason and "sessions.tsv" in f.reason for f in subject_failures)
    assert not (out / "sub-03" / "node-subject").exists()


@pytest.mark.parametrize(
    ("a", "b", "said"),
    [
        ("1", "1.0", "pybids reads its trial types as numbers, and '1' and '1.0' as one (1)"),
        ("1e3", "1000", "and '1000' and '1e3' as one (1000)"),
        ("True", "False", "pybids reads its trial types 'False', 'True' as booleans, which it does not name as"),
        ("null", "go", "trial type 'null', which pybids reads as missing (as pandas reads such words)"),
    ],
)
def test_trial_types_pybids_reads_as_other_values_are_said(tmp_path, capsys, a, b, said):
    """pybids reads an events file with pandas, which guesses the trial_type column's type: '1' and '1.0' (or
    '1e3' and '1000') were one regressor, True and False a condition without events, and 'null' (or NA, None)
    no trial type at all, said as "n/a or empty" (a tester's; exit 0 or an untrue message). The first two are
    refused before any fit, naming the file; the third is said as what it is."""
    import pandas as pd

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=40, shape=(6, 6, 4))
    path = next(study.root.rglob("*_events.tsv"))
    events = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    events["trial_type"] = [a if k % 2 else b for k in range(len(events))]
    events.to_csv(path, sep="\t", index=False)
    out = tmp_path / "out"
    code = main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives)])
    err = capsys.readouterr().err
    assert code == (0 if a == "null" else 2) and said in err, err
    assert out.exists() == (a == "null")


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("header only", "have a trial_type column but no trial type in it (every row n/a, or no rows: "),
        ("all n/a", "have a trial_type column but no trial type in it (every row n/a, or no rows: "),
        ("padded", "its column 'trial_type ' has spaces around its name; name it trial_type."),
        ("other column", "have no trial_type column ("),
    ],
)
def test_events_without_trial_types_are_said_as_they_are(tmp_path, capsys, case, said):
    """The default model takes the runs' trial types: events files with only a header, a trial_type column all
    n/a, or one named 'trial_type ' were each said as "needs the trial types ... (trial_type column); got []"
    (a tester's), the column said missing where it was there. Each is said as what it is."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    path = next(study.root.rglob("*_events.tsv"))
    lines = path.read_text().splitlines()
    if case == "header only":
        lines = lines[:1]
    elif case == "all n/a":
        j = lines[0].split("\t").index("trial_type")
        lines[1:] = ["\t".join("n/a" if k == j else c for k, c in enumerate(x.split("\t"))) for x in lines[1:]]
    else:
        lines[0] = lines[0].replace("trial_type", "trial_type " if case == "padded" else "condition")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not out.exists()


def test_the_checks_of_tables_and_trial_types_read_what_pybids_reads_and_no_more(tmp_path):
    """A reviewer's: trial types that pandas reads as booleans or merges are refused only where the model's Run
    nodes take trial types (a model of response_time alone was refused over True and False); a participants.tsv
    whose first line is blank is read from its header, as pandas reads it; a dataset below /home/behrens/beh is
    said to lie below beh, not behrens."""
    from types import SimpleNamespace

    from voxfit.bids.layout import _check_folders_above
    from voxfit.bids.spec import default_model
    from voxfit.bids.study import _check_trial_type_readings, _check_words

    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\tresponse_time\n0\t1\tTrue\t0.5\n5\t1\tFalse\t0.6\n")
    runs = [SimpleNamespace(events=events, problems=())]
    model = default_model("x", ["True", "False"])
    with pytest.raises(InputError, match="as booleans, which it does not name as conditions"):
        _check_trial_type_readings(runs, model)
    other = {"Nodes": [{"Level": "Run", "Name": "run", "Model": {"X": ["response_time", 1]}}]}
    _check_trial_type_readings(runs, other)  # (its trial types are not read)
    table = tmp_path / "participants.tsv"
    lines = [[], ["participant_id", "group"], ["sub-01", "patient "]]
    with pytest.raises(InputError, match=r"line 3: group 'patient ' has spaces around it"):
        _check_words(table, lines, {"group"}, "participant_id")
    with pytest.raises(InputError, match=r"lies below a folder named like a BIDS entity \(beh\)"):
        _check_folders_above(None, Path("/home/behrens/beh/ds"), [])


_TABLE_WORDS = {
    # pybids keeps a cell's case and the spaces around it: each of these was a value of its own, the subject fitted
    # in the Factor's reference level (a control: its maps' t correlated 0.61 with the true design's), exit 0
    # ... said where they differ only in case, which may be two values (genotypes AA, Aa, aa), as pybids takes them
    "case": ("participants", "patient", "Patient", "holds 'Patient' (line {b}) and 'patient'"),
    "space": ("participants", "patient", "patient ", "line {b}: group 'patient ' has spaces around it"),
    # ... a GroupBy's subject left out of its group; a header's name with a space: not the column the model takes
    "groupby": ("participants", "patient", "Patient", "which differ only in case: pybids takes them for 2 values"),
    "no-break space": ("participants", "patient", "patient\xa0", "line {b}: group 'patient\\xa0' has spaces around"),
    "header": ("participants", "group", "group ", "its column 'group ' has spaces around its name"),
    "two columns": ("participants", "group", "group\tgroup", "has two columns 'group', which the model takes"),
    # a session_id "ses-2 " named no session: the session's run fitted, then left out of the subject's model
    "session": ("sessions", "ses-2", "ses-2 ", "line 3: session_id 'ses-2 ' has spaces around it"),
}


@pytest.mark.parametrize("case", sorted(_TABLE_WORDS))
def test_a_tables_value_written_two_ways_is_refused_before_anything_is_fitted(tmp_path, capsys, case):
    """The columns of participants.tsv and sessions.tsv that a model takes (the Model.X, GroupBy, and the Inputs
    of the Transformations, a Factor's column, of the nodes pybids gives them to) are read as pybids reads them,
    spaces and case kept: a value with spaces around it ('patient ', a no-break space too), a name with spaces
    around it, a column named twice, or a session_id with spaces around it is refused at once, naming the file and
    line (a tester's: each was exit 0, a subject in the wrong group or a session left out, silently); values that
    differ only in case are said, and fitted as the values pybids takes them for (a reviewer's: genotypes)."""
    from voxfit.bids.spec import default_model

    table, good, bad, said = _TABLE_WORDS[case]
    sessions = ("1", "2") if table == "sessions" else None
    study = make_dataset(tmp_path / "ds", subjects=4, runs=1, scans=30, shape=(6, 6, 4), sessions=sessions)
    model = default_model("stroop", ["congruent"], sessions=bool(sessions))
    node = model["Nodes"][-1 if table == "participants" else 2]
    if table == "sessions":
        for sub in ("01", "02"):
            rows = "".join(f"ses-{k}\t{v}\n" for k, v in (("1", 3), ("2", 5)))
            (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\n" + rows)
        node["Model"] = {"Type": "meta", "X": [1, "load"]}
        path = study.root / "sub-02" / "sub-02_sessions.tsv"
    elif case == "groupby":
        node["GroupBy"] = ["contrast", "group"]
        path = study.root / "participants.tsv"
    else:
        factor = {"Name": "Factor", "Input": ["group"]}
        node["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": [factor]}
        node["Model"]["X"] = [1, "group.patient"]
        path = study.root / "participants.tsv"
    lines = path.read_text().splitlines()
    at = next((n for n, line in enumerate(lines[1:], 1) if good in line.split("\t")), 0)
    if case in ("header", "two columns"):
        lines[0] = lines[0].replace(good, bad)
        lines[1:] = [line + "\tcontrol" if case == "two columns" else line for line in lines[1:]]
    else:
        lines[at] = "\t".join(bad if cell == good else cell for cell in lines[at].split("\t"))
    path.write_text("\n".join(lines) + "\n")
    model_path = tmp_path / "model_smdl.json"
    model_path.write_text(json.dumps(model))
    out = tmp_path / "out"
    level = "subject" if table == "sessions" else "dataset"
    argv = ["bids", str(study.root), str(out), level, "--derivatives", str(study.derivatives), "--model"]
    warned = case in ("case", "groupby")  # (GroupBy's groups 'Patient' and 'patient' then fail as one file name)
    assert main([*argv, str(model_path)]) == (0 if case == "case" else 2)
    err = capsys.readouterr().err
    assert str(path) in err and said.format(b=at + 1) in err, err
    assert out.exists() == warned and (warned or err.count("\n") == 1), err


def test_a_rerun_sees_the_changes_inside_a_linked_subject_folder(tmp_path):
    """A subject's folder kept elsewhere (scratch space) and linked into the dataset: its files were not in the
    dataset's stamp, so a rerun after an edit of its events kept the old maps ("unchanged", exit 0). The edited
    run is refitted, and its maps are those of a fresh study."""
    import shutil

    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    elsewhere = tmp_path / "scratch" / "sub-02"
    shutil.move(study.root / "sub-02", elsewhere)
    (study.root / "sub-02").symlink_to(elsewhere, target_is_directory=True)
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    first = run(study.root, tmp_path / "out", **kw)
    assert first.ok
    events = next(elsewhere.rglob("*_events.tsv"))
    lines = events.read_text().splitlines()
    lines[1] = (
        lines[1].replace("\tincongruent", "\tX").replace("\tcongruent", "\tincongruent").replace("\tX", "\tcongruent")
    )
    events.write_text("\n".join(lines) + "\n")
    again = run(study.root, tmp_path / "out", **kw)
    assert run(study.root, tmp_path / "fresh", **kw).ok
    refitted = [r for results in again.nodes.values() for r in results if not r.reused]
    assert refitted and all(dict(r.entities)["subject"] == "02" for r in refitted)
    for path in (tmp_path / "fresh").rglob("*_stat-z_statmap.nii.gz"):
        twin = tmp_path / "out" / path.relative_to(tmp_path / "fresh")
        np.testing.assert_array_equal(_maps(twin), _maps(path))


def test_a_datalad_datasets_retrieved_files_are_recorded_by_their_names(tmp_path):
    """A DataLad dataset holds each file as a link into .git/annex/objects, named by its digest (SHA256E-s...--...):
    model.json's inputs named those objects, not the run, space, events and confounds table fitted. They are named
    as the dataset names them now, with the object each leads to as its target; a file that is no link has none."""
    import hashlib
    import os

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    for f in sorted(p for p in study.root.rglob("*") if p.is_file() and "sub-" in p.name):
        data = f.read_bytes()
        key = f"SHA256E-s{len(data)}--{hashlib.sha256(data).hexdigest()}{''.join(f.suffixes[-2:])}"
        obj = study.root / ".git" / "annex" / "objects" / key[-6:-4] / key[-4:-2] / key / key
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        f.unlink()
        f.symlink_to(os.path.relpath(obj, f.parent))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", *deriv, "--quiet"]) == 0
    (record,) = out.rglob("*_model.json")
    inputs = json.loads(record.read_text())["inputs"]
    names = sorted(Path(i["path"]).name for i in inputs)
    assert sorted(n.split("_")[-1] for n in names) == ["bold.nii.gz", "events.tsv", "mask.nii.gz", "timeseries.tsv"]
    assert all(".git" not in i["path"] and "/annex/objects/" in i["target"] for i in inputs), inputs
    assert all(Path(i["target"]).read_bytes() == Path(i["path"]).read_bytes() for i in inputs)


def test_files_a_datalad_dataset_has_not_retrieved_are_said_to_be_so(tmp_path, capsys):
    """git-annex keeps a DataLad dataset's files as links into .git/annex, which point nowhere until the file is
    retrieved (or, unlocked, as small pointer files). One such events file, confounds table or sidecar stopped the
    whole study with "no such file or folder" (a sidecar's even with --participant-label of another subject:
    pybids indexes its metadata); a pointer participants.tsv failed the dataset node with KeyError 'subject'. A run
    whose files are not retrieved fails alone, saying so and what to do; files no study reads (sourcedata, the
    anatomy) are no matter; the dataset's own tables not retrieved are refused before anything is fitted."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    annex = study.root / ".git" / "annex" / "objects"
    annex.mkdir(parents=True)
    (study.root / "sourcedata").mkdir()
    (study.root / "sourcedata" / "scores.tsv").symlink_to(annex / "MD5E-s1--1.tsv")
    anat = study.derivatives / "sub-02" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-02_desc-preproc_T1w.nii.gz").symlink_to(annex / "MD5E-s1--2.nii.gz")
    for path in [next(study.root.rglob("sub-01_*_events.tsv")), next(study.derivatives.rglob("sub-01_*_bold.json"))]:
        path.unlink()
        path.symlink_to(annex / "MD5E-s100--0123.json")
    # sub-02's raw BOLD (whose data a study never reads) and a run of it in another space, not retrieved: no matter
    raw = study.root / "sub-02" / "func" / "sub-02_task-stroop_run-1_bold.nii.gz"
    raw.unlink()
    raw.symlink_to(annex / "MD5E-s9--3.nii.gz")
    func = next(study.derivatives.rglob("sub-02_*_desc-preproc_bold.nii.gz")).parent
    (func / "sub-02_task-stroop_run-1_space-T1w_desc-preproc_bold.nii.gz").symlink_to(annex / "MD5E-s9--4.nii.gz")
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "subject", *deriv]) == 2
    err = capsys.readouterr().err
    assert "this file of the run is not there (a link to no file, or a git-annex pointer: a DataLad" in err
    assert "retrieve it (datalad get), or leave the subject out (--participant-label)" in err and "sub-01" in err
    assert list(out.glob("sub-02/node-subject/*_stat-z_statmap.nii.gz")) and not list(out.glob("sub-01/node-*"))
    (study.root / "participants.tsv").write_text("/annex/objects/MD5E-s60--0123.tsv\n")
    assert main(["bids", str(study.root), str(tmp_path / "out2"), "subject", *deriv]) == 2
    err = capsys.readouterr().err
    assert "1 table(s) the study reads are not there, " in err and "participants.tsv first" in err
    assert err.count("\n") == 1 and not (tmp_path / "out2").exists()


def test_what_bidsignore_names_is_left_out(tmp_path):
    """pybids 0.22 reads no .bidsignore: a subject listed there (raw data fMRIPrep was not run on) was counted as
    runs that failed ("rerun fMRIPrep"), exit 2. It is left out, as the BIDS validator leaves it."""
    import shutil

    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    shutil.copytree(study.root / "sub-02", study.root / "sub-03")
    for path in (study.root / "sub-03").rglob("*"):
        if path.is_file():
            path.rename(path.with_name(path.name.replace("sub-02", "sub-03")))
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    assert not run(study.root, tmp_path / "out", **kw).ok  # (sub-03 has no preprocessed runs)
    (study.root / ".bidsignore").write_text("# raw data only\nsub-03/\n")
    result = run(study.root, tmp_path / "out", **kw)
    assert result.ok, result.failures
    # a line meant for the raw dataset's defacing masks leaves fMRIPrep's brain masks alone (pybids gives the
    # derivatives the raw dataset's indexer: they were left out, and the runs fitted in voxfit's automatic mask)
    (study.root / ".bidsignore").write_text("sub-03/\n*_mask.nii.gz\n**/extra\n")
    assert run(study.root, tmp_path / "masked", **kw).ok
    for path in (tmp_path / "masked").rglob("node-run/*_model.json"):
        assert json.loads(path.read_text())["mask"]["source"] != "automatic"


def test_a_run_whose_output_names_would_be_too_long_fails_alone(tmp_path, capsys):
    """A participant label of 170 characters: its inputs' names fit in 255 bytes, its maps' do not. The write
    failed ("the name is too long"), which stopped the whole study; the run fails alone, before it is fitted."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    label = "a" * 170
    for root in (study.root, study.derivatives):
        folder = root / f"sub-{label}"
        (root / "sub-02").rename(folder)
        for path in folder.rglob("*sub-02*"):
            path.rename(path.with_name(path.name.replace("sub-02", f"sub-{label}")))
    table = study.root / "participants.tsv"
    table.write_text(table.read_text().replace("sub-02", f"sub-{label}"))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "subject", *deriv]) == 2
    err = capsys.readouterr().err
    assert "its files' names would be longer than the 255 bytes a file system takes" in err
    assert "shorten its labels (the subject's, the contrasts')" in err
    assert list(out.glob("sub-01/node-subject/*_stat-z_statmap.nii.gz"))


def test_a_rerun_removes_what_a_killed_process_left_in_a_group_folder(tmp_path):
    """A run killed (SIGKILL) while it wrote left its hidden folder in sub-01/node-run, with a map of 0 bytes: a
    rerun that reused the group never opened that folder again, and the hidden folder stayed. Removed, and a live
    process's left alone."""
    import os
    import socket
    import subprocess
    import sys

    from voxfit._folders import MARKER, PARTIAL
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    kw = {"derivatives": [study.derivatives], "level": "run", "progress": False}
    out = tmp_path / "out"
    assert run(study.root, out, **kw).ok
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = {}
    for name, pid in (("dead", int(dead.stdout)), ("live", os.getpid())):
        left[name] = out / "sub-01" / "node-run" / f"{PARTIAL}{name}"
        left[name].mkdir()
        (left[name] / MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        (left[name] / "map.nii.gz").write_bytes(b"")
    assert run(study.root, out, **kw).ok
    assert not left["dead"].exists() and left["live"].exists()


def test_what_a_hostile_tester_found_said_for_what_it_is(tmp_path, capsys):
    """A trial_type with a space after it split its condition in two without a word; a run saved as .nii beside
    its .nii.gz was said to differ "in a part of its name pybids does not read (as cohort-)"; one --derivatives
    folder given twice was "already added ... fix that JSON file"."""
    import gzip
    import shutil

    study, deriv = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    events = next(study.root.rglob("sub-01_task-stroop_run-1_events.tsv"))
    lines = events.read_text().splitlines()
    lines[1] = lines[1].replace("\tcongruent", "\tcongruent ").replace("\tincongruent ", "\tincongruent")
    events.write_text("\n".join(lines) + "\n")
    bold = next(study.derivatives.rglob("sub-01_task-stroop_run-2_*_desc-preproc_bold.nii.gz"))
    with gzip.open(bold, "rb") as src, open(bold.with_suffix(""), "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", *deriv, *deriv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has spaces around it, which pybids keeps: it would be a condition apart from 'congruent'" in err
    assert "are the same run, saved twice (as .nii and as .nii.gz?); keep one of them in the derivatives." in err
    assert list(out.glob("sub-02/node-run/*_stat-z_statmap.nii.gz"))


def test_bidsignore_lines_are_read_as_gitignore_reads_them(tmp_path):
    """.bidsignore's lines: a slash inside anchors at the top, ``*`` stays within a name, ``**`` spans folders, a
    trailing slash takes folders only; the last line that matches decides: ``!`` takes a path back, but not one
    inside a folder left out (git's rule); ``\\!`` begins a name."""
    from voxfit.bids.layout import _ignored_paths

    paths = ("x", "a/x", "extra/y.tsv", "extra/deep/y.tsv", "sub-01/func/a_physio.tsv", "notes/x.md", "b/notes")
    paths += ("sub-02/func/b_physio.tsv", "sub-02/func/c_physio.tsv", "!odd.tsv", "old/keep.tsv")
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    lines = ["**/x", "extra/*.tsv", "*_physio.tsv", "notes/", "!b/notes", "# comment", "!c_physio.tsv", "\\!odd.tsv"]
    lines += ["old/", "!old/keep.tsv"]
    assert sorted(_ignored_paths(tmp_path, lines)) == [
        "!odd.tsv",
        "a/x",
        "extra/y.tsv",
        "notes",
        "old",
        "sub-01/func/a_physio.tsv",
        "sub-02/func/b_physio.tsv",
        "x",
    ]
    assert _ignored_paths(tmp_path, ["!x", "!notes/"]) == []  # nothing named but to be taken back
    assert sorted(_ignored_paths(tmp_path, ["*_physio.tsv", "!sub-02/**", "sub-02/func/c*"])) == [
        "sub-01/func/a_physio.tsv",
        "sub-02/func/c_physio.tsv",
    ]
    # a trailing ** takes what a folder holds, not the folder: a file inside it can be taken back (git's idiom)
    assert _ignored_paths(tmp_path, ["extra/**", "!extra/y.tsv"]) == ["extra/deep"]
    assert _ignored_paths(tmp_path, ["extra/**"]) == ["extra"]  # (nothing taken back: the folder whole, one pattern)
    assert _ignored_paths(tmp_path, ["extra/**/"]) == ["extra/deep"]  # (the folders inside, not the files beside)


def test_a_dataset_with_sessions_and_scans_tables_is_fitted(tmp_path):
    """Each session's scans.tsv (acq_time, as scanners' converters write it): pybids reads it with the BOLD
    sidecars' metadata as variables, SliceTiming a list, and its merge of the Session node's variables failed
    ("unhashable type: 'list'"): every Session node of such a dataset failed, and the subjects after it."""
    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("a", "b"), scans=40, shape=(8, 8, 6))
    for sub in ("01", "02"):
        for ses in ("a", "b"):
            name = f"sub-{sub}_ses-{ses}"
            row = f"func/{name}_task-stroop_run-1_bold.nii.gz\t2020-01-01T10:00:00\n"
            (study.root / f"sub-{sub}" / f"ses-{ses}" / f"{name}_scans.tsv").write_text("filename\tacq_time\n" + row)
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", **kw)
    assert result.ok, result.failures
    assert len(list((tmp_path / "out").glob("sub-0*/node-subject/*_stat-z_statmap.nii.gz"))) == 2 * 2


def test_sessions_sidecars_and_a_scans_row_of_a_removed_run(tmp_path, capsys):
    """sessions.json describing its columns (Description, Units): pybids took the entries for entities and failed
    querying them, an internal error (exit 1) at every Session node. It is not read (voxfit reads no column's
    description). A scans.tsv row naming a run no longer there (dropped for motion), where Model.X takes a column
    of the table: pybids gave each later run the next row's values (fd [0.9, 0.2, 0.4] for [0.2, 0.4, 0.6], exit
    0); refused, naming the row."""
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=2, sessions=("a",), scans=40, shape=(8, 8, 6))
    deriv = ["--derivatives", str(study.derivatives)]
    for sub in ("01", "02"):
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\nses-a\t1\n")
    (study.root / "sessions.json").write_text(json.dumps({"load": {"Description": "task load", "Units": "items"}}))
    (study.root / "scans.json").write_text(json.dumps({"fd": {"Description": "motion", "Units": "mm"}}))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "subject", *deriv, "--quiet"]) == 0
    folder = study.root / "sub-01" / "ses-a"
    rows = [f"func/sub-01_ses-a_task-stroop_run-{r}_bold.nii.gz\t{fd}\n" for r, fd in ((0, 0.9), (1, 0.2), (2, 0.4))]
    (folder / "sub-01_ses-a_scans.tsv").write_text("filename\tfd\n" + "".join(rows))
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][1]["Model"] = {"Type": "glm", "X": [1, "fd"]}
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model))
    assert main(["bids", str(study.root), str(tmp_path / "out2"), "session", *deriv, "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert "_scans.tsv, line 2: func/sub-01_ses-a_task-stroop_run-0_bold.nii.gz is not in the dataset" in err
    assert "remove the row (a run left out?)" in err and err.count("\n") == 1


def test_a_tables_column_at_a_level_pybids_gives_it_no_node_of_is_refused_before_any_fit(tmp_path):
    """participants.tsv's age in a Subject node's Model.X, sessions.tsv's load in a Dataset node's or in a Session
    node's that Scales it (Transformations left such nodes to pybids): pybids gives the first table's columns to
    Dataset nodes only, the second's to Subject nodes, and failed ("not found in data matrix", the hint naming
    participants.tsv's columns) once every run was fitted. Refused before anything is fitted, naming the level; a
    name a transformation outputs is left to pybids."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("a", "b"), scans=40, shape=(8, 8, 6))
    for sub in ("01", "02"):
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\nses-a\t1\nses-b\t3\n")
    kw = {"derivatives": [study.derivatives], "progress": False}
    scaled = {"Transformer": "pybids-transforms-v1", "Instructions": [{"Name": "Scale", "Input": ["load"]}]}
    for level, term, table, node, transformations in (
        ("subject", "age", "participants", "Dataset", None),
        ("dataset", "load", "sessions", "Subject", None),
        ("session", "load", "sessions", "Subject", scaled),
    ):
        model = default_model("stroop", ["congruent"], sessions=True)
        at = model["Nodes"][{"session": 1, "subject": 2, "dataset": 3}[level]]
        at["Model"] = {"Type": "meta" if level == "session" else "glm", "X": [1, term]}
        if transformations:
            at["Transformations"] = transformations
        with pytest.raises(
            InputError,
            match=f'Model.X names "{term}", a column of {table}.tsv, which pybids gives only to {node} nodes',
        ):
            run(study.root, tmp_path / f"out-{level}", model=model, **kw)
        assert not (tmp_path / f"out-{level}").exists()
    from voxfit.bids.study import _check_table_levels

    renamed = {"Instructions": [{"Name": "Rename", "Input": ["acq_load"], "Output": ["load"]}]}
    model["Nodes"][1]["Transformations"] = renamed  # ("load" made at the node: left to pybids)
    _check_table_levels(model, {"participants": ["age"], "sessions": ["load"]})


def test_an_entity_in_a_higher_nodes_design_is_refused_before_any_fit(tmp_path):
    """X: [1, "session"] at the Subject node: pybids takes the entity out of the inputs once it is a column of the
    design, and the study failed after every fit with "no maps for the input sub-01; its lower node failed" (with
    numeric labels; letters: "no number ... in participants.tsv?"). Refused at once, saying what works."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][2]["Model"] = {"Type": "glm", "X": [1, "session"]}
    with pytest.raises(InputError, match='node subject: Model.X names "session", an entity of its inputs'):
        run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], progress=False)
    assert not (tmp_path / "out").exists()


def test_a_contrast_of_a_trial_type_a_run_lacks_is_not_made_for_that_run(tmp_path):
    """A run without error trials, in a model whose contrasts name "error" (its Model.X takes "[ie]*"): the whole run
    was refused, its other contrasts lost, and a subject who made no error lost every run. pybids and FitLins leave
    out only the contrasts of that run that name a trial type it has none of: so now, with a note; the subject level
    takes "EvC" from the runs that have it; a Model.X naming "error" leaves it out of those runs. A contrast naming
    a trial type of no run (mistyped) is still refused."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.synthetic import nilearn_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    events = next(study.root.glob("sub-01/func/sub-01_task-stroop_run-1_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table.loc[[2, 5], "trial_type"] = "error"
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    model = nilearn_model()
    node = model["Nodes"][0]
    node["Model"]["X"] = ["congruent", "[ie]*", 1]
    node["Model"]["HRF"]["Variables"] = ["congruent", "[ie]*"]
    node["Contrasts"].append({"Name": "EvC", "ConditionList": ["error", "congruent"], "Weights": [1, -1], "Test": "t"})
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert result.ok, result.failures
    notes = [(g.label, note) for g, note in result.notes]
    assert len(notes) == 3 and all(note == 'contrast "EvC" not made: the run has no "error" event' for _, note in notes)
    assert not any("sub-01_task-stroop_run-1" in label for label, _ in notes)
    out = tmp_path / "out"
    assert len(list(out.glob("sub-0*/node-run/*_contrast-EvC_stat-effect_statmap.nii.gz"))) == 1
    assert len(list(out.glob("sub-0*/node-run/*_contrast-congruent_stat-effect_statmap.nii.gz"))) == 4
    evc = list(out.glob("sub-0*/node-subject/*_contrast-EvC_stat-effect_statmap.nii.gz"))
    assert [p.name.split("_")[0] for p in evc] == ["sub-01"]
    single = next(out.glob("sub-01/node-run/*run-1*_contrast-EvC_stat-effect_statmap.nii.gz"))
    np.testing.assert_allclose(_maps(evc[0]), _maps(single), rtol=1e-6)  # (the one run's, as fixed effects of one)

    # the study's trial types are the dataset's, whichever participants are chosen (sub-02 alone has no error)
    alone = run(study.root, tmp_path / "alone", model=model, participant_label=["02"], **kw)
    assert alone.ok and len(alone.notes) == 2, alone.failures

    node["Contrasts"][-1]["ConditionList"] = ["eror", "congruent"]
    mistyped = run(study.root, tmp_path / "typo", model=model, **{**kw, "level": "run"})  # (refused at the runs)
    assert len(mistyped.failures) >= 4 and all('names "eror"' in f.reason for f in mistyped.failures if f.node == "run")

    # Model.X naming "error" itself (as voxfit's default model file does): left out of the runs that lack it
    node["Contrasts"][-1]["ConditionList"] = ["error", "congruent"]
    node["Model"]["X"] = ["congruent", "incongruent", "error", 1]
    node["Model"]["HRF"]["Variables"] = ["congruent", "incongruent", "error"]
    named = run(study.root, tmp_path / "named", model=model, **kw)
    assert named.ok, named.failures
    notes = sorted({note for _, note in named.notes})
    assert notes == [
        '"error" left out of Model.X: the run has no such event',
        'contrast "EvC" not made: the run has no "error" event',
    ]
    np.testing.assert_allclose(  # (the same subject map as with the pattern)
        _maps(next((tmp_path / "named").glob("sub-01/node-subject/*_contrast-EvC_stat-effect_statmap.nii.gz"))),
        _maps(evc[0]),
        rtol=1e-6,
    )


def test_transformations_take_a_trial_type_a_run_lacks_as_a_regressor_of_zeros(tmp_path):
    """FitLins' usual Run node (pybids' Factor, then Convolve of each trial type, here also renamed and
    orthogonalized) on a study where one run has error trials and three have none: pybids refused the three
    ("No variable named 'trial_type.error'"). A trial type a run has no event of is a regressor of zeros, so its
    instructions go on without it: Convolve makes no "err", Orthogonalize against it alone changes nothing (left
    out), Model.X leaves "err" out and "EvC" is not made, with a note each; those runs' maps are the maps of the
    same model without error trials at all. (Each instruction's rule, and the refusal of one that cannot do
    without it: tests/test_bids_design.py.)"""
    import pandas as pd

    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    events = next(study.root.glob("sub-01/func/sub-01_task-stroop_run-1_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table.loc[[2, 5], "trial_type"] = "error"
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")

    def model(kinds, orthogonalize):
        names = {"congruent": "con", "incongruent": "inc", "error": "err"}
        instructions = [
            {"Name": "Factor", "Input": ["trial_type"]},
            {
                "Name": "Convolve",
                "Input": [f"trial_type.{k}" for k in kinds],
                "Output": [names[k] for k in kinds],
                "Model": "spm",
            },
        ]
        if orthogonalize:
            instructions.append({"Name": "Orthogonalize", "Input": ["con"], "Other": ["err"]})
        else:  # (a later instruction that names the outputs, as Orthogonalize does: pybids convolves in both)
            instructions.append({"Name": "Copy", "Input": ["con"], "Output": ["con_copy"]})
        contrasts = [{"Name": "IvC", "ConditionList": ["inc", "con"], "Weights": [1, -1], "Test": "t"}]
        if "error" in kinds:
            contrasts.append({"Name": "EvC", "ConditionList": ["err", "con"], "Weights": [1, -1], "Test": "t"})
        node = {
            "Level": "Run",
            "Name": "run",
            "GroupBy": ["run", "subject"],
            "Transformations": {"Transformer": "pybids-transforms-v1", "Instructions": instructions},
            "Model": {"Type": "glm", "X": [names[k] for k in kinds] + [1]},
            "Contrasts": contrasts,
        }
        return {"Name": "lacking", "BIDSModelVersion": "1.0.0", "Input": {"task": ["stroop"]}, "Nodes": [node]}

    kw = {"derivatives": [study.derivatives], "level": "run", "progress": False}
    full = model(["congruent", "incongruent", "error"], orthogonalize=True)
    result = run(study.root, tmp_path / "out", model=full, **kw)
    assert result.ok, result.failures
    lacking = sorted({g.label for g, _ in result.notes})
    assert len(lacking) == 3 and not any("sub-01_task-stroop_run-1" in label for label in lacking)
    assert sorted({note for _, note in result.notes}) == [
        '"err" left out of Model.X: the run has no "error" event to make it of',
        'Transformations.Instructions[1] (Convolve) without "trial_type.error": the run has no "error" event',
        'Transformations.Instructions[2] (Orthogonalize) left out: the run has no "error" event',
        'contrast "EvC" not made: the run has no "error" event to make "err" of',
    ]
    out = tmp_path / "out"
    assert len(list(out.glob("sub-0*/node-run/*_contrast-EvC_stat-effect_statmap.nii.gz"))) == 1
    without = run(study.root, tmp_path / "without", model=model(["congruent", "incongruent"], False), **kw)
    assert without.ok, without.failures
    for path in (tmp_path / "without").glob("sub-0*/node-run/*_contrast-IvC_stat-*_statmap.nii.gz"):
        if "sub-01_task-stroop_run-1" not in path.name:
            np.testing.assert_allclose(_maps(out / path.relative_to(tmp_path / "without")), _maps(path), rtol=1e-6)


def test_the_default_models_run_leaves_out_a_trial_type_whose_events_all_start_after_it(tmp_path):
    """voxfit's default model takes each run's own trial types: one whose events all start after the run's last scan
    (a run cut short, its events file whole) refused the run as onsets in milliseconds would, its other trial types
    lost. It is now one the run lacks, where others start within it; when none does, the run is still refused."""
    import pandas as pd

    from voxfit.bids import run

    study = make_dataset(tmp_path / "ds", subjects=2, runs=2, scans=40, shape=(8, 8, 6))
    for name, onsets in (("sub-01_task-stroop_run-1", (12.0, 30.0)), ("sub-01_task-stroop_run-2", (500.0, 600.0))):
        events = next(study.root.glob(f"sub-01/func/{name}_events.tsv"))
        table = pd.read_csv(events, sep="\t")
        table = pd.concat([table, pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": "error"})])
        table.sort_values("onset").to_csv(events, sep="\t", index=False, na_rep="n/a")
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", **kw)
    assert result.ok, result.failures
    out = tmp_path / "out" / "sub-01"
    assert len(list(out.glob("node-run/*run-1*_contrast-error_stat-effect_statmap.nii.gz"))) == 1
    assert not list(out.glob("node-run/*run-2*_contrast-error_*"))
    assert len(list(out.glob("node-run/*run-2*_contrast-congruent_stat-effect_statmap.nii.gz"))) == 1

    events = next(study.root.glob("sub-02/func/sub-02_task-stroop_run-1_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table["onset"] *= 1000  # (milliseconds: every trial type after the run)
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    # (sub-02's runs alone, at the run level: sub-01's were fitted above, and the refusal is its run's)
    late = run(study.root, tmp_path / "out2", **{**kw, "level": "run"}, participant_label=["02"])
    assert [f.group.split("_space")[0] for f in late.failures if f.node == "run"] == ["sub-02_task-stroop_run-1"]


def test_a_dataset_group_of_several_sessions_of_a_subject_is_refused_saying_what_to_group_by(tmp_path):
    """Run -> Session -> Dataset grouped by contrast alone: each subject's maps of every session in one group. The
    group tool refused it after every fit with a line listing every map's path (kilobytes); each such group now
    fails before its fit, naming the subject's sessions and what to do. OLS (rows taken as independent, as before,
    now said in a note: its dof count maps, not subjects) and fixed effects (meta) take them all."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"] = [n for n in model["Nodes"] if n["Name"] != "subject"]
    model["Edges"] = [{"Source": "run", "Destination": "session"}, {"Source": "session", "Destination": "dataset"}]
    kw = {"derivatives": [study.derivatives], "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert [f.node for f in result.failures] == ["dataset"]
    reason = result.failures[0].reason
    assert "holds 2 maps of sub-01 (sessions 1, 2; 2 subject(s) so)" in reason and "add session" in reason
    assert len(reason) < 400
    # (into the same folder: the run and session groups are reused, the dataset groups fitted anew)
    ols = run(study.root, tmp_path / "out", model=model, group_model="ols", **kw)  # (rows taken as independent)
    assert ols.ok and all(g.reused for node in ("run", "session") for g in ols.nodes[node])
    assert not any(g.reused for g in ols.nodes["dataset"])  # ... said in its notes: dof 3 count 4 maps of 2 subjects
    said = [
        n for g, n in ols.notes if g.level == "dataset" and "4 maps of 2 subjects (several of 2: sub-01, sub-02)" in n
    ]
    assert said, ols.notes
    model["Nodes"][-1]["Model"]["Type"] = "meta"
    meta = run(study.root, tmp_path / "out", model=model, **kw)
    assert meta.ok and not any(g.reused for g in meta.nodes["dataset"])
    assert not any("maps of 2 subjects" in n for _, n in meta.notes)


def test_a_groupby_entity_the_node_before_combined_over_is_that_nodes_failure(tmp_path):
    """Run -> Subject (sessions pooled) -> Dataset grouped by session and contrast: the session of the GroupBy,
    which no input carried any more, was passed over (one pooled group, exit 0, nothing said). The node fails
    saying where the sessions were combined; grouped by session at the subject level too, it is fitted."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"] = [n for n in model["Nodes"] if n["Name"] != "session"]
    model["Edges"] = [{"Source": "run", "Destination": "subject"}, {"Source": "subject", "Destination": "dataset"}]
    model["Nodes"][1]["GroupBy"] = ["subject", "contrast"]
    model["Nodes"][2]["GroupBy"] = ["session", "contrast"]
    kw = {"derivatives": [study.derivatives], "progress": False, "group_model": "ols"}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert [f.node for f in result.failures] == ["dataset"]
    assert (
        "its GroupBy names session, which none of its 2 inputs from node subject carries" in result.failures[0].reason
    )
    model["Nodes"][1]["GroupBy"] = ["subject", "session", "contrast"]
    assert run(study.root, tmp_path / "out", model=model, **kw).ok  # (its runs reused)


def test_a_subject_without_a_sessions_table_fails_alone_where_the_model_takes_its_column(tmp_path):
    """A Subject node taking sessions.tsv's load, and one subject with no sessions.tsv: pybids failed the whole node
    ("not found in data matrix", with participants.tsv's columns as the hint), every subject's groups lost and none
    named. That subject's groups fail, saying why; the others are fitted."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    (study.root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tload\nses-1\t1\nses-2\t3\n")
    (study.root / "sub-02" / "sub-02_sessions.tsv").unlink(missing_ok=True)
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": [1, "load"]}
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert [(f.node, f.group) for f in result.failures] == [("subject", "sub-02")]
    assert "sub-02 has no sessions.tsv, whose column(s) load the node's Model.X takes" in result.failures[0].reason
    assert list((tmp_path / "out" / "sub-01" / "node-subject").glob("*_stat-effect_statmap.nii.gz"))


def test_a_session_without_a_row_is_no_matter_where_the_model_takes_no_sessions_column(tmp_path):
    """A Dataset node grouped by session, X [1, age] with DropNA (sub-02's age n/a), and sub-02's sessions.tsv
    without a row for its ses-2: the check of inputs left out for want of a sessions.tsv row failed that group,
    though the model takes no column of the table (DropNA left sub-02 out; the reviewer's finding). Both fit."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=4, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    (study.root / "participants.tsv").write_text(
        "participant_id\tage\nsub-01\t20\nsub-02\tn/a\nsub-03\t30\nsub-04\t41\n"
    )
    for sub in ("01", "02", "03", "04"):
        rows = "ses-1\t1\n" + ("" if sub == "02" else "ses-2\t2\n")
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\n" + rows)
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"] = [n for n in model["Nodes"] if n["Name"] != "subject"]
    model["Edges"] = [{"Source": "run", "Destination": "session"}, {"Source": "session", "Destination": "dataset"}]
    dataset = model["Nodes"][-1]
    dataset.update(GroupBy=["contrast", "session"], Model={"Type": "glm", "X": [1, "age"]})
    dataset["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "DropNA", "Input": ["age"]}],
    }
    result = run(study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], progress=False)
    assert result.ok, result.failures


def test_a_trial_type_the_model_does_not_name_refits_only_its_own_run(tmp_path):
    """The dataset's trial types are in each run's checksum only as far as the run node names them: a type added to
    one run's events that the model does not name refitted every run of the study (the second reviewer's finding);
    now that run alone. A run left with no contrast (its only condition absent) is refused, not fitted empty."""
    import pandas as pd

    from voxfit.bids import run
    from voxfit.bids.synthetic import nilearn_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    kw = {"derivatives": [study.derivatives], "level": "run", "progress": False}
    assert run(study.root, tmp_path / "out", model=nilearn_model(), **kw).ok
    events = next(study.root.glob("sub-02/func/*_events.tsv"))
    table = pd.read_csv(events, sep="\t")
    table.loc[[3], "trial_type"] = "foo"
    table.to_csv(events, sep="\t", index=False, na_rep="n/a")
    again = run(study.root, tmp_path / "out", model=nilearn_model(), **kw)
    assert again.ok
    assert {g.label.split("_task")[0]: g.reused for g in again.nodes["run"]} == {"sub-01": True, "sub-02": False}

    model = nilearn_model()
    node = model["Nodes"][0]
    node["Model"]["X"] = ["foo", 1]
    node["Model"]["HRF"]["Variables"] = ["foo"]
    node["Contrasts"] = []
    node["DummyContrasts"] = {"Contrasts": ["foo"], "Test": "t"}
    only = run(study.root, tmp_path / "foo", model=model, **kw)
    assert [f.group.split("_task")[0] for f in only.failures] == ["sub-01"]
    assert 'the run has no event of "foo", and none of the node\'s contrasts is left for it' in only.failures[0].reason


def test_a_subject_of_a_level_model_x_does_not_name_is_refused(tmp_path, capsys):
    """A participants.tsv value that is a third level of a Factor ("other"; a tester's was "patient ", now refused
    as written two ways, see test_a_tables_value_written_two_ways_is_refused_before_anything_is_fitted): with
    Model.X naming group.control and group.patient, that subject's design row was all zeros and the two-group fit
    took it as an effect of 0 (exit 0, t 8.8 where the right group gives 4.0; study tester). Refused, naming the
    subject and the levels; a model whose intercept covers a level it does not name is fitted."""
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=4, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    table = study.root / "participants.tsv"
    lines = table.read_text().splitlines()
    column = lines[0].split("\t").index("group")
    cells = lines[2].split("\t")
    subject, level = cells[0], cells[column]
    cells[column] = "other"
    table.write_text("\n".join([*lines[:2], "\t".join(cells), *lines[3:]]) + "\n")
    model = default_model("stroop", ["A"])
    model["Nodes"][2]["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Factor", "Input": ["group"]}],
    }
    model["Nodes"][2]["Model"]["X"] = ["group.control", "group.patient"]
    model["Nodes"][2]["Contrasts"] = [
        {"Name": "pc", "ConditionList": ["group.patient", "group.control"], "Weights": [1, -1], "Test": "t"}
    ]
    model["Nodes"][2].pop("DummyContrasts", None)
    path = tmp_path / "model_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the design row of {subject} is all zeros: its group is a level Model.X does not name (it names " in err
    assert "group.control, group.patient)" in err and "correct its value in participants.tsv" in err, err
    model["Nodes"][2]["Model"]["X"] = [1, f"group.{'patient' if level == 'control' else 'control'}"]
    model["Nodes"][2]["Contrasts"] = []
    model["Nodes"][2]["DummyContrasts"] = {"Test": "t"}
    path.write_text(json.dumps(model))
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--model", str(path), "--quiet"]) == 0


def test_a_header_whose_time_between_scans_is_not_the_sidecars_tr_is_said(tmp_path, capsys):
    """A preprocessed run whose header gives 2.5 s between scans where its sidecar gives RepetitionTime 2 was fitted
    with 2 s without a word (study tester): BIDS takes the sidecar's, as SPM and nilearn do, but FSL and AFNI the
    header's, and such a conflict is most often a mix-up. Said, naming the run and both values."""
    import nibabel as nib

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6), conditions=("A",))
    bold = next(study.derivatives.rglob("*_desc-preproc_bold.nii.gz"))
    image = nib.load(bold)
    tr = float(image.header.get_zooms()[3])
    header = image.header.copy()
    header["pixdim"][4] = tr * 1.25
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, header), bold)
    said = f"its sidecars give RepetitionTime {tr:g} s but its header {tr * 1.25:g} s between scans; the design is"
    assert main(["bids", str(study.root), str(tmp_path / "out"), "run", *deriv]) == 0
    assert f"voxfit: warning: {bold}: {said}" in capsys.readouterr().err


def test_a_gifti_runs_time_step_that_is_not_the_sidecars_tr_is_said(tmp_path, capsys):
    """fMRIPrep's surface runs carry FreeSurfer's TimeStep (the TR in milliseconds) in each data array: one of 2.5 s
    beside a sidecar's RepetitionTime 2 is said as a NIfTI header's is; the synthetic study's own (FreeSurfer's,
    in milliseconds, equal to its sidecars') says nothing."""
    import nibabel as nib

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=40, vertices=60, space="fsaverage5")
    deriv = ["--derivatives", str(study.derivatives), "--space", "fsaverage5"]
    bold = sorted(study.derivatives.rglob("*_hemi-L_space-fsaverage5_bold.func.gii"))[0]
    assert nib.load(bold).darrays[0].meta["TimeStep"] == "2000.000000"
    assert main(["bids", str(study.root), str(tmp_path / "out"), "run", *deriv, "--quiet"]) == 0
    assert "between scans" not in capsys.readouterr().err
    image = nib.load(bold)
    for array in image.darrays:
        array.meta["TimeStep"] = "2500.000000"
    nib.save(image, bold)
    assert main(["bids", str(study.root), str(tmp_path / "out2"), "run", *deriv]) == 0
    said = "its sidecars give RepetitionTime 2 s but its header 2.5 s between scans; the design is"
    assert f"voxfit: warning: {bold}: {said}" in capsys.readouterr().err


def test_output_names_put_entities_in_bids_order():
    """BIDS orders hemi before space, and res before den: a surface study's maps were named
    ..._space-fsaverage5_hemi-L_... (a surface tester's)."""
    from voxfit.bids.layout import short_entities

    entities = {"den": "10k", "res": "2", "hemi": "L", "space": "fsaverage5", "run": 1, "task": "x", "subject": "01"}
    assert short_entities(entities) == "sub-01_task-x_run-1_hemi-L_space-fsaverage5_res-2_den-10k"


def test_a_surface_space_at_several_densities_is_named_as_fmriprep_names_it():
    """A surface run at two densities was refused suggesting --space fsaverage:res-native:den-41k, a res- its
    files do not have (a surface tester's); a volume's files without res- are still res-native."""
    from types import SimpleNamespace

    from voxfit.bids.layout import _one_grid

    def run(**grid):
        return SimpleNamespace(entities={"subject": "01", "task": "x", "run": 1, **grid})

    with pytest.raises(InputError, match=r"\(fsaverage:den-10k, fsaverage:den-41k\); choose one with --space"):
        _one_grid([run(den="10k"), run(den="41k")], "fsaverage", {})
    with pytest.raises(InputError, match=r"\(MNI:res-2, MNI:res-native\)"):
        _one_grid([run(res="2"), run()], "MNI", {})


def _without_session(study, sub: str, session: str) -> None:
    """Subject `sub`'s session `session` removed from the raw dataset and the derivatives (a missed visit)."""
    import shutil

    for root in (study.root, study.derivatives):
        shutil.rmtree(root / f"sub-{sub}" / f"ses-{session}")


def test_a_group_built_without_a_subject_notes_it_on_its_own_branch_only(tmp_path):
    """sub-03 missed ses-2, so its Subject node of X [1, load] (a change over sessions) fails. Its dataset group
    (contrast congruent_change: the Subject node renamed congruent) was fitted on the 2 others with no note and
    subjects_left_out {}, as failures were matched to groups by their contrast before the renaming; and the
    dataset group of a sibling branch, which had all 3 subjects, said it was built without sub-03 (every failure
    at a lower level counted, on any branch). Only the node's own path counts, renamed as it goes."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=3, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    for sub in ("01", "02", "03"):
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tload\nses-1\t1\nses-2\t3\n")
    _without_session(study, "03", "2")
    model = default_model("stroop", ["congruent"], sessions=True)
    run_node, dataset = model["Nodes"][0], model["Nodes"][-1]
    change = {
        "Level": "Subject",
        "Name": "subjchg",
        "GroupBy": ["subject", "contrast"],
        "Model": {"Type": "meta", "X": [1, "load"]},
        "Contrasts": [{"Name": "change", "ConditionList": ["load"], "Weights": [1], "Test": "t"}],
    }
    every = {**change, "Name": "subjall", "Model": {"Type": "meta", "X": [1]}, "DummyContrasts": {"Test": "t"}}
    every.pop("Contrasts")
    model["Nodes"] = [run_node, every, change, {**dataset, "Name": "grpall"}, {**dataset, "Name": "grpchg"}]
    model["Edges"] = [
        {"Source": "run", "Destination": "subjall"},
        {"Source": "run", "Destination": "subjchg"},
        {"Source": "subjall", "Destination": "grpall"},
        {"Source": "subjchg", "Destination": "grpchg"},
    ]
    kw = {"derivatives": [study.derivatives], "group_model": "ols", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert [(f.node, f.group) for f in result.failures] == [("subjchg", "sub-03_contrast-congruent")]
    records = {
        name: json.loads(next((tmp_path / "out" / f"node-{name}").glob("*model.json")).read_text())["settings"]["bids"]
        for name in ("grpall", "grpchg")
    }
    assert records["grpchg"]["subjects_used"] == ["01", "02"]
    assert list(records["grpchg"]["subjects_left_out"]) == ["03"]
    assert any("built without sub-03_contrast-congruent" in note for note in records["grpchg"]["notes"])
    assert records["grpall"]["subjects_used"] == ["01", "02", "03"]
    assert records["grpall"]["subjects_left_out"] == {} and records["grpall"]["notes"] == []


def test_a_sessions_table_with_session_id_not_first_is_read(tmp_path):
    """sub-02's sessions.tsv with session_id as its second column (BIDS puts it first; pybids finds it by its
    name, and users' tables do not always put it there): voxfit looked at the first header cell only and failed
    sub-02's Subject node, saying it had no sessions.tsv. It is read as pybids reads it."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    (study.root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tload\nses-1\t1\nses-2\t3\n")
    (study.root / "sub-02" / "sub-02_sessions.tsv").write_text("load\tsession_id\n1\tses-1\n3\tses-2\n")
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": [1, "load"]}
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert result.ok, result.failures
    assert list((tmp_path / "out" / "sub-02" / "node-subject").glob("*_stat-effect_statmap.nii.gz"))


def test_a_session_named_twice_in_its_sessions_table_is_refused(tmp_path):
    """sub-02's sessions.tsv with two rows of ses-2 (load 3, then 0): pybids took one of them without a word, and
    the Subject node's change over load was fitted with whichever it took. Refused before anything is fitted,
    naming the file, the session and its lines, as two rows of a subject in participants.tsv are."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    (study.root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tload\nses-1\t1\nses-2\t3\n")
    table = study.root / "sub-02" / "sub-02_sessions.tsv"
    table.write_text("session_id\tload\nses-1\t1\nses-2\t3\nses-2\t0\n")
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": [1, "load"]}
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    with pytest.raises(InputError, match="more than once") as refused:
        run(study.root, tmp_path / "out", model=model, **kw)
    assert str(refused.value) == f"{table} names ses-2 (lines 3, 4) more than once; keep one row per session."
    assert not (tmp_path / "out").exists()


def test_a_sessions_column_one_subject_left_all_na_breaks_only_a_model_that_takes_it(tmp_path):
    """sub-02's sessions.tsv with acq_time n/a in every row (an anonymised dataset): pybids read that column as
    numbers there and as words in sub-01's, could not merge them, and every subject's Subject node failed, even of
    the default model, which takes no column of the table, the message blaming Model.X, GroupBy and
    Transformations. Columns the node does not name are not given to pybids; a column it takes (Factor of
    timepoint) that a subject left all n/a fails the node naming the table and the column."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    header = "session_id\tacq_time\ttimepoint\n"
    (study.root / "sub-01" / "sub-01_sessions.tsv").write_text(
        header + "ses-1\t2020-01-01T10:00:00\tpre\nses-2\t2020-01-02T10:00:00\tpost\n"
    )
    (study.root / "sub-02" / "sub-02_sessions.tsv").write_text(header + "ses-1\tn/a\tpre\nses-2\tn/a\tpost\n")
    model = default_model("stroop", ["congruent"], sessions=True)
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert result.ok, result.failures

    (study.root / "sub-02" / "sub-02_sessions.tsv").write_text(header + "ses-1\tn/a\tn/a\nses-2\tn/a\tn/a\n")
    model["Nodes"][2]["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Factor", "Input": ["timepoint"]}],
    }
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": ["timepoint.post", "timepoint.pre"]}
    model["Nodes"][2]["DummyContrasts"] = {"Contrasts": ["timepoint.post"], "Test": "t"}
    (failure,) = run(study.root, tmp_path / "out", model=model, **kw).failures  # (its runs reused)
    assert failure.node == "subject" and failure.reason == (
        "sessions.tsv's column 'timepoint', which the node takes, is n/a in every row of sub-02/sub-02_sessions.tsv "
        "and holds words in the other subjects' tables, which pybids cannot merge; fill it, or leave those subjects "
        "out (--participant-label)."
    )


def test_a_subject_without_a_session_of_a_factor_level_fails_alone(tmp_path):
    """A Subject node's Factor of sessions.tsv's timepoint (X timepoint.post and timepoint.pre), and sub-02 missed
    its post session: pybids failed the whole node ("timepoint.post not found in data matrix"), every subject's
    groups lost and none named. That subject's groups fail, naming the level it lacks; the others are fitted, as a
    run without an event of a trial type fails alone."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study = make_dataset(tmp_path / "ds", subjects=2, runs=1, sessions=("1", "2"), scans=40, shape=(8, 8, 6))
    for sub in ("01", "02"):
        (study.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(
            "session_id\ttimepoint\nses-1\tpre\nses-2\tpost\n"
        )
    _without_session(study, "02", "2")
    model = default_model("stroop", ["congruent"], sessions=True)
    model["Nodes"][2]["Transformations"] = {
        "Transformer": "pybids-transforms-v1",
        "Instructions": [{"Name": "Factor", "Input": ["timepoint"]}],
    }
    model["Nodes"][2]["Model"] = {"Type": "meta", "X": ["timepoint.post", "timepoint.pre"]}
    model["Nodes"][2]["DummyContrasts"] = {"Contrasts": ["timepoint.post"], "Test": "t"}
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert [(f.node, f.group) for f in result.failures] == [("subject", "sub-02")]
    assert result.failures[0].reason.startswith("sub-02 has no session whose timepoint is 'post'")
    assert list((tmp_path / "out" / "sub-01" / "node-subject").glob("*_stat-effect_statmap.nii.gz"))
