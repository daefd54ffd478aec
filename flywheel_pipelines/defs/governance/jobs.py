"""Retention on a schedule, erasure as a job with config (the same as `flywheel erase`)."""

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import layout
from flywheel_pipelines.lib.governance import deleter, erasure

retention_job = dg.define_asset_job(
    "retention", selection=dg.AssetSelection.assets("retention_sweep"),
    description="Apply the retention policy: delete expired raw logs behind tombstones.")


@dg.schedule(job=retention_job, cron_schedule="30 4 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING, name="retention_schedule")
def retention_schedule(context: dg.ScheduleEvaluationContext):
    """04:30 UTC daily (after the archive at 03:00): one sweep a day, keyed by the day."""
    return dg.RunRequest(run_key=f"retention|{context.scheduled_execution_time.date().isoformat()}")


class EraseConfig(dg.Config):
    """Exactly one target: a raw log key, or a robot with a day range."""

    raw: str | None = Field(default=None, description=f"A raw log key {layout.RAW_KEY_FORMAT}.")
    robot: str | None = Field(default=None, description="Robot id (with date_from and date_to).")
    date_from: str | None = Field(default=None, description="First day (YYYY-MM-DD).")
    date_to: str | None = Field(default=None, description="Last day (YYYY-MM-DD).")
    reason: str = Field(description="Why (recorded in the audit trail; never the erased content).")
    requested_by: str = Field(description="Who asks for it.")
    dry_run: bool = Field(default=True, description="Only report the blast radius. Set false to erase.")


@dg.op(out=dg.Out(dg.Nothing), description="Erase raw logs and everything holding their content (audited).")
def erase_data(context: dg.OpExecutionContext, config: EraseConfig, lake: LakeResource) -> None:
    store = lake.lake()
    try:
        radius = erasure.blast_radius(store, raw=config.raw, robot=config.robot, date_from=config.date_from,
                                      date_to=config.date_to)
        context.log.info(erasure.render(radius))
        if config.dry_run:
            context.log.info("dry run: nothing changed (set dry_run: false to erase)")
            return
        done = erasure.erase(store, radius, reason=config.reason, by=config.requested_by)
    except (erasure.ErasureError, deleter.DeletionError) as exc:
        raise dg.Failure(f"erasure refused: {exc}") from None
    context.log.info(f"erasure {done['erasure']} completed: {done['counts']}; rebuild requested "
                     f"{', '.join(done['rebuild_requests']) or 'none'}")


# An op, like the quarantine jobs: an erasure is an action by a person; its audit trail in the lake
# (governance/erasures/) is the record, and the rebuilt datasets are curated_dataset materializations.
@dg.job(description="Erase a raw log or a robot's days: delete the raw bytes and derived rows, delete and rebuild "
                    "datasets, mark policies and releases. Dry run by default. Same as `flywheel erase`.")
def erase():
    erase_data()
