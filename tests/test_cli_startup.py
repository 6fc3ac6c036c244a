"""Start-up of the command line: what each path has imported when it first reads its data, and the group maps read
while the numerical modules import (``voxfit.io.dataset.preloaded``). No timings: modules and calls."""

import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.testing as npt
import pandas as pd
import pytest

import voxfit
from voxfit.cli import main
from voxfit.io import dataset as io_dataset
from voxfit.io.dataset import load, preloaded

from .imaging import N_SCANS, SHAPE, volume_data, write_nifti

# Imported by no path before its data are read: statistics, tables, compilers, studies, plots, schemas, clusters,
# and voxfit's numerical layers (they import while the data are read).
HEAVY = (
    "scipy.stats",
    "scipy.linalg",
    "pandas",
    "numba",
    "bids",
    "matplotlib",
    "jsonschema",
    "dask",
    "voxfit.core",
    "voxfit.engine",
    "voxfit.design",
    "voxfit.inference",
    "voxfit.models.glm",
    "voxfit.models.second_level",
)

# The child: an audit hook (PEP 578) that, at the first open of the file named argv[1], prints the HEAVY modules
# already imported and ends the process; then voxfit, as `python -m voxfit` runs it.
HOOK = f"""
import os, sys
_target = sys.argv[1]

def _in_digest(frame):  # (model.json's digest of the file, which the command line starts first, is not its read)
    while frame is not None and not frame.f_code.co_filename.endswith("_digest.py"):
        frame = frame.f_back
    return frame is not None

def _hook(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.basename(args[0]) == _target \
            and not _in_digest(sys._getframe(1)):
        os.write(1, ("FIRST_READ " + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n").encode())
        os._exit(0)

sys.addaudithook(_hook)
sys.argv = ["voxfit", *sys.argv[2:]]
import runpy
runpy.run_module("voxfit", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def files(tmp_path):
    """A 4-D .nii.gz, a design, an events file and four group maps. One seed: these tests are of the process (what
    it imports, how it ends), which the values do not change; each seed ran every one of them again (11 s)."""
    rng = np.random.default_rng(0)
    write_nifti(tmp_path / "bold.nii.gz", volume_data(rng))
    t = np.arange(N_SCANS)
    pd.DataFrame({"a": (t % 4 < 2).astype(float), "constant": 1.0}).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    pd.DataFrame({"onset": [0.0, 8.0], "duration": 4.0, "trial_type": "a"}).to_csv(
        tmp_path / "ev.tsv", sep="\t", index=False
    )
    for k in range(4):
        write_nifti(tmp_path / f"g{k}.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
    return tmp_path


def _child(code: str, *argv, cwd=None) -> str:
    """The stdout of ``python -c code argv`` with voxfit from this checkout, which must exit 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(voxfit.__file__).parents[1])}
    command = [sys.executable, "-c", code, *argv]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _imported_at_first_read(folder: Path, target: str, *argv) -> set[str]:
    lines = [line for line in _child(HOOK, target, *argv, cwd=folder).splitlines() if line.startswith("FIRST_READ")]
    assert lines, f"never read {target}"
    return set(filter(None, lines[0].split(" ", 1)[1].split(",")))


@pytest.mark.parametrize(
    "target, argv",
    [
        ("bold.nii.gz", ["fit", "bold.nii.gz", "--design", "d.tsv", "--contrast", "a=a", "-o", "o1"]),
        ("bold.nii.gz", ["fit", "bold.nii.gz", "--events", "ev.tsv", "--tr", "2", "--noise", "ar1", "-o", "o2"]),
        ("g0.nii.gz", ["group", "g0.nii.gz", "g1.nii.gz", "g2.nii.gz", "g3.nii.gz", "-o", "o3"]),
        ("g0.nii.gz", ["group", "g0.nii.gz", "g1.nii.gz", "g2.nii.gz", "g3.nii.gz", "--permutations", "9", "-o", "o4"]),
    ],
    ids=["fit-ols", "fit-events", "group", "group-permutations"],
)
def test_no_heavy_module_before_the_first_read(files, target, argv):
    if "--events" in argv:
        argv = [*argv, "--contrast", "a=a"]
    assert _imported_at_first_read(files, target, *argv) == set()


@pytest.mark.parametrize("given, seen", [(None, "False 20"), (("1", "28"), "True 28")])
def test_the_program_sets_numpys_huge_pages_and_openblas_spin_unless_the_user_did(files, given, seen):
    """voxfit's process runs with numpy's NUMPY_MADVISE_HUGEPAGE=0 and OpenBLAS's OPENBLAS_THREAD_TIMEOUT=20 (see
    voxfit.cli.program_settings), unless the user set them: what numpy has decided, and what the environment the
    BLAS libraries read holds, by the time the run's file is first read."""
    probe = (
        "def _numpy_core():\n    import numpy\n    return getattr(numpy, '_core', None) or numpy.core  # (numpy 1.x)\n"
        + HOOK.replace(
            '",".join(m for m in',
            '"SETTINGS " + str(_numpy_core().multiarray._get_madvise_hugepage()) + " "'
            ' + os.environ.get("OPENBLAS_THREAD_TIMEOUT", "-") + ",".join(m for m in',
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "OPENBLAS_THREAD_TIMEOUT")}
    env["PYTHONPATH"] = str(Path(voxfit.__file__).parents[1])
    if given is not None:
        env["NUMPY_MADVISE_HUGEPAGE"], env["OPENBLAS_THREAD_TIMEOUT"] = given
    argv = ["fit", "bold.nii.gz", "--design", "d.tsv", "--contrast", "a=a", "-o", "o1"]
    proc = subprocess.run(
        [sys.executable, "-c", probe, "bold.nii.gz", *argv],
        cwd=files,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"FIRST_READ SETTINGS {seen}" in proc.stdout, proc.stderr[-2000:]


# The child: the voxfit program on argv[1:], and at its end (os._exit, or sys.exit where a tracer such as coverage
# watches it) which of numpy's unused submodules were never executed; then each of them used, and whether it then was
LAZY_PROBE = """
import os, sys, types
from voxfit._lazy import NUMPY_UNUSED

def _unexecuted():
    kinds = {n: type(sys.modules.get("numpy." + n)) for n in NUMPY_UNUSED}
    return ",".join(n for n, kind in kinds.items() if kind not in (type(None), types.ModuleType))

def _ending(real):
    def end(code=0):
        print("EXIT", code, "UNEXECUTED", _unexecuted())
        import numpy.testing
        numpy.testing.assert_allclose(1.0, 1.0)
        print("USED", numpy.f2py.__name__, "UNEXECUTED", _unexecuted() or "none", flush=True)
        real(code)
    return end

os._exit, sys.exit = _ending(os._exit), _ending(sys.exit)
sys.argv = ["voxfit", *sys.argv[1:]]
import runpy
runpy.run_module("voxfit", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "argv",
    [
        "fit bold.nii.gz --design d.tsv --contrast a=a -o o1",
        "fit bold.nii.gz --events ev.tsv --tr 2 --noise ar4+lags --contrast a=a -o o2",
        "group g0.nii.gz g1.nii.gz g2.nii.gz g3.nii.gz --permutations 9 --tfce -o o3",
    ],
    ids=["fit", "fit-events-ar", "group-tfce"],
)
def test_the_program_never_executes_numpys_unused_submodules_and_they_work_on_first_use(files, argv):
    """scipy's array-API layer reads every name of numpy's namespace, which imported numpy.f2py and numpy.testing
    (voxfit._lazy.NUMPY_UNUSED), which no command uses: the program makes them load on first use. A command runs
    to its end without executing one; each, used afterwards, works."""
    out = _child(LAZY_PROBE, *argv.split(), cwd=files)
    from voxfit._lazy import NUMPY_UNUSED

    assert f"EXIT 0 UNEXECUTED {','.join(NUMPY_UNUSED)}\nUSED numpy.f2py UNEXECUTED none" in out, out


# The children: the hook beside a finder of someone else's and a submodule imported before it; and a thread that
# imports numpy while another imports scipy (argv[1] seconds later)
BESIDE = """
import sys, types
class Watch:
    seen = set()
    def find_spec(self, name, path=None, target=None):
        Watch.seen.add(name)
import numpy.testing
from voxfit._lazy import numpys_unused_submodules_lazy
sys.meta_path.insert(0, Watch())
numpys_unused_submodules_lazy()
import scipy.linalg
print("SEEN", "scipy" in Watch.seen, "scipy._lib._array_api" in Watch.seen)
print("KINDS", type(sys.modules["numpy.testing"]).__name__, type(sys.modules["numpy.f2py"]).__name__)
print("LEFT", [type(f).__name__ for f in sys.meta_path if type(f).__module__ == "voxfit._lazy"])
"""
THREADS = """
import os, sys, threading, time
from voxfit._lazy import numpys_unused_submodules_lazy
numpys_unused_submodules_lazy()
b = threading.Thread(target=__import__, args=("numpy",), daemon=True)
a = threading.Thread(target=__import__, args=("scipy.linalg",), daemon=True)
b.start(); time.sleep(float(sys.argv[1])); a.start()
a.join(60); b.join(1)
print("HUNG" if a.is_alive() or b.is_alive() else "DONE", type(sys.modules.get("numpy.f2py")).__name__, flush=True)
os._exit(0)
"""


def test_the_lazy_submodules_leave_other_finders_and_imported_submodules_as_they_are():
    """The hook's finder leaves the import system as it acts: a finder of someone else's after it is still asked
    for scipy and its modules; numpy.testing, imported before, stays the module it was; numpy.f2py is lazy."""
    out = _child(BESIDE)
    assert "SEEN True True\nKINDS module _LazyModule\nLEFT []" in out, out


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03])
def test_the_lazy_submodules_never_deadlock_a_thread_importing_numpy(delay):
    """Finders run under the interpreter's import lock: a hook that imported numpy itself waited for a thread
    importing numpy, which waited for that lock (every run hung). It now acts once numpy is imported."""
    assert _child(THREADS, str(delay)).strip() == "DONE _LazyModule"


def test_numpys_submodules_are_left_as_they_are_once_scipy_is_imported():
    """Called where scipy is imported already (here, in the test process), nothing changes."""
    import scipy  # noqa: F401

    from voxfit._lazy import numpys_unused_submodules_lazy

    finders = list(sys.meta_path)
    numpys_unused_submodules_lazy()
    assert sys.meta_path == finders


@pytest.mark.parametrize("how", ["program", "bad input", "traced", "profiled", "called from Python", "full disk"])
def test_the_program_ends_at_its_result_without_the_interpreters_teardown(files, tmp_path, how):
    """The voxfit program (``python -m voxfit``, the ``voxfit`` script: voxfit.cli.program, through
    voxfit._program) ends when its command has: its output written and flushed, its exit status kept (2 for a
    contrast naming no column, or for a summary that a full disk refused after the output was written), and no
    atexit handler run. Under a tracer or a profiler (coverage, cProfile), which write their results at exit, it
    exits as usual; so does voxfit.cli.main called from Python code, which keeps its process."""
    contrast = "b=b" if how == "bad input" else "a=a"
    args = ["fit", "bold.nii.gz", "--design", "d.tsv", "--contrast", contrast, "-o", "out"]
    prelude = "import atexit, sys\natexit.register(print, 'ATEXIT')\n"
    if how == "profiled":
        command = ["-m", "cProfile", "-o", str(tmp_path / "profile.out"), "-m", "voxfit", *args]
    elif how == "called from Python":
        command = ["-c", prelude + "from voxfit.cli import main\nprint('CALLER', main())", *args]
    else:
        run = "sys.argv = ['voxfit', *sys.argv[1:]]\nimport runpy\nrunpy.run_module('voxfit', run_name='__main__')\n"
        command = ["-c", prelude + ("sys.settrace(lambda *a: None)\n" if how == "traced" else "") + run, *args]
    env = {**os.environ, "PYTHONPATH": str(Path(voxfit.__file__).parents[1])}
    if how == "full disk":  # the summary cannot be printed after the output is committed: said so, in one line
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, *command], cwd=files, env=env, stdout=full, stderr=subprocess.PIPE)
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1, proc.stderr
        assert proc.stderr.startswith(b"voxfit: error: the output was written to ")
        assert b"no space left on device while writing the standard output" in proc.stderr
        assert (files / "out" / "model.json").is_file()
        return
    proc = subprocess.run([sys.executable, *command], cwd=files, env=env, capture_output=True, text=True)
    assert proc.returncode == (2 if how == "bad input" else 0), proc.stderr[-2000:]
    assert ("ATEXIT" in proc.stdout) == (how in ("traced", "called from Python"))
    if how == "bad input":
        assert proc.stderr.startswith("voxfit: error:") and proc.stderr.count("\n") == 1
        assert not (files / "out").exists() or not any((files / "out").iterdir())
        return
    summary = proc.stdout.splitlines()[0]
    assert summary.startswith("fitted ") and " voxels x 12 scans, " in summary and summary.endswith(" files in out")
    assert (files / "out" / "model.json").is_file() and not list((files / "out").glob(".voxfit-partial-*"))
    assert ("CALLER 0" in proc.stdout) == (how == "called from Python")
    assert (tmp_path / "profile.out").is_file() == (how == "profiled")


def test_a_failed_last_flush_ends_the_program_with_status_120_as_python_does(monkeypatch, capfd):
    """Output left in the standard output's buffer that cannot be written when the program ends: status 120 and a
    line on the standard error, as the interpreter's own exit gives (here no longer silent, as os._exit would be)."""
    import io

    from voxfit import cli

    class Full(io.StringIO):
        name = "<stdout>"

        def flush(self):
            raise OSError(28, "No space left on device")

    ended = []
    monkeypatch.setattr(cli.sys, "stdout", Full())
    monkeypatch.setattr(cli, "_observed", lambda: False)
    monkeypatch.setattr(cli.os, "_exit", lambda code: ended.append(code))
    cli._end_process(0)
    assert ended == [120]
    assert "voxfit: error: could not write the <stdout>: [Errno 28] No space left on device" in capfd.readouterr().err


def test_group_maps_are_read_once_while_the_model_imports(files, monkeypatch, capsys):
    """The CLI's load of a one-sample group's maps is the one SecondLevel uses (one pass over the maps), and
    the maps written equal those of SecondLevel in Python."""
    calls = []
    gather_auto = io_dataset.gather_auto

    def counted(*args, **kwargs):
        calls.append(args[0].paths)
        return gather_auto(*args, **kwargs)

    monkeypatch.setattr(io_dataset, "gather_auto", counted)
    maps = [str(files / f"g{k}.nii.gz") for k in range(4)]
    assert main(["group", *maps, "-o", str(files / "cli"), "--quiet"]) == 0
    assert len(calls) == 1
    expected = voxfit.SecondLevel().fit(maps)
    name = "contrast-intercept_stat-t_statmap.nii.gz"
    written = np.asarray(nib.load(files / "cli" / name).dataobj)
    in_python = expected.masker.inverse(expected.parametric["intercept"].stat)  # (voxels in NIfTI's order)
    npt.assert_array_equal(written.ravel(order="F"), in_python.ravel())
    capsys.readouterr()


def test_preloaded_serves_one_matching_load_only(files):
    """A preloaded load is taken by the first load with the same files and arguments, and by no other."""
    paths = [files / f"g{k}.nii.gz" for k in range(4)]
    future: Future = Future()
    sentinel = object()
    future.set_result(sentinel)
    with preloaded(future, paths, None, name="inputs"):
        assert load(paths[:3], name="inputs") is not sentinel  # other files
        assert load(paths, paths[0], name="inputs") is not sentinel  # other arguments (a mask)
        assert load([str(p) for p in paths], name="inputs", progress=False) is sentinel  # the same (progress aside)
        assert load(paths, name="inputs") is not sentinel  # taken once
    with preloaded(future, paths, None, name="inputs"):
        pass
    assert load(paths, name="inputs") is not sentinel  # outside the block


def test_a_failed_preload_raises_its_error_where_the_load_is_asked_for(files):
    future: Future = Future()
    future.set_exception(voxfit.exceptions.InputError("`inputs`: unreadable."))
    with preloaded(future, [files / "g0.nii.gz"], None), pytest.raises(voxfit.exceptions.InputError, match="unread"):
        load([files / "g0.nii.gz"])
