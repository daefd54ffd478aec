"""The upload sensor: new robots become partitions, changed robot-days get one run each.

The planning is ``lib/ingest/uploads.py`` (listings in, planned runs out; see there how a local
folder and an S3 bucket are watched). This module maps a plan onto Dagster: run requests (a hot
robot-day runs ``ingest_robot_day``, a late upload to a cold day its month's ``archive_month``),
dynamic partition requests for new robots, the cursor, and the run-key and materialization
lookups the planners are given. A tick lists and stats; it writes nothing to the lake.
"""


import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from flywheel_pipelines.defs.jobs import archive_month, ingest_robot_day
from flywheel_pipelines.defs.partitions import FLEET_START, HOT_START, ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet, layout
from flywheel_pipelines.lib.ingest import uploads
from flywheel_pipelines.lib.storage import Lake, S3Lake, sha256_file

SENSOR_NAME = "raw_log_sensor"
# Dagster's own tags (dagster._core.storage.tags) on every run a sensor launches.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"

# S3 tick limits (see uploads.S3Limits); module constants so an operator or a test can tune them.
LOOKBACK_DAYS = uploads.S3Limits.lookback_days
SWEEP_MAX_KEYS = uploads.S3Limits.sweep_max_keys
SWEEP_MAX_DAYS = uploads.S3Limits.sweep_max_days
LIST_WORKERS = uploads.S3Limits.list_workers
NEW_ROBOTS_PER_TICK = uploads.S3Limits.new_robots_per_tick
MAX_IGNORED = uploads.S3Limits.max_ignored
# Local folder: files changed this close before the watermark are looked at again (uploads.GRACE_NS).
GRACE_NS = uploads.GRACE_NS
FIRST_DAY = FLEET_START.isoformat()
HOT_FIRST_DAY = HOT_START.isoformat()


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _window(today: dt.date | None = None) -> uploads.Window:
    return uploads.Window(first_day=FIRST_DAY, today=today or _utc_today())


def _run_request(run: uploads.PlannedRun) -> dg.RunRequest:
    """One run for one robot-day: its robot x day partition of ``ingest_robot_day`` while the day is
    in the hot window, else the month's ``episode_archive`` partition with the robot-day to ingest
    again (a late upload to a cold day). The run key is the same either way."""
    tags = {"flywheel/robot": run.robot, "flywheel/date": run.day, run.fingerprint_tag: run.fingerprint}
    if run.day >= HOT_FIRST_DAY:
        return dg.RunRequest(run_key=run.run_key, partition_key=robot_day_key(run.robot, run.day),
                             job_name=ingest_robot_day.name, tags=tags)
    return dg.RunRequest(
        run_key=run.run_key,
        partition_key=fleet.month_key(run.day),
        job_name=archive_month.name,
        run_config={"ops": {"episode_archive": {"config": {"reingest": [f"{run.robot}/{run.day}"]}}}},
        tags=tags,
    )


def _plan_local(lake: Lake, cursor: dict, *, known_robots: set[str], already_ingested, ingested_stat=None,
                today: dt.date | None = None) -> uploads.UploadPlan:
    # The grace window and the hash are read when a tick runs, so that they can be tuned (and a
    # test can watch what a tick reads) on this module.
    return uploads.plan_local(lake, cursor, known_robots=known_robots, already_ingested=already_ingested,
                              window=_window(today), ingested_stat=ingested_stat, grace_ns=GRACE_NS,
                              hash_file=sha256_file)


def plan_runs(lake: Lake, cursor: dict, *, known_robots: set[str], already_ingested,
              today: dt.date | None = None) -> tuple[list[dg.RunRequest], list[str], dict, list[str]]:
    """One local-lake tick as (run requests, new robots, next cursor, skipped keys with reasons);
    see ``uploads.plan_local``."""
    plan = _plan_local(lake, cursor, known_robots=known_robots, already_ingested=already_ingested, today=today)
    return [_run_request(r) for r in plan.runs], plan.new_robots, plan.cursor, plan.warnings


def _plan_s3(lake: S3Lake, cursor: dict, *, known_robots: set[str], requested: Callable[[list[str]], set[str]],
             today: dt.date) -> uploads.UploadPlan:
    # The limits are read when a tick runs, so that they can be tuned on this module.
    limits = uploads.S3Limits(lookback_days=LOOKBACK_DAYS, sweep_max_keys=SWEEP_MAX_KEYS, sweep_max_days=SWEEP_MAX_DAYS,
                              list_workers=LIST_WORKERS, new_robots_per_tick=NEW_ROBOTS_PER_TICK, max_ignored=MAX_IGNORED)
    return uploads.plan_s3(lake, cursor, known_robots=known_robots, requested=requested, window=_window(today),
                           limits=limits)


@dataclass(frozen=True)
class TickPlan:
    """What one S3 tick does: runs to request, robots to register, the next cursor, and what to tell the operator."""

    run_requests: list[dg.RunRequest]
    new_robots: list[str]
    cursor: dict
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def plan_s3_runs(lake: S3Lake, cursor: dict, *, known_robots: set[str],
                 requested: Callable[[list[str]], set[str]], today: dt.date) -> TickPlan:
    """One S3 tick with this module's limits, as run requests; see ``uploads.plan_s3``."""
    plan = _plan_s3(lake, cursor, known_robots=known_robots, requested=requested, today=today)
    return TickPlan([_run_request(r) for r in plan.runs], plan.new_robots, plan.cursor, plan.warnings, plan.stats)


# --- the sensor -----------------------------------------------------------------------------------


# Partitions per materializations query when the local planner checks what was ingested.
INGESTED_BATCH = 200


def _ingested_fingerprint(instance: dg.DagsterInstance, store: Lake, field: str = "raw_fingerprint"):
    """[(robot, day)] -> {(robot, day): the ``field`` (raw fingerprint, or with "raw_stat_fingerprint"
    the stat of the files it hashed) its last log_manifest recorded, or None}.

    Hot robot-days: from the instance, one paged query per INGESTED_BATCH partitions (not one
    per robot-day: at 1,000 new robot-days in a tick, single queries cost ~65 s on PostgreSQL).
    Cold days have no partition: their manifest in the lake says what was ingested (its raw
    fingerprint; it records no stat, so a touched cold day is hashed).
    """

    def lookup(robot_days: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        found: dict[tuple[str, str], str | None] = {}
        hot = []
        for robot, day in robot_days:
            if day < HOT_FIRST_DAY:
                key = layout.manifest_key(robot, day)
                cold = field == "raw_fingerprint" and store.exists(key)
                found[(robot, day)] = store.read_json(key).get(field) if cold else None
            else:
                hot.append((robot, day))
        for start in range(0, len(hot), INGESTED_BATCH):
            wanted = {robot_day_key(r, d): (r, d) for r, d in hot[start:start + INGESTED_BATCH]}
            records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey("log_manifest"), asset_partitions=list(wanted))
            cursor = None
            while True:  # newest first: the first record seen for a partition is its latest
                page = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor, ascending=False)
                for record in page.records:
                    rd = wanted.get(record.partition_key)
                    if rd is not None and rd not in found:
                        meta = record.asset_materialization.metadata
                        found[rd] = meta[field].value if field in meta else None
                if not page.has_more or all(rd in found for rd in wanted.values()):
                    break
                cursor = page.cursor
        return found

    return lookup


# Run keys per runs query. The daemon looks its run keys up one query each (an IN over very many tag
# values planned badly on big PostgreSQL run tables); a sweep checks hundreds per tick, and 250
# single queries take ~0.4 s on SQLite where IN-batches of this size take ~20 ms.
RUN_KEY_BATCH = 100


def _requested_before(instance: dg.DagsterInstance) -> Callable[[list[str]], set[str]]:
    def requested(run_keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(run_keys), RUN_KEY_BATCH):
            runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_keys[start:start + RUN_KEY_BATCH]}))
            found.update(run.tags[RUN_KEY_TAG] for run in runs if run.tags.get(SENSOR_NAME_TAG) == SENSOR_NAME)
        return found

    return requested


@dg.sensor(name=SENSOR_NAME, jobs=[ingest_robot_day, archive_month], minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
def raw_log_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    """Watch raw/ for complete uploads; register new robots and request one run per robot-day
    whose content changed (a re-upload of identical bytes requests nothing). Days in the hot window
    run ``ingest_robot_day``; late uploads to older days run their month's ``archive_month``."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(ROBOTS.name))
    store = lake.lake()
    if isinstance(store, S3Lake):
        plan = _plan_s3(store, cursor, known_robots=known, requested=_requested_before(context.instance),
                        today=_utc_today())
        context.log.info("S3 tick: " + ", ".join(f"{k}={v}" for k, v in plan.stats.items()))
    else:
        plan = _plan_local(store, cursor, known_robots=known,
                           already_ingested=_ingested_fingerprint(context.instance, store),
                           ingested_stat=_ingested_fingerprint(context.instance, store, "raw_stat_fingerprint"))
    for reason in plan.warnings:
        context.log.warning(f"ignored upload: {reason}")
    return dg.SensorResult(
        run_requests=[_run_request(r) for r in plan.runs],
        dynamic_partitions_requests=[ROBOTS.build_add_request(plan.new_robots)] if plan.new_robots else [],
        cursor=json.dumps(plan.cursor, separators=(",", ":")),
    )
