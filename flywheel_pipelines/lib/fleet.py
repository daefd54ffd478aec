"""Fleet scale: the hot robot x day window, month archives and robot join days (no Dagster here).

A 1,000-robot fleet over 3 years is 1.1 million robot-days. Dagster is comfortable with about
100k partitions per asset and its UI slows down from 40-90k, and enumerating a 1.1M-key
robot x day grid alone takes ~8 s. So the grid users work in is a *hot window*: every robot x the
last ``FLYWHEEL_HOT_DAYS`` days (28 by default, starting on a Monday), where per-robot-day runs,
re-runs and backfills happen. Older days are *cold*: their data stays where it is in the lake, and
they are handled a month at a time by the monthly ``episode_archive`` asset, which re-ingests cold
robot-days that received late uploads and compacts a month of per-robot-day episode tables into one
Parquet file (the catalog reads 36 of those for 3 years instead of ~1.1M small tables).

Robots exist from the day they join: the upload sensor records each robot's first upload day under
``fleet/robots/``, and fleet-wide backfills select only robots that had joined by that day.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator

import pyarrow as pa

from flywheel_pipelines.lib import ids, layout

HOT_DAYS_ENV = "FLYWHEEL_HOT_DAYS"
DEFAULT_HOT_DAYS = 28
FLEET_START_ENV = "FLYWHEEL_FLEET_START"
DEFAULT_FLEET_START = "2025-01-01"
ROBOTS_PREFIX = layout.FLEET_ROBOTS
ARCHIVE_PREFIX = layout.ARCHIVE
EPISODES_PREFIX = layout.EPISODES
EPISODE_TABLE = layout.EPISODE_TABLE


class FleetConfigError(ValueError):
    pass


def hot_days() -> int:
    """Days in the hot robot x day window (``FLYWHEEL_HOT_DAYS``, 2..3660)."""
    raw = os.environ.get(HOT_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_HOT_DAYS
    try:
        days = int(raw)
    except ValueError:
        raise FleetConfigError(f"{HOT_DAYS_ENV}={raw!r}: expected a whole number of days") from None
    if not 2 <= days <= 3660:
        raise FleetConfigError(f"{HOT_DAYS_ENV}={days}: expected 2..3660 days")
    return days


def fleet_start() -> dt.date:
    """The first day the fleet can have logs for (``FLYWHEEL_FLEET_START``, YYYY-MM-DD)."""
    raw = os.environ.get(FLEET_START_ENV, "").strip() or DEFAULT_FLEET_START
    try:
        return dt.date.fromisoformat(ids.day(raw))
    except (ids.InvalidIdentifier, ValueError) as exc:
        raise FleetConfigError(f"{FLEET_START_ENV}={raw!r}: {exc}") from None


def hot_window_start(today: dt.date, days: int, *, floor: dt.date) -> dt.date:
    """The first day of the hot window: the Monday on or before ``today - days``, not before ``floor``.

    Snapping to a Monday keeps the grid's first column stable for a week, so a code location that
    is reloaded any day of the week shows the same partitions.
    """
    start = today - dt.timedelta(days=days)
    start -= dt.timedelta(days=start.weekday())
    return max(start, floor)


def configured_hot_start(today: dt.date) -> dt.date:
    """The hot window's first day on ``today`` under this environment's ``FLYWHEEL_HOT_DAYS`` and
    ``FLYWHEEL_FLEET_START``: what the code location computes when it loads (defs/partitions.py)."""
    return hot_window_start(today, hot_days(), floor=fleet_start())


def month_key(day: str) -> str:
    """The monthly partition key (``YYYY-MM-01``) of a ``YYYY-MM-DD`` day."""
    return ids.day(day)[:8] + "01"


def month_days(month: str) -> list[str]:
    first = dt.date.fromisoformat(ids.day(month))
    if first.day != 1:
        raise ids.InvalidIdentifier(f"month partition {month!r} must be the first of a month")
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((nxt - first).days)]


archive_key = layout.archive_key
archive_info_key = layout.archive_info_key
robot_key = layout.robot_join_key


def record_join(store, robot: str, first_day: str) -> dict:
    """Record ``robot``'s join day (its first upload day); an earlier upload found later moves it back.

    Returns the record as stored. Idempotent: the same or a later day changes nothing.
    """
    key = robot_key(robot)
    first_day = ids.day(first_day)
    if store.exists(key):
        record = store.read_json(key)
        if record.get("joined", "9999-12-31") <= first_day:
            return record
    record = {"robot": ids.robot_id(robot), "joined": first_day}
    store.write_json(key, record)
    return record


def joined_robots(store) -> dict[str, str]:
    """robot -> join day, for every robot the sensor has seen."""
    out = {}
    for obj in store.list(ROBOTS_PREFIX):
        robot = layout.robot_of_join_name(obj.key.rsplit("/", 1)[-1])
        if robot is None:
            continue
        out[robot] = store.read_json(obj.key)["joined"]
    return out


def fleet_day_robots(joined: dict[str, str], day: str, registered: Iterable[str]) -> list[str]:
    """The registered robots that existed on ``day`` (joined on or before it): a fleet-wide backfill
    of one day selects these, not robots that had not joined yet."""
    day = ids.day(day)
    return sorted(r for r in registered if r in joined and joined[r] <= day)


def robot_day_tables(store, robot: str, since: str, until: str | None = None) -> Iterator[tuple[str, str]]:
    """(day, key) of ``robot``'s episode tables dated ``since`` .. ``until`` (inclusive), in day order.

    On S3 one ordered listing that starts at ``since`` and stops past ``until`` (keys sort by date),
    so reading a month or the hot window costs what it returns, not the robot's whole history; on
    a local folder, one directory listing.
    """
    prefix = layout.episodes_robot_prefix(robot)
    if hasattr(store, "iter_objects"):
        objects = store.iter_objects(prefix, start_after=f"{prefix}{layout.date_folder(since)}"[:-1])
        for obj in objects:
            parts = obj.key.split("/")
            day = layout.day_of_folder(parts[2]) if len(parts) == 4 else None
            if day is None:
                continue
            if until is not None and day > until:
                break
            if parts[3] == EPISODE_TABLE and day >= since:
                yield day, obj.key
        return
    base = store.path(prefix.rstrip("/"))
    if not base.is_dir():
        return
    for name in sorted(p.name for p in base.iterdir()):
        day = layout.day_of_folder(name)
        if (day is not None and day >= since and (until is None or day <= until)
                and (base / name / EPISODE_TABLE).is_file()):
            yield day, f"{prefix}{name}/{EPISODE_TABLE}"


def episode_robots(store) -> list[str]:
    """Robots with an ``episodes/robot=<id>/`` folder."""
    robots = set()
    if hasattr(store, "list_children"):
        folders, _ = store.list_children(EPISODES_PREFIX)
        names = [f.rstrip("/").rsplit("/", 1)[-1] for f in folders]
    else:
        base = store.path(EPISODES_PREFIX.rstrip("/"))
        names = [p.name for p in base.iterdir()] if base.is_dir() else []
    for name in names:
        robot = layout.robot_of_folder(name)
        if robot is not None:
            try:
                robots.add(ids.robot_id(robot))
            except ids.InvalidIdentifier:
                continue
    return sorted(robots)


def month_episode_tables(store, month: str) -> list[str]:
    """Keys of every robot-day episode table of ``month``."""
    days = month_days(month)
    return [key for robot in episode_robots(store) for _, key in robot_day_tables(store, robot, days[0], days[-1])]


def covered_before(archives: dict[str, dict], start: dt.date) -> str:
    """The first day, counting from ``start``, that the month archives do not cover: every day
    before it is served by an archive, so per-day listings can start there."""
    month = start.replace(day=1)
    while True:
        info = archives.get(month.isoformat())
        days = month_days(month.isoformat())
        if info is None or info["complete_before"] <= days[-1]:
            covered = info["complete_before"] if info is not None else month.isoformat()
            return max(covered, month.isoformat())
        month = dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1)


def catalog_sources(store, archives: dict[str, dict], *, start: dt.date) -> tuple[list[tuple[str, str | None]], int]:
    """Which tables make up the catalog: (key, rows before this day come from it or None) pairs.

    A month archive serves the days before its ``complete_before`` (the hot window start when it
    was built); every other robot-day is read from its own table. Each robot's tables are listed
    from the first day the archives do not cover, so the cost follows the hot window, not the
    fleet's history. Returns (sources, robot-day tables read).
    """
    sources: list[tuple[str, str | None]] = [(archive_key(m), info["complete_before"]) for m, info in sorted(archives.items())]
    first = covered_before(archives, start)
    per_day = 0
    for robot in episode_robots(store):
        for day, key in robot_day_tables(store, robot, first):
            info = archives.get(month_key(day))
            if info is not None and day < info["complete_before"]:
                continue
            sources.append((key, None))
            per_day += 1
    return sources, per_day


def read_archives(store) -> dict[str, dict]:
    """month -> archive.json of every month archive in the lake."""
    out = {}
    for obj in store.list(ARCHIVE_PREFIX):
        if layout.is_archive_info(obj.key):
            info = store.read_json(obj.key)
            out[info["month"]] = info
    return out


def filter_before(table: pa.Table, before: str) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.less(table.column("date"), pa.scalar(before)))


def day_after(day: str) -> str:
    return (dt.date.fromisoformat(ids.day(day)) + dt.timedelta(days=1)).isoformat()
