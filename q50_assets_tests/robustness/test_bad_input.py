"""Bad collector data, written into the collector's TABLES, then the real stages run on it.

Every case starts from a real database holding the bundled sample (PostgreSQL and SQLite),
plays a misbehaving collector on one safe hourly pool (``MAIN_POOL``: 241 real 1h rows, every
check passes), materializes ``ohlcv_bars`` + ``qlib_features`` for that partition with Dagster,
and asserts:

1. which named asset check catches it (exactly which checks fail, nothing else), and that its
   metadata lists the offending ``ohlcv_data`` ids and counts all of them;
2. what downstream does. Blocking: the pool is gated in the data - the run goes on (a batch's
   other pools must not stop), ``qlib_features`` records the pool as blocked by ``ohlcv_bars``
   naming the rule and evaluates none of its checks for it, a later run of ``qlib_features`` alone
   refuses the stored bars the same way, and nothing of the pool is in the QLib store or
   ``q50_feature_vectors``. Warning / no check: ``qlib_features`` consumes the bars, one vector per
   complete bar (the flagged bar included);
3. row accounting: ``rows_read == complete_bars + partial_bars_held_back == SELECT count(*)`` of
   the pool's rows. The rules never drop a row: an offending row stays in those counts and is
   listed by its check, and a blocking failure withholds the whole pool. So every row read is used
   (one feature vector per complete bar, the newest held back) or, for a blocked pool, counted in
   ``rows_read`` with the offending ones listed - never silently lost.

Some bad rows cannot be stored at all under the collector's schema (NOT NULL, UNIQUE, the foreign
key to ``pools``, PostgreSQL's ``numeric(20,8)`` refusing infinity). Those cases first assert the
database refuses the write, then loosen ``ohlcv_data`` the way a collector database without those
constraints would be (e.g. the collector's own SQLite connections do not enable foreign keys) and
show the check behind it catches the row anyway.

Every case also records the SQL the two stages send: neither touches ``trades`` (only ``pool_trades``
reads them, and places them by the id's epoch; its checks name the +6 h shift: see
``q50_assets_tests/lineage/trades/test_asset.py``).

| kind                         | check that catches it              | blocking | downstream                          |
|------------------------------|------------------------------------|----------|-------------------------------------|
| control_real_pool            | -                                  | -        | consumes: 240 vectors               |
| zero_price                   | positive_prices                    | yes      | refuses                             |
| negative_price               | positive_prices                    | yes      | refuses                             |
| high_below_low               | ohlc_consistent                    | yes      | refuses                             |
| nan_or_inf_close             | complete_values                    | yes      | refuses                             |
| null_volume                  | schema NOT NULL; complete_values   | yes      | refuses                             |
| duplicate_bar                | schema UNIQUE; timestamps_aligned_unique | yes | refuses                             |
| out_of_order_ids             | - (legitimate: ids are not time)   | -        | consumes, ordered by timestamp      |
| misaligned_timestamp         | timestamps_aligned_unique          | yes      | refuses                             |
| datetime_offset_minus_6h     | timestamps_aligned_unique          | yes      | refuses                             |
| future_bar                   | no_future_bars (+ gaps warning)    | yes      | refuses                             |
| future_bar_epoch_in_ms       | no_future_bars (+ timestamps, gaps)| yes      | refuses                             |
| trade_shift_plus_6h          | - (these stages never read ``trades``) | -    | consumes bars; trades not read here |
| rug_minus_99pct              | extreme_moves                      | warning  | consumes; the rug is a real loss    |
| price_one_significant_digit  | price_precision                    | yes      | refuses                             |
| price_below_stored_scale     | PG rounds to 0: positive_prices; SQLite: price_precision | yes | refuses       |
| lowercase_pool_id_collision  | pool_id_unique_lowercase           | yes      | refuses                             |
| pool_with_three_bars         | enough_bars                        | yes      | refuses                             |
| unknown_pool_id              | schema FK; pool_registered         | yes      | refuses                             |
| zero_volume                  | zero_volume                        | warning  | consumes                            |
| gap_over_max_gap_bars        | gaps                               | warning  | consumes; missing hours filled flat |
| revised_partial_bar          | - (newest bar held back)           | -        | see its own test below              |
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from sqlalchemy import Engine, event, func, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from q50_assets.lineage.features.asset import qlib_features
from q50_assets.lineage.ohlcv.asset import ohlcv_bars
from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME
from q50_assets.db import migrate
from q50_assets.db.collector_models import ohlcv_data, pools, trades
from q50_assets.db.engine import get_engine
from q50_assets.db.q50_models import q50_feature_vectors
from q50_assets.definitions import build_resources
from q50_assets.lineage.ohlcv.rules import BAR_RULES, ValidatedBars
from q50_assets.storage.qlib_store import instrument_name
from q50_assets.lineage.common.gate import Blocked
from q50_assets_tests.conftest import create_pg_database, drop_pg_database, settings_for

MAIN_POOL = "solana_F5vAiFCP82RQetoxK7ax4dNQCwqk2yez6aisAbFPenJ2"
MAIN_POOL_ROWS = 241  # real 1h rows of MAIN_POOL in the sample: 240 complete + 1 partial
TIMEFRAME = "1h"
HOUR = 3600
RULES = {r.name: r for r in BAR_RULES}


# --- databases ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def _templates(request, tmp_path_factory):
    """Per backend, built on first use: the sample database with the q50 tables migrated
    (so 'no vector landed' is a query against a real, empty table)."""
    built: dict[str, str] = {}

    def template(backend: str) -> str:
        if backend in built:
            return built[backend]
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("bad_input") / "template.sqlite"
            shutil.copy(request.getfixturevalue("sqlite_sample_file"), path)
            url = f"sqlite:///{path}"
            migrate.upgrade(get_engine(url))
            get_engine(url).dispose()
            built[backend] = str(path)
        else:
            server = request.getfixturevalue("postgres_url")
            url = create_pg_database(server, template=request.getfixturevalue("pg_sample_template"))
            migrate.upgrade(get_engine(url))
            get_engine(url).dispose()  # a template must have no open connections
            built[backend] = url.rsplit("/", 1)[1]
            request.addfinalizer(lambda: drop_pg_database(server, url))
        return built[backend]

    return template


@pytest.fixture
def db_url(backend, _templates, request, tmp_path) -> str:
    """A fresh collector database (sample loaded, q50 tables migrated) for one case."""
    template = _templates(backend)
    if backend == "sqlite":
        path = tmp_path / "collector.sqlite"
        shutil.copy(template, path)
        url = f"sqlite:///{path}"
        yield url
        get_engine(url).dispose()
        return
    server = request.getfixturevalue("postgres_url")
    url = create_pg_database(server, template=template)
    yield url
    drop_pg_database(server, url)


# --- the misbehaving collector ------------------------------------------------------------

@dataclass
class Collector:
    """Writes the collector's tables the way a buggy collector would. Each method is one
    transaction, so a write the schema refuses leaves the database unchanged."""

    engine: Engine
    backend: str

    def rows(self, pool_id: str = MAIN_POOL) -> list[dict[str, Any]]:
        """The pool's 1h rows, oldest first."""
        stmt = (
            select(ohlcv_data)
            .where(ohlcv_data.c.pool_id == pool_id, ohlcv_data.c.timeframe == TIMEFRAME)
            .order_by(ohlcv_data.c.timestamp, ohlcv_data.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def row(self, i: int) -> dict[str, Any]:
        return self.rows()[i]

    def next_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(ohlcv_data.c.id))).scalar()) + 1

    def update(self, ohlcv_id: int, **values) -> int:
        with self.engine.begin() as conn:
            conn.execute(update(ohlcv_data).where(ohlcv_data.c.id == ohlcv_id).values(**values))
        return ohlcv_id

    def insert_bars(self, bars: list[dict[str, Any]]) -> list[int]:
        """Insert bars (explicit ids: a loosened SQLite table has no autoincrement)."""
        first = self.next_id()
        rows = [{**b, "id": first + i} for i, b in enumerate(bars)]
        with self.engine.begin() as conn:
            conn.execute(insert(ohlcv_data), rows)
        return [r["id"] for r in rows]

    def copy_bars(self, rows: list[dict[str, Any]], **changes) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "id"} | changes for r in rows]

    def register_pool_like(self, new_id: str, template_id: str = MAIN_POOL) -> None:
        with self.engine.begin() as conn:
            row = dict(conn.execute(select(pools).where(pools.c.id == template_id)).mappings().one())
            conn.execute(insert(pools).values({**row, "id": new_id, "address": new_id.removeprefix("solana_")}))

    def loosen_schema(self) -> None:
        """ohlcv_data as a collector database without NOT NULL / UNIQUE / foreign key would have it."""
        with self.engine.begin() as conn:
            if self.backend == "postgresql":
                # Identifiers come from the schema itself (inspection), never from data.
                fks = [fk["name"] for fk in inspect(conn).get_foreign_keys("ohlcv_data")]
                drops = [f'DROP CONSTRAINT "{name}"' for name in [*fks, "uq_ohlcv_pool_timeframe_timestamp"]]
                nullable = [f"ALTER COLUMN {c} DROP NOT NULL" for c in
                            ("open_price", "high_price", "low_price", "close_price", "volume_usd")]
                conn.execute(text("ALTER TABLE ohlcv_data " + ", ".join(drops + nullable)))
            else:
                # CREATE TABLE ... AS copies the rows without any constraint.
                conn.execute(text("CREATE TABLE ohlcv_data_loose AS SELECT * FROM ohlcv_data"))
                conn.execute(text("DROP TABLE ohlcv_data"))
                conn.execute(text("ALTER TABLE ohlcv_data_loose RENAME TO ohlcv_data"))


@dataclass
class Injected:
    """What a corruption did: the ids the catching check must list (all of them, no others)."""

    ids: set[int] = field(default_factory=set)
    pool_id: str = MAIN_POOL
    check_metadata: dict[str, Any] = field(default_factory=dict)  # entries the catching check must carry
    verify: Callable[[ValidatedBars], None] | None = None  # case-specific look at the ohlcv_bars value


PerBackend = Mapping[str, Any]


@dataclass(frozen=True)
class Case:
    kind: str
    corrupt: Callable[[Collector], Injected]
    catches: str | PerBackend | None  # the asset check that fails (None: no check is meant to fail)
    downstream: str  # what the later stages do with it (asserted by `blocking`)
    also_fails: frozenset[str] | PerBackend = frozenset()  # honest side effects on other checks
    schema_rejects: PerBackend = field(default_factory=dict)  # backend -> error text of the refused write

    def on(self, value, backend: str):
        return value.get(backend) if isinstance(value, Mapping) else value

    def blocking(self, backend: str) -> bool:
        check = self.on(self.catches, backend)
        return check is not None and RULES[check].blocking


def _utc(value) -> pd.Timestamp:
    """SQLite returns naive datetimes (stored as UTC), PostgreSQL aware ones."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


# --- the corruptions ----------------------------------------------------------------------

def _control(c: Collector) -> Injected:
    assert len(c.rows()) == MAIN_POOL_ROWS  # untouched: the real pool as loaded
    return Injected()


def _zero_price(c: Collector) -> Injected:
    return Injected({c.update(c.row(100)["id"], low_price=0)})


def _negative_price(c: Collector) -> Injected:
    r = c.row(101)
    return Injected({c.update(r["id"], low_price=-r["low_price"])})  # a sign error


def _high_below_low(c: Collector) -> Injected:
    r = next(r for r in c.rows()[102:] if r["high_price"] > r["low_price"] * 1.01)
    return Injected({c.update(r["id"], high_price=r["low_price"], low_price=r["high_price"])})  # swapped columns


def _nan_or_inf_close(c: Collector) -> Injected:
    """Whatever non-finite value the backend can store: PostgreSQL numeric keeps NaN but refuses
    infinity; SQLite keeps infinity but binds NaN as NULL (refused by NOT NULL)."""
    r = c.row(107)
    refused, stored = (float("inf"), float("nan")) if c.backend == "postgresql" else (float("nan"), float("inf"))
    with pytest.raises(DBAPIError, match="infinite|NOT NULL"):
        c.update(r["id"], close_price=refused)
    return Injected({c.update(r["id"], close_price=stored)})


def _null_volume(c: Collector) -> Injected:
    return Injected({c.update(c.row(108)["id"], volume_usd=None)})


def _duplicate_bar(c: Collector) -> Injected:
    r = c.row(109)
    (dup,) = c.insert_bars(c.copy_bars([r]))
    return Injected({r["id"], dup})


def _out_of_order_ids(c: Collector) -> Injected:
    """A backfill: the 20 oldest bars re-written later, so they carry the largest ids."""
    rows = c.rows()
    offset = c.next_id()
    for r in rows[:20]:
        c.update(r["id"], id=r["id"] + offset)
    newest_id = rows[-1]["id"]

    def verify(v: ValidatedBars) -> None:
        assert v.bars.index.is_monotonic_increasing
        assert v.bars["ohlcv_id"].iloc[:20].tolist() == [r["id"] + offset for r in rows[:20]]
        assert v.partial_bar["ohlcv_id"].tolist() == [newest_id]  # the newest by time, not the max id
        assert v.bars["ohlcv_id"].max() > newest_id

    return Injected(verify=verify)


def _misaligned(c: Collector) -> Injected:
    r = c.row(103)
    return Injected({c.update(r["id"], timestamp=r["timestamp"] + 60,
                              datetime=r["datetime"] + pd.Timedelta(seconds=60))})


def _datetime_offset(c: Collector) -> Injected:
    r = c.row(104)  # the dump's -06 local time stored as if it were UTC
    return Injected({c.update(r["id"], datetime=r["datetime"] - pd.Timedelta(hours=6))})


def _future_bar(c: Collector) -> Injected:
    last = c.rows()[-1]
    ts = int(pd.Timestamp.now(tz="UTC").floor("h").timestamp()) + 2 * HOUR
    return Injected(set(c.insert_bars(c.copy_bars(
        [last], timestamp=ts, datetime=pd.Timestamp(ts, unit="s", tz="UTC").to_pydatetime()))))


def _future_bar_epoch_ms(c: Collector) -> Injected:
    last = c.rows()[-1]
    ts = last["timestamp"] + HOUR  # the next bar, its epoch written in milliseconds
    return Injected(set(c.insert_bars(c.copy_bars(
        [last], timestamp=ts * 1000, datetime=pd.Timestamp(ts, unit="s", tz="UTC").to_pydatetime()))))


def _trade_shift(c: Collector) -> Injected:
    """The sample's real trades already carry the +6 h block_timestamp shift; add one more trade
    whose shifted time lies after the newest bar (look-ahead bait for anything reading trades)."""
    with c.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(trades).where(trades.c.pool_id == MAIN_POOL)).mappings()]
        assert len(rows) == 201
        for r in rows:  # the id's epoch suffix is the true time
            shift = _utc(r["block_timestamp"]) - pd.Timestamp(int(r["id"].rsplit("_", 1)[1]), unit="s", tz="UTC")
            assert pd.Timedelta(hours=5, minutes=59) <= shift <= pd.Timedelta(hours=6)
        last_open = c.rows()[-1]["timestamp"]
        epoch = last_open + 30 * 60
        bait = {**rows[0], "id": f"solana_1_bait_0_{epoch}",
                "block_timestamp": pd.Timestamp(epoch + 6 * HOUR, unit="s", tz="UTC").to_pydatetime()}
        conn.execute(insert(trades).values(bait))
    return Injected()


def _rug(c: Collector) -> Injected:
    """-99 % between bar k-1 and the close of bar k, and the price stays down."""
    rows = c.rows()
    k = len(rows) - 5
    rug = rows[k]
    c.update(rug["id"], close_price=rug["close_price"] * 0.01, low_price=rug["close_price"] * 0.01)
    for r in rows[k + 1:]:
        c.update(r["id"], **{p: r[p] * 0.01 for p in ("open_price", "high_price", "low_price", "close_price")})
    return Injected({rug["id"]})


def _one_digit_price(c: Collector) -> Injected:
    return Injected({c.update(c.row(105)["id"], low_price=4e-8)}, check_metadata={"min_significant_digits": 2})


def _below_stored_scale(c: Collector) -> Injected:
    r = c.row(106)
    c.update(r["id"], low_price=3e-9)
    stored = next(x for x in c.rows() if x["id"] == r["id"])["low_price"]
    assert stored == (0.0 if c.backend == "postgresql" else 3e-9)  # numeric(20,8) rounds; SQLite keeps REAL
    return Injected({r["id"]})


def _lowercase_collision(c: Collector) -> Injected:
    twin = MAIN_POOL.lower()
    c.register_pool_like(twin)
    return Injected(check_metadata={"colliding_pool_ids": [twin]})


THREE_BAR_POOL = "solana_ThreeBarsCopyOfF5vAiFCP82RQetoxK7ax4dNQC"


def _three_bars(c: Collector) -> Injected:
    c.register_pool_like(THREE_BAR_POOL)
    c.insert_bars(c.copy_bars(c.rows()[-3:], pool_id=THREE_BAR_POOL))
    return Injected(pool_id=THREE_BAR_POOL, check_metadata={"complete_bars": 2, "min_bars": 48})


UNKNOWN_POOL = "solana_UnknownCopyOfF5vAiFCP82RQetoxK7ax4dNQCwq"


def _unknown_pool(c: Collector) -> Injected:
    ids = c.insert_bars(c.copy_bars(c.rows(), pool_id=UNKNOWN_POOL))
    return Injected(set(ids), pool_id=UNKNOWN_POOL, check_metadata={"pool_registered": False})


def _zero_volume(c: Collector) -> Injected:
    return Injected({c.update(c.row(110)["id"], volume_usd=0)})


def _long_gap(c: Collector) -> Injected:
    rows = c.rows()
    with c.engine.begin() as conn:  # GeckoTerminal omitted 25 hours in a row
        conn.execute(ohlcv_data.delete().where(ohlcv_data.c.id.in_([r["id"] for r in rows[110:135]])))
    return Injected({rows[135]["id"]}, check_metadata={"longest_gap_bars": 25, "max_gap_bars": 24})


REFUSES = "refuses: run stops after ohlcv_bars; a later qlib_features run raises UnsafeBarsError"
CONSUMES = "consumes: one feature vector per complete bar, the flagged bar included"
NOT_NULL = {"postgresql": "null value in column", "sqlite": "NOT NULL constraint failed"}

CASES = [
    Case("control_real_pool", _control, None, CONSUMES),
    Case("zero_price", _zero_price, "positive_prices", REFUSES),
    Case("negative_price", _negative_price, "positive_prices", REFUSES),
    Case("high_below_low", _high_below_low, "ohlc_consistent", REFUSES),
    Case("nan_or_inf_close", _nan_or_inf_close, "complete_values", REFUSES,
         # inf is above every close: also an "extreme move" and "high below close" on SQLite.
         also_fails={"postgresql": frozenset(), "sqlite": frozenset({"ohlc_consistent", "extreme_moves"})}),
    Case("null_volume", _null_volume, "complete_values", REFUSES, schema_rejects=NOT_NULL),
    Case("duplicate_bar", _duplicate_bar, "timestamps_aligned_unique", REFUSES,
         schema_rejects={"postgresql": "uq_ohlcv_pool_timeframe_timestamp", "sqlite": "UNIQUE constraint failed"}),
    Case("out_of_order_ids", _out_of_order_ids, None, "consumes: bars ordered by timestamp, ids ignored"),
    Case("misaligned_timestamp", _misaligned, "timestamps_aligned_unique", REFUSES),
    Case("datetime_offset_minus_6h", _datetime_offset, "timestamps_aligned_unique", REFUSES),
    Case("future_bar", _future_bar, "no_future_bars", REFUSES, also_fails=frozenset({"gaps"})),
    Case("future_bar_epoch_in_ms", _future_bar_epoch_ms, "no_future_bars", REFUSES,
         also_fails=frozenset({"timestamps_aligned_unique", "gaps"})),
    Case("trade_shift_plus_6h", _trade_shift, None, "consumes bars; no stage reads trades"),
    Case("rug_minus_99pct", _rug, "extreme_moves",
         "consumes: a rug is a real (survivorship-relevant) loss, flagged, not hidden"),
    Case("price_one_significant_digit", _one_digit_price, "price_precision", REFUSES),
    Case("price_below_stored_scale", _below_stored_scale,
         {"postgresql": "positive_prices", "sqlite": "price_precision"}, REFUSES),
    Case("lowercase_pool_id_collision", _lowercase_collision, "pool_id_unique_lowercase", REFUSES),
    Case("pool_with_three_bars", _three_bars, "enough_bars", REFUSES),
    Case("unknown_pool_id", _unknown_pool, "pool_registered", REFUSES,
         schema_rejects={"postgresql": "foreign key constraint", "sqlite": "FOREIGN KEY constraint failed"}),
    Case("zero_volume", _zero_volume, "zero_volume", CONSUMES),
    Case("gap_over_max_gap_bars", _long_gap, "gaps", CONSUMES + "; missing hours become flat filled bars"),
]


# --- running the stages -------------------------------------------------------------------

@contextlib.contextmanager
def recorded_sql(engine: Engine):
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _resources(settings, tmp_path):
    # Values persist between runs (pickles under the data dir), so a later run loads the stored bars.
    return build_resources(settings)


def _count(engine: Engine, table, pool_id: str) -> int:
    where = [table.c.pool_id == pool_id] + ([table.c.timeframe == TIMEFRAME] if "timeframe" in table.c else [])
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def _vector_opens(engine: Engine, pool_id: str) -> set[pd.Timestamp]:
    t = q50_feature_vectors
    with engine.connect() as conn:
        values = conn.execute(select(t.c.timestamp).where(t.c.pool_id == pool_id)).scalars().all()
    return {_utc(v) for v in values}


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input(case: Case, backend: str, db_url: str, tmp_path):
    settings = settings_for(db_url, tmp_path)
    engine = get_engine(settings.database_url)
    collector = Collector(engine, backend)

    rejected = case.on(case.schema_rejects, backend)
    if rejected:
        before = _count(engine, ohlcv_data, MAIN_POOL)
        with pytest.raises(DBAPIError, match=rejected):
            case.corrupt(collector)
        assert _count(engine, ohlcv_data, MAIN_POOL) == before  # refused whole, nothing half-written
        collector.loosen_schema()
    injected = case.corrupt(collector)
    pool_id = injected.pool_id

    resources = _resources(settings, tmp_path)
    with DagsterInstance.ephemeral() as instance, recorded_sql(engine) as sql:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [pool_id])
        result = materialize([ohlcv_bars, qlib_features], partition_key=pool_id, resources=resources,
                             instance=instance, raise_on_error=False)
        validated: ValidatedBars = result.output_for_node("ohlcv_bars")[pool_id]
        (mat,) = result.asset_materializations_for_node("ohlcv_bars")
        md = {k: v.value for k, v in mat.metadata.items()}
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()
                       if e.asset_key == AssetKey("ohlcv_bars")}
        feature_checks = [e for e in result.get_asset_check_evaluations() if e.asset_key == AssetKey("qlib_features")]

        # (1) Exactly the named check(s) fail; the catching one lists every offending id.
        catches = case.on(case.catches, backend)
        expected_failing = ({catches} if catches else set()) | set(case.on(case.also_fails, backend))
        assert set(evaluations) == set(RULES)
        assert {n for n, e in evaluations.items() if not e.passed} == expected_failing
        assert {n for n in expected_failing if RULES[n].blocking} == set(validated.blocking_failures)
        if catches:
            check = evaluations[catches]
            meta = {k: v.value for k, v in check.metadata.items()}
            assert meta["pool_id"] == pool_id
            assert check.severity.value == ("ERROR" if RULES[catches].blocking else "WARN")
            listed = {b["ohlcv_id"] for b in meta.get("offending_bars_listed", [])}
            assert meta["offending_bars"] == len(injected.ids)  # all counted...
            # ...and listed: all of them, or the first 20 (MAX_LISTED_BARS) when there are more.
            assert listed == injected.ids if len(injected.ids) <= 20 else (len(listed) == 20 and listed < injected.ids)
            for key, value in injected.check_metadata.items():
                assert meta[key] == value, key
        if injected.verify:
            injected.verify(validated)

        # (3) Row accounting against the table itself.
        in_table = _count(engine, ohlcv_data, pool_id)
        assert md["rows_read"] == md["complete_bars"] + md["partial_bars_held_back"] == in_table
        assert md["partial_bars_held_back"] == (1 if in_table else 0)
        assert injected.ids <= set(validated.bars["ohlcv_id"]) | set(validated.partial_bar["ohlcv_id"])

        # (2) Downstream.
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        instrument_dir = settings.database_dir / "qlib" / "features" / instrument_name(pool_id)
        if case.blocking(backend):
            assert result.success and md["safe_for_downstream"] is False
            assert materialized == {AssetKey("ohlcv_bars"), AssetKey("qlib_features")} and not feature_checks
            features = result.output_for_node("qlib_features")[pool_id]
            assert isinstance(features, Blocked) and features.stage == "ohlcv_bars" and catches in features.reason
            (feature_mat,) = result.asset_materializations_for_node("qlib_features")
            assert feature_mat.metadata["status"].value == "blocked" and catches in feature_mat.metadata["reason"].value
            assert _count(engine, q50_feature_vectors, pool_id) == 0
            assert not instrument_dir.exists()
            # A later run of the features stage alone loads the stored bars and refuses them.
            later = materialize([ohlcv_bars, qlib_features], selection=[qlib_features], partition_key=pool_id,
                                resources=resources, instance=instance, raise_on_error=False)
            assert later.success
            refused = later.output_for_node("qlib_features")[pool_id]
            assert isinstance(refused, Blocked) and refused.pool_id == pool_id and catches in refused.reason
            assert _count(engine, q50_feature_vectors, pool_id) == 0 and not instrument_dir.exists()
        else:
            assert result.success and md["safe_for_downstream"] is True
            assert materialized == {AssetKey("ohlcv_bars"), AssetKey("qlib_features")}
            assert len(feature_checks) == 2 and all(e.passed for e in feature_checks)
            vectors = _vector_opens(engine, pool_id)
            assert vectors == set(validated.bars.index)  # every complete bar used, the partial one not
            assert len(vectors) + md["partial_bars_held_back"] == md["rows_read"]
            assert instrument_dir.is_dir()
            flagged = validated.bars[validated.bars["ohlcv_id"].isin(injected.ids)].index
            assert set(flagged) <= vectors  # a warning's bar is consumed, not dropped

    # Neither stage read the trades table (pool_trades, which does, is tested on its own).
    assert any("ohlcv_data" in s for s in sql)
    assert not [s for s in sql if "trades" in s.lower()]


# --- the revised partial bar --------------------------------------------------------------

def test_revised_partial_bar_is_held_back_until_a_newer_bar_arrives(backend: str, db_url: str, tmp_path):
    """The collector upserts the running bar in place (same id, no updated_at). The newest bar is
    never consumed; once a newer bar exists, the revised values are the ones used."""
    settings = settings_for(db_url, tmp_path)
    engine = get_engine(settings.database_url)
    collector = Collector(engine, backend)
    resources = _resources(settings, tmp_path)
    newest = collector.rows()[-1]
    newest_open = pd.Timestamp(newest["timestamp"], unit="s", tz="UTC")

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, [MAIN_POOL])

        def run():
            result = materialize([ohlcv_bars, qlib_features], partition_key=MAIN_POOL, resources=resources,
                                 instance=instance)
            (mat,) = result.asset_materializations_for_node("ohlcv_bars")
            md = {k: v.value for k, v in mat.metadata.items()}
            assert md["rows_read"] == md["complete_bars"] + md["partial_bars_held_back"] \
                == _count(engine, ohlcv_data, MAIN_POOL)
            assert not [e for e in result.get_asset_check_evaluations() if not e.passed]
            return result.output_for_node("ohlcv_bars")[MAIN_POOL], result.output_for_node("qlib_features")[MAIN_POOL]

        bars, features = run()
        assert bars.partial_bar["ohlcv_id"].tolist() == [newest["id"]]
        assert newest_open not in _vector_opens(engine, MAIN_POOL) and newest_open not in features.index

        # The collector revises the running bar in place.
        revised_close = round(newest["close_price"] * 1.5, 8)
        collector.update(newest["id"], close_price=revised_close, high_price=max(newest["high_price"], revised_close),
                         volume_usd=newest["volume_usd"] + 1000)
        bars2, features2 = run()
        assert bars2.partial_bar["ohlcv_id"].tolist() == [newest["id"]]
        assert bars2.partial_bar["close"].iloc[0] == pytest.approx(revised_close)
        assert newest_open not in _vector_opens(engine, MAIN_POOL)
        columns = [c for c in features.columns if c != "feature_vector_id"]
        pd.testing.assert_frame_equal(features[columns], features2[columns])  # nothing earlier moved

        # The next bar arrives: the revised bar is complete now and used with its revised values.
        (next_id,) = collector.insert_bars(collector.copy_bars(
            [collector.rows()[-1]], timestamp=newest["timestamp"] + HOUR,
            datetime=(newest_open + pd.Timedelta(hours=1)).to_pydatetime()))
        bars3, features3 = run()
        assert bars3.partial_bar["ohlcv_id"].tolist() == [next_id]
        assert bars3.bars.loc[newest_open, "ohlcv_id"] == newest["id"]
        assert features3.loc[newest_open, "close"] == pytest.approx(revised_close, rel=1e-6)  # float32 store
        assert newest_open in _vector_opens(engine, MAIN_POOL)
