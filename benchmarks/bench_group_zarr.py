"""A UK-Biobank-sized group GLM streamed from Zarr under a memory cap.

    python benchmarks/bench_group_zarr.py [--subjects 40000] [--voxels 20000] [--cap 2G] [--keep DIR]

Data (generated, fixed seed): 40,000 subjects x 20,000 voxels of float32 (3.0 GiB) in a Zarr store, with a
participants table (age, sex as 0/1); the model is age + sex + intercept, contrast ``age``. The group
model runs in its own process (``voxfit group maps.zarr --design participants.tsv --contrast age=age
--max-memory CAP``), which streams the rows once keeping per-voxel sums. Reported: wall time, peak
resident memory (GNU time's %M) against the cap, and the largest difference between the streamed t map and
a float64 fit of the same data for the first 2,000 voxels (the ones with an effect, and some without).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from _util import timed_process, work_folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=40000)
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--cap", default="2G")
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args(argv)
    with work_folder(args.keep, "voxfit-bench-zarr-") as folder:
        import zarr

        from voxfit import fit
        from voxfit._memory import parse_memory

        n, V = args.subjects, args.voxels
        rng = np.random.default_rng(0)
        age = np.round(rng.uniform(40, 80, n), 3)  # as written to the table
        sex = rng.integers(0, 2, n).astype(float)
        (folder / "participants.tsv").write_text("age\tsex\n" + "".join(f"{a:.3f}\t{s:g}\n" for a, s in zip(age, sex)))
        store = folder / "maps.zarr"
        if not store.exists():
            z = zarr.open(str(store), mode="w", shape=(n, V), chunks=(2000, V), dtype="f4")
            effect = np.where(np.arange(V) < V // 10, 0.01, 0.0)
            for a in range(0, n, 2000):
                rows = rng.standard_normal((min(2000, n - a), V)) + np.outer(age[a : a + 2000] - 60, effect)
                z[a : a + rows.shape[0]] = rows.astype(np.float32)
        data_gib = 4 * n * V / 2**30
        cap = parse_memory(args.cap)
        print(
            f"{n:,} subjects x {V:,} voxels float32 = {data_gib:.2f} GiB in Zarr; cap {cap / 2**30:.2f} GiB "
            f"(data / cap = {4 * n * V / cap:.1f})"
        )
        out = folder / "out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "voxfit",
            "group",
            str(store),
            "--design",
            str(folder / "participants.tsv"),
            "--contrast",
            "age=age",
            "--max-memory",
            args.cap,
            "-o",
            str(out),
            "--quiet",
        ]
        wall, peak = timed_process(cmd)
        print(f"voxfit group, streamed: {wall:.1f} s, peak memory {peak / 2**30:.2f} GiB = {peak / cap:.2f} of the cap")
        X = np.column_stack([age, sex, np.ones(n)])
        z = zarr.open(str(store), mode="r")
        t_ref = fit(X, np.asarray(z[:, :2000], dtype=np.float64)).contrast([1, 0, 0]).t
        t = np.load(out / "contrast-age_stat-t_statmap.npy")[:2000]
        print(
            "t map: max |streamed - float64 in blocks| = "
            f"{np.nanmax(np.abs(t - t_ref)):.2e} (max |t| {np.nanmax(np.abs(t_ref)):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
