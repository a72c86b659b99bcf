"""The one Definitions object: assets, checks, resources, IO managers, jobs, sensors, schedule."""

from __future__ import annotations

import os

from dagster import BackfillPolicy, Definitions, EnvVar, in_process_executor

from q50_assets.lineage.backtest.asset import backtest_portfolio, backtest_results
from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.model.asset import q50_model
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.regimes.asset import regime_labels
from q50_assets.lineage.signals.asset import q50_signals
from q50_assets.lineage.trades.asset import pool_trades
from q50_assets.automation.conditions import lineage_conditions
from q50_assets.automation.jobs import JOBS
from q50_assets.automation.sensors import build_automation
from q50_assets.storage.collector import CollectorReader
from q50_assets.storage.io_managers import (
    FeatureFramesIOManager,
    PoolPickleIOManager,
    Q50TableIOManager,
    QlibStoreInput,
)
from q50_assets.storage.lineage_config import stage_resources
from q50_assets.storage.project_tables import ProjectTables
from q50_assets.storage.qlib_store import QlibStore
from q50_assets.storage.reports import ReportFiles
from q50_assets.settings import ENV_DATABASE_URL, Settings, get_settings

ENV_CELERY_BROKER = "Q50_CELERY_BROKER"
ENV_CELERY_BACKEND = "Q50_CELERY_BACKEND"


def build_resources(settings: Settings) -> dict:
    # An env-var URL stays an EnvVar so the UI shows its name, never the credentials in it.
    # Only when the settings' URL is the environment's: settings built for another database (tests,
    # benchmarks) must never be redirected to whatever the shell exports.
    from_env = os.environ.get(ENV_DATABASE_URL) and os.environ[ENV_DATABASE_URL] == settings.database.url
    url = EnvVar(ENV_DATABASE_URL) if from_env else settings.database_url
    # One database, two doors: the collector's tables read only, the project's q50_* tables.
    tables = ProjectTables(url=url)
    store = QlibStore(provider_dir=str(settings.data_dir / "qlib"), timeframe=settings.timeframe)
    return {
        "collector": CollectorReader(url=url),
        "project_tables": tables,
        "report_files": ReportFiles(directory=str(settings.data_dir / "reports")),
        "qlib_store": store,
        **stage_resources(settings, tables),
        # Each stage's output stored once: pickles per pool for what only the lineage reads, the
        # QLib store for the feature frames (the model reads every pool's features from it), the
        # project's tables for signals, regimes, backtest results and trading history.
        "io_manager": PoolPickleIOManager(base_dir=str(settings.data_dir / "asset_values")),
        "q50_tables": Q50TableIOManager(tables=tables, timeframe=settings.timeframe),
        "qlib_feature_frames": FeatureFramesIOManager(store=store, tables=tables, timeframe=settings.timeframe),
        "qlib_store_input": QlibStoreInput(store=store),
    }


def lineage_assets(settings: Settings) -> list:
    """The assets with the batch size and automation conditions of ``settings``."""
    policy = BackfillPolicy.multi_run(settings.batches.pools_per_run)
    conditions = lineage_conditions()
    out = []
    for assets_def in (ohlcv_bars, pool_trades, qlib_features, regime_labels, q50_model, q50_signals, backtest_results,
                       backtest_portfolio):
        keys = {k.to_user_string() for k in assets_def.keys}
        own = {k: c for k, c in conditions.items() if k in keys}
        attributes = {"backfill_policy": policy} if assets_def.partitions_def is not None else {}
        if own:
            attributes["automation_condition"] = {k: own[k.to_user_string()] for k in assets_def.keys
                                                  if k.to_user_string() in own}
        out.append(assets_def.with_attributes(**attributes) if attributes else assets_def)
    return out


def executor_for(settings: Settings):
    """In-process by default (a batch's steps are sequential; a process per step costs more than
    most steps); Celery tasks per step beyond one machine."""
    if settings.execution.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured({"broker": {"env": ENV_CELERY_BROKER},
                                           "backend": {"env": ENV_CELERY_BACKEND}})
    return in_process_executor


def build_definitions(settings: Settings) -> Definitions:
    sensors, schedules = build_automation(settings)
    return Definitions(
        assets=lineage_assets(settings),
        jobs=JOBS,
        sensors=sensors,
        schedules=schedules,
        resources=build_resources(settings),
        executor=executor_for(settings),
    )


defs = build_definitions(get_settings())
