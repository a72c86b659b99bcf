"""The suite's PostgreSQL server for the benchmarks' tests too (a conftest applies to its own
folder only): the same session fixture, not a second server."""

from q50_assets_tests.conftest import postgres_url  # noqa: F401 - a fixture, found by name
