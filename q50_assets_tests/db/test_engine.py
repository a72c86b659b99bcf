import pytest

from q50_assets.db.engine import normalize_database_url, redact_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg2://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:////tmp/x.sqlite", "sqlite:////tmp/x.sqlite"),
    ],
)
def test_postgres_urls_are_pinned_to_the_installed_driver(given, expected):
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@h/db", "mysql://u@h/db"])
def test_unsupported_drivers_are_refused_by_name(url):
    with pytest.raises(ValueError, match="not (installed|supported)"):
        normalize_database_url(url)


def test_redacted_url_hides_the_password():
    assert "s3cret" not in redact_url("postgresql://u:s3cret@h/db")
