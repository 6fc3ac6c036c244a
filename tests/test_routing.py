"""One route and one set of execution options: the memory cap resolved into named budgets (voxfit._execution),
the route of every fit decided by voxfit.models._routing.choose_route, and the command line reading each
header once."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import voxfit
from voxfit import cli
from voxfit._execution import BUDGETS, Budgets, Execution
from voxfit.exceptions import InputError
from voxfit.io import open_reader
from voxfit.io.readers import NiftiReader
from voxfit.models import _routing
from voxfit.models._routing import COLUMNS, MEMORY, STREAM, WORKERS, Needs, choose_route, first_level_needs

MiB = 1 << 20


def _run(tmp_path, n_scans=20, shape=(6, 5, 4)):
    rng = np.random.default_rng(0)
    path = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image((100 + rng.normal(size=(*shape, n_scans))).astype(np.float32), np.eye(4)), path)
    design = tmp_path / "design.tsv"
    t = np.arange(n_scans)
    np.savetxt(design, np.column_stack([t % 4 < 2, np.ones(n_scans)]), header="task\tconstant", comments="")
    design.write_text(design.read_text().replace(" ", "\t"))
    return path, design


def test_every_budget_has_its_default_in_one_table():
    free = Budgets.of(None)
    assert free.process is None
    assert (free.block, free.ar_block, free.batch, free.stream) == (64 * MiB, 128 * MiB, 256 * MiB, 2 << 30)
    assert {name: BUDGETS[name][1] for name in ("block", "ar_block", "batch", "stream")} == {
        "block": free.block,
        "ar_block": free.ar_block,
        "batch": free.batch,
        "stream": free.stream,
    }
    capped = Budgets.of("1G")
    assert capped.process == capped.block == capped.stream == 1 << 30
    assert capped.ar_block == ((1 << 30) - (256 << 20)) // 4  # a quarter of what the cap leaves beside the reserve
    assert capped.batch == free.batch  # a group model plans its batches under a cap (group_memory)


def test_streaming_starts_above_half_of_the_cap_beside_the_reserve(monkeypatch):
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    budgets = Budgets.of(800)
    assert not budgets.streams(10, 10)  # 400 bytes as float32: half of the cap
    assert budgets.streams(10, 10, itemsize=8)  # float64 data take 8 bytes a value
    assert budgets.streams(101, 1)
    assert not Budgets.of(None).streams(10**6, 10**6)


def test_execution_shortcuts_fill_or_contradict_an_execution():
    base = Execution(max_memory="1G", n_jobs=2)
    assert Execution.resolve(base, device="cpu") == Execution(max_memory="1G", n_jobs=2, device="cpu")
    assert Execution.resolve(base, n_jobs=2) == base  # the same value twice is no contradiction
    with pytest.raises(InputError, match="n_jobs either in `execution` or as a keyword"):
        Execution.resolve(base, n_jobs=3)
    with pytest.raises(InputError, match="`max_memory` must be a size"):
        Execution(max_memory="lots")
    for bad in (0, -1, 1.5, True, "2", 1025):
        with pytest.raises(InputError, match="`n_jobs` must be a number of threads from 1 to 1024"):
            Execution(n_jobs=bad)
    assert Execution(n_jobs=np.int64(3)).n_jobs == 3
    assert voxfit.Execution is Execution


def test_routes(tmp_path, monkeypatch):
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    path, _ = _run(tmp_path)
    reader = open_reader(path)  # 20 scans x 120 voxels: 9600 bytes as float32
    simple = first_level_needs("ols", "none", reader)
    assert choose_route(reader, Execution(), simple).kind == MEMORY
    assert choose_route(reader, Execution(max_memory=20000), simple).kind == MEMORY
    assert choose_route(reader, Execution(max_memory=19000), simple).kind == STREAM
    assert choose_route(reader, Execution(), simple, streaming=True).kind == STREAM
    # a scheduler: the workers read an uncompressed NIfTI by columns, at any size
    assert choose_route(reader, Execution(scheduler="tcp://x:1", max_memory=1000), simple).kind == WORKERS
    # whole scans needed (scaling, ar1-global): never by columns, and refused over the cap, naming a cap
    for noise, scaling in (("ar1-global", "none"), ("ols", "mean")):
        needs = first_level_needs(noise, scaling, reader)
        assert choose_route(reader, Execution(scheduler="tcp://x:1"), needs).kind == MEMORY
        with pytest.raises(InputError, match=r"for ar1-global, fast or scaling give --max-memory 19K or more"):
            choose_route(reader, Execution(max_memory=19000), needs)
    with pytest.raises(InputError, match="drop --scheduler and --device"):
        choose_route(reader, Execution(max_memory=19000, device="cuda"), simple)
    # a model that plans its own memory (group models with permutations) stays in memory over the cap
    assert choose_route(reader, Execution(max_memory=1000), Needs(False, False)).kind == MEMORY


def test_compressed_files_are_not_read_by_columns(tmp_path):
    path, _ = _run(tmp_path)
    gz = tmp_path / "bold.nii.gz"
    nib.save(nib.load(path), gz)
    reader = open_reader(gz)
    route = choose_route(reader, Execution(scheduler="tcp://x:1"), first_level_needs("ols", "none", reader))
    assert route.kind == MEMORY


@pytest.mark.parametrize("noise", ["arma11", "auto"])
def test_whole_series_models_read_blocks_of_voxels_over_the_cap(tmp_path, monkeypatch, noise):
    """arma11 and auto over the cap: blocks of voxels read by columns from an uncompressed file (this process, no
    scheduler); a .nii.gz, which only a sequential pass can read, is refused in one line that says to gunzip it;
    scaling still needs whole scans."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    path, _ = _run(tmp_path)
    reader = open_reader(path)
    needs = first_level_needs(noise, "none", reader)
    assert choose_route(reader, Execution(), needs).kind == MEMORY
    assert choose_route(reader, Execution(max_memory=19000), needs).kind == COLUMNS
    gz = tmp_path / "bold.nii.gz"
    nib.save(nib.load(path), gz)
    compressed = open_reader(gz)
    with pytest.raises(InputError, match=r"with arma11 and auto \(gunzip the run\)"):
        choose_route(compressed, Execution(max_memory=19000), first_level_needs(noise, "none", compressed))
    with pytest.raises(InputError, match=r"for ar1-global, fast or scaling give --max-memory 19K or more"):
        choose_route(reader, Execution(max_memory=19000), first_level_needs(noise, "mean", reader))


def test_cifti_over_the_cap_is_read_by_blocks_of_series(tmp_path, monkeypatch):
    """A CIFTI run over the cap, its series stored together, is read once by blocks of series for every model
    that allows columns (a streamed pass would read the file again for each slab of scans); one nibabel scales
    has no column source, and streams; scaling and the pooled models still need the data in memory."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 400, 2), 400, name="CortexLeft")
    values = 100 + np.random.default_rng(1).standard_normal((30, len(models)))
    header = (nib.cifti2.SeriesAxis(0, 2, 30), models)
    nib.save(nib.Cifti2Image(values.astype(np.float32), header=header), tmp_path / "run.dtseries.nii")
    scaled = nib.Cifti2Image(values, header=header)
    scaled.set_data_dtype(np.int16)
    nib.save(scaled, tmp_path / "scaled.dtseries.nii")
    cap = Execution(max_memory=20000)  # 24 kB of float32 data: over half of it
    reader = open_reader(str(tmp_path / "run.dtseries.nii"))
    for noise in ("ols", "ar2+lags", "arma11", "auto"):
        assert choose_route(reader, cap, first_level_needs(noise, "none", reader)).kind == COLUMNS
    assert choose_route(reader, Execution(), first_level_needs("ols", "none", reader)).kind == MEMORY
    with pytest.raises(InputError, match="for ar1-global, fast or scaling"):
        choose_route(reader, cap, first_level_needs("ols", "mean", reader))
    other = open_reader(str(tmp_path / "scaled.dtseries.nii"))
    assert choose_route(other, cap, first_level_needs("ols", "none", other)).kind == STREAM


@pytest.mark.parametrize("cap", [None, "16K"])
def test_command_line_reads_the_header_once_and_routes_through_choose_route(tmp_path, monkeypatch, cap):
    """In memory and streamed: one NIfTI header read for the route, the design's scans and the fit."""
    monkeypatch.setattr("voxfit._memory.RESERVED", 0)
    path, design = _run(tmp_path)
    headers, routed = [], []
    real_init, real_route = NiftiReader.__init__, _routing.choose_route

    def counting_init(self, *args, **kwargs):
        headers.append(args[0])
        real_init(self, *args, **kwargs)

    def recording_route(*args, **kwargs):
        routed.append(route := real_route(*args, **kwargs))
        return route

    monkeypatch.setattr(NiftiReader, "__init__", counting_init)
    monkeypatch.setattr(_routing, "choose_route", recording_route)
    argv = ["fit", str(path), "--design", str(design), "--contrast", "task", "-o", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv + (["--max-memory", cap] if cap else [])) == 0
    assert len(headers) == 1
    assert [r.kind for r in routed] == [MEMORY if cap is None else STREAM]
