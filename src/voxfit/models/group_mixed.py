"""Mixed- and fixed-effects group models (FSL FLAME1, AFNI 3dMEMA, flameo's fixed effects) within
:class:`voxfit.SecondLevel`: the subjects' first-level variance maps paired with their effect maps, read on the
effect maps' voxels, and what is written and recorded beside the usual group maps.

The estimation itself is :func:`voxfit.mixed_effects` (``voxfit.engine.mixed``, ``voxfit.core.mixed``).
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._memory import size_text
from ..core import check_contrast, factorize, working_dtype
from ..core.mixed import MODELS
from ..design import first_level_maps, pair_variances, read_groups
from ..design.paired_maps import check_not_statistics, spm_folder_error, study_folder_error
from ..engine.mixed import MixedFit
from ..exceptions import InputError
from ..io import (
    Masker,
    apply_scale,
    disk_error,
    explicit_mask,
    gather,
    open_gzip,
    open_map,
    open_reader,
    sanitize_label,
    statmap_name,
)
from ..io._gzip import corrupt_gzip
from ..io.readers import extra_data, read_on, repair_copied_header, truncated_error
from ..io.output import signals_held

__all__ = [
    "MODELS",
    "PairedDesign",
    "by_columns",
    "columns_of",
    "mixed_record",
    "paired_design",
    "paired_inputs",
    "permutation_copies",
    "read_dof_maps",
    "read_variances",
    "streamed_mask",
    "variance_groups",
    "write_mixed_maps",
]

MODEL_WORDS = {
    "mixed": "mixed effects: GLS with each subject's first-level variance plus a between-subject variance "
    "estimated by REML at every voxel (FSL FLAME1, AFNI 3dMEMA)",
    "fixed": "fixed effects: precision-weighted least squares with the first-level variances (flameo's fixed effects)",
    "ols": "ordinary least squares on the effect maps (first-level variances not used)",
}
OUTLIER_WORDS = (
    ", with outlier inference: each subject's random effect from the population or, with a prior probability "
    "estimated at every voxel, from an outlier population of a much larger variance, subjects weighted by their "
    "posterior outlier probability (FSL flameo --io, Woolrich 2008)"
)


def paired_inputs(data, variances, first_level_contrast, first_level_dof, read_record, paired: bool = False):
    """The effect maps of `data` paired with their variance maps (``voxfit.design.PairedMaps``), from
    `variances` (files matched by subject) or, with `first_level_contrast`, from first-level output folders
    `data`; None when neither is given (effect files named as statistics then warned of). `paired`: the maps
    (folders) of condition A, then those of B; `first_level_dof`: numbers or dof maps (``PairedMaps.with_dof``)."""
    if first_level_contrast is not None:
        if variances is not None:
            raise InputError(
                "--first-level folders hold each subject's variance map; drop --variances, or give effect maps "
                "(not folders) with --variances."
            )
        folders = _folders(data)
        contrast = first_level_contrast or _only_contrast(folders, read_record)
        pairs = first_level_maps(folders, contrast, read_record=read_record, paired=paired)
        return pairs if first_level_dof is None else pairs.with_dof(first_level_dof)
    if variances is None:
        if first_level_dof is not None:
            raise InputError(
                "--first-level-dof is for fixed-effects models of effect and variance maps; give --variances."
            )
        check_not_statistics([p for p in (data if isinstance(data, list) else [data]) if isinstance(p, Path)])
        return None
    return pair_variances(data, variances, dof=first_level_dof, paired=paired)


@dataclass(frozen=True)
class PairedDesign:
    """FLAME's paired design on the 2n rows of a paired model (A maps, then B maps): `X` (2n, p + n), its column
    `names`, and the contrasts `items` with zero weights for the subject columns."""

    X: np.ndarray
    names: list[str]
    items: list[tuple[str, object]]


def paired_design(X: np.ndarray, names, items, subjects) -> PairedDesign:
    """The paired design of a group design `X` (n, p) over the pairs' differences A - B: rows ``+X/2`` for
    the A maps and ``-X/2`` for the B maps (so that each beta is an effect on A - B, as the OLS model of the
    differences has it; for one sample, the mean condition difference), then one column per subject, 1 on its
    A and its B row (the subject means, fixed effects). The columns are orthogonal, rank ``rank(X) + n``: the
    dof ``2n - rank`` equal ``n - rank(X)``, those of the OLS model of the differences. Contrasts given as
    weights get zeros for the subject columns; expressions keep naming the design's columns."""
    n = X.shape[0]
    subject_columns = np.vstack([np.eye(n), np.eye(n)])
    labels = [f"pair_{s}" if s is not None else f"pair_{k + 1}" for k, s in enumerate(subjects)]
    while set(labels) & set(names):  # (the subjects' columns never take the name of one of the design's)
        labels = [f"_{label}" for label in labels]
    padded = [
        (label, expr if isinstance(expr, str) else np.pad(np.atleast_2d(np.asarray(expr, float)), ((0, 0), (0, n))))
        for label, expr in items
    ]
    return PairedDesign(np.hstack([np.vstack([X / 2, -X / 2]), subject_columns]), [*names, *labels], padded)


def _only_contrast(folders: list[Path], read_record) -> str:
    """The one t contrast of the voxfit first-level folders, when no contrast is named; refused, naming them,
    when they have several (or none)."""
    labels = None
    for folder in folders:
        if not (Path(folder) / "model.json").is_file():
            if (study := study_folder_error(Path(folder), None)) is not None:  # (said before the contrast's name)
                raise study
            if (spm := spm_folder_error(Path(folder))) is not None:  # (a contrast named would not help)
                raise spm
            raise InputError(
                f"{folder} is not a voxfit output folder (no model.json); name the contrast to take from each "
                "folder with --first-level-contrast (for FSL FEAT folders: its number, e.g. 1)."
            )
        contrasts = read_record(folder).contrasts or {}
        found = sorted(label for label, entry in contrasts.items() if entry.get("kind", "t") == "t")
        labels = found if labels is None else [c for c in labels if c in found]
    if not labels or len(labels) > 1:
        have = ", ".join(labels) if labels else "no t contrast in common"
        raise InputError(
            f"name the contrast to take from each first-level folder with --first-level-contrast "
            f"(`first_level_contrast`); the folders have {have}."
        )
    return labels[0]


def _folders(data) -> list[Path]:
    """First-level folders as given: paths, or quoted patterns (``'derivatives/sub-*/'``) matching folders."""
    folders = []
    for item in data if isinstance(data, list) else [data]:
        if glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_dir())
            if not found:
                raise InputError(f"no folder matches the pattern {str(item)!r}; give first-level output folders.")
            folders += found
        else:
            folders.append(Path(item))
    return folders


def variance_reader(paired):
    """The reader of the variance maps of `paired` (one 4-D file for a 4-D pair)."""
    return open_reader(list(paired.variances) if paired.volumes is None else paired.variances[0], "variances")


def columns_of(reader, paired, masker: Masker):
    """The effect maps (`reader`) and variance maps of `paired` as column sources of the fitted voxels, read a
    block of voxels at a time by the fit (maps that do not fit in memory together); None when the files
    cannot be read by columns (compressed NIfTI, GIFTI, CIFTI) or the volumes of a 4-D pair are reordered."""
    variances = variance_reader(paired)
    in_order = paired.volumes is None or list(paired.volumes) == list(range(len(paired.volumes)))
    effects = reader.column_source(masker.index)
    if not in_order or effects is None or variances.column_source() is None:
        return None
    masker.geometry.check_same(variances.geometry, "the variance maps")
    return effects, variances.column_source(masker.index)


@contextlib.contextmanager
def by_columns(paired, out):
    """`paired` with each gzip-compressed NIfTI map (effects and variances) decompressed once into an
    uncompressed temporary file, so that the fit reads them a block of voxels at a time (the same numbers as
    the compressed files read whole). The files live in a folder made by ``mkdtemp`` (random name, exclusive,
    0700) in the output folder's staging area (`out`, an ``OutputFolder``), else in the system's temporary
    folder, and are removed when the block is left: on success, on an error or on Ctrl-C. The free space
    there is checked first (refused in one sentence naming the folder and the size needed); `paired` is
    yielded as it is when no map is compressed."""
    files = list(dict.fromkeys([*paired.effects, *paired.variances]))
    readers = {path: open_map(path) for path in files}
    packed = {p: r for p, r in readers.items() if getattr(r, "compressed", False) and r.image_file == Path(p)}
    if not packed:
        yield paired
        return
    folder = None
    try:
        with signals_held():  # (a signal as the folder is made is raised once it is recorded, then removed)
            folder = Path(tempfile.mkdtemp(prefix=".voxfit-decompressed-", dir=None if out is None else out.staging))
        sizes = {
            p: r.data_offset + r.n_scans * r.geometry.n_elements * r.file_dtype.itemsize for p, r in packed.items()
        }
        need, free = sum(sizes.values()), shutil.disk_usage(folder).free
        if need > free:
            where = folder.parent if out is None else out.final
            raise InputError(
                f"reading the {len(packed)} compressed maps a block of voxels at a time needs {size_text(need)} "
                f"free in {where} to decompress them ({size_text(free)} free); free space there, give "
                "uncompressed maps, or a larger --max-memory."
            )
        scans = {p: r.geometry.n_elements * r.file_dtype.itemsize if r.n_scans > 1 else None for p, r in packed.items()}
        plain = {p: _decompress(p, folder / f"{k}.nii", sizes[p], scans[p]) for k, p in enumerate(packed)}
        yield replace(
            paired,
            effects=tuple(plain.get(p, p) for p in paired.effects),
            variances=tuple(plain.get(p, p) for p in paired.variances),
        )
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


_CHUNK = 1 << 20  # bytes decompressed per call: an interruption is seen between calls


def _decompress(source: Path, target: Path, size: int, scan: int | None) -> Path:
    """The first `size` bytes (header and data) of the gzip file `source` into the new file `target` (created
    exclusively); refused when the stream ends early or is corrupt; a scan's bytes (`scan`) or more after the data
    of 4-D maps are warned of, as the readers do (``voxfit.io.readers.extra_data``; None: a 3-D map, read as
    nibabel reads it)."""
    buffer = bytearray(_CHUNK)
    try:
        with open_gzip(source) as src, open(target, "xb") as dst:
            done = 0
            while done < size:
                got = src.readinto(memoryview(buffer)[: min(_CHUNK, size - done)])
                if not got:
                    raise truncated_error(source, done, size)
                dst.write(memoryview(buffer)[:got])
                done += got
            extra, ended = read_on(src)  # (reading to the end also checks the gzip trailer: CRC and length)
            if scan is not None and (extra >= scan or not ended):
                warnings.warn(extra_data(source, extra, scan, at_least=not ended), UserWarning, stacklevel=2)
    except InputError:
        raise
    except OSError as exc:
        error = disk_error(exc, target)
        if error is not None:
            raise error from None
        if exc.errno is not None:
            raise InputError.from_os_error(exc, source) from None
        raise corrupt_gzip(source, exc) from None
    except (zlib.error, EOFError, ValueError) as exc:
        raise corrupt_gzip(source, exc) from None
    repair_copied_header(target)
    return target


def read_dof_maps(paired, masker: Masker) -> np.ndarray:
    """Each row's first-level dof map of `paired` (``PairedMaps.dof_maps``) at the fitted voxels of `masker`,
    (n, V) float32 (held beside the fit: half the memory, and a dof needs no more digits), each file read a volume
    at a time (fixed effects with estimated weights take every subject's dof at every voxel, not their sum alone);
    refused, naming the file, where a dof is not positive and finite at a fitted voxel."""
    out = np.empty((paired.n, masker.n_voxels), dtype=np.float32)
    rows: dict[tuple, list[int]] = {}
    for k, where in enumerate(paired.dof_maps):
        if isinstance(where, tuple):
            rows.setdefault(where, []).append(k)
        else:  # (a row whose dof is one number: a FEAT first level beside higher-level folders)
            out[k] = where
    for path in dict.fromkeys(p for p, _ in rows):
        reader = open_map(path)
        masker.geometry.check_same(reader.geometry, f"the dof map {path}")
        one_volume = reader.geometry.n_elements * reader.dtype.itemsize
        for start, volumes in reader.iter_scans(max_bytes=one_volume):
            for k, volume in enumerate(volumes, start):
                if (path, k) in rows:
                    values = apply_scale(volume[masker.index], reader.scale).astype(np.float64)
                    bad = int(np.count_nonzero(~(np.isfinite(values) & (values > 0))))
                    if bad:
                        where = f" (volume {k})" if reader.n_scans > 1 else ""
                        raise InputError(
                            f"the first-level dof map {path}{where} is not positive and finite at {bad:,} fitted "
                            "voxels; give dof maps of the same fits, or --mask the voxels they cover."
                        )
                    out[rows[(path, k)]] = values
    return out


def streamed_mask(reader, mask) -> Masker:
    """The group mask of maps not held whole: the elements of the explicit `mask` (as the in-memory and Dask
    paths fit them: voxels with a non-finite value are counted as not fitted), or else, in one pass over the
    maps a slab at a time, those finite, non-zero and not constant over the maps, as the in-memory path keeps."""
    if mask is not None:
        return Masker(reader.geometry, explicit_mask(mask, reader.geometry))
    keep = np.ones(reader.geometry.n_elements, dtype=bool)
    varies, first = np.zeros_like(keep), None
    for _, rows in reader.iter_scans():
        values = apply_scale(rows, reader.scale)
        keep &= np.isfinite(values).all(axis=0) & (values != 0).all(axis=0)
        first = values[0].copy() if first is None else first
        varies |= (values != first).any(axis=0)
    keep &= varies
    if not keep.any():
        raise InputError("no voxel is finite and non-zero in every input map; check the inputs or give --mask.")
    return Masker(reader.geometry, keep)


def read_variances(paired, masker: Masker) -> np.ndarray:
    """The variance maps of `paired` (in its row order) at the fitted voxels of `masker`, (n, V) in the
    working dtype of the files, scale factors applied. A 4-D variance file is read volume by volume in the
    order of its rows."""
    reader = variance_reader(paired)
    masker.geometry.check_same(reader.geometry, "the variance maps")
    raw = gather(reader, masker.index)
    values = np.asarray(apply_scale(raw, reader.scale), dtype=working_dtype(raw.dtype, reader.scale))
    if paired.volumes is not None:
        values = values[list(paired.volumes)]
    return values


def variance_groups(
    grp, design, n_rows: int, order, column: str | None = None, paired: bool = False
) -> list[str] | None:
    """Each design row's variance group: from the design table's column (``GroupDesign.variance_groups``) or
    an FSL ``.grp`` file `grp` (its rows in the order of the maps as given, reordered by `order`, the input
    row of each design row); None for one group. Refused: a group of one subject (its between-subject variance
    is not estimable: REML took it 0, and null maps gave 27% of voxels below p < 0.05, t up to 10), and with
    `paired` (rows: the A maps, then the B maps, subject by subject) a subject whose two maps are in different
    groups (the paired design's subject columns then leave its variances singular). `column`: the table's
    column, named in the messages."""
    if design.variance_groups:
        groups, source = list(design.variance_groups), f"column {column!r}" if column else "the design's column"
    elif grp is not None:
        groups, source = [str(v) for v in read_groups(grp, n_rows)[order]], f"{grp} (FSL's design.grp: variance groups)"
    else:
        return None
    # subjects: a .grp under --paired has a row per map (rows k and n + k: one subject's pair); a column, per subject
    n = len(groups) // 2 if paired and len(groups) % 2 == 0 and len(groups) == n_rows else len(groups)
    if n < len(groups) and any(groups[k] != groups[n + k] for k in range(n)):
        raise InputError(
            f"variance groups of {source} put a subject's A and B maps in different groups; with --paired, give "
            "each subject's two maps the same group (groups of subjects)."
        )
    subjects = {g: len({k % n for k, h in enumerate(groups) if h == g}) for g in dict.fromkeys(groups)}
    alone = [g for g, count in subjects.items() if count == 1]
    if alone:
        raise InputError(
            f"variance group {alone[0]!r} of {source} holds one subject ({len(alone)} group(s) do): a "
            "between-subject variance cannot be estimated from one subject; give groups of several subjects (a "
            "column of group labels, not a covariate), or no variance groups."
        )
    return groups


PERMUTATION_STATISTIC = (
    "sign-flips (Freedman-Lane on the reduced model's residuals) of the null model's weighted least-squares "
    "statistic: weights 1 / (s2 + tau2) with tau2 estimated once per voxel by REML under the reduced model (0 for "
    "fixed), t = c'b / sqrt(sigma2 c'(X'WX)^+ c) with sigma2 the weighted residual variance (F likewise); written "
    "as stat-t (or F)_desc-nullmodel, it differs from the parametric map (tau2 from the full model, no residual "
    "scale); the permutation p-values are its"
)


def permutation_copies(items, X, names) -> int:
    """The (n, V) arrays a mixed-effects permutation test holds per map, for the memory plan: the effects, the
    variances, and the weighted residuals of the widest contrast (one per rank of its rows)."""
    design = factorize(X, names, warn=False)
    ranks = [np.linalg.matrix_rank(check_contrast(expr, design, label)) for label, expr in items]
    return max(2, 1 + max(ranks, default=1))


def write_mixed_maps(out, masker: Masker, fit: MixedFit, permutation: dict | None = None) -> None:
    """The between-subject variance of each variance group (``stat-betweenvariance``, with ``group-<label>``
    when there are several), with outlier inference each subject's outlier probability (``stat-outlierprob``,
    4-D, a volume per subject in the order of model.json's pairing rows), the outlier prior and the outlier
    variance (``stat-outlierprior``, ``stat-outliervariance``), the degrees of freedom where they vary over
    voxels (``stat-dof``: flameo's fixed effects from dof maps; per contrast with Satterthwaite's or
    Kenward-Roger's), and with permutations the
    statistic they shuffled (``stat-t_desc-nullmodel`` or ``stat-F_desc-nullmodel``: see
    :data:`PERMUTATION_STATISTIC`)."""
    ext = masker.geometry.extension
    for label, result in (permutation or {}).items():
        name = statmap_name(result.kind, ext, label, desc="nullmodel")
        masker.write(out.path(name), result.stat, [f"{label} {result.kind} of the null model (permutations)"])
    if fit.model == "mixed":
        several = len(fit.groups) > 1
        for g, label in enumerate(fit.groups):
            entity = (sanitize_label(str(label), "variance group"), "group") if several else ()
            name = statmap_name("betweenvariance", ext, *entity)
            masker.write(out.path(name), fit.between_variance[g], [f"between-subject variance {label}"])
    if fit.outlier_probability is not None:  # one volume per subject, in the design's rows' order
        n = fit.outlier_probability.shape[0]
        names = [f"outlier probability {k + 1}" for k in range(n)]
        masker.write(out.path(statmap_name("outlierprob", ext)), fit.outlier_probability, names)
        masker.write(out.path(statmap_name("outlierprior", ext)), fit.outlier_prior, ["outlier prior"])
        masker.write(out.path(statmap_name("outliervariance", ext)), fit.outlier_variance, ["outlier variance"])
    if np.ndim(fit.dof) > 0 and fit.dof_kind == "residual":  # (else each contrast's own, below)
        masker.write(out.path(statmap_name("dof", ext)), fit.dof, ["dof"])
    for label, stats in fit.contrasts.items():
        dof = stats.dof[1] if stats.kind == "F" else stats.dof
        if np.ndim(dof) > 0 and fit.dof_kind != "residual":
            masker.write(out.path(statmap_name("dof", ext, label)), dof, [f"{label} dof"])


MIXED_DOF_WORDS = {
    "residual": "n - rank (FLAME1)",
    "satterthwaite": "Satterthwaite's, per contrast and voxel",
    "kenward-roger": "Kenward-Roger's: the betas' covariance adjusted for the estimation of the between-subject "
    "variances, Satterthwaite's dof per contrast and voxel, at most n - rank",
}
FIXED_DOF_WORDS = {
    "residual": "the sum of the first-level dof minus the rank, the betas' covariance (X'WX)^+ (flameo's fixed "
    "effects: the first-level variances taken as known)",
    "kenward-roger": "Kenward-Roger's for the first-level variances as estimates on their first-level dof: the betas' "
    "covariance (X'WX)^+ widened for the weights' error, Satterthwaite's dof per contrast and voxel, Kenward & "
    "Roger's scaled F (voxfit.core.mixed.fixed_kenward_roger)",
}


def mixed_record(fit: MixedFit, paired, first_level_dof: bool, permutation: dict | None = None) -> dict:
    """What model.json says of a mixed- or fixed-effects fit: the model in words, its degrees of freedom and
    covariance, the variance groups, the voxels not fitted and why, and how each variance map was paired with its
    effect map (`first_level_dof`: whether the fixed-effects dof came from the first levels); with `permutation`
    results, the statistic their p-values come from."""
    if fit.model == "mixed":
        dof = MIXED_DOF_WORDS[fit.dof_kind]
    elif first_level_dof:
        dof = FIXED_DOF_WORDS[fit.dof_kind]
        dof += " (per voxel, from dof maps)" if paired.dof_maps is not None else ""
    else:
        dof = "n - rank (no first-level dof: the first-level variances taken as known)"
    if paired.paired:
        dof += (
            "; paired: 2n rows (A maps, then B), the design over A - B at +-1/2 and one column per subject (FLAME's "
            "paired design)"
        )
    record = {
        "model": MODEL_WORDS[fit.model] + (OUTLIER_WORDS if fit.outlier_probability is not None else ""),
        "dof": dof,
        "variance_groups": [str(g) for g in fit.groups],
        "voxels_not_fitted": dict(fit.outcomes),
        "pairing": paired.record(),
        **({"permutation_statistic": PERMUTATION_STATISTIC} if permutation else {}),
    }
    return record if fit.outlier_probability is None else {**record, "outliers": outlier_record(fit)}


def outlier_record(fit: MixedFit) -> dict:
    """model.json's account of outlier inference: the settings, the prior and the ECM iterations over the fitted
    voxels, and the expected number of outlying subjects per voxel."""
    from ..core.mixed_outliers import PRIOR_MAX, SPREAD_MIN

    prior = fit.outlier_prior[fit.valid]
    iterations = fit.iterations[fit.valid]

    def summary(values) -> dict:
        return {"mean": float(values.mean()), "max": float(values.max())} if values.size else {"mean": 0, "max": 0}

    return {
        "outliers": True,
        "prior": f"estimated at every voxel by ECM (at most {PRIOR_MAX:g}; 0 when it falls below 1 / (10 n))",
        "outlier_variance": f"estimated at every voxel, at least {SPREAD_MIN:g} (robust tau2 + largest s^2)",
        "prior_over_voxels": summary(prior),
        "voxels_with_outliers": int((prior > 0).sum()),
        "mean_outliers_per_voxel": fit.mean_outliers,
        "iterations": summary(iterations.astype(float)),
        "maps": "stat-outlierprob: a volume per subject, in the order of the pairing's rows",
    }
