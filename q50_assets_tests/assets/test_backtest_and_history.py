"""Regimes -> NautilusTrader backtests -> trading history on real pools, both databases; the seed
plan's three integration tests; the nautilus_trader.enabled: false fallback."""

import math

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy import func, select

from q50_assets.assets.partitions import POOLS_PARTITION_NAME
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_backtest_results, q50_regime_labels, q50_trading_history
from q50_assets.definitions import build_definitions
from q50_assets.research.backtest import shuffled_targets
from q50_assets.research.regimes import REGIME_LABELS, detect_regimes
from q50_assets_tests.assets.test_model_and_signals import LIGHT_MODEL, QUIET, run_lineage
from q50_assets_tests.conftest import settings_for

POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_Ekv9HdumWqnXZgq5G6ge6bk1ZRHKXYC2WnSFL94sQmLJ",
]
H = pd.Timedelta(hours=1)


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions(POOLS_PARTITION_NAME, POOLS)
        yield inst


def _count(url, table, **where) -> int:
    stmt = select(func.count()).select_from(table)
    for column, value in where.items():
        stmt = stmt.where(table.c[column] == value)
    with get_engine(url).connect() as conn:
        return conn.execute(stmt).scalar()


def test_database_integration(collector_url, tmp_path, instance):
    """The full lineage to trading history on a real database: every check passes, the stored
    history reconciles with Nautilus' fills, metrics are out of sample, baselines sit beside."""
    settings = settings_for(collector_url, tmp_path, **LIGHT_MODEL)
    out = run_lineage(settings, instance, backtest=True, pools=POOLS)

    assert out["backtest_checks"] and all(e.passed for e in out["backtest_checks"]), [
        (e.asset_key.to_user_string(), e.check_name) for e in out["backtest_checks"] if not e.passed]
    total_fills = 0
    for pool_id in POOLS:
        result = out["backtests"][pool_id]
        assert result.status == "ok"
        assert list(result.metrics.index) == ["q50", "buy_and_hold", "shuffled"]
        # Out of sample: the span starts at the close of the first bar with an OOS signal, and the
        # strategy holds nothing before it.
        first_signal_open = out["signals"][pool_id].index.min()
        assert result.oos_start == first_signal_open + H
        equity = result.outcomes["q50"].equity
        assert (equity.loc[equity.index < result.oos_start, "qty"] == 0).all()
        # Same bars for every variant, and the pipeline's.
        for outcome in result.outcomes.values():
            assert outcome.bars.count == len(result.bars)
        # Buy & hold is invested for (almost) the whole OOS span; the shuffled baseline trades the
        # same target values at other times.
        assert result.metrics.loc["buy_and_hold", "exposure"] > 0.9
        q50_targets = result.decisions["target"]
        assert sorted(q50_targets) == sorted(shuffled_targets(q50_targets, 7))
        # Trading history: one row per Nautilus fill, linked to the decision that made it.
        history = out["history"][pool_id]
        fills = result.outcomes["q50"].fills
        assert len(history) == len(fills)
        total_fills += len(fills)
        if len(history):
            assert history["fee"].sum() == pytest.approx(result.outcomes["q50"].fees_paid)
            buys = history[history["side"] == "BUY"]
            assert buys["q50_signal"].notna().all() and (buys["position_size"] > 0).all()
            assert buys["regime_classification"].isin(REGIME_LABELS).all()
            assert buys["feature_vector_id"].notna().all()
        md = out["backtest_metadata"][pool_id]
        assert "![equity curve](data:image/png;base64," in md["equity_curve"].value
        assert "| buy_and_hold |" in md["summary"].value and "| shuffled |" in md["summary"].value

    assert total_fills > 0  # the real signals do trade
    run_ids = {out["backtests"][p].backtest_run_id for p in POOLS}
    assert _count(collector_url, q50_trading_history) == total_fills
    assert _count(collector_url, q50_backtest_results) == 3 * len(POOLS)
    assert set(out["portfolio"].index) == {"q50", "buy_and_hold", "shuffled"}
    assert out["portfolio"].loc["q50", "pools"] == len(POOLS)

    # Re-running a backtest run's history replaces its rows: no duplicates.
    db = build_definitions(settings).resources["collector_db"]
    pool_id = POOLS[0]
    result = out["backtests"][pool_id]
    rows = out["history"][pool_id]
    before = _count(collector_url, q50_trading_history)
    assert db.replace_trading_history(result.backtest_run_id, pool_id, rows) == len(rows)
    assert _count(collector_url, q50_trading_history) == before

    # A new backtest run keeps the old run's history (each run has its own id).
    defs = build_definitions(settings)
    rerun = defs.resolve_job_def("refresh_pool").execute_in_process(
        partition_key=pool_id, instance=instance, run_config=QUIET,
        asset_selection=[AssetKey("backtest_results"), AssetKey("q50_trading_history")])
    new_id = rerun.asset_value("backtest_results").backtest_run_id
    assert new_id not in run_ids
    assert _count(collector_url, q50_trading_history, backtest_run_id=new_id) == len(rows)  # deterministic
    assert _count(collector_url, q50_trading_history) == before + len(rows)


def test_q50_signal_loading(collector_url, tmp_path, instance):
    """Signals the strategy trades on are the persisted ones, looked up as of each bar's close."""
    settings = settings_for(collector_url, tmp_path, **LIGHT_MODEL)
    out = run_lineage(settings, instance, backtest=True, pools=POOLS[:1])
    pool_id = POOLS[0]
    db = build_definitions(settings).resources["collector_db"]
    result = out["backtests"][pool_id]
    traded = result.decisions[result.decisions["decision"] == "long"]
    assert len(traded) > 0
    for open_time, decision in traded.head(10).iterrows():
        close = open_time + H
        stored = db.signal_for_timestamp(pool_id, "1h", close)
        assert pd.Timestamp(stored["timestamp"]).tz_localize(None) == open_time.tz_convert(None)
        assert stored["side"] == "long" and math.isclose(stored["q50"], out["signals"][pool_id].loc[open_time, "q50"])
        # One second earlier the bar had not closed: the lookup returns an older signal.
        earlier = db.signal_for_timestamp(pool_id, "1h", close - pd.Timedelta(seconds=1))
        assert earlier is None or pd.Timestamp(earlier["timestamp"]).tz_localize(None) < open_time.tz_convert(None)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_regime_detection_with_existing_indicators(collector_url, tmp_path, instance):
    """Regimes from the feature stage's own RSI/MACD/Bollinger, past-only: labels on the real pool
    equal those computed on a truncated history, and the stored rows equal the asset's."""
    settings = settings_for(collector_url, tmp_path)
    defs = build_definitions(settings)
    pool_id = POOLS[0]
    r = defs.resolve_job_def("refresh_pool").execute_in_process(
        partition_key=pool_id, instance=instance, run_config=QUIET,
        asset_selection=[AssetKey("ohlcv_bars"), AssetKey("pool_trades"), AssetKey("qlib_features"),
                        AssetKey("regime_labels")])
    features, regimes = r.asset_value("qlib_features"), r.asset_value("regime_labels")
    # (pool_trades warns that this pool has no trades: its flow features are missing, by design)
    assert all(e.passed for e in r.get_asset_check_evaluations() if e.asset_key != AssetKey("pool_trades"))
    assert {"low", "medium", "high", "extreme"} <= set(regimes["vol_regime"])
    assert regimes.loc[features["is_warmup"], "vol_regime"].eq("unknown").all()
    config = settings.nautilus_trader.strategy_config.regime_detection.regime_config()
    cols = [*config.required_columns(), "is_warmup", "is_filled"]
    half = len(features) // 2
    pd.testing.assert_frame_equal(detect_regimes(features[cols].iloc[:half], config), regimes.iloc[:half])
    assert _count(collector_url, q50_regime_labels, pool_id=pool_id) == len(regimes)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backtests_skip_clearly_when_nautilus_is_disabled(collector_url, tmp_path, instance):
    settings = settings_for(collector_url, tmp_path, **LIGHT_MODEL, Q50__NAUTILUS_TRADER__ENABLED="false")
    out = run_lineage(settings, instance, backtest=True, pools=POOLS[:1])
    pool_id = POOLS[0]
    assert len(out["regimes"][pool_id]) > 0 and len(out["signals"][pool_id]) > 0  # analysis continues
    result = out["backtests"][pool_id]
    assert result.status == "disabled" and "nautilus_trader.enabled is false" in result.reason
    assert out["backtest_metadata"][pool_id]["status"].value == "disabled"
    assert _count(collector_url, q50_backtest_results) == 0
    assert _count(collector_url, q50_trading_history) == 0
    assert "No backtest results yet" in out["portfolio_metadata"]["summary"].value
