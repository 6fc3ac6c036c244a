"""Write the synthetic BIDS dataset with fMRIPrep-style derivatives that bench_study.py fits.

    python benchmarks/make_bids_dataset.py OUT [--subjects 20] [--runs 2] [--scans 200] [--shape 64 76 64]
        [--space MNI152NLin2009cAsym|fsaverage5|fsLR] [--sessions A B ...] [--seed 0]

The data are those of ``voxfit.bids.synthetic.make_dataset`` (its docstring says what they hold): by default
20 subjects x 2 runs x 200 scans of float32 volumes on a 64 x 76 x 64 grid of 3 mm voxels (a brain ellipsoid
of ~135,000 voxels), TR 2 s, two conditions, fMRIPrep's confounds table and brain mask per run.
"""

from __future__ import annotations

import argparse
import time

from voxfit.bids.synthetic import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 76, 64))
    parser.add_argument("--space", default="MNI152NLin2009cAsym")
    parser.add_argument("--sessions", nargs="*", default=())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    study = make_dataset(
        args.out,
        subjects=args.subjects,
        runs=args.runs,
        scans=args.scans,
        shape=tuple(args.shape),
        space=args.space,
        sessions=tuple(args.sessions),
        seed=args.seed,
    )
    print(
        f"wrote {len(study.subjects)} subjects x {study.runs} runs x {study.scans} scans ({study.space}) "
        f"to {study.root} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
