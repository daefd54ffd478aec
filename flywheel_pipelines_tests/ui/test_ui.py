"""The UI path in a real browser: the release's upstream lineage and an asset's metadata table."""

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
    assert_asset_table_lists(page, "episode_catalog", ["r101", "r102"], metadata_key="by_robot",
                             screenshot=ui_artifacts / "episode_catalog-by_robot.png")


def test_table_helper_fails_on_a_missing_text(page):
    """The helper is not vacuous: a robot the table does not list fails it."""
    with pytest.raises(AssertionError):
        assert_asset_table_lists(page, "episode_catalog", ["r101", "r999"], metadata_key="by_robot")
