"""The one Definitions object: assets, checks, resources, IO managers, jobs, sensors, schedule."""

from __future__ import annotations

import os

from dagster import BackfillPolicy, Definitions, EnvVar, in_process_executor

from q50_assets.lineage import assets_definitions
from q50_assets.automation.jobs import JOBS
from q50_assets.automation.sensors import build_automation
from q50_assets.storage.collector import CollectorReader
from q50_assets.storage.io_managers import (
    FeatureFramesIOManager,
    PoolPickleIOManager,
    Q50TableIOManager,
    QlibStoreInput,
)
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
    # Everything made from this database apart from any other's (Settings.database_dir).
    local = settings.database_dir
    store = QlibStore(provider_dir=str(local / "qlib"), timeframe=settings.timeframe)
    return {
        "collector": CollectorReader(url=url),
        "project_tables": tables,
        "report_files": ReportFiles(directory=str(local / "reports")),
        "qlib_store": store,
        # The one settings model: each asset hands its stages their own sections (lineage/<stage>).
        "settings": settings,
        "signal_db": signal_database(settings, tables),
        # Each stage's output stored once: pickles per pool for what only the lineage reads, the
        # QLib store for the feature frames (the model reads every pool's features from it), the
        # project's tables for signals, regimes, backtest results and trading history.
        "io_manager": PoolPickleIOManager(base_dir=str(local / "asset_values")),
        "q50_tables": Q50TableIOManager(tables=tables, timeframe=settings.timeframe),
        "qlib_feature_frames": FeatureFramesIOManager(store=store, tables=tables, timeframe=settings.timeframe),
        "qlib_store_input": QlibStoreInput(store=store),
    }


# The environment variable of strategy_config.database_uri (signal_source: database).
ENV_SIGNAL_DATABASE_URI = "Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__DATABASE_URI"


def signal_database(settings: Settings, tables: ProjectTables) -> ProjectTables:
    """Where signal_source: database reads q50_signals: strategy_config.database_uri, else the
    project database. A URL from the environment stays an EnvVar, so the UI shows the variable's
    name, never the credentials in it."""
    uri = settings.nautilus_trader.strategy_config.database_uri
    if not uri:
        return tables
    return ProjectTables(url=EnvVar(ENV_SIGNAL_DATABASE_URI) if os.environ.get(ENV_SIGNAL_DATABASE_URI) == uri
                             else uri)


def lineage_assets(settings: Settings) -> list:
    """The lineage's assets (:data:`q50_assets.lineage.STEPS`, in order), the per-pool ones with the
    batch size of ``settings``.

    Automation conditions are declared on the assets themselves. The backfill policy is applied
    here because it is a setting (``batches.pools_per_run``): an asset module does not read the
    settings at import, and the Definitions are built per settings (tests, benchmarks)."""
    policy = BackfillPolicy.multi_run(settings.batches.pools_per_run)
    return [d.with_attributes(backfill_policy=policy) if d.partitions_def is not None else d
            for d in assets_definitions()]


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
