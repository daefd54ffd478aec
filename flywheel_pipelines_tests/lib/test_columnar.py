"""The columnar fast path, checked message by message against the reference decoders.

mcap-ros2-support decodes every MCAP message here, rosbags every rosbag2 .db3 / ROS 1 message;
the fast path must give the same numbers and strings, whatever layout and batching it used.
"""

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer
from mcap_ros2.decoder import DecoderFactory

from flywheel_pipelines.lib.rosbag.cdr import MAX_TEMPLATES, CdrError, MessageType, StreamDecoder
from flywheel_pipelines.lib.rosbag.columnar import TopicRequest, read_columns
from flywheel_pipelines.lib.rosbag.report import ReadStats
from flywheel_pipelines_tests.conftest import require_real_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from arm7_log import write_arm7_log  # noqa: E402


def numeric_leaves(mtype: MessageType, typename: str | None = None, prefix: str = "") -> list[str]:
    """Every numeric field path of a type (arrays of messages: their first element)."""
    paths = []
    for op in mtype.ops(typename):
        path = prefix + op.name
        if op.name == "structure_needs_at_least_one_member":
            continue  # the padding byte of an empty message: mcap-ros2 does not expose it
        if op.kind in ("prim", "prim_array"):
            paths.append(path)
        elif op.kind == "msg":
            paths += numeric_leaves(mtype, op.sub, path + ".")
        elif op.kind == "msg_array":
            paths += numeric_leaves(mtype, op.sub, path + "[0].")
    return paths


def text_leaves(mtype: MessageType, typename: str | None = None, prefix: str = "") -> list[str]:
    paths = []
    for op in mtype.ops(typename):
        path = prefix + op.name
        if op.kind in ("string", "string_array"):
            paths.append(path)
        elif op.kind == "msg":
            paths += text_leaves(mtype, op.sub, path + ".")
    return paths


def resolve(msg, path: str):
    value = msg
    for part in path.replace("[", ".").replace("]", "").split("."):
        if part.isdigit():
            if int(part) >= len(value):
                return None
            value = value[int(part)]
        else:
            value = getattr(value, part)
    return value


def assert_same(ours_numeric: np.ndarray, ours_text, reference, path: str, where: str) -> None:
    expected = resolve(reference, path)
    if ours_text is not None:
        expected = list(expected) if isinstance(expected, (list, tuple)) else expected
        assert ours_text == expected, f"{where} {path}"
        return
    if expected is None:
        assert np.isnan(ours_numeric).all(), f"{where} {path}"
        return
    if isinstance(expected, (bytes, bytearray)):
        expected = np.frombuffer(bytes(expected), np.uint8)
    expected = np.atleast_1d(np.asarray(expected, dtype=np.float64))
    k = len(expected)
    np.testing.assert_array_equal(ours_numeric[:k], expected, err_msg=f"{where} {path}")
    assert np.isnan(ours_numeric[k:]).all(), f"{where} {path}: padding"


def compare_mcap(path: Path, *, skip_numeric: frozenset[str] = frozenset(), batch_bytes: int | None = None) -> int:
    """Reads every topic of an MCAP file both ways; returns the number of messages compared."""
    with open(path, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        requests, types = {}, {}
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            mtype = MessageType.from_msgdef(schema.name, schema.data.decode())
            numeric = tuple(p for p in numeric_leaves(mtype) if p not in skip_numeric)
            requests[channel.topic] = TopicRequest(numeric, tuple(text_leaves(mtype)))
            types[channel.topic] = schema.name
        fh.seek(0)
        reference: dict[str, list] = {}
        for _schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=False):
            reference.setdefault(channel.topic, []).append((message.log_time, decoded))
    kwargs = {"batch_bytes": batch_bytes} if batch_bytes else {}
    stats = ReadStats()
    columns = read_columns(path, requests, stats=stats, **kwargs)
    assert not stats.problems and stats.undecodable == 0, stats
    for topic in reference:
        assert columns[topic].type == types[topic]
    return assert_columns_match(columns, reference, requests, path.name)


def assert_columns_match(columns, reference: dict[str, list], requests, where: str) -> int:
    """Every requested field of every message equals the reference decoder's (both in file order;
    equal log times keep it). Returns the number of messages compared."""
    compared = 0
    for topic, expected in reference.items():
        cols = columns[topic]
        assert len(cols) == len(expected), topic
        for i, (log_time, decoded) in enumerate(expected):
            assert cols.log_time[i] == log_time
            for p in requests[topic].numeric:
                assert_same(cols.numeric[p][i], None, decoded, p, f"{where} {topic} #{i}")
            for p in requests[topic].text:
                assert_same(None, cols.text[p][i], decoded, p, f"{where} {topic} #{i}")
            compared += 1
    return compared


@pytest.fixture(scope="module")
def arm7_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arm7") / "arm7.mcap"
    write_arm7_log(path, minutes=0.2)
    return path


def test_fast_path_matches_mcap_ros2_message_by_message(arm7_log: Path) -> None:
    # Every numeric and text field of JointState, Imu, Float64MultiArray, String and
    # CompressedImage (its pixel bytes too), 9,000+ messages.
    assert compare_mcap(arm7_log) > 9000


def test_batch_size_does_not_change_the_result(arm7_log: Path) -> None:
    # 64 KiB batches are smaller than one chunk: every chunk is its own batch, one grows the buffer.
    assert compare_mcap(arm7_log, skip_numeric=frozenset({"data"}), batch_bytes=64 * 1024) > 9000


@pytest.mark.parametrize("name", ["mcap/evo__nav2_turtlebot.mcap",
                                  "rosbag2/ros2_rosbag2__rosbag2_tests__mcap_cdr_test/cdr_test_0.mcap",
                                  "rosbag2/derived__plotjuggler_fake_joint_state_mcap/derived__plotjuggler_fake_joint_state_mcap.mcap",
                                  *[f"rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag/wbag_{i}.mcap" for i in range(5)]])
def test_real_mcap_logs_match_mcap_ros2(name: str) -> None:
    path = require_real_logs() / name
    assert compare_mcap(path) > 0


@pytest.mark.parametrize("name", ["mcap/evo__nav2_turtlebot.mcap",
                                  "rosbag2/ros2_rosbag2__rosbag2_tests__mcap_cdr_test/cdr_test_0.mcap",
                                  "rosbag2/ros2_rosbag2__rosbag2_py__mcap_wbag/wbag_0.mcap"])
def test_the_general_decoder_alone_matches_mcap_ros2(name: str, arm7_log: Path, monkeypatch) -> None:
    """No templates at all: every message of every type (TF arrays of messages with strings,
    every CDR primitive and array kind, images) goes through the vectorized general walk."""
    from flywheel_pipelines.lib.rosbag import cdr

    monkeypatch.setattr(cdr, "MAX_TEMPLATES", 0)
    assert compare_mcap(require_real_logs() / name) > 0
    assert compare_mcap(arm7_log, batch_bytes=256 * 1024) > 9000


@pytest.mark.parametrize("name", ["rosbag2/plotjuggler__rosbag2_test", "ros1/plotjuggler__fake_joint_state.bag"])
def test_rosbags_sources_match_rosbags(name: str) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = require_real_logs() / name
    ros1 = path.suffix == ".bag"
    with AnyReader([path], default_typestore=None if ros1 else get_typestore(Stores.LATEST)) as reader:
        requests = {}
        for c in reader.connections:
            mtype = MessageType(c.msgtype, reader.typestore.fielddefs)
            requests[c.topic] = TopicRequest(tuple(numeric_leaves(mtype)), tuple(text_leaves(mtype)))
        expected: dict[str, list] = {}
        for c, t, raw in reader.messages():
            expected.setdefault(c.topic, []).append((t, reader.deserialize(raw, c.msgtype)))
    compared = assert_columns_match(read_columns(path, requests), expected, requests, name)
    assert compared == sum(len(m) for m in expected.values()) > 1000


def joint_state_payloads(n: int, layouts: int) -> tuple[list[bytes], list]:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    rng = np.random.default_rng(3)
    payloads, messages = [], []
    for i in range(n):
        k = 1 + i % layouts
        msg = T["sensor_msgs/msg/JointState"](
            header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=i, nanosec=7 * i), frame_id="f" * (i % 3)),
            name=[f"j{x}" for x in range(k)], position=rng.normal(size=k), velocity=rng.normal(size=k), effort=np.zeros(0))
        payloads.append(bytes(store.serialize_cdr(msg, "sensor_msgs/msg/JointState")))
        messages.append(msg)
    return payloads, messages


def as_batch(payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(p) for p in payloads], np.int64)
    starts = np.zeros(len(payloads), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.frombuffer(b"".join(payloads), np.uint8), starts, lengths


@pytest.mark.parametrize("layouts", [1, MAX_TEMPLATES, 40])
def test_layouts_beyond_the_template_cap_are_walked_one_by_one_and_still_exact(layouts: int) -> None:
    from rosbags.typesys import Stores, get_typestore

    payloads, messages = joint_state_payloads(600, layouts)
    store = get_typestore(Stores.ROS2_HUMBLE)
    decoder = StreamDecoder(MessageType("sensor_msgs/msg/JointState", store.fielddefs),
                            ["header.stamp.sec", "header.stamp.nanosec", "position", "velocity"], ["name", "header.frame_id"])
    cols = decoder.decode(*as_batch(payloads))
    assert not cols.bad.any()
    for i, msg in enumerate(messages):
        for p in ("header.stamp.sec", "header.stamp.nanosec", "position", "velocity"):
            assert_same(cols.numeric[p][i], None, msg, p, f"#{i}")
        assert cols.text["name"][i] == list(msg.name)
        assert cols.text["header.frame_id"][i] == msg.header.frame_id
    # frame_id takes 3 values, so there are up to 3 x layouts distinct layouts.
    distinct = min(3 * layouts, 600)
    assert len(decoder.templates) == min(distinct, MAX_TEMPLATES)
    assert (decoder.walked > 0) == (distinct > MAX_TEMPLATES)


def test_a_truncated_payload_is_counted_not_guessed() -> None:
    from rosbags.typesys import Stores, get_typestore

    payloads, _ = joint_state_payloads(20, 1)
    payloads[5] = payloads[5][:30]  # cut inside the name list
    store = get_typestore(Stores.ROS2_HUMBLE)
    decoder = StreamDecoder(MessageType("sensor_msgs/msg/JointState", store.fielddefs), ["position"], ["name"])
    cols = decoder.decode(*as_batch(payloads))
    assert cols.bad.tolist() == [i == 5 for i in range(20)]
    assert len(cols.errors) == 1 and "payload" in cols.errors[0]


def test_unknown_fields_are_named_in_the_error() -> None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    mtype = MessageType("sensor_msgs/msg/JointState", store.fielddefs)
    with pytest.raises(CdrError, match=r"field positions does not exist \(fields: header, name, position"):
        StreamDecoder(mtype, ["positions"])
    with pytest.raises(CdrError, match="is a std_msgs/msg/Header message: name one of its fields"):
        StreamDecoder(mtype, ["header"])


def test_a_corrupt_message_index_falls_back_to_walking_the_chunk(arm7_log: Path, tmp_path: Path) -> None:
    # Rewrite the file with message indexes whose offsets are off by 8: outside the chunk CRC, so
    # they must be checked against the records, and the chunk walked instead.
    broken = tmp_path / "bad_index.mcap"
    shutil.copy(arm7_log, broken)
    data = bytearray(broken.read_bytes())
    from flywheel_pipelines.lib.rosbag.mcap_scan import _McapScan

    with _McapScan(broken, "x", None, ReadStats()) as scan:
        scan.index()
        records = [r for u in scan._units if u.is_chunk for r in u.index_records]
    for offset, length in records[:10]:
        n = (length - 6) // 16
        entries = np.frombuffer(bytes(data[offset + 6 : offset + 6 + 16 * n]), "<u8").reshape(-1, 2).copy()
        entries[:, 1] += 8
        data[offset + 6 : offset + 6 + 16 * n] = entries.tobytes()
    broken.write_bytes(bytes(data))
    request = {"/joint_states": TopicRequest(("position",), ("name",), stamp=True)}
    good = read_columns(arm7_log, request)["/joint_states"]
    bad = read_columns(broken, request)["/joint_states"]
    np.testing.assert_array_equal(good.numeric["position"], bad.numeric["position"])
    np.testing.assert_array_equal(good.stamp, bad.stamp)


def test_unsupported_encodings_are_counted_as_undecodable_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "cbor.mcap"
    buf = io.BytesIO()
    writer = Writer(buf)
    writer.start()
    schema = writer.register_schema("Pose", "x-cbor-schema", b"{}")
    channel = writer.register_channel("/pose", "cbor", schema)
    for i in range(5):
        writer.add_message(channel, i, b"\xa1\x61x\x01", i)
    writer.finish()
    path.write_bytes(buf.getvalue())
    stats = ReadStats()
    assert read_columns(path, {"/pose": TopicRequest(("x",))}, stats=stats) == {}
    assert stats.undecodable == 5 and stats.undecodable_by_topic == {"/pose": 5}
    assert stats.read_by_topic == {"/pose": 5} and stats.encoding_by_topic == {"/pose": "cbor/x-cbor-schema"}
    assert "message encoding 'cbor' is not supported" in stats.first_decode_error


def write_variant(path: Path, *, n: int = 900, shuffle: bool = False, **writer_options) -> None:
    """A JointState + String log written with mcap's Writer and the given options."""
    from mcap.writer import Writer as McapWriter
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    rng = np.random.default_rng(5)
    times = np.arange(n, dtype=np.int64) * 2_000_000 + 1_790_000_000_000_000_000
    if shuffle:  # a recorder that writes out of log-time order (several threads, late callbacks)
        times = times[rng.permutation(n)]
    with open(path, "wb") as fh:
        writer = McapWriter(fh, chunk_size=8192, **writer_options)
        writer.start(profile="ros2", library="test")
        ids = {}
        for name in ("sensor_msgs/msg/JointState", "std_msgs/msg/String"):
            text, _ = store.generate_msgdef(name, ros_version=2)
            ids[name] = writer.register_channel(
                "/js" if "Joint" in name else "/ev", "cdr", writer.register_schema(name, "ros2msg", text.encode()))
        for i, t in enumerate(times.tolist()):
            if i % 50 == 0:
                msg = T["std_msgs/msg/String"](data=f"event {i}")
                writer.add_message(ids["std_msgs/msg/String"], t, store.serialize_cdr(msg, "std_msgs/msg/String").tobytes(), t)
            stamp = T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9)
            msg = T["sensor_msgs/msg/JointState"](header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="base"),
                                                  name=["a", "b", "c"], position=rng.normal(size=3), velocity=rng.normal(size=3),
                                                  effort=np.zeros(3))
            payload = store.serialize_cdr(msg, "sensor_msgs/msg/JointState").tobytes()
            writer.add_message(ids["sensor_msgs/msg/JointState"], t, payload, t)
        writer.finish()


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "lz4"},
        {"compression": "none"},
        {"compression": "zstd", "index_types": "none"},  # chunks without message indexes: walked
        {"use_chunking": False},  # every message a top-level record
        {"use_chunking": False, "use_summary_offsets": False, "index_types": "none", "use_statistics": False},
        {"compression": "zstd", "shuffle": True},  # log times out of order within and across chunks
    ],
    ids=["lz4", "uncompressed", "unindexed", "unchunked", "unchunked-no-summary", "out-of-order"],
)
def test_every_mcap_writer_variant_matches_mcap_ros2(tmp_path: Path, options: dict) -> None:
    from mcap.writer import CompressionType, IndexType

    options = dict(options)
    kwargs = {"shuffle": options.pop("shuffle", False)}
    if "compression" in options:
        kwargs["compression"] = {"lz4": CompressionType.LZ4, "none": CompressionType.NONE, "zstd": CompressionType.ZSTD}[
            options.pop("compression")]
    if options.get("index_types") == "none":
        options["index_types"] = IndexType.NONE
    path = tmp_path / "variant.mcap"
    write_variant(path, **kwargs, **options)
    assert compare_mcap(path) == 900 + 18


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "zero_tail", "garbage_in_middle"])
def test_damaged_files_keep_what_the_tolerant_reader_keeps(arm7_log: Path, tmp_path: Path, damage: str) -> None:
    """The fast path and the reader's own pass agree on every kept message and on the verdict."""
    from flywheel_pipelines.lib.rosbag.reader import iter_decoded

    data = bytearray(arm7_log.read_bytes())
    size = len(data)
    if damage == "truncated":
        data = data[: int(size * 0.6)]
    elif damage == "bad_crc":
        data[size // 3] ^= 0xFF
    elif damage == "zero_tail":
        data[int(size * 0.7) :] = bytes(size - int(size * 0.7))
    else:
        data[size // 2 : size // 2 + 4096] = b"\xab" * 4096
    path = tmp_path / f"{damage}.mcap"
    path.write_bytes(bytes(data))
    request = {"/joint_states": TopicRequest(("position",), ("name",), stamp=True), "/events": TopicRequest((), ("data",))}
    fast_stats, slow_stats = ReadStats(), ReadStats()
    columns = read_columns(path, request, stats=fast_stats)
    reference = list(iter_decoded(path, topics=set(request), stats=slow_stats))
    assert fast_stats.problems and fast_stats.problems == slow_stats.problems
    assert fast_stats.lost_messages == slow_stats.lost_messages
    assert fast_stats.lost_ranges == slow_stats.lost_ranges
    assert fast_stats.messages == slow_stats.messages == len(reference)
    js = [(raw.log_time_ns, list(msg.position)) for raw, msg in reference if raw.topic == "/joint_states"]
    cols = columns["/joint_states"]
    order = np.argsort(cols.log_time, kind="stable")
    assert [(int(cols.log_time[i]), cols.numeric["position"][i].tolist()) for i in order] == sorted(js, key=lambda m: m[0])
