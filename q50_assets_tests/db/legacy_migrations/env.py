"""Alembic environment for the project's migrations 0001-0004 as released before revision 0005
(files in versions/ copied unchanged from that release): the tests build an existing install with
them, its feature vectors still called ``pool_feature_vectors``, and upgrade it with today's code."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table="q50_alembic_version",
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
