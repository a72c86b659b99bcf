"""Build a database with the collector's own schema, as a collector that ran its enhanced-history
migration has it (see README.md here; the model files are the collector's, unchanged)."""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

from sqlalchemy import Engine

HERE = Path(__file__).resolve().parent


@functools.cache
def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"collector_schema_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # the collector imports declarative_base from its pre-2.0 place
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module


def base_models():
    return _module("collector_models")


def enhanced_models():
    return _module("enhanced_new_pools_history_model")


def create_collector_own_schema(engine: Engine, enhanced: bool = True) -> None:
    """The collector's ``Base.metadata.create_all``, then (``enhanced``) its enhanced-history
    migration's ``create_all`` (PostgreSQL: the model uses JSONB)."""
    base_models().Base.metadata.create_all(engine)
    if enhanced:
        enhanced_models().Base.metadata.create_all(engine)


def create_collector_vectors_table(engine: Engine) -> None:
    """Only the enhanced-history tables: on PostgreSQL from the collector's own model; on SQLite (where
    its JSONB does not compile) from the project's mirror of its pool_feature_vectors."""
    if engine.dialect.name == "postgresql":
        enhanced_models().Base.metadata.create_all(engine)
    else:
        from q50_assets.db.collector_models import collector_enhanced_metadata

        collector_enhanced_metadata.create_all(engine)
