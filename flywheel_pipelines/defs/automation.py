"""Automation conditions, named once."""

import dagster as dg

# The catalog follows new episodes as soon as they land; training waits for the nightly schedule.
FOLLOW_UPSTREAM = dg.AutomationCondition.eager()
