"""voxfit bids on real-dataset terms: smoothing before the run-level fit (against nilearn's smooth_img), runs
fitted in worker processes and on a Dask cluster (against the serial study), a progress bar over runs, and
failed runs said where they are left out."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("bids")

from voxfit.bids.synthetic import make_dataset  # noqa: E402
from voxfit.cli import main  # noqa: E402

SPACE = "MNI152NLin2009cAsym"


def _maps(path):
    img = nib.load(str(path))
    if isinstance(img, nib.GiftiImage):
        return np.vstack([d.data for d in img.darrays]).ravel()
    return np.asarray(img.get_fdata()).ravel(order="F")


def _scans(reader, max_bytes):
    """Every scan a reader yields, as (x, y, z, scans)."""
    x, y, z = reader.geometry.shape
    blocks = np.concatenate([b.copy() for _, b in reader.iter_scans(max_bytes)])
    return blocks.reshape(-1, z, y, x).transpose(3, 2, 1, 0)


@pytest.mark.parametrize(("dtype", "fwhm"), [(np.float32, 6.0), (np.float64, 4.0), (np.int16, 8.0)])
def test_smoothing_equals_nilearn_on_an_oblique_anisotropic_grid(tmp_path, dtype, fwhm):
    """FWHM in mm on voxels of 2 x 3 x 2.5 mm (rotated axes: the sizes are the columns' norms), NaN and inf set
    to 0 first, the edges mirrored, float32 kept; a slab of two scans at a time gives the whole-run result."""
    from nilearn.image import smooth_img

    from voxfit.io import open_reader
    from voxfit.io.smoothing import SmoothedReader, fwhm_sigmas

    rng = np.random.default_rng(1)
    data = 100 + 10 * rng.standard_normal((9, 11, 8, 5))
    if dtype is np.int16:
        data = np.round(data * 50)
    data = data.astype(dtype)
    if dtype is not np.int16:
        data[2, 3, 4, 1], data[0, 0, 0, :] = np.nan, np.inf
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 3.0, 2.5])
    img = nib.Nifti1Image(data, affine)
    if dtype is np.int16:
        img.header.set_slope_inter(0.02, 3.0)
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    reference = smooth_img(str(path), fwhm).get_fdata(dtype=np.float64)
    reader = SmoothedReader(open_reader(str(path)), fwhm)
    got = _scans(reader, 2 * data[..., 0].size * reader.dtype.itemsize)
    assert got.dtype == (np.float64 if dtype is np.float64 else np.float32)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    np.testing.assert_allclose(fwhm_sigmas(affine, fwhm), fwhm / np.sqrt(8 * np.log(2)) / np.array([2.0, 3.0, 2.5]))


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """A study of 1 subject x 2 runs fitted in this process, to the subject level (two runs: one for each of two
    workers; a second subject added nothing the comparisons below see but its 2 runs' fits in each study)."""
    from voxfit.bids import run

    tmp = tmp_path_factory.mktemp("serial")
    study = make_dataset(tmp / "ds", subjects=1, runs=2)
    result = run(study.root, tmp / "out", derivatives=[study.derivatives], level="subject", progress=False)
    assert result.ok and result.workers == 0
    return study, tmp / "out", result


def _same_maps(a: Path, b: Path) -> int:
    names = sorted(p.relative_to(a) for p in a.rglob("*_statmap.nii.gz"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*_statmap.nii.gz"))
    for name in names:
        np.testing.assert_allclose(_maps(b / name), _maps(a / name), rtol=1e-6, atol=1e-6, equal_nan=True)
    return len(names)


def test_runs_in_worker_processes_give_the_serial_numbers(serial, tmp_path, capsys):
    from voxfit.bids import run

    study, out, _ = serial
    result = run(
        study.root, tmp_path / "out", derivatives=[study.derivatives], level="subject", n_jobs=2, progress=True
    )
    assert result.ok and result.workers == 2
    assert _same_maps(out, tmp_path / "out") == 2 * 5 * 2 + 1 * 5 * 2  # runs and subjects, 2 contrasts, 5 maps
    err = capsys.readouterr().err
    assert "runs [" in err and "100.0%" in err  # the bar over runs, when asked for
    assert not list((tmp_path / "out").rglob(".voxfit-partial-*"))


def test_the_warnings_of_runs_in_worker_processes_are_the_studys_own(serial, tmp_path, capfd):
    """Runs fitted in worker processes printed their warnings there: under --quiet too, and each worker its own
    copy (a reviewer's). The study's process says them, as it says a serial study's: each message once."""
    study, _, _ = serial
    for quiet in (True, False):
        args = ["bids", str(study.root), str(tmp_path / str(quiet)), "run", "--derivatives", str(study.derivatives)]
        code = main([*args, "--n-jobs", "2", "--noise", "ar16", *(["--quiet"] if quiet else [])])
        err = capfd.readouterr().err  # (the workers' too: they write to the same descriptor)
        assert code == 0, err
        if quiet:
            assert err == ""
            continue
        warned = [line for line in err.splitlines() if "AR(16) per voxel" in line]
        assert len(warned) == 1 and warned[0].startswith("voxfit: warning: "), err  # (two runs: one message)


def test_runs_on_a_dask_cluster_give_the_serial_numbers(serial, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from voxfit.bids import run

    study, out, _ = serial
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            result = run(
                study.root, tmp_path / "out", derivatives=[study.derivatives], level="subject", scheduler=client
            )
    assert result.ok and result.workers == 0
    assert _same_maps(out, tmp_path / "out") == 30


def test_the_worker_count_follows_the_memory_cap(tmp_path):
    """Each worker gets a run in memory beside its interpreter's reserve, after this process's reserve."""
    from voxfit._execution import Execution
    from voxfit._memory import reserved_bytes
    from voxfit.bids.study import _plan_workers, _RunJob

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1)
    bold = next(study.derivatives.rglob("*desc-preproc_bold.nii.gz"))

    class Run:  # (what the plan reads of a job's run)
        n_scans, entities = study.scans, ()

    Run.bold = bold
    jobs = [_RunJob.__new__(_RunJob) for _ in range(6)]
    for job in jobs:
        object.__setattr__(job, "run", Run)
    reserve = reserved_bytes()
    assert _plan_workers(Execution(n_jobs=4), jobs)[0] == 4
    assert _plan_workers(Execution(n_jobs=8), jobs[:3])[0] == 3
    k, each = _plan_workers(Execution(n_jobs=4, max_memory=reserve + 2 * (reserve + (1 << 20))), jobs)
    assert k == 2 and each.max_memory == reserve + (1 << 20) and each.n_jobs >= 1
    assert _plan_workers(Execution(n_jobs=4, max_memory=2 * reserve), jobs)[0] == 1  # in this process


def test_smoothed_study_equals_a_fit_of_nilearn_smoothed_runs(tmp_path):
    from nilearn.image import smooth_img

    from voxfit.bids import run
    from voxfit.models.glm import fit_images

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1)
    result = run(study.root, tmp_path / "out", derivatives=[study.derivatives], level="run", smoothing=6)
    assert result.ok
    run_dir = tmp_path / "out" / "sub-01" / "node-run"
    stem = f"sub-01_task-stroop_run-1_space-{SPACE}"
    func = study.derivatives / "sub-01" / "func"
    smoothed = smooth_img(str(func / f"{stem}_desc-preproc_bold.nii.gz"), 6)
    noise = json.loads((run_dir / f"{stem}_model.json").read_text())["settings"]["noise_model"]  # (the default)
    ref = fit_images(
        smoothed,
        run_dir / f"{stem}_design.tsv",
        {"congruent": "congruent"},
        mask=func / f"{stem}_desc-brain_mask.nii.gz",
        noise=noise,
    )
    z = _maps(run_dir / f"{stem}_contrast-congruent_stat-z_statmap.nii.gz")
    np.testing.assert_allclose(z, ref.masker.inverse(ref.contrasts["congruent"].z).ravel(), atol=1e-4, equal_nan=True)
    bids = json.loads((run_dir / f"{stem}_model.json").read_text())["settings"]["bids"]
    assert bids["smoothing"]["fwhm_mm"] == 6 and bids["study_settings"]["smoothing"] == 6
    np.testing.assert_allclose(bids["smoothing"]["sigma_voxels"], [6 / 3 / np.sqrt(8 * np.log(2))] * 3)


@pytest.mark.parametrize("space", ["fsaverage5", "fsLR"])
def test_smoothing_is_refused_for_surfaces_in_one_line(tmp_path, capsys, space):
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, space=space, vertices=30)
    args = ["bids", str(study.root), str(tmp_path / "out"), "run", "--derivatives", str(study.derivatives)]
    assert main([*args, "--smoothing", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("voxfit: error: --smoothing is for volumes")
    assert not (tmp_path / "out" / "sub-01").exists()
    # FSL's FILM needs the mesh too: refused before anything is fitted (each run failed alone, saying so)
    assert main([*args, "--preset", "fsl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --noise arma11 (or auto, ar1 .. ar16; beside --preset fsl" in err, err
    assert main([*args, "--preset", "fsl", "--noise", "arma11", "--quiet"]) == 0, capsys.readouterr().err


def test_failed_runs_are_said_where_they_are_left_out(tmp_path, capsys):
    """sub-02 loses one run (confounds of the wrong length), sub-03 both (no events): sub-02's subject node is
    built from its other run and says so, sub-03 is skipped at the subject level with its reason, and the
    dataset node lists the subjects it used and left out."""
    study = make_dataset(tmp_path / "ds", subjects=3, runs=2)
    bad = study.derivatives / "sub-02" / "func" / "sub-02_task-stroop_run-2_desc-confounds_timeseries.tsv"
    bad.write_text("\n".join(bad.read_text().splitlines()[:-3]) + "\n")
    for events in (study.root / "sub-03" / "func").glob("*_events.tsv"):
        events.unlink()
    out = tmp_path / "out"
    args = ["bids", str(study.root), str(out), "dataset", "--derivatives", str(study.derivatives)]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert "1 skipped" in captured.out and "with notes (below)" in captured.out
    assert sum(line.startswith("voxfit: failed: node run") for line in err) == 3
    skipped = [line for line in err if line.startswith("voxfit: skipped:")]
    assert skipped == [skipped[0]] and "node subject, sub-03" in skipped[0] and "run-1" in skipped[0]
    notes = [line for line in err if line.startswith("voxfit: note: node subject, sub-02")]
    assert len(notes) == 1 and "run-2" in notes[0] and str(bad) in notes[0]  # (said once for its two contrasts)
    assert notes[0].startswith("voxfit: note: node subject, sub-02_contrast-congruent and 1 more group: built")
    record = json.loads((out / "sub-02" / "node-subject" / "sub-02_contrast-congruent_model.json").read_text())
    assert any("run-2" in n for n in record["settings"]["bids"]["notes"])
    assert len(record["design"]["rows"]) == 1
    group = json.loads((out / "node-dataset" / "contrast-congruent_model.json").read_text())["settings"]["bids"]
    assert group["subjects_used"] == ["01", "02"] and list(group["subjects_left_out"]) == ["03"]
    assert any("left out: 03" in n for n in group["notes"])
    assert not (out / "sub-03").exists()
    # --quiet ("print nothing but errors"): the failures and skipped groups of its exit 2, not the notes
    assert main([*args, "--quiet"]) == 2
    quiet = capsys.readouterr()
    said = quiet.err.splitlines()
    assert quiet.out == "" and len(said) == 4
    assert all(line.startswith(("voxfit: failed: node run", "voxfit: skipped: node subject")) for line in said)


def test_fmriprep_1_derivatives_described_by_pipeline_description_are_read_without_pybids_warning(tmp_path, capfd):
    """fMRIPrep 1.x described its derivatives with PipelineDescription (BIDS before 1.4), where later versions write
    GeneratedBy. pybids warns that the field was superseded and to run ``pybids upgrade`` on the derivatives: nothing
    a user of those outputs needs to do, and the warning came through on every study of such a dataset (a tester's
    ds000030-shaped data). The study is read as with GeneratedBy, and says nothing of it."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=30, shape=(6, 6, 4))
    description = json.loads((study.derivatives / "dataset_description.json").read_text())
    description["PipelineDescription"] = description.pop("GeneratedBy")[0]
    (study.derivatives / "dataset_description.json").write_text(json.dumps(description))
    out = tmp_path / "out"
    assert main(["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives)]) == 0
    err = capfd.readouterr().err
    assert "PipelineDescription" not in err and "pybids upgrade" not in err, err
    assert len(list(out.rglob("node-run/*_model.json"))) == 1


def test_the_nilearn_preset_says_what_the_study_does_and_scaling_mean_is_taken(tmp_path, capsys):
    """A FitLins user's migration (the FitLins tester's): --preset nilearn's note in each run's record said "give
    --scaling mean" for nilearn's percent-of-the-voxel's-mean maps, which voxfit bids did not take (exit 2), and
    "slice_time_ref 0" where the study samples the design at fMRIPrep's StartTime. voxfit bids takes --scaling
    (its effects 100 / the voxel's mean times those unscaled, its t the same), and the note says what it does."""
    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=40, shape=(6, 6, 4))
    argv = ["bids", str(study.root), "", "run", "--derivatives", str(study.derivatives), "--preset", "nilearn"]
    maps = {}
    for scaling in ("none", "mean"):
        argv[2] = str(tmp_path / scaling)
        assert main([*argv, "--quiet", *(["--scaling", "mean"] if scaling == "mean" else [])]) == 0
        record = json.loads(next((tmp_path / scaling).rglob("node-run/*_model.json")).read_text())["settings"]
        assert record["scaling"] == scaling
        maps[scaling] = {
            stat: np.asarray(nib.load(next((tmp_path / scaling).rglob(f"*congruent_stat-{stat}_*"))).dataobj)
            for stat in ("effect", "t")
        }
    assert record["preset"]["overridden"] == {"scaling": "mean"}
    note = record["preset"]["note"]
    assert "give --scaling mean" in note and "sampled at fMRIPrep's StartTime where the run is slice-timing" in note
    assert "--mask" not in note and "slice_time_ref 0, " not in note
    bold = next(study.derivatives.rglob("*_desc-preproc_bold.nii.gz"))
    mean = np.asarray(nib.load(bold).dataobj, dtype=float).mean(axis=3)
    inside = np.isfinite(maps["none"]["effect"]) & (maps["none"]["effect"] != 0)
    expected = 100 * maps["none"]["effect"][inside] / mean[inside]
    np.testing.assert_allclose(maps["mean"]["effect"][inside], expected, rtol=1e-4)
    np.testing.assert_allclose(maps["mean"]["t"][inside], maps["none"]["t"][inside], rtol=1e-4, atol=1e-4)
