"""Every project table carries the q50_ prefix; trading history records which feature-vector
table its feature_vector_id points at

A collector that ran its enhanced-history migration owns a table called ``pool_feature_vectors``
(BigInteger epoch ``timestamp``, forward-return targets, ...). Installs made before this revision
gave the project's own feature vectors that name, so ``q50 migrate`` met the collector's table with
a DuplicateTable error. Here:

* an existing ``pool_feature_vectors`` with exactly the project's columns is renamed to
  ``q50_feature_vectors``, ids intact; on PostgreSQL its id sequence, primary key and unique
  constraint are renamed with it (foreign keys follow the table by identity). A collector's
  ``pool_feature_vectors`` is never touched; any other shape stops the migration with one line
  (see ``q50_assets.db.migrate.classify_pool_feature_vectors``);
* ``q50_trading_history.feature_vector_id`` loses its foreign key: with
  ``use_existing_feature_vectors`` it holds the collector's ``pool_feature_vectors.id``, and a
  foreign key can point at one table only. ``feature_vector_table`` says which table the id is
  from, and ``q50_feature_vector_id`` keeps the project's own vector under a real foreign key.
  Existing rows point at the project's vectors and say so.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from q50_assets.db.migrate import (
    FEATURE_VECTORS,
    LEGACY_FEATURE_VECTORS,
    SchemaConflict,
    classify_pool_feature_vectors,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
HISTORY = "q50_trading_history"
NEW_FK = "fk_q50_trading_history_q50_feature_vector"
# Names for SQLite's unnamed foreign keys, so batch mode can drop the old one by name.
_SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _rename_project_vectors(bind) -> None:
    insp = sa.inspect(bind)
    if LEGACY_FEATURE_VECTORS not in insp.get_table_names():
        return
    owner = classify_pool_feature_vectors({c["name"] for c in insp.get_columns(LEGACY_FEATURE_VECTORS)})
    if owner == "collector":
        return  # the collector's own table: read by the project, never altered
    if FEATURE_VECTORS in insp.get_table_names():
        raise SchemaConflict(f"table {LEGACY_FEATURE_VECTORS}: has the project's pre-0005 columns but "
                             f"{FEATURE_VECTORS} exists too; the migration will not guess which to keep")
    op.rename_table(LEGACY_FEATURE_VECTORS, FEATURE_VECTORS)
    if bind.dialect.name == "postgresql":
        # SQLite keeps constraint names inside the table and rewrites references on rename.
        op.execute(_RENAME_POSTGRES_NAMES)


# The id sequence, primary key and unique constraint follow the table's new name, so nothing of the
# project is left under the collector's names. Identifiers come from the catalog and are quoted by
# format() on the server: the statement is constant text, built from no data.
_RENAME_POSTGRES_NAMES = sa.text("""
DO $rename$
DECLARE
    seq text := pg_get_serial_sequence('q50_feature_vectors', 'id');
    con record;
BEGIN
    IF seq IS NOT NULL THEN
        EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', seq, 'q50_feature_vectors_id_seq');
    END IF;
    FOR con IN SELECT conname, contype FROM pg_constraint
               WHERE conrelid = 'q50_feature_vectors'::regclass AND contype IN ('p', 'u')
                 AND conname NOT IN ('q50_feature_vectors_pkey', 'uq_q50_feature_vectors_key') LOOP
        EXECUTE format('ALTER TABLE q50_feature_vectors RENAME CONSTRAINT %I TO %I', con.conname,
                       CASE con.contype WHEN 'p' THEN 'q50_feature_vectors_pkey' ELSE 'uq_q50_feature_vectors_key' END);
    END LOOP;
END
$rename$;
""")


def _feature_vector_fk(bind) -> dict | None:
    for fk in sa.inspect(bind).get_foreign_keys(HISTORY):
        if fk["constrained_columns"] == ["feature_vector_id"]:
            return fk
    return None


def upgrade() -> None:
    bind = op.get_bind()
    _rename_project_vectors(bind)

    old_fk = _feature_vector_fk(bind)
    if bind.dialect.name == "sqlite":
        # SQLite cannot drop a constraint in place: batch mode copies the table (ids included).
        with op.batch_alter_table(HISTORY, recreate="always", naming_convention=_SQLITE_NAMES) as batch:
            if old_fk is not None:
                batch.drop_constraint(f"fk_{HISTORY}_feature_vector_id_{old_fk['referred_table']}",
                                      type_="foreignkey")
            batch.add_column(sa.Column("feature_vector_table", sa.String(40)))
            batch.add_column(sa.Column("q50_feature_vector_id", _Id))
            batch.create_foreign_key(NEW_FK, FEATURE_VECTORS, ["q50_feature_vector_id"], ["id"])
    else:
        if old_fk is not None:
            op.drop_constraint(old_fk["name"], HISTORY, type_="foreignkey")
        op.add_column(HISTORY, sa.Column("feature_vector_table", sa.String(40)))
        op.add_column(HISTORY, sa.Column("q50_feature_vector_id", _Id))
        op.create_foreign_key(NEW_FK, HISTORY, FEATURE_VECTORS, ["q50_feature_vector_id"], ["id"])

    history = sa.table(HISTORY, sa.column("feature_vector_id"), sa.column("feature_vector_table"),
                       sa.column("q50_feature_vector_id"))
    op.execute(history.update().where(history.c.feature_vector_id.is_not(None))
               .values(q50_feature_vector_id=history.c.feature_vector_id, feature_vector_table=FEATURE_VECTORS))


def downgrade() -> None:
    """Back to one foreign-keyed pointer at the project's vectors (a row that pointed at a
    collector vector points at the project's vector of its decision instead). The table keeps
    its q50_ name: that is what revisions 0001-0004 create now."""
    bind = op.get_bind()
    history = sa.table(HISTORY, sa.column("feature_vector_id"), sa.column("q50_feature_vector_id"))
    op.execute(history.update().values(feature_vector_id=history.c.q50_feature_vector_id))
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(HISTORY, recreate="always", naming_convention=_SQLITE_NAMES) as batch:
            batch.drop_constraint(NEW_FK, type_="foreignkey")
            batch.drop_column("q50_feature_vector_id")
            batch.drop_column("feature_vector_table")
            batch.create_foreign_key(f"fk_{HISTORY}_feature_vector_id_{FEATURE_VECTORS}", FEATURE_VECTORS,
                                     ["feature_vector_id"], ["id"])
    else:
        op.drop_constraint(NEW_FK, HISTORY, type_="foreignkey")
        op.drop_column(HISTORY, "q50_feature_vector_id")
        op.drop_column(HISTORY, "feature_vector_table")
        op.create_foreign_key(None, HISTORY, FEATURE_VECTORS, ["feature_vector_id"], ["id"])
