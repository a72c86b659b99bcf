"""The cross-sectional top-k basket and its yardstick, as pure rules (no Dagster, no storage).

Every bar close t, the candidates are the pools whose signal for the bar that closed at t is
known at t (``known_at <= t``) with finite q10/q50/q90 and vol_risk. Every ``rebalance_bars``
bars (bar closes on the epoch grid: a schedule that does not depend on where the data starts or
ends) with at least ``min_candidate_pools`` candidates:

* the **forecast basket** takes the top ``top_k`` candidates by the forecast's expected return
  E[r] = 0.3 q10 + 0.4 q50 + 0.3 q90 (:func:`q50_assets.lineage.signals.rules.expected_return_piecewise`),
  and with ``cost_filter`` keeps only those whose E[r] over the holding horizon (the per-bar rate
  E[r] / horizon_bars held for rebalance_bars bars) clears the round trip at the member's size
  (basket_capital_usd / top_k) by the one cost model at the reserve known with the signal; a slot
  left empty is cash;
* the **volatility basket** (the yardstick) takes the top ``top_k`` by past realised variance
  ``vol_risk`` (known at the bar), the same schedule, no forecast column and no filter: a
  forecast basket that only matches it is a bet on volatile pools, not a forecast.

Ties are broken by pool id (ascending), so membership is deterministic. Between rebalances the
members are held; a rebalance bar with too few candidates empties the basket. A pool's target is
1.0 (all of its engine's equity) while a member, else 0.0, decided at bar close t and filled by
the engine ``fill_latency_bars`` later. Membership at t reads candidates at t and earlier only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.lineage.common.costs import round_trip_cost
from q50_assets.lineage.signals.rules import expected_return_piecewise
from q50_assets.settings import BasketSettings, Settings

FORECAST = "forecast"
VOLATILITY = "volatility"
BUY_AND_HOLD = "buy_and_hold"
BASKETS = (FORECAST, VOLATILITY)
SIGNAL_COLUMNS = ("q10", "q50", "q90", "vol_risk", "known_at")
# What ranks each basket: the yardstick's column is known at the bar and is no forecast.
SCORE_COLUMN = {FORECAST: "expected_return", VOLATILITY: "vol_risk"}


class BasketConfig(BasketSettings, BarLength):
    """The basket's rules: its settings section, the bar length, and from other sections the
    model's label horizon and the cost model's fee and impact cap (values, not defaults)."""

    horizon_bars: int
    swap_fee: float
    max_reserve_fraction: float

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.bar_seconds)

    @property
    def member_capital_usd(self) -> float:
        return self.basket_capital_usd / self.top_k

    @classmethod
    def of(cls, settings: Settings) -> "BasketConfig":
        return cls(**settings.basket.model_dump(), bar_seconds=settings.bar_seconds,
                   horizon_bars=settings.model.horizon_bars, swap_fee=settings.signals.swap_fee,
                   max_reserve_fraction=settings.nautilus_trader.backtest.max_reserve_fraction)


@dataclass(frozen=True)
class CandidatePanel:
    """Every (decision close, pool) candidate: ``rows`` indexed by (close, pool_id) with
    expected_return, vol_risk, reserve_usd and cost_fraction (round trip at the member's size);
    ``not_candidates``: signal rows that were not, per reason (counted, never dropped silently)."""

    rows: pd.DataFrame
    not_candidates: dict[str, int]


def _utc(index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(index)
    return (idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")).as_unit("ns")


def candidate_panel(signals: Mapping[str, pd.DataFrame], config: BasketConfig) -> CandidatePanel:
    """The candidates of every bar close from each pool's signals frame (index bar open, UTC).

    Raises naming the pool when a frame lacks a column or has duplicated bar opens."""
    bar = config.bar
    parts, late, missing_values = [], 0, 0
    for pool_id in sorted(signals):
        frame = signals[pool_id]
        if frame is None or len(frame) == 0:
            continue
        absent = [c for c in SIGNAL_COLUMNS if c not in frame.columns]
        if absent:
            raise ValueError(f"signals of pool {pool_id!r} lack columns {absent}")
        opens = _utc(frame.index)
        if opens.has_duplicates:
            raise ValueError(f"signals of pool {pool_id!r} have duplicated bar opens, e.g. "
                             f"{list(opens[opens.duplicated()][:3])}")
        close = opens + bar
        known = pd.DatetimeIndex(pd.to_datetime(frame["known_at"], utc=True))
        q = [frame[c].to_numpy(dtype="float64") for c in ("q10", "q50", "q90")]
        vol = frame["vol_risk"].to_numpy(dtype="float64")
        reserve = (frame["reserve_usd"].to_numpy(dtype="float64") if "reserve_usd" in frame.columns
                   else np.full(len(frame), np.nan))
        # A signal is acted on at its own bar's close or not at all: one known later is late.
        on_time = np.asarray(known.notna() & (known <= close))
        finite = np.isfinite(q[0]) & np.isfinite(q[1]) & np.isfinite(q[2]) & np.isfinite(vol) & (vol >= 0)
        late += int((~on_time).sum())
        missing_values += int((on_time & ~finite).sum())
        keep = on_time & finite
        parts.append(pd.DataFrame({
            "close": close[keep], "pool_id": pool_id,
            "expected_return": expected_return_piecewise(q[0][keep], q[1][keep], q[2][keep]),
            "vol_risk": vol[keep], "reserve_usd": reserve[keep]}))
    columns = ["expected_return", "vol_risk", "reserve_usd", "cost_fraction"]
    if not parts or not sum(len(p) for p in parts):
        empty = pd.DataFrame(columns=columns, index=pd.MultiIndex.from_arrays(
            [pd.DatetimeIndex([], tz="UTC"), pd.Index([], dtype=object)], names=["close", "pool_id"]))
        return CandidatePanel(empty, {"known_after_bar_close": late, "missing_quantile_or_vol": missing_values})
    rows = pd.concat(parts, ignore_index=True)
    size = config.member_capital_usd
    rows["cost_fraction"] = [
        round_trip_cost(size, (r if r > 0 else None) if r == r else None, config.swap_fee,
                        config.max_reserve_fraction) / size
        for r in rows["reserve_usd"].to_numpy(dtype="float64")]
    rows = rows.set_index(["close", "pool_id"]).sort_index()
    return CandidatePanel(rows[columns], {"known_after_bar_close": late, "missing_quantile_or_vol": missing_values})


def is_rebalance(closes: pd.DatetimeIndex, config: BasketConfig) -> np.ndarray:
    """Rebalance bars: closes whose bar number since the epoch is a multiple of rebalance_bars."""
    bar_ns = int(config.bar.value)
    return (_utc(closes).asi8 // bar_ns) % config.rebalance_bars == 0


def _ranked(candidates: pd.DataFrame, column: str, k: int) -> list[str]:
    """The top ``k`` pools by ``column`` (highest first), ties by pool id (ascending)."""
    frame = pd.DataFrame({"score": candidates[column].to_numpy(dtype="float64"),
                          "pool_id": candidates.index.get_level_values("pool_id")})
    frame = frame.sort_values(["score", "pool_id"], ascending=[False, True], kind="mergesort")
    return frame["pool_id"].head(k).tolist()


def holding_edge(expected_return: pd.Series, config: BasketConfig) -> pd.Series:
    """E[r] over the holding horizon: the forecast's per-bar rate (E[r] / horizon_bars) held for
    rebalance_bars bars. An extrapolation: the model speaks of horizon_bars bars only."""
    return expected_return / config.horizon_bars * config.rebalance_bars


@dataclass(frozen=True)
class Membership:
    """One basket's schedule: ``members`` (index: every bar close of the grid, columns: pool ids,
    1.0 while a member, else 0.0) and ``decisions`` (one row per rebalance bar: candidates, the
    members chosen, the top-k pools the cost filter left out)."""

    basket: str
    members: pd.DataFrame
    decisions: pd.DataFrame


def basket_membership(panel: CandidatePanel, config: BasketConfig, basket: str) -> Membership:
    """The ``basket``'s members at every bar close from the first candidate's close to the last's
    (module docstring)."""
    if basket not in SCORE_COLUMN:
        raise ValueError(f"basket must be one of {tuple(SCORE_COLUMN)}, got {basket!r}")
    rows = panel.rows
    pools = sorted(set(rows.index.get_level_values("pool_id")))
    if rows.empty:
        return Membership(basket, pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="close")),
                          pd.DataFrame(columns=["candidates", "members", "filtered_out"]))
    closes = rows.index.get_level_values("close")
    grid = pd.date_range(closes.min(), closes.max(), freq=config.bar, name="close").as_unit("ns")
    by_close = {t: g.droplevel("close") for t, g in rows.groupby(level="close", sort=True)}
    column = SCORE_COLUMN[basket]
    members = np.zeros((len(grid), len(pools)))
    position = {p: i for i, p in enumerate(pools)}
    held: list[str] = []
    decisions = []
    for i, (t, rebalance) in enumerate(zip(grid, is_rebalance(grid, config))):
        if rebalance:
            candidates = by_close.get(t)
            count = 0 if candidates is None else len(candidates)
            filtered: list[str] = []
            if count < config.min_candidate_pools:
                held = []
            else:
                top = _ranked(candidates, column, config.top_k)
                if basket == FORECAST and config.cost_filter:
                    chosen = candidates.loc[top]
                    clears = holding_edge(chosen["expected_return"], config) > chosen["cost_fraction"]
                    filtered = [p for p in top if not clears[p]]
                    top = [p for p in top if clears[p]]
                held = top
            decisions.append({"close": t, "candidates": count, "members": ",".join(held),
                              "filtered_out": ",".join(filtered)})
        for p in held:
            members[i, position[p]] = 1.0
    frame = pd.DataFrame(members, index=grid, columns=pools)
    return Membership(basket, frame, pd.DataFrame(decisions).set_index("close") if decisions else
                      pd.DataFrame(columns=["candidates", "members", "filtered_out"]))


def first_basket_close(memberships: Mapping[str, Membership]) -> pd.Timestamp | None:
    """The first rebalance bar that formed a basket of either kind (both share the candidates, so
    the same bar unless the cost filter emptied the forecast's): where every variant's span starts."""
    firsts = []
    for m in memberships.values():
        d = m.decisions
        formed = [t for t, row in d.iterrows() if row["members"] or row["filtered_out"]]
        if formed:
            firsts.append(min(formed))
    return min(firsts) if firsts else None


def target_schedule(members: pd.Series, bar: pd.Timedelta, start: pd.Timestamp) -> pd.Series:
    """One pool's targets as the engine takes them (index: the decision bar's OPEN, the bar at
    whose close the decision is made), from ``start`` (a decision close) on; every bar carries its
    target, so a missed fill (volume cap, a bar without swaps) is retried on the next bar."""
    shown = members[members.index >= start]
    return pd.Series(shown.to_numpy(dtype="float64"), index=(shown.index - bar).rename("open_time"), name="target")


__all__ = ["BASKETS", "BUY_AND_HOLD", "BasketConfig", "CandidatePanel", "FORECAST", "Membership", "SCORE_COLUMN",
           "VOLATILITY", "basket_membership", "candidate_panel", "first_basket_close", "holding_edge",
           "is_rebalance", "target_schedule"]
