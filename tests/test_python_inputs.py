"""The Python API takes what users hold: nibabel images and lists of them, arrays, DataFrames; the same numbers
as from files, and one clear InputError for anything else, before anything is written."""

import json

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit.design import make_design, read_confounds
from voxfit.exceptions import DataTypeError, DesignWarning, InputError
from voxfit.models import SecondLevel, fit_runs

from .imaging import AFFINE, SHAPE, volume_data, write_nifti

N = 40
EVENTS = pd.DataFrame(
    {
        "onset": [4.0, 30.0, 50.0, 61.5],
        "duration": [6.0, 6.0, 6.0, 0.0],
        "trial_type": ["faces", "houses", "faces", "houses"],
        "modulation": [1.0, np.nan, 2.0, 1.0],
    }
)


def _design(n=N):
    return pd.DataFrame({"slope": np.linspace(-1, 1, n), "constant": np.ones(n)})


def _maps(folder):
    """{file name: (values, affine, shape)} of every NIfTI map in `folder`."""
    out = {}
    for p in sorted(folder.glob("*.nii.gz")):
        img = nib.load(p)
        out[p.name] = (np.asarray(img.dataobj), img.affine, img.shape)
    return out


def _assert_same_maps(a, b):
    maps_a, maps_b = _maps(a), _maps(b)
    assert maps_a.keys() == maps_b.keys() and len(maps_a) > 5
    for name, (values, affine, shape) in maps_a.items():
        npt.assert_array_equal(values, maps_b[name][0], err_msg=name)
        npt.assert_array_equal(affine, maps_b[name][1])
        assert shape == maps_b[name][2] and shape[:3] == SHAPE  # (4-D: the AR coefficients of the fMRI default)


def test_a_4d_image_fits_as_its_file(tmp_path, rng):
    data = volume_data(rng, n=N)
    path = write_nifti(tmp_path / "bold.nii.gz", data)
    img = nib.Nifti1Image(data, AFFINE)
    from_file = voxfit.fit_images(path, _design(), {"up": "slope"}, out_dir=tmp_path / "file")
    in_memory = voxfit.fit_images(img, _design(), {"up": "slope"}, out_dir=tmp_path / "memory")
    npt.assert_array_equal(in_memory.fit.betas, from_file.fit.betas)
    _assert_same_maps(tmp_path / "file", tmp_path / "memory")
    record = json.loads((tmp_path / "memory" / "model.json").read_text())["inputs"]
    assert len(record) == 1 and "path" not in record[0]
    assert record[0]["source"] == "in-memory nibabel image" and record[0]["shape"] == [*SHAPE, N]
    again = voxfit.fit_images(nib.Nifti1Image(data.copy(), AFFINE), _design(), {"up": "slope"}, out_dir=tmp_path / "m2")
    assert again.files and json.loads((tmp_path / "m2" / "model.json").read_text())["inputs"] == record
    pytest.importorskip("matplotlib")
    page = voxfit.write_report(tmp_path / "memory").read_text()
    assert "in-memory nibabel image (Nifti1Image, shape (6, 5, 4, 40))" in page and record[0]["blake3"] in page
    # an image loaded from a file is read from that file, and recorded by its path
    loaded = voxfit.fit_images(nib.load(path), _design(), {"up": "slope"}, out_dir=tmp_path / "loaded")
    assert json.loads((tmp_path / "loaded" / "model.json").read_text())["inputs"][0]["path"] == str(path.resolve())
    npt.assert_array_equal(loaded.fit.betas, from_file.fit.betas)


def test_a_list_of_3d_images_fits_as_the_4d_file(tmp_path, rng):
    data = volume_data(rng, n=N)
    path = write_nifti(tmp_path / "bold.nii.gz", data)
    scans = [nib.Nifti1Image(data[..., i], AFFINE) for i in range(N)]
    voxfit.fit_images(path, _design(), ["up=slope"], out_dir=tmp_path / "file")
    voxfit.fit_images(scans, _design(), ["up=slope"], out_dir=tmp_path / "list")
    _assert_same_maps(tmp_path / "file", tmp_path / "list")
    assert len(json.loads((tmp_path / "list" / "model.json").read_text())["inputs"]) == N


def test_arrays_and_image_masks(tmp_path, rng):
    Y = rng.standard_normal((N, 30))
    np.save(tmp_path / "y.npy", Y)
    a = voxfit.fit_images(Y, _design(), {"up": "slope"}, out_dir=tmp_path / "array")
    b = voxfit.fit_images(tmp_path / "y.npy", _design(), {"up": "slope"})
    npt.assert_array_equal(a.fit.betas, b.fit.betas)
    assert (tmp_path / "array" / "contrast-up_stat-t_statmap.npy").exists()
    # a mask as a nibabel image selects what its file selects
    data = volume_data(rng, n=N)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 1:4, 1:3] = 1
    m_path = write_nifti(tmp_path / "mask.nii", mask)
    by_file = voxfit.fit_images(nib.Nifti1Image(data, AFFINE), _design(), {"up": "slope"}, mask=m_path)
    by_image = voxfit.fit_images(
        nib.Nifti1Image(data, AFFINE),
        _design(),
        {"up": "slope"},
        mask=nib.Nifti1Image(mask, AFFINE),
        out_dir=tmp_path / "masked",
    )
    npt.assert_array_equal(by_image.masker.mask, by_file.masker.mask)
    npt.assert_array_equal(by_image.fit.betas, by_file.fit.betas)
    source = json.loads((tmp_path / "masked" / "model.json").read_text())["mask"]["source"]
    assert source.startswith("in-memory nibabel image") and "\n" not in source


def test_dataframe_events_and_confounds_give_the_files_design(tmp_path, rng):
    EVENTS.to_csv(tmp_path / "events.tsv", sep="\t", index=False, na_rep="n/a")
    confounds = pd.DataFrame(
        {
            "trans_x": [np.nan, *rng.standard_normal(N - 1)],
            "trans_y": rng.standard_normal(N),
            "csf": rng.standard_normal(N),
            "framewise_displacement": [np.nan, *rng.random(N - 1)],
        }
    )
    confounds.to_csv(tmp_path / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
    model = voxfit.FirstLevel(tr=2.0, hrf="spm+derivative")
    from_files = model.design(tmp_path / "events.tsv", N, tmp_path / "confounds.tsv", "trans_*,framewise*")
    from_frames = model.design(EVENTS, N, confounds, ["trans_*", "framewise*"])
    assert from_frames.names == from_files.names and "trans_y" in from_frames.names
    npt.assert_array_equal(from_frames.X, from_files.X)
    npt.assert_array_equal(make_design(EVENTS, 2.0, N).X, make_design(tmp_path / "events.tsv", 2.0, N).X)
    values, names = read_confounds(confounds, "framewise_displacement", N)
    assert names == ["framewise_displacement"] and values[0, 0] == 0.0  # leading n/a: 0, as in a file
    gap = confounds.copy()
    gap.loc[5, "csf"] = np.nan
    with pytest.raises(InputError, match="confounds DataFrame: column 'csf' has a missing value at row 6"):
        read_confounds(gap, "csf", N)
    with pytest.raises(InputError, match="no column matches 'rot_\\*'"):
        read_confounds(confounds, "rot_*", N)
    with pytest.raises(InputError, match="events DataFrame has no 'onset' column"):
        make_design(EVENTS.drop(columns="onset"), 2.0, N)
    # and the fit: DataFrames and an image give the files' maps
    data = volume_data(rng, n=N)
    bold = write_nifti(tmp_path / "bold.nii.gz", data)
    model.fit(
        bold,
        tmp_path / "events.tsv",
        {"fh": "faces - houses"},
        confounds=tmp_path / "confounds.tsv",
        confounds_columns="trans_*",
        out_dir=tmp_path / "files",
    )
    model.fit(
        nib.Nifti1Image(data, AFFINE),
        EVENTS,
        {"fh": "faces - houses"},
        confounds=confounds,
        confounds_columns="trans_*",
        out_dir=tmp_path / "frames",
    )
    _assert_same_maps(tmp_path / "files", tmp_path / "frames")


def test_first_level_passes_mask_threshold_scheduler_and_device(tmp_path, rng, monkeypatch):
    data = volume_data(rng, n=N)
    data[3, 2, 1, :] = 20 + rng.standard_normal(N)  # varying but dim: dropped by SPM's 0.8 threshold
    bold = write_nifti(tmp_path / "bold.nii", data)
    res = voxfit.FirstLevel(tr=2.0, mask_threshold=0.8).fit(bold, EVENTS, {"f": "faces"}, out_dir=tmp_path / "o")
    assert not res.masker.mask[np.ravel_multi_index((3, 2, 1), SHAPE, order="F")]
    assert json.loads((tmp_path / "o" / "model.json").read_text())["mask"]["threshold"] == 0.8
    seen = {}
    monkeypatch.setattr("voxfit.models.first_level.fit_images", lambda *a, **kw: seen.update(kw))
    voxfit.FirstLevel(tr=2.0, scheduler="tcp://x:1", device="cuda", mask_threshold=0.5).fit(
        bold, EVENTS, {"f": "faces"}
    )
    assert (seen["scheduler"], seen["device"], seen["mask_threshold"]) == ("tcp://x:1", "cuda", 0.5)


def test_a_group_of_gifti_images_in_memory_fits_as_their_files(tmp_path):
    """SecondLevel.fit of GiftiImages in memory failed with AttributeError ('GiftiImage' object has no attribute
    'shape', naming the maps for model.json; a surface tester's): it fits, as the same maps saved as files."""
    rng = np.random.default_rng(0)
    maps = [
        nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray((rng.standard_normal(60) + 1).astype(np.float32))])
        for _ in range(6)
    ]
    in_memory = voxfit.SecondLevel().fit(maps, tmp_path / "memory")  # (before they are saved: no file name then)
    paths = []
    for k, m in enumerate(maps):
        paths.append(tmp_path / f"sub-{k:02d}_effect.func.gii")
        nib.save(m, paths[-1])
    from_files = voxfit.SecondLevel().fit(paths, tmp_path / "files")
    (label,) = from_files.parametric
    np.testing.assert_array_equal(in_memory.parametric[label].stat, from_files.parametric[label].stat)


def test_group_and_runs_from_images(tmp_path, rng):
    maps = [(5 + rng.standard_normal(SHAPE)).astype(np.float32) for _ in range(8)]
    paths = [write_nifti(tmp_path / f"sub-{i}.nii", m) for i, m in enumerate(maps)]
    images = [nib.Nifti1Image(m, AFFINE) for m in maps]
    model = voxfit.SecondLevel(design=pd.DataFrame({"age": np.arange(8.0)}), contrasts=["age=age"])
    with pytest.warns(DesignWarning, match="matched to the maps by position"):  # the files carry sub-<label>s
        model.fit(paths, tmp_path / "files")
    res = model.fit(images, tmp_path / "images")
    _assert_same_maps(tmp_path / "files", tmp_path / "images")
    assert res.names == ("age", "intercept")
    stacked = voxfit.SecondLevel().fit(nib.Nifti1Image(np.stack(maps, axis=-1), AFFINE))  # one 4-D image
    npt.assert_array_equal(stacked.parametric["intercept"].t, voxfit.SecondLevel().fit(paths).parametric["intercept"].t)
    record = json.loads((tmp_path / "images" / "model.json").read_text())["inputs"]
    assert len(record) == 8 and all(r["source"] == "in-memory nibabel image" for r in record)
    # runs: a 4-D image and a file, each with its design
    runs = [volume_data(rng, n=N) for _ in range(2)]
    run_file = write_nifti(tmp_path / "run2.nii.gz", runs[1])
    designs = [make_design(EVENTS, 2.0, N), make_design(EVENTS.iloc[:3], 2.0, N)]
    both = fit_runs(
        [nib.Nifti1Image(runs[0], AFFINE), run_file], designs, {"fh": "faces - houses"}, out_dir=tmp_path / "r"
    )
    files = fit_runs([write_nifti(tmp_path / "run1.nii", runs[0]), run_file], designs, {"fh": "faces - houses"})
    npt.assert_array_equal(both.combined["fh"].t, files.combined["fh"].t)
    assert "in-memory" in json.loads((tmp_path / "r" / "model.json").read_text())["runs"][0]["inputs"][0]["source"]


def _bold(tmp_path):
    return write_nifti(tmp_path / "bold.nii", volume_data(np.random.default_rng(0), n=N))


# (entry point, argument, value, expected name and type in the message)
WRONG = [
    ("load", "paths", {"a": 1}, "`paths` .*; got dict"),
    ("load", "paths", 3, "`paths` .*; got int"),
    ("load", "mask", [1, 2], "`mask` must be a path to an image, a nibabel image or a boolean array; got list"),
    ("fit_images", "inputs", {"bold": 1}, "`inputs` must be a path to an image file .*; got dict"),
    ("fit_images", "inputs", "mixed", "`inputs` must be .*; got a list of pathlib.PosixPath, nibabel.Nifti1Image"),
    ("fit_images", "inputs", np.zeros((2, 3, 4)), "`inputs` as a numpy array must be 2-D"),
    ("fit_images", "design", {"a": [1, 2]}, "`design` must be a path to a design TSV/CSV .*; got dict"),
    ("fit_images", "design", 7, "`design` must be .*; got int"),
    ("fit_images", "mask", 1.5, "`mask` must be .*; got float"),
    ("first_level", "bold", 12, "`bold` must be a path to an image file .*; got int"),
    ("first_level", "events", [1, 2], "`events` must be a path to a BIDS events.tsv, a pandas DataFrame .*; got list"),
    ("first_level", "events", {"onset": [1.0]}, "`events` must be .*; got a dict that is not"),
    ("first_level", "events", np.zeros((3, 3)), "`events` must be .*; got numpy.ndarray"),
    (
        "first_level",
        "confounds",
        np.zeros((N, 2)),
        "`confounds` must be a path to a confounds TSV or a pandas DataFrame; got numpy.ndarray",
    ),
    ("first_level", "confounds", {"x": 1}, "`confounds` must be .*; got dict"),
    ("first_level", "mask", {"m": 1}, "`mask` must be .*; got dict"),
    ("fit_runs", "inputs", "bold", "`inputs` must be a list with one entry per run; got str"),
    ("fit_runs", "inputs", [None, None], "`inputs\\[0\\]` must be .*; got NoneType"),
    ("fit_runs", "designs", [{"a": 1}, {"a": 1}], "`designs\\[0\\]` must be .*; got dict"),
    ("second_level", "inputs", 5, "`inputs` must be .*; got int"),
    ("second_level", "inputs", [1, 2], "`inputs` must be .*; got a list of int"),
    ("second_level", "design", {"age": [1, 2]}, "`design` must be None \\(one-sample\\), .*; got dict"),
    ("second_level", "mask", 3, "`mask` must be .*; got int"),
]


@pytest.mark.parametrize("entry,argument,value,message", WRONG)
def test_wrong_types_are_one_line_input_errors_and_write_nothing(entry, argument, value, message, tmp_path):
    bold = _bold(tmp_path)
    if isinstance(value, str) and value == "mixed":
        value = [bold, nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)]
    out = tmp_path / "out"
    n = N if entry != "second_level" else 8
    args = {
        "paths": bold,
        "inputs": bold,
        "bold": bold,
        "design": _design(n),
        "events": EVENTS,
        "mask": None,
        "confounds": None,
    }
    args[argument] = value
    with pytest.raises(InputError, match=message) as err:
        if entry == "load":
            voxfit.load(args["paths"], args["mask"])
        elif entry == "fit_images":
            voxfit.fit_images(args["inputs"], args["design"], {"up": "slope"}, mask=args["mask"], out_dir=out)
        elif entry == "first_level":
            voxfit.FirstLevel(tr=2.0).fit(
                args["bold"],
                args["events"],
                {"f": "faces"},
                confounds=args["confounds"],
                mask=args["mask"],
                out_dir=out,
            )
        elif entry == "fit_runs":
            inputs = value if argument == "inputs" else [bold, bold]
            designs = value if argument == "designs" else [_design(), _design()]
            voxfit.fit_runs(inputs, designs, {"up": "slope"}, out_dir=out)
        else:
            maps = [write_nifti(tmp_path / f"m{i}.nii", np.full(SHAPE, i + 1.0, np.float32)) for i in range(n)]
            inputs = args["inputs"] if argument == "inputs" else maps
            design = value if argument == "design" else None
            voxfit.SecondLevel(design=design, mask=args["mask"]).fit(inputs, out)
    text = str(err.value)
    assert "\n" not in text and text.endswith(".") and len(text) < 400
    assert not out.exists()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda X, Y: voxfit.fit({"a": [1.0]}, Y), "`X` must be a 2-D .* or a pandas DataFrame; got dict"),
        (lambda X, Y: voxfit.fit(None, Y), "`X` must be .*; got NoneType"),
        (
            lambda X, Y: voxfit.fit(X, "bold.nii.gz"),
            "`Y` must be an \\(n_scans, n_voxels\\) array .*voxfit.fit_images\\); got str",
        ),
        (lambda X, Y: voxfit.fit(X, {"v": Y}), "`Y` must be .*; got dict"),
        (lambda X, Y: voxfit.fit_ar(X, 3, 1, {"c": [1, 0]}), "`Y` must be .*; got int"),
        (
            lambda X, Y: voxfit.inference.permutation_test(X, {"a": 1}, [1, 0]),
            "`Y` must be an \\(n, V\\) array .*; got dict",
        ),
    ],
)
def test_array_entry_points_name_the_type_they_refuse(call, message):
    X = np.column_stack([np.arange(6.0), np.ones(6)])
    with pytest.raises(InputError, match=message):
        call(X, np.arange(18.0).reshape(6, 3) ** 1.5)


_MASKED = np.ma.masked_array(np.arange(18.0).reshape(6, 3), mask=np.eye(6, 3, dtype=bool))


@pytest.mark.parametrize(
    "call,message",
    [
        # numpy masked arrays: their data were used without their masks (a hidden 1e6 fitted)
        (lambda X, Y: voxfit.fit(X, _MASKED), "`Y` is a numpy masked array"),
        (lambda X, Y: voxfit.fit(np.ma.masked_array(X), Y), "`X` is a numpy masked array"),
        (lambda X, Y: voxfit.fit(X, Y).contrast(np.ma.masked_array([1.0, 0.0])), "plain array; got a MaskedArray"),
        (lambda X, Y: voxfit.mixed_effects(X, _MASKED, Y), "`effects` is a numpy masked array"),
        (lambda X, Y: voxfit.inference.permutation_test(X, _MASKED, [1, 0]), "`Y` is a numpy masked array"),
        (lambda X, Y: voxfit.inference.fdr(np.ma.masked_array([0.1, 0.2])), "`p` is a numpy masked array"),
        # other types that failed deep inside or were taken in part
        (lambda X, Y: voxfit.fit(X, Y).contrast(np.array([1.0 + 1j, 0.0])), "real weights .* of complex128"),
        (lambda X, Y: voxfit.inference.permutation_test(X, Y + 1j, [1, 0]), "must be numeric .* complex128"),
        (lambda X, Y: voxfit.inference.permutation_test(X, Y.astype(str), [1, 0]), "must be numeric"),
        (lambda X, Y: voxfit.fit(X, [[1.0, 2.0]] * 5 + [[1.0]]), "its rows have different lengths"),
        (lambda X, Y: voxfit.fit(X, Y, names=3), "`names` must be a sequence of 2 column names; got 3"),
        (lambda X, Y: voxfit.fit(X, Y, names="ab"), "`names` must be a sequence"),
        (lambda X, Y: voxfit.fit_ar(X, Y, 1, ["c=x0"]), "`contrasts` must be a dict"),
        (lambda X, Y: voxfit.inference.permutation_test(X, Y, [1, 0], seed=-1), "`seed` must be a non-negative"),
        (lambda X, Y: voxfit.inference.permutation_test(X, Y, [1, 0], seed=1.5), "`seed` must be a non-negative"),
        (
            lambda X, Y: voxfit.inference.permutation_test(X, Y, [1, 0], blocks=[1, None] * 3),
            "`blocks` must label every row",
        ),
        (lambda X, Y: voxfit.inference.fdr([-0.5, 0.01, 2.0]), "holds 2 value\\(s\\) outside \\[0, 1\\]"),
        (lambda X, Y: voxfit.inference.bonferroni([np.inf]), "outside \\[0, 1\\]"),
        (lambda X, Y: voxfit.inference.fdr_threshold([0.01], q=2), "`q` must be an FDR level"),
        (lambda X, Y: voxfit.inference.fdr_threshold([0.01], q="0.05"), "`q` must be an FDR level"),
    ],
)
def test_arrays_voxfit_would_misread_are_refused_in_words(call, message):
    X = np.column_stack([np.arange(6.0), np.ones(6)])
    with pytest.raises((InputError, DataTypeError), match=message):
        call(X, np.arange(18.0).reshape(6, 3) ** 1.5)


def test_pandas_rows_and_contrasts_are_matched_by_their_labels(rng):
    """pandas objects are read by their labels or refused: a contrast Series weighting the intercept by name was
    applied by position (the slope's t for the intercept's), and a design and data whose rows are the same subjects
    in other orders were paired by position (t -31.5 for +31.5), where statsmodels refuses them."""
    ids = [f"sub-{i:02d}" for i in range(8)]
    X = pd.DataFrame({"slope": np.arange(8.0), "icpt": np.ones(8)}, index=ids)
    Y = pd.DataFrame(rng.standard_normal((8, 3)) + 5.0, index=ids)
    fit = voxfit.fit(X, Y)
    by_name = fit.contrast(pd.Series({"icpt": 1.0}))
    npt.assert_array_equal(by_name.stat, fit.contrast("icpt").stat)
    npt.assert_array_equal(fit.contrast(pd.Series([0.0, 1.0])).stat, by_name.stat)  # (default index: by position)
    f = fit.contrast(pd.DataFrame([{"icpt": 1.0}, {"slope": 1.0}]).fillna(0.0))
    npt.assert_allclose(f.stat, fit.contrast("icpt; slope").stat, rtol=1e-12)
    with pytest.raises(InputError, match="labelled age, and age name no column of the design \\(slope, icpt\\)"):
        fit.contrast(pd.Series({"age": 1.0}))
    with pytest.raises(InputError, match="rows of `X` and `Y` are labelled differently"):
        voxfit.fit(X, Y.iloc[::-1])
    with pytest.raises(InputError, match="rows of `X` and `effects` are labelled differently"):
        voxfit.mixed_effects(X, Y.iloc[::-1], Y * 0 + 1.0)
    npt.assert_allclose(voxfit.fit(X, Y.iloc[::-1].loc[X.index]).betas, fit.betas, rtol=1e-13)
    one = voxfit.fit(X, Y[0])  # (a Series of one voxel)
    npt.assert_allclose(one.betas[:, 0], fit.betas[:, 0], rtol=1e-13)


def test_a_contrast_string_to_fit_images_is_one_contrast(tmp_path, rng):
    """`contrasts="up"` was taken a character at a time ("cannot read contrast 'u'"; "ab" fitted a and b)."""
    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, 20))
    X = pd.DataFrame({"up": np.sin(np.arange(20.0)), "constant": np.ones(20)})
    res = voxfit.fit_images(bold, X, "effect=up")
    assert list(res.contrasts) == ["effect"]


def test_images_and_array_masks_stream_too(tmp_path, rng, no_reserve):
    """Data over the memory cap are read once, in slabs, from an image in memory as from a file."""
    data = volume_data(rng, n=N)
    mask = np.zeros(SHAPE, bool)
    mask[1:5, 1:4, 1:3] = True
    img = nib.Nifti1Image(data, AFFINE)
    streamed = voxfit.fit_images(
        img, _design(), {"up": "slope"}, mask=mask, streaming=True, max_memory="64K", out_dir=tmp_path / "s"
    )
    whole = voxfit.fit_images(img, _design(), {"up": "slope"}, mask=mask)
    npt.assert_array_equal(streamed.masker.mask, mask.reshape(-1, order="F"))
    npt.assert_allclose(streamed.contrasts["up"].t, whole.contrasts["up"].t, rtol=1e-4, atol=1e-5)
    model = json.loads((tmp_path / "s" / "model.json").read_text())
    assert model["inputs"][0]["source"] == "in-memory nibabel image" and model["settings"]["noise_details"]["streamed"]


def test_flags_are_true_or_false(tmp_path, rng):
    """A flag given as a word or a number ("no", 1, "10" dof) was read as true (or as a number) and the run went
    on: each is refused in words before anything is read or written."""
    from voxfit.inference import permutation_test
    from voxfit.inference.permutation import mixed_permutation_test

    X, Y = np.ones((8, 1)), rng.standard_normal((8, 5))
    for kwargs in ({"whole_blocks": "no"}, {"tfce": 1}):
        name = next(iter(kwargs))
        with pytest.raises(InputError, match=f"`{name}` must be True or False; got"):
            permutation_test(X, Y, [[1.0]], n_permutations=8, **kwargs)
        with pytest.raises(InputError, match=f"`{name}` must be True or False; got"):
            mixed_permutation_test(X, Y, Y**2 + 1, [[1.0]], n_permutations=8, **kwargs)
    with pytest.warns(UserWarning, match="8 rearrangements"):
        kept = permutation_test(X, Y, [[1.0]], n_permutations=8, seed=0, whole_blocks=np.bool_(False))
    assert kept.null_max.shape == (8,)
    bold = write_nifti(tmp_path / "bold.nii.gz", volume_data(rng, N))
    for kwargs in ({"streaming": "no"}, {"diagnostics": "yes"}, {"force": "no"}, {"progress": 0}):
        with pytest.raises(InputError, match=f"`{next(iter(kwargs))}` must be True"):
            voxfit.fit_images(bold, _design(), {"up": "slope"}, out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
    for flag in ("drop_unmatched_rows", "paired", "whole_blocks", "tfce"):
        with pytest.raises(InputError, match=f"`{flag}` must be True or False; got 'no'"):
            SecondLevel(**{flag: "no"}).fit(Y)
    for dof in (True, "10", [True] * 8):
        with pytest.raises(InputError, match="`first_level_dof` must be a number"):
            voxfit.mixed_effects(X, Y, Y**2 + 1, {"mean": [1.0]}, model="fixed", first_level_dof=dof)


def test_rows_of_every_pandas_input_are_compared_and_contrasts_read_by_their_labels(rng):
    """Missed cases of rows labelled differently (reviewer): effects and variances in two orders beside a plain
    design (t 2.93 for 4.32), groups in another order (the groups' variances swapped), fit_ar's data; string
    groups held as objects failed inside ('str' has no 'item'); a contrast given as a list of Series was read by
    position (the intercept's t for the slope's), and a reversed or shifted integer index too."""
    subjects = [f"sub-{i:02d}" for i in range(10)]
    X = pd.DataFrame({"mean": np.ones(10), "age": rng.standard_normal(10)}, index=subjects)
    E = pd.DataFrame(rng.standard_normal((10, 3)) + 1.0, index=subjects)
    V = pd.DataFrame(rng.uniform(0.5, 2.0, (10, 3)), index=subjects)
    groups = pd.Series(["a"] * 5 + ["b"] * 5, index=subjects)
    with pytest.raises(InputError, match="rows of `effects` and `variances` are labelled differently"):
        voxfit.mixed_effects(X.to_numpy(), E, V.iloc[::-1], {"m": [1.0, 0.0]})
    with pytest.raises(InputError, match="rows of `X` and `groups` are labelled differently"):
        voxfit.mixed_effects(X, E, V, ["mean"], groups=groups.iloc[::-1])
    with pytest.warns(DesignWarning, match="variance group 'a' has 5 subjects"):
        fit = voxfit.mixed_effects(X, E, V, ["mean"], groups=groups.to_numpy(dtype=object))
    assert fit.groups == ("a", "b")
    T = pd.DataFrame({"c": np.ones(60), "x": np.sin(np.arange(60) / 3.0)})
    Y = pd.DataFrame(rng.standard_normal((60, 2)))
    with pytest.raises(InputError, match="rows of `X` and `Y` are labelled differently"):
        voxfit.fit_ar(T, Y.iloc[::-1], 1, {"x": "x"})
    ols = voxfit.fit(X, E)
    by_rows = ols.contrast([pd.Series({"age": 1.0})])
    npt.assert_array_equal(by_rows.stat, ols.contrast("age").stat)
    for index in (pd.RangeIndex(1, -1, -1), pd.RangeIndex(1, 3)):
        with pytest.raises(InputError, match="name no column"):
            ols.contrast(pd.Series([1.0, 0.0], index=index))
    npt.assert_array_equal(ols.contrast(pd.Series([0.0, 1.0], index=[0, 1])).stat, ols.contrast("age").stat)
