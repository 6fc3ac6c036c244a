"""Reading and writing images: readers for every format, masking, output folders. No statistics here."""

from ._gzip import GZIP_BACKEND, open_gzip
from .dataset import Dataset, ScaledArray, load
from .geometry import ArrayGeometry, CiftiGeometry, Geometry, SurfaceGeometry, VolumeGeometry
from .masking import (SPM_MASK_THRESHOLD, Masker, check_mask, explicit_mask, gather, gather_auto, global_sums_block,
                      load_mask, mask_block, resolve_mask_threshold, spm_globals)
from .memory import MemoryInput, check_data, is_image, source_label
from .output import (OutputFolder, before_commit, disk_error, make_folder, remove_made_folders, sanitize_label,
                     stat_maps, statmap_name, write_file_atomically, write_stats)
from .readers import (ArrayReader, CiftiReader, ColumnSource, GiftiReader, NiftiReader, NpyReader, VolumeImageReader,
                      VolumeListReader, open_map, open_reader, read_mesh)
from .scans import expand_run, natural_key

__all__ = [
    "SPM_MASK_THRESHOLD", "ArrayGeometry", "ArrayReader", "CiftiGeometry", "CiftiReader", "ColumnSource", "Dataset",
    "GZIP_BACKEND", "Geometry", "GiftiReader", "Masker", "MemoryInput", "NiftiReader", "NpyReader", "OutputFolder",
    "ScaledArray", "SurfaceGeometry", "VolumeGeometry", "VolumeImageReader", "VolumeListReader", "check_data",
    "check_mask", "expand_run", "explicit_mask", "gather", "gather_auto", "global_sums_block", "is_image", "load",
    "load_mask", "mask_block", "natural_key", "open_gzip", "open_map", "open_reader", "read_mesh",
    "resolve_mask_threshold", "sanitize_label", "source_label", "spm_globals", "stat_maps", "statmap_name",
    "write_stats", "before_commit", "disk_error", "make_folder", "remove_made_folders", "write_file_atomically",
]  # fmt: skip
