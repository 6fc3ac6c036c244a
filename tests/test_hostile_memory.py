"""Issue 14, class 2: ``--max-memory`` bounds every command, measured by the kernel.

Each command runs in a child process; its peak resident memory comes from the kernel
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` once it has exited, in a small launcher: see
``LAUNCHER``) and is compared with the cap. How a cap is split, and the sizes chosen here:

- the interpreter and the libraries: ``voxfit._memory.RESERVED`` (256 MiB) of every cap; measured below
  (``test_interpreter_floor``): 12 MiB for ``import voxfit.cli``, about 110 MiB with numpy, scipy and
  nibabel, 170 MiB once a group model's permutation kernels (numba) have run;
- ``voxfit fit``: data, as float32, over half of what the cap leaves beside the reserve are streamed (one
  pass keeping per-voxel sums: the sums, slabs of scans, the results); below that they are fitted in
  memory, the other half holding the results, a scaled copy and the working blocks;
- ``voxfit group``: parametric maps stream by the same rule; with permutations, clusters or TFCE the
  maps stay in memory and ``voxfit.models.second_level.group_memory`` splits the cap into the maps, their
  residuals, per-voxel results, neighbours and kernel scratch, and a batch of shuffles from the rest
  (O(batch V), as scipy's ``permutation_test``); a cap that cannot hold one shuffle is refused before the
  maps are read, exit 2, one line naming the size that would;
- ``voxfit report``: ``voxfit.report._page.report_memory`` bounds it; refused likewise.

Sizes: the streamed data (393 MB) are 1.2 times a 320 MiB cap and 6 times what it leaves beside the
reserve; the maps of the permutation run (88 MB, 737 k voxels) take 1.4 GiB with 200 shuffles and
clusters without a plan (measured before this test existed), against a 900 MiB cap. Every run takes a
few seconds on two cores.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxfit
from voxfit._memory import parse_memory

MiB = 1 << 20
SRC = str(Path(voxfit.__file__).resolve().parents[1])

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the children's peak memory comes from getrusage")


# The child is started by a small launcher that reports ``RUSAGE_CHILDREN``: Linux counts in a process's
# ru_maxrss the resident set of the memory it had before exec, which for a child spawned by pytest itself
# (vfork) is pytest's, holding the test data (a streamed fit measured 449 MiB that way, 124 MiB from a launcher)
LAUNCHER = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def _peak(args, tmp_path, name="run"):
    """Run ``python <args>`` (voxfit from this checkout) as a child: (exit status, peak RSS bytes, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    err = tmp_path / f"{name}.stderr"
    with open(err, "w") as fh:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=fh,
            env=env,
            text=True,
            check=True,
        )
    maxrss, rc = (int(v) for v in done.stdout.split()[-2:])
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: kilobytes on Linux, bytes on macOS
    return rc, maxrss * scale, err.read_text()


def _evict(path: Path) -> None:
    """Drop `path` from the page cache where the system allows it (Linux), so that the fit reads it cold, as a run
    just copied in or pushed out by other work: the worst case for memory, where a memory map of the file would
    count the large folios of the kernel's readahead in the process's resident memory (voxfit.io.readers
    ._pread_span; 382-411 MiB under the 384M cap when the columns were mapped, about 260 MiB read)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # (pages not yet written to disk are not dropped: a file just made would be read warm)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _voxfit(args, tmp_path, name="run"):
    return _peak(["-m", "voxfit", *args], tmp_path, name)


def _series(path: Path, shape, n: int, offset: float = 0.0) -> Path:
    """A float32 4-D NIfTI, uncompressed, of values near 100 (every voxel in the masks; uniform noise from scan
    to scan: 7x quicker to draw than normal noise, and the same to every memory bound), written a volume at
    a time (the test process holds one copy; in NIfTI's order, so that each volume is one contiguous write and
    nibabel saves the array as it is)."""
    rng = np.random.default_rng(0)
    data = np.empty((*shape, n), dtype=np.float32, order="F")
    base = 100 + rng.standard_normal(shape, dtype=np.float32)
    for t in range(n):
        data[..., t] = base + rng.random(shape, dtype=np.float32) + offset
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2, 2, 1])), path)
    return path


def _npy(path: Path, n_columns: int, n: int) -> Path:
    """A float32 (scans, columns) .npy of values near 100, written a scan at a time (as _series)."""
    rng = np.random.default_rng(1)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n_columns))
    base = 100 + rng.standard_normal(n_columns, dtype=np.float32)
    for t in range(n):
        data[t] = base + rng.random(n_columns, dtype=np.float32)
    data.flush()
    del data
    return path


def _cifti(path: Path, n_vertices: int, n: int) -> Path:
    """A float32 .dtseries.nii of `n` scans on one cortical surface of `n_vertices` vertices, values near 100,
    made a block of vertices' series at a time, as the file stores them (nibabel writes the array as it is)."""
    rng = np.random.default_rng(2)
    data = np.empty((n_vertices, n), dtype=np.float32)
    base = 100 + rng.standard_normal(n_vertices, dtype=np.float32)
    for g in range(0, n_vertices, 4096):
        k = min(4096, n_vertices - g)
        data[g : g + k] = base[g : g + k, None] + rng.random((k, n), dtype=np.float32)
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(n_vertices), n_vertices, "CortexLeft")
    series = nib.cifti2.SeriesAxis(0.0, 2.0, n)
    nib.save(nib.Cifti2Image(data.T, (series, models)), path)
    return path


def _design(path: Path, n: int, columns: int = 2) -> Path:
    """A task, `columns` - 2 nuisance regressors (smooth, as drifts and motion are) and the intercept."""
    t = np.arange(n)
    x = np.column_stack([np.sin(t / 5)] + [np.cos(t * (k + 1) / n) for k in range(columns - 2)] + [np.ones(n)])
    names = ["task", *(f"nuisance{k}" for k in range(columns - 2)), "intercept"]
    path.write_text("\t".join(names) + "\n" + "".join("\t".join(f"{v:.6f}" for v in row) + "\n" for row in x))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    return {
        "small": _series(folder / "small.nii", (64, 64, 40), 200),  # 131 MB: in memory under 512M
        "large": _series(folder / "large.nii", (64, 64, 40), 600),  # 393 MB: streamed under 320M
        "maps": _series(folder / "maps.nii", (96, 96, 80), 30, offset=0.5),  # 88 MB, 737 k voxels
        "small_gz": _gzipped(Path(shutil.copy(folder / "small.nii", folder / "small_gz.nii"))),
        "large_npy": _npy(folder / "large_npy.npy", 64 * 64 * 40, 600),  # 393 MB as a 2-D .npy: streamed
        "large_cifti": _cifti(folder / "large.dtseries.nii", 64 * 64 * 40, 600),  # 393 MB of CIFTI: by columns
        "long_gz": _gzipped(_series(folder / "long_gz.nii", (16, 16, 32), 1024)),  # 34 MB, 1,024 scans: in memory
        "folder": folder,
    }


def test_interpreter_floor(tmp_path):
    """The reserve kept for the interpreter holds it: the floor of a command is well under 256 MiB."""
    from voxfit._memory import RESERVED

    rc, bare, _ = _peak(["-c", "import voxfit.cli"], tmp_path, "bare")
    assert rc == 0
    code = (
        "import numpy as np, voxfit.models, voxfit.inference as vi; "
        "vi.permutation_test(np.ones((8, 1)), np.random.default_rng(0).standard_normal((8, 50)), [[1.0]], "
        "n_permutations=20)"
    )
    rc, libraries, err = _peak(["-c", code], tmp_path, "libraries")
    assert rc == 0, err
    print(
        f"interpreter floor: import voxfit.cli {bare / MiB:.0f} MiB; with the libraries and the permutation "
        f"kernels {libraries / MiB:.0f} MiB; reserve {RESERVED / MiB:.0f} MiB"
    )
    assert bare < libraries < RESERVED


@pytest.mark.parametrize(
    ("which", "cap", "options", "streamed"),
    [
        ("small", "512M", ["--scaling", "mean"], False),  # in memory, with the scaled copy
        ("large", "320M", [], True),
        ("small", "512M", ["--inference", "rft"], False),  # random field theory: the neighbour sums too
        ("small", "512M", ["--inference", "rft", "--mask", "MASK"], False),  # ... gathered while the run is read
        ("large", "320M", ["--inference", "rft"], True),  # ... gathered over the streamed pass
        ("small", "384M", ["--noise", "arma11", "--mask", "MASK"], False),  # blocks of voxels read by columns
        ("small_gz", "512M", ["--mask", "MASK"], False),  # OLS from sums gathered while the .nii.gz is read
        ("small_gz", "512M", ["--mask", "MASK", "--noise", "ar1"], False),  # AR(1) from its lagged sums, likewise
        ("small_gz", "512M", ["--mask", "MASK", "--noise", "ar4+lags"], False),  # the fMRI default: its sample too
        ("large", "320M", ["--noise", "ar2+lags"], True),  # ... streamed: the sample read again after the pass
        ("large_npy", "320M", [], True),  # a .npy streamed: its slabs read, not mapped (490 MiB when mapped)
        ("large_npy", "320M", ["--noise", "ar1"], True),
        # grayordinate-major: read once by blocks of series (streamed, each slab of scans read the file again)
        ("large_cifti", "320M", [], False),
        # AR(12) from the read's lagged sums, at the smallest cap that keeps the data in memory: the models'
        # autocorrelations at every lag take one series a voxel (428 MiB before the AR blocks counted them)
        ("long_gz", "320M", ["--mask", "GRID", "--noise", "ar12"], False),
        ("long_gz", "320M", ["--mask", "GRID", "--noise", "ar1", "--diagnostics"], False),  # (346 MiB on the OLS one)
        # a design of 20 columns, as a first level with motion and drifts has: the per-voxel sums grow with its rank
        ("large", "352M", ["WIDE", "--noise", "ar1"], True),
    ],
)
def test_fit_stays_under_the_cap(data, tmp_path, which, cap, options, streamed):
    path = data[which]
    if path.suffix == ".npy":
        n = np.load(path, mmap_mode="r").shape[0]
    else:
        shape = nib.load(path).shape
        n = shape[0] if len(shape) == 2 else shape[3]  # CIFTI: (scans, grayordinates)
    design = _design(tmp_path / "design.tsv", n, 20 if "WIDE" in options else 2)
    options = [o for o in options if o != "WIDE"]
    if "MASK" in options:  # a brain-like mask: the ellipsoid inscribed in the grid
        img = nib.load(path)
        grid = np.meshgrid(*(np.linspace(-1, 1, k) for k in img.shape[:3]), indexing="ij")
        mask = tmp_path / "mask.nii"
        nib.save(nib.Nifti1Image((sum(g**2 for g in grid) < 1).astype(np.uint8), img.affine), mask)
        options = [str(mask) if o == "MASK" else o for o in options]
    if "GRID" in options:  # an explicit mask of every voxel: the most data the cap holds in memory
        img = nib.load(path)
        mask = tmp_path / "grid.nii"
        nib.save(nib.Nifti1Image(np.ones(img.shape[:3], np.uint8), img.affine), mask)
        options = [str(mask) if o == "GRID" else o for o in options]
    out = tmp_path / "out"
    _evict(path)
    rc, peak, err = _voxfit(
        [
            "fit",
            str(path),
            "--design",
            str(design),
            "--contrast",
            "t=task",
            "-o",
            str(out),
            "--max-memory",
            cap,
            "--quiet",
            *options,
        ],
        tmp_path,
    )
    assert rc == 0, err
    model = json.loads((out / "model.json").read_text())
    assert bool(model["settings"]["noise_details"].get("streamed")) is streamed
    if "arma11" in options or which == "large_cifti":  # over half of what the cap leaves: blocks of whole series
        assert "read_by_columns" in model["settings"]["noise_details"]
    if "rft" in options:
        assert model["inference"]["smoothness"]["resels"][0] > 0
    cap_bytes = parse_memory(cap)
    print(f"fit {which} ({path.stat().st_size / MiB:.0f} MiB) under {cap}: peak {peak / MiB:.0f} MiB")
    assert peak <= cap_bytes
    if streamed:  # the data are larger than the cap itself: only one pass over them fits
        assert path.stat().st_size > cap_bytes


def test_fit_refuses_what_it_cannot_stream(data, tmp_path):
    """Scaling needs the data in memory: a cap too small for them is refused, naming the size that would."""
    design = _design(tmp_path / "design.tsv", 600)
    rc, peak, err = _voxfit(
        [
            "fit",
            str(data["large"]),
            "--design",
            str(design),
            "--contrast",
            "t=task",
            "-o",
            str(tmp_path / "out"),
            "--max-memory",
            "320M",
            "--scaling",
            "mean",
            "--quiet",
        ],
        tmp_path,
    )
    assert rc == 2 and err.count("\n") == 1 and "give --max-memory 10" in err, err
    assert peak <= 320 * MiB


@pytest.mark.parametrize(("which", "cap"), [("small", "512M"), ("large", "320M")])
def test_group_parametric_stays_under_the_cap(data, tmp_path, which, cap):
    """200 maps in memory; 600 maps (larger than the cap) streamed."""
    rc, peak, err = _voxfit(
        ["group", str(data[which]), "-o", str(tmp_path / "g"), "--max-memory", cap, "--quiet"], tmp_path
    )
    assert rc == 0, err
    print(f"group parametric {which} under {cap}: peak {peak / MiB:.0f} MiB")
    assert peak <= parse_memory(cap)
    assert (tmp_path / "g" / "contrast-intercept_stat-t_statmap.nii.gz").exists()


def test_group_permutations_clusters_and_report_stay_under_the_cap(data, tmp_path):
    """200 sign-flips with cluster inference on 737 k voxels: without a plan the batches of null maps alone
    would take the cap (1.4 GiB measured); the report of the run stays under its own cap."""
    out = tmp_path / "g"
    rc, peak, err = _voxfit(
        [
            "group",
            str(data["maps"]),
            "-o",
            str(out),
            "--permutations",
            "200",
            "--seed",
            "0",
            "--cluster-threshold",
            "3",
            "--max-memory",
            "900M",
            "--quiet",
        ],
        tmp_path,
    )
    assert rc == 0, err
    print(f"group, 200 sign-flips and clusters under 900M: peak {peak / MiB:.0f} MiB")
    assert peak <= 900 * MiB
    assert (out / "contrast-intercept_stat-p_desc-clusterfwe_statmap.nii.gz").exists()
    rc, peak, err = _voxfit(["report", str(out), "--max-memory", "512M", "--quiet"], tmp_path, "report")
    if rc == 2 and "matplotlib" in err:
        pytest.skip("reports need matplotlib")
    assert rc == 0, err
    print(f"report under 512M: peak {peak / MiB:.0f} MiB")
    assert peak <= 512 * MiB
    rc, peak, err = _voxfit(["report", str(out), "--max-memory", "300M", "--force", "--quiet"], tmp_path, "refused")
    assert rc == 2 and err.count("\n") == 1 and "cannot hold the report of 737,280 voxels" in err, err
    assert "give at least " in err and peak <= 300 * MiB


def test_group_permutations_tfce_and_clusters_stay_under_the_cap(data, tmp_path):
    """Permutations (a two-sample design: shuffled products, not sign-flips) with TFCE and clusters."""
    shape, n = (48, 48, 40), 40
    path = _series(tmp_path / "maps.nii", shape, n, offset=0.5)
    table = tmp_path / "participants.tsv"
    table.write_text("group\n" + "".join(f"{'a' if k % 2 else 'b'}\n" for k in range(n)))
    rc, peak, err = _voxfit(
        [
            "group",
            str(path),
            "--design",
            str(table),
            "--two-sample",
            "group",
            "--contrast",
            "d=a - b",
            "-o",
            str(tmp_path / "g"),
            "--permutations",
            "20",
            "--seed",
            "0",
            "--tfce",
            "--cluster-threshold",
            "2",
            "--max-memory",
            "400M",
            "--quiet",
        ],
        tmp_path,
    )
    assert rc == 0, err
    print(f"group, 20 permutations, TFCE and clusters under 400M: peak {peak / MiB:.0f} MiB")
    assert peak <= 400 * MiB
    assert (tmp_path / "g" / "contrast-d_stat-p_desc-tfcefwe_statmap.nii.gz").exists()


def test_group_refuses_a_cap_that_cannot_hold_the_permutations(data, tmp_path):
    """The issue's case scaled down: maps whose permutations need more than the cap are refused before
    they are read, in one line naming the size that would hold them; exit 2, nothing written."""
    out = tmp_path / "g"
    rc, peak, err = _voxfit(
        [
            "group",
            str(data["maps"]),
            "-o",
            str(out),
            "--permutations",
            "20",
            "--tfce",
            "--max-memory",
            "512M",
            "--quiet",
        ],
        tmp_path,
    )
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("voxfit: error: --max-memory='512M' cannot hold permutations")
    need = parse_memory(err.split("give at least ")[1].split(",")[0])
    assert need > 512 * MiB
    assert peak < 256 * MiB  # refused before the maps were read
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "options",
    [
        ["--drift", "none", "--microtime-resolution", "4096"],  # the microtime grid
        [],  # the cosine drift's 940 columns of 30,000 scans
    ],
    ids=["microtime", "drift"],
)
@pytest.mark.parametrize("command", ["fit", "design"])
def test_a_design_over_the_cap_is_refused_before_it_is_built(tmp_path, command, options):
    """A design is built from options and the data's length, not read: `fit --events` on 30,000 scans of 8
    voxels at 4096 microtime bins a scan passed 10.5 GiB under --max-memory 400M, and `voxfit design` took no
    cap at all (a tester's). Refused before anything is built, in one line naming the cap, the peak far below it."""
    n = 30000
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n" + "".join(f"{k * 40}\t10\tf\n" for k in range(1000)))
    if command == "fit":
        bold = tmp_path / "long.nii"
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2, n), np.float32), np.eye(4)), bold)
        args = ["fit", str(bold), "--events", str(events), "--tr", "2", "--contrast", "f=f", "-o", str(tmp_path / "o")]
    else:
        args = ["design", str(events), "--tr", "2", "--n-scans", str(n), "-o", str(tmp_path / "d.tsv")]
    noise = ["--noise", "ols"] if command == "fit" else []
    rc, peak, err = _voxfit([*args, *options, *noise, "--max-memory", "400M"], tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "more than --max-memory 400M" in err, err
    assert err.startswith("voxfit: error: the design (30,000 scans x ") and peak < 200 * MiB, (peak, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "d.tsv").exists()


def test_the_apis_first_level_design_is_checked_against_its_cap(tmp_path):
    """FirstLevel's design was checked against the memory there is, not its `max_memory` (the command line's was
    against its cap): refused before it is built, naming the cap."""
    from voxfit import FirstLevel
    from voxfit.exceptions import InputError

    events = {"f": {"onset": [k * 40.0 for k in range(1000)], "duration": [10.0] * 1000}}
    model = FirstLevel(tr=2, microtime_resolution=4096, max_memory="400M")
    with pytest.raises(InputError, match=r"^the design \(30,000 scans x .* more than .*`max_memory` 400M"):
        model.design(events, 30000)


def _cifti_claiming(path: Path, scans: int, grayordinates: int, in_xml: bool) -> Path:
    """A float32 CIFTI file of `scans` rows (a .dtseries.nii, or a .dscalar.nii of one map) on 312 cortical
    vertices whose NIfTI-2 header claims `grayordinates` (dim[6]); `in_xml`: its XML's first brain model
    claims them too (IndexCount), so that the two agree and only the file's size gives the lie."""
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(300), 300, name="CortexLeft")
    models += nib.cifti2.BrainModelAxis.from_surface(np.arange(12), 12, name="CortexRight")
    rows = nib.cifti2.SeriesAxis(0, 2.0, scans) if scans > 1 else nib.cifti2.ScalarAxis(["effect"])
    nib.save(nib.Cifti2Image(np.ones((scans, len(models)), dtype=np.float32), (rows, models)), path)
    raw = bytearray(path.read_bytes())
    raw[64:72] = grayordinates.to_bytes(8, "little")  # (NIfTI-2 dim[6])
    offset, size = int.from_bytes(raw[168:176], "little"), int.from_bytes(raw[544:548], "little")
    xml = bytes(raw[552 : 544 + size]).rstrip(b"\0")
    if in_xml:  # (the XML's extension and the data's offset grown to hold the longer numbers)
        xml = xml.replace(b'IndexCount="300"', f'IndexCount="{grayordinates - 12}"'.encode(), 1)
        xml = xml.replace(b'IndexOffset="300"', f'IndexOffset="{grayordinates - 12}"'.encode(), 1)
    size = -(-(len(xml) + 8) // 16) * 16
    raw[168:176] = (544 + size).to_bytes(8, "little")
    extension = size.to_bytes(4, "little") + (32).to_bytes(4, "little") + xml.ljust(size - 8, b"\0")
    path.write_bytes(bytes(raw[:544]) + extension + bytes(raw[offset:]))
    return path


@pytest.mark.parametrize("in_xml", [False, True], ids=["header", "header-and-xml"])
@pytest.mark.parametrize("command", ["fit", "group"])
def test_a_cifti_header_claiming_millions_of_grayordinates_is_refused_before_they_are_allocated(
    tmp_path, command, in_xml
):
    """A 122 KB .dtseries.nii whose header claimed 10^8 grayordinates (its XML: 593) was refused, exit 2, after
    3.2 GB were allocated under --max-memory 1G (10^9: killed at 24 GB); ``voxfit group`` the same on a 24 KB
    .dscalar.nii: the brain models' arrays were made of the header's size before the XML's count was compared.
    Here 3 x 10^7 (0.9 GB before the fix): refused in one line, the XML's count or the file's size named, well
    under the cap."""
    claim = 30_000_000
    if command == "fit":
        run = _cifti_claiming(tmp_path / "run.dtseries.nii", 20, claim, in_xml)
        args = ["fit", str(run), "--design", str(_design(tmp_path / "design.tsv", 20)), "--contrast", "t=task"]
    else:
        maps = [_cifti_claiming(tmp_path / "sub-01.dscalar.nii", 1, claim, in_xml)]
        maps += [_cifti_claiming(tmp_path / f"sub-0{i}.dscalar.nii", 1, 312, False) for i in (2, 3)]
        args = ["group", *map(str, maps)]
    rc, peak, err = _voxfit([*args, "-o", str(tmp_path / "out"), "--max-memory", "512M", "--quiet"], tmp_path)
    assert rc == 2 and err.count("\n") == 1, err
    said = "file is truncated" if in_xml else "brain models hold 312 grayordinates, its header 30,000,000"
    assert said in err, err
    assert peak < 256 * MiB, peak / MiB


def test_runs_fitted_together_are_refused_or_held(data, tmp_path):
    """Several runs are held in memory at once: a cap too small is refused before reading, naming a size,
    and that size holds the fit."""
    design = _design(tmp_path / "design.tsv", 200)
    second = tmp_path / "small2.nii"  # another run of the same size (one run given twice is refused)
    shutil.copyfile(data["small"], second)
    with open(second, "r+b") as fh:  # (its last value another: not the same run's bytes)
        fh.seek(-4, os.SEEK_END)
        fh.write(np.float32(7.0).tobytes())
    args = [
        "fit",
        str(data["small"]),
        str(second),
        "--design",
        str(design),
        str(design),
        "--contrast",
        "t=task",
        "-o",
        str(tmp_path / "out"),
        "--quiet",
        "--max-memory",
    ]
    rc, peak, err = _voxfit([*args, "512M"], tmp_path, "refused")
    assert rc == 2 and err.count("\n") == 1 and "cannot hold 2 runs fitted together" in err, err
    assert peak < 256 * MiB
    need, said = err.split("give at least ")[1].split(" ", 1)
    assert said.startswith("(256M of it for Python and its libraries), or fit the runs one at a time"), err
    rc, peak, err = _voxfit([*args, need], tmp_path, "held")
    assert rc == 0, err
    print(f"2 runs under {need}: peak {peak / MiB:.0f} MiB")
    assert peak <= parse_memory(need)


def test_demo_stays_under_the_cap_or_refuses_it(tmp_path):
    """The demo's size is fixed: under DEMO_BYTES it is refused, naming it; at DEMO_BYTES it fits."""
    from voxfit.models.demo import DEMO_BYTES

    rc, peak, err = _voxfit(["demo", "-o", str(tmp_path / "d"), "--quiet", "--max-memory", "300M"], tmp_path, "refused")
    assert rc == 2 and err.count("\n") == 1 and "cannot hold the demo" in err, err
    assert f"give at least {DEMO_BYTES >> 20}M" in err
    rc, peak, err = _voxfit(["demo", "-o", str(tmp_path / "d"), "--quiet", "--max-memory", str(DEMO_BYTES)], tmp_path)
    assert rc == 0, err
    print(f"demo under {DEMO_BYTES / MiB:.0f} MiB: peak {peak / MiB:.0f} MiB")
    assert peak <= DEMO_BYTES


@pytest.mark.parametrize("seed", range(5))
def test_keep_columns_moves_the_kept_columns_within_the_buffer(seed):
    """The masks' compaction equals data[:, index] and reuses the array's buffer (no second copy)."""
    from voxfit.io.masking import keep_columns

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((int(rng.integers(1, 9)), int(rng.integers(1, 50)))).astype(np.float32)
    index = np.flatnonzero(rng.random(data.shape[1]) < 0.6)
    expected = data[:, index].copy()
    out = keep_columns(data, index)
    np.testing.assert_array_equal(out, expected)
    assert out.flags.c_contiguous and (out.size == 0 or np.shares_memory(out, data))


def test_a_batch_of_shuffles_fits_its_budget():
    """batch_size keeps a batch's null maps, maxima and products within the bytes it is given (O(batch V))."""
    from voxfit.inference.permutation import batch_size

    V, r, tile = 100_000, 2, 2048
    for budget in (1 << 20, 64 << 20, 1 << 30):
        b = batch_size(V, 5000, r, tile, True, False, budget, 4, 2)
        assert b == 1 or b * (4 * V + 4 * (V // tile + 1) + 4 * r * tile * 2) <= budget
    assert batch_size(V, 5000, r, 512, False, True, 1 << 30, 4, 2) == 5000  # sign-flips without maps: one batch


# ----------------------------------------------------------------------------------------------------------
# mixed-effects group models (issue 16): effect and variance maps, one compressed 3-D NIfTI per subject


def _gzipped(path: Path) -> Path:
    """`path` compressed beside itself (level 1, quick to write), the uncompressed file removed."""
    from voxfit.io import open_gzip

    packed = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, open_gzip(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()
    return packed


@pytest.fixture(scope="module")
def subject_maps(tmp_path_factory):
    """40 subjects' effect and variance maps (64 x 64 x 40, 164 k voxels, float32), sub-<label>/ folders,
    .nii.gz: 26 MB of effects and 26 MB of variances in memory."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    shape = (64, 64, 40)
    for k in range(40):
        sub = folder / f"sub-{k + 1:02d}"
        sub.mkdir()
        v = rng.uniform(1, 10, shape).astype(np.float32)
        e = (0.2 + rng.standard_normal(shape, dtype=np.float32) * np.sqrt(v + 1)).astype(np.float32)
        for name, values in (("effect", e), ("variance", v)):
            nib.save(nib.Nifti1Image(values, np.diag([2.0, 2, 2, 1])), sub / f"stat-{name}.nii")
            _gzipped(sub / f"stat-{name}.nii")
    return folder


def _mixed_args(folder: Path, n: int) -> list[str]:
    subjects = sorted(folder.glob("sub-*"))[:n]
    return [
        *(str(s / "stat-effect.nii.gz") for s in subjects),
        "--variances",
        *(str(s / "stat-variance.nii.gz") for s in subjects),
    ]


@pytest.mark.parametrize(("subjects", "cap", "streamed"), [(20, "400M", False), (40, "320M", True)])
def test_group_mixed_stays_under_the_cap(subject_maps, tmp_path, subjects, cap, streamed):
    """20 subjects' maps held in memory under 400M; 40 subjects' (over what 320M holds in memory: 256 MiB and
    twice the maps) decompressed once into temporaries and read a block of voxels at a time, under 320M."""
    from voxfit._execution import cap_holding, data_bytes

    out = tmp_path / "g"
    args = ["group", *_mixed_args(subject_maps, subjects), "-o", str(out), "--max-memory", cap, "--quiet"]
    rc, peak, err = _voxfit(args, tmp_path)
    assert rc == 0, err
    in_memory = cap_holding(2 * data_bytes(subjects, 64 * 64 * 40))  # the rule of models.second_level._fit_mixed
    assert (in_memory > parse_memory(cap)) is streamed
    print(f"group --variances, {subjects} subjects under {cap}: peak {peak / MiB:.0f} MiB")
    assert peak <= parse_memory(cap)
    assert (out / "stat-betweenvariance_statmap.nii.gz").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # (no decompressed copy left)


def test_group_mixed_refuses_a_cap_it_cannot_hold(subject_maps, tmp_path):
    """40 subjects' maps under 280M: too little for them in memory, and for the results of the fit beside the
    interpreter's reserve when they are read by columns: refused in one line naming the cap that would hold."""
    out = tmp_path / "g"
    args = ["group", *_mixed_args(subject_maps, 40), "-o", str(out), "--max-memory", "280M", "--quiet"]
    rc, peak, err = _voxfit(args, tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "cannot hold a group model of 40" in err and "give at least" in err, err
    assert peak <= 280 * MiB
    assert not out.exists()


def test_group_mixed_with_outliers_stays_under_the_cap_it_names(subject_maps, tmp_path):
    """--outliers keeps each map's outlier probability at each voxel (float64) and writes it as a 4-D map: at the
    cap the model named without it, 40 maps of 553 k voxels peaked 55% over (a tester's). The cap it names now,
    given, holds the run."""
    out = tmp_path / "g"
    args = ["group", *_mixed_args(subject_maps, 40), "--outliers", "-o", str(out), "--quiet", "--max-memory"]
    rc, _, err = _voxfit([*args, "320M"], tmp_path)
    assert rc == 2 and "give at least" in err, err
    cap = err.split("give at least ")[1].split(",")[0]
    assert parse_memory(cap) > 320 * MiB
    rc, peak, err = _voxfit([*args, cap], tmp_path)
    print(f"group --variances --outliers, 40 subjects under {cap}: peak {peak / MiB:.0f} MiB")
    assert rc == 0 and peak <= parse_memory(cap), (err, peak / MiB)
    assert (out / "stat-outlierprob_statmap.nii.gz").is_file()


def _process_tree() -> dict[int, list[int]]:
    """Each process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(text.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    return children


def _high_water(pid: int) -> int | None:
    """The process's peak resident memory so far (VmHWM), bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _tree_peak(args):
    """Run ``python -m voxfit ARGS`` and, every 10 ms, the peak resident memory of it and of every process it
    started (worker processes, multiprocessing's resource tracker): (exit status, each process's peak,
    stderr). Their sum bounds from above what the command held at any one time. A child caught between its fork
    and its exec (its command line still the parent's) is not sampled: its peak is then the parent's, shared,
    and was seen under load as a fifth process of 147 MiB beside 3 workers."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxfit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        children, todo, ours = _process_tree(), [proc.pid], _cmdline(proc.pid)
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            if pid != proc.pid and _cmdline(pid) == ours:  # forked, not yet exec'd: the parent's pages, counted
                continue
            value = _high_water(pid)  # (read after the command line: a later exec has happened before it too)
            if value is not None:
                peaks[pid] = max(peaks.get(pid, 0), value)
        time.sleep(0.01)
    return proc.returncode, peaks, proc.communicate()[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    pytest.importorskip("bids")
    from voxfit.bids.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("study") / "ds", subjects=3, runs=2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the processes' peaks come from /proc")
@pytest.mark.parametrize(("cap", "workers"), [("1100M", 3), ("550M", 0)])
def test_a_study_with_workers_stays_under_the_cap(study, tmp_path, cap, workers):
    """``voxfit bids --n-jobs 4``: each worker needs the reserve and its run in memory, after the parent's
    reserve, so 1100M holds 3 of them and 550M none (the runs are fitted in the parent). Measured on 2 cores:
    the parent alone 174 MiB, 3 workers with it 497 MiB, 4 unplanned workers 598 MiB (over 550M)."""
    out = tmp_path / "out"
    args = ["bids", str(study.root), str(out), "subject", "--derivatives", str(study.derivatives), "--n-jobs", "4"]
    rc, peaks, err = _tree_peak([*args, "--max-memory", cap, "--quiet"])
    assert rc == 0, err
    total = sum(peaks.values())
    print(f"bids --n-jobs 4 under {cap}: {len(peaks)} processes, peaks {sorted(v // MiB for v in peaks.values())} MiB")
    assert total <= parse_memory(cap)
    assert sum(v > 64 * MiB for v in peaks.values()) == 1 + workers  # (the resource tracker is small)
    assert len(list(out.rglob("*_model.json"))) == 6 + 3 * 2


@pytest.mark.parametrize(("scans", "refusal"), [(8000, "the AR(12) noise model's terms"), (16000, "factorising")])
def test_a_long_runs_design_and_noise_model_are_checked_against_the_cap_before_they_are_made(tmp_path, scans, refusal):
    """A BIDS run of many scans (a header's claim) on a few voxels: its drifts (2 n TR / 128 s columns) and the
    default noise model's terms grow with n x columns, which the data's size (8 voxels) does not tell. 32,767 scans
    peaked at 14 GB under --max-memory 2G. Now refused under 400M before they are made, in one line, with nothing
    written: the noise model's terms at 8,000 scans, the design itself at 16,000 (before: exit 0 at peaks of 1.0 and
    3.5 GiB; now 317 and 155 MiB)."""
    pytest.importorskip("bids")
    from voxfit.bids.synthetic import make_dataset

    study = make_dataset(tmp_path / "ds", subjects=1, runs=1, scans=scans, shape=(2, 2, 2))
    out = tmp_path / "out"
    args = ["bids", str(study.root), str(out), "run", "--derivatives", str(study.derivatives), "--quiet"]
    rc, peak, err = _voxfit([*args, "--max-memory", "400M"], tmp_path)
    assert rc == 2 and refusal in err and "more than --max-memory 400M" in err, err
    assert peak <= 400 * MiB and not out.exists()


@pytest.mark.parametrize("command", ["fit", "group"])
def test_a_gifti_input_is_checked_against_the_cap_before_it_is_decoded(tmp_path, command):
    """A GIFTI file's data arrays are text, decoded whole as the file is opened: one over the cap (with the part
    kept for the interpreter) is refused from its header, before any is decoded; it peaked at 735 MiB under a
    300M cap. Under a cap that holds it, the fit stays under it."""
    from nibabel.gifti import GiftiDataArray, GiftiImage

    rng = np.random.default_rng(0)
    n, vertices = (120, 100_000) if command == "fit" else (1, 100_000)
    paths = []
    for k in range(1 if command == "fit" else 60):
        path = tmp_path / f"sub-{k:02d}.func.gii"
        nib.save(
            GiftiImage(darrays=[GiftiDataArray(rng.standard_normal(vertices, dtype=np.float32)) for _ in range(n)]),
            path,
        )
        paths.append(str(path))
    args = [command, *paths]
    if command == "fit":
        args += ["--design", str(_design(tmp_path / "design.tsv", n)), "--contrast", "t=task"]
    big = paths[0] if command == "fit" else None
    if big is not None:
        rc, peak, err = _voxfit([*args, "-o", str(tmp_path / "refused"), "--max-memory", "300M", "--quiet"], tmp_path)
        assert rc == 2 and err.count("\n") == 1 and "decoded whole" in err and "--max-memory" in err, err
        assert peak <= 300 * MiB and not (tmp_path / "refused").exists()
    rc, peak, err = _voxfit([*args, "-o", str(tmp_path / "held"), "--max-memory", "512M", "--quiet"], tmp_path, "held")
    assert rc == 0, err
    assert peak <= 512 * MiB, f"{peak / MiB:.0f} MiB"


def test_a_study_fits_each_run_under_its_share_of_the_cap_for_files_decoded_whole(monkeypatch):
    """A study's runs are opened under the share of --max-memory their process has (a worker process's share, or
    the whole cap in this process), the cap that GIFTI files, decoded whole, are checked against before they are
    decoded: worker processes had none (the command line sets it in its own process only)."""
    from types import SimpleNamespace

    from voxfit import Execution
    from voxfit._memory import whole_files_cap
    from voxfit.bids import study as study_module

    seen = []
    monkeypatch.setattr(study_module, "_fit_run", lambda job, dataset, writer: seen.append(whole_files_cap()))
    for cap in (parse_memory("300M"), None):
        study_module._fit_job(SimpleNamespace(index=0, execution=Execution(max_memory=cap)))
    assert seen == [parse_memory("300M"), None] and whole_files_cap() is None


def test_a_study_process_gives_freed_memory_back():
    """``voxfit bids`` (and its workers) fit runs one after another: glibc's malloc, told to by
    ``release_freed_memory``, gives a block freed back to the system rather than keeping it for the next run. A
    child process frees a 20 MiB block (by default, glibc then takes blocks up to that size from its heap, and
    keeps what is freed at its top), then allocates, writes and frees 10 MiB eight times, each time beside a small
    block it keeps: by default 10 MiB stay resident; given back, none."""
    code = (
        "import sys, numpy as np\n"
        "from voxfit._memory import release_freed_memory\n"
        "def rss():\n"
        "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) >> 10\n"
        "if sys.argv[1] == 'release':\n"
        "    assert release_freed_memory()\n"
        "big = np.ones(20 << 17)\n"
        "del big\n"
        "kept, before = [], rss()\n"
        "for _ in range(8):\n"
        "    block = np.ones(10 << 17)\n"
        "    kept.append(np.ones(16))\n"
        "    del block\n"
        "print(rss() - before)\n"
    )
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or sys.maxsize < 2**32:
        pytest.skip("64-bit glibc's malloc only (a 32-bit one maps no block of 8 MiB on its own)")
    env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    kept = {}
    for how in ("default", "release"):
        child = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60, env=env)
        assert child.returncode == 0, child.stderr
        kept[how] = int(child.stdout.split()[-1])
    assert kept["default"] >= 8 and kept["release"] <= 2, kept
    from voxfit._memory import _malloc_tuned

    assert _malloc_tuned({"MALLOC_TRIM_THRESHOLD_": "65536"}) and _malloc_tuned({"GLIBC_TUNABLES": "glibc.malloc.x=1"})
    assert not _malloc_tuned({"GLIBC_TUNABLES": "glibc.pthread.x=1", "MALLOC_STYLE": "x"})
