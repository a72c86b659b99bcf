"""The one Definitions object: assets, checks, resources, jobs."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, in_process_executor

from q50_assets.assets.backtest import backtest_portfolio, backtest_results
from q50_assets.assets.features import qlib_features
from q50_assets.assets.model import q50_model
from q50_assets.assets.ohlcv import ohlcv_bars
from q50_assets.assets.regimes import regime_labels
from q50_assets.assets.signals import q50_signals
from q50_assets.assets.trades import pool_trades
from q50_assets.assets.trading_history import q50_trading_history
from q50_assets.automation.jobs import nightly_job, portfolio_summary_job, refresh_pool_job, train_q50_model_job
from q50_assets.automation.sensors import build_automation
from q50_assets.resources.database import CollectorDatabase
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.resources.qlib_store import QlibStore
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.settings import ENV_DATABASE_URL, Settings, get_settings


def build_resources(settings: Settings) -> dict:
    # An env-var URL stays an EnvVar so the UI shows its name, never the credentials in it.
    # Only when the settings' URL is the environment's: settings built for another database (tests,
    # benchmarks) must never be redirected to whatever the shell exports.
    from_env = os.environ.get(ENV_DATABASE_URL) and os.environ[ENV_DATABASE_URL] == settings.database.url
    url = EnvVar(ENV_DATABASE_URL) if from_env else settings.database_url
    return {
        "collector_db": CollectorDatabase(url=url),
        "qlib_store": QlibStore(provider_dir=str(settings.data_dir / "qlib"), timeframe=settings.timeframe),
        "nautilus": NautilusBacktester(
            enabled=settings.nautilus_trader.enabled,
            starting_capital_usd=settings.nautilus_trader.backtest.starting_capital_usd,
            taker_fee=settings.signals.swap_fee,
            max_reserve_fraction=settings.nautilus_trader.backtest.max_reserve_fraction,
            min_trade_fraction=settings.nautilus_trader.backtest.min_trade_fraction,
            bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
            fill_latency_bars=settings.nautilus_trader.backtest.fill_latency_bars,
            fill_price=settings.nautilus_trader.backtest.fill_price,
            max_volume_share=settings.nautilus_trader.backtest.max_volume_share,
        ),
        "settings": settings,
    }


def build_definitions(settings: Settings) -> Definitions:
    sensors, schedules = build_automation(settings)
    return Definitions(
        assets=[ohlcv_bars, pool_trades, qlib_features, q50_model, q50_signals, regime_labels, backtest_results,
                q50_trading_history, backtest_portfolio],
        jobs=[refresh_pool_job, train_q50_model_job, nightly_job, portfolio_summary_job],
        sensors=sensors,
        schedules=schedules,
        resources=build_resources(settings),
        # In-process for every run (UI materializations included): one pool's steps are sequential,
        # and a subprocess per step costs more than most steps. Pools fan out as separate runs.
        executor=in_process_executor,
    )


defs = build_definitions(get_settings())
