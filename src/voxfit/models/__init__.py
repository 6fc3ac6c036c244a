"""Models on images: wiring designs, image I/O and the estimation engine together."""

from .first_level import FirstLevel
from .glm import ImageFit, fit_images, parse_contrast_option

__all__ = ["FirstLevel", "ImageFit", "fit_images", "parse_contrast_option"]
