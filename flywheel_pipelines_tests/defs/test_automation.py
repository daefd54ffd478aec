"""Declarative automation: the catalog follows new episodes, once per change, never as a backlog flood."""

import dagster as dg

from flywheel_pipelines.definitions import defs as load_defs
from flywheel_pipelines.defs.automation import automation_sensor
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines_tests.conftest import days_ago

ROBOTS_ = [f"r{i:03d}" for i in range(5)]
DAYS = [days_ago(3), days_ago(2), days_ago(1)]


def land_episodes(instance, robots, days):
    for robot in robots:
        for day in days:
            instance.report_runless_asset_event(dg.AssetMaterialization("episodes", partition=robot_day_key(robot, day)))


def requested(result) -> dict[str, int]:
    return {r.key.to_user_string(): r.true_subset.size for r in result.results if r.true_subset.size}


def test_new_episodes_request_one_catalog_refresh_and_nothing_downstream():
    defs = load_defs()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, ROBOTS_)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0  # nothing landed yet
        land_episodes(instance, ROBOTS_[:2], DAYS[:1])
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        # Most robot-day partitions of episodes are missing, as in any fleet: the catalog still refreshes,
        # and what reads only the catalog follows in the same run: the lineage index (raw -> episode
        # edges) and the field KPIs. Nothing that trains or evaluates starts.
        assert requested(tick) == {"episode_catalog": 1, "lineage_index": 1, "field_kpis": 1}
        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=tick.cursor)
        assert again.total_requested == 0


def test_a_paused_automation_switched_back_on_launches_one_run_not_a_backlog():
    defs = load_defs()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, ROBOTS_)
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        # Paused: 15 robot-days land, one after another, while no tick runs.
        land_episodes(instance, ROBOTS_, DAYS)
        resumed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
        assert requested(resumed) == {"episode_catalog": 1, "lineage_index": 1, "field_kpis": 1}
        # Switched back on with its state lost (a reset sensor): still at most one refresh.
        reset = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert reset.total_requested <= 3  # the catalog, its lineage index and field KPIs, once


def test_the_automation_sensor_is_on_from_the_first_deploy():
    assert automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = load_defs()
    assert defs.get_sensor_def("flywheel_automation").default_status == dg.DefaultSensorStatus.RUNNING
