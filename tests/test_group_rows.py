"""voxfit group / SecondLevel: rows of a participants table matched to the maps by subject, never by order.

Data are held as users hold them: BIDS-derivative folders ``derivatives/voxfit/sub-<label>/...statmap.nii.gz``
and a ``participants.tsv`` whose rows are in another order than the maps, which are given in reversed order.
The t maps are checked against independent computations on the data in the right order (scipy's two-sample
t test, numpy's least squares), and for bitwise equality whatever the order of the inputs.
"""

import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest
from scipy import stats

from voxfit.cli import main
from voxfit.design import write_vest
from voxfit.design.subjects import subject_labels
from voxfit.exceptions import DesignWarning, InputError
from voxfit.models import SecondLevel

from .imaging import AFFINE

SHAPE = (5, 4, 3)
N = 10
PATIENTS = {"01", "03", "04", "07", "10"}  # not the first half: an order mistake changes the answer


@pytest.fixture
def study(tmp_path, rng):
    """Ten subjects' effect maps under derivatives/voxfit/sub-XX/, patients + 1.5 in a block; a participants
    table in a shuffled order, half of its ids written without the sub- prefix."""
    labels = [f"{i:02d}" for i in range(1, N + 1)]
    age = {label: 20.0 + 3 * k + rng.uniform(0, 2) for k, label in enumerate(labels)}
    maps, data = [], {}
    for label in labels:
        values = rng.standard_normal(SHAPE) + 0.05 * age[label]
        if label in PATIENTS:
            values[1:4, 1:3, 1:] += 1.5
        values[0] = 0.0  # outside the automatic mask
        folder = tmp_path / "derivatives" / "voxfit" / f"sub-{label}"
        folder.mkdir(parents=True)
        path = folder / "contrast-faces_stat-effect_statmap.nii.gz"
        nib.save(nib.Nifti1Image(values.astype(np.float32), AFFINE), path)
        maps.append(path)
        data[label] = np.asarray(nib.load(path).dataobj)
    shuffled = list(rng.permutation(labels))
    lines = ["participant_id\tgroup\tage\tsex"]
    for k, label in enumerate(shuffled):
        pid = f"sub-{label}" if k % 2 else label  # 'sub-01' and '01' are the same subject
        lines.append(f"{pid}\t{'patient' if label in PATIENTS else 'control'}\t{age[label]!r}\t{'MF'[k % 2]}")
    table = tmp_path / "participants.tsv"
    table.write_text("\n".join(lines) + "\n")
    return {
        "dir": tmp_path,
        "maps": maps,
        "labels": labels,
        "age": age,
        "data": data,
        "table": table,
        "order": shuffled,
        "lines": lines,
    }


def _t(folder, label):
    return np.asarray(nib.load(folder / f"contrast-{label}_stat-t_statmap.nii.gz").dataobj)


def _mask(folder):
    return np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0


def _ols_t(X, Y, c):
    """t of contrast c by numpy's least squares, the textbook way."""
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    sigma2 = ((Y - X @ beta) ** 2).sum(0) / dof
    c = np.asarray(c, dtype=float)
    return c @ beta / np.sqrt(c @ np.linalg.pinv(X.T @ X) @ c * sigma2)


def _group(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_two_sample_t_map_is_matched_by_subject_whatever_the_order(study, capsys):
    s = study
    runs = {
        "reversed": s["maps"][::-1],
        "sorted": s["maps"],
        "shuffled": [s["maps"][k] for k in (3, 9, 0, 5, 1, 8, 2, 7, 6, 4)],
    }
    for name, maps in runs.items():
        code, _, err = _group(
            capsys,
            "group",
            *maps,
            "--design",
            s["table"],
            "--two-sample",
            "group",
            "--contrast",
            "pvc=patient - control",
            "-o",
            s["dir"] / name,
        )
        assert code == 0, err
        assert "matched to the 10 maps by 'participant_id'" in err and "Traceback" not in err
    t = _t(s["dir"] / "reversed", "pvc")
    for name in ("sorted", "shuffled"):  # not just close: the same bits (fitted in the table's order)
        npt.assert_array_equal(_t(s["dir"] / name, "pvc"), t)
    # the sign against an independent computation: scipy's t test with age as a covariate is lstsq's; without
    # it, the design is patient, control, age, so compare with numpy on the data in the subjects' order
    mask = _mask(s["dir"] / "reversed")
    Y = np.stack([s["data"][label][mask] for label in s["labels"]])
    patient = np.array([label in PATIENTS for label in s["labels"]], dtype=float)
    age = np.array([s["age"][label] for label in s["labels"]])
    X = np.column_stack([1 - patient, patient, age])
    npt.assert_allclose(t[mask], _ols_t(X, Y, [-1, 1, 0]), rtol=1e-4, atol=1e-5)
    assert t[1:4, 1:3, 1:].mean() > 2  # patients' planted effect: positive


def test_group_only_table_agrees_with_scipy_ttest_ind(study, capsys):
    s = study
    table = s["dir"] / "groups.csv"  # a CSV, ids only with the prefix, rows reversed
    table.write_text(
        "participant_id,group\n"
        + "".join(f"sub-{label},{'patient' if label in PATIENTS else 'control'}\n" for label in s["labels"][::-1])
    )
    out = s["dir"] / "csv"
    code, _, err = _group(
        capsys,
        "group",
        *s["maps"][::-1],
        "--design",
        table,
        "--two-sample",
        "group",
        "--contrast",
        "pvc=patient - control",
        "-o",
        out,
        "--quiet",
    )
    assert code == 0 and err == ""
    mask = _mask(out)
    pat = np.stack([s["data"][label][mask] for label in s["labels"] if label in PATIENTS])
    con = np.stack([s["data"][label][mask] for label in s["labels"] if label not in PATIENTS])
    npt.assert_allclose(_t(out, "pvc")[mask], stats.ttest_ind(pat, con, axis=0).statistic, rtol=1e-4, atol=1e-5)


def test_model_json_records_map_participant_and_row(study, capsys):
    s = study
    out = s["dir"] / "g"
    assert (
        main(
            [
                "group",
                *map(str, s["maps"][::-1]),
                "--design",
                str(s["table"]),
                "--contrast",
                "age=age",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    design = json.loads((out / "model.json").read_text())["design"]
    assert (
        design["matched_by"] == "participant_id" and design["table"] == str(s["table"]) and design["dropped_rows"] == []
    )
    rows = design["rows"]
    assert [r["table_row"] for r in rows] == list(range(1, N + 1))  # fitted in the table's order
    for r in rows:
        label = s["order"][r["table_row"] - 1]
        assert r["participant_id"].removeprefix("sub-") == label
        assert f"sub-{label}" in r["map"]
    written = np.loadtxt(out / "design.tsv", skiprows=1)  # design.tsv in the same order: row k = table row k
    npt.assert_allclose(written[:, 0], [s["age"][label] for label in s["order"]])


def test_extra_row_is_refused_then_dropped_on_request(study, capsys):
    s = study
    maps = [m for m in s["maps"] if "sub-05" not in str(m) and "sub-08" not in str(m)][::-1]
    argv = ["group", *maps, "--design", s["table"], "--contrast", "age=age"]
    code, _, err = _group(capsys, *argv, "-o", s["dir"] / "bad")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 row(s) without a map" in err and "05" in err and "08" in err and "--drop-unmatched-rows" in err
    assert not (s["dir"] / "bad").exists() or not any((s["dir"] / "bad").iterdir())
    out = s["dir"] / "dropped"
    code, _, err = _group(capsys, *argv, "--drop-unmatched-rows", "-o", out)
    assert code == 0
    note = next(line for line in err.splitlines() if "dropped" in line)
    assert "2 row(s)" in note and "05" in note and "08" in note
    model = json.loads((out / "model.json").read_text())
    assert sorted(r["participant_id"].removeprefix("sub-") for r in model["design"]["dropped_rows"]) == ["05", "08"]
    assert model["design"]["n_rows"] == 8
    kept = [label for label in s["labels"] if label not in ("05", "08")]
    mask = _mask(out)
    Y = np.stack([s["data"][label][mask] for label in kept])
    X = np.column_stack([[s["age"][label] for label in kept], np.ones(8)])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, Y, [1, 0]), rtol=1e-4, atol=1e-5)
    code, _, err = _group(capsys, *argv, "--drop-unmatched-rows", "--quiet", "-o", s["dir"] / "quiet")
    assert code == 0 and err == ""


def _edit_table(s, edit):
    lines = list(s["lines"])
    edit(lines)
    s["table"].write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing row", "has no row for 1 map(s): sub-"),
        ("duplicate ids", "repeats ids: sub-"),
        ("map without a label", "1 map(s) have no sub-<label> in their file or folder names"),
        ("two maps of one subject", "two or more maps of the same subject: sub-02"),
        ("empty id", "column 'participant_id' is empty in row(s) 4"),
        ("leading zeros", "ids differ only in leading zeros"),
        ("unknown id column", "has no column 'subject' for --id-column"),
        ("drop without ids", "--drop-unmatched-rows drops rows whose id matches no map"),
        ("id column with design.mat", "FSL's design.mat has no ids"),
        # (a spreadsheet's semicolons: said as "no numeric column ... its text columns: participant_id;group;age")
        ("semicolons", "is one column separated by semicolons; voxfit reads a .tsv or .txt separated by tabs"),
        # (the subject was not named: a tester's)
        ("missing covariate", "column 'age' has missing values (n/a) for "),
    ],
)
def test_tables_that_cannot_be_matched_are_refused(study, capsys, case, message):
    s = study
    maps, extra = list(s["maps"][::-1]), []
    if case == "missing row":
        _edit_table(s, lambda lines: lines.pop(3))
    elif case == "duplicate ids":  # 'sub-03' and '03': the same subject twice
        _edit_table(
            s,
            lambda lines: lines.append(
                ("03" if any(x.startswith("sub-03\t") for x in lines) else "sub-03") + "\tpatient\t40\tF"
            ),
        )
    elif case == "map without a label":
        other = s["dir"] / "extra" / "contrast-faces_stat-effect_statmap.nii.gz"
        other.parent.mkdir()
        other.write_bytes(maps[0].read_bytes())
        maps.append(other)
    elif case == "two maps of one subject":
        other = maps[-2].parent / "contrast-faces_run-2_stat-effect_statmap.nii.gz"
        other.write_bytes(maps[-2].read_bytes())
        maps.append(other)
    elif case == "empty id":
        _edit_table(s, lambda lines: lines.__setitem__(4, "n/a" + lines[4][lines[4].index("\t") :]))
    elif case == "leading zeros":
        _edit_table(
            s,
            lambda lines: lines.__setitem__(
                1, "sub-" + str(int(lines[1].removeprefix("sub-").split("\t")[0])) + lines[1][lines[1].index("\t") :]
            ),
        )
    elif case == "unknown id column":
        extra = ["--id-column", "subject"]
    elif case == "drop without ids":
        s["table"].write_text("age\n" + "".join(f"{a}\n" for a in s["age"].values()))
        extra = ["--drop-unmatched-rows"]
    elif case == "missing covariate":
        _edit_table(s, lambda lines: lines.__setitem__(2, "\t".join(lines[2].split("\t")[:2] + ["n/a", "F"])))
        message += s["table"].read_text().splitlines()[2].split("\t")[0] + ";"
    elif case == "semicolons":
        s["table"].write_text(s["table"].read_text().replace("\t", ";"))
    elif case == "id column with design.mat":
        write_vest(s["table"].with_suffix(".mat"), np.ones((N, 1)))
        s["table"] = s["table"].with_suffix(".mat")
        extra = ["--id-column", "participant_id"]
    out = s["dir"] / "bad"
    code, stdout, err = _group(
        capsys, "group", *maps, "--design", s["table"], "--contrast", "age=age", *extra, "-o", out
    )
    assert code == 2, err
    assert message in err and err.startswith("voxfit: error: ") and err.count("\n") == 1, err
    assert stdout == "" and (not out.exists() or not any(out.iterdir()))


def test_named_id_column_is_matched_and_never_a_regressor(study, capsys):
    """A numeric-looking id column ('01', ...) named with --id-column: matched, not fitted as a covariate."""
    s = study
    table = s["dir"] / "subjects.tsv"
    table.write_text("subject\tage\n" + "".join(f"{label}\t{s['age'][label]!r}\n" for label in s["order"]))
    out = s["dir"] / "named"
    code, _, err = _group(
        capsys,
        "group",
        *s["maps"][::-1],
        "--design",
        table,
        "--id-column",
        "subject",
        "--contrast",
        "age=age",
        "-o",
        out,
    )
    assert code == 0 and "by 'subject'" in err
    model = json.loads((out / "model.json").read_text())
    assert model["design"]["columns"] == ["age", "intercept"] and model["design"]["matched_by"] == "subject"
    mask = _mask(out)
    Y = np.stack([s["data"][label][mask] for label in s["labels"]])
    X = np.column_stack([[s["age"][label] for label in s["labels"]], np.ones(N)])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, Y, [1, 0]), rtol=1e-4, atol=1e-5)


def test_table_without_ids_is_positional_with_a_warning_and_the_order(study, capsys):
    s = study
    table = s["dir"] / "ages.tsv"
    table.write_text("age\n" + "".join(f"{s['age'][label]!r}\n" for label in s["labels"][::-1]))
    maps = s["maps"][::-1]
    out = s["dir"] / "pos"
    code, _, err = _group(capsys, "group", *maps, "--design", table, "--contrast", "age=age", "-o", out)
    assert code == 0
    assert "voxfit: warning:" in err and "no participant_id column" in err and "by position" in err
    assert f"row 1: {maps[0]}" in err and f"row 10: {maps[9]}" in err
    model = json.loads((out / "model.json").read_text())
    assert model["design"]["matched_by"] == "position" and model["design"]["rows"][0]["map"] == str(maps[0])
    mask = _mask(out)
    Y = np.stack([s["data"][label][mask] for label in s["labels"][::-1]])
    X = np.column_stack([[s["age"][label] for label in s["labels"][::-1]], np.ones(N)])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, Y, [1, 0]), rtol=1e-4, atol=1e-5)
    code, _, err = _group(
        capsys, "group", *maps, "--design", table, "--contrast", "age=age", "-o", s["dir"] / "q", "--quiet"
    )
    assert code == 0 and err == ""
    with pytest.warns(DesignWarning, match="no participant_id column"):
        SecondLevel(design=table, contrasts=["age=age"]).fit(maps)


def test_fsl_design_mat_is_positional_and_prints_the_order(study, capsys):
    s = study
    maps = s["maps"][::-1]
    age = np.array([s["age"][label] for label in s["labels"][::-1]])
    X = np.column_stack([np.ones(N), age - age.mean()])
    write_vest(s["dir"] / "design.mat", X)
    out = s["dir"] / "fsl"
    code, _, err = _group(
        capsys, "group", *maps, "--design", s["dir"] / "design.mat", "--contrast", "age=EV2", "-o", out
    )
    assert code == 0 and "warning" not in err
    assert "by position (FSL's convention)" in err
    assert [line.strip() for line in err.splitlines() if line.strip().startswith("row ")] == [
        f"row {k + 1}: {m}" for k, m in enumerate(maps)
    ]
    mask = _mask(out)
    Y = np.stack([s["data"][label][mask] for label in s["labels"][::-1]])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, Y, [0, 1]), rtol=1e-4, atol=1e-5)
    assert json.loads((out / "model.json").read_text())["design"]["rows"][0] == {"map": str(maps[0]), "table_row": 1}
    code, _, err = _group(
        capsys,
        "group",
        *maps,
        "--design",
        s["dir"] / "design.mat",
        "--contrast",
        "age=EV2",
        "-o",
        s["dir"] / "fslq",
        "--quiet",
    )
    assert code == 0 and err == ""


def test_maps_of_an_unquoted_pattern_are_refused_under_a_design_matched_by_position(tmp_path, rng, capsys):
    """Twelve subjects' maps in sub-1 .. sub-12 (numbers not padded) and FSL's design.mat in the subjects' order:
    an unquoted pattern gives the maps in the shell's text order (sub-1, sub-10, sub-11, sub-12, sub-2, ..), and
    the design's rows went to them in that order, exit 0 (a tester's: age t 3.99 where 10.20). Refused, saying to
    quote the pattern; quoted, the rows are the subjects' in order (numpy's least squares); a .txt list in any
    order is the user's, matched as listed."""
    n = 12
    age = 20.0 + 3.0 * np.arange(n)
    X = np.column_stack([np.ones(n), age - age.mean()])
    maps = []
    for k in range(n):
        folder = tmp_path / f"sub-{k + 1}"
        folder.mkdir()
        maps.append(folder / "con.nii.gz")
        values = rng.standard_normal(SHAPE) + 0.1 * age[k]
        nib.save(nib.Nifti1Image(values.astype(np.float32), AFFINE), maps[-1])
    write_vest(tmp_path / "design.mat", X)
    fit = ("group", "--design", tmp_path / "design.mat", "--contrast", "age=EV2", "--quiet", "-o")
    shell = sorted(map(str, maps))
    code, _, err = _group(capsys, *fit[:1], *shell, *fit[1:], tmp_path / "shell")
    assert code == 2 and "the text order a shell's pattern gives" in err and "quote the pattern" in err, err
    assert f"sub-12/con.nii.gz comes before {tmp_path / 'sub-2' / 'con.nii.gz'})" in " ".join(err.split()), err
    assert not (tmp_path / "shell").exists()
    code, _, err = _group(capsys, *fit[:1], str(tmp_path / "sub-*" / "con.nii.gz"), *fit[1:], tmp_path / "quoted")
    assert code == 0, err
    mask = _mask(tmp_path / "quoted")
    Y = np.stack([np.asarray(nib.load(m).dataobj)[mask] for m in maps])
    npt.assert_allclose(_t(tmp_path / "quoted", "age")[mask], _ols_t(X, Y, [0, 1]), rtol=1e-4, atol=1e-5)
    listed = tmp_path / "maps.txt"
    listed.write_text("\n".join(shell) + "\n")
    assert _group(capsys, *fit[:1], listed, *fit[1:], tmp_path / "listed")[0] == 0
    # the API's list is the caller's order (a design built for sorted(glob()): a reviewer's false refusal)
    SecondLevel(design=(X, ("intercept", "age")), contrasts=["age=age"]).fit(shell)


def test_a_mean_over_an_uncentred_covariate_is_warned_of(study):
    """A mean (the intercept, or a group's column of a design of group means) beside an uncentred covariate tests
    the value at age 0, which SPM's users, whose covariates SPM centres, do not expect (a tester's). Warned of,
    naming the covariate's mean; a difference of groups, a covariate's slope, or a centred covariate: not. A
    covariate coded 0/1 beside the intercept (sex) leaves the mean of the 0's: warned of too (a reviewer's)."""
    import warnings

    pd = pytest.importorskip("pandas")
    s = study
    for contrasts, kw in (
        (["mean=intercept"], {"covariates": ["age"]}),
        (["pat=patient"], {"two_sample": "group", "covariates": ["age"]}),
    ):
        with pytest.warns(DesignWarning, match=r"takes a mean while covariate 'age' is not centred \(its mean is"):
            SecondLevel(design=s["table"], contrasts=contrasts, **kw).fit(s["maps"])
    frame = pd.read_csv(s["table"], sep="\t", dtype={"participant_id": str})
    female = frame.assign(female=(frame["sex"] == "F").astype(int))
    with pytest.warns(DesignWarning, match=r"covariate 'female' is not centred \(its mean is 0.5\)"):
        SecondLevel(design=female, contrasts=["mean=intercept"], covariates=["female"]).fit(s["maps"])
    centred = frame.assign(age=frame["age"] - frame["age"].mean())
    quiet = [
        (s["table"], ["age=age"], {"covariates": ["age"]}),
        (s["table"], ["pvc=patient - control"], {"two_sample": "group", "covariates": ["age"]}),
        (centred, ["mean=intercept"], {"covariates": ["age"]}),
        (female.assign(female=2 * female["female"] - 1), ["mean=intercept"], {"covariates": ["female"]}),
    ]
    for design, contrasts, kw in quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DesignWarning)
            SecondLevel(design=design, contrasts=contrasts, **kw).fit(s["maps"])


def test_api_takes_a_dataframe_matched_the_same_way(study):
    pd = pytest.importorskip("pandas")
    s = study
    frame = pd.read_csv(s["table"], sep="\t", dtype={"participant_id": str})
    res_file = SecondLevel(design=s["table"], two_sample="group", contrasts=["pvc=patient - control"]).fit(s["maps"])
    res_frame = SecondLevel(design=frame, two_sample="group", contrasts=["pvc=patient - control"]).fit(s["maps"][::-1])
    npt.assert_array_equal(res_frame.parametric["pvc"].t, res_file.parametric["pvc"].t)
    flipped = SecondLevel(design=frame.iloc[::-1], two_sample="group", contrasts=["pvc=patient - control"]).fit(
        s["maps"]
    )
    npt.assert_allclose(flipped.parametric["pvc"].t, res_file.parametric["pvc"].t, rtol=1e-5, atol=1e-6)
    indexed = frame.set_index("participant_id")  # pd.read_csv(..., index_col="participant_id")
    res_index = SecondLevel(design=indexed, contrasts=["age=age"]).fit(s["maps"][::-1])
    assert res_index.names == ("age", "intercept")
    with pytest.raises(InputError, match="1 row\\(s\\) without a map"):
        SecondLevel(design=frame, contrasts=["age=age"]).fit(s["maps"][1:])
    dropped = SecondLevel(design=frame, contrasts=["age=age"], drop_unmatched_rows=True).fit(s["maps"][1:])
    assert dropped.X.shape == (N - 1, 2) and any("dropped" in note for note in dropped.notes)


def test_paired_maps_pair_by_subject_and_match_the_table(study, capsys):
    """A maps sorted, B maps reversed: each A map minus the B map of the same subject; a table of ids gives a
    covariate per pair."""
    s = study
    b_maps = []
    for label, a in zip(s["labels"], s["maps"]):
        b = a.parent / "contrast-houses_stat-effect_statmap.nii.gz"
        values = s["data"][label] * 0.5 + 0.1 * int(label)
        nib.save(nib.Nifti1Image(values.astype(np.float32), AFFINE), b)
        b_maps.append(b)
    out = s["dir"] / "paired"
    code, _, err = _group(
        capsys,
        "group",
        *s["maps"],
        *b_maps[::-1],
        "--paired",
        "--design",
        s["table"],
        "--contrast",
        "mean=intercept",
        "--contrast",
        "age=age",
        "-o",
        out,
    )
    assert code == 0, err
    assert "paired by subject" in err
    mask = _mask(out)
    diff = np.stack([s["data"][label][mask] * 0.5 - 0.1 * int(label) for label in s["labels"]])
    X = np.column_stack([[s["age"][label] for label in s["labels"]], np.ones(N)])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, diff, [1, 0]), rtol=1e-4, atol=1e-5)
    rows = json.loads((out / "model.json").read_text())["design"]["rows"]
    for r in rows:
        label = r["participant_id"].removeprefix("sub-")
        assert f"sub-{label}" in r["map"] and f"sub-{label}" in r["minus"] and "houses" in r["minus"]
    code, _, err = _group(capsys, "group", *s["maps"][:5], *b_maps[5:], "--paired", "-o", s["dir"] / "p2")
    assert code == 2 and "only in A (first half): sub-01" in err and "only in B (second half): sub-06" in err


def test_paired_maps_without_labels_pair_by_position_and_say_so(tmp_path, rng, capsys):
    paths = []
    for name in ("a", "b"):
        for i in range(4):
            paths.append(tmp_path / f"{name}{i}.nii.gz")
            nib.save(nib.Nifti1Image(rng.standard_normal(SHAPE).astype(np.float32) + 1, AFFINE), paths[-1])
    code, _, err = _group(capsys, "group", *paths, "--paired", "-o", tmp_path / "o")
    assert code == 0 and "paired by position" in err and f"pair 1: {paths[0]} - {paths[4]}" in err


def test_one_4d_file_with_ids_is_refused_and_without_ids_is_positional(tmp_path, rng, capsys):
    data = rng.standard_normal(SHAPE + (6,)).astype(np.float32) + 1
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "all.nii.gz")
    ids = tmp_path / "participants.tsv"
    ids.write_text("participant_id\tage\n" + "".join(f"sub-{i}\t{20 + i}\n" for i in range(6)))
    code, _, err = _group(
        capsys, "group", tmp_path / "all.nii.gz", "--design", ids, "--contrast", "age=age", "-o", tmp_path / "a"
    )
    assert code == 2 and "are volumes of one file" in err
    plain = tmp_path / "ages.tsv"
    plain.write_text("age\n" + "".join(f"{20 + i}\n" for i in range(6)))
    code, _, err = _group(
        capsys, "group", tmp_path / "all.nii.gz", "--design", plain, "--contrast", "age=age", "-o", tmp_path / "b"
    )
    assert code == 0 and "row k is map k of the input" in err and "warning" not in err
    assert json.loads((tmp_path / "b" / "model.json").read_text())["design"]["rows"] is None


def test_subject_labels_from_file_names_and_folders(tmp_path):
    assert subject_labels(["d/sub-01/x.nii.gz", "d/sub-02/x.nii.gz", "d/y_sub-03_stat-t.nii.gz", "d/z.nii.gz"]) == [
        "01",
        "02",
        "03",
        None,
    ]
    assert subject_labels(["sub-01.feat/stats/cope1.nii.gz", "sub-02.feat/stats/cope1.nii.gz"]) == ["01", "02"]
    # a folder that holds every map names no subject; the file name wins over a folder
    assert subject_labels(["sub-01/a.nii.gz", "sub-01/b.nii.gz"]) == [None, None]
    assert subject_labels(["sub-01/sub-02_x.nii.gz", "sub-03/y.nii.gz"]) == ["02", "03"]
    assert subject_labels(["mysub-01.nii.gz", "sub-01x-2.nii.gz", "s.zarr::sub-04"]) == [None, None, None]


def test_exchangeability_blocks_follow_their_maps_into_the_table_order(study):
    """design.grp is positional (FSL's convention: a row per map, as given); when the design is matched by ids
    and fitted in the table's order, each block label goes with its map."""
    s = study
    maps = s["maps"][::-1]
    block = {label: 1 + (int(label) % 2) for label in s["labels"]}
    write_vest(s["dir"] / "design.grp", np.array([[block[label]] for label in s["labels"][::-1]]))
    out = s["dir"] / "blocks"
    SecondLevel(design=s["table"], contrasts=["age=age"], grp=s["dir"] / "design.grp", permutations=20, seed=0).fit(
        maps, out
    )
    model = json.loads((out / "model.json").read_text())
    assert model["settings"]["exchangeability_blocks"] == [block[label] for label in s["order"]]
    assert [r["participant_id"].removeprefix("sub-") for r in model["design"]["rows"]] == s["order"]


def test_result_names_the_map_and_id_of_each_design_row(study):
    s = study
    res = SecondLevel(design=s["table"], contrasts=["age=age"]).fit(s["maps"][::-1])
    assert [m.split("sub-")[1][:2] for m in res.maps] == s["order"]
    assert [i.removeprefix("sub-") for i in res.ids] == s["order"]
    npt.assert_allclose(res.X[:, 0], [s["age"][label] for label in s["order"]])


@pytest.mark.usefixtures("no_reserve")
def test_streamed_fit_reads_the_maps_in_the_table_order(study, monkeypatch):
    """Data over max_memory: the one-pass fit takes the files in the table's order too (same t as in memory)."""
    s = study
    kw = {"design": s["table"], "two_sample": "group", "contrasts": ["pvc=patient - control"]}
    in_memory = SecondLevel(**kw).fit(s["maps"])
    monkeypatch.setattr("voxfit._execution.Budgets.streams", lambda *args: True)  # (the maps are tiny)
    from voxfit.models import second_level

    read = []
    original = second_level.fit_streaming
    monkeypatch.setattr(
        second_level, "fit_streaming", lambda paths, *a, **k: read.append(list(paths)) or original(paths, *a, **k)
    )
    streamed = SecondLevel(max_memory="64K", **kw).fit(s["maps"][::-1], out_dir=s["dir"] / "streamed")
    npt.assert_allclose(streamed.parametric["pvc"].t, in_memory.parametric["pvc"].t, rtol=1e-5, atol=1e-6)
    rows = json.loads((s["dir"] / "streamed" / "model.json").read_text())["design"]["rows"]
    assert [r["participant_id"].removeprefix("sub-") for r in rows] == s["order"]
    assert [str(p).split("sub-")[-1][:2] for p in read[0]] == s["order"]  # streamed, the files in the table's order


def test_rows_dropped_before_the_design_is_built(tmp_path):
    """A dropped row may have gaps (n/a) or a third group: only the matched rows make the design."""
    from voxfit.design.group import group_design

    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\tage\tgroup\nsub-01\t30\tA\nsub-02\t40\tB\nsub-03\tn/a\tC\nsub-04\t50\tA\n")
    maps = [tmp_path / f"sub-{i:02d}_x.nii.gz" for i in (4, 2, 1)]
    d = group_design(3, design=table, two_sample="group", maps=maps, drop_unmatched_rows=True)
    assert d.names == ("A", "B", "age") and d.rows == (3, 1, 0) and d.dropped == ((2, "sub-03"),)
    npt.assert_array_equal(d.X, [[1, 0, 50], [0, 1, 40], [1, 0, 30]])
    with pytest.raises(InputError, match="1 row\\(s\\) without a map: sub-03"):
        group_design(3, design=table, two_sample="group", maps=maps)


def test_maps_named_by_a_pattern_a_list_or_loaded_images_are_matched_by_subject(study, capsys):
    """A group's maps given as a quoted pattern, a .txt list or nibabel images loaded from their files keep the
    names their sub-<label>s are read from."""
    root = study["dir"]
    args = ["--design", str(study["table"]), "--two-sample", "group", "--contrast", "pc=patient - control", "--quiet"]
    assert main(["group", *map(str, study["maps"]), *args, "-o", str(root / "files")]) == 0
    pattern = str(root / "derivatives" / "voxfit" / "sub-*" / "contrast-faces_stat-effect_statmap.nii.gz")
    assert main(["group", pattern, *args, "-o", str(root / "pattern")]) == 0
    listing = root / "maps.txt"
    listing.write_text("".join(f"{p.relative_to(root)}\n" for p in reversed(study["maps"])))
    assert main(["group", str(listing), *args, "-o", str(root / "listed")]) == 0
    for name in ("pattern", "listed"):
        npt.assert_array_equal(_t(root / name, "pc"), _t(root / "files", "pc"))
    model = SecondLevel(design=str(study["table"]), two_sample="group", contrasts=["pc=patient - control"])
    images = model.fit([nib.load(str(p)) for p in reversed(study["maps"])])
    npt.assert_array_equal(
        images.parametric["pc"].t,
        SecondLevel(design=str(study["table"]), two_sample="group", contrasts=["pc=patient - control"])
        .fit(study["maps"])
        .parametric["pc"]
        .t,
    )


@pytest.mark.parametrize("form", ["spaces", "commas", "fortran", "vest"])
def test_a_txt_matrix_without_a_header_is_a_positional_design_as_text2vest_takes_it(study, capsys, form):
    """A design.txt of numbers, one row per map (Text2Vest's and PALM's input), separated by spaces or commas or
    with Fortran's 1.0D0 exponents, had its first row read as a header ("11 rows but 12 maps"), and an FSL VEST
    file saved as .txt was read as a table (group tester, reviewer): each is the positional design its numbers
    give, as FSL's design.mat is. --covariates or --variance-groups beside it, passed over before, are refused:
    it has no columns to name."""
    s = study
    age = np.array([s["age"][label] for label in s["labels"]])
    X = np.column_stack([np.ones(N), age - age.mean()])
    rows = {
        "spaces": [" ".join(f"{v:.17g}" for v in row) for row in X],
        "commas": [",".join(f"{v:.17g}" for v in row) for row in X],
        "fortran": [" ".join(f"{v:.17e}".replace("e", "D") for v in row) for row in X],
        "vest": ["/NumWaves 2", f"/NumPoints {N}", "/Matrix", *(" ".join(f"{v:.17g}" for v in row) for row in X)],
    }[form]
    (s["dir"] / "design.txt").write_text("\n".join(rows) + "\n")
    out = s["dir"] / f"txt-{form}"
    code, _, err = _group(
        capsys, "group", *s["maps"], "--design", s["dir"] / "design.txt", "--contrast", "age=EV2", "-o", out
    )
    assert code == 0 and "by position (FSL's convention)" in err, err
    mask = _mask(out)
    Y = np.stack([s["data"][label][mask] for label in s["labels"]])
    npt.assert_allclose(_t(out, "age")[mask], _ols_t(X, Y, [0, 1]), rtol=1e-4, atol=1e-5)
    args = ["group", *s["maps"], "--design", s["dir"] / "design.txt", "--covariates", "age", "-o", s["dir"] / "no"]
    code, _, err = _group(capsys, *args)
    assert code == 2 and "but the design has no columns" in err, err
    from voxfit.design.group import group_design

    with pytest.raises(InputError, match="variance groups 'group' name a column of a participants table, but the"):
        group_design(N, design=s["dir"] / "design.txt", variance_groups="group")
