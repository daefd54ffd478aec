"""Encryption of an S3 lake: server-side encryption on every write, checked on the wire and on a
real SeaweedFS, a bucket that requires it, and plain-http endpoints refused unless allowed.

What SeaweedFS 4.48 does (asserted below, documented in docs/governance.md): it accepts
SSE-S3 (``AES256``), returns it on HEAD and keeps the bytes encrypted in its volume files; it
evaluates a bucket policy that denies unencrypted PUTs; it refuses SSE-KMS (HTTP 500) when no KMS
provider is configured, as in ``weed mini``.
"""

import json
import uuid
from pathlib import Path

import dagster as dg
import pytest

from flywheel_pipelines.defs.resources import LakeResource, env_flag, lake_resource_from_env
from flywheel_pipelines.lib.storage import Encryption, LakeError, S3Lake, check_endpoint
from flywheel_pipelines_tests.infra.conftest import BUCKET

MiB = 1 << 20
RAW_KEY = "raw/robot=r101/date=2026-03-02/session-080000.mcap"
# The requests that create an object; UploadPart and CompleteMultipartUpload inherit the upload's encryption.
CREATING = {"PutObject", "CreateMultipartUpload", "CopyObject"}


class WireLog:
    """Every request a real boto3 client sends (operation name and headers), taken from botocore's
    ``before-send`` event just before the bytes leave: what the server is actually asked for."""

    def __init__(self, client):
        self.requests: list[tuple[str, dict[str, str]]] = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, request, event_name: str, **_):
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
        self.requests.append((event_name.rsplit(".", 1)[-1], headers))

    def operations(self) -> set[str]:
        return {op for op, _ in self.requests}


def _lake(seaweed, prefix: str, encryption: Encryption | None, bucket: str = BUCKET,
          multipart_threshold: int = 6 * MiB) -> tuple[S3Lake, WireLog]:
    client = seaweed.client()
    wire = WireLog(client)
    # Small multipart sizes by default, so that a 7 MiB file takes the multipart path.
    lake = S3Lake(client, bucket, prefix, multipart_threshold=multipart_threshold, part_size=5 * MiB,
                  encryption=encryption)
    return lake, wire


def _every_write(lake: S3Lake, tmp_path: Path) -> dict[str, bytes]:
    """Exercise every write path of the lake; returns what each readable key must hold."""
    big = bytes(range(256)) * (7 * MiB // 256)
    small = b"mcap bytes " * 100
    (tmp_path / "small.mcap").write_bytes(small)
    (tmp_path / "big.mcap").write_bytes(big)
    lake.write_bytes("catalog/episodes.parquet", b"catalog")  # write_bytes: PUT
    lake.put_raw(RAW_KEY, tmp_path / "small.mcap")  # conditional PUT
    lake.put_raw(RAW_KEY.replace("080000", "090000"), tmp_path / "big.mcap")  # conditional multipart
    folder = tmp_path / "release"
    (folder / "sub").mkdir(parents=True)
    (folder / "policy.onnx").write_bytes(big)  # multipart inside a folder
    (folder / "sub" / "card.md").write_bytes(b"v1")
    lake.publish_dir("releases/arm/v1", folder)  # pending marker, files, manifest
    (folder / "sub" / "card.md").write_bytes(b"v2")
    lake.publish_dir("releases/arm/v1", folder, replace=True)  # generation prefix, manifest, copies
    return {"catalog/episodes.parquet": b"catalog", RAW_KEY: small, RAW_KEY.replace("080000", "090000"): big,
            "releases/arm/v1/policy.onnx": big, "releases/arm/v1/sub/card.md": b"v2"}


def _stored_keys(lake: S3Lake) -> list[str]:
    pages = lake.client.get_paginator("list_objects_v2").paginate(Bucket=lake.bucket, Prefix=lake.prefix + "/")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_sse_s3_goes_on_the_wire_for_every_write_and_seaweedfs_stores_it(seaweed, s3_prefix, tmp_path):
    lake, wire = _lake(seaweed, s3_prefix, Encryption("AES256"))
    expected = _every_write(lake, tmp_path)
    # Every write path was taken, and every request that creates an object asked for AES256.
    assert CREATING | {"UploadPart", "CompleteMultipartUpload"} <= wire.operations()
    creating = [(op, h) for op, h in wire.requests if op in CREATING]
    assert len(creating) >= 8
    for op, headers in creating:
        assert headers.get("x-amz-server-side-encryption") == "AES256", (op, headers)
        assert "x-amz-server-side-encryption-aws-kms-key-id" not in headers
    # SeaweedFS records it on every stored object (hidden manifests and generations included).
    stored = _stored_keys(lake)
    assert any(".lake-folder.json" in k for k in stored) and any("/.gen-" in k for k in stored)
    for key in stored:
        assert lake.client.head_object(Bucket=lake.bucket, Key=key).get("ServerSideEncryption") == "AES256", key
    # Reads need nothing extra: every path reads the bytes back.
    for key, data in expected.items():
        assert lake.read_bytes(key) == data
    with lake.local_dir("releases/arm/v1") as folder:
        assert (folder / "sub" / "card.md").read_bytes() == b"v2"
    with lake.local_path(RAW_KEY.replace("080000", "090000")) as path:
        assert path.stat().st_size == 7 * MiB // 256 * 256
    # Reads carry no encryption header (SSE-S3 needs none; only SSE-C would).
    assert not any("x-amz-server-side-encryption" in h for op, h in wire.requests if op in {"GetObject", "HeadObject"})


def test_without_encryption_no_header_is_sent(seaweed, s3_prefix, tmp_path):
    lake, wire = _lake(seaweed, s3_prefix, None)
    _every_write(lake, tmp_path)
    assert not any("x-amz-server-side-encryption" in h for _, h in wire.requests)
    key = lake._full("catalog/episodes.parquet")
    assert lake.client.head_object(Bucket=lake.bucket, Key=key).get("ServerSideEncryption") is None


def test_seaweedfs_keeps_sse_s3_objects_encrypted_at_rest(seaweed, s3_prefix):
    # Markers written with and without SSE-S3; the volume files of the bucket's collection hold
    # the plain one's bytes as sent, and not the encrypted one's.
    encrypted, plain = (f"flywheel-{kind}-{uuid.uuid4().hex}".encode() for kind in ("sse", "plain"))
    S3Lake(seaweed.client(), BUCKET, s3_prefix, encryption=Encryption("AES256")).write_bytes("m/sse.txt", encrypted)
    S3Lake(seaweed.client(), BUCKET, s3_prefix).write_bytes("m/plain.txt", plain)
    volumes = sorted(seaweed.data_dir.rglob(f"{BUCKET}_*.dat"))
    assert volumes, f"no volume files of collection {BUCKET} under {seaweed.data_dir}"
    assert any(plain in v.read_bytes() for v in volumes)
    assert not any(encrypted in v.read_bytes() for v in volumes)


def test_sse_kms_goes_on_the_wire_and_seaweedfs_without_a_kms_refuses_it(seaweed, s3_prefix):
    lake, wire = _lake(seaweed, s3_prefix, Encryption("aws:kms", "alias/flywheel-lake"))
    with pytest.raises(LakeError, match=rf"s3://{BUCKET}/{s3_prefix}/catalog/x.json: PUT failed: InternalError"):
        lake.write_json("catalog/x.json", {"a": 1})
    puts = [h for op, h in wire.requests if op == "PutObject"]
    assert puts and all(h["x-amz-server-side-encryption"] == "aws:kms" for h in puts)
    assert all(h["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/flywheel-lake" for h in puts)
    assert not lake.exists("catalog/x.json")  # nothing half-written


def _bucket(seaweed, *, require_sse: bool) -> str:
    """A bucket with AES256 as its default encryption; with ``require_sse``, also a policy that
    denies every PUT not asking for AES256 (as a security team sets it on AWS)."""
    name = f"flywheel-sse-{uuid.uuid4().hex[:8]}"
    client = seaweed.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    if require_sse:
        client.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Sid": "DenyUnencryptedWrites", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{name}/*",
            "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}}]}))
    return name


@pytest.fixture(scope="module")
def sse_required_bucket(seaweed) -> str:
    return _bucket(seaweed, require_sse=True)


def test_a_bucket_that_requires_encryption_takes_every_write_of_an_encrypting_lake(seaweed, sse_required_bucket,
                                                                                  tmp_path):
    # Single PUTs and copies (the default 64 MiB multipart threshold): see the multipart gap below.
    lake, _ = _lake(seaweed, "lake", Encryption("AES256"), bucket=sse_required_bucket, multipart_threshold=64 * MiB)
    expected = _every_write(lake, tmp_path)
    for key, data in expected.items():
        assert lake.read_bytes(key) == data
    with lake.local_dir("releases/arm/v1") as folder:
        assert (folder / "policy.onnx").stat().st_size == len(expected["releases/arm/v1/policy.onnx"])
    # A lake configured without encryption is refused by the bucket, with the object named.
    plain, _ = _lake(seaweed, "lake", None, bucket=sse_required_bucket)
    with pytest.raises(LakeError, match=rf"s3://{sse_required_bucket}/lake/catalog/plain.json: PUT failed: AccessDenied"):
        plain.write_json("catalog/plain.json", {})
    assert plain.read_bytes("catalog/episodes.parquet") == b"catalog"  # but it can read


def test_seaweedfs_gap_its_bucket_policy_refuses_multipart_completion_under_an_sse_requirement(
        seaweed, sse_required_bucket, tmp_path):
    # SeaweedFS 4.48 evaluates CompleteMultipartUpload as an s3:PutObject without the encryption
    # header (S3 has no such header on that call), so a deny-unencrypted bucket policy refuses every
    # multipart upload even though CreateMultipartUpload asked for AES256. On SeaweedFS, require
    # encryption with the bucket default instead (next test); docs/governance.md.
    lake, wire = _lake(seaweed, "gap", Encryption("AES256"), bucket=sse_required_bucket)
    (tmp_path / "big.mcap").write_bytes(b"\0" * (7 * MiB))
    with pytest.raises(LakeError, match=rf"s3://{sse_required_bucket}/gap/{RAW_KEY}: upload failed: AccessDenied"):
        lake.put_raw(RAW_KEY, tmp_path / "big.mcap")
    assert [op for op, h in wire.requests if h.get("x-amz-server-side-encryption") == "AES256"] == ["CreateMultipartUpload"]
    assert not lake.exists(RAW_KEY)  # aborted, nothing left


def test_a_bucket_default_encryption_covers_writes_that_do_not_ask(seaweed, tmp_path):
    lake, wire = _lake(seaweed, "lake", None, bucket=_bucket(seaweed, require_sse=False))
    _every_write(lake, tmp_path)
    assert not any("x-amz-server-side-encryption" in h for _, h in wire.requests)
    for key in _stored_keys(lake):
        assert lake.client.head_object(Bucket=lake.bucket, Key=key).get("ServerSideEncryption") == "AES256", key


def test_lake_resource_takes_sse_from_the_environment(seaweed, s3_prefix, monkeypatch, flywheel_home):
    monkeypatch.setenv("FLYWHEEL_LAKE", f"s3://{BUCKET}/{s3_prefix}")
    monkeypatch.setenv("FLYWHEEL_S3_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("FLYWHEEL_S3_REGION", seaweed.region)
    monkeypatch.setenv("FLYWHEEL_S3_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("FLYWHEEL_S3_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("FLYWHEEL_S3_ALLOW_HTTP", "true")
    monkeypatch.setenv("FLYWHEEL_S3_SSE", "AES256")
    resource = lake_resource_from_env()
    assert isinstance(resource.sse, dg.EnvVar)

    @dg.asset
    def probe(lake: LakeResource) -> None:
        lake.lake().write_bytes("probe/hello.txt", b"hi")

    assert dg.materialize([probe], resources={"lake": resource}).success
    head = seaweed.client().head_object(Bucket=BUCKET, Key=f"{s3_prefix}/probe/hello.txt")
    assert head["ServerSideEncryption"] == "AES256"


# --- configuration, no server needed ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "http://seaweedfs:8333", "http://s3.example.com"])
def test_plain_http_endpoints_are_refused_unless_allowed(endpoint):
    with pytest.raises(LakeError, match="refusing plain-http S3 endpoint .*FLYWHEEL_S3_ALLOW_HTTP"):
        check_endpoint(endpoint, allow_http=False)
    check_endpoint(endpoint, allow_http=True)


def test_endpoint_check_names_no_credentials_and_refuses_other_schemes():
    with pytest.raises(LakeError) as refused:
        check_endpoint("http://user:hunter2@127.0.0.1:8333/", allow_http=False)
    assert "hunter2" not in str(refused.value) and "http://127.0.0.1:8333" in str(refused.value)
    with pytest.raises(LakeError, match="invalid S3 endpoint"):
        check_endpoint("ftp://127.0.0.1", allow_http=True)
    check_endpoint("https://s3.eu-central-1.amazonaws.com", allow_http=False)


def test_lake_resource_refuses_http_before_any_request(flywheel_home):
    resource = LakeResource(root=f"s3://{BUCKET}/x", endpoint_url="http://127.0.0.1:1", region_name="us-east-1",
                            aws_access_key_id="k", aws_secret_access_key="s")
    with pytest.raises(LakeError, match="refusing plain-http S3 endpoint http://127.0.0.1:1"):
        resource.lake()
    # use_ssl=False without an endpoint would talk http to AWS itself: refused the same way.
    with pytest.raises(LakeError, match="refusing plain-http S3 endpoint http://s3.amazonaws.com"):
        LakeResource(root=f"s3://{BUCKET}/x", region_name="us-east-1", use_ssl=False).lake()
    assert isinstance(LakeResource(root=f"s3://{BUCKET}/x", region_name="us-east-1").lake(), S3Lake)
    assert LakeResource(root=f"s3://{BUCKET}/x", endpoint_url="http://127.0.0.1:1", allow_http=True).lake()


def test_encryption_settings_are_validated():
    assert Encryption("AES256").write_args() == {"ServerSideEncryption": "AES256"}
    assert Encryption("aws:kms").write_args() == {"ServerSideEncryption": "aws:kms"}
    assert Encryption("aws:kms", "arn:aws:kms:eu-central-1:111122223333:key/k").write_args()["SSEKMSKeyId"].endswith("/k")
    with pytest.raises(LakeError, match="unknown S3 server-side encryption 'aes256'"):
        Encryption("aes256")
    with pytest.raises(LakeError, match="only used with aws:kms"):
        Encryption("AES256", "alias/x")
    with pytest.raises(LakeError, match="FLYWHEEL_S3_SSE is not"):
        LakeResource(root=f"s3://{BUCKET}/x", region_name="us-east-1", sse_kms_key_id="alias/x").lake()
    lake = LakeResource(root=f"s3://{BUCKET}/x", region_name="us-east-1", sse="aws:kms", sse_kms_key_id="alias/x").lake()
    assert lake.encryption == Encryption("aws:kms", "alias/x")


def test_allow_http_flag_parsing(monkeypatch):
    for value, expected in [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("", False)]:
        monkeypatch.setenv("FLYWHEEL_S3_ALLOW_HTTP", value)
        assert env_flag("FLYWHEEL_S3_ALLOW_HTTP") is expected
    monkeypatch.setenv("FLYWHEEL_S3_ALLOW_HTTP", "maybe")
    with pytest.raises(ValueError, match="FLYWHEEL_S3_ALLOW_HTTP='maybe'"):
        env_flag("FLYWHEEL_S3_ALLOW_HTTP")


def test_an_http_endpoint_from_boto3s_own_environment_is_refused_too(monkeypatch, flywheel_home):
    # The check is on the client's resolved endpoint, so boto3's AWS_ENDPOINT_URL_S3 cannot bypass it.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(LakeError, match="refusing plain-http S3 endpoint http://127.0.0.1:9"):
        LakeResource(root=f"s3://{BUCKET}/x", region_name="us-east-1").lake()
