"""The bar length every stage config carries: derived from the settings' timeframe, never a key of
its own (a stage config is its settings section(s) plus such context)."""

from __future__ import annotations

from pydantic import Field

from q50_assets.settings import TIMEFRAME_NAMES, Section


class BarLength(Section):
    bar_seconds: int = Field(default=3600, gt=0, description="Bar length in seconds, from the settings' timeframe.")

    @property
    def timeframe(self) -> str:
        return TIMEFRAME_NAMES.get(self.bar_seconds, f"{self.bar_seconds}s")
