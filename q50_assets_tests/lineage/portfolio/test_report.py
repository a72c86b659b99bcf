"""The research report renderer: markdown + PNGs + one self-contained HTML page from fixtures built
on the real sample (bar returns, round trips, permutation nulls, the walk-forward model's evidence)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.model.calibration import CalibrationConfig
from q50_assets.lineage.model.evaluation import model_evidence
from q50_assets.lineage.model.walk_forward import calibrate_walk_forward
from q50_assets.lineage.portfolio.report import (
    breakdowns_png,
    PermutationNull,
    ReportInputs,
    pooled_permutation,
    reliability_png,
    render_report,
)
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.portfolio.capacity import capacity_curve
from q50_assets_tests.lineage.real_sample import real_backtest_frames, real_walk_forward

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = BootstrapConfig(bootstrap_samples=200, bootstrap_seed=5)


def test_pooled_permutation_known_answer():
    nulls = {"a": PermutationNull(0.3, np.array([0.0, 0.1, 0.5, 0.2]), 0.4),
             "b": PermutationNull(0.1, np.array([0.2, 0.1, 0.3, 0.0]), 0.6)}
    pooled = pooled_permutation(nulls)
    assert pooled.statistic == pytest.approx(0.2)
    np.testing.assert_allclose(pooled.draws, [0.1, 0.1, 0.4, 0.1])
    assert pooled.p_value == pytest.approx((1 + 1) / (1 + 4))  # one draw (0.4) >= 0.2
    with pytest.raises(ValueError, match="different numbers"):
        pooled_permutation({"a": nulls["a"], "c": PermutationNull(0.1, np.zeros(3), 1.0)})
    with pytest.raises(ValueError, match="finite"):
        PermutationNull(0.1, np.array([np.nan]), 1.0)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report():
    bar_returns, trips, nulls = real_backtest_frames()
    raw, labels = real_walk_forward()
    cal = calibrate_walk_forward(raw, labels, CalibrationConfig())
    evidence = model_evidence(cal.predictions, labels, bootstrap=FAST)
    permutation = pooled_permutation({p: PermutationNull(s, d, float((1 + (d >= s).sum()) / (1 + len(d))))
                                      for p, (s, d) in nulls.items()})
    hit_rate = {"tradeable_signals": 132, "hits": 66, "hit_rate": 0.5, "hit_rate_low": 0.437, "hit_rate_high": 0.579,
                "long_every_bar_rows": 16764, "long_every_bar_hit_rate": 0.406, "long_every_bar_low": 0.396,
                "long_every_bar_high": 0.415, "difference": 0.094, "difference_low": 0.033, "difference_high": 0.171,
                "unlabelled_signals": 57}
    inputs = ReportInputs(bar_returns=bar_returns, trials=6, permutation=permutation, round_trips=trips,
                          model=evidence, hit_rate=hit_rate, bootstrap=FAST)
    return render_report(inputs), inputs


def test_report_has_every_part_in_markdown_pngs_and_html(report):
    out, inputs = report
    assert set(out.pngs) == {"equity_curves", "permutation_null", "reliability", "breakdowns"}
    for name, png in out.pngs.items():
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) < 120_000, f"{name} is {len(png)} bytes: too big for metadata"
    md = out.markdown
    for heading in ("## Headline", "## Against chance", "## The model against a naive forecaster",
                    "## Coverage and reliability", "## Signals net of cost", "## Where the edge lives"):
        assert heading in md
    # Every picture the markdown names exists, and every picture is named.
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\.png\)", md)) == set(out.pngs)
    # Headline: every variant, on all pools and without the top 5 %, with intervals and the trials.
    headline = out.tables["headline"]
    assert set(headline.index.get_level_values("variant")) == set(next(iter(inputs.bar_returns.values())).columns)
    assert "DSR (6 trials)" in md and "without top 5 %" in md
    q50_row = next(line for line in md.splitlines() if line.startswith("| q50 | all pools"))
    assert q50_row.count("[") >= 3  # mean, Sharpe and hit rate each carry an interval
    assert f"p = {inputs.permutation.p_value:.3f}" in md
    assert "50.0 % [43.7 %, 57.9 %] of 132" in md
    for by in ("vol_regime", "momentum_regime", "signal_tier", "liquidity"):
        assert f"breakdown_{by}" in out.tables

    # The HTML page parses, embeds every picture (nothing fetched from elsewhere) and has the tables.
    parser = _Collector()
    parser.feed(out.html)
    assert parser.tags.count("table") == md.count("\n|---") and parser.tags.count("img") == len(out.pngs)
    assert all(src.startswith("data:image/png;base64,") for src in parser.srcs)
    assert "http://" not in out.html and "https://" not in out.html
    assert out.html.startswith("<!DOCTYPE html>")


def test_report_without_the_optional_parts():
    bar_returns, _, _ = real_backtest_frames()
    few = dict(list(bar_returns.items())[:3])
    out = render_report(ReportInputs(bar_returns=few, trials=1, round_trips=pd.DataFrame(
        columns=["entry_filled_at", "net_return", "vol_regime", "momentum_regime", "signal_tier", "reserve_usd",
                 "reserve_source"]), bootstrap=FAST))
    assert set(out.pngs) == {"equity_curves"}
    assert "## Against chance" not in out.markdown and "naive forecaster" not in out.markdown
    assert out.tables["breakdown_signal_tier"].loc["all", "trades"] == 0


def test_reliability_png_is_small():
    table = pd.DataFrame({"calibrated": [0.05, 0.5, 0.95], "raw": [0.1, 0.5, 0.9], "se": [0.01, 0.01, 0.01]},
                         index=pd.Index([0.05, 0.5, 0.95], name="level"))
    png = reliability_png(table)
    assert png.startswith(PNG_SIGNATURE) and len(png) < 40_000


def test_report_carries_the_capacity_curve_with_its_yardsticks_and_the_assumed_reserve():
    bar_returns, trips, _ = real_backtest_frames()
    curve = capacity_curve(trips, fee_rate=0.0025, max_reserve_fraction=0.1, config=FAST)
    assert curve.enough and curve.assumed_reserve_trips == int((trips["reserve_source"] == "fallback").sum())
    out = render_report(ReportInputs(bar_returns=dict(list(bar_returns.items())[:3]), trials=1, bootstrap=FAST,
                                     capacity=curve, assumed_reserve="5,577 USD: the median over 4,517 observed pools"))
    md = out.markdown
    assert "## Capacity: q50's edge against size and liquidity" in md and "capacity" in out.pngs
    assert out.pngs["capacity"].startswith(PNG_SIGNATURE) and len(out.pngs["capacity"]) < 120_000
    assert "Assumed reserve where the collector observed none: 5,577 USD" in md
    assert f"The {curve.trips} closed round trips" in md and "mean gross return" in md
    assert "| trade size (USD) | reserve x0.1 | reserve x0.3 | reserve x1 | reserve x3 | reserve x10 |" in md
    assert out.tables["capacity"] is curve.table and (curve.table["status"] == "ok").all()
    # Too few round trips: one line saying so, no grid of figures, no picture.
    few = capacity_curve(trips.iloc[:5], fee_rate=0.0025, max_reserve_fraction=0.1, config=FAST)
    out = render_report(ReportInputs(bar_returns=dict(list(bar_returns.items())[:3]), trials=1, bootstrap=FAST,
                                     capacity=few))
    assert "too few round trips: 5 < 30" in out.markdown and "capacity" not in out.pngs


def test_breakdown_picture_draws_an_interval_that_misses_its_estimate():
    # Percentile intervals of a few skewed trips can lie wholly on one side of the estimate.
    table = pd.DataFrame({"trades": [3], "mean_net_return": [-0.05], "mean_net_return_low": [-0.04],
                          "mean_net_return_high": [0.01]}, index=pd.Index(["all"], name="liquidity"))
    assert breakdowns_png({"liquidity": table}).startswith(PNG_SIGNATURE)
