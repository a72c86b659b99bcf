"""Upstream state for the UI test, run as a subprocess by ``test_browser.py``:
``python -m q50_assets_tests.ui.prepare_instance POOL [POOL ...]``.

The environment (DAGSTER_HOME, Q50_DATABASE_URL, Q50_DATA_DIR, ...) is the one the test later
gives ``dagster dev``: settings are read once per process, so this runs in its own process.
It mirrors ``q50 demo`` for a few pools: migrate, register every pool as a partition, then per
pool ohlcv + features (what the model reads; the UI run redoes the rest for its pool), then the
pooled ``q50_model`` over those pools' QLib store.
Prints one JSON line (pools, model folds) last; exits non-zero if any run fails.
"""

from __future__ import annotations

import json
import sys

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main(pools: list[str]) -> int:
    from dagster import AssetKey, DagsterInstance

    from q50_assets.cli import register_pools
    from q50_assets.definitions import build_definitions
    from q50_assets.resources.database import CollectorDatabase
    from q50_assets.settings import get_settings

    settings = get_settings()
    CollectorDatabase(url=settings.database_url).migrate()
    instance = DagsterInstance.get()  # DAGSTER_HOME from the environment
    registered = register_pools(settings, instance)
    unknown = sorted(set(pools) - set(registered))
    if unknown:
        print(f"pools without {settings.timeframe} bars: {unknown}", file=sys.stderr)
        return 1

    defs = build_definitions(settings)
    refresh = defs.resolve_job_def("refresh_pool")
    for pool_id in pools:
        result = refresh.execute_in_process(
            partition_key=pool_id, instance=instance, run_config=QUIET, raise_on_error=False,
            asset_selection=[AssetKey("ohlcv_bars"), AssetKey("qlib_features")],
        )
        failed = [f"{e.asset_key.to_user_string()}.{e.check_name}"
                  for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"]
        if not result.success or failed:
            print(f"pool {pool_id}: upstream run failed (blocking checks failed: {failed})", file=sys.stderr)
            return 1

    model_run = defs.resolve_job_def("train_q50_model").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False)
    if not model_run.success:
        print("q50_model: run failed", file=sys.stderr)
        return 1
    md = {k: v.value for k, v in model_run.asset_materializations_for_node("q50_model")[0].metadata.items()}
    print(json.dumps({"pools": pools, "registered": len(registered), "model_pools": md["pools"],
                      "folds": md["folds"], "folds_skipped": md["folds_skipped"],
                      "oos_labelled_rows": md["oos_labelled_rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
