"""Tests of q50_assets.lineage.backtest.step: every variant on one out-of-sample span on the full
time grid, annualised from the timeframe; round trips; the reserve sensitivity; status unavailable."""

import math

import numpy as np
import pandas as pd
import pytest

import q50_assets.lineage.backtest.step as stage
from q50_assets.lineage.backtest.engine import BacktestSpec
from q50_assets.lineage.backtest.step import (BacktestStageConfig, history_rows, results_rows, run_pool_stage,
                                                variants_for)
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets_tests.lineage.q50_fixtures import neutral_regimes

T0 = pd.Timestamp("2025-03-01", tz="UTC")
H4 = pd.Timedelta(hours=4)


def _pool(n=240, seed=2, bar=H4):
    rng = np.random.default_rng(seed)
    closes = np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    idx = pd.DatetimeIndex([T0 + i * bar for i in range(n)], name="open_time")
    opens = np.r_[closes[0], closes[:-1]]
    bars = pd.DataFrame({"open": opens, "high": np.maximum(opens, closes) * 1.01,
                         "low": np.minimum(opens, closes) * 0.99, "close": closes, "volume": 80_000.0}, index=idx)
    # q50 that partly knows the next bar's return, from bar 40 on (the out-of-sample span).
    future = np.r_[closes[2:] / closes[1:-1] - 1.0, 0.0, 0.0]
    q50 = 0.7 * future + 0.3 * rng.normal(0, 0.01, n)
    signal_index = idx[40:]
    pred = pd.DataFrame({"q10": q50[40:] - 0.01, "q50": q50[40:], "q90": q50[40:] + 0.01,
                         "predicted_at": signal_index + bar}, index=signal_index)
    from q50_assets.lineage.signals.rules import SignalConfig, compute_signals

    signals = compute_signals(pred, pd.Series(1e-5, index=signal_index), SignalConfig(), reserves=None)
    regimes = neutral_regimes(idx)
    regimes["known_at"] = idx + bar
    keep = np.ones(n, dtype=bool)
    keep[[i for i in (60, 61, 100, 150) if i < n]] = False  # bars without swaps
    return bars[keep], signals, regimes


def _config(**kw):
    return BacktestStageConfig(bar_seconds=int(H4.total_seconds()), fill_latency_bars=1, max_volume_share=0.1,
                               permutations=1000, **kw)


def test_every_variant_on_the_full_grid_annualised_from_the_timeframe():
    bars, signals, regimes = _pool()
    reserves = ReserveSeries(None, fallback_usd=3_000_000.0)
    result = run_pool_stage("solana_stagePool", bars, signals, regimes, reserves, _config(), "run-1")
    assert result.status == "ok"
    r, pos, m = result.bar_returns, result.positions, result.metrics
    assert list(r.columns) == list(variants_for((0.1, 10.0))) == list(m.index)
    # The grid: every 4-hour close from the first OOS close to the last bar's, missing bars included, flat.
    assert result.oos_start == signals.index[0] + H4 and r.index[0] == result.oos_start
    assert r.index[-1] == bars.index[-1] + H4 and (np.diff(r.index.asi8) == H4.value).all()
    missing = r.index.difference(bars.index + H4)
    assert len(missing) == 4 and (r.loc[missing] == 0).all().all()
    assert (r["cash"] == 0).all() and m.loc["cash", "total_return"] == 0
    # Annualised from the timeframe: 6 x 365 four-hour bars a year.
    q = r["q50"]
    assert m.loc["q50", "bars_per_year"] == 6 * 365
    assert m.loc["q50", "sharpe"] == pytest.approx(q.mean() / q.std(ddof=1) * math.sqrt(6 * 365))
    assert m.loc["q50", "total_return"] == pytest.approx((1 + q).prod() - 1)
    eq = result.outcomes["q50"].equity["equity"]
    assert m.loc["q50", "total_return"] == pytest.approx(eq.iloc[-1] / 10_000 - 1)
    # Exposure-matched buy & hold holds q50's mean position; full buy & hold nearly everything.
    assert m.loc["q50", "trades"] > 4 and 0 < m.loc["q50", "mean_position"] < 0.5
    assert m.loc["buy_and_hold_matched", "mean_position"] == pytest.approx(m.loc["q50", "mean_position"], abs=0.02)
    assert m.loc["buy_and_hold", "mean_position"] > 0.8
    assert pos.index.equals(r.index) and (pos["cash"] == 0).all()
    # The assumed reserve is the whole span's: its sensitivity variants really re-ran.
    assert m["reserve_fallback_share"].eq(1.0).all()
    assert result.outcomes["q50_reserve_x0.1"] is not result.outcomes["q50"]
    # A thinner pool costs more per USD traded (and the strategy sizes down for it).
    per_usd = {v: m.loc[v, "impact_paid"] / result.outcomes[v].trades["notional_usd"].sum()
               for v in ("q50_reserve_x0.1", "q50", "q50_reserve_x10")}
    assert per_usd["q50_reserve_x0.1"] > per_usd["q50"] > per_usd["q50_reserve_x10"]
    # Round trips, each with what the decision expected.
    trips = result.round_trips
    assert len(trips) >= 2 and (trips["entry_filled_at"] == trips["entry_decided_at"] + H4).all()
    closed = trips[~trips["open"]]
    assert (closed["exit_filled_at"] > closed["entry_filled_at"]).all() and (closed["bars_held"] >= 1).all()
    assert (trips["cost_usd"] > 0).all() and trips["expected_net_edge"].notna().all()
    assert (trips["reserve_source"] == "fallback").all() and (trips["reserve_usd"] == 3_000_000.0).all()
    assert m.loc["q50", "mean_holding_bars"] == pytest.approx(trips["bars_held"].mean())
    assert m.loc["q50", "round_trips"] == len(closed)
    # The permutation null and the stored rows.
    assert result.permutation["draws"] == 1000 and 0 < result.permutation["p_value"] <= 1
    assert result.permutation["replayed_statistic"] == pytest.approx(result.permutation["statistic"], abs=1e-12)
    rows = results_rows(result)
    assert len(rows) == 11 and len(rows.loc[rows["variant"] == "q50", "permutation_null"].iloc[0]) == 1000
    assert len(rows.loc[rows["variant"] == "q50_horizon", "permutation_null"].iloc[0]) == 1000
    assert rows.loc[~rows["variant"].isin(["q50", "q50_horizon"]), "permutation_null"].isna().all()
    assert rows.loc[~rows["variant"].isin(["q50", "q50_horizon"]), "round_trip_records"].isna().all()
    assert len(rows.loc[rows["variant"] == "q50", "round_trip_records"].iloc[0]) == len(trips)
    # Trading history rows: one per fill, decided one bar before it.
    history = history_rows(result)
    assert len(history) == len(result.outcomes["q50"].fills)
    assert (history["filled_at"] - history["decided_at"] == H4).all()


def test_each_rule_beside_its_own_decisions_at_zero_cost_and_buy_and_hold_at_its_exposure():
    bars, signals, regimes = _pool()
    result = run_pool_stage("solana_stagePool", bars, signals, regimes, ReserveSeries(None, fallback_usd=3_000_000.0),
                            _config(), "run-1")
    m, out = result.metrics, result.outcomes
    for rule, gross, matched in (("q50", "q50_gross", "buy_and_hold_matched"),
                                 ("q50_horizon", "q50_horizon_gross", "bh_matched_horizon")):
        assert m.loc[rule, "trades"] > 0 and m.loc[rule, "fees_paid"] > 0 and m.loc[rule, "impact_paid"] > 0
        # The gross run replays the costed run's own schedule of targets, charged nothing.
        pd.testing.assert_series_equal(out[gross].equity["target"], out[rule].equity["target"])
        assert m.loc[gross, "fees_paid"] == 0 and m.loc[gross, "impact_paid"] == 0 and m.loc[gross, "trades"] > 0
        assert m.loc[rule, "cost_drag"] == pytest.approx(m.loc[gross, "total_return"] - m.loc[rule, "total_return"])
        assert m.loc[rule, "cost_drag"] > 0
        assert m.loc[matched, "mean_position"] == pytest.approx(m.loc[rule, "mean_position"], abs=0.02)
        assert 0 < result.rule_permutations[rule]["p_value"] <= 1 and result.rule_permutations[rule]["draws"] == 1000
        assert m.loc[rule, "permutation_p_value"] == result.rule_permutations[rule]["p_value"]
    assert m["cost_drag"].drop(["q50", "q50_horizon"]).isna().all()
    # q50_horizon is its schedule executed by the engine: each entry or exit decided is an order.
    schedule = result.horizon_schedule
    decided = schedule.index[schedule["target"].notna()] + H4
    assert set(out["q50_horizon"].orders["decided_at"]) <= set(decided)
    assert (schedule.loc[schedule["action"] == "exit", "target"] == 0).all()
    assert len(result.rule_round_trips["q50_horizon"]) >= 1


def test_at_zero_fee_and_no_impact_the_gross_runs_equal_the_costed_ones_to_the_cent():
    bars, signals, regimes = _pool(seed=3)
    result = run_pool_stage("solana_free", bars, signals, regimes, None, _config(swap_fee=0.0), "run-free")
    m, out = result.metrics, result.outcomes
    for rule, gross in (("q50", "q50_gross"), ("q50_horizon", "q50_horizon_gross")):
        assert out[gross] is not out[rule] and m.loc[rule, "trades"] > 2
        np.testing.assert_allclose(out[gross].equity["equity"].to_numpy(), out[rule].equity["equity"].to_numpy(),
                                   rtol=0, atol=0.005)
        assert m.loc[rule, "cost_drag"] == pytest.approx(0.0, abs=1e-6)
        assert m.loc[rule, "trades"] == m.loc[gross, "trades"]


def test_a_rule_that_never_orders_reuses_one_flat_run():
    bars, signals, regimes = _pool(seed=4)
    quiet = signals.assign(q10=-0.02, q50=-0.001, q90=0.001)  # E[r] < 0 everywhere: neither rule enters
    result = run_pool_stage("solana_quiet", bars, quiet, regimes, None, _config(), "run-quiet")
    out, m = result.outcomes, result.metrics
    flat = out["q50"]
    for name in ("q50_gross", "q50_horizon", "q50_horizon_gross", "buy_and_hold_matched", "bh_matched_horizon"):
        assert out[name] is flat
    assert (m.loc[["q50", "q50_horizon"], "total_return"] == 0).all()
    assert result.rule_permutations["q50_horizon"]["p_value"] == 1.0


def test_observed_reserves_make_the_sensitivity_variants_identical():
    bars, signals, regimes = _pool(seed=5)
    obs = pd.DataFrame({"observed_at": [bars.index[0]], "reserve_usd": [3_000_000.0], "source": ["collector_snapshot"]})
    result = run_pool_stage("solana_observed", bars, signals, regimes, ReserveSeries(obs, fallback_usd=50_000.0),
                            _config(), "run-2")
    m = result.metrics
    assert m["reserve_fallback_share"].eq(0.0).all() and result.reserve["sources"] == {
        "collector_snapshot": len(result.bar_returns)}
    pd.testing.assert_series_equal(result.bar_returns["q50_reserve_x10"], result.bar_returns["q50"], check_names=False)


def test_unavailable_when_nautilus_cannot_be_imported(monkeypatch):
    bars, signals, regimes = _pool(n=80)
    monkeypatch.setattr(stage, "nautilus_status", lambda: (False, "nautilus_trader cannot be imported: test"))
    result = run_pool_stage("solana_noEngine", bars, signals, regimes, None, _config(), "run-3")
    assert result.status == "unavailable" and "cannot be imported" in result.reason
    assert result.bar_returns is None and result.outcomes == {}


def test_unavailable_when_the_engine_cannot_start(monkeypatch):
    import q50_assets.lineage.backtest.engine as backtest

    class Broken:
        def __init__(self, *args, **kwargs):
            raise OSError("shared library missing")

    bars, signals, regimes = _pool(n=80)
    monkeypatch.setattr(backtest, "BacktestEngine", Broken)
    result = run_pool_stage("solana_noStart", bars, signals, regimes, None, _config(), "run-4")
    assert result.status == "unavailable"
    assert "BacktestEngine could not start" in result.reason and "shared library missing" in result.reason


def test_a_buy_worth_under_a_cent_is_a_position_held_not_a_closed_trip():
    """Buy & hold at a tiny matched exposure buys less than a cent of tokens: that is a position
    held to the end (an open trip), never a trip closed without a sale (which had no exit time
    and broke the stage on the scale benchmark's pools)."""
    from types import SimpleNamespace

    from q50_assets.lineage.backtest.step import round_trips

    t0 = pd.Timestamp("2025-09-01 01:00", tz="UTC")
    bar = pd.Timedelta(hours=1)
    trades = pd.DataFrame({"side": ["BUY"], "qty": [1.0], "ref_price": [0.004], "notional_usd": [0.004],
                           "commission_usd": [0.0], "impact_usd": [0.0], "client_order_id": ["O-1"]},
                          index=pd.DatetimeIndex([t0]))
    equity = pd.DataFrame({"close": [0.004, 0.005, 0.006]}, index=pd.date_range(t0, periods=3, freq="h"))
    outcome = SimpleNamespace(trades=trades, orders=pd.DataFrame({"client_order_id": ["O-1"], "decided_at": [t0 - bar]}),
                              decisions=None, equity=equity, size_precision=0)
    trips = round_trips(outcome, None, bar)
    assert len(trips) == 1 and bool(trips["open"].iloc[0]) and pd.isna(trips["exit_filled_at"].iloc[0])
    assert trips["bars_held"].iloc[0] == 2  # to the last bar close
    assert trips["net_return"].iloc[0] == pytest.approx(0.5)  # marked at the last close


def test_the_horizon_rule_settings_reach_the_stage():
    from q50_assets.settings import load_settings

    settings = load_settings(environ={"Q50__RULES__HORIZON__HOLDING_BARS": "12", "Q50__RULES__HORIZON__RISK_PREMIUM": "0.001"})
    config = BacktestStageConfig.of(settings)
    assert config.holding_bars == 12 and config.risk_premium == 0.001
    assert BacktestStageConfig.of(load_settings(environ={})).holding_bars == 8  # config.yaml's default
    assert "q50_horizon" in config.variants and "bh_matched_horizon" in config.variants
