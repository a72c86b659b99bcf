"""The feature set, written as QLib expressions, and the hourly grid they are evaluated on.

Pure definitions: evaluation happens in QLib's expression engine (``D.features``), reached
through :class:`q50_assets.resources.qlib_store.QlibStore`.

Every expression looks only backwards (``Ref`` with positive offsets, rolling windows,
EMAs), so the value at bar t depends on bars <= t only; the look-ahead test checks it.

Missing bars: GeckoTerminal omits intervals without trades, so a missing hour is a bar with
no trades. The grid fills it as a flat bar (open=high=low=close = previous close, volume 0)
and flags it ``$filled`` = 1, so ``Ref($close, 1)`` always means one hour ago. Filled bars
are counted in the feature stage's metadata; models train and predict on real bars only.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# Fields written to the QLib store, per pool, on the full grid. ``$vwap`` is the typical price
# (h+l+c)/3: GeckoTerminal bars carry no VWAP.
STORE_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "filled")

_RET = "Log($close/Ref($close,1))"


def feature_expressions(rsi_periods: int = 14, macd_fast: int = 12, macd_slow: int = 26) -> dict[str, str]:
    """Feature name -> QLib expression."""
    gain = "If($close>Ref($close,1),$close-Ref($close,1),0)"
    loss = "If($close<Ref($close,1),Ref($close,1)-$close,0)"
    alpha = 1.0 / rsi_periods  # Wilder's smoothing: an EMA with alpha = 1/period
    macd = f"(EMA($close,{macd_fast})-EMA($close,{macd_slow}))/$close"
    expressions = {
        # --- the Q50 set ---
        "vol_raw": f"Std({_RET},6)",
        "vol_risk": f"Power(Std({_RET},6),2)",
        "vol_rel": f"Std({_RET},5)/(Std({_RET},20)+1e-12)",
        "mom_5": "$close/Ref($close,5)-1",
        "mom_10": "$close/Ref($close,10)-1",
        "mom_25": "$close/Ref($close,25)-1",
        "OPEN1": "Ref($open,1)/$close",
        "VOLUME1": "Ref($volume,1)/($volume+1e-12)",
        "RSV1": "($close-Min($low,1))/(Max($high,1)-Min($low,1)+1e-12)",
        "RSV2": "($close-Min($low,2))/(Max($high,2)-Min($low,2)+1e-12)",
        "RSV3": "($close-Min($low,3))/(Max($high,3)-Min($low,3)+1e-12)",
        "ret_1": f"{_RET}",
        # --- indicators the integration plan reuses for regimes ---
        # RSI in [0, 100]; +1e-12 keeps flat stretches (no gains, no losses) finite.
        f"rsi_{rsi_periods}": f"100*EMA({gain},{alpha})/(EMA({gain},{alpha})+EMA({loss},{alpha})+1e-12)",
        "macd": macd,
        "macd_signal": f"EMA({macd},9)",
        "macd_hist": f"{macd}-EMA({macd},9)",
        # Bollinger position: 0 at the lower band (mean - 2 sd), 1 at the upper band.
        "boll_pos": "($close-Mean($close,20)+2*Std($close,20))/(4*Std($close,20)+1e-12)",
    }
    return expressions


def warmup_bars(macd_slow: int = 26) -> int:
    """Grid bars from a pool's first bar before every window above is full.

    The longest chain is the MACD signal line: an EMA(9) of EMA(slow); 25 bars of momentum
    and 20-bar windows are shorter. QLib's rolling operators use min_periods=1, so earlier
    values exist but rest on too few bars: those rows are marked warm-up, not filled.
    """
    return max(macd_slow + 9, 26)


def feature_set_version(expressions: dict[str, str], warmup: int) -> str:
    """A short, stable id of the feature definitions (changes whenever a formula does)."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(expressions.items())) + f"\nwarmup={warmup}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def to_hourly_grid(bars: pd.DataFrame, bar_seconds: int) -> pd.DataFrame:
    """Validated bars (index open_time UTC) -> the full grid with STORE_FIELDS.

    Missing intervals become flat zero-volume bars at the previous close, flagged filled=1.
    """
    if bars.empty:
        return pd.DataFrame(columns=list(STORE_FIELDS), index=pd.DatetimeIndex([], tz="UTC", name="open_time"))
    freq = pd.Timedelta(seconds=bar_seconds)
    grid_index = pd.date_range(bars.index[0], bars.index[-1], freq=freq, name="open_time")
    grid = bars[["open", "high", "low", "close", "volume"]].reindex(grid_index)
    filled = grid["close"].isna()
    previous_close = grid["close"].ffill()
    for column in ("open", "high", "low", "close"):
        grid[column] = grid[column].where(~filled, previous_close)
    grid["volume"] = grid["volume"].where(~filled, 0.0)
    grid["vwap"] = (grid["high"] + grid["low"] + grid["close"]) / 3.0
    grid["filled"] = filled.astype("float64")
    return grid[list(STORE_FIELDS)].astype("float64")


def mark_warmup(index: pd.DatetimeIndex, first_open: pd.Timestamp, bar_seconds: int, warmup: int) -> np.ndarray:
    """True for grid rows within ``warmup`` bars of the pool's first bar."""
    bars_since_start = (index - first_open) // pd.Timedelta(seconds=bar_seconds)
    return np.asarray(bars_since_start < warmup)
