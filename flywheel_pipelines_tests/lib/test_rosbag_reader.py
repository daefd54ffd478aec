"""Tests for the tolerant MCAP reader, on logs written here and on real logs from other tools."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_ros2.writer import Writer as Ros2Writer

from flywheel_pipelines.lib.rosbag.reader import iter_decoded, iter_messages
from flywheel_pipelines.lib.rosbag.report import LogReadError, RawMessage, ReadStats
from flywheel_pipelines_tests.conftest import require_real_logs

REAL_LOGS = Path(__file__).resolve().parents[3] / "shared" / "real-logs"

# The ROS 2 concatenated .msg format that rosbag2 stores: the type itself, then every type it
# depends on after a separator line, so the file can be decoded without a ROS installation.
JOINT_STATE_MSGDEF = """std_msgs/Header header
string[] name
float64[] position
float64[] velocity
float64[] effort
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""
STRING_MSGDEF = "string data\n"

T0 = 1_700_000_000_000_000_000
PERIOD_NS = 10_000_000  # 100 Hz
STATUS_EVERY = 10


def joint_state(i: int) -> dict:
    """The JointState written as message ``i`` (position and velocity derive from ``i``)."""
    return {
        "header": {"stamp": {"sec": 1_700_000_000 + i // 100, "nanosec": (i % 100) * 10_000_000}, "frame_id": "base"},
        "name": ["shoulder", "elbow"],
        "position": [0.001 * i, -0.002 * i],
        "velocity": [float(i), 0.5],
        "effort": [],
    }


def write_test_log(
    path: Path,
    *,
    count: int = 200,
    chunk_size: int = 2048,
    compression: CompressionType = CompressionType.ZSTD,
    order: Iterable[int] | None = None,
) -> dict[str, int]:
    """Writes a small ROS 2 MCAP log: JointState at 100 Hz on /joint_states, String on /status.

    Args:
        path: Where to write.
        count: JointState messages; every tenth one is followed 1 ns later by a /status message.
        chunk_size: Small by default so that the file has many chunks to damage independently.
        compression: Chunk compression.
        order: The order in which message numbers are written (default ascending), to produce
            chunks whose log times are out of file order.

    Returns:
        Messages per topic.
    """
    with path.open("wb") as fh:
        writer = Ros2Writer(fh, chunk_size=chunk_size, compression=compression)
        js = writer.register_msgdef("sensor_msgs/msg/JointState", JOINT_STATE_MSGDEF)
        status = writer.register_msgdef("std_msgs/msg/String", STRING_MSGDEF)
        for i in order if order is not None else range(count):
            t = T0 + i * PERIOD_NS
            writer.write_message("/joint_states", js, joint_state(i), log_time=t, publish_time=t - 1000)
            if i % STATUS_EVERY == 0:
                writer.write_message("/status", status, {"data": f"step {i}"}, log_time=t + 1)
        writer.finish()
    return {"/joint_states": count, "/status": (count + STATUS_EVERY - 1) // STATUS_EVERY}


def mcap_reference(path: Path) -> list[tuple[str, str, int, int, bytes]]:
    """The messages as ``mcap``'s own reader returns them in log-time order."""
    with path.open("rb") as fh:
        return [
            (channel.topic, schema.name if schema else "", msg.log_time, msg.publish_time, msg.data)
            for schema, channel, msg in make_reader(fh).iter_messages(log_time_order=True)
        ]


def as_tuples(messages: Iterable[RawMessage]) -> list[tuple[str, str, int, int, bytes]]:
    return [(m.topic, m.schema_name, m.log_time_ns, m.publish_time_ns, m.data) for m in messages]


# -- intact logs ----------------------------------------------------------------------------------


def test_iter_decoded_round_trips_values(tmp_path: Path) -> None:
    path = tmp_path / "arm.mcap"
    counts = write_test_log(path)
    stats = ReadStats()

    decoded = list(iter_decoded(path, stats=stats))

    assert len(decoded) == sum(counts.values()) == stats.messages
    assert stats.undecodable == 0 and not stats.damaged and stats.lost_messages == 0
    joints = [(raw, msg) for raw, msg in decoded if raw.topic == "/joint_states"]
    assert len(joints) == counts["/joint_states"]
    for i, (raw, msg) in enumerate(joints):
        expected = joint_state(i)
        assert raw.schema_name == "sensor_msgs/msg/JointState"
        assert raw.log_time_ns == T0 + i * PERIOD_NS
        assert raw.publish_time_ns == raw.log_time_ns - 1000
        assert msg.header.stamp.sec == expected["header"]["stamp"]["sec"]
        assert msg.header.stamp.nanosec == expected["header"]["stamp"]["nanosec"]
        assert msg.header.frame_id == "base"
        assert list(msg.name) == ["shoulder", "elbow"]
        assert list(msg.position) == expected["position"]
        assert list(msg.velocity) == expected["velocity"]
        assert list(msg.effort) == []
    statuses = [(raw, msg) for raw, msg in decoded if raw.topic == "/status"]
    assert [msg.data for _, msg in statuses] == [f"step {i}" for i in range(0, 200, STATUS_EVERY)]
    assert {raw.schema_name for raw, _ in statuses} == {"std_msgs/msg/String"}


def test_messages_match_mcap_reader_in_log_time_order(tmp_path: Path) -> None:
    path = tmp_path / "arm.mcap"
    write_test_log(path)

    ours = as_tuples(iter_messages(path))

    assert ours == mcap_reference(path)
    times = [t[2] for t in ours]
    assert times == sorted(times)


def test_chunks_out_of_log_time_order_are_merged(tmp_path: Path) -> None:
    # Later blocks of time written first: chunk order in the file no longer follows log time.
    order = [i for block in (range(150, 200), range(100, 150), range(50), range(50, 100)) for i in block]
    path = tmp_path / "shuffled.mcap"
    write_test_log(path, order=order, chunk_size=1024)

    ours = as_tuples(iter_messages(path))

    times = [t[2] for t in ours]
    assert times == sorted(times)
    assert len(ours) == 220
    assert ours == mcap_reference(path)


def test_unchunked_file_reads_the_same(tmp_path: Path) -> None:
    chunked = tmp_path / "chunked.mcap"
    write_test_log(chunked)
    unchunked = tmp_path / "unchunked.mcap"
    with unchunked.open("wb") as fh:
        writer = McapWriter(fh, use_chunking=False, enable_data_crcs=True)
        writer.start(profile="ros2")
        js = writer.register_schema("sensor_msgs/msg/JointState", "ros2msg", JOINT_STATE_MSGDEF.encode())
        status = writer.register_schema("std_msgs/msg/String", "ros2msg", STRING_MSGDEF.encode())
        channels = {
            "/joint_states": writer.register_channel("/joint_states", "cdr", js),
            "/status": writer.register_channel("/status", "cdr", status),
        }
        for m in iter_messages(chunked):
            writer.add_message(channels[m.topic], m.log_time_ns, m.data, m.publish_time_ns)
        writer.finish()

    stats = ReadStats()
    assert as_tuples(iter_messages(unchunked, stats=stats)) == as_tuples(iter_messages(chunked))
    assert not stats.damaged


def test_topic_filter(tmp_path: Path) -> None:
    path = tmp_path / "arm.mcap"
    counts = write_test_log(path)

    status = list(iter_messages(path, topics=["/status"]))
    assert len(status) == counts["/status"]
    assert {m.topic for m in status} == {"/status"}
    # A lone string means that one topic, not a set of characters.
    assert len(list(iter_messages(path, topics="/status"))) == counts["/status"]
    decoded = list(iter_decoded(path, topics={"/joint_states"}))
    assert len(decoded) == counts["/joint_states"]
    assert list(iter_messages(path, topics=["/no_such_topic"])) == []
    assert list(iter_messages(path, topics=[])) == []


def test_undecodable_messages_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "mixed.mcap"
    with path.open("wb") as fh:
        writer = McapWriter(fh)
        writer.start(profile="ros2")
        ros2 = writer.register_schema("std_msgs/msg/String", "ros2msg", STRING_MSGDEF.encode())
        good = writer.register_channel("/status", "cdr", ros2)
        # A payload cut inside the string's length field.
        bad = writer.register_channel("/garbled", "cdr", ros2)
        js = writer.register_schema("Pose", "jsonschema", b"{}")
        other = writer.register_channel("/json", "json", js)
        cdr_hello = bytes([0, 1, 0, 0, 6, 0, 0, 0]) + b"hello\x00"
        for i in range(5):
            writer.add_message(good, T0 + 3 * i, cdr_hello, T0 + 3 * i)
            writer.add_message(bad, T0 + 3 * i + 1, bytes([0, 1, 0, 0, 5, 0]), T0)
            writer.add_message(other, T0 + 3 * i + 2, json.dumps({"x": i}).encode(), T0)
        writer.finish()
    stats = ReadStats()

    decoded = list(iter_decoded(path, stats=stats))

    assert [msg.data for _, msg in decoded] == ["hello"] * 5
    assert stats.messages == 15
    assert stats.undecodable == 10
    assert stats.undecodable_by_topic == {"/garbled": 5, "/json": 5}
    assert stats.first_decode_error is not None and stats.first_decode_error.startswith("/garbled")
    assert not stats.damaged
    assert len(list(iter_messages(path))) == 15


@pytest.mark.parametrize(
    "relative",
    [
        "mcap/evo__nav2_turtlebot.mcap",
        "rosbag2/ros2_rosbag2__rosbag2_tests__mcap_cdr_test/cdr_test_0.mcap",
        "rosbag2/derived__plotjuggler_fake_joint_state_mcap/derived__plotjuggler_fake_joint_state_mcap.mcap",
        "rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag/wbag_0.mcap",
    ],
)
def test_real_logs_match_mcap_reader_and_decode(relative: str) -> None:
    require_real_logs()
    path = REAL_LOGS / relative
    stats = ReadStats()

    ours = as_tuples(iter_messages(path, stats=stats))

    assert ours == mcap_reference(path)
    assert not stats.damaged and stats.lost_messages == 0
    decode_stats = ReadStats()
    assert sum(1 for _ in iter_decoded(path, stats=decode_stats)) == len(ours)
    assert decode_stats.undecodable == 0


# -- damaged logs ---------------------------------------------------------------------------------


def test_truncated_file_yields_what_precedes_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.mcap"
    counts = write_test_log(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    stats = ReadStats()

    messages = list(iter_messages(path, stats=stats))

    assert 0 < len(messages) < sum(counts.values())
    times = [m.log_time_ns for m in messages]
    assert times == sorted(times)
    assert stats.damaged and stats.lost_messages is None  # no summary left to count against
    assert "truncated" in stats.problems[0]
    assert stats.describe().startswith(str(path))


def test_problems_name_the_source_the_caller_set(tmp_path: Path) -> None:
    path = tmp_path / "cut.mcap"
    write_test_log(path)
    path.write_bytes(path.read_bytes()[:100])
    stats = ReadStats(source="raw/robot-7/cut.mcap")

    with pytest.raises(LogReadError) as info:
        list(iter_decoded(path, stats=stats))

    assert str(info.value).startswith("raw/robot-7/cut.mcap: truncated at byte")
    assert stats.describe().startswith("raw/robot-7/cut.mcap: ")


def test_truncated_out_of_order_file_finds_definitions_in_later_chunks(tmp_path: Path) -> None:
    # Without a summary, channels are only defined inside the first chunk of the file, which
    # holds the latest messages: the earliest chunk must still resolve its channel.
    order = [i for block in (range(150, 200), range(100, 150), range(50), range(50, 100)) for i in block]
    path = tmp_path / "shuffled_cut.mcap"
    write_test_log(path, order=order, chunk_size=1024)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 8 // 10])
    stats = ReadStats()

    messages = list(iter_messages(path, stats=stats))

    times = [m.log_time_ns for m in messages]
    assert times == sorted(times)
    assert times[0] == T0  # message 0 sits in a chunk far from its channel's definition
    assert len(stats.problems) == 1 and "truncated" in stats.problems[0]


def test_filtered_read_of_a_damaged_file_does_not_raise_for_an_absent_topic(tmp_path: Path) -> None:
    path = tmp_path / "cut.mcap"
    write_test_log(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    stats = ReadStats()

    assert list(iter_messages(path, topics=["/absent"], stats=stats)) == []
    assert stats.damaged


def test_flipped_byte_in_one_chunk_skips_only_that_chunk(tmp_path: Path) -> None:
    path = tmp_path / "flipped.mcap"
    counts = write_test_log(path, compression=CompressionType.NONE)
    with path.open("rb") as fh:
        chunk = make_reader(fh).get_summary().chunk_indexes[3]
    data = bytearray(path.read_bytes())
    data[chunk.chunk_start_offset + chunk.chunk_length - 40] ^= 0xFF
    path.write_bytes(bytes(data))
    stats = ReadStats()

    messages = list(iter_messages(path, stats=stats))

    assert stats.lost_messages == sum(counts.values()) - len(messages) > 0
    assert any(f"chunk at byte {chunk.chunk_start_offset}: CRC mismatch" in p for p in stats.problems)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.mcap", b"", "empty file"),
        ("notes.mcap", b"just some text, not a log\n", "not an MCAP file"),
        ("header_only.mcap", b"\x89MCAP0\r\n\x01\x40\x00\x00", "truncated"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(LogReadError) as info:
        list(iter_messages(path))

    assert str(path) in str(info.value)
    assert problem in str(info.value)
    assert info.value.source == str(path)


def test_missing_file_and_directory_raise_log_read_error(tmp_path: Path) -> None:
    with pytest.raises(LogReadError, match="cannot open"):
        list(iter_messages(tmp_path / "absent.mcap"))
    with pytest.raises(LogReadError, match="directory"):
        list(iter_messages(tmp_path))


@pytest.mark.parametrize("compression", [CompressionType.ZSTD, CompressionType.LZ4, CompressionType.NONE])
def test_file_cut_inside_its_last_chunk_keeps_the_complete_messages(tmp_path: Path, compression) -> None:
    path = tmp_path / "cut.mcap"
    # One chunk, large enough for several compressed blocks (zstd and lz4 decode block by block).
    write_test_log(path, count=4000, chunk_size=1 << 24, compression=compression)
    with path.open("rb") as fh:
        (chunk,) = make_reader(fh).get_summary().chunk_indexes
        in_file_order = [(c.topic, m.log_time) for _s, c, m in make_reader(fh).iter_messages(log_time_order=False)]
    path.write_bytes(path.read_bytes()[: chunk.chunk_start_offset + chunk.chunk_length * 3 // 4])
    stats = ReadStats()

    messages = list(iter_messages(path, stats=stats))

    kept = [(m.topic, m.log_time_ns) for m in messages]
    assert 0 < len(kept) < len(in_file_order)
    assert sorted(kept) == sorted(in_file_order[: len(kept)])
    (problem,) = stats.problems
    assert problem.startswith(f"truncated at byte {path.stat().st_size}: the file ends inside the chunk")
    assert f"kept the {len(kept)} complete messages before the cut" in problem
    assert stats.lost_messages is None
    assert stats.lost_ranges == [(kept[-1][1], chunk.message_end_time)]


def test_index_keeps_its_contract_for_the_columnar_reader(tmp_path: Path) -> None:
    """``_McapScan.index()`` gives one unit per chunk with its MessageIndex records, a cut chunk is
    marked ``cut`` (no index, and ``_chunk_records`` refuses it), and nothing is decompressed."""
    from flywheel_pipelines.lib.rosbag.mcap_format import _Damage
    from flywheel_pipelines.lib.rosbag.mcap_scan import _McapScan

    path = tmp_path / "arm.mcap"
    write_test_log(path)
    with path.open("rb") as fh:
        summary = make_reader(fh).get_summary()
    with _McapScan(path, str(path), None, ReadStats()) as scan:
        scan.index()
        units = [u for u in scan._units if u.is_chunk]
        assert [u.offset for u in units] == [c.chunk_start_offset for c in summary.chunk_indexes]
        for unit, chunk in zip(units, summary.chunk_indexes, strict=True):
            assert [offset - 9 for offset, _length in unit.index_records] == sorted(chunk.message_index_offsets.values())
            assert not unit.cut and len(scan._chunk_records(unit)) == chunk.uncompressed_size

    last = summary.chunk_indexes[-1]
    path.write_bytes(path.read_bytes()[: last.chunk_start_offset + last.chunk_length // 2])
    with _McapScan(path, str(path), None, ReadStats()) as scan:
        scan.index()
        *intact, cut = [u for u in scan._units if u.is_chunk]
        assert cut.cut and cut.offset == last.chunk_start_offset and cut.index_records == []
        assert all(u.index_records and not u.cut for u in intact)
        with pytest.raises(_Damage, match="file ends inside the chunk"):
            scan._chunk_records(cut)


def test_schemas_without_a_decoder_are_counted_per_topic(tmp_path: Path) -> None:
    path = tmp_path / "schemas.mcap"
    cdr_hello = bytes([0, 1, 0, 0, 6, 0, 0, 0]) + b"hello\x00"
    with path.open("wb") as fh:
        writer = McapWriter(fh)
        writer.start(profile="ros2")
        good = writer.register_channel(
            "/status", "cdr", writer.register_schema("std_msgs/msg/String", "ros2msg", STRING_MSGDEF.encode())
        )
        unknown = writer.register_channel("/custom", "cdr", writer.register_schema("acme/Thing", "acme-idl", b"?"))
        schemaless = writer.register_channel("/raw", "cdr", 0)
        unparseable = writer.register_channel(
            "/broken", "cdr", writer.register_schema("pkg/msg/Broken", "ros2msg", b"no such type here\n")
        )
        for i in range(3):
            for n, channel in enumerate((good, unknown, schemaless, unparseable)):
                writer.add_message(channel, T0 + 4 * i + n, cdr_hello, T0)
        writer.finish()
    stats = ReadStats()

    decoded = list(iter_decoded(path, stats=stats))

    assert [raw.topic for raw, _msg in decoded] == ["/status"] * 3
    assert stats.undecodable_by_topic == {"/custom": 3, "/raw": 3, "/broken": 3}
    assert stats.messages == 12 and not stats.damaged
