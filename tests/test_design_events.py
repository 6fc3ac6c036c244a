"""Designs from events: SPM's own design matrices reproduced, nilearn's drifts matched, inputs checked."""

import warnings
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest

from voxfit.cli import HRF_MODELS_CLI, main
from voxfit.design import HRF_MODELS, make_design, parse_high_pass, read_confounds, read_events
from voxfit.design.events import _matlab_round, _stimulus
from voxfit.exceptions import DesignWarning, InputError

DATA = Path(__file__).parent / "data"
SPM_ONSETS = {"c0": [30, 50, 70], "c1": [10, 30, 80], "c2": [30, 40, 60]}


@pytest.mark.parametrize("array,duration", [("arr_0", 0.0), ("arr_1", 10.0)])
def test_spm_design_matrices_reproduced(array, duration):
    """SPM's matrices (TR 1 s, 100 scans) are reproduced with fMRI_T = 16, fMRI_T0 = 2, to rounding."""
    reference = np.load(DATA / "spm_dmtx.npz")[array]
    events = {c: {"onset": np.array(o, float), "duration": np.full(3, duration)} for c, o in SPM_ONSETS.items()}
    design = make_design(events, 1.0, 100, drift="none", microtime_resolution=16, microtime_onset=2)
    assert design.names == ("c0", "c1", "c2", "constant")
    npt.assert_allclose(design.X, reference, rtol=0, atol=1e-12)
    other = make_design(events, 1.0, 100, drift="none", microtime_onset=8)
    assert np.abs(other.X - reference).max() > 1e-3  # the microtime onset matters


def test_matlab_rounding_and_stimulus_conventions():
    npt.assert_array_equal(_matlab_round(np.array([0.5, 1.5, 2.5, -0.5, 2.49])), [1, 2, 3, -1, 2])
    dt = 0.125
    sf = _stimulus(np.array([1.0]), np.array([0.0]), np.array([1.0]), dt, 200)
    assert np.flatnonzero(sf).tolist() == [32 + 8] and sf[40] == 1 / dt  # one bin of height 1/dt
    block = _stimulus(np.array([1.0]), np.array([1.0]), np.array([2.0]), dt, 200)
    assert np.flatnonzero(block).tolist() == list(range(40, 49)) and block[40] == 2.0  # d/dt + 1 bins
    half = _stimulus(np.array([0.0625]), np.array([0.0]), np.array([1.0]), dt, 200)  # 0.5 bins: MATLAB rounds up
    assert np.flatnonzero(half).tolist() == [33]


def test_slice_time_ref_is_spm_t0():
    ev = {"A": {"onset": np.array([10.0, 40.0]), "duration": np.zeros(2)}}
    npt.assert_array_equal(
        make_design(ev, 2.0, 50, slice_time_ref=0.5).X, make_design(ev, 2.0, 50, microtime_onset=9).X
    )
    npt.assert_array_equal(
        make_design(ev, 2.0, 50, slice_time_ref=0.0).X, make_design(ev, 2.0, 50, microtime_onset=1).X
    )
    with pytest.raises(InputError, match="whole number of bins"):
        make_design(ev, 2.0, 50, slice_time_ref=0.33)


def test_basis_sets_names_and_fir():
    ev = {
        "faces": {"onset": np.array([10.0, 40.0]), "duration": np.zeros(2)},
        "houses": {"onset": np.array([25.0]), "duration": np.array([4.0])},
    }
    d = make_design(ev, 2.0, 60, hrf="spm+derivative+dispersion", drift="none")
    assert d.names[:3] == ("faces", "faces_derivative", "faces_dispersion")
    assert d.kinds[:3] == ("condition", "derivative", "derivative")
    g = make_design(ev, 2.0, 60, hrf="glover+derivative", drift="none")
    assert g.names[:2] == ("faces", "faces_derivative") and np.corrcoef(g.X[:, 0], d.X[:, 0])[0, 1] > 0.9
    f = make_design(ev, 2.0, 60, hrf="fir", fir_delays=3, drift="none")
    assert f.names[:3] == ("faces_delay0", "faces_delay1", "faces_delay2")
    # an event at 10 s (scan 5) appears in window 0 at scan 5 only (T0 = 8 reads inside that scan)
    assert np.flatnonzero(f.X[:, 0]).tolist() == [5, 20] and np.flatnonzero(f.X[:, 1]).tolist() == [6, 21]
    assert set(HRF_MODELS) == set(HRF_MODELS_CLI)


def test_modulation_scales_heights():
    base = {"A": {"onset": np.array([10.0, 60.0]), "duration": np.zeros(2)}}
    mod = {"A": {"onset": np.array([10.0, 60.0]), "duration": np.zeros(2), "modulation": np.array([2.0, 2.0])}}
    npt.assert_allclose(make_design(mod, 2.0, 60).X[:, 0], 2 * make_design(base, 2.0, 60).X[:, 0])


@pytest.mark.parametrize(
    "hrf", ["spm", "spm+derivative+dispersion", "glover+derivative", "glover+derivative+dispersion", "fir"]
)
@pytest.mark.parametrize("slice_time_ref", [0.0, 0.5])
@pytest.mark.filterwarnings("ignore:The following conditions contain events with null duration")
def test_nilearn_convolution_reproduces_nilearn(hrf, slice_time_ref):
    """convolution='nilearn' gives nilearn's make_first_level_design_matrix, column by column."""
    nilearn_dm = pytest.importorskip("nilearn.glm.first_level")
    import pandas as pd

    tr, n = 2.5, 120
    ev = pd.DataFrame(
        {
            "onset": [0.0, 12.3, 40.0, 77.7, 150.2, 201.0, 33.3, 90.0],
            "duration": [0, 0, 5.5, 0, 0, 12, 0, 3],
            "trial_type": list("AABBAACC"),
            "modulation": [1, 2, 1, 1, 0.5, 1, 1, -1],
        }
    )
    events = {
        c: {k: g[k].to_numpy(float) for k in ("onset", "duration", "modulation")} for c, g in ev.groupby("trial_type")
    }
    events = dict(reversed(list(events.items())))  # unsorted on purpose: nilearn sorts conditions
    theirs = nilearn_dm.make_first_level_design_matrix(
        (np.arange(n) + slice_time_ref) * tr,
        ev,
        hrf_model=hrf.replace("+", " + "),
        drift_model="cosine",
        high_pass=0.01,
        fir_delays=[0, 1, 2],
    )
    ours = make_design(
        events, tr, n, hrf=hrf, high_pass="0.01Hz", slice_time_ref=slice_time_ref, convolution="nilearn", fir_delays=3
    )
    assert ours.settings["convolution"] == "nilearn"
    assert list(ours.names) == list(theirs.columns)  # same columns in the same order
    npt.assert_allclose(ours.X, theirs.to_numpy(), atol=1e-12 * np.abs(theirs.to_numpy()).max())


def test_nilearn_convolution_refuses_spm_settings():
    ev = {"A": {"onset": [10.0], "duration": [0.0]}}
    with pytest.raises(InputError, match="microtime settings .* are SPM's"):
        make_design(ev, 2.0, 50, convolution="nilearn", microtime_resolution=16)
    with pytest.raises(InputError, match="spm or nilearn"):
        make_design(ev, 2.0, 50, convolution="fsl")
    with pytest.warns(DesignWarning, match="start of nilearn's grid"):
        make_design({"A": {"onset": [-30.0], "duration": [0.0]}}, 2.0, 50, convolution="nilearn")


def test_drifts_match_nilearn():
    nilearn_dm = pytest.importorskip("nilearn.glm.first_level")
    import pandas as pd

    frame_times = np.arange(200) * 2.0
    ev = pd.DataFrame({"onset": [10.0, 50.0], "duration": [0.0, 0.0], "trial_type": ["A", "A"]})
    events = {"A": {"onset": np.array([10.0, 50.0]), "duration": np.zeros(2)}}
    for ours, theirs in (
        (dict(drift="cosine", high_pass=128), dict(drift_model="cosine", high_pass=1 / 128)),
        (dict(drift="cosine", high_pass="0.01Hz"), dict(drift_model="cosine", high_pass=0.01)),
        (dict(drift="polynomial", drift_order=3), dict(drift_model="polynomial", drift_order=3)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = nilearn_dm.make_first_level_design_matrix(frame_times, ev, hrf_model="spm", **theirs)
        d = make_design(events, 2.0, 200, **ours)
        cols = [c for c in ref.columns if c.startswith("drift")]
        assert [n for n in d.names if n.startswith("drift")] == cols
        npt.assert_allclose(d.X[:, [d.names.index(c) for c in cols]], ref[cols].to_numpy(), atol=1e-12)


@pytest.mark.parametrize(
    ("tr", "n", "high_pass", "slice_time_ref", "drift"),
    [
        (0.8, 375, 0.01, 0.0, "cosine"),  # (2 n TR f = 6: nilearn has 5 cosines, the period's floor gave 6)
        (0.4, 375, 0.01, 0.0, "cosine"),
        (1.0, 500, 0.015, 0.0, "cosine"),  # (the other way: 15 in nilearn, 14 by the period)
        (0.6, 250, 0.01, 0.5, "cosine"),
        (2.0, 100, None, 0.5, "polynomial"),  # (nilearn's powers of its frame times, shifted by the slice time)
    ],
)
def test_nilearn_convolutions_drifts_are_nilearns_at_the_edges(tr, n, high_pass, slice_time_ref, drift):
    """convolution='nilearn' took its cosines' number as SPM does, from the period: one more or fewer than
    nilearn's where 2 n TR f is a whole number (120 such cases over TR 0.3-3 s and 100-800 scans), and its
    polynomial drifts from unshifted scan times (the same span, other columns). Both as nilearn's now."""
    nilearn_dm = pytest.importorskip("nilearn.glm.first_level")
    import pandas as pd

    ev = pd.DataFrame({"onset": np.arange(10.0, 0.8 * n * tr, 20.0), "duration": 5.0})
    ev["trial_type"] = ["A", "B"] * (len(ev) // 2) + ["A"] * (len(ev) % 2)
    events = {c: {k: g[k].to_numpy(float) for k in ("onset", "duration")} for c, g in ev.groupby("trial_type")}
    theirs = {"drift_model": drift, "hrf_model": "glover"}
    theirs.update({"high_pass": high_pass} if drift == "cosine" else {"drift_order": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nilearn_dm.make_first_level_design_matrix((np.arange(n) + slice_time_ref) * tr, ev, **theirs)
    ours = {"high_pass": f"{high_pass}Hz"} if drift == "cosine" else {"drift_order": 3}
    d = make_design(
        events, tr, n, hrf="glover", drift=drift, convolution="nilearn", slice_time_ref=slice_time_ref, **ours
    )
    assert list(d.names) == list(ref.columns)
    npt.assert_allclose(d.X, ref.to_numpy(), atol=1e-12 * np.abs(ref.to_numpy()).max())


def test_an_na_modulation_is_an_event_of_height_1_or_left_out_as_nilearn_does(tmp_path):
    """n/a in the events' modulation column was height 1 in both convolutions; nilearn's design leaves such an
    event out (it sums each trial type's heights with pandas, to which NaN is nothing): nilearn's convolution now
    equals nilearn's design, SPM's keeps height 1, and both say so."""
    nilearn_dm = pytest.importorskip("nilearn.glm.first_level")
    import pandas as pd

    path = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\tmodulation\n10\t2\tA\tn/a\n40\t2\tA\t2\n")
    with pytest.warns(DesignWarning, match="modulation is n/a for 1 of 'A': taken as 0"):
        nl = make_design(path, 2.0, 50, hrf="glover", drift="none", convolution="nilearn")
    ev = pd.DataFrame({"onset": [10.0, 40.0], "duration": 2.0, "trial_type": "A", "modulation": [np.nan, 2.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nilearn_dm.make_first_level_design_matrix(np.arange(50) * 2.0, ev, drift_model=None)
    npt.assert_allclose(nl.X[:, 0], ref["A"].to_numpy(), atol=1e-12)
    with pytest.warns(DesignWarning, match="taken as 1 \\(an event of height 1"):
        spm = make_design(path, 2.0, 50, drift="none")
    ones = make_design({"A": {"onset": [10.0, 40.0], "duration": [2.0, 2.0], "modulation": [1.0, 2.0]}}, 2.0, 50)
    npt.assert_array_equal(spm.X[:, 0], ones.X[:, 0])


def test_a_trial_type_whose_only_event_follows_the_last_scan_is_said_to(tmp_path):
    """An event at 199.9 s of a 200 s run (TR 2 s, its last scan at 198 s) was refused saying its events "lie
    outside the run (0 to 200 s)", which it does not: it follows the last scan, which samples nothing of it."""
    with pytest.raises(InputError, match=r"after its last scan, at 198 s of 100 scans x 2 s"):
        make_design({"A": {"onset": [199.9], "duration": [0.0]}, "B": {"onset": [20.0], "duration": [5.0]}}, 2.0, 100)


def test_trial_types_that_differ_by_spaces_around_them_are_said_to_be_read_as_one(tmp_path):
    """'A', 'A ' and ' A' were one trial type without a word (nilearn makes three); still one, said."""
    path = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n10\t2\tA\n40\t2\tA \n70\t2\tB\n")
    with pytest.warns(DesignWarning, match="the trial types 'A', 'A ' differ only by spaces around them"):
        events = read_events(path)
    assert sorted(events) == ["A", "B"] and events["A"]["onset"].tolist() == [10.0, 40.0]


def test_trial_types_that_differ_only_in_case_are_kept_apart_and_said(tmp_path):
    """'faces' and 'Faces' (a typo's capital, as a rule): two conditions, as SPM and nilearn make them, so that a
    contrast of 'faces' left the other's events in the baseline without a word; kept apart, and said."""
    path = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n10\t2\tfaces\n40\t2\tFaces\n70\t2\tB\n")
    with pytest.warns(DesignWarning, match="the trial types 'Faces', 'faces' differ only in case; they are kept apart"):
        events = read_events(path)
    assert sorted(events) == ["B", "Faces", "faces"]


def test_spms_microtime_onset_defaults_to_8_whatever_the_resolution():
    """SPM12's fMRI_T0 defaults to 8 bins whatever fMRI_T is (spm_get_defaults stats.fmri.t0); voxfit took T/2,
    16 of 32, where the README says 8; below 8 bins, T/2."""
    ev = {"A": {"onset": np.array([10.0, 40.0]), "duration": np.zeros(2)}}
    for T, T0 in ((16, 8), (32, 8), (4, 2)):
        default = make_design(ev, 2.0, 40, microtime_resolution=T)
        npt.assert_array_equal(default.X, make_design(ev, 2.0, 40, microtime_resolution=T, microtime_onset=T0).X)


def _write(path, text):
    path.write_text(text)
    return path


def test_events_and_confounds_files(tmp_path):
    ev = read_events(_write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\tmodulation\n1\t0\tA\t2\n5\t3\tB\tn/a\n"))
    assert ev["A"]["modulation"].tolist() == [2.0] and set(ev) == {"A", "B"}
    conf = _write(
        tmp_path / "c.tsv",
        "trans_x\ttrans_y\trot_x\tframewise_displacement\tcsf\nn/a\t0.1\t0\tn/a\t5\n1\t0.2\t0.1\t0.3\t6\n2\t0.3\t0.2\t0.1\t7\n",
    )
    X, names = read_confounds(conf, "trans_*,rot_x,framewise_displacement", 3)
    assert names == ["trans_x", "trans_y", "rot_x", "framewise_displacement"]
    npt.assert_array_equal(X[:, 0], [0, 1, 2])
    npt.assert_array_equal(X[:, 3], [0, 0.3, 0.1])
    with pytest.raises(InputError, match="no column matches 'trans_z'; similar columns: trans_y, trans_x"):
        read_confounds(conf, "trans_z", 3)
    with pytest.raises(InputError, match="has 3 rows but the run has 4 scans"):
        read_confounds(conf, "csf", 4)
    bad = _write(tmp_path / "b.tsv", "a\n1\nn/a\n3\n")
    with pytest.raises(InputError, match="missing value at row 2; only leading n/a"):
        read_confounds(bad, "a", 3)
    # (an infinite value failed the design's SVD, exit 1; a column of n/a became zeros, silently)
    odd = _write(tmp_path / "o.tsv", "a\tb\tc\n1\tn/a\t1\ninf\tn/a\t2\n3\tn/a\t-Infinity\n")
    with pytest.raises(InputError, match="column 'a', row 2: 'inf' is not a finite number"):
        read_confounds(odd, "a", 3)
    with pytest.raises(InputError, match="column 'b' holds no value \\(n/a in every row\\); leave it out"):
        read_confounds(odd, "b", 3)
    with pytest.raises(InputError, match="column 'c', row 3: '-Infinity' is not a finite number"):
        read_confounds(odd, "c", 3)


@pytest.mark.parametrize(
    "text,message",
    [
        ("onset\ttrial_type\n1\tA\n", "no 'duration' column"),
        ("onset\tduration\n1\tx\n", "duration 'x' is not a number"),
        ("onset\tduration\n1\t-2\n", "is negative"),
        ("onset\tduration\ttrial_type\n1\t0\t\n", "trial_type is empty: give the event its condition"),
        ("onset\tduration\ttrial_type\n1\t0\tn/a\n", "trial_type is n/a: give the event its condition, or leave"),
        ("onset\tduration\n1\tn/a\n", r"duration 'n/a' is not a number \(BIDS's n/a, an unknown duration: give 0"),
        ("onset\tduration\n", "lists no event"),
    ],
)
def test_bad_events(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_events(_write(tmp_path / "e.tsv", text))


def test_an_event_without_a_duration_is_named():
    """BIDS allows a duration of n/a where it is unknown; the study's runs failed with "onsets and durations must
    be finite numbers", naming neither the event nor what to give."""
    ev = {"b": {"onset": np.array([1.0, 32.5]), "duration": np.array([2.0, np.nan])}}
    with pytest.raises(InputError, match=r"events of 'b': the event at onset 32.5 s has no duration \(n/a"):
        make_design(ev, 2.0, 40)
    with pytest.raises(InputError, match="events of 'b': onsets must be finite numbers"):
        make_design({"b": {"onset": np.array([np.inf]), "duration": np.ones(1)}}, 2.0, 40)


def test_events_given_twice_are_summed_and_said(tmp_path):
    """Rows of an events file given twice (a log exported twice) were summed without a word; nilearn warns. Two
    trial types at one onset (a cue and its target) are no repeat."""
    rows = "onset\tduration\ttrial_type\n4\t2\tb\n20\t2\tb\n20\t2\tcue\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DesignWarning)
        once = read_events(_write(tmp_path / "once.tsv", rows))
    with pytest.warns(DesignWarning, match=r"twice.tsv: 1 event\(s\) repeat another's trial type, onset and duration"):
        twice = read_events(_write(tmp_path / "twice.tsv", rows + "20\t2\tb\n"))
    summed, single = (make_design(ev, 2.0, 40, drift="none") for ev in (twice, once))
    assert np.abs(summed.X[:, 0] - single.X[:, 0]).max() > 0.1  # (summed, as SPM and nilearn sum them)


def test_bad_design_settings():
    ev = {"A": {"onset": np.array([1.0]), "duration": np.zeros(1)}}
    for kwargs, message in (
        (dict(hrf="canonical"), "`hrf` must be one of"),
        (dict(drift="spline"), "`drift` must be cosine, polynomial or none"),
        (dict(high_pass="fast"), "`high_pass` must be a period"),
        (dict(microtime_onset=17), "must lie in 1..16"),
        (dict(microtime_onset=1, slice_time_ref=0.5), "not both"),
        (dict(high_pass="1Hz"), "shorter than two scans \\(4 s: the Nyquist frequency, 0.25 Hz, at TR 2 s\\)"),
        (dict(high_pass=3.9), "the high-pass period 3.9 s"),
    ):
        with pytest.raises(InputError, match=message):
            make_design(ev, 2.0, 30, **kwargs)
    with pytest.raises(InputError, match="`tr` must be a positive"):
        make_design(ev, 0.0, 30)


def test_high_pass_forms():
    """A cutoff is a number as Python writes it (``1e9``, ``1.28e2``: a period longer than the run gives no cosine,
    as in SPM), with ``s`` or ``Hz``; zero, negative, infinite, and periods past a float are refused in words that
    say how to have no high-pass filter, anything else as not a period."""
    assert [parse_high_pass(v) for v in ("128", "128s", "1.28e2", " 0.008Hz ", "8e-3 hz", 64)] == [128] * 3 + [
        125
    ] * 2 + [64]
    ev = {"A": {"onset": np.array([1.0, 30.0]), "duration": np.zeros(2)}}
    assert list(make_design(ev, 2.0, 30, high_pass="1e9").names) == ["A", "constant"]
    for value in ("0", "-5", "inf", "1e400", "0Hz", "1e-320Hz", "-1Hz", 0.0):
        with pytest.raises(InputError, match=r"positive, finite period .* give --drift none \(voxfit fit, design\)"):
            parse_high_pass(value)
    for value in ("nan", "fast", "", "Hz", "1,5", "5 5", None, True):
        with pytest.raises(InputError, match=r"`high_pass` must be a period in seconds \(128\) or a frequency"):
            parse_high_pass(value)


def test_variance_inflation_warns():
    ev = {
        "A": {"onset": np.array([10.0]), "duration": np.array([100.0])},
        "B": {"onset": np.array([12.0]), "duration": np.array([98.0])},
    }
    with pytest.warns(DesignWarning, match="variance inflation factor"):
        summary = make_design(ev, 2.0, 80).check()
    assert summary["vif"]["A"] > 10 and summary["rank"] == summary["n_columns"]


def test_variance_inflation_is_at_least_one_without_an_intercept(rng):
    """Cell means without an intercept (group.control, group.patient) had VIFs of 0.5: R^2 was taken about the
    column's mean where the other columns span no constant. With an intercept, the centred R^2 of a regression of
    the column on the others (statsmodels' own OLS as the reference)."""
    import statsmodels.api as sm

    from voxfit.design.events import variance_inflation

    g = np.array([1, 1, 0, 0, 1, 0, 1, 0], float)
    assert variance_inflation(np.column_stack([g, 1 - g]), ["control", "patient"], [0, 1]) == {
        "control": 1.0,
        "patient": 1.0,
    }
    age = rng.standard_normal(8) + g
    X = np.column_stack([g, age, np.ones(8)])
    vif = variance_inflation(X, ["g", "age", "constant"], [0, 1])
    r2 = sm.OLS(age, np.column_stack([g, np.ones(8)])).fit().rsquared
    assert vif["age"] == pytest.approx(1 / (1 - r2), rel=1e-10) and min(vif.values()) >= 1


def test_variance_inflation_of_many_columns_is_one_inverse_and_one_line(rng, tmp_path, capsys):
    """2,000 trial types: a regression per column took 83 s and printed 2,000 warnings (a tester's). A design of
    full rank with a constant takes its VIFs from one inverse, equal to the regressions' (statsmodels' centred R^2
    as the reference); more columns than scans, inf each; the warnings name ten regressors and count the others in
    one line."""
    import statsmodels.api as sm

    from voxfit.design.events import variance_inflation

    X = np.column_stack([rng.standard_normal((60, 8)) + rng.standard_normal((60, 1)), np.ones(60)])
    vif = variance_inflation(X, [f"c{j}" for j in range(9)], range(8))
    for j in range(8):
        r2 = sm.OLS(X[:, j], np.delete(X, j, axis=1)).fit().rsquared
        assert vif[f"c{j}"] == pytest.approx(1 / (1 - r2), rel=1e-9)
    wide = np.column_stack([rng.standard_normal((40, 60)), np.ones(40)])
    assert set(variance_inflation(wide, [str(j) for j in range(61)], range(60)).values()) == {np.inf}
    ev = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n" + "".join(f"{k}\t1\tt{k}\n" for k in range(60)))
    assert main(["design", str(ev), "--tr", "2", "--n-scans", "40", "-o", str(tmp_path / "d.tsv")]) == 0
    err = capsys.readouterr().err
    assert err.count("variance inflation factor of") == 10, err
    assert "more regressors have variance inflation factors above 10: the design has more columns" in err


def test_design_command(tmp_path, capsys):
    ev = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n10\t0\tfaces\n40\t0\thouses\n70\t0\tfaces\n")
    out = tmp_path / "design.tsv"
    assert (
        main(
            [
                "design",
                str(ev),
                "--tr",
                "2",
                "--n-scans",
                "60",
                "--hrf",
                "spm+derivative",
                "--high-pass",
                "128",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:4] == ["faces", "faces_derivative", "houses", "houses_derivative"] and header[-1] == "constant"
    assert main(["design", str(ev), "--tr", "2", "--n-scans", "60", "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["design", str(ev), "--tr", "2", "--n-scans", "60", "-o", str(out), "--force", "--quiet"]) == 0
    # a file where the sidecar goes (a user's BIDS sidecar) is not replaced without --force either (a tester's)
    mine = tmp_path / "mine.json"
    mine.write_text("PRECIOUS")
    assert main(["design", str(ev), "--tr", "2", "--n-scans", "60", "-o", str(tmp_path / "mine.tsv")]) == 2
    assert "mine.json exists (the sidecar of mine.tsv" in capsys.readouterr().err
    assert mine.read_text() == "PRECIOUS" and not (tmp_path / "mine.tsv").exists()
    for name in ("design.csv", "design.mat"):  # (a table written as .csv or .mat was read back as those formats)
        assert main(["design", str(ev), "--tr", "2", "--n-scans", "60", "-o", str(tmp_path / name)]) == 2
        assert "name it .tsv" in capsys.readouterr().err and not (tmp_path / name).exists()
    nl = tmp_path / "nilearn.tsv"
    assert (
        main(
            [
                "design",
                str(ev),
                "--tr",
                "2",
                "--n-scans",
                "60",
                "--convolution",
                "nilearn",
                "--slice-time-ref",
                "1",
                "-o",
                str(nl),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "design",
                str(ev),
                "--tr",
                "2",
                "--n-scans",
                "60",
                "--convolution",
                "nilearn",
                "--microtime-resolution",
                "8",
                "-o",
                str(tmp_path / "x.tsv"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "microtime settings (--microtime-resolution, --microtime-onset) are SPM's" in err
    assert not (tmp_path / "x.tsv").exists()


def test_fit_from_events_and_confounds(tmp_path, capsys, rng):
    from .imaging import volume_data, write_nifti

    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, n=40))
    ev = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n4\t6\tfaces\n30\t6\thouses\n50\t6\tfaces\n")
    conf = _write(tmp_path / "conf.tsv", "trans_x\tcsf\n" + "".join(f"{np.sin(i)}\t{i % 3}\n" for i in range(40)))
    out = tmp_path / "res"
    argv = [
        "fit",
        str(bold),
        "--events",
        str(ev),
        "--tr",
        "2",
        "--confounds",
        str(conf),
        "--confounds-columns",
        "trans_*",
        "--contrast",
        "fh=faces - houses",
        "-o",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    header = (out / "design.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["faces", "houses", "trans_x"] and header[-1] == "constant"
    assert (out / "contrast-fh_stat-t_statmap.nii.gz").exists()
    assert main(["fit", str(bold), "--events", str(ev), "--contrast", "f=faces", "-o", str(tmp_path / "r2")]) == 2
    assert "--events needs --tr" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                str(bold),
                "--events",
                str(ev),
                "--tr",
                "2",
                "--confounds",
                str(conf),
                "--contrast",
                "f=faces",
                "-o",
                str(tmp_path / "r3"),
            ]
        )
        == 2
    )
    assert "--confounds needs --confounds-columns" in capsys.readouterr().err


def test_first_level_python_api(tmp_path, rng):
    import voxfit

    from .imaging import volume_data, write_nifti

    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, n=40))
    ev = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n4\t6\tfaces\n30\t6\thouses\n50\t6\tfaces\n")
    model = voxfit.FirstLevel(tr=2.0, hrf="spm+derivative", noise="ar1")
    assert model.design(ev, 40).names[:2] == ("faces", "faces_derivative")
    result = model.fit(bold, ev, {"fh": "faces - houses"}, out_dir=tmp_path / "out")
    assert result.contrasts["fh"].t.shape == (result.masker.n_voxels,)
    assert (tmp_path / "out" / "stat-arcoef_statmap.nii.gz").exists()


def test_two_runs_fixed_effects(tmp_path, capsys, rng):
    import nibabel as nib

    from voxfit.models import fit_runs

    from .imaging import volume_data, write_nifti

    runs, events = [], []
    for r in range(2):
        data = volume_data(rng, n=40)
        if r == 1:
            data[1, 1, 1, :] = 0.0  # outside this run's automatic mask: not in the common mask
        runs.append(write_nifti(tmp_path / f"run{r}.nii.gz", data))
        events.append(
            _write(
                tmp_path / f"ev{r}.tsv",
                f"onset\tduration\ttrial_type\n{4 + r}\t6\tfaces\n30\t6\thouses\n50\t6\tfaces\n",
            )
        )
    out = tmp_path / "ffx"
    argv = [
        "fit",
        *map(str, runs),
        "--events",
        *map(str, events),
        "--tr",
        "2",
        "--contrast",
        "fh=faces - houses",
        "-o",
        str(out),
        "--quiet",
        "--noise",
        "ols",  # (the fMRI default is an AR model; the fixed effects by hand below are those of OLS runs)
    ]
    assert main(argv) == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {
        "run-1_contrast-fh_stat-t_statmap.nii.gz",
        "run-2_contrast-fh_stat-t_statmap.nii.gz",
        "contrast-fh_stat-t_statmap.nii.gz",
        "run-1_design.tsv",
        "mask.nii.gz",
        "model.json",
    } <= names

    # the fixed-effects combination by hand from the per-run maps
    def flat(name):
        return np.asarray(nib.load(out / name).dataobj, dtype=float).reshape(-1, order="F")

    mask = flat("mask.nii.gz") > 0
    e1, e2 = (
        flat("run-1_contrast-fh_stat-effect_statmap.nii.gz")[mask],
        flat("run-2_contrast-fh_stat-effect_statmap.nii.gz")[mask],
    )
    v1, v2 = (
        flat("run-1_contrast-fh_stat-variance_statmap.nii.gz")[mask],
        flat("run-2_contrast-fh_stat-variance_statmap.nii.gz")[mask],
    )
    # (FSL's and nilearn's weights, with Meier's term for their error: each run's share f of the precision)
    f1, f2 = (1 / v1) / (1 / v1 + 1 / v2), (1 / v2) / (1 / v1 + 1 / v2)
    inflation = 1 + 4 * (f1 * (1 - f1) + f2 * (1 - f2)) / 36  # (each run: 40 scans, 4 columns)
    expected_t = ((e1 / v1 + e2 / v2) / (1 / v1 + 1 / v2)) * np.sqrt((1 / v1 + 1 / v2) / inflation)
    npt.assert_allclose(flat("contrast-fh_stat-t_statmap.nii.gz")[mask], expected_t, rtol=1e-4)
    assert not mask[np.ravel_multi_index((1, 1, 1), (6, 5, 4), order="F")]
    result = fit_runs(
        runs,
        [tmp_path / "ffx" / "run-1_design.tsv", tmp_path / "ffx" / "run-2_design.tsv"],
        {"fh": "faces - houses", "eff": "faces; houses"},
        out_dir=tmp_path / "ffx-f",
    )
    # (faces, houses, drift_1, constant: 36 dof a run; the weights' effective dof reach the sum for equal shares)
    assert np.all(result.combined["fh"].dof <= 2 * (40 - 4) + 1e-9) and np.all(result.combined["fh"].dof >= 36)
    assert result.combined["eff"].dof[0] == 2.0 and np.all(result.combined["eff"].dof[1] <= 2 * (40 - 4) + 1e-9)
    assert (tmp_path / "ffx-f" / "contrast-eff_stat-F_statmap.nii.gz").exists()
    assert (
        main(
            [
                "fit",
                *map(str, runs),
                "--events",
                str(events[0]),
                str(events[0]),
                str(events[0]),
                "--tr",
                "2",
                "--contrast",
                "f=faces",
                "-o",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "give one per run" in capsys.readouterr().err


def test_each_of_several_runs_has_its_own_fits_maps_as_spm_and_feat_write_them(tmp_path, capsys, rng):
    """SPM writes a beta per column of every session, FSL FEAT a pe per regressor and the residual variance of
    each run: a fit of several runs writes each run's effect per design column, R^2 and residual variance
    (``run-<r>_``), each equal to a least-squares fit of that run alone on the common mask (numpy's lstsq), and
    model.json gives each run's rank and dof; an AR(1) fit adds each run's coefficients. (They were not written:
    only each run's contrasts.)"""
    import json

    import nibabel as nib

    from .imaging import read_back, volume_data, write_nifti

    runs, events, n = [], [], (40, 46)
    for r in range(2):
        runs.append(write_nifti(tmp_path / f"run{r}.nii.gz", volume_data(rng, n=n[r])))
        events.append(
            _write(tmp_path / f"ev{r}.tsv", f"onset\tduration\ttrial_type\n{4 + 3 * r}\t6\tfaces\n30\t8\thouses\n")
        )
    argv = ["fit", *map(str, runs), "--events", *map(str, events), "--tr", "2", "--contrast", "f=faces"]
    assert main([*argv, "--noise", "ols", "-o", str(tmp_path / "ols"), "--quiet"]) == 0, capsys.readouterr().err
    out = tmp_path / "ols"

    def flat(name):
        return np.asarray(nib.load(out / name).dataobj, dtype=float).reshape(-1, order="F")

    mask = flat("mask.nii.gz") > 0
    record = json.loads((out / "model.json").read_text())
    for r, path in enumerate(runs, 1):
        design = np.loadtxt(out / f"run-{r}_design.tsv", skiprows=1, ndmin=2)
        columns = (out / f"run-{r}_design.tsv").read_text().splitlines()[0].split("\t")
        Y = read_back(path)[:, mask]
        betas, _, rank, _ = np.linalg.lstsq(design, Y, rcond=None)
        residuals = Y - design @ betas
        dof = n[r - 1] - rank
        centred = Y - Y.mean(axis=0)
        for name, beta in zip(columns, betas):
            got = flat(f"run-{r}_regressor-{name.replace('_', '')}_stat-effect_statmap.nii.gz")[mask]
            npt.assert_allclose(got, beta, rtol=1e-5, atol=1e-5 * np.abs(beta).max())
        rss = (residuals**2).sum(axis=0)
        npt.assert_allclose(flat(f"run-{r}_stat-residualvariance_statmap.nii.gz")[mask], rss / dof, rtol=1e-4)
        npt.assert_allclose(
            flat(f"run-{r}_stat-rsquared_statmap.nii.gz")[mask], 1 - rss / (centred**2).sum(axis=0), atol=1e-5
        )
        assert (record["runs"][r - 1]["rank"], record["runs"][r - 1]["dof"]) == (rank, dof)
    assert main([*argv, "--noise", "ar1", "-o", str(tmp_path / "ar1"), "--quiet"]) == 0, capsys.readouterr().err
    written = {p.name for p in (tmp_path / "ar1").iterdir()}
    assert {f"run-{r}_stat-arcoef_statmap.nii.gz" for r in (1, 2)} <= written
    # SPM's ar1-global fits each run's whitened design: written beside it, as one run's is
    for r, path in enumerate(runs):
        data = read_back(path).T.reshape(6, 5, 4, n[r], order="F")
        design = np.loadtxt(out / f"run-{r + 1}_design.tsv", skiprows=1, ndmin=2)
        write_nifti(path, (data + 8 * design[:, 0]).astype(np.float32))  # (faces: voxels for SPM's F test)
    assert main([*argv, "--noise", "ar1-global", "-o", str(tmp_path / "g"), "--quiet"]) == 0, capsys.readouterr().err
    assert {f"run-{r}_design_desc-whitened.tsv" for r in (1, 2)} <= {p.name for p in (tmp_path / "g").iterdir()}


def test_fixed_effects_of_f_contrasts(rng):
    from voxfit import fit, fit_ar
    from voxfit.models import fixed_effects

    n, V = 60, 40
    fits, ar_stats = [], []
    for _ in range(2):
        X = np.column_stack([rng.standard_normal(n), rng.standard_normal(n), np.ones(n)])
        Y = X @ rng.standard_normal((3, V)) + rng.standard_normal((n, V))
        fits.append(fit(X, Y, names=["A", "B", "constant"]))
        ar_stats.append(fit_ar(X, Y, 1, {"ab": "A; B"}, names=["A", "B", "constant"]).contrasts["ab"])
    per_run = [f.contrast("A; B", name="ab") for f in fits]
    combined = fixed_effects("ab", per_run)
    assert combined.kind == "F" and combined.dof[0] == 2.0
    for v in range(V):  # by hand, one voxel at a time: each run's share of the precision, Meier's term
        inverses = [np.linalg.inv(s.covariance[v]) for s in per_run]
        P = sum(inverses)
        e = np.linalg.solve(P, sum(i @ s.effect[:, v] for i, s in zip(inverses, per_run)))
        shares = [np.trace(np.linalg.solve(P, i)) / 2 for i in inverses]
        inflation = 1 + 4 * sum(f * (1 - f) for f in shares) / (n - 3)
        npt.assert_allclose(combined.effect[:, v], e, rtol=1e-10)
        npt.assert_allclose(combined.F[v], e @ P @ e / 2 / inflation, rtol=1e-10)
        npt.assert_allclose(combined.dof[1][v], (n - 3) / sum(f * f for f in shares), rtol=1e-10)
    # a redundant F contrast is the square of the t contrast's fixed effect
    t = fixed_effects("a", [f.contrast("A") for f in fits])
    F = fixed_effects("aa", [f.contrast("A; 2*A") for f in fits])
    assert F.dof[0] == 1.0
    npt.assert_allclose(F.dof[1], t.dof, rtol=1e-9)
    npt.assert_allclose(F.F, t.t**2, rtol=1e-9)
    npt.assert_allclose(F.z, t_to_z_abs(t), rtol=1e-6)
    # AR fits carry per-voxel covariances, which combine the same way
    ar = fixed_effects("ab", ar_stats)
    inverses = [np.linalg.inv(s.covariance[0]) for s in ar_stats]
    P = sum(inverses)
    e = np.linalg.solve(P, sum(i @ s.effect[:, 0] for i, s in zip(inverses, ar_stats)))
    shares = [np.trace(np.linalg.solve(P, i)) / 2 for i in inverses]
    inflation = 1 + 4 * sum(f * (1 - f) / np.ravel(s.dof[1])[0] for f, s in zip(shares, ar_stats))
    npt.assert_allclose(ar.F[0], e @ P @ e / 2 / inflation, rtol=1e-10)


def test_fixed_effects_of_short_runs_hold_their_level():
    """4 OLS runs of 60 scans, 40,000 null voxels: the rates of p < 0.05 and p < 0.01 of the fixed-effects t and of
    a 2-row F in their exact 95% intervals (half-width 0.0021 at 0.05: a 10% bias is seen). The runs' weights are
    estimated: with FSL's and nilearn's variance, 1 / the summed precision on the summed dof, they were 0.055 and
    0.012 (t) and 0.059 and 0.013 (F), where the exact model of the runs concatenated gives 0.050 and 0.010. One
    fixed seed: a 95% interval misses for 5% of seeds by design."""
    from scipy import stats

    from voxfit.design import make_design
    from voxfit.models import fixed_effects
    from voxfit.models.glm import fit_noise_model

    n, V = 60, 40000
    rng = np.random.default_rng(20261207)
    runs = {"t": [], "F": []}
    for _ in range(4):
        onsets = np.sort(rng.uniform(2.0, 2.0 * n - 12.0, 16))
        which = np.arange(16) % 2 == 0
        events = {
            "task": {"onset": onsets[which], "duration": np.ones(8)},
            "other": {"onset": onsets[~which], "duration": np.ones(8)},
        }
        d = make_design(events, 2.0, n)
        items = [("t", "task - other"), ("F", "task; other")]
        fitted = fit_noise_model(d.X, 100 + rng.standard_normal((n, V)), list(d.names), items, "ols").contrasts
        for label in runs:
            runs[label].append(fitted[label])
    for label, per_run in runs.items():
        p = fixed_effects(label, per_run).p
        for alpha in (0.05, 0.01):
            ci = stats.binomtest(int(np.sum(p < alpha)), V).proportion_ci(0.95, method="exact")
            assert ci.low <= alpha <= ci.high, (label, alpha, np.mean(p < alpha), ci)


def t_to_z_abs(t):
    """z of F = t^2 with (1, dof): the normal value of the two-sided t p-value."""
    from scipy import stats

    return stats.norm.isf(2 * stats.t.sf(np.abs(t.t), t.dof))


def test_runs_refuse_missing_columns():
    from voxfit.models import fit_runs

    X1 = np.column_stack([np.arange(20.0), np.ones(20)])
    with pytest.raises(InputError, match="run 2: .*unknown column 'A'"):
        fit_runs(["a.nii", "b.nii"], [(X1, ["A", "constant"]), (X1, ["B", "constant"])], {"a": "A"})


def test_more_design_inputs_are_checked():
    ev = {"A": {"onset": np.array([10.0]), "duration": np.zeros(1)}}
    assert (
        make_design(ev, 2.0, 60, drift="cosine", high_pass=4).X.shape[1] == 1 + 59 + 1
    )  # capped at n - 1 (2 TR: the shortest period)
    assert make_design(ev, np.float32(2.0), 60, microtime_resolution=4).settings["microtime_onset"] == 2
    for bad, message in (
        ({"A": {"onset": [np.nan], "duration": [0.0]}}, "must be finite"),
        ({"A": {"onset": [1.0], "duration": [np.inf]}}, "has no duration \\(n/a, or not finite\\)"),
        ({"A": {"onset": [1.0], "duration": [-1.0]}}, "must not be negative"),
        ({"A": {"onset": [1.0, 2.0], "duration": [0.0]}}, "one value per event"),
    ):
        with pytest.raises(InputError, match=message):
            make_design(bad, 2.0, 60)
    with pytest.raises(InputError, match="`fir_delays` must be a positive number"):
        make_design(ev, 2.0, 60, hrf="fir", fir_delays=0)
    with pytest.raises(InputError, match="`drift_order` must be a positive integer"):
        make_design(ev, 2.0, 60, drift="polynomial", drift_order=-1)
    with pytest.raises(InputError, match=r"`slice_time_ref` must lie in \[0, 1\)"):
        make_design(ev, 2.0, 60, slice_time_ref=1.0)


def test_design_options_are_refused_with_a_design_file(tmp_path, capsys, rng):
    from .imaging import volume_data, write_nifti

    bold = write_nifti(tmp_path / "b.nii.gz", volume_data(rng, n=20))
    d = _write(tmp_path / "d.tsv", "A\tconstant\n" + "".join(f"{i % 2}\t1\n" for i in range(20)))
    conf = _write(tmp_path / "c.tsv", "x\n" + "1\n" * 20)
    argv = [
        "fit",
        str(bold),
        "--design",
        str(d),
        "--contrast",
        "a=A",
        "-o",
        str(tmp_path / "o"),
        "--confounds",
        str(conf),
        "--confounds-columns",
        "x",
    ]
    assert main(argv) == 2 and "--confounds builds a design from --events" in capsys.readouterr().err
    assert main(argv[:8] + ["--hrf", "glover"]) == 2 and "--hrf builds a design" in capsys.readouterr().err
    runs = [write_nifti(tmp_path / f"r{k}.nii.gz", volume_data(rng, n=20)) for k in range(2)]
    ev = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n4\t6\tA\n")
    assert (
        main(
            ["fit", *map(str, runs), "--events", str(ev), "--tr", "2", "--contrast", "a=A", "-o", str(tmp_path / "o2")]
        )
        == 2
    )
    assert "give one events file per run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"trans_x\ttrans_y\n0.1\t0.2\n" + "caf\u00e9\t1\n".encode("latin-1") + b"0\t0\n", "is not UTF-8 text"),
        (b"\x5c\x01\x00\x00" + bytes(400), "is not a text table"),  # a NIfTI header given by mistake
        (b"trans_x,trans_y\n0,0\n0,0\n0,0\n", "is not tab-separated"),
        (b"", "is empty"),
    ],
)
def test_confounds_files_that_are_not_tsvs_exit_2(tmp_path, capsys, content, message):
    from voxfit.cli import main

    events = _write(tmp_path / "ev.tsv", "onset\tduration\ttrial_type\n0\t2\tA\n")
    conf = tmp_path / "conf.tsv"
    conf.write_bytes(content)
    code = main(
        [
            "design",
            str(events),
            "--tr",
            "2",
            "--n-scans",
            "3",
            "--confounds",
            str(conf),
            "--confounds-columns",
            "trans_x",
            "-o",
            str(tmp_path / "d.tsv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "confounds" in err and err.count("\n") == 1


@pytest.mark.parametrize(("hrf", "convolution"), [("spm", "spm"), ("glover+derivative", "spm"), ("glover", "nilearn")])
def test_a_repetition_time_past_the_hrf_is_bad_input_naming_milliseconds(hrf, convolution):
    """A TR given in milliseconds (2000): SPM's HRF sampled every TR / 16 s had no sample inside its response, its
    normalised kernel was NaN, and the design's SVD failed (exit 1, "LinAlgError: SVD did not converge"). With the
    default cosine drift, it was said as a high-pass period too short (a tester's)."""
    events = {"a": {"onset": np.array([10.0, 60.0]), "duration": np.array([5.0, 5.0])}}
    for drift in ("none", "cosine"):
        with pytest.raises(
            InputError, match=r"repetition times are in seconds .*2000 looks like milliseconds: give 2\."
        ):
            make_design(events, 2000.0, 60, hrf=hrf, drift=drift, convolution=convolution)


def test_events_before_spms_grid_are_warned_of():
    """An impulse 6 s before the first scan at TR 2 (SPM's grid begins 4 s before it) added nothing to the design,
    and a block from -10 s was cut to -4 s, silently (a tester's): warned of, saying what nilearn's convolution does;
    an event within the grid's lead-in is not."""
    import warnings

    early = {"a": {"onset": np.array([-6.0, 20.0]), "duration": np.array([0.0, 0.0])}}
    with pytest.warns(DesignWarning, match=r"1 of 2 events of 'a' start more than 4 s before the first scan"):
        make_design(early, 2.0, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DesignWarning)
        make_design({"a": {"onset": np.array([-3.0, 20.0]), "duration": np.array([0.0, 0.0])}}, 2.0, 60)


def test_an_fsl_three_column_ev_file_is_said_to_be_one(tmp_path):
    """FSL's 3-column EV file (onset, duration, height, no header) given as events: "has no 'onset' column
    (columns: 10, 5, 1)"; it is named as FSL's format, with the BIDS form to give; separated by spaces too, as FSL
    writes them (said to be "not tab-separated": a tester's)."""
    ev = tmp_path / "ev1.txt"
    for text in ("10\t5\t1\n40\t5\t1\n", "10 5 1\n40 5 1\n", "  10   5 1\n40 5 1\n"):
        ev.write_text(text)
        with pytest.raises(InputError, match=r"is FSL's 3-column format .*line 'onset<TAB>duration<TAB>trial_type'"):
            read_events(ev)
