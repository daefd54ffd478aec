"""A real S3-compatible server for the object-store tests: SeaweedFS, started once per session.

Each test gets its own key prefix in one shared bucket (a bucket per test would give every test
its own SeaweedFS collection and volumes).
"""

import uuid

import pytest

from flywheel_pipelines.lib.storage import S3Lake
from flywheel_pipelines_tests.conftest import missing
from flywheel_pipelines_tests.infra.seaweed import SeaweedS3, SeaweedUnavailable, seaweed_s3, weed_binary

BUCKET = "flywheel-test-lake"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> SeaweedS3:
    """SeaweedFS on free 127.0.0.1 ports (telemetry off), stopped at the end of the session."""
    try:
        weed_binary()
    except SeaweedUnavailable as exc:
        missing(str(exc))
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="session")
def s3_client(seaweed):
    return seaweed.client()


@pytest.fixture
def s3_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_lake(s3_client, s3_prefix) -> S3Lake:
    """An empty S3 lake of its own (a fresh prefix in the session bucket). Small multipart sizes so
    that tests exercise multipart uploads with files of a few MiB."""
    return S3Lake(s3_client, BUCKET, s3_prefix, multipart_threshold=6 << 20, part_size=5 << 20)
