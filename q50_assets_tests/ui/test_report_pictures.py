"""The research report's HTML page in a real headless browser: every section is there and every
picture decodes, is shown at the page's full content width and is not upscaled (blurred).

The report is built from small synthetic parts through the real code paths: stored per-bar returns
and round trips of a few pools (enough closed round trips for a capacity curve), the pooled
permutation null, the trials ledger, a top-k basket run through NautilusTrader on synthetic pools,
the signal evidence of a small planted-signal panel, and the walk-forward model's evidence on the
bundled sample. It is written by the report sink and opened in Debian's Chromium at a laptop's
width (same fixture and skip rules as ``test_browser.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets_tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright  # noqa: F401 (fixture)

FAST = BootstrapConfig(bootstrap_samples=200, bootstrap_seed=5)
VIEWPORT = {"width": 1366, "height": 900}  # a typical laptop
# Every picture the report draws when every input is given: a section that silently stops
# drawing (or a new picture nobody looked at in a browser) fails the test.
PICTURES = {
    "signal_quantile_returns", "signal_ic_decay", "signal_decomposition",  # the signal, before any rule
    "basket",                                                              # the top-k basket
    "equity_curves",                                                       # the headline
    "permutation_null",                                                    # against chance
    "reliability",                                                         # the model
    "breakdowns",                                                          # where the edge lives
    "capacity",                                                            # size and liquidity
}
SECTIONS = ["Verdict", "What the signal earns, before any rule", "Each rule, gross and net",
            "A top-k basket across pools, and the same basket without the forecast",
            "Headline: q50 on the pools where it traded", "Trials counted by the deflated Sharpe", "Against chance",
            "The model against a naive forecaster", "Coverage and reliability", "Signals net of cost",
            "Where the edge lives (Q50 round trips)", "Capacity: q50's edge against size and liquidity"]


def _results_with_round_trips(trips_per_pool: int = 20) -> pd.DataFrame:
    """The portfolio tests' results of pools A, B (traded) and C (never traded), with stored per-bar
    returns, and q50's round trips replaced by ``trips_per_pool`` closed ones per pool, sized and
    with a reserve: 40 in all, enough for the capacity curve (30)."""
    from q50_assets.lineage.backtest.step import ROUND_TRIP_COLUMNS, round_trip_records
    from q50_assets_tests.lineage.portfolio.test_portfolio import START, _results, _with_evidence

    results = _with_evidence(_results(), ["A", "B"])
    rng = np.random.default_rng(7)
    grid = pd.date_range(START, periods=96, freq="h")
    for k, pool in enumerate(["A", "B"]):
        gross = rng.normal(0.01, 0.02, trips_per_pool)
        trips = pd.DataFrame([{c: np.nan for c in ROUND_TRIP_COLUMNS} | {
            "entry_decided_at": grid[4 * i], "entry_filled_at": grid[4 * i + 1], "exit_filled_at": grid[4 * i + 3],
            "open": False, "bars_held": 2, "gross_return": g, "net_return": g - 0.006, "notional_usd": 250.0,
            "vol_regime": ("low", "high")[i % 2], "momentum_regime": ("ranging", "trending")[(i + k) % 2],
            "signal_tier": "AB"[i % 2], "reserve_usd": 80_000.0 if i % 3 else np.nan,
            "reserve_source": "observed" if i % 3 else "fallback"} for i, g in enumerate(gross)])
        trips.loc[trips["reserve_source"] == "fallback", "reserve_usd"] = 50_000.0
        row = (results["pool_id"] == pool) & (results["variant"] == "q50")
        results.loc[row, "round_trip_records"] = pd.Series([round_trip_records(trips)], index=results.index[row])
    return results


def _signal_evidence():
    """The signal evidence of the signal-evidence tests' small panel (a planted signal), with its pictures."""
    from q50_assets.lineage.signal_evidence.rules import evidence_panel, evidence_pngs, signal_evidence
    from q50_assets.lineage.signal_evidence.step import SignalEvidenceResult
    from q50_assets_tests.lineage.signal_evidence.test_rules import bars_of, config, signals_of

    rng = np.random.default_rng(11)
    bars, signals = {}, {}
    n = 24 * 5
    for j in range(8):
        closes = 100 * np.cumprod(1 + rng.normal(0, 0.02, n + 30))
        rets = closes[2:] / closes[1:-1] - 1
        bars[f"p{j}"] = bars_of(closes, missing=(50 + j,))
        signals[f"p{j}"] = signals_of(rets[:n] + rng.normal(0, 0.02, n))
    cfg = config(min_pools=5, quantiles=4, horizons=(1, 4), null_draws=100)
    ev = signal_evidence(evidence_panel(bars, signals, cfg), cfg, cost_per_side=0.003)
    return SignalEvidenceResult(ev, cfg, evidence_pngs(ev), len(signals), {}, 0.0)


def _basket():
    """A real top-k basket through NautilusTrader on the basket tests' synthetic pools."""
    from q50_assets.lineage.basket.step import basket_step
    from q50_assets_tests.lineage.basket.test_step import Reserves, inputs, settings

    ohlcv, signals = inputs()
    return basket_step(ohlcv, signals, Reserves(2e5), settings(0.0025, 2e5), "run")


def _model():
    """The light walk-forward model's evidence on the bundled sample (a few seconds)."""
    from q50_assets.lineage.model.calibration import CalibrationConfig
    from q50_assets.lineage.model.evaluation import model_evidence
    from q50_assets.lineage.model.walk_forward import calibrate_walk_forward
    from q50_assets_tests.lineage.real_sample import real_walk_forward

    raw, labels = real_walk_forward()
    cal = calibrate_walk_forward(raw, labels, CalibrationConfig())
    return model_evidence(cal.predictions, labels, bootstrap=FAST)


def _ledger(results: pd.DataFrame) -> pd.DataFrame:
    from q50_assets.lineage.portfolio.portfolio import stored_evidence, traded_pools
    from q50_assets.lineage.portfolio.trials import trial_rows
    from q50_assets.settings import Settings

    bar_returns, trips, _ = stored_evidence(results, traded_pools(results))
    rows = trial_rows(bar_returns, Settings(), round_trips=trips)
    return rows.assign(first_seen_at=pd.Timestamp("2025-09-21", tz="UTC"))


HIT_RATE = {"tradeable_signals": 132, "hits": 66, "hit_rate": 0.5, "hit_rate_low": 0.437, "hit_rate_high": 0.579,
            "long_every_bar_rows": 16764, "long_every_bar_hit_rate": 0.406, "long_every_bar_low": 0.396,
            "long_every_bar_high": 0.415, "difference": 0.094, "difference_low": 0.033, "difference_high": 0.171,
            "unlabelled_signals": 57}


@pytest.fixture
def report_page(tmp_path):
    """The full report, written by the report sink: (its HTML file, the Report)."""
    from q50_assets.lineage.portfolio.portfolio import research_report
    from q50_assets.storage.reports import ReportFiles

    results = _results_with_round_trips()
    report, facts = research_report(
        results, trials=6, bar_seconds=3600, bootstrap=FAST, model=_model(), hit_rate=HIT_RATE,
        trials_ledger=_ledger(results), basket=_basket(), signal_evidence=_signal_evidence(),
        capacity_settings={"fee_rate": 0.0025, "max_reserve_fraction": 0.1},
        assumed_reserve="50,000 USD: the fallback reserve")
    assert report is not None and facts["capacity"] is not None and facts["capacity"].enough, facts
    return ReportFiles(directory=str(tmp_path / "reports")).write(report), report


def test_every_section_and_picture_renders_full_width_and_sharp(sync_playwright, report_page, tmp_path):  # noqa: F811
    page_file, report = report_page
    assert set(report.pngs) == PICTURES  # before the browser: what the report drew
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=tmp_path / "report.png", full_page=True)
            print(f"screenshot: {tmp_path / 'report.png'}")

            headings = page.locator("h2").all_inner_texts()
            assert headings == SECTIONS
            text = page.locator("body").inner_text()
            assert "What the signal shows." in text and "What the best rule realises after costs." in text

            # The content width: the body's box less its padding (what a full-width block gets).
            content = page.evaluate("""() => { const s = getComputedStyle(document.body);
                return document.body.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); }""")
            assert content >= 600, f"content width {content} px at a {VIEWPORT['width']} px viewport"
            images = page.locator("img")
            names = images.evaluate_all("imgs => imgs.map(i => i.alt)")
            assert sorted(names) == sorted(PICTURES) and len(names) == len(set(names))
            sizes = {}
            for name in names:
                image = page.locator(f"img[alt='{name}']")
                image.scroll_into_view_if_needed()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                                       timeout=10_000)
                sizes[name] = image.evaluate("img => [img.naturalWidth, img.naturalHeight, img.clientWidth]")
            print({n: f"{w}x{h} shown {c} of {content:.0f} px" for n, (w, h, c) in sizes.items()})
            problems = {}
            for name, (natural, height, shown) in sizes.items():
                if not (natural > 0 and height > 0):
                    problems[name] = f"does not decode ({natural}x{height})"
                elif shown < 0.6 * content:
                    problems[name] = f"shown {shown} px wide: under 60 % of the content width {content:.0f} px"
                elif natural < shown:
                    problems[name] = f"upscaled: {natural} px drawn {shown} px wide"
            assert not problems, problems
        finally:
            browser.close()
