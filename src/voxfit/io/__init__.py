"""Reading and writing images: readers for every format, masking, output folders. No statistics here."""

from ._gzip import GZIP_BACKEND, open_gzip
from .dataset import Dataset, ScaledArray, load
from .geometry import ArrayGeometry, CiftiGeometry, Geometry, SurfaceGeometry, VolumeGeometry
from .masking import Masker, check_mask, explicit_mask, gather, gather_auto, load_mask, mask_block, spm_globals
from .output import OutputFolder, sanitize_label, stat_maps, statmap_name, write_stats
from .readers import (ArrayReader, CiftiReader, ColumnSource, GiftiReader, MemoryInput, NiftiReader, NpyReader,
                      VolumeImageReader, VolumeListReader, check_data, is_image, open_reader, read_mesh, source_label)

__all__ = [
    "ArrayGeometry", "ArrayReader", "CiftiGeometry", "CiftiReader", "ColumnSource", "Dataset", "GZIP_BACKEND",
    "Geometry", "GiftiReader", "Masker", "MemoryInput", "NiftiReader", "NpyReader", "OutputFolder", "ScaledArray",
    "SurfaceGeometry", "VolumeGeometry", "VolumeImageReader", "VolumeListReader", "check_data", "check_mask",
    "explicit_mask", "gather", "gather_auto", "is_image", "load", "load_mask", "mask_block", "open_gzip", "open_reader",
    "read_mesh", "sanitize_label", "source_label", "spm_globals", "stat_maps", "statmap_name", "write_stats",
]  # fmt: skip
