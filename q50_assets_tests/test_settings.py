from pathlib import Path

import pytest

from q50_assets.settings import DEFAULT_CONFIG_FILE, SettingsError, load_settings


def test_repo_config_loads_with_the_integration_plan_values():
    s = load_settings(environ={})
    nt = s.nautilus_trader
    assert s.timeframe == "1h"
    assert nt.enabled is True
    assert nt.strategy_config.signal_source == "qlib"
    rd = nt.strategy_config.regime_detection
    assert (rd.use_existing_indicators, rd.rsi_periods, rd.macd_fast, rd.macd_slow) == (True, 14, 12, 26)
    rm = nt.risk_management
    assert (rm.max_position_size, rm.base_position_size, rm.use_existing_feature_vectors) == (0.5, 0.1, True)
    # Relative data_dir is taken from the config file's folder; no URL -> embedded SQLite there.
    assert s.data_dir == DEFAULT_CONFIG_FILE.parent / ".q50_data"
    assert s.database_url == f"sqlite:///{s.data_dir / 'collector.sqlite'}"
    assert s.signal_database_url == s.database_url
    # The trades stage and the collector-vector switch (off: the collector's vectors are opt-in).
    assert (s.trades.flow_features, s.trades.min_volume_coverage, s.trades.min_covered_bars) == (True, 0.5, 24)
    assert s.model.collector_feature_vectors is False


def test_environment_overrides_by_name_and_by_path(tmp_path):
    s = load_settings(
        environ={
            "Q50_DATABASE_URL": "postgresql://reader@db:5432/collector",
            "Q50_DATA_DIR": str(tmp_path),
            "Q50_TIMEFRAME": "5m",
            "Q50__NAUTILUS_TRADER__ENABLED": "false",
            "Q50__NAUTILUS_TRADER__RISK_MANAGEMENT__MAX_POSITION_SIZE": "0.3",
            "Q50__OHLCV__MIN_BARS": "72",
        }
    )
    assert s.database_url == "postgresql://reader@db:5432/collector"
    assert s.data_dir == tmp_path
    assert s.timeframe == "5m"
    assert s.nautilus_trader.enabled is False
    assert s.nautilus_trader.risk_management.max_position_size == 0.3
    assert s.ohlcv.min_bars == 72


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"Q50_TIMEFRAME": "2h"}, "timeframe: Input should be '1m', '5m', '15m', '1h', '4h', '12h' or '1d' (got '2h')"),
        (
            {"Q50__NAUTILUS_TRADER__RISK_MANAGEMENT__MAX_POSITION_SIZE": "3"},
            "nautilus_trader.risk_management.max_position_size: Input should be less than or equal to 1 (got 3)",
        ),
        (
            {"Q50__OHLCV__MIN_BARS": "many"},
            "ohlcv.min_bars: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        ),
        (
            {"Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__REGIME_DETECTION__MACD_FAST": "30"},
            "nautilus_trader.strategy_config.regime_detection: macd_fast (30) must be smaller than macd_slow (26)",
        ),
        (
            {"Q50__NAUTILUS_TRADER__RISK_MANAGEMENT__BASE_POSITION_SIZE": "0.9"},
            "nautilus_trader.risk_management: base_position_size (0.9) exceeds max_position_size (0.5)",
        ),
        ({"Q50__OHLCV__MIN_BAR": "5"}, "ohlcv.min_bar: unknown key"),
        (
            {"Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__DATABASE_URI": "sqlite:////tmp/signals.sqlite"},
            "nautilus_trader.strategy_config: database_uri is only read with signal_source: database (got "
            "signal_source: qlib); unset it or set signal_source to database",
        ),
        (
            {"Q50__NAUTILUS_TRADER__BACKTEST__PERMUTATIONS": "100"},
            "nautilus_trader.backtest.permutations: Input should be greater than or equal to 1000 (got 100)",
        ),
        (
            {"Q50__NAUTILUS_TRADER__BACKTEST__FILL_LATENCY_BARS": "0"},
            "nautilus_trader.backtest.fill_latency_bars: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"Q50__NAUTILUS_TRADER__BACKTEST__RESERVE_SENSITIVITY": "[1.0, 2.0]"},
            "nautilus_trader.backtest: reserve_sensitivity factors must be > 0, not 1 and < 1000, got [1.0]",
        ),
        (
            {"Q50__SIGNALS__ALLOW_SHORT": "true"},
            "signals: allow_short: true is not supported: backtests are spot-only (no borrowing is modelled), "
            "so short signals would never be traded",
        ),
        (
            {"Q50__TRADES__MIN_VOLUME_COVERAGE": "0"},
            "trades.min_volume_coverage: Input should be greater than 0 (got 0)",
        ),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_key(env, expected):
    with pytest.raises(SettingsError) as err:
        load_settings(environ=env)
    message = str(err.value)
    assert "\n" not in message
    assert message == f"{DEFAULT_CONFIG_FILE}: {expected}"


def test_url_in_the_config_file_is_refused(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  url: postgresql://u:secret@host/db\n")
    with pytest.raises(SettingsError, match=r"database\.url: must be null in the file"):
        load_settings(config, environ={})


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("timeframe: [1h\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_no_committed_file_holds_a_password():
    root = DEFAULT_CONFIG_FILE.parent
    for path in [root / "config.yaml", root / "workspace.yaml", root / "pyproject.toml", root / "README.md"]:
        text = Path(path).read_text()
        assert "12345678!" not in text
        # A URL with user:password@ would be a committed credential.
        import re

        assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", text), path


def test_nested_and_mapping_overrides_and_an_unknown_section(tmp_path):
    s = load_settings(environ={
        "Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__REGIME_DETECTION__POSITION_MULTIPLIERS":
            "{low: 1.0, medium: 1.0, high: 0.5, extreme: 0.0, unknown: 0.0}",
        "Q50__BATCHES__POOLS_PER_RUN": "25",
        "Q50__EXECUTION__EXECUTOR": "celery",
    })
    assert s.nautilus_trader.strategy_config.regime_detection.position_multipliers["high"] == 0.5
    assert (s.batches.pools_per_run, s.execution.executor) == (25, "celery")
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"Q50__BATCHS__POOLS_PER_RUN": "25"})
    assert str(err.value) == f"{DEFAULT_CONFIG_FILE}: batchs.pools_per_run: unknown key"


def test_settings_are_loaded_by_pydantic_settings_sources():
    from pydantic_settings import BaseSettings

    from q50_assets.settings import Settings

    assert issubclass(Settings, BaseSettings)
    assert Settings.model_config["env_nested_delimiter"] == "__"


def test_settings_built_from_values_read_no_file_and_no_environment(monkeypatch):
    from q50_assets.settings import Settings

    monkeypatch.setenv("Q50__OHLCV__MIN_BARS", "99")
    s = Settings.model_validate({"ohlcv": {"min_bars": 50}})
    assert s.ohlcv.min_bars == 50 and s.timeframe == "1h"
