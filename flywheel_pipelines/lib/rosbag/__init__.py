"""Reading raw robot logs (MCAP, rosbag2 folders, ROS 1 bags) without Dagster."""

from flywheel_pipelines.lib.rosbag.manifest import FileManifest, TopicStats, inspect_log
from flywheel_pipelines.lib.rosbag.reader import LogReadError, RawMessage, ReadStats, iter_decoded, iter_messages

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
