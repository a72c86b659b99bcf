"""Regimes -> NautilusTrader backtests -> trading history on real pools, both databases, in batch
runs; the integration plan's three tests (TestNautilusIntegration); the nautilus_trader.enabled:
false fallback, and the fallback when NautilusTrader cannot be imported at all."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy import func, select

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_backtest_results, q50_regime_labels, q50_signals, q50_trading_history
from q50_assets.definitions import build_definitions
from q50_assets.lineage.backtest.engine import Q50Inputs, run_q50_backtest
from q50_assets.lineage.backtest.step import variants_for
from q50_assets.settings import BacktestSettings
from q50_assets.lineage.regimes.rules import REGIME_LABELS, RegimeConfig, RegimeDetector, detect_regimes
from q50_assets.lineage.signals.rules import Q50SignalLoader
from q50_assets.storage.project_tables import ProjectTables
from q50_assets.lineage.common.gate import Blocked
from q50_assets_tests.lineage.signals.test_model_and_signals_assets import DEEP_POOL, LIGHT_MODEL, QUIET, run_lineage
from q50_assets_tests.conftest import settings_for

POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_Ekv9HdumWqnXZgq5G6ge6bk1ZRHKXYC2WnSFL94sQmLJ",
]
H = pd.Timedelta(hours=1)
VARIANTS = variants_for(BacktestSettings().reserve_sensitivity)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


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


class TestNautilusIntegration:
    """The integration plan's test class: the classes the strategy uses, on real pools and a real database."""

    def test_q50_signal_loading(self, collector_url, tmp_path, instance):
        """Q50SignalLoader, built from the signal frame and from the q50_signals table, returns the
        signal known at each bar close, never a later one; the strategy decided on exactly those."""
        # A deep assumed pool: at the sample's median reserve (~5.6k USD) this pool's signals never
        # pay their impact, and the decisions below need an entry.
        settings = settings_for(collector_url, tmp_path, **LIGHT_MODEL, **DEEP_POOL)
        out = run_lineage(settings, instance, backtest=True, pools=POOLS[:1])
        pool_id = POOLS[0]
        signals = out["signals"][pool_id]
        db = build_definitions(settings).resources["project_tables"]
        from_frame = Q50SignalLoader(signals)
        from_table = db.signal_loader(pool_id, "1h")
        assert len(from_frame) == len(from_table) == len(signals) > 100
        for open_time in signals.index[:: max(1, len(signals) // 40)]:
            close = open_time + H
            for loader in (from_frame, from_table):
                got = loader.get_signal_for_timestamp(close)
                assert got["open_time"] == open_time and got["known_at"] <= close
                assert math.isclose(got["q50"], signals.loc[open_time, "q50"], rel_tol=1e-12)
                # One second earlier the bar had not closed: an older signal, or none.
                earlier = loader.get_signal_for_timestamp(close - pd.Timedelta(seconds=1))
                assert earlier is None or earlier["open_time"] < open_time
            # The plan's database lookup agrees.
            stored = db.signal_for_timestamp(pool_id, "1h", close)
            assert pd.Timestamp(stored["timestamp"]).tz_localize(None) == open_time.tz_convert(None)
        # The strategy's decisions name the signal they used: the bar that had just closed, known by then.
        decisions = out["backtests"][pool_id].decisions
        assert len(decisions) > 0
        assert (decisions["signal_open"].dropna() == decisions.index[decisions["signal_open"].notna()] - H).all()
        assert (decisions["known_at"].dropna() <= decisions.index[decisions["known_at"].notna()]).all()
        entries = decisions[decisions["action"] == "enter"]
        for ts, d in entries.iterrows():
            row = signals.loc[d["signal_open"]]
            assert row["q50"] > 0 and d["expected_value"] == pytest.approx(
                0.3 * row["q10"] + 0.4 * row["q50"] + 0.3 * row["q90"])

    @pytest.mark.parametrize("backend", ["sqlite"])
    def test_regime_detection_with_existing_indicators(self, collector_url, tmp_path, instance):
        """Regimes from the feature stage's own RSI/MACD/Bollinger, past-only: the RegimeDetector
        classifying the pool bar by bar online gives the asset's labels; labels on a truncated
        history equal the full run's; the detector built from the stored rows answers as of a time."""
        settings = settings_for(collector_url, tmp_path)
        defs = build_definitions(settings)
        pool_id = POOLS[0]
        r = defs.resolve_job_def("refresh_pools").execute_in_process(
            partition_key=pool_id, instance=instance, run_config=QUIET,
            asset_selection=[AssetKey("ohlcv_bars"), AssetKey("qlib_features"), AssetKey("regime_labels")])
        features = r.output_for_node("qlib_features")[pool_id]
        regimes = r.output_for_node("regime_labels")[pool_id]
        assert all(e.passed for e in r.get_asset_check_evaluations())
        assert {"low", "medium", "high", "extreme"} <= set(regimes["vol_regime"])
        assert regimes.loc[features["is_warmup"], "vol_regime"].eq("unknown").all()
        config = RegimeConfig.of(settings)
        detector = RegimeDetector(config)
        online = [detector.classify_volatility_regime(v, raw, warmup=w) for v, raw, w in
                  zip(features["vol_risk"], features["vol_raw"], features["is_warmup"])]
        assert online == regimes["vol_regime"].tolist()
        cols = [*config.required_columns(), "is_warmup", "is_filled"]
        half = len(features) // 2
        pd.testing.assert_frame_equal(detect_regimes(features[cols].iloc[:half], config), regimes.iloc[:half])
        assert _count(collector_url, q50_regime_labels, pool_id=pool_id) == len(regimes)
        # What the next stage reads back through the table IO manager is what was computed.
        db = build_definitions(settings).resources["project_tables"]
        rows = db.pool_rows(q50_regime_labels, "1h", [pool_id])[pool_id]
        pd.testing.assert_frame_equal(rows, regimes, check_like=True, check_index_type=False, check_names=False)
        stored = RegimeDetector(config).with_labels(rows)
        for open_time in regimes.index[::97]:
            got = stored.get_regime_for_timestamp(open_time + H)
            assert got["open_time"] == open_time and got["regime"] == regimes.loc[open_time, "regime"]
            assert got["position_multiplier"] == regimes.loc[open_time, "position_multiplier"]
            earlier = stored.get_regime_for_timestamp(open_time + H - pd.Timedelta(seconds=1))
            assert earlier is None or earlier["open_time"] < open_time

    def test_database_integration(self, collector_url, tmp_path, instance, sqlite_sample_file):
        """The full lineage to trading history on a real database: every check passes; every variant
        on one out-of-sample span on the full time grid; the stored history reconciles with
        Nautilus' fills and each fill cost what the cost model expected; the stored signals, read back
        through the strategy's own database factory, give the same fills; signal_source: database is
        honoured (signals read from another database's q50_signals)."""
        # A deep assumed pool (2 M USD instead of 50 k): impact small enough that the light model's
        # signals trade in these three pools, so fills, history and round trips are exercised.
        deep = {**LIGHT_MODEL, **DEEP_POOL}
        settings = settings_for(collector_url, tmp_path, **deep)
        out = run_lineage(settings, instance, backtest=True, pools=POOLS)

        assert out["backtest_checks"] and all(e.passed for e in out["backtest_checks"]), [
            (e.asset_key.to_user_string(), e.check_name) for e in out["backtest_checks"] if not e.passed]
        total_fills = 0
        for pool_id in POOLS:
            result = out["backtests"][pool_id]
            assert result.status == "ok"
            assert list(result.metrics.index) == list(VARIANTS)
            # Out of sample: the span starts at the close of the first bar with an OOS signal; the
            # strategy holds nothing before it.
            first_signal_open = out["signals"][pool_id].index.min()
            assert result.oos_start == first_signal_open + H
            equity = result.outcomes["q50"].equity
            assert (equity.loc[equity.index < result.oos_start, "qty"] == 0).all()
            # The full time grid: one row per hour from the first OOS close to the last bar's close,
            # including hours the collector has no bar for (flat for every variant).
            grid = result.bar_returns.index
            assert grid[0] == result.oos_start and grid[-1] == result.bars.index[-1] + H
            assert (grid[1:] - grid[:-1] == H).all() and list(result.bar_returns.columns) == list(VARIANTS)
            missing = grid.difference(result.bars.index + H)
            assert (result.bar_returns.loc[missing] == 0).all().all()
            assert (result.bar_returns["cash"] == 0).all() and (result.positions["cash"] == 0).all()
            growth = (1 + result.bar_returns).prod() - 1
            assert np.allclose(growth.to_numpy(), result.metrics.loc[growth.index, "total_return"].to_numpy())
            # Buy & hold is invested for (almost) the whole span; matched buy & hold at q50's mean position.
            assert result.metrics.loc["buy_and_hold", "exposure"] > 0.9
            q50_mean = result.metrics.loc["q50", "mean_position"]
            assert result.metrics.loc["buy_and_hold_matched", "mean_position"] == pytest.approx(q50_mean, abs=0.01)
            # The reserve: the sample's snapshots postdate its bars, so the span runs on the assumed
            # reserve, said so; halving and doubling it changes the costs charged.
            assert result.reserve["fallback_share"] == 1.0 and result.metrics["reserve_fallback_share"].eq(1.0).all()
            perm = result.permutation
            assert perm["draws"] >= 1000 and 0 < perm["p_value"] <= 1
            assert perm["replayed_statistic"] == pytest.approx(perm["statistic"], rel=1e-6, abs=1e-12)
            # Trading history: one row per Nautilus fill, linked to the decision that made it.
            history = out["history"][pool_id]
            q50 = result.outcomes["q50"]
            assert len(history) == len(q50.fills)
            total_fills += len(q50.fills)
            if len(history):
                assert history["fee"].sum() == pytest.approx(q50.fees_paid)
                assert (history["filled_at"] == history["decided_at"] + H).all()  # one bar of latency
                buys = history[history["side"] == "BUY"]
                assert buys["q50_signal"].notna().all() and (buys["position_size"] > 0).all()
                assert buys["regime_classification"].isin(REGIME_LABELS).all()
                assert buys["feature_vector_id"].notna().all()
                # Decision and fill read one cost model: what it expected each fill to cost is what
                # Nautilus charged, to the cent (fee rounding) and tick (price rounding).
                charged = history["fee"] + history["impact"]
                tick = 10.0 ** -q50.price_precision / q50.lot_tokens
                assert ((history["expected_cost_usd"] - charged).abs()
                        <= 0.011 + history["quantity"] * tick).all()
            md = out["backtest_metadata"][pool_id]
            assert "![growth of 1 USD](data:image/png;base64," in md["equity_curve"].value
            assert "| buy_and_hold_matched |" in md["summary"].value and "| q50_close |" in md["summary"].value

        assert total_fills > 0  # the real signals do trade
        run_ids = {out["backtests"][p].backtest_run_id for p in POOLS}
        assert _count(collector_url, q50_trading_history) == total_fills
        assert _count(collector_url, q50_backtest_results) == len(VARIANTS) * len(POOLS)
        portfolio = out["portfolio"]
        assert set(portfolio.index) == set(VARIANTS)
        traded = [p for p in POOLS if out["backtests"][p].metrics.loc["q50", "trades"] > 0]
        assert portfolio.loc["q50", "pools"] == len(traded)
        summary = out["portfolio_metadata"]["summary"].value
        assert "Permutation null (1,000 circular shifts" in summary and "pooled over 3 pools" in summary
        pooled = out["portfolio_metadata"]["pooled_permutation_p_value"].value
        assert 0 < pooled <= 1

        # The research report: in the asset's metadata with its pictures embedded, and as an HTML
        # page under the data dir; computed from what the backtests stored, over the traded pools.
        meta = out["portfolio_metadata"]
        report_md = meta["report"].value
        for picture in ("equity_curves", "permutation_null", "reliability", "breakdowns"):
            assert f"![{picture}](data:image/png;base64," in report_md
        assert "Signals net of cost" in report_md and "The model against a naive forecaster" in report_md
        assert meta["dsr_trials"].value == 5  # q50, q50_close, the reserve halved and doubled, q50_horizon
        assert meta["pools_in_report"].value == len(traded)
        page = Path(meta["report_html"].value)
        assert page.parent == settings.database_dir / "reports"
        assert page.read_text().count('src="data:image/png;base64,') == 4
        low, mid, high = (meta[f"q50_mean_bar_return{s}"].value for s in ("_low", "", "_high"))
        if meta["q50_round_trips"].value >= settings.evaluation.min_round_trips_for_interval:
            assert low <= mid <= high
        else:  # too few round trips for an interval: none is printed
            assert np.isnan(low) and np.isnan(high) and np.isnan(meta["q50_psr"].value)
        # The headline is of the equal-weight portfolio of the pools present at each bar.
        from q50_assets.lineage.common.uncertainty import equal_weight_portfolio
        portfolio_q50 = equal_weight_portfolio({p: out["backtests"][p].bar_returns for p in traded})["q50"]
        assert mid == pytest.approx(portfolio_q50.mean())

        # The strategy built from the stored tables through its own inputs_factory (as a live node
        # would) makes exactly the backtest's fills.
        pool_id = next(p for p in POOLS if len(out["backtests"][p].outcomes["q50"].fills))
        result = out["backtests"][pool_id]
        from q50_assets.storage.project_tables import strategy_inputs_from_database

        loader, detector = strategy_inputs_from_database(pool_id, "1h", collector_url)
        risk = settings.nautilus_trader.risk_management
        again = run_q50_backtest(pool_id, result.bars, Q50Inputs(
            loader, detector, risk.base_position_size, risk.max_position_size,
            settings.nautilus_trader.backtest.kelly_fraction, settings.signals.variance_multiplier),
            result.outcomes["q50"].spec)
        pd.testing.assert_frame_equal(again.trades.drop(columns="client_order_id"),
                                      result.outcomes["q50"].trades.drop(columns="client_order_id"))

        # Re-running a backtest run's history replaces its rows: no duplicates.
        db = build_definitions(settings).resources["project_tables"]
        rows = out["history"][pool_id]
        before = _count(collector_url, q50_trading_history)
        assert db.replace_trading_history_many({pool_id: (result.backtest_run_id, rows)}) == {pool_id: len(rows)}
        assert _count(collector_url, q50_trading_history) == before

        # A new backtest run keeps the old run's history (each run has its own id).
        step = "backtest_and_trading_history"
        both = [AssetKey("backtest_results"), AssetKey("q50_trading_history")]
        rerun = build_definitions(settings).resolve_job_def("refresh_pools").execute_in_process(
            partition_key=pool_id, instance=instance, run_config=QUIET, asset_selection=both)
        new_id = rerun.output_for_node(step, "backtest_results")[pool_id].backtest_run_id
        assert new_id not in run_ids
        assert _count(collector_url, q50_trading_history, backtest_run_id=new_id) == len(rows)  # deterministic
        assert _count(collector_url, q50_trading_history) == before + len(rows)
        run_ids.add(new_id)

        # signal_source: database backtests the signals STORED in another database's q50_signals
        # (signals made elsewhere): there every q50 of the pool is negative, so the strategy reading
        # them never enters, while this run's own signals (the project's table, unchanged) trade.
        signal_url = f"sqlite:///{tmp_path / 'signals_elsewhere.sqlite'}"
        shutil.copy(sqlite_sample_file, tmp_path / "signals_elsewhere.sqlite")
        elsewhere = ProjectTables(url=signal_url)
        elsewhere.migrate()
        negative = db.signal_rows_many("1h", [pool_id])[pool_id].assign(q10=-0.2, q50=-0.1, q90=-0.05, feature_vector_id=None)
        assert elsewhere.replace_pool_rows_many(q50_signals, "1h", {pool_id: negative}) == {pool_id: len(out["signals"][pool_id])}
        from_db = settings_for(collector_url, tmp_path, **deep,
                               Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__SIGNAL_SOURCE="database",
                               Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__DATABASE_URI=signal_url)
        rerun = build_definitions(from_db).resolve_job_def("refresh_pools").execute_in_process(
            partition_key=pool_id, instance=instance, run_config=QUIET, asset_selection=both)
        stored_run = rerun.output_for_node(step, "backtest_results")[pool_id]
        assert stored_run.backtest_run_id not in run_ids
        assert stored_run.metrics.loc["q50", "trades"] == 0 < result.metrics.loc["q50", "trades"]
        (mat,) = [e for e in rerun.get_asset_materialization_events() if e.asset_key == AssetKey("backtest_results")]
        assert mat.materialization.metadata["signal_source"].value == "database"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backtests_skip_clearly_when_nautilus_is_disabled(collector_url, tmp_path, instance):
    settings = settings_for(collector_url, tmp_path, **LIGHT_MODEL, Q50__NAUTILUS_TRADER__ENABLED="false")
    out = run_lineage(settings, instance, backtest=True, pools=POOLS[:1])
    pool_id = POOLS[0]
    assert len(out["regimes"][pool_id]) > 0 and len(out["signals"][pool_id]) > 0  # analysis continues
    result = out["backtests"][pool_id]
    assert result.status == "disabled" and "nautilus_trader.enabled is false" in result.reason
    history = out["history"][pool_id]  # no trading history: the pool is skipped, saying why
    assert isinstance(history, Blocked) and "disabled" in history.reason
    assert out["backtest_metadata"][pool_id]["status"].value == "disabled"
    assert _count(collector_url, q50_backtest_results) == 0
    assert _count(collector_url, q50_trading_history) == 0
    assert "No backtest results yet" in out["portfolio_metadata"]["summary"].value


# Run in a child process where `import nautilus_trader` fails (a meta-path finder refuses it, as
# a missing or broken install would): the code location loads, the lineage runs to signals and
# regimes, and the backtest stages record status "unavailable" with the reason.
_NO_NAUTILUS = textwrap.dedent("""
    import importlib.abc, json, sys

    class RefuseNautilus(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "nautilus_trader" or name.startswith("nautilus_trader."):
                raise ImportError("nautilus_trader is not installed (refused by the test)")
            return None

    sys.meta_path.insert(0, RefuseNautilus())
    from dagster import DagsterInstance
    from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
    from q50_assets.definitions import defs  # the code location loads
    from q50_assets.settings import load_settings
    from q50_assets_tests.lineage.signals.test_model_and_signals_assets import run_lineage

    pools = [sys.argv[1]]
    settings = load_settings()
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, pools)
        out = run_lineage(settings, instance, backtest=True, pools=pools)
    result = out["backtests"][pools[0]]
    print(json.dumps({
        "nautilus_modules": sorted(m for m in sys.modules if m.startswith("nautilus_trader")),
        "signals": len(out["signals"][pools[0]]), "regimes": len(out["regimes"][pools[0]]),
        "status": result.status, "reason": result.reason, "history": str(out["history"][pools[0]]),
        "metadata_status": out["backtest_metadata"][pools[0]]["status"].value,
        "portfolio": out["portfolio_metadata"]["summary"].value,
    }))
""")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backtests_record_unavailable_when_nautilus_cannot_be_imported(collector_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "Q50_DATABASE_URL": collector_url,
           "Q50_DATA_DIR": str(tmp_path), **LIGHT_MODEL}
    done = subprocess.run([sys.executable, "-c", _NO_NAUTILUS, POOLS[0]], env=env, capture_output=True, text=True,
                          cwd=str(PROJECT_ROOT), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["nautilus_modules"] == []  # really never imported
    assert report["signals"] > 100 and report["regimes"] > 100  # signal analysis continues
    assert report["status"] == report["metadata_status"] == "unavailable"
    assert "nautilus_trader cannot be imported" in report["reason"] and "refused by the test" in report["reason"]
    assert report["history"].startswith("blocked by backtest_results: no verified backtest (unavailable")
    assert _count(collector_url, q50_backtest_results) == 0
