"""JSON and Protobuf MCAP channels, written by those formats' own writers, read into columns and episodes.

References: ``json.loads`` of each payload for the mcap Writer's json channels, and
mcap-protobuf-support's own decoder for its Writer's protobuf channels. Every requested field of
every message must match.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from flywheel_pipelines.lib.episodes.embodiment import load_embodiment, parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, standardize
from flywheel_pipelines.lib.rosbag.columnar import TopicRequest, read_columns
from flywheel_pipelines.lib.rosbag.manifest import inspect_log
from flywheel_pipelines.lib.rosbag.report import ReadStats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from structured_logs import JOINTS, write_json_log, write_protobuf_log  # noqa: E402

DAY = "2026-11-22"


@pytest.fixture(scope="module")
def json_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("json") / "arm6_json.mcap"
    write_json_log(path, chunk_size=64 * 1024)  # several chunks, several batches
    return path


@pytest.fixture(scope="module")
def protobuf_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pb") / "arm6_pb.mcap"
    write_protobuf_log(path)
    return path


def _reference(path: Path, decode) -> dict[str, list]:
    out: dict[str, list] = {}
    with open(path, "rb") as fh:
        for schema, channel, message in make_reader(fh).iter_messages(log_time_order=False):
            out.setdefault(channel.topic, []).append((message.log_time, decode(schema, message.data)))
    return out


def test_json_channels_match_json_loads_message_by_message(json_log: Path) -> None:
    requests = {"/arm/joint_states": TopicRequest(("position", "velocity", "position[2]"), ("name",), stamp=True),
                "/arm/command": TopicRequest(("position", "gripper.width"), (), stamp=True),
                "/arm/events": TopicRequest((), ("data",), stamp=True)}
    stats = ReadStats()
    columns = read_columns(json_log, requests, stats=stats)
    assert stats.undecodable == 0 and not stats.problems
    assert stats.read_by_topic == {"/arm/joint_states": 2000, "/arm/command": 500, "/arm/events": 4}
    assert set(stats.encoding_by_topic.values()) == {"json/jsonschema"}
    reference = _reference(json_log, lambda _schema, data: json.loads(data))
    for topic, expected in reference.items():
        cols = columns[topic]
        assert len(cols) == len(expected)
        for i, (log_time, doc) in enumerate(expected):
            assert cols.log_time[i] == log_time
            assert cols.stamp[i] == doc["timestamp"]["sec"] * 10**9 + doc["timestamp"]["nsec"]
            if topic == "/arm/joint_states":
                np.testing.assert_array_equal(cols.numeric["position"][i], doc["position"])
                np.testing.assert_array_equal(cols.numeric["velocity"][i], doc["velocity"])
                assert cols.numeric["position[2]"][i, 0] == doc["position"][2]
                assert cols.text["name"][i] == doc["name"]
            elif topic == "/arm/command":
                np.testing.assert_array_equal(cols.numeric["position"][i], doc["position"])
                assert cols.numeric["gripper.width"][i, 0] == doc["gripper"]["width"]
            else:
                assert cols.text["data"][i] == doc["data"]
    # One layout: the joint names are decoded once per distinct list, not per message.
    assert columns["/arm/joint_states"].text_of_layout == [{"name": JOINTS}]


def test_protobuf_channels_match_mcap_protobuf_support_message_by_message(protobuf_log: Path) -> None:
    from mcap_protobuf.decoder import DecoderFactory

    factory = DecoderFactory()
    requests = {"/arm/joint_states": TopicRequest(("position", "velocity"), ("name",), stamp=True),
                "/arm/command": TopicRequest(("targets[0].position", "targets[5].position", "targets[6].position",
                                              "gripper_width"), (), stamp=True),
                "/arm/events": TopicRequest((), ("data",), stamp=True)}
    stats = ReadStats()
    columns = read_columns(protobuf_log, requests, stats=stats)
    assert stats.undecodable == 0 and not stats.problems
    assert set(stats.encoding_by_topic.values()) == {"protobuf/protobuf"}
    reference = _reference(protobuf_log, lambda schema, data: factory.decoder_for("protobuf", schema)(data))
    for topic, expected in reference.items():
        cols = columns[topic]
        assert len(cols) == len(expected)
        for i, (log_time, msg) in enumerate(expected):
            assert cols.log_time[i] == log_time
            assert cols.stamp[i] == msg.timestamp.seconds * 10**9 + msg.timestamp.nanos
            if topic == "/arm/joint_states":
                np.testing.assert_array_equal(cols.numeric["position"][i], list(msg.position))
                np.testing.assert_array_equal(cols.numeric["velocity"][i], list(msg.velocity))
                assert cols.text["name"][i] == list(msg.name)
            elif topic == "/arm/command":
                assert cols.numeric["targets[0].position"][i, 0] == msg.targets[0].position
                assert cols.numeric["targets[5].position"][i, 0] == msg.targets[5].position
                # Past the end in every message: no value at all (NaN once standardized), as for CDR.
                assert cols.numeric["targets[6].position"].shape == (len(expected), 0)
                assert cols.numeric["gripper_width"][i, 0] == np.float32(msg.gripper_width)
            else:
                assert cols.text["data"][i] == msg.data


@pytest.mark.parametrize(("mapping", "writer"), [("json_arm6", write_json_log), ("protobuf_arm6", write_protobuf_log)])
def test_shipped_example_mappings_standardize_their_logs(tmp_path: Path, mapping: str, writer) -> None:
    path = tmp_path / f"{mapping}.mcap"
    writer(path, seconds=10.0, episodes=2)
    emb = load_embodiment(mapping)
    result = standardize([SourceFile("raw/robot=a6/date=2026-11-22/log.mcap", path, "sha")], emb, robot="a6", day=DAY)
    episodes = result.episodes.to_pylist()
    assert [e["episode_id"] for e in episodes] == ["arm6-0", "arm6-1"]
    assert all(e["outcome"] == "success" and e["quality_ok"] for e in episodes), episodes
    assert result.frames.num_rows > 280 and result.empty_cause is None
    # Every message of every mapped topic is accounted for, and none is lost.
    for row in result.accounting:
        placed = row["undecodable"] + row["events"] + row["in_episodes"] + row["outside_episodes"]
        assert placed + sum(row["dropped"].values()) == row["read"], row
    by_topic = {r["topic"]: r for r in result.accounting}
    assert by_topic["/arm/joint_states"]["read"] == 2000 and by_topic["/arm/events"]["events"] == 4
    assert by_topic["/arm/joint_states"]["in_episodes"] > 1900 and by_topic["/arm/joint_states"]["outside_episodes"] > 0


def test_json_and_protobuf_logs_of_one_recording_give_the_same_frames(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mcap", tmp_path / "b.mcap"
    write_json_log(a)
    write_protobuf_log(b)
    ra = standardize([SourceFile("a", a, "-")], load_embodiment("json_arm6"), robot="a6", day=DAY)
    rb = standardize([SourceFile("b", b, "-")], load_embodiment("protobuf_arm6"), robot="a6", day=DAY)
    for column in ("timestamp_ns", "observation.state", "action"):
        assert ra.frames[column].to_pylist() == rb.frames[column].to_pylist()


def test_a_wrong_field_path_makes_the_day_fail_with_its_cause(json_log: Path) -> None:
    text = load_embodiment("json_arm6").source_text.replace("gripper.width]", "gripper.widht]")
    result = standardize([SourceFile("raw/x/log.mcap", json_log, "-")], parse_embodiment(text), robot="a6", day=DAY)
    assert result.frames.num_rows == 0
    assert result.empty_cause == (
        "robot a6 on 2026-11-22: the mapped topics hold 2504 messages but no frame came out (mapping json_arm6 v1): "
        "raw/x/log.mcap: /arm/command (json/jsonschema): all 500 messages undecodable: arm.Command: field "
        "gripper.widht does not exist (fields: width)")


def _write_bad_json(path: Path, payloads: list[bytes]) -> None:
    with open(path, "wb") as fh:
        writer = Writer(fh)
        writer.start()
        schema = writer.register_schema("Pose", "jsonschema", b'{"type": "object"}')
        channel = writer.register_channel("/pose", "json", schema)
        for i, payload in enumerate(payloads):
            writer.add_message(channel, i + 1, payload, i + 1)
        writer.finish()


def test_a_bad_json_payload_is_undecodable_with_its_reason_and_the_rest_decode(tmp_path: Path) -> None:
    path = tmp_path / "bad.mcap"
    _write_bad_json(path, [b'{"x": 1}', b'{"x": ', b'[1, 2]', b'{"y": 2}', b'{"x": "high"}', b'{"x": 4}',
                           b'{"x": NaN}', b'{"x": null}'])
    stats = ReadStats()
    cols = read_columns(path, {"/pose": TopicRequest(("x",))}, stats=stats)["/pose"]
    np.testing.assert_array_equal(cols.numeric["x"][:, 0], [1.0, 4.0, np.nan, np.nan])
    assert stats.undecodable_by_topic == {"/pose": 4} and stats.read_by_topic == {"/pose": 8}
    assert stats.decode_error_by_topic["/pose"].startswith("payload is not valid JSON")


def test_numbers_written_as_strings_are_not_taken_for_numbers(tmp_path: Path) -> None:
    path = tmp_path / "strings.mcap"
    _write_bad_json(path, [b'{"x": "1.5"}', b'{"x": "2.5"}'])
    stats = ReadStats()
    columns = read_columns(path, {"/pose": TopicRequest(("x",))}, stats=stats)
    assert len(columns["/pose"]) == 0
    assert stats.undecodable == 2
    assert stats.decode_error_by_topic["/pose"] == "field x is a str, not a number or an array of numbers"


def test_a_bad_protobuf_payload_is_undecodable_and_named(tmp_path: Path, protobuf_log: Path) -> None:
    path = tmp_path / "bad_pb.mcap"
    with open(protobuf_log, "rb") as fh, open(path, "wb") as out:
        reader = make_reader(fh)
        writer = Writer(out)
        writer.start()
        ids: dict[str, int] = {}
        for n, (schema, channel, message) in enumerate(reader.iter_messages(topics=["/arm/joint_states"])):
            if channel.topic not in ids:
                ids[channel.topic] = writer.register_channel(
                    channel.topic, "protobuf", writer.register_schema(schema.name, schema.encoding, schema.data))
            data = b"\xff\xff\xff" if n == 3 else message.data
            writer.add_message(ids[channel.topic], message.log_time, data, message.publish_time)
        writer.finish()
    stats = ReadStats()
    cols = read_columns(path, {"/arm/joint_states": TopicRequest(("position",))}, stats=stats)["/arm/joint_states"]
    assert len(cols) == 1999 and stats.undecodable == 1
    assert stats.first_decode_error.startswith("/arm/joint_states: payload is not a valid arm.JointState")


def test_inspect_says_per_channel_whether_it_decodes(json_log: Path, tmp_path: Path) -> None:
    manifest = inspect_log(json_log, decode=True)
    assert manifest.verdict == "ok"
    assert {(t.topic, t.encoding, t.schema_encoding, t.decodable, t.undecodable) for t in manifest.topics} == {
        ("/arm/joint_states", "json", "jsonschema", True, 0), ("/arm/command", "json", "jsonschema", True, 0),
        ("/arm/events", "json", "jsonschema", True, 0)}
    path = tmp_path / "bad.mcap"
    _write_bad_json(path, [b'{"x": 1}', b"not json"])
    [topic] = inspect_log(path, decode=True).topics
    assert topic.decodable and topic.undecodable == 1 and "JSONDecodeError" in topic.decode_error


def test_ros1_channels_in_an_mcap_file_are_decoded(tmp_path: Path) -> None:
    """An MCAP file with ``ros1`` channels and ``ros1msg`` schemas (as ROS 1 recorders to MCAP write
    them), made with mcap's Writer from the real ROS 1 bag, decodes like the bag itself."""
    from rosbags.rosbag1 import Reader

    from flywheel_pipelines_tests.conftest import require_real_logs

    bag = require_real_logs() / "ros1" / "plotjuggler__fake_joint_state.bag"
    path = tmp_path / "ros1.mcap"
    with Reader(bag) as reader, open(path, "wb") as fh:
        writer = Writer(fh)
        writer.start(profile="ros1")
        ids = {}
        for connection, timestamp, data in reader.messages():
            if connection.id not in ids:
                schema = writer.register_schema(connection.msgtype.replace("/msg/", "/"), "ros1msg",
                                                connection.msgdef.data.encode())
                ids[connection.id] = writer.register_channel(connection.topic, "ros1", schema)
            writer.add_message(ids[connection.id], timestamp, data, timestamp)
        writer.finish()
    request = {"/fake_joints_state": TopicRequest(("position",), ("name",), stamp=True)}
    from_mcap = read_columns(path, request)["/fake_joints_state"]
    from_bag = read_columns(bag, request)["/fake_joints_state"]
    assert len(from_mcap) == 2725
    np.testing.assert_array_equal(from_mcap.numeric["position"], from_bag.numeric["position"])
    np.testing.assert_array_equal(from_mcap.stamp, from_bag.stamp)
