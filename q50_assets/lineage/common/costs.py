"""The one cost model: what a trade of a given size costs in a given pool at a given time.

Used to DECIDE (signals' threshold / expected_value_net / tradeable, the strategy's sizing and
exits: :mod:`q50_assets.lineage.signals.sizing`) and to CHARGE (the Nautilus fill model,
:class:`q50_assets.lineage.backtest.engine.AmmImpactFillModel`, and the vectorised replay of
:mod:`q50_assets.lineage.backtest.permutation`). A rule that decides on one cost and is charged another
makes results mean nothing; here both read the same functions and the same liquidity.

Pure Python/numpy, no Nautilus: the signal stage uses it too.

**Cost of one swap** (constant-product AMM, x * y = k, plus the DEX's swap fee). A pool with
total liquidity ``reserve_usd`` = R holds about R/2 in USD (the quote reserve Y) and R/2 worth
of the token. Trading q tokens at mid price p, with notional n = q * p and u = n / Y:

* buy:  average price p / (1 - u)  (cost Y*q/(X-q) of the x*y=k curve, X = Y/p)
* sell: average price p / (1 + u)
* impact (USD): n * u / (1 - u) for a buy, n * u / (1 + u) for a sell;
* fee (USD): ``fee_rate`` times the notional actually paid or received, n / (1 -+ u);
* total: n * (u + fee_rate) / (1 - u) for a buy, n * (u + fee_rate) / (1 + u) for a sell.

u is capped at ``max_reserve_fraction`` (one trade never moves more of the pool; bigger
changes are split over bars by the strategy). No reserve (None) means no impact, fee only.
The fill rounds the average price to the instrument's tick against the trader and Nautilus
rounds notional and fee to cents: a fill costs what :func:`trade_cost` says to the cent and
tick (``q50_assets_tests/lineage/common/test_costs.py`` proves it on Nautilus fills).

**Liquidity at a time.** :class:`ReserveSeries` holds the collector's observations of a pool's
``reserve_usd`` with the time each was observed (``pools.reserve_usd`` as of
``pools.last_updated``; the history tables' rows as of their collection time). The reserve at
time t is the latest observation made at or before t (as-of, never a later one). Before the
first observation, or for a pool without any, the assumed ``fallback_usd`` applies and the
lookup says so (source ``"fallback"``): an explicit assumption, scaled by ``fallback_scale``
for the sensitivity variants (``nautilus_trader.backtest.reserve_sensitivity``).

**The assumed reserve** (:func:`fallback_reserve_of`) is not a constant picked by hand: it is a
stated statistic of the collector's own observations, by default the median over the observed
pools of each pool's median reserve (each pool counts once, however often it was observed). It
describes the pools this collector follows, not any one pool at any one time: a level, not a
forecast, taken from every observation the database holds when the run starts (the sample's
snapshots postdate its bars). An explicit ``fallback_reserve_usd`` overrides it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

import numpy as np
import pandas as pd

SOURCE_FALLBACK = "fallback"
SOURCE_NONE = "none"  # no observation and no fallback: no impact modelled
# The sources of a reserve the collector observed (storage/collector.py reserve_observations_many):
# the one list every reader of ``reserve_source`` tests against.
MEASURED_SOURCES = ("collector_snapshot", "collector_history", "collector_history_enhanced")
RESERVE_SOURCES = (*MEASURED_SOURCES, SOURCE_FALLBACK, SOURCE_NONE)


class TradeCost(NamedTuple):
    """Expected cost of one swap, USD and as a fraction of its mid-price notional."""

    fee_usd: float
    impact_usd: float
    total_usd: float
    fraction: float  # total_usd / notional (the marginal rate for a zero notional)
    u: float  # notional / quote reserve, after the cap


def impact_fraction_of_reserve(notional_usd: float, quote_reserve_usd: float | None,
                               max_reserve_fraction: float) -> float:
    """u = notional / quote reserve, capped at ``max_reserve_fraction``; 0 without a reserve."""
    if quote_reserve_usd is None or not quote_reserve_usd > 0:
        return 0.0
    return min(max(notional_usd, 0.0) / quote_reserve_usd, max_reserve_fraction)


def trade_cost(notional_usd: float, is_buy: bool, reserve_usd: float | None, fee_rate: float,
               max_reserve_fraction: float) -> TradeCost:
    """Fee + constant-product impact of swapping ``notional_usd`` (at mid price) in a pool of total
    liquidity ``reserve_usd`` (module docstring). Plain floats: the strategy calls it every bar."""
    n = max(float(notional_usd), 0.0)
    quote = None if reserve_usd is None else reserve_usd / 2.0
    u = impact_fraction_of_reserve(n, quote, max_reserve_fraction)
    paid = n / (1.0 - u) if is_buy else n / (1.0 + u)  # USD actually paid (buy) or received (sell)
    impact = n * u / (1.0 - u) if is_buy else n * u / (1.0 + u)
    fee = fee_rate * paid
    total = fee + impact
    fraction = total / n if n > 0 else fee_rate
    return TradeCost(fee, impact, total, fraction, u)


def round_trip_cost(notional_usd: float, reserve_usd: float | None, fee_rate: float,
                    max_reserve_fraction: float) -> float:
    """USD cost of buying ``notional_usd`` now and selling the same tokens later at the same mid
    price in a pool of the same liquidity: what an entry must expect to earn back."""
    return (trade_cost(notional_usd, True, reserve_usd, fee_rate, max_reserve_fraction).total_usd
            + trade_cost(notional_usd, False, reserve_usd, fee_rate, max_reserve_fraction).total_usd)


def execution_price(ref_price: float, qty: float, is_buy: bool, quote_reserve_usd: float | None,
                    max_reserve_fraction: float, price_precision: int) -> Decimal:
    """Average execution price of swapping ``qty`` tokens at mid price ``ref_price`` against a
    pool with quote reserve ``quote_reserve_usd``: p / (1 - u) for a buy, p / (1 + u) for a
    sell (module docstring), u capped at ``max_reserve_fraction``; no reserve -> ``ref_price``.

    Rounded to ``price_precision`` decimals against the trader (buy up, sell down) after
    removing float noise far below one tick, so fills never look better than the model.
    """
    u = impact_fraction_of_reserve(qty * ref_price, quote_reserve_usd, max_reserve_fraction)
    raw = ref_price / (1.0 - u) if is_buy else ref_price / (1.0 + u)
    tick = Decimal(1).scaleb(-price_precision)
    denoised = Decimal(raw).quantize(Decimal(1).scaleb(-(price_precision + 6)), rounding=ROUND_HALF_EVEN)
    return denoised.quantize(tick, rounding=ROUND_CEILING if is_buy else ROUND_FLOOR)


def _utc_ns(values) -> np.ndarray:
    idx = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    return idx.as_unit("ns").asi8


class ReserveSeries:
    """A pool's liquidity over time: as-of lookups of the collector's observations, with an
    explicit fallback (module docstring).

    ``observations``: DataFrame with ``observed_at`` (when the value was known; tz-aware or
    naive UTC), ``reserve_usd`` and ``source``. Rows must have a time, a finite reserve > 0 and
    a known source, else ValueError naming the row: a reserve of 0 or NULL is not an
    observation of liquidity, and the reader (``resources/database.py``) leaves such rows out
    and counts them. Several observations at one time: the last row wins.
    """

    def __init__(self, observations: pd.DataFrame | None = None, fallback_usd: float | None = None,
                 fallback_scale: float = 1.0):
        if fallback_usd is not None and (not math.isfinite(fallback_usd) or fallback_usd <= 0):
            raise ValueError(f"fallback_usd must be None or a finite number > 0, got {fallback_usd!r}")
        if not math.isfinite(fallback_scale) or fallback_scale <= 0:
            raise ValueError(f"fallback_scale must be a finite number > 0, got {fallback_scale!r}")
        self.fallback_usd = fallback_usd
        self.fallback_scale = float(fallback_scale)
        obs = observations if observations is not None else pd.DataFrame(
            columns=["observed_at", "reserve_usd", "source"])
        missing = [c for c in ("observed_at", "reserve_usd", "source") if c not in obs.columns]
        if missing:
            raise ValueError(f"reserve observations lack columns {missing}")
        obs = obs.reset_index(drop=True)
        times = pd.to_datetime(obs["observed_at"], utc=True)
        values = pd.to_numeric(obs["reserve_usd"], errors="coerce").to_numpy(dtype="float64")
        for i in range(len(obs)):
            if pd.isna(times.iloc[i]):
                raise ValueError(f"reserve observation row {i}: no observed_at")
            if not (math.isfinite(values[i]) and values[i] > 0):
                raise ValueError(f"reserve observation row {i} ({times.iloc[i]}): reserve_usd must be a finite "
                                 f"number > 0, got {obs['reserve_usd'].iloc[i]!r}")
            if obs["source"].iloc[i] not in MEASURED_SOURCES:
                raise ValueError(f"reserve observation row {i}: unknown source {obs['source'].iloc[i]!r}")
        order = np.argsort(times.dt.as_unit("ns").astype("int64").to_numpy(), kind="stable")
        self._times = [int(t) for t in times.dt.as_unit("ns").astype("int64").to_numpy()[order]]
        self._values = [float(v) for v in values[order]]
        self._sources = [str(s) for s in obs["source"].to_numpy()[order]]

    def __len__(self) -> int:
        return len(self._times)

    @property
    def observations(self) -> pd.DataFrame:
        return pd.DataFrame({"observed_at": pd.to_datetime(self._times, utc=True), "reserve_usd": self._values,
                             "source": self._sources})

    def scaled_fallback(self, scale: float) -> "ReserveSeries":
        """The same observations with the ASSUMED reserve multiplied by ``scale`` (observed ones
        unchanged): the reserve sensitivity variants."""
        return ReserveSeries(self.observations, self.fallback_usd, self.fallback_scale * scale)

    def at_ns(self, ts_ns: int) -> tuple[float | None, str]:
        """(reserve_usd, source) known at ``ts_ns`` (epoch ns): the latest observation at or before
        it, else the (scaled) fallback, else (None, "none")."""
        i = bisect.bisect_right(self._times, ts_ns) - 1
        if i >= 0:
            return self._values[i], self._sources[i]
        if self.fallback_usd is None:
            return None, SOURCE_NONE
        return self.fallback_usd * self.fallback_scale, SOURCE_FALLBACK

    def sample(self, times) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`at_ns` over times (DatetimeIndex / datetimes / epoch ns):
        (reserve_usd as float array with NaN for none, source as object array)."""
        ns = np.asarray(times, dtype="int64") if np.issubdtype(np.asarray(times).dtype, np.integer) else _utc_ns(times)
        pos = np.searchsorted(np.asarray(self._times, dtype="int64"), ns, side="right") - 1
        values = np.asarray(self._values + [np.nan], dtype="float64")[np.where(pos >= 0, pos, len(self._values))]
        sources = np.asarray(self._sources + [""], dtype=object)[np.where(pos >= 0, pos, len(self._sources))]
        before = pos < 0
        if self.fallback_usd is None:
            values[before] = np.nan
            sources[before] = SOURCE_NONE
        else:
            values[before] = self.fallback_usd * self.fallback_scale
            sources[before] = SOURCE_FALLBACK
        return values, sources


class NoReserveObservations(ValueError):
    """The assumed reserve is to come from the collector's observations, but it has none."""


@dataclass(frozen=True)
class FallbackReserve:
    """The reserve assumed where a pool has no observation, and where it came from.

    ``usd``: the value (None = no impact where nothing was observed); ``statistic``: how it was
    made (``"median"``, ``"quantile 0.25"``, ``"setting fallback_reserve_usd"``, ``"none"``);
    ``pools`` / ``observations``: the observed pools and observations it was computed from
    (0 for a setting)."""

    usd: float | None
    statistic: str
    pools: int = 0
    observations: int = 0

    def describe(self) -> str:
        if self.usd is None:
            return "none: no price impact where the collector observed no reserve (fallback_reserve: none)"
        if self.pools == 0:
            return f"{self.usd:,.0f} USD ({self.statistic})"
        return (f"{self.usd:,.0f} USD: the {self.statistic} over {self.pools:,} observed pools of each pool's median "
                f"reserve ({self.observations:,} collector observations)")

    def metadata(self) -> dict:
        """Plain values for asset metadata and reports."""
        return {"fallback_reserve_usd": self.usd, "fallback_reserve_statistic": self.statistic,
                "fallback_reserve_pools": self.pools, "fallback_reserve_observations": self.observations}


def fallback_reserve_of(levels: pd.DataFrame, statistic: str | float = "median",
                        override_usd: float | None = None) -> FallbackReserve:
    """The assumed reserve (module docstring) from ``levels``: every valid reserve observation of
    the collector, columns ``pool_id`` and ``reserve_usd``.

    ``statistic``: ``"median"`` (the quantile 0.5), a quantile in (0, 1), or ``"none"`` (no
    assumed reserve: fee only where nothing was observed). ``override_usd``: an explicit value,
    which wins. Raises :class:`NoReserveObservations` when a statistic is asked of a database
    without any observation (a run must not price impact on an invented liquidity silently), and
    ValueError naming the row for a reserve that is not a finite number > 0."""
    if override_usd is not None:
        if not (math.isfinite(override_usd) and override_usd > 0):
            raise ValueError(f"fallback_reserve_usd must be a finite number > 0, got {override_usd!r}")
        return FallbackReserve(float(override_usd), "setting fallback_reserve_usd")
    if isinstance(statistic, str) and statistic == "none":
        return FallbackReserve(None, "none")
    if isinstance(statistic, str):
        if statistic != "median":
            raise ValueError(f"fallback_reserve must be 'median', 'none' or a quantile in (0, 1), got {statistic!r}")
        q, name = 0.5, "median"
    else:
        q = float(statistic)
        if not 0 < q < 1:
            raise ValueError(f"fallback_reserve quantile must be in (0, 1), got {statistic!r}")
        name = f"quantile {q:g}"
    missing = [c for c in ("pool_id", "reserve_usd") if c not in levels.columns]
    if missing:
        raise ValueError(f"reserve levels lack columns {missing}")
    values = pd.to_numeric(levels["reserve_usd"], errors="coerce").to_numpy(dtype="float64")
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"reserve level row {i} (pool {levels['pool_id'].iloc[i]!r}): reserve_usd must be a finite "
                         f"number > 0, got {levels['reserve_usd'].iloc[i]!r}")
    if len(levels) == 0:
        raise NoReserveObservations(
            "the collector database holds no observation of any pool's reserve (pools.reserve_usd > 0 with "
            "last_updated, or new_pools_history*), so the assumed reserve cannot be its "
            f"{name}: set nautilus_trader.backtest.fallback_reserve_usd to a liquidity you assume, or "
            "fallback_reserve: none to price no impact where nothing was observed")
    per_pool = pd.Series(values).groupby(levels["pool_id"].astype(str).to_numpy()).median()
    return FallbackReserve(float(np.quantile(per_pool.to_numpy(), q)), name, int(len(per_pool)), int(len(levels)))


@dataclass(frozen=True)
class CostModel:
    """The pool's costs: swap fee, impact cap, and its liquidity over time.

    fee_rate: DEX swap fee per side (fraction of the notional paid or received).
    max_reserve_fraction: largest trade as a fraction of the quote reserve (u cap).
    reserves: the pool's :class:`ReserveSeries`; None = no impact (fee only).
    """

    fee_rate: float = 0.0025
    max_reserve_fraction: float = 0.1
    reserves: ReserveSeries | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.fee_rate) or not 0 <= self.fee_rate < 1:
            raise ValueError(f"fee_rate must be in [0, 1), got {self.fee_rate!r}")
        if not 0 < self.max_reserve_fraction < 1:
            raise ValueError(f"max_reserve_fraction must be in (0, 1), got {self.max_reserve_fraction!r}")

    def reserve_at(self, ts_ns: int) -> tuple[float | None, str]:
        """(reserve_usd, source) known at ``ts_ns``."""
        if self.reserves is None:
            return None, SOURCE_NONE
        return self.reserves.at_ns(ts_ns)

    def trade_cost(self, notional_usd: float, is_buy: bool, ts_ns: int) -> TradeCost:
        """:func:`trade_cost` with the pool's reserve known at ``ts_ns``."""
        return trade_cost(notional_usd, is_buy, self.reserve_at(ts_ns)[0], self.fee_rate, self.max_reserve_fraction)

    def fill_price(self, ref_price: float, qty: float, is_buy: bool, ts_ns: int, price_precision: int) -> Decimal:
        """:func:`execution_price` with the pool's reserve known at ``ts_ns``."""
        reserve = self.reserve_at(ts_ns)[0]
        return execution_price(ref_price, qty, is_buy, None if reserve is None else reserve / 2.0,
                               self.max_reserve_fraction, price_precision)

    def with_reserves(self, reserves: ReserveSeries | None) -> "CostModel":
        return CostModel(self.fee_rate, self.max_reserve_fraction, reserves)


def assumed_reserve(db, fallback_reserve: str | float, fallback_reserve_usd: float | None) -> FallbackReserve:
    """The run's assumed reserve (:func:`fallback_reserve_of`), read through the collector port
    (``CollectorSource.reserve_levels``) only when a statistic needs it. The signal and backtest
    steps both call this with the same settings, once per batch: the same database gives both
    the same value, and each records it."""
    if fallback_reserve_usd is not None or fallback_reserve == "none":
        return fallback_reserve_of(pd.DataFrame(columns=["pool_id", "reserve_usd"]), fallback_reserve,
                                   fallback_reserve_usd)
    return fallback_reserve_of(db.reserve_levels(), fallback_reserve, fallback_reserve_usd)


__all__ = [
    "CostModel",
    "FallbackReserve",
    "MEASURED_SOURCES",
    "NoReserveObservations",
    "fallback_reserve_of",
    "RESERVE_SOURCES",
    "ReserveSeries",
    "SOURCE_FALLBACK",
    "SOURCE_NONE",
    "TradeCost",
    "assumed_reserve",
    "execution_price",
    "impact_fraction_of_reserve",
    "round_trip_cost",
    "trade_cost",
]

