"""Data for, and packing of, the SPM12 FAST reference (``spm12_fast.npz``; see README.md in this folder).

``python spm12_fast.py make DIR`` writes ``X.txt``, ``Cy.txt`` and ``tr.txt`` into DIR; run ``spm12_fast.m`` there
under Octave with SPM12's folder on the path; then ``python spm12_fast.py pack DIR`` writes ``spm12_fast.npz``.
"""

import sys
from pathlib import Path

import numpy as np
from scipy import signal

N_SCANS, TR, N_VOXELS = 64, 2.0, 200


def make(folder: Path) -> None:
    rng = np.random.default_rng(2027)
    t = np.arange(N_SCANS)
    box = ((t * TR) // 20 % 2).astype(float)
    hrf_like = signal.lfilter([0.0, 0.3, 0.4, 0.2], [1.0], box)
    X = np.column_stack([hrf_like, np.cos(np.pi * (t + 0.5) / N_SCANS), np.ones(N_SCANS)])
    # noise: AR(1) 0.4 plus a slow drift-like 1/f part, so that FAST's components have something to fit
    e = signal.lfilter([1.0], [1.0, -0.4], rng.standard_normal((N_SCANS + 50, N_VOXELS)), axis=0)[50:]
    slow = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal((N_SCANS + 50, N_VOXELS)), axis=0)[50:] * 0.3
    Y = X @ rng.normal(size=(3, N_VOXELS)) + e + slow
    Cy = Y @ Y.T / N_VOXELS
    np.savetxt(folder / "X.txt", X, fmt="%.17g")
    np.savetxt(folder / "Cy.txt", Cy, fmt="%.17g")
    np.savetxt(folder / "tr.txt", [TR], fmt="%.17g")


def pack(folder: Path) -> None:
    out = Path(__file__).with_name("spm12_fast.npz")
    np.savez_compressed(
        out,
        X=np.loadtxt(folder / "X.txt"),
        Cy=np.loadtxt(folder / "Cy.txt"),
        tr=float(np.loadtxt(folder / "tr.txt")),
        h=np.atleast_1d(np.loadtxt(folder / "h.txt")),
        V=np.loadtxt(folder / "V.txt"),
        W=np.loadtxt(folder / "W.txt"),
        n_components=int(np.loadtxt(folder / "m.txt")),
    )


if __name__ == "__main__":
    {"make": make, "pack": pack}[sys.argv[1]](Path(sys.argv[2]))
