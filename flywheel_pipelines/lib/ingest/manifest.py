"""A robot-day's log manifest: one entry per raw log with its integrity verdict, built from raw/."""

from __future__ import annotations

from flywheel_pipelines.lib import fleet, ids, layout
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.rosbag.manifest import inspect_log, mark_duplicates
from flywheel_pipelines.lib.storage import Lake, raw_fingerprint


def open_log(lake: Lake, key: str):
    """A local path for one log: a file, or a rosbag2 folder (its key ends in /)."""
    return lake.local_dir(key) if key.endswith("/") else lake.local_path(key)


def raw_logs(lake: Lake, robot: str, day: str) -> list[str]:
    """The logs of a robot-day in listing order: files, and rosbag2 folders (keyed by their prefix)."""
    logs: list[str] = []
    for obj in lake.list(layout.raw_prefix(robot, day)):
        try:
            log = layout.raw_log_key(obj.key)
        except ids.InvalidIdentifier:
            log = obj.key  # an odd name still gets inspected and a verdict, never silently dropped
        if log not in logs:
            logs.append(log)
    return logs


def build_manifest(lake: Lake, robot: str, day: str) -> dict:
    """One entry per log: a file, or a rosbag2 folder (keyed by its prefix, ending in /)."""
    files = []
    for key in raw_logs(lake, robot, day):
        with open_log(lake, key) as path:
            files.append(inspect_log(path, key=key).to_dict())
    key = layout.manifest_key(robot, day)
    previous = lake.read_json(key)["files"] if lake.exists(key) else None
    files = mark_duplicates(files, previous=previous)
    refused = [{"key": key, "reason": why} for key, why in lake.refused(layout.raw_prefix(robot, day))]
    return {"robot": robot, "date": day, "files": files, "raw_fingerprint": manifest_fingerprint(files),
            **({"refused": refused} if refused else {})}


def manifest_fingerprint(files: list[dict]) -> str:
    """The raw fingerprint of a manifest's files, as the upload sensor computes it from raw objects:
    a bag folder contributes each of its parts."""
    objects = []
    for f in files:
        if f["key"].endswith("/"):
            objects.extend((f["key"] + relative, sha256) for relative, sha256 in f["parts"])
        else:
            objects.append((f["key"], f["sha256"]))
    return raw_fingerprint(objects)


def write_manifest(lake: Lake, robot: str, day: str, manifest: dict | None = None) -> dict:
    """Build (unless given) and store one robot-day's manifest; no raw logs is an error naming the folder.

    Shared by ``log_manifest`` (hot days) and ``episode_archive`` (late uploads to cold days).

    Raises:
        IngestError: the robot-day has no raw log (the refused entries are named).
    """
    manifest = manifest if manifest is not None else build_manifest(lake, robot, day)
    if not manifest["files"]:
        refused = "".join(f"; refused {r['key']}: {r['reason']}" for r in manifest.get("refused", []))
        raise IngestError(f"no raw logs under {lake.uri(layout.raw_prefix(robot, day).rstrip('/'))}/{refused}")
    lake.write_json(layout.manifest_key(robot, day), manifest)
    return manifest


def ingest_manifest(lake: Lake, robot: str, day: str, manifest: dict | None = None) -> dict:
    """``write_manifest``, then record the robot's join day (``fleet.record_join`` keeps the earliest).

    The join record is written here, by the run that ingests the robot-day, and not by the upload
    sensor: a sensor tick only lists and stats (see ``uploads``), and every robot-day the sensor
    requests passes through here (hot days via ``log_manifest``, cold ones via ``episode_archive``),
    so the join day is the earliest day ingested for the robot, whichever order the runs finish in.
    """
    manifest = write_manifest(lake, robot, day, manifest)
    fleet.record_join(lake, robot, day)
    return manifest
