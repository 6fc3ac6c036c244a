"""Masks: which elements of each scan are fitted, and the data of those elements gathered in one pass.

Explicit masks may come from any readable file of the data's geometry (non-zero, finite values are in).
The automatic mask keeps elements that are finite in every scan and not constant over time; with
`threshold` (SPM's relative threshold, e.g. 0.8) it also requires, in every scan, a value above
``threshold`` times that scan's global mean (SPM's global: the mean of values above 1/8 of the scan's mean).

For compressed files the data can only be read front to back, so the automatic mask is found in the same
pass that gathers the data: elements that are finite, non-zero (and above the threshold) in the first
scan are gathered, and the final mask is taken from them after the last scan. Elements that are zero in
the first scan but vary later, rare outside zero-filled background, are read in a second pass. Once no other
element can still be kept (each has failed a check that stays failed: as a rule the background, below the
threshold in the first scan), the later scans are checked on the gathered elements alone; their globals still
come from whole scans.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .._array import held_as_series, type_name
from .._memory import check_memory
from .._progress import Progress
from ..exceptions import InputError
from .geometry import Geometry
from .memory import is_image, source_label
from .readers import DEFAULT_SLAB_BYTES, apply_scale, open_map

__all__ = [
    "SPM_MASK_THRESHOLD",
    "AutoMask",
    "Masker",
    "ScanGlobals",
    "check_mask",
    "explicit_mask",
    "gather",
    "gather_auto",
    "global_sums_block",
    "keep_columns",
    "load_mask",
    "mask_block",
    "resolve_mask_threshold",
    "spm_globals",
]

SERIES_TILE_BYTES = 1 << 20  # of data held as series, checked or moved at a time (see AutoMask.add_series)


@dataclass(frozen=True, eq=False)
class Masker:
    """Maps between a geometry's elements and the fitted voxels: ``(n, V)`` data <-> maps in the input's format."""

    geometry: Geometry
    mask: NDArray[np.bool_]

    def __post_init__(self) -> None:  # its own read-only copy: the voxels' indices are found once (see inverse)
        mask = np.array(self.mask, dtype=bool)
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)

    @property
    def index(self) -> NDArray[np.intp]:
        """Element index of each voxel (column of the data)."""
        return self._index.copy()

    @functools.cached_property
    def _index(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.mask)

    @property
    def n_voxels(self) -> int:
        return self._index.size

    def inverse(self, values: NDArray, fill=np.nan) -> NDArray:
        """(k, n_elements) maps from (V,) or (k, V) values, `fill` outside the mask (NaN for float maps), the
        elements in the geometry's order: a volume's x fastest, as NIfTI stores it (``maps[0].reshape(shape,
        order="F")`` is the 3-D map; numpy's default order scrambles it). The values
        are put at the voxels' element indices, found once (a boolean mask finds them again at every map: a
        map of 230k voxels of a 2 mm MNI grid took 4.3 ms, 0.8 ms so)."""
        values = np.atleast_2d(np.asarray(values))
        if values.shape[1] != self.n_voxels:
            raise InputError(f"`values` have {values.shape[1]} voxels but the mask has {self.n_voxels}.")
        if values.dtype.kind == "f":  # float32 maps, unless float32 cannot hold a finite value (then float64)
            values = values.astype(np.float32 if _fits_float32(values) else np.float64, copy=False)
        out = np.full((values.shape[0], self.geometry.n_elements), fill, dtype=values.dtype)
        out[:, self._index] = values
        return out

    def write(self, path, values: NDArray, names: list[str], intent: tuple | None = None) -> None:
        """Write (V,) or (k, V) values as maps in the input's format and geometry (`intent`: a statistic's, as
        ``Geometry.write`` takes it)."""
        self.geometry.write(path, self.inverse(values), names, intent)

    def write_mask(self, path) -> None:
        self.geometry.write(path, self.mask[None, :].astype(np.uint8), ["mask"])


def _fits_float32(values: NDArray) -> bool:
    """Whether float32 holds every finite value to its own precision: none beyond float32's largest, and none
    below its smallest normal number but 0 (p values of large statistics, 1e-60, would be written as 0 or
    as subnormals of a few digits; their maps are written in float64)."""
    magnitude = np.abs(values)
    finite = np.isfinite(magnitude)
    f32 = np.finfo(np.float32)
    big = np.max(magnitude, initial=0.0, where=finite)
    small = np.min(magnitude, initial=np.inf, where=finite & (magnitude > 0))
    return bool(big <= f32.max and small >= f32.tiny)


def load_mask(path, geometry: Geometry) -> NDArray[np.bool_]:
    """A boolean mask (n_elements,) from a file (or a nibabel image in memory) of the data's geometry; refuses
    another geometry or an empty mask."""
    reader = open_map(path)
    label = source_label(path)
    geometry.check_same(reader.geometry, f"mask {label}")
    if reader.n_scans != 1:
        raise InputError(f"mask {label} has {reader.n_scans} volumes; a mask is a single 3-D image or map.")
    with contextlib.closing(reader.iter_scans()) as scans:  # (closed here: see second_level's _plan)
        # the values the file means, its scale factors applied: nibabel saves a 0/1 float mask as int16 with
        # scl_inter 0.5, so that its zeros are stored as -32768 (every voxel was in the mask, exit 0)
        values = apply_scale(next(scans)[1][:1], reader.scale)[0]
        mask = np.isfinite(values) & (values != 0)
    if not mask.any():
        raise InputError(f"mask {label} selects no voxel (every value is zero or not finite).")
    return mask


def explicit_mask(mask, geometry: Geometry) -> NDArray[np.bool_]:
    """The elements an explicit `mask` selects: a file or nibabel image of the data's geometry (see
    :func:`load_mask`), a tuple of them (the elements within all: FEAT folders' masks), or a boolean array of the
    elements (a volume in its 3-D shape)."""
    if isinstance(mask, tuple):
        check_mask(mask)
        inside = np.logical_and.reduce([load_mask(m, geometry) for m in mask])
        if not inside.any():
            more = f" and {len(mask) - 3} more" if len(mask) > 3 else ""
            raise InputError(
                f"the masks {', '.join(source_label(m) for m in mask[:3])}{more} have no element in common."
            )
        return inside
    if not isinstance(mask, np.ndarray):
        check_mask(mask)
        return load_mask(mask, geometry)
    out = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if out.size != geometry.n_elements:
        raise InputError(f"`mask` has {out.size} elements but each scan has {geometry.n_elements}.")
    if not out.any():
        raise InputError("`mask` selects no voxel.")
    return out


def check_mask(mask, name: str = "mask") -> None:
    """Refuse a `mask` that is not None, a path, a nibabel image, a tuple of paths or images (their intersection)
    or a numpy array, naming the type received."""
    if mask is None or isinstance(mask, (str, os.PathLike, np.ndarray)) or is_image(mask):
        return
    if isinstance(mask, tuple) and mask and all(isinstance(m, (str, os.PathLike)) or is_image(m) for m in mask):
        return
    raise InputError(f"`{name}` must be a path to an image, a nibabel image or a boolean array; got {type_name(mask)}.")


def gather(
    reader,
    index: NDArray[np.intp],
    progress: bool | None = None,
    globals_=None,
    observe=None,
    slab_bytes: int = DEFAULT_SLAB_BYTES,
    map_files: bool = False,
) -> NDArray:
    """The data of elements `index`, (n_scans, len(index)) in the reader's raw dtype, in one sequential pass
    (which also gives each whole scan to `globals_`, a :class:`ScanGlobals`, and, after each slab, the array
    being filled and the number of scans in it so far to ``observe(out, stop)``, when given). A reader that
    writes its scans into an array itself (``scans_into``: CIFTI) fills `out` directly: with every element, or
    with the elements `index` (increasing) when no whole scan is wanted (no `globals_`); as each element's
    series (an F-ordered `out`) when its files hold them so (``series_major``) and no whole scan is wanted; with
    `map_files`, as the file's own pages where one file holds every element's series as wanted (see
    :func:`_scans_array`). Other readers give slabs of at most `slab_bytes` (a .nii.gz three of them at once;
    with `map_files`, an uncompressed NIfTI run's are views of its file's map: see :func:`_scan_slabs`)."""
    _check_gathered(reader, index.size)
    into, n_elements = getattr(reader, "scans_into", None), reader.geometry.n_elements
    every = _every_column(index, n_elements)
    direct = into is not None and (every or (globals_ is None and _increasing_within(index, n_elements)))
    out = _scans_array(reader, index.size, by_series=direct and globals_ is None, map_files=map_files)
    bar = Progress("reading", reader.n_scans, enabled=progress)
    slabs = into(out, None if every else index) if direct else _scan_slabs(reader, slab_bytes, map_files)
    for start, block in slabs:
        if start == 0 and not direct:  # (once the read has begun: taking the pages is the gather's work)
            _take_pages(out, reader)
        if globals_ is not None:
            globals_.add(start, block)
        if not direct:
            _take_columns(block, index, out[start : start + block.shape[0]])
        if observe is not None:
            observe(out, start + block.shape[0])
        bar.update(start + block.shape[0])
    bar.close()
    return out


def _take_pages(out: NDArray, reader) -> NDArray:
    """`out`, into which the scans of `reader` are gathered, with its pages taken now, all at once (written with
    zeros), when the reader's files are NIfTI known to be uncompressed (``compressed`` False). Its scans then come
    quickly, and a gather that faults the array's pages in as it goes was slower: whole fits of a 2 mm MNI .nii
    run, 0.93 against 0.975 s with a mask, 1.24 against 1.34 s with the automatic one (medians of 8). A compressed
    file's scans come at the pace of its decompression, which the pages' faults delay less than writing them first
    (1.81 against 1.74 s); other readers (chunked stores, arrays) are left as they were."""
    if getattr(reader, "compressed", True) is False:
        out.fill(0)
    return out


def _scan_slabs(reader, slab_bytes: int, map_files: bool):
    """The reader's slabs of scans: with `map_files`, as views of its files' own pages where it has them
    (``NiftiReader.mapped_scans``, ``VolumeListReader.mapped_scans``: an uncompressed NIfTI run, or run of 3-D
    scans, gathered without copying its bytes first); else read (``iter_scans``)."""
    mapped = getattr(reader, "mapped_scans", None)
    slabs = mapped(slab_bytes) if map_files and mapped is not None else None
    return reader.iter_scans(slab_bytes) if slabs is None else slabs


def _scans_array(reader, n_columns: int, by_series: bool, map_files: bool = False) -> NDArray:
    """An empty (n_scans, n_columns) array of the reader's dtype for its data: F-ordered (each column's series
    together) where the reader writes its files' series into it as stored (``series_major``: a CIFTI run read in
    0.1 s, against 0.35 s transposed into scans), and `by_series` allows it (no whole scan is wanted); else C.
    With `map_files`, when every column is wanted and one file holds them all as wanted, the array is that
    file's own pages instead, holding the data already (``mapped_series``: 0.03 s)."""
    if by_series and getattr(reader, "series_major", False):
        every = n_columns == reader.geometry.n_elements
        mapped = reader.mapped_series() if map_files and every else None
        return mapped if mapped is not None else np.empty((n_columns, reader.n_scans), dtype=reader.dtype).T
    return np.empty((reader.n_scans, n_columns), dtype=reader.dtype)


def _series_per_tile(data: NDArray) -> int:
    """How many of the (n, m) data's columns' series make a tile of SERIES_TILE_BYTES (at least one)."""
    return max(1, SERIES_TILE_BYTES // max(1, data.shape[0] * data.itemsize))


def _every_column(index: NDArray, n_columns: int) -> bool:
    return index.size == n_columns and np.array_equal(index, np.arange(n_columns))


def _increasing_within(index: NDArray, n_columns: int) -> bool:
    return index.size == 0 or (index[0] >= 0 and index[-1] < n_columns and bool(np.all(np.diff(index) > 0)))


def _take_columns(block: NDArray, index: NDArray, out: NDArray) -> None:
    """``out[:] = block[:, index]``: a plain copy when `index` keeps every column in order (a CIFTI run's
    grayordinates, a mask of the whole grid), 10x faster than numpy's take of each element. `index` holds
    valid columns (a mask's): taken with ``mode="wrap"``, as numpy's default mode takes into a temporary and
    copies it to `out` (to leave `out` untouched if an index is out of bounds): 37 -> 26 ms a study run."""
    if _every_column(index, block.shape[1]):
        np.copyto(out, block)
    else:
        np.take(block, index, axis=1, out=out, mode="wrap")


def _check_gathered(reader, n_columns: int) -> None:
    """The data of `n_columns` elements of every scan, gathered in memory, fit the memory there is (the number
    of scans is a header's claim until the data are read)."""
    nbytes = int(reader.n_scans) * int(n_columns) * np.dtype(reader.dtype).itemsize
    source = reader.paths[0] if reader.paths else "the data in memory"
    check_memory(
        nbytes,
        f"{source}: {reader.n_scans:,} scans x {n_columns:,} voxels in memory",
        None,
        "Give --max-memory (`max_memory`) to stream the data from disk, or a smaller mask.",
    )


def spm_globals(scans: NDArray) -> NDArray[np.float64]:
    """SPM's global mean of each scan (``spm_global``): the mean of the values above 1/8 of the mean of the
    scan's finite values. Sums in float64 without a float64 copy of the scans; compared as in float64."""
    out = np.empty(len(scans))
    for i, scan in enumerate(scans):
        total = scan.sum(dtype=np.float64)
        if np.isfinite(total):  # every value finite (one that is not makes the sum NaN or infinite)
            values = scan
            mean = total / scan.size
        else:
            finite = np.isfinite(scan)
            values = scan[finite]
            mean = values.mean(dtype=np.float64) if values.size else np.nan
        above = values[greater(values, mean / 8)]
        out[i] = above.mean(dtype=np.float64) if above.size else np.nan
    return out


def greater(values: NDArray, cut: float) -> NDArray[np.bool_]:
    """``values > cut`` as float64 compares them; float32 values are compared in float32 (twice as fast), with
    `cut` rounded down to the float32 just below it where it is not one: for every float32 x, x > cut exactly
    when x is above that float32."""
    cut = np.float64(cut)
    if values.dtype != np.float32:
        return values > cut
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, rounded down as any other
        below = np.float32(cut)
    if below > cut:
        below = np.nextafter(below, np.float32(-np.inf))
    return values > below


SPM_MASK_THRESHOLD = 0.8  # spm_defaults: defaults.mask.thresh, SPM's relative threshold for fMRI


def resolve_mask_threshold(value, geometry: Geometry, explicit: bool = False) -> float | None:
    """The automatic mask's relative threshold: ``"auto"`` (the default of first-level fits) is SPM's 0.8 for
    volumes and none for surfaces, CIFTI and arrays; 0 or None is none; an explicit mask takes none."""
    if isinstance(value, str) and value == "auto":
        return SPM_MASK_THRESHOLD if geometry.kind == "volume" and not explicit else None
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not (np.isfinite(number) and number >= 0):
        raise InputError(f"`mask_threshold` must be 'auto', a number >= 0 or None; got {value!r}.")
    if number and explicit:
        raise InputError("`mask_threshold` applies to the automatic mask only; it cannot be combined with `mask`.")
    return number or None


class ScanGlobals:
    """SPM's global of every scan (``spm_global``: the mean of the finite values above 1/8 of the scan's mean),
    over the whole scan whatever the mask, collected as the scans are read; `scale` (slope, intercept) turns
    raw values into intensities. SPM's global scaling divides by these, so betas and contrast estimates do
    not depend on the analysis mask."""

    def __init__(self, n_scans: int, scale=None):
        self.scale = scale
        self.values = np.full(n_scans, np.nan)

    def add(self, start: int, block: NDArray) -> NDArray[np.float64]:
        """Record the globals of the scans `block` (k, n_elements) from scan `start` on; returns them."""
        self.values[start : start + len(block)] = scaled_globals(block, self.scale)
        return self.values[start : start + len(block)]


def scaled_globals(block: NDArray, scale=None) -> NDArray[np.float64]:
    """:func:`spm_globals` of the whole scans `block` (k, n_elements) as the fit sees them (`scale`: slope,
    intercept), a scan at a time: a scaled copy of one scan only."""
    return np.array([spm_globals(apply_scale(scan[None], scale))[0] for scan in block])


class AutoMask:
    """The automatic mask found scan by scan (see the module docstring): ``candidates`` from the first scan
    (finite and non-zero, above `threshold` times its global), then ``mask()``: finite, varying and above the
    threshold in every scan (and non-zero in every scan with `nonzero`, the group-level rule). `scale`
    (slope, intercept) turns the values given to :meth:`add` into intensities for the threshold only."""

    def __init__(
        self, n_elements: int, floats: bool, threshold: float | None = None, scale=None, nonzero: bool = False
    ):
        self.floats, self.threshold, self.scale, self.nonzero = floats, threshold, scale, nonzero
        self.first = self.candidates = None
        self.finite = np.ones(n_elements, dtype=bool)
        self.varies = np.zeros(n_elements, dtype=bool)
        self.above = np.ones(n_elements, dtype=bool)
        self.nonzero_all = np.ones(n_elements, dtype=bool)
        self.whole = True  # whether add() is given whole scans (see restricted)

    def settled(self) -> bool:
        """Whether no element but the first scan's candidates can still be kept: each other one has failed a
        check that stays failed (not finite, not above the threshold, or zero with `nonzero`) in the scans seen."""
        return not (~self.candidates & self.finite & self.above & self.nonzero_all).any()

    def restricted(self, index: NDArray[np.intp]) -> AutoMask:
        """The mask of the elements `index` only, as far as this one has seen: for the later scans when only
        they can still be kept (:meth:`settled`), given those elements' values and the whole scans' globals."""
        sub = AutoMask(index.size, self.floats, self.threshold, self.scale, self.nonzero)
        sub.first, sub.candidates = self.first[index], self.candidates[index]
        for name in ("finite", "varies", "above", "nonzero_all"):
            setattr(sub, name, getattr(self, name)[index])
        sub.whole = False
        return sub

    def add(self, block: NDArray, columns: NDArray | None = None, globals_: NDArray | None = None) -> None:
        """Check the next scans: `block` (k, n_elements), or (k, len(columns)) holding those elements only
        (after the first scans; not with a threshold or `nonzero`, which look at whole scans). `globals_`: the
        scans' globals when the caller has them (see :class:`ScanGlobals`), not computed again."""
        if self.threshold is not None and globals_ is None:
            if not self.whole:
                raise ValueError("a restricted AutoMask's threshold needs the globals of the whole scans.")
            globals_ = scaled_globals(block, self.scale)
        if columns is not None and (self.first is None or self.threshold is not None or self.nonzero):
            raise ValueError("AutoMask.add(columns=...) needs whole scans first, and no threshold or `nonzero`.")
        if self.first is None:
            first = self.first = np.array(block[0])
            self.candidates = np.isfinite(first) & (first != 0) if self.floats else first != 0
            if self.threshold is not None:
                self.candidates &= greater(apply_scale(first, self.scale), self.threshold * globals_[0])
        part = slice(None) if columns is None else columns
        finite, varies = _finite_and_varying(block, self.first[part], self.floats)
        self.finite[part] &= finite
        self.varies[part] |= varies
        if columns is not None:
            return
        if self.nonzero:
            self.nonzero_all &= (block != 0).all(axis=0)
        if self.threshold is not None:
            for scan, g in zip(block, globals_):  # one at a time: scaled copies of one scan only
                self.above &= greater(apply_scale(scan, self.scale), self.threshold * g)

    def add_series(self, data: NDArray) -> None:
        """Check every scan of `data` (n_scans, n_elements) held as each element's series (F-ordered): the first
        scan, then tiles of whole series, which lie together (scan by scan, each check would stride across all
        of them: 0.5 s against 0.1 s for a 91k x 1200 CIFTI run). Not with a threshold or `nonzero`."""
        self.add(data[:1])
        step = _series_per_tile(data)
        for a in range(0, data.shape[1], step):
            self.add(data[1:, a : a + step], columns=slice(a, a + step))

    def add_squares(self, columns: NDArray, squares: NDArray) -> None:
        """Check `columns` from their sums over all scans of ``(value - first scan's value)^2`` in float64
        (float32 values: no finite value overflows): finite where the sum is, varying where it is positive."""
        self.finite[columns] &= np.isfinite(squares)
        self.varies[columns] |= squares > 0

    def mask(self) -> NDArray[np.bool_]:
        return self.finite & self.varies & self.above & self.nonzero_all


def _empty_mask_hint(reader, threshold, maps: bool = False) -> str:
    """The end of the message of an empty automatic mask: why, where it can be told, and what to do: a run of one
    scan (nothing varies), a scan lost in conversion, every scan a copy of the first (:func:`_scan_faults`), else
    with a threshold (a few bright voxels can raise a scan's global above the brain's) a mask or a lower
    threshold. `maps`: a group's maps, said as maps."""
    if reader.n_scans == 1:
        return ": the run has one scan, in which nothing can vary; give a run of several scans"
    blank, same = _scan_faults(reader, "map" if maps else "scan")
    if blank:
        return blank
    if same:  # (a group's maps copied from one: a tester's, said in first-level words)
        return ": every image holds the same values (copies of one file?); give each scan's, or each subject's, own"
    if threshold is None:
        return ""
    return (
        "; give a mask (--mask, `mask`) or a lower threshold (--mask-threshold, `mask_threshold`; 0 keeps every "
        "finite voxel that varies)"
    )


def _scan_faults(reader, scan: str = "scan") -> tuple[str, bool]:
    """Where the automatic mask came out empty, in one more pass over the data (on this error only): the first scan
    that is all zeros or holds no finite value, as the message's end (a scan lost in conversion empties the mask of
    the whole run), or nothing; and whether every scan (map) equals the first, NaN where it is NaN."""
    first, same = None, True
    for start, block in reader.iter_scans():
        with np.errstate(invalid="ignore"):
            blank = ~(np.isfinite(block) & (block != 0)).any(axis=1)
        if blank.any():
            k = start + int(np.argmax(blank))
            paths = getattr(reader, "paths", ())
            where = f" ({paths[k]})" if len(paths) == reader.n_scans and reader.n_scans > 1 else ""
            return f": {scan} {k + 1}{where} is all zeros or holds no finite value; restore it", False
        if first is None:
            first = np.array(block[0])
        if same:
            equal = block == first
            same = bool((equal | (np.isnan(block) & np.isnan(first)) if block.dtype.kind == "f" else equal).all())
    return "", same and first is not None


def _finite_and_varying(block: NDArray, first: NDArray, floats: bool):
    """Per column of `block` (k, m): whether all its values are finite (True for integers), and whether any
    differs from `first` (m,).

    Columns held together (series, as CIFTI runs are read): from the columns' minima and maxima, which carry a
    NaN through, one pass over the block for each; testing every value makes and reduces a boolean copy of the
    block for each check (a 91k x 1200 CIFTI run's series: 34 ms against 81 ms). A value differs from `first`
    exactly when the column's minimum or maximum does; -0.0 and 0.0 are equal in both. Rows (scans): every
    value tested, which is quicker there for slabs of a few scans (one scan of 902k voxels: 0.27 ms against
    0.72 ms)."""
    if block.shape[0] == 0:
        return True, False
    if block.shape[0] > 1 and block.strides[0] < block.strides[1]:
        low, high = block.min(axis=0), block.max(axis=0)
        finite = np.isfinite(low) & np.isfinite(high) if floats else True
        return finite, (low != first) | (high != first)
    finite = np.isfinite(block).all(axis=0) if floats else True
    return finite, (block != first).any(axis=0)


def mask_block(source, a: int, b: int, nonzero: bool = False, cut: NDArray | None = None) -> NDArray[np.bool_]:
    """Which columns a:b of a :class:`~voxfit.io.ColumnSource` the automatic mask keeps, as the in-memory
    path does: finite and not constant in the stored values, with `nonzero` (the group rule) non-zero as the
    fit sees them (scale factors applied), and with `cut` (one value per scan: the relative threshold times
    the scan's global) above it, in every scan or map. Run where the data are (a Dask task)."""
    raw = source.raw(slice(a, b))
    auto = AutoMask(b - a, raw.dtype.kind == "f")
    auto.add(raw)
    keep = auto.mask()
    if nonzero or cut is not None:
        values = source.scaled(raw)
        keep &= (values != 0).all(axis=0) if nonzero else (values > cut[:, None]).all(axis=0)
    return keep


def global_sums_block(source, a: int, b: int, cut: NDArray | None = None) -> NDArray[np.float64]:
    """Per scan, the sum and count of the finite values of columns a:b as the fit sees them (with `cut`, one
    value per scan: of the values above it), (n_scans, 2): the parts of SPM's globals (see
    :func:`spm_globals`) that Dask tasks compute where the data are, added up by the client."""
    values = source.scaled(source.raw(slice(a, b)))
    keep = np.isfinite(values) if cut is None else np.isfinite(values) & (values > cut[:, None])
    return np.stack([np.where(keep, values, 0).sum(axis=1, dtype=np.float64), keep.sum(axis=1)], axis=1)


def keep_columns(data: NDArray, index: NDArray[np.intp]) -> NDArray:
    """``data[:, index]`` (`index` increasing) for a C- or F-contiguous (n, m) array that the caller gives up,
    without a second copy of the data: each row (each column of an F-ordered array) is moved, in order, to the
    front of the same buffer (row t lands at or before where row t was, so no row is overwritten before it is
    read). The result has `data`'s order and shares its buffer; the peak memory is one row more, not twice the
    data."""
    n, m = data.shape
    k = index.size
    if k == m:
        return data
    if not data.flags.writeable and held_as_series(data):
        return _kept_series_copied(data, index)
    if not data.flags.writeable or not (data.flags.c_contiguous or data.flags.f_contiguous):
        return np.take(data, index, axis=1)
    if not data.flags.c_contiguous:  # each column's series together: the kept ones moved to the front
        series = data.T
        step = _series_per_tile(data)  # series a move (a copy taken, then written)
        for j in range(0, k, step):
            moved = index[j : j + step]
            series[j : j + moved.size] = series[moved]
        return series[:k].T
    flat = data.reshape(-1)
    for t in range(n):
        flat[t * k : (t + 1) * k] = data[t, index]  # (a copy of the row's kept values, then written)
    return flat[: n * k].reshape(n, k)


def _kept_series_copied(data: NDArray, index: NDArray[np.intp]) -> NDArray:
    """keep_columns of read-only series (F-ordered: a file's map, ``CiftiReader.mapped_series``): the kept
    series copied out, in order, a tile at a time; the pages of a file's map that the tiles have passed are
    released as they go (``MADV_DONTNEED``: read again from the file if touched), so that the peak memory is the
    kept data and a tile, not twice the data."""
    series = data.T
    out = np.empty((index.size, data.shape[0]), dtype=data.dtype)
    pages = _file_map(data)
    # where the series start in the map, and the map's pages released so far (those before this offset)
    first = series.ctypes.data - np.frombuffer(pages, dtype=np.uint8).ctypes.data if pages is not None else 0
    released = first // mmap.PAGESIZE * mmap.PAGESIZE
    step = _series_per_tile(data)
    for j in range(0, index.size, step):
        moved = index[j : j + step]
        np.take(series, moved, axis=0, out=out[j : j + moved.size], mode="wrap")  # (valid: see _take_columns)
        end = (first + (moved[-1] + 1) * series.strides[0]) // mmap.PAGESIZE * mmap.PAGESIZE
        if pages is not None and end > released:  # every page before the end of the last series copied: done with
            pages.madvise(mmap.MADV_DONTNEED, released, end - released)
            released = end
    return out.T


def _file_map(data: NDArray) -> mmap.mmap | None:
    """The memory map of a file that `data` is a view of, if any."""
    base = data
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return base


def gather_auto(
    reader,
    threshold: float | None = None,
    progress: bool | None = None,
    globals_=None,
    map_files: bool = False,
    maps: bool = False,
):
    """Automatic mask and the masked data in one pass (see the module docstring), each whole scan also given to
    `globals_` (a :class:`ScanGlobals`) when given. Returns ``(data, mask)``; `maps`: a group's maps (its errors
    say maps, not scans over time). A reader that writes its scans
    into an array itself (``scans_into``: CIFTI, whose grayordinates are the brain's already) has every element
    gathered, not only the first scan's candidates (with `map_files`, see :func:`gather`)."""
    n_elements = reader.geometry.n_elements
    auto = AutoMask(n_elements, reader.dtype.kind == "f", threshold, reader.scale)
    into = getattr(reader, "scans_into", None)
    gathered = out = cand_index = None
    if into is not None:
        gathered = np.ones(n_elements, dtype=bool)
        _check_gathered(reader, n_elements)
        out = _scans_array(reader, n_elements, globals_ is None and threshold is None, map_files)
    series = out is not None and not out.flags.c_contiguous  # each element's series together: checked after
    bar = Progress("reading", reader.n_scans, enabled=progress)
    kept = None  # once only the first scan's candidates can be kept: their mask, checked on their values only
    # (read, not mapped, even with `map_files`: the checks pass over each scan several times, and a 1.65 GB run's
    # automatic mask took as long either way, 1.05-1.48 s against 1.09-1.55 s)
    for start, block in reader.iter_scans() if into is None else into(out):
        scans = None if globals_ is None else globals_.add(start, block)
        if kept is not None:
            rows = out[start : start + block.shape[0]]
            _take_columns(block, cand_index, rows)
            if scans is None and threshold is not None:
                scans = scaled_globals(block, reader.scale)
            kept.add(rows, globals_=scans)
        elif not series:
            auto.add(block, globals_=scans)
            if into is None:
                if out is None:
                    gathered = auto.candidates
                    cand_index = np.flatnonzero(gathered)
                    _check_gathered(reader, cand_index.size)
                    out = _take_pages(np.empty((reader.n_scans, cand_index.size), dtype=reader.dtype), reader)
                _take_columns(block, cand_index, out[start : start + block.shape[0]])
                if auto.settled():  # (with a threshold, as a rule: the background fails it in the first scan)
                    kept = auto.restricted(cand_index)
        bar.update(start + block.shape[0])
    bar.close()
    if series:
        auto.add_series(out)
    mask = auto.mask()
    if kept is not None:
        mask[:] = False
        mask[cand_index] = kept.mask()
    if not mask.any():
        why = "above the intensity threshold, " if threshold is not None else ""
        rule = "and not the same in every map" if maps else f"{why}and not constant over time in every scan"
        raise InputError(
            f"the automatic mask is empty: no voxel is finite, {rule}{_empty_mask_hint(reader, threshold, maps)}."
        )
    data = keep_columns(out, np.flatnonzero(mask[gathered]))  # in out's order
    missed = np.flatnonzero(mask & ~gathered)
    if missed.size:  # zero in the first scan but varying later: a second pass for those only
        extra = gather(reader, missed, progress)
        order = np.argsort(np.concatenate([np.flatnonzero(mask & gathered), missed]), kind="stable")
        data = np.take(np.concatenate([data, extra], axis=1), order, axis=1)
    return data, mask
