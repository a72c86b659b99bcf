"""Skill against the naive forecaster, rank IC, reliability and the hit rate net of cost: brute-force
references and known answers on synthetic panels, then the real sample's walk-forward model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.evaluation import (
    NAIVE_COLUMNS,
    NaiveConfig,
    model_evidence,
    naive_quantiles,
    net_hit_rate,
    pinball_skill,
    pit_piecewise,
    rank_ic_by_fold,
    reliability_table,
    summarize_pool_skill,
    summarize_rank_ic,
)
from q50_assets.lineage.model.walk_forward import calibrate_walk_forward
from q50_assets.lineage.common.costs import ReserveSeries
from q50_assets.lineage.signals.rules import SignalConfig, compute_signals
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets_tests.lineage.real_sample import real_panel, real_walk_forward

T0 = pd.Timestamp("2025-07-01", tz="UTC")
H = pd.Timedelta(hours=1)
FAST = BootstrapConfig(bootstrap_samples=300, bootstrap_seed=3)
Z90 = 1.2815515655446004


def _labels(pools_bars: dict[str, int], seed=0, scale=None):
    rng = np.random.default_rng(seed)
    parts = []
    for i, (pool, n) in enumerate(pools_bars.items()):
        opens = pd.date_range(T0 + 10 * i * H, periods=n, freq="h")
        idx = pd.MultiIndex.from_product([[pool], opens], names=["pool_id", "open_time"])
        sd = 0.01 * (i + 1) if scale is None else scale
        parts.append(pd.DataFrame({"label": rng.normal(0, sd, n), "label_known_at": opens + 2 * H}, index=idx))
    labels = pd.concat(parts)
    labels.loc[labels.sample(frac=0.05, random_state=seed).index, "label"] = np.nan  # unknown labels
    return labels


def _predictions(labels, start_bar=30):
    rows = labels.groupby(level="pool_id").apply(lambda g: g.iloc[start_bar:]).droplevel(0)
    return pd.DataFrame({"predicted_at": rows.index.get_level_values("open_time") + H,
                         "label": rows["label"]}, index=rows.index)


# ------------------------------------------------------------------ naive forecaster

@pytest.mark.parametrize("window", [None, 24])
def test_naive_quantiles_match_a_brute_force_reference(window):
    labels = _labels({"a": 200, "b": 120, "young": 60}, seed=1)
    preds = _predictions(labels, start_bar=5)
    cfg = NaiveConfig(naive_min_pool_labels=20, naive_window_bars=window)
    naive = naive_quantiles(preds, labels, cfg)
    known = labels.dropna(subset=["label"])
    for (pool, open_time), row in preds.sample(80, random_state=2).iterrows():
        t = row["predicted_at"]
        usable = (known["label_known_at"] <= t)
        if window is not None:
            usable &= known["label_known_at"] > t - window * H
        own = known[usable & (known.index.get_level_values(0) == pool)]["label"]
        pooled = known[usable]["label"]
        got = naive.loc[(pool, open_time)]
        if len(own) >= 20:
            expected, source = np.quantile(own, [0.1, 0.5, 0.9]), "pool"
        elif len(pooled) >= 20:
            expected, source = np.quantile(pooled, [0.1, 0.5, 0.9]), "pooled"
        else:
            expected, source = [np.nan] * 3, "none"
        assert got["naive_source"] == source
        np.testing.assert_allclose(got[list(NAIVE_COLUMNS)].to_numpy(dtype=float), expected, rtol=1e-12)
    # The young pool's first rows are forecast from every pool's known labels.
    assert (naive.loc["young", "naive_source"].iloc[:10] != "pool").all()
    assert set(naive["naive_source"]) <= {"pool", "pooled", "none"}


def test_naive_forecaster_never_sees_a_label_known_later():
    labels = _labels({"a": 150, "b": 150}, seed=3)
    preds = _predictions(labels)
    base = naive_quantiles(preds, labels, NaiveConfig())
    t = preds["predicted_at"].iloc[60]
    tampered = labels.copy()
    tampered.loc[tampered["label_known_at"] > t, "label"] = 100.0
    after = naive_quantiles(preds, tampered, NaiveConfig())
    past = preds["predicted_at"] <= t
    pd.testing.assert_frame_equal(base[past], after[past])
    assert not base[~past].equals(after[~past])  # the tampering did reach later forecasts


# ------------------------------------------------------------------ pinball skill

def _skill_frame(n_pools=5, n_bars=24 * 30, seed=4, informed=True):
    """Labels N(mu_t, sd_p); the model knows mu_t (informed) or not; naive = the unconditional
    quantiles of the pool's distribution."""
    rng = np.random.default_rng(seed)
    opens = pd.date_range(T0, periods=n_bars, freq="h")
    index = pd.MultiIndex.from_product([[f"p{i}" for i in range(n_pools)], opens], names=["pool_id", "open_time"])
    sd_noise = np.repeat(np.linspace(0.01, 0.02, n_pools), n_bars)
    mu = 0.01 * rng.normal(size=len(index))
    y = mu + sd_noise * rng.normal(size=len(index))
    total_sd = np.sqrt(0.01 ** 2 + sd_noise ** 2)
    centre, spread = (mu, sd_noise) if informed else (np.zeros_like(mu), total_sd)
    return pd.DataFrame({
        "q10": centre - Z90 * spread, "q50": centre, "q90": centre + Z90 * spread,
        "naive_q10": -Z90 * total_sd, "naive_q50": 0.0, "naive_q90": Z90 * total_sd,
        "label": y, "predicted_at": index.get_level_values("open_time") + H,
        "fold": (index.get_level_values("open_time") - T0) // (24 * H),
    }, index=index)


def test_an_informed_model_has_skill_with_an_interval_above_zero():
    frame = _skill_frame()
    overall, per_pool = pinball_skill(frame, config=FAST)
    assert list(overall.index) == ["q10", "q50", "q90"]
    assert (overall["skill_low"] > 0).all() and (overall["skill"] > 0.1).all()
    assert (overall["skill_low"] <= overall["skill"]).all() and (overall["skill"] <= overall["skill_high"]).all()
    y = frame["label"].to_numpy()
    model_loss = np.mean(np.maximum(0.5 * (y - frame["q50"]), -0.5 * (y - frame["q50"])))
    naive_loss = np.mean(np.abs(y) / 2)
    assert overall.loc["q50", "skill"] == pytest.approx(1 - model_loss / naive_loss)
    assert overall.loc["q50", "rows"] == len(frame)
    assert len(per_pool) == 5 and (per_pool["skill_q50"] > 0).all()
    summary = summarize_pool_skill(per_pool)
    assert (summary["pools"] == 5).all() and (summary["share_positive"] == 1).all()


def test_the_naive_forecaster_itself_has_zero_skill_and_a_worse_model_negative():
    frame = _skill_frame(informed=False)
    same = frame.assign(q10=frame["naive_q10"], q50=frame["naive_q50"], q90=frame["naive_q90"])
    overall, _ = pinball_skill(same, config=FAST)
    assert (overall["skill"] == 0).all() and (overall["skill_low"] == 0).all()
    worse = frame.assign(q50=frame["naive_q50"] + 0.02)
    assert pinball_skill(worse, config=FAST)[0].loc["q50", "skill_high"] < 0


def test_rows_without_label_or_naive_forecast_are_not_scored():
    frame = _skill_frame(n_pools=2, n_bars=24 * 5)
    frame.iloc[:7, frame.columns.get_loc("label")] = np.nan
    frame.iloc[7:10, frame.columns.get_loc("naive_q50")] = np.nan
    overall, _ = pinball_skill(frame, config=FAST)
    assert (overall["rows"] == len(frame) - 10).all()


# ------------------------------------------------------------------ rank IC

def test_rank_ic_per_fold():
    frame = _skill_frame(n_pools=3, n_bars=24 * 6)
    frame["q50"] = frame["label"] ** 3            # monotone in the label: rank IC 1
    frame["naive_q50"] = 0.0                      # constant: no rank IC
    by_fold = rank_ic_by_fold(frame)
    assert list(by_fold["fold"]) == list(range(6)) and (by_fold["rows"] == 72).all()
    np.testing.assert_allclose(by_fold["rank_ic"], 1.0)
    assert by_fold["naive_rank_ic"].isna().all()
    frame["q50"] = -frame["label"]
    assert summarize_rank_ic(rank_ic_by_fold(frame))["mean"] == pytest.approx(-1.0)
    noise = _skill_frame(n_pools=3, n_bars=24 * 40, informed=False)
    noise["q50"] = np.random.default_rng(0).normal(size=len(noise))
    s = summarize_rank_ic(rank_ic_by_fold(noise))
    assert s["folds"] == 40 and s["low"] < 0 < s["high"]  # no skill: the interval straddles 0


# ------------------------------------------------------------------ reliability

def test_pit_at_the_knots_and_in_the_tails():
    q10, q50, q90 = -1.0, 0.0, 2.0
    y = np.array([-1.0, -0.5, 0.0, 1.0, 2.0, -1.25, 2.5, -100.0, 100.0, np.nan])
    np.testing.assert_allclose(pit_piecewise(y, q10, q50, q90),
                               [0.1, 0.3, 0.5, 0.7, 0.9, 0.0, 1.0, 0.0, 1.0, np.nan])
    # Zero-width segments: the CDF jumps; every value stays in [0, 1].
    assert pit_piecewise(0.0, 0.0, 0.0, 0.0) == 1.0
    assert pit_piecewise(-0.1, 0.0, 0.0, 1.0) == 0.0


def test_labels_from_the_assumed_distribution_are_reliable_and_too_narrow_quantiles_are_not():
    """Labels drawn from the piecewise-linear distribution itself (linear tails out to the clip
    points) give observed = nominal within 3 s.e. at every level; shrinking the quantiles by 30 %
    shows up at the outer levels."""
    rng = np.random.default_rng(8)
    n = 40_000
    q10, q50, q90 = rng.normal(-0.02, 0.002, n), rng.normal(0, 0.002, n), rng.normal(0.03, 0.002, n)
    u = rng.uniform(size=n)
    # Inverse of the PIT's CDF: linear on [0, .1] below q10 down to q10 - (q50-q10)/4, etc.
    lower, upper = q50 - q10, q90 - q50
    y = np.where(u < 0.1, q10 - (0.1 - u) / 0.4 * lower,
                 np.where(u < 0.5, q10 + (u - 0.1) / 0.4 * lower,
                          np.where(u < 0.9, q50 + (u - 0.5) / 0.4 * upper, q90 + (u - 0.9) / 0.4 * upper)))
    frame = pd.DataFrame({"q10": q10, "q50": q50, "q90": q90, "label": y})
    table = reliability_table(frame)
    assert list(table.index) == [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert (table["gap_se"].abs() < 3).all()
    narrow = frame.assign(q10=q50 - 0.7 * lower, q90=q50 + 0.7 * upper)
    off = reliability_table(narrow)
    assert off.loc[0.1, "observed"] > 0.12 and off.loc[0.9, "observed"] < 0.88


# ------------------------------------------------------------------ hit rate net of cost

def test_net_hit_rate_counts_by_hand():
    times = [T0 + i * H for i in range(6)]
    signals = pd.DataFrame({
        "tradeable": [True, True, True, False, True, False],
        "side": ["long", "long", "short", "hold", "long", "hold"],
        "expected_cost": [0.005, 0.005, 0.005, 0.005, 0.01, np.nan],
        "label": [0.01, 0.004, -0.02, 0.3, np.nan, 0.2],
        "known_at": times,
    })
    out = net_hit_rate(signals, cost_column="expected_cost", config=FAST)
    # Tradeable with a known label: rows 0, 1, 2. Beat the cost: row 0 (0.01 > 0.005) and the short
    # row 2 (0.02 > 0.005); row 1 (0.004) did not. Row 4 is not known yet: counted apart.
    assert (out["tradeable_signals"], out["hits"], out["unlabelled_signals"]) == (3, 2, 1)
    assert out["hit_rate"] == pytest.approx(2 / 3)
    # Yardstick, every labelled bar with a cost traded long: rows 0, 1, 2, 3 -> 0 and 3 beat it.
    assert out["long_every_bar_rows"] == 4 and out["long_every_bar_hit_rate"] == pytest.approx(0.5)
    assert out["difference"] == pytest.approx(2 / 3 - 0.5)
    assert np.isnan(out["hit_rate_low"])  # six hours cannot be resampled in day-long blocks
    with pytest.raises(ValueError, match="finite 'expected_cost'"):
        net_hit_rate(signals.assign(expected_cost=np.nan), cost_column="expected_cost")
    with pytest.raises(KeyError, match="cost"):
        net_hit_rate(signals, cost_column="cost")


# ------------------------------------------------------------------ the real sample

def test_real_sample_evidence():
    raw, labels = real_walk_forward()
    cal = calibrate_walk_forward(raw, labels, CalibrationConfig())
    ev = model_evidence(cal.predictions, labels, bootstrap=FAST)
    assert list(ev.skill.index) == ["q10", "q50", "q90", "q10_raw", "q90_raw"]
    labelled = int(cal.predictions["label"].notna().sum())
    assert (ev.skill["rows"] <= labelled).all() and (ev.skill["rows"] > 0.9 * labelled).all()
    assert np.isfinite(ev.skill[["skill", "skill_low", "skill_high"]].to_numpy()).all()
    assert (ev.skill["skill_low"] <= ev.skill["skill"]).all() and (ev.skill["skill"] <= ev.skill["skill_high"]).all()
    # Recalibration helps the outer quantiles' pinball loss, and the coverage table says so.
    assert ev.skill.loc["q10", "model_loss"] <= ev.skill.loc["q10_raw", "model_loss"]
    assert abs(ev.coverage.loc["q10", "calibrated"] - 0.1) < abs(ev.coverage.loc["q10", "raw"] - 0.1)
    assert ev.reliability.loc[0.1, "calibrated"] == pytest.approx(ev.coverage.loc["q10", "calibrated"])
    assert ev.reliability.loc[0.5, "raw"] == ev.reliability.loc[0.5, "calibrated"]  # q50 is not moved
    assert ev.rank_ic_summary["folds"] == cal.predictions["fold"].nunique()
    assert sum(ev.naive_sources.values()) == len(cal.predictions)
    assert len(ev.pool_skill) == cal.predictions.index.get_level_values(0).nunique()


def test_real_sample_hit_rate_net_of_cost_of_recalibrated_signals():
    raw, labels = real_walk_forward()
    features, _ = real_panel()
    cal = calibrate_walk_forward(raw, labels, CalibrationConfig())
    config = SignalConfig()
    reserves = ReserveSeries(fallback_usd=50_000.0)  # the sample's assumed liquidity
    parts = []
    for pool, preds in cal.predictions.groupby(level="pool_id"):
        preds = preds.droplevel("pool_id")
        vol_risk = features.loc[pool, "vol_6"] ** 2
        signals = compute_signals(preds[["q10", "q50", "q90", "predicted_at"]], vol_risk, config, reserves=reserves)
        parts.append(signals.assign(label=preds["label"]))
    signals = pd.concat(parts)
    # The cost of each signal's own trade at its intended size, from the one cost model.
    out = net_hit_rate(signals, cost_column="expected_cost_fraction", config=FAST)
    traded = signals[signals["tradeable"] & signals["label"].notna()]
    assert out["tradeable_signals"] == len(traded) > 0
    # spot: every tradeable signal is long; a hit beats its own expected round-trip cost
    assert out["hits"] == int((traded["label"] > traded["expected_cost_fraction"]).sum())
    assert out["long_every_bar_rows"] == int(signals["label"].notna().sum())
    assert out["unlabelled_signals"] == int(signals["label"].isna().sum())
    assert out["hit_rate_low"] <= out["hit_rate"] <= out["hit_rate_high"]
