"""``python -m benchmarks`` (``make benchmark``): time the lineage through Dagster and its core
compute on the bundled sample (P1, P3), or at scale (P4 ``--scale``, P5 ``--nightly``); print a
table, write JSON. Not part of the installed package: it drives the Definitions and the stage
table like any user of the package would."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from q50_assets.settings import SettingsError, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--output", help="JSON path (default <data_dir>/benchmark.json, or benchmark_scale.json)")
    parser.add_argument("--scale", metavar="N,N,...",
                        help="P4 instead: N synthetic pools x 2,160 hourly bars resampled from the sample, every "
                        "stage's batch step as a function, each N in its own process (e.g. 100,300,1000)")
    parser.add_argument("--nightly", metavar="N,N,...",
                        help="P5 instead: the nightly on N synthetic pools through Dagster (PostgreSQL run storage: "
                        "DAGSTER_PG_URL or a throwaway local server) against the same work as functions")
    parser.add_argument("--replay", metavar="RUNS[,POOLS]",
                        help="the replay benchmark instead: the collector's next RUNS hours of the sample (the first "
                        "POOLS pools with hourly bars, default all) through the deployment's daemons on a throwaway "
                        "PostgreSQL server: time per collector run, memory, Dagster storage growth, write-to-history latency")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"benchmarks: bad settings: {exc}", file=sys.stderr)
        return 2

    if args.replay:
        from benchmarks.replay import hourly_pools_of_sample, run_replay_benchmark

        runs, _, pools = args.replay.partition(",")
        chosen = hourly_pools_of_sample()[:int(pools)] if pools else None
        report = run_replay_benchmark(int(runs), chosen, settings.data_dir / "benchmark_replay", {})
        output = Path(args.output) if args.output else settings.data_dir / "benchmark_replay.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=str))
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2, default=str))
        print(f"JSON: {output}")
        return 0

    if args.scale or args.nightly:
        from benchmarks import scale as sb

        scales = [int(n) for n in (args.scale or args.nightly).split(",")]
        if args.scale:
            curve, name = sb.run_curve(scales, settings.data_dir / "benchmark_scale"), "benchmark_scale.json"
            text, failed = sb.format_curve(curve), [p for p in curve["points"] if "failed" in p]
        else:
            curve, name = sb.run_nightly_curve(scales, settings.data_dir / "benchmark_nightly"), "benchmark_nightly.json"
            text, failed = sb.format_nightly(curve), [p for p in curve["points"] if "ratio" not in p]
        output = Path(args.output) if args.output else settings.data_dir / name
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(curve, indent=2, default=str))
        print(text)
        print(f"JSON: {output}")
        return 1 if failed else 0

    from benchmarks.benchmark import format_table, run_benchmark

    scratch = settings.data_dir / "benchmark"
    print(f"benchmarks: the bundled sample through Dagster and its core compute, scratch dir {scratch} ...",
          flush=True)
    report = run_benchmark(settings, scratch)
    output = Path(args.output) if args.output else settings.data_dir / "benchmark.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(format_table(report))
    print(f"JSON: {output}")
    return 0 if all(t["met"] for t in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
