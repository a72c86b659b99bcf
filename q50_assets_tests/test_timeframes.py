"""Every timeframe the settings accept runs: QLib has a frequency for it, and the sample's 15m and 4h
series go through the lineage (in-process materializations, as the other asset tests do)."""

import typing

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance

from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.settings import TIMEFRAME_SECONDS
from q50_assets.lineage.features.formulas import to_bar_grid
from q50_assets.storage.qlib_store import QlibStore
from q50_assets.settings import Timeframe, load_settings
from q50_assets.lineage.common.gate import Blocked
from q50_assets_tests.lineage.signals.test_model_and_signals_assets import run_lineage
from q50_assets_tests.conftest import settings_for

POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"


@pytest.mark.parametrize("timeframe", typing.get_args(Timeframe))
def test_every_accepted_timeframe_has_a_qlib_store(timeframe, tmp_path):
    assert load_settings(environ={"Q50_TIMEFRAME": timeframe, "Q50_DATA_DIR": str(tmp_path)}).timeframe == timeframe
    seconds = TIMEFRAME_SECONDS[timeframe]
    opens = pd.date_range("2025-01-03", periods=60, freq=pd.Timedelta(seconds=seconds), tz="UTC", name="open_time")
    close = 1.0 + np.arange(60) / 100.0
    bars = pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": 10.0},
                        index=opens).drop(opens[[5, 6]])  # two missing bars: filled on the grid
    store = QlibStore(provider_dir=str(tmp_path / "qlib"), timeframe=timeframe)
    assert store.bar == pd.Timedelta(seconds=seconds)
    store.write_pool("pool_a", to_bar_grid(bars, seconds))
    out = store.features(["pool_a"], {"close": "$close", "prev": "Ref($close,1)", "filled": "$filled"}).loc["pool_a"]
    assert (out.index == opens).all()
    assert np.allclose(out["close"].drop(opens[[5, 6]]), close[[i for i in range(60) if i not in (5, 6)]], rtol=1e-6)
    assert out["filled"].tolist() == [1.0 if i in (5, 6) else 0.0 for i in range(60)]
    assert np.allclose(out["prev"].iloc[2:5], close[1:4], rtol=1e-6)  # Ref(,1) is one bar of this timeframe
    assert (tmp_path / "qlib" / "calendars" / f"{seconds // 60}min.txt").exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_15m_pool_runs_through_the_lineage(collector_url, tmp_path):
    settings = settings_for(collector_url, tmp_path, Q50_TIMEFRAME="15m")
    bar = pd.Timedelta(minutes=15)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [POOL])
        out = run_lineage(settings, instance, backtest=True, pools=[POOL])
    features = out["features"][POOL]
    assert (features.index.to_series().diff().dropna() == bar).all()
    assert (features["known_at"] == features.index + bar).all()
    assert features["trade_count"].notna().any()  # the 15m trades pass their checks: flow features exist
    result = out["model"].result
    assert "flow_imbalance" in result.feature_columns and len(result.predictions) > 300
    with_flow = out["model_metadata"]["rows_with_optional_features"].value
    assert 0 < with_flow["trade_count"] < out["model_metadata"]["usable_rows"].value  # reaches the model, where known
    assert (result.predictions["predicted_at"] == result.predictions.index.get_level_values("open_time") + bar).all()
    signals = out["signals"][POOL]
    assert (signals["known_at"] >= signals.index + bar).all()
    backtest = out["backtests"][POOL]
    assert backtest.status == "ok" and backtest.oos_start == signals.index.min() + bar
    assert all(e.passed for e in out["backtest_checks"])
    history = out["history"][POOL]
    assert len(history) == len(backtest.outcomes["q50"].fills) > 0
    # fills at bar closes on the 15m grid
    assert (pd.DatetimeIndex(history["timestamp"]).as_unit("ns").asi8 % (15 * 60 * 10**9) == 0).all()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_4h_pool_too_short_for_the_model_runs_and_says_so(collector_url, tmp_path):
    """62 bars of 4h: features and regimes run, the walk-forward model has no fold yet (its first
    window is 240 bars), so no signal exists and the backtest reports why instead of failing."""
    settings = settings_for(collector_url, tmp_path, Q50_TIMEFRAME="4h")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [POOL])
        out = run_lineage(settings, instance, backtest=True, pools=[POOL])
    assert len(out["features"][POOL]) == 61
    assert len(out["model"].result.predictions) == 0 and out["model"].live is None
    assert len(out["signals"][POOL]) == 0
    # The pool has no signal rows: its backtest is skipped in the data, naming the stage and why.
    skipped = out["backtests"][POOL]
    assert isinstance(skipped, Blocked) and skipped.stage == "q50_signals"
    assert "no out-of-sample prediction" in skipped.reason
