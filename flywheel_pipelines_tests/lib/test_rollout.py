"""Staged rollouts in the library: the sequential test, cohorts, deployments manifests, the log."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from flywheel_pipelines.lib import field
from flywheel_pipelines.lib.catalog import build_catalog, conform
from flywheel_pipelines.lib.episodes.control import episode_control
from flywheel_pipelines.lib.episodes.standardize import EPISODE_SCHEMA
from flywheel_pipelines.lib.ids import InvalidIdentifier
from flywheel_pipelines.lib.rollout import deployments, plan, sequential
from flywheel_pipelines.lib.storage import LocalLake

# --- the sequential test ------------------------------------------------------------------------


def test_a_clear_regression_rolls_back_and_equal_arms_do_not():
    bad = sequential.compare(sequential.arm([(20, 2), (20, 1)]), sequential.arm([(40, 36), (40, 38), (40, 37)]))
    assert bad.regressed and sequential.decide(bad, exposure_met=False)[0] == sequential.ROLLBACK
    same = sequential.compare(sequential.arm([(40, 36), (40, 35)]), sequential.arm([(40, 36), (40, 37), (40, 35)]))
    assert not same.regressed
    assert sequential.decide(same, exposure_met=True)[0] in (sequential.HOLD, sequential.ADVANCE)


def test_advance_needs_non_inferiority_and_exposure():
    big = sequential.compare(sequential.arm([(300, 285), (300, 284)]), sequential.arm([(300, 282)] * 4),
                             sequential.TestConfig(margin=0.05))
    assert big.non_inferior
    assert sequential.decide(big, exposure_met=True)[0] == sequential.ADVANCE
    assert sequential.decide(big, exposure_met=False)[0] == sequential.HOLD
    small = sequential.compare(sequential.arm([(5, 5)]), sequential.arm([(5, 5)]))
    assert sequential.decide(small, exposure_met=True)[0] == sequential.HOLD  # evidence is short


def test_no_data_holds_and_bounds_are_not_degenerate_at_n_over_n():
    empty = sequential.compare(sequential.arm([]), sequential.arm([(10, 9)]))
    assert sequential.decide(empty, exposure_met=True) == (sequential.HOLD, "no canary episodes yet")
    perfect = sequential.compare(sequential.arm([(10, 10)]), sequential.arm([(10, 10)]))
    assert perfect.lower_advance < 0 < perfect.upper_rollback  # 10/10 vs 10/10 proves nothing yet


def test_confidence_sequence_is_always_valid_under_many_looks():
    """A/A with a look after every 10 episodes: false rollbacks stay well under alpha (the full
    200-rollout benchmark is benchmarks/bench_rollout_aa.py)."""
    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(100):
        canary, control = [], []
        for _ in range(30):
            canary.append((10, int(rng.binomial(10, 0.85))))
            control.append((10, int(rng.binomial(10, 0.85))))
            if sequential.compare(sequential.arm(canary), sequential.arm(control)).regressed:
                alarms += 1
                break
    assert alarms <= 5


def test_config_is_validated():
    with pytest.raises(ValueError):
        sequential.TestConfig(alpha_rollback=0.7)
    with pytest.raises(ValueError):
        sequential.TestConfig(tau=0)


# --- control mode and KPIs ----------------------------------------------------------------------


def test_episodes_without_policy_metadata_are_teleoperated_or_unknown():
    assert episode_control(policy=None, operator="alice", interventions=[])["control_mode"] == "teleoperated"
    assert episode_control(policy=None, operator=None, interventions=[])["control_mode"] == "unknown"
    # A policy event without a version names no release: not counted as autonomous.
    assert episode_control(policy={"event": "policy"}, operator=None, interventions=[])["control_mode"] == "unknown"
    ran = {"event": "policy", "policy_name": "reach-bc", "policy_version": "abc", "onnx_sha256": "f" * 64,
           "control_mode": "autonomous"}
    got = episode_control(policy=ran, operator="bao", interventions=[(0, 500_000_000), (10**9, 2 * 10**9)])
    assert got == {"control_mode": "autonomous_with_interventions", "policy_name": "reach-bc", "policy_version": "abc",
                   "policy_onnx_sha256": "f" * 64, "intervention_count": 2, "intervention_s": 1.5}


def _row(robot, date, arm=None, outcome="success", interventions=0, duration=3.0, intervention_s=0.0, n=0):
    name, _, version = (arm or "").partition("/")
    return {"episode_id": f"{robot}-{date}-{arm}-{n}-{outcome}-{interventions}", "robot": robot, "date": date,
            "outcome": outcome, "operator": "alice",
            "control_mode": ("autonomous_with_interventions" if interventions else "autonomous") if arm else "teleoperated",
            "policy_name": name or None, "policy_version": version or None, "intervention_count": interventions,
            "intervention": bool(interventions), "duration_s": duration, "intervention_s": intervention_s}


def test_kpis_per_arm_robot_day():
    rows = [_row("r101", "2026-11-02", "reach-bc/aaa", n=i) for i in range(8)]
    rows += [_row("r101", "2026-11-02", "reach-bc/aaa", outcome="success", interventions=1, intervention_s=1.0, n=9)]
    rows += [_row("r101", "2026-11-02", "reach-bc/aaa", outcome="failure", interventions=1, intervention_s=2.0, n=10)]
    rows += [_row("r102", "2026-11-02", None, n=i) for i in range(4)]
    table = field.compute(rows).to_pylist()
    auto = next(r for r in table if r["arm"] == "reach-bc/aaa")
    assert (auto["episodes"], auto["autonomous_episodes"], auto["unassisted_successes"]) == (10, 10, 8)
    assert auto["interventions"] == 2
    assert auto["autonomy_hours"] == pytest.approx((30.0 - 3.0) / 3600)
    assert auto["interventions_per_hour"] == pytest.approx(2 / ((30.0 - 3.0) / 3600))
    assert auto["mtbi_s"] == pytest.approx(27.0 / 2)
    assert auto["success_low"] < 0.8 < auto["success_high"]
    teleop = next(r for r in table if r["arm"] == "teleoperated")
    assert (teleop["episodes"], teleop["autonomy_hours"], teleop["interventions_per_hour"]) == (4, 0.0, None)


def test_report_compares_with_production_on_shared_days_only():
    rows = [_row(f"r10{k}", "2026-11-02", "reach-bc/prod", n=i) for k in range(1, 5) for i in range(20)]
    rows += [_row("r105", "2026-11-02", "reach-bc/bad", outcome="failure", interventions=1, n=i) for i in range(20)]
    rows += [_row("r106", "2026-11-01", "reach-bc/other", n=i) for i in range(20)]  # never overlapped production
    out = field.report(rows, production="reach-bc/prod")
    assert [c["arm"] for c in out["comparisons"]] == ["reach-bc/bad"]
    assert out["regressed"] == ["reach-bc/bad"]


def test_old_episode_tables_get_the_control_columns():
    old = build_catalog([]).drop_columns(["control_mode", "policy_name", "policy_version", "policy_onnx_sha256",
                                          "intervention_count", "intervention_s"])
    row = {f.name: None for f in old.schema}
    row.update({"episode_id": "r101-1", "robot": "r101", "date": "2026-11-01", "operator": "alice",
                "intervention": True, "tags": [], "source_keys": [], "source_sha256": [], "quality_issues": []})
    table = old.from_pylist([row], schema=old.schema)
    got = conform(table).cast(EPISODE_SCHEMA).to_pylist()[0]
    assert (got["control_mode"], got["intervention_count"], got["policy_version"]) == ("teleoperated", 1, None)


# --- cohorts ------------------------------------------------------------------------------------


def _history(robots, rates, date="2026-10-31", n=20):
    rows = []
    for robot, rate in zip(robots, rates, strict=True):
        rows += [_row(robot, date, None, outcome="success" if i < rate * n else "failure", n=i) for i in range(n)]
    return rows


def test_cohorts_are_deterministic_nested_and_stratified():
    robots = [f"r{100 + i}" for i in range(1, 31)]
    rates = [0.5 + 0.015 * i for i in range(30)]
    strata = plan.strata(_history(robots[:27], rates[:27]), robots, before="2026-11-01")
    assert {s for r, s in strata.items() if r in robots[27:]} == {"new"}
    assert [strata[r] for r in robots[:27]] == ["low"] * 9 + ["mid"] * 9 + ["high"] * 9
    stages = (plan.Stage("canary", 0.1), plan.Stage("half", 0.5), plan.Stage("full", 1.0))
    a = plan.cohorts(strata, stages, release="reach-bc/aaa")
    assert a == plan.cohorts(dict(reversed(list(strata.items()))), stages, release="reach-bc/aaa")
    assert len(a["canary"]) == 3 and len(a["half"]) == 15 and a["full"] == sorted(robots)
    assert set(a["canary"]) <= set(a["half"]) <= set(a["full"])
    assert len({strata[r] for r in a["canary"]}) == 3  # one canary from each tercile
    assert a["canary"] != plan.cohorts(strata, stages, release="reach-bc/bbb")["canary"]


def test_a_tiny_fleet_still_gets_one_canary():
    c = plan.cohorts({"r101": "new", "r102": "new", "r103": "new"}, plan.DEFAULT_STAGES, release="m/v")
    assert len(c["canary"]) == 1 and len(c["half"]) == 2 and len(c["full"]) == 3


def test_stages_are_parsed_and_checked():
    assert [s.name for s in plan.parse_stages("canary:0.1:60,half:0.5:120:0.5,full:1.0")] == ["canary", "half", "full"]
    with pytest.raises(ValueError):
        plan.parse_stages("canary:0.5,half:0.1,full:1.0")
    with pytest.raises(ValueError):
        plan.parse_stages("canary:0.1,half:0.5")  # never reaches the fleet
    with pytest.raises(InvalidIdentifier):
        plan.parse_stages("../x:0.1,full:1.0")


# --- manifests and the log ----------------------------------------------------------------------


def _bundle(store: LocalLake, ref: str, payload: bytes) -> None:
    import hashlib

    prefix = deployments.bundle_prefix(ref)
    store.write_bytes(f"{prefix}/policy.onnx", payload)
    store.write_bytes(f"{prefix}/SHA256SUMS", f"{hashlib.sha256(payload).hexdigest()}  policy.onnx\n".encode())


def test_manifests_are_checksummed_and_append_only(tmp_path):
    store = LocalLake(tmp_path)
    _bundle(store, "reach-bc/aaa", b"model-a")
    entry = deployments.release_entry(store, "reach-bc/aaa")
    m1 = deployments.build(model="reach-bc", sequence=1, assignments={"r101": "reach-bc/aaa", "r102": None},
                           releases={"reach-bc/aaa": entry}, rollout_id=None, stage=None, action="test", reason="t",
                           by="me")
    assert m1["assignments"] == {"r101": "reach-bc/aaa"}  # r102 is teleoperated: not listed
    deployments.publish(store, m1)
    assert store.read_json(deployments.current_key("reach-bc")) == m1
    with pytest.raises(deployments.ManifestError, match="not the next one"):
        deployments.publish(store, m1)
    tampered = json.loads(json.dumps(m1))
    tampered["assignments"]["r102"] = "reach-bc/aaa"
    with pytest.raises(deployments.ManifestError, match="checksum"):
        deployments.verify(tampered)
    assert deployments.assignment(m1, "r102").release is None
    assert deployments.assignment(m1, "r101").release["onnx_sha256"] == entry["onnx_sha256"]
    with pytest.raises(InvalidIdentifier):
        deployments.model_prefix("../etc")
    with pytest.raises(deployments.ManifestError):
        deployments.release_entry(store, "reach-bc/missing")


def test_rollout_log_pause_resume_abort(tmp_path):
    store = LocalLake(tmp_path)
    _bundle(store, "reach-bc/aaa", b"model-a")
    robots = [f"r{101 + i}" for i in range(10)]
    when = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    s = plan.start(store, model="reach-bc", release="reach-bc/aaa", catalog_rows=[], robots=robots, by="ana",
                   reason="first release", effective_from="2026-11-02", at=when)
    assert (s.status, s.stage_name, len(s.cohort), s.control) == ("running", "canary", 1, None)
    manifest = deployments.latest(store, "reach-bc")
    assert manifest["assignments"] == {s.cohort[0]: "reach-bc/aaa"} and manifest["rollout_id"] == s.rollout_id
    with pytest.raises(plan.RolloutError, match="running"):
        plan.start(store, model="reach-bc", release="reach-bc/aaa", catalog_rows=[], robots=robots, by="ana",
                   reason="again", effective_from="2026-11-02")
    s = plan.pause(store, s, by="ana", reason="site visit")
    # Paused: a non-inferior canary is held, never advanced.
    rows = [_row(s.cohort[0], "2026-11-02", "reach-bc/aaa", n=i) for i in range(200)]
    rows += [_row(r, "2026-11-02", None, n=i) for r in robots if r not in s.cohort for i in range(30)]
    out = plan.evaluate(store, "reach-bc", rows, catalog_version="c1", next_day="2026-11-03")
    assert out.decision == "hold" and out.reason.startswith("paused")
    assert plan.evaluate(store, "reach-bc", rows, catalog_version="c1", next_day="2026-11-03").decision == "skipped"
    s = plan.resume(store, out.state, by="ana", reason="back")
    s = plan.roll_back(store, s, by="ana", reason="changed my mind", action="abort")
    assert s.status == "aborted" and deployments.latest(store, "reach-bc")["assignments"] == {}
    actions = [e["action"] for e in plan.read_log(store, "reach-bc", s.rollout_id)]
    assert actions == ["plan", "stage", "pause", "evaluation", "resume", "abort"]
    assert [m["sequence"] for m in deployments.history(store, "reach-bc")] == [1, 2]
    assert plan.active(store, "reach-bc") is None


def test_completion_promotes_the_registered_version_and_a_later_rollback_moves_the_alias_back(tmp_path):
    import mlflow

    from flywheel_pipelines.lib.evaluation import registry
    from flywheel_pipelines.lib.rollout import service

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("reach-bc")
    for _ in range(2):
        client.create_model_version("reach-bc", source=str(tmp_path / "artifacts"))
    registry.record_gate(client, "reach-bc", "1", passed=True, reasons=[], suite="s", suite_version="s1",
                         report_uri="r", golden_version=None, production=None, policy_version="p1")
    registry.promote(client, LocalLake(tmp_path / "lake"), "reach-bc", "1", by="ana", reason="first")
    registry.record_gate(client, "reach-bc", "2", passed=True, reasons=[], suite="s", suite_version="s1",
                         report_uri="r", golden_version=None, production="1", policy_version="p2")
    store = LocalLake(tmp_path / "lake")
    for ref in ("reach-bc/p1", "reach-bc/p2"):
        _bundle(store, ref, ref.encode())
    robots = ["r101", "r102", "r103", "r104"]
    deployments.publish(store, deployments.build(
        model="reach-bc", sequence=1, assignments={r: "reach-bc/p1" for r in robots},
        releases={"reach-bc/p1": deployments.release_entry(store, "reach-bc/p1")}, rollout_id=None, stage=None,
        action="baseline", reason="t", by="t"))
    assert service.registered_version(client, "reach-bc", "p2") == "2"
    s = plan.start(store, model="reach-bc", release="reach-bc/p2", catalog_rows=[], robots=robots, by="ana",
                   reason="nightly", effective_from="2026-11-02", stages=plan.parse_stages("canary:0.5:10,full:1.0"),
                   registered_version="2")
    assert s.control == "reach-bc/p1"
    rows = [_row(r, "2026-11-02", "reach-bc/p2" if r in s.cohort else "reach-bc/p1", n=i)
            for r in robots for i in range(200)]
    out = plan.evaluate(store, "reach-bc", rows, catalog_version="c1", next_day="2026-11-03", registry_client=client)
    assert out.decision == "complete" and out.state.status == plan.COMPLETED
    complete = next(e for e in out.state.events if e["action"] == "complete")
    assert complete["alias"]["moved"] and complete["alias"]["version"] == "2"
    assert str(registry.production_version(client, "reach-bc").version) == "2"
    assert deployments.latest(store, "reach-bc")["assignments"] == {r: "reach-bc/p2" for r in robots}
    # Found bad on the fleet afterwards: the rollback moves the robots and the alias back.
    s = plan.roll_back(store, out.state, by="ana", reason="field incident", registry_client=client)
    rollback = next(e for e in s.events if e["action"] == "rollback")
    assert rollback["alias"]["moved"] and str(registry.production_version(client, "reach-bc").version) == "1"
    assert deployments.latest(store, "reach-bc")["assignments"] == {r: "reach-bc/p1" for r in robots}
    assert [e["action"] for e in registry.read_log(store, "reach-bc")] == ["promote", "promote", "rollback"]
