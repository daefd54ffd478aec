"""Issue #16 (2): symbolic links in raw/ are refused: never followed, never read, never quoted.

Before the fix a link to /dev/zero named *.mcap spun the sensor and log_manifest at 100% CPU, a
link to a file outside the lake was read (its first 16 bytes copied into the manifest's reason
and the run log), and a link to a valid log outside the lake was ingested as ok.
"""

import json
import os

import dagster as dg
import pytest

from flywheel_pipelines.defs.partitions import robot_day_key
from flywheel_pipelines.lib.ingest import IngestError
from flywheel_pipelines.lib.ingest.manifest import build_manifest, write_manifest
from flywheel_pipelines.lib.layout import manifest_key
from flywheel_pipelines.lib.rosbag.manifest import inspect_log
from flywheel_pipelines.lib.storage import SYMLINK_REFUSED, LakeError, LocalLake
from flywheel_pipelines_tests.defs.test_ingest import DAY, tick, upload

SECRET = b"AKIA-SECRET-KEY-0123456789abcdef"


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


@pytest.fixture
def outside(tmp_path, lake):
    """A valid log and a secret, both outside the lake."""
    day = upload(lake, "r301", episodes=2)
    valid = tmp_path / "outside-valid.mcap"
    valid.write_bytes(lake.path(day.keys[0]).read_bytes())
    secret = tmp_path / "secret.mcap"
    secret.write_bytes(SECRET + b"\n" * 64)
    return valid, secret


def _link(lake, name, target, robot="r302"):
    folder = lake.root / "raw" / f"robot={robot}" / f"date={DAY}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(target)
    return f"raw/robot={robot}/date={DAY}/{name}"


def test_symlinks_are_not_listed_but_named_as_refused(lake, outside):
    valid, secret = outside
    keys = [_link(lake, "zero.mcap", "/dev/zero"), _link(lake, "valid.mcap", valid), _link(lake, "secret.mcap", secret)]
    os.mkfifo(lake.root / "raw" / "robot=r302" / f"date={DAY}" / "fifo.mcap")
    assert not [o for o in lake.list("raw/") if "r302" in o.key]
    refused = dict(lake.refused("raw/"))
    assert set(keys) <= set(refused) and all(refused[k] == SYMLINK_REFUSED for k in keys)
    assert "not a regular file" in refused[f"raw/robot=r302/date={DAY}/fifo.mcap"]
    for key in keys:
        with pytest.raises(LakeError, match="symbolic link"), lake.local_path(key):
            pass
        with pytest.raises(LakeError, match="symbolic link"):
            lake.read_bytes(key)


def test_a_symlinked_folder_is_refused_not_followed(lake, outside, tmp_path):
    valid, _ = outside
    elsewhere = tmp_path / "elsewhere" / f"date={DAY}"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.mcap").write_bytes(valid.read_bytes())
    (lake.root / "raw" / "robot=r303").symlink_to(elsewhere.parent)
    assert not [o for o in lake.list("raw/") if "r303" in o.key]
    assert ("raw/robot=r303/", SYMLINK_REFUSED) in lake.refused("raw/")
    with pytest.raises(LakeError, match="symbolic link"), lake.local_path(f"raw/robot=r303/date={DAY}/a.mcap"):
        pass
    bag = lake.root / "raw" / "robot=r301" / f"date={DAY}" / "bag"
    bag.mkdir()
    (bag / "bag_0.mcap").symlink_to(valid)
    with pytest.raises(LakeError, match="symbolic link"), lake.local_dir(f"raw/robot=r301/date={DAY}/bag/"):
        pass


@pytest.mark.timeout(120)
def test_the_sensor_and_log_manifest_refuse_symlinks_without_reading_them(lake, outside):
    valid, secret = outside
    _link(lake, "zero.mcap", "/dev/zero")
    _link(lake, "valid.mcap", valid)
    _link(lake, "secret.mcap", secret)
    with dg.instance_for_test() as instance:
        first = tick(instance, lake)  # returns at once: /dev/zero is never hashed
        assert [r.partition_key for r in first.run_requests] == [robot_day_key("r301", DAY)]
        # the refused links are warned about once, not every tick
        assert "refused" in json.loads(first.cursor)
        second = tick(instance, lake, first.cursor)  # within the grace window: the same key, Dagster dedups
        assert [r.run_key for r in second.run_requests] == [r.run_key for r in first.run_requests]
        assert json.loads(second.cursor)["refused"] == json.loads(first.cursor)["refused"]
        manifest = build_manifest(lake, "r301", DAY)
        assert [f["verdict"] for f in manifest["files"]] == ["ok"]
        with pytest.raises(IngestError) as failure:
            write_manifest(lake, "r302", DAY)
        text = str(failure.value)
        assert "refused" in text and "secret.mcap" in text and SECRET.decode() not in text
        assert not lake.exists(manifest_key("r302", DAY))


def test_reasons_never_quote_a_files_bytes(tmp_path):
    path = tmp_path / "not-a-log.mcap"
    path.write_bytes(SECRET + b"\x00" * 32)
    reason = inspect_log(path, key="raw/robot=r1/date=2026-01-01/not-a-log.mcap").reason
    assert reason and "AKIA" not in reason and "SECRET" not in reason and "\\x" not in reason
