"""The project on a collector's own database: made by the collector's models (``create_all``), then
its enhanced-history migration (which brings the collector's ``pool_feature_vectors``, with rows).
``q50 migrate`` and ``q50 demo`` run end to end as a user runs them, and trading-history rows point
at the collector's feature vectors (risk_management.use_existing_feature_vectors, default true)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import inspect, select, text

from q50_assets.db import migrate
from q50_assets.db.collector_models import collector_feature_vectors
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_trading_history
from q50_assets.db.sample_loader import load_sample, replay_held_back_bars
from q50_assets.storage.collector import CollectorReader
from q50_assets_tests.collector_schema import create_collector_own_schema
from q50_assets_tests.conftest import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[1]
POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
BAR = pd.Timedelta(minutes=15)
# The sample's 15m series: one pool with 833 bars (two more with 1-2 bars, blocked): a demo in about a minute.
TIMEFRAME = "15m"


@pytest.fixture
def collector_db(postgres_url):
    url = create_pg_database(postgres_url)
    create_collector_own_schema(get_engine(url), enhanced=True)
    yield url
    drop_pg_database(postgres_url, url)


def _q50(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "q50_assets.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


def _collector_vectors(engine, opens: pd.DatetimeIndex) -> None:
    """What the collector's feature job writes: a vector per bar, some bars in two versions (v2 later)."""
    rows = []
    for i, t in enumerate(opens):
        epoch = int(t.timestamp())
        rows.append({"pool_id": POOL, "timestamp": epoch, "feature_set_version": "v1", "rsi_14": 0.5,
                     "price_return_1h": 0.01, "created_at": (t + BAR + pd.Timedelta(minutes=2)).to_pydatetime()})
        if i % 2:
            rows.append({"pool_id": POOL, "timestamp": epoch, "feature_set_version": "v2", "rsi_14": 0.6,
                         "price_return_1h": 0.02,
                         "created_at": (t + BAR + pd.Timedelta(hours=1)).to_pydatetime()})
    with engine.begin() as conn:  # the test plays the collector
        conn.execute(collector_feature_vectors.insert(), rows)


def test_migrate_and_demo_on_a_collectors_own_database(collector_db, tmp_path):
    engine = get_engine(collector_db)
    tables = set(inspect(engine).get_table_names())
    assert {"pool_feature_vectors", "new_pools_history_enhanced", "qlib_data_exports", "execution_history"} <= tables
    columns = {c["name"] for c in inspect(engine).get_columns("collection_metadata")}
    assert "updated_at" not in columns and "last_updated" in columns  # the collector's generic models

    env = {**os.environ, "Q50_DATABASE_URL": collector_db, "Q50_DATA_DIR": str(tmp_path / "data"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "Q50_TIMEFRAME": TIMEFRAME, "PYTHONPATH": str(ROOT)}
    env.pop("Q50_CONFIG", None)
    migrated = _q50("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"project tables at revision {migrate.head_revision()}" in migrated.stdout

    # The collector's bars (the sample, written as the collector would) and its vectors for every bar.
    sample = _q50("load-sample", env=env)
    assert sample.returncode == 0, sample.stderr
    with engine.connect() as conn:
        epochs = conn.execute(text("SELECT timestamp FROM ohlcv_data WHERE pool_id = :p AND timeframe = :t "
                                   "ORDER BY timestamp"), {"p": POOL, "t": TIMEFRAME}).scalars().all()
    _collector_vectors(engine, pd.DatetimeIndex(pd.to_datetime(epochs, unit="s", utc=True)))
    vectors_before = pd.read_sql(select(collector_feature_vectors).order_by(collector_feature_vectors.c.id), engine)

    demo = _q50("demo", env=env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "Runs that failed outright" not in demo.stdout
    assert re.search(r"^Backtests: (2 pools blocked, )?1 pools ok", demo.stdout, re.M), demo.stdout

    # Trading history points at the collector's vector of each decision's bar (the bar that closed at
    # decided_at; the fill comes fill_latency_bars later), newest version.
    history = pd.read_sql(select(q50_trading_history).where(q50_trading_history.c.pool_id == POOL), engine)
    assert len(history) > 0, demo.stdout
    assert set(history["feature_vector_table"]) == {"pool_feature_vectors"}
    vectors = vectors_before.set_index("id")
    pointed = vectors.loc[history["feature_vector_id"].astype("int64")]
    decision_opens = pd.to_datetime(history["decided_at"], utc=True) - BAR
    assert (pointed["timestamp"].to_numpy() == decision_opens.dt.as_unit("s").astype("int64").to_numpy()).all()
    newest = vectors.sort_values("created_at").groupby("timestamp")["feature_set_version"].last()
    assert (pointed["feature_set_version"].to_numpy() == newest.loc[pointed["timestamp"]].to_numpy()).all()
    # ... and the project's own vector of the same decision stays under a foreign key.
    with engine.connect() as conn:
        own = conn.execute(text("SELECT v.timestamp FROM q50_trading_history h JOIN q50_feature_vectors v "
                                "ON v.id = h.q50_feature_vector_id WHERE h.pool_id = :p ORDER BY h.id"),
                           {"p": POOL}).scalars().all()
    assert len(own) == len(history)
    # The collector's table is read, never written.
    after = pd.read_sql(select(collector_feature_vectors).order_by(collector_feature_vectors.c.id), engine)
    pd.testing.assert_frame_equal(after, vectors_before)


def test_the_sample_loads_into_the_collectors_own_tables_and_its_progress_reads(empty_db_url):
    """The collector's generic models key collection_metadata by collector_type and stamp it
    last_updated; ohlcv_data has no metadata_json: the loader writes the columns there are, the sensor's
    progress read takes last_updated for updated_at."""
    engine = get_engine(empty_db_url)
    create_collector_own_schema(engine, enhanced=engine.dialect.name == "postgresql")
    report = load_sample(engine, hold_back_bars=1)
    assert report.tables["ohlcv_data"].inserted > 19_000 and report.tables["trades"].inserted == 371
    db = CollectorReader(url=empty_db_url)
    before = db.collector_progress()
    assert before["run_count"] is not None and before["updated_at"] is None  # the export has no last_updated
    assert sum(replay_held_back_bars(engine, bars=1, timeframe="1h").values()) > 0
    after = db.collector_progress()
    assert after["run_count"] == before["run_count"] + 1 and after["updated_at"] is not None
    assert len(db.read_trades_many([POOL])[POOL]) == 201
