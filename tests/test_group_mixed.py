"""Mixed- and fixed-effects group models from files as users hold them: effect and variance maps in sub-*/
folders given in any order, participants tables in their own order, voxfit first-level output folders, FSL
cope/varcope pairs, variance groups; refusals in one sentence. The estimator itself is checked against an
independent REML maximisation in tests/test_mixed_core.py; here the reference is voxfit.mixed_effects on arrays
assembled by hand, subject by subject, from the files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit import SecondLevel
from voxfit.cli import main

SHAPE = (5, 4, 3)
N = 10


@pytest.fixture
def study(tmp_path, rng):
    """N subjects' effect and variance maps (first-level variances 1 to 10, between-subject variance 1), a
    participants table in reverse order with age and site."""
    subjects = [f"{k + 1:02d}" for k in range(N)]
    age = rng.uniform(20, 60, N)
    site = np.array(["a", "b"] * (N // 2))
    for k, s in enumerate(subjects):
        folder = tmp_path / f"sub-{s}"
        folder.mkdir()
        s2 = rng.uniform(1, 10, SHAPE)
        effect = 0.3 + 0.01 * age[k] + rng.standard_normal(SHAPE) * np.sqrt(s2 + 1.0)
        nib.save(nib.Nifti1Image(effect.astype(np.float32), np.eye(4)), folder / "stat-effect.nii.gz")
        nib.save(nib.Nifti1Image(s2.astype(np.float32), np.eye(4)), folder / "stat-variance.nii.gz")
    table = tmp_path / "participants.tsv"
    frame = pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "age": age, "site": site})
    frame.iloc[::-1].to_csv(table, sep="\t", index=False)
    return {"dir": tmp_path, "subjects": subjects, "age": age, "site": site, "table": table}


def _maps(study, name):
    return [study["dir"] / f"sub-{s}" / name for s in study["subjects"]]


def _arrays(study):
    """Effects and variances (N, voxels), subject by subject in subject order, read with nibabel."""

    def stack(name):
        return np.stack(
            [np.asarray(nib.load(p).dataobj, np.float32).reshape(-1, order="F") for p in _maps(study, name)]
        )

    effects, variances = stack("stat-effect.nii.gz"), stack("stat-variance.nii.gz")
    return effects, variances


def test_mixed_model_matches_the_estimator_on_arrays_whatever_the_order(study):
    effects = _maps(study, "stat-effect.nii.gz")
    variances = _maps(study, "stat-variance.nii.gz")
    model = SecondLevel(design=study["table"], contrasts=["age=age"], variances=variances[::-1])
    res = model.fit(effects[3:] + effects[:3], study["dir"] / "g")
    Y, V = _arrays(study)
    X = np.column_stack([study["age"], np.ones(N)])
    ref = voxfit.mixed_effects(X, Y, V, {"age": [1, 0]}, names=["age", "intercept"])
    keep = res.masker.mask
    npt.assert_allclose(res.parametric["age"].t, ref.contrasts["age"].t[keep], rtol=1e-6)
    npt.assert_allclose(res.mixed.between_variance[0], ref.between_variance[0][keep], rtol=1e-6, atol=1e-9)
    record = json.loads((study["dir"] / "g" / "model.json").read_text())
    assert record["settings"]["model"] == "mixed"
    assert record["settings"]["mixed_effects"]["pairing"]["matched_by"] == "subject"
    assert (study["dir"] / "g" / "stat-betweenvariance_statmap.nii.gz").is_file()


def test_variance_groups_from_a_column_or_a_grp_file(study):
    effects = _maps(study, "stat-effect.nii.gz")
    variances = _maps(study, "stat-variance.nii.gz")
    kw = {"contrasts": ["intercept=intercept"], "variances": variances}
    by_column = SecondLevel(design=study["table"], variance_groups="site", **kw).fit(effects)
    grp = study["dir"] / "design.grp"
    codes = [1 if s == "a" else 2 for s in study["site"]]
    grp.write_text(f"/NumWaves 1\n/NumPoints {N}\n/Matrix\n" + "\n".join(map(str, codes)) + "\n")
    X = np.column_stack([study["age"], np.ones(N)])
    by_file = SecondLevel(design=(X, ["age", "intercept"]), grp=grp, **kw).fit(effects)
    assert by_column.mixed.between_variance.shape[0] == 2
    npt.assert_allclose(by_column.parametric["intercept"].t, by_file.parametric["intercept"].t, rtol=1e-6)
    Y, V = _arrays(study)
    ref = voxfit.mixed_effects(X, Y, V, {"intercept": [0, 1]}, groups=study["site"])
    npt.assert_allclose(by_file.parametric["intercept"].t, ref.contrasts["intercept"].t[by_file.masker.mask], rtol=1e-6)


def test_fixed_effects_dof_and_ols_ignoring_variances(study):
    effects = _maps(study, "stat-effect.nii.gz")
    variances = _maps(study, "stat-variance.nii.gz")
    fixed = SecondLevel(variances=variances, model="fixed", first_level_dof=30).fit(effects)
    assert fixed.parametric["intercept"].dof == pytest.approx(N * 30 - 1)
    ols = SecondLevel(variances=variances, model="ols").fit(effects)
    plain = SecondLevel().fit(effects)
    npt.assert_allclose(ols.parametric["intercept"].t, plain.parametric["intercept"].t, rtol=1e-12)
    assert ols.mixed is None


def test_first_level_folders_of_voxfit_fits(tmp_path, rng):
    """voxfit fit output folders (one per subject) -> --first-level ... --first-level-contrast: each folder's
    effect and variance maps of that contrast, and its dof for fixed effects."""
    n = 40
    t = np.arange(n)
    design = pd.DataFrame({"task": (t % 10 < 5).astype(float), "constant": np.ones(n)})
    folders = []
    for k in range(6):
        data = (100 + rng.standard_normal((*SHAPE, n)) + 0.5 * design["task"].to_numpy()).astype(np.float32)
        bold = tmp_path / f"bold{k}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), bold)
        folder = tmp_path / "derivatives" / f"sub-{k + 1:02d}"
        voxfit.fit_images(bold, design, {"task": "task"}, out_dir=folder, mask_threshold=None)
        folders.append(folder)
    out = tmp_path / "group"
    argv = ["group", "--first-level", *map(str, folders[::-1]), "--first-level-contrast", "task", "-o", str(out)]
    assert main(argv + ["--model", "fixed", "--quiet"]) == 0
    record = json.loads((out / "model.json").read_text())
    assert record["settings"]["model"] == "fixed"
    rows = record["settings"]["mixed_effects"]["pairing"]["rows"]
    assert [r["subject"] for r in rows] == [f"sub-{k:02d}" for k in range(6, 0, -1)]
    assert all(r["dof"] == n - 2 for r in rows)
    assert record["contrasts"]["intercept"]["dof"] == pytest.approx(6 * (n - 2) - 1)
    effect = [np.asarray(nib.load(f / "contrast-task_stat-effect_statmap.nii.gz").dataobj) for f in folders]
    variance = [np.asarray(nib.load(f / "contrast-task_stat-variance_statmap.nii.gz").dataobj) for f in folders]
    w = 1 / np.stack(variance)
    expected = (w * np.stack(effect)).sum(0) / w.sum(0)  # precision-weighted mean
    got = np.asarray(nib.load(out / "contrast-intercept_stat-effect_statmap.nii.gz").dataobj)
    npt.assert_allclose(got, expected, rtol=1e-5)


def test_fsl_cope_varcope_pairs(tmp_path, rng):
    folders = []
    for k in range(5):
        stats = tmp_path / f"sub-{k + 1:02d}.feat" / "stats"
        stats.mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.standard_normal(SHAPE).astype(np.float32), np.eye(4)), stats / "cope1.nii.gz")
        nib.save(nib.Nifti1Image(rng.uniform(1, 2, SHAPE).astype(np.float32), np.eye(4)), stats / "varcope1.nii.gz")
        folders.append(stats.parent)
    res = SecondLevel(first_level_contrast="1").fit(folders)
    assert res.mixed is not None and res.mixed.model == "mixed"
    assert np.isfinite(res.parametric["intercept"].t).all()


def test_voxels_that_cannot_be_fitted_are_counted(study, capsys):
    bad = study["dir"] / "sub-01" / "stat-variance.nii.gz"
    v = np.asarray(nib.load(bad).dataobj).copy()
    v[0, 0, 0] = 0.0
    nib.save(nib.Nifti1Image(v, np.eye(4)), bad)
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    assert main(["group", *effects, "--variances", *variances, "-o", str(study["dir"] / "o")]) == 0
    err = capsys.readouterr().err
    assert "1 voxel(s) not fitted (NaN in every map)" in err
    t = np.asarray(nib.load(study["dir"] / "o" / "contrast-intercept_stat-t_statmap.nii.gz").dataobj)
    assert np.isnan(t[0, 0, 0]) and np.isfinite(t[1, 0, 0])
    record = json.loads((study["dir"] / "o" / "model.json").read_text())
    assert sum(record["settings"]["mixed_effects"]["voxels_not_fitted"].values()) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "mixed"], "--model mixed weighs each subject by its first-level variance"),
        (["--first-level-contrast", "faces"], "--first-level-contrast names the contrast of --first-level"),
        (["VARIANCES", "--permutations", "100", "--scheme", "permute"], "scheme 'permute' with model 'mixed' is"),
        (["VARIANCES", "--cluster-threshold", "3"], "--cluster-threshold with --model mixed needs --permutations"),
        (["VARIANCES", "--variance-groups", "site"], "variance groups 'site' name a column of a participants"),
        (["VARIANCES", "--dof", "satterthwaite", "--model", "ols"], "are for --model mixed"),
    ],
)
def test_refusals_are_one_line(study, capsys, extra, message):
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    if extra and extra[0] == "VARIANCES":
        extra = ["--variances", *variances, *extra[1:]]
    out = study["dir"] / "refused"
    assert main(["group", *effects, *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_a_subject_without_a_variance_map_is_refused(study, capsys):
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))[1:]
    assert main(["group", *effects, "--variances", *variances, "-o", str(study["dir"] / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sub-01" in err


@pytest.mark.usefixtures("no_reserve")
def test_maps_over_the_cap_are_read_a_block_of_voxels_at_a_time(study, monkeypatch):
    """Uncompressed maps (NIfTI files, one per subject) over --max-memory: the fit reads their columns a block
    at a time, with the numbers of the in-memory fit; compressed ones are refused, naming a cap that holds."""
    for name in ("stat-effect", "stat-variance"):
        for path in _maps(study, f"{name}.nii.gz"):
            nib.save(nib.load(path), path.with_name(f"{name}.nii"))
    effects, variances = _maps(study, "stat-effect.nii"), _maps(study, "stat-variance.nii")
    kw = {"design": study["table"], "contrasts": ["age=age"], "variance_groups": "site"}
    in_memory = SecondLevel(variances=variances, **kw).fit(effects)
    from voxfit.models import second_level

    read, columns_of = [], second_level.columns_of
    monkeypatch.setattr(second_level, "columns_of", lambda *a: read.append(1) or columns_of(*a))
    small = SecondLevel(variances=variances, max_memory="4K", **kw).fit(effects[::-1], study["dir"] / "s")
    npt.assert_array_equal(small.masker.mask, in_memory.masker.mask)
    npt.assert_allclose(small.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-10)
    assert read == [1]  # (the maps were not loaded whole)
    compressed = SecondLevel(variances=_maps(study, "stat-variance.nii.gz"), max_memory="4K", **kw)
    with pytest.raises(voxfit.exceptions.InputError, match=r"cannot be read a block of voxels at a time"):
        compressed.fit(_maps(study, "stat-effect.nii.gz"))


def test_first_level_folders_by_pattern_matched_to_a_table_by_their_inputs(tmp_path, rng, capsys):
    """Folders named without sub- labels (fit1, fit2...) whose model.json records sub-<label> inputs: given as
    a quoted pattern, matched to a participants table by those subjects; none of them may be replaced by the
    output, even with --force."""
    n = 30
    design = pd.DataFrame({"task": (np.arange(n) % 10 < 5).astype(float), "constant": np.ones(n)})
    order = [3, 1, 4, 2, 5]
    for k in range(1, 6):
        data = (100 + rng.standard_normal((*SHAPE, n)) + 0.1 * k * design["task"].to_numpy()).astype(np.float32)
        bold = tmp_path / f"sub-{k:02d}_bold.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), bold)
        voxfit.fit_images(bold, design, {"task": "task"}, out_dir=tmp_path / f"fit{order.index(k) + 1}")
    table = tmp_path / "participants.tsv"
    pd.DataFrame({"participant_id": [f"sub-{k:02d}" for k in range(1, 6)], "dose": np.arange(5.0)}).to_csv(
        table, sep="\t", index=False
    )
    out = tmp_path / "g"
    base = ["group", "--first-level", str(tmp_path / "fit*"), "--first-level-contrast", "task", "--design", str(table)]
    assert main([*base, "--contrast", "dose=dose", "-o", str(out), "--quiet"]) == 0
    rows = json.loads((out / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["rows"]
    assert [r["subject"] for r in rows] == [f"sub-{k:02d}" for k in range(1, 6)]  # the table's order
    assert [Path(r["map"]).parent.name for r in rows] == [f"fit{order.index(k) + 1}" for k in range(1, 6)]
    capsys.readouterr()
    assert main([*base, "--contrast", "dose=dose", "-o", str(tmp_path / "fit1"), "--force"]) == 2
    assert "fit1" in capsys.readouterr().err
    assert (tmp_path / "fit1" / "model.json").is_file()


def test_first_level_folders_with_one_t_contrast_need_no_name(tmp_path, rng, capsys):
    n = 30
    design = pd.DataFrame({"task": (np.arange(n) % 10 < 5).astype(float), "constant": np.ones(n)})
    folders = []
    for k in range(4):
        data = (100 + rng.standard_normal((*SHAPE, n))).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"b{k}.nii")
        folders.append(tmp_path / f"sub-{k + 1:02d}")
        contrasts = {"task": "task"} if k else {"task": "task", "mean": "constant"}
        voxfit.fit_images(tmp_path / f"b{k}.nii", design, contrasts, out_dir=folders[-1])
    assert main(["group", "--first-level", *map(str, folders[1:]), "-o", str(tmp_path / "g"), "--quiet"]) == 0
    assert (
        json.loads((tmp_path / "g" / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["contrast"]
        == "task"
    )
    assert main(["group", "--first-level", *map(str, folders), "-o", str(tmp_path / "h")]) == 0  # task in common
    capsys.readouterr()
    assert main(["group", "--first-level", str(folders[0]), "-o", str(tmp_path / "i")]) == 2  # two t contrasts
    assert "the folders have mean, task" in capsys.readouterr().err


def test_first_level_dof_given_for_folders_is_checked(tmp_path, rng, capsys):
    """--first-level-dof with first-level folders replaces their dof after the same checks as with
    --variances: a positive number, or one per folder."""
    folders = []
    for k in range(4):
        stats = tmp_path / f"sub-{k + 1:02d}.feat" / "stats"
        stats.mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.standard_normal(SHAPE).astype(np.float32), np.eye(4)), stats / "cope1.nii.gz")
        nib.save(nib.Nifti1Image(rng.uniform(1, 2, SHAPE).astype(np.float32), np.eye(4)), stats / "varcope1.nii.gz")
        folders.append(str(stats.parent))
    base = ["group", "--first-level", *folders, "--first-level-contrast", "1", "--model", "fixed"]
    assert main([*base, "--first-level-dof", "20", "-o", str(tmp_path / "g"), "--quiet"]) == 0
    assert json.loads((tmp_path / "g" / "model.json").read_text())["contrasts"]["intercept"]["dof"] == 4 * 20 - 1
    capsys.readouterr()
    assert main([*base, "--first-level-dof", "-3", "-o", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`dof` must be a positive number" in err
    with pytest.raises(voxfit.exceptions.InputError, match="`dof` has 2 values for 4 rows"):
        SecondLevel(first_level_contrast="1", model="fixed", first_level_dof=[10, 12]).fit(folders)
