"""voxfit bids: whole studies from synthetic BIDS datasets with fMRIPrep-style derivatives, run -> subject ->
dataset, checked against voxfit's own first-level, fixed-effects and group fits on the same maps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

pytest.importorskip("bids")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402

SPACE = "MNI152NLin2009cAsym"


def _study(tmp, **kw):
    study = make_dataset(tmp / "ds", **kw)
    return study, ["--derivatives", str(study.derivatives)]


def _events_file(study, subject: str, run: int = 1) -> Path:
    """The raw events file of a run of make_dataset's stroop task."""
    return study.root / f"sub-{subject}" / "func" / f"sub-{subject}_task-stroop_run-{run}_events.tsv"


def _maps(path):
    import nibabel as nib

    img = nib.load(str(path))
    if isinstance(img, nib.GiftiImage):
        return np.vstack([d.data for d in img.darrays]).ravel()
    return np.asarray(img.get_fdata()).ravel(order="F")  # (voxfit's maskers flatten volumes in Fortran order)


def _schema_valid(folder: Path) -> int:
    from voxfit.models.record import schema

    records = list(folder.rglob("*model.json"))
    for path in records:
        errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(json.loads(path.read_text())))
        assert not errors, f"{path}: {errors[0].message}"
    return len(records)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bids")
    study, deriv = _study(tmp)
    out = tmp / "out"
    code = main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet"])
    return study, out, code


def test_default_model_end_to_end_on_volumes(volumes):
    study, out, code = volumes
    assert code == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "voxfit"
    assert list(out.glob("model-*_smdl.json"))
    run_dir = out / "sub-01" / "node-run"
    stem = f"sub-01_task-stroop_run-1_space-{SPACE}"
    for stat in ("effect", "variance", "t", "p", "z"):
        assert (run_dir / f"{stem}_contrast-congruent_stat-{stat}_statmap.nii.gz").is_file()
    assert (run_dir / f"{stem}_design.tsv").is_file()
    assert (out / "sub-03" / "node-subject" / "sub-03_contrast-incongruent_stat-z_statmap.nii.gz").is_file()
    z = _maps(out / "sub-03" / "node-subject" / "sub-03_contrast-incongruent_stat-z_statmap.nii.gz")
    assert np.nanmax(z) > 5  # the synthetic blob is found in each subject
    assert _schema_valid(out) == 6 + 6 + 2
    assert not list(out.rglob(".voxfit-partial-*"))


def test_run_level_equals_voxfit_fit_on_the_same_run(volumes):
    from voxfit.models.glm import fit_images

    study, out, _ = volumes
    run_dir = out / "sub-02" / "node-run"
    stem = f"sub-02_task-stroop_run-2_space-{SPACE}"
    bold = study.derivatives / "sub-02" / "func" / f"{stem}_desc-preproc_bold.nii.gz"
    mask = study.derivatives / "sub-02" / "func" / f"{stem}_desc-brain_mask.nii.gz"
    settings = json.loads((run_dir / f"{stem}_model.json").read_text())["settings"]
    noise = settings["noise_model"]
    assert noise == "ar1+lags"  # the fMRI default for a run of 40 scans (models._routing.fmri_noise)
    assert set(settings["noise_details"]["long_lags"]["variance_factors"]) == {"congruent", "incongruent"}
    assert settings["noise_details"]["contrast_variance"].startswith("sigma^2 = whitened RSS / (n - rank - 1)")
    design = run_dir / f"{stem}_design.tsv"
    ref = fit_images(bold, design, {"congruent": "congruent"}, mask=mask, noise=noise, progress=False)
    z = _maps(run_dir / f"{stem}_contrast-congruent_stat-z_statmap.nii.gz")
    expected = ref.masker.inverse(ref.contrasts["congruent"].z).ravel()
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_subject_level_equals_fixed_effects_on_the_run_maps(volumes):
    from voxfit import mixed_effects

    _, out, _ = volumes
    runs = [out / "sub-01" / "node-run" / f"sub-01_task-stroop_run-{r}_space-{SPACE}" for r in (1, 2)]
    E = np.array([_maps(f"{p}_contrast-congruent_stat-effect_statmap.nii.gz") for p in runs])
    V = np.array([_maps(f"{p}_contrast-congruent_stat-variance_statmap.nii.gz") for p in runs])
    # each run's dof: its AR(1) contrast's per-voxel (Satterthwaite) dof, their median (as voxfit group takes them)
    dof = [json.loads(Path(f"{p}_model.json").read_text())["contrasts"]["congruent"]["dof"]["median"] for p in runs]
    keep = np.isfinite(E).all(0) & np.isfinite(V).all(0) & (V > 0).all(0)
    ref = mixed_effects(np.ones((2, 1)), E[:, keep], V[:, keep], {"c": [1.0]}, model="fixed", first_level_dof=dof)
    got = _maps(out / "sub-01" / "node-subject" / "sub-01_contrast-congruent_stat-t_statmap.nii.gz")[keep]
    np.testing.assert_allclose(got, ref.contrasts["c"].stat, rtol=1e-5, atol=1e-5)


def test_dataset_level_equals_voxfit_group_on_the_subject_maps(volumes):
    from voxfit import SecondLevel

    study, out, _ = volumes
    subj = [out / f"sub-{s}" / "node-subject" / f"sub-{s}_contrast-congruent_stat-" for s in study.subjects]
    ref = SecondLevel(variances=[f"{p}variance_statmap.nii.gz" for p in subj], model="mixed").fit(
        [f"{p}effect_statmap.nii.gz" for p in subj], progress=False
    )
    got = _maps(out / "node-dataset" / "contrast-congruent_stat-z_statmap.nii.gz")
    expected = ref.masker.inverse(ref.parametric["intercept"].z).ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_rerun_skips_unchanged_groups_and_refits_a_changed_run(volumes, tmp_path):
    from voxfit.bids import run

    study, out, _ = volumes
    again = run(study.root, out, derivatives=[study.derivatives], progress=False)
    assert again.ok and all(g.reused for groups in again.nodes.values() for g in groups)
    events = _events_file(study, "02")
    events.write_text(events.read_text())  # rewritten as it was: a new modification time, the same contents
    touched = run(study.root, out, derivatives=[study.derivatives], progress=False)
    assert touched.ok and all(g.reused for groups in touched.nodes.values() for g in groups)
    lines = events.read_text().splitlines()
    first = lines[1].split("\t")
    lines[1] = "\t".join([str(float(first[0]) + 1.0), *first[1:]])  # one onset moved by a second
    events.write_text("\n".join(lines) + "\n")
    third = run(study.root, out, derivatives=[study.derivatives], progress=False)
    refit = {(g.name, dict(g.entities).get("subject")) for gs in third.nodes.values() for g in gs if not g.reused}
    assert ("run", "02") in refit and ("subject", "02") in refit and ("subject", "01") not in refit
    assert ("dataset", None) in refit
    assert sum(1 for g in third.nodes["run"] if not g.reused) == 1


def test_a_map_copied_over_a_groups_after_the_study_is_refitted_not_passed_on(volumes):
    """sub-02's subject effect map copied over sub-01's after the study: a rerun took sub-01's group as unchanged
    (its record and files there) and refitted the dataset group from the copy, sub-01 and sub-02 the same map, with
    nothing said. The group's record holds its maps' digests: the group is refitted, and the dataset's inputs are
    sub-01's own map again."""
    import shutil

    from voxfit.bids import run

    study, out, _ = volumes
    assert run(study.root, out, derivatives=[study.derivatives], progress=False).ok  # (as the study is now)
    effects = sorted(out.glob("sub-0*/node-subject/*contrast-congruent_stat-effect_statmap.nii.gz"))
    original = effects[0].read_bytes()
    shutil.copy(effects[1], effects[0])
    again = run(study.root, out, derivatives=[study.derivatives], progress=False)
    refit = {(g.name, dict(g.entities).get("subject")) for gs in again.nodes.values() for g in gs if not g.reused}
    assert again.ok and ("subject", "01") in refit and ("subject", "02") not in refit and ("dataset", None) in refit
    assert effects[0].read_bytes() == original
    record = json.loads(next(out.glob("node-dataset/*congruent_model.json")).read_text())
    digests = {Path(i["path"]).name: i["blake3"] for i in record["inputs"]}
    assert len(set(digests.values())) == len(digests)  # (each subject's map its own)


def test_an_unchanged_rerun_is_decided_without_pybids(volumes):
    """A rerun of an unchanged, complete study is answered from the dataset's file stamps and the last study's
    records (OUT_DIR/.voxfit/study.json): pybids is not even imported, no design is built."""
    study, out, _ = volumes
    code = (
        "import sys, time; t = time.perf_counter(); from voxfit.cli import main; "
        f"rc = main(['bids', {str(study.root)!r}, {str(out)!r}, 'dataset', '--derivatives', "
        f"{str(study.derivatives)!r}, '--quiet']); "
        "print(rc, 'bids' in sys.modules, f'{time.perf_counter() - t:.3f}')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for _ in range(2):  # (the first call may find the study changed by the tests before)
        done = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    rc, imported, seconds = done.stdout.split()
    print(f"unchanged rerun: {seconds} s from importing voxfit.cli to the exit")
    assert rc == "0" and imported == "False"


def test_fsaverage5_hemispheres_stay_apart(tmp_path):
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, space="fsaverage5", vertices=60)
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="dataset", progress=False)
    assert result.ok
    names = {p.name for p in (tmp_path / "out" / "node-dataset").iterdir()}
    assert {
        "hemi-L_contrast-congruent_stat-z_statmap.func.gii",
        "hemi-R_contrast-congruent_stat-z_statmap.func.gii",
    } <= names
    assert len(_maps(tmp_path / "out" / "node-dataset" / "hemi-L_contrast-congruent_stat-t_statmap.func.gii")) == 60


def test_fslr_cifti_with_sessions(tmp_path):
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, space="fsLR", sessions=("a", "b"), vertices=40)
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="subject", progress=False)
    assert result.ok and set(result.nodes) == {"run", "session", "subject"}
    assert (
        tmp_path / "out/sub-01/ses-b/node-session/sub-01_ses-b_contrast-congruent_stat-t_statmap.dscalar.nii"
    ).exists() or list((tmp_path / "out/sub-01/ses-b/node-session").glob("*contrast-congruent_stat-t_statmap*"))


def _run_model(x, instructions=()):
    return {
        "Name": "columns",
        "BIDSModelVersion": "1.0.0",
        "Input": {"task": ["stroop"]},
        "Nodes": [
            {
                "Level": "Run",
                "Name": "run",
                "GroupBy": ["run", "subject"],
                "Transformations": {
                    "Transformer": "pybids-transforms-v1",
                    "Instructions": [{"Name": "Factor", "Input": ["trial_type"]}, *instructions],
                },
                "Model": {"Type": "glm", "X": x},
                "DummyContrasts": {"Contrasts": ["trial_type.congruent"], "Test": "t"},
            }
        ],
    }


def test_participants_covariate_in_the_dataset_design(tmp_path):
    from voxfit.bids import run

    study, _ = _study(tmp_path, runs=1)  # (3 subjects' ages; one run of each is a subject's map)
    x = ["trial_type.congruent", "trial_type.incongruent", 1]
    model = _run_model(x)
    model["Name"] = "age"
    model["Nodes"][0]["Model"]["HRF"] = {"Variables": x[:2], "Model": "spm"}
    model["Nodes"][0]["DummyContrasts"]["Contrasts"] = x[:2]
    model["Nodes"] += [
        {
            "Level": "Subject",
            "Name": "subject",
            "GroupBy": ["subject", "contrast"],
            "Model": {"Type": "meta", "X": [1]},
            "DummyContrasts": {"Test": "t"},
        },
        {
            "Level": "Dataset",
            "Name": "group",
            "GroupBy": ["contrast"],
            "Model": {"Type": "glm", "X": [1, "age"]},
            "Contrasts": [{"Name": "age", "ConditionList": ["age"], "Weights": [1], "Test": "t"}],
        },
    ]
    result = run(
        study.root, tmp_path / "out", model=model, derivatives=[study.derivatives], group_model="ols", progress=False
    )
    assert result.ok, result.failures
    records = list((tmp_path / "out" / "node-group").glob("*model.json"))
    design = json.loads(records[0].read_text())["design"]
    assert design["columns"] == ["intercept", "age"]
    ages = dict(line.split("\t")[:2] for line in (study.root / "participants.tsv").read_text().splitlines()[1:])
    assert len(design["rows"]) == 3 and ages
    # one age map per incoming contrast (pybids names them after both): the groups' maps stay apart
    t_maps = sorted(p.name for p in (tmp_path / "out" / "node-group").glob("*_stat-t_statmap.nii.gz"))
    assert t_maps == [f"contrast-trialtype{c}congruentage_stat-t_statmap.nii.gz" for c in ("", "in")], t_maps


def _age_model() -> dict:
    """voxfit's default model of the synthetic study, its dataset node regressing on participants.tsv's age."""
    from voxfit.bids.spec import default_model

    model = default_model("stroop", ["congruent", "incongruent"])
    model["Name"] = "age"
    model["Nodes"][-1]["Model"]["X"] = [1, "age"]
    return model


def _with_model(tmp_path, study, deriv, model: dict, capsys, quiet: bool = True) -> tuple[int, str]:
    """`voxfit bids` of `study` to the dataset level with `model` (written as age_smdl.json): (exit status, stderr)."""
    path = tmp_path / "age_smdl.json"
    path.write_text(json.dumps(model))
    args = ["bids", str(study.root), str(tmp_path / "out"), "dataset", *deriv, "--model", str(path)]
    code = main([*args, "--quiet"] if quiet else args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("sub-04\t25", "sub-04\tn/a"), "the design's column 'age' has no number for sub-04 ("),
        (lambda t: t.replace("sub-04\t25", "sub-04\ttwenty"), "the design's column 'age' has no number for sub-04 ("),
        (
            lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("sub-04")) + "\n",
            "sub-04 of the group left",
        ),
        (lambda t: t + "sub-03\t99\tcontrol\n", "names sub-03 (lines 2, 7) more than once"),
        (lambda t: t.replace("participant_id", "Participant_ID", 1), "names its ids 'Participant_ID'"),
        (lambda t: t.replace("\nsub-0", "\nsub-00"), "names sub-001, but the dataset's subject is written otherwise"),
        (lambda t: t.replace("\nsub-03", "\nSUB-03"), "names SUB-03, but the dataset's subject is written otherwise"),
        (lambda t: t.replace("\nsub-03", "\n3.0"), "names sub-3.0, but the dataset's subject is written otherwise"),
        (lambda t: t.replace("sub-04\t25", "sub-04 \t25"), "line 4: participant_id 'sub-04 ' has spaces around it"),
    ],
    ids=["n/a", "a-word", "no-row", "two-rows", "id-column", "zeros", "case", "number", "space"],
)
def test_a_participants_table_with_gaps_is_refused_not_filled(tmp_path, capsys, edit, message):
    """A covariate of participants.tsv that is n/a or a word for a subject, a subject without a row, a subject
    with two: pybids filled the first with 0 (the fit went on), failed in the fit on the second (exit 1), left the
    third out and took one of the fourth's rows, silently. Each is refused, naming the subject; so are an id
    column not named participant_id (pybids' KeyError 'subject'), ids padded otherwise than the folders
    (a design of rank 0), and an id with a space after it (pybids left that subject out, without a word). Each
    before any run is fitted (the first three were refused by the dataset's group fit, once every run and subject
    was); behind a transformation that keeps every row and gap (Scale, Demean), before any run too (by the group's
    fit before: a tester's); behind one that may leave subjects out (DropNA, Filter), by the group's fit."""
    study, deriv = _study(tmp_path, subjects=5, runs=1, scans=40, shape=(10, 10, 8))
    table = study.root / "participants.tsv"
    assert "sub-04\t25" in table.read_text() and table.read_text().splitlines()[1].startswith("sub-03")
    table.write_text(edit(table.read_text()))
    code, err = _with_model(tmp_path, study, deriv, _age_model(), capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert all(line.startswith("voxfit: ") for line in err.splitlines()), err
    assert not (tmp_path / "out").exists()
    if "sub-04\tn/a" in table.read_text():  # (a word makes the column categorical: pybids' Scale refuses it)
        model = _age_model()
        model["Nodes"][-1]["Transformations"] = {
            "Transformer": "pybids-transforms-v1",
            "Instructions": [{"Name": "Scale", "Input": ["age"], "Demean": True, "Rescale": False}],
        }
        code, err = _with_model(tmp_path, study, deriv, model, capsys)
        assert code == 2 and message in err and "node dataset" in err and not (tmp_path / "out").exists(), err
        model["Nodes"][-1]["Transformations"]["Instructions"].insert(0, {"Name": "DropNA", "Input": ["group"]})
        code, err = _with_model(tmp_path, study, deriv, model, capsys)
        assert code == 2 and message in err and "node dataset" in err and (tmp_path / "out").exists(), err
        model = _age_model()  # (an Edge's Filter above the dataset leaves sub-04 out: nothing to refuse)
        model["Edges"][0]["Filter"] = {"subject": ["01", "02", "03", "05"]}
        code, err = _with_model(tmp_path, study, deriv, model, capsys)
        assert code == 0, err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("participant_id\tage\tgroup\nsub-01\t30\tcontr\u00f4l\n".encode("latin-1"), "is not UTF-8 text (byte 0xf4"),
        ("participant_id\tage\nsub-01\t30\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"", "is empty; pybids reads it for the Dataset node"),
        (b"participant_id age group\nsub-01 30 control\n", "no participant_id column (its columns are not separated"),
        (b"id\tage\nsub-01\t30\n", "no participant_id column (its first line is its header)"),
        (b"participant_id \tage\nsub-01\t30\n", "names its ids column 'participant_id ', with spaces"),
        (b'participant_id\tage\tnote\nsub-01\t30\t"late\nsub-02\t31\tok\n', "no quote closes: remove it, or"),
    ],
    ids=["latin-1", "utf-16", "empty", "spaces", "no-ids", "padded-ids", "quote"],
)
def test_a_participants_table_pybids_cannot_read_is_refused_before_any_fit(tmp_path, capsys, content, message):
    """pybids reads participants.tsv for every Dataset node, whatever its model takes of it: a table in Latin-1 or
    UTF-16, empty, separated by spaces or without participant_id failed the dataset node once every run and
    subject was fitted, said as "the events or confounds tables" (a tester's). Refused at once, with the default
    model too; a study that stops below the dataset level does not read it."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(6, 6, 4))
    (study.root / "participants.tsv").write_bytes(content)
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "participants.tsv " in err and message in err, err
    assert not out.exists()
    if not content:  # (the table is not read below the dataset level: one case fitted, each a second)
        assert main(["bids", str(study.root), str(out), "subject", *deriv, "--quiet"]) == 0


def test_a_covariate_of_a_dataset_without_participants_tsv_is_refused_naming_the_table(tmp_path, capsys):
    """A Dataset node's Model.X naming age where the dataset has no participants.tsv: pybids' "not found in data
    matrix", once every run and subject was fitted, named no table (a tester's). Refused at once, saying where
    pybids looks for it; the default model, which takes no column, is fitted without the table."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(6, 6, 4))
    (study.root / "participants.tsv").unlink()
    code, err = _with_model(tmp_path, study, deriv, _age_model(), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert 'node dataset: Model.X names "age", which pybids looks for in participants.tsv, and the dataset' in err
    assert not (tmp_path / "out").exists()
    assert main(["bids", str(study.root), str(tmp_path / "out"), "dataset", *deriv, "--quiet"]) == 0


def test_a_broken_run_fails_alone(tmp_path, capsys):
    """Run-2 of sub-02 without its events, of sub-03 with confounds three rows short, of sub-04 with a StartTime
    beyond the TR (not a time slice-timing correction shifts scans to): each fails alone, one line each naming its
    run (and the file, where one is to blame), and its subject node is built from the subject's other run; sub-01,
    whole, is fitted. (One study of the three, where each was a study of its own of two subjects.)"""
    study, deriv = _study(tmp_path, subjects=4)
    stem = "task-stroop_run-2"
    broken = {
        "events": study.root / "sub-02" / "func" / f"sub-02_{stem}_events.tsv",
        "confounds": study.derivatives / "sub-03" / "func" / f"sub-03_{stem}_desc-confounds_timeseries.tsv",
        "start-time": study.derivatives / "sub-04" / "func" / f"sub-04_{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
    }
    broken["events"].unlink()
    bad = broken["confounds"]
    bad.write_text("\n".join(bad.read_text().splitlines()[:-3]) + "\n")
    sidecar = Path(str(broken["start-time"]).replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "StartTime": 2.5}))
    code = main(["bids", str(study.root), str(tmp_path / "out"), "subject", *deriv, "--quiet"])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("voxfit: failed:")]
    assert code == 2 and len(failed) == 3, failed
    for (breakage, bad), subject in zip(broken.items(), ("02", "03", "04")):
        (line,) = [line for line in failed if f"sub-{subject}" in line]
        assert "run-2" in line and "node run" in line, (breakage, line)
        assert str(bad) in line if breakage in ("confounds", "start-time") else "events" in line, (breakage, line)
        assert "StartTime (2.5)" in line if breakage == "start-time" else True
        assert (tmp_path / "out" / f"sub-{subject}" / "node-subject").is_dir()  # (from its other run)
    assert (tmp_path / "out" / "sub-01" / "node-subject").is_dir()


def test_runs_without_a_repetition_time_fail_in_one_line(tmp_path, capsys):
    """Every run without a TR: nothing to fit, one line naming the first run and the fix (the "tr" case of
    test_a_broken_run_fails_alone before its other cases were one study)."""
    study, deriv = _study(tmp_path, subjects=2)
    for sidecar in (study.root / "task-stroop_bold.json", *study.derivatives.rglob("*_bold.json")):
        content = json.loads(sidecar.read_text())
        content.pop("RepetitionTime", None)
        sidecar.write_text(json.dumps(content))
    code = main(["bids", str(study.root), str(tmp_path / "out"), "subject", *deriv, "--quiet"])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("voxfit: failed:")]
    assert code == 2
    assert not failed and "RepetitionTime is missing from every sidecar" in err and "sub-01" in err


def test_a_run_rewritten_while_the_study_reads_it_fails_alone(tmp_path, capsys, monkeypatch):
    """A run's preprocessed BOLD that another program rewrites once the study has read it (in place, its size kept):
    that run fails, said in one line naming the file, and writes no record describing another file than the one
    fitted; the other subjects' runs are fitted."""
    import threading

    import voxfit.io.geometry

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(6, 6, 5))
    bold = next(study.derivatives.rglob("sub-01_*desc-preproc_bold.nii.gz"))
    save_nifti, lock, changed = voxfit.io.geometry.save_nifti, threading.Lock(), []

    def rewritten(img, path):  # (the first map written: the run's data have been read)
        with lock:
            if not changed:
                changed.append(bold.stat().st_mtime_ns)
                bold.write_bytes(bold.read_bytes())  # (the same bytes, written again: its time is not what was read)
                os.utime(bold, ns=(changed[0], changed[0] + 1_000_000))
        return save_nifti(img, path)

    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", rewritten)
    out = tmp_path / "out"
    code = main(["bids", str(study.root), str(out), "run", *deriv, "--quiet", "--n-jobs", "1"])
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("voxfit: failed:")]
    assert code == 2 and len(failed) == 1, failed
    assert "sub-01" in failed[0] and f"{bold} was written to, replaced or removed while this run read it" in failed[0]
    assert not list(out.glob("sub-01/**/*model.json"))
    assert list((out / "sub-02" / "node-run").glob("*model.json"))


def test_a_group_that_cannot_be_written_fails_alone(tmp_path, capsys):
    # groups are written on a thread while the next one fits: a write's error is still that group's failure,
    # the others are written, and the dataset level goes on without it
    study, deriv = _study(tmp_path, subjects=3)
    out = tmp_path / "out"
    (out / "sub-02").mkdir(parents=True)
    (out / "sub-02" / "node-subject").write_text("a file where the subject's folder goes\n")
    # (--force: a folder holding no voxfit study is written into only when asked)
    code = main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet", "--force"])
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("voxfit: failed:")]
    assert code == 2
    assert failed and all("sub-02" in line and "node subject" in line for line in failed), failed
    assert all("cannot write" in line or "not a folder" in line for line in failed), failed
    for subject in ("01", "03"):
        assert len(list((out / f"sub-{subject}" / "node-subject").glob("*_stat-z_statmap.nii.gz"))) == 2
    records = sorted((out / "node-dataset").glob("*model.json"))
    assert records
    for record in records:
        bids = json.loads(record.read_text())["settings"]["bids"]
        assert bids["subjects_used"] == ["01", "03"] and "02" in bids["subjects_left_out"], bids


def test_cli_exit_codes_for_bad_arguments(tmp_path, capsys):
    study, deriv = _study(tmp_path, subjects=1, runs=1)
    assert main(["bids", str(study.root), str(tmp_path / "o"), "dataset", *deriv, "--participant-label", "09"]) == 2
    assert "participant label 09" in capsys.readouterr().err
    assert main(["bids", str(study.root), str(tmp_path / "o"), "run", *deriv, "--space", "T1w"]) == 2
    assert "space" in capsys.readouterr().err
    assert main(["bids", str(study.root), str(tmp_path / "o"), "run", *deriv, "--task", "nback"]) == 2
    assert "no preprocessed BOLD run of task 'nback' in the derivatives (their tasks: stroop); check --task" in (
        capsys.readouterr().err
    )
    # (a typo beside --space was said as a space missing: "spaces found: none", a tester's)
    space = ["--space", SPACE]
    assert main(["bids", str(study.root), str(tmp_path / "o"), "run", *deriv, *space, "--task", "stroo"]) == 2
    assert "of task 'stroo' in the derivatives (their tasks: stroop); did you mean --task stroop?" in (
        capsys.readouterr().err
    )
    # (a level the model has no node of: it fitted the levels below and exited 0)
    assert main(["bids", str(study.root), str(tmp_path / "o"), "session", *deriv]) == 2
    assert "the analysis level session has no node in the model (its levels: run, subject, dataset)" in (
        capsys.readouterr().err
    )


def test_the_index_is_built_without_a_disk_wait_per_commit_and_other_databases_keep_theirs(tmp_path, monkeypatch):
    """pybids' index is built with SQLite's syncing off on its files' connections (the dataset's and the
    derivatives folder's; each file synced once at the end): a connection another database opens during the
    build, and every connection after it, keeps SQLite's default (FULL), also after a build that failed; the index
    is whole. Builds in threads beside a thread connecting to another database break none of its connects (a
    listener added and removed at each build failed them: SQLAlchemy iterates its listeners unlocked)."""
    import sqlite3
    import threading

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from voxfit.bids import layout as bids_layout

    study, _ = _study(tmp_path, subjects=1, runs=1)
    other = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}", poolclass=NullPool)

    def synchronous(engine) -> int:
        with engine.connect() as c:
            return c.exec_driver_sql("PRAGMA synchronous").scalar()

    seen = {}
    real = bids_layout._layout

    def spying(*args, **kwargs):
        seen["other, during"] = synchronous(other)
        built = real(*args, **kwargs)
        seen["index, during"] = synchronous(built.connection_manager.engine)
        (derivatives,) = built.derivatives.values()
        seen["derivatives, during"] = synchronous(derivatives.connection_manager.engine)
        return built

    monkeypatch.setattr(bids_layout, "_layout", spying)
    layout = bids_layout.index(study.root, [study.derivatives], database=tmp_path / "db")
    seen["index, after"] = synchronous(layout.connection_manager.engine)
    seen["other, after"] = synchronous(other)
    assert seen == {
        "other, during": 2,
        "index, during": 0,
        "derivatives, during": 0,
        "index, after": 2,
        "other, after": 2,
    }
    assert len(bids_layout.find_runs(layout)) == 1
    databases = list((tmp_path / "db").rglob("layout_index.sqlite"))
    assert len(databases) == 2
    assert all(sqlite3.connect(d).execute("PRAGMA integrity_check").fetchall() == [("ok",)] for d in databases)
    bids_layout.release_index(layout)

    def failing(*args, **kwargs):
        raise OSError("the disk is full")

    monkeypatch.setattr(bids_layout, "_layout", failing)
    (study.root / "README").write_text("changed")  # (a new fingerprint: built again)
    with pytest.raises(OSError):
        bids_layout.index(study.root, [study.derivatives], database=tmp_path / "db")
    assert synchronous(other) == 2
    monkeypatch.setattr(bids_layout, "_layout", real)

    errors, done = [], threading.Event()

    def building(k: int) -> None:
        for i in range(3):
            (study.root / "README").write_text(f"build {k} {i}")
            try:
                layout = bids_layout.index(study.root, [study.derivatives], database=tmp_path / f"db{k}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc))
            else:
                bids_layout.release_index(layout)

    def connecting() -> None:
        while not done.is_set():
            try:
                synchronous(other)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc))

    builders = [threading.Thread(target=building, args=(k,)) for k in range(2)]
    user = threading.Thread(target=connecting)
    for t in (user, *builders):
        t.start()
    for t in builders:
        t.join()
    done.set()
    user.join()
    assert not errors, errors[:3]


def test_cached_index_is_rebuilt_when_a_file_changes(tmp_path):
    from voxfit.bids.layout import find_runs, index, release_index

    study, _ = _study(tmp_path, subjects=1, runs=1)
    db = tmp_path / "db"
    count = (  # in processes of their own, as studies: their layouts (which pybids keeps) and locks end with them
        "import sys; from voxfit.bids.layout import find_runs, index; "
        f"print(len(find_runs(index({str(study.root)!r}, [{str(study.derivatives)!r}], database={str(db)!r}))))"
    )
    assert subprocess.run([sys.executable, "-c", count], capture_output=True, text=True).stdout.strip() == "1"
    (first,) = (p for p in db.iterdir() if p.is_dir())
    built = (first / "voxfit-fingerprint.txt").stat().st_mtime_ns
    assert subprocess.run([sys.executable, "-c", count], capture_output=True, text=True).stdout.strip() == "1"
    assert [p for p in db.iterdir() if p.is_dir()] == [first]  # reused, not rebuilt
    assert (first / "voxfit-fingerprint.txt").stat().st_mtime_ns == built
    extra = make_dataset(tmp_path / "more", subjects=2, runs=1)
    for f in (extra.root / "sub-02").rglob("*"):
        target = study.root / f.relative_to(extra.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.is_file():
            target.write_bytes(f.read_bytes())
    for f in (extra.derivatives / "sub-02").rglob("*"):
        target = study.derivatives / f.relative_to(extra.derivatives)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.is_file():
            target.write_bytes(f.read_bytes())
    old = (first / "voxfit-fingerprint.txt").stat().st_mtime - 120
    os.utime(first / "voxfit-fingerprint.txt", (old, old))  # (built two minutes ago: one just built is kept)
    layout = index(study.root, [study.derivatives], database=db)
    runs = find_runs(layout)
    release_index(layout)
    assert {dict(r.entities)["subject"] for r in runs} == {"01", "02"}
    folders = [p for p in db.iterdir() if p.is_dir()]
    assert first not in folders and len(folders) == 1  # (the old index: no study reads it; its lock file stays)


def test_import_voxfit_does_not_import_pybids():
    code = "import sys, voxfit, voxfit.bids; assert 'bids' not in sys.modules and 'bids.layout' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_confounds_columns_named_by_the_model_through_patterns_and_transformations(tmp_path):
    """pybids reads only the confounds columns the run node names (whole, in an expression, by a pattern):
    the design holds exactly those the model asks for."""
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=1, runs=1)
    scaled = {"Name": "Copy", "Input": ["framewise_displacement"], "Output": ["fd_z"]}
    x = ["trial_type.congruent", "rot_*", "fd_z", "csf", 1]
    result = run(
        study.root,
        tmp_path / "out",
        model=_run_model(x, [scaled]),
        derivatives=[study.derivatives],
        level="run",
        progress=False,
    )
    assert result.ok, result.failures
    design = next((tmp_path / "out" / "sub-01" / "node-run").glob("*_design.tsv"))
    columns = design.read_text().splitlines()[0].split("\t")
    assert {"rot_x", "rot_y_power2", "rot_z_derivative1", "fd_z", "csf"} <= set(columns)
    rotations = [c for c in columns if c.startswith("rot_")]  # (in their names' order: pybids' came shuffled)
    assert len(rotations) == 9 and rotations == sorted(rotations), rotations
    assert not {"trans_x", "trans_x_power2", "global_signal", "framewise_displacement"} & set(columns)
    table = next(study.derivatives.glob("sub-01/func/*_desc-confounds_timeseries.tsv"))
    confounds = np.loadtxt(table, delimiter="\t", skiprows=1, usecols=[0])  # (n/a-free: the first column)
    assert confounds.size == len(design.read_text().splitlines()) - 1


def test_a_misspelled_confound_is_named_with_the_columns_not_read(tmp_path, capsys):
    study, deriv = _study(tmp_path, subjects=1, runs=1)
    model = tmp_path / "model-misspelled_smdl.json"
    model.write_text(json.dumps(_run_model(["trial_type.congruent", "global_signl", 1])))
    code = main(["bids", str(study.root), str(tmp_path / "out"), "run", *deriv, "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert 'Model.X names "global_signl"' in err and "global_signal" in err and "trans_x" in err


def test_named_columns_reads_words_of_expressions_and_patterns(tmp_path):
    from voxfit.bids.study import _named_columns

    table = tmp_path / "confounds.tsv"
    table.write_text("trans_x\ttrans_y\ta_comp_cor_00\ta_comp_cor_01\tframewise_displacement\tcsf\n1\t2\t3\t4\t5\t6\n")
    spec = {
        "Model": {"X": ["a_comp_cor_*", 1]},
        "Transformations": {
            "Instructions": [{"Name": "Filter", "Input": ["x"], "Query": "framewise_displacement>0.5"}]
        },
    }
    used, unloaded = _named_columns(spec, [table])
    assert used == ["a_comp_cor_00", "a_comp_cor_01", "framewise_displacement"]
    assert unloaded == ("trans_x", "trans_y", "csf")


def test_scans_are_sampled_at_fmriprep_start_time(tmp_path):
    """fMRIPrep's StartTime (slice-timing correction's reference) sets where each scan samples the design: the
    run design equals make_design's at StartTime / TR (nilearn's grid), and on SPM's grid the microtime bin
    that holds it; the record says where it came from."""
    from voxfit.bids.run_design import _Problem, _sampling
    from voxfit.design import make_design

    study, deriv = _study(tmp_path, subjects=1, runs=1)
    model = tmp_path / "model-starttime_smdl.json"
    x = ["trial_type.congruent", "trial_type.incongruent", 1]
    spec = _run_model(x)
    spec["Nodes"][0]["Model"]["HRF"] = {"Variables": x[:2], "Model": "glover"}
    model.write_text(json.dumps(spec))
    out = tmp_path / "out"
    argv = ["bids", str(study.root), str(out), "run", *deriv, "--model", str(model), "--quiet"]
    assert main([*argv, "--convolution", "nilearn", "--noise", "ols"]) == 0
    run_dir = out / "sub-01" / "node-run"
    design = np.loadtxt(next(run_dir.glob("*_design.tsv")), delimiter="\t", skiprows=1)
    record = json.loads(next(run_dir.glob("*_model.json")).read_text())["settings"]["bids"]["design"]
    assert record["slice_time_ref"] == 0.4375 and "StartTime" in record["slice_time_from"]
    events = next(study.root.glob("sub-01/func/*_events.tsv"))
    expected = make_design(
        events, 2.0, study.scans, hrf="glover", drift="none", convolution="nilearn", slice_time_ref=0.4375
    )
    np.testing.assert_allclose(design[:, :2], expected.X[:, :2], atol=1e-5)

    def spm(s):
        return _sampling(_Problem({}, "", "", 2.0, 10, "spm", s, 128.0, "model"))

    assert spm(0.4375) == {"microtime_resolution": 16, "microtime_onset": 8}
    assert spm(0.4875) == {"microtime_resolution": 80, "microtime_onset": 40}  # 0.975 s of a 2 s TR
    assert spm(0.0) == {"microtime_resolution": 16, "microtime_onset": 1}
    assert spm(None) == {"slice_time_ref": None}


def test_fmriprep_layouts_old_confounds_name_and_several_resolutions(tmp_path, capsys):
    """fMRIPrep before 20.2 named the table ``desc-confounds_regressors.tsv``; with several ``--output-spaces``
    resolutions of one space a run is there twice: refused in one line naming them, and chosen with fMRIPrep's
    ``--space NAME:res-N`` notation (``res-native``: the files without one)."""
    import shutil

    study, deriv = _study(tmp_path, subjects=1, runs=2)
    for table in study.derivatives.rglob("*_desc-confounds_timeseries.*"):
        table.rename(str(table).replace("_timeseries.", "_regressors."))
    for f in list(study.derivatives.glob(f"sub-01/func/*_space-{SPACE}_*")):
        shutil.copy(f, str(f).replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_"))
    argv = ["bids", str(study.root), str(tmp_path / "out"), "run", *deriv, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{SPACE}:res-2, {SPACE}:res-native" in err and "--space" in err
    assert main([*argv, "--space", f"{SPACE}:res-bogus"]) == 2  # (the grids found named, the one asked too)
    said = capsys.readouterr().err  # (the files without res- as --space takes them: res-native)
    assert f"of space {SPACE}:res-bogus in the derivatives: its runs are at {SPACE}:res-2, {SPACE}:res-native;" in said
    assert main([*argv, "--space", f"{SPACE}:cohort-1"]) == 2
    assert "not a resolution or density qualifier" in capsys.readouterr().err
    assert main([*argv, "--space", f"{SPACE}:res-2"]) == 0
    records = sorted((tmp_path / "out" / "sub-01" / "node-run").glob("*_model.json"))
    assert [p.name for p in records] == [f"sub-01_task-stroop_run-{r}_space-{SPACE}_res-2_model.json" for r in (1, 2)]
    inputs = json.loads(records[0].read_text())["inputs"]
    paths = [str(i.get("path")) for i in inputs]
    assert any("_res-2_desc-brain_mask" in p for p in paths) and any("confounds_regressors" in p for p in paths)
    # a run fMRIPrep wrote at res-native only: its failure names the resolution it has (it said "rerun fMRIPrep")
    for f in study.derivatives.glob(f"sub-01/func/*run-2_space-{SPACE}_res-2_*"):
        f.unlink()
    assert main([*argv, "--space", f"{SPACE}:res-2", "--force"]) == 2
    failed = [line for line in capsys.readouterr().err.splitlines() if "run-2" in line]
    assert failed and f"no preprocessed BOLD run in the derivatives at {SPACE}:res-2, only at {SPACE};" in failed[0]


def test_many_ar_runs_load_the_compiled_kernels_at_once_and_ols_runs_do_not(tmp_path, monkeypatch):
    """Eight or more runs fitted one by one with an AR model (a dof per voxel) start loading numba's kernels as
    the first run is read, for the compiled t -> z and AR fit; OLS runs (one dof per map) do not."""
    from voxfit.core import _kernels

    asked = []
    monkeypatch.setattr(_kernels, "compile_in_background", lambda ar=False: asked.append(ar))
    study, deriv = _study(tmp_path, subjects=4, runs=2)
    for noise, expected in (("ols", []), ("ar1", [True]), (None, [True, True])):  # None: the default, AR(p)
        out = tmp_path / str(noise)
        chosen = [] if noise is None else ["--noise", noise]
        argv = ["bids", str(study.root), str(out), "run", *deriv, *chosen, "--n-jobs", "1", "--quiet"]
        assert main(argv) == 0
        assert asked == expected


def test_runs_are_written_here_while_the_next_run_is_still_read():
    """A fitted run is written on a side thread when the next run's data are ready (the fits are then the
    bottleneck), and at once on the fitting thread while they are still being read (the side threads are)."""
    import threading
    from concurrent.futures import Future

    from voxfit.bids.study import _Writer

    writer = _Writer()
    reading, read = Future(), Future()
    read.set_result(None)
    where = []
    for next_read in (reading, read, None):
        writer.next_read = next_read
        writer.submit(lambda: where.append(threading.current_thread() is threading.main_thread())).result(5)
    assert where == [True, False, False]


def test_a_subject_without_sessions_beside_subjects_with_them_is_fitted_once(tmp_path, capsys):
    """pybids puts an input that lacks a grouping entity into the group of every value the others have: a
    subject without sessions had its runs combined once per session of the others (ses-a and ses-b, alike),
    then counted twice at the subject level. Its runs now make one session group of their own."""
    import shutil

    study, deriv = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(10, 10, 8), sessions=("a", "b"))
    for base in (study.root, study.derivatives):  # sub-02: one unnamed session
        sub = base / "sub-02"
        shutil.rmtree(sub / "ses-b")
        (sub / "ses-a" / "func").rename(sub / "func")
        (sub / "ses-a").rmdir()
        for f in (sub / "func").iterdir():
            f.rename(f.with_name(f.name.replace("_ses-a", "")))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "sub-02").iterdir()) == ["node-run", "node-session", "node-subject"]
    assert sorted(p.name for p in (out / "sub-01").iterdir()) == ["node-subject", "ses-a", "ses-b"]
    for subject, inputs in (("01", 2), ("02", 1)):  # (the subject node's inputs: its sessions' maps)
        record = json.loads(next((out / f"sub-{subject}" / "node-subject").glob("*congruent_model.json")).read_text())
        assert record["design"]["n_rows"] == inputs
    session = json.loads(next((out / "sub-02" / "node-session").glob("*congruent_model.json")).read_text())
    assert session["design"]["n_rows"] == 2  # (its two runs)


def test_the_default_model_takes_each_runs_own_trial_types(tmp_path, capsys):
    """voxfit's default model names the trial types of every run; a run without one of them (error trials,
    misses: common) failed ("Model.X names "neutral", but the run has no variable"), and so did every run of a
    dataset whose trial types are numeric codes (BIDS's trial_type is a label; pybids reads 1, 2 as numbers).
    Now each run's design has its own conditions, and a condition is estimated from the runs that have it; the
    runs without one say so in a note, as a model's runs without one of its trial types do (a tester's)."""
    study, deriv = _study(tmp_path, subjects=2, runs=2, scans=40, shape=(10, 10, 8))
    for subject in ("01", "02"):
        for run_ in (1, 2):
            events = _events_file(study, subject, run_)
            text = events.read_text().replace("\tincongruent\t", "\t2\t").replace("\tcongruent\t", "\t1\t")
            events.write_text(text + ("70\t2\t3\t0.5\n" if run_ == 1 else ""))  # (condition 3: first runs only)
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet"]) == 0, capsys.readouterr().err
    for subject in ("01", "02"):
        designs = sorted((out / f"sub-{subject}" / "node-run").glob("*_design.tsv"))
        assert [d.read_text().splitlines()[0].split("\t")[:3] for d in designs] == [
            ["1", "2", "3"],
            ["1", "2", "drift_1"],
        ]
        rows = {}
        for c in ("1", "3"):
            record = next((out / f"sub-{subject}" / "node-subject").glob(f"*_contrast-{c}_model.json"))
            rows[c] = json.loads(record.read_text())["design"]["n_rows"]
        assert rows == {"1": 2, "3": 1}
        (second,) = (out / f"sub-{subject}" / "node-run").glob("*run-2*_model.json")
        notes = json.loads(second.read_text())["settings"]["bids"]["notes"]
        assert any(n.startswith('the run has no "3" event: voxfit\'s default model fits it without it') for n in notes)
    assert sorted(p.name for p in (out / "node-dataset").glob("*_stat-z_statmap.nii.gz")) == [
        f"contrast-{c}_stat-z_statmap.nii.gz" for c in ("1", "2", "3")
    ]


def test_the_default_model_takes_a_trial_type_named_as_an_events_column_as_the_trial_type(tmp_path, capsys):
    """ds000001's layout: trial types named as the events' columns of their parametric modulators (trial_type
    pumps_demean beside a column pumps_demean, n/a at the other events). The default model took the column: the
    map labelled pumps_demean held the modulator's effect, exit 0 (a tester's), and a run whose modulator is 0
    throughout failed. Its regressor is now the trial type's, ``trial_type.pumps_demean``: the design's column
    equals the one the same events give with the modulator's column named otherwise."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))

    def rewrite(column: str) -> None:
        for subject in ("01", "02"):
            events = _events_file(study, subject)
            rows = [line.split("\t") for line in events.read_text().splitlines()[1:]]
            lines = [f"onset\tduration\ttrial_type\t{column}"]
            for k, (onset, duration, kind, *_) in enumerate(rows):
                kind = "pumps_demean" if kind == "congruent" else kind
                value = (k % 5 - 2.0 if subject == "01" else 0.0) if kind == "pumps_demean" else "n/a"
                lines.append(f"{onset}\t{duration}\t{kind}\t{value}")
            events.write_text("\n".join(lines) + "\n")

    designs = {}
    for column in ("pumps_demean", "pumps_modulator"):
        rewrite(column)
        out = tmp_path / column
        assert main(["bids", str(study.root), str(out), "dataset", *deriv, "--quiet"]) == 0, capsys.readouterr().err
        designs[column] = [
            np.loadtxt(next((out / f"sub-{s}" / "node-run").glob("*_design.tsv")), delimiter="\t", skiprows=1)
            for s in ("01", "02")
        ]
    names = next((tmp_path / "pumps_demean" / "sub-01" / "node-run").glob("*_design.tsv")).read_text().split("\n")[0]
    assert names.split("\t")[:2] == ["incongruent", "trial_type.pumps_demean"], names
    for ours, plain in zip(designs["pumps_demean"], designs["pumps_modulator"]):
        np.testing.assert_array_equal(ours, plain)
    maps = sorted(p.name for p in (tmp_path / "pumps_demean" / "node-dataset").glob("*_stat-z_statmap.nii.gz"))
    assert maps == ["contrast-incongruent_stat-z_statmap.nii.gz", "contrast-trialtypepumpsdemean_stat-z_statmap.nii.gz"]
    # a model naming the plain name takes the column, as BIDS Stats Models read it, and says what to name instead
    from voxfit.bids import run
    from voxfit.bids.spec import default_model
    from voxfit.exceptions import DesignWarning

    rewrite("pumps_demean")
    model = default_model("stroop", ["incongruent", "pumps_demean"])
    with pytest.warns(DesignWarning, match='names "pumps_demean", both an events column and a trial type; the column'):
        done = run(study.root, tmp_path / "model", model=model, level="run", derivatives=[deriv[1]], progress=False)
    assert [f.reason for f in done.failures if "02" in f.group][0].find('"pumps_demean" has no event') > 0
    column = np.loadtxt(next((tmp_path / "model" / "sub-01" / "node-run").glob("*_design.tsv")), skiprows=1)[:, 1]
    assert not np.allclose(column, designs["pumps_demean"][0][:, 1])  # (the modulator's regressor)


def test_a_dataset_group_lists_the_subjects_without_a_map_of_its_contrast(tmp_path):
    """sub-03's runs have no incongruent event: the default model fits its congruent map only, and the dataset
    group of incongruent, fitted on the two others, listed subjects_used [01, 02] and subjects_left_out {} (only
    failures were listed). It now lists sub-03 there, and in its note; the congruent group leaves none out."""
    from voxfit.bids import run

    study, deriv = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(8, 8, 6))
    events = _events_file(study, "03")
    events.write_text("".join(line for line in events.read_text().splitlines(True) if "\tincongruent\t" not in line))
    assert run(study.root, tmp_path / "out", derivatives=[deriv[1]], progress=False, group_model="ols").ok
    records = {
        c: json.loads((tmp_path / "out" / "node-dataset" / f"contrast-{c}_model.json").read_text())["settings"]["bids"]
        for c in ("congruent", "incongruent")
    }
    assert records["incongruent"]["subjects_used"] == ["01", "02"]
    assert list(records["incongruent"]["subjects_left_out"]) == ["03"]
    assert any("left out: 03 (none of its inputs" in n for n in records["incongruent"]["notes"])
    assert records["congruent"]["subjects_used"] == ["01", "02", "03"]
    assert records["congruent"]["subjects_left_out"] == {}


def test_trial_types_whose_labels_clash_are_labelled_alike_whichever_participants_are_chosen(tmp_path):
    """go-left and go_left (both "goleft" as a file label), sub-01 without go-left: a study of sub-01 alone
    labelled its go_left maps goleft, one of every subject goleft2 (a tester's), so that one file name held two
    conditions across the studies of a dataset (the per-participant jobs of a BIDS app, then their group). The
    default model now labels every trial type of the dataset in sorted order, whichever participants are chosen."""
    from voxfit.bids import run

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    for subject in ("01", "02"):
        events = _events_file(study, subject)
        text = events.read_text().replace("\tincongruent\t", "\tgo_left\t")
        left = "go-left" if subject == "02" else "go_left"  # (sub-01 has no go-left)
        events.write_text(text.replace("\tcongruent\t", f"\t{left}\t"))
    labels = {}
    for who, chosen in (("02", ["02"]), ("01", ["01"]), ("all", None)):
        out = tmp_path / who
        kw = {"derivatives": [deriv[1]], "participant_label": chosen, "level": "subject", "progress": False}
        assert run(study.root, out, **kw).ok
        for record in out.glob("sub-*/node-subject/*_model.json"):
            name = json.loads(record.read_text())["settings"]["bids"]["entities"]["contrast"]
            labels.setdefault((record.name[:6], name), set()).add(record.name.split("contrast-")[1].split("_")[0])
    assert labels == {
        ("sub-01", "go_left"): {"goleft2"},
        ("sub-02", "go-left"): {"goleft"},
        ("sub-02", "go_left"): {"goleft2"},
    }, labels
    # every subject after the study of sub-01, into its folder: sub-01's groups are reused (its run was refitted,
    # the study's trial types, in its checksum, being more)
    kw = {"derivatives": [deriv[1]], "level": "subject", "progress": False}
    again = run(study.root, tmp_path / "01", **kw)
    reused = {(g.name, g.label.split("_")[0]): g.reused for gs in again.nodes.values() for g in gs}
    assert reused[("run", "sub-01")] and reused[("subject", "sub-01")] and not reused[("run", "sub-02")], reused


def test_a_trial_type_in_another_case_is_said_to_differ_in_case(tmp_path):
    """Go in some subjects' events and go in others': kept apart, as BIDS keeps values apart, but the note said
    only that a run had no "go" event (the third tester's); it now names the run's "Go" beside it."""
    from voxfit.bids import run

    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(8, 8, 6))
    events = _events_file(study, "02")
    events.write_text(events.read_text().replace("\tcongruent\t", "\tCongruent\t"))
    run(study.root, tmp_path / "out", derivatives=[deriv[1]], level="run", progress=False)
    record = next((tmp_path / "out" / "sub-02" / "node-run").glob("*_model.json"))
    notes = json.loads(record.read_text())["settings"]["bids"]["notes"]
    said = 'no "congruent" event (it has "Congruent" for "congruent": trial types differ in case'
    assert any(said in n for n in notes), notes
    # their files' labels differ in more than case: contrast-Congruent and contrast-congruent, a file system that
    # ignores case (macOS's, Windows') would have kept one of the two
    labels = {p.name.split("contrast-")[1].split("_")[0] for p in (tmp_path / "out").rglob("*contrast-*_stat-t_*")}
    assert {"Congruent", "congruent2"} <= labels and len({label.casefold() for label in labels}) == len(labels), labels


def test_events_without_a_value_left_out_of_a_regressor_are_noted(tmp_path):
    """A response time convolved as amplitudes, n/a at the trials without a response: those events add nothing to
    its regressor, as SPM's and nilearn's zeros would, which the run's record did not say (carried since stop 52)."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    events = _events_file(study, "01")
    lines = events.read_text().splitlines()
    lines[2], lines[4] = lines[2].rsplit("\t", 1)[0] + "\tn/a", lines[4].rsplit("\t", 1)[0] + "\tn/a"
    events.write_text("\n".join(lines) + "\n")
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][0]["Model"]["X"].insert(2, "response_time")
    model["Nodes"][0]["Model"]["HRF"]["Variables"].append("response_time")
    assert run(study.root, tmp_path / "out", model=model, level="run", derivatives=[deriv[1]], progress=False).ok
    record = next((tmp_path / "out" / "sub-01" / "node-run").glob("*_model.json"))
    notes = json.loads(record.read_text())["settings"]["bids"]["notes"]
    assert '2 "response_time" events without a value (n/a) left out of its regressor, as a value of 0 would be' in notes


def test_an_events_column_of_numbers_with_text_names_the_text(tmp_path):
    """A response-time column modelled as amplitudes with "missed" (or a decimal comma) in a few rows was said to
    hold categories, to be Factored (the third tester's): its text is named, with what to write instead."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, deriv = _study(tmp_path, subjects=1, runs=1, scans=40, shape=(8, 8, 6))
    events = _events_file(study, "01")
    lines = events.read_text().splitlines()
    rows = [f"{line}\t{'missed' if k == 2 else 0.4 + 0.01 * k}" for k, line in enumerate(lines[1:])]
    events.write_text("\n".join([lines[0] + "\trt", *rows]) + "\n")
    model = default_model("stroop", ["congruent", "incongruent"])
    model["Nodes"][0]["Model"]["X"].insert(2, "rt")
    model["Nodes"][0]["Model"]["HRF"]["Variables"].append("rt")
    done = run(study.root, tmp_path / "out", model=model, level="run", derivatives=[deriv[1]], progress=False)
    (failure,) = done.failures
    assert "\"rt\" holds numbers and text ('missed'); write n/a for a missing value" in failure.reason, failure.reason


def test_subjects_a_dataset_node_leaves_out_itself_are_not_refused(tmp_path, capsys):
    """A Filter (or DropNA) transformation at the dataset node leaves subjects out on purpose: they have their
    rows in participants.tsv, and the group is fitted without them (not refused as missing rows). (Filter, then
    DropNA into the same folder, its runs and subjects reused, where each was a study of its own.)"""
    study, deriv = _study(tmp_path, subjects=5, runs=1, scans=40, shape=(10, 10, 8))
    for how in ("Filter", "DropNA"):
        model = _age_model()
        instruction = {"Name": "Filter", "Input": ["age"], "Query": "age < 40"} if how == "Filter" else None
        if how == "DropNA":
            table = study.root / "participants.tsv"
            table.write_text(table.read_text().replace("sub-04\t25", "sub-04\tn/a"))
            instruction = {"Name": "DropNA", "Input": ["age"]}
        model["Nodes"][-1]["Transformations"] = {"Transformer": "pybids-transforms-v1", "Instructions": [instruction]}
        code, err = _with_model(tmp_path, study, deriv, model, capsys, quiet=how == "DropNA")
        assert code == 0, (how, err)
        record = json.loads(next((tmp_path / "out" / "node-dataset").glob("*_model.json")).read_text())
        assert record["design"]["n_rows"] == (3 if how == "Filter" else 4), how  # (ages 52 and 45 over 40; n/a)
        # (the mean of each condition beside ages not centred: the model's own remedy named)
        assert how == "DropNA" or "covariate 'age' is not centred" in err and "a Demean transformation of it" in err, (
            err
        )


def test_a_rerun_refits_what_an_earlier_build_made_under_other_rules(tmp_path, monkeypatch):
    """Reuse keys hold voxfit's version and its STUDY_RULES: a study made before a fix to what a study computes
    (grouping, gaps in covariates) is refitted, not reused, by the same command."""
    from voxfit.bids import run, study as study_module

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    first = run(study.root, tmp_path / "out", **kw)
    assert first.ok and not any(g.reused for groups in first.nodes.values() for g in groups)
    again = run(study.root, tmp_path / "out", **kw)
    assert all(g.reused for groups in again.nodes.values() for g in groups)
    monkeypatch.setattr(study_module, "STUDY_RULES", study_module.STUDY_RULES + 1)
    later = run(study.root, tmp_path / "out", **kw)
    assert later.ok and not any(g.reused for groups in later.nodes.values() for g in groups)


def _files(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and ".voxfit" not in p.parts
    }


def test_a_rerun_removes_what_its_model_no_longer_makes_and_keeps_other_participants(tmp_path):
    """As SPM clears an earlier analysis's images from the folder it estimates into, a rerun of the same model
    file removes its groups' maps that it does not write again (a contrast dropped, a node renamed, a run that
    fails now), and only for the participants and levels it fitted: another participant's study into the same
    folder, the dataset level of a study that stops below it, and files of no group stay."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(10, 10, 8))
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "progress": False}
    model = default_model("stroop", ["congruent", "incongruent"])
    assert run(study.root, out, model=model, **kw).ok
    mine = out / "sub-01" / "node-run" / "notes.txt"
    mine.write_text("kept")
    full = _files(out)
    changed = json.loads(json.dumps(model))
    changed["Nodes"][0]["DummyContrasts"]["Contrasts"] = ["congruent"]
    changed["Nodes"][1]["Name"] = "subj"
    changed["Edges"] = [{"Source": "run", "Destination": "subj"}, {"Source": "subj", "Destination": "dataset"}]
    second = run(study.root, out, model=changed, **kw)
    after = _files(out)
    assert second.ok and not [f for f in after if "incongruent" in f or "node-subject" in f]
    gone_groups = [f for f in full if ("incongruent" in f and "node-run" not in f) or "node-subject" in f]
    assert second.removed == len(gone_groups)  # (a run group rewritten drops its own old maps as it is committed)
    assert {f for f in full if "incongruent" not in f and "node-subject" not in f} <= set(after)
    assert mine.read_text() == "kept" and not (out / "sub-01" / "node-subject").exists()
    # sub-01 alone with the first model, up to its subject level: sub-02's, sub-03's and the dataset's stay
    assert run(study.root, out, model=model, level="subject", participant_label=["01"], **kw).ok
    third = _files(out)
    others = ("sub-02", "sub-03", "node-dataset")
    assert {f: t for f, t in third.items() if f.startswith(others)} == {
        f: t for f, t in after.items() if f.startswith(others)
    }
    assert not (out / "sub-01" / "node-subj").exists() and any("sub-01/node-subject" in f for f in third)
    # the whole study at the run level: the subject and dataset levels stay; a run that fails now is removed
    (_events_file(study, "03")).unlink()
    fourth = run(study.root, out, model=model, level="run", **kw)
    assert [f.group for f in fourth.failures] and "sub-03" in fourth.failures[0].group
    left = _files(out)
    assert not [f for f in left if f.startswith("sub-03/node-run")] and not (out / "sub-03" / "node-run").exists()
    assert {f for f in third if "node-run" not in f} <= set(left)


def test_a_dataset_group_refitted_without_some_of_its_subjects_says_whom_it_no_longer_has(tmp_path):
    """A dataset level rerun into the same folder with --participant-label 01 02 replaces the group of three
    subjects (as it must: the group is the one asked for), and says so in a note naming the subject it no longer
    has, where before it was replaced silently; so does one over as many subjects, not the same ones. The note is
    said when the group is refitted, not again when it is reused, and a group refitted over every subject it had
    has none."""
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=3, runs=1, scans=40, shape=(10, 10, 8))
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "progress": False}
    first = run(study.root, out, **kw)
    assert first.ok and not first.notes

    def replaced(result):
        return [(g, n) for g, n in result.notes if "replaces the group" in n]

    fewer = run(study.root, out, participant_label=["01", "02"], **kw)
    said = replaced(fewer)
    assert fewer.ok and said and len(said) == len(fewer.nodes["dataset"])
    assert all(g.level == "dataset" and "of 3 subjects" in n and "without 03 now (2 subjects" in n for g, n in said)
    record = json.loads(next((out / "node-dataset").glob("*congruent_model.json")).read_text())["settings"]["bids"]
    assert record["subjects_used"] == ["01", "02"] and not record["notes"]
    reused = run(study.root, out, participant_label=["01", "02"], **kw)
    assert reused.ok and all(g.reused for g in reused.nodes["dataset"]) and not replaced(reused)
    other = run(study.root, out, participant_label=["01", "03"], **kw)
    assert other.ok and all("without 02 now (2 subjects" in n for _, n in replaced(other)) and replaced(other)
    again = run(study.root, out, **kw)
    assert again.ok and not replaced(again)


def test_a_study_means_its_own_folder_from_any_working_folder(tmp_path, monkeypatch):
    """A study given a relative OUT_DIR, rerun from another working folder, reuses its own groups and reads its own
    maps, never those of a folder of the same name below the new working folder (records name their maps by file
    name, beside them; the manifest holds absolute paths)."""
    import shutil

    import nibabel as nib

    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = run(study.root, "out", **kw)
    out = tmp_path / "a" / "out"
    assert first.ok and first.out_dir == out
    record = next((out / "sub-01" / "node-run").glob("*_model.json"))
    outputs = json.loads(record.read_text())["settings"]["bids"]["outputs"]
    assert all("/" not in o["effect"] and "/" not in o["variance"] for o in outputs.values())
    decoy = tmp_path / "b" / "out"  # the same names below another working folder, other maps
    shutil.copytree(out, decoy)
    for f in decoy.rglob("*_stat-effect_statmap.nii.gz"):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.full(img.shape, 1e3, np.float32), img.affine), f)
    monkeypatch.chdir(tmp_path / "b")
    again = run(study.root, out, **kw)
    assert again.ok and all(g.reused for groups in again.nodes.values() for g in groups)
    (out / ".voxfit" / "study.json").unlink()  # the subject level refits from the runs' maps, which are reused
    for f in (out / "sub-01" / "node-subject").glob("*_model.json"):
        f.write_text(f.read_text().replace('"checksum": "', '"checksum": "changed'))
    refit = run(study.root, out, **kw)
    assert refit.ok and all(g.reused for g in refit.nodes["run"])
    assert not all(g.reused for g in refit.nodes["subject"])
    for f in out.rglob("*_stat-effect_statmap.nii.gz"):
        assert np.nanmax(np.abs(_maps(f))) < 1e2, f


def test_stale_removal_takes_only_its_own_groups(tmp_path):
    """What a rerun never removes: a copy of a node's folder, a node folder that is a link (nor the files behind
    it), a user's file named like a group's maps, the maps it has just written under a grouping that changed, and
    the groups of a study of other runs (--task) or of a model it reused them from. A group rewritten with fewer
    maps drops its own old ones as it is committed, even when the study then stops."""
    import shutil

    from voxfit.bids import run
    from voxfit.bids import study as study_module
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    make_dataset(tmp_path / "ds", subjects=2, runs=1, scans=40, shape=(10, 10, 8), task="nback")
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "progress": False}
    model = default_model(None, ["congruent", "incongruent"])
    model["Name"] = "both"
    assert run(study.root, out, model=model, task="stroop", **kw).ok
    shutil.copytree(out / "sub-01" / "node-run", out / "sub-01" / "node-run-backup")
    shutil.copytree(out / "sub-02" / "node-subject", tmp_path / "elsewhere")
    copies = {name: sorted(p.name for p in (out / name).iterdir()) for name in ("sub-01/node-run-backup",)}
    copies["elsewhere"] = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    (out / "sub-02" / "node-old").symlink_to(tmp_path / "elsewhere")
    mine = next((out / "sub-01" / "node-subject").glob("*congruent_model.json")).name.replace("model.json", "notes.txt")
    (out / "sub-01" / "node-subject" / mine).write_text("mine")
    nback = run(study.root, out, model=model, task="nback", level="run", **kw)
    assert nback.ok and nback.removed == 0
    changed = json.loads(json.dumps(model))
    changed["Nodes"][0]["DummyContrasts"]["Contrasts"] = ["congruent"]
    changed["Nodes"][2]["GroupBy"] = []  # one dataset group for every contrast: its maps keep their names
    again = run(study.root, out, model=changed, task="stroop", **kw)
    assert again.ok and again.removed > 0
    files = _files(out)
    assert not [f for f in files if "incongruent" in f and "stroop" in f and "backup" not in f]
    assert sorted(p.name for p in (out / "sub-01" / "node-run-backup").iterdir()) == copies["sub-01/node-run-backup"]
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == copies["elsewhere"]
    assert any("incongruent" in name for name in copies["elsewhere"])
    assert (out / "sub-01" / "node-subject" / mine).read_text() == "mine"
    assert len([f for f in files if "nback" in f and "node-run" in f and "incongruent" in f]) == 2 * 5
    assert {p.name for p in (out / "node-dataset").glob("contrast-congruent_stat-*")} and (
        out / "node-dataset" / "model.json"
    ).is_file()
    # a run's group rewritten without a contrast, the study stopped before its end: the group is whole and its own
    lost = json.loads(json.dumps(changed))
    lost["Nodes"][0]["DummyContrasts"]["Contrasts"] = ["incongruent"]

    def stop(self):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m:
        m.setattr(study_module._Study, "fit_higher", stop)
        with pytest.raises(KeyboardInterrupt):
            run(study.root, out, model=lost, task="stroop", **kw)
    run_maps = {p.name for p in (out / "sub-01" / "node-run").iterdir() if "stroop" in p.name and "stat" in p.name}
    assert run_maps and all("contrast-incongruent" in name for name in run_maps), run_maps
    from voxfit.exceptions import InputError

    with pytest.raises(InputError, match="holds the study of model 'both'"):  # (one model file for both)
        run(study.root, out, model={**model, "Name": "bo-th"}, task="stroop", **kw)


def test_participant_studies_at_once_into_one_new_folder(tmp_path):
    """A BIDS app's participant-level runs, started together into one new output folder: one builds the dataset's
    index while the other waits for it, and both fit their subjects (they failed on pybids' SQLite before)."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    out = tmp_path / "out"
    base = [sys.executable, "-m", "voxfit", "bids", str(study.root), str(out), "subject", *deriv, "--quiet"]
    procs = [
        subprocess.Popen([*base, "--participant-label", s], stderr=subprocess.PIPE, text=True) for s in ("01", "02")
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    for subject in ("01", "02"):
        assert list((out / f"sub-{subject}" / "node-subject").glob("*_stat-z_statmap.nii.gz"))


@pytest.mark.parametrize("above", ["ses-2", "desc-x", "motion", "x/sub-07/y/../..", "alden-lab", "func"])
def test_a_dataset_below_a_folder_named_like_an_entity_is_refused(tmp_path, capsys, above):
    """pybids reads BIDS entities from whole paths: a dataset kept in a folder ``ses-2`` gave every file session
    2 (output labels of a session that does not exist), ``desc-x`` every derivative desc x, ``motion`` (a
    datatype) every file's datatype, no run then functional (said as pybids' "No functional images", a tester's).
    Refused, naming the folder; a path through such a folder that leaves it again (``..``) is read as the folder
    it means; folders named like entities that choose nothing here (``alden-lab``: den; ``func``) are fitted as
    they are."""
    import shutil

    study, _ = _study(tmp_path / "made", subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    target = tmp_path / above.split("/")[0] / "ds"  # (x/sub-07/y/../.. is x)
    (tmp_path / "x" / "sub-07" / "y").mkdir(parents=True)
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(study.root), str(target))
    given = tmp_path / above / "ds" if "/" in above else target
    deriv = given / "derivatives" / "fmriprep"
    code = main(["bids", str(given), str(tmp_path / "out"), "subject", "--derivatives", str(deriv), "--quiet"])
    err = capsys.readouterr().err
    if above not in ("ses-2", "desc-x", "motion"):  # (den-lab and a func folder choose nothing: fitted as they are)
        assert code == 0, err
        assert (
            not list((tmp_path / "out").rglob("*sub-07*")) and (tmp_path / "out" / "sub-01" / "node-subject").is_dir()
        )
        return
    assert code == 2 and err.count("\n") == 1 and f"({above})" in err and "move the dataset" in err, err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--cluster-threshold", "3.1"],
            "--cluster-threshold is for OLS group models; the dataset nodes' model is mixed",
        ),
        (["--participant-label", ""], "--participant-label: an empty label"),
        (["--participant-label", "01"], "(node dataset) needs two subjects or more, and only sub-01 has runs to fit"),
        (["--height-threshold", "0.01"], "--height-threshold is for --inference rft"),
    ],
)
def test_options_a_study_would_refuse_or_ignore_late_are_refused_first(tmp_path, capsys, options, message):
    """Refused before anything is indexed or fitted: a cluster threshold the dataset level would refuse once every
    run was fitted, an empty participant label, a dataset level of one subject (refused by each group once every run
    was fitted), an RFT threshold without --inference rft (ignored before)."""
    study, deriv = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    code = main(["bids", str(study.root), str(tmp_path / "out"), "dataset", *deriv, *options, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_the_apis_options_are_refused_in_its_words(tmp_path):
    """A negative cluster-forming threshold was taken by the API (a cluster of most of the mask), and refusals
    named the command line's options (a tester's)."""
    from voxfit.bids import run
    from voxfit.exceptions import InputError

    kw = {"group_model": "ols", "permutations": 20}
    with pytest.raises(InputError, match="`cluster_threshold` must be a positive t or F value, e.g. 3.1; got -2"):
        run(tmp_path / "ds", tmp_path / "out", cluster_threshold=-2, **kw)
    with pytest.raises(InputError, match="the group model is mixed: add `group_model` ols, or drop `permutations`"):
        run(tmp_path / "ds", tmp_path / "out", permutations=20)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_record_of_another_participant_is_left_out_of_the_reports(tmp_path):
    """A study of one participant with --report over a folder where another participant's record is unreadable:
    the reports are written without it, and a warning names it (the command stopped on it, and this study could
    not rewrite it)."""
    pytest.importorskip("matplotlib")
    from voxfit.bids import run

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=40, shape=(10, 10, 8))
    kw = {"derivatives": [study.derivatives], "level": "subject", "progress": False}
    out = tmp_path / "out"
    assert run(study.root, out, **kw).ok
    broken = next((out / "sub-02" / "node-subject").glob("*_model.json"))
    broken.write_text("{broken")
    with pytest.warns(UserWarning, match="is not readable JSON.*left out of the reports"):
        assert run(study.root, out, participant_label=["01"], report=True, **kw).ok
    assert (out / "sub-01.html").is_file() and (out / "index.html").is_file()
    broken.unlink()  # (the suite checks every model.json left against the schema)


def test_another_models_maps_and_a_kept_groups_maps_are_never_removed(tmp_path, capsys):
    """Model B's study at the run level over model A's groups (the same paths, nodes named alike): refused without
    --force, group by group, saying whose they are (B replaced A's maps with exit 0: a study of another task, as
    voxfit advises for a dataset of two, lost the first one's subject and dataset maps); with it, A's other maps
    stay (a group rewritten removes only what its own study listed). A stale record listing the maps of a group
    kept now (left by a rerun stopped after a grouping changed) takes none of them."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(8, 8, 6))
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "progress": False}
    a = default_model("stroop", ["congruent", "incongruent"])
    a["Name"] = "A"
    b = json.loads(json.dumps(a))
    b["Name"] = "B"
    b["Nodes"][0]["DummyContrasts"]["Contrasts"] = ["congruent"]
    assert run(study.root, out, model=a, level="run", **kw).ok
    before = {p.name: p.read_bytes() for p in (out / "sub-01" / "node-run").iterdir()}
    refused = run(study.root, out, model=b, level="run", **kw)
    assert not refused.ok and len(refused.failures) == 2
    assert all(
        "is the group of another study of this output folder (model model-A_smdl.json" in f.reason
        for f in refused.failures
    )
    assert {f.other_study for f in refused.failures} == {
        "model model-A_smdl.json, task stroop, space MNI152NLin2009cAsym, desc preproc"
    }
    # the command line says the first, and counts the others (a line each: a tester's rerun said 11)
    from argparse import Namespace

    from voxfit.cli import _said_of_study

    _said_of_study(refused, Namespace(quiet=True, command_options={"--force"}))
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2 and said[0].endswith("give each study its own output folder (or --force to replace them).")
    assert said[1].startswith("voxfit: failed: 1 more groups of that other study (model model-A_smdl.json"), said
    assert {p.name: p.read_bytes() for p in (out / "sub-01" / "node-run").iterdir()} == before
    assert run(study.root, out, model=b, level="run", force=True, **kw).ok
    assert sorted(p.name for p in (out / "sub-01" / "node-run").iterdir()) == sorted(before)
    # the grouping changed (one dataset group, its maps named alike), then an earlier record put back
    c = json.loads(json.dumps(b))
    c["Name"] = "C"  # (one contrast: one map per subject in a dataset group of every contrast)
    assert run(study.root, out, model=c, force=True, **kw).ok
    old = {p.name: p.read_bytes() for p in (out / "node-dataset").glob("*model.json")}
    c["Nodes"][2]["GroupBy"] = []
    assert run(study.root, out, model=c, **kw).ok
    for name, data in old.items():
        (out / "node-dataset" / name).write_bytes(data)
    (out / ".voxfit" / "study.json").unlink()
    again = run(study.root, out, model=c, **kw)
    assert again.ok and all(g.reused for g in again.nodes["dataset"])
    for g in again.nodes["dataset"]:
        listed = json.loads(g.files[0].read_text())["settings"]["bids"]["files"]
        assert all((out / "node-dataset" / f).is_file() for f in listed)
    assert not any((out / "node-dataset" / name).exists() for name in old)


def test_another_models_subject_groups_are_refused_with_their_study_named(tmp_path, capsys):
    """Model B's runs at paths of their own (its Run node named otherwise), its Subject groups at model A's: those
    are refused each, in the main process, each failure naming A's study (``other_study``), and the command line
    says one and counts the others; A's subject maps stay as they were."""
    from argparse import Namespace

    from voxfit.bids import run
    from voxfit.bids.spec import default_model
    from voxfit.cli import _said_of_study

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(8, 8, 6))
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "progress": False, "level": "subject"}
    a = default_model("stroop", ["congruent", "incongruent"])
    a["Name"] = "A"
    b = json.loads(json.dumps(a))
    b["Name"], b["Nodes"][0]["Name"], b["Edges"][0]["Source"] = "B", "runs", "runs"
    assert run(study.root, out, model=a, **kw).ok
    before = {p: p.read_bytes() for p in out.glob("sub-*/node-subject/*")}
    refused = run(study.root, out, model=b, **kw)
    assert not refused.ok and len(refused.failures) == 4  # (2 subjects x 2 contrasts)
    assert {f.node for f in refused.failures} == {"subject"}
    assert {f.other_study for f in refused.failures} == {"model model-A_smdl.json, task stroop, space "
                                                          "MNI152NLin2009cAsym, desc preproc"}  # fmt: skip
    _said_of_study(refused, Namespace(quiet=True, command_options=set()))
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2 and said[1].startswith("voxfit: failed: 3 more groups of that other study (model model-A")
    assert {p: p.read_bytes() for p in out.glob("sub-*/node-subject/*")} == before


def test_the_index_without_file_locks_and_a_failed_study_beside_a_running_one(tmp_path, monkeypatch):
    """Where the file system locks no files (NFS without its lock daemon: flock fails with ENOLCK) a study still
    runs, as before voxfit locked its index. A study that fails in a folder made at the same time as another's
    leaves the folder to the study that reads its index there (it removed the folder, index and all)."""
    import errno
    import fcntl

    from voxfit.bids import layout as layout_module
    from voxfit.bids import run
    from voxfit.exceptions import InputError

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(8, 8, 6))
    kw = {"derivatives": [study.derivatives], "level": "run", "progress": False}

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as m:
        m.setattr(layout_module.fcntl, "flock", no_locks)
        assert run(study.root, tmp_path / "nolocks", **kw).ok
    from voxfit.bids import study as study_module

    others = []
    index = study_module.index

    def started_beside(*args, **kwargs):  # another study started with this one, reading the index it built
        layout = index(*args, **kwargs)
        lock = next(Path(kwargs["database"]).glob("*.lock"))
        others.append(open(lock, "a"))  # noqa: SIM115
        fcntl.flock(others[-1], fcntl.LOCK_SH)
        return layout

    with monkeypatch.context() as m:
        m.setattr(study_module, "index", started_beside)
        with pytest.raises(InputError, match="participant label 09"):
            run(study.root, tmp_path / "shared", participant_label=["09"], **kw)
    assert (tmp_path / "shared" / ".voxfit" / "bids-index").is_dir()  # (the other study's index)
    others[0].close()
    with pytest.raises(InputError, match="participant label 09"):
        run(study.root, tmp_path / "alone", participant_label=["09"], **kw)
    assert not (tmp_path / "alone").exists()


def test_a_study_that_fits_nothing_leaves_an_earlier_studys_description(tmp_path):
    """A study of another model into an earlier study's folder whose every run fails: the folder's description
    and model files are as they were (the new model's file was left beside results it did not make)."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=2, runs=1, scans=30, shape=(8, 8, 6))
    out, kw = tmp_path / "out", {"derivatives": [study.derivatives], "level": "run", "progress": False}
    assert run(study.root, out, **kw).ok
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    broken = default_model("stroop", ["congruent", "incongruent"])
    broken["Name"] = "other"
    broken["Nodes"][0]["Model"]["X"].append("no_such_confound")
    failed = run(study.root, out, model=broken, **kw)
    assert not failed.ok and not any(failed.nodes.values())
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before


def test_a_dataset_node_fed_by_one_subjects_runs_is_fitted(tmp_path):
    """A Dataset node whose rows are one subject's runs (Run -> Dataset) has dof: it was refused as a group of one
    subject, with the refusal meant for a Dataset node fed one map per subject (a reviewer's)."""
    from voxfit.bids import run
    from voxfit.bids.spec import default_model

    study, _ = _study(tmp_path, subjects=1, runs=3, scans=30, shape=(6, 6, 4), conditions=("A",))
    model = default_model("stroop", ["A"])
    model["Nodes"] = [model["Nodes"][0], model["Nodes"][-1]]
    model["Edges"] = [{"Source": model["Nodes"][0]["Name"], "Destination": model["Nodes"][1]["Name"]}]
    kw = {"derivatives": [study.derivatives], "group_model": "ols", "progress": False}
    result = run(study.root, tmp_path / "out", model=model, **kw)
    assert result.ok, result.failures
    (record,) = (tmp_path / "out" / "node-dataset").glob("*_model.json")
    assert json.loads(record.read_text())["design"]["n_rows"] == 3
