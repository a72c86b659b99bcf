"""What one pool's step of each lineage stage computes: plain functions over plain inputs and the
stage's own small config object. No Dagster here: the asset layer (``q50_assets/assets``) wires
these into batched runs; tests and the benchmarks call them directly.

Every stage works on a batch of pools (``dict[pool_id, ...]``) but decides per pool: a pool a
stage cannot use becomes a :class:`~q50_assets.stages.gate.Blocked` value that names the stage
and the reason, and every later stage passes it on instead of computing with it.
"""
