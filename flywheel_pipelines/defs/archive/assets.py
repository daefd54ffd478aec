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
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import HOT_START, MONTHS
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.defs.ui_metadata import ingest_failure
from flywheel_pipelines.lib import ids, layout, markdown
from flywheel_pipelines.lib.episodes.embodiment import DEFAULT_EMBODIMENT, load_embodiment
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.archive import compact_month, complete_before, hot_entries, parse_robot_day, reingest_robot_day

OWNERS = ["team:robot-data"]


class ArchiveConfig(dg.Config):
    reingest: list[str] = Field(
        default_factory=list,
        description=f"Robot-days of this month to ingest again from {layout.RAW}, as 'robot/YYYY-MM-DD' "
                    "(the upload sensor fills this in for late uploads to cold days).")
    embodiment: str = Field(default=DEFAULT_EMBODIMENT, description="Embodiment mapping name or YAML path.")


# A month depends on every robot-day: it re-ingests cold days from raw/ (writing their manifests and
# episode tables as log_manifest and episodes would, after reading the manifest log_manifest left
# when the day was hot) and compacts robot-day episode tables that the episodes asset wrote while
# the day was hot. Declared so the UI's lineage shows cold-day ingest.
ARCHIVE_DEPS = [dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping())
                for a in ("raw_fleet_logs", "log_manifest", "episodes")]


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
    hot = hot_entries(wanted, HOT_START.isoformat())
    if hot:
        raise dg.Failure(f"{', '.join(hot)} in the hot window (from {HOT_START}): materialize their robot x day "
                         "partitions of log_manifest and episodes instead")
    emb = load_embodiment(config.embodiment) if wanted else None
    rows = []
    try:
        for robot, day in wanted:
            rows.append((robot, day, reingest_robot_day(store, robot, day, emb, context.log.warning)))
    except IngestError as exc:
        raise ingest_failure(exc) from None
    until = complete_before(month, HOT_START.isoformat())
    info = compact_month(store, month, until, changed=wanted if wanted else None)
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(layout.archive_key(month))),
            "complete_before": until,
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
