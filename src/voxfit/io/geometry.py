"""Where the values of a data set live, and how maps go back there: volumes, surfaces, CIFTI, plain arrays.

A geometry knows how many elements one scan has (voxels of the whole volume in NIfTI's on-disk order,
x fastest; vertices; grayordinates; columns), how to check that a mask or another file has the same
geometry, and how to write maps (k x n_elements) in the input's format.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from ..exceptions import InputError
from ._gzip import open_gzip

__all__ = [
    "Geometry",
    "VolumeGeometry",
    "SurfaceGeometry",
    "CiftiGeometry",
    "ArrayGeometry",
    "most_common_geometry",
    "save_nifti",
]

AFFINE_ATOL = 1e-3  # mm: affines that differ by less are the same grid


def save_nifti(img, path) -> None:
    """Save a NIfTI image as ``nib.save`` does, compressed with the fastest gzip where `path` ends in .gz (ISA-L is
    ~4x faster than nibabel's zlib at level 1: the demo's 55 MB run took 0.32 s against 1.28 s). nibabel writes
    straight into the compressed stream: a 97 x 115 x 97 float32 map took 7.0 ms when the file's bytes were built
    first (``to_bytes``: a copy of the image, in a growing buffer), 4.9 ms so. The same image gives the same file
    each time; the compressed bytes (not the image's) depend on how nibabel splits its writes, so a file and its
    digest may differ from those an earlier voxfit or nibabel wrote."""
    path = Path(path)
    if path.name.endswith(".gz"):
        with open_gzip(path, "wb", compresslevel=1) as fh:
            img.to_stream(fh)
    else:
        nib.save(img, str(path))


class Geometry:
    """Base class; see the subclasses."""

    kind: str
    extension: str

    @property
    def n_elements(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_same(self, other: Geometry, what: str) -> None:
        if type(other) is not type(self):
            raise InputError(f"{what} is a {other.kind} but the data are a {self.kind}; they must share one geometry.")
        self._check_same(other, what)

    def _check_same(self, other, what: str) -> None:
        if other.n_elements != self.n_elements:
            raise InputError(f"{what} has {other.n_elements} elements but the data have {self.n_elements}.")

    def write(self, path: Path, maps: NDArray, names: list[str], intent: tuple | None = None) -> None:
        """`maps` (k, n_elements) in the input's format, named `names`; `intent` the NIfTI intent of a statistic's
        map (``("t test", (dof,))``: :func:`voxfit.io.output.stat_intent`), written where the format has one."""
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> dict:
        return {"kind": self.kind, "n_elements": self.n_elements}


def most_common_geometry(geometries) -> int:
    """The index of a geometry that most of `geometries` share (the first of the most common; 0 where all agree):
    the one to check the others against, so that the odd ones are named (against the first, a healthy second map
    was blamed where the first was the odd one)."""
    kinds: list[list[int]] = []  # (the indices of each kind of geometry, in the order met)
    for k, geometry in enumerate(geometries):
        for members in kinds:
            try:
                geometries[members[0]].check_same(geometry, "")
            except InputError:
                continue
            members.append(k)
            break
        else:
            kinds.append([k])
    return max(kinds, key=len)[0] if kinds else 0


@dataclass(frozen=True, eq=False)
class VolumeGeometry(Geometry):
    """A 3-D voxel grid: shape, affine and the input's header (NIfTI-1, NIfTI-2 or Analyze)."""

    shape: tuple[int, int, int]
    affine: NDArray[np.float64]
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    kind = "volume"
    extension = ".nii.gz"

    @property
    def n_elements(self) -> int:
        return math.prod(int(n) for n in self.shape)  # Python integers: a NIfTI-2 header's 2^31-cubed does not wrap

    def _check_same(self, other: VolumeGeometry, what: str) -> None:
        if tuple(other.shape) != tuple(self.shape):
            raise InputError(
                f"{what} has shape {tuple(other.shape)} but the data have "
                f"{tuple(self.shape)}; resample it to the data's grid."
            )
        if not np.allclose(other.affine, self.affine, atol=AFFINE_ATOL, rtol=0):
            diff = np.abs(other.affine - self.affine).max()
            raise InputError(
                f"{what} has a different affine from the data (largest "
                f"difference {diff:.3g} mm); resample it to the data's grid."
            )

    def write(self, path: Path, maps: NDArray, names: list[str], intent: tuple | None = None) -> None:
        vols = np.asarray(maps).reshape((-1,) + tuple(self.shape[::-1]))  # (k, z, y, x): rows are x-fastest
        data = vols.transpose(3, 2, 1, 0)  # (x, y, z, k)
        if data.shape[3] == 1:
            data = data[..., 0]
        klass = nib.Nifti2Image if isinstance(self.header, nib.Nifti2Header) else nib.Nifti1Image
        header = None
        if isinstance(self.header, nib.Nifti1Header):  # keeps units and the space codes of the input
            header = self.header.copy()
            header.set_slope_inter(1.0, 0.0)
            header["cal_min"] = header["cal_max"] = 0  # the input's display range means nothing for a map
            header.set_intent("none")
        img = klass(data, self.affine, header=header)
        img.set_data_dtype(data.dtype)
        if header is not None:  # (the input's qform kept: one other than its sform was overwritten by the sform)
            code = int(self.header["qform_code"])
            img.set_qform(self.header.get_qform() if code > 0 else self.affine, code)
            img.set_sform(self.affine, int(self.header["sform_code"]) or 1)
        img.header["descrip"] = b"voxfit: " + ", ".join(names).encode()[:70]
        if intent is not None and isinstance(img.header, nib.Nifti1Header):  # (a statistic's distribution, for readers)
            img.header.set_intent(*intent)
        save_nifti(img, path)

    def describe(self) -> dict:
        return {**super().describe(), "shape": list(self.shape), "affine": self.affine.round(6).tolist()}


@dataclass(frozen=True, eq=False)
class SurfaceGeometry(Geometry):
    """Vertices of a surface mesh (GIFTI); `meta` keeps the input's metadata, written back; `structure` the
    surface it lies on where known (CortexLeft, CortexRight: see ``voxfit.io.readers._gifti_structure``)."""

    n_vertices: int
    meta: dict = field(default_factory=dict)
    structure: str | None = None
    kind = "surface"
    extension = ".func.gii"

    @property
    def n_elements(self) -> int:
        return self.n_vertices

    def _check_same(self, other, what: str) -> None:
        """The same number of vertices, and the same structure where both are known: fsaverage's hemispheres
        have as many vertices each (10,242 in fsaverage5), and a run, map or mask of the other was taken in."""
        super()._check_same(other, what)
        if self.structure and other.structure and self.structure != other.structure:
            raise InputError(
                f"{what} lies on {other.structure} but the data on {self.structure}; give each hemisphere's "
                "runs, maps, variances and masks apart (one fit or group model per hemisphere)."
            )

    def write(self, path: Path, maps: NDArray, names: list[str], intent: tuple | None = None) -> None:
        """As :meth:`Geometry.write`: a data array per map, a statistic's carrying its distribution (GIFTI's
        intent, NIFTI_INTENT_TTEST...) and its dof in its metadata (GIFTI arrays have no intent parameters)."""
        maps = np.atleast_2d(maps)
        dtype = np.float32 if maps.dtype.kind == "f" else np.int32
        code = "NIFTI_INTENT_NONE" if intent is None else nib.nifti1.intent_codes.niistring[intent[0]]
        dof = {"DegreesOfFreedom": " ".join(f"{d:g}" for d in intent[1])} if intent and intent[1] else {}
        arrays = [
            nib.gifti.GiftiDataArray(
                np.ascontiguousarray(m, dtype=dtype),
                intent=code,
                datatype="NIFTI_TYPE_FLOAT32" if dtype == np.float32 else "NIFTI_TYPE_INT32",
                meta={"Name": name, **dof},
            )
            for m, name in zip(maps, names)
        ]
        meta = dict(self.meta)
        if self.structure and not meta.get("AnatomicalStructurePrimary"):  # (known from the input's hemi- name)
            meta["AnatomicalStructurePrimary"] = self.structure  # (else its maps, named without hemi-, had none)
        nib.save(nib.gifti.GiftiImage(darrays=arrays, meta=nib.gifti.GiftiMetaData(meta)), str(path))


def same_brain_models(a: nib.cifti2.BrainModelAxis, b: nib.cifti2.BrainModelAxis) -> bool:
    """nibabel's ``a == b``, decided from the arrays alone when they are the same: nibabel compares the voxels and
    vertices of the volume and surface elements only, whose masks it finds element by element (84 ms for 91k
    grayordinates, once per extra run or map); where any array differs, nibabel decides. Files with the same XML
    share their axes' arrays (``voxfit.io.readers._shared_brain_models``): the same without a look (3.7 ms a map)."""
    same = (
        len(a) == len(b)
        and a.nvertices == b.nvertices
        and a.volume_shape == b.volume_shape
        and (a.affine is None) == (b.affine is None)
        and (a.affine is None or _same_array(a.affine, b.affine))
        and _same_array(a.name, b.name)
        and _same_array(a.voxel, b.voxel)
        and _same_array(a.vertex, b.vertex)
    )
    return same or a == b


def brain_models_difference(a: nib.cifti2.BrainModelAxis, b: nib.cifti2.BrainModelAxis) -> str:
    """Where brain models `b` differ from `a`, in words: the first structure whose elements differ, with each one's
    count ("CIFTI_STRUCTURE_CORTEX_LEFT: 2,557 vertices, the first input's 2,562"), or the structures themselves."""
    ours = {str(name): models for name, _, models in a.iter_structures()}
    theirs = {str(name): models for name, _, models in b.iter_structures()}
    if list(ours) != list(theirs):
        return f"structures {', '.join(theirs)}, the first input's {', '.join(ours)}"
    for name, models in ours.items():
        other = theirs[name]
        same = len(models) == len(other) and all(
            np.array_equal(getattr(models, k), getattr(other, k)) for k in ("vertex", "voxel")
        )
        if not same:
            kind = "vertices" if name in a.nvertices else "voxels"
            return f"{name}: {len(other):,} {kind}, the first input's {len(models):,}"
    return "its volume's grid or its surfaces' vertex counts"


def _same_array(x, y) -> bool:
    return x is y or np.array_equal(x, y)


def name_runs(names: NDArray) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The starts and lengths of the runs of equal names in `names` (1-D): a CIFTI file's brain models list each
    structure's grayordinates together, so 91k grayordinates are about 20 runs."""
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]]) if names.size else np.zeros(0, np.intp)
    return starts, np.diff(np.r_[starts, names.size])


def brain_models_fault(axis: nib.cifti2.BrainModelAxis) -> str | None:
    """What makes a CIFTI file's brain models impossible, or None: a surface's vertex outside its
    SurfaceNumberOfVertices or listed twice, a voxel outside the volume's dimensions or listed twice (the CIFTI-2
    standard lists each vertex and voxel once). nibabel reads such a file, and voxfit would write its maps with
    the same brain models, which Connectome Workbench refuses."""
    names, vertex, voxel = np.asarray(axis.name), np.asarray(axis.vertex), np.asarray(axis.voxel)
    starts, counts = name_runs(names)
    runs: dict[str, list[slice]] = {}
    for a, n in zip(starts.tolist(), counts.tolist()):
        runs.setdefault(str(names[a]), []).append(slice(a, a + n))
    voxels = []
    for structure, spans in runs.items():
        if structure not in axis.nvertices:
            voxels += [voxel[s] for s in spans]
            continue
        count, listed = int(axis.nvertices[structure]), np.concatenate([vertex[s] for s in spans])
        outside = listed[(listed < 0) | (listed >= count)]
        if outside.size:
            return f"{structure} lists vertex {int(outside[0])}, outside its SurfaceNumberOfVertices {count:,}"
        twice = _repeated(listed)
        if twice is not None:
            return f"{structure} lists vertex {twice} twice"
    if voxels:
        ijk, shape = np.concatenate(voxels), tuple(int(n) for n in axis.volume_shape)
        outside = ijk[((ijk < 0) | (ijk >= np.array(shape))).any(axis=1)]
        if outside.size:
            return f"voxel {tuple(int(v) for v in outside[0])} lies outside its volume's dimensions {shape}"
        twice = _repeated(np.ravel_multi_index(tuple(ijk.T), shape))
        if twice is not None:
            return f"voxel {tuple(int(v) for v in np.unravel_index(twice, shape))} is listed twice"
    return None


def _repeated(values: NDArray) -> int | None:
    """A value that `values` (integers) hold more than once, or None."""
    ordered = np.sort(values)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    return int(ordered[same[0]]) if same.size else None


class BrainModels(nib.cifti2.BrainModelAxis):
    """nibabel's BrainModelAxis, whose structure names are converted (``to_cifti_brain_structure_name``) and found
    on the surfaces or not once per run of one name (:func:`name_runs`), where nibabel does it name by name: 48 ms
    to make the axis of 91k grayordinates, at the start of every CIFTI fit, and 12 ms for each mask, against 7 ms
    and 1.5 ms. The same arrays as nibabel's in every case; a BrainModelAxis everywhere."""

    @property
    def name(self) -> NDArray:
        """The brain structure of each grayordinate (CIFTI-2 names)."""
        return self._name

    @name.setter
    def name(self, values) -> None:
        try:
            names = np.asanyarray(values)
        except ValueError:  # (names and tuples mixed)
            names = None
        if type(names) is not np.ndarray or names.ndim != 1 or names.dtype.kind != "U" or names.size == 0:
            nib.cifti2.BrainModelAxis.name.fset(self, values)  # (tuples, generators, no names: nibabel's way)
            return
        starts, counts = name_runs(names)
        self._name = np.repeat(np.array([self.to_cifti_brain_structure_name(str(names[a])) for a in starts]), counts)

    @property
    def surface_mask(self) -> NDArray[np.bool_]:
        """Whether each grayordinate is a surface vertex."""
        if self.name.size == 0:  # (nibabel's error for an axis of no grayordinates)
            return nib.cifti2.BrainModelAxis.surface_mask.fget(self)
        starts, counts = name_runs(self.name)
        return np.repeat(np.array([str(self.name[a]) in self.nvertices for a in starts], dtype=bool), counts)

    @property
    def volume_mask(self) -> NDArray[np.bool_]:
        """Whether each grayordinate is a voxel."""
        return ~self.surface_mask


def _brain_models_xml(axis: nib.cifti2.BrainModelAxis) -> bytes:
    """The brain models' MatrixIndicesMap (dimension 1) as nibabel's ``axis.to_mapping(1)`` serialises it: a
    BrainModel per run of one structure, the Volume before the first of voxels. Made from the arrays (26 ms for 91k
    grayordinates, against 0.16 s for nibabel's, which slices the axis element by element)."""
    names = np.asarray(axis.name)
    starts, counts = name_runs(names)
    parts = ['<MatrixIndicesMap AppliesToMatrixDimension="1" IndicesMapToDataType="CIFTI_INDEX_TYPE_BRAIN_MODELS">']
    volume = False
    for a, b in zip(starts.tolist(), (starts + counts).tolist()):
        name = str(names[a])
        model = f'<BrainModel IndexOffset="{a}" IndexCount="{b - a}" ModelType="CIFTI_MODEL_TYPE_'
        structure = f'" BrainStructure="{name}"'
        if name in axis.nvertices:
            vertices = " ".join(map(str, axis.vertex[a:b].tolist()))
            parts.append(f'{model}SURFACE{structure} SurfaceNumberOfVertices="{axis.nvertices[name]}">')
            parts.append(f"<VertexIndices>{vertices}</VertexIndices></BrainModel>")
            continue
        if not volume:
            shape = ",".join(map(str, axis.volume_shape))
            matrix = "\n".join(" ".join(f"{x:.10f}" for x in row) for row in np.asarray(axis.affine).tolist())
            parts.append(
                f'<Volume VolumeDimensions="{shape}"><TransformationMatrixVoxelIndicesIJKtoXYZ MeterExponent="-3">'
            )
            parts.append(f"{matrix}</TransformationMatrixVoxelIndicesIJKtoXYZ></Volume>")
            volume = True
        voxels = "\n".join(" ".join(map(str, row)) for row in axis.voxel[a:b].tolist())
        parts.append(f"{model}VOXELS{structure}><VoxelIndicesIJK>{voxels}</VoxelIndicesIJK></BrainModel>")
    parts.append("</MatrixIndicesMap>")
    return "".join(parts).encode()


@dataclass(frozen=True, eq=False)
class CiftiGeometry(Geometry):
    """CIFTI-2 grayordinates: surface vertices and volume voxels, described by a BrainModelAxis."""

    brain_models: nib.cifti2.BrainModelAxis
    kind = "CIFTI file"
    extension = ".dscalar.nii"

    @property
    def n_elements(self) -> int:
        return len(self.brain_models)

    def _check_same(self, other: CiftiGeometry, what: str) -> None:
        if not same_brain_models(other.brain_models, self.brain_models):
            raise InputError(f"{what} has different CIFTI brain models (structures, vertices or voxels) from the data.")

    @functools.cached_property
    def _brain_model_map(self):
        """The brain models as the CIFTI header's second index map (made once: 0.35 s for 91k grayordinates)."""
        return self.brain_models.to_mapping(1)

    @functools.cached_property
    def _xml_around_names(self) -> tuple[bytes, bytes]:
        """The CIFTI header XML of a .dscalar.nii split where its maps' names go: the scalar map's opening, and its
        closing with the brain models' map, serialised once from the axis's arrays (:func:`_brain_models_xml`),
        byte for byte what nibabel writes."""
        before = b'<CIFTI Version="2.0"><Matrix><MatrixIndicesMap AppliesToMatrixDimension="0" '
        before += b'IndicesMapToDataType="CIFTI_INDEX_TYPE_SCALARS">'
        return before, b"</MatrixIndicesMap>" + _brain_models_xml(self.brain_models) + b"</Matrix></CIFTI>"

    def _header_xml(self, names: list[str]) -> bytes:
        matrix = nib.cifti2.Cifti2Matrix()
        matrix.append(nib.cifti2.ScalarAxis(names).to_mapping(0))
        matrix.append(self._brain_model_map)
        return nib.cifti2.Cifti2Header(matrix).to_xml()

    def _xml(self, names: list[str]) -> bytes:
        """The header XML nibabel writes for maps named `names`: from the split one (names in ASCII, not empty,
        escaped as nibabel's ElementTree escapes text), else serialised whole by nibabel."""
        if not all(str(name).isascii() and str(name) for name in names):  # (nibabel writes "" as <MapName />)
            return self._header_xml(names)
        split = self._xml_around_names
        named = b"".join(b"<NamedMap><MapName>%s</MapName></NamedMap>" % escape(str(name)).encode() for name in names)
        return split[0] + named + split[1]

    def write(self, path: Path, maps: NDArray, names: list[str], intent: tuple | None = None) -> None:
        """A .dscalar.nii of the maps: the NIfTI-2 file nibabel's Cifti2Image writes (the same header XML and
        data; intent ConnDenseScalar, as the CIFTI-2 standard names dense scalars), composed here from the brain
        models' XML made once: nibabel's image copies and re-parses the header of every map (about 1 s each for
        91k grayordinates)."""
        from nibabel.cifti2.parse_cifti2 import Cifti2Extension

        maps = np.atleast_2d(maps).astype(np.float32)
        header = nib.Nifti2Header()
        header.set_data_dtype(np.float32)
        header.set_data_shape((1, 1, 1, 1) + maps.shape)
        header.set_intent("ConnDenseScalar")
        header["pixdim"][:4] = 1
        header.extensions.append(Cifti2Extension.from_bytes(self._xml(list(names))))
        nib.save(nib.Nifti2Image(maps.reshape((1, 1, 1, 1) + maps.shape), None, header), str(path))

    def describe(self) -> dict:
        names = np.asarray(self.brain_models.name)
        structures = sorted({str(names[a]) for a in name_runs(names)[0]})
        return {**super().describe(), "structures": structures}


@dataclass(frozen=True, eq=False)
class ArrayGeometry(Geometry):
    """Plain columns (a .npy file of shape (scans, columns))."""

    n_columns: int
    kind = "plain array"
    extension = ".npy"

    @property
    def n_elements(self) -> int:
        return self.n_columns

    def write(self, path: Path, maps: NDArray, names: list[str], intent: tuple | None = None) -> None:
        maps = np.asarray(maps)
        with open(path, "wb") as fh:  # np.save would append .npy to a temporary name
            np.save(fh, maps[0] if maps.shape[0] == 1 else maps)
