"""Start-up of the command line: the time from process start to the first read of the data, per path.

    python benchmarks/bench_startup.py [--repeat 7] [--keep DIR] [--full] [--importtime]

Paths (generated data, fixed seed: a 40 x 48 x 40 grid, 100 scans of float32 as .nii.gz and .nii, 20 group
maps as .nii.gz):

- ``fit --design`` (OLS) of the .nii.gz and of the .nii;
- ``fit --events ... --tr 2 --noise ar1`` (the events path: the design is built while the data are read);
- ``group`` (one-sample OLS of 20 maps).

Each run is a fresh ``python -c`` process that installs an audit hook (PEP 578) and runs ``voxfit`` as ``python -m
voxfit`` does. The hook notes, on the monotonic clock shared by the processes of the machine, the first time the
data file is opened (its header, read by nibabel: ``header``) and the first time it is opened to read values
(``data``: any open outside the header's parse and the digest of ``voxfit._digest``, which the command line
starts first), with the heavy modules already imported then; the child ends there
(``os._exit``) unless ``--full``. Times are from just before the parent starts the child; best of ``--repeat``;
``cpu`` is the CPU time the child had used by its data read (all threads; a busy machine disturbs it less than the
wall times). Baselines, timed the same way to the end of their code: ``python -c pass`` and ``python -c "import
numpy"``. Bytecode is cached (in a ``PYTHONPYCACHEPREFIX`` folder beside the data, a first run of each path
uncounted) as an installed package's is, even where ``PYTHONDONTWRITEBYTECODE`` is set: compiling voxfit's modules
in every process would add ~0.1 s that users do not pay. The evidence for what each path imports before the read is
``python -X importtime`` (printed with ``--importtime``: the top-level imports by cumulative time, up to the data
read).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _util import work_folder

HEAVY = ("scipy.stats", "scipy.linalg", "pandas", "numba", "bids", "matplotlib", "jsonschema", "dask")

# The child: an audit hook on `open`, then voxfit as `python -m voxfit` runs it. argv: target name, exit flag,
# then the command line. The hook prints "VOXFIT_HEADER t mods" and "VOXFIT_DATA t mods" on stderr.
HOOK = rf"""
import os, sys, time
_target, _exit = sys.argv[1], sys.argv[2] == "exit"
_seen = set()
_heavy = {HEAVY!r}

def _in_header_parse(frame):
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_load" and code.co_filename.endswith(os.path.join("io", "readers.py")):
            return True
        frame = frame.f_back
    return False

def _in_digest(frame):
    while frame is not None:
        if frame.f_code.co_filename.endswith("_digest.py"):
            return True
        frame = frame.f_back
    return False

def _hook(event, args):
    if event != "open" or not isinstance(args[0], str) or os.path.basename(args[0]) != _target:
        return
    if _in_digest(sys._getframe(1)):  # (model.json's digest of the file, started first: not its read)
        return
    kind = "HEADER" if _in_header_parse(sys._getframe(1)) else "DATA"
    if kind in _seen:
        return
    _seen.add(kind)
    mods = ",".join(m for m in _heavy if m in sys.modules) or "-"
    os.write(2, f"VOXFIT_{{kind}} {{time.monotonic():.6f}} {{time.process_time():.6f}} {{mods}}\n".encode())
    if kind == "DATA" and _exit:
        os._exit(0)

sys.addaudithook(_hook)
sys.argv = ["voxfit", *sys.argv[3:]]
import runpy
runpy.run_module("voxfit", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Startup:
    """One child process: seconds from its start to its first header read and to its first data read, the CPU
    seconds it had used by the data read (all threads: a figure a busy machine disturbs less than wall time), and
    the heavy modules imported at the data read."""

    header: float
    data: float
    cpu: float
    modules: str


def make_data(folder: Path, seed: int = 0) -> None:
    """bold.nii.gz / bold.nii (40 x 48 x 40 x 100 float32), a design, events, and 20 group maps."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    shape, n = (40, 48, 40), 100
    data = (1000 + 10 * rng.standard_normal(shape + (n,))).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    nib.save(image, folder / "bold.nii.gz")
    nib.save(image, folder / "bold.nii")
    a = (np.arange(n) % 20 < 10).astype(float)
    (folder / "d.tsv").write_text("a\tconst\n" + "".join(f"{v}\t1.0\n" for v in a))
    (folder / "ev.tsv").write_text(
        "onset\tduration\ttrial_type\n" + "".join(f"{t}\t20\ta\n" for t in range(0, 2 * n, 40))
    )
    for k in range(20):
        nib.save(nib.Nifti1Image(rng.standard_normal(shape).astype(np.float32), np.eye(4)), folder / f"g{k:02d}.nii.gz")


def paths(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """Each path's data file (the one whose first read is timed) and its command line (output added later)."""
    fit = ["fit", "--contrast", "a=a", "--quiet"]
    maps = sorted(str(p) for p in folder.glob("g*.nii.gz"))
    return {
        "fit --design (.nii.gz)": (
            "bold.nii.gz",
            [*fit, str(folder / "bold.nii.gz"), "--design", str(folder / "d.tsv")],
        ),
        "fit --design (.nii)": ("bold.nii", [*fit, str(folder / "bold.nii"), "--design", str(folder / "d.tsv")]),
        "fit --events --noise ar1": (
            "bold.nii.gz",
            [*fit, str(folder / "bold.nii.gz"), "--events", str(folder / "ev.tsv"), "--tr", "2", "--noise", "ar1"],
        ),
        "group (20 maps)": ("g00.nii.gz", ["group", *maps, "--quiet"]),
    }


def child_env(folder: Path) -> dict:
    """The children's environment: bytecode written and read in `folder`/pycache (see the module's notes)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(folder / "pycache")}


def startup(target: str, argv: list[str], out: Path, full: bool, env: dict) -> Startup:
    """One fresh process of `argv` (writing into `out`): the times of its first header and data reads."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", HOOK, target, "run" if full else "exit", *argv, "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    marks = {}
    for line in proc.stderr.splitlines():
        if line.startswith("VOXFIT_"):
            kind, t, cpu, mods = line.split()
            marks[kind] = (float(t) - start, float(cpu), mods)
    if "VOXFIT_DATA" not in marks or proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {proc.returncode} before reading its data: {proc.stderr[-2000:]}")
    header = marks.get("VOXFIT_HEADER", marks["VOXFIT_DATA"])[0]
    return Startup(header, *marks["VOXFIT_DATA"])


def baseline(code: str, env: dict) -> tuple[float, float]:
    """Seconds from the start of a fresh ``python -c code`` to the end of its code, and its CPU seconds."""
    start = time.monotonic()
    program = f"{code}\nimport time; print(time.monotonic(), time.process_time())"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, env=env)
    wall, cpu = map(float, out.stdout.split()[-2:])
    return wall - start, cpu


def importtime(target: str, argv: list[str], out: Path, env: dict, top: int = 12) -> list[str]:
    """The top-level imports (cumulative microseconds) of one run up to its first data read."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", HOOK, target, "exit", *argv, "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("VOXFIT_DATA"):
            break
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            name = name[1:]  # (nested imports are indented by two spaces a level)
            if not name.startswith(" ") and cumulative.strip().isdigit():
                rows.append((int(cumulative), name))
    return [f"{us / 1000:8.1f} ms  {name}" for us, name in sorted(rows, reverse=True)[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="keep the generated data in this folder")
    parser.add_argument("--full", action="store_true", help="let each run finish (default: end at the data read)")
    parser.add_argument("--importtime", action="store_true", help="list each path's imports before the data read")
    args = parser.parse_args()
    env_path = os.environ.get("PYTHONPATH", "")
    with work_folder(args.keep, "voxfit-startup-") as folder:
        if not (folder / "g19.nii.gz").exists():
            make_data(folder)
        env = child_env(folder)
        print(f"python {sys.version.split()[0]}, PYTHONPATH={env_path or '-'}; best of {args.repeat} fresh processes")
        print(f"{'path':34s} {'header':>8s} {'data':>8s} {'cpu':>8s}  heavy modules imported at the data read")
        for label, code in (("python -c pass", "pass"), ('python -c "import numpy"', "import numpy")):
            times = [baseline(code, env) for _ in range(args.repeat)]
            print(f"{label:34s} {'':8s} {min(t[0] for t in times):6.3f} s {min(t[1] for t in times):6.3f} s")
        for name, (target, argv) in paths(folder).items():
            runs = []
            for k in range(args.repeat + 1):  # (the first writes the bytecode)
                with tempfile.TemporaryDirectory(dir=folder) as scratch:
                    run = startup(target, argv, Path(scratch) / "out", args.full, env)
                    runs += [run] if k else []
            fastest = min(runs, key=lambda r: r.data)
            header, cpu = min(r.header for r in runs), min(r.cpu for r in runs)
            print(f"{name:34s} {header:6.3f} s {fastest.data:6.3f} s {cpu:6.3f} s  {fastest.modules}")
            if args.importtime:
                with tempfile.TemporaryDirectory(dir=folder) as scratch:
                    print("\n".join("      " + row for row in importtime(target, argv, Path(scratch) / "out", env)))


if __name__ == "__main__":
    main()
