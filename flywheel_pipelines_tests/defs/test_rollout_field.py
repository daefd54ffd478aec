"""The field loop proven in simulation: a good release advances to the whole fleet, a worse one
is rolled back automatically during its canary stage, and the Dagster jobs, the field_kpis asset
and its check, and the rollout sensor do the same over a real instance.

One teleoperated day of a 10-robot fleet (one robot's elbow encoder logging 0.3 rad off), and
two releases trained on it with the library (tests/rollout_fleet.py says why the gate is
skipped): the good one on the nine healthy robots, the bad one on the faulty robot's data only.
Then field days: each robot runs what the newest deployments manifest assigns it, through ONNX
Runtime, its logs are standardized into the catalog, and the rollout decides.
"""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest

from flywheel_pipelines.lib import field
from flywheel_pipelines.lib.catalog import CATALOG_KEY
from flywheel_pipelines.lib.datasets.curation import CurationSpec
from flywheel_pipelines.lib.rollout import deployments, plan, sequential
from flywheel_pipelines.lib.sim.fleet import day_range, robot_ids
from flywheel_pipelines_tests.rollout_fleet import MODEL, FieldLoop, faulty_encoder

pytestmark = pytest.mark.slow

ROBOTS, EPISODES = 10, 20
DAYS = day_range("2026-11-01", 12)
STAGES = (plan.Stage("canary", 0.2, 40), plan.Stage("half", 0.5, 60), plan.Stage("full", 1.0))
TEST = sequential.TestConfig(margin=0.10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    loop = FieldLoop(root / "lake", robots=ROBOTS, episodes_per_day=EPISODES)
    loop.simulate(DAYS[:1], encoder_faults=faulty_encoder("r101", DAYS[:1]))
    good = loop.train_release(CurationSpec(name="reach", robots=tuple(robot_ids(ROBOTS)[1:])), root / "work")
    bad = loop.train_release(CurationSpec(name="reach-bad", robots=("r101",)), root / "work")
    return loop, good, bad


def _run(loop: FieldLoop, release: str, first: int, report: dict) -> tuple[plan.State, int]:
    s = plan.start(loop.lake, model=MODEL, release=release, catalog_rows=loop.rows, robots=robot_ids(ROBOTS),
                   by="test", reason="field test", effective_from=DAYS[first], stages=STAGES, test=TEST)
    day = first
    while s.status not in plan.FINAL:
        assert day < len(DAYS) - 1, f"no decision by {DAYS[day]}: {[e['reason'] for e in s.evaluations]}"
        manifest = deployments.latest(loop.lake, MODEL)
        loop.simulate([DAYS[day]], manifest=manifest)
        # What ran on the robots is exactly what the manifest said: the release on the cohort only.
        ran = {(r["robot"], r["policy_version"]) for r in loop.rows if r["date"] == DAYS[day]}
        assert ran == {(robot, manifest["assignments"][robot].split("/")[1] if robot in manifest["assignments"]
                        else None) for robot in robot_ids(ROBOTS)}
        out = plan.evaluate(loop.lake, MODEL, loop.rows, catalog_version=loop.catalog_version, next_day=DAYS[day + 1])
        s = out.state
        report.setdefault(release, []).append((DAYS[day], out.decision, s.stage_name, out.reason))
        day += 1
    return s, day


def test_good_release_reaches_the_fleet_and_bad_release_is_rolled_back_in_its_canary(trained, tmp_path):
    base, good, bad = trained
    loop = FieldLoop(tmp_path / "lake", robots=ROBOTS, episodes_per_day=EPISODES)
    shutil.copytree(base.lake.root, loop.lake.root)
    loop.tables, loop.frames, loop.catalog = dict(base.tables), dict(base.frames), base.catalog
    report: dict = {}

    # A first release against teleoperation: canary 20% -> 50% -> 100%.
    s, day = _run(loop, good, 1, report)
    assert s.status == plan.COMPLETED, report
    assert deployments.latest(loop.lake, MODEL)["assignments"] == {r: good for r in robot_ids(ROBOTS)}
    advances = [e for e in s.evaluations if e["decision"] == "advance"]
    assert len(advances) == 2 and all(e["evidence"]["non_inferior"] for e in advances)

    # The bad release against the good one: rolled back during its canary stage.
    s, _ = _run(loop, bad, day, report)
    assert s.status == plan.ROLLED_BACK, report
    rollback = next(e for e in s.events if e["action"] == "rollback")
    assert rollback["stage_name"] == "canary" and rollback["automatic"]
    assert all(e["action"] != "stage" or e["name"] == "canary" for e in s.events)  # never beyond the canary
    ran_bad = {r["robot"] for r in loop.rows if r.get("policy_version") == bad.split("/")[1]}
    assert ran_bad == set(s.plan["cohorts"]["canary"])
    # Every robot is back on the good release, recorded as a new manifest (the old ones are kept).
    history = deployments.history(loop.lake, MODEL)
    assert history[-1]["assignments"] == {r: good for r in robot_ids(ROBOTS)} and history[-1]["action"] == "rollback"
    assert [m["sequence"] for m in history] == list(range(1, len(history) + 1))
    # The field KPIs say the same: the bad release regressed against production (the good one).
    summary = field.report(loop.rows, production=good)
    assert summary["regressed"] == [bad]
    assert summary["arms"][bad]["interventions_per_hour"] > summary["arms"][good]["interventions_per_hour"]
    episodes_to_decision = {"good": plan.canary_episodes_to_decision(plan.load(loop.lake, MODEL,
                                                                                plan.rollout_ids(loop.lake, MODEL)[0])),
                            "bad": plan.canary_episodes_to_decision(s)}
    # With a look after every canary episode instead of every day (the same evidence, replayed).
    first_rollout = plan.load(loop.lake, MODEL, plan.rollout_ids(loop.lake, MODEL)[0])
    per_episode = {"good": _replay(loop.rows, first_rollout, regress=False), "bad": _replay(loop.rows, s, regress=True)}
    assert per_episode["bad"] is not None and per_episode["bad"] <= episodes_to_decision["bad"]
    print(json.dumps({"canary_episodes_to_first_decision": episodes_to_decision,
                      "with_a_look_after_every_episode": per_episode, "days": report}, indent=1))


def _replay(rows: list[dict], s: plan.State, *, regress: bool) -> int | None:
    """The fewest canary episodes (in recording order) after which the first stage's evidence
    would have shown a regression (``regress``) or non-inferiority."""
    version = s.release.split("/")[1]
    canary = sorted((r for r in rows if r.get("policy_version") == version), key=lambda r: (r["date"], r["start_ns"]))
    days = {r["date"] for r in canary[:s.plan["stages"][0]["min_episodes"]]}
    control_arm = s.control or "teleoperated"
    control = [r for r in rows if r["date"] in days and r["robot"] not in s.plan["cohorts"]["canary"]
               and field.arm_of(r) == control_arm]
    ctrl = sequential.arm(field.clusters(control))
    config = sequential.TestConfig(**s.plan["test"])
    for k in range(1, len(canary) + 1):
        e = sequential.compare(sequential.arm(field.clusters(canary[:k])), ctrl, config)
        if (e.regressed if regress else e.non_inferior):
            return k
    return None


def test_dagster_jobs_field_kpis_check_and_sensor(trained, tmp_path, flywheel_home, monkeypatch):
    base, good, bad = trained
    lake_root = flywheel_home / "lake"
    shutil.copytree(base.lake.root, lake_root)
    monkeypatch.setenv("FLYWHEEL_LAKE", str(lake_root))
    loop = FieldLoop(lake_root, robots=ROBOTS, episodes_per_day=EPISODES)
    loop.tables, loop.frames, loop.catalog = dict(base.tables), dict(base.frames), base.catalog
    from flywheel_pipelines.definitions import defs as load_defs

    defs = load_defs()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.instance_for_test() as instance:
        def start(release: str) -> None:
            defs.resolve_job_def("rollout_start").execute_in_process(instance=instance, run_config={**quiet, "ops": {
                "start_rollout": {"config": {"release": release, "stages": "canary:0.2:40,half:0.5:60,full:1.0",
                                             "margin": 0.1, "effective_from": DAYS[1], "requested_by": "ana",
                                             "reason": "ui test"}}}})

        # A person's actions from the UI: start, pause, a refused second start, abort.
        start(good)
        control = defs.resolve_job_def("rollout_control")
        for action in ("pause", "abort"):
            control.execute_in_process(instance=instance, run_config={**quiet, "ops": {"control_rollout": {"config": {
                "action": action, "requested_by": "ana", "reason": f"ui {action}"}}}})
        s = plan.load(loop.lake, MODEL, plan.rollout_ids(loop.lake, MODEL)[0])
        assert s.status == plan.ABORTED and [e["action"] for e in s.events][-2:] == ["pause", "abort"]
        bad_action = control.execute_in_process(instance=instance, raise_on_error=False, run_config={**quiet, "ops": {
            "control_rollout": {"config": {"action": "pause", "requested_by": "ana", "reason": "nothing running"}}}})
        assert not bad_action.success

        # The bad release as a first release against teleoperation: one canary day, then field_kpis,
        # the rollout sensor and the evaluation it launches.
        start(bad)
        loop.simulate([DAYS[1]], manifest=deployments.latest(loop.lake, MODEL))
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[dg.AssetKey("field_kpis")], instance=instance, run_config=quiet, raise_on_error=False)
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert not checks["no_field_regression"].passed  # bad is significantly worse than teleoperation
        meta = instance.get_latest_materialization_event(dg.AssetKey("field_kpis")).asset_materialization.metadata
        assert meta["production"].value == "teleoperated"
        assert meta[f"success_rate/{bad}"].value < 0.3 < meta["success_rate/teleoperated"].value
        assert "interventions / h" in meta["by_arm"].value
        kpis_key = f"{field.kpis_prefix(meta['catalog_version'].value)}/{field.KPIS_FILE}"
        kpis = loop.lake.read_parquet(kpis_key)
        assert meta["dagster/row_count"].value == kpis.num_rows > 0
        assert [c.name for c in meta["dagster/column_schema"].value.columns] == kpis.schema.names

        sensor = defs.resolve_sensor_def("rollout_sensor")
        requests = list(sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).run_requests)
        assert [r.run_key for r in requests] == [f"rollout-evaluate|{meta['catalog_version'].value}"]
        defs.resolve_job_def("rollout_evaluate").execute_in_process(instance=instance, run_config=quiet)
        s = plan.load(loop.lake, MODEL, plan.rollout_ids(loop.lake, MODEL)[-1])
        assert s.status == plan.ROLLED_BACK and s.evaluations[-1]["catalog_version"] == meta["catalog_version"].value
        assert deployments.latest(loop.lake, MODEL)["assignments"] == {}  # everyone teleoperated again
        assert loop.lake.read_parquet(CATALOG_KEY).num_rows == loop.catalog.num_rows
