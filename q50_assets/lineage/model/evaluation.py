"""Does the Q50 model know more than yesterday's return distribution? Skill against a naive
forecaster, rank IC, reliability of the quantiles and the hit rate of tradeable signals net of cost.

Pure pandas/numpy (no Dagster). Inputs are the walk-forward model's out-of-sample predictions
(index (pool_id, open_time); ``q10``/``q50``/``q90``, ``predicted_at``, ``label``, ``fold``) and
the label panel of :func:`q50_assets.lineage.model.walk_forward.make_labels` (``label``,
``label_known_at``).

**The naive forecaster** (a yardstick that knows nothing but the past): for a prediction of pool p
made at ``predicted_at`` = P, the empirical quantiles (numpy's linear interpolation) of p's own
labels KNOWN at P (``label_known_at <= P``), over all of them (``window_bars`` None) or those that
became known in the last ``window_bars`` bars. When p has fewer than ``min_pool_labels`` such
labels (a young pool), the labels of every pool known at P are used instead ("pooled"); with
fewer than that many in total, there is no naive forecast (NaN, "none") and the row is left out of
skill scores and counted. The naive forecaster never sees a label later than the model could.

**Pinball skill** per quantile: ``1 - model loss / naive loss`` (mean pinball loss over the same
rows), > 0 when the model beats the naive forecaster. Overall and per pool, with a calendar-time
block-bootstrap interval (:mod:`q50_assets.lineage.common.uncertainty`, blocks of a day or more, pools
resampled jointly).

**Rank IC** per fold: Spearman correlation of q50 (and of the naive q50, its yardstick) with the
realised label over the fold's rows.

**Reliability**: the PIT of each label under the piecewise-linear CDF through (q10, 0.1),
(q50, 0.5), (q90, 0.9) (the distribution of :func:`q50_assets.lineage.signals.rules.prob_up_piecewise`),
its outer segments extended linearly beyond q10 and q90 (slopes of the neighbouring segments,
clipped to [0, 1]) so that levels outside [0.1, 0.9] can be checked too. Observed coverage at
level a = share of labels with PIT <= a; calibrated quantiles give a, within binomial noise.

**Hit rate net of cost**: share of tradeable signals whose realised return in the trade's direction
beat the trade's expected cost; its yardstick is the same share for every labelled bar traded long.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from q50_assets.lineage.common.bar_length import BarLength
from q50_assets.lineage.common.uncertainty import BootstrapConfig, bin_sums, block_bootstrap, time_bins
from q50_assets.settings import NaiveSettings, Settings

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
QUANTILE_COLUMNS = ("q10", "q50", "q90")
NAIVE_COLUMNS = tuple(f"naive_{c}" for c in QUANTILE_COLUMNS)
RELIABILITY_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class NaiveConfig(NaiveSettings, BarLength):
    """The naive forecaster: the settings' naive keys at the configured bar length. On the bundled
    sample the 7-day window is a stronger yardstick than every known label (expanding), so the
    skill it leaves to the model is the more conservative."""

    @classmethod
    def of(cls, settings: Settings) -> "NaiveConfig":
        return cls(**settings.evaluation.model_dump(include=set(NaiveSettings.model_fields)),
                   bar_seconds=settings.bar_seconds)


class _SlidingQuantiles:
    """Quantiles of a multiset under insertions and deletions (a sorted Python list)."""

    def __init__(self) -> None:
        self._values: list[float] = []

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        bisect.insort(self._values, value)

    def remove(self, value: float) -> None:
        self._values.pop(bisect.bisect_left(self._values, value))

    def quantile(self, q: float) -> float:
        """numpy's default ('linear') interpolation."""
        position = q * (len(self._values) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self._values) - 1)
        return self._values[low] + (position - low) * (self._values[high] - self._values[low])


def _sweep(known_at: np.ndarray, values: np.ndarray, query_times: np.ndarray, window: np.timedelta64 | None,
           quantiles: tuple[float, ...], min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of the values known at each query time (known_at <= t, and > t - window).

    ``known_at`` ascending; ``query_times`` ascending. Returns (len(query) x len(quantiles) with
    NaN where fewer than ``min_count`` values are known, count known per query)."""
    out = np.full((len(query_times), len(quantiles)), np.nan)
    counts = np.zeros(len(query_times), dtype=np.int64)
    window_set = _SlidingQuantiles()
    added = removed = 0
    for i, t in enumerate(query_times):
        while added < len(known_at) and known_at[added] <= t:
            window_set.add(float(values[added]))
            added += 1
        if window is not None:
            while removed < added and known_at[removed] <= t - window:
                window_set.remove(float(values[removed]))
                removed += 1
        counts[i] = len(window_set)
        if counts[i] >= min_count:
            out[i] = [window_set.quantile(q) for q in quantiles]
    return out, counts


def naive_quantiles(predictions: pd.DataFrame, labels: pd.DataFrame, config: NaiveConfig) -> pd.DataFrame:
    """The naive forecaster's q10/q50/q90 for every prediction row (module docstring).

    Returns, on ``predictions``' index: ``naive_q10``, ``naive_q50``, ``naive_q90``,
    ``naive_source`` ("pool", "pooled" or "none") and ``naive_history`` (labels it used).
    """
    if "predicted_at" not in predictions.columns:
        raise KeyError("predictions lack column 'predicted_at'")
    for col in ("label", "label_known_at"):
        if col not in labels.columns:
            raise KeyError(f"labels lack column {col!r}")
    window = None if config.naive_window_bars is None else np.timedelta64(config.naive_window_bars * config.bar_seconds, "s")

    known = labels[np.isfinite(labels["label"].to_numpy(dtype=np.float64))]
    known_at = pd.DatetimeIndex(known["label_known_at"])
    if known_at.tz is None:
        raise ValueError("labels.label_known_at must be tz-aware (UTC)")
    predicted_at = pd.DatetimeIndex(predictions["predicted_at"])
    if predicted_at.tz is None or predicted_at.hasnans:
        raise ValueError("predictions.predicted_at must be tz-aware (UTC) times, never NaT")
    # Work in UTC nanoseconds: comparisons are exact and fast.
    known_ns = known_at.tz_convert("UTC").as_unit("ns").asi8
    query_ns = predicted_at.tz_convert("UTC").as_unit("ns").asi8
    window_ns = None if window is None else window.astype("timedelta64[ns]").astype(np.int64)

    out = np.full((len(predictions), len(QUANTILES)), np.nan)
    history = np.zeros(len(predictions), dtype=np.int64)
    source = np.full(len(predictions), "none", dtype=object)
    pools = predictions.index.get_level_values(0).to_numpy()
    known_pools = known.index.get_level_values(0).to_numpy()
    for pool in pd.unique(pools):
        rows = np.flatnonzero(pools == pool)
        order = rows[np.argsort(query_ns[rows], kind="stable")]
        mine = np.flatnonzero(known_pools == pool)
        mine = mine[np.argsort(known_ns[mine], kind="stable")]
        q, n = _sweep(known_ns[mine], known["label"].to_numpy()[mine], query_ns[order], window_ns, QUANTILES,
                      config.naive_min_pool_labels)
        out[order], history[order] = q, n
        source[order[n >= config.naive_min_pool_labels]] = "pool"

    young = np.flatnonzero(source == "none")
    if len(young):
        order_all = np.argsort(known_ns, kind="stable")
        times, first = np.unique(query_ns[young], return_inverse=True)
        q, n = _sweep(known_ns[order_all], known["label"].to_numpy()[order_all], times, window_ns, QUANTILES,
                      config.naive_min_pool_labels)
        out[young], history[young] = q[first], n[first]
        source[young[n[first] >= config.naive_min_pool_labels]] = "pooled"
    frame = pd.DataFrame(out, index=predictions.index, columns=list(NAIVE_COLUMNS))
    frame["naive_source"] = source
    frame["naive_history"] = history
    return frame


# ------------------------------------------------------------------ pinball skill

def _pinball(y: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    diff = y - q
    return np.maximum(alpha * diff, (alpha - 1.0) * diff)


def _scored_rows(frame: pd.DataFrame) -> np.ndarray:
    needed = ["label", *QUANTILE_COLUMNS, *NAIVE_COLUMNS]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks columns {missing}")
    return np.isfinite(frame[needed].to_numpy(dtype=np.float64)).all(axis=1)


SKILL_COLUMNS = ("rows", "model_loss", "naive_loss", "skill", "skill_low", "skill_high")


def pinball_skill(frame: pd.DataFrame, *, bar_seconds: int = 3600, config: BootstrapConfig = BootstrapConfig(),
                  time_column: str = "predicted_at") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pinball skill of the model over the naive forecaster, overall and per pool.

    ``frame``: predictions joined with :func:`naive_quantiles` (index (pool_id, open_time)). Rows
    without a label or a naive forecast are left out (``rows`` says how many count). Returns
    (overall: index quantile column, :data:`SKILL_COLUMNS`; per pool: index pool_id, columns
    ``<column>_<quantile>`` for every skill column and quantile). One bootstrap draw serves every
    quantile and pool, so their intervals are joint.
    """
    scored = frame[_scored_rows(frame)]
    pools = scored.index.get_level_values(0)
    pool_names = list(pd.unique(pools))
    pool_code = pd.Index(pool_names).get_indexer(pools)
    y = scored["label"].to_numpy(dtype=np.float64)
    losses = np.column_stack(
        [_pinball(y, scored[c].to_numpy(dtype=np.float64), a) for c, a in zip(QUANTILE_COLUMNS, QUANTILES)]
        + [_pinball(y, scored[c].to_numpy(dtype=np.float64), a) for c, a in zip(NAIVE_COLUMNS, QUANTILES)]
        + [np.ones_like(y)])
    k = len(QUANTILES)
    bins = time_bins(pd.DatetimeIndex(scored[time_column]), bar_seconds, config.block)
    per_pool = bin_sums(bins, losses, pool_code, len(pool_names))          # (bins, pools, 2k+1)
    overall = per_pool.sum(axis=1, keepdims=True)                           # (bins, 1, 2k+1)
    both = np.concatenate([overall, per_pool], axis=1)                      # group 0 = all pools

    def stat(s):
        a = s["x"]
        return np.stack([1.0 - a[..., :k] / a[..., k:2 * k], a[..., :k] / a[..., -1:], a[..., k:2 * k] / a[..., -1:]],
                        axis=-1)  # (..., groups, quantile, [skill, model mean loss, naive mean loss])

    iv = block_bootstrap({"x": both}, stat, bins.block_bins, config)
    counts = both.sum(axis=0)[:, -1]

    def table(g: int) -> dict:
        return {c: {"rows": int(counts[g]), "model_loss": iv.estimate[g, j, 1], "naive_loss": iv.estimate[g, j, 2],
                    "skill": iv.estimate[g, j, 0], "skill_low": iv.low[g, j, 0], "skill_high": iv.high[g, j, 0]}
                for j, c in enumerate(QUANTILE_COLUMNS)}

    overall_table = pd.DataFrame.from_dict(table(0), orient="index", columns=list(SKILL_COLUMNS))
    overall_table.index.name = "quantile"
    rows = {}
    for g, pool in enumerate(pool_names, start=1):
        rows[pool] = {f"{col}_{q}": v[col] for q, v in table(g).items() for col in SKILL_COLUMNS}
    pool_table = pd.DataFrame.from_dict(rows, orient="index")
    pool_table.index.name = "pool_id"
    return overall_table, pool_table


def summarize_pool_skill(pool_table: pd.DataFrame) -> pd.DataFrame:
    """Per quantile: pools scored, median skill, share of pools with skill > 0, pools whose
    interval lies wholly above 0 and wholly below 0."""
    out = {}
    for q in QUANTILE_COLUMNS:
        skill = pool_table[f"skill_{q}"]
        scored = skill.notna()
        out[q] = {"pools": int(scored.sum()), "median_skill": float(skill[scored].median()),
                  "share_positive": float((skill[scored] > 0).mean()),
                  "pools_above_zero": int((pool_table[f"skill_low_{q}"] > 0).sum()),
                  "pools_below_zero": int((pool_table[f"skill_high_{q}"] < 0).sum())}
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "quantile"
    return table


# ------------------------------------------------------------------ rank IC

def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_ic_by_fold(frame: pd.DataFrame, column: str = "q50", naive_column: str | None = "naive_q50") -> pd.DataFrame:
    """Per fold: labelled rows, Spearman rank IC of ``column`` with the label, and of the naive
    forecaster's ``naive_column`` (its yardstick) when present."""
    labelled = frame[np.isfinite(frame["label"].to_numpy(dtype=np.float64))]
    rows = []
    for fold, part in labelled.groupby("fold", sort=True):
        y = part["label"].to_numpy(dtype=np.float64)
        row = {"fold": int(fold), "rows": len(part), "rank_ic": _spearman(part[column].to_numpy(dtype=np.float64), y)}
        if naive_column is not None and naive_column in part.columns:
            ok = np.isfinite(part[naive_column].to_numpy(dtype=np.float64))
            row["naive_rank_ic"] = _spearman(part[naive_column].to_numpy(dtype=np.float64)[ok], y[ok])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_rank_ic(by_fold: pd.DataFrame, column: str = "rank_ic") -> dict[str, float]:
    """Mean rank IC over folds with its normal 95 % interval (folds are consecutive spans of a
    day or more, treated as independent), the t statistic and the share of positive folds."""
    ic = by_fold[column].dropna().to_numpy(dtype=np.float64)
    n = len(ic)
    if n == 0:
        return {"folds": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan"),
                "t": float("nan"), "share_positive": float("nan")}
    mean = float(ic.mean())
    se = float(ic.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"folds": n, "mean": mean, "low": mean - 1.96 * se, "high": mean + 1.96 * se,
            "t": mean / se if se and se > 0 else float("nan"), "share_positive": float((ic > 0).mean())}


# ------------------------------------------------------------------ reliability

def pit_piecewise(y, q10, q50, q90) -> np.ndarray:
    """PIT of ``y`` under the piecewise-linear CDF through (q10, .1), (q50, .5), (q90, .9), outer
    segments extended linearly beyond q10 / q90 and clipped to [0, 1] (module docstring).
    Zero-width segments make the CDF jump there. NaN in, NaN out."""
    y, q10, q50, q90 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (y, q10, q50, q90)))
    lower, upper = q50 - q10, q90 - q50
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(lower > 0, 0.1 - 0.4 * (q10 - y) / np.where(lower > 0, lower, 1.0), 0.0)
        inner_low = 0.1 + 0.4 * (y - q10) / np.where(lower > 0, lower, 1.0)
        inner_high = 0.5 + 0.4 * (y - q50) / np.where(upper > 0, upper, 1.0)
        above = np.where(upper > 0, 0.9 + 0.4 * (y - q90) / np.where(upper > 0, upper, 1.0), 1.0)
    pit = np.where(y < q10, below, np.where(y < q50, inner_low, np.where(y < q90, inner_high, above)))
    pit = np.clip(pit, 0.0, 1.0)
    return np.where(np.isnan(y) | np.isnan(q10) | np.isnan(q50) | np.isnan(q90), np.nan, pit)


def reliability_table(frame: pd.DataFrame, levels: tuple[float, ...] = RELIABILITY_LEVELS,
                      columns: tuple[str, str, str] = QUANTILE_COLUMNS) -> pd.DataFrame:
    """Per nominal level: observed share of labels with PIT <= level, rows, the binomial standard
    error of the level and the gap (observed - level) in standard errors."""
    y = frame["label"].to_numpy(dtype=np.float64)
    pit = pit_piecewise(y, *(frame[c].to_numpy(dtype=np.float64) for c in columns))
    pit = pit[np.isfinite(pit)]
    n = len(pit)
    rows = []
    for level in levels:
        se = math.sqrt(level * (1 - level) / n) if n else float("nan")
        observed = float(np.mean(pit <= level)) if n else float("nan")
        rows.append({"level": level, "observed": observed, "rows": n, "se": se,
                     "gap_se": (observed - level) / se if n else float("nan")})
    return pd.DataFrame(rows).set_index("level")


# ------------------------------------------------------------------ hit rate net of cost

def net_hit_rate(signals: pd.DataFrame, *, cost_column: str, realised_column: str = "label",
                 time_column: str = "known_at", bar_seconds: int = 3600,
                 config: BootstrapConfig = BootstrapConfig()) -> dict[str, float]:
    """Share of tradeable signals whose realised return in the trade's direction beat their
    expected cost, with its block-bootstrap interval, beside the yardstick: the same share over
    every labelled row traded long (``long_every_bar``), and the difference with its interval.

    ``signals``: one row per signal of any number of pools, columns ``tradeable``, ``side``
    (long/short/hold), ``cost_column`` (expected cost of the round trip as a return),
    ``realised_column`` (realised forward return; NaN = not known yet: left out and counted) and
    ``time_column`` (when the signal was known; the bootstrap's calendar).
    """
    needed = ["tradeable", "side", cost_column, realised_column, time_column]
    missing = [c for c in needed if c not in signals.columns]
    if missing:
        raise KeyError(f"signals lack columns {missing}")
    realised = signals[realised_column].to_numpy(dtype=np.float64)
    cost = signals[cost_column].to_numpy(dtype=np.float64)
    labelled = np.isfinite(realised)
    tradeable = signals["tradeable"].to_numpy(dtype=bool) & labelled
    bad_cost = tradeable & ~np.isfinite(cost)
    if bad_cost.any():
        raise ValueError(f"{int(bad_cost.sum())} tradeable signals without a finite {cost_column!r}, "
                         f"e.g. {list(signals.index[bad_cost][:5])}")
    side = signals["side"].to_numpy(dtype=object)
    direction = np.where(side == "short", -1.0, 1.0)
    long_rows = labelled & np.isfinite(cost)
    with np.errstate(invalid="ignore"):
        hit = tradeable & (direction * realised > cost)
        long_hit = long_rows & (realised > cost)
    kept = labelled
    bins = time_bins(pd.DatetimeIndex(signals[time_column])[kept], bar_seconds, config.block)
    per_row = np.column_stack([tradeable, hit, long_rows, long_hit]).astype(np.float64)[kept]
    sums = {"x": bin_sums(bins, per_row)[:, 0, :]}

    def stat(s):
        a = s["x"]
        rate = a[..., 1] / a[..., 0]
        base = a[..., 3] / a[..., 2]
        return np.stack([rate, base, rate - base], axis=-1)

    iv = block_bootstrap(sums, stat, bins.block_bins, config)
    return {"tradeable_signals": int(tradeable.sum()), "hits": int(hit.sum()),
            "hit_rate": float(iv.estimate[0]), "hit_rate_low": float(iv.low[0]), "hit_rate_high": float(iv.high[0]),
            "long_every_bar_rows": int(long_rows.sum()), "long_every_bar_hit_rate": float(iv.estimate[1]),
            "long_every_bar_low": float(iv.low[1]), "long_every_bar_high": float(iv.high[1]),
            "difference": float(iv.estimate[2]), "difference_low": float(iv.low[2]),
            "difference_high": float(iv.high[2]), "unlabelled_signals": int((~labelled).sum())}


@dataclass
class ModelEvidence:
    """Everything :func:`model_evidence` measures about the out-of-sample predictions."""

    skill: pd.DataFrame               # index q10, q50, q90 (as used downstream), q10_raw, q90_raw; SKILL_COLUMNS
    pool_skill: pd.DataFrame          # per pool, see pinball_skill
    pool_skill_summary: pd.DataFrame  # see summarize_pool_skill
    rank_ic: pd.DataFrame             # per fold, see rank_ic_by_fold
    rank_ic_summary: dict[str, float]
    naive_rank_ic_summary: dict[str, float]
    coverage: pd.DataFrame            # index q10, q50, q90: level, raw, calibrated, naive, rows
    reliability: pd.DataFrame         # index level: calibrated, raw, naive, se, rows
    naive_sources: dict[str, int]     # rows forecast from the pool's own labels / pooled / none


def model_evidence(predictions: pd.DataFrame, labels: pd.DataFrame, *, naive: NaiveConfig = NaiveConfig(),
                   bootstrap: BootstrapConfig = BootstrapConfig()) -> ModelEvidence:
    """Skill, rank IC, coverage and reliability of calibrated out-of-sample predictions (columns
    q10/q50/q90 as used downstream, q10_raw/q90_raw as the model made them, fold, predicted_at,
    label) against the naive forecaster. Rows without a label are not scored."""
    for col in ("q10_raw", "q90_raw", "fold", "predicted_at", "label"):
        if col not in predictions.columns:
            raise KeyError(f"predictions lack column {col!r} (calibrate the walk-forward result first)")
    frame = predictions.join(naive_quantiles(predictions, labels, naive))
    raw = frame.assign(q10=frame["q10_raw"], q90=frame["q90_raw"])
    naive_frame = frame.assign(q10=frame["naive_q10"], q50=frame["naive_q50"], q90=frame["naive_q90"])
    bar_seconds = naive.bar_seconds
    skill, pool_skill = pinball_skill(frame, bar_seconds=bar_seconds, config=bootstrap)
    raw_skill, _ = pinball_skill(raw, bar_seconds=bar_seconds, config=bootstrap)
    skill = pd.concat([skill, raw_skill.loc[["q10", "q90"]].rename(index={"q10": "q10_raw", "q90": "q90_raw"})])
    by_fold = rank_ic_by_fold(frame)
    labelled = frame[np.isfinite(frame["label"].to_numpy(dtype=np.float64))]
    scored = labelled[np.isfinite(labelled[list(NAIVE_COLUMNS)].to_numpy(dtype=np.float64)).all(axis=1)]
    y = labelled["label"].to_numpy(dtype=np.float64)
    coverage = pd.DataFrame({
        "level": QUANTILES,
        "raw": [float(np.mean(y <= labelled[f"{c}_raw" if c != "q50" else c].to_numpy())) if len(y) else np.nan
                for c in QUANTILE_COLUMNS],
        "calibrated": [float(np.mean(y <= labelled[c].to_numpy())) if len(y) else np.nan for c in QUANTILE_COLUMNS],
        "naive": [float(np.mean(scored["label"].to_numpy() <= scored[f"naive_{c}"].to_numpy())) if len(scored) else np.nan
                  for c in QUANTILE_COLUMNS],
        "rows": len(y),
    }, index=pd.Index(QUANTILE_COLUMNS, name="quantile"))
    calibrated_rel = reliability_table(labelled)
    reliability = pd.DataFrame({
        "calibrated": calibrated_rel["observed"],
        "raw": reliability_table(raw[np.isfinite(raw["label"].to_numpy(dtype=np.float64))])["observed"],
        "naive": reliability_table(naive_frame.loc[scored.index])["observed"],
        "se": calibrated_rel["se"], "rows": calibrated_rel["rows"],
    })
    return ModelEvidence(
        skill=skill, pool_skill=pool_skill, pool_skill_summary=summarize_pool_skill(pool_skill),
        rank_ic=by_fold, rank_ic_summary=summarize_rank_ic(by_fold),
        naive_rank_ic_summary=summarize_rank_ic(by_fold, "naive_rank_ic") if "naive_rank_ic" in by_fold else {},
        coverage=coverage, reliability=reliability,
        naive_sources={k: int(v) for k, v in frame["naive_source"].value_counts().items()},
    )


__all__ = [
    "ModelEvidence",
    "NAIVE_COLUMNS",
    "NaiveConfig",
    "RELIABILITY_LEVELS",
    "SKILL_COLUMNS",
    "model_evidence",
    "naive_quantiles",
    "net_hit_rate",
    "pinball_skill",
    "pit_piecewise",
    "rank_ic_by_fold",
    "reliability_table",
    "summarize_pool_skill",
    "summarize_rank_ic",
]
