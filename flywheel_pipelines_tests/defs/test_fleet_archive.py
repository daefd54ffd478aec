"""Fleet scale: the hot robot x day window, cold days through the month archive, the catalog over both.

Everything runs against a real local lake with simulated ROS2 MCAP uploads and a real Dagster
instance; the S3 listing of the same functions is tested in infra/test_s3_fleet.py.
"""

import datetime as dt
import json

import dagster as dg
import pytest

from flywheel_pipelines.defs.archive.assets import compact_month, episode_archive
from flywheel_pipelines.defs.archive.schedules import month_archive_schedule, months_to_archive
from flywheel_pipelines.defs.catalog.assets import episode_catalog
from flywheel_pipelines.defs.episodes.assets import episodes
from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
from flywheel_pipelines.defs.ingest.sensors import raw_log_sensor
from flywheel_pipelines.defs.partitions import DAILY, FLEET_START, HOT_DAYS, HOT_START, ROBOT_DAY, ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.conftest import days_ago

HOT_DAY = days_ago(1)
COLD_DAY = (HOT_START - dt.timedelta(days=3)).isoformat()  # 3 days before the grid's first column
COLD_MONTH = fleet.month_key(COLD_DAY)


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def resources(lake: LocalLake) -> dict:
    return {"lake": LakeResource(root=str(lake.root))}


def upload(lake, robot: str, day: str, *, episodes: int = 3, seed: int = 0):
    return simulate_robot_day(lake, sample_profile(robot, seed=seed, index=1), day, episodes=episodes, seed=seed)


def tick(instance, lake, cursor=None):
    # As context managers: an evaluation context that is never exited leaves Dagster's current
    # instance state pointing at a closed instance, and later definition loads fail.
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources(lake)) as context:
        return raw_log_sensor(context)


def archive(instance, lake, month: str, reingest=()):
    result = dg.materialize([episode_archive], instance=instance, resources=resources(lake), partition_key=month,
                            run_config={"ops": {"episode_archive": {"config": {"reingest": list(reingest)}}}})
    assert result.success
    return result.asset_materializations_for_node("episode_archive")[0].metadata


def ingest_hot(instance, lake, robot: str, day: str):
    instance.add_dynamic_partitions(ROBOTS.name, [robot])
    assert dg.materialize([raw_fleet_logs, log_manifest, episodes], selection=[log_manifest, episodes],
                          instance=instance, resources=resources(lake), partition_key=robot_day_key(robot, day)).success


def catalog(instance, lake):
    result = dg.materialize([episodes, episode_archive, episode_catalog], selection=[episode_catalog],
                            instance=instance, resources=resources(lake))
    assert result.success
    return result.asset_materializations_for_node("episode_catalog")[0].metadata


# --- the window ------------------------------------------------------------------------------------


def test_the_grid_is_the_hot_window_and_holds_a_1000_robot_fleet():
    assert HOT_START.weekday() == 0 or HOT_START == FLEET_START
    today = dt.datetime.now(dt.UTC).date()
    assert HOT_DAYS <= (today - HOT_START).days < HOT_DAYS + 7
    days = DAILY.get_partition_keys()
    assert days[0] == HOT_START.isoformat() and days[-1] == today.isoformat()
    # 1,000 robots x the window stays under Dagster's ~40k comfortable partitions per asset.
    assert 1000 * len(days) < 40_000
    assert isinstance(ROBOT_DAY, dg.MultiPartitionsDefinition)


@pytest.mark.parametrize(("today", "days", "start"), [
    ("2026-12-03", 28, "2026-11-02"),  # Thursday: 28 days back is Thu 11-05 -> Monday 11-02
    ("2026-12-06", 28, "2026-11-02"),  # same week, same first column
    ("2026-12-07", 28, "2026-11-09"),  # next Monday: the window moves a week
    ("2025-01-10", 28, "2025-01-01"),  # never before the fleet's first day
])
def test_window_start_snaps_to_monday_and_never_precedes_the_fleet(today, days, start):
    assert fleet.hot_window_start(dt.date.fromisoformat(today), days, floor=dt.date(2025, 1, 1)).isoformat() == start


@pytest.mark.parametrize(("value", "message"), [("abc", "whole number"), ("1", "2..3660"), ("99999", "2..3660")])
def test_bad_hot_days_setting_is_a_clear_error(monkeypatch, value, message):
    monkeypatch.setenv(fleet.HOT_DAYS_ENV, value)
    with pytest.raises(fleet.FleetConfigError, match=message):
        fleet.hot_days()


def test_months_to_archive_are_the_wholly_cold_ones_not_yet_complete():
    archives = {"2026-08-01": {"month": "2026-08-01", "complete_before": "2026-09-01"},
                "2026-09-01": {"month": "2026-09-01", "complete_before": "2026-09-21"}}  # built while partly hot
    todo = months_to_archive(archives, fleet_start=dt.date(2026, 7, 15), hot_start=dt.date(2026, 11, 2))
    assert todo == [("2026-07-01", "2026-08-01"), ("2026-09-01", "2026-10-01"), ("2026-10-01", "2026-11-01")]


# --- the sensor ------------------------------------------------------------------------------------


def test_a_late_upload_to_a_cold_day_requests_its_month_archive_and_its_run_records_the_join(lake):
    upload(lake, "r301", COLD_DAY)
    upload(lake, "r302", HOT_DAY)
    with dg.instance_for_test() as instance:
        result = tick(instance, lake)
        by_robot = {r.tags["flywheel/robot"]: r for r in result.run_requests}
        cold, hot = by_robot["r301"], by_robot["r302"]
        assert (cold.job_name, cold.partition_key) == ("archive_month", COLD_MONTH)
        assert cold.run_config == {"ops": {"episode_archive": {"config": {"reingest": [f"r301/{COLD_DAY}"]}}}}
        assert (hot.job_name, hot.partition_key) == ("ingest_robot_day", robot_day_key("r302", HOT_DAY))
        assert cold.run_key.startswith(f"r301|{COLD_DAY}|")
        assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["r301", "r302"]
        assert fleet.joined_robots(lake) == {}  # a tick writes nothing: the runs record the join days
        # The same files again: nothing new, also for the cold day once it has been archived.
        archive(instance, lake, COLD_MONTH, [f"r301/{COLD_DAY}"])
        instance.add_dynamic_partitions(ROBOTS.name, ["r301", "r302"])
        ingest_hot(instance, lake, "r302", HOT_DAY)
        assert fleet.joined_robots(lake) == {"r301": COLD_DAY, "r302": HOT_DAY}
        assert tick(instance, lake).run_requests == []


def test_join_day_moves_back_for_an_earlier_upload_found_later(lake):
    assert fleet.record_join(lake, "r1", HOT_DAY)["joined"] == HOT_DAY
    assert fleet.record_join(lake, "r1", COLD_DAY)["joined"] == COLD_DAY
    assert fleet.record_join(lake, "r1", HOT_DAY)["joined"] == COLD_DAY
    joined = fleet.joined_robots(lake)
    assert fleet.fleet_day_robots(joined | {"r2": HOT_DAY}, COLD_DAY, ["r1", "r2", "r3"]) == ["r1"]


def test_an_upload_dated_before_the_fleet_start_is_refused_with_the_reason(lake):
    before = (FLEET_START - dt.timedelta(days=1)).isoformat()
    upload(lake, "r303", before, episodes=1)
    with dg.instance_for_test() as instance:
        result = tick(instance, lake)
    assert result.run_requests == []
    assert not fleet.joined_robots(lake)


# --- the archive and the catalog -------------------------------------------------------------------


def test_cold_reingest_archive_and_catalog_serve_every_episode_once(lake):
    upload(lake, "r301", COLD_DAY, episodes=3, seed=1)
    upload(lake, "r302", HOT_DAY, episodes=2, seed=2)
    with dg.instance_for_test() as instance:
        meta = archive(instance, lake, COLD_MONTH, [f"r301/{COLD_DAY}"])
        assert lake.exists(f"manifests/robot=r301/date={COLD_DAY}/manifest.json")
        assert lake.exists(f"episodes/robot=r301/date={COLD_DAY}/episodes.parquet")
        assert meta["episodes"].value == 3 and meta["reingested"].value == 1
        info = lake.read_json(fleet.archive_info_key(COLD_MONTH))
        assert info["complete_before"] == min(HOT_START.isoformat(), fleet.day_after(fleet.month_days(COLD_MONTH)[-1]))
        assert info["robot_days"] == 1 and info["episodes"] == 3

        ingest_hot(instance, lake, "r302", HOT_DAY)
        cat = catalog(instance, lake)
        rows = lake.read_parquet(CATALOG_KEY).to_pylist()
        assert sorted({(r["robot"], r["date"]) for r in rows}) == [("r301", COLD_DAY), ("r302", HOT_DAY)]
        assert len(rows) == 5 and len({r["episode_id"] for r in rows}) == 5
        assert cat["month_archives"].value == 1
        assert cat["robot_day_tables_read"].value == 1  # the cold day came from its archive

        # Re-running the same late upload (a retried run): nothing re-ingested, same archive.
        again = archive(instance, lake, COLD_MONTH, [f"r301/{COLD_DAY}"])
        assert "up to date" in again["reingest"].value
        assert again["compaction"].value == "incremental"
        assert again["content_hash"].value == meta["content_hash"].value


def test_a_second_late_upload_replaces_only_its_robot_day_in_the_archive(lake):
    upload(lake, "r301", COLD_DAY, episodes=2, seed=1)
    other = (HOT_START - dt.timedelta(days=4)).isoformat()
    with dg.instance_for_test() as instance:
        archive(instance, lake, COLD_MONTH, [f"r301/{COLD_DAY}"])
        upload(lake, "r304", other, episodes=1, seed=4)
        meta = archive(instance, lake, fleet.month_key(other), [f"r304/{other}"])
        if fleet.month_key(other) == COLD_MONTH:
            assert meta["compaction"].value == "incremental"
            assert meta["robot_days"].value == 2 and meta["episodes"].value == 3
        table = lake.read_parquet(fleet.archive_key(fleet.month_key(other)))
        assert ("r304", other) in set(zip(table.column("robot").to_pylist(), table.column("date").to_pylist(), strict=True))


@pytest.mark.parametrize(("month", "entry", "message"), [
    (fleet.month_key(HOT_DAY), f"r301/{HOT_DAY}", "in the hot window"),
    (COLD_MONTH, "r301/1999-01-01", "is not in the month"),
    (COLD_MONTH, "r301", "expected 'robot/YYYY-MM-DD'"),
    (COLD_MONTH, f"../{COLD_DAY}", "robot id"),
])
def test_a_bad_reingest_entry_is_refused_with_the_reason(lake, month, entry, message):
    with dg.instance_for_test() as instance:
        result = dg.materialize([episode_archive], instance=instance, resources=resources(lake), partition_key=month,
                                raise_on_error=False,
                                run_config={"ops": {"episode_archive": {"config": {"reingest": [entry]}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert message in failure.event_specific_data.error.message
    assert not lake.exists(fleet.archive_info_key(month))


def test_an_archive_killed_between_its_two_writes_still_gives_a_consistent_catalog(lake):
    """Parquet first, archive.json second: a newer Parquet with an older archive.json must not
    double-count the days the old archive.json does not cover."""
    upload(lake, "r301", COLD_DAY, episodes=2, seed=1)
    with dg.instance_for_test() as instance:
        archive(instance, lake, COLD_MONTH, [f"r301/{COLD_DAY}"])
        info = lake.read_json(fleet.archive_info_key(COLD_MONTH))
        lake.write_json(fleet.archive_info_key(COLD_MONTH), {**info, "complete_before": COLD_DAY})  # "old" json
        catalog(instance, lake)
        rows = lake.read_parquet(CATALOG_KEY).to_pylist()
        assert len(rows) == 2 and len({r["episode_id"] for r in rows}) == 2


def test_the_schedule_requests_each_cold_month_without_an_archive_once_a_day(lake):
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance, resources=resources(lake),
                                       scheduled_execution_time=dt.datetime.now(dt.UTC)) as ctx:
            requests = month_archive_schedule(ctx)
        months = [r.partition_key for r in requests]
        assert months == [m for m, _ in months_to_archive({}, fleet_start=FLEET_START, hot_start=HOT_START)]
        assert all(m < HOT_START.isoformat() for m in months)
        assert len({r.run_key for r in requests}) == len(requests)
        archive(instance, lake, months[-1])  # an empty month gets an empty archive
        assert json.loads(lake.read_bytes(fleet.archive_info_key(months[-1])))["episodes"] == 0
        with dg.build_schedule_context(instance=instance, resources=resources(lake),
                                       scheduled_execution_time=dt.datetime.now(dt.UTC)) as ctx:
            assert [r.partition_key for r in month_archive_schedule(ctx)] == months[:-1]
            for month in months[:-1]:
                compact_month(lake, month, fleet.day_after(fleet.month_days(month)[-1]))
            assert isinstance(month_archive_schedule(ctx), dg.SkipReason)
