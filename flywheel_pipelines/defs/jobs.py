"""Jobs: per robot-day ingest (what the upload sensor launches) and the nightly retraining."""

import dagster as dg

from flywheel_pipelines.defs.partitions import ROBOT_DAY

INGEST_SELECTION = dg.AssetSelection.assets("log_manifest", "episodes")
FLEET_SELECTION = dg.AssetSelection.assets(
    "episode_catalog", "curated_dataset", "policy_candidate", "eval_report", "release_bundle"
)

ingest_robot_day = dg.define_asset_job(
    "ingest_robot_day",
    selection=INGEST_SELECTION,
    partitions_def=ROBOT_DAY,
    description="Manifest and standardize one robot-day of raw logs.",
)

nightly_retrain = dg.define_asset_job(
    "nightly_retrain",
    selection=FLEET_SELECTION,
    description="Catalog -> curate -> train -> evaluate -> release (release only past the gate).",
)

nightly_retrain_schedule = dg.ScheduleDefinition(
    name="nightly_retrain_schedule",
    job=nightly_retrain,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
