"""Hostile and broken output places (issue 14): temporaries that a planted link cannot redirect, a user's
hidden folder that is never taken for a stale one, and runs that leave everything or nothing — interrupted,
failing, or on a full disk — in every command."""

import errno
import gzip
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import voxfit.io.geometry
import voxfit.report
from voxfit.cli import main
from voxfit.exceptions import InputError
from voxfit.io import OutputFolder, before_commit
from voxfit.io import output as output_module
from voxfit.models import glm

from .imaging import AFFINE, N_SCANS, volume_data, write_cifti_runs, write_gifti, write_nifti

requires_matplotlib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("matplotlib") is None, reason="reports need matplotlib"
)


@pytest.fixture
def study(tmp_path):
    data = volume_data(np.random.default_rng(0))  # (files, not numbers, are tested here: one seed)
    t = np.arange(N_SCANS)
    design = pd.DataFrame({"A": (t % 4 < 2).astype(float), "B": np.cos(t / 3.0), "constant": 1.0})
    design.to_csv(tmp_path / "design.tsv", sep="\t", index=False)
    events = pd.DataFrame({"onset": [0.0, 8.0, 16.0], "duration": [2.0, 2.0, 2.0], "trial_type": ["a", "b", "a"]})
    events.to_csv(tmp_path / "events.tsv", sep="\t", index=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return {
        "dir": tmp_path,
        "bold": write_nifti(tmp_path / "bold.nii.gz", data),
        "design": tmp_path / "design.tsv",
        "events": tmp_path / "events.tsv",
        "out": tmp_path / "res",
        "victim": victim,
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fit_args(s, *extra, out=None):
    return [
        "fit",
        s["bold"],
        "--design",
        s["design"],
        "--contrast",
        "task=A - B",
        "-o",
        out or s["out"],
        "--quiet",
        *extra,
    ]


def design_args(s, *extra, out=None):
    return ["design", s["events"], "--tr", "2", "--n-scans", "12", "-o", out or s["dir"] / "d.tsv", "--quiet", *extra]


def group_args(s, *extra, out=None):
    paths = []
    rng = np.random.default_rng(5)
    for i in range(6):
        path = s["dir"] / f"sub-{i:02d}_effect.nii.gz"
        nib.save(nib.Nifti1Image((1 + rng.standard_normal((6, 5, 4))).astype(np.float32), AFFINE), path)
        paths.append(path)
    return ["group", *paths, "-o", out or s["dir"] / "g", "--quiet", *extra]


def listing(folder: Path) -> list[str]:
    """Every entry under `folder`, hidden ones included, relative and sorted (empty if it does not exist)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_on_call(k, original):
    """`original`, except that call number `k` (1-based) finds the disk full."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == k:
            enospc()
        return original(*args, **kwargs)

    return wrapper


# --- class 4: temporary files ---------------------------------------------------------------------------


def test_design_ignores_planted_links_at_the_old_temporary_names(study, capsys):
    out = study["dir"] / "d.tsv"
    for pid in {os.getpid(), os.getppid()}:  # the names that used to be used, pointing at the victim
        (study["dir"] / f".d.tsv.partial-{pid}").symlink_to(study["victim"])
    code, _, err = run(capsys, *design_args(study))
    assert code == 0, err
    assert study["victim"].read_text() == "precious"
    assert out.is_file() and not out.is_symlink() and out.read_text().startswith("a\t")
    leftovers = [p.name for p in study["dir"].iterdir() if p.name.startswith(".") and not p.is_symlink()]
    assert leftovers == []


def test_design_replaces_a_link_at_the_output_not_its_target(study, capsys):
    out = study["dir"] / "d.tsv"
    out.symlink_to(study["dir"] / "nowhere")
    code, _, err = run(capsys, *design_args(study))
    assert code == 2 and "exists" in err  # a dangling link too: without --force, refused
    assert not (study["dir"] / "nowhere").exists()
    out.unlink()
    out.symlink_to(study["victim"])
    code, _, err = run(capsys, *design_args(study))
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, *design_args(study, "--force"))
    assert code == 0, err
    assert study["victim"].read_text() == "precious"
    assert not out.is_symlink() and out.read_text().startswith("a\t")


def test_design_file_has_ordinary_permissions(study, capsys):
    old = os.umask(0o022)
    try:
        assert run(capsys, *design_args(study))[0] == 0
    finally:
        os.umask(old)
    assert (study["dir"] / "d.tsv").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_exclusive_temporaries_are_random_and_never_follow_links(tmp_path):
    fd1, a = output_module.exclusive_file(tmp_path, "x")
    fd2, b = output_module.exclusive_file(tmp_path, "x")
    os.close(fd1)
    os.close(fd2)
    assert a != b and a.name.startswith(".x.") and a.parent == tmp_path
    target = tmp_path / "victim"
    target.write_text("precious")
    (tmp_path / "t").symlink_to(target)
    output_module.write_file_atomically(tmp_path / "t", lambda p: p.write_text("new"))
    assert target.read_text() == "precious" and (tmp_path / "t").read_text() == "new"
    assert not (tmp_path / "t").is_symlink()


def test_symlinked_output_folder_is_refused(study, capsys):
    elsewhere = study["dir"] / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("keep")
    study["out"].symlink_to(elsewhere, target_is_directory=True)
    for extra in ((), ("--force",)):
        code, _, err = run(capsys, *fit_args(study, *extra))
        assert code == 2 and "symbolic link" in err and str(elsewhere.resolve()) in err, err
        assert listing(elsewhere) == ["mine.txt"]
    code, _, err = run(capsys, *group_args(study, "--force", out=study["out"]))
    assert code == 2 and "symbolic link" in err
    assert listing(elsewhere) == ["mine.txt"]


def test_planted_links_named_like_outputs_are_replaced_not_followed(study, capsys):
    study["out"].mkdir()
    (study["out"] / "model.json").symlink_to(study["victim"])
    elsewhere = study["dir"] / "elsewhere"
    elsewhere.mkdir()
    (study["out"] / "mask.nii.gz").symlink_to(elsewhere / "mask.nii.gz")  # a dangling link
    for pid in {os.getpid(), os.getppid()}:  # the old name of the hidden folder, pointing elsewhere
        (study["out"] / f".voxfit-partial-{pid}").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 0, err
    assert study["victim"].read_text() == "precious"
    assert listing(elsewhere) == []
    assert not (study["out"] / "model.json").is_symlink() and json.loads((study["out"] / "model.json").read_text())
    assert not (study["out"] / "mask.nii.gz").is_symlink()
    # the planted links of other names are the user's: left alone
    assert all((study["out"] / f".voxfit-partial-{pid}").is_symlink() for pid in {os.getpid(), os.getppid()})


def test_a_users_folder_named_like_a_temporary_is_never_deleted(study, capsys):
    study["out"].mkdir()
    mine = study["out"] / ".voxfit-partial-999999"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run(capsys, *fit_args(study))
    assert code == 2 and "is not empty" in err  # the folder holds the user's folder
    assert (mine / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 0, err
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "marker, stale",
    [
        (lambda: {"host": socket.gethostname(), "pid": 999999999}, True),  # this host, no such process
        (lambda: {"host": socket.gethostname() + "-other", "pid": 999999999}, False),  # another host's (NFS)
        (lambda: {"host": socket.gethostname(), "pid": os.getpid()}, False),  # a process that runs
        (lambda: "not json", False),
    ],
)
def test_only_a_provably_stale_temporary_is_removed(study, capsys, marker, stale):
    study["out"].mkdir()
    folder = study["out"] / ".voxfit-partial-abc123"
    folder.mkdir()
    value = marker()
    (folder / "voxfit-run.json").write_text(value if isinstance(value, str) else json.dumps(value))
    code, _, err = run(capsys, *fit_args(study))
    assert (code == 0) == stale, err
    assert folder.exists() != stale


def test_a_folder_another_run_is_writing_into_is_refused(study, capsys):
    """Two runs with --force into one folder each committed their files: one's model.json beside the other's maps,
    exit 0 for both (a tester's). A run's hidden folder, marked by a voxfit process of this host that runs, makes
    another refuse the folder, before it reads anything and again once its own hidden folder is made (two at once:
    neither goes on); the other run's folder is left alone. A marker of another host, of this process, or of a
    process id now another program's does not block (a reviewer's: such a leftover blocked the folder for good)."""
    study["out"].mkdir()
    other = study["out"] / ".voxfit-partial-live"
    other.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "voxfit"])
    try:
        marker = {"host": socket.gethostname(), "pid": writer.pid, "started": "2026-12-07T14:00:00+00:00"}
        (other / "voxfit-run.json").write_text(json.dumps(marker))
        code, _, err = run(capsys, *fit_args(study, "--force"))
        assert code == 2 and err.count("\n") == 1, err
        assert f"another voxfit run (process {writer.pid}, started 2026-12-07" in err and ".voxfit-partial-live" in err
        assert listing(study["out"]) == [".voxfit-partial-live", ".voxfit-partial-live/voxfit-run.json"]
        api = study["dir"] / "api"
        with OutputFolder(api, alone=True) as first:
            (first.staging / "voxfit-run.json").write_text(json.dumps({**marker, "pid": writer.pid}))
            with pytest.raises(InputError, match="another voxfit run"), OutputFolder(api, force=True, alone=True):
                pass
    finally:
        writer.kill()
        writer.wait()
    sleeper = subprocess.Popen(["sleep", "60"])  # (another program, under a reused id)
    try:
        for leftover in ({**marker, "host": "node17"}, {**marker, "pid": os.getpid()}, {**marker, "pid": sleeper.pid}):
            (other / "voxfit-run.json").write_text(json.dumps(leftover))
            code, _, err = run(capsys, *fit_args(study, "--force"))
            assert code == 0, (leftover, err)
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputFolder(study["dir"] / "shared", force=True), OutputFolder(study["dir"] / "shared", force=True):
        pass  # (a study's workers share a group's folder: not alone)


def test_a_symlink_named_like_a_stale_temporary_is_not_followed(study, capsys):
    elsewhere = study["dir"] / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "voxfit-run.json").write_text(json.dumps({"host": socket.gethostname(), "pid": 999999999}))
    study["out"].mkdir()
    (study["out"] / ".voxfit-partial-zzz").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 0, err
    assert listing(elsewhere) == ["voxfit-run.json"]


def test_hidden_folder_is_random_private_and_marked(tmp_path):
    with OutputFolder(tmp_path / "o") as a, OutputFolder(tmp_path / "o", force=True) as b:
        assert a.staging != b.staging
        assert a.staging.stat().st_mode & 0o777 == 0o700
        marker = json.loads((a.staging / "voxfit-run.json").read_text())
        assert marker["host"] == socket.gethostname() and marker["pid"] == os.getpid()
        a.path("x.txt").write_text("a")
        b.path("y.txt").write_text("b")
        assert a.commit() == [tmp_path / "o" / "x.txt"]
    assert listing(tmp_path / "o") == ["x.txt"]  # b was not committed: only its own folder went


def test_killed_run_leaves_a_temporary_that_the_next_run_removes(study):
    """A real SIGKILL: the next run in the folder removes the hidden folder (its process is gone)."""
    code = (
        "import os, sys; from voxfit.io import OutputFolder\n"
        "out = OutputFolder(sys.argv[1]).__enter__(); out.path('a.txt').write_text('x'); os._exit(9)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(voxfit.io.__file__).parents[2])}
    subprocess.run([sys.executable, "-c", code, str(study["out"])], env=env, check=False)
    hidden = [p for p in study["out"].iterdir() if p.name.startswith(".voxfit-partial-")]
    assert len(hidden) == 1
    with OutputFolder(study["out"]) as out:  # not refused as non-empty: the stale folder is gone
        assert not hidden[0].exists()
        out.commit()


def _write_run(tmp_path, kind: str) -> Path:
    if kind == "cifti":
        return write_cifti_runs(tmp_path, np.random.default_rng(0), frames=(200,))[0]
    write_nifti(tmp_path / "mask.nii", np.ones(volume_data(np.random.default_rng(0), n=1).shape[:3], np.uint8))
    return write_nifti(tmp_path / "run.nii", volume_data(np.random.default_rng(0), n=200) * 10 + 100)


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MAP_POPULATE"), reason="files are mapped on Linux")
@pytest.mark.parametrize(
    "kind, reader, method", [("cifti", "CiftiReader", "mapped_series"), ("nifti", "NiftiReader", "mapped_scans")]
)
def test_a_run_truncated_while_mapped_leaves_what_a_killed_run_does(tmp_path, capsys, kind, reader, method):
    """A run mapped from its file (a CIFTI run held as its file's map, ``CiftiReader.mapped_series``; a NIfTI run
    gathered from one, ``NiftiReader.mapped_scans``) and truncated while it is fitted: the process ends as one
    killed (SIGBUS, as for any memory map of a file cut short, nibabel's own), leaving no output folder or only
    its hidden temporary, which the next run there removes as it writes its maps."""
    import signal

    path = _write_run(tmp_path, kind)
    design = tmp_path / "design.tsv"
    pd.DataFrame({"A": np.sin(np.arange(200) / 5.0), "constant": 1.0}).to_csv(design, sep="\t", index=False)
    out = tmp_path / "out"
    argv = ["fit", str(path), "--design", str(design), "--contrast", "a=A", "-o", str(out)]
    argv += ["--mask", str(tmp_path / "mask.nii")] if kind == "nifti" else []  # (an explicit mask's run is mapped)
    code = (
        "import os, sys\n"
        "from voxfit.io import readers\n"
        "from voxfit.cli import main\n"
        f"mapped = readers.{reader}.{method}\n"
        "def truncated(self, *args):\n"
        "    held = mapped(self, *args)\n"
        "    os.truncate(self.paths[-1], 1024)  # (another program cuts the file short)\n"
        "    return held\n"
        f"readers.{reader}.{method} = truncated\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(voxfit.io.__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-2000:])
    assert not out.exists() or all(p.name.startswith(".voxfit-partial-") for p in out.iterdir())
    _write_run(tmp_path, kind)  # (the file written again)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert not any(p.name.startswith(".voxfit-partial-") for p in out.iterdir())
    assert (out / "model.json").exists()


def _change(path: Path, how: str) -> None:
    """Another program changes `path`: rewrites bytes in place (its size kept; its modification time too, set back
    as ``touch -r`` does), replaces it by a copy, or removes it."""
    if how.startswith("written"):
        stamp = path.stat().st_mtime_ns
        with open(path, "r+b") as fh:
            fh.seek(-8, os.SEEK_END)
            fh.write(b"\x01" * 8)
        later = stamp if how == "written, time set back" else stamp + 1_000_000  # (as touch -r; the clock's tick)
        os.utime(path, ns=(stamp, later))
    elif how == "replaced":
        copy = path.with_name("copy-" + path.name)
        copy.write_bytes(path.read_bytes())
        os.replace(copy, path)
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["written", "written, time set back", "replaced", "removed"])
@pytest.mark.parametrize(
    "command, what", [("fit", "data"), ("fit", "mask"), ("group", "data"), ("group", "mask"), ("group", "variances")]
)
def test_an_input_changed_while_the_run_reads_it_is_refused_and_leaves_nothing(
    study, capsys, monkeypatch, how, command, what
):
    """An input another program writes to, replaces or removes after the run opened it (found as the run is
    recorded: its identity, device, inode, size and modification time, is not what it was): exit 2, one line naming
    it, no output. Its maps could mix old and new data (a .nii overwritten in place while read gave maps of
    neither), and model.json would describe another file. So for the data, an explicit mask and a mixed group's
    variance maps alike (those two were recorded by name only). Unchanged, the same run writes its maps."""
    mask = write_nifti(study["dir"] / "mask.nii", np.ones((6, 5, 4), dtype=np.uint8))
    if command == "fit":  # (uncompressed: bytes written in place leave a readable file)
        bold = write_nifti(study["dir"] / "bold.nii", volume_data(np.random.default_rng(0)))
        argv = fit_args({**study, "bold": bold}, "--mask", mask)
    else:
        argv = group_args(study, "--mask", mask, out=study["out"])
        for k, path in enumerate(argv[1:7], start=1):
            argv[k] = path.with_suffix("").with_suffix(".nii")
            nib.save(nib.load(path), argv[k])
        variances = [study["dir"] / f"sub-{k:02d}_variance.nii" for k in range(6)]
        for k, path in enumerate(variances):
            write_nifti(path, np.full((6, 5, 4), 0.5 + k / 10, dtype=np.float32))
        argv += ["--variances", *variances] if what == "variances" else []
    victim = {"mask": mask, "variances": study["dir"] / "sub-02_variance.nii"}.get(
        what, Path(argv[1 if command == "fit" else 3])
    )
    write_maps, lock, changed = voxfit.io.geometry.save_nifti, threading.Lock(), []

    def save_nifti(img, path):  # (the first map written: the data have been read; maps are written on threads)
        with lock:
            if not changed:
                changed.append(_change(victim, how))
        return write_maps(img, path)

    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", save_nifti)
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    said = "was written to, replaced or removed while this run read it" if how != "removed" else ""
    assert f"{victim} {said}".strip() in err  # (a removed map: its digest, for model.json, finds no file)
    assert not study["out"].exists()
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", write_maps)
    if how == "removed":
        return
    code, _, err = run(capsys, *argv)  # (the file as it is now, read again from the start)
    assert code == 0, err
    assert (study["out"] / "model.json").exists()


@pytest.mark.parametrize(
    "name, image", [("run.nii", nib.Nifti1Image), ("run.nii.gz", nib.Nifti1Image), ("run2.nii", nib.Nifti2Image)]
)
def test_a_single_file_nifti_whose_vox_offset_is_in_its_header_is_read_from_its_end(study, capsys, name, image):
    """vox_offset 0 in a single-file NIfTI (a header written from a nibabel image's own, which holds 0, or a
    converter's slip), the data after the header: nibabel reads from byte 0, and the header's bytes were the first
    voxels' values, every value shifted, in maps fitted without a word. Read from the header's end (352; NIfTI-2:
    544), as the NIfTI-1 standard says of a smaller offset (niftilib starts at 348), with a warning: the maps of the
    file as nibabel writes it, from the command line and from the image loaded by nibabel. A NIfTI pair's .img,
    which holds data alone, starts at 0."""
    data = volume_data(np.random.default_rng(0))
    saved = study["dir"] / ("saved" + name[len("run") :])
    nib.save(image(data, AFFINE), saved)
    raw = gzip.decompress(saved.read_bytes()) if name.endswith(".gz") else saved.read_bytes()
    header = image(data, AFFINE).header  # (vox_offset 0)
    assert header["vox_offset"] == 0
    least = len(header.binaryblock) + 4
    raw = header.binaryblock + raw[len(header.binaryblock) :]  # (the same file, its vox_offset 0)
    path = study["dir"] / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    assert nib.load(path).dataobj.offset == 0  # (nibabel's reading)
    want = study["dir"] / "want"
    assert run(capsys, *fit_args({**study, "bold": saved}, out=want))[0] == 0
    code, _, err = run(capsys, *[a for a in fit_args({**study, "bold": path}) if a != "--quiet"])
    assert code == 0, err
    assert f"vox_offset is 0; read as {least}, as the NIfTI standard says" in err
    for map_name in ("contrast-task_stat-z_statmap.nii.gz", "stat-mean_statmap.nii.gz"):
        got, expected = (np.asarray(nib.load(folder / map_name).dataobj) for folder in (study["out"], want))
        np.testing.assert_array_equal(got, expected)
    with pytest.warns(UserWarning, match="vox_offset is 0"):
        library = voxfit.fit_images(nib.load(path), study["design"], {"task": "A - B"})
    expected = voxfit.fit_images(saved, study["design"], {"task": "A - B"})
    np.testing.assert_array_equal(library.contrasts["task"].z, expected.contrasts["task"].z)
    pair = study["dir"] / "pair.img"
    nib.save(nib.Nifti1Pair(data, AFFINE), pair)
    assert nib.load(pair).dataobj.offset == 0
    assert run(capsys, *fit_args({**study, "bold": pair}, "--force"))[0] == 0


# --- class 6: nothing left by a failed run ------------------------------------------------------------------


@requires_matplotlib
def test_interrupt_while_the_report_is_made_leaves_nothing(study, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(voxfit.report, "build_report", interrupted)
    code, _, err = run(capsys, *fit_args(study, "--report"))
    assert code == 130 and "no output was written" in err
    assert not study["out"].exists()


@requires_matplotlib
def test_full_disk_while_the_report_is_written_leaves_nothing(study, capsys, monkeypatch):
    original = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "report.html":
            enospc()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = run(capsys, *fit_args(study, "--report"))
    assert code == 2 and err.count("\n") == 1, err
    assert "no space left on device while writing" in err and str(study["out"] / "report.html") in err
    assert not study["out"].exists()


@requires_matplotlib
def test_report_is_committed_with_the_maps(study, capsys):
    code, out, err = run(capsys, *[a for a in fit_args(study, "--report") if a != "--quiet"])
    assert code == 0, err
    assert f"report: {study['out'] / 'report.html'}" in out
    names = listing(study["out"])
    assert "report.html" in names and "model.json" in names and not [n for n in names if n.startswith(".")]


@pytest.mark.parametrize("k", [1, 3, "last"])
def test_full_disk_while_maps_are_written_leaves_nothing(study, capsys, monkeypatch, k):
    calls = []
    original = voxfit.io.geometry.save_nifti
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", lambda img, path: (calls.append(path), original(img, path)))
    assert run(capsys, *fit_args(study, out=study["dir"] / "count"))[0] == 0
    n = len(calls)
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", fail_on_call(n if k == "last" else k, original))
    code, _, err = run(capsys, *fit_args(study))
    assert code == 2 and err.count("\n") == 1 and "no space left on device while writing " + str(study["out"]) in err
    assert "Traceback" not in err
    assert not study["out"].exists()


@pytest.mark.parametrize("name", ["model.json", "design.tsv"])
def test_full_disk_while_the_record_or_tables_are_written_leaves_nothing(study, capsys, monkeypatch, name):
    original_text, original_design = Path.write_text, glm.write_design

    def write_text(self, *args, **kwargs):
        if self.name == name:
            enospc()
        return original_text(self, *args, **kwargs)

    def write_design(path, *args, **kwargs):
        if Path(path).name == name:
            enospc()
        return original_design(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(glm, "write_design", write_design)
    code, _, err = run(capsys, *fit_args(study))
    assert code == 2 and "no space left on device while writing" in err and name in err, err
    assert not study["out"].exists()


def test_full_disk_in_a_group_run_leaves_nothing(study, capsys, monkeypatch):
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", fail_on_call(2, voxfit.io.geometry.save_nifti))
    code, _, err = run(capsys, *group_args(study))
    assert code == 2 and "no space left on device while writing" in err, err
    assert not (study["dir"] / "g").exists()


def test_full_disk_in_design_leaves_nothing(study, capsys, monkeypatch):
    import voxfit.design.read

    monkeypatch.setattr(voxfit.design.read, "write_design", enospc)
    code, _, err = run(capsys, *design_args(study))
    assert code == 2 and err.count("\n") == 1
    assert f"no space left on device while writing {study['dir'] / 'd.tsv'}" in err, err
    assert not (study["dir"] / "d.tsv").exists()
    assert not [p for p in study["dir"].iterdir() if p.name.startswith(".")]


@requires_matplotlib
def test_full_disk_in_report_keeps_the_old_report(study, capsys, monkeypatch):
    assert run(capsys, *fit_args(study, "--report"))[0] == 0
    before = snapshot(study["out"])
    original = Path.write_text
    monkeypatch.setattr(
        Path, "write_text", lambda self, *a, **k: enospc() if ".partial" in self.name else original(self, *a, **k)
    )
    code, _, err = run(capsys, "report", study["out"], "--force", "--quiet")
    assert code == 2 and "no space left on device while writing" in err and "report.html" in err, err
    assert snapshot(study["out"]) == before and listing(study["out"]) == sorted(before)


def test_failing_run_removes_the_folders_it_created(study, capsys, monkeypatch):
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", enospc)
    deep = study["dir"] / "new" / "a" / "b" / "c"
    code, _, err = run(capsys, *fit_args(study, out=deep))
    assert code == 2, err
    assert not (study["dir"] / "new").exists()
    (study["dir"] / "new").mkdir()
    (study["dir"] / "new" / "mine.txt").write_text("keep")
    code, _, err = run(capsys, *group_args(study, out=deep))
    assert code == 2, err
    assert listing(study["dir"] / "new") == ["mine.txt"]


def test_bad_input_after_the_folder_was_made_removes_it(study, capsys):
    deep = study["dir"] / "new" / "a"
    code, _, err = run(capsys, "fit", study["bold"], "--design", study["design"], "--contrast", "x=nosuch", "-o", deep)
    assert code == 2 and "nosuch" in err
    assert not (study["dir"] / "new").exists()


def test_force_keeps_other_files_and_replaces_outputs_atomically(study, capsys):
    assert run(capsys, *fit_args(study))[0] == 0
    (study["out"] / "mine.txt").write_text("keep me")
    old_model = (study["out"] / "model.json").read_bytes()
    keep = study["dir"] / "old-model.json"
    os.link(study["out"] / "model.json", keep)  # a hard link sees whether the file was rewritten in place
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 0, err
    assert (study["out"] / "mine.txt").read_text() == "keep me"
    assert keep.read_bytes() == old_model  # replaced by a rename, not rewritten
    assert not os.path.samefile(keep, study["out"] / "model.json")
    assert not [n for n in listing(study["out"]) if n.startswith(".")]


def test_a_failed_commit_restores_what_it_replaced(study, capsys, monkeypatch):
    assert run(capsys, *fit_args(study))[0] == 0
    (study["out"] / "mine.txt").write_text("keep me")
    before = snapshot(study["out"])
    monkeypatch.setattr(output_module.os, "replace", fail_on_call(4, os.replace))
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 2 and "no space left on device while writing" in err, err
    assert snapshot(study["out"]) == before and listing(study["out"]) == sorted(before)


def test_commit_hooks_add_files_and_a_failing_hook_commits_nothing(tmp_path):
    def add(out):
        out.path("extra.txt").write_text("x")

    with before_commit(add), OutputFolder(tmp_path / "o") as out:
        out.path("a.txt").write_text("a")
        files = out.commit()
    assert [f.name for f in files] == ["a.txt", "extra.txt"]

    def fail(out):
        raise InputError("no")

    with pytest.raises(InputError), before_commit(fail), OutputFolder(tmp_path / "p") as out:
        out.path("a.txt").write_text("a")
        out.commit()
    assert not (tmp_path / "p").exists()


def test_interrupt_held_during_the_commit_is_reported_after_it(study, capsys, monkeypatch):
    original = output_module.OutputFolder._move_all

    def move_all(self):
        original(self)
        raise KeyboardInterrupt  # as a Ctrl-C held during the renames arrives when they are done

    monkeypatch.setattr(output_module.OutputFolder, "_move_all", move_all)
    code, _, err = run(capsys, *fit_args(study))
    assert code == 130 and "interrupted after the output was written to" in err, err


@pytest.mark.parametrize("where", ["input", "maps", "data"])
def test_failing_demo_leaves_nothing(tmp_path, capsys, monkeypatch, where):
    from voxfit.models import demo  # (before any patch: the demo binds save_nifti as it is imported)

    def half_written(img, path):  # the synthetic run's file is begun, then the disk is full
        Path(path).write_bytes(b"\x1f\x8b" + bytes(1000))
        enospc()

    if where == "input":
        monkeypatch.setattr(demo, "save_nifti", half_written)
    elif where == "maps":
        monkeypatch.setattr(voxfit.io.geometry, "save_nifti", fail_on_call(3, voxfit.io.geometry.save_nifti))
    else:  # the data are moved in, and model.json rewritten, in the hidden folder before the commit
        monkeypatch.setattr(demo, "_keep_data", enospc)
    out = tmp_path / "new" / "demo"
    code, _, err = run(capsys, "demo", "-o", out, "--quiet")
    assert code == 2 and "no space left on device while writing" in err, err
    assert listing(tmp_path) == []


def test_full_disk_with_several_runs_leaves_nothing(study, capsys, monkeypatch):
    bold2 = write_nifti(study["dir"] / "bold2.nii.gz", volume_data(np.random.default_rng(1)))
    args = [
        "fit",
        study["bold"],
        bold2,
        "--design",
        study["design"],
        study["design"],
        "--contrast",
        "task=A - B",
        "-o",
        study["out"],
        "--quiet",
    ]
    assert run(capsys, *args[:-3], "-o", study["dir"] / "ok", "--quiet")[0] == 0  # the runs are fine
    monkeypatch.setattr(voxfit.io.geometry, "save_nifti", fail_on_call(4, voxfit.io.geometry.save_nifti))
    code, _, err = run(capsys, *args)
    assert code == 2 and "no space left on device while writing" in err, err
    assert not study["out"].exists()


def test_full_disk_in_nibabels_save_leaves_nothing(study, capsys, monkeypatch):
    """Surface (GIFTI) maps are written by nibabel itself."""
    matrix = 100 + np.random.default_rng(0).standard_normal((N_SCANS, 30)).astype(np.float32)
    bold = write_gifti(study["dir"] / "lh.func.gii", matrix)
    monkeypatch.setattr(nib, "save", fail_on_call(2, nib.save))
    code, _, err = run(capsys, "fit", bold, "--design", study["design"], "--contrast", "t=A", "-o", study["out"])
    assert code == 2 and "no space left on device while writing" in err, err
    assert not study["out"].exists()


@requires_matplotlib
def test_report_command_replaces_planted_links_not_their_targets(study, capsys):
    assert run(capsys, *fit_args(study))[0] == 0
    (study["out"] / "report.html").symlink_to(study["victim"])
    for pid in {os.getpid(), os.getppid()}:
        (study["out"] / f".report.html.partial-{pid}").symlink_to(study["dir"] / f"planted-{pid}")
    code, _, err = run(capsys, "report", study["out"], "--force", "--quiet")
    assert code == 0, err
    assert study["victim"].read_text() == "precious" and not list(study["dir"].glob("planted-*"))
    page = study["out"] / "report.html"
    assert not page.is_symlink() and page.read_text().startswith("<!DOCTYPE")
    assert not [p for p in study["out"].iterdir() if p.name.startswith(".") and not p.is_symlink()]


def test_a_folder_named_like_an_output_is_refused_not_replaced(study, capsys):
    study["out"].mkdir()
    (study["out"] / "model.json").mkdir()
    (study["out"] / "model.json" / "mine.txt").write_text("keep")
    code, _, err = run(capsys, *fit_args(study, "--force"))
    assert code == 2 and "model.json is a folder" in err, err
    assert listing(study["out"]) == ["model.json", "model.json/mine.txt"]


@pytest.mark.parametrize("step", ["make_folder", "mkdtemp"])
def test_a_signal_while_the_output_folder_is_made_leaves_nothing(tmp_path, monkeypatch, step):
    """SIGINT just after the output folder (or its hidden partial folder) is made, before the command's `with`
    block is entered: the folders are removed and the interrupt goes on (a race seen once in the suite: the
    command exited 130 with its one line and left an empty output folder)."""
    import signal

    target = (output_module, "make_folder") if step == "make_folder" else (output_module.tempfile, "mkdtemp")
    real = getattr(*target)

    def made_then_signalled(*args, **kwargs):
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once unless held
        return made

    monkeypatch.setattr(*target, made_then_signalled)
    with pytest.raises(KeyboardInterrupt), OutputFolder(tmp_path / "a" / "out"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_signal_hold_leaves_a_handler_installed_from_c_alone(tmp_path, monkeypatch):
    """A handler Python did not install (None from signal.getsignal, as in some embedding programs) cannot be put
    back from Python: that signal is not held, and the folder is made and committed as usual."""
    import signal

    real = signal.getsignal
    before = real(signal.SIGTERM)
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real(s))
    with OutputFolder(tmp_path / "o") as out:
        out.path("a.txt").write_text("x")
        out.commit()
    assert (tmp_path / "o" / "a.txt").read_text() == "x"
    assert real(signal.SIGTERM) is before


@pytest.mark.parametrize("command", ["demo", "group"])
def test_an_output_folder_under_a_file_names_the_file(tmp_path, capsys, command):
    """-o afile/sub: the system's words were "File exists" (demo) or "Not a directory", naming no file."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    maps = [write_nifti(tmp_path / f"sub-{i}.nii", np.full((3, 3, 3), i + 1.0, np.float32)) for i in range(3)]
    code, _, err = run(capsys, *(["demo"] if command == "demo" else ["group", *maps]), "-o", out, "--quiet")
    assert code == 2 and err.count("\n") == 1, err
    assert f"cannot write to output folder {out}: {tmp_path / 'afile'} is a file, not a folder" in err, err
    (tmp_path / "link").symlink_to(tmp_path / "unmounted" / "disk")  # (a disk not mounted: "File exists")
    command_line = ["demo"] if command == "demo" else ["group", *maps]
    code, _, err = run(capsys, *command_line, "-o", tmp_path / "link" / "sub")
    link, target = tmp_path / "link", tmp_path / "unmounted" / "disk"
    assert code == 2 and f"{link} is a link to {target}, which is not there" in err, err


def test_an_spm_mat_sidecar_that_moves_the_scans_is_refused_and_one_that_differs_is_said(study, capsys):
    """SPM reads a .nii's ``name.mat`` (each scan's matrix, 1-based) in place of its header, nibabel does not: a
    4-D run realigned by SPM's "Estimate" but not resliced was fitted without a word, voxel by voxel across scans
    SPM places apart (and SPM's own fit refuses them: spm_check_orientations). Scans placed apart: exit 2 saying
    to reslice; one matrix other than the header's: a warning (the maps carry the header's); the header's own
    matrix: nothing; a .mat that is not MATLAB's: a warning, and the run is fitted."""
    from scipy.io import savemat

    bold = study["dir"] / "bold.nii"
    img = nib.load(study["bold"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), bold)
    n = img.shape[3]
    spm = img.affine @ np.linalg.inv(np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1.0]]))
    args = [a for a in fit_args({**study, "bold": bold}) if a != "--quiet"]  # (warnings said)
    mats = np.repeat(spm[:, :, None], n, axis=2)
    mats[1, 3, 7:] += 0.3  # (scan 8 on moved 0.3 mm)
    savemat(bold.with_suffix(".mat"), {"mat": mats})
    code, _, err = run(capsys, *args)
    assert code == 2 and "places its scans apart (scan 8 moved" in err and "reslice" in err
    assert not study["out"].exists()
    for mats, said in ((np.repeat(spm[:, :, None], n, axis=2), None), (spm + 2 * np.eye(4)[0], "otherwise than")):
        savemat(bold.with_suffix(".mat"), {"mat": mats} if mats.ndim == 3 else {"M": mats})
        code, _, err = run(capsys, *args, "--force")
        assert code == 0, err
        assert (said in err) if said else "bold.mat" not in err
    # the first scan's matrix alone, the others zeros (as spm_vol writes them): SPM reads zeros as the header's
    # (they were read as scans placed apart, exit 2)
    first = np.zeros((4, 4, n))
    first[:, :, 0] = spm
    savemat(bold.with_suffix(".mat"), {"mat": first})
    code, _, err = run(capsys, *args, "--force")
    assert code == 0 and "bold.mat" not in err, err
    bold.with_suffix(".mat").write_bytes(b"not MATLAB's" * 8)
    code, _, err = run(capsys, *args, "--force")
    assert code == 0 and "bold.mat could not be read" in err
