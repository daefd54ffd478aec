"""Issue #16 (4): the local-lake sensor finds uploads whatever their mtimes, at bounded cost.

Before the fix only files whose mtime was newer than the watermark (minus 5 s) were looked at: an
upload with a preserved mtime (rsync -a, cp -p, tar) or one renamed into place after a later
upload was never requested. The grace window is set to 0 here so that the timing is exact
rather than slept through.
"""

import os
import shutil
import time

import dagster as dg
import pytest

from flywheel_pipelines.defs.ingest import sensors
from flywheel_pipelines.defs.partitions import robot_day_key
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.defs.test_ingest import DAY, tick

YEAR_AGO = time.time() - 365 * 86400


@pytest.fixture
def lake(tmp_path, monkeypatch) -> LocalLake:
    monkeypatch.setattr(sensors, "GRACE_NS", 0)
    return LocalLake(tmp_path / "lake")


def _day(lake, robot) -> object:
    folder = lake.root / "raw" / f"robot={robot}" / f"date={DAY}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _partitions(result, before=None) -> list[str]:
    """The partitions a tick requests, less those the previous tick did (the file at the watermark
    itself is looked at again: same run key, which Dagster dedups)."""
    seen = {r.run_key for r in before.run_requests} if before is not None else set()
    return sorted(r.partition_key for r in result.run_requests if r.run_key not in seen)


def test_uploads_with_preserved_or_old_mtimes_are_requested(lake, tmp_path):
    (_day(lake, "r400") / "a.mcap").write_bytes(b"first upload")
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        assert _partitions(first) == [robot_day_key("r400", DAY)]
        time.sleep(0.05)
        # cp -p / rsync -a / tar: the bytes arrive now, with a mtime from a year ago
        source = tmp_path / "kept.mcap"
        source.write_bytes(b"recorded a year ago")
        os.utime(source, (YEAR_AGO, YEAR_AGO))
        shutil.copy2(source, _day(lake, "r401") / "kept.mcap")
        assert lake.list(f"raw/robot=r401/date={DAY}/")[0].mtime_ns < int(YEAR_AGO * 1e9) + 10**9
        second = tick(instance, lake, first.cursor)
        assert _partitions(second, first) == [robot_day_key("r401", DAY)]


def test_an_upload_renamed_into_place_after_a_later_upload_is_requested(lake):
    # written under a hidden temp name (never listed) ...
    hidden = _day(lake, "r402") / ".upload-b.mcap.part"
    hidden.write_bytes(b"slow upload")
    os.utime(hidden, (time.time() - 60, time.time() - 60))
    with dg.instance_for_test() as instance:
        time.sleep(0.05)
        (_day(lake, "r403") / "c.mcap").write_bytes(b"a later, faster upload")
        first = tick(instance, lake)
        assert _partitions(first) == [robot_day_key("r403", DAY)]
        time.sleep(0.05)
        # ... and renamed into place once complete: its mtime is older than the watermark
        hidden.rename(hidden.parent / "b.mcap")
        second = tick(instance, lake, first.cursor)
        assert _partitions(second, first) == [robot_day_key("r402", DAY)]
        # the tick after requests nothing more
        assert _partitions(tick(instance, lake, second.cursor), second) == []


def test_a_bag_folder_renamed_into_place_is_requested(lake):
    staging = _day(lake, "r404") / ".bag.partial"
    staging.mkdir()
    for name in ("metadata.yaml", "bag_0.mcap"):
        (staging / name).write_bytes(b"part " + name.encode())
        os.utime(staging / name, (YEAR_AGO, YEAR_AGO))
    time.sleep(0.05)
    with dg.instance_for_test() as instance:
        (_day(lake, "r405") / "d.mcap").write_bytes(b"another robot")
        first = tick(instance, lake)
        assert _partitions(first) == [robot_day_key("r405", DAY)]
        time.sleep(0.05)
        staging.rename(staging.parent / "bag")
        second = tick(instance, lake, first.cursor)
        assert _partitions(second, first) == [robot_day_key("r404", DAY)]


def test_a_tick_hashes_only_changed_robot_days(lake, monkeypatch):
    for robot in ("r407", "r406"):
        (_day(lake, robot) / "e.mcap").write_bytes(robot.encode())
        time.sleep(0.05)
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        hashed = []
        real = sensors.sha256_file
        monkeypatch.setattr(sensors, "sha256_file", lambda path: hashed.append(path) or real(path))
        time.sleep(0.05)
        (_day(lake, "r406") / "f.mcap").write_bytes(b"new")
        second = tick(instance, lake, first.cursor)
        assert _partitions(second, first) == [robot_day_key("r406", DAY)]
        # r407 did not change: not hashed (r406/e.mcap is re-read with its changed robot-day)
        assert "robot=r407" not in {p.parent.parent.name for p in hashed}


def test_a_restarted_sensor_loses_nothing_and_duplicates_nothing(lake):
    (_day(lake, "r408") / "g.mcap").write_bytes(b"one")
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)
        restarted = tick(instance, lake, None)  # cursor lost: same run keys (Dagster starts one run per key)
        assert [r.run_key for r in restarted.run_requests] == [r.run_key for r in first.run_requests]
        time.sleep(0.05)
        (_day(lake, "r408") / "retry-g.mcap").write_bytes(b"one")  # the same bytes under a second name
        again = tick(instance, lake, first.cursor)
        assert _partitions(again, first) == [robot_day_key("r408", DAY)]  # one run: the day's content changed
