"""False-positive rates and power of every first-level noise model on resting-state-like noise that is not AR(p).

    python validation/noise_realistic.py [--quick] [--voxels 20000] [--duration 600] [--seed 0]
                                         [--models ols,ar1,...] [--trs 0.7,1,2,3] [--designs block10,...]
                                         [--no-nilearn] [--power 0.5] [--regime resting|parcel]

The noise is generated in the frequency domain, voxel by voxel, as the sum of
- a power law, 1/f^beta, with beta drawn per voxel in [0.5, 1.0]: the exponents of resting-state BOLD spectra
  in grey matter (He 2011, J Neurosci 31:13786, "Scale-free properties of the fMRI signal during rest and task":
  power-law exponents of about 0.5-1 below ~0.1 Hz; Zarahn, Aguirre & D'Esposito 1997, NeuroImage 5:179: 1/f
  noise in null fMRI data); its level at 0.1 Hz drawn per voxel (log-uniform, 0.3 to 3 times the white level);
- an AR component: an Ornstein-Uhlenbeck process (time constant drawn per voxel in [0.5, 3] s), an AR(1) of
  coefficient exp(-TR / tau) at each TR, of variance 0.2 to 1 times the white level;
- cardiac (about 1.1 Hz, sd 0.1 Hz across voxels, spectral width 0.05 Hz) and respiratory (about 0.3 Hz, sd
  0.04 Hz, width 0.03 Hz) peaks (Glover, Li & Ress 2000, MRM 44:162; Birn et al. 2006, NeuroImage 31:1536),
  folded (aliased) into [0, 1/(2 TR)] at each TR, each 0 to 1 times the white level;
- white (thermal) noise of unit variance per scan.
With ``--regime parcel`` the power law and the AR part are scaled up, as in series averaged over a parcel (see
:data:`REGIMES`).

Every parameter varies over space, so a pooled model (ar1-global) sees spatially varying noise too: each chunk of
voxels is laid out as a volume of 20 x 20 voxel slices (2 mm voxels), its parameters drawn per 2 x 2 x 2 cube, so
that FILM's smoothing of the autocorrelation within the mask averages neighbours of similar noise (data get a
baseline of 1000, FILM's brightness threshold needing a mean image).

Designs (SPM's HRF, cosine high-pass at 128 s, a constant): blocks of 10, 20 and 30 s on / off, and random 1 s
events, on average one per 14 s; each at TR 0.7, 1, 2 and 3 s, a run of `duration` seconds. For each cell,
the fraction of null voxels with one-sided p < 0.05 and p < 0.001 of the task regressor (with the exact 95%
binomial interval: "ok" when it holds the nominal rate) under every noise model voxfit has (those of
``voxfit.models._routing`` that this tree knows) and nilearn's ``FirstLevelModel`` AR(1) (``run_glm``) beside
them. ``ar1-global`` (and ``fast``) pool over voxels passing SPM's effects-of-interest test: 10% more voxels with a task
effect are added to every chunk for it, and only the null voxels are counted. The power table plants an
effect of `power` times each voxel's noise sd (in units of the regressor's sd) in fresh noise, and counts
p < 0.05 and p < 0.001.

``rates`` returns the counts, for tests (tests/test_validation.py); ``markdown`` formats them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

TRS = (0.7, 1.0, 2.0, 3.0)
DESIGNS = ("block10", "block20", "block30", "events")
MODELS = ("ols", "ar1", "ar2", "ar3", "ar4", "ar5", "ar6", "ar7", "ar8", "ar1-global")
EXTRA_MODELS = ("film", "arma11", "fast", "auto")  # the noisemodels branch's, measured where this tree has them
NILEARN = "nilearn-ar1"


@dataclass(frozen=True)
class NoiseParameters:
    """Per-voxel parameters of the simulated spectrum (arrays of V values each)."""

    beta: np.ndarray  # power-law exponent
    power_law: np.ndarray  # power-law level at 0.1 Hz, relative to the white level
    ar_variance: np.ndarray
    tau: np.ndarray  # seconds, of the Ornstein-Uhlenbeck (AR) part
    cardiac_f: np.ndarray
    cardiac: np.ndarray
    respiration_f: np.ndarray
    respiration: np.ndarray


# Each regime's scale of the power law and the AR part (their levels relative to the white level) and range of the
# power law's exponent. "resting": single voxels (the module's docstring). "parcel": time series averaged over a
# parcel or region, where the white (thermal) noise, independent across voxels, averages away and the 1/f and
# AR parts, shared by neighbours, dominate: 10 times the power law (3 to 30 times the white level at 0.1 Hz), 3 times
# the AR part, exponents 0.7 to 1.2 (He 2011's steeper grey-matter spectra) -- as the issue's real parcel series,
# where OLS reached 0.22-0.45 at p < 0.05.
REGIMES = {"resting": (1.0, 1.0, (0.5, 1.0)), "parcel": (10.0, 3.0, (0.7, 1.2))}


def draw_parameters(rng, V: int, regime: str = "resting") -> NoiseParameters:
    """Spatially varying noise parameters (see the module's docstring and :data:`REGIMES`)."""
    law, ar, beta = REGIMES[regime]
    return NoiseParameters(
        beta=rng.uniform(*beta, V),
        power_law=law * np.exp(rng.uniform(np.log(0.3), np.log(3.0), V)),
        ar_variance=ar * rng.uniform(0.2, 1.0, V),
        tau=rng.uniform(0.5, 3.0, V),
        cardiac_f=rng.normal(1.1, 0.1, V),
        cardiac=rng.uniform(0.0, 1.0, V),
        respiration_f=rng.normal(0.3, 0.04, V),
        respiration=rng.uniform(0.0, 1.0, V),
    )


SLICE = (20, 20)  # voxels of a slice of each chunk's volume


def chunk_space(V: int):
    """A voxfit Masker of V voxels laid out in a volume of 20 x 20 slices (2 mm), for FILM's spatial step, and
    each voxel's 2 x 2 x 2 cube (an index into parameters drawn per cube)."""
    from voxfit.io import Masker
    from voxfit.io.geometry import VolumeGeometry

    nz = -(-V // (SLICE[0] * SLICE[1]))
    shape = (*SLICE, nz)
    keep = np.zeros(int(np.prod(shape)), dtype=bool)
    keep[:V] = True
    masker = Masker(VolumeGeometry(shape, np.diag([2.0, 2.0, 2.0, 1.0])), keep)
    i, j, k = np.unravel_index(np.arange(V), shape, order="F")
    cube = (i // 2) + (SLICE[0] // 2) * ((j // 2) + (SLICE[1] // 2) * (k // 2))
    return masker, cube


PEAK_REACH = 10.0  # widths from a peak's centre beyond which it is taken as 0 (exp(-50) of its height)


def _folded_peak(f, tr, centre, width):
    """A Gaussian peak of unit area (per Hz) at `centre` (V,) and `width` Hz, sampled at TR `tr` and so folded
    into [0, 1/(2 tr)]: the sum over its aliases f + k/tr and k/tr - f. Returns (F, V), per Hz. Each alias is
    evaluated only at the frequencies within PEAK_REACH widths of some voxel's centre."""
    fs = 1.0 / tr
    out = np.zeros((f.size, centre.size))
    top = int(np.ceil((centre.max() + 5 * width) / fs)) + 1
    low, high = centre.min() - PEAK_REACH * width, centre.max() + PEAK_REACH * width
    for k in range(-1, top + 1):
        for g in (f + k * fs, k * fs - f):
            rows = np.flatnonzero((g >= low) & (g <= high))
            if rows.size:
                z = (g[rows, None] - centre[None, :]) / width
                out[rows] += np.exp(-0.5 * z**2) / (width * np.sqrt(2 * np.pi))
    return out


def spectrum(f, tr: float, par: NoiseParameters) -> np.ndarray:
    """The discrete-time power spectrum (F, V) at frequencies `f` (Hz, in [0, 1/(2 tr)]), in units where white
    noise of unit variance per scan is 1 at every frequency."""
    fs = 1.0 / tr
    floor = 0.002  # Hz: the power law is held flat below (runs are minutes long; the high-pass removes it)
    log_f = np.log(np.maximum(f, floor) / 0.1)[:, None]
    law = par.power_law[None, :] * np.exp(-par.beta[None, :] * log_f)  # (numpy's exp is vectorised; ** is not)
    rho = np.exp(-tr / par.tau)[None, :]
    cos_w = np.cos(2 * np.pi * f / fs)[:, None]
    ar = par.ar_variance[None, :] * (1 - rho**2) / (1 - 2 * rho * cos_w + rho**2)  # |1 - rho e^-iw|^2, in reals
    # a peak of variance a per scan: a * (its density per Hz) * fs / 2 ... scaled so that its share of the
    # variance is `a` (the density integrates to 1 over the folded band [0, fs/2]; the white level is 1 there)
    cardiac = par.cardiac[None, :] * _folded_peak(f, tr, par.cardiac_f, 0.05) * fs / 2
    resp = par.respiration[None, :] * _folded_peak(f, tr, par.respiration_f, 0.03) * fs / 2
    return 1.0 + law + ar + cardiac + resp


def simulate(rng, n: int, tr: float, V: int, par: NoiseParameters | None = None) -> np.ndarray:
    """(n, V) noise with each voxel's spectrum (see :func:`spectrum`): complex Gaussian Fourier coefficients
    of a run 4 times as long, whose first n scans are kept (so the run is not circular)."""
    par = draw_parameters(rng, V) if par is None else par
    m = 4 * n
    f = np.fft.rfftfreq(m, d=tr)
    # each distinct voxel's spectrum once (parameters drawn per 2 x 2 x 2 cube: about an eighth of the voxels), the
    # same values column by column as the spectrum of every voxel
    table = np.column_stack([getattr(par, k) for k in NoiseParameters.__dataclass_fields__])
    distinct, voxels = np.unique(table, axis=0, return_inverse=True)
    amp = np.sqrt(spectrum(f, tr, NoiseParameters(*distinct.T)) * m / 2.0)[:, voxels.ravel()]
    coef = np.empty(amp.shape, dtype=complex)  # amp * (real + 1j imaginary draws), without complex temporaries
    coef.real = rng.standard_normal(amp.shape)
    coef.imag = rng.standard_normal(amp.shape)
    coef.real *= amp
    coef.imag *= amp
    coef[0] = amp[0] * rng.standard_normal(V) * np.sqrt(2.0)
    if m % 2 == 0:
        coef[-1] = amp[-1] * rng.standard_normal(V) * np.sqrt(2.0)
    return np.fft.irfft(coef, n=m, axis=0)[:n]


def task_design(kind: str, tr: float, duration: float = 600.0, seed: int = 0):
    """The voxfit Design of a run: the task regressor ``task`` (blocks of 10/20/30 s on and off, or random 1 s
    events, on average one per 14 s), SPM's HRF, cosine drift at 128 s, a constant."""
    from voxfit.design import make_design

    n = int(round(duration / tr))
    if kind.startswith("block"):
        length = float(kind[5:])
        onsets = np.arange(length, n * tr - length, 2 * length)
        events = {"task": {"onset": onsets, "duration": np.full(onsets.size, length)}}
    elif kind == "events":
        rng = np.random.default_rng([seed, 11])
        count = int(n * tr / 14.0)
        onsets = np.sort(rng.uniform(4.0, n * tr - 16.0, count))
        events = {"task": {"onset": onsets, "duration": np.ones(count)}}
    else:
        raise ValueError(f"unknown design {kind!r}")
    return make_design(events, tr, n)


def known_models() -> tuple[str, ...]:
    """The noise models of MODELS and EXTRA_MODELS that this tree's voxfit fits."""
    from voxfit.models._routing import noise_order

    out = []
    for m in MODELS + EXTRA_MODELS:
        try:
            noise_order(m)
        except Exception:  # noqa: BLE001 - a model of the other branch, not merged here
            continue
        out.append(m)
    return tuple(out)


def model_p(design, Y, model: str, masker=None) -> np.ndarray:
    """One-sided p of the task regressor under `model` (a voxfit noise model, or nilearn's ar1)."""
    names = list(design.names)
    if model == NILEARN:
        from nilearn.glm.contrasts import compute_contrast
        from nilearn.glm.first_level import run_glm

        labels, results = run_glm(Y, design.X, noise_model="ar1", n_jobs=1)
        c = np.zeros(design.X.shape[1])
        c[names.index("task")] = 1.0
        return compute_contrast(labels, results, c, stat_type="t").p_value()
    from voxfit.design.kinds import column_kinds
    from voxfit.models.glm import fit_noise_model

    kinds = column_kinds(design, names, design.X)
    extra = {"masker": masker, "tr": design.tr} if model in ("film", "fast") or model.endswith("+lags") else {}
    return fit_noise_model(design.X, Y, names, [("task", "task")], model, kinds=kinds, **extra).contrasts["task"].p


def rates(
    n_voxels: int = 20000,
    designs=DESIGNS,
    trs=TRS,
    models=None,
    nilearn: bool = True,
    alphas=(0.05, 0.001),
    duration: float = 600.0,
    seed: int = 0,
    chunk: int = 4000,
    effect: float = 0.0,
    regime: str = "resting",
) -> list[dict]:
    """Counts of voxels with one-sided p < alpha, per design, TR and model: ``{"design", "tr", "model", "alpha",
    "count", "n", "seconds"}``. `effect` 0: null voxels (the false-positive table); otherwise each voxel has a
    planted task effect of `effect` noise sd per regressor sd (the power table); `regime` is the noise's (see
    :data:`REGIMES`). The noise of cell (design, TR) comes from ``np.random.default_rng([seed, design index, TR
    index])`` (its position in `designs` and `trs`), in chunks of `chunk` voxels."""
    models = tuple(known_models() if models is None else models) + ((NILEARN,) if nilearn else ())
    rows = []
    for i, kind in enumerate(designs):
        for j, tr in enumerate(trs):
            d = task_design(kind, tr, duration, seed)
            n = d.X.shape[0]
            x = d.X[:, list(d.names).index("task")]
            rng = np.random.default_rng([seed, i, j])
            counts = {(m, a): 0 for m in models for a in alphas}
            seconds = dict.fromkeys(models, 0.0)
            for start in range(0, n_voxels, chunk):
                V = min(chunk, n_voxels - start)
                V_active = max(1, V // 10)
                masker, cube = chunk_space(V + V_active)
                coarse = draw_parameters(rng, int(cube.max()) + 1, regime)
                par = NoiseParameters(*(getattr(coarse, k)[cube] for k in NoiseParameters.__dataclass_fields__))
                both = simulate(rng, n, tr, V + V_active, par) + 1000.0
                both[:, V:] += np.outer(x / x.std(), both[:, V:].std(axis=0))  # pooled voxels for ar1-global, fast
                if effect:
                    both[:, :V] += np.outer(x / x.std(), effect * both[:, :V].std(axis=0))
                for m in models:
                    t0 = time.perf_counter()
                    # (film: the volume of both; +lags: its sample of voxels from both, as from a real mask)
                    pooled = m in ("ar1-global", "fast", "film") or m.endswith("+lags")
                    p = model_p(d, both if pooled else both[:, :V], m, masker)[:V]
                    seconds[m] += time.perf_counter() - t0
                    for a in alphas:
                        counts[m, a] += int(np.sum(p < a))
            rows += [
                {"design": kind, "tr": tr, "model": m, "alpha": a, "count": c, "n": n_voxels, "seconds": seconds[m]}
                for (m, a), c in counts.items()
            ]
    return rows


def interval(count: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a binomial rate."""
    from scipy import stats

    ci = stats.binomtest(int(count), int(n)).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def markdown(rows: list[dict], alpha: float, mark: bool = True) -> str:
    """A markdown table (rows: design and TR; columns: models) of the rates at `alpha`; with `mark`, a rate whose
    95% interval misses `alpha` is marked * (too high) or ° (too low)."""
    sel = [r for r in rows if r["alpha"] == alpha]
    models = list(dict.fromkeys(r["model"] for r in sel))
    cells = list(dict.fromkeys((r["design"], r["tr"]) for r in sel))
    lines = ["| design | TR | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for design, tr in cells:
        out = []
        for m in models:
            r = next(r for r in sel if r["model"] == m and r["design"] == design and r["tr"] == tr)
            rate = r["count"] / r["n"]
            flag = ""
            if mark:
                lo, hi = interval(r["count"], r["n"])
                flag = "*" if lo > alpha else ("°" if hi < alpha else "")
            out.append(f"{rate:.4f}{flag}")
        lines.append(f"| {design} | {tr:g} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def cost(rows: list[dict]) -> str:
    """Seconds per model over the whole table (both alphas counted once)."""
    sel = [r for r in rows if r["alpha"] == rows[0]["alpha"]]
    models = list(dict.fromkeys(r["model"] for r in sel))
    total = {m: sum(r["seconds"] for r in sel if r["model"] == m) for m in models}
    base = total.get("ar1") or 1.0
    return "\n".join(
        ["| model | seconds | x ar1 |", "|---|---|---|"]
        + [f"| {m} | {s:.1f} | {s / base:.2f} |" for m, s in total.items()]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 voxels per cell instead of 20,000")
    ap.add_argument("--voxels", type=int, help="null voxels per cell (default 20000; --quick 2000)")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds per run (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", help="comma-separated noise models (default: every model this voxfit has)")
    ap.add_argument("--trs", default=",".join(f"{t:g}" for t in TRS))
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--no-nilearn", action="store_true", help="leave nilearn's ar1 out")
    ap.add_argument("--power", type=float, default=0.1, help="planted effect (noise sd per regressor sd); 0: none")
    ap.add_argument("--regime", choices=sorted(REGIMES), default="resting", help="single voxels' noise or parcels'")
    args = ap.parse_args(argv)
    V = args.voxels or (2000 if args.quick else 20000)
    models = args.models.split(",") if args.models else None
    common = {
        "designs": args.designs.split(","),
        "trs": [float(t) for t in args.trs.split(",")],
        "models": models,
        "nilearn": not args.no_nilearn,
        "duration": args.duration,
        "seed": args.seed,
        "regime": args.regime,
    }
    print(
        f"{V} voxels per cell, runs of {args.duration:g} s, {args.regime} noise; * above / ° below the nominal rate's "
        "95% interval\n"
    )
    null = rates(V, **common)
    for a in (0.05, 0.001):
        print(f"### False-positive rate, one-sided p < {a:g}\n\n{markdown(null, a)}\n")
    print(f"### Cost (seconds of fitting, all cells)\n\n{cost(null)}\n")
    if args.power:
        planted = rates(max(1, V // 4), effect=args.power, **{**common, "seed": args.seed + 1})
        for a in (0.05, 0.001):
            print(f"### Power, effect {args.power:g} sd, one-sided p < {a:g}\n\n{markdown(planted, a, mark=False)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
