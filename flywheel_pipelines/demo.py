"""The demo flywheel: simulate a fleet, then materialize every asset into the embedded default.

Runs go through the same Dagster instance that `dagster dev` opens afterwards (SQLite under
$DAGSTER_HOME), so every run, partition and asset check of the demo is visible in the UI.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flywheel_pipelines.defs.resources import open_configured_lake
from flywheel_pipelines.lib import settings
from flywheel_pipelines.lib.sim.fleet import day_range, simulate_fleet

# The demo prints its own progress; Dagster's per-event debug log would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TEMPLATE = Path(__file__).resolve().parents[1] / "dagster.yaml"


def prepare_dagster_home() -> Path:
    """Point DAGSTER_HOME at <home>/dagster_home and give it the instance config."""
    home = settings.default_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    if TEMPLATE.is_file() and not (home / "dagster.yaml").exists():
        shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    return home


@dataclass(frozen=True)
class DemoResult:
    lake_root: str
    dagster_home: str
    partitions: int
    metadata: dict[str, dict]


def run_demo(
    *, robots: int, days: int, episodes_per_day: int, seed: int, start_date: str | None = None,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Simulate ``robots`` x ``days`` and materialize the whole graph. Re-runnable: raw logs
    already in the lake are kept, and content-hashed artifacts are reused."""
    import dagster as dg

    home = prepare_dagster_home()
    lake_root = settings.default_lake_root()
    lake = open_configured_lake(lake_root)
    first = start_date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    day_list = day_range(first, days)
    log(f"simulating {robots} robots x {days} days x {episodes_per_day} episodes into {lake_root}/raw")
    sim = simulate_fleet(
        lake, robots=robots, days=day_list, episodes_per_day=episodes_per_day, seed=seed,
        progress=lambda d: log(f"  raw/robot={d.robot}/date={d.day}: {len(d.keys)} MCAP files, {d.messages} messages"),
    )
    from flywheel_pipelines.definitions import defs as load_defs
    from flywheel_pipelines.defs.partitions import ROBOTS, robot_day_key

    defs = load_defs()
    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(ROBOTS.name))
    new = sorted({d.robot for d in sim} - known)
    if new:
        instance.add_dynamic_partitions(ROBOTS.name, new)
    ingest = defs.resolve_job_def("ingest_robot_day")
    for i, d in enumerate(sim, 1):
        log(f"[{i}/{len(sim)}] ingest robot={d.robot} date={d.day}")
        result = ingest.execute_in_process(partition_key=robot_day_key(d.robot, d.day), instance=instance,
                                           run_config=QUIET, raise_on_error=True)
        assert result.success
    log("fleet assets: episode_catalog -> golden_scenarios, curated_dataset -> policy_candidate -> eval_report "
        "-> release_bundle")
    result = defs.resolve_job_def("nightly_retrain").execute_in_process(instance=instance, run_config=QUIET,
                                                                         raise_on_error=False)
    metadata = {}
    for key in ("episode_catalog", "golden_scenarios", "curated_dataset", "policy_candidate", "eval_report",
                "release_bundle"):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is not None and event.asset_materialization is not None and event.run_id == result.run_id:
            metadata[key] = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure]
        # A failed release gate is an outcome, not a crash: the report says why, no bundle is made.
        if any(e.step_key != "eval_report_eval_gate" for e in failed):
            raise RuntimeError("the fleet run failed: " + "; ".join(str(e.message) for e in failed))
    return DemoResult(lake_root, str(home), len(sim), metadata)
