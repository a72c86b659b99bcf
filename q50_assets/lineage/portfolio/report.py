"""The research report: the portfolio-level evidence as markdown, small PNG pictures and one
self-contained HTML page.

Pure (no Dagster, no files written, matplotlib ``Figure`` without pyplot's global state). The
caller decides where the pieces go (asset metadata, a file under the data dir). Every figure is
shown with its yardstick and interval:

* headline table per variant: mean per-bar net return, portfolio Sharpe and hit rate, each with
  its block-bootstrap 95 % interval, PSR and the deflated Sharpe for the trials of the ledger,
  on all pools and without the top 5 % of pools by return (:mod:`q50_assets.lineage.common.uncertainty`);
* equity curves of the variants' equal-weight portfolios;
* the permutation null: the histogram of the pooled null statistic with the strategy's mark;
* the model's skill over the naive forecaster, rank IC, coverage before/after recalibration and
  the reliability picture (:mod:`q50_assets.lineage.model.evaluation`), when given;
* the hit rate of tradeable signals net of their expected cost beside trading every bar, when given;
* where the edge lives: the Q50 round trips by regime, tier and liquidity;
* capacity: a rule's net edge per round trip against trade size and pool reserve, when given
  (:mod:`q50_assets.lineage.portfolio.capacity`), with the reserve assumed where none was observed.

The markdown names pictures by file name (``![..](equity_curves.png)``) so that writing
``report.md`` beside the PNGs gives a readable folder; the HTML embeds them (base64).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from q50_assets.lineage.common.markdown import markdown_table
from q50_assets.lineage.model.evaluation import ModelEvidence
from q50_assets.lineage.portfolio.capacity import CapacityCurve, capacity_png
from q50_assets.lineage.common.uncertainty import (BootstrapConfig, edge_breakdowns, equal_weight_portfolio,
                                             headline_with_and_without_top)

# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PermutationNull:
    """A strategy statistic against its null distribution (e.g. the same targets shuffled)."""

    statistic: float
    draws: np.ndarray
    p_value: float

    def __post_init__(self) -> None:
        draws = np.asarray(self.draws, dtype=np.float64)
        if draws.ndim != 1 or len(draws) == 0 or not np.isfinite(draws).all():
            raise ValueError("draws must be a non-empty 1-d array of finite numbers")
        object.__setattr__(self, "draws", draws)


def pooled_permutation(per_pool: Mapping[str, PermutationNull]) -> PermutationNull:
    """Pooled statistic = mean of the pools' statistics; pooled null draw i = mean of the pools'
    draw i; p = (1 + draws >= statistic) / (1 + draws). Every pool needs the same number of draws."""
    if not per_pool:
        raise ValueError("no pool's permutation null to pool")
    counts = {p: len(n.draws) for p, n in per_pool.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"pools have different numbers of null draws: {counts}")
    draws = np.mean(np.stack([n.draws for n in per_pool.values()]), axis=0)
    statistic = float(np.mean([n.statistic for n in per_pool.values()]))
    p_value = float((1 + np.sum(draws >= statistic)) / (1 + len(draws)))
    return PermutationNull(statistic, draws, p_value)


@dataclass
class ReportInputs:
    bar_returns: Mapping[str, pd.DataFrame]   # per pool: bar close time x variant (uncertainty module docstring)
    trials: int                               # configurations tried (for the deflated Sharpe)
    permutation: PermutationNull | None = None  # pooled (see pooled_permutation)
    permutation_statistic: str = "mean per-bar net return of q50"
    round_trips: pd.DataFrame | None = None   # Q50 round trips of every pool
    round_trip_counts: pd.DataFrame | None = None  # round trips per pool (index) and variant (columns)
    trials_ledger: pd.DataFrame | None = None  # the q50_trials rows the DSR counted (trials_blocks)
    model: ModelEvidence | None = None
    hit_rate: Mapping[str, float] | None = None  # research.evaluation.net_hit_rate of the signals
    bar_seconds: int = 3600
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    title: str = "Q50: out-of-sample evidence"
    intro: str = ""  # a first paragraph (which pools, what was left out)
    basket: object | None = None  # the basket stage's result (lineage/basket/step.py BasketResult)
    signal_evidence: object | None = None  # lineage/signal_evidence/step.py SignalEvidenceResult
    provenance: Mapping[str, str] | None = None  # run, database, window, model folds, config hash (common/provenance.py)
    verdict: object | None = None  # lineage/portfolio/verdict.py Verdict: both statements and the rules' table
    rule_tables: dict | None = None  # rule -> its table gross and net on its own pools (portfolio.rule_table)
    capacity: CapacityCurve | None = None  # a rule's net edge against size and reserve
    assumed_reserve: str = ""  # how the reserve assumed where none was observed was made


@dataclass
class Report:
    markdown: str
    pngs: dict[str, bytes]
    html: str
    tables: dict[str, pd.DataFrame]


# ------------------------------------------------------------------ formatting


def _isnan(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _bp(v) -> str:
    # Significant digits, not decimals: a strategy that barely trades earns millionths of a basis point.
    return "n/a" if _isnan(v) else f"{1e4 * v:.3g} bp"


def _pct(v, digits: int = 1) -> str:
    return "n/a" if _isnan(v) else f"{100 * v:.{digits}f} %"


def _num(v, digits: int = 2) -> str:
    return "n/a" if _isnan(v) else f"{v:.{digits}f}"


def _with_interval(fmt, estimate, low, high, empty=None) -> str:
    if _isnan(low) or _isnan(high):
        return f"{fmt(estimate)} [no interval]"
    # Replicates where the statistic was undefined are left out of the percentiles: say how many.
    note = f"; {100 * empty:.0f} % of replicates empty" if not _isnan(empty) and empty > 0 else ""
    return f"{fmt(estimate)} [{fmt(low)}, {fmt(high)}{note}]"


def _too_few(n) -> str:
    return f"too few ({0 if _isnan(n) else int(n)})"


def _duration(delta) -> str:
    delta = pd.Timedelta(delta)
    days = delta / pd.Timedelta(days=1)
    return f"{days:g} day{'s' if days != 1 else ''}" if days >= 1 else str(delta)


# The HTML page's content is at most 60em = 960 CSS px wide (``_render``'s style), and a picture is
# shown at its natural width up to that. Drawn at least this many pixels wide, every picture fills
# the content width without being upscaled; its fonts are sized for the figure's inches shown at
# 960 px (a 7 pt label on a 7 in figure reads as 10 pt).
PICTURE_PX = 1000


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=max(fig.dpi, PICTURE_PX / fig.get_figwidth()))
    # A chart's flat colours fit a 256-colour palette: about a third of the bytes at page width
    # (the pictures ride in the asset's metadata), no visible loss.
    from PIL import Image

    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _figure(width: float = 7.0, height: float = 2.8):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=72)


# ------------------------------------------------------------------ pictures


def equity_curves_png(portfolio: pd.DataFrame, title: str = "Equal-weight portfolio, out of sample") -> bytes:
    """Compounded equity (start 1) of each variant's per-bar portfolio returns."""
    fig = _figure()
    ax = fig.add_axes((0.1, 0.2, 0.88, 0.7))
    for variant in portfolio.columns:
        ax.plot(portfolio.index, np.cumprod(1.0 + portfolio[variant].to_numpy(dtype=np.float64)), label=str(variant),
                linewidth=1.1)
    ax.axhline(1.0, color="0.6", linewidth=0.6)
    ax.set_yscale("log")  # a pumping baseline must not flatten the strategy's curve into a line
    low, high = ax.get_ylim()
    if high < 10 * low:  # under a decade the minor ticks are labelled: plain numbers, not 9.95x10^-1
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda v, _: f"{v:.4g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_title(f"{title} (equity from 1, log scale)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax.tick_params(which="both", labelsize=7)
    return _png(fig)


def permutation_png(null: PermutationNull, statistic_name: str) -> bytes:
    """Histogram of the null draws with the strategy's statistic marked."""
    fig = _figure(6.0, 2.6)
    ax = fig.add_axes((0.1, 0.2, 0.86, 0.68))
    ax.hist(null.draws, bins=40, color="0.7")
    ax.axvline(null.statistic, color="tab:red", linewidth=1.5, label=f"strategy (p = {null.p_value:.3f})")
    ax.set_title(f"Permutation null ({len(null.draws):,} draws): {statistic_name}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)
    return _png(fig)


def reliability_png(reliability: pd.DataFrame) -> bytes:
    """Observed vs nominal coverage per level (index ``level``), one line per column among
    ``calibrated``, ``raw`` and ``naive``, with the ideal diagonal and a +-2 s.e. band (``se``)."""
    fig = _figure(7.0, 3.4)  # full width on the page (PICTURE_PX): a square would be a page tall
    ax = fig.add_axes((0.08, 0.14, 0.9, 0.76))
    levels = reliability.index.to_numpy(dtype=np.float64)
    ax.plot([0, 1], [0, 1], color="0.5", linewidth=0.8)
    if "se" in reliability.columns:
        se = reliability["se"].to_numpy(dtype=np.float64)
        ax.fill_between(levels, levels - 2 * se, levels + 2 * se, color="0.85")
    styles = {"calibrated": ("tab:blue", "o"), "raw": ("tab:orange", "s"), "naive": ("tab:green", "^")}
    for name, (color, marker) in styles.items():
        if name in reliability.columns:
            ax.plot(levels, reliability[name].to_numpy(dtype=np.float64), color=color, marker=marker, markersize=3,
                    linewidth=1, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level", fontsize=7)
    ax.set_ylabel("observed share of labels <= quantile", fontsize=7)
    ax.set_title("Reliability, out of sample", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.tick_params(labelsize=7)
    return _png(fig)


def breakdowns_png(breakdowns: Mapping[str, pd.DataFrame]) -> bytes:
    """Mean net return per round trip with its interval, one panel per breakdown."""
    fig = _figure(7.5, 2.2 * math.ceil(len(breakdowns) / 2))
    rows = math.ceil(len(breakdowns) / 2)
    for i, (by, table) in enumerate(breakdowns.items()):
        ax = fig.add_subplot(rows, 2, i + 1)
        shown = table[table["trades"] > 0]
        x = np.arange(len(shown))
        est = shown["mean_net_return"].to_numpy(dtype=np.float64)
        low = shown["mean_net_return_low"].to_numpy(dtype=np.float64)
        high = shown["mean_net_return_high"].to_numpy(dtype=np.float64)
        # A percentile interval of a few skewed trips need not contain its estimate: draw such a
        # side as zero (the table beside it shows the numbers); matplotlib refuses negative errors.
        err = np.vstack([np.where(np.isfinite(low), np.maximum(est - low, 0), 0),
                         np.where(np.isfinite(high), np.maximum(high - est, 0), 0)])
        ax.errorbar(x, 100 * est, yerr=100 * err, fmt="o", markersize=3, capsize=2)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_xticks(x, [f"{g}\n({n})" for g, n in zip(shown.index, shown["trades"])], fontsize=7)
        ax.set_title(f"mean net return per trip (%) by {by}", fontsize=8)  # fits its panel
        ax.tick_params(axis="y", labelsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.15, hspace=0.9, wspace=0.2)
    return _png(fig)


# ------------------------------------------------------------------ blocks -> markdown / HTML


@dataclass
class _Block:
    kind: str  # "h2", "p", "table", "img"
    text: str = ""
    table: pd.DataFrame | None = None


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or "", *table.columns])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [idx, *row]) + "</tr>"
                   for idx, row in table.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _render(title: str, blocks: list[_Block], pngs: dict[str, bytes]) -> tuple[str, str]:
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind == "h2":
            md += [f"## {b.text}", ""]
            body.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "p":
            md += [b.text, ""]
            body.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "table":
            md += [markdown_table(b.table), ""]
            body.append(_html_table(b.table))
        elif b.kind == "img":
            md += [f"![{b.text}]({b.text}.png)", ""]
            data = base64.b64encode(pngs[b.text]).decode()
            body.append(f'<img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}"
             "img{display:block;max-width:100%;height:auto;margin:0.5em 0 1.5em}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return "\n".join(md).rstrip() + "\n", page


def headline_markdown(report: Report) -> str:
    """The headline table alone (estimate [95 % interval] per variant, PSR, deflated Sharpe)."""
    return markdown_table(headline_display(report.tables["headline"]))


def markdown_with_pictures(report: Report) -> str:
    """The report's markdown with its pictures embedded (data URIs): one piece of Dagster metadata."""
    md = report.markdown
    for name, png in report.pngs.items():
        md = md.replace(f"]({name}.png)", f"](data:image/png;base64,{base64.b64encode(png).decode()})")
    return md


# ------------------------------------------------------------------ tables shown


HEADLINE_CAPTION = ("Every figure is of one series, the equal-weight portfolio of the pools present at each bar "
                    "(per bar, the mean net return over the pools whose out-of-sample span covers it); the equity "
                    "curves below are the same series compounded. PSR and DSR are on q50's round-trip net returns, "
                    "on the other variants' non-zero portfolio bars (flat bars would inflate n), with n and the "
                    "autocorrelation-adjusted effective n they use. Fewer round trips than the stated minimum: "
                    "no interval, no PSR/DSR (\"too few (n)\").")


def headline_display(headline: pd.DataFrame) -> pd.DataFrame:
    """The headline table as strings: estimate [low, high], or "too few (n)" round trips."""
    rows = []
    for (sample, variant), r in headline.iterrows():
        too_few = bool(r.get("too_few", False)) if not _isnan(r.get("too_few")) else False

        def shown(fmt, name):
            if too_few:
                return f"{fmt(r[name])} [{_too_few(r['round_trips'])}]"
            return _with_interval(fmt, r[name], r[f"{name}_low"], r[f"{name}_high"], r.get(f"{name}_empty"))

        n_eff = r.get("psr_n_effective")
        rows.append({
            "variant": variant, "sample": sample, "pools": int(r["pools"]), "pool-bars": f"{int(r['bars']):,}",
            "round trips": "" if _isnan(r.get("round_trips")) else f"{int(r['round_trips']):,}",
            "mean per-bar net return": shown(_bp, "mean_bar_return"),
            "Sharpe (annualised)": shown(_num, "sharpe"),
            "hit rate (bars that moved)": shown(_pct, "hit_rate"),
            "PSR": _too_few(r["round_trips"]) if too_few else _num(r["psr"], 3),
            f"DSR ({int(r['trials'])} trials)": _too_few(r["round_trips"]) if too_few else _num(r["dsr"], 3),
            "PSR on (n, effective n)": "" if _isnan(n_eff) else
            f"{r['psr_basis']} ({int(r['psr_n']):,}, {n_eff:,.0f})",
        })
    return pd.DataFrame(rows).set_index("variant")


def skill_display(skill: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "rows": [f"{int(v):,}" for v in skill["rows"]],
        "model pinball": [f"{v:.5f}" for v in skill["model_loss"]],
        "naive pinball": [f"{v:.5f}" for v in skill["naive_loss"]],
        "skill = 1 - model/naive": [_with_interval(_pct, e, lo, hi) for e, lo, hi in
                                    zip(skill["skill"], skill["skill_low"], skill["skill_high"])],
    }, index=skill.index)
    out.index.name = "quantile"
    return out


def breakdown_display(table: pd.DataFrame) -> pd.DataFrame:
    """Round trips per group: estimate [low, high], or "too few (n)" under the minimum for an interval."""
    too_few = table["too_few"].fillna(True).astype(bool) if "too_few" in table else pd.Series(False, table.index)
    empty = table["empty_replicates"] if "empty_replicates" in table else pd.Series(np.nan, table.index)

    def shown(name, fmt):
        return [_too_few(n) if few else _with_interval(fmt, e, lo, hi, em)
                for n, few, e, lo, hi, em in zip(table["trades"], too_few, table[name], table[f"{name}_low"],
                                                 table[f"{name}_high"], empty)]

    out = pd.DataFrame({
        "round trips": table["trades"].astype(int),
        "mean net return": shown("mean_net_return", lambda v: _pct(v, 2)),
        "hit rate": shown("hit_rate", _pct),
    }, index=table.index)
    return out


def trials_display(ledger: pd.DataFrame) -> pd.DataFrame:
    """The trial ledger's rows as strings: configuration hash, first seen, variant, statistics."""
    out = pd.DataFrame({
        "configuration": [str(h)[:12] for h in ledger["config_hash"]],
        "first seen (UTC)": [pd.Timestamp(t).strftime("%Y-%m-%d %H:%M") for t in ledger["first_seen_at"]],
        "window": [f"{pd.Timestamp(a):%Y-%m-%d %H:%M} to {pd.Timestamp(b):%Y-%m-%d %H:%M}"
                   for a, b in zip(ledger["window_start"], ledger["window_end"])],
        "variant": ledger["variant"].astype(str).to_numpy(),
        "round trips": ["" if _isnan(n) else f"{int(n):,}" for n in ledger["round_trips"]],
        "mean net return per round trip": [_pct(v, 2) for v in ledger["mean_round_trip_return"]],
        "Sharpe (annualised)": [_num(v) for v in ledger["sharpe"]],
    }, index=pd.RangeIndex(1, len(ledger) + 1, name="trial"))
    return out


def trials_blocks(ledger: pd.DataFrame | None, trials: int) -> list[_Block]:
    """The trials the deflated Sharpe counted: every (configuration, variant) of the ledger
    evaluated on a window overlapping this one."""
    if ledger is None:
        return []
    blocks = [_Block("h2", "Trials counted by the deflated Sharpe")]
    blocks.append(_Block("p", f"The deflated Sharpe counts {trials} trials: the distinct (configuration, variant) "
                              f"pairs below, each evaluated on an out-of-sample window overlapping this one (a "
                              f"configuration is the hash of every setting that changes results), plus "
                              f"configurations declared as tried elsewhere (evaluation.prior_configurations). "
                              f"Re-running a configuration adds no trial."))
    if len(ledger):
        blocks.append(_Block("table", table=trials_display(ledger)))
    return blocks


def _model_blocks(model: ModelEvidence, pngs: dict[str, bytes]) -> list[_Block]:
    blocks = [_Block("h2", "The model against a naive forecaster")]
    blocks.append(_Block("p", "Pinball loss of the out-of-sample quantiles and of the pool's own recent label "
                              "quantiles known at the same time; skill > 0 means the model knows more. "
                              "q10/q90 are the recalibrated quantiles the signals use; *_raw the model's own."))
    blocks.append(_Block("table", table=skill_display(model.skill)))
    s = model.pool_skill_summary
    blocks.append(_Block("p", "Per pool: " + "; ".join(
        f"{q}: median skill {_pct(r['median_skill'])}, {_pct(r['share_positive'], 0)} of {int(r['pools'])} pools > 0, "
        f"interval above 0 in {int(r['pools_above_zero'])}, below 0 in {int(r['pools_below_zero'])}"
        for q, r in s.iterrows()) + "."))
    ic, naive_ic = model.rank_ic_summary, model.naive_rank_ic_summary
    blocks.append(_Block("p", f"Rank IC of q50 with the realised label, per fold: mean {_num(ic['mean'], 3)} "
                              f"[{_num(ic['low'], 3)}, {_num(ic['high'], 3)}] over {ic['folds']} folds, "
                              f"{_pct(ic['share_positive'], 0)} positive; naive q50: mean "
                              f"{_num(naive_ic.get('mean', float('nan')), 3)}."))
    cov = model.coverage
    cov_show = pd.DataFrame({"nominal": [f"{v:.2f}" for v in cov["level"]],
                             "raw model": [f"{v:.3f}" for v in cov["raw"]],
                             "recalibrated": [f"{v:.3f}" for v in cov["calibrated"]],
                             "naive": [f"{v:.3f}" for v in cov["naive"]]}, index=cov.index)
    blocks.append(_Block("h2", "Coverage and reliability"))
    blocks.append(_Block("table", table=cov_show))
    pngs["reliability"] = reliability_png(model.reliability)
    blocks.append(_Block("img", "reliability"))
    rel = model.reliability
    rel_show = pd.DataFrame({c: [f"{v:.3f}" for v in rel[c]] for c in ("calibrated", "raw", "naive") if c in rel},
                            index=pd.Index([f"{v:.2f}" for v in rel.index], name="level"))
    blocks.append(_Block("table", table=rel_show))
    return blocks


# ------------------------------------------------------------------ the top-k basket

BASKET_LABELS = {"forecast": "forecast basket (top k by E[r])", "volatility": "volatility basket (top k by vol_risk)",
                 "buy_and_hold": "buy & hold, every candidate pool"}


def basket_display(metrics: pd.DataFrame) -> pd.DataFrame:
    """The basket's metrics as strings, one row per basket and cost side, intervals in brackets."""
    rows = []
    for name, r in metrics.iterrows():
        basket, costs = str(name).rsplit(" ", 1)
        rows.append({
            "basket": BASKET_LABELS.get(basket, basket), "costs": costs,
            "total return (compounded)": _pct(r["total_return"]),
            "mean per-bar return": _with_interval(_bp, r["mean_bar_return"], r["mean_bar_return_low"],
                                                  r["mean_bar_return_high"]),
            "Sharpe (annualised)": _with_interval(_num, r["sharpe"], r["sharpe_low"], r["sharpe_high"]),
            "max drawdown": _pct(r["max_drawdown"]), "mean share held": _pct(r["mean_exposure"]),
            "turnover (x capital)": _num(r["turnover"], 1), "fees + impact USD": f"{r['cost_usd']:,.0f}",
            "round trips": f"{int(r['round_trips']):,}", "pools traded": int(r["pools"]),
        })
    return pd.DataFrame(rows).set_index("basket")


def basket_png(bar_returns: pd.DataFrame) -> bytes:
    """Growth of each basket (compounded return, %), gross and net in two panels (cash is the 0 line)."""
    fig = _figure(9.6, 3.4)
    fig.set_dpi(96)
    panels = (("gross", "before costs (fee 0, no impact)"), ("net", "after fee and AMM impact"))
    colors = {"forecast": "tab:blue", "volatility": "tab:orange", "buy_and_hold": "tab:gray"}
    index = bar_returns.index.tz_convert(None) if bar_returns.index.tz is not None else bar_returns.index
    for i, (costs, title) in enumerate(panels):
        ax = fig.add_axes((0.07 + 0.48 * i, 0.2, 0.42, 0.68))
        for column in bar_returns.columns:
            basket, side = str(column).rsplit(" ", 1)
            if side != costs and not (basket == "buy_and_hold" and costs == "gross"):
                continue
            label = BASKET_LABELS.get(basket, basket) + (" (net)" if side != costs else "")
            ax.plot(index, 100 * (np.cumprod(1.0 + bar_returns[column].to_numpy(dtype=np.float64)) - 1.0), label=label,
                    color=colors.get(basket), linewidth=1.2, linestyle=":" if side != costs else "-")
        ax.axhline(0.0, color="0.5", linewidth=0.7)
        # 9 pt on 9.6 in: still 9 pt at the page's 960 px (7 pt read as 7).
        ax.set_title(f"Compounded return (%), {title}", fontsize=10)
        ax.legend(fontsize=9, loc="upper left")
        ax.tick_params(labelsize=9)
        for label in ax.get_xticklabels():
            label.set_rotation(20)
    return _png(fig)


def basket_blocks(basket, pngs: dict[str, bytes]) -> list[_Block]:
    """The top-k basket beside the same basket chosen by past volatility and buy & hold
    (lineage/basket/step.py), gross and net, with intervals, and its picture."""
    blocks = [_Block("h2", "A top-k basket across pools, and the same basket without the forecast")]
    if basket.status != "ok" or basket.metrics is None:
        blocks.append(_Block("p", f"No basket was run: {basket.status}: {basket.reason}"))
        return blocks
    config = basket.config
    filt = ("only members whose E[r] x rebalance bars clears their round trip at the member's size are held "
            "(an empty slot is cash)" if config.cost_filter else "no cost filter")
    blocks.append(_Block("p", (
        f"Every {config.rebalance_bars} bars, the top {config.top_k} pools by the forecast's E[r] = 0.3 q10 + 0.4 q50 "
        f"+ 0.3 q90 among those with a signal known at the bar; {filt}. The yardstick picks the top "
        f"{config.top_k} by past realised variance (vol_risk) on the same schedule, with no forecast. Each pool runs "
        f"in its own NautilusTrader engine of {config.basket_capital_usd / config.top_k:,.0f} USD (capital "
        f"{config.basket_capital_usd:,.0f} USD / {config.top_k}), next-bar fills, fee and AMM impact at the pool's "
        f"liquidity; each slot weighs 1/{config.top_k} and the basket compounds its members' per-bar returns. Buy & hold: every candidate pool, "
        f"equal capital, holding {100 * basket.matched_exposure:.0f} % (the forecast basket's share of slots filled). "
        f"Span {basket.span_start} to {basket.span_end}. Intervals: 95 % block bootstrap in calendar time.")))
    blocks.append(_Block("table", table=basket_display(basket.metrics)))
    pngs["basket"] = basket_png(basket.bar_returns)
    blocks.append(_Block("img", "basket"))
    return blocks


def _signal_evidence_blocks(result, pngs: dict[str, bytes]) -> list[_Block]:
    """What the signal earns before any rule (lineage/signal_evidence): its tables and pictures."""
    from q50_assets.lineage.signal_evidence.rules import evidence_sections

    blocks = [_Block("h2", "What the signal earns, before any rule")]
    for kind, content in evidence_sections(result.evidence, result.config):
        if kind == "table":
            blocks.append(_Block("table", table=content))
        elif kind == "img":
            if content in result.pngs:
                pngs[content] = result.pngs[content]
                blocks.append(_Block("img", content))
        else:
            blocks.append(_Block(kind, str(content)))
    return blocks


def verdict_blocks(verdict) -> list[_Block]:
    """The verdict first: what the signal shows, apart from what the best rule realises after costs."""
    from q50_assets.lineage.portfolio.verdict import verdict_display

    blocks = [_Block("h2", "Verdict"), _Block("p", "What the signal shows. " + verdict.signal),
              _Block("p", "What the best rule realises after costs. " + verdict.rule)]
    table = verdict_display(verdict.rules)
    if len(table):
        blocks.append(_Block("table", table=table))
    return blocks


RULE_COLUMNS = {"portfolio_return": "portfolio return", "portfolio_sharpe": "portfolio Sharpe",
                "median_return": "median pool return", "mean_cost_drag": "mean cost drag (per pool)",
                "trades": "trades", "mean_position": "mean position", "mean_holding_bars": "holding bars"}


def rule_blocks(rule_tables: dict) -> list[_Block]:
    """Each rule gross and net on the pools where it traded, beside buy & hold at its exposure."""
    blocks = [_Block("h2", "Each rule, gross and net"),
              _Block("p", "Each rule on the pools where it traded: after fee and impact, the very same decisions at "
                          "zero cost (what the signal earned; the difference is what costs took), buy & hold at the "
                          "rule's own mean exposure and in full, and cash. Portfolio = the equal-weight portfolio of "
                          "those pools present at each bar.")]
    for rule, table in rule_tables.items():
        if table is None or table.empty:
            blocks.append(_Block("p", f"{rule}: traded in no pool."))
            continue
        shown = pd.DataFrame(index=table.index)
        for column, label in RULE_COLUMNS.items():
            if column not in table:
                continue
            values = table[column]
            if column in ("portfolio_return", "median_return", "mean_cost_drag", "mean_position"):
                shown[label] = [_pct(v, 2) if pd.notna(v) else "" for v in values]
            elif column == "trades":
                shown[label] = [f"{int(v):,}" for v in values]
            else:
                shown[label] = [_num(v) if pd.notna(v) else "" for v in values]
        blocks.append(_Block("p", f"{rule} ({int(table.loc[rule, 'pools'])} pools):"))
        blocks.append(_Block("table", table=shown))
    return blocks


def capacity_display(curve: CapacityCurve) -> pd.DataFrame:
    """Net edge per round trip [95 % interval], trade sizes down, reserve multipliers across; a
    dagger where the impact cap binds for most trips (cost no longer grows with size there)."""
    table = curve.table
    if not curve.enough:  # one line, not a grid of the same refusal
        return pd.DataFrame({"net edge": [f"too few round trips: {curve.trips} < {curve.min_trips}"]},
                            index=pd.Index([curve.variant], name="variant"))
    sizes = list(table.index.levels[0])
    factors = list(table.index.levels[1])
    out = {}
    for m in factors:
        column = []
        for size in sizes:
            row = table.loc[(size, m)]
            if row["status"] != "ok":
                column.append(row["status"])
                continue
            cell = _with_interval(lambda v: _pct(v, 2), row["net_edge"], row["net_edge_low"], row["net_edge_high"])
            column.append(cell + (" †" if row["capped_share"] >= 0.5 else ""))
        out[f"reserve x{m:g}"] = column
    display = pd.DataFrame(out, index=pd.Index([f"{v:,.0f}" if v >= 100 else f"{v:g}" for v in sizes],
                                               name="trade size (USD)"))
    return display


def capacity_markdown(curve: CapacityCurve) -> str:
    """The capacity table alone (asset metadata)."""
    return markdown_table(capacity_display(curve))


def _capacity_blocks(curve: CapacityCurve, assumed_reserve: str, pngs: dict[str, bytes]) -> list[_Block]:
    blocks = [_Block("h2", f"Capacity: {curve.variant}'s edge against size and liquidity")]
    y = curve.yardsticks
    text = (f"The {curve.trips} closed round trips of {curve.variant} replayed at each trade size with the "
            f"pool's reserve at entry scaled by each multiplier: mean gross return minus the one cost model's round "
            f"trip (fee {_pct(curve.fee_rate, 2)} a side + constant-product impact) per USD traded. Yardsticks: mean "
            f"gross return {_with_interval(lambda v: _pct(v, 2), *y.loc['mean gross return'])}; mean realised net "
            f"return at the trips' own sizes (median {curve.median_notional_usd:,.0f} USD) "
            f"{_with_interval(lambda v: _pct(v, 2), *y.loc['mean realised net return'])}. "
            f"{curve.open_trips_left_out} open trip(s) left out; {curve.assumed_reserve_trips} of the {curve.trips} "
            f"trips had no observed reserve and carry the assumed one"
            + (f" ({', '.join(f'{v:,.0f}' for v in curve.assumed_reserves_usd)} USD)" if curve.assumed_reserves_usd
               else "") + ". † the impact cap (one trade moves at most "
            f"{_pct(curve.max_reserve_fraction, 0)} of the quote reserve) binds for most trips: beyond it the model "
            "assumes the order is split over bars.")
    if not curve.enough:
        text = (f"{curve.variant} made {curve.trips} closed round trips ({curve.open_trips_left_out} open left out; "
                f"median size {curve.median_notional_usd:,.0f} USD; {curve.assumed_reserve_trips} at the assumed "
                f"reserve): fewer than the {curve.min_trips} a capacity curve needs, so none is given.")
    blocks.append(_Block("p", text))
    if assumed_reserve:
        blocks.append(_Block("p", f"Assumed reserve where the collector observed none: {assumed_reserve}."))
    blocks.append(_Block("table", table=capacity_display(curve)))
    if curve.enough:
        pngs["capacity"] = capacity_png(curve)
        blocks.append(_Block("img", "capacity"))
    return blocks


def render_report(inputs: ReportInputs) -> Report:
    """Compute the portfolio tables from ``inputs`` and render them (module docstring)."""
    pngs: dict[str, bytes] = {}
    tables: dict[str, pd.DataFrame] = {}
    blocks: list[_Block] = []

    trip_returns = None
    if inputs.round_trips is not None and {"pool_id", "entry_filled_at", "net_return"} <= set(inputs.round_trips):
        trip_returns = {"q50": inputs.round_trips}  # the stored round trips are q50's
    headline = headline_with_and_without_top(inputs.bar_returns, trials=inputs.trials,
                                             bar_seconds=inputs.bar_seconds, config=inputs.bootstrap,
                                             round_trips=trip_returns, round_trip_counts=inputs.round_trip_counts)
    tables["headline"] = headline
    portfolio = equal_weight_portfolio(inputs.bar_returns)
    pools = len(inputs.bar_returns)
    if inputs.provenance:
        labels = {"run_id": "run", "database": "database", "timeframe": "timeframe", "data_window": "data window",
                  "model_folds": "model", "config_hash": "configuration (hash of the result settings)"}
        blocks.append(_Block("p", "Made from: " + "; ".join(
            f"{labels.get(k, k)} {v}" for k, v in inputs.provenance.items()) + "."))
    if inputs.intro:
        blocks.append(_Block("p", inputs.intro))
    blocks.append(_Block("p", f"{pools} pools, out of sample, after every cost. Intervals: 95 % "
                              f"{inputs.bootstrap.bootstrap_method} block bootstrap (arch) in calendar time (blocks of {_duration(inputs.bootstrap.block)}, pools resampled "
                              f"together, {inputs.bootstrap.bootstrap_samples:,} replicates)."))
    if inputs.verdict is not None:
        blocks += verdict_blocks(inputs.verdict)
        tables["verdict"] = inputs.verdict.rules
    if inputs.signal_evidence is not None:
        blocks += _signal_evidence_blocks(inputs.signal_evidence, pngs)
    if inputs.rule_tables:
        blocks += rule_blocks(inputs.rule_tables)
        for rule, table in inputs.rule_tables.items():
            tables[f"rule_{rule}"] = table
    if inputs.basket is not None:
        blocks += basket_blocks(inputs.basket, pngs)
        if getattr(inputs.basket, "metrics", None) is not None:
            tables["basket"] = inputs.basket.metrics
    blocks.append(_Block("h2", "Headline: q50 on the pools where it traded"))
    blocks.append(_Block("p", HEADLINE_CAPTION.replace("the stated minimum",
                                                       f"{inputs.bootstrap.min_round_trips_for_interval}")))
    blocks.append(_Block("table", table=headline_display(headline)))
    excluded = headline.xs(headline.index.get_level_values("sample")[-1], level="sample")["excluded"]
    blocks.append(_Block("p", "Left out of the second sample, per variant (its best pools by compounded "
                              "return): " + "; ".join(f"{v}: {e}" for v, e in excluded.items()) + "."))
    pngs["equity_curves"] = equity_curves_png(portfolio)
    blocks.append(_Block("img", "equity_curves"))
    blocks += trials_blocks(inputs.trials_ledger, inputs.trials)
    if inputs.trials_ledger is not None:
        tables["trials"] = inputs.trials_ledger

    if inputs.permutation is not None:
        null = inputs.permutation
        blocks.append(_Block("h2", "Against chance"))
        blocks.append(_Block("p", f"{inputs.permutation_statistic}: {null.statistic:.6g}; null mean "
                                  f"{float(np.mean(null.draws)):.6g}, p = {null.p_value:.3f} "
                                  f"({len(null.draws):,} draws)."))
        pngs["permutation_null"] = permutation_png(null, inputs.permutation_statistic)
        blocks.append(_Block("img", "permutation_null"))

    if inputs.model is not None:
        blocks += _model_blocks(inputs.model, pngs)
        tables["skill"] = inputs.model.skill
        tables["reliability"] = inputs.model.reliability

    if inputs.hit_rate is not None:
        h = inputs.hit_rate
        blocks.append(_Block("h2", "Signals net of cost"))
        blocks.append(_Block("p", f"Tradeable signals whose realised return beat their expected cost: "
                                  f"{_with_interval(_pct, h['hit_rate'], h['hit_rate_low'], h['hit_rate_high'])} of "
                                  f"{h['tradeable_signals']:,}; every labelled bar traded long: "
                                  f"{_with_interval(_pct, h['long_every_bar_hit_rate'], h['long_every_bar_low'], h['long_every_bar_high'])}"
                                  f" of {h['long_every_bar_rows']:,}; difference "
                                  f"{_with_interval(_pct, h['difference'], h['difference_low'], h['difference_high'])}."))

    if inputs.round_trips is not None:
        blocks.append(_Block("h2", "Where the edge lives (Q50 round trips)"))
        breakdowns = edge_breakdowns(inputs.round_trips, bar_seconds=inputs.bar_seconds, config=inputs.bootstrap)
        for by, table in breakdowns.items():
            tables[f"breakdown_{by}"] = table
            blocks.append(_Block("p", f"By {by.replace('_', ' ')}:"))
            blocks.append(_Block("table", table=breakdown_display(table)))
        if len(inputs.round_trips):
            pngs["breakdowns"] = breakdowns_png(breakdowns)
            blocks.append(_Block("img", "breakdowns"))

    if inputs.capacity is not None:
        tables["capacity"] = inputs.capacity.table
        blocks += _capacity_blocks(inputs.capacity, inputs.assumed_reserve, pngs)

    markdown, page = _render(inputs.title, blocks, pngs)
    return Report(markdown=markdown, pngs=pngs, html=page, tables=tables)


__all__ = [
    "PermutationNull",
    "Report",
    "basket_blocks",
    "basket_display",
    "basket_png",
    "ReportInputs",
    "breakdowns_png",
    "capacity_display",
    "capacity_markdown",
    "equity_curves_png",
    "headline_display",
    "headline_markdown",
    "markdown_with_pictures",
    "permutation_png",
    "pooled_permutation",
    "reliability_png",
    "render_report",
    "skill_display",
    "trials_blocks",
    "trials_display",
]
