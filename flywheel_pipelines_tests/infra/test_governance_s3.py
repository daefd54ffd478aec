"""The audited deleter on a real S3 store (SeaweedFS): raw logs (a file, a rosbag2 folder) and a
republished derived folder leave nothing behind, hidden objects included; tombstones first."""

import hashlib

from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.governance import deleter
from flywheel_pipelines.lib.storage import FOLDER_MANIFEST
from flywheel_pipelines_tests.infra.conftest import BUCKET

DAY = "raw/robot=r101/date=2026-03-02"


def _stored(s3_client, s3_lake, prefix: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_lake.prefix}/{prefix}")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_raw_file_and_bag_folder_are_deleted_behind_tombstones(s3_client, s3_lake, tmp_path) -> None:
    log = tmp_path / "a.mcap"
    log.write_bytes(b"camera log " * 1000)
    s3_lake.put_raw(f"{DAY}/a.mcap", log)
    bag = tmp_path / "bag"
    bag.mkdir()
    for name, data in (("metadata.yaml", b"rosbag2_bagfile_information: {}\n"), ("bag_0.mcap", b"x" * 5000)):
        (bag / name).write_bytes(data)
        s3_lake.put_raw(f"{DAY}/bag/{name}", bag / name)
    other = tmp_path / "b.mcap"
    other.write_bytes(b"kept")
    s3_lake.put_raw(f"{DAY}/b.mcap", other)

    sha = hashlib.sha256(log.read_bytes()).hexdigest()
    t = deleter.delete_raw_log(s3_lake, f"{DAY}/a.mcap", status="expired", rule="camera: 1 days (policy v1)",
                               expected_sha256=sha)
    folder = deleter.delete_raw_log(s3_lake, f"{DAY}/bag/", status="erased", rule="erasure er-000000000000")
    listing = "".join(f"{hashlib.sha256((bag / n).read_bytes()).hexdigest()}  {n}\n"
                      for n in sorted(["metadata.yaml", "bag_0.mcap"]))
    assert folder.sha256 == hashlib.sha256(listing.encode()).hexdigest()  # the manifest's folder hash
    assert [o.key for o in s3_lake.list("raw/")] == [f"{DAY}/b.mcap"]
    assert s3_lake.exists(layout.tombstone_key(f"{DAY}/a.mcap", sha, "expired")) and t.size == 11000
    assert deleter.statuses(s3_lake, [f"{DAY}/a.mcap", f"{DAY}/bag/", f"{DAY}/b.mcap"]) == {
        f"{DAY}/a.mcap": "expired", f"{DAY}/bag/": "erased"}
    assert deleter.all_statuses(s3_lake)[f"{DAY}/bag"] == "erased"
    again = deleter.delete_raw_log(s3_lake, f"{DAY}/bag/", status="erased", rule="erasure er-000000000000")
    assert again.sha256 == folder.sha256


def test_a_republished_derived_folder_is_deleted_whole(s3_client, s3_lake, tmp_path) -> None:
    for version in ("v1", "v2"):
        d = tmp_path / version
        (d / "meta").mkdir(parents=True)
        (d / "meta" / "info.json").write_text(version)
        (d / "data.parquet").write_bytes(version.encode() * 100)
        s3_lake.publish_dir("datasets/reach/abc", d, replace=True)
    stored = _stored(s3_client, s3_lake, "datasets/reach/abc/")
    assert any(FOLDER_MANIFEST in k for k in stored) and any("/.gen-" in k for k in stored)
    assert deleter.delete_derived(s3_lake, "datasets/reach/abc") == 2
    assert _stored(s3_client, s3_lake, "datasets/reach/abc/") == []
    assert not s3_lake.exists("datasets/reach/abc")
