"""Reading raw robot logs (MCAP, rosbag2 folders, ROS 1 bags) without Dagster."""

from flywheel_pipelines.lib.rosbag.manifest import FileManifest, TopicStats, inspect_log
from flywheel_pipelines.lib.rosbag.reader import iter_decoded, iter_messages
from flywheel_pipelines.lib.rosbag.report import LogReadError, RawMessage, ReadStats

__all__ = [
    "FileManifest",
    "LogReadError",
    "RawMessage",
    "ReadStats",
    "TopicStats",
    "inspect_log",
    "iter_decoded",
    "iter_messages",
]
