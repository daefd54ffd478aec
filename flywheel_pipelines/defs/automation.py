"""Automation conditions, named once."""

import dagster as dg

# The catalog follows new episodes as soon as they land; training waits for the nightly schedule.
# Not AutomationCondition.eager(): eager also requires that no upstream partition is missing, and
# an unpartitioned catalog over a robot x day grid always has missing partitions (days a robot did
# not work), so eager never fired. This requests one refresh when any episodes partition was
# updated since the catalog was last requested, and never while a refresh is running: however
# many robot-days landed during a pause, switching automation back on launches one run.
FOLLOW_UPSTREAM = (
    dg.AutomationCondition.any_deps_updated().since_last_handled() & ~dg.AutomationCondition.in_progress()
).with_label("refresh when upstream updated")

# Dagster 1.13 creates a default automation sensor that starts STOPPED, so an eager condition
# would never fire until someone switched it on in the UI. This one is on from the first deploy.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "flywheel_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
