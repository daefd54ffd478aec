"""The upload sensor: new robots become partitions, changed robot-days get one run each.

One sensor; how it finds what changed depends on the lake:

- a local folder (``plan_runs``): walk ``raw/`` and hash the robot-days with a file changed
  since the cursor's watermark: changed is max(mtime, ctime), and the ctime is the kernel's (set
  when a file is created, renamed or linked into place), so an upload whose mtime was preserved
  (rsync -a, cp -p, tar) or renamed into place after a later upload is still seen. A tick costs
  one walk with one lstat per file (plus one per bag folder); only changed robot-days are hashed.
- S3 (``plan_s3_runs``): a tick must cost what was uploaded, not what the bucket holds (listing a
  whole prefix every tick, as dagster-aws's ``get_objects`` does, outgrows the 60 s tick limit),
  so it lists ordered key ranges only. See ``plan_s3_runs``.

Either way a run's key is ``robot|day|fingerprint``: a retried tick or a restart re-derives the
same key (Dagster starts one run per key), an identical re-upload derives the same key (nothing
new), and a changed or late file derives a new one (one new run for its robot-day).
"""


import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg

from flywheel_pipelines.defs.ingest.assets import manifest_key
from flywheel_pipelines.defs.jobs import archive_month, ingest_robot_day
from flywheel_pipelines.defs.partitions import FLEET_START, HOT_START, ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet, ids
from flywheel_pipelines.lib.storage import RAW_PREFIX, Lake, LocalLake, ObjectInfo, S3Lake, raw_fingerprint, sha256_file

SENSOR_NAME = "raw_log_sensor"
# Dagster's own tags (dagster._core.storage.tags) on every run a sensor launches.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"

# Local folder: files modified this close to the watermark are looked at again: mtimes are not
# strictly ordered with the sensor's listing, and the run key makes a second look free.
GRACE_NS = 5_000_000_000

# S3: every tick re-lists each robot's uploads dated today and the LOOKBACK_DAYS before (uploads
# after midnight of the previous day's last session are the common "late" case).
LOOKBACK_DAYS = 2
# S3: the slow sweep that finds uploads dated before that window reads this much per tick.
SWEEP_MAX_KEYS = 5_000
SWEEP_MAX_DAYS = 1_000
# S3: robots listed in parallel (below botocore's default pool of 10 connections).
LIST_WORKERS = 8
# S3: new robots listed whole per tick; more wait for the next tick, so that a first tick over a
# bucket with history (or after the robot partitions were reset) stays a bounded amount of work.
NEW_ROBOTS_PER_TICK = 25
# S3: invalid robot folders are warned about once; the cursor remembers at most this many.
MAX_IGNORED = 100
FIRST_DAY = FLEET_START.isoformat()
HOT_FIRST_DAY = HOT_START.isoformat()


def _outside_partitions(day: str, today: dt.date) -> str | None:
    """Why ``day`` has no partition, robot x day or month (before the fleet start, or after
    today), or None."""
    if day < FIRST_DAY:
        return f"date {day} is before the fleet's first day {FIRST_DAY} (FLYWHEEL_FLEET_START)"
    if day > today.isoformat():
        return f"date {day} is in the future (today is {today.isoformat()} UTC), it has no partition yet"
    return None


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _run_request(robot: str, day: str, fingerprint: str, fingerprint_tag: str) -> dg.RunRequest:
    """One run for one robot-day: its robot x day partition of ``ingest_robot_day`` while the day is
    in the hot window, else the month's ``episode_archive`` partition with the robot-day to ingest
    again (a late upload to a cold day). The run key is the same either way."""
    tags = {"flywheel/robot": robot, "flywheel/date": day, fingerprint_tag: fingerprint}
    if day >= HOT_FIRST_DAY:
        return dg.RunRequest(run_key=f"{robot}|{day}|{fingerprint}", partition_key=robot_day_key(robot, day),
                             job_name=ingest_robot_day.name, tags=tags)
    return dg.RunRequest(
        run_key=f"{robot}|{day}|{fingerprint}",
        partition_key=fleet.month_key(day),
        job_name=archive_month.name,
        run_config={"ops": {"episode_archive": {"config": {"reingest": [f"{robot}/{day}"]}}}},
        tags=tags,
    )


def joins(requests: list[dg.RunRequest], new_robots: list[str]) -> dict[str, str]:
    """robot -> the earliest day it uploaded for, for new robots and cold (late) robot-days: the
    join days to record (fleet.record_join keeps the earliest)."""
    out: dict[str, str] = {}
    new = set(new_robots)
    for req in requests:
        robot, day = req.tags["flywheel/robot"], req.tags["flywheel/date"]
        if robot in new or day < HOT_FIRST_DAY:
            out[robot] = min(day, out.get(robot, day))
    return out


# --- local folder ---------------------------------------------------------------------------------


def plan_runs(lake: Lake, cursor: dict, *, known_robots: set[str], already_ingested,
              today: dt.date | None = None) -> tuple[list, list[str], dict, list[str]]:
    """What one tick should do on a local lake. Pure apart from reading the lake, so it is table-testable.

    Args:
        lake: the lake to list.
        cursor: {"watermark_ns": int} from the last tick.
        known_robots: robots already registered as partitions.
        already_ingested: [(robot, day), ...] -> {(robot, day): raw fingerprint of its last
            log_manifest, or None}; called once per tick with every touched robot-day.
        today: the UTC day (default: now); later dates have no partition yet and are skipped.

    Returns:
        (run requests, new robots, next cursor, skipped keys with reasons)
    """
    today = today or _utc_today()
    watermark = int(cursor.get("watermark_ns", 0))
    # One walk of raw/: the files, and what is refused (symbolic links, special files).
    objects, refused = lake.scan(RAW_PREFIX) if isinstance(lake, LocalLake) else (lake.list(RAW_PREFIX), [])
    touched: set[tuple[str, str]] = set()
    skipped = []
    by_partition: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    folders: dict[str, int] = {}  # bag folder -> when it changed (renamed into place)

    def changed(obj: ObjectInfo) -> int:
        at = obj.changed_ns if obj.changed_ns is not None else obj.mtime_ns
        try:
            log = ids.raw_log_key(obj.key)
        except ids.InvalidIdentifier:
            return at
        if log.endswith("/") and isinstance(lake, LocalLake):
            if log not in folders:
                folders[log] = lake.changed_ns(log)
            at = max(at, folders[log])
        return at

    latest = watermark
    for obj in objects:
        at = changed(obj)
        latest = max(latest, at)
        fresh = at >= watermark - GRACE_NS
        try:
            robot, day, _ = ids.parse_raw_key(obj.key)
        except ids.InvalidIdentifier as exc:
            if fresh:
                skipped.append(str(exc))
            continue
        if (reason := _outside_partitions(day, today)) is not None:
            if fresh:
                skipped.append(f"{obj.key}: {reason}" + ("; upload it again once that day has come" if day > FIRST_DAY else ""))
            continue
        by_partition[(robot, day)].append(obj)
        if fresh:
            touched.add((robot, day))
    # Symbolic links and special files are never listed nor read; each is named once, when it appears.
    refused_digest = hashlib.sha256(json.dumps(refused).encode()).hexdigest()[:16] if refused else ""
    if refused_digest != cursor.get("refused", ""):
        skipped.extend(f"{key}: {why}" for key, why in refused)
    requests, new_robots = [], set()
    fingerprints = {}
    for robot, day in sorted(touched):
        with_sha = []
        for obj in by_partition[(robot, day)]:
            with lake.local_path(obj.key) as path:
                with_sha.append((obj.key, sha256_file(path)))
        fingerprints[(robot, day)] = raw_fingerprint(with_sha)
    ingested = already_ingested(sorted(touched)) if touched else {}
    for (robot, day), fingerprint in fingerprints.items():
        if ingested.get((robot, day)) == fingerprint:
            continue
        if robot not in known_robots:
            new_robots.add(robot)
        requests.append(_run_request(robot, day, fingerprint, "flywheel/raw_fingerprint"))
    next_cursor = {"watermark_ns": latest, **({"refused": refused_digest} if refused_digest else {})}
    return requests, sorted(new_robots), next_cursor, skipped


# --- S3 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TickPlan:
    """What one S3 tick does: runs to request, robots to register, the next cursor, and what to tell the operator."""

    run_requests: list[dg.RunRequest]
    new_robots: list[str]
    cursor: dict
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def _robot_folder(folder: str) -> str:
    """``raw/robot=<id>/`` -> the validated robot id."""
    if not (folder.startswith(f"{RAW_PREFIX}robot=") and folder.endswith("/")):
        raise ids.InvalidIdentifier(f"not a robot folder {folder!r}: expected {RAW_PREFIX}robot=<id>/")
    return ids.robot_id(folder[len(RAW_PREFIX) + len("robot="):-1])


def _window_digest(today: dt.date, objects: list[ObjectInfo]) -> str:
    digest = hashlib.blake2b(today.isoformat().encode(), digest_size=6)
    for obj in objects:
        digest.update(f"{obj.key}\0{obj.etag}\n".encode())
    return digest.hexdigest()


def _sweep(lake: S3Lake, after: str) -> tuple[list[list[ObjectInfo]], str]:
    """The next slice of the slow sweep: whole robot-days (``raw/robot=<id>/date=<day>``, a contiguous
    key range) in key order after ``after``.

    Returns them and the key after which the next slice starts ("" once the end of raw/ is reached).
    A slice ends at a robot-day boundary, so no robot-day is ever judged on part of its files.
    """

    def robot_day_of(key: str) -> str:
        return "/".join(key.split("/", 3)[:3])

    folders: list[list[ObjectInfo]] = []
    current: list[ObjectInfo] = []
    for listed, obj in enumerate(lake.iter_objects(RAW_PREFIX, start_after=after or None)):
        if current and robot_day_of(obj.key) != robot_day_of(current[-1].key):
            folders.append(current)
            current = []
            if listed >= SWEEP_MAX_KEYS or len(folders) >= SWEEP_MAX_DAYS:
                return folders, folders[-1][-1].key
        current.append(obj)
    if current:
        folders.append(current)
    return folders, ""


def plan_s3_runs(lake: S3Lake, cursor: dict, *, known_robots: set[str],
                 requested: Callable[[list[str]], set[str]], today: dt.date) -> TickPlan:
    """What one tick should do on an S3 lake, listing ordered key ranges only.

    Upload keys are ``raw/robot=<id>/date=<YYYY-MM-DD>/<file>`` and S3 lists keys in order, so:

    1. Robots: one ``Delimiter='/'`` listing of ``raw/`` (one request per 1000 robots).
    2. Recent uploads: per robot (in parallel) one listing with ``StartAfter=raw/robot=<id>/date=<today
       - LOOKBACK_DAYS>/``: the robot's files of the last few days and any later date, a few hundred
       keys at most, one request. The cursor keeps a digest of that listing per robot (keys, ETags,
       today), so an unchanged robot costs that one request and nothing else.
    3. New robots (neither a partition nor in the cursor): their whole prefix, once; all of it is new.
       At most NEW_ROBOTS_PER_TICK per tick; the others are listed on the next ticks.
    4. Late uploads dated before the window (they sort before anything step 2 reads): a slow sweep
       walks ``raw/`` in key order, ``SWEEP_MAX_KEYS`` keys (whole robot-days) per tick, resuming
       where the last tick stopped; a bucket of N keys is swept every N / SWEEP_MAX_KEYS ticks
       (100,000 keys: 20 ticks, 10 minutes at 30 s), which bounds how late such an upload is seen.
       An S3 event-notification queue would be instant, but needs bucket configuration (SeaweedFS:
       a filer notification config) that this code cannot assume.

    A changed robot in step 2, every robot-day of steps 3 and 4: its fingerprint is a hash over its
    (file name, ETag) pairs, and a run is requested unless a run of this sensor already carries the
    run key ``robot|day|fingerprint`` (looked up in batches). Hence an
    identical re-upload (same ETag) requests nothing, a changed or added file requests one run, and
    a lost cursor or a retried tick re-derives keys that already have runs. The ETag of a multipart
    upload depends on the part size: the same bytes re-uploaded in other parts count as a change
    (one redundant, harmless ingest).

    Cost per tick: ``robots / 1000 + robots`` list requests (parallel), plus the new objects, plus
    the bounded sweep; not the size of the bucket. The cursor holds ~25 bytes per robot.

    Args:
        lake: the S3 lake.
        cursor: the previous tick's cursor ({} on the first tick or after a reset).
        known_robots: robots already registered as partitions.
        requested: run keys -> those that a run of this sensor already has.
        today: the UTC day; dates after it have no partition yet and wait.
    """
    previous = cursor if cursor.get("v") == 2 else {}
    digests: dict[str, str] = previous.get("robots", {})
    ignored: list[str] = list(previous.get("ignored", []))
    warnings: list[str] = []
    window_start = (today - dt.timedelta(days=LOOKBACK_DAYS)).isoformat()

    def ignore(name: str, reason: str) -> None:
        if name not in ignored:
            warnings.append(reason)
            ignored.append(name)

    folders, loose = lake.list_children(RAW_PREFIX)
    robots = []
    for folder in folders:
        try:
            robots.append(_robot_folder(folder))
        except ids.InvalidIdentifier as exc:
            ignore(folder, f"ignored folder {folder!r}: {exc}")
    for obj in loose:
        ignore(obj.key, f"not a raw log key {obj.key!r}: expected {RAW_PREFIX}robot=<id>/date=<YYYY-MM-DD>/<file>")

    def window_from(robot: str) -> str:
        # With the trailing slash: SeaweedFS skips a whole folder when StartAfter names the folder
        # itself (AWS S3 compares plain strings); "<folder>/" means the same on both.
        return f"{RAW_PREFIX}robot={robot}/date={window_start}/"

    hidden: list[str] = []  # appended from the listing threads (list.append is atomic)

    def scan(robot: str) -> tuple[str, bool, list[ObjectInfo]]:
        prefix = f"{RAW_PREFIX}robot={robot}/"
        if robot in known_robots or robot in digests:
            return robot, False, list(lake.iter_objects(prefix, start_after=window_from(robot), hidden=hidden))
        return robot, True, list(lake.iter_objects(prefix, hidden=hidden))

    new = [r for r in robots if r not in known_robots and r not in digests]
    deferred = set(new[NEW_ROBOTS_PER_TICK:])
    with ThreadPoolExecutor(max_workers=LIST_WORKERS) as pool:
        scanned = list(pool.map(scan, [r for r in robots if r not in deferred]))

    # An object store has no write-aside-then-rename: a hidden name is not an upload in flight but
    # one that will never be ingested. Said once per key.
    for key in sorted(hidden):
        ignore(key, f"hidden upload {key!r} is never ingested (a name starting with '.' or '_tmp'); "
                    "upload it under its own name")
    candidates: dict[tuple[str, str], list[ObjectInfo]] = {}
    next_digests: dict[str, str] = {}
    stats = {"robots": len(robots), "robots_changed": 0, "robots_new": 0, "robots_deferred": len(deferred),
             "swept_days": 0, "sweep_wrapped": 0}
    for robot, whole, objects in scanned:
        # The same filter on both kinds of listing (stores differ on where odd keys such as
        # date=<day>.x/ sort), so that a robot's digest does not change with how it was listed.
        next_digests[robot] = _window_digest(today, [o for o in objects if o.key > window_from(robot)])
        if not whole and digests.get(robot) == next_digests[robot]:
            continue
        stats["robots_new" if whole else "robots_changed"] += 1
        by_day: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
        for obj in objects:
            try:
                _, day, _ = ids.parse_raw_key(obj.key)
            except ids.InvalidIdentifier as exc:
                warnings.append(str(exc))
                continue
            if (reason := _outside_partitions(day, today)) is not None:
                warnings.append(f"{obj.key}: {reason}" + ("; picked up when that day comes" if day > FIRST_DAY else ""))
                continue
            by_day[(robot, day)].append(obj)
        candidates.update(by_day)

    swept, next_sweep = _sweep(lake, previous.get("sweep", ""))
    stats["swept_days"] = len(swept)
    stats["sweep_wrapped"] = int(next_sweep == "")
    fresh = {robot for robot, whole, _ in scanned if whole}
    for objects in swept:
        valid = []
        for obj in objects:
            try:
                robot, day, _ = ids.parse_raw_key(obj.key)
            except ids.InvalidIdentifier:
                continue  # reported when it was new (steps 2 and 3)
            valid.append(obj)
        # Step 2 covers the window and step 3 whole new robots, on every tick.
        if not valid or day >= window_start or robot in fresh or _outside_partitions(day, today) is not None:
            continue
        candidates.setdefault((robot, day), valid)

    fingerprints = {rd: raw_fingerprint([(o.key, o.etag or "") for o in objects]) for rd, objects in candidates.items()}
    existing = requested(sorted(f"{robot}|{day}|{fp}" for (robot, day), fp in fingerprints.items()))
    requests, new_robots = [], set()
    for (robot, day), fingerprint in sorted(fingerprints.items()):
        if f"{robot}|{day}|{fingerprint}" in existing:
            continue
        if robot not in known_robots:
            new_robots.add(robot)
        requests.append(_run_request(robot, day, fingerprint, "flywheel/raw_etag_fingerprint"))
    stats["requests"] = len(requests)
    next_cursor = {"v": 2, "robots": next_digests, "sweep": next_sweep, "ignored": ignored[-MAX_IGNORED:]}
    return TickPlan(requests, sorted(new_robots), next_cursor, warnings, stats)


# --- the sensor -----------------------------------------------------------------------------------


# Partitions per materializations query when the local planner checks what was ingested.
INGESTED_BATCH = 200


def _ingested_fingerprint(instance: dg.DagsterInstance, store: Lake):
    """[(robot, day)] -> {(robot, day): the raw fingerprint its last log_manifest recorded, or None}.

    Hot robot-days: from the instance, one paged query per INGESTED_BATCH partitions (not one
    per robot-day: at 1,000 new robot-days in a tick, single queries cost ~65 s on PostgreSQL).
    Cold days have no partition: their manifest in the lake says what was ingested.
    """

    def lookup(robot_days: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        found: dict[tuple[str, str], str | None] = {}
        hot = []
        for robot, day in robot_days:
            if day < HOT_FIRST_DAY:
                key = manifest_key(robot, day)
                found[(robot, day)] = store.read_json(key).get("raw_fingerprint") if store.exists(key) else None
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
                        found[rd] = meta["raw_fingerprint"].value if "raw_fingerprint" in meta else None
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
        plan = plan_s3_runs(store, cursor, known_robots=known, requested=_requested_before(context.instance),
                            today=_utc_today())
        requests, new_robots, next_cursor, skipped = plan.run_requests, plan.new_robots, plan.cursor, plan.warnings
        context.log.info("S3 tick: " + ", ".join(f"{k}={v}" for k, v in plan.stats.items()))
    else:
        requests, new_robots, next_cursor, skipped = plan_runs(
            store, cursor, known_robots=known, already_ingested=_ingested_fingerprint(context.instance, store)
        )
    for robot, day in joins(requests, new_robots).items():
        fleet.record_join(store, robot, day)
    for reason in skipped:
        context.log.warning(f"ignored upload: {reason}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[ROBOTS.build_add_request(new_robots)] if new_robots else [],
        cursor=json.dumps(next_cursor, separators=(",", ":")),
    )
