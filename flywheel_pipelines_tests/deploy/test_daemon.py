"""The production instance with its daemon: the upload sensor, a restart, the nightly schedule and
the concurrency pools, through `deploy/start_daemon.sh` on PostgreSQL (a real server, real runs).

One scenario, because every step needs the daemon and a daemon start (code server included) is
the expensive part on 2 cores:

1. session 1: one robot-day in the lake -> the sensor's first tick requests an ingest run -> the
   queue launches it -> log_manifest is materialized for that partition.
2. the daemon stops; two robot-days arrive; the daemon was last up before 02:00 UTC (as after an
   outage over the nightly slot).
3. session 2: the next sensor tick requests only the two new robot-days (the cursor and the
   ingested fingerprints come back from PostgreSQL); the ingest pool (limit 1) runs them one
   after the other; the scheduler fires the missed 02:00 UTC nightly_retrain tick, and its run
   stays queued because the training pool's limit is 0.
"""

import datetime as dt
import json

import dagster as dg
import pytest

# Instigator state and ticks have no public API; the daemon itself reads and writes these records.
from dagster._core.scheduler.instigation import InstigatorType, ScheduleInstigatorData, TickStatus

from flywheel_pipelines.defs.partitions import robot_day_key
from flywheel_pipelines.lib.sim.fleet import simulate_robot_day
from flywheel_pipelines.lib.sim.robot import sample_profile
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.deploy.daemon import Daemon

# Yesterday: a date partition exists whatever the clock says, and the sensor takes no future day.
DAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
IN_PROGRESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING}
# The daemon's first tick comes once its code server is up; a run then needs a worker process.
STARTUP_S = 90
RUN_S = 120


def upload(lake: LocalLake, robot: str, index: int) -> None:
    simulate_robot_day(lake, sample_profile(robot, seed=0, index=index), DAY, episodes=1, seed=0)


def state_named(instance: dg.DagsterInstance, kind: InstigatorType, name: str):
    return next((s for s in instance.all_instigator_state(instigator_type=kind) if s.instigator_name == name), None)


def ticks(instance: dg.DagsterInstance, state) -> list:
    return sorted(instance.get_ticks(state.instigator_origin_id, state.selector_id), key=lambda t: t.timestamp)


def ingest_runs(instance: dg.DagsterInstance) -> dict[str, list]:
    """Ingest run records by partition key."""
    by_partition: dict[str, list] = {}
    for record in instance.get_run_records(dg.RunsFilter(job_name="ingest_robot_day")):
        by_partition.setdefault(record.dagster_run.tags["dagster/partition"], []).append(record)
    return by_partition


def manifest_recorded(instance: dg.DagsterInstance, robot: str) -> bool:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("log_manifest"), asset_partitions=[robot_day_key(robot, DAY)]),
        limit=1,
    ).records
    return bool(records)


def finished(instance: dg.DagsterInstance, partitions: list[str]):
    runs = ingest_runs(instance)
    records = [r for p in partitions for r in runs.get(p, [])]
    if len(records) < len(partitions) or any(not r.dagster_run.is_finished for r in records):
        return None
    return records


def last_0200_utc(now: dt.datetime) -> dt.datetime:
    slot = now.replace(hour=2, minute=0, second=0, microsecond=0)
    return slot if slot <= now else slot - dt.timedelta(days=1)


@pytest.mark.slow
def test_sensor_restart_schedule_and_pools_through_the_daemon(deployment, tmp_path):
    lake = LocalLake(deployment.lake_root)
    env = {**deployment.env, "FLYWHEEL_POOL_LIMIT_INGEST": "1", "FLYWHEEL_POOL_LIMIT_TRAINING": "0"}
    first = str(robot_day_key("r301", DAY))
    new = [str(robot_day_key(r, DAY)) for r in ("r302", "r303")]
    upload(lake, "r301", 0)

    with dg.DagsterInstance.get() as instance:
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            # --- session 1: the sensor's tick launches an ingest run that materializes log_manifest
            daemon.start()
            [run] = daemon.wait_for("the sensor's run for the first robot-day",
                                    lambda: ingest_runs(instance).get(first), STARTUP_S)
            assert run.dagster_run.tags["flywheel/robot"] == "r301"
            [run] = daemon.wait_for("the first ingest run to finish", lambda: finished(instance, [first]), RUN_S)
            assert run.dagster_run.status == dg.DagsterRunStatus.SUCCESS, daemon.tail()
            assert manifest_recorded(instance, "r301")
            assert instance.get_dynamic_partitions("robots") == ["r301"]
            nightly = daemon.wait_for("the nightly schedule's state",
                                      lambda: state_named(instance, InstigatorType.SCHEDULE, "nightly_retrain_schedule"), 30)
            daemon.stop()

            sensor = state_named(instance, InstigatorType.SENSOR, "raw_log_sensor")
            # The cursor is in PostgreSQL: the watermark of the one file seen so far.
            watermark = json.loads(sensor.instigator_data.cursor)["watermark_ns"]
            assert watermark == max(o.mtime_ns for o in lake.list("raw/"))
            ticks_before = {t.tick_id for t in ticks(instance, sensor)}

            # --- between sessions: two new robot-days; the daemon was last up before 02:00 UTC
            upload(lake, "r302", 1)
            upload(lake, "r303", 2)
            slot = last_0200_utc(dt.datetime.now(dt.UTC))
            before = (slot - dt.timedelta(minutes=1)).timestamp()
            assert not ticks(instance, nightly), "the nightly fired during session 1"
            instance.update_instigator_state(nightly.with_data(
                ScheduleInstigatorData(nightly.instigator_data.cron_schedule, start_timestamp=before,
                                       last_iteration_timestamp=before)))

            # --- session 2
            daemon.start()
            records = daemon.wait_for("the two new robot-days' ingest runs to finish",
                                      lambda: finished(instance, new), STARTUP_S + 2 * RUN_S)
            assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), daemon.tail()
            assert all(manifest_recorded(instance, r) for r in ("r302", "r303"))

            # (c) the cursor came back from PostgreSQL: the old robot-day was neither re-requested nor re-run
            runs = ingest_runs(instance)
            assert sorted(runs) == sorted([first, *new])
            assert all(len(runs[p]) == 1 for p in runs), {p: len(r) for p, r in runs.items()}
            sensor = state_named(instance, InstigatorType.SENSOR, "raw_log_sensor")
            after = [t for t in ticks(instance, sensor) if t.tick_id not in ticks_before]
            requested = [t for t in after if t.run_ids]
            assert requested, "no sensor tick in session 2 launched a run"
            assert requested[0].cursor and json.loads(requested[0].cursor)["watermark_ns"] > watermark
            assert all(not key.startswith("r301|") for t in after for key in t.run_keys)
            assert {key.split("|")[0] for t in after for key in t.run_keys} == {"r302", "r303"}
            assert sorted(instance.get_dynamic_partitions("robots")) == ["r301", "r302", "r303"]

            # (e) the ingest pool (limit 1) ran the two robot-days one after the other
            a, b = sorted(records, key=lambda r: r.start_time)
            assert a.end_time <= b.start_time, f"ingest runs overlapped: {a.start_time}-{a.end_time} / {b.start_time}"

            # (d) the scheduler fired the missed 02:00 UTC tick of the real nightly schedule ...
            [tick] = daemon.wait_for("the nightly tick", lambda: ticks(instance, nightly), 90)
            fired = dt.datetime.fromtimestamp(tick.timestamp, dt.UTC)
            assert fired >= slot and fired.time() == dt.time(2, 0), fired
            assert tick.status == TickStatus.SUCCESS and len(tick.run_ids) == 1, tick
            scheduled = instance.get_run_by_id(tick.run_ids[0])
            assert scheduled.job_name == "nightly_retrain"
            assert scheduled.tags["dagster/schedule_name"] == "nightly_retrain_schedule"
            # ... and the training pool (limit 0) holds its run in the queue while ingest runs went through.
            assert scheduled.status == dg.DagsterRunStatus.QUEUED
            limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
            assert limits["training"] == 0 and limits["ingest"] == 1
        finally:
            daemon.stop()
