"""Load the bundled real sample into a collector database, playing the collector.

This is the ONLY code in the project that writes the collector's tables. It is idempotent:
rows are matched on the collector's keys and only missing ones are inserted, in one
transaction, so running it twice changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Table, bindparam, func, select, tuple_

from q50_assets.db.collector_models import (
    COLLECTOR_TABLES,
    collection_metadata,
    collector_metadata,
    ohlcv_data,
    pools,
    watchlist,
)

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
EXPORT_DIR = SAMPLE_DIR / "collector_db_export"
QLIB_CSV = SAMPLE_DIR / "qlib_csv_1h.csv.gz"
SYNTHESIZED_POOL_DEX = "solana_unknown"
_CHUNK = 2_000


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
    if not keys:
        return set()
    cols = [table.c[c] for c in key_columns]
    found: set[tuple] = set()
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        if len(cols) == 1:
            stmt = select(cols[0]).where(cols[0].in_([k[0] for k in chunk]))
        else:
            stmt = select(*cols).where(tuple_(*cols).in_(chunk))
        found.update(tuple(row) for row in conn.execute(stmt))
    return found


def _insert_missing(
    conn: Connection, table: Table, records: list[dict[str, Any]], key_columns: list[str], report: LoadReport
) -> None:
    keys = [tuple(r[c] for c in key_columns) for r in records]
    present = _existing_keys(conn, table, key_columns, keys)
    missing = [r for r, k in zip(records, keys) if k not in present]
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
        max_id = conn.execute(select(func.max(table.c.id))).scalar()
        if max_id is not None:
            conn.execute(select(func.setval(func.pg_get_serial_sequence(table.name, "id"), max_id)))


def load_sample(engine: Engine) -> LoadReport:
    """Insert whatever part of the bundled sample is missing; returns what was done."""
    create_collector_schema(engine)
    report = LoadReport()
    export_ohlcv = _read_export("ohlcv_data")
    csv_rows = _ohlcv_from_qlib_csv(first_id=int(pd.to_numeric(export_ohlcv["id"]).max()) + 1)

    export_keys = set(
        zip(export_ohlcv["pool_id"], export_ohlcv["timeframe"], pd.to_numeric(export_ohlcv["timestamp"]))
    )
    csv_keys = list(zip(csv_rows["pool_id"], csv_rows["timeframe"], csv_rows["timestamp"]))
    superseded = np.array([k in export_keys for k in csv_keys], dtype=bool)
    report.csv_bars_superseded_by_export = int(superseded.sum())
    csv_rows = csv_rows[~superseded]

    export_pools = _read_export("pools")
    missing_pool_ids = sorted(set(csv_rows["pool_id"]) - set(export_pools["id"]))
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
                records = _records(export_ohlcv, ohlcv_data) + _csv_records(csv_rows)
                _insert_missing(conn, ohlcv_data, records, ["pool_id", "timeframe", "timestamp"], report)
                continue
            frame = _read_export(table.name)
            if table is pools:
                frame = pd.concat([frame, synthesized], ignore_index=True)
            key = ["collector_type"] if table is collection_metadata else ["id"]
            _insert_missing(conn, table, _records(frame, table), key, report)
        _advance_postgres_sequences(conn)
    return report


def _csv_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    records = rows.astype(object).to_dict("records")
    for r in records:
        r["id"] = int(r["id"])
        r["timestamp"] = int(r["timestamp"])
        r["datetime"] = r["datetime"].to_pydatetime()
    return records


__all__ = ["load_sample", "create_collector_schema", "LoadReport", "SAMPLE_DIR"]
