"""The lake's path layout: every prefix, key and file name of the lake, named once (no Dagster here).

Existing lakes depend on these keys byte for byte, so a change here is a data migration, not a
refactor. Every identifier that becomes part of a key (robot id, day, month, dataset / policy /
release name and version, model, incident or rollout id) is validated first (``lib/ids.py``):
a hostile value such as ``"../x"`` or ``"a/b"`` raises ``ids.InvalidIdentifier`` naming it and
never reaches a path. ``flywheel_pipelines_tests/test_layout.py`` fails when a lake path is spelled
anywhere else in the package.

::

    raw/robot=<id>/date=<YYYY-MM-DD>/<file> | <bag>/<file>      immutable uploads
    manifests/robot=<id>/date=<day>/manifest.json               per-file integrity verdicts
    episodes/robot=<id>/date=<day>/{frames,episodes}.parquet + accounting.json
    archive/month=<YYYY-MM>/episodes.parquet + archive.json     compacted cold months
    fleet/robots/robot=<id>.json                                robot join days
    catalog/episodes.parquet
    golden/<version>/scenarios.json, golden/current.json
    datasets/<name>/<version>/ (+ manifest.json)
    policies/<name>/<version>/ (policy.onnx, metrics.json, config.json, ...)
    evals/<policy-version>/ (summary.json, episodes.parquet, report files)
    promotions/<model>/                                         promotion log
    releases/<name>/<version>/
    lineage/edges/{datasets,policies,evals,releases}/..., lineage/index/
    quarantine/records/, incidents/reports/<name>/<version>.json, incidents/log/<id>/
    field/kpis/<catalog-version>/
    deployments/<model>/{manifests/<seq>.json,current.json,rollouts/<id>/}
"""

from __future__ import annotations

import datetime as dt
import re

from flywheel_pipelines.lib import ids

# --- file names inside an artifact folder -----------------------------------------------------------
MANIFEST = "manifest.json"  # a robot-day's log manifest, and a curated dataset's manifest
FRAMES = "frames.parquet"
EPISODE_TABLE = "episodes.parquet"
ACCOUNTING = "accounting.json"  # where every message of every mapped topic went (see standardize.account)
ARCHIVE_INFO = "archive.json"
CURRENT = "current.json"
POLICY_ONNX = "policy.onnx"
POLICY_CONFIG = "config.json"
METRICS = "metrics.json"
GOLDEN_FILE = "scenarios.json"
EVAL_SUMMARY = "summary.json"
EVAL_RESULTS = "episodes.parquet"  # every evaluation episode of every policy
FIELD_KPIS = "kpis.parquet"
FIELD_SUMMARY = "summary.json"

# --- top-level prefixes ---------------------------------------------------------------------------
RAW = "raw/"
MANIFESTS = "manifests/"
EPISODES = "episodes/"
ARCHIVE = "archive/"
FLEET_ROBOTS = "fleet/robots/"
CATALOG_KEY = "catalog/" + EPISODE_TABLE
GOLDEN = "golden"
GOLDEN_POINTER = f"{GOLDEN}/{CURRENT}"  # the newest golden set: {"version", "prefix"}
DATASETS = "datasets"
POLICIES = "policies"
EVALS = "evals"
PROMOTIONS = "promotions"
RELEASES = "releases"
LINEAGE = "lineage"
LINEAGE_EDGES = f"{LINEAGE}/edges"
DATASET_EDGES = f"{LINEAGE_EDGES}/datasets"
POLICY_EDGES = f"{LINEAGE_EDGES}/policies"
EVAL_EDGES = f"{LINEAGE_EDGES}/evals"
RELEASE_EDGES = f"{LINEAGE_EDGES}/releases"
LINEAGE_INDEX = f"{LINEAGE}/index"
QUARANTINE_RECORDS = "quarantine/records"
INCIDENT_REPORTS = "incidents/reports"
INCIDENT_LOG = "incidents/log"
FIELD = "field"
DEPLOYMENTS = "deployments"

# --- partition folder names (Hive style) ------------------------------------------------------------
ROBOT_DIR = "robot="
DATE_DIR = "date="
MONTH_DIR = "month="

# What a raw key looks like, for messages and help texts.
RAW_KEY_FORMAT = f"{RAW}{ROBOT_DIR}<id>/{DATE_DIR}<YYYY-MM-DD>/<file>"
RAW_DAY_FORMAT = f"{RAW}{ROBOT_DIR}<id>/{DATE_DIR}<day>/"
RAW_LOG_FORMAT = f"{RAW_DAY_FORMAT}<file>"
DATASET_FORMAT = f"{DATASETS}/<name>/<version>/"
POLICY_FORMAT = f"{POLICIES}/<name>/<version>/"
RELEASE_FORMAT = f"{RELEASES}/<name>/<version>"
_RAW_KEY_RE = re.compile(rf"^{RAW}{ROBOT_DIR}([^/]+)/{DATE_DIR}([^/]+)/([^/]+)(?:/([^/]+))?$")


def _name(value: str, what: str) -> str:
    return ids.name(value, what=what)


# --- raw uploads ----------------------------------------------------------------------------------


def raw_robot_prefix(robot: str) -> str:
    """``raw/robot=<id>/``: every upload of one robot."""
    return f"{RAW}{ROBOT_DIR}{ids.robot_id(robot)}/"


def raw_prefix(robot: str, day: str) -> str:
    """``raw/robot=<id>/date=<day>/``: one robot-day's uploads (ends in /, so it never matches a longer id)."""
    return f"{raw_robot_prefix(robot)}{DATE_DIR}{ids.day(day)}/"


def raw_key(robot: str, day: str, file: str) -> str:
    """The key of one uploaded log file."""
    return raw_prefix(robot, day) + _name(file, "file name")


def parse_raw_key(key: str) -> tuple[str, str, str]:
    """Split a raw object key into validated (robot, day, file).

    A log is a file (``raw/robot=<id>/date=<day>/<file>``: an .mcap or a ROS 1 .bag) or a rosbag2
    folder (``raw/robot=<id>/date=<day>/<bag>/<file>``: metadata.yaml and its .mcap / .db3
    parts); for a file inside a bag folder, ``file`` is ``<bag>/<file>``.
    """
    match = _RAW_KEY_RE.fullmatch(key)
    if not match:
        raise ids.InvalidIdentifier(f"not a raw log key {key!r}: expected {RAW_KEY_FORMAT} or .../<bag folder>/<file>")
    robot, d, first, second = match.groups()
    file = _name(first, "file name")
    if second is not None:
        file = f"{file}/{_name(second, 'file name')}"
    return ids.robot_id(robot), ids.day(d), file


def raw_log_key(key: str) -> str:
    """The log a raw object belongs to: the file's own key, or its bag folder's prefix (ending in /)."""
    robot, d, file = parse_raw_key(key)
    bag, sep, _ = file.partition("/")
    return f"{raw_prefix(robot, d)}{bag}/" if sep else key


def raw_robot_of_folder(folder: str) -> str:
    """``raw/robot=<id>/`` (a delimiter listing's folder) -> the validated robot id."""
    head = f"{RAW}{ROBOT_DIR}"
    if not (folder.startswith(head) and folder.endswith("/")):
        raise ids.InvalidIdentifier(f"not a robot folder {folder!r}: expected {head}<id>/")
    return ids.robot_id(folder[len(head):-1])


def raw_robot_day_of(key: str) -> str:
    """``raw/robot=<id>/date=<day>`` of a raw key (no validation: used to group a key-ordered listing)."""
    return "/".join(key.split("/", 3)[:3])


def parse_raw_day_folder(key: str) -> tuple[str, str] | None:
    """(robot, day) named by the folders of a raw key, or None when they do not parse (unvalidated)."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != RAW.rstrip("/"):
        return None
    if not (parts[1].startswith(ROBOT_DIR) and parts[2].startswith(DATE_DIR)):
        return None
    return parts[1][len(ROBOT_DIR):], parts[2][len(DATE_DIR):]


# --- ingest: manifests, episodes, archive, fleet ------------------------------------------------------


def manifest_key(robot: str, day: str) -> str:
    """``manifests/robot=<id>/date=<day>/manifest.json``."""
    return f"{MANIFESTS}{ROBOT_DIR}{ids.robot_id(robot)}/{DATE_DIR}{ids.day(day)}/{MANIFEST}"


def episodes_robot_prefix(robot: str) -> str:
    """``episodes/robot=<id>/``."""
    return f"{EPISODES}{ROBOT_DIR}{ids.robot_id(robot)}/"


def episodes_prefix(robot: str, day: str) -> str:
    """``episodes/robot=<id>/date=<day>`` (no trailing slash: a folder published whole)."""
    return f"{episodes_robot_prefix(robot)}{DATE_DIR}{ids.day(day)}"


def episode_table_key(robot: str, day: str) -> str:
    return f"{episodes_prefix(robot, day)}/{EPISODE_TABLE}"


def frames_key(robot: str, day: str) -> str:
    return f"{episodes_prefix(robot, day)}/{FRAMES}"


def date_folder(day: str) -> str:
    """``date=<day>``: one day's folder name, e.g. to start a listing after."""
    return f"{DATE_DIR}{day}"


def day_of_folder(name: str) -> str | None:
    """The day of a ``date=<day>`` folder name (unvalidated), or None for another name."""
    return name[len(DATE_DIR):] if name.startswith(DATE_DIR) else None


def robot_of_folder(name: str) -> str | None:
    """The robot of a ``robot=<id>`` folder name (unvalidated), or None for another name."""
    return name[len(ROBOT_DIR):] if name.startswith(ROBOT_DIR) else None


def archive_prefix(month: str) -> str:
    """``archive/month=<YYYY-MM>`` of a month partition key (``YYYY-MM-01``) or any day of it."""
    return f"{ARCHIVE}{MONTH_DIR}{ids.day(month)[:7]}"


def archive_key(month: str) -> str:
    return f"{archive_prefix(month)}/{EPISODE_TABLE}"


def archive_info_key(month: str) -> str:
    return f"{archive_prefix(month)}/{ARCHIVE_INFO}"


def is_archive_info(key: str) -> bool:
    return key.startswith(ARCHIVE) and key.endswith(f"/{ARCHIVE_INFO}")


def robot_join_key(robot: str) -> str:
    """``fleet/robots/robot=<id>.json``: the robot's join day."""
    return f"{FLEET_ROBOTS}{ROBOT_DIR}{ids.robot_id(robot)}.json"


def robot_of_join_name(name: str) -> str | None:
    """The robot of a join record's file name (``robot=<id>.json``, validated), or None."""
    if not (name.startswith(ROBOT_DIR) and name.endswith(".json")):
        return None
    try:
        return ids.robot_id(name[len(ROBOT_DIR):-len(".json")])
    except ids.InvalidIdentifier:
        return None


# --- fleet-wide artifacts ---------------------------------------------------------------------------


def golden_prefix(version: str) -> str:
    return f"{GOLDEN}/{_name(version, 'golden version')}"


def dataset_prefix(name: str, version: str) -> str:
    return f"{DATASETS}/{_name(name, 'dataset name')}/{_name(version, 'dataset version')}"


def policy_prefix(name: str, version: str) -> str:
    return f"{POLICIES}/{_name(name, 'policy name')}/{_name(version, 'policy version')}"


def eval_prefix(policy_version: str) -> str:
    return f"{EVALS}/{_name(policy_version, 'policy version')}"


def promotions_prefix(model: str) -> str:
    return f"{PROMOTIONS}/{_name(model, 'model name')}"


def release_prefix(name: str, version: str) -> str:
    return f"{RELEASES}/{_name(name, 'release name')}/{_name(version, 'release version')}"


def field_kpis_prefix(version: str) -> str:
    return f"{FIELD}/kpis/{_name(version, 'catalog version')}"


def incident_report_key(release_name: str, release_version: str) -> str:
    """``incidents/reports/<name>/<version>.json``."""
    return f"{INCIDENT_REPORTS}/{_name(release_name, 'release name')}/{_name(release_version, 'release version')}.json"


def incident_log_prefix(incident_id: str) -> str:
    return f"{INCIDENT_LOG}/{_name(incident_id, 'incident id')}"


def deployments_prefix(model: str) -> str:
    return f"{DEPLOYMENTS}/{_name(model, 'model name')}"


def deployments_manifests_prefix(model: str) -> str:
    return f"{deployments_prefix(model)}/manifests/"


def deployments_manifest_key(model: str, sequence: int) -> str:
    return f"{deployments_manifests_prefix(model)}{sequence:06d}.json"


def deployments_current_key(model: str) -> str:
    return f"{deployments_prefix(model)}/{CURRENT}"


def rollouts_prefix(model: str) -> str:
    return f"{deployments_prefix(model)}/rollouts"


def rollout_log_prefix(model: str, rollout_id: str) -> str:
    return f"{rollouts_prefix(model)}/{_name(rollout_id, 'rollout id')}"


# --- Data governance (docs/governance.md) ----------------------------------------------------
#     governance/policy/v<N>.yaml                          the retention policy, one file per version (append-only)
#     governance/tombstones/robot=<id>/date=<day>/<log>.<sha16>.<status>.json   what replaced a deleted raw log
#     governance/erasures/<erasure id>/<time>-<step>.json  an erasure's audit trail (append-only entries)
#     governance/rebuilds/<time>-<request id>.json         a dataset to rebuild without deleted content

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


def dataset_manifest_key(name: str, version: str) -> str:
    """``datasets/<name>/<version>/manifest.json``: a curated dataset version's manifest."""
    return f"{dataset_prefix(name, version)}/{MANIFEST}"


def parse_manifest_key(key: str) -> tuple[str, str] | None:
    """(robot, day) of a robot-day's manifest key ``manifests/robot=<id>/date=<day>/manifest.json``,
    else None (a hostile or foreign key included)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != MANIFESTS or parts[3] != MANIFEST:
        return None
    robot, day = robot_of_folder(parts[1]), day_of_folder(parts[2])
    if robot is None or day is None:
        return None
    try:
        return ids.robot_id(robot), ids.day(day)
    except ValueError:
        return None


# --- Access roles (lib/access.py, deploy/iam/) ---------------------------------------------------
# Every top-level prefix the pipeline writes: the pipeline role may write only these, so a new
# prefix must be added here (tests check a drilled lake).
DERIVED_PREFIXES = (
    ARCHIVE, "catalog/", f"{DATASETS}/", f"{DEPLOYMENTS}/", EPISODES, f"{EVALS}/", f"{FIELD}/", "fleet/", f"{GOLDEN}/",
    f"{GOVERNANCE_PREFIX}/", "incidents/", f"{LINEAGE}/", MANIFESTS, f"{POLICIES}/", f"{PROMOTIONS}/", "quarantine/",
    f"{RELEASES}/",
)
READER_PREFIXES = (f"{DATASETS}/", f"{EVALS}/", f"{RELEASES}/")
# Where deploy/dagster.yaml's S3ComputeLogManager keeps step stdout/stderr (docs/deploy.md).
COMPUTE_LOGS_PREFIX = "dagster/compute-logs/"
# A robot's own raw prefix with a placeholder ({robot}) for IAM policy variables.
RAW_ROBOT_TEMPLATE = RAW + ROBOT_DIR + "{robot}/"
