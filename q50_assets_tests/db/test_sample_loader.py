import hashlib

import pandas as pd
import pytest
from sqlalchemy import func, insert, select, text

from q50_assets.db.collector_models import COLLECTOR_TABLES, collection_metadata, ohlcv_data, pools, trades
from q50_assets.db.engine import get_engine
from q50_assets.db.sample_loader import EXPORT_DIR, QLIB_CSV, load_sample


def _table_digest(engine) -> dict[str, tuple[int, str]]:
    """Row count and content hash of every collector table, order-independent."""
    out = {}
    with engine.connect() as conn:
        for table in COLLECTOR_TABLES:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            digest = hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()
            out[table.name] = (len(rows), digest)
    return out


def test_loads_the_real_sample_and_a_second_run_changes_nothing(empty_db_url):
    engine = get_engine(empty_db_url)
    first = load_sample(engine)

    export_bars = pd.read_csv(EXPORT_DIR / "ohlcv_data.csv.gz")
    csv_bars = pd.read_csv(QLIB_CSV)
    # Every export row plus every CSV bar the export does not already hold.
    assert first.csv_bars_superseded_by_export == 72
    assert first.tables["ohlcv_data"].inserted == len(export_bars) + len(csv_bars) - 72
    assert first.tables["pools"].inserted == 4850 + 58
    assert first.pools_synthesized == 58
    before = _table_digest(engine)
    assert before["trades"][0] == 371

    second = load_sample(engine)
    assert second.inserted == 0
    assert all(t.already_present == t.in_sample for t in second.tables.values())
    assert _table_digest(engine) == before


def test_csv_bars_become_1h_rows_at_their_utc_open_and_the_export_wins_on_overlap(empty_db_url):
    engine = get_engine(empty_db_url)
    load_sample(engine)
    pool = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
    with engine.connect() as conn:
        # The CSV's partial last bar (2025-09-28 07:00 UTC) was revised later: the export's close stays.
        close = conn.execute(
            select(ohlcv_data.c.close_price).where(
                ohlcv_data.c.pool_id == pool, ohlcv_data.c.timeframe == "1h", ohlcv_data.c.timestamp == 1759042800
            )
        ).scalar_one()
        first_csv_pool = conn.execute(
            select(ohlcv_data.c.timestamp, ohlcv_data.c.open_price)
            .where(ohlcv_data.c.pool_id == "solana_2Zya4XnGCrzAXBXw8ZpfNAifwH3xsCoLo1RB3FFdaRMj")
            .order_by(ohlcv_data.c.timestamp)
            .limit(1)
        ).one()
        synthesized = conn.execute(
            select(pools.c.dex_id, pools.c.discovery_source).where(
                pools.c.id == "solana_2Zya4XnGCrzAXBXw8ZpfNAifwH3xsCoLo1RB3FFdaRMj"
            )
        ).one()
        # The trade quirk is preserved, not "fixed": block_timestamp is 6 h after the id's epoch.
        trade_id, block_ts = conn.execute(select(trades.c.id, trades.c.block_timestamp).limit(1)).one()
    assert close == 0.00010689  # the CSV export had 0.00010634 for this still-running bar
    assert first_csv_pool == (1758265200, 0.00010512)  # 2025-09-19 07:00:00 UTC
    assert synthesized == ("solana_unknown", "qlib_csv_1h")
    true_epoch = int(trade_id.rsplit("_", 1)[1])
    shift = pd.Timestamp(block_ts).tz_localize(None) if pd.Timestamp(block_ts).tzinfo is None else pd.Timestamp(block_ts).tz_convert(None)
    assert round((shift - pd.Timestamp(true_epoch, unit="s")).total_seconds() / 3600) == 6


def test_collector_can_keep_inserting_after_the_load(empty_db_url):
    """The loader plays the collector: its explicit ids must not break the collector's next insert."""
    engine = get_engine(empty_db_url)
    load_sample(engine)
    with engine.begin() as conn:
        new_id = conn.execute(
            insert(ohlcv_data)
            .values(
                pool_id="solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2",
                timeframe="1h",
                timestamp=1759700000 // 3600 * 3600,
                datetime=pd.Timestamp(1759700000 // 3600 * 3600, unit="s", tz="UTC").to_pydatetime(),
                open_price=1.0, high_price=1.0, low_price=1.0, close_price=1.0, volume_usd=0.0,
                metadata_json={},
            )
            .returning(ohlcv_data.c.id)
        ).scalar_one()
        max_before = conn.execute(select(func.max(ohlcv_data.c.id)).where(ohlcv_data.c.id != new_id)).scalar()
    assert new_id > max_before


def _bar_keys(engine) -> set:
    """Every (pool, timeframe, bar open) the collector holds."""
    with engine.connect() as conn:
        return set(conn.execute(select(ohlcv_data.c.pool_id, ohlcv_data.c.timeframe, ohlcv_data.c.timestamp)))


def _run_count(engine) -> int:
    """The collector's OHLCV run count (collection_metadata), as each collector run advances it."""

    with engine.connect() as conn:
        return conn.execute(select(collection_metadata.c.run_count)
                            .where(collection_metadata.c.collector_type == "ohlcv_collector")).scalar()


def test_held_back_bars_are_replayed_as_collector_runs(empty_db_url):
    from q50_assets.db.sample_loader import replay_held_back_bars

    engine = get_engine(empty_db_url)
    held = load_sample(engine, hold_back_bars=3)
    assert held.tables["pools"].inserted == 4908  # every pool exists, even one whose bars are all held back

    bar_keys, run_count = (lambda: _bar_keys(engine)), (lambda: _run_count(engine))

    before, runs = bar_keys(), run_count()
    first = replay_held_back_bars(engine, bars=1, timeframe="1h")
    assert len(first) == 62 and set(first.values()) == {1}  # one new hourly bar per pool
    added = bar_keys() - before
    assert len(added) == 62 and {k[1] for k in added} == {"1h"}
    # Each added bar is the series' next one: newer than everything the pool had.
    newest_before = {}
    for pool_id, tf, ts in before:
        newest_before[pool_id, tf] = max(newest_before.get((pool_id, tf), 0), ts)
    assert all(ts > newest_before.get((pool_id, tf), 0) for pool_id, tf, ts in added)
    assert run_count() == runs + 1

    replay_held_back_bars(engine, bars=5)  # every timeframe, more than is left
    assert replay_held_back_bars(engine, bars=1) == {}
    full = get_engine(empty_db_url.replace("empty", "full")) if empty_db_url.startswith("sqlite") else None
    if full is not None:
        load_sample(full)
        with full.connect() as conn:
            everything = set(conn.execute(select(ohlcv_data.c.pool_id, ohlcv_data.c.timeframe, ohlcv_data.c.timestamp)))
        assert bar_keys() == everything  # replayed to the end = the whole sample


def test_a_calendar_cut_is_replayed_hour_by_hour(empty_db_url):
    """``hold_back_hours``: the collector's state at a moment (every timeframe cut at the same time);
    ``replay_held_back_bars(hours=...)``: its next runs, each pool what it had then, gaps left as gaps."""
    from q50_assets.db.sample_loader import (
        HOUR, LoadReport, _sample_ohlcv_records, calendar_cut, newest_bar_time, replay_held_back_bars)

    sample = {(r["pool_id"], r["timeframe"], r["timestamp"]) for r in _sample_ohlcv_records(LoadReport())}
    newest = newest_bar_time(_sample_ohlcv_records(LoadReport()))
    assert newest == int(pd.Timestamp("2025-10-05 12:00", tz="UTC").timestamp())  # one pool runs on a week longer
    hold = 200
    cut = calendar_cut(hold)
    assert cut == newest - hold * HOUR
    engine = get_engine(empty_db_url)
    report = load_sample(engine, hold_back_hours=hold)
    assert report.tables["pools"].inserted == 4908  # every pool exists, whatever is held back

    bar_keys, run_count = (lambda: _bar_keys(engine)), (lambda: _run_count(engine))

    loaded = bar_keys()
    assert loaded == {k for k in sample if k[2] <= cut}
    held = sample - loaded
    assert {k[1] for k in held} > {"1h"}  # every timeframe is cut, not only the hourly series
    first_hour = min(k[2] for k in held if k[1] == "1h")
    assert first_hour == cut + HOUR

    runs = run_count()
    first = replay_held_back_bars(engine, hours=1)
    added = bar_keys() - loaded
    assert added == {k for k in held if k[2] < first_hour + HOUR}
    assert {k[2] for k in added if k[1] == "1h"} == {first_hour}
    assert sum(first.values()) == len(added) and set(first) == {k[0] for k in added}
    # A pool with later bars but none in that hour (a gap in its series) gets nothing.
    later = {k[0] for k in held if k[1] == "1h"} - {k[0] for k in added if k[1] == "1h"}
    assert later and not later & set(first)
    assert run_count() == runs + 1

    # Two hours at once: the next two hourly bars of every pool that has them.
    before = bar_keys()
    replay_held_back_bars(engine, hours=2)
    assert {k[2] for k in bar_keys() - before if k[1] == "1h"} == {first_hour + HOUR, first_hour + 2 * HOUR}
    assert run_count() == runs + 2

    # A collector that watches one pool: only its bars, from its own earliest held-back hour.
    pool = sorted(later)[0]
    before = bar_keys()
    mine = sorted(k[2] for k in held - before if k[0] == pool and k[1] == "1h")
    assert replay_held_back_bars(engine, hours=1, pool_ids=[pool], timeframe="1h") == {pool: 1}
    assert bar_keys() - before == {(pool, "1h", mine[0])}

    with pytest.raises(ValueError, match="at least 1"):
        replay_held_back_bars(engine, hours=0)
    while replay_held_back_bars(engine, hours=24):
        pass
    assert bar_keys() == sample  # replayed to the end = the whole sample
