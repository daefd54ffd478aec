"""The UI in a real browser, over the drilled instance: the flywheel's stages on the global lineage,
the evaluation's plots, figures and MLflow link, a check naming its robot-day, the catalog's schema;
and the on-call path: the bad release's upstream lineage down to the raw logs, the incident
report's ranking, and the quarantine.

The screenshots they save are the ones in docs/img/ui/ (tools/refresh_ui_screenshots.sh copies them)."""

import os

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # a venv from before playwright joined the dev extras: fail in CI, skip elsewhere
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

import re  # noqa: E402

from flywheel_pipelines.defs.groups import GROUPS  # noqa: E402
from flywheel_pipelines_tests.conftest import DRILL_MLFLOW_UI  # noqa: E402
from flywheel_pipelines_tests.ui.pages import (  # noqa: E402 (needs playwright)
    LOAD_TIMEOUT_MS,
    assert_asset_table_lists,
    assert_lineage_shows,
    image_widths,
    metadata_row,
    open_asset,
    open_markdown,
    settle,
    show_global_lineage,
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


def test_global_lineage_shows_the_flywheels_stages(page, ui_artifacts):
    page.set_viewport_size({"width": 2000, "height": 1400})  # the expanded graph fits at the UI's least zoom
    page.goto("/asset-groups")
    for group in GROUPS:  # the sidebar lists every group; nothing else
        expect(page.get_by_text(group, exact=True).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    for old in ("ingest", "catalog", "curation", "training", "evaluation", "field"):
        expect(page.get_by_text(old, exact=True)).to_have_count(0)
    try:
        show_global_lineage(page, [a for assets in GROUPS.values() for a in assets])
    finally:
        settle(page)
        page.screenshot(path=str(ui_artifacts / "global-lineage.png"))


def test_eval_report_shows_its_plots(page, ui_artifacts):
    open_asset(page, "eval_report")
    plots = open_markdown(page, "plots")
    images = plots.locator("img[src^='data:image/png;base64,']")
    expect(images).to_have_count(2, timeout=LOAD_TIMEOUT_MS)
    assert [images.nth(i).get_attribute("alt") for i in range(2)] == ["success by group", "return distributions"]
    widths = image_widths(images)
    try:
        assert all(w > 0 for w in widths), f"plots not rendered (natural widths {widths})"
    finally:
        settle(page)
        plots.screenshot(path=str(ui_artifacts / "eval_report-plots.png"))


def test_eval_report_shows_rounded_figures_and_links_its_mlflow_run(page, ui_artifacts):
    open_asset(page, "eval_report")
    # Rounded to 4 significant digits (was 0.9433962264150944).
    rate = metadata_row(page, "success_rate").locator("td").last
    expect(rate).to_have_text(re.compile(r"^\s*0\.\d{1,4}\s*$"), timeout=LOAD_TIMEOUT_MS)
    link = metadata_row(page, "mlflow_run").locator(f"a[href^='{DRILL_MLFLOW_UI}/#/experiments/']").first
    expect(link).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    # The figures, the gate, the MLflow link and the report and plots entries on one screen.
    metadata_row(page, "production_version").evaluate("e => e.scrollIntoView({block: 'start'})")
    settle(page)
    page.screenshot(path=str(ui_artifacts / "eval_report-metadata.png"))


def test_an_episodes_check_names_the_robot_day_it_judged(page, ui_artifacts):
    open_asset(page, "episodes", view="checks")
    partition = metadata_row(page, "partition")
    expect(partition).to_contain_text(re.compile(r"\d{4}-\d{2}-\d{2}\|r1\d\d"), timeout=LOAD_TIMEOUT_MS)
    robot, day = partition.inner_text().split()[-1].split("|")[::-1]
    expect(metadata_row(page, "robot")).to_contain_text(robot)
    expect(metadata_row(page, "date")).to_contain_text(day)
    settle(page)
    page.screenshot(path=str(ui_artifacts / "episodes-check.png"))


def test_catalog_publishes_its_row_count_and_column_schema(page, ui_artifacts):
    open_asset(page, "episode_catalog")
    expect(page.get_by_text("Row count", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    columns = page.locator("table").filter(has=page.get_by_text("Column name", exact=True))
    for column in ("episode_id", "robot", "date", "outcome"):
        expect(columns.get_by_text(column, exact=True).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    settle(page)
    page.screenshot(path=str(ui_artifacts / "episode_catalog-columns.png"))
