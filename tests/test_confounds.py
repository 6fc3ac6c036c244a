"""Confound strategies (voxfit.design.confounds) against nilearn's load_confounds_strategy on fMRIPrep-style tables
written by voxfit.bids.synthetic.make_dataset, and censoring: indicator columns remove the scans from the fit."""

import warnings

import numpy as np
import pytest

from voxfit.design.confounds import MOTION, confounds_strategy, parse_strategy
from voxfit.exceptions import InputError

pytest.importorskip("nilearn")

# the columns fMRIPrep writes that the synthetic table lacks (their values: standard normal noise)
EXTRA = tuple(
    [f"{m}_derivative1_power2" for m in MOTION]
    + [f"{c}_{s}" for c in ("csf", "white_matter", "global_signal") for s in ("derivative1", "power2")]
    + [f"{c}_derivative1_power2" for c in ("csf", "white_matter", "global_signal")]
    + ["std_dvars"]
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from voxfit.bids.synthetic import make_dataset

    root = tmp_path_factory.mktemp("fmriprep")
    make_dataset(root, subjects=1, runs=1, scans=60, extra_confounds=EXTRA)
    bold = next((root / "derivatives" / "fmriprep").rglob("*desc-preproc_bold.nii.gz"))
    tsv = bold.with_name(
        bold.name.replace("space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz", "desc-confounds_timeseries.tsv")
    )
    return bold, tsv


CASES = [
    ("simple", {}),
    ("simple", {"motion": "basic", "global_signal": "full"}),
    ("simple", {"motion": "derivatives", "wm_csf": "power2"}),
    ("scrubbing", {"fd_threshold": 3.0}),
    ("scrubbing", {"fd_threshold": 2.5, "std_dvars_threshold": 1.0}),
    ("scrubbing", {"fd_threshold": 3.0, "scrub": 0}),
    ("compcor", {}),
    ("compcor", {"n_compcor": 2, "motion": "power2"}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_strategies_choose_what_nilearn_chooses(run, name, options):
    """The same columns, values (demeaned over the kept scans, first-row derivatives as nilearn fills them) and
    kept scans (nilearn's sample_mask) as nilearn's load_confounds_strategy."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    bold, tsv = run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, sample_mask = load_confounds_strategy(str(bold), name, **options)
    text = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    mine = confounds_strategy(tsv, text)
    assert sorted(mine.names) == sorted(theirs.columns)
    np.testing.assert_allclose(mine.X, theirs[mine.names].to_numpy(), atol=1e-9)
    if sample_mask is None:
        assert mine.sample_mask is None
    else:
        np.testing.assert_array_equal(mine.sample_mask, sample_mask)
    assert confounds_strategy(tsv, name, **options).names == mine.names  # keyword options as nilearn's


@pytest.mark.parametrize(("name", "options"), [CASES[0], CASES[3], CASES[6]])
def test_fmripreps_own_motion_outliers_are_not_censored_as_nilearn_reads_none(run, tmp_path, name, options):
    """fMRIPrep writes motion_outlierNN columns (its spikes at FD 0.5 mm or std DVARS 1.5); nilearn's strategies
    never read them (scrubbing finds its own outliers from its thresholds, the others censor the non-steady-state
    scans alone). Every strategy censored every scan they flag, whatever its thresholds, without a word: the same
    kept scans as nilearn's now, beside a non-steady-state scan that both censor."""
    import shutil

    import pandas as pd
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    bold, tsv = run
    for src in (bold, tsv, tsv.with_suffix(".json")):
        shutil.copy(src, tmp_path / src.name)
    bold, tsv = tmp_path / bold.name, tmp_path / tsv.name
    table = pd.read_csv(tsv, sep="\t")
    n = len(table)
    table["non_steady_state_outlier00"] = np.eye(n, dtype=int)[0]
    table["motion_outlier00"], table["motion_outlier01"] = np.eye(n, dtype=int)[20], np.eye(n, dtype=int)[41]
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sample_mask = load_confounds_strategy(str(bold), name, **options)
    mine = confounds_strategy(tsv, name, **options)
    np.testing.assert_array_equal(mine.sample_mask, sample_mask)
    assert mine.censored[0] and (name == "scrubbing" or not mine.censored[[20, 41]].any())


def test_censoring_removes_the_scans_from_an_ols_fit(run):
    """OLS with the indicator columns = OLS on the kept scans only (betas of the other columns, residual sum of
    squares), and the degrees of freedom lower by one per censored scan; a brute-force fit is the reference."""
    from voxfit import fit

    _, tsv = run
    sel = confounds_strategy(
        tsv, "scrubbing:fd_threshold=3.5,std_dvars_threshold=2.5,scrub=0,motion=basic,wm_csf=basic"
    )
    assert 0 < sel.censored.sum() < sel.censored.size - 30
    C, names = sel.design_columns()
    n = C.shape[0]
    rng = np.random.default_rng(0)
    task = rng.standard_normal(n)
    X = np.column_stack([task, C, np.ones(n)])
    Y = rng.standard_normal((n, 5))
    f = fit(X, Y, names=["task", *names, "constant"])
    keep = ~sel.censored
    Xk = np.column_stack([task, sel.X, np.ones(n)])[keep]
    beta, rss, *_ = np.linalg.lstsq(Xk, Y[keep], rcond=None)
    np.testing.assert_allclose(f.betas[0], beta[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f.residual_variance * f.dof, rss, rtol=1e-9)
    assert f.dof == keep.sum() - Xk.shape[1]


def test_non_steady_state_scans_are_always_censored():
    import pandas as pd

    n = 30
    table = pd.DataFrame({m: np.linspace(0, 1, n) ** (k + 1) for k, m in enumerate(MOTION)})
    for m in MOTION:
        table[f"{m}_derivative1"] = np.r_[np.nan, np.diff(table[m])]
    for c in ("csf", "white_matter"):
        table[c] = np.cos(np.arange(n) * (1 + len(c)))
    table["cosine00"] = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    table["non_steady_state_outlier00"] = np.eye(n)[0]
    table["non_steady_state_outlier01"] = np.eye(n)[1]
    sel = confounds_strategy(table, "simple:motion=derivatives")
    np.testing.assert_array_equal(np.flatnonzero(sel.censored), [0, 1])
    assert sel.design_columns()[1][-2:] == ["censored_0", "censored_1"]
    assert "non_steady_state_outlier00" not in sel.names


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("nonsense", "strategy"),
        ("scrubbing:fd_threshold=-1", "fd_threshold"),
        ("scrubbing:fd_threshold=abc", "fd_threshold"),
        ("simple:motion=everything", "motion"),
        ("simple:colour=blue", "colour"),
        ("compcor:n_compcor=0", "n_compcor"),
        ("compcor:compcor_variance=2", "compcor_variance"),
        ("simple:motion", "KEY=VALUE"),
    ],
)
def test_bad_strategies_are_refused(text, word):
    with pytest.raises(InputError, match=word):
        parse_strategy(text)


def test_missing_columns_and_files_are_refused(run, tmp_path):
    import pandas as pd

    _, tsv = run
    table = pd.read_csv(tsv, sep="\t").drop(columns=["rot_z_power2"])
    with pytest.raises(InputError, match="rot_z_power2"):
        confounds_strategy(table, "simple")
    with pytest.raises(InputError, match="aroma_motion"):
        confounds_strategy(tsv, "ica_aroma")
    with pytest.raises(InputError, match="sidecar"):
        confounds_strategy(table, "compcor:motion=basic")
    with pytest.raises(InputError, match="rows"):
        confounds_strategy(tsv, "simple", n_scans=61)
    with pytest.raises(InputError, match="every scan"):
        confounds_strategy(tsv, "scrubbing")  # the synthetic motion is large: FD > 0.5 everywhere
    with pytest.raises(InputError):
        confounds_strategy(tmp_path / "absent.tsv", "simple")
    # what to do names the part that failed and the levels of it the table has ("choose a lighter level (e.g.
    # motion=basic)" was said whatever the part, and to a table whose names are fMRIPrep's before 1.4)
    no_csf_derivatives = pd.read_csv(tsv, sep="\t").drop(columns=["csf_derivative1", "csf_power2"])
    with pytest.raises(
        InputError, match=r"wm_csf needs; choose a level of wm_csf that it has \(scrubbing:wm_csf=basic\)\."
    ):
        confounds_strategy(no_csf_derivatives, "scrubbing:wm_csf=full")
    with pytest.raises(InputError, match=r"motion needs; choose a level of motion that it has \(simple:motion=basic, "):
        confounds_strategy(table, "simple")
    old = pd.read_csv(tsv, sep="\t").rename(columns={"trans_x": "X", "rot_x": "RotX", "csf": "CSF"})
    with pytest.raises(InputError, match=r"as fMRIPrep named them before 1.4 \(X, RotX, CSF\.\.\.\)"):
        confounds_strategy(old, "simple:motion=basic")
    infinite = pd.read_csv(tsv, sep="\t")
    infinite.loc[5, "trans_x"] = np.inf  # (the design's SVD failed on it: exit 1)
    with pytest.raises(InputError, match="column 'trans_x' holds an infinite value"):
        confounds_strategy(infinite, "simple")


def test_spm_and_fsl_motion_parameters_are_read_as_fmripreps_columns(tmp_path, capsys):
    """SPM's rp_*.txt and FSL's .par (six columns, no header, spaces) were refused as "not tab-separated", and a
    headerless TSV took its first row for names ("49 rows but the run has 50 scans"): an SPM or FSL user's first
    confounds file (a tester's). The motion files are read with fMRIPrep's names, SPM's translations first and
    MCFLIRT's rotations first, all six by default; a headerless table is said to be one."""
    from voxfit.cli import main
    from voxfit.design import read_confounds

    rng = np.random.default_rng(0)
    motion = rng.standard_normal((40, 6)) * [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    np.savetxt(tmp_path / "rp_run1.txt", motion, fmt="%.7e", delimiter="  ")
    np.savetxt(tmp_path / "prefiltered_func_data_mcf.par", motion[:, [3, 4, 5, 0, 1, 2]], fmt="%.6f", delimiter=" ")
    spm, names = read_confounds(tmp_path / "rp_run1.txt", "*", 40)
    assert names == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    np.testing.assert_allclose(spm, motion, rtol=1e-6)
    fsl, names = read_confounds(tmp_path / "prefiltered_func_data_mcf.par", "trans_*,rot_*", 40)
    assert names == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    np.testing.assert_allclose(fsl, motion, atol=1e-6)
    with pytest.raises(InputError, match="has 40 rows but the run has 41 scans"):
        read_confounds(tmp_path / "rp_run1.txt", "*", 41)
    np.savetxt(tmp_path / "motion.tsv", motion, delimiter="\t")
    with pytest.raises(InputError, match="its first line holds numbers .*, not column names; add a header line"):
        read_confounds(tmp_path / "motion.tsv", "*", 40)
    # the command line takes the six without --confounds-columns
    bold = tmp_path / "bold.nii"
    import nibabel as nib

    nib.save(nib.Nifti1Image(100 + rng.standard_normal((4, 4, 3, 40)).astype(np.float32), np.eye(4)), bold)
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t10\tA\n40\t10\tA\n")
    argv = ["fit", str(bold), "--events", str(tmp_path / "events.tsv"), "--tr", "2", "--contrast", "a=A"]
    assert main([*argv, "--confounds", str(tmp_path / "rp_run1.txt"), "-o", str(tmp_path / "o"), "--quiet"]) == 0
    assert (tmp_path / "o" / "design.tsv").read_text().splitlines()[0].split("\t")[1:7] == list(names)
