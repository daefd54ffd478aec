"""Fault cases of the S3 lake on a real SeaweedFS (part of the fault-injection suite, see
docs/reliability.md): hidden uploads are warned about, not ignored in silence (issue #16)."""

import json

import pytest

from flywheel_pipelines_tests.infra.test_s3_sensor import DAYS, instance, pk, put, resource, tick  # noqa: F401 - fixtures


def test_a_hidden_upload_is_warned_about_once(instance, resource, put):  # noqa: F811
    put("r1", DAYS[0], "s-080000.mcap")
    put("r1", DAYS[0], ".s-090000.mcap")
    put("r1", DAYS[0], "_tmp-s-100000.mcap")
    first = tick(instance, resource)
    assert [r.partition_key for r in first.run_requests] == [pk("r1", DAYS[0])]
    ignored = json.loads(first.cursor)["ignored"]
    assert any(".s-090000.mcap" in k for k in ignored) and any("_tmp-s-100000.mcap" in k for k in ignored)
    # said once: the next tick does not repeat it (the cursor remembers)
    second = tick(instance, resource, first.cursor)
    assert json.loads(second.cursor)["ignored"] == ignored


def test_a_renamed_upload_is_requested_once(instance, resource, put, s3_client, s3_prefix):  # noqa: F811
    from flywheel_pipelines_tests.infra.conftest import BUCKET
    from flywheel_pipelines_tests.infra.test_s3_sensor import launch

    put("r2", DAYS[0], "s-080000.mcap")
    first = tick(instance, resource)
    launch(instance, first)
    old = f"{s3_prefix}/raw/robot=r2/date={DAYS[0]}/s-080000.mcap"
    s3_client.copy_object(Bucket=BUCKET, Key=old.replace("s-080000", "s-080000-renamed"),
                          CopySource={"Bucket": BUCKET, "Key": old})
    s3_client.delete_object(Bucket=BUCKET, Key=old)
    second = tick(instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [pk("r2", DAYS[0])]
    launch(instance, second)
    assert tick(instance, resource, second.cursor).run_requests == []
    assert tick(instance, resource, None).run_requests == []  # a restart re-derives keys that have runs


KILLED_PUBLISH = """
import sys
from pathlib import Path
import boto3
from flywheel_pipelines.lib.storage import S3Lake
endpoint, key, secret, region, bucket, prefix, src = sys.argv[1:8]
client = boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key, aws_secret_access_key=secret)
S3Lake(client, bucket, prefix).publish_dir("episodes/robot=r1/date=2026-01-01", Path(src), replace=True)
"""


@pytest.mark.parametrize("point", ["s3.publish_dir.uploaded", "s3.publish_dir.published"])
def test_a_republish_killed_at_each_point_is_never_absent_and_never_mixed(seaweed, s3_lake, tmp_path, point):
    import os
    import subprocess
    import sys

    from flywheel_pipelines.lib import faults
    from flywheel_pipelines_tests.infra.conftest import BUCKET

    prefix = "episodes/robot=r1/date=2026-01-01"
    versions = {}
    for version in ("v1", "v2", "v3"):
        folder = tmp_path / version
        folder.mkdir()
        versions[version] = {f"part-{i}": f"{version}-{i}".encode() for i in range(4)}
        for name, data in versions[version].items():
            (folder / name).write_bytes(data)
    s3_lake.publish_dir(prefix, tmp_path / "v1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), faults.ENV: point}
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, seaweed.endpoint_url, seaweed.access_key,
                             seaweed.secret_key, seaweed.region, BUCKET, s3_lake.prefix, str(tmp_path / "v2")],
                            env=env, timeout=120)
    assert killed.returncode == -9
    assert s3_lake.exists(prefix)
    with s3_lake.local_dir(prefix) as got:
        seen = {p.name: p.read_bytes() for p in got.iterdir()}
    assert seen in (versions["v1"], versions["v2"])  # old or new, whole
    assert sorted(o.key for o in s3_lake.list("episodes/")) == [f"{prefix}/part-{i}" for i in range(4)]
    assert s3_lake.publish_dir(prefix, tmp_path / "v3", replace=True)
    with s3_lake.local_dir(prefix) as got:
        assert {p.name: p.read_bytes() for p in got.iterdir()} == versions["v3"]
    assert {k: s3_lake.read_bytes(f"{prefix}/{k}") for k in versions["v3"]} == versions["v3"]
