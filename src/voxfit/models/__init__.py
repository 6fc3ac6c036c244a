"""Models on images: wiring designs, image I/O and the estimation engine together."""

from .first_level import FirstLevel
from .glm import ImageFit, fit_images, parse_contrast_option
from .runs import RunsFit, fit_runs, fixed_effects
from .second_level import GroupFit, SecondLevel

__all__ = [
    "FirstLevel",
    "GroupFit",
    "ImageFit",
    "RunsFit",
    "SecondLevel",
    "fit_runs",
    "fixed_effects",
    "fit_images",
    "parse_contrast_option",
]
