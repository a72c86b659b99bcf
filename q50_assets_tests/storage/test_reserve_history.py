"""The collector's liquidity as of its observation time (storage/collector.py reserve_observations_many),
on both databases: the pools snapshot as of last_updated, the history tables where they exist,
rows that observe nothing left out and counted, never a later observation; the assumed reserve
(a statistic of every pool's observations) from the same rows."""

import pandas as pd
import pytest
from sqlalchemy import inspect, update

from q50_assets.lineage.common.costs import FallbackReserve, NoReserveObservations, fallback_reserve_of
from q50_assets.lineage.signals.step import reserve_assumption
from q50_assets.settings import load_settings

from q50_assets.db.collector_models import COLLECTOR_HISTORY_TABLES, collector_history_metadata, pools
from q50_assets.db.engine import get_engine
from q50_assets.storage.collector import CollectorReader

POOL = "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama"
T = pd.Timestamp("2025-09-01 00:00", tz="UTC")
H = pd.Timedelta(hours=1)


def test_without_history_tables_only_the_snapshot_and_the_fallback(collector_url):
    db = CollectorReader(url=collector_url)
    names = set(inspect(db.engine).get_table_names())
    assert not names & {t.name for t in COLLECTOR_HISTORY_TABLES}  # a collector without them
    with db.engine.begin() as conn:
        conn.execute(update(pools).where(pools.c.id == POOL).values(reserve_usd=75_000.0,
                                                                   last_updated=(T + 10 * H).to_pydatetime()))
    observations, ignored = db.reserve_observations_many([POOL])[POOL]
    assert observations["source"].tolist() == ["collector_snapshot"] and ignored == 0
    series, _ = db.pool_reserves_many([POOL], fallback_usd=50_000.0)[POOL]
    assert series.at_ns((T + 9 * H).value) == (50_000.0, "fallback")  # before the snapshot was taken
    assert series.at_ns((T + 10 * H).value) == (75_000.0, "collector_snapshot")
    # The collector writes 0 for an unknown reserve: that observes nothing.
    with db.engine.begin() as conn:
        conn.execute(update(pools).where(pools.c.id == POOL).values(reserve_usd=0))
    observations, ignored = db.reserve_observations_many([POOL])[POOL]
    assert observations.empty and ignored == 1


def test_history_tables_read_as_of_their_collection_time(collector_url):
    db = CollectorReader(url=collector_url)
    engine = get_engine(collector_url)
    collector_history_metadata.create_all(engine)  # playing a collector that keeps history
    history, enhanced = COLLECTOR_HISTORY_TABLES
    with engine.begin() as conn:
        conn.execute(history.insert(), [
            {"pool_id": POOL, "reserve_in_usd": 40_000.0, "collected_at": (T + 2 * H).to_pydatetime()},
            {"pool_id": POOL, "reserve_in_usd": None, "collected_at": (T + 3 * H).to_pydatetime()},
            {"pool_id": "solana_other", "reserve_in_usd": 1.0, "collected_at": (T + 1 * H).to_pydatetime()},
        ])
        conn.execute(enhanced.insert(), [
            {"pool_id": POOL, "timestamp": int((T + 4 * H).timestamp()), "collection_interval": "1h",
             "reserve_in_usd": 90_000.0, "collected_at": (T + 5 * H).to_pydatetime()},
        ])
        conn.execute(update(pools).where(pools.c.id == POOL).values(reserve_usd=120_000.0,
                                                                   last_updated=(T + 8 * H).to_pydatetime()))
    observations, ignored = db.reserve_observations_many([POOL])[POOL]
    assert ignored == 1  # the NULL reserve
    assert sorted(observations["source"]) == ["collector_history", "collector_history_enhanced", "collector_snapshot"]
    series, _ = db.pool_reserves_many([POOL], fallback_usd=50_000.0)[POOL]
    assert series.at_ns((T + H).value) == (50_000.0, "fallback")  # another pool's row is not this one's
    assert series.at_ns((T + 2 * H).value) == (40_000.0, "collector_history")
    # The enhanced row describes 04:00 but was collected at 05:00: known only then.
    assert series.at_ns((T + 4 * H).value) == (40_000.0, "collector_history")
    assert series.at_ns((T + 5 * H).value) == (90_000.0, "collector_history_enhanced")
    assert series.at_ns((T + 100 * H).value) == (120_000.0, "collector_snapshot")


# ------------------------------------------------------------------ the assumed reserve's statistic

def test_assumed_reserve_is_the_median_of_the_sample_pools_observed_reserves(collector_url):
    db = CollectorReader(url=collector_url)
    levels = db.reserve_levels()
    # Independently: every pools row with a time and a reserve > 0 (the sample has one per pool).
    frame = pd.read_sql_table("pools", db.engine)
    observed = frame[frame["last_updated"].notna() & (frame["reserve_usd"].fillna(0) > 0)]
    assert len(levels) == len(observed) and set(levels["source"]) == {"collector_snapshot"}
    fallback = fallback_reserve_of(levels, "median")
    assert fallback.pools == observed["id"].nunique() == 4517
    assert fallback.usd == pytest.approx(float(observed["reserve_usd"].median()))
    assert fallback.usd == pytest.approx(5577.13)  # about 9x below the old constant of 50,000 USD
    assert fallback_reserve_of(levels, 0.25).usd == pytest.approx(float(observed["reserve_usd"].quantile(0.25)))
    # Through the port and the settings, as the signal and backtest steps read it.
    settings = load_settings(environ={"Q50_DATABASE_URL": collector_url})
    assert reserve_assumption(db, settings) == fallback
    override = load_settings(environ={"Q50_DATABASE_URL": collector_url,
                                      "Q50__NAUTILUS_TRADER__BACKTEST__FALLBACK_RESERVE_USD": "12345"})
    assert reserve_assumption(db, override) == FallbackReserve(12_345.0, "setting fallback_reserve_usd")


def test_assumed_reserve_weighs_each_pool_once_across_snapshot_and_history(collector_url):
    db = CollectorReader(url=collector_url)
    engine = get_engine(collector_url)
    collector_history_metadata.create_all(engine)  # a collector with the (enhanced) history tables
    history, enhanced = COLLECTOR_HISTORY_TABLES
    with engine.begin() as conn:
        conn.execute(update(pools).values(reserve_usd=None))  # only the rows below observe anything
        conn.execute(update(pools).where(pools.c.id == POOL).values(reserve_usd=100.0, last_updated=T.to_pydatetime()))
        conn.execute(history.insert(), [
            {"pool_id": POOL, "reserve_in_usd": 300.0, "collected_at": (T + H).to_pydatetime()},
            {"pool_id": POOL, "reserve_in_usd": 0.0, "collected_at": (T + 2 * H).to_pydatetime()},  # observes nothing
            {"pool_id": "solana_b", "reserve_in_usd": 1_000.0, "collected_at": (T + H).to_pydatetime()},
            {"pool_id": "solana_c", "reserve_in_usd": None, "collected_at": (T + H).to_pydatetime()},
        ])
        conn.execute(enhanced.insert(), [
            {"pool_id": POOL, "timestamp": int(T.timestamp()), "collection_interval": "1h",
             "reserve_in_usd": 500.0, "collected_at": (T + 3 * H).to_pydatetime()},
            {"pool_id": "solana_d", "timestamp": int(T.timestamp()), "collection_interval": "1h",
             "reserve_in_usd": 10.0, "collected_at": (T + 3 * H).to_pydatetime()},
        ])
    levels = db.reserve_levels()
    assert sorted(levels["source"]) == ["collector_history", "collector_history", "collector_history_enhanced",
                                        "collector_history_enhanced", "collector_snapshot"]
    # Per pool: POOL median(100, 300, 500) = 300, solana_b 1,000, solana_d 10 -> median over pools 300.
    fallback = fallback_reserve_of(levels, "median")
    assert (fallback.usd, fallback.pools, fallback.observations) == (300.0, 3, 5)
    assert fallback_reserve_of(levels, 0.75).usd == pytest.approx(650.0)  # numpy's linear quantile of 10, 300, 1000


def test_a_database_without_observations_stops_the_run_unless_told_what_to_assume(collector_url):
    db = CollectorReader(url=collector_url)
    with db.engine.begin() as conn:
        conn.execute(update(pools).values(reserve_usd=0))  # the collector's "unknown"
    assert db.reserve_levels().empty
    settings = load_settings(environ={"Q50_DATABASE_URL": collector_url})
    with pytest.raises(NoReserveObservations, match="fallback_reserve_usd"):
        reserve_assumption(db, settings)
    told = load_settings(environ={"Q50_DATABASE_URL": collector_url, "Q50__NAUTILUS_TRADER__BACKTEST__FALLBACK_RESERVE": "none"})
    assert reserve_assumption(db, told) == FallbackReserve(None, "none")
