"""Every lake path of data governance, named once (to be folded into lib/layout.py).

::

    governance/policy/v<N>.yaml                          the retention policy, one file per version (append-only)
    governance/tombstones/robot=<id>/date=<day>/<log>.<sha16>.<status>.json   what replaced a deleted raw log
    governance/erasures/<erasure id>/<time>-<step>.json  an erasure's audit trail (append-only entries)
    governance/rebuilds/<time>-<request id>.json         a dataset to rebuild without deleted content
"""

from __future__ import annotations

import datetime as dt
import re

from flywheel_pipelines.lib import ids

GOVERNANCE_PREFIX = "governance"
POLICY_PREFIX = f"{GOVERNANCE_PREFIX}/policy"
TOMBSTONE_PREFIX = f"{GOVERNANCE_PREFIX}/tombstones"
ERASURE_PREFIX = f"{GOVERNANCE_PREFIX}/erasures"
REBUILD_PREFIX = f"{GOVERNANCE_PREFIX}/rebuilds"

_POLICY_RE = re.compile(r"^v([1-9][0-9]{0,5})\.yaml$")
_ERASURE_RE = re.compile(r"^er-[0-9a-f]{12}$")


def policy_key(version: int) -> str:
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"invalid policy version {version!r}")
    return f"{POLICY_PREFIX}/v{version}.yaml"


def policy_version(key: str) -> int | None:
    """The version a policy key names, or None for anything else under the prefix."""
    match = _POLICY_RE.fullmatch(key.rsplit("/", 1)[-1])
    return int(match[1]) if match else None


def tombstone_robot_prefix(robot: str) -> str:
    return f"{TOMBSTONE_PREFIX}/robot={ids.robot_id(robot)}/"


TOMBSTONE_STATUSES = ("expired", "erased")


def tombstone_key(raw_key: str, sha256: str, status: str) -> str:
    """One tombstone per (raw log, content): a re-run finds it, a re-upload of other bytes gets its
    own. The name carries robot, day, log and status, so lineage reads marks from a listing alone."""
    robot, day, file = ids.parse_raw_key(raw_key.rstrip("/"))
    log = file.split("/", 1)[0]
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise ValueError(f"invalid sha256 {sha256!r} for {raw_key}")
    if status not in TOMBSTONE_STATUSES:
        raise ValueError(f"invalid tombstone status {status!r}")
    return f"{TOMBSTONE_PREFIX}/robot={robot}/date={day}/{log}.{sha256[:16]}.{status}.json"


def parse_tombstone_key(key: str) -> tuple[str, str] | None:
    """(raw log key without a folder's trailing /, status) named by a tombstone key, else None."""
    parts = key[len(TOMBSTONE_PREFIX) + 1:].split("/") if key.startswith(TOMBSTONE_PREFIX + "/") else []
    if len(parts) != 3 or not parts[2].endswith(".json"):
        return None
    bits = parts[2][:-len(".json")].rsplit(".", 2)
    if len(bits) != 3 or bits[2] not in TOMBSTONE_STATUSES:
        return None
    return f"raw/{parts[0]}/{parts[1]}/{bits[0]}", bits[2]


def erasure_prefix(erasure_id: str) -> str:
    if not isinstance(erasure_id, str) or not _ERASURE_RE.fullmatch(erasure_id):
        raise ValueError(f"invalid erasure id {erasure_id!r}")
    return f"{ERASURE_PREFIX}/{erasure_id}"


def stamp(when: dt.datetime) -> str:
    """A sortable UTC time for append-only record names."""
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def erasure_entry_key(erasure_id: str, step: str, when: dt.datetime) -> str:
    return f"{erasure_prefix(erasure_id)}/{stamp(when)}-{ids.name(step, what='erasure step')}.json"


def rebuild_key(request_id: str, when: dt.datetime) -> str:
    return f"{REBUILD_PREFIX}/{stamp(when)}-{ids.name(request_id, what='rebuild request id')}.json"


# Existing lake paths the governance code reads and rewrites. They mirror the keys spelled in
# defs/ingest/assets.py (manifest_key), defs/episodes/assets.py (episodes_prefix, FRAMES) and
# defs/curation/assets.py (dataset_prefix) until #17's lib/layout.py names them all once.
MANIFEST_PREFIX = "manifests/"
EPISODE_TABLE = "episodes.parquet"
FRAME_TABLE = "frames.parquet"


GOLDEN_PREFIX = "golden/"  # defs/evaluation/assets.py: GOLDEN_POINTER, golden_prefix, GOLDEN_FILE
GOLDEN_POINTER = "golden/current.json"
GOLDEN_FILE = "scenarios.json"


def manifest_key(robot: str, day: str) -> str:
    return f"manifests/robot={ids.robot_id(robot)}/date={ids.day(day)}/manifest.json"


def episodes_prefix(robot: str, day: str) -> str:
    return f"episodes/robot={ids.robot_id(robot)}/date={ids.day(day)}"


def dataset_prefix(name: str, version: str) -> str:
    return f"datasets/{ids.name(name, what='dataset name')}/{ids.name(version, what='dataset version')}"
