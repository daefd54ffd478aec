"""The on-call path in a real browser, over the drilled instance: the bad release's upstream lineage
down to the raw logs, the incident report's ranking, and the quarantine."""

import os

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # a venv from before playwright joined the dev extras: fail in CI, skip elsewhere
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

from flywheel_pipelines_tests.ui.pages import (  # noqa: E402 (needs playwright)
    LOAD_TIMEOUT_MS,
    assert_asset_table_lists,
    assert_lineage_shows,
    metadata_row,
    open_asset,
    settle,
    show_upstream_lineage,
)

pytestmark = pytest.mark.slow


def test_release_page_shows_its_latest_materialization(page, ui_artifacts):
    open_asset(page, "release_bundle")
    expect(metadata_row(page, "release")).to_contain_text("reach-bc", timeout=LOAD_TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ui_artifacts / "release_bundle.png"))


def test_release_lineage_shows_the_upstream_chain_to_the_raw_logs(page, ui_artifacts):
    show_upstream_lineage(page, "release_bundle")
    try:
        assert_lineage_shows(page, ["release_bundle", "curated_dataset", "episode_catalog", "episodes", "log_manifest"])
    finally:
        settle(page)
        page.screenshot(path=str(ui_artifacts / "release_bundle-lineage-upstream.png"))


def test_catalog_table_lists_the_robots(page, ui_artifacts):
    assert_asset_table_lists(page, "episode_catalog", ["r101", "r102", "r103", "r104"], metadata_key="by_robot",
                             screenshot=ui_artifacts / "episode_catalog-by_robot.png")


def test_incident_report_lists_the_faulty_robot_days(page, ui_artifacts, drill_result):
    robots = sorted({robot for robot, _ in drill_result["found"]})
    days = [day for _, day in drill_result["found"]]
    table = assert_asset_table_lists(page, "incident_report", [*robots, *days, "(outlier)"], metadata_key="ranking",
                                     screenshot=ui_artifacts / "incident_report-ranking.png")
    # Ranked first: the first data rows of the table are the faulty robot-days.
    first = table.locator("tbody tr").first
    expect(first).to_contain_text(robots[0])
    expect(first).to_contain_text("(outlier)")


def test_quarantine_log_shows_the_quarantine(page, ui_artifacts, drill_result):
    open_asset(page, "quarantine_log")
    robot, _ = drill_result["found"][0]
    expect(metadata_row(page, "target")).to_contain_text(f"robot {robot}", timeout=LOAD_TIMEOUT_MS)
    expect(metadata_row(page, "id")).to_contain_text(drill_result["quarantine_ids"][-1], timeout=LOAD_TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ui_artifacts / "quarantine_log.png"))


def test_table_helper_fails_on_a_missing_text(page):
    """The helper is not vacuous: a robot the table does not list fails it."""
    with pytest.raises(AssertionError):
        assert_asset_table_lists(page, "episode_catalog", ["r101", "r999"], metadata_key="by_robot")
