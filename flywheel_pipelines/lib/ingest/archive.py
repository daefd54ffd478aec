"""Cold days, a month at a time: re-ingest late uploads and compact a month of robot-day episode tables.

Both are idempotent: a robot-day already ingested from the same raw files is skipped, and the
compacted Parquet file is written before ``archive.json``, so a kill between the two writes leaves
a consistent view and a re-run finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from flywheel_pipelines.lib import fleet, ids, layout
from flywheel_pipelines.lib.catalog import build_catalog, catalog_hash
from flywheel_pipelines.lib.episodes.embodiment import Embodiment
from flywheel_pipelines.lib.ingest.episodes import ingest_episodes
from flywheel_pipelines.lib.ingest.manifest import build_manifest, ingest_manifest
from flywheel_pipelines.lib.storage import Lake


def parse_robot_day(item: str, month: str) -> tuple[str, str]:
    """``robot/YYYY-MM-DD`` -> validated (robot, day); the day must lie in ``month``."""
    robot, sep, day = item.partition("/")
    if not sep:
        raise ids.InvalidIdentifier(f"reingest entry {item!r}: expected 'robot/YYYY-MM-DD'")
    robot, day = ids.robot_id(robot), ids.day(day)
    if fleet.month_key(day) != month:
        raise ids.InvalidIdentifier(f"reingest entry {item!r}: {day} is not in the month {month[:7]}")
    return robot, day


def hot_entries(wanted: list[tuple[str, str]], hot_start: str) -> list[str]:
    """The ``robot/day`` entries dated in the hot window (from ``hot_start``): not the archive's to ingest."""
    return [f"{r}/{d}" for r, d in wanted if d >= hot_start]


def reingest_robot_day(store: Lake, robot: str, day: str, emb: Embodiment, warn: Callable[[str], None]) -> str:
    """Rebuild one cold robot-day's manifest and episodes from raw/ (what the hot log_manifest and
    episodes assets do); returns what was done. Skips a robot-day already ingested from these raw
    files, so a re-run after a kill does only what is left.

    Raises:
        IngestError: as ``ingest_manifest`` and ``ingest_episodes`` do.
    """
    key = layout.manifest_key(robot, day)
    old = store.read_json(key) if store.exists(key) else None
    manifest = build_manifest(store, robot, day)
    if (old is not None and old["raw_fingerprint"] == manifest["raw_fingerprint"]
            and store.exists(layout.episode_table_key(robot, day))):
        return "up to date"
    ingest_manifest(store, robot, day, manifest)
    rejected = sum(f["verdict"] == "rejected" for f in manifest["files"])
    if rejected == len(manifest["files"]):
        warn(f"robot {robot} on {day}: every raw file was rejected; no episodes")
        return "all files rejected"
    result, _ = ingest_episodes(store, robot, day, emb)
    return f"{result.episodes.num_rows} episodes" + (f" ({rejected} files rejected)" if rejected else "")


def complete_before(month: str, hot_start: str) -> str:
    """The first day the month's archive does not serve: the hot window's start or the next month."""
    return min(hot_start, fleet.day_after(fleet.month_days(month)[-1]))


def compact_month(store: Lake, month: str, complete_before: str, *, changed: list[tuple[str, str]] | None = None) -> dict:
    """Write the month's archive from its robot-day tables dated before ``complete_before``.

    With ``changed`` (robot-days just ingested again) and an archive of the same extent, only those
    robot-days' rows are replaced: one file read instead of a month of tables. Otherwise the month
    is rebuilt from every robot-day table.

    The Parquet file goes first and archive.json second: readers take only the archive's rows
    dated before the ``complete_before`` of the archive.json they read and every later day from
    its own table, so a kill between the two writes leaves a consistent view and a re-run
    finishes the job.
    """
    info_key, data_key = layout.archive_info_key(month), layout.archive_key(month)
    old = store.read_json(info_key) if store.exists(info_key) else None
    if changed is not None and old is not None and old["complete_before"] == complete_before and store.exists(data_key):
        replaced = {(r, d) for r, d in changed if d < complete_before}
        base = store.read_parquet(data_key)
        pairs = zip(base.column("robot").to_pylist(), base.column("date").to_pylist(), strict=True)
        keep = [pair not in replaced for pair in pairs]
        tables = [base.filter(pa.array(keep, type=pa.bool_()))]
        for robot, day in sorted(replaced):
            key = layout.episode_table_key(robot, day)
            if store.exists(key):
                tables.append(store.read_parquet(key))
        mode = "incremental"
    else:
        days = fleet.month_days(month)
        tables = [store.read_parquet(key) for robot in fleet.episode_robots(store)
                  for day, key in fleet.robot_day_tables(store, robot, days[0], days[-1]) if day < complete_before]
        mode = "full"
    table = build_catalog(tables)
    store.write_parquet(data_key, table)
    robot_days = set(zip(table.column("robot").to_pylist(), table.column("date").to_pylist(), strict=True))
    info = {"month": month, "complete_before": complete_before, "robot_days": len(robot_days),
            "episodes": table.num_rows, "robots": len({r for r, _ in robot_days}), "content_hash": catalog_hash(table)}
    store.write_json(info_key, info)
    return {**info, "mode": mode}
