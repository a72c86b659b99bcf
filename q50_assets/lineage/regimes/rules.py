"""Market regimes per bar: volatility (past-only percentile) x momentum (RSI, MACD, Bollinger).

Pure pandas/numpy. The regime of bar t uses row t's indicators and, for the volatility
percentile, the ``vol_risk`` values of rows <= t only (bar t is known at its close, so t itself
may be in its own history; no later row ever is). Computing on ``rows[:k]`` therefore gives
exactly the first k rows of computing on all rows; the prefix-invariance test checks it.

Inputs, per pool, indexed by bar ``open_time`` (UTC): the feature columns of
:mod:`q50_assets.lineage.features.formulas` -- ``vol_risk`` (variance of one-bar log returns over 6
bars), ``rsi_{period}`` in [0, 100], ``macd``, ``macd_signal``, ``macd_hist`` (normalised by
close, so a fraction of price; ``macd_hist = macd - macd_signal``), ``boll_pos`` (0 at the lower
Bollinger band, 1 at the upper, 0.5 at the 20-bar mean) -- and ``known_at``, when the row's
features became known. Optional ``is_warmup`` and ``is_filled`` flags (bool or 0/1).

Volatility regime: ``vol_percentile`` = mid-rank of vol_risk[t] among the valid vol_risk of
the history (expanding, or the last ``window_bars`` rows), cut at ``vol_percentiles``
(c1, c2, c3): [0, c1) low, [c1, c2) medium, [c2, c3) high, [c3, 1] extreme. Relative, not
absolute: pools differ by orders of magnitude in volatility, so "high" means high for this pool
so far.

Momentum regime: a trend needs the three indicators to agree (see ``momentum_regime`` in
:data:`REGIME_COLUMNS`), else the bar is ranging.

Sizing: ``position_multiplier`` = vol multiplier x momentum multiplier and
``threshold_adjustment`` (added to a signal's threshold, as a return) come from the fixed
:class:`RegimeConfig`; an undeterminable regime means no new risk by default.

Output columns (:data:`REGIME_COLUMNS` holds the definition of each, in order): vol_percentile,
vol_regime, momentum_regime, regime, position_multiplier, threshold_adjustment, known_at.

:class:`RegimeDetector` is the integration plan's class: ``RegimeDetector(config)`` classifies
online, one bar at a time, with past-only history (:meth:`RegimeDetector.classify_volatility_regime`),
runs the rules over a whole frame (:meth:`RegimeDetector.detect_regimes`, = :func:`detect_regimes`),
and answers "which regime was known at time t" from a pool's labels
(:meth:`RegimeDetector.get_regime_for_timestamp`), which is what the strategy asks at each bar.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pandas as pd
from pydantic import ConfigDict, model_validator

from q50_assets.settings import IndicatorSettings, RegimeDetectionSettings, RegimeRuleSettings, Settings

UNKNOWN = "unknown"
VOL_REGIMES = ("low", "medium", "high", "extreme", UNKNOWN)
MOMENTUM_REGIMES = ("trending_up", "trending_down", "ranging", UNKNOWN)
# Combined label f"{vol_regime}_{momentum_regime}"; vol regime names have no "_", so
# ``label.split("_", 1)`` recovers both parts.
REGIME_LABELS = tuple(f"{v}_{m}" for v in VOL_REGIMES for m in MOMENTUM_REGIMES)

OPTIONAL_FLAGS = ("is_warmup", "is_filled")

REGIME_COLUMNS: dict[str, str] = {
    "vol_percentile": "Mid-rank percentile of vol_risk[t] among the valid vol_risk values of its "
    "history H(t) = rows <= t (expanding) or the last window_bars rows up to and including t "
    "(rolling): (#{h < v} + (#{h == v} + 1) / 2) / |H(t)|, in (0, 1] (ties share their average "
    "rank, so a run of equal values -- e.g. zero vol on dead hours -- sits mid-distribution, not "
    "at an end). Valid = finite, >= 0, and not a warm-up row; invalid rows neither get a "
    "percentile nor count in anyone's history. NaN while |H(t)| < min_history_bars. Never uses "
    "a row after t.",
    "vol_regime": "From vol_percentile p and vol_percentiles (c1, c2, c3): 'low' if p < c1, "
    "'medium' if c1 <= p < c2, 'high' if c2 <= p < c3, 'extreme' if p >= c3; 'unknown' when p "
    "is NaN (too little history, invalid vol_risk) or the row is a warm-up row.",
    "momentum_regime": "Row-wise from rsi (rsi_{period}), macd_hist and boll_pos, with thr = "
    "trend_macd_min: 'trending_up' if boll_pos > 0.5 and ((macd_hist > thr and rsi > 50) or "
    "(rsi >= rsi_overbought and boll_pos >= 1)); 'trending_down' if boll_pos < 0.5 and "
    "((macd_hist < -thr and rsi < 50) or (rsi <= rsi_oversold and boll_pos <= 0)); else "
    "'ranging'. A trend needs MACD (momentum rising), RSI (gains dominate) and price (above the "
    "20-bar mean) to agree; an RSI beyond overbought/oversold with price outside the band is a "
    "trend even before the lagging MACD turns. The two cases exclude each other (boll_pos > 0.5 "
    "vs < 0.5). 'unknown' when any of rsi, macd, macd_signal, macd_hist, boll_pos is NaN or "
    "infinite, or the row is a warm-up row.",
    "regime": "Combined label f'{vol_regime}_{momentum_regime}', one of REGIME_LABELS "
    "(e.g. 'high_trending_down', 'unknown_unknown').",
    "position_multiplier": "Scale for a new position's size: position_multipliers[vol_regime] * "
    "momentum_multipliers[momentum_regime]; >= 0, 0 = take no new risk (by default in extreme "
    "or unknown volatility, and with an unknown momentum regime).",
    "threshold_adjustment": "Return added to a signal's trade threshold (|q50| must exceed "
    "threshold + adjustment): threshold_adjustments[vol_regime]; >= 0, so a regime can only "
    "make trading harder.",
    "known_at": "When the regime became known: the input known_at (UTC), unchanged. Valid "
    "because known_at is required to be non-decreasing, so every row <= t the regime uses was "
    "known by known_at[t].",
}

DEFAULT_POSITION_MULTIPLIERS = {"low": 1.2, "medium": 1.0, "high": 0.6, "extreme": 0.0, UNKNOWN: 0.0}
DEFAULT_THRESHOLD_ADJUSTMENTS = {"low": 0.0, "medium": 0.0, "high": 0.002, "extreme": 0.005, UNKNOWN: 0.0}
DEFAULT_MOMENTUM_MULTIPLIERS = {"trending_up": 1.0, "trending_down": 0.5, "ranging": 1.0, UNKNOWN: 0.0}


def _frozen_mapping(name: str, value: Mapping[str, float], keys: tuple[str, ...]) -> Mapping[str, float]:
    """Validate a regime -> number mapping (exactly ``keys``, finite values >= 0); read-only copy."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping of regime -> number, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    extra = [k for k in value if k not in keys]
    if missing or extra:
        raise ValueError(f"{name} must have exactly the keys {list(keys)}; missing {missing}, unexpected {extra}")
    out: dict[str, float] = {}
    for key in keys:
        number = value[key]
        if not _is_number(number):
            raise ValueError(f"{name}[{key!r}] must be a number, got {number!r}")
        if not np.isfinite(number) or number < 0:
            raise ValueError(f"{name}[{key!r}] must be a finite number >= 0, got {number!r}")
        out[key] = float(number)
    return MappingProxyType(out)


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class RegimeConfig(RegimeRuleSettings, IndicatorSettings):
    """Parameters of :func:`detect_regimes` (rules in :data:`REGIME_COLUMNS`): the settings'
    ``regime_detection`` keys (rsi_periods selects the feature column ``rsi_<n>``).

    The three mappings are stored as read-only copies; each must name every regime of its kind
    (a typo or a forgotten regime is an error, not a silent default). Extreme volatility: no new
    risk (tails dominate, the model's variance understates them); high +0.2 %, extreme +0.5 % on
    the threshold (about one more round trip of DEX fees): slippage and impact grow with
    volatility beyond the flat cost in the threshold; trending_down halves size (the spot
    strategy is long only); unknown: no new risk without a regime.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # |macd_hist| (fraction of price) a trend needs. 0 = its sign only: a fixed size would mean
    # "always trending" in a volatile pool and "never" in a quiet one; RSI and Bollinger
    # position are the confirmations that filter noise instead.
    trend_macd_min: float = 0.0

    @model_validator(mode="after")
    def _valid_rules(self):
        cuts = tuple(self.vol_percentiles)
        if (
            len(cuts) != 3
            or not all(_is_number(c) for c in cuts)
            or not all(0.0 < c < 1.0 for c in cuts)
            or not cuts[0] < cuts[1] < cuts[2]
        ):
            raise ValueError(
                f"vol_percentiles must be three strictly ascending numbers in (0, 1), got {self.vol_percentiles!r}"
            )
        object.__setattr__(self, "vol_percentiles", tuple(float(c) for c in cuts))
        _check_int("min_history_bars", self.min_history_bars, 1)
        if self.window_bars is not None:
            _check_int("window_bars", self.window_bars, 1)
            if self.window_bars < self.min_history_bars:
                raise ValueError(
                    f"window_bars ({self.window_bars}) < min_history_bars ({self.min_history_bars}): "
                    "no row could ever have enough history"
                )
        _check_int("rsi_periods", self.rsi_periods, 1)
        for name in ("rsi_overbought", "rsi_oversold", "trend_macd_min"):
            value = getattr(self, name)
            if not _is_number(value) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 < self.rsi_oversold < 50.0 < self.rsi_overbought < 100.0:
            raise ValueError(
                f"need 0 < rsi_oversold < 50 < rsi_overbought < 100, got {self.rsi_oversold!r}, {self.rsi_overbought!r}"
            )
        if self.trend_macd_min < 0:
            raise ValueError(f"trend_macd_min must be >= 0, got {self.trend_macd_min!r}")
        for name, keys in (
            ("position_multipliers", VOL_REGIMES),
            ("threshold_adjustments", VOL_REGIMES),
            ("momentum_multipliers", MOMENTUM_REGIMES),
        ):
            object.__setattr__(self, name, _frozen_mapping(name, getattr(self, name), keys))
        return self

    @classmethod
    def of(cls, settings: Settings) -> "RegimeConfig":
        return cls.of_section(settings.nautilus_trader.strategy_config.regime_detection)

    @classmethod
    def of_section(cls, section: RegimeDetectionSettings) -> "RegimeConfig":
        """The plan's ``regime_detection`` section as the detector's config."""
        fields = set(RegimeRuleSettings.model_fields) | set(IndicatorSettings.model_fields)
        return cls(**section.model_dump(include=fields))

    @property
    def rsi_column(self) -> str:
        return f"rsi_{self.rsi_periods}"

    def required_columns(self) -> tuple[str, ...]:
        return ("vol_risk", self.rsi_column, "macd", "macd_signal", "macd_hist", "boll_pos", "known_at")


def _flag(features: pd.DataFrame, name: str) -> np.ndarray:
    """Optional boolean column -> bool array (absent = all False). Accepts bool or 0/1 values."""
    if name not in features.columns:
        return np.zeros(len(features), dtype=bool)
    column = features[name]
    if pd.api.types.is_bool_dtype(column.dtype) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64")
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"column {name!r} must be boolean (True/False or 0/1, no missing values)")
    return values == 1.0


def _past_percentile(vol: pd.Series, config: RegimeConfig) -> np.ndarray:
    """Mid-rank percentile of each valid value among the valid values of rows <= t.

    ``vol`` holds NaN on invalid rows. pandas' expanding/rolling ``rank`` (skip-list based,
    O(n log n) / O(n log w)) ignores NaN in both the ranking and the count, and a window only
    ever reaches back, so no later row can enter. Ties: method="average".
    """
    valid = vol.notna().astype("float64")
    if config.window_bars is None:
        pct = vol.expanding(min_periods=1).rank(method="average", pct=True)
        count = valid.cumsum()
    else:
        pct = vol.rolling(config.window_bars, min_periods=1).rank(method="average", pct=True)
        count = valid.rolling(config.window_bars, min_periods=1).sum()
    pct = pct.to_numpy(dtype="float64")
    return np.where(count.to_numpy() >= config.min_history_bars, pct, np.nan)


def detect_regimes(features: pd.DataFrame, config: RegimeConfig) -> pd.DataFrame:
    """One pool's features -> one regime row per bar (columns of :data:`REGIME_COLUMNS`).

    ``features``: index open_time (DatetimeIndex, UTC; naive is taken as UTC, as in
    :mod:`.signals`), sorted ascending without duplicates; columns vol_risk, rsi_{period},
    macd, macd_signal, macd_hist, boll_pos, known_at; optional is_warmup (rows get vol and
    momentum regime 'unknown' and their vol_risk stays out of every history: warm-up features
    rest on too few bars) and is_filled (accepted, validated, and deliberately without effect:
    features are defined on the full grid, filled bars included, so the grid is the history a
    percentile is taken over; signals only exist on real bars anyway).

    Raises ValueError naming the problem: not a DatetimeIndex, unsorted or duplicated index,
    missing columns, non-numeric indicators, a missing known_at, known_at <= open_time
    (a feature is known at its bar's close at the earliest), or known_at decreasing (a row
    would use an earlier row not yet known).
    """
    if not isinstance(features, pd.DataFrame):
        raise ValueError(f"features must be a DataFrame, got {type(features).__name__}")
    if not isinstance(features.index, pd.DatetimeIndex):
        raise ValueError(f"features index must be a DatetimeIndex (open_time), got {type(features.index).__name__}")
    index = features.index
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    index.name = features.index.name or "open_time"
    if index.has_duplicates:
        raise ValueError("features index (open_time) has duplicates; one pool per call")
    if not index.is_monotonic_increasing:
        raise ValueError("features index (open_time) is not sorted ascending; sort it first")
    missing = [c for c in config.required_columns() if c not in features.columns]
    if missing:
        raise ValueError(f"features lack columns {missing}")

    known_raw = pd.to_datetime(features["known_at"])
    known_raw = known_raw.dt.tz_localize("UTC") if known_raw.dt.tz is None else known_raw.dt.tz_convert("UTC")
    known_at = known_raw.set_axis(index)
    if known_at.isna().any():
        raise ValueError(f"{int(known_at.isna().sum())} rows without known_at: unknown when the features are known")
    early = known_at <= index.to_series(index=index)
    if early.any():
        raise ValueError(f"{int(early.sum())} rows with known_at <= open_time (look-ahead)")
    if not known_at.is_monotonic_increasing:
        raise ValueError("known_at decreases along open_time: a regime would use an earlier row not yet known")

    def numeric(name: str) -> np.ndarray:
        try:
            return features[name].to_numpy(dtype="float64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"column {name!r} must be numeric: {error}") from error

    warmup = _flag(features, "is_warmup")
    _flag(features, "is_filled")  # validated only; see the docstring
    vol = numeric("vol_risk")
    rsi = numeric(config.rsi_column)
    macd = numeric("macd")
    macd_signal = numeric("macd_signal")
    hist = numeric("macd_hist")
    boll = numeric("boll_pos")

    # --- volatility: past-only percentile ---
    with np.errstate(invalid="ignore"):
        vol_ok = np.isfinite(vol) & (vol >= 0) & ~warmup
    percentile = _past_percentile(pd.Series(np.where(vol_ok, vol, np.nan)), config)
    c1, c2, c3 = config.vol_percentiles
    with np.errstate(invalid="ignore"):
        vol_regime = np.select(
            [np.isnan(percentile), percentile >= c3, percentile >= c2, percentile >= c1],
            [UNKNOWN, "extreme", "high", "medium"],
            default="low",
        ).astype(object)

    # --- momentum: row-wise agreement of MACD, RSI, Bollinger ---
    momentum_ok = np.logical_and.reduce([np.isfinite(x) for x in (rsi, macd, macd_signal, hist, boll)]) & ~warmup
    thr = config.trend_macd_min
    with np.errstate(invalid="ignore"):
        up = (boll > 0.5) & (((hist > thr) & (rsi > 50.0)) | ((rsi >= config.rsi_overbought) & (boll >= 1.0)))
        down = (boll < 0.5) & (((hist < -thr) & (rsi < 50.0)) | ((rsi <= config.rsi_oversold) & (boll <= 0.0)))
    momentum_regime = np.select(
        [~momentum_ok, up, down], [UNKNOWN, "trending_up", "trending_down"], default="ranging"
    ).astype(object)

    regime = np.array([f"{v}_{m}" for v, m in zip(vol_regime, momentum_regime)], dtype=object)
    vol_mult = pd.Series(vol_regime).map(config.position_multipliers).to_numpy(dtype="float64")
    mom_mult = pd.Series(momentum_regime).map(config.momentum_multipliers).to_numpy(dtype="float64")
    adjustment = pd.Series(vol_regime).map(config.threshold_adjustments).to_numpy(dtype="float64")

    out = pd.DataFrame(
        {
            "vol_percentile": percentile,
            "vol_regime": vol_regime,
            "momentum_regime": momentum_regime,
            "regime": regime,
            "position_multiplier": vol_mult * mom_mult,
            "threshold_adjustment": adjustment,
        },
        index=index,
    )
    out["known_at"] = known_at
    return out[list(REGIME_COLUMNS)]


class RegimeDetector:
    """The plan's RegimeDetector over :class:`RegimeConfig` (module docstring).

    * Online: :meth:`classify_volatility_regime` takes one bar's ``vol_risk`` (and ``vol_raw``,
      its square root, checked for consistency) and returns its volatility regime from the
      percentile among the values seen so far (this one included; expanding, or the last
      ``window_bars`` rows), exactly as :func:`detect_regimes` computes it over a frame.
    * Whole frame: :meth:`detect_regimes`.
    * As of a time: :meth:`with_labels` loads a pool's labels (:func:`detect_regimes`' output or
      the ``q50_regime_labels`` rows); :meth:`get_regime_for_timestamp` returns the latest label
      KNOWN at t (greatest ``known_at`` <= t), never a later one. The strategy's fast path is
      :meth:`index_at_ns` and the plain lists ``open_ns``, ``position_multiplier``,
      ``threshold_adjustment``, ``vol_regime``, ``momentum_regime``, ``regime``.
    """

    def __init__(self, config: RegimeConfig | None = None):
        self.config = config or RegimeConfig()
        self.reset()
        self._labels = None
        self.known_ns: list[int] = []
        self.open_ns: list[int] = []
        self.position_multiplier: list[float] = []
        self.threshold_adjustment: list[float] = []
        self.vol_regime: list[str] = []
        self.momentum_regime: list[str] = []
        self.regime: list[str] = []

    # --- online ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the online history."""
        self._sorted: list[float] = []  # valid values in the history, sorted
        self._window: deque = deque()  # the history's rows in order (None = invalid row)

    def classify_volatility_regime(self, vol_risk: float, vol_raw: float | None = None, *,
                                   warmup: bool = False) -> str:
        """Volatility regime of the next bar, from its ``vol_risk`` and the past bars' only.

        The value joins the history (invalid values -- NaN, infinite, negative, warm-up -- take
        a row in a rolling window but never count in a percentile). Returns 'low', 'medium',
        'high', 'extreme', or 'unknown' (invalid value, or fewer than ``min_history_bars`` valid
        values so far). ``vol_raw`` (the standard deviation, when given) must square to
        ``vol_risk`` within float32 rounding: a mix-up of the two columns raises ValueError.
        """
        value = float(vol_risk) if vol_risk is not None else math.nan
        if vol_raw is not None and math.isfinite(float(vol_raw)) and math.isfinite(value):
            if not math.isclose(float(vol_raw) ** 2, value, rel_tol=1e-5, abs_tol=1e-12):
                raise ValueError(f"vol_raw {vol_raw!r} squared is not vol_risk {vol_risk!r}: columns mixed up?")
        valid = math.isfinite(value) and value >= 0 and not warmup
        cfg = self.config
        if cfg.window_bars is not None and len(self._window) == cfg.window_bars:
            old = self._window.popleft()
            if old is not None:
                del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._window.append(value if valid else None)
        if not valid:
            return UNKNOWN
        bisect.insort(self._sorted, value)
        count = len(self._sorted)
        if count < cfg.min_history_bars:
            return UNKNOWN
        less = bisect.bisect_left(self._sorted, value)
        equal = bisect.bisect_right(self._sorted, value) - less
        percentile = (less + (equal + 1) / 2.0) / count
        c1, c2, c3 = cfg.vol_percentiles
        if percentile >= c3:
            return "extreme"
        if percentile >= c2:
            return "high"
        if percentile >= c1:
            return "medium"
        return "low"

    # --- whole frame -------------------------------------------------------------------------
    def detect_regimes(self, features: pd.DataFrame) -> pd.DataFrame:
        """:func:`detect_regimes` with this detector's config."""
        return detect_regimes(features, self.config)

    # --- as of a time ------------------------------------------------------------------------
    def with_labels(self, labels: pd.DataFrame) -> "RegimeDetector":
        """Load one pool's regime labels (index open_time; columns regime, vol_regime,
        momentum_regime, position_multiplier, threshold_adjustment, known_at) for as-of lookups."""
        missing = [c for c in ("regime", "position_multiplier", "threshold_adjustment", "known_at")
                   if c not in labels.columns]
        if missing:
            raise ValueError(f"regime labels lack columns {missing}")
        frame = labels.copy()
        index = pd.DatetimeIndex(frame.index)
        frame.index = (index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")).rename("open_time")
        known = pd.to_datetime(frame["known_at"], utc=True)
        frame["known_at"] = known
        frame = frame[known.notna()]
        if "vol_regime" not in frame.columns or "momentum_regime" not in frame.columns:
            parts = frame["regime"].astype(str).str.split("_", n=1, expand=True)
            frame["vol_regime"], frame["momentum_regime"] = parts[0], parts[1]
        order = np.lexsort((frame.index.as_unit("ns").asi8, frame["known_at"].dt.as_unit("ns").astype("int64").to_numpy()))
        frame = frame.iloc[order]
        self._labels = frame
        self.known_ns = [int(v) for v in frame["known_at"].dt.as_unit("ns").astype("int64")]
        self.open_ns = [int(v) for v in frame.index.as_unit("ns").asi8]
        self.position_multiplier = frame["position_multiplier"].astype(float).tolist()
        self.threshold_adjustment = frame["threshold_adjustment"].astype(float).tolist()
        self.vol_regime = frame["vol_regime"].astype(str).tolist()
        self.momentum_regime = frame["momentum_regime"].astype(str).tolist()
        self.regime = frame["regime"].astype(str).tolist()
        return self

    def index_at_ns(self, ts_ns: int) -> int:
        """Position of the latest label known at ``ts_ns`` (epoch ns), -1 if none."""
        return bisect.bisect_right(self.known_ns, ts_ns) - 1

    def get_regime_for_timestamp(self, timestamp) -> dict | None:
        """The latest label known at ``timestamp`` as a dict (with ``open_time``), or None."""
        if self._labels is None:
            raise ValueError("no labels loaded: call with_labels(...) first")
        ts = pd.Timestamp(timestamp)
        if ts is pd.NaT or pd.isna(ts):
            raise ValueError("timestamp must be a time, got NaT")
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        i = self.index_at_ns(ts.as_unit("ns").value)
        if i < 0:
            return None
        row = self._labels.iloc[i]
        return {"open_time": row.name, **row.to_dict()}


__all__ = [
    "MOMENTUM_REGIMES",
    "REGIME_COLUMNS",
    "REGIME_LABELS",
    "RegimeConfig",
    "RegimeDetector",
    "VOL_REGIMES",
    "detect_regimes",
]
