"""Small image files of every supported format, all holding one known (n_scans, n_elements) matrix."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (6, 5, 4)
N_SCANS = 12
AFFINE = np.array([[2.0, 0, 0, -6], [0, 2.0, 0, -5], [0, 0, 2.5, -4], [0, 0, 0, 1]])


def volume_data(rng, n=N_SCANS, dtype=np.float32):
    """(x, y, z, n) data: a smooth level per voxel plus noise; a corner of zeros outside the 'brain'."""
    level = 100 + 10 * rng.standard_normal(SHAPE)
    data = level[..., None] + rng.standard_normal(SHAPE + (n,))
    data[0, 0, :, :] = 0.0  # background column: constant zero
    if np.dtype(dtype).kind == "i":
        data = np.round(data * 10)
    return data.astype(dtype)


def as_matrix(data4d):
    """(n, n_elements) with elements in NIfTI order (x fastest)."""
    return data4d.reshape(-1, data4d.shape[-1], order="F").T


def write_nifti(path: Path, data, klass=nib.Nifti1Image, stored_dtype=None):
    """Save `data`; with `stored_dtype` (an integer type) nibabel picks scale factors to store floats."""
    img = klass(data, AFFINE)
    if stored_dtype is not None:
        img.set_data_dtype(stored_dtype)
    nib.save(img, str(path))
    return path


def read_back(path: Path):
    """What nibabel reads from a file, scale factors applied, as (n, n_elements) float64."""
    data = nib.load(str(path)).get_fdata()
    return as_matrix(data if data.ndim == 4 else data[..., None])


def write_volume_list(folder: Path, data, suffix=".nii", stored_dtype=None):
    """One 3-D file per scan; with `stored_dtype`, each file gets its own scale factor (as SPM writes them)."""
    paths = []
    for i in range(data.shape[-1]):
        p = folder / f"scan{i:03d}{suffix}"
        klass = nib.Nifti1Image if suffix == ".nii" else nib.Spm2AnalyzeImage
        paths.append(write_nifti(p, data[..., i], klass, stored_dtype))
    return paths


def write_gifti(path: Path, matrix, two_d=False):
    if two_d:
        arrays = [nib.gifti.GiftiDataArray(np.ascontiguousarray(matrix.T), datatype="NIFTI_TYPE_FLOAT32")]
    else:
        arrays = [nib.gifti.GiftiDataArray(row, datatype="NIFTI_TYPE_FLOAT32") for row in matrix]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(path))
    return path


def cifti_axes(n_scans=N_SCANS, n_vertices=30):
    mask = np.zeros((4, 4, 3), dtype=bool)
    mask[1:3, 1:3, :] = True
    surface = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, n_vertices, 2), n_vertices, name="CortexLeft")
    volume = nib.cifti2.BrainModelAxis.from_mask(mask, affine=AFFINE, name="ThalamusLeft")
    return nib.cifti2.SeriesAxis(start=0, step=2.0, size=n_scans), surface + volume


def write_cifti(path: Path, matrix):
    series, models = cifti_axes(matrix.shape[0])
    assert matrix.shape[1] == len(models)
    nib.save(nib.Cifti2Image(matrix.astype(np.float32), header=(series, models)), str(path))
    return path


def write_cifti_runs(folder: Path, rng, frames=(17, 23), stored="<f4", vertices=60) -> list[Path]:
    """CIFTI runs (.dtseries.nii, one per entry of `frames`) on a left cortex of `vertices` vertices, stored as
    `stored`, values near 100: vertex 3 constant, and (floating types) vertex 11 NaN in one scan of each run, both
    out of the automatic mask."""
    models = nib.cifti2.BrainModelAxis.from_surface(np.arange(0, 2 * vertices, 2), 2 * vertices, name="CortexLeft")
    paths = []
    for r, n in enumerate(frames):
        values = rng.standard_normal((n, vertices)) * 50 + 100
        values[:, 3] = 7.0
        if np.dtype(stored).kind == "f":
            values[(5 + r) % n, 11] = np.nan
        paths.append(folder / f"run-{r}.dtseries.nii")
        nib.save(nib.Cifti2Image(values.astype(stored), header=(nib.cifti2.SeriesAxis(0, 2, n), models)), paths[-1])
    return paths


def write_icosahedron(path: Path) -> Path:
    """A 12-vertex, 20-triangle GIFTI surface (vertices and triangles)."""
    phi = (1 + 5**0.5) / 2
    coords = np.array(
        [
            [-1, phi, 0],
            [1, phi, 0],
            [-1, -phi, 0],
            [1, -phi, 0],
            [0, -1, phi],
            [0, 1, phi],
            [0, -1, -phi],
            [0, 1, -phi],
            [phi, 0, -1],
            [phi, 0, 1],
            [-phi, 0, -1],
            [-phi, 0, 1],
        ],
        dtype=np.float32,
    )
    faces = np.array(
        [
            [0, 11, 5],
            [0, 5, 1],
            [0, 1, 7],
            [0, 7, 10],
            [0, 10, 11],
            [1, 5, 9],
            [5, 11, 4],
            [11, 10, 2],
            [10, 7, 6],
            [7, 1, 8],
            [3, 9, 4],
            [3, 4, 2],
            [3, 2, 6],
            [3, 6, 8],
            [3, 8, 9],
            [4, 9, 5],
            [2, 4, 11],
            [6, 2, 10],
            [8, 6, 7],
            [9, 8, 1],
        ],
        dtype=np.int32,
    )
    mesh = nib.gifti.GiftiImage(
        darrays=[
            nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(faces, intent="NIFTI_INTENT_TRIANGLE"),
        ]
    )
    nib.save(mesh, str(path))
    return path
