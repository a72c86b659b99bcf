"""Files the project writes are readable by whoever the umask lets read them (not 0600)."""

import os
import stat

import pytest

from q50_assets.storage.files import replace_file


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replaced_files_get_the_mode_a_new_file_gets(tmp_path, umask_022):
    target = tmp_path / "report.html"
    replace_file(target, b"<html></html>")
    assert target.read_bytes() == b"<html></html>" and _mode(target) == 0o644
    replace_file(target, write=lambda handle: handle.write(b"again"))
    assert target.read_bytes() == b"again" and _mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, umask_022):
    target = tmp_path / "value.pkl"
    replace_file(target, b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_file(target, write=broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["value.pkl"]


def test_the_report_and_stored_values_are_readable_by_the_team(tmp_path, umask_022):
    from q50_assets.lineage.portfolio.report import Report
    from q50_assets.storage.io_managers import PoolPickleIOManager
    from q50_assets.storage.reports import ReportFiles

    report = Report(markdown="# t", pngs={"equity": b"\x89PNG"}, html="<html></html>", tables={})
    page = ReportFiles(directory=str(tmp_path / "reports")).write(report)
    for path in (page, page.parent / "backtest_portfolio" / "report.md", page.parent / "backtest_portfolio" / "equity.png"):
        assert _mode(path) == 0o644, path
    store = PoolPickleIOManager(base_dir=str(tmp_path / "values"))
    store.store_values("ohlcv_bars", {"pool": 1})
    (stored,) = (tmp_path / "values").rglob("*.pkl")
    assert _mode(stored) == 0o644 and store.load_values("ohlcv_bars", ["pool"]) == {"pool": 1}
