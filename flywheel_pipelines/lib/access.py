"""Who may do what in an S3 lake: the four roles, defined once, rendered two ways.

- AWS IAM identity policies (``iam_policy``), shipped in ``deploy/iam/`` (``tools/render_iam.py``).
- SeaweedFS's own S3 identities (``seaweed_identities``: ``-s3.config`` entries), which the tests
  start a real SeaweedFS with, so each role's allowances and denials are checked on a server.

The roles (docs/governance.md):

- ``robot``: uploads its own logs only (``raw/robot=<id>/``), never overwrites one (IAM: every
  PUT must carry ``If-None-Match: *``), reads back only its own (a retried upload checks whether
  it already landed), lists and deletes nothing.
- ``pipeline``: reads and lists everything, writes and deletes every derived prefix, never
  writes or deletes ``raw/``.
- ``governance`` (retention and erasure): the pipeline's rights plus deleting raw logs.
- ``reader``: reads and lists datasets, releases and evaluations.

SeaweedFS expresses less than IAM: an identity holds Read / Write / List per ``bucket/prefix*``,
Write also deletes and overwrites, and there is no deny. ``SEAWEED_GAPS`` lists what that loses.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel_pipelines.lib import ids, layout
from flywheel_pipelines.lib.storage import RAW_PREFIX

DERIVED_PREFIXES = layout.DERIVED_PREFIXES
READER_PREFIXES = layout.READER_PREFIXES
COMPUTE_LOGS_PREFIX = layout.COMPUTE_LOGS_PREFIX
ROBOT_PREFIX = layout.RAW_ROBOT_TEMPLATE
ROLES = ("robot", "pipeline", "governance", "reader")
# IAM policy variable: the robot's IAM user is named by its robot id.
IAM_ROBOT = "${aws:username}"
SEAWEED_GAPS = {
    "robot": "Write lets a robot key overwrite and delete its own raw logs (no If-None-Match condition, "
             "and Write includes DeleteObject)",
    "governance": "Write on the raw logs' prefix (needed to delete) also lets the retention key write raw logs",
}


@dataclass(frozen=True)
class Grant:
    """What a role may do under a lake prefix: ``read`` (GET/HEAD), ``list``, ``create`` (new
    objects only), ``write`` (PUT, overwrite, multipart, copy) and ``delete``."""

    prefix: str
    rights: frozenset[str]


def _grants(role: str, robot: str) -> list[Grant]:
    if role == "robot":
        return [Grant(ROBOT_PREFIX.format(robot=robot), frozenset({"read", "create"}))]
    derived = [Grant(p, frozenset({"write", "delete"})) for p in DERIVED_PREFIXES]
    if role in ("pipeline", "governance"):
        everything = [Grant("", frozenset({"read", "list"}))]
        raw = [Grant(RAW_PREFIX, frozenset({"delete"}))] if role == "governance" else []
        return everything + derived + raw
    if role == "reader":
        return [Grant(p, frozenset({"read", "list"})) for p in READER_PREFIXES]
    raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def grants(role: str, *, robot: str = IAM_ROBOT) -> list[Grant]:
    """The role's grants; ``robot`` is a robot id (validated) or the IAM policy variable."""
    if robot != IAM_ROBOT:
        ids.robot_id(robot)
    return _grants(role, robot)


def _root(lake_prefix: str) -> str:
    return lake_prefix.strip("/") + "/" if lake_prefix.strip("/") else ""


# --- AWS IAM ----------------------------------------------------------------------------------------


_IAM_ACTIONS = {
    "read": ["s3:GetObject"],
    "write": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
    "delete": ["s3:DeleteObject"],
}


def _one_or_list(resources: list[str]) -> str | list[str]:
    return resources[0] if len(resources) == 1 else resources


def iam_policy(role: str, *, bucket: str, lake_prefix: str = "",
               compute_logs_prefix: str | None = COMPUTE_LOGS_PREFIX) -> dict:
    """The role as an IAM identity policy for a lake at ``s3://bucket/lake_prefix``.

    ``bucket`` may be a placeholder (``${LAKE_BUCKET}``) to fill in when applying; the robot
    policy keeps ``${aws:username}``, which IAM itself substitutes per request. The roles that run
    as Dagster runs (pipeline, governance) also write step logs to ``compute_logs_prefix`` (bucket-relative, outside
    the lake: ``DAGSTER_COMPUTE_LOGS_PREFIX``; None when they are kept elsewhere).
    """
    root = _root(lake_prefix)
    objects = f"arn:aws:s3:::{bucket}/{root}"
    by_right: dict[str, list[str]] = {}
    for grant in grants(role):
        for right in sorted(grant.rights):
            by_right.setdefault(right, []).append(f"{objects}{grant.prefix}*")
    runs_in_dagster = role in ("pipeline", "governance")
    logs = compute_logs_prefix.strip("/") + "/" if runs_in_dagster and compute_logs_prefix else None
    if logs:
        for right in ("read", "write", "delete"):
            by_right.setdefault(right, []).append(f"arn:aws:s3:::{bucket}/{logs}*")
    statements: list[dict] = [
        {"Sid": right.title(), "Effect": "Allow", "Action": actions, "Resource": _one_or_list(by_right[right])}
        for right, actions in _IAM_ACTIONS.items() if right in by_right
    ]
    if created := by_right.get("create"):
        # Conditional writes only (AWS "Enforce conditional writes"): every PutObject and
        # CompleteMultipartUpload must carry If-None-Match, so an existing key is never replaced;
        # CreateMultipartUpload and UploadPart take no such header and pass by
        # s3:ObjectCreationOperation=false.
        statements += [
            {"Sid": "CreateOnlyIfNoneMatch", "Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": _one_or_list(created), "Condition": {"Null": {"s3:if-none-match": "false"}}},
            {"Sid": "CreateOnlyMultipartSteps", "Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": _one_or_list(created), "Condition": {"Bool": {"s3:ObjectCreationOperation": "false"}}},
            {"Sid": "AbortOwnUploads", "Effect": "Allow", "Action": ["s3:AbortMultipartUpload"],
             "Resource": _one_or_list(created)},
        ]
    if listed := [f"{root}{g.prefix}*" for g in grants(role) if "list" in g.rights] + ([f"{logs}*"] if logs else []):
        statement = {"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"}
        if "*" not in listed:  # a listing without a prefix has no s3:prefix at all: no condition for the whole bucket
            statement["Condition"] = {"StringLike": {"s3:prefix": listed}}
        statements.append(statement)
    if role in ("pipeline", "reader"):
        # Whatever else is attached to the principal, it never changes a raw log.
        statements.append({"Sid": "NeverChangeRaw", "Effect": "Deny", "Action": ["s3:PutObject", "s3:DeleteObject"],
                           "Resource": f"{objects}{RAW_PREFIX}*"})
    return {"Version": "2012-10-17", "Statement": statements}


# --- SeaweedFS --------------------------------------------------------------------------------------


def seaweed_actions(role: str, *, bucket: str, lake_prefix: str = "", robot: str | None = None) -> list[str]:
    """The role as SeaweedFS identity actions (``Read:bucket/prefix*`` and so on).

    SeaweedFS has no "create only", no deny, and its Write includes delete: ``create`` and
    ``delete`` both become Write (the losses are ``SEAWEED_GAPS``).
    """
    if role == "robot" and robot is None:
        raise ValueError("a SeaweedFS robot identity is per robot: pass the robot id")
    root = _root(lake_prefix)
    actions = []
    for grant in grants(role, robot=robot or IAM_ROBOT):
        where = f"{bucket}/{root}{grant.prefix}*"
        if "read" in grant.rights:
            actions.append(f"Read:{where}")
        if "list" in grant.rights:
            actions.append(f"List:{where}")
        if grant.rights & {"write", "create", "delete"}:
            actions.append(f"Write:{where}")
    return actions


def seaweed_identities(keys: dict[str, tuple[str, str]], *, bucket: str, lake_prefix: str = "") -> list[dict]:
    """SeaweedFS ``-s3.config`` identities for the roles.

    Args:
        keys: identity name -> (access key, secret key); the name is a role, or ``robot-<id>``
            (one identity per robot: SeaweedFS has no per-request policy variable).
        bucket: the lake's bucket.
        lake_prefix: the lake's key prefix in the bucket.
    """
    identities = []
    for name, (access, secret) in keys.items():
        role, _, robot = name.partition("-") if name.startswith("robot-") else (name, "", "")
        identities.append({
            "name": name,
            "credentials": [{"accessKey": access, "secretKey": secret}],
            "actions": seaweed_actions(role, bucket=bucket, lake_prefix=lake_prefix, robot=robot or None),
        })
    return identities
