"""Hostile and careless inputs found by a fresh probe after issue 14's classes were closed: outputs that would
replace inputs or devices, data read from elsewhere, inputs counted twice, ids under another column name,
numbers past float32, deep JSON, regressors that are empty, oversized lists. Each: exit 2, one line, nothing
replaced or left behind."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

import voxfit
from voxfit.cli import main

from .imaging import AFFINE, SHAPE, cifti_axes, write_cifti


def _refused(capsys, *argv, message):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    return err


def _fit_refused(capsys, data, run, out, message):
    """``voxfit fit DATA`` with the run's design and contrast A refused in one line with `message`."""
    return _refused(
        capsys, "fit", data, "--design", run / "design.tsv", "--contrast", "a=A", "-o", out, message=message
    )


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(3)
    data = (100 + rng.standard_normal(SHAPE + (20,))).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / "bold.nii"))
    t = np.arange(20)
    lines = ["A\tconstant", *[f"{float(t[i] % 4 < 2)}\t1" for i in range(20)]]
    (tmp_path / "design.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "events.tsv").write_text("onset\tduration\ttrial_type\n0\t8\tA\n20\t8\tA\n")
    return tmp_path


def test_outputs_never_replace_inputs_or_devices(run, capsys):
    fifo = run / "out.tsv"
    os.mkfifo(fifo)
    _refused(
        capsys,
        "design",
        run / "events.tsv",
        "--tr",
        2,
        "--n-scans",
        20,
        "-o",
        fifo,
        "--force",
        message="is not a regular file",
    )
    assert fifo.is_fifo() and not (run / "out.json").exists()
    before = (run / "events.tsv").read_text()
    _refused(
        capsys,
        "design",
        run / "events.tsv",
        "--tr",
        2,
        "--n-scans",
        20,
        "-o",
        run / "events.tsv",
        "--force",
        message="is an input of this run",
    )
    assert (run / "events.tsv").read_text() == before
    design = (run / "design.tsv").read_text()  # -o the inputs' own folder: design.tsv would be rewritten
    _refused(
        capsys,
        "fit",
        run / "bold.nii",
        "--design",
        run / "design.tsv",
        "--contrast",
        "a=A",
        "-o",
        run,
        "--force",
        message="is an input of this run",
    )
    assert (run / "design.tsv").read_text() == design and not (run / "model.json").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_data_kept_in_another_file_are_not_read(tmp_path, capsys):
    (tmp_path / "secret.bin").write_bytes(np.arange(50, dtype=np.float32).tobytes())
    arrays = "".join(
        f'<DataArray Intent="NIFTI_INTENT_NONE" DataType="NIFTI_TYPE_FLOAT32" ArrayIndexingOrder="RowMajorOrder" '
        f'Dimensionality="1" Dim0="50" Encoding="ExternalFileBinary" Endian="LittleEndian" '
        f'ExternalFileName="{tmp_path / "secret.bin"}" ExternalFileOffset="0"><Data></Data></DataArray>'
        for _ in range(4)
    )
    gii = tmp_path / "ext.func.gii"
    gii.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><GIFTI Version="1.0" NumberOfDataArrays="4">{arrays}</GIFTI>'
    )
    (tmp_path / "d.tsv").write_text("c\n" + "1\n" * 4)
    _refused(
        capsys,
        "fit",
        gii,
        "--design",
        tmp_path / "d.tsv",
        "--contrast",
        "c=c",
        "-o",
        tmp_path / "o",
        message="keeps its data in another file",
    )


def test_broken_headers_and_ragged_maps_are_bad_input(tmp_path, capsys, run):
    img = nib.Nifti1Image(np.ones(SHAPE + (20,), np.float32), None)
    img.header["pixdim"][1:4] = [np.nan, np.inf, 2]
    img.header.set_sform(None, 0)
    img.header.set_qform(None, 0)
    nib.save(img, str(tmp_path / "nanpix.nii"))
    _fit_refused(capsys, tmp_path / "nanpix.nii", run, tmp_path / "o", "non-finite voxel sizes")
    for name, sform in (("flat", np.diag([2.0, 2.0, 0.0, 1.0])), ("zero", np.diag([0.0, 0.0, 0.0, 1.0]))):
        data = np.random.default_rng(0).standard_normal(SHAPE + (20,)).astype(np.float32) + 100
        img = nib.Nifti1Image(data, AFFINE)  # (a valid qform beside the broken sform)
        img.set_sform(sform, 1)
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
        _fit_refused(
            capsys, tmp_path / f"{name}.nii.gz", run, tmp_path / "o", "maps the voxels onto a plane, a line or a point"
        )  # (it failed as the maps were written, exit 1)
        with pytest.raises(voxfit.exceptions.InputError, match="onto a plane"):
            voxfit.io.open_reader(nib.load(tmp_path / f"{name}.nii.gz"))  # (an image in memory)
    made = voxfit.io.open_reader(nib.Nifti1Image(np.ones(SHAPE + (20,), np.float32), None))  # (no affine: pixdim's)
    assert np.isfinite(made.geometry.affine).all() and np.linalg.matrix_rank(made.geometry.affine[:3, :3]) == 3
    darrays = [nib.gifti.GiftiDataArray(np.ones(n, np.float32)) for n in (50, 50, 49, 50)]
    nib.save(nib.GiftiImage(darrays=darrays), str(tmp_path / "ragged.func.gii"))
    (tmp_path / "d.tsv").write_text("c\n" + "1\n" * 4)
    _refused(
        capsys,
        "fit",
        tmp_path / "ragged.func.gii",
        "--design",
        tmp_path / "d.tsv",
        "--contrast",
        "c=c",
        "-o",
        tmp_path / "o2",
        message="data arrays differ in length",
    )


def test_npy_headers_that_lie_are_bad_input(tmp_path, capsys, run):
    """A .npy header numpy's parser cannot read (cut short: its text runs into another header), or whose shape is
    negative: one line, exit 2 (they were internal errors: tokenize's TokenError, the map's OverflowError)."""
    good = tmp_path / "good.npy"
    np.save(good, np.ones((20, 6), np.float32))
    raw = good.read_bytes()
    cut = raw[:10] + raw[10:60] + raw  # the header's text broken off mid-dict, another file's bytes after it
    negative = raw.replace(b"(20, 6)", b"(-2, 6)")
    for name, content in (("cut", cut), ("negative", negative)):
        (tmp_path / f"{name}.npy").write_bytes(content)
        _fit_refused(capsys, tmp_path / f"{name}.npy", run, tmp_path / "o", "npy: ")
    # said as a NIfTI file's lies are (numpy's words had been "mmap length is greater than file size"; a tester's)
    cases = {
        "truncated": (raw[:-40], "truncated: its header promises an array of shape (20, 6) of float32 (480 bytes)"),
        "huge": (raw.replace(b"(20, 6)", b"(20, 9999999)"), "truncated: its header promises an array of shape"),
        "negative": (negative, "its header gives the shape (-2, 6), which no array has"),
        "cut": (cut, "not a .npy array numpy can read"),
        "empty": (raw.replace(b"(20, 6)", b"(20, 0)"), "the array holds no values (shape (20, 0))"),
        "five": (raw.replace(b"(20, 6)", b"(1, 1, 1, 20, 6)"), "the array has 5 dimensions; give one 2-D array"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.npy").write_bytes(content)
        _fit_refused(capsys, tmp_path / f"{name}.npy", run, tmp_path / "o", message)
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]] * 20, dtype=object), allow_pickle=True)
    _fit_refused(capsys, tmp_path / "objects.npy", run, tmp_path / "o", "holds Python objects (object), not numbers")


@pytest.mark.parametrize("size", [-16, 1 << 30])
def test_a_cifti_extension_of_a_broken_size_is_said_so(tmp_path, capsys, run, size):
    """A CIFTI file whose extension's size field lies (negative, or past the file): "not a readable image
    (ValueError: NIfTI2 header does not contain a CIFTI-2 extension)" (a tester's): said as a broken header, with
    what to do."""
    n = len(cifti_axes(20)[1])
    path = write_cifti(tmp_path / "x.dtseries.nii", np.ones((20, n), np.float32))
    raw = bytearray(path.read_bytes())
    raw[544:548] = size.to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))
    _fit_refused(capsys, path, run, tmp_path / "o", f"size field gives {size:,} bytes, where the extension must fit")


def test_inputs_counted_twice_are_refused(run, capsys, tmp_path):
    maps = []
    for i in range(4):
        maps.append(tmp_path / f"sub-{i:02d}_map.nii")
        nib.save(nib.Nifti1Image(np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32), AFFINE), maps[-1])
    _refused(capsys, "group", *maps, maps[0], "-o", tmp_path / "g", message="is given twice")
    _refused(
        capsys,
        "fit",
        run / "bold.nii",
        run / "bold.nii",
        "--events",
        run / "events.tsv",
        run / "events.tsv",
        "--tr",
        2,
        "--contrast",
        "a=A",
        "-o",
        tmp_path / "r",
        message="is given as two runs",
    )
    table = tmp_path / "p.tsv"  # ids under another name are not matched by position
    table.write_text("Participant_ID\tage\n" + "".join(f"sub-{i:02d}\t{20 + i}\n" for i in reversed(range(4))))
    _refused(
        capsys,
        "group",
        *maps,
        "--design",
        table,
        "--contrast",
        "a=age",
        "-o",
        tmp_path / "g2",
        message="name it with --id-column Participant_ID",
    )


def test_values_past_float32_are_written_as_they_are(tmp_path, capsys):
    Y = (np.random.default_rng(0).uniform(-1, 1, (12, 30)) * 3e38).astype(np.float32)
    np.save(tmp_path / "big.npy", Y)
    (tmp_path / "d.tsv").write_text("A\tconstant\n" + "".join(f"{k % 2}\t1\n" for k in range(12)))
    assert (
        main(
            [
                "fit",
                str(tmp_path / "big.npy"),
                "--design",
                str(tmp_path / "d.tsv"),
                "--contrast",
                "c=A",
                "--quiet",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    variance = np.load(tmp_path / "o" / "stat-residualvariance_statmap.npy")
    assert np.isfinite(variance).all() and variance.max() > np.finfo(np.float32).max  # (stored as float64)


def test_json_nested_beyond_the_stack_and_empty_regressors_are_bad_input(run, capsys, tmp_path):
    (run / "design.json").write_text("[" * 100000 + "]" * 100000)
    assert (
        main(
            [
                "fit",
                str(run / "bold.nii"),
                "--design",
                str(run / "design.tsv"),
                "--contrast",
                "a=A",
                "--quiet",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )  # not a sidecar of voxfit's: kinds guessed
    (tmp_path / "o" / "model.json").write_text("[" * 100000 + "]" * 100000)
    _refused(capsys, "report", tmp_path / "o", "--force", message="is not readable JSON")
    (run / "before.tsv").write_text("onset\tduration\ttrial_type\n-1e9\t5\tA\n10\t2\tB\n")
    _refused(
        capsys,
        "design",
        run / "before.tsv",
        "--tr",
        2,
        "--n-scans",
        20,
        "-o",
        tmp_path / "d.tsv",
        message="the regressor 'A' is zero at every scan",
    )
    (run / "unmodulated.tsv").write_text(
        "onset\tduration\ttrial_type\tmodulation\n2\t2\tA\t0\n10\t2\tA\t0\n14\t2\tB\t1\n"
    )  # (every event of A with modulation 0: said beside events outside the run)
    _refused(
        capsys,
        "design",
        run / "unmodulated.tsv",
        "--tr",
        2,
        "--n-scans",
        20,
        "-o",
        tmp_path / "d.tsv",
        message="or all have modulation 0",
    )


def test_oversized_lists_and_patterns_are_refused_at_once(run, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("voxfit.io.scans.MAX_SCANS", 10)
    (tmp_path / "long.txt").write_text("bold.nii\n" * 11)
    _fit_refused(capsys, tmp_path / "long.txt", run, tmp_path / "o", "a run is at most 10 scans")
    _refused(
        capsys,
        "fit",
        run / "bold.nii",
        "--design",
        run / "design.tsv",
        "--contrast",
        "a=A",
        "-o",
        tmp_path / "o2",
        "--noise",
        "ar1-global",
        "--nuisance-columns",
        "[" * 5000 + "A",
        message="--nuisance-columns is 5,001 characters long",
    )


def test_a_list_of_scans_saved_with_a_byte_order_mark(tmp_path, capsys):
    for i in range(6):
        nib.save(
            nib.Nifti1Image(np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32) + 100, AFFINE),
            str(tmp_path / f"s{i}.nii"),
        )
    (tmp_path / "run.txt").write_text("\ufeff" + "".join(f"s{i}.nii\n" for i in range(6)), encoding="utf-8")
    (tmp_path / "d.tsv").write_text("A\tconstant\n" + "".join(f"{k % 2}\t1\n" for k in range(6)))
    assert (
        main(
            [
                "fit",
                str(tmp_path / "run.txt"),
                "--design",
                str(tmp_path / "d.tsv"),
                "--contrast",
                "a=A",
                "--quiet",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "o" / "model.json").read_text())["data"]["n_scans"] == 6
