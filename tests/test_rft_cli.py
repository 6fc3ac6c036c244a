"""``--inference rft`` on the command line (issue 18): ``voxfit fit`` and ``voxfit group`` end to end on small
smooth volumes (the maps, model.json's inference part, the results TSV's columns and footer, the report's
table), and the refusals in one line (surfaces, CIFTI, beside --permutations)."""

import json
import re

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest
from scipy import stats

from voxfit.cli import main

from .helpers import assert_smoothness_of_residuals
from .imaging import AFFINE, cifti_axes, write_cifti, write_gifti

RFT_MAPS = ("stat-p_desc-rftfwe", "stat-logp_desc-rftfwe")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def smooth_volume(rng, shape=(10, 9, 8), n=30, signal=0.0):
    """`n` volumes of spatially smooth noise about 100 (a box filter along each axis; one background plane of
    zeros), with `signal` added in a 3 x 3 x 3 cube; and a design of two regressors and the constant."""
    e = rng.standard_normal(shape + (n,))
    for axis in range(3):
        e = e + np.roll(e, 1, axis=axis)
    t = np.arange(n)
    X = np.column_stack([np.sin(t / 3.0), np.cos(t / 7.0), np.ones(n)])
    data = 100 + e
    data[3:6, 3:6, 3:6] += signal * X[:, 0]
    data[0] = 0.0
    return data.astype(np.float32), X


def read_tsv(path):
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def check_rft_outputs(out, label, n_voxels):
    """The maps of --inference rft, model.json's inference part, the results TSV and its footer."""
    from voxfit.inference.rft import p_peak_fwe
    from voxfit.report.rft_table import COLUMNS

    record = json.loads((out / "model.json").read_text())  # (validated by the schema: tests/conftest.py)
    inference = record["inference"]
    assert inference["method"] == "rft"
    assert inference["search"]["voxels"] == n_voxels
    entry = inference["contrasts"][label]
    assert entry["table"] == f"contrast-{label}_desc-rft_table.tsv"
    footer = entry["footer"]
    for key in ("height", "fwhm_mm", "fwhm_voxels", "search_voxels", "search_resels", "resel_voxels", "dof"):
        assert key in footer, key
    assert footer["search_voxels"] == n_voxels
    npt.assert_allclose(footer["fwhm_mm"], inference["smoothness"]["fwhm_mm"], rtol=1e-12)
    table = read_tsv(out / entry["table"])
    assert tuple(table.columns) == COLUMNS
    mask = nib.load(out / "mask.nii.gz").get_fdata().astype(bool)
    assert int(mask.sum()) == n_voxels
    rpv = nib.load(out / "stat-rpv_statmap.nii.gz").get_fdata()[mask]
    assert np.all(rpv >= 0) and (rpv > 0).mean() > 0.5  # (0: voxels without every +x, +y, +z neighbour)
    dof = [np.inf if d is None else d for d in entry["dof"]]
    if "height_z" in entry:  # dof that vary by voxel: each voxel's z (its p) mapped to the field's dof, by scipy
        z = nib.load(out / f"contrast-{label}_stat-z_statmap.nii.gz").get_fdata()[mask]
        stat = _mapped(z, entry["field"], dof)
        sf = stats.t.sf if entry["field"] == "T" else lambda x, nu: stats.f.sf(x, dof[0], nu)
        npt.assert_allclose(entry["height_z"], stats.norm.isf(sf(entry["height_stat"], dof[1])), rtol=1e-9)
    else:
        stat_name = {"T": "t", "Z": "z", "F": "F"}[entry["field"]]
        stat = nib.load(out / f"contrast-{label}_stat-{stat_name}_statmap.nii.gz").get_fdata()[mask]
    p = nib.load(out / f"contrast-{label}_stat-p_desc-rftfwe_statmap.nii.gz").get_fdata()[mask]
    logp = nib.load(out / f"contrast-{label}_stat-logp_desc-rftfwe_statmap.nii.gz").get_fdata()[mask]
    resels = inference["smoothness"]["resels"]
    want = p_peak_fwe(stat, dof if entry["field"] == "F" else dof[1], entry["field"], resels, n_voxels=n_voxels)
    npt.assert_allclose(p, want, rtol=1e-5, atol=1e-12)
    npt.assert_allclose(logp, -np.log10(p), rtol=1e-5, atol=1e-6)
    return inference, table


def _mapped(z, kind: str, dof):
    """Each z's p as the T (or F) of `dof`: the upper tail for z > 0, the lower below (scipy.stats)."""
    upper, lower = stats.norm.sf(z), stats.norm.cdf(z)
    if kind == "T":
        return np.where(z > 0, stats.t.isf(upper, dof[1]), stats.t.ppf(lower, dof[1]))
    return np.where(z > 0, stats.f.isf(upper, dof[0], dof[1]), stats.f.ppf(lower, dof[0], dof[1]))


def test_fit_with_rft_end_to_end(tmp_path, rng, capsys):
    """voxfit fit --inference rft --report: a planted effect is listed first in SPM's table, at its cube, with a
    voxel-level FWE p below 0.05; the report shows the table and its footer."""
    data, X = smooth_volume(rng, signal=3.0)
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    design = tmp_path / "design.tsv"
    pd.DataFrame(X, columns=["a", "b", "const"]).to_csv(design, sep="\t", index=False)
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        *("fit", bold, "--design", design, "--contrast", "a=a", "--contrast", "ab=a; b", "-o", out),
        *("--mask-threshold", "0", "--inference", "rft", "--report", "--quiet"),
    )
    assert code == 0, err
    inference, table = check_rft_outputs(out, "a", n_voxels=9 * 9 * 8)
    assert inference["contrasts"]["a"]["field"] == "T"
    assert inference["contrasts"]["ab"]["field"] == "F"
    check_rft_outputs(out, "ab", n_voxels=9 * 9 * 8)
    first = table.iloc[0]
    assert first["cluster_k"] >= 1 and first["peak_p_fwe"] < 0.05
    ijk = np.linalg.solve(AFFINE[:3, :3], np.array([first["x_mm"], first["y_mm"], first["z_mm"]]) - AFFINE[:3, 3])
    assert np.all((ijk >= 3 - 1e-6) & (ijk <= 5 + 1e-6)), ijk
    page = next(out.glob("*.html")).read_text()
    assert "Random field theory: SPM&#x27;s results table" in page or "Random field theory: SPM's results table" in page
    assert "contrast-a_desc-rft_table.tsv" in page and "FWHM =" in page and "resels" in page
    # the page draws the map at the run's RFT height and extent, the voxels of the table's clusters (it drew
    # p < 0.001 uncorrected beside a table at p < 0.05 FWE, and at the group the voxelwise FWE map, whatever the
    # extent)
    code, _, err = run(
        capsys,
        *("fit", bold, "--design", design, "--contrast", "a=a", "-o", tmp_path / "k", "--mask-threshold", "0"),
        *("--inference", "rft", "--height-threshold", "0.01", "--height-correction", "none"),
        *("--extent-threshold", "3", "--report", "--quiet"),
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "k" / "contrast-a_desc-rft_table.tsv", sep="\t", na_values="n/a")
    page = (tmp_path / "k" / "report.html").read_text().replace("&gt;", ">").replace("&lt;", "<")
    assert re.search(
        r"Threshold: t > [\d.]+ \(p < 0.01 uncorrected, random field theory\) in clusters of at least 3 ", page
    )
    assert f"{int(table['cluster_k'].sum()):,} of {9 * 9 * 8:,} elements shown" in page
    # the page's own table of clusters counts them as SPM's does (18 neighbours; it had 26 beside SPM's 18)
    assert "Clusters (18-connected)" in page
    listed = re.findall(r"<tr><td class=n>(\d+)</td>", page.split("Clusters (18-connected)")[1].split("</table>")[0])
    assert len(set(listed)) == table["cluster_k"].notna().sum(), listed
    # ... and numbers them as SPM's does, by their peaks (it numbered them by size beside SPM's table)
    section = page.split("Clusters (18-connected)")[1].split("</table>")[0]
    sizes = [int(k) for k in re.findall(r"<tr><td class=n>\d+</td><td class=n>(\d+)</td>", section)]
    assert sizes == table["cluster_k"].dropna().astype(int).tolist()[: len(sizes)], (sizes, table)
    assert "Clusters numbered by peak height, as SPM numbers them" in page


@pytest.mark.parametrize("noise", ["ols", "ar1"])
def test_fit_with_a_mask_gathers_the_sums_while_reading(tmp_path, rng, capsys, monkeypatch, noise):
    """voxfit fit --inference rft --mask: the command line's read (started before the models import) hands its
    scans to the neighbour sums; none are taken after the fit, and the smoothness equals that of the residuals
    (AR models: the OLS residuals) of the data as read."""
    from voxfit.models import glm
    from voxfit.models._routing import ScanObserver

    data, X = smooth_volume(rng, shape=(11, 10, 9), n=40)
    bold, mask_path = tmp_path / "bold.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    mask = data[..., 0] > 50
    mask[5, 5, 4] = False  # a hole
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    design = tmp_path / "design.tsv"
    pd.DataFrame(X, columns=["a", "b", "const"]).to_csv(design, sep="\t", index=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the neighbour sums were taken after the fit")

    monkeypatch.setattr(glm, "_neighbour_sums", refuse)
    seen = []
    call = ScanObserver.__call__
    monkeypatch.setattr(ScanObserver, "__call__", lambda self, out, stop: seen.append(stop) or call(self, out, stop))
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        *("fit", bold, "--design", design, "--contrast", "a=a", "--mask", mask_path, "--noise", noise),
        *("--inference", "rft", "--quiet", "-o", out),
    )
    assert code == 0, err
    assert seen and seen[-1] == X.shape[0]  # the read's scans, handed on (or left to finish if it ended first)
    Y = data.reshape(-1, data.shape[3], order="F")[mask.ravel(order="F")].T
    assert_smoothness_of_residuals(out, Y, X, mask, AFFINE)


@pytest.mark.parametrize("noise", ["ols", "ar1", "ar1-global"])
def test_several_runs_with_rft_take_the_smoothness_of_every_runs_residuals(tmp_path, capsys, noise):
    """voxfit fit of two runs --inference rft (refused before; SPM's RFT of a model of several sessions): the
    smoothness from both runs' residuals together equals that of one fit of the runs concatenated with their
    designs block-diagonal (SPM's model of two sessions, whose single-run smoothness is SPM's own: test_rft.py),
    on the runs' dof summed; each combined contrast (its dof vary by voxel) a T or F field of its median dof, its
    FWE p map SPM's p for it; the report draws the table. Runs of fewer than 40 residual dof are refused (fixed
    effects of runs of few dof was liberal: validation/rft_runs_null.py)."""
    rng = np.random.default_rng(11)
    n1, n2 = (44, 48) if noise != "ar1" else (150, 160)  # (AR(1)'s effective dof: a median of about 50 at 150 scans)
    (a, X1), (b, X2) = smooth_volume(rng, n=n1, signal=3.0), smooth_volume(rng, n=n2)
    X2 = X2 + np.outer(np.arange(n2) / n2, [0.3, 0.0, 0.0])  # (the runs' designs differ)
    paths, designs = [], []
    for k, (data, X) in enumerate(((a, X1), (b, X2))):
        paths.append(tmp_path / f"run{k}.nii.gz")
        nib.save(nib.Nifti1Image(data, AFFINE), paths[-1])
        designs.append(tmp_path / f"design{k}.tsv")
        pd.DataFrame(X, columns=["a", "b", "const"]).to_csv(designs[-1], sep="\t", index=False)
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        *("fit", *paths, "--design", *designs, "--contrast", "a=a", "--contrast", "ab=a; b", "--noise", noise),
        *("--mask-threshold", "0", "--inference", "rft", "--report", "--quiet", "-o", out),
    )
    assert code == 0, err
    inference, table = check_rft_outputs(out, "a", n_voxels=9 * 9 * 8)
    check_rft_outputs(out, "ab", n_voxels=9 * 9 * 8)
    assert [c["field"] for c in inference["contrasts"].values()] == ["T", "F"]
    assert table.iloc[0]["peak_p_fwe"] < 0.05  # (the planted cube of the first run)
    page = (out / "report.html").read_text()
    assert "contrast-a_desc-rft_table.tsv" in page
    height_z = inference["contrasts"]["a"]["height_z"]
    assert "median dof (the model" in page and f"the page draws the z map at {height_z:.2f}" in page
    # the same runs as one: their scans in turn, their designs block-diagonal
    together = tmp_path / "together.nii.gz"
    nib.save(nib.Nifti1Image(np.concatenate([a, b], axis=3), AFFINE), together)
    blocks = np.zeros((n1 + n2, 6))
    blocks[:n1, :3], blocks[n1:, 3:] = X1, X2
    block_design = tmp_path / "blocks.tsv"
    pd.DataFrame(blocks, columns=["a1", "b1", "c1", "a2", "b2", "c2"]).to_csv(block_design, sep="\t", index=False)
    one = tmp_path / "one"
    code, _, err = run(
        capsys,
        *("fit", together, "--design", block_design, "--contrast", "a=a1 + a2", "--noise", noise),
        *("--mask-threshold", "0", "--inference", "rft", "--quiet", "-o", one),
    )
    assert code == 0, err
    reference = json.loads((one / "model.json").read_text())["inference"]
    if noise != "ar1-global":  # (its whitening is of one run there, of each run here: other residuals)
        for key in ("fwhm_mm", "resels"):
            npt.assert_allclose(inference["smoothness"][key], reference["smoothness"][key], rtol=1e-9)
    # runs shorter than 41 dof (fixed effects was liberal) are refused before any is read, saying what to do
    short = [tmp_path / "short0.tsv", tmp_path / "short1.tsv"]
    for path, X in zip(short, (X1, X2)):
        pd.DataFrame(X[:30], columns=["a", "b", "const"]).to_csv(path, sep="\t", index=False)
    for k, data in enumerate((a, b)):
        nib.save(nib.Nifti1Image(data[..., :30], AFFINE), tmp_path / f"short{k}.nii.gz")
    code, _, err = run(
        capsys,
        *("fit", tmp_path / "short0.nii.gz", tmp_path / "short1.nii.gz", "--design", *short, "--contrast", "a=a"),
        *("--inference", "rft", "-o", tmp_path / "refused"),
    )
    assert code == 2 and err.count("\n") == 1 and "run 1 has 27 residual dof, fewer than 40" in err, err
    assert "block-diagonal" in err and not (tmp_path / "refused").exists()
    if noise == "ar1":  # AR(1)'s effective dof on runs of 60 scans (a median of about 20): refused once fitted
        for k, (data, X) in enumerate(((a, X1), (b, X2))):
            nib.save(nib.Nifti1Image(data[..., :60], AFFINE), tmp_path / f"mid{k}.nii.gz")
            pd.DataFrame(X[:60], columns=["a", "b", "const"]).to_csv(short[k], sep="\t", index=False)
        code, _, err = run(
            capsys,
            *("fit", tmp_path / "mid0.nii.gz", tmp_path / "mid1.nii.gz", "--design", *short, "--contrast", "a=a"),
            *("--noise", "ar1", "--inference", "rft", "-o", tmp_path / "refused"),
        )
        assert code == 2 and err.count("\n") == 1 and "effective" not in err, err
        assert re.search(r"run 1 has a median of [\d.]+ dof for contrast 'a', fewer than 40: fit them with", err), err
        assert not (tmp_path / "refused").exists()


def test_rft_of_an_ar_model_at_few_dof_is_a_field_of_its_median_dof(tmp_path, capsys):
    """An AR(p) model's dof vary by voxel: its contrasts are T and F fields of their median effective dof, each
    voxel's statistic mapped there through its p (its z taken as a Z field was liberal at few dof:
    validation/rft_runs_null.py); SPM's ar1-global is a T field of its own dof. Below 12 effective dof, where
    AR(p) itself ran liberal, a run is warned of with what keeps the level."""
    data, X = smooth_volume(np.random.default_rng(3), n=30, signal=3.0)
    bold, design = tmp_path / "bold.nii.gz", tmp_path / "design.tsv"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    pd.DataFrame(X, columns=["a", "b", "const"]).to_csv(design, sep="\t", index=False)
    for noise in ("ar1", "ar1-global"):
        out = tmp_path / noise
        code, _, err = run(
            capsys,
            *("fit", bold, "--design", design, "--contrast", "a=a", "--contrast", "ab=a; b", "--noise", noise),
            *("--inference", "rft", "--mask-threshold", "0", "-o", out),
        )
        assert code == 0, err
        inference, table = check_rft_outputs(out, "a", n_voxels=9 * 9 * 8)
        check_rft_outputs(out, "ab", n_voxels=9 * 9 * 8)
        entries = inference["contrasts"]
        assert [e["field"] for e in entries.values()] == ["T", "F"]
        assert all(("height_z" in e) is (noise == "ar1") for e in entries.values())
        median = entries["a"]["dof"][1]
        assert 1 < median <= 27 and table.iloc[0]["peak_p_fwe"] < 0.05
        if noise == "ar1":  # (30 scans: a median of about 9 effective dof)
            assert median < 12 and f"has a median of {median:.1f} effective dof, fewer than 12" in err, err
            assert "--noise ar1-global" in err and err.count("\n") == 1
        else:
            assert "dof" not in err, err


def test_group_with_rft_end_to_end(tmp_path, rng, capsys):
    """voxfit group --inference rft on one map per subject: T field with the group's dof, the same outputs."""
    data, _ = smooth_volume(rng, n=12)
    effects = data - 100
    effects[0] = 0.0  # the background plane: outside the group mask
    maps = []
    for i in range(effects.shape[3]):
        maps.append(tmp_path / f"sub-{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(effects[..., i], AFFINE), maps[-1])
    out = tmp_path / "group"
    code, _, err = run(capsys, "group", *maps, "-o", out, "--inference", "rft", "--extent-threshold", "2", "--quiet")
    assert code == 0, err
    inference, table = check_rft_outputs(out, "intercept", n_voxels=9 * 9 * 8)
    entry = inference["contrasts"]["intercept"]
    assert entry["field"] == "T" and entry["dof"][1] == 11
    assert inference["extent"] == 2
    assert (table["cluster_k"].dropna() >= 2).all()
    # beside --cluster-threshold: two tables of clusters formed at two thresholds, said (not quiet: warnings shown)
    code, _, err = run(
        capsys, "group", *maps, "-o", tmp_path / "both", "--inference", "rft", "--cluster-threshold", "3"
    )
    assert code == 0 and "RFT's cluster table forms its own at --height-threshold" in err, err


def test_rft_refusals_are_one_line(tmp_path, rng, capsys):
    """Surfaces, CIFTI and --permutations beside --inference rft: exit 2, one line naming the way out."""
    matrix = rng.standard_normal((12, 30)).astype(np.float32) + 10
    design = tmp_path / "design.tsv"
    pd.DataFrame({"a": rng.standard_normal(12), "const": 1.0}).to_csv(design, sep="\t", index=False)
    gifti = write_gifti(tmp_path / "run.func.gii", matrix)
    cifti = write_cifti(tmp_path / "run.dtseries.nii", rng.standard_normal((12, len(cifti_axes(12)[1]))) + 10)
    for inputs in (gifti, cifti):
        code, _, err = run(
            capsys, "fit", inputs, "--design", design, "--contrast", "a=a", "-o", tmp_path / f"o{inputs.suffix}"
        )
        assert code == 0, err
        code, _, err = run(
            capsys,
            *("fit", inputs, "--design", design, "--contrast", "a=a", "-o", tmp_path / "rft"),
            *("--inference", "rft", "--quiet"),
        )
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and "--inference rft is for volumes" in err, err
        assert not (tmp_path / "rft").exists() or not any((tmp_path / "rft").iterdir())
    # two runs of them: refused from their headers, before either is read
    from voxfit.models import runs as runs_module

    second = write_gifti(tmp_path / "run2.func.gii", matrix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs_module, "load", lambda *a, **k: pytest.fail("a run was read before the refusal"))
        code, _, err = run(
            capsys,
            *("fit", gifti, second, "--design", design, design, "--contrast", "a=a", "-o", tmp_path / "rft2"),
            *("--inference", "rft", "--quiet"),
        )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--inference rft is for volumes" in err, err
    assert not (tmp_path / "rft2").exists()
    data, _ = smooth_volume(rng, n=8)
    maps = tmp_path / "maps.nii.gz"
    nib.save(nib.Nifti1Image(data - 100, AFFINE), maps)
    code, _, err = run(
        capsys, "group", maps, "-o", tmp_path / "g", "--inference", "rft", "--permutations", "10", "--quiet"
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--inference rft and --permutations" in err, err


@pytest.mark.parametrize(
    "option, value, fragment",
    [("--height-threshold", "1.5", "--height-threshold must"), ("--extent-threshold", "-3", "--extent-threshold must")],
)
def test_rft_thresholds_are_checked_in_one_line(tmp_path, rng, capsys, option, value, fragment):
    data, X = smooth_volume(rng, n=10)
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), bold)
    design = tmp_path / "design.tsv"
    pd.DataFrame(X, columns=["a", "b", "const"]).to_csv(design, sep="\t", index=False)
    code, _, err = run(
        capsys,
        *("fit", bold, "--design", design, "--contrast", "a=a", "-o", tmp_path / "o"),
        *("--inference", "rft", option, value, "--quiet"),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_bids_dataset_level_with_rft_as_voxfit_group(tmp_path, capsys):
    """voxfit bids ... dataset --inference rft: each dataset group's RFT outputs in the node's folder, equal to
    voxfit group --inference rft on the subject maps; the run and subject levels and --permutations refused."""
    pytest.importorskip("bids")
    import jsonschema

    from voxfit.bids.synthetic import make_dataset
    from voxfit.inference.rft_fit import check_rft_options
    from voxfit.models.record import schema
    from voxfit.models.second_level import SecondLevel

    study = make_dataset(tmp_path / "ds", subjects=4, runs=1, scans=30, shape=(8, 9, 8))
    out = tmp_path / "out"
    common = ("bids", study.root, out, "dataset", "--derivatives", study.derivatives, "--noise", "ols", "--quiet")
    code, _, err = run(capsys, *common, "--group-model", "ols", "--inference", "rft", "--height-threshold", "0.1")
    assert code == 0, err
    node = out / "node-dataset"
    for contrast in ("congruent", "incongruent"):
        record = json.loads((node / f"contrast-{contrast}_model.json").read_text())
        assert not list(jsonschema.Draft202012Validator(schema()).iter_errors(record))
        inference = record["inference"]
        assert inference["contrasts"][contrast]["table"] == f"contrast-{contrast}_desc-rft_table.tsv"
        for name in (*(f"contrast-{contrast}_{m}_statmap.nii.gz" for m in RFT_MAPS), f"contrast-{contrast}_stat-rpv"):
            assert list(node.glob(name + "*")), name
        subjects = [
            out / f"sub-{s}" / "node-subject" / f"sub-{s}_contrast-{contrast}_stat-effect_statmap.nii.gz"
            for s in study.subjects
        ]
        ref = SecondLevel(rft=check_rft_options(0.1)).fit(subjects, progress=False).rft
        npt.assert_allclose(inference["smoothness"]["fwhm_voxels"], ref.smoothness.fwhm, rtol=1e-10)
        npt.assert_allclose(inference["smoothness"]["resels"], ref.smoothness.resels, rtol=1e-10)
        assert inference["contrasts"][contrast]["height_stat"] == pytest.approx(ref.contrasts["intercept"].height)
        p = nib.load(node / f"contrast-{contrast}_stat-p_desc-rftfwe_statmap.nii.gz").get_fdata()
        want = ref.contrasts["intercept"].p_fwe
        npt.assert_allclose(p.ravel(order="F")[ref.mask.ravel(order="F")], want, rtol=1e-6)
    code, _, err = run(capsys, *common, "--group-model", "ols", "--inference", "rft", "--permutations", "10")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--permutations" in err, err
    subject_level = ("bids", study.root, tmp_path / "o2", "subject", "--derivatives", study.derivatives)
    code, _, err = run(capsys, *subject_level, "--inference", "rft", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dataset nodes" in err, err
