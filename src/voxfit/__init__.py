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
from .core import Fit, Stats
from .engine import fit

__version__ = "0.1.0"

__all__ = ["Fit", "Stats", "exceptions", "fit", "__version__"]
