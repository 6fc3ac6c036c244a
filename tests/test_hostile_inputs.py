"""Hostile and broken input (issue 14), classes 1 and 8: each class is a section of tests below.

1. Memory bombs: every size that comes from a header or an option is checked, before anything of that size is
   allocated, against what the file can hold and against the memory there is; refused with exit status 2
   naming the size, in well under 5 s, leaving nothing behind. One test per reader (NIfTI .nii, .nii.gz,
   Analyze, 3-D lists, GIFTI, CIFTI, .npy, Zarr, HDF5), the group path, and the options whose products grow
   (--n-scans x --microtime-resolution / --tr, --fir-delays, permutations x voxels, design columns x voxels).
2. Exit status tells the truth (class 8): bad input exits 2 with one line naming the file or option and what
   would be accepted; exit 1 is kept for voxfit's own bugs.

Every test here runs under an address-space limit (``_bounded_memory``): if a check regresses, the test fails
with a MemoryError (exit 1) instead of taking the machine's memory.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import json
import os
import re
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit.cli import main
from voxfit.design import make_design
from voxfit.exceptions import InputError
from voxfit.inference import permutation_test

from .imaging import AFFINE, N_SCANS, cifti_axes, volume_data, write_cifti, write_gifti, write_nifti

BOMB_SHAPE = (10000, 10000, 100, 100)  # 4 * 10^13 bytes of float32: the shape of the issue's 81-byte file
LIMIT = 3 << 30  # address space a test may add to what pytest already holds


@pytest.fixture(autouse=True)
def _bounded_memory():
    """Cap this process's address space a few GiB above what it holds now (restored after the test), so a
    check that regresses is a MemoryError in this test, not a machine brought down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as fh:
        used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    cap = used + LIMIT if hard == resource.RLIM_INFINITY else min(hard, used + LIMIT)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def study(tmp_path, rng):
    data = volume_data(rng)
    t = np.arange(N_SCANS)
    design = pd.DataFrame({"A": (t % 4 < 2).astype(float), "B": np.cos(t / 3.0), "constant": 1.0})
    design_path = tmp_path / "design.tsv"
    design.to_csv(design_path, sep="\t", index=False)
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n0\t4\tA\n10\t4\tA\n")
    return {
        "dir": tmp_path,
        "bold": write_nifti(tmp_path / "bold.nii.gz", data),
        "design": design_path,
        "events": events,
        "data": data,
        "out": tmp_path / "res",
    }


def refused(capsys, *argv, message: str, out: Path | bool | None = None) -> str:
    """Run the command line: exit status 2 within 5 s, one line on stderr matching `message`, no traceback,
    nothing written (no output folder content, no .voxfit-partial-* anywhere under the test's folder; `out`
    False: the caller checks)."""
    argv = [str(a) for a in argv]
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert err.count("\n") == 1 and err.startswith("voxfit: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    import re

    assert re.search(message, err), err
    if out is None and "-o" in argv:
        out = Path(argv[argv.index("-o") + 1])
    if out:
        assert not out.exists() or (out.is_dir() and not any(out.iterdir())), list(out.iterdir())
        assert not list(out.parent.rglob(".voxfit-partial-*"))
        assert not list(out.parent.glob(f".{out.name}.partial-*"))
    return err


def fit(s, inputs, *extra, design=True):
    args = ["fit", *([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    args += ["--design", s["design"]] if design else []
    return [*args, "--contrast", "a=A - B", "-o", s["out"], "--quiet", *extra]


def bomb_header(shape=BOMB_SHAPE, dtype=np.float32, klass=nib.Nifti1Header) -> bytes:
    header = klass()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    if klass is nib.Nifti1Header:
        header.set_data_offset(352)  # (as a single file's writer sets it: a header's own default is 0)
    block = header.binaryblock
    return block + b"\0" * 4 if klass is nib.Nifti1Header else block


# --------------------------------------------------------------------------------------------------------------
# Class 1: memory bombs. Sizes from headers and options are checked before any allocation.
# --------------------------------------------------------------------------------------------------------------


def test_gzip_bomb_of_the_issue_is_refused_from_its_size(study, capsys):
    """The issue's file: 81 bytes of .nii.gz whose header claims 10000 x 10000 x 100 x 100 float32. A deflate
    stream expands at most 1032 times, so the claim is refused before a byte of data is read."""
    path = study["dir"] / "bomb.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bomb_header())
    assert path.stat().st_size < 100
    refused(
        capsys,
        *fit(study, path),
        message=r"bomb\.nii\.gz: the header promises 4,000,000,000,352 bytes .*"
        r"10000 x 10000 x 100 x 100.* can hold at most",
    )


@pytest.mark.parametrize("rng", [0], indirect=True)  # (a header's refusal: one seed's data, not three processes)
def test_the_issue_bomb_in_its_own_process_exits_2_fast_and_leaves_nothing(study):
    """As the issue ran it: a separate process (imports included) under ``ulimit -v`` 4 GiB: exit 2 within 5 s,
    one line, no output folder and no .voxfit-partial-* (the run was killed by the kernel before the fix)."""
    import subprocess
    import sys

    path = study["dir"] / "bomb.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bomb_header())
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    cap = 4 << 30 if hard == resource.RLIM_INFINITY else min(hard, 4 << 30)
    start = time.perf_counter()
    command = [sys.executable, "-m", "voxfit", *map(str, fit(study, path))]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, hard)),
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert proc.stderr.count("\n") == 1 and "bomb.nii.gz: the header promises" in proc.stderr
    assert not study["out"].exists() and not list(study["dir"].rglob(".voxfit-partial-*"))


@pytest.mark.parametrize("rng", [0], indirect=True)  # (headers, whatever the data: one seed's, not three times)
def test_headers_nibabel_reports_give_the_program_s_one_line(study):
    """The voxfit program (its own process): a header nibabel logs a problem of before refusing it (datatype code
    0), or before reading it byte-swapped (dim[0] = -1), gives one line on stderr, the program's, not nibabel's
    bare log line before it; one nibabel repairs (a negative pixdim) is a warning once the fit has succeeded."""
    import subprocess
    import sys

    raw = bytearray(gzip.decompress(study["bold"].read_bytes()))
    for name, offset, value in (("dtype0.nii", 70, 0), ("dim0.nii", 40, -1)):
        bad = bytearray(raw)
        bad[offset : offset + 2] = np.int16(value).tobytes()
        (study["dir"] / name).write_bytes(bytes(bad))
        command = [sys.executable, "-m", "voxfit", *map(str, fit(study, study["dir"] / name))]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"voxfit: error: {study['dir'] / name}")
    flipped = bytearray(raw)  # a header nibabel repairs as it reads (a negative pixdim): said once the fit is done
    flipped[80:84] = np.float32(-2.0).tobytes()
    (study["dir"] / "flipped.nii").write_bytes(bytes(flipped))
    command = [sys.executable, "-m", "voxfit", *map(str, fit(study, study["dir"] / "flipped.nii"))]
    command.remove("--quiet")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "voxfit: warning: nibabel repaired a header as it read it: pixdim[1,2,3] should be positive" in proc.stderr


def test_a_huge_data_offset_is_skipped_not_allocated(study, capsys):
    """vox_offset is a header's number too: a .nii.gz's data offset is read past in 1 MiB pieces."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((4, 4, 3, 12))  # (the design's 12 scans: its rows are checked against them first)
    header["vox_offset"] = 4_000_000_000  # more than this test's address space, less than 1032 x the file's size
    path = study["dir"] / "offset.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:  # 4 MB of noise: the gzip bound cannot refuse it
        fh.write(header.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(4_000_000))
    message = (
        r"offset\.nii\.gz: file is truncated \(it ends after 4,000,352 bytes, where its header promises 4,000,002,304\)"
    )
    refused(capsys, *fit(study, path), message=message)


def test_uncompressed_nifti_and_analyze_bombs_are_refused_by_file_size(study, capsys):
    nii = study["dir"] / "bomb.nii"
    nii.write_bytes(bomb_header())
    refused(capsys, *fit(study, nii), message=r"bomb\.nii: file is truncated \(352 bytes; the header promises")
    hdr = study["dir"] / "bomb.hdr"
    hdr.write_bytes(bomb_header(klass=nib.AnalyzeHeader))
    (study["dir"] / "bomb.img").write_bytes(b"\0" * 64)
    refused(capsys, *fit(study, hdr), message=r"bomb\.img: file is truncated \(64 bytes")


def test_compressed_scan_larger_than_memory_is_refused_before_the_mask_allocates(study, capsys, monkeypatch):
    """A .nii.gz's total size cannot be known from its header, but one scan's can: the automatic mask's
    per-voxel arrays are bounded against the memory there is (here made small) before they exist."""
    monkeypatch.setattr("voxfit._memory.available_memory", lambda: 2000)
    refused(
        capsys,
        *fit(study, study["bold"]),
        message=r"bold\.nii\.gz: one scan of 120 elements \(as its header "
        r"says\) would take 3\.98 KiB of memory, more than the memory available \(1\.95 KiB\)",
    )


def test_a_gzip_stream_shorter_or_longer_than_the_header_says(study, capsys):
    """Cut short: refused, both numbers said. Longer: fitted as nibabel and FSL read it (the header's data only),
    as a .nii with bytes after its data is; a scan's bytes more or beyond are warned of, counted in scans."""
    raw = nib.load(study["bold"]).dataobj
    header = nib.load(study["bold"]).header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)  # (an image's header holds 0: nibabel sets the offset as it saves)
    data = np.asarray(raw, dtype=np.float32).tobytes(order="F")
    prefix = header.binaryblock + b"\0" * 4
    short = study["dir"] / "short.nii.gz"
    with gzip.open(short, "wb") as fh:  # ends early: a truncated file
        fh.write(prefix + data[: len(data) // 2])
    whole, held = len(prefix) + len(data), len(prefix) + len(data) // 2  # (what the header promises, what is there)
    said = rf"short\.nii\.gz: file is truncated \(it ends after {held:,} bytes, where its header promises {whole:,}\)"
    refused(capsys, *fit(study, short), message=said)
    scan = len(data) // N_SCANS
    expected = nib.load(study["bold"]).get_fdata()
    for name, tail, warned in (("pad.nii.gz", b"\0" * 16, None), ("more.nii.gz", data[: 3 * scan], 3)):
        path = study["dir"] / name
        with gzip.open(path, "wb") as fh:  # more data than the header describes: its own data read
            fh.write(prefix + data + tail)
        out = study["dir"] / f"out-{name}"
        assert main(["fit", str(path), "--design", str(study["design"]), "-o", str(out)]) == 0
        err = capsys.readouterr().err
        inside = nib.load(out / "mask.nii.gz").get_fdata() > 0  # (the maps are of the header's scans alone)
        mean = nib.load(out / "stat-mean_statmap.nii.gz").get_fdata()
        npt.assert_allclose(mean[inside], expected.mean(-1)[inside], rtol=1e-6)
        if warned is None:
            assert "after the data" not in err, err
        else:
            assert f"it holds {len(tail):,} bytes after the data its header describes, as many as {warned} scan" in err
    plain = study["dir"] / "more.nii"
    plain.write_bytes(prefix + data + data[: 2 * scan])
    assert main(["fit", str(plain), "--design", str(study["design"]), "-o", str(study["dir"] / "o-plain")]) == 0
    assert "as many as 2 scan(s)" in capsys.readouterr().err
    # a run of 3-D scans each with a scan's bytes more: read as nibabel reads them, without a word per scan
    folder = study["dir"] / "scans"
    folder.mkdir()
    for i in range(N_SCANS):
        one = nib.Nifti1Image(study["data"][..., i], nib.load(study["bold"]).affine)
        (folder / f"scan{i:02d}.nii").write_bytes(one.to_bytes() + one.dataobj.tobytes())
    assert main(["fit", str(folder), "--design", str(study["design"]), "-o", str(study["dir"] / "o-scans")]) == 0
    assert "after the data" not in capsys.readouterr().err
    # a whole stream, then bytes that are no gzip stream (a broken copy; a newline, which ISA-L reports as a stream
    # ended early): named as such, not as a truncated file
    for tail in (b"appended by a broken copy", b"\n"):
        garbage = study["dir"] / "garbage.nii.gz"
        garbage.write_bytes(gzip.compress(prefix + data) + tail)
        said = rf"garbage\.nii\.gz: {len(tail)} byte\(s\) that are not gzip data follow its gzip stream"
        refused(capsys, *fit(study, garbage), message=said)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_dimensions_whose_product_wraps_in_int64_are_refused(study, capsys, suffix):
    """2^21 x 2^21 x 2^22 voxels: 2^64, which numpy's int64 product wraps to 0 (an empty image whose scans were
    then read forever); sizes are Python integers, exact at any size."""
    header = nib.Nifti2Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2**21, 2**21, 2**22, 2**40))
    header.set_data_offset(544)
    path = study["dir"] / f"wrap{suffix}"
    with gzip.open(path, "wb") if suffix.endswith(".gz") else open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * 4)
    refused(
        capsys,
        *fit(study, path),
        message=r"wrap\.nii(\.gz)?: (file is truncated|the header promises) "
        r".*\b[\d,]{30,}",
    )


def test_list_of_3d_files_with_one_bomb_is_refused(study, capsys):
    good = [write_nifti(study["dir"] / f"scan{i}.nii", study["data"][..., i]) for i in range(N_SCANS - 1)]
    bomb = study["dir"] / f"scan{N_SCANS - 1}.nii.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(bomb_header(BOMB_SHAPE[:3]))
    refused(capsys, *fit(study, [*good, bomb]), message=r"scan11\.nii\.gz: the header promises 40,000,000,352 bytes")


def test_gifti_whose_tags_claim_more_than_memory_is_refused_before_decoding(study, rng, capsys):
    path = write_gifti(study["dir"] / "lh.func.gii", rng.standard_normal((N_SCANS, 30)).astype(np.float32), two_d=True)
    bomb = study["dir"] / "bomb.func.gii"
    bomb.write_text(path.read_text().replace('Dim0="30"', 'Dim0="1000000000000"'))
    # (more than its data can hold: said as a header that disagrees with its data, before the memory is asked)
    refused(capsys, *fit(study, bomb), message=r"bomb\.func\.gii: a data array's dimensions \(1000000000000, 12\)")
    negative = study["dir"] / "neg.func.gii"
    negative.write_text(path.read_text().replace('Dim0="30"', 'Dim0="-30"'))
    refused(capsys, *fit(study, negative), message=r"neg\.func\.gii: the header gives dimensions \(-30, 12\)")


def test_cifti_file_shorter_than_its_header_is_refused(study, rng, capsys):
    _, models = cifti_axes()
    path = write_cifti(study["dir"] / "a.dtseries.nii", rng.standard_normal((N_SCANS, len(models))))
    path.write_bytes(path.read_bytes()[:-100])
    refused(
        capsys,
        *fit(study, path),
        message=r"a\.dtseries\.nii: file is truncated \([\d,]+ bytes; the header "
        r"promises",
    )


def test_npy_header_claiming_more_than_the_file_is_refused(study, capsys):
    path = study["dir"] / "bomb.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (10**6, 10**7)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    promised = r"bomb\.npy: truncated: its header promises an array of shape \(1000000, 10000000\)"
    refused(capsys, *fit(study, path), message=promised)


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_chunked_store_claiming_a_huge_array_is_refused_from_its_metadata(study, capsys, kind):
    """Zarr and HDF5 arrays may be sparse (unwritten chunks read as the fill value), so a huge shape is not a
    lie about the file; it is still bounded against memory before a scan is read."""
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        path = study["dir"] / "bomb.zarr"
        zarr.open_array(str(path), mode="w", shape=(N_SCANS, 10**12), chunks=(1, 1000), dtype="f4")
    else:
        h5py = pytest.importorskip("h5py")
        path = study["dir"] / "bomb.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", shape=(N_SCANS, 10**12), chunks=(1, 1000), dtype="f4")
    refused(
        capsys,
        *fit(study, path),
        message=rf"bomb\.{'zarr' if kind == 'zarr' else 'h5'}: one scan of "
        r"1,000,000,000,000 elements \(as its header says\) would take [\d.]+ TiB",
    )


def test_chunked_store_whose_gathered_data_exceed_memory_is_refused_before_gathering(study):
    """Scans that each fit, but too many of them to hold in memory: refused after the first scan is read (the
    mask's candidates are known), before the (scans x voxels) matrix is allocated."""
    zarr = pytest.importorskip("zarr")
    path = study["dir"] / "wide.zarr"
    z = zarr.open_array(str(path), mode="w", shape=(10**6, 10**4), chunks=(1, 10**4), dtype="f4", fill_value=1.0)
    z[0] = 2.0  # every voxel a candidate of the automatic mask (non-zero in the first scan)
    start = time.perf_counter()
    with pytest.raises(
        InputError,
        match=r"wide\.zarr: 1,000,000 scans x 10,000 voxels in memory would take 37\.3 GiB"
        r".*Give --max-memory \(`max_memory`\) to stream",
    ):
        voxfit.load(path)
    assert time.perf_counter() - start < 5


def test_group_path_refuses_a_bomb_and_too_many_permutations(study, rng, capsys, monkeypatch):
    maps = [write_nifti(study["dir"] / f"sub-{i:02d}_effect.nii.gz", study["data"][..., i]) for i in range(6)]
    bomb = study["dir"] / "sub-07_effect.nii.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(bomb_header(BOMB_SHAPE[:3]))
    refused(capsys, "group", *maps, bomb, "-o", study["out"], message=r"sub-07_effect\.nii\.gz: the header promises")
    # 2^20 sign-flips of 20 maps: the table of shuffles must fit memory (here made small) before it is drawn
    X = np.ones((20, 1))
    Y = rng.standard_normal((20, 50))
    monkeypatch.setattr("voxfit._memory.available_memory", lambda: 1 << 20)
    with pytest.raises(
        InputError,
        match=r"1,048,576 sign-flips of 20 maps \(50 voxels\) would take [\d.]+ MiB .*fewer "
        r"permutations",
    ):
        permutation_test(X, Y, "x0", n_permutations=10**9)


def test_report_background_bomb_is_refused_before_nibabel_reads_it(study, capsys):
    pytest.importorskip("matplotlib")
    assert main([str(a) for a in fit(study, study["bold"])]) == 0
    bomb = study["dir"] / "t1.nii.gz"
    with gzip.open(bomb, "wb") as fh:
        fh.write(bomb_header((2000, 2000, 2000)))
    capsys.readouterr()
    refused(
        capsys,
        "report",
        study["out"],
        "--background",
        bomb,
        "--force",
        message=r"t1\.nii\.gz: the header promises 32,000,000,\d+ bytes",
        out=False,
    )
    assert not (study["out"] / "report.html").exists()


def test_options_whose_products_grow_are_bounded_before_the_design_is_built(study, capsys, monkeypatch):
    out = study["dir"] / "design.out.tsv"
    # each option in range, their product (a 32 s HRF at 1 ms / 4096 bins, a million scans) is not
    refused(
        capsys,
        "design",
        study["events"],
        "--tr",
        "0.001",
        "--n-scans",
        "1000000",
        "--microtime-resolution",
        "4096",
        "-o",
        out,
        message=r"the design \(1,000,000 scans .* would take [\d.]+ [GT]iB",
    )
    # SPM's spm_hrf samples its gammas T^2 times finer than the TR: 4096 bins at TR 2 s is 2^28 points a temporary
    refused(
        capsys,
        "design",
        study["events"],
        "--tr",
        "2",
        "--n-scans",
        "20",
        "--microtime-resolution",
        "4096",
        "-o",
        out,
        message=r"the design \(20 scans x 2 columns at most, TR 2 s, 4096 microtime bins a scan, 1 basis "
        r"function\(s\)\) would take 10 GiB",
    )
    refused(
        capsys,
        "design",
        study["events"],
        "--tr",
        "2",
        "--n-scans",
        "20000",
        "--hrf",
        "fir",
        "--fir-delays",
        "10000",
        "-o",
        out,
        message=r"the design \(20,000 scans .* 10000 basis function",
    )
    with pytest.raises(InputError, match=r"the design \(20,000 scans x 20,001 columns"):  # in Python as well
        make_design(study["events"], 2.0, 20000, high_pass=4)  # (2 TR: the most drifts a run has)
    # design columns x voxels: the fit's results (betas p x V) must fit memory before they are allocated
    monkeypatch.setattr("voxfit._memory.available_memory", lambda: 1 << 20)
    with pytest.raises(InputError, match=r"the fit's results \(300 design columns x 1,000 voxels\) would take"):
        voxfit.fit(np.random.default_rng(0).standard_normal((400, 300)), np.ones((400, 1000)))


def test_a_design_too_wide_to_factorise_is_refused_before_it_allocates(tmp_path):
    """A design's column count is a size claim: one of 60,000 columns (a confounds file selected by a pattern)
    needs p x p matrices of hundreds of GB, refused before they are made (the process was killed for memory); and a
    header of 30,000 names with one repeated is said at once (each name was counted again: quadratic)."""
    from voxfit._checks import repeated
    from voxfit.core import factorize
    from voxfit.design.read import read_design

    with pytest.raises(InputError, match=r"factorising a design of 60,000 columns x 3 scans would take .* GiB"):
        factorize(np.ones((3, 60000)) * np.arange(1, 60001))
    wide = np.ones((3, 2000)) * np.arange(1, 2001)
    with pytest.raises(InputError, match=r"2,000 columns x 3 scans would take .* MiB .* more than --max-memory"):
        voxfit.fit(wide, np.ones((3, 5)), max_memory="10M")
    from voxfit.engine import fit_ar, mixed_effects

    for call in (  # (every engine's design against the cap it was given)
        lambda: fit_ar(wide, np.ones((3, 5)), 1, {}, max_memory="10M"),
        lambda: mixed_effects(wide, np.ones((3, 5)), np.ones((3, 5)), {}, max_memory="10M"),
    ):
        with pytest.raises(InputError, match=r"2,000 columns x 3 scans .* more than --max-memory"):
            call()
    names = [f"x{i}" for i in range(30000)] + ["x7"]
    assert repeated(names) == ["x7"]
    design = tmp_path / "wide.tsv"
    design.write_text("\t".join(names) + "\n" + "\t".join(["1"] * len(names)) + "\n")
    with pytest.raises(InputError, match="'x7' appear more than once"):
        read_design(design)


def test_an_ar_fit_too_wide_for_its_working_memory_says_so_without_a_cap():
    """An AR fit of a design so wide that one voxel's working memory passes the default budget: the message names
    the design's width and what to do, not "`max_memory`=None is too small" (no cap was given)."""
    from voxfit._execution import Execution
    from voxfit.engine.ar import _block_voxels

    with pytest.raises(InputError, match=r"an AR fit of a design of 3,002 columns needs .* a voxel, more than its"):
        _block_voxels(40, 3002, 1, Execution(), None, 2)
    with pytest.raises(InputError, match=r"`max_memory`='1G' is too small for an AR fit"):
        _block_voxels(40, 3002, 1, Execution(max_memory="1G"), None, 2)


def test_available_memory_sees_the_address_space_limit():
    """``ulimit -v`` (set by this file's fixture) bounds what the checks allow, as MemAvailable and a cgroup do."""
    from voxfit._memory import available_memory, format_bytes

    assert 0 < available_memory() <= LIMIT
    assert format_bytes(81) == "81 bytes" and format_bytes(4 * 10**13) == "36.4 TiB"


def test_max_memory_bounds_the_check_when_given():
    from voxfit._memory import check_memory

    check_memory(1 << 20, "a megabyte", "2M")
    with pytest.raises(
        InputError,
        match=r"a megabyte would take 1 MiB of memory, more than --max-memory/`max_memory` "
        r"512K \(512 KiB; 1M would hold it\)\. Give less\.",
    ):
        check_memory(1 << 20, "a megabyte", "512K", "Give less.")
    with pytest.raises(InputError, match=r"would take 348 MiB of memory, .* \(348 MiB; 349M would hold it\)"):
        check_memory((348 << 20) + 400_000, "a table", "348M")  # (a tester's: said as if 348M held it)


# --------------------------------------------------------------------------------------------------------------
# Class 8: exit status tells the truth. Bad input: exit 2, one line naming the file or option; 1 is for bugs.
# --------------------------------------------------------------------------------------------------------------


def test_broken_headers_are_bad_input(study, capsys):
    data = study["data"]
    header = nib.Nifti1Image(data, AFFINE).header
    block = bytearray(header.binaryblock)
    block[44:46] = np.int16(-5).tobytes()  # dim[2] = -5 (dim[0..7] are int16 at bytes 40..55)
    negative = study["dir"] / "negative.nii"
    negative.write_bytes(bytes(block) + b"\0" * 4 + data.tobytes(order="F"))
    refused(
        capsys,
        *fit(study, negative),
        message=r"negative\.nii: the header gives dimensions \(6, -5, 4, 12\); "
        r"every dimension must be a positive",
    )
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), study["dir"] / "rgb.nii")
    refused(capsys, *fit(study, study["dir"] / "rgb.nii"), message=r"rgb\.nii: the data type is RGB; voxfit fits real")
    nib.save(nib.Nifti1Image(data.astype(np.complex64), AFFINE), study["dir"] / "complex.nii")
    refused(capsys, *fit(study, study["dir"] / "complex.nii"), message=r"complex\.nii: the data type is complex64")
    for code, bits, remedy in ((1, 1, "save it as uint8"), (2048, 256, "save one real value per voxel")):
        coded = bytearray(nib.Nifti1Image(data.astype(np.uint8), AFFINE).header.binaryblock)
        coded[70:74] = np.array([code, bits], np.int16).tobytes()  # (datatype, bitpix: NIfTI's codes nibabel lacks)
        (study["dir"] / f"dt{code}.nii").write_bytes(bytes(coded) + b"\0" * 4 + data.astype(np.uint8).tobytes("F"))
        said = rf"dt{code}\.nii: its header's datatype is {code} \(DT_.*; {remedy}"  # (nibabel: "not supported")
        refused(capsys, *fit(study, study["dir"] / f"dt{code}.nii"), message=said)
    nib.save(nib.AnalyzeImage(data, AFFINE), study["dir"] / "alone.hdr")
    (study["dir"] / "alone.img").unlink()
    refused(
        capsys,
        *fit(study, study["dir"] / "alone.hdr"),
        message=r"alone\.img: no such file \(the data of "
        r".*alone\.hdr\); keep the \.img beside its \.hdr",
    )


def _unreadable(monkeypatch, path: Path) -> None:
    """Make `path` unreadable. The tests run as root in CI, where chmod 000 does not stop reads; so as root
    `open` (and Path.read_bytes/read_text, which use it) is patched to raise the PermissionError the system
    would raise; as another user the file's permissions are really removed."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real_open = builtins.open
    target = os.path.realpath(path)

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr("io.open", guarded)


@pytest.mark.parametrize("which", ["design", "events", "bold", "confounds", "mask", "participants"])
def test_unreadable_files_say_permission_denied(study, capsys, monkeypatch, which):
    d = study["dir"]
    pd.DataFrame({"motion": np.linspace(0, 1, N_SCANS)}).to_csv(d / "confounds.tsv", sep="\t", index=False)
    write_nifti(d / "mask.nii", (study["data"][..., 0] != 0).astype(np.uint8))
    maps = [write_nifti(d / f"sub-{i:02d}_effect.nii.gz", study["data"][..., i]) for i in range(4)]
    pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(4)], "age": [20.0, 30, 25, 41]}).to_csv(
        d / "participants.tsv", sep="\t", index=False
    )
    target = {"confounds": d / "confounds.tsv", "mask": d / "mask.nii", "participants": d / "participants.tsv"}
    path = target.get(which) or study[which]
    _unreadable(monkeypatch, path)
    if which in ("events", "confounds"):
        args = fit(
            study,
            study["bold"],
            "--events",
            study["events"],
            "--tr",
            "2",
            "--confounds",
            d / "confounds.tsv",
            "--confounds-columns",
            "motion",
            design=False,
        )
    elif which == "participants":
        args = ["group", *maps, "--design", path, "--contrast", "age=age", "-o", study["out"]]
    else:
        args = fit(study, study["bold"], *(["--mask", path] if which == "mask" else []))
    err = refused(capsys, *args, message=rf"{path.name}: permission denied; make it readable")
    assert "Cannot work out file type" not in err


def test_a_pipe_named_like_an_image_is_refused_without_waiting(study, capsys):
    fifo = study["dir"] / "bold.nii"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    refused(capsys, *fit(study, fifo), message=r"bold\.nii: not a regular file \(a pipe, socket or device\)")
    # a design, events or confounds table that is a pipe, a device or a folder is said to be one ("no such file")
    pipe = study["dir"] / "design.tsv.fifo"
    os.mkfifo(pipe)
    for table, message in ((pipe, "not a regular file"), ("/dev/null", "not a regular file"), (study["dir"], "folder")):
        args = fit(study, study["bold"], design=False)
        refused(capsys, *args, "--design", table, message=rf"design {re.escape(str(table))}: .*{message}")
        events = ["--events", table, "--tr", "2"]
        refused(capsys, *args, *events, message=rf"events {re.escape(str(table))}: .*{message}")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--tr", "1e-9", r"--tr must be a repetition time in seconds, from 0\.001 to 10000; got 1e-09"),
        ("--tr", "nan", r"--tr must be a repetition time"),
        ("--tr", "-2", r"--tr must be a repetition time"),
        ("--n-scans", "100000000000", r"--n-scans must be a whole number of scans from 1 to 1000000"),
        ("--n-scans", "0", r"--n-scans must be a whole number of scans"),
        ("--fir-delays", "1000000000", r"--fir-delays must be a whole number of one-TR windows from 1 to 10000"),
        ("--microtime-resolution", "1000000000", r"--microtime-resolution must be a whole number of bins per scan"),
        ("--microtime-resolution", "0", r"--microtime-resolution must be"),
        ("--microtime-onset", "0", r"--microtime-onset must be a bin from 1"),
        ("--drift-order", "-1", r"--drift-order must be a whole number from 1"),
        ("--slice-time-ref", "2", r"--slice-time-ref must be a fraction of the TR from 0 to 1"),
    ],
)
def test_design_options_out_of_range(study, capsys, option, value, message):
    args = ["design", study["events"], "--tr", "2", "--n-scans", "20", "--hrf", "fir", "-o", study["dir"] / "d.tsv"]
    if option in args:
        i = args.index(option)
        args[i + 1] = value
    else:
        args += [option, value]
    refused(capsys, *args, message=message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--fir-delays", "3"], r"--fir-delays counts the windows of --hrf fir, and the HRF is spm; drop one"),
        (["--drift-order", "2"], r"--drift-order is the order of --drift polynomial, and the drift is cosine"),
        (["--drift", "none", "--high-pass", "100"], r"--high-pass is the cutoff of --drift cosine, and the drift is"),
        (["--drift", "polynomial", "--high-pass", "0.01Hz"], r"--high-pass is the cutoff of --drift cosine, and the"),
    ],
)
def test_an_option_of_another_choice_is_refused_not_passed_over(study, capsys, options, message):
    """--fir-delays without --hrf fir, --drift-order without --drift polynomial, --high-pass without the cosine
    drift: the design was made without them, nothing said."""
    args = ["design", study["events"], "--tr", "2", "--n-scans", "20", "-o", study["dir"] / "d.tsv"]
    refused(capsys, *args, *options, message=message)


def test_a_presets_high_pass_gives_way_to_the_drift_given(study, capsys):
    """--preset spm sets the high-pass; --drift none beside it is the user's choice, not a conflict: the fit runs
    without drift columns (its own --high-pass would be refused)."""
    out = study["dir"] / "o"
    argv = ["fit", study["bold"], "--events", study["events"], "--tr", "2", "--preset", "spm", "--drift", "none",
            "--noise", "ols", "--contrast", "A", "-o", out, "--quiet"]  # fmt: skip
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    assert not [c for c in json.loads((out / "model.json").read_text())["design"]["columns"] if "drift" in c]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--slice-time-ref", "1"], r"^voxfit: error: --slice-time-ref must lie in \[0, 1\) \(a fraction of the TR\)"),
        (["--microtime-onset", "20"], r"^voxfit: error: --microtime-onset \(SPM's T0, 1-based\) must lie in 1\.\.16"),
        (
            ["--convolution", "nilearn", "--microtime-resolution", "8"],
            r"microtime settings \(--microtime-resolution, --microtime-onset\) are SPM's convolution's; with "
            r"--convolution nilearn give the slice time as --slice-time-ref instead",
        ),
    ],
)
def test_the_design_layers_messages_name_the_command_lines_options(study, capsys, options, message):
    """A message of the Python API names its parameters (`slice_time_ref`); on the command line, the options."""
    args = ["design", study["events"], "--tr", "2", "--n-scans", "20", "-o", study["dir"] / "d.tsv"]
    assert "`" not in refused(capsys, *args, *options, message=message)


def test_a_message_naming_an_option_twice_says_it_once():
    """The rewrite of `names` into options: a message that names both says the option once, whatever the
    separator, and an option that a longer one begins with is not taken for it."""
    from voxfit.cli import _as_options

    flags = {"--mask", "--mask-threshold", "--max-memory", "--scheduler"}
    assert _as_options("(--mask, `mask`) or (--mask-threshold, `mask_threshold`; 0", flags) == (
        "(--mask) or (--mask-threshold; 0"
    )
    assert _as_options("check --scheduler / `scheduler` first", flags) == "check --scheduler first"
    assert _as_options("`mask`, `mask_threshold` and `masks`", flags) == "--mask, --mask-threshold and `masks`"
    assert _as_options("raise --max-memory (`max_memory`) or --max-memory/`max_memory`", flags) == (
        "raise --max-memory or --max-memory"
    )


def test_fir_delays_beyond_the_run_are_bad_input(study, capsys):
    refused(
        capsys,
        "design",
        study["events"],
        "--tr",
        "2",
        "--n-scans",
        "20",
        "--hrf",
        "fir",
        "--fir-delays",
        "100",
        "-o",
        study["dir"] / "d.tsv",
        message=r"--fir-delays \(100\) must be at most the number",
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", "-1"], r"--seed must be a whole number from 0 to 4294967295"),
        (["--seed", str(2**32)], r"--seed must be a whole number from 0 to 4294967295"),
        (["--tfce-E", "0"], r"--tfce-E must be a positive number"),
        (["--cluster-threshold", "inf"], r"--cluster-threshold must be a positive t or F value"),
        (["--n-jobs", "0"], r"--n-jobs must be a whole number of threads from 1 to 1024"),
        (["--max-memory=-1G"], r"--max-memory must be a size"),
    ],
)
def test_group_options_out_of_range(study, capsys, extra, message):
    maps = [write_nifti(study["dir"] / f"sub-{i:02d}_effect.nii.gz", study["data"][..., i]) for i in range(4)]
    refused(capsys, "group", *maps, "--permutations", "10", *extra, "-o", study["out"], message=message)


def test_output_name_longer_than_a_file_system_allows(study, capsys):
    out = study["dir"] / ("x" * 300)
    before = sorted(study["dir"].iterdir())
    refused(
        capsys,
        *fit(study, study["bold"], "-o", out),
        message=r"-o/--output: the name x{24}\.\.\. is 300 "
        r"characters long; file systems accept names of at most 255 bytes",
        out=False,
    )
    assert sorted(study["dir"].iterdir()) == before


def _disk_full(monkeypatch):
    """Simulate a full disk: the maps' files are created, and their first write fails as the system's would
    (OSError ENOSPC), for .nii.gz maps (voxfit's own gzip writer) and for any map nibabel saves."""
    from voxfit.io import geometry

    real_open = geometry.open_gzip

    class Full:
        def __init__(self, path, *args, **kwargs):
            self.path, self.fh = path, real_open(path, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

        def __getattr__(self, name):  # the rest of a file object (nibabel writes into it as into any file)
            return getattr(self.fh, name)

    def save(img, path, *args, **kwargs):
        Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(geometry, "open_gzip", Full)
    monkeypatch.setattr(nib, "save", save)


def test_full_disk_in_fit_is_bad_input_and_leaves_nothing(study, capsys, monkeypatch):
    _disk_full(monkeypatch)
    err = refused(
        capsys,
        *fit(study, study["bold"]),
        message=r"no space left on device while "
        r"writing \S+/res/[\w-]+\.nii\.gz; free some space or choose another output\.",
    )
    assert ".voxfit-partial" not in err  # the map is named as it would have been, not by its temporary folder


def test_full_disk_in_group_is_bad_input_and_leaves_nothing(study, capsys, monkeypatch):
    maps = [write_nifti(study["dir"] / f"sub-{i:02d}_effect.nii.gz", study["data"][..., i]) for i in range(4)]
    _disk_full(monkeypatch)
    refused(capsys, "group", *maps, "-o", study["out"], message=r"no space left on device while writing")


def test_os_errors_without_errno_stay_internal(capsys, monkeypatch):
    """Exit 1 is kept for voxfit's own faults: an OSError that carries no system error code is not the
    user's environment speaking, so it is not dressed up as bad input."""

    def broken(*args, **kwargs):
        raise OSError("something inside voxfit went wrong")

    monkeypatch.setattr("voxfit.cli._run", broken)
    assert main(["design", "x.tsv", "--tr", "2", "--n-scans", "10", "-o", "y.tsv"]) == 1
    assert "internal error" in capsys.readouterr().err


def test_from_os_error_names_the_file_and_the_fix():
    exc = PermissionError(errno.EACCES, "Permission denied", "/data/d.tsv")
    assert str(InputError.from_os_error(exc, what="design")) == (
        "design /data/d.tsv: permission denied; make it readable (an output: its folder writable) or run as a user "
        "who may."
    )
    odd = OSError(errno.EXDEV, "Invalid cross-device link", "/a")
    assert str(InputError.from_os_error(odd)) == "/a: Invalid cross-device link."


def test_a_table_larger_than_any_is_refused_before_it_is_read(tmp_path):
    """Events, confounds and design tables were read whole, whatever their size (an image given as events was read
    into memory before it was found not to be text): refused from their size alone (sparse files: nothing read)."""
    from voxfit.design import make_design, read_confounds, read_design
    from voxfit.io.checks import TABLE_BYTES

    for name in ("events.tsv", "confounds.tsv", "design.tsv", "rp_run1.txt"):
        with open(tmp_path / name, "wb") as fh:
            fh.truncate(TABLE_BYTES + 1)
    said = r": 256 MiB, more than any text table of .* kind holds \(256 MiB at most\); is it the right file"
    with pytest.raises(InputError, match="events .*events.tsv" + said):
        make_design(tmp_path / "events.tsv", 2.0, 40)
    for name in ("confounds.tsv", "rp_run1.txt"):
        with pytest.raises(InputError, match="confounds .*" + said):
            read_confounds(tmp_path / name, "*", 40)
    with pytest.raises(InputError, match="design .*design.tsv" + said):
        read_design(tmp_path / "design.tsv")
