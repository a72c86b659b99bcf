"""Stage 3b - Q50 signals per pool: signal columns from the out-of-sample quantiles and the pool's
features, with the time each becomes known; thresholds and net expected value priced by the one
cost model (fee + impact at the intended size, at the pool's liquidity known at the time). Every
formula is :mod:`q50_assets.lineage.signals.rules`.

A batch's pools share one model: the walk-forward predictions are looked up per pool, and the
live model predicts every pool's new bars in one call. The live model is the walk-forward's last
fold (m), so its rows carry fold m and are the rows a from-scratch walk-forward on the later
database would write. New bars whose prediction time reaches the next fold (``live.valid_until``)
get no signal until the model retrains; they are counted per pool (:func:`pool_row_counts`),
never dropped silently. A model run that failed a blocking check gives no signals at all
(:meth:`TrainedQ50Model.require_usable`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from q50_assets.lineage.common.costs import FallbackReserve, ReserveSeries, assumed_reserve
from q50_assets.lineage.signals.rules import SignalConfig, compute_signals
from q50_assets.lineage.common.gate import Blocked, first_blocked
from q50_assets.lineage.model.step import TrainedQ50Model
from q50_assets.lineage.common.ports import CollectorSource
from q50_assets.settings import Settings

STAGE = "q50_signals"
PREDICTION_COLUMNS = ["q10", "q50", "q90", "predicted_at", "fold"]


def _walk_forward_predictions(pool_id: str, model: TrainedQ50Model) -> pd.DataFrame:
    preds = model.result.predictions
    # A lookup in the sorted index, not a membership test on get_level_values(): that builds a
    # hash of every prediction per pool (0.28 s at 1,000 pools x 1,900 bars: quadratic overall).
    try:
        pool_preds = preds.xs(pool_id, level="pool_id")
    except KeyError:
        pool_preds = preds.iloc[0:0].droplevel("pool_id")
    return pool_preds[PREDICTION_COLUMNS]


def live_rows(model: TrainedQ50Model, frame: pd.DataFrame, walk_forward_index: pd.Index,
              bar: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
    """(rows the live model predicts, rows awaiting the next fold) of one pool's feature frame
    (index open_time), as boolean masks. Both are real, post-warm-up rows the walk-forward did not
    predict; the first have ``trained_until <= predicted_at < valid_until`` (the live model's
    fold), the second ``predicted_at >= valid_until`` (a later fold, not trained yet). Without a
    live model both are empty."""
    none = np.zeros(len(frame), dtype=bool)
    live = model.live
    if live is None:
        return none, none
    predicted_at = frame.index + bar
    new = (~frame["is_filled"].to_numpy(dtype=bool) & ~frame["is_warmup"].to_numpy(dtype=bool)
           & ~frame.index.isin(walk_forward_index))
    in_fold = new & np.asarray(predicted_at >= live.trained_until) & np.asarray(predicted_at < live.valid_until)
    return in_fold, new & np.asarray(predicted_at >= live.valid_until)


def pool_predictions(model: TrainedQ50Model, features: Mapping[str, pd.DataFrame],
                     bar: pd.Timedelta) -> dict[str, pd.DataFrame]:
    """Per pool, the out-of-sample quantiles (index open_time): the walk-forward predictions for
    bars the training run saw, and the live model's for the new bars of its fold
    (:func:`live_rows`), all pools' new bars in one inference call, with the live model's fold.
    Neither model ever saw the label of a bar it predicts."""
    known = {pool_id: _walk_forward_predictions(pool_id, model) for pool_id in features}
    live = model.live
    if live is None:
        return known
    new_rows = {}
    for pool_id, frame in features.items():
        new, _ = live_rows(model, frame, known[pool_id].index, bar)
        if new.any():
            new_rows[pool_id] = frame.loc[new, live.feature_columns]
    if not new_rows:
        return known
    batch = pd.concat(new_rows, names=["pool_id", "open_time"])
    predicted = live.predict(batch)
    predicted["predicted_at"] = predicted.index.get_level_values("open_time") + bar
    predicted["fold"] = live.fold
    out = dict(known)
    for pool_id in new_rows:
        live_preds = predicted.xs(pool_id, level="pool_id")[PREDICTION_COLUMNS]
        out[pool_id] = pd.concat([known[pool_id], live_preds]).sort_index()
    return out


def pool_row_counts(model: TrainedQ50Model, pool_id: str, frame: pd.DataFrame, bar: pd.Timedelta) -> dict[str, int]:
    """One pool's rows beyond the walk-forward (metadata): ``live_model_signals``, the new bars the
    live model predicts (fold ``live.fold``, not predicted by the walk-forward), and
    ``rows_awaiting_next_fold``, the new bars that get no signal until the model retrains."""
    in_fold, awaiting = live_rows(model, frame, _walk_forward_predictions(pool_id, model).index, bar)
    return {"live_model_signals": int(in_fold.sum()), "rows_awaiting_next_fold": int(awaiting.sum())}


def pool_signals(pool_id: str, predictions: pd.DataFrame, features: pd.DataFrame, config: SignalConfig,
                 model_run: str, reserves: ReserveSeries | None) -> pd.DataFrame:
    """One pool's signal rows (index open_time) from its out-of-sample quantiles, costs priced at the
    pool's liquidity over time (``reserves``; None = fee only)."""
    signals = compute_signals(predictions[["q10", "q50", "q90", "predicted_at"]],
                              features["vol_risk"].reindex(predictions.index), config, reserves=reserves)
    signals["fold"] = predictions["fold"].astype("int64")
    signals["model_run"] = model_run
    signals["feature_vector_id"] = features["feature_vector_id"].reindex(signals.index)
    return signals


def signals_for_pools(model: TrainedQ50Model, features: Mapping[str, pd.DataFrame | Blocked], config: SignalConfig,
                      bar: pd.Timedelta, reserves: Mapping[str, ReserveSeries | None]) -> dict[str, pd.DataFrame | Blocked]:
    """Every pool's signals (``reserves``: each pool's liquidity over time); a pool blocked upstream
    stays blocked. Raises :class:`~q50_assets.lineage.model.step.ModelBlockedError` for a model whose run
    failed a blocking check: no pool gets signals from it."""
    model.require_usable()
    usable = {p: f for p, f in features.items() if first_blocked(p, f) is None}
    predictions = pool_predictions(model, usable, bar)
    return {pool_id: (frame if isinstance(frame, Blocked)
                      else pool_signals(pool_id, predictions[pool_id], frame, config, model.run_id, reserves[pool_id]))
            for pool_id, frame in features.items()}


def check_signals(signals: pd.DataFrame, bar: pd.Timedelta) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """(rows known before their bar closed, rows with crossed quantiles): both block the pool."""
    early = signals.index[signals["known_at"] < signals.index + bar]
    crossed = signals.index[~((signals["q10"] <= signals["q50"]) & (signals["q50"] <= signals["q90"]))]
    return early, crossed


def reserve_assumption(db: CollectorSource, settings: Settings) -> FallbackReserve:
    """The reserve assumed where a pool has no observation (``nautilus_trader.backtest.fallback_reserve``
    / ``fallback_reserve_usd``): one definition for the signal and the backtest steps, which must
    price with the same liquidity."""
    backtest = settings.nautilus_trader.backtest
    return assumed_reserve(db, backtest.fallback_reserve, backtest.fallback_reserve_usd)


def signals_step(model: TrainedQ50Model, features: dict, db: CollectorSource, settings: Settings,
                 progress=None, fallback: FallbackReserve | None = None
                 ) -> tuple[dict[str, pd.DataFrame | Blocked], dict[str, tuple]]:
    """A batch of pools against one model (live-model inference in one call), costs priced at each
    pool's liquidity as the collector observed it (one read per batch), and before any observation
    at the assumed reserve (``fallback``; None = :func:`reserve_assumption` of this batch). A pool
    failing a rule is blocked, so its rows never reach the table strategies read. Returns (signals
    or Blocked per pool, (early, crossed) rows per computed pool)."""
    bar = pd.Timedelta(seconds=settings.bar_seconds)
    model.require_usable()  # before reading anything: a blocked model gives no pool signals
    usable = [p for p, f in features.items() if not isinstance(f, Blocked)]
    if usable and fallback is None:
        fallback = reserve_assumption(db, settings)
    reserves = ({p: r for p, (r, _) in db.pool_reserves_many(usable, fallback.usd).items()} if usable else {})
    computed = signals_for_pools(model, features, SignalConfig.of(settings), bar, reserves)
    out, outcomes = {}, {}
    for pool_id, signals in computed.items():
        if isinstance(signals, Blocked):
            out[pool_id] = signals
            continue
        early, crossed = outcomes[pool_id] = check_signals(signals, bar)
        failed = [n for n, rows in (("known_at_after_bar_close", early), ("quantiles_ordered", crossed)) if len(rows)]
        out[pool_id] = Blocked(pool_id, STAGE, f"checks failed: {', '.join(failed)}") if failed else signals
    if progress:
        progress(len(features))
    return out, outcomes
