"""Events as SPM users hold them: onsets in scans, parametric modulators from events columns, and the events
files and timings that cannot make a design (refused in one line). SPM's own matrices: test_spm_reference.py."""

import re
import zipfile

import numpy as np
import numpy.testing as npt
import pytest

from voxfit.cli import main
from voxfit.core.expr import parse_contrast
from voxfit.design import make_design, parse_modulators, read_design, read_events
from voxfit.exceptions import DesignWarning, InputError

EVENTS = (
    "onset\tduration\ttrial_type\trt\tdifficulty\n"
    "4\t0\tfaces\t0.81\t1\n20\t0\thouses\tn/a\tn/a\n33\t0\tfaces\t0.62\t3\n"
    "48\t0\thouses\tn/a\tn/a\n61\t0\tfaces\t1.05\t2\n80\t0\tfaces\t0.7\t2\n"
)
AS_DICT = {
    "faces": {
        "onset": [4.0, 33.0, 61.0, 80.0],
        "duration": np.zeros(4),
        "rt": [0.81, 0.62, 1.05, 0.7],
        "difficulty": [1.0, 3.0, 2.0, 2.0],
    },
    "houses": {"onset": [20.0, 48.0], "duration": np.zeros(2)},
}


def _write(path, text):
    path.write_text(text)
    return path


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def test_parse_modulators():
    assert parse_modulators("rt:1, difficulty:2") == {"rt": 1, "difficulty": 2}
    assert parse_modulators("rt") == parse_modulators(["rt"]) == parse_modulators({"rt": 1}) == {"rt": 1}
    assert parse_modulators(None) == parse_modulators("") == {}
    for bad, message in (
        ("rt:0", "polynomial orders 1, 2"),
        ("rt:x", "polynomial orders"),
        ("rt:1.5", "orders"),
        ("onset:1", "'onset' is an events column of its own"),
        ("rt,rt:2", "names 'rt' twice"),
        ({"rt": True}, "orders"),
    ):
        with pytest.raises(InputError, match=message):
            parse_modulators(bad)


def test_modulators_from_an_events_file_as_from_a_dict(tmp_path):
    ev = _write(tmp_path / "ev.tsv", EVENTS)
    read = read_events(ev, "rt,difficulty")
    npt.assert_array_equal(read["faces"]["rt"], AS_DICT["faces"]["rt"])
    assert np.isnan(read["houses"]["rt"]).all()  # n/a: events without a value
    d = make_design(ev, 2.0, 50, modulators="rt:1,difficulty:2", hrf="spm+derivative")
    assert d.names[:8] == (
        "faces",
        "faces_derivative",
        "facesxrt^1",
        "facesxrt^1_derivative",
        "facesxdifficulty^1",
        "facesxdifficulty^1_derivative",
        "facesxdifficulty^2",
        "facesxdifficulty^2_derivative",
    )
    assert d.names[8:10] == ("houses", "houses_derivative")  # all n/a: no modulator columns for houses
    assert d.kinds[:4] == ("condition", "derivative", "modulator", "derivative")
    npt.assert_array_equal(
        d.X, make_design(AS_DICT, 2.0, 50, modulators={"rt": 1, "difficulty": 2}, hrf="spm+derivative").X
    )
    assert d.settings["modulators"] == {"rt": 1, "difficulty": 2} and d.settings["units"] == "secs"
    # SPM orthogonalises within the trial type: every modulator column is orthogonal to the condition's
    j = d.names.index
    for name in ("facesxrt^1", "facesxdifficulty^1", "facesxdifficulty^2"):
        assert abs(d.X[:, j("faces")] @ d.X[:, j(name)]) < 1e-12 * np.linalg.norm(d.X[:, j(name)]) * np.linalg.norm(
            d.X[:, j("faces")]
        )
    assert "facesxrt^1" in d.variance_inflation()  # effects of interest
    npt.assert_array_equal(parse_contrast("facesxrt^1 - 0.5*faces", d.names)[0][[0, 2]], [-0.5, 1.0])
    # without modulators the extra columns are ignored, as before
    assert make_design(ev, 2.0, 50).names == ("faces", "houses", "drift_1", "constant")


def test_the_modulator_adds_the_centred_values_as_heights():
    """Order 1 alone: the modulator's input is P minus its mean, so its regressor is the plain one of heights
    P - mean(P) (orthogonal at the scans to the condition's only up to the microtime sampling: SPM orthogonalises
    the sampled columns too)."""
    rt = np.array([0.81, 0.62, 1.05, 0.7])
    d = make_design(
        {"f": {"onset": [4.0, 33.0, 61.0, 80.0], "duration": np.zeros(4), "rt": rt}},
        2.0,
        50,
        modulators="rt",
        drift="none",
    )
    heights = make_design(
        {"f": {"onset": [4.0, 33.0, 61.0, 80.0], "duration": np.zeros(4), "modulation": rt - rt.mean()}},
        2.0,
        50,
        drift="none",
    ).X[:, 0]
    plain = d.X[:, 0]
    npt.assert_allclose(d.X[:, 1], heights - (heights @ plain) / (plain @ plain) * plain, atol=1e-12)


def test_modulation_named_as_a_modulator_is_parametric():
    ev = {"A": {"onset": [4.0, 30.0, 60.0], "duration": np.zeros(3), "modulation": [1.0, 2.0, 4.0]}}
    d = make_design(ev, 2.0, 50, modulators="modulation")
    assert d.names[:2] == ("A", "Axmodulation^1")
    npt.assert_array_equal(
        d.X[:, 0], make_design({"A": {"onset": [4.0, 30.0, 60.0], "duration": np.zeros(3)}}, 2.0, 50).X[:, 0]
    )


@pytest.mark.parametrize(
    "events,modulators,message",
    [
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": [0.5, np.nan]}},
            "rt",
            "modulator 'rt' has values for 1 of 2 events; give it for every event of the condition, or for none",
        ),
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": [0.5, 0.5]}},
            "rt",
            "modulator 'rt' is the same for every event .1 distinct values., so its column Axrt\\^1 would be empty",
        ),
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": [0.5, 0.7]}},
            "rt:2",
            "modulator 'rt' to the power 2 is a combination of its lower powers .2 distinct values.*use order 1",
        ),
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": [0.5, 0.7], "modulation": [1.0, 2.0]}},
            "rt",
            "a modulation column .amplitudes, nilearn's. and parametric modulators .SPM's. cannot be combined",
        ),
        ({"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0]}}, "rt", "modulator 'rt' has no values in any condition"),
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": [0.5]}},
            "rt",
            "one finite value .or NaN. per event",
        ),
        (
            {"A": {"onset": [1.0, 9.0], "duration": [0.0, 0.0], "rt": ["a", "b"]}},
            "rt",
            "modulator 'rt' must be numbers",
        ),
    ],
)
def test_modulators_that_cannot_make_columns_are_refused(events, modulators, message):
    with pytest.raises(InputError, match=message):
        make_design(events, 2.0, 30, modulators=modulators)


def test_modulators_are_spm_s_and_named_columns_must_exist(tmp_path):
    with pytest.raises(InputError, match="need convolution='spm'"):
        make_design(AS_DICT, 2.0, 50, modulators="rt", convolution="nilearn")
    ev = _write(tmp_path / "ev.tsv", EVENTS)
    with pytest.raises(InputError, match="has no column 'RT' for the modulator; similar columns: rt"):
        read_events(ev, "RT")
    bad = _write(tmp_path / "bad.tsv", "onset\tduration\trt\n1\t0\tslow\n")
    with pytest.raises(InputError, match="line 2: modulator rt 'slow' is not a number"):
        read_events(bad, "rt")


def test_onsets_and_durations_in_scans(tmp_path):
    """SPM's UNITS 'scans': onset k is the start of scan k (0-based), k x TR seconds; durations likewise."""
    secs = {"A": {"onset": [4.0, 33.0, 61.0], "duration": [2.0, 3.0, 0.5]}, "B": {"onset": [10.5], "duration": [1.0]}}
    tr = 2.5  # exact in binary: T * (TR / T) is TR
    scans = {k: {"onset": np.divide(v["onset"], tr), "duration": np.divide(v["duration"], tr)} for k, v in secs.items()}
    npt.assert_array_equal(make_design(scans, tr, 40, units="scans").X, make_design(secs, tr, 40).X)
    assert make_design(scans, tr, 40, units="scans").settings["units"] == "scans"
    nl = make_design(scans, tr, 40, units="scans", convolution="nilearn")
    npt.assert_allclose(nl.X, make_design(secs, tr, 40, convolution="nilearn").X, atol=1e-12)
    with pytest.raises(InputError, match="`units` .of onsets and durations. must be secs or scans"):
        make_design(secs, tr, 40, units="seconds")
    ev = _write(tmp_path / "scans.tsv", "onset\tduration\ttrial_type\n1.6\t0.8\tA\n13.2\t1.2\tA\n4.2\t0.4\tB\n")
    out = tmp_path / "d.tsv"
    assert (
        main(["design", str(ev), "--units", "scans", "--tr", "2.5", "--n-scans", "40", "-o", str(out), "--quiet"]) == 0
    )
    X, _names = read_design(out)
    ref = make_design(
        _write(tmp_path / "secs.tsv", "onset\tduration\ttrial_type\n4\t2\tA\n33\t3\tA\n10.5\t1\tB\n"), 2.5, 40
    )
    npt.assert_allclose(X, ref.X, atol=1e-12)  # (1.6 x 2.5 is 4 only to rounding; the grid bins are the same)


def test_modulators_and_units_from_the_command_line(tmp_path, capsys, rng):
    import voxfit

    from .imaging import volume_data, write_nifti

    ev = _write(tmp_path / "ev.tsv", EVENTS)
    out = tmp_path / "d.tsv"
    code, err = _run(
        capsys, "design", ev, "--tr", 2, "--n-scans", 50, "--modulators", "rt:1,difficulty:2", "-o", out, "--quiet"
    )
    assert code == 0, err
    X, names = read_design(out)
    ref = make_design(AS_DICT, 2.0, 50, modulators="rt:1,difficulty:2")
    assert tuple(names) == ref.names
    npt.assert_allclose(X, ref.X, rtol=0, atol=1e-15)
    code, err = _run(
        capsys, "design", ev, "--tr", 2, "--n-scans", 50, "--modulators", "rt:zero", "-o", tmp_path / "x.tsv"
    )
    assert code == 2 and "polynomial orders" in err and err.count("\n") == 1
    # fit: a contrast on a modulator column, named as SPM names it
    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, n=50))
    code, err = _run(
        capsys,
        "fit",
        bold,
        "--events",
        ev,
        "--tr",
        2,
        "--modulators",
        "rt",
        "--contrast",
        "rt=facesxrt^1",
        "-o",
        tmp_path / "res",
        "--quiet",
    )
    assert code == 0, err
    assert (tmp_path / "res" / "contrast-rt_stat-t_statmap.nii.gz").exists()
    model = voxfit.FirstLevel(tr=2.0, modulators={"rt": 1}, units="secs")
    assert model.design(ev, 50).names[:3] == ("faces", "facesxrt^1", "houses")
    d = _write(tmp_path / "design.tsv", "A\tconstant\n" + "".join(f"{i % 2}\t1\n" for i in range(50)))
    for option, value in (("--modulators", "rt"), ("--units", "scans")):
        code, err = _run(capsys, "fit", bold, "--design", d, "--contrast", "a=A", "-o", tmp_path / "o", option, value)
        assert code == 2 and f"{option} builds a design from --events" in err


def _xlsx(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return path


@pytest.mark.parametrize(
    "name,make,message",
    [
        (
            "events.csv",
            lambda p: _write(p, "onset,duration,trial_type\n1,0,A\n"),
            "is not tab-separated .a CSV, or spaces..",
        ),
        (
            "SPM.mat",
            lambda p: _bytes(p, b"MATLAB 5.0 MAT-file, Platform: GLNXA64\x00\x00\x01IM\x0f\x00\x00"),
            "is not a text table .a binary file such as .mat or .xlsx..",
        ),
        ("events.xlsx", _xlsx, "is not a text table"),
        (
            "latin1.tsv",
            lambda p: _bytes(p, "onset\tduration\tr\xe9ponse\n".encode("latin-1")),
            "is not UTF-8 text .byte 17: a binary file, or a table saved in another encoding..",
        ),
        ("spaces.tsv", lambda p: _write(p, "onset duration trial_type\n1 0 A\n"), "is not tab-separated"),
        (
            "cols.tsv",
            lambda p: _write(p, "time\tlength\tcondition\n1\t0\tA\n"),
            "has no 'onset' column .columns: time, length",
        ),
        ("empty.tsv", lambda p: _write(p, ""), "is empty"),
    ],
)
def test_files_that_are_not_events_are_refused_in_one_line(tmp_path, capsys, name, make, message):
    path = make(tmp_path / name)
    code, err = _run(capsys, "design", path, "--tr", 2, "--n-scans", 30, "-o", tmp_path / "d.tsv")
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert "voxfit reads a BIDS events file: tab-separated text with a header line naming onset and duration" in err
    with pytest.raises(InputError, match=message):
        read_events(path)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("semi.csv", "A;B;constant\n0,5;1,25;1\n1;0;1\n", "header line 'A;B;constant' is one column separated by semi"),
        ("semi.tsv", "A;B;constant\n0.5;1.25;1\n1;0;1\n", "separated by semicolons; voxfit reads a .tsv or .txt"),
        (
            "spaces.txt",
            "A   B  constant\n0.5 1.25    1\n1 0 1\n",
            "'A   B  constant' is one column separated by spaces",
        ),
        ("tabs.csv", "A\tB\tconstant\n0.5\t1.25\t1\n1\t0\t1\n", "one column separated by tabs; .* a .csv by commas"),
        ("commas.tsv", "A,B,constant\n0.5,1.25,1\n1,0,1\n", "one column separated by commas"),
        ("bare.tsv", "0.5\t1.25\t1\n1\t0\t1\n", "its first line holds numbers .0.5, 1.25, 1., not column names"),
        ("bare.csv", "1.5,2,3,4,5,6\n1,2,3,4,5,6\n", r"holds numbers .1.5, 2, 3, 4, \.\.\.., not column names"),
        ("typo.tsv", "A\tconstant\n0.7_5\t1\n1\t1\n", r"column 'A', row 1 is not a number .'0.7_5'."),  # (0.75)
    ],
)
def test_design_tables_that_are_not_read_as_named_columns_are_refused(tmp_path, name, text, message):
    """A design saved with another separator (a spreadsheet's semicolons and decimal commas, aligned spaces), or
    with no header line, was refused only later, as one column of text, or read with its first row as names (a
    scan lost, and the contrast's columns said to be '0.5, 1.25, 1'); now refused from its header, naming why."""
    with pytest.raises(InputError, match=message):
        read_design(_write(tmp_path / name, text))


def test_design_columns_named_with_other_separators_are_names(tmp_path):
    """One column whose name holds a space or a semicolon above single values, names that are partly numbers, and
    integers alone, are a header."""
    X, names = read_design(_write(tmp_path / "one.tsv", "face up\n1\n0\n"))
    assert names == ["face up"] and X.ravel().tolist() == [1.0, 0.0]
    X, names = read_design(_write(tmp_path / "two.tsv", "1\tconstant\n1\t1\n0\t1\n"))
    assert names == ["1", "constant"]
    # integers alone are names: pandas names a DataFrame's columns 0, 1, ..., and voxfit writes them so
    import pandas as pd

    pd.DataFrame(np.array([[0.5, 1.0], [0.25, 1.0]])).to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    assert read_design(tmp_path / "pandas.tsv")[1] == ["0", "1"]
    assert read_design(_write(tmp_path / "words.tsv", "inf\tnan\n1\t2\n3\t4\n"))[1] == ["inf", "nan"]


def test_conditions_after_the_end_of_the_run(tmp_path, capsys):
    ev = {
        "A": {"onset": [4.0, 30.0], "duration": [0.0, 0.0]},
        "late": {"onset": [100.0, 130.0], "duration": [2.0, 0.0]},
    }
    with pytest.raises(
        InputError, match=r"every event of 'late' starts at or after the end of the run \(50 scans x 2 s = 100 s\)"
    ):
        make_design(ev, 2.0, 50)
    ev["late"]["onset"] = [60.0, 99.0, 100.0, 150.0, 180.0]
    ev["late"]["duration"] = np.zeros(5)
    with pytest.warns(
        DesignWarning,  # (the units named: onsets in seconds given as scans lose some events, a tester's)
        match=r"3 of 5 events of 'late' start at or after the end of the run \(50 scans x 2 s.*--units scans",
    ):
        d = make_design(ev, 2.0, 50)
    assert np.abs(d.X[:, d.names.index("late")]).max() > 0
    # in scans, the run's duration is the same n_scans x TR
    scans = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n3\t0\tA\n50\t0\tB\n")
    code, err = _run(capsys, "design", scans, "--units", "scans", "--tr", 2, "--n-scans", 50, "-o", tmp_path / "d.tsv")
    assert code == 2 and "every event of 'B' starts at or after the end of the run (50 scans x 2 s = 100 s)" in err
    assert err.count("\n") == 1 and not (tmp_path / "d.tsv").exists()
