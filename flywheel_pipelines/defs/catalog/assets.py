"""The episode catalog: every episode of the fleet, searchable."""


import collections

import dagster as dg

from flywheel_pipelines.defs.automation import FOLLOW_UPSTREAM
from flywheel_pipelines.defs.episodes.assets import EPISODE_TABLE, episodes
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.catalog import CATALOG_KEY, build_catalog, catalog_hash


@dg.asset(
    deps=[episodes],
    group_name="catalog",
    kinds={"python", "parquet"},
    owners=["team:robot-data"],
    automation_condition=FOLLOW_UPSTREAM,
)
def episode_catalog(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Every episode of the fleet with robot, day, task, outcome, tags and quality figures
    (`flywheel episodes search` queries it)."""
    store = lake.lake()
    keys = [o.key for o in store.list("episodes/") if o.key.endswith("/" + EPISODE_TABLE)]
    table = build_catalog(store.read_parquet(k) for k in keys)
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
            "robot_days": len(keys),
            "outcomes": dict(by_outcome),
            "quality_ok": sum(r["quality_ok"] for r in rows),
            "interventions": sum(r["intervention"] for r in rows),
            "by_robot": dg.MetadataValue.md(
                markdown.table(["robot", "episodes", "success", "failure", "quality issues"], per_robot)),
        },
        data_version=dg.DataVersion(catalog_hash(table)),
    )
