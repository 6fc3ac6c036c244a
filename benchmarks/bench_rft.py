"""What random field theory costs: ``voxfit fit`` with and without ``--inference rft``, and the inference alone.

    python benchmarks/bench_rft.py [--shape 91 109 91] [--scans 200] [--fwhm 3] [--repeat 3] [--keep DIR] [--gz]

Data (generated, fixed seed): a 2 mm whole-brain grid (91 x 109 x 91, MNI's), an ellipsoid brain mask of
~280k voxels, 200 scans of float32 Gaussian noise smoothed to FWHM 3 voxels in each scan (a smooth field, as
SPM's smoothed data), with a block design effect in a sphere; an uncompressed .nii (memory-mapped when read:
the fit is then most of the command, the worst case for the ratio), or with ``--gz`` a .nii.gz as users hold
runs (its decompression is then part of every fit), and its design.tsv (the block, 4 cosines, the constant).
Each step runs in its own process, one thread (OMP/OPENBLAS/NUMBA threads 1, ``--n-jobs 1``):

- ``voxfit fit bold.nii --design design.tsv --contrast task=task --mask mask.nii`` (OLS), and the same with
  ``--inference rft`` (smoothness sums collected while the fit runs, SPM's RFT p-values, maps, results table),
  alternately `--repeat` times: wall time, CPU time and peak memory (GNU time), and the fit stage alone
  (``load_s`` and ``fit_s`` of each model.json's run record: the sums are part of the fit stage); the ratios
  are the issue's target (smoothness estimation adds at most 20% to the time of a fit);
- in this process, the inference alone on that fit (``voxfit.inference.rft_fit.rft_inference``: smoothness,
  resels, thresholds, clusters, the table's p-values; target < 1 s on a 2 mm whole-brain map), best of
  `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _util import timed_run, work_folder

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def make_run(folder: Path, shape, n: int, fwhm: float, gz: bool, seed: int = 0) -> tuple[Path, Path, Path]:
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    t = np.arange(n) * 2.0
    box = ((t // 20) % 2).astype(np.float64)
    cosines = [np.cos(np.pi * k * (np.arange(n) + 0.5) / n) for k in range(1, 5)]
    design = np.column_stack([box - box.mean(), *cosines, np.ones(n)])
    names = ["task", "cos1", "cos2", "cos3", "cos4", "constant"]
    (folder / "design.tsv").write_text("\t".join(names) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in design))
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    radius = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.42
    brain = (((grid - centre) / radius) ** 2).sum(0) <= 1
    blob = (((grid - centre * np.float32(0.8)) / np.float32(6.0)) ** 2).sum(0) <= 1
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [90, -126, -72]
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), folder / "mask.nii")
    sigma = fwhm / np.sqrt(8 * np.log(2))
    data = np.empty(tuple(shape) + (n,), dtype=np.float32)
    for i in range(n):
        scan = gaussian_filter(rng.standard_normal(shape), sigma) * np.sqrt(8 * np.pi**1.5 * sigma**3)  # unit var
        data[..., i] = 1000 + scan + 0.5 * box[i] * blob
    nib.save(nib.Nifti1Image(data, affine), folder / "bold.nii")
    if gz:  # as users hold runs (fMRIPrep writes .nii.gz): decompression is then part of every fit
        from isal import igzip

        with open(folder / "bold.nii", "rb") as src, igzip.open(folder / "bold.nii.gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        (folder / "bold.nii").unlink()
        return folder / "bold.nii.gz", folder / "design.tsv", folder / "mask.nii"
    return folder / "bold.nii", folder / "design.tsv", folder / "mask.nii"


def fit_argv(bold: Path, design: Path, mask: Path, out: Path, rft: bool) -> list[str]:
    argv = [sys.executable, "-m", "voxfit", "fit", str(bold), "--design", str(design), "--contrast", "task=task"]
    argv += ["--mask", str(mask), "-o", str(out), "--n-jobs", "1", "--quiet", "--force"]
    return argv + (["--inference", "rft"] if rft else [])


def fit_stage(out: Path) -> float:
    run = json.loads(next(out.glob("*model.json")).read_text())["run"]
    return float(run["load_s"]) + float(run["fit_s"])


def inference_alone(bold: Path, design: Path, mask: Path, repeat: int) -> tuple[float, int]:
    """Best time of ``rft_inference`` on the fit of the data, and the voxels of its mask."""
    import nibabel as nib

    from voxfit import fit_images
    from voxfit.engine.smoothness import neighbour_sums
    from voxfit.inference.rft_fit import check_rft_options, rft_inference
    from voxfit.io import load

    fitted = fit_images(str(bold), str(design), {"task": "task"}, mask=str(mask), n_jobs=1, progress=False)
    data = load(str(bold), str(mask))
    inside = np.asarray(data.masker.mask, dtype=bool).reshape(nib.load(str(mask)).shape, order="F")
    sums = neighbour_sums(data.data, fitted.fit.design.basis, inside)
    n, dof, stats = data.n_scans, float(fitted.fit.dof), fitted.contrasts
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        rft_inference(stats, data.masker, sums, check_rft_options(), n=n, dof=dof, residuals="the OLS residuals")
        times.append(time.perf_counter() - start)
    return min(times), data.n_voxels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(91, 109, 91))
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--fwhm", type=float, default=3.0, help="of the noise, in voxels")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="work folder kept afterwards")
    ap.add_argument("--gz", action="store_true", help="the run as .nii.gz (ISA-L level 1) instead of .nii")
    args = ap.parse_args(argv)

    import voxfit

    with work_folder(args.keep, "voxfit-bench-rft-") as folder:
        bold, design, mask = make_run(folder, tuple(args.shape), args.scans, args.fwhm, args.gz)
        os.environ.update(ONE_THREAD)
        size = bold.stat().st_size / 2**20
        print(
            f"voxfit {voxfit.__version__}: {'x'.join(map(str, args.shape))} grid x {args.scans} scans, float32 "
            f"{''.join(bold.suffixes)} "
            f"({size:.0f} MiB), noise FWHM {args.fwhm:g} voxels; one thread; best of {args.repeat}"
        )
        runs: dict[bool, list] = {False: [], True: []}
        for _ in range(args.repeat):  # alternately, so that a busy moment of the machine falls on both
            for rft in (False, True):
                out = folder / ("rft" if rft else "ols")
                timing = timed_run(fit_argv(bold, design, mask, out, rft))
                runs[rft].append((timing, fit_stage(out)))
        best = {rft: min(r, key=lambda x: x[0].wall) for rft, r in runs.items()}
        stage = {rft: min(s for _, s in r) for rft, r in runs.items()}
        print(f"{'':<34}{'wall (s)':>10}{'CPU (s)':>10}{'fit stage (s)':>15}{'peak (MiB)':>12}")
        for rft, label in ((False, "voxfit fit (OLS)"), (True, "voxfit fit --inference rft")):
            t = best[rft][0]
            print(f"{label:<34}{t.wall:>10.2f}{t.cpu:>10.2f}{stage[rft]:>15.2f}{t.peak / 2**20:>12.0f}")
        print(
            f"--inference rft adds {100 * (best[True][0].wall / best[False][0].wall - 1):.0f}% to the command, "
            f"{100 * (stage[True] / stage[False] - 1):.0f}% to the fit stage (read + fit; target <= 20%)"
        )
        seconds, voxels = inference_alone(bold, design, mask, args.repeat)
        print(f"RFT inference alone on {voxels:,} voxels (smoothness, resels, table): {seconds:.2f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
