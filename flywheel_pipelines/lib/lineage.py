"""Lineage of a release: release -> policy -> MLflow run -> dataset -> episodes -> raw files."""

from __future__ import annotations

from collections import defaultdict


def build_lineage(*, release: dict, policy: dict, dataset_manifest: dict, evaluation: dict) -> dict:
    """The lineage document shipped as lineage.json in every release bundle."""
    episodes = [
        {"episode_id": e["episode_id"], "episode_index": e["episode_index"], "split": e["split"],
         "robot": e["robot"], "date": e["date"], "outcome": e["outcome"], "num_frames": e["num_frames"],
         "start_ns": e["start_ns"], "end_ns": e["end_ns"], "raw_files": e["raw_files"]}
        for e in dataset_manifest["episodes"]
    ]
    raw: dict[tuple[str, str], dict] = {}
    for e in episodes:
        for f in e["raw_files"]:
            entry = raw.setdefault((f["key"], f["sha256"]), {"key": f["key"], "sha256": f["sha256"],
                                                             "robot": e["robot"], "date": e["date"], "episodes": 0})
            entry["episodes"] += 1
    return {
        "schema": "flywheel-lineage-v1",
        "release": release,
        "policy": policy,
        "evaluation": {"gate": evaluation["gate"], "suite": evaluation["suite"],
                       "success_rate": evaluation["summaries"][0]["success_rate"]},
        "dataset": {"name": dataset_manifest["name"], "version": dataset_manifest["version"],
                    "spec": dataset_manifest["spec"], "embodiment": dataset_manifest["embodiment"],
                    "splits": dataset_manifest["splits"], "frames": dataset_manifest["frames"]},
        "episodes": episodes,
        "raw_files": sorted(raw.values(), key=lambda r: r["key"]),
    }


def lineage_summary(lineage: dict) -> dict:
    """Robots and days behind a release, with episode counts: the on-call engineer's first question."""
    by_robot: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in lineage["episodes"]:
        by_robot[e["robot"]][e["date"]] += 1
    return {robot: dict(sorted(days.items())) for robot, days in sorted(by_robot.items())}
