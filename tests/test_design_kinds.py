"""Each design column's kind travels with the design (design.json beside design.tsv), so SPM's ar1-global finds
its high-pass filter whatever the drifts are called, and the design written is the model's, reusable as is."""

import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

from voxfit.cli import main
from voxfit.design import make_design

from .imaging import AFFINE

TR, N, SHAPE = 2.0, 120, (6, 5, 4)


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(7)
    events = pd.DataFrame({"onset": np.arange(10, 220, 30.0), "duration": 10.0, "trial_type": "task"})
    design = make_design(events, TR, N, hrf="spm", drift="cosine", high_pass=128)
    noise = rng.standard_normal(SHAPE + (N,))
    for t in range(1, N):
        noise[..., t] += 0.3 * noise[..., t - 1]
    task = design.X[:, design.names.index("task")]
    gain = np.zeros(SHAPE)
    gain[2:, :, :] = 4.0
    data = 500 + 5 * noise + gain[..., None] * task
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), str(tmp_path / "bold.nii.gz"))
    frame = pd.DataFrame(design.X, columns=design.names)
    frame.to_csv(tmp_path / "voxfit_names.tsv", sep="\t", index=False)
    drifts = [n for n in design.names if n.startswith("drift_")]
    frame.rename(columns={d: f"cosine{k:02d}" for k, d in enumerate(drifts)}).to_csv(
        tmp_path / "nilearn_names.tsv", sep="\t", index=False
    )
    frame.rename(columns={d: f"hp_{k}" for k, d in enumerate(drifts)}).to_csv(
        tmp_path / "own_names.tsv", sep="\t", index=False
    )
    return tmp_path, design


def _fit(capsys, root, design, out, *extra):
    code = main(
        [
            "fit",
            str(root / "bold.nii.gz"),
            "--design",
            str(design),
            "--noise",
            "ar1-global",
            "--contrast",
            "task=task",
            "-o",
            str(root / out),
            *extra,
        ]
    )
    return code, capsys.readouterr().err


def _t(folder):
    return nib.load(str(folder / "contrast-task_stat-t_statmap.nii.gz")).get_fdata()


def test_drifts_are_found_by_kind_not_by_a_name(study, capsys):
    root, design = study
    assert _fit(capsys, root, root / "voxfit_names.tsv", "ref")[0] == 0
    ref = _t(root / "ref")
    code, err = _fit(capsys, root, root / "nilearn_names.tsv", "nilearn")  # nilearn's cosine00... are drifts
    assert code == 0 and "no drift column" not in err
    npt.assert_allclose(_t(root / "nilearn"), ref, rtol=1e-6, equal_nan=True)
    code, err = _fit(capsys, root, root / "own_names.tsv", "own")  # a user's own names: said, and wrong
    assert code == 0 and "ar1-global found no drift column" in err and "--nuisance-columns" in err
    assert np.nanmax(np.abs(_t(root / "own") - ref)) > 1e-3
    code, err = _fit(capsys, root, root / "own_names.tsv", "named", "--nuisance-columns", "hp_*")
    assert code == 0 and "no drift column" not in err
    npt.assert_allclose(_t(root / "named"), ref, rtol=1e-6, equal_nan=True)
    sidecar = json.loads((root / "named" / "design.json").read_text())
    kinds = {c["name"]: c["kind"] for c in sidecar["columns"]}
    assert kinds["task"] == "regressor" and kinds["hp_0"] == "nuisance" and kinds["constant"] == "constant"


def test_the_design_written_is_the_models_and_can_be_fitted_again(study, capsys):
    root, design = study
    events = root / "events.tsv"
    pd.DataFrame({"onset": np.arange(10, 220, 30.0), "duration": 10.0, "trial_type": "task"}).to_csv(
        events, sep="\t", index=False
    )
    code = main(
        [
            "fit",
            str(root / "bold.nii.gz"),
            "--events",
            str(events),
            "--tr",
            str(TR),
            "--noise",
            "ar1-global",
            "--contrast",
            "task=task",
            "-o",
            str(root / "ev"),
            "--quiet",
        ]
    )
    assert code == 0
    written = pd.read_csv(root / "ev" / "design.tsv", sep="\t")
    npt.assert_allclose(written.to_numpy(), design.X, atol=1e-12)  # not whitened, not filtered
    whitened = pd.read_csv(root / "ev" / "design_desc-whitened.tsv", sep="\t")
    assert list(whitened.columns) == list(design.names) and not np.allclose(whitened.to_numpy(), design.X)
    sidecar = json.loads((root / "ev" / "design.json").read_text())
    assert [c["kind"] for c in sidecar["columns"]] == list(design.kinds) and sidecar["RepetitionTime"] == TR
    model = json.loads((root / "ev" / "model.json").read_text())
    assert model["design"]["kinds"] == list(design.kinds)
    # the folder's design.tsv with its design.json: the same fit again, whatever the drifts are called
    code, err = _fit(capsys, root, root / "ev" / "design.tsv", "again")
    assert code == 0 and "no drift column" not in err
    npt.assert_allclose(_t(root / "again"), _t(root / "ev"), rtol=1e-6, equal_nan=True)


def test_bad_kinds_are_refused_in_one_line(study, capsys):
    root, _ = study
    stale = root / "own_names.json"
    stale.write_text(json.dumps({"columns": [{"name": "task", "kind": "condition"}]}))
    code, err = _fit(capsys, root, root / "own_names.tsv", "stale")
    assert code == 2 and "update or remove the sidecar" in err and err.count("\n") == 1
    stale.write_text(json.dumps({"columns": "task"}))
    code, err = _fit(capsys, root, root / "own_names.tsv", "broken")
    assert code == 2 and "must be a list of" in err
    stale.write_text(json.dumps({"Description": "a BIDS sidecar of the same name"}))  # not voxfit's: kinds guessed
    code, err = _fit(capsys, root, root / "own_names.tsv", "other", "--nuisance-columns", "hp_*")
    assert code == 0 and "is not voxfit's design sidecar" in err and (root / "other" / "design.json").exists()
    stale.unlink()
    code, err = _fit(capsys, root, root / "own_names.tsv", "typo", "--nuisance-columns", "hq_*")
    assert code == 2 and "no design column matches 'hq_*'" in err
    code, err = _fit(capsys, root, root / "own_names.tsv", "const", "--nuisance-columns", "constant")
    assert code == 2 and "is a constant column" in err
    assert not any((root / name).exists() for name in ("stale", "broken", "typo", "const"))


def test_voxfit_design_writes_the_kinds_that_voxfit_fit_reads(study, capsys, tmp_path):
    root, design = study
    events = root / "events.tsv"
    pd.DataFrame({"onset": np.arange(10, 220, 30.0), "duration": 10.0, "trial_type": "task"}).to_csv(
        events, sep="\t", index=False
    )
    assert (
        main(["design", str(events), "--tr", str(TR), "--n-scans", str(N), "-o", str(root / "d.tsv"), "--quiet"]) == 0
    )
    side = json.loads((root / "d.json").read_text())
    assert [c["kind"] for c in side["columns"]] == list(design.kinds)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    code, err = _fit(capsys, root, root / "d.tsv", "fromfile")
    assert code == 0 and "no drift column" not in err
    model = json.loads((root / "fromfile" / "model.json").read_text())
    assert model["design"]["kinds"] == list(design.kinds)


def test_a_design_files_sidecar_gives_its_repetition_time(study, capsys):
    """`voxfit design --tr` writes RepetitionTime in the sidecar, and a fit of that file takes it: SPM's FAST
    (which needs it) fits as it does from the events, where the file was refused, saying to give the sidecar that
    voxfit wrote. Without the key, the refusal; a sidecar whose RepetitionTime is no number of seconds, one line."""
    root, design = study
    events = root / "events.tsv"
    pd.DataFrame({"onset": np.arange(10, 220, 30.0), "duration": 10.0, "trial_type": "task"}).to_csv(
        events, sep="\t", index=False
    )
    argv = ["design", str(events), "--tr", str(TR), "--n-scans", str(N), "-o", str(root / "d.tsv"), "--quiet"]
    assert main(argv) == 0
    assert json.loads((root / "d.json").read_text())["RepetitionTime"] == TR
    assert _fit(capsys, root, root / "d.tsv", "file", "--noise", "fast")[0] == 0
    bold = str(root / "bold.nii.gz")
    from_events = ["fit", bold, "--events", str(events), "--tr", str(TR), "--noise", "fast", "--contrast", "task=task"]
    assert main([*from_events, "-o", str(root / "events")]) == 0
    npt.assert_allclose(_t(root / "file"), _t(root / "events"), atol=1e-5)
    side = json.loads((root / "d.json").read_text())
    for value, said in ((None, "the design has none"), ("2s", "its RepetitionTime must be a number of seconds")):
        changed = {k: v for k, v in side.items() if k != "RepetitionTime"}
        (root / "d.json").write_text(json.dumps(changed if value is None else {**changed, "RepetitionTime": value}))
        code, err = _fit(capsys, root, root / "d.tsv", f"bad-{value}", "--noise", "fast")
        assert code == 2 and said in err and err.count("\n") == 1, err
    # a BIDS-style sidecar (RepetitionTime, no voxfit "columns") gives it too: it was passed over, and the refusal
    # asked for the sidecar given
    (root / "d.json").write_text(json.dumps({"RepetitionTime": TR}))
    assert _fit(capsys, root, root / "d.tsv", "bids-sidecar", "--noise", "fast")[0] == 0
    npt.assert_allclose(_t(root / "bids-sidecar"), _t(root / "events"), atol=1e-5)
