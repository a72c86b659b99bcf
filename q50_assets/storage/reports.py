"""The door to the research report's files: one folder under the data dir holding the latest
report as a self-contained HTML page (pictures embedded), its markdown and the pictures."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from q50_assets.lineage.portfolio.report import Report
from q50_assets.storage.files import replace_file as _replace


class ReportFiles(ConfigurableResource):
    directory: str

    def write(self, report: Report, name: str = "backtest_portfolio") -> Path:
        """``<directory>/<name>.html`` plus ``<name>/report.md`` and its PNGs; each file replaced
        atomically, so a reader (a browser on the page) never sees half a report. Returns the HTML path."""
        folder = Path(self.directory)
        pictures = folder / name
        pictures.mkdir(parents=True, exist_ok=True)
        for picture, png in report.pngs.items():
            _replace(pictures / f"{picture}.png", png)
        _replace(pictures / "report.md", report.markdown.encode())
        page = folder / f"{name}.html"
        _replace(page, report.html.encode())
        return page
