"""Governance as Dagster sees it: the retention policy (written by people) and the retention sweep."""

import datetime as dt

import dagster as dg

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import markdown
from flywheel_pipelines.lib.governance import policy, retention

retention_policy = dg.AssetSpec(
    "retention_policy",
    description="The lake's retention policy (governance/policy/v<N>.yaml, append-only): days raw logs holding "
                "camera, audio or other topics are kept. Set with `flywheel governance policy set --file`.",
    group_name=group_of("retention_policy"),
    kinds={"yaml"},
    owners=["team:oncall"],
)


@dg.asset(
    # Reads the policy, every robot-day manifest (topics) and the raw listing; for an expired log,
    # the lineage index and the datasets built on it (does a dataset embed its pixels?).
    deps=[retention_policy, dg.AssetDep("raw_fleet_logs", partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep("log_manifest", partition_mapping=dg.AllPartitionMapping()), "lineage_index", "curated_dataset"],
    group_name=group_of("retention_sweep"),
    kinds={"python", "json"},
    owners=["team:oncall"],
)
def retention_sweep(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Raw logs the retention policy expires, deleted behind tombstones (governance/tombstones/);
    datasets that embedded their pixels flagged and their rebuild requested."""
    store = lake.lake()
    try:
        current = policy.current(store)
    except policy.PolicyError as exc:
        raise dg.Failure(f"retention policy unreadable: {exc}") from None
    today = dt.datetime.now(dt.UTC).date()
    if current is None:
        context.log.info("no retention policy set: nothing expires")
        return dg.MaterializeResult(metadata={"policy_version": None, "expired": 0, "today": today.isoformat()})
    result = retention.sweep(store, current, today=today)
    for error in result.errors:
        context.log.error(error)
    context.log.info(f"retention v{current.version}: {len(result.tombstones)} raw logs deleted, "
                     f"{result.plan.kept} kept, {len(result.flagged_datasets)} datasets flagged")
    rows = [(t.key, t.size, t.rule) for t in result.tombstones[:50]]
    meta = {
        "policy_version": current.version,
        "retention_days": current.retention_days,
        "today": today.isoformat(),
        "expired": len(result.tombstones),
        "bytes_deleted": sum(t.size for t in result.tombstones),
        "kept": result.plan.kept,
        "not_yet_described": len(result.plan.unclassified),
        "flagged_datasets": [f"{d['name']}/{d['version']}" for d in result.flagged_datasets],
        "rebuild_requests": len(result.rebuild_requests),
        "errors": len(result.errors),
        "deleted": dg.MetadataValue.md(markdown.table(["raw log", "bytes", "rule"], rows)),
    }
    if result.errors:
        # The logs that could go went; the rest are named, and the next daily run tries again.
        raise dg.Failure(f"{len(result.errors)} expired raw logs not deleted: " + "; ".join(result.errors[:5]),
                         metadata=meta)
    return dg.MaterializeResult(metadata=meta)
