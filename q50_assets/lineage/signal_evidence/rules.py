"""What the Q50 forecast earns before any rule: the signal ranked across pools, bar by bar, as
alphalens' factor tear sheet does (quantile groups, forward returns by horizon, rank IC, turnover),
with block-bootstrap intervals, a breakeven cost, a signal-level null and the decomposition a
sceptic asks for first.

Pure pandas/numpy plus alphalens-reloaded (its definitions) and arch (its bootstrap); no Dagster.

**Time.** A signal for bar t (open time t) is known at ``known_at`` (the bar's close at the
earliest). The decision bar is the bar whose close is the first close at or after ``known_at``;
its order fills ``fill_latency_bars`` (L) bars later, at the fill bar's close (or its typical
price (high + low + close) / 3, ``fill_price``). Forward returns therefore start at the FILL bar:

    r_h = close(fill bar + h) / P_fill - 1,  fill bar = decision bar + L

so no figure earns the move between the decision and the fill, which no strategy can take
(alphalens' own forward returns start at the factor's timestamp: we compute them here and hand
alphalens the finished frame). Returns are GROSS (no cost).

**Missing bars** are real (GeckoTerminal omits intervals without swaps). Each pool is put on a
full time grid from its first to its last complete bar. A row is excluded, and counted under its
reason, when: its forecast is missing; its fill bar is missing (no swap to fill at); its fill bar
has zero volume (the engine fills nothing there); the horizon runs past the pool's last bar; or
its bar has fewer than ``min_pools`` pools left (no cross-section). An end bar missing inside the
pool's span is marked at the last close before it (no swap: the price did not change); those rows
are counted too (``end price carried over a missing bar``), not excluded.

**Forecasts ranked.** ``E[r]`` = 0.3 q10 + 0.4 q50 + 0.3 q90 (the signals' distribution,
:func:`~q50_assets.lineage.signals.rules.expected_return_piecewise`; the frame's
``expected_value`` is signed by q50's direction and is not used), and ``q50``.

**Definitions per bar** (across the pools of the bar; q = ``quantiles``):

* quantile groups: alphalens ``quantize_factor`` (``pd.qcut`` of the bar's values into q groups;
  the top group is the basket);
* mean return by quantile: alphalens ``mean_return_by_quantile`` (gross, and demeaned);
* top-minus-all = mean r_h of the top group - mean r_h of every pool of the bar (= the top
  group's return after per-bar cross-sectional demeaning); top-minus-bottom likewise;
* drift = mean r_h of every pool of the bar (the market's move, shown apart);
* IC = Spearman rank correlation of the forecast with r_h (alphalens
  ``factor_information_coefficient``);
* turnover_h = alphalens ``quantile_turnover`` of the top group at lag h: the share of the basket
  that is new after h bars;
* **breakeven cost per side** at horizon h: ``breakeven_h = spread_h / (2 * turnover_h)``, with
  spread_h the mean top-minus-all h-bar return: a basket rebalanced every h bars earns spread_h
  and trades 2 x turnover_h of its value (the names leaving are sold, those entering bought) per
  rebalance; the same as spread per bar / (2 x turnover per bar). It stands beside the cost the
  one cost model charges per side at the signals' intended size (median expected_cost_fraction / 2).

Every mean over bars has a 95 % percentile interval from arch's ``CircularBlockBootstrap`` over
the per-bar values (blocks of ``evaluation.bootstrap_block_days`` days of bars, seeded), and
t = mean / bootstrap standard error (the block bootstrap keeps serial correlation, which
overlapping h-bar returns have), p two-sided from the normal.

**Signal-level null** (headline horizon = the first of ``horizons``): in each draw every pool's
forecasts are circularly shifted, by a random shift of ITS OWN, along that pool's rows that count
(forecast, return and bar all valid), then IC and top-minus-all are recomputed. Per pool rather
than one shift for all: pools cover different spans, and a common calendar shift would move a
pool's forecasts onto bars where it has no return, changing which pools make each bar's cross
section; per-pool shifts keep every bar's pools (and ``min_pools``) exactly, each pool's forecast
distribution and its persistent level. So the null keeps persistent differences between pools
and breaks only the timing: p = (1 + #draws >= observed) / (1 + draws).

**Decomposition** (headline horizon): the drift apart; E[r] ranked within terciles (``vol_buckets``)
of the forecast width q90 - q10 and, separately, of past realised volatility ``vol_risk`` (known
at the bar), top-minus-all within each bucket averaged across buckets; timing: each pool's
forecast minus its own expanding mean of strictly earlier forecasts (taken over all its signal
rows, before any exclusion, so no later bar changes it); and the ranking by width alone and by
past volatility alone, as yardsticks.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict

from q50_assets.lineage.common.markdown import markdown_table
from q50_assets.lineage.common.uncertainty import BootstrapConfig
from q50_assets.lineage.signals.rules import expected_return_piecewise
from q50_assets.settings import Settings, SignalEvidenceSettings

_NORMAL = NormalDist()

FORECASTS = {"E[r]": "er", "q50": "q50"}  # shown name -> panel column
EXCLUSION_REASONS = (
    "forecast missing",
    "fill bar missing (no swap to fill at)",
    "fill bar without volume (nothing fills)",
    "horizon past the pool's last bar",
    "bar with fewer than min_pools pools",
)
CARRIED = "end price carried over a missing bar (kept)"


class SignalEvidenceConfig(SignalEvidenceSettings):
    """The stage's settings section, plus the fill timing of the backtests and the bootstrap."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    fill_latency_bars: int
    fill_price: Literal["close", "typical"]
    bar_seconds: int
    bootstrap: BootstrapConfig

    @classmethod
    def of(cls, settings: Settings) -> "SignalEvidenceConfig":
        fills = settings.nautilus_trader.backtest
        return cls(**settings.signal_evidence.model_dump(), fill_latency_bars=fills.fill_latency_bars,
                   fill_price=fills.fill_price, bar_seconds=settings.bar_seconds,
                   bootstrap=BootstrapConfig.of(settings))

    @property
    def bar(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.bar_seconds)

    @property
    def block_bars(self) -> int:
        return max(1, math.ceil(self.bootstrap.block.total_seconds() / self.bar_seconds))


# ------------------------------------------------------------------ per pool: forecasts and forward returns


def _utc_index(index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ns")


def timing_component(values: pd.Series) -> pd.Series:
    """Each value minus the mean of the same pool's strictly earlier values (expanding); NaN for
    the first. ``values`` in time order; NaN values count in neither."""
    prior = values.shift(1).expanding().mean()
    return values - prior


def pool_forward_returns(pool_id: str, bars: pd.DataFrame, signals: pd.DataFrame,
                         config: SignalEvidenceConfig) -> tuple[pd.DataFrame, dict[str, dict[int, int]]]:
    """One pool's rows (index decision-bar open time): forecasts ``er``, ``q50``, ``width``,
    ``vol_risk``, ``timing_er``, ``timing_q50`` and forward returns ``r<h>`` from the fill bar
    (NaN where excluded), with the count of excluded rows per reason and horizon."""
    missing = [c for c in ("q10", "q50", "q90", "vol_risk", "known_at") if c not in signals.columns]
    if missing:
        raise ValueError(f"pool {pool_id}: signals lack columns {missing}")
    missing = [c for c in ("high", "low", "close", "volume") if c not in bars.columns]
    if missing:
        raise ValueError(f"pool {pool_id}: bars lack columns {missing}")
    bar = config.bar
    sig = signals.copy()
    sig.index = _utc_index(sig.index)
    if sig.index.has_duplicates:
        raise ValueError(f"pool {pool_id}: duplicated signal bars {list(sig.index[sig.index.duplicated()][:5])}")
    sig = sig.sort_index()
    known = pd.to_datetime(sig["known_at"], utc=True).dt.as_unit("ns")
    if known.isna().any():
        raise ValueError(f"pool {pool_id}: {int(known.isna().sum())} signals without known_at, first at "
                         f"{sig.index[known.isna()][0]}")
    early = known < sig.index + bar
    if early.any():
        raise ValueError(f"pool {pool_id}: signal of bar {sig.index[early][0]} known at {known[early].iloc[0]}, "
                         "before the bar closed (look-ahead)")

    q10, q50, q90 = (sig[c].to_numpy(dtype="float64") for c in ("q10", "q50", "q90"))
    out = pd.DataFrame(index=sig.index)
    out["er"] = expected_return_piecewise(q10, q50, q90)
    out["q50"] = q50
    out["width"] = q90 - q10
    out["vol_risk"] = sig["vol_risk"].to_numpy(dtype="float64")
    # Timing over every signal row with a forecast, before any exclusion (exclusions look ahead).
    for name in ("er", "q50"):
        has = out[name].notna()
        out[f"timing_{name}"] = timing_component(out.loc[has, name]).reindex(out.index)

    counts: dict[str, dict[int, int]] = {r: {h: 0 for h in config.horizons} for r in (*EXCLUSION_REASONS, CARRIED)}
    b = bars.copy()
    b.index = _utc_index(b.index)
    known = known.dt.as_unit("ns")
    b = b.sort_index()
    forecast_ok = np.isfinite(out["er"].to_numpy())
    for h in config.horizons:
        counts["forecast missing"][h] = int((~forecast_ok).sum())
    if not len(b):
        for h in config.horizons:
            counts["fill bar missing (no swap to fill at)"][h] += int(forecast_ok.sum())
            out[f"r{h}"] = np.nan
        return out, counts
    grid = pd.date_range(b.index[0], b.index[-1], freq=bar)
    on_grid = b.reindex(grid)
    present = on_grid["close"].notna().to_numpy()
    close = on_grid["close"].to_numpy(dtype="float64")
    close_carried = on_grid["close"].ffill().to_numpy(dtype="float64")
    volume = on_grid["volume"].to_numpy(dtype="float64")
    fill_ref = close if config.fill_price == "close" else (
        (on_grid["high"] + on_grid["low"] + on_grid["close"]).to_numpy(dtype="float64") / 3.0)

    # The decision bar: the first bar whose close is at or after known_at.
    bar_ns = int(bar.value)
    decision_open_ns = -(-known.astype("int64").to_numpy() // bar_ns) * bar_ns - bar_ns  # ceil to a close, minus a bar
    fill_pos = (decision_open_ns + config.fill_latency_bars * bar_ns - grid[0].value) // bar_ns
    n = len(grid)
    in_grid = (fill_pos >= 0) & (fill_pos < n)
    safe = np.clip(fill_pos, 0, n - 1)
    fill_present = in_grid & present[safe]
    fill_volume = np.where(fill_present, volume[safe], np.nan)
    p_fill = np.where(fill_present, fill_ref[safe], np.nan)
    for h in config.horizons:
        end = fill_pos + h
        end_in = (end >= 0) & (end < n)
        end_safe = np.clip(end, 0, n - 1)
        r = np.where(end_in, close_carried[end_safe], np.nan) / p_fill - 1.0
        ok = forecast_ok.copy()
        for reason, bad in (("fill bar missing (no swap to fill at)", ~fill_present & (fill_pos < n)),
                            ("horizon past the pool's last bar", ~end_in | (fill_pos >= n)),
                            ("fill bar without volume (nothing fills)", ~(fill_volume > 0))):
            hit = ok & bad
            counts[reason][h] += int(hit.sum())
            ok &= ~hit
        ok &= np.isfinite(r)
        counts[CARRIED][h] = int((ok & end_in & ~present[end_safe]).sum())
        out[f"r{h}"] = np.where(ok, r, np.nan)
    return out, counts


@dataclass
class Panel:
    """Every pool's rows, (date = decision bar open, asset = pool), with the exclusion counts."""

    frame: pd.DataFrame
    exclusions: pd.DataFrame  # reason x horizon: rows
    horizons: tuple[int, ...]


def evidence_panel(bars: dict[str, pd.DataFrame], signals: dict[str, pd.DataFrame],
                   config: SignalEvidenceConfig) -> Panel:
    """The pooled panel of forecasts and forward returns; bars with fewer than ``min_pools`` pools
    holding a return at a horizon have that horizon's returns set to NaN (counted)."""
    frames, counts = [], {}
    for pool_id in sorted(signals):
        sig = signals[pool_id]
        if sig is None or not len(sig):
            continue
        if pool_id not in bars:
            raise ValueError(f"pool {pool_id}: signals but no bars")
        rows, pool_counts = pool_forward_returns(pool_id, bars[pool_id], sig, config)
        frames.append(rows.assign(asset=pool_id))
        for reason, by_h in pool_counts.items():
            for h, c in by_h.items():
                counts[(reason, h)] = counts.get((reason, h), 0) + c
    if frames:
        frame = pd.concat(frames)
        frame.index.name = "date"
        frame = frame.set_index("asset", append=True).sort_index()
    else:
        frame = pd.DataFrame(columns=["er", "q50", "width", "vol_risk", "timing_er", "timing_q50",
                                      *(f"r{h}" for h in config.horizons)],
                             index=pd.MultiIndex.from_arrays([pd.DatetimeIndex([], tz="UTC"), []],
                                                             names=["date", "asset"]))
    for h in config.horizons:
        col = f"r{h}"
        pools = frame[col].notna().groupby(level="date").transform("sum")
        thin = frame[col].notna() & (pools < config.min_pools)
        counts[("bar with fewer than min_pools pools", h)] = int(thin.sum())
        frame.loc[thin, col] = np.nan
    exclusions = pd.DataFrame(
        [[counts.get((reason, h), 0) for h in config.horizons] for reason in (*EXCLUSION_REASONS, CARRIED)],
        index=pd.Index([*EXCLUSION_REASONS, CARRIED], name="reason"), columns=[f"{h} bar" for h in config.horizons])
    return Panel(frame, exclusions, tuple(config.horizons))


# ------------------------------------------------------------------ bars x pools core (the null repeats it)


def wide(panel: Panel, column: str) -> pd.DataFrame:
    """A panel column as a (date x pool) matrix."""
    return panel.frame[column].unstack("asset")


def quantile_bins(values: np.ndarray, valid: np.ndarray, q: int) -> np.ndarray:
    """Per row (bar), pd.qcut(values[valid], q, labels=False) -- 0 .. q-1, -1 where not valid --
    computed for many rows at once (leading axes are batches). Matches alphalens' quantize_factor
    (tested): linear-interpolated quantile edges, right-closed bins."""
    x = np.where(valid, values, np.nan)
    s = np.sort(x, axis=-1)
    n = valid.sum(axis=-1)
    pos = (np.arange(1, q) / q)[None, :] * np.maximum(n.reshape(-1, 1) - 1, 0)
    pos = pos.reshape(*n.shape, q - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n[..., None] - 1, 0))
    frac = pos - lo
    a = np.take_along_axis(s, lo, axis=-1)
    b = np.take_along_axis(s, hi, axis=-1)
    with np.errstate(invalid="ignore"):
        edges = np.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)  # numpy's lerp
        bins = (x[..., None] > edges[..., None, :]).sum(axis=-1)
    return np.where(valid, bins, -1)


def _masked_mean(r: np.ndarray, mask: np.ndarray) -> np.ndarray:
    count = mask.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(mask, r, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)


def _ranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank, as scipy's spearmanr) along the last axis among
    the valid cells; NaN elsewhere."""
    x = np.where(valid, values, np.nan)
    flat = x.reshape(-1, x.shape[-1])
    return pd.DataFrame(flat).rank(axis=1, method="average").to_numpy().reshape(x.shape)


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per row over the cells where both are finite (NaN with fewer than 2)."""
    both = np.isfinite(a) & np.isfinite(b)
    n = both.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        am = np.where(both, a, 0.0).sum(-1) / n
        bm = np.where(both, b, 0.0).sum(-1) / n
        ad, bd = np.where(both, a - am[..., None], 0.0), np.where(both, b - bm[..., None], 0.0)
        c = (ad * bd).sum(-1) / np.sqrt((ad ** 2).sum(-1) * (bd ** 2).sum(-1))
    return np.where(n >= 2, c, np.nan)


def spread_by_bar(forecast: np.ndarray, returns: np.ndarray, valid: np.ndarray, q: int,
                  buckets: np.ndarray | None = None, n_buckets: int = 0) -> dict[str, np.ndarray]:
    """Per bar: top-minus-all and top-minus-bottom of ``forecast``'s quantile groups, and the rank
    IC; within ``buckets`` (ints per cell) when given, each bucket ranked on its own and the
    spreads averaged across buckets (the IC is then the mean within-bucket IC)."""
    groups = [valid] if buckets is None else [valid & (buckets == k) for k in range(n_buckets)]
    tma, tmb, ics = [], [], []
    for v in groups:
        bins = quantile_bins(forecast, v, q)
        top_mean = _masked_mean(returns, bins == q - 1)
        tma.append(top_mean - _masked_mean(returns, v))
        tmb.append(top_mean - _masked_mean(returns, bins == 0))
        ics.append(_row_corr(_ranks(forecast, v), _ranks(returns, v)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"top_minus_all": np.nanmean(np.stack(tma), axis=0),
                "top_minus_bottom": np.nanmean(np.stack(tmb), axis=0), "ic": np.nanmean(np.stack(ics), axis=0)}


def quantile_table(forecast: np.ndarray, returns: np.ndarray, valid: np.ndarray, q: int) -> dict[str, np.ndarray]:
    """Per bar (rows): mean return of each quantile group (bars x q, alphalens
    mean_return_by_quantile(by_date=True, demeaned=False)), the mean of all (drift), the rank IC
    (factor_information_coefficient) and the quantile bins (0-based; alphalens' are 1-based)."""
    bins = quantile_bins(forecast, valid, q)
    by_q = np.column_stack([_masked_mean(returns, bins == k) for k in range(q)])
    return {"by_quantile": by_q, "drift": _masked_mean(returns, valid), "bins": bins,
            "ic": _row_corr(_ranks(forecast, valid), _ranks(returns, valid))}


def top_turnover(bins: np.ndarray, top: int, h: int) -> np.ndarray:
    """alphalens' quantile_turnover of group ``top`` at lag h on a full bar grid (rows = bars):
    per bar, the share of the group's pools not in it h bars earlier; NaN when either bar has
    no such group (alphalens drops those)."""
    members = bins == top
    now_n = members.sum(axis=1)
    out = np.full(len(bins), np.nan)
    if len(bins) > h:
        new = (members[h:] & ~members[:-h]).sum(axis=1)
        ok = (now_n[h:] > 0) & (now_n[:-h] > 0)
        out[h:] = np.where(ok, new / np.maximum(now_n[h:], 1), np.nan)
    return out


def rank_autocorrelation(forecast: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """alphalens' factor_rank_autocorrelation at lag 1 on a full bar grid: per bar, the correlation
    across pools of the forecast's ranks with the previous bar's ranks."""
    ranks = _ranks(forecast, valid)
    out = np.full(len(ranks), np.nan)
    if len(ranks) > 1:
        out[1:] = _row_corr(ranks[1:], ranks[:-1])
    return out


# ------------------------------------------------------------------ bootstrap


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    se: float
    bars: int

    @property
    def t(self) -> float:
        return self.mean / self.se if self.se > 0 else float("nan")

    @property
    def p(self) -> float:
        t = self.t
        return float("nan") if math.isnan(t) else 2 * (1 - _NORMAL.cdf(abs(t)))


def bootstrap_means(values: np.ndarray, config: SignalEvidenceConfig) -> list[Estimate]:
    """Mean over bars of each column of ``values`` (bars x k; NaN = no value that bar) with a
    circular block bootstrap (arch) percentile interval and standard error."""
    from arch.bootstrap import CircularBlockBootstrap

    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0) if len(x) else np.full(x.shape[1], np.nan)
        counts = np.isfinite(x).sum(axis=0)
        block = config.block_bars
        if len(x) < 2 * block:
            return [Estimate(float(m), math.nan, math.nan, math.nan, int(c)) for m, c in zip(mean, counts)]
        # arch draws the block indices; each replicate's mean is then one product of its row counts
        # with the values (NaN rows count in neither sum).
        bs = CircularBlockBootstrap(block, np.arange(len(x)), seed=config.bootstrap.bootstrap_seed)
        reps_n = config.bootstrap.bootstrap_samples
        counts_rows = np.empty((reps_n, len(x)))
        for i in range(reps_n):
            counts_rows[i] = np.bincount(bs.update_indices(), minlength=len(x))
        finite = np.isfinite(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (counts_rows @ np.where(finite, x, 0.0)) / (counts_rows @ finite.astype(np.float64))
        tail = 100 * (1 - config.bootstrap.confidence) / 2
        low, high = np.nanpercentile(reps, tail, axis=0), np.nanpercentile(reps, 100 - tail, axis=0)
        se = np.nanstd(reps, axis=0, ddof=1)
    return [Estimate(float(m), float(lo), float(hi), float(s), int(c)) for m, lo, hi, s, c in zip(mean, low, high, se, counts)]


# ------------------------------------------------------------------ null


def circular_null(forecast: np.ndarray, returns: np.ndarray, valid: np.ndarray, q: int, draws: int,
                  seed: int, chunk: int = 50) -> dict[str, np.ndarray]:
    """Null draws of mean IC and mean top-minus-all over bars: every pool's (column's) forecasts
    circularly shifted among its own valid cells by a shift of its own (module docstring)."""
    rng = np.random.default_rng(seed)
    used = valid.any(axis=1)  # bars without a valid cell add nothing: left out of the arrays
    forecast, returns, valid = forecast[used], returns[used], valid[used]
    cols = [np.flatnonzero(valid[:, j]) for j in range(valid.shape[1])]
    out = {"ic": np.empty(draws), "top_minus_all": np.empty(draws)}
    # The returns are not shifted: their mean and ranks per bar are computed once.
    all_mean = _masked_mean(returns, valid)
    return_ranks = _ranks(returns, valid)
    done = 0
    while done < draws:
        k = min(chunk, draws - done)
        valid_k = np.broadcast_to(valid, (k, *valid.shape))
        returns_k = np.broadcast_to(returns, valid_k.shape)
        return_ranks_k = np.broadcast_to(return_ranks, valid_k.shape)
        shifted = np.broadcast_to(forecast, (k, *forecast.shape)).copy()
        for j, rows in enumerate(cols):
            if len(rows) < 2:
                continue
            shifts = rng.integers(1, len(rows), size=k)
            vals = forecast[rows, j]
            idx = (np.arange(len(rows))[None, :] - shifts[:, None]) % len(rows)
            shifted[:, rows, j] = vals[idx]
        bins = quantile_bins(shifted, valid_k, q)
        top = _masked_mean(returns_k, bins == q - 1)
        ic = _row_corr(_ranks(shifted, valid_k), return_ranks_k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["ic"][done:done + k] = np.nanmean(ic, axis=-1)
            out["top_minus_all"][done:done + k] = np.nanmean(top - all_mean, axis=-1)
        done += k
    return out


def null_p_value(observed: float, draws: np.ndarray) -> float:
    """(1 + #draws >= observed) / (1 + draws)."""
    return float((1 + np.sum(draws >= observed)) / (1 + len(draws)))


# ------------------------------------------------------------------ the evidence


@dataclass
class SignalEvidence:
    """Tables (DataFrames) and headline figures of :func:`signal_evidence` (module docstring)."""

    by_quantile: pd.DataFrame  # (forecast, horizon, quantile): gross and demeaned mean h-bar return
    spreads: pd.DataFrame  # (forecast, horizon): top-minus-all, top-minus-bottom, drift, IC, turnover, breakeven
    decomposition: pd.DataFrame  # name: spread bp per bar at the headline horizon, interval, t, p, IC
    null: pd.DataFrame  # (forecast, statistic): observed, null mean, null 95th percentile, p
    exclusions: pd.DataFrame  # reason x horizon
    summary: dict
    null_distribution: dict = field(default_factory=dict, repr=False)  # forecast -> statistic -> draws


def signal_evidence(panel: Panel, config: SignalEvidenceConfig, cost_per_side: float) -> SignalEvidence:
    """Every table of the module docstring from ``panel``; ``cost_per_side``: the fraction the one
    cost model charges per side at the intended size (the breakeven's yardstick)."""
    q, frame = config.quantiles, panel.frame
    head = config.horizons[0]
    dates = frame.index.get_level_values("date")
    grid = (pd.date_range(dates.min(), dates.max(), freq=config.bar) if len(frame)
            else pd.DatetimeIndex([], tz="UTC"))
    pools = sorted(frame.index.get_level_values("asset").unique())

    def mat(col: str) -> np.ndarray:
        return frame[col].unstack("asset").reindex(index=grid, columns=pools).to_numpy(dtype=np.float64)

    m = {c: mat(c) for c in ("er", "q50", "width", "vol_risk", "timing_er", "timing_q50",
                              *(f"r{h}" for h in config.horizons))}
    rows_q, rows_s = [], []
    for name, col in FORECASTS.items():
        F = m[col]
        for h in config.horizons:
            R = m[f"r{h}"]
            valid = np.isfinite(F) & np.isfinite(R)
            if not valid.any():
                continue
            t = quantile_table(F, R, valid, q)
            by_q = t["by_quantile"]
            demeaned = by_q - t["drift"][:, None]
            est = bootstrap_means(np.column_stack([by_q, demeaned]), config)
            for k in range(q):
                g, d = est[k], est[q + k]
                rows_q.append({"forecast": name, "horizon": h, "quantile": k + 1, "mean": g.mean, "low": g.low,
                               "high": g.high, "demeaned": d.mean, "demeaned_low": d.low, "demeaned_high": d.high})
            per_bar = np.column_stack([by_q[:, -1] - t["drift"], by_q[:, -1] - by_q[:, 0], t["drift"], t["ic"]])
            e_tma, e_tmb, e_drift, e_ic = bootstrap_means(per_bar, config)
            with np.errstate(invalid="ignore"):
                turnover = float(np.nanmean(top_turnover(t["bins"], q - 1, h)))
                autocorr = float(np.nanmean(rank_autocorrelation(F, valid))) if h == head else math.nan
            breakeven = e_tma.mean / (2 * turnover) if turnover > 0 else math.nan
            rows_s.append({"forecast": name, "horizon": h, "bars": e_tma.bars, "pool_bars": int(valid.sum()),
                           "top_minus_all": e_tma.mean, "top_minus_all_low": e_tma.low,
                           "top_minus_all_high": e_tma.high, "top_minus_all_t": e_tma.t,
                           "top_minus_all_per_bar": e_tma.mean / h,
                           "top_minus_bottom": e_tmb.mean, "top_minus_bottom_low": e_tmb.low,
                           "top_minus_bottom_high": e_tmb.high, "top_minus_bottom_t": e_tmb.t,
                           "drift": e_drift.mean, "drift_low": e_drift.low, "drift_high": e_drift.high,
                           "ic": e_ic.mean, "ic_low": e_ic.low, "ic_high": e_ic.high, "ic_t": e_ic.t,
                           "turnover": turnover, "rank_autocorrelation": autocorr,
                           "breakeven_per_side": breakeven, "cost_per_side": cost_per_side})
    by_quantile = pd.DataFrame(rows_q).set_index(["forecast", "horizon", "quantile"]) if rows_q else pd.DataFrame()
    spreads = pd.DataFrame(rows_s).set_index(["forecast", "horizon"]) if rows_s else pd.DataFrame()

    if not rows_s:  # no bar with enough pools: nothing to rank, decompose or test
        return SignalEvidence(by_quantile, spreads, pd.DataFrame(), pd.DataFrame(), panel.exclusions,
                              {"horizon_headline": head,
                               "pools": int(frame.index.get_level_values("asset").nunique()) if len(frame) else 0,
                               "bars_with_min_pools": 0, "pool_bars": 0, "cost_per_side": cost_per_side})

    # Decomposition and null at the headline horizon, on the same grid.
    R = m[f"r{head}"]
    base_valid = np.isfinite(R)
    er, q50, width, vol = m["er"], m["q50"], m["width"], m["vol_risk"]
    nb = config.vol_buckets
    width_b = quantile_bins(width, base_valid & np.isfinite(width), nb)
    vol_ok = base_valid & np.isfinite(vol)
    vol_b = quantile_bins(vol, vol_ok, nb)
    variants = [
        ("E[r]", er, None, None),
        ("q50", q50, None, None),
        ("E[r] within width terciles", er, width_b, None),
        ("E[r] within past-vol terciles", er, vol_b, vol_ok),
        ("E[r] timing (minus own past mean)", m["timing_er"], None, None),
        ("q50 timing (minus own past mean)", m["timing_q50"], None, None),
        ("width q90-q10 alone", width, None, None),
        ("past vol (vol_risk) alone", vol, None, None),
    ]
    rows_d, per_bar_cols = [], []
    for name, F, buckets, extra in variants:
        valid = base_valid & np.isfinite(F) & (True if extra is None else extra)
        enough = valid.sum(axis=1) >= config.min_pools
        valid &= enough[:, None]
        st = spread_by_bar(F, R, valid, q, buckets, nb if buckets is not None else 0)
        per_bar_cols.append((name, st))
    drift = _masked_mean(R, base_valid)
    stacked = np.column_stack([st["top_minus_all"] for _, st in per_bar_cols] + [drift]
                              + [st["ic"] for _, st in per_bar_cols])
    ests = bootstrap_means(stacked, config)
    n = len(per_bar_cols)
    for i, (name, _) in enumerate(per_bar_cols):
        e, ic = ests[i], ests[n + 1 + i]
        rows_d.append({"ranking": name, "spread_per_bar": e.mean / head, "low": e.low / head, "high": e.high / head,
                       "t": e.t, "p": e.p, "ic": ic.mean, "ic_low": ic.low, "ic_high": ic.high, "bars": e.bars})
    d = ests[n]
    rows_d.append({"ranking": "market drift (mean of all pools)", "spread_per_bar": d.mean / head,
                   "low": d.low / head, "high": d.high / head, "t": d.t, "p": d.p, "ic": math.nan,
                   "ic_low": math.nan, "ic_high": math.nan, "bars": d.bars})
    decomposition = pd.DataFrame(rows_d).set_index("ranking")

    rows_n, draws_out = [], {}
    for name, F, _, _ in variants[:2]:
        valid = base_valid & np.isfinite(F)
        valid &= (valid.sum(axis=1) >= config.min_pools)[:, None]
        observed = spread_by_bar(F, R, valid, q)
        draws = circular_null(F, R, valid, q, config.null_draws, config.null_seed)
        draws_out[name] = draws
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for stat in ("ic", "top_minus_all"):
                obs = float(np.nanmean(observed[stat]))
                rows_n.append({"forecast": name, "statistic": stat, "observed": obs,
                               "null_mean": float(np.mean(draws[stat])),
                               "null_95": float(np.percentile(draws[stat], 95)),
                               "p_value": null_p_value(obs, draws[stat]), "draws": len(draws[stat])})
    null = pd.DataFrame(rows_n).set_index(["forecast", "statistic"]) if rows_n else pd.DataFrame()

    summary = _summary(spreads, decomposition, null, panel, config, cost_per_side)
    return SignalEvidence(by_quantile, spreads, decomposition, null, panel.exclusions, summary, draws_out)


def _summary(spreads, decomposition, null, panel, config, cost_per_side) -> dict:
    head = config.horizons[0]
    r = panel.frame[f"r{head}"]
    out = {"horizon_headline": head, "pools": int(panel.frame.index.get_level_values("asset").nunique()),
           "bars_with_min_pools": int(r.dropna().index.get_level_values("date").nunique()),
           "pool_bars": int(r.notna().sum()), "cost_per_side": cost_per_side}
    if len(spreads):
        er = spreads.loc["E[r]"]
        out["best_horizon"] = int(er["top_minus_all_per_bar"].idxmax())
        for key, col in (("er_ic", "ic"), ("er_top_minus_all", "top_minus_all"), ("er_turnover", "turnover"),
                         ("er_breakeven_per_side", "breakeven_per_side")):
            out[key] = float(er.loc[head, col])
        out["er_top_minus_all_low"] = float(er.loc[head, "top_minus_all_low"])
        out["er_top_minus_all_high"] = float(er.loc[head, "top_minus_all_high"])
        out["breakeven_min"] = float(er["breakeven_per_side"].min())
        out["breakeven_max"] = float(er["breakeven_per_side"].max())
    if len(null):
        out["null_p_er_top_minus_all"] = float(null.loc[("E[r]", "top_minus_all"), "p_value"])
        out["null_p_er_ic"] = float(null.loc[("E[r]", "ic"), "p_value"])
        out["null_p_q50_top_minus_all"] = float(null.loc[("q50", "top_minus_all"), "p_value"])
    if len(decomposition):
        out["drift_per_bar"] = float(decomposition.loc["market drift (mean of all pools)", "spread_per_bar"])
    return out


# ------------------------------------------------------------------ rendering


def _bp(v: float, digits: int = 0) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{1e4 * v:+.{digits}f}"


def _iv(e: float, lo: float, hi: float, digits: int = 0) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{_bp(e, digits)} [no interval]"
    return f"{_bp(e, digits)} [{_bp(lo, digits)}, {_bp(hi, digits)}]"


def _num(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ic(e, lo, hi) -> str:
    return f"{_num(e, 3)} [{_num(lo, 3)}, {_num(hi, 3)}]"


def spreads_display(ev: SignalEvidence) -> pd.DataFrame:
    s = ev.spreads
    rows = []
    for (f, h), r in s.iterrows():
        rows.append({"forecast, horizon": f"{f}, {h} bar{'s' if h > 1 else ''}", "bars": f"{int(r['bars']):,}",
                     "top − all (bp per h bars)": _iv(r["top_minus_all"], r["top_minus_all_low"], r["top_minus_all_high"]),
                     "t": _num(r["top_minus_all_t"], 1),
                     "top − bottom (bp)": _iv(r["top_minus_bottom"], r["top_minus_bottom_low"], r["top_minus_bottom_high"]),
                     "drift (bp)": _iv(r["drift"], r["drift_low"], r["drift_high"]),
                     "rank IC": _ic(r["ic"], r["ic_low"], r["ic_high"]),
                     "top turnover": _num(r["turnover"], 2),
                     "breakeven bp/side = spread / (2 × turnover)": _bp(r["breakeven_per_side"]),
                     "charged bp/side": _bp(r["cost_per_side"])})
    return pd.DataFrame(rows).set_index("forecast, horizon")


def decomposition_display(ev: SignalEvidence) -> pd.DataFrame:
    d = ev.decomposition
    return pd.DataFrame({
        "spread (bp per bar)": [_iv(r["spread_per_bar"], r["low"], r["high"], 1) for _, r in d.iterrows()],
        "t": [_num(v, 1) for v in d["t"]], "p": [_num(v, 3) for v in d["p"]],
        "rank IC": ["" if not np.isfinite(r["ic"]) else _ic(r["ic"], r["ic_low"], r["ic_high"]) for _, r in d.iterrows()],
    }, index=d.index)


def null_display(ev: SignalEvidence) -> pd.DataFrame:
    n = ev.null
    fmt = lambda stat, v: _num(v, 4) if stat == "ic" else _bp(v, 1)  # noqa: E731
    return pd.DataFrame({
        "observed": [fmt(s, r["observed"]) for (_, s), r in n.iterrows()],
        "null mean": [fmt(s, r["null_mean"]) for (_, s), r in n.iterrows()],
        "null 95th pct": [fmt(s, r["null_95"]) for (_, s), r in n.iterrows()],
        "p": [f"{v:.3f}" for v in n["p_value"]],
    }, index=pd.Index([f"{f}: {'rank IC' if s == 'ic' else 'top − all (bp)'}" for f, s in n.index], name="statistic"))


def _figure(height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height), dpi=80)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # 110 dpi: the tight crop of a 10 in figure stays above the report page's 960 px content width,
    # so the page shows it full width without upscaling it.
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
    return buffer.getvalue()


def quantile_returns_png(ev: SignalEvidence) -> bytes:
    """Mean gross return by quantile and horizon (bp per bar), one panel per forecast."""
    forecasts = list(dict.fromkeys(ev.by_quantile.index.get_level_values("forecast")))
    fig = _figure(3.6)
    for i, f in enumerate(forecasts):
        ax = fig.add_subplot(1, len(forecasts), i + 1)
        t = ev.by_quantile.loc[f]
        horizons = list(dict.fromkeys(t.index.get_level_values("horizon")))
        quants = list(dict.fromkeys(t.index.get_level_values("quantile")))
        width = 0.8 / len(horizons)
        for j, h in enumerate(horizons):
            sub = t.loc[h].reindex(quants)
            ax.bar(np.arange(len(quants)) + j * width, 1e4 * sub["mean"] / h, width, label=f"{h} bar")
        ax.set_xticks(np.arange(len(quants)) + 0.4 - width / 2, [str(x) for x in quants])
        ax.set_xlabel(f"quantile of {f} (1 = lowest)", fontsize=10)
        ax.set_ylabel("mean gross return, bp per bar", fontsize=10)
        ax.set_title(f"Ranked by {f}", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.legend(fontsize=9, title="horizon", title_fontsize=9)
    fig.tight_layout()
    return _png(fig)


def ic_decay_png(ev: SignalEvidence) -> bytes:
    """Mean rank IC by horizon with its 95 % interval."""
    fig = _figure(3.2)
    ax = fig.add_subplot(1, 1, 1)
    for k, f in enumerate(dict.fromkeys(ev.spreads.index.get_level_values("forecast"))):
        s = ev.spreads.loc[f]
        x = np.arange(len(s)) + 0.1 * k
        ax.errorbar(x, s["ic"], yerr=[s["ic"] - s["ic_low"], s["ic_high"] - s["ic"]], marker="o", capsize=3, label=f)
        ax.set_xticks(np.arange(len(s)), [str(h) for h in s.index])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("horizon (bars after the fill)", fontsize=10)
    ax.set_ylabel("mean rank IC across pools", fontsize=10)
    ax.set_title("IC decay, 95 % block-bootstrap intervals", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return _png(fig)


def decomposition_png(ev: SignalEvidence) -> bytes:
    """Spread per bar of each ranking (and the drift) with its 95 % interval."""
    d = ev.decomposition
    fig = _figure(0.45 * len(d) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(d))[::-1]
    est, lo, hi = 1e4 * d["spread_per_bar"], 1e4 * d["low"], 1e4 * d["high"]
    ax.barh(y, est, color=["#888" if "drift" in i else "#4a7ab5" for i in d.index])
    ax.errorbar(est, y, xerr=[np.nan_to_num(est - lo), np.nan_to_num(hi - est)], fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(y, list(d.index))
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("top quantile minus all pools (market drift: mean of all), bp per bar", fontsize=10)
    ax.tick_params(labelsize=10)
    ax.set_title("Where the spread comes from, 95 % intervals", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def evidence_pngs(ev: SignalEvidence) -> dict[str, bytes]:
    if not len(ev.spreads):
        return {}
    return {"signal_quantile_returns": quantile_returns_png(ev), "signal_ic_decay": ic_decay_png(ev),
            "signal_decomposition": decomposition_png(ev)}


def evidence_sections(ev: SignalEvidence, config: SignalEvidenceConfig) -> list[tuple[str, object]]:
    """The evidence as (kind, content) pieces: ("p", text), ("table", DataFrame), ("img", name)."""
    s = ev.summary
    head = s["horizon_headline"]
    parts: list[tuple[str, object]] = [("p", (
        f"The forecast ranked across pools at every bar, before any rule and any cost: {s['pools']} pools, "
        f"{s['bars_with_min_pools']:,} bars with at least {config.min_pools} pools ({s['pool_bars']:,} pool-bars at "
        f"{head} bar). Returns are gross and start at the fill bar's {config.fill_price} price, "
        f"{config.fill_latency_bars} bar(s) after the deciding close; quantiles: {config.quantiles} per bar "
        f"(alphalens' definitions). Intervals: 95 % circular block bootstrap over bars (arch; blocks of "
        f"{config.block_bars} bars, {config.bootstrap.bootstrap_samples:,} replicates); t = mean / bootstrap s.e."))]
    if not len(ev.spreads):
        parts.append(("p", "No bar has enough pools with a signal and a forward return: nothing to rank."))
        parts.append(("table", ev.exclusions))
        return parts
    parts.append(("table", spreads_display(ev)))
    parts.append(("p", "Breakeven cost per side = mean top-minus-all h-bar return / (2 × top-group turnover after "
                       "h bars): a basket rebalanced every h bars, trading both sides of what changed. Charged: the one "
                       "cost model's round trip at the signals' intended size (median), halved."))
    parts.append(("img", "signal_quantile_returns"))
    parts.append(("img", "signal_ic_decay"))
    parts.append(("p", f"Decomposition at {head} bar (per bar). Top-minus-all is already net of the market's drift "
                       "(each bar's mean of all pools, shown apart); the volatility-neutral rows rank within "
                       f"{config.vol_buckets} buckets of the forecast width or of past volatility and average the "
                       "buckets; timing ranks each pool's forecast minus its own mean of earlier forecasts; width and "
                       "past volatility alone are yardsticks."))
    parts.append(("table", decomposition_display(ev)))
    parts.append(("img", "signal_decomposition"))
    parts.append(("p", f"Signal-level null ({config.null_draws} draws): each pool's forecasts circularly shifted in time "
                       "by a shift of its own (the same pools per bar, each pool's level kept: only the timing is "
                       "broken); p = (1 + draws ≥ observed) / (1 + draws)."))
    parts.append(("table", null_display(ev)))
    parts.append(("p", "Rows left out (and end prices carried over a missing bar, kept), per horizon:"))
    parts.append(("table", ev.exclusions))
    return parts


def evidence_markdown(ev: SignalEvidence, config: SignalEvidenceConfig, pngs: dict[str, bytes] | None = None) -> str:
    """Markdown of the evidence; pictures named ``<name>.png`` (embedded as data URIs when
    ``pngs`` is given)."""
    import base64

    out = []
    for kind, content in evidence_sections(ev, config):
        if kind == "p":
            out.append(str(content))
        elif kind == "table":
            out.append(markdown_table(content))
        elif kind == "img":
            src = (f"data:image/png;base64,{base64.b64encode(pngs[content]).decode()}" if pngs and content in pngs
                   else f"{content}.png")
            out.append(f"![{content}]({src})")
    return "\n\n".join(out) + "\n"


__all__ = ["CARRIED", "EXCLUSION_REASONS", "FORECASTS", "Panel", "SignalEvidence", "SignalEvidenceConfig",
           "bootstrap_means", "circular_null", "evidence_markdown", "evidence_panel", "evidence_pngs",
           "evidence_sections", "null_p_value", "pool_forward_returns", "quantile_bins", "signal_evidence",
           "spread_by_bar", "timing_component"]
