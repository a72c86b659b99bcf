"""Command line: ``q50 migrate | load-sample | replay-collector | register-pools | demo | benchmark``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from q50_assets.settings import ENV_DATABASE_URL, Settings, SettingsError, get_settings

DAGSTER_YAML = """\
# Written by `q50` for the embedded default: runs and events in SQLite under this folder.
# For PostgreSQL run storage use deploy/dagster.postgres.yaml (README, "Dagster on PostgreSQL").
concurrency:
  runs:
    max_concurrent_runs: 2          # sensor and nightly fan-out: at most two pool runs at once
    tag_concurrency_limits:
      - key: dagster/partition      # never two runs of the same pool at once
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""


def _database(settings: Settings):
    from q50_assets.resources.database import CollectorDatabase

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return CollectorDatabase(url=settings.database_url)


def _dagster_instance(settings: Settings):
    """The instance of DAGSTER_HOME; for the embedded default, one under the data dir."""
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):
        home = settings.data_dir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    if not home.is_absolute():
        raise SettingsError(f"DAGSTER_HOME: must be an absolute path (got {home})")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return DagsterInstance.get()


def cmd_migrate(settings: Settings, _args) -> int:
    db = _database(settings)
    print(f"{db.display_url}: project tables at revision {db.migrate()}")
    return 0


def _refuse_foreign_collector(settings: Settings, args, what: str) -> bool:
    if settings.database.url and not args.force:
        print(f"q50: refusing to {what} into {_database(settings).display_url}: {ENV_DATABASE_URL} points at a "
              "collector database (pass --force if it is a scratch copy)", file=sys.stderr)
        return True
    return False


def cmd_load_sample(settings: Settings, args) -> int:
    from q50_assets.db.sample_loader import load_sample

    if args.hold_back_bars and _refuse_foreign_collector(settings, args, "load a partial sample"):
        return 2
    db = _database(settings)
    report = load_sample(db.engine, hold_back_bars=args.hold_back_bars)
    print(f"Loaded the bundled sample into {db.display_url}:")
    print("\n".join(report.lines()))
    return 0


def cmd_replay_collector(settings: Settings, args) -> int:
    """Play the collector's next run with the sample's held-back bars (for watching the sensor)."""
    from q50_assets.db.sample_loader import replay_held_back_bars

    if _refuse_foreign_collector(settings, args, "write sample bars"):
        return 2
    db = _database(settings)
    inserted = replay_held_back_bars(db.engine, bars=args.bars, timeframe=settings.timeframe)
    if not inserted:
        print("No held-back sample bars left (load with `q50 load-sample --hold-back-bars N` first).")
        return 0
    print(f"Collector run played: {sum(inserted.values())} new {settings.timeframe} bars in {len(inserted)} pools "
          f"of {db.display_url}; collection_metadata.ohlcv_collector updated. The new_collector_bars sensor's "
          "next tick requests a refresh_pool run for each of them.")
    return 0


def register_pools(settings: Settings, instance) -> list[str]:
    """Add a dynamic partition for every pool that has bars of the configured timeframe."""
    from q50_assets.assets.partitions import POOLS_PARTITION_NAME

    pool_ids = _database(settings).pools_with_bars(settings.timeframe)
    known = set(instance.get_dynamic_partitions(POOLS_PARTITION_NAME))
    new = [p for p in pool_ids if p not in known]
    if new:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, new)
    return pool_ids


def cmd_register_pools(settings: Settings, _args) -> int:
    pool_ids = register_pools(settings, _dagster_instance(settings))
    print(f"{len(pool_ids)} pools with {settings.timeframe} bars are registered as partitions")
    return 0


def cmd_demo(settings: Settings, args) -> int:
    """Load the sample (embedded database only), migrate, materialize every pool, summarise."""
    from dagster import AssetKey

    from q50_assets.db.sample_loader import load_sample
    from q50_assets.definitions import build_definitions

    started = time.perf_counter()
    db = _database(settings)
    embedded = not settings.database.url
    print(f"q50 demo: collector database {db.display_url} (timeframe {settings.timeframe})")
    if embedded or args.load_sample:
        report = load_sample(db.engine, hold_back_bars=args.hold_back_bars)
        print(f"Sample: {report.inserted} rows inserted" + (" (already loaded)" if not report.inserted else ""))
    else:
        print(f"Sample: not loaded ({ENV_DATABASE_URL} points at your collector; pass --load-sample to force)")
    print(f"Project tables: revision {db.migrate()}")

    instance = _dagster_instance(settings)
    pool_ids = register_pools(settings, instance)
    defs = build_definitions(settings)
    refresh = defs.resolve_job_def("refresh_pool")
    # Blocked pools fail their runs by design; the summary lists them, so no tracebacks here.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    print(f"Materializing {len(pool_ids)} pools (Dagster home {os.environ['DAGSTER_HOME']}) ...")

    phase_seconds: dict[str, float] = {}
    phase_started = time.perf_counter()
    # 1. per pool: OHLCV + trades + features + regimes (a pool failing a blocking check stops there)
    checks: dict[str, Counter] = {}
    blocked: dict[str, list[str]] = {}
    totals = Counter()
    safe_pools, failed_runs = [], []
    for pool_id in pool_ids:
        result = refresh.execute_in_process(
            partition_key=pool_id, instance=instance, run_config=quiet, raise_on_error=False,
            asset_selection=[AssetKey("ohlcv_bars"), AssetKey("pool_trades"), AssetKey("qlib_features"),
                             AssetKey("regime_labels")],
        )
        evaluations = result.get_asset_check_evaluations()
        if not result.success and not any(not e.passed for e in evaluations):
            failed_runs.append(pool_id)
            continue
        for mat in result.asset_materializations_for_node("ohlcv_bars"):
            md = mat.metadata
            totals["rows_read"] += md["rows_read"].value
            totals["complete_bars"] += md["complete_bars"].value
            totals["partial"] += md["partial_bars_held_back"].value
        for e in evaluations:
            label = f"{e.asset_key.to_user_string()}.{e.check_name}"
            checks.setdefault(label, Counter())["passed" if e.passed else "failed"] += 1
            checks[label]["blocking"] = int(e.severity.value == "ERROR")
            if not e.passed and e.severity.value == "ERROR":
                blocked.setdefault(pool_id, []).append(e.check_name)
        if result.success:
            safe_pools.append(pool_id)

    phase_seconds["ohlcv, trades, features, regimes"] = time.perf_counter() - phase_started
    phase_started = time.perf_counter()
    # 2. the walk-forward model over every pool in the QLib store
    model_run = defs.resolve_job_def("train_q50_model").execute_in_process(
        instance=instance, run_config=quiet, raise_on_error=False
    )
    model_md = {}
    if model_run.success:
        model_md = {k: v.value for k, v in model_run.asset_materializations_for_node("q50_model")[0].metadata.items()}
    else:
        failed_runs.append("q50_model")
    for e in model_run.get_asset_check_evaluations():
        label = f"q50_model.{e.check_name}"
        checks.setdefault(label, Counter())["passed" if e.passed else "failed"] += 1
        checks[label]["blocking"] = int(e.severity.value == "ERROR")

    phase_seconds["model"] = time.perf_counter() - phase_started
    phase_started = time.perf_counter()
    # 3. per pool: signals from the out-of-sample predictions, backtests, trading history
    signal_counts = {}
    backtest_status = Counter()
    if model_run.success:
        for pool_id in safe_pools:
            result = refresh.execute_in_process(
                partition_key=pool_id, instance=instance, run_config=quiet, raise_on_error=False,
                asset_selection=[AssetKey("q50_signals"), AssetKey("backtest_results"),
                                 AssetKey("q50_trading_history")],
            )
            if not result.success and all(e.passed for e in result.get_asset_check_evaluations()):
                failed_runs.append(f"signals/backtest[{pool_id}]")  # an error, not a failed check
            for mat in result.asset_materializations_for_node("q50_signals"):
                signal_counts[pool_id] = {k: v.value for k, v in mat.metadata.items()}
            for mat in result.asset_materializations_for_node("backtest_results"):
                backtest_status[mat.metadata["status"].value] += 1
            for e in result.get_asset_check_evaluations():
                label = f"{e.asset_key.to_user_string()}.{e.check_name}"
                checks.setdefault(label, Counter())["passed" if e.passed else "failed"] += 1
                checks[label]["blocking"] = int(e.severity.value == "ERROR")

    portfolio_md = ""
    if model_run.success:
        portfolio = defs.resolve_job_def("portfolio_summary").execute_in_process(
            instance=instance, run_config=quiet, raise_on_error=False)
        if portfolio.success:
            portfolio_md = portfolio.asset_materializations_for_node("backtest_portfolio")[0].metadata["summary"].value
        else:
            failed_runs.append("backtest_portfolio")
    phase_seconds["signals, backtests, trading history"] = time.perf_counter() - phase_started

    print()
    print(f"Pools: {len(pool_ids)} with {settings.timeframe} bars; {len(safe_pools)} safe for downstream stages")
    print(
        f"Bars: {totals['rows_read']:,} read = {totals['complete_bars']:,} complete "
        f"+ {totals['partial']} newest (partial) bars held back"
    )
    if model_md:
        print(
            f"Q50 model: {model_md['folds']} walk-forward folds, {model_md['oos_labelled_rows']:,} out-of-sample "
            f"predictions with known labels, {model_md['crossed_repaired']} crossed quantiles repaired, "
            f"{model_md['seconds']} s"
        )
        print("  out of sample   pinball   coverage (target)")
        for col, target in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
            print(f"  {col:<15} {model_md['pinball_' + col]:.5f}   {model_md['coverage_' + col]:.3f}   ({target})")
    if signal_counts:
        print("Signals per pool (bars with an OOS signal: long / short / hold):")
        for pool_id, md in sorted(signal_counts.items(), key=lambda kv: -kv[1]["signals"]):
            print(f"  {pool_id:<52} {md['signals']:>5}: {md['long']:>4} / {md['short']:>3} / {md['hold']:>5}")
        print(f"  total {sum(m['signals'] for m in signal_counts.values()):,} signals, "
              f"{sum(m['tradeable'] for m in signal_counts.values()):,} tradeable after costs")
    if backtest_status:
        print("Backtests: " + ", ".join(f"{n} pools {status}" for status, n in backtest_status.items()))
    if portfolio_md:
        print("Out-of-sample portfolio (NautilusTrader, after fees and AMM price impact; equal weight per pool):")
        print(portfolio_md)
    elif not settings.nautilus_trader.enabled:
        print("Backtests: skipped, nautilus_trader.enabled is false (everything up to regimes ran)")
    print("Checks (passed / failed):")
    for name, counts in checks.items():
        kind = "blocking" if counts["blocking"] else "warning"
        print(f"  {name:<42} {counts['passed']:>4} / {counts['failed']:<4} {kind}")
    if blocked:
        print("Blocked pools:")
        for pool_id, names in blocked.items():
            print(f"  {pool_id}: {', '.join(names)}")
    if failed_runs:
        print(f"Runs that failed outright: {failed_runs}")
    print("Time: " + ", ".join(f"{name} {sec:.0f} s" for name, sec in phase_seconds.items()))
    print(f"Done in {time.perf_counter() - started:.1f} s. Open the UI: make ui  (or dagster dev -w workspace.yaml)")
    return 1 if failed_runs else 0


def cmd_benchmark(settings: Settings, args) -> int:
    """Time each stage on the bundled sample in a scratch dir; print a table, write JSON."""
    import json

    from q50_assets.benchmark import format_table, run_benchmark

    scratch = settings.data_dir / "benchmark"
    if args.scale:
        from q50_assets.scale_benchmark import format_curve, run_curve

        scales = [int(n) for n in args.scale.split(",")]
        curve = run_curve(scales, settings.data_dir / "benchmark_scale")
        output = Path(args.output) if args.output else settings.data_dir / "benchmark_scale.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(curve, indent=2, default=str))
        print(format_curve(curve))
        print(f"JSON: {output}")
        return 0 if all("failed" not in p for p in curve["points"]) else 1
    print(f"q50 benchmark: every stage on the bundled sample, scratch dir {scratch} ...", flush=True)
    report = run_benchmark(settings, scratch)
    output = Path(args.output) if args.output else settings.data_dir / "benchmark.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(format_table(report))
    print(f"JSON: {output}")
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


COMMANDS = {
    "migrate": (cmd_migrate, "apply the project's migrations to the configured database"),
    "load-sample": (cmd_load_sample, "load the bundled real sample into the collector tables (idempotent)"),
    "replay-collector": (cmd_replay_collector, "play the collector's next run: write the next held-back sample bars"),
    "register-pools": (cmd_register_pools, "add a Dagster partition for each pool with bars"),
    "demo": (cmd_demo, "load the sample, migrate, materialize every pool, print a summary"),
    "benchmark": (cmd_benchmark, "time every stage on the bundled sample; print a table, write JSON"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="q50", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "demo":
            p.add_argument("--load-sample", action="store_true", help="load the sample even into a non-embedded database")
            p.add_argument("--hold-back-bars", type=int, default=0, metavar="N",
                           help="load the sample minus each series' newest N bars (replay-collector writes them later)")
        if name == "load-sample":
            p.add_argument("--hold-back-bars", type=int, default=0, metavar="N",
                           help="leave out each series' newest N bars, for replay-collector to write later")
            p.add_argument("--force", action="store_true", help="allow --hold-back-bars on a non-embedded database")
        if name == "replay-collector":
            p.add_argument("--bars", type=int, default=1, metavar="N", help="bars per pool to write (default 1)")
            p.add_argument("--force", action="store_true", help="allow writing into a non-embedded database")
        if name == "benchmark":
            p.add_argument("--output", help="JSON path (default <data_dir>/benchmark.json, or benchmark_scale.json)")
            p.add_argument("--scale", metavar="N,N,...",
                           help="P4 instead: N synthetic pools x 2,160 hourly bars resampled from the sample, "
                           "each N in its own process (e.g. 100,300,1000; see scale_benchmark.py)")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"q50: bad settings: {exc}", file=sys.stderr)
        return 2
    from q50_assets.db.migrate import CollectorSchemaMissing, MigrationError

    try:
        return COMMANDS[args.command][0](settings, args)
    except (MigrationError, CollectorSchemaMissing) as exc:  # one line says what to fix; a traceback would not
        print(f"q50 {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
