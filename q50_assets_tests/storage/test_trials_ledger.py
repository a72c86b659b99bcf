"""The trial ledger ``q50_trials`` on both databases: one row per (configuration hash, window,
variant); re-running a configuration on the same window adds no trial (only last_seen_at
moves); windows that overlap are found, disjoint ones are not; bad rows are refused by key."""

import pandas as pd
import pytest

from q50_assets.lineage.portfolio.trials import count_trials
from q50_assets.storage.project_tables import ProjectTables

T = pd.Timestamp("2025-09-01 00:00", tz="UTC")
D = pd.Timedelta(days=1)


def _trials(config_hash: str, start, end, variants=("q50", "q50_close"), sharpe=1.0) -> pd.DataFrame:
    return pd.DataFrame([{"config_hash": config_hash, "timeframe": "1h", "window_start": start, "window_end": end,
                          "variant": v, "pools": 3, "round_trips": 12, "mean_round_trip_return": 0.004,
                          "mean_bar_return": 1e-5, "sharpe": sharpe, "settings": {"signals": {"swap_fee": 0.0025}}}
                         for v in variants])


def test_trials_are_recorded_once_per_configuration_window_and_variant(collector_url):
    tables = ProjectTables(url=collector_url)
    assert tables.record_trials(_trials("a" * 64, T, T + 10 * D)) == 2
    first = tables.trials_overlapping(T, T + 10 * D)
    # The same configuration re-run on the same window: no new trial, first_seen and statistic kept.
    assert tables.record_trials(_trials("a" * 64, T, T + 10 * D, sharpe=9.0)) == 0
    again = tables.trials_overlapping(T, T + 10 * D)
    assert len(again) == 2 and (again["sharpe"] == 1.0).all()
    assert (again["first_seen_at"] == first["first_seen_at"]).all()
    assert (again["last_seen_at"] >= first["last_seen_at"]).all()
    assert again["window_start"].iloc[0] == T and again["settings"].iloc[0] == {"signals": {"swap_fee": 0.0025}}

    # Another configuration on an overlapping window, and one on a disjoint window.
    assert tables.record_trials(_trials("b" * 64, T + 5 * D, T + 15 * D, variants=("q50",))) == 1
    assert tables.record_trials(_trials("c" * 64, T + 30 * D, T + 40 * D)) == 2
    overlapping = tables.trials_overlapping(T, T + 10 * D)
    assert sorted(set(overlapping["config_hash"].str[0])) == ["a", "b"]
    assert count_trials(overlapping, prior_configurations=2) == {
        "ledger_trials": 3, "ledger_configurations": 2, "prior_configurations": 2, "trials": 5}
    assert len(tables.trials_overlapping(T + 35 * D, T + 36 * D)) == 2  # only c's window


def test_bad_trial_rows_are_refused_naming_the_key(collector_url):
    tables = ProjectTables(url=collector_url)
    twice = pd.concat([_trials("d" * 64, T, T + D, variants=("q50",))] * 2, ignore_index=True)
    with pytest.raises(ValueError, match="repeat a .*dddddddddddd / q50"):
        tables.record_trials(twice)
    with pytest.raises(KeyError, match="config_hash"):
        tables.record_trials(_trials("e" * 64, T, T + D).drop(columns="config_hash"))
    no_window = _trials("f" * 64, T, T + D)
    no_window.loc[1, "window_end"] = pd.NaT
    with pytest.raises(ValueError, match=r"\[1\] have no window_end"):
        tables.record_trials(no_window)
    assert tables.trials_overlapping(T - D, T + 2 * D).empty  # nothing half-written
