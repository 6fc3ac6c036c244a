"""Designs: reading design matrices from files, HRFs and (later) designs built from events."""

from .hrf import spm_hrf
from .read import read_design, write_design

__all__ = ["read_design", "spm_hrf", "write_design"]
