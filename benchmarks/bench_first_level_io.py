"""First-level OLS from files, voxfit against nilearn, whole processes, same data and design.

    python benchmarks/bench_first_level_io.py [--scans 300] [--repeat 2] [--keep DIR]

Data (generated, fixed seed): a 64 x 64 x 40 grid with an ellipsoid mask of ~98k voxels, 300 scans of
float32, a 15-column design (4 HRF-convolved conditions, 6 motion-like regressors, 4 cosine drifts, a
constant), saved as .nii.gz and as .nii. Each tool runs in its own process: ``voxfit fit`` (the CLI) and
a script with nilearn's ``FirstLevelModel(noise_model="ols", signal_scaling=False)`` given the same design
matrix and mask, each writing one t contrast's maps. Reported: wall time (best of --repeat), peak
resident memory of the process (GNU time's %M), their ratios, the largest difference between the two
t maps, and voxfit's load time against a bare decompression of the same file (ISA-L and zlib).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _util import best, task_design, work_folder

SHAPE = (64, 64, 40)

NILEARN_SCRIPT = r"""
import sys, pandas as pd
from nilearn.glm.first_level import FirstLevelModel
bold, design, mask, out, noise = sys.argv[1:6]
X = pd.read_csv(design, sep="\t")
model = FirstLevelModel(mask_img=mask, noise_model=noise, signal_scaling=False, minimize_memory=True)
model.fit(bold, design_matrices=X)
maps = model.compute_contrast("A - B", output_type="all")
maps["stat"].to_filename(out + "/t.nii.gz")
maps["z_score"].to_filename(out + "/z.nii.gz")
maps["effect_size"].to_filename(out + "/effect.nii.gz")
maps["effect_variance"].to_filename(out + "/variance.nii.gz")
maps["p_value"].to_filename(out + "/p.nii.gz")
"""


def make_study(folder: Path, n_scans: int, seed: int = 0):
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float32)
    c = (np.array(SHAPE) - 1) / 2
    mask = sum(((g - ci) / r) ** 2 for g, ci, r in zip(grid, c, (34.0, 34.0, 24.0))) <= 1.0
    design = task_design(n_scans, rng)  # (TR 2 s)
    X = design.to_numpy()
    n_vox = int(mask.sum())
    beta = rng.normal(0, 0.5, (X.shape[1], n_vox))
    beta[-1] = 1000.0
    data = np.zeros(SHAPE + (n_scans,), dtype=np.float32)
    idx = np.nonzero(mask)
    for s in range(0, n_vox, 20000):
        e = min(n_vox, s + 20000)
        block = X @ beta[:, s:e] + 10 * rng.standard_normal((n_scans, e - s))
        data[idx[0][s:e], idx[1][s:e], idx[2][s:e], :] = block.T
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    del data
    nib.save(img, folder / "bold.nii")
    with open(folder / "bold.nii", "rb") as src, gzip.open(folder / "bold.nii.gz", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / "mask.nii.gz")
    design.to_csv(folder / "design.tsv", sep="\t", index=False)
    return n_vox


def decompress_time(path: Path, opener) -> float:
    start = time.perf_counter()
    with opener(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="keep the generated data and outputs in this folder")
    args = ap.parse_args(argv)
    with work_folder(args.keep, "voxfit-bench-") as folder:
        import nibabel as nib

        import voxfit
        from voxfit.io import GZIP_BACKEND

        n_vox = make_study(folder, args.scans)
        gz, nii = folder / "bold.nii.gz", folder / "bold.nii"
        print(
            f"voxfit {voxfit.__version__}: {SHAPE} grid, {n_vox:,} voxels in the mask, {args.scans} scans float32; "
            f".nii {nii.stat().st_size / 2**20:.0f} MiB, .nii.gz {gz.stat().st_size / 2**20:.0f} MiB; 15 columns; "
            f"best of {args.repeat}"
        )
        nl_script = folder / "nilearn_glm.py"
        nl_script.write_text(NILEARN_SCRIPT)
        results = {}
        for label, path, noise in (("nii.gz", gz, "ols"), ("nii", nii, "ols"), ("nii.gz", gz, "ar1")):
            out_v, out_n = folder / f"voxfit-{label}-{noise}", folder / f"nilearn-{label}-{noise}"
            out_n.mkdir(exist_ok=True)
            vox = [
                sys.executable,
                "-m",
                "voxfit",
                "fit",
                str(path),
                "--design",
                str(folder / "design.tsv"),
                "--mask",
                str(folder / "mask.nii.gz"),
                "--contrast",
                "c=A - B",
                "-o",
                str(out_v),
                "--force",
                "--quiet",
                "--noise",
                noise,
            ]
            nl = [
                sys.executable,
                str(nl_script),
                str(path),
                str(folder / "design.tsv"),
                str(folder / "mask.nii.gz"),
                str(out_n),
                noise,
            ]
            results[label, noise] = (best(vox, args.repeat), best(nl, args.repeat))
            (tv, mv), (tn, mn) = results[label, noise]
            print(
                f"{label:>6} in, {noise.upper():>3}, one t contrast's "
                f"maps out: voxfit {tv:6.2f} s {mv / 2**20:7.0f} MiB | "
                f"nilearn {tn:6.2f} s {mn / 2**20:7.0f} MiB | voxfit {tn / tv:5.1f}x faster, "
                f"{mv / mn:.2f} of nilearn's memory"
            )
            zv = np.asarray(nib.load(out_v / "contrast-c_stat-z_statmap.nii.gz").dataobj)
            zn = np.asarray(nib.load(out_n / "z.nii.gz").dataobj)
            inside = np.isfinite(zv)
            print(
                f"        z maps: max |voxfit - nilearn| = {np.nanmax(np.abs(zv[inside] - zn[inside])):.2e}, "
                f"correlation {np.corrcoef(zv[inside], zn[inside])[0, 1]:.6f} (max |z| {np.nanmax(np.abs(zn)):.1f})"
            )

        from voxfit.io import open_gzip

        raw_fast = min(decompress_time(gz, open_gzip) for _ in range(args.repeat))
        raw_zlib = min(decompress_time(gz, gzip.open) for _ in range(args.repeat))
        loads = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            voxfit.load(gz, mask=folder / "mask.nii.gz", progress=False)
            loads.append(time.perf_counter() - t0)
        print(
            f"load .nii.gz (decompress + mask): {min(loads):.2f} s; "
            f"bare decompression {raw_fast:.2f} s ({GZIP_BACKEND}), "
            f"{raw_zlib:.2f} s (zlib): load / fastest decompression = {min(loads) / raw_fast:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
