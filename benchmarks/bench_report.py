"""Report time: the demo's report and a group contrast on a 163,842-vertex (fsaverage-sized) surface.

    python benchmarks/bench_report.py [--subjects 20] [--repeat 3] [--keep DIR]

Data (generated, fixed seed):

- the demo: ``voxfit demo -o DIR`` (a synthetic run, 4 contrasts), then its report rebuilt;
- a surface group: an icosphere subdivided 7 times (163,842 vertices, 327,680 triangles, fsaverage's counts),
  stretched to a hemisphere's extent and folded, as ``lh.surf.gii``; 20 subjects' ``.func.gii`` maps of smooth
  noise plus four blobs; ``voxfit group maps --mesh lh.surf.gii`` (one-sample t, FDR), then its report.

Timed (best of --repeat; wall time, CPU time in brackets, GNU time's peak memory): ``voxfit demo`` with and
without ``--report`` (their difference is the demo's report), ``voxfit report DIR`` as a whole process
(start-up, imports, reading the maps, figures, writing), and ``build_report(DIR)`` in this process after a
first call (the figures and tables alone). Targets (issue 20): the demo's report <= 3 s (judged on the whole
``voxfit report`` process, an upper bound of its share of ``voxfit demo --report``), a 163k-vertex surface
contrast <= 1 s (in process). On a machine shared with other work, CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _util import Timing, timed_run, work_folder

DEMO_TARGET_S = 3.0
SURFACE_TARGET_S = 1.0


def icosphere(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices on the unit sphere and triangles of an icosahedron subdivided `order` times."""
    phi = (1 + 5**0.5) / 2
    v = np.array(
        [[-1, phi, 0], [1, phi, 0], [-1, -phi, 0], [1, -phi, 0], [0, -1, phi], [0, 1, phi]]
        + [[0, -1, -phi], [0, 1, -phi], [phi, 0, -1], [phi, 0, 1], [-phi, 0, -1], [-phi, 0, 1]],
        dtype=float,
    )
    f = np.array(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2]]
        + [[10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5]]
        + [[2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(order):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        middle = v[unique].mean(axis=1)
        middle /= np.linalg.norm(middle, axis=1, keepdims=True)
        m = len(v) + inverse.reshape(3, -1)  # the midpoints of edges 01, 12, 20 of each triangle
        v = np.vstack([v, middle])
        a, b, c = f.T
        f = np.concatenate([np.c_[a, m[0], m[2]], np.c_[b, m[1], m[0]], np.c_[c, m[2], m[1]], np.c_[m[0], m[1], m[2]]])
    return v, f


def make_surface_group(folder: Path, n_subjects: int, seed: int = 0) -> tuple[list[str], Path, int]:
    """The mesh, the subjects' maps (one .func.gii each) and the number of vertices."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    sphere, faces = icosphere(7)
    x, y, z = sphere.T
    fold = 1.0 + 0.06 * np.sin(9 * np.arctan2(y, z)) * np.cos(7 * np.arcsin(np.clip(x, -1, 1)))
    coords = (sphere * fold[:, None] * [30.0, 85.0, 60.0] + [-35.0, -18.0, 15.0]).astype(np.float32)
    mesh = folder / "lh.surf.gii"
    arrays = [
        nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET", datatype="NIFTI_TYPE_FLOAT32"),
        nib.gifti.GiftiDataArray(faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE", datatype="NIFTI_TYPE_INT32"),
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(mesh))
    centres = ([-1, 0, 0], [-0.6, 0.6, 0.5], [0, -0.8, 0.6], [1, 0, 0])
    blobs = sum(np.exp(-np.sum((sphere - c) ** 2, axis=1) / (2 * 0.2**2)) for c in centres)
    modes = rng.standard_normal((n_subjects, 60))
    basis = np.stack([np.sin(k * x + 3 * y) * np.cos((k % 7) * z + k) for k in range(60)])
    paths = []
    for s in range(n_subjects):
        values = (modes[s] @ basis / 4 + 0.5 * rng.standard_normal(len(x)) + 1.2 * blobs).astype(np.float32)
        path = folder / f"sub-{s:02d}.func.gii"
        nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(values)]), str(path))
        paths.append(str(path))
    return paths, mesh, len(x)


def voxfit(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxfit", *args, "--quiet", "--force"]


def best_run(argv, repeat: int) -> Timing:
    """The fastest of `repeat` runs of a child process (wall time, with its peak memory and CPU time)."""
    return min((timed_run(argv) for _ in range(repeat)), key=lambda t: t.wall)


def in_process(folder: Path, repeat: int) -> tuple[float, float]:
    """Wall and CPU time of ``build_report(folder)`` in this process after a first call (imports done)."""
    from voxfit.report import build_report

    build_report(folder)
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        build_report(folder)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def verdict(wall: float, cpu: float, target: float) -> str:
    """The time against its target, by wall clock and by CPU time (what the wall clock would be on an idle
    machine, for this single-threaded work)."""

    def met(t: float) -> str:
        return "met" if t <= target else "MISSED"

    return f"wall {wall:.2f} s ({wall / target:.2f}x of {target:g} s): {met(wall)}; CPU {cpu:.2f} s: {met(cpu)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the generated data and outputs in this folder")
    args = ap.parse_args(argv)
    with work_folder(args.keep, "voxfit-bench-report-") as folder:
        import voxfit as vf

        print(f"voxfit {vf.__version__}; best of {args.repeat}; wall (CPU) seconds")
        demo = folder / "demo"
        plain = best_run(voxfit("demo", "-o", str(demo)), args.repeat)
        with_report = best_run(voxfit("demo", "-o", str(demo), "--report"), args.repeat)
        contrasts = len(list(demo.glob("contrast-*_stat-z_statmap.nii.gz")))
        alone = best_run(voxfit("report", str(demo)), args.repeat)
        wall, cpu = in_process(demo, args.repeat)
        share = with_report.wall - plain.wall
        print(
            f"demo ({contrasts} contrasts): voxfit demo {plain.wall:.2f} ({plain.cpu:.2f}), with --report "
            f"{with_report.wall:.2f} ({with_report.cpu:.2f}), {with_report.peak / 2**20:.0f} MiB | voxfit report "
            f"{alone.wall:.2f} ({alone.cpu:.2f}), {alone.peak / 2**20:.0f} MiB | build_report after import "
            f"{wall:.2f} ({cpu:.2f}) | report.html {(demo / 'report.html').stat().st_size / 2**20:.1f} MiB"
        )
        print(
            f"  demo --report minus demo: {share:.2f} s ({with_report.cpu - plain.cpu:.2f} s CPU), the difference of "
            "two noisy times; bounded above by the whole voxfit report process (which also starts Python and "
            "imports numpy, scipy and nibabel, as the demo already did):"
        )
        print("  the demo's report (voxfit report, whole process): " + verdict(alone.wall, alone.cpu, DEMO_TARGET_S))
        paths, mesh, n_vertices = make_surface_group(folder, args.subjects)
        group = folder / "surface-group"
        subprocess.run(voxfit("group", *paths, "--mesh", str(mesh), "-o", str(group)), check=True)
        alone = best_run(voxfit("report", str(group)), args.repeat)
        wall, cpu = in_process(group, args.repeat)
        page = (group / "report.html").read_text()
        found = re.search(r"([\d,]+) of ([\d,]+) elements shown", page)
        shown = f"{found.group(1)} of {found.group(2)} vertices shown" if found else "none shown"
        print(
            f"surface group ({args.subjects} subjects x {n_vertices:,} vertices, one contrast, {shown}): voxfit "
            f"report {alone.wall:.2f} ({alone.cpu:.2f}), {alone.peak / 2**20:.0f} MiB | build_report after import "
            f"{wall:.2f} ({cpu:.2f})"
        )
        print(
            "  a 163k-vertex surface contrast (build_report after import, its design and reading included): "
            + verdict(wall, cpu, SURFACE_TARGET_S)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
