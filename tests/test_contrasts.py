"""Contrasts: expressions over column names, weights, t and F, estimability on deficient designs."""

import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit.core import parse_contrast
from voxfit.exceptions import ContrastError, InputError, RankDeficiencyWarning

NAMES = ("slope", "intercept", "trans_x", "faces.2")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("slope", [[1, 0, 0, 0]]),
        ("slope - intercept", [[1, -1, 0, 0]]),
        ("0.5*slope + 0.5*intercept", [[0.5, 0.5, 0, 0]]),
        ("(slope + intercept)/2 - trans_x", [[0.5, 0.5, -1, 0]]),
        ("-slope + 2 * trans_x - -intercept", [[-1, 1, 2, 0]]),
        ("slope*3", [[3, 0, 0, 0]]),
        ("1e-1*slope + .5*faces.2", [[0.1, 0, 0, 0.5]]),
        ("slope; intercept", [[1, 0, 0, 0], [0, 1, 0, 0]]),
        ("slope - intercept; trans_x", [[1, -1, 0, 0], [0, 0, 1, 0]]),
        ("slope + slope - intercept", [[2, -1, 0, 0]]),
        ("`faces.2` - slope", [[-1, 0, 0, 1]]),
    ],
)
def test_parse(text, expected):
    npt.assert_array_equal(parse_contrast(text, NAMES), expected)


def test_backticks_allow_any_name():
    npt.assert_array_equal(parse_contrast("`a-b` - `c d`", ("a-b", "c d")), [[1, -1]])


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("slope - slop", "unknown column 'slop' \\(did you mean 'slope'"),
        ("zebra", "unknown column 'zebra' \\(columns are slope, intercept"),
        ("slope * intercept", "cannot multiply two columns"),
        ("slope / intercept", "cannot divide by a column"),
        ("slope / 0", "division by zero"),
        ("slope + 1", "bare number"),
        # (groups coded 1 and 2 are columns group_1 and group_2: "1 - 2" names none of them)
        ("1 - 2", r"bare number .*; the columns are slope, intercept, trans_x, faces.2\)"),
        ("slope - slope", "no non-zero column weight"),
        # SPM's weight vectors: "[1 -1]" was "unexpected '[1 -1]'", "1 -1" a row with "no non-zero column weight"
        ("[1 -1 0 0]", r"weights as a list of numbers \(SPM's \[1 -1\]\) are not read here; name the columns"),
        ("1 -1", r"weights as a list of numbers .*e.g. 'slope - intercept'"),
        ("0, 1", "weights as a list of numbers"),
        ("slope;", "unexpected end"),
        ("(slope", "missing '\\)'"),
        ("slope)", "unexpected '\\)'"),
        ("slope $ intercept", "unexpected '\\$"),
        ("2 slope", "expected an operator before 'slope' at position 2 \\(write 2\\*A"),
        ("slope intercept", "expected an operator before 'intercept'"),
        ("__import__('os')", "unexpected \"'os'\\)\" at position 11"),
        ("__import__", "unknown column '__import__'"),
    ],
)
def test_parse_errors_are_one_clear_sentence(text, message):
    with pytest.raises(ContrastError, match=message) as err:
        parse_contrast(text, NAMES)
    assert "\n" not in str(err.value)


def test_bare_numbers_that_name_levels_of_a_numeric_group_column_are_written_out():
    """--two-sample grpnum over a column of 1 and 2 makes columns grpnum_1 and grpnum_2; "2 - 1" was refused
    saying to write multiples of columns (a tester's): the message now writes the contrast meant."""
    names = ("grpnum_1", "grpnum_2", "age")
    with pytest.raises(ContrastError, match=r"for the groups coded by those numbers, write 'grpnum_2 - grpnum_1'"):
        parse_contrast("2 - 1", names)
    with pytest.raises(ContrastError) as err:  # (a number with no column of its own: no guess)
        parse_contrast("3 - 1", names)
    assert "write '" not in str(err.value)


def test_dataframe_names_and_expressions(rng):
    n = 30
    X = pd.DataFrame({"slope": np.linspace(-1, 1, n), "intercept": np.ones(n)})
    Y = rng.standard_normal((n, 10)) + 2 * X["slope"].to_numpy()[:, None]
    fit = voxfit.fit(X, Y)
    assert fit.names == ("slope", "intercept")
    by_name = fit.contrast("slope - intercept")
    by_weights = fit.contrast([1, -1])
    npt.assert_array_equal(by_name.t, by_weights.t)
    assert by_name.name == "slope - intercept"
    assert fit.contrast([1, -1], name="diff").name == "diff"


def test_t_contrast_fields(rng):
    X = np.column_stack([rng.standard_normal(40), np.ones(40)])
    fit = voxfit.fit(X, rng.standard_normal((40, 25)))
    s = fit.contrast([1, 0])
    assert s.kind == "t" and s.dof == 38.0
    assert s.effect.shape == s.variance.shape == s.t.shape == s.p.shape == s.z.shape == s.logp.shape == (25,)
    npt.assert_allclose(s.effect, fit.betas[0])
    npt.assert_allclose(s.variance, fit.stderr[0] ** 2)
    npt.assert_allclose(s.t, s.effect / np.sqrt(s.variance))
    npt.assert_allclose(s.logp, -np.log10(s.p))
    with pytest.raises(AttributeError, match="t contrast; use `.t`"):
        s.F
    with pytest.raises(ValueError):
        s.t[0] = 1.0  # results are read-only


def test_f_contrast_fields_and_redundant_rows(rng):
    X = np.column_stack([rng.standard_normal((50, 2)), np.ones(50)])
    fit = voxfit.fit(X, rng.standard_normal((50, 8)))
    f = fit.contrast([[1, 0, 0], [0, 1, 0]])
    assert f.kind == "F" and f.dof == (2.0, 47.0)
    assert f.effect.shape == f.variance.shape == (2, 8)
    with pytest.raises(AttributeError, match="F contrast; use `.F`"):
        f.t
    redundant = fit.contrast([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert redundant.dof == (2.0, 47.0)
    npt.assert_allclose(redundant.F, f.F, rtol=1e-10)
    # one-row F equals t squared
    npt.assert_allclose(fit.contrast([[1, 0, 0], [2, 0, 0]]).F, fit.contrast([1, 0, 0]).t ** 2, rtol=1e-10)


def test_non_estimable_contrast_names_the_confounded_columns(rng):
    n = 24
    cond = np.repeat([0.0, 1.0], n // 2)
    X = pd.DataFrame({"A": cond, "B": 1 - cond, "constant": np.ones(n), "motion": rng.standard_normal(n)})
    with pytest.warns(RankDeficiencyWarning, match=r"rank 3 for 4 columns.*A, B, constant.*linearly dependent"):
        fit = voxfit.fit(X, rng.standard_normal((n, 5)))
    assert fit.rank == 3 and fit.dof == n - 3
    with pytest.raises(ContrastError) as err:
        fit.contrast("A")
    msg = str(err.value)
    assert "'A' is not estimable" in msg and "A, B, constant" in msg and "motion" not in msg
    assert "\n" not in msg
    # more columns than scans: said in a few words (the columns and their dependencies made 5 KB of one line)
    wide = pd.DataFrame(rng.standard_normal((n, 30)), columns=[f"c{k}" for k in range(30)])
    with pytest.warns(RankDeficiencyWarning, match=r"rank 24 for 30 columns, 24 scans.*and \d+ more\)"):
        wide_fit = voxfit.fit(wide, rng.standard_normal((n, 5)))
    with pytest.raises(ContrastError, match=r"the design has 30 columns for 24 scans \(rank 24\).*at most 24") as err:
        wide_fit.contrast("c0")
    assert len(str(err.value)) < 200
    # estimable: the difference of the two conditions, and the motion regressor
    good = fit.contrast("A - B")
    assert np.isfinite(good.t).all()
    assert np.isfinite(fit.contrast("motion").t).all()
    with pytest.raises(ContrastError, match="not estimable"):
        fit.contrast("A; motion")  # one bad row makes the F contrast non-estimable


@pytest.mark.parametrize(
    "contrast,message",
    [
        ([1, 0, 0], "has shape \\(3,\\) but the design has 2 columns \\(x0, x1\\)"),
        ([[1, 0, 0]], "has shape \\(1, 3\\)"),
        ([0, 0], "row of all zeros"),
        ([np.nan, 1], "only finite weights"),
        (np.zeros((0, 2)), "at least one row"),
        ("x0 -", "unexpected end"),
        (["a", "b"], "must be numeric weights"),
        (np.ones((2, 2, 2)), "has shape \\(2, 2, 2\\)"),
    ],
)
def test_contrast_errors(contrast, message):
    fit = voxfit.fit(np.column_stack([np.arange(5.0), np.ones(5)]), np.arange(10.0).reshape(5, 2) ** 2)
    with pytest.raises(ContrastError, match=message):
        fit.contrast(contrast)


def test_a_column_a_plain_name_cannot_write_is_pointed_to_backticks():
    """Trial types such as ``face up`` or ``1`` are columns written between backticks; a contrast that writes them
    plainly is refused with that way (the errors said only "unknown column 'face'" or "a bare number")."""
    from voxfit.core import check_contrast, factorize

    X = pd.DataFrame({"face up": np.r_[np.ones(5), np.zeros(5)], "1": np.r_[np.zeros(5), np.ones(5)]})
    design = factorize(X, warn=False)
    for text, example in (("face up", "`face up`"), ("1", "`1`")):
        with pytest.raises(ContrastError, match=f"goes between backticks: {example}"):
            check_contrast(text, design)
    npt.assert_array_equal(check_contrast("`face up` - `1`", design), [[1.0, -1.0]])


@pytest.mark.parametrize("per_voxel", [False, True])
def test_a_t_contrast_as_the_f_of_its_one_row(rng, per_voxel):
    """as_f: F = t^2 on (1, dof), p two-sided (scipy's F and t), z the normal quantile of that p; the effect and
    variance as one row, the covariance the variance; a dof per voxel kept per voxel."""
    import scipy.stats

    from voxfit.core.contrast import as_f, t_stats

    V = 50
    effect, variance = rng.normal(size=V), rng.uniform(0.5, 2, size=V)
    dof = rng.uniform(5, 40, size=V) if per_voxel else 12.0
    t = t_stats("c", np.array([[1.0, -1.0]]), effect, variance, np.ones(V, bool), dof)
    f = as_f(t)
    assert f.kind == "F" and f.dof[0] == 1.0 and f.effect.shape == f.variance.shape == (1, V)
    npt.assert_allclose(f.F, t.t**2)
    npt.assert_allclose(f.p, 2 * scipy.stats.t.sf(np.abs(t.t), dof), rtol=1e-9)
    npt.assert_allclose(f.p, scipy.stats.f.sf(t.t**2, 1, dof), rtol=1e-9)
    npt.assert_allclose(f.covariance[:, 0, 0], variance)
    assert as_f(f) is f


@pytest.mark.parametrize("eps", [1e-7, 1e-9, 1e-11])
def test_a_t_contrast_beside_near_collinear_columns_is_the_exact_one(eps):
    """A confound that is a task column to float32 rounding (a design of condition 1e8 and more, full rank by its
    own rule): the t of their sum, which the data estimate well, came out NaN with a negative variance, or 0.94
    for 14.3 (a first-level tester's), as w (X'X)^+ w' was formed and its digits cancelled. Against mpmath at 50
    digits: the t of the well-estimated sum, the ill-estimated column's and another's."""
    import mpmath

    from voxfit import fit

    rng = np.random.default_rng(0)
    n = 60
    a = np.sin(np.arange(n) / 4.0)
    X = np.column_stack([a, a + eps * rng.standard_normal(n), np.cos(np.arange(n) / 7.0), np.ones(n)])
    Y = X @ np.array([[1.0], [1.0], [2.0], [5.0]]) + rng.standard_normal((n, 3))
    f = fit(X, Y, names=["A", "conf", "B", "constant"])
    mpmath.mp.dps = 50
    Xm = mpmath.matrix(X.tolist())
    inv = (Xm.T * Xm) ** -1
    for w in ([1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]):
        wm = mpmath.matrix([w])
        for v in range(Y.shape[1]):
            y = mpmath.matrix(Y[:, v].tolist())
            beta = inv * (Xm.T * y)
            r = y - Xm * beta
            sigma2 = (r.T * r)[0] / (n - 4)
            exact = float((wm * beta)[0] / mpmath.sqrt((wm * inv * wm.T)[0] * sigma2))
            got = f.contrast(np.array([w], dtype=float)).t[v]
            # (to the design's conditioning: float64 loses eps x cond(X) of the digits of A's own estimate)
            assert got == pytest.approx(exact, rel=1e-2 if w == [1, 0, 0, 0] else 1e-4), (w, v, got, exact)


def test_unnamed_contrasts_whose_made_names_clash_are_told_so():
    """--contrast "A - B" --contrast "A + B" (no NAME=): both are named AB, which was said as "AB repeat"."""
    from voxfit.models.glm import contrast_items

    with pytest.warns(UserWarning, match="has no name"):
        with pytest.raises(InputError, match=r"'A - B' and 'A \+ B' have no names, .* 'AB', is another contrast's"):
            contrast_items(["A - B", "A + B"])
    with pytest.warns(UserWarning, match="has no name"):
        with pytest.raises(InputError, match=r"contrast 'A - B' has no name, .*'AB', is another .*\"AB1=A - B\""):
            contrast_items(["AB=A + B", "A - B"])  # (the named one is not said to have no name)
    with pytest.raises(InputError, match="contrast names must be unique; x repeat"):
        contrast_items(["x=A", "x=B"])


def test_contrast_names_that_differ_only_in_case_are_refused(tmp_path, capsys):
    """--contrast "Go=A" --contrast "go=-A" wrote contrast-Go_* and contrast-go_* into one folder, exit 0: on a file
    system that ignores case (macOS's, Windows') the second contrast's maps are the first's files, written over
    them. Refused before anything is read, naming both."""
    from voxfit.cli import main
    from voxfit.models.glm import contrast_items

    with pytest.raises(InputError, match="contrast names Go and go differ only in case: .* rename one"):
        contrast_items(["Go=A", "go=-A"])
    with pytest.raises(InputError, match="contrast names Faces and FACES differ only in case"):
        contrast_items({"Faces": "A", "x": "B", "FACES": "A - B"})
    assert [k for k, _ in contrast_items(["Go=A", "goleft=B"])] == ["Go", "goleft"]
    design = tmp_path / "design.tsv"
    design.write_text("A\tconstant\n" + "".join(f"{k % 3}\t1\n" for k in range(12)))
    data = tmp_path / "y.npy"
    np.save(data, np.random.default_rng(0).standard_normal((12, 5)))
    argv = [
        "fit",
        str(data),
        "--design",
        str(design),
        "--contrast",
        "Go=A",
        "--contrast",
        "go=-A",
        "-o",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "differ only in case" in err and err.count("\n") == 1 and not (tmp_path / "o").exists(), err


def test_a_design_wider_than_its_scans_names_its_censored_scans():
    """A scrubbing strategy that censors most scans (one indicator column each) left more columns than scans: the
    refusal said "the design has 77 columns for 60 scans ... give at most 60 columns" though the user gave 38. It
    counts the censored scans' columns and names the thresholds."""
    import warnings

    from voxfit.core import check_contrast, factorize

    rng = np.random.default_rng(0)
    n = 10
    censor = np.eye(n)[:, :8]
    X = np.column_stack([rng.standard_normal((n, 4)), censor])
    names = ["task", "a", "b", "c", *(f"censored_{k}" for k in range(8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        design = factorize(X, names)
    with pytest.raises(ContrastError, match=r"12 columns for 10 scans \(rank \d+\), 8 of them censored scans'"):
        check_contrast("task", design)
