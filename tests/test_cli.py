"""The command line: maps equal to the array API, exit codes, one-line errors, no partial output."""

import json
import os

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit.cli import main
from voxfit.models import glm

from .imaging import AFFINE, N_SCANS, SHAPE, volume_data, write_cifti, write_gifti, write_nifti, write_volume_list


@pytest.fixture
def study(tmp_path, rng):
    """A 4-D .nii.gz, a design.tsv with columns A, B, constant, and paths for outputs."""
    data = volume_data(rng)
    t = np.arange(N_SCANS)
    design = pd.DataFrame({"A": (t % 4 < 2).astype(float), "B": np.cos(t / 3.0), "constant": 1.0})
    bold = write_nifti(tmp_path / "bold.nii.gz", data)
    design_path = tmp_path / "design.tsv"
    design.to_csv(design_path, sep="\t", index=False)
    return {
        "dir": tmp_path,
        "bold": bold,
        "design": design_path,
        "table": design,
        "data": data,
        "out": tmp_path / "res",
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fit_args(s, *extra, out=None, contrast=("task=A - B", "eoi=A; B")):
    args = ["fit", s["bold"], "--design", s["design"], "-o", out or s["out"], "--quiet"]
    for c in contrast:
        args += ["--contrast", c]
    return args + list(extra)


def test_fit_writes_maps_equal_to_the_array_api(study, capsys):
    code, out, err = run(capsys, *fit_args(study))
    assert code == 0 and err == "" and out == ""
    res = study["out"]
    names = sorted(p.name for p in res.iterdir())
    for stat in ("effect", "variance", "t", "p", "z"):
        assert f"contrast-task_stat-{stat}_statmap.nii.gz" in names
    for stat in ("effect", "variance", "F", "p", "z"):
        assert f"contrast-eoi_stat-{stat}_statmap.nii.gz" in names
    for col in ("A", "B", "constant"):
        assert f"regressor-{col}_stat-effect_statmap.nii.gz" in names
    assert {
        "stat-rsquared_statmap.nii.gz",
        "stat-residualvariance_statmap.nii.gz",
        "mask.nii.gz",
        "design.tsv",
        "model.json",
    } <= set(names)
    assert not [n for n in names if n.startswith(".")]

    ds = voxfit.load(study["bold"], mask_threshold="auto")  # as voxfit fit
    fit = voxfit.fit(study["table"], ds.data)
    t = fit.contrast("A - B")
    img = nib.load(res / "contrast-task_stat-t_statmap.nii.gz")
    npt.assert_allclose(img.affine, AFFINE)
    assert img.shape == SHAPE
    values = np.asarray(img.dataobj).reshape(-1, order="F")
    npt.assert_allclose(values[ds.masker.mask], t.t, rtol=1e-6)
    assert np.isnan(values[~ds.masker.mask]).all()
    f_eff = nib.load(res / "contrast-eoi_stat-effect_statmap.nii.gz")
    assert f_eff.shape == SHAPE + (2,)
    model = json.loads((res / "model.json").read_text())
    assert model["voxfit_version"] == voxfit.__version__
    assert len(model["inputs"][0]["blake3"]) == 64 and model["inputs"][0]["bytes"] == study["bold"].stat().st_size
    assert model["contrasts"]["task"]["expression"] == "A - B" and model["contrasts"]["eoi"]["kind"] == "F"
    assert model["design"]["columns"] == ["A", "B", "constant"]


def test_volume_list_gifti_cifti_and_fsl_design(study, capsys, rng):
    d = study["dir"]
    (d / "spm").mkdir()
    paths = write_volume_list(d / "spm", study["data"], ".img", stored_dtype=np.int16)
    mat = d / "design.mat"
    X = study["table"].to_numpy()
    mat.write_text(
        "/NumWaves 3\n/NumPoints 12\n/Matrix\n" + "\n".join(" ".join(f"{v:.8f}" for v in row) for row in X) + "\n"
    )
    code, _, err = run(capsys, "fit", *paths, "--design", mat, "--contrast", "c1=EV1 - EV2", "-o", d / "r1", "--quiet")
    assert code == 0, err
    assert (d / "r1" / "contrast-c1_stat-t_statmap.nii.gz").exists()
    matrix = (50 + rng.standard_normal((N_SCANS, 40))).astype(np.float32)
    gii = write_gifti(d / "lh.func.gii", matrix)
    assert run(capsys, "fit", gii, "--design", study["design"], "--contrast", "A=A", "-o", d / "r2", "--quiet")[0] == 0
    assert nib.load(d / "r2" / "contrast-A_stat-z_statmap.func.gii").darrays[0].data.shape == (40,)
    from .imaging import cifti_axes

    n = len(cifti_axes()[1])
    cii = write_cifti(d / "x_bold.dtseries.nii", (50 + rng.standard_normal((N_SCANS, n))).astype(np.float32))
    assert run(capsys, "fit", cii, "--design", study["design"], "--contrast", "A=A", "-o", d / "r3", "--quiet")[0] == 0
    out = nib.load(d / "r3" / "contrast-A_stat-t_statmap.dscalar.nii")
    assert out.header.get_axis(1) == cifti_axes()[1]


def test_a_design_without_a_constant_is_warned_of_and_fsls_design_mat_says_why(study, capsys):
    """FEAT's design.mat holds demeaned EVs and no mean, FEAT removing each voxel's mean before it fits: voxfit
    fitted such a design as given, each voxel's mean (100) left in the residuals, t ~100 times too small and
    nothing said (an FSL-layout tester's). A first-level design with no constant in its span is now warned of,
    a design.mat's warning saying why FSL's lacks it; with the constant added the t is lstsq's with it."""
    d = study["dir"]
    X = study["table"].to_numpy()[:, :2]  # A, B: no constant
    mat = d / "nomean.mat"
    mat.write_text("/NumWaves 2\n/NumPoints 12\n/Matrix\n" + "".join(f"{a:.8f} {b:.8f}\n" for a, b in X))
    code, _, err = run(capsys, "fit", study["bold"], "--design", mat, "--contrast", "c=EV1 - EV2", "-o", d / "m")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "no constant" in line]
    assert len(warned) == 1 and "nomean.mat" in warned[0] and "FEAT removes each voxel's mean" in warned[0]
    tsv = d / "nomean.tsv"
    tsv.write_text("A\tB\n" + "".join(f"{float(a)!r}\t{float(b)!r}\n" for a, b in X))
    code, _, err = run(capsys, "fit", study["bold"], "--design", tsv, "--contrast", "c=A - B", "-o", d / "t")
    assert code == 0 and "no constant (no column of ones in its span)" in err and "FEAT" not in err
    code, _, err = run(capsys, "fit", study["bold"], "--design", study["design"], "--contrast", "c=A", "-o", d / "k")
    assert code == 0 and "no constant" not in err  # (A, B and a constant)


def test_an_ar_order_too_high_for_the_run_is_warned_of(study, capsys, tmp_path):
    """AR(p) per voxel on fewer than 20 residual dof per coefficient runs liberal in the tail (60 scans of AR(1)
    noise: p < 0.001 0.0015 with AR(3), 0.0043 with AR(8)), and `--noise ar16` on 60 scans said nothing (a
    tester's): warned of, naming the order that fits, for each run of several; AR(1) is never warned of."""
    d = study["dir"]
    fit = ("fit", study["bold"], "--design", study["design"], "--contrast", "c=A", "--force")
    code, _, err = run(capsys, *fit, "--noise", "ar2", "-o", tmp_path / "a")
    assert code == 0 and err.count("AR(2) per voxel on 12 scans leaves 9 residual dof") == 1, err
    assert "--noise ar1 or below" in err
    code, _, err = run(capsys, *fit, "--noise", "ar1", "-o", tmp_path / "b")
    assert code == 0 and "per coefficient" not in err, err
    second = d / "second.nii.gz"
    write_nifti(second, study["data"][..., ::-1] + 1.0)
    code, _, err = run(capsys, "fit", study["bold"], second, "--design", study["design"], study["design"],
                       "--contrast", "c=A", "--noise", "ar2", "-o", tmp_path / "c")  # fmt: skip
    assert code == 0 and "run 1: AR(2) per voxel" in err and "run 2: AR(2) per voxel" in err, err


def test_messages_of_a_latin1_table_a_file_as_output_and_an_unknown_unit_say_what_to_do(study, capsys):
    """A tester's: a Latin-1 design said "not a text table ('utf-8' codec can't decode...)", a file given as -o
    "exists and is not a folder", --max-memory 10P "must be a size like ...": each now says what to do."""
    d = study["dir"]
    latin = d / "latin.tsv"
    latin.write_bytes(b"A\tB\tconstant\n" + "".join(f"{k}\t{k % 3}\t1\n" for k in range(12)).encode()
                      + "0\t\xe9\t1\n".encode("latin-1"))  # fmt: skip
    code, _, err = run(capsys, "fit", study["bold"], "--design", latin, "--contrast", "c=A", "-o", d / "l")
    assert code == 2 and "not UTF-8 text (byte " in err and "save it as UTF-8" in err, err
    (d / "afile").write_text("x")
    code, _, err = run(capsys, *fit_args(study, out=d / "afile"))
    assert code == 2 and "exists and is not a folder; give a folder's path with -o" in err, err
    code, _, err = run(capsys, *fit_args(study, "--max-memory", "10P"))
    assert code == 2 and "(units K, M, G, T)" in err, err
    # a header's unclosed quote ("a header but no rows") and a NUL in a name (taken into the design): said so
    rows = "".join(f"{k % 2}\t{k % 3}\t1\n" for k in range(12))
    for header, said in (
        ('"A\tB\tconstant\n', "opens a cell that no quote closes"),
        ('"A\nx"\tB\tconstant\n', "holds a line break, inside quotes"),  # (closed: not said as unclosed)
        ("A\0\tB\tconstant\n", "'\\x00'"),
    ):
        (d / "odd.tsv").write_text(header + rows)
        code, _, err = run(capsys, "fit", study["bold"], "--design", d / "odd.tsv", "--contrast", "c=B", "-o", d / "o")
        assert code == 2 and said in err and err.count("\n") == 1, err


@pytest.mark.usefixtures("no_reserve")
def test_diagnostics_of_a_streamed_fit_name_the_cap_that_holds_the_data(study, capsys, tmp_path):
    """--diagnostics needs the data in memory; under a cap that streams them it said "raise --max-memory" and no
    size (a tester's): it names the cap, and that cap runs the fit with its diagnostics."""
    rng = np.random.default_rng(0)
    bold = write_nifti(tmp_path / "long.nii", (100 + rng.standard_normal(SHAPE + (40,))).astype(np.float32))
    t = np.arange(40)
    pd.DataFrame({"A": (t % 8 < 4).astype(float), "constant": 1.0}).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    argv = ["fit", bold, "--design", tmp_path / "d.tsv", "--contrast", "a=A", "--diagnostics", "--quiet"]
    code, _, err = run(capsys, *argv, "--max-memory", "8K", "-o", tmp_path / "a")
    assert code == 2 and "--diagnostics forms the whitened residuals" in err and "give at least " in err, err
    cap = err.split("give at least ")[1].split(" ")[0]
    code, _, err = run(capsys, *argv, "--max-memory", cap, "-o", tmp_path / "b")
    assert code == 0, err


def test_a_contrast_name_too_long_for_file_names_is_refused_before_the_fit(study, capsys):
    """A contrast named in 300 letters (an FSL design.con's /ContrastName) failed as its maps were written, after
    the fit, the message naming the hidden partial folder: refused at once, in one line, nothing written."""
    d = study["dir"]
    code, _, err = run(capsys, "fit", study["bold"], "--design", study["design"], "--contrast", "a" * 300 + "=A",
                       "-o", d / "long")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "makes a label of 300 letters and digits" in err
    assert not (d / "long").exists() and "partial" not in err
    code, _, err = run(capsys, "fit", study["bold"], "--design", study["design"], "--contrast", "a" * 100 + "=A",
                       "-o", d / "ok", "--quiet")  # fmt: skip
    assert code == 0, err


def test_version_help_and_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and voxfit.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fit", "-h"])
    assert e.value.code == 0 and "examples:" in capsys.readouterr().out
    assert main([]) == 2
    assert (
        capsys.readouterr().err
        == "voxfit: error: give a command: fit, design, group, bids, report or demo (see --help)\n"
    )
    for argv in (
        ["fit"],
        ["fit", "x.nii", "--design"],
        ["bogus"],
        ["fit", "x", "--design", "d", "-o", "o", "--max-memory"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("voxfit")


def _one_blank_scan():
    """Twelve scans of a run near 100, the sixth all zeros (lost in a conversion): the automatic mask is empty."""
    data = 100 + np.random.default_rng(3).standard_normal(SHAPE + (12,)).astype(np.float32)
    data[..., 5] = 0
    return data


def _one_bright_voxel():
    """Twelve scans of a run near 100 with one voxel at 1e6: SPM's global of each scan, the mean of the values above
    an eighth of the scan's mean, is then that voxel's, and no other voxel is above 0.8 of it."""
    data = 100 + np.random.default_rng(4).standard_normal(SHAPE + (12,)).astype(np.float32)
    data[0, 0, 0] = 1e6  # (constant: it leaves the mask too)
    return data


def _save_npy(path, array):
    np.save(path, array)
    return path


def _write(path, text):
    path.write_text(text)
    return path


BAD = {
    "missing file": (lambda s: fit_args(s)[:1] + [s["dir"] / "nope.nii.gz"] + fit_args(s)[2:], "no such file"),
    "not an image": (
        lambda s: ["fit", _write(s["dir"] / "x.nii", "hello" * 100)] + fit_args(s)[2:],
        "not a readable image",
    ),
    "truncated gz": (lambda s: ["fit", _cut(s)] + fit_args(s)[2:], "truncated|corrupt"),
    "3-D image": (
        lambda s: ["fit", write_nifti(s["dir"] / "v.nii", np.ones(SHAPE, np.float32))] + fit_args(s)[2:],
        "3-D image",
    ),
    "design rows": (
        lambda s: fit_args(s, "--design", _design(s, rows=10)),
        "the design has 10 rows but the data have 12 scans",
    ),
    # a series alone saved 1-D is one scan of as many columns: said as the design's rows against the header's one
    # scan, not as the empty automatic mask that the read started meanwhile finds first ("nothing can vary")
    "one series saved 1-D": (
        lambda s: ["fit", _save_npy(s["dir"] / "series.npy", np.arange(12.0))] + fit_args(s)[2:],
        r"the design has 12 rows but the data have 1 scan \(.*a 1-D \.npy one scan",
    ),
    "design NaN": (
        lambda s: fit_args(s, "--design", _design(s, nan=True)),
        "missing or non-finite value in column 'B', row 3",
    ),
    "duplicate columns": (
        lambda s: fit_args(s, "--design", _write(s["dir"] / "dup.tsv", "A\tA\n" + "1\t2\n" * 12)),
        "'A' appear more than once",
    ),
    "separator ending each line": (
        lambda s: fit_args(s, "--design", _write(s["dir"] / "tab.tsv", "A\tB\t\t\n" + "1\t2\t\t\n" * 12)),
        r"column 3 has no name in the header line \(a separator at the end of the line\?\); name it, or remove",
    ),
    "unknown column": (lambda s: fit_args(s, contrast=["c=A - Z"]), "unknown column 'Z'"),
    "malformed contrast": (lambda s: fit_args(s, contrast=["c=A -* B"]), "cannot read contrast"),
    "non-estimable": (
        lambda s: fit_args(s, "--design", _design(s, deficient=True), contrast=["c=A"]),
        "not estimable.*A, A2, constant",
    ),
    "empty mask": (
        lambda s: fit_args(s, "--mask", write_nifti(s["dir"] / "m.nii", np.zeros(SHAPE, np.uint8))),
        "selects no voxel",
    ),
    "mask geometry": (
        lambda s: fit_args(s, "--mask", write_nifti(s["dir"] / "m.nii", np.ones((2, 2, 2), np.uint8))),
        "has shape \\(2, 2, 2\\)",
    ),
    "all-NaN data": (
        lambda s: (
            ["fit", write_nifti(s["dir"] / "nan.nii", np.full(SHAPE + (12,), np.nan, np.float32))] + fit_args(s)[2:]
        ),
        "automatic mask is empty.*: scan 1 is all zeros or holds no finite value",
    ),
    "one blank scan": (
        lambda s: (
            ["fit", write_nifti(s["dir"] / "blank.nii", _one_blank_scan())] + fit_args(s, "--mask-threshold", "0.8")[2:]
        ),
        "automatic mask is empty.*: scan 6 is all zeros",
    ),
    "one scan, no mask": (
        lambda s: (
            ["fit", write_nifti(s["dir"] / "one.nii", np.full(SHAPE + (1,), 100, np.float32))]
            + fit_args(s, "--design", _write(s["dir"] / "one.tsv", "A\n1\n"), contrast=["c=A"])[2:]
        ),
        "automatic mask is empty.*: the run has one scan, in which nothing can vary; give a run of several scans",
    ),
    "a bright voxel": (  # (it raises each scan's global above every other voxel's 0.8 of it)
        lambda s: ["fit", write_nifti(s["dir"] / "bright.nii", _one_bright_voxel())] + fit_args(s)[2:],
        r"automatic mask is empty.*; give a mask \(--mask\) or a lower threshold \(--mask-threshold;",
    ),
    "all-NaN in mask": (
        lambda s: (
            ["fit", write_nifti(s["dir"] / "nan.nii", np.full(SHAPE + (12,), np.nan, np.float32))]
            + fit_args(s, "--mask", write_nifti(s["dir"] / "m.nii", np.ones(SHAPE, np.uint8)))[2:]
        ),
        "all 120 voxels in the mask have NaN",
    ),
    "unwritable output": (
        lambda s: fit_args(s, out=_write(s["dir"] / "afile", "x") / "sub"),
        r"cannot write to output folder .*sub: .*afile is a file, not a folder; choose another",  # (not "Not a dir")
    ),
    "contrast name": (lambda s: fit_args(s, contrast=["../..=A"]), "has no ASCII letter or digit"),
    "contrast name not ASCII": (lambda s: fit_args(s, contrast=["\u00e4=A"]), "'\u00e4' has no ASCII letter or digit"),
    "bad max memory": (lambda s: fit_args(s, "--max-memory", "lots"), "--max-memory must be a size"),
    # (read by FILM only: with another noise model it was passed over, a file that is not there too)
    "mesh of a volume": (
        lambda s: fit_args(s, "--mesh", s["dir"] / "no.surf.gii"),
        r"--mesh .*no.surf.gii is the surface of surface data, but the data are a volume; leave it out",
    ),
}


def _cut(s):
    raw = s["bold"].read_bytes()
    return _write_bytes(s["dir"] / "cut.nii.gz", raw[: len(raw) // 2])


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _design(s, rows=None, nan=False, deficient=False):
    table = s["table"].copy()
    if rows:
        table = table.iloc[:rows]
    if nan:
        table.loc[2, "B"] = np.nan
    if deficient:
        table.insert(1, "A2", 1.0 - table["A"])
    path = s["dir"] / "bad_design.tsv"
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_exit_2_with_one_line_and_no_output(case, study, capsys):
    make_args, message = BAD[case]
    args = make_args(study)
    out_dir = args[args.index("-o") + 1]
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("voxfit: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert not os.path.exists(out_dir) or not any(
        __import__("pathlib").Path(out_dir).iterdir()
    )  # nothing, hidden or not


def test_existing_output_needs_force(study, capsys, monkeypatch):
    """A non-empty output folder is refused before any input is opened (a wrong folder costs no read), by fit,
    group and demo alike; with --force the fit runs and leaves the folder's other files alone."""
    import voxfit.io

    study["out"].mkdir()
    (study["out"] / "mine.txt").write_text("keep me")

    def opens_nothing(*args, **kwargs):
        raise AssertionError("an input was opened before the output folder was checked")

    monkeypatch.setattr(voxfit.io, "open_reader", opens_nothing)
    monkeypatch.setattr(voxfit.io, "load", opens_nothing)
    for args in (fit_args(study), ["group", str(study["bold"]), "-o", str(study["out"])]):
        code, _, err = run(capsys, *args)
        assert code == 2 and "is not empty" in err and "--force" in err, err
    code, _, err = run(capsys, "demo", "-o", str(study["out"]), "--quiet")
    assert code == 2 and "is not empty" in err
    monkeypatch.undo()
    assert sorted(p.name for p in study["out"].iterdir()) == ["mine.txt"]
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 0, err
    assert (study["out"] / "mine.txt").read_text() == "keep me"
    with pytest.raises(
        voxfit.exceptions.InputError, match="is not empty; choose another or pass `force` to overwrite"
    ):  # (the API's)
        voxfit.fit_images(study["bold"], study["design"], {"c": "A"}, out_dir=study["out"])
    assert (study["out"] / "contrast-task_stat-t_statmap.nii.gz").exists()


def test_interrupted_or_failing_runs_leave_no_partial_maps(study, capsys, monkeypatch):
    calls = []
    original = glm.Masker.write

    def flaky(self, path, values, names, *intent):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, path, values, names, *intent)

    monkeypatch.setattr(glm.Masker, "write", flaky)
    code, _, err = run(capsys, *fit_args(study))
    assert code == 130 and "interrupted" in err
    assert not study["out"].exists()

    def broken(self, path, values, names, *intent):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(glm.Masker, "write", broken)
    code, _, err = run(capsys, *fit_args(study))
    assert (
        code == 1 and err.count("\n") == 1 and "internal error: RuntimeError: disk on fire" in err and "--debug" in err
    )
    assert not study["out"].exists()
    code, _, err = run(capsys, "--debug", *fit_args(study))
    assert code == 1 and "Traceback" in err


def test_warnings_are_one_line(study, capsys):
    args = fit_args(study, "--design", _design(study, deficient=True), contrast=["c=A - A2"])
    args.remove("--quiet")
    code, out, err = run(capsys, *args)
    assert code == 0
    assert err.startswith("voxfit: warning: The design is rank deficient") and err.count("\n") == 1


def test_a_warning_said_by_every_run_is_printed_once(study, capsys):
    """Two runs of one rank-deficient design: each run's fit warns, the program says it once."""
    design = _design(study, deficient=True)
    second = study["dir"] / "bold2.nii.gz"
    img = nib.load(study["bold"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), second)  # (another run's data)
    args = ["fit", study["bold"], second, "--design", design, design, "--contrast", "c=A - A2"]
    code, _, err = run(capsys, *args, "-o", study["out"])
    assert code == 0, err
    assert err.startswith("voxfit: warning: The design is rank deficient") and err.count("\n") == 1, err


def test_p_maps_keep_p_values_that_float32_cannot_hold(tmp_path, rng, capsys):
    """A voxel whose signal dwarfs its noise has p far below float32's range (1e-60 here): its p map is written in
    float64 rather than as 0, the z map as float32; the p map of an ordinary fit stays float32."""
    n = 60
    t = np.arange(n)
    design = pd.DataFrame({"A": (t % 10 < 5).astype(float), "constant": 1.0})
    data = 100 + rng.standard_normal(SHAPE + (n,))
    data[2, 2, 2] += 40 * design["A"].to_numpy()  # (t of about 150)
    bold = write_nifti(tmp_path / "bold.nii.gz", data.astype(np.float32))
    design.to_csv(tmp_path / "design.tsv", sep="\t", index=False)
    code, _, err = run(
        capsys, "fit", bold, "--design", tmp_path / "design.tsv", "--contrast", "c=A", "-o", tmp_path / "o"
    )
    assert code == 0, err
    p_map = nib.load(tmp_path / "o" / "contrast-c_stat-p_statmap.nii.gz")
    z_map = nib.load(tmp_path / "o" / "contrast-c_stat-z_statmap.nii.gz")
    assert p_map.get_data_dtype() == np.float64 and z_map.get_data_dtype() == np.float32
    p = np.asarray(p_map.dataobj)[2, 2, 2]
    assert 0 < p < 1e-60
    data[2, 2, 2] = 100 + rng.standard_normal(n)
    bold = write_nifti(tmp_path / "bold.nii.gz", data.astype(np.float32))
    code, _, err = run(
        capsys, "fit", bold, "--design", tmp_path / "design.tsv", "--contrast", "c=A", "-o", tmp_path / "o", "--force"
    )
    assert code == 0, err
    assert nib.load(tmp_path / "o" / "contrast-c_stat-p_statmap.nii.gz").get_data_dtype() == np.float32


def test_column_labels_never_collide():
    assert glm._column_labels(["a", "a_", "a1"]) == ["a2", "a3", "a1"]
    labels = glm._column_labels(["x-1", "x1", "x_1", "y"])
    assert len(set(labels)) == 4 and labels[3] == "y"
    # unique whatever their case: the effect maps of columns A and a are one file where case is ignored
    assert glm._column_labels(["A", "a", "b", "a2"]) == ["A3", "a4", "b", "a2"]


def test_stale_partial_folder_of_a_killed_run_is_ignored(study, capsys):
    import socket

    study["out"].mkdir()
    stale = study["out"] / ".voxfit-partial-k1ll3d"
    stale.mkdir()  # its marker: this host, no such process (a folder without one is the user's: see test_hostile_files)
    (stale / "voxfit-run.json").write_text(json.dumps({"host": socket.gethostname(), "pid": 999999999}))
    code, _, err = run(capsys, *fit_args(study))
    assert code == 0, err
    assert not stale.exists()


def test_design_with_a_byte_order_mark(study, capsys):
    path = study["dir"] / "bom.csv"
    study["table"].to_csv(path, index=False, encoding="utf-8-sig")
    code, _, err = run(capsys, *fit_args(study, "--design", path, contrast=["c=A - B"]))
    assert code == 0, err


@pytest.mark.parametrize("scaling", ["mean", "global"])
def test_signal_scaling(study, capsys, scaling):
    code, _, err = run(capsys, *fit_args(study, "--scaling", scaling, contrast=["c=A - B"]))
    assert code == 0, err
    ds = voxfit.load(study["bold"], mask_threshold="auto")  # as voxfit fit
    Y = np.asarray(ds.data, dtype=np.float64)
    if scaling == "mean":
        ref_data = 100 * (Y / Y.mean(axis=0) - 1)
    else:
        # spm_global.c of each whole scan, background included whatever the mask: the mean of the finite values
        # above 1/8 of the mean of the finite values; session-specific grand mean scaled to 100
        whole = np.asarray(nib.load(study["bold"]).dataobj, dtype=np.float64).reshape(-1, Y.shape[0], order="F").T
        g = np.array([row[row > row[np.isfinite(row)].mean() / 8].mean() for row in whole])
        ref_data = Y * 100 / g.mean()
    ref = voxfit.fit(study["table"], ref_data)
    eff = np.asarray(nib.load(study["out"] / "contrast-c_stat-effect_statmap.nii.gz").dataobj).reshape(-1, order="F")
    expected = ref.contrast("A - B").effect
    npt.assert_allclose(eff[ds.masker.mask], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())  # float32 maps
    model = json.loads((study["out"] / "model.json").read_text())
    assert model["settings"]["scaling"] == scaling


def test_global_scaling_does_not_depend_on_the_mask(study, capsys):
    """SPM scales by the globals of whole scans: an explicit mask (here half the brain) changes which voxels
    are fitted, not their betas (it made them 0.636 x SPM's when the globals were taken over the mask)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:, 1:, :] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(study["dir"] / "half.nii.gz"))
    out = study["dir"] / "masked"
    code, _, err = run(
        capsys,
        *fit_args(study, "--scaling", "global", "--mask", study["dir"] / "half.nii.gz", out=out, contrast=["c=A - B"]),
    )
    assert code == 0, err
    code, _, err = run(capsys, *fit_args(study, "--scaling", "global", contrast=["c=A - B"]))
    assert code == 0, err
    masked = nib.load(out / "regressor-A_stat-effect_statmap.nii.gz").get_fdata()
    whole = nib.load(study["out"] / "regressor-A_stat-effect_statmap.nii.gz").get_fdata()
    inside = (mask > 0) & np.isfinite(whole)
    assert inside.sum() > 20
    npt.assert_allclose(masked[inside], whole[inside], rtol=1e-6)


def test_contrast_names_are_never_changed_silently(study, capsys):
    code, _, err = run(capsys, *fit_args(study, contrast=["Sound > Rest=A - B"]))
    assert code == 2 and "contrast name 'Sound > Rest' is not a label" in err and "'SoundRest'" in err
    assert err.count("\n") == 1 and not study["out"].exists()
    args = [a for a in fit_args(study, contrast=["A - B"]) if a != "--quiet"]  # (the warning shows)
    code, _, err = run(capsys, *args)
    assert code == 0 and "contrast 'A - B' has no name, so its maps are named contrast-AB_" in err
    assert (study["out"] / "contrast-AB_stat-t_statmap.nii.gz").exists()
    with pytest.raises(voxfit.exceptions.InputError, match="contrast name 'a-b' is not a label"):
        voxfit.fit_images(study["bold"], study["table"], {"a-b": "A - B"})


def test_an_infinite_background_value_does_not_reach_the_globals(study, capsys):
    """spm_global averages finite values: one +inf outside the brain must not make a scan's global infinite
    (which zeroed every beta with --scaling global and emptied SPM's 0.8 mask)."""
    data = study["data"].copy()
    data[0, 0, 0, 3] = np.inf  # the background corner, one scan
    write_nifti(study["dir"] / "inf.nii", data)
    args = [
        "fit",
        study["dir"] / "inf.nii",
        "--design",
        study["design"],
        "--scaling",
        "global",
        "--contrast",
        "c=A",
        "-o",
        study["dir"] / "inf",
        "--quiet",
    ]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    code, _, err = run(capsys, *fit_args(study, "--scaling", "global", contrast=["c=A"]))
    assert code == 0, err
    with_inf = nib.load(study["dir"] / "inf" / "contrast-c_stat-effect_statmap.nii.gz").get_fdata()
    without = nib.load(study["out"] / "contrast-c_stat-effect_statmap.nii.gz").get_fdata()
    npt.assert_array_equal(np.isfinite(with_inf), np.isfinite(without))
    npt.assert_allclose(with_inf[np.isfinite(without)], without[np.isfinite(without)], rtol=1e-6)


def test_a_tr_that_the_header_contradicts_is_warned_of(tmp_path, capsys):
    """--tr 3 for a run whose header gives 2 s between scans (pixdim[4] in seconds): fitted with --tr, as SPM and
    nilearn do, but said in one warning line (FSL and AFNI would take the header's 2 s). A header in milliseconds
    that agrees, or one without time units, says nothing."""
    data = 100 + np.random.default_rng(0).standard_normal(SHAPE + (40,)).astype(np.float32)
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t10\tA\n30\t10\tA\n")
    for units, step, tr, warned in (("sec", 2.0, 3, True), ("msec", 2000.0, 2, False), ("unknown", 2.0, 3, False)):
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_xyzt_units("mm", units)
        img.header["pixdim"][4] = step
        nib.save(img, tmp_path / "bold.nii.gz")
        args = ["fit", tmp_path / "bold.nii.gz", "--events", tmp_path / "events.tsv", "--tr", tr, "--contrast", "c=A"]
        code, _, err = run(capsys, *args, "-o", tmp_path / "out", "--force")  # (--quiet prints no warning)
        assert code == 0
        expected = "--tr 3 but the header of" in err and "gives 2 s between scans" in err and err.count("\n") == 1
        assert expected if warned else err == "", err
    # the API's FirstLevel, as the command line (it said nothing: a tester's)
    from voxfit import FirstLevel

    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    with pytest.warns(UserWarning, match=r"`tr` 3 but the header of the run gives 2 s between scans"):
        FirstLevel(tr=3, noise="ols").fit(img, tmp_path / "events.tsv", {"c": "A"})


def test_a_surface_runs_mesh_is_checked_before_the_fit_and_refused_where_nothing_reads_it(tmp_path, capsys, rng):
    """A mesh of other vertices than the run's was found by the report once the fit was done (exit 2, nothing
    kept), or never without --report; a mesh that neither FILM nor --report reads was passed over (exit 0)."""
    from .imaging import write_icosahedron

    run_file = write_gifti(tmp_path / "lh.func.gii", 100 + rng.standard_normal((40, 12)).astype(np.float32))
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t10\tA\n40\t10\tA\n")
    wrong = write_gifti(tmp_path / "wrong.surf.gii", rng.standard_normal((3, 5)).astype(np.float32))
    mesh = write_icosahedron(tmp_path / "lh.surf.gii")
    args = ["fit", run_file, "--events", tmp_path / "events.tsv", "--tr", "2", "--contrast", "c=A", "--noise", "ols"]
    for extra, message in (
        (["--mesh", wrong, "--report"], "not a GIFTI surface with vertices and triangles"),
        (["--mesh", mesh], "--mesh is read by --noise film (its spatial step) and --report (the surface views)"),
    ):
        code, _, err = run(capsys, *args, *extra, "-o", tmp_path / "out")
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()


def test_a_tr_that_a_cifti_series_contradicts_is_warned_of(tmp_path, capsys):
    """An HCP run's series map gives 0.72 s between scans; --tr 2 was fitted without a word (a NIfTI header's
    mismatch is warned of). Read by voxfit's own CIFTI reader from a file, and by nibabel's from an image."""
    from nibabel import cifti2

    from voxfit.io import header_scan_step, open_reader

    models = cifti2.BrainModelAxis.from_mask(np.ones(50, bool), name="CortexLeft")
    data = 100 + np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    image = cifti2.Cifti2Image(data, header=(cifti2.SeriesAxis(0, 0.72, 40), models))
    nib.save(image, tmp_path / "bold.dtseries.nii")
    assert header_scan_step(open_reader(image)) == pytest.approx(0.72)
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t5\tA\n15\t5\tA\n")
    for tr, warned in ((2, True), (0.72, False)):
        args = ["fit", tmp_path / "bold.dtseries.nii", "--events", tmp_path / "events.tsv", "--tr", tr, "--contrast"]
        code, _, err = run(capsys, *args, "c=A", "--noise", "ols", "-o", tmp_path / "out", "--force")
        assert code == 0
        said = "--tr 2 but the header of" in err and "gives 0.72 s between scans" in err and err.count("\n") == 1
        assert said if warned else err == "", err


@pytest.mark.parametrize("scaled", [False, True], ids=["voxfit's reader", "nibabel's"])
@pytest.mark.parametrize(
    "field, said",
    [
        (b'NumberOfSeriesPoints="45"', "gives 45 scans (NumberOfSeriesPoints) but the file holds 40; fitted on the 40"),
        (b'SeriesStep="0.00', "gives 0 s between scans (SeriesStep), which no run has"),
        (b'SeriesStep="-.72', "gives -0.72 s between scans (SeriesStep), which no run has"),
    ],
)
def test_a_cifti_series_map_that_contradicts_its_file_is_warned_of(tmp_path, capsys, field, said, scaled):
    """A CIFTI file whose series map gives another number of scans than it holds, or a time between scans of 0 or
    less, was fitted on the scans it holds without a word (carried since stop 54; nibabel's warning, for a file
    it reads, named no file): one line names the file and the field, and the fit is the honest file's."""
    import struct

    from nibabel import cifti2

    models = cifti2.BrainModelAxis.from_mask(np.ones(50, bool), name="CortexLeft")
    data = 100 + np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    nib.save(cifti2.Cifti2Image(data, header=(cifti2.SeriesAxis(0, 0.72, 40), models)), tmp_path / "ok.dtseries.nii")
    raw = bytearray((tmp_path / "ok.dtseries.nii").read_bytes())
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t5\tA\n15\t5\tA\n")
    honest = field.split(b"=")[0] + (b'="40"' if b"Points" in field else b'="0.72')
    assert raw.count(honest) == 1
    lie = raw.replace(honest, field)
    if scaled:  # (scl_slope 1 in the NIfTI-2 header: read by nibabel, not from the stored layout)
        raw[176:192] = lie[176:192] = struct.pack("<dd", 1.0, 1e-9)
    for name, content in (("ok", raw), ("lie", lie)):
        (tmp_path / f"{name}.dtseries.nii").write_bytes(bytes(content))
        args = ["fit", tmp_path / f"{name}.dtseries.nii", "--events", tmp_path / "events.tsv", "--tr", "0.72"]
        code, _, err = run(capsys, *args, "--contrast", "c=A", "--noise", "ols", "-o", tmp_path / name)
        assert code == 0
        assert (
            f"{tmp_path / 'lie.dtseries.nii'}: its CIFTI series map {said}" in err and err.count("\n") == 1
            if name == "lie"
            else err == ""
        ), err
    maps = sorted((tmp_path / "ok").glob("*.dscalar.nii"))
    assert len(maps) >= 3, maps
    for honest_map in maps:
        lied = nib.load(tmp_path / "lie" / honest_map.name)
        np.testing.assert_array_equal(np.asarray(lied.dataobj), np.asarray(nib.load(honest_map).dataobj))


@pytest.mark.parametrize("time_step, seconds", [("2000.000000", 2.0), ("720", 0.72), ("1.5", 1.5), ("n/a", None)])
def test_a_tr_that_a_gifti_runs_time_step_contradicts_is_warned_of(tmp_path, capsys, time_step, seconds):
    """FreeSurfer's mri_vol2surf (fMRIPrep's surface runs) writes the run's TR in each data array's metadata,
    TimeStep, in milliseconds; a --tr that contradicts it was fitted without a word, where a NIfTI header's or a
    CIFTI series map's is warned of (carried since stop 40). A TimeStep under 20 is taken for seconds; one that is
    not a number says nothing."""
    from voxfit.io import header_scan_step, open_reader

    data = 100 + np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32)
    meta = nib.gifti.GiftiMetaData({"TimeStep": time_step})
    arrays = [nib.gifti.GiftiDataArray(row, intent="NIFTI_INTENT_TIME_SERIES", meta=meta) for row in data]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), tmp_path / "lh.bold.func.gii")
    step = header_scan_step(open_reader(str(tmp_path / "lh.bold.func.gii")))
    assert step == (None if seconds is None else pytest.approx(seconds))
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t5\tA\n15\t5\tA\n")
    for tr in (3, seconds or 2):
        args = ["fit", tmp_path / "lh.bold.func.gii", "--events", tmp_path / "events.tsv", "--tr", tr, "--contrast"]
        code, _, err = run(capsys, *args, "c=A", "--noise", "ols", "-o", tmp_path / "out", "--force")
        assert code == 0
        if tr == 3 and seconds is not None:
            assert "--tr 3 but the header of" in err and f"gives {seconds:g} s between scans" in err, err
            assert err.count("\n") == 1
        else:
            assert err == "", err


def test_an_error_naming_a_file_with_a_line_break_is_one_line(tmp_path, capsys):
    """A file name may hold a line break; the error that names it stays one line of stderr (the break written
    as \\n)."""
    odd = tmp_path / "run\nsecond.nii.gz"
    odd.write_bytes(b"not an image")
    code = main(["fit", str(odd), "--design", str(tmp_path / "d.tsv"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "run\\nsecond" in err, err


@pytest.mark.parametrize("given", [["--con", "design.con"], ["--contrast", "design.con"]])
def test_an_fsl_con_file_given_to_fit_is_said_to_be_group_s(tmp_path, capsys, given):
    """FSL's design.con given to voxfit fit: argparse's "ambiguous option: --con could match --contrast,
    --convolution..." or "unknown column 'design.con'"; it is said to be voxfit group's, with fit's form."""
    code = main(
        ["fit", str(tmp_path / "bold.nii"), "--design", str(tmp_path / "d.tsv"), *given, "-o", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "FSL's design.con is for voxfit group (--con)" in err and err.count("\n") == 1, err


def test_a_copy_of_a_run_given_as_another_run_is_refused(study, capsys):
    """One run copied under another name and given as a second run (the same file twice is refused before the
    fit): it was combined with itself, its dof doubled, exit 0. Refused from the runs' digests; nothing written."""
    import shutil

    design = _design(study)
    second = study["dir"] / "copy.nii.gz"
    shutil.copyfile(study["bold"], second)
    args = ["fit", study["bold"], second, "--design", design, design, "--contrast", "c=A", "--quiet"]
    code, _, err = run(capsys, *args, "-o", study["out"])
    assert code == 2 and "runs 1 (" in err and "hold the same data (identical BLAKE3 digests)" in err, err
    assert not study["out"].exists()


def test_a_file_whose_name_begins_with_a_dash_is_said_to_read_as_an_option(study, capsys, monkeypatch):
    """`voxfit fit -run.nii ...`: argparse said that INPUT was missing (a tester's). Said as a file read as an option,
    with the way to give it; a file named like one of voxfit's options (-o) does not stop the option's use."""
    import shutil

    monkeypatch.chdir(study["dir"])
    shutil.copy(study["bold"], "-run.nii.gz")
    (study["dir"] / "-o").write_text("")
    args = ["--design", str(study["design"]), "--contrast", "c=A", "-o", str(study["out"])]
    with pytest.raises(SystemExit) as e:  # (argparse's errors: exit 2)
        main(["fit", "-run.nii.gz", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "-run.nii.gz is a file whose name begins with '-', which reads as an option" in err
    assert err.count("\n") == 1 and "give it as ./-run.nii.gz" in err and not study["out"].exists()
    code, _, err = run(capsys, "fit", "./-run.nii.gz", *args, "--quiet")
    assert code == 0, err
    # (values argparse reads as values, not options, though a file of that name is here: a reviewer's false refusal)
    shutil.copy(study["design"], "-my design.tsv")
    (study["dir"] / "-4").write_text("")
    spaced = ["./-run.nii.gz", "--design", "-my design.tsv", "--contrast", "c=A", "-o", study["dir"] / "o2"]
    code, _, err = run(capsys, "fit", *spaced, "--n-jobs", "-4")
    assert code == 2 and "begins with '-'" not in err and "--n-jobs must be" in err, err
    code, _, err = run(capsys, "fit", *spaced, "--quiet")
    assert code == 0, err


def test_a_runs_files_named_for_another_run_are_said(recwarn):
    """Events (or designs, confounds) swapped between two runs were fitted without a word (a tester's): where a
    run's file and its data both carry BIDS labels (sub-, ses-, task-, acq-, dir-, run-: run numbers as numbers)
    that differ, it is said, naming the option; files in their runs' order, or without labels, are not."""
    from voxfit.cli import _warn_runs_named_otherwise

    bold = ["d/sub-01_task-x_run-1_bold.nii.gz", "d/sub-01_task-x_run-02_bold.nii.gz"]
    _warn_runs_named_otherwise(bold, {"--events": ["e/sub-01_task-x_run-01_events.tsv", "e/sub-01_run-2_events.tsv"]})
    _warn_runs_named_otherwise(bold, {"--design": ["a.tsv", "b.tsv"], "--confounds": None})
    assert not recwarn.list
    swapped = {"--events": ["sub-01_task-x_run-2_events.tsv", "sub-01_task-x_run-1_events.tsv"]}
    with pytest.warns(UserWarning) as said:
        _warn_runs_named_otherwise(bold, swapped)
    assert [str(w.message).split(":")[0] for w in said] == [
        "run 1's --events file sub-01_task-x_run-2_events.tsv is named run-2 for run-1 of its data "
        "sub-01_task-x_run-1_bold.nii.gz",
        "run 2's --events file sub-01_task-x_run-1_events.tsv is named run-1 for run-2 of its data "
        "sub-01_task-x_run-02_bold.nii.gz",
    ]
    assert all("fitted as given; check the order of --events." in str(w.message) for w in said)
