"""What the lineage's stages need from storage, as narrow interfaces: the stages depend on these,
never on the storage classes (``q50_assets.storage``), which Dagster hands in as resources
(``ResourceParam[...]``). Only the methods the stages call are here.

* :class:`CollectorSource` - the collector's own tables, read only (``storage.collector.CollectorReader``).
* :class:`ProjectTableStore` - the project's ``q50_*`` tables (``storage.project_tables.ProjectTables``).
* :class:`FeatureStore` - the QLib binary store of the pools' series (``storage.qlib_store.QlibStore``).
* :class:`ReportSink` - where the research report's files go (``storage.reports.ReportFiles``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

if TYPE_CHECKING:
    from q50_assets.lineage.common.costs import ReserveSeries
    from q50_assets.lineage.portfolio.report import Report
    from q50_assets.lineage.signals.rules import Q50SignalLoader


class CollectorSource(Protocol):
    """The collector's tables, a batch of pools per call; never written by the project."""

    def pools_with_bars(self, timeframe: str) -> list[str]:
        """Every pool with at least one ``ohlcv_data`` row of ``timeframe``, sorted."""

    def read_bars_many(self, pool_ids: list[str], timeframe: str) -> dict[str, pd.DataFrame]:
        """Every ``ohlcv_data`` row per pool, the collector's column names."""

    def lowercase_collisions_many(self, pool_ids: list[str]) -> dict[str, list[str]]:
        """Per pool, the other pool ids equal to it once lower-cased."""

    def registered_pools(self, pool_ids: list[str]) -> set[str]:
        """The pools that have a row in the collector's ``pools`` table."""

    def read_trades_many(self, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """Every ``trades`` row per pool, the collector's column names."""

    def pool_reserves_many(self, pool_ids: list[str], fallback_usd: float | None
                           ) -> dict[str, tuple[ReserveSeries, int]]:
        """Per pool, its liquidity as observed over time and the rows that observed nothing."""

    def reserve_levels(self) -> pd.DataFrame:
        """Every observation of any pool's reserve in the database: pool_id, reserve_usd, source."""

    def collector_feature_vectors(self, pool_id: str) -> pd.DataFrame:
        """The collector's own feature vectors of one pool (never its targets)."""

    def with_feature_vector_pointers(self, pool_id: str, rows: pd.DataFrame,
                                     use_collector: bool) -> tuple[pd.DataFrame, dict]:
        """Trading-history rows with the feature-vector pointer columns set, and their summary."""


class ProjectTableStore(Protocol):
    """The project's own tables (what the table IO manager does not already read and write)."""

    def upsert_feature_vectors_many(self, timeframe: str, version: str, frames: dict[str, pd.DataFrame],
                                    feature_columns: list[str]) -> dict[str, tuple[pd.Series, int]]:
        """A batch of pools' feature vectors; per pool (vector id per bar open, stale vectors kept)."""

    def signal_rows_many(self, timeframe: str, pool_ids: list[str]) -> dict[str, pd.DataFrame]:
        """A batch of pools' stored ``q50_signals`` rows (index bar open)."""

    def signal_loader(self, pool_id: str, timeframe: str) -> Q50SignalLoader:
        """One pool's stored signals, looked up as of a time."""

    def trading_history_many(self, runs: dict[str, str]) -> dict[str, pd.DataFrame]:
        """Per pool, the stored ``q50_trading_history`` rows of one backtest run (pool -> run id)."""

    def record_trials(self, trials: pd.DataFrame) -> int:
        """Add configurations evaluated on a window to the ``q50_trials`` ledger (idempotent per
        config hash, window and variant); returns the trials added."""

    def trials_overlapping(self, window_start: pd.Timestamp, window_end: pd.Timestamp) -> pd.DataFrame:
        """The ledger's trials whose window overlaps [window_start, window_end], oldest first."""


class FeatureStore(Protocol):
    """The pools' series in QLib's binary format, and QLib's expression engine over them."""

    def write_pools(self, grids: dict[str, pd.DataFrame]) -> dict[str, str]:
        """Replace a batch of pools' series; returns each pool's instrument."""

    def remove_pools(self, pool_ids: list[str]) -> list[str]:
        """Take pools out of the store."""

    def write_fields(self, pool_id: str, frame: pd.DataFrame, fields: tuple[str, ...]) -> None:
        """Replace some fields of one pool's series."""

    def clear_fields(self, pool_id: str, fields: tuple[str, ...]) -> None:
        """Remove some fields of one pool's series."""

    def features(self, pool_ids: list[str], expressions: dict[str, str]) -> pd.DataFrame:
        """QLib expressions evaluated over the pools' series."""

    def mapping(self) -> dict[str, dict]:
        """instrument -> {pool_id, start, end} of every pool in the store."""

    def instrument_for(self, pool_id: str) -> str:
        """The QLib instrument name a pool is stored under."""


class ReportSink(Protocol):
    """Where the research report is written."""

    def write(self, report: Report, name: str = "backtest_portfolio") -> Path:
        """Write the report's files; returns the HTML page's path."""
