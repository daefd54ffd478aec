"""Tests for inspect_log: verdicts, counts and reasons on real logs and on damaged copies."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mcap.reader import make_reader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from flywheel_pipelines.lib.rosbag.manifest import FileManifest, TopicStats, inspect_log
from flywheel_pipelines.lib.rosbag.reader import iter_messages
from flywheel_pipelines_tests.conftest import require_real_logs
from flywheel_pipelines_tests.lib.test_rosbag_reader import (
    JOINT_STATE_MSGDEF,
    PERIOD_NS,
    T0,
    write_test_log,
)

REAL_LOGS = Path(__file__).resolve().parents[3] / "shared" / "real-logs"

# Per-topic counts from real-logs/README.md. The wbag entry gives no counts (and says nine
# topics, but its metadata.yaml and its five files hold eight), so those come from metadata.yaml.
REAL_LOG_COUNTS: dict[str, dict[str, int]] = {
    "mcap/evo__nav2_turtlebot.mcap": {"/odom": 2639, "/tf": 5422, "/tf_static": 1, "/amcl_pose": 135},
    "rosbag2/plotjuggler__rosbag2_test": {
        "/imu": 1565,
        "/battery": 1565,
        "/pose": 1565,
        "/parameter_events": 0,
        "/rosout": 0,
    },
    "rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag": {
        "AAA": 804,
        "BBB": 742,
        "CCC": 742,
        "DDD": 753,
        "EEE": 804,
        "FFF": 772,
        "GGG": 731,
        "HHH": 726,
    },
    "rosbag2/ros2_rosbag2__rosbag2_tests__mcap_cdr_test": {"/array_topic": 4, "/test_topic": 3},
    "rosbag2/derived__plotjuggler_fake_joint_state_mcap": {"/fake_joints_state": 2725},
    "ros1/plotjuggler__fake_joint_state.bag": {"/fake_joints_state": 2725},
}
REAL_LOG_TOTALS = {
    "mcap/evo__nav2_turtlebot.mcap": 8197,
    "rosbag2/plotjuggler__rosbag2_test": 4695,
    "rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag": 6074,
    "rosbag2/ros2_rosbag2__rosbag2_tests__mcap_cdr_test": 7,
    "rosbag2/derived__plotjuggler_fake_joint_state_mcap": 2725,
    "ros1/plotjuggler__fake_joint_state.bag": 2725,
}
REAL_LOG_TYPES = {
    "/odom": "nav_msgs/msg/Odometry",
    "/tf": "tf2_msgs/msg/TFMessage",
    "/amcl_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "/imu": "sensor_msgs/msg/Imu",
    "/battery": "sensor_msgs/msg/BatteryState",
    "/pose": "geometry_msgs/msg/PoseStamped",
    "/fake_joints_state": "sensor_msgs/msg/JointState",
    "/array_topic": "test_msgs/msg/Arrays",
    "/test_topic": "test_msgs/msg/BasicTypes",
}


def independent_counts(path: Path) -> tuple[Counter[str], int, int]:
    """Per-topic counts and the first/last log time, from ``mcap``'s reader or from ``rosbags``."""
    times: list[int] = []
    counts: Counter[str] = Counter()
    if path.suffix == ".mcap":
        with path.open("rb") as fh:
            for _schema, channel, message in make_reader(fh).iter_messages():
                counts[channel.topic] += 1
                times.append(message.log_time)
    else:
        with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
            for connection, timestamp, _data in reader.messages():
                counts[connection.topic] += 1
                times.append(timestamp)
    return counts, min(times), max(times)


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def chunk_indexes(path: Path) -> list:
    with path.open("rb") as fh:
        return make_reader(fh).get_summary().chunk_indexes


# -- real logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(REAL_LOG_COUNTS))
def test_real_logs(relative: str) -> None:
    require_real_logs()
    path = REAL_LOGS / relative

    manifest = inspect_log(path)

    assert manifest.verdict == "ok", manifest.reason
    assert manifest.reason is None and manifest.lost_messages == 0
    assert manifest.key == path.name
    counts = {t.topic: t.count for t in manifest.topics}
    assert counts == REAL_LOG_COUNTS[relative]
    assert manifest.message_count == REAL_LOG_TOTALS[relative] == sum(counts.values())
    reference, first, last = independent_counts(path)
    assert {t: n for t, n in counts.items() if n} == dict(reference)
    assert (manifest.start_ns, manifest.end_ns) == (first, last)
    for topic in manifest.topics:
        if topic.topic in REAL_LOG_TYPES:
            assert topic.type == REAL_LOG_TYPES[topic.topic]
        assert topic.encoding == ("ros1" if relative.startswith("ros1/") else "cdr")
    if path.is_file():
        assert manifest.size == path.stat().st_size
        assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert FileManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def real_log_inputs() -> list[str]:
    """Every log under real-logs, as inspect_log takes them: MCAP files (also each part of a
    rosbag2 folder on its own), ROS 1 bags and rosbag2 folders. Found, not listed, so that a log
    added there is checked too."""
    if not REAL_LOGS.is_dir():
        return ["missing"]  # require_real_logs() then fails in CI, skips on a laptop
    found = [*REAL_LOGS.glob("*/*.mcap"), *REAL_LOGS.glob("*/*.bag"), *REAL_LOGS.glob("rosbag2/*/*.mcap")]
    found += [p for p in REAL_LOGS.glob("rosbag2/*") if p.is_dir()]
    return sorted(p.relative_to(REAL_LOGS).as_posix() for p in found)


def reference_topics(path: Path) -> dict[str, tuple[str, int, int, int]]:
    """Per topic: type, count, first and last log time, from ``mcap``'s reader or ``rosbags``."""
    seen: dict[str, list] = {}

    def add(topic: str, type_: str, t: int) -> None:
        entry = seen.setdefault(topic, [type_, 0, t, t])
        entry[1] += 1
        entry[2], entry[3] = min(entry[2], t), max(entry[3], t)

    if path.suffix == ".mcap":
        with path.open("rb") as fh:
            for schema, channel, message in make_reader(fh).iter_messages():
                add(channel.topic, schema.name if schema else "", message.log_time)
    else:
        with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
            for connection, timestamp, _data in reader.messages():
                add(connection.topic, connection.msgtype, timestamp)
    return {topic: tuple(entry) for topic, entry in seen.items()}


@pytest.mark.parametrize("relative", real_log_inputs())
def test_every_real_log_matches_the_reference_readers(relative: str) -> None:
    path = require_real_logs() / relative

    manifest = inspect_log(path)

    assert manifest.verdict == "ok", manifest.reason
    ours = {t.topic: (t.type, t.count, t.first_ns, t.last_ns) for t in manifest.topics if t.count}
    assert ours == reference_topics(path)
    assert all(t.first_ns == t.last_ns == 0 for t in manifest.topics if not t.count)


def test_joint_state_stream_has_its_rate() -> None:
    require_real_logs()
    manifest = inspect_log(REAL_LOGS / "ros1/plotjuggler__fake_joint_state.bag")
    (topic,) = manifest.topics
    assert topic.rate_hz == pytest.approx(1000, rel=0.01)  # "about 1 kHz", says the README


# -- logs written here ----------------------------------------------------------------------------


def test_intact_log(tmp_path: Path) -> None:
    path = tmp_path / "arm.mcap"
    counts = write_test_log(path)

    manifest = inspect_log(path, key="raw/robot-7/arm.mcap")

    assert manifest.verdict == "ok" and manifest.reason is None
    assert manifest.key == "raw/robot-7/arm.mcap"
    assert manifest.message_count == sum(counts.values())
    assert manifest.size == path.stat().st_size
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    joints, status = manifest.topics
    assert joints == TopicStats(
        topic="/joint_states",
        type="sensor_msgs/msg/JointState",
        encoding="cdr",
        count=200,
        first_ns=T0,
        last_ns=T0 + 199 * PERIOD_NS,
        rate_hz=pytest.approx(100.0),
        schema_encoding="ros2msg",
        decodable=True,
    )
    assert (status.topic, status.type, status.count) == ("/status", "std_msgs/msg/String", 20)
    assert manifest.start_ns == T0 and manifest.end_ns == T0 + 199 * PERIOD_NS
    assert FileManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_truncated_log_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "cut.mcap"
    counts = write_test_log(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    manifest = inspect_log(path, key="raw/robot-7/cut.mcap")

    assert manifest.verdict == "recovered"
    assert 0 < manifest.message_count < sum(counts.values())
    assert manifest.reason.startswith("raw/robot-7/cut.mcap: truncated at byte")
    assert f"kept {manifest.message_count} messages" in manifest.reason
    assert manifest.lost_messages is None  # the summary went with the tail
    assert manifest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_log_cut_inside_its_summary_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tail.mcap"
    counts = write_test_log(path)
    path.write_bytes(path.read_bytes()[:-10])

    manifest = inspect_log(path)

    assert manifest.verdict == "recovered"
    assert manifest.message_count == sum(counts.values())
    assert manifest.lost_messages == 0
    assert "no valid footer" in manifest.reason


def test_zero_filled_tail_is_recovered(tmp_path: Path) -> None:
    # What a recorder that preallocates its file leaves behind when it is killed.
    path = tmp_path / "prealloc.mcap"
    counts = write_test_log(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data)))

    manifest = inspect_log(path)

    assert manifest.verdict == "recovered"
    assert 0 < manifest.message_count < sum(counts.values())
    assert "zero bytes" in manifest.reason and str(path) in manifest.reason


@pytest.mark.parametrize("compression", [CompressionType.ZSTD, CompressionType.NONE])
def test_flipped_byte_inside_a_chunk_loses_only_that_chunk(tmp_path: Path, compression: CompressionType) -> None:
    path = tmp_path / "flipped.mcap"
    counts = write_test_log(path, compression=compression)
    chunk = chunk_indexes(path)[2]
    intact = {m.log_time_ns for m in iter_messages(path)}
    flip(path, chunk.chunk_start_offset + chunk.chunk_length // 2)

    manifest = inspect_log(path)

    assert manifest.verdict == "recovered"
    assert f"chunk at byte {chunk.chunk_start_offset}" in manifest.reason
    assert manifest.lost_messages == sum(counts.values()) - manifest.message_count > 0
    # Exactly the messages of that chunk are gone.
    survivors = {m.log_time_ns for m in iter_messages(path)}
    lost = intact - survivors
    assert len(lost) == manifest.lost_messages
    assert all(chunk.message_start_time <= t <= chunk.message_end_time for t in lost)


def test_flipped_byte_in_the_only_chunk_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "one_chunk.mcap"
    write_test_log(path, chunk_size=1 << 20)
    (chunk,) = chunk_indexes(path)
    flip(path, chunk.chunk_start_offset + chunk.chunk_length // 2)

    manifest = inspect_log(path)

    assert manifest.verdict == "rejected"
    assert manifest.message_count == 0 and manifest.topics[0].count == 0
    assert manifest.reason.startswith(f"{path}: chunk at byte {chunk.chunk_start_offset}")


def test_corrupt_chunk_length_is_read_by_the_chunk_layout(tmp_path: Path) -> None:
    path = tmp_path / "bad_length.mcap"
    counts = write_test_log(path)
    chunks = chunk_indexes(path)
    flip(path, chunks[4].chunk_start_offset + 4, 0x10)  # a high byte of the record length

    manifest = inspect_log(path)

    # The chunk's own header still lays it out, and its CRC vouches for what was read.
    assert manifest.verdict == "recovered"
    assert f"chunk at byte {chunks[4].chunk_start_offset}: its record length" in manifest.reason
    assert manifest.message_count == sum(counts.values())
    assert manifest.lost_messages == 0 and manifest.lost_ranges == ()


def test_unframeable_chunk_is_skipped_using_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "zeroed_header.mcap"
    counts = write_test_log(path)
    chunks = chunk_indexes(path)
    data = bytearray(path.read_bytes())
    data[chunks[4].chunk_start_offset : chunks[4].chunk_start_offset + 9] = bytes(9)
    path.write_bytes(bytes(data))

    manifest = inspect_log(path)

    assert manifest.verdict == "recovered"
    assert f"unreadable record at byte {chunks[4].chunk_start_offset}: zero bytes" in manifest.reason
    assert manifest.lost_messages == sum(counts.values()) - manifest.message_count > 0
    assert manifest.lost_ranges == ((chunks[4].message_start_time, chunks[4].message_end_time),)
    assert manifest.end_ns == T0 + 199 * PERIOD_NS  # the chunks after the damage were read


def test_damage_outside_chunks_is_caught_by_the_data_section_crc(tmp_path: Path) -> None:
    path = tmp_path / "unchunked.mcap"
    with path.open("wb") as fh:
        writer = McapWriter(fh, use_chunking=False, enable_data_crcs=True)
        writer.start(profile="ros2")
        schema = writer.register_schema("sensor_msgs/msg/JointState", "ros2msg", JOINT_STATE_MSGDEF.encode())
        channel = writer.register_channel("/joint_states", "cdr", schema)
        for i in range(50):
            writer.add_message(channel, T0 + i * PERIOD_NS, b"\x00\x01\x00\x00" + bytes(40), T0)
        writer.finish()
    assert inspect_log(path).verdict == "ok"
    flip(path, path.stat().st_size // 3, 0x01)

    manifest = inspect_log(path)

    assert manifest.verdict == "recovered"
    assert "data section CRC mismatch" in manifest.reason
    assert manifest.lost_messages is None


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.mcap", b"", "empty file (0 bytes)"),
        ("notes.txt", b"Robot was fine today.\n", "not a recognised log format"),
        ("header_only.mcap", b"\x89MCAP0\r\n\x01", "truncated at byte 8"),
    ],
)
def test_unusable_files_are_rejected(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    manifest = inspect_log(path)

    assert manifest.verdict == "rejected"
    assert manifest.reason.startswith(f"{path}: ")
    assert problem in manifest.reason
    assert manifest.message_count == 0 and manifest.topics == ()
    assert manifest.start_ns is None and manifest.end_ns is None
    assert manifest.lost_messages is None  # the reason states no count: what was meant to be there is unknown
    assert manifest.size == len(content)
    assert manifest.sha256 == hashlib.sha256(content).hexdigest()


def test_valid_log_without_messages_is_empty_not_rejected(tmp_path: Path) -> None:
    path = tmp_path / "idle.mcap"
    write_test_log(path, count=0)

    manifest = inspect_log(path)

    # Not damage (that is "rejected"), and not data either.
    assert manifest.verdict == "empty"
    assert manifest.reason == f"{path}: a valid log that holds no messages"
    assert manifest.lost_messages == 0 and manifest.lost_ranges == ()


def test_manifest_written_before_lost_ranges_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "arm.mcap"
    write_test_log(path)
    manifest = inspect_log(path)
    old = manifest.to_dict()
    del old["lost_ranges"]
    for topic in old["topics"]:
        del topic["undecodable"], topic["decode_error"]

    assert FileManifest.from_dict(json.loads(json.dumps(old))) == manifest


def test_lost_ranges_survive_a_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "flipped.mcap"
    write_test_log(path)
    chunk = chunk_indexes(path)[3]
    flip(path, chunk.chunk_start_offset + chunk.chunk_length // 2)

    manifest = inspect_log(path)
    document = json.loads(json.dumps(manifest.to_dict()))

    assert document["lost_ranges"] == [[chunk.message_start_time, chunk.message_end_time]]
    assert FileManifest.from_dict(document) == manifest


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_log(tmp_path / "absent.mcap")


# -- rosbag2 folders and ROS 1 bags ---------------------------------------------------------------


def write_rosbag2_folder(folder: Path, parts: int = 2) -> dict[str, int]:
    """A rosbag2 MCAP bag split over ``parts`` files, with the metadata.yaml rosbag2 writes."""
    folder.mkdir()
    totals: Counter[str] = Counter()
    names = []
    for part in range(parts):
        name = f"{folder.name}_{part}.mcap"
        totals.update(write_test_log(folder / name, count=100))
        names.append(name)
    metadata = {
        "rosbag2_bagfile_information": {
            "version": 5,
            "storage_identifier": "mcap",
            "relative_file_paths": names,
            "message_count": sum(totals.values()),
            "topics_with_message_count": [
                {"topic_metadata": {"name": topic, "type": kind, "serialization_format": "cdr"}, "message_count": n}
                for topic, kind, n in [
                    ("/joint_states", "sensor_msgs/msg/JointState", totals["/joint_states"]),
                    ("/status", "std_msgs/msg/String", totals["/status"]),
                    ("/camera/image", "sensor_msgs/msg/Image", 0),
                ]
            ],
        }
    }
    (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    return dict(totals)


def test_rosbag2_folder(tmp_path: Path) -> None:
    folder = tmp_path / "session"
    totals = write_rosbag2_folder(folder)

    manifest = inspect_log(folder)

    assert manifest.verdict == "ok", manifest.reason
    assert manifest.key == "session"
    assert {t.topic: t.count for t in manifest.topics} == {**totals, "/camera/image": 0}
    files = sorted(p for p in folder.iterdir())
    assert manifest.size == sum(p.stat().st_size for p in files)
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    assert manifest.sha256 == hashlib.sha256(listing.encode()).hexdigest()


def test_rosbag2_folder_missing_a_file_is_recovered(tmp_path: Path) -> None:
    folder = tmp_path / "session"
    totals = write_rosbag2_folder(folder)
    (folder / "session_1.mcap").unlink()

    manifest = inspect_log(folder, key="raw/session")

    assert manifest.verdict == "recovered"
    assert manifest.reason.startswith("raw/session: session_1.mcap: listed in metadata.yaml but missing")
    assert manifest.message_count == sum(totals.values()) // 2
    assert manifest.lost_messages == sum(totals.values()) // 2


def test_rosbag2_folder_with_a_damaged_file(tmp_path: Path) -> None:
    folder = tmp_path / "session"
    totals = write_rosbag2_folder(folder)
    damaged = folder / "session_0.mcap"
    damaged.write_bytes(damaged.read_bytes()[:4000])

    manifest = inspect_log(folder)

    assert manifest.verdict == "recovered"
    assert "session_0.mcap: truncated" in manifest.reason
    assert manifest.lost_messages == sum(totals.values()) - manifest.message_count > 0


def test_rosbag2_folder_without_metadata_is_recovered(tmp_path: Path) -> None:
    folder = tmp_path / "session"
    totals = write_rosbag2_folder(folder)
    (folder / "metadata.yaml").unlink()

    manifest = inspect_log(folder)

    assert manifest.verdict == "recovered"
    assert "no metadata.yaml" in manifest.reason
    assert manifest.message_count == sum(totals.values())


def test_ros1_bag_cut_inside_its_header_is_rejected_not_raised(tmp_path: Path) -> None:
    require_real_logs()
    source = REAL_LOGS / "ros1/plotjuggler__fake_joint_state.bag"
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes()[:5000])  # the bag header record, and no chunk

    manifest = inspect_log(path)

    assert manifest.verdict == "rejected"
    assert manifest.reason.startswith(f"{path}: rosbags cannot open it")
    assert "no message could be read" in manifest.reason


def test_folder_whose_storage_file_is_not_a_bag_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "session"
    write_rosbag2_folder(folder, parts=1)
    (folder / "session_0.mcap").write_bytes(b"PK\x03\x04 a zip file, uploaded by mistake")

    manifest = inspect_log(folder, key="raw/session")

    assert manifest.verdict == "rejected"
    assert manifest.reason.startswith("raw/session: session_0.mcap: neither MCAP nor SQLite "
                                      "(no known magic bytes at its start; it looks like a ZIP archive)")
