"""The Definitions the UI loads (workspace.yaml -> q50_assets.definitions) form a valid repository."""

import re
import typing
from pathlib import Path

import yaml
from dagster import AssetKey, BackfillPolicy, Definitions
from pydantic import BaseModel

import q50_assets

from q50_assets.lineage.common.partitions import pool_partitions
from q50_assets.definitions import build_definitions, build_resources, defs
from q50_assets.settings import Settings, SettingsError, load_settings
from q50_assets_tests.conftest import settings_for

LINEAGE = ["ohlcv_bars", "pool_trades", "qlib_features", "q50_model", "q50_signals", "regime_labels", "backtest_results",
           "q50_trading_history", "backtest_portfolio"]
PER_POOL = ["ohlcv_bars", "pool_trades", "qlib_features", "q50_signals", "regime_labels", "backtest_results", "q50_trading_history"]


def test_definitions_load_as_the_ui_loads_them():
    # validate_loadable builds the repository: it catches e.g. a job named like an asset's op,
    # which execute_in_process never notices but `dagster dev` refuses to load.
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert set(LINEAGE) <= keys
    assert {"refresh_pools", "train_q50_model", "portfolio_summary"} <= {j.name for j in repo.get_all_jobs()}
    checks = {(c.asset_key, c.name) for c in repo.asset_graph.asset_check_keys}
    assert (AssetKey("backtest_results"), "bars_match_pipeline") in checks
    assert (AssetKey("q50_trading_history"), "reconciles_with_fills") in checks
    assert (AssetKey("pool_trades"), "clock_shift") in checks
    assert {s.name for s in repo.sensor_defs} == {"new_collector_bars", "q50_automation"}
    assert {s.name for s in repo.schedule_defs} == {"nightly_q50"}


def test_per_pool_assets_run_in_batches_and_record_checks_per_pool(tmp_path):
    settings = settings_for(f"sqlite:///{tmp_path / 'c.sqlite'}", tmp_path, Q50__BATCHES__POOLS_PER_RUN="7")
    graph = build_definitions(settings).resolve_asset_graph()
    for name in PER_POOL:
        node = graph.get(AssetKey(name))
        assert node.partitions_def == pool_partitions
        assert node.backfill_policy == BackfillPolicy.multi_run(7), name
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        if key.asset_key.to_user_string() in PER_POOL:
            # One result per pool in the UI; a failure gates the pool in the data, not the run.
            assert spec.partitions_def == pool_partitions and not spec.blocking, key
    # Automation replaces the hand-written run-status and polling sensors.
    conditions = {k.to_user_string(): graph.get(k).automation_condition for k in graph.get_all_asset_keys()}
    assert {k for k, c in conditions.items() if c is not None} == {
        "q50_model", "q50_signals", "backtest_results", "q50_trading_history", "signal_evidence", "basket_backtest", "backtest_portfolio"}


# Keys that do not reach the Definitions' resources, sensors or schedule, and where they are read instead.
READ_OUTSIDE_THE_DEFINITIONS = {
    "batches.runs_at_once": "q50 demo: batch runs executed at once (cli.py)",
}
# Keys whose only accepted value is the default (another is refused with a one-line error).
ONE_VALUE_ONLY = {"signals.allow_short", "nautilus_trader.strategy_config.regime_detection.use_existing_indicators"}


def _setting_leaves(model, prefix=()):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _setting_leaves(field.annotation, (*prefix, name))
        else:
            yield (*prefix, name)


def _alternatives(value) -> list:
    """Other values of a setting's type, likeliest to be valid first."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [v for v in (value * 1.1, value * 0.9, value + 0.01) if v != value]
    if isinstance(value, tuple):
        return [(*value[:-1], value[-1] * 1.5), tuple(v * 0.9 for v in value)]
    if isinstance(value, dict):
        first = next(iter(value))
        return [{**value, first: value[first] + 0.1}]
    if value is None:
        return [100, 0.5]
    if isinstance(value, Path):
        return [str(value.parent / "elsewhere")]
    return []


def _fingerprint(settings) -> dict:
    """What the Definitions built from ``settings`` run with: every resource's configuration, the
    sensors' and schedule's settings, the assets' backfill policies and the executor."""
    defs = build_definitions(settings)
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    return {
        # The settings resource carries every key; what each stage reads of it is checked apart.
        "resources": {k: v.model_dump() for k, v in build_resources(settings).items() if k != "settings"},
        "sensors": sorted((s.name, s.minimum_interval_seconds, str(s.default_status)) for s in repo.sensor_defs),
        "schedules": sorted((s.name, s.cron_schedule, str(s.default_status)) for s in repo.schedule_defs),
        "backfill": {k.to_user_string(): str(graph.get(k).backfill_policy) for k in graph.get_all_asset_keys()},
        "executor": defs.executor.name,
    }


def test_every_setting_reaches_the_definitions(tmp_path):
    """No key is parsed and then ignored: changing any one setting changes what the Definitions
    run with (a resource's configuration - the launchpad's fields -, a sensor, the schedule, a
    backfill policy or the executor), except the keys read elsewhere, said where."""
    base_env = {"Q50_DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite'}", "Q50_DATA_DIR": str(tmp_path / "data")}
    base = load_settings(environ=base_env)
    unchanged, refused = [], []
    for path in _setting_leaves(Settings):
        key = ".".join(path)
        env, baseline = dict(base_env), base
        if key == "nautilus_trader.strategy_config.database_uri":  # only read with signal_source: database
            env["Q50__NAUTILUS_TRADER__STRATEGY_CONFIG__SIGNAL_SOURCE"] = "database"
            baseline = load_settings(environ=env)
        value = baseline
        for part in path:
            value = getattr(value, part)
        if key == "timeframe":
            candidates = ["4h"]
        elif key in ("database.url", "nautilus_trader.strategy_config.database_uri"):
            candidates = [f"sqlite:///{tmp_path / 'other.sqlite'}"]
        elif isinstance(value, str):
            field = Settings
            for part in path[:-1]:
                field = field.model_fields[part].annotation
            # A Literal's values, also inside a union (e.g. Literal["median", "none"] | float).
            args = typing.get_args(field.model_fields[path[-1]].annotation)
            literals = [a for arg in args for a in (typing.get_args(arg) if typing.get_origin(arg) is typing.Literal
                                                    else (arg,))]
            candidates = [v for v in literals if isinstance(v, str) and v != value]
        else:
            candidates = _alternatives(value)
        changed = None
        for candidate in candidates:
            text = yaml.safe_dump(list(candidate) if isinstance(candidate, tuple) else candidate,
                                  default_flow_style=True).strip().removesuffix("...").strip()
            try:
                changed = load_settings(environ={**env, "Q50__" + "__".join(p.upper() for p in path): text})
            except SettingsError:
                continue
            break
        if changed is None:
            refused.append(key)
            continue
        if _fingerprint(changed) == _fingerprint(baseline):
            unchanged.append(key)
    assert sorted(refused) == sorted(ONE_VALUE_ONLY)
    # The rest reach the stages through the settings resource: each is read by name somewhere in
    # the package (a stage config inherits its section, so the read is the config's attribute).
    sources = "\n".join(f.read_text() for f in Path(q50_assets.__file__).parent.rglob("*.py")
                        if f.name != "settings.py")
    ignored = [key for key in unchanged if not re.search(rf"\.{key.rsplit('.', 1)[-1]}\b", sources)]
    assert ignored == [], f"settings parsed and never read: {ignored}"
    assert set(READ_OUTSIDE_THE_DEFINITIONS) <= set(unchanged)
