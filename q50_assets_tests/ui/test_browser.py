"""The Dagster UI in a real headless browser.

Starts ``dagster dev -w workspace.yaml`` on a free loopback port against a throwaway instance
(its own DAGSTER_HOME, an SQLite collector database holding the bundled sample, a few pools
materialized up to the trained ``q50_model`` in one batch with a pool too short to use), drives
Debian's Chromium through Playwright: opens the asset graph, checks that the OHLCV check
``enough_bars`` shows its result per pool (the short pool failed, the others passed), launches
``refresh_pools`` for one pool from the UI, waits for the run to succeed and checks that the
pool's backtest metadata renders its summary table and its equity-curve picture, then launches
``portfolio_summary`` and checks that every picture of its research report renders. Screenshots go
to ``<tmp_path>/screenshots`` (the path is printed).

Needs /usr/bin/chromium and the ``playwright`` package (never ``playwright install``): without
them the test skips, or fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the interpreter running the suite: its venv has dagster
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Pools with long histories that pass every blocking check; six give the walk-forward model enough
# rows to train every fold with the repo's config (about 40 folds, none skipped).
POOLS = [
    "solana_4w2cysotX6czaUGmmWg13hDpY4QEMG2CzeKYEQyK9Ama",
    "solana_Q2sPHPdUWFMg7M7wwrQKLrn619cAucfRsmhVJffodSp",
    "solana_7oM3hr4rHmJ4mwe7BVdSqmSPkm3tjCYZpLvtiN6muNFz",
    "solana_4qs2R1Gsj2Lpy4ewV9hfVerNk2h4Qx3ZEkmJyKLywvb3",
    "solana_4bzFMpWDVXfRhaY3Xg7nGUbHDSquY5MPTvib1n8Vfmno",
    "solana_FtQ8ZY4Enw1HhvYFLFQftPB6exAGJuiUzGaY5L4B1xra",
]
LAUNCHED_POOL = POOLS[0]  # the longest history: hundreds of out-of-sample bars to backtest
BLOCKED_POOL = "solana_2Ausg8ScDHmATwzUVavkQC5fmp59CdvXeHgSTFi4gTQL"  # 1 complete bar: fails enough_bars
GRAPH_ASSETS = ["ohlcv_bars", "qlib_features", "q50_model", "q50_signals", "regime_labels", "backtest_results"]

SERVER_START_SECONDS = 120
RUN_SECONDS = 180
UI_TIMEOUT_MS = 30_000


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"The UI test must run in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    """The log's failure lines (failed steps, checks, errors) and its last lines."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    failures = [line for line in text if re.search(r"FAILURE|Error|failed", line)][-20:]
    return "\n".join([*failures, "...", *text[-lines:]] if failures else text[-lines:])


@pytest.fixture
def sync_playwright():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    return sync_playwright


@pytest.fixture
def deployment_dir(tmp_path):
    """Where the throwaway deployment lives: on tmpfs when there is one (Dagster's SQLite event
    log syncs every event to disk: about a quarter of the preparation time on ext4), else tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "deployment"
        return
    path = Path(tempfile.mkdtemp(prefix="q50-ui-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def instance_env(deployment_dir, sqlite_sample_file) -> dict[str, str]:
    """Environment of a prepared throwaway deployment: pools registered, a few pools' features
    and the pooled model materialized, so a one-pool ``refresh_pools`` run can succeed."""
    home = deployment_dir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    collector = deployment_dir / "collector.sqlite"
    shutil.copy(sqlite_sample_file, collector)
    env = {
        # The repo's config.yaml and nothing from the caller's shell (an override there could,
        # say, switch on the new-bars sensor and flood the instance with runs).
        **{k: v for k, v in os.environ.items() if not k.startswith("Q50_")},  # Q50__ paths too
        "DAGSTER_HOME": str(home),
        "Q50_DATABASE_URL": f"sqlite:///{collector}",
        "Q50_DATA_DIR": str(deployment_dir / "data"),
        # A deep assumed pool: the launched pool's q50 trades, so the portfolio's report has round
        # trips to break down (at the default 50 k USD it may not trade at all).
        "Q50__NAUTILUS_TRADER__BACKTEST__FALLBACK_RESERVE_USD": "2000000",
        "Q50__SIGNALS__VARIANCE_MULTIPLIER": "0",
    }
    # Settings are read once per process: prepare in a child process that sees this environment.
    started = time.monotonic()
    prep = subprocess.run([sys.executable, "-m", "q50_assets_tests.ui.prepare_instance", *POOLS, BLOCKED_POOL],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, f"preparing the instance failed:\n{prep.stdout[-3000:]}\n{prep.stderr[-5000:]}"
    summary = json.loads(prep.stdout.strip().splitlines()[-1])
    assert summary["model_pools"] == len(POOLS)  # the blocked pool never reached the QLib store
    assert summary["blocked"] == [BLOCKED_POOL]
    assert summary["folds"] > 0, f"the model trained no fold on {len(POOLS)} pools: {summary}"
    print(f"prepared in {time.monotonic() - started:.0f} s: {summary}")
    return env


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


LOCATIONS_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@pytest.fixture
def dagster_ui(instance_env, tmp_path):
    """Base URL of ``dagster dev`` serving the repo's workspace, its code location loaded."""
    port = _free_port()
    log_path = tmp_path / "dagster_dev.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=instance_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        deadline = started + SERVER_START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                entries = _graphql(base, LOCATIONS_QUERY)["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                    assert not errors, f"code location failed to load: {errors}"
                    print(f"dagster dev (pid {proc.pid}) ready in {time.monotonic() - started:.0f} s at {base}")
                    break
            except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
                pass  # not listening yet, or the workspace is still loading
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev not ready after {SERVER_START_SECONDS} s:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield base, log_path
    finally:
        # dagster dev, its webserver, daemon and code servers share the session started for it.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        try:  # anything of the group still alive after dagster dev itself exited
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def test_materialize_one_pool_from_the_ui(sync_playwright, dagster_ui, tmp_path):
    base, log_path = dagster_ui
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                _drive(page, base, shots)
            except Exception as exc:
                try:
                    page.screenshot(path=shots / "failure.png", full_page=True)
                    shot = f"screenshot: {shots / 'failure.png'}"
                except Exception as shot_exc:  # a crashed page: keep the original error
                    shot = f"no screenshot: {shot_exc}"
                raise AssertionError(f"{exc}\n{shot}\n--- dagster dev log (tail) ---\n{_tail(log_path)}") from exc
        finally:
            browser.close()
    print(f"screenshots: {shots}")


def _drive(page, base: str, shots: Path) -> None:
    from playwright.sync_api import expect

    # 1. The global asset graph, every group expanded: the lineage's assets are drawn.
    # On a fresh instance the UI asks the server whether to greet with "Join the Dagster
    # community" and opens that dialog a second later: dismiss it before anything else.
    with page.expect_response(lambda r: "ShouldShowNux" in r.url or "ShouldShowNux" in (r.request.post_data or ""),
                              timeout=UI_TIMEOUT_MS) as nux_query:
        page.goto(f"{base}/asset-groups")
    if nux_query.value.json()["data"]["shouldShowNux"]:
        nux = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
        nux.get_by_role("button", name="Skip").click()
        expect(nux).to_be_hidden(timeout=UI_TIMEOUT_MS)
    page.locator("button:has([aria-label='settings'])").filter(has_not_text="Settings").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")  # close the settings menu
    expect(page.get_by_role("menu")).to_be_hidden(timeout=UI_TIMEOUT_MS)
    for name in GRAPH_ASSETS:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=shots / "01-asset-graph.png")

    # 2. Checks per pool: enough_bars failed for the short pool only, passed for the others.
    _check_partitions(page, base, shots)

    # 3. The refresh_pools job's asset graph: materialize its assets for one pool (one partition).
    page.goto(f"{base}/jobs")
    page.locator("a", has=page.get_by_text("refresh_pools", exact=True)).first.click()
    expect(page).to_have_url(re.compile(r"/jobs/refresh_pools"), timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name="Materialize all…").click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    launch.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(LAUNCHED_POOL)
    page.get_by_role("menuitem", name=LAUNCHED_POOL).click()
    launch.get_by_text("Launch runs to materialize").click()  # closes the partition picker
    expect(launch).to_contain_text("1 partition", timeout=UI_TIMEOUT_MS)
    page.screenshot(path=shots / "02-launch-one-pool.png")
    launch.get_by_role("button", name="Launch 1 run").click()
    expect(launch).to_be_hidden(timeout=60_000)
    view_run = page.locator("a[href^='/runs/']", has_text="View")  # the "run launched" toast
    expect(view_run).to_be_visible(timeout=UI_TIMEOUT_MS)
    run_id = view_run.get_attribute("href").rsplit("/", 1)[1]

    # 4. The run page, until the run ends (reloaded now and then in case a live update is missed).
    page.goto(f"{base}/runs/{run_id}")
    expect(page.get_by_text(f"partition: {LAUNCHED_POOL}")).to_be_visible(timeout=UI_TIMEOUT_MS)
    _wait_for_success(page, base, run_id, shots / "03-run.png")

    # 5. The pool's backtest (its partition's latest materialization): the summary markdown
    # table and the equity-curve picture.
    page.goto(f"{base}/assets/backtest_results?view=partitions&partition={LAUNCHED_POOL}")
    def metadata_row(key: str):
        return page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))

    expect(metadata_row("backtest_run_id")).to_contain_text(run_id, timeout=UI_TIMEOUT_MS)
    expect(metadata_row("pool_id")).to_contain_text(LAUNCHED_POOL)
    expect(metadata_row("status")).to_contain_text("ok")

    # The summary table is long enough (a row per variant) that the UI folds it behind its link.
    metadata_row("summary").get_by_text("[Show Markdown]").click()
    summary = page.get_by_role("dialog").locator("table").filter(
        has=page.get_by_role("cell", name="buy_and_hold", exact=True))
    expect(summary).to_be_visible()
    expect(summary.get_by_role("columnheader")).to_contain_text(
        ["variant", "total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades"])
    for variant in ("q50", "q50_gross", "q50_close", "q50_horizon", "q50_horizon_gross", "buy_and_hold",
                    "buy_and_hold_matched", "bh_matched_horizon", "cash"):
        row = summary.get_by_role("row").filter(has=page.get_by_role("cell", name=variant, exact=True))
        expect(row.get_by_role("cell").nth(1)).to_have_text(re.compile(r"^-?\d+\.\d\d %$"))  # total_return
    summary.scroll_into_view_if_needed()
    page.screenshot(path=shots / "04-backtest-summary.png")
    page.keyboard.press("Escape")

    metadata_row("equity_curve").get_by_text("[Show Markdown]").click()
    picture = page.get_by_role("dialog").filter(has_text="equity_curve")
    image = picture.locator("img[src^='data:image/png;base64,']")
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 100 and height > 50, f"equity curve decoded to {width}x{height} px"
    page.screenshot(path=shots / "05-equity-curve.png")
    page.keyboard.press("Escape")

    # 6. The portfolio across pools from the UI: its research report renders every picture.
    _check_report(page, base, shots)


REPORT_PICTURES = ("equity_curves", "permutation_null", "reliability", "breakdowns")


def _check_report(page, base: str, shots: Path) -> None:
    """Launch ``portfolio_summary`` from its job page, wait for the run, open the portfolio's
    materialization and its ``report`` metadata: every picture of the report decodes."""
    from playwright.sync_api import expect

    page.goto(f"{base}/jobs")
    page.locator("a", has=page.get_by_text("portfolio_summary", exact=True)).first.click()
    expect(page).to_have_url(re.compile(r"/jobs/portfolio_summary"), timeout=UI_TIMEOUT_MS)
    page.get_by_role("button", name=re.compile(r"Materialize")).first.click()
    view_run = page.locator("a[href^='/runs/']", has_text="View")  # the "run launched" toast
    expect(view_run).to_be_visible(timeout=UI_TIMEOUT_MS)
    run_id = view_run.get_attribute("href").rsplit("/", 1)[1]
    _wait_for_success(page, base, run_id, shots / "06-portfolio-run.png")

    page.goto(f"{base}/assets/backtest_portfolio?view=events")
    report = page.get_by_role("row").filter(has=page.get_by_text("report", exact=True))
    expect(report.first).to_be_visible(timeout=UI_TIMEOUT_MS)
    report.first.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text="Q50: out-of-sample evidence")
    expect(dialog).to_be_visible()
    images = dialog.locator("img[src^='data:image/png;base64,']")
    expect(images).to_have_count(len(REPORT_PICTURES))
    for name in REPORT_PICTURES:
        image = dialog.locator(f"img[alt='{name}']")
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert width > 100 and height > 50, f"report picture {name} decoded to {width}x{height} px"
    expect(dialog.get_by_role("columnheader").first).to_be_visible()  # the headline table
    page.screenshot(path=shots / "07-report.png")


def _wait_for_success(page, base: str, run_id: str, shot: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{base}/runs/{run_id}")
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        try:
            status.wait_for(state="visible", timeout=15_000)
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not finish within {RUN_SECONDS} s") from None
            page.reload()
    page.screenshot(path=shot)
    assert status.inner_text() == "Success", f"run {run_id} ended with {status.inner_text()}"


def _check_partitions(page, base: str, shots: Path) -> None:
    """The ohlcv_bars check ``enough_bars``: its Partitions tab counts one failed pool and the
    prepared pools as passed; the short pool's row opens its failed result and metadata, a
    prepared pool's its passed one."""
    from playwright.sync_api import expect

    page.goto(f"{base}/assets/ohlcv_bars?view=checks&checkDetail=enough_bars")
    page.locator("button[role=tab]", has_text="Partitions").click()
    expect(page.get_by_text("Failed (1)", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(f"Passed ({len(POOLS)})", exact=True)).to_be_visible()
    page.screenshot(path=shots / "02-check-partitions.png")

    for pool, status in ((BLOCKED_POOL, "Failed"), (POOLS[1], "Passed")):
        page.get_by_placeholder("Filter by partition").fill(pool)
        expect(page.get_by_text("1 Partitions Selected", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        page.locator(f"text={pool[:12]}").locator("visible=true").first.click()
        # The selected partition's latest result: its status badge and the check's own metadata.
        history = page.get_by_text("View all historical executions (1)")
        expect(history).to_be_visible(timeout=UI_TIMEOUT_MS)
        detail = page.locator("div", has=history).filter(has=page.get_by_text(pool, exact=True)).last
        expect(detail.get_by_text(status, exact=True)).to_have_count(1)
        pool_row = page.get_by_role("row").filter(has=page.get_by_text("pool_id", exact=True))
        expect(pool_row).to_contain_text(pool)
        complete = page.get_by_role("row").filter(has=page.get_by_text("complete_bars", exact=True))
        expect(complete).to_contain_text("1" if status == "Failed" else re.compile(r"\d{3}"))
        page.screenshot(path=shots / f"02-{status.lower()}-pool-check.png")
