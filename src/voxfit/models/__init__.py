"""Models on images: wiring designs, image I/O and the estimation engine together.

Where to look:

- how a fit runs (in memory, streamed, read by Dask workers): :mod:`._routing` (``choose_route``);
- what model.json holds: :mod:`.record` (``ModelRecord``, the only writer and reader of the file) and its JSON
  Schema ``model.schema.json`` beside it;
- what each memory budget bounds, and how a run is executed: :mod:`voxfit._execution` (``Execution``,
  ``BUDGETS``);
- the models: the first-level fit :mod:`.glm` (``FirstLevel`` in :mod:`.first_level` builds its design from
  events), several runs :mod:`.runs`, group models :mod:`.second_level`, the demo :mod:`.demo`.

Names are imported on first use, so that the command line can decide a route (:mod:`._routing` imports no
numerical library) while the numerical modules load.
"""

from .._lazy import first_use

__all__ = [
    "FirstLevel",
    "GroupFit",
    "ImageFit",
    "ModelRecord",
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
    "ModelRecord": "record",
    "Route": "_routing",
    "RunsFit": "runs",
    "SecondLevel": "second_level",
    "choose_route": "_routing",
    "fit_runs": "runs",
    "fixed_effects": "runs",
    "fit_images": "glm",
    "parse_contrast_option": "glm",
}


__getattr__, __dir__ = first_use(globals(), _WHERE)
