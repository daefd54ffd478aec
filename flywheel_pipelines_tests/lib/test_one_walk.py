"""The manifest and standardization read every storage kind through one walk: their counts agree.

For each kind of log (intact and damaged: a cut MCAP, a cut ROS 1 bag that rosbags cannot open,
a truncated .db3 that SQLite calls malformed, a split bag with a missing part), the messages
``read_columns`` reads per topic equal the manifest's count of that topic, and every message
read is either decoded or counted undecodable.
"""

import shutil
from pathlib import Path

import pytest

from flywheel_pipelines.lib.rosbag.columnar import TopicRequest, read_columns
from flywheel_pipelines.lib.rosbag.manifest import inspect_log
from flywheel_pipelines.lib.rosbag.report import ReadStats
from flywheel_pipelines_tests.conftest import require_real_logs


def _logs(tmp_path: Path) -> dict[str, Path]:
    real = require_real_logs()
    out: dict[str, Path] = {
        "mcap": real / "mcap" / "evo__nav2_turtlebot.mcap",
        "rosbag2 sqlite3": real / "rosbag2" / "plotjuggler__rosbag2_test",
        "bare db3": real / "rosbag2" / "plotjuggler__rosbag2_test" / "rosbag2_test_0.db3",
        "split mcap bag": real / "rosbag2" / "ros2_rosbag2__rosbag2_py__mcap_wbag",
        "ros1": real / "ros1" / "plotjuggler__fake_joint_state.bag",
    }
    mcap = out["mcap"].read_bytes()
    (tmp_path / "cut.mcap").write_bytes(mcap[: len(mcap) * 2 // 3])
    out["cut mcap"] = tmp_path / "cut.mcap"
    bag = out["ros1"].read_bytes()
    (tmp_path / "cut.bag").write_bytes(bag[: len(bag) * 2 // 3])  # no index: walked record by record
    out["cut ros1"] = tmp_path / "cut.bag"
    folder = tmp_path / "db3_cut"
    shutil.copytree(out["rosbag2 sqlite3"], folder)
    db3 = folder / "rosbag2_test_0.db3"
    db3.write_bytes(db3.read_bytes()[: db3.stat().st_size * 3 // 4])  # malformed: read page by page
    out["cut db3"] = folder
    split = tmp_path / "wbag"
    shutil.copytree(out["split mcap bag"], split)
    (split / "wbag_2.mcap").unlink()
    out["split bag, part missing"] = split
    return out


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    return _logs(tmp_path_factory.mktemp("logs"))


@pytest.mark.parametrize("kind", ["mcap", "rosbag2 sqlite3", "bare db3", "split mcap bag", "ros1", "cut mcap",
                                  "cut ros1", "cut db3", "split bag, part missing"])
def test_the_manifest_and_the_column_reader_count_the_same(logs: dict[str, Path], kind: str) -> None:
    path = logs[kind]
    manifest = inspect_log(path)
    counts = {t.topic: t.count for t in manifest.topics if t.count}
    assert counts, manifest
    # Ask for the header stamp only: every message type here has one or is fine without.
    stats = ReadStats()
    columns = read_columns(path, {topic: TopicRequest(stamp=True) for topic in counts}, stats=stats)
    assert stats.read_by_topic == counts, (kind, manifest.reason)
    for topic, count in counts.items():
        decoded = len(columns[topic]) if topic in columns else 0
        assert decoded + stats.undecodable_by_topic.get(topic, 0) == count, topic
    if manifest.verdict == "recovered":
        assert stats.problems and stats.lost_messages == manifest.lost_messages
    else:
        assert manifest.verdict == "ok" or kind == "bare db3"
