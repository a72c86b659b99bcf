"""Each OHLCV rule fed each kind of bad row, on a real pool from the bundled sample."""

import numpy as np
import pandas as pd
import pytest

from q50_assets.db.sample_loader import QLIB_CSV
from q50_assets.lineage.ohlcv.rules import BAR_RULES, BarRules, UnsafeBarsError, require_safe, validate_bars

POOL = "solana_2Zya4XnGCrzAXBXw8ZpfNAifwH3xsCoLo1RB3FFdaRMj"
NOW = pd.Timestamp("2025-10-06T00:00:00Z")
RULES = BarRules(bar_seconds=3600, min_bars=48)


@pytest.fixture(scope="module")
def real_rows() -> pd.DataFrame:
    """One real pool's 1h bars shaped like ohlcv_data rows."""
    csv = pd.read_csv(QLIB_CSV)
    csv = csv[csv["symbol"] == POOL].reset_index(drop=True)
    opens = pd.to_datetime(csv["datetime"]).dt.tz_localize("UTC")
    return pd.DataFrame(
        {
            "id": np.arange(1, len(csv) + 1),
            "timestamp": opens.dt.as_unit("s").astype("int64"),
            "datetime": opens,
            "open_price": csv["open"],
            "high_price": csv["high"],
            "low_price": csv["low"],
            "close_price": csv["close"],
            "volume_usd": csv["volume"],
        }
    )


def _outcomes(rows, **kw):
    validated = validate_bars(POOL, rows, RULES, now=NOW, **kw)
    return validated, {o.name: o for o in validated.outcomes}


def test_the_real_pool_passes_every_blocking_rule_and_no_row_is_lost(real_rows):
    validated, outcomes = _outcomes(real_rows)
    assert validated.safe
    assert validated.rows_read == len(real_rows) == len(validated.bars) + len(validated.partial_bar)
    # The newest bar is held back, everything else is kept, sorted, at its UTC open.
    assert validated.partial_bar.index[0] == pd.Timestamp(real_rows["datetime"].iloc[-1])
    assert validated.bars.index.is_monotonic_increasing
    assert validated.bars.index.tz is not None and str(validated.bars.index.tz) == "UTC"
    assert validated.bars["close"].dtype == np.float64
    assert require_safe(validated) is validated.bars
    # Its real gaps are counted (and none is long enough to fail the warning).
    gaps = outcomes["gaps"].metadata
    assert outcomes["gaps"].passed
    expected_missing = int((real_rows["timestamp"].diff().dropna() // 3600 - 1).sum())
    assert gaps["missing_bars"] == expected_missing
    assert [r.name for r in BAR_RULES] == list(outcomes)


def _set(rows, i, **values):
    rows = rows.copy()
    for column, value in values.items():
        rows.loc[i, column] = value
    return rows


BAD_ROWS = [
    # (what, mutate(rows) -> rows, failing rule, reason fragment, offending row index)
    ("zero price", lambda r: _set(r, 10, low_price=0.0), "positive_prices", "low_price <= 0", 10),
    ("negative price", lambda r: _set(r, 11, open_price=-1e-4), "positive_prices", "open_price <= 0", 11),
    ("NULL close", lambda r: _set(r, 12, close_price=np.nan), "complete_values", "close_price is NULL", 12),
    ("NaN volume", lambda r: _set(r, 13, volume_usd=np.nan), "complete_values", "volume_usd is NULL", 13),
    # SQLite stores inf in a Numeric column (PostgreSQL's numeric(20,8) refuses it).
    ("infinite high", lambda r: _set(r, 13, high_price=np.inf), "complete_values", "high_price is NULL/NaN/inf", 13),
    (
        "high below close",
        lambda r: _set(r, 14, high_price=float(r.loc[14, "close_price"]) * 0.5),
        "ohlc_consistent",
        "high below max(open, close)",
        14,
    ),
    (
        "low above open",
        lambda r: _set(r, 15, low_price=float(r.loc[15, ["open_price", "close_price"]].max()) * 2),
        "ohlc_consistent",
        "low above min(open, close)",
        15,
    ),
    (
        "misaligned open",
        lambda r: _set(r, 16, timestamp=int(r.loc[16, "timestamp"]) + 60,
                       datetime=pd.Timestamp(int(r.loc[16, "timestamp"]) + 60, unit="s", tz="UTC")),
        "timestamps_aligned_unique",
        "not aligned to 1h",
        16,
    ),
    (
        "duplicate open",
        lambda r: _set(r, 17, timestamp=int(r.loc[16, "timestamp"]), datetime=r.loc[16, "datetime"]),
        "timestamps_aligned_unique",
        "duplicate bar open",
        17,
    ),
    (
        "datetime disagrees with epoch (the -06 offset read as UTC)",
        lambda r: _set(r, 18, datetime=r.loc[18, "datetime"] - pd.Timedelta(hours=6)),
        "timestamps_aligned_unique",
        "datetime disagrees",
        18,
    ),
    (
        "future bar",
        lambda r: _set(r, 19, timestamp=int(NOW.timestamp()) + 7200,
                       datetime=NOW + pd.Timedelta(hours=2)),
        "no_future_bars",
        "opens in the future",
        19,
    ),
    (
        "timestamp written in epoch milliseconds (beyond pandas' range: no crash)",
        lambda r: _set(r, 19, timestamp=int(r.loc[19, "timestamp"]) * 1000),
        "no_future_bars",
        "epoch out of range",
        19,
    ),
    (
        "price below stored precision",
        lambda r: _set(r, 20, low_price=4e-8),
        "price_precision",
        "low_price has 1 significant digit",
        20,
    ),
    ("zero volume", lambda r: _set(r, 21, volume_usd=0.0), "zero_volume", "volume_usd == 0", 21),
    (
        "rug: -99% in one bar",
        lambda r: _set(r, 22, close_price=float(r.loc[21, "close_price"]) * 0.01,
                       low_price=float(r.loc[21, "close_price"]) * 0.01),
        "extreme_moves",
        "close moved x0.01",
        22,
    ),
    (
        "gap longer than max_gap_bars",
        lambda r: r.drop(index=range(30, 30 + 25)).reset_index(drop=True),
        "gaps",
        "25 bar(s) missing",
        30,
    ),
]


@pytest.mark.parametrize(("what", "mutate", "rule", "reason", "row"), BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_each_bad_row_fails_its_rule_naming_the_bar(real_rows, what, mutate, rule, reason, row):
    bad = mutate(real_rows)
    validated, outcomes = _outcomes(bad)
    outcome = outcomes[rule]
    assert not outcome.passed, what
    listed = outcome.listed_bars()
    assert any(reason in b["reason"] for b in listed), listed
    assert int(bad.loc[row, "id"]) in {b["ohlcv_id"] for b in listed}
    # A failing blocking rule makes the pool unsafe; a warning rule does not.
    if outcome.blocking:
        assert rule in validated.blocking_failures
        with pytest.raises(UnsafeBarsError, match=POOL):
            require_safe(validated)
    else:
        assert validated.safe
    # Nothing is dropped: every row read is a complete bar or the held-back partial one.
    assert len(validated.bars) + len(validated.partial_bar) == len(bad)


def test_a_pool_colliding_on_lower_case_is_blocked(real_rows):
    validated, outcomes = _outcomes(real_rows, colliding_pool_ids=[POOL.lower()])
    assert not outcomes["pool_id_unique_lowercase"].passed
    assert outcomes["pool_id_unique_lowercase"].metadata["colliding_pool_ids"] == [POOL.lower()]
    assert not validated.safe


def test_bars_of_a_pool_without_a_pools_row_are_blocked_and_every_row_listed(real_rows):
    """ohlcv_data rows whose pool_id has no pools row (a collector without foreign keys):
    the q50 tables reference pools.id, so nothing of that pool could be stored downstream."""
    validated, outcomes = _outcomes(real_rows, pool_registered=False)
    outcome = outcomes["pool_registered"]
    assert not outcome.passed and outcome.blocking
    assert outcome.metadata["offending_bars"] == len(real_rows)  # every row counted...
    listed = outcome.listed_bars()
    assert len(listed) == 20 and {b["reason"] for b in listed} == {"pool_id has no row in pools"}  # ...20 listed
    assert validated.blocking_failures == ["pool_registered"]
    with pytest.raises(UnsafeBarsError, match="pool_registered"):
        require_safe(validated)
    assert _outcomes(real_rows)[1]["pool_registered"].passed  # registered is the default


def test_a_datetime_beyond_pandas_range_is_flagged_not_a_crash(real_rows):
    bad = real_rows.astype({"datetime": object})
    bad.loc[5, "datetime"] = pd.Timestamp("3000-01-01", tz="UTC").to_pydatetime()
    validated, outcomes = _outcomes(bad)
    listed = outcomes["timestamps_aligned_unique"].listed_bars()
    assert listed == [{"ohlcv_id": int(bad.loc[5, "id"]), "open_time": _iso_open(bad, 5), "reason": "datetime out of range"}]
    assert validated.blocking_failures == ["timestamps_aligned_unique"]


def _iso_open(rows, i):
    return pd.Timestamp(int(rows.loc[i, "timestamp"]), unit="s", tz="UTC").isoformat()


def test_a_pool_with_three_bars_is_too_short(real_rows):
    validated, outcomes = _outcomes(real_rows.head(3))
    assert not outcomes["enough_bars"].passed
    assert outcomes["enough_bars"].metadata == {"offending_bars": 0, "complete_bars": 2, "min_bars": 48}
    assert validated.blocking_failures == ["enough_bars"]


def test_no_bars_at_all_is_blocked_not_an_error():
    empty = pd.DataFrame(
        columns=["id", "timestamp", "datetime", "open_price", "high_price", "low_price", "close_price", "volume_usd"]
    )
    validated = validate_bars(POOL, empty, RULES, now=NOW)
    assert validated.rows_read == 0 and not validated.safe
    assert validated.blocking_failures == ["enough_bars"]


def test_the_newest_bar_is_held_back_even_when_rows_arrive_unsorted(real_rows):
    shuffled = real_rows.sample(frac=1.0, random_state=7)
    validated, _ = _outcomes(shuffled)
    assert validated.partial_bar["ohlcv_id"].tolist() == [int(real_rows["id"].iloc[-1])]
    assert validated.bars["ohlcv_id"].tolist() == real_rows["id"].iloc[:-1].tolist()
