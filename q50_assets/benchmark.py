"""``q50 benchmark``: wall time of each lineage stage's work on the bundled sample.

Runs the same functions the assets call (not Dagster runs: run bookkeeping is measured
separately as ``dagster_run_overhead``), in a fresh scratch data dir, so the numbers do not
depend on what a previous run left behind. Prints a table and writes JSON.

Stages and what their time covers:

* ``load_sample``    - the sample loader filling an empty embedded collector database.
* ``ohlcv``          - reading and validating every pool's bars.
* ``qlib_export``    - writing every safe pool's hourly grid into QLib's binary store.
* ``features``       - evaluating every feature expression for every pool with ``D.features``.
* ``feature_vectors``- persisting the vectors to ``q50_feature_vectors``.
* ``model``          - every walk-forward fold of the Q50 model (load panel, fit, predict).
* ``signals``        - signal columns for every pool.
* ``regimes``        - regime labels for every pool.
* ``backtest``       - the backtest stage for every pool (research/backtest_stage.py run_pool_stage):
  the NautilusTrader engines of every variant (q50, q50_close, the reserve sensitivity where the
  reserve is assumed, buy & hold, buy & hold at q50's exposure), metrics, round trips and the
  permutation null; ``backtest_q50_only`` the Q50 strategy's engine alone.
* ``backtest_vs_bare`` - the Q50 strategy's engines against a bare Nautilus engine replaying the
  same bars and orders (research/bare_replay.py), when that module is present.
* ``p3_new_bar_to_trading_history`` - through Dagster: the collector writes one new bar for one
  pool (the one whose Q50 strategy trades most), then the new_collector_bars sensor ticks and the
  run it requests executes in-process; timed from the tick to the pool's new trading history being
  readable. Met only if exactly that pool was requested, its history is non-empty and a bystander
  pool's materializations, backtest run and history are untouched. Set-up (partitions, model run,
  both pools' first refresh) is not timed.
* P4 (``q50 benchmark --scale``) is scale_benchmark.py.
* ``p1_full_lineage`` - ``q50 demo`` in a subprocess on an empty embedded database and an empty
  Dagster instance (every pool through every asset, ~120 recorded runs); compared with the sum of
  the core compute stages above (QLib export + features, model folds, Nautilus runs).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

# Targets on the reference machine (2 cores), from the issues that set them.
TARGETS_SECONDS = {"features": 5.0, "model": 30.0, "backtest_q50_only": 20.0}


class _Timer:
    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextmanager
    def stage(self, name: str, **details):
        started = time.perf_counter()
        record = {"seconds": None, **details}
        self.stages[name] = record
        yield record
        record["seconds"] = round(time.perf_counter() - started, 3)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("dagster", "pyqlib", "lightgbm", "pandas", "sqlalchemy", "nautilus_trader"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def run_benchmark(settings, scratch: Path) -> dict:
    """Run every stage once on the sample in ``scratch`` (emptied first); return the report."""
    from q50_assets.assets.features import build_pool_features, expressions_for
    from q50_assets.assets.model import load_training_panel, oos_summary, walk_forward_config
    from q50_assets.assets.ohlcv import bar_rules
    from q50_assets.assets.signals import signal_config
    from q50_assets.db.sample_loader import load_sample
    from q50_assets.research.bars import validate_bars
    from q50_assets.research.q50_model import walk_forward
    from q50_assets.research.signals import compute_signals
    from q50_assets.resources.database import CollectorDatabase
    from q50_assets.resources.qlib_store import QlibStore

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    settings = settings.model_copy(update={"data_dir": scratch, "database": settings.database.model_copy(update={"url": None})})
    db = CollectorDatabase(url=settings.database_url)
    store = QlibStore(provider_dir=str(scratch / "qlib"), timeframe=settings.timeframe)
    timer = _Timer()

    with timer.stage("load_sample") as rec:
        report = load_sample(db.engine)
        rec["rows"] = report.inserted
    db.migrate()

    with timer.stage("ohlcv") as rec:
        rules = bar_rules(settings)
        pool_ids = db.pools_with_bars(settings.timeframe)
        validated = {p: validate_bars(p, db.read_bars(p, settings.timeframe), rules) for p in pool_ids}
        safe = {p: v.bars for p, v in validated.items() if v.safe}
        rec.update(pools=len(pool_ids), safe_pools=len(safe), bars=sum(len(b) for b in safe.values()))

    frames = {}
    with timer.stage("qlib_export") as rec:
        # build_pool_features writes the grid and then evaluates one pool; time the write alone
        # by writing everything first, then evaluate all pools in one D.features call below.
        from q50_assets.research.bars import TIMEFRAME_SECONDS
        from q50_assets.research.features import to_bar_grid

        bar_seconds = TIMEFRAME_SECONDS[settings.timeframe]
        for pool_id, bars in safe.items():
            store.write_pool(pool_id, to_bar_grid(bars, bar_seconds))
        rec["pools"] = len(safe)

    expressions = expressions_for(settings)
    with timer.stage("features") as rec:
        panel = store.features(sorted(safe), expressions)
        rec.update(rows=len(panel), expressions=len(expressions))

    with timer.stage("feature_vectors") as rec:
        # The asset's own path (write + evaluate one pool + persist), for every pool.
        written = 0
        for pool_id, bars in safe.items():
            frame, columns, version = build_pool_features(pool_id, bars, settings, store)
            real = ~frame["is_filled"]
            frame["feature_vector_id"], _ = db.upsert_feature_vectors(
                pool_id, settings.timeframe, version, frame[real], columns
            )
            frames[pool_id] = frame
            written += int(real.sum())
        rec.update(vectors=written, note="per-pool asset path: QLib write + evaluate + DB upsert")

    with timer.stage("model") as rec:
        features, labels, counts = load_training_panel(store, settings)
        result = walk_forward(features, labels, walk_forward_config(settings))
        trained = result.folds[~result.folds["skipped"]]
        summary = oos_summary(result)
        rec.update(folds=len(trained), train_rows_last_fold=int(trained["train_rows"].max()) if len(trained) else 0,
                   predictions=len(result.predictions), **{k: round(v, 5) for k, v in summary.items()})

    fallback = settings.nautilus_trader.backtest.fallback_reserve_usd
    reserve_series = {p: db.pool_reserves(p, fallback)[0] for p in frames}
    with timer.stage("signals") as rec:
        preds = result.predictions
        n = 0
        for pool_id, frame in frames.items():
            if pool_id not in preds.index.get_level_values(0):
                continue
            pool_preds = preds.xs(pool_id, level="pool_id")
            signals = compute_signals(pool_preds[["q10", "q50", "q90", "predicted_at"]],
                                      frame["vol_risk"], signal_config(settings), reserves=reserve_series[pool_id])
            n += len(signals)
        rec["signals"] = n

    from q50_assets.assets.backtest import backtest_stage_config
    from q50_assets.assets.regimes import pool_regimes
    from q50_assets.definitions import build_resources
    from q50_assets.research.backtest import Q50Inputs, run_q50_backtest
    from q50_assets.research.backtest_stage import run_pool_stage
    from q50_assets.research.regimes import RegimeDetector
    from q50_assets.research.signals import Q50SignalLoader

    with timer.stage("regimes") as rec:
        regimes = {p: pool_regimes(frame, settings) for p, frame in frames.items()}
        rec["rows"] = sum(len(r) for r in regimes.values())

    pool_signals = {}
    for pool_id, frame in frames.items():
        if pool_id in preds.index.get_level_values(0):
            pool_preds = preds.xs(pool_id, level="pool_id")
            pool_signals[pool_id] = compute_signals(pool_preds[["q10", "q50", "q90", "predicted_at"]],
                                                    frame["vol_risk"], signal_config(settings),
                                                    reserves=reserve_series[pool_id])
    nautilus = build_resources(settings)["nautilus"]
    stage_config = backtest_stage_config(settings, nautilus)
    results = {}
    with timer.stage("backtest") as rec:
        for pool_id, signals in pool_signals.items():
            results[pool_id] = run_pool_stage(pool_id, safe[pool_id], signals, regimes[pool_id],
                                              reserve_series[pool_id], stage_config, "benchmark")
        ok = [r for r in results.values() if r.status == "ok"]
        rec.update(pools=len(results), engines=sum(len({id(o) for o in r.outcomes.values()}) for r in ok),
                   fills=sum(len(o.fills) for r in ok for o in {id(o): o for o in r.outcomes.values()}.values()),
                   permutation_draws=sum(r.permutation["draws"] for r in ok))
    risk = settings.nautilus_trader.risk_management

    def q50_inputs(pool_id):
        return Q50Inputs(signals=Q50SignalLoader(pool_signals[pool_id]),
                         regimes=RegimeDetector().with_labels(regimes[pool_id]),
                         base_position_size=risk.base_position_size, max_position_size=risk.max_position_size,
                         kelly_fraction=settings.nautilus_trader.backtest.kelly_fraction,
                         variance_multiplier=settings.signals.variance_multiplier)

    def pool_spec(pool_id):
        from dataclasses import replace

        return replace(stage_config.spec, reserves=reserve_series[pool_id])

    with timer.stage("backtest_q50_only") as rec:
        fills = 0
        for pool_id in pool_signals:
            outcome = run_q50_backtest(pool_id, safe[pool_id], q50_inputs(pool_id), pool_spec(pool_id),
                                       timeframe=settings.timeframe)
            fills += len(outcome.fills)
        rec.update(pools=len(pool_signals), bars=sum(len(safe[p]) for p in pool_signals), fills=fills)
    try:
        from q50_assets.research import bare_replay
    except ImportError:
        bare_replay = None
    if bare_replay is not None:
        with timer.stage("backtest_vs_bare") as rec:
            data = [(p, safe[p], q50_inputs(p), pool_spec(p)) for p in pool_signals]
            rec.update(bare_replay.time_stage_vs_bare(data))

    q50_fills = {p: len(r.outcomes["q50"].fills) for p, r in results.items() if r.status == "ok"}
    p3_new_bar_to_trading_history(settings, db, scratch, safe, q50_fills, timer)
    p1_full_lineage(scratch, timer)

    stages = timer.stages
    checks = {name: {"target_seconds": target, "seconds": stages[name]["seconds"],
                     "met": stages[name]["seconds"] <= target}
              for name, target in TARGETS_SECONDS.items()}
    if "p3_new_bar_to_trading_history" in stages:
        p3 = stages["p3_new_bar_to_trading_history"]
        checks["p3_new_bar_to_trading_history"] = {
            "target_seconds": 20.0, "seconds": p3["seconds"],
            "met": p3["seconds"] <= 20.0 and p3["requested_pools"] == [p3["pool_id"]] and p3["backtest_updated"]
                     and p3["bystander_untouched"] and p3["trading_history_rows"] > 0}
    if "p1_full_lineage" in stages:
        core = sum(stages[name]["seconds"] for name in CORE_STAGES if name in stages)
        p1 = stages["p1_full_lineage"]
        p1["core_sum_seconds"] = round(core, 3)
        p1["ratio_to_core"] = round(p1["seconds"] / core, 2) if core else None
        checks["p1_full_lineage"] = {"target_seconds": 60.0, "seconds": p1["seconds"],
                                     "met": p1["exit_code"] == 0 and p1["seconds"] <= 60.0}
        checks["p1_ratio_to_core"] = {"target_seconds": 2.0, "seconds": p1["ratio_to_core"],
                                      "met": p1["ratio_to_core"] is not None and p1["ratio_to_core"] <= 2.0}
    if "backtest_vs_bare" in stages:
        # Stage vs bare engine, both including bar preparation (see research/bare_replay.py);
        # the engine-only ratio is reported beside it in the stage's details.
        ratio = stages["backtest_vs_bare"]["ratio"]
        checks["backtest_vs_bare_ratio"] = {"target_seconds": 1.3, "seconds": ratio, "met": ratio <= 1.3}
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **_versions()},
        "stages": stages,
        "targets": checks,
    }


# The core compute of the lineage, measured standalone above: what P1's wall time is compared with.
CORE_STAGES = ("qlib_export", "features", "model", "backtest")


def p1_full_lineage(scratch: Path, timer: _Timer) -> None:
    """The whole lineage through Dagster, as a newcomer runs it, from nothing."""
    import subprocess
    import sys

    home = scratch / "p1"
    env = {**os.environ, "Q50_DATA_DIR": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env.pop("Q50_DATABASE_URL", None)  # the embedded database, whatever the shell says
    with timer.stage("p1_full_lineage") as rec:
        done = subprocess.run([sys.executable, "-m", "q50_assets.cli", "demo"], env=env, capture_output=True, text=True)
    rec["exit_code"] = done.returncode
    timing = [line for line in done.stdout.splitlines() if line.startswith("Time:")]
    rec["phases"] = timing[0] if timing else done.stderr[-500:]


def p3_new_bar_to_trading_history(settings, db, scratch: Path, safe: dict, q50_fills: dict, timer: _Timer) -> None:
    """One new bar -> sensor tick -> refresh_pool run -> updated trading history (see module doc)."""
    from dagster import AssetKey, DagsterInstance, SensorResult, build_sensor_context
    from sqlalchemy import delete, insert, select

    from q50_assets.db.collector_models import ohlcv_data as o
    from q50_assets.definitions import build_definitions

    tf = settings.timeframe
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    # The pool whose Q50 strategy trades most (so there is trading history to update), and a
    # bystander refreshed the same way whose outputs must stay untouched.
    pool_id, bystander = sorted(q50_fills, key=lambda p: (-q50_fills[p], p))[:2]
    with db.engine.begin() as conn:  # the collector before its next run: the newest bar not written yet
        newest = dict(conn.execute(select(o).where(o.c.pool_id == pool_id, o.c.timeframe == tf)
                                   .order_by(o.c.timestamp.desc()).limit(1)).mappings().one())
        conn.execute(delete(o).where(o.c.id == newest["id"]))
    (scratch / "dagster_home").mkdir(parents=True, exist_ok=True)
    instance = DagsterInstance.local_temp(str(scratch / "dagster_home"))
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("new_collector_bars")
    refresh = defs.resolve_job_def("refresh_pool")
    cursor = None

    def tick():
        nonlocal cursor
        result = sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"collector_db": db}))
        if isinstance(result, SensorResult):
            cursor = result.cursor
            for req in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result

    tick()
    upstream = [AssetKey("ohlcv_bars"), AssetKey("pool_trades"), AssetKey("qlib_features"), AssetKey("regime_labels")]
    for pool in (pool_id, bystander):
        refresh.execute_in_process(partition_key=pool, instance=instance, run_config=quiet, asset_selection=upstream)
    defs.resolve_job_def("train_q50_model").execute_in_process(instance=instance, run_config=quiet)
    for pool in (pool_id, bystander):
        refresh.execute_in_process(partition_key=pool, instance=instance, run_config=quiet)
    before = db.latest_backtest_results(tf)
    before_run = before.loc[before["pool_id"] == pool_id, "backtest_run_id"].iloc[0]
    bystander_outputs = _pool_outputs(instance, db, before, bystander)

    from q50_assets.db.sample_loader import record_collector_run

    with db.engine.begin() as conn:  # the collector's next run writes the bar
        conn.execute(insert(o).values(**{k: v for k, v in newest.items() if k != "id"}))
        record_collector_run(conn)

    with timer.stage("p3_new_bar_to_trading_history", pool_id=pool_id) as rec:
        result = tick()
        requested = [r.partition_key for r in result.run_requests]
        ok = True
        for request in result.run_requests:
            ok &= refresh.execute_in_process(partition_key=request.partition_key, asset_selection=request.asset_selection,
                                             tags=request.tags, instance=instance, run_config=quiet,
                                             raise_on_error=False).success
        after = db.latest_backtest_results(tf)
        after_run = after.loc[after["pool_id"] == pool_id, "backtest_run_id"].iloc[0]
        history = db.trading_history(after_run, pool_id)
    rec.update(requested_pools=requested, run_succeeded=bool(ok), backtest_updated=bool(after_run != before_run),
               trading_history_rows=len(history), bystander_pool=bystander,
               bystander_untouched=_pool_outputs(instance, db, after, bystander) == bystander_outputs)


def _pool_outputs(instance, db, latest, pool_id: str) -> tuple:
    """What a refresh of ``pool_id`` would change: its materializations, backtest run, trading history."""
    from dagster import AssetKey

    from q50_assets.automation.jobs import MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS

    storage_ids = []
    for key in (*NEEDS_NO_MODEL_ASSETS, *MODEL_DEPENDENT_ASSETS):
        records = instance.fetch_materializations(AssetKey(key), limit=1000).records
        storage_ids.append(tuple(r.storage_id for r in records if r.partition_key == pool_id))
    run_id = latest.loc[latest["pool_id"] == pool_id, "backtest_run_id"].iloc[0]
    history = db.trading_history(run_id, pool_id)
    return tuple(storage_ids), run_id, len(history)


def format_table(report: dict) -> str:
    lines = [f"{'stage':<18} {'seconds':>8}  details"]
    for name, rec in report["stages"].items():
        details = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("seconds", "note"))
        lines.append(f"{name:<18} {rec['seconds']:>8.2f}  {details}")
    lines.append("")
    for name, t in report["targets"].items():
        unit = "" if "ratio" in name else " s"
        lines.append(f"target {name:<11} <= {t['target_seconds']:>5.1f}{unit}: {t['seconds']:.2f}{unit} "
                     f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
