"""First-level effect and variance maps found and paired by subject for the group level (voxfit.design.paired_maps).

Every layout is built on disk: BIDS-like derivatives, voxfit first-level output folders made by fitting tiny runs
with ``voxfit.fit_images``, FEAT-like folders, 4-D pairs. Each pair is checked by the values its files hold
(an effect map holds its subject's number, a variance map ten times it), not by the names the code returned.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxfit
from voxfit.design import PairedMaps, first_level_maps, pair_variances
from voxfit.exceptions import InputError
from voxfit.models import ModelRecord

SHAPE = (3, 3, 2)
SUBJECTS = ["01", "02", "03", "04", "05"]


def _map(path: Path, value, shape=SHAPE, affine=None) -> Path:
    """A NIfTI map holding `value` everywhere (a 4-D file when `value` is a list: one volume per value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(value, dtype=np.float32)
    data = np.broadcast_to(values, shape + values.shape).copy()
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _value(path: Path, volume: int | None = None) -> float:
    data = np.asarray(nib.load(str(path)).dataobj)
    return float((data if volume is None else data[..., volume]).flat[0])


def _check_pairs(paired: PairedMaps) -> None:
    """Each row's variance map is its effect map's subject's: ten times the effect map's value."""
    for effect, variance in zip(paired.effects, paired.variances):
        assert _value(variance) == 10 * _value(effect), (effect, variance)


def _bids(root: Path, subjects=SUBJECTS, contrast="task") -> tuple[list[Path], list[Path]]:
    """BIDS-like derivatives: ``sub-<label>/sub-<label>_contrast-<c>_stat-<effect|variance>_statmap.nii.gz``."""
    effects, variances = [], []
    for label in subjects:
        stem = root / f"sub-{label}" / f"sub-{label}_contrast-{contrast}_stat"
        effects.append(_map(Path(f"{stem}-effect_statmap.nii.gz"), int(label)))
        variances.append(_map(Path(f"{stem}-variance_statmap.nii.gz"), 10 * int(label)))
    return effects, variances


# --- lists of files, matched by subject ------------------------------------------------------------------------


def test_bids_derivatives_in_scrambled_order_pair_by_subject(tmp_path):
    effects, variances = _bids(tmp_path / "derivatives")
    effects = [effects[k] for k in (3, 0, 4, 2, 1)]
    variances = [variances[k] for k in (1, 4, 0, 3, 2)]
    paired = pair_variances(effects, variances)
    assert paired.matched_by == "subject"
    assert list(paired.effects) == effects  # rows follow the effect maps as given
    assert paired.subjects == ("04", "01", "05", "03", "02")
    _check_pairs(paired)
    assert paired.dof is None and paired.volumes is None and paired.n == 5
    assert "by subject" in paired.notes[0]


def test_labels_in_file_names_in_one_folder_and_a_pattern(tmp_path):
    for label in SUBJECTS:
        _map(tmp_path / "maps" / f"sub-{label}_cope.nii.gz", int(label))
        _map(tmp_path / "maps" / f"sub-{label}_varcope.nii.gz", 10 * int(label))
    effects = [tmp_path / "maps" / f"sub-{label}_cope.nii.gz" for label in reversed(SUBJECTS)]
    paired = pair_variances(effects, str(tmp_path / "maps" / "sub-*_varcope.nii.gz"), dof=[20, 21, 22, 23, 24])
    assert paired.subjects == tuple(reversed(SUBJECTS))
    _check_pairs(paired)
    assert paired.dof == (20.0, 21.0, 22.0, 23.0, 24.0)


def test_one_dof_for_every_subject(tmp_path):
    paired = pair_variances(*_bids(tmp_path), dof=30)
    assert paired.dof == (30.0,) * 5


def test_a_subject_with_an_effect_map_but_no_variance_map_is_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    with pytest.raises(InputError, match=r"5 effect maps and 4 variance maps .*effect map but no variance map: sub-03"):
        pair_variances(effects, variances[:2] + variances[3:])


def test_a_subject_with_a_variance_map_but_no_effect_map_is_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    with pytest.raises(InputError, match=r"variance map but no effect map: sub-05 \(.*sub-05_contrast"):
        pair_variances(effects[:4], variances)


def test_two_variance_maps_of_one_subject_are_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    extra = _map(tmp_path / "sub-02" / "sub-02_run-2_variance.nii.gz", 20)
    with pytest.raises(InputError, match=r"two or more variance maps of one subject: sub-02 \(.*, .*run-2"):
        pair_variances(effects, variances + [extra])


def test_two_effect_maps_of_one_subject_are_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    extra = _map(tmp_path / "sub-02" / "sub-02_run-2_effect.nii.gz", 2)
    with pytest.raises(InputError, match=r"two or more effect maps of one subject: sub-02"):
        pair_variances(effects + [extra], variances)


def test_a_variance_map_on_another_grid_is_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    _map(variances[2], 30, shape=(3, 3, 3))
    with pytest.raises(InputError, match=r"sub-03_.*variance.* is on another grid than its effect map .*sub-03.*"):
        pair_variances(effects, variances)
    _map(variances[2], 30, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"another grid .*\(an affine up to 1 mm from it\); give the variance map"):
        pair_variances(effects, variances)


def test_effect_maps_on_different_grids_are_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    _map(effects[1], 2, shape=(4, 3, 2))
    _map(variances[1], 20, shape=(4, 3, 2))
    with pytest.raises(InputError, match=r"sub-02.* is on another grid than the first effect map .*resample"):
        pair_variances(effects, variances)
    # the first subject's map the odd one: it is named, against the grid of most (sub-02's was named, against it)
    _map(effects[1], 2)
    _map(variances[1], 20)
    _map(effects[0], 1, shape=(4, 3, 2))
    _map(variances[0], 10, shape=(4, 3, 2))
    with pytest.raises(InputError, match=r"sub-01_.*\(sub-01\) is on another grid than the effect maps of most inputs"):
        pair_variances(effects, variances)


def test_a_map_given_as_effect_and_as_variance_is_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    with pytest.raises(InputError, match="both as an effect map and as a variance map"):
        pair_variances(effects, variances[:4] + [effects[4]])


@pytest.mark.parametrize(
    ("dof", "message"),
    [(-1, "must be a positive number"), ([1, 2], "2 first-level dof values for 5"), ("ten", "must be a positive")],
)
def test_bad_dof_is_refused(tmp_path, dof, message):
    with pytest.raises(InputError, match=message):
        pair_variances(*_bids(tmp_path), dof=dof)


def test_maps_in_memory_are_refused(tmp_path):
    with pytest.raises(InputError, match="`effects` must be files .*voxfit.mixed_effects"):
        pair_variances(np.zeros((5, 10)), _bids(tmp_path)[1])


# --- without labels: FSL's cope/varcope and voxfit's names side by side -----------------------------------------


def _feat(folder: Path, value: int, dof: int | None = 97, names=("task",), standard: bool = False) -> Path:
    """A FEAT-like folder: ``stats/cope<N>``, ``stats/varcope<N>`` (N = 1.. per name), ``stats/dof``,
    ``design.con`` naming the contrasts; with `standard`, the same in ``reg_standard/stats`` (values + 1000)."""
    for n, _ in enumerate(names, 1):
        _map(folder / "stats" / f"cope{n}.nii.gz", value * n)
        _map(folder / "stats" / f"varcope{n}.nii.gz", 10 * value * n)
        if standard:
            _map(folder / "reg_standard" / "stats" / f"cope{n}.nii.gz", value * n + 1000)
            _map(folder / "reg_standard" / "stats" / f"varcope{n}.nii.gz", 10 * (value * n + 1000))
    if dof is not None:
        (folder / "stats" / "dof").write_text(f"{dof}\n")
    lines = [f"/ContrastName{n}\t{name}" for n, name in enumerate(names, 1)] + ["/NumWaves\t2", "/Matrix", "0 1"]
    (folder / "design.con").write_text("\n".join(lines) + "\n")
    return folder


def test_unlabelled_cope_and_varcope_pair_by_folder_in_the_order_given(tmp_path):
    folders = [_feat(tmp_path / f"run{k}.feat", k) for k in (1, 2, 3)]
    effects = [f / "stats" / "cope1.nii.gz" for f in (folders[2], folders[0], folders[1])]
    variances = [f / "stats" / "varcope1.nii.gz" for f in folders]
    paired = pair_variances(effects, variances)
    assert paired.matched_by == "folder" and paired.subjects == (None, None, None)
    assert list(paired.effects) == effects
    _check_pairs(paired)
    assert "order the effect maps were given" in paired.notes[0] and "run3.feat" in paired.notes[0]


def test_unlabelled_voxfit_names_pair_by_folder(tmp_path):
    effects, variances = [], []
    for k in (1, 2):
        effects.append(_map(tmp_path / f"fit{k}" / "contrast-a_stat-effect_statmap.nii.gz", k))
        variances.append(_map(tmp_path / f"fit{k}" / "contrast-a_stat-variance_statmap.nii.gz", 10 * k))
    paired = pair_variances(effects, variances[::-1])
    assert paired.matched_by == "folder"
    _check_pairs(paired)


def test_unlabelled_maps_of_other_names_are_refused(tmp_path):
    effects = [_map(tmp_path / f"e{k}.nii.gz", k) for k in (1, 2)]
    variances = [_map(tmp_path / f"v{k}.nii.gz", 10 * k) for k in (1, 2)]
    with pytest.raises(InputError, match=r"carry no sub-<label> .*not every effect map has its variance map beside"):
        pair_variances(effects, variances)


def test_unlabelled_lists_of_different_counts_are_refused(tmp_path):
    folders = [_feat(tmp_path / f"run{k}.feat", k) for k in (1, 2, 3)]
    effects = [f / "stats" / "cope1.nii.gz" for f in folders]
    variances = [f / "stats" / "varcope1.nii.gz" for f in folders[:2]]
    with pytest.raises(InputError, match=r"3 effect maps but 2 variance maps, and .* carry no sub-<label>"):
        pair_variances(effects, variances)


def test_two_unlabelled_effect_maps_in_one_folder_are_refused(tmp_path):
    folder = _feat(tmp_path / "run.feat", 1, names=("a", "b"))
    effects = [folder / "stats" / f"cope{n}.nii.gz" for n in (1, 2)]
    variances = [folder / "stats" / f"varcope{n}.nii.gz" for n in (1, 2)]
    with pytest.raises(InputError, match=r"two or more effect maps in one folder \(.*run.feat/stats\)"):
        pair_variances(effects, variances)


def test_labelled_feat_folders_pair_by_subject(tmp_path):
    folders = [_feat(tmp_path / f"sub-{label}.feat", int(label)) for label in SUBJECTS[:3]]
    effects = [f / "stats" / "cope1.nii.gz" for f in folders]
    variances = [f / "stats" / "varcope1.nii.gz" for f in reversed(folders)]
    paired = pair_variances(effects, variances)
    assert paired.matched_by == "subject" and paired.subjects == ("01", "02", "03")
    _check_pairs(paired)


# --- 4-D pairs -------------------------------------------------------------------------------------------------


def test_four_d_pair_pairs_volume_by_volume_with_the_order_in_a_note(tmp_path):
    values = [3.0, 1.0, 4.0, 1.5, 9.0]
    effect = _map(tmp_path / "filtered_func_data.nii.gz", values)
    variance = _map(tmp_path / "var_filtered_func_data.nii.gz", [10 * v for v in values])
    paired = pair_variances(effect, variance, dof=[10, 11, 12, 13, 14])
    assert paired.matched_by == "volume" and paired.volumes == (0, 1, 2, 3, 4) and paired.n == 5
    assert paired.effects == (effect,) and paired.variances == (variance,)
    for k in paired.volumes:
        assert _value(variance, k) == 10 * _value(effect, k)
    assert "volume k of filtered_func_data.nii.gz" in paired.notes[0] and "k = 0..4" in paired.notes[0]
    again = paired.take([4, 0])
    assert again.volumes == (4, 0) and again.dof == (14.0, 10.0) and again.effects == (effect,)
    assert again.record()["rows"][0] == {
        "map": str(effect),
        "variance_map": str(variance),
        "subject": None,
        "volume": 4,
        "dof": 14.0,
    }


def test_four_d_pair_of_different_counts_is_refused(tmp_path):
    effect = _map(tmp_path / "cope.nii.gz", [1.0, 2.0, 3.0])
    variance = _map(tmp_path / "varcope.nii.gz", [10.0, 20.0])
    with pytest.raises(InputError, match=r"holds 3 maps but the variance file .*varcope.nii.gz holds 2"):
        pair_variances(effect, variance)


def test_four_d_pair_dof_per_volume(tmp_path):
    effect = _map(tmp_path / "cope.nii.gz", [1.0, 2.0, 3.0])
    variance = _map(tmp_path / "varcope.nii.gz", [10.0, 20.0, 30.0])
    assert pair_variances(effect, variance, dof=8).dof == (8.0, 8.0, 8.0)
    with pytest.raises(InputError, match="2 first-level dof values for 3 volumes"):
        pair_variances(effect, variance, dof=[8, 9])


def test_a_four_d_file_among_maps_is_refused(tmp_path):
    effects, variances = _bids(tmp_path)
    _map(variances[1], [20.0, 20.0])
    with pytest.raises(InputError, match=r"the variance map .*sub-02.* holds 2 maps among other files"):
        pair_variances(effects, variances)
    with pytest.raises(InputError, match=r"the effect map .* holds 2 maps among other files"):
        pair_variances([effects[0], variances[1]], variances[:1] + variances[2:3])


# --- first-level folders: voxfit -------------------------------------------------------------------------------


def _fit(folder: Path, data_path: Path, n_scans: int, value: float, noise: str = "ols", seed: int = 0) -> Path:
    """A voxfit first-level fit of a tiny run: a task whose effect is `value`, contrasts ``task`` (t) and
    ``both`` (F)."""
    rng = np.random.default_rng(seed)
    task = np.arange(n_scans) % 2
    x = rng.standard_normal(n_scans)
    data = 100 + value * task + rng.standard_normal(SHAPE + (n_scans,))
    data_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(data_path))
    X = np.column_stack([np.ones(n_scans), task, x])
    voxfit.fit_images(
        data_path,
        (X, ["constant", "task", "x"]),
        {"task": "task", "both": [[0, 1, 0], [0, 0, 1]]},
        out_dir=folder,
        mask_threshold=None,
        noise=noise,
    )
    return folder


@pytest.fixture(scope="module")
def voxfit_study(tmp_path_factory):
    """Three subjects' voxfit fits of runs of 16, 20 and 24 scans: two in folders named sub-<label>, the third in
    a folder without a label whose run (the input model.json records) is sub-03's; and an AR(1) fit."""
    root = tmp_path_factory.mktemp("study")
    fits = {
        "01": _fit(root / "out" / "sub-01", root / "raw" / "sub-01" / "func" / "sub-01_bold.nii.gz", 16, 1.0, seed=1),
        "02": _fit(root / "out" / "sub-02", root / "raw" / "sub-02" / "func" / "sub-02_bold.nii.gz", 20, 2.0, seed=2),
        "03": _fit(root / "out" / "third", root / "raw" / "sub-03" / "func" / "bold.nii.gz", 24, 3.0, seed=3),
        "ar": _fit(root / "ar" / "sub-04", root / "raw" / "sub-04" / "func" / "sub-04_bold.nii.gz", 30, 1.0, "ar1", 4),
    }
    return root, fits


def test_voxfit_folders_give_each_subjects_maps_labels_and_dof(voxfit_study):
    _, fits = voxfit_study
    folders = [fits["02"], fits["03"], fits["01"]]
    paired = first_level_maps(folders, "task")
    assert paired.subjects == ("02", "03", "01")  # sub-03 from the input its model.json records
    assert paired.dof == (17.0, 21.0, 13.0)  # scans - 3 columns
    assert paired.contrast == "task" and paired.matched_by == "folder"
    for folder, effect, variance in zip(folders, paired.effects, paired.variances):
        assert effect == folder / "contrast-task_stat-effect_statmap.nii.gz"
        assert variance == folder / "contrast-task_stat-variance_statmap.nii.gz"
    assert "2 from the folder names, 1 from the inputs model.json records" in paired.notes[0]
    record = paired.record()
    assert record["rows"][1] == {
        "map": str(paired.effects[1]),
        "variance_map": str(paired.variances[1]),
        "subject": "sub-03",
        "dof": 21.0,
    }
    json.dumps(record)  # (model.json can hold it)


def test_the_variance_map_is_the_fits_squared_standard_error(voxfit_study):
    """The map taken as the variance is the first-level fit's variance of the contrast: t^2 = effect^2/variance."""
    _, fits = voxfit_study
    paired = first_level_maps([fits["01"]], "task")
    effect, variance = (np.asarray(nib.load(str(p)).dataobj) for p in (paired.effects[0], paired.variances[0]))
    t = np.asarray(nib.load(str(fits["01"] / "contrast-task_stat-t_statmap.nii.gz")).dataobj)
    np.testing.assert_allclose(effect / np.sqrt(variance), t, rtol=1e-4)


def test_model_record_read_gives_the_same_pairs(voxfit_study):
    _, fits = voxfit_study
    folders = [fits["01"], fits["03"]]
    assert first_level_maps(folders, "task", read_record=ModelRecord.read) == first_level_maps(folders, "task")


def test_ar_model_dof_is_the_median_of_the_per_voxel_dof_with_a_note(voxfit_study):
    _, fits = voxfit_study
    paired = first_level_maps([fits["ar"], fits["01"]], "task")
    median = json.loads((fits["ar"] / "model.json").read_text())["contrasts"]["task"]["dof"]["median"]
    assert paired.dof == (pytest.approx(median), 13.0)
    assert any("per-voxel dof" in note and "median" in note for note in paired.notes)


def test_a_missing_contrast_is_refused_naming_those_the_folder_has(voxfit_study):
    _, fits = voxfit_study
    with pytest.raises(InputError, match=r"sub-01 has no contrast 'faces' \(its contrasts: task, both\)"):
        first_level_maps([fits["01"]], "faces")


def test_an_f_contrast_is_refused(voxfit_study):
    _, fits = voxfit_study
    with pytest.raises(InputError, match=r"contrast 'both' of .*sub-01 is an F contrast"):
        first_level_maps([fits["01"], fits["02"]], "both")


def test_a_folder_that_is_no_finished_fit_is_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    unfinished = tmp_path / "sub-09"
    shutil.copytree(fits["01"], unfinished)
    (unfinished / "model.json").unlink()
    with pytest.raises(InputError, match=r"sub-09 is not a finished first-level fit \(no model.json"):
        first_level_maps([fits["01"], unfinished], "task")


def test_a_folder_missing_the_contrasts_maps_is_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    incomplete = tmp_path / "sub-09"
    shutil.copytree(fits["01"], incomplete)
    (incomplete / "contrast-task_stat-variance_statmap.nii.gz").unlink()
    with pytest.raises(InputError, match=r"records contrast 'task' but holds no contrast-task_stat-variance_statmap"):
        first_level_maps([incomplete], "task")


@pytest.mark.planted_model_json
def test_a_group_model_folder_and_a_broken_model_json_are_refused(tmp_path):
    group = tmp_path / "group"
    group.mkdir()
    (group / "model.json").write_text(json.dumps({"model_kind": "group", "contrasts": {}}))
    with pytest.raises(InputError, match=r"group holds a group model, not one subject's first-level fit"):
        first_level_maps([group], "task")
    (group / "model.json").write_text("{")
    with pytest.raises(InputError, match=r"model.json is not readable JSON"):
        first_level_maps([group], "task")


def test_two_folders_of_one_subject_are_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    again = tmp_path / "sub-01"
    shutil.copytree(fits["01"], again)
    with pytest.raises(InputError, match=r"two or more first-level folders of one subject: sub-01 \("):
        first_level_maps([fits["01"], again], "task")


def test_a_variance_map_on_another_grid_in_a_folder_is_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    odd = tmp_path / "odd"  # (sub-01 by the inputs its model.json records)
    shutil.copytree(fits["01"], odd)
    _map(odd / "contrast-task_stat-variance_statmap.nii.gz", 1.0, shape=(2, 2, 2))
    with pytest.raises(
        InputError, match=r"odd/contrast-task_stat-variance.* another grid than its effect map .*sub-01"
    ):
        first_level_maps([fits["02"], odd], "task")


def test_a_folder_named_for_another_subject_than_its_inputs_is_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    renamed = tmp_path / "sub-05"
    shutil.copytree(fits["01"], renamed)
    with pytest.raises(InputError, match=r"sub-05 is named for sub-05 but its model.json records the inputs of sub-01"):
        first_level_maps([fits["02"], renamed], "task")


def test_a_fit_of_several_runs_is_one_subjects_first_level(tmp_path):
    """voxfit's fixed effects across runs (model.json kind ``runs``): the subject from its runs' inputs."""
    rng = np.random.default_rng(5)
    runs, designs = [], []
    for r, n_scans in enumerate((12, 14), 1):
        task = np.arange(n_scans) % 2
        run = tmp_path / "raw" / "sub-06" / f"sub-06_run-{r}_bold.nii.gz"
        run.parent.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image((100 + task + rng.standard_normal(SHAPE + (n_scans,))).astype(np.float32), np.eye(4)),
            str(run),
        )
        runs.append(run)
        designs.append((np.column_stack([np.ones(n_scans), task]), ["constant", "task"]))
    voxfit.fit_runs(runs, designs, {"task": "task"}, out_dir=tmp_path / "fits" / "runs", mask_threshold=None)
    paired = first_level_maps([tmp_path / "fits" / "runs"], "task")
    recorded = json.loads((tmp_path / "fits" / "runs" / "model.json").read_text())["contrasts"]["task"]["dof"]
    # (the runs' weights' effective dof per voxel: at most the sum, 22; the group takes their median)
    assert paired.subjects == ("06",) and paired.dof == (recorded["median"],)
    assert 10 <= recorded["min"] <= recorded["max"] <= 12 - 2 + 14 - 2 and "fixed_effects" in recorded["per_voxel"]


def test_a_folder_whose_map_was_replaced_after_its_fit_is_refused(voxfit_study, tmp_path, capsys):
    """sub-02's effect map copied over sub-01's after the fits: voxfit report refused the folder, voxfit group
    --first-level fitted the copy as sub-01's (exit 0). The record's digests of the maps it wrote are checked."""
    import shutil

    from voxfit.cli import main

    _, fits = voxfit_study
    folders = [shutil.copytree(fits[s], tmp_path / f"sub-{s}") for s in ("01", "02", "03")]
    name = "contrast-task_stat-effect_statmap.nii.gz"
    shutil.copy(folders[1] / name, folders[0] / name)
    argv = ["group", "--first-level", *map(str, folders), "--first-level-contrast", "task", "-o", str(tmp_path / "g")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"sub-01/{name} is not the file the fit wrote" in err and err.count("\n") == 1, err


def test_bad_folder_arguments_are_refused(voxfit_study, tmp_path):
    _, fits = voxfit_study
    with pytest.raises(InputError, match=r"`folders`: .*nothere is not a folder"):
        first_level_maps([tmp_path / "nothere"], "task")
    with pytest.raises(InputError, match="names a folder twice") as refused:  # (named by its path, not its inode)
        first_level_maps([fits["01"], fits["01"]], "task")
    assert f"({fits['01']})" in str(refused.value)
    with pytest.raises(InputError, match="the first-level contrast must be"):
        first_level_maps([fits["01"]], "  ")


# --- first-level folders: FEAT ---------------------------------------------------------------------------------


def test_feat_folders_by_number_or_name_with_their_dof(tmp_path):
    folders = [_feat(tmp_path / f"sub-{k}.feat", int(k), dof=90 + int(k), names=("task", "rest")) for k in SUBJECTS[:3]]
    by_name = first_level_maps(folders[::-1], "rest")
    assert by_name.subjects == ("03", "02", "01") and by_name.dof == (93.0, 92.0, 91.0)
    assert [p.name for p in by_name.effects] == ["cope2.nii.gz"] * 3
    _check_pairs(by_name)
    for number in ("2", "cope2", 2):
        again = first_level_maps(folders[::-1], number)
        assert (again.effects, again.variances, again.dof) == (by_name.effects, by_name.variances, by_name.dof)


def test_feat_prefers_standard_space_maps(tmp_path):
    folder = _feat(tmp_path / "sub-01.feat", 1, standard=True)
    paired = first_level_maps([folder], 1)
    assert paired.effects[0] == folder / "reg_standard" / "stats" / "cope1.nii.gz"
    _check_pairs(paired)
    assert any("reg_standard" in note for note in paired.notes)
    (folder / "reg_standard" / "stats" / "varcope1.nii.gz").unlink()  # (stats/, the subject's space, was taken)
    with pytest.raises(InputError, match=r"has reg_standard/stats/cope1 but no varcope1 beside it"):
        first_level_maps([folder], 1)


def test_feat_maps_in_the_subjects_space_are_refused_where_feat_registered_them(tmp_path):
    """FEAT folders whose run FEAT registered to standard space (reg/example_func2standard.mat) but which hold no
    reg_standard/ (no higher-level FEAT has run featregapply): their stats/ maps are each in its subject's functional
    space, and maps of one grid were combined voxel by voxel, unaligned, exit 0 (a tester's). Refused, saying to run
    featregapply. FSL's identity matrix (maps already in one space, as fMRIPrep's MNI runs with FEAT) is taken as it
    is, and a folder without registration with a note, said once for the folders it concerns."""
    folders = [_feat(tmp_path / f"sub-{k}.feat", int(k)) for k in SUBJECTS[:3]]
    paired = first_level_maps(folders, 1)
    said = [note for note in paired.notes if "no registration" in note]
    assert said == [
        "sub-01.feat, sub-02.feat, sub-03.feat: no registration (reg/example_func2standard.mat): its stats/ maps "
        "taken as they are"
    ]
    for folder in folders:
        (folder / "reg").mkdir()
        (folder / "reg" / "example_func2standard.mat").write_text(
            "1  0  0  0  \n0  1  0  0  \n0  0  1  0  \n0  0  0  1  \n"
        )
    paired = first_level_maps(folders, 1)
    assert paired.effects[0] == folders[0] / "stats" / "cope1.nii.gz"
    assert not any("registration" in note for note in paired.notes)
    (folders[1] / "reg" / "example_func2standard.mat").write_text(
        "1.02 0.01 0 -3.5\n-0.01 0.98 0.02 12.1\n0 -0.02 1.01 8.7\n0 0 0 1\n"
    )
    with pytest.raises(
        InputError,
        match=r"sub-02.feat: its stats/ maps are in the subject's functional space .* run "
        r"`featregapply .*sub-02.feat` \(FSL\)",
    ):
        first_level_maps(folders, 1)
    for broken in ("", "1 0 0\n0 1 0\n", "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 nan"):  # (said to register them: a reviewer's)
        (folders[1] / "reg" / "example_func2standard.mat").write_text(broken)
        with pytest.raises(InputError, match=r"sub-02.feat: reg/example_func2standard.mat is not FSL's 4 x 4 matrix"):
            first_level_maps(folders, 1)
    _feat(folders[1], 2, standard=True)  # (featregapply's reg_standard/: taken, said)
    paired = first_level_maps(folders, 1)
    assert paired.effects[1] == folders[1] / "reg_standard" / "stats" / "cope1.nii.gz"


def test_an_spm_first_level_folder_is_said_to_be_one_with_what_to_give(tmp_path, capsys):
    """SPM12's first-level folders (con_0001.nii, spmT_0001.nii, SPM.mat) given as --first-level folders were "not
    a finished first-level fit ... give a voxfit fit or a FEAT folder" (the FSL/SPM tester's): SPM users are told
    to give the con images, which SPM's second level fits by OLS (SPM keeps no variance map of a contrast). Without
    --first-level-contrast they were told to name one (a reviewer's), which led to this refusal only then."""
    from voxfit.cli import main

    folder = tmp_path / "sub-01"
    _map(folder / "con_0001.nii", 1.0)
    _map(folder / "spmT_0001.nii", 2.0)
    said = r"sub-01 is an SPM first-level folder \(con_0001.nii...\), .*\(.*sub-01/con_0001.nii and the others'"
    with pytest.raises(InputError, match=said):
        first_level_maps([folder], "1")
    for named in (["--first-level-contrast", "1"], []):
        assert main(["group", "--first-level", str(folder), *named, "-o", str(tmp_path / "g")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(said, err), err


def test_feat_without_dof_gives_no_dof_with_a_note(tmp_path):
    folders = [_feat(tmp_path / "sub-01.feat", 1), _feat(tmp_path / "sub-02.feat", 2, dof=None)]
    paired = first_level_maps(folders, "task")
    assert paired.dof is None
    note = next(note for note in paired.notes if "dof unknown for" in note)
    assert "sub-02.feat" in note and "(of 2 folders)" in note and "n - rank" in note  # (said what is used instead)


def test_feat_missing_contrast_names_its_contrasts(tmp_path):
    folder = _feat(tmp_path / "sub-01.feat", 1, names=("task", "rest"))
    with pytest.raises(InputError, match=r"has no cope and varcope of contrast 'faces' \(its contrasts: 1 \(task\), 2"):
        first_level_maps([folder], "faces")
    (folder / "stats" / "varcope2.nii.gz").unlink()  # (a copy that lost a file: the cope is there, its varcope not)
    for contrast in ("rest", 2):
        with pytest.raises(InputError, match=r"has cope2 but no varcope2 beside it"):
            first_level_maps([folder], contrast)


def test_voxfit_and_feat_folders_together(voxfit_study, tmp_path):
    _, fits = voxfit_study
    paired = first_level_maps([fits["01"], _feat(tmp_path / "sub-07.feat", 7)], "task")
    assert paired.subjects == ("01", "07") and paired.dof == (13.0, 97.0)


# --- the result ------------------------------------------------------------------------------------------------


def test_take_reorders_every_row_field_and_refuses_other_rows(tmp_path):
    paired = pair_variances(*_bids(tmp_path), dof=[1, 2, 3, 4, 5])
    again = paired.take([2, 0])
    assert again.subjects == ("03", "01") and again.dof == (3.0, 1.0)
    _check_pairs(again)
    with pytest.raises(InputError, match=r"rows \[5\] are not rows of these 5 pairs"):
        paired.take([5])
    with pytest.raises(AttributeError):
        paired.subjects = ()


def test_voxfit_design_imports_the_image_readers_only_when_maps_are_paired():
    """``voxfit design`` imports voxfit.design: the pairing of maps (which reads headers) loads on first use."""
    code = (
        "import sys, voxfit.design as d; before = 'nibabel' in sys.modules; d.pair_variances; "
        "print(before, 'nibabel' in sys.modules, callable(d.first_level_maps), d.PairedMaps.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True", "PairedMaps"]


@pytest.mark.planted_model_json  # (another program's model.json, beside maps)
def test_first_level_folders_given_as_maps_point_to_first_level(voxfit_study, tmp_path, capsys):
    """voxfit's or FEAT's output folders given to `voxfit group` as its maps: each read as a run of scans, they were
    refused with a quoted pattern to name the scans by; now one line points to --first-level."""
    from voxfit.cli import main

    _, fits = voxfit_study
    feat = _feat(tmp_path / "sub-09.feat", 9)
    for folders in ([fits["01"], fits["02"]], [feat]):
        assert main(["group", *map(str, folders), "-o", str(tmp_path / "g")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{folders[0]} is a first-level output folder" in err, err
        assert "--first-level FOLDERS" in err and not (tmp_path / "g").exists()
    maps = tmp_path / "maps"  # (a folder of maps beside another program's model.json: read as the maps it holds)
    maps.mkdir()
    for k in range(4):
        nib.save(nib.Nifti1Image(np.full((3, 3, 2), k + 1.0, np.float32), np.eye(4)), maps / f"sub-{k}_map.nii.gz")
    (maps / "model.json").write_text("{}")
    assert main(["group", str(maps), "-o", str(tmp_path / "g"), "--quiet"]) == 0, capsys.readouterr().err


def test_a_feat_contrast_name_two_contrasts_share_is_refused_asking_for_its_number(tmp_path):
    """Two /ContrastName lines of a design.con both reading "faces": --first-level-contrast faces took cope1 and
    said nothing (an FSL-layout tester's). Refused, naming both; the number picks one."""
    folders = [_feat(tmp_path / f"sub-0{k}.feat", k, names=("faces", "faces")) for k in (1, 2)]
    with pytest.raises(InputError, match=r"sub-01.feat: contrasts 1 and 2 of its design.con are both named 'faces'"):
        first_level_maps(folders, "faces")
    assert first_level_maps(folders, "2").effects == tuple(f / "stats" / "cope2.nii.gz" for f in folders)


@pytest.mark.parametrize("extension", [".img", ".img.gz"])
def test_feat_folders_written_as_nifti_pairs_are_read(tmp_path, extension):
    """FEAT run with FSLOUTPUTTYPE=NIFTI_PAIR (or NIFTI_PAIR_GZ) writes stats/cope1.hdr and .img: such folders
    were refused as having "no FEAT stats/cope<N>", though the same maps given by name were read."""
    folders = []
    for k in (1, 2):
        stats = tmp_path / f"sub-0{k}.feat" / "stats"
        stats.mkdir(parents=True)
        folders.append(stats.parent)
        for name, value in (("cope1", k), ("varcope1", 10 * k)):
            data = np.full(SHAPE, value, dtype=np.float32)
            nib.save(nib.Nifti1Pair(data, np.eye(4)), str(stats / f"{name}{extension}"))
        (stats / "dof").write_text("50\n")
    paired = first_level_maps(folders, "1")
    assert [p.name for p in paired.effects] == [f"cope1{extension}"] * 2 and paired.dof == (50.0, 50.0)
    assert [_value(p) for p in paired.variances] == [10 * _value(p) for p in paired.effects]


def test_a_feat_design_con_that_cannot_be_read_is_said_where_a_contrast_name_needs_it(tmp_path):
    """An unreadable design.con (here a folder: root reads any file) was taken as holding no names: the folder
    was said to have no contrast 'task' (its contrasts: 1). Said as it is; a contrast number needs no names."""
    folders = [_feat(tmp_path / f"sub-0{k}.feat", k) for k in (1, 2)]
    (folders[0] / "design.con").unlink()
    (folders[0] / "design.con").mkdir()
    with pytest.raises(InputError, match=r"FEAT's contrast names \(for 'task'\) .*sub-01.feat/design.con"):
        first_level_maps(folders, "task")
    assert first_level_maps(folders, "1").n == 2


def test_a_higher_level_feat_folder_is_said_to_be_one(tmp_path):
    """A .gfeat folder (a cope<N>.feat per lower-level contrast) was said to be "not a finished first-level fit";
    it is named as FEAT's higher level, with the folder to give."""
    gfeat = tmp_path / "group.gfeat"
    for n in (1, 2):
        _feat(gfeat / f"cope{n}.feat", n)
    with pytest.raises(InputError, match=r"group.gfeat is a higher-level FEAT folder \(cope1.feat, cope2.feat\)"):
        first_level_maps([gfeat, gfeat.parent], "1")
    assert first_level_maps([gfeat / "cope1.feat", gfeat / "cope2.feat"], "1").n == 2


def test_a_voxfit_bids_folder_is_said_to_be_one_with_the_maps_to_give(tmp_path, capsys):
    """voxfit bids' subject folders (node-*/ of records named by their groups) were said to be "not a finished
    first-level fit (no model.json...)" though they hold *_model.json records: they are named as voxfit bids', with
    the maps to give instead (the README's example gave such folders to --first-level)."""
    node = tmp_path / "sub-01" / "node-subject"
    node.mkdir(parents=True)
    (node / "sub-01_contrast-faces_model.json").write_text("{}")
    for folder, where in (
        (tmp_path / "sub-01", r"\(node-<subject node>/\*_contrast-faces"),
        (node, r"\(\*_contrast-faces"),
    ):
        with pytest.raises(InputError, match=r"holds voxfit bids records \(sub-01_contrast-faces_model.json\.\.\.\)"):
            first_level_maps([folder], "faces")
        with pytest.raises(InputError, match=where + r"_stat-effect_statmap\*\), with --variances"):
            first_level_maps([folder], "faces")
    # without --first-level-contrast: said at once (it was "not a voxfit output folder; name the contrast")
    from voxfit.cli import main

    assert main(["group", "--first-level", str(node), str(node), "-o", str(tmp_path / "g"), "--quiet"]) == 2
    assert "holds voxfit bids records" in capsys.readouterr().err


def test_fsls_three_levels_take_each_higher_level_folders_dof_map_beside_first_level_dof(tmp_path, capsys):
    """FSL's usual study: each subject's runs combined by a higher-level FEAT (``sub-XX.gfeat/cope1.feat``, whose
    stats/ hold flameo's ``tdof_t1`` map and no ``dof`` file), a subject of one run given as its first-level
    .feat. Fixed effects take each higher-level folder's dof at each voxel and the first level's number: with
    ``--dof residual`` the dof map is their sum less the rank, as with the same maps given by --first-level-dof
    (the folders' dof were taken as unknown: n - rank, said in a note). --paired folders carry them too. Dof
    given on the command line replace the folders', said in a note."""
    from voxfit.cli import main

    rng = np.random.default_rng(5)
    folders, dof = [], []
    for k, label in enumerate(("01", "02", "03")):
        folder = _feat(tmp_path / f"sub-{label}.gfeat" / "cope1.feat", k + 1, dof=None)
        tdof = rng.integers(20, 60, SHAPE).astype(np.float32)
        nib.save(nib.Nifti1Image(tdof, np.eye(4)), folder / "stats" / "tdof_t1.nii.gz")
        folders.append(folder)
        dof.append(tdof)
    folders.append(_feat(tmp_path / "sub-04.feat", 4, dof=31))
    dof.append(np.full(SHAPE, 31.0, np.float32))
    paired = first_level_maps(folders, "1")
    assert paired.dof is None and paired.dof_maps[3] == 31.0
    assert [p for p, _ in paired.dof_maps[:3]] == [f / "stats" / "tdof_t1.nii.gz" for f in folders[:3]]
    assert any("maps of FEAT's higher level" in n and "sub-01.gfeat/cope1.feat" in n for n in paired.notes)
    unknown = first_level_maps([folders[0], _feat(tmp_path / "sub-05.feat", 5, dof=None)], "1")
    assert unknown.dof is None and unknown.dof_maps is None  # (a folder's dof unknown: none taken, said once)
    assert [n for n in unknown.notes if "dof" in n] == [n for n in unknown.notes if "dof unknown for" in n]
    assert not any("dof unknown" in n for n in unknown.with_dof(30).notes)  # (given now)
    b = [Path(shutil.copytree(f, tmp_path / "b" / f.relative_to(tmp_path))) for f in (folders[3], folders[0])]
    both = first_level_maps([folders[0], folders[3], *b], "1", paired=True)  # (B's rows put in A's order)
    assert both.dof_maps == (paired.dof_maps[0], 31.0, (b[1] / "stats" / "tdof_t1.nii.gz", 0), 31.0)

    out = tmp_path / "group"
    argv = ["group", "--first-level", *map(str, folders), "--first-level-contrast", "1", "--model", "fixed"]
    assert main([*argv, "--dof", "residual", "-o", str(out), "--quiet"]) == 0
    got = np.asarray(nib.load(out / "stat-dof_statmap.nii.gz").dataobj)
    np.testing.assert_allclose(got, np.sum(dof, axis=0) - 1, rtol=1e-6)
    rows = json.loads((out / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["rows"]
    assert [r.get("dof_map", r.get("dof")) for r in rows][3] == 31.0 and rows[0]["dof_map"].endswith("tdof_t1.nii.gz")
    files = [tmp_path / f"sub-0{k + 1}_dof.nii.gz" for k in range(4)]
    for path, values in zip(files, dof):
        nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    given = tmp_path / "given"
    assert main([*argv, "--dof", "residual", "--first-level-dof", *map(str, files), "-o", str(given), "--quiet"]) == 0
    np.testing.assert_allclose(np.asarray(nib.load(given / "stat-dof_statmap.nii.gz").dataobj), got, rtol=1e-6)
    notes = json.loads((given / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["notes"]
    assert any("replace those the inputs gave" in n for n in notes)


def test_an_ols_group_of_first_level_folders_says_and_records_what_their_pairing_found(tmp_path, capsys):
    """FEAT folders' notes (no registration, no mask.nii.gz, the subjects read from their names) were said and
    recorded for a fixed or mixed model, and neither for --model ols on the same folders: an unregistered folder's
    maps fitted as they are without a word. Both now say them and record them in model.json."""
    from voxfit.cli import main

    folders = [_feat(tmp_path / f"sub-0{k}.feat", k) for k in (1, 2, 3, 4)]
    said = {}
    for model in ("ols", "fixed"):
        argv = ["group", "--first-level", *map(str, folders), "--first-level-contrast", "1", "--model", model]
        assert main([*argv, "-o", str(tmp_path / model)]) == 0
        said[model] = capsys.readouterr().err
        assert "no registration (reg/example_func2standard.mat)" in said[model], said[model]
    assert said["ols"] == said["fixed"]
    record = json.loads((tmp_path / "ols" / "model.json").read_text())
    assert [f"voxfit: note: {n}\n" for n in record["design"]["notes"]] == said["ols"].splitlines(keepends=True)
