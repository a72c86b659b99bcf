"""The name the stages' settings resource (``lineage_config.stage_resources``) still builds the
signal database with: the project's tables of that database. New code uses
:class:`q50_assets.storage.project_tables.ProjectTables` (the project's ``q50_*`` tables) or
:class:`q50_assets.storage.collector.CollectorReader` (the collector's own tables)."""

from q50_assets.storage.project_tables import ProjectTables as CollectorDatabase

__all__ = ["CollectorDatabase"]
