"""Uncertainty of every headline figure: calendar-time block bootstrap, probabilistic and
deflated Sharpe ratios, results without the best pools, and breakdowns of round trips.

Pure pandas/numpy (no Dagster). The inputs are the backtest stage's compact per-pool results:

* ``bar_returns``: per pool, a DataFrame indexed by bar CLOSE time (UTC) over the pool's
  out-of-sample span on the full time grid (missing bars flat, return 0), one column per
  variant (``q50``, ``q50_close``, ``buy_and_hold``, ``buy_and_hold_matched``, ``cash``, ...),
  values = per-bar simple return of equity net of all costs.
* ``round_trips``: one row per Q50 round trip with ``entry_filled_at``, ``net_return``,
  ``vol_regime``, ``momentum_regime``, ``signal_tier``, ``reserve_usd``, ``reserve_source``.

**The bootstrap.** Hourly returns of memecoin pools are neither independent in time nor across
pools (one market, one SOL price). Every interval here comes from a *block bootstrap in calendar
time*: the bar grid from the earliest to the latest time is cut into bins of one bar; a replicate
draws blocks of bins (a day or more) with replacement until it has as many bins as the sample,
and takes every row of every pool in the drawn bins. The blocks come from ``arch``: its circular
block bootstrap (default: blocks of exactly ``block``, wrapping around the end, so whole days and
their intraday pattern stay together) or its stationary bootstrap (geometric lengths of mean
``block``, also wrapping), chosen by ``bootstrap_method``. Wrapping matters: a moving-block
bootstrap that does not wrap draws the first and last bins far less often than the middle ones,
which narrows intervals against whatever happened at the ends. Pools are resampled jointly
(cross-pool correlation kept) and serial correlation within a block is kept. Every statistic is
a function of per-bin sums (a ratio of sums, a mean and a variance), so a replicate is one matrix
product of its bin counts with the binned sums. The interval is the percentile interval of the
replicates where the statistic is defined (95 % by default); the share of replicates where it is
not (e.g. a group with no round trip in the drawn days) is reported beside it (``empty_share``),
never dropped silently. With fewer than two blocks' worth of bins there is nothing to resample
independently and the interval is NaN; a group or variant with fewer than
``min_round_trips_for_interval`` round trips gets no interval either ("too few (n)").

**One weighting across pools.** Every portfolio figure (headline mean, Sharpe, hit rate, the PSR
on bars, the equity curves, the portfolio table's portfolio return and Sharpe) is of the SAME
series: the *equal-weight portfolio of the pools present at each bar*
(:func:`equal_weight_portfolio`): per bar close, the mean r over the pools whose out-of-sample
span covers that bar. A pool with a longer span weighs in at more bars, never more at one bar.

Definitions (r = per-bar net return of a pool's equity in a variant, p = the equal-weight
portfolio's per-bar return):

* ``mean_bar_return`` = mean of p over the bars where at least one pool is present.
* ``sharpe`` = annualised Sharpe of p: mean / std (ddof 1) x sqrt(bars per year).
* ``hit_rate`` = share of bars with p > 0 among those with p != 0 (bars the portfolio was
  exposed or paid a cost); flat bars say nothing about skill.
* PSR / DSR (Bailey & Lopez de Prado 2012, 2014) on the variant's round-trip net returns when
  they are given (q50), else on the NON-ZERO bars of p: a strategy that rarely trades is flat on
  most bars, and those exact zeros would inflate n and with it the PSR. Shown with n
  (``psr_n``) and the autocorrelation-adjusted effective n the PSR uses
  (:func:`effective_sample_size`):
  ``PSR(SR*) = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))`` with SR the
  per-observation Sharpe, g3 the skewness, g4 the (non-excess) kurtosis, n the effective n; the
  deflated Sharpe is ``PSR(SR0)`` with
  ``SR0 = sqrt(V) ((1 - e) Phi^-1(1 - 1/N) + e Phi^-1(1 - 1/(N e)))``, N the number of
  configurations tried (from the trial ledger, lineage/portfolio/portfolio.py ``dsr_trials``),
  e the Euler-Mascheroni constant and V the variance of the Sharpe ratios across those trials;
  when V is not given, the variance of the Sharpe estimator under the null, ``1 / (n - 1)``.
  N = 1 gives SR0 = 0 (DSR = PSR(0)).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
from arch.bootstrap import CircularBlockBootstrap, StationaryBootstrap
from pydantic import Field

from q50_assets.settings import BootstrapSettings, Settings

ONE_DAY = pd.Timedelta(days=1)
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


class BootstrapConfig(BootstrapSettings):
    """Block bootstrap in calendar time (module docstring): the settings' bootstrap keys."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Interval's coverage.")

    @property
    def block(self) -> pd.Timedelta:
        """At least a day: intraday seasonality and serial correlation stay in a block."""
        return pd.Timedelta(days=self.bootstrap_block_days)

    @classmethod
    def of(cls, settings: Settings) -> "BootstrapConfig":
        return cls(**settings.evaluation.model_dump(include=set(BootstrapSettings.model_fields)))


def _utc_times(times) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        raise ValueError("times must be tz-aware (UTC)")
    if idx.hasnans:
        raise ValueError(f"{int(idx.isna().sum())} times are NaT: every row needs a time to be binned")
    return idx.tz_convert("UTC")


@dataclass(frozen=True)
class TimeBins:
    """Each row's bin on a calendar grid of ``bar_seconds``, from ``origin``."""

    bin_of_row: np.ndarray  # int64, one per row
    n_bins: int
    block_bins: int
    origin: pd.Timestamp
    bar_seconds: int


def time_bins(times, bar_seconds: int, block: pd.Timedelta = ONE_DAY) -> TimeBins:
    """Bin rows by calendar time (one bin per bar) for :func:`block_bootstrap`."""
    if bar_seconds <= 0:
        raise ValueError(f"bar_seconds must be > 0, got {bar_seconds}")
    idx = _utc_times(times)
    block_bins = max(1, math.ceil(pd.Timedelta(block).total_seconds() / bar_seconds))
    if len(idx) == 0:
        return TimeBins(np.zeros(0, dtype=np.int64), 0, block_bins, pd.NaT, bar_seconds)
    origin = idx.min()
    offsets = (idx - origin).total_seconds().to_numpy()
    return TimeBins((offsets // bar_seconds).astype(np.int64), int(offsets.max() // bar_seconds) + 1,
                    block_bins, origin, bar_seconds)


def bin_sums(bins: TimeBins, values: np.ndarray, groups: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """Sum ``values`` (rows x k, or rows) per bin and group: shape (n_bins, n_groups, k) or (n_bins, n_groups)."""
    v = np.asarray(values, dtype=np.float64)
    squeeze = v.ndim == 1
    v = v.reshape(len(v), -1)
    g = np.zeros(len(v), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    out = np.zeros((bins.n_bins * n_groups, v.shape[1]))
    np.add.at(out, bins.bin_of_row * n_groups + g, np.nan_to_num(v, nan=0.0))
    out = out.reshape(bins.n_bins, n_groups, v.shape[1])
    return out[..., 0] if squeeze else out


BOOTSTRAPS = {"circular": CircularBlockBootstrap, "stationary": StationaryBootstrap}


def block_counts(n_bins: int, block_bins: int, samples: int, rng: np.random.Generator,
                 method: str = "circular") -> np.ndarray:
    """(samples, n_bins): how often each bin is drawn by a replicate of length n_bins, from arch's
    circular block bootstrap (blocks of ``block_bins``) or stationary bootstrap (mean length
    ``block_bins``). Both wrap around the end, so every bin is drawn equally often in expectation."""
    if method not in BOOTSTRAPS:
        raise ValueError(f"bootstrap method must be one of {sorted(BOOTSTRAPS)}, got {method!r}")
    block_bins = min(block_bins, n_bins)
    resampler = BOOTSTRAPS[method](block_bins, np.arange(n_bins), seed=rng)
    counts = np.empty((samples, n_bins))
    for i in range(samples):
        counts[i] = np.bincount(resampler.update_indices(), minlength=n_bins)
    return counts


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval (arrays of one shape), and the share
    of replicates where the statistic was undefined (NaN: left out of the percentiles, reported)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    replicates: np.ndarray  # (samples, *shape); empty when no interval could be formed
    empty_share: np.ndarray  # NaN where no interval could be formed


def block_bootstrap(sums: Mapping[str, np.ndarray], statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                    block_bins: int, config: BootstrapConfig) -> Interval:
    """Point estimate and percentile interval of ``statistic`` over block-resampled bins
    (``config.bootstrap_method``, seeded by ``config.bootstrap_seed``).

    ``sums``: name -> array whose first axis is the bin (every array the same number of bins).
    ``statistic``: maps the same names to arrays summed over bins (leading axes preserved: the
    point estimate gets the plain sums, the replicates a leading ``samples`` axis) to the figure.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()}
    n_bins = {a.shape[0] for a in arrays.values()}
    if len(n_bins) != 1:
        raise ValueError(f"every sum needs the same number of bins, got {sorted(n_bins)}")
    n = n_bins.pop()
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.asarray(statistic({k: a.sum(axis=0) for k, a in arrays.items()}), dtype=np.float64)
    if n < 2 * block_bins:
        nan = np.full(estimate.shape, np.nan)
        return Interval(estimate, nan, nan.copy(), np.empty((0, *estimate.shape)), nan.copy())
    counts = block_counts(n, block_bins, config.bootstrap_samples, np.random.default_rng(config.bootstrap_seed),
                          config.bootstrap_method)
    resampled = {k: np.tensordot(counts, a, axes=(1, 0)) for k, a in arrays.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = np.asarray(statistic(resampled), dtype=np.float64)
    tail = 100 * (1 - config.confidence) / 2
    empty = np.isnan(reps).mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (e.g. a group never drawn)
        low = np.nanpercentile(reps, tail, axis=0)
        high = np.nanpercentile(reps, 100 - tail, axis=0)
    return Interval(estimate, np.asarray(low), np.asarray(high), reps, np.asarray(empty))


# ------------------------------------------------------------------ Sharpe: probabilistic, deflated

def effective_sample_size(returns) -> float:
    """Autocorrelation-adjusted number of independent observations in ``returns`` (in time order):
    ``n / (1 + 2 sum_k (1 - k / (L + 1)) rho_k)`` over lags k = 1..L with Bartlett weights and
    Newey-West's lag rule ``L = floor(4 (n / 100)^(2/9))`` (at least 1). Clipped to [1, n]:
    positive serial correlation makes n observations worth fewer, negative correlation is not
    allowed to make them worth more."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    n = len(r)
    if n < 3:
        return float(n)
    x = r - r.mean()
    var = float(x @ x) / n
    if not var > 0:
        return float(n)
    lags = min(n - 1, max(1, int(4 * (n / 100) ** (2 / 9))))
    rho = np.array([float(x[:-k] @ x[k:]) / n / var for k in range(1, lags + 1)])
    denom = 1.0 + 2.0 * float(np.sum((1 - np.arange(1, lags + 1) / (lags + 1)) * rho))
    if denom <= 1.0:
        return float(n)
    return float(max(1.0, n / denom))


def probabilistic_sharpe_ratio(returns, benchmark_sharpe: float = 0.0, n_effective: float | None = None) -> float:
    """P(true per-observation Sharpe > ``benchmark_sharpe``) given the sample's length, skew and
    kurtosis (Bailey & Lopez de Prado 2012). ``benchmark_sharpe`` is per observation (not
    annualised). ``n_effective``: the sample size the PSR trusts (e.g. :func:`effective_sample_size`);
    None = the number of finite returns. NaN with fewer than 3 finite returns, n_effective <= 1
    or zero variance."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    n = len(r)
    if n < 3:
        return float("nan")
    n_eff = float(n) if n_effective is None else float(n_effective)
    if not n_eff > 1:
        return float("nan")
    sd = r.std(ddof=1)
    if not sd > 0:
        return float("nan")
    sr = r.mean() / sd
    z = (r - r.mean()) / r.std(ddof=0)
    skew = float(np.mean(z ** 3))
    kurt = float(np.mean(z ** 4))
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr ** 2
    if not denom > 0:
        return float("nan")
    return float(_NORMAL.cdf((sr - benchmark_sharpe) * math.sqrt(n_eff - 1) / math.sqrt(denom)))


def expected_max_sharpe(trials: int, sharpe_variance: float) -> float:
    """Expected maximum of ``trials`` per-bar Sharpe ratios whose true value is 0 and whose
    estimates vary with ``sharpe_variance`` (the deflated Sharpe's SR0); 0 for one trial."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not sharpe_variance >= 0:
        raise ValueError(f"sharpe_variance must be >= 0, got {sharpe_variance}")
    if trials == 1:
        return 0.0
    return math.sqrt(sharpe_variance) * ((1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / trials)
                                         + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (trials * math.e)))


def deflated_sharpe_ratio(returns, trials: int, sharpe_variance: float | None = None,
                          n_effective: float | None = None) -> float:
    """PSR against the best Sharpe that ``trials`` configurations with no skill would show by luck
    (Bailey & Lopez de Prado 2014). ``sharpe_variance``: variance of the per-observation Sharpe
    across the trials; None = the estimator's variance under the null, 1 / (n - 1), with n the
    effective n when given."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 3:
        return float("nan")
    n_eff = float(len(r)) if n_effective is None else float(n_effective)
    if not n_eff > 1:
        return float("nan")
    variance = 1.0 / (n_eff - 1) if sharpe_variance is None else sharpe_variance
    return probabilistic_sharpe_ratio(r, expected_max_sharpe(trials, variance), n_eff)


# ------------------------------------------------------------------ headline figures per variant

def stack_bar_returns(bar_returns: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-pool bar-return frames -> one long frame (pool_id, close_time) x variants.

    Raises naming the pool on a non-UTC or duplicated index, or a non-finite return (a return the
    backtest could not compute must not average silently into the table)."""
    frames = []
    for pool_id, frame in bar_returns.items():
        if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
            raise ValueError(f"bar_returns[{pool_id!r}] must be indexed by tz-aware bar close times")
        if frame.index.has_duplicates:
            raise ValueError(f"bar_returns[{pool_id!r}] has duplicated bar close times, "
                             f"e.g. {list(frame.index[frame.index.duplicated()][:3])}")
        values = frame.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"bar_returns[{pool_id!r}]: {int(bad.sum())} non-finite returns, e.g. "
                             f"{frame.columns[col]} at {frame.index[row]}")
        part = frame.copy()
        part.index = pd.MultiIndex.from_arrays([np.full(len(frame), pool_id, dtype=object), frame.index.tz_convert("UTC")],
                                               names=["pool_id", "close_time"])
        frames.append(part)
    if not frames:
        raise ValueError("bar_returns is empty: no pool to summarise")
    return pd.concat(frames).sort_index()


def _headline_statistic(bars_per_year: float):
    def stat(s: Mapping[str, np.ndarray]) -> np.ndarray:
        m = s["p_n"]
        mean = s["p"] / m
        var = (s["p2"] - m * mean ** 2) / (m - 1)
        sharpe = mean / np.sqrt(np.where(var > 0, var, np.nan)) * math.sqrt(bars_per_year)
        hit = s["p_up"] / s["p_moved"]
        return np.stack([mean, sharpe, hit], axis=-1)
    return stat


HEADLINE_COLUMNS = ("pools", "bars", "portfolio_bars", "round_trips", "too_few",
                    "mean_bar_return", "mean_bar_return_low", "mean_bar_return_high", "mean_bar_return_empty",
                    "sharpe", "sharpe_low", "sharpe_high", "sharpe_empty",
                    "hit_rate", "hit_rate_low", "hit_rate_high", "hit_rate_empty",
                    "psr", "dsr", "psr_basis", "psr_n", "psr_n_effective", "trials")


def headline_table(bar_returns: Mapping[str, pd.DataFrame], *, trials: int, bar_seconds: int = 3600,
                   config: BootstrapConfig = BootstrapConfig(), variants: list[str] | None = None,
                   exclude_pools: Mapping[str, set] | None = None,
                   round_trips: Mapping[str, pd.DataFrame] | None = None,
                   round_trip_counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per variant, every figure of the equal-weight portfolio of the pools present at each
    bar (module docstring): mean per-bar return, Sharpe and hit rate, each with its block-bootstrap
    interval and the share of empty replicates, and PSR / DSR (``trials`` = configurations tried)
    with their n and effective n.

    ``exclude_pools``: variant -> pools left out of that variant's row. ``round_trips``: variant ->
    its round trips (``pool_id``, ``entry_filled_at``, ``net_return``): that variant's PSR / DSR are
    on their net returns in entry order; other variants' on the portfolio's non-zero bars.
    ``round_trip_counts``: round trips per pool (index) and variant (columns); a variant with fewer
    than ``config.min_round_trips_for_interval`` over its pools gets no interval and no PSR / DSR
    (``too_few``)."""
    long = stack_bar_returns(bar_returns)
    variants = list(long.columns) if variants is None else variants
    missing = [v for v in variants if v not in long.columns]
    if missing:
        raise KeyError(f"variants {missing} not in bar_returns (columns {list(long.columns)})")
    bars_per_year = 365 * 24 * 3600 / bar_seconds
    rows = {}
    pools_all = long.index.get_level_values("pool_id")
    times_all = long.index.get_level_values("close_time")
    bins_all = time_bins(times_all, bar_seconds, config.block)
    for variant in variants:
        excluded = set(exclude_pools.get(variant, ())) if exclude_pools else set()
        keep = ~pools_all.isin(list(excluded)) if excluded else np.ones(len(long), dtype=bool)
        if not keep.any():  # every pool left out (one pool, without its top 5 %): nothing to estimate
            rows[variant] = {c: np.nan for c in HEADLINE_COLUMNS} | {"pools": 0, "bars": 0, "portfolio_bars": 0,
                                                                     "too_few": False, "trials": trials}
            continue
        r = long[variant].to_numpy(dtype=np.float64)[keep]
        bins = TimeBins(bins_all.bin_of_row[keep], bins_all.n_bins, bins_all.block_bins, bins_all.origin, bar_seconds)
        s = bin_sums(bins, np.column_stack([r, np.ones_like(r)]))[:, 0, :]
        # The equal-weight portfolio per bin: mean over the pools present at that bar.
        present = s[:, 1] > 0
        port = np.where(present, s[:, 0] / np.where(present, s[:, 1], 1.0), 0.0)
        sums = {"p": port, "p2": port ** 2, "p_n": present.astype(float),
                "p_up": (present & (port > 0)).astype(float), "p_moved": (present & (port != 0)).astype(float)}
        iv = block_bootstrap(sums, _headline_statistic(bars_per_year), bins.block_bins, config)
        kept_pools = set(pools_all[keep])
        trips_n = None
        if round_trip_counts is not None and variant in round_trip_counts.columns:
            counts = round_trip_counts[variant]
            trips_n = int(counts[counts.index.isin(list(kept_pools))].fillna(0).sum())
        if round_trips is not None and variant in round_trips:
            trips = round_trips[variant]
            trips = trips[trips["pool_id"].isin(list(kept_pools))].sort_values("entry_filled_at", kind="stable")
            series, basis = trips["net_return"].to_numpy(dtype=np.float64), "round trips"
            trips_n = len(series) if trips_n is None else trips_n
        else:
            series, basis = port[present & (port != 0)], "non-zero bars"
        too_few = trips_n is not None and trips_n < config.min_round_trips_for_interval
        n_eff = effective_sample_size(series)
        low, high = (np.full(3, np.nan), np.full(3, np.nan)) if too_few else (iv.low, iv.high)
        rows[variant] = {
            "pools": len(kept_pools), "bars": int(keep.sum()), "portfolio_bars": int(present.sum()),
            "round_trips": np.nan if trips_n is None else trips_n, "too_few": too_few,
            "mean_bar_return": iv.estimate[0], "mean_bar_return_low": low[0], "mean_bar_return_high": high[0],
            "mean_bar_return_empty": iv.empty_share[0],
            "sharpe": iv.estimate[1], "sharpe_low": low[1], "sharpe_high": high[1], "sharpe_empty": iv.empty_share[1],
            "hit_rate": iv.estimate[2], "hit_rate_low": low[2], "hit_rate_high": high[2],
            "hit_rate_empty": iv.empty_share[2],
            "psr": np.nan if too_few else probabilistic_sharpe_ratio(series, n_effective=n_eff),
            "dsr": np.nan if too_few else deflated_sharpe_ratio(series, trials, n_effective=n_eff),
            "psr_basis": basis, "psr_n": len(series), "psr_n_effective": n_eff,
            "trials": trials,
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(HEADLINE_COLUMNS))
    table.index.name = "variant"
    return table


def top_pools_by_return(bar_returns: Mapping[str, pd.DataFrame], variant: str, share: float = 0.05) -> set:
    """The ``ceil(share x pools)`` pools with the highest compounded return in ``variant``."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    totals = pd.Series({p: float(np.prod(1.0 + f[variant].to_numpy(dtype=np.float64)) - 1.0)
                        for p, f in bar_returns.items()})
    n = math.ceil(share * len(totals))
    return set(totals.sort_values(ascending=False, kind="stable").index[:n])


def headline_with_and_without_top(bar_returns: Mapping[str, pd.DataFrame], *, trials: int, bar_seconds: int = 3600,
                                  config: BootstrapConfig = BootstrapConfig(), top_share: float = 0.05,
                                  variants: list[str] | None = None,
                                  round_trips: Mapping[str, pd.DataFrame] | None = None,
                                  round_trip_counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`headline_table` on all pools and again without each variant's own top ``top_share``
    of pools by compounded return (so one pool's pump cannot carry the table). Index
    (sample, variant) with sample in {"all pools", "without top 5 %"}; column ``excluded`` lists
    the pools left out."""
    evidence = {"round_trips": round_trips, "round_trip_counts": round_trip_counts}
    full = headline_table(bar_returns, trials=trials, bar_seconds=bar_seconds, config=config, variants=variants,
                          **evidence)
    tops = {v: top_pools_by_return(bar_returns, v, top_share) for v in full.index}
    trimmed = headline_table(bar_returns, trials=trials, bar_seconds=bar_seconds, config=config,
                             variants=list(full.index), exclude_pools=tops, **evidence)
    full["excluded"] = ""
    trimmed["excluded"] = [", ".join(sorted(tops[v])) for v in trimmed.index]
    label = f"without top {100 * top_share:g} %"
    return pd.concat({"all pools": full, label: trimmed}, names=["sample", "variant"])


def equal_weight_portfolio(bar_returns: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """THE weighting of every portfolio figure (module docstring): per bar close time and variant,
    the mean return over the pools whose out-of-sample span covers that bar (equal weight across
    the pools present)."""
    long = stack_bar_returns(bar_returns)
    return long.groupby(level="close_time").mean()


# ------------------------------------------------------------------ where the edge lives

LIQUIDITY_EDGES_USD = (10_000.0, 50_000.0, 250_000.0, 1_000_000.0)
ROUND_TRIP_COLUMNS = ("entry_filled_at", "net_return")
BREAKDOWN_COLUMNS = ("trades", "too_few", "mean_net_return", "mean_net_return_low", "mean_net_return_high",
                     "hit_rate", "hit_rate_low", "hit_rate_high", "empty_replicates")


def liquidity_bucket(reserve_usd: pd.Series, reserve_source: pd.Series | None = None,
                     edges: tuple[float, ...] = LIQUIDITY_EDGES_USD) -> pd.Series:
    """Bucket label of each round trip's pool reserve (USD). Only a reserve the collector measured
    (``reserve_source`` in the cost model's ``MEASURED_SOURCES``: snapshot, history, enhanced
    history) is bucketed by its value: an assumed one (``fallback``) is "not measured", since an
    assumed liquidity says nothing about where the edge lives; no reserve at all (``none``), an
    unrecognised source or a missing value is "unknown"."""
    from q50_assets.lineage.common.costs import MEASURED_SOURCES, SOURCE_FALLBACK

    reserve = pd.to_numeric(reserve_usd, errors="coerce").to_numpy(dtype=np.float64)
    labels = []
    names = ([f"< {edges[0] / 1000:g}k"] + [f"{lo / 1000:g}k-{hi / 1000:g}k" for lo, hi in zip(edges[:-1], edges[1:])]
             + [f">= {edges[-1] / 1000:g}k"])
    position = np.searchsorted(np.asarray(edges), reserve, side="right")
    for i, value in enumerate(reserve):
        labels.append(names[position[i]] if np.isfinite(value) else "unknown")
    out = pd.Series(labels, index=reserve_usd.index, dtype=object)
    if reserve_source is not None:
        source = reserve_source.astype(object).where(reserve_source.notna(), "").astype(str).to_numpy()
        measured = np.isin(source, MEASURED_SOURCES)
        out[(source == SOURCE_FALLBACK)] = "not measured"
        out[~measured & (source != SOURCE_FALLBACK)] = "unknown"
    return out


def breakdown(round_trips: pd.DataFrame, by: str, *, bar_seconds: int = 3600,
              config: BootstrapConfig = BootstrapConfig(), order: list | None = None) -> pd.DataFrame:
    """Round trips grouped by column ``by``: trades, mean net return and hit rate (net return > 0),
    each with a block-bootstrap interval over calendar days of entry (every group resampled by the
    same blocks) and the share of replicates that drew none of the group's round trips
    (``empty_replicates``), plus an ``all`` row as the yardstick. A group with fewer than
    ``config.min_round_trips_for_interval`` round trips gets no interval (``too_few``)."""
    missing = [c for c in (*ROUND_TRIP_COLUMNS, by) if c not in round_trips.columns]
    if missing:
        raise KeyError(f"round_trips lacks columns {missing}")
    net = round_trips["net_return"].to_numpy(dtype=np.float64)
    if (~np.isfinite(net)).any():
        bad = round_trips.index[~np.isfinite(net)]
        raise ValueError(f"{len(bad)} round trips with a non-finite net_return, e.g. rows {list(bad[:5])}")
    if len(round_trips) == 0:  # no trade at all: one "all" row saying so, not an error
        empty = {c: np.nan for c in BREAKDOWN_COLUMNS}
        return pd.DataFrame([{**empty, "trades": 0, "too_few": True}], index=pd.Index(["all"], name=by))
    keys = round_trips[by].astype(object).where(round_trips[by].notna(), "missing")
    present = list(pd.unique(keys))
    ordered = [] if order is None else [g for g in order if g in present]
    groups = ordered + [g for g in present if g not in ordered]
    code = {g: i for i, g in enumerate(groups)}
    group_of_row = keys.map(code).to_numpy(dtype=np.int64)
    n_groups = len(groups) + 1  # the last group: every round trip
    bins = time_bins(pd.to_datetime(round_trips["entry_filled_at"], utc=True), bar_seconds, config.block)
    per_row = np.column_stack([np.ones_like(net), net, (net > 0).astype(float)])
    s = bin_sums(bins, per_row, group_of_row, n_groups) + bin_sums(bins, per_row, np.full(len(net), n_groups - 1), n_groups)
    sums = {"n": s[..., 0], "net": s[..., 1], "wins": s[..., 2]}
    iv = block_bootstrap(sums, lambda a: np.stack([a["net"] / a["n"], a["wins"] / a["n"]], axis=-1),
                         bins.block_bins, config)
    counts = s[..., 0].sum(axis=0)
    too_few = counts < config.min_round_trips_for_interval
    table = pd.DataFrame({
        "trades": counts.astype(np.int64), "too_few": too_few,
        "mean_net_return": iv.estimate[:, 0],
        "mean_net_return_low": np.where(too_few, np.nan, iv.low[:, 0]),
        "mean_net_return_high": np.where(too_few, np.nan, iv.high[:, 0]),
        "hit_rate": iv.estimate[:, 1],
        "hit_rate_low": np.where(too_few, np.nan, iv.low[:, 1]),
        "hit_rate_high": np.where(too_few, np.nan, iv.high[:, 1]),
        "empty_replicates": iv.empty_share[:, 0],
    }, index=pd.Index([*groups, "all"], name=by))
    return table


def edge_breakdowns(round_trips: pd.DataFrame, *, bar_seconds: int = 3600,
                    config: BootstrapConfig = BootstrapConfig()) -> dict[str, pd.DataFrame]:
    """:func:`breakdown` by volatility regime, momentum regime, signal tier and liquidity bucket."""
    from q50_assets.lineage.regimes.rules import MOMENTUM_REGIMES, VOL_REGIMES
    from q50_assets.lineage.signals.rules import TIERS

    frame = round_trips.copy()
    frame["liquidity"] = liquidity_bucket(frame["reserve_usd"], frame.get("reserve_source"))
    liquidity_order = ([f"< {LIQUIDITY_EDGES_USD[0] / 1000:g}k"]
                       + [f"{a / 1000:g}k-{b / 1000:g}k" for a, b in zip(LIQUIDITY_EDGES_USD[:-1], LIQUIDITY_EDGES_USD[1:])]
                       + [f">= {LIQUIDITY_EDGES_USD[-1] / 1000:g}k", "not measured", "unknown"])
    orders = {"vol_regime": list(VOL_REGIMES), "momentum_regime": list(MOMENTUM_REGIMES),
              "signal_tier": list(TIERS), "liquidity": liquidity_order}
    return {by: breakdown(frame, by, bar_seconds=bar_seconds, config=config, order=order)
            for by, order in orders.items()}


__all__ = [
    "BREAKDOWN_COLUMNS",
    "BootstrapConfig",
    "HEADLINE_COLUMNS",
    "Interval",
    "TimeBins",
    "bin_sums",
    "block_bootstrap",
    "block_counts",
    "breakdown",
    "deflated_sharpe_ratio",
    "edge_breakdowns",
    "effective_sample_size",
    "equal_weight_portfolio",
    "expected_max_sharpe",
    "headline_table",
    "headline_with_and_without_top",
    "liquidity_bucket",
    "probabilistic_sharpe_ratio",
    "stack_bar_returns",
    "time_bins",
    "top_pools_by_return",
]
