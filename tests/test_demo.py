"""`voxfit demo`: a synthetic run fitted through the same path as `voxfit fit`, with known answers."""

import json

import nibabel as nib
import numpy as np

from voxfit.cli import main


def test_demo_recovers_the_known_activation(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Fitted a synthetic run" in text and str(out) in text
    files = {p.name for p in out.iterdir()}
    assert {
        "contrast-AvsB_stat-z_statmap.nii.gz",
        "contrast-effects_stat-F_statmap.nii.gz",
        "model.json",
        "mask.nii.gz",
    } <= files
    model = json.loads((out / "model.json").read_text())
    assert model["design"]["columns"][:2] == ["A", "B"]
    # the strongest A-only blob is found: z for A at its centre is large, and B there is small
    zA = np.asarray(nib.load(out / "contrast-A_stat-z_statmap.nii.gz").dataobj)
    zB = np.asarray(nib.load(out / "contrast-B_stat-z_statmap.nii.gz").dataobj)
    assert zA[12, 16, 20] > 5 and abs(zB[12, 16, 20]) < 3
    assert zB[28, 16, 22] > 4 and np.isnan(zA[0, 0, 0])
    # a second run refuses the folder without --force
    assert main(["demo", "-o", str(out), "--quiet"]) == 2
    assert main(["demo", "-o", str(out), "--quiet", "--force"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no data left beside the folder


def test_the_demo_can_be_repeated_from_its_record(tmp_path, capsys, monkeypatch):
    from blake3 import blake3

    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--quiet"]) == 0
    model = json.loads((out / "model.json").read_text())
    for record in model["inputs"]:  # the data are kept in the folder, with the checksums of the fit's inputs
        assert record["path"].startswith(str((out / "data").resolve()))
        assert blake3(open(record["path"], "rb").read()).hexdigest() == record["blake3"]
    monkeypatch.chdir(out)
    assert main([*model["demo"]["repeat"][1:], "--quiet"]) == 0
    for name in ("contrast-AvsB_stat-t_statmap.nii.gz", "contrast-effects_stat-F_statmap.nii.gz"):
        np.testing.assert_array_equal(nib.load(out / "refit" / name).get_fdata(), nib.load(out / name).get_fdata())


def test_the_demo_keeps_the_users_files(tmp_path, capsys):
    out = tmp_path / "proj"
    (out / "data").mkdir(parents=True)
    (out / "data" / "important.txt").write_text("precious")
    assert main(["demo", "-o", str(out), "--quiet", "--force"]) == 2  # refused: data/ would be replaced whole
    assert "holds other files (important.txt)" in capsys.readouterr().err
    assert [p.name for p in (out / "data").iterdir()] == ["important.txt"]
    (out / "data" / "important.txt").unlink()
    assert main(["demo", "-o", str(out), "--quiet", "--force"]) == 0
    assert main(["demo", "-o", str(out), "--quiet", "--force"]) == 0  # over an earlier demo's data/
    assert {p.name for p in (out / "data").iterdir()} == {"brain_mask.nii.gz", "sub-demo_task-blocks_bold.nii.gz"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "data").write_text("a file")
    assert main(["demo", "-o", str(other), "--quiet", "--force"]) == 2
    assert "is a file" in capsys.readouterr().err and (other / "data").read_text() == "a file"
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "afile" / "out"), "--quiet"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
