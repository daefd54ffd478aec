"""Partitions, declared once: robot (dynamic: robots join when their first log arrives) x day."""


import dagster as dg

from flywheel_pipelines.lib import ids

ROBOTS = dg.DynamicPartitionsDefinition(name="robots")
# end_offset=1 so today's uploads have a partition before the day is over.
DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)
ROBOT_DAY = dg.MultiPartitionsDefinition({"date": DAILY, "robot": ROBOTS})


def robot_day_key(robot: str, day: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"robot": ids.robot_id(robot), "date": ids.day(day)})


def robot_day(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """The validated (robot, day) of the partition being materialized."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[union-attr]
    return ids.robot_id(keys["robot"]), ids.day(keys["date"])
