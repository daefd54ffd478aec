"""The UI in a real browser: a built instance, `dagster-webserver` on it, headless Chromium.

Chromium is the system's (Debian package `chromium`, installed by tools/ensure_browser.sh), driven
by Playwright with ``executable_path``: Playwright's own browser download is never used.
Screenshots go to ``$FLYWHEEL_TEST_ARTIFACTS/ui`` (default ``<repo>/.test-artifacts/ui``), with the
instance build log and the webserver log; a failed test also leaves ``<test>-failure.png``.

The instance is the on-call drill's (the session's ``drilled`` fixture, shared with the drill
test): a bad release, its incident report, the quarantine, the replacement.
``FLYWHEEL_UI_HOME=<folder>`` points the tests at an instance built there before instead (a
FLYWHEEL_HOME with a ``dagster_home``): quicker when working on the tests themselves.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.ui.server import REPO, webserver

CHROMIUM = os.environ.get("FLYWHEEL_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def ui_artifacts() -> Path:
    root = Path(os.environ.get("FLYWHEEL_TEST_ARTIFACTS", REPO / ".test-artifacts"))
    path = root / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def ui_home(request) -> Path:
    """A FLYWHEEL_HOME holding the instance, lake and MLflow store the UI shows."""
    reuse = os.environ.get("FLYWHEEL_UI_HOME")
    if reuse:
        home = Path(reuse)
        if not (home / "dagster_home").is_dir():
            pytest.fail(f"FLYWHEEL_UI_HOME={reuse} holds no dagster_home (run `flywheel drill --home {reuse}` first)")
        return home
    return request.getfixturevalue("drilled").home


@pytest.fixture(scope="session")
def drill_result(request) -> dict:
    """What the drill reported (the robot-days it found, the releases), for the UI's expectations."""
    reuse = os.environ.get("FLYWHEEL_UI_HOME")
    if reuse:
        path = Path(reuse).parent / f"{Path(reuse).name}-drill.json"
        if not path.is_file():
            pytest.fail(f"{path} missing: run `flywheel drill --home {reuse} --json-out {path}`")
        return json.loads(path.read_text())
    return request.getfixturevalue("drilled").result


@pytest.fixture(scope="session")
def dagster_ui(ui_home, ui_artifacts):
    """`dagster-webserver` on 127.0.0.1 over ``ui_home``; yields its base URL."""
    with webserver(ui_home, ui_artifacts / "webserver.log") as server:
        yield server.url


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing(f"no Chromium at {CHROMIUM}: run tools/ensure_browser.sh (as root it installs the Debian package)")
    args = ["--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.ui_failed = report.failed


@pytest.fixture
def page(request, browser, dagster_ui, ui_artifacts):
    """A fresh browser page on the webserver (relative URLs resolve against it), 1600x1000."""
    from flywheel_pipelines_tests.ui.pages import DISMISS_COMMUNITY_NUX

    context = browser.new_context(base_url=dagster_ui, viewport={"width": 1600, "height": 1000})
    context.add_init_script(DISMISS_COMMUNITY_NUX)
    context.set_default_timeout(60_000)
    page = context.new_page()
    yield page
    if getattr(request.node, "ui_failed", False):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        page.screenshot(path=str(ui_artifacts / f"{name}-failure.png"))
    context.close()
