"""The episode catalog: every episode of the fleet, searchable."""


import collections

import dagster as dg

from flywheel_pipelines.defs.automation import FOLLOW_UPSTREAM
from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.partitions import FLEET_START
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.defs.ui_metadata import rounded, table_metadata
from flywheel_pipelines.lib import fleet, markdown, quarantine
from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog, catalog_hash


@dg.asset(
    deps=["episodes", "episode_archive", "quarantine_log"],
    group_name=group_of("episode_catalog"),
    kinds={"python", "parquet"},
    owners=["team:robot-data"],
    automation_condition=FOLLOW_UPSTREAM,
)
def episode_catalog(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Every episode of the fleet with robot, day, task, outcome, tags and quality figures
    (`flywheel episodes search` queries it). Cold months come from their archives (one file a
    month), every other robot-day from its own episode table."""
    store = lake.lake()
    archives = fleet.read_archives(store)
    sources, per_day = fleet.catalog_sources(store, archives, start=FLEET_START)

    def tables():
        for key, before in sources:
            table = store.read_parquet(key)
            yield fleet.filter_before(table, before) if before is not None else table

    records = quarantine.read_records(store)
    table = quarantine.mark(build_catalog(tables()), records)
    store.write_parquet(CATALOG_KEY, table)
    rows = table.to_pylist()
    by_outcome = collections.Counter(r["outcome"] for r in rows)
    by_robot = collections.Counter(r["robot"] for r in rows)
    per_robot = []
    for robot in sorted(by_robot):
        mine = [r for r in rows if r["robot"] == robot]
        per_robot.append((robot, len(mine), sum(r["outcome"] == "success" for r in mine),
                          sum(r["outcome"] == "failure" for r in mine), sum(not r["quality_ok"] for r in mine)))
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(CATALOG_KEY)),
            "content_hash": catalog_hash(table),
            "episodes": table.num_rows,
            "robots": len(by_robot),
            "robot_days": len(set(zip(table.column("robot").to_pylist(), table.column("date").to_pylist(), strict=True))),
            "month_archives": len(archives),
            "robot_day_tables_read": per_day,
            "outcomes": dict(by_outcome),
            "quality_ok": sum(r["quality_ok"] for r in rows),
            "interventions": sum(r["intervention"] for r in rows),
            "quarantined": sum(r["quarantined"] for r in rows),
            "active_quarantines": len(quarantine.active(records)),
            "by_robot": dg.MetadataValue.md(
                markdown.table(["robot", "episodes", "success", "failure", "quality issues"], per_robot)),
            "duration_h": rounded(sum(r["duration_s"] or 0.0 for r in rows) / 3600),
            **table_metadata(table.schema, table.num_rows),
        },
        data_version=dg.DataVersion(catalog_hash(table)),
    )
