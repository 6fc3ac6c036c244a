"""Reading and writing images: readers for every format, masking, output folders. No statistics here."""

from ._gzip import GZIP_BACKEND, open_gzip
from .dataset import Dataset, ScaledArray, load
from .geometry import ArrayGeometry, CiftiGeometry, Geometry, SurfaceGeometry, VolumeGeometry
from .masking import (SPM_MASK_THRESHOLD, Masker, explicit_mask, gather, gather_auto, global_sums_block, load_mask,
                      mask_block, resolve_mask_threshold, spm_globals)
from .output import OutputFolder, sanitize_label, stat_maps, statmap_name, write_stats
from .readers import (CiftiReader, ColumnSource, GiftiReader, NiftiReader, NpyReader, VolumeListReader, open_map,
                      open_reader, read_mesh)
from .scans import expand_run, natural_key

__all__ = [
    "ArrayGeometry", "CiftiGeometry", "CiftiReader", "ColumnSource", "Dataset", "GZIP_BACKEND", "Geometry",
    "GiftiReader", "Masker", "NiftiReader", "NpyReader", "OutputFolder", "ScaledArray", "SurfaceGeometry",
    "VolumeGeometry", "VolumeListReader", "explicit_mask", "gather", "gather_auto", "load", "load_mask",
    "mask_block", "global_sums_block", "resolve_mask_threshold", "SPM_MASK_THRESHOLD", "open_gzip", "open_map", "open_reader", "expand_run", "natural_key", "read_mesh", "sanitize_label", "spm_globals", "stat_maps",
    "statmap_name", "write_stats",
]  # fmt: skip
