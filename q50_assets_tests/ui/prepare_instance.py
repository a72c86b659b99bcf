"""Upstream state for the UI test, run as a subprocess by ``test_browser.py``:
``python -m q50_assets_tests.ui.prepare_instance POOL [POOL ...]``.

The environment (DAGSTER_HOME, Q50_DATABASE_URL, Q50_DATA_DIR, ...) is the one the test later
gives ``dagster dev``: settings are read once per process, so this runs in its own process.
It mirrors ``q50 demo`` for a few pools: migrate, register every pool as a partition, then the
pools' bars, features and regimes in one batch run (what the model reads; the UI run redoes the
rest for its pool; the last pool given is one that fails a blocking OHLCV check), then the pooled
``q50_model`` over the QLib store.
Prints one JSON line (pools, model folds, blocked pools) last; exits non-zero if a run fails.
"""

from __future__ import annotations

import json
import sys

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main(pools: list[str]) -> int:
    from dagster import DagsterInstance

    from q50_assets.automation.lineage_run import materialize_lineage
    from q50_assets.cli import register_pools
    from q50_assets.definitions import build_definitions
    from q50_assets.settings import get_settings
    from q50_assets.storage.project_tables import ProjectTables

    settings = get_settings()
    ProjectTables(url=settings.database_url).migrate()
    instance = DagsterInstance.get()  # DAGSTER_HOME from the environment
    registered = register_pools(settings, instance)
    unknown = sorted(set(pools) - set(registered))
    if unknown:
        print(f"pools without {settings.timeframe} bars: {unknown}", file=sys.stderr)
        return 1

    defs = build_definitions(settings)
    run = materialize_lineage(defs, instance, pools, len(pools), run_config=QUIET,
                              phases=["bars, trades, features, regimes", "model"])
    failed = [f"{r.job_name} {r.run_id}" for r in run.results() if not r.success]
    if failed:
        print(f"runs failed: {failed}", file=sys.stderr)
        return 1
    blocked = sorted({e.partition for r in run.results() for e in r.check_evaluations
                      if not e.passed and e.severity.value == "ERROR"})
    model_run = run.phases["model"].results[0]
    md = {k: v.value for k, v in model_run.materializations_of("q50_model")[0].metadata.items()}
    print(json.dumps({"pools": pools, "registered": len(registered), "model_pools": md["pools"],
                      "folds": md["folds"], "folds_skipped": md["folds_skipped"],
                      "oos_labelled_rows": md["oos_labelled_rows"], "blocked": blocked}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
