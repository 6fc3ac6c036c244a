"""Group permutation inference, voxfit against nilearn, whole processes, same maps and mask.

    python benchmarks/bench_group.py [--subjects 40] [--perms 10000] [--tfce-perms 200] [--keep DIR]

Data (generated, fixed seed): 40 subjects' maps on a 64 x 64 x 40 grid with an ellipsoid mask of ~98k
voxels: smooth Gaussian noise (sigma 1.5 voxels) plus an effect in a blob, float32, one 3-D .nii.gz per
subject. One-sample tests, each tool in its own process:

- max-T: ``voxfit group maps --mask mask --permutations N`` against nilearn's ``non_parametric_inference``
  (n_jobs=2, one-sided). nilearn is run at 1,000 and 2,000 permutations and its time at N is extrapolated
  linearly (its cost is a fixed part plus a part per permutation); voxfit is run at N itself.
- TFCE: both at the same number of permutations (``--tfce-perms``), nilearn with ``tfce=True``.

Reported: wall time (best of --repeat), peak resident memory (GNU time's %M), ratios.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from _util import best, work_folder

SHAPE = (64, 64, 40)

NILEARN_SCRIPT = r"""
import sys, glob, pandas as pd
from nilearn.glm.second_level import non_parametric_inference
folder, n_perm, tfce = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
maps = sorted(glob.glob(folder + "/sub-*.nii.gz"))
design = pd.DataFrame({"intercept": [1.0] * len(maps)})
out = non_parametric_inference(maps, design_matrix=design, second_level_contrast="intercept",
                               mask=folder + "/mask.nii.gz", n_perm=n_perm, two_sided_test=False,
                               random_state=0, n_jobs=2, tfce=tfce)
"""


def make_maps(folder: Path, n_subjects: int, seed: int = 0) -> int:
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float32)
    c = (np.array(SHAPE) - 1) / 2
    mask = sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, (32.5, 32.5, 22.0))) <= 1.0
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "mask.nii.gz")
    blob = np.exp(-sum((g - p) ** 2 for g, p in zip(grid, (40, 30, 20))) / (2 * 3.0**2))
    for s in range(n_subjects):
        noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5)
        noise /= noise[mask].std()
        data = np.where(mask, noise + 0.8 * blob, 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / f"sub-{s:02d}.nii.gz")
    return int(mask.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--perms", type=int, default=10000)
    ap.add_argument("--tfce-perms", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep the generated maps and outputs in this folder")
    args = ap.parse_args(argv)
    with work_folder(args.keep, "voxfit-bench-group-") as folder:
        import voxfit

        n_vox = make_maps(folder, args.subjects)
        maps = sorted(str(p) for p in folder.glob("sub-*.nii.gz"))
        print(
            f"voxfit {voxfit.__version__}: {args.subjects} subjects x {n_vox:,} voxels (float32 maps, {SHAPE} grid), "
            f"one-sample, one-sided; best of {args.repeat}"
        )
        script = folder / "nilearn_group.py"
        script.write_text(NILEARN_SCRIPT)
        out = folder / "voxfit-out"
        clear = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
        vox_cmd = [
            sys.executable,
            "-m",
            "voxfit",
            "group",
            *maps,
            "--mask",
            str(folder / "mask.nii.gz"),
            "--seed",
            "0",
            "-o",
            str(out),
            "--quiet",
            "--force",
        ]
        best(vox_cmd + ["--permutations", "100"], 1, clear)  # numba's compiled kernels into the cache
        tv, mv = best(vox_cmd + ["--permutations", str(args.perms)], args.repeat, clear)
        (t1, m1), (t2, m2) = (
            best([sys.executable, str(script), str(folder), str(n), "0"], args.repeat) for n in (1000, 2000)
        )
        per_perm = (t2 - t1) / 1000
        tn = t1 + per_perm * (args.perms - 1000)
        print(
            f"max-T, {args.perms:,} sign-flips: voxfit {tv:6.2f} s {mv / 2**20:6.0f} MiB | nilearn (n_jobs=2) "
            f"{t1:.1f} s at 1,000 and {t2:.1f} s at 2,000 -> {tn:.1f} s extrapolated to {args.perms:,}, "
            f"{max(m1, m2) / 2**20:.0f} MiB | voxfit {tn / tv:.1f}x faster, {mv / max(m1, m2):.2f} of the memory"
        )
        tvt, mvt = best(vox_cmd + ["--permutations", str(args.tfce_perms), "--tfce"], args.repeat, clear)
        tnt, mnt = best([sys.executable, str(script), str(folder), str(args.tfce_perms), "1"], args.repeat)
        print(
            f"TFCE, {args.tfce_perms:,} sign-flips: voxfit {tvt:6.2f} s {mvt / 2**20:6.0f} MiB | nilearn tfce=True "
            f"{tnt:.1f} s {mnt / 2**20:.0f} MiB | voxfit {tnt / tvt:.1f}x faster"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
