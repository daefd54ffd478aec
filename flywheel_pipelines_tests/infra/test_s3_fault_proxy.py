"""The S3 lake through a fault proxy on 127.0.0.1 in front of a real SeaweedFS: 503s, "applied but
500" and timeouts on a share of requests. What users rely on: every write lands exactly once, a
raw upload is never duplicated or refused for its own retry, a folder is published whole, and
the lake reads back byte for byte what a clean run wrote."""

import json

import boto3
import pytest
from botocore.config import Config

from flywheel_pipelines.lib.storage import FOLDER_MANIFEST, S3Lake
from flywheel_pipelines_tests.infra.conftest import BUCKET
from flywheel_pipelines_tests.infra.fault_proxy import FAULTS, fault_proxy


def _client(url, seaweed):
    return boto3.client("s3", endpoint_url=url, region_name=seaweed.region, aws_access_key_id=seaweed.access_key,
                        aws_secret_access_key=seaweed.secret_key,
                        config=Config(retries={"max_attempts": 8, "mode": "standard"}, read_timeout=1, connect_timeout=2))


def _work(lake: S3Lake, tmp_path) -> dict[str, bytes]:
    """A run's writes: a raw upload, a JSON record, a published folder (replaced once)."""
    raw = tmp_path / "a.mcap"
    raw.write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 64)
    lake.put_raw("raw/robot=r1/date=2026-01-01/a.mcap", raw)
    lake.put_raw("raw/robot=r1/date=2026-01-01/a.mcap", raw)  # a retried upload: a no-op
    lake.write_json("manifests/robot=r1/date=2026-01-01/manifest.json", {"files": ["a.mcap"]})
    for version in ("v1", "v2"):
        folder = tmp_path / f"episodes-{version}"
        folder.mkdir()
        for i in range(4):
            (folder / f"part-{i}.parquet").write_bytes(f"{version}-{i}".encode() * 100)
        lake.publish_dir("episodes/robot=r1/date=2026-01-01", folder, replace=True)
    return {o.key: lake.read_bytes(o.key) for o in lake.list("")}


@pytest.mark.parametrize("share", [0.10, 0.26])
def test_writes_under_injected_faults_match_a_clean_run(seaweed, s3_client, s3_prefix, tmp_path, share):
    for name in ("clean", "faulty"):
        (tmp_path / name).mkdir()
    clean = _work(S3Lake(s3_client, BUCKET, s3_prefix + "-clean"), tmp_path / "clean")

    def schedule(n: int, method: str, path: str):
        # deterministic: about `share` of the requests, cycling through the fault kinds
        if int(n * share) != int((n - 1) * share):
            return FAULTS[n % len(FAULTS)]
        return None

    with fault_proxy(seaweed.endpoint_url, schedule, stall_s=1.5) as proxy:
        faulty = _work(S3Lake(_client(proxy.url, seaweed), BUCKET, s3_prefix), tmp_path / "faulty")
    kinds = {f for *_, f in proxy.injected}
    assert kinds == set(FAULTS), proxy.injected
    assert faulty == clean
    manifest = json.loads(S3Lake(s3_client, BUCKET, s3_prefix).read_bytes(
        f"episodes/robot=r1/date=2026-01-01/{FOLDER_MANIFEST}"))
    assert sorted(manifest["files"]) == [f"part-{i}.parquet" for i in range(4)]




def test_the_s3_server_stopped_mid_run_fails_the_write_and_a_rerun_completes(seaweed, s3_client, s3_prefix, tmp_path):
    """The proxy stands in for a server that stops answering (every request refused for a while):
    the write fails with an error naming the key, nothing partial is listed, and a re-run lands it."""
    down = {"on": False}

    def schedule(n, method, path):
        return "5xx" if down["on"] else None

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.bin").write_bytes(bytes([i]) * 1000)
    with fault_proxy(seaweed.endpoint_url, schedule) as proxy:
        lake = S3Lake(_client(proxy.url, seaweed), BUCKET, s3_prefix)
        lake.write_json("a.json", {"x": 1})
        down["on"] = True
        with pytest.raises(Exception) as info:
            lake.publish_dir("datasets/d/v1", folder)
        assert "datasets/d/v1" in str(info.value)
        down["on"] = False
        direct = S3Lake(s3_client, BUCKET, s3_prefix)
        assert not direct.exists("datasets/d/v1") and direct.list("datasets/") == []
        assert lake.publish_dir("datasets/d/v1", folder)
    with direct.local_dir("datasets/d/v1") as got:
        assert sorted(p.name for p in got.iterdir()) == ["f0.bin", "f1.bin", "f2.bin"]
