"""The upload sensor's planners: lake listings in, run plans out (no Dagster here).

One plan per tick; how it finds what changed depends on the lake:

- a local folder (:func:`plan_local`): walk ``raw/`` and fingerprint the robot-days with a file
  changed since the cursor's watermark: changed is max(mtime, ctime), and the ctime is the
  kernel's (set when a file is created, renamed or linked into place), so an upload whose mtime
  was preserved (rsync -a, cp -p, tar) or renamed into place after a later upload is still seen.
  A tick costs one walk with one lstat per file (plus one per bag folder); only changed
  robot-days are hashed.
- S3 (:func:`plan_s3`): a tick must cost what was uploaded, not what the bucket holds (listing a
  whole prefix every tick outgrows the 60 s tick limit), so it lists ordered key ranges only.

Either way a run is keyed ``robot|day|fingerprint``: a retried tick or a restart re-derives the
same key (Dagster starts one run per key), an identical re-upload derives the same key (nothing
new), and a changed or late file derives a new one (one new run for its robot-day). Neither
planner writes to the lake: what a run needs recorded (the robot's join day) the run records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.storage import Lake, LocalLake, ObjectInfo, S3Lake, raw_fingerprint, sha256_file

# Local folder: files modified this close to the watermark are looked at again: mtimes are not
# strictly ordered with the sensor's listing, and the run key makes a second look free.
GRACE_NS = 5_000_000_000
# Fingerprint tags: which kind of fingerprint a run key carries.
SHA_TAG = "flywheel/raw_fingerprint"
ETAG_TAG = "flywheel/raw_etag_fingerprint"


@dataclass(frozen=True)
class PlannedRun:
    """One robot-day to ingest: its run key is ``robot|day|fingerprint``."""

    robot: str
    day: str
    fingerprint: str
    fingerprint_tag: str

    @property
    def run_key(self) -> str:
        return f"{self.robot}|{self.day}|{self.fingerprint}"


@dataclass(frozen=True)
class UploadPlan:
    """What one tick does: runs to request, robots to register, the next cursor, what to tell the operator."""

    runs: list[PlannedRun]
    new_robots: list[str]
    cursor: dict
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """The days that have partitions: from the fleet's first day to today (UTC)."""

    first_day: str
    today: dt.date

    def outside(self, day: str) -> str | None:
        """Why ``day`` has no partition, robot x day or month (before the fleet start, or after
        today), or None."""
        if day < self.first_day:
            return f"date {day} is before the fleet's first day {self.first_day} (FLYWHEEL_FLEET_START)"
        if day > self.today.isoformat():
            return f"date {day} is in the future (today is {self.today.isoformat()} UTC), it has no partition yet"
        return None


# --- local folder ---------------------------------------------------------------------------------


def stat_fingerprint(objects: Iterable[ObjectInfo]) -> str:
    """A robot-day's raw files as their listing shows them: key, size, mtime and when they last
    changed (a local file's ctime, which the kernel moves on every write, rename or utime).

    ``log_manifest`` records it from a listing taken before it hashes the files; a tick that lists
    the same stat needs no hash (nothing changed since), while any other stat (a new file, a rewrite,
    a touch) sends the tick to the content fingerprint. Keys that are not raw log keys are left out,
    as the planner leaves them out.
    """
    rows = []
    for obj in objects:
        try:
            layout.parse_raw_key(obj.key)
        except ids.InvalidIdentifier:
            continue
        rows.append((obj.key, f"{obj.size}:{obj.mtime_ns}:{obj.changed_ns}"))
    return raw_fingerprint(rows)


def plan_local(lake: Lake, cursor: dict, *, known_robots: set[str], already_ingested, window: Window,
               ingested_stat=None, grace_ns: int = GRACE_NS,
               hash_file: Callable[[Path], str] = sha256_file) -> UploadPlan:
    """What one tick should do on a local lake.

    A tick lists (one walk, one lstat per file) and reads a file's bytes only for a touched
    robot-day whose listing differs from the one its last ``log_manifest`` recorded
    (``ingested_stat``): a new, rewritten or touched file, whose content fingerprint then decides
    (a touched file with the same bytes requests nothing). A restarted sensor, a lost cursor or the
    grace window's second look at an ingested day reads no file.

    Args:
        lake: the lake to list.
        cursor: {"watermark_ns": int} from the last tick.
        known_robots: robots already registered as partitions.
        already_ingested: [(robot, day), ...] -> {(robot, day): raw fingerprint of its last
            log_manifest, or None}; called at most once per tick, with the robot-days to hash.
        window: the days that have partitions.
        ingested_stat: [(robot, day), ...] -> {(robot, day): the ``stat_fingerprint`` its last
            log_manifest recorded, or None}; called once per tick with every touched robot-day
            (None: every touched robot-day is hashed).
        grace_ns: files changed this close before the watermark are looked at again.
        hash_file: a local file's path -> its sha256 (the only place a tick reads file bytes).
    """
    watermark = int(cursor.get("watermark_ns", 0))
    # One walk of raw/: the files, and what is refused (symbolic links, special files).
    objects, refused = lake.scan(layout.RAW) if isinstance(lake, LocalLake) else (lake.list(layout.RAW), [])
    touched: set[tuple[str, str]] = set()
    skipped = []
    by_partition: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    folders: dict[str, int] = {}  # bag folder -> when it changed (renamed into place)

    def changed(obj: ObjectInfo) -> int:
        at = obj.changed_ns if obj.changed_ns is not None else obj.mtime_ns
        try:
            log = layout.raw_log_key(obj.key)
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
        fresh = at >= watermark - grace_ns
        try:
            robot, day, _ = layout.parse_raw_key(obj.key)
        except ids.InvalidIdentifier as exc:
            if fresh:
                skipped.append(str(exc))
            continue
        if (reason := window.outside(day)) is not None:
            if fresh:
                later = "; upload it again once that day has come" if day > window.first_day else ""
                skipped.append(f"{obj.key}: {reason}{later}")
            continue
        by_partition[(robot, day)].append(obj)
        if fresh:
            touched.add((robot, day))
    # Symbolic links and special files are never listed nor read; each is named once, when it appears.
    refused_digest = hashlib.sha256(json.dumps(refused).encode()).hexdigest()[:16] if refused else ""
    if refused_digest != cursor.get("refused", ""):
        skipped.extend(f"{key}: {why}" for key, why in refused)
    stats = ingested_stat(sorted(touched)) if touched and ingested_stat is not None else {}
    unchanged = {rd for rd in touched if stats.get(rd) is not None and stats[rd] == stat_fingerprint(by_partition[rd])}
    fingerprints = {}
    for robot, day in sorted(touched - unchanged):
        with_sha = []
        for obj in by_partition[(robot, day)]:
            with lake.local_path(obj.key) as path:
                with_sha.append((obj.key, hash_file(path)))
        fingerprints[(robot, day)] = raw_fingerprint(with_sha)
    ingested = already_ingested(sorted(fingerprints)) if fingerprints else {}
    runs, new_robots = [], set()
    for (robot, day), fingerprint in fingerprints.items():
        if ingested.get((robot, day)) == fingerprint:
            continue
        if robot not in known_robots:
            new_robots.add(robot)
        runs.append(PlannedRun(robot, day, fingerprint, SHA_TAG))
    next_cursor = {"watermark_ns": latest, **({"refused": refused_digest} if refused_digest else {})}
    return UploadPlan(runs, sorted(new_robots), next_cursor, skipped)


# --- S3 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Limits:
    """How much one S3 tick may do."""

    # Every tick re-lists each robot's uploads dated today and this many days before (uploads
    # after midnight of the previous day's last session are the common "late" case).
    lookback_days: int = 2
    # The slow sweep that finds uploads dated before that window reads this much per tick.
    sweep_max_keys: int = 5_000
    sweep_max_days: int = 1_000
    # Robots listed in parallel (below botocore's default pool of 10 connections).
    list_workers: int = 8
    # New robots listed whole per tick; more wait for the next tick, so that a first tick over a
    # bucket with history (or after the robot partitions were reset) stays a bounded amount of work.
    new_robots_per_tick: int = 25
    # Invalid robot folders are warned about once; the cursor remembers at most this many.
    max_ignored: int = 100


def _window_digest(today: dt.date, objects: list[ObjectInfo]) -> str:
    digest = hashlib.blake2b(today.isoformat().encode(), digest_size=6)
    for obj in objects:
        digest.update(f"{obj.key}\0{obj.etag}\n".encode())
    return digest.hexdigest()


def sweep(lake: S3Lake, after: str, limits: S3Limits) -> tuple[list[list[ObjectInfo]], str]:
    """The next slice of the slow sweep: whole robot-days (``raw/robot=<id>/date=<day>``, a contiguous
    key range) in key order after ``after``.

    Returns them and the key after which the next slice starts ("" once the end of raw/ is reached).
    A slice ends at a robot-day boundary, so no robot-day is ever judged on part of its files.
    """
    folders: list[list[ObjectInfo]] = []
    current: list[ObjectInfo] = []
    for listed, obj in enumerate(lake.iter_objects(layout.RAW, start_after=after or None)):
        if current and layout.raw_robot_day_of(obj.key) != layout.raw_robot_day_of(current[-1].key):
            folders.append(current)
            current = []
            if listed >= limits.sweep_max_keys or len(folders) >= limits.sweep_max_days:
                return folders, folders[-1][-1].key
        current.append(obj)
    if current:
        folders.append(current)
    return folders, ""


def plan_s3(lake: S3Lake, cursor: dict, *, known_robots: set[str], requested: Callable[[list[str]], set[str]],
            window: Window, limits: S3Limits = S3Limits()) -> UploadPlan:
    """What one tick should do on an S3 lake, listing ordered key ranges only.

    Upload keys are ``raw/robot=<id>/date=<YYYY-MM-DD>/<file>`` and S3 lists keys in order, so:

    1. Robots: one ``Delimiter='/'`` listing of ``raw/`` (one request per 1000 robots).
    2. Recent uploads: per robot (in parallel) one listing with ``StartAfter=raw/robot=<id>/date=<today
       - lookback_days>/``: the robot's files of the last few days and any later date, a few hundred
       keys at most, one request. The cursor keeps a digest of that listing per robot (keys, ETags,
       today), so an unchanged robot costs that one request and nothing else.
    3. New robots (neither a partition nor in the cursor): their whole prefix, once; all of it is new.
       At most ``new_robots_per_tick`` per tick; the others are listed on the next ticks.
    4. Late uploads dated before the window (they sort before anything step 2 reads): a slow sweep
       walks ``raw/`` in key order, ``sweep_max_keys`` keys (whole robot-days) per tick, resuming
       where the last tick stopped; a bucket of N keys is swept every N / sweep_max_keys ticks
       (100,000 keys: 20 ticks, 10 minutes at 30 s), which bounds how late such an upload is seen.
       An S3 event-notification queue would be instant, but needs bucket configuration (SeaweedFS:
       a filer notification config) that this code cannot assume.

    A changed robot in step 2, every robot-day of steps 3 and 4: its fingerprint is a hash over its
    (file name, ETag) pairs, and a run is planned unless a run of the sensor already carries the
    run key ``robot|day|fingerprint`` (looked up in batches). Hence an identical re-upload (same
    ETag) plans nothing, a changed or added file plans one run, and a lost cursor or a retried tick
    re-derives keys that already have runs. The ETag of a multipart upload depends on the part
    size: the same bytes re-uploaded in other parts count as a change (one redundant, harmless ingest).

    Cost per tick: ``robots / 1000 + robots`` list requests (parallel), plus the new objects, plus
    the bounded sweep; not the size of the bucket. The cursor holds ~25 bytes per robot.

    Args:
        lake: the S3 lake.
        cursor: the previous tick's cursor ({} on the first tick or after a reset).
        known_robots: robots already registered as partitions.
        requested: run keys -> those that a run of the sensor already has.
        window: the days that have partitions; later dates wait.
        limits: how much one tick may do.
    """
    today = window.today
    previous = cursor if cursor.get("v") == 2 else {}
    digests: dict[str, str] = previous.get("robots", {})
    ignored: list[str] = list(previous.get("ignored", []))
    warnings: list[str] = []
    window_start = (today - dt.timedelta(days=limits.lookback_days)).isoformat()

    def ignore(name: str, reason: str) -> None:
        if name not in ignored:
            warnings.append(reason)
            ignored.append(name)

    folders, loose = lake.list_children(layout.RAW)
    robots = []
    for folder in folders:
        try:
            robots.append(layout.raw_robot_of_folder(folder))
        except ids.InvalidIdentifier as exc:
            ignore(folder, f"ignored folder {folder!r}: {exc}")
    for obj in loose:
        ignore(obj.key, f"not a raw log key {obj.key!r}: expected {layout.RAW_KEY_FORMAT}")

    def window_from(robot: str) -> str:
        # With the trailing slash: SeaweedFS skips a whole folder when StartAfter names the folder
        # itself (AWS S3 compares plain strings); "<folder>/" means the same on both.
        return layout.raw_prefix(robot, window_start)

    hidden: list[str] = []  # appended from the listing threads (list.append is atomic)

    def scan(robot: str) -> tuple[str, bool, list[ObjectInfo]]:
        prefix = layout.raw_robot_prefix(robot)
        if robot in known_robots or robot in digests:
            return robot, False, list(lake.iter_objects(prefix, start_after=window_from(robot), hidden=hidden))
        return robot, True, list(lake.iter_objects(prefix, hidden=hidden))

    new = [r for r in robots if r not in known_robots and r not in digests]
    deferred = set(new[limits.new_robots_per_tick:])
    with ThreadPoolExecutor(max_workers=limits.list_workers) as pool:
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
                _, day, _ = layout.parse_raw_key(obj.key)
            except ids.InvalidIdentifier as exc:
                warnings.append(str(exc))
                continue
            if (reason := window.outside(day)) is not None:
                later = "; picked up when that day comes" if day > window.first_day else ""
                warnings.append(f"{obj.key}: {reason}{later}")
                continue
            by_day[(robot, day)].append(obj)
        candidates.update(by_day)

    swept, next_sweep = sweep(lake, previous.get("sweep", ""), limits)
    stats["swept_days"] = len(swept)
    stats["sweep_wrapped"] = int(next_sweep == "")
    fresh = {robot for robot, whole, _ in scanned if whole}
    for objects in swept:
        valid = []
        for obj in objects:
            try:
                robot, day, _ = layout.parse_raw_key(obj.key)
            except ids.InvalidIdentifier:
                continue  # reported when it was new (steps 2 and 3)
            valid.append(obj)
        # Step 2 covers the window and step 3 whole new robots, on every tick.
        if not valid or day >= window_start or robot in fresh or window.outside(day) is not None:
            continue
        candidates.setdefault((robot, day), valid)

    fingerprints = {rd: raw_fingerprint([(o.key, o.etag or "") for o in objects]) for rd, objects in candidates.items()}
    existing = requested(sorted(f"{robot}|{day}|{fp}" for (robot, day), fp in fingerprints.items()))
    runs, new_robots = [], set()
    for (robot, day), fingerprint in sorted(fingerprints.items()):
        run = PlannedRun(robot, day, fingerprint, ETAG_TAG)
        if run.run_key in existing:
            continue
        if robot not in known_robots:
            new_robots.add(robot)
        runs.append(run)
    stats["requests"] = len(runs)
    next_cursor = {"v": 2, "robots": next_digests, "sweep": next_sweep, "ignored": ignored[-limits.max_ignored:]}
    return UploadPlan(runs, sorted(new_robots), next_cursor, warnings, stats)
