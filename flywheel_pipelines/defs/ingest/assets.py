"""Ingest: the raw logs robots upload, and a per-file manifest with an integrity verdict."""


import dagster as dg

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import ROBOT_DAY, robot_day
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import layout, markdown
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.manifest import ingest_manifest
from flywheel_pipelines.lib.ingest.uploads import stat_fingerprint
from flywheel_pipelines.lib.layout import manifest_key
from flywheel_pipelines.lib.rosbag.manifest import DAY_VERDICTS, DUPLICATE

OWNERS = ["team:robot-data"]

raw_fleet_logs = dg.AssetSpec(
    "raw_fleet_logs",
    description=f"ROS2 MCAP logs exactly as robots uploaded them, under {layout.RAW_DAY_FORMAT} (immutable).",
    partitions_def=ROBOT_DAY,
    group_name=group_of("raw_fleet_logs"),
    kinds={"mcap"},
    owners=OWNERS,
)


def _log_name(key: str) -> str:
    """``run.mcap`` for a file, ``run_7/`` for a bag folder."""
    return key.rstrip("/").rsplit("/", 1)[-1] + ("/" if key.endswith("/") else "")


def _lost(entry: dict) -> str:
    """Lost messages and the log-time ranges they fell in (int64 ns), as the manifest records them."""
    if entry["verdict"] not in ("recovered", "rejected"):
        return ""
    count = entry.get("lost_messages")
    ranges = entry.get("lost_ranges") or []
    text = "unknown count" if count is None else f"{count} msgs"
    return text + "".join(f" [{a}..{b}]" for a, b in ranges[:3]) + (f" +{len(ranges) - 3} ranges" if len(ranges) > 3 else "")


@dg.asset(
    deps=[raw_fleet_logs],
    partitions_def=ROBOT_DAY,
    group_name=group_of("log_manifest"),
    kinds={"python", "json"},
    owners=OWNERS,
    pool="ingest",
    op_tags=INGEST_TAGS,
)
def log_manifest(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Per raw file of a robot-day: sha256, size, topics with types, counts, rates, time range
    and an integrity verdict (ok / recovered / empty / rejected). Records the robot's join day."""
    robot, day = robot_day(context)
    store = lake.lake()
    # Listed before the files are hashed: a file that changes after this listing shows a new stat
    # to the sensor, which then compares content again (never a change taken for an ingested one).
    stat = stat_fingerprint(store.list(layout.raw_prefix(robot, day)))
    try:
        manifest = ingest_manifest(store, robot, day)
    except IngestError as exc:
        raise dg.Failure(str(exc)) from None
    files = manifest["files"]
    verdicts = {v: sum(f["verdict"] == v for f in files) for v in DAY_VERDICTS}
    rows = [(_log_name(f["key"]), f["verdict"], f["message_count"], len(f["topics"]), f"{f['size'] / 1e6:.2f}",
             _lost(f), f.get("reason") or "") for f in files]
    for f in files:
        if f["verdict"] != "ok":
            context.log.warning(f"{f['key']}: {f['verdict']}: {f.get('reason')}")
    for r in manifest.get("refused", []):
        context.log.warning(f"{r['key']}: {r['reason']}")
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.path(store.uri(manifest_key(robot, day))),
            "raw_fingerprint": manifest["raw_fingerprint"],
            "raw_stat_fingerprint": stat,
            "files": len(files),
            "bytes": sum(f["size"] for f in files),
            "messages": sum(f["message_count"] for f in files),
            "ok": verdicts["ok"],
            "recovered": verdicts["recovered"],
            "empty": verdicts["empty"],
            "rejected": verdicts["rejected"],
            "duplicate": verdicts[DUPLICATE],
            "rejected_files": [f["key"] for f in files if f["verdict"] == "rejected"],
            "refused": [r["key"] for r in manifest.get("refused", [])],
            "files_table": dg.MetadataValue.md(
                markdown.table(["log", "verdict", "messages", "topics", "MB", "lost", "reason"], rows)),
        }
    )
