"""Design construction time: 4 conditions of blocks, 300 scans, TR 2 s, SPM HRF + cosine drift.

    python benchmarks/bench_design.py

Prints the best of 20 builds for SPM's microtime grid (T = 16) and nilearn's convolution, and the same
design through nilearn's make_first_level_design_matrix when nilearn is installed (ratio = theirs / ours).
"""

import time
import warnings

import numpy as np

from voxfit.design import make_design


def best(f, repeat=20):
    f()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    events = {
        c: {"onset": np.arange(20.0 * k, 600, 80), "duration": np.full(len(np.arange(20.0 * k, 600, 80)), 10.0)}
        for k, c in enumerate("ABCD")
    }
    spm = best(lambda: make_design(events, 2.0, 300))
    nl = best(lambda: make_design(events, 2.0, 300, convolution="nilearn"))
    print(
        "voxfit make_design, 4 conditions x 300 scans: SPM grid "
        f"{spm * 1e3:.1f} ms, nilearn convolution {nl * 1e3:.1f} ms"
    )
    try:
        import pandas as pd
        from nilearn.glm.first_level import make_first_level_design_matrix
    except ImportError:
        return
    df = pd.DataFrame(
        [(o, d, c) for c, ev in events.items() for o, d in zip(ev["onset"], ev["duration"])],
        columns=["onset", "duration", "trial_type"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = best(
            lambda: make_first_level_design_matrix(np.arange(300) * 2.0, df, hrf_model="spm", high_pass=1 / 128)
        )
    print(
        f"nilearn make_first_level_design_matrix: {theirs * 1e3:.1f} "
        f"ms ({theirs / nl:.1f}x voxfit's nilearn convolution)"
    )


if __name__ == "__main__":
    main()
