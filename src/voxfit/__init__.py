"""voxfit: fit one linear model to every voxel of an imaging dataset at once.

>>> import numpy as np, voxfit
>>> X = np.column_stack([np.linspace(-1, 1, 12), np.ones(12)])
>>> Y = np.random.default_rng(0).normal(size=(12, 1000))
>>> fit = voxfit.fit(X, Y)
>>> fit.betas.shape
(2, 1000)
>>> fit.contrast([1, 0]).z.shape
(1000,)
"""

from . import exceptions
from ._version import __version__
from .core import Fit, Stats
from .engine import fit

__all__ = ["Fit", "Stats", "exceptions", "fit", "fit_images", "load", "write_stats", "__version__"]

_LAZY = {"load": ("io", "load"), "write_stats": ("io", "write_stats"), "fit_images": ("models", "fit_images")}


def __getattr__(name: str):
    """Image I/O (nibabel, pandas) is imported on first use, so that ``import voxfit`` stays light."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'voxfit' has no attribute {name!r}")
