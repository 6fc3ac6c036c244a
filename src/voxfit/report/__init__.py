"""Self-contained HTML reports of finished output folders (figures drawn with numpy and Pillow, distributions with
matplotlib; ``pip install 'voxfit[report]'``)."""

from ._page import Sections, build_report, html_page, html_table, report_sections, write_report
from ._results import Contrast, DesignView, Results, expression_text, read_map, read_one_map

__all__ = [
    "Contrast",
    "DesignView",
    "Results",
    "Sections",
    "build_report",
    "expression_text",
    "html_page",
    "html_table",
    "read_map",
    "read_one_map",
    "report_sections",
    "write_report",
]
