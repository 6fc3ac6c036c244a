"""Several runs: one design per run, one fit per run, t and F contrasts combined across runs by fixed effects."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._array import type_name
from .._execution import Execution, cap_holding, data_bytes
from .._memory import cap_text, size_text
from .._version import __version__
from ..core import Stats, check_contrast, factorize
from ..core.contrast import f_stats, t_stats
from ..design.kinds import column_kinds
from ..exceptions import InputError
from ..io import (
    Masker,
    OutputFolder,
    ScaledArray,
    check_data,
    check_mask,
    load,
    open_reader,
    resolve_mask_threshold,
    source_label,
    stat_maps,
    statmap_name,
)
from ..io.scans import file_identity
from ._routing import noise_order
from .glm import (
    check_mesh,
    contrast_items,
    design_matrix,
    design_tr,
    fit_maps,
    fit_noise_model,
    mean_over_scans,
    rft_record,
    rft_residuals,
    scale_data,
    warn_high_order,
    warn_without_constant,
    write_design_files,
    write_maps,
    write_rft,
)
from .record import RUNS_DOF, ModelRecord, contrast_record, design_record, input_records, mask_record

__all__ = ["RunsFit", "fit_runs", "fixed_effects"]


@dataclass(frozen=True, eq=False)
class RunsFit:
    """Per-run statistics and their fixed-effects combination, on the voxels common to every run."""

    masker: Masker
    runs: list[dict[str, Stats]]
    combined: dict[str, Stats]
    files: list[Path] = field(default_factory=list)
    rft: object | None = None  # with `rft`: the combined contrasts' voxfit.inference.rft_fit.RFTInference


def fixed_effects(label: str, per_run: list[Stats], workers: int | None = None) -> Stats:
    """Combine one contrast's per-run statistics by fixed effects, voxel by voxel.

    t contrasts: the precision-weighted effect (as FSL and nilearn weight the runs), its variance
    ``(1 + 4 sum_r f_r (1 - f_r) / nu_r) / P`` with ``P = sum_r 1 / variance_r`` and the runs' shares
    ``f_r = 1 / (variance_r P)``, on ``1 / sum_r f_r^2 / nu_r`` dof (nu_r: each run's, voxel by voxel where they
    are per voxel, as for AR models). The weights are estimates: ``1 / P`` alone (FSL's and nilearn's variance,
    with the runs' dof summed) was liberal on short runs (4 runs of 60 scans of null data: 0.055 at p < 0.05 and
    0.012 at p < 0.01 where the exact model of the runs concatenated gives 0.050 and 0.010); Meier's (1953)
    first-order term for the weights' error and their effective (Satterthwaite) dof give 0.050 and 0.010 there,
    and with runs of unequal noise (SD 1, 3, 5) 0.050 and 0.010 where the sum gave 0.052 and 0.012. Equal shares
    give the summed dof. F contrasts: the multivariate analogue with each run's covariance matrix ``C_r`` of the
    effect rows: ``P = sum C_r^-1``, effect ``P^-1 sum C_r^-1 e_r``, ``F = e' P e / rank``, with the same terms
    of each run's share ``tr(P^-1 C_r^-1) / rank`` (for an F of one independent row, the t's square). z of t on
    up to `workers` threads (None: every CPU).
    """
    weights = per_run[0].weights
    if per_run[0].kind == "t":
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.sum([1.0 / s.variance for s in per_run], axis=0)
            effect = np.sum([s.effect / s.variance for s in per_run], axis=0) / precision
            share = [1.0 / (s.variance * precision) for s in per_run]
            inflation, dof = _estimated_weights(share, [s.dof for s in per_run])
            variance = inflation / precision
        bad = ~(np.isfinite(effect) & (variance > 0) & np.isfinite(variance))
        effect[bad], variance[bad] = np.nan, np.nan
        return t_stats(label, weights, effect, variance, ~bad, dof, workers=workers)
    V, q = per_run[0].effect.shape[1], per_run[0].effect.shape[0]
    ok = np.logical_and.reduce(
        [
            np.isfinite(s.covariance).all(axis=(1, 2))
            & np.isfinite(s.effect).all(axis=0)
            & (np.einsum("vqq->v", s.covariance) > 0)
            for s in per_run
        ]
    )
    precision = np.zeros((int(ok.sum()), q, q))
    weighted = np.zeros((int(ok.sum()), q))
    inverses = []
    for s in per_run:
        inverses.append(np.linalg.pinv(s.covariance[ok], hermitian=True))
        precision += inverses[-1]
        weighted += np.einsum("vqr,rv->vq", inverses[-1], s.effect[:, ok])
    combined = np.linalg.pinv(precision, hermitian=True)
    # (the t's correction with each run's share of the precision averaged over the hypothesis' rank: exact for
    # an F of one independent row, which stays its t's square)
    rank = np.maximum(np.rint(np.einsum("vab,vba->v", combined, precision)), 1.0)
    share = [np.einsum("vab,vba->v", combined, inv) / rank for inv in inverses]
    inflation, kept_dof = _estimated_weights(share, [np.broadcast_to(s.dof[1], (V,))[ok] for s in per_run])
    covariance = np.full((V, q, q), np.nan)
    covariance[ok] = combined * inflation[:, None, None]
    effect = np.full((q, V), np.nan)
    effect[:, ok] = np.einsum("vqr,vr->qv", combined, weighted)
    dof = np.full(V, np.nan)
    dof[ok] = kept_dof
    return f_stats(label, weights, effect, covariance, ok, dof)


def _estimated_weights(shares: list, nus: list) -> tuple[NDArray, NDArray]:
    """For runs weighted by their estimated precision, each run's `shares` of it and dof `nus` (per voxel): the
    factor of the combination's variance, Meier's (1953) first-order term for the weights' error
    ``1 + 4 sum_r f_r (1 - f_r) / nu_r``, and the weights' effective (Satterthwaite) dof ``1 / sum_r f_r^2 / nu_r``."""
    inflation = 1.0 + 4.0 * np.sum([f * (1.0 - f) / nu for f, nu in zip(shares, nus)], axis=0)
    return inflation, 1.0 / np.sum([f * f / nu for f, nu in zip(shares, nus)], axis=0)


def _subset(data, columns: np.ndarray):
    if isinstance(data, ScaledArray):
        return ScaledArray(data.raw[:, columns], data.slope, data.inter)
    return data[:, columns]


def fit_runs(
    inputs,
    designs,
    contrasts,
    *,
    mask=None,
    mask_threshold="auto",
    out_dir=None,
    force=False,
    noise="ols",
    scaling="none",
    nuisance=None,
    command=None,
    execution: Execution | None = None,
    max_memory=None,
    n_jobs=None,
    scheduler=None,
    device=None,
    progress=None,
    mesh=None,
    rft=None,
    record_settings: dict | None = None,
) -> RunsFit:
    """Fit each run with its own design and combine the contrasts across runs by fixed effects.

    `inputs` and `designs` are lists of the same length (one run and one design per run; each run a path (a
    4-D file, or a folder, pattern or .txt list of 3-D scans), a 4-D nibabel image, a list of 3-D nibabel
    images or a 2-D array, and each design as accepted by :func:`voxfit.fit_images`). Runs share one mask (a
    path, nibabel image or boolean array): the given one, or the voxels inside every run's automatic mask (see
    `mask_threshold` in :func:`voxfit.load`: by default SPM's 0.8 for volumes). Each contrast is evaluated on
    each run's design, so the columns it names must exist in every run. `execution` (or its shortcuts
    `max_memory`, `n_jobs`, `scheduler`, `device`, `progress`) as in :func:`voxfit.fit_images`; the runs are
    held in memory together, so a cap that cannot hold them is refused before any is read. `mesh`: the GIFTI
    surface of surface runs, for ``noise="film"`` (as in :func:`voxfit.fit_images`). `rft`
    (``voxfit.inference.rft_fit.RFTOptions``): random field theory on the combined contrasts of volume runs, as
    SPM's for a model of several sessions: the smoothness from every run's residuals together (their neighbour
    sums added: the residuals of the runs' block-diagonal model, on the runs' dof summed), each combined
    contrast a T or F field of its median dof (the combination's dof vary by voxel:
    :func:`voxfit.inference.rft_fit.median_dof_field`); each run needs
    :data:`voxfit.inference.rft_fit.FIXED_EFFECTS_DOF` residual dof, and each of its contrasts as many effective
    dof (the median over the voxels of an AR(p) model's), checked after its fit (fixed effects of runs with fewer
    was liberal in the far tail).
    `record_settings`: more of model.json's settings (the command line's: the noise model's choice and why, a
    preset, a confounds strategy). A design file's repetition time is its sidecar's, as for one run.
    """
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, scheduler=scheduler, device=device, progress=progress
    )
    for what, value in (("inputs", inputs), ("designs", designs)):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"`{what}` must be a list with one entry per run; got {type_name(value)}.")
    inputs = [check_data(run, f"inputs[{r}]") for r, run in enumerate(inputs)]
    check_mask(mask)
    if len(inputs) != len(designs) or len(inputs) < 2:
        raise InputError(f"give one design (or events file) per run: {len(inputs)} runs, {len(designs)} designs.")
    order = noise_order(noise)
    if scaling not in ("none", "mean", "global"):
        raise InputError(f"`scaling` must be none, mean or global; got {scaling!r}.")
    # the runs' headers, where a check needs them before any run is read (RFT's volumes, the memory cap)
    checked = rft is not None or execution.max_memory is not None
    readers = [open_reader(run, f"inputs[{r}]") for r, run in enumerate(inputs)] if checked else []
    if rft is not None:  # (volumes only)
        from ..inference.rft_fit import check_volume

        for reader in readers:
            check_volume(reader.geometry)
    items = contrast_items(contrasts)
    matrices = [design_matrix(d, f"designs[{r}]") for r, d in enumerate(designs)]
    named = [x for x in inputs if isinstance(x, (str, os.PathLike))]
    keys = [file_identity(x) for x in named]
    counts = Counter(keys)
    twice = [x for x, k in zip(named, keys) if counts[k] > 1]
    if twice:
        raise InputError(f"{twice[0]} is given as two runs; each run is fitted once.")
    kinds = [column_kinds(d, names, X, nuisance) for d, (X, names) in zip(designs, matrices)]
    factors = [factorize(X, names, warn=False, max_memory=execution.max_memory) for X, names in matrices]
    if rft is not None:
        from ..inference.rft_fit import FIXED_EFFECTS_DOF, few_dof
    for r, factor in enumerate(factors, 1):
        warn_without_constant(factor, designs[r - 1], f"run {r}: ")
        warn_high_order(order, factor, f"run {r}: ")
        if rft is not None and factor.dof < FIXED_EFFECTS_DOF:  # (before any run is read; per-voxel dof after each fit)
            raise InputError(_few_dof_of_runs(r, f"{factor.dof:g} residual dof", order))
        for label, expr in items:
            try:
                check_contrast(expr, factor, label)  # before any data are read
            except InputError as exc:
                raise InputError(f"run {r}: {exc}") from None
    if execution.max_memory is not None:  # every run is held in memory at once (no streaming across runs): refuse
        # a cap that cannot hold them by the rule that streams one run (Budgets.streams)
        total = sum(data_bytes(rd.n_scans, rd.geometry.n_elements, rd.dtype.itemsize) for rd in readers)
        need = cap_holding(total)
        if execution.budgets.over_half(total):
            raise InputError(
                f"`max_memory`={execution.max_memory!r} cannot hold {len(inputs)} runs fitted together "
                f"({size_text(total)} of data, in memory at once); give at least {cap_text(need)}, or "
                "fit the runs one at a time (each can stream)."
            )
    with OutputFolder(out_dir, force, alone=True) if out_dir is not None else contextlib.nullcontext() as out:
        datasets = [
            load(
                path,
                mask,
                mask_threshold=mask_threshold,
                n_scans=X.shape[0],
                scan_globals=scaling == "global",
                name=f"inputs[{r}]",
                progress=execution.progress,
            )
            for r, (path, (X, _)) in enumerate(zip(inputs, matrices))
        ]
        geometry = datasets[0].masker.geometry
        check_mesh(mesh, geometry)
        for r, ds in enumerate(datasets[1:], 2):
            geometry.check_same(ds.masker.geometry, f"run {r} ({ds.paths[0] if ds.paths else 'in memory'})")
        common = np.logical_and.reduce([ds.masker.mask for ds in datasets])
        if not common.any():
            raise InputError("no voxel is inside the mask of every run.")
        masker = Masker(geometry, common)
        runs, fits, sums, neighbours = [], [], 0.0, []
        for r, (ds, (X, names)) in enumerate(zip(datasets, matrices), 1):
            columns = np.flatnonzero(common[ds.masker.mask])
            data = _subset(ds.data, columns)
            if out is not None:  # for the mean image over every run's scans
                sums = sums + mean_over_scans(data) * ds.n_scans
            data = data if scaling == "none" else scale_data(data, scaling, ds.globals)
            try:
                noise_fit = fit_noise_model(
                    X,
                    data,
                    names,
                    items,
                    noise,
                    execution,
                    kinds[r - 1],
                    masker,
                    design_tr(designs[r - 1]),  # (a design file's from its sidecar, as one run's)
                    mesh,
                )
            except InputError as exc:
                raise InputError(f"run {r}: {exc}") from None
            if out is not None:  # (written as each run is fitted: its betas are not kept for the others' fits)
                write_maps(out, masker, fit_maps(noise_fit, geometry.extension, f"run-{r}_"), execution.n_jobs)
                tr = design_tr(designs[r - 1])
                write_design_files(out, f"run-{r}_", X, names, kinds[r - 1], tr, noise_fit.fit.design.X)
            if rft is not None:
                if few := few_dof(noise_fit.contrasts):
                    raise InputError(
                        _few_dof_of_runs(r, f"a median of {few[1]:.1f} dof for contrast {few[0]!r}", order)
                    )
                neighbours.append(_residual_sums(factors[r - 1], order, data, noise_fit, masker, execution))
            runs.append(noise_fit.contrasts)
            fits.append({"rank": noise_fit.fit.rank, "dof": noise_fit.fit.dof, "noise_details": noise_fit.info})
        combined = {label: fixed_effects(label, [run[label] for run in runs], execution.n_jobs) for label, _ in items}
        inferred = None if rft is None else _rft_inference(combined, masker, neighbours, rft, order, factors, fits)
        files: list[Path] = []
        if out is not None:
            ext = geometry.extension
            threshold = resolve_mask_threshold(mask_threshold, geometry, explicit=mask is not None)
            masker.write_mask(out.path(f"mask{ext}"))
            maps = [(statmap_name("mean", ext), sums / sum(ds.n_scans for ds in datasets), ["mean"])]
            maps += [item for label, stats in combined.items() for item in stat_maps(stats, label, ext)]
            write_maps(out, masker, maps, execution.n_jobs)
            tables = {} if inferred is None else write_rft(out, inferred, masker)
            inputs = [input_records(ds.paths, ds.memory) for ds in datasets]
            _check_runs_apart(datasets, inputs)
            ModelRecord(
                kind="runs",
                voxfit_version=__version__,
                command=command,
                runs=[
                    {
                        "inputs": held,
                        "columns": list(names),
                        "n_scans": int(X.shape[0]),
                        **design_record(design, kind),
                        **fitted,
                    }
                    for held, (X, names), design, kind, fitted in zip(inputs, matrices, designs, kinds, fits)
                ],
                contrasts={
                    label: contrast_record(expr, combined[label], weights=False, per_voxel_dof=RUNS_DOF)
                    for label, expr in items
                },
                settings={
                    "noise_model": noise,
                    "scaling": scaling,
                    "mask_threshold": threshold,
                    "mask": "automatic (every run)" if mask is None else source_label(mask),
                    **(record_settings or {}),  # (the command line's: the noise model's choice, a preset, ...)
                },
                mask=mask_record(mask, threshold, masker.n_voxels, geometry.n_elements),
                n_voxels=masker.n_voxels,
                inference=None if inferred is None else rft_record(inferred, tables),
                run=out.run_record(),
            ).write(out)
            files = out.commit()
    return RunsFit(masker=masker, runs=runs, combined=combined, files=files, rft=inferred)


def _check_runs_apart(datasets, inputs: list[list[dict]]) -> None:
    """Refuse runs whose files hold the same bytes (their BLAKE3 digests, taken for the record): one run given twice
    under two names (a copy) was combined with itself, its dof doubled, without a word; the same file twice (a link,
    ./) is refused before the fit (``file_identity``)."""
    names = [str(ds.paths[0]) if ds.paths else f"run {k + 1}" for k, ds in enumerate(datasets)]
    seen: dict[tuple, int] = {}
    for k, records in enumerate(inputs):
        if not records or any(r.get("blake3") is None for r in records):
            continue
        digests = tuple(sorted(r["blake3"] for r in records))
        if digests in seen:
            first = seen[digests]
            raise InputError(
                f"runs {first + 1} ({names[first]}) and {k + 1} ({names[k]}) hold the same data (identical BLAKE3 "
                "digests): one run given twice under two names? give each run once."
            )
        seen[digests] = k


def _few_dof_of_runs(r: int, has: str, order: int) -> str:
    """Why RFT on several runs is refused where run `r` `has` fewer dof than fixed effects needs, and what to do."""
    from ..inference.rft_fit import FIXED_EFFECTS_DOF

    way = (
        "fit the runs as one model (their scans in one file, the designs block-diagonal: SPM's model of sessions, a T "
        "field)"
        if order <= 0
        else "fit them with --noise ar1-global (SPM's: T fields) or a lower AR order"
    )
    return (
        "--inference rft on several runs combines each contrast by fixed effects, which was liberal in the far tail "
        "on runs of few dof (FWE 0.061 at 0.05 on smooth null data with two runs of 16 and 20 scans, 0.068 with "
        f"AR(4) on runs of 150); run {r} has {has}, fewer than {FIXED_EFFECTS_DOF}: {way}, or use longer runs."
    )


def _residual_sums(factor, order: int, data, noise_fit, masker, execution: Execution):
    """One run's residuals' neighbour sums (``voxfit.engine.smoothness``), as one run's fit takes them: OLS and
    ar1-global their own residuals (ar1-global's whitened), AR(p) per voxel the OLS residuals of the design."""
    from ..engine.smoothness import neighbour_sums

    basis = factor.basis if order >= 0 else noise_fit.fit.design.basis
    mask = masker.mask.reshape(masker.geometry.shape, order="F")
    return neighbour_sums(data, basis, mask, whitening=noise_fit.whitening, n_jobs=execution.n_jobs)


def _rft_inference(combined: dict, masker, neighbours: list, options, order: int, factors: list, fits: list):
    """RFT on the combined contrasts: the runs' neighbour sums added (SPM's smoothness of a model of several
    sessions: the residuals of every scan, on the sum of the runs' dof: each run's residual dof, AR(p) per voxel
    that of its OLS fit) and each contrast a field of its median dof."""
    from ..inference.rft_fit import rft_inference

    dof = sum(float(fit["dof"]) if order <= 0 else float(factor.dof) for fit, factor in zip(fits, factors))
    return rft_inference(
        combined,
        masker,
        sum(neighbours[1:], neighbours[0]),
        options,
        n=sum(factor.n_scans for factor in factors),
        dof=dof,
        residuals=rft_residuals(order, every_run=True),
        per_voxel_dof=True,
    )
