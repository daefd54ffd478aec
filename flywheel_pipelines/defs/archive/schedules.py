"""The daily archive schedule: every month that has left the hot window gets its archive."""


import datetime as dt

import dagster as dg

from flywheel_pipelines.defs.jobs import archive_month
from flywheel_pipelines.defs.partitions import FLEET_START, HOT_START
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import fleet


def months_to_archive(archives: dict[str, dict], *, fleet_start: dt.date, hot_start: dt.date) -> list[tuple[str, str]]:
    """(month, complete_before) of every month wholly before the hot window whose archive is
    missing or was built while part of the month was still hot. Empty months get an (empty)
    archive too: the catalog then knows no robot-day table of theirs needs listing."""
    out = []
    month = fleet_start.replace(day=1)
    while True:
        days = fleet.month_days(month.isoformat())
        end = fleet.day_after(days[-1])
        if end > hot_start.isoformat():
            return out
        info = archives.get(month.isoformat())
        if info is None or info["complete_before"] < end:
            out.append((month.isoformat(), end))
        month = dt.date.fromisoformat(end)


@dg.schedule(job=archive_month, cron_schedule="0 3 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING, name="month_archive_schedule")
def month_archive_schedule(context: dg.ScheduleEvaluationContext, lake: LakeResource):
    """03:00 UTC: request the archive of each month that has left the hot window and has none
    (normally one month, on the day it leaves; the run key carries the day, so a failed archive
    is requested again the next day rather than never)."""
    today = context.scheduled_execution_time.date().isoformat()
    todo = months_to_archive(fleet.read_archives(lake.lake()), fleet_start=FLEET_START, hot_start=HOT_START)
    if not todo:
        return dg.SkipReason(f"every month before the hot window (from {HOT_START}) is archived")
    return [dg.RunRequest(run_key=f"archive|{month}|{end}|{today}", partition_key=month,
                          tags={"flywheel/archive_complete_before": end}) for month, end in todo]
