"""Issue #16 lesser findings: hostile MCAP files. A decompression bomb is refused by a per-chunk
limit from configuration before anything is decompressed; impossible statistics are damage."""

import json
import subprocess
import sys

import pytest
from mcap.writer import CompressionType, Writer

from flywheel_pipelines.lib.rosbag.manifest import inspect_log
from flywheel_pipelines.lib.settings import DEFAULT_MAX_CHUNK_BYTES


def _write(path, *, payload: bytes, messages: int = 1, chunk_size: int = 1 << 20, statistics=None):
    with open(path, "wb") as out:
        writer = Writer(out, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        writer.start("ros2", "test")
        schema = writer.register_schema("std_msgs/msg/String", "ros2msg", b"string data")
        channel = writer.register_channel("/blob", "cdr", schema)
        for i in range(messages):
            writer.add_message(channel, log_time=1_000 + i, publish_time=1_000 + i, data=payload, sequence=i)
        if statistics is not None:
            stats = writer._Writer__statistics  # what the summary will claim
            stats.message_count = statistics
            stats.channel_message_counts = {channel: statistics}
        writer.finish()
    return path


def test_a_chunk_above_the_configured_limit_is_refused_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_MAX_CHUNK_BYTES", str(1 << 20))
    bomb = _write(tmp_path / "bomb.mcap", payload=b"\x00" * (8 << 20), chunk_size=16 << 20)
    assert bomb.stat().st_size < 64 * 1024  # 8 MiB of zeros in a few KB
    manifest = inspect_log(bomb, key="raw/robot=r1/date=2026-01-01/bomb.mcap")
    assert manifest.verdict == "rejected"
    assert "above the per-chunk limit of 1048576 (FLYWHEEL_MAX_CHUNK_BYTES)" in manifest.reason
    # the same file under the default limit is a valid log
    monkeypatch.delenv("FLYWHEEL_MAX_CHUNK_BYTES")
    assert inspect_log(bomb).verdict == "ok"


@pytest.mark.slow
def test_a_1_gib_zstd_chunk_is_refused_without_allocating_it(tmp_path):
    """The issue's case: a small file holding a 1 GiB zstd chunk, read in a fresh process."""
    bomb = _write(tmp_path / "bomb.mcap", payload=b"\x00" * (1 << 30), chunk_size=2 << 30)
    assert bomb.stat().st_size < 1 << 20 and DEFAULT_MAX_CHUNK_BYTES < (1 << 30)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would count this (forked) test process.
    code = ("import json, sys\nfrom flywheel_pipelines.lib.rosbag.manifest import inspect_log\n"
            "m = inspect_log(sys.argv[1])\n"
            "hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
            "print(json.dumps({'verdict': m.verdict, 'reason': m.reason, 'rss_mb': hwm / 1024}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True,
                                    check=True, timeout=300).stdout)
    assert out["verdict"] == "rejected" and "per-chunk limit" in out["reason"]
    assert out["rss_mb"] < 300, out


def test_statistics_claiming_impossible_counts_are_damage_not_a_loss(tmp_path):
    path = _write(tmp_path / "liar.mcap", payload=b"\x05\x00\x00\x00abcd\x00", messages=10, statistics=2**63)
    manifest = inspect_log(path, key="liar.mcap")
    assert manifest.verdict == "recovered"
    assert "more than the file can hold" in manifest.reason
    assert manifest.lost_messages is None or manifest.lost_messages < 10
    assert manifest.message_count == 10


def test_a_bag_whose_metadata_claims_impossible_counts_is_damage_not_a_loss(tmp_path):
    import re

    from flywheel_pipelines_tests.lib.test_manifest import write_rosbag2_folder

    folder = tmp_path / "bag"
    write_rosbag2_folder(folder, parts=1)
    meta = folder / "metadata.yaml"
    meta.write_text(re.sub(r"message_count: \d+", f"message_count: {2**63}", meta.read_text()))
    manifest = inspect_log(folder, key="raw/bag/")
    assert manifest.verdict == "recovered" and "impossible for" in manifest.reason
    assert manifest.lost_messages is None and manifest.message_count > 0
