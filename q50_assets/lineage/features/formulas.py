"""The feature set, written as QLib expressions, and the bar grid they are evaluated on.

Pure definitions: evaluation happens in QLib's expression engine (``D.features``), reached
through the feature store (:class:`q50_assets.lineage.common.ports.FeatureStore`).

Every expression looks only backwards (``Ref`` with positive offsets, rolling windows,
EMAs), so the value at bar t depends on bars <= t only; the look-ahead test checks it.
Windows are counted in bars of the configured timeframe (``Std(...,6)`` is six hours on 1h
bars, six days on 1d bars).

Missing bars: GeckoTerminal omits intervals without trades, so a missing bar is a bar with
no trades. The grid fills it as a flat bar (open=high=low=close = previous close, volume 0)
and flags it ``$filled`` = 1, so ``Ref($close, 1)`` always means one bar ago. Filled bars
are counted in the feature stage's metadata; models train and predict on real bars only.

Two optional groups may be missing (NaN) where their data is: **flow features** from the
collector's trades (only for pools whose trades pass the trades stage's checks, and only over the
span the trades cover) and the **collector's own feature vectors** (``model.collector_feature_vectors``;
a bar gets a vector only if the collector had written it by the bar's close). LightGBM treats NaN as
missing; the feature stage counts them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# --- the collector's own feature vectors (its enhanced-history table pool_feature_vectors) ---
# Forward-looking targets the collector stores beside its features (supervised-learning labels:
# returns and volume change AFTER the row's timestamp). Never a feature: never even read.
COLLECTOR_VECTOR_TARGETS = ("price_return_1h", "price_return_4h", "price_return_24h", "volume_change_1h")
# The collector's typed feature columns the model may use (as of their created_at: asof_collector_features).
# Not volatility_regime (text) and not feature_vector_json (free-form JSON that may hold anything,
# targets included).
COLLECTOR_VECTOR_FEATURES = (
    "rsi_14", "macd_signal", "bollinger_position", "volume_sma_ratio",
    "liquidity_stability", "liquidity_growth_rate", "depth_imbalance",
    "trader_diversity_score", "whale_activity_indicator", "retail_activity_score",
    "bid_ask_spread_normalized", "market_impact_score", "arbitrage_opportunity",
    "hour_of_day", "day_of_week", "is_weekend", "drawdown_risk",
)

# Fields written to the QLib store, per pool, on the full grid. ``$vwap`` is the typical price
# (h+l+c)/3: GeckoTerminal bars carry no VWAP (the trades' own VWAP is ``$trade_vwap``, below).
STORE_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "filled")
# The trades stage writes TRADE_FIELDS ($trade_count, $buy_usd, $sell_usd, $unique_traders,
# $trade_vwap; research.trades) beside them, over the span the collector's trades cover only.

# Trade-flow features. A bar inside the covered span without a trade has count 0 and an undefined
# (NaN) imbalance; outside the span every flow feature is NaN.
FLOW_FEATURES = {
    # Net buying pressure in [-1, 1]: (buy USD - sell USD) / (buy USD + sell USD).
    "flow_imbalance": "($buy_usd-$sell_usd)/($buy_usd+$sell_usd)",
    "flow_imbalance_6": "(Sum($buy_usd,6)-Sum($sell_usd,6))/(Sum($buy_usd,6)+Sum($sell_usd,6))",
    "trade_count": "$trade_count",
    "unique_traders": "$unique_traders",
}
# The collector's vectors enter the store as ``cfv_<column>`` fields (see asof_collector_features).
COLLECTOR_FIELD_PREFIX = "cfv_"


def collector_feature_fields() -> tuple[str, ...]:
    return tuple(COLLECTOR_FIELD_PREFIX + c for c in COLLECTOR_VECTOR_FEATURES)


def may_be_missing(feature: str) -> bool:
    """Flow and collector features are NaN where their data is missing; the rest never after warm-up."""
    return feature in FLOW_FEATURES or feature.startswith(COLLECTOR_FIELD_PREFIX)

_RET = "Log($close/Ref($close,1))"


def feature_expressions(rsi_periods: int = 14, macd_fast: int = 12, macd_slow: int = 26,
                        flow_features: bool = False, collector_features: bool = False) -> dict[str, str]:
    """Feature name -> QLib expression (the optional groups only when switched on)."""
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
    if flow_features:
        expressions.update(FLOW_FEATURES)
    if collector_features:
        expressions.update({name: f"${name}" for name in collector_feature_fields()})
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


def to_bar_grid(bars: pd.DataFrame, bar_seconds: int) -> pd.DataFrame:
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


class CollectorTargetLeak(ValueError):
    """A collector column that is a forward-looking target was offered as a feature."""


def asof_collector_features(grid_index: pd.DatetimeIndex, bar_seconds: int, vectors: pd.DataFrame) -> pd.DataFrame:
    """The collector's feature vectors as of each bar's prediction time, as ``cfv_<column>`` fields.

    A bar opening at t is predicted at its close t + bar; it may use a collector vector only if the
    collector had written it by then (``created_at <= t + bar``): the latest such vector, whatever bar
    it describes. A vector without ``created_at`` cannot be placed in time and is never used.
    ``vectors``: rows of the collector's ``pool_feature_vectors`` for one pool, with ``created_at``
    (UTC) and any of COLLECTOR_VECTOR_FEATURES; a forward-looking target column
    (COLLECTOR_VECTOR_TARGETS) or any other column raises :class:`CollectorTargetLeak` — targets are
    labels of the future, never features.
    """
    leaked = sorted(set(vectors.columns) & set(COLLECTOR_VECTOR_TARGETS))
    if leaked:
        raise CollectorTargetLeak(f"collector vectors carry forward-looking targets {leaked}: never features")
    unknown = sorted(set(vectors.columns) - set(COLLECTOR_VECTOR_FEATURES) - {"created_at", "timestamp", "id",
                                                                               "feature_set_version"})
    if unknown:
        raise CollectorTargetLeak(f"collector vector columns {unknown} are not known features; refusing them")
    fields = list(collector_feature_fields())
    out = pd.DataFrame(index=grid_index, columns=fields, dtype="float64")
    if vectors.empty or len(grid_index) == 0:
        return out
    known = vectors.assign(created_at=pd.to_datetime(vectors["created_at"], utc=True)).dropna(subset=["created_at"])
    known = known.sort_values(["created_at", "timestamp"] if "timestamp" in known else ["created_at"], kind="stable")
    values = pd.DataFrame({COLLECTOR_FIELD_PREFIX + c: pd.to_numeric(known[c], errors="coerce").astype("float64")
                           if c in known else np.nan for c in COLLECTOR_VECTOR_FEATURES}, index=known.index)
    values["created_at"] = known["created_at"].dt.as_unit("ns")
    left = pd.DataFrame({"predicted_at": (grid_index + pd.Timedelta(seconds=bar_seconds)).as_unit("ns")})
    joined = pd.merge_asof(left, values.sort_values("created_at", kind="stable"), left_on="predicted_at",
                           right_on="created_at", direction="backward", allow_exact_matches=True)
    out[fields] = joined[fields].to_numpy(dtype="float64")
    return out
