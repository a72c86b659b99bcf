"""The lineage's knobs as Dagster configuration, and the ONE place settings become stage configs.

:func:`stage_resources` turns :class:`~q50_assets.settings.Settings` into the fields of
:class:`LineageConfig` (and of the Nautilus door): those fields are what the launchpad shows and
lets a user override for one run. Each stage then gets its own small, frozen config object from
one method here (``bar_rules()``, ``trade_rules()``, ``feature_config()``, ``training_config()``,
``signal_config()``, ``regime_config()``, ``backtest_config(spec)``). Every settings key a stage
reads arrives through these fields: none is parsed and then ignored.
"""

from __future__ import annotations

import os
from typing import Literal

import pandas as pd
from dagster import Config, ConfigurableResource, EnvVar
from pydantic import Field

from q50_assets.lineage.backtest.step import BacktestStageConfig, variants_for
from q50_assets.lineage.ohlcv.rules import TIMEFRAME_SECONDS, BarRules
from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.evaluation import NaiveConfig
from q50_assets.lineage.model.walk_forward import WalkForwardConfig
from q50_assets.lineage.regimes.rules import RegimeConfig
from q50_assets.lineage.signals.rules import SignalConfig
from q50_assets.lineage.trades.rules import TradeRules
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.storage.database import CollectorDatabase
from q50_assets.lineage.backtest.nautilus import NautilusBacktester
from q50_assets.lineage.features.step import FeatureConfig
from q50_assets.lineage.model.step import ModelConfig


class OhlcvStage(Config):
    min_bars: int = Field(48, description="Complete bars a pool needs, else it is blocked.")
    stored_price_decimals: int = Field(8, description="Scale of the collector's Numeric(20,8) prices.")
    min_price_significant_digits: int = Field(2, description="Coarser prices are blocked.")
    max_gap_bars: int = Field(24, description="A longer run of missing bars fails the gaps warning.")
    revision_window_bars: int = Field(3, description="Newest bars the new-bars sensor compares (collector state).")


class TradesStage(Config):
    flow_features: bool = Field(True, description="Trade-flow features for pools whose trades pass every check.")
    min_volume_coverage: float = Field(0.5, description="Share of the covered bars' USD volume the trades must explain.")
    min_covered_bars: int = Field(24, description="Bars the collected trades must span.")


class FeatureStage(Config):
    rsi_periods: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    collector_feature_vectors: bool = Field(False, description="Also the collector's own pool_feature_vectors "
                                            "(as of their created_at; never its targets).")


class ModelStage(Config):
    horizon_bars: int = 1
    initial_train_bars: int = 240
    retrain_every_bars: int = 24
    min_train_rows: int = 200
    seed: int = 42
    num_boost_round: int = 150
    calibration_window_bars: int = Field(168, description="q10/q90 recalibrated on the OOS labels known in the "
                                         "last N bars.")
    calibration_min_rows: int = Field(200, description="Fewer such labels at a fold boundary: not calibrated.")
    coverage_tolerance: float = Field(0.02, description="Recalibrated coverage may miss by this + 3 s.e. "
                                      "(blocking check).")


class EvaluationStage(Config):
    naive_window_bars: int | None = 168
    naive_min_pool_labels: int = 48
    bootstrap_samples: int = 1000
    bootstrap_block_days: float = 1.0
    bootstrap_seed: int = 0
    prior_configurations: int = Field(0, description="Configurations tried before this one; the deflated Sharpe "
                                      "counts them with this run's q50 variants.")


class SignalStage(Config):
    swap_fee: float = Field(0.0025, description="DEX fee per side; the cost model adds impact at the intended size.")
    variance_multiplier: float = 1.0
    allow_short: bool = False


class RegimeStage(Config):
    vol_percentiles: list[float] = [0.3, 0.7, 0.9]
    min_history_bars: int = 48
    window_bars: int | None = None
    rsi_overbought: float = 70.0
    rsi_oversold: float = 30.0
    position_multipliers: dict[str, float] = {"low": 1.2, "medium": 1.0, "high": 0.6, "extreme": 0.0, "unknown": 0.0}
    momentum_multipliers: dict[str, float] = {"trending_up": 1.0, "trending_down": 0.5, "ranging": 1.0, "unknown": 0.0}
    threshold_adjustments: dict[str, float] = {"low": 0.0, "medium": 0.0, "high": 0.002, "extreme": 0.005,
                                               "unknown": 0.0}


class BacktestStage(Config):
    """Sizing, yardsticks and liquidity of the backtest stage. The engines' own execution settings
    (capital, fee, latency, fill price, volume cap) are the ``nautilus`` resource's fields."""

    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = 0.5
    buy_and_hold_fraction: float = 1.0
    permutations: int = Field(1000, description="Permutation null draws per pool.")
    permutation_seed: int = 7
    reserve_sensitivity: list[float] = Field([0.5, 2.0], description="The assumed reserve scaled by each factor "
                                             "(variants q50_reserve_x<k>).")
    fallback_reserve_usd: float | None = Field(50_000.0, description="Liquidity assumed before the collector's "
                                               "first observation; null = no impact there.")
    signal_source: Literal["qlib", "database"] = Field("qlib", description="qlib: this run's signals; database: "
                                                       "those stored in q50_signals of the signal database.")
    use_existing_feature_vectors: bool = Field(True, description="Trading history points at the collector's "
                                               "pool_feature_vectors row of the deciding bar where it has one.")


class LineageConfig(ConfigurableResource):
    """Every stage's parameters (from config.yaml + environment; overridable per run in the launchpad)."""

    timeframe: str = Field("1h", description="Collector timeframe the lineage reads.")
    pools_per_run: int = Field(100, description="Pools per batch run (the assets' backfill policy, the sensor, "
                                                "the nightly schedule and q50 demo).")
    ohlcv: OhlcvStage = OhlcvStage()
    trades: TradesStage = TradesStage()
    features: FeatureStage = FeatureStage()
    model: ModelStage = ModelStage()
    evaluation: EvaluationStage = EvaluationStage()
    signals: SignalStage = SignalStage()
    regimes: RegimeStage = RegimeStage()
    backtest: BacktestStage = BacktestStage()
    # Execution keys the model's label and the signals' intended size depend on (the same values
    # as the nautilus resource's: stage_resources sets both from one setting).
    fill_latency_bars: int = Field(1, description="Bars from a decision to its fill; the model's label starts there.")
    starting_capital_usd: float = 10_000.0
    max_reserve_fraction: float = 0.1

    @property
    def bar_seconds(self) -> int:
        return TIMEFRAME_SECONDS[self.timeframe]

    def bar_rules(self) -> BarRules:
        o = self.ohlcv
        return BarRules(timeframe=self.timeframe, min_bars=o.min_bars, stored_price_decimals=o.stored_price_decimals,
                        min_price_significant_digits=o.min_price_significant_digits, max_gap_bars=o.max_gap_bars)

    def trade_rules(self) -> TradeRules:
        t = self.trades
        return TradeRules(bar_seconds=self.bar_seconds, stored_price_decimals=self.ohlcv.stored_price_decimals,
                          min_volume_coverage=t.min_volume_coverage, min_covered_bars=t.min_covered_bars,
                          flow_features=t.flow_features)

    def feature_config(self) -> FeatureConfig:
        f = self.features
        return FeatureConfig(bar_seconds=self.bar_seconds, rsi_periods=f.rsi_periods, macd_fast=f.macd_fast,
                             macd_slow=f.macd_slow, flow_features=self.trades.flow_features,
                             collector_features=f.collector_feature_vectors)

    def training_config(self) -> ModelConfig:
        m, e = self.model, self.evaluation
        walk = WalkForwardConfig(horizon_bars=m.horizon_bars, label_offset_bars=self.fill_latency_bars,
                                 bar_seconds=self.bar_seconds, initial_train_bars=m.initial_train_bars,
                                 retrain_every_bars=m.retrain_every_bars, min_train_rows=m.min_train_rows,
                                 seed=m.seed, num_boost_round=m.num_boost_round)
        return ModelConfig(
            walk_forward=walk, features=self.feature_config(), coverage_tolerance=m.coverage_tolerance,
            calibration=CalibrationConfig(window_bars=m.calibration_window_bars, min_rows=m.calibration_min_rows,
                                          bar_seconds=self.bar_seconds),
            naive=NaiveConfig(min_pool_labels=e.naive_min_pool_labels, window_bars=e.naive_window_bars,
                              bar_seconds=self.bar_seconds),
            bootstrap=self.bootstrap_config())

    def signal_config(self) -> SignalConfig:
        s, b = self.signals, self.backtest
        return SignalConfig(swap_fee=s.swap_fee, max_reserve_fraction=self.max_reserve_fraction,
                            capital_usd=self.starting_capital_usd, base_position_size=b.base_position_size,
                            max_position_size=b.max_position_size, kelly_fraction=b.kelly_fraction,
                            variance_multiplier=s.variance_multiplier, allow_short=s.allow_short)

    def regime_config(self) -> RegimeConfig:
        r = self.regimes
        return RegimeConfig(vol_percentiles=tuple(r.vol_percentiles), min_history_bars=r.min_history_bars,
                            window_bars=r.window_bars, rsi_period=self.features.rsi_periods,
                            rsi_overbought=r.rsi_overbought, rsi_oversold=r.rsi_oversold,
                            position_multipliers=r.position_multipliers, momentum_multipliers=r.momentum_multipliers,
                            threshold_adjustments=r.threshold_adjustments)

    def backtest_config(self, nautilus: NautilusBacktester) -> BacktestStageConfig:
        """The backtest stage's config: sizing and yardsticks from here, the engines' spec from the
        Nautilus resource."""
        b = self.backtest
        return BacktestStageConfig(
            spec=nautilus.spec(), base_position_size=b.base_position_size, max_position_size=b.max_position_size,
            kelly_fraction=b.kelly_fraction, variance_multiplier=self.signals.variance_multiplier,
            buy_and_hold_fraction=b.buy_and_hold_fraction, permutations=b.permutations,
            permutation_seed=b.permutation_seed, reserve_sensitivity=tuple(b.reserve_sensitivity),
            timeframe=self.timeframe)

    def bootstrap_config(self) -> BootstrapConfig:
        e = self.evaluation
        return BootstrapConfig(samples=e.bootstrap_samples, block=pd.Timedelta(days=e.bootstrap_block_days),
                               seed=e.bootstrap_seed)

    @property
    def dsr_trials(self) -> dict[str, int]:
        """Configurations tried, for the deflated Sharpe: this run's q50 variants (latency and close
        fills, each reserve assumption) plus those tried before (evaluation.prior_configurations)."""
        q50_variants = sum(v.startswith("q50") for v in self.variants)
        prior = self.evaluation.prior_configurations
        return {"q50_variants_this_run": q50_variants, "prior_configurations": prior, "trials": q50_variants + prior}

    @property
    def variants(self) -> tuple[str, ...]:
        """Every backtest variant a pool's result has (the portfolio's expected set)."""
        return variants_for(tuple(self.backtest.reserve_sensitivity))


# The environment variable of strategy_config.database_uri (signal_source: database).
ENV_SIGNAL_DATABASE_URI = "Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__DATABASE_URI"


def stage_resources(settings, database: CollectorDatabase | None = None) -> dict:
    """Settings -> the ``lineage``, ``nautilus`` and ``signal_db`` resources: the one translation of
    settings into what the stages run with. ``database``: the collector database resource (the
    signal database when ``strategy_config.database_uri`` is unset)."""
    o, m, s, t, e = settings.ohlcv, settings.model, settings.signals, settings.trades, settings.evaluation
    rd = settings.nautilus_trader.strategy_config.regime_detection
    strategy = settings.nautilus_trader.strategy_config
    risk = settings.nautilus_trader.risk_management
    bt = settings.nautilus_trader.backtest
    lineage = LineageConfig(
        timeframe=settings.timeframe,
        pools_per_run=settings.batches.pools_per_run,
        ohlcv=OhlcvStage(min_bars=o.min_bars, stored_price_decimals=o.stored_price_decimals,
                         min_price_significant_digits=o.min_price_significant_digits, max_gap_bars=o.max_gap_bars,
                         revision_window_bars=settings.automation.new_bars_sensor.revision_window_bars),
        trades=TradesStage(flow_features=t.flow_features, min_volume_coverage=t.min_volume_coverage,
                           min_covered_bars=t.min_covered_bars),
        features=FeatureStage(rsi_periods=rd.rsi_periods, macd_fast=rd.macd_fast, macd_slow=rd.macd_slow,
                              collector_feature_vectors=m.collector_feature_vectors),
        model=ModelStage(horizon_bars=m.horizon_bars, initial_train_bars=m.initial_train_bars,
                         retrain_every_bars=m.retrain_every_bars, min_train_rows=m.min_train_rows, seed=m.seed,
                         num_boost_round=m.num_boost_round, calibration_window_bars=m.calibration_window_bars,
                         calibration_min_rows=m.calibration_min_rows, coverage_tolerance=m.coverage_tolerance),
        evaluation=EvaluationStage(naive_window_bars=e.naive_window_bars, naive_min_pool_labels=e.naive_min_pool_labels,
                                   bootstrap_samples=e.bootstrap_samples, bootstrap_block_days=e.bootstrap_block_days,
                                   bootstrap_seed=e.bootstrap_seed, prior_configurations=e.prior_configurations),
        signals=SignalStage(swap_fee=s.swap_fee, variance_multiplier=s.variance_multiplier, allow_short=s.allow_short),
        regimes=RegimeStage(vol_percentiles=list(rd.vol_percentiles), min_history_bars=rd.min_history_bars,
                            window_bars=rd.window_bars, rsi_overbought=rd.rsi_overbought, rsi_oversold=rd.rsi_oversold,
                            position_multipliers=dict(rd.position_multipliers),
                            momentum_multipliers=dict(rd.momentum_multipliers),
                            threshold_adjustments=dict(rd.threshold_adjustments)),
        backtest=BacktestStage(base_position_size=risk.base_position_size, max_position_size=risk.max_position_size,
                               kelly_fraction=bt.kelly_fraction, buy_and_hold_fraction=bt.buy_and_hold_fraction,
                               permutations=bt.permutations, permutation_seed=bt.permutation_seed,
                               reserve_sensitivity=list(bt.reserve_sensitivity),
                               fallback_reserve_usd=bt.fallback_reserve_usd, signal_source=strategy.signal_source,
                               use_existing_feature_vectors=risk.use_existing_feature_vectors),
        fill_latency_bars=bt.fill_latency_bars,
        starting_capital_usd=bt.starting_capital_usd,
        max_reserve_fraction=bt.max_reserve_fraction,
    )
    nautilus = NautilusBacktester(
        enabled=settings.nautilus_trader.enabled,
        starting_capital_usd=bt.starting_capital_usd,
        taker_fee=s.swap_fee,
        max_reserve_fraction=bt.max_reserve_fraction,
        min_trade_fraction=bt.min_trade_fraction,
        bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
        fill_latency_bars=bt.fill_latency_bars,
        fill_price=bt.fill_price,
        max_volume_share=bt.max_volume_share,
    )
    # Where signal_source: database reads q50_signals. A URL from the environment stays an EnvVar,
    # so the UI shows the variable's name, never the credentials in it.
    if strategy.database_uri:
        from_env = os.environ.get(ENV_SIGNAL_DATABASE_URI) == strategy.database_uri
        signal_db = CollectorDatabase(url=EnvVar(ENV_SIGNAL_DATABASE_URI) if from_env else strategy.database_uri)
    else:
        signal_db = database if database is not None else CollectorDatabase(url=settings.database_url)
    return {"lineage": lineage, "nautilus": nautilus, "signal_db": signal_db}
