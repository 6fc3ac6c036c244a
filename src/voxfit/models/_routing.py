"""How a fit runs, decided in one place: in memory, in one streamed pass, or read by the Dask workers.

:func:`choose_route` is called by the command line (``voxfit fit``, before the numerical modules import: the
route it finds is handed to :func:`voxfit.fit_images`), by :func:`voxfit.fit_images` when it is given none (and
so by ``FirstLevel``) and by :meth:`voxfit.SecondLevel.fit`, from the inputs' header and the
:class:`~voxfit._execution.Execution`, before any data value is read. (:func:`voxfit.fit_runs` holds every run
in memory, and refuses a cap that cannot hold them.) The model says what it allows
(:class:`Needs`); the route says where the data are read; the execution says where the arithmetic runs
(threads, a Dask cluster, a GPU). This module imports no numerical library, so that the command line decides
the route, and starts reading the data, while those import.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._execution import Execution, cap_holding, data_bytes
from .._memory import reserved_bytes, size_text
from ..exceptions import InputError

__all__ = [
    "COLUMNS",
    "MEMORY",
    "NOISE_CHOICES",
    "STREAM",
    "WORKERS",
    "Needs",
    "Route",
    "ScanObserver",
    "choose_route",
    "first_level_needs",
    "noise_order",
]

MEMORY = "memory"  # the client loads the masked data and fits them (threads, Dask blocks sent, or a GPU)
STREAM = "stream"  # one sequential pass over the files keeping per-voxel sums: data larger than the memory cap
WORKERS = "workers"  # each Dask worker reads its own blocks of columns from the files; the client reads no values
COLUMNS = "columns"  # this process reads blocks of columns from the files: whole series of a few voxels at a time


@dataclass(frozen=True)
class Needs:
    """What a model allows of its route.

    by_columns : the Dask workers may read the data a block of columns each (the model needs no whole scan and
        no whole map: OLS or AR(p) without scaling; a parametric group model).
    one_pass : the model can be fitted in one streamed pass (per-voxel sums) when the data exceed the cap.
    by_series : over the cap, the model can be fitted from blocks of voxels' whole series, read by columns from
        files that allow it (per-voxel models without a spatial step: arma11, auto).
    too_large : when it cannot, the InputError said for data over the cap (None: it is then fitted in memory
        anyway, and the model plans its memory itself, as group models with permutations do).
    """

    by_columns: bool = True
    one_pass: bool = True
    by_series: bool = False
    too_large: str | None = None


@dataclass(frozen=True)
class Route:
    """How one fit runs: `kind` is :data:`MEMORY`, :data:`STREAM` or :data:`WORKERS`; `reader` the inputs'
    reader whose header decided it (None for data already loaded); `reason` says why, in words."""

    kind: str
    reader: object = None
    reason: str = ""
    observer: ScanObserver | None = None  # the read's (started by the command line): see ScanObserver
    records: object = None  # a Future of the inputs' records for model.json, started beside that read (or None)


class ScanObserver:
    """What a read started early (the command line's, while the numerical modules import) has gathered so far,
    handed to the consumer attached later: ``voxfit.io.load(observe=...)`` calls it with the array being filled
    and the number of scans in it, and the consumer's ``observe`` (``voxfit.engine.smoothness.GridProducts``:
    the residuals' neighbour sums for RFT; ``voxfit.engine.fit.ReadFit`` and ``voxfit.engine.streaming.ReadARFit``:
    the OLS and AR(p) fits) sees every call from its attachment on, so the scans read before it in the first of
    them (or, when the read was over first, in its ``finish``)."""

    def __init__(self):
        self.consumer = None

    def attach(self, consumer) -> None:
        self.consumer = consumer

    def __call__(self, out, stop: int) -> None:
        consumer = self.consumer
        if consumer is not None:
            consumer.observe(out, stop)


def _sums_of_the_read(mask, scaling: str, order: int, route: Route, scheduler) -> bool:
    """Whether sums of the data can be gathered while they are read: with an explicit mask (the automatic one is
    decided after the read), for OLS or AR(p) (noise `order` >= 0, see :func:`noise_order`: the design's own
    basis, not a pooled whitening's or a per-voxel model's), on unscaled data read into this process (scaling
    needs every value first; a Dask cluster reads its own)."""
    reader = route.reader
    return bool(
        mask is not None
        and scaling == "none"
        and order >= 0
        and scheduler is None
        and route.kind == MEMORY
        and reader is not None
        and reader.scale is None
    )


def read_gathers_sums(rft: bool, mask, scaling: str, order: int, route: Route, scheduler) -> bool:
    """Whether RFT's neighbour sums of the data are gathered while they are read (then only the residuals'
    follow the fit; see :func:`_sums_of_the_read`)."""
    return bool(rft) and _sums_of_the_read(mask, scaling, order, route, scheduler)


def read_fits(rft: bool, mask, scaling: str, order: int, route: Route, execution) -> bool:
    """Whether an OLS or AR(p) fit may be made from sums gathered while the data are read
    (``voxfit.engine.fit.ReadFit``, ``voxfit.engine.streaming.ReadARFit``; see :func:`_sums_of_the_read`), on the
    CPU; not with RFT, whose own sums are gathered then. Only for compressed files, whose decompression leaves a
    core idle: an uncompressed run is read faster than the sums are made (1.6 GB: 0.25 s against 0.4 s for OLS),
    and fitted in memory faster."""
    return bool(
        not rft
        and not execution.on_device
        and getattr(route.reader, "compressed", False)
        and _sums_of_the_read(mask, scaling, order, route, execution.scheduler)
    )


# The noise model of fMRI time series by default: AR(p) per voxel, p = n_scans // SCANS_PER_LAG from 1 to the order of
# FMRI_NOISE, with the pooled long-lag correction of the contrasts' variances (voxfit.core.long_lags: ``arp+lags``).
# Of ols, ar1, ar2, ar4, ar8, ar12 and ar16 (each at every TR), ar1-global, fast, film, arma11 and auto, the AR rule
# held the nominal false-positive rate best on resting-state-like noise (1/f, AR, aliased cardiac and respiratory
# oscillations) over block and event designs at TR 0.7-3 s in runs of 600 s (validation/noise_realistic.py, 20,000
# voxels a cell: AR(12) at 857 scans, AR(8) at 600, AR(4) at 300 and AR(2) at 200 kept p < 0.05 within 0.0461-0.0549
# and p < 0.001 within 0.0008-0.0017; AR(8) everywhere reached 0.0565, AR(12) or AR(16) everywhere 0.0745 and 0.0827
# at 200 scans: high orders need many scans; nilearn's ar1 up to 0.089), but with a bias that depends on the design
# (an AR model smooths the 1/f spectrum near slow designs' frequencies): over 80,000 voxels a cell, 0.0457-0.0524,
# 8 of 16 cells outside the 95% interval. With the correction, and sigma^2 over n - rank - p (voxfit.core.ar.
# estimation_terms), every cell is inside: 0.0487-0.0510; on parcel-like noise 0.0478-0.0510 against 0.0419-0.0545
# (validation/results/noise_realistic.md, "The long-lag correction" and "The AR coefficients' degrees of
# freedom"). Its cost grows with the order: AR(8) about 20x ar1's
# (benchmarks/bench_ar_orders.py), most of it the variance and degrees-of-freedom terms of the estimated model; the
# correction adds about 0.1-0.9 s (2,000 sampled voxels, 300-1,200 scans).
FMRI_NOISE = "ar12+lags"
SCANS_PER_LAG = 70
LONG_LAGS = "+lags"  # arp+lags: AR(p) per voxel and the pooled long-lag correction (voxfit.core.long_lags)


def fmri_noise(n_scans: int) -> str:
    """The default noise model of an fMRI run of `n_scans` scans: AR(n_scans // SCANS_PER_LAG) per voxel, at least
    AR(1) and at most :data:`FMRI_NOISE`."""
    return f"ar{max(1, min(noise_order(FMRI_NOISE), int(n_scans) // SCANS_PER_LAG))}{LONG_LAGS}"


def long_lags(noise: str) -> bool:
    """Whether `noise` (a valid model) is AR(p) per voxel with the pooled long-lag correction (``arp+lags``)."""
    return str(noise).lower().endswith(LONG_LAGS)


MAX_AR_ORDER = 16  # of the per-voxel AR models --noise accepts
PER_VOXEL_MODELS = ("film", "arma11", "auto")  # per-voxel noise models other than AR(p) (film also streams)
POOLED_MODELS = ("ar1-global", "fast")  # SPM12's ReML covariances pooled over voxels, fitted in memory
NOISE_CHOICES = (
    "ols",
    *(f"ar{p}" for p in range(1, MAX_AR_ORDER + 1)),
    *(f"ar{p}{LONG_LAGS}" for p in range(1, MAX_AR_ORDER + 1)),
    *POOLED_MODELS,
    *PER_VOXEL_MODELS,
)


def noise_order(noise: str) -> int:
    """0 for ``ols``, p for ``arp`` and ``arp+lags`` (1 to MAX_AR_ORDER), -1 for SPM's pooled models (``ar1-global``,
    ``fast``), -2 for the other per-voxel models (``film``, ``arma11``, ``auto``); anything else is an InputError."""
    text = str(noise).lower()
    if text == "ols":
        return 0
    if text in POOLED_MODELS:
        return -1
    if text in PER_VOXEL_MODELS:
        return -2
    order = text[2:].removesuffix(LONG_LAGS)
    if text.startswith("ar") and order.isdigit() and 1 <= int(order) <= MAX_AR_ORDER:
        return int(order)
    others = ", ".join(POOLED_MODELS + PER_VOXEL_MODELS)
    raise InputError(
        f"`noise` must be ols, ar1 .. ar{MAX_AR_ORDER} (with or without {LONG_LAGS}), {others}; got {noise!r}."
    )


def first_level_needs(noise: str, scaling: str, reader) -> Needs:
    """What a first-level fit allows: the workers read columns with OLS or AR(p) per voxel and no scaling; data
    over the cap stream with those and with film (its spatial step runs on the per-voxel sums, between the pass
    and the fit). Scaling and SPM's pooled models need whole scans in memory; arma11's REML and auto's orders
    need whole series."""
    simple = noise_order(noise) >= 0 and scaling == "none"
    need = cap_holding(data_bytes(reader.n_scans, reader.geometry.n_elements, reader.dtype.itemsize))
    series = str(noise).lower() in ("arma11", "auto") and scaling == "none"
    return Needs(
        by_columns=simple,
        one_pass=simple or (str(noise).lower() == "film" and scaling == "none"),
        by_series=series,
        too_large=(
            f"data larger than half of --max-memory (beside the interpreter's {size_text(reserved_bytes())}) "
            "are fitted in one pass with --noise ols, ar1 .. ar16 or film and --scaling none, or by blocks of "
            "voxels read from an uncompressed file (.nii, CIFTI, .npy, Zarr, HDF5) with arma11 and auto"
            + (" (gunzip the run)" if series else "")
            + f"; for ar1-global, fast or scaling give --max-memory {size_text(need)} or more."
        ),
    )


def choose_route(reader, execution: Execution, needs: Needs = Needs(), streaming: bool | None = None) -> Route:
    """The route of a fit of the data behind `reader`.

    With a Dask scheduler, on the CPU, data the model lets be read by columns go to the workers when their
    format allows it (uncompressed NIfTI or CIFTI, .npy, Zarr, HDF5); otherwise data larger than the cap (see
    :meth:`~voxfit._execution.Budgets.streams`), or any data with ``streaming=True``, are streamed when the
    model allows it, and refused when it does not say otherwise (`needs.too_large`); the rest are fitted in
    memory. A streamed pass runs on this machine's CPU: a scheduler or a device with it is refused. Over the cap,
    models that need whole series (`needs.by_series`), and any model that allows columns on files that hold
    each element's series together (CIFTI), read blocks of series by columns in this process.
    """
    if execution.scheduler is not None and needs.by_columns and not execution.on_device and not streaming:
        if reader.column_source() is not None:
            return Route(WORKERS, reader, "a Dask scheduler, and files the workers can read by columns")
    if streaming is None:
        streaming = execution.budgets.streams(reader.n_scans, reader.geometry.n_elements, reader.dtype.itemsize)
        if streaming and not needs.one_pass and needs.too_large is None:
            return Route(MEMORY, reader, "over half the cap, but the model needs its data in memory")
    if not streaming:
        return Route(MEMORY, reader, "the data fit in the memory cap" if execution.max_memory else "no memory cap")
    if execution.scheduler is not None or execution.on_device:
        raise InputError(
            "data larger than --max-memory are read in one sequential pass on the CPU; drop "
            "--scheduler and --device, or raise --max-memory."
        )
    # files that hold each element's series together (CIFTI) are read once by blocks of series, for any model
    # that allows columns: a pass of slabs of scans would read the whole file again for every slab
    series = needs.by_series or (needs.by_columns and getattr(reader, "series_major", False))
    if series and reader.column_source() is not None:
        return Route(COLUMNS, reader, "over half the memory cap: blocks of voxels' series read by columns")
    if not needs.one_pass:
        raise InputError(needs.too_large or "this model needs its data in memory; raise --max-memory.")
    return Route(STREAM, reader, "over half the memory cap: one pass keeping per-voxel sums")
