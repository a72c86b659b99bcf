"""P4 of ``q50 benchmark --scale``: the lineage's work on N synthetic pools of 2,160 hourly bars.

The pools are generated from the bundled sample's real bars (seeded): each synthetic pool takes
one real safe pool and resamples its bars in blocks of a day (block bootstrap, so volatility
clusters survive), keeping each bar's return, high/low excursions and volume together. They
are written into a fresh embedded collector database as the collector would, then every pool
goes through the functions the assets call, with the database writes the assets make:

* ``ohlcv``           read + validate each pool's rows (ohlcv_bars),
* ``trades``          read + reconcile each pool's trades, trade fields into the QLib store (pool_trades),
* ``features``        QLib store write + expression evaluation + q50_feature_vectors upsert (qlib_features),
* ``regimes``         labels + q50_regime_labels write (regime_labels),
* ``model``           every walk-forward fold + the live model on the pooled panel (q50_model),
* ``signals``         signal rows + q50_signals write (q50_signals),
* ``backtest``        three Nautilus engines per pool, metrics, equity picture, results write (backtest_results),
* ``trading_history`` rows from the Q50 fills + q50_trading_history write (q50_trading_history).

Not Dagster runs: the per-run bookkeeping is P1's subject. Each scale runs in its own process
(``python -m q50_assets.scale_benchmark``) so its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
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
STAGES = ("ohlcv", "trades", "features", "regimes", "model", "signals", "backtest", "trading_history")
# Synthetic trades: the collector keeps swaps of >= 100 USD, and only since it started watching a
# pool -- here the last 30 days of the 90.
TRADE_DAYS = 30
MIN_TRADE_USD = 100.0
QUOTE_PRICE_USD = 230.0  # the quote token (SOL): what price_usd shows on a buy
WALLETS_PER_POOL = 150


def _source_bars(settings, scratch: Path) -> list[pd.DataFrame]:
    """The bundled sample's safe pools (validated bars), the material the synthetic pools resample."""
    from q50_assets.assets.ohlcv import bar_rules
    from q50_assets.db.sample_loader import load_sample
    from q50_assets.research.bars import validate_bars
    from q50_assets.resources.database import CollectorDatabase

    db = CollectorDatabase(url=f"sqlite:///{scratch / 'sample.db'}")
    load_sample(db.engine)
    rules = bar_rules(settings)
    sources = []
    for pool_id in db.pools_with_bars(settings.timeframe):
        validated = validate_bars(pool_id, db.read_bars(pool_id, settings.timeframe), rules)
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
        conn.execute(insert(pools_table), [
            {"id": p, "address": p.split("_", 1)[1], "name": p, "dex_id": "synthetic", "reserve_usd": reserves[p]}
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


def run_scale(settings, n_pools: int, scratch: Path) -> dict:
    """Generate ``n_pools`` pools, push them through every stage; per-stage seconds and counts."""
    from q50_assets.assets.backtest import backtest_stage_config
    from q50_assets.assets.features import build_pool_features
    from q50_assets.assets.model import load_training_panel, train_q50_model
    from q50_assets.assets.ohlcv import bar_rules
    from q50_assets.assets.regimes import pool_regimes
    from q50_assets.assets.signals import pool_signals
    from q50_assets.assets.trades import trade_rules
    from q50_assets.definitions import build_resources
    from q50_assets.research.backtest_stage import equity_png, history_rows, results_rows, run_pool_stage
    from q50_assets.research.bars import validate_bars
    from q50_assets.research.trades import TRADE_FIELDS, analyse_trades
    from q50_assets.resources.database import CollectorDatabase
    from q50_assets.resources.qlib_store import QlibStore

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    settings = settings.model_copy(update={"data_dir": scratch, "database": settings.database.model_copy(update={"url": None})})
    tf = settings.timeframe

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
    db = CollectorDatabase(url=settings.database_url)
    collector_rows = write_collector(db.engine, pools, reserves, tf)
    trade_rows = sum(write_trades(db.engine, synthesize_trades(p, bars, rng)) for p, bars in pools.items())
    db.migrate()
    del pools
    setup_seconds = time.perf_counter() - started

    store = QlibStore(provider_dir=str(scratch / "qlib"), timeframe=tf)
    nautilus = build_resources(settings)["nautilus"]
    rules = bar_rules(settings)
    seconds = dict.fromkeys(STAGES, 0.0)
    counts: dict[str, int] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        seconds[stage] += time.perf_counter() - t0
        return out

    # Per pool, the three assets that need no model (as refresh_pool's first steps run them).
    safe, frames, unsafe = {}, {}, {}
    for pool_id in db.pools_with_bars(tf):
        validated = timed("ohlcv", lambda p: validate_bars(p, db.read_bars(p, tf), rules), pool_id)
        if not validated.safe:  # counted by the blocking checks that failed, as ohlcv_bars reports them
            for rule in validated.blocking_failures:
                unsafe[rule] = unsafe.get(rule, 0) + 1
            continue
        safe[pool_id] = validated.bars

        def trades(p=pool_id, bars=validated.bars):
            analysis = analyse_trades(p, db.read_trades(p), bars, trade_rules(settings))
            if analysis.usable:
                store.write_fields(p, analysis.grid, TRADE_FIELDS)
            else:
                store.clear_fields(p, TRADE_FIELDS)
            return analysis

        analysis = timed("trades", trades)
        counts["pools_with_flow_features"] = counts.get("pools_with_flow_features", 0) + int(analysis.usable)
        counts["block_timestamp_shift_named"] = counts.get("block_timestamp_shift_named", 0) + int(
            analysis.check("clock_shift").metadata["block_timestamp_shift"] == "+6 h")

        def features(p=pool_id, bars=validated.bars):
            frame, columns, version = build_pool_features(p, bars, settings, store)
            real = ~frame["is_filled"]
            frame["feature_vector_id"], _ = db.upsert_feature_vectors(p, tf, version, frame[real], columns)
            return frame

        frames[pool_id] = timed("features", features)
        regimes = timed("regimes", lambda f: pool_regimes(f, settings), frames[pool_id])
        timed("regimes", db.replace_regime_labels, pool_id, tf, regimes)
        frames[pool_id] = (frames[pool_id], regimes)

    def model():
        panel, labels, panel_counts = load_training_panel(store, settings)
        trained = train_q50_model(panel, labels, settings, "scale")  # the asset's own path, recalibration included
        result = trained.result
        counts.update(model_rows=int(panel_counts["usable_rows"]), folds=int((~result.folds["skipped"]).sum()),
                      predictions=len(result.predictions))
        return trained

    trained = timed("model", model)

    fills = history = 0
    for pool_id, (frame, regimes) in frames.items():
        signals = timed("signals", pool_signals, pool_id, trained, frame, settings,
                        db.pool_reserves(pool_id, settings.nautilus_trader.backtest.fallback_reserve_usd)[0])
        timed("signals", db.replace_signals, pool_id, tf, signals)

        def backtest(p=pool_id, s=signals, r=regimes):
            reserve_series, _ = db.pool_reserves(p, settings.nautilus_trader.backtest.fallback_reserve_usd)
            result = run_pool_stage(p, safe[p], s, r, reserve_series, backtest_stage_config(settings, nautilus),
                                    f"scale-{p}")
            if result.status == "ok":
                db.replace_backtest_results(result.backtest_run_id, p, tf, results_rows(result))
                equity_png(result)
            return result

        result = timed("backtest", backtest)
        if result.status != "ok":
            continue
        fills += len(result.outcomes["q50"].fills)
        rows = timed("trading_history", history_rows, result)
        history += timed("trading_history", db.replace_trading_history, result.backtest_run_id, pool_id, rows)

    total_bars = sum(len(b) for b in safe.values())
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "pools": n_pools,
        "safe_pools": len(safe),
        "unsafe_pools_by_check": unsafe,
        "collector_rows": collector_rows,
        "trade_rows": trade_rows,
        "paths_redrawn": redrawn,
        "bars": total_bars,
        "setup_seconds": round(setup_seconds, 2),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "total_seconds": round(sum(seconds.values()), 2),
        "seconds_per_1000_bars": {k: round(1000 * v / max(total_bars, 1), 4) for k, v in seconds.items()},
        "peak_rss_mb": round(max(self_kb, child_kb) / 1024, 1),
        "fills_q50": fills,
        "trading_history_rows": history,
        **counts,
    }


def run_curve(scales: list[int], scratch: Path) -> dict:
    """Each scale in its own process (own peak memory); the curve of seconds per 1,000 bars."""
    import subprocess

    points = []
    for n in scales:
        out = scratch / f"scale_{n}.json"
        print(f"P4: {n} pools x {BARS_PER_POOL} bars ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "q50_assets.scale_benchmark", "--pools", str(n),
                               "--scratch", str(scratch / f"pools_{n}"), "--output", str(out)])
        if done.returncode != 0 or not out.exists():
            points.append({"pools": n, "failed": f"exit code {done.returncode}"})
            continue
        points.append(json.loads(out.read_text()))
        shutil.rmtree(scratch / f"pools_{n}", ignore_errors=True)
    return {"bars_per_pool": BARS_PER_POOL, "seed": SEED, "points": points}


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
    args = parser.parse_args(argv)
    report = run_scale(load_settings(), args.pools, Path(args.scratch))
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
