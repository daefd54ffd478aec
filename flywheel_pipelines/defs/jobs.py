"""Jobs: per robot-day ingest and month archive (what the upload sensor launches), the nightly
retraining, and the two explicit production actions (promote a policy version, roll back to the previous one)."""

import dagster as dg
from pydantic import Field

from flywheel_pipelines.defs.resources import LakeResource, MlflowResource
from flywheel_pipelines.lib.evaluation import registry

INGEST_SELECTION = dg.AssetSelection.assets("log_manifest", "episodes")
FLEET_SELECTION = dg.AssetSelection.assets(
    "episode_catalog", "golden_scenarios", "curated_dataset", "policy_candidate", "eval_report", "release_bundle",
    "lineage_index", "field_kpis",
)

ingest_robot_day = dg.define_asset_job(
    "ingest_robot_day",
    selection=INGEST_SELECTION,  # robot x day partitioned: inferred from the assets (ROBOT_DAY)
    description="Manifest and standardize one robot-day of raw logs.",
)

archive_month = dg.define_asset_job(
    "archive_month",
    selection=dg.AssetSelection.assets("episode_archive"),  # monthly: inferred from the asset (MONTHS)
    description="One month of cold days (before the hot robot x day window): late uploads ingested again "
                "(config reingest), and the month's episode tables compacted into one archive.",
)

nightly_retrain = dg.define_asset_job(
    "nightly_retrain",
    selection=FLEET_SELECTION,
    description="Catalog -> golden scenarios, curate -> train -> evaluate -> release (release only past the gate) "
                "-> lineage index; field KPIs.",
)

nightly_retrain_schedule = dg.ScheduleDefinition(
    name="nightly_retrain_schedule",
    job=nightly_retrain,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


class PromoteConfig(dg.Config):
    """Who moves the production alias to which version, and why (all recorded)."""

    policy_name: str = Field(description="The registered model (the policy name).")
    version: str = Field(description="The registered model version to make production.")
    reason: str = Field(description="Why; stored in the promotion log and on the model version.")
    requested_by: str = Field(description="Who asks for it.")
    force: bool = Field(default=False, description="Promote although the version's release gate did not pass.")


class RollbackConfig(dg.Config):
    policy_name: str = Field(description="The registered model (the policy name).")
    reason: str = Field(description="Why; stored in the promotion log and on both model versions.")
    requested_by: str = Field(description="Who asks for it.")


def _recorded(context: dg.OpExecutionContext, entry: registry.Promotion, key: str, lake: LakeResource) -> None:
    context.log.info(f"{entry.model}: {entry.alias} {entry.from_version or 'none'} -> {entry.version} "
                     f"({entry.action} by {entry.by}: {entry.reason}); logged at {key}")
    context.add_output_metadata({
        "action": entry.action, "model": entry.model, "alias": entry.alias, "version": entry.version,
        "from_version": entry.from_version or "none", "by": entry.by, "reason": entry.reason,
        "forced": entry.forced, "gate": entry.gate, "log_entry": dg.MetadataValue.path(lake.lake().uri(key)),
    })


@dg.op(out=dg.Out(dg.Nothing), description="Point the production alias at a version whose release gate passed.")
def promote_policy_version(context: dg.OpExecutionContext, config: PromoteConfig, lake: LakeResource,
                           mlflow: MlflowResource) -> None:
    mlf = mlflow.store()
    try:
        entry, key = registry.promote(mlf.client, lake.lake(), config.policy_name, config.version,
                                      by=config.requested_by, reason=config.reason, force=config.force,
                                      via="dagster", dagster_run_id=context.run_id)
    except registry.PromotionError as exc:
        raise dg.Failure(str(exc)) from None
    _recorded(context, entry, key, lake)


@dg.op(out=dg.Out(dg.Nothing), description="Point the production alias back at the previous production version.")
def rollback_policy_version(context: dg.OpExecutionContext, config: RollbackConfig, lake: LakeResource,
                            mlflow: MlflowResource) -> None:
    mlf = mlflow.store()
    try:
        entry, key = registry.rollback(mlf.client, lake.lake(), config.policy_name,
                                       by=config.requested_by, reason=config.reason, via="dagster",
                                       dagster_run_id=context.run_id)
    except registry.PromotionError as exc:
        raise dg.Failure(str(exc)) from None
    _recorded(context, entry, key, lake)


# Ops, not assets: moving an alias is an action on the registry, not a data artifact. Each run is
# the record in Dagster (config = who, what, why); the promotion log in the lake and the MLflow
# tags are the record outside it.
@dg.job(description="Make a registered policy version production (refused unless its release gate passed, "
                    "or forced with a reason). Same as `flywheel policy promote`.")
def promote_policy():
    promote_policy_version()


@dg.job(description="Return production to the previous production version. Same as `flywheel policy rollback`.")
def rollback_policy():
    rollback_policy_version()
