"""Automation conditions, named once."""

import dagster as dg

# The catalog follows new episodes as soon as they land; training waits for the nightly schedule.
FOLLOW_UPSTREAM = dg.AutomationCondition.eager()

# Dagster 1.13 creates a default automation sensor that starts STOPPED, so an eager condition
# would never fire until someone switched it on in the UI. This one is on from the first deploy.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "flywheel_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
