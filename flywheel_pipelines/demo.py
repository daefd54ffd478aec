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
from flywheel_pipelines.lib import layout, settings
from flywheel_pipelines.lib.sim.fleet import SimulatedDay, day_range, simulate_fleet
from flywheel_pipelines.progress import heartbeat

# The demo prints its own progress; Dagster's per-event debug log would drown it.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TEMPLATE = Path(__file__).resolve().parents[1] / "dagster.yaml"


def _uploaded(lake) -> set[tuple[str, str]]:
    """(robot, day) of every robot-day folder under raw/."""
    return {rd for rd in (layout.parse_raw_day_folder(o.key) for o in lake.list(layout.RAW)) if rd is not None}


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
    field: dict | None = None  # the field loop: rollout, KPIs, decision (None without a release)


# The demo's rollout: with 3 robots the canary is one robot; one field day of 20 episodes on it is
# the stage's minimum exposure. The margin is wider than the default (5 points) because a 3-robot
# demo fleet cannot show a 5-point non-inferiority in one day; the decision is whatever the test says.
DEMO_STAGES = "canary:0.34:20,full:1.0"
DEMO_MARGIN = 0.15
DEMO_USER = "flywheel-demo"


def run_demo(
    *, robots: int, days: int, episodes_per_day: int, seed: int, start_date: str | None = None,
    log: Callable[[str], None] = print, field_day: bool = False,
) -> DemoResult:
    """Simulate ``robots`` x ``days`` and materialize the whole graph. Re-runnable: raw logs
    already in the lake are kept, and content-hashed artifacts are reused. With ``field_day``
    (what `flywheel demo` does), a release then goes through one turn of the field loop on the
    day after (:func:`run_field_day`)."""
    import dagster as dg

    home = prepare_dagster_home()
    lake_root = settings.default_lake_root()
    lake = open_configured_lake(lake_root)
    first = start_date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()
    day_list = day_range(first, days)
    log(f"simulating {robots} robots x {days} days x {episodes_per_day} episodes into {lake_root}/raw")
    # A day an earlier run already uploaded is kept as it is: it may be an earlier run's field day,
    # whose canary ran a release, and raw logs are immutable.
    present = _uploaded(lake)
    uploaded = {d for _, d in present}
    for d in sorted(set(day_list) & uploaded):
        log(f"  {d}: uploaded by an earlier run, kept")
    sim = simulate_fleet(
        lake, robots=robots, days=[d for d in day_list if d not in uploaded], episodes_per_day=episodes_per_day,
        seed=seed,
        progress=lambda d: log(f"  {layout.raw_prefix(d.robot, d.day).rstrip('/')}: {len(d.keys)} MCAP files, "
                               f"{d.messages} messages"),
    )
    sim += [SimulatedDay(r, d, (), episodes_per_day, 0) for r, d in sorted(present) if d in day_list]
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
        log(f"[{i}/{len(sim)}] ingest robot {d.robot} day {d.day}")
        with heartbeat(log, f"ingest {d.robot} {d.day}", instance=instance, job_name="ingest_robot_day"):
            result = ingest.execute_in_process(partition_key=robot_day_key(d.robot, d.day), instance=instance,
                                               run_config=QUIET, raise_on_error=True)
        assert result.success
    log("fleet assets: episode_catalog -> golden_scenarios, curated_dataset -> policy_candidate -> eval_report "
        "-> release_bundle")
    with heartbeat(log, "nightly_retrain", instance=instance, job_name="nightly_retrain"):
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
    field = None
    if field_day and "release_bundle" in metadata:
        field = run_field_day(defs, instance, lake, release=metadata["release_bundle"]["release"].replace(" ", "/"),
                              day=(dt.date.fromisoformat(day_list[-1]) + dt.timedelta(days=1)).isoformat(),
                              robots=robots, episodes_per_day=episodes_per_day, seed=seed, log=log)
    return DemoResult(lake_root, str(home), len(sim), metadata, field)


def run_field_day(defs, instance, lake, *, release: str, day: str, robots: int, episodes_per_day: int, seed: int,
                  log: Callable[[str], None]) -> dict:
    """One turn of the field loop: a canary rollout of ``release`` (rollout_start job), the fleet
    runs the deployments manifest on ``day`` (the canary its ONNX policy, the rest teleoperated),
    the logs are ingested, field_kpis computed and the rollout decided (rollout_evaluate job, what
    rollout_sensor launches)."""
    import time

    import dagster as dg

    from flywheel_pipelines.defs.partitions import robot_day_key
    from flywheel_pipelines.lib import field as field_lib
    from flywheel_pipelines.lib.rollout import deployments, plan
    from flywheel_pipelines.lib.sim.field import load_fleet_releases
    from flywheel_pipelines.lib.sim.fleet import simulate_fleet

    t0 = time.perf_counter()
    model = release.split("/")[0]
    s = plan.active(lake, model)
    if s is not None and s.release != release:
        log(f"field: rollout {s.rollout_id} of {s.release} (an earlier demo run) is still {s.status}; "
            "this field day feeds it")
    elif s is None:
        if any(plan.load(lake, model, rid).release == release for rid in plan.rollout_ids(lake, model)):
            log(f"field: {release} was rolled out by an earlier demo run (flywheel rollout status)")
            return {"release": release, "skipped": True}
        log(f"field: rollout_start {release} ({DEMO_STAGES}, margin {DEMO_MARGIN:.0%}) -> {layout.deployments_prefix(model)}/")
        defs.resolve_job_def("rollout_start").execute_in_process(instance=instance, run_config={**QUIET, "ops": {
            "start_rollout": {"config": {"model": model, "release": release, "stages": DEMO_STAGES,
                                         "margin": DEMO_MARGIN, "effective_from": day, "requested_by": DEMO_USER,
                                         "reason": "demo: first release, canary against teleoperation"}}}})
        s = plan.active(lake, model)
    manifest = deployments.latest(lake, model)
    log(f"  manifest #{manifest['sequence']} (sha256 {manifest['sha256'][:12]}): "
        + ", ".join(f"{r} runs {ref}" for r, ref in manifest["assignments"].items()) + "; the others teleoperate")
    if any(d == day for _, d in _uploaded(lake)):  # an earlier run's field day
        log(f"  {day} was simulated by an earlier demo run; kept")
    else:
        sim = simulate_fleet(lake, robots=robots, days=[day], episodes_per_day=episodes_per_day, seed=seed,
                             releases=load_fleet_releases(lake, manifest))
        ingest = defs.resolve_job_def("ingest_robot_day")
        for d in sim:
            log(f"  {d.day} {d.robot}: {len(d.keys)} MCAP files -> ingest")
            ingest.execute_in_process(partition_key=robot_day_key(d.robot, d.day), instance=instance,
                                      run_config=QUIET, raise_on_error=True)
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("episode_catalog"), dg.AssetKey("field_kpis")], instance=instance,
        run_config=QUIET)
    kpis = instance.get_latest_materialization_event(dg.AssetKey("field_kpis")).asset_materialization.metadata
    defs.resolve_job_def("rollout_evaluate").execute_in_process(instance=instance, run_config=QUIET)
    s = plan.load(lake, model, s.rollout_id)
    last = s.evaluations[-1] if s.evaluations else None
    summary = lake.read_json(f"{field_lib.kpis_prefix(kpis['catalog_version'].value)}/{field_lib.SUMMARY_FILE}")
    return {"release": s.release, "rollout_id": s.rollout_id, "status": s.status, "stage": s.stage_name,
            "cohort": s.cohort, "decision": last["decision"] if last else None,
            "reason": last["reason"] if last else None, "arms": summary["arms"],
            "manifest": deployments.current_key(model), "seconds": round(time.perf_counter() - t0, 1)}
