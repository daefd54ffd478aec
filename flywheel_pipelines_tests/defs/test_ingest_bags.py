"""Real bags through the pipeline: a rosbag2 folder and a ROS 1 bag uploaded as robots upload them."""

import shutil

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel_pipelines.defs.episodes.assets import EpisodesConfig, episodes, episodes_prefix
from flywheel_pipelines.defs.ingest.assets import log_manifest, manifest_key, raw_fleet_logs
from flywheel_pipelines.defs.ingest.sensors import _ingested_fingerprint, plan_runs
from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import ids
from flywheel_pipelines.lib.storage import LocalLake
from flywheel_pipelines_tests.conftest import days_ago, require_real_logs

DAY = days_ago(1)  # the upload day; the recording itself is from 2017
MAPPING = """\
# PlotJuggler's fake_joint_state sample: six joints at about 1 kHz, no commands, no events.
name: fake_joint_state
version: 1
fps: 30
clock: header
features:
  observation.state:
    topic: /fake_joints_state
    fields: [position]
    joint_names: [joint_0, joint_1, joint_2, joint_3, joint_4, joint_5]
    names: [j0.pos, j1.pos, j2.pos, j3.pos, j4.pos, j5.pos]
    rule: linear
  action:
    topic: /fake_joints_state
    fields: [velocity]
    joint_names: [joint_0, joint_1, joint_2, joint_3, joint_4, joint_5]
    names: [j0.vel, j1.vel, j2.vel, j3.vel, j4.vel, j5.vel]
    rule: nearest
tolerance: {max_skew_ms: 5, max_gap_ms: 50}
"""


def test_a_rosbag2_folder_and_a_ros1_bag_become_episodes(tmp_path):
    real = require_real_logs()
    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=pj1/date={DAY}"
    shutil.copytree(real / "rosbag2/derived__plotjuggler_fake_joint_state_mcap", day_dir / "fake_joints")
    shutil.copy(real / "ros1/plotjuggler__fake_joint_state.bag", day_dir / "fake_joints.bag")
    mapping = tmp_path / "fake_joint_state.yaml"
    mapping.write_text(MAPPING)
    assert ids.raw_log_key(f"raw/robot=pj1/date={DAY}/fake_joints/metadata.yaml") == f"raw/robot=pj1/date={DAY}/fake_joints/"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, ["pj1"])
        result = dg.materialize(
            [raw_fleet_logs, log_manifest, episodes], selection=[log_manifest, episodes], instance=instance,
            resources={"lake": LakeResource(root=str(lake.root))}, partition_key=robot_day_key("pj1", DAY),
            run_config=dg.RunConfig({"episodes": EpisodesConfig(embodiment=str(mapping))}))
        assert result.success
        table = result.asset_materializations_for_node("log_manifest")[0].metadata["files_table"].value
        assert "| fake_joints/ | ok | 2725 |" in table and "| fake_joints.bag | ok | 2725 |" in table
        # Uploading the same folder again starts nothing: the sensor's per-object fingerprint is
        # the one log_manifest recorded.
        requests, *_ = plan_runs(lake, {}, known_robots={"pj1"}, already_ingested=_ingested_fingerprint(instance, lake))
        assert requests == []
    manifest = lake.read_json(manifest_key("pj1", DAY))
    # The folder is one log (its metadata.yaml and .mcap together), the ROS 1 bag another.
    assert {f["key"]: f["verdict"] for f in manifest["files"]} == {
        f"raw/robot=pj1/date={DAY}/fake_joints.bag": "ok", f"raw/robot=pj1/date={DAY}/fake_joints/": "ok"}
    assert all(f["message_count"] == 2725 for f in manifest["files"])
    table = pq.read_table(lake.root / episodes_prefix("pj1", DAY) / "episodes.parquet").to_pylist()
    assert len(table) == 2 and all(e["tags"] == ["no_events"] for e in table)
    frames = pq.read_table(lake.root / episodes_prefix("pj1", DAY) / "frames.parquet")
    by_episode = {e: frames.filter(pc.equal(frames["episode_id"], e)) for e in {r["episode_id"] for r in table}}
    a, b = (np.array(t["observation.state"].to_pylist()) for t in by_episode.values())
    # The same recording in two formats standardizes to the same frames (the ROS 1 and the
    # converted rosbag2 copy share header stamps).
    assert a.shape == b.shape and a.shape[0] > 70
    np.testing.assert_array_equal(a, b)


def test_a_cut_recording_is_recovered_and_its_loss_shown(tmp_path):
    real = require_real_logs() / "mcap/evo__nav2_turtlebot.mcap"
    lake = LocalLake(tmp_path / "lake")
    day_dir = lake.root / f"raw/robot=tb3/date={DAY}"
    day_dir.mkdir(parents=True)
    data = real.read_bytes()
    (day_dir / "cut.mcap").write_bytes(data[: len(data) * 2 // 3])  # the robot lost power mid-write
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ROBOTS.name, ["tb3"])
        result = dg.materialize([raw_fleet_logs, log_manifest], selection=[log_manifest], instance=instance,
                                resources={"lake": LakeResource(root=str(lake.root))}, partition_key=robot_day_key("tb3", DAY))
        meta = result.asset_materializations_for_node("log_manifest")[0].metadata
    [entry] = lake.read_json(manifest_key("tb3", DAY))["files"]
    assert entry["verdict"] == "recovered" and 0 < entry["message_count"] < 8197
    assert entry["lost_ranges"], entry
    first, last = entry["lost_ranges"][-1]
    assert f"| cut.mcap | recovered | {entry['message_count']} |" in meta["files_table"].value
    assert f"[{first}..{last}]" in meta["files_table"].value
    assert meta["recovered"].value == 1
