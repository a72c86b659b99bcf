"""Fixtures built from the bundled real GeckoTerminal sample (its QLib CSV export of 1h bars),
without QLib or a database: for tests of the evaluation, calibration, uncertainty and report
modules on real returns.

* :func:`real_panel`: per pool, a full hourly grid, a few past-only features computed with pandas
  and the labels of :func:`make_labels`.
* :func:`real_walk_forward`: the real walk-forward model (LightGBM, light settings) on that panel.
* :func:`real_backtest_frames`: per-pool bar returns, round trips and permutation nulls of a
  simple past-only momentum rule with a cost per change of exposure, in the backtest stage's
  compact shape. They are not Nautilus backtests; they have real returns' fat tails, pumps and
  cross-pool correlation, which is what the uncertainty code must survive.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from q50_assets.db.sample_loader import QLIB_CSV
from q50_assets.lineage.model.walk_forward import WalkForwardConfig, WalkForwardResult, make_labels, walk_forward

BAR = pd.Timedelta(hours=1)
MIN_BARS = 400
LIGHT = WalkForwardConfig(initial_train_bars=240, retrain_every_bars=48, min_train_rows=200,
                          num_boost_round=40, learning_rate=0.1, min_data_in_leaf=30)


@lru_cache(maxsize=1)
def _closes() -> dict[str, pd.Series]:
    csv = pd.read_csv(QLIB_CSV)
    csv["open_time"] = pd.to_datetime(csv["datetime"]).dt.tz_localize("UTC").dt.as_unit("ns")
    out = {}
    for pool, rows in csv.groupby("symbol", sort=True):
        # The export's last bar of each pool was partial: never used.
        rows = rows.sort_values("open_time").iloc[:-1]
        if len(rows) < MIN_BARS:
            continue
        grid = pd.date_range(rows["open_time"].iloc[0], rows["open_time"].iloc[-1], freq="h")
        out[pool] = rows.set_index("open_time")["close"].astype(float).reindex(grid)
    return out


@lru_cache(maxsize=1)
def real_panel() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, labels) indexed (pool_id, open_time) over real bars after a 24-bar warm-up."""
    feats, closes = [], []
    for pool, close in _closes().items():
        filled = close.ffill()
        log_ret = np.log(filled).diff()
        frame = pd.DataFrame({
            "ret_1": log_ret,
            "mom_6": np.log(filled).diff(6),
            "mom_24": np.log(filled).diff(24),
            "vol_6": log_ret.rolling(6, min_periods=3).std(),
            "vol_24": log_ret.rolling(24, min_periods=12).std(),
        }, index=close.index)
        frame["vol_rel"] = frame["vol_6"] / frame["vol_24"]
        frame = frame.replace([np.inf, -np.inf], np.nan)
        keep = close.notna().to_numpy() & (np.arange(len(close)) >= 24)
        index = pd.MultiIndex.from_product([[pool], close.index], names=["pool_id", "open_time"])
        frame.index = index
        feats.append(frame[keep])
        closes.append(pd.Series(close.to_numpy(), index=index))
    features = pd.concat(feats)
    labels = make_labels(pd.concat(closes), 1, 3600).loc[features.index]
    return features, labels


@lru_cache(maxsize=1)
def real_walk_forward() -> tuple[WalkForwardResult, pd.DataFrame]:
    """The raw walk-forward result on :func:`real_panel` and its labels."""
    features, labels = real_panel()
    return walk_forward(features, labels, LIGHT, n_jobs=2), labels


@lru_cache(maxsize=1)
def real_backtest_frames(cost: float = 0.006, exposure: float = 0.3, draws: int = 1000):
    """(bar_returns per pool, round_trips, per-pool permutation nulls) of a momentum rule on real
    returns: hold ``exposure`` of equity after a bar whose 6-bar momentum was positive, pay
    ``cost`` x the change of exposure. The first 240 bars of each pool are its "in sample" span."""
    bar_returns, trips, nulls = {}, [], {}
    rng = np.random.default_rng(3)
    for i, (pool, close) in enumerate(_closes().items()):
        filled = close.ffill()
        r = filled.pct_change().fillna(0.0).to_numpy()
        mom = np.log(filled).diff(6).to_numpy()
        vol = pd.Series(np.log(filled).diff()).rolling(24, min_periods=12).std().to_numpy()
        held = np.where(np.nan_to_num(mom) > 0, exposure, 0.0)  # decided at the close of bar t ...
        into = np.r_[0.0, held[:-1]]                            # ... earns bar t+1's return
        span = slice(240, len(r))
        net = into * r - cost * np.abs(np.diff(np.r_[0.0, into]))
        close_times = close.index + BAR
        frame = pd.DataFrame({"q50": net, "buy_and_hold": r, "buy_and_hold_matched": into[span].mean() * r,
                              "cash": 0.0}, index=pd.DatetimeIndex(close_times, name="close_time"))
        bar_returns[pool] = frame.iloc[span]
        # Round trips: runs of consecutive held bars inside the span.
        held_span = into[span] > 0
        edges = np.flatnonzero(np.diff(np.r_[0, held_span.astype(int), 0]))
        vol_cut = np.nanpercentile(vol[:240], [30, 70, 90]) if np.isfinite(vol[:240]).sum() > 10 else [np.nan] * 3
        for start, stop in zip(edges[::2], edges[1::2]):
            s, e = start + 240, stop + 240
            gross = float(np.prod(1 + r[s:e]) - 1)
            v = vol[s - 1]
            vol_regime = ("unknown" if not np.isfinite(v) or not np.isfinite(vol_cut[0]) else
                          "low" if v < vol_cut[0] else "medium" if v < vol_cut[1] else "high" if v < vol_cut[2]
                          else "extreme")
            trips.append({
                "pool_id": pool, "entry_decided_at": close_times[s - 1], "entry_filled_at": close_times[s - 1],
                "exit_filled_at": close_times[e - 1], "bars_held": e - s, "notional_usd": exposure * 10_000,
                "gross_return": gross, "net_return": gross - 2 * cost, "cost_usd": 2 * cost * exposure * 10_000,
                "expected_net_edge": float(mom[s - 1]) - 2 * cost, "vol_regime": vol_regime,
                "momentum_regime": "trending_up" if mom[s - 1] > 0.05 else "ranging",
                "signal_tier": "ABCD"[min(3, int(abs(mom[s - 1]) * 40))],
                "reserve_usd": [30_000.0, 120_000.0, 2_000_000.0][i % 3] if i % 4 == 0 else 50_000.0,
                "reserve_source": "collector_snapshot" if i % 4 == 0 else "fallback",
            })
        # Null: the same exposures shuffled in time, statistic = mean per-bar net return.
        shuffled = np.stack([rng.permutation(into[span]) for _ in range(draws)])
        changes = np.abs(np.diff(np.concatenate([np.zeros((draws, 1)), shuffled], axis=1), axis=1))
        null = (shuffled * r[span] - cost * changes).mean(axis=1)
        statistic = float(net[span].mean())
        nulls[pool] = (statistic, null)
    return bar_returns, pd.DataFrame(trips), nulls
