"""The lineage's table of stages (``q50_assets.lineage.STEPS``) is the graph's order and the only
list of its stages: the Definitions, the jobs and the demo's run queue are read from it."""

import subprocess
import sys

from dagster import AssetKey

from q50_assets.automation.jobs import JOBS, MODEL_DEPENDENT_ASSETS, NEEDS_NO_MODEL_ASSETS, POOL_ASSETS
from q50_assets.automation.lineage_run import PHASES
from q50_assets.definitions import defs
from q50_assets.lineage import STEPS, Phase, assets_definitions


def test_steps_are_every_asset_of_the_definitions_in_a_topological_order():
    graph = defs.resolve_asset_graph()
    keys = [s.asset for s in STEPS]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k.to_user_string() for k in graph.get_all_asset_keys()}
    position = {k: i for i, k in enumerate(keys)}
    for key in keys:
        for parent in graph.get(AssetKey(key)).parent_keys:
            assert position[parent.to_user_string()] < position[key], f"{parent.to_user_string()} after {key}"


def test_steps_say_what_the_assets_are():
    graph = defs.resolve_asset_graph()
    for step in STEPS:
        node = graph.get(AssetKey(step.asset))
        assert (node.partitions_def is not None) == step.per_pool, step.asset
        assert step.per_pool == (step.phase in (Phase.BEFORE_MODEL, Phase.AFTER_MODEL)), step.asset
    phases = [s.phase for s in STEPS]
    assert phases == sorted(phases, key=list(Phase).index)  # phases are contiguous, in order
    # Every AssetsDefinition once, and each holds the key its step names.
    definitions = assets_definitions()
    assert len({id(d) for d in definitions}) == len(definitions)
    held = {k.to_user_string() for d in definitions for k in d.keys}
    assert held == {s.asset for s in STEPS}


def test_jobs_and_the_run_queue_follow_the_steps():
    assert POOL_ASSETS == tuple(s.asset for s in STEPS if s.per_pool)
    assert NEEDS_NO_MODEL_ASSETS + MODEL_DEPENDENT_ASSETS == POOL_ASSETS
    assert [name for name, *_ in PHASES] == [p.value for p in Phase]
    assert [a for _, _, assets, _ in PHASES for a in assets] == [s.asset for s in STEPS]
    repo = defs.get_repository_def()
    for name, job_name, assets, _ in PHASES:
        job = repo.get_job(job_name)
        selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
        assert set(assets) <= selected, (name, job_name)
    assert {j.name for j in JOBS} == {job_name for _, job_name, _, _ in PHASES}


def test_the_table_imports_no_stage_and_no_dagster():
    code = ("import sys, q50_assets.lineage as l; l.STEPS; "
            "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('q50_assets.lineage.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
