"""Declarative automation: what re-runs by itself once something upstream changed. Each asset
declares its condition in its decorator (``automation_condition=``); the builders are here.

* ``q50_model`` retrains once the nightly refresh of the pools has written new features (and no
  pool's refresh is still queued or running);
* ``q50_signals`` re-runs for every pool when the model is updated (feature updates of a pool
  are the sensor's or the nightly's runs, which include or precede what follows);
* ``backtest_results`` / ``q50_trading_history`` follow an update of the pool's signals;
* ``signal_evidence`` is rewritten once signals changed and none is in progress;
* ``backtest_portfolio`` is rewritten once backtests changed and none is in progress.

Evaluated by the ``q50_automation`` sensor (an AutomationConditionSensorDefinition): requests for
many pools become one backfill, which runs them in batches by the assets' backfill policy.

The builders take the asset names they react to from their caller (the asset module that knows
them), so this module imports no stage.
"""

from __future__ import annotations

from dagster import AssetSelection, AutomationCondition

TRIGGER_TAG = "q50/trigger"  # why a run was requested: new_pool, new_bars, revised, nightly (comma-joined)
NIGHTLY = "nightly"


def after_nightly_refresh() -> AutomationCondition:
    """True once a pool's features were updated by a nightly run since the model last ran, and
    no run of the model's inputs is still queued or in progress."""
    nightly_update = AutomationCondition.newly_updated() & AutomationCondition.executed_with_tags(
        tag_values={TRIGGER_TAG: NIGHTLY})
    return (
        AutomationCondition.any_deps_match(nightly_update).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("after the nightly refresh of the pools")


def eager_after(*assets: str) -> AutomationCondition:
    """``eager()``, reacting only to updates of ``assets`` (not of every parent): a refresh that
    updated the pool's bars and features itself already ran or will run what follows."""
    return AutomationCondition.eager().replace(
        "any_deps_updated", AutomationCondition.any_deps_updated().allow(AssetSelection.assets(*assets)))


def once_settled_after(asset: str) -> AutomationCondition:
    """Once any partition of ``asset`` changed and none of the parents is in progress (a pool that
    never had one does not hold the asset back, unlike ``eager()``). The portfolio after the
    backtests: a new model alone does not rewrite it (its signals and backtests follow, and then
    the portfolio)."""
    return (
        AutomationCondition.any_deps_updated().allow(AssetSelection.assets(asset)).since_last_handled()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label(f"after updates of {asset}, none in progress")
