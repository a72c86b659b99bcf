"""Load the bundled real sample into a collector database, playing the collector.

This is the ONLY code in the project that writes the collector's tables. It is idempotent:
rows are matched on the collector's keys and only missing ones are inserted, in one
transaction, so running it twice changes nothing.

Into a database whose collector tables already exist it writes only the columns those tables
have: collectors differ (the collector's generic models, for instance, key ``collection_metadata``
by ``collector_type`` and have no ``metadata_json`` on ``ohlcv_data``), and a collector writes its
own columns, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Table, column, func, inspect, select, table

from q50_assets.db.collector_models import (
    COLLECTOR_TABLES,
    collection_metadata,
    collector_metadata,
    ohlcv_data,
    pools,
    watchlist,
)
from q50_assets.db.types import TimestampTZ

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
EXPORT_DIR = SAMPLE_DIR / "collector_db_export"
QLIB_CSV = SAMPLE_DIR / "qlib_csv_1h.csv.gz"
SYNTHESIZED_POOL_DEX = "solana_unknown"
_CHUNK = 2_000
HOUR = 3600


@dataclass
class TableLoad:
    table: str
    in_sample: int = 0
    inserted: int = 0
    already_present: int = 0


@dataclass
class LoadReport:
    tables: dict[str, TableLoad] = field(default_factory=dict)
    pools_synthesized: int = 0
    csv_bars_superseded_by_export: int = 0

    @property
    def inserted(self) -> int:
        return sum(t.inserted for t in self.tables.values())

    def lines(self) -> list[str]:
        out = [
            f"  {t.table:<20} sample {t.in_sample:>6}  inserted {t.inserted:>6}  already present {t.already_present:>6}"
            for t in self.tables.values()
        ]
        out.append(
            f"  ({self.pools_synthesized} pools added for QLib-CSV series absent from the pools export; "
            f"{self.csv_bars_superseded_by_export} CSV bars superseded by the newer export revision)"
        )
        return out


def create_collector_schema(engine: Engine) -> None:
    """Create missing collector tables, as the collector itself would on first start.

    For the embedded sample and tests only; never touches tables that already exist.
    """
    collector_metadata.create_all(engine, checkfirst=True)


def _read_export(name: str) -> pd.DataFrame:
    # keep_default_na=False + explicit na_values: '' is NULL, but a token named "NA" stays a name.
    return pd.read_csv(
        EXPORT_DIR / f"{name}.csv.gz", dtype=str, keep_default_na=False, na_values=[""]
    )


def _records(frame: pd.DataFrame, table: Table) -> list[dict[str, Any]]:
    """Export CSV (all text) -> dicts with Python values typed for ``table``'s columns."""
    out = frame.copy()
    for column in table.columns:
        name = column.name
        if name not in out:
            continue
        series = out[name]
        python_type = _python_type(column)
        if python_type is pd.Timestamp:
            parsed = pd.to_datetime(series, utc=True, format="ISO8601")
            out[name] = parsed.map(lambda ts: None if pd.isna(ts) else ts.to_pydatetime())
        elif python_type is float:
            out[name] = pd.to_numeric(series).map(lambda v: None if pd.isna(v) else float(v))
        elif python_type is int:
            out[name] = pd.to_numeric(series).map(lambda v: None if pd.isna(v) else int(v))
        elif python_type is bool:
            out[name] = series.map({"t": True, "f": False, "true": True, "false": False})
        elif python_type is dict:
            out[name] = series.map(lambda v: {} if pd.isna(v) else json.loads(v))
        else:
            out[name] = series.map(lambda v: None if pd.isna(v) else str(v))
    out = out.astype(object).where(out.notna(), None)
    return out[[c.name for c in table.columns if c.name in out]].to_dict("records")


def _python_type(column) -> type:
    type_name = type(column.type).__name__
    if type_name == "DateTime":
        return pd.Timestamp
    if type_name == "Numeric":
        return float
    if type_name in ("Integer", "BigInteger"):
        return int
    if type_name == "Boolean":
        return bool
    if type_name in ("JSON", "JSONB", "Variant"):
        return dict
    return str


def _ohlcv_from_qlib_csv(first_id: int) -> pd.DataFrame:
    """The collector's QLib CSV export -> ohlcv_data rows (1h; naive UTC bar opens)."""
    csv = pd.read_csv(QLIB_CSV)
    opens = pd.to_datetime(csv["datetime"], format="%Y-%m-%d %H:%M:%S").dt.tz_localize("UTC")
    rows = pd.DataFrame(
        {
            "pool_id": csv["symbol"],
            "timeframe": "1h",
            "timestamp": opens.dt.as_unit("s").astype("int64"),
            "datetime": opens,
            "open_price": csv["open"].astype(float),
            "high_price": csv["high"].astype(float),
            "low_price": csv["low"].astype(float),
            "close_price": csv["close"].astype(float),
            "volume_usd": csv["volume"].astype(float),
        }
    ).sort_values(["pool_id", "timestamp"], kind="stable")
    # Deterministic ids after the export's own: the same sample always loads to the same rows.
    rows.insert(0, "id", np.arange(first_id, first_id + len(rows), dtype="int64"))
    rows["metadata_json"] = [{"source": "qlib_csv_1h"}] * len(rows)
    return rows.reset_index(drop=True)


def _existing_keys(conn: Connection, table: Table, key_columns: list[str], keys: list[tuple]) -> set[tuple]:
    """Which of ``keys`` the table holds. One scan of the key columns: the sample's tables are
    small, and thousands of IN-lists cost PostgreSQL far more than reading every key once."""
    if not keys:
        return set()
    wanted = set(keys)
    rows = conn.execute(select(*(table.c[c] for c in key_columns)))
    return {tuple(r) for r in rows if tuple(r) in wanted}


def _columns_in_database(conn: Connection, table: Table) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table.name)}


def _insert_missing(
    conn: Connection, table: Table, records: list[dict[str, Any]], key_columns: list[str], report: LoadReport
) -> None:
    keys = [tuple(r[c] for c in key_columns) for r in records]
    present = _existing_keys(conn, table, key_columns, keys)
    columns = _columns_in_database(conn, table)
    missing = [{k: v for k, v in r.items() if k in columns} for r, k in zip(records, keys) if k not in present]
    for start in range(0, len(missing), _CHUNK):
        conn.execute(table.insert(), missing[start : start + _CHUNK])
    report.tables[table.name] = TableLoad(
        table.name, in_sample=len(records), inserted=len(missing), already_present=len(records) - len(missing)
    )


def _advance_postgres_sequences(conn: Connection) -> None:
    """Explicit ids do not move PostgreSQL sequences; move them so the collector's next insert works."""
    if conn.dialect.name != "postgresql":
        return
    for table in (ohlcv_data, collection_metadata, watchlist):
        if "id" not in _columns_in_database(conn, table):
            continue  # e.g. collection_metadata keyed by collector_type
        max_id = conn.execute(select(func.max(table.c.id))).scalar()
        if max_id is not None:
            conn.execute(select(func.setval(func.pg_get_serial_sequence(table.name, "id"), max_id)))


def _sample_ohlcv_records(report: LoadReport) -> list[dict[str, Any]]:
    """Every ohlcv_data row of the sample: the export's, then the CSV's it does not already hold."""
    export_ohlcv = _read_export("ohlcv_data")
    csv_rows = _ohlcv_from_qlib_csv(first_id=int(pd.to_numeric(export_ohlcv["id"]).max()) + 1)

    export_keys = set(
        zip(export_ohlcv["pool_id"], export_ohlcv["timeframe"], pd.to_numeric(export_ohlcv["timestamp"]))
    )
    csv_keys = list(zip(csv_rows["pool_id"], csv_rows["timeframe"], csv_rows["timestamp"]))
    superseded = np.array([k in export_keys for k in csv_keys], dtype=bool)
    report.csv_bars_superseded_by_export = int(superseded.sum())
    return _records(export_ohlcv, ohlcv_data) + _csv_records(csv_rows[~superseded])


def _newest_per_series(records: list[dict[str, Any]], bars: int) -> set[tuple]:
    """Keys of the newest ``bars`` bars of every (pool, timeframe) series."""
    frame = pd.DataFrame([(r["pool_id"], r["timeframe"], r["timestamp"]) for r in records],
                         columns=["pool_id", "timeframe", "timestamp"])
    newest = frame.sort_values("timestamp").groupby(["pool_id", "timeframe"]).tail(bars)
    return set(newest.itertuples(index=False, name=None))


def newest_bar_time(records: list[dict[str, Any]], timeframe: str = "1h") -> int | None:
    """Epoch seconds of the newest ``timeframe`` bar among ``records`` (None: there is none)."""
    stamps = [r["timestamp"] for r in records if r["timeframe"] == timeframe]
    return max(stamps) if stamps else None


def calendar_cut(hold_back_hours: int) -> int:
    """The sample's newest 1h bar time minus ``hold_back_hours``: ``load_sample(hold_back_hours=...)``
    leaves out every bar later than this."""
    return _calendar_cut(_sample_ohlcv_records(LoadReport()), hold_back_hours)


def _calendar_cut(records: list[dict[str, Any]], hold_back_hours: int) -> int:
    newest = newest_bar_time(records, "1h")
    if newest is None:
        raise ValueError("the sample has no 1h bars to count hours back from")
    return newest - hold_back_hours * HOUR


def load_sample(engine: Engine, hold_back_bars: int = 0, hold_back_hours: int = 0) -> LoadReport:
    """Insert whatever part of the bundled sample is missing; returns what was done.

    Two ways to leave bars out, so that :func:`replay_held_back_bars` can later play the collector
    writing them (sensor demos, replays):

    * ``hold_back_bars`` leaves out the newest N bars of every series (each series its own N);
    * ``hold_back_hours`` is a calendar cut: every bar, of every timeframe, whose timestamp is later
      than the sample's newest 1h bar time minus N hours (:func:`calendar_cut`) is left out, so
      the database is the collector's state at that moment (pools that ended earlier keep all
      their bars).
    """
    create_collector_schema(engine)
    report = LoadReport()
    ohlcv_records = _sample_ohlcv_records(report)
    # Before holding bars back: a pool must exist even while all its bars are still to come.
    csv_pool_ids = {r["pool_id"] for r in ohlcv_records if r.get("metadata_json") == {"source": "qlib_csv_1h"}}
    if hold_back_hours:
        cut = _calendar_cut(ohlcv_records, hold_back_hours)
        ohlcv_records = [r for r in ohlcv_records if r["timestamp"] <= cut]
    if hold_back_bars:
        held = _newest_per_series(ohlcv_records, hold_back_bars)
        ohlcv_records = [r for r in ohlcv_records if (r["pool_id"], r["timeframe"], r["timestamp"]) not in held]

    export_pools = _read_export("pools")
    missing_pool_ids = sorted(csv_pool_ids - set(export_pools["id"]))
    synthesized = pd.DataFrame(
        {
            "id": missing_pool_ids,
            "address": [p.removeprefix("solana_") for p in missing_pool_ids],
            "dex_id": SYNTHESIZED_POOL_DEX,
            "discovery_source": "qlib_csv_1h",
            "collection_priority": "normal",
            "metadata_json": json.dumps(
                {"synthesized_by": "q50 load-sample", "reason": "pool in the QLib CSV export, not in the pools export"}
            ),
        }
    )
    report.pools_synthesized = len(missing_pool_ids)

    with engine.begin() as conn:
        for table in COLLECTOR_TABLES:
            if table is ohlcv_data:
                _insert_missing(conn, ohlcv_data, ohlcv_records, ["pool_id", "timeframe", "timestamp"], report)
                continue
            frame = _read_export(table.name)
            if table is pools:
                frame = pd.concat([frame, synthesized], ignore_index=True)
            key = ["collector_type"] if table is collection_metadata else ["id"]
            _insert_missing(conn, table, _records(frame, table), key, report)
        _advance_postgres_sequences(conn)
    return report


def record_collector_run(conn: Connection, collector_type: str = "ohlcv_collector") -> None:
    """What the collector does after each collection run: run_count + 1, timestamps now."""
    now = datetime.now(timezone.utc)
    t = collection_metadata
    # updated_at in the collector's PostgreSQL models; last_updated (stamped on update) in its generic ones.
    stamps = {"last_run": now, "last_success": now, "updated_at": now, "last_updated": now}
    present = [k for k in stamps if k in _columns_in_database(conn, t)]
    # A table clause of the columns this database has (the mirror above lacks last_updated).
    target = table(t.name, column("collector_type"), column("run_count"), *(column(k, TimestampTZ) for k in present))
    conn.execute(target.update().where(target.c.collector_type == collector_type).values(
        run_count=func.coalesce(target.c.run_count, 0) + 1, **{k: stamps[k] for k in present}))


def replay_held_back_bars(engine: Engine, bars: int = 1, timeframe: str | None = None, *,
                          hours: int | None = None, pool_ids: Collection[str] | None = None) -> dict[str, int]:
    """Play the collector's next run with the sample bars that are not in the database yet (those
    ``load_sample`` held back), and record the run in ``collection_metadata`` as the collector does.
    Returns bars inserted per pool.

    * By bars (``bars``, the default): the next ``bars`` held-back bars of every series.
    * By the calendar (``hours``): every held-back bar, of every series, that opens before the
      earliest held-back 1h bar's time plus ``hours`` hours; for 1h bars that is the earliest
      held-back hour and the ``hours - 1`` after it, and a shorter bar (15m, 5m, 1m) goes with the
      hour it opens in. A pool with no bar in those hours gets nothing (a real gap), as from the
      collector. Without held-back 1h bars the hours count from the earliest held-back bar's hour.

    ``timeframe`` limits the run to one timeframe's series, ``pool_ids`` to those pools' (a collector
    that watches only them).
    """
    if hours is not None and hours < 1:
        raise ValueError(f"hours: at least 1 (got {hours})")
    records = _sample_ohlcv_records(LoadReport())
    if timeframe:
        records = [r for r in records if r["timeframe"] == timeframe]
    if pool_ids is not None:
        wanted = set(pool_ids)
        records = [r for r in records if r["pool_id"] in wanted]
    with engine.begin() as conn:
        # One scan of the keys beats thousands of IN-lists on PostgreSQL.
        present = set(conn.execute(select(ohlcv_data.c.pool_id, ohlcv_data.c.timeframe, ohlcv_data.c.timestamp)))
        held = sorted((r for r in records if (r["pool_id"], r["timeframe"], r["timestamp"]) not in present),
                      key=lambda r: r["timestamp"])
        if hours is not None:
            chosen = _next_hours(held, hours)
        else:
            by_series: dict[tuple, list[dict[str, Any]]] = {}
            for r in held:
                by_series.setdefault((r["pool_id"], r["timeframe"]), []).append(r)
            chosen = [r for series in by_series.values() for r in series[:bars]]
        # The collector's own ids come from its sequence (SQLite: rowid), not from the sample.
        columns = _columns_in_database(conn, ohlcv_data) - {"id"}
        for start in range(0, len(chosen), _CHUNK):
            conn.execute(ohlcv_data.insert(), [{k: v for k, v in r.items() if k in columns}
                                               for r in chosen[start:start + _CHUNK]])
        record_collector_run(conn)
    inserted: dict[str, int] = {}
    for r in chosen:
        inserted[r["pool_id"]] = inserted.get(r["pool_id"], 0) + 1
    return inserted


def _next_hours(held: list[dict[str, Any]], hours: int) -> list[dict[str, Any]]:
    """The held-back bars (sorted by time) that open before the first held-back hour + ``hours``."""
    if not held:
        return []
    hourly = [r["timestamp"] for r in held if r["timeframe"] == "1h"]
    first_hour = hourly[0] if hourly else held[0]["timestamp"] // HOUR * HOUR
    end = first_hour + hours * HOUR
    return [r for r in held if r["timestamp"] < end]


def _csv_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    records = rows.astype(object).to_dict("records")
    for r in records:
        r["id"] = int(r["id"])
        r["timestamp"] = int(r["timestamp"])
        r["datetime"] = r["datetime"].to_pydatetime()
    return records


__all__ = ["load_sample", "replay_held_back_bars", "calendar_cut", "newest_bar_time", "create_collector_schema",
           "LoadReport", "SAMPLE_DIR"]
