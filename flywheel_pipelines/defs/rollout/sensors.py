"""After every field_kpis materialization (new field logs reached the catalog), evaluate the
active rollouts once: one run per catalog version (its run key), so a sensor restart or a
retried tick never decides twice on the same evidence."""

import dagster as dg

from flywheel_pipelines.defs.rollout.jobs import rollout_evaluate


@dg.asset_sensor(asset_key=dg.AssetKey("field_kpis"), job=rollout_evaluate, name="rollout_sensor",
                 default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30)
def rollout_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    materialization = asset_event.asset_materialization
    version = materialization.metadata.get("catalog_version") if materialization else None
    key = version.value if version is not None else asset_event.run_id
    yield dg.RunRequest(run_key=f"rollout-evaluate|{key}")
