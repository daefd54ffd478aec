"""The catalog's fleet-scale listing on a real S3 server (SeaweedFS): archived months are not
listed, and each robot's listing starts where the archives stop."""

import datetime as dt

import pyarrow as pa

from flywheel_pipelines.lib import fleet
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA
from flywheel_pipelines.lib.storage import LocalLake


def _table(robot: str, day: str) -> pa.Table:
    row = {f.name: None for f in EPISODE_SCHEMA}
    row.update(robot=robot, date=day, episode_id=f"{robot}-{day}-0")
    return pa.Table.from_pylist([row], schema=EPISODE_SCHEMA)


def _fill(lake, robots, days):
    for robot in robots:
        for day in days:
            lake.write_parquet(f"episodes/robot={robot}/date={day}/{fleet.EPISODE_TABLE}", _table(robot, day))


def _days(first: str, n: int) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n)]


def test_robot_day_tables_lists_a_range_on_s3_as_on_a_folder(s3_lake, tmp_path):
    days = _days("2026-09-25", 12)  # across a month boundary
    local = LocalLake(tmp_path / "lake")
    for lake in (s3_lake, local):
        _fill(lake, ["r1", "r2"], days)
        lake.write_bytes("episodes/robot=r1/date=2026-10-02/frames.parquet", b"x")  # not an episode table
    for since, until in [("2026-10-01", "2026-10-03"), ("2026-09-30", None), ("2026-09-01", "2026-09-26")]:
        on_s3 = list(fleet.robot_day_tables(s3_lake, "r1", since, until))
        assert on_s3 == list(fleet.robot_day_tables(local, "r1", since, until))
        assert [d for d, _ in on_s3] == [d for d in days if d >= since and (until is None or d <= until)]
    assert fleet.episode_robots(s3_lake) == ["r1", "r2"]
    assert len(fleet.month_episode_tables(s3_lake, "2026-10-01")) == 2 * 6


def test_catalog_sources_skip_archived_days_on_s3(s3_lake):
    days = _days("2026-09-01", 45)  # September (archived) and half of October (not)
    _fill(s3_lake, ["r1", "r2", "r3"], days)
    archives = {"2026-09-01": {"month": "2026-09-01", "complete_before": "2026-10-01"}}
    sources, per_day = fleet.catalog_sources(s3_lake, archives, start=dt.date(2026, 9, 1))
    assert sources[0] == (fleet.archive_key("2026-09-01"), "2026-10-01")
    assert per_day == 3 * 15
    assert all("date=2026-10-" in key for key, _ in sources[1:])
    # A month archived only up to a day inside it: the days from that day on come from their tables.
    partial = {"2026-09-01": {"month": "2026-09-01", "complete_before": "2026-09-20"}}
    _, per_day = fleet.catalog_sources(s3_lake, partial, start=dt.date(2026, 9, 1))
    assert per_day == 3 * (11 + 15)
