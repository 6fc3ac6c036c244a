"""Runs held as SPM users hold them: one 3-D Analyze/NIfTI file per scan, in folders beside other steps' files,
given as the shell's list, a folder, a quoted pattern or a .txt list; fitted with events, one or several runs."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit.cli import main

from .imaging import AFFINE, SHAPE

TR = 2.0
N = 24


@pytest.fixture
def rng():
    """One draw of the data, the conftest's first seed (VOXFIT_TEST_SEED shifts it as it shifts the three), in
    place of its three: every test here holds one form of a run (3-D scans as a list, a pattern, a folder, a .txt
    list) to another form of the same data, or checks what is said of the files and their names, which no draw
    of the noise exercises."""
    return np.random.default_rng(int(os.environ.get("VOXFIT_TEST_SEED", "0")))


def _bold(rng, n=N):
    level = 100 + 10 * rng.standard_normal(SHAPE)
    t = np.arange(n)
    signal = 3.0 * ((t // 4) % 2)  # a block design: 4 scans on, 4 off
    data = level[..., None] + rng.standard_normal(SHAPE + (n,)) + signal * (level[..., None] > 100)
    return data.astype(np.float32)


def _spm_folder(folder, data, prefix="swfM00223_"):
    """A run as SPM leaves it: 3-D Analyze pairs (int16 with SPM's scale factor) with numbers that do not sort
    as text, plus the realignment's mean image and motion parameters in the same folder."""
    folder.mkdir(parents=True)
    for i in range(data.shape[-1]):
        img = nib.Spm2AnalyzeImage(data[..., i], AFFINE)
        img.set_data_dtype(np.int16)
        nib.save(img, str(folder / f"{prefix}{i + 1}.img"))  # 1, 2, ... 10: natural order is not text order
    return folder


def _events(path, onsets):
    path.write_text("onset\tduration\ttrial_type\n" + "".join(f"{o}\t8\tlisten\n" for o in onsets))
    return path


def _four_d(path, folder, prefix="swfM00223_"):
    """The 4-D file of the scans as stored (scale factors applied), for the reference fit."""
    files = sorted(folder.glob(f"{prefix}*.img"), key=lambda p: int(p.stem[len(prefix) :]))
    data = np.stack([np.asarray(nib.load(str(f)).dataobj, dtype=np.float32) for f in files], axis=-1)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def _fit(capsys, inputs, events, out, *extra):
    argv = [
        "fit",
        *map(str, inputs),
        "--events",
        *map(str, events),
        "--tr",
        str(TR),
        "--contrast",
        "listen=listen",
        "-o",
        str(out),
        "--quiet",
        *extra,
    ]
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _t(out):
    return np.asarray(nib.load(str(out / "contrast-listen_stat-t_statmap.nii.gz")).dataobj)


@pytest.fixture
def spm_runs(tmp_path, rng):
    runs = []
    for r in (1, 2):
        folder = _spm_folder(tmp_path / f"run{r}", _bold(rng))
        nib.save(nib.Spm2AnalyzeImage(np.ones(SHAPE, np.float32), AFFINE), str(folder / "meanfM00223_1.img"))
        (folder / "rp_fM00223_1.txt").write_text("0 0 0 0 0 0\n" * N)
        runs.append(folder)
    ev = [_events(tmp_path / f"ev{r}.tsv", [0, 16, 32]) for r in (1, 2)]
    return tmp_path, runs, ev


def test_one_run_of_3d_scans_with_events_equals_its_4d_file(spm_runs, capsys):
    root, (run1, _), (ev1, _) = spm_runs
    scans = sorted(run1.glob("sw*.img"), key=lambda p: int(p.stem.split("_")[-1]))  # as the user lists them
    code, err = _fit(capsys, scans, [ev1], root / "list")
    assert code == 0, err
    code, err = _fit(capsys, [_four_d(root / "run1.nii", run1)], [ev1], root / "4d")
    assert code == 0, err
    npt.assert_allclose(_t(root / "list"), _t(root / "4d"), rtol=1e-6, equal_nan=True)
    model = json.loads((root / "list" / "model.json").read_text())
    names = [p["path"].rsplit("/", 1)[-1] for p in model["inputs"][:4]]  # (each pair's .img and .hdr: both read)
    assert names == ["swfM00223_1.img", "swfM00223_1.hdr", "swfM00223_2.img", "swfM00223_2.hdr"]


def test_analyze_pairs_named_by_their_headers_in_a_list_or_a_pattern(spm_runs, capsys):
    """SPM's file selector lists an Analyze pair by either file: a .txt list of .hdr names was "not a list of
    scans" and a pattern '*.hdr' matched "no image file", where the same names given one by one were fitted. A
    pattern matching both files of a pair takes the scan once."""
    root, (run1, _), (ev1, _) = spm_runs
    code, err = _fit(capsys, [_four_d(root / "run1.nii", run1)], [ev1], root / "4d")
    assert code == 0, err
    headers = sorted(run1.glob("sw*.hdr"), key=lambda p: int(p.stem.split("_")[-1]))
    (run1 / "list.txt").write_text("".join(f"{h.name}\n" for h in headers))
    for name, run in [("list", run1 / "list.txt"), ("hdr", f"{run1}/sw*.hdr"), ("both", f"{run1}/sw*")]:
        code, err = _fit(capsys, [run], [ev1], root / name)
        assert code == 0, (name, err)
        npt.assert_allclose(_t(root / name), _t(root / "4d"), rtol=1e-6, equal_nan=True)


def test_3d_scans_whose_header_gives_a_fourth_dimension_of_0_are_one_scan_each(tmp_path, rng, capsys):
    """Old writers' 3-D scans: dim[0] 4 and dim[4] 0, which niftilib, FSL and SPM read as 1; they were refused as
    a broken header."""
    data = _bold(rng)
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(N):
        path = folder / f"vol_{i + 1:03d}.nii"
        nib.save(nib.Nifti1Image(data[..., i : i + 1], AFFINE), str(path))
        raw = bytearray(path.read_bytes())
        raw[48:50] = (0).to_bytes(2, "little")  # dim[4] = 0
        path.write_bytes(bytes(raw))
    assert nib.load(str(folder / "vol_001.nii")).shape == SHAPE + (0,)
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "run.nii"))
    ev = _events(tmp_path / "ev.tsv", [0, 16])
    for name, run in [("out_scans", folder), ("out_4d", tmp_path / "run.nii")]:
        code, err = _fit(capsys, [run], [ev], tmp_path / name)
        assert code == 0, err
    npt.assert_allclose(_t(tmp_path / "out_scans"), _t(tmp_path / "out_4d"), rtol=1e-6, equal_nan=True)


def test_scans_given_out_of_their_numbers_order_are_named(spm_runs, capsys):
    """Scans in a shell's text order (an unquoted pattern's: _1, _10, _11 ... _2) are refused, saying how to give
    them in order: fitted as given with a warning, which --quiet left unsaid, the run's scans were shuffled against
    its design (exit 0). Another order given one by one is fitted as given, and said."""
    root, (run1, _), (ev1, _) = spm_runs
    scans = sorted(run1.glob("sw*.img"))  # text order: _1, _10, _11 ... _2
    args = ["--events", str(ev1), "--tr", str(TR), "--contrast", "l=listen", "--quiet", "-o"]
    assert main(["fit", *map(str, scans), *args, str(root / "o")]) == 2
    err = capsys.readouterr().err
    assert "in the text order a shell's pattern gives (swfM00223_19.img comes before swfM00223_2.img)" in err, err
    assert "quote the pattern" in err and not (root / "o").exists()
    numbered = sorted(scans, key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    numbered[4], numbered[5] = numbered[5], numbered[4]
    assert main(["fit", *map(str, numbered), *args[:-2], "-o", str(root / "o")]) == 0
    err = capsys.readouterr().err
    assert f"not in the order of their numbers ({numbered[4].name} comes before {numbered[5].name})" in err, err


def test_a_list_of_scans_out_of_order_or_of_frames_and_an_img_without_its_hdr_are_said(spm_runs, capsys):
    """A .txt list in another order than its scans' numbers is warned of as a shell's list is; a list of SPM's
    frames (bold.nii,1) is refused saying to give the 4-D file; an .img without its .hdr names the missing header
    (nibabel: "Cannot work out file type")."""
    root, (run1, _), (ev1, _) = spm_runs
    scans = sorted(run1.glob("sw*.img"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    scans[4], scans[5] = scans[5], scans[4]
    listed = root / "swapped.txt"
    listed.write_text("\n".join(map(str, scans)) + "\n")
    args = ["--events", str(ev1), "--tr", str(TR), "--contrast", "l=listen", "-o"]
    assert main(["fit", str(listed), *args, str(root / "o")]) == 0
    err = capsys.readouterr().err
    assert f"the scans listed in swapped.txt are not in the order of their numbers ({scans[4].name} comes" in err
    # a group's list of maps is no run: matched by subject, or taken in the order given, and not said to be out of order
    assert main(["group", str(listed), "-o", str(root / "g")]) == 0
    assert "not in the order" not in capsys.readouterr().err
    frames = root / "frames.txt"
    frames.write_text("".join(f"bold.nii,{k}\n" for k in range(1, 4)))
    assert main(["fit", str(frames), *args, str(root / "o2")]) == 2
    assert "'bold.nii,1' is SPM's notation of a volume of a 4-D file: give the 4-D file itself (bold.nii)" in (
        capsys.readouterr().err
    )
    # SPM's list of 3-D images (SPM.xY.P, spm_select's ExtFPList), each named by its first volume: those images (it
    # was refused, saying to give "the 4-D file" fMRI_0001.nii, one scan)
    firsts = root / "firsts.txt"
    firsts.write_text("# run 1, 2\n" + "".join(f"{p},1\n" for p in scans))  # (a comment's numbers are no volume)
    assert main(["fit", str(firsts), *args, str(root / "o4")]) == 0, capsys.readouterr().err
    t = [
        np.asarray(nib.load(str(out / "contrast-l_stat-t_statmap.nii.gz")).dataobj) for out in (root / "o4", root / "o")
    ]
    np.testing.assert_array_equal(*t)
    # a 4-D file's first volume alone is no run of the file (SPM's pick of one frame): refused, saying what to give
    (root / "one.txt").write_text(f"{_four_d(root / 'four.nii', run1)},1\n")
    assert main(["fit", str(root / "one.txt"), *args, str(root / "o5")]) == 2
    assert "give the 4-D file itself (four.nii)" in capsys.readouterr().err
    scans[7].with_suffix(".hdr").unlink()
    assert main(["fit", str(run1 / "sw*.img"), *args, str(root / "o3")]) == 2
    assert f"{scans[7].name}: the data of an Analyze/NIfTI pair, whose header {scans[7].stem}.hdr is not beside it" in (
        capsys.readouterr().err
    )


def test_several_runs_of_3d_scans(spm_runs, capsys):
    """Two runs of 3-D scans given as a pattern each, a list file each and their folders: the numbers of their 4-D
    files. (One test over the three forms, so that the 4-D reference is fitted once: a case per form fitted it
    again each time, on the same data.)"""
    root, runs, ev = spm_runs
    ref = [_four_d(root / f"run{r}.nii.gz", folder) for r, folder in enumerate(runs, 1)]
    code, err = _fit(capsys, ref, ev, root / "ref")
    assert code == 0, err
    for form in ("pattern", "list", "folder"):  # (the folders last: their mean images are removed for them)
        if form == "folder":  # the runs' folders hold the mean image and rp_*.txt too: refused, with a way out
            code, err = _fit(capsys, runs, ev, root / "x")
            assert code == 2 and "several series" in err and "sw" in err and "meanfM" in err
            for folder in runs:
                for extra in folder.glob("mean*"):
                    extra.unlink()
            inputs = runs
        elif form == "pattern":
            inputs = [f"{folder}/sw*.img" for folder in runs]
        else:
            inputs = []
            for r, folder in enumerate(runs, 1):
                names = sorted((p.name for p in folder.glob("sw*.img")), key=lambda n: int(n[10:-4]))
                lst = root / f"run{r}.txt"
                lst.write_text(f"# scans of run {r}\n" + "".join(f"run{r}/{n}\n" for n in names) + "\n")
                inputs.append(lst)
        code, err = _fit(capsys, inputs, ev, root / form)
        assert code == 0, (form, err)
        for name in ("contrast-listen_stat-t_statmap.nii.gz", "run-2_contrast-listen_stat-effect_statmap.nii.gz"):
            a = np.asarray(nib.load(str(root / form / name)).dataobj)
            b = np.asarray(nib.load(str(root / "ref" / name)).dataobj)
            npt.assert_allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=form)
        model = json.loads((root / form / "model.json").read_text())
        assert [len(r["inputs"]) for r in model["runs"]] == [2 * N, 2 * N], form  # every scan's files (.img, .hdr)


def test_run_forms_refuse_what_cannot_be_a_run(spm_runs, capsys):
    root, runs, ev = spm_runs
    cases = {
        "count": ([runs[0]], ev, "1 inputs for 2 designs or events files; give one per run, each a 4-D file"),
        "empty pattern": ([f"{runs[0]}/nothing*.img", runs[1]], ev, "no image file matches"),
        "bad list line": ([root / "l.txt", runs[1]], ev, "l.txt, line 2: run1/missing.img is not a file"),
        "empty folder": ([root / "empty", runs[1]], ev, "holds no image files"),
        "4-D files for one events file": ([root / "a.nii", root / "a.nii"], ev[:1], "2 4-D inputs for one events file"),
    }
    (root / "l.txt").write_text(f"run1/{next(runs[0].glob('sw*.img')).name}\nrun1/missing.img\n")
    (root / "empty").mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE + (N,), np.float32), AFFINE), str(root / "a.nii"))
    for name, (inputs, events, message) in cases.items():
        code, err = _fit(capsys, inputs, events, root / name.replace(" ", "_"))
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
        assert not (root / name.replace(" ", "_")).exists()


def test_several_runs_for_one_design_are_named_as_runs(spm_runs, capsys):
    root, runs, ev = spm_runs
    for extra in (f for folder in runs for f in folder.glob("mean*")):
        extra.unlink()
    for inputs in (runs, [f"{runs[0]}/sw*.img", f"{runs[1]}/sw*.img"]):
        code, err = _fit(capsys, inputs, ev[:1], root / "one")
        assert code == 2 and "2 runs (folders, patterns or lists of scans) for one events file" in err


@pytest.mark.parametrize("lost", ["image", "scan"])
def test_a_run_missing_a_scan_is_refused_not_shifted(spm_runs, capsys, lost):
    """A folder or pattern of scans with one lost (an Analyze header left without its image, or a file gone from
    the numbering) was fitted with every later scan one TR early against the events; it is refused, with the way
    to leave scans out on purpose (a .txt list), which is fitted. A series that starts later (dummy scans
    removed) has no gap."""
    root, (run1, _), (ev1, _) = spm_runs
    for extra in run1.glob("mean*"):
        extra.unlink()
    (run1 / "swfM00223_5.img").unlink()
    if lost == "scan":
        (run1 / "swfM00223_5.hdr").unlink()
    for inputs, where in (([run1], str(run1)), ([f"{run1}/sw*.img"], f"{run1}/sw*.img")):
        code, err = _fit(capsys, inputs, [ev1], root / "out")
        message = (
            "swfM00223_5.hdr is an Analyze header without its image"
            if lost == "image" and where == str(run1)
            else "numbered 1 to 24 without 5"
        )
        assert code == 2 and message in err and ".txt list" in err and err.count("\n") == 1, err
        assert not (root / "out").exists()
    names = sorted((p.name for p in run1.glob("sw*.img")), key=lambda n: int(n[10:-4]))
    (root / "kept.txt").write_text("".join(f"run1/{n}\n" for n in names))
    code, err = _fit(capsys, [root / "kept.txt"], [_events(root / "e.tsv", [0, 16])], root / "listed", "--noise", "ols")
    assert code == 0, err
    for k in range(1, 5):  # the first 4 scans removed as dummies: the run starts at 6, numbered without a gap
        (run1 / f"swfM00223_{k}.img").unlink()
        (run1 / f"swfM00223_{k}.hdr").unlink()
    (run1 / "swfM00223_5.hdr").unlink(missing_ok=True)
    code, err = _fit(capsys, [run1], [_events(root / "e2.tsv", [0, 16])], root / "later", "--noise", "ols")
    assert code == 0, err


def test_scans_numbered_by_a_step_or_subjects_maps_are_not_checked(tmp_path, rng, capsys):
    """Scans numbered by their time (0, 2000, 4000 ms; across a clock's minute) are not checked for gaps; nor are
    a group's maps with a subject left out (numbered by subject, not by time), as a folder or a pattern."""
    from voxfit.io.scans import check_scan_run

    timed = [Path(f"vol_{t:05d}ms.nii") for t in (0, 2000, 4000, 8000)]
    check_scan_run("run", timed)
    check_scan_run("run", [Path(f"vol_1200{s}.nii") for s in ("56", "58", "60")])
    maps = tmp_path / "maps"
    maps.mkdir()
    for s in (1, 2, 3, 4, 6, 7, 8):
        nib.save(nib.Nifti1Image(rng.standard_normal(SHAPE).astype(np.float32) + 1, AFFINE), maps / f"sub-{s:02d}.nii")
    for given in (str(maps), f"{maps}/sub-*.nii"):
        assert main(["group", given, "-o", str(tmp_path / "o"), "--quiet", "--force"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("held", ["analyze", "nifti"])
def test_3d_scans_their_spm_sidecars_place_apart_are_refused_as_spm_refuses_them(tmp_path, capsys, held):
    """SPM's Realign "Estimate" writes each realigned scan's new place into its sidecar (an Analyze pair's .mat)
    and leaves the data alone; SPM's fit then refuses the scans (spm_check_orientations). Analyze pairs, which
    nibabel places by their .mat, were refused saying to resample them to the data's grid; 3-D NIfTI scans of one
    header were read as the first, whose .mat alone was looked at, and fitted voxel by voxel across scans SPM
    places apart. Both are refused saying the scans were realigned, not resliced, whether scan 1 keeps its .mat
    or has none; sidecars that agree with the headers (nibabel writes them) say nothing, and NIfTI scans' that
    agree with each other but not with the headers are said once, not once a scan."""
    from scipy.io import loadmat, savemat

    root, run1 = tmp_path, _spm_folder(tmp_path / "run1", _bold(np.random.default_rng(0)))  # (one seed: names)
    ev1 = _events(tmp_path / "ev1.tsv", [0, 16, 32])
    scans = sorted(run1.glob("sw*.img"), key=lambda p: int(p.stem.split("_")[-1]))
    if held == "nifti":  # (one header for all: read as the first's)
        for p in scans:
            nib.save(nib.Nifti1Image(np.asarray(nib.load(str(p)).dataobj, np.float32), AFFINE), p.with_suffix(".nii"))
            savemat(p.with_suffix(".mat"), {"mat": loadmat(p.with_suffix(".mat"))["mat"]})
        scans = [p.with_suffix(".nii") for p in scans]
    code, err = _fit(capsys, scans, [ev1], root / "as_written")
    assert code == 0 and ".mat" not in err, err
    mats = [p.with_suffix(".mat") for p in scans]
    kept = {m: loadmat(m)["mat"] for m in mats}
    for m in mats[1:]:
        moved = kept[m].copy()
        moved[1, 3] += 0.3  # (realigned: moved 0.3 mm)
        savemat(m, {"mat": moved})
    code, err = _fit(capsys, scans, [ev1], root / "moved")
    said = f"{scans[1].name}: the SPM .mat sidecars place image 2 apart from image 1, and SPM would refuse"
    assert code == 2 and said in err and "reslice" in err, err
    assert not (root / "moved").exists()
    mats[0].unlink()  # (scan 1, the reference, untouched: its header alone)
    code, err = _fit(capsys, scans, [ev1], root / "moved")
    assert code == 2 and said in err, err
    if held == "nifti":
        for m in mats:
            savemat(m, {"mat": kept[mats[1]] + 2 * np.eye(4)[0]})  # (all in one place, not the headers')
        argv = [*map(str, scans), "--events", str(ev1), "--tr", str(TR), "--contrast", "listen=listen"]
        code = main(["fit", *argv, "-o", str(root / "elsewhere")])  # (not --quiet: warnings said)
        err = capsys.readouterr().err
        assert code == 0 and err.count("places the image otherwise than its header") == 1, err
        for k, m in enumerate(mats):  # (drifting 2e-5 mm a scan: SPM compares each scan with the one before)
            savemat(m, {"mat": kept[mats[1]] + 2e-5 * k * np.eye(4)[1]})
        assert main(["fit", *argv, "-o", str(root / "drift"), "--quiet"]) == 0, capsys.readouterr().err
        for m in mats:
            m.write_bytes(b"not MATLAB's" * 8)
        code = main(["fit", *argv, "-o", str(root / "unread")])
        err = capsys.readouterr().err
        assert code == 0 and err.count("could not be read") == 2 and f"{len(mats) - 1} other scan(s)" in err, err


def test_runs_of_design_files_take_each_ones_repetition_time_and_record_the_noise_model(tmp_path, capsys):
    """Several runs with --design files: each design's RepetitionTime (its JSON sidecar, as `voxfit design --tr`
    writes it) was not read, as it is for one run, so the long-lag correction took another window of lags than the
    same run fitted alone, and --noise fast asked for the sidecar it had; model.json left out the noise model's
    record (default and why) and the preset's (a multi-run tester's). Each run's numbers are now its own fit's."""
    rng = np.random.default_rng(0)
    runs, designs = [], []
    for r in (1, 2):
        runs.append(tmp_path / f"run{r}.nii.gz")
        nib.save(nib.Nifti1Image(_bold(rng, 60), AFFINE), str(runs[-1]))
        events = _events(tmp_path / f"ev{r}.tsv", [0, 40, 80])
        designs.append(tmp_path / f"design{r}.tsv")
        assert main(["design", str(events), "--tr", "0.7", "--n-scans", "60", "-o", str(designs[-1])]) == 0
    contrast = ["--contrast", "listen=listen", "--noise", "ar1+lags", "--quiet"]
    assert main(["fit", *map(str, runs), "--design", *map(str, designs), *contrast, "-o", str(tmp_path / "both")]) == 0
    assert main(["fit", str(runs[0]), "--design", str(designs[0]), *contrast, "-o", str(tmp_path / "one")]) == 0
    both = json.loads((tmp_path / "both" / "model.json").read_text())
    one = json.loads((tmp_path / "one" / "model.json").read_text())
    lags = [m["noise_details"]["long_lags"]["lags"] for m in (both["runs"][0], one["settings"])]
    assert lags[0] == lags[1], lags
    assert both["settings"]["noise"] == {"model": "ar1+lags", "default": False}
    # FAST takes the sidecar's TR too; on these runs of noise its ReML overflowed (exit 1, "internal error") where
    # it starts again (spm_reml), and then it says no voxel has effects of interest to pool over (exit 2)
    fast = ["--contrast", "listen=listen", "--noise", "fast", "--quiet", "-o", str(tmp_path / "fast")]
    code = main(["fit", *map(str, runs), "--design", *map(str, designs), *fast])
    err = capsys.readouterr().err
    assert code == 2 and "no voxel passes SPM's effects-of-interest F test" in err and "RepetitionTime" not in err, err


def test_a_folder_of_4d_files_is_told_to_give_the_runs_own_file(tmp_path, rng, capsys):
    """A FEAT folder (filtered_func_data, mean_func, mask: one file a series) given as the run: the message
    suggested a pattern, 'sub-01.feat/filtered_func_data.nii.gz*.nii.gz', that matches nothing. It names the
    largest file to give."""
    feat = tmp_path / "sub-01.feat"
    feat.mkdir()
    data = _bold(rng)
    nib.save(nib.Nifti1Image(data, AFFINE), str(feat / "filtered_func_data.nii.gz"))
    for name in ("mean_func", "mask"):
        nib.save(nib.Nifti1Image(data[..., 0], AFFINE), str(feat / f"{name}.nii.gz"))
    ev = _events(tmp_path / "ev.tsv", [0, 16])
    code, err = _fit(capsys, [feat], [ev], tmp_path / "out")
    assert code == 2 and "none a series of scans" in err and f"e.g. {feat / 'filtered_func_data.nii.gz'}" in err, err


@pytest.mark.parametrize(
    ("paths", "said"),
    [
        (["r/vol.nii", "r/vol2.nii", "r/vol3.nii"], None),  # (vol2 was ordered before vol.nii: refused as shuffled)
        (["run/a.nii", "run2/a.nii"], None),
        (["g/sub-1/con_0001.nii", "g/sub-10/con_0001.nii", "g/sub-2/con_0001.nii"], "g/sub-10/con_0001.nii comes"),
        (["s/f_1.nii", "s/f_3.nii", "s/f_2.nii"], "f_3.nii comes before f_2.nii"),
    ],
)
def test_scans_in_order_or_of_several_folders_are_not_refused(paths, said):
    """Only one folder's scans in a shell's text order are refused: names whose numbers are in order once their
    suffixes are left aside, and maps of several folders (a design's rows may follow the shell's order), were
    refused, one with "con_0001.nii comes before con_0001.nii"."""
    import warnings

    from voxfit.io.scans import warn_out_of_order

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_out_of_order(paths)
    messages = [str(w.message) for w in caught]
    assert (said is None and not messages) or (len(messages) == 1 and said in messages[0]), messages


def test_names_sort_by_their_numbers_values_and_then_their_text():
    """The order of scans' names and of a BIDS model's pattern's columns: numbers by value (2 before 10), names of
    equal numbers by their text (00 and 0: a fixed order, where pybids' came shuffled), a digit the split does not
    take as a number (²) as text (it raised ValueError: a reviewer's)."""
    from voxfit.io.scans import natural_key

    names = ["motion_outlier10", "x1²", "motion_outlier2", "motion_outlier00", "x1a", "motion_outlier0"]
    expected = ["motion_outlier0", "motion_outlier00", "motion_outlier2", "motion_outlier10", "x1a", "x1²"]
    assert sorted(names, key=natural_key) == expected == sorted(names[::-1], key=natural_key)
