"""The upload sensor: new robots become partitions, changed robot-days get one run each."""


import json
from collections import defaultdict

import dagster as dg

from flywheel_pipelines.defs.jobs import ingest_robot_day
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import ids
from flywheel_pipelines.lib.storage import RAW_PREFIX, Lake, ObjectInfo, raw_fingerprint, sha256_file

# Files modified this close to the watermark are looked at again: mtimes are not strictly
# ordered with the sensor's listing, and the run key makes a second look free.
GRACE_NS = 5_000_000_000


def plan_runs(lake: Lake, cursor: dict, *, known_robots: set[str], already_ingested) -> tuple[list, list[str], dict, list[str]]:
    """What one tick should do. Pure apart from reading the lake, so it is table-testable.

    Args:
        lake: the lake to list.
        cursor: {"watermark_ns": int} from the last tick.
        known_robots: robots already registered as partitions.
        already_ingested: (robot, day) -> raw fingerprint of the last log_manifest, or None.

    Returns:
        (run requests, new robots, next cursor, skipped keys with reasons)
    """
    watermark = int(cursor.get("watermark_ns", 0))
    objects = lake.list(RAW_PREFIX)
    touched: set[tuple[str, str]] = set()
    skipped = []
    by_partition: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    for obj in objects:
        try:
            robot, day, _ = ids.parse_raw_key(obj.key)
        except ids.InvalidIdentifier as exc:
            if obj.mtime_ns >= watermark - GRACE_NS:
                skipped.append(str(exc))
            continue
        by_partition[(robot, day)].append(obj)
        if obj.mtime_ns >= watermark - GRACE_NS:
            touched.add((robot, day))
    requests, new_robots = [], set()
    for robot, day in sorted(touched):
        with_sha = []
        for obj in by_partition[(robot, day)]:
            with lake.local_path(obj.key) as path:
                with_sha.append((obj.key, sha256_file(path)))
        fingerprint = raw_fingerprint(with_sha)
        if already_ingested(robot, day) == fingerprint:
            continue
        if robot not in known_robots:
            new_robots.add(robot)
        requests.append(
            dg.RunRequest(
                run_key=f"{robot}|{day}|{fingerprint}",
                partition_key=robot_day_key(robot, day),
                tags={"flywheel/robot": robot, "flywheel/date": day, "flywheel/raw_fingerprint": fingerprint},
            )
        )
    next_watermark = max([watermark] + [o.mtime_ns for o in objects])
    return requests, sorted(new_robots), {"watermark_ns": next_watermark}, skipped


def _ingested_fingerprint(instance: dg.DagsterInstance):
    def lookup(robot: str, day: str) -> str | None:
        key = robot_day_key(robot, day)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("log_manifest"), asset_partitions=[key]), limit=1
        ).records
        if not records:
            return None
        meta = records[0].asset_materialization.metadata
        return meta["raw_fingerprint"].value if "raw_fingerprint" in meta else None

    return lookup


@dg.sensor(job=ingest_robot_day, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def raw_log_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    """Watch raw/ for complete uploads; register new robots and request one run per robot-day
    whose content changed (a re-upload of identical bytes requests nothing)."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(ROBOTS.name))
    requests, new_robots, next_cursor, skipped = plan_runs(
        lake.lake(), cursor, known_robots=known, already_ingested=_ingested_fingerprint(context.instance)
    )
    for reason in skipped:
        context.log.warning(f"ignored upload: {reason}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[ROBOTS.build_add_request(new_robots)] if new_robots else [],
        cursor=json.dumps(next_cursor),
    )
