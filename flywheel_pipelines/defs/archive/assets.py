"""The month archive: cold days (before the hot robot x day window) a month at a time.

Two jobs, both idempotent, one asset:

- late uploads for a cold day: the upload sensor requests this month's partition with the
  robot-day in ``reingest``; its manifest and episodes are rebuilt from raw/ exactly as the hot
  ``log_manifest`` and ``episodes`` assets would (the same functions), unless they already match
  the raw files' fingerprint (a re-run after a kill does only what is left);
- roll-up: the month's per-robot-day episode tables, for the days before the hot window, are
  compacted into ``archive/month=YYYY-MM/episodes.parquet``; the catalog reads that one file
  instead of a month of small tables (30,000 at 1,000 robots).

Runs of one month never overlap: the asset is in the ``archive`` pool, which the production
instance gives one slot (deploy/dagster.yaml: default_limit 1).
"""


import dagster as dg
import pyarrow as pa
from pydantic import Field

from flywheel_pipelines.defs.episodes.assets import EPISODE_TABLE, episodes, episodes_prefix, ingest_episodes
from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.ingest.assets import build_manifest, log_manifest, manifest_key, raw_fleet_logs, write_manifest
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import HOT_START, MONTHS
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet, ids, markdown
from flywheel_pipelines.lib.catalog import build_catalog, catalog_hash
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, Embodiment, load_embodiment
from flywheel_pipelines.lib.storage import Lake

OWNERS = ["team:robot-data"]


class ArchiveConfig(dg.Config):
    reingest: list[str] = Field(
        default_factory=list,
        description="Robot-days of this month to ingest again from raw/, as 'robot/YYYY-MM-DD' "
                    "(the upload sensor fills this in for late uploads to cold days).")
    embodiment: str = Field(default=DEFAULT_EMBODIMENT, description="Embodiment mapping name or YAML path.")


def parse_robot_day(item: str, month: str) -> tuple[str, str]:
    """``robot/YYYY-MM-DD`` -> validated (robot, day); the day must lie in ``month``."""
    robot, sep, day = item.partition("/")
    if not sep:
        raise ids.InvalidIdentifier(f"reingest entry {item!r}: expected 'robot/YYYY-MM-DD'")
    robot, day = ids.robot_id(robot), ids.day(day)
    if fleet.month_key(day) != month:
        raise ids.InvalidIdentifier(f"reingest entry {item!r}: {day} is not in the month {month[:7]}")
    return robot, day


def reingest_robot_day(store: Lake, robot: str, day: str, emb: Embodiment, log) -> str:
    """Rebuild one cold robot-day's manifest and episodes from raw/ (what the hot log_manifest and
    episodes assets do); returns what was done. Skips a robot-day already ingested from these raw
    files, so a re-run after a kill does only what is left."""
    key = manifest_key(robot, day)
    old = store.read_json(key) if store.exists(key) else None
    manifest = build_manifest(store, robot, day)
    table_key = f"{episodes_prefix(robot, day)}/{EPISODE_TABLE}"
    if old is not None and old["raw_fingerprint"] == manifest["raw_fingerprint"] and store.exists(table_key):
        return "up to date"
    write_manifest(store, robot, day, manifest)
    rejected = sum(f["verdict"] == "rejected" for f in manifest["files"])
    if rejected == len(manifest["files"]):
        log.warning(f"robot {robot} on {day}: every raw file was rejected; no episodes")
        return "all files rejected"
    result, _ = ingest_episodes(store, robot, day, emb)
    return f"{result.episodes.num_rows} episodes" + (f" ({rejected} files rejected)" if rejected else "")


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
    info_key, data_key = fleet.archive_info_key(month), fleet.archive_key(month)
    old = store.read_json(info_key) if store.exists(info_key) else None
    if changed is not None and old is not None and old["complete_before"] == complete_before and store.exists(data_key):
        replaced = {(r, d) for r, d in changed if d < complete_before}
        base = store.read_parquet(data_key)
        pairs = zip(base.column("robot").to_pylist(), base.column("date").to_pylist(), strict=True)
        keep = [pair not in replaced for pair in pairs]
        tables = [base.filter(pa.array(keep, type=pa.bool_()))]
        for robot, day in sorted(replaced):
            key = f"{episodes_prefix(robot, day)}/{EPISODE_TABLE}"
            if store.exists(key):
                tables.append(store.read_parquet(key))
        mode = "incremental"
    else:
        keys = [k for k in fleet.month_episode_tables(store, month) if k.split("/")[2][len("date="):] < complete_before]
        tables = [store.read_parquet(k) for k in keys]
        mode = "full"
    table = build_catalog(tables)
    store.write_parquet(data_key, table)
    robot_days = set(zip(table.column("robot").to_pylist(), table.column("date").to_pylist(), strict=True))
    info = {"month": month, "complete_before": complete_before, "robot_days": len(robot_days),
            "episodes": table.num_rows, "robots": len({r for r, _ in robot_days}), "content_hash": catalog_hash(table)}
    store.write_json(info_key, info)
    return {**info, "mode": mode}


# A month depends on every robot-day: it re-ingests cold days from raw/ (writing their manifests and
# episode tables as log_manifest and episodes would, after reading the manifest log_manifest left
# when the day was hot) and compacts robot-day episode tables that the episodes asset wrote while
# the day was hot. Declared so the UI's lineage shows cold-day ingest.
ARCHIVE_DEPS = [dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping())
                for a in (raw_fleet_logs, log_manifest, episodes)]


@dg.asset(
    deps=ARCHIVE_DEPS,
    partitions_def=MONTHS,
    group_name=group_of("episode_archive"),
    kinds={"python", "parquet"},
    owners=OWNERS,
    pool="archive",
    op_tags=INGEST_TAGS,
)
def episode_archive(context: dg.AssetExecutionContext, config: ArchiveConfig, lake: LakeResource) -> dg.MaterializeResult:
    """One month of cold days: late uploads ingested again, and the month's episode tables (the
    days before the hot robot x day window) compacted into one Parquet file for the catalog."""
    month = ids.day(context.partition_key)
    store = lake.lake()
    try:
        wanted = sorted({parse_robot_day(item, month) for item in config.reingest})
    except ids.InvalidIdentifier as exc:
        raise dg.Failure(str(exc)) from None
    hot = [f"{r}/{d}" for r, d in wanted if d >= HOT_START.isoformat()]
    if hot:
        raise dg.Failure(f"{', '.join(hot)} in the hot window (from {HOT_START}): materialize their robot x day "
                         "partitions of log_manifest and episodes instead")
    emb = load_embodiment(config.embodiment) if wanted else None
    rows = []
    for robot, day in wanted:
        rows.append((robot, day, reingest_robot_day(store, robot, day, emb, context.log)))
    complete_before = min(HOT_START.isoformat(), fleet.day_after(fleet.month_days(month)[-1]))
    info = compact_month(store, month, complete_before, changed=wanted if wanted else None)
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(fleet.archive_key(month))),
            "complete_before": complete_before,
            "robot_days": info["robot_days"],
            "episodes": info["episodes"],
            "robots": info["robots"],
            "content_hash": info["content_hash"],
            "reingested": len(rows),
            "reingest": dg.MetadataValue.md(markdown.table(["robot", "day", "result"], rows)) if rows else "none",
            "compaction": info["mode"],
        },
        data_version=dg.DataVersion(info["content_hash"]),
    )
