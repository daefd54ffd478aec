"""Ingest: the raw logs robots upload, and a per-file manifest with an integrity verdict."""


import dagster as dg

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.k8s import INGEST_TAGS
from flywheel_pipelines.defs.partitions import ROBOT_DAY, robot_day
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import ids, markdown
from flywheel_pipelines.lib.rosbag.manifest import DAY_VERDICTS, DUPLICATE, inspect_log, mark_duplicates
from flywheel_pipelines.lib.storage import Lake, raw_fingerprint

OWNERS = ["team:robot-data"]

raw_fleet_logs = dg.AssetSpec(
    "raw_fleet_logs",
    description="ROS2 MCAP logs exactly as robots uploaded them, under raw/robot=<id>/date=<day>/ (immutable).",
    partitions_def=ROBOT_DAY,
    group_name=group_of("raw_fleet_logs"),
    kinds={"mcap"},
    owners=OWNERS,
)


def manifest_key(robot: str, day: str) -> str:
    return f"manifests/robot={robot}/date={day}/manifest.json"


def raw_prefix(robot: str, day: str) -> str:
    return f"raw/robot={robot}/date={day}/"


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


def open_log(lake: Lake, key: str):
    """A local path for one log: a file, or a rosbag2 folder (its key ends in /)."""
    return lake.local_dir(key) if key.endswith("/") else lake.local_path(key)


def build_manifest(lake: Lake, robot: str, day: str) -> dict:
    """One entry per log: a file, or a rosbag2 folder (keyed by its prefix, ending in /)."""
    logs: list[str] = []
    for obj in lake.list(raw_prefix(robot, day)):
        try:
            log = ids.raw_log_key(obj.key)
        except ids.InvalidIdentifier:
            log = obj.key  # an odd name still gets inspected and a verdict, never silently dropped
        if log not in logs:
            logs.append(log)
    files = []
    for key in logs:
        with open_log(lake, key) as path:
            files.append(inspect_log(path, key=key).to_dict())
    previous = lake.read_json(manifest_key(robot, day))["files"] if lake.exists(manifest_key(robot, day)) else None
    files = mark_duplicates(files, previous=previous)
    # The sensor fingerprints raw objects one by one: a bag folder contributes each of its parts.
    objects = []
    for f in files:
        if f["key"].endswith("/"):
            objects.extend((f["key"] + relative, sha256) for relative, sha256 in f["parts"])
        else:
            objects.append((f["key"], f["sha256"]))
    refused = [{"key": key, "reason": why} for key, why in lake.refused(raw_prefix(robot, day))]
    return {"robot": robot, "date": day, "files": files, "raw_fingerprint": raw_fingerprint(objects),
            **({"refused": refused} if refused else {})}


def write_manifest(lake: Lake, robot: str, day: str, manifest: dict | None = None) -> dict:
    """Build (unless given) and store one robot-day's manifest; no raw logs is an error naming the folder.
    Shared by ``log_manifest`` (hot days) and ``episode_archive`` (late uploads to cold days)."""
    manifest = manifest if manifest is not None else build_manifest(lake, robot, day)
    if not manifest["files"]:
        refused = "".join(f"; refused {r['key']}: {r['reason']}" for r in manifest.get("refused", []))
        raise dg.Failure(f"no raw logs under {lake.uri(raw_prefix(robot, day).rstrip('/'))}/{refused}")
    lake.write_json(manifest_key(robot, day), manifest)
    return manifest


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
    and an integrity verdict (ok / recovered / empty / rejected)."""
    robot, day = robot_day(context)
    store = lake.lake()
    manifest = write_manifest(store, robot, day)
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
