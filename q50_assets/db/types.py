"""Column types that behave the same on PostgreSQL and the embedded SQLite."""

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB

# The collector uses JSONB on PostgreSQL; SQLite gets plain JSON text.
JsonB = JSON().with_variant(JSONB(), "postgresql")

# TIMESTAMPTZ on PostgreSQL. SQLite has no time zones: values are written and read as UTC.
TimestampTZ = DateTime(timezone=True)
