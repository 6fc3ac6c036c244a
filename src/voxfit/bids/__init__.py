"""``voxfit.bids``: whole studies from BIDS datasets and fMRIPrep derivatives (needs ``pip install 'voxfit[bids]'``).

``voxfit.bids.run(bids_dir, out_dir, model=..., level=...)`` fits a BIDS Stats Model from each run to the group
(:mod:`voxfit.bids.study`); pybids is imported only when a study is run or a layout indexed.
"""

from .._lazy import first_use

__all__ = ["RunInput", "StudyResult", "find_runs", "index", "run"]

__getattr__, __dir__ = first_use(
    globals(),
    {
        "run": "study",
        "StudyResult": "study",
        "index": "layout",
        "find_runs": "layout",
        "RunInput": "layout",
    },
)
