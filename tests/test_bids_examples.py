"""The BIDS Stats Models specification's example models (tests/data/bids_models, copied unchanged from
bids-standard/stats-models) run end to end through ``voxfit bids ... dataset --model FILE`` on synthetic datasets
shaped like the ones they name: every node writes its maps (effect, variance, t, p, z per contrast) and its
model.json records (validated against the record schema by tests/conftest.py), the run level its design."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("bids")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402

MODELS = Path(__file__).parent / "data" / "bids_models"
SPACE = "MNI152NLin2009cAsym"
STATS = ("effect", "variance", "t", "p", "z")

# each example: the dataset it names (task, conditions, confound columns; more subjects than Input keeps, to see
# the filter), the subjects it fits, the contrast label per node, the node folders
EXAMPLES = {
    "model-example_smdl.json": {
        "dataset": {"task": "stroop", "subjects": 2, "runs": 2, "extra_confounds": ("nuissance1", "nuissance2")},
        "subjects": ("01", "02"),
        "contrast": "incongruentvscongruent",
        "nodes": ("run", "subject", "dataset"),
        "run_columns": ["congruent", "incongruent", "nuissance1", "nuissance2"],
    },
    "model-walkthrough_smdl.json": {
        "dataset": {"task": "simon", "subjects": 4, "runs": 1, "conditions": ("incongruent", "congruent")},
        "subjects": ("01", "02", "03"),
        "contrast": "IvC",
        "nodes": ("runlevel", "subjectlevel", "onesampledataset"),
        "run_columns": ["incongruent", "congruent"],
    },
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_model_end_to_end(tmp_path, capsys, name):
    spec = EXAMPLES[name]
    study = make_dataset(tmp_path / "ds", scans=40, **spec["dataset"])
    out = tmp_path / "out"
    argv = ["bids", str(study.root), str(out), "dataset", "--derivatives", str(study.derivatives)]
    code = main([*argv, "--model", str(MODELS / name), "--quiet"])
    assert code == 0, capsys.readouterr().err
    model = json.loads((MODELS / name).read_text())
    written = json.loads(next(out.glob("model-*_smdl.json")).read_text())
    assert written["Nodes"] == model["Nodes"] and written["Name"] == model["Name"]  # (Input's values as lists)
    run_node, subject_node, dataset_node = spec["nodes"]
    c = spec["contrast"]
    task = spec["dataset"]["task"]
    assert sorted(p.name for p in out.glob("sub-*")) == [f"sub-{s}" for s in spec["subjects"]]
    for s in spec["subjects"]:
        for r in range(1, spec["dataset"]["runs"] + 1):
            stem = out / f"sub-{s}" / f"node-{run_node}" / f"sub-{s}_task-{task}_run-{r}_space-{SPACE}"
            for stat in STATS:
                assert Path(f"{stem}_contrast-{c}_stat-{stat}_statmap.nii.gz").is_file()
            assert Path(f"{stem}_design.tsv").is_file()
            record = json.loads(Path(f"{stem}_model.json").read_text())
            columns = record["design"]["columns"]
            assert columns[: len(spec["run_columns"])] == spec["run_columns"] and columns[-1] == "constant"
            assert record["settings"]["bids"]["node"] == model["Nodes"][0]["Name"]
        folder = out / f"sub-{s}" / f"node-{subject_node}"
        for stat in STATS:
            assert (folder / f"sub-{s}_contrast-{c}_stat-{stat}_statmap.nii.gz").is_file()
        record = json.loads((folder / f"sub-{s}_contrast-{c}_model.json").read_text())
        assert record["design"]["n_rows"] == spec["dataset"]["runs"]
    folder = out / f"node-{dataset_node}"
    for stat in STATS:
        assert (folder / f"contrast-{c}_stat-{stat}_statmap.nii.gz").is_file()
    record = json.loads((folder / f"contrast-{c}_model.json").read_text())
    assert record["design"]["n_rows"] == len(spec["subjects"]) and record["design"]["columns"] == ["intercept"]
    # the maps hold numbers where the data are: every brain voxel of the first run's mask, at every level
    mask = next(study.derivatives.glob("sub-01/func/*_desc-brain_mask.nii.gz"))
    brain = np.asarray(nib.load(mask).dataobj) > 0
    for path in (
        next(out.glob(f"sub-01/node-{run_node}/*contrast-{c}_stat-t_statmap.nii.gz")),
        out / "sub-01" / f"node-{subject_node}" / f"sub-01_contrast-{c}_stat-variance_statmap.nii.gz",
        folder / f"contrast-{c}_stat-z_statmap.nii.gz",
    ):
        values = np.asarray(nib.load(path).dataobj)[brain]
        assert np.isfinite(values).all() and np.ptp(values) > 0, path.name
