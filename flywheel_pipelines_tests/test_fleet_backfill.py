"""Fleet backfills of one day: launched through Dagster's GraphQL API (a real `dagster-webserver` over
a temporary instance, our code location loaded by it as in a deployment), with exactly the robots
that had joined by that day.

Days are relative to today: the hot window moves with the calendar.
"""

import datetime as dt

import dagster as dg
import pytest
from click.testing import CliRunner

from flywheel_pipelines.cli import main
from flywheel_pipelines.defs.partitions import HOT_START, ROBOT_DAY, ROBOTS
from flywheel_pipelines.lib import backfill, fleet
from flywheel_pipelines.lib.storage import open_lake
from flywheel_pipelines_tests.ui.server import webserver

TODAY = dt.datetime.now(dt.UTC).date()


def ago(days: int) -> str:
    return (TODAY - dt.timedelta(days=days)).isoformat()


# robot -> join day. r003 joins after the backfilled day; r005 joined but is not registered.
JOINED = {"r001": ago(20), "r002": ago(1), "r003": ago(0), "r005": ago(5)}
REGISTERED = ["r001", "r002", "r003", "r004"]


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory):
    """A temporary Dagster instance with robots registered, a lake with their join days, and a
    `dagster-webserver` on that instance (started once for the module: it takes seconds)."""
    home = tmp_path_factory.mktemp("flywheel_home")
    (home / "dagster_home").mkdir()
    lake_root = tmp_path_factory.mktemp("lake")
    lake = open_lake(str(lake_root))
    for robot, day in JOINED.items():
        fleet.record_join(lake, robot, day)
    with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
        instance.add_dynamic_partitions(ROBOTS.name, REGISTERED)
        with webserver(home, home / "webserver.log") as server:
            yield {"instance": instance, "execute": backfill.http_execute(server.url), "url": server.url,
                   "lake": lake, "lake_root": str(lake_root), "home": str(home / "dagster_home")}


def launch(execute, day, robots, **kwargs):
    return backfill.launch_day_backfill(execute, day, robots, hot_start=HOT_START, **kwargs)


def test_one_day_backfill_has_exactly_the_robots_that_had_joined_by_then(fleet_env):
    instance, execute, lake = fleet_env["instance"], fleet_env["execute"], fleet_env["lake"]
    day = ago(1)
    robots = backfill.day_robots(lake, day, instance.get_dynamic_partitions(ROBOTS.name))
    assert robots == ["r001", "r002"]  # r003 joins later, r004 never uploaded, r005 is not registered

    backfill_id = launch(execute, day, robots)

    created = instance.get_backfill(backfill_id)
    assert created is not None and not created.is_asset_backfill
    expected = [str(dg.MultiPartitionKey({"date": day, "robot": r})) for r in ("r001", "r002")]
    assert expected == [f"{day}|r001", f"{day}|r002"]
    assert sorted(created.partition_names) == expected
    origin = created.partition_set_origin
    assert origin.partition_set_name == "ingest_robot_day_partition_set"
    assert origin.repository_origin.code_location_origin.location_name == "flywheel_pipelines"
    assert created.tags["flywheel/date"] == day
    # Real partitions of the job: the keys Dagster validated are ROBOT_DAY keys.
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        assert all(ROBOT_DAY.has_partition_key(key) for key in created.partition_names)


def test_an_earlier_day_leaves_out_robots_that_joined_after_it(fleet_env):
    instance, execute, lake = fleet_env["instance"], fleet_env["execute"], fleet_env["lake"]
    day = ago(10)
    robots = backfill.day_robots(lake, day, instance.get_dynamic_partitions(ROBOTS.name))
    assert robots == ["r001"]
    created = instance.get_backfill(launch(execute, day, robots))
    assert list(created.partition_names) == [f"{day}|r001"]


def test_cold_day_is_refused_and_pointed_at_the_month_archive(fleet_env):
    cold = (HOT_START - dt.timedelta(days=1)).isoformat()
    if cold < fleet.fleet_start().isoformat():
        pytest.skip("the hot window starts on the fleet's first day: there is no cold day")
    before = len(fleet_env["instance"].get_backfills())
    with pytest.raises(backfill.BackfillError, match="cold day") as exc:
        launch(fleet_env["execute"], cold, ["r001"])
    message = str(exc.value)
    assert cold in message and "archive_month" in message and fleet.month_key(cold) in message
    assert len(fleet_env["instance"].get_backfills()) == before


@pytest.mark.parametrize("bad", ["2026-02-30", "yesterday", "2026-1-05"])
def test_invalid_day_is_refused(fleet_env, bad):
    with pytest.raises(backfill.BackfillError, match="expected YYYY-MM-DD") as exc:
        launch(fleet_env["execute"], bad, ["r001"])
    assert repr(bad) in str(exc.value)


def test_future_day_and_no_robots_are_refused(fleet_env):
    with pytest.raises(backfill.BackfillError, match="future"):
        launch(fleet_env["execute"], (TODAY + dt.timedelta(days=2)).isoformat(), ["r001"])
    with pytest.raises(backfill.BackfillError, match=f"no registered robot had joined by {ago(2)}"):
        launch(fleet_env["execute"], ago(2), [])


def test_dagster_errors_name_the_day(fleet_env):
    day = ago(1)
    with pytest.raises(backfill.BackfillError, match=f"backfill of {day} .*PartitionKeysNotFoundError.*r005"):
        launch(fleet_env["execute"], day, ["r001", "r005"])  # r005: not a partition
    with pytest.raises(backfill.BackfillError,
                       match=f"backfill of {day} .*no partitioned job ingest_robot_day in code location 'elsewhere' "
                             r"\(the server has: flywheel_pipelines"):
        launch(fleet_env["execute"], day, ["r001"], location="elsewhere")


def test_registered_robots_come_from_the_graphql_api(fleet_env):
    assert backfill.registered_robots(fleet_env["execute"]) == REGISTERED


@pytest.fixture
def graphql_server(fleet_env):
    """The webserver's base URL (its GraphQL API is <url>/graphql)."""
    return fleet_env["url"]


def test_cli_launches_the_backfill_over_http(fleet_env, graphql_server, monkeypatch):
    monkeypatch.delenv(backfill.LOCATION_ENV, raising=False)
    day = ago(1)
    result = CliRunner().invoke(main, ["fleet", "backfill", "--day", day, "--url", graphql_server,
                                       "--lake", fleet_env["lake_root"]])
    assert result.exit_code == 0, result.output
    backfill_id = result.output.split()[1].rstrip(":")
    created = fleet_env["instance"].get_backfill(backfill_id)
    assert sorted(created.partition_names) == [f"{day}|r001", f"{day}|r002"]
    assert f"/runs/b/{backfill_id}" in result.output


def test_cli_launches_in_the_named_code_location(fleet_env, graphql_server, monkeypatch):
    """--location, else $FLYWHEEL_CODE_LOCATION: a location the server does not have is refused with an
    error naming it, and nothing is launched."""
    day = ago(1)
    args = ["fleet", "backfill", "--day", day, "--url", graphql_server, "--lake", fleet_env["lake_root"]]
    before = len(fleet_env["instance"].get_backfills())
    monkeypatch.setenv(backfill.LOCATION_ENV, "flywheel-pipelines")  # not the name this server loaded
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "no partitioned job ingest_robot_day in code location 'flywheel-pipelines'" in result.output
    result = CliRunner().invoke(main, [*args, "--location", "elsewhere"])
    assert result.exit_code != 0 and "code location 'elsewhere'" in result.output
    assert len(fleet_env["instance"].get_backfills()) == before
    # --location wins over the environment.
    result = CliRunner().invoke(main, [*args, "--location", "flywheel_pipelines"])
    assert result.exit_code == 0, result.output
    created = fleet_env["instance"].get_backfill(result.output.split()[1].rstrip(":"))
    assert created.partition_set_origin.repository_origin.code_location_origin.location_name == "flywheel_pipelines"
    assert backfill.default_location({}) == "flywheel_pipelines"
    assert backfill.default_location({backfill.LOCATION_ENV: "flywheel-pipelines"}) == "flywheel-pipelines"


def test_cli_dry_run_prints_the_robots_and_launches_nothing(fleet_env, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", fleet_env["home"])
    before = len(fleet_env["instance"].get_backfills())
    day = ago(1)
    result = CliRunner().invoke(main, ["fleet", "backfill", "--day", day, "--robots-from", "instance",
                                       "--lake", fleet_env["lake_root"], "--dry-run",
                                       "--url", "http://127.0.0.1:9"])  # nothing listens there
    assert result.exit_code == 0, result.output
    assert f"{day}|r001" in result.output and f"{day}|r002" in result.output
    assert "r003" not in result.output and "r005" not in result.output
    assert len(fleet_env["instance"].get_backfills()) == before


def test_cli_refuses_a_cold_day_and_an_unreachable_server(fleet_env):
    cold = (HOT_START - dt.timedelta(days=3)).isoformat()
    if cold < fleet.fleet_start().isoformat():
        pytest.skip("the hot window starts on the fleet's first day: there is no cold day")
    result = CliRunner().invoke(main, ["fleet", "backfill", "--day", cold, "--lake", fleet_env["lake_root"]])
    assert result.exit_code != 0 and "archive_month" in result.output
    result = CliRunner().invoke(main, ["fleet", "backfill", "--day", ago(1), "--url", "http://127.0.0.1:9",
                                       "--lake", fleet_env["lake_root"]])
    assert result.exit_code != 0 and "cannot reach the Dagster webserver" in result.output
