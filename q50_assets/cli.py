"""Command line: ``q50 migrate | load-sample | replay-collector | register-pools | demo | ui``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from q50_assets.machine import usable_cores
from q50_assets.settings import ENV_DATABASE_URL, Settings, SettingsError, database_label, get_settings

def _collector(settings: Settings):
    """The collector's tables (read only; the sample loader, playing the collector, writes through its engine)."""
    from q50_assets.storage.collector import CollectorReader

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return CollectorReader(url=settings.database_url)


def _project_tables(settings: Settings):
    from q50_assets.storage.project_tables import ProjectTables

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return ProjectTables(url=settings.database_url)


def _dagster_instance(settings: Settings):
    """The instance of DAGSTER_HOME; unset, one per database under its data folder."""
    from q50_assets.storage.dagster_instance import local_instance

    try:
        return local_instance(settings.database_dir / "dagster_home", database_label(settings.database_url))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def cmd_ui(settings: Settings, args) -> int:
    """``dagster dev`` on this checkout's workspace, with the Dagster home of the configured database."""
    from q50_assets.storage.dagster_instance import dagster_home

    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    if not workspace.exists():
        print(f"q50 ui: {workspace} not found: run it from a checkout of the project", file=sys.stderr)
        return 1
    try:
        home = dagster_home(settings.database_dir / "dagster_home", database_label(settings.database_url))
    except ValueError as exc:
        print(f"q50 ui: {exc}", file=sys.stderr)
        return 2
    print(f"q50 ui: database {database_label(settings.database_url)}, Dagster home {home}", flush=True)
    dagster = Path(sys.executable).with_name("dagster")
    os.chdir(workspace.parent)
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(workspace), *args.dagster_args])


def cmd_migrate(settings: Settings, _args) -> int:
    tables = _project_tables(settings)
    print(f"{tables.display_url}: project tables at revision {tables.migrate()}")
    return 0


def _refuse_foreign_collector(settings: Settings, args, what: str) -> bool:
    if settings.database.url and not args.force:
        print(f"q50: refusing to {what} into {_collector(settings).display_url}: {ENV_DATABASE_URL} points at a "
              "collector database (pass --force if it is a scratch copy)", file=sys.stderr)
        return True
    return False


def cmd_load_sample(settings: Settings, args) -> int:
    from q50_assets.db.sample_loader import load_sample

    if (args.hold_back_bars or args.hold_back_hours) and _refuse_foreign_collector(settings, args,
                                                                                 "load a partial sample"):
        return 2
    db = _collector(settings)
    report = load_sample(db.engine, hold_back_bars=args.hold_back_bars, hold_back_hours=args.hold_back_hours)
    print(f"Loaded the bundled sample into {db.display_url}:")
    print("\n".join(report.lines()))
    return 0


def cmd_replay_collector(settings: Settings, args) -> int:
    """Play the collector's next run with the sample's held-back bars (for watching the sensor)."""
    from q50_assets.db.sample_loader import replay_held_back_bars

    if _refuse_foreign_collector(settings, args, "write sample bars"):
        return 2
    if args.hours is not None and args.hours < 1:
        print("q50 replay-collector: --hours must be at least 1", file=sys.stderr)
        return 2
    db = _collector(settings)
    if args.hours is not None:
        # By the calendar: the collector's next run(s), every timeframe, as it would write them.
        inserted = replay_held_back_bars(db.engine, hours=args.hours)
        what = f"{sum(inserted.values())} new bars (every timeframe) of the next {args.hours} hour(s)"
    else:
        inserted = replay_held_back_bars(db.engine, bars=args.bars, timeframe=settings.timeframe)
        what = f"{sum(inserted.values())} new {settings.timeframe} bars"
    if not inserted:
        print("No held-back sample bars left (load with `q50 load-sample --hold-back-hours N` or "
              "`--hold-back-bars N` first).")
        return 0
    print(f"Collector run played: {what} in {len(inserted)} pools of {db.display_url}; "
          "collection_metadata.ohlcv_collector updated. The new_collector_bars sensor's next tick requests "
          "refresh_pools runs (batches) for them.")
    return 0


def register_pools(settings: Settings, instance) -> list[str]:
    """Add a dynamic partition for every pool that has bars of the configured timeframe."""
    from q50_assets.lineage.common.partitions import POOLS_PARTITION_NAME

    pool_ids = _collector(settings).pools_with_bars(settings.timeframe)
    known = set(instance.get_dynamic_partitions(POOLS_PARTITION_NAME))
    new = [p for p in pool_ids if p not in known]
    if new:
        instance.add_dynamic_partitions(POOLS_PARTITION_NAME, new)
    return pool_ids


def cmd_register_pools(settings: Settings, _args) -> int:
    pool_ids = register_pools(settings, _dagster_instance(settings))
    print(f"{len(pool_ids)} pools with {settings.timeframe} bars are registered as partitions")
    return 0


class ProgressPrinter:
    """Progress of a lineage run on stdout: pools done of total per phase (after every batch run)
    and, within a batch, each stage's pools done (the assets report them)."""

    def __init__(self, stream=None, min_interval: float = 2.0):
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self._last = 0.0
        self.started = time.perf_counter()

    def phase(self, name: str, done: int, total: int) -> None:
        print(f"  [{time.perf_counter() - self.started:6.1f} s] {name}: {done}/{total} pools", file=self.stream,
              flush=True)

    def __enter__(self):
        import logging

        from q50_assets.lineage.common.batch import progress_log

        printer = self

        class Handler(logging.Handler):
            def emit(self, record):
                now = time.perf_counter()
                if record.done != record.total and now - printer._last < printer.min_interval:
                    return
                printer._last = now
                print(f"  [{now - printer.started:6.1f} s]   {record.stage}: {record.done}/{record.total} pools of "
                      "this batch", file=printer.stream, flush=True)

        self._handler = Handler()
        progress_log.addHandler(self._handler)
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False
        return self

    def __exit__(self, *exc):
        from q50_assets.lineage.common.batch import progress_log

        progress_log.removeHandler(self._handler)


def recorded_events(instance, run_ids) -> tuple[list, list]:
    """(materializations, check evaluations) the runs recorded, as Dagster events."""
    from dagster import DagsterEventType

    materializations, checks = [], []
    of_type = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=of_type):
            event = entry.dagster_event
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materializations.append(event)
            else:
                checks.append(event.asset_check_evaluation_data)
    return materializations, checks


def summarize(run, settings: Settings, instance) -> tuple[list[str], list[str]]:
    """The demo's summary lines from what the runs recorded in the instance, and the runs that failed outright."""
    lines: list[str] = []
    checks: dict[str, Counter] = {}
    blocked: dict[str, list[str]] = {}
    totals = Counter()
    safe = 0
    signal_counts: dict[str, dict] = {}
    backtest_status = Counter()
    model_md: dict = {}
    portfolio_md = ""
    report_md: dict = {}
    materializations, evaluations = recorded_events(instance, run.run_ids())
    for event in materializations:
        key = event.asset_key.to_user_string()
        md = {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}
        if key == "ohlcv_bars":
            totals["rows_read"] += md["rows_read"]
            totals["complete_bars"] += md["complete_bars"]
            totals["partial"] += md["partial_bars_held_back"]
            safe += bool(md["safe_for_downstream"])
        elif key == "q50_signals" and md.get("status") == "ok":
            signal_counts[event.partition] = md
        elif key == "backtest_results":
            backtest_status[md.get("status", "?")] += 1
        elif key == "q50_model":
            model_md = md
        elif key == "backtest_portfolio":
            portfolio_md = md["summary"]
            report_md = md
    for e in evaluations:
        label = f"{e.asset_key.to_user_string()}.{e.check_name}"
        counts = checks.setdefault(label, Counter())
        counts["passed" if e.passed else "failed"] += 1
        counts["blocking"] = int(e.severity.value == "ERROR")
        counts["per_pool"] = int(e.partition is not None)
        if not e.passed and e.severity.value == "ERROR" and e.partition:
            blocked.setdefault(e.partition, []).append(label)
    failed_runs = run.failed_runs()
    pools = len(run.pools)
    lines.append(f"Pools: {pools} with {settings.timeframe} bars; {safe} safe for downstream stages")
    lines.append(f"Bars: {totals['rows_read']:,} read = {totals['complete_bars']:,} complete "
                 f"+ {totals['partial']} newest (partial) bars held back")
    if model_md:
        lines.append(f"Q50 model: {model_md['folds']} walk-forward folds, {model_md['oos_labelled_rows']:,} "
                     f"out-of-sample predictions with known labels, {model_md['crossed_repaired']} crossed quantiles "
                     f"repaired, {model_md['seconds']} s")
        # Coverage of the recalibrated q10/q90 (the model's own before recalibration beside it) and
        # the pinball skill over the past-only naive forecaster with its 95 % block-bootstrap interval.
        lines.append("  out of sample   pinball   coverage (target, raw)   skill over naive [95 % interval]")
        for col, target in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
            raw = model_md.get(f"coverage_{col}_raw")
            raw_text = f", raw {raw:.3f}" if raw is not None and raw == raw else ""
            skill = model_md.get(f"skill_{col}")
            skill_text = (f"{100 * skill:+.1f} % [{100 * model_md[f'skill_{col}_low']:+.1f}, "
                          f"{100 * model_md[f'skill_{col}_high']:+.1f}]" if skill is not None else "n/a")
            lines.append(f"  {col:<15} {model_md['pinball_' + col]:.5f}   {model_md['coverage_' + col]:.3f} "
                         f"({target}{raw_text}){' ' * (12 - len(raw_text))}{skill_text}")
    if signal_counts:
        lines.append("Signals per pool (bars with an OOS signal: long / short / hold):")
        for pool_id, md in sorted(signal_counts.items(), key=lambda kv: (-kv[1]["signals"], kv[0])):
            lines.append(f"  {pool_id:<52} {md['signals']:>5}: {md['long']:>4} / {md['short']:>3} / {md['hold']:>5}")
        lines.append(f"  total {sum(m['signals'] for m in signal_counts.values()):,} signals, "
                     f"{sum(m['tradeable'] for m in signal_counts.values()):,} tradeable after costs")
    if backtest_status:
        lines.append("Backtests: " + ", ".join(f"{n} pools {status}" for status, n in backtest_status.items()))
    if report_md and report_md.get("verdict") and settings.nautilus_trader.enabled:
        lines.append("Verdict (out of sample; the report's first section):")
        lines.append(report_md["verdict"])
        lines.append("")
    if portfolio_md and settings.nautilus_trader.enabled:
        lines.append("Out-of-sample portfolio (NautilusTrader, after fees and AMM price impact; the equal-weight portfolio of the pools present at each bar):")
        lines.append(portfolio_md)
        if report_md.get("headline"):
            lines.append("")
            lines.append(f"With 95 % block-bootstrap intervals (per-bar net return in basis points; deflated Sharpe "
                         f"for {report_md['dsr_trials']} trials in the q50_trials ledger):")
            lines.append(report_md["headline"])
            lines.append(f"Research report (equity curves, permutation null, skill, reliability, where the edge "
                         f"lives): {report_md['report_html']}")
    elif not settings.nautilus_trader.enabled:
        lines.append("Backtests: skipped, nautilus_trader.enabled is false (everything up to regimes ran)")
    lines.append("Checks (passed / failed; a blocked pool's later checks are not evaluated):")
    for name, counts in checks.items():
        kind = ("blocks the pool" if counts["per_pool"] else "blocking") if counts["blocking"] else "warning"
        lines.append(f"  {name:<42} {counts['passed']:>4} / {counts['failed']:<4} {kind}")
    if blocked:
        lines.append("Blocked pools:")
        for pool_id, names in blocked.items():
            lines.append(f"  {pool_id}: {', '.join(n.split('.', 1)[1] for n in names)}")
    return lines, failed_runs


def cmd_demo(settings: Settings, args) -> int:
    """Load the sample (embedded database only), migrate, materialize every pool, summarise."""
    from q50_assets.automation.lineage_run import materialize_lineage
    from q50_assets.db.sample_loader import load_sample
    from q50_assets.definitions import build_definitions

    started = time.perf_counter()
    db = _collector(settings)
    embedded = not settings.database.url
    print(f"q50 demo: collector database {db.display_url} (timeframe {settings.timeframe})", flush=True)
    if embedded or args.load_sample:
        report = load_sample(db.engine, hold_back_bars=args.hold_back_bars)
        print(f"Sample: {report.inserted} rows inserted" + (" (already loaded)" if not report.inserted else ""))
    else:
        print(f"Sample: not loaded ({ENV_DATABASE_URL} points at your collector; pass --load-sample to force)")
    print(f"Project tables: revision {_project_tables(settings).migrate()}")

    instance = _dagster_instance(settings)
    pool_ids = register_pools(settings, instance)
    defs = build_definitions(settings)
    per_run = settings.batches.pools_per_run
    print(f"Materializing {len(pool_ids)} pools (Dagster home {os.environ['DAGSTER_HOME']}) ...", flush=True)
    at_once = max(1, args.runs_at_once or settings.batches.runs_at_once or usable_cores())
    # With several runs at once, the pools are split into two batches per process: pools differ
    # in cost (bars, trades, fills), and a process done early takes the next batch from the queue
    # instead of waiting for the slowest half (on the bundled sample: the backtest phase 20-23 s -> 16-19 s).
    per_run = min(per_run, -(-len(pool_ids) // (2 * at_once))) if at_once > 1 else per_run
    with ProgressPrinter() as progress:
        run = materialize_lineage(defs, instance, pool_ids, per_run, progress=progress.phase, runs_at_once=at_once)
    lines, failed_runs = summarize(run, settings, instance)
    print()
    print("\n".join(lines))
    if failed_runs:
        print(f"Runs that failed outright: {failed_runs}")
    print(f"Runs: {len(run.run_ids())}, at most {at_once} at once, at most {per_run} pools each ("
          + ", ".join(f"{name} {len(p.runs)}" for name, p in run.phases.items()) + ")")
    print("Time: " + ", ".join(f"{name} {p.seconds:.0f} s" for name, p in run.phases.items()))
    print(f"Done in {time.perf_counter() - started:.1f} s. Open the UI: make ui  (or dagster dev -w workspace.yaml)")
    return 1 if failed_runs else 0


COMMANDS = {
    "migrate": (cmd_migrate, "apply the project's migrations to the configured database"),
    "load-sample": (cmd_load_sample, "load the bundled real sample into the collector tables (idempotent)"),
    "replay-collector": (cmd_replay_collector, "play the collector's next run: write the next held-back sample bars"),
    "register-pools": (cmd_register_pools, "add a Dagster partition for each pool with bars"),
    "demo": (cmd_demo, "load the sample, migrate, materialize every pool, print a summary"),
    "ui": (cmd_ui, "the Dagster UI and daemon (dagster dev) with the configured database's Dagster home"),
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
            p.add_argument("--runs-at-once", type=int, metavar="N",
                           help="batch runs executed at once, each in its own process (default batches.runs_at_once)")
        if name == "load-sample":
            p.add_argument("--hold-back-bars", type=int, default=0, metavar="N",
                           help="leave out each series' newest N bars, for replay-collector to write later")
            p.add_argument("--hold-back-hours", type=int, default=0, metavar="N",
                           help="leave out every bar later than the sample's newest 1h bar minus N hours (a "
                           "calendar cut), for replay-collector --hours to write later")
            p.add_argument("--force", action="store_true",
                           help="allow --hold-back-bars/--hold-back-hours on a non-embedded database")
        if name == "ui":
            p.usage = "q50 ui [dagster dev options, e.g. -p 3001]"
        if name == "replay-collector":
            step = p.add_mutually_exclusive_group()
            step.add_argument("--bars", type=int, default=1, metavar="N", help="bars per pool to write (default 1)")
            step.add_argument("--hours", type=int, metavar="N",
                              help="by the calendar: every held-back bar (every timeframe) of the next N hours, "
                              "counted from the earliest held-back 1h bar; pools without a bar then get none")
            p.add_argument("--force", action="store_true", help="allow writing into a non-embedded database")
    # `q50 ui` passes what it does not know on to `dagster dev`; every other command refuses it.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "ui":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dagster_args = extra
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
