"""A whole study, run -> subject -> dataset: ``voxfit bids`` against nilearn doing the same, whole processes.

    python benchmarks/bench_study.py [--dataset DIR] [--keep DIR] [--repeat 1] [--subjects 20] [--scans 200]
        [--shape 64 76 64] [--agreement-subjects 2]

Data: the synthetic BIDS dataset of ``benchmarks/make_bids_dataset.py`` (``voxfit.bids.synthetic``): 20 subjects
x 2 runs x 200 scans of float32 volumes on a 64 x 76 x 64 grid (~119k brain voxels), TR 2 s, two conditions,
fMRIPrep's confounds tables and brain masks. ``--dataset`` reuses one already written (writing it takes minutes);
without it one is written into the work folder (``--keep``, or a temporary folder removed afterwards).

The study, the same for both tools: at the run level the events' ``congruent`` and ``incongruent`` (Glover HRF,
nilearn's convolution), the six motion columns of the confounds, a cosine high-pass filter at 0.01 Hz and a
constant, AR(1) noise, fMRIPrep's brain mask, no scaling; two contrasts, ``incongruent - congruent`` and
``congruent``; fixed effects over each subject's two runs; a one-sample OLS test over subjects.

- voxfit: ``voxfit bids ROOT OUT dataset --model M --noise ar1 --convolution nilearn --group-model ols --n-jobs 1``
  with the model file M this script writes (Run node: Model.X, Model.HRF glover, Options.HighPassFilterCutoffHz
  0.01, the contrasts; Subject node ``meta``; Dataset node ``glm``); every map of every node written.
- nilearn: ``first_level_from_bids`` (task, space, desc-preproc, the derivatives folder; hrf glover, high_pass
  0.01, noise_model ar1, slice_time_ref from the runs' StartTime, signal_scaling off, minimize_memory), the
  confounds tables cut to the six motion columns, each subject's mask; ``FirstLevelModel.fit`` on both runs,
  ``compute_contrast`` of each contrast (nilearn's fixed effects over runs), every output written;
  ``SecondLevelModel`` on the 20 subjects' effect maps, a one-sample contrast per contrast, every output written.

Each side runs in its own child process with one thread for BLAS and numba (OMP/OPENBLAS/MKL/NUMBA threads 1;
voxfit ``--n-jobs 1``; nilearn ``n_jobs=1``): wall time, CPU time (user + system) and peak resident memory (GNU
time's %U, %S, %M), best of --repeat. With ``--n-jobs 1`` voxfit fits one run at a time on one thread, and
overlaps it with two side threads: the next run's data being read (decompressed and masked) and the previous
run's maps being written; its CPU time is therefore more than its wall time, and both ratios are printed.
Indexing the dataset (each in a fresh process, the call timed after the import): pybids'
``BIDSLayout`` with the derivatives, voxfit's cached index (``voxfit.bids.index(..., database=...)``) cold and
warm (its fingerprint unchanged).

Agreement (the issue's targets): the run-level z maps of ``voxfit bids ... run --noise ols --convolution nilearn``
against nilearn's ``FirstLevelModel`` (the same events, motion confounds, high-pass filter, mask; OLS) on the runs
of the first --agreement-subjects subjects (max |dz| <= 1e-4), and voxfit's dataset level (OLS) against
``SecondLevelModel`` on voxfit's own subject effect maps (max |dz| <= 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _util import Timing, timed_run, work_folder

from voxfit.bids.synthetic import MOTION, nilearn_model

TASK = "stroop"
SPACE = "MNI152NLin2009cAsym"
CONTRASTS = {"IvC": "incongruent - congruent", "congruent": "congruent"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def model_file(path: Path) -> Path:
    """The study as a BIDS Stats Model (see the module docstring), written to `path`."""
    model = nilearn_model(TASK, name="benchstudy")
    path.write_text(json.dumps(model, indent=2) + "\n")
    return path


NILEARN_STUDY = r"""
import sys, warnings
from pathlib import Path
import pandas as pd
from sklearn.base import clone
from nilearn.glm.first_level import first_level_from_bids
from nilearn.glm.second_level import SecondLevelModel

root, derivatives, out, noise, labels = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
MOTION = {motion!r}
CONTRASTS = {contrasts!r}
warnings.simplefilter("ignore")
models, imgs, events, confounds = first_level_from_bids(
    root, {task!r}, space_label={space!r}, sub_labels=labels or None, img_filters=[("desc", "preproc")],
    derivatives_folder=derivatives, hrf_model="glover", high_pass=0.01, noise_model=noise, slice_time_ref=None,
    signal_scaling=False, minimize_memory=True, n_jobs=1,
)
effects = {{name: [] for name in CONTRASTS}}
for model, runs, ev, conf in zip(models, imgs, events, confounds):
    sub = model.subject_label
    model.mask_img = str(next((Path(root) / derivatives / f"sub-{{sub}}" / "func").glob("*_desc-brain_mask.nii.gz")))
    motion = [c[list(MOTION)] for c in conf]
    if noise == "ols":  # agreement: each run fitted alone, its own z maps
        for k, run in enumerate(runs):
            one = clone(model).fit(run, events=ev[k], confounds=motion[k])
            for name, expression in CONTRASTS.items():
                z = one.compute_contrast(expression, output_type="z_score")
                z.to_filename(out / f"sub-{{sub}}_run-{{k + 1}}_contrast-{{name}}_z.nii.gz")
        continue
    model.fit(runs, events=ev, confounds=motion)
    for name, expression in CONTRASTS.items():
        maps = model.compute_contrast(expression, output_type="all")
        for stat, img in maps.items():
            img.to_filename(out / f"sub-{{sub}}_contrast-{{name}}_{{stat}}.nii.gz")
        effects[name].append(maps["effect_size"])
if noise != "ols":
    for name, maps in effects.items():
        group = SecondLevelModel(n_jobs=1, minimize_memory=True).fit(
            maps, design_matrix=pd.DataFrame({{"intercept": [1.0] * len(maps)}})
        )
        for stat, img in group.compute_contrast("intercept", output_type="all").items():
            img.to_filename(out / f"group_contrast-{{name}}_{{stat}}.nii.gz")
"""


def voxfit_argv(root: Path, derivatives: Path, out: Path, model: Path, level: str, noise: str, labels=()) -> list:
    argv = [sys.executable, "-m", "voxfit", "bids", str(root), str(out), level, "--derivatives", str(derivatives)]
    argv += ["--model", str(model), "--noise", noise, "--convolution", "nilearn", "--group-model", "ols"]
    argv += ["--n-jobs", "1", "--quiet"]
    return argv + (["--participant-label", *labels] if labels else [])


def nilearn_argv(script: Path, root: Path, derivatives: Path, out: Path, noise: str, labels=()) -> list:
    return [sys.executable, str(script), str(root), str(derivatives.relative_to(root)), str(out), noise, *labels]


INDEX_PYBIDS = """
import sys, time
t = time.perf_counter()
import bids
t1 = time.perf_counter()
bids.BIDSLayout(sys.argv[1], derivatives=[sys.argv[2]], validate=False)
print(t1 - t, time.perf_counter() - t1)
"""
INDEX_VOXFIT = """
import sys, time
t = time.perf_counter()
import bids
from voxfit.bids import index
t1 = time.perf_counter()
index(sys.argv[1], [sys.argv[2]], database=sys.argv[3])
print(t1 - t, time.perf_counter() - t1)
"""


def timed_call(code: str, *args) -> tuple[float, float]:
    """The seconds a child process prints: its imports (pybids, voxfit) and the call it times after them."""
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    imports, call = out.stdout.strip().splitlines()[-1].split()
    return float(imports), float(call)


def best_run(argv, repeat: int, before):
    """The fastest of `repeat` runs (its CPU time with it), with the largest peak memory of them."""
    runs = []
    for _ in range(repeat):
        before()
        runs.append(timed_run(argv))
    fastest = min(runs, key=lambda t: t.wall)
    return Timing(fastest.wall, max(t.peak for t in runs), fastest.cpu)


def fresh(folder: Path):
    def clear():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    return clear


def max_abs_dz(a: Path, b: Path, mask) -> float:
    import nibabel as nib

    x = np.asarray(nib.load(str(a)).get_fdata())[mask]
    y = np.asarray(nib.load(str(b)).get_fdata())[mask]
    return float(np.max(np.abs(x - y)))


def agreement(root: Path, derivatives: Path, folder: Path, model: Path, script: Path, n_subjects: int, study: Path):
    """The issue's two agreement figures: run-level z (OLS) against nilearn, dataset level against
    SecondLevelModel on voxfit's subject effect maps; printed, and returned as (run, dataset) max |dz|."""
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel

    subjects = sorted(p.name.removeprefix("sub-") for p in derivatives.glob("sub-*") if p.is_dir())[:n_subjects]
    vox, nil = folder / "agree-voxfit", folder / "agree-nilearn"
    fresh(vox)()
    fresh(nil)()
    env = {**os.environ, **ONE_THREAD}
    subprocess.run(voxfit_argv(root, derivatives, vox, model, "run", "ols", subjects), check=True, env=env)
    subprocess.run(nilearn_argv(script, root, derivatives, nil, "ols", subjects), check=True, env=env)
    run_dz = 0.0
    for sub in subjects:
        mask = next((derivatives / f"sub-{sub}" / "func").glob("*_desc-brain_mask.nii.gz"))
        inside = np.asarray(nib.load(str(mask)).get_fdata()) > 0
        for r in (1, 2):
            for name in CONTRASTS:
                ours = vox / f"sub-{sub}/node-run/sub-{sub}_task-{TASK}_run-{r}_space-{SPACE}_contrast-{name}"
                run_dz = max(
                    run_dz,
                    max_abs_dz(
                        Path(f"{ours}_stat-z_statmap.nii.gz"),
                        nil / f"sub-{sub}_run-{r}_contrast-{name}_z.nii.gz",
                        inside,
                    ),
                )
    group_dz = 0.0
    all_subjects = sorted(p.name.removeprefix("sub-") for p in derivatives.glob("sub-*") if p.is_dir())
    for name in CONTRASTS:
        effects = [
            str(study / f"sub-{s}/node-subject/sub-{s}_contrast-{name}_stat-effect_statmap.nii.gz")
            for s in all_subjects
        ]
        ours = study / f"node-dataset/contrast-{name}_stat-z_statmap.nii.gz"
        theirs = SecondLevelModel(minimize_memory=True).fit(
            effects, design_matrix=pd.DataFrame({"intercept": [1.0] * len(effects)})
        )
        z = np.asarray(theirs.compute_contrast("intercept", output_type="z_score").get_fdata())
        ours_z = np.asarray(nib.load(str(ours)).get_fdata())
        both = np.isfinite(ours_z) & (ours_z != 0)
        group_dz = max(group_dz, float(np.max(np.abs(ours_z[both] - z[both]))))
    print(
        f"agreement: run-level z, voxfit (OLS, --convolution nilearn) vs nilearn FirstLevelModel on "
        f"{2 * len(subjects)} runs x {len(CONTRASTS)} contrasts: max |dz| = {run_dz:.2e} (target 1e-4)"
    )
    print(
        f"agreement: dataset-level z, voxfit (--group-model ols) vs nilearn SecondLevelModel on voxfit's "
        f"{len(all_subjects)} subject effect maps, {len(CONTRASTS)} contrasts: max |dz| = {group_dz:.2e} (target 1e-6)"
    )
    return run_dz, group_dz


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="an existing dataset written by make_bids_dataset.py")
    ap.add_argument("--keep", type=Path, help="work folder kept afterwards (outputs of both tools, the dataset)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--subjects", type=int, default=20, help="when writing the dataset")
    ap.add_argument("--scans", type=int, default=200, help="when writing the dataset")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 76, 64), help="when writing the dataset")
    ap.add_argument("--agreement-subjects", type=int, default=2, help="subjects whose runs are compared")
    args = ap.parse_args(argv)

    import nilearn

    import voxfit

    with work_folder(args.keep, "voxfit-bench-study-") as folder:
        if args.dataset is None:
            from voxfit.bids.synthetic import make_dataset

            start = time.perf_counter()
            make_dataset(folder / "ds", subjects=args.subjects, scans=args.scans, shape=tuple(args.shape))
            print(f"wrote the dataset in {time.perf_counter() - start:.0f} s")
        root = (args.dataset or folder / "ds").resolve()
        derivatives = root / "derivatives" / "fmriprep"
        runs = sorted(derivatives.glob(f"sub-*/func/*_space-{SPACE}_desc-preproc_bold.nii.gz"))
        subjects = sorted({p.name.split("_")[0] for p in runs})
        import nibabel as nib

        first = nib.load(str(runs[0]))
        mask = next(derivatives.glob("sub-*/func/*_desc-brain_mask.nii.gz"))
        n_voxels = int((np.asarray(nib.load(str(mask)).dataobj) > 0).sum())
        print(
            f"voxfit {voxfit.__version__}, nilearn {nilearn.__version__}: {len(subjects)} subjects, {len(runs)} runs "
            f"x {first.shape[3]} scans on a {'x'.join(map(str, first.shape[:3]))} grid, {n_voxels:,} brain voxels; "
            f"{os.cpu_count()} CPUs, one thread each side; best of {args.repeat}"
        )
        model = model_file(folder / "model-benchstudy_smdl.json")
        script = folder / "nilearn_study.py"
        script.write_text(NILEARN_STUDY.format(motion=MOTION, contrasts=CONTRASTS, task=TASK, space=SPACE))

        pybids_s = min((timed_call(INDEX_PYBIDS, root, derivatives) for _ in range(args.repeat)), key=sum)
        db = folder / "index-db"
        shutil.rmtree(db, ignore_errors=True)
        cold = timed_call(INDEX_VOXFIT, root, derivatives, db)
        warm = min((timed_call(INDEX_VOXFIT, root, derivatives, db) for _ in range(args.repeat)), key=sum)
        print(
            f"indexing (target < 2 s): pybids BIDSLayout {pybids_s[1]:.2f} s; voxfit's cached index cold "
            f"{cold[1]:.2f} s, warm {warm[1]:.3f} s (importing pybids: {pybids_s[0]:.2f} s)"
        )

        os.environ.update(ONE_THREAD)  # the children inherit it
        vox_out, nil_out = folder / "voxfit", folder / "nilearn"
        vox = best_run(voxfit_argv(root, derivatives, vox_out, model, "dataset", "ar1"), args.repeat, fresh(vox_out))
        print(f"voxfit bids:  {vox.wall:8.1f} s  CPU {vox.cpu:8.1f} s  peak {vox.peak / 2**20:7.0f} MiB", flush=True)
        nil = best_run(nilearn_argv(script, root, derivatives, nil_out, "ar1"), args.repeat, fresh(nil_out))
        print(f"nilearn:      {nil.wall:8.1f} s  CPU {nil.cpu:8.1f} s  peak {nil.peak / 2**20:7.0f} MiB", flush=True)
        print(
            f"\nwhole study, run -> subject -> dataset, {len(CONTRASTS)} contrasts, AR(1):\n"
            f"{'':<36}{'wall (s)':>10}{'CPU (s)':>10}{'peak (MiB)':>12}\n"
            f"{'voxfit bids (n_jobs 1)':<36}{vox.wall:>10.1f}{vox.cpu:>10.1f}{vox.peak / 2**20:>12.0f}\n"
            f"{'nilearn (first_level_from_bids...)':<36}{nil.wall:>10.1f}{nil.cpu:>10.1f}{nil.peak / 2**20:>12.0f}\n"
            f"nilearn / voxfit: time {nil.wall / vox.wall:.1f}x (target >= 10x), CPU time {nil.cpu / vox.cpu:.1f}x, "
            f"peak memory {nil.peak / vox.peak:.1f}x (target >= 3x)"
        )
        agreement(root, derivatives, folder, model, script, args.agreement_subjects, vox_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
