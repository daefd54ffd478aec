"""On-call assets: the lineage index (both directions) and the incident report of a release."""

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.automation import FOLLOW_UPSTREAM
from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.defs.upstream import upstream_metadata
from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib import lineage_index as lineage_lib

OWNERS = ["team:oncall"]


@dg.asset(
    deps=["episode_catalog", "curated_dataset", "policy_candidate", "eval_report", "release_bundle"],
    group_name=group_of("lineage_index"),
    kinds={"python", "parquet"},
    owners=OWNERS,
    automation_condition=FOLLOW_UPSTREAM,
)
def lineage_index(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Every lineage edge, compacted for queries in both directions (`flywheel lineage --raw/--robot/
    --episode/--dataset/--policy`): raw file -> episode (catalog) -> dataset -> policy -> evaluation
    -> release. Edge records are written by the assets that create each link; this asset only
    compacts them, and queries also read records newer than the last compaction."""
    store = lake.lake()
    info = lineage_lib.build_index(store)
    rows, artifacts = info["rows"], info["artifacts"]
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(lineage_lib.INDEX_PREFIX)),
            "build_id": info["build_id"],
            "catalog_episodes": info["catalog"]["episodes"],
            "raw_file_edges": rows["raw_files"],
            "dataset_members": rows["dataset_members"],
            "datasets": artifacts["datasets"],
            "policies": artifacts["policies"],
            "evaluations": artifacts["evals"],
            "releases": artifacts["releases"],
            "edge_files": info["edge_files"],
        },
        data_version=dg.DataVersion(info["build_id"]),
    )


class IncidentConfig(dg.Config):
    release: str = Field(default="", description="The release to investigate, as NAME/VERSION (e.g. reach-bc/"
                         "05a9684cfeec). Empty: the latest release_bundle.")
    top_features: int = Field(default=3, description="Deviating features named per robot-day.")
    rows: int = Field(default=25, description="Robot-days shown in the UI table (all are in the JSON).")


@dg.asset(
    deps=["release_bundle", "curated_dataset", "episode_catalog", "golden_scenarios"],
    group_name=group_of("incident_report"),
    kinds={"python"},
    owners=OWNERS,
)
def incident_report(context: dg.AssetExecutionContext, config: IncidentConfig, lake: LakeResource) -> dg.MaterializeResult:
    """The robot-days behind a release, ranked by how far their training data deviates from the rest
    of the fleet (observation/action offsets and spread, action-state residual), with their share
    of the training frames, quality-check history and golden failures. Same as `flywheel incident`."""
    from flywheel_pipelines.lib import incident

    store = lake.lake()
    if config.release:
        name, sep, version = config.release.partition("/")
        try:
            if not sep:
                raise ids.InvalidIdentifier(f"release {config.release!r}: expected NAME/VERSION")
            prefix = layout.release_prefix(name, version)
        except ids.InvalidIdentifier as exc:
            raise dg.Failure(str(exc)) from None
    else:
        prefix = upstream_metadata(context, "release_bundle")["prefix"]
    if not store.exists(f"{prefix}/lineage.json"):
        raise dg.Failure(f"no release bundle at {store.uri(prefix)}")
    try:
        report = incident.load_incident_report(store, prefix, top_k=config.top_features)
    except incident.IncidentError as exc:
        raise dg.Failure(str(exc)) from None
    doc = incident.to_dict(report)
    key = incident.report_key(report.subject["name"], report.subject["version"])
    store.write_json(key, doc)
    top = report.rows[0] if report.rows else None
    outliers = [f"{r.robot}/{r.date}" for r in report.rows if r.outlier]
    context.log.info(f"incident report for {prefix}: {len(report.rows)} robot-days, outliers: {outliers or 'none'}")
    return dg.MaterializeResult(
        metadata={
            "release": f"{report.subject['name']} {report.subject['version']}",
            "dataset": f"{report.subject['dataset']['name']} {report.subject['dataset']['version']}",
            "uri": dg.MetadataValue.path(store.uri(key)),
            "robot_days": len(report.rows),
            "outliers": outliers,
            "top_robot_day": f"{top.robot} {top.date}" if top else "none",
            "top_score": round(top.score, 2) if top else 0.0,
            "top_share_of_training_frames": round(top.share_of_training_frames, 4) if top else 0.0,
            "ranking": dg.MetadataValue.md(incident.to_markdown(report, limit=config.rows)),
        },
    )
