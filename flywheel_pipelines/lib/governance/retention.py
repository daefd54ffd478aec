"""Retention: delete the raw logs the policy in force says are expired, behind tombstones.

A raw log's topics (and so its classes) come from its robot-day manifest (``log_manifest``); a
log no manifest describes yet is kept and reported (never delete what was not classified). Each
expired log goes through :func:`deleter.delete_raw_log` with status ``expired`` and its rule.
Datasets that embedded pixels of an expired log (LeRobot features of dtype image or video) are
flagged and a rebuild is requested (:mod:`rebuilds`); the others keep their numeric frames, and
lineage shows them derived from an expired log.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from flywheel_pipelines.lib import ids, layout, lineage_index
from flywheel_pipelines.lib.governance import deleter, rebuilds
from flywheel_pipelines.lib.governance.policy import Policy, classify
from flywheel_pipelines.lib.storage import RAW_PREFIX, Lake

PIXEL_DTYPES = frozenset({"image", "video"})


@dataclass(frozen=True)
class Expiry:
    key: str
    sha256: str
    size: int
    day: str
    topics: tuple[dict, ...]
    rule: str


@dataclass(frozen=True)
class RetentionPlan:
    policy_version: int | None
    expired: tuple[Expiry, ...]
    kept: int
    unclassified: tuple[str, ...]  # raw logs no manifest describes: kept


@dataclass
class SweepResult:
    plan: RetentionPlan
    tombstones: list[deleter.Tombstone] = field(default_factory=list)
    flagged_datasets: list[dict] = field(default_factory=list)
    rebuild_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _present_logs(lake: Lake) -> set[str]:
    out = set()
    for o in lake.list(RAW_PREFIX):
        try:
            out.add(ids.raw_log_key(o.key))
        except ids.InvalidIdentifier:
            continue  # the sensor logs and skips such keys; retention never touches them
    return out


def _manifest_day(key: str) -> tuple[str, str] | None:
    """(robot, day) of a robot-day's manifest key, else None."""
    return layout.parse_manifest_key(key)


def plan(lake: Lake, policy: Policy | None, *, today: dt.date) -> RetentionPlan:
    """Which raw logs the policy expires today (none when no policy was ever set).

    Only the manifests of robot-days that still hold raw logs and are older than the shortest
    retention period are read: a younger day cannot expire, a swept one has nothing left.
    """
    present = _present_logs(lake)
    if policy is None:
        return RetentionPlan(None, (), len(present), ())
    periods = [d for d in policy.retention_days.values() if d is not None]
    cutoff = (today - dt.timedelta(days=min(periods) + 1)).isoformat() if periods else None
    held: dict[tuple[str, str], set[str]] = {}
    for k in present:
        held.setdefault(ids.parse_raw_key(k.rstrip("/"))[:2], set()).add(k)
    described: set[str] = set()
    expired: list[Expiry] = []
    for o in sorted(lake.list(layout.MANIFESTS), key=lambda o: o.key):
        robot_day = _manifest_day(o.key)
        if robot_day is None or robot_day not in held:
            continue
        if cutoff is None or robot_day[1] > cutoff:
            described |= held[robot_day]
            continue
        for f in lake.read_json(o.key).get("files", []):
            key = f["key"]
            described.add(key)
            if key not in present:
                continue
            topics = tuple({"topic": t["topic"], "type": t.get("type")} for t in f.get("topics") or []
                           if (t.get("count") or 0) > 0)
            days, decided_by = policy.keep_days(classify(t["type"] or "") for t in topics)
            if days is not None and (today - dt.date.fromisoformat(robot_day[1])).days > days:
                expired.append(Expiry(key, f["sha256"], f["size"], robot_day[1], topics,
                                      f"{decided_by}: {days} days (policy v{policy.version})"))
    return RetentionPlan(policy.version, tuple(expired), len(present & described) - len(expired),
                         tuple(sorted(present - described)))


def embeds_pixels(lake: Lake, name: str, version: str) -> bool:
    """Whether a dataset version stores image or video features (LeRobot info.json dtypes)."""
    key = f"{layout.dataset_prefix(name, version)}/meta/info.json"
    if not lake.exists(key):
        return False
    features = json.loads(lake.read_bytes(key)).get("features", {})
    return any(f.get("dtype") in PIXEL_DTYPES for f in features.values())


def _datasets_of(lake: Lake, raw_key: str) -> list[lineage_index.ArtifactNode]:
    try:
        result = lineage_index.query(lake, raw=raw_key)
    except lineage_index.LineageError:
        return []  # never ingested into a dataset
    return [n for n in result.downstream if n.kind == "dataset"]


def sweep(lake: Lake, policy: Policy | None, *, today: dt.date,
          now: Callable[[], dt.datetime] | None = None) -> SweepResult:
    """Apply the policy: delete every expired log (tombstone first), flag pixel datasets and
    request their rebuild. A log that cannot be deleted is reported, the others still go."""
    result = SweepResult(plan(lake, policy, today=today))
    kwargs = {"now": now} if now else {}
    for e in result.plan.expired:
        try:
            result.tombstones.append(deleter.delete_raw_log(
                lake, e.key, status="expired", rule=e.rule, topics=list(e.topics), expected_sha256=e.sha256, **kwargs))
        except deleter.DeletionError as exc:
            result.errors.append(str(exc))
            continue
        for d in _datasets_of(lake, e.key):
            if not embeds_pixels(lake, d.name, d.version):
                continue
            manifest = lake.read_json(layout.dataset_manifest_key(d.name, d.version))
            _, key, _ = rebuilds.request_rebuild(lake, name=d.name, version=d.version, spec=manifest["spec"],
                                                 cause=f"expired:{e.sha256}",
                                                 why=f"embeds pixels of expired raw log {e.key}", **kwargs)
            result.flagged_datasets.append({"name": d.name, "version": d.version, "raw_key": e.key})
            result.rebuild_requests.append(key)
    return result
