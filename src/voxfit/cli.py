"""The command line: ``voxfit fit``, ``voxfit demo``.

Exit status: 0 on success, 2 on bad input or usage, 1 on an internal error, 130 when interrupted. Errors are
one line on stderr (``--debug`` shows the traceback); a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
import warnings
from concurrent.futures import Future

from ._version import __version__
from .exceptions import VoxfitError

EXAMPLES_FIT = """examples:
  voxfit fit bold.nii.gz --design design.tsv --contrast "task=A - B" --contrast "eoi=A; B" -o results/
  voxfit fit sub-01_task-x_space-fsLR_den-91k_bold.dtseries.nii --design design.tsv --contrast "A=A" -o res/
  voxfit fit scans/*.img --design design.tsv --mask mask.nii --contrast "c1=A" -o res/

contrasts are NAME=EXPR: EXPR is a linear combination of design column names with numeric coefficients
(A - B, 0.5*A + 0.5*B, (A + B)/2); ';' joins rows into an F contrast (A; B). Names of maps keep the
letters and digits of NAME: contrast-<NAME>_stat-<effect|variance|t|F|p|z>_statmap.<ext>.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit with 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _get_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="voxfit", description="Fit one linear model to every voxel of an imaging dataset at once.")
    parser.add_argument("--version", action="version", version=f"voxfit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = sub.add_parser("fit", help="fit a design to image files and write maps", epilog=EXAMPLES_FIT,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help="a 4-D NIfTI, several 3-D NIfTI/Analyze files, GIFTI, CIFTI or .npy")
    fit.add_argument("--design", required=True, metavar="FILE", help="TSV/CSV with a header of column names, or FSL design.mat")
    fit.add_argument("--contrast", action="append", default=[], metavar="NAME=EXPR", help="a contrast (repeatable)")
    fit.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (must be empty unless --force)")
    group = fit.add_mutually_exclusive_group()
    group.add_argument("--mask", metavar="FILE", help="mask in the data's geometry (default: automatic)")
    group.add_argument("--mask-threshold", type=float, metavar="REL", help="automatic mask: SPM's relative threshold, e.g. 0.8")
    _common(fit)

    demo = sub.add_parser("demo", help="fit a synthetic fMRI run with known activations (no download)")
    demo.add_argument("-o", "--output", default="voxfit-demo", metavar="DIR", help="output folder (default: ./voxfit-demo)")
    _common(demo)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-memory", metavar="SIZE", help="bound on working memory, e.g. 500M or 2G")
    p.add_argument("--n-jobs", type=int, metavar="N", help="threads (default: all CPUs)")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder, replacing same-named files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of errors")


def _run(args, argv) -> int:
    progress = None if not args.quiet else False
    if args.command == "demo":  # heavy imports only once the command line is known to be valid
        from .models.demo import run_demo

        _, result, lines = run_demo(args.output, force=args.force, progress=progress)
        if not args.quiet:
            print("\n".join(lines))
        return 0
    # Read the data while the numerical modules import: nibabel first (imports hold the GIL, so two at once
    # only take turns), then decompression (which releases it) runs alongside scipy's import.
    from .io import load

    loading = _in_thread(load, args.inputs, args.mask, mask_threshold=args.mask_threshold, progress=progress)
    from .models import fit_images

    result = fit_images(
        args.inputs, args.design, args.contrast, mask=args.mask, mask_threshold=args.mask_threshold,
        max_memory=args.max_memory, n_jobs=args.n_jobs, out_dir=args.output, force=args.force,
        progress=progress, command=["voxfit", *argv], dataset=loading,
    )  # fmt: skip
    if not args.quiet:
        fit = result.fit
        print(f"fitted {fit.valid.size:,} voxels x {fit.design.n_scans} scans, {fit.design.n_columns} regressors "
              f"(rank {fit.rank}, {fit.dof} dof); {len(result.contrasts)} contrast(s); "
              f"{len(result.files)} files in {args.output}")  # fmt: skip
        if fit.n_invalid:
            print(f"{fit.n_invalid} voxel(s) had NaN or infinite values and are NaN in every map")
    return 0


def _in_thread(fn, *args, **kwargs) -> Future:
    """Run `fn` in a daemon thread (an error elsewhere need not wait for it); its result as a Future."""
    future: Future = Future()

    def target():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=target, name="voxfit-load", daemon=True).start()
    return future


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _get_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print("voxfit: error: give a command: fit or demo (see --help)", file=sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            code = _run(args, argv)
        for w in caught:
            if issubclass(w.category, UserWarning) and not getattr(args, "quiet", False):
                print(f"voxfit: warning: {w.message}", file=sys.stderr)
        return code
    except VoxfitError as exc:
        if debug:
            traceback.print_exc()
        print(f"voxfit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxfit: interrupted; no output was written.", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: one line, the traceback on request
        if debug:
            traceback.print_exc()
        print(f"voxfit: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
