"""Lineage stage 3b - Q50 signals per pool: signal columns from the out-of-sample quantiles
and the pool's features, persisted to ``q50_signals`` keyed by pool and bar, with the time
each becomes known.

Glue only: every formula is in :mod:`q50_assets.research.signals`.
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from q50_assets.assets.model import TrainedQ50Model
from q50_assets.assets.partitions import pool_partitions
from q50_assets.research.bars import TIMEFRAME_SECONDS
from q50_assets.research.costs import ReserveSeries
from q50_assets.research.signals import SignalConfig, compute_signals
from q50_assets.resources.database import CollectorDatabase
from q50_assets.settings import Settings

SIGNALS_ASSET = "q50_signals"


def signal_config(settings: Settings) -> SignalConfig:
    s = settings.signals
    bt = settings.nautilus_trader.backtest
    risk = settings.nautilus_trader.risk_management
    return SignalConfig(
        swap_fee=s.swap_fee, max_reserve_fraction=bt.max_reserve_fraction, capital_usd=bt.starting_capital_usd,
        base_position_size=risk.base_position_size, max_position_size=risk.max_position_size,
        kelly_fraction=bt.kelly_fraction, variance_multiplier=s.variance_multiplier, allow_short=s.allow_short,
    )


LIVE_FOLD = -1  # q50_signals.fold of a signal from the live model (bars newer than the training run)


def pool_predictions(pool_id: str, model: TrainedQ50Model, features: pd.DataFrame, bar: pd.Timedelta) -> pd.DataFrame:
    """One pool's out-of-sample quantiles (index open_time): the walk-forward predictions for
    bars the training run saw, and the live model's for real, post-warm-up bars that close
    after it (new collector bars). Neither ever saw the label of a bar it predicts."""
    model.require_usable()  # a model run that failed a blocking check (e.g. coverage) yields no signals
    preds = model.result.predictions
    # A lookup in the sorted index, not a membership test on get_level_values(): that builds a
    # hash of every prediction per pool (0.28 s at 1,000 pools x 1,900 bars: quadratic overall).
    try:
        pool_preds = preds.xs(pool_id, level="pool_id")
    except KeyError:
        pool_preds = preds.iloc[0:0].droplevel("pool_id")
    pool_preds = pool_preds[["q10", "q50", "q90", "predicted_at", "fold"]]
    live = model.live
    if live is None:
        return pool_preds
    new = (~features["is_filled"] & ~features["is_warmup"] & (features.index + bar > live.trained_until)
           & ~features.index.isin(pool_preds.index))
    if not new.any():
        return pool_preds
    live_preds = live.predict(features.loc[new, live.feature_columns])
    live_preds["predicted_at"] = live_preds.index + bar
    live_preds["fold"] = LIVE_FOLD
    return pd.concat([pool_preds, live_preds[pool_preds.columns]]).sort_index()


def pool_signals(pool_id: str, model: TrainedQ50Model, features: pd.DataFrame, settings: Settings,
                 reserves: ReserveSeries | None) -> pd.DataFrame:
    """One pool's signal rows (index open_time) from the model's out-of-sample quantiles, costs
    priced at the pool's liquidity over time (``reserves``)."""
    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    pool_preds = pool_predictions(pool_id, model, features, bar)
    signals = compute_signals(
        pool_preds[["q10", "q50", "q90", "predicted_at"]],
        features["vol_risk"].reindex(pool_preds.index),
        signal_config(settings),
        reserves=reserves,
    )
    signals["fold"] = pool_preds["fold"].astype("int64")
    signals["model_run"] = model.run_id
    signals["feature_vector_id"] = features["feature_vector_id"].reindex(signals.index)
    return signals


@asset(
    name=SIGNALS_ASSET,
    partitions_def=pool_partitions,
    group_name="signals",
    kinds={"pandas", "sql"},
    check_specs=[
        AssetCheckSpec(
            "known_at_after_bar_close",
            asset=SIGNALS_ASSET,
            blocking=True,
            description="Every signal becomes known at or after its bar's close (open + timeframe).",
        ),
        AssetCheckSpec(
            "quantiles_ordered",
            asset=SIGNALS_ASSET,
            blocking=True,
            description="q10 <= q50 <= q90 on every signal row.",
        ),
    ],
    description="Per pool: spread, prob_up, enhanced info ratio, expected value, adaptive threshold "
    "(with the round trip's fee and impact at the intended size, from the one cost model), tradeable, "
    "side and tier from the out-of-sample q10/q50/q90; persisted to q50_signals with the time each "
    "becomes known.",
)
def q50_signals(
    context: AssetExecutionContext,
    q50_model: TrainedQ50Model,
    qlib_features: pd.DataFrame,
    collector_db: CollectorDatabase,
    settings: ResourceParam[Settings],
):
    pool_id = context.partition_key
    reserves, _ = collector_db.pool_reserves(pool_id, settings.nautilus_trader.backtest.fallback_reserve_usd)
    signals = pool_signals(pool_id, q50_model, qlib_features, settings, reserves)

    bar = pd.Timedelta(seconds=TIMEFRAME_SECONDS[settings.timeframe])
    early = signals.index[signals["known_at"] < signals.index + bar]
    crossed = signals.index[~((signals["q10"] <= signals["q50"]) & (signals["q50"] <= signals["q90"]))]
    # Persist only signals that passed the blocking checks: the table is what strategies read.
    written = 0
    if len(early) == 0 and len(crossed) == 0:
        written = collector_db.replace_signals(pool_id, settings.timeframe, signals)
    sides = signals["side"].value_counts()
    yield Output(
        signals,
        metadata={
            "pool_id": pool_id,
            "signals": len(signals),
            "rows_written": written,
            "tradeable": int(signals["tradeable"].sum()),
            "reserve_sources": MetadataValue.json(
                {str(k): int(v) for k, v in signals["reserve_source"].value_counts().items()}),
            "long": int(sides.get("long", 0)),
            "short": int(sides.get("short", 0)),
            "hold": int(sides.get("hold", 0)),
            "model_run": q50_model.run_id,
            "live_model_signals": int((signals["fold"] == LIVE_FOLD).sum()),
            "first_known_at": MetadataValue.text(str(signals["known_at"].min()) if written else "none"),
            "last_known_at": MetadataValue.text(str(signals["known_at"].max()) if written else "none"),
        },
    )
    yield AssetCheckResult(
        check_name="known_at_after_bar_close",
        passed=len(early) == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "early_signals": len(early),
                  "first_early": MetadataValue.json([t.isoformat() for t in early[:20]])},
    )
    yield AssetCheckResult(
        check_name="quantiles_ordered",
        passed=len(crossed) == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"pool_id": pool_id, "crossed_rows": len(crossed)},
    )
