"""The ``q50_horizon`` rule: decide on the forecast's expected return over the holding horizon, not on
the sign of q50. Pure pandas/numpy: signals -> a schedule of target fractions of equity, which the
backtest executes with NautilusTrader's :class:`~q50_assets.lineage.backtest.strategy.TargetStrategy`
(the same latency, fill price, caps and cost model as the ``q50`` strategy).

Why a second rule: ``q50`` enters only when q50 > 0 and |q50| clears the round trip's cost PLUS a
variance premium ``variance_multiplier * (vol_risk + (spread/2)^2)``, and it weighs a one-bar
expected return against a round trip that lasts several bars. This rule:

* **expected return over H bars**: :func:`horizon_expected_return` = H x the 1-bar E[r]
  (E[r] = 0.3 q10 + 0.4 q50 + 0.3 q90, the signals' distribution). An ASSUMPTION that the forecast
  persists over H bars; the function is the one place to change when the decay of the forecast's
  information coefficient says otherwise.
* **entry** at the close of the bar a signal was made for, when
  ``H x E[r] - round-trip cost fraction at the intended size - risk_premium > 0`` and the net edge is
  worth at least a cent (:data:`~q50_assets.lineage.signals.sizing.MIN_EDGE_USD`). Long only (spot).
  The intended size is :func:`~q50_assets.lineage.signals.sizing.size_entry`'s (the notional where the
  edge over H net of fee + constant-product impact is largest, within the fractional-Kelly risk budget
  capped at ``max_position_size``) for a book of ``capital_usd``, at the pool's reserve known at that
  close (the one cost model). ``risk_premium`` is a constant hurdle (default 0): the forecast's width
  already shapes E[r] and is not charged a second time.
* **hold** H bars from the last qualifying signal: a fresh qualifying signal extends the hold (and
  raises the target when it sizes larger; it never trims). At the first bar close at or after
  ``last qualifying close + H bars`` the target is 0 (exit). Entries and exits fill like q50's.
* **what is known**: the target at a bar's close reads only the signal made for that bar and known by
  its close (``known_at <= close``; a late prediction counts as none, as in q50's strategy) and the
  hold state left by earlier bars. No regime multiplier: the rule is the forecast and the costs.

Target fraction = intended notional / ``capital_usd`` (the engine then sizes target x equity, and caps
each fill at ``max_volume_share`` of the fill bar's USD volume and ``max_reserve_fraction`` of the
quote reserve).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.signals.rules import expected_return_piecewise, prob_up_piecewise
from q50_assets.lineage.signals.sizing import MIN_EDGE_USD, SizingParams, kelly_fraction_raw, risk_budget, size_entry

# Columns of :func:`horizon_schedule`'s frame.
SCHEDULE_COLUMNS = ("target", "action", "er_1bar", "er_horizon", "intended_notional_usd", "cost_fraction",
                    "net_edge", "qualifies", "reserve_usd", "reserve_source")
ACTIONS = ("enter", "extend", "exit", "")


def horizon_expected_return(er_1bar, holding_bars: int):
    """Expected return over ``holding_bars`` bars from the 1-bar forecast: H x E[r].

    Assumes the forecast's edge persists unchanged over the H bars (no decay). Vectorised."""
    if not isinstance(holding_bars, (int, np.integer)) or holding_bars < 1:
        raise ValueError(f"holding_bars must be an integer >= 1, got {holding_bars!r}")
    return np.asarray(er_1bar, dtype="float64") * float(holding_bars)


def _utc(index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns")


def horizon_schedule(signals: pd.DataFrame, decision_opens, *, bar: pd.Timedelta, holding_bars: int,
                     risk_premium: float, capital_usd: float, sizing: SizingParams,
                     reserves: ReserveSeries | None) -> pd.DataFrame:
    """The rule's decisions at the close of each bar of ``decision_opens`` (bar OPEN times, UTC; the
    bars that exist, since a decision is made at a bar's close): one row per bar, index the bar's
    open, columns :data:`SCHEDULE_COLUMNS`. ``target`` is the fraction of equity to hold after the
    fill (NaN = no order, 0 = exit); the rest says why.

    ``signals``: index open_time of the bar each signal was made for, columns q10, q50, q90 and
    known_at (a signals frame or the stored ``q50_signals`` rows). ``reserves``: the pool's liquidity
    over time (None = no impact, fee only).
    Raises ValueError on missing columns, a duplicated open_time or bad parameters.
    """
    missing = [c for c in ("q10", "q50", "q90", "known_at") if c not in signals.columns]
    if missing:
        raise ValueError(f"signals lack columns {missing}")
    if not math.isfinite(risk_premium) or risk_premium < 0:
        raise ValueError(f"risk_premium must be a finite number >= 0, got {risk_premium!r}")
    if not math.isfinite(capital_usd) or capital_usd <= 0:
        raise ValueError(f"capital_usd must be a finite number > 0, got {capital_usd!r}")
    bar = pd.Timedelta(bar)
    if bar <= pd.Timedelta(0):
        raise ValueError(f"bar must be positive, got {bar!r}")
    opens = _utc(decision_opens)
    if opens.has_duplicates:
        raise ValueError(f"decision_opens has duplicates, e.g. {opens[opens.duplicated()][0]}")
    index = _utc(signals.index)
    if index.has_duplicates:
        raise ValueError(f"signals index (open_time) has duplicates, e.g. {index[index.duplicated()][0]}")
    frame = signals.set_axis(index)
    known = pd.to_datetime(frame["known_at"], utc=True)
    closes = opens + bar
    # The signal made for the bar that just closed, if it was known by that close.
    row = frame.reindex(opens)
    row_known = pd.DatetimeIndex(known.reindex(opens))
    usable = np.asarray(row_known.notna() & (row_known <= closes), dtype=bool)
    q10, q50, q90 = (row[c].to_numpy(dtype="float64") for c in ("q10", "q50", "q90"))
    er1 = np.where(usable, expected_return_piecewise(q10, q50, q90), np.nan)
    erh = horizon_expected_return(er1, holding_bars)
    kelly = np.asarray(kelly_fraction_raw(prob_up_piecewise(q10, q50, q90), q10, q50, q90), dtype="float64")
    n = len(opens)
    close_ns = closes.asi8
    if reserves is None:
        reserve, source = np.full(n, np.nan), np.full(n, "none", dtype=object)
    else:
        reserve, source = reserves.sample(close_ns)
    notional, cost_fraction, net = np.zeros(n), np.full(n, np.nan), np.full(n, np.nan)
    qualifies = np.zeros(n, dtype=bool)
    two_fees = 2.0 * sizing.fee_rate
    for i in np.flatnonzero(usable & (erh > two_fees + risk_premium)):  # no size pays otherwise
        y = None if math.isnan(reserve[i]) else float(reserve[i])
        budget = risk_budget(float(kelly[i]), 1.0, sizing)
        # size_entry's own threshold (with q50's variance premium) is not this rule's: only its size
        # and the cost at that size are used.
        e = size_entry(float(erh[i]), abs(float(q50[i])), 0.0, capital_usd, budget, y, sizing)
        notional[i], cost_fraction[i] = e.notional_usd, e.cost_fraction
        net[i] = erh[i] - e.cost_fraction - risk_premium
        qualifies[i] = e.notional_usd > 0 and net[i] > 0 and e.notional_usd * net[i] >= MIN_EDGE_USD
    size = np.minimum(notional / capital_usd, sizing.max_position_size)

    target = np.full(n, np.nan)
    action = np.full(n, "", dtype=object)
    hold_until, held = None, 0.0  # close (ns) at which the hold ends; the hold's target
    horizon_ns = holding_bars * bar.value
    for i in range(n):
        if qualifies[i]:
            if hold_until is None:
                target[i], action[i], held = size[i], "enter", size[i]
            else:
                action[i] = "extend"
                if size[i] > held:
                    target[i], held = size[i], size[i]
            hold_until = int(close_ns[i]) + horizon_ns
        elif hold_until is not None and close_ns[i] >= hold_until:
            target[i], action[i] = 0.0, "exit"
            hold_until, held = None, 0.0
    return pd.DataFrame({
        "target": target, "action": action, "er_1bar": er1, "er_horizon": erh, "intended_notional_usd": notional,
        "cost_fraction": cost_fraction, "net_edge": net, "qualifies": qualifies, "reserve_usd": reserve,
        "reserve_source": source,
    }, index=opens.rename("open_time"))[list(SCHEDULE_COLUMNS)]


__all__ = ["ACTIONS", "SCHEDULE_COLUMNS", "horizon_expected_return", "horizon_schedule"]
