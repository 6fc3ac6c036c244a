"""``voxfit.SecondLevel``: group models over subjects' maps, parametric and permutation inference, written as maps.

Inputs are a list of maps (3-D NIfTI, GIFTI, CIFTI dscalar) or one 4-D file, one map per subject (or, with
``paired``, the n maps of condition A followed by the n maps of condition B, tested as A - B); or the same in
memory: a list of 3-D nibabel images, one 4-D nibabel image, or a 2-D array (subjects, voxels). Without a
mask, voxels are kept where every map is finite and non-zero (SPM's implicit mask for group data).

Maps written per contrast ``<c>`` (in the input's format): the parametric ``effect``, ``variance``, ``t``/``F``,
``p``, ``z``; ``stat-p_desc-uncorrected`` and ``desc-fdr`` (Benjamini-Hochberg) from the permutation p when
there are permutations, else from the parametric p (then also ``desc-bonferroni``); with permutations,
``desc-fwe`` (maximum statistic), ``desc-clusterfwe``, ``desc-clustermassfwe``, ``stat-tfce`` and
``stat-p_desc-tfcefwe``; every p map also as ``stat-logp`` (``-log10 p``); a cluster table
``contrast-<c>_clusters.tsv`` with a cluster threshold; the p thresholds of FDR and Bonferroni at 0.05 in
model.json.
"""

from __future__ import annotations

import contextlib
from collections import Counter
import csv
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._dask import dask_client
from .._checks import check_cluster_threshold, check_flag, check_scalar
from .._execution import Execution, cap_holding, data_bytes
from .._threads import resolve_workers
from .._memory import cap_text, reserved_bytes, size_text
from .._version import __version__
from ..core import Stats, factorize
from ..core.expr import names_in
from ..core.mixed import BAD_VARIANCE, OUTCOMES
from ..design import read_contrasts, read_ftests, read_groups, write_design
from ..design.group import ADDED_INTERCEPT, group_design, listed_lines, warn_uncentred_covariates
from ..design.subjects import pair_by_subject, subject_labels
from ..engine import fit as fit_engine
from ..engine.mixed import MixedFit, mixed_effects
from ..engine.streaming import fit_streaming
from ..exceptions import DesignWarning, InputError
from ..inference.corrections import bonferroni, fdr, fdr_threshold
from ..inference.permutation import PermutationResult, mixed_permutation_test, mixed_scheme, permutation_test
from ..io import (
    Masker,
    OutputFolder,
    check_data,
    check_mask,
    clusters_table_name,
    expand_run,
    is_image,
    load,
    open_map,
    open_reader,
    read_mesh,
    source_label,
    stat_maps,
    statmap_name,
)
from ..io.output import P_VALUE
from ..io.scans import shell_order_pair
from ..io.geometry import CiftiGeometry, SurfaceGeometry, VolumeGeometry
from ..io.masking import keep_columns
from ._routing import MEMORY, STREAM, WORKERS, Needs, choose_route
from .glm import columns_on_workers, contrast_items
from .group_mixed import (
    MODELS,
    by_columns,
    columns_of,
    read_dof_maps,
    mixed_record,
    paired_design,
    paired_inputs,
    permutation_copies,
    read_variances,
    streamed_mask,
    variance_groups,
    write_mixed_maps,
)
from .record import MIXED_DOF, ModelRecord, contrast_record, design_rows_record, input_records

__all__ = ["GroupFit", "SecondLevel"]

if TYPE_CHECKING:  # (annotations only: none of these is imported to run a group model)
    from os import PathLike

    from dask.distributed import Client
    from nibabel import Nifti1Image
    from pandas import DataFrame


@dataclass(frozen=True, eq=False)
class GroupFit:
    """Result of :meth:`SecondLevel.fit`: per contrast the parametric Stats and the permutation result.

    maps: the map of each row of `X` (with `paired`, the A map), when the maps are one per file: a design
    matched by participant ids has its rows in the table's order, not the order the maps were given in;
    ids: each row's participant id (empty unless matched by ids); mixed: the mixed- or fixed-effects fit
    (between-subject variances, outcomes per voxel; see :func:`voxfit.mixed_effects`), None for OLS.
    """

    masker: Masker
    X: np.ndarray
    names: tuple[str, ...]
    parametric: dict[str, Stats]
    permutation: dict[str, PermutationResult]
    clusters: dict[str, list[dict]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    notes: tuple[str, ...] = ()  # what the design builder did that the user should know
    maps: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    mixed: MixedFit | None = None
    rft: object | None = None  # the voxfit.inference.rft_fit.RFTInference of --inference rft

    def __post_init__(self):  # (X as the fit used it: read-only, as a Fit's arrays; it was writable, a tester's)
        X = np.asarray(self.X).view()
        X.setflags(write=False)
        object.__setattr__(self, "X", X)


@dataclass(frozen=True, eq=False)
class GroupOutputs:
    """What :meth:`SecondLevel._write` writes of a fitted group model: the `masker` of the fitted voxels, the
    `design` (a ``voxfit.design.group.GroupDesign``, rows matched to the maps), the contrast `items`
    (label, expression), per label the `parametric` Stats; the `reader` of the inputs and their `paths` (in the
    design's row order), the `command` line, the `tfce` parameters (E, H); per label the `permutation` results
    and the cluster `tables` (rows of a contrast's table of clusters), and the exchangeability `blocks` (None:
    none)."""

    masker: Masker
    design: object
    items: list[tuple[str, object]]
    parametric: dict[str, Stats]
    reader: object
    paths: list
    command: list[str] | None
    tfce: tuple[float, float]
    permutation: dict[str, PermutationResult] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    blocks: np.ndarray | None = None
    mixed: MixedFit | None = None
    pairing: dict | None = None  # model.json's record of a mixed- or fixed-effects fit (group_mixed.mixed_record)
    rft: object | None = None  # the voxfit.inference.rft_fit.RFTInference of --inference rft


@dataclass(frozen=True)
class SecondLevel:
    """Group model settings (as ``voxfit group``); :meth:`fit` does the work.

    >>> model = SecondLevel(permutations=5000, tfce=True, seed=0)                     # doctest: +SKIP
    >>> result = model.fit(["sub-01_effect.nii.gz", ...], out_dir="group")           # doctest: +SKIP

    design: None (one-sample), a participants table (TSV/CSV path or pandas DataFrame), FSL design.mat, or
    ``(X, names)``. A table's rows are matched to the maps by subject: its ``participant_id`` column (or
    `id_column`; ``sub-01`` or ``01``) against each map's ``sub-<label>`` (file name, else folder), whatever
    the order of either; a map without a row, a row without a map (unless `drop_unmatched_rows`), repeated
    ids and maps without a label are refused. Tables without ids, design.mat and arrays are matched by
    position (a note says the order used). With `paired`, A and B maps that carry labels pair by subject,
    and the table's rows match the pairs. two_sample: the table's column of two groups; covariates: the table's
    numeric columns in the model (default: every one, as covariates beside `two_sample`'s groups; ``[]``: none).
    The mapping is recorded in model.json; contrasts:
    ``{label: expression}`` or ``["label=expr"]`` (default for one-sample: ``intercept``); con/fts/grp:
    FSL VEST files (t contrasts, F tests of them, exchangeability blocks); permutations: 0 for parametric
    inference only; scheme: 'auto' (sign-flips for a one-sample design, else permutations), 'flip',
    'permute'; tfce_E/tfce_H: defaults 0.5/2 for volumes, 1/2 for surfaces; connectivity: a voxel's neighbours in a
    volume (6, 18 or 26; default 6); mesh: a GIFTI surface for the neighbours of surface data (each is refused
    with maps it does not apply to); max_memory: a cap on the whole process (see :func:`group_memory` for how it
    is split): a parametric model (no permutations, not `paired`, no cluster table) of maps over half of what
    it leaves beside the interpreter is fitted in one pass over the data, keeping per-voxel sums only; a model
    with permutations, clusters or TFCE that it cannot hold is refused before the maps are read, naming the
    size that would (None: no cap; batches of shuffles of 256 MiB);
    scheduler: a dask.distributed Client or scheduler address to run the fit and the shuffles on a cluster.
    Without permutations and `paired`, maps in a Zarr or HDF5 array, a .npy or uncompressed NIfTI (one 4-D
    file or 3-D files) are read by the workers, a block of voxels per task, for the group mask and for the
    fit: the client reads no data values (only headers and a --mask file; at any size, no one-pass streaming).
    Otherwise (permutations need the maps in memory: the permutation runner, data included, is sent to
    the workers; compressed NIfTI, GIFTI, CIFTI) the client reads the maps and sends them;
    device: ``cuda`` to run the fit and the shuffles on a GPU (CuPy or PyTorch);
    execution: a :class:`voxfit.Execution` holding the memory cap, threads, scheduler, device and progress bar
    (`max_memory`, `n_jobs`, `scheduler` and `device` are shortcuts for its fields).

    Mixed and fixed effects (FSL FLAME1 and flameo's fixed effects, AFNI 3dMEMA; see
    :func:`voxfit.mixed_effects`): variances: each subject's first-level variance map (FSL's varcope), matched
    to the effect maps by subject (``sub-<label>``; see ``voxfit.design.pair_variances``: FSL's cope/varcope
    side by side and 4-D pairs too); first_level_contrast: the inputs are first-level output folders (voxfit's
    or FSL FEAT's) and this contrast's effect and variance maps are taken from each (``voxfit.design.
    first_level_maps``, with each subject's first-level dof; ``""``: the one t contrast voxfit folders have);
    model: ``mixed`` (the default with variances),
    ``fixed`` or ``ols`` (the default without); outliers: outlier inference in the mixed model (FSL flameo
    ``--io``; see :func:`voxfit.mixed_effects`); variance_groups: the `design` table's column of variance groups
    (a between-subject variance per group; else `grp`, FSL's design.grp, when given); first_level_dof: the
    fixed-effects model's first-level dof (a number, one per map, or dof maps) when the folders do not give them;
    dof: ``residual`` (n - rank, FLAME1's; for fixed with first-level dof flameo's sum of them minus the rank),
    ``satterthwaite`` (mixed) or ``kenward-roger`` (the default for mixed with several variance groups and for
    fixed with first-level dof, else ``residual``: see :func:`voxfit.mixed_effects`). With `permutations`, mixed
    and fixed models get sign-flip inference (permutations refused: the errors are not exchangeable) on the null model's
    weighted least-squares statistic, with clusters and TFCE as for OLS (see
    :func:`voxfit.inference.permutation.mixed_permutation_test`; the maps held in memory). They run on CPUs:
    in memory, or over `max_memory` with maps the fit reads a block of voxels at a time (uncompressed NIfTI,
    .npy, Zarr, HDF5), or on a Dask `scheduler` (the workers reading such maps themselves).
    """

    design: str | PathLike | DataFrame | tuple | None = None
    contrasts: dict | list | None = None
    two_sample: str | None = None
    covariates: list | None = None
    id_column: str | None = None
    drop_unmatched_rows: bool = False
    paired: bool = False
    con: str | PathLike | None = None
    fts: str | PathLike | None = None
    grp: str | PathLike | None = None
    whole_blocks: bool = False
    mask: str | PathLike | Nifti1Image | np.ndarray | None = None
    permutations: int = 0
    seed: int | None = None
    scheme: str = "auto"
    tfce: bool = False
    tfce_E: float | None = None
    tfce_H: float | None = None
    cluster_threshold: float | None = None
    connectivity: int | None = None
    mesh: str | PathLike | None = None
    max_memory: int | str | None = None
    n_jobs: int | None = None
    scheduler: str | Client | None = None
    device: str | None = None
    execution: Execution | None = None
    variances: str | PathLike | list | None = None
    first_level_contrast: str | None = None
    model: str | None = None
    variance_groups: str | None = None
    first_level_dof: float | list | None = None
    dof: str | None = None
    outliers: bool = False
    rft: object | None = None  # voxfit.inference.rft_fit.RFTOptions: --inference rft (OLS on volumes)

    def fit(self, inputs, out_dir=None, *, force: bool = False, progress: bool | None = None, command=None) -> GroupFit:
        """Fit the group model to `inputs` (a path or list of paths, a list of 3-D nibabel images or one 4-D
        image, one map per subject, or a 2-D array (subjects, voxels)) and write the maps to `out_dir`."""
        data = check_data(inputs, "inputs")  # every argument's type checked before a file or folder is touched
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        # maps given one by one on a command line (`command`: a shell's pattern's too; an API list, sorted(glob()),
        # is the caller's order, as the rows of a design built for it)
        one_by_one = command is not None and isinstance(data, list) and all(isinstance(x, Path) for x in data)
        folders = self.first_level_contrast is not None  # (inputs are first-level folders: not expanded to maps)
        if not folders and isinstance(data, Path) and (files := expand_run(data)) is not None:  # a folder, pattern
            data = files if len(files) > 1 else files[0]  # or list: the maps one by one, each matched by its name
        check_mask(self.mask)
        for flag in ("drop_unmatched_rows", "paired", "whole_blocks", "tfce"):
            check_flag(getattr(self, flag), f"`{flag}`")
        execution = Execution.resolve(
            self.execution,
            max_memory=self.max_memory,
            n_jobs=self.n_jobs,
            scheduler=self.scheduler,
            device=self.device,
            progress=progress,
        )
        check_scalar(
            self.permutations, "`permutations`", min_val=0, description="0 (parametric only) or a positive number"
        )
        if self.tfce and not self.permutations:  # (a cluster table without permutations is parametric only)
            raise InputError("TFCE needs permutations for its p-values; give `permutations` (e.g. 5000).")
        if self.cluster_threshold is not None:  # (a negative one formed one cluster of the whole mask: a tester's)
            check_cluster_threshold(self.cluster_threshold)
        if self.cluster_threshold is not None and self.cluster_threshold < 1:  # (SPM's forming p, 0.001, given)
            warnings.warn(
                f"`cluster_threshold` {self.cluster_threshold:g} forms clusters of t (or F) above "
                f"{self.cluster_threshold:g}, not of p below it: for SPM's p < 0.001 give the statistic it "
                "corresponds to (t 3.31 to 3.93 for 40 to 12 degrees of freedom).",
                DesignWarning,
                stacklevel=2,
            )
        # options that only shape what was not asked for are said, not passed over
        if not self.tfce and (self.tfce_E is not None or self.tfce_H is not None):
            raise InputError("`tfce_E` and `tfce_H` are TFCE's exponents; add `tfce`, or drop them.")
        if self.connectivity is not None and not (self.tfce or self.cluster_threshold is not None):
            raise InputError(
                f"`connectivity` {self.connectivity} chooses the neighbours of clusters and TFCE, and neither is asked "
                "for; add `tfce` or `cluster_threshold`, or drop it."
            )
        if not self.permutations and (self.seed is not None or self.scheme != "auto"):
            option = "`seed`" if self.seed is not None else "`scheme`"
            raise InputError(f"{option} chooses the permutations' shuffles; add `permutations`, or drop it.")
        kind = self._model_kind()
        if self.grp is not None and kind != "mixed" and not self.permutations:  # (it would be read and not used)
            model = "an OLS model" if kind == "ols" else "--model fixed (no between-subject variance to group)"
            raise InputError(
                f"--grp with {model} gives the permutations' exchangeability blocks; add --permutations N, or "
                "fit variance groups with --model mixed, or drop --grp."
            )
        if self.rft is not None and self.permutations:
            raise InputError(
                "--inference rft and --permutations are two inferences on the same maps; give one of them."
            )
        if self.rft is not None and self.cluster_threshold is not None:  # (two tables of other clusters, unsaid)
            warnings.warn(
                f"--cluster-threshold {self.cluster_threshold:g} forms clusters.tsv's clusters (no p values without "
                "--permutations); RFT's cluster table forms its own at --height-threshold (by default the FWE 0.05 "
                "height): for SPM's cluster-level inference at a forming p, give --height-threshold P with "
                "--height-correction none instead.",
                DesignWarning,
                stacklevel=2,
            )
        pairs = paired_inputs(
            data, self.variances, self.first_level_contrast, self.first_level_dof, ModelRecord.read, self.paired
        )
        if self.mask is None and pairs is not None and pairs.masks:  # (FEAT folders: within their masks, said)
            model = replace(self, mask=tuple(pairs.masks))
            return model._fit_inputs(data, pairs, kind, out_dir, force, execution, command, one_by_one)
        return self._fit_inputs(data, pairs, kind, out_dir, force, execution, command, one_by_one)

    def _fit_inputs(self, data, pairs, kind, out_dir, force, execution, command, one_by_one) -> GroupFit:
        """:meth:`fit`'s work once its options are checked and the effect maps paired with any variance maps."""
        if kind != "ols":
            return self._fit_mixed(kind, pairs, out_dir, force, execution, command, one_by_one)
        if pairs is not None:  # OLS on the effect maps of the pairs
            data = list(pairs.effects) if pairs.volumes is None else pairs.effects[0]
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(OutputFolder(out_dir, force, alone=True)) if out_dir is not None else None
            reader = _open_maps(data)
            self._check_neighbours(reader.geometry)
            paths = data if isinstance(data, list) else [data]
            d, ordered, order = self._design(paths, reader.n_scans, one_by_one)  # before reading any data
            if pairs is not None:  # (what the pairing found, as a mixed model says it: unregistered FEAT folders)
                d = replace(d, notes=(*d.notes, *pairs.notes))
            if ordered != paths:  # the maps in the table's order (a design matched by ids)
                paths = data = ordered
                reader = _open_maps(data)
            # the Dask workers read the maps of a parametric model; without permutations, maps over half the cap
            # are streamed, unless clusters need them in memory; with permutations, _plan fits them to the cap
            sums_suffice = not self.permutations and not self.paired
            needs = Needs(by_columns=sums_suffice, one_pass=sums_suffice and self.cluster_threshold is None)
            route = choose_route(reader, execution, needs)
            shuffling = execution  # the shuffles' batches and threads, planned under a cap on this machine's CPU
            if execution.max_memory is not None and route.kind == MEMORY and execution.scheduler is None:
                if not execution.on_device:
                    plan = self._plan(reader, d, execution)
                    shuffling = execution.planned(n_jobs=plan.threads, batch=plan.batch)
            if route.kind == WORKERS:  # Y: a column source the Dask workers read, a block per task, twice (for
                # the mask, then for the fit, in the local fit's blocks: identical numbers)
                Y, masker = columns_on_workers(reader, self.mask, execution.scheduler, nonzero=True)
            elif route.kind == STREAM:
                if self.rft is not None:
                    raise InputError(
                        "--inference rft on a group model needs the maps in memory; raise --max-memory (the maps "
                        f"take {reader.n_scans} x {reader.geometry.n_elements} values)."
                    )
                return self._fit_streamed(data, paths, d, reader, out, execution, command)
            else:
                Y, masker = self._load(data, execution.progress)
            # one connection to the cluster for the fit and every contrast's shuffles
            if execution.scheduler is not None:
                execution = shuffling = replace(
                    execution, scheduler=stack.enter_context(dask_client(execution.scheduler))
                )
            items = self._contrast_items(d)
            blocks = (
                read_groups(self.grp, Y.shape[0])[order] if self.grp is not None else None
            )  # (as the inputs were given)
            factor = factorize(d.X, list(d.names), warn=False, max_memory=execution.max_memory)
            if factor.dof < 1:
                raise InputError(
                    f"the design ({d.X.shape[1]} columns, rank {factor.rank}) "
                    f"leaves no degrees of freedom for {Y.shape[0]} maps."
                )
            fit = fit_engine(d.X, Y, names=list(d.names), execution=execution)
            if fit.n_invalid:
                d = replace(d, notes=(*d.notes, _not_fitted(fit, Y, paths)))
            parametric = {label: fit.contrast(expr, name=label, n_jobs=execution.n_jobs) for label, expr in items}
            inferred = None
            if self.rft is not None:
                inferred = _group_rft(
                    Y,
                    factor,
                    masker,
                    parametric,
                    self.rft,
                    execution,
                    residuals="the group OLS residuals",
                    per_voxel_dof=False,
                )
            adjacency = None  # extents count voxels or vertices (no vertex areas)
            E, H = self._tfce_parameters(masker.geometry)
            if self.tfce or self.cluster_threshold is not None:
                adjacency = self._adjacency(masker)
            perms: dict[str, PermutationResult] = {}
            if self.permutations:
                for label, expr in items:
                    perms[label] = permutation_test(
                        d.X,
                        Y,
                        expr,
                        names=list(d.names),
                        name=label,
                        **self._shuffles(blocks, adjacency, (E, H), shuffling),
                    )
            tables = {}
            if self.cluster_threshold is not None:
                for label, _ in items:
                    tables[label] = self._cluster_table(masker, parametric[label], perms.get(label), adjacency)
            files: list[Path] = []
            if out is not None:
                self._write(
                    out,
                    GroupOutputs(
                        masker=masker,
                        design=d,
                        items=items,
                        parametric=parametric,
                        reader=reader,
                        paths=paths,
                        command=command,
                        tfce=(E, H),
                        permutation=perms,
                        tables=tables,
                        blocks=blocks,
                        rft=inferred,
                    ),
                )
                files = out.commit()
        return replace(self._result(d, paths, masker, parametric, perms, tables, files), rft=inferred)

    def _plan(self, reader, d, execution: Execution, copies: int = 1) -> GroupMemory:
        """How the cap splits (:func:`group_memory`): the bytes a batch of shuffles may take and the threads of
        the TFCE and cluster kernels, or an InputError naming the cap that would hold the run, decided before the
        maps are read: the voxels are those of the --mask, or at most those finite and non-zero in the first map
        (the group mask keeps those non-zero in every map)."""
        if self.mask is not None:
            from ..io import explicit_mask

            voxels = int(explicit_mask(self.mask, reader.geometry).sum())
        else:
            # (closed here, not when the collector frees it: a Ctrl-C while the read's thread is joined then
            # propagates, where a finalizer would swallow it)
            with contextlib.closing(reader.iter_scans(max_bytes=1)) as scans:
                first = np.asarray(next(scans)[1][0])
                voxels = int(np.count_nonzero(np.isfinite(first) & (first != 0)))
        items = self._contrast_items(d)
        plan = group_memory(
            execution.budgets.process,
            reader.n_scans * copies,  # (mixed effects: the variance maps and weighted residuals, see group_mixed)
            voxels,
            np.dtype(reader.dtype).itemsize,
            n_columns=d.X.shape[1],
            n_contrasts=len(items),
            permutations=int(self.permutations),
            paired=self.paired,
            maps=self.tfce or self.cluster_threshold is not None,
            connectivity=self._neighbours,
            n_elements=reader.geometry.n_elements,
            n_jobs=execution.n_jobs,
        )
        if plan.batch < plan.one_shuffle:
            parts = (
                f"{size_text(reserved_bytes())} for the interpreter, {size_text(plan.maps)} for the maps"
                + (f", {size_text(plan.residuals)} for their residuals" if plan.residuals else "")
                + f", {size_text(plan.results)} for per-voxel results"
                + (f", {size_text(plan.neighbours)} for clusters and TFCE" if plan.neighbours else "")
                + (f" and {size_text(plan.one_shuffle)} for a batch of shuffles" if self.permutations else "")
            )
            what = (
                "permutations"
                if self.permutations
                else "clusters"
                if self.cluster_threshold is not None
                else "this model"
            )
            need = plan.total
            if self.permutations:  # (the table's check, after the plan, counts the maps' float64 working copies:
                # a tester followed "give at least 342M" to be refused "would take 348 MiB" there)
                from ..inference.permutation import shuffle_table_bytes

                table = shuffle_table_bytes(int(self.permutations), reader.n_scans * copies, voxels)
                need = max(need, reserved_bytes() + table)
            raise InputError(
                f"`max_memory`={execution.max_memory!r} cannot hold {what} on {reader.n_scans} maps of up to "
                f"{voxels:,} voxels ({parts}); give at least {size_text(need)}, or fewer voxels (--mask)."
            )
        return plan

    def _design(self, paths, n_scans: int, one_by_one: bool = False):
        """The design with its rows matched to the maps (to the pairs with `paired`), the paths in the order of
        the design's rows (with `paired`: the A maps, then each one's partner among the B maps, in the same
        order), and the input position (among the maps, or the A maps) of each design row. Maps given `one_by_one`
        (not a folder, pattern or list voxfit expanded) in exactly a shell's text order, out of their numbers',
        are refused under a design matched by position: an unquoted pattern's sub-1, sub-10, .., sub-2 took
        design.mat's rows in that order, exit 0 (a tester's: t 3.99 where 10.20 in order).

        A design matched by ids is fitted in the table's order of rows, the maps taken in that order, so that
        the results do not depend on the order of the inputs, not even by rounding or by the shuffles drawn
        from a seed."""
        maps = [_map_name(p) for p in paths] if len(paths) == n_scans else None  # one map per file: names to match
        pairs = None
        if self.paired:
            if n_scans % 2:
                labels = Counter(subject_labels(maps)) if maps is not None else Counter()
                lone = sorted(k for k, c in labels.items() if k is not None and c % 2)
                which = (
                    f": sub-{', sub-'.join(lone[:5])} {'has' if len(lone) == 1 else 'have'} no partner" if lone else ""
                )
                raise InputError(
                    f"--paired needs the maps of condition A then those of B (an even number); got {n_scans}{which}."
                )
            half = n_scans // 2
            how = "by position (the maps carry no sub-<label>)"
            if maps is None:
                pairs = list(range(half))
            else:
                pairs, labels = pair_by_subject(maps)
                maps = maps[:half]
                if labels and labels[0] is not None:
                    how = "by subject (sub-<label>)"
            n_scans = half
        d = group_design(
            n_scans,
            design=self.design,
            two_sample=self.two_sample,
            maps=maps,
            id_column=self.id_column,
            drop_unmatched_rows=self.drop_unmatched_rows,
            variance_groups=self.variance_groups,
            covariates=self.covariates,
        )
        if one_by_one and d.matched_by == "position" and (pair := shell_order_pair(paths)):
            raise InputError(
                f"the maps are in the text order a shell's pattern gives ({pair[0]} comes before {pair[1]}), not "
                "their numbers', and the design's rows are matched to them by position: give them in their "
                "numbers' order (quote the pattern: voxfit orders by number), list them in a .txt file in the "
                "order of the rows, or give a table with a participant_id column."
            )
        if pairs is not None:
            note = (
                f"--paired: each of the {len(pairs)} maps of condition A (the first half) minus its partner among "
                f"those of B (the second half), paired {how}"
            )
            if how.startswith("by position") and maps is not None:  # the order is all there is: show it
                note += ":" + listed_lines(
                    [f"pair {k + 1}: {a} - {paths[half + k]}" for k, a in enumerate(maps)], "pairs"
                )
            d = replace(d, notes=(note, *d.notes))
        n = d.X.shape[0]
        order = np.arange(n)
        if d.matched_by not in (None, "position"):  # matched by ids: the table's order
            order = np.argsort(np.asarray(d.rows), kind="stable")
            d = replace(
                d,
                X=d.X[order],
                rows=tuple(d.rows[k] for k in order),
                ids=tuple(d.ids[k] for k in order),
                variance_groups=tuple(d.variance_groups[k] for k in order) if d.variance_groups else (),
            )
        if len(paths) == (2 * n if pairs is not None else n):  # one map per file: reorder the files (no data copied)
            ordered = [paths[k] for k in order]
            if pairs is not None:
                ordered += [paths[n + pairs[k]] for k in order]
            paths = ordered
        return d, list(paths), order

    def _load(self, paths, progress, difference: bool = True):
        """The maps in memory, (n, V) (A - B with `paired`, unless not `difference`), and their masker."""
        ds = load(paths, self.mask, progress=progress, name="inputs", maps=True)
        Y = maps = np.asarray(ds.data)
        masker = ds.masker
        if self.paired and difference:
            half = Y.shape[0] // 2
            Y = Y[:half] - Y[half:]
        if self.mask is None:  # voxels valid in every map: finite (already) and non-zero
            keep = np.ones(Y.shape[1], dtype=bool)
            for row in maps:  # a map at a time: no (n, V) boolean temporary
                keep &= row != 0
            if not keep.all():
                full = masker.mask.copy()
                full[masker.mask] = keep
                # the kept columns moved within Y's own buffer (Y is ours: no second copy of the maps)
                Y = keep_columns(Y, np.flatnonzero(keep))
                masker = Masker(masker.geometry, full)
            if masker.n_voxels == 0:
                raise InputError("no voxel is finite and non-zero in every input map; check the inputs or give --mask.")
        return Y, masker

    def _fit_streamed(self, data, paths, d, reader, out, execution: Execution, command) -> GroupFit:
        """Parametric group model of data larger than `max_memory`, without clusters or TFCE (the route
        allows no other): one pass keeping per-voxel sums."""
        items = self._contrast_items(d)
        streamed = fit_streaming(
            data,
            d.X,
            dict(items),
            names=list(d.names),
            mask=self.mask,
            nonzero=True,
            execution=execution,
        )
        stats, masker = streamed.contrasts, streamed.masker
        left = streamed.fit.n_invalid  # (the stream leaves a --mask's voxels NaN in some map out of its own mask)
        if self.mask is not None:
            from ..io import explicit_mask

            left += int(explicit_mask(self.mask, reader.geometry).sum()) - masker.n_voxels
        if left:  # (a fit of none is refused by the stream itself)
            d = replace(d, notes=(*d.notes, _not_fitted_note(left)))
        files: list[Path] = []
        if out is not None:
            EH = self._tfce_parameters(masker.geometry)
            self._write(
                out,
                GroupOutputs(
                    masker=masker,
                    design=d,
                    items=items,
                    parametric=stats,
                    reader=reader,
                    paths=paths,
                    command=command,
                    tfce=EH,
                ),
            )
            files = out.commit()
        return self._result(d, paths, masker, stats, {}, {}, files)

    def _result(self, d, paths, masker, parametric, perms, tables, files) -> GroupFit:
        return GroupFit(
            masker=masker,
            X=d.X,
            names=d.names,
            parametric=parametric,
            permutation=perms,
            clusters=tables,
            files=files,
            notes=d.notes,
            maps=_row_maps(d, paths, self.paired),
            ids=d.ids,
        )

    def _model_kind(self) -> str:
        """``mixed``, ``fixed`` or ``ols``: `model`, by default mixed when variance maps are given; mixed and
        fixed refused without them, and with what they cannot do yet."""
        has_variances = self.variances is not None or self.first_level_contrast is not None
        kind = self.model if self.model is not None else ("mixed" if has_variances else "ols")
        if kind not in MODELS:
            raise InputError(f"`model` must be mixed, fixed or ols; got {kind!r}.")
        if self.dof not in (None, "residual", "satterthwaite", "kenward-roger"):
            raise InputError(f"`dof` must be residual, satterthwaite or kenward-roger; got {self.dof!r}.")
        if kind != "mixed" and self.variance_groups is not None:
            raise InputError(
                "--variance-groups are the variance groups of --model mixed, and the model is "
                + (f"{kind}; drop it." if has_variances else "OLS: give each subject's variance map (--variances, or "
                   "--first-level folders) for a mixed model, or drop --variance-groups.")
            )  # fmt: skip
        if kind == "ols" and self.dof not in (None, "residual"):
            models = "mixed or fixed" if self.dof == "kenward-roger" else "mixed"
            raise InputError(f"--dof {self.dof} is for --model {models}, and the model is ols; drop it.")
        if kind == "fixed" and self.dof == "satterthwaite":
            raise InputError(
                "--dof satterthwaite is for --model mixed; --model fixed takes kenward-roger (the default with "
                "first-level dof: the weights' error taken into account) or residual (flameo's); drop it."
            )
        if self.outliers and kind != "mixed":
            raise InputError(f"--outliers is outlier inference in --model mixed; drop it with --model {kind}.")
        if self.outliers and self.dof not in (None, "residual"):  # (said in the engine's Python words)
            raise InputError(f"--outliers takes --dof residual (n - rank); drop --dof {self.dof}, or --outliers.")
        if kind != "fixed" and self.first_level_dof is not None:
            raise InputError("--first-level-dof gives the dof of --model fixed; drop it, or use --model fixed.")
        if self.variance_groups is not None and self.grp is not None:
            raise InputError("give the variance groups once: --variance-groups COLUMN or --grp FILE, not both.")
        if kind == "ols":
            return kind
        if not has_variances:
            raise InputError(
                f"--model {kind} weighs each subject by its first-level variance: give --variances (one map per "
                "subject) or --first-level FOLDERS, or use --model ols."
            )
        if self.paired and self.permutations:
            raise InputError(
                f"--paired with --permutations and --model {kind} is not available (the A and B maps of a subject "
                "are not flipped apart): give each subject's A - B effect and its variance map without --paired."
            )
        if self.cluster_threshold is not None and not self.permutations:
            raise InputError(
                f"--cluster-threshold with --model {kind} needs --permutations (its clusters are formed on the "
                "permutation statistic); give --permutations N, or drop it."
            )
        if self.permutations:
            mixed_scheme(self.scheme, kind)  # sign-flips only: the errors are not exchangeable
        return kind

    def _fit_mixed(
        self, kind: str, pairs, out_dir, force: bool, execution: Execution, command, one_by_one: bool = False
    ) -> GroupFit:
        """A mixed- or fixed-effects group model of the effect and variance maps `pairs`: the design matched
        to the effect maps (the pairs reordered with them), the effect maps loaded with the group mask, the
        variance maps read at its voxels, :func:`voxfit.mixed_effects`, the maps and model.json written."""
        if execution.on_device:
            raise InputError(f"--model {kind} runs on CPUs (this machine's, or a Dask cluster's); drop --device.")
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(OutputFolder(out_dir, force, alone=True)) if out_dir is not None else None
            # the design's rows matched to the pairs' subjects (a first-level folder's may come from its model.json),
            # before the maps' headers are read, in the design's order
            d, _, order = self._design(_subject_names(pairs), pairs.n, one_by_one)
            pairs = pairs.take_pairs(order) if self.paired else pairs.take(order)
            data = list(pairs.effects) if pairs.volumes is None else pairs.effects[0]
            paths = data if isinstance(data, list) else [data]
            reader = _open_maps(data)
            self._check_neighbours(reader.geometry)
            maps = data_bytes(reader.n_scans, reader.geometry.n_elements, reader.dtype.itemsize)
            elements = reader.geometry.n_elements  # (the mask unknown yet: every element a voxel)
            need = cap_holding(2 * maps + (_outlier_bytes(reader.n_scans, elements, elements) if self.outliers else 0))
            items = self._contrast_items(d)
            shuffling = execution  # with permutations the maps are held (the cap planned as for OLS)
            if self.permutations and execution.max_memory is not None and execution.scheduler is None:
                plan = self._plan(reader, d, execution, copies=permutation_copies(items, d.X, list(d.names)))
                shuffling = execution.planned(n_jobs=plan.threads, batch=plan.batch)
            on_workers = None
            if execution.scheduler is not None:  # the workers read the maps by columns where the files allow it
                on_workers = columns_on_workers(reader, self.mask, execution.scheduler, nonzero=True)
                execution = shuffling = replace(
                    execution, scheduler=stack.enter_context(dask_client(execution.scheduler))
                )
            on_columns = on_workers is not None and not self.permutations
            if on_columns and (columns := columns_of(reader, pairs, on_workers[1])) is not None:
                (Y, variances), masker = columns, on_workers[1]
            elif self.permutations or execution.budgets.process is None or need <= execution.budgets.process:
                Y, masker = self._load(data, execution.progress, difference=False)
                variances = read_variances(pairs, masker)
            else:  # the maps read a block of voxels at a time by the fit (compressed ones decompressed first)
                readable = stack.enter_context(by_columns(pairs, out))
                plain = open_reader(list(readable.effects) if readable.volumes is None else readable.effects[0])
                masker = streamed_mask(plain, self.mask)
                if (columns := columns_of(plain, readable, masker)) is None:
                    raise InputError(
                        f"`max_memory`={execution.max_memory!r} cannot hold the effect and variance maps of a "
                        f"{kind}-effects model in memory, and these files cannot be read a block of voxels at a "
                        f"time (GIFTI, CIFTI, or 3-D files of different types); give at least {cap_text(need)}, "
                        "maps in NIfTI, .npy, Zarr or HDF5, or fewer voxels (--mask)."
                    )
                Y, variances = columns
                dof_maps = kind == "fixed" and pairs.dof_maps is not None
                self._check_streamed_cap(execution, masker, pairs.n, len(items), dof_maps, self.outliers)
            rows = np.asarray(pairs.given_rows)  # (the .grp's rows are the maps' as given: B's too, paired by subject)
            groups = variance_groups(self.grp, d, reader.n_scans, rows, self.variance_groups, self.paired)
            n_groups = 1 if groups is None else len(set(np.asarray(groups).tolist()))
            if self.outliers and n_groups > 1:  # (the engine's own refusal said `groups` has 2)
                raise InputError(
                    f"--outliers fits one variance group, and {'--grp' if self.grp else '--variance-groups'} gives "
                    f"{n_groups}; drop one of them."
                )
            X, names, fit_items = d.X, list(d.names), items
            if self.paired:  # FLAME's paired design on the 2n maps: the design over A - B, one column per subject
                flame = paired_design(d.X, list(d.names), items, pairs.subjects[: len(order)])
                X, names, fit_items = flame.X, flame.names, flame.items
                groups = groups * 2 if groups is not None and len(groups) == len(order) else groups
            if kind == "fixed" and self.first_level_dof is None and pairs.dof_problem:
                raise InputError(f"{pairs.dof_problem}; write it again, or give --first-level-dof.")
            fl_dof = None if kind != "fixed" else self._first_level_dof(pairs, masker)
            if kind == "fixed" and fl_dof is None and self.dof == "kenward-roger":  # (the engine's Python words)
                raise InputError(
                    "--dof kenward-roger with --model fixed takes the weights' error from each subject's first-level "
                    "dof, which these maps do not give: give --first-level-dof, or --dof residual (n - rank)."
                )
            fit = mixed_effects(
                X,
                Y,
                variances,
                dict(fit_items),
                names=names,
                groups=groups,
                model=kind,
                first_level_dof=fl_dof,
                dof=self.dof,
                outliers=self.outliers,
                execution=execution,
            )
            _check_fitted(fit, masker.n_voxels)
            inferred = None
            if self.rft is not None:  # the smoothness of the effect maps about the group design; dof per voxel
                factor = factorize(X, names, warn=False)
                inferred = _group_rft(
                    Y,
                    factor,
                    masker,
                    fit.contrasts,
                    self.rft,
                    execution,
                    residuals=f"the OLS residuals of the group design on the effect maps ({kind} effects: the model's "
                    "dof vary per voxel)",
                )
            EH = self._tfce_parameters(masker.geometry)
            perms: dict[str, PermutationResult] = {}
            tables: dict[str, list[dict]] = {}
            blocks = read_groups(self.grp, reader.n_scans)[order] if self.grp is not None else None
            if self.permutations:  # sign-flips of the null model's weighted t or F (see its docstring)
                adjacency = self._adjacency(masker) if self.tfce or self.cluster_threshold is not None else None
                for label, expr in items:
                    perms[label] = mixed_permutation_test(
                        d.X,
                        Y,
                        variances,
                        expr,
                        names=list(d.names),
                        groups=groups,
                        model=kind,
                        name=label,
                        **self._shuffles(blocks, adjacency, EH, shuffling),
                    )
                    if self.cluster_threshold is not None:  # (peaks of the statistic the clusters are formed on)
                        on = replace(fit.contrasts[label], stat=perms[label].stat)
                        tables[label] = self._cluster_table(masker, on, perms[label], adjacency)
            files: list[Path] = []
            if out is not None:
                self._write(
                    out,
                    GroupOutputs(
                        masker=masker,
                        design=d,
                        items=items,
                        parametric=fit.contrasts,
                        reader=reader,
                        paths=paths,
                        command=command,
                        tfce=EH,
                        permutation=perms,
                        tables=tables,
                        blocks=blocks,
                        mixed=fit,
                        pairing=mixed_record(fit, pairs, fl_dof is not None, perms),
                        rft=inferred,
                    ),
                )
                files = out.commit()
        notes = (*d.notes, *pairs.notes, *_outcome_notes(fit))
        if self.paired:
            notes += (
                f"--paired with --model {kind}: FLAME's paired design on the {pairs.n} maps (the design over A - B "
                "at +-1/2, one column per subject), each map weighted by its own first-level variance",
            )
        if kind == "fixed" and fl_dof is None:
            notes += ("fixed effects without every subject's first-level dof: dof n - rank; give --first-level-dof",)
        result = self._result(d, paths, masker, fit.contrasts, perms, tables, files)
        return replace(result, notes=notes, mixed=fit, rft=inferred)

    def _shuffles(self, blocks, adjacency, tfce_EH, execution: Execution) -> dict:
        """This model's permutation options, as ``permutation_test`` and ``mixed_permutation_test`` take them."""
        return dict(
            n_permutations=int(self.permutations),
            scheme=self.scheme,
            blocks=blocks,
            whole_blocks=self.whole_blocks,
            seed=self.seed,
            adjacency=adjacency,
            cluster_threshold=self.cluster_threshold,
            tfce=self.tfce,
            tfce_E=tfce_EH[0],
            tfce_H=tfce_EH[1],
            execution=execution,
        )

    def _check_streamed_cap(
        self,
        execution: Execution,
        masker: Masker,
        n_maps: int,
        n_contrasts: int,
        dof_maps: bool = False,
        outliers: bool = False,
    ) -> None:
        """Refuse, naming the cap that would, a cap that cannot hold a mixed or fixed model of maps read by
        columns: the reserve for the interpreter, the per-voxel results (the fit: 2 values per design column and
        8 more, each contrast's statistics: 6 and 2 of the fit), the maps written (8 bytes per element of the grid,
        twice), the blocks of the fit (at most as many bytes as the results again), with `dof_maps` the
        first-level dof of every map at every voxel (held for the fit) and with `outliers` every map's outlier
        probability at every voxel (float64: 40 maps of 553k voxels ran 55% over a 417M cap without it)."""
        columns = n_maps // 2 + 1 if self.paired else 1  # (the subjects' columns of a paired design, at least)
        per_voxel = RESULT_VALUES + 2 * columns + n_contrasts * (CONTRAST_VALUES + 2)
        results = 8 * per_voxel * masker.n_voxels
        held = 4 * n_maps * masker.n_voxels if dof_maps else 0  # (float32: group_mixed.read_dof_maps)
        held += _outlier_bytes(n_maps, masker.n_voxels, masker.geometry.n_elements) if outliers else 0
        need = reserved_bytes() + 2 * results + held + 16 * masker.geometry.n_elements
        if need > execution.budgets.process:
            raise InputError(
                f"`max_memory`={execution.max_memory!r} cannot hold a group model of {n_maps} effect and variance "
                f"maps of {masker.n_voxels:,} voxels read a block of voxels at a time ({size_text(reserved_bytes())} "
                f"for the interpreter and {size_text(need - reserved_bytes())} for the results and the blocks); give "
                f"at least {size_text(need)}, or fewer voxels (--mask)."
            )

    @staticmethod
    def _first_level_dof(pairs, masker: Masker):
        """The fixed-effects model's first-level dof: one per row, or from dof maps each row's at each fitted voxel
        (n, V) (one per row where none varies over the voxels)."""
        if pairs.dof_maps is None:
            return None if pairs.dof is None else np.asarray(pairs.dof, dtype=float)
        dof = read_dof_maps(pairs, masker)
        if dof.size and np.all(dof == dof[:, :1]):
            return dof[:, 0].copy()
        return dof

    def _contrast_items(self, d) -> list[tuple[str, object]]:
        """The contrasts asked for (--contrast, --con and --fts) over the group design `d`, checked for what the
        design's own checks cannot say: a name of a text column of the table, which the design left out."""
        names, p = d.names, d.X.shape[1]
        items = contrast_items(self.contrasts) if self.contrasts else []
        for label, expr in items:
            text = [c for c in d.left_out if isinstance(expr, str) and c not in names and c in names_in(expr)]
            if text:
                raise InputError(
                    f"contrast {label!r} names {text[0]!r}, a text column of {d.source or 'the design table'}, "
                    f"which is no regressor (the design's columns are {', '.join(names)}); for two groups give "
                    f"--two-sample {text[0]}, or code the column as numbers."
                )
        if self.con is not None and ADDED_INTERCEPT in d.notes:  # (FSL's habit: the mean first; here it is last)
            raise InputError(
                f"--con weighs the design's columns by position, and voxfit added the last of them, the intercept "
                f"({', '.join(names)}): give the design with the intercept where the .con expects it (a column of 1s "
                "in the table, or FSL's design.mat), or the contrasts by name (--contrast 'mean=intercept')."
            )
        if self.con is not None:
            tcons = read_contrasts(self.con, p)
            items += [(label, w) for label, w in _unique_labels(tcons)]
            if self.fts is not None:
                for k, chosen in enumerate(read_ftests(self.fts, len(tcons)), 1):
                    rows = _independent_rows(np.array([tcons[i][1] for i in chosen]))
                    if rows.shape[0] == 1:  # an F of one contrast is two-sided (F = t^2), as randomise reports it
                        rows = np.vstack([rows, rows])
                    # (a .con contrast named F1, or f1: the F test is fts1, fts1_2...)
                    taken = {label.casefold() for label, _ in items}
                    name, again = f"F{k}", 1
                    while name.casefold() in taken:
                        name, again = f"fts{k}" + (f"_{again}" if again > 1 else ""), again + 1
                    items.append((name, rows))
        elif self.fts is not None:
            raise InputError("--fts selects contrasts of a --con file; give the .con file too.")
        if not items:
            if list(names) == ["intercept"]:
                return [("intercept", "intercept")]
            raise InputError(f"give contrasts (--contrast NAME=EXPR over {', '.join(names)}, or --con design.con).")
        labels = [k for k, _ in items]
        if len({label.casefold() for label in labels}) != len(labels):  # (Go and go: one file on some systems)
            raise InputError(
                f"contrast names repeat, or differ only in case ({', '.join(labels)}); give each a distinct name."
            )
        warn_uncentred_covariates(d.X, names, items)
        return items

    @property
    def _neighbours(self) -> int:
        """`connectivity`, 6 (a voxel's faces) where not given."""
        return self.connectivity or 6

    def _check_neighbours(self, geometry) -> None:
        """`mesh` (a GIFTI surface's triangles) and `connectivity` (a volume's neighbours) refused with maps they do
        not apply to, where they were passed over without a word."""
        if self.mesh is not None and isinstance(geometry, (VolumeGeometry, CiftiGeometry)):
            kind = "volumes (their neighbours: --connectivity)" if isinstance(geometry, VolumeGeometry) else "CIFTI"
            raise InputError(f"--mesh is the triangles of GIFTI surface maps, and these maps are {kind}; drop --mesh.")
        if self.connectivity is not None and isinstance(geometry, (SurfaceGeometry, CiftiGeometry)):
            raise InputError(
                "--connectivity counts a voxel's neighbours in a volume, and these maps are on a surface (their "
                "neighbours: the --mesh's edges); drop --connectivity."
            )

    def _tfce_parameters(self, geometry) -> tuple[float, float]:
        surface = isinstance(geometry, SurfaceGeometry)
        E = self.tfce_E if self.tfce_E is not None else (1.0 if surface else 0.5)
        H = self.tfce_H if self.tfce_H is not None else 2.0
        return float(E), float(H)

    def _adjacency(self, masker: Masker):
        from ..inference.graph import mesh_adjacency, volume_adjacency

        geometry = masker.geometry
        if isinstance(geometry, VolumeGeometry):
            return volume_adjacency(masker.mask, geometry.shape, self._neighbours)
        if isinstance(geometry, SurfaceGeometry):
            if self.mesh is None:
                raise InputError(
                    "clusters and TFCE on surface data need the surface's triangles: give --mesh lh.pial.surf.gii."
                )
            return mesh_adjacency(read_mesh(self.mesh, geometry.n_vertices, geometry.structure)[1], masker.mask)
        if isinstance(geometry, CiftiGeometry):
            raise InputError(
                "clusters and TFCE on CIFTI files are not supported yet; use --permutations for "
                "voxelwise (max-statistic) inference, or give the hemispheres as GIFTI with --mesh."
            )
        raise InputError("clusters and TFCE need images (NIfTI volumes or GIFTI surfaces with --mesh), not arrays.")

    def _cluster_table(self, masker, stats: Stats, perm, adjacency) -> list[dict]:
        from ..inference.clusters import label_clusters

        if perm is not None and perm.clusters is not None:
            c = perm.clusters
            labels, sizes, masses = c.labels, c.sizes, c.masses
        else:
            labels, sizes, masses = label_clusters(stats.stat, adjacency, self.cluster_threshold)
        geometry = masker.geometry
        index = masker.index
        rows = []
        for k in range(len(sizes)):
            members = np.flatnonzero(labels == k + 1)
            peak = members[np.nanargmax(stats.stat[members])]
            row = {
                "cluster": k + 1,
                "size": int(sizes[k]) if float(sizes[k]).is_integer() else float(sizes[k]),
                "mass": float(masses[k]),
                "peak_stat": float(stats.stat[peak]),
            }
            if isinstance(geometry, VolumeGeometry):
                xyz = np.array(np.unravel_index(index[peak], geometry.shape, order="F"), dtype=float)
                mm = geometry.affine[:3, :3] @ xyz + geometry.affine[:3, 3]
                row["size_mm3"] = float(sizes[k] * abs(np.linalg.det(geometry.affine[:3, :3])))
                row.update(
                    peak_x=float(mm[0]),
                    peak_y=float(mm[1]),
                    peak_z=float(mm[2]),
                    peak_i=int(xyz[0]),
                    peak_j=int(xyz[1]),
                    peak_k=int(xyz[2]),
                )
            else:
                row["peak_vertex"] = int(index[peak])
            if perm is not None and perm.clusters is not None:
                row["p_fwe_extent"] = float(perm.clusters.p_extent[k])
                row["p_fwe_mass"] = float(perm.clusters.p_mass[k])
            rows.append(row)
        return rows

    def _write(self, out, g: GroupOutputs) -> None:
        """Every map of the group model `g`, its cluster tables, ``design.tsv`` and ``model.json``, into `out`."""
        masker, d, items, parametric, perms, tables = g.masker, g.design, g.items, g.parametric, g.permutation, g.tables
        ext = masker.geometry.extension
        masker.write_mask(out.path(f"mask{ext}"))
        write_design(out.path("design.tsv"), d.X, list(d.names))

        def p_maps(label, desc, p):
            masker.write(out.path(statmap_name("p", ext, label, desc=desc)), p, [f"{label} p {desc}"], P_VALUE)
            with np.errstate(divide="ignore"):
                masker.write(
                    out.path(statmap_name("logp", ext, label, desc=desc)), -np.log10(p), [f"{label} -log10 p {desc}"]
                )

        thresholds = {}
        for label, _ in items:
            s = parametric[label]
            for fname, values, names, intent in stat_maps(s, label, ext):
                masker.write(out.path(fname), values, names, intent)
            r = perms.get(label)
            p_unc = s.p if r is None else r.p_uncorrected
            p_maps(label, "uncorrected", p_unc)
            p_maps(label, "fdr", fdr(p_unc))
            thresholds[label] = {
                "fdr_0.05": fdr_threshold(p_unc, 0.05),
                "bonferroni_0.05": 0.05 / max(1, int(np.isfinite(p_unc).sum())),
            }
            if r is None:
                p_maps(label, "bonferroni", bonferroni(s.p))
            else:
                p_maps(label, "fwe", r.p_fwe)
                fitted = np.isfinite(s.stat)  # (a voxel not fitted is NaN in every map, not TFCE 0 or p 1)
                if r.clusters is not None:
                    for desc, p in (("clusterfwe", r.clusters.p_extent), ("clustermassfwe", r.clusters.p_mass)):
                        p_maps(label, desc, np.where(fitted, r.clusters.voxel_map(p), np.nan))
                if r.tfce is not None:
                    tfce = np.where(fitted, r.tfce, np.nan)
                    masker.write(out.path(statmap_name("tfce", ext, label)), tfce, [f"{label} TFCE"])
                    p_maps(label, "tfcefwe", r.p_tfce_fwe)
            if label in tables:
                write_cluster_table(out.path(clusters_table_name(label)), tables[label])
        if g.mixed is not None:
            write_mixed_maps(out, masker, g.mixed, perms)
        footers = {}
        if g.rft is not None:
            from .glm import write_rft

            footers = write_rft(out, g.rft, masker)
        ModelRecord(
            kind="group",
            voxfit_version=__version__,
            command=g.command,
            inputs=input_records(g.reader.paths, g.reader.in_memory),  # (a store's path, not its array's)
            design={
                "columns": list(d.names),
                "n_rows": int(d.X.shape[0]),
                "notes": list(d.notes),
                "paired": self.paired,
                **design_rows_record(d, g.paths, self.paired),
            },
            contrasts={
                label: contrast_record(
                    expr,
                    parametric[label],
                    per_voxel_dof=MIXED_DOF,
                    p_thresholds=thresholds[label],
                    permutation=None
                    if label not in perms
                    else {
                        "scheme": perms[label].scheme,
                        "shuffles": perms[label].n_shuffles,
                        "exhaustive": perms[label].exhaustive,
                    },
                )
                for label, expr in items
            },
            settings={
                "permutations": self.permutations,
                "seed": self.seed,
                "scheme": self.scheme,
                "exchangeability_blocks": None if g.blocks is None else np.asarray(g.blocks).tolist(),
                "whole_blocks": self.whole_blocks,
                "tfce": self.tfce,
                "tfce_E": g.tfce[0],
                "tfce_H": g.tfce[1],
                "cluster_threshold": self.cluster_threshold,
                "connectivity": self._neighbours,
                "mesh": None if self.mesh is None else str(Path(self.mesh).resolve()),
                "model": "ols" if g.mixed is None else g.mixed.model,
                **({} if g.pairing is None else {"mixed_effects": g.pairing}),
                "mask": (
                    "automatic (finite and non-zero in every map, not the same in all)"
                    if self.mask is None
                    else source_label(self.mask)
                ),
                "p": (
                    "t contrasts one-sided (large positive t); "
                    "permutation p = #{shuffles reaching the observed} / shuffles"
                ),
            },
            n_voxels=masker.n_voxels,
            inference=None if g.rft is None else _rft_record(g.rft, footers),
            run=out.run_record(),
        ).write(out)


# float64 values per voxel held beside the maps: the fit (betas, rss and the like, 2 per column + 8), each
# contrast's statistics (6) and, with permutations, its results and the engine's working vectors (16), and the
# maps being written (the inverse of one map over the grid and its -log10 p, per element of the grid)
RESULT_VALUES = 8
CONTRAST_VALUES = 6
PERMUTATION_VALUES = 16
MAP_SCRATCH = 96  # bytes per voxel per thread of the TFCE and cluster kernels (union-find, order, extents)


@dataclass(frozen=True)
class GroupMemory:
    """How :func:`group_memory` splits a cap, in bytes (see its description of each part)."""

    maps: int
    residuals: int
    results: int
    neighbours: int
    one_shuffle: int
    batch: int
    total: int
    threads: int


def group_memory(
    cap: int,
    n_maps: int,
    n_voxels: int,
    itemsize: int,
    *,
    n_columns: int,
    n_contrasts: int,
    permutations: int,
    paired: bool,
    maps: bool,
    connectivity: int,
    n_elements: int,
    n_jobs: int | None = None,
) -> GroupMemory:
    """How a group model splits the cap `cap` (bytes) over `n_voxels` voxels of `n_maps` maps:

    - ``RESERVED`` (256 MiB) for the interpreter and the libraries;
    - ``maps``: the maps as stored, read once into one (n, V) buffer (with `paired`, also the A - B maps);
    - ``residuals``: with permutations, the nuisance model's residuals in the working dtype (as big again);
    - ``results``: per voxel, 8 bytes per value of the fit (2 per design column + 8), of each contrast (6,
      16 more with permutations) and of the maps being written (8 bytes per element of the grid);
    - ``neighbours``: with clusters or TFCE, the voxels' neighbours (4 bytes per neighbour, built from
      pairs of 8-byte indices) and the kernels' scratch (96 bytes per voxel per thread: ``threads``, up to
      `n_jobs`, as many as half of what is left holds, at least one);
    - ``batch``: the rest, for one batch of shuffles (see ``voxfit.inference.permutation.batch_size``:
      memory O(batch V)), at least ``one_shuffle``; ``total`` is the cap that holds the run with one.
    """
    rows = n_maps + (n_maps // 2 if paired else 0)
    data = rows * n_voxels * itemsize
    residuals = (n_maps // (2 if paired else 1)) * n_voxels * max(4, itemsize) if permutations else 0
    per_contrast = CONTRAST_VALUES + (PERMUTATION_VALUES if permutations else 0)
    per_voxel = RESULT_VALUES + 2 * n_columns + n_contrasts * per_contrast
    results = 8 * per_voxel * n_voxels + 8 * n_elements
    workers = resolve_workers(n_jobs)
    one = 0
    if permutations:
        one = (4 * n_voxels if maps else 0) + 4 * (n_voxels // 32 + 1) + 4 * 64 * 2048 * workers + (1 << 20)
    fixed = reserved_bytes() + data + residuals + results
    threads, neighbours = workers, 0
    if maps:  # the neighbours, and as many kernel threads (up to the workers) as half of what is left holds
        neighbours = 20 * connectivity * n_voxels
        scratch = MAP_SCRATCH * n_voxels
        threads = int(max(1, min(workers, (cap - fixed - neighbours - one) // 2 // scratch)))
        neighbours += threads * scratch
    fixed += neighbours
    return GroupMemory(data, residuals, results, neighbours, one, cap - fixed, fixed + one, threads)


def _outlier_bytes(n_maps: int, n_voxels: int, n_elements: int) -> int:
    """What --outliers holds beside the fit: each map's outlier probability at each voxel (float64), and its 4-D map
    written (the grid's values in float64, then float32)."""
    return 8 * n_maps * n_voxels + 12 * n_maps * n_elements


def _subject_names(pairs) -> list:
    """The names a design's rows are matched by: each effect map's path, under a ``sub-<label>`` folder when the
    pairing knows the subject and the path does not say it (a first-level folder's subject from its inputs)."""
    if pairs.volumes is not None:
        return [pairs.effects[0]]
    return [
        Path(f"sub-{s}") / Path(e).name if s is not None and f"sub-{s}" not in str(e) else Path(e)
        for e, s in zip(pairs.effects, pairs.subjects)
    ]


def _check_fitted(fit: MixedFit, n_voxels: int) -> None:
    """Some voxel fitted: where none is, every map would be NaN (exit 0 before), which is bad input; said with the
    reasons, and, where first-level variances that are zero, negative or missing are one, that the variance maps
    given are not variances."""
    if not n_voxels or sum(fit.outcomes.values()) < n_voxels:
        return
    why = "; ".join(f"{count:,} {reason}" for reason, count in fit.outcomes.items())
    advice = (
        "give the first-level fits' variance maps (stat-variance), not another statistic"
        if OUTCOMES[BAD_VARIANCE] in fit.outcomes
        else "check that the maps differ between subjects and hold numbers"
    )
    raise InputError(f"no voxel can be fitted ({why}); {advice}.")


def _not_fitted(fit, Y, paths) -> str:
    """The note of an OLS group fit whose voxels hold NaN or infinity in some map (left NaN), or the InputError of
    one that fits none (every map NaN, exit 0 before): where one map (a paired design's pair) holds no finite value
    in the mask, it is named."""
    if fit.n_invalid < fit.valid.size:
        return _not_fitted_note(fit.n_invalid)
    held = isinstance(Y, np.ndarray)  # (maps the Dask workers read, ColumnSource: not read here to be named)
    empty = [k for k in range(Y.shape[0]) if not np.isfinite(Y[k]).any()] if held else []
    n = Y.shape[0]
    if not empty:
        where = ""
    elif len(paths) == n:
        where = f"; {paths[empty[0]]} holds none"
    elif len(paths) == 2 * n:  # (--paired: row k is the difference of the maps k and n + k as given)
        where = f"; the pair {paths[empty[0]]} and {paths[n + empty[0]]} holds none"
    else:
        where = f"; map {empty[0] + 1} holds none"
    raise InputError(
        f"no voxel can be fitted: each of the {fit.valid.size:,} voxels is NaN or infinite in some map{where}; leave "
        "out the maps without values, or give a mask (--mask) where every map has them."
    )


def _not_fitted_note(count: int) -> str:
    return f"{count:,} voxel(s) not fitted: NaN or infinite in some map (their maps are NaN)"


def _outcome_notes(fit: MixedFit) -> tuple[str, ...]:
    """The voxels a mixed- or fixed-effects fit left NaN, and why, one note each."""
    return tuple(f"{count:,} voxel(s) not fitted (NaN in every map): {why}" for why, count in fit.outcomes.items())


def _map_name(item) -> str:
    """The name a map is matched by (its sub-<label>): its path, or the file an image was loaded from."""
    filename = item.get_filename() if is_image(item) else None
    return str(filename) if filename else source_label(item)


def _row_maps(d, paths, paired: bool) -> tuple[str, ...]:
    n = d.X.shape[0]
    return tuple(str(p) for p in paths[:n]) if len(paths) == (2 * n if paired else n) else ()


def _independent_rows(rows: np.ndarray) -> np.ndarray:
    """An F test's contrasts less those the ones before them span, as FSL reduces an F to its rank: A > B, B > A
    and the mean of two EVs are an F of 2 rows (refused as 3 rows of a 2-column design, naming --contrast)."""
    kept: list[np.ndarray] = []
    for row in rows:
        if np.linalg.matrix_rank(np.array([*kept, row])) > len(kept):
            kept.append(row)
    return np.array(kept)


def _unique_labels(tcons):
    """FSL's contrast names are free text: their labels keep letters and digits, numbered where two would be
    one (``a>b`` and ``a<b``: ``ab`` and ``ab2``; ``Go`` and ``go``, one file on macOS's and Windows' file systems:
    ``Go`` and ``go2``), and a changed name is said."""
    from ..io import sanitize_label

    kept = {
        str(label).strip().casefold() for label, _ in tcons if sanitize_label(label, "contrast") == str(label).strip()
    }
    out = []
    for label, w in tcons:
        new = base = sanitize_label(label, "contrast")
        k = 2
        while new.casefold() in {used.casefold() for used, _ in out} or (
            new != str(label).strip() and new.casefold() in kept
        ):
            new, k = f"{base}{k}", k + 1  # (a name the file gives a contrast as it is stays that contrast's)
        if new != str(label).strip():
            why = (
                "maps keep letters and digits: contrast-<label>_..."
                if base != str(label).strip()
                else "another of its contrasts is named so, in this case or another, and macOS's and Windows' file "
                "systems take contrast-Go_... and contrast-go_... for one file"
            )
            warnings.warn(f"contrast {str(label).strip()!r} of the .con file is named {new!r} ({why}).", stacklevel=3)
        out.append((new, w))
    return out


def write_cluster_table(path, rows: list[dict]) -> None:
    columns = [
        "cluster",
        "size",
        "size_mm3",
        "mass",
        "peak_stat",
        "peak_x",
        "peak_y",
        "peak_z",
        "peak_i",
        "peak_j",
        "peak_k",
        "peak_vertex",
        "p_fwe_extent",
        "p_fwe_mass",
    ]
    present = [c for c in columns if any(c in r for r in rows)] or ["cluster", "size", "mass", "peak_stat"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(present)
        for r in rows:
            w.writerow(["n/a" if c not in r else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in present])


def _rft_record(inferred, footers: dict) -> dict:
    from .glm import rft_record

    return rft_record(inferred, footers)


def _group_rft(
    Y,
    factor,
    masker: Masker,
    parametric: dict,
    options,
    execution: Execution,
    *,
    residuals: str,
    per_voxel_dof: bool = True,
):
    """``--inference rft`` on a group model: the smoothness of the residuals of the maps `Y` about the group
    design (`factor`; their NeighbourSums, from the maps as read); OLS: t and F fields with the model's dof
    (`per_voxel_dof` False); mixed and fixed effects: fields of each contrast's median dof
    (:func:`voxfit.inference.rft_fit.median_dof_field`)."""
    from ..engine.smoothness import neighbour_sums
    from ..inference.rft_fit import check_volume, rft_inference

    check_volume(masker.geometry)
    mask = masker.mask.reshape(masker.geometry.shape, order="F")
    sums = neighbour_sums(Y, factor.basis, mask, n_jobs=execution.n_jobs, scheduler=execution.scheduler)
    return rft_inference(
        parametric,
        masker,
        sums,
        options,
        n=float(Y.shape[0]),
        dof=float(factor.dof),
        residuals=residuals,
        per_voxel_dof=per_voxel_dof,
    )


def _open_maps(data):
    """The reader of a group's maps (:func:`voxfit.io.open_reader`), where several files are one map each, as
    several NIfTI files must be 3-D: a GIFTI or CIFTI file of several maps among them would add rows of its own (a
    subject counted twice: n and the dof inflated)."""
    one = data[0] if isinstance(data, list) and len(data) == 1 else data
    if isinstance(one, (str, Path)) and Path(one).is_file() and open_map(one).n_scans < 2:  # (headers only)
        raise InputError(
            f"{one} holds one map; a group model takes several maps, one per subject: give each subject's map, or "
            "one file of all the maps."
        )
    reader = open_reader(data, "inputs")
    if isinstance(data, list) and len(data) > 1 and reader.n_scans != len(data):
        for path in data:
            n = open_map(path).n_scans  # (headers only)
            if n != 1:
                raise InputError(
                    f"{path} holds {n} maps; a group model takes one map per subject: one file each, or one file of "
                    "all the maps."
                )
    return reader
