"""The access roles enforced by a real SeaweedFS: a server of its own, started with identities
rendered from ``lib.access`` (the source of the shipped IAM policies), runs the table of
``access_cases.py``: every allowance and every denial, and the gaps where SeaweedFS cannot
express a rule (it allows what IAM denies: asserted, and documented in docs/governance.md).
Then the lake itself, through each role's key: a robot's conditional upload, the pipeline's
folder publish, a reader's dataset download."""

import secrets
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from flywheel_pipelines.lib import access
from flywheel_pipelines.lib.storage import LakeError, S3Lake
from flywheel_pipelines_tests.access_cases import CASES, OTHER, OWN, SEEDED, Case
from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.infra.seaweed import SeaweedS3, SeaweedUnavailable, seaweed_s3, weed_binary

BUCKET, LAKE = "flywheel-roles", "lake"
PRINCIPALS = ("robot-r1", "robot-r2", "pipeline", "governance", "reader")


class Roles:
    """The server, its admin client, and one client per principal."""

    def __init__(self, server: SeaweedS3, keys: dict[str, tuple[str, str]]):
        self.server = server
        self.admin = server.client()
        self.clients = {name: SeaweedS3(server.endpoint_url, *pair).client() for name, pair in keys.items()}

    def lake(self, who: str) -> S3Lake:
        return S3Lake(self.clients[who], BUCKET, LAKE)


@pytest.fixture(scope="module")
def roles(tmp_path_factory) -> Roles:
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        missing(str(exc))
    keys = {name: (secrets.token_hex(10), secrets.token_hex(20)) for name in PRINCIPALS}
    identities = access.seaweed_identities(keys, bucket=BUCKET, lake_prefix=LAKE)
    with seaweed_s3(tmp_path_factory.mktemp("seaweed-roles"), identities=identities) as server:
        found = Roles(server, keys)
        found.admin.create_bucket(Bucket=BUCKET)
        yield found


def _seed(roles: Roles, key: str) -> None:
    roles.admin.put_object(Bucket=BUCKET, Key=f"{LAKE}/{key}", Body=f"seeded {key}".encode())


def _attempt(client, case: Case) -> bool:
    """Runs the case's request; True if the server did it, False if it refused for lack of rights."""
    key = f"{LAKE}/{case.key}"
    try:
        if case.op == "get":
            client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        elif case.op == "put_new":
            client.put_object(Bucket=BUCKET, Key=key, Body=b"new", IfNoneMatch="*")
        elif case.op == "put_over":
            client.put_object(Bucket=BUCKET, Key=key, Body=b"overwritten")
        elif case.op == "delete":
            client.delete_object(Bucket=BUCKET, Key=key)
        elif case.op == "list":
            client.list_objects_v2(Bucket=BUCKET, Prefix=key)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("AccessDenied", "403"):
            return False
        raise


@pytest.mark.parametrize("case", CASES, ids=str)
def test_seaweedfs_enforces_the_role(roles, case):
    for key in SEEDED:  # each case starts from the same objects (a gap case may have changed one)
        _seed(roles, key)
    if case.op == "put_new":
        roles.admin.delete_object(Bucket=BUCKET, Key=f"{LAKE}/{case.key}")
    done = _attempt(roles.clients[case.who], case)
    assert done is case.on_seaweed, f"{case}: SeaweedFS {'allowed' if done else 'refused'} it"
    if not done and case.op in ("put_over", "delete"):  # a refusal changed nothing
        stored = roles.admin.get_object(Bucket=BUCKET, Key=f"{LAKE}/{case.key}")["Body"].read()
        assert stored == f"seeded {case.key}".encode()
    if not done and case.op == "put_new":
        listed = roles.admin.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAKE}/{case.key}")
        assert not listed.get("Contents")


def _gap_cases() -> set[str]:
    return {c.who.partition("-")[0] for c in CASES if c.seaweed is not None}


def test_every_gap_in_the_table_is_a_documented_one():
    assert _gap_cases() == set(access.SEAWEED_GAPS)


def test_a_robot_uploads_through_the_lake_with_its_own_key(roles, tmp_path):
    lake = roles.lake("robot-r1")
    log = tmp_path / "session-3.mcap"
    log.write_bytes(b"robot log " * 1000)
    key = "raw/robot=r1/date=2026-11-03/session-3.mcap"
    assert lake.put_raw(key, log) is True
    assert lake.put_raw(key, log) is False  # a retried upload sees it landed (HEAD of its own key)
    log.write_bytes(b"different bytes")
    with pytest.raises(LakeError, match="already exists with different content"):
        lake.put_raw(key, log)  # the conditional PUT, refused by the store itself
    with pytest.raises(LakeError, match=r"s3://flywheel-roles/lake/raw/robot=r2/.*: upload failed: AccessDenied"):
        lake.put_raw("raw/robot=r2/date=2026-11-03/forged.mcap", log)
    with pytest.raises(LakeError, match="GET failed: AccessDenied"):
        lake.read_bytes(OTHER)
    with pytest.raises(LakeError, match="PUT failed: AccessDenied"):
        lake.write_json("releases/arm/v9/release.json", {})


def test_the_pipeline_publishes_and_cannot_touch_raw(roles, tmp_path):
    _seed(roles, OWN)
    lake = roles.lake("pipeline")
    folder = tmp_path / "v3"
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "info.json").write_text("{}")
    assert lake.publish_dir("datasets/arm/v3", folder)  # pending marker, files, manifest, marker deleted
    (folder / "meta" / "info.json").write_text('{"v": 2}')
    assert lake.publish_dir("datasets/arm/v3", folder, replace=True)  # generations, copies, deletes
    assert OWN in [o.key for o in lake.list("raw/")]
    assert lake.read_bytes(OWN) == f"seeded {OWN}".encode()
    with pytest.raises(LakeError, match="could not delete 1 objects.*AccessDenied"):
        lake._delete([OWN])
    assert roles.admin.head_object(Bucket=BUCKET, Key=f"{LAKE}/{OWN}")
    with pytest.raises(LakeError, match="upload failed: AccessDenied"):
        lake.put_raw("raw/robot=r1/date=2026-11-03/injected.mcap", Path(folder / "meta" / "info.json"))


def test_a_reader_downloads_a_dataset_and_nothing_else(roles, tmp_path):
    folder = tmp_path / "v4"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "file-000.parquet").write_bytes(b"frames")
    roles.lake("pipeline").publish_dir("datasets/arm/v4", folder)
    reader = roles.lake("reader")
    with reader.local_dir("datasets/arm/v4") as local:
        assert (local / "data" / "file-000.parquet").read_bytes() == b"frames"
    assert [o.key for o in reader.list("datasets/arm/v4/")] == ["datasets/arm/v4/data/file-000.parquet"]
    with pytest.raises(ClientError, match="AccessDenied"):
        reader.list("raw/")
    with pytest.raises(LakeError, match="datasets/arm/v5/.lake-folder.pending: PUT failed: AccessDenied"):
        reader.publish_dir("datasets/arm/v5", folder)
