"""Each collector database keeps its own Dagster run history: sensor cursors, pool partitions and
materializations of two databases never mix in one home."""

from __future__ import annotations

import pytest

from q50_assets.settings import Settings, database_label
from q50_assets.storage.dagster_instance import CLAIM_FILE, claim_home, dagster_home

HIDDEN = "not" + "-shown"


def test_unset_dagster_home_is_one_per_database(tmp_path, monkeypatch):
    homes = []
    for url in (f"sqlite:///{tmp_path}/a.sqlite", "postgresql://u:" + HIDDEN + "@db-host:5432/collector"):
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        settings = Settings(data_dir=tmp_path / "data", database={"url": url})
        home = dagster_home(settings.database_dir / "dagster_home", database_label(url))
        assert home.is_absolute() and home.parent == settings.database_dir
        assert (home / "dagster.yaml").exists()
        claimed = (home / CLAIM_FILE).read_text()
        assert claimed.strip() == database_label(url) and HIDDEN not in claimed
        homes.append(home)
    assert homes[0] != homes[1]


def test_a_home_claimed_by_one_database_refuses_another(tmp_path):
    claim_home(tmp_path, "sqlite:///a.sqlite")
    claim_home(tmp_path, "sqlite:///a.sqlite")  # the same database again: fine
    with pytest.raises(ValueError, match="keeps the runs of database sqlite:///a.sqlite, not of postgresql://h/b"):
        claim_home(tmp_path, "postgresql://h/b")
