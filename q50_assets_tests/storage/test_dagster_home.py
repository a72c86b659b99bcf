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


def test_q50_ui_starts_dagster_dev_with_the_databases_home_and_the_users_options(tmp_path, monkeypatch):
    from q50_assets import cli
    from q50_assets.settings import get_settings

    monkeypatch.setenv("DAGSTER_HOME", "")  # restored after the test, whatever it was
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.delenv("Q50_DATABASE_URL", raising=False)
    monkeypatch.setenv("Q50_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    started = {}
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: started.update(path=path, argv=argv))
    monkeypatch.setattr(cli.os, "chdir", lambda path: started.update(cwd=path))
    try:
        cli.main(["ui", "-p", "3001"])  # execv replaces the process; here it returns
    finally:
        get_settings.cache_clear()
    assert started["argv"][1:4] == ["dev", "-w", str(cli.Path(cli.__file__).resolve().parents[1] / "workspace.yaml")]
    assert started["argv"][4:] == ["-p", "3001"]
    home = cli.Path(cli.os.environ["DAGSTER_HOME"])
    assert home.parent.parent == tmp_path / "data" / "databases" and (home / CLAIM_FILE).exists()
    with pytest.raises(SystemExit):  # every other command refuses what it does not know
        cli.main(["migrate", "-p", "3001"])
