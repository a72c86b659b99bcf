"""Scale benchmarks of ``python -m benchmarks``: the lineage on N synthetic pools of 2,160 hourly bars.

The pools are generated from the bundled sample's real bars (seeded): each synthetic pool takes
one real safe pool and resamples its bars in blocks of a day (block bootstrap, so volatility
clusters survive), keeping each bar's return, high/low excursions and volume together. They
are written into a fresh embedded collector database as the collector would.

* **P4** (``--scale N,...``, :func:`run_scale`): the same work as the nightly without Dagster -
  the lineage's batch steps, ``batches.pools_per_run`` pools at a time, each value stored and read
  back by the same IO managers (``q50_assets.lineage.without_dagster``). Seconds per stage:

  ``ohlcv`` read + validate, ``trades`` read + reconcile the collector's trades, trade fields
  into the QLib store, ``features`` QLib store + expressions + q50_feature_vectors, ``regimes``
  labels + q50_regime_labels, ``model`` every walk-forward fold + the past-only recalibration +
  the live model + its out-of-sample evidence (as the asset weighs it), ``signals`` signal rows priced by the cost model + q50_signals, ``backtest``
  the backtest stage per pool (every variant's Nautilus engines, metrics, round trips, the
  permutation null), equity picture, q50_backtest_results, ``trading_history`` rows from the Q50
  fills with their feature-vector pointers + q50_trading_history.
* **P5** (``--nightly N``, :func:`run_nightly_dagster`): the same pools through Dagster - every
  pool's bars, features and regimes in batch runs, the model run, every pool's signals,
  backtests and trading history in batch runs, the portfolio run - on PostgreSQL run storage
  (``DAGSTER_PG_URL``, else a throwaway local server), against P4's time for the same N.

Each N runs in its own process (``python -m benchmarks.scale``) so its peak resident
memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

BARS_PER_POOL = 2160
BLOCK_BARS = 24
SEED = 20261129
# Fixed, so a rerun generates the same pools; after the QLib store's calendar_start and in the past.
END = pd.Timestamp("2026-06-01T00:00:00Z")
START_PRICE = 100.0
# The curve's columns: each the time of one asset's batch step (input reads and output writes included).
STAGE_ASSETS = {"ohlcv": "ohlcv_bars", "trades": "pool_trades", "features": "qlib_features", "regimes": "regime_labels",
                "model": "q50_model", "signals": "q50_signals", "backtest": "backtest_results",
                "trading_history": "q50_trading_history"}
STAGES = tuple(STAGE_ASSETS)
# Synthetic trades: the collector keeps swaps of >= 100 USD, and only since it started watching a
# pool -- here the last 30 days of the 90.
TRADE_DAYS = 30
MIN_TRADE_USD = 100.0
QUOTE_PRICE_USD = 230.0  # the quote token (SOL): what price_usd shows on a buy
WALLETS_PER_POOL = 150


def _source_bars(settings, scratch: Path) -> list[pd.DataFrame]:
    """The bundled sample's safe pools (validated bars), the material the synthetic pools resample."""
    from q50_assets.db.sample_loader import load_sample
    from q50_assets.lineage.ohlcv.rules import BarRules, validate_bars
    from q50_assets.storage.collector import CollectorReader

    db = CollectorReader(url=f"sqlite:///{scratch / 'sample.db'}")
    load_sample(db.engine)
    rules = BarRules.of(settings)
    sources = []
    pool_ids = db.pools_with_bars(settings.timeframe)
    raw = db.read_bars_many(pool_ids, settings.timeframe)
    for pool_id in pool_ids:
        validated = validate_bars(pool_id, raw[pool_id], rules)
        # Not the pools with a rug or a pump (the extreme_moves warning): drawn ~6 times into
        # 2,160 bars, one -99 % bar takes the price below what 8 decimals can store.
        calm = all(o.passed for o in validated.outcomes if o.name == "extreme_moves")
        if validated.safe and calm and len(validated.bars) > 2 * BLOCK_BARS:
            sources.append(validated.bars)
    db.engine.dispose()
    return sources


def synthesize_pool(source: pd.DataFrame, rng: np.random.Generator, bars: int = BARS_PER_POOL) -> pd.DataFrame:
    """``bars`` hourly bars ending at END whose per-bar moves are blocks drawn from ``source``.

    Per source bar: log return close/previous close (demeaned), high above max(open, close), low below
    min(open, close) (as fractions) and USD volume; the synthetic path starts at START_PRICE
    (the level is irrelevant to returns; 100 USD keeps prices far above the stored 8 decimals).
    """
    close = source["close"].to_numpy(float)
    opens = source["open"].to_numpy(float)
    prev = np.concatenate([[opens[0]], close[:-1]])
    # Without its drift: 2,160 bars resampled from a ~340-bar pool that halved (or 10x'd) would
    # compound it six times over, to prices the collector's 8 decimals store as zero. Volatility,
    # fat tails and the day-long blocks' clustering stay.
    log_ret = np.log(close / prev)
    log_ret = log_ret - log_ret.mean()
    top = np.maximum(opens, close)
    bottom = np.minimum(opens, close)
    up = source["high"].to_numpy(float) / top - 1.0
    down = 1.0 - source["low"].to_numpy(float) / bottom
    volume = source["volume"].to_numpy(float)

    starts = rng.integers(0, len(close) - BLOCK_BARS + 1, size=-(-bars // BLOCK_BARS))
    take = (starts[:, None] + np.arange(BLOCK_BARS)[None, :]).ravel()[:bars]
    new_close = START_PRICE * np.exp(np.cumsum(log_ret[take]))
    new_open = np.concatenate([[START_PRICE], new_close[:-1]])
    high = np.maximum(new_open, new_close) * (1.0 + up[take])
    low = np.minimum(new_open, new_close) * (1.0 - down[take])
    index = pd.date_range(end=END - pd.Timedelta(hours=1), periods=bars, freq="h", tz="UTC")
    return pd.DataFrame({"open": new_open, "high": high, "low": low, "close": new_close, "volume": volume[take]},
                        index=index)


def synthesize_trades(pool_id: str, bars: pd.DataFrame, rng: np.random.Generator, days: int = TRADE_DAYS) -> pd.DataFrame:
    """Collector ``trades`` rows for the last ``days`` of ``bars``, consistent with them and with the
    collector's quirks: each bar has 1 + Poisson(3) swaps sharing 50-90 % of its volume, of which the
    collector keeps those of >= 100 USD (a quiet bar keeps none); they are priced within the bar's
    low-high and placed at seconds inside it; ids end in the true epoch while ``block_timestamp`` is 6 h
    later; ``price_usd`` is the from-token's (the quote's ~230 USD on a buy). Buys are a little likelier
    on rising bars, so the flow features carry the same kind of information real ones would."""
    bar = bars.index[1] - bars.index[0]
    recent = bars[bars.index >= bars.index[-1] - pd.Timedelta(days=days) + bar]
    rows = []
    for open_time, b in zip(recent.index, recent.itertuples()):
        sizes = b.volume * rng.uniform(0.5, 0.9) * rng.dirichlet(np.ones(1 + rng.poisson(3)))
        p_buy = 0.5 + 0.15 * np.sign(b.close - b.open)
        for k, usd in enumerate(float(s) for s in sizes if s >= MIN_TRADE_USD):
            usd = round(usd, 2)
            price = float(rng.uniform(b.low, b.high))
            tokens = usd / price
            buy = bool(rng.random() < p_buy)
            at = open_time + pd.Timedelta(seconds=int(rng.integers(0, int(bar.total_seconds()))))
            epoch = int(at.timestamp())
            block = 370_000_000 + epoch - 1_750_000_000
            tx = f"{rng.integers(0, 2**63):x}"
            rows.append({
                "id": f"solana_{block}_{tx}_{k}_{epoch}", "pool_id": pool_id, "block_number": block, "tx_hash": tx,
                "tx_from_address": f"wallet{int(rng.integers(WALLETS_PER_POOL)):04d}",
                "from_token_amount": usd / QUOTE_PRICE_USD if buy else tokens,
                "to_token_amount": tokens if buy else usd / QUOTE_PRICE_USD,
                "price_usd": QUOTE_PRICE_USD if buy else round(price, 8), "volume_usd": usd,
                "side": "buy" if buy else "sell", "block_timestamp": (at + pd.Timedelta(hours=6)).to_pydatetime(),
            })
    return pd.DataFrame(rows)


def write_trades(engine, trades: pd.DataFrame) -> int:
    """Insert collector ``trades`` rows (from :func:`synthesize_trades`)."""
    from q50_assets.db.collector_models import trades as trades_table

    if trades.empty:
        return 0
    with engine.begin() as conn:
        conn.execute(trades_table.insert(), trades.to_dict("records"))
    return len(trades)


def write_collector(engine, pools: dict[str, pd.DataFrame], reserves: dict[str, float], timeframe: str) -> int:
    """Insert the synthetic pools into the collector's tables, as the collector would."""
    from sqlalchemy import insert

    from q50_assets.db.collector_models import dexes, ohlcv_data
    from q50_assets.db.collector_models import pools as pools_table
    from q50_assets.db.sample_loader import create_collector_schema

    create_collector_schema(engine)
    rows = 0
    with engine.begin() as conn:
        conn.execute(insert(dexes).values(id="synthetic", name="synthetic (resampled sample)", network="synthetic"))
        # Like the sample's snapshots, each reserve is observed after the pool's last bar (no bar is
        # priced with it); the stages' assumed reserve is a statistic of these observations.
        conn.execute(insert(pools_table), [
            {"id": p, "address": p.split("_", 1)[1], "name": p, "dex_id": "synthetic", "reserve_usd": reserves[p],
             "last_updated": (pools[p].index[-1] + 2 * (pools[p].index[-1] - pools[p].index[-2])).tz_convert(None)
             .to_pydatetime()}
            for p in pools])
        for pool_id, bars in pools.items():
            records = [
                {"pool_id": pool_id, "timeframe": timeframe, "timestamp": int(t.timestamp()),
                 "datetime": t.to_pydatetime(), "open_price": round(o, 8), "high_price": round(h, 8),
                 "low_price": round(lo, 8), "close_price": round(c, 8), "volume_usd": round(v, 2)}
                for t, o, h, lo, c, v in zip(bars.index, bars["open"], bars["high"], bars["low"], bars["close"],
                                             bars["volume"])
            ]
            conn.execute(insert(ohlcv_data), records)
            rows += len(records)
    return rows


def generate(settings, n_pools: int, scratch: Path) -> tuple[dict, float]:
    """A fresh scratch dir with N synthetic pools written into its embedded collector database.
    Returns (counts, seconds)."""
    from q50_assets.storage.project_tables import ProjectTables

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    sources = _source_bars(settings, scratch)
    rng = np.random.default_rng(SEED)
    pools, reserves = {}, {}
    redrawn = 0
    for i in range(n_pools):
        pool_id = f"synthetic_pool{i:05d}"
        while True:
            bars = synthesize_pool(sources[int(rng.integers(len(sources)))], rng)
            # A path that wanders below 1 cent or above 1e7 USD (hourly memecoin volatility does,
            # over 90 days) would be blocked by positive_prices / price_precision: a scale run
            # of pools that stop at the first check measures nothing. Draw again (seeded).
            if bars["low"].min() >= 0.01 and bars["high"].max() <= 1e7:
                break
            redrawn += 1
        pools[pool_id] = bars
        reserves[pool_id] = float(rng.choice([2e4, 1e5, 5e5, 2e6]))
    db = ProjectTables(url=settings.database_url)
    collector_rows = write_collector(db.engine, pools, reserves, settings.timeframe)
    trade_rows = sum(write_trades(db.engine, synthesize_trades(p, bars, rng)) for p, bars in pools.items())
    db.migrate()
    db.engine.dispose()
    return ({"pools": n_pools, "collector_rows": collector_rows, "trade_rows": trade_rows, "paths_redrawn": redrawn},
            time.perf_counter() - started)


def _scratch_settings(settings, scratch: Path):
    return settings.model_copy(update={"data_dir": scratch, "database": settings.database.model_copy(update={"url": None})})


def _peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(self_kb, child_kb) / 1024, 1)


def run_scale(settings, n_pools: int, scratch: Path) -> dict:
    """P4: generate ``n_pools`` pools and run the lineage's batch steps for them without Dagster
    (:func:`q50_assets.lineage.without_dagster.run_without_dagster`: the same steps and stores as
    the assets, no runs or events); per-stage seconds and counts."""
    from q50_assets.definitions import build_resources
    from q50_assets.lineage.common.gate import Blocked
    from q50_assets.lineage.without_dagster import q50_fills, run_without_dagster

    settings = _scratch_settings(settings, scratch)
    generated, setup_seconds = generate(settings, n_pools, scratch)
    resources = build_resources(settings)
    pool_ids = resources["collector"].pools_with_bars(settings.timeframe)
    run = run_without_dagster(pool_ids, resources, settings, run_id="scale")

    analyses = [a for a in run.analyses.values() if not isinstance(a, Blocked)]
    unsafe: dict[str, int] = {}
    for v in run.validated.values():
        for rule in v.blocking_failures:  # counted by the blocking checks that failed
            unsafe[rule] = unsafe.get(rule, 0) + 1
    seconds = {stage: run.seconds.get(asset, 0.0) for stage, asset in STAGE_ASSETS.items()}
    safe = {p: v.bars for p, v in run.validated.items() if v.safe}
    total_bars = sum(len(b) for b in safe.values())
    folds = run.model.result.folds
    return {
        **generated,
        "safe_pools": len(safe),
        "unsafe_pools_by_check": unsafe,
        "bars": total_bars,
        "pools_per_run": settings.batches.pools_per_run,
        "setup_seconds": round(setup_seconds, 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 2),
        "seconds_per_1000_bars": {k: round(1000 * v / max(total_bars, 1), 4) for k, v in seconds.items()},
        "peak_rss_mb": _peak_rss_mb(),
        "fills_q50": sum(q50_fills(run).values()),
        "trading_history_rows": run.trading_history_rows,
        "pools_with_flow_features": sum(a.usable for a in analyses),
        "block_timestamp_shift_named": sum(a.check("clock_shift").metadata["block_timestamp_shift"] == "+6 h"
                                           for a in analyses),
        "model_rows": int(run.model.panel_counts["usable_rows"]),
        "folds": int((~folds["skipped"]).sum()),
        "predictions": len(run.model.result.predictions),
    }


# The instance configuration a PostgreSQL deployment uses (README, "Dagster on PostgreSQL").
DAGSTER_PG_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.postgres.yaml"


def run_nightly_dagster(settings, n_pools: int, scratch: Path) -> dict:
    """P5: generate the same ``n_pools`` pools and materialize the whole graph for them through
    Dagster (batch runs, the model run, the portfolio run) on PostgreSQL run storage
    (``DAGSTER_PG_URL`` must be set); seconds per phase, runs, events, peak memory."""
    import os

    from dagster import DagsterInstance

    import yaml

    from q50_assets.automation.lineage_run import materialize_lineage
    from q50_assets.definitions import build_definitions
    from q50_assets.storage.dagster_instance import with_kept_connections

    if not os.environ.get("DAGSTER_PG_URL"):
        raise RuntimeError("P5 needs DAGSTER_PG_URL (PostgreSQL run storage), e.g. from q50 benchmark --nightly")
    settings = _scratch_settings(settings, scratch)
    generated, setup_seconds = generate(settings, n_pools, scratch)
    home = scratch / "dagster_home"
    home.mkdir()
    # Opted in to the event log that keeps one connection per process: where it was measured to
    # matter (a check result per pool and check; README, "Benchmarks").
    config = with_kept_connections(yaml.safe_load(DAGSTER_PG_YAML.read_text()))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    os.environ["DAGSTER_HOME"] = str(home)
    from q50_assets.storage.collector import CollectorReader

    pool_ids = CollectorReader(url=settings.database_url).pools_with_bars(settings.timeframe)
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("pools", pool_ids)
        defs = build_definitions(settings)

        def progress(phase, done, total):
            print(f"P5 {n_pools}: {phase}: {done}/{total} pools", flush=True)

        started = time.perf_counter()
        run = materialize_lineage(defs, instance, pool_ids, settings.batches.pools_per_run, progress=progress)
        wall = time.perf_counter() - started
        failed = [f"{r.job_name} {r.run_id}" for r in run.results() if not r.success]
        events = sum(r.events for r in run.results())
    return {
        **generated,
        "pools_per_run": settings.batches.pools_per_run,
        "setup_seconds": round(setup_seconds, 2),
        "wall_seconds": round(wall, 2),
        "phases": {name: {"seconds": round(p.seconds, 2), "runs": len(p.results)} for name, p in run.phases.items()},
        "runs": len(run.results()),
        "events": events,
        "failed_runs": failed,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_own_process(n: int, scratch: Path, through_dagster: bool, env: dict | None = None) -> dict:
    import os
    import subprocess

    name = f"{'nightly' if through_dagster else 'scale'}_{n}"
    out = scratch / f"{name}.json"
    command = [sys.executable, "-m", "benchmarks.scale", "--pools", str(n),
               "--scratch", str(scratch / f"pools_{name}"), "--output", str(out)]
    done = subprocess.run(command + (["--through-dagster"] if through_dagster else []),
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0 or not out.exists():
        return {"pools": n, "failed": f"exit code {done.returncode}"}
    shutil.rmtree(scratch / f"pools_{name}", ignore_errors=True)
    return json.loads(out.read_text())


def run_curve(scales: list[int], scratch: Path) -> dict:
    """P4: each scale in its own process (own peak memory); the curve of seconds per 1,000 bars."""
    points = []
    for n in scales:
        print(f"P4: {n} pools x {BARS_PER_POOL} bars ...", flush=True)
        points.append(_in_own_process(n, scratch, through_dagster=False))
    return {"bars_per_pool": BARS_PER_POOL, "seed": SEED, "points": points}


def throwaway_postgres(base: Path) -> tuple[str, callable]:
    """A PostgreSQL server on a free loopback port for Dagster's storage (initdb refuses root: run
    as ``postgres`` then). Returns (superuser URL of database ``dagster``, stop function)."""
    import glob
    import os
    import socket
    import subprocess

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries (initdb) not found: set DAGSTER_PG_URL instead")
    bindir = Path(found[-1]).parent
    base.mkdir(parents=True, exist_ok=True)
    as_postgres = os.geteuid() == 0
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def run(*args: str) -> None:
        command = [str(bindir / args[0]), *args[1:]]
        subprocess.run((["runuser", "-u", "postgres", "--"] if as_postgres else []) + command, check=True,
                       capture_output=True, text=True)

    # fsync stays on: P5 measures Dagster's storage as a deployment would run it.
    run("initdb", "-D", str(base / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8")
    run("pg_ctl", "-D", str(base / "data"), "-l", str(base / "log"), "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base}", "start")
    run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dagster")

    def stop() -> None:
        run("pg_ctl", "-D", str(base / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)

    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster", stop


def run_nightly_curve(scales: list[int], scratch: Path) -> dict:
    """P5: per N, the nightly through Dagster (PostgreSQL run storage) and the same work as
    functions (P4), each in its own process; the ratio and Dagster's share of the time."""
    import os

    points = []
    for n in scales:
        print(f"P5: {n} pools x {BARS_PER_POOL} bars, the same work as functions first ...", flush=True)
        functions = _in_own_process(n, scratch, through_dagster=False)
        url, stop = (os.environ["DAGSTER_PG_URL"], None) if os.environ.get("DAGSTER_PG_URL") else \
            throwaway_postgres(Path(tempfile.mkdtemp(prefix="q50-p5-pg-")))
        try:
            print(f"P5: {n} pools through Dagster (PostgreSQL run storage) ...", flush=True)
            dagster = _in_own_process(n, scratch, through_dagster=True, env={"DAGSTER_PG_URL": url})
        finally:
            if stop:
                stop()
        point = {"pools": n, "functions": functions, "dagster": dagster}
        if "failed" not in functions and "failed" not in dagster:
            work = functions["total_seconds"]
            point["ratio"] = round(dagster["wall_seconds"] / work, 3)
            point["dagster_share"] = round(1 - work / dagster["wall_seconds"], 3)
        points.append(point)
    return {"bars_per_pool": BARS_PER_POOL, "seed": SEED, "points": points}


def format_nightly(curve: dict) -> str:
    lines = ["P5 nightly through Dagster vs the same work as functions"]
    for p in curve["points"]:
        if "ratio" not in p:
            lines.append(f"{p['pools']:>6} pools: failed ({p['functions'].get('failed') or p['dagster'].get('failed')})")
            continue
        d, f = p["dagster"], p["functions"]
        lines.append(f"{p['pools']:>6} pools: Dagster {d['wall_seconds']:.0f} s ({d['runs']} runs, {d['events']} events, "
                     f"peak {d['peak_rss_mb']:.0f} MB) vs functions {f['total_seconds']:.0f} s (peak "
                     f"{f['peak_rss_mb']:.0f} MB): ratio {p['ratio']:.2f}, Dagster's share {100 * p['dagster_share']:.1f} %")
    return "\n".join(lines)


def format_curve(curve: dict) -> str:
    lines = [f"P4 scale: seconds per 1,000 bars by stage ({curve['bars_per_pool']} hourly bars per pool)",
             f"{'pools':>6} {'bars':>9} " + " ".join(f"{s[:8]:>8}" for s in STAGES) + f" {'total s':>8} {'peak MB':>8}"]
    for p in curve["points"]:
        if "failed" in p:
            lines.append(f"{p['pools']:>6} failed: {p['failed']}")
            continue
        per = p["seconds_per_1000_bars"]
        lines.append(f"{p['pools']:>6} {p['bars']:>9} " + " ".join(f"{per[s]:>8.3f}" for s in STAGES)
                     + f" {p['total_seconds']:>8.1f} {p['peak_rss_mb']:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from q50_assets.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--through-dagster", action="store_true", help="P5 instead of P4")
    args = parser.parse_args(argv)
    run = run_nightly_dagster if args.through_dagster else run_scale
    report = run(load_settings(), args.pools, Path(args.scratch))
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
