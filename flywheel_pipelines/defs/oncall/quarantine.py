"""Quarantine as Dagster sees it: the append-only log as an asset, and the two actions as jobs."""

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.groups import group_of
from flywheel_pipelines.defs.resources import LakeResource
from flywheel_pipelines.lib import layout, quarantine
from flywheel_pipelines.lib.catalog import CATALOG_KEY

quarantine_log = dg.AssetSpec(
    "quarantine_log",
    description=f"Append-only quarantine records ({layout.QUARANTINE_RECORDS}/): robots x days, raw logs or episodes kept "
                "out of datasets, with who, when and why. Written by the quarantine jobs and `flywheel quarantine`.",
    group_name=group_of("quarantine_log"),
    kinds={"json"},
    owners=["team:oncall"],
)


class QuarantineAddConfig(dg.Config):
    """Exactly one target: a robot (optionally a day range), a raw log key, or an episode id."""

    robot: str | None = Field(default=None, description="Robot id, e.g. r104.")
    date_from: str | None = Field(default=None, description="First day (YYYY-MM-DD), with robot.")
    date_to: str | None = Field(default=None, description="Last day (YYYY-MM-DD), with robot.")
    raw: str | None = Field(default=None, description=f"A raw log key {layout.RAW_LOG_FORMAT}.")
    episode: str | None = Field(default=None, description="An episode id.")
    reason: str = Field(description="Why (recorded, shown in every dataset manifest that honours it).")
    requested_by: str = Field(description="Who asks for it.")
    incident: str | None = Field(default=None, description="The incident id this belongs to, if any.")


class QuarantineLiftConfig(dg.Config):
    quarantine_id: str = Field(description="The q-... id of the active quarantine to end.")
    reason: str = Field(description="Why it is safe again (recorded).")
    requested_by: str = Field(description="Who asks for it.")


def _report(context: dg.OpExecutionContext, record: quarantine.Record, key: str, lake: LakeResource) -> None:
    store = lake.lake()
    active = quarantine.active(quarantine.read_records(store))
    meta = {"action": record.action, "id": record.id, "by": record.by, "reason": record.reason,
            "target": record.scope.describe() if record.scope else f"lifts {record.lifts}",
            "record": dg.MetadataValue.path(store.uri(key)), "active_quarantines": len(active)}
    context.log.info(f"quarantine {record.action} {record.id}: {meta['target']} ({record.reason}); {len(active)} active")
    # The catalog and curation depend on quarantine_log: this event is what refreshes them.
    context.log_event(dg.AssetMaterialization(asset_key=quarantine_log.key, metadata=meta))


@dg.op(out=dg.Out(dg.Nothing), description="Record a quarantine (append-only).")
def record_quarantine(context: dg.OpExecutionContext, config: QuarantineAddConfig, lake: LakeResource) -> None:
    store = lake.lake()
    catalog = store.read_parquet(CATALOG_KEY) if store.exists(CATALOG_KEY) else None
    try:
        scope = quarantine.make_scope(robot=config.robot, date_from=config.date_from, date_to=config.date_to,
                                      raw=config.raw, episode=config.episode)
        record, key = quarantine.add(store, scope, reason=config.reason, by=config.requested_by,
                                     known=quarantine.known_target(store, catalog), incident=config.incident)
    except quarantine.QuarantineError as exc:
        raise dg.Failure(f"quarantine refused: {exc}") from None
    _report(context, record, key, lake)


@dg.op(out=dg.Out(dg.Nothing), description="End an active quarantine with a new record.")
def lift_quarantine(context: dg.OpExecutionContext, config: QuarantineLiftConfig, lake: LakeResource) -> None:
    try:
        record, key = quarantine.lift(lake.lake(), config.quarantine_id, reason=config.reason, by=config.requested_by)
    except quarantine.QuarantineError as exc:
        raise dg.Failure(f"lift refused: {exc}") from None
    _report(context, record, key, lake)


# Ops, not assets, like promote/rollback: a quarantine is an action by a person; its record in
# the lake is the artifact (quarantine_log), reported by the op so automation follows it.
@dg.job(description="Keep a robot (x days), a raw log or an episode out of datasets. Same as `flywheel quarantine add`.")
def quarantine_add():
    record_quarantine()


@dg.job(description="End an active quarantine. Same as `flywheel quarantine lift`.")
def quarantine_lift():
    lift_quarantine()
