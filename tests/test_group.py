"""voxfit group / SecondLevel: designs, FSL files, outputs, permutations with clusters and TFCE, errors."""

import csv
import itertools
import json
import re
import warnings

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pytest

from voxfit import fit
from voxfit.cli import main
from voxfit.design import read_contrasts, write_vest
from voxfit.design.group import ADDED_INTERCEPT, group_design
from voxfit.exceptions import DesignWarning, InputError
from voxfit.models import SecondLevel

from .imaging import AFFINE, write_icosahedron

GRID = (8, 7, 6)


def _maps(tmp_path, rng, n=10, effect=0.0, shape=GRID, prefix="sub"):
    """n 3-D maps: smooth-ish noise plus `effect` in a block of voxels; a zero border outside the 'brain'."""
    paths = []
    for i in range(n):
        data = rng.standard_normal(shape)
        data[2:5, 2:5, 2:4] += effect
        data[0] = 0.0
        path = tmp_path / f"{prefix}-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
        paths.append(path)
    return paths


def _read(path):
    return np.asarray(nib.load(path).dataobj)


def test_one_sample_with_permutations_clusters_and_tfce(tmp_path, rng):
    paths = _maps(tmp_path, rng, n=10, effect=1.5)
    out = tmp_path / "g"
    code = main(
        [
            "group",
            *map(str, paths),
            "--permutations",
            "200",
            "--seed",
            "1",
            "--tfce",
            "--cluster-threshold",
            "2.5",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    expected = [
        "t",
        "z",
        "p",
        "effect",
        "variance",
        "tfce",
        "p_desc-uncorrected",
        "p_desc-fwe",
        "p_desc-fdr",
        "p_desc-clusterfwe",
        "p_desc-clustermassfwe",
        "p_desc-tfcefwe",
        "logp_desc-fwe",
        "logp_desc-tfcefwe",
    ]
    for stat in expected:
        assert (out / f"contrast-intercept_stat-{stat}_statmap.nii.gz").exists(), stat
    mask = _read(out / "mask.nii.gz") > 0
    assert not mask[0].any() and mask[3, 3, 3]  # zeros in the maps are outside the automatic mask
    Y = np.stack([_read(p)[mask] for p in paths])
    t = _read(out / "contrast-intercept_stat-t_statmap.nii.gz")[mask]
    npt.assert_allclose(t, fit(np.ones((10, 1)), Y).contrast([1.0]).t, rtol=1e-5)
    p_fwe = _read(out / "contrast-intercept_stat-p_desc-fwe_statmap.nii.gz")[mask]
    p_unc = _read(out / "contrast-intercept_stat-p_desc-uncorrected_statmap.nii.gz")[mask]
    assert (p_fwe >= p_unc - 1e-7).all() and p_unc.min() >= 1 / 200 - 1e-7
    logp = _read(out / "contrast-intercept_stat-logp_desc-fwe_statmap.nii.gz")[mask]
    npt.assert_allclose(logp, -np.log10(p_fwe), rtol=1e-5)
    assert p_fwe[t.argmax()] <= 0.05  # the planted effect survives
    with open(out / "contrast-intercept_clusters.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert rows and {
        "size",
        "size_mm3",
        "peak_stat",
        "peak_x",
        "peak_y",
        "peak_z",
        "p_fwe_extent",
        "p_fwe_mass",
    } <= set(rows[0])
    assert float(rows[0]["p_fwe_extent"]) <= 0.05
    peak = np.array([float(rows[0][k]) for k in ("peak_x", "peak_y", "peak_z")])
    i, j, k = (int(rows[0][k]) for k in ("peak_i", "peak_j", "peak_k"))
    npt.assert_allclose(peak, AFFINE[:3, :3] @ [i, j, k] + AFFINE[:3, 3])
    assert 2 <= i <= 4 and 2 <= j <= 4 and 2 <= k <= 3
    model = json.loads((out / "model.json").read_text())
    perm = model["contrasts"]["intercept"]["permutation"]
    assert perm["scheme"] == "flip" and perm["shuffles"] == 200 and model["settings"]["tfce_E"] == 0.5
    # the same seed gives the same p-values; a non-empty output folder is refused without --force
    again = tmp_path / "g2"
    assert main(["group", *map(str, paths), "--permutations", "200", "--seed", "1", "-o", str(again), "--quiet"]) == 0
    npt.assert_array_equal(_read(again / "contrast-intercept_stat-p_desc-fwe_statmap.nii.gz")[mask], p_fwe)
    assert main(["group", *map(str, paths), "-o", str(out), "--quiet"]) == 2


def test_blocks_as_a_plain_column_of_numbers_are_read_as_a_grp(tmp_path):
    """--grp of a plain column of block numbers (PALM's input, and Text2Vest's) was refused as "no /Matrix section"
    where --design takes a plain matrix (a tester's): read as the VEST file it stands for; a cell that is not a
    number is refused saying what the file must hold."""
    from voxfit.design.vest import read_groups

    vest = tmp_path / "design.grp"
    write_vest(vest, np.array([[1.0], [1.0], [2.0], [2.0]]))
    for text in ("1\n1\n2\n2\n", "1\r\n1\r\n2\r\n2\r\n", "\ufeff1\n1\n2\n2"):
        plain = tmp_path / "blocks.txt"
        plain.write_text(text, encoding="utf-8")
        np.testing.assert_array_equal(read_groups(plain, 4), read_groups(vest, 4))
    plain.write_text("1\n1\nx\n2\n")
    with pytest.raises(InputError, match="neither a column of numbers .* nor FSL's VEST form"):
        read_groups(plain, 4)


def test_fsl_vest_files_and_blocks(tmp_path, rng):
    n = 12
    paths = _maps(tmp_path, rng, n=n)
    g = np.r_[np.ones(6), np.zeros(6)]
    X = np.column_stack([g, 1 - g, rng.standard_normal(n)])
    write_vest(tmp_path / "design.mat", X)
    write_vest(
        tmp_path / "design.con",
        np.array([[1, -1, 0], [-1, 1, 0], [0, 0, 1.0]]),
        {"ContrastName1": "AgtB", "ContrastName2": "BgtA", "ContrastName3": "age"},
        rows_key="NumContrasts",
    )
    write_vest(tmp_path / "design.fts", np.array([[1, 0, 1.0]]), rows_key="NumContrasts")
    write_vest(tmp_path / "design.grp", np.repeat([1, 2, 3], 4)[:, None])
    out = tmp_path / "vest"
    assert (
        main(
            [
                "group",
                *map(str, paths),
                "--design",
                str(tmp_path / "design.mat"),
                "--con",
                str(tmp_path / "design.con"),
                "--fts",
                str(tmp_path / "design.fts"),
                "--grp",
                str(tmp_path / "design.grp"),
                "--permutations",
                "50",
                "--seed",
                "0",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    for label, stat in (("AgtB", "t"), ("BgtA", "t"), ("age", "t"), ("F1", "F")):
        assert (out / f"contrast-{label}_stat-{stat}_statmap.nii.gz").exists()
    model = json.loads((out / "model.json").read_text())
    assert model["design"]["columns"] == ["EV1", "EV2", "EV3"]
    assert model["settings"]["exchangeability_blocks"] == np.repeat([1, 2, 3], 4).tolist()
    mask = _read(out / "mask.nii.gz") > 0
    t1 = _read(out / "contrast-AgtB_stat-t_statmap.nii.gz")[mask]
    t2 = _read(out / "contrast-BgtA_stat-t_statmap.nii.gz")[mask]
    npt.assert_allclose(t1, -t2, rtol=1e-5, atol=1e-6)
    Y = np.stack([_read(p)[mask] for p in paths])
    F = _read(out / "contrast-F1_stat-F_statmap.nii.gz")[mask]
    npt.assert_allclose(F, fit(X, Y).contrast([[1, -1, 0], [0, 0, 1]]).F, rtol=1e-5)


def test_an_fsl_f_test_of_a_one_sample_design_is_the_two_sided_t(tmp_path, rng):
    """FSL's one-sample design (one EV of ones) with a design.fts of its one contrast, as randomise takes it: refused
    (the F of one contrast is made of the row twice, and "2 rows but the design has only 1 column"); now F = t^2,
    its p the t's two-sided p, parametric and by sign flips."""
    n = 8
    paths = _maps(tmp_path, rng, n=n)
    write_vest(tmp_path / "design.mat", np.ones((n, 1)))
    write_vest(tmp_path / "design.con", np.ones((1, 1)), rows_key="NumContrasts")
    write_vest(tmp_path / "design.fts", np.ones((1, 1)), rows_key="NumContrasts")
    out = tmp_path / "one"
    files = ["--design", "design.mat", "--con", "design.con", "--fts", "design.fts"]
    args = [str(tmp_path / f) if f.endswith((".mat", ".con", ".fts")) else f for f in files]
    assert main(["group", *map(str, paths), *args, "--permutations", "256", "-o", str(out), "--quiet"]) == 0
    mask = _read(out / "mask.nii.gz") > 0
    t = _read(out / "contrast-C1_stat-t_statmap.nii.gz")[mask]
    F = _read(out / "contrast-F1_stat-F_statmap.nii.gz")[mask]
    npt.assert_allclose(F, t.astype(np.float64) ** 2, rtol=1e-5)
    p_t = _read(out / "contrast-C1_stat-p_statmap.nii.gz")[mask]  # one-sided
    p_F = _read(out / "contrast-F1_stat-p_statmap.nii.gz")[mask]
    npt.assert_allclose(p_F, 2 * np.minimum(p_t, 1 - p_t), rtol=1e-4, atol=1e-7)
    # every sign flip (2**8): the F's p is the two-sided t's (the F of a contrast spanning the whole design took
    # rounding noise for a nuisance column: every p was 1)
    Y = np.stack([_read(p)[mask] for p in paths]).astype(np.float64)
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    flipped = signs[:, :, None] * Y[None]
    null = flipped.mean(1) / (flipped.std(1, ddof=1) / np.sqrt(n))
    two_sided = (np.abs(null) >= np.abs(null[0]) * (1 - 1e-6)).mean(axis=0)
    flips = _read(out / "contrast-F1_stat-p_desc-uncorrected_statmap.nii.gz")[mask]
    npt.assert_allclose(flips, two_sided, rtol=1e-6)


def test_a_participants_table_of_ids_alone_is_a_one_sample_design(tmp_path, rng):
    """A participants.tsv of participant_id alone (given to match maps to subjects) was refused, "no numeric column
    to use as a regressor" (the mixed-effects tester's): its design is the intercept alone, said in a note. A table
    whose other columns are text is refused, naming them and the options for them (--two-sample, no --design)."""
    paths = _maps(tmp_path, rng, n=6)
    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\n" + "".join(f"sub-{i:02d}\n" for i in range(6)))
    d = group_design(6, design=table, maps=paths)
    assert d.names == ("intercept",) and d.X.tolist() == [[1.0]] * 6 and ADDED_INTERCEPT in d.notes
    table.write_text("participant_id\tgroup\n" + "".join(f"sub-{i:02d}\t{'ab'[i % 2]}\n" for i in range(6)))
    with pytest.raises(InputError, match=r"no numeric column .* \(its text columns: group\); for two groups give "):
        group_design(6, design=table, maps=paths)


def test_participants_table_designs(tmp_path, rng, capsys):
    rows = ["participant_id\tage\tsex\tgroup"] + [
        f"sub-{i:02d}\t{20 + 3 * i}\t{'MF'[i % 2]}\t{'patient' if i < 5 else 'control'}" for i in range(10)
    ]
    table = tmp_path / "participants.tsv"
    table.write_text("\n".join(rows) + "\n")
    paths = _maps(tmp_path, rng, n=10)
    d = group_design(10, design=table, maps=paths)
    assert d.names == ("age", "intercept") and d.left_out == ("sex", "group")
    d2 = group_design(10, design=table, two_sample="group", maps=paths)
    assert d2.names == ("control", "patient", "age") and d2.X[:5, 1].all()
    out = tmp_path / "two"
    assert (
        main(
            [
                "group",
                *map(str, paths),
                "--design",
                str(table),
                "--two-sample",
                "group",
                "--contrast",
                "pat=patient - control",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "text columns left out of the design: sex" in capsys.readouterr().err
    assert (out / "contrast-pat_stat-p_desc-fdr_statmap.nii.gz").exists()
    assert (out / "contrast-pat_stat-p_desc-bonferroni_statmap.nii.gz").exists()  # parametric only
    thresholds = json.loads((out / "model.json").read_text())["contrasts"]["pat"]["p_thresholds"]
    assert thresholds["bonferroni_0.05"] < 0.05 and 0 <= thresholds["fdr_0.05"] <= 0.05
    with pytest.raises(InputError, match="exactly two group values"):
        group_design(10, design=table, two_sample="age", maps=paths)
    with pytest.raises(InputError, match="has no row for 1 map"):
        group_design(1, design=table, maps=[tmp_path / "sub-99.nii.gz"])


def test_covariates_choose_which_numeric_columns_enter(tmp_path, rng, capsys):
    """A participants table holds more numeric columns than a model wants (BIDS's often do, some with gaps): by
    default every complete one joins the two-sample groups, and a note names them; --covariates chooses them,
    and leaves the others (gaps included) unread."""
    rows = ["participant_id\tage\tiq\tsex\tgroup"] + [
        f"sub-{i:02d}\t{20 + 3 * i}\t{'n/a' if i == 3 else 100 + i}\t{'MF'[i % 2]}\t{'patient' if i < 5 else 'control'}"
        for i in range(10)
    ]
    table = tmp_path / "participants.tsv"
    table.write_text("\n".join(rows) + "\n")
    paths = _maps(tmp_path, rng, n=10)
    with pytest.raises(InputError, match="column 'iq' has missing values"):
        group_design(10, design=table, two_sample="group", maps=paths)
    d = group_design(10, design=table, two_sample="group", maps=paths, covariates=["age"])
    assert d.names == ("control", "patient", "age") and not any("beside the groups" in n for n in d.notes)
    assert group_design(10, design=table, two_sample="group", maps=paths, covariates=[]).names == ("control", "patient")
    assert group_design(10, design=table, maps=paths, covariates="age").names == ("age", "intercept")
    for bad, message in (
        (["height"], "no column 'height' for --covariates"),
        (["sex"], "--covariates column 'sex' is not numeric"),
        (["group"], "is the id or the --two-sample column"),
        (["participant_id"], "is the id or the --two-sample column"),
    ):
        with pytest.raises(InputError, match=message):
            group_design(10, design=table, two_sample="group", maps=paths, covariates=bad)
    with pytest.raises(InputError, match="the design has no columns"):
        group_design(10, maps=paths, covariates=["age"])
    complete = tmp_path / "complete.tsv"  # (without iq: the default takes every numeric column)
    complete.write_text("".join("\t".join(c for j, c in enumerate(r.split("\t")) if j != 2) + "\n" for r in rows))
    base = [
        "group",
        *map(str, paths),
        "--design",
        str(complete),
        "--two-sample",
        "group",
        "--contrast",
        "d=patient - control",
    ]
    assert main([*base, "-o", str(tmp_path / "with")]) == 0
    assert "in the design beside the groups of 'group': age (choose them with --covariates" in capsys.readouterr().err
    assert main([*base, "--covariates", "none", "-o", str(tmp_path / "without")]) == 0
    assert "beside the groups" not in capsys.readouterr().err
    columns = (tmp_path / "without" / "design.tsv").read_text().splitlines()[0].split("\t")
    assert columns == ["control", "patient"]
    # (a comma-separated value: maps given after it stay the maps)
    argv = ["group", "--design", str(complete), "--two-sample", "group", "--covariates", "age", *map(str, paths)]
    assert main([*argv, "--contrast", "d=patient - control", "-o", str(tmp_path / "age")]) == 0
    columns = (tmp_path / "age" / "design.tsv").read_text().splitlines()[0].split("\t")
    assert columns == ["control", "patient", "age"]


def test_paired_maps_are_tested_as_differences(tmp_path, rng):
    a = _maps(tmp_path, rng, n=6, effect=2.0, prefix="a")
    b = _maps(tmp_path, rng, n=6, prefix="b")
    res = SecondLevel(paired=True, permutations=64).fit([*a, *b])
    assert res.X.shape == (6, 1)
    with pytest.raises(ValueError, match="read-only"):  # (the design the fit used, as a Fit's arrays: a tester's)
        res.X[0, 0] = 99
    perm = res.permutation["intercept"]
    assert perm.exhaustive and perm.n_shuffles == 64  # 2^6 sign-flips, all of them
    flat = [_read(p).reshape(-1, order="F")[res.masker.mask] for p in (*a, *b)]  # the masker's voxel order
    diff = np.stack(flat[:6]) - np.stack(flat[6:])
    npt.assert_allclose(res.parametric["intercept"].t, fit(np.ones((6, 1)), diff).contrast([1.0]).t, rtol=1e-5)


def test_surface_maps_with_a_mesh(tmp_path, rng, capsys):
    """An icosahedron's 12 vertices: TFCE over mesh neighbours, E = 1 by default on surfaces."""
    write_icosahedron(tmp_path / "lh.surf.gii")
    paths = []
    for i in range(8):
        values = (rng.standard_normal(12) + np.r_[2.0, 2.0, np.zeros(10)]).astype(np.float32)
        img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(values)])
        paths.append(tmp_path / f"s{i}.func.gii")
        nib.save(img, paths[-1])
    out = tmp_path / "surf"
    assert (
        main(
            [
                "group",
                *map(str, paths),
                "--permutations",
                "100",
                "--tfce",
                "--mesh",
                str(tmp_path / "lh.surf.gii"),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "contrast-intercept_stat-tfce_statmap.func.gii").exists()
    assert json.loads((out / "model.json").read_text())["settings"]["tfce_E"] == 1.0
    assert (
        main(["group", *map(str, paths), "--permutations", "100", "--tfce", "-o", str(tmp_path / "nomesh"), "--quiet"])
        == 2
    )
    # a volume's --connectivity is refused on surface maps, not passed over
    bad = tmp_path / "connectivity"
    argv = ["group", *map(str, paths), "--permutations", "100", "--tfce", "--connectivity", "18", "-o", str(bad)]
    assert main([*argv, "--mesh", str(tmp_path / "lh.surf.gii")]) == 2
    assert "--connectivity counts a voxel's neighbours in a volume" in capsys.readouterr().err
    assert not bad.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tfce"], "TFCE needs permutations"),
        (["--two-sample", "group"], "--two-sample COLUMN needs --design"),
        (["--permute-blocks"], "--permute-blocks needs --grp"),
        (["--fts", "x.fts"], "--fts selects contrasts of a --con file"),
        (["--permutations", "-3"], "--permutations must be 0"),
        (["--paired"], "an even number"),
        # options that shape only what was not asked for: refused, where they were passed over without a word
        (["--tfce-E", "0.6"], "--tfce-E and --tfce-H are TFCE's exponents; add --tfce"),
        (["--tfce-H", "3", "--cluster-threshold", "2"], "--tfce-E and --tfce-H are TFCE's exponents"),
        (["--seed", "3"], "--seed chooses the permutations' shuffles; add --permutations, or drop it"),
        (["--scheme", "flip"], "--scheme chooses the permutations' shuffles"),
        (["--mesh", "m.surf.gii"], "--mesh is the triangles of GIFTI surface maps, and these maps are volumes"),
        (["--connectivity", "26"], "--connectivity 26 chooses the neighbours of clusters and TFCE, and neither"),
    ],
)
def test_group_errors(tmp_path, rng, capsys, extra, message):
    paths = _maps(tmp_path, rng, n=5)
    out = tmp_path / "bad"
    assert main(["group", *map(str, paths), *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster_threshold": -2.0, "permutations": 50}, "`cluster_threshold` must be a positive t or F value"),
        ({"cluster_threshold": 0.0, "permutations": 50}, "`cluster_threshold` must be a positive t or F value"),
        ({"tfce": True}, "TFCE needs permutations for its p-values; give `permutations`"),
        ({"connectivity": 18}, "`connectivity` 18 chooses the neighbours of clusters and TFCE"),
        ({"seed": 3}, "`seed` chooses the permutations' shuffles; add `permutations`"),
        ({"tfce_E": 0.6}, "`tfce_E` and `tfce_H` are TFCE's exponents; add `tfce`"),
    ],
)
def test_api_options_are_refused_in_the_apis_words(tmp_path, rng, options, message):
    """A negative cluster-forming threshold formed one cluster of most of the mask, exit 0, through the API (the
    command line refused it); and the API's refusals named command-line options (a tester's)."""
    paths = _maps(tmp_path, rng, n=5)
    with pytest.raises(InputError, match=re.escape(message)):
        SecondLevel(contrasts=["mean=intercept"], **options).fit(paths)


def test_a_table_of_shuffles_over_the_cap_is_refused_before_it_is_made(tmp_path, rng, capsys):
    """The table of shuffles and their null maxima was checked against the memory there is, not --max-memory:
    5,000,000 sign-flips of 40 maps took 859 MiB under --max-memory 300M, exit 0 (a tester's). Refused before it
    is made, naming the cap; a count the cap holds runs."""
    paths = list(map(str, _maps(tmp_path, rng, n=40)))
    out = tmp_path / "g"
    assert main(["group", *paths, "--permutations", "5000000", "--max-memory", "300M", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "5,000,000 sign-flips of 40 maps" in err and "more than --max-memory 300M" in err and not out.exists()
    assert main(["group", *paths, "--permutations", "200", "--max-memory", "300M", "--quiet", "-o", str(out)]) == 0


def test_paired_maps_of_an_odd_number_name_the_subject_without_a_partner(tmp_path, rng, capsys):
    """17 maps for --paired: the message said only "an even number" where the maps' labels tell which subject has
    one map (a tester's)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _maps(tmp_path / "a", rng, n=9)
    b = _maps(tmp_path / "b", rng, n=9)
    b.pop(4)  # sub-04's B map
    out = tmp_path / "g"
    assert main(["group", *map(str, a + b), "--paired", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "an even number); got 17: sub-04 has no partner." in err and not out.exists(), err


def test_copies_of_one_map_are_said_to_be_copies(tmp_path, rng, capsys):
    """Six copies of one map: "the automatic mask is empty: no voxel is ... not constant over time in every scan",
    first-level words that named no cause (a tester's); the copies are named as such."""
    (one,) = _maps(tmp_path, rng, n=1)
    paths = [one]
    for k in range(5):
        paths.append(tmp_path / f"copy-{k}.nii.gz")
        paths[-1].write_bytes(one.read_bytes())
    assert main(["group", *map(str, paths), "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "every image holds the same values (copies of one file?)" in err and err.count("\n") == 1, err
    assert "not the same in every map" in err and "over time" not in err
    # a subject's map of no finite value (an SPM con image of NaN): said as a map, not as "scan 4" of a run
    paths = _maps(tmp_path, rng, n=6)
    image = nib.load(paths[3])
    nib.save(nib.Nifti1Image(np.full(image.shape, np.nan, np.float32), image.affine), paths[3])
    assert main(["group", *map(str, paths), "-o", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert f": map 4 ({paths[3]}) is all zeros or holds no finite value; restore it" in err, err
    assert "over time" not in err and "scan" not in err and err.count("\n") == 1


def test_an_empty_masks_causes_are_looked_for_in_one_pass_over_the_data():
    """The empty mask's message finds a blank scan and copies of one scan in one more read of the data, not one
    each; a blank scan is said before copies."""
    from voxfit.io.masking import _empty_mask_hint

    class Reader:
        n_scans, paths, passes = 4, (), 0

        def __init__(self, data):
            self.data = data

        def iter_scans(self):
            self.passes += 1
            yield from ((0, self.data[:2]), (2, self.data[2:]))

    copies = Reader(np.tile(np.arange(1.0, 11.0, dtype=np.float32), (4, 1)))
    assert "(copies of one file?)" in _empty_mask_hint(copies, None) and copies.passes == 1
    copies.data[3] = 0.0
    assert ": scan 4 is all zeros or holds no finite value" in _empty_mask_hint(copies, 0.8) and copies.passes == 2


def test_maps_given_apart_after_an_option_are_named_as_inputs(tmp_path, rng, capsys):
    """``group a b -o out c d``: argparse took c and d for unknown arguments; the message says they are inputs
    given apart from the others, in one line. An unknown option keeps argparse's words."""
    paths = list(map(str, _maps(tmp_path, rng, n=5)))
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as e:
        main(["group", *paths[:2], "-o", str(out), *paths[2:]])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{paths[2]} {paths[3]} {paths[4]} came after an option" in err, err
    assert "give all the inputs together" in err and not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["group", *paths, "-o", str(out), "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_design_and_contrast_errors(tmp_path, rng):
    paths = _maps(tmp_path, rng, n=6)
    write_vest(tmp_path / "d.mat", np.ones((6, 2)))
    write_vest(tmp_path / "d.con", np.array([[1.0, 0, 0]]), rows_key="NumContrasts")
    with pytest.raises(InputError, match="3 weights per contrast but the design has 2 columns"):
        SecondLevel(design=tmp_path / "d.mat", con=tmp_path / "d.con").fit(paths)
    with pytest.raises(InputError, match="give contrasts"):
        SecondLevel(design=(np.column_stack([np.ones(6), np.arange(6.0)]), ["a", "b"])).fit(paths)
    for bad in ("x", "0.7_5"):  # (Python's float read 0.7_5 as 0.75)
        (tmp_path / "bad.mat").write_text(f"/NumWaves 2\n/NumPoints 6\n/Matrix\n1 2\n3 {bad}\n")
        with pytest.raises(InputError, match="non-numeric value"):
            SecondLevel(design=tmp_path / "bad.mat").fit(paths)
    for count in ("-2", "two", "2.0"):  # (not a count: they were passed over; 2.0 was said "says 2.0 but ... 2")
        (tmp_path / "bad.mat").write_text(f"/NumWaves {count}\n/NumPoints 6\n/Matrix\n" + "1 2\n" * 6)
        with pytest.raises(InputError, match=f"/NumWaves says {count}, not a whole number .*has 2 columns"):
            SecondLevel(design=tmp_path / "bad.mat").fit(paths)
    (tmp_path / "bad.mat").write_text("/NumWaves 3\n/NumPoints 6\n/Matrix\n" + "1 2\n" * 6)
    with pytest.raises(InputError, match="/NumWaves says 3 but the /Matrix has 2 columns"):
        SecondLevel(design=tmp_path / "bad.mat").fit(paths)
    (tmp_path / "zero.con").write_text("/ContrastName1 mean\n/ContrastName2 none\n/NumWaves 2\n/Matrix\n1 0\n0 0\n")
    with pytest.raises(InputError, match=r"zero.con: contrast 2 \(none\) weighs no column"):  # (was "--contrast [0.")
        SecondLevel(design=tmp_path / "d.mat", con=tmp_path / "zero.con").fit(paths)
    (tmp_path / "huge.grp").write_text("/NumWaves 1\n/NumPoints 6\n/Matrix\n" + "1\n" * 3 + "1e20\n" * 3)
    with pytest.raises(InputError, match="a block label of 1e[+]20 is not an integer FSL reads"):  # (was -2^63)
        SecondLevel(design=tmp_path / "d.mat", contrasts=["c=c1"], grp=tmp_path / "huge.grp", permutations=9).fit(paths)
    write_vest(tmp_path / "g.grp", np.ones((5, 1)))
    with pytest.raises(InputError, match="one value per row of the design"):
        SecondLevel(grp=tmp_path / "g.grp", permutations=20).fit(paths)
    with pytest.raises(InputError, match="--grp with an OLS model gives the permutations' exchangeability blocks"):
        SecondLevel(grp=tmp_path / "g.grp").fit(paths)  # (read and not used: refused)
    # a table without its header line: the first row was read as names ("5 rows but 6 maps"); (a .txt of numbers
    # alone is a matrix, as Text2Vest takes it)
    (tmp_path / "headless.tsv").write_text("".join(f"1\t{40 + i}\n" for i in range(6)))
    with pytest.raises(InputError, match=r"headless.tsv: its first line \(1, 40\) holds numbers, where a table's"):
        SecondLevel(design=tmp_path / "headless.tsv").fit(paths)


@pytest.mark.usefixtures("no_reserve")
def test_group_glm_streamed_from_zarr(tmp_path, rng):
    """A parametric group model of data larger than max_memory: one pass keeping sums, equal to in memory."""
    zarr = pytest.importorskip("zarr")
    n, V = 300, 400
    age = rng.uniform(20, 80, n)
    Y = (rng.standard_normal((n, V)) + 0.02 * age[:, None]).astype(np.float32)
    Y[:, :3] = 0.0  # columns of zeros: outside the group mask
    z = zarr.open(str(tmp_path / "maps.zarr"), mode="w", shape=Y.shape, chunks=(64, V), dtype="f4")
    z[:] = Y
    table = tmp_path / "participants.tsv"
    table.write_text("age\n" + "".join(f"{a}\n" for a in age))
    kw = {"design": table, "contrasts": ["age=age"]}
    streamed = SecondLevel(max_memory="200K", **kw).fit(tmp_path / "maps.zarr", out_dir=tmp_path / "s")
    in_memory = SecondLevel(max_memory="1G", **kw).fit(tmp_path / "maps.zarr")
    npt.assert_array_equal(streamed.masker.mask, in_memory.masker.mask)
    assert streamed.masker.n_voxels == V - 3
    npt.assert_allclose(streamed.parametric["age"].t, in_memory.parametric["age"].t, rtol=1e-5)
    assert (tmp_path / "s" / "contrast-age_stat-t_statmap.npy").exists()
    # clusters need the maps in memory (no streaming): a cap that cannot hold them is refused, naming one that can
    with pytest.raises(InputError, match=r"`max_memory`='200K' cannot hold clusters .*; give at least 6\d\dK"):
        SecondLevel(max_memory="200K", cluster_threshold=3.0, **kw).fit(tmp_path / "maps.zarr")


def test_an_fsl_f_test_of_more_contrasts_than_its_rank_is_the_f_of_its_rank(tmp_path, rng):
    """A design.fts joining A > B, B > A and the mean of a two-group design: refused as "--contrast has 3 rows but
    the design has only 2 columns" (no --contrast was given). As FSL does, the F is that of the contrasts the
    others do not span: the F of A > B and the mean, F(2, n - 2)."""
    n = 10
    paths = _maps(tmp_path, rng, n=n)
    group = np.repeat([1.0, 0.0], n // 2)
    write_vest(tmp_path / "design.mat", np.column_stack([group, 1 - group]))
    write_vest(tmp_path / "design.con", np.array([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.5]]), rows_key="NumContrasts")
    write_vest(tmp_path / "design.fts", np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]), rows_key="NumContrasts")
    out = tmp_path / "out"
    files = [str(tmp_path / f) for f in ("design.mat", "design.con", "design.fts")]
    argv = ["group", *map(str, paths), "--design", files[0], "--con", files[1], "--fts", files[2], "-o", str(out)]
    assert main([*argv, "--quiet"]) == 0
    npt.assert_array_equal(
        _read(out / "contrast-F1_stat-F_statmap.nii.gz"), _read(out / "contrast-F2_stat-F_statmap.nii.gz")
    )
    record = json.loads((out / "model.json").read_text())
    assert record["contrasts"]["F1"]["dof"][0] == 2


def test_fsl_files_written_by_fsl_and_single_contrast_f_tests(tmp_path, rng):
    """FSL separates header keys from values with a tab; an F test of one contrast is two-sided."""
    n = 10
    (tmp_path / "d.mat").write_text(
        "/NumWaves\t2\n/NumPoints\t10\n/PPheights\t1 1\n\n/Matrix\n"
        + "".join(f"1\t{v:.4f}\n" for v in rng.standard_normal(n))
    )
    (tmp_path / "d.con").write_text(
        "/ContrastName1\tmean\n/ContrastName2\tslope\n/NumWaves\t2\n/NumContrasts\t2\n/Matrix\n1 0\n0 1\n"
    )
    (tmp_path / "d.fts").write_text("/NumWaves\t2\n/NumContrasts\t1\n/Matrix\n0 1\n")
    paths = _maps(tmp_path, rng, n=n)
    res = SecondLevel(design=tmp_path / "d.mat", con=tmp_path / "d.con", fts=tmp_path / "d.fts").fit(paths)
    assert set(res.parametric) == {"mean", "slope", "F1"}
    latin = (tmp_path / "d.con").read_bytes().replace(b"slope", b"pente \xe9tude")  # (a name in Latin-1: refused as
    (tmp_path / "latin.con").write_bytes(latin)  # "not a text file")
    assert [name for name, _ in read_contrasts(tmp_path / "latin.con")] == ["mean", "pente \xe9tude"]
    F, t = res.parametric["F1"], res.parametric["slope"]
    assert F.kind == "F" and F.dof[0] == 1
    npt.assert_allclose(F.F, t.t**2, rtol=1e-9)


def test_participants_tables_with_gaps_and_numeric_groups(tmp_path):
    table = tmp_path / "p.tsv"
    table.write_text("age\tgroup\n30\t1\nn/a\t2\n50\t1\n60\t2\n")
    with pytest.raises(InputError, match="column 'age' has missing values"):
        group_design(4, design=table)
    table.write_text("age\tgroup\n30\t1\n40\t2\n50\t1\n60\t2\n")
    assert group_design(4, design=table, two_sample="group").names == ("group_1", "group_2", "age")


def test_device_fit_without_an_intercept(rng):
    pytest.importorskip("array_api_strict")
    n = 40
    X = np.column_stack([np.arange(n) / n, np.sin(np.arange(n))])
    Y = (X @ rng.standard_normal((2, 200)) + 0.5 + rng.standard_normal((n, 200))).astype(np.float32)
    ref = fit(X, Y.astype(np.float64))
    dev = fit(X, Y, device="strict")
    npt.assert_allclose(dev.residual_variance, ref.residual_variance, rtol=1e-4)
    npt.assert_allclose(dev.contrast([1, 0]).t, ref.contrast([1, 0]).t, rtol=1e-3, atol=1e-4)


def test_a_mesh_that_is_not_a_surface_is_an_input_error(tmp_path, capsys):
    """A functional GIFTI given as --mesh (no vertices or triangles): one line and exit 2, not a crash."""
    paths = []
    for i in range(6):
        nib.save(
            nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.full(12, i + 1.0, dtype=np.float32))]),
            tmp_path / f"s{i}.func.gii",
        )
        paths.append(str(tmp_path / f"s{i}.func.gii"))
    assert main(["group", *paths, "--permutations", "20", "--tfce", "--mesh", paths[0], "-o", str(tmp_path / "o")]) == 2
    assert "not a GIFTI surface with vertices and triangles" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rft", [False, True])
@pytest.mark.parametrize("variances", [False, True])
def test_a_rank_deficient_group_design_warns_once(tmp_path, rng, variances, rft):
    """The group model checks its design's degrees of freedom (and RFT takes its factors) apart from the fit, which
    factorises the design too: one warning of the dependent columns, not one from each (the OLS path warned
    twice, and the mixed-effects path with RFT)."""
    from voxfit.exceptions import RankDeficiencyWarning
    from voxfit.inference.rft_fit import RFTOptions

    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\tage\tage2\n" + "".join(f"sub-{i:02d}\t{i}\t{2 * i}\n" for i in range(8)))
    paths = _maps(tmp_path, rng, n=8)
    kw = {"design": table, "contrasts": {"a": "age + 2*age2"}, "rft": RFTOptions() if rft else None}
    if variances:  # (the mixed-effects path: each subject's variance map, matched by sub-<label>)
        (tmp_path / "var").mkdir()
        for i in range(8):
            var = nib.Nifti1Image(rng.uniform(0.5, 2.0, GRID).astype(np.float32), AFFINE)
            nib.save(var, tmp_path / "var" / f"sub-{i:02d}.nii.gz")
        kw["variances"] = sorted((tmp_path / "var").iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SecondLevel(**kw).fit(paths)
    assert sum(issubclass(w.category, RankDeficiencyWarning) for w in caught) == 1


def test_fsl_contrast_names_that_clean_to_one_label_are_numbered(tmp_path, rng):
    """FSL's names are free text: ``a>b`` and ``a<b`` both keep only ``ab`` for their file names; they were
    refused as repeated names, and are now numbered (each rename said), past a name another contrast has as it
    is (``ab2``: its maps stay its own)."""
    paths = _maps(tmp_path, rng, n=6)
    X = np.column_stack([np.repeat([1.0, 0.0], 3), np.repeat([0.0, 1.0], 3)])
    write_vest(tmp_path / "design.mat", X)
    con = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    names = {"ContrastName1": "a>b", "ContrastName2": "a<b", "ContrastName3": "ab2"}  # (ab2: this one's)
    write_vest(tmp_path / "design.con", con, names, rows_key="NumContrasts")
    with pytest.warns(UserWarning, match="'a<b' of the .con file is named 'ab3'"):
        fit = SecondLevel(design=tmp_path / "design.mat", con=tmp_path / "design.con").fit(paths)
    assert list(fit.parametric) == ["ab", "ab3", "ab2"]
    npt.assert_allclose(fit.parametric["ab3"].t, -fit.parametric["ab"].t, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("kind", ["gifti", "cifti"])
def test_a_file_of_several_maps_among_the_maps_is_refused(tmp_path, rng, capsys, kind):
    """Several files are one map per subject: a GIFTI or CIFTI file of two maps among them was taken as two rows
    (12 subjects fitted as 24, dof 23), as a 4-D NIfTI among 3-D ones is refused; one file of all the maps is a
    group."""
    from nibabel.gifti import GiftiDataArray, GiftiImage

    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(50), 50, name="CortexLeft")

    def save(path, maps):
        if kind == "gifti":
            nib.save(GiftiImage(darrays=[GiftiDataArray(m) for m in maps]), path)
        else:
            names = [f"m{k}" for k in range(len(maps))]
            nib.save(nib.Cifti2Image(maps, header=(nib.cifti2.ScalarAxis(names), models)), path)

    ext = ".func.gii" if kind == "gifti" else ".dscalar.nii"
    paths = []
    for s in range(1, 7):
        paths.append(tmp_path / f"sub-{s:02d}{ext}")
        save(paths[-1], (rng.standard_normal((2 if s == 3 else 1, 50)) + 0.3).astype(np.float32))
    code = main(["group", *map(str, paths), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"sub-03{ext} holds 2 maps" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    save(tmp_path / f"all{ext}", (rng.standard_normal((6, 50)) + 0.3).astype(np.float32))
    assert main(["group", str(tmp_path / f"all{ext}"), "-o", str(tmp_path / "all"), "--quiet"]) == 0


@pytest.mark.parametrize("cell", ["30,5", "thirty", "31 y"])
def test_a_covariate_with_a_word_among_its_numbers_is_refused_not_dropped(tmp_path, rng, capsys, cell):
    """A participants table whose age column holds one cell that is no number (a decimal comma, a word) had the
    whole column left out of the design as text, with a note; it is refused, naming the column, row and subject."""
    paths = _maps(tmp_path, rng, n=8)
    rows = ["participant_id\tage\tgroup\tiq"]
    rows += [f"sub-{s:02d}\t{cell if s == 3 else 20 + s}\t{'AB'[s % 2]}\t{100 + 3 * s % 7}" for s in range(8)]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["group", *map(str, paths), "--design", str(tmp_path / "p.tsv"), "--contrast", "iq=iq", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"column 'age', participant_id sub-03: '{cell}' is not a number" in err and "--covariates" in err


@pytest.mark.parametrize("options", [["--two-sample", "group", "--contrast", "d=A - B"], []])
def test_a_covariate_with_decimal_commas_in_every_row_is_refused_not_dropped(tmp_path, rng, capsys, options):
    """A table written in a locale of decimal commas (every age "30,5"): the column was left out of the design as
    text with a note (exit 0), or, with no other numeric column, refused as holding none."""
    paths = _maps(tmp_path, rng, n=8)
    rows = ["participant_id\tgroup\tage"] + [f"sub-{s:02d}\t{'AB'[s % 2]}\t{30 + s},5" for s in range(8)]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["group", *map(str, paths), "--design", str(tmp_path / "p.tsv"), *options, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert (
        "column 'age', participant_id sub-00: '30,5' and the column's other values are numbers written with commas"
        in err
    )


def test_a_column_of_n_a_only_is_left_out_as_before(tmp_path, rng, capsys):
    """A column n/a in every row (handedness never asked) is left out with a note; the decimal-comma check took its
    first cell of none (IndexError, exit 1)."""
    paths = _maps(tmp_path, rng, n=8)
    rows = ["participant_id\tage\thandedness"] + [f"sub-{s:02d}\t{30 + s}\tn/a" for s in range(8)]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert (
        main(["group", *map(str, paths), "--design", str(tmp_path / "p.tsv"), "--contrast", "a=age", "-o", str(out)])
        == 0
    )
    assert "text columns left out of the design: handedness" in capsys.readouterr().err


def test_a_contrast_of_a_text_column_says_it_is_text(tmp_path, rng, capsys):
    """A contrast naming a text column of the table (sex, left out of the design) said "unknown column 'sex'", of a
    column the table has."""
    paths = _maps(tmp_path, rng, n=8)
    rows = ["participant_id\tsex\tage"] + [f"sub-{s:02d}\t{'FM'[s % 2]}\t{30 + s}" for s in range(8)]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["group", *map(str, paths), "--design", str(tmp_path / "p.tsv"), "--contrast", "s=sex", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "contrast 's' names 'sex', a text column of" in err and "--two-sample sex" in err


def test_an_ols_group_with_a_mask_says_what_it_could_not_fit(tmp_path, rng, capsys):
    """With --mask, a voxel NaN in some map is left NaN and counted in a note (the summary and model.json's design
    notes); a map NaN everywhere, which left every map NaN with exit 0 (a hostile tester's finding), is refused in
    one line naming it, as the mixed model refuses maps it cannot fit."""
    paths = _maps(tmp_path, rng, n=8)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(GRID, np.uint8), AFFINE), mask)
    data = _read(paths[3]).copy()
    data[4, 4, 4] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), paths[3])
    out = tmp_path / "partly"
    assert main(["group", *map(str, paths), "--mask", str(mask), "-o", str(out)]) == 0
    note = "1 voxel(s) not fitted: NaN or infinite in some map (their maps are NaN)"
    assert note in capsys.readouterr().err
    assert note in json.loads((out / "model.json").read_text())["design"]["notes"]
    t = _read(out / "contrast-intercept_stat-t_statmap.nii.gz")
    assert np.isnan(t[4, 4, 4]) and np.isfinite(t[1:, :, :]).sum() == t[1:].size - 1
    # every map, those of permutations too (TFCE was 0 and the cluster p 1 there: "fitted, nothing found"; a tester's)
    out = tmp_path / "permuted"
    argv = ["--permutations", "50", "--tfce", "--cluster-threshold", "2", "--quiet"]
    assert main(["group", *map(str, paths), "--mask", str(mask), *argv, "-o", str(out)]) == 0
    maps = sorted(out.glob("contrast-*_statmap.nii.gz"))
    assert len(maps) > 15 and [m.name for m in maps if not np.isnan(_read(m)[4, 4, 4])] == []
    nib.save(nib.Nifti1Image(np.full(GRID, np.nan, np.float32), AFFINE), paths[5])
    out = tmp_path / "none"
    assert main(["group", *map(str, paths), "--mask", str(mask), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no voxel can be fitted" in err and f"{paths[5]} holds none" in err, err
    assert not out.exists()


def test_a_paired_ols_group_that_fits_nothing_names_the_pair(tmp_path, rng, capsys):
    """--paired OLS fits the A - B differences: a B map NaN everywhere under --mask is named with its A map (the
    differences' row numbers are not the maps' as given)."""
    a = _maps(tmp_path, rng, n=5, prefix="a")
    b = _maps(tmp_path, rng, n=5, prefix="b")
    nib.save(nib.Nifti1Image(np.full(GRID, np.nan, np.float32), AFFINE), b[2])
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(GRID, np.uint8), AFFINE), mask)
    out = tmp_path / "g"
    assert main(["group", *map(str, a + b), "--paired", "--mask", str(mask), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the pair {a[2]} and {b[2]} holds none" in err and not out.exists(), err


@pytest.mark.usefixtures("no_reserve")
def test_voxels_a_mask_holds_that_some_map_leaves_nan_are_counted_alike_streamed_or_not(tmp_path, rng):
    """Under --mask, a voxel NaN or infinite in some map is counted in the same note whether the maps are held in
    memory or streamed under --max-memory (whose pass leaves such voxels out of its mask: no note before)."""
    zarr = pytest.importorskip("zarr")
    n, V = 300, 400
    Y = rng.standard_normal((n, V)).astype(np.float32)
    Y[7, 11], Y[9, 12] = np.nan, np.inf
    z = zarr.open(str(tmp_path / "maps.zarr"), mode="w", shape=Y.shape, chunks=(64, V), dtype="f4")
    z[:] = Y
    notes = []
    for cap in ("200K", "1G"):
        fitted = SecondLevel(max_memory=cap, mask=np.ones(V, bool)).fit(tmp_path / "maps.zarr")
        notes.append([note for note in fitted.notes if "not fitted" in note])
    assert notes[0] == notes[1] == ["2 voxel(s) not fitted: NaN or infinite in some map (their maps are NaN)"]


def test_a_group_of_one_map_is_refused_as_such(tmp_path, rng, capsys):
    """One 3-D map, or a 4-D file of one volume: refused saying a group takes several maps, one per subject (the
    messages spoke of scans and runs: "a 3-D image (one scan)", "the run has one scan")."""
    (one,) = _maps(tmp_path, rng, n=1)
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(_read(one)[..., None], AFFINE), single)
    for path in (one, single):
        assert main(["group", str(path), "-o", str(tmp_path / "g")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path} holds one map; a group model takes several maps" in err, err
    with pytest.raises(InputError, match="holds one map"):
        SecondLevel().fit(one)


def test_a_cluster_threshold_that_looks_like_a_p_value_is_said_to_be_a_statistic(tmp_path):
    """SPM users give a cluster-forming p (0.001): read as t > 0.001, it formed one cluster of half the volume
    without a word (a corrected-inference tester's); now said, with the t such a p would be."""
    from voxfit import SecondLevel

    paths = _maps(tmp_path, np.random.default_rng(0), n=8, effect=1.0)
    with pytest.warns(DesignWarning, match=r"`cluster_threshold` 0\.001 forms clusters of t \(or F\) above 0\.001"):
        SecondLevel(permutations=50, cluster_threshold=0.001, seed=1).fit(paths)


def test_a_con_file_over_a_design_whose_intercept_voxfit_added_is_refused(tmp_path, rng, capsys):
    """A table of covariates alone (age): voxfit adds the intercept as the last column, and an FSL habit's
    design.con, the mean first ([1 0]), silently tested age (a note said the column was added). Refused, saying
    where the intercept is; a table holding its own column of 1s where the .con expects it is fitted."""
    paths = _maps(tmp_path, rng, n=8)
    age = rng.uniform(20, 60, 8)
    ids = [p.name.split(".")[0] for p in paths]
    (tmp_path / "covariates.tsv").write_text(
        "participant_id\tage\n" + "".join(f"{i}\t{a:.2f}\n" for i, a in zip(ids, age))
    )
    (tmp_path / "own.tsv").write_text(
        "participant_id\tmean\tage\n" + "".join(f"{i}\t1\t{a:.2f}\n" for i, a in zip(ids, age))
    )
    write_vest(tmp_path / "design.con", np.array([[1.0, 0.0]]), {"ContrastName1": "mean"}, rows_key="NumContrasts")
    argv = ["group", *map(str, paths), "--con", str(tmp_path / "design.con"), "--quiet", "-o"]
    assert main([*argv, str(tmp_path / "o1"), "--design", str(tmp_path / "covariates.tsv")]) == 2
    err = capsys.readouterr().err
    assert "voxfit added the last of them, the intercept (age, intercept)" in err, err
    assert main([*argv, str(tmp_path / "o2"), "--design", str(tmp_path / "own.tsv")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "model.json").read_text())["design"]["columns"] == ["mean", "age"]


def test_a_con_contrast_named_like_an_f_test_leaves_the_f_test_another_name(tmp_path, rng):
    """A design.con contrast named F1 was refused as repeating the first F test's automatic name ("give each a
    distinct name"), which the user cannot give: the F test is named fts1 then (fts1_2 where that is taken too)."""
    paths = _maps(tmp_path, rng, n=8)
    write_vest(tmp_path / "design.mat", np.ones((8, 1)))
    names = {"ContrastName1": "F1", "ContrastName2": "fts1"}  # (the first choice's too)
    write_vest(tmp_path / "design.con", np.ones((2, 1)), names, rows_key="NumContrasts")
    write_vest(tmp_path / "design.fts", np.array([[1.0, 0.0]]), rows_key="NumContrasts")
    files = [("--design", "design.mat"), ("--con", "design.con"), ("--fts", "design.fts")]
    args = [x for option, name in files for x in (option, str(tmp_path / name))]
    assert main(["group", *map(str, paths), *args, "-o", str(tmp_path / "o"), "--quiet"]) == 0
    assert (tmp_path / "o" / "contrast-F1_stat-t_statmap.nii.gz").exists()
    assert (tmp_path / "o" / "contrast-fts1_2_stat-F_statmap.nii.gz").exists()


def test_con_contrast_names_that_differ_only_in_case_are_kept_apart(tmp_path, rng, capsys):
    """contrast-Go_* and contrast-go_* are one file on macOS's and Windows' file systems: a .con's Go and go, a
    .con's f1 beside the F test F1, and a .con's Go beside --contrast GO each wrote both, exit 0, where two
    --contrast names differing in case are refused (a reviewer's). The .con's are numbered apart, said; a
    --contrast beside a .con contrast is refused in one line."""
    paths = list(map(str, _maps(tmp_path, rng, n=8)))
    write_vest(tmp_path / "design.mat", np.ones((8, 1)))
    write_vest(
        tmp_path / "go.con", np.array([[1.0], [-1.0]]), {"ContrastName1": "Go", "ContrastName2": "go"}, "NumContrasts"
    )
    write_vest(
        tmp_path / "f.con", np.array([[1.0], [-1.0]]), {"ContrastName1": "f1", "ContrastName2": "other"}, "NumContrasts"
    )
    write_vest(tmp_path / "design.fts", np.array([[1.0, 0.0]]), rows_key="NumContrasts")
    design = ["--design", str(tmp_path / "design.mat")]
    assert main(["group", *paths, *design, "--con", str(tmp_path / "go.con"), "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "contrast 'go' of the .con file is named 'go2' (another of its contrasts is named so" in err, err
    assert sorted(p.name for p in (tmp_path / "a").glob("*_stat-t_*")) == [
        "contrast-Go_stat-t_statmap.nii.gz",
        "contrast-go2_stat-t_statmap.nii.gz",
    ]
    fts = ["--con", str(tmp_path / "f.con"), "--fts", str(tmp_path / "design.fts")]
    assert main(["group", *paths, *design, *fts, "-o", str(tmp_path / "f"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "f").glob("*_stat-p_statmap*")) == [
        "contrast-f1_stat-p_statmap.nii.gz",
        "contrast-fts1_stat-p_statmap.nii.gz",
        "contrast-other_stat-p_statmap.nii.gz",
    ]
    both = ["--con", str(tmp_path / "go.con"), "--contrast", "GO=intercept"]
    assert main(["group", *paths, *design, *both, "-o", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contrast names repeat, or differ only in case (GO, Go, go2)" in err, err
    assert not (tmp_path / "b").exists()


def test_maps_on_different_grids_name_the_odd_one_even_where_it_is_first(tmp_path, rng, capsys):
    """Maps of several 3-D files were each checked against the first: with the first the odd grid, a healthy
    second map was named. The odd map is named, against the grid most share."""
    paths = _maps(tmp_path, rng, n=4)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), AFFINE), paths[0])
    assert main(["group", *map(str, paths), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{paths[0]} has" in err and str(paths[1]) not in err, err


@pytest.mark.parametrize("permutations", [500, 5000])
def test_the_cap_a_permutation_refusal_names_holds_the_permutations(tmp_path, permutations):
    """A refused group with --permutations named a cap ("give at least 342M") under which its table's own check
    then refused it ("would take 348 MiB, more than 342M"), and that one, rounding down, a cap under which it was
    refused again ("348 MiB, more than 348M"; a tester's). The cap named now holds the run."""
    rng = np.random.default_rng(11)
    np.save(tmp_path / "m.npy", (rng.standard_normal((40, 150_000)) + 0.3).astype(np.float32))
    model = dict(permutations=permutations, seed=1)
    with pytest.raises(InputError, match="give at least") as refused:
        SecondLevel(**model, max_memory="300M").fit(str(tmp_path / "m.npy"))
    cap = str(refused.value).split("give at least ")[1].split(",")[0]
    fit = SecondLevel(**model, max_memory=cap).fit(str(tmp_path / "m.npy"))
    assert fit.permutation
