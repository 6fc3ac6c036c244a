"""A synthetic fMRI run with known answers, fitted through the same path as ``voxfit fit``."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from .._memory import parse_memory, size_text
from .._threads import resolve_workers
from ..design import Design, spm_hrf
from ..exceptions import InputError
from ..io import OutputFolder, before_commit, disk_error, make_folder, remove_made_folders, save_nifti
from ..io.output import signals_held
from .glm import ImageFit, fit_images
from .record import ModelRecord, recorded_path

__all__ = ["make_demo_run", "run_demo", "DemoRun"]

TR = 2.0
DATA_FILES = ("sub-demo_task-blocks_bold.nii.gz", "brain_mask.nii.gz")  # the demo's data/
SHAPE = (40, 48, 40)  # 4 mm voxels
N_SCANS = 180


@dataclass(frozen=True, eq=False)
class DemoRun:
    """The synthetic run: image, design (n_scans, p) with its column names, brain mask, true effects (%)."""

    image: nib.Nifti1Image
    design: np.ndarray
    names: list[str]
    brain: np.ndarray
    truth: dict[str, np.ndarray]


def _blob(center, radius):
    grid = np.indices(SHAPE).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return np.exp(-d2 / (2 * radius**2)) * (d2 < (2.5 * radius) ** 2)


def make_demo_run(seed: int = 2024) -> DemoRun:
    """Brain-shaped ellipsoid, two conditions in blocks, activation blobs, drift, AR(1) noise; fixed seed."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    center = np.array(SHAPE) / 2 - 0.5
    radii = np.array([17.0, 21.0, 16.0])
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0

    # design: 20 s blocks of A, rest, B, rest; SPM canonical HRF; cosine drift (128 s); constant
    t = np.arange(N_SCANS) * TR
    fine = 16
    hrf = spm_hrf(TR / fine)
    columns = {}
    for k, name in enumerate(("A", "B")):
        box = ((t // 20) % 4 == 2 * k).astype(float)
        up = np.repeat(box, fine)
        columns[name] = np.convolve(up, hrf)[: up.size][::fine]
    n_cos = int(np.floor(2 * N_SCANS * TR / 128)) + 1
    for k in range(1, n_cos):
        columns[f"drift{k}"] = np.sqrt(2.0 / N_SCANS) * np.cos(np.pi * (np.arange(N_SCANS) + 0.5) * k / N_SCANS)
    columns["constant"] = np.ones(N_SCANS)
    names = list(columns)
    design = np.column_stack([columns[c] for c in names])

    truth = {
        "A": 2.0 * _blob((12, 16, 20), 3.0) + 1.0 * _blob((26, 32, 18), 3.0),
        "B": 1.5 * _blob((28, 16, 22), 3.0) + 1.0 * _blob((26, 32, 18), 3.0),
    }
    for v in truth.values():
        v *= brain
    baseline = np.where(brain, 1000.0 * (1 + 0.1 * _blob(center, 12.0)), 20.0)
    base = baseline.reshape(-1, order="F")
    percent = {name: truth[name].reshape(-1, order="F") / 100.0 for name in ("A", "B")}
    drift = rng.normal(0, 0.02, brain.size) * np.sqrt(N_SCANS)  # (each voxel's share of the slowest cosine)
    # scan by scan into the float32 run (whole float64 arrays of signal, drift and noise took 0.5-1.4 s, and
    # five times the run's memory)
    data = np.empty((N_SCANS, brain.size), dtype=np.float32)
    noise = rng.standard_normal(brain.size)
    for i in range(N_SCANS):  # AR(1), phi = 0.3, unit variance
        if i:
            noise = 0.3 * noise + np.sqrt(1 - 0.09) * rng.standard_normal(brain.size)
        signal = columns["A"][i] * percent["A"] + columns["B"][i] * percent["B"]
        data[i] = base * (1 + signal + columns["drift1"][i] * drift) + 0.01 * base * noise
    vols = data.reshape((N_SCANS,) + SHAPE[::-1]).transpose(3, 2, 1, 0)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * 2.0
    img = nib.Nifti1Image(vols, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    return DemoRun(image=img, design=design, names=names, truth=truth, brain=brain)


# The demo's peak resident memory, interpreter included: the synthetic run is made scan by scan in float32 (180
# scans of 76,800 voxels, 55 MB), saved and fitted (measured on Linux x86-64, numpy 2: 197 MiB without a cap, 238
# MiB with the report; 190 MiB under 320M, 214 MiB with the report)
DEMO_BYTES = 320 << 20


def run_demo(
    out_dir,
    force: bool = False,
    progress: bool | None = None,
    seed: int = 2024,
    max_memory=None,
    n_jobs: int | None = None,
    command: list[str] | None = None,
):
    """Make the run, save it as NIfTI, fit it as ``voxfit fit --noise ar1`` would, and keep the data in
    ``<out_dir>/data/`` (model.json names them there, with the command that repeats the fit).

    `max_memory` and `n_jobs` are those of :func:`voxfit.fit_images`, recorded in model.json and in the command
    that repeats the fit; the demo's size is fixed, so a `max_memory` below :data:`DEMO_BYTES` is refused
    before anything is made. `command` is the command line recorded (default ``voxfit demo``).

    Returns ``(run, result, summary_lines)``.
    """
    if max_memory is not None and parse_memory(max_memory) < DEMO_BYTES:
        raise InputError(
            f"`max_memory`={max_memory!r} cannot hold the demo (a synthetic run of {N_SCANS} scans of "
            f"{np.prod(SHAPE):,} voxels, made and fitted in memory); give at least "
            f"{size_text(DEMO_BYTES)}."
        )
    out = Path(out_dir)
    data = out / "data"
    if data.exists() and not data.is_dir():
        raise InputError(f"{data} is a file; the demo keeps its data in a folder of that name: choose another -o.")
    others = sorted(p.name for p in data.iterdir() if p.name not in DATA_FILES) if data.is_dir() else []
    if others:  # the commit replaces data/ whole: never a folder holding the user's files
        raise InputError(
            f"{data} holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); the "
            "demo writes its data there: move them, or choose another -o."
        )
    options = _demo_options(max_memory, n_jobs)  # checked before the run is made
    run = make_demo_run(seed)
    contrasts = ["AvsB=A - B", "A=A", "B=B", "effects=A; B"]
    made, tmp = [], None
    try:
        # written beside the output folder (same file system), moved into the run's hidden folder before its
        # commit: the data, the maps and model.json appear together or not at all (a signal while the folders
        # are made is raised once they are recorded, then they are removed)
        with signals_held():
            made = make_folder(out.absolute().parent, output=out)
            tmp = Path(tempfile.mkdtemp(prefix=".voxfit-demo-", dir=out.absolute().parent))
        bold = tmp / "sub-demo_task-blocks_bold.nii.gz"
        save_nifti(run.image, bold)
        kinds = tuple(
            "constant" if n == "constant" else "drift" if n.startswith("drift") else "condition" for n in run.names
        )
        design = Design(run.design, tuple(run.names), kinds, TR)
        mask_path = tmp / "brain_mask.nii.gz"
        save_nifti(nib.Nifti1Image(run.brain.astype(np.uint8), run.image.affine), mask_path)
        with before_commit(lambda folder: _keep_data(folder, tmp, contrasts, seed, options)):
            result = fit_images(
                bold,
                design,
                contrasts,
                mask=mask_path,
                out_dir=out,
                force=force,
                progress=progress,
                command=list(command or ["voxfit", "demo"]),
                noise="ar1",
                max_memory=max_memory,
                n_jobs=n_jobs,
            )
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_made_folders(made)
        error = disk_error(exc, tmp) if tmp is not None else None
        if error is not None:
            raise error from None
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # (gone already once the commit has moved it)
    return run, result, _summary(run, result, out_dir)


def _demo_options(max_memory, n_jobs) -> list[str]:
    """`max_memory` and `n_jobs` checked, as the options of ``voxfit fit`` that repeat them."""
    options = []
    if max_memory is not None:
        parse_memory(max_memory)
        options += ["--max-memory", str(max_memory)]
    if n_jobs is not None:
        options += ["--n-jobs", str(resolve_workers(n_jobs))]
    return options


def _keep_data(folder: OutputFolder, tmp: Path, contrasts, seed: int, options=()) -> None:
    """Move the demo's data into ``data/`` of the run's hidden folder and point model.json at them (at their
    place once committed), with the command that repeats the fit from the folder (the checksums stay those
    of the same bytes). An earlier demo's data/ (--force) is replaced by the commit."""
    data = folder.path("data")
    os.replace(tmp, data)
    final = folder.final / "data"
    record = ModelRecord.read(folder.path("model.json"))
    moved = {recorded_path(tmp / f.name): recorded_path(final / f.name) for f in data.iterdir()}
    source = record.mask["source"]
    demo = {
        "seed": seed,
        "data": "data/: the synthetic run and its brain mask, made by voxfit.models.demo.make_demo_run(seed)",
        "repeat": [
            "voxfit",
            "fit",
            "data/sub-demo_task-blocks_bold.nii.gz",
            "--design",
            "design.tsv",
            "--mask",
            "data/brain_mask.nii.gz",
            "--noise",
            "ar1",
            *[a for c in contrasts for a in ("--contrast", c)],
            *options,
            "-o",
            "refit",
        ],
    }
    replace(
        record,
        inputs=[{**i, "path": moved.get(i["path"], i["path"])} for i in record.inputs],
        mask={**record.mask, "source": moved.get(recorded_path(source), source)},
        demo=demo,
    ).write(folder)


def _summary(run: DemoRun, result: ImageFit, out_dir) -> list[str]:
    idx = result.masker.index
    lines = [
        f"Fitted a synthetic run: {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels of 4 mm, {N_SCANS} scans (TR {TR:g} s), "
        f"{result.masker.n_voxels:,} in the brain mask; design of {len(result.fit.names)} columns "
        f"(A, B blocks convolved with SPM's HRF, cosine drift, constant), AR(1) noise estimated per voxel.",
        f"Time: read {result.timing['load_s']:.2f} s, fit {result.timing['fit_s']:.2f} s, "
        f"write {result.timing['write_s']:.2f} s. Maps: {out_dir}/ ({len(result.files)} files).",
    ]
    for name in ("A", "B"):
        true = run.truth[name].reshape(-1, order="F")[idx]
        z = result.contrasts[name].z
        active, quiet = true > 0.5, true == 0
        est = result.contrasts[name].effect * 100 / result.fit.betas[result.fit.names.index("constant")]
        r = np.corrcoef(est, true)[0, 1]
        lines.append(
            f"Condition {name}: z > 3.1 in {np.mean(z[active] > 3.1):.0%} of the {active.sum()} truly active voxels "
            f"and {np.mean(z[quiet] > 3.1):.2%} of the {quiet.sum():,} inactive ones (nominal 0.1%); "
            f"estimated vs true % signal change: r = {r:.3f}."
        )
    return lines
