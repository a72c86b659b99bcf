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
for the sensitivity variants (x0.5, x2).
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
RESERVE_SOURCES = ("collector_snapshot", "collector_history", "collector_history_enhanced", SOURCE_FALLBACK,
                   SOURCE_NONE)


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
            if obs["source"].iloc[i] not in RESERVE_SOURCES[:3]:
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


__all__ = [
    "CostModel",
    "RESERVE_SOURCES",
    "ReserveSeries",
    "SOURCE_FALLBACK",
    "SOURCE_NONE",
    "TradeCost",
    "execution_price",
    "impact_fraction_of_reserve",
    "round_trip_cost",
    "trade_cost",
]
