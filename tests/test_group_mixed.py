"""Mixed- and fixed-effects group models from files as users hold them: effect and variance maps in sub-*/
folders given in any order, participants tables in their own order, voxfit first-level output folders, FSL
cope/varcope pairs, variance groups; refusals in one sentence. The estimator itself is checked against an
independent REML maximisation in tests/test_mixed_core.py; here the reference is voxfit.mixed_effects on arrays
assembled by hand, subject by subject, from the files."""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit import SecondLevel
from voxfit._memory import size_text
from voxfit.cli import main

SHAPE = (5, 4, 3)
N = 10

# One draw of the data (the `rng` fixture's first seed, which VOXFIT_TEST_SEED shifts as it shifts the three) for
# the tests whose claim does not depend on the draw: a refusal and its words, which files are read and paired, a
# fit read a block of voxels at a time equal to the same fit in memory. The tests that hold a fit's numbers to a
# reference computed from the data by hand keep the three seeds.
ONE_SEED = pytest.mark.parametrize("rng", [0], indirect=True)


@pytest.fixture
def study(tmp_path, rng):
    """N subjects' effect and variance maps (first-level variances 1 to 10, between-subject variance 1), a
    participants table in reverse order with age and site."""
    return _study(tmp_path, rng, N)


@pytest.fixture
def large_study(tmp_path, rng):
    """32 subjects: maps that take more memory (16 bytes per subject and voxel in memory) than the results of
    the fit (about 20 values per voxel), so that a cap can hold the fit of maps read by columns and not the
    maps."""
    return _study(tmp_path, rng, 32)


def _study(tmp_path, rng, n: int) -> dict:
    subjects = [f"{k + 1:02d}" for k in range(n)]
    age = rng.uniform(20, 60, n)
    site = np.array(["a", "b"] * (n // 2))
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
    return {"dir": tmp_path, "subjects": subjects, "age": age, "site": site, "table": table, "n": n}


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


def test_variance_groups_default_to_kenward_roger_and_residual_gives_flame1(study):
    """With several variance groups `voxfit group` adjusts the betas' covariance for the estimation of each
    group's between-subject variance (Kenward-Roger; FLAME1's n - rank made 9% of null voxels p < 0.05 with groups
    of 5: see tests/test_validation.py), writes each contrast's dof map and says so in model.json; --dof residual
    gives FLAME1's numbers."""
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    argv = ["group", *effects, "--variances", *variances, "--design", str(study["table"]), "--variance-groups"]
    argv += ["site", "--contrast", "m=intercept", "--quiet"]
    Y, V = _arrays(study)
    X = np.column_stack([study["age"], np.ones(N)])
    for dof, out in (([], "kr"), (["--dof", "residual"], "flame1")):
        assert main([*argv, *dof, "-o", str(study["dir"] / out)]) == 0
        record = json.loads((study["dir"] / out / "model.json").read_text())
        words = record["settings"]["mixed_effects"]["dof"]
        ref = voxfit.mixed_effects(X, Y, V, {"m": [0, 1]}, groups=study["site"], dof=dof[1] if dof else None)
        assert ref.dof_kind == ("residual" if dof else "kenward-roger")
        t = np.asarray(nib.load(study["dir"] / out / "contrast-m_stat-t_statmap.nii.gz").dataobj).ravel(order="F")
        keep = np.isfinite(ref.contrasts["m"].t) & (t != 0)
        assert keep.sum() > 0.9 * t.size
        npt.assert_allclose(t[keep], ref.contrasts["m"].t[keep], rtol=1e-5)
        dof_map = study["dir"] / out / "contrast-m_stat-dof_statmap.nii.gz"
        assert (words.startswith("Kenward-Roger") and dof_map.is_file()) != bool(dof), (words, dof)
    flame1 = np.asarray(nib.load(study["dir"] / "flame1" / "contrast-m_stat-t_statmap.nii.gz").dataobj)
    adjusted = np.asarray(nib.load(study["dir"] / "kr" / "contrast-m_stat-t_statmap.nii.gz").dataobj)
    assert (np.abs(adjusted) <= np.abs(flame1) * (1 + 1e-6)).all()  # (the adjustment only widens)


@pytest.mark.parametrize("source", ["column", "grp"])
@ONE_SEED
def test_a_variance_group_of_one_map_is_refused(study, capsys, source):
    """A variance group holding one map, such as every subject's own from a covariate named as the groups' column,
    or a design.grp of one subject per group: a between-subject variance cannot be estimated from one map (REML
    took it 0, and null maps gave 27% of voxels below p < 0.05, t up to 10; the tester's finding). Refused in one
    line naming the group and its source; groups of several maps fit (see the test above)."""
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    if source == "column":
        extra = ["--design", str(study["table"]), "--two-sample", "site", "--covariates", "none"]
        extra += ["--variance-groups", "age", "--contrast", "d=b - a"]
    else:
        grp = study["dir"] / "design.grp"
        grp.write_text(f"/NumWaves 1\n/NumPoints {N}\n/Matrix\n" + "\n".join(map(str, range(1, N + 1))) + "\n")
        extra = ["--grp", str(grp)]
    out = study["dir"] / "refused"
    assert main(["group", *effects, "--variances", *variances, *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds one subject" in err and "cannot be estimated from one subject" in err, err
    assert ("of column 'age'" if source == "column" else "design.grp (FSL's design.grp: variance groups)") in err
    assert not out.exists()


def test_fixed_effects_dof_and_ols_ignoring_variances(study):
    """Fixed effects with first-level dof: flameo's sum minus the rank with dof='residual'; by default each voxel's
    effective dof, between one subject's and all of theirs (the subjects' shares of the precision vary)."""
    effects = _maps(study, "stat-effect.nii.gz")
    variances = _maps(study, "stat-variance.nii.gz")
    fixed = SecondLevel(variances=variances, model="fixed", first_level_dof=30, dof="residual").fit(effects)
    assert fixed.parametric["intercept"].dof == pytest.approx(N * 30 - 1)
    default = SecondLevel(variances=variances, model="fixed", first_level_dof=30).fit(effects)
    assert default.mixed.dof_kind == "kenward-roger"
    dof = default.parametric["intercept"].dof
    assert np.all((dof >= 30) & (dof <= N * 30)) and dof.min() < dof.max()
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
    assert "Kenward-Roger's for the first-level variances" in record["settings"]["mixed_effects"]["dof"]
    dof = record["contrasts"]["intercept"]["dof"]  # (effective, per voxel: at most every subject's summed)
    assert n - 2 <= dof["min"] <= dof["median"] <= dof["max"] <= 6 * (n - 2)
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


def test_feat_folders_are_fitted_within_their_masks(tmp_path, rng, capsys):
    """featregapply resamples a run's copes and varcopes to standard space with trilinear interpolation: in a band
    outside the resampled mask.nii.gz they are not 0 (the run's values blended with the 0 beyond its mask), with
    tiny varcopes, and voxfit fitted them where FEAT's higher level masks them out (a tester's 812 voxels against
    800, t 41.5 there). The group is fitted within the intersection of the folders' masks, said in a note; a folder
    without its mask is said, and the maps' non-zero voxels are taken there."""
    folders, inside = [], np.zeros(SHAPE, dtype=bool)
    inside[1:4, 1:3, :] = True
    for k in range(6):
        standard = tmp_path / f"sub-{k + 1:02d}.feat" / "reg_standard"
        (standard / "stats").mkdir(parents=True)
        (standard.parent / "stats").mkdir()
        cope = rng.standard_normal(SHAPE) + 0.5
        varcope = rng.uniform(1, 2, SHAPE)
        varcope[~inside] = 1e-4  # (the band: the blend of the run's varcope with the 0 beyond its mask)
        mask = inside.copy()
        mask[3, 1, 0] = k != 0  # (one subject's mask lacks a voxel the others have)
        for name, values in (("stats/cope1", cope), ("stats/varcope1", varcope), ("mask", mask)):
            nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), standard / f"{name}.nii.gz")
        for name in ("cope1", "varcope1"):  # (the run's own space's, as FEAT keeps them beside reg_standard/)
            shutil.copy(standard / "stats" / f"{name}.nii.gz", standard.parent / "stats" / f"{name}.nii.gz")
        (standard.parent / "stats" / "dof").write_text("100\n")
        folders.append(standard.parent)
    out = tmp_path / "g"
    argv = ["group", "--first-level", *map(str, folders), "--first-level-contrast", "1", "--model", "fixed"]
    assert main([*argv, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "fitted within the intersection of the FEAT folders' masks (6 mask.nii.gz)" in err, err
    t = np.asarray(nib.load(out / "contrast-intercept_stat-t_statmap.nii.gz").dataobj)
    within = inside.copy()
    within[3, 1, 0] = False
    assert np.isfinite(t[within]).all() and not np.isfinite(t[~within]).any()
    mask = json.loads((out / "model.json").read_text())["settings"]["mask"]
    assert mask.startswith("the intersection of 6 masks: ") and "sub-06.feat/reg_standard/mask.nii.gz" in mask
    (folders[0] / "reg_standard" / "mask.nii.gz").unlink()
    cope = folders[0] / "reg_standard" / "stats" / "cope1.nii.gz"
    values = np.asarray(nib.load(cope).dataobj)
    values[2, 1, 1] = 0.0  # (within the others' masks: out of this one's, which has none; fitted as data, exit 0)
    nib.save(nib.Nifti1Image(values, np.eye(4)), cope)
    within = inside.copy()
    within[2, 1, 1] = False
    for model in ("fixed", "ols"):
        assert main([*argv[:-1], model, "-o", str(tmp_path / model)]) == 0
        err = capsys.readouterr().err
        assert "sub-01.feat: no mask.nii.gz beside its maps' folder: their non-zero voxels taken" in err, err
        assert "(5 mask.nii.gz, and the non-zero voxels of the maps of the 1 without)" in err
        t = np.asarray(nib.load(tmp_path / model / "contrast-intercept_stat-t_statmap.nii.gz").dataobj)
        assert np.isfinite(t[within]).all() and not np.isfinite(t[~within]).any()
    masks = [folders[k] / "reg_standard" / "mask.nii.gz" for k in (1, 2)]
    nib.save(nib.Nifti1Image((~inside).astype(np.float32), np.eye(4)), masks[1])
    with pytest.raises(voxfit.exceptions.InputError, match=r"the masks .*sub-02.feat.*, .*sub-03.feat.* have no elem"):
        SecondLevel(first_level_contrast="1", model="fixed").fit([str(f) for f in folders])


@ONE_SEED
def test_paired_feat_folders_of_which_one_condition_has_masks_take_the_others_non_zero_voxels(tmp_path, rng):
    """--paired FEAT folders, condition A's with mask.nii.gz and B's without: B's maps were taken whole, so a B map's
    zeros within A's masks were fitted as data (the intersection of A's masks alone). B's folders give their maps'
    non-zero voxels, as a folder without its mask among others with one does."""
    inside = np.zeros(SHAPE, dtype=bool)
    inside[1:4, 1:3, :] = True
    folders = []
    for condition in ("A", "B"):
        for k in range(5):
            stats = tmp_path / condition / f"sub-{k + 1:02d}.feat" / "stats"
            stats.mkdir(parents=True)
            cope = np.where(inside, rng.standard_normal(SHAPE) + 0.5, 0.0)
            if condition == "B" and k == 2:
                cope[2, 1, 1] = 0.0
            for name, values in (("cope1", cope), ("varcope1", rng.uniform(1, 2, SHAPE))):
                nib.save(nib.Nifti1Image(values.astype(np.float32), np.eye(4)), stats / f"{name}.nii.gz")
            (stats / "dof").write_text("50\n")
            if condition == "A":
                nib.save(nib.Nifti1Image(inside.astype(np.float32), np.eye(4)), stats.parent / "mask.nii.gz")
            folders.append(str(stats.parent))
    for model in ("ols", "fixed"):
        fit = SecondLevel(first_level_contrast="1", model=model, paired=True).fit(folders)
        within = inside.copy()
        within[2, 1, 1] = False
        assert fit.masker.n_voxels == within.sum(), model


@ONE_SEED
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
        (["VARIANCES", "--dof", "satterthwaite", "--model", "ols"], "--dof satterthwaite is for --model mixed, and"),
        # (the message named "--dof None", which was not given)
        (
            ["--variance-groups", "site"],
            "--variance-groups are the variance groups of --model mixed, and the model is OLS",
        ),
        # (fixed effects have no variance to group: the blocks were read and not used, exit 0)
        (["VARIANCES", "--model", "fixed", "--grp", "GRP"], "--grp with --model fixed (no between-subject variance"),
        # (the messages named `dof`, which the command line said as group's own --dof)
        (["VARIANCES", "--model", "fixed", "--first-level-dof", "-5"], "error: the first-level dof must be a positive"),
        (["VARIANCES", "--model", "fixed", "--first-level-dof", "10", "12"], "error: 2 first-level dof values for"),
        # (the engine's refusals were said half in Python: `groups` has 2, give dof='residual')
        (["VARIANCES", "--outliers", "--grp", "GRP"], "--outliers fits one variance group, and --grp gives 2; drop"),
        (["VARIANCES", "--outliers", "--dof", "satterthwaite"], "--outliers takes --dof residual (n - rank); drop"),
        # (the engine's words: give `first_level_dof`, or dof='residual')
        (["VARIANCES", "--model", "fixed", "--dof", "kenward-roger"], "these maps do not give: give --first-level-dof"),
    ],
)
@ONE_SEED
def test_refusals_are_one_line(study, capsys, extra, message):
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    if extra and extra[0] == "VARIANCES":
        extra = ["--variances", *variances, *extra[1:]]
    if "GRP" in extra:
        grp = study["dir"] / "design.grp"
        grp.write_text(f"/NumWaves 1\n/NumPoints {len(effects)}\n/Matrix\n" + "1\n2\n" * (len(effects) // 2))
        extra[extra.index("GRP")] = str(grp)
    out = study["dir"] / "refused"
    assert main(["group", *effects, *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


@ONE_SEED
def test_variance_maps_that_are_not_variances_are_refused(study, capsys):
    """Variance maps that are negative everywhere in one subject (a t or z map given for them): no voxel can be
    fitted, said in one line (exit 2), not every map NaN with a note (exit 0 before); one bad voxel is a note."""
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = _maps(study, "stat-variance.nii.gz")
    bad = variances[0]  # (sub-01's)
    nib.save(nib.Nifti1Image(-np.ones(SHAPE, np.float32), np.eye(4)), bad)
    argv = ["group", *effects, "--variances", *map(str, variances), "-o", str(study["dir"] / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no voxel can be fitted (60 first-level variance zero, negative" in err
    values = -np.ones(SHAPE, np.float32)
    values[1:] = 1.0
    nib.save(nib.Nifti1Image(values, np.eye(4)), bad)
    assert main(argv) == 0
    assert "12 voxel(s) not fitted (NaN in every map): first-level variance zero, negative" in "".join(
        capsys.readouterr()
    )


@ONE_SEED
def test_a_subject_without_a_variance_map_is_refused(study, capsys):
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))[1:]
    assert main(["group", *effects, "--variances", *variances, "-o", str(study["dir"] / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sub-01" in err


@pytest.mark.parametrize(
    ("effect", "variance", "said"),
    [
        ("cope2.nii.gz", "varcope1.nii.gz", "holds contrast 2 but its variance map"),
        ("sub_contrast-faces_stat-effect.nii.gz", "sub_contrast-houses_stat-variance.nii.gz", "contrast faces but"),
    ],
)
@ONE_SEED
def test_an_effect_map_paired_with_another_contrasts_variances_is_refused(study, capsys, effect, variance, said):
    """Matched by subject, each subject's cope2 took its varcope1 (and a contrast-faces effect map a
    contrast-houses variance map) without a word, though both names say which contrast they hold (a group
    tester's); refused, naming the pair. The same contrast's maps are fitted."""
    for name, given in (("stat-effect.nii.gz", effect), ("stat-variance.nii.gz", variance)):
        for path in _maps(study, name):
            shutil.copy(path, path.with_name(given.replace("sub_", f"{path.parent.name}_")))
    effects = [str(p.with_name(effect.replace("sub_", f"{p.parent.name}_"))) for p in _maps(study, "x")]
    variances = [str(p.with_name(variance.replace("sub_", f"{p.parent.name}_"))) for p in _maps(study, "x")]
    assert main(["group", *effects, "--variances", *variances, "-o", str(study["dir"] / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "sub-01" in err, err
    same = [v.replace("varcope1", "varcope2").replace("houses", "faces") for v in variances]
    for given, wanted in zip(variances, same):
        shutil.copy(given, wanted)
    assert main(["group", *effects, "--variances", *same, "-o", str(study["dir"] / "ok"), "--quiet"]) == 0


@ONE_SEED
def test_maps_taken_by_an_option_or_a_4d_file_beside_3d_ones_are_said_to_be(study, capsys):
    """Messages a group tester found misleading: maps given after --variances (or --first-level-dof), which
    take every value after them, were refused saying "give the maps" that were given; one 4-D effect file beside
    3-D variance files "holds 6 maps among other files" where it was the only effect file."""
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    out = ["-o", str(study["dir"] / "r")]
    assert main(["group", "--variances", *variances, *effects, *out]) == 2
    assert "no maps were given before --variances, each taking every value after it" in capsys.readouterr().err
    assert (
        main(["group", "--model", "fixed", "--first-level-dof", "50", *effects, "--variances", *variances, *out]) == 2
    )
    assert "no maps were given before --variances or --first-level-dof" in capsys.readouterr().err
    stacked = study["dir"] / "effects.nii.gz"
    nib.save(nib.concat_images([nib.load(p) for p in effects]), stacked)
    assert main(["group", str(stacked), "--variances", *variances, *out]) == 2
    err = capsys.readouterr().err
    assert f"holds {study['n']} maps beside {study['n']} variance files of one map each" in err, err


@pytest.mark.usefixtures("no_reserve")
@ONE_SEED
def test_maps_over_the_cap_are_read_a_block_of_voxels_at_a_time(large_study, monkeypatch, tmp_path):
    """Maps over --max-memory, uncompressed or compressed (NIfTI files, one per subject): the fit reads their
    columns a block at a time, compressed ones decompressed once into a temporary file that is gone after the
    run; the numbers are those of the in-memory fit. A cap that cannot hold the fit's results is refused."""
    study = large_study
    for name in ("stat-effect", "stat-variance"):
        for path in _maps(study, f"{name}.nii.gz"):
            nib.save(nib.load(path), path.with_name(f"{name}.nii"))
    effects, variances = _maps(study, "stat-effect.nii"), _maps(study, "stat-variance.nii")
    kw = {"design": study["table"], "contrasts": ["age=age"], "variance_groups": "site"}
    in_memory = SecondLevel(variances=variances, **kw).fit(effects)
    from voxfit.models import second_level

    read, columns_of = [], second_level.columns_of
    monkeypatch.setattr(second_level, "columns_of", lambda *a: read.append(1) or columns_of(*a))
    small = SecondLevel(variances=variances, max_memory="24K", **kw).fit(effects[::-1], study["dir"] / "s")
    npt.assert_array_equal(small.masker.mask, in_memory.masker.mask)
    npt.assert_allclose(small.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-10)
    assert read == [1]  # (the maps were not loaded whole)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))  # (where a run without output writes)
    (tmp_path / "system-tmp").mkdir()
    packed = SecondLevel(variances=_maps(study, "stat-variance.nii.gz"), max_memory="24K", **kw)
    for out in (None, study["dir"] / "c"):
        streamed = packed.fit(_maps(study, "stat-effect.nii.gz")[::-1], out)
        npt.assert_allclose(streamed.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-10)
        npt.assert_allclose(streamed.mixed.between_variance, in_memory.mixed.between_variance, rtol=1e-10)
    assert read == [1, 1, 1]
    assert list((tmp_path / "system-tmp").iterdir()) == []  # the decompressed copies are gone
    assert not [p.name for p in (study["dir"] / "c").iterdir() if p.name.startswith(".")]
    longer = _maps(study, "stat-variance.nii.gz")
    raw = gzip.decompress(longer[0].read_bytes())
    longer[0] = longer[0].with_name("longer.nii.gz")  # a map's bytes more in its gzip stream: its own data read, as
    longer[0].write_bytes(gzip.compress(raw + raw[-(len(raw) - 352) :]))  # nibabel reads it (a 3-D map: no word)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        streamed = SecondLevel(variances=longer, max_memory="24K", **kw).fit(_maps(study, "stat-effect.nii.gz")[::-1])
    npt.assert_allclose(streamed.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-10)
    assert not [w for w in said if "after the data" in str(w.message)]
    odd = _maps(study, "stat-variance.nii.gz")  # a vox_offset nibabel refuses: read from 352, said of this file only
    raw = bytearray(gzip.decompress(odd[1].read_bytes()))
    raw[108:112] = np.array([100.0], "<f4").tobytes()
    odd[1] = odd[1].with_name("odd.nii.gz")
    odd[1].write_bytes(gzip.compress(bytes(raw)))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        streamed = SecondLevel(variances=odd, max_memory="24K", **kw).fit(_maps(study, "stat-effect.nii.gz")[::-1])
    npt.assert_allclose(streamed.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-10)
    told = [str(w.message) for w in said if "read its vox_offset 100 as 352" in str(w.message)]
    assert told and all(message.startswith(f"{odd[1]}:") for message in told), told  # (not its decompressed copy)
    raw[108:112] = np.zeros(1, "<f4").tobytes()  # its data at 348, where niftilib reads them: too short from 352
    odd[1].write_bytes(gzip.compress(bytes(raw[:348] + raw[352:])))
    with pytest.raises(voxfit.exceptions.InputError, match=rf"{odd[1]}: its vox_offset is 0, inside its 352-byte"):
        SecondLevel(variances=odd, max_memory="24K", **kw).fit(_maps(study, "stat-effect.nii.gz")[::-1])
    with pytest.raises(
        voxfit.exceptions.InputError, match=r"`max_memory`='8K' cannot hold a group model of 32 .* give at least 18K"
    ):
        SecondLevel(variances=variances, max_memory="8K", **kw).fit(effects)


@pytest.mark.usefixtures("no_reserve")
@ONE_SEED
def test_compressed_4d_pairs_are_streamed_and_a_full_disk_is_refused(large_study, monkeypatch, capsys):
    """One 4-D .nii.gz of effects and one of variances over the cap: decompressed and read by columns, the
    numbers of the in-memory fit; a disk without room for the decompressed maps is refused in one line naming
    the output folder and the size, before anything is written."""
    study, n = large_study, large_study["n"]
    Y, V = _arrays(study)
    four_d = {}
    for name, values in (("effects", Y), ("variances", V)):
        four_d[name] = study["dir"] / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(values.T.reshape((*SHAPE, n), order="F"), np.eye(4)), four_d[name])
    in_memory = SecondLevel(variances=four_d["variances"]).fit(four_d["effects"])
    streamed = SecondLevel(variances=four_d["variances"], max_memory="24K").fit(four_d["effects"], study["dir"] / "g")
    npt.assert_allclose(streamed.parametric["intercept"].t, in_memory.parametric["intercept"].t, rtol=1e-10)
    ref = voxfit.mixed_effects(np.ones((n, 1)), Y, V, ["intercept=x0"])
    npt.assert_allclose(streamed.parametric["intercept"].t, ref.contrasts["intercept"].t[streamed.masker.mask], 1e-6)
    from voxfit.models import group_mixed

    monkeypatch.setattr(group_mixed.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = study["dir"] / "full"
    argv = ["group", str(four_d["effects"]), "--variances", str(four_d["variances"]), "--max-memory", "24K"]
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    need = 2 * (352 + Y.size * 4)  # (each file: its header and its float32 data)
    assert err.count("\n") == 1 and f"needs {size_text(need)} free in {out}" in err, err
    assert not out.exists()


def _paired_study(root: Path, rng, n: int = 8) -> dict:
    """n subjects' maps of conditions a and b (folders a/ and b/, sub-<label> file names), first-level variances
    1 to 10, a between-subject variance 1 and a subject effect shared by both conditions."""
    values = {c: ([], []) for c in "ab"}
    for c in "ab":
        (root / c).mkdir()
    subject = 3 * rng.standard_normal((n, *SHAPE))
    for k in range(n):
        for c, shift in (("a", 0.4), ("b", 0.0)):
            v = rng.uniform(1, 10, SHAPE)
            e = subject[k] + shift + rng.standard_normal(SHAPE) * np.sqrt(v + 1)
            nib.save(nib.Nifti1Image(e.astype(np.float32), np.eye(4)), root / c / f"sub-{k + 1:02d}_stat-effect.nii")
            nib.save(nib.Nifti1Image(v.astype(np.float32), np.eye(4)), root / c / f"sub-{k + 1:02d}_stat-variance.nii")
            values[c][0].append(e.astype(np.float32).reshape(-1, order="F"))
            values[c][1].append(v.astype(np.float32).reshape(-1, order="F"))

    def maps(c, stat):
        return [root / c / f"sub-{k + 1:02d}_stat-{stat}.nii" for k in range(n)]

    Y = np.vstack([np.stack(values["a"][0]), np.stack(values["b"][0])]).astype(np.float64)
    V = np.vstack([np.stack(values["a"][1]), np.stack(values["b"][1])]).astype(np.float64)
    return {"n": n, "maps": maps, "Y": Y, "V": V}


def test_paired_mixed_model_is_flames_paired_design(tmp_path, rng):
    """--paired with variances: the 2n maps, A then B (each half in its own order), against voxfit.mixed_effects
    on the stacked design built here: the A - B column at +-1/2 and one column per subject."""
    st = _paired_study(tmp_path, rng)
    n = st["n"]
    a, b = st["maps"]("a", "effect"), st["maps"]("b", "effect")
    va, vb = st["maps"]("a", "variance"), st["maps"]("b", "variance")
    res = SecondLevel(paired=True, variances=va[::-1] + vb).fit(a[3:] + a[:3] + b[::-1], tmp_path / "g")
    X = np.column_stack([np.r_[np.full(n, 0.5), np.full(n, -0.5)], np.vstack([np.eye(n), np.eye(n)])])
    ref = voxfit.mixed_effects(X, st["Y"], st["V"], {"d": [1] + [0] * n})
    keep = res.masker.mask
    npt.assert_allclose(res.parametric["intercept"].t, ref.contrasts["d"].t[keep], rtol=1e-6)
    npt.assert_allclose(res.parametric["intercept"].effect, ref.contrasts["d"].effect[keep], rtol=1e-6)
    npt.assert_allclose(res.mixed.between_variance, ref.between_variance[:, keep], rtol=1e-6, atol=1e-9)
    assert res.parametric["intercept"].dof == n - 1
    rows = json.loads((tmp_path / "g" / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["rows"]
    order = [*range(4, n + 1), 1, 2, 3]  # the A maps' order as given; B's rows follow A's subjects
    assert [(r["condition"], r["subject"]) for r in rows] == [(c, f"sub-{k:02d}") for c in "AB" for k in order]
    assert all(Path(r["variance_map"]).name == Path(r["map"]).name.replace("effect", "variance") for r in rows)
    assert all(Path(r["variance_map"]).parent == Path(r["map"]).parent for r in rows)


@pytest.mark.parametrize("grouping", ["each subject", "by condition", "pairs of subjects"])
@ONE_SEED
def test_paired_variance_groups_are_groups_of_subjects(tmp_path, rng, capsys, grouping):
    """--paired with a design.grp over the 2n maps (A then B): a group of one subject's two maps (two maps, one
    subject: 19% of null voxels below p < 0.05, its between-subject variance 0 in half the voxels) and groups that
    split a subject's A and B maps (an internal error: a singular matrix) are refused in one line; groups of
    several subjects fit."""
    st = _paired_study(tmp_path, rng)
    n = st["n"]
    labels = {
        "each subject": list(range(1, n + 1)) * 2,
        "by condition": [1] * n + [2] * n,
        "pairs of subjects": [k // 2 + 1 for k in range(n)] * 2,
    }[grouping]
    grp = tmp_path / "design.grp"
    grp.write_text(f"/NumWaves 1\n/NumPoints {2 * n}\n/Matrix\n" + "\n".join(map(str, labels)) + "\n")
    maps = [str(p) for c in "ab" for p in st["maps"](c, "effect")]
    variances = [str(p) for c in "ab" for p in st["maps"](c, "variance")]
    out = tmp_path / "g"
    code = main(["group", *maps, "--paired", "--variances", *variances, "--grp", str(grp), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    if grouping == "pairs of subjects":
        assert code == 0 and (out / "model.json").exists(), err
        return
    said = "holds one subject" if grouping == "each subject" else "put a subject's A and B maps in different groups"
    assert code == 2 and err.count("\n") == 1 and said in err and not out.exists(), err


@ONE_SEED
def test_a_paired_grp_follows_the_maps_as_given_when_b_is_in_another_order(tmp_path, rng, capsys):
    """B's maps given in another subjects' order than A's (paired by sub-<label>) with a design.grp right for the
    maps as given: its B half was read in A's order, so it was refused ("put a subject's A and B maps in different
    groups") and a .grp wrong for the maps as given was taken. The groups follow the maps as given."""
    st = _paired_study(tmp_path, rng)
    n = st["n"]
    a, b = st["maps"]("a", "effect"), st["maps"]("b", "effect")[::-1]
    va, vb = st["maps"]("a", "variance"), st["maps"]("b", "variance")[::-1]
    pairs = [k // 4 + 1 for k in range(n)]  # subjects 1-4 in group 1, 5-8 in group 2
    for name, labels in (("given", pairs + pairs[::-1]), ("a_order", pairs + pairs)):
        (tmp_path / f"{name}.grp").write_text(
            f"/NumWaves 1\n/NumPoints {2 * n}\n/Matrix\n" + "\n".join(map(str, labels))
        )
    args = ["group", *map(str, a + b), "--paired", "--variances", *map(str, va + vb), "--quiet"]
    assert main([*args, "--grp", str(tmp_path / "given.grp"), "-o", str(tmp_path / "g")]) == 0, capsys.readouterr().err
    same = ["group", *map(str, a + b[::-1]), "--paired", "--variances", *map(str, va + vb[::-1]), "--quiet"]
    assert main([*same, "--grp", str(tmp_path / "a_order.grp"), "-o", str(tmp_path / "ref")]) == 0
    t = [
        np.asarray(nib.load(next((tmp_path / f).glob("contrast-intercept_stat-t_statmap.*"))).dataobj)
        for f in "g ref".split()
    ]
    npt.assert_array_equal(t[0], t[1])
    capsys.readouterr()
    assert main([*args, "--grp", str(tmp_path / "a_order.grp"), "-o", str(tmp_path / "wrong")]) == 2
    assert "put a subject's A and B maps in different groups" in capsys.readouterr().err


def test_paired_fixed_model_is_the_precision_weighted_paired_difference(tmp_path, rng):
    """Fixed effects on the paired design equal, by hand, the precision-weighted mean of the differences
    A - B, each weighted by 1 / (var_A + var_B), its variance 1 / sum of the weights; with equal variances,
    the plain mean difference and 2 v / n. dof: with dof='residual' (flameo's), the sum of the first-level dof
    minus the rank (n + 1)."""
    st = _paired_study(tmp_path, rng)
    n = st["n"]
    effects = st["maps"]("a", "effect") + st["maps"]("b", "effect")
    variances = st["maps"]("a", "variance") + st["maps"]("b", "variance")
    res = SecondLevel(paired=True, variances=variances, model="fixed", first_level_dof=20, dof="residual").fit(effects)
    keep = res.masker.mask
    d = st["Y"][:n] - st["Y"][n:]
    w = 1 / (st["V"][:n] + st["V"][n:])
    effect, variance = (w * d).sum(0) / w.sum(0), 1 / w.sum(0)
    stats = res.parametric["intercept"]
    npt.assert_allclose(stats.effect, effect[keep], rtol=1e-6)
    npt.assert_allclose(stats.t, (effect / np.sqrt(variance))[keep], rtol=1e-6)
    assert stats.dof == 2 * n * 20 - (n + 1)
    for path in variances:  # every first-level variance 2.5: the plain mean difference, variance 2 * 2.5 / n
        nib.save(nib.Nifti1Image(np.full(SHAPE, 2.5, np.float32), np.eye(4)), path)
    equal = SecondLevel(paired=True, variances=variances, model="fixed").fit(effects).parametric["intercept"]
    npt.assert_allclose(equal.effect, d.mean(0)[keep], rtol=1e-6)
    npt.assert_allclose(equal.t, (d.mean(0) / np.sqrt(2 * 2.5 / n))[keep], rtol=1e-6)
    assert equal.dof == n - 1


@ONE_SEED
def test_paired_4d_pair_equals_the_files(tmp_path, rng):
    """One 4-D effect file of 2n volumes (A then B) with its 4-D variance file: the numbers of the files."""
    st = _paired_study(tmp_path, rng)
    n = st["n"]
    files = SecondLevel(paired=True, variances=st["maps"]("a", "variance") + st["maps"]("b", "variance")).fit(
        st["maps"]("a", "effect") + st["maps"]("b", "effect")
    )
    for name, values in (("effects", st["Y"]), ("variances", st["V"])):
        nib.save(
            nib.Nifti1Image(values.T.reshape((*SHAPE, 2 * n), order="F").astype(np.float32), np.eye(4)),
            tmp_path / f"{name}.nii.gz",
        )
    four_d = SecondLevel(paired=True, variances=tmp_path / "variances.nii.gz").fit(tmp_path / "effects.nii.gz")
    npt.assert_allclose(four_d.parametric["intercept"].t, files.parametric["intercept"].t, rtol=1e-6)


@pytest.mark.parametrize(
    "case, message",
    [
        ("other-subject", "--paired: conditions A and B hold different subjects, only in A (first half): sub-01"),
        ("odd", "--paired needs the effect maps of condition A then those of B (an even number); got 15"),
        ("fewer-variances", "--paired: 16 effect maps but 14 variance maps"),
    ],
)
@ONE_SEED
def test_paired_refusals_are_one_line(tmp_path, rng, capsys, case, message):
    st = _paired_study(tmp_path, rng)
    effects = st["maps"]("a", "effect") + st["maps"]("b", "effect")
    variances = st["maps"]("a", "variance") + st["maps"]("b", "variance")
    if case == "other-subject":  # B's sub-01 maps renamed sub-09: a subject of B only
        for stat, paths in (("effect", effects), ("variance", variances)):
            moved = tmp_path / "b" / f"sub-09_stat-{stat}.nii"
            paths[st["n"]].rename(moved)
            paths[st["n"]] = moved
    elif case == "odd":
        effects, variances = effects[:-1], variances[:-1]
    else:
        variances = variances[1:-1]
    out = tmp_path / "refused"
    argv = ["group", *map(str, effects), "--paired", "--variances", *map(str, variances), "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def _dof_maps(study, rng) -> np.ndarray:
    """A first-level dof map per subject (10 to 40, varying over voxels), written beside its maps."""
    dof = rng.integers(10, 40, (study["n"], *SHAPE)).astype(np.float32)
    for k, path in enumerate(_maps(study, "stat-dof.nii.gz")):
        nib.save(nib.Nifti1Image(dof[k], np.eye(4)), path)
    return dof.reshape(N, -1, order="F")


def test_first_level_dof_maps_give_the_fixed_effects_dof_per_voxel(study, rng, capsys):
    """--first-level-dof as maps (one per subject, given in another order, matched by subject): with --dof residual
    the dof at each voxel is the sum of the subjects' minus the rank (flameo's), written as stat-dof; p from
    scipy's t with it. One map for every subject, and a 4-D file of one volume per subject, give the same. By
    default, each subject's dof at each voxel enter Kenward-Roger's terms: the contrast's dof map is the engine's
    with the dof maps as (n, V) arrays (stat-dof, flameo's, is not written)."""
    from scipy import stats as sps

    dof = _dof_maps(study, rng)
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    dof_files = list(map(str, _maps(study, "stat-dof.nii.gz")))
    out = study["dir"] / "g"
    default = ["group", *effects, "--variances", *variances, "--model", "fixed", "--quiet"]
    assert main([*default, "--first-level-dof", *dof_files[::-1], "-o", str(study["dir"] / "kr")]) == 0
    assert not (study["dir"] / "kr" / "stat-dof_statmap.nii.gz").exists()
    got = np.asarray(nib.load(study["dir"] / "kr" / "contrast-intercept_stat-dof_statmap.nii.gz").dataobj)
    Y = np.stack([np.asarray(nib.load(p).dataobj).reshape(-1, order="F") for p in effects])
    S = np.stack([np.asarray(nib.load(p).dataobj).reshape(-1, order="F") for p in variances])
    engine = voxfit.mixed_effects(np.ones((N, 1)), Y, S, {"m": [1.0]}, model="fixed", first_level_dof=dof)
    npt.assert_allclose(got.reshape(-1, order="F"), engine.contrasts["m"].dof, rtol=1e-5)
    argv = [*default, "--dof", "residual"]
    assert main([*argv, "--first-level-dof", *dof_files[::-1], "-o", str(out)]) == 0
    expected = dof.sum(0) - 1
    got = np.asarray(nib.load(out / "stat-dof_statmap.nii.gz").dataobj).reshape(-1, order="F")
    npt.assert_allclose(got, expected, rtol=1e-6)
    t = np.asarray(nib.load(out / "contrast-intercept_stat-t_statmap.nii.gz").dataobj).reshape(-1, order="F")
    p = np.asarray(nib.load(out / "contrast-intercept_stat-p_statmap.nii.gz").dataobj).reshape(-1, order="F")
    npt.assert_allclose(p, sps.t.sf(t, expected), rtol=1e-4)
    rows = json.loads((out / "model.json").read_text())["settings"]["mixed_effects"]["pairing"]["rows"]
    assert [Path(r["dof_map"]).parent.name for r in rows] == [f"sub-{s}" for s in study["subjects"]]
    four_d = study["dir"] / "dof.nii.gz"
    nib.save(nib.Nifti1Image(dof.T.reshape((*SHAPE, N), order="F"), np.eye(4)), four_d)
    assert main([*argv, "--first-level-dof", str(four_d), "-o", str(study["dir"] / "h")]) == 0
    got = np.asarray(nib.load(study["dir"] / "h" / "stat-dof_statmap.nii.gz").dataobj).reshape(-1, order="F")
    npt.assert_allclose(got, expected, rtol=1e-6)
    assert main([*argv, "--first-level-dof", dof_files[0], "-o", str(study["dir"] / "i")]) == 0
    got = np.asarray(nib.load(study["dir"] / "i" / "stat-dof_statmap.nii.gz").dataobj).reshape(-1, order="F")
    npt.assert_allclose(got, N * dof[0] - 1, rtol=1e-6)
    constant = study["dir"] / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.full(SHAPE, 25.0, np.float32), np.eye(4)), constant)
    assert main([*argv, "--first-level-dof", str(constant), "-o", str(study["dir"] / "j")]) == 0
    assert not (study["dir"] / "j" / "stat-dof_statmap.nii.gz").exists()  # (written only where it varies)
    record = json.loads((study["dir"] / "j" / "model.json").read_text())
    assert record["contrasts"]["intercept"]["dof"] == N * 25 - 1


@pytest.mark.usefixtures("no_reserve")
@ONE_SEED
def test_dof_maps_over_the_cap(large_study, rng, monkeypatch):
    """Dof maps with the maps read by columns give the in-memory numbers (the cap holds the maps' dof, each
    subject's at every voxel, beside the results: 24K held the results alone)."""
    from voxfit.models import second_level

    study = large_study
    _dof_maps(study, rng)
    kw = {
        "variances": _maps(study, "stat-variance.nii.gz"),
        "model": "fixed",
        "first_level_dof": _maps(study, "stat-dof.nii.gz"),
    }
    whole = SecondLevel(**kw).fit(_maps(study, "stat-effect.nii.gz"))
    read, columns_of = [], second_level.columns_of
    monkeypatch.setattr(second_level, "columns_of", lambda *a: read.append(1) or columns_of(*a))
    streamed = SecondLevel(max_memory="28K", **kw).fit(_maps(study, "stat-effect.nii.gz"))
    assert read  # (read by columns)
    npt.assert_allclose(streamed.parametric["intercept"].dof, whole.parametric["intercept"].dof, rtol=1e-12)
    npt.assert_allclose(streamed.parametric["intercept"].p, whole.parametric["intercept"].p, rtol=1e-10)


@pytest.mark.parametrize(
    "case, message",
    [
        ("zero", "is not positive and finite at 1 fitted voxels"),
        ("count", "--first-level-dof: 9 maps for 10 rows"),
        ("missing", "with an effect map but no dof map: sub-01"),
    ],
)
@ONE_SEED
def test_dof_map_refusals_are_one_line(study, rng, capsys, case, message):
    dof = _dof_maps(study, rng)
    files = list(map(str, _maps(study, "stat-dof.nii.gz")))
    if case == "zero":
        bad = dof[3].reshape(SHAPE, order="F").copy()
        bad[1, 1, 1] = 0
        nib.save(nib.Nifti1Image(bad, np.eye(4)), files[3])
    elif case == "count":
        files = files[1:]
    else:
        moved = Path(files[0]).parent.parent / "sub-77" / "stat-dof.nii.gz"
        moved.parent.mkdir()
        Path(files[0]).rename(moved)
        files[0] = str(moved)
    effects = list(map(str, _maps(study, "stat-effect.nii.gz")))
    variances = list(map(str, _maps(study, "stat-variance.nii.gz")))
    out = study["dir"] / "refused"
    argv = ["group", *effects, "--variances", *variances, "--model", "fixed", "--first-level-dof", *files]
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


@ONE_SEED
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


@ONE_SEED
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


@ONE_SEED
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
    dof = json.loads((tmp_path / "g" / "model.json").read_text())["contrasts"]["intercept"]["dof"]
    assert 20 <= dof["min"] <= dof["max"] <= 4 * 20  # (Kenward-Roger's effective dof)
    assert main([*base, "--first-level-dof", "20", "--dof", "residual", "-o", str(tmp_path / "r"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r" / "model.json").read_text())["contrasts"]["intercept"]["dof"] == 4 * 20 - 1
    capsys.readouterr()
    assert main([*base, "--first-level-dof", "-3", "-o", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the first-level dof must be a positive number" in err
    with pytest.raises(voxfit.exceptions.InputError, match="2 first-level dof values for 4 rows"):
        SecondLevel(first_level_contrast="1", model="fixed", first_level_dof=[10, 12]).fit(folders)
    # a FEAT stats/dof that gives no dof was taken as missing: fixed effects on n - rank, a note alone (exit 0)
    for k, text in enumerate(["20\n", "abc\n", "30\n", "40\n"]):
        (Path(folders[k]) / "stats" / "dof").write_text(text)
    assert main([*base, "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sub-02.feat/stats/dof holds 'abc', not FEAT's residual dof" in err
    assert "give --first-level-dof" in err and not (tmp_path / "b").exists()
    assert main([*base, "--first-level-dof", "20", "-o", str(tmp_path / "o"), "--quiet"]) == 0  # (replaced)
    assert main([*base[:-2], "--model", "mixed", "-o", str(tmp_path / "m"), "--quiet"]) == 0  # (not used)
    # a FEAT folder without its dof (FEAT writes stats/dof, or a higher level's tdof_t<N>: a folder copied short)
    # had a fixed model fitted on n - rank dof with a note, exit 0, where a dof file that says none is refused
    (Path(folders[1]) / "stats" / "dof").unlink()
    assert main([*base, "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sub-02.feat has neither stats/dof nor stats/tdof_t1 (FEAT writes" in err, err
    assert "give --first-level-dof" in err and not (tmp_path / "c").exists()
    assert main([*base[:-2], "--model", "mixed", "-o", str(tmp_path / "m2"), "--quiet"]) == 0  # (not used)
    # --paired: condition B's folder without its dof was dropped when A's had theirs (exit 0 on n - rank)
    b = [shutil.copytree(f, tmp_path / "B" / Path(f).name) for f in folders]
    (Path(folders[1]) / "stats" / "dof").write_text("25\n")
    for first, second in ((folders, b), (b, folders)):
        paired = ["group", "--paired", "--first-level", *map(str, first), *map(str, second), *base[-4:]]
        assert main([*paired, "-o", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "B/sub-02.feat has neither stats/dof nor stats/tdof_t1" in err, err


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sub-01_task-faces_contrast-a_stat-t_statmap.nii.gz", "t"),
        ("sub-01_stat-z_statmap.nii", "z"),
        ("sub-01_contrast-b_stat-F_statmap.dscalar.nii", "F"),
        ("tstat1.nii.gz", "t"),
        ("zfstat2.nii.gz", "z"),
        ("spmT_0003.nii", "t"),
        ("spmF_0001.nii", "F"),
        ("sub-01_stat-effect_statmap.nii.gz", None),
        ("sub-01_contrast-t_stat-variance_statmap.nii.gz", None),
        ("cope1.nii.gz", None),
        ("con_0001.nii", None),
        ("sub-01_stat-tmap.nii.gz", None),
    ],
)
def test_statistic_kind_from_file_names(name, kind):
    from voxfit.design.paired_maps import statistic_kind

    assert statistic_kind(Path("/data") / name) == kind


@ONE_SEED
def test_maps_named_as_statistics_warned_of_as_effects_and_refused_as_variances(study, capsys):
    """t maps given as effect maps: a warning (a group model of z maps is a choice some make; the user is told
    what it tests); given as variance maps: exit 2 in one line naming the file, nothing written (a t map is no
    variance: its negative values would drop voxels)."""
    effects = _maps(study, "stat-effect.nii.gz")
    named = []
    for k, path in enumerate(effects):
        target = path.with_name(f"sub-{k + 1:02d}_stat-t_statmap.nii.gz")
        shutil.copy(path, target)
        named.append(str(target))
    assert main(["group", *named, "-o", str(study["dir"] / "t")]) == 0
    err = capsys.readouterr().err
    assert "is named as a t map: a group model of t maps tests their mean" in err and f"{N - 1} more" in err, err
    variances = ["--variances", *named]
    out = study["dir"] / "refused"
    assert main(["group", *map(str, effects), *variances, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is named as a t map; --variances takes each effect's first-level" in err, err
    assert not out.exists()
    # SPM's ResMS (a group tester's: accepted as variances, without a word), in each subject's SPM folder
    resms = []
    for path in _maps(study, "stat-variance.nii.gz"):
        resms.append(str(path.with_name("ResMS.nii")))
        nib.save(nib.load(path), resms[-1])
    assert main(["group", *map(str, effects), "--variances", *resms, "-o", str(out)]) == 2
    assert "is SPM's ResMS, the residual variance of the fit, not a contrast's variance" in capsys.readouterr().err
