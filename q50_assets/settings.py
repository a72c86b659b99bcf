"""Typed project settings: config.yaml + environment, loaded once.

Precedence (lowest to highest): defaults in the models below, ``config.yaml``,
environment variables. Two kinds of environment override exist:

* the few everyday ones, by name: ``Q50_DATABASE_URL`` (the collector database),
  ``Q50_DATA_DIR``, ``Q50_TIMEFRAME``;
* any key, by path: ``Q50__<SECTION>__<KEY>``, e.g.
  ``Q50__NAUTILUS_TRADER__RISK_MANAGEMENT__MAX_POSITION_SIZE=0.3``.

Database URLs carry credentials, so they never live in a committed file: the
YAML keys for URLs must stay ``null`` and the values come from the environment.
A bad value raises :class:`SettingsError` with one line per bad key.

pydantic-settings does the loading: :class:`Settings` is a ``BaseSettings`` whose sources are,
highest first, the ``Q50__`` path variables (its environment source with ``__`` as the nesting
delimiter, each value read as a YAML scalar like config.yaml's), the named variables, and the
YAML file (its YAML source).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config.yaml"

# The collector's own timeframe vocabulary (ohlcv_data.timeframe).
Timeframe = Literal["1m", "5m", "15m", "1h", "4h", "12h", "1d"]
TIMEFRAME_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "12h": 43200, "1d": 86400}
TIMEFRAME_NAMES = {seconds: name for name, seconds in TIMEFRAME_SECONDS.items()}

ENV_CONFIG_FILE = "Q50_CONFIG"
ENV_DATABASE_URL = "Q50_DATABASE_URL"
ENV_NAMED_OVERRIDES = {
    ENV_DATABASE_URL: ("database", "url"),
    "Q50_DATA_DIR": ("data_dir",),
    "Q50_TIMEFRAME": ("timeframe",),
}
ENV_PATH_PREFIX = "Q50__"


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the key."""


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(Section):
    url: str | None = Field(
        default=None,
        description="Collector database URL. From Q50_DATABASE_URL; null means the embedded "
        "SQLite file <data_dir>/collector.sqlite.",
    )


class OhlcvSettings(Section):
    """The bar checks (lineage/ohlcv/rules.py: BarRules)."""

    min_bars: int = Field(
        default=48, ge=2, description="Complete bars a pool needs before any stage uses it."
    )
    stored_price_decimals: int = Field(
        default=8, ge=0, le=18, description="Scale of the collector's Numeric(20,8) prices."
    )
    min_price_significant_digits: int = Field(
        default=2,
        ge=1,
        le=12,
        description="A price with fewer significant digits at the stored scale is too coarse "
        "for returns (e.g. 4e-8 stored with 8 decimals has one digit).",
    )
    max_gap_bars: int = Field(
        default=24,
        ge=1,
        description="Longest run of missing bars tolerated before the gap check fails (warning).",
    )
    extreme_move_ratio: float = Field(
        default=20.0, gt=1, description="A close-to-close move beyond this factor in one bar (pump, rug) is "
        "listed by the extreme_moves check (warning).")


class TradeSettings(Section):
    """The trades stage (lineage/trades/rules.py: TradeRules): the collector's trades per bar, checked against the bars."""

    flow_features: bool = Field(
        default=True,
        description="Trade-flow features (buy/sell imbalance, trade count, unique traders) for pools whose trades "
        "pass every trades check; false: the checks still run, no pool gets flow features.",
    )
    min_volume_coverage: float = Field(
        default=0.5, gt=0, le=1,
        description="Share of the bars' USD volume (over the span the collected trades cover) that those trades "
        "must explain; the collector keeps trades >= 100 USD only, so a complete record stays below 1.",
    )
    min_covered_bars: int = Field(
        default=24, ge=1, description="Bars the collected trades must span before flow features are computed.")


class IndicatorSettings(Section):
    """Indicator periods the feature stage computes and the regimes read (the plan keeps them under
    nautilus_trader.strategy_config.regime_detection)."""

    rsi_periods: int = Field(default=14, ge=2)
    macd_fast: int = Field(default=12, ge=1)
    macd_slow: int = Field(default=26, ge=2)

    @model_validator(mode="after")
    def _fast_below_slow(self):
        if self.macd_fast >= self.macd_slow:
            raise ValueError(
                f"macd_fast ({self.macd_fast}) must be smaller than macd_slow ({self.macd_slow})"
            )
        return self


class WalkForwardSettings(Section):
    """The walk-forward LightGBM quantile model's schedule and size (lineage/model/walk_forward.py)."""

    horizon_bars: int = Field(default=1, ge=1, description="Label: forward return over this many bars.")
    initial_train_bars: int = Field(
        default=240, ge=24, description="At least this many bars of calendar time from the first prediction time "
        "to the first fold boundary (the first window): that boundary is the first point of the retrain grid "
        "at or after it.")
    retrain_every_bars: int = Field(
        default=24, ge=1, description="A new model every N bars of calendar time: fold boundaries lie on the "
        "multiples of N bars since the Unix epoch (UTC), so with 1h bars and 24 they are UTC midnights, the "
        "same whatever the data's first bar.")
    min_train_rows: int = Field(default=200, ge=10, description="Folds with fewer labelled rows are skipped.")
    seed: int = 42
    num_boost_round: int = Field(default=150, ge=10)


class CalibrationSettings(Section):
    """Past-only recalibration of q10/q90 (lineage/model/calibration.py)."""

    calibration_window_bars: int = Field(
        default=168, ge=24,
        description="q10/q90 are recalibrated on the out-of-sample labels that became known in the last N bars.",
    )
    calibration_min_rows: int = Field(
        default=200, ge=10, description="Fewer out-of-sample labels known at a fold boundary: that fold is not calibrated."
    )


class CoverageSettings(Section):
    coverage_tolerance: float = Field(
        default=0.02,
        gt=0,
        lt=0.5,
        description="Allowed miscalibration of the recalibrated OOS q10/q90 coverage beyond 3 binomial "
        "standard errors; beyond it the blocking oos_coverage check fails.",
    )


class CollectorVectorSettings(Section):
    collector_feature_vectors: bool = Field(
        default=False,
        description="Also feed the collector's own pool_feature_vectors columns to the model, each bar only "
        "the vector the collector had written by the bar's close (created_at), never its forward-return targets. "
        "Without that table the columns are missing (NaN).",
    )


class ModelSettings(WalkForwardSettings, CalibrationSettings, CoverageSettings, CollectorVectorSettings):
    """Walk-forward LightGBM quantile model (q10/q50/q90)."""


class NaiveSettings(Section):
    """The naive forecaster, the model's yardstick (lineage/model/evaluation.py)."""

    naive_window_bars: int | None = Field(
        default=168, ge=1, description="The naive forecaster's window of known labels (null = every known label)."
    )
    naive_min_pool_labels: int = Field(
        default=48, ge=2, description="Fewer known labels of its own: a pool's naive forecast uses every pool's."
    )


class BootstrapSettings(Section):
    """The calendar-time block bootstrap behind every interval (lineage/common/uncertainty.py)."""

    bootstrap_samples: int = Field(default=1000, ge=100, description="Block-bootstrap replicates per interval.")
    bootstrap_block_days: float = Field(
        default=1.0, description="Block length of the calendar-time bootstrap (a day or more)."
    )
    bootstrap_seed: int = 0
    bootstrap_method: Literal["circular", "stationary"] = Field(
        default="circular", description="arch's circular block bootstrap (blocks of exactly bootstrap_block_days, "
        "wrapping at the end, so whole days and their intraday pattern stay together) or its stationary bootstrap "
        "(geometric block lengths of that mean length, also wrapping). Both draw every bar equally often.")
    min_round_trips_for_interval: int = Field(
        default=10, ge=2, description="A group or variant with fewer round trips gets no interval (and no PSR/DSR): "
        "the table says 'too few (n)' rather than a bootstrap of a handful of trades.")

    @field_validator("bootstrap_block_days")
    @classmethod
    def _at_least_a_day(cls, days: float) -> float:
        # Intraday seasonality and serial correlation must stay inside a block.
        if not days >= 1.0:
            raise ValueError(f"must be at least one day of calendar time, got {days} days")
        return days


class EvaluationSettings(NaiveSettings, BootstrapSettings):
    """Yardsticks and intervals of the model's evidence and the research report."""

    prior_configurations: int = Field(
        default=0, ge=0, description="Strategy configurations tried on this data before this one (other thresholds, "
        "sizes, grids): the deflated Sharpe counts them beside this run's q50 variants, so trying many makes a "
        "good-looking Sharpe count for less.")


class SignalSettings(Section):
    """The signal rules (lineage/signals/rules.py); costs from the one cost model (lineage/common/costs.py)."""

    swap_fee: float = Field(default=0.0025, ge=0, lt=0.1, description="DEX swap fee per side (0.25 %); the cost "
                            "model adds constant-product impact at the intended size.")
    variance_multiplier: float = Field(default=1.0, ge=0, description="Risk aversion: the threshold adds this "
                                       "times the forecast's variance.")
    base_threshold: float = Field(default=0.0, ge=0, description="Floor of the variance premium, before costs.")
    min_prob_edge: float = Field(default=0.0, ge=0, le=0.5, description="Required |prob_up - 0.5| (0 = off).")
    tier_cuts: tuple[float, float, float] = Field(
        default=(0.5, 1.0, 2.0), description="enhanced_info_ratio cuts of the signal tiers D/C/B/A.")
    allow_short: bool = Field(default=False, description="Spot DEX: no borrowing is modelled.")

    @model_validator(mode="after")
    def _ascending_tiers(self):
        cuts = tuple(self.tier_cuts)
        if not all(c == c and abs(c) != float("inf") for c in cuts) or not cuts[0] <= cuts[1] <= cuts[2]:
            raise ValueError(f"tier_cuts must be three finite ascending numbers, got {self.tier_cuts!r}")
        return self


class SignalEvidenceSettings(Section):
    """What the forecast earns before any rule, across pools per bar (lineage/signal_evidence/rules.py)."""

    min_pools: int = Field(default=10, ge=3, description="A bar counts only with at least this many pools holding a "
                           "signal and a forward return; fewer pools make a cross-sectional ranking meaningless.")
    quantiles: int = Field(default=5, ge=2, le=20, description="Quantile groups of the forecast per bar (alphalens' "
                           "quantiles; the top group is the basket).")
    horizons: tuple[int, ...] = Field(default=(1, 2, 4, 8, 24), description="Forward-return horizons in bars, each "
                                      "counted from the fill bar's price.")
    vol_buckets: int = Field(default=3, ge=2, le=5, description="Buckets (terciles by default) of the forecast width and "
                             "of past volatility within which the forecast is ranked for the volatility-neutral spreads.")
    null_draws: int = Field(default=500, ge=100, le=100_000, description="Draws of the signal-level null (forecasts "
                            "circularly shifted in time against the returns, per pool).")
    null_seed: int = Field(default=11, description="Seed of the signal-level null.")

    @model_validator(mode="after")
    def _valid(self):
        hs = tuple(self.horizons)
        if not hs or any(h < 1 for h in hs) or list(hs) != sorted(set(hs)):
            raise ValueError(f"horizons must be distinct ascending bar counts >= 1, got {self.horizons!r}")
        if self.min_pools < self.quantiles:
            raise ValueError(f"min_pools ({self.min_pools}) must be at least quantiles ({self.quantiles})")
        return self


class SpotSignalSettings(SignalSettings):
    """The deployed ``signals`` section: the signal rules know shorts, the backtests do not."""

    @model_validator(mode="after")
    def _spot_only(self):
        # The backtests are spot: a short signal means "be flat". Allowing shorts would fill
        # q50_signals with short trades (and the demo's tradeable counts) that no backtest makes.
        if self.allow_short:
            raise ValueError("allow_short: true is not supported: backtests are spot-only (no borrowing is "
                             "modelled), so short signals would never be traded")
        return self


class CapitalSettings(Section):
    starting_capital_usd: float = Field(default=10_000.0, gt=0, description="USD cash per pool backtest; the "
                                        "signals' intended size is taken from it too.")
    max_reserve_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Largest single trade as a fraction of the pool's USD reserve."
    )


class KellySettings(Section):
    kelly_fraction: float = Field(default=0.5, gt=0, le=1, description="Fractional Kelly for signal strength.")


class FillSettings(Section):
    """How the engines fill an order (lineage/backtest/engine.py)."""

    min_trade_fraction: float = Field(default=0.02, ge=0, lt=1, description="Smallest rebalance, fraction of equity.")
    fill_latency_bars: int = Field(
        default=1, ge=1, le=24,
        description="Bars between a decision (at a bar's close) and its fill; also the model's label offset "
        "(the label is the return from close(t+L) to close(t+L+h)). The q50_close variant fills at the "
        "decision's own close for comparison.")
    fill_price: Literal["close", "typical"] = Field(
        default="close", description="Price a delayed fill executes at (before impact): the fill bar's close, "
        "or its typical price (high + low + close) / 3.")
    max_volume_share: float = Field(
        default=0.1, gt=0, le=1,
        description="Largest trade as a share of the fill bar's USD volume; a zero-volume fill bar fills nothing "
        "(the order expires).")


class BacktestSettings(CapitalSettings, KellySettings, FillSettings):
    """NautilusTrader backtests per pool (lineage/backtest/); the fee is signals.swap_fee."""

    permutations: int = Field(default=1000, ge=1000, le=100_000,
                              description="Permutation null draws per pool (circular shifts of the Q50 positions).")
    permutation_seed: int = Field(default=7, description="Seed of the permutation null.")
    fallback_reserve: Literal["median", "none"] | float = Field(
        default="median",
        description="Liquidity assumed for price impact when the collector has no observation of a pool's reserve "
        "at a bar's time: 'median' = the median over the observed pools of each pool's median reserve in the "
        "collector database, a number in (0, 1) = that quantile of them, 'none' = no impact for such bars. "
        "Computed once per batch, the same for signals and backtests (lineage/common/costs.py).")
    fallback_reserve_usd: float | None = Field(
        default=None, gt=0,
        description="An explicit assumed liquidity (USD) instead of fallback_reserve's statistic; null = use it.",
    )
    reserve_sensitivity: tuple[float, ...] = Field(
        default=(0.1, 10.0),
        description="The assumed reserve is also scaled by each factor (variants q50_reserve_x<factor>); each "
        "factor is one more Nautilus run for every pool whose span uses the assumed reserve.")
    buy_and_hold_fraction: float = Field(default=1.0, gt=0, le=1, description="Equity share of the buy & hold baseline.")

    @field_validator("fallback_reserve")
    @classmethod
    def _statistic(cls, value):
        if not isinstance(value, str) and not 0 < value < 1:
            raise ValueError(f"must be 'median', 'none' or a quantile in (0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _sensitivity_factors(self):
        bad = [f for f in self.reserve_sensitivity if not (f > 0 and f != 1 and f < 1e3)]
        if bad:
            raise ValueError(f"reserve_sensitivity factors must be > 0, not 1 and < 1000, got {bad}")
        return self


class HorizonRuleSettings(Section):
    """The q50_horizon rule (lineage/backtest/horizon.py): enter on the forecast's expected return over the
    intended holding horizon net of the round trip's cost, hold for that horizon."""

    holding_bars: int = Field(
        default=8, ge=1, le=24 * 14,
        description="H: bars a q50_horizon position is held after its last qualifying signal, and the horizon "
        "its expected return is scaled to (H x the 1-bar E[r], assuming the forecast persists over H). 8: the "
        "mean holding time of q50's round trips on the bundled sample, so the cost a trip really pays is set "
        "against the return it really holds for.")
    risk_premium: float = Field(
        default=0.0, ge=0, lt=1,
        description="Return over the horizon an entry must clear beyond its round-trip cost (0 = none). A "
        "constant hurdle: the forecast's width already shapes E[r] and is not counted again.")


class RuleSettings(Section):
    """Trading rules beside the q50 strategy's own (which keeps the signals section's threshold)."""

    horizon: HorizonRuleSettings = HorizonRuleSettings()


class BasketSettings(Section):
    """The cross-sectional top-k basket and its past-volatility yardstick (lineage/basket/)."""

    top_k: int = Field(default=5, ge=1, le=100, description="Pools held at once: the top k by the forecast's "
                       "E[r] (the yardstick: by past vol_risk) among the pools with a signal known at the bar.")
    min_candidate_pools: int = Field(
        default=10, ge=1, description="A rebalance bar with fewer candidate pools forms no basket (flat until the "
        "next): a top k of barely k pools is no cross-sectional choice.")
    rebalance_bars: int = Field(
        default=6, ge=1, le=24 * 7,
        description="Bars between two rebalances (anchored on the epoch grid). The forecast's excess over the "
        "candidates fades after its bar, while every change of member pays a round trip: 6 keeps most of the "
        "edge per round trip paid.")
    cost_filter: bool = Field(
        default=True, description="Hold a top-k pool only when its E[r] over the holding horizon (per bar, "
        "times rebalance_bars) clears the round trip at its size (the one cost model, at the reserve known "
        "then); the slot left is cash. The yardstick has no forecast and no filter.")
    basket_capital_usd: float = Field(
        default=1_000.0, gt=0, description="The basket's capital: each member's engine starts with "
        "basket_capital_usd / top_k (its size sets its AMM impact).")
    min_held_bars: int = Field(
        default=24, ge=1, description="The basket_backtest check: the forecast basket and its yardstick each "
        "held a pool on at least this many bars.")


class RegimeRuleSettings(Section):
    """The RegimeDetector's rules (lineage/regimes/rules.py)."""

    vol_percentiles: tuple[float, float, float] = Field(
        default=(0.30, 0.70, 0.90), description="Past-only vol_risk percentile cuts low|medium|high|extreme."
    )
    min_history_bars: int = Field(default=48, ge=1, description="Past vol_risk values needed before a vol regime.")
    window_bars: int | None = Field(default=None, description="null = expanding history; else a rolling window.")
    rsi_overbought: float = Field(default=70.0, description="With boll_pos >= 1: trending_up before MACD confirms.")
    rsi_oversold: float = Field(default=30.0, description="With boll_pos <= 0: trending_down before MACD confirms.")
    position_multipliers: dict[str, float] = Field(
        default={"low": 1.2, "medium": 1.0, "high": 0.6, "extreme": 0.0, "unknown": 0.0},
        description="Vol regime -> position size multiplier.",
    )
    momentum_multipliers: dict[str, float] = Field(
        default={"trending_up": 1.0, "trending_down": 0.5, "ranging": 1.0, "unknown": 0.0},
        description="Momentum regime -> position size multiplier (multiplies the vol one).",
    )
    threshold_adjustments: dict[str, float] = Field(
        default={"low": 0.0, "medium": 0.0, "high": 0.002, "extreme": 0.005, "unknown": 0.0},
        description="Vol regime -> return added to the signal's threshold.",
    )


class RegimeDetectionSettings(IndicatorSettings, RegimeRuleSettings):
    """The plan's regime_detection keys: the indicator periods and the RegimeDetector's rules."""

    use_existing_indicators: bool = Field(
        default=True, description="Regimes from the feature stage's RSI/MACD/Bollinger (the only mode built)."
    )

    @model_validator(mode="after")
    def _existing_indicators_only(self):
        if not self.use_existing_indicators:
            raise ValueError("use_existing_indicators: false is not supported (regimes reuse the feature stage's indicators)")
        from q50_assets.lineage.regimes.rules import RegimeConfig

        RegimeConfig.of_section(self)  # the detector's own rules, reported under this section
        return self


class StrategySettings(Section):
    signal_source: Literal["qlib", "database"] = Field(
        default="qlib",
        description="qlib: backtest this run's signals (the q50_signals asset); database: backtest the signals "
        "stored in q50_signals of database_uri (signals made elsewhere).")
    database_uri: str | None = Field(
        default=None,
        description="Where signal_source: database reads q50_signals. From the environment; null means the "
        "project database (database.url).",
    )
    regime_detection: RegimeDetectionSettings = Field(default_factory=RegimeDetectionSettings)

    @model_validator(mode="after")
    def _uri_only_with_database_source(self) -> "StrategySettings":
        # A key that is parsed and then ignored misleads: the URI is only read for signal_source: database.
        if self.database_uri and self.signal_source != "database":
            raise ValueError("database_uri is only read with signal_source: database (got signal_source: "
                             f"{self.signal_source}); unset it or set signal_source to database")
        return self


class PositionLimits(Section):
    max_position_size: float = Field(default=0.5, gt=0, le=1, description="Largest position, fraction of equity.")
    base_position_size: float = Field(default=0.1, gt=0, le=1, description="Position of a signal at the "
                                      "threshold, fraction of equity (Kelly scales it up to the maximum).")

    @model_validator(mode="after")
    def _base_within_max(self):
        if self.base_position_size > self.max_position_size:
            raise ValueError(
                f"base_position_size ({self.base_position_size}) exceeds "
                f"max_position_size ({self.max_position_size})"
            )
        return self


class RiskManagementSettings(PositionLimits):
    use_existing_feature_vectors: bool = Field(
        default=True, description="Trading history points at the collector's pool_feature_vectors row of the "
        "deciding bar where it has one.")


class NautilusTraderSettings(Section):
    enabled: bool = True
    strategy_config: StrategySettings = Field(default_factory=StrategySettings)
    risk_management: RiskManagementSettings = RiskManagementSettings()
    backtest: BacktestSettings = BacktestSettings()


class NewBarsSensorSettings(Section):
    interval_seconds: int = Field(default=60, ge=10, description="Minimum seconds between two ticks.")
    revision_window_bars: int = Field(
        default=3, ge=1, description="The newest N bars of each pool are re-read every tick to see revisions in place.")
    running_by_default: bool = Field(default=False, description="Start the sensor with the deployment (else: turn it on in the UI).")
    repair_attempts: int = Field(default=3, ge=0, description="A pool whose latest run failed or was canceled is "
                                 "refreshed again at the next tick, at most this many times in a row (0: never).")
    repair_lookback_runs: int = Field(default=500, ge=10, description="How many of the newest runs the sensor reads "
                                      "to find each pool's latest run.")


class NightlySettings(Section):
    hour_utc: int = Field(default=2, ge=0, le=23, description="Hour (UTC) of the nightly retrain + backtests.")
    running_by_default: bool = Field(default=False, description="Start the schedule with the deployment.")


class ConditionsSettings(Section):
    running_by_default: bool = Field(default=True, description="Start the q50_automation sensor (the assets' "
                                     "automation conditions) with the deployment.")
    interval_seconds: int = Field(default=30, ge=10, description="Minimum seconds between two evaluations.")


class AutomationSettings(Section):
    new_bars_sensor: NewBarsSensorSettings = NewBarsSensorSettings()
    nightly: NightlySettings = NightlySettings()
    conditions: ConditionsSettings = ConditionsSettings()


class BatchSettings(Section):
    pools_per_run: int = Field(default=100, ge=1, le=10_000, description="Pools per run: the per-pool assets' "
                               "backfill policy, the sensor's and the nightly's run requests, q50 demo.")
    runs_at_once: int | None = Field(default=None, ge=1, le=256, description="Batch runs q50 demo executes at once, "
                                     "each in its own process (the daemon's run queue allows max_concurrent_runs); null "
                                     "= the cores this process may use. It splits the pools into two batches per "
                                     "process (at most pools_per_run each).")


class ExecutionSettings(Section):
    executor: Literal["in_process", "celery"] = Field(
        default="in_process", description="in_process: a run's steps in its own process; celery: each step a "
        "Celery task (dagster-celery), broker and result backend from Q50_CELERY_BROKER / Q50_CELERY_BACKEND.")


def database_label(url: str) -> str:
    """The database a URL points at, without user name, password or query (which may carry one):
    driver, host, port and database name (a SQLite file's path)."""
    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    # URL.set() leaves a field alone when given None: build a new URL from the parts kept.
    return URL.create(parsed.drivername, host=parsed.host, port=parsed.port,
                      database=parsed.database).render_as_string(hide_password=True)


def database_key(url: str) -> str:
    """A stable directory name for a database: its name (a SQLite file's stem) and 10 hex digits of
    sha1 over :func:`database_label` (so the same database reached with other credentials is one)."""
    import hashlib
    import re

    from sqlalchemy.engine import make_url

    label = database_label(url)
    name = Path(make_url(url).database or "database").stem
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "database"
    return f"{safe}-{hashlib.sha1(label.encode()).hexdigest()[:10]}"


class Settings(BaseSettings):
    # Unknown keys are typos; the sources are chosen in settings_customise_sources.
    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PATH_PREFIX,
                                      env_nested_delimiter="__", case_sensitive=False, enable_decoding=False)

    data_dir: Path = Field(
        default=Path(".q50_data"),
        description="Everything the project writes locally. Relative paths are taken from the "
        "directory of the config file.",
    )
    timeframe: Timeframe = "1h"
    database: DatabaseSettings = DatabaseSettings()
    ohlcv: OhlcvSettings = OhlcvSettings()
    model: ModelSettings = ModelSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    signals: SpotSignalSettings = SpotSignalSettings()
    rules: RuleSettings = RuleSettings()
    signal_evidence: SignalEvidenceSettings = SignalEvidenceSettings()
    trades: TradeSettings = TradeSettings()
    nautilus_trader: NautilusTraderSettings = Field(default_factory=NautilusTraderSettings)
    basket: BasketSettings = BasketSettings()
    automation: AutomationSettings = AutomationSettings()
    batches: BatchSettings = BatchSettings()
    execution: ExecutionSettings = ExecutionSettings()

    @property
    def bar_seconds(self) -> int:
        return TIMEFRAME_SECONDS[self.timeframe]

    @property
    def database_url(self) -> str:
        """The collector database URL actually used (embedded SQLite when none is set)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'collector.sqlite'}"

    @property
    def database_dir(self) -> Path:
        """Where everything made from this database is kept locally (QLib store, stored asset values
        and the model, reports): ``<data_dir>/databases/<key>``, the key a readable name plus a hash
        of the database's URL without credentials. Two databases never share a store, so pointing
        ``Q50_DATABASE_URL`` elsewhere and back gives the same outputs as two clean checkouts."""
        return self.data_dir / "databases" / database_key(self.database_url)

    @property
    def signal_database_url(self) -> str:
        return self.nautilus_trader.strategy_config.database_uri or self.database_url


    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        sources = _SOURCES.get(None)
        if sources is None:  # built from values (model_validate, tests): those values only
            return (init_settings,)
        config_file, environ = sources
        return (
            init_settings,
            _PathEnvSource(settings_cls, environ),
            _NamedEnvSource(settings_cls, environ),
            YamlConfigSettingsSource(settings_cls, yaml_file=config_file),
        )


# The config file and environment of the load_settings call in progress.
_SOURCES: ContextVar[tuple[Path, Mapping[str, str]]] = ContextVar("q50_settings_sources")

# Keys whose values are URLs that may carry credentials: never accepted from YAML.
_ENV_ONLY_KEYS = (("database", "url"), ("nautilus_trader", "strategy_config", "database_uri"))


def _yaml_scalars(value: Any) -> Any:
    """Environment strings read as YAML scalars, like config.yaml's ("0.3" -> 0.3, "false" -> False)."""
    if isinstance(value, dict):
        return {k: _yaml_scalars(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


class _PathEnvSource(EnvSettingsSource):
    """``Q50__SECTION__KEY`` variables of a given environment (not necessarily ``os.environ``)."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}

    def __call__(self) -> dict[str, Any]:
        return _yaml_scalars(super().__call__())


class _NamedEnvSource(PydanticBaseSettingsSource):
    """The everyday variables by name: Q50_DATABASE_URL, Q50_DATA_DIR, Q50_TIMEFRAME."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field, field_name):  # every value comes from __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for name, path in ENV_NAMED_OVERRIDES.items():
            if self._environ.get(name):
                node = tree
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = _yaml_scalars(self._environ[name]) if name != ENV_DATABASE_URL else self._environ[name]
        return tree


def _get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _unknown_path_variables(environ: Mapping[str, str]) -> list[str]:
    """``Q50__X...`` variables whose first key is no section of the settings (the environment
    source only reads known sections; nested typos reach validation as unknown keys)."""
    known = set(Settings.model_fields)
    out = []
    for name in sorted(environ):
        if name.upper().startswith(ENV_PATH_PREFIX) and len(name) > len(ENV_PATH_PREFIX):
            path = [part.lower() for part in name[len(ENV_PATH_PREFIX):].split("__")]
            if path[0] not in known:
                out.append(".".join(path))
    return out


def _format_error(source: str, error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<root>"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in error and not isinstance(error["input"], dict):
        message = f"{message} (got {error['input']!r})"
    return f"{source}: {key}: {message}"


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read config.yaml and the environment into :class:`Settings`.

    Raises :class:`SettingsError` whose message has one line per bad key.
    """
    environ = dict(os.environ if environ is None else environ)
    path = Path(config_file or environ.get(ENV_CONFIG_FILE) or DEFAULT_CONFIG_FILE)
    if not path.is_file():
        raise SettingsError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(tree, dict):
        raise SettingsError(f"{path}: top level must be a mapping of keys")

    for key_path in _ENV_ONLY_KEYS:
        if _get_path(tree, key_path) not in (None, ""):
            raise SettingsError(
                f"{path}: {'.'.join(key_path)}: must be null in the file; URLs carry "
                f"credentials and come from the environment ({ENV_DATABASE_URL} for database.url)"
            )
    unknown = _unknown_path_variables(environ)
    if unknown:
        raise SettingsError("\n".join(f"{path}: {key}: unknown key" for key in unknown))

    token = _SOURCES.set((path, environ))
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = [_format_error(str(path), err) for err in exc.errors()]
        raise SettingsError("\n".join(lines)) from None
    finally:
        _SOURCES.reset(token)

    data_dir = settings.data_dir
    if not data_dir.is_absolute():
        data_dir = (path.parent / data_dir).resolve()
    return settings.model_copy(update={"data_dir": data_dir})


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
