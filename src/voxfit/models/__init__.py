"""Models on images: wiring designs, image I/O and the estimation engine together."""

from .glm import ImageFit, fit_images, parse_contrast_option

__all__ = ["ImageFit", "fit_images", "parse_contrast_option"]
