"""The upload sensor on an S3 lake (a real SeaweedFS), evaluated tick by tick with build_sensor_context.

Robots upload with their own tools (plain PUTs, overwrites included); ``launch`` records a tick's
run requests the way the daemon does (a run carrying the run key and the sensor's name), so that
the next tick sees what was already requested.
"""

import datetime as dt
import json
import uuid

import dagster as dg
import pytest

from flywheel_pipelines.defs.ingest import sensors
from flywheel_pipelines.defs.ingest.assets import log_manifest, raw_fleet_logs
from flywheel_pipelines.defs.ingest.sensors import RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG, plan_s3_runs, raw_log_sensor
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import S3Lake
from flywheel_pipelines_tests.infra.conftest import BUCKET

TODAY = dt.datetime.now(dt.UTC).date()
DAYS = {n: (TODAY - dt.timedelta(days=n)).isoformat() for n in range(40)}


@pytest.fixture
def resource(seaweed, s3_prefix) -> LakeResource:
    return LakeResource(root=f"s3://{BUCKET}/{s3_prefix}", endpoint_url=seaweed.endpoint_url, region_name=seaweed.region,
                        aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key,
                        allow_http=True)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def put(s3_client, s3_prefix):
    """A robot's uploader: a plain PUT of ``body`` to raw/robot=<robot>/date=<day>/<name>."""

    def put(robot: str, day: str, name: str, body: bytes = b"log") -> None:
        s3_client.put_object(Bucket=BUCKET, Key=f"{s3_prefix}/raw/robot={robot}/date={day}/{name}", Body=body)

    return put


def tick(instance, resource, cursor=None) -> dg.SensorResult:
    return raw_log_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": resource}))


def launch(instance, result: dg.SensorResult) -> None:
    """What the daemon does with a tick's result: add the partitions, create one run per new run key."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in result.run_requests:
        tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME,
                "dagster/partition": str(request.partition_key)}
        instance.add_run(dg.DagsterRun(job_name="ingest_robot_day", run_id=str(uuid.uuid4()), tags=tags,
                                       status=dg.DagsterRunStatus.NOT_STARTED))


def partitions(result) -> list[str]:
    return sorted(str(r.partition_key) for r in result.run_requests)


def pk(robot: str, day: str) -> str:
    return str(robot_day_key(robot, day))


def test_new_robot_registers_and_every_robot_day_gets_a_run(instance, resource, put):
    put("r1", DAYS[0], "s-080000.mcap")
    put("r1", DAYS[0], "s-090000.mcap")
    put("r1", DAYS[1], "s-230000.mcap")
    put("r1", DAYS[20], "s-100000.mcap")  # a backlog: all of a new robot is new
    result = tick(instance, resource)
    assert partitions(result) == sorted(pk("r1", DAYS[n]) for n in (0, 1, 20))
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["r1"]]
    for request in result.run_requests:
        robot, day, fingerprint = request.run_key.split("|")
        assert (robot, day) == (request.tags["flywheel/robot"], request.tags["flywheel/date"])
        assert fingerprint == request.tags["flywheel/raw_etag_fingerprint"] and len(fingerprint) == 16
    cursor = json.loads(result.cursor)
    assert cursor["v"] == 2 and set(cursor["robots"]) == {"r1"}


def test_identical_reupload_requests_nothing_and_a_changed_or_added_file_one_run(instance, resource, put):
    put("r1", DAYS[0], "a.mcap", b"v1")
    put("r1", DAYS[1], "b.mcap", b"v1")
    first = tick(instance, resource)
    launch(instance, first)
    # Same bytes again (a robot retrying its upload): same ETag, nothing to do.
    put("r1", DAYS[0], "a.mcap", b"v1")
    again = tick(instance, resource, first.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    # The cursor may be lost: the same content still maps to run keys that already have runs.
    assert tick(instance, resource, None).run_requests == []
    # Changed bytes at the same key: one run for that robot-day, with a new key.
    put("r1", DAYS[0], "a.mcap", b"v2")
    changed = tick(instance, resource, again.cursor)
    assert partitions(changed) == [pk("r1", DAYS[0])]
    assert changed.run_requests[0].run_key not in {r.run_key for r in first.run_requests}
    launch(instance, changed)
    # A late file for yesterday, sorting before what the robot uploaded since: one run for yesterday.
    put("r1", DAYS[1], "a-late.mcap", b"v1")
    late = tick(instance, resource, changed.cursor)
    assert partitions(late) == [pk("r1", DAYS[1])]
    launch(instance, late)
    assert tick(instance, resource, late.cursor).run_requests == []


def test_a_retried_tick_derives_the_same_run_keys(instance, resource, put):
    put("r1", DAYS[0], "a.mcap")
    put("r2", DAYS[0], "a.mcap")
    first = tick(instance, resource)
    # The daemon died before storing the cursor: the same tick again asks for the same keys (Dagster
    # starts one run per key), and once the runs exist, for nothing.
    retried = tick(instance, resource)
    assert [r.run_key for r in retried.run_requests] == [r.run_key for r in first.run_requests]
    assert len(first.run_requests) == 2
    launch(instance, retried)
    assert tick(instance, resource).run_requests == []
    assert tick(instance, resource, first.cursor).run_requests == []


def test_many_new_robots_are_listed_a_few_per_tick(instance, resource, put, monkeypatch):
    monkeypatch.setattr(sensors, "NEW_ROBOTS_PER_TICK", 2)
    robots = [f"r{n}" for n in range(5)]
    for robot in robots:
        put(robot, DAYS[0], "a.mcap")
    cursor, per_tick = None, []
    for _ in range(4):
        result = tick(instance, resource, cursor)
        launch(instance, result)
        per_tick.append(partitions(result))
        cursor = result.cursor
    assert [len(p) for p in per_tick] == [2, 2, 1, 0]
    assert sorted(sum(per_tick, [])) == sorted(pk(r, DAYS[0]) for r in robots)
    assert sorted(instance.get_dynamic_partitions(ROBOTS.name)) == robots


def test_late_upload_for_an_old_day_is_found_by_the_sweep(instance, resource, put, monkeypatch):
    monkeypatch.setattr(sensors, "SWEEP_MAX_KEYS", 4)
    for day in range(5, 15):
        put("r1", DAYS[day], "a.mcap")
        put("r1", DAYS[day], "b.mcap")
    result = tick(instance, resource)
    assert len(result.run_requests) == 10
    launch(instance, result)
    cursor, requested = result.cursor, []
    put("r1", DAYS[9], "0-late.mcap")  # sorts before everything else of that day
    # 20 keys, 4 per tick (whole robot-days): one full sweep within 6 ticks; run two more passes.
    for _ in range(18):
        result = tick(instance, resource, cursor)
        launch(instance, result)
        requested += partitions(result)
        cursor = result.cursor
    assert requested == [pk("r1", DAYS[9])]


def test_a_tick_costs_what_is_new_not_what_the_bucket_holds(seaweed, s3_prefix, instance, resource, put, monkeypatch):
    """S3 requests per steady-state tick stay the same when the bucket's history doubles."""
    monkeypatch.setattr(sensors, "SWEEP_MAX_KEYS", 50)
    client = seaweed.client()
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    lake, robots = S3Lake(client, BUCKET, s3_prefix), ["r1", "r2", "r3"]

    def fill(days):
        for robot in robots:
            for day in days:
                for n in range(5):
                    put(robot, DAYS[day], f"{n}.mcap")

    def steady_tick(cursor):
        calls.clear()
        plan = plan_s3_runs(lake, cursor, known_robots=set(robots), requested=lambda keys: set(keys), today=TODAY)
        return plan, list(calls)

    fill(range(0, 20))
    cursor = json.loads(tick(instance, resource).cursor)
    _, small = steady_tick(cursor)
    fill(range(20, 40))  # twice the history
    plan, large = steady_tick(cursor)
    # one Delimiter listing of the robots, one window listing per robot, one page of the sweep
    assert small == large == ["ListObjectsV2"] * (1 + len(robots) + 1)
    assert plan.run_requests == [] and plan.stats["robots_changed"] == 0


def test_bad_keys_are_reported_once_and_skipped(instance, resource, put, s3_client, s3_prefix):
    put("r1", DAYS[0], "ok.mcap")
    put("r1", "2026-13-01", "bad-date.mcap")
    put("r1", (TODAY + dt.timedelta(days=3)).isoformat(), "future.mcap")
    for key in ["raw/robot=UPPER/date=2026-03-02/x.mcap", "raw/junk.txt", "raw/robot=r1/date=2026-03-02/a/b/c.mcap"]:
        s3_client.put_object(Bucket=BUCKET, Key=f"{s3_prefix}/{key}", Body=b"x")
    lake = S3Lake(s3_client, BUCKET, s3_prefix)
    plan = plan_s3_runs(lake, {}, known_robots=set(), requested=lambda keys: set(), today=TODAY)
    assert partitions(plan) == [pk("r1", DAYS[0])]
    text = "\n".join(plan.warnings)
    for expected in ["robot=UPPER", "raw/junk.txt", "2026-13-01", "in the future", "a/b/c.mcap"]:
        assert expected in text, (expected, text)
    again = plan_s3_runs(lake, plan.cursor, known_robots={"r1"}, requested=lambda keys: set(keys), today=TODAY)
    assert again.warnings == []  # the invalid robot folder and the loose key are not repeated every tick
    assert partitions(tick(instance, resource)) == [pk("r1", DAYS[0])]  # the sensor itself does not fail on them


def test_sensor_run_ingests_from_s3_and_the_next_tick_is_quiet(instance, resource):
    """Real MCAP logs uploaded through put_raw; the requested run materializes log_manifest from S3."""
    lake = resource.lake()
    simulate_robot_day(lake, sample_profile("r201", seed=0), DAYS[1], episodes=2, seed=0)
    result = tick(instance, resource)
    [request] = result.run_requests
    launch(instance, result)
    tags = {**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME}
    run = dg.materialize([raw_fleet_logs, log_manifest], selection=[log_manifest], instance=instance,
                         resources={"lake": resource}, partition_key=request.partition_key, tags=tags)
    assert run.success
    manifest = lake.read_json(f"manifests/robot=r201/date={DAYS[1]}/manifest.json")
    assert [f["verdict"] for f in manifest["files"]] == ["ok"]
    assert tick(instance, resource, result.cursor).run_requests == []
    assert tick(instance, resource, None).run_requests == []
    assert ROBOTS.name in {r.partitions_def_name for r in result.dynamic_partitions_requests}
