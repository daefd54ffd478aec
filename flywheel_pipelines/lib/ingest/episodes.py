"""One robot-day's episodes: standardize the usable logs of its manifest, validate, publish whole."""

from __future__ import annotations

import contextlib
import json

import pyarrow.parquet as pq

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.episodes.embodiment import Embodiment, MappingError
from flywheel_pipelines.lib.episodes.standardize import SourceFile, Standardized, standardize
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.manifest import open_log
from flywheel_pipelines.lib.quality import QualityError, SuiteResult, validate_episodes
from flywheel_pipelines.lib.storage import Lake, staging_dir


def ingest_episodes(store: Lake, robot: str, day: str, emb: Embodiment) -> tuple[Standardized, SuiteResult]:
    """Standardize, validate and publish one robot-day from its stored manifest; returns
    (standardize result, GX verdict). Shared by ``episodes`` (hot days) and ``episode_archive``.

    Raises:
        IngestError: a robot-day that would silently yield nothing, naming the files, topics,
            encodings and the cause (mapped topics that hold messages but give no frame, or logs
            whose messages are all on topics the mapping does not name), or one whose mapping
            does not fit; nothing is replaced then.
    """
    manifest = store.read_json(layout.manifest_key(robot, day))
    usable = [f for f in manifest["files"] if f["verdict"] in ("ok", "recovered")]
    rejected = [f["key"] for f in manifest["files"] if f["verdict"] == "rejected"]
    if not usable and rejected:
        others = "" if len(rejected) == len(manifest["files"]) else " (the others hold no messages)"
        raise IngestError(f"robot {robot} on {day}: every raw file was rejected by log_manifest{others}: "
                          + "; ".join(f.get("reason") or f["key"] for f in manifest["files"] if f["verdict"] == "rejected"))
    with contextlib.ExitStack() as stack:
        files = [SourceFile(f["key"], stack.enter_context(open_log(store, f["key"])), f["sha256"]) for f in usable]
        try:
            result = standardize(files, emb, robot=robot, day=day)
        except MappingError as exc:  # the mapping does not fit these logs: fail before anything is replaced
            raise IngestError(f"robot {robot} on {day}: mapping {emb.name} v{emb.version}: {exc}") from None
    if result.empty_cause is not None:
        raise IngestError(result.empty_cause, accounting=result.accounting)
    unmapped = unmapped_cause(usable, result.accounting, emb, robot, day)
    if unmapped is not None:
        raise IngestError(unmapped)
    # Validated before publishing: a suite that cannot run must not leave an unrecorded table behind.
    try:
        verdict = validate_episodes(result.episodes, emb)
    except QualityError as exc:
        raise IngestError(f"{layout.episode_table_key(robot, day)}: {exc}") from None
    with staging_dir() as tmp:
        pq.write_table(result.frames, tmp / layout.FRAMES, compression="zstd")
        pq.write_table(result.episodes, tmp / layout.EPISODE_TABLE, compression="zstd")
        (tmp / layout.ACCOUNTING).write_text(json.dumps(
            {"robot": robot, "date": day, "embodiment": f"{emb.name} v{emb.version} ({emb.content_hash})",
             "totals": accounting_totals(result.accounting), "topics": result.accounting}, indent=1, sort_keys=True))
        store.publish_dir(layout.episodes_prefix(robot, day), tmp, replace=True)
    return result, verdict


def unmapped_cause(usable: list[dict], accounting: list[dict], emb: Embodiment, robot: str, day: str) -> str | None:
    """A day whose logs hold messages, none of them on a mapped topic: the mapping does not fit."""
    if any(row["read"] for row in accounting) or not any(f["message_count"] for f in usable):
        return None
    mapped = sorted({f.topic for f in emb.features} | {i.topic for i in emb.images}
                    | ({emb.events_topic} if emb.events_topic else set()))
    held = "; ".join(f"{f['key']}: " + ", ".join(f"{t['topic']} ({t['encoding']}, {t['count']})"
                                                 for t in f["topics"] if t["count"]) for f in usable if f["message_count"])
    return (f"robot {robot} on {day}: none of the mapped topics ({', '.join(mapped)}; mapping {emb.name} "
            f"v{emb.version}) has a message, but the logs hold messages on other topics: {held}")


def accounting_totals(accounting: list[dict]) -> dict[str, int]:
    """Messages of the mapped topics, summed over files and topics, by where they went."""
    totals = {k: sum(row[k] for row in accounting) for k in ("read", "in_episodes", "outside_episodes", "events",
                                                              "undecodable")}
    totals["dropped"] = sum(sum(row["dropped"].values()) for row in accounting)
    return totals
