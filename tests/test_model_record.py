"""model.json through ModelRecord: written and read back equal for each kind of model, the kind and version always
written, files older than those keys still read, broken files refused with a sentence."""

import json
import os
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from voxfit.exceptions import InputError
from voxfit.io import OutputFolder
from voxfit.models import SecondLevel, fit_images, fit_runs
from voxfit._digest import CHUNK
from voxfit.models.record import KINDS, RECORD_VERSION, ModelRecord, schema


def _fit(kind: str, out):
    rng = np.random.default_rng(7)
    X = np.column_stack([np.ones(20), rng.standard_normal(20)])
    Y = rng.standard_normal((20, 30)) + 5
    if kind == "first-level":
        fit_images(Y, (X, ["c", "a"]), ["a=a", "both=a;c"], out_dir=out, noise="ar1", command=["voxfit", "fit"])
    elif kind == "runs":
        fit_runs([Y, Y[::-1].copy()], [(X, ["c", "a"])] * 2, ["a=a", "both=a;c"], out_dir=out)
    else:
        SecondLevel(contrasts=["m=intercept"], permutations=20, seed=0).fit(Y, out)
    return out


@pytest.fixture(params=KINDS)
def written(request, tmp_path):
    return request.param, _fit(request.param, tmp_path / request.param)


def _rewrite(record: ModelRecord, folder):
    with OutputFolder(folder) as out:
        record.write(out)
        out.commit()
    return folder


def test_each_kind_reads_back_equal_and_writes_the_same_file(written, tmp_path):
    kind, folder = written
    record = ModelRecord.read(folder)
    assert record.kind == kind and record.version == RECORD_VERSION
    again = ModelRecord.read(_rewrite(record, tmp_path / "again"))
    assert record.outputs and again == replace(record, outputs=None)  # (the digests of the files in its folder)

    def content(path):
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("outputs", "record_blake3")}

    assert content(tmp_path / "again" / "model.json") == content(folder / "model.json")
    assert ModelRecord.read(folder / "model.json") == record  # the file itself, or its folder


def test_kind_and_version_are_always_written(written):
    kind, folder = written
    raw = json.loads((folder / "model.json").read_text())
    assert raw["record_version"] == RECORD_VERSION and raw["model_kind"] == kind
    assert list(raw)[:4] == ["record_version", "model_kind", "voxfit_version", "command"]
    assert (
        raw.get("model")
        == {"first-level": None, "runs": "fixed effects across runs", "group": "group (second level)"}[kind]
    )
    jsonschema.validate(raw, schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.planted_model_json  # (a sketch of each kind: fewer keys than a fit writes)
@pytest.mark.parametrize("kind", KINDS)
def test_a_record_made_by_hand_reads_back_equal(kind, tmp_path):
    record = ModelRecord(
        kind=kind,
        voxfit_version="0.0.1",
        command=None,
        inputs=None if kind == "runs" else [{"path": "/data/x.nii", "bytes": 3, "blake3": "0" * 64}],
        runs=[{"columns": ["a"], "n_scans": 4}] * 2 if kind == "runs" else None,
        contrasts={"a": {"expression": [1.0], "kind": "t", "dof": 3.0}},
        settings={"noise_model": "ols"},
        n_voxels=None if kind == "first-level" else 12,
    )
    assert ModelRecord.read(_rewrite(record, tmp_path / "o")) == record
    raw = json.loads((tmp_path / "o" / "model.json").read_text())
    assert "data" not in raw and "run" not in raw and raw["command"] is None  # None: not written, but command


@pytest.mark.planted_model_json
def test_a_file_older_than_the_kind_is_read_by_its_keys(written, tmp_path):
    kind, folder = written
    raw = json.loads((folder / "model.json").read_text())
    old = {k: v for k, v in raw.items() if k not in ("record_version", "model_kind", "outputs", "record_blake3")}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.json").write_text(json.dumps(old))
    record = ModelRecord.read(tmp_path / "old")
    assert record.kind == kind and record.version == 1  # (older than the key: the first form)
    assert replace(record, version=RECORD_VERSION) == replace(ModelRecord.read(folder), outputs=None)
    (tmp_path / "old" / "model.json").write_text(json.dumps({"voxfit_version": "0.0.1", "contrasts": {}}))
    assert ModelRecord.read(tmp_path / "old").kind == "first-level"  # (and the keys it lacks read as None)


@pytest.mark.planted_model_json
@pytest.mark.parametrize(
    "text, message",
    [
        (None, "holds no model.json"),
        ("{not json", "is not readable JSON (JSONDecodeError)"),
        ("[" * 100000 + "]" * 100000, "is not readable JSON (RecursionError)"),
        ("[1, 2]", "is not a voxfit model.json (not a JSON object)"),
        ('{"model": "mixed"}', "records a model of kind 'mixed'"),
        ('{"model_kind": "second-level"}', "records a model of kind 'second-level'"),
        (f'{{"record_version": {RECORD_VERSION + 1}}}', "was written by a newer voxfit"),
        ('{"record_version": "1"}', "has record_version '1', not a version"),
        ('{"record_version": 0}', "has record_version 0, not a version"),
        ('{"contrasts": []}', "holds 'contrasts' of the wrong type (list)"),
        ('{"command": "voxfit fit"}', "holds 'command' of the wrong type (str)"),
    ],
)
def test_a_broken_file_is_refused_with_a_sentence(text, message, tmp_path):
    if text is not None:
        (tmp_path / "model.json").write_text(text)
    with pytest.raises(InputError, match="rerun the fit|give the output folder|upgrade voxfit") as err:
        ModelRecord.read(tmp_path)
    assert message in str(err.value)


def test_an_unknown_kind_is_not_made():
    with pytest.raises(ValueError, match="first-level, runs, group"):
        ModelRecord(kind="first level", voxfit_version="1", command=None, contrasts={}, settings={})


def test_the_schema_is_shipped_valid_and_refuses_a_record_without_its_kind(written):
    jsonschema.Draft202012Validator.check_schema(schema())
    _, folder = written
    raw = json.loads((folder / "model.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in raw.items() if k != "model_kind"}, schema())


def test_input_digests_are_the_blake3_test_vectors(tmp_path):
    """model.json's digest of an input is BLAKE3's: the BLAKE3 team's own test vectors (``tests/data``, copied with
    their source), inputs of 0 to 102,400 bytes."""
    from voxfit.models import record

    vectors = json.loads((Path(__file__).parent / "data" / "blake3_vectors.json").read_text())
    for length, expected in vectors["hash"].items():
        path = tmp_path / f"{length}.nii"
        path.write_bytes(bytes(i % 251 for i in range(int(length))))
        assert record.input_record(path) == {"path": str(path.resolve()), "bytes": int(length), "blake3": expected}


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 4097])
def test_input_digests_are_b3sums_whole_buffers_or_not(tmp_path, size):
    """A file's digest read a buffer at a time is the digest of its bytes at once; a folder's (a Zarr store's) is
    over its files' names and digests."""
    import os

    from blake3 import blake3

    from voxfit.models import record

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "run.nii"
    path.write_bytes(data)
    expected = blake3(data).hexdigest()
    assert record.input_record(path) == {"path": str(path.resolve()), "bytes": size, "blake3": expected}
    store = tmp_path / "store.zarr"
    (store / "0").mkdir(parents=True)
    (store / "0" / "0").write_bytes(data)
    (store / ".zarray").write_bytes(b"{}")
    names = [(".zarray", blake3(b"{}").hexdigest()), (os.path.join("0", "0"), expected)]
    folder = blake3()
    for name, digest in names:
        folder.update(name.encode() + b"\0" + bytes.fromhex(digest))
    assert record._digest(store) == folder.hexdigest()


def test_digests_started_early_serve_the_same_file_only(tmp_path, monkeypatch):
    """The command line starts its inputs' digests before anything else (``voxfit._digest.start_digests``): one
    thread for the files; folders, FIFOs, missing and unnameable paths skipped; model.json takes a started digest
    only for the file it was started for (same device, inode, size and modification time), and hashes a file
    replaced since."""
    import os
    import threading

    from blake3 import blake3

    from voxfit import _digest
    from voxfit.models import record

    monkeypatch.setattr(_digest, "_started", {})
    hashed, go = [], threading.Event()
    plain = _digest._digest_of_file

    def counted(path, buf=None, mapped=False):
        go.wait(30)
        hashed.append(os.path.basename(path))
        return plain(path, buf, mapped)

    monkeypatch.setattr(_digest, "_digest_of_file", counted)
    a, b = tmp_path / "a.nii", tmp_path / "b.nii"
    a.write_bytes(b"a" * 5000)
    b.write_bytes(b"b" * 7000)
    fifo = tmp_path / "fifo.nii"
    os.mkfifo(fifo)  # (never opened: hashing a FIFO ahead would wait forever)
    _digest.start_digests([a, tmp_path, tmp_path / "missing.nii", fifo, "x\0y.nii", b, a], aside=False)
    assert sorted(_digest._started) == sorted(map(os.path.realpath, (a, b)))
    go.set()
    assert record.input_record(a)["blake3"] == blake3(b"a" * 5000).hexdigest()
    assert record.input_record(b)["blake3"] == blake3(b"b" * 7000).hexdigest()
    assert sorted(hashed) == ["a.nii", "b.nii"]  # (each once, on the started thread)
    b.unlink()
    b.write_bytes(b"c" * 7000)  # (replaced: another inode, or the same one with another modification time)
    os.utime(b, ns=(1, 1))
    assert record.input_record(b)["blake3"] == blake3(b"c" * 7000).hexdigest()
    assert sorted(hashed) == ["a.nii", "b.nii", "b.nii"]


def test_a_digest_from_maps_of_the_file_is_its_bytes_digest(tmp_path, monkeypatch):
    """The command line's digests hash each file from maps of a window at a time (``mapped``), not copies: the
    same digest as the bytes read, at every size about the window's; where a window cannot be mapped (a file
    system that maps no files) or the file is now shorter than its size said, the rest is read."""
    import mmap
    import os

    from blake3 import blake3

    from voxfit import _digest

    window = mmap.ALLOCATIONGRANULARITY
    monkeypatch.setattr(_digest, "WINDOW", window)
    data = np.random.default_rng(0).integers(0, 256, 3 * window + 7, dtype=np.uint8).tobytes()
    path = tmp_path / "run.nii"
    for size in (0, 1, window - 1, window, window + 1, 3 * window + 7):
        path.write_bytes(data[:size])
        assert _digest._digest_of_file(path, mapped=True) == blake3(data[:size]).hexdigest(), size
    maps = []

    def second_fails(*args, **kwargs):  # (the first window maps; the file system refuses the second)
        maps.append(args)
        if len(maps) > 1:
            raise OSError("no maps here")
        return mmap.mmap(*args, **kwargs)

    monkeypatch.setattr(_digest.mmap, "mmap", second_fails)
    assert _digest._digest_of_file(path, mapped=True) == blake3(data).hexdigest()
    assert len(maps) == 2
    monkeypatch.undo()
    monkeypatch.setattr(_digest, "WINDOW", window)
    stat = os.stat(path)
    longer = os.stat_result((*stat[:6], stat.st_size + 2 * window, *stat[7:]))
    monkeypatch.setattr(_digest.os, "fstat", lambda fd: longer)  # (cut short since its size was taken)
    assert _digest._digest_of_file(path, mapped=True) == blake3(data).hexdigest()


def test_the_command_line_starts_the_digests_of_every_scan_of_a_run(tmp_path, monkeypatch):
    """A run named by a folder, a pattern or a .txt list of 3-D scans has its scans' digests started as the command
    starts, as a single file's are (``voxfit.cli._start_digests``); a list that cannot be read is left to the
    reader to refuse."""
    import os

    from voxfit import _digest
    from voxfit.cli import _start_digests

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        (scans / f"scan{i}.nii").write_bytes(bytes([i]) * 1000)
    (tmp_path / "list.txt").write_text("".join(f"scans/scan{i}.nii\n" for i in (2, 0)))
    for run, want in (
        (str(scans), [0, 1, 2]),
        (str(scans / "scan*.nii"), [0, 1, 2]),
        (str(tmp_path / "list.txt"), [0, 2]),
        (str(scans / "scan1.nii"), [1]),
    ):
        monkeypatch.setattr(_digest, "_started", {})
        _start_digests([run])
        assert sorted(_digest._started) == [os.path.realpath(scans / f"scan{i}.nii") for i in want], run
    (tmp_path / "bad.txt").write_text("missing.nii\n")
    monkeypatch.setattr(_digest, "_started", {})
    _start_digests([str(tmp_path / "bad.txt")])  # (no error here: the reader says what is wrong)
    assert sorted(_digest._started) == [os.path.realpath(tmp_path / "bad.txt")]
    _start_digests(["x" * 300 + ".nii"])  # (a name too long for the system: the reader says so, in one line)


def test_an_input_is_named_as_given_and_where_links_lead(tmp_path):
    """model.json named each input by its real path: a DataLad dataset's files, links into its annex, were
    recorded as their annex objects, which tell no run, space or table. An input is named as given (absolute,
    its links and .. kept: ``a/link/..`` normalised would name another file), with the real path where links lead
    elsewhere (``target``); a plain file has none."""
    from voxfit.models import record

    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "KEY").write_bytes(b"bold")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "sub-01_bold.nii").symlink_to(tmp_path / "objects" / "KEY")
    (tmp_path / "ds" / "events.tsv").write_bytes(b"x")
    (tmp_path / "objects" / "deep").mkdir()
    (tmp_path / "objects" / "events.tsv").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "objects" / "deep", target_is_directory=True)
    (tmp_path / "events.tsv").write_bytes(b"another file")  # (where link/.. normalised would point)
    linked = record.input_record(tmp_path / "ds" / "sub-01_bold.nii")
    assert linked["path"] == str(tmp_path / "ds" / "sub-01_bold.nii")
    assert linked["target"] == str((tmp_path / "objects" / "KEY").resolve())
    assert "target" not in record.input_record(tmp_path / "ds" / "events.tsv")
    up = record.input_record(tmp_path / "link" / ".." / "events.tsv")  # (objects/events.tsv, read through the link)
    assert up["path"] == str(tmp_path / "link" / ".." / "events.tsv") and up["bytes"] == 1
    assert up["target"] == str((tmp_path / "objects" / "events.tsv").resolve())


def test_a_small_files_digest_takes_a_buffer_of_its_size(tmp_path):
    """A study digests thousands of small maps: a 4 MiB buffer for each, zeroed and faulted in anew, took a third
    of the CPU of 200 small runs (22 s of system time). The buffer is the file's size (at most CHUNK); the digest
    is BLAKE3's of the bytes, large or small, mapped or read."""
    import tracemalloc

    import blake3

    from voxfit._digest import CHUNK, _digest_of_file, file_digest

    rng = np.random.default_rng(0)
    for size in (0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7):
        path = tmp_path / f"f{size}.bin"
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path.write_bytes(data)
        want = blake3.blake3(data).hexdigest()
        assert file_digest(path) == want and _digest_of_file(path, mapped=True) == want
    if hasattr(os, "mkfifo"):  # (a pipe's size is 0 whatever it holds: read by CHUNKs, not a byte at a time)
        import threading

        fifo, data = tmp_path / "fifo", rng.integers(0, 256, CHUNK + 5, dtype=np.uint8).tobytes()
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_bytes, args=(data,))
        writer.start()
        assert _digest_of_file(fifo) == blake3.blake3(data).hexdigest()
        writer.join()
    if os.path.exists("/proc/self/status"):  # (its size says 0: read on past the first byte)
        with open("/proc/self/status", "rb") as fh:
            assert len(fh.read()) > 1 and _digest_of_file("/proc/self/status") != blake3.blake3(b"").hexdigest()
    path = tmp_path / "small.bin"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        _digest_of_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
