"""Models on images: wiring designs, image I/O and the estimation engine together.

Where to look: how a fit runs (in memory, streamed, read by Dask workers) is decided in :mod:`._routing`; what
each memory budget bounds is in :mod:`voxfit._execution`; the first-level fit is :mod:`.glm` (``FirstLevel``
builds its design), several runs :mod:`.runs`, group models :mod:`.second_level`.

Names are imported on first use, so that the command line can decide a route (:mod:`._routing` imports no
numerical library) while the numerical modules load.
"""

import importlib

__all__ = [
    "FirstLevel",
    "GroupFit",
    "ImageFit",
    "Route",
    "RunsFit",
    "SecondLevel",
    "choose_route",
    "fit_runs",
    "fixed_effects",
    "fit_images",
    "parse_contrast_option",
]

_WHERE = {
    "FirstLevel": "first_level",
    "GroupFit": "second_level",
    "ImageFit": "glm",
    "Route": "_routing",
    "RunsFit": "runs",
    "SecondLevel": "second_level",
    "choose_route": "_routing",
    "fit_runs": "runs",
    "fixed_effects": "runs",
    "fit_images": "glm",
    "parse_contrast_option": "glm",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
