"""The collector's liquidity as of its observation time (storage/collector.py reserve_observations_many),
on both databases: the pools snapshot as of last_updated, the history tables where they exist,
rows that observe nothing left out and counted, never a later observation."""

import pandas as pd
from sqlalchemy import inspect, update

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
