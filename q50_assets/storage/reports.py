"""The door to the research report's files: one folder under the data dir holding the latest
report as a self-contained HTML page (pictures embedded), its markdown and the pictures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dagster import ConfigurableResource

from q50_assets.lineage.portfolio.report import Report


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


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
