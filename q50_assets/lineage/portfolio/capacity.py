"""How much a rule's edge survives size and thinner pools: the capacity curve of its round trips.

Pure pandas/numpy (no Dagster). Input: a variant's round trips as the backtest stage writes them
(``lineage/backtest/step.py round_trips``: per trip ``entry_filled_at``, ``gross_return`` at the
fills' reference prices before fee and impact, ``notional_usd``, ``reserve_usd`` and
``reserve_source`` at entry, ``open``).

**Definition.** For a trade size s (USD) and a reserve multiplier m, the net edge per round trip is

    net(s, m) = mean over trips i of [ gross_return_i - round_trip_cost(s, m * reserve_i, fee) / s ]

with :func:`q50_assets.lineage.common.costs.round_trip_cost`, the one cost model the backtest
charges (buy then sell the same tokens at the trip's liquidity: swap fee on both legs and
constant-product impact, u capped at ``max_reserve_fraction``: beyond the cap the model assumes the
order is split over bars, so the curve flattens there; ``capped_share`` says where). A trip with
no reserve at all (source ``none``) pays the fee only at every m. As s -> 0 the impact vanishes
and net -> mean gross - 2 x fee; with a zero fee, the mean gross itself.

What it is and is not: the same entries and exits replayed at another size and liquidity with
their gross returns unchanged. It ignores that a bigger order fills later or partly (the volume
cap) and that a rule would size differently; it is the cost side of capacity only. Open trips
are left out (they have not paid an exit). Yardsticks beside the curve: the mean gross return
(no cost at all) and the mean realised net return at the trips' own sizes.

**Interval.** Each cell's interval is the calendar-time block bootstrap of
:mod:`q50_assets.lineage.common.uncertainty` over the trips' entry times (every cell resampled
by the same blocks). Below ``min_trips`` closed trips no figure is given ("too few").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.lineage.common.costs import SOURCE_FALLBACK, round_trip_cost
from q50_assets.lineage.common.uncertainty import BootstrapConfig, bin_sums, block_bootstrap, time_bins

CAPACITY_SIZES_USD = tuple(float(v) for v in np.round(np.logspace(1, 4, 7), 1))  # 10 ... 10,000 USD, log grid
RESERVE_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
MIN_TRIPS = 30
REQUIRED_COLUMNS = ("entry_filled_at", "gross_return", "notional_usd", "reserve_usd", "reserve_source")
CURVE_COLUMNS = ("trips", "net_edge", "net_edge_low", "net_edge_high", "capped_share", "status")


@dataclass(frozen=True)
class CapacityCurve:
    """Net edge per round trip over a grid of trade sizes and reserve multipliers (module docstring).

    ``table``: index (size_usd, reserve_factor), :data:`CURVE_COLUMNS`. ``yardsticks``: index
    ``mean gross return`` and ``mean realised net return``, columns estimate/low/high.
    """

    variant: str
    trips: int  # closed round trips used
    open_trips_left_out: int
    min_trips: int
    fee_rate: float
    max_reserve_fraction: float
    assumed_reserve_trips: int  # trips whose reserve was the assumed one (source fallback)
    assumed_reserves_usd: tuple[float, ...]  # the assumed values those trips carried
    median_notional_usd: float
    table: pd.DataFrame
    yardsticks: pd.DataFrame

    @property
    def enough(self) -> bool:
        return self.trips >= self.min_trips


def _closed_trips(round_trips: pd.DataFrame, variant: str) -> tuple[pd.DataFrame, int]:
    missing = [c for c in REQUIRED_COLUMNS if c not in round_trips.columns]
    if missing:
        raise KeyError(f"round trips lack columns {missing}")
    trips = round_trips
    if "variant" in trips.columns:  # trips of several variants in one frame: this one's
        trips = trips[trips["variant"] == variant]
    is_open = trips["open"].fillna(False).astype(bool) if "open" in trips.columns else pd.Series(False, trips.index)
    closed = trips[~is_open.to_numpy()]
    gross = pd.to_numeric(closed["gross_return"], errors="coerce").to_numpy(dtype=np.float64)
    if (~np.isfinite(gross)).any():
        bad = closed.index[~np.isfinite(gross)]
        raise ValueError(f"{len(bad)} closed round trips without a finite gross_return, e.g. rows {list(bad[:5])}")
    reserve = pd.to_numeric(closed["reserve_usd"], errors="coerce").to_numpy(dtype=np.float64)
    if ((reserve <= 0) | np.isinf(reserve)).any():
        bad = closed.index[(reserve <= 0) | np.isinf(reserve)]
        raise ValueError(f"round trips with a reserve_usd that is not > 0 and finite, e.g. rows {list(bad[:5])}")
    return closed, int(is_open.sum())


def cost_fractions(reserve_usd: np.ndarray, sizes: tuple[float, ...], factors: tuple[float, ...], fee_rate: float,
                   max_reserve_fraction: float) -> np.ndarray:
    """(trips, sizes x factors): round_trip_cost(s, m * reserve) / s per trip and cell (size-major);
    a NaN reserve (none observed, none assumed) pays the fee only."""
    out = np.empty((len(reserve_usd), len(sizes) * len(factors)))
    for i, r in enumerate(reserve_usd):
        for j, s in enumerate(sizes):
            for k, m in enumerate(factors):
                reserve = None if not math.isfinite(r) else m * r
                out[i, j * len(factors) + k] = round_trip_cost(s, reserve, fee_rate, max_reserve_fraction) / s
    return out


def capacity_curve(round_trips: pd.DataFrame, *, fee_rate: float, max_reserve_fraction: float, variant: str = "q50",
                   sizes: tuple[float, ...] = CAPACITY_SIZES_USD, factors: tuple[float, ...] = RESERVE_FACTORS,
                   min_trips: int = MIN_TRIPS, bar_seconds: int = 3600,
                   config: BootstrapConfig = BootstrapConfig()) -> CapacityCurve:
    """The capacity curve of ``variant``'s round trips (module docstring). Raises naming the rows
    on a closed trip without a finite gross return or with a reserve that is not > 0."""
    if not sizes or min(sizes) <= 0 or not factors or min(factors) <= 0:
        raise ValueError(f"sizes and reserve factors must be non-empty and > 0, got {sizes}, {factors}")
    if min_trips < 1:
        raise ValueError(f"min_trips must be >= 1, got {min_trips}")
    closed, open_count = _closed_trips(round_trips, variant)
    n = len(closed)
    gross = pd.to_numeric(closed["gross_return"]).to_numpy(dtype=np.float64)
    net = pd.to_numeric(closed.get("net_return", pd.Series(np.nan, closed.index))).to_numpy(dtype=np.float64)
    reserve = pd.to_numeric(closed["reserve_usd"], errors="coerce").to_numpy(dtype=np.float64)
    assumed = closed["reserve_source"].astype(str).to_numpy() == SOURCE_FALLBACK
    index = pd.MultiIndex.from_product([sizes, factors], names=["size_usd", "reserve_factor"])
    cells = len(index)
    quote = reserve[:, None] / 2.0 * np.asarray(factors)[None, :]  # (trips, factors)
    capped = np.concatenate([np.where(np.isfinite(quote), s / quote > max_reserve_fraction, False)
                             for s in sizes], axis=1) if n else np.zeros((0, cells), dtype=bool)
    table = pd.DataFrame({"trips": n, "net_edge": np.nan, "net_edge_low": np.nan, "net_edge_high": np.nan,
                          "capped_share": capped.mean(axis=0) if n else np.nan,
                          "status": "ok" if n >= min_trips else f"too few ({n} < {min_trips} trips)"}, index=index)
    yardsticks = pd.DataFrame(np.nan, index=pd.Index(["mean gross return", "mean realised net return"], name="yardstick"),
                              columns=["estimate", "low", "high"])
    if n >= min_trips:
        costs = cost_fractions(reserve, tuple(sizes), tuple(factors), fee_rate, max_reserve_fraction)
        net_known = np.isfinite(net)
        per_row = np.column_stack([np.ones(n), gross, np.where(net_known, net, 0.0), net_known.astype(float), costs])
        bins = time_bins(pd.to_datetime(closed["entry_filled_at"], utc=True), bar_seconds, config.block)
        s = bin_sums(bins, per_row)[:, 0, :]
        sums = {"n": s[:, 0], "g": s[:, 1], "net": s[:, 2], "net_n": s[:, 3], "c": s[:, 4:]}

        def statistic(a):
            edge = (a["g"][..., None] - a["c"]) / a["n"][..., None]
            return np.concatenate([edge, (a["g"] / a["n"])[..., None], (a["net"] / a["net_n"])[..., None]], axis=-1)

        iv = block_bootstrap(sums, statistic, bins.block_bins, config)
        table["net_edge"], table["net_edge_low"], table["net_edge_high"] = iv.estimate[:cells], iv.low[:cells], iv.high[:cells]
        yardsticks.loc[:, "estimate"] = iv.estimate[cells:]
        yardsticks.loc[:, "low"] = iv.low[cells:]
        yardsticks.loc[:, "high"] = iv.high[cells:]
    notional = pd.to_numeric(closed["notional_usd"], errors="coerce")
    return CapacityCurve(
        variant=variant, trips=n, open_trips_left_out=open_count, min_trips=min_trips, fee_rate=float(fee_rate),
        max_reserve_fraction=float(max_reserve_fraction), assumed_reserve_trips=int(assumed.sum()),
        assumed_reserves_usd=tuple(sorted({float(v) for v in reserve[assumed] if math.isfinite(v)})),
        median_notional_usd=float(notional.median()) if n else float("nan"), table=table, yardsticks=yardsticks)


def capacity_png(curve: CapacityCurve) -> bytes:
    """Net edge per round trip against trade size (log axis), one line per reserve multiplier, the
    x1 line with its interval, the mean gross return and zero as yardsticks. Drawn at a page's full
    width with labels readable there."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=100)  # 1000 px: at least the report page's 960 px content width
    ax = fig.add_axes((0.08, 0.14, 0.7, 0.76))
    table = curve.table
    sizes = np.asarray(table.index.levels[0], dtype=np.float64)
    factors = list(table.index.levels[1])
    colors = {m: c for m, c in zip(factors, ["tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple",
                                               "tab:brown", "tab:pink"])}
    for m in factors:
        rows = table.xs(m, level="reserve_factor")
        est = 100 * rows["net_edge"].to_numpy(dtype=np.float64)
        ax.plot(sizes, est, marker="o", markersize=4, linewidth=1.6 if m == 1 else 1.1, color=colors[m],
                label=f"reserve x{m:g}")
        if m == 1:
            ax.fill_between(sizes, 100 * rows["net_edge_low"].to_numpy(dtype=np.float64),
                            100 * rows["net_edge_high"].to_numpy(dtype=np.float64), color=colors[m], alpha=0.15,
                            label="x1: 95 % interval")
    gross = curve.yardsticks.loc["mean gross return", "estimate"]
    if math.isfinite(gross):
        ax.axhline(100 * gross, color="0.3", linestyle="--", linewidth=1, label="mean gross (no cost)")
    ax.axhline(0, color="0.6", linewidth=0.8)
    if math.isfinite(curve.median_notional_usd):
        ax.axvline(curve.median_notional_usd, color="0.5", linestyle=":", linewidth=1, label="median size traded")
    ax.set_xscale("log")
    ax.set_xlabel("trade size (USD per round trip)", fontsize=11)
    ax.set_ylabel("net edge per round trip (%)", fontsize=11)
    title = f"Capacity of {curve.variant}: net edge vs size and liquidity ({curve.trips} round trips)"
    if not curve.enough:
        title += f" - too few trips (< {curve.min_trips})"
    ax.set_title(title, fontsize=12)
    ax.tick_params(labelsize=10)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


__all__ = ["CAPACITY_SIZES_USD", "CURVE_COLUMNS", "CapacityCurve", "MIN_TRIPS", "RESERVE_FACTORS", "capacity_curve",
           "capacity_png", "cost_fractions"]
