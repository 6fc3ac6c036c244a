"""A run larger than the memory cap: streamed AR(1) fit against a bare decompression and the in-memory fit.

    python benchmarks/bench_streaming.py [--shape 130 130 88] [--scans 1100] [--cap 2G] [--repeat 3] [--keep DIR]

Data (generated, fixed seed): float32 AR(0.3) noise around 1000 with a block design effect in part of the
grid, saved as .nii.gz (ISA-L level 1). By default the size the scale issue names: a 7T-sized grid
(130 x 130 x 88, 1.5 M voxels) x 1100 scans = 6.1 GiB of float32 data, 3 times a 2 GiB cap (4.3 GiB
.nii.gz, about 2 minutes to generate; the in-memory fit needs 12.3 GiB; 5 minutes in all on 2 cores).
``--shape 96 96 64 --scans 600 --cap 448M`` is a quick 1.3 GiB version. Each step runs in its own process:

- a bare decompression of the file (ISA-L), the floor for any tool that reads it, and
  ``voxfit fit bold.nii.gz --design d.tsv --noise ar1 --max-memory CAP`` (streamed: one pass keeping
  per-voxel sums), alternately `--repeat` times: wall times, their ratios, and peak resident memory (GNU
  time's %M) against the cap;
- the same fit without a cap (in memory), and the largest difference between the two t maps.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from _util import timed_process, work_folder

DECOMPRESS = (
    "import sys; from isal import igzip\nwith igzip.open(sys.argv[1], 'rb') as f:\n    while f.read(1 << 24): pass\n"
)


def make_run(folder: Path, shape, n: int, seed: int = 0) -> Path:
    import nibabel as nib
    from isal import igzip

    rng = np.random.default_rng(seed)
    t = np.arange(n) * 2.0
    box = ((t // 20) % 2).astype(np.float32)
    design = np.column_stack([box - box.mean(), np.ones(n)])
    (folder / "design.tsv").write_text("task\tconstant\n" + "".join(f"{a}\t{b}\n" for a, b in design))
    nel = int(np.prod(shape))
    data = np.empty((n, nel), dtype=np.float32)  # scans x voxels, built scan by scan
    prev = rng.standard_normal(nel).astype(np.float32)
    effect = np.zeros(nel, dtype=np.float32)
    effect[: nel // 4] = 2.0
    for i in range(n):
        prev = 0.3 * prev + rng.standard_normal(nel).astype(np.float32)
        data[i] = 1000 + prev + effect * box[i]
    raw = folder / "bold.nii"
    nib.save(nib.Nifti1Image(data.reshape((n,) + tuple(shape[::-1])).T, np.eye(4)), raw)
    del data
    gz = folder / "bold.nii.gz"
    with open(raw, "rb") as src, igzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    raw.unlink()
    return gz


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[130, 130, 88])
    ap.add_argument("--scans", type=int, default=1100)
    ap.add_argument("--cap", default="2G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args(argv)
    with work_folder(args.keep, "voxfit-bench-stream-") as folder:
        import nibabel as nib

        from voxfit._memory import parse_memory

        gz = folder / "bold.nii.gz"
        if not gz.exists():
            make_run(folder, args.shape, args.scans)
        data_bytes = 4 * args.scans * int(np.prod(args.shape))
        cap = parse_memory(args.cap)
        print(
            f"{tuple(args.shape)} x {args.scans} scans: {data_bytes / 2**30:.2f} GiB of float32 data "
            f"({gz.stat().st_size / 2**30:.2f} GiB .nii.gz), cap {cap / 2**20:.0f} MiB = data / {data_bytes / cap:.1f}"
        )
        base = [
            sys.executable,
            "-m",
            "voxfit",
            "fit",
            str(gz),
            "--design",
            str(folder / "design.tsv"),
            "--contrast",
            "task=task",
            "--noise",
            "ar1",
            "--quiet",
            "--force",
        ]
        with open(gz, "rb") as f:  # into the page cache first (an earlier in-memory fit may have evicted it)
            while f.read(1 << 24):
                pass
        runs = []
        for _ in range(args.repeat):  # alternately, so that both see the same machine
            td, md = timed_process([sys.executable, "-c", DECOMPRESS, str(gz)])
            ts, ms = timed_process(base + ["--max-memory", args.cap, "-o", str(folder / "streamed")])
            runs.append((td, ts, ms))
            print(
                f"bare decompression (ISA-L): {td:.1f} s, {md / 2**20:.0f} MiB; voxfit AR(1) streamed under the cap: "
                f"{ts:.1f} s = {ts / td:.2f} x the decompression, peak "
                f"memory {ms / 2**20:.0f} MiB = {ms / cap:.2f} of the cap"
            )
        ratios = sorted(ts / td for td, ts, _ in runs)
        print(
            f"streamed / decompression over {len(runs)} runs: median {np.median(ratios):.2f} (min {ratios[0]:.2f}, "
            f"max {ratios[-1]:.2f}); largest peak {max(r[2] for r in runs) / cap:.2f} of the cap"
        )
        tm, mm = timed_process(base + ["-o", str(folder / "memory")])
        a = np.asarray(nib.load(folder / "streamed" / "contrast-task_stat-t_statmap.nii.gz").dataobj)
        b = np.asarray(nib.load(folder / "memory" / "contrast-task_stat-t_statmap.nii.gz").dataobj)
        print(
            f"voxfit AR(1) in memory: {tm:.1f} s, {mm / 2**20:.0f} MiB; t maps: max |streamed - in memory| = "
            f"{np.nanmax(np.abs(a - b)):.2e} (max |t| {np.nanmax(np.abs(b)):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
