"""voxfit: fit one linear model to every voxel of an imaging dataset at once.

>>> import numpy as np, voxfit
>>> X = np.column_stack([np.linspace(-1, 1, 12), np.ones(12)])
>>> Y = np.random.default_rng(0).normal(size=(12, 1000))
>>> fit = voxfit.fit(X, Y)
>>> fit.betas.shape
(2, 1000)
>>> fit.contrast([1, 0]).z.shape
(1000,)

The package's names are imported on first use, so that ``import voxfit.io`` (nibabel) does not pay for
scipy and ``import voxfit`` pays for nothing until a name is used; the command line reads data while the
numerical modules load.
"""

from . import exceptions
from ._lazy import first_use
from ._version import __version__

__all__ = [
    "Execution",
    "FirstLevel",
    "Fit",
    "SecondLevel",
    "Stats",
    "exceptions",
    "fit",
    "fit_ar",
    "fit_images",
    "fit_runs",
    "inference",
    "load",
    "mixed_effects",
    "write_report",
    "write_stats",
    "__version__",
]

_LAZY = {
    "Execution": ("_execution", "Execution"),
    "fit": ("engine", "fit"),
    "Fit": ("core", "Fit"),
    "Stats": ("core", "Stats"),
    "load": ("io", "load"),
    "write_stats": ("io", "write_stats"),
    "fit_images": ("models", "fit_images"),
    "fit_runs": ("models", "fit_runs"),
    "fit_ar": ("engine", "fit_ar"),
    "mixed_effects": ("engine", "mixed_effects"),
    "FirstLevel": ("models", "FirstLevel"),
    "SecondLevel": ("models", "SecondLevel"),
    "write_report": ("report", "write_report"),
}


__getattr__, __dir__ = first_use(globals(), {"inference": ("inference", None), **_LAZY})
