"""Makes tests/data/spm12_global_scaling.npz with spm12_global_scaling.m (see README.md in this folder).

python spm12_global_scaling.py make DIR   # DIR/scans/s00..s23.hdr/.img, DIR/X.bin, DIR/mask.bin
cd DIR && octave --no-gui -q /path/to/spm12_global_scaling.m   # DIR/out_g.bin, out_beta.bin, out_con.bin
python spm12_global_scaling.py pack DIR spm12_global_scaling.npz
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE, N = (12, 10, 8), 24


def make(folder: Path) -> None:
    rng = np.random.default_rng(2026)
    i, j, k = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    brain = ((i - 5.5) / 5.2) ** 2 + ((j - 4.5) / 4.3) ** 2 + ((k - 3.5) / 3.4) ** 2 <= 1
    mask = brain & (i < 6)  # the explicit mask: half of the brain
    t = np.arange(N)
    block = (t % 8 >= 4).astype(float)
    trend = (t - (N - 1) / 2) / (N - 1)
    X = np.column_stack([block, trend, np.ones(N)])
    base = 600 + 400 * rng.random(SHAPE)
    effect = 100 + 50 * rng.random(SHAPE)  # block effects well away from zero
    gl = 1 + 0.05 * rng.standard_normal(N)  # a global signal that changes from scan to scan
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    raw, slopes, inters = [], [], []
    for s in range(N):
        v = gl[s] * (base + effect * block[s] + 300 * trend[s]) + rng.normal(0, 15, SHAPE)
        v[~brain] = 0.0
        if s % 5 == 0:  # a bright outlier outside the brain in a few scans
            v[0, 0, s % 8] = 9000.0 + 100 * s
        img = nib.Spm2AnalyzeImage(v, np.eye(4))
        img.set_data_dtype(np.int16)  # nibabel picks each scan's scale factor
        img.to_filename(folder / "scans" / f"s{s:02d}.img")
        back = nib.load(folder / "scans" / f"s{s:02d}.img")
        raw.append(np.asanyarray(back.dataobj.get_unscaled()).astype(np.int16))
        slopes.append(float(back.dataobj.slope))
        inters.append(float(back.dataobj.inter))
    X.astype("<f8").ravel(order="F").tofile(folder / "X.bin")
    mask.astype("<u1").ravel(order="F").tofile(folder / "mask.bin")
    np.savez(folder / "gen.npz", raw=np.stack(raw), slopes=np.array(slopes), inters=np.array(inters), X=X, mask=mask)


def pack(folder: Path, out: Path) -> None:
    d = np.load(folder / "gen.npz")
    mask = d["mask"]
    index = np.flatnonzero(mask.ravel(order="F"))  # Octave's order

    def volume(values):
        v = np.full(mask.size, np.nan)
        v[index] = values
        return v.reshape(mask.shape, order="F")

    betas = np.fromfile(folder / "out_beta.bin").reshape(index.size, 3).T
    con = np.fromfile(folder / "out_con.bin")
    np.savez_compressed(
        out,
        raw=d["raw"],
        slopes=d["slopes"],
        inters=d["inters"],
        X=d["X"],
        names=np.array(["block", "trend", "constant"]),
        mask=mask,
        contrast=np.array([1.0, 0.5, 0.0]),
        globals=np.fromfile(folder / "out_g.bin"),
        betas=np.stack([volume(b) for b in betas]),
        con=volume(con),
    )


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
