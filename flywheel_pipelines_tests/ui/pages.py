"""Helpers that drive the Dagster 1.13 UI with Playwright.

What they depend on in Dagster's UI (update here if a Dagster upgrade changes it):
- the asset page route ``/assets/<key path>`` and its lineage tab ``?view=lineage``;
- the lineage tab's scope buttons (accessible names ending in "Upstream") and its graph-depth
  "All" button; a double-click on the graph (``[data-svg-viewport]``) zooms it to fit;
- asset nodes' name elements carry the CSS-module class ``AssetNode_assetName__<hash>``;
- the Overview tab's metadata table: one ``<tr>`` per key, the key's text alone in a cell, and a
  Markdown value rendered as a nested ``<table>``;
- the "Join the Dagster community" dialog, kept away by localStorage ``communityNux``;
- the global lineage page ``/asset-groups``, whose groups start collapsed and expand with the
  graph's keyboard shortcut Alt+E ("Expand all groups");
- a Markdown value longer than 1,000 characters shows as "[Show Markdown]", which opens a dialog.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# Seconds are generous: on 2 busy cores the first GraphQL queries of a fresh server take a while.
LOAD_TIMEOUT_MS = 60_000

# The "Join the Dagster community" dialog opens on localhost a second after load, over the page.
DISMISS_COMMUNITY_NUX = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"


def key_path(asset_key: str | Sequence[str]) -> list[str]:
    return asset_key.split("/") if isinstance(asset_key, str) else list(asset_key)


def asset_url(asset_key: str | Sequence[str], view: str | None = None) -> str:
    url = "/assets/" + "/".join(quote(p, safe="") for p in key_path(asset_key))
    return f"{url}?view={view}" if view else url


def open_asset(page: Page, asset_key: str | Sequence[str], view: str | None = None) -> None:
    """Open the asset's page (a path relative to the page's base URL) and wait until its header
    names it."""
    page.goto(asset_url(asset_key, view))
    name = key_path(asset_key)[-1]
    expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)


def settle(page: Page, timeout_ms: int = 3_000) -> None:
    """Let the page finish its queries (network idle for 0.5 s) before a screenshot; a page that
    keeps polling is screenshotted as it is after ``timeout_ms``."""
    with contextlib.suppress(PlaywrightTimeoutError):
        page.wait_for_load_state("networkidle", timeout=timeout_ms)


def asset_nodes(page: Page, name: str) -> Locator:
    """The asset graph's nodes named ``name`` (not group boxes of the same name)."""
    return page.locator("[data-svg-viewport] [class*='AssetNode_assetName']").filter(
        has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))


def _wait_until_still(page: Page) -> None:
    """Wait for the graph's zoom/pan animation to end (its transform stops changing)."""
    page.wait_for_function(
        """() => new Promise(resolve => {
            const el = document.querySelector('[data-svg-viewport] > div');
            const t0 = el && el.style.transform;
            setTimeout(() => resolve(!!el && el.style.transform === t0), 300);
        })""",
        timeout=LOAD_TIMEOUT_MS,
    )


def show_upstream_lineage(page: Page, asset_key: str | Sequence[str]) -> None:
    """Open the asset's lineage tab with every ancestor: scope "Upstream", graph depth "All",
    then zoom the graph to fit so that every node is on screen (nodes off screen are not drawn)."""
    open_asset(page, asset_key, view="lineage")
    page.get_by_role("button", name=re.compile(r"\bUpstream$")).click()
    expect(page).to_have_url(re.compile(r"lineageScope=upstream"), timeout=LOAD_TIMEOUT_MS)
    depth_all = page.get_by_role("button", name="All", exact=True)
    expect(depth_all).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    if depth_all.is_enabled():  # disabled when the depth is already the whole upstream graph
        depth_all.click()
        expect(depth_all).to_be_disabled(timeout=LOAD_TIMEOUT_MS)
    zoom_to_fit(page, key_path(asset_key)[-1])


def zoom_to_fit(page: Page, name: str) -> None:
    """Zoom the asset graph to fit (a double-click on it), until the node ``name`` is on screen:
    the tab keeps the zoom it had before the depth changed, and the new layout may land after the
    first fit."""
    viewport = page.locator("[data-svg-viewport]")
    node = asset_nodes(page, name).first
    for _ in range(10):
        expect(viewport).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        viewport.dispatch_event("dblclick")  # SVGViewport: double-click = autocenter, zoomed to fit
        _wait_until_still(page)
        if node.is_visible():
            return
        page.wait_for_timeout(1000)
    expect(node, f"asset node {name!r} in the lineage graph after zooming to fit").to_be_visible()


def assert_lineage_shows(page: Page, names: Iterable[str]) -> None:
    """Every one of ``names`` is an asset node on screen in the current graph."""
    for name in names:
        expect(asset_nodes(page, name).first, f"asset node {name!r} in the lineage graph").to_be_visible(
            timeout=LOAD_TIMEOUT_MS)


def metadata_row(page: Page, metadata_key: str) -> Locator:
    """The Overview tab's metadata row of ``metadata_key`` (latest materialization)."""
    return page.locator("tr").filter(has=page.get_by_text(metadata_key, exact=True))


def assert_asset_table_lists(
    page: Page, asset_key: str | Sequence[str], texts: Iterable[str], *, metadata_key: str | None = None,
    screenshot: Path | None = None,
) -> Locator:
    """Open the asset's page and assert that a Markdown table in its latest materialization's
    metadata shows every one of ``texts`` (each as a substring of the table's text). With
    ``metadata_key`` the table is that key's value; without, the first Markdown table among the
    metadata values (a long value opens in Dagster's Markdown dialog). Saves the table (its metadata
    row, or the dialog) to ``screenshot`` when given (also when an assertion
    fails, so the artifact shows what was there). Returns the table."""
    open_asset(page, asset_key)
    scope = metadata_row(page, metadata_key) if metadata_key else page
    in_dialog = False
    if metadata_key:
        # A long Markdown value is not inlined: the row shows a "[Show Markdown]" link that opens
        # the rendered Markdown in a dialog.
        expect(scope, f"{asset_key}'s metadata row {metadata_key!r}").to_be_visible(timeout=LOAD_TIMEOUT_MS)
        more = scope.get_by_text("[Show Markdown]")
        in_dialog = more.count() > 0
        if in_dialog:
            more.first.click()
            scope = page.get_by_role("dialog")
    table = scope.locator("td table").first if metadata_key is None else scope.locator("table").first
    expect(table, f"a Markdown table in {asset_key}'s metadata"
           + (f" under {metadata_key!r}" if metadata_key else "")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    row = table if metadata_key and in_dialog else table.locator("xpath=ancestor::tr[last()]")
    try:
        for text in texts:
            expect(table, f"{asset_key}'s metadata table lists {text!r}").to_contain_text(text)
    finally:
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            row.screenshot(path=str(screenshot))
    return table


def show_global_lineage(page: Page, names: Sequence[str]) -> None:
    """Open the global asset lineage with every group expanded and zoomed to fit, until each of
    ``names`` is an asset node on screen."""
    page.goto("/asset-groups")
    viewport = page.locator("[data-svg-viewport]")
    expect(viewport).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    node = asset_nodes(page, names[-1]).first
    for _ in range(5):
        # The shortcut needs the graph focused; a click on empty canvas does that (and selects nothing).
        box = viewport.bounding_box()
        page.mouse.click(box["x"] + 10, box["y"] + box["height"] - 10)
        page.keyboard.press("Alt+KeyE")
        with contextlib.suppress(AssertionError):
            expect(node).to_be_attached(timeout=5_000)
            break
    for name in names:
        expect(asset_nodes(page, name).first, f"asset node {name!r} after expanding the groups").to_be_attached(
            timeout=LOAD_TIMEOUT_MS)
    _wait_until_still(page)  # the expanded layout lands in steps; fit once it has
    page.wait_for_timeout(1000)
    zoom_to_fit(page, names[-1])
    assert_lineage_shows(page, names)


def open_markdown(page: Page, metadata_key: str) -> Locator:
    """The rendered Markdown of the asset page's metadata value ``metadata_key``: inline, or the
    dialog its "[Show Markdown]" link opens when the value is long."""
    row = metadata_row(page, metadata_key)
    expect(row, f"metadata row {metadata_key!r}").to_be_visible(timeout=LOAD_TIMEOUT_MS)
    more = row.get_by_text("[Show Markdown]")
    if more.count() == 0:
        return row
    more.first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    return dialog


def image_widths(images: Locator) -> list[int]:
    """The natural width of each image once it has loaded (0: the browser could not decode it)."""
    images.first.wait_for(timeout=LOAD_TIMEOUT_MS)
    return images.evaluate_all(
        """els => Promise.all(els.map(e => e.decode().then(() => e.naturalWidth, () => 0)))""")
