"""Makes tests/data/spm12_rft.npz with spm12_rft.m (see README.md in this folder).

python spm12_rft.py make DIR    # DIR/ResI_0001..0020.nii, DIR/mask.nii, DIR/stat.bin, DIR/gen.npz
cd DIR && octave --no-gui -q --eval "spm_path='/path/to/spm12'; source('/path/to/spm12_rft.m')"   # DIR/out.mat
python spm12_rft.py pack DIR spm12_rft.npz
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import io, ndimage

SHAPE, N, VOXEL = (16, 14, 12), 20, (2.0, 2.5, 3.0)


def _mask(rng) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    mask = ((i - 7.5) / 7.0) ** 2 + ((j - 6.5) / 6.0) ** 2 + ((k - 5.5) / 5.2) ** 2 <= 1
    mask[12:16, 5:9, 3:8] = True  # a slab that touches the grid's last x plane
    mask &= (i - 6) ** 2 + (j - 6) ** 2 + (k - 6) ** 2 > 2.5  # a hole
    mask &= rng.random(SHAPE) > 0.03  # and a few voxels missing here and there
    return mask


def make(folder: Path) -> None:
    rng = np.random.default_rng(18)
    mask = _mask(rng)
    flat = mask.ravel(order="F")
    t = np.arange(N)
    X = np.column_stack([np.ones(N), (t - t.mean()) / N])
    pad = 8
    noise = [
        ndimage.gaussian_filter(rng.standard_normal(tuple(s + 2 * pad for s in SHAPE)), (1.2, 1.5, 1.0))[
            pad:-pad, pad:-pad, pad:-pad
        ]
        for _ in range(N)
    ]
    Y = np.stack([v.ravel(order="F")[flat] for v in noise]) + X @ rng.standard_normal((2, flat.sum()))
    e = Y - X @ (np.linalg.pinv(X) @ Y)
    dof = N - 2
    resi = e / np.sqrt((e**2).sum(axis=0) / dof)
    affine = np.diag([*VOXEL, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(N):
        v = np.full(mask.size, np.nan)
        v[flat] = resi[s]
        nib.Nifti1Image(v.reshape(SHAPE, order="F"), affine, dtype=np.float64).to_filename(
            folder / f"ResI_{s + 1:04d}.nii"
        )
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(folder / "mask.nii")
    # a statistic map with a few blobs, for the cluster and peak FDR
    i, j, k = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    blobs = sum(
        a * np.exp(-((i - x) ** 2 + (j - y) ** 2 + (k - z) ** 2) / (2 * w**2))
        for a, x, y, z, w in ((5.0, 4, 5, 5, 1.5), (4.0, 11, 8, 6, 1.2), (3.6, 8, 3, 3, 1.0), (4.5, 13, 7, 5, 0.8))
    )
    field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) * 2.2 + blobs
    stat = field.ravel(order="F")[flat]
    stat.astype("<f8").tofile(folder / "stat.bin")
    np.savez(folder / "gen.npz", mask=mask, residuals=e, stat=stat, X=X)


def pack(folder: Path, out: Path) -> None:
    d = np.load(folder / "gen.npz")
    o = io.loadmat(folder / "out.mat", squeeze_me=False)
    mask = d["mask"]
    flat = mask.ravel(order="F")

    def in_mask(volume):
        return np.asarray(volume, dtype=np.float64).ravel(order="F")[flat]

    arrays = {name: np.asarray(value, dtype=np.float64) for name, value in o.items() if not name.startswith("__")}
    for name in ("rpv", "rpv_sub"):
        arrays[name] = in_mask(arrays[name])
    for name, value in arrays.items():
        if value.size == 1:
            arrays[name] = value.reshape(())
        elif value.ndim == 2 and 1 in value.shape:
            arrays[name] = value.ravel()
    np.savez_compressed(
        out, mask=mask, voxel_size=np.array(VOXEL), residuals=d["residuals"], stat=d["stat"], X=d["X"], **arrays
    )


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
