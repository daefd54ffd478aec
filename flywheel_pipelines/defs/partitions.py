"""Partitions, declared once.

Hot: robot (dynamic: robots join when their first log arrives) x day, over the hot window (the last
FLYWHEEL_HOT_DAYS days, from a Monday; see lib/fleet.py for why the grid is a window). Cold: one
partition per month since FLYWHEEL_FLEET_START, for the month archive that owns older days.

The window's first day is computed when the code location loads, so it advances when the code
location is reloaded (every deploy; deploy/k8s/reload-code-location.yaml reloads it daily).
"""


import datetime as dt

import dagster as dg

from flywheel_pipelines.lib import fleet, ids

ROBOTS = dg.DynamicPartitionsDefinition(name="robots")
HOT_DAYS = fleet.hot_days()
FLEET_START = fleet.fleet_start()
LOADED_ON = dt.datetime.now(dt.UTC).date()
HOT_START = fleet.configured_hot_start(LOADED_ON)
# end_offset=1 so today's uploads have a partition before the day is over.
DAILY = dg.DailyPartitionsDefinition(start_date=HOT_START.isoformat(), end_offset=1)
ROBOT_DAY = dg.MultiPartitionsDefinition({"date": DAILY, "robot": ROBOTS})
MONTHS = dg.MonthlyPartitionsDefinition(start_date=FLEET_START.replace(day=1).isoformat(), end_offset=1)


def robot_day_key(robot: str, day: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"robot": ids.robot_id(robot), "date": ids.day(day)})


def robot_day(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """The validated (robot, day) of the partition being materialized."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[union-attr]
    return ids.robot_id(keys["robot"]), ids.day(keys["date"])


def is_hot(day: str) -> bool:
    """Whether ``day`` has a robot x day partition (else its month archive handles it)."""
    return ids.day(day) >= HOT_START.isoformat()
