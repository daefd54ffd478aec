"""The access roles as shipped IAM policy JSON (deploy/iam/), checked offline: valid policies, the
files match the role definitions, and a small evaluator of IAM's rules (explicit deny wins, else an
allow whose action, resource and conditions all match) gives the table in access_cases.py."""

import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from flywheel_pipelines.lib import access
from flywheel_pipelines.lib.storage import LakeError
from flywheel_pipelines_tests.access_cases import CASES, Case
from tools.render_iam import PLACEHOLDER, render

DEPLOY_IAM = Path(__file__).resolve().parents[2] / "deploy" / "iam"
BUCKET, LAKE = "flywheel-prod", "lake"
_CONDITION_KEYS = {"s3:if-none-match", "s3:ObjectCreationOperation", "s3:prefix"}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _conditions_hold(condition: dict, context: dict, user: str) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            assert key in _CONDITION_KEYS, f"condition key {key} not modelled here"
            present = key in context
            if operator == "Null":
                if present != (wanted == "false"):
                    return False
            elif operator == "Bool":
                if context.get(key) != wanted:
                    return False
            elif operator == "StringLike":
                patterns = [p.replace(access.IAM_ROBOT, user) for p in _as_list(wanted)]
                if not present or not any(fnmatchcase(context[key], p) for p in patterns):
                    return False
            else:
                raise AssertionError(f"condition operator {operator} not modelled here")
    return True


def _matches(statement: dict, action: str, resource: str, context: dict, user: str) -> bool:
    if not any(fnmatchcase(action, a) for a in _as_list(statement["Action"])):
        return False
    resources = [r.replace(access.IAM_ROBOT, user) for r in _as_list(statement["Resource"])]
    if not any(fnmatchcase(resource, r) for r in resources):
        return False
    return _conditions_hold(statement.get("Condition", {}), context, user)


def iam_allows(policy: dict, action: str, resource: str, context: dict, user: str) -> bool:
    """IAM's decision for one request under one identity policy (no bucket policy, no SCP)."""
    hits = [s["Effect"] for s in policy["Statement"] if _matches(s, action, resource, context, user)]
    return "Deny" not in hits and "Allow" in hits


def _request(case: Case) -> tuple[str, str, dict]:
    key = f"{LAKE}/{case.key}"
    obj = f"arn:aws:s3:::{BUCKET}/{key}"
    return {
        "get": ("s3:GetObject", obj, {}),
        "put_new": ("s3:PutObject", obj, {"s3:if-none-match": "*", "s3:ObjectCreationOperation": "true"}),
        "put_over": ("s3:PutObject", obj, {"s3:ObjectCreationOperation": "true"}),
        "delete": ("s3:DeleteObject", obj, {}),
        "list": ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": key}),
    }[case.op]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_iam_policy_decides_as_the_role_says(case):
    role, _, robot = case.who.partition("-")
    policy = access.iam_policy(role, bucket=BUCKET, lake_prefix=LAKE)
    action, resource, context = _request(case)
    assert iam_allows(policy, action, resource, context, user=robot or "someone") is case.iam


def test_robot_multipart_upload_steps_pass_only_when_completed_conditionally():
    policy = access.iam_policy("robot", bucket=BUCKET, lake_prefix=LAKE)
    own = f"arn:aws:s3:::{BUCKET}/{LAKE}/raw/robot=r1/date=2026-11-02/big.mcap"
    steps = {"s3:ObjectCreationOperation": "false"}  # CreateMultipartUpload, UploadPart
    assert iam_allows(policy, "s3:PutObject", own, steps, "r1")
    assert iam_allows(policy, "s3:PutObject", own, {"s3:ObjectCreationOperation": "true", "s3:if-none-match": "*"}, "r1")
    assert not iam_allows(policy, "s3:PutObject", own, {"s3:ObjectCreationOperation": "true"}, "r1")
    assert iam_allows(policy, "s3:AbortMultipartUpload", own, {}, "r1")
    assert not iam_allows(policy, "s3:PutObject", own.replace("robot=r1", "robot=r2"), steps, "r1")


@pytest.mark.parametrize("role", access.ROLES)
def test_dagster_step_logs_are_writable_by_the_roles_that_run_in_dagster(role):
    policy = access.iam_policy(role, bucket=BUCKET, lake_prefix=LAKE)
    log = f"arn:aws:s3:::{BUCKET}/dagster/compute-logs/run-1/step.out"
    writes = iam_allows(policy, "s3:PutObject", log, {"s3:ObjectCreationOperation": "true"}, "r1")
    assert writes is (role in ("pipeline", "governance"))
    assert iam_allows(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "dagster/compute-logs/run-1/"},
                      "r1") is writes
    without = access.iam_policy(role, bucket=BUCKET, lake_prefix=LAKE, compute_logs_prefix=None)
    assert not iam_allows(without, "s3:PutObject", log, {"s3:ObjectCreationOperation": "true"}, "r1")


def test_pipeline_lists_a_lake_at_the_bucket_root_without_a_prefix():
    policy = access.iam_policy("pipeline", bucket=BUCKET)
    assert iam_allows(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {}, "p")
    assert not iam_allows(access.iam_policy("reader", bucket=BUCKET), "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {}, "p")


@pytest.mark.parametrize("role", access.ROLES)
def test_shipped_policy_files_are_valid_and_current(role, tmp_path):
    shipped = DEPLOY_IAM / f"{role}.json"
    policy = json.loads(shipped.read_text())
    assert policy["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids)) and all(sid.isalnum() for sid in sids)
    for statement in policy["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert statement["Effect"] in ("Allow", "Deny")
        assert all(a.startswith("s3:") and "*" not in a for a in _as_list(statement["Action"]))
        for resource in _as_list(statement["Resource"]):
            assert resource.startswith(f"arn:aws:s3:::{PLACEHOLDER}")
            assert "${aws:username}" not in resource or role == "robot"
    # No bucket name, account or key id in the templates; they are what the renderer writes now.
    render(tmp_path, bucket=PLACEHOLDER)
    assert (tmp_path / f"{role}.json").read_text() == shipped.read_text(), \
        f"{shipped} is stale: run `python tools/render_iam.py deploy/iam`"


def test_robot_policy_is_templated_per_user_and_never_deletes_or_lists():
    policy = json.loads((DEPLOY_IAM / "robot.json").read_text())
    actions = {a for s in policy["Statement"] for a in _as_list(s["Action"])}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    resources = {r for s in policy["Statement"] for r in _as_list(s["Resource"])}
    assert resources == {f"arn:aws:s3:::{PLACEHOLDER}/raw/robot=${{aws:username}}/*"}


def test_seaweed_identities_render_the_same_roles():
    identities = access.seaweed_identities({"robot-r1": ("a", "b"), "reader": ("c", "d")}, bucket=BUCKET,
                                           lake_prefix=LAKE)
    assert identities[0]["actions"] == [f"Read:{BUCKET}/{LAKE}/raw/robot=r1/*", f"Write:{BUCKET}/{LAKE}/raw/robot=r1/*"]
    assert sorted(identities[1]["actions"]) == sorted(
        f"{right}:{BUCKET}/{LAKE}/{p}*" for p in access.READER_PREFIXES for right in ("Read", "List"))
    pipeline = access.seaweed_actions("pipeline", bucket=BUCKET)
    assert f"Write:{BUCKET}/raw/*" not in pipeline and f"Read:{BUCKET}/*" in pipeline
    assert f"Write:{BUCKET}/raw/*" in access.seaweed_actions("governance", bucket=BUCKET)


def test_renderer_writes_ready_policies_for_a_bucket_and_refuses_bad_names(tmp_path):
    render(tmp_path, bucket="my-lake", lake_prefix="prod/lake")
    pipeline = json.loads((tmp_path / "pipeline.json").read_text())
    assert pipeline == access.iam_policy("pipeline", bucket="my-lake", lake_prefix="prod/lake")
    assert "arn:aws:s3:::my-lake/prod/lake/*" in json.dumps(pipeline)
    for bucket, prefix in [("My_Lake", ""), ("my-lake", "../x"), ("my-lake", "a//b")]:
        with pytest.raises(LakeError, match="invalid S3 lake root"):
            render(tmp_path / "bad", bucket=bucket, lake_prefix=prefix)
    assert not (tmp_path / "bad").exists()


def test_roles_refuse_bad_input():
    with pytest.raises(ValueError, match="unknown role 'admin'"):
        access.iam_policy("admin", bucket=BUCKET)
    with pytest.raises(ValueError, match="per robot"):
        access.seaweed_actions("robot", bucket=BUCKET)
    with pytest.raises(ValueError):
        access.seaweed_actions("robot", bucket=BUCKET, robot="../r1")


@pytest.mark.slow
def test_every_prefix_of_a_drilled_lake_is_one_the_pipeline_may_write(drilled):
    # The drill goes through ingest, training, release, promotion, quarantine and an incident: what
    # it writes outside raw/ must be under a prefix the pipeline role grants, or production runs
    # would be refused by the IAM policy and SeaweedFS alike.
    top = {p.name + "/" for p in drilled.lake.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert "raw/" in top and len(top) > 8
    assert top - {"raw/"} <= set(access.DERIVED_PREFIXES), sorted(top - {"raw/"} - set(access.DERIVED_PREFIXES))
