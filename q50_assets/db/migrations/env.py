"""Alembic environment for the project's own tables only.

Run through :func:`q50_assets.db.migrate.upgrade`, which hands over a live connection.
``include_name`` keeps autogenerate away from every collector table.
"""

from alembic import context

from q50_assets.db.collector_models import COLLECTOR_TABLE_NAMES
from q50_assets.db.migrate import VERSION_TABLE
from q50_assets.db.q50_models import q50_metadata


def _include_name(name, type_, parent_names):
    if type_ == "table":
        return name not in COLLECTOR_TABLE_NAMES and name in q50_metadata.tables
    return True


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=q50_metadata,
    version_table=VERSION_TABLE,
    include_name=_include_name,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
