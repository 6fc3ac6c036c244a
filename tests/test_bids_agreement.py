"""voxfit bids against nilearn on the same synthetic BIDS dataset (the issue's agreement targets, CI-sized).

nilearn reads the dataset itself (``first_level_from_bids``: events, confounds, repetition time) and fits each
run with ``FirstLevelModel`` for the same model as the BIDS Stats Model below: the events' two conditions with
the Glover HRF, the six motion columns, a cosine high-pass filter at 0.01 Hz and a constant, OLS, fMRIPrep's
mask, no scaling. voxfit runs ``voxfit bids ... dataset --noise ols --convolution nilearn --group-model ols``.

- run level: the design columns and the z maps equal nilearn's (max |dz| <= 1e-4);
- subject level: the fixed-effects effect equals nilearn's ``compute_fixed_effects`` on the same run maps, and the
  variance nilearn's with the term for the estimated weights' error that nilearn leaves out;
- dataset level: the z maps equal ``SecondLevelModel``'s one-sample test on the same subject effect maps (1e-6).
"""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("bids")
pytest.importorskip("nilearn")

from voxfit.bids.synthetic import MOTION, make_dataset, nilearn_model  # noqa: E402
from voxfit.cli import main  # noqa: E402

SPACE = "MNI152NLin2009cAsym"
CONTRASTS = {"IvC": "incongruent - congruent", "congruent": "congruent"}
MODEL = nilearn_model(name="agreement")


def _data(path):
    return np.asarray(nib.load(str(path)).get_fdata())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The dataset, voxfit's study of it, and nilearn's run-level fits: ``{(subject, run): fitted model}``."""
    from nilearn.glm.first_level import first_level_from_bids
    from sklearn.base import clone

    tmp = tmp_path_factory.mktemp("agreement")
    ds = make_dataset(tmp / "ds", subjects=3, runs=2, scans=60, shape=(10, 12, 10))
    model = tmp / "model_smdl.json"
    model.write_text(json.dumps(MODEL))
    out = tmp / "out"
    argv = ["bids", str(ds.root), str(out), "dataset", "--derivatives", str(ds.derivatives), "--model", str(model)]
    assert main([*argv, "--noise", "ols", "--convolution", "nilearn", "--group-model", "ols", "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models, imgs, events, confounds = first_level_from_bids(
            str(ds.root),
            "stroop",
            space_label=SPACE,
            img_filters=[("desc", "preproc")],
            derivatives_folder="derivatives/fmriprep",
            hrf_model="glover",
            high_pass=0.01,
            noise_model="ols",
            slice_time_ref=None,
            signal_scaling=False,
            minimize_memory=False,
        )
        # fMRIPrep's StartTime (the middle of the 8 slice times, 0.875 s of the 2 s TR) sets both tools' sampling
        assert {m.slice_time_ref for m in models} == {0.875 / 2.0}
        fits = {}
        for m, runs, ev, conf in zip(models, imgs, events, confounds):
            sub = m.subject_label
            m.mask_img = str(next((ds.derivatives / f"sub-{sub}" / "func").glob("*run-1*_desc-brain_mask.nii.gz")))
            for k, run in enumerate(runs):
                run_label = int(str(run).split("_run-")[1].split("_")[0])
                fits[sub, run_label] = clone(m).fit(run, events=ev[k], confounds=conf[k][list(MOTION)])
    brain = _data(next(ds.derivatives.glob("sub-01/func/*run-1*_desc-brain_mask.nii.gz"))) > 0
    return ds, out, fits, brain


def _run_stem(out, sub, run):
    return out / f"sub-{sub}" / "node-run" / f"sub-{sub}_task-stroop_run-{run}_space-{SPACE}"


def test_run_level_designs_equal_nilearns(study):
    ds, out, fits, _ = study
    assert len(fits) == 6
    for (sub, run), fit in fits.items():
        ours = pd.read_csv(f"{_run_stem(out, sub, run)}_design.tsv", sep="\t")
        theirs = fit.design_matrices_[0]
        for column in ("congruent", "incongruent", *MOTION, "constant"):
            np.testing.assert_allclose(ours[column], theirs[column], atol=1e-6, err_msg=f"{sub} {run} {column}")
        ours_drifts = ours[[c for c in ours if c.startswith("drift")]].to_numpy()
        theirs_drifts = theirs[[c for c in theirs if c.startswith("drift")]].to_numpy()
        np.testing.assert_allclose(ours_drifts, theirs_drifts, atol=1e-8)


def test_run_level_z_maps_equal_nilearns(study):
    ds, out, fits, brain = study
    for (sub, run), fit in fits.items():
        for name, expression in CONTRASTS.items():
            ours = _data(f"{_run_stem(out, sub, run)}_contrast-{name}_stat-z_statmap.nii.gz")[brain]
            theirs = fit.compute_contrast(expression, output_type="z_score").get_fdata()[brain]
            assert np.max(np.abs(ours - theirs)) <= 1e-4, (sub, run, name)
            assert np.max(np.abs(theirs)) > 1  # not two maps of zeros


def test_subject_level_fixed_effects_equal_nilearns(study):
    """The effect is nilearn's precision-weighted one; the variance nilearn's ``1 / sum_r 1 / v_r`` times Meier's
    (1953) term for the weights' error, ``1 + 4 sum_r f_r (1 - f_r) / d_r`` (f_r each run's share of the
    precision, d_r its dof: n - rank of nilearn's design), which nilearn leaves out."""
    from nilearn.glm.contrasts import compute_fixed_effects

    ds, out, fits, brain = study
    for sub in ds.subjects:
        dofs = [60 - np.linalg.matrix_rank(fits[sub, r].design_matrices_[0].to_numpy()) for r in (1, 2)]
        for name in CONTRASTS:
            runs = [_run_stem(out, sub, r) for r in (1, 2)]
            effects = [f"{p}_contrast-{name}_stat-effect_statmap.nii.gz" for p in runs]
            variances = [f"{p}_contrast-{name}_stat-variance_statmap.nii.gz" for p in runs]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                effect, variance, *_ = compute_fixed_effects(effects, variances, precision_weighted=True)
            shares = [variance.get_fdata()[brain] / _data(v)[brain] for v in variances]
            meier = 1 + 4 * sum(f * (1 - f) / d for f, d in zip(shares, dofs))
            folder = out / f"sub-{sub}" / "node-subject"
            for ours, expected in (
                ("effect", effect.get_fdata()[brain]),
                ("variance", variance.get_fdata()[brain] * meier),
            ):
                got = _data(folder / f"sub-{sub}_contrast-{name}_stat-{ours}_statmap.nii.gz")[brain]
                scale = np.max(np.abs(expected))  # (nilearn's maps are float32: rounding relative to the map)
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{sub} {name} {ours}")
            assert meier.min() > 1.01  # (two runs of 60 scans: the term is seen)


def test_dataset_level_equals_second_level_model_on_the_subject_maps(study):
    from nilearn.glm.second_level import SecondLevelModel

    ds, out, _, brain = study
    for name in CONTRASTS:
        effects = [
            str(out / f"sub-{s}" / "node-subject" / f"sub-{s}_contrast-{name}_stat-effect_statmap.nii.gz")
            for s in ds.subjects
        ]
        model = SecondLevelModel(mask_img=nib.Nifti1Image(brain.astype(np.uint8), nib.load(effects[0]).affine))
        model.fit(effects, design_matrix=pd.DataFrame({"intercept": np.ones(len(effects))}))
        theirs = model.compute_contrast("intercept", output_type="z_score").get_fdata()[brain]
        ours = _data(out / "node-dataset" / f"contrast-{name}_stat-z_statmap.nii.gz")[brain]
        assert np.max(np.abs(ours - theirs)) <= 1e-6, name
