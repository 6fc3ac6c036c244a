"""voxfit fit --preset (each tool's defaults, printed and recorded; explicit options win), the validated fMRI
default noise model (--events: FMRI_NOISE; --design: ols) and --confounds-strategy on the command line."""

import json

import numpy as np
import pytest

from voxfit.cli import FMRI_NOISE_CLI, PRESETS, main

from .imaging import volume_data, write_nifti

EVENTS = "onset\tduration\ttrial_type\n4\t6\tfaces\n30\t6\thouses\n50\t6\tfaces\n"


@pytest.fixture
def run(tmp_path, rng):
    data = volume_data(rng, n=40)
    boxcar = np.zeros(40)
    boxcar[[3, 4, 5, 6, 27, 28, 29]] = 1.0  # a response to faces (4 s and 50 s), for ar1-global's pooled voxels
    data = data + 5 * data.std(axis=-1, keepdims=True) * boxcar
    bold = write_nifti(tmp_path / "bold.nii.gz", data)
    events = tmp_path / "events.tsv"
    events.write_text(EVENTS)
    return bold, events


def _fit(tmp_path, run, *options, name="out"):
    bold, events = run
    out = tmp_path / name
    argv = ["fit", str(bold), "--events", str(events), "--tr", "2", "--contrast", "f=faces", "-o", str(out)]
    assert main([*argv, *options]) == 0
    return json.loads((out / "model.json").read_text())["settings"]


def test_the_cli_default_is_the_models_default():
    from voxfit.models._routing import FMRI_NOISE, fmri_noise
    from voxfit.models.first_level import FirstLevel

    assert FMRI_NOISE_CLI == FMRI_NOISE != "ols" and FirstLevel(tr=2.0).noise is None  # (decided per run)
    # 70 scans per coefficient, from AR(1) to AR(12)
    orders = [12, 12, 12, 11, 8, 4, 2, 1, 1]  # with the pooled long-lag correction
    assert [fmri_noise(n) for n in (1200, 857, 840, 839, 600, 300, 200, 139, 40)] == [f"ar{p}+lags" for p in orders]


def test_events_default_to_the_fmri_noise_model_and_designs_to_ols(tmp_path, run, rng):
    settings = _fit(tmp_path, run)
    assert settings["noise_model"] == "ar1+lags"  # (70 scans per coefficient: AR(1) for a run of 40 scans)
    assert settings["noise"]["default"] is True and "resting-state" in settings["noise"]["why"]
    design = tmp_path / "design.tsv"
    design.write_text("a\tconstant\n" + "".join(f"{rng.standard_normal():.4f}\t1\n" for _ in range(40)))
    out = tmp_path / "d"
    assert main(["fit", str(run[0]), "--design", str(design), "--contrast", "a", "-o", str(out), "--quiet"]) == 0
    settings = json.loads((out / "model.json").read_text())["settings"]
    assert settings["noise_model"] == "ols" and settings["noise"]["default"] is True
    assert _fit(tmp_path, run, "--noise", "ar1", name="o2")["noise"] == {"model": "ar1", "default": False}


@pytest.mark.parametrize("preset", ["spm", "fsl", "nilearn"])
def test_presets_are_applied_printed_and_recorded(tmp_path, run, capsys, preset):
    settings = _fit(tmp_path, run, "--preset", preset)
    printed = capsys.readouterr().out
    assert f"preset {preset}:" in printed
    record = settings["preset"]
    assert record["name"] == preset and record["applied"] == PRESETS[preset] and not record["overridden"]
    assert settings["noise_model"] == PRESETS[preset]["noise"] and settings["scaling"] == PRESETS[preset]["scaling"]
    design = settings.get("design") or {}
    assert isinstance(design, dict)


def test_explicit_options_override_a_preset(tmp_path, run, capsys):
    settings = _fit(tmp_path, run, "--preset", "spm", "--noise", "ar2", "--hrf", "glover", "--scaling", "none")
    record = settings["preset"]
    assert record["overridden"] == {"hrf": "glover", "noise": "ar2", "scaling": "none"}
    assert "noise" not in record["applied"] and record["applied"]["high_pass"] == "128"
    assert settings["noise_model"] == "ar2" and settings["scaling"] == "none"
    assert "given explicitly: hrf glover, noise ar2, scaling none" in capsys.readouterr().out


def test_a_preset_with_slice_time_ref_yields_to_an_explicit_microtime_onset(tmp_path, run):
    record = _fit(tmp_path, run, "--preset", "nilearn", "--convolution", "spm", "--microtime-onset", "1")["preset"]
    assert "slice_time_ref" not in record["applied"]


def test_bad_presets_and_strategies_exit_2(tmp_path, run, capsys):
    bold, events = run
    base = ["fit", str(bold), "--events", str(events), "--tr", "2", "--contrast", "f=faces", "-o", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--preset", "afni"])
    assert exit_.value.code == 2
    assert main([*base, "--confounds-strategy", "simple"]) == 2
    assert "needs --confounds" in capsys.readouterr().err


def test_confounds_strategy_censors_scans_in_a_fit(tmp_path, run):
    """scrubbing from the command line: the censored scans get indicator columns, the dof falls by one each,
    model.json records the strategy and the scans."""
    import pandas as pd

    from voxfit.design.confounds import MOTION

    n = 40
    rng = np.random.default_rng(3)
    table = {m: rng.standard_normal(n) * 0.01 for m in MOTION}
    table.update({c: rng.standard_normal(n) for c in ("csf", "white_matter")})
    table["framewise_displacement"] = np.r_[np.nan, np.full(n - 1, 0.1)]
    table["framewise_displacement"][[12, 25]] = 1.0
    table["std_dvars"] = np.r_[np.nan, np.ones(n - 1)]
    path = tmp_path / "confounds.tsv"
    pd.DataFrame(table).to_csv(path, sep="\t", index=False, na_rep="n/a")
    options = ["--confounds", str(path), "--confounds-strategy", "scrubbing:motion=basic,wm_csf=basic,scrub=0"]
    settings = _fit(tmp_path, run, *options, "--noise", "ols")
    assert settings["confounds"]["censored_scans"] == [12, 25]
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert {"censored_12", "censored_25"} <= set(model["design"]["columns"])
    plain = _fit(
        tmp_path,
        run,
        "--confounds",
        str(path),
        "--confounds-columns",
        "trans_*,rot_*,csf,white_matter",
        "--noise",
        "ols",
        name="plain",
    )
    assert plain.get("confounds") is None
    assert json.loads((tmp_path / "plain" / "model.json").read_text())["design"]["dof"] == model["design"]["dof"] + 2


def test_the_fsl_presets_hrf_is_feats_double_gamma():
    """FEAT's double-gamma HRF: a gamma of mean 6 s and sd sqrt(6) s less one of mean 16 s and sd 4 s over 6 (FSL's
    feat_model), SPM's canonical HRF's gamma functions; the fsl preset took Glover's (undershoot -0.019 of its peak
    against -0.090: a first-level tester's). The preset's HRF against FEAT's gammas from scipy, up to scale."""
    from scipy import stats

    from voxfit.design.hrf import spm_hrf

    assert PRESETS["fsl"]["hrf"].split("+")[0] == "spm"
    dt = 0.1
    t = np.arange(0, 32, dt)
    feat = stats.gamma.pdf(t, 6, scale=1) - stats.gamma.pdf(t, 16, scale=1) / 6  # (shape mean^2/var, scale var/mean)
    ours = spm_hrf(dt, T=1)[: t.size]
    np.testing.assert_allclose(ours / ours.max(), feat / feat.max(), atol=1e-6)
