"""Standardization beyond our own robot: a real log with its shipped mapping, cameras, a 7-joint arm."""

import sys
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from flywheel_pipelines.lib.episodes.embodiment import MappingError, load_embodiment, parse_embodiment
from flywheel_pipelines.lib.episodes.standardize import SourceFile, empty_frames, standardize
from flywheel_pipelines_tests.conftest import require_real_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from arm7_log import EMBODIMENT, JOINTS, write_arm7_log  # noqa: E402


def test_turtlebot_mapping_standardizes_the_real_nav2_log() -> None:
    path = require_real_logs() / "mcap" / "evo__nav2_turtlebot.mcap"
    emb = load_embodiment("turtlebot3_nav2")
    result = standardize([SourceFile("raw/robot=tb3/date=2026-05-08/nav2.mcap", path, "sha")], emb, robot="tb3", day="2026-05-08")
    episodes = result.episodes.to_pylist()
    # No event topic: the recording is one episode, spanning the mapped streams' stamps.
    assert len(episodes) == 1
    ep = episodes[0]
    assert ep["tags"] == ["no_events"] and ep["outcome"] == "unknown"
    assert ep["source_keys"] == ["raw/robot=tb3/date=2026-05-08/nav2.mcap"]
    frames = result.frames
    assert frames.num_rows > 900  # about 97 s at 10 fps (frames start at the first action sample)
    t = frames["timestamp_ns"].to_numpy()
    assert (np.diff(t) == 100_000_000).all()
    # The action is /odom's twist, sampled nearest: compare a frame with the reference decoder.
    with open(path, "rb") as fh:
        odom = [(m.ros_msg.header.stamp.sec * 10**9 + m.ros_msg.header.stamp.nanosec, m.ros_msg)
                for m in _decoded(fh) if m.channel.topic == "/odom"]
    stamps = np.array([s for s, _ in odom])
    action = np.array(frames["action"].to_pylist())
    for k in (0, 400, len(t) - 1):
        nearest = odom[int(np.argmin(np.abs(stamps - t[k])))][1]
        np.testing.assert_allclose(action[k], [nearest.twist.twist.linear.x, nearest.twist.twist.angular.z], rtol=1e-6)
    quality = ep["stream_quality"]
    assert '"observation.environment_state"' in quality and ep["state_rate_hz"] == pytest.approx(27.1, abs=1.0)


def _decoded(fh):
    from types import SimpleNamespace

    reader = make_reader(fh, decoder_factories=[DecoderFactory()])
    for _schema, channel, _message, decoded in reader.iter_decoded_messages():
        yield SimpleNamespace(channel=channel, ros_msg=decoded)


@pytest.fixture(scope="module")
def arm7(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arm7") / "arm7.mcap"
    write_arm7_log(path, minutes=1.0)
    return path


def test_seven_joint_arm_with_a_camera_is_standardized_by_reference(arm7: Path) -> None:
    emb = parse_embodiment(EMBODIMENT, source="arm7")
    result = standardize([SourceFile("arm7.mcap", arm7, "sha")], emb, robot="arm7", day="2026-11-22")
    episodes = result.episodes.to_pylist()
    assert len(episodes) == 3 and all(e["quality_ok"] for e in episodes), episodes
    frames = result.frames
    assert frames.column_names[:5] == ["episode_id", "timestamp_ns", "frame_index", "intervention", "max_skew_ns"]
    # Camera frames are referenced by the stamp of the chosen image, never copied.
    ref = frames["observation.images.wrist.stamp_ns"].to_numpy()
    t = frames["timestamp_ns"].to_numpy()
    assert (ref > 0).all() and np.abs(ref - t).max() <= 1_000_000_000 // 30 // 2 + 200_000
    state = np.array(frames["observation.state"].to_pylist())
    assert state.shape[1] == 14 and not np.isnan(state).any()
    assert frames.schema.equals(empty_frames(emb).schema, check_metadata=False)
    assert [f"{j}.pos" for j in JOINTS] == list(emb.feature("observation.state").names[:7])


def test_images_cannot_be_interpolated() -> None:
    text = EMBODIMENT.replace("    rule: nearest\n    max_skew_ms: 40", "    rule: linear\n    max_skew_ms: 40")
    with pytest.raises(MappingError, match="image 'observation.images.wrist' has rule 'linear'"):
        parse_embodiment(text, source="arm7.yaml")
