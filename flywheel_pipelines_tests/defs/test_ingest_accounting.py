"""Every message accounted for: robot-days that used to yield nothing in silence, through the assets.

Logs are made by the real writers: rosbags' rosbag2 Writer (sqlite3 storage), mcap's Writer
(json channels) and mcap-protobuf-support's Writer (protobuf channels).
"""

import json
import shutil
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import yaml

from flywheel_pipelines.defs.episodes.assets import EpisodesConfig, episodes, episodes_prefix
from flywheel_pipelines.defs.ingest.assets import log_manifest, manifest_key, raw_fleet_logs
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib.episodes.embodiment import load_embodiment
from flywheel_pipelines.lib.layout import ACCOUNTING
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.conftest import days_ago

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from structured_logs import write_json_log, write_protobuf_log  # noqa: E402

DAY = days_ago(1)
T0 = 1_790_000_000_000_000_000
JOINT_MAPPING = """\
name: two_joints
version: 1
fps: 20
clock: header
features:
  observation.state:
    topic: /joint_states
    fields: [position]
    joint_names: [a, b]
    names: [a.pos, b.pos]
    rule: linear
  action:
    topic: /joint_states
    fields: [velocity]
    joint_names: [a, b]
    names: [a.vel, b.vel]
    rule: nearest
tolerance: {max_skew_ms: 30, max_gap_ms: 100}
"""
# What a real recorder writes into metadata.yaml: the QoS it offered. The .db3's topics table
# keeps its own copy (here: none), so a reader that matches the two (rosbags does) finds nothing.
QOS = """- history: 3
  depth: 0
  reliability: 1
  durability: 2
  deadline: {sec: 2147483647, nsec: 4294967295}
  lifespan: {sec: 2147483647, nsec: 4294967295}
  liveliness: 1
  liveliness_lease_duration: {sec: 2147483647, nsec: 4294967295}
  avoid_ros_namespace_conventions: false
"""


def write_sqlite_bag(folder: Path, n: int = 150) -> None:
    """A rosbag2 sqlite3 bag written by rosbags' Writer, then its metadata.yaml changed to disagree
    with the storage file (the offered QoS profiles differ)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    with Writer(folder, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
        for i in range(n):
            t = T0 + i * 20_000_000
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                              frame_id="base")
            msg = T["sensor_msgs/msg/JointState"](header=header, name=["b", "a"], position=np.array([-i, i], float),
                                                  velocity=np.array([0.5, 1.5]), effort=np.zeros(0))
            writer.write(connection, t + 1_000_000, store.serialize_cdr(msg, "sensor_msgs/msg/JointState"))
    path = folder / "metadata.yaml"
    meta = yaml.safe_load(path.read_text())
    meta["rosbag2_bagfile_information"]["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"] = QOS
    path.write_text(yaml.safe_dump(meta))


def materialize(lake: LocalLake, robot: str, mapping: str) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, [robot])
        return dg.materialize(
            [raw_fleet_logs, log_manifest, episodes], selection=[log_manifest, episodes], instance=instance,
            resources={"lake": LakeResource(root=str(lake.root))}, partition_key=robot_day_key(robot, DAY),
            run_config=dg.RunConfig({"episodes": EpisodesConfig(embodiment=mapping)}), raise_on_error=False)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.user_failure_data.description


def test_a_sqlite3_bag_whose_metadata_disagrees_is_read_the_same_by_manifest_and_episodes(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    write_sqlite_bag(lake.root / f"raw/robot=sq1/date={DAY}/run_1")
    (tmp_path / "two_joints.yaml").write_text(JOINT_MAPPING)
    result = materialize(lake, "sq1", str(tmp_path / "two_joints.yaml"))
    assert result.success, failure_text(result)
    [entry] = lake.read_json(manifest_key("sq1", DAY))["files"]
    assert entry["verdict"] == "ok" and entry["message_count"] == 150
    [topic] = entry["topics"]
    assert topic["decodable"] and topic["schema_encoding"] == "ros2msg"  # rosbag2 kept the definition
    meta = result.asset_materializations_for_node("episodes")[0].metadata
    assert meta["episodes"].value == 1 and meta["frames"].value > 50
    assert meta["messages_read"].value == 150 == topic["count"]
    assert meta["messages_in_episodes"].value == 150 and meta["messages_undecodable"].value == 0
    prefix = lake.root / episodes_prefix("sq1", DAY)
    accounting = json.loads((prefix / ACCOUNTING).read_text())
    assert accounting["totals"] == {"read": 150, "in_episodes": 150, "outside_episodes": 0, "events": 0,
                                    "undecodable": 0, "dropped": 0}
    assert accounting["topics"][0]["file"] == f"raw/robot=sq1/date={DAY}/run_1/"
    # Joints are reordered by name: the bag lists b before a.
    state = np.array(pq.read_table(prefix / "frames.parquet")["observation.state"].to_pylist())
    assert (state[:, 0] >= 0).all() and (state[:, 1] <= 0).all()


def test_json_and_protobuf_logs_become_episodes_with_their_example_mappings(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    for robot, writer, mapping in (("js1", write_json_log, "json_arm6"), ("pb1", write_protobuf_log, "protobuf_arm6")):
        day_dir = lake.root / f"raw/robot={robot}/date={DAY}"
        day_dir.mkdir(parents=True)
        count = writer(day_dir / "arm.mcap")
        result = materialize(lake, robot, mapping)
        assert result.success, failure_text(result)
        meta = result.asset_materializations_for_node("episodes")[0].metadata
        assert meta["episodes"].value == 2 and meta["frames"].value > 280
        assert meta["messages_read"].value == count
        totals = json.loads((lake.root / episodes_prefix(robot, DAY) / ACCOUNTING).read_text())["totals"]
        assert totals["in_episodes"] + totals["outside_episodes"] + totals["events"] + totals["dropped"] \
            + totals["undecodable"] == count
        assert "| arm.mcap | /arm/joint_states |" in meta["accounting"].value


def test_a_robot_day_whose_mapped_topics_give_no_frame_fails_naming_file_topic_encoding_and_cause(tmp_path) -> None:
    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=js2/date={DAY}"
    day_dir.mkdir(parents=True)
    write_json_log(day_dir / "arm.mcap")
    mapping = tmp_path / "typo.yaml"
    mapping.write_text(load_embodiment("json_arm6").source_text.replace("gripper.width]", "gripper.widht]"))
    result = materialize(lake, "js2", str(mapping))
    assert not result.success
    assert failure_text(result) == (
        f"robot js2 on {DAY}: the mapped topics hold 2504 messages but no frame came out (mapping json_arm6 v1): "
        f"raw/robot=js2/date={DAY}/arm.mcap: /arm/command (json/jsonschema): all 500 messages undecodable: "
        "arm.Command: field gripper.widht does not exist (fields: width)")
    assert not (lake.root / episodes_prefix("js2", DAY)).exists()


def test_logs_without_any_mapped_topic_fail_and_say_what_they_hold(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    write_sqlite_bag(lake.root / f"raw/robot=sq2/date={DAY}/run_1", n=20)
    result = materialize(lake, "sq2", "json_arm6")
    assert not result.success
    text = failure_text(result)
    assert text.startswith(f"robot sq2 on {DAY}: none of the mapped topics (/arm/command, /arm/events, "
                           "/arm/joint_states; mapping json_arm6 v1) has a message")
    assert text.endswith(f"raw/robot=sq2/date={DAY}/run_1/: /joint_states (cdr, 20)")


def test_a_valid_empty_log_is_empty_and_the_day_publishes_no_episode(tmp_path: Path) -> None:
    from mcap.writer import Writer

    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=idle1/date={DAY}"
    day_dir.mkdir(parents=True)
    with open(day_dir / "idle.mcap", "wb") as fh:
        writer = Writer(fh)
        writer.start()
        writer.register_channel("/arm/joint_states", "json", writer.register_schema("arm.JointState", "jsonschema", b"{}"))
        writer.finish()
    result = materialize(lake, "idle1", "json_arm6")
    assert result.success, failure_text(result)
    [entry] = lake.read_json(manifest_key("idle1", DAY))["files"]
    assert entry["verdict"] == "empty" and entry["lost_messages"] == 0
    assert result.asset_materializations_for_node("log_manifest")[0].metadata["empty"].value == 1
    meta = result.asset_materializations_for_node("episodes")[0].metadata
    assert meta["episodes"].value == 0 and meta["messages_read"].value == 0


def test_a_copy_of_the_bag_folder_elsewhere_reads_the_same(tmp_path: Path) -> None:
    """The manifest's count and the episodes' count come from one walk, whatever the bag's path."""
    from flywheel_pipelines.lib.rosbag.columnar import TopicRequest, read_columns
    from flywheel_pipelines.lib.rosbag.manifest import inspect_log
    from flywheel_pipelines.lib.rosbag.report import ReadStats

    bag = tmp_path / "bag"
    write_sqlite_bag(bag)
    copy = tmp_path / "copy"
    shutil.copytree(bag, copy)
    for folder in (bag, copy):
        stats = ReadStats()
        columns = read_columns(folder, {"/joint_states": TopicRequest(("position",))}, stats=stats)
        assert len(columns["/joint_states"]) == stats.read_by_topic["/joint_states"] == 150
        assert {t.topic: t.count for t in inspect_log(folder).topics} == {"/joint_states": 150}


def test_some_undecodable_mapped_messages_publish_the_rest_and_fail_the_accounting_check(tmp_path: Path) -> None:
    """Two files of one day (the second a copy of the recording, as a re-sent upload would be); in
    the second, 3 /arm/command payloads are cut short. The day's frames are published, and the
    every_message_accounted check fails naming the file, topic, encoding and reason."""
    from mcap.reader import make_reader
    from mcap.writer import Writer

    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=js3/date={DAY}"
    day_dir.mkdir(parents=True)
    write_json_log(day_dir / "a.mcap")
    source = tmp_path / "b_source.mcap"
    write_json_log(source)
    with open(source, "rb") as fh, open(day_dir / "b.mcap", "wb") as out:
        writer = Writer(out)
        writer.start()
        ids: dict[str, int] = {}
        cut = 0
        for schema, channel, message in make_reader(fh).iter_messages():
            if channel.topic not in ids:
                ids[channel.topic] = writer.register_channel(
                    channel.topic, "json", writer.register_schema(schema.name, schema.encoding, schema.data))
            data = message.data
            if channel.topic == "/arm/command" and cut < 3:
                data, cut = data[:20], cut + 1
            writer.add_message(ids[channel.topic], message.log_time, data, message.publish_time)
        writer.finish()
    result = materialize(lake, "js3", "json_arm6")
    assert result.success, failure_text(result)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert (lake.root / episodes_prefix("js3", DAY) / "frames.parquet").exists()
    check = evaluations["every_message_accounted"]
    assert not check.passed
    assert check.description.startswith(f"raw/robot=js3/date={DAY}/b.mcap: /arm/command (json/jsonschema): 3 of 500 "
                                        "undecodable: payload is not valid JSON")
    meta = result.asset_materializations_for_node("episodes")[0].metadata
    assert meta["messages_undecodable"].value == 3 and meta["messages_read"].value == 2 * 2504
