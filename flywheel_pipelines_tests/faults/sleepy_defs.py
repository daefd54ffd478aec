"""A code location with one long run, for the real-daemon dead-run test (faults/test_dead_runs.py)."""

import time

import dagster as dg


@dg.asset
def slow_asset() -> None:
    time.sleep(600)


defs = dg.Definitions(assets=[slow_asset], jobs=[dg.define_asset_job("sleepy_job", [slow_asset])])
