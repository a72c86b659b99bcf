"""The lineage's knobs as Dagster configuration, and the ONE place settings become stage configs.

:func:`stage_resources` turns :class:`~q50_assets.settings.Settings` into the fields of
:class:`LineageConfig` (and of the Nautilus door): those fields are what the launchpad shows and
lets a user override for one run. Each stage then gets its own small, frozen config object from
one method here (``bar_rules()``, ``feature_config()``, ``training_config()``, ``signal_config()``,
``regime_config()``).
"""

from __future__ import annotations

from dagster import Config, ConfigurableResource
from pydantic import Field

from q50_assets.research.bars import TIMEFRAME_SECONDS, BarRules
from q50_assets.research.q50_model import WalkForwardConfig
from q50_assets.research.regimes import RegimeConfig
from q50_assets.research.signals import SignalConfig
from q50_assets.resources.nautilus import NautilusBacktester
from q50_assets.stages.features import FeatureConfig
from q50_assets.stages.model import ModelConfig


class OhlcvStage(Config):
    min_bars: int = Field(48, description="Complete bars a pool needs, else it is blocked.")
    stored_price_decimals: int = Field(8, description="Scale of the collector's Numeric(20,8) prices.")
    min_price_significant_digits: int = Field(2, description="Coarser prices are blocked.")
    max_gap_bars: int = Field(24, description="A longer run of missing bars fails the gaps warning.")
    revision_window_bars: int = Field(3, description="Newest bars the new-bars sensor compares (collector state).")


class FeatureStage(Config):
    rsi_periods: int = 14
    macd_fast: int = 12
    macd_slow: int = 26


class ModelStage(Config):
    horizon_bars: int = 1
    initial_train_bars: int = 240
    retrain_every_bars: int = 24
    min_train_rows: int = 200
    seed: int = 42
    num_boost_round: int = 150
    coverage_tolerance: float = 0.05


class SignalStage(Config):
    swap_fee: float = Field(0.0025, description="DEX fee per side; the threshold includes the round trip.")
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
    base_position_size: float = 0.1
    max_position_size: float = 0.5
    kelly_fraction: float = 0.5
    shuffle_seed: int = 7
    buy_and_hold_fraction: float = 1.0
    fallback_reserve_usd: float | None = Field(50_000.0, description="Liquidity assumed when the collector has none.")


class LineageConfig(ConfigurableResource):
    """Every stage's parameters (from config.yaml + environment; overridable per run in the launchpad)."""

    timeframe: str = Field("1h", description="Collector timeframe the lineage reads.")
    pools_per_run: int = Field(100, description="Pools per batch run (the assets' backfill policy, the sensor, "
                                                "the nightly schedule and q50 demo).")
    ohlcv: OhlcvStage = OhlcvStage()
    features: FeatureStage = FeatureStage()
    model: ModelStage = ModelStage()
    signals: SignalStage = SignalStage()
    regimes: RegimeStage = RegimeStage()
    backtest: BacktestStage = BacktestStage()

    @property
    def bar_seconds(self) -> int:
        return TIMEFRAME_SECONDS[self.timeframe]

    def bar_rules(self) -> BarRules:
        o = self.ohlcv
        return BarRules(timeframe=self.timeframe, min_bars=o.min_bars, stored_price_decimals=o.stored_price_decimals,
                        min_price_significant_digits=o.min_price_significant_digits, max_gap_bars=o.max_gap_bars)

    def feature_config(self) -> FeatureConfig:
        f = self.features
        return FeatureConfig(bar_seconds=self.bar_seconds, rsi_periods=f.rsi_periods, macd_fast=f.macd_fast,
                             macd_slow=f.macd_slow)

    def training_config(self) -> ModelConfig:
        m = self.model
        walk = WalkForwardConfig(horizon_bars=m.horizon_bars, bar_seconds=self.bar_seconds,
                                 initial_train_bars=m.initial_train_bars, retrain_every_bars=m.retrain_every_bars,
                                 min_train_rows=m.min_train_rows, seed=m.seed, num_boost_round=m.num_boost_round)
        return ModelConfig(walk_forward=walk, features=self.feature_config(), coverage_tolerance=m.coverage_tolerance)

    def signal_config(self) -> SignalConfig:
        s = self.signals
        return SignalConfig(round_trip_cost=2 * s.swap_fee, variance_multiplier=s.variance_multiplier,
                            allow_short=s.allow_short)

    def regime_config(self) -> RegimeConfig:
        r = self.regimes
        return RegimeConfig(vol_percentiles=tuple(r.vol_percentiles), min_history_bars=r.min_history_bars,
                            window_bars=r.window_bars, rsi_period=self.features.rsi_periods,
                            rsi_overbought=r.rsi_overbought, rsi_oversold=r.rsi_oversold,
                            position_multipliers=r.position_multipliers, momentum_multipliers=r.momentum_multipliers,
                            threshold_adjustments=r.threshold_adjustments)

    def backtest_settings(self):
        """The settings object ``run_variants`` reads (sizing, baselines, timeframe), built from
        these fields so a launchpad override reaches it too."""
        from q50_assets.settings import Settings

        b = self.backtest
        return Settings.model_validate({
            "timeframe": self.timeframe,
            "nautilus_trader": {
                "risk_management": {"base_position_size": b.base_position_size,
                                    "max_position_size": b.max_position_size},
                "backtest": {"kelly_fraction": b.kelly_fraction, "shuffle_seed": b.shuffle_seed,
                             "buy_and_hold_fraction": b.buy_and_hold_fraction,
                             "fallback_reserve_usd": b.fallback_reserve_usd},
            },
        })


def stage_resources(settings) -> dict:
    """Settings -> the ``lineage`` and ``nautilus`` resources: the one translation of settings
    into what the stages run with."""
    o, m, s = settings.ohlcv, settings.model, settings.signals
    rd = settings.nautilus_trader.strategy_config.regime_detection
    risk = settings.nautilus_trader.risk_management
    bt = settings.nautilus_trader.backtest
    lineage = LineageConfig(
        timeframe=settings.timeframe,
        pools_per_run=settings.batches.pools_per_run,
        ohlcv=OhlcvStage(min_bars=o.min_bars, stored_price_decimals=o.stored_price_decimals,
                         min_price_significant_digits=o.min_price_significant_digits, max_gap_bars=o.max_gap_bars,
                         revision_window_bars=settings.automation.new_bars_sensor.revision_window_bars),
        features=FeatureStage(rsi_periods=rd.rsi_periods, macd_fast=rd.macd_fast, macd_slow=rd.macd_slow),
        model=ModelStage(horizon_bars=m.horizon_bars, initial_train_bars=m.initial_train_bars,
                         retrain_every_bars=m.retrain_every_bars, min_train_rows=m.min_train_rows, seed=m.seed,
                         num_boost_round=m.num_boost_round, coverage_tolerance=m.coverage_tolerance),
        signals=SignalStage(swap_fee=s.swap_fee, variance_multiplier=s.variance_multiplier, allow_short=s.allow_short),
        regimes=RegimeStage(vol_percentiles=list(rd.vol_percentiles), min_history_bars=rd.min_history_bars,
                            window_bars=rd.window_bars, rsi_overbought=rd.rsi_overbought, rsi_oversold=rd.rsi_oversold,
                            position_multipliers=dict(rd.position_multipliers),
                            momentum_multipliers=dict(rd.momentum_multipliers),
                            threshold_adjustments=dict(rd.threshold_adjustments)),
        backtest=BacktestStage(base_position_size=risk.base_position_size, max_position_size=risk.max_position_size,
                               kelly_fraction=bt.kelly_fraction, shuffle_seed=bt.shuffle_seed,
                               buy_and_hold_fraction=bt.buy_and_hold_fraction,
                               fallback_reserve_usd=bt.fallback_reserve_usd),
    )
    nautilus = NautilusBacktester(
        enabled=settings.nautilus_trader.enabled,
        starting_capital_usd=bt.starting_capital_usd,
        taker_fee=s.swap_fee,
        max_reserve_fraction=bt.max_reserve_fraction,
        min_trade_fraction=bt.min_trade_fraction,
        bar_seconds=TIMEFRAME_SECONDS[settings.timeframe],
    )
    return {"lineage": lineage, "nautilus": nautilus}
