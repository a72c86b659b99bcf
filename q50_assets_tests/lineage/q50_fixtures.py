"""Synthetic inputs of the Q50 strategy for engine tests: bars, a signal frame made by the real
signal stage (research/signals.py compute_signals) from chosen quantiles, and regime labels."""

import numpy as np
import pandas as pd

from q50_assets.lineage.backtest.engine import Q50Inputs
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.regimes.rules import RegimeDetector
from q50_assets.lineage.signals.rules import Q50SignalLoader, SignalConfig, compute_signals

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H = pd.Timedelta(hours=1)


def make_bars(closes, volume=50_000.0, start=T0) -> pd.DataFrame:
    closes = np.asarray(closes, dtype=float)
    idx = pd.DatetimeIndex([start + i * H for i in range(len(closes))], name="open_time")
    opens = np.r_[closes[0], closes[:-1]]
    return pd.DataFrame({"open": opens, "high": np.maximum(opens, closes) * 1.01,
                         "low": np.minimum(opens, closes) * 0.99, "close": closes,
                         "volume": volume}, index=idx)


def random_walk(n, seed, start=1.0, drift=0.0, vol=0.02, volume=50_000.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return make_bars(start * np.exp(np.cumsum(rng.normal(drift, vol, n))), volume=volume)


def signals_from_q50(index: pd.DatetimeIndex, q50, spread: float = 0.02, vol_risk: float = 1e-5,
                     reserves: ReserveSeries | None = None, config: SignalConfig | None = None) -> pd.DataFrame:
    """Signal rows (known at each bar's close) whose median forecast is ``q50``, symmetric interval."""
    q50 = np.asarray(q50, dtype=float)
    pred = pd.DataFrame({"q10": q50 - spread / 2, "q50": q50, "q90": q50 + spread / 2,
                         "predicted_at": index + H}, index=index)
    return compute_signals(pred, pd.Series(vol_risk, index=index), config or SignalConfig(), reserves=reserves)


def neutral_regimes(index: pd.DatetimeIndex, multiplier: float = 1.0) -> pd.DataFrame:
    n = len(index)
    return pd.DataFrame({"vol_percentile": 0.5, "vol_regime": ["medium"] * n, "momentum_regime": ["ranging"] * n,
                         "regime": ["medium_ranging"] * n, "position_multiplier": multiplier,
                         "threshold_adjustment": 0.0, "known_at": index + H}, index=index)


def inputs_for(signals: pd.DataFrame, regimes: pd.DataFrame, **sizing) -> Q50Inputs:
    return Q50Inputs(signals=Q50SignalLoader(signals), regimes=RegimeDetector().with_labels(regimes), **sizing)


def oracle_inputs(bars: pd.DataFrame, seed: int, skill: float = 0.5, latency: int = 1, **sizing) -> Q50Inputs:
    """A forecaster that partly knows the return a fill ``latency`` bars later captures: q50 =
    skill x that return + noise (a test fixture, never a model)."""
    rng = np.random.default_rng(seed)
    close = bars["close"].to_numpy()
    future = np.r_[close[latency + 1:] / close[latency:-1] - 1.0, np.zeros(latency + 1)][:len(close)]
    q50 = skill * future + (1 - skill) * rng.normal(0, 0.01, len(close))
    return inputs_for(signals_from_q50(bars.index, q50), neutral_regimes(bars.index), **sizing)
