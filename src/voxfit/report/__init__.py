"""Self-contained HTML reports of finished output folders (matplotlib figures; ``pip install 'voxfit[report]'``)."""

from ._page import build_report, write_report

__all__ = ["build_report", "write_report"]
