"""The QLib store: a provider directory in QLib's binary format, one door to QLib.

Layout (QLib's own): ``calendars/60min.txt``, ``instruments/all.txt``,
``features/<instrument>/<field>.60min.bin`` (float32 little-endian ``[start_index, values...]``),
plus ``pool_instruments.json``, the persisted instrument <-> pool id mapping.

Instrument names: QLib lower-cases feature directories, and pool ids are case-sensitive base58,
so two pools could share a directory. Each pool gets ``p`` + 16 hex digits of SHA-1 of its id
(already lower case); the mapping file keeps both directions and a collision is an error.

Writes go through QLib's ``FileCalendarStorage`` / ``FileFeatureStorage`` except:
- ``instruments/all.txt`` is written here: ``FileInstrumentStorage`` writes its columns in an
  order QLib's reader does not accept (see the field notes);
- a pool's feature files are deleted before ``write()``: ``write`` at an existing index merges
  new values over old ones (a bar the collector deleted would survive), and ``write`` after
  ``clear()`` fails reading the empty file's start index.
The calendar starts at a fixed origin and only grows at its end, so writing one pool never moves
another pool's start index: new bars for one pool rewrite that pool's files only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from q50_assets.lineage.features.formulas import STORE_FIELDS

# Collector timeframe -> QLib frequency name. QLib parses "<n>min" for any n (its own "1h" and
# "1d" mean other things: hours are refused, "day" reads a date-only calendar), so every bar size is
# minutes: 12h = 720min, 1d = 1440min, all on the same kind of calendar.
QLIB_FREQ = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "60min", "4h": "240min", "12h": "720min",
             "1d": "1440min"}
_CAL_FORMAT = "%Y-%m-%d %H:%M:%S"

_initialised_uri: str | None = None


class QlibStoreError(RuntimeError):
    pass


def instrument_name(pool_id: str) -> str:
    """Lower-case-safe QLib instrument name for a pool id."""
    return "p" + hashlib.sha1(pool_id.encode()).hexdigest()[:16]


def _init_qlib(provider_dir: Path, freq: str) -> None:
    """qlib.init once per process and provider; caches off (they would write outside data_dir)."""
    global _initialised_uri
    import qlib
    from qlib.data.cache import H

    uri = str(provider_dir)
    if _initialised_uri != uri:
        qlib.init(
            provider_uri={freq: uri, "day": uri},
            expression_cache=None,
            dataset_cache=None,
            # No QLib worker processes, whatever the cores: the parallelism is the runs (a process
            # each, as many at once as the run queue allows), and a pool of workers started per
            # read costs more than it saves (q50 demo on the bundled sample, one run each: 42 s
            # without, 67 s with a worker per core).
            kernels=1,
            logging_level="WARNING",
            clear_mem_cache=True,
        )
        _initialised_uri = uri
    H.clear()  # calendars/instruments/features may have changed since the last read


class QlibStore(ConfigurableResource):
    provider_dir: str = Field(description="QLib provider directory (under the data dir).")
    timeframe: str = Field(default="1h", description="Collector timeframe stored here.")
    calendar_start: str = Field(
        default="2025-01-01T00:00:00Z",
        description="Fixed first calendar entry; bars before it are refused (indices never shift).",
    )

    # --- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.provider_dir)

    @property
    def freq(self) -> str:
        if self.timeframe not in QLIB_FREQ:
            raise QlibStoreError(f"timeframe {self.timeframe!r} has no QLib frequency (supported: {sorted(QLIB_FREQ)})")
        return QLIB_FREQ[self.timeframe]

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=int(self.freq.removesuffix("min")))

    @property
    def _calendar_file(self) -> Path:
        return self.root / "calendars" / f"{self.freq}.txt"

    @property
    def _mapping_file(self) -> Path:
        return self.root / "pool_instruments.json"

    @contextlib.contextmanager
    def _lock(self, shared: bool = False):
        """Writers exclusive, readers shared (Dagster runs pools in parallel processes, and the
        model reads every pool): a read never meets a pool's files half rewritten, where QLib
        would silently return NaN for the missing field."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- mapping -----------------------------------------------------------------------
    def mapping(self) -> dict[str, dict]:
        """instrument -> {pool_id, start, end}."""
        if not self._mapping_file.exists():
            return {}
        return json.loads(self._mapping_file.read_text())

    def pool_for(self, instrument: str) -> str:
        entry = self.mapping().get(instrument)
        if entry is None:
            raise QlibStoreError(f"instrument {instrument!r} is not in {self._mapping_file}")
        return entry["pool_id"]

    # --- writing -----------------------------------------------------------------------
    def _origin(self) -> pd.Timestamp:
        return pd.Timestamp(self.calendar_start).tz_convert("UTC")

    def _ensure_calendar(self, until: pd.Timestamp) -> None:
        from qlib.data.storage.file_storage import FileCalendarStorage

        self._calendar_file.parent.mkdir(parents=True, exist_ok=True)
        if not self._calendar_file.exists():
            self._calendar_file.write_text(self._origin().strftime(_CAL_FORMAT) + "\n")
        _init_qlib(self.root, self.freq)  # QLib's storage classes read qlib's global config
        storage = FileCalendarStorage(freq=self.freq, future=False, provider_uri={self.freq: str(self.root)})
        last = pd.Timestamp(storage[-1]).tz_localize("UTC")
        if until > last:
            new = pd.date_range(last + self.bar, until, freq=self.bar)
            storage.extend([t.strftime(_CAL_FORMAT) for t in new])

    def _calendar_index(self, t: pd.Timestamp) -> int:
        return int((t - self._origin()) // self.bar)

    def write_pool(self, pool_id: str, grid: pd.DataFrame) -> str:
        """Replace one pool's series with ``grid`` (index open_time UTC, STORE_FIELDS); returns its instrument."""
        return self.write_pools({pool_id: grid})[pool_id]

    def write_pools(self, grids: dict[str, pd.DataFrame]) -> dict[str, str]:
        """Replace a batch of pools' series (per pool: index open_time UTC, STORE_FIELDS) under one
        lock, the calendar extended and the instrument list written once; returns each instrument."""
        from qlib.data.storage.file_storage import FileFeatureStorage

        for pool_id, grid in grids.items():
            if grid.empty:
                raise QlibStoreError(f"pool {pool_id}: no bars to store")
            if grid.index[0] < self._origin():
                raise QlibStoreError(
                    f"pool {pool_id}: first bar {grid.index[0]} precedes the store's calendar_start {self._origin()}"
                )
        if not grids:
            return {}
        instruments = {}
        with self._lock():
            mapping = self.mapping()
            for pool_id in grids:
                instrument = instrument_name(pool_id)
                owner = mapping.get(instrument, {}).get("pool_id", pool_id)
                if owner != pool_id:
                    raise QlibStoreError(f"instrument {instrument} already maps to {owner}, not {pool_id}")
                instruments[pool_id] = instrument
            self._ensure_calendar(max(grid.index[-1] for grid in grids.values()))
            for pool_id, grid in grids.items():
                instrument = instruments[pool_id]
                start, end = grid.index[0], grid.index[-1]
                first = self._calendar_index(start)
                for field in STORE_FIELDS:
                    storage = FileFeatureStorage(
                        instrument=instrument, field=field, freq=self.freq, provider_uri={self.freq: str(self.root)}
                    )
                    storage.uri.parent.mkdir(parents=True, exist_ok=True)
                    # Not storage.clear(): write() then reads the empty file's start index and fails.
                    storage.uri.unlink(missing_ok=True)
                    storage.write(np.array(grid[field].to_numpy(dtype="float64"), copy=True), index=first)
                mapping[instrument] = {
                    "pool_id": pool_id,
                    "start": start.strftime(_CAL_FORMAT),
                    "end": end.strftime(_CAL_FORMAT),
                }
            self._write_instruments(mapping)
        return instruments

    def remove_pools(self, pool_ids: list[str]) -> list[str]:
        """Take pools out of the store (their files and mapping entries): a pool that is now
        blocked must not keep feeding its old series to the pooled model. Returns the pools removed."""
        with self._lock():
            mapping = self.mapping()
            removed = [p for p in pool_ids if instrument_name(p) in mapping]
            for pool_id in removed:
                instrument = instrument_name(pool_id)
                del mapping[instrument]
                directory = self.root / "features" / instrument
                for path in directory.glob("*") if directory.is_dir() else ():
                    path.unlink()
                if directory.is_dir():
                    directory.rmdir()
            if removed:
                self._write_instruments(mapping)
        return removed

    def write_fields(self, pool_id: str, frame: pd.DataFrame, fields: tuple[str, ...]) -> None:
        """Replace some of a pool's fields with ``frame`` (index open_time UTC on the store's bar grid,
        one column per field), leaving its other fields alone. A field's file may cover a shorter span
        than the pool's bars (e.g. only the bars the collector's trades cover): QLib reads NaN outside it.
        Does not register the pool: :meth:`write_pool` does that."""
        from qlib.data.storage.file_storage import FileFeatureStorage

        if frame.empty:
            self.clear_fields(pool_id, fields)
            return
        start, end = frame.index[0], frame.index[-1]
        if start < self._origin():
            raise QlibStoreError(f"pool {pool_id}: first row {start} precedes the store's calendar_start {self._origin()}")
        expected = pd.date_range(start, end, freq=self.bar)
        if len(expected) != len(frame) or not (frame.index == expected).all():
            raise QlibStoreError(f"pool {pool_id}: fields {list(fields)} are not on a contiguous {self.freq} grid")
        instrument = instrument_name(pool_id)
        with self._lock():
            self._ensure_calendar(end)
            first = self._calendar_index(start)
            for name in fields:
                storage = FileFeatureStorage(
                    instrument=instrument, field=name, freq=self.freq, provider_uri={self.freq: str(self.root)}
                )
                storage.uri.parent.mkdir(parents=True, exist_ok=True)
                storage.uri.unlink(missing_ok=True)
                storage.write(np.array(frame[name].to_numpy(dtype="float64"), copy=True), index=first)

    def clear_fields(self, pool_id: str, fields: tuple[str, ...]) -> None:
        """Delete some of a pool's field files: expressions on them read NaN (missing, not zero)."""
        directory = self.root / "features" / instrument_name(pool_id)
        with self._lock():
            for name in fields:
                (directory / f"{name}.{self.freq}.bin").unlink(missing_ok=True)

    def _write_instruments(self, mapping: dict[str, dict]) -> None:
        path = self.root / "instruments" / "all.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{inst}\t{e['start']}\t{e['end']}" for inst, e in sorted(mapping.items())]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
        tmp_map = self._mapping_file.with_suffix(".tmp")
        tmp_map.write_text(json.dumps(mapping, indent=1, sort_keys=True))
        tmp_map.replace(self._mapping_file)

    # --- reading -----------------------------------------------------------------------
    def features(self, pool_ids: list[str], expressions: dict[str, str]) -> pd.DataFrame:
        """Evaluate named QLib expressions for pools; index (pool_id, open_time UTC)."""
        from qlib.data import D

        mapping = self.mapping()
        instruments = [instrument_name(p) for p in pool_ids]
        missing = [p for p, i in zip(pool_ids, instruments) if i not in mapping]
        if missing:
            raise QlibStoreError(f"pools not in the QLib store: {missing}")
        _init_qlib(self.root, self.freq)
        names, fields = list(expressions), list(expressions.values())
        with self._lock(shared=True):
            raw = D.features(instruments, fields, freq=self.freq, disk_cache=0)
        raw.columns = names
        pools = raw.index.get_level_values(0).map({i: mapping[i]["pool_id"] for i in instruments})
        times = pd.DatetimeIndex(raw.index.get_level_values(1)).tz_localize("UTC")
        raw.index = pd.MultiIndex.from_arrays([pools, times], names=["pool_id", "open_time"])
        return raw.sort_index().astype("float64")
