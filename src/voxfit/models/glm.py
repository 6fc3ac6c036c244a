"""One design fitted to image files, with maps written back in the input's format (``voxfit fit``)."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._array import is_dataframe, type_name, working_dtype
from .._checks import check_flag, repeated
from .._dask import dask_client, run_tasks
from .._execution import Execution
from .._threads import GRACE_S, DaemonExecutor, even_spans, resolve_workers, run_in_threads
from .._version import __version__
from ..core import Fit, Stats, as_design_matrix, check_contrast, factorize, t_to_z
from ..design import read_design, write_design
from ..design.kinds import column_kinds, sidecar_tr, write_sidecar
from ..engine import fit_ar, fit_global_ar
from ..engine import fit as fit_engine
from ..engine.fit import GridFit, ReadFit
from ..engine.smoothness import GridProducts, neighbour_sums, warm_kernels
from ..engine.streaming import ReadARFit, fit_streaming, read_voxels
from ..exceptions import DegreesOfFreedomWarning, DesignWarning, InputError
from ..io import (
    ColumnSource,
    Dataset,
    Masker,
    OutputFolder,
    check_data,
    check_design_rows,
    check_mask,
    explicit_mask,
    global_sums_block,
    load,
    mask_block,
    open_reader,
    resolve_mask_threshold,
    sanitize_label,
    stat_maps,
    statmap_name,
)
from ..io.output import P_VALUE
from ._routing import (
    COLUMNS,
    MEMORY,
    STREAM,
    WORKERS,
    Route,
    choose_route,
    first_level_needs,
    long_lags,
    noise_order,
    read_fits,
    read_gathers_sums,
)
from .record import (
    ModelRecord,
    contrast_record,
    design_record,
    input_records,
    mask_record,
    start_input_records,
)

__all__ = ["ImageFit", "design_matrix", "fit_images", "input_records", "parse_contrast_option"]


@dataclass(frozen=True, eq=False)
class ImageFit:
    """The result of :func:`fit_images`: the fit, the masker, each contrast's statistics, the files written."""

    fit: Fit
    masker: Masker
    contrasts: dict[str, Stats]
    files: list[Path] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    diagnostics: object | None = None  # voxfit.engine.diagnostics.ResidualDiagnostics (with diagnostics=True)
    noise_details: dict = field(default_factory=dict)  # the noise model's, as model.json's settings.noise_details


def contrast_label(name, expr=None) -> str:
    """A contrast's name as given when it is a label (letters and digits, as BIDS labels: the maps are named
    ``contrast-<label>_...``); any other name is refused with the label it could be, never changed silently."""
    text = str(name).strip()
    label = sanitize_label(text)
    if label != text:
        example = f' (--contrast "{label}={expr}")' if isinstance(expr, str) else ""
        raise InputError(
            f"contrast name {text!r} is not a label: maps are named contrast-<label>_..., letters and "
            f"digits only; name it {label!r}{example}."
        )
    return label


def parse_contrast_option(text: str) -> tuple[str, str]:
    """``"NAME=EXPR"`` -> (label, expression), NAME a label (see :func:`contrast_label`); without ``=``, the
    label is the expression's letters and digits, said in a warning when it differs from the expression."""
    name, sep, expr = text.partition("=")
    if not sep:
        label = sanitize_label(text)
        if label != text.strip():
            warnings.warn(
                f"contrast {text.strip()!r} has no name, so its maps are named contrast-{label}_...; give "
                f'NAME=EXPR to name it (e.g. "{label}={text.strip()}").',
                stacklevel=2,
            )
        return label, text.strip()
    if not expr.strip():
        raise InputError(f"contrast {text!r} has no expression after '='; write NAME=EXPR, e.g. task=A - B.")
    return contrast_label(name, expr.strip()), expr.strip()


def contrast_items(contrasts) -> list[tuple[str, object]]:
    """``[(label, expression or weights)]`` from a dict, ``["NAME=EXPR", ...]`` or one ``"NAME=EXPR"`` (a string
    was taken a character at a time: "ab" fitted contrasts a and b); labels unique."""
    if isinstance(contrasts, str):
        contrasts = [contrasts]
    unnamed: set[int] = set()
    if isinstance(contrasts, dict):
        items = [(contrast_label(k, v), v) for k, v in contrasts.items()]
    elif isinstance(contrasts, (list, tuple)):
        items = [parse_contrast_option(c) for c in contrasts]
        unnamed = {i for i, c in enumerate(contrasts) if isinstance(c, str) and "=" not in c}
    else:
        raise InputError(
            f'`contrasts` must be a dict {{name: expression}} or a list of "NAME=EXPR"; got {type(contrasts).__name__}.'
        )
    dup = repeated(k for k, _ in items)
    if dup:
        made = [e for i, (k, e) in enumerate(items) if k == dup[0] and i in unnamed]
        if made:  # (a name made from an unnamed expression: "A - B" and "A + B" are both AB)
            said = " and ".join(map(repr, made))
            said = f"contrasts {said} have no names" if len(made) > 1 else f"contrast {said} has no name"
            raise InputError(
                f"{said}, and the name made of the letters and digits, {dup[0]!r}, is another contrast's too; name "
                f'it: --contrast "{dup[0]}1={made[0]}".'
            )
        raise InputError(f"contrast names must be unique; {', '.join(dup)} repeat.")
    cased = repeated(k.casefold() for k, _ in items)
    if cased:  # (contrast-Go_... and contrast-go_...: one file where case is ignored, the later over the earlier)
        said = " and ".join(k for k, _ in items if k.casefold() == cased[0])
        raise InputError(
            f"contrast names {said} differ only in case: their maps would be one file on a file system that ignores "
            "case (macOS's, Windows'), each over the other; rename one."
        )
    return items


def _column_labels(names) -> list[str]:
    """Letters-and-digits labels, made unique whatever their case (``a``, ``a_`` and ``a1`` give a, a2, a1; ``A``
    and ``a``, A2 and a3: their maps one file where case is ignored)... never a clash."""
    labels = [sanitize_label(n, "design column") for n in names]
    unique = {key for key, count in Counter(lab.casefold() for lab in labels).items() if count == 1}
    taken = set(unique)
    out = []
    for lab in labels:
        if lab.casefold() in unique:
            out.append(lab)
            continue
        k = 2
        while f"{lab}{k}".casefold() in taken:
            k += 1
        out.append(f"{lab}{k}")
        taken.add(f"{lab}{k}".casefold())
    return out


DESIGN_ACCEPTED = (
    "a path to a design TSV/CSV or FSL design.mat, a pandas DataFrame (columns = names), a 2-D numpy "
    "array, a voxfit Design or an (array, names) pair"
)


def design_matrix(design, name: str = "design"):
    """(X, names) from a path, a voxfit Design, a DataFrame, an array, or an (X, names) pair; anything else is
    an InputError naming `name` and the type received."""
    if isinstance(design, (str, os.PathLike)):
        return read_design(design)
    if hasattr(design, "X") and hasattr(design, "names"):
        return as_design_matrix(design.X, design.names)
    if isinstance(design, tuple) and len(design) == 2:
        return as_design_matrix(*design)
    if isinstance(design, (np.ndarray, list)) or is_dataframe(design):  # (a list of rows, as voxfit.fit takes)
        return as_design_matrix(design)
    raise InputError(f"`{name}` must be {DESIGN_ACCEPTED}; got {type_name(design)}.")


def fit_images(
    inputs,
    design,
    contrasts,
    *,
    mask=None,
    mask_threshold: float | str | None = "auto",
    out_dir=None,
    force: bool = False,
    command: list[str] | None = None,
    dataset=None,
    noise: str = "ols",
    scaling: str = "none",
    nuisance=None,
    streaming: bool | None = None,
    route: Route | None = None,
    execution: Execution | None = None,
    max_memory=None,
    n_jobs: int | None = None,
    scheduler=None,
    device: str | None = None,
    progress: bool | None = None,
    record_settings: dict | None = None,
    rft=None,
    diagnostics: bool = False,
    mesh=None,
) -> ImageFit:
    """Fit a design to image files and (with `out_dir`) write every map in the input's format.

    Parameters
    ----------
    inputs : path, list of paths, nibabel image, list of 3-D nibabel images, or 2-D numpy array
        The data (see :func:`voxfit.load`). Maps of images in memory are written as NIfTI (GIFTI, CIFTI) with
        their geometry; model.json records them by shape and checksum instead of a path.
    design : path, voxfit.design.Design, pandas.DataFrame, array or (array, names)
        One row per scan, one named column per regressor (TSV/CSV with a header, or FSL ``design.mat``).
    contrasts : dict or list
        ``{label: expression or weights}``, or ``["label=expression", ...]``.
    mask, mask_threshold :
        As in :func:`voxfit.load` (`mask`: a path, a nibabel image or a boolean array); by default a brain
        mask for volumes (SPM's: above 0.8 of each scan's global in every scan), every finite, varying element
        for surfaces, CIFTI and arrays.
    out_dir : path, optional
        Folder for the maps, ``design.tsv`` and ``model.json``; refused if not empty unless `force`.
        Files appear only when everything succeeded.
    dataset : Dataset or concurrent.futures.Future, optional
        The inputs already loaded (or being loaded, as the command line does while this module imports),
        with `mask` and `mask_threshold` applied.
    noise : str
        ``ols``, or ``ar1`` .. ``ar8``: AR(p) noise estimated and removed for every voxel (exact, no
        binning; see ``voxfit.core.ar``); an ``ar-coef`` map then holds the coefficients. ``ar1-global``:
        SPM12's AR(1), one ReML noise covariance pooled over the voxels that pass SPM's effects-of-interest
        test (see ``voxfit.engine.global_ar``), for results that must match SPM's.
    scaling : {"none", "mean", "global"}
        ``mean``: each voxel to percent signal change, ``100 * (y / mean(y) - 1)`` (nilearn's default);
        ``global``: SPM's session-specific grand mean scaling, all voxels times 100 / the mean over scans of
        each scan's global (SPM's ``spm_global``: the mean of the values above 1/8 of the scan's mean), taken
        over the whole scan as SPM does, whatever the mask.
    nuisance : str or list of str, optional
        Design columns (names or patterns, ``"hp_*,motion*"``) that are nuisance regressors: with
        ``ar1-global`` they act, with the drift columns, as SPM's high-pass filter (not whitened, left out of
        the effects-of-interest test). Each column's kind is written to ``design.json`` beside ``design.tsv``.
    streaming : bool, optional
        Read the data once, front to back, keeping per-voxel sums only (``voxfit.engine.streaming``); by
        default when the data, as float32 (float64 data: as float64), would take more than half of what
        `max_memory` leaves beside the interpreter's reserve (see ``voxfit._execution.Budgets.streams``).
    route : voxfit.models.Route, optional
        How the fit runs, as :func:`voxfit.models.choose_route` decided it (the command line decides it before
        the numerical modules import); by default decided here, in the same way.
    execution : voxfit.Execution, optional
        How the run is executed: memory cap, threads, Dask scheduler, device, progress bar. `max_memory`,
        `n_jobs`, `scheduler`, `device` and `progress` are shortcuts for its fields:
    max_memory : size, optional
        A cap on the whole process (``"2G"``): data over half of it are streamed (see `streaming`).
    n_jobs : int, optional
        Threads (default: the CPUs this process may run on).
    scheduler : dask.distributed.Client or str, optional
        Fit the voxel blocks on a Dask cluster (OLS and AR(p)); identical numbers. With ``scaling="none"``
        and an uncompressed NIfTI, .npy, Zarr or HDF5 input, each worker reads its own blocks from the files
        (and finds the automatic mask of its columns when there is no `mask`: the scans' globals for the
        threshold are added up from the workers' sums) and the client reads none of the data; otherwise
        (scaling needs whole scans) the client reads the data and sends each block. ``ar1-global`` (SPM's
        pooled ReML needs every voxel at once) runs on this machine.
    device : str, optional
        ``cuda`` to fit on a GPU: OLS (see :func:`voxfit.fit`) or ar1 .. ar16 (see :func:`voxfit.fit_ar`).
    progress : bool, optional
        A progress bar (default: when the standard error is a terminal).
    record_settings : dict, optional
        More settings for model.json (the command line's preset, why the noise model, the confounds strategy).
    rft : voxfit.inference.rft_fit.RFTOptions, optional
        Random field theory inference (volumes only): the residuals' smoothness is collected while the fit
        runs (``voxfit.engine.smoothness``), and the voxel-level FWE maps, the smoothness and SPM's results
        table are written (see ``voxfit.inference.rft_fit``).
    diagnostics : bool
        Whiteness of each voxel's whitened residuals (``voxfit.engine.diagnostics``): maps of their lag-1..4
        autocorrelation and Ljung-Box statistic, their spectrum averaged over the mask, and a warning when they
        are not white; in model.json's ``settings.diagnostics``. Data held in memory only (not streamed).
    mesh : path or (vertices, triangles), optional
        The GIFTI surface (``.surf.gii``) of surface data, for ``noise="film"``: its spatial step smooths the
        autocorrelation over the vertices near each one along the mesh (a midthickness or white surface).

    Returns
    -------
    ImageFit
        Its per-voxel vectors (the fit's, each contrast's ``effect``, ``t``, ``z``...) hold the masked voxels in
        the order NIfTI stores them, x fastest: not numpy's ``volume[mask]`` order, which is z fastest. Put one
        back on its grid with ``result.masker.inverse(values)[0].reshape(shape, order="F")`` (or read the maps
        written to `out_dir`); ``volume[mask] = values`` scrambles it.
    """
    execution = Execution.resolve(
        execution, max_memory=max_memory, n_jobs=n_jobs, scheduler=scheduler, device=device, progress=progress
    )
    start = time.perf_counter()
    check_flag(streaming, "`streaming`", none=True)
    check_flag(diagnostics, "`diagnostics`")
    if dataset is None:  # every argument's type checked before a file or folder is touched
        inputs = check_data(inputs, "inputs")
    model = _first_level_model(design, contrasts, mask, noise, scaling, nuisance, execution.max_memory)
    if rft is not None and route is not None and route.reader is not None:
        from ..inference.rft_fit import check_volume

        check_volume(route.reader.geometry)
    if model.factor.dof > 0:  # the t -> z table is prepared while the data are read
        threading.Thread(target=t_to_z, args=(np.zeros(1), float(model.factor.dof)), daemon=True).start()
    if route is None and dataset is not None:
        route = Route(MEMORY, None, "the data were given loaded")
    elif route is None:
        reader = open_reader(inputs, "inputs")
        route = choose_route(reader, execution, first_level_needs(noise, scaling, reader), streaming)
    elif route.kind != MEMORY:  # (a route decided elsewhere, for a simpler model)
        needs = first_level_needs(noise, scaling, route.reader)
        if not ((needs.by_series or needs.by_columns) if route.kind == COLUMNS else needs.one_pass):
            raise InputError(needs.too_large)
    if route.reader is not None:  # (a mesh of volume data, or of other vertices, was passed over but by FILM)
        # the design's rows against the headers' scans before any read: the data read in a thread meanwhile (the
        # command line's) failed first on what a wrong count makes of them (a 1-D .npy, one scan: "nothing varies")
        check_design_rows(model.X.shape[0], route.reader.n_scans, route.reader.geometry.n_elements)
        check_mesh(mesh, route.reader.geometry)
    if diagnostics and route.kind in (STREAM, COLUMNS):
        from .._execution import cap_holding, data_bytes
        from .._memory import cap_text

        reader = route.reader
        need = cap_holding(data_bytes(reader.n_scans, reader.geometry.n_elements, reader.dtype.itemsize))
        raise InputError(
            "--diagnostics forms the whitened residuals from the data in memory, but this fit is streamed (or read "
            f"by blocks of voxels) under --max-memory; give at least {cap_text(need)} (or drop --diagnostics)."
        )
    if rft is not None:  # numba and the smoothness kernels load while the data are read
        dtype = working_dtype(route.reader.dtype, route.reader.scale) if route.reader is not None else np.float32
        threading.Thread(target=warm_kernels, args=(dtype,), daemon=True).start()

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(OutputFolder(out_dir, force, alone=True)) if out_dir is not None else None
        # input checksums on a daemon thread: of files read into memory, from the read's start (the command
        # line's, in route.records: before this module imported), unless RFT's sums take the core the read
        # leaves; otherwise while the fit runs, at a low priority
        hashing = DaemonExecutor(aside=True)
        early = out is not None and route.kind == MEMORY and route.reader is not None and rft is None
        records = route.records
        if records is None and early:
            records = start_input_records(route.reader)
        if route.kind == STREAM:
            fitted = _fit_streamed(
                route.reader, model, mask, mask_threshold, execution, rft is not None, noise, mesh, design_tr(design)
            )
            records = hashing.submit(input_records, route.reader.paths, route.reader.in_memory) if out else None
            t_load = start
        else:
            scheduler = execution.scheduler
            if route.kind in (WORKERS, COLUMNS):  # the Dask workers, or this process, read blocks of columns
                dataset = _column_dataset(route.reader, mask, mask_threshold, scheduler)
            if scheduler is not None:  # one connection to the cluster for the mean image and the fit
                scheduler = stack.enter_context(dask_client(scheduler))
                execution = replace(execution, scheduler=scheduler)
            grid = sums = None
            if dataset is None or (isinstance(dataset, Future) and route.observer is not None):
                grid = _read_grid(rft, mask, scaling, model, route, scheduler)
                sums = _read_fit(rft, mask, scaling, model, route, execution, grid)
            if dataset is None:
                dataset = load(
                    inputs if route.reader is None else route.reader,
                    mask if grid is None else grid.candidates,
                    mask_threshold=mask_threshold,
                    progress=execution.progress,
                    n_scans=model.X.shape[0],
                    scan_globals=scaling == "global",
                    name="inputs",
                    observe=next((x.observe for x in (grid, sums) if x is not None), None),
                )
            elif isinstance(dataset, Future):
                if route.observer is not None:  # the read began before this module imported
                    route.observer.attach(grid if grid is not None else sums)
                dataset = dataset.result()
            check_design_rows(model.X.shape[0], dataset.n_scans, dataset.masker.geometry.n_elements)
            if records is None and out is not None:
                records = hashing.submit(input_records, dataset.paths, dataset.memory)
            t_load = time.perf_counter()
            data = dataset.data if scaling == "none" else scale_data(dataset.data, scaling, dataset.globals)
            noise_fit = fit_noise_model(
                model.X,
                data,
                model.names,
                model.items,
                noise,
                execution,
                model.kinds,
                dataset.masker,
                design_tr(design),
                mesh,
                sums,
            )
            if route.kind == COLUMNS:
                noise_fit.info["read_by_columns"] = "blocks of voxels' series from the file, under --max-memory"
            made = noise_fit.fit.mean if data is dataset.data else None  # (of unscaled data: theirs)
            mean = None if out is None else _mean_image(dataset.data, scheduler, sums, execution, made)
            if rft is None:
                neighbours = None
            elif grid is not None:
                neighbours = sums.neighbours if isinstance(sums, GridFit) else grid.finish(dataset.data)
            else:
                neighbours = _neighbour_sums(model, data, noise_fit, dataset.masker, execution)
            diagnosed = _diagnose(noise, noise_fit, data, execution) if diagnostics else None
            fitted = _Fitted(noise_fit, dataset, mean, neighbours, diagnosed)
        t_fit = time.perf_counter()
        files: list[Path] = []
        inferred = None if rft is None else _rft_inference(fitted, model, rft)
        if out is not None:
            _write_maps(out, fitted, model, design, execution.n_jobs)
            tables = {} if inferred is None else write_rft(out, inferred, fitted.dataset.masker)
            threshold = resolve_mask_threshold(
                mask_threshold, fitted.dataset.masker.geometry, explicit=mask is not None
            )
            ModelRecord(
                kind="first-level",
                voxfit_version=__version__,
                command=command,
                inputs=records.result(),
                **_fit_record(fitted, model, design),
                mask=mask_record(mask, threshold, fitted.dataset.n_voxels, fitted.dataset.masker.geometry.n_elements),
                settings={
                    "max_memory": execution.max_memory,
                    "n_jobs": execution.n_jobs,
                    "noise_model": noise,
                    "noise_details": fitted.noise.info,
                    "scaling": scaling,
                    "p": "one-sided upper tail for t; z has the same upper-tail probability",
                    **(
                        {}
                        if fitted.diagnostics is None
                        else {"diagnostics": fitted.diagnostics.record(design_tr(design))}
                    ),
                    **(record_settings or {}),
                },
                inference=None if inferred is None else rft_record(inferred, tables),
                run=out.run_record(load_s=t_load - start, fit_s=t_fit - t_load),
            ).write(out)
            files = out.commit()
        timing = {"load_s": t_load - start, "fit_s": t_fit - t_load, "write_s": time.perf_counter() - t_fit}
    nf = fitted.noise
    return ImageFit(nf.fit, fitted.dataset.masker, nf.contrasts, files, timing, fitted.diagnostics, dict(nf.info))


@dataclass(frozen=True, eq=False)
class FirstLevelModel:
    """The checked arguments of :func:`fit_images` that do not depend on the data: the design matrix, its column
    names and kinds, its factorisation, and the contrasts (each checked against the design)."""

    X: np.ndarray
    names: list[str]
    kinds: tuple[str, ...]
    items: list[tuple[str, object]]
    factor: object
    order: int  # of the noise model: 0 OLS, p AR(p), -1 ar1-global (see noise_order)


def _first_level_model(design, contrasts, mask, noise, scaling, nuisance, max_memory=None) -> FirstLevelModel:
    """Every argument of :func:`fit_images` checked before a file is read (the data's own checks are the
    reader's): the mask's type, the noise model and scaling named, the design read and every contrast
    evaluated on it."""
    if scaling not in ("none", "mean", "global"):
        raise InputError(f"`scaling` must be none, mean or global; got {scaling!r}.")
    check_mask(mask)
    X, names = design_matrix(design)
    kinds = column_kinds(design, names, X, nuisance)
    items = contrast_items(contrasts)
    factor = factorize(X, names, warn=False, max_memory=max_memory)
    warn_without_constant(factor, design)
    warn_high_order(noise_order(noise), factor)
    for label, expr in items:
        check_contrast(expr, factor, label)
    return FirstLevelModel(X, names, tuple(kinds), items, factor, noise_order(noise))


def warn_high_order(order: int, factor, run: str = "") -> None:
    """Warn of AR(p) per voxel on a run of fewer than :data:`AR_DOF_PER_COEFFICIENT` residual dof per coefficient:
    the estimation terms account for the coefficients' noise to first order, which is not enough there, and the
    tail runs liberal (AR(1) noise 0.3, null voxels, a block design: on 60 scans p < 0.001 came 0.0009 of the time
    with AR(1), 0.0014 with AR(2), 0.0015 with AR(3), 0.0020 with AR(4) (60,000 voxels), 0.0043 with AR(8) (20,000);
    on 100 scans 0.0009 with AR(4), 0.0014 with AR(8), 0.0027 with AR(16))."""
    fits = max(1, int(factor.dof // AR_DOF_PER_COEFFICIENT))  # (AR(1) is not warned of: lower is another model)
    if order <= fits:
        return
    warnings.warn(
        f"{run}AR({order}) per voxel on {factor.n_scans} scans leaves {factor.dof:g} residual dof, fewer than "
        f"{AR_DOF_PER_COEFFICIENT} per coefficient, where it runs liberal in the tail (60 scans of AR(1) noise: p < "
        "0.001 1.5 times as often as it should with AR(3), twice with AR(4), four times with AR(8)); give a lower "
        f"order, --noise ar{fits} or below (the default takes scans // 70).",
        DegreesOfFreedomWarning,
        stacklevel=3,
    )


AR_DOF_PER_COEFFICIENT = 20  # residual dof per AR coefficient below which AR(p) per voxel is warned of


def warn_without_constant(factor, design, run: str = "") -> None:
    """Warn of a first-level design with no constant in its span: each voxel's mean stays in its residuals, and t
    comes out far too small (an FSL design.mat of FEAT's demeaned EVs on a run of mean 100: t 0.05 where 5.3).
    FEAT removes each voxel's mean before fitting; voxfit fits the design as given."""
    ones = np.ones(factor.basis.shape[0])
    if np.linalg.norm(ones - factor.basis @ (factor.basis.T @ ones)) <= 1e-6 * np.sqrt(ones.size):
        return
    what = f"{run}the design" + (f" {design}" if isinstance(design, (str, os.PathLike)) else "")
    fsl = str(design).lower().endswith(".mat") if isinstance(design, (str, os.PathLike)) else False
    warnings.warn(
        f"{what} has no constant (no column of ones in its span): each voxel's mean stays in its residuals, which "
        "makes t far too small unless the data are mean-centred; "
        + (
            "FSL's design.mat leaves it out because FEAT removes each voxel's mean before fitting, and voxfit fits "
            "the design as given: add a column of ones to it (/NumWaves one more)."
            if fsl
            else "add a column of ones."
        ),
        DesignWarning,
        stacklevel=3,
    )


@dataclass(frozen=True, eq=False)
class NoiseFit:
    """What :func:`fit_noise_model` returns: the fit, each contrast's statistics, the noise parameters per voxel
    (AR coefficients; (a, b) for arma11; None for OLS and the pooled models), the noise model's details for
    model.json, and the AR order chosen per voxel (``auto``; else None)."""

    fit: Fit
    contrasts: dict[str, Stats]
    ar_coef: np.ndarray | None
    info: dict
    orders: np.ndarray | None = None  # the AR order chosen per voxel (``auto``)
    whitening: np.ndarray | None = None  # ar1-global: the W of the whitened fit


@dataclass(frozen=True, eq=False)
class _Fitted:
    """A fit of :func:`fit_images` ready to be written: the noise fit, the Dataset (for a streamed fit, one
    standing for the data, with no values) and the mean image (None without an output folder)."""

    noise: NoiseFit
    dataset: Dataset
    mean: np.ndarray | None
    neighbours: object | None = None  # the residuals' voxfit.inference.rft.NeighbourSums (with rft)
    diagnostics: object | None = None  # voxfit.engine.diagnostics.ResidualDiagnostics (with diagnostics)


def _diagnose(noise, noise_fit: NoiseFit, data, execution: Execution):
    """The whiteness diagnostics of a fit's whitened residuals (see ``voxfit.engine.diagnostics``)."""
    from ..engine.diagnostics import noise_whitener, residual_diagnostics

    nf = noise_fit
    whitener = noise_whitener(noise, nf.fit, nf.ar_coef, nf.whitening, nf.orders)
    return residual_diagnostics(data, whitener, noise, execution)


def write_design_files(out, prefix: str, X, names, kinds, tr=None, fitted=None) -> None:
    """``<prefix>design.tsv``, the model's design (what ``--design`` reads back), and its sidecar
    ``<prefix>design.json`` with each column's kind, into the output folder `out`; and where the design `fitted`
    is another (ar1-global's whitened one), ``<prefix>design_desc-whitened.tsv``."""
    write_design(out.path(f"{prefix}design.tsv"), X, names)
    write_sidecar(out.path(f"{prefix}design.json"), names, kinds, tr)
    if fitted is not None and fitted is not X and not np.array_equal(fitted, X):
        write_design(out.path(f"{prefix}design_desc-whitened.tsv"), fitted, names)


def _column_dataset(reader, mask, mask_threshold, scheduler) -> Dataset | None:
    """The masked inputs of `reader` as a Dataset whose data are a column source (see
    :func:`columns_on_workers`); None when the files cannot be read by columns (e.g. .nii.gz)."""
    found = columns_on_workers(reader, mask, scheduler, threshold=mask_threshold)
    return None if found is None else Dataset(*found, tuple(reader.paths), memory=tuple(reader.in_memory))


def columns_on_workers(
    reader, mask, scheduler, nonzero: bool = False, threshold=None
) -> tuple[ColumnSource, Masker] | None:
    """The elements to fit as a column source of `reader`, for the Dask workers to read a block each, and
    their masker; None when the files cannot be read by columns. The elements are those of an explicit `mask`,
    or of the automatic mask, which the workers find a block of columns per task (with `nonzero`, the group
    rule: non-zero in every map; with a relative `threshold`, see :func:`voxfit.load`, above it times each
    scan's global, whose sums the workers compute in two rounds), as the in-memory path would: the client
    reads no data values."""
    source = reader.column_source()
    if source is None:
        return None
    threshold = resolve_mask_threshold(threshold, reader.geometry, explicit=mask is not None)
    if mask is not None:
        keep = explicit_mask(mask, reader.geometry)
    else:
        spans = source.spans()
        cut = None
        if threshold is not None:  # SPM's globals: the mean of the finite values, then of those above 1/8 of it
            for step in range(2):
                sums = np.sum(run_tasks(scheduler, global_sums_block, source, [(a, b, cut) for a, b in spans]), axis=0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    cut = sums[:, 0] / sums[:, 1] / 8 if step == 0 else threshold * sums[:, 0] / sums[:, 1]
        keep = np.concatenate(run_tasks(scheduler, mask_block, source, [(a, b, nonzero, cut) for a, b in spans]))
        if not keep.any():
            raise InputError(
                "no voxel is finite and non-zero in every input map; check the inputs or give --mask."
                if nonzero
                else "the automatic mask is empty: no voxel is finite and not constant over time in every scan."
            )
    return reader.column_source(np.flatnonzero(keep)), Masker(reader.geometry, keep)


def _fit_streamed(
    reader,
    model: FirstLevelModel,
    mask,
    mask_threshold,
    execution: Execution,
    smoothness: bool = False,
    noise="",
    mesh=None,
    tr=None,
) -> _Fitted:
    """The fit of fit_images for data larger than the memory cap: one sequential read of `reader`'s files
    accumulating per-voxel sums (with `smoothness`, the residuals' neighbour sums too), with a Dataset standing
    for the data (no values) for writing the maps; OLS, AR(p) or (`noise` film) FSL FILM. With ``arp+lags``, the
    long-lag correction's sample of voxels is read again (``read_voxels``)."""
    film = str(noise).lower() == "film"
    streamed = fit_streaming(
        reader,
        model.X,
        dict(model.items),
        order=max(model.order, 0),
        names=model.names,
        mask=mask,
        mask_threshold=mask_threshold,
        execution=execution,
        smoothness=smoothness,
        film=film,
        mesh=check_mesh(mesh, reader.geometry) if film else None,
    )
    dataset = Dataset(
        np.broadcast_to(np.zeros((), dtype=reader.dtype), (reader.n_scans, streamed.masker.n_voxels)),
        streamed.masker,
        tuple(reader.paths),
        tuple(reader.in_memory),
    )
    info = {**(_ar_info(model.order) if model.order > 0 else {"model": "OLS"}), "streamed": True}
    if film:
        info = {
            **streamed.film,
            **({"mesh": str(mesh)} if isinstance(mesh, (str, Path)) else {}),
            "parameters": [f"ar{k + 1}" for k in range(streamed.ar_coef.shape[0])],
            "streamed": True,
        }
    contrasts = streamed.contrasts
    if long_lags(noise):
        elements = streamed.masker.index
        contrasts, details = _long_lag_corrected(
            streamed.fit,
            lambda at: read_voxels(reader, elements[at]),
            streamed.ar_coef,
            contrasts,
            tr,
            execution.n_jobs,
        )
        info.update(details)
    noise_fit = NoiseFit(streamed.fit, contrasts, streamed.ar_coef, info)
    return _Fitted(noise_fit, dataset, streamed.mean, streamed.neighbour_sums)


def _rft_inference(fitted: _Fitted, model: FirstLevelModel, options):
    """``--inference rft`` on a first-level fit: OLS and ar1-global T and F fields of the model's dof, AR(p) per
    voxel fields of each contrast's median effective dof (:func:`voxfit.inference.rft_fit.median_dof_field`;
    warned of below :data:`voxfit.inference.rft_fit.FEW_EFFECTIVE_DOF`)."""
    from ..inference.rft_fit import FEW_EFFECTIVE_DOF, few_dof, rft_inference

    nf = fitted.noise
    if model.order > 0 and (few := few_dof(nf.contrasts, FEW_EFFECTIVE_DOF)):
        warnings.warn(
            f"contrast {few[0]!r} has a median of {few[1]:.1f} effective dof, fewer than {FEW_EFFECTIVE_DOF}: AR(p) "
            "per voxel ran liberal there on smooth null data, its p values and --inference rft with them (AR(4) on 60 "
            "scans, 6.2 dof: FWE 0.12 at 0.05); --noise ar1-global (SPM's, a T field) or a lower AR order keeps the "
            "level.",
            DegreesOfFreedomWarning,
            stacklevel=2,
        )
    dof = nf.fit.dof if model.order <= 0 else model.factor.dof
    return rft_inference(
        nf.contrasts,
        fitted.dataset.masker,
        fitted.neighbours,
        options,
        n=model.factor.n_scans,
        dof=float(dof),
        residuals=rft_residuals(model.order),
        per_voxel_dof=model.order > 0,
    )


def rft_residuals(order: int, every_run: bool = False) -> str:
    """Which residuals RFT's smoothness comes from, in words, for the noise model of AR `order`
    (:func:`voxfit.models._routing.noise_order`): OLS and ar1-global their own (ar1-global's whitened), AR(p) per
    voxel the OLS residuals of the design; of `every_run` where runs are combined."""
    of = " of every run" if every_run else ""
    if order == 0:
        return f"the OLS residuals{of}"
    if order == -1:
        return f"SPM's whitened residuals{of} (W y less its fit on W X)"
    design = "every run's design" if every_run else "the same design"
    return f"the OLS residuals of {design} (AR(p) per voxel; see voxfit.engine.smoothness)"


def write_rft(out, inferred, masker, prefix: str = "", shared: str | None = None) -> dict[str, dict]:
    """The maps (``stat-rpv``; per contrast ``stat-p_desc-rftfwe`` and ``stat-logp_desc-rftfwe``) and SPM's
    results table of each contrast (``contrast-<label>_desc-rft_table.tsv``) of an RFT inference, each name after
    `prefix` (a BIDS node's entities), the RPV map's after `shared` when given (a BIDS group of one contrast);
    returns each table's footer."""
    from ..report.rft_table import results_table

    ext = masker.geometry.extension
    for stat, label, desc, values in inferred.maps():
        name = (prefix if label is not None or shared is None else shared) + statmap_name(stat, ext, label, desc=desc)
        named = " ".join(x for x in (label, stat, desc) if x)  # (an RFT FWE p map is not the uncorrected p)
        masker.write(out.path(name), values, [named], P_VALUE if stat == "p" else None)
    footers = {}
    for label in inferred.contrasts:
        table = results_table(inferred, label)
        out.path(rft_table_name(label, prefix)).write_text(table.tsv())
        footers[label] = table.footer
    return footers


def rft_table_name(label: str, prefix: str = "") -> str:
    return f"{prefix}contrast-{label}_desc-rft_table.tsv"


def rft_record(inferred, footers: dict[str, dict], prefix: str = "") -> dict:
    """model.json's ``inference``: the RFT inference's record, each contrast with its table's file and footer
    (non-finite numbers as null)."""
    from ..inference.rft_fit import finite_or_none

    record = inferred.record()
    for label, entry in record["contrasts"].items():
        if label in footers:
            entry.update(table=rft_table_name(label, prefix), footer=footers[label])
    return finite_or_none(record)


def _read_grid(rft, mask, scaling: str, model: FirstLevelModel, route: Route, scheduler):
    """For RFT when the data's neighbour sums are gathered while they are read (see
    ``voxfit.models._routing.read_gathers_sums``): the accumulator (``GridProducts``, whose ``observe`` the read
    calls; the sums run on a side thread while the next scans decompress, so that only the residuals'
    are left for after the fit), at the voxels of the explicit mask; else None."""
    if not read_gathers_sums(rft is not None, mask, scaling, model.order, route, scheduler):
        return None
    from ..inference.rft_fit import check_volume

    reader = route.reader
    check_volume(reader.geometry)
    return GridProducts(reader.geometry.shape, True, explicit_mask(mask, reader.geometry), model.factor.basis)


def _read_fit(rft, mask, scaling: str, model: FirstLevelModel, route: Route, execution: Execution, grid=None):
    """For OLS or AR(p) when the fit is made from sums gathered while the data are read: for OLS, RFT's (`grid`,
    see :func:`_read_grid`), which hold what OLS needs when the design has the constant (``GridFit``); or else,
    under ``voxfit.models._routing.read_fits``, its own accumulator (``ReadFit``, ``ReadARFit``) when its sums hold
    at most half the data's bytes (OLS on 400 scans of float32 and 15 columns: 144 of 1,600 bytes a voxel; AR(1):
    288), whose ``observe`` the read calls; the sums run on a side thread while the next scans are read, so that only
    the fit's finishing follows the read. Else None."""
    if grid is not None:
        ols = model.order == 0 and model.factor.exact_intercept and not execution.on_device
        return GridFit(grid, model.X, model.names) if ols else None
    if not read_fits(rft is not None, mask, scaling, model.order, route, execution):
        return None
    rank = model.factor.rank
    held = 8 * (rank + 3) if model.order == 0 else ReadARFit.sums_bytes(rank, model.order)
    if 2 * held > model.X.shape[0] * route.reader.dtype.itemsize:  # (a memory plan counts the data, not these)
        return None
    if model.order == 0:
        return ReadFit(model.X, model.names)
    return ReadARFit(model.X, model.order, dict(model.items), model.names)


def _neighbour_sums(model: FirstLevelModel, data, noise_fit: NoiseFit, masker: Masker, execution: Execution):
    """The NeighbourSums of the fit's residuals (see ``voxfit.engine.smoothness``): OLS and ar1-global their
    own (ar1-global's whitened), AR(p) per voxel the OLS residuals of the design; on the Dask workers when they
    read the data."""
    from ..inference.rft_fit import check_volume

    check_volume(masker.geometry)
    basis = model.factor.basis if model.order >= 0 else noise_fit.fit.design.basis
    mask = masker.mask.reshape(masker.geometry.shape, order="F")
    return neighbour_sums(
        data,
        basis,
        mask,
        whitening=noise_fit.whitening,
        n_jobs=execution.n_jobs,
        scheduler=execution.scheduler,
    )


def mean_over_scans(data, workers: int = 1) -> np.ndarray:
    """Each voxel's mean over the scans of (n, V) data (arrays, memory maps, scaled arrays), in float64: the run's
    mean image, which reports draw maps over. An array in memory is reduced into float64 as numpy reduces it
    (buffered casts: no float64 copy), in `workers` threads each taking one span of its voxels: the same sums in
    the same order as one reduction of the whole (0.035 s for 1200 x 91k float32 on 2 threads, against 0.06 s on
    one; blocks of a few thousand voxels were slower, 0.08 s); others a block of voxels at a time."""
    if type(data) is np.ndarray and data.ndim == 2:
        out = np.empty(data.shape[1])
        spans = even_spans(data.shape[1], max(1, min(workers, data.size >> 20)))
        run_in_threads(lambda s: np.mean(data[:, s], axis=0, dtype=np.float64, out=out[s]), spans, len(spans))
        return out
    n, V = data.shape
    step = max(1, (8 << 20) // (8 * n))
    return np.concatenate([np.asarray(data[:, a : a + step], dtype=np.float64).mean(axis=0) for a in range(0, V, step)])


def _mean_image(data, scheduler, sums, execution: Execution, made=None) -> np.ndarray:
    """The run's mean image: `made`, when the fit made it from its own sums (``Fit.mean`` of an AR(p) fit of the
    data in memory: a pass over the data less, 0.03-0.04 s for a 2 mm MNI or an HCP run); else from the sums gathered
    while the data were read; else from the data, where they are: on the Dask workers for a column source (in
    blocks of 8 MiB here, without a scheduler: data read by blocks under the memory cap), on the run's threads for
    an array in memory. (Not ``mean(X) @ betas`` of an OLS fit whose design spans the constant: 0.06 s quicker for
    an HCP run, but off by the fit's float32 rounding, about 1e-6 of each voxel's standard deviation, which a mean
    map of data near zero shows. Nor from sums of the OLS fit's pass: they cost it about what a pass of their own
    costs.)"""
    if made is not None:
        return made
    if sums is not None:
        return sums.mean()
    if isinstance(data, ColumnSource):
        spans = data.spans() if scheduler is not None else data.spans(8 << 20)
        return np.concatenate(run_tasks(scheduler, _mean_of_columns, data, spans))
    return mean_over_scans(data, resolve_workers(execution.n_jobs))


def _mean_of_columns(source: ColumnSource, a: int, b: int) -> np.ndarray:
    """The mean over the scans of columns a:b of a column source (a Dask task, where the data are)."""
    return mean_over_scans(source[:, a:b])


def scale_data(data, how: str, scan_globals=None) -> np.ndarray:
    """Scaled float copy of the (n, V) data (see `scaling` in :func:`fit_images`; `scan_globals`: SPM's global
    of each whole scan, for ``global``); works a block at a time."""
    if how not in ("mean", "global"):
        raise InputError(f"`scaling` must be none, mean or global; got {how!r}.")
    n, V = data.shape
    out = np.empty((n, V), dtype=np.float64 if np.dtype(data.dtype).itemsize > 4 else np.float32)
    step = max(1, (8 << 20) // (8 * n))
    if how == "global":  # SPM's session-specific grand mean scaling: 100 / the mean of the scans' globals
        if scan_globals is None:
            raise InputError("global scaling needs each whole scan's global: load the data with scan_globals=True.")
        grand = float(np.mean(scan_globals))
        if not (np.isfinite(grand) and grand > 0):
            raise InputError("global scaling needs data with a positive mean; use --scaling none or mean.")
        for a in range(0, V, step):
            out[:, a : a + step] = np.asarray(data[:, a : a + step], dtype=np.float64) * (100.0 / grand)
        return out
    for a in range(0, V, step):
        block = np.asarray(data[:, a : a + step], dtype=np.float64)
        m = block.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(m > 0, 100.0 * (block / m - 1.0), np.nan)  # mean <= 0: no percent change; invalid
        out[:, a : a + step] = scaled
    return out


def design_tr(design) -> float | None:
    """The repetition time a design carries (events designs and design files with a sidecar), else None."""
    tr = getattr(design, "tr", None)
    if tr is None and isinstance(design, (str, os.PathLike)):
        return sidecar_tr(design)
    return float(tr) if tr is not None else None


def fit_noise_model(
    X,
    data,
    names,
    items,
    noise,
    execution: Execution | None = None,
    kinds=None,
    masker=None,
    tr=None,
    mesh=None,
    sums: ReadFit | ReadARFit | GridFit | None = None,
) -> NoiseFit:
    """Fit with the noise model asked for (see `noise` in :func:`fit_images`), each contrast's statistics
    computed. `masker` (the data's voxels in their geometry) is needed by ``film``'s spatial step, and on a surface
    its `mesh` (a GIFTI surface's path, or its vertices and triangles); `tr` (s) by ``fast``. `sums`: for OLS and
    AR(p), the sums gathered while `data` were read, from which the fit is made (see :func:`_read_fit`)."""
    execution = execution or Execution()
    order = noise_order(noise)
    noise = str(noise).lower()
    if order < 0 and execution.on_device:
        raise InputError(f"{noise} runs on the CPU only; drop --device, or use ar1 .. ar16 (per voxel) on the GPU.")
    if order == -2:
        nm = _fit_per_voxel_model(X, data, names, items, noise, execution, masker, mesh)
        fit, stats, ar_coef, info = nm.fit, nm.contrasts, nm.parameters, dict(nm.info)
        if noise == "film" and isinstance(mesh, (str, Path)):
            info["mesh"] = str(mesh)
        info["parameters"] = nm.parameter_names
        if nm.orders is not None:
            info["orders_chosen"] = {str(p): int(c) for p, c in enumerate(np.bincount(nm.orders[nm.orders >= 0]))}
        return NoiseFit(fit, stats, ar_coef, info, orders=nm.orders)
    if order > 0:
        if sums is not None:
            ar = sums.finish(data, execution)
        else:
            ar = fit_ar(X, data, order, dict(items), names=names, execution=execution)
        fit, stats, ar_coef, info = ar.fit, ar.contrasts, ar.ar, _ar_info(order)
        if long_lags(noise):
            stats, details = _long_lag_corrected(
                fit, functools.partial(_sampled_columns, data), ar_coef, stats, tr, execution.n_jobs
            )
            info.update(details)
    elif order < 0:
        if noise == "fast" and tr is None:
            raise InputError(
                "--noise fast builds SPM's FAST components from the repetition time, but the design has none; "
                "build it from --events with --tr, or give a design file with RepetitionTime in its JSON sidecar."
            )
        fast = noise == "fast"
        g = fit_global_ar(
            X,
            data,
            dict(items),
            names=names,
            kinds=kinds,
            execution=execution,
            components="fast" if fast else "ar",
            tr=tr,
        )
        fit, stats, ar_coef, whitening = g.fit, g.contrasts, None, g.whitening
        info = {
            "model": "SPM12 FAST: one ReML covariance for all voxels"
            if fast
            else "SPM12 AR(1): one ReML covariance for all voxels",
            "reml_hyperparameters": g.hyperparameters.tolist(),
            "pooled_voxels": g.n_pooled,
            "pooling_F_threshold": g.threshold,
            "lag1_correlation": float(g.correlation[1, 0]),
        }
    else:
        fit = fit_engine(X, data, names=names, execution=execution) if sums is None else sums.finish(data)
        stats, ar_coef, info = None, None, {"model": "OLS"}
    if fit.n_invalid == fit.valid.size:
        raise InputError(
            f"all {fit.valid.size} voxels in the mask have NaN or infinite values in some scan; nothing to fit."
        )
    if stats is None:
        stats = {label: fit.contrast(expr, name=label, n_jobs=execution.n_jobs) for label, expr in items}
    return NoiseFit(fit, stats, ar_coef, info, whitening=whitening if order < 0 else None)


def _sampled_columns(data, at) -> np.ndarray:
    """The columns `at` (increasing) of the data: of a ColumnSource (the Dask workers' route: this process holds no
    data), read a span of at most 64 MiB of the file at a time (a read covers the span from its first column to its
    last)."""
    if not isinstance(data, ColumnSource) or not at.size:
        return data[:, at]
    parts = [at[(at >= a) & (at < b)] for a, b in data.spans()]
    return np.concatenate([data[:, part] for part in parts if part.size], axis=1)


def _long_lag_corrected(fit: Fit, columns, ar_coef, stats: dict, tr, workers: int | None) -> tuple[dict, dict]:
    """An AR(p) fit's contrasts with the pooled long-lag correction (``arp+lags``, ``voxfit.core.long_lags``) from a
    sample of the fit's valid voxels, whose data ``columns(positions)`` gives (z on up to `workers` threads); and
    what it adds to the noise model's details (:func:`_ar_info`'s)."""
    from ..core.long_lags import long_lag_factors, sample_voxels

    at = sample_voxels(fit.valid, fit.design.n_scans)
    weights = {label: st.weights for label, st in stats.items()}
    sample = np.asarray(columns(at), dtype=np.float64)
    lags = long_lag_factors(fit.design, sample, ar_coef[:, at], fit.betas[:, at], weights, tr)
    model = f"AR({ar_coef.shape[0]}) per voxel, with a pooled long-lag correction"
    return lags.corrected(stats, workers), {"model": model, "long_lags": lags.record()}


def _ar_info(order: int) -> dict:
    """model.json's ``noise_details`` of an AR(`order`) model per voxel: its name and how its contrasts' variances
    are made (see ``voxfit.core.ar.estimation_terms``)."""
    return {
        "model": f"AR({order}) per voxel",
        "contrast_variance": (
            f"sigma^2 = whitened RSS / (n - rank - {order}): the {order} AR coefficient(s) fitted to each voxel's "
            "residuals leave its whitened RSS short by that many (the residualvariance map stays RSS / (n - rank)); "
            "times the AR estimate's bias and Kackar-Harville's term; Satterthwaite's degrees of freedom per voxel "
            "(an F of several rows: Kenward-Roger's, and their scale)"
        ),
    }


def check_mesh(mesh, geometry):
    """The mesh `mesh` as FILM's spatial step takes it: None, a GIFTI surface's path read and checked against the
    data's vertices (refused for data that are not a surface: checked before the fit, for the report's surface
    views too), or (vertices, triangles) as they are."""
    if mesh is None or isinstance(mesh, tuple):
        return mesh
    if geometry is None or geometry.kind != "surface":
        kind = "data without geometry" if geometry is None else f"a {geometry.kind}"
        raise InputError(f"--mesh {mesh} is the surface of surface data, but the data are {kind}; leave it out.")
    from ..io.readers import read_mesh

    return read_mesh(mesh, geometry.n_elements, getattr(geometry, "structure", None))


def _fit_per_voxel_model(X, data, names, items, noise, execution, masker, mesh=None):
    """film, arma11 or auto (see ``voxfit.engine.noise_models``)."""
    from ..engine.noise_models import film_space, fit_arma11, fit_auto_ar, fit_film

    if noise == "film":
        mesh = check_mesh(mesh, getattr(masker, "geometry", None))
        space = film_space(masker, mean_over_scans(data), mesh, execution)
        return fit_film(X, data, dict(items), names=names, space=space, execution=execution)
    if noise == "arma11":
        return fit_arma11(X, data, dict(items), names=names, execution=execution)
    return fit_auto_ar(X, data, dict(items), names=names, execution=execution)


def _write_maps(out, fitted: _Fitted, model: FirstLevelModel, design, n_jobs) -> None:
    """The maps of a first-level fit (mask, betas, R^2, residual variance, AR coefficients, mean, each
    contrast's), in threads, and its design files, into the output folder `out`."""
    nf, masker = fitted.noise, fitted.dataset.masker
    ext = masker.geometry.extension
    maps = [(f"mask{ext}", None, None), *fit_maps(nf, ext)]  # (file name, values, map names); None: the mask
    if fitted.mean is not None:
        maps.append((statmap_name("mean", ext), fitted.mean, ["mean"]))
    if fitted.diagnostics is not None:
        from ..engine.diagnostics import SPECTRUM_FILE

        maps += fitted.diagnostics.maps(ext)
        out.path(SPECTRUM_FILE).write_text(fitted.diagnostics.spectrum_tsv(design_tr(design)))
    write_maps(out, masker, maps, n_jobs)
    write_design_files(out, "", model.X, list(nf.fit.names), model.kinds, getattr(design, "tr", None), nf.fit.design.X)


def fit_maps(nf: NoiseFit, ext: str, prefix: str = "") -> list[tuple]:
    """The maps of a noise fit, each as (file name, values, map names): an effect per design column, R^2, the
    residual variance, the noise parameters (AR or ARMA coefficients, the AR order chosen) and each contrast's;
    file names begin with `prefix` (``run-2_``: one run of several)."""
    names = list(nf.fit.names)
    maps = [
        (statmap_name("effect", ext, label, entity="regressor"), beta, [name])
        for label, name, beta in zip(_column_labels(names), names, nf.fit.betas)
    ]
    maps.append((statmap_name("rsquared", ext), nf.fit.r2, ["rsquared"]))
    maps.append((statmap_name("residualvariance", ext), nf.fit.residual_variance, ["residualvariance"]))
    if nf.ar_coef is not None:
        labels = nf.info.get("parameters") or [f"ar{k + 1}" for k in range(nf.ar_coef.shape[0])]
        kind = "armacoef" if labels == ["a", "b"] else "arcoef"
        maps.append((statmap_name(kind, ext), nf.ar_coef, labels))
    if nf.orders is not None:
        maps.append((statmap_name("arorder", ext), nf.orders.astype(np.float64), ["arorder"]))
    for label, s in nf.contrasts.items():
        maps += stat_maps(s, label, ext)
    return [(prefix + name, *rest) for name, *rest in maps]


def write_maps(out, masker, maps, n_jobs) -> None:
    """Write `maps` ((file name, values, map names[, NIfTI intent]); values None: the mask) into the output folder
    `out`, on up to `n_jobs` threads (compression releases the GIL)."""

    def write(item):
        name, values, labels, *intent = item
        path = out.path(name)
        masker.write_mask(path) if values is None else masker.write(path, values, labels, *intent)

    run_in_threads(write, maps, resolve_workers(n_jobs), grace=GRACE_S)


def _fit_record(fitted: _Fitted, model: FirstLevelModel, design) -> dict:
    """What model.json says of a first-level fit's data, design and contrasts (see ``ModelRecord``)."""
    fit, dataset = fitted.noise.fit, fitted.dataset
    return {
        "data": {
            "n_scans": dataset.n_scans,
            "n_voxels": dataset.n_voxels,
            "n_invalid_voxels": fit.n_invalid,
            "dtype": str(getattr(dataset.data, "dtype", "")),
            "geometry": dataset.masker.geometry.describe(),
        },
        "design": {
            "columns": list(fit.names),
            "n_rows": fit.design.n_scans,
            "rank": fit.rank,
            "dof": fit.dof,
            "condition_number_scaled": fit.design.condition,
            **design_record(design, model.kinds),
        },
        "contrasts": {label: contrast_record(expr, fitted.noise.contrasts[label]) for label, expr in model.items},
    }
