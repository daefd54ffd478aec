"""Issue #16 (5): the same bytes uploaded under a second name are ingested once.

Before the fix a retry upload (a.mcap and an identical retry-a.mcap) doubled the day's episodes,
added 1-frame unknown/aborted stubs and a non-monotonic episode, and changed episode ids.
"""

import dagster as dg
import pyarrow.parquet as pq
import pytest

from flywheel_pipelines.defs.episodes.assets import episodes_prefix
from flywheel_pipelines.defs.ingest.assets import manifest_key
from flywheel_pipelines.lib.rosbag.manifest import mark_duplicates
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.defs.test_ingest import DAY, ingest, upload


def _episodes(lake, robot):
    folder = lake.root / episodes_prefix(robot, DAY)
    table = pq.read_table(folder / "episodes.parquet").to_pylist()
    frames = pq.read_table(folder / "frames.parquet")
    return table, frames


@pytest.mark.parametrize("copy_name", ["retry-{name}", "0-retry-{name}"])  # sorts after / before the original
def test_a_retry_upload_of_the_same_bytes_is_recorded_as_duplicate_and_changes_no_episode(tmp_path, copy_name):
    lake = LocalLake(tmp_path / "lake")
    day = upload(lake, "r601", episodes=3)
    with dg.instance_for_test() as instance:
        ingest(instance, lake, "r601")
        before, frames_before = _episodes(lake, "r601")
        original = day.keys[0]
        folder, name = original.rsplit("/", 1)
        copy = tmp_path / "copy.mcap"
        copy.write_bytes(lake.path(original).read_bytes())
        lake.put_raw(f"{folder}/{copy_name.format(name=name)}", copy)
        ingest(instance, lake, "r601")
        after, frames_after = _episodes(lake, "r601")
    manifest = lake.read_json(manifest_key("r601", DAY))
    duplicates = [f for f in manifest["files"] if f["verdict"] == "duplicate"]
    assert [f["key"] for f in duplicates] == [f"{folder}/{copy_name.format(name=name)}"]
    assert duplicates[0]["duplicate_of"] == original and "the same bytes as" in duplicates[0]["reason"]
    assert after == before  # same ids, same sources, same outcomes: nothing doubled, no stub
    assert frames_after.equals(frames_before)


def test_duplicates_keep_the_log_read_before_and_never_hide_a_rejected_file():
    def entry(key, sha, verdict="ok"):
        return {"key": key, "sha256": sha, "verdict": verdict}
    files = [entry("a.mcap", "x"), entry("b.mcap", "x"), entry("c.mcap", "y", "rejected"), entry("d.mcap", "y", "rejected")]
    marked = mark_duplicates(files)
    assert [f["verdict"] for f in marked] == ["ok", "duplicate", "rejected", "rejected"]
    again = mark_duplicates([entry("0.mcap", "x"), *files[:2]], previous=marked)
    assert [(f["key"], f["verdict"]) for f in again] == [("0.mcap", "duplicate"), ("a.mcap", "ok"), ("b.mcap", "duplicate")]
