"""Every setting is declared once: its type, default, bounds and description live in one section
class of the settings model, and each stage's config is built from those sections (by inheriting
them), never by declaring the same key again."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

from pydantic import BaseModel

import q50_assets
from q50_assets.settings import Section, Settings

# Objects handed to engines, not stage configs: NautilusTrader's StrategyConfig structs must
# declare their own fields, and the engine, cost and sizing parameter objects are built from a
# stage config (BacktestStageConfig.spec(), SignalConfig.sizing_params(), the backtest stage's
# Q50Inputs), never from the settings directly; their defaults serve the research tests.
ENGINE_PARAMETERS = {"BacktestSpec", "SizingParams", "CostModel", "Q50Inputs", "ExecutionConfig",
                     "TargetStrategyConfig", "Q50StrategyConfig", "ReplayParams", "ReplayStrategyConfig"}
# Keys every automation section has, each its own (a sensor's, the schedule's, the conditions').
PER_SENSOR_KEYS = {"running_by_default", "interval_seconds"}


def _sections(model: type[BaseModel], seen: set) -> None:
    for cls in inspect.getmro(model):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls not in (BaseModel, Section):
            seen.add(cls)
    for field in model.model_fields.values():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
            _sections(annotation, seen)


def _own_fields(cls: type, with_default_only: bool = False) -> set[str]:
    """Fields a class declares itself (not inherited); ``with_default_only``: only those that
    carry a default of their own (a required field that receives the setting's value repeats no
    default)."""
    own = cls.__dict__.get("__annotations__", {})
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {n for n, f in cls.model_fields.items() if n in own and not (with_default_only and f.is_required())}
    if dataclasses.is_dataclass(cls):
        missing = dataclasses.MISSING
        return {f.name for f in dataclasses.fields(cls) if f.name in own
                and not (with_default_only and f.default is missing and f.default_factory is missing)}
    return set()


def _project_classes() -> list[type]:
    out = []
    for info in pkgutil.walk_packages(q50_assets.__path__, "q50_assets."):
        if ".db.migrations" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name:
                out.append(cls)
    return out


def test_no_setting_is_declared_twice():
    sections: set = set()
    _sections(Settings, sections)
    declared: dict[str, list[str]] = {}
    for cls in sections:
        for name in _own_fields(cls):
            declared.setdefault(name, []).append(cls.__qualname__)
    twice_in_settings = {name: owners for name, owners in declared.items()
                         if len(owners) > 1 and name not in PER_SENSOR_KEYS}
    assert not twice_in_settings, f"settings fields declared in several sections: {twice_in_settings}"

    sections_by_name = {n for cls in sections for n, f in cls.model_fields.items()
                        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    setting_names = set(declared) - {"url"} - PER_SENSOR_KEYS - sections_by_name
    again = {}
    for cls in _project_classes():
        if cls in sections or cls.__name__ in ENGINE_PARAMETERS:
            continue
        repeated = _own_fields(cls, with_default_only=True) & setting_names
        if repeated:
            again[f"{cls.__module__}.{cls.__qualname__}"] = sorted(repeated)
    assert not again, ("settings whose default is declared again outside the settings model (inherit the section, or "
                       f"take the value as a required field): {again}")


def test_stage_configs_are_built_from_the_settings_sections():
    """Each stage's config is its sections plus context (bar length, label offset), so a value in
    config.yaml reaches the stage unchanged."""
    from q50_assets.lineage.backtest.step import BacktestStageConfig
    from q50_assets.lineage.model.step import ModelConfig
    from q50_assets.lineage.ohlcv.rules import BarRules
    from q50_assets.lineage.regimes.rules import RegimeConfig
    from q50_assets.lineage.signals.rules import SignalConfig
    from q50_assets.lineage.trades.rules import TradeRules
    from q50_assets.settings import load_settings

    settings = load_settings(environ={"Q50_TIMEFRAME": "15m", "Q50__OHLCV__MIN_BARS": "72",
                                      "Q50__TRADES__MIN_COVERED_BARS": "12",
                                      "Q50__MODEL__CALIBRATION_WINDOW_BARS": "96",
                                      "Q50__EVALUATION__BOOTSTRAP_SAMPLES": "300",
                                      "Q50__SIGNALS__SWAP_FEE": "0.003",
                                      "Q50__NAUTILUS_TRADER__BACKTEST__FILL_LATENCY_BARS": "2",
                                      "Q50__NAUTILUS_TRADER__RISK_MANAGEMENT__MAX_POSITION_SIZE": "0.4",
                                      "Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__REGIME_DETECTION__RSI_PERIODS": "7"})
    assert BarRules.of(settings).min_bars == 72 and BarRules.of(settings).timeframe == "15m"
    assert TradeRules.of(settings).min_covered_bars == 12 and TradeRules.of(settings).bar_seconds == 900
    model = ModelConfig.of(settings)
    assert model.calibration.calibration_window_bars == 96 and model.bootstrap.bootstrap_samples == 300
    assert model.walk_forward.label_offset_bars == 2 and model.features.rsi_periods == 7
    assert SignalConfig.of(settings).swap_fee == 0.003 and SignalConfig.of(settings).max_position_size == 0.4
    assert RegimeConfig.of(settings).rsi_column == "rsi_7"
    backtest = BacktestStageConfig.of(settings)
    assert backtest.spec().taker_fee == 0.003 and backtest.spec().fill_latency_bars == 2 and backtest.timeframe == "15m"
