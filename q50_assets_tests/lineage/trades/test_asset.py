"""Trades stage on the real sample, both databases: the collector's trades reconciled with the bars,
the +6 h block_timestamp shift named, trade fields in the QLib store and flow features computed by
QLib from them -- or missing (NaN, counted), never zero, where the trades are unusable."""

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from sqlalchemy import func, select

from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.lineage.trades.asset import pool_trades
from q50_assets.automation.runs import range_tags
from q50_assets.db.collector_models import ohlcv_data
from q50_assets.db.collector_models import trades as trades_table
from q50_assets.db.engine import get_engine
from q50_assets.definitions import build_resources
from q50_assets.lineage.features.formulas import FLOW_FEATURES
from q50_assets.lineage.trades.rules import TRADE_CHECKS, TRADE_FIELDS, trade_epoch
from q50_assets.storage.qlib_store import instrument_name
from q50_assets_tests.conftest import settings_for

MAIN_POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"   # 201 trades
QUIET_POOL = "solana_2Zya4XnGCrzAXBXw8ZpfNAifwH3xsCoLo1RB3FFdaRMj"  # bars, no trades


class Materialized:
    """One pool's values and check results from a batch run of bars, trades and features."""

    def __init__(self, result, pool_id: str):
        self.result, self.pool_id, self.success = result, pool_id, result.success

    def value(self, asset: str):
        return self.result.output_for_node(asset)[self.pool_id]

    def metadata(self, asset: str) -> dict:
        (event,) = [e for e in self.result.get_asset_materialization_events()
                    if e.asset_key.to_user_string() == asset and e.partition == self.pool_id]
        return event.materialization.metadata

    def checks(self, asset: str) -> dict:
        return {e.check_name: e for e in self.result.get_asset_check_evaluations()
                if e.asset_key.to_user_string() == asset and e.partition == self.pool_id}


def _materialize(settings, pool_id, others=()):
    """The pool (with ``others`` in the same batch run) through bars, trades and features."""
    pools = [pool_id, *others]
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, pools)
        result = materialize([ohlcv_bars, pool_trades, qlib_features], resources=build_resources(settings),
                             instance=instance, tags=range_tags(pools))
        return Materialized(result, pool_id)


@pytest.fixture
def settings(collector_url, tmp_path):
    return settings_for(collector_url, tmp_path)


def test_trades_reconcile_name_the_shift_and_feed_flow_features(settings):
    # One batch run with a pool that has no trades: each pool's fields stay its own.
    result = _materialize(settings, MAIN_POOL, others=[QUIET_POOL])
    quiet = Materialized(result.result, QUIET_POOL)
    assert quiet.metadata("pool_trades")["flow_features"].value == "missing"
    assert quiet.value("qlib_features")[list(FLOW_FEATURES)].isna().all().all()
    checks = result.checks("pool_trades")
    assert set(checks) == set(TRADE_CHECKS) and all(c.passed for c in checks.values())
    clock = checks["clock_shift"].metadata
    assert clock["block_timestamp_shift"].value == "+6 h" and clock["id_epoch_shift"].value == "+0 h"
    md = result.metadata("pool_trades")
    assert md["flow_features"].value == "written" and md["trades_read"].value == 201
    assert "| +6 | " in md["clock_shift_table"].value

    # Trade fields in QLib's binary format, over the span the trades cover only.
    analysis = result.value("pool_trades")
    folder = settings.database_dir / "qlib" / "features" / instrument_name(MAIN_POOL)
    raw = np.fromfile(folder / "trade_count.60min.bin", dtype="<f4")
    assert len(raw) - 1 == len(analysis.grid) and raw[1:].sum() == analysis.counts["inside_complete_bars"]
    assert all((folder / f"{f}.60min.bin").exists() for f in TRADE_FIELDS)

    # Flow features from QLib expressions: values inside the span, NaN (never 0) before it.
    frame = result.value("qlib_features")
    span = analysis.grid.index
    before = frame.index < span[0]
    assert frame.loc[before, "trade_count"].isna().all() and frame.loc[before, "flow_imbalance"].isna().all()
    inside = frame.loc[span[0]:span[-1]]
    assert inside["trade_count"].notna().all()
    assert inside["trade_count"].sum() == analysis.counts["inside_complete_bars"]
    traded = inside["trade_count"] > 0
    expected = (analysis.grid["buy_usd"] - analysis.grid["sell_usd"]) / (analysis.grid["buy_usd"] + analysis.grid["sell_usd"])
    assert np.allclose(inside.loc[traded, "flow_imbalance"], expected[traded.to_numpy()], atol=1e-6)
    assert inside.loc[~traded, "flow_imbalance"].isna().all()  # no trade: imbalance undefined
    features = result.checks("qlib_features")
    assert features["no_nan_after_warmup"].passed
    missing = result.metadata("qlib_features")["optional_features_missing"].value
    usable = ~frame["is_filled"] & ~frame["is_warmup"]
    assert missing == {c: int(frame.loc[usable, c].isna().sum()) for c in FLOW_FEATURES}
    assert 0 < missing["trade_count"] < usable.sum()


def test_a_pool_without_trades_has_flow_features_missing_not_zero(settings):
    result = _materialize(settings, QUIET_POOL)
    assert result.success
    checks = result.checks("pool_trades")
    assert not checks["trade_coverage"].passed  # a warning: the pool still runs on its bars
    assert checks["trade_coverage"].severity.value == "WARN"
    frame = result.value("qlib_features")
    assert frame[list(FLOW_FEATURES)].isna().all().all()
    assert result.checks("qlib_features")["no_nan_after_warmup"].passed


@pytest.mark.parametrize("backend", ["sqlite"])
def test_trades_that_stop_reconciling_lose_their_fields(settings, collector_url):
    """Once the ids' clock drifts (+3 h), the checks fail and the stored trade fields go: flow features
    become missing rather than built on misplaced trades."""
    first = _materialize(settings, MAIN_POOL)
    assert first.value("qlib_features")["trade_count"].notna().any()
    engine = get_engine(collector_url)
    with engine.begin() as conn:  # the test plays a collector whose id epochs are 3 h late
        ids = conn.execute(select(trades_table.c.id).where(trades_table.c.pool_id == MAIN_POOL)).scalars().all()
        for trade_id in ids:
            conn.execute(trades_table.update().where(trades_table.c.id == trade_id).values(
                id=trade_id.rsplit("_", 1)[0] + f"_{trade_epoch(trade_id) + 3 * 3600}"))
    second = _materialize(settings, MAIN_POOL)
    checks = second.checks("pool_trades")
    assert not checks["clock_shift"].passed and checks["clock_shift"].metadata["id_epoch_shift"].value == "+3 h"
    folder = settings.database_dir / "qlib" / "features" / instrument_name(MAIN_POOL)
    assert not any((folder / f"{f}.60min.bin").exists() for f in TRADE_FIELDS)
    frame = second.value("qlib_features")
    assert frame[list(FLOW_FEATURES)].isna().all().all()
    pd.testing.assert_series_equal(first.value("qlib_features")["close"], frame["close"])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_trade_in_the_held_back_bar_is_counted_never_used(settings, collector_url):
    """Look-ahead bait: a trade inside the newest (partial, held-back) bar, by its id's epoch. Its
    bar is not complete, so its trade may not reach any feature; it is counted as held back."""
    first = _materialize(settings, MAIN_POOL).value("pool_trades")
    engine = get_engine(collector_url)
    with engine.begin() as conn:  # the test plays the collector
        row = dict(conn.execute(select(trades_table).where(trades_table.c.pool_id == MAIN_POOL)).mappings().first())
        newest_open = conn.execute(select(func.max(ohlcv_data.c.timestamp)).where(  # the held-back bar
            ohlcv_data.c.pool_id == MAIN_POOL, ohlcv_data.c.timeframe == "1h")).scalar()
        epoch = newest_open + 30 * 60
        conn.execute(trades_table.insert().values({**row, "id": f"solana_1_bait_0_{epoch}",
                                                   "block_timestamp": pd.Timestamp(epoch + 6 * 3600, unit="s", tz="UTC")}))
    second = _materialize(settings, MAIN_POOL).value("pool_trades")
    assert second.counts["at_or_after_held_back_bar"] == first.counts["at_or_after_held_back_bar"] + 1
    assert second.counts["inside_complete_bars"] == first.counts["inside_complete_bars"]
    pd.testing.assert_frame_equal(first.grid, second.grid)
