"""A synthetic BIDS dataset with fMRIPrep-style derivatives, for tests, benchmarks and trying ``voxfit bids``.

The raw dataset holds what a scanner export converted to BIDS holds: ``participants.tsv`` (rows not sorted,
with ``age`` and ``group`` columns), ``dataset_description.json``, the task's ``RepetitionTime`` and
``SliceTiming`` in one top-level sidecar (BIDS inheritance), and per run an ``events.tsv`` and a raw BOLD
file (zeros: pybids reads the run's length from its header). ``derivatives/fmriprep`` holds, per run and as
fMRIPrep names them, the preprocessed BOLD in the asked space (volumes: ``space-<S>_desc-preproc_bold.nii.gz``
and ``desc-brain_mask``; ``fsaverage5``: ``hemi-L|R_space-fsaverage5_bold.func.gii``; ``fsLR``:
``space-fsLR_den-91k_bold.dtseries.nii``), the confounds table ``desc-confounds_timeseries.tsv`` with its JSON
sidecar, and a BOLD sidecar.

The signal: two conditions, ``congruent`` and ``incongruent`` (alternating 2 s events; other names and numbers
with `conditions`), an SPM canonical response in a blob (2% of the baseline on average, varying between
subjects; the k-th condition 1 + k/2 times larger: the incongruent one 1.5x), a baseline of 1000, AR(1) noise
(coefficient 0.3, innovations of standard deviation 5), a slow drift, and motion regressors whose effect is
added to the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticStudy", "make_dataset", "nilearn_model"]

SPACES = ("MNI152NLin2009cAsym", "fsaverage5", "fsLR")
CONDITIONS = ("congruent", "incongruent")
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class SyntheticStudy:
    """Where :func:`make_dataset` wrote the dataset and what it holds."""

    root: Path
    derivatives: Path
    subjects: tuple[str, ...]
    runs: int
    scans: int
    tr: float
    task: str
    space: str


def make_dataset(
    root,
    *,
    subjects: int = 3,
    runs: int = 2,
    scans: int = 40,
    shape: tuple[int, int, int] = (10, 12, 10),
    tr: float = 2.0,
    task: str = "stroop",
    space: str = "MNI152NLin2009cAsym",
    sessions: tuple[str, ...] = (),
    vertices: int = 200,
    seed: int = 0,
    conditions: tuple[str, ...] = CONDITIONS,
    extra_confounds: tuple[str, ...] = (),
    slice_timing_corrected: bool = True,
) -> SyntheticStudy:
    """Write a BIDS dataset with fMRIPrep-style derivatives under `root` (see the module docstring).

    `shape` is the volume grid (``space`` a volume space); `vertices` the vertices per hemisphere of
    ``fsaverage5`` (10242 in the real mesh) and the cortical grayordinates of ``fsLR`` (a 4x4x3 subcortical
    block is added); `sessions` labels give each subject those sessions (none: no session level);
    `conditions` the trial types, in turn; `extra_confounds` columns of standard normal noise added to each
    confounds table (e.g. ``("nuissance1", "nuissance2")``, as the specification's example model names them).
    The raw sidecar has SliceTiming (8 slices, ascending); with `slice_timing_corrected`, as fMRIPrep does when
    it corrects slice timing, the preprocessed runs' sidecars have ``SliceTimingCorrected`` and ``StartTime``,
    the time the scans were shifted to (fMRIPrep's: the middle of the slice times, in ms).
    """
    if space not in SPACES and not space.startswith("MNI"):
        raise ValueError(f"space must be a volume space (MNI...), fsaverage5 or fsLR; got {space!r}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    derivatives = root / "derivatives" / "fmriprep"
    derivatives.mkdir(parents=True, exist_ok=True)
    labels = tuple(f"{k:02d}" for k in range(1, subjects + 1))
    _write_json(root / "dataset_description.json", {"Name": "voxfit synthetic study", "BIDSVersion": "1.9.0"})
    _write_json(
        derivatives / "dataset_description.json",
        {
            "Name": "fMRIPrep - synthetic",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
        },
    )
    slice_timing = list(np.round(np.linspace(0, tr, 8, endpoint=False), 4))
    sidecar = {"RepetitionTime": tr, "SkullStripped": False}
    if slice_timing_corrected:
        start = round(min(slice_timing) + 0.5 * (max(slice_timing) - min(slice_timing)), 3)
        sidecar.update(SliceTimingCorrected=True, StartTime=start)
    _write_json(root / f"task-{task}_bold.json", {"TaskName": task, "RepetitionTime": tr, "SliceTiming": slice_timing})
    _participants(root, labels, rng)
    amplitude = 1.0 + 0.5 * rng.standard_normal(subjects)  # each subject's response, percent of the baseline
    for s, label in enumerate(labels):
        for session in sessions or (None,):
            for run in range(1, runs + 1):
                parts = [f"sub-{label}"] + ([f"ses-{session}"] if session else []) + [f"task-{task}", f"run-{run}"]
                folder = Path(*parts[: 1 + bool(session)], "func")
                stem = "_".join(parts)
                events = _events(scans * tr, rng, conditions)
                _write_tsv(root / folder / f"{stem}_events.tsv", events)
                _raw_bold(root / folder / f"{stem}_bold.nii.gz", shape, scans)
                regressors = _regressors(events, scans, tr, conditions)
                confounds = _confounds(scans, rng)
                confounds.update({name: rng.standard_normal(scans) for name in extra_confounds})
                _write_tsv(derivatives / folder / f"{stem}_desc-confounds_timeseries.tsv", confounds)
                _write_json(derivatives / folder / f"{stem}_desc-confounds_timeseries.json", _confounds_sidecar())
                signal = 20.0 * amplitude[s] * sum((1.0 + 0.5 * j) * regressors[:, j] for j in range(len(conditions)))
                _preprocessed(derivatives / folder, stem, space, shape, vertices, signal, confounds, sidecar, rng)
    return SyntheticStudy(root, derivatives, labels, runs, scans, tr, task, space)


def nilearn_model(task: str = "stroop", name: str = "nilearn") -> dict:
    """A BIDS Stats Model of a :func:`make_dataset` study that nilearn fits the same way (``first_level_from_bids``
    with hrf glover, high_pass 0.01 Hz and the six motion columns as confounds; its fixed effects over a
    subject's runs; a one-sample ``SecondLevelModel``): contrasts ``congruent`` and ``IvC`` (incongruent -
    congruent) at every level. The study benchmark and the agreement tests with nilearn fit it."""
    return {
        "Name": name,
        "BIDSModelVersion": "1.0.0",
        "Input": {"task": [task]},
        "Nodes": [
            {
                "Level": "Run",
                "Name": "run",
                "GroupBy": ["run", "subject"],
                "Model": {
                    "Type": "glm",
                    "X": [*CONDITIONS, *MOTION, 1],
                    "HRF": {"Variables": list(CONDITIONS), "Model": "Glover"},
                    "Options": {"HighPassFilterCutoffHz": 0.01},
                },
                "DummyContrasts": {"Contrasts": ["congruent"], "Test": "t"},
                "Contrasts": [
                    {"Name": "IvC", "ConditionList": ["incongruent", "congruent"], "Weights": [1, -1], "Test": "t"}
                ],
            },
            {
                "Level": "Subject",
                "Name": "subject",
                "GroupBy": ["subject", "contrast"],
                "Model": {"Type": "meta", "X": [1]},
                "DummyContrasts": {"Test": "t"},
            },
            {
                "Level": "Dataset",
                "Name": "dataset",
                "GroupBy": ["contrast"],
                "Model": {"Type": "glm", "X": [1]},
                "DummyContrasts": {"Test": "t"},
            },
        ],
    }


def _participants(root: Path, labels, rng) -> None:
    order = rng.permutation(len(labels))  # rows in the table's own order, as users keep them
    rows = ["participant_id\tage\tgroup"]
    rows += [f"sub-{labels[k]}\t{int(rng.integers(18, 60))}\t{'patient' if k % 2 else 'control'}" for k in order]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")


def _events(duration: float, rng, conditions=CONDITIONS) -> list[dict]:
    onsets = np.arange(6.0, duration - 16.0, 8.0) + rng.uniform(0, 2, size=len(np.arange(6.0, duration - 16.0, 8.0)))
    return [
        {
            "onset": round(float(t), 3),
            "duration": 2.0,
            "trial_type": conditions[k % len(conditions)],
            "response_time": 0.5,
        }
        for k, t in enumerate(onsets)
    ]


def _regressors(events: list[dict], scans: int, tr: float, conditions=CONDITIONS) -> np.ndarray:
    """The conditions convolved with SPM's canonical HRF at 16 microtime bins per scan, (scans, conditions)."""
    from ..design.hrf import spm_hrf

    dt = tr / 16
    hrf = spm_hrf(dt)
    out = np.zeros((scans, len(conditions)))
    for j, condition in enumerate(conditions):
        u = np.zeros(scans * 16 + 64)
        for e in events:
            if e["trial_type"] == condition:
                u[int(e["onset"] / dt) : int((e["onset"] + e["duration"]) / dt)] = 1.0
        out[:, j] = np.convolve(u, hrf)[: scans * 16 : 16]
    return out / max(out.max(), 1e-12)


def _confounds(scans: int, rng) -> dict[str, np.ndarray]:
    motion = np.cumsum(0.02 * rng.standard_normal((scans, 6)), axis=0)
    table = {name: motion[:, k] for k, name in enumerate(MOTION)}
    for k, name in enumerate(MOTION):
        derivative = np.r_[np.nan, np.diff(motion[:, k])]
        table[f"{name}_derivative1"] = derivative
        table[f"{name}_power2"] = motion[:, k] ** 2
    displacement = np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)
    table["framewise_displacement"] = np.r_[np.nan, displacement]
    table["global_signal"] = 1000 + rng.standard_normal(scans)
    table["csf"] = 800 + rng.standard_normal(scans)
    table["white_matter"] = 900 + rng.standard_normal(scans)
    for k in range(5):
        table[f"a_comp_cor_{k:02d}"] = rng.standard_normal(scans) / np.sqrt(scans)
    t = (np.arange(scans) + 0.5) / scans
    for k in range(1, 3):
        table[f"cosine{k - 1:02d}"] = np.sqrt(2 / scans) * np.cos(np.pi * k * t)
    return table


def _confounds_sidecar() -> dict:
    return {
        f"a_comp_cor_{k:02d}": {"Method": "aCompCor", "Mask": "combined", "Retained": True, "VarianceExplained": 0.1}
        for k in range(5)
    }


def _noise(n_elements: int, scans: int, rng, rho: float = 0.3) -> np.ndarray:
    """AR(1) noise of unit innovation variance, (scans, n_elements) float32."""
    from scipy.signal import lfilter

    e = rng.standard_normal((scans, n_elements), dtype=np.float32)
    return lfilter([1.0], [1.0, -rho], e, axis=0).astype(np.float32)


def _series(n_elements: int, active: np.ndarray, signal, confounds, scans: int, rng) -> np.ndarray:
    """Baseline 1000, drift, motion, the task signal in the `active` elements, noise: (scans, n_elements)."""
    y = _noise(n_elements, scans, rng) * np.float32(5.0)
    y += np.float32(1000.0)
    y += np.linspace(-3, 3, scans, dtype=np.float32)[:, None]
    y += np.float32(20.0) * confounds["trans_x"].astype(np.float32)[:, None]
    y[:, active] += signal.astype(np.float32)[:, None]
    return y


def _preprocessed(folder: Path, stem: str, space, shape, vertices, signal, confounds, sidecar, rng) -> None:
    import nibabel as nib

    scans, tr = len(signal), sidecar["RepetitionTime"]
    folder.mkdir(parents=True, exist_ok=True)
    if space == "fsaverage5":
        for hemi in "LR":
            _write_json(folder / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.json", sidecar)
            active = np.zeros(vertices, dtype=bool)
            active[: vertices // 5] = True
            y = _series(vertices, active, signal, confounds, scans, rng)
            meta = nib.gifti.GiftiMetaData({"TimeStep": f"{1000 * tr:f}"})  # (FreeSurfer's: the TR in ms)
            arrays = [
                nib.gifti.GiftiDataArray(row, "NIFTI_INTENT_TIME_SERIES", "NIFTI_TYPE_FLOAT32", meta=meta) for row in y
            ]
            nib.save(nib.GiftiImage(darrays=arrays), folder / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.func.gii")
        return
    if space == "fsLR":
        _write_json(folder / f"{stem}_space-fsLR_den-91k_bold.json", sidecar)
        mask = np.zeros((4, 4, 3), dtype=bool)
        mask[1:3, 1:3, :] = True
        cortex = nib.cifti2.BrainModelAxis.from_surface(np.arange(vertices), vertices, name="CortexLeft")
        models = cortex + nib.cifti2.BrainModelAxis.from_mask(mask, affine=np.eye(4), name="ThalamusLeft")
        active = np.zeros(len(models), dtype=bool)
        active[: vertices // 5] = True
        y = _series(len(models), active, signal, confounds, scans, rng)
        series = nib.cifti2.SeriesAxis(start=0, step=tr, size=scans)
        nib.save(nib.Cifti2Image(y, header=(series, models)), folder / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii")
        return
    _write_json(folder / f"{stem}_space-{space}_desc-preproc_bold.json", sidecar)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    radius = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.45
    brain = (((grid - centre) / radius) ** 2).sum(0) <= 1
    blob = (((grid - centre * np.float32(0.7)) / (radius * np.float32(0.35))) ** 2).sum(0) <= 1
    active = (blob & brain)[brain]
    y = np.zeros(shape + (scans,), dtype=np.float32)
    y[brain] = _series(int(brain.sum()), active, signal, confounds, scans, rng).T
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -1.5 * np.array(shape)
    image = nib.Nifti1Image(y, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = tr
    nib.save(image, folder / f"{stem}_space-{space}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), folder / f"{stem}_space-{space}_desc-brain_mask.nii.gz")


def _raw_bold(path: Path, shape, scans: int) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape + (scans,), dtype=np.int16), np.eye(4)), path)


def _write_tsv(path: Path, table) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
