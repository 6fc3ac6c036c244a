"""The command line: ``voxfit fit``, ``voxfit design``, ``voxfit group``, ``voxfit report``, ``voxfit demo``.

Exit status: 0 on success, 2 on bad input or usage, 1 on an internal error, 130 when interrupted. Errors are
one line on stderr (``--debug`` shows the traceback); a failed or interrupted run leaves no partial output.
Bad input includes what the system refuses (an OSError with an error code: no space left, permission denied,
a name too long) and every numeric option out of its range (``OPTION_RANGES``, checked before any work);
exit status 1 is kept for voxfit's own bugs.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import functools
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ._checks import MAX_THREADS
from ._version import __version__
from .exceptions import InputError, VoxfitError

if TYPE_CHECKING:
    from concurrent.futures import Future

HRF_MODELS_CLI = (
    "spm",
    "spm+derivative",
    "spm+derivative+dispersion",
    "glover",
    "glover+derivative",
    "glover+derivative+dispersion",
    "fir",
)

# The noise model of fMRI time series (--events) when --noise is not given; --design (any data) keeps ols. It
# repeats voxfit.models._routing.FMRI_NOISE so that --help needs no numerical import (a test keeps them equal).
FMRI_NOISE_CLI = "ar12+lags"
FMRI_NOISE_WHY = (
    "ar{p}+lags: AR(p) per voxel with p = scans // 70, from 1 to 12 (AR(12) from 840 scans, AR(8) at 600, AR(4) at "
    "300), and a pooled correction of the contrasts' variances for what the voxels' AR models miss at lags up to "
    "64 s (the autocorrelation of the whitened residuals of 2,000 voxels spread over the mask): of ols, ar1, "
    "ar2, ar4, ar8, ar12, ar16, ar1-global, fast, film, arma11 and auto, what held the nominal false-positive "
    "rate best on resting-state-like noise (1/f, AR, aliased cardiac and respiratory) over block and event designs "
    "at TR 0.7-3 s (validation/noise_realistic.py, runs of 600 s; high orders need many scans); AR(8) costs about "
    "20x ar1 (mostly the variance terms of the estimated model)"
)
DIAGNOSTICS_HELP = (
    "whiteness of the whitened residuals (one run, in memory): maps of their lag-1..4 autocorrelation and "
    "Ljung-Box statistic, their spectrum averaged over the mask (desc-whitened_spectrum.tsv, and in the report), "
    "a warning when more voxels fail Ljung-Box at p < 0.05 than white noise would (see voxfit.core.diagnostics)"
)
# --preset: each tool's defaults (see _apply_preset); explicit options override them
PRESETS = {
    "spm": {
        "hrf": "spm",
        "microtime_resolution": 16,
        "microtime_onset": 8,
        "high_pass": "128",
        "noise": "ar1-global",
        "scaling": "global",
        "mask_threshold": 0.8,
        "convolution": "spm",
    },
    "fsl": {
        "hrf": "spm+derivative",
        "high_pass": "100",
        "noise": "film",
        "scaling": "global",
        "convolution": "spm",
    },
    "nilearn": {
        "hrf": "glover",
        "high_pass": "0.01Hz",
        "noise": "ar1",
        "scaling": "none",
        "convolution": "nilearn",
        "slice_time_ref": 0.0,
    },
}
PRESET_NOTES = {
    "spm": "SPM12: canonical HRF, fMRI_T 16 / T0 8, 128 s high-pass, AR(1) pooled ReML, grand mean scaling, 0.8 mask",
    "fsl": "FSL FEAT: double-gamma HRF (FEAT's gamma functions, peak mean 6 s sd 2.45 s, undershoot mean 16 s sd "
    "4 s, ratio 1/6, are SPM's canonical HRF's) with temporal derivative (SPM's, of the HRF), 100 s high-pass "
    "(a cosine basis here, not FEAT's running-line filter), FILM prewhitening, grand-mean intensity "
    "normalisation (to 100 here, FEAT: 10000, so effects are 1/100 of FEAT's), voxfit's automatic mask "
    "(FEAT's BET mask is not reproduced)",
    "nilearn": "nilearn FirstLevelModel: Glover HRF, 0.01 Hz cosine drift, ar1, no scaling (nilearn's "
    "signal_scaling=0 scales each voxel to its mean: give --scaling mean for that), slice_time_ref 0, voxfit's "
    "automatic mask (nilearn's compute_epi_mask is not reproduced: give its mask with --mask)",
}

# --preset on voxfit bids: what each tool's defaults make of the run level (the model's HRF, fMRIPrep's mask kept)
BIDS_PRESET_NOTES = {
    "spm": "SPM12 at the run level: AR(1) pooled ReML, grand mean scaling, SPM's microtime convolution, a 128 s "
    "high-pass where the model gives none",
    "fsl": "FSL FEAT at the run level: FILM prewhitening, grand-mean intensity normalisation (to 100 here, FEAT: "
    "10000), SPM's convolution (FEAT's double-gamma is SPM's canonical HRF), a 100 s high-pass where the model gives "
    "none (a cosine basis, not FEAT's running-line filter)",
    "nilearn": "nilearn FirstLevelModel at the run level: ar1, no scaling (nilearn's signal_scaling=0 scales each "
    "voxel to its mean: give --scaling mean for that), nilearn's convolution, sampled at fMRIPrep's StartTime where "
    "the run is slice-timing corrected and at the scan's start (slice_time_ref 0) where it is not, a 0.01 Hz "
    "high-pass where the model gives none",
}
SCALING_HELP = "none (default); mean: percent signal change per voxel (nilearn); global: SPM's grand mean 100"

EXAMPLES_DESIGN = """examples:
  voxfit design events.tsv --tr 2 --n-scans 300 --hrf spm+derivative --drift cosine --high-pass 128 -o design.tsv
  voxfit design events.tsv --tr 2 --n-scans 300 --slice-time-ref 0.5 --confounds conf.tsv \\
                --confounds-columns "trans_*,rot_*" -o design.tsv
  voxfit design events.tsv --tr 2 --n-scans 300 --modulators "rt:1,difficulty:2" -o design.tsv
  voxfit design onsets_in_scans.tsv --units scans --tr 2 --n-scans 300 -o design.tsv

SPM's microtime conventions are reproduced exactly (T = --microtime-resolution, T0 = --microtime-onset), and so
are its parametric modulators: columns <trial_type>x<column>^<order>, orthogonalised as SPM12 does (a
contrast names them as they are: --contrast "rt=facesxrt^1").
"""

EXAMPLES_FIT = """examples:
  voxfit fit bold.nii.gz --design design.tsv --contrast "task=A - B" --contrast "eoi=A; B" -o results/
  voxfit fit sub-01_task-x_space-fsLR_den-91k_bold.dtseries.nii --design design.tsv --contrast "A=A" -o res/
  voxfit fit scans/*.img --design design.tsv --mask mask.nii --contrast "c1=A" -o res/
  voxfit fit scans/sw*.img --events ev.tsv --tr 7 --contrast "listen=listening" -o res/      # 3-D scans
  voxfit fit 'run1/sw*.img' 'run2/sw*.img' --events ev1.tsv ev2.tsv --tr 2 --contrast "f=faces" -o res/
  voxfit fit run1/ run2.txt --events ev1.tsv ev2.tsv --tr 2 --contrast "f=faces" -o res/

several runs of 3-D scans: each run is a folder holding one series of scans, a quoted pattern (expanded by
voxfit, so one pattern is one run) or a .txt file listing the scans (one path per line, relative to the
list's folder); scans are taken in natural order (scan_2 before scan_10).

contrasts are NAME=EXPR: EXPR is a linear combination of design column names with numeric coefficients
(A - B, 0.5*A + 0.5*B, (A + B)/2); ';' joins rows into an F contrast (A; B). Names of maps keep the
letters and digits of NAME: contrast-<NAME>_stat-<effect|variance|t|F|p|z>_statmap.<ext>.
"""


EXAMPLES_GROUP = """examples:
  voxfit group sub-*/contrast-faces_stat-effect_statmap.nii.gz --permutations 10000 --tfce -o group/
  voxfit group maps.nii.gz --design design.mat --con design.con --grp design.grp --permutations 5000 \\
               --cluster-threshold 3.1 --tfce -o group/
  voxfit group lh.*.func.gii --design participants.tsv --contrast "age=age" --permutations 5000 \\
               --tfce --mesh lh.pial.surf.gii -o g/
  voxfit group a_*.nii.gz b_*.nii.gz --paired --permutations 5000 -o paired/   # A maps, then B maps
  voxfit group derivatives/voxfit/sub-*/contrast-faces_stat-effect_statmap.nii.gz --design participants.tsv \\
               --two-sample group --contrast "pvc=patient - control" -o g2/

Without --design the model is one-sample (a column 'intercept'). Permutation p-values count the shuffles
whose statistic reaches the observed one (the identity included); t contrasts are one-sided (large t).

Rows of a participants table are matched to the maps by subject, never by the order of the inputs: its
participant_id column (sub-01 or 01; or the column named by --id-column) against the BIDS label sub-<label>
in each map's file name, or else in its folders (sub-01/...). A map without a row, repeated ids, two maps of
one subject, maps without a sub- label and rows without a map (unless --drop-unmatched-rows) are refused.
A table without an id column, and FSL's design.mat, are matched by position (row 1 = the first map given;
FSL's convention): the order used is printed, and a warning says so when the maps carry sub- labels.
With --paired, A and B maps that carry sub- labels pair by subject; the table's rows match the pairs.
The mapping (map, participant id, table row) is recorded in model.json.

Mixed effects (FSL FLAME1, AFNI 3dMEMA): give each subject's first-level variance map with --variances (matched
to the effect maps by sub-<label>; FSL's cope<N>/varcope<N> side by side and one 4-D pair too), or first-level
output folders with --first-level (voxfit's or FEAT's) and --first-level-contrast NAME:
  voxfit group sub-*/contrast-faces_stat-effect_statmap.nii.gz \\
               --variances sub-*/contrast-faces_stat-variance_statmap.nii.gz -o mixed/
  voxfit group --first-level derivatives/voxfit/sub-*/ --first-level-contrast faces --design participants.tsv \\
               --two-sample group --variance-groups group --contrast "pvc=patient - control" -o mixed2/
  voxfit group --first-level sub-*.feat --first-level-contrast 1 --model fixed -o fixed/
--model mixed (the default with variances) estimates a between-subject variance at every voxel (per variance
group) by REML, fixed weighs by the first-level variances alone (with their first-level dof, taken as the
estimates they are: Kenward-Roger's covariance and dof; --dof residual: flameo's), ols ignores them. Voxels
that cannot be fitted (a zero or missing variance, a flat likelihood) are NaN and counted in the summary and
model.json.
With --paired (the A maps, then the B maps; --variances in the same two halves) the model is FLAME's paired
design: 2n rows, the design over A - B and one column per subject. --first-level-dof takes numbers or dof maps
(one for all, a 4-D file of one volume per map, or one per subject matched as the variances are).
"""


EXAMPLES_REPORT = """examples:
  voxfit report results/                               # results/report.html, from model.json and the maps
  voxfit report results/ --background sub-01_T1w.nii.gz --force
  voxfit report group/ --mesh lh.inflated.surf.gii --p-threshold 0.001

First-level maps are shown at SPM's default, p < 0.001 uncorrected, one-sided, for every contrast (z > 3.09;
a t contrast's positive tail, as SPM shows it, its negative tail counted) unless --p-threshold says
otherwise; group maps at the strongest inference the run computed at 0.05 (TFCE, cluster or voxel FWE from
permutations, else Bonferroni). Slices go through the global maximum; cluster tables list up to 3 local
maxima per cluster more than 8 mm apart (SPM's rule) with t or F, z, p, FDR q and any FWE p. The page embeds
every image and needs no network; it needs matplotlib (pip install 'voxfit[report]').
"""


def _number(kind, flag: str, lo=None, hi=None, lo_open: bool = False, accepted: str = ""):
    """A check of a numeric option: a finite `kind` (int or float) within [lo, hi] (lo excluded with
    `lo_open`). Every option is checked once parsed, before anything is read or allocated, so that a value out
    of range is bad input (exit status 2) naming the option and what it accepts, never a failure (or an
    allocation of its size) deep inside a run."""

    def check(value) -> None:
        ok = not (isinstance(value, float) and not math.isfinite(value))
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value <= hi
        if not ok:
            raise InputError(f"{flag} must be {accepted}; got {value!r}.")

    return check


# Ranges of the numeric options (by argparse's dest): anything outside is refused before any work (exit 2).
# (--permutations is checked by SecondLevel itself, before any file is touched, as for callers in Python.)
OPTION_RANGES = {
    "tr": _number(float, "--tr", 1e-3, 1e4, accepted="a repetition time in seconds, from 0.001 to 10000"),
    "n_scans": _number(int, "--n-scans", 1, 10**6, accepted="a whole number of scans from 1 to 1000000"),
    "fir_delays": _number(int, "--fir-delays", 1, 10**4, accepted="a whole number of one-TR windows from 1 to 10000"),
    "microtime_resolution": _number(
        int,
        "--microtime-resolution",
        1,
        4096,
        accepted="a whole number of bins per scan from 1 to 4096 (SPM's default: 16)",
    ),
    "microtime_onset": _number(int, "--microtime-onset", 1, 4096, accepted="a bin from 1 to the microtime resolution"),
    "slice_time_ref": _number(float, "--slice-time-ref", 0, 1, accepted="a fraction of the TR from 0 to 1"),
    "drift_order": _number(
        int, "--drift-order", 1, 10**4, accepted="a whole number from 1 to 10000, less than the scans"
    ),
    "mask_threshold": _number(
        float, "--mask-threshold", 0, accepted="a number >= 0 (a fraction of each scan's global)"
    ),
    "n_jobs": _number(int, "--n-jobs", 1, MAX_THREADS, accepted=f"a whole number of threads from 1 to {MAX_THREADS}"),
    "seed": _number(int, "--seed", 0, 2**32 - 1, accepted="a whole number from 0 to 4294967295 (2**32 - 1)"),
    "tfce_E": _number(
        float, "--tfce-E", 0, 100, lo_open=True, accepted="a positive number up to 100 (0.5 for volumes)"
    ),
    "tfce_H": _number(float, "--tfce-H", 0, 100, lo_open=True, accepted="a positive number up to 100 (default 2)"),
    "cluster_threshold": _number(
        float, "--cluster-threshold", 0, lo_open=True, accepted="a positive t or F value, e.g. 3.1"
    ),
    "p_threshold": _number(
        float, "--p-threshold", 0, 1, lo_open=True, accepted="a probability between 0 and 1, e.g. 0.001"
    ),
}


def _check_options(args) -> None:
    """Every numeric option within its range (OPTION_RANGES), `--max-memory` a size, and output names that a file
    system can hold: checked before any file is read or written."""
    for dest, check in OPTION_RANGES.items():
        value = getattr(args, dest, None)
        if value is not None:
            check(value)
    if getattr(args, "inference", "rft") != "rft":  # (thresholds that would be ignored)
        given = [dest for dest, _ in _RFT_THRESHOLDS if getattr(args, dest, None) is not None]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise InputError(f"{option} is for --inference rft; add --inference rft, or drop it.")
    if getattr(args, "max_memory", None) is not None:
        from ._memory import parse_memory

        parse_memory(args.max_memory)
    output = getattr(args, "output", None)
    if output is not None:
        from pathlib import PurePath

        if not str(output).strip():
            raise InputError("-o/--output is empty; give a folder (or file) to write.")
        for part in PurePath(output).parts:
            if len(part.encode("utf-8", "surrogateescape")) > 255:
                raise InputError(
                    f"-o/--output: the name {part[:24]}... is {len(part)} characters long; file systems "
                    "accept names of at most 255 bytes: choose a shorter one."
                )


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit with 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but arguments left over that are not options (inputs after an option that takes a value,
        as in ``group a.nii -o out b.nii``) are named as inputs given apart from the others; a file whose name
        begins with '-' (read as an option: argparse said an input was missing, or the option unknown), as such."""
        given = sys.argv[1:] if args is None else list(args)
        options = self._option_strings()
        for token in given[: given.index("--") if "--" in given else len(given)]:
            if (  # (as argparse reads it: a negative number, or a text with a space, is a value)
                isinstance(token, str)
                and token not in options
                and self._parse_optional(token) is not None
                and os.path.lexists(token)
            ):
                self.error(
                    f"{token} is a file whose name begins with '-', which reads as an option: give it as ./{token}"
                )
        known, extras = self.parse_known_args(args, namespace)
        if extras and not any(e.startswith("-") for e in extras) and getattr(known, "inputs", None):
            shown = " ".join(extras[:3]) + (f" and {len(extras) - 3} more" if len(extras) > 3 else "")
            self.error(
                f"{shown} came after an option, apart from the other inputs; give all the inputs together, "
                "before or after the options"
            )
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return known

    def _option_strings(self) -> set[str]:
        """Every option string of this parser and its commands' parsers."""
        found = set(self._option_string_actions)
        for action in self._actions:
            for parser in (getattr(action, "choices", None) or {}).values() if action.nargs == argparse.PARSER else ():
                found |= parser._option_strings()
        return found


def _get_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="voxfit", description="Fit one linear model to every voxel of an imaging dataset at once.")
    # (HRF_MODELS_CLI repeats voxfit.design.HRF_MODELS so that --help needs no scipy import; a test keeps them equal)
    parser.add_argument("--version", action="version", version=f"voxfit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = sub.add_parser(
        "fit",
        help="fit a design to image files and write maps",
        epilog=EXAMPLES_FIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a 4-D NIfTI, several 3-D NIfTI/Analyze files (one per scan), GIFTI, CIFTI or .npy; with one "
        "design per run, one run each: a 4-D file, a folder of 3-D scans, a quoted pattern "
        "('run1/sw*.img') or a .txt list of scans",
    )
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--design",
        nargs="+",
        metavar="FILE",
        help="TSV/CSV with a header of column names, or FSL design.mat; one per run for several runs",
    )
    source.add_argument(
        "--events",
        nargs="+",
        metavar="FILE",
        help="BIDS events.tsv: the design is built from it (needs --tr); one per run for several runs",
    )
    fit.add_argument(
        "--contrast",
        action="append",
        default=[],
        metavar="NAME=EXPR",
        help="a contrast (repeatable), e.g. 'task=A - B' or 'eoi=A; B' (an F test); a column named with spaces or "
        "signs goes between backticks: 'f=`face up` - `1`'",
    )
    fit.add_argument("--con", help=argparse.SUPPRESS)  # (FSL's design.con: voxfit group's; said so in _run_fit)
    fit.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="output folder (must be empty unless --force)"
    )
    group = fit.add_mutually_exclusive_group()
    group.add_argument("--mask", metavar="FILE", help="mask in the data's geometry (default: automatic)")
    group.add_argument(
        "--mask-threshold",
        type=float,
        metavar="REL",
        help="the automatic mask of volumes keeps voxels above REL x each scan's global (SPM's "
        "spm_global) in every scan, finite and not constant: a brain mask, SPM's for fMRI "
        "(default 0.8); 0 keeps every finite, varying voxel; surfaces, CIFTI and arrays: no "
        "threshold unless given",
    )
    fit.add_argument(
        "--noise",
        metavar="MODEL",
        help=f"ols; ar1 .. ar16: AR(p) per voxel, exact, estimated from the OLS residuals (ar1+lags .. ar16+lags: "
        "with the pooled long-lag correction of the default); "
        "ar1-global: SPM12's AR(1), one ReML covariance pooled over voxels; fast: SPM12's FAST (pooled, needs "
        "the TR); film: FSL FILM (Tukey-tapered autocorrelation smoothed within the mask of a volume, or over "
        "a surface's --mesh); arma11: "
        "ARMA(1,1) per voxel by REML (AFNI 3dREMLfit); auto: AR(p) per voxel, p in 0..8 by BIC "
        f"(an arorder map). Default with --events (fMRI time series): {FMRI_NOISE_WHY}; "
        "ols with --design (any data)",
    )
    fit.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="take a tool's defaults for HRF, microtime, high-pass, noise model, scaling and mask (printed and "
        "recorded in model.json; options given explicitly override them): "
        + "; ".join(f"{k}: {v}" for k, v in PRESET_NOTES.items()),
    )
    fit.add_argument("--diagnostics", action="store_true", help=DIAGNOSTICS_HELP)
    fit.add_argument(
        "--mesh",
        metavar="FILE",
        help="GIFTI surface (.surf.gii) of surface inputs (e.g. lh.midthickness.surf.gii): the neighbours of "
        "--noise film's spatial step",
    )
    fit.add_argument(
        "--nuisance-columns",
        metavar="PATTERNS",
        help='design columns that are nuisance regressors, e.g. "hp_*,cosine*": with ar1-global they '
        "act, with the drift columns, as SPM's high-pass filter (drift_<k>, nilearn's cosine<k> and "
        "events designs' drifts are known; design.json beside a design file can say each column's "
        "kind)",
    )
    fit.add_argument(
        "--scaling",
        choices=["none", "mean", "global"],
        help=SCALING_HELP,
    )
    _design_options(fit, events_needed=False)
    fit.add_argument(
        "--scheduler", metavar="ADDRESS", help="run the voxel blocks on a Dask cluster, e.g. tcp://host:8786"
    )
    fit.add_argument(
        "--device", metavar="DEVICE", help="cuda or cuda:N: fit on a GPU (CuPy or PyTorch); OLS and ar1 .. ar16"
    )
    _rft_options(fit)
    _common(fit)

    design = sub.add_parser(
        "design",
        help="build a first-level design matrix from BIDS events (SPM's conventions)",
        epilog=EXAMPLES_DESIGN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    design.add_argument(
        "events",
        metavar="EVENTS",
        help="BIDS events.tsv (onset, duration, trial_type[, modulation, modulator columns])",
    )
    design.add_argument("--n-scans", type=int, required=True, metavar="N", help="number of scans in the run")
    design.add_argument("-o", "--output", required=True, metavar="FILE", help="design.tsv to write")
    _design_options(design, events_needed=True)
    design.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="bound on the whole process, e.g. 1G: a design it cannot hold (scans x columns, the microtime grid) "
        "is refused before it is built, naming the size",
    )
    _flags(design, "overwrite an existing output file")

    group = sub.add_parser(
        "group",
        help="group (second-level) model: parametric and permutation inference",
        epilog=EXAMPLES_GROUP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="one map per subject (NIfTI, GIFTI, CIFTI dscalar) or one 4-D file (or none, with --first-level)",
    )
    g = group.add_mutually_exclusive_group()
    g.add_argument(
        "--one-sample", action="store_true", help="one-sample test of the mean (the default without --design)"
    )
    g.add_argument(
        "--design",
        metavar="FILE",
        help="participants TSV/CSV (numeric columns; rows matched to the maps by "
        "participant_id, see below) or FSL design.mat (rows in the order of the maps)",
    )
    group.add_argument("--two-sample", metavar="COLUMN", help="the --design table's column with two groups")
    group.add_argument(
        "--covariates",
        metavar="COLUMNS",
        help="the --design table's numeric columns in the model beside the --two-sample groups, comma-separated "
        "(age,iq; none: no covariate; default: every numeric column)",
    )
    group.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="the --design table's column of participant ids (sub-01 "
        "or 01), matched to the maps' sub-<label> (default: participant_id, when the table has it)",
    )
    group.add_argument(
        "--drop-unmatched-rows",
        action="store_true",
        help="leave out the table's rows that match no map (a note names them) instead of refusing",
    )
    group.add_argument("--paired", action="store_true", help="inputs are n maps of A then n maps of B: test A - B")
    group.add_argument("--contrast", action="append", default=[], metavar="NAME=EXPR", help="a contrast (repeatable)")
    group.add_argument("--con", metavar="FILE", help="FSL design.con (t contrasts)")
    group.add_argument("--fts", metavar="FILE", help="FSL design.fts (F tests of the .con contrasts)")
    group.add_argument("--grp", metavar="FILE", help="FSL design.grp: exchangeability blocks")
    group.add_argument(
        "--permute-blocks", action="store_true", help="shuffle whole blocks (equal sizes) instead of within blocks"
    )
    group.add_argument(
        "--mask", metavar="FILE", help="mask (default: voxels finite and non-zero in every map, not the same in all)"
    )
    mixed = group.add_argument_group("mixed and fixed effects (first-level variances)")
    mixed.add_argument(
        "--variances", nargs="+", metavar="FILE", help="each subject's first-level variance map (matched by subject)"
    )
    mixed.add_argument(
        "--first-level",
        nargs="+",
        metavar="FOLDER",
        help="first-level output folders (voxfit fit, FSL FEAT) instead of maps: each one's effect and variance map",
    )
    mixed.add_argument(
        "--first-level-contrast",
        metavar="NAME",
        help="the contrast taken from each --first-level folder (default: their one t contrast, when they have one)",
    )
    mixed.add_argument(
        "--model",
        choices=["mixed", "fixed", "ols"],
        help="mixed (default with variances: FLAME1/3dMEMA, REML), fixed (precision-weighted) or ols",
    )
    mixed.add_argument(
        "--variance-groups",
        metavar="COLUMN",
        help="the --design table's column of variance groups: a between-subject variance each (else --grp's)",
    )
    mixed.add_argument(
        "--first-level-dof",
        nargs="+",
        type=_number_or_path,
        metavar="DOF",
        help="fixed effects: the subjects' first-level dof: a number, one per map, or dof maps (NIfTI)",
    )
    mixed.add_argument(
        "--dof",
        choices=["residual", "satterthwaite", "kenward-roger"],
        help="mixed: n - rank (FLAME1; the default with one variance group), Satterthwaite's per voxel, or "
        "Kenward-Roger's covariance and dof (the default with several variance groups); fixed: kenward-roger (the "
        "default with first-level dof: the weights' error taken into account) or residual (flameo's: the sum of the "
        "first-level dof minus the rank)",
    )
    mixed.add_argument(
        "--outliers",
        action="store_true",
        help="mixed: outlier inference (FSL flameo --io): subjects weighted by their outlier probability per voxel",
    )
    group.add_argument(
        "--permutations",
        type=int,
        default=0,
        metavar="N",
        help="shuffles, the identity included (default 0: parametric only)",
    )
    group.add_argument("--seed", type=int, metavar="S", help="random seed for reproducible shuffles")
    group.add_argument(
        "--scheme",
        choices=["auto", "flip", "permute"],
        default="auto",
        help="sign-flip (one-sample, paired) or permute; auto picks sign-flips for a one-sample design",
    )
    group.add_argument("--tfce", action="store_true", help="threshold-free cluster enhancement with FWE p-values")
    group.add_argument(
        "--tfce-E", type=float, metavar="E", help="TFCE extent exponent (default 0.5 volumes, 1 surfaces)"
    )
    group.add_argument("--tfce-H", type=float, metavar="H", help="TFCE height exponent (default 2)")
    group.add_argument(
        "--cluster-threshold", type=float, metavar="T", help="cluster-forming threshold on the t (or F) statistic"
    )
    group.add_argument(
        "--connectivity",
        type=int,
        choices=[6, 18, 26],
        help="a voxel's neighbours for clusters and TFCE on volumes (default 6)",
    )
    group.add_argument(
        "--mesh", metavar="FILE", help="GIFTI surface (.surf.gii) of surface inputs, for clusters and TFCE"
    )
    group.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="output folder (must be empty unless --force)"
    )
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the fit and the shuffles on a Dask cluster, e.g. tcp://host:8786; without --permutations "
        "and --paired, the workers read Zarr, HDF5, .npy and uncompressed NIfTI inputs themselves "
        "(at the same paths)",
    )
    group.add_argument(
        "--device", metavar="DEVICE", help="cuda or cuda:N: the fit and the shuffles on a GPU (CuPy or PyTorch)"
    )
    _rft_options(group)
    _common(group)

    report = sub.add_parser(
        "report",
        help="write report.html for a finished output folder (no refitting)",
        epilog=EXAMPLES_REPORT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("folder", metavar="OUTDIR", help="output folder of voxfit fit or voxfit group")
    report.add_argument(
        "--background",
        metavar="FILE",
        help="anatomical image under volume maps and a CIFTI file's voxels (default: the run's mean image)",
    )
    report.add_argument("--mesh", metavar="FILE", help="GIFTI surface (.surf.gii) to draw surface maps on")
    report.add_argument(
        "--p-threshold", type=float, metavar="P", help="show elements at this uncorrected one-sided p instead"
    )
    report.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="bound on the whole process, e.g. 2G: a report it cannot "
        "hold is refused before the maps are read, naming the size that would",
    )
    _flags(report, "replace an existing report.html")

    demo = sub.add_parser("demo", help="fit a synthetic fMRI run with known activations (no download)")
    demo.add_argument(
        "-o", "--output", default="voxfit-demo", metavar="DIR", help="output folder (default: ./voxfit-demo)"
    )
    _common(demo)
    _bids_parser(sub)
    return parser


def _bids_parser(sub) -> None:
    """``voxfit bids BIDS_DIR OUT_DIR LEVEL``, as BIDS Apps take their arguments."""
    bids = sub.add_parser(
        "bids",
        help="fit a whole study: a BIDS dataset with fMRIPrep derivatives and a BIDS Stats Model, run to group",
    )
    bids.add_argument("bids_dir", metavar="BIDS_DIR", help="the raw BIDS dataset")
    bids.add_argument("out_dir", metavar="OUT_DIR", help="output folder (a BIDS derivatives dataset)")
    bids.add_argument(
        "analysis_level", choices=["run", "session", "subject", "dataset"], help="the last node level to fit"
    )
    bids.add_argument("--derivatives", nargs="+", required=True, metavar="DIR", help="fMRIPrep output folder(s)")
    bids.add_argument("--model", metavar="FILE", help="BIDS Stats Model (default: each trial type vs baseline)")
    bids.add_argument("--participant-label", nargs="+", default=(), metavar="LABEL", help="subjects (01 or sub-01)")
    bids.add_argument("--task", metavar="T", help="task label")
    bids.add_argument(
        "--space",
        metavar="S",
        help="space of the preprocessed runs (default: the only one; 'run': their own, named without space-)",
    )
    bids.add_argument("--desc", default="preproc", metavar="D", help="desc of preprocessed volumes (preproc)")
    bids.add_argument("--smoothing", type=float, metavar="FWHM", help="Gaussian smoothing of volumes, FWHM in mm")
    bids.add_argument(
        "--noise",
        metavar="MODEL",
        help=f"run-level noise model: ols, ar1..ar16 (+lags), ar1-global, fast, film, arma11, auto (default: "
        f"{FMRI_NOISE_WHY})",
    )
    bids.add_argument("--convolution", choices=["spm", "nilearn"], help="HRF convolution (default spm)")
    bids.add_argument("--scaling", choices=["none", "mean", "global"], help="run level: " + SCALING_HELP)
    bids.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="the run level takes a tool's noise model, scaling, convolution and high-pass (printed and recorded "
        "in each run's model.json; options given explicitly win; the model's HRF and Options."
        "HighPassFilterCutoffHz and fMRIPrep's brain mask are kept)",
    )
    bids.add_argument(
        "--confounds-strategy",
        metavar="NAME[:OPTIONS]",
        help="confounds from each run's fMRIPrep table as nilearn's load_confounds_strategy chooses them (simple, "
        "scrubbing, compcor, ica_aroma; as voxfit fit), added to the run design after the run node's Model.X "
        "columns (a column X already lists is not added twice); scrubbed scans censored",
    )
    bids.add_argument("--diagnostics", action="store_true", help="run level: " + DIAGNOSTICS_HELP)
    bids.add_argument("--group-model", choices=["mixed", "ols", "fixed"], default="mixed", help="dataset model")
    bids.add_argument("--permutations", type=int, default=0, metavar="N", help="permutations at dataset nodes (ols)")
    bids.add_argument("--tfce", action="store_true", help="TFCE (with --permutations)")
    bids.add_argument("--seed", type=int, metavar="S", help="random seed for reproducible shuffles")
    bids.add_argument("--cluster-threshold", type=float, metavar="T", help="cluster-forming threshold")
    bids.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address: runs are fitted on the cluster")
    _rft_options(bids)  # at dataset nodes (analysis level dataset), as voxfit group
    _common(bids)
    for action in bids._actions:
        if action.dest == "n_jobs":
            action.help = "worker processes fitting runs side by side, together within --max-memory (default: one)"
        elif action.dest == "max_memory":
            action.help = (
                "bound on the whole command, workers included, e.g. 4G (fewer workers when it cannot hold them)"
            )


DESIGN_DEFAULTS = {
    "hrf": "spm",
    "drift": "cosine",
    "high_pass": "128",
    "drift_order": 1,
    "fir_delays": 1,
    "convolution": "spm",
    "units": "secs",
    "modulators": None,
}


def _design_options(p: argparse.ArgumentParser, events_needed: bool) -> None:
    """Options that build a design from events (defaults applied in _make_design, so that giving one with
    --design can be refused instead of silently ignored)."""
    g = p.add_argument_group("designs from events")
    g.add_argument("--tr", type=float, required=events_needed, metavar="SECONDS", help="repetition time")
    g.add_argument("--hrf", choices=list(HRF_MODELS_CLI), help="HRF model (default: spm)")
    g.add_argument("--drift", choices=["cosine", "polynomial", "none"], help="drift model (default: cosine)")
    g.add_argument(
        "--high-pass", metavar="CUTOFF", help="cosine cutoff: seconds (default 128, SPM) or Hz (0.008Hz, nilearn)"
    )
    g.add_argument("--drift-order", type=int, metavar="K", help="polynomial drift order (default 1)")
    g.add_argument(
        "--convolution",
        choices=["spm", "nilearn"],
        help="events to regressors on SPM's microtime grid (default) or as nilearn does",
    )
    g.add_argument("--microtime-resolution", type=int, metavar="T", help="SPM's fMRI_T (default 16)")
    t0 = g.add_mutually_exclusive_group()
    t0.add_argument(
        "--microtime-onset", type=int, metavar="T0", help="SPM's fMRI_T0, 1-based (default 8, SPM12's; T/2 below 8)"
    )
    t0.add_argument("--slice-time-ref", type=float, metavar="S", help="nilearn's slice_time_ref, a fraction of the TR")
    g.add_argument("--fir-delays", type=int, metavar="K", help="with --hrf fir: number of one-TR windows (default 1)")
    g.add_argument(
        "--units",
        choices=["secs", "scans"],
        help="unit of the events' onsets and durations (SPM's UNITS): secs (default, BIDS) or scans "
        "(onsets are 0-based scan indices, onset x TR seconds)",
    )
    g.add_argument(
        "--modulators",
        metavar="LIST",
        help="SPM parametric modulators: numeric events columns with polynomial orders, e.g. "
        '"rt:1,difficulty:2"; columns <trial_type>x<column>^<order> (the modulation column stays '
        "an amplitude unless listed here)",
    )
    g.add_argument("--confounds", nargs="+", metavar="FILE", help="fMRIPrep-style confounds TSV (one per run)")
    g.add_argument("--confounds-columns", metavar="LIST", help='columns by names or patterns, e.g. "trans_*,rot_*"')
    g.add_argument(
        "--confounds-strategy",
        metavar="NAME[:OPTIONS]",
        help="confounds as nilearn's load_confounds_strategy chooses them from fMRIPrep's table: simple, "
        'scrubbing, compcor, ica_aroma, options after a colon (e.g. "scrubbing:fd_threshold=0.3,motion=basic"); '
        "scrubbed scans are censored (removed from the fit, see voxfit.design.confounds)",
    )


_DESIGN_OPTIONS = (
    "tr",
    "hrf",
    "drift",
    "high_pass",
    "drift_order",
    "microtime_resolution",
    "microtime_onset",
    "slice_time_ref",
    "fir_delays",
    "confounds",
    "confounds_columns",
    "convolution",
    "units",
    "modulators",
    "confounds_strategy",
)


def _refuse_design_options_with_a_design(args) -> None:
    given = [o for o in _DESIGN_OPTIONS if getattr(args, o, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise InputError(f"{flag} builds a design from --events; with --design, put everything in the design file.")


def _make_design(args, n_scans: int, run: int = 0):
    from .design import make_design, read_confounds
    from .design.events import motion_file

    if args.tr is None:
        raise InputError("--events needs --tr (the repetition time in seconds).")
    confounds = None
    strategy = getattr(args, "confounds_strategy", None)
    if strategy is not None:
        from .design.confounds import confounds_strategy

        if not args.confounds:
            raise InputError("--confounds-strategy needs --confounds FILE (fMRIPrep's desc-confounds_timeseries.tsv).")
        if args.confounds_columns:
            raise InputError("give --confounds-strategy or --confounds-columns, not both.")
        chosen = confounds_strategy(args.confounds[run], strategy, n_scans)
        args.confounds_record = chosen.describe()
        confounds = chosen.design_columns()
    elif args.confounds:
        columns = args.confounds_columns or ("*" if motion_file(args.confounds[run]) else None)  # (all six)
        if not columns:
            raise InputError('--confounds needs --confounds-columns (names or patterns, e.g. "trans_*,rot_*").')
        confounds = read_confounds(args.confounds[run], columns, n_scans)
    elif args.confounds_columns:
        raise InputError("--confounds-columns needs --confounds FILE.")
    events = args.events[run] if isinstance(args.events, list) else args.events
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DESIGN_DEFAULTS.items()}
    # options of another choice's, given and not used, are said, not passed over (a preset's high-pass is not
    # given: `--preset spm --drift none` drops it)
    if args.fir_delays is not None and opts["hrf"] != "fir":
        raise InputError(f"--fir-delays counts the windows of --hrf fir, and the HRF is {opts['hrf']}; drop one.")
    if args.drift_order is not None and opts["drift"] != "polynomial":
        raise InputError(
            f"--drift-order is the order of --drift polynomial, and the drift is {opts['drift']}; drop one."
        )
    given_high_pass = args.high_pass is not None and "high_pass" not in getattr(args, "preset_applied", ())
    if given_high_pass and opts["drift"] != "cosine":
        raise InputError(f"--high-pass is the cutoff of --drift cosine, and the drift is {opts['drift']}; drop one.")
    design = make_design(
        events,
        args.tr,
        n_scans,
        microtime_resolution=args.microtime_resolution,
        microtime_onset=args.microtime_onset,
        slice_time_ref=args.slice_time_ref,
        confounds=confounds,
        max_memory=args.max_memory,
        **opts,
    )
    summary = design.check()
    return design, summary


_PRESET_CONFLICTS = {"slice_time_ref": "microtime_onset", "microtime_onset": "slice_time_ref"}


def _resolve_settings(args) -> dict:
    """Apply --preset (options given explicitly win) and the default noise model (FMRI_NOISE_CLI with --events,
    ols with --design); returns what model.json records of them (``preset``, ``noise``), printed unless
    --quiet."""
    record = {}
    preset = getattr(args, "preset", None)
    args.preset_applied = {}  # (the options the preset set: not the user's, who gave none of them)
    if preset:
        applied, kept = args.preset_applied, {}
        for key, value in PRESETS[preset].items():
            if args.design and key in _DESIGN_OPTIONS:
                continue  # a design file carries its own HRF, drift and microtime
            if getattr(args, key, None) is not None:
                kept[key] = getattr(args, key)
            elif getattr(args, _PRESET_CONFLICTS.get(key, "-"), None) is None:
                setattr(args, key, value)
                applied[key] = value
        record["preset"] = {"name": preset, "applied": applied, "overridden": kept, "note": PRESET_NOTES[preset]}
        if not args.quiet:
            said = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in applied.items())
            given = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in kept.items())
            over = f"; given explicitly: {given}" if kept else ""
            print(f"preset {preset}: {said}{over}")
    if args.noise is None:  # with --events, decided from the run's length once its header is read (_fmri_noise)
        args.noise = None if args.events else "ols"
        why = FMRI_NOISE_WHY if args.events else "--design: the data need not be fMRI time series"
        record["noise"] = {"model": args.noise, "default": True, "why": why}
    else:
        record["noise"] = {"model": args.noise, "default": False}
    if args.scaling is None:
        args.scaling = "none"
    return record


def _fmri_noise(args, record: dict, n_scans: int) -> None:
    """The default noise model of fMRI runs (--events without --noise) for runs of `n_scans` scans (the
    shortest run of several), into `args` and the record."""
    if args.noise is None:
        from .models._routing import fmri_noise

        args.noise = record["noise"]["model"] = fmri_noise(n_scans)


def _rft_options(p: argparse.ArgumentParser) -> None:
    """``--inference rft`` and its thresholds, as SPM's results dialog asks them."""
    p.add_argument(
        "--inference",
        choices=["none", "rft"],
        default="none",
        help="rft: random field theory on volumes (SPM12): the residuals' smoothness, voxel-level FWE maps "
        "(stat-p_desc-rftfwe, stat-logp_desc-rftfwe), the resels-per-voxel map and SPM's results table",
    )
    p.add_argument(
        "--height-threshold",
        type=float,
        metavar="P",
        help="with --inference rft: the height threshold as a p value (default 0.05), corrected as "
        "--height-correction says",
    )
    p.add_argument(
        "--height-correction",
        choices=["fwe", "none"],
        help="p value adjustment to control (SPM's): fwe (default) or none (e.g. --height-threshold 0.001)",
    )
    p.add_argument(
        "--extent-threshold",
        type=int,
        metavar="K",
        help="with --inference rft: clusters of fewer than K voxels are not listed (default 0)",
    )


def _rft_of(args):
    """The checked RFT options of the command line (None without --inference rft)."""
    if args.inference != "rft":
        return None
    from .inference.rft_fit import check_rft_options

    given = {name: getattr(args, dest) for dest, name in _RFT_THRESHOLDS if getattr(args, dest, None) is not None}
    return check_rft_options(**given)


# --inference rft's thresholds: the options' dests and check_rft_options' names (its defaults where not given)
_RFT_THRESHOLDS = (("height_threshold", "height"), ("height_correction", "correction"), ("extent_threshold", "extent"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--report", action="store_true", help="also write report.html (needs matplotlib: pip install 'voxfit[report]')"
    )
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="bound on working memory, e.g. 500M or 2G; data over half "
        "of it are streamed (fits, parametric group models) and the whole process stays under it",
    )
    p.add_argument("--n-jobs", type=int, metavar="N", help="threads (default: all CPUs)")
    _flags(p, "write into a non-empty output folder, replacing same-named files")


def _flags(p: argparse.ArgumentParser, force_help: str) -> None:
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of errors")


_INPUT_OPTIONS = (
    "inputs",
    "design",
    "events",
    "confounds",
    "mask",
    "con",
    "fts",
    "grp",
    "mesh",
    "background",
    "variances",
    "first_level",
)


def _input_paths(args) -> list[str]:
    """Every file the command reads, the scans of runs named by a pattern or a .txt list included."""
    from .io.scans import expand_run

    paths: list[str] = []
    for option in _INPUT_OPTIONS:
        value = getattr(args, option, None)
        for item in value if isinstance(value, list) else [value] if value is not None else []:
            paths.append(str(item))
            if option == "first_level":  # the maps and model.json read from each folder (or quoted pattern's)
                import glob

                folders = [Path(p) for p in glob.glob(str(item))] if glob.has_magic(str(item)) else [Path(item)]
                paths += [str(p) for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file()]
            elif not Path(item).is_dir():  # (a folder cannot be replaced by a file anyway)
                try:
                    paths += [str(p) for p in expand_run(item) or ()]
                except InputError:
                    pass  # said by the reader, with its context
    return paths


def _run(args, argv) -> int:
    from ._memory import whole_files_capped
    from .io.output import inputs_of_run

    _check_options(args)
    # no output may replace an input, even with --force; inputs decoded whole must fit --max-memory
    with inputs_of_run(_input_paths(args)), whole_files_capped(getattr(args, "max_memory", None)):
        return _run_command(args, argv)


def _run_command(args, argv) -> int:
    progress = None if not args.quiet else False
    if args.command == "bids":
        return _run_bids(args, argv, progress)
    if args.command == "design":
        return _run_design(args)
    if args.command == "report":
        return _run_report(args, progress)
    from .io import before_commit

    if not args.report:  # (a report of an earlier fit in the folder would show other maps as these)
        with before_commit(lambda out: out.drop("report.html")):
            return _run_model(args, argv, progress)
    _check_matplotlib()  # known before the fit, not after it

    # the report is written into the run's hidden folder before the commit: maps, tables, model.json and
    # report.html appear together, or (a failed report, Ctrl-C) none of them
    with before_commit(lambda out: _report_into(out, progress, args.max_memory, getattr(args, "mesh", None))):
        code = _run_model(args, argv, progress)
    if not args.quiet:
        from pathlib import Path

        print(f"report: {Path(args.output) / 'report.html'}")
    return code


def _run_bids(args, argv, progress) -> int:
    """``voxfit bids``: exit 0 when everything asked for was fitted, 2 when any run or group failed on bad
    input (each named on one line of the summary)."""
    from importlib.util import find_spec

    if find_spec("bids") is None:
        raise InputError("voxfit bids needs pybids: pip install 'voxfit[bids]'.")
    from ._memory import release_freed_memory
    from .bids import run as run_study

    if _PROGRAM:  # (runs held one after another: each one's memory given back; a caller's process left as it is)
        release_freed_memory()
    try:
        result = _fit_study(run_study, args, argv, progress)
    except KeyboardInterrupt as exc:  # (a group is committed whole or not at all, by whichever process fitted it)
        done = getattr(exc, "result", None)  # (bids.study.ReportsInterrupted: the fits were all done)
        if done is not None:
            _said_of_study(done, args)
            removed = f"; {done.removed} files of stale groups were removed" if done.removed else ""
            fits = "the study's fits are complete" if done.ok else "every group was fitted, or failed as said above,"
            print(
                f"voxfit: interrupted while the reports were written; {fits} in {args.out_dir}{removed}; no report "
                "is half-written (run the same command again for the reports: the fitted groups are reused).",
                file=sys.stderr,
            )
            return 130
        print(
            f"voxfit: interrupted; the node groups finished before are kept in {args.out_dir}, nothing half-written "
            "(run the same command again to fit the rest).",
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        counts = [
            f"{_count(result, False)} node groups fitted",
            f"{_count(result, True)} unchanged",
            f"{len(result.failures)} failed",
        ]
        if result.skipped:
            counts.append(f"{len(result.skipped)} skipped")
        if result.removed:
            counts.append(f"{result.removed} files of stale groups removed")
        partial = {id(g) for g, _ in result.notes}
        if partial:
            counts.append(f"{len(partial)} with notes (below)")
        out = Path(result.out_dir)
        written = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
        where = result.out_dir if written else "nothing written"
        print(f"{', '.join(counts)}: {where}")
        if args.report and (Path(result.out_dir) / "index.html").is_file():
            print(f"reports: {Path(result.out_dir) / 'index.html'}")
    _said_of_study(result, args)
    return 0 if result.ok else 2


def _said_of_study(result, args) -> None:
    """A study's failures and groups skipped (the errors of its exit 2), in the command line's words, and its notes
    unless --quiet (they stay in each group's model.json), a line each on stderr."""
    flags = getattr(args, "command_options", set())
    others: dict[str, int] = {}  # (groups of another study of the folder: the first said, the others counted)
    for failure in result.failures:
        if (whose := failure.other_study) is not None:
            others[whose] = others.get(whose, 0) + 1
            if others[whose] > 1:
                continue
        print(f"voxfit: failed: {_as_options(str(failure), flags)}", file=sys.stderr)
    for whose, count in others.items():
        if count > 1:
            print(
                f"voxfit: failed: {count - 1} more groups of that other study ({whose}), for the same reason",
                file=sys.stderr,
            )
    for skipped in result.skipped:
        print(f"voxfit: skipped: {skipped}", file=sys.stderr)
    # a note said once for the groups of a node that share it (a failed run's, in each of its subject's contrasts
    # and the dataset's: 38 lines, 24 kB, for 4 runs of a tester's study); each group's record keeps its own
    noted: dict[tuple[str, str], list[str]] = {}
    for group, note in result.notes if not args.quiet else ():
        noted.setdefault((group.name, note), []).append(group.label)
    for (name, note), labels in noted.items():
        more = f" and {len(labels) - 1} more group{'s' if len(labels) > 2 else ''}" if len(labels) > 1 else ""
        print(f"voxfit: note: node {name}, {labels[0]}{more}: {note}", file=sys.stderr)


def _count(result, reused: bool) -> int:
    return sum(1 for groups in result.nodes.values() for g in groups if g.reused == reused)


_BIDS_PRESET_KEYS = ("noise", "scaling", "convolution", "high_pass")  # what a preset sets at the run level


def _resolve_bids_settings(args) -> dict | None:
    """--preset on voxfit bids: the run level's noise model, scaling, convolution and high-pass as the tool sets
    them (options given explicitly win; the BIDS Stats Model's HRF and high-pass, and fMRIPrep's mask, are
    kept); returns what each run's model.json records of it (None without a preset), printed unless --quiet.
    Defaults fill what is left (scaling none, convolution spm; the noise model left to each run's length:
    models._routing.fmri_noise)."""
    record = None
    args.high_pass = getattr(args, "high_pass", None)
    if args.preset:
        applied, kept = {}, {}
        for key in _BIDS_PRESET_KEYS:
            value = PRESETS[args.preset].get(key)
            if value is None:
                continue
            if getattr(args, key) is not None:
                kept[key] = getattr(args, key)
            else:
                setattr(args, key, value)
                applied[key] = value
        note = BIDS_PRESET_NOTES[args.preset] + "; the model's HRF and fMRIPrep's brain mask kept"
        record = {"name": args.preset, "applied": applied, "overridden": kept, "note": note}
        if not args.quiet:
            said = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in applied.items())
            print(f"preset {args.preset} (run level): {said}")
    args.scaling = args.scaling or "none"
    args.convolution = args.convolution or "spm"
    return record


def _fit_study(run_study, args, argv, progress):
    preset = _resolve_bids_settings(args)
    return run_study(
        args.bids_dir,
        args.out_dir,
        level=args.analysis_level,
        model=args.model,
        derivatives=args.derivatives,
        participant_label=args.participant_label,
        task=args.task,
        space=args.space,
        desc=args.desc,
        smoothing=args.smoothing,
        noise=args.noise,
        convolution=args.convolution,
        group_model=args.group_model,
        permutations=args.permutations,
        tfce=args.tfce,
        cluster_threshold=args.cluster_threshold,
        seed=args.seed,
        rft=_rft_of(args),
        report=args.report,
        force=args.force,
        max_memory=args.max_memory,
        n_jobs=args.n_jobs,
        scheduler=args.scheduler,
        progress=progress,
        command=["voxfit", *argv],
        scaling=args.scaling,
        high_pass=args.high_pass,
        confounds_strategy=args.confounds_strategy,
        diagnostics=args.diagnostics,
        preset=preset,
    )


def _report_into(out, progress, max_memory=None, mesh=None) -> None:
    """The report of a run's output, written into it before its commit, on the run's own --mesh where it has one
    (a first-level fit records it for FILM only: a surface fit's page said no mesh was given)."""
    from .report import build_report

    target = out.path("report.html")
    page = build_report(out.staging, progress=progress, max_memory=max_memory, shown_as=out.final, mesh=mesh)
    target.write_text(page, encoding="utf-8")


def _check_matplotlib() -> None:
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        raise InputError("reports need matplotlib: pip install 'voxfit[report]'.")


def _run_report(args, progress) -> int:
    _check_matplotlib()
    _write_report(
        args.folder,
        args.quiet,
        progress,
        background=args.background,
        mesh=args.mesh,
        p_threshold=args.p_threshold,
        force=args.force,
        max_memory=args.max_memory,
    )
    return 0


def _write_report(folder, quiet: bool, progress, **options) -> None:
    from .report import write_report

    path = write_report(folder, progress=progress, **options)
    if not quiet:
        print(f"report: {path}")


def _run_model(args, argv, progress) -> int:
    from ._folders import check_output_folder

    check_output_folder(args.output, args.force, alone=True)  # before any input is opened or read
    if args.command == "fit" and len(args.events or args.design) == 1 and args.inference != "rft":
        _start_digests(args.inputs)
    run = {"fit": _run_fit, "group": _run_group, "demo": _run_demo}[args.command]
    return run(args, argv, progress)


def _start_digests(inputs) -> None:
    """model.json's BLAKE3 digests of a run's files, started as the command starts (0.06-0.08 s into the
    process) rather than once numpy and nibabel have imported and the header is read (0.20-0.23 s; see
    ``voxfit._digest.start_digests`` for what it saves): the scans of a run named by a folder, a pattern or a
    .txt list too (400 3-D files of a 2 mm grid: their digests took 0.76 s from 0.4-0.5 s into the process, once
    every header was read). At a low priority beside a decompression; from maps of the files, as the run's data
    are read (``voxfit.io.dataset.files_mapped``)."""
    from ._digest import start_digests
    from .io.scans import expand_run

    files = []
    for item in inputs:
        try:
            files += expand_run(item) or [item]
        except (InputError, OSError):  # (said by the reader, with its context)
            files.append(item)
    start_digests(files, aside=any(str(p).lower().endswith(".gz") for p in files), mapped=True)


def _run_demo(args, argv, progress) -> int:
    from .models.demo import run_demo  # heavy imports only once the command line is known to be valid

    _, result, lines = run_demo(
        args.output,
        force=args.force,
        progress=progress,
        max_memory=args.max_memory,
        n_jobs=args.n_jobs,
        command=["voxfit", *argv],
    )
    if not args.quiet:
        print("\n".join(lines))
    return 0


def _run_fit(args, argv, progress) -> int:
    """One run (several go to :func:`_run_runs`). Its header is read once, for the route (see
    ``voxfit.models._routing``) and the design's number of scans; data fitted in memory are read while the
    numerical modules import: nibabel first (imports hold the GIL, so two at once only take turns), then
    decompression (which releases it) runs alongside scipy's import."""
    sources = args.events or args.design
    if args.con is not None or any(str(c).strip().lower().endswith(".con") for c in args.contrast):
        raise InputError(  # (--con was "ambiguous option", --contrast design.con "unknown column 'design.con'")
            "FSL's design.con is for voxfit group (--con); voxfit fit takes each contrast as --contrast NAME=EXPR over "
            "the design's columns, e.g. --contrast 'task=EV1 - EV2'."
        )
    if args.design:
        _refuse_design_options_with_a_design(args)
    record = _resolve_settings(args)
    if len(sources) > 1:
        if args.diagnostics:
            raise InputError("--diagnostics is for one run at a time; fit each run on its own to see its residuals.")
        return _run_runs(args, argv, progress, record)
    if args.confounds and len(args.confounds) > 1:
        raise InputError(f"{len(args.confounds)} confounds files for one run; give one per run.")
    if len(args.inputs) > 1:
        from .io import expand_run, open_map

        runs = [x for x in args.inputs if expand_run(x) is not None]  # folders, patterns, lists: a run each
        if runs or open_map(args.inputs[0], spm_sidecar=False).n_scans > 1:  # (headers only: 3-D files are a run)
            kind, example = ("events file", "--events ev1.tsv ev2.tsv") if args.events else ("design", "--design d1 d2")
            what = "runs (folders, patterns or lists of scans)" if runs else "4-D inputs"
            raise InputError(f"{len(args.inputs)} {what} for one {kind}; give one {kind} per run ({example} ...).")
        from .io.scans import warn_out_of_order

        warn_out_of_order(args.inputs)
    _warn_lists_out_of_order(args.inputs)
    if len(args.inputs) == 1:
        _warn_runs_named_otherwise(args.inputs, _run_files(args))
    from dataclasses import replace

    from ._execution import Execution
    from .io import load, open_reader
    from .models.record import start_input_records
    from .models._routing import (
        MEMORY,
        ScanObserver,
        choose_route,
        first_level_needs,
        noise_order,
        read_fits,
        read_gathers_sums,
    )

    execution = Execution(args.max_memory, args.n_jobs, args.scheduler, args.device, progress)
    reader = open_reader(args.inputs if len(args.inputs) > 1 else args.inputs[0])
    _fmri_noise(args, record, reader.n_scans)
    _check_mesh(args, reader)
    route = choose_route(reader, execution, first_level_needs(args.noise, args.scaling, reader))
    threshold = "auto" if args.mask_threshold is None else args.mask_threshold
    loading = None
    if route.kind == MEMORY:
        rft = args.inference == "rft" and args.mask is not None
        order = noise_order(args.noise)
        if (rft and read_gathers_sums(rft, args.mask, args.scaling, order, route, args.scheduler)) or read_fits(
            rft, args.mask, args.scaling, order, route, execution
        ):
            route = replace(route, observer=ScanObserver())  # RFT's or OLS's sums of the data, gathered as read
        loading = _in_thread(
            load,
            reader,
            args.mask,
            mask_threshold=threshold,
            progress=progress,
            scan_globals=args.scaling == "global",
            observe=route.observer,
            map_files=True,  # (a CIFTI run as its file's own pages: the data never leave the run)
        )
        if args.inference != "rft":  # the inputs' checksums from the read's start, not after the imports (0.3 s)
            route = replace(route, records=start_input_records(reader))
        if args.noise == "arma11":  # numba and ARMA's kernel load while the data are read
            from .core._arma_kernels import warm_up

            _in_thread(warm_up)
    if args.events:
        from .io import warn_header_tr

        warn_header_tr(reader, args.tr, args.inputs[0] if len(args.inputs) == 1 else "the scans")
    design = _make_design(args, reader.n_scans)[0] if args.events else args.design[0]
    from .models import fit_images

    result = fit_images(
        args.inputs,
        design,
        args.contrast,
        mask=args.mask,
        mask_threshold=threshold,
        out_dir=args.output,
        force=args.force,
        command=["voxfit", *argv],
        dataset=loading,
        noise=args.noise,
        nuisance=args.nuisance_columns,
        scaling=args.scaling,
        route=route,
        execution=execution,
        record_settings={
            **record,
            **({"confounds": args.confounds_record} if hasattr(args, "confounds_record") else {}),
        },
        rft=_rft_of(args),
        diagnostics=args.diagnostics,
        mesh=args.mesh,
    )
    if not args.quiet:
        fit = result.fit
        print(
            f"fitted {fit.valid.size:,} voxels x {fit.design.n_scans} scans, {fit.design.n_columns} regressors "
            f"(rank {fit.rank}, {fit.dof} dof); {len(result.contrasts)} contrast(s); "
            f"{len(result.files)} files in {args.output}"
        )
        if fit.n_invalid:
            print(f"{fit.n_invalid} voxel(s) had NaN or infinite values and are NaN in every map")
    return 0


def _check_mesh(args, reader) -> None:
    """--mesh of surface data is read by FILM's spatial step and drawn by --report; with neither it was passed over.
    (Whether it is a surface of the data's vertices, or given for other data, the fit checks, reading it once:
    voxfit.models.glm.check_mesh.)"""
    if args.mesh is not None and reader.geometry.kind == "surface" and args.noise != "film" and not args.report:
        raise InputError(
            f"--mesh is read by --noise film (its spatial step) and --report (the surface views), and this fit has "
            f"neither (--noise {args.noise}); add one of them, or drop --mesh."
        )


def _warn_lists_out_of_order(inputs) -> None:
    """A run's .txt list of scans in another order than their numbers: fitted as given, but said (as a shell's
    list is; a group's list of maps is matched by subject, or in the order given: not said there)."""
    from pathlib import Path

    from .io import expand_run
    from .io.scans import warn_out_of_order

    for item in inputs:
        if Path(item).suffix.lower() == ".txt" and (scans := expand_run(item)) is not None:
            warn_out_of_order(scans, Path(item))


_BIDS_LABEL = re.compile(r"(?:^|[_/\\])(sub|ses|task|acq|dir|run)-([a-zA-Z0-9]+)")


def _run_files(args) -> dict:
    """The runs' own files by option: their events or designs, and confounds."""
    return {"--events": args.events, "--design": args.design, "--confounds": args.confounds}


def _warn_runs_named_otherwise(inputs, files: dict) -> None:
    """Each run's events, design and confounds files (`files`: option -> the files in the runs' order) whose
    BIDS labels (sub-, ses-, task-, acq-, dir-, run-: run numbers as numbers) differ from its input's: fitted as
    given, but said (events swapped between two runs were fitted without a word: a tester's)."""

    def labels(path) -> dict[str, str]:
        found = dict(_BIDS_LABEL.findall(str(path)))
        return {k: str(int(v)) if k == "run" and v.isdigit() else v for k, v in found.items()}

    for option, paths in files.items():
        for r, (run, path) in enumerate(zip(inputs, paths or ())):
            mine, theirs = labels(run), labels(path)
            if differ := [k for k in mine if k in theirs and mine[k] != theirs[k]]:
                said = ", ".join(f"{k}-{theirs[k]} for {k}-{mine[k]}" for k in differ)
                warnings.warn(
                    f"run {r + 1}'s {option} file {Path(path).name} is named {said} of its data {Path(run).name}: "
                    f"fitted as given; check the order of {option}.",
                    UserWarning,
                    stacklevel=2,
                )


def _run_runs(args, argv, progress, record: dict) -> int:
    """Several runs: one input and one design (or events file) each, combined by fixed effects. A CIFTI run that
    one file holds is that file's own pages (``voxfit.io.dataset.files_mapped``): the runs' data never leave the
    fit."""
    from .io import open_reader, warn_header_tr
    from .io.dataset import files_mapped
    from .models import fit_runs

    sources = args.events or args.design
    if len(args.inputs) != len(sources):
        raise InputError(
            f"{len(args.inputs)} inputs for {len(sources)} designs or events files; give one per run, "
            "each a 4-D file, a folder of 3-D scans, a quoted pattern such as 'run1/sw*.img', or a "
            ".txt list of scans."
        )
    if args.confounds and len(args.confounds) != len(args.inputs):
        raise InputError(f"{len(args.confounds)} confounds files for {len(args.inputs)} runs; give one per run.")
    _warn_lists_out_of_order(args.inputs)
    _warn_runs_named_otherwise(args.inputs, _run_files(args))
    if args.events:
        readers = [open_reader(path) for path in args.inputs]
        for path, reader in zip(args.inputs, readers):
            warn_header_tr(reader, args.tr, path)
        lengths = [reader.n_scans for reader in readers]
        _fmri_noise(args, record, min(lengths))
        designs = [_make_design(args, n, r)[0] for r, n in enumerate(lengths)]
    else:
        designs = list(args.design)
    if args.mesh is not None:
        _check_mesh(args, open_reader(args.inputs[0]))
    with files_mapped():
        result = fit_runs(
            args.inputs,
            designs,
            args.contrast,
            mask=args.mask,
            mask_threshold="auto" if args.mask_threshold is None else args.mask_threshold,
            out_dir=args.output,
            force=args.force,
            noise=args.noise,
            mesh=args.mesh,
            rft=_rft_of(args),
            scaling=args.scaling,
            nuisance=args.nuisance_columns,
            max_memory=args.max_memory,
            n_jobs=args.n_jobs,
            command=["voxfit", *argv],
            scheduler=args.scheduler,
            device=args.device,
            progress=progress,
            record_settings={
                **record,
                **({"confounds": args.confounds_record} if hasattr(args, "confounds_record") else {}),
            },
        )
    if not args.quiet:
        print(
            f"fitted {len(args.inputs)} runs on {result.masker.n_voxels:,} voxels; {len(result.combined)} contrast(s) "
            f"combined by fixed effects; {len(result.files)} files in {args.output}"
        )
    return 0


def _run_group(args, argv, progress) -> int:
    """A group model; the maps of a one-sample OLS model are read while the numerical modules import."""
    if args.two_sample and not args.design:
        raise InputError("--two-sample COLUMN needs --design TABLE holding that column.")
    if args.permute_blocks and not args.grp:
        raise InputError("--permute-blocks needs --grp FILE (the exchangeability blocks).")
    inputs = _group_inputs(args)
    with _group_preload(args, inputs, progress):
        return _fit_group(args, argv, progress, inputs)


def _group_preload(args, inputs: list[str], progress):
    """The load that ``SecondLevel.fit`` will ask for, started in a thread (``voxfit.io.dataset.preloaded``),
    where it is known from the command line alone: maps given as files, in memory (no --max-memory, no
    --scheduler), in the order given (no --design, --paired, variances or first-level folders, which match or
    pair the maps by subject). Anything else loads as SecondLevel decides."""
    from .io import expand_run, load, open_reader
    from .io.dataset import preloaded

    plain = not (args.design or args.paired or args.variances or args.first_level or args.model not in (None, "ols"))
    if not plain or args.max_memory is not None or args.scheduler is not None:
        return contextlib.nullcontext()
    paths = [Path(p) for p in inputs] if len(inputs) > 1 else Path(inputs[0])
    try:  # the headers, here: the thread starts on the data at once
        if any(expand_run(path) is not None for path in inputs):  # folders, patterns, lists: SecondLevel's to expand
            return contextlib.nullcontext()
        reader = open_reader(paths, "inputs")
    except InputError:  # said by SecondLevel, after its own checks of the options, as without a preload
        return contextlib.nullcontext()
    loading = _in_thread(load, reader, args.mask, progress=progress, name="inputs", maps=True)
    return preloaded(loading, paths, args.mask, name="inputs")


def _covariates(text: str | None) -> list[str] | None:
    """--covariates: column names, comma-separated; ``none`` (or nothing) for none; None when not given."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    return [] if [n.lower() for n in names] in ([], ["none"]) else names


def _fit_group(args, argv, progress, inputs: list[str]) -> int:
    from .models import SecondLevel

    model = SecondLevel(
        design=args.design,
        contrasts=args.contrast,
        two_sample=args.two_sample,
        covariates=_covariates(args.covariates),
        id_column=args.id_column,
        drop_unmatched_rows=args.drop_unmatched_rows,
        paired=args.paired,
        con=args.con,
        fts=args.fts,
        grp=args.grp,
        whole_blocks=args.permute_blocks,
        mask=args.mask,
        permutations=args.permutations,
        seed=args.seed,
        scheme=args.scheme,
        tfce=args.tfce,
        tfce_E=args.tfce_E,
        tfce_H=args.tfce_H,
        cluster_threshold=args.cluster_threshold,
        connectivity=args.connectivity,
        mesh=args.mesh,
        max_memory=args.max_memory,
        n_jobs=args.n_jobs,
        scheduler=args.scheduler,
        device=args.device,
        variances=args.variances,
        first_level_contrast=(args.first_level_contrast or "") if args.first_level else None,
        model=args.model,
        variance_groups=args.variance_groups,
        first_level_dof=_one_or_list(args.first_level_dof),
        dof=args.dof,
        outliers=args.outliers,
        rft=_rft_of(args),
    )
    result = model.fit(inputs, args.output, force=args.force, progress=progress, command=["voxfit", *argv])
    if not args.quiet:
        for note in result.notes:
            print(f"voxfit: note: {note}", file=sys.stderr)
        n = result.X.shape[0]
        perm = next(iter(result.permutation.values()), None)
        how = (
            (
                f"{perm.n_shuffles} {'sign-flips' if perm.scheme == 'flip' else 'permutations'}"
                + (" (all of them)" if perm.exhaustive else "")
            )
            if perm
            else "parametric only"
        )
        if result.mixed is not None:
            how = f"{result.mixed.model} effects, {how}"
            if result.mixed.mean_outliers is not None:
                how += f", {result.mixed.mean_outliers:.2f} outlying subjects per voxel on average"
        print(
            f"group model: {n} maps x {result.masker.n_voxels:,} voxels, columns {', '.join(result.names)}; "
            f"{len(result.parametric)} contrast(s), {how}; {len(result.files)} files in {args.output}"
        )
    return 0


def _number_or_path(text: str) -> float | str:
    """A number as a float, anything else as it is (a path)."""
    try:
        return float(text)
    except ValueError:
        return text


def _one_or_list(values: list | None):
    return values[0] if values is not None and len(values) == 1 else values


def _group_inputs(args) -> list[str]:
    """The group's maps, or with --first-level its first-level folders (--first-level-contrast names the
    contrast taken from each; without it, the one t contrast voxfit folders have)."""
    if args.first_level is None:
        if args.first_level_contrast is not None:
            raise InputError("--first-level-contrast names the contrast of --first-level FOLDERS; give them.")
        if not args.inputs:
            took = [o for o, v in (("--variances", args.variances), ("--first-level-dof", args.first_level_dof)) if v]
            if took:  # (argparse gives an option of several values every value after it)
                raise InputError(
                    f"no maps were given before {' or '.join(took)}, each taking every value after it: the maps "
                    f"given after it were taken as its; give the maps first (voxfit group MAP... {took[0]} ...)."
                )
            raise InputError("give the maps (one per subject), or --first-level FOLDERS (first-level output folders).")
        folder = next((p for p in args.inputs if _first_level_folder(p)), None)
        if folder is not None:  # (read as a run of scans, it was refused with a pattern to name them by)
            raise InputError(
                f"{folder} is a first-level output folder (voxfit fit's or FEAT's); give such folders with "
                "--first-level FOLDERS (and --first-level-contrast NAME), or give each subject's effect map."
            )
        return args.inputs
    if args.inputs:
        raise InputError("give either maps or --first-level folders, not both (the folders hold each subject's maps).")
    return args.first_level


def _first_level_folder(path) -> bool:
    """Whether `path` is a folder voxfit fit wrote (its model.json a voxfit record: a JSON object with
    ``record_version`` or, older, ``voxfit_version``, under 16 MiB) or FSL FEAT did (stats/cope1 in it); a folder
    of maps beside another program's model.json is not. (``voxfit.design.paired_maps._folder_maps`` reads such
    folders; it is not imported here, before the group's maps are read: ``voxfit.design`` brings scipy, 0.36 s.)"""
    folder, record = Path(path), Path(path) / "model.json"
    if not folder.is_dir():
        return False
    if any((folder / "stats").glob("cope1.nii*")):
        return True
    try:
        if not record.is_file() or record.stat().st_size > 16 << 20:
            return False
        import json

        raw = json.loads(record.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and ("record_version" in raw or "voxfit_version" in raw)


def _run_design(args) -> int:
    from pathlib import Path

    out = Path(args.output)
    if out.suffix.lower() not in (".tsv", ".txt"):  # (voxfit fit --design reads .csv as comma-separated, .mat as FSL's)
        raise InputError(f"-o {out}: voxfit design writes a tab-separated table; name it .tsv (or .txt).")
    if args.confounds and len(args.confounds) > 1:
        raise InputError(f"{len(args.confounds)} confounds files for one design; give one.")
    from .design.kinds import sidecar_path, write_sidecar
    from .io import write_files_atomically

    for path in (out, sidecar_path(out)):  # (the table's sidecar too: a user's X.json was replaced, exit 0)
        if (path.exists() or path.is_symlink()) and not args.force:  # (a dangling link too)
            beside = "" if path == out else f" (the sidecar of {out.name}, which voxfit design writes beside it)"
            raise InputError(f"{path} exists{beside}; pass --force to overwrite it, or name another -o.")
    design, summary = _make_design(args, args.n_scans)

    try:  # exclusive temporaries with random names beside `out`, renamed onto it (a link there is replaced) and
        # onto its sidecar (each column's kind, read back by voxfit fit --design) together: both or neither
        write_files_atomically(
            {
                out: lambda tmp: design.write(tmp, sidecar=False),
                sidecar_path(out): lambda tmp: write_sidecar(tmp, design.names, design.kinds, design.tr),
            }
        )
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}.") from None
    if not args.quiet:
        print(
            f"{out}: {args.n_scans} scans x {summary['n_columns']} columns ({', '.join(design.names)}); "
            f"rank {summary['rank']}, condition number {summary['condition_number']:.3g}"
        )
    return 0


def _in_thread(fn, *args, **kwargs) -> Future:
    """Run `fn` in a daemon thread (an error elsewhere need not wait for it); its result as a Future."""
    from concurrent.futures import Future

    future: Future = Future()

    def target():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=target, name="voxfit-load", daemon=True).start()
    return future


def ignore_signal(signum, frame):
    """A handler that does nothing: further signals during a clean-up. Not SIG_IGN: a signal already caught by
    the C handler but not yet run would then make CPython raise "Signal N ignored due to race condition" (an
    OSError) wherever the main thread is, and print its traceback instead of the one-line message."""


def _on_signal(signum, frame):
    """SIGINT, SIGTERM or SIGHUP: clean up as for Ctrl-C (no partial output). Further signals are ignored until the
    run has removed its partial output (a second Ctrl-C during the clean-up left it behind)."""
    from ._threads import STOP_REQUESTED, handle_stop_signals

    handle_stop_signals(ignore_signal)
    STOP_REQUESTED.up = True
    if _PROGRAM:  # (not in a caller's process, whose logging is its own)
        _quiet_interrupted_libraries()
    raise KeyboardInterrupt


def _quiet_interrupted_libraries() -> None:
    """Once the program is interrupted: SQLAlchemy (pybids' index of a study) logs the cursor that the interruption
    cut short ("Error closing cursor", with 25 lines of traceback) as the index closes; the run says one line."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("sqlalchemy").disabled = True


def _interrupt_swallowed(hook, unraisable) -> None:
    """``sys.unraisablehook`` while a command runs: the KeyboardInterrupt of :func:`_on_signal`, raised while the
    main thread ran a finalizer (SQLAlchemy's, of pybids' index, in a study), is one Python ignores ("Exception
    ignored in"): the run went on to exit 0, deaf to further signals. It is raised again, once the finalizer has
    returned, in the main thread's own code. Once the program is interrupted, any other is dropped: a finalizer
    that the interruption cut short leaves its object half closed, and the next one to touch it fails (llvmlite's,
    as numba loaded a kernel: its traceback followed the one-line message). Anything else goes to `hook`, the one
    it replaced."""
    from ._threads import STOP_REQUESTED

    if isinstance(unraisable.exc_value, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is ignore_signal:
        signal.signal(signal.SIGINT, _on_signal)  # (a moment later, from another thread: here it is ignored again)
        again = threading.Timer(0.02, _signal_main_thread)
        again.daemon = True
        _rearmed.append(again)
        again.start()
        return
    if _PROGRAM and STOP_REQUESTED.up:
        return
    hook(unraisable)


_rearmed: list[threading.Timer] = []  # the re-raises of swallowed interruptions (_interrupt_swallowed)


def _settle_rearmed() -> bool:
    """As a command ends: whether an interruption was swallowed during it. A re-raise still to come is stopped,
    and one already sent lands on a handler that does nothing, rather than on the caller's after the command."""
    if not _rearmed:
        return False
    signal.signal(signal.SIGINT, ignore_signal)
    for timer in _rearmed:
        timer.cancel()
        timer.join()
    _rearmed.clear()
    time.sleep(0)  # (a signal already sent is handled here)
    return True


def _signal_main_thread() -> None:
    """SIGINT to the main thread itself: a signal that wakes it from a blocking call (where it has pthread_kill),
    not only a flag that it reads once the call returns."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:  # pragma: no cover - Windows
        _thread.interrupt_main(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """The command line on `argv` (default: ``sys.argv[1:]``); returns its exit status. Python code that calls it
    keeps its process; the voxfit program itself is :func:`program`."""
    return _command(sys.argv[1:] if argv is None else list(argv), program=False)


def program() -> NoReturn:
    """The voxfit program (the ``voxfit`` script and ``python -m voxfit``, through :mod:`voxfit._program`): the
    command line on ``sys.argv`` in a process set up for it (:func:`program_settings`), which ends as soon as the
    command has (:func:`_end_process`)."""
    global _PROGRAM
    _PROGRAM = True
    program_settings()
    _end_process(_command(sys.argv[1:], program=True))  # (a signal outside the command's handling: voxfit._program)


_PROGRAM = False  # this process is the voxfit program (`program`), not Python code calling `main`


def _command(argv: list[str], program: bool) -> int:
    in_main = threading.current_thread() is threading.main_thread()
    # (a SIGINT that the parent made ignored, as for background jobs, stays ignored: handle_stop_signals)
    from ._threads import STOP_REQUESTED, handle_stop_signals

    if in_main:
        STOP_REQUESTED.up = False
    previous = handle_stop_signals(_on_signal) if in_main else {}
    hook = sys.unraisablehook
    if previous:
        sys.unraisablehook = functools.partial(_interrupt_swallowed, hook)
    try:
        code = _main(argv)
    finally:
        sys.unraisablehook = hook
        late = _settle_rearmed() if previous else False
        interrupted = any(signal.getsignal(s) is ignore_signal for s in previous)
        if not (program and interrupted):  # an interrupted program ignores signals until it has exited
            for s, handler in previous.items():
                signal.signal(s, handler)
    if late and code != 130:  # (Ctrl-C in a finalizer as the command finished: its work is done, and said so)
        print("voxfit: interrupted as the command ended; what it wrote is complete.", file=sys.stderr)
        return 130
    return code


def _end_process(code: int) -> NoReturn:
    """End the program, its output written, committed and flushed: its threads are done or abandoned (daemons
    hashing an input, or, interrupted, compressing a map whose partial output is gone), and the interpreter's
    teardown (60 ms after a fit, clearing numpy's, scipy's and nibabel's modules; up to a second more behind an
    abandoned thread on a busy machine) does nothing for the user. As the interpreter's own exit: status 120
    where the output could not be written (a full disk, a closed pipe). Watched by a tracer or a profiler
    (coverage, cProfile, a debugger), which write their results at the interpreter's exit, it exits as usual,
    unless interrupted."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError as exc:
            code = 120
            with contextlib.suppress(OSError, ValueError):
                os.write(2, f"voxfit: error: could not write the {stream.name}: {exc}\n".encode(errors="replace"))
        except ValueError:  # a stream already closed: nothing left in it
            pass
    if code != 130 and _observed():
        sys.exit(code)
    os._exit(code)


def _observed() -> bool:
    """Whether a tracer or a profiler watches the process: ``sys.settrace`` or ``sys.setprofile`` (coverage,
    cProfile, pdb up to Python 3.11), or a tool of ``sys.monitoring`` (Python 3.12 on: cProfile, coverage's
    sysmon core)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(tool) is not None for tool in range(6))


def program_settings() -> None:
    """What the voxfit program sets for its own process (and the worker processes it starts) before numpy loads.

    numpy advises the kernel to back each array of 4 MiB or more with huge pages. Where the kernel compacts
    memory on that advice (``/sys/kernel/mm/transparent_hugepage/defrag``: ``madvise``, the usual default), the
    first touch of a large array can stall while pages are moved: reading a 438 MB CIFTI run into a new array took
    0.11-1.05 s with the advice against 0.18 s without it, and the whole fit 1.50-1.90 s against 1.27-1.36 s. Fits
    from NIfTI were the same either way when each file was fitted over and over, but slower with the advice when
    1.65 GB .nii and .nii.gz OLS fits alternated (6 each, 24 GB machine): 1.77-2.16 s and 1.83-2.21 s (mean system
    CPU per fit 1.46 s and 1.21 s) against 1.60-1.75 s and 1.74-1.87 s (0.78 s and 0.57 s). voxfit passes over
    its data once or a few times, so the huge pages' fewer TLB misses do not pay for that. numpy's own
    NUMPY_MADVISE_HUGEPAGE turns the advice off.

    OpenBLAS's worker threads wait for work by spinning 2^28 cycles (about 0.1 s) before they sleep, from the
    moment the library loads and after each threaded call. numpy and scipy each load their own OpenBLAS, so a run
    spent 0.2 s of CPU spinning while it imported, beside the read and the digest on a 2-core machine
    (``python -c "import numpy, scipy.linalg"``: 0.37 s user against 0.17 s). OPENBLAS_THREAD_TIMEOUT=20 makes
    them spin 2^20 cycles (under a millisecond), which still bridges back-to-back threaded calls; voxfit's own
    threads hold BLAS to one thread anyway (``_threads.blas_single_threaded``). A value the user set is kept.

    In this process only (worker processes import as usual), numpy's submodules that no command uses (f2py,
    testing) load on first use, where scipy's import would otherwise import them
    (``voxfit._lazy.numpys_unused_submodules_lazy``): importing numpy, nibabel and scipy took 0.31-0.41 s
    against 0.35-0.53 s (6 alternating runs each); a CIFTI fit (91k x 1,200) 0.86-1.22 s against 0.92-1.24 s in
    one set of 8 alternating runs, and no less than before, within the machine's noise, in another of 6.

    nibabel's log of header problems (``nibabel.global``) is not printed as it comes (see :func:`_nibabel_notes`)."""
    import logging

    from ._lazy import numpys_unused_submodules_lazy

    logging.getLogger("nibabel.global").addFilter(_nibabel_notes)
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
    numpys_unused_submodules_lazy()


def _nibabel_notes(record) -> bool:
    """A filter of nibabel's header log: nibabel prints each problem it finds as a bare line on stderr, before the
    program's own line for a header it refuses ("data code 0 not supported; not attempting fix"). Those it refuses
    are dropped (the program says why in its line); those it repairs as it reads (a negative pixdim read as its
    absolute value: a flip lost) become warnings, which the program prints once the command has succeeded."""
    if record.levelno < 40:  # (logging.ERROR: refused, and raised by nibabel)
        warnings.warn(f"nibabel repaired a header as it read it: {record.getMessage()}", UserWarning, stacklevel=2)
    return False


def _main(argv: list[str]) -> int:
    debug, commits, flags = False, len(_committed_since(0)), set()
    try:  # (the parser too: a signal while it is built, 0.07 s into the process, had printed a traceback)
        parser = _get_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            commands = "fit, design, group, bids, report or demo"
            print(f"voxfit: error: give a command: {commands} (see --help)", file=sys.stderr)
            return 2
        debug, flags = getattr(args, "debug", False), _command_options(parser, args.command)
        args.command_options = flags  # (a study's failures are said in the command line's words too)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            code = _run(args, argv)
        said = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
        for message in said if not getattr(args, "quiet", False) else ():  # (each once: runs of one design)
            print(f"voxfit: warning: {_one_line(_as_options(message, flags))}", file=sys.stderr)
        return code
    except VoxfitError as exc:
        if debug:
            _print_traceback()
        print(f"voxfit: error: {_one_line(_as_options(str(exc), flags))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return say_interrupted(commits)
    except OSError as exc:  # the system refused a file (no space, permissions, a name too long): the user's to fix
        if exc.errno is None:
            return _internal_error(exc, debug)
        if debug:
            _print_traceback()
        name = exc.filename  # a map's final name, not the temporary folder it was being written into
        if name is not None:
            name = re.sub(r"[/\\]\.voxfit-partial-\d+(?=[/\\])", "", str(name))
        done = _committed_since(commits)
        if name is None and done:  # after the commit: the summary, printed to the standard output
            print(
                f"voxfit: error: the output was written to {done[-1]}, but "
                f"{InputError.from_os_error(exc, 'the standard output')}",
                file=sys.stderr,
            )
            return 2
        print(f"voxfit: error: {_one_line(str(InputError.from_os_error(exc, name)))}", file=sys.stderr)
        return 2
    except Exception as exc:  # an internal error: one line, the traceback on request
        if _raised_by_interruption(exc):  # (numba's lazy import turns a Ctrl-C into an ImportError)
            return say_interrupted(commits)
        return _internal_error(exc, debug)


def say_interrupted(commits: int) -> int:
    """The line of an interrupted command (its exit status, 130): whether it had written its output (after the
    first `commits` of this process)."""
    done = _committed_since(commits)
    if done:  # (a Ctrl-C held during the commit arrives after it)
        print(f"voxfit: interrupted after the output was written to {done[-1]}.", file=sys.stderr)
    else:
        print("voxfit: interrupted; no output was written.", file=sys.stderr)
    return 130


def _raised_by_interruption(exc: BaseException) -> bool:
    """Whether `exc` was raised while a KeyboardInterrupt was handled (in its chain of causes and contexts)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _command_options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The options of `command` (--slice-time-ref, ...)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {flag for action in commands[command]._actions for flag in action.option_strings}


def _as_options(message: str, flags: set[str]) -> str:
    """A message of the Python API in the command line's words: a parameter it names in backquotes
    (`slice_time_ref`) as the command's option (--slice-time-ref), where it has one; a message that names both
    says the option once."""

    def option(match) -> str:
        flag = "--" + match.group(1).replace("_", "-")
        return flag if flag in flags else match.group(0)

    said = re.sub(r"`([a-z][a-zA-Z0-9_]*)`", option, message)  # (tfce_E: --tfce-E)
    return re.sub(r"(--[a-z0-9-]+)(?: \(\1\)|, \1|\s*/\s*\1)(?![\w-])", r"\1", said)  # ("--mask, `mask`": once)


def _one_line(text: str) -> str:
    """A message as one line of stderr: line breaks in it (a file name may hold one) written as ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _committed_since(count: int) -> list:
    """The output folders this process has committed after its first `count` (none before voxfit.io.output is
    imported)."""
    output = sys.modules.get("voxfit.io.output")
    return output.COMMITTED[count:] if output is not None else []


def _internal_error(exc: BaseException, debug: bool) -> int:
    if debug:
        _print_traceback()
    print(f"voxfit: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
    return 1


def _print_traceback() -> None:
    """--debug: the traceback of the error being handled (traceback is imported only then: ~10 ms of start-up)."""
    import traceback

    traceback.print_exc()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
